//! The crate's error type.

use std::path::{Path, PathBuf};

/// Everything that can go wrong while finding, creating, starting or
/// stopping a throwaway cluster.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The PostgreSQL server binaries (or another program) are not installed.
    #[error(
        "{program} not found (looked in: {looked}); install the PostgreSQL server (`apt-get install postgresql`)"
    )]
    NotInstalled {
        /// The program that is missing, such as `initdb`.
        program: &'static str,
        /// Every place that was searched, in order.
        looked: String,
    },

    /// A PostgreSQL tool or helper command ran but failed.
    #[error("{what} failed: {detail}")]
    Command {
        /// What was being done, such as `initdb` or `pg_ctl start`.
        what: String,
        /// Exit status, stderr and, for the server, the tail of its log.
        detail: String,
    },

    /// A file-system or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the path when there is one.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The machine is set up in a way this crate cannot work with (for
    /// example: running as root without a `postgres` user).
    #[error("unsupported environment: {0}")]
    Environment(String),
}

impl Error {
    /// Whether this error means "a required program is not installed".
    pub fn is_not_installed(&self) -> bool {
        matches!(self, Error::NotInstalled { .. })
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn io_path(what: &str, path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            context: format!("{what} {}", path.display()),
            source,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Lists searched locations for [`Error::NotInstalled`].
pub(crate) fn join_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
