//! The embeddable warmspare agent.
//!
//! The agent runs at each site: it turns the [configuration](config) into
//! schedules, health probes and the failover driver, and serves the HTTP
//! endpoints (`/health`, `/active`, `/standby`, `/status`, `/metrics`).
//! Another Rust service embeds it as `Agent::new(config)?.run(shutdown)`;
//! the `warmspare-agent` binary only reads files, flags and signals.
//!
//! Today the crate holds the configuration model that the CLI and the agent
//! share: [`Config`] composes the sections that each library owns and
//! validates the file at load time, with errors that name the file, line
//! and key:
//!
//! ```
//! let err = warmspare_agent::Config::from_toml_str(
//!     "[repository]\nurl = \"file:///srv/repo\"\n\n[failover]\nlease_ttl = \"soon\"\n",
//!     "warmspare.toml",
//! )
//! .unwrap_err();
//! assert!(err.to_string().contains("line 5, key `failover.lease_ttl`"));
//! ```
//!
//! The key design decision: libraries never read the environment. The
//! binaries pass `std::env::vars()` to [`Config::apply_env`], so embedders
//! decide where secrets come from.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
// Tests may unwrap; library code may not (workspace lint `unwrap_used`).
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod config;

pub use config::Config;

/// Errors of the agent crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration cannot be used; the error names file, line and key.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
}

/// `Result` with the agent's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
