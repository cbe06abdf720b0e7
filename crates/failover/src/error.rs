//! The crate's error type.

use crate::config::InvalidFailoverConfig;
use crate::probe::ProbeError;

/// Errors of `warmspare-failover`'s I/O side (driver, actions, probes).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The failover settings cannot be safe or cannot work.
    #[error("invalid failover setting `{}`: {}", .0.key, .0.message)]
    Config(#[from] InvalidFailoverConfig),
    /// A probe failed.
    #[error(transparent)]
    Probe(#[from] ProbeError),
    /// A database action (promote, fence, unfence) failed.
    #[error("{action} of {target} failed: {message}")]
    Action {
        /// `promote`, `fence`, `unfence`, `record epoch`.
        action: &'static str,
        /// The database, as `user@host:port/db` (never a password).
        target: String,
        /// What went wrong (scrubbed of secrets).
        message: String,
    },
    /// A hook command failed, timed out or could not be started.
    #[error("hook `{command}` failed: {message}")]
    Hook {
        /// The command as configured.
        command: String,
        /// Exit status, timeout or spawn error.
        message: String,
    },
    /// The driver has stopped; commands cannot be delivered.
    #[error("the failover driver is not running")]
    DriverStopped,
}

impl Error {
    /// Whether trying again later may succeed without a configuration change.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Config(_) | Error::DriverStopped => false,
            Error::Probe(e) => e.is_retryable(),
            Error::Action { .. } | Error::Hook { .. } => true,
        }
    }
}

/// `Result` with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
