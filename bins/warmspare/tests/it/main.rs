//! End-to-end tests of the `warmspare` binary against real PostgreSQL
//! clusters and a real S3 server (moto, or Garage with
//! `WARMSPARE_TEST_S3=garage`) from `warmspare-testkit`.

mod artifacts;
mod check;
mod crash;
mod demo;
mod drill;
mod encrypted_db;
mod init;
mod list_auth;
mod parallel_load;
mod physical;
mod snapshots;
mod spool;
mod timeline;
mod unencrypted;
mod verify_physical;
mod wal;

use std::path::Path;
use std::process::Stdio;

/// What one run of the binary did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// The only `error:` line of a run (the CLI prints exactly one on failure).
pub(crate) fn error_line(run: &Run) -> &str {
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "one error line expected:\n{}", run.stderr);
    errors[0]
}

impl Run {
    /// stdout and stderr together, for "never printed" assertions.
    fn all_output(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    /// Asserts that the run ended in one clear line rather than a panic.
    fn assert_no_panic(&self) {
        for bad in ["panicked", "backtrace", "RUST_BACKTRACE"] {
            assert!(
                !self.stderr.contains(bad),
                "{bad} in stderr:\n{}",
                self.stderr
            );
        }
    }

    /// The JSON rows of `check --json`.
    fn json_rows(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }

    /// The table row whose CHECK column is `check`, split into columns.
    fn table_row(&self, check: &str) -> Vec<String> {
        let line = self
            .stdout
            .lines()
            .find(|l| l.split("  ").next() == Some(check))
            .unwrap_or_else(|| panic!("no row {check:?} in:\n{}", self.stdout));
        line.split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// Runs `warmspare` with `args` in `dir`, with a clean environment plus
/// `env`. `RUST_BACKTRACE=1` makes any panic visible to `assert_no_panic`.
async fn warmspare(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_warmspare"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_BACKTRACE", "1")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .await
        .expect("the warmspare binary runs");
    Run {
        code: output.status.code().expect("exited, not killed"),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `file://` URL of a directory.
fn file_url(path: &Path) -> String {
    format!("file://{}", path.display())
}
