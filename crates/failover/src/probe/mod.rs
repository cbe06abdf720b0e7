//! Health probes.
//!
//! Today this holds the PostgreSQL inspection that `warmspare check` uses
//! ([`postgres::inspect`]); HTTP, TCP and command probes join it later.
//! Every probe fails with a [`ProbeError`] whose variant says *why* the
//! target could not be used, so that callers can decide what to retry and
//! operators see the cause at a glance.

pub mod postgres;

use std::time::Duration;

/// Why a probe failed.
///
/// `target` is a description of what was probed that never contains a
/// password (for PostgreSQL: `user@host:port/database`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// The probe target is malformed (for example a bad connection URL).
    #[error("invalid probe target: {message}")]
    InvalidTarget {
        /// What is wrong, without the secret parts of the target.
        message: String,
    },
    /// Nothing answered: connection refused, no route, name not resolved.
    #[error("{target} is unreachable: {message}")]
    Unreachable {
        /// What was probed.
        target: String,
        /// The network error.
        message: String,
    },
    /// The server answered but refused the credentials.
    #[error("authentication failed at {target}: {message}")]
    AuthenticationFailed {
        /// What was probed.
        target: String,
        /// The server's message (it never contains the password).
        message: String,
    },
    /// No complete answer within the probe's timeout.
    #[error("{target} did not answer within {}", humantime::format_duration(*.after))]
    Timeout {
        /// What was probed.
        target: String,
        /// The timeout that elapsed.
        after: Duration,
    },
    /// Any other failure (TLS, protocol, a query that failed).
    #[error("{target}: {message}")]
    Other {
        /// What was probed.
        target: String,
        /// What went wrong.
        message: String,
    },
}

impl ProbeError {
    /// Whether trying again later may succeed without anyone changing the
    /// configuration (unreachable and timed-out targets may come back; bad
    /// credentials or a malformed target will not).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ProbeError::Unreachable { .. } | ProbeError::Timeout { .. } | ProbeError::Other { .. }
        )
    }

    /// A short, stable name of the failure class: `invalid-target`,
    /// `unreachable`, `authentication-failed`, `timeout` or `other`.
    pub fn kind(&self) -> &'static str {
        match self {
            ProbeError::InvalidTarget { .. } => "invalid-target",
            ProbeError::Unreachable { .. } => "unreachable",
            ProbeError::AuthenticationFailed { .. } => "authentication-failed",
            ProbeError::Timeout { .. } => "timeout",
            ProbeError::Other { .. } => "other",
        }
    }
}
