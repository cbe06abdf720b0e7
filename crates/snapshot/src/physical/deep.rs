//! [`verify_deep_physical`]: restore a physical snapshot into a throwaway
//! cluster, recover it to consistency and check what came back.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection as _, PgConnection};
use warmspare_pgcluster::{Cluster, Watchdog};
use warmspare_store::{Repository, SnapshotId, SnapshotKind};

use super::{PhysicalMeta, PhysicalRestoreOptions, RecoveryTarget, needed, restore_physical};
use crate::error::{Error, Result};
use crate::event::{Event, PhysicalVerifyStep, ProgressFn};
use crate::pg::{APPLICATION_NAME, major_of_num, quote_ident};
use crate::tools::{major_text, parse_version};

/// The default of [`PhysicalVerifyOptions::recovery_timeout`].
pub const DEFAULT_RECOVERY_TIMEOUT: Duration = Duration::from_secs(600);

/// The `restore_command` of the scratch copy: every segment it needs is
/// already in `pg_wal`, and recovery looks there when the command fails.
const NO_ARCHIVE: &str = "false";
/// The prefix of the scratch cluster's directory, inside the scratch
/// directory (the directory's watchdog waits for it to be gone).
const CLUSTER_PREFIX: &str = "verify-db-";
/// How much of `pg_verifybackup`'s standard error is kept.
const STDERR_TAIL: usize = 8 * 1024;

/// Options of [`verify_deep_physical`].
///
/// ```
/// use warmspare_snapshot::physical::PhysicalVerifyOptions;
/// let o = PhysicalVerifyOptions::new("/usr/lib/postgresql/15/bin", std::env::temp_dir());
/// assert_eq!(o.recovery_timeout.as_secs(), 600);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhysicalVerifyOptions {
    /// The directory of the PostgreSQL server programs (`initdb`,
    /// `pg_ctl`, `postgres`, `pg_verifybackup`), of the snapshot's major
    /// version; see `warmspare_pgcluster::find_bin_dir`.
    pub bin_dir: PathBuf,
    /// Where the scratch directory is created; it needs room for the
    /// restored cluster and its WAL. When running as root the server runs
    /// as `postgres`, which must be able to traverse this directory.
    pub scratch_parent: PathBuf,
    /// How long the replay to consistency may take.
    pub recovery_timeout: Duration,
    /// How long one connection to the scratch server may take.
    pub connect_timeout: Duration,
    /// The `tar` program.
    pub tar: PathBuf,
}

impl PhysicalVerifyOptions {
    /// Server programs in `bin_dir`, scratch space under `scratch_parent`.
    pub fn new(bin_dir: impl Into<PathBuf>, scratch_parent: impl Into<PathBuf>) -> Self {
        Self {
            bin_dir: bin_dir.into(),
            scratch_parent: scratch_parent.into(),
            recovery_timeout: DEFAULT_RECOVERY_TIMEOUT,
            connect_timeout: crate::DEFAULT_CONNECT_TIMEOUT,
            tar: PathBuf::from("tar"),
        }
    }
    /// Sets [`recovery_timeout`](Self::recovery_timeout).
    pub fn with_recovery_timeout(mut self, timeout: Duration) -> Self {
        self.recovery_timeout = timeout;
        self
    }
    /// Sets [`connect_timeout`](Self::connect_timeout).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
    /// Sets [`tar`](Self::tar).
    pub fn with_tar(mut self, tar: impl Into<PathBuf>) -> Self {
        self.tar = tar.into();
        self
    }
}

/// What a successful deep verification of a physical snapshot checked.
#[derive(Debug, Clone, Serialize)]
pub struct PhysicalVerifyReport {
    /// The snapshot.
    pub id: SnapshotId,
    /// Content bytes of the base backup restored.
    pub bytes: u64,
    /// WAL files fetched (verified) and replayed to reach consistency.
    pub wal_files: usize,
    /// Their bytes.
    pub wal_bytes: u64,
    /// Whether `pg_verifybackup` checked every file and the WAL against
    /// the `backup_manifest` (`false`: the program is not installed).
    pub manifest_checked: bool,
    /// The databases checked.
    pub databases: Vec<String>,
    /// User tables read in full (`count(*)`).
    pub tables_read: usize,
    /// The rows they hold. A physical snapshot records no row counts:
    /// a base backup has no single moment to count at.
    pub rows: u64,
    /// Tables (system catalogs included) `amcheck`'s `verify_heapam` found
    /// sound (`None`: not available, PostgreSQL 13 and older or no
    /// `amcheck`).
    pub tables_checked: Option<usize>,
    /// B-tree indexes (system catalogs included) `amcheck` found sound
    /// (`None`: `amcheck` is not installed).
    pub indexes_checked: Option<usize>,
}

/// Restores physical snapshot `id` into a throwaway cluster and checks it:
///
/// 1. the base backup streams (digests verified) into a scratch data
///    directory under [`PhysicalVerifyOptions::scratch_parent`];
/// 2. every WAL segment from the backup's start to its stop position is
///    fetched from the repository (digests verified) into `pg_wal`;
/// 3. `pg_verifybackup` checks every file's checksum and parses the WAL
///    against the `backup_manifest` that `pg_basebackup` wrote;
/// 4. a server started on it (`archive_mode = off`, no TCP listener,
///    Unix socket for its owner only) replays the WAL to the consistency
///    point (`recovery_target = 'immediate'`) and promotes; its system
///    identifier must be the snapshot's;
/// 5. in every database: every user table is read in full, and with
///    `amcheck` (created in the copy where the server has it) every table
///    is checked with `verify_heapam` and every B-tree index with
///    `bt_index_check(index, heapallindexed => true)`, system catalogs
///    included;
/// 6. the server is stopped and the scratch directory removed, whatever
///    the outcome (a watchdog removes it should this process die).
///
/// Only the repository is read. The copy stops at the snapshot's end: WAL
/// archived later is not replayed (`verify` of a point in time is a
/// `drill`).
///
/// # Errors
///
/// [`Error::PhysicalVerify`] naming the [`PhysicalVerifyStep`], around the
/// cause: [`Error::SnapshotNotFound`], [`Error::WrongKind`],
/// [`Error::ToolNotFound`] (server programs missing or of another major
/// version), [`Error::Store`] (a damaged object, named),
/// [`Error::WalMissing`], [`Error::ToolFailed`] (`pg_verifybackup` found
/// a damaged file, named), [`Error::RecoveryFailed`] (with the server
/// log's end), [`Error::HeapCorrupt`], [`Error::IndexCorrupt`],
/// [`Error::Sql`], [`Error::Scratch`].
pub async fn verify_deep_physical(
    repo: &Repository,
    id: &SnapshotId,
    options: &PhysicalVerifyOptions,
    progress: Option<ProgressFn<'_>>,
) -> Result<PhysicalVerifyReport> {
    let emit = |event| {
        if let Some(progress) = progress {
            progress(event);
        }
    };
    // A mutex, not a cell: the future stays `Send` for callers that spawn it.
    let step = Mutex::new(PhysicalVerifyStep::Resolve);
    let current = || {
        step.lock()
            .map(|s| *s)
            .unwrap_or(PhysicalVerifyStep::Resolve)
    };
    let enter = |next| {
        if let Ok(mut s) = step.lock() {
            *s = next;
        }
        emit(Event::PhysicalVerify(next));
    };

    enter(PhysicalVerifyStep::Resolve);
    let prepared = async {
        let manifest = crate::catalog::read_manifest(repo, id).await?;
        if manifest.kind != SnapshotKind::Physical {
            return Err(Error::WrongKind {
                id: id.clone(),
                kind: manifest.kind,
                needed: "this deep verification restores physical snapshots",
            });
        }
        let meta = PhysicalMeta::from_manifest(&manifest)?;
        check_server_programs(&options.bin_dir, &meta).await?;
        let scratch = ScratchDir::create(&options.scratch_parent)?;
        Ok((meta, scratch))
    }
    .await;
    let (meta, scratch) = prepared.map_err(|e| wrap(id, current(), e))?;

    let data_dir = scratch.path().join("restored");
    let mut cluster: Option<Cluster> = None;
    let result = async {
        enter(PhysicalVerifyStep::Restore);
        let restore_options = PhysicalRestoreOptions::new(NO_ARCHIVE)
            .with_target(RecoveryTarget::Immediate)
            .with_tar(&options.tar);
        let only_bytes = |event| {
            if let Event::Bytes(_) = event {
                emit(event);
            }
        };
        let restored = restore_physical(repo, id, &data_dir, &restore_options, Some(&only_bytes))
            .await
            .map_err(|e| match e {
                // The inner cause says it all; the data directory is ours.
                Error::PhysicalRestore { source, .. } => *source,
                other => other,
            })?;

        enter(PhysicalVerifyStep::FetchWal);
        let bytes = |n| emit(Event::Bytes(n));
        let (wal_files, wal_bytes) =
            needed::fetch_all(repo, id, &meta, &data_dir.join("pg_wal"), &bytes).await?;

        enter(PhysicalVerifyStep::VerifyBackup);
        let manifest_checked = verify_backup(&options.bin_dir, &data_dir).await?;

        enter(PhysicalVerifyStep::Recover);
        configure_scratch(&data_dir)?;
        let started = Cluster::builder(&options.bin_dir, scratch.path())
            .prefix(CLUSTER_PREFIX)
            .from_data_dir(&data_dir)
            .start_timeout(options.recovery_timeout)
            .start()
            .await
            .map_err(|e| Error::RecoveryFailed {
                reason: format!("starting PostgreSQL on the restored data directory: {e}"),
            })?;
        let cluster = cluster.insert(started);
        let superuser = wait_promoted(cluster, &meta, options).await?;

        enter(PhysicalVerifyStep::CheckData);
        let checked = check_data(cluster, &superuser, options).await?;
        Ok(PhysicalVerifyReport {
            id: id.clone(),
            bytes: restored.bytes,
            wal_files,
            wal_bytes,
            manifest_checked,
            databases: checked.databases,
            tables_read: checked.tables_read,
            rows: checked.rows,
            tables_checked: checked.tables_checked,
            indexes_checked: checked.indexes_checked,
        })
    }
    .await
    .map_err(|e| wrap(id, current(), e));

    enter(PhysicalVerifyStep::Cleanup);
    let stopped = match cluster.take() {
        Some(cluster) => cluster.stop().await.map_err(|source| Error::Scratch {
            context: "stopping the scratch server",
            source,
        }),
        None => Ok(()),
    };
    drop(scratch);
    let report = result?;
    stopped.map_err(|e| wrap(id, PhysicalVerifyStep::Cleanup, e))?;
    Ok(report)
}

fn wrap(id: &SnapshotId, step: PhysicalVerifyStep, e: Error) -> Error {
    Error::PhysicalVerify {
        id: id.clone(),
        step,
        source: Box::new(e),
    }
}

/// Checks that `bin_dir` holds the server programs of the snapshot's
/// major version: a server starts only on a data directory of its own.
async fn check_server_programs(bin_dir: &Path, meta: &PhysicalMeta) -> Result<()> {
    let needed = major_of_num(meta.server_version_num);
    let not_found = |location: String| Error::ToolNotFound {
        tool: "postgres",
        location,
    };
    if !warmspare_pgcluster::has_server_binaries(bin_dir) {
        return Err(not_found(format!(
            "looked for initdb, pg_ctl and postgres in {}; a physical snapshot of \
             PostgreSQL {} is verified with that version's server programs",
            bin_dir.display(),
            major_text(needed)
        )));
    }
    let output = tokio::process::Command::new(bin_dir.join("postgres"))
        .arg("--version")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| Error::ToolIo {
            tool: "postgres",
            context: "cannot start",
            source,
        })?;
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text.lines().next().unwrap_or_default().trim();
    match parse_version(line) {
        Some(found) if found.major == needed => Ok(()),
        Some(found) => Err(not_found(format!(
            "{} is PostgreSQL {}, but snapshot is of PostgreSQL {} ({}): point the bin dir \
             at PostgreSQL {}'s server programs",
            bin_dir.join("postgres").display(),
            found.version,
            major_text(needed),
            meta.server_version,
            major_text(needed)
        ))),
        None => Err(Error::ToolFailed {
            tool: "postgres",
            status: "unexpected --version output".into(),
            stderr: line.to_owned(),
        }),
    }
}

/// The scratch directory: traversable by the server's user, removed on
/// drop, and by a watchdog should this process die (once the cluster's
/// own watchdog has stopped the server and removed its directory).
struct ScratchDir {
    // Field order is drop order: the directory first, then the watchdog.
    dir: tempfile::TempDir,
    _watchdog: Watchdog,
}

impl ScratchDir {
    fn create(parent: &Path) -> Result<Self> {
        let io = |context: &'static str, path: &Path| {
            let path = path.display().to_string();
            move |source| Error::DataDir {
                context,
                path,
                source,
            }
        };
        std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
        let dir = tempfile::Builder::new()
            .prefix("warmspare-verify-")
            .tempdir_in(parent)
            .map_err(io("creating a scratch directory in", parent))?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .map_err(io("setting permissions on", dir.path()))?;
        const SCRIPT: &str = r#"
dir=$1
read -r _ || true
i=0
while [ "$i" -lt 300 ] && ls -d "$dir"/verify-db-* >/dev/null 2>&1; do sleep 0.1; i=$((i + 1)); done
rm -rf "$dir"
"#;
        let watchdog = Watchdog::spawn(SCRIPT, &[dir.path().display().to_string()], None).map_err(
            |source| Error::Scratch {
                context: "guarding the scratch directory",
                source,
            },
        )?;
        Ok(Self {
            dir,
            _watchdog: watchdog,
        })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Runs `pg_verifybackup` on the restored directory (before the server
/// touches it); `false` when the program is not installed.
async fn verify_backup(bin_dir: &Path, data_dir: &Path) -> Result<bool> {
    let program = bin_dir.join("pg_verifybackup");
    if !program.is_file() || !data_dir.join("backup_manifest").is_file() {
        return Ok(false);
    }
    // It ignores what a restore adds or changes: postgresql.auto.conf,
    // recovery.signal, pg_wal (whose WAL it parses with pg_waldump).
    let output = tokio::process::Command::new(&program)
        .arg("--quiet")
        .arg(data_dir)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| Error::ToolIo {
            tool: "pg_verifybackup",
            context: "cannot start",
            source,
        })?;
    if output.status.success() {
        return Ok(true);
    }
    let mut stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    stderr.push_str(&String::from_utf8_lossy(&output.stdout));
    if stderr.len() > STDERR_TAIL {
        let mut cut = stderr.len() - STDERR_TAIL;
        while !stderr.is_char_boundary(cut) {
            cut += 1;
        }
        stderr.drain(..cut);
    }
    Err(Error::ToolFailed {
        tool: "pg_verifybackup",
        status: output.status.to_string(),
        stderr: stderr.replace(&data_dir.display().to_string(), "<restored>"),
    })
}

/// Settings of the throwaway copy, appended to `postgresql.auto.conf`
/// (read last, so they win over the source's): it must not archive into
/// the repository, wait for a synchronous standby, listen on TCP or need
/// the source's certificates and memory.
const SCRATCH_SETTINGS: &str = "
# warmspare verify --deep: a throwaway copy that is checked, then removed.
archive_mode = off
archive_cleanup_command = ''
recovery_end_command = ''
primary_conninfo = ''
primary_slot_name = ''
synchronous_standby_names = ''
hot_standby = off
listen_addresses = ''
unix_socket_permissions = 0700
ssl = off
logging_collector = off
shared_buffers = '128MB'
huge_pages = try
autovacuum = off
";

/// Settings of the source that are commented out in the copy's
/// `postgresql.conf` and `postgresql.auto.conf`: paths that would make the
/// scratch server use (or overwrite) the source's files when the copy is
/// verified on the database host (`data_directory`, `hba_file`,
/// `ident_file`, `external_pid_file`), and what the cluster crate owns
/// (`port`, `unix_socket_directories`).
const NEUTRALISED: [&str; 6] = [
    "data_directory",
    "hba_file",
    "ident_file",
    "external_pid_file",
    "port",
    "unix_socket_directories",
];

/// Prepares the restored directory for a scratch server: the source's
/// paths commented out, our settings last, trust on the Unix socket only
/// (`pg_hba.conf` replaced: `pg_verifybackup` has checked it already), and
/// a `postgresql.conf` for distributions that keep it outside the data
/// directory.
fn configure_scratch(data_dir: &Path) -> Result<()> {
    let io = |context: &'static str, path: &Path| {
        let path = path.display().to_string();
        move |source| Error::DataDir {
            context,
            path,
            source,
        }
    };
    let hba = data_dir.join("pg_hba.conf");
    std::fs::write(&hba, "local all all trust\n").map_err(io("writing", &hba))?;
    for (file, extra) in [
        ("postgresql.conf", ""),
        ("postgresql.auto.conf", SCRATCH_SETTINGS),
    ] {
        let path = data_dir.join(file);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            // Debian keeps postgresql.conf in /etc.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io("reading", &path)(e)),
        };
        let mut out = String::with_capacity(text.len() + extra.len());
        for line in text.lines() {
            if NEUTRALISED.contains(&setting_name(line).to_ascii_lowercase().as_str()) {
                out.push_str("# (warmspare verify) ");
            }
            out.push_str(line);
            out.push('\n');
        }
        out.push_str(extra);
        let mut handle = std::fs::File::create(&path).map_err(io("writing", &path))?;
        handle
            .write_all(out.as_bytes())
            .map_err(io("writing", &path))?;
    }
    Ok(())
}

/// The setting a `postgresql.conf` line sets (`""` for none): `name =
/// value` or `name value`.
fn setting_name(line: &str) -> &str {
    let line = line.trim_start();
    let end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .unwrap_or(line.len());
    &line[..end]
}

/// How to reach one database of the scratch server: its Unix socket.
fn connect_options(cluster: &Cluster, user: &str, database: &str) -> PgConnectOptions {
    PgConnectOptions::new_without_pgpass()
        .socket(cluster.socket_dir())
        .port(cluster.port())
        .username(user)
        .database(database)
        .application_name(APPLICATION_NAME)
}

async fn connect(
    cluster: &Cluster,
    user: &str,
    database: &str,
    timeout: Duration,
) -> Result<PgConnection> {
    let options = connect_options(cluster, user, database);
    match tokio::time::timeout(timeout, PgConnection::connect_with(&options)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(sql_error(database, "connecting", e)),
        Err(_) => Err(Error::Unreachable {
            target: scratch_target(database),
            message: format!(
                "no connection within {}",
                humantime::format_duration(timeout)
            ),
        }),
    }
}

fn scratch_target(database: &str) -> String {
    format!("the scratch server's database {database}")
}

fn sql_error(database: &str, context: &str, error: sqlx::Error) -> Error {
    let (message, code) = match &error {
        sqlx::Error::Database(db) => (db.message().to_owned(), db.code().map(|c| c.into_owned())),
        other => (other.to_string(), None),
    };
    Error::Sql {
        target: scratch_target(database),
        context: context.to_owned(),
        message,
        code,
    }
}

/// Waits until the server has promoted (it accepts connections only then:
/// `hot_standby = off`), checks that it is the snapshot's cluster, and
/// returns the name of its bootstrap superuser.
async fn wait_promoted(
    cluster: &Cluster,
    meta: &PhysicalMeta,
    options: &PhysicalVerifyOptions,
) -> Result<String> {
    let deadline = Instant::now() + options.recovery_timeout;
    // The bootstrap superuser is `postgres` on most installations; else
    // the role that took the backup can log in and tell its name.
    let source_user = meta
        .source
        .split_once('@')
        .map(|(user, _)| user.to_owned())
        .filter(|u| !u.is_empty() && u != warmspare_pgcluster::SUPERUSER);
    let users: Vec<&str> = std::iter::once(warmspare_pgcluster::SUPERUSER)
        .chain(source_user.as_deref())
        .collect();
    let mut conn = loop {
        let mut connected = None;
        let mut refused = 0;
        let mut last_error = None;
        for user in &users {
            match connect(cluster, user, "template1", options.connect_timeout).await {
                Ok(conn) => {
                    connected = Some(conn);
                    break;
                }
                Err(e) => {
                    // 28000: no such role (or not allowed to log in).
                    if crate::pg::sqlstate(&e) == Some("28000") {
                        refused += 1;
                    }
                    last_error = Some(e);
                }
            }
        }
        if let Some(conn) = connected {
            break conn;
        }
        if refused == users.len() {
            return Err(Error::RecoveryFailed {
                reason: format!(
                    "the server recovered, but none of the roles {} can log in to find its \
                     superuser: {}",
                    users.join(", "),
                    last_error.map(|e| e.to_string()).unwrap_or_default()
                ),
            });
        }
        if !cluster.is_running() {
            return Err(Error::RecoveryFailed {
                reason: format!(
                    "the server stopped; its log ends with:\n{}",
                    cluster.log_tail(20)
                ),
            });
        }
        if Instant::now() >= deadline {
            return Err(Error::RecoveryFailed {
                reason: format!(
                    "not promoted within {} ({}); its log ends with:\n{}",
                    humantime::format_duration(options.recovery_timeout),
                    last_error.map(|e| e.to_string()).unwrap_or_default(),
                    cluster.log_tail(20)
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let result = async {
        let (in_recovery, system_identifier, superuser): (bool, i64, String) = sqlx::query_as(
            "SELECT pg_is_in_recovery(), (SELECT system_identifier FROM pg_control_system()), \
                    (SELECT rolname::text FROM pg_roles WHERE oid = 10)",
        )
        .fetch_one(&mut conn)
        .await
        .map_err(|e| sql_error("template1", "reading the recovered server's state", e))?;
        if in_recovery {
            return Err(Error::RecoveryFailed {
                reason: "the server accepts connections but is still in recovery".into(),
            });
        }
        #[allow(clippy::cast_sign_loss)] // pg_control's uint64, shown as int8
        let found = system_identifier as u64;
        if let Some(expected) = meta.system_identifier
            && expected != found
        {
            return Err(Error::RecoveryFailed {
                reason: format!(
                    "the recovered cluster has system identifier {found}, the snapshot's \
                     source {expected}"
                ),
            });
        }
        Ok(superuser)
    }
    .await;
    let _ = conn.close().await;
    result
}

/// A row of `verify_heapam`: block, offset, message.
type HeapProblem = (i64, Option<i32>, Option<String>);

/// What [`check_data`] found sound.
struct Checked {
    databases: Vec<String>,
    tables_read: usize,
    rows: u64,
    tables_checked: Option<usize>,
    indexes_checked: Option<usize>,
}

/// Every connectable database: tables read, `amcheck` where available.
async fn check_data(
    cluster: &Cluster,
    superuser: &str,
    options: &PhysicalVerifyOptions,
) -> Result<Checked> {
    let mut conn = connect(cluster, superuser, "template1", options.connect_timeout).await?;
    let databases: std::result::Result<Vec<String>, _> = sqlx::query_scalar(
        "SELECT datname::text FROM pg_database WHERE datallowconn AND NOT datistemplate \
         ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await;
    let _ = conn.close().await;
    let databases = databases.map_err(|e| sql_error("template1", "listing databases", e))?;
    let mut checked = Checked {
        databases: databases.clone(),
        tables_read: 0,
        rows: 0,
        tables_checked: Some(0),
        indexes_checked: Some(0),
    };
    for database in &databases {
        let mut conn = connect(cluster, superuser, database, options.connect_timeout).await?;
        let result = check_database(&mut conn, database, &mut checked).await;
        let _ = conn.close().await;
        result?;
    }
    Ok(checked)
}

async fn check_database(
    conn: &mut PgConnection,
    database: &str,
    checked: &mut Checked,
) -> Result<()> {
    let sql = |context: &'static str| move |e| sql_error(database, context, e);
    // The source's settings must not cut the checks short.
    sqlx::raw_sql(
        "SET statement_timeout = 0; SET lock_timeout = 0; \
         SET idle_in_transaction_session_timeout = 0; \
         SET default_transaction_read_only = off",
    )
    .execute(&mut *conn)
    .await
    .map_err(sql("preparing the session"))?;

    // Read every user table in full: a page that cannot be read (or whose
    // checksum fails, where the source has data checksums) shows here.
    let user_tables: Vec<String> = sqlx::query_scalar(
        "SELECT format('%I.%I', n.nspname, c.relname) \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'm') AND c.relpersistence = 'p' \
           AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
           AND n.nspname NOT LIKE 'pg\\_toast%' \
         ORDER BY 1",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(sql("listing tables"))?;
    for table in &user_tables {
        let count: std::result::Result<i64, _> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                .persistent(false)
                .fetch_one(&mut *conn)
                .await;
        match count {
            Ok(n) => checked.rows += u64::try_from(n).unwrap_or(0),
            Err(e) => {
                return Err(Error::HeapCorrupt {
                    table: format!("{table} in database {database}"),
                    message: format!("reading it failed: {}", sql_error(database, "count", e)),
                });
            }
        }
        checked.tables_read += 1;
    }

    // amcheck, created in the copy (it is the copy's to change).
    let created = sqlx::query("CREATE EXTENSION IF NOT EXISTS amcheck")
        .execute(&mut *conn)
        .await;
    let schema: Option<String> = match created {
        Ok(_) => sqlx::query_scalar(
            "SELECT n.nspname::text FROM pg_extension e \
             JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'amcheck'",
        )
        .fetch_optional(&mut *conn)
        .await
        .map_err(sql("finding amcheck"))?,
        Err(_) => None,
    };
    let Some(schema) = schema else {
        checked.tables_checked = None;
        checked.indexes_checked = None;
        return Ok(());
    };
    let schema = quote_ident(&schema);
    let has_heapam: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_proc p JOIN pg_extension e ON e.extnamespace = p.pronamespace \
         WHERE e.extname = 'amcheck' AND p.proname = 'verify_heapam')",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(sql("looking for verify_heapam"))?;

    if has_heapam {
        let tables: Vec<(i64, String)> = sqlx::query_as(
            "SELECT c.oid::int8, format('%I.%I', n.nspname, c.relname) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'm') AND c.relpersistence = 'p' ORDER BY 2",
        )
        .fetch_all(&mut *conn)
        .await
        .map_err(sql("listing tables"))?;
        let check = format!(
            "SELECT blkno, offnum, msg FROM {schema}.verify_heapam($1::int8::oid::regclass, \
             on_error_stop => false, check_toast => true) LIMIT 5"
        );
        for (oid, name) in &tables {
            let found: std::result::Result<Vec<HeapProblem>, _> =
                sqlx::query_as(sqlx::AssertSqlSafe(check.clone()))
                    .bind(oid)
                    .fetch_all(&mut *conn)
                    .await;
            let message = match found {
                Ok(rows) if rows.is_empty() => None,
                Ok(rows) => Some(
                    rows.iter()
                        .map(|(block, offset, msg)| {
                            format!(
                                "block {block}{}: {}",
                                offset.map(|o| format!(" offset {o}")).unwrap_or_default(),
                                msg.as_deref().unwrap_or("?")
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("; "),
                ),
                Err(e) => Some(sql_error(database, "verify_heapam", e).to_string()),
            };
            if let Some(message) = message {
                return Err(Error::HeapCorrupt {
                    table: format!("{name} in database {database}"),
                    message,
                });
            }
            if let Some(n) = &mut checked.tables_checked {
                *n += 1;
            }
        }
    } else {
        checked.tables_checked = None;
    }

    let indexes: Vec<(i64, String)> = sqlx::query_as(
        "SELECT c.oid::int8, format('%I.%I', n.nspname, c.relname) \
         FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
         JOIN pg_am am ON am.oid = c.relam JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE am.amname = 'btree' AND i.indisvalid AND i.indisready \
           AND c.relpersistence = 'p' ORDER BY 2",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(sql("listing indexes"))?;
    let check = format!("SELECT {schema}.bt_index_check($1::int8::oid::regclass, true)");
    for (oid, name) in &indexes {
        let result = sqlx::query(sqlx::AssertSqlSafe(check.clone()))
            .bind(oid)
            .execute(&mut *conn)
            .await;
        if let Err(e) = result {
            let message = match sql_error(database, "amcheck", e) {
                Error::Sql { message, .. } => message,
                other => other.to_string(),
            };
            return Err(Error::IndexCorrupt {
                index: format!("{name} in database {database}"),
                message,
            });
        }
        if let Some(n) = &mut checked.indexes_checked {
            *n += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Callers (the agent's jobs) spawn it.
    #[allow(dead_code, clippy::let_underscore_future)]
    fn the_future_is_send(repo: &Repository, id: &SnapshotId, options: &PhysicalVerifyOptions) {
        fn send<T: Send>(_: T) {}
        send(verify_deep_physical(repo, id, options, None));
    }

    #[test]
    fn scratch_settings_override_the_source() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("postgresql.auto.conf"),
            "# Do not edit\nport = '5433'\nwork_mem = '8MB'\nunix_socket_directories = '/x'\n",
        )
        .unwrap();
        configure_scratch(dir.path()).unwrap();
        let auto = std::fs::read_to_string(dir.path().join("postgresql.auto.conf")).unwrap();
        assert!(
            auto.contains("# (warmspare verify) port = '5433'"),
            "{auto}"
        );
        assert!(
            auto.contains("# (warmspare verify) unix_socket_directories"),
            "{auto}"
        );
        assert!(auto.contains("\nwork_mem = '8MB'\n"), "{auto}");
        assert!(auto.ends_with(SCRATCH_SETTINGS), "{auto}");
        assert!(auto.contains("archive_mode = off"));
        // Debian keeps postgresql.conf in /etc: an empty one is created.
        assert_eq!(
            std::fs::read(dir.path().join("postgresql.conf")).unwrap(),
            b""
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("pg_hba.conf")).unwrap(),
            "local all all trust\n"
        );

        // The source's paths never reach the scratch server.
        std::fs::write(
            dir.path().join("postgresql.conf"),
            "Data_Directory = '/var/lib/postgresql/15/main'\n  hba_file '/etc/pg_hba.conf'\n\
             external_pid_file='/run/pg.pid' # x\nshared_buffers = 1GB\n",
        )
        .unwrap();
        configure_scratch(dir.path()).unwrap();
        let conf = std::fs::read_to_string(dir.path().join("postgresql.conf")).unwrap();
        let active: Vec<&str> = conf.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(active, ["shared_buffers = 1GB"], "{conf}");
    }
}
