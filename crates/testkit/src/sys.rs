//! Operating-system plumbing shared by the servers: who we are, where temp
//! directories go, free ports, finding programs and cleaning up after a
//! crashed test process.

use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// The unprivileged account that PostgreSQL runs as when the tests run as
/// root (`initdb` and `postgres` refuse to run as root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServiceUser {
    pub(crate) name: String,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

/// The current process's real user id, read from `/proc/self/status`.
pub(crate) fn current_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

pub(crate) fn is_root() -> bool {
    current_uid() == Some(0)
}

/// Looks a user up in `/etc/passwd`.
pub(crate) fn lookup_user(name: &str) -> Option<ServiceUser> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let user = fields.next()?;
        if user != name {
            return None;
        }
        let _password = fields.next()?;
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some(ServiceUser {
            name: user.to_owned(),
            uid,
            gid,
        })
    })
}

/// The user that PostgreSQL processes run as: `None` means "as ourselves".
pub(crate) fn postgres_service_user() -> Result<Option<ServiceUser>> {
    if !is_root() {
        return Ok(None);
    }
    lookup_user("postgres").map(Some).ok_or_else(|| {
        Error::Environment(
            "running as root, but there is no `postgres` user to run initdb and postgres as \
             (it comes with Debian's postgresql-common package: `apt-get install postgresql`)"
                .into(),
        )
    })
}

/// Prefixes `program` with `setpriv` (or `runuser`) so that it runs as `user`.
pub(crate) fn command_as(user: Option<&ServiceUser>, program: &Path) -> Command {
    match user {
        None => Command::new(program),
        Some(user) => {
            if let Some(setpriv) = which("setpriv") {
                let mut cmd = Command::new(setpriv);
                cmd.arg(format!("--reuid={}", user.uid))
                    .arg(format!("--regid={}", user.gid))
                    .arg("--init-groups")
                    .arg("--")
                    .arg(program);
                cmd
            } else {
                let mut cmd = Command::new("runuser");
                cmd.arg("-u").arg(&user.name).arg("--").arg(program);
                cmd
            }
        }
    }
}

/// The argument vector that [`command_as`] puts in front of a program.
pub(crate) fn run_as_prefix(user: Option<&ServiceUser>) -> Vec<String> {
    match user {
        None => Vec::new(),
        Some(user) => match which("setpriv") {
            Some(setpriv) => vec![
                setpriv.display().to_string(),
                format!("--reuid={}", user.uid),
                format!("--regid={}", user.gid),
                "--init-groups".into(),
                "--".into(),
            ],
            None => vec![
                "runuser".into(),
                "-u".into(),
                user.name.clone(),
                "--".into(),
            ],
        },
    }
}

/// Finds an executable on `PATH`.
pub(crate) fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

pub(crate) fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// `$TMPDIR/warmspare-testkit-<uid>`, mode 0755 so that the `postgres` user
/// can reach the per-cluster directories inside it.
pub(crate) fn base_dir() -> Result<PathBuf> {
    let uid = current_uid().unwrap_or(u32::MAX);
    let dir = std::env::temp_dir().join(format!("warmspare-testkit-{uid}"));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io_path("creating", &dir, e))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| Error::io_path("setting permissions on", &dir, e))?;
    Ok(dir)
}

/// A fresh directory under [`base_dir`], owned by `user` when one is given.
pub(crate) fn temp_dir(prefix: &str, user: Option<&ServiceUser>) -> Result<tempfile::TempDir> {
    let base = base_dir()?;
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&base)
        .map_err(|e| Error::io_path("creating a temporary directory in", &base, e))?;
    if let Some(user) = user {
        chown(dir.path(), user)?;
    }
    Ok(dir)
}

pub(crate) fn chown(path: &Path, user: &ServiceUser) -> Result<()> {
    std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
        .map_err(|e| Error::io_path("changing the owner of", path, e))
}

/// Changes the owner of everything under `path` (no symlinks followed).
pub(crate) fn chown_recursive(path: &Path, user: &ServiceUser) -> Result<()> {
    std::os::unix::fs::lchown(path, Some(user.uid), Some(user.gid))
        .map_err(|e| Error::io_path("changing the owner of", path, e))?;
    let meta =
        std::fs::symlink_metadata(path).map_err(|e| Error::io_path("inspecting", path, e))?;
    if meta.is_dir() {
        let entries = std::fs::read_dir(path).map_err(|e| Error::io_path("listing", path, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io_path("listing", path, e))?;
            chown_recursive(&entry.path(), user)?;
        }
    }
    Ok(())
}

/// Ports this process has handed out recently; never handed out twice, so
/// parallel tests in one process do not race each other. Other processes
/// can still take a port between our probe and the server's bind: callers
/// retry on "address in use".
fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashSet::new()))
}

/// A loopback TCP port that is free right now.
pub(crate) fn free_port() -> Result<u16> {
    for _ in 0..64 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| Error::io("binding a probe socket on 127.0.0.1", e))?;
        let port = listener
            .local_addr()
            .map_err(|e| Error::io("reading the probe socket's address", e))?
            .port();
        drop(listener);
        let mut ports = handed_out().lock().unwrap_or_else(|p| p.into_inner());
        if ports.insert(port) {
            return Ok(port);
        }
    }
    Err(Error::Environment(
        "could not find a free loopback port".into(),
    ))
}

/// The last `lines` lines of a (log) file, or a note that it is unreadable.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    const MAX: u64 = 64 * 1024;
    let Ok(mut file) = std::fs::File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len > MAX {
        let _ = file.seek(SeekFrom::Start(len - MAX));
    }
    let mut buf = Vec::new();
    let _ = file.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    let mut out = all[start..].join("\n");
    if out.trim().is_empty() {
        out = format!("(log {} is empty)", path.display());
    }
    out
}

/// Whether a process is gone or a zombie (the container's init may not reap
/// orphans promptly, and a zombie cannot hold ports or files).
pub(crate) fn process_is_dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            // The state follows the parenthesised command name.
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next());
            matches!(state, Some("Z") | Some("X") | None)
        }
    }
}

/// Sends `signal` (a name such as `KILL` or `TERM`) to `pid` with kill(1).
pub(crate) fn send_signal(pid: u32, signal: &str) -> Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| Error::io("running kill", e))?;
    if status.success() || process_is_dead(pid) {
        Ok(())
    } else {
        Err(Error::Command {
            what: format!("kill -{signal} {pid}"),
            detail: status.to_string(),
        })
    }
}

/// Polls `process_is_dead` until it holds or `timeout` passes.
pub(crate) async fn wait_dead(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if process_is_dead(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    process_is_dead(pid)
}

/// A small `sh` process that runs a cleanup script once its stdin closes.
///
/// The write end of the pipe lives only in this process (Rust opens pipes
/// close-on-exec), so the kernel closes it when the test process exits for
/// any reason: a panic, `abort`, a nextest timeout or SIGKILL. Servers are
/// therefore never leaked, even from `static`s that are never dropped.
#[derive(Debug)]
pub(crate) struct Watchdog {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Watchdog {
    /// Runs `sh -c SCRIPT sh ARGS...` with stdin piped and output to `log`.
    pub(crate) fn spawn(script: &str, args: &[String], log: Option<&Path>) -> Result<Self> {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script).arg("sh").args(args);
        cmd.stdin(Stdio::piped());
        match log {
            Some(log) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
                    .map_err(|e| Error::io_path("opening", log, e))?;
                let file2 = file
                    .try_clone()
                    .map_err(|e| Error::io_path("opening", log, e))?;
                cmd.stdout(Stdio::from(file)).stderr(Stdio::from(file2));
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::io("spawning sh for a watchdog", e))?;
        let stdin = child.stdin.take();
        Ok(Self { child, stdin })
    }

    /// Whether the script has finished on its own.
    pub(crate) fn has_exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Closes the pipe, which starts the cleanup, and waits for it to finish
    /// (killing the script after `timeout`).
    pub(crate) fn finish(&mut self, timeout: Duration) {
        drop(self.stdin.take());
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.finish(Duration::from_secs(30));
    }
}

/// Script for a long-running server: runs `"$@"` in the background and
/// stops it (SIGTERM, then SIGKILL) when stdin closes, then removes the
/// directory given as the first argument (if not empty); exits when the
/// server exits. Arguments: the directory, then the server's command line.
pub(crate) const SERVER_WATCHDOG: &str = r#"
cleanup=$1
shift
exec 3<&0
"$@" </dev/null 3<&- &
pid=$!
(
  read -r _ <&3 || true
  if kill -TERM "$pid" 2>/dev/null; then
    i=0
    while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  if [ -n "$cleanup" ]; then rm -rf "$cleanup"; fi
) &
exec 3<&-
wait "$pid"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct() {
        let a = free_port().expect("port");
        let b = free_port().expect("port");
        assert_ne!(a, b);
    }

    #[test]
    fn lookup_root_user() {
        let root = lookup_user("root").expect("root in /etc/passwd");
        assert_eq!(root.uid, 0);
        assert!(lookup_user("no-such-user-warmspare").is_none());
    }

    #[test]
    fn own_process_is_alive() {
        assert!(!process_is_dead(std::process::id()));
        assert!(process_is_dead(u32::MAX));
    }

    #[test]
    fn tail_reports_last_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        std::fs::write(&path, "a\nb\nc\n").expect("write");
        assert_eq!(tail(&path, 2), "b\nc");
        assert!(tail(&dir.path().join("missing"), 2).contains("no log"));
    }
}
