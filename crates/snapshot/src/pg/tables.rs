//! User tables and exact row counts.

use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use super::quote_ident;

/// How many tables one counting statement covers.
const COUNT_BATCH: usize = 100;

/// The exact row count of one table, as recorded in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TableRows {
    /// The schema.
    pub schema: String,
    /// The table.
    pub table: String,
    /// `count(*)` in the dump's snapshot.
    pub rows: u64,
}

impl TableRows {
    /// `schema.table`, unquoted: for messages.
    pub fn name(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }
}

/// The tables whose rows a dump carries: ordinary tables (partitions
/// included, partitioned parents excluded so that no row counts twice),
/// outside the system schemas, not temporary, not members of an extension
/// (`pg_dump` leaves those to `CREATE EXTENSION`). Sorted by schema, name.
pub(crate) async fn user_tables(
    conn: &mut PgConnection,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT n.nspname::text, c.relname::text \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind = 'r' \
           AND c.relpersistence <> 't' \
           AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
           AND n.nspname NOT LIKE 'pg\\_toast%' \
           AND n.nspname NOT LIKE 'pg\\_temp\\_%' \
           AND NOT EXISTS (SELECT 1 FROM pg_depend d \
                           WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid \
                             AND d.deptype = 'e') \
         ORDER BY 1, 2",
    )
    .fetch_all(&mut *conn)
    .await
}

/// Exact `count(*)` of each table, in the connection's current snapshot
/// (batched: one statement per [`COUNT_BATCH`] tables).
pub(crate) async fn count_rows(
    conn: &mut PgConnection,
    tables: &[(String, String)],
) -> Result<Vec<TableRows>, sqlx::Error> {
    let mut out = Vec::with_capacity(tables.len());
    for batch in tables.chunks(COUNT_BATCH) {
        // Identifiers are quoted; nothing else is interpolated.
        let sql = batch
            .iter()
            .enumerate()
            .map(|(i, (schema, table))| {
                format!(
                    "SELECT {i}::int4, count(*)::int8 FROM {}.{}",
                    quote_ident(schema),
                    quote_ident(table)
                )
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        let mut rows: Vec<(i32, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .persistent(false)
            .fetch_all(&mut *conn)
            .await?;
        rows.sort_unstable();
        for ((schema, table), (_, count)) in batch.iter().zip(rows) {
            out.push(TableRows {
                schema: schema.clone(),
                table: table.clone(),
                rows: u64::try_from(count).unwrap_or_default(),
            });
        }
    }
    Ok(out)
}
