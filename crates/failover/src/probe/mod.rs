//! Health probes.
//!
//! * [`postgres`]: [`postgres::inspect`] (what `warmspare check` shows) and
//!   [`postgres::check`] (role, WAL positions, replay lag, write check);
//! * [`http`]: a 2xx answer, optionally a JSON field with a given value;
//! * [`tcp`]: a connection; [`command`]: exit status 0;
//! * [`tracker`]: [`ProbeRunner`] runs a set of them at an interval and
//!   feeds the results into the failover driver.
//!
//! [`Probe`] is one configured probe; [`default_probes`] is what a site
//! that lists no `health` targets gets: its database and its agent's
//! `/health`. Every probe fails with a [`ProbeError`] whose variant says *why* the
//! target could not be used, so that callers can decide what to retry and
//! operators see the cause at a glance.

pub mod command;
pub mod http;
pub mod postgres;
pub mod tcp;
pub mod tracker;

use std::time::Duration;

pub use http::JsonExpectation;
pub use tracker::ProbeRunner;

/// One configured probe.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    /// PostgreSQL: connect, `SELECT 1`, role, lag; with `write_check` a
    /// write must succeed too.
    Postgres {
        /// Connection URL (may contain a password; never printed).
        url: String,
        /// Also require a successful write (off for standbys and fenced
        /// sites, which are healthy but read-only).
        write_check: bool,
    },
    /// HTTP GET: a 2xx answer, and the JSON field when given.
    Http {
        /// The URL.
        url: String,
        /// An optional JSON field check.
        expect: Option<JsonExpectation>,
    },
    /// A TCP connection to `host:port`.
    Tcp {
        /// `host:port`.
        addr: String,
    },
    /// `sh -c COMMAND` exits 0.
    Command {
        /// The command line.
        command: String,
    },
}

/// The result of one probe run.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeResult {
    /// What was probed (no secrets).
    pub name: String,
    /// Whether it succeeded.
    pub ok: bool,
    /// The failure, or a short description of the success.
    pub detail: String,
    /// How long it took.
    pub elapsed: Duration,
    /// Replay lag reported by a standby database.
    pub lag: Option<Duration>,
    /// The PostgreSQL details, for a PostgreSQL probe that answered.
    pub postgres: Option<postgres::PostgresHealth>,
}

impl Probe {
    /// A health target URL: `http(s)://...` or `tcp://host:port`.
    pub fn from_target(url: &str) -> Result<Probe, ProbeError> {
        if let Some(rest) = url.strip_prefix("tcp://") {
            return Ok(Probe::Tcp {
                addr: rest.trim_end_matches('/').to_owned(),
            });
        }
        if url.starts_with("http://") || url.starts_with("https://") {
            return Ok(Probe::Http {
                url: url.to_owned(),
                expect: None,
            });
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Probe::Postgres {
                url: url.to_owned(),
                write_check: false,
            });
        }
        Err(ProbeError::InvalidTarget {
            message: format!(
                "{}: expected http(s)://, tcp:// or postgres://",
                redact(url)
            ),
        })
    }

    /// What is probed, without secrets.
    pub fn name(&self) -> String {
        match self {
            Probe::Postgres { url, .. } => redact(url),
            Probe::Http { url, .. } => redact(url),
            Probe::Tcp { addr } => format!("tcp://{addr}"),
            Probe::Command { command } => format!("command `{command}`"),
        }
    }

    /// Runs the probe once within `timeout`.
    pub async fn run(&self, client: &reqwest::Client, timeout: Duration) -> ProbeResult {
        let started = tokio::time::Instant::now();
        let (outcome, lag, pg) = match self {
            Probe::Postgres { url, write_check } => {
                match postgres::check(url, timeout, *write_check).await {
                    Ok(h) if *write_check && h.writable != Some(true) => (
                        Err("database does not accept writes".to_owned()),
                        h.replay_lag,
                        Some(h),
                    ),
                    Ok(h) => (
                        Ok(if h.in_recovery {
                            "in recovery"
                        } else {
                            "primary"
                        }
                        .to_owned()),
                        h.replay_lag,
                        Some(h),
                    ),
                    Err(e) => (Err(e.to_string()), None, None),
                }
            }
            Probe::Http { url, expect } => (
                http::check(client, url, expect.as_ref(), timeout)
                    .await
                    .map(|()| "ok".to_owned())
                    .map_err(|e| e.to_string()),
                None,
                None,
            ),
            Probe::Tcp { addr } => (
                tcp::check(addr, timeout)
                    .await
                    .map(|()| "connected".to_owned())
                    .map_err(|e| e.to_string()),
                None,
                None,
            ),
            Probe::Command { command } => (
                command::check(command, timeout)
                    .await
                    .map(|()| "exit 0".to_owned())
                    .map_err(|e| e.to_string()),
                None,
                None,
            ),
        };
        let (ok, detail) = match outcome {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        ProbeResult {
            name: self.name(),
            ok,
            detail,
            elapsed: started.elapsed(),
            lag,
            postgres: pg,
        }
    }
}

/// The probes of a site that lists no `health` targets: its database
/// (without write check) and, when it has one, its agent's `/health`.
pub fn default_probes(database_url: &str, agent_url: Option<&str>) -> Vec<Probe> {
    let mut probes = vec![Probe::Postgres {
        url: database_url.to_owned(),
        write_check: false,
    }];
    if let Some(agent) = agent_url {
        probes.push(Probe::Http {
            url: format!("{}/health", agent.trim_end_matches('/')),
            expect: None,
        });
    }
    probes
}

/// A URL with its password replaced by `***` (text that is not a URL is
/// returned unchanged).
pub(crate) fn redact(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => text.to_owned(),
    }
}

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
