//! What `demo` and `drill` share: the PostgreSQL server binaries, a
//! scratch directory that goes away with this process, and steps that are
//! printed on stderr and recorded for `--json`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::UsageError;

/// The directory of the PostgreSQL server binaries (`initdb`, `pg_ctl`,
/// `postgres`): `explicit`, else `WARMSPARE_PG_BIN`, else `PATH` and the
/// usual places. Not installed is a usage error (exit code 2) naming
/// `command`.
pub(crate) fn server_bin_dir(command: &str, explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let explicit = explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("WARMSPARE_PG_BIN").map(PathBuf::from));
    match warmspare_pgcluster::find_bin_dir(
        explicit.as_deref(),
        std::env::var_os("PATH").as_deref(),
    ) {
        Ok(dir) => Ok(dir),
        Err(e) if e.is_not_installed() => Err(UsageError(format!(
            "{command} needs the PostgreSQL server binaries (initdb, pg_ctl, postgres); \
             install them with `apt-get install postgresql` or point WARMSPARE_PG_BIN at \
             their directory ({e})"
        ))
        .into()),
        Err(e) => Err(e.into()),
    }
}

/// One step as it happened.
#[derive(Debug, Serialize)]
pub(crate) struct StepRecord {
    pub(crate) step: &'static str,
    pub(crate) ok: bool,
    pub(crate) seconds: f64,
    pub(crate) detail: String,
}

/// Runs the steps, prints each on stderr, records it.
pub(crate) struct Steps {
    pub(crate) records: Vec<StepRecord>,
    pub(crate) total: usize,
}

impl Steps {
    pub(crate) async fn run<T>(
        &mut self,
        step: &'static str,
        title: &str,
        work: impl Future<Output = anyhow::Result<(T, String)>>,
    ) -> anyhow::Result<T> {
        let n = self.records.len() + 1;
        eprintln!("[{n}/{}] {title}", self.total);
        let started = Instant::now();
        let result = work.await;
        let seconds = started.elapsed().as_secs_f64();
        match result {
            Ok((value, detail)) => {
                eprintln!("      ok in {seconds:.2}s: {detail}");
                self.records.push(StepRecord {
                    step,
                    ok: true,
                    seconds,
                    detail,
                });
                Ok(value)
            }
            Err(error) => {
                eprintln!("      FAILED after {seconds:.2}s: {error:#}");
                self.records.push(StepRecord {
                    step,
                    ok: false,
                    seconds,
                    detail: format!("{error:#}"),
                });
                Err(error)
            }
        }
    }
}

/// Removes `dir` once this process is gone, after the clusters' own
/// watchdogs have stopped their servers and removed their directories
/// (named `*-db-*`; at most 30 s).
pub(crate) fn dir_watchdog(dir: &Path) -> anyhow::Result<warmspare_pgcluster::Watchdog> {
    const SCRIPT: &str = r#"
dir=$1
read -r _ || true
i=0
while [ "$i" -lt 300 ] && ls -d "$dir"/*-db-* >/dev/null 2>&1; do sleep 0.1; i=$((i + 1)); done
rm -rf "$dir"
"#;
    Ok(warmspare_pgcluster::Watchdog::spawn(
        SCRIPT,
        &[dir.display().to_string()],
        None,
    )?)
}
