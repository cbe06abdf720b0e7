//! The built-in jobs' own settings: the `[jobs]` time limits against a
//! database that never answers, and the scheduled physical base backup
//! against real PostgreSQL clusters that archive their WAL.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::StatusCode;
use warmspare_agent::Config;
use warmspare_snapshot::{
    PhysicalRestoreOptions, RecoveryTarget, SnapshotStatus, catalog, restore_physical, wal,
};
use warmspare_store::{Repository, SnapshotKind, Store, StoreConfig};
use warmspare_testkit::PostgresCluster;

use crate::{TestAgent, count, options, sample};

/// A backup whose database accepts the TCP connection but never answers
/// is cancelled at the job's `[jobs]` timeout and recorded as timed out;
/// the next due time starts a fresh run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_that_hangs_is_cancelled_at_its_timeout_and_counted_as_failed() {
    // Bound, never accepted: the kernel completes the handshake, nobody
    // ever sends PostgreSQL's answer to the startup message.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let repo = tempfile::tempdir().unwrap();
    let repo_url = url::Url::from_directory_path(repo.path()).unwrap();
    let text = format!(
        "site = \"primary\"\n[repository]\nurl = \"{repo_url}\"\n\
         [sites.primary]\ndatabase = \"postgres://builder@127.0.0.1:{port}/builder\"\n\
         [schedule]\nbackup = \"every 1s\"\n\
         [jobs]\nbackup = {{ timeout = \"1s\" }}\n"
    );
    let config = Config::from_toml_str(&text, "hang.toml").unwrap();
    let mut agent = TestAgent::start(config, options().standard_jobs()).await;

    let timed_out = agent
        .wait_job("backup", "a timed-out backup", |j| {
            j["last_outcome"] == "timed_out"
        })
        .await;
    assert_eq!(timed_out["last_error"], "timed out after 1s", "{timed_out}");
    assert!(count(&timed_out, "failures") >= 1, "{timed_out}");
    assert!(timed_out["last_success"].is_null(), "{timed_out}");
    // The hung run was cancelled, not left holding the job: runs go on.
    let runs = count(&timed_out, "runs");
    let later = agent
        .wait_job("backup", "another run after the timeout", |j| {
            count(j, "runs") > runs
        })
        .await;
    assert_eq!(later["last_outcome"], "timed_out", "{later}");

    let metrics = agent.metrics().await;
    let timed_out_runs = sample(
        &metrics,
        "warmspare_job_runs_total{task=\"backup\",result=\"timed_out\"}",
    )
    .unwrap();
    assert!(timed_out_runs >= 2.0, "{metrics}");
    assert_eq!(
        sample(
            &metrics,
            "warmspare_job_runs_total{task=\"backup\",result=\"succeeded\"}"
        ),
        Some(0.0)
    );
    assert!(
        sample(&metrics, "warmspare_job_failures_total{task=\"backup\"}")
            .is_some_and(|f| f >= timed_out_runs),
        "{metrics}"
    );
    agent.shut_down().await;
    drop(silent);

    // Nothing was committed by the cancelled runs.
    let store = Store::open(&StoreConfig::new(repo_url.as_str())).unwrap();
    let repository = Repository::open(store).await.unwrap();
    assert!(repository.list_snapshots().await.unwrap().is_empty());
}

/// Copies what `archive_command` left in `spool` into the repository, as
/// `warmspare wal push` would, until the task is aborted.
fn pump_wal(spool: PathBuf, repository: Repository) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut pushed = BTreeSet::new();
        loop {
            let mut names: Vec<_> = std::fs::read_dir(&spool)
                .unwrap()
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| !n.ends_with(".tmp") && !pushed.contains(n))
                .collect();
            names.sort();
            for name in names {
                wal::push(
                    &repository,
                    &spool.join(&name),
                    &wal::PushOptions::default(),
                )
                .await
                .unwrap();
                pushed.insert(name);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

async fn open(url: &str) -> Repository {
    let store = Store::open(&StoreConfig::new(url)).unwrap();
    Repository::init(store, time::OffsetDateTime::now_utc())
        .await
        .unwrap()
}

/// `archive_command` that publishes each file in `spool` atomically.
fn archive_command(spool: &Path) -> String {
    let spool = spool.display();
    format!("cp %p {spool}/%f.tmp && mv {spool}/%f.tmp {spool}/%f")
}

/// Two sites: the active one takes scheduled physical base backups that
/// restore as complete, verified snapshots; the spare skips the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_active_site_takes_scheduled_physical_backups_and_the_spare_skips_them() {
    let spool = warmspare_testkit::postgres_scratch_dir().unwrap();
    let (primary_db, spare_db) = tokio::join!(
        PostgresCluster::builder()
            .setting("wal_level", "replica")
            .setting("archive_mode", "on")
            .setting("archive_command", archive_command(spool.path()))
            .start(),
        PostgresCluster::start()
    );
    let (primary_db, spare_db) = (primary_db.unwrap(), spare_db.unwrap());
    primary_db
        .psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g;")
        .await
        .unwrap();
    let repo = tempfile::tempdir().unwrap();
    let repo_url = url::Url::from_directory_path(repo.path()).unwrap();
    let pump = pump_wal(spool.path().to_owned(), open(repo_url.as_str()).await);

    let text = format!(
        r#"
[repository]
url = "{repo_url}"
[sites.primary]
database = "{}"
[sites.spare]
database = "{}"
[schedule]
physical_backup = "every 2s"
[jobs]
physical_backup = {{ timeout = "2m" }}
[failover]
lease_ttl = "3s"
interval = "200ms"
timeout = "1s"
unhealthy_threshold = 2
healthy_threshold = 1
"#,
        primary_db.url(),
        spare_db.url()
    );
    let config = Config::from_toml_str(&text, "physical.toml").unwrap();
    let mut primary =
        TestAgent::start(config.clone(), options().site("primary").standard_jobs()).await;
    let mut spare = TestAgent::start(config, options().site("spare").standard_jobs()).await;

    let done = primary
        .wait_job("physical_backup", "a physical base backup", |j| {
            j["last_outcome"] == "succeeded"
        })
        .await;
    let summary = done["last_summary"].as_str().unwrap().to_owned();
    assert!(summary.starts_with("physical snapshot "), "{done}");
    assert!(
        summary.contains("epoch "),
        "written under the lease: {done}"
    );
    assert_eq!(primary.get("/active").await.status(), StatusCode::OK);

    let skipped = spare
        .wait_job("physical_backup", "a skipped run at the spare", |j| {
            j["last_outcome"] == "skipped"
        })
        .await;
    assert_eq!(
        skipped["last_summary"], "skipped: this site is not the active site",
        "{skipped}"
    );
    assert!(skipped["last_success"].is_null(), "{skipped}");
    let metrics = spare.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "warmspare_job_runs_total{task=\"physical_backup\",result=\"succeeded\"}"
        ),
        Some(0.0),
        "{metrics}"
    );
    let metrics = primary.metrics().await;
    assert!(
        sample(
            &metrics,
            "warmspare_job_runs_total{task=\"physical_backup\",result=\"succeeded\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    assert!(
        sample(&metrics, "warmspare_last_snapshot_timestamp_seconds").is_some(),
        "{metrics}"
    );

    spare.shut_down().await;
    primary.shut_down().await;
    pump.abort();

    // The snapshot named in the summary is a complete physical snapshot
    // whose files and WAL verify.
    let id = summary
        .strip_prefix("physical snapshot ")
        .and_then(|s| s.split(' ').next())
        .unwrap();
    let repository = open(repo_url.as_str()).await;
    let listed = catalog::list(&repository, true).await.unwrap();
    let ours = listed
        .iter()
        .find(|s| s.id.to_string() == id)
        .unwrap_or_else(|| panic!("{id} not in {listed:?}"));
    assert_eq!(ours.status, SnapshotStatus::Complete, "{ours:?}");
    assert_eq!(ours.kind, Some(SnapshotKind::Physical), "{ours:?}");
    let report = catalog::verify(&repository, &ours.id).await.unwrap();
    assert!(report.files >= 1, "{report:?}");

    // It is a usable starting point: restored and recovered to its end
    // (WAL from the archive spool), it holds the table.
    let target = tempfile::tempdir().unwrap();
    let data = target.path().join("data");
    let restore_command = format!("cp {}/%f %p", spool.path().display());
    let options =
        PhysicalRestoreOptions::new(restore_command).with_target(RecoveryTarget::Immediate);
    restore_physical(&repository, &ours.id, &data, &options, None)
        .await
        .unwrap();
    let restored = PostgresCluster::builder()
        .from_data_dir(&data)
        .start()
        .await
        .unwrap();
    assert_eq!(
        restored
            .psql("SELECT count(*) FROM t")
            .await
            .unwrap()
            .trim(),
        "1000"
    );
}
