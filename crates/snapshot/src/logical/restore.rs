//! [`restore_logical`]: a logical snapshot restored into a staging database,
//! checked, and swapped in by rename.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use serde::Serialize;
use sqlx::{Connection as _, PgConnection};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::io::AsyncWriteExt;
use warmspare_store::{Check, Manifest, Repository, SnapshotId, SnapshotKind};

use super::globals::{self, GlobalsReport};
use super::load::{self, LoadedRows};
use super::{LogicalMeta, RestoreOptions};
use crate::backup_common::stdin_of;
use crate::error::{Error, Result, RowCountMismatch};
use crate::event::{Event, ProgressFn, RestoreStep};
use crate::pg::{
    ServerInfo, TableRows, Target, count_rows, quote_ident, quote_literal, sqlstate, user_tables,
};
use crate::tools::{Tool, Tools, major_text, parse_version};

/// Appended to the target database's name for the staging database.
pub const STAGING_SUFFIX: &str = "__warmspare_staging";
/// Appended to the target database's name for the copy kept by the last
/// swap.
pub const PREVIOUS_SUFFIX: &str = "__warmspare_previous";

/// PostgreSQL's identifier limit (`NAMEDATALEN - 1`), in bytes. Longer
/// names are truncated silently, which could make the staging and previous
/// names collide; such targets are refused instead.
const MAX_IDENTIFIER: usize = 63;

/// What a successful restore did.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    /// The snapshot restored.
    pub id: SnapshotId,
    /// The database that now holds it.
    pub database: String,
    /// Where the database it replaced is kept until the next successful
    /// restore (`None`: there was no database of that name).
    pub previous: Option<String>,
    /// Sessions on the replaced database that were terminated for the swap.
    pub terminated_sessions: u64,
    /// Tables whose row counts were checked (`None`: not checked).
    pub tables_checked: Option<usize>,
    /// Content bytes of the dump streamed into `pg_restore`.
    pub bytes: u64,
    /// `pg_restore` jobs.
    pub jobs: u32,
    /// What applying the globals did (`None`: not asked for).
    pub globals: Option<GlobalsReport>,
}

/// Restores logical snapshot `id` into the database named by `target_url`
/// on the warm spare, without ever leaving that database half-restored.
///
/// Steps ([`RestoreStep`]): read the manifest; check `pg_restore`; connect
/// to the maintenance database and take a per-target advisory lock (two
/// restores into one database exclude each other); create
/// `<db>__warmspare_staging` (dropping a stale one) with the source's
/// encoding and locale; restore into it; compare row counts with the
/// manifest; drop the `<db>__warmspare_previous` kept by the last swap;
/// then, in **one transaction**, terminate the sessions on `<db>`, rename
/// `<db>` to `<db>__warmspare_previous` and the staging database to `<db>`.
/// Sessions that arrive between the termination and the rename make the
/// rename fail (`55006`): the transaction is retried up to
/// [`RestoreOptions::swap_attempts`] times. Clients of the old database
/// see their connections closed and reconnect to the new one.
///
/// A failure at any step drops the staging database and leaves `<db>`
/// untouched; the error names the step. The dump is verified while it
/// streams and the verdict comes at its end, so `pg_restore`'s exit status
/// is only looked at after the codec returned `Ok`: a digest mismatch fails
/// the restore even if `pg_restore` liked what it read.
///
/// A logical snapshot restores to the moment it was taken: `target_time`
/// must be `None` ([`Error::TargetTimeUnsupported`] otherwise).
///
/// Not carried over: database-level settings (`ALTER DATABASE ... SET`),
/// the database's owner, comment and privileges (`pg_dump` without
/// `--create` does not dump them); the swapped-in database belongs to the
/// restoring role. Roles must exist on the target unless
/// [`RestoreOptions::no_owner`] is set, or [`RestoreOptions::globals`] has
/// the missing ones created from the snapshot's `globals.sql` first (step
/// `apply-globals`; roles created stay even if a later step fails, and
/// existing roles are never altered: see `logical/globals.rs`).
///
/// A directory-format snapshot is downloaded (verified, several objects at
/// once) into a spool directory and restored with `pg_restore --jobs N`.
pub async fn restore_logical(
    repo: &Repository,
    id: &SnapshotId,
    target_url: &str,
    target_time: Option<OffsetDateTime>,
    options: &RestoreOptions,
    progress: Option<ProgressFn<'_>>,
) -> Result<RestoreReport> {
    let emit = |event| {
        if let Some(progress) = progress {
            progress(event);
        }
    };
    let mut steps = Steps {
        current: RestoreStep::Resolve,
        emit: &emit,
    };
    let mut database = String::from("(unknown)");
    let fail = |step, database: String| {
        move |e: Error| Error::Restore {
            step,
            database,
            source: Box::new(e),
        }
    };
    let mut prepared = match prepare(
        repo,
        id,
        target_url,
        target_time,
        options,
        &mut steps,
        &mut database,
    )
    .await
    {
        Ok(p) => p,
        Err(e) => return Err(fail(steps.current, database)(e)),
    };
    let result = apply(repo, &mut prepared, options, &mut steps).await;
    if result.is_err() {
        // Best effort: a stale staging database is dropped by the next
        // restore anyway. Before the swap committed, `<db>` itself was
        // never touched.
        let _ = drop_database(
            &mut prepared.admin,
            &prepared.staging,
            prepared.info.server_version_num,
        )
        .await;
    }
    // Unlock explicitly: closing the connection would release the lock too,
    // but only once the server has noticed, which races with the next
    // restore.
    let _ = sqlx::query("SELECT pg_advisory_unlock(hashtext($1)::int8)")
        .bind(lock_key(&prepared.db))
        .execute(&mut prepared.admin)
        .await;
    let _ = prepared.admin.close().await;
    match result {
        Ok(report) => Ok(report),
        Err(e) => Err(fail(steps.current, prepared.db)(e)),
    }
}

/// The advisory lock that keeps restores into one database apart.
fn lock_key(db: &str) -> String {
    format!("warmspare restore {db}")
}

/// The current step, reported as it changes.
struct Steps<'a> {
    current: RestoreStep,
    emit: &'a (dyn Fn(Event) + Send + Sync),
}

impl Steps<'_> {
    fn enter(&mut self, step: RestoreStep) {
        self.current = step;
        (self.emit)(Event::Restore(step));
    }
}

/// Everything known once connected, before the target server is changed.
struct Prepared {
    db: String,
    staging: String,
    previous: String,
    target: Target,
    admin_target: Target,
    admin: PgConnection,
    info: ServerInfo,
    manifest: Manifest,
    meta: LogicalMeta,
    tools: Tools,
}

/// Steps that change nothing on the target: resolve, check tools, connect.
async fn prepare(
    repo: &Repository,
    id: &SnapshotId,
    target_url: &str,
    target_time: Option<OffsetDateTime>,
    options: &RestoreOptions,
    steps: &mut Steps<'_>,
    database: &mut String,
) -> Result<Prepared> {
    steps.enter(RestoreStep::Resolve);
    let target = Target::parse(target_url)?;
    let Some(db) = target.database().map(str::to_owned) else {
        return Err(Error::InvalidTarget {
            target: target.describe(),
            reason: "the URL must name the database to replace".into(),
        });
    };
    *database = db.clone();
    if db.len() + PREVIOUS_SUFFIX.len().max(STAGING_SUFFIX.len()) > MAX_IDENTIFIER {
        return Err(Error::InvalidTarget {
            target: target.describe(),
            reason: format!(
                "the name is longer than {} bytes, too long for the staging and previous \
                 copies ({db}{STAGING_SUFFIX})",
                MAX_IDENTIFIER - PREVIOUS_SUFFIX.len()
            ),
        });
    }
    let manifest = crate::catalog::read_manifest(repo, id).await?;
    if manifest.kind != SnapshotKind::Logical {
        return Err(Error::WrongKind {
            id: id.clone(),
            kind: manifest.kind,
            needed: "restoring into a database needs a logical snapshot; \
                     physical snapshots restore into a data directory",
        });
    }
    if target_time.is_some() {
        return Err(Error::TargetTimeUnsupported {
            id: id.clone(),
            taken: manifest
                .started
                .format(&Rfc3339)
                .unwrap_or_else(|_| manifest.started.to_string()),
        });
    }
    let meta = LogicalMeta::from_manifest(&manifest)?;
    if options.globals && meta.globals_file.is_none() {
        return Err(Error::BadMeta {
            id: id.clone(),
            reason: "the snapshot holds no globals to apply (take it with `backup db \
                     --globals`)"
                .into(),
        });
    }

    steps.enter(RestoreStep::CheckTools);
    let tools = Tools::new(options.bin_dir.as_deref());
    let pg_restore = tools.version(Tool::PgRestore).await?;
    if let Some(dumped_by) = parse_version(&meta.tools.pg_dump)
        && pg_restore.major < dumped_by.major
    {
        return Err(Error::ToolTooOld {
            tool: "pg_restore",
            tool_version: pg_restore.version,
            what: "the pg_dump that wrote the snapshot",
            needed: dumped_by.version,
            needed_major: major_text(dumped_by.major),
        });
    }

    steps.enter(RestoreStep::Connect);
    let maintenance = match &options.maintenance_db {
        Some(m) => m.clone(),
        None if db == "postgres" => "template1".to_owned(),
        None => "postgres".to_owned(),
    };
    let admin_target = target.with_database(&maintenance);
    let mut admin = admin_target.connect(options.connect_timeout).await?;
    let t = &admin_target;
    let sql = |context: &'static str| move |e| t.sql_error(context, e);
    let info = ServerInfo::read(&mut admin, false)
        .await
        .map_err(sql("reading the server's identity"))?;
    if !options.allow_source_overwrite
        && db == meta.database
        && info.system_identifier.is_some()
        && info.system_identifier == meta.system_identifier
    {
        return Err(Error::RefusedSourceOverwrite { database: db });
    }
    // Session-level: released when the admin connection closes.
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1)::int8)")
        .bind(lock_key(&db))
        .fetch_one(&mut admin)
        .await
        .map_err(sql("taking the restore lock"))?;
    if !locked {
        return Err(Error::RestoreInProgress { database: db });
    }
    Ok(Prepared {
        staging: format!("{db}{STAGING_SUFFIX}"),
        previous: format!("{db}{PREVIOUS_SUFFIX}"),
        db,
        target,
        admin_target,
        admin,
        info,
        manifest,
        meta,
        tools,
    })
}

/// Steps that change the target server: create staging, restore, check,
/// drop the previous copy, swap.
async fn apply(
    repo: &Repository,
    p: &mut Prepared,
    options: &RestoreOptions,
    steps: &mut Steps<'_>,
) -> Result<RestoreReport> {
    let admin_target = &p.admin_target;
    let sql = |context: &'static str| move |e| admin_target.sql_error(context, e);
    let server_num = p.info.server_version_num;

    let mut globals_report = None;
    if options.globals
        && let Some(file) = &p.meta.globals_file
    {
        steps.enter(RestoreStep::ApplyGlobals);
        let sql = globals::read(repo, &p.manifest, file).await?;
        globals_report = Some(globals::apply(&mut p.admin, &p.admin_target, &sql).await?);
    }

    steps.enter(RestoreStep::CreateStaging);
    drop_database(&mut p.admin, &p.staging, server_num)
        .await
        .map_err(sql("dropping the stale staging database"))?;
    let create = format!(
        "CREATE DATABASE {} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}",
        quote_ident(&p.staging),
        quote_literal(&p.meta.encoding),
        quote_literal(&p.meta.lc_collate),
        quote_literal(&p.meta.lc_ctype),
    );
    sqlx::query(sqlx::AssertSqlSafe(create))
        .persistent(false)
        .execute(&mut p.admin)
        .await
        .map_err(sql("creating the staging database"))?;

    steps.enter(RestoreStep::Restore);
    let staging_target = p.target.with_database(&p.staging);
    // Dropping the previous copy (after the restore) forces a checkpoint:
    // the parallel loader starts one early, see `load::restore_parallel`.
    let drop_follows = database_exists(&mut p.admin, &p.previous)
        .await
        .map_err(sql("looking for the previous copy"))?;
    let (bytes, loaded) = restore_dump_counted(
        repo,
        &p.manifest,
        &p.meta,
        &p.tools,
        &staging_target,
        options,
        drop_follows,
        steps.emit,
    )
    .await?;

    let mut tables_checked = None;
    if options.check_row_counts
        && let Some(expected) = &p.meta.row_counts
    {
        steps.enter(RestoreStep::CheckRowCounts);
        // Dropping the previous copy next forces an immediate checkpoint,
        // which must first write out everything the restore left dirty
        // (seconds for a large database). Started now, that writing
        // overlaps the counting, which only reads; with every count known
        // from the load there is no counting to overlap, and a checkpoint
        // more would only come before the drop's own. Best effort: a role
        // without the right to CHECKPOINT just skips it.
        let counting = !expected.iter().all(|t| is_loaded(t, loaded.as_ref()));
        let admin = &mut p.admin;
        let flush = async move {
            if drop_follows && counting {
                let _ = sqlx::query("CHECKPOINT").execute(admin).await;
            }
        };
        let (checked, ()) = tokio::join!(
            check_row_counts_known(
                &staging_target,
                &p.staging,
                expected,
                loaded.as_ref(),
                options
            ),
            flush
        );
        tables_checked = Some(checked?);
    }

    steps.enter(RestoreStep::DropPrevious);
    let current_exists = database_exists(&mut p.admin, &p.db)
        .await
        .map_err(sql("looking for the current database"))?;
    if current_exists {
        drop_database(&mut p.admin, &p.previous, server_num)
            .await
            .map_err(sql("dropping the previous copy"))?;
    }

    steps.enter(RestoreStep::Swap);
    let attempts = options.swap_attempts.max(1);
    let mut attempt = 1;
    let (terminated, replaced) = loop {
        match swap(&mut p.admin, &p.db, &p.staging, &p.previous).await {
            Ok(done) => break done,
            Err(e) => {
                let e = p.admin_target.sql_error("swapping the databases", e);
                if sqlstate(&e) == Some("55006") && attempt < attempts {
                    tokio::time::sleep(Duration::from_millis(100) * attempt).await;
                    attempt += 1;
                    continue;
                }
                return Err(e);
            }
        }
    };
    Ok(RestoreReport {
        id: p.manifest.id.clone(),
        database: p.db.clone(),
        previous: replaced.then(|| p.previous.clone()),
        terminated_sessions: terminated,
        tables_checked,
        bytes,
        jobs: options.jobs.max(1),
        globals: globals_report,
    })
}

/// Runs `pg_restore` into the staging database: streaming into its stdin
/// (one job), or from a verified spool file (`-j N`). Returns the content
/// bytes.
pub(super) async fn restore_dump(
    repo: &Repository,
    manifest: &Manifest,
    meta: &LogicalMeta,
    tools: &Tools,
    staging: &Target,
    options: &RestoreOptions,
    emit: &(dyn Fn(Event) + Send + Sync),
) -> Result<u64> {
    restore_dump_counted(repo, manifest, meta, tools, staging, options, false, emit)
        .await
        .map(|(bytes, _)| bytes)
}

/// [`restore_dump`], also returning the rows stored per table when the
/// parallel loader ([`RestoreOptions::parallel_load`], custom format, more
/// than one job) counted them.
#[allow(clippy::too_many_arguments)]
async fn restore_dump_counted(
    repo: &Repository,
    manifest: &Manifest,
    meta: &LogicalMeta,
    tools: &Tools,
    staging: &Target,
    options: &RestoreOptions,
    flush_early: bool,
    emit: &(dyn Fn(Event) + Send + Sync),
) -> Result<(u64, Option<LoadedRows>)> {
    let base = || {
        let mut command = tools.command(Tool::PgRestore);
        command
            .arg("--exit-on-error")
            .arg("--no-password")
            .arg(format!("--dbname={}", staging.tool_url()));
        if options.no_owner {
            command.arg("--no-owner");
        }
        if options.no_privileges {
            command.arg("--no-privileges");
        }
        staging.configure_child(&mut command, options.connect_timeout);
        restore_session_settings(&mut command);
        command
    };
    // The loader: with one job (rows in the source's order, the row
    // counts taken from the COPY command tags, its client work on another
    // processor than the server's COPY), or split over `jobs` connections
    // when asked. It reads `pg_restore`'s SQL as UTF-8 and runs it through
    // sqlx, whose sessions speak UTF-8: a dump in another encoding (its
    // identifiers in the COPY statements) goes through `pg_restore` alone.
    if (options.jobs <= 1 || options.parallel_load)
        && !meta.is_directory()
        && meta.encoding.eq_ignore_ascii_case("UTF8")
    {
        let (bytes, rows) = load::restore_parallel(
            repo,
            manifest,
            meta,
            tools,
            staging,
            options,
            flush_early,
            base,
            emit,
        )
        .await?;
        return Ok((bytes, Some(rows)));
    }
    restore_dump_ordered(repo, manifest, meta, tools, staging, options, base(), emit)
        .await
        .map(|bytes| (bytes, None))
}

#[allow(clippy::too_many_arguments)]
async fn restore_dump_ordered(
    repo: &Repository,
    manifest: &Manifest,
    meta: &LogicalMeta,
    tools: &Tools,
    staging: &Target,
    options: &RestoreOptions,
    mut command: tokio::process::Command,
    emit: &(dyn Fn(Event) + Send + Sync),
) -> Result<u64> {
    let bytes = |n| emit(Event::Bytes(n));
    let scrub = |text| staging.scrub(text);

    if meta.is_directory() {
        let spool = super::directory::Spool::create(&spool_dir(options), "restore")?;
        let size =
            super::directory::download_all(repo, manifest, &meta.dump_file, spool.path(), emit)
                .await?;
        command
            .arg("--format=directory")
            .arg(format!("--jobs={}", options.jobs.max(1)))
            .arg(spool.path());
        let running = tools.spawn(Tool::PgRestore, command)?;
        running.finish(scrub).await?;
        return Ok(size);
    }
    if options.jobs <= 1 {
        command.stdin(Stdio::piped());
        let running = tools.spawn(Tool::PgRestore, command)?;
        let (running, stdin) = stdin_of(running, Tool::PgRestore).await?;
        let fed = feed_dump(repo, manifest, meta, stdin, Some(&bytes), Check::Stored).await;
        match fed {
            Ok(info) => {
                // Verified to the last byte: now pg_restore has seen the
                // end of its input, and its verdict counts.
                running.finish(scrub).await?;
                Ok(info.size)
            }
            Err(warmspare_store::Error::Io { source, .. })
                if source.kind() == std::io::ErrorKind::BrokenPipe =>
            {
                // pg_restore stopped reading. Either it choked on corrupt
                // input (then the object's digest says so, naming it) or it
                // failed for its own reasons (its stderr says which).
                if let Err(tool_error) = running.finish(scrub).await {
                    return Err(corrupt_or(repo, manifest, meta, tool_error).await);
                }
                Err(Error::ToolIo {
                    tool: "pg_restore",
                    context: "stopped reading its input early:",
                    source,
                })
            }
            Err(e) => {
                running.kill().await;
                Err(e.into())
            }
        }
    } else {
        // A spool directory of its own (locked while in use, so that a
        // later run removes it after a kill -9), dropped after the file.
        let held = super::directory::Spool::create(&spool_dir(options), "restore")?;
        let spool = spool_builder("warmspare-restore-", ".pgdump")
            .tempfile_in(held.path())
            .map_err(|e| Error::Spool {
                path: spool_dir(options).display().to_string(),
                source: e,
            })?;
        let spool_error = |e| Error::Spool {
            path: spool.path().display().to_string(),
            source: e,
        };
        let mut file = tokio::fs::File::from_std(spool.as_file().try_clone().map_err(spool_error)?);
        let info = repo
            .read_manifest_file_checked(
                manifest,
                &meta.dump_file,
                &mut file,
                Some(&bytes),
                Check::Stored,
            )
            .await?;
        // Written out, not made durable: the spool does not outlive the
        // run, and pg_restore reads it from the page cache.
        file.flush().await.map_err(spool_error)?;
        drop(file);
        // The spool file may be unreadable to other users; pg_restore runs
        // as the caller, so that is fine.
        command
            .arg(format!("--jobs={}", options.jobs))
            .arg(spool.path());
        let running = tools.spawn(Tool::PgRestore, command)?;
        running.finish(scrub).await?;
        Ok(info.size)
    }
}

/// Streams the snapshot's dump into `writer` (a pipe to `pg_restore` or to
/// the archive reader), checked as `check` says, and closes it: shut down
/// after the last byte when the read succeeded (the reader may then act on
/// the end of its input), only dropped when it failed (the reader sees an
/// early end, never a clean one).
pub(super) async fn feed_dump<W>(
    repo: &Repository,
    manifest: &Manifest,
    meta: &LogicalMeta,
    mut writer: W,
    progress: Option<warmspare_store::Progress<'_>>,
    check: Check,
) -> warmspare_store::Result<warmspare_store::ObjectInfo>
where
    W: tokio::io::AsyncWrite + Unpin + Send,
{
    let fed = repo
        .read_manifest_file_checked(manifest, &meta.dump_file, &mut writer, progress, check)
        .await;
    if fed.is_ok() {
        let _ = writer.shutdown().await;
    }
    fed
}

/// The error of a `pg_restore` that stopped reading its input and failed:
/// the stored dump's own, if it does not match its digest (corrupt input
/// makes `pg_restore` fail too, and the digest names the object), else
/// `otherwise`. Reads the object once more, to a sink.
pub(super) async fn corrupt_or(
    repo: &Repository,
    manifest: &Manifest,
    meta: &LogicalMeta,
    otherwise: Error,
) -> Error {
    let mut sink = tokio::io::sink();
    match repo
        .read_manifest_file(manifest, &meta.dump_file, &mut sink, None)
        .await
    {
        Err(corrupt) => corrupt.into(),
        Ok(_) => otherwise,
    }
}

fn spool_builder<'a>(prefix: &'a str, suffix: &'a str) -> tempfile::Builder<'a, 'a> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(prefix).suffix(suffix);
    builder
}

pub(super) fn spool_dir(options: &RestoreOptions) -> std::path::PathBuf {
    options.spool_dir.clone().unwrap_or_else(std::env::temp_dir)
}

/// Settings of `pg_restore`'s sessions, through `PGOPTIONS` (appended to
/// the caller's own, which the child would otherwise inherit):
/// `synchronous_commit = off`, because `pg_restore` commits every
/// statement and waiting for each WAL flush only slows a schema with many
/// objects down. Nothing is lost: the staging database is only swapped in
/// by a later, synchronous commit, which flushes all the WAL before it.
fn restore_session_settings(command: &mut tokio::process::Command) {
    const SETTINGS: &str = "-c synchronous_commit=off";
    let options = match std::env::var("PGOPTIONS") {
        Ok(own) if !own.trim().is_empty() => format!("{own} {SETTINGS}"),
        _ => SETTINGS.to_owned(),
    };
    command.env("PGOPTIONS", options);
}

/// Counts rows in the staging database and compares them with the
/// manifest's; returns the number of tables checked.
pub(super) async fn check_row_counts(
    staging: &Target,
    staging_name: &str,
    expected: &[TableRows],
    options: &RestoreOptions,
) -> Result<usize> {
    check_row_counts_known(staging, staging_name, expected, None, options).await
}

/// [`check_row_counts`], taking the rows the parallel loader's COPYs stored
/// (their command tags) as the count of those tables: every row of the
/// table came through them, and the constraints and triggers that could
/// change that are only created afterwards. Tables not among them are
/// counted with SQL.
/// Whether the load counted `table`'s rows (then no `count(*)` is needed).
fn is_loaded(table: &TableRows, known: Option<&LoadedRows>) -> bool {
    known.is_some_and(|k| k.contains_key(&(table.schema.clone(), table.table.clone())))
}

async fn check_row_counts_known(
    staging: &Target,
    staging_name: &str,
    expected: &[TableRows],
    known: Option<&LoadedRows>,
    options: &RestoreOptions,
) -> Result<usize> {
    let is_known = |t: &TableRows| is_loaded(t, known);
    let mut counted = Vec::new();
    if !expected.iter().all(is_known) {
        let mut conn = staging.connect(options.connect_timeout).await?;
        let sql = |context: &'static str| move |e| staging.sql_error(context, e);
        let present: BTreeSet<(String, String)> = user_tables(&mut conn)
            .await
            .map_err(sql("listing restored tables"))?
            .into_iter()
            .collect();
        let wanted: Vec<(String, String)> = expected
            .iter()
            .filter(|t| !is_known(t))
            .map(|t| (t.schema.clone(), t.table.clone()))
            .filter(|key| present.contains(key))
            .collect();
        counted = count_rows(&mut conn, &wanted)
            .await
            .map_err(sql("counting restored rows"))?;
        let _ = conn.close().await;
    }
    let mut counted = counted.into_iter().peekable();
    let mut mismatches = Vec::new();
    for table in expected {
        let from_load =
            known.and_then(|k| k.get(&(table.schema.clone(), table.table.clone())).copied());
        let actual = match counted.peek() {
            _ if from_load.is_some() => from_load,
            Some(c) if c.schema == table.schema && c.table == table.table => {
                counted.next().map(|c| c.rows)
            }
            _ => None,
        };
        if actual != Some(table.rows) {
            mismatches.push(RowCountMismatch {
                table: table.name(),
                expected: table.rows,
                actual,
            });
        }
    }
    if mismatches.is_empty() {
        Ok(expected.len())
    } else {
        Err(Error::RowCountMismatch {
            database: staging_name.to_owned(),
            mismatches,
        })
    }
}

async fn database_exists(conn: &mut PgConnection, name: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(conn)
        .await
}

/// Drops database `name` if it exists, closing its sessions first.
pub(super) async fn drop_database(
    conn: &mut PgConnection,
    name: &str,
    server_version_num: u32,
) -> Result<(), sqlx::Error> {
    let sql = if server_version_num >= 130_000 {
        format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name))
    } else {
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(name)
        .execute(&mut *conn)
        .await?;
        format!("DROP DATABASE IF EXISTS {}", quote_ident(name))
    };
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .persistent(false)
        .execute(conn)
        .await?;
    Ok(())
}

/// One swap attempt, in one transaction: terminate the sessions on the
/// current database, rename it away (if it exists), rename staging in.
/// Returns the sessions terminated and whether a current database was
/// replaced. The renames wait up to 5 s for terminated sessions to exit.
async fn swap(
    conn: &mut PgConnection,
    current: &str,
    staging: &str,
    previous: &str,
) -> Result<(u64, bool), sqlx::Error> {
    let mut tx = conn.begin().await?;
    let exists = database_exists(&mut tx, current).await?;
    let mut terminated = 0;
    if exists {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(current)
        .fetch_one(&mut *tx)
        .await?;
        terminated = u64::try_from(n).unwrap_or_default();
        let rename = format!(
            "ALTER DATABASE {} RENAME TO {}",
            quote_ident(current),
            quote_ident(previous)
        );
        sqlx::query(sqlx::AssertSqlSafe(rename))
            .persistent(false)
            .execute(&mut *tx)
            .await?;
    }
    let rename = format!(
        "ALTER DATABASE {} RENAME TO {}",
        quote_ident(staging),
        quote_ident(current)
    );
    sqlx::query(sqlx::AssertSqlSafe(rename))
        .persistent(false)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((terminated, exists))
}
