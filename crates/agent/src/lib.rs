//! The embeddable warmspare agent.
//!
//! The agent runs at each site: it turns the [configuration](config) into
//! schedules, health probes and the failover driver, and serves the HTTP
//! endpoints that load balancers, Kubernetes and Prometheus expect. Another
//! Rust service embeds it; the `warmspare-agent` binary only reads files,
//! flags, the environment and signals, then does the same:
//!
//! ```
//! use std::sync::Arc;
//! use warmspare_agent::{Agent, AgentOptions, Config, FnJob, JobOutcome, Secret};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = Config::from_toml_str(
//!     r#"
//!     site = "spare"
//!     [repository]
//!     url = "file:///var/lib/warmspare/repo"
//!     [sites.spare]
//!     database = "postgres://builder@10.1.1.20/builder"
//!     [schedule]
//!     sync = "every 5m"
//!     [agent]
//!     listen = "127.0.0.1:0"
//!     "#,
//!     "warmspare.toml",
//! )?;
//! // The binary also calls `config.apply_env(std::env::vars())`, reads the
//! // token from `agent.token_file` and registers the jobs of its build.
//! let options = AgentOptions::new()
//!     .token(Secret::new("s3cret"))
//!     .job(Arc::new(FnJob::new("sync", |_ctx| async {
//!         Ok(JobOutcome::summary("mirrored"))
//!     })));
//! // Any future: a signal, a channel, the embedding service's own shutdown.
//! let shutdown = async {};
//! Agent::new(config, options)?.run(shutdown).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Main types
//!
//! * [`Agent`] (built from a [`Config`] and [`AgentOptions`]) and
//!   [`BoundAgent`] (its listener bound, for the address of port 0).
//! * [`Job`]: one recurring piece of work (`backup`, `sync`, `restore`,
//!   `verify`, `prune`), registered by the embedder; [`FnJob`] wraps a
//!   closure. The scheduler runs each at the times of the `[schedule]`
//!   section (5-field cron in UTC, or `every 30s`), never two runs of one
//!   job at once (a due time that finds it running is skipped and
//!   counted), each with a timeout, and records every run's outcome.
//! * [`Clock`]: where the agent reads the time and waits; [`SystemClock`]
//!   in production, [`ManualClock`] in tests.
//!
//! # Endpoints
//!
//! Served on `[agent] listen` (HTTP/1.1, keep-alive; request heads up to
//! 16 KiB, bodies up to 64 KiB, 256 connections):
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /health` | 200 while the agent runs; JSON with one check per job (`ok`, `failing`, `pending`, `not_available`, ...) |
//! | `GET /active` | 503 `{"active":false,"reason":"failover driver not running"}` until the failover driver is wired in |
//! | `GET /standby` | 503 `{"standby":false,"reason":"failover driver not running"}`, likewise |
//! | `GET /status` | 200; JSON: site, paused, each job's schedule, state, next run, last start/finish/outcome/error, counters; `lease` and `rpo_seconds` null |
//! | `GET /metrics` | 200; Prometheus text format 0.0.4 |
//! | `POST /pause`, `/resume` | pause or resume the scheduler (due times are skipped and counted while paused) |
//! | `POST /failover` | 503 `failover driver not running` |
//!
//! `HEAD` works wherever `GET` does; another method gets 405 with `Allow`,
//! an unknown path 404. The `POST` endpoints need `Authorization: Bearer
//! <token>` ([`AgentOptions::token`]): 401 without it or with a wrong one
//! (compared in constant time, never logged), 403 when the agent has no
//! token at all.
//!
//! Metrics: `warmspare_agent_start_time_seconds`,
//! `warmspare_scheduler_paused`, and per job `warmspare_job_available`,
//! `warmspare_job_runs_total`, `warmspare_job_failures_total`,
//! `warmspare_job_skipped_total{reason="overlap"|"paused"}`,
//! `warmspare_job_running`, `warmspare_last_success_timestamp_seconds`,
//! `warmspare_job_last_start_timestamp_seconds`,
//! `warmspare_job_next_run_timestamp_seconds`. A value nobody has measured
//! is left out, never exported as zero.
//!
//! # Shutdown
//!
//! When the `shutdown` future completes, the agent stops scheduling and
//! accepting connections, asks running jobs to cancel
//! ([`JobContext::cancelled`]), waits up to the cancel grace period
//! ([`AgentOptions::cancel_grace`]) and drops the runs that did not stop;
//! then [`Agent::run`] returns.
//!
//! # What is wired, and what is not yet
//!
//! Wired: the configuration, the scheduler (pause and resume included),
//! the HTTP endpoints, graceful shutdown.
//!
//! Not yet: the concrete jobs (they land with `warmspare-snapshot` and
//! `warmspare-replicate`; until they are registered, a scheduled job is
//! reported as `not_available` and never runs), the health probes and the
//! failover driver (until then `/active` and `/standby` answer 503 with
//! the reason `failover driver not running`, `/failover` does the same,
//! `lease` in `/status` is null, and no RPO or lease metric is exported).
//! The agent never reports what it has not measured.
//!
//! # Configuration
//!
//! [`Config`] composes the sections that each library owns and validates
//! the file at load time, with errors that name the file, line and key:
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
//! The key design decision: libraries never read the environment or the
//! wall clock behind the caller's back. The binaries pass
//! `std::env::vars()` to [`Config::apply_env`] and the token to
//! [`AgentOptions::token`], and time comes from the [`Clock`] in the
//! options, so embedders and tests decide both.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
// Tests may unwrap; library code may not (workspace lint `unwrap_used`).
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod agent;
pub mod clock;
pub mod config;
mod http;
mod job;
mod scheduler;
mod state;

pub use agent::{Agent, AgentOptions, BoundAgent, DEFAULT_CANCEL_GRACE, DEFAULT_JOB_TIMEOUT};
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{Config, Secret};
pub use job::{FnJob, JOB_NAMES, Job, JobContext, JobError, JobOutcome};

/// Errors of the agent crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration cannot be used; the error names file, line and key.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The [`AgentOptions`] cannot be used (unknown job, empty token, ...).
    #[error("invalid agent options: {0}")]
    Options(String),
    /// The HTTP listener cannot be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Whether trying again later may succeed: binding may, once the port
    /// is free; a bad configuration will not.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Bind { .. })
    }
}

/// `Result` with the agent's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
