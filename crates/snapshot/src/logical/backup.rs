//! [`backup_logical`]: `pg_dump` streamed into the repository.

use std::process::Stdio;

use sqlx::{Connection as _, PgConnection};
use time::OffsetDateTime;
use warmspare_store::{Manifest, Repository, SnapshotKind, SnapshotWriter};

use super::chunks::ChunkReader;
use super::{
    DUMP_DIR, DUMP_FILE, GLOBALS_FILE, LOGICAL_DIRECTORY_FORMAT, LOGICAL_FORMAT,
    LogicalBackupOptions, LogicalMeta, RecordedOptions, ToolVersions, directory,
};
use crate::backup_common::{Run, check_tool_for_server, commit, fail, stdout_of};
use crate::error::{Error, Result};
use crate::event::{BackupStep, Event, ProgressFn};
use crate::pg::{ServerInfo, TableRows, Target, count_rows, user_tables};
use crate::tools::{Tool, ToolVersion, Tools};

/// A committed logical snapshot.
#[derive(Debug, Clone)]
pub struct LogicalBackup {
    /// The manifest as written.
    pub manifest: Manifest,
    /// Its `meta`, typed.
    pub meta: LogicalMeta,
}

/// Takes a logical snapshot of the database at `source_url` into `repo`.
///
/// `pg_dump --format=custom --compress=0` runs with the password in its
/// environment, never on its command line, and its output streams through
/// the store codec (zstd, SHA-256, multipart upload) in bounded memory,
/// into `database.pgdump`. With [`LogicalBackupOptions::jobs`] above 1,
/// `pg_dump --format=directory --jobs N` writes into a local spool
/// directory instead, and each of its files is uploaded as its own object
/// (`database/<file>`) while it is written (see the module docs of
/// `directory`); the spool directory of a process killed with SIGKILL is
/// removed by the next backup with jobs that spools into the same
/// directory. The codec is fed in fixed chunks, so the same dump is
/// stored in the same size whatever the timing of `pg_dump`'s output. It
/// dumps the snapshot of a REPEATABLE READ transaction that this function
/// holds open on its own connection (`pg_export_snapshot()` →
/// `pg_dump --snapshot`), and the row counts recorded in the manifest are
/// taken in that same transaction, while the dump runs: they describe
/// exactly the rows in the dump.
///
/// `epoch` is the caller's lease epoch, recorded in the manifest (fencing
/// token). `now` is the caller's clock reading: it names the snapshot and is
/// its start time; the finish time adds the elapsed monotonic time.
///
/// Nothing is committed unless every step succeeded: `pg_dump`'s exit
/// status is checked after its output ended and before the manifest is
/// written. On failure the partial data objects are deleted (best effort;
/// `prune` removes what remains). Dropping the future kills `pg_dump` and
/// leaves an incomplete snapshot that is never listed.
///
/// # Errors
///
/// [`Error::Backup`] naming the [`BackupStep`], around the cause:
/// [`Error::ToolNotFound`], [`Error::ToolTooOld`] (a `pg_dump` older than the
/// server, found before anything is written), [`Error::Unreachable`],
/// [`Error::AuthenticationFailed`], [`Error::ToolFailed`] with `pg_dump`'s
/// stderr, [`Error::Store`], ...
pub async fn backup_logical(
    repo: &Repository,
    source_url: &str,
    options: &LogicalBackupOptions,
    epoch: Option<u64>,
    now: OffsetDateTime,
    progress: Option<ProgressFn<'_>>,
) -> Result<LogicalBackup> {
    let run = &Run::<BackupStep>::new(progress);
    let emit = |event| run.emit(event);

    let (tools, pg_dump) = run
        .check_tool(options.bin_dir.as_deref(), Tool::PgDump)
        .await?;
    let pg_dumpall = match options.globals {
        true => Some(
            tools
                .version(Tool::PgDumpall)
                .await
                .map_err(fail(BackupStep::CheckTools))?,
        ),
        false => None,
    };

    let target = run.source(source_url)?;
    let session = &mut Session::open(&target, options, &pg_dump)
        .await
        .map_err(fail(BackupStep::Connect))?;

    let kind = SnapshotKind::Logical;
    run.in_new_snapshot(repo, kind, now, BackupStep::Dump, |mut writer| async move {
        let directory = options.jobs > 1;
        let row_counts = dump(&mut writer, &tools, &target, session, options, emit)
            .await
            .map_err(fail(BackupStep::Dump))?;
        session.close().await;

        if pg_dumpall.is_some() {
            run.enter(BackupStep::Globals);
            globals(
                &mut writer,
                &tools,
                &target,
                options,
                &session.info.database,
                emit,
            )
            .await
            .map_err(fail(BackupStep::Globals))?;
        }

        run.enter(BackupStep::Commit);
        let meta = LogicalMeta {
            format: match directory {
                true => LOGICAL_DIRECTORY_FORMAT,
                false => LOGICAL_FORMAT,
            }
            .to_owned(),
            database: session.info.database.clone(),
            source: target.describe(),
            system_identifier: session.info.system_identifier,
            server_version: session.info.server_version.clone(),
            server_version_num: session.info.server_version_num,
            encoding: session.info.encoding.clone(),
            lc_collate: session.info.lc_collate.clone(),
            lc_ctype: session.info.lc_ctype.clone(),
            dump_file: match directory {
                true => DUMP_DIR,
                false => DUMP_FILE,
            }
            .to_owned(),
            globals_file: pg_dumpall.as_ref().map(|_| GLOBALS_FILE.to_owned()),
            row_counts,
            tools: ToolVersions {
                pg_dump: pg_dump.line.clone(),
                pg_dumpall: pg_dumpall.as_ref().map(|v| v.line.clone()),
            },
            options: RecordedOptions {
                globals: options.globals,
                role_passwords: options.role_passwords,
                count_rows: options.count_rows,
                jobs: options.jobs.max(1),
            },
        };
        commit(repo, writer, &meta, epoch, run.finished(now))
            .await
            .map(|manifest| LogicalBackup { manifest, meta })
            .map_err(fail(BackupStep::Commit))
    })
    .await
}

/// The connection that holds the dump's snapshot.
struct Session {
    conn: Option<PgConnection>,
    info: ServerInfo,
    snapshot: String,
    tables: Vec<(String, String)>,
}

impl Session {
    /// Connects, opens the REPEATABLE READ transaction, exports its
    /// snapshot and reads the identity; refuses a `pg_dump` older than the
    /// server.
    async fn open(
        target: &Target,
        options: &LogicalBackupOptions,
        pg_dump: &ToolVersion,
    ) -> Result<Self> {
        let mut conn = target.connect(options.connect_timeout).await?;
        let sql = |context: &'static str| move |e| target.sql_error(context, e);
        sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut conn)
            .await
            .map_err(sql("opening the snapshot transaction"))?;
        let snapshot: String = sqlx::query_scalar("SELECT pg_export_snapshot()")
            .fetch_one(&mut conn)
            .await
            .map_err(sql("exporting the snapshot"))?;
        let info = ServerInfo::read(&mut conn, true)
            .await
            .map_err(sql("reading the server's identity"))?;
        check_tool_for_server(Tool::PgDump, pg_dump, &info)?;
        let tables = match options.count_rows {
            true => user_tables(&mut conn)
                .await
                .map_err(sql("listing tables"))?,
            false => Vec::new(),
        };
        Ok(Self {
            conn: Some(conn),
            info,
            snapshot,
            tables,
        })
    }

    /// Ends the transaction and the connection (nothing to commit: it was
    /// read-only).
    async fn close(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            let _ = sqlx::query("ROLLBACK").execute(&mut conn).await;
            let _ = conn.close().await;
        }
    }
}

/// Streams `pg_dump` into the snapshot while counting rows on the session;
/// returns the counts.
async fn dump(
    writer: &mut SnapshotWriter,
    tools: &Tools,
    target: &Target,
    session: &mut Session,
    options: &LogicalBackupOptions,
    emit: impl Fn(Event) + Send + Sync,
) -> Result<Option<Vec<TableRows>>> {
    let mut command = tools.command(Tool::PgDump);
    command
        // The codec compresses (zstd): zlib inside the archive would only
        // cost CPU and defeat zstd.
        .arg("--compress=0")
        .arg("--no-password")
        .arg(format!("--snapshot={}", session.snapshot))
        .arg(format!("--dbname={}", target.tool_url()));
    if let Some(timeout) = options.lock_wait_timeout {
        command.arg(format!("--lock-wait-timeout={}", timeout.as_millis()));
    }
    target.configure_child(&mut command, options.connect_timeout);
    let tables = std::mem::take(&mut session.tables);
    let conn = session.conn.as_mut();
    let count = async {
        match (options.count_rows, conn) {
            (true, Some(conn)) => count_rows(conn, &tables)
                .await
                .map(Some)
                .map_err(|e| target.sql_error("counting rows", e)),
            _ => Ok(None),
        }
    };
    if options.jobs > 1 {
        return dump_directory(writer, tools, target, command, options, count, &emit).await;
    }
    command.arg("--format=custom").stdout(Stdio::piped());
    let (running, stdout) = stdout_of(tools.spawn(Tool::PgDump, command)?, Tool::PgDump).await?;

    let bytes = |n| emit(Event::Bytes(n));
    let upload = async {
        writer
            .put_file_with_progress(DUMP_FILE, ChunkReader::spawn(stdout), Some(&bytes))
            .await
            .map_err(Error::from)
    };
    match tokio::try_join!(upload, count) {
        Ok((_, counts)) => {
            // The stream ended: only now does the exit status say whether
            // the archive is whole.
            running.finish(|text| target.scrub(text)).await?;
            Ok(counts)
        }
        Err(e) => {
            running.kill().await;
            Err(e)
        }
    }
}

/// `pg_dump --format=directory --jobs N` into a spool directory
/// ([`directory::Spool`]), its files uploaded as they are written, while
/// `count` counts rows.
async fn dump_directory(
    writer: &mut SnapshotWriter,
    tools: &Tools,
    target: &Target,
    mut command: tokio::process::Command,
    options: &LogicalBackupOptions,
    count: impl std::future::Future<Output = Result<Option<Vec<TableRows>>>>,
    emit: &(dyn Fn(Event) + Send + Sync),
) -> Result<Option<Vec<TableRows>>> {
    // Also removes the spools that killed backups and restores left in
    // the same place.
    let base = options.spool_dir.clone().unwrap_or_else(std::env::temp_dir);
    let spool = directory::Spool::create(&base, "dump")?;
    let shared = directory::Shared::new();
    let _watcher = directory::watch(spool.path(), &shared);
    command
        .arg("--format=directory")
        .arg(format!("--jobs={}", options.jobs))
        // The files are read back at once and deleted: nothing to fsync.
        .arg("--no-sync")
        .arg(format!("--file={}", spool.path().display()));
    let running = tools.spawn(Tool::PgDump, command)?;
    let dumped = async {
        running.finish(|text| target.scrub(text)).await?;
        shared.finish();
        Ok::<_, Error>(())
    };
    let upload = directory::upload_all(writer, spool.path(), DUMP_DIR, &shared, emit);
    // A failure of either ends the others; dropping `dumped` kills pg_dump.
    let ((), _, counts) = tokio::try_join!(dumped, upload, count)?;
    let toc = format!("{DUMP_DIR}/{}", directory::TOC_FILE);
    if !writer.files().contains_key(&toc) {
        return Err(Error::ToolFailed {
            tool: "pg_dump",
            status: format!("exited successfully but wrote no {}", directory::TOC_FILE),
            stderr: String::new(),
        });
    }
    Ok(counts)
}

/// Streams `pg_dumpall --globals-only` into the snapshot.
async fn globals(
    writer: &mut SnapshotWriter,
    tools: &Tools,
    target: &Target,
    options: &LogicalBackupOptions,
    database: &str,
    emit: impl Fn(Event) + Send + Sync,
) -> Result<()> {
    let mut command = tools.command(Tool::PgDumpall);
    command
        .arg("--globals-only")
        .arg("--no-password")
        .arg(format!("--dbname={}", target.tool_url()))
        // pg_dumpall ignores the database of --dbname; -l names the one to
        // connect to.
        .arg(format!("--database={database}"))
        .stdout(Stdio::piped());
    if !options.role_passwords {
        command.arg("--no-role-passwords");
    }
    target.configure_child(&mut command, options.connect_timeout);
    let running = tools.spawn(Tool::PgDumpall, command)?;
    let (running, stdout) = stdout_of(running, Tool::PgDumpall).await?;
    let bytes = |n| emit(Event::Bytes(n));
    match writer
        .put_file_with_progress(GLOBALS_FILE, stdout, Some(&bytes))
        .await
    {
        Ok(_) => running.finish(|text| target.scrub(text)).await,
        Err(e) => {
            running.kill().await;
            Err(e.into())
        }
    }
}
