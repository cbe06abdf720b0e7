//! Spool directories of `backup_logical` with jobs: a spool left by a killed
//! backup is removed by the next one, a spool in use is never touched.

use std::path::{Path, PathBuf};

use time::OffsetDateTime;
use warmspare_snapshot::{LogicalBackupOptions, LogicalMeta, backup_logical};
use warmspare_testkit::PostgresCluster;

use crate::backend;

/// A spool directory as a backup killed with SIGKILL leaves it (the layout
/// `warmspare-spool-<kind>-<pid>-<time>-<random>/{lock,data/}`): its lock
/// file unlocked, part of a dump in its work directory.
fn spool_like_a_killed_backup(base: &Path, name: &str) -> PathBuf {
    let root = base.join(name);
    std::fs::create_dir_all(root.join("data")).unwrap();
    std::fs::write(root.join("lock"), b"").unwrap();
    std::fs::write(root.join("data/toc.dat"), b"toc").unwrap();
    std::fs::write(root.join("data/3001.dat"), vec![b'x'; 64 << 10]).unwrap();
    root
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_remove_stale_spools_and_keep_live_ones() {
    let pg = PostgresCluster::start().await.unwrap();
    pg.create_database("app").await.unwrap();
    pg.psql_in(
        "app",
        "CREATE TABLE t (id int PRIMARY KEY, body text); \
         INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 5000) g",
    )
    .await
    .unwrap();
    let backend = backend::filesystem().await;
    let base = tempfile::tempdir().unwrap();
    let base = base.path();

    let stale = spool_like_a_killed_backup(base, "warmspare-spool-dump-4242-1700000000-aB3dEf");
    let stale_restore =
        spool_like_a_killed_backup(base, "warmspare-spool-restore-4243-1700000001-Gh4iJk");
    // In use by a live backup: its lock file is locked.
    let live = spool_like_a_killed_backup(base, "warmspare-spool-dump-4244-1700000002-Lm5nOp");
    let held = std::fs::File::open(live.join("lock")).unwrap();
    held.lock().unwrap();
    // Not a spool: left alone.
    let other = base.join("warmspare-dump-something-else");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("toc.dat"), b"toc").unwrap();

    let options = LogicalBackupOptions::default()
        .with_bin_dir(pg.bin_dir())
        .with_jobs(2)
        .with_spool_dir(base);
    let backup = || async {
        backup_logical(
            &backend.repo,
            &pg.url_for("app"),
            &options,
            None,
            OffsetDateTime::now_utc(),
            None,
        )
        .await
        .unwrap()
    };
    let first = backup().await;
    assert!(
        LogicalMeta::from_manifest(&first.manifest)
            .unwrap()
            .is_directory()
    );
    // The stale spools are gone, the live one is whole, the backup's own
    // spool is removed.
    assert_eq!(entries(base), [other.clone(), live.clone()]);
    assert!(!stale.exists() && !stale_restore.exists());
    assert_eq!(
        std::fs::read(live.join("data/3001.dat")).unwrap().len(),
        64 << 10
    );

    // Once its owner is gone (the lock released, as the kernel does for a
    // killed process), the next backup removes it too.
    drop(held);
    backup().await;
    assert_eq!(entries(base), [other]);
}
