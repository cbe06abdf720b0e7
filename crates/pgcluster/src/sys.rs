//! Operating-system plumbing: who we are, directories the server's user can
//! use, free ports, signals, and the watchdog that cleans up after a process
//! that died.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// The unprivileged account that PostgreSQL runs as when we run as root
/// (`initdb` and `postgres` refuse to run as root).
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
    if current_uid() != Some(0) {
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

/// Whether `setpriv` can be run (util-linux); otherwise `runuser` is used.
fn has_setpriv() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        Command::new("setpriv")
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// The argument vector that runs a program as `user` (empty for `None`):
/// `setpriv --reuid ... --` or `runuser -u NAME --`.
pub(crate) fn run_as_prefix(user: Option<&ServiceUser>) -> Vec<String> {
    match user {
        None => Vec::new(),
        Some(user) if has_setpriv() => vec![
            "setpriv".into(),
            format!("--reuid={}", user.uid),
            format!("--regid={}", user.gid),
            "--init-groups".into(),
            "--".into(),
        ],
        Some(user) => vec![
            "runuser".into(),
            "-u".into(),
            user.name.clone(),
            "--".into(),
        ],
    }
}

/// A command that runs `program` as `user` (or as ourselves for `None`).
pub(crate) fn command_as(user: Option<&ServiceUser>, program: &Path) -> Command {
    let prefix = run_as_prefix(user);
    match prefix.split_first() {
        None => Command::new(program),
        Some((first, rest)) => {
            let mut cmd = Command::new(first);
            cmd.args(rest).arg(program);
            cmd
        }
    }
}

/// Finds an executable in a `PATH`-style list of directories.
pub(crate) fn which_in(search_path: &OsStr, program: &str) -> Option<PathBuf> {
    std::env::split_paths(search_path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

/// Whether `path` is a regular file with an execute bit.
pub(crate) fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// A fresh directory under `parent`, owned by `user` when one is given.
pub(crate) fn temp_dir_in(
    parent: &Path,
    prefix: &str,
    user: Option<&ServiceUser>,
) -> Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(parent)
        .map_err(|e| Error::io_path("creating a temporary directory in", parent, e))?;
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
/// parallel users in one process do not race each other. Other processes
/// can still take a port between our probe and the server's bind: callers
/// retry on "address in use".
fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashSet::new()))
}

/// A loopback TCP port that is free right now and that this process has
/// not handed out before. Another process may still take it before the
/// server binds it, so callers retry on "address in use" (as
/// [`crate::Cluster`] does).
pub fn free_port() -> Result<u16> {
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

/// The last `lines` lines of a (log) file, or a note that it is unreadable
/// or empty; reads at most the last 64 KiB.
pub fn log_tail(path: &Path, lines: usize) -> String {
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

/// Whether a process is gone or a zombie (a container's init may not reap
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

/// Polls [`process_is_dead`] until it holds or `timeout` passes.
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
/// close-on-exec), so the kernel closes it when this process exits for any
/// reason: a panic, `abort`, a timeout or SIGKILL. Whatever the script
/// guards (a server, a directory) is therefore never leaked, even from
/// `static`s that are never dropped.
#[derive(Debug)]
pub struct Watchdog {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Watchdog {
    /// Runs `sh -c SCRIPT sh ARGS...` with stdin piped and stdout and stderr
    /// appended to `log` (discarded for `None`). The script should start
    /// with something like `read -r _ || true`, which returns when the pipe
    /// closes.
    pub fn spawn(script: &str, args: &[String], log: Option<&Path>) -> Result<Self> {
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
    pub fn has_exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Closes the pipe, which starts the cleanup, and waits for it to finish
    /// (killing the script after `timeout`).
    pub fn finish(&mut self, timeout: Duration) {
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

    /// Kills the script before it runs its cleanup: whatever it guarded is
    /// left in place (and, for a script that started a server in the
    /// background, keeps running).
    pub fn disarm(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        drop(self.stdin.take());
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.finish(Duration::from_secs(30));
    }
}

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
        assert_eq!(log_tail(&path, 2), "b\nc");
        assert!(log_tail(&dir.path().join("missing"), 2).contains("no log"));
    }

    #[test]
    fn watchdog_runs_its_script_on_finish_and_not_when_disarmed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir(&a).expect("mkdir");
        std::fs::create_dir(&b).expect("mkdir");
        let script = "read -r _ || true\nrm -rf \"$1\"\n";
        let mut wd = Watchdog::spawn(script, &[a.display().to_string()], None).expect("spawn");
        wd.finish(Duration::from_secs(10));
        assert!(!a.exists());
        let wd = Watchdog::spawn(script, &[b.display().to_string()], None).expect("spawn");
        wd.disarm();
        assert!(b.exists());
    }
}
