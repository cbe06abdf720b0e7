//! [`LocalCas`]: compare-and-swap for a repository on a local filesystem.
//!
//! # How it works
//!
//! Every mutating call runs, on a blocking thread, while holding an
//! exclusive `flock(2)` on the repository root directory (std's
//! [`File::lock`] on a directory file descriptor):
//!
//! 1. read the current content (if any) and hash it;
//! 2. compare: `create` requires absence, `update` requires that the
//!    SHA-256 of the current content equals the expected version;
//! 3. write the new content to a staging file next to the object, `fsync`
//!    it;
//! 4. publish it: `rename(2)` over the object (`update`) or `link(2)` to the
//!    object name, which fails if the name exists (`create`);
//! 5. `fsync` the parent directory, then release the lock.
//!
//! # Why this is correct
//!
//! * **Mutual exclusion.** `flock` locks belong to an open file
//!   description. Each call opens the root directory afresh, so calls
//!   exclude each other whether they come from other processes or from
//!   other threads and tasks of this one. Steps 1 to 4 are therefore one
//!   critical section: no write can slip between the comparison and the
//!   publication.
//! * **Readers see whole objects.** `rename` and `link` replace the
//!   directory entry atomically; a reader (locked or not, including
//!   `LocalFileSystem::get`) sees the old or the new file, never a partial
//!   one. Reads therefore need no lock.
//! * **Crash safety.** The staging file is fsynced before it is published
//!   and the directory after, so a successful return is durable and a crash
//!   at any point leaves the old or the new content. A crash can leave a
//!   staging file behind; it is named `<object>#<digits>`, the convention
//!   `LocalFileSystem` uses for its own staging files, so listings skip it.
//! * **No stuck locks.** The kernel releases a `flock` when its descriptor
//!   is closed, including when the process dies; there is no lock file to
//!   clean up and no stale-lock heuristic.
//! * **Creates are atomic even against non-locking writers.** `link(2)`
//!   fails with `EEXIST`, so an object created concurrently by
//!   `LocalFileSystem::put_opts(PutMode::Create)` (which does not take the
//!   lock) is never overwritten.
//!
//! # Why versions are content hashes
//!
//! `LocalFileSystem` reports ETags built from inode, mtime and size. Those
//! are unsafe as compare-and-swap tokens: after a replace, the freed inode
//! number can be reused at once by the next file, mtime has limited
//! resolution (and can be set back), and two contents of equal size are
//! common (a lease JSON). An update could then match a version that is not
//! the one its caller read. The SHA-256 of the content has no such
//! coincidences; its one property to keep in mind is that identical bytes
//! give identical versions (see the ABA note on [`CompareAndSwap`]).
//!
//! # Limits
//!
//! * Needs a filesystem with working `flock` on directories: local
//!   filesystems on Linux do. On NFS, Linux emulates `flock` with POSIX
//!   byte-range locks, which need a writable descriptor (so locking a
//!   directory fails) and are only as reliable as the NFS lock manager
//!   across client crashes and partitions. Keep the lease on S3 when the
//!   repository is on a network filesystem.
//! * All processes must use the same repository directory (a symlinked path
//!   is fine: locks are per inode).
//! * Mutating calls are serialised per repository. They are rare (lease
//!   renewals, `FORMAT`), so this costs nothing in practice.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path as FsPath, PathBuf};

use bytes::Bytes;
use object_store::local::LocalFileSystem;
use object_store::path::Path;

use super::{CompareAndSwap, Version, sha256_hex};
use crate::error::{Error, Result};

/// Compare-and-swap for a filesystem repository, serialised by an
/// exclusive `flock` on the repository root (see the module docs).
#[derive(Debug, Clone)]
pub struct LocalCas {
    root: PathBuf,
    fs: LocalFileSystem,
}

impl LocalCas {
    /// A compare-and-swap over the objects under `root`, which must exist.
    pub fn new(root: impl AsRef<FsPath>) -> Result<Self> {
        let root = root.as_ref();
        let fs = LocalFileSystem::new_with_prefix(root)
            .map_err(|e| Error::from_store(root.display().to_string(), e))?;
        let root = std::fs::canonicalize(root).map_err(|source| Error::Io {
            context: "resolving repository directory",
            path: root.display().to_string(),
            source,
        })?;
        Ok(Self { root, fs })
    }

    fn file_path(&self, path: &Path) -> Result<PathBuf> {
        if path.as_ref().is_empty() {
            return Err(Error::InvalidPath {
                path: String::new(),
                reason: "empty object path".into(),
            });
        }
        self.fs
            .path_to_filesystem(path)
            .map_err(|e| Error::from_store(path.to_string(), e))
    }

    async fn run_locked<T, F>(&self, path: &Path, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&FsPath, &FsPath, &str) -> Result<T> + Send + 'static,
    {
        let file = self.file_path(path)?;
        let root = self.root.clone();
        let name = path.to_string();
        tokio::task::spawn_blocking(move || {
            let lock =
                File::open(&root).map_err(|e| io_err("opening repository root of", &name, e))?;
            lock.lock()
                .map_err(|e| io_err("locking repository root for", &name, e))?;
            let result = op(&root, &file, &name);
            // Closing the descriptor releases the lock.
            drop(lock);
            result
        })
        .await
        .map_err(|e| Error::Io {
            context: "compare-and-swap task failed for",
            path: path.to_string(),
            source: io::Error::other(e),
        })?
    }
}

#[async_trait::async_trait]
impl CompareAndSwap for LocalCas {
    async fn read(&self, path: &Path) -> Result<Option<(Bytes, Version)>> {
        let file = self.file_path(path)?;
        let name = path.to_string();
        tokio::task::spawn_blocking(move || {
            Ok(read_current(&file, &name)?.map(|content| {
                let version = local_version(&content);
                (Bytes::from(content), version)
            }))
        })
        .await
        .map_err(|e| Error::Io {
            context: "read task failed for",
            path: path.to_string(),
            source: io::Error::other(e),
        })?
    }

    async fn create(&self, path: &Path, content: Bytes) -> Result<Version> {
        self.run_locked(path, move |root, file, name| {
            if read_current(file, name)?.is_some() {
                return Err(Error::AlreadyExists { path: name.into() });
            }
            let parent = parent_of(file, name)?;
            ensure_dir(root, parent).map_err(|e| io_err("creating directories for", name, e))?;
            let staged = write_staged(file, &content, name)?;
            let linked = std::fs::hard_link(&staged, file);
            let _ = std::fs::remove_file(&staged);
            match linked {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(Error::AlreadyExists { path: name.into() });
                }
                Err(e) => return Err(io_err("publishing", name, e)),
            }
            sync_dir(parent).map_err(|e| io_err("syncing directory of", name, e))?;
            Ok(local_version(&content))
        })
        .await
    }

    async fn update(&self, path: &Path, content: Bytes, expected: &Version) -> Result<Version> {
        let expected = expected.token().to_string();
        self.run_locked(path, move |_root, file, name| {
            let Some(current) = read_current(file, name)? else {
                return Err(Error::VersionMismatch { path: name.into() });
            };
            if local_version(&current).token() != expected {
                return Err(Error::VersionMismatch { path: name.into() });
            }
            let parent = parent_of(file, name)?;
            let staged = write_staged(file, &content, name)?;
            if let Err(e) = std::fs::rename(&staged, file) {
                let _ = std::fs::remove_file(&staged);
                return Err(io_err("publishing", name, e));
            }
            sync_dir(parent).map_err(|e| io_err("syncing directory of", name, e))?;
            Ok(local_version(&content))
        })
        .await
    }

    async fn delete(&self, path: &Path) -> Result<()> {
        self.run_locked(path, move |_root, file, name| {
            match std::fs::remove_file(file) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(io_err("deleting", name, e)),
            }
            let parent = parent_of(file, name)?;
            sync_dir(parent).map_err(|e| io_err("syncing directory of", name, e))
        })
        .await
    }
}

/// The local version token: `sha256:<hex>` of the content.
fn local_version(content: &[u8]) -> Version {
    Version::new(format!("sha256:{}", sha256_hex(content)), None)
}

fn io_err(context: &'static str, name: &str, source: io::Error) -> Error {
    Error::Io {
        context,
        path: name.to_string(),
        source,
    }
}

/// The current content, or `None` when there is no object (a directory at
/// the path is a prefix, not an object).
fn read_current(file: &FsPath, name: &str) -> Result<Option<Vec<u8>>> {
    match std::fs::read(file) {
        Ok(content) => Ok(Some(content)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::IsADirectory => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => Ok(None),
        Err(e) => Err(io_err("reading", name, e)),
    }
}

fn parent_of<'a>(file: &'a FsPath, name: &str) -> Result<&'a FsPath> {
    file.parent().ok_or_else(|| Error::InvalidPath {
        path: name.to_string(),
        reason: "object path has no parent directory".into(),
    })
}

/// Writes `content` to a fresh `<file>#<digits>` staging file and fsyncs it.
fn write_staged(file: &FsPath, content: &[u8], name: &str) -> Result<PathBuf> {
    loop {
        let mut staged = file.as_os_str().to_owned();
        staged.push(format!("#{}", rand::random::<u64>()));
        let staged = PathBuf::from(staged);
        let mut out = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&staged)
        {
            Ok(out) => out,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_err("creating staging file for", name, e)),
        };
        let written = out.write_all(content).and_then(|()| out.sync_all());
        if let Err(e) = written {
            let _ = std::fs::remove_file(&staged);
            return Err(io_err("writing staging file for", name, e));
        }
        return Ok(staged);
    }
}

/// Creates `dir` and missing ancestors below `root`, fsyncing each parent
/// whose entries changed.
fn ensure_dir(root: &FsPath, dir: &FsPath) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = match dir.parent() {
        Some(parent) if parent.starts_with(root) => parent,
        _ => {
            return Err(io::Error::other(
                "object directory escapes the repository root",
            ));
        }
    };
    ensure_dir(root, parent)?;
    match std::fs::create_dir(dir) {
        Ok(()) => sync_dir(parent),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

fn sync_dir(dir: &FsPath) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::{ObjectStore, ObjectStoreExt};

    #[tokio::test]
    async fn staging_files_are_invisible_and_objects_interoperate() {
        let dir = tempfile::tempdir().unwrap();
        let cas = LocalCas::new(dir.path()).unwrap();
        let path = Path::from("lease/active.json");
        let v1 = cas.create(&path, Bytes::from_static(b"one")).await.unwrap();
        // A leftover staging file, as after a crash.
        std::fs::write(dir.path().join("lease/active.json#123"), b"junk").unwrap();

        let fs = LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        let listed: Vec<_> = futures::TryStreamExt::try_collect::<Vec<_>>(fs.list(None))
            .await
            .unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].location, path);
        let got = fs.get(&path).await.unwrap().bytes().await.unwrap();
        assert_eq!(&got[..], b"one");

        let v2 = cas
            .update(&path, Bytes::from_static(b"two"), &v1)
            .await
            .unwrap();
        assert_ne!(v1, v2);
        assert!(v2.token().starts_with("sha256:"));
    }

    #[tokio::test]
    async fn same_size_rewrite_is_detected() {
        // The case inode-mtime-size ETags can miss: same size, rewritten fast.
        let dir = tempfile::tempdir().unwrap();
        let cas = LocalCas::new(dir.path()).unwrap();
        let path = Path::from("x");
        let v1 = cas
            .create(&path, Bytes::from_static(b"aaaa"))
            .await
            .unwrap();
        let v2 = cas
            .update(&path, Bytes::from_static(b"bbbb"), &v1)
            .await
            .unwrap();
        let stale = cas.update(&path, Bytes::from_static(b"cccc"), &v1).await;
        assert!(matches!(stale, Err(Error::VersionMismatch { .. })));
        let (content, v) = cas.read(&path).await.unwrap().unwrap();
        assert_eq!(&content[..], b"bbbb");
        assert_eq!(v, v2);
    }

    #[tokio::test]
    async fn update_of_missing_object_is_a_mismatch_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cas = LocalCas::new(dir.path()).unwrap();
        let path = Path::from("a/b/c");
        let v = Version::new("sha256:00", None);
        let r = cas.update(&path, Bytes::from_static(b"x"), &v).await;
        assert!(matches!(r, Err(Error::VersionMismatch { .. })));
        assert!(cas.read(&path).await.unwrap().is_none());
        cas.delete(&path).await.unwrap();
    }
}
