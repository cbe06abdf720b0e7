//! `warmspare wal push <PATH>` and `warmspare wal fetch <NAME> <DEST>`: the
//! bodies of PostgreSQL's `archive_command` and `restore_command`.
//!
//! Both run as the server's user from its data directory, so give the
//! configuration explicitly:
//!
//! ```text
//! archive_command = 'warmspare --config /etc/warmspare/warmspare.toml wal push %p'
//! restore_command = 'warmspare --config /etc/warmspare/warmspare.toml wal fetch %f %p'
//! ```
//!
//! `wal fetch` does not use the usual exit codes: PostgreSQL reads any
//! status up to 125 as "not available (yet)" and anything above as fatal
//! for the startup process (see `warmspare_snapshot::wal` for the reasons):
//!
//! | status | when |
//! | --- | --- |
//! | 0 | fetched and verified |
//! | 1 | not in the repository (quiet); or the repository cannot be reached while the server is a standby (`standby.signal`): a warning, and the standby retries |
//! | 255 | anything else: corruption, an unreachable repository during a recovery (which would otherwise end early and lose data), a bad name, configuration or local I/O error |
//!
//! `wal push` exits 1 on any failure (PostgreSQL keeps the file and
//! retries), 2 for bad usage or configuration.

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use warmspare_snapshot::wal::{self, FetchOutcome, PushOptions};

use crate::output::{self, one_line, scrub};
use crate::repo::{self, Open};
use crate::{EXIT_FAILED, EXIT_OK, Global};

/// `wal fetch`'s status for errors that must stop recovery: above 125, so
/// that PostgreSQL's startup process treats it as fatal.
const EXIT_FATAL: u8 = 255;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: WalCommand,
}

#[derive(Debug, clap::Subcommand)]
enum WalCommand {
    /// Archive one WAL file (archive_command = '... wal push %p').
    ///
    /// Create-once: pushing identical bytes again succeeds, other bytes
    /// under a stored name fail and are never written.
    Push {
        /// The file (PostgreSQL's %p); its name is the WAL file name.
        path: PathBuf,
    },
    /// Fetch one WAL file, verified (restore_command = '... wal fetch %f %p').
    ///
    /// Exit status 1: not in the repository. 255: corrupt object or another
    /// error that must stop recovery (see the documentation).
    Fetch {
        /// The WAL file name (PostgreSQL's %f).
        name: String,
        /// Where to write it (PostgreSQL's %p).
        dest: PathBuf,
    },
}

pub(crate) fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        WalCommand::Push { path } => push(global, &path),
        WalCommand::Fetch { name, dest } => Ok(fetch(global, &name, &dest)),
    }
}

fn push(global: &Global, path: &Path) -> anyhow::Result<ExitCode> {
    let config = super::load_config(global)?;
    let secrets = repo::secrets(&config, []);
    let outcome = super::runtime()?.block_on(async {
        // The first push may come before the first backup: create the
        // repository's FORMAT if there is none.
        let repository = repo::open(&config, Open::OrInit, &secrets).await?;
        wal::push(&repository, path, &PushOptions::default())
            .await
            .map_err(|e| {
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                repo::failure(&e, &secrets).context(format!("wal push {name}"))
            })
    })?;
    if global.json {
        output::write_json(&mut io::stdout().lock(), &outcome)?;
    }
    Ok(ExitCode::from(EXIT_OK))
}

/// How a `wal fetch` ends.
enum Failure {
    /// Exit 1 with a warning: a standby retries.
    Retry(String),
    /// Exit 255 with an error: the startup process stops.
    Fatal(String),
}

fn fetch(global: &Global, name: &str, dest: &Path) -> ExitCode {
    // restore_command runs in the data directory.
    let standby = Path::new("standby.signal").exists();
    match try_fetch(global, name, dest, standby) {
        Ok(FetchOutcome::Fetched { object, size }) => {
            if global.json {
                let outcome = FetchOutcome::Fetched { object, size };
                let _ = output::write_json(&mut io::stdout().lock(), &outcome);
            }
            ExitCode::from(EXIT_OK)
        }
        // Routine: PostgreSQL probes for files that do not exist yet.
        Ok(FetchOutcome::NotFound { .. }) => ExitCode::from(EXIT_FAILED),
        Err(Failure::Retry(message)) => {
            eprintln!(
                "warning: wal fetch {name}: the repository cannot be reached, so the file is \
                 reported as not available; the standby will retry: {message}"
            );
            ExitCode::from(EXIT_FAILED)
        }
        Err(Failure::Fatal(message)) => {
            eprintln!("error: wal fetch {name}: {message}");
            ExitCode::from(EXIT_FATAL)
        }
    }
}

fn try_fetch(
    global: &Global,
    name: &str,
    dest: &Path,
    standby: bool,
) -> Result<FetchOutcome, Failure> {
    let config = super::load_config(global).map_err(|e| Failure::Fatal(format!("{e:#}")))?;
    let secrets = repo::secrets(&config, []);
    let runtime = super::runtime().map_err(|e| Failure::Fatal(format!("{e:#}")))?;
    runtime.block_on(async {
        // The key file, when configured, is needed to read encrypted WAL;
        // an unreadable key file is a configuration error: fatal.
        let store_config = repo::store_config(&config)
            .map_err(|e| Failure::Fatal(scrub(&format!("{e:#}"), &secrets)))?;
        let store = warmspare_store::Store::open(&store_config)
            .map_err(|e| classify(&warmspare_snapshot::Error::Store(e), standby, &secrets))?;
        let repository = warmspare_store::Repository::open(store)
            .await
            .map_err(|e| classify(&warmspare_snapshot::Error::Store(e), standby, &secrets))?;
        wal::fetch(&repository, name, dest)
            .await
            .map_err(|e| classify(&e, standby, &secrets))
    })
}

/// Transient trouble reaching the repository is a retry for a standby;
/// everything else (and everything during a recovery) is fatal.
fn classify(error: &warmspare_snapshot::Error, standby: bool, secrets: &[String]) -> Failure {
    let text = scrub(&one_line(error), secrets);
    if error.is_corruption() {
        Failure::Fatal(format!(
            "{text}; the repository holds a damaged object, and replaying it is never an \
             option: recovery stops here"
        ))
    } else if standby && error.is_retryable() {
        Failure::Retry(text)
    } else {
        Failure::Fatal(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_standby_retries_an_unreachable_repository() {
        let unreachable = warmspare_snapshot::Error::Unreachable {
            target: "repository".into(),
            message: "connection refused, secret pw1".into(),
        };
        let secrets = ["pw1".to_owned()];
        assert!(matches!(
            classify(&unreachable, true, &secrets),
            Failure::Retry(m) if !m.contains("pw1")
        ));
        assert!(matches!(
            classify(&unreachable, false, &secrets),
            Failure::Fatal(_)
        ));
        let corrupt = warmspare_snapshot::Error::Store(warmspare_store::Error::DigestMismatch {
            path: "wal/00000001/000000010000000000000001.zst".into(),
            expected: "a".into(),
            actual: "b".into(),
        });
        for standby in [false, true] {
            assert!(matches!(
                classify(&corrupt, standby, &secrets),
                Failure::Fatal(m) if m.contains("wal/00000001/000000010000000000000001.zst")
            ));
        }
    }
}
