//! Promotion and fencing of a PostgreSQL database.
//!
//! * **promote**: a standby (`pg_is_in_recovery()`) is promoted with
//!   `pg_promote(true, 60)`; a primary kept read-only (a logical-restore
//!   spare, or a fenced former holder) is made writable with
//!   `ALTER SYSTEM SET default_transaction_read_only = off` and a reload.
//!   Then the epoch is recorded in `warmspare.epoch`. Idempotent: promoting
//!   a writable primary whose epoch is recorded changes nothing.
//! * **fence**: `default_transaction_read_only = on` (ALTER SYSTEM, reload)
//!   and every other client session terminated, so that no transaction
//!   begun before the fence goes on writing.
//! * **unfence**: `default_transaction_read_only = off` and a reload.
//! * **final position** (planned switchover, after the fence): the client
//!   sessions are terminated again and waited for, so that no commit can
//!   still be on its way; then `pg_current_wal_lsn()` is read, and when
//!   `archive_mode` is on `pg_switch_wal()` closes the segment so that the
//!   archiver ships it to a repository-fed standby.
//! * **replay position**: `pg_is_in_recovery()` and
//!   `pg_last_wal_replay_lsn()`.
//!
//! `default_transaction_read_only` is a default, not a lock: a client can
//! still `SET transaction_read_only = off`. It stops ordinary application
//! traffic; the epoch checks catch the rest (see `docs/failover-safety.md`).

use std::time::Duration;

use sqlx::{Connection as _, PgConnection};

use crate::policy::{FenceReason, Lsn, PromoteTrigger, Replay};
use crate::probe::postgres::{connect, error_text};
use crate::{Error, Result};

/// The SQL that records `epoch` for `site` in the promoted database
/// (parameters `$1` epoch, `$2` site), after creating the schema and table.
pub fn record_epoch_sql() -> [&'static str; 3] {
    [
        "CREATE SCHEMA IF NOT EXISTS warmspare",
        "CREATE TABLE IF NOT EXISTS warmspare.epoch (\
            epoch bigint PRIMARY KEY, \
            site text NOT NULL, \
            promoted_at timestamptz NOT NULL DEFAULT now())",
        "INSERT INTO warmspare.epoch (epoch, site) VALUES ($1, $2) ON CONFLICT (epoch) DO NOTHING",
    ]
}

/// Promotion and fencing of one site's PostgreSQL database.
#[derive(Clone)]
pub struct PostgresActions {
    url: String,
    site: String,
    /// Bound on connecting and on each statement but `pg_promote`.
    timeout: Duration,
    /// How long `pg_promote` waits for the promotion to complete.
    promote_wait: Duration,
}

impl std::fmt::Debug for PostgresActions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresActions")
            .field("site", &self.site)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl PostgresActions {
    /// Actions on the database at `url` (a superuser, or a role allowed
    /// `ALTER SYSTEM`, `pg_promote` and `pg_terminate_backend`) of `site`.
    pub fn new(url: impl Into<String>, site: impl Into<String>) -> Self {
        PostgresActions {
            url: url.into(),
            site: site.into(),
            timeout: Duration::from_secs(5),
            promote_wait: Duration::from_secs(60),
        }
    }

    /// Sets the bound on connecting and on each statement (default 5 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn conn(&self, action: &'static str) -> Result<(PgConnection, String)> {
        connect(&self.url, self.timeout)
            .await
            .map_err(|e| Error::Action {
                action,
                target: String::new(),
                message: e.to_string(),
            })
    }

    fn failed(&self, action: &'static str, target: &str, e: &sqlx::Error) -> Error {
        Error::Action {
            action,
            target: target.to_owned(),
            message: error_text(&self.url, e),
        }
    }

    async fn exec(
        &self,
        conn: &mut PgConnection,
        action: &'static str,
        target: &str,
        sql: &str,
    ) -> Result<()> {
        match tokio::time::timeout(
            self.timeout,
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned())).execute(&mut *conn),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(self.failed(action, target, &e)),
            Err(_) => Err(Error::Action {
                action,
                target: target.to_owned(),
                message: format!("`{sql}` timed out"),
            }),
        }
    }

    async fn in_recovery(
        &self,
        conn: &mut PgConnection,
        action: &'static str,
        target: &str,
    ) -> Result<bool> {
        sqlx::query_scalar::<_, bool>("SELECT pg_is_in_recovery()")
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| self.failed(action, target, &e))
    }

    async fn set_read_only(&self, on: bool, action: &'static str) -> Result<()> {
        let (mut conn, target) = self.conn(action).await?;
        let value = if on { "on" } else { "off" };
        let in_recovery = self.in_recovery(&mut conn, action, &target).await?;
        let set = self
            .exec(
                &mut conn,
                action,
                &target,
                &format!("ALTER SYSTEM SET default_transaction_read_only = {value}"),
            )
            .await;
        // A standby is read-only anyway; should ALTER SYSTEM be refused
        // there, the fence holds regardless.
        if let Err(e) = set
            && !in_recovery
        {
            return Err(e);
        }
        self.exec(&mut conn, action, &target, "SELECT pg_reload_conf()")
            .await?;
        if on {
            self.exec(
                &mut conn,
                action,
                &target,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname IS NOT NULL AND pid <> pg_backend_pid() \
                 AND backend_type = 'client backend'",
            )
            .await?;
        }
        let _ = conn.close().await;
        Ok(())
    }

    /// Read-only, reload, terminate the other client sessions.
    pub async fn fence(&self, reason: FenceReason) -> Result<()> {
        tracing::warn!(site = %self.site, ?reason, "fencing the database");
        self.set_read_only(true, "fence").await
    }

    /// The final WAL position of this fenced primary; see the module docs.
    pub async fn final_lsn(&self) -> Result<Lsn> {
        const ACTION: &str = "read the final WAL position";
        let (mut conn, target) = self.conn(ACTION).await?;
        if self.in_recovery(&mut conn, ACTION, &target).await? {
            return Err(Error::Action {
                action: ACTION,
                target,
                message: "the database is a standby, not the primary".into(),
            });
        }
        // Sessions terminated by the fence may still be finishing a commit:
        // terminate whatever is left (reconnected sessions are read-only)
        // and wait until they are gone before reading the position.
        let pids: Vec<i32> = self
            .bounded(
                ACTION,
                &target,
                sqlx::query_scalar(
                    "SELECT pid FROM pg_stat_activity \
                     WHERE datname IS NOT NULL AND pid <> pg_backend_pid() \
                     AND backend_type = 'client backend'",
                )
                .fetch_all(&mut conn),
            )
            .await?;
        // In the select list, not the WHERE clause: the planner may
        // evaluate a WHERE condition before `pid <> pg_backend_pid()`.
        self.bounded(
            ACTION,
            &target,
            sqlx::query("SELECT pg_terminate_backend(p) FROM unnest($1::int[]) AS p")
                .bind(&pids)
                .execute(&mut conn),
        )
        .await?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let alive: i64 = self
                .bounded(
                    ACTION,
                    &target,
                    sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)")
                        .bind(&pids)
                        .fetch_one(&mut conn),
                )
                .await?;
            if alive == 0 {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Action {
                    action: ACTION,
                    target,
                    message: format!("{alive} terminated sessions did not end in time"),
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let (lsn, archiving): (String, bool) = self
            .bounded(
                ACTION,
                &target,
                sqlx::query_as(
                    "SELECT pg_current_wal_lsn()::text, current_setting('archive_mode') <> 'off'",
                )
                .fetch_one(&mut conn),
            )
            .await?;
        let lsn: Lsn = lsn
            .parse()
            .map_err(|e: crate::policy::InvalidLsn| Error::Action {
                action: ACTION,
                target: target.clone(),
                message: e.to_string(),
            })?;
        if archiving {
            self.exec(&mut conn, ACTION, &target, "SELECT pg_switch_wal()")
                .await?;
        }
        let _ = conn.close().await;
        tracing::warn!(site = %self.site, %lsn, archiving, "final WAL position read");
        Ok(lsn)
    }

    /// How far this database has replayed WAL.
    pub async fn replay_position(&self) -> Result<Replay> {
        const ACTION: &str = "read the replay position";
        let (mut conn, target) = self.conn(ACTION).await?;
        let (in_recovery, replayed): (bool, Option<String>) = self
            .bounded(
                ACTION,
                &target,
                sqlx::query_as("SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text")
                    .fetch_one(&mut conn),
            )
            .await?;
        let _ = conn.close().await;
        let replayed = replayed.and_then(|l| l.parse::<Lsn>().ok());
        Ok(match (in_recovery, replayed) {
            (true, Some(lsn)) => Replay::Standby(lsn),
            (true, None) => Replay::Unknown,
            (false, lsn) => Replay::NotReplaying(lsn),
        })
    }

    /// Runs one query, bounded by the statement timeout.
    async fn bounded<T>(
        &self,
        action: &'static str,
        target: &str,
        query: impl std::future::Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.timeout, query).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.failed(action, target, &e)),
            Err(_) => Err(Error::Action {
                action,
                target: target.to_owned(),
                message: "query timed out".into(),
            }),
        }
    }

    /// Writable again.
    pub async fn unfence(&self, epoch: u64) -> Result<()> {
        tracing::info!(site = %self.site, epoch, "unfencing the database");
        self.set_read_only(false, "unfence").await
    }

    /// Promotes (standby) or makes writable (read-only primary), then
    /// records `epoch` in `warmspare.epoch`.
    pub async fn promote(&self, epoch: u64, trigger: PromoteTrigger) -> Result<()> {
        const ACTION: &str = "promote";
        tracing::warn!(site = %self.site, epoch, ?trigger, "promoting the database");
        let (mut conn, target) = self.conn(ACTION).await?;
        if self.in_recovery(&mut conn, ACTION, &target).await? {
            let wait = i32::try_from(self.promote_wait.as_secs()).unwrap_or(60);
            let done = tokio::time::timeout(
                self.promote_wait + self.timeout,
                sqlx::query_scalar::<_, bool>("SELECT pg_promote(true, $1)")
                    .bind(wait)
                    .fetch_one(&mut conn),
            )
            .await;
            match done {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => {
                    return Err(Error::Action {
                        action: ACTION,
                        target,
                        message: format!("pg_promote did not complete within {wait}s"),
                    });
                }
                Ok(Err(e)) => {
                    // A concurrent promotion (an earlier attempt of ours)
                    // makes this one fail with "not in recovery": fine.
                    if self.in_recovery(&mut conn, ACTION, &target).await? {
                        return Err(self.failed(ACTION, &target, &e));
                    }
                }
                Err(_) => {
                    return Err(Error::Action {
                        action: ACTION,
                        target,
                        message: "pg_promote timed out".into(),
                    });
                }
            }
        }
        self.exec(
            &mut conn,
            ACTION,
            &target,
            "ALTER SYSTEM SET default_transaction_read_only = off",
        )
        .await?;
        self.exec(&mut conn, ACTION, &target, "SELECT pg_reload_conf()")
            .await?;
        // Our session may still carry the old default until the reload
        // reaches it: say what we want explicitly.
        self.exec(
            &mut conn,
            ACTION,
            &target,
            "SET default_transaction_read_only = off",
        )
        .await?;
        let [schema, table, insert] = record_epoch_sql();
        self.exec(&mut conn, "record epoch", &target, schema)
            .await?;
        self.exec(&mut conn, "record epoch", &target, table).await?;
        let epoch_i64 = i64::try_from(epoch).unwrap_or(i64::MAX);
        sqlx::query(insert)
            .bind(epoch_i64)
            .bind(&self.site)
            .execute(&mut conn)
            .await
            .map_err(|e| self.failed("record epoch", &target, &e))?;
        let _ = conn.close().await;
        tracing::warn!(site = %self.site, epoch, "database promoted, epoch recorded");
        Ok(())
    }
}
