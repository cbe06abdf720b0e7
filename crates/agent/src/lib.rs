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
//! * [`Job`]: one recurring piece of work (`backup`, `physical_backup`,
//!   `sync`, `restore`, `verify`, `prune`), registered by the embedder;
//!   [`FnJob`] wraps a closure; [`AgentOptions::standard_jobs`] registers
//!   the built-in ones ([`jobs`]). The scheduler runs each at the times of
//!   the `[schedule]` section (5-field cron in UTC, or `every 30s`), never
//!   two runs of one job at once (a due time that finds it running is
//!   skipped and counted), each with the timeout of its `[jobs]` entry,
//!   and records every run's outcome (`succeeded`, `skipped` when the job
//!   does not apply at this site, `failed`, `timed_out`, `cancelled`).
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
//! | `GET /health` | 200 while the agent runs; JSON with one check per job (`ok`, `skipped`, `failing`, `pending`, `not_available`, ...) |
//! | `GET /active` | 200 iff the failover driver says this site may accept traffic *now* (`DriverHandle::may_accept_traffic`); else 503 with the `reason` |
//! | `GET /standby` | 200 iff the driver runs, this site does not hold the lease and its own service is healthy; else 503 with the `reason` |
//! | `GET /status` | 200; JSON: site, paused, each job's schedule, state, next run, last start/finish/outcome/error, counters; `failover` (role, epoch, health, time left, last alert, or why no driver runs), `lease` (holder, epoch, renewals; null when unknown), `rpo_seconds`, `last_snapshot`, `sync_objects_total`, `probes` |
//! | `GET /metrics` | 200; Prometheus text format 0.0.4 |
//! | `POST /pause`, `/resume` | pause or resume the scheduler (due times are skipped and counted while paused) and the failover policy (maintenance: no automatic takeover; renewal and self-fencing go on) |
//! | `POST /failover` | body: `warmspare_failover::remote::AgentCommand` as JSON (`{"command":"failover","force":false}`, `{"command":"switchover","to":"spare"}`); 200 accepted, 409 refused by the policy (with its message), 400 bad body, 503 no driver |
//!
//! `HEAD` works wherever `GET` does; another method gets 405 with `Allow`,
//! an unknown path 404. The `POST` endpoints need `Authorization: Bearer
//! <token>` ([`AgentOptions::token`]): 401 without it or with a wrong one
//! (compared in constant time, never logged), 403 when the agent has no
//! token at all.
//!
//! Metrics: `warmspare_agent_start_time_seconds`,
//! `warmspare_scheduler_paused`, and per job (label `task`)
//! `warmspare_job_available`, `warmspare_job_runs_total{result}`,
//! `warmspare_job_failures_total`, `warmspare_job_last_result{result}`,
//! `warmspare_job_skipped_total{reason="overlap"|"paused"}`,
//! `warmspare_job_running`, `warmspare_last_success_timestamp_seconds`,
//! `warmspare_job_last_start_timestamp_seconds`,
//! `warmspare_job_next_run_timestamp_seconds`; from the jobs
//! `warmspare_last_snapshot_timestamp_seconds`,
//! `warmspare_sync_objects_total`, `warmspare_rpo_seconds`; from the
//! driver `warmspare_may_accept_traffic`, `warmspare_lease_epoch`,
//! `warmspare_lease_holder{site}` and
//! `warmspare_probe_up{target,side="local"|"peer"}`. A value nobody has
//! measured is left out, never exported as zero.
//!
//! # Failover
//!
//! With exactly two `[sites.*]` the agent hosts the failover driver of
//! `warmspare-failover` (turn it off with [`AgentOptions::failover`]). At
//! start it opens the repository with the lease timeouts and runs the
//! compare-and-swap probe on it; on failure it logs an error and runs no
//! driver (`/active` answers 503, reason `repository failed the
//! compare-and-swap probe: ...`). Otherwise the driver runs with the
//! `[failover]` timing, this site's database for fencing and promotion,
//! the `on_promote`/`on_fence`/`on_restart` hooks, and probes of both sites
//! (their database, and their `health` targets, else their agent
//! `/health`; and the peer agent's `/status`, which tells the watchdog
//! whether the peer would take a released lease). The lease
//! is created by the *initial holder*: the site named `primary`, else the
//! first site by name, unless [`AgentOptions::initial_holder`] names
//! another. A logical-restore site reports the age of the snapshot it last
//! restored as its replication lag, which the `max_data_loss` guard
//! weighs; until its first restore the lag is unknown and it does not take
//! over automatically. At shutdown a holder whose service is healthy
//! fences and releases the lease (the peer takes it at its next read); an
//! unhealthy one leaves it to expire after `lease_ttl` plus the margin,
//! unless a restarted agent reclaims it first.
//!
//! # Shutdown
//!
//! When the `shutdown` future completes, the agent stops scheduling and
//! accepting connections, asks running jobs to cancel
//! ([`JobContext::cancelled`]), waits up to the grace period
//! (`[agent] shutdown_grace`, 30 s by default, or
//! [`AgentOptions::cancel_grace`]) and drops the runs that did not stop;
//! then [`Agent::run`] returns.
//!
//! # What is wired, and what is not yet
//!
//! Wired: the configuration, the scheduler (pause and resume included),
//! the HTTP endpoints, graceful shutdown, the built-in jobs, the probes
//! and the failover driver. Not yet: releasing the lease at shutdown (see
//! above). The agent never reports what it has not measured.
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
mod failover;
mod http;
mod job;
pub mod jobs;
mod scheduler;
mod state;

pub use agent::{Agent, AgentOptions, BoundAgent, DEFAULT_CANCEL_GRACE, DEFAULT_JOB_TIMEOUT};
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{Config, Secret};
pub use job::{FnJob, JOB_NAMES, Job, JobContext, JobError, JobOutcome};
/// The repository encryption key type, for [`AgentOptions::encryption_key`].
pub use warmspare_store::EncryptionKey;

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
