//! `kill -9` of a backup in progress: the repository stays valid, the
//! partial snapshot is invisible, and `prune` clears it away.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use warmspare_testkit::PostgresCluster;

use crate::wal::eventually;
use crate::{file_url, warmspare};

/// About 24 MiB of random bytes: incompressible, so the dump's stored
/// object crosses the codec's multipart threshold long before it ends.
const BLOBS_SQL: &str = "
CREATE TABLE blobs AS
SELECT g, decode(string_agg(md5(random()::text || g || i), ''), 'hex') AS b
FROM generate_series(1, 3000) g, generate_series(1, 500) i GROUP BY g;
";

/// A `pg_dump` that passes the real one's first `limit` bytes through,
/// touches `mark`, then hangs: a backup frozen mid-stream.
fn stalling_pg_dump(dir: &Path, real_bin: &Path, mark: &Path, limit: u64) {
    std::fs::create_dir_all(dir).expect("bin dir");
    for tool in ["pg_dumpall", "pg_restore", "psql"] {
        std::os::unix::fs::symlink(real_bin.join(tool), dir.join(tool)).expect("symlink");
    }
    let script = format!(
        "#!/bin/sh\n\
         case \"$1\" in --version|-V) exec '{real}/pg_dump' \"$@\";; esac\n\
         '{real}/pg_dump' \"$@\" | {{ head -c {limit}; touch '{mark}'; sleep 600; }}\n",
        real = real_bin.display(),
        mark = mark.display(),
    );
    let path = dir.join("pg_dump");
    std::fs::write(&path, script).expect("write pg_dump");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// Every file below `dir`, recursively (staging files included).
fn files_below(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_below(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn snapshots(run: &crate::Run) -> Vec<Value> {
    let list: Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", run.stdout));
    list["snapshots"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_backup_leaves_the_repository_valid() {
    let pg = PostgresCluster::start().await.expect("cluster");
    pg.create_database("app").await.expect("createdb");
    pg.psql_in("app", BLOBS_SQL).await.expect("fixture");

    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    std::fs::write(
        dir.path().join("warmspare.toml"),
        format!(
            "site = \"primary\"\n[sites.primary]\ndatabase = \"{}\"\n[repository]\nurl = \"{}\"\n",
            pg.url_for("app"),
            file_url(&repo)
        ),
    )
    .expect("config");
    let real_bin = pg.bin_dir().display().to_string();
    let env = [("WARMSPARE_PG_BIN_DIR", real_bin.as_str())];

    // A complete snapshot first: it must survive the crash untouched.
    let run = warmspare(dir.path(), &["--json", "backup", "db"], &env).await;
    assert_eq!(run.code, 0, "{run:#?}");
    let good: Value = serde_json::from_str(&run.stdout).expect("json");
    let good_id = good["id"].as_str().expect("id").to_owned();

    // Then a backup frozen after 20 MB of dump, killed with SIGKILL.
    let stall_bin = dir.path().join("stall-bin");
    let mark = dir.path().join("dumped");
    stalling_pg_dump(&stall_bin, pg.bin_dir(), &mark, 20_000_000);
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_warmspare"))
        .args(["backup", "db"])
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("WARMSPARE_PG_BIN_DIR", &stall_bin)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("spawn backup");
    let pid = child.id().expect("pid");
    let snapshot_dirs = || {
        std::fs::read_dir(repo.join("snapshots"))
            .map(|d| d.flatten().count())
            .unwrap_or(0)
    };
    // Data has reached the repository: the stalled dump is past its first
    // multipart part, and a second snapshot directory holds files.
    eventually(
        "the frozen backup to write data",
        Duration::from_secs(60),
        || {
            let ready = mark.exists()
                && snapshot_dirs() == 2
                && files_below(&repo.join("snapshots"))
                    .iter()
                    .filter(|p| !p.starts_with(repo.join("snapshots").join(&good_id)))
                    .any(|p| p.metadata().map(|m| m.len() > 0).unwrap_or(false));
            async move { ready }
        },
    )
    .await;
    let killed = tokio::process::Command::new("kill")
        .args(["-s", "KILL", "--", &format!("-{pid}")])
        .status()
        .await
        .expect("kill");
    assert!(killed.success());
    let status = child.wait().await.expect("wait");
    assert!(!status.success(), "the backup was killed: {status:?}");

    // The partial snapshot is invisible; the good one is listed and verifies.
    let run = warmspare(dir.path(), &["--json", "list"], &env).await;
    assert_eq!(run.code, 0, "{run:#?}");
    let listed = snapshots(&run);
    let ids: Vec<&str> = listed.iter().filter_map(|s| s["id"].as_str()).collect();
    assert_eq!(ids, [good_id.as_str()], "{listed:#?}");
    let run = warmspare(dir.path(), &["--json", "list", "--all"], &env).await;
    let all = snapshots(&run);
    let partial: Vec<&Value> = all.iter().filter(|s| s["id"] != good_id.as_str()).collect();
    assert_eq!(partial.len(), 1, "the partial snapshot is known: {all:#?}");
    assert_ne!(partial[0]["status"], "complete", "{all:#?}");
    let run = warmspare(dir.path(), &["verify", "latest"], &env).await;
    assert_eq!(run.code, 0, "{run:#?}");
    assert!(run.stdout.contains(&good_id), "{}", run.stdout);

    // A new backup works, and prune (with a grace period the partial
    // snapshot has outlived) removes it while keeping both complete ones.
    let run = warmspare(dir.path(), &["--json", "backup", "db"], &env).await;
    assert_eq!(run.code, 0, "{run:#?}");
    let run = warmspare(dir.path(), &["prune", "--grace", "1s"], &env).await;
    assert_eq!(run.code, 0, "{run:#?}");
    let run = warmspare(dir.path(), &["--json", "list", "--all"], &env).await;
    let after = snapshots(&run);
    assert_eq!(after.len(), 2, "{after:#?}");
    assert!(
        after.iter().all(|s| s["status"] == "complete"),
        "{after:#?}"
    );
    let leftovers: Vec<_> = files_below(&repo.join("snapshots"))
        .into_iter()
        .filter(|p| {
            !after
                .iter()
                .filter_map(|s| s["id"].as_str())
                .any(|id| p.starts_with(repo.join("snapshots").join(id)))
        })
        .collect();
    assert!(
        leftovers.is_empty(),
        "partial data left behind: {leftovers:?}"
    );
}
