//! The loader of a custom-format dump. With one job it is how every
//! custom-format snapshot is restored: `pg_restore` still writes the SQL,
//! but the rows pass through warmspare, which counts them from the COPY
//! command tags (no `count(*)` over the loaded tables afterwards) while
//! its own work runs beside the server's COPY instead of after it. With
//! [`RestoreOptions::parallel_load`] and more jobs, one large table is
//! loaded over several connections at once, which `pg_restore --jobs`
//! cannot do (it gives each table's data to one connection).
//!
//! Three passes over the stored dump, each verified as it streams:
//!
//! 1. `pg_restore --section=pre-data` into the database. It needs only the
//!    table of contents at the start of the archive and exits without
//!    reading the data; the stream stops there.
//! 2. `pg_restore --section=data --file=-` turns the data into plain SQL:
//!    `COPY t (cols) FROM stdin;` blocks ending in `\.`, and a few plain
//!    statements (`setval`, large objects, session `SET`s). COPY's text
//!    format puts each row on exactly one line, so the rows are cut into
//!    chunks of [`CHUNK`] bytes at line ends and handed to whichever of the
//!    N loader connections is free; each runs its own `COPY ... FROM STDIN`
//!    for the table, so a large table is written by N backends at once.
//!    Everything else runs in order on one more connection: nothing in the
//!    data section depends on table data (sequence values and large
//!    objects are independent of the tables), so it need not wait for the
//!    COPYs. The session settings of the dump's header (`client_encoding`,
//!    `standard_conforming_strings`, ...) are applied on every connection.
//! 3. `pg_restore --section=post-data` (indexes, constraints, triggers):
//!    again only the table of contents. It only starts once pass 2 read
//!    the whole dump and its digest matched.
//!
//! With one connection the rows keep the source's order (a table's chunks
//! go, in order, into one COPY). With several they end up in a different
//! physical order (chunks of one table commit in any order), so a
//! `pg_dump` of the copy lists them differently; the contents are equal. Each COPY's command tag gives
//! the rows it stored, summed per table: the row-count check needs no
//! `count(*)` over the loaded tables.
//!
//! Memory: at most `2 × jobs + 1` chunks (one being filled, `jobs` queued,
//! one held by each connection) and the largest single row.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;

use sqlx::{AssertSqlSafe, Connection as _, PgConnection};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{Mutex, mpsc};
use warmspare_store::{Check, Manifest, Repository};

use super::direct;
use super::restore::{corrupt_or, feed_dump};
use super::{LogicalMeta, RestoreOptions};
use crate::backup_common::{stdin_of, stdout_of};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::pg::Target;
use crate::tools::{Tool, Tools};

/// Rows handed to one connection at a time, in bytes (whole lines: a
/// chunk may exceed this by one row).
pub(super) const CHUNK: usize = 2 << 20;

/// Statements buffered for the ordered connection before they are sent
/// (at a statement's end).
const STATEMENTS: usize = 1 << 20;

/// Rows stored per table, by (schema, table), from the COPY command tags.
pub(super) type LoadedRows = BTreeMap<(String, String), u64>;

/// Restores a custom-format dump into `staging` in three passes (see the
/// module's documentation), the data over `jobs` connections. Returns the
/// dump's content bytes and the rows stored per table.
///
/// `flush_early`: a checkpoint will be forced after the restore (dropping
/// a database forces one, and it must write out everything the restore
/// left dirty): start one as soon as the data is loaded, beside the
/// post-data pass, so that the later one finds little left to write.
#[allow(clippy::too_many_arguments)]
pub(super) async fn restore_parallel(
    repo: &Repository,
    manifest: &Manifest,
    meta: &LogicalMeta,
    tools: &Tools,
    staging: &Target,
    options: &RestoreOptions,
    flush_early: bool,
    base: impl Fn() -> tokio::process::Command,
    emit: &(dyn Fn(Event) + Send + Sync),
) -> Result<(u64, LoadedRows)> {
    let scrub = |text| staging.scrub(text);

    // Privileges come last, as in `pg_restore`'s own order: the pre-data
    // section holds the GRANTs and REVOKEs, and a dump may revoke the
    // owner's own rights (`REVOKE ALL ON t FROM owner`), which would make
    // the COPY of a restoring owner fail if applied before the data.
    let privileges = !options.no_privileges;
    let mut pre = base();
    pre.arg("--section=pre-data");
    if privileges {
        pre.arg("--no-privileges");
    }
    feed_section(repo, manifest, meta, tools, pre, &scrub, None).await?;

    let jobs = options.jobs.max(1) as usize;
    let (size, rows, acl_entries) =
        match direct::load_data(repo, manifest, meta, staging, options, jobs, emit).await? {
            direct::Outcome::Loaded {
                size,
                rows,
                privileges,
            } => (size, rows, Some(privileges)),
            direct::Outcome::Unsupported => {
                let (size, rows) = data_through_pg_restore(
                    repo, manifest, meta, tools, staging, options, jobs, emit,
                )
                .await?;
                (size, rows, None)
            }
        };

    let mut post = base();
    post.arg("--section=post-data");
    let post = feed_section(repo, manifest, meta, tools, post, &scrub, None);
    // The table data is all written: a checkpoint started now writes it
    // out while the index builds keep the processors busy, instead of
    // after them (see `flush_early`). Best effort: a role without the
    // right to CHECKPOINT just skips it.
    let flush = async {
        if flush_early && let Ok(mut conn) = staging.connect(options.connect_timeout).await {
            let _ = sqlx::query("CHECKPOINT").execute(&mut conn).await;
            let _ = conn.close().await;
        }
    };
    let (post, ()) = tokio::join!(post, flush);
    post?;
    if privileges {
        restore_privileges(
            repo,
            manifest,
            meta,
            tools,
            options,
            acl_entries,
            &base,
            &scrub,
        )
        .await?;
    }
    Ok((size, rows))
}

/// The data pass through `pg_restore --section=data --file=-`, for an
/// archive the loader does not read itself (see `logical/direct.rs`): its
/// SQL is cut into COPY chunks and statements.
#[allow(clippy::too_many_arguments)]
async fn data_through_pg_restore(
    repo: &Repository,
    manifest: &Manifest,
    meta: &LogicalMeta,
    tools: &Tools,
    staging: &Target,
    options: &RestoreOptions,
    jobs: usize,
    emit: &(dyn Fn(Event) + Send + Sync),
) -> Result<(u64, LoadedRows)> {
    let scrub = |text| staging.scrub(text);
    let mut data = tools.command(Tool::PgRestore);
    data.arg("--section=data")
        .arg("--file=-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let running = tools.spawn(Tool::PgRestore, data)?;
    let (running, stdin) = stdin_of(running, Tool::PgRestore).await?;
    let (running, stdout) = stdout_of(running, Tool::PgRestore).await?;
    // Larger pipes: fewer reads, writes and wake-ups for the whole dump
    // passing through (best effort; 64 KiB otherwise).
    #[cfg(target_os = "linux")]
    for fd in [
        std::os::fd::AsFd::as_fd(&stdin),
        std::os::fd::AsFd::as_fd(&stdout),
    ] {
        let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETPIPE_SZ(INPUT as i32));
    }
    let bytes = |n| emit(Event::Bytes(n));
    let feed = feed_dump(repo, manifest, meta, stdin, Some(&bytes), Check::Stored);
    let load = load_sql(stdout, staging, options, jobs);
    let (fed, loaded) = tokio::join!(feed, load);
    let size = match fed {
        Ok(info) => info.size,
        Err(warmspare_store::Error::Io { source, .. })
            if source.kind() == std::io::ErrorKind::BrokenPipe =>
        {
            // pg_restore stopped reading: the loader failed and closed its
            // output (the loader's error names the table), or pg_restore
            // failed on its own. Either may come from corrupt input: then
            // the object's digest says so, and that is the error.
            if let Err(tool_error) = running.finish(&scrub).await {
                let otherwise = loaded.err().unwrap_or(tool_error);
                return Err(corrupt_or(repo, manifest, meta, otherwise).await);
            }
            loaded?;
            return Err(Error::ToolIo {
                tool: "pg_restore",
                context: "stopped reading its input early:",
                source,
            });
        }
        Err(e) => {
            running.kill().await;
            return Err(e.into());
        }
    };
    // Verified to the last byte: the loader's and pg_restore's verdicts
    // count now.
    let rows = match loaded {
        Ok(rows) => rows,
        Err(e) => {
            running.kill().await;
            return Err(e);
        }
    };
    running.finish(&scrub).await?;
    Ok((size, rows))
}

/// Applies the dump's privileges (`ACL` and `DEFAULT ACL` entries of its
/// table of contents) with `pg_restore --use-list`, which reads only the
/// table of contents. `known`: their dump ids, when the archive reader
/// already found them; else they are listed with `pg_restore --list`.
#[allow(clippy::too_many_arguments)]
async fn restore_privileges(
    repo: &Repository,
    manifest: &Manifest,
    meta: &LogicalMeta,
    tools: &Tools,
    options: &RestoreOptions,
    known: Option<Vec<i64>>,
    base: &impl Fn() -> tokio::process::Command,
    scrub: &(dyn Fn(String) -> String + Sync),
) -> Result<()> {
    let mut entries = String::new();
    if let Some(ids) = known {
        // `pg_restore --use-list` reads the id before each line's `;`.
        for id in ids {
            entries.push_str(&format!("{id};\n"));
        }
    } else {
        let mut listing = tools.command(Tool::PgRestore);
        listing.arg("--list");
        let mut keep = |line: &str| {
            if is_privilege_entry(line) {
                entries.push_str(line);
                entries.push('\n');
            }
        };
        feed_section(repo, manifest, meta, tools, listing, scrub, Some(&mut keep)).await?;
    }
    if entries.is_empty() {
        return Ok(());
    }
    let spool = super::directory::Spool::create(&super::restore::spool_dir(options), "restore")?;
    let list = spool.path().join("privileges.list");
    tokio::fs::write(&list, entries)
        .await
        .map_err(|e| Error::Spool {
            path: list.display().to_string(),
            source: e,
        })?;
    let mut apply = base();
    apply.arg(format!("--use-list={}", list.display()));
    feed_section(repo, manifest, meta, tools, apply, scrub, None).await
}

/// Whether a line of `pg_restore --list` is a privilege entry:
/// `<id>; <oid> <oid> ACL ...` or `... DEFAULT ACL ...` (comments start
/// with `;`).
fn is_privilege_entry(line: &str) -> bool {
    let Some((id, rest)) = line.split_once("; ") else {
        return false;
    };
    let mut fields = rest.splitn(3, ' ');
    let (Some(_), Some(_), Some(desc)) = (fields.next(), fields.next(), fields.next()) else {
        return false;
    };
    !id.is_empty()
        && id.bytes().all(|b| b.is_ascii_digit())
        && (desc.starts_with("ACL ") || desc.starts_with("DEFAULT ACL "))
}

/// Runs `command` (a `pg_restore` that reads the table of contents only:
/// a `--section` into the database, or `--list`) with the dump streamed
/// into its standard input. It may stop reading once it has what it needs:
/// that is no error. With `lines`, its standard output is read line by
/// line into it.
async fn feed_section(
    repo: &Repository,
    manifest: &Manifest,
    meta: &LogicalMeta,
    tools: &Tools,
    mut command: tokio::process::Command,
    scrub: &(dyn Fn(String) -> String + Sync),
    lines: Option<&mut (dyn FnMut(&str) + Send)>,
) -> Result<()> {
    command.stdin(Stdio::piped());
    if lines.is_some() {
        command.stdout(Stdio::piped());
    }
    let mut running = tools.spawn(Tool::PgRestore, command)?;
    let stdout = running.child_mut().stdout.take();
    let (running, stdin) = stdin_of(running, Tool::PgRestore).await?;
    let read = async {
        let (Some(lines), Some(stdout)) = (lines, stdout) else {
            return Ok(());
        };
        let mut reader = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
        while let Some(line) = reader.next_line().await? {
            lines(&line);
        }
        Ok::<_, std::io::Error>(())
    };
    let feed = feed_dump(repo, manifest, meta, stdin, None, Check::Full);
    let (fed, read) = tokio::join!(feed, read);
    let read = read.map_err(|e| Error::ToolIo {
        tool: "pg_restore",
        context: "reading the output of",
        source: e,
    });
    match fed {
        Ok(_) => {
            let finished = running.finish(scrub).await;
            finished.and(read)
        }
        Err(warmspare_store::Error::Io { source, .. })
            if source.kind() == std::io::ErrorKind::BrokenPipe =>
        {
            if let Err(tool_error) = running.finish(scrub).await {
                return Err(corrupt_or(repo, manifest, meta, tool_error).await);
            }
            read
        }
        Err(e) => {
            running.kill().await;
            Err(e.into())
        }
    }
}

/// The session settings seen so far (`SET ...`, `set_config(...)`), to be
/// applied on a loader connection before its next COPY.
pub(super) struct Settings {
    pub(super) generation: u64,
    pub(super) sql: String,
}

/// One `COPY ... FROM stdin` block of the SQL stream.
pub(super) struct CopyTarget {
    /// The statement, as `pg_restore` wrote it.
    pub(super) statement: String,
    /// The table as written (quoted, qualified), for messages.
    pub(super) display: String,
    /// The table, unquoted; `None` if the statement could not be parsed
    /// (its rows are then counted with SQL).
    pub(super) key: Option<(String, String)>,
    pub(super) settings: Arc<Settings>,
}

/// Rows of one table, whole lines.
pub(super) struct Chunk {
    pub(super) target: Arc<CopyTarget>,
    pub(super) data: Vec<u8>,
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn connect(target: &Target, options: &RestoreOptions) -> Result<PgConnection> {
    let mut conn = target.connect(options.connect_timeout).await?;
    // As for pg_restore's sessions: nothing is lost, the swap's
    // synchronous commit flushes all the WAL before it.
    sqlx::raw_sql("SET synchronous_commit = off")
        .execute(&mut conn)
        .await
        .map_err(|e| target.sql_error("setting up a loader session", e))?;
    Ok(conn)
}

/// Reads the SQL of `pg_restore --section=data --file=-` and applies it:
/// COPY rows over `jobs` connections, everything else in order on one.
async fn load_sql(
    sql: impl AsyncRead + Unpin,
    target: &Target,
    options: &RestoreOptions,
    jobs: usize,
) -> Result<LoadedRows> {
    run_loader(target, options, jobs, async |control, tx| {
        dispatch(sql, control, target, tx).await
    })
    .await
}

/// Runs `produce` with the ordered connection and the sender of COPY
/// chunks, which `jobs` more connections load; returns the rows stored per
/// table (from the COPY command tags).
pub(super) async fn run_loader(
    target: &Target,
    options: &RestoreOptions,
    jobs: usize,
    produce: impl AsyncFnOnce(&mut PgConnection, &mpsc::Sender<Chunk>) -> Result<()>,
) -> Result<LoadedRows> {
    let mut control = connect(target, options).await?;
    let (tx, rx) = mpsc::channel::<Chunk>(jobs);
    let rx = Arc::new(Mutex::new(rx));
    let counts = Arc::new(std::sync::Mutex::new(LoadedRows::new()));
    let mut workers = Vec::with_capacity(jobs);
    for _ in 0..jobs {
        let conn = connect(target, options).await?;
        let task = tokio::spawn(worker(
            conn,
            Arc::clone(&rx),
            target.clone(),
            Arc::clone(&counts),
        ));
        workers.push(AbortOnDrop(task));
    }
    drop(rx);
    let dispatched = produce(&mut control, &tx).await;
    drop(tx);
    let mut first_error = None;
    for task in &mut workers {
        let result = match (&mut task.0).await {
            Ok(r) => r,
            Err(e) => Err(Error::ToolIo {
                tool: "the loader",
                context: "a connection's task ended abnormally:",
                source: std::io::Error::other(e.to_string()),
            }),
        };
        if let Err(e) = result {
            first_error.get_or_insert(e);
        }
    }
    // A connection's error first: the dispatcher then only saw the channel
    // closed.
    if let Some(e) = first_error {
        return Err(e);
    }
    dispatched?;
    let _ = control.close().await;
    let rows = std::mem::take(&mut *counts.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(rows)
}

/// What one read from `pg_restore` may bring at most.
const INPUT: usize = 1 << 20;

/// The SQL stream, buffered: statements are read line by line, COPY rows
/// in whole blocks (reading 5 million rows line by line costs more client
/// processor time than cutting them, which competes with the server's COPY
/// backends for the same cores).
struct Input<R> {
    inner: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl<R: AsyncRead + Unpin> Input<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            buf: vec![0; INPUT],
            start: 0,
            end: 0,
        }
    }

    /// Reads more once everything buffered was taken; `false` at the end
    /// of the input.
    async fn fill(&mut self) -> std::io::Result<bool> {
        debug_assert_eq!(self.start, self.end);
        let n = self.inner.read(&mut self.buf).await?;
        self.start = 0;
        self.end = n;
        Ok(n > 0)
    }

    /// Appends the next line (with its `\n`, without one at the end of
    /// the input) to `line`; appends nothing at the end of the input.
    async fn read_line(&mut self, line: &mut Vec<u8>) -> std::io::Result<()> {
        loop {
            let available = &self.buf[self.start..self.end];
            if let Some(i) = memchr::memchr(b'\n', available) {
                line.extend_from_slice(&available[..=i]);
                self.start += i + 1;
                return Ok(());
            }
            line.extend_from_slice(available);
            self.start = self.end;
            if !self.fill().await? {
                return Ok(());
            }
        }
    }

    /// Appends everything buffered (reading first if nothing is) to
    /// `data`; returns how much (0: end of the input).
    async fn take_into(&mut self, data: &mut Vec<u8>) -> std::io::Result<usize> {
        if self.start == self.end && !self.fill().await? {
            return Ok(0);
        }
        data.extend_from_slice(&self.buf[self.start..self.end]);
        let n = self.end - self.start;
        self.start = self.end;
        Ok(n)
    }

    /// Gives back the last `n` bytes of the last [`Self::take_into`].
    fn unread(&mut self, n: usize) {
        debug_assert!(n <= self.start);
        self.start -= n;
    }
}

/// Where the COPY end marker `\.` (a line of its own) starts in `data`,
/// looking from `from` on; `data` starts at a line start. A data line
/// cannot start with `\.` (COPY's text format escapes a backslash as
/// `\\`), so the first such line is the end.
fn end_marker(data: &[u8], from: usize) -> Option<usize> {
    memchr::memmem::find_iter(&data[from..], b"\\.\n")
        .map(|i| i + from)
        .find(|&p| p == 0 || data[p - 1] == b'\n')
}

/// One table's COPY rows, read up to their end marker (consumed) and cut
/// into chunks of whole lines once `chunk` bytes are buffered.
struct CopyRows {
    chunk: usize,
    data: Vec<u8>,
    /// `data[..searched]` holds no end marker.
    searched: usize,
    sent: bool,
    done: bool,
}

impl CopyRows {
    fn new(chunk: usize) -> Self {
        Self {
            chunk,
            data: Vec::with_capacity(chunk + INPUT),
            searched: 0,
            sent: false,
            done: false,
        }
    }

    /// The next chunk (the last may be empty, for a table without rows);
    /// `None` after the last. An input that ends before the marker is an
    /// [`std::io::ErrorKind::UnexpectedEof`] error.
    async fn next<R: AsyncRead + Unpin>(
        &mut self,
        input: &mut Input<R>,
    ) -> std::io::Result<Option<Vec<u8>>> {
        if self.done {
            return Ok(None);
        }
        loop {
            if input.take_into(&mut self.data).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            // A marker split across two reads starts at most two bytes
            // before the new ones.
            if let Some(p) = end_marker(&self.data, self.searched.saturating_sub(2)) {
                input.unread(self.data.len() - (p + 3));
                self.data.truncate(p);
                self.done = true;
                let last = !self.data.is_empty() || !self.sent;
                return Ok(last.then(|| std::mem::take(&mut self.data)));
            }
            self.searched = self.data.len();
            if self.data.len() >= self.chunk
                && let Some(end) = memchr::memrchr(b'\n', &self.data)
            {
                let mut rest = Vec::with_capacity(self.chunk + INPUT);
                rest.extend_from_slice(&self.data[end + 1..]);
                self.data.truncate(end + 1);
                self.searched = rest.len();
                self.sent = true;
                return Ok(Some(std::mem::replace(&mut self.data, rest)));
            }
        }
    }
}

/// Cuts the SQL stream into COPY chunks (to `tx`) and ordered statements
/// (run on `control`).
async fn dispatch(
    sql: impl AsyncRead + Unpin,
    control: &mut PgConnection,
    target: &Target,
    tx: &mpsc::Sender<Chunk>,
) -> Result<()> {
    let read_error = |e| Error::ToolIo {
        tool: "pg_restore",
        context: "reading the SQL from",
        source: e,
    };
    let mut input = Input::new(sql);
    let mut line = Vec::new();
    let mut pending = String::new();
    let mut settings = Arc::new(Settings {
        generation: 0,
        sql: String::new(),
    });
    loop {
        line.clear();
        input.read_line(&mut line).await.map_err(read_error)?;
        if line.is_empty() {
            break;
        }
        let text = std::str::from_utf8(&line).map_err(|_| Error::ToolIo {
            tool: "pg_restore",
            context: "wrote a statement that is not UTF-8:",
            source: std::io::Error::other(String::from_utf8_lossy(&line).into_owned()),
        })?;
        if let Some(statement) = copy_statement(text) {
            run_statements(control, target, &mut pending).await?;
            let (display, key) = parse_copy_table(statement);
            let copy = Arc::new(CopyTarget {
                statement: statement.to_owned(),
                display,
                key,
                settings: Arc::clone(&settings),
            });
            let mut rows = CopyRows::new(CHUNK);
            loop {
                let data = match rows.next(&mut input).await {
                    Ok(Some(data)) => data,
                    Ok(None) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                        return Err(Error::ToolIo {
                            tool: "pg_restore",
                            context: "ended its output inside the data of a table:",
                            source: std::io::Error::other(copy.display.clone()),
                        });
                    }
                    Err(e) => return Err(read_error(e)),
                };
                let chunk = Chunk {
                    target: Arc::clone(&copy),
                    data,
                };
                if tx.send(chunk).await.is_err() {
                    // A connection failed and closed the channel; its
                    // error is the one reported.
                    return Ok(());
                }
            }
            continue;
        }
        if text.starts_with('\\') {
            // psql meta-commands: `\restrict KEY` / `\unrestrict KEY`
            // guard psql against a malicious dump; meaningless here.
            if text.starts_with("\\restrict ") || text.starts_with("\\unrestrict ") {
                continue;
            }
            return Err(Error::ToolIo {
                tool: "pg_restore",
                context: "wrote a psql meta-command the loader does not know:",
                source: std::io::Error::other(text.trim_end().to_owned()),
            });
        }
        if text.starts_with("SET ") || text.starts_with("SELECT pg_catalog.set_config(") {
            let mut sql = settings.sql.clone();
            sql.push_str(text);
            settings = Arc::new(Settings {
                generation: settings.generation + 1,
                sql,
            });
        }
        pending.push_str(text);
        if pending.len() >= STATEMENTS && text.trim_end().ends_with(';') {
            run_statements(control, target, &mut pending).await?;
        }
    }
    run_statements(control, target, &mut pending).await
}

/// Sends the buffered statements (if any besides comments and blank
/// lines) as one simple query.
pub(super) async fn run_statements(
    control: &mut PgConnection,
    target: &Target,
    pending: &mut String,
) -> Result<()> {
    let meaningful = pending.lines().any(|l| {
        let l = l.trim();
        !l.is_empty() && !l.starts_with("--")
    });
    if meaningful {
        let sql = std::mem::take(pending);
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(&mut *control)
            .await
            .map_err(|e| target.sql_error("running the data section's statements", e))?;
    }
    pending.clear();
    Ok(())
}

/// One loader connection: COPYs chunks until the channel ends.
async fn worker(
    mut conn: PgConnection,
    rx: Arc<Mutex<mpsc::Receiver<Chunk>>>,
    target: Target,
    counts: Arc<std::sync::Mutex<LoadedRows>>,
) -> Result<()> {
    let recv = || async { rx.lock().await.recv().await };
    let mut applied = 0;
    let mut next = recv().await;
    while let Some(first) = next.take() {
        let copy = Arc::clone(&first.target);
        let result: Result<u64, sqlx::Error> = async {
            if copy.settings.generation != applied {
                sqlx::raw_sql(AssertSqlSafe(copy.settings.sql.clone()))
                    .execute(&mut conn)
                    .await?;
                applied = copy.settings.generation;
            }
            let mut copying = conn.copy_in_raw(&copy.statement).await?;
            copying.send(first.data).await?;
            loop {
                match recv().await {
                    Some(chunk) if Arc::ptr_eq(&chunk.target, &copy) => {
                        copying.send(chunk.data).await?;
                    }
                    other => {
                        next = other;
                        break;
                    }
                }
            }
            copying.finish().await
        }
        .await;
        match result {
            Ok(rows) => {
                if let Some(key) = &copy.key {
                    let mut counts = counts.lock().unwrap_or_else(|e| e.into_inner());
                    *counts.entry(key.clone()).or_default() += rows;
                }
            }
            Err(e) => {
                // Stop the dispatcher: no more chunks for anyone.
                rx.lock().await.close();
                return Err(target.sql_error(format!("loading table {}", copy.display), e));
            }
        }
    }
    let _ = conn.close().await;
    Ok(())
}

/// `COPY ... FROM stdin;` (without the line end) if `line` starts a COPY
/// block.
fn copy_statement(line: &str) -> Option<&str> {
    let statement = line.strip_suffix('\n')?;
    (statement.starts_with("COPY ") && statement.ends_with(" FROM stdin;")).then_some(statement)
}

/// The table of `COPY schema.table (cols) FROM stdin;`: as written, and
/// unquoted (`None` if it cannot be parsed).
pub(super) fn parse_copy_table(statement: &str) -> (String, Option<(String, String)>) {
    let rest = statement.strip_prefix("COPY ").unwrap_or(statement);
    let parsed = (|| {
        let (schema, rest) = parse_ident(rest)?;
        let rest = rest.strip_prefix('.')?;
        let (table, rest) = parse_ident(rest)?;
        Some((schema, table, rest))
    })();
    match parsed {
        Some((schema, table, after)) => {
            let display = rest[..rest.len() - after.len()].to_owned();
            (display, Some((schema, table)))
        }
        None => {
            let display = rest.split(" (").next().unwrap_or(rest).to_owned();
            (display, None)
        }
    }
}

/// One identifier as `pg_dump` writes it: `"quoted ""like"" this"` or
/// plain (lower case letters, digits, `_`, `$`, non-ASCII).
fn parse_ident(text: &str) -> Option<(String, &str)> {
    if let Some(quoted) = text.strip_prefix('"') {
        let mut name = String::new();
        let mut chars = quoted.char_indices();
        while let Some((i, c)) = chars.next() {
            if c == '"' {
                if quoted[i + 1..].starts_with('"') {
                    name.push('"');
                    chars.next();
                } else {
                    return Some((name, &quoted[i + 1..]));
                }
            } else {
                name.push(c);
            }
        }
        None
    } else {
        let end = text
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
            .unwrap_or(text.len());
        (end > 0).then(|| (text[..end].to_owned(), &text[end..]))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Reads in pieces of the given sizes (cycled), to split lines, end
    /// markers and archive fields at every place.
    pub(in crate::logical) struct Pieces {
        pub(in crate::logical) data: Vec<u8>,
        pub(in crate::logical) at: usize,
        pub(in crate::logical) sizes: Vec<usize>,
        pub(in crate::logical) next: usize,
    }

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let size = self.sizes[self.next % self.sizes.len()];
            self.next += 1;
            let n = size.min(buf.remaining()).min(self.data.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.data[at..at + n]);
            self.at += n;
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// A COPY text row as `COPY TO` writes it: backslashes escaped
    /// (`\\`, so `\\.` looks like a marker from its second byte on), `\N`
    /// and tabs, never a raw line end nor a line starting with `\.`.
    fn row() -> impl proptest::strategy::Strategy<Value = String> {
        proptest::collection::vec(
            proptest::prop_oneof![
                proptest::strategy::Just("a"),
                proptest::strategy::Just("."),
                proptest::strategy::Just("\\\\"),
                proptest::strategy::Just("\\N"),
                proptest::strategy::Just("\t"),
            ],
            0..12,
        )
        .prop_map(|parts| parts.concat())
    }

    use proptest::prelude::*;

    proptest! {
        /// The rows come out whole, in order, in chunks of whole lines of at
        /// least the chunk size (the last smaller), whatever the reads'
        /// sizes; what follows the end marker is left to read.
        #[test]
        fn copy_rows_cut_at_line_ends_and_stop_at_the_marker(
            rows in proptest::collection::vec(row(), 0..200),
            sizes in proptest::collection::vec(1usize..40, 1..8),
            chunk in 1usize..300,
        ) {
            let body: String = rows.iter().map(|r| format!("{r}\n")).collect();
            let longest = rows.iter().map(String::len).max().unwrap_or(0);
            let stream = format!("{body}\\.\nSELECT 1;\n");
            let runtime = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
            let (chunks, after) = runtime.block_on(async {
                let mut input = Input::new(Pieces {
                    data: stream.into_bytes(),
                    at: 0,
                    sizes,
                    next: 0,
                });
                let mut chunks = Vec::new();
                let mut rows = CopyRows::new(chunk);
                while let Some(data) = rows.next(&mut input).await.expect("rows") {
                    chunks.push(data);
                }
                let mut after = Vec::new();
                input.read_line(&mut after).await.expect("a line");
                (chunks, after)
            });
            prop_assert_eq!(chunks.concat(), body.as_bytes());
            prop_assert_eq!(after, b"SELECT 1;\n");
            prop_assert!(!chunks.is_empty());
            for (i, c) in chunks.iter().enumerate() {
                prop_assert!(c.is_empty() || c.ends_with(b"\n"));
                if i + 1 < chunks.len() {
                    prop_assert!(!c.is_empty());
                }
                // Bounded: the chunk size, one read and one row.
                prop_assert!(c.len() <= chunk + 40 + longest + 1);
            }
        }
    }

    #[test]
    fn copy_rows_without_their_marker_are_an_error() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        let error = runtime
            .block_on(async {
                let mut input = Input::new(&b"1\tx\n2\ty\n\\."[..]);
                let mut rows = CopyRows::new(4);
                while rows.next(&mut input).await?.is_some() {}
                Ok::<_, std::io::Error>(())
            })
            .expect_err("no end marker");
        assert_eq!(error.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn privilege_entries_of_a_listing_are_recognised() {
        assert!(is_privilege_entry("3352; 0 0 ACL public TABLE t postgres"));
        assert!(is_privilege_entry(
            "3353; 826 16420 DEFAULT ACL public DEFAULT PRIVILEGES FOR TABLES app"
        ));
        assert!(!is_privilege_entry(
            "3351; 0 0 COMMENT public TABLE t postgres"
        ));
        assert!(!is_privilege_entry(
            "214; 1259 16413 TABLE public ACL postgres"
        ));
        assert!(!is_privilege_entry(
            "3343; 0 16413 TABLE DATA public t postgres"
        ));
        assert!(!is_privilege_entry(";     Dump Version: 1.14-0"));
        assert!(!is_privilege_entry(""));
    }

    #[test]
    fn copy_statements_are_recognised() {
        assert_eq!(
            copy_statement("COPY public.t (a, b) FROM stdin;\n"),
            Some("COPY public.t (a, b) FROM stdin;")
        );
        assert_eq!(copy_statement("COPY public.t (a, b) FROM stdin;"), None);
        assert_eq!(copy_statement("SELECT 1;\n"), None);
    }

    #[test]
    fn copy_tables_are_unquoted() {
        let (display, key) = parse_copy_table("COPY public.pgbench_accounts (aid) FROM stdin;");
        assert_eq!(display, "public.pgbench_accounts");
        assert_eq!(key, Some(("public".into(), "pgbench_accounts".into())));
        let (display, key) = parse_copy_table(r#"COPY "Odd ""Schema"".x".t_1$ (a) FROM stdin;"#);
        assert_eq!(display, r#""Odd ""Schema"".x".t_1$"#);
        assert_eq!(key, Some((r#"Odd "Schema".x"#.into(), "t_1$".into())));
        let (_, key) = parse_copy_table(r#"COPY sch."Table" FROM stdin;"#);
        assert_eq!(key, Some(("sch".into(), "Table".into())));
        let (_, key) = parse_copy_table(r#"COPY "unterminated (a) FROM stdin;"#);
        assert_eq!(key, None);
    }
}
