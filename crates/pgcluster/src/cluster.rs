//! [`Cluster`]: `initdb` into a temporary directory, `pg_ctl start` on a
//! free loopback port, stop and remove on drop.

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::sys::{self, ServiceUser, Watchdog};

/// The bootstrap superuser of every cluster.
pub const SUPERUSER: &str = "postgres";
/// The file (inside the data directory) with the settings this crate owns.
const OWN_CONF: &str = "warmspare-pgcluster.conf";
/// How many ports to try when another process grabs ours first.
const START_ATTEMPTS: usize = 10;
/// How long `pg_ctl start` waits for the server by default.
const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(60);

/// A PostgreSQL cluster in a temporary directory, listening on
/// `127.0.0.1:<free port>` and on a Unix socket inside that directory.
///
/// Authentication is `trust` for every local and loopback connection, unless
/// a password was set with [`ClusterBuilder::password`]: then TCP
/// connections need it (SCRAM-SHA-256) while the Unix socket stays `trust`.
/// The superuser is `postgres`. `fsync` is off: these clusters are scratch
/// space, not durable storage.
///
/// Dropping the cluster stops it (`pg_ctl stop -m immediate`) and removes
/// the directory; a process that dies without dropping it (panic with
/// `abort`, SIGKILL) is cleaned up by a [`Watchdog`] too. [`Cluster::detach`]
/// keeps both.
///
/// When the process runs as root, the server runs as the `postgres` system
/// user and the directory belongs to that user.
#[derive(Debug)]
pub struct Cluster {
    root: PathBuf,
    data_dir: PathBuf,
    bin_dir: PathBuf,
    socket_dir: PathBuf,
    log_file: PathBuf,
    port: u16,
    password: Option<String>,
    user: Option<ServiceUser>,
    watchdog: Option<Watchdog>,
    start_timeout: Duration,
}

/// Options for a [`Cluster`]; start with [`Cluster::builder`].
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    bin_dir: PathBuf,
    parent_dir: PathBuf,
    prefix: String,
    password: Option<String>,
    settings: Vec<(String, String)>,
    from_data_dir: Option<PathBuf>,
    start_timeout: Duration,
}

impl ClusterBuilder {
    /// A cluster run by the binaries in `bin_dir` (see
    /// [`crate::find_bin_dir`]), in a new directory under `parent_dir`.
    /// When running as root, `parent_dir` must be traversable by the
    /// `postgres` user ([`shared_parent_dir`] prepares one).
    pub fn new(bin_dir: impl Into<PathBuf>, parent_dir: impl Into<PathBuf>) -> Self {
        Self {
            bin_dir: bin_dir.into(),
            parent_dir: parent_dir.into(),
            prefix: "pg-".into(),
            password: None,
            settings: Vec::new(),
            from_data_dir: None,
            start_timeout: DEFAULT_START_TIMEOUT,
        }
    }

    /// The name prefix of the cluster's directory (`pg-` by default).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Requires this password (SCRAM-SHA-256) for TCP connections of the
    /// superuser; [`Cluster::url`] then contains it.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Adds a `postgresql.conf` setting such as `("wal_level", "replica")`,
    /// `("archive_mode", "on")` or `("archive_command", "cp %p /x/%f")`.
    /// The value is quoted for you. Do not set `port`, `listen_addresses`
    /// or `unix_socket_directories`: the cluster owns them.
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }

    /// Starts a server on an existing data directory instead of running
    /// `initdb`, for example one written by `pg_basebackup` or by a restore.
    /// The directory is moved into the cluster's directory (copied when it
    /// is on another file system), handed to the `postgres` user when
    /// running as root, and removed with the cluster.
    pub fn from_data_dir(mut self, data_dir: impl Into<PathBuf>) -> Self {
        self.from_data_dir = Some(data_dir.into());
        self
    }

    /// How long `pg_ctl start` waits for the server to accept connections
    /// (60 s by default). A server started on a restored data directory
    /// replays WAL first, which can take longer.
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// Creates the cluster and starts the server.
    pub async fn start(self) -> Result<Cluster> {
        let user = sys::postgres_service_user()?;
        let root = sys::temp_dir_in(&self.parent_dir, &self.prefix, user.as_ref())?.keep();
        let data_dir = root.join("data");
        let bin_dir = self.bin_dir;
        // From here on, dropping `cluster` (also on error) cleans up.
        let watchdog = cleanup_watchdog(&root, &data_dir, &bin_dir, user.as_ref())?;
        let mut cluster = Cluster {
            socket_dir: root.join("sock"),
            log_file: root.join("server.log"),
            root,
            data_dir,
            bin_dir,
            port: 0,
            password: self.password,
            user,
            watchdog: Some(watchdog),
            start_timeout: self.start_timeout,
        };
        cluster.create_dir(&cluster.socket_dir.clone(), 0o755)?;
        match self.from_data_dir {
            Some(source) => cluster.adopt_data_dir(&source)?,
            None => cluster.initdb().await?,
        }
        cluster.write_settings(&self.settings)?;
        cluster.start_on_free_port().await?;
        Ok(cluster)
    }
}

impl Cluster {
    /// Options for a cluster; see [`ClusterBuilder::new`].
    pub fn builder(bin_dir: impl Into<PathBuf>, parent_dir: impl Into<PathBuf>) -> ClusterBuilder {
        ClusterBuilder::new(bin_dir, parent_dir)
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres` (with the password, if
    /// one was set).
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// The URL of database `db` on this cluster.
    pub fn url_for(&self, db: &str) -> String {
        self.url_with_password(db, self.password.as_deref())
    }

    /// The URL of database `db` with an explicit password (or none).
    pub fn url_with_password(&self, db: &str, password: Option<&str>) -> String {
        let mut url = format!("postgres://{SUPERUSER}");
        if let Some(pw) = password {
            url.push(':');
            url.push_str(&percent_encode(pw));
        }
        let _ = write!(url, "@127.0.0.1:{}/{}", self.port, percent_encode(db));
        url
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's directory: `data/`, `sock/` and `server.log`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The data directory (`PGDATA`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The directory of the PostgreSQL binaries this cluster runs.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The directory holding the Unix socket (`host=` for libpq).
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The server log.
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// The last `lines` lines of the server log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        sys::log_tail(&self.log_file, lines)
    }

    /// The superuser's name (`postgres`).
    pub fn superuser(&self) -> &str {
        SUPERUSER
    }

    /// The superuser's password, if one was set.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The name of the system user the server runs as, when it is not the
    /// current user (running as root: `postgres`).
    pub fn run_as(&self) -> Option<&str> {
        self.user.as_ref().map(|u| u.name.as_str())
    }

    /// The PID of the running postmaster, from `postmaster.pid`.
    pub fn postmaster_pid(&self) -> Option<u32> {
        let pidfile = std::fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        pidfile.lines().next()?.trim().parse().ok()
    }

    /// Whether the postmaster is running.
    pub fn is_running(&self) -> bool {
        self.postmaster_pid()
            .is_some_and(|pid| !sys::process_is_dead(pid))
    }

    /// Runs SQL with `psql` as the superuser in database `postgres` and
    /// returns its unaligned, tuples-only output (trimmed).
    pub async fn psql(&self, sql: &str) -> Result<String> {
        self.psql_in("postgres", sql).await
    }

    /// Like [`Cluster::psql`], in database `db`.
    pub async fn psql_in(&self, db: &str, sql: &str) -> Result<String> {
        let mut cmd = Command::new(self.bin_dir.join("psql"));
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(self.url_for(db))
            .arg("-c")
            .arg(sql)
            // `sql` and the output are Rust strings: UTF-8, whatever the
            // database's encoding (psql's own default follows the locale).
            .env("PGCLIENTENCODING", "UTF8")
            .env("PGCONNECT_TIMEOUT", "10");
        let output = run(cmd, "psql").await?;
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// Creates database `name`.
    pub async fn create_database(&self, name: &str) -> Result<()> {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        self.psql(&format!("CREATE DATABASE {quoted}")).await?;
        Ok(())
    }

    /// Stops the server (`pg_ctl stop -m fast`) and removes the cluster.
    pub async fn stop(self) -> Result<()> {
        if self.is_running() {
            self.pg_ctl_stop("fast").await?;
        }
        Ok(())
    }

    /// Kills the postmaster with SIGKILL, as a crash would, and waits until
    /// it is gone. The data directory stays; [`Cluster::restart`] brings the
    /// server back (running crash recovery).
    pub async fn kill(&self) -> Result<()> {
        let Some(pid) = self.postmaster_pid() else {
            return Err(Error::Environment(format!(
                "no postmaster.pid in {}: the server is not running",
                self.data_dir.display()
            )));
        };
        sys::send_signal(pid, "KILL")?;
        if !sys::wait_dead(pid, Duration::from_secs(10)).await {
            return Err(Error::Environment(format!(
                "postmaster {pid} still alive 10s after SIGKILL"
            )));
        }
        // A killed postmaster can linger as a zombie when the container's
        // init does not reap orphans, and PostgreSQL refuses to start while
        // a lock file names a PID that still exists. We know it is dead.
        for lock in [
            self.data_dir.join("postmaster.pid"),
            self.socket_dir.join(format!(".s.PGSQL.{}.lock", self.port)),
        ] {
            let _ = std::fs::remove_file(lock);
        }
        Ok(())
    }

    /// Stops the server if it runs (`-m fast`) and starts it again on the
    /// same port.
    pub async fn restart(&self) -> Result<()> {
        if self.is_running() {
            self.pg_ctl_stop("fast").await?;
        }
        // The port was ours a moment ago; after a crash the old shared
        // memory may still be attached for a moment. Retry briefly.
        let mut last = None;
        for attempt in 0..20 {
            match self.pg_ctl_start().await {
                Ok(()) => return Ok(()),
                Err(err) => last = Some(err),
            }
            tokio::time::sleep(Duration::from_millis(100 * (attempt + 1).min(5))).await;
        }
        Err(last.unwrap_or_else(|| Error::Environment("restart failed".into())))
    }

    /// Leaves the server running and its directory in place when this
    /// handle goes away (for `--keep`-style inspection); returns the
    /// cluster's directory. Stop it later with `pg_ctl stop -D <root>/data`
    /// (as the server's user).
    pub fn detach(mut self) -> PathBuf {
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.disarm();
        }
        self.root.clone()
    }

    async fn pg_ctl_stop(&self, mode: &str) -> Result<()> {
        let mut cmd = self.pg_command("pg_ctl");
        cmd.arg("stop")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", mode, "-w", "-t", "60", "-s"]);
        run(cmd, "pg_ctl stop").await.map(drop)
    }

    /// One `pg_ctl start`; the error carries the log written meanwhile.
    async fn pg_ctl_start(&self) -> Result<()> {
        let log_start = std::fs::metadata(&self.log_file)
            .map(|m| m.len())
            .unwrap_or(0);
        let mut cmd = self.pg_command("pg_ctl");
        cmd.arg("start")
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.log_file)
            .args(["-w", "-t"])
            .arg(self.start_timeout.as_secs().max(1).to_string())
            .arg("-s");
        match run(cmd, "pg_ctl start").await {
            Ok(_) => Ok(()),
            Err(Error::Command { what, detail }) => Err(Error::Command {
                what,
                detail: format!(
                    "{detail}\nserver log {}:\n{}",
                    self.log_file.display(),
                    log_since(&self.log_file, log_start)
                ),
            }),
            Err(other) => Err(other),
        }
    }

    async fn start_on_free_port(&mut self) -> Result<()> {
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            self.port = sys::free_port()?;
            self.write_port_settings()?;
            match self.pg_ctl_start().await {
                Ok(()) => return Ok(()),
                Err(err) if is_port_conflict(&err) => {
                    tracing::debug!(port = self.port, "port taken, retrying: {err}");
                    last = Some(err);
                }
                Err(err) => return Err(err),
            }
        }
        Err(last.unwrap_or_else(|| Error::Environment("no free port".into())))
    }

    async fn initdb(&self) -> Result<()> {
        let mut cmd = self.pg_command("initdb");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args(["-U", SUPERUSER, "-E", "UTF8", "--locale=C"])
            .args(["--no-sync", "--no-instructions"]);
        let pwfile = self.root.join("pwfile");
        match &self.password {
            None => {
                cmd.args(["-A", "trust"]);
            }
            Some(password) => {
                std::fs::write(&pwfile, format!("{password}\n"))
                    .map_err(|e| Error::io_path("writing", &pwfile, e))?;
                self.hand_over(&pwfile)?;
                cmd.args(["--auth-local=trust", "--auth-host=scram-sha-256"])
                    .arg(format!("--pwfile={}", pwfile.display()));
            }
        }
        let result = run(cmd, "initdb").await;
        let _ = std::fs::remove_file(&pwfile);
        result.map(drop)
    }

    fn adopt_data_dir(&self, source: &Path) -> Result<()> {
        if std::fs::rename(source, &self.data_dir).is_err() {
            let status = Command::new("cp")
                .arg("-a")
                .arg(source)
                .arg(&self.data_dir)
                .status()
                .map_err(|e| Error::io("running cp -a", e))?;
            if !status.success() {
                return Err(Error::Command {
                    what: format!(
                        "copying {} to {}",
                        source.display(),
                        self.data_dir.display()
                    ),
                    detail: status.to_string(),
                });
            }
        }
        std::fs::set_permissions(&self.data_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io_path("setting permissions on", &self.data_dir, e))?;
        // A stale lock file from the source would stop the server starting.
        let _ = std::fs::remove_file(self.data_dir.join("postmaster.pid"));
        if let Some(user) = &self.user {
            sys::chown_recursive(&self.data_dir, user)?;
        }
        Ok(())
    }

    /// Appends the include of our settings file, then the caller's settings
    /// (which win over our defaults).
    fn write_settings(&self, settings: &[(String, String)]) -> Result<()> {
        let conf = self.data_dir.join("postgresql.conf");
        let mut text =
            format!("\n# added by warmspare-pgcluster\ninclude_if_exists '{OWN_CONF}'\n");
        for (name, value) in settings {
            let _ = writeln!(text, "{name} = {}", quote(value));
        }
        append(&conf, &text)
    }

    fn write_port_settings(&self) -> Result<()> {
        let path = self.data_dir.join(OWN_CONF);
        let text = format!(
            "# owned by warmspare-pgcluster; rewritten at every start\n\
             listen_addresses = '127.0.0.1'\n\
             port = {}\n\
             unix_socket_directories = {}\n\
             fsync = off\n\
             log_line_prefix = '%m [%p] '\n",
            self.port,
            quote(&self.socket_dir.display().to_string()),
        );
        std::fs::write(&path, text).map_err(|e| Error::io_path("writing", &path, e))?;
        self.hand_over(&path)
    }

    fn create_dir(&self, path: &Path, mode: u32) -> Result<()> {
        std::fs::create_dir_all(path).map_err(|e| Error::io_path("creating", path, e))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io_path("setting permissions on", path, e))?;
        self.hand_over(path)
    }

    /// Gives a file we wrote to the server's user.
    fn hand_over(&self, path: &Path) -> Result<()> {
        match &self.user {
            Some(user) => sys::chown(path, user),
            None => Ok(()),
        }
    }

    fn pg_command(&self, program: &str) -> Command {
        let mut cmd = sys::command_as(self.user.as_ref(), &self.bin_dir.join(program));
        // The caller's working directory may be unreadable for `postgres`.
        cmd.current_dir(&self.root);
        for var in ["PGDATA", "PGPORT", "PGHOST", "PGUSER", "PGDATABASE"] {
            cmd.env_remove(var);
        }
        cmd
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The watchdog runs `pg_ctl stop -m immediate` and removes the
        // directory; wait for it so that the directory is gone on return.
        if let Some(watchdog) = &mut self.watchdog {
            watchdog.finish(Duration::from_secs(60));
        }
    }
}

/// Creates `path` (and its parents) with mode 0755, so that the `postgres`
/// user can reach cluster and scratch directories inside it when running as
/// root.
pub fn shared_parent_dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|e| Error::io_path("creating", path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| Error::io_path("setting permissions on", path, e))
}

/// A temporary directory under `parent` (see [`shared_parent_dir`]) that
/// the PostgreSQL server's user can write to: for WAL archives, base-backup
/// targets and `file://` repositories that `archive_command` or
/// `restore_command` touch. Removed on drop.
pub fn scratch_dir(parent: &Path, prefix: &str) -> Result<tempfile::TempDir> {
    let user = sys::postgres_service_user()?;
    let dir = sys::temp_dir_in(parent, prefix, user.as_ref())?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .map_err(|e| Error::io_path("setting permissions on", dir.path(), e))?;
    Ok(dir)
}

/// Starts `sh`, which on our exit (or drop) stops the server and removes
/// `root`. Arguments: root, then the stop command line.
fn cleanup_watchdog(
    root: &Path,
    data_dir: &Path,
    bin_dir: &Path,
    user: Option<&ServiceUser>,
) -> Result<Watchdog> {
    const SCRIPT: &str = r#"
root=$1
shift
read -r _ || true
if [ -f "$root/data/postmaster.pid" ]; then "$@" >/dev/null 2>&1 || true; fi
rm -rf "$root"
"#;
    let mut args = vec![root.display().to_string()];
    args.extend(sys::run_as_prefix(user));
    args.extend([
        bin_dir.join("pg_ctl").display().to_string(),
        "stop".into(),
        "-D".into(),
        data_dir.display().to_string(),
        "-m".into(),
        "immediate".into(),
        "-w".into(),
        "-t".into(),
        "30".into(),
    ]);
    Watchdog::spawn(SCRIPT, &args, None)
}

async fn run(cmd: Command, what: &str) -> Result<Output> {
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
    let output = cmd
        .output()
        .await
        .map_err(|e| Error::io(format!("running {what}"), e))?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(Error::Command {
            what: what.to_owned(),
            detail: format!(
                "{}: {}{}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim(),
                String::from_utf8_lossy(&output.stdout).trim()
            ),
        })
    }
}

fn is_port_conflict(err: &Error) -> bool {
    let Error::Command { detail, .. } = err else {
        return false;
    };
    [
        "could not bind",
        "Address already in use",
        "could not create any TCP/IP sockets",
        "could not create lock file",
    ]
    .iter()
    .any(|needle| detail.contains(needle))
}

fn log_since(path: &Path, offset: u64) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let start = usize::try_from(offset).unwrap_or(0).min(text.len());
    let new = String::from_utf8_lossy(&text[start..]).into_owned();
    let lines: Vec<&str> = new.lines().collect();
    let keep = lines.len().saturating_sub(40);
    let tail = lines[keep..].join("\n");
    if tail.trim().is_empty() {
        sys::log_tail(path, 40)
    } else {
        tail
    }
}

fn append(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| Error::io_path("opening", path, e))?;
    file.write_all(text.as_bytes())
        .map_err(|e| Error::io_path("writing", path, e))
}

/// Quotes a `postgresql.conf` value.
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote("cp %p '/x y'"), "'cp %p ''/x y'''");
        assert_eq!(percent_encode("p@ss:w/rd"), "p%40ss%3Aw%2Frd");
    }

    #[test]
    fn port_conflicts_are_recognised() {
        let err = Error::Command {
            what: "pg_ctl start".into(),
            detail: "LOG:  could not bind IPv4 address \"127.0.0.1\": Address already in use"
                .into(),
        };
        assert!(is_port_conflict(&err));
        assert!(!is_port_conflict(&Error::Environment("x".into())));
    }
}
