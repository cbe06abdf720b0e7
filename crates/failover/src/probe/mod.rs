//! Health probes.
//!
//! * [`postgres`]: [`postgres::inspect`] (what `warmspare check` shows) and
//!   [`postgres::check`] (role, WAL positions, replay lag, write check);
//! * [`http`]: a 2xx answer, optionally a JSON field with a given value;
//! * [`tcp`]: a connection; [`command`]: exit status 0;
//! * [`tracker`]: [`ProbeRunner`] runs a set of them at an interval and
//!   feeds the results into the failover driver.
//!
//! [`Probe`] is one configured probe; [`site_probes`] is what a site is
//! probed with: always its database (the role and replay lag that the
//! `max_data_loss` guard needs), plus its listed `health` targets or, when
//! it lists none, its agent's `/health` ([`default_probes`]). Every probe
//! fails with a [`ProbeError`] whose variant says *why* the target could
//! not be used, so that callers can decide what to retry and operators see
//! the cause at a glance.

pub mod command;
pub mod http;
pub mod postgres;
pub mod tcp;
pub mod tracker;

use std::time::Duration;

pub use http::JsonExpectation;
pub use tracker::ProbeRunner;

/// One configured probe.
///
/// Its `Debug` output, like [`Probe::name`], shows URLs with the password
/// and secret query parameters as `***`.
#[derive(Clone, PartialEq)]
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

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Probe::Postgres { url, write_check } => f
                .debug_struct("Postgres")
                .field("url", &redact(url))
                .field("write_check", write_check)
                .finish(),
            Probe::Http { url, expect } => f
                .debug_struct("Http")
                .field("url", &redact(url))
                .field("expect", expect)
                .finish(),
            Probe::Tcp { addr } => f.debug_struct("Tcp").field("addr", addr).finish(),
            Probe::Command { command } => {
                f.debug_struct("Command").field("command", command).finish()
            }
        }
    }
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
///
/// The same as [`site_probes`] with no `health` targets.
pub fn default_probes(database_url: &str, agent_url: Option<&str>) -> Vec<Probe> {
    site_probes(database_url, agent_url, Vec::new())
}

/// The probes of a site: its database first, always (without write check),
/// then its `health` targets, or its agent's `/health` when it lists none.
///
/// The database is probed even when `health` lists other targets, because
/// it is the only source of a streaming or repository-fed standby's role
/// and replay lag: without it the `max_data_loss` guard has nothing to go
/// on and refuses every failover that is not forced. A `health` target
/// naming exactly the database URL is not probed twice.
///
/// ```
/// use warmspare_failover::probe::{Probe, site_probes};
///
/// let health = vec![Probe::from_target("tcp://10.0.1.10:8080").unwrap()];
/// let probes = site_probes("postgres://u@db/app", Some("http://10.0.1.10:9750"), health);
/// assert_eq!(probes.len(), 2);
/// assert!(matches!(probes[0], Probe::Postgres { .. }));
/// assert_eq!(probes[1].name(), "tcp://10.0.1.10:8080");
/// ```
pub fn site_probes(database_url: &str, agent_url: Option<&str>, health: Vec<Probe>) -> Vec<Probe> {
    let mut probes = vec![Probe::Postgres {
        url: database_url.to_owned(),
        write_check: false,
    }];
    if health.is_empty() {
        if let Some(agent) = agent_url {
            probes.push(Probe::Http {
                url: format!("{}/health", agent.trim_end_matches('/')),
                expect: None,
            });
        }
        return probes;
    }
    probes.extend(health.into_iter().filter(|probe| {
        !matches!(probe, Probe::Postgres { url, write_check: false } if url == database_url)
    }));
    probes
}

/// A URL with its password and secret query parameters replaced by `***`
/// (text that is not a URL has its userinfo replaced).
pub(crate) fn redact(text: &str) -> String {
    warmspare_store::redact::redact_url(text)
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn postgres(url: &str) -> Probe {
        Probe::Postgres {
            url: url.into(),
            write_check: false,
        }
    }

    #[test]
    fn the_database_is_probed_with_or_without_health_targets() {
        let db = "postgres://u@db/app";
        let agent = Some("http://10.0.1.10:9750/");
        // No targets: the database and the agent's /health.
        let probes = site_probes(db, agent, Vec::new());
        assert_eq!(probes, default_probes(db, agent));
        assert_eq!(probes[0], postgres(db));
        assert_eq!(probes[1].name(), "http://10.0.1.10:9750/health");
        // Targets: the database and the targets, not the agent.
        let tcp = Probe::from_target("tcp://10.0.1.10:8080").unwrap();
        let other = postgres("postgres://probe@pgbouncer:6432/app");
        let probes = site_probes(db, agent, vec![tcp.clone(), other.clone()]);
        assert_eq!(probes, [postgres(db), tcp.clone(), other]);
        // A target naming the database itself is not probed twice, but a
        // write check on it is kept.
        let probes = site_probes(db, None, vec![postgres(db), tcp.clone()]);
        assert_eq!(probes, [postgres(db), tcp]);
        let write = Probe::Postgres {
            url: db.into(),
            write_check: true,
        };
        let probes = site_probes(db, None, vec![write.clone()]);
        assert_eq!(probes, [postgres(db), write]);
    }

    #[test]
    fn postgres_targets_are_accepted_and_named_without_secrets() {
        for (target, shown) in [
            (
                "postgres://probe:hunter2@10.0.1.20:6432/app",
                "postgres://probe:***@10.0.1.20:6432/app",
            ),
            (
                "postgresql://probe@db/app?sslmode=require&password=hunter2",
                "postgresql://probe@db/app?sslmode=require&password=***",
            ),
        ] {
            let probe = Probe::from_target(target).unwrap();
            assert_eq!(probe, postgres(target));
            assert_eq!(probe.name(), shown);
            let debug = format!("{probe:?}");
            assert!(
                debug.contains(shown) && !debug.contains("hunter2"),
                "{debug}"
            );
        }
        let err = Probe::from_target("mysql://root:hunter2@db/x").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = Probe::from_target("gopher://root:hunter2@[bad/x").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert_eq!(err.kind(), "invalid-target");
    }

    #[tokio::test]
    async fn a_failed_postgres_probe_never_shows_the_password() {
        // Nothing listens on port 1 of loopback.
        let probe = Probe::from_target("postgres://probe:hunter2@127.0.0.1:1/app").unwrap();
        let result = probe
            .run(&reqwest::Client::new(), Duration::from_secs(2))
            .await;
        assert!(!result.ok);
        let shown = format!("{result:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(result.name.contains("probe:***@"), "{shown}");
    }
}
