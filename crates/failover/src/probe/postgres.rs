//! PostgreSQL inspection: connect, ask the server who it is, disconnect.
//!
//! [`inspect`] is what `warmspare check` shows for each site's database and
//! what the PostgreSQL health probe builds on.
//!
//! Connection URLs follow libpq: `postgres://user:password@host:port/db`
//! with optional `sslmode`, `host=/socket/dir` and friends. As with libpq,
//! the driver fills what the URL leaves out from the standard `PG*`
//! variables and `~/.pgpass`.
//!
//! No error from this module contains the password: errors describe the
//! target as `user@host:port/database`, and any text that comes from the
//! driver is scrubbed of the password before it is kept.

use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions as _, Connection as _, PgConnection};

use super::ProbeError;

/// What a PostgreSQL server says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresInfo {
    /// The server version as the server prints it, such as `"15.4"` or
    /// `"16.2 (Debian 16.2-1.pgdg120+2)"`.
    pub server_version: String,
    /// The version as a number, such as `150004` for 15.4.
    pub server_version_num: u32,
    /// `true` on a standby (`pg_is_in_recovery()`), `false` on a primary.
    pub in_recovery: bool,
    /// The cluster's system identifier from `pg_control_system()`, which a
    /// primary and the standbys made from it share; `None` when the role may
    /// not read it.
    pub system_identifier: Option<u64>,
    /// The database the connection ended up in.
    pub database: String,
}

impl PostgresInfo {
    /// `"primary"` or `"in recovery"`.
    pub fn role(&self) -> &'static str {
        if self.in_recovery {
            "in recovery"
        } else {
            "primary"
        }
    }

    /// The major version (`15` for 15.4, `9` for 9.6).
    pub fn major_version(&self) -> u32 {
        self.server_version_num / 10_000
    }
}

/// Connects to `url`, reads the server's version, role and identity, and
/// disconnects, all within `timeout`.
///
/// # Errors
///
/// Classified as [`ProbeError::InvalidTarget`] (a URL that does not parse),
/// [`ProbeError::Unreachable`], [`ProbeError::AuthenticationFailed`],
/// [`ProbeError::Timeout`] or [`ProbeError::Other`].
pub async fn inspect(url: &str, timeout: Duration) -> Result<PostgresInfo, ProbeError> {
    let secrets = password_in(url);
    let scrub = |text: String| scrub(text, &secrets);
    let options: PgConnectOptions =
        url.parse()
            .map_err(|e: sqlx::Error| ProbeError::InvalidTarget {
                message: scrub(format!("bad PostgreSQL URL: {}", cause(&e))),
            })?;
    let options = options
        .application_name("warmspare")
        .disable_statement_logging();
    let target = describe(&options);
    match tokio::time::timeout(timeout, query(&options)).await {
        Err(_elapsed) => Err(ProbeError::Timeout {
            target,
            after: timeout,
        }),
        Ok(Ok(info)) => Ok(info),
        Ok(Err(e)) => Err(classify(&e, target, &scrub)),
    }
}

/// Connects to `url` within `timeout`; errors are classified like
/// [`inspect`]'s and never contain the password. Returns the connection and
/// the target description (`user@host:port/db`).
pub(crate) async fn connect(
    url: &str,
    timeout: Duration,
) -> Result<(PgConnection, String), ProbeError> {
    let secrets = password_in(url);
    let scrub = |text: String| scrub(text, &secrets);
    let options: PgConnectOptions =
        url.parse()
            .map_err(|e: sqlx::Error| ProbeError::InvalidTarget {
                message: scrub(format!("bad PostgreSQL URL: {}", cause(&e))),
            })?;
    let options = options
        .application_name("warmspare")
        .disable_statement_logging();
    let target = describe(&options);
    match tokio::time::timeout(timeout, PgConnection::connect_with(&options)).await {
        Err(_elapsed) => Err(ProbeError::Timeout {
            target,
            after: timeout,
        }),
        Ok(Ok(conn)) => Ok((conn, target)),
        Ok(Err(e)) => Err(classify(&e, target, &scrub)),
    }
}

/// A driver error as one line, scrubbed of the password in `url`.
pub(crate) fn error_text(url: &str, error: &sqlx::Error) -> String {
    scrub(cause(error), &password_in(url))
}

async fn query(options: &PgConnectOptions) -> Result<PostgresInfo, sqlx::Error> {
    let mut conn = PgConnection::connect_with(options).await?;
    let (server_version, server_version_num, in_recovery, database): (String, i32, bool, String) =
        sqlx::query_as(
            "SELECT current_setting('server_version'), \
                    current_setting('server_version_num')::int4, \
                    pg_is_in_recovery(), \
                    current_database()::text",
        )
        .fetch_one(&mut conn)
        .await?;
    // Reading the control file may be denied to unprivileged roles: the
    // identifier is then simply unknown.
    let system_identifier =
        sqlx::query_scalar::<_, i64>("SELECT system_identifier FROM pg_control_system()")
            .fetch_one(&mut conn)
            .await
            .ok()
            .map(|id| id as u64);
    // A failed goodbye does not make the answers above wrong.
    let _ = conn.close().await;
    Ok(PostgresInfo {
        server_version,
        server_version_num: u32::try_from(server_version_num).unwrap_or_default(),
        in_recovery,
        system_identifier,
        database,
    })
}

/// A PostgreSQL health check: the server's role, WAL positions and replay
/// lag, and whether it accepts a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresHealth {
    /// `pg_is_in_recovery()`.
    pub in_recovery: bool,
    /// On a primary: `pg_current_wal_lsn()`.
    pub current_lsn: Option<String>,
    /// On a standby: `pg_last_wal_receive_lsn()`.
    pub receive_lsn: Option<String>,
    /// On a standby: `pg_last_wal_replay_lsn()`.
    pub replay_lsn: Option<String>,
    /// On a standby: zero when everything received is replayed, else
    /// `now() - pg_last_xact_replay_timestamp()`; `None` when unknown.
    pub replay_lag: Option<Duration>,
    /// Whether the write check succeeded (`None`: not asked for).
    pub writable: Option<bool>,
}

/// Connects, runs `SELECT 1`, reads the role, WAL positions and replay lag,
/// and (when `write_check`) upserts a row into `warmspare.probe` under the
/// server's default transaction mode, all within `timeout`.
///
/// A failed write check is not an error: it is reported in
/// [`PostgresHealth::writable`] (a fenced or standby database is healthy but
/// not writable).
pub async fn check(
    url: &str,
    timeout: Duration,
    write_check: bool,
) -> Result<PostgresHealth, ProbeError> {
    let started = tokio::time::Instant::now();
    let (mut conn, target) = connect(url, timeout).await?;
    let left = timeout.saturating_sub(started.elapsed());
    let work = async {
        let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut conn).await?;
        debug_assert_eq!(one, 1);
        let (in_recovery, current, receive, replay, lag_ms): (
            bool,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<f64>,
        ) = sqlx::query_as(
            "SELECT pg_is_in_recovery(), \
                    CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END, \
                    pg_last_wal_receive_lsn()::text, \
                    pg_last_wal_replay_lsn()::text, \
                    CASE WHEN NOT pg_is_in_recovery() THEN NULL \
                         WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 \
                         ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp()) * 1000 \
                    END::float8",
        )
        .fetch_one(&mut conn)
        .await?;
        let writable = if write_check && !in_recovery {
            Some(
                sqlx::raw_sql(
                    "CREATE SCHEMA IF NOT EXISTS warmspare; \
                     CREATE TABLE IF NOT EXISTS warmspare.probe (id int PRIMARY KEY, at timestamptz NOT NULL); \
                     INSERT INTO warmspare.probe VALUES (1, now()) ON CONFLICT (id) DO UPDATE SET at = now()",
                )
                .execute(&mut conn)
                .await
                .is_ok(),
            )
        } else if write_check {
            Some(false)
        } else {
            None
        };
        Ok::<_, sqlx::Error>(PostgresHealth {
            in_recovery,
            current_lsn: current,
            receive_lsn: receive,
            replay_lsn: replay,
            replay_lag: lag_ms.map(|ms| Duration::from_millis(ms.max(0.0) as u64)),
            writable,
        })
    };
    let result = tokio::time::timeout(left, work).await;
    let _ = conn.close().await;
    match result {
        Err(_) => Err(ProbeError::Timeout {
            target,
            after: timeout,
        }),
        Ok(Ok(health)) => Ok(health),
        Ok(Err(e)) => {
            let secrets = password_in(url);
            Err(classify(&e, target, &|t| scrub(t, &secrets)))
        }
    }
}

/// `user@host:port/database` (or `user@/socket/dir:port/database`): what
/// errors name as the target. Never contains the password.
fn describe(options: &PgConnectOptions) -> String {
    let host = match options.get_socket() {
        Some(dir) => dir.display().to_string(),
        None => options.get_host().to_owned(),
    };
    let database = options.get_database().unwrap_or(options.get_username());
    format!(
        "{}@{}:{}/{}",
        options.get_username(),
        host,
        options.get_port(),
        database
    )
}

fn classify(error: &sqlx::Error, target: String, scrub: &dyn Fn(String) -> String) -> ProbeError {
    match error {
        sqlx::Error::Database(db) => {
            let message = scrub(db.message().to_owned());
            match db.code().as_deref() {
                // invalid_password, invalid_authorization_specification
                Some("28P01") | Some("28000") => {
                    ProbeError::AuthenticationFailed { target, message }
                }
                Some(code) => ProbeError::Other {
                    target,
                    message: format!("{message} (SQLSTATE {code})"),
                },
                None => ProbeError::Other { target, message },
            }
        }
        sqlx::Error::Io(io) => ProbeError::Unreachable {
            target,
            message: scrub(io.to_string()),
        },
        sqlx::Error::Configuration(_) => ProbeError::InvalidTarget {
            message: scrub(format!("{target}: {}", cause(error))),
        },
        sqlx::Error::Tls(_) => ProbeError::Other {
            target,
            message: scrub(format!("TLS: {}", cause(error))),
        },
        other => {
            let message = scrub(cause(other));
            // Some authentication failures surface as protocol errors (for
            // example a server that wants a password when none was given).
            if message.contains("password") || message.contains("authentication") {
                ProbeError::AuthenticationFailed { target, message }
            } else {
                ProbeError::Other { target, message }
            }
        }
    }
}

use warmspare_store::redact::{error_chain as cause, url_passwords as password_in};

/// Replaces every occurrence of the secrets in `text` with `***`.
fn scrub(text: String, secrets: &[String]) -> String {
    warmspare_store::redact::scrub(&text, secrets)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn target_description_has_no_password() {
        let options: PgConnectOptions = "postgres://alice:hunter2@db.example:6543/app"
            .parse()
            .unwrap();
        assert_eq!(describe(&options), "alice@db.example:6543/app");
    }

    #[tokio::test]
    async fn bad_url_is_invalid_target_without_password() {
        let err = inspect("postgres://u:hunter2@[::1/db", Duration::from_secs(1))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "invalid-target", "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[tokio::test]
    async fn closed_port_is_unreachable() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let url = format!("postgres://u:hunter2@127.0.0.1:{port}/db?sslmode=disable");
        let err = inspect(&url, Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(err.kind(), "unreachable", "{err}");
        assert!(err.is_retryable());
        assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");
    }

    #[tokio::test]
    async fn silent_server_times_out() {
        // A listener that accepts but never speaks.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let url = format!("postgres://u@127.0.0.1:{port}/db?sslmode=disable");
        let err = inspect(&url, Duration::from_millis(300)).await.unwrap_err();
        assert_eq!(err.kind(), "timeout", "{err}");
        assert!(err.to_string().contains("300ms"), "{err}");
        hold.abort();
    }
}
