//! Small read-only queries that other warmspare crates need answered by a
//! site's database, so that only this crate (and `warmspare-failover`)
//! talks SQL.
//!
//! * [`artifact_rows`]: the rows of an operator's reconcile query (the
//!   artifact keys, and optionally checksums, the database says must
//!   exist), for `warmspare reconcile`.
//! * [`wal_position`]: the server's current WAL position, recorded in a
//!   recovery point.
//!
//! Both run in a `READ ONLY` transaction that is rolled back: a
//! misconfigured query cannot change the database.

use std::time::Duration;

use futures::TryStreamExt;
use sqlx::{Column as _, Row as _, TypeInfo as _};

use crate::error::{Error, Result};
use crate::pg::Target;

/// One row of a reconcile query: the artifact's key and, when the query
/// returns a second column, its checksum (`NULL` for none).
pub type ArtifactRow = (String, Option<String>);

/// Runs `sql` against the database at `url` and returns its rows: the first
/// column is the artifact's key (text), the optional second column its
/// checksum (text or `NULL`); further columns are ignored. Rows whose key
/// is `NULL` are skipped.
///
/// The query runs in a `READ ONLY` transaction that is rolled back.
///
/// # Errors
///
/// [`Error::InvalidUrl`], [`Error::Unreachable`],
/// [`Error::AuthenticationFailed`], and [`Error::Sql`] for a failing query
/// or columns that are not text (cast them: `key::text`).
pub async fn artifact_rows(
    url: &str,
    sql: &str,
    connect_timeout: Duration,
) -> Result<Vec<ArtifactRow>> {
    let target = Target::parse(url)?;
    let mut conn = target.connect(connect_timeout).await?;
    let target = &target;
    let fail = |context: &'static str| move |e| target.sql_error(context, e);
    sqlx::query("BEGIN READ ONLY")
        .execute(&mut conn)
        .await
        .map_err(fail("opening a read-only transaction"))?;
    let mut rows = Vec::new();
    {
        let mut stream = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
            .persistent(false)
            .fetch(&mut conn);
        while let Some(row) = stream
            .try_next()
            .await
            .map_err(fail("running the reconcile query"))?
        {
            let columns = row.columns();
            let Some(first) = columns.first() else {
                return Err(shape_error(target, "it returns no columns"));
            };
            // The operator's own query, from the configuration file.
            let key: Option<String> = row.try_get(0).map_err(|_| {
                shape_error(
                    target,
                    &format!(
                        "its first column {:?} is {}, not text (cast it: ...::text)",
                        first.name(),
                        first.type_info().name()
                    ),
                )
            })?;
            let checksum: Option<String> = match columns.get(1) {
                Some(second) => row.try_get(1).map_err(|_| {
                    shape_error(
                        target,
                        &format!(
                            "its second column {:?} is {}, not text (cast it: ...::text)",
                            second.name(),
                            second.type_info().name()
                        ),
                    )
                })?,
                None => None,
            };
            if let Some(key) = key {
                rows.push((key, checksum));
            }
        }
    }
    // Best effort: the connection is closed right after.
    let _ = sqlx::query("ROLLBACK").execute(&mut conn).await;
    let _ = sqlx::Connection::close(conn).await;
    Ok(rows)
}

/// The server's current WAL position as PostgreSQL prints an LSN
/// (`0/3000060`): `pg_current_wal_lsn()` on a primary,
/// `pg_last_wal_replay_lsn()` on a server in recovery.
///
/// # Errors
///
/// As [`artifact_rows`].
pub async fn wal_position(url: &str, connect_timeout: Duration) -> Result<String> {
    let target = Target::parse(url)?;
    let mut conn = target.connect(connect_timeout).await?;
    let lsn: Option<String> = sqlx::query_scalar(
        "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
         ELSE pg_current_wal_lsn() END)::text",
    )
    .fetch_one(&mut conn)
    .await
    .map_err(|e| target.sql_error("reading the WAL position", e))?;
    let _ = sqlx::Connection::close(conn).await;
    lsn.ok_or_else(|| Error::Sql {
        target: target.describe(),
        context: "reading the WAL position".into(),
        message: "the server reported no WAL position".into(),
        code: None,
    })
}

fn shape_error(target: &Target, reason: &str) -> Error {
    Error::Sql {
        target: target.describe(),
        context: "reading the reconcile query's rows".into(),
        message: format!(
            "the query must return the artifact key and optionally its checksum as text: {reason}"
        ),
        code: None,
    }
}
