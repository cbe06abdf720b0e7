//! Two agents (primary and spare) in one process against real PostgreSQL
//! clusters and the test kit's S3 server as the repository (a `file://`
//! repository when no S3 server can be started), with the built-in jobs and the
//! failover driver: exactly one site is active, backups and restores run on
//! schedule, and killing the primary moves `/active` to the spare.

use std::future::Future;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use warmspare_agent::Config;
use warmspare_testkit::PostgresCluster;

use crate::{TOKEN, TestAgent, count, job_in, options, runs_total, sample};

const DB: &str = "app";

/// The `[repository]` table: a fresh bucket on the test kit's S3 server,
/// or the directory `dir` when no S3 server can be started.
async fn repository_table(dir: &std::path::Path) -> String {
    match warmspare_testkit::S3Server::try_shared().await.unwrap() {
        Some(s3) => {
            let bucket = s3.unique_bucket("agent-sites").await.unwrap();
            format!(
                "url = \"s3://{bucket}/repo\"\nendpoint = \"{}\"\nregion = \"{}\"\n\
                 allow_http = true\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\n",
                s3.endpoint(),
                s3.region(),
                s3.access_key_id(),
                s3.secret_access_key()
            )
        }
        None => format!(
            "url = \"{}\"\n",
            url::Url::from_directory_path(dir).unwrap()
        ),
    }
}

fn site_config(repo: &str, primary: &str, spare: &str, artifacts: [&str; 2]) -> Config {
    let [primary_artifacts, spare_artifacts] = artifacts;
    let text = format!(
        r#"
[repository]
{repo}
[sites.primary]
database = "{primary}"
artifacts = "{primary_artifacts}"
[sites.spare]
database = "{spare}"
artifacts = "{spare_artifacts}"
[schedule]
backup = "every 2s"
restore = "every 2s"
sync = "every 2s"
[failover]
lease_ttl = "3s"
interval = "200ms"
timeout = "1s"
unhealthy_threshold = 2
healthy_threshold = 1
max_data_loss = "5m"
cooldown = "1s"
"#
    );
    Config::from_toml_str(&text, "sites.toml").unwrap()
}

/// Polls `check` until it returns `Some`, failing after `limit`.
async fn eventually<T, F, Fut>(what: &str, limit: Duration, check: F) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn active(agent: &TestAgent) -> bool {
    agent.get("/active").await.status() == StatusCode::OK
}

fn succeeded(job: &Value) -> bool {
    job["last_outcome"] == "succeeded"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_active_site_scheduled_jobs_and_failover_to_the_spare() {
    let (primary_db, spare_db) = tokio::join!(PostgresCluster::start(), PostgresCluster::start());
    let (primary_db, spare_db) = (primary_db.unwrap(), spare_db.unwrap());
    primary_db.create_database(DB).await.unwrap();
    spare_db.create_database(DB).await.unwrap();
    primary_db
        .psql_in(
            DB,
            "CREATE TABLE packages (name text PRIMARY KEY); \
             INSERT INTO packages VALUES ('core/glibc'), ('core/openssl');",
        )
        .await
        .unwrap();
    let repo = tempfile::tempdir().unwrap();
    let repo_table = repository_table(repo.path()).await;
    // Each site's artifact store: two .hart files at the primary.
    let stores = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    for name in ["core-glibc-2.39.hart", "core-openssl-3.0.hart"] {
        std::fs::write(stores[0].path().join(name), name.repeat(100)).unwrap();
    }
    let store_urls = stores
        .each_ref()
        .map(|d| url::Url::from_directory_path(d.path()).unwrap().to_string());
    let config = site_config(
        &repo_table,
        &primary_db.url_for(DB),
        &spare_db.url_for(DB),
        [&store_urls[0], &store_urls[1]],
    );

    let mut primary =
        TestAgent::start(config.clone(), options().site("primary").standard_jobs()).await;
    let spare = TestAgent::start(config, options().site("spare").standard_jobs()).await;

    // Exactly one site is active: the primary, the configured initial holder.
    eventually(
        "the primary to become active",
        Duration::from_secs(30),
        || async { active(&primary).await.then_some(()) },
    )
    .await;
    let (status, body) = spare.get_json("/active").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    eventually(
        "the spare to be a healthy standby",
        Duration::from_secs(30),
        || async { (spare.get("/standby").await.status() == StatusCode::OK).then_some(()) },
    )
    .await;
    assert!(active(&primary).await && !active(&spare).await);
    assert_eq!(
        primary.get("/standby").await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );

    // Mutating endpoints want the token; a switchover asked of the site
    // that does not hold the lease is refused by the policy (409).
    let wrong = primary.post("/failover", Some("not-the-token")).await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let refused = reqwest::Client::new()
        .post(spare.url("/failover"))
        .bearer_auth(TOKEN)
        .body(r#"{"command":"switchover","to":"primary"}"#)
        .send()
        .await
        .unwrap();
    let refused_status = refused.status();
    let text = refused.text().await.unwrap();
    assert_eq!(refused_status, StatusCode::CONFLICT, "{text}");

    // The primary's scheduled backup (a recovery point: database and
    // artifacts) ran; the primary synced its artifacts to the spare's
    // store; the spare restored the snapshot. /metrics agrees with /status
    // once the scheduler rests.
    let backup = primary
        .wait_job("backup", "a successful backup", succeeded)
        .await;
    assert!(
        backup["last_summary"]
            .as_str()
            .is_some_and(|s| s.starts_with("recovery point") && s.contains("2 artifacts")),
        "{backup}"
    );
    primary
        .wait_job("sync", "a successful sync", |j| {
            succeeded(j)
                && j["last_summary"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("2 copied"))
        })
        .await;
    assert!(stores[1].path().join("core-openssl-3.0.hart").exists());
    let spare_sync = spare
        .wait_job("sync", "a sync run at the spare", |j| {
            j["last_outcome"] == "skipped"
        })
        .await;
    assert_eq!(
        spare_sync["last_summary"],
        "skipped: the active site runs sync"
    );
    let restored = spare
        .wait_job("restore", "a restore of the snapshot", |j| {
            succeeded(j)
                && j["last_summary"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("restored"))
        })
        .await;
    assert!(count(&restored, "runs") >= 1, "{restored}");
    let skipped = spare.job("backup").await;
    assert!(
        skipped["last_summary"]
            .as_str()
            .is_none_or(|s| s.starts_with("skipped")),
        "the spare does not back up: {skipped}"
    );

    assert_eq!(
        primary.post("/pause", Some(TOKEN)).await.status(),
        StatusCode::OK
    );
    let backup = primary
        .wait_job("backup", "the backup to be idle", |j| j["state"] == "idle")
        .await;
    let metrics = primary.metrics().await;
    let (_, status) = primary.get_json("/status").await;
    let backup_now = job_in(&status, "backup");
    assert_eq!(count(&backup, "runs"), count(&backup_now, "runs"));
    assert_eq!(
        runs_total(&metrics, "backup"),
        count(&backup_now, "runs") as f64,
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "warmspare_job_failures_total{task=\"backup\"}"),
        Some(count(&backup_now, "failures") as f64),
    );
    let snapshot = sample(&metrics, "warmspare_last_snapshot_timestamp_seconds")
        .unwrap_or_else(|| panic!("no snapshot timestamp in {metrics}"));
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as f64;
    assert!(
        snapshot > now - 120.0 && snapshot <= now + 1.0,
        "{snapshot}"
    );
    assert_eq!(sample(&metrics, "warmspare_may_accept_traffic"), Some(1.0));
    assert_eq!(sample(&metrics, "warmspare_sync_objects_total"), Some(2.0));
    assert_eq!(sample(&metrics, "warmspare_rpo_seconds"), None, "{metrics}");
    assert_eq!(
        sample(&metrics, "warmspare_lease_holder{site=\"primary\"}"),
        Some(1.0),
        "{metrics}"
    );
    let epoch = sample(&metrics, "warmspare_lease_epoch").unwrap();
    assert_eq!(status["lease"]["holder"], "primary", "{status}");
    assert_eq!(status["lease"]["epoch"].as_f64(), Some(epoch));
    assert!(metrics.contains("warmspare_probe_up{target="), "{metrics}");
    assert_eq!(
        primary.post("/resume", Some(TOKEN)).await.status(),
        StatusCode::OK
    );
    let spare_metrics = spare.metrics().await;
    assert!(
        sample(&spare_metrics, "warmspare_rpo_seconds").is_some(),
        "{spare_metrics}"
    );
    assert_eq!(
        sample(&spare_metrics, "warmspare_may_accept_traffic"),
        Some(0.0)
    );

    // The primary dies: its database and its agent. The spare takes over.
    primary_db.kill().await.unwrap();
    primary.shut_down().await;
    let started = Instant::now();
    eventually(
        "the spare to become active",
        Duration::from_secs(30),
        || async { active(&spare).await.then_some(()) },
    )
    .await;
    let took = started.elapsed();
    let (_, status) = spare.get_json("/status").await;
    assert_eq!(status["lease"]["holder"], "spare", "{status}");
    let new_epoch = status["lease"]["epoch"].as_f64().unwrap();
    assert!(new_epoch > epoch, "the epoch grows: {status}");
    // `/active` answers 200 only once the promotion returned: by then the
    // spare's database has recorded the new epoch and accepts writes.
    let recorded = spare_db
        .psql_in(DB, "SELECT max(epoch) FROM warmspare.epoch")
        .await
        .unwrap();
    assert_eq!(
        recorded.trim().parse::<f64>().ok(),
        Some(new_epoch),
        "the new epoch in the spare's database"
    );
    let read_only = spare_db
        .psql_in(DB, "SHOW default_transaction_read_only")
        .await
        .unwrap();
    assert_eq!(read_only.trim(), "off");
    spare_db
        .psql_in(DB, "INSERT INTO packages VALUES ('core/zlib')")
        .await
        .unwrap();
    let rows = spare_db
        .psql_in(DB, "SELECT count(*) FROM packages")
        .await
        .unwrap();
    assert_eq!(rows.trim(), "3", "the restored rows and the new one");
    eprintln!("spare active {took:?} after the primary's agent stopped");
}

/// Shutting down while a backup runs leaves the repository valid: every
/// committed snapshot verifies, anything unfinished stays uncommitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_a_backup_leaves_the_repository_valid() {
    use warmspare_snapshot::{SnapshotStatus, catalog};
    use warmspare_store::{Repository, Store, StoreConfig};

    let db = PostgresCluster::start().await.unwrap();
    db.create_database(DB).await.unwrap();
    db.psql_in(
        DB,
        "CREATE TABLE blobs AS SELECT g AS id, md5(g::text) AS v \
         FROM generate_series(1, 200000) g;",
    )
    .await
    .unwrap();
    let repo = tempfile::tempdir().unwrap();
    let repo_url = url::Url::from_directory_path(repo.path()).unwrap();
    // One site: no peer, no failover driver; the backup runs with no epoch.
    let text = format!(
        "site = \"primary\"\n[repository]\nurl = \"{repo_url}\"\n\
         [sites.primary]\ndatabase = \"{}\"\n[schedule]\nbackup = \"every 1s\"\n",
        db.url_for(DB)
    );
    let config = Config::from_toml_str(&text, "one.toml").unwrap();
    let mut agent = TestAgent::start(config, options().standard_jobs()).await;
    let first = agent.wait_job("backup", "a backup", succeeded).await;
    assert!(
        first["last_summary"]
            .as_str()
            .is_some_and(|s| s.contains("no lease epoch")),
        "{first}"
    );
    agent
        .wait_job("backup", "the next backup to be running", |j| {
            j["state"] == "running"
        })
        .await;
    agent.shut_down().await;

    let store = Store::open(&StoreConfig::new(repo_url.as_str())).unwrap();
    let repository = Repository::open(store).await.unwrap();
    let listed = catalog::list(&repository, true).await.unwrap();
    let complete: Vec<_> = listed
        .iter()
        .filter(|s| s.status == SnapshotStatus::Complete)
        .collect();
    assert!(!complete.is_empty(), "{listed:?}");
    for summary in &listed {
        assert!(
            matches!(
                summary.status,
                SnapshotStatus::Complete | SnapshotStatus::Incomplete
            ),
            "{summary:?}"
        );
    }
    for summary in complete {
        catalog::verify(&repository, &summary.id).await.unwrap();
    }
}

/// A healthy primary that is shut down steps down: it fences its database
/// and releases the lease, and the spare takes over at its next read of
/// the lease instead of after `ttl + margin`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_primary_releases_the_lease_on_shutdown() {
    let (primary_db, spare_db) = tokio::join!(PostgresCluster::start(), PostgresCluster::start());
    let (primary_db, spare_db) = (primary_db.unwrap(), spare_db.unwrap());
    primary_db.create_database(DB).await.unwrap();
    spare_db.create_database(DB).await.unwrap();
    primary_db
        .psql_in(
            DB,
            "CREATE TABLE packages (name text PRIMARY KEY); \
             INSERT INTO packages VALUES ('core/glibc');",
        )
        .await
        .unwrap();
    let repo = tempfile::tempdir().unwrap();
    let repo_table = repository_table(repo.path()).await;
    let stores = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let store_urls = stores
        .each_ref()
        .map(|d| url::Url::from_directory_path(d.path()).unwrap().to_string());
    let config = site_config(
        &repo_table,
        &primary_db.url_for(DB),
        &spare_db.url_for(DB),
        [&store_urls[0], &store_urls[1]],
    );
    let mut primary =
        TestAgent::start(config.clone(), options().site("primary").standard_jobs()).await;
    let spare = TestAgent::start(config, options().site("spare").standard_jobs()).await;
    eventually(
        "the primary to become active",
        Duration::from_secs(30),
        || async { active(&primary).await.then_some(()) },
    )
    .await;
    // The spare restored a snapshot (its data-loss guard then allows a
    // takeover) and is a healthy standby.
    spare
        .wait_job("restore", "a restore of the snapshot", |j| {
            succeeded(j)
                && j["last_summary"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("restored"))
        })
        .await;
    eventually(
        "the spare to be a healthy standby",
        Duration::from_secs(30),
        || async { (spare.get("/standby").await.status() == StatusCode::OK).then_some(()) },
    )
    .await;
    let (_, status) = primary.get_json("/status").await;
    let epoch = status["lease"]["epoch"].as_f64().unwrap();
    primary_db
        .psql_in(DB, "INSERT INTO packages VALUES ('core/zlib')")
        .await
        .unwrap();

    // Watch the spare while the primary shuts down (its jobs may take a
    // moment to cancel; the release does not wait for them).
    let started = Instant::now();
    let (stopped, took) = tokio::join!(
        async {
            primary.shut_down().await;
            started.elapsed()
        },
        async {
            eventually(
                "the spare to become active",
                Duration::from_secs(30),
                || async { active(&spare).await.then_some(()) },
            )
            .await;
            started.elapsed()
        }
    );
    // An unreleased lease could not be taken before the last renewal
    // (at most renew_interval = 1 s before the shutdown) plus
    // ttl + margin = 3.5 s, less 1 % drift: about 2.4 s after the shutdown.
    assert!(
        took < Duration::from_millis(2_000),
        "the spare became active {took:?} after the shutdown began (the agent stopped after {stopped:?})"
    );
    let (_, status) = spare.get_json("/status").await;
    assert_eq!(status["lease"]["holder"], "spare", "{status}");
    let new_epoch = status["lease"]["epoch"].as_f64().unwrap();
    assert!(new_epoch > epoch, "{status}");
    // `/active` said 200, so the promotion has returned: the new epoch is
    // recorded and the spare's database takes writes.
    let recorded = spare_db
        .psql_in(DB, "SELECT max(epoch) FROM warmspare.epoch")
        .await
        .unwrap();
    assert_eq!(recorded.trim().parse::<f64>().ok(), Some(new_epoch));
    spare_db
        .psql_in(DB, "INSERT INTO packages VALUES ('core/bzip2')")
        .await
        .unwrap();
    // The old primary's database was fenced before the release: read-only.
    let read_only = primary_db
        .psql_in(DB, "SHOW default_transaction_read_only")
        .await
        .unwrap();
    assert_eq!(read_only.trim(), "on");
    let refused = primary_db
        .psql_in(DB, "INSERT INTO packages VALUES ('core/zstd')")
        .await;
    assert!(refused.is_err(), "{refused:?}");
    eprintln!("spare active {took:?} after the primary's shutdown began ({stopped:?} to stop)");
}
