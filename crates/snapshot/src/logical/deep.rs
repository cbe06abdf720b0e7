//! [`verify_deep`]: restore a logical snapshot into a scratch database and
//! check what came back.

use std::cell::Cell;

use serde::Serialize;
use sqlx::{Connection as _, PgConnection};
use warmspare_store::{Repository, SnapshotId, SnapshotKind};

use super::RestoreOptions;
use super::restore::{check_row_counts, drop_database, restore_dump};
use crate::error::{Error, Result};
use crate::event::{DeepVerifyStep, Event, ProgressFn};
use crate::pg::{ServerInfo, Target, quote_ident, quote_literal};
use crate::tools::{Tool, Tools};

/// What a successful deep verification checked.
#[derive(Debug, Clone, Serialize)]
pub struct DeepVerifyReport {
    /// The snapshot.
    pub id: SnapshotId,
    /// The scratch database used (dropped again).
    pub scratch_database: String,
    /// Content bytes restored.
    pub bytes: u64,
    /// Tables whose row counts matched (`None`: the snapshot has no counts).
    pub tables_checked: Option<usize>,
    /// B-tree indexes `amcheck` found sound (`None`: `amcheck` is not
    /// installed on the scratch server).
    pub indexes_checked: Option<usize>,
}

/// Restores logical snapshot `id` into a scratch database on the server at
/// `scratch_url` (whose database is used for `CREATE`/`DROP DATABASE`), then
/// checks it: the dump's digests while it streams, the row counts against
/// the manifest, and every B-tree index with `amcheck`'s
/// `bt_index_check(index, heapallindexed => true)` (which also finds heap
/// tuples missing from an index). The scratch database,
/// `warmspare_verify_<id>`, is dropped afterwards, whatever the outcome.
///
/// Run it against a throwaway server, not the primary: it costs a full
/// restore. `options` are the restore options (`jobs`, `bin_dir`, ...).
pub async fn verify_deep(
    repo: &Repository,
    id: &SnapshotId,
    scratch_url: &str,
    options: &RestoreOptions,
    progress: Option<ProgressFn<'_>>,
) -> Result<DeepVerifyReport> {
    let emit = |event| {
        if let Some(progress) = progress {
            progress(event);
        }
    };
    let step = Cell::new(DeepVerifyStep::Resolve);
    let enter = |next| {
        step.set(next);
        emit(Event::DeepVerify(next));
    };
    let scratch = format!("warmspare_verify_{}", id.as_str().replace('-', "_")).to_lowercase();

    enter(DeepVerifyStep::Resolve);
    let prepared = async {
        let manifest = crate::catalog::read_manifest(repo, id).await?;
        if manifest.kind != SnapshotKind::Logical {
            return Err(Error::WrongKind {
                id: id.clone(),
                kind: manifest.kind,
                needed: "this deep verification restores logical snapshots",
            });
        }
        let meta = super::LogicalMeta::from_manifest(&manifest)?;
        let tools = Tools::new(options.bin_dir.as_deref());
        tools.version(Tool::PgRestore).await?;
        let target = Target::parse(scratch_url)?;
        Ok((manifest, meta, tools, target))
    }
    .await;
    let (manifest, meta, tools, target) = prepared.map_err(|e| wrap(id, step.get(), e))?;

    enter(DeepVerifyStep::Connect);
    let mut admin = target
        .connect(options.connect_timeout)
        .await
        .map_err(|e| wrap(id, step.get(), e))?;
    let info = ServerInfo::read(&mut admin, false).await.map_err(|e| {
        wrap(
            id,
            step.get(),
            target.sql_error("reading the server's identity", e),
        )
    })?;
    let server_num = info.server_version_num;

    let result = async {
        enter(DeepVerifyStep::CreateScratch);
        drop_database(&mut admin, &scratch, server_num)
            .await
            .map_err(|e| target.sql_error("dropping a stale scratch database", e))?;
        let create = format!(
            "CREATE DATABASE {} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}",
            quote_ident(&scratch),
            quote_literal(&meta.encoding),
            quote_literal(&meta.lc_collate),
            quote_literal(&meta.lc_ctype),
        );
        sqlx::query(sqlx::AssertSqlSafe(create))
            .persistent(false)
            .execute(&mut admin)
            .await
            .map_err(|e| target.sql_error("creating the scratch database", e))?;

        enter(DeepVerifyStep::Restore);
        let scratch_target = target.with_database(&scratch);
        let bytes = restore_dump(
            repo,
            &manifest,
            &meta,
            &tools,
            &scratch_target,
            options,
            &emit,
        )
        .await?;

        enter(DeepVerifyStep::CheckRowCounts);
        let tables_checked = match &meta.row_counts {
            Some(expected) => {
                Some(check_row_counts(&scratch_target, &scratch, expected, options).await?)
            }
            None => None,
        };

        enter(DeepVerifyStep::Amcheck);
        let indexes_checked = amcheck(&scratch_target, options).await?;
        Ok(DeepVerifyReport {
            id: id.clone(),
            scratch_database: scratch.clone(),
            bytes,
            tables_checked,
            indexes_checked,
        })
    }
    .await
    .map_err(|e| wrap(id, step.get(), e));

    enter(DeepVerifyStep::DropScratch);
    let dropped = drop_database(&mut admin, &scratch, server_num)
        .await
        .map_err(|e| target.sql_error("dropping the scratch database", e));
    let _ = admin.close().await;
    let report = result?;
    dropped.map_err(|e| wrap(id, DeepVerifyStep::DropScratch, e))?;
    Ok(report)
}

fn wrap(id: &SnapshotId, step: DeepVerifyStep, e: Error) -> Error {
    Error::DeepVerify {
        id: id.clone(),
        step,
        source: Box::new(e),
    }
}

/// Checks every valid B-tree index of the database with amcheck; `None`
/// when the extension is not available.
async fn amcheck(target: &Target, options: &RestoreOptions) -> Result<Option<usize>> {
    let mut conn: PgConnection = target.connect(options.connect_timeout).await?;
    if sqlx::query("CREATE EXTENSION IF NOT EXISTS amcheck")
        .execute(&mut conn)
        .await
        .is_err()
    {
        let _ = conn.close().await;
        return Ok(None);
    }
    let indexes: Vec<(i64, String)> = sqlx::query_as(
        "SELECT c.oid::int8, c.oid::regclass::text \
         FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
         JOIN pg_am am ON am.oid = c.relam JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE am.amname = 'btree' AND i.indisvalid AND i.indisready \
           AND c.relpersistence <> 't' \
           AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
           AND n.nspname NOT LIKE 'pg\\_toast%' \
         ORDER BY 2",
    )
    .fetch_all(&mut conn)
    .await
    .map_err(|e| target.sql_error("listing indexes", e))?;
    for (oid, name) in &indexes {
        let checked = sqlx::query("SELECT bt_index_check($1::int8::oid::regclass, true)")
            .bind(oid)
            .execute(&mut conn)
            .await;
        if let Err(e) = checked {
            let message = match target.sql_error("amcheck", e) {
                Error::Sql { message, .. } => message,
                other => other.to_string(),
            };
            let _ = conn.close().await;
            return Err(Error::IndexCorrupt {
                index: name.clone(),
                message,
            });
        }
    }
    let _ = conn.close().await;
    Ok(Some(indexes.len()))
}
