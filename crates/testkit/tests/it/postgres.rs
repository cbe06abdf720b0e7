use std::time::{Duration, Instant};

use sqlx::Connection;
use sqlx::postgres::PgConnection;
use warmspare_testkit::{PostgresCluster, postgres_scratch_dir};

async fn select_one(url: &str) -> Result<i32, sqlx::Error> {
    let mut conn = PgConnection::connect(url).await?;
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut conn).await?;
    conn.close().await?;
    Ok(one)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_start_in_parallel_and_are_removed_on_drop() {
    let started = Instant::now();
    let (a, b) = tokio::join!(PostgresCluster::start(), PostgresCluster::start());
    let (a, b) = (a.expect("cluster a"), b.expect("cluster b"));
    eprintln!("two clusters started in {:?}", started.elapsed());
    assert_ne!(a.port(), b.port());
    assert_eq!(a.superuser(), "postgres");
    assert!(a.url().starts_with("postgres://postgres@127.0.0.1:"));
    for cluster in [&a, &b] {
        assert_eq!(select_one(&cluster.url()).await.expect("select"), 1);
        assert!(cluster.is_running());
        assert!(cluster.data_dir().join("PG_VERSION").exists());
        assert!(cluster.bin_dir().join("pg_ctl").exists());
    }
    let (dir_a, dir_b) = (a.data_dir().to_owned(), b.data_dir().to_owned());
    let pid = a.postmaster_pid().expect("pid");
    drop(a);
    assert!(!dir_a.exists(), "dropped cluster's directory is gone");
    assert!(!dir_a.parent().expect("root").exists());
    assert!(
        wait_until(|| !process_alive(pid)).await,
        "postmaster stopped"
    );
    b.stop().await.expect("stop");
    assert!(!dir_b.exists(), "stopped cluster's directory is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_is_required_over_tcp() {
    let pg = PostgresCluster::builder()
        .password("s3cret p@ss")
        .start()
        .await
        .expect("cluster");
    assert_eq!(pg.password(), Some("s3cret p@ss"));
    assert!(pg.url().contains("s3cret%20p%40ss"));
    assert_eq!(select_one(&pg.url()).await.expect("right password"), 1);
    let wrong = pg.url_with_password("postgres", Some("wrong"));
    let err = select_one(&wrong).await.expect_err("wrong password");
    assert!(err.to_string().contains("password"), "{err}");
    let none = pg.url_with_password("postgres", None);
    assert!(select_one(&none).await.is_err(), "no password");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_psql_and_archiving() {
    let archive = postgres_scratch_dir().expect("scratch");
    let command = format!("cp %p {}/%f", archive.path().display());
    let pg = PostgresCluster::builder()
        .setting("wal_level", "replica")
        .setting("archive_mode", "on")
        .setting("archive_command", &command)
        .start()
        .await
        .expect("cluster");
    assert_eq!(
        pg.psql("SHOW archive_command").await.expect("show"),
        command
    );
    pg.create_database("app db").await.expect("createdb");
    pg.psql_in(
        "app db",
        "CREATE TABLE t (x int); INSERT INTO t VALUES (42)",
    )
    .await
    .expect("insert");
    assert_eq!(select_one(&pg.url_for("app db")).await.expect("select"), 1);
    pg.psql("SELECT pg_switch_wal()").await.expect("switch");
    let archived =
        wait_until(|| std::fs::read_dir(archive.path()).is_ok_and(|mut d| d.next().is_some()))
            .await;
    assert!(
        archived,
        "archive_command wrote a segment; log:\n{}",
        pg.log_tail(20)
    );
    let err = pg.psql("SELECT * FROM missing").await.expect_err("bad sql");
    assert!(err.to_string().contains("missing"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_then_restart_recovers_on_the_same_port() {
    let pg = PostgresCluster::start().await.expect("cluster");
    pg.psql("CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)")
        .await
        .expect("insert");
    let port = pg.port();
    pg.kill().await.expect("kill");
    assert!(!pg.is_running());
    assert!(select_one(&pg.url()).await.is_err(), "down after kill");
    let started = Instant::now();
    pg.restart().await.expect("restart");
    eprintln!("restart after SIGKILL took {:?}", started.elapsed());
    assert_eq!(pg.port(), port);
    assert_eq!(pg.psql("SELECT x FROM kept").await.expect("select"), "7");
    pg.restart().await.expect("restart while running");
    assert_eq!(select_one(&pg.url()).await.expect("select"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_from_a_base_backup() {
    let primary = PostgresCluster::start().await.expect("primary");
    primary
        .psql("CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2)")
        .await
        .expect("insert");
    let scratch = postgres_scratch_dir().expect("scratch");
    let target = scratch.path().join("backup");
    let output = std::process::Command::new(primary.bin_dir().join("pg_basebackup"))
        .arg("-d")
        .arg(primary.url())
        .arg("-D")
        .arg(&target)
        .args(["-X", "stream", "-c", "fast", "--no-sync"])
        .output()
        .expect("run pg_basebackup");
    assert!(output.status.success(), "{output:?}");
    let copy = PostgresCluster::builder()
        .from_data_dir(&target)
        .start()
        .await
        .expect("start from backup");
    assert_ne!(copy.port(), primary.port());
    assert_eq!(copy.psql("SELECT sum(x) FROM t").await.expect("sum"), "3");
    assert!(!target.exists(), "the backup was moved into the cluster");
}

async fn wait_until(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    condition()
}

fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}
