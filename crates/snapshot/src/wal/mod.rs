//! The WAL archive: [`push`] for PostgreSQL's `archive_command`, [`fetch`]
//! for its `restore_command`, and the WAL that retention may delete.
//!
//! # Objects
//!
//! Each file PostgreSQL archives becomes one immutable object
//! ([`WalFileName::object_path`]): segments, `.partial` segments and
//! `.backup` history files under `wal/<timeline>/<name>.zst`, timeline
//! history files as `wal/<timeline>.history`. The objects are *sealed*
//! ([`warmspare_store::Codec::put_sealed`]): compressed with the
//! repository's codec and prefixed with a zstd skippable frame that records
//! the object's path, sizes and SHA-256 digests, because no manifest lists
//! WAL. A sealed zstd object is still a plain `.zst` file (`zstd -d` skips
//! the seal), which helps an operator recovering by hand.
//!
//! # Create-once
//!
//! A push writes with create-if-absent (after a `HEAD`, so that backends
//! that ignore conditional headers still do not overwrite in the usual
//! case). When the object exists, it is read whole and verified, and its
//! content digest compared with the file's: identical bytes are
//! [`PushStatus::AlreadyPresent`] (PostgreSQL re-archives a file whose
//! success it did not record before a crash), other bytes are
//! [`Error::WalConflict`] and nothing is overwritten. PostgreSQL then keeps
//! the file in `pg_wal` and retries; an operator must look (two clusters
//! archiving into one repository, or a repository reused after `initdb`).
//!
//! # Memory
//!
//! A conditional write cannot be a multipart upload, so a push compresses
//! the file into memory first: memory is bounded by the segment size
//! (16 MiB by default; [`PushOptions::max_size`] caps it). A fetch streams.
//!
//! # `restore_command` exit codes
//!
//! PostgreSQL reads a non-zero status of `restore_command` as "not
//! available (yet)", except a status above 125 (or death by a signal),
//! which makes the startup process stop with FATAL. `warmspare wal fetch`
//! therefore exits:
//!
//! * `0`: fetched and verified;
//! * `1`, quickly and quietly, when the file is not in the repository:
//!   PostgreSQL asks for segments and history files that do not exist yet
//!   all the time (a standby polls; a recovery ends at the first missing
//!   segment);
//! * `1` with a loud line on stderr (in the server log) when the repository
//!   cannot be reached and the server is a **standby** (`standby.signal` in
//!   the data directory, which is the working directory of
//!   `restore_command`): the standby keeps running and retries every
//!   `wal_retrieve_retry_interval`, so a network outage does not take the
//!   spare down;
//! * `255` (fatal) for a repository that cannot be reached during an
//!   ordinary **recovery** (`recovery.signal`): "not available" would end
//!   recovery early and promote the server at an earlier point than the
//!   archive holds, losing data silently; stopping lets the operator start
//!   it again once the repository is back, and recovery resumes;
//! * `255` (fatal) for corruption ([`Error::is_corruption`]: a digest
//!   mismatch or a malformed object, named in the message), an invalid
//!   name, a configuration error or a local I/O error: retrying cannot
//!   help, and replaying damaged WAL is never an option.
//!
//! # Settings
//!
//! `archive_command` and `restore_command` run as the server's operating
//! system user, from the data directory, without the operator's
//! environment: give the configuration file explicitly (and make it, and
//! any key file, readable by that user). [`archive_command`] and
//! [`restore_command`] build the recommended settings:
//!
//! ```text
//! archive_mode = on
//! archive_command = '/usr/bin/warmspare --config /etc/warmspare/warmspare.toml wal push %p'
//! archive_timeout = 60        # bounds the RPO of a standby fed from the repository
//! restore_command = '/usr/bin/warmspare --config /etc/warmspare/warmspare.toml wal fetch %f %p'
//! ```

mod name;
mod retention;

use std::path::{Path, PathBuf};

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use warmspare_store::{Repository, SealedPut};

use crate::error::{Error, Result};

pub use name::{Lsn, WalFileKind, WalFileName, segment_name, segments_between};
pub use retention::{WalPruneReport, deletable, oldest_needed, prune_wal};

/// The largest WAL segment PostgreSQL can be built with (`--wal-segsize`
/// up to 1 GiB): the default limit of one push.
pub const MAX_SEGMENT_SIZE: u64 = 1 << 30;

/// Options of [`push`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushOptions {
    /// The largest file accepted; the push holds the compressed file in
    /// memory. Default [`MAX_SEGMENT_SIZE`].
    pub max_size: u64,
}

impl Default for PushOptions {
    fn default() -> Self {
        Self {
            max_size: MAX_SEGMENT_SIZE,
        }
    }
}

/// What [`push`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PushStatus {
    /// The file was stored.
    Stored,
    /// An identical file was already stored (a re-push); nothing written.
    AlreadyPresent,
}

/// The result of [`push`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PushOutcome {
    /// The WAL file name.
    pub name: String,
    /// The object that holds it.
    pub object: String,
    /// Stored, or already present.
    pub status: PushStatus,
    /// The file's size.
    pub size: u64,
    /// The size of the stored object's content encoding.
    pub stored_size: u64,
    /// SHA-256 of the file.
    pub content_sha256: String,
}

/// The result of [`fetch`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum FetchOutcome {
    /// The file was written to the destination, verified.
    Fetched {
        /// The object read.
        object: String,
        /// The file's size.
        size: u64,
    },
    /// The repository has no such file.
    NotFound {
        /// The object looked for.
        object: String,
    },
}

/// Archives the WAL file at `path` (PostgreSQL's `%p`; its file name is the
/// WAL file name) into the repository, create-once (see the module docs).
///
/// # Errors
///
/// [`Error::InvalidWalName`] for a file name PostgreSQL does not archive,
/// [`Error::WalFile`] when the file cannot be read, [`Error::WalConflict`]
/// when other content is stored under its name, [`Error::Store`] for the
/// repository (a damaged existing object is an error naming it).
pub async fn push(repo: &Repository, path: &Path, options: &PushOptions) -> Result<PushOutcome> {
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let name = WalFileName::parse(file_name)?;
    let object = name.object_path();
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|source| Error::WalFile {
            context: "opening wal file",
            path: path.display().to_string(),
            source,
        })?;
    let store = repo.store();
    let put = store
        .codec()
        .put_sealed(store.object_store(), &object, file, options.max_size)
        .await?;
    let (status, info) = match put {
        SealedPut::Created(info) => (PushStatus::Stored, info),
        SealedPut::Exists { ours, existing }
            if ours.content_sha256 == existing.content_sha256 && ours.size == existing.size =>
        {
            (PushStatus::AlreadyPresent, existing)
        }
        SealedPut::Exists { ours, existing } => {
            return Err(Error::WalConflict {
                name: name.to_string(),
                object: object.to_string(),
                existing: existing.content_sha256,
                pushed: ours.content_sha256,
            });
        }
    };
    Ok(PushOutcome {
        name: name.to_string(),
        object: object.to_string(),
        status,
        size: info.size,
        stored_size: info.stored_size,
        content_sha256: info.content_sha256,
    })
}

/// Fetches WAL file `name` (PostgreSQL's `%f`) into `dest` (`%p`),
/// verified: the content goes to a temporary file next to `dest`, which is
/// renamed to `dest` only once every digest matched. A file the repository
/// does not have is [`FetchOutcome::NotFound`], not an error.
///
/// # Errors
///
/// [`Error::InvalidWalName`], [`Error::WalFile`] for the local files,
/// [`Error::Store`] for the repository: a damaged object is a
/// [`warmspare_store::Error::DigestMismatch`] or
/// [`warmspare_store::Error::Corrupt`] naming it ([`Error::is_corruption`]),
/// an unreachable one is retryable ([`Error::is_retryable`]).
pub async fn fetch(repo: &Repository, name: &str, dest: &Path) -> Result<FetchOutcome> {
    let name = WalFileName::parse(name)?;
    let object = name.object_path();
    let local = |context: &'static str, path: &Path| {
        let path = path.display().to_string();
        move |source| Error::WalFile {
            context,
            path,
            source,
        }
    };
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let temp = tempfile::Builder::new()
        .prefix(".warmspare-fetch-")
        .tempfile_in(&dir)
        .map_err(local("creating a temporary file in", &dir))?;
    let file = temp
        .as_file()
        .try_clone()
        .map_err(local("opening", temp.path()))?;
    let mut writer = tokio::io::BufWriter::new(tokio::fs::File::from_std(file));
    let store = repo.store();
    let info = match store
        .codec()
        .get_sealed(store.object_store(), &object, &mut writer)
        .await
    {
        Ok(info) => info,
        Err(warmspare_store::Error::NotFound { .. }) => {
            return Ok(FetchOutcome::NotFound {
                object: object.to_string(),
            });
        }
        Err(e) => return Err(e.into()),
    };
    writer
        .shutdown()
        .await
        .map_err(local("writing", temp.path()))?;
    drop(writer);
    temp.persist(dest)
        .map_err(|e| local("renaming the fetched file to", dest)(e.error))?;
    Ok(FetchOutcome::Fetched {
        object: object.to_string(),
        size: info.size,
    })
}

/// The recommended `archive_command`: `<warmspare> --config <config> wal
/// push %p`, paths quoted for the shell when they need it.
///
/// ```
/// use std::path::Path;
/// let c = warmspare_snapshot::wal::archive_command(
///     Path::new("/usr/bin/warmspare"),
///     Path::new("/etc/warmspare/warmspare.toml"),
/// );
/// assert_eq!(c, "/usr/bin/warmspare --config /etc/warmspare/warmspare.toml wal push %p");
/// ```
pub fn archive_command(warmspare: &Path, config: &Path) -> String {
    format!(
        "{} --config {} wal push %p",
        shell_quote(warmspare),
        shell_quote(config)
    )
}

/// The recommended `restore_command`: `<warmspare> --config <config> wal
/// fetch %f %p`.
pub fn restore_command(warmspare: &Path, config: &Path) -> String {
    format!(
        "{} --config {} wal fetch %f %p",
        shell_quote(warmspare),
        shell_quote(config)
    )
}

/// Quotes a path for `sh` unless it is made of safe characters only. `%`
/// is doubled, because PostgreSQL expands `%` sequences in these commands.
fn shell_quote(path: &Path) -> String {
    let text = path.display().to_string();
    let safe = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@".contains(&b));
    let quoted = if safe {
        text
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    };
    quoted.replace('%', "%%")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn commands_quote_paths() {
        let c = restore_command(
            Path::new("/opt/warm spare/bin/warmspare"),
            Path::new("/etc/it's 100%.toml"),
        );
        assert_eq!(
            c,
            r"'/opt/warm spare/bin/warmspare' --config '/etc/it'\''s 100%%.toml' wal fetch %f %p"
        );
    }
}
