//! The testkit's error type.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while setting up test infrastructure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A program the testkit needs is not installed.
    #[error("{program} not found (looked in: {looked}); {hint}")]
    NotInstalled {
        /// The program that is missing, such as `initdb` or `moto_server`.
        program: &'static str,
        /// Every place that was searched, in order.
        looked: String,
        /// How to install it.
        hint: &'static str,
    },

    /// A helper command ran but failed.
    #[error("{what} failed: {detail}")]
    Command {
        /// What was being done, such as `initdb` or `pg_ctl start`.
        what: String,
        /// Exit status, stderr and, for servers, the tail of the server log.
        detail: String,
    },

    /// A server did not become ready in time.
    #[error("{what} did not become ready within {timeout:?}: {detail}")]
    Timeout {
        /// The server that was waited for.
        what: String,
        /// How long the testkit waited.
        timeout: Duration,
        /// The last error seen and the tail of the server log.
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

    /// The test machine is set up in a way the testkit cannot work with.
    #[error("unsupported environment: {0}")]
    Environment(String),

    /// A request to the S3 server returned an unexpected status.
    #[error("s3 {request} returned HTTP {status}: {body}")]
    Http {
        /// Method and path of the request.
        request: String,
        /// HTTP status code.
        status: u16,
        /// Response body (truncated).
        body: String,
    },

    /// Building an object store client failed.
    #[error("object store setup failed")]
    ObjectStore(#[from] object_store::Error),
}

impl Error {
    /// Whether this error means "a required program is not installed", which
    /// tests may treat as a reason to skip (see [`crate::S3Server::try_shared`]).
    pub fn is_not_installed(&self) -> bool {
        matches!(self, Error::NotInstalled { .. })
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn io_path(what: &str, path: &std::path::Path, source: std::io::Error) -> Self {
        Error::Io {
            context: format!("{what} {}", path.display()),
            source,
        }
    }
}

impl From<warmspare_pgcluster::Error> for Error {
    fn from(err: warmspare_pgcluster::Error) -> Self {
        use warmspare_pgcluster::Error as Pg;
        match err {
            Pg::NotInstalled { program, looked } => Error::NotInstalled {
                program,
                looked,
                hint: crate::postgres::PG_INSTALL_HINT,
            },
            Pg::Command { what, detail } => Error::Command { what, detail },
            Pg::Io { context, source } => Error::Io { context, source },
            Pg::Environment(detail) => Error::Environment(detail),
            // The enum is non-exhaustive: anything new keeps its message.
            other => Error::Environment(other.to_string()),
        }
    }
}

/// The testkit's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A helper for messages that list searched locations.
pub(crate) fn join_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
