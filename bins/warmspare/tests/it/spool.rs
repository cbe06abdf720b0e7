//! `kill -9` of `backup db --jobs 2`: the killed backup's spool directory
//! stays behind until the next backup removes it; a backup in progress
//! keeps its own.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use warmspare_testkit::PostgresCluster;

use crate::wal::eventually;
use crate::{file_url, warmspare};

/// A `pg_dump` that runs the real one into the directory of `--file=`,
/// then opens one more file there, writes a little, touches `mark` and
/// hangs with the file open: a directory dump frozen mid-file, which the
/// uploader keeps following.
fn stalling_pg_dump(dir: &Path, real_bin: &Path, mark: &Path) {
    std::fs::create_dir_all(dir).expect("bin dir");
    for tool in ["pg_dumpall", "pg_restore", "psql"] {
        std::os::unix::fs::symlink(real_bin.join(tool), dir.join(tool)).expect("symlink");
    }
    let script = format!(
        "#!/bin/sh\n\
         case \"$1\" in --version|-V) exec '{real}/pg_dump' \"$@\";; esac\n\
         for a in \"$@\"; do case \"$a\" in --file=*) out=\"${{a#--file=}}\";; esac; done\n\
         '{real}/pg_dump' \"$@\" || exit $?\n\
         exec 3>\"$out/9999.dat\"\n\
         echo 'partial table data' >&3\n\
         touch '{mark}'\n\
         sleep 600\n",
        real = real_bin.display(),
        mark = mark.display(),
    );
    let path = dir.join("pg_dump");
    std::fs::write(&path, script).expect("write pg_dump");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// The entries of the spool base, sorted.
fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read spool base")
        .map(|e| e.expect("entry").path())
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_backup_db_jobs_leaves_a_spool_the_next_backup_removes() {
    let pg = PostgresCluster::start().await.expect("cluster");
    pg.create_database("app").await.expect("createdb");
    pg.psql_in(
        "app",
        "CREATE TABLE t (id int PRIMARY KEY, body text); \
         INSERT INTO t SELECT g, repeat('x', g % 100) FROM generate_series(1, 20000) g; \
         CREATE TABLE u (id int); INSERT INTO u SELECT generate_series(1, 100)",
    )
    .await
    .expect("fixture");

    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().join("spool");
    std::fs::create_dir(&spool).expect("spool base");
    std::fs::write(
        dir.path().join("warmspare.toml"),
        format!(
            "site = \"primary\"\n[sites.primary]\ndatabase = \"{}\"\n[repository]\nurl = \"{}\"\n",
            pg.url_for("app"),
            file_url(&dir.path().join("repo"))
        ),
    )
    .expect("config");
    let real_bin = pg.bin_dir().display().to_string();
    let env = [("WARMSPARE_PG_BIN_DIR", real_bin.as_str())];
    let spool_arg = spool.display().to_string();
    let backup = [
        "--json",
        "backup",
        "db",
        "--jobs",
        "2",
        "--spool-dir",
        &spool_arg,
    ];

    // A first backup initialises the repository and leaves no spool.
    let run = warmspare(dir.path(), &backup, &env).await;
    assert_eq!(run.code, 0, "{run:#?}");
    assert_eq!(entries(&spool), Vec::<PathBuf>::new());

    // A backup frozen in the middle of its dump, in a process group of its
    // own (the SIGKILL takes its pg_dump too).
    let stall_bin = dir.path().join("stall-bin");
    let mark = dir.path().join("dumped");
    stalling_pg_dump(&stall_bin, pg.bin_dir(), &mark);
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_warmspare"))
        .args(backup)
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
    // Its spool is named after the process, and holds the file the frozen
    // pg_dump keeps open.
    let prefix = format!("warmspare-spool-dump-{pid}-");
    let frozen = || {
        entries(&spool).into_iter().find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix))
        })
    };
    eventually("the frozen backup's spool", Duration::from_secs(60), || {
        let ready =
            mark.exists() && frozen().is_some_and(|root| root.join("data/9999.dat").exists());
        async move { ready }
    })
    .await;
    let killed_spool = frozen().expect("the frozen backup's spool");

    // Another backup meanwhile: it succeeds and keeps the spool in use.
    let run = warmspare(dir.path(), &backup, &env).await;
    assert_eq!(run.code, 0, "{run:#?}");
    assert_eq!(entries(&spool), vec![killed_spool.clone()]);
    assert!(killed_spool.join("data/9999.dat").exists());

    let killed = tokio::process::Command::new("kill")
        .args(["-s", "KILL", "--", &format!("-{pid}")])
        .status()
        .await
        .expect("kill");
    assert!(killed.success());
    let status = child.wait().await.expect("wait");
    assert!(!status.success(), "the backup was killed: {status:?}");
    // The killed backup left its spool behind.
    assert_eq!(entries(&spool), vec![killed_spool.clone()]);

    // The next backup removes it, and its own.
    let run = warmspare(dir.path(), &backup, &env).await;
    assert_eq!(run.code, 0, "{run:#?}");
    assert_eq!(entries(&spool), Vec::<PathBuf>::new());

    // The killed backup's snapshot is not listed.
    let run = warmspare(dir.path(), &["--json", "list"], &env).await;
    assert_eq!(run.code, 0, "{run:#?}");
    let list: Value = serde_json::from_str(&run.stdout).expect("json");
    let snapshots = list["snapshots"].as_array().expect("snapshots");
    assert_eq!(snapshots.len(), 3, "{list:#}");
    assert!(
        snapshots.iter().all(|s| s["status"] == "complete"),
        "{list:#}"
    );
}
