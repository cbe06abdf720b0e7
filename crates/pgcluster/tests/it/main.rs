//! Integration tests of warmspare-pgcluster against the installed PostgreSQL.

use std::path::PathBuf;

use warmspare_pgcluster::{Cluster, find_bin_dir, shared_parent_dir};

fn parent() -> PathBuf {
    let dir = std::env::temp_dir().join("warmspare-pgcluster-tests");
    shared_parent_dir(&dir).expect("parent dir");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_starts_answers_is_killed_and_removed() {
    let bin = find_bin_dir(None, std::env::var_os("PATH").as_deref()).expect("postgres installed");
    let pg = Cluster::builder(&bin, parent())
        .prefix("it-")
        .start()
        .await
        .expect("cluster");
    assert_eq!(pg.psql("SELECT 1").await.expect("psql"), "1");
    assert!(pg.is_running());
    pg.kill().await.expect("kill");
    assert!(!pg.is_running());
    pg.restart().await.expect("restart after crash");
    assert_eq!(pg.psql("SELECT 2").await.expect("psql"), "2");
    let root = pg.root().to_owned();
    drop(pg);
    assert!(!root.exists(), "removed on drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detached_cluster_keeps_running() {
    let bin = find_bin_dir(None, std::env::var_os("PATH").as_deref()).expect("postgres installed");
    let pg = Cluster::builder(&bin, parent())
        .start()
        .await
        .expect("cluster");
    let pid = pg.postmaster_pid().expect("pid");
    let bin_dir = pg.bin_dir().to_owned();
    let run_as = pg.run_as().map(str::to_owned);
    let root = pg.detach();
    assert!(root.join("data/PG_VERSION").exists());
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    // Clean up by hand, as an operator would.
    let pg_ctl = bin_dir.join("pg_ctl");
    let data = root.join("data");
    let mut cmd = match &run_as {
        Some(user) => {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", user, "--"]).arg(&pg_ctl);
            c
        }
        None => std::process::Command::new(&pg_ctl),
    };
    let status = cmd
        .current_dir(&root)
        .args(["stop", "-m", "immediate", "-w", "-D"])
        .arg(&data)
        .status()
        .expect("pg_ctl");
    assert!(status.success());
    std::fs::remove_dir_all(&root).expect("remove");
}
