//! Operating-system plumbing shared by the servers: where temp directories
//! go, free ports and finding programs. The process plumbing (watchdogs,
//! ports, running as `postgres`) lives in `warmspare-pgcluster`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The current process's real user id, read from `/proc/self/status`.
fn current_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
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
    warmspare_pgcluster::shared_parent_dir(&dir)?;
    Ok(dir)
}

/// A fresh directory under [`base_dir`].
pub(crate) fn temp_dir(prefix: &str) -> Result<tempfile::TempDir> {
    let base = base_dir()?;
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&base)
        .map_err(|e| Error::io_path("creating a temporary directory in", &base, e))
}

/// A loopback TCP port that is free right now (shared bookkeeping with the
/// PostgreSQL clusters, so no port is handed out twice in one process).
pub(crate) fn free_port() -> Result<u16> {
    Ok(warmspare_pgcluster::free_port()?)
}

/// The last `lines` lines of a (log) file, or a note that it is unreadable.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    warmspare_pgcluster::log_tail(path, lines)
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
    fn tail_reports_last_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        std::fs::write(&path, "a\nb\nc\n").expect("write");
        assert_eq!(tail(&path, 2), "b\nc");
        assert!(tail(&dir.path().join("missing"), 2).contains("no log"));
    }

    #[test]
    fn base_dir_is_shared() {
        let dir = base_dir().expect("base dir");
        let mode = std::fs::metadata(&dir).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
    }
}
