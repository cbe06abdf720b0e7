//! `warmspare wal push` / `wal fetch` as the `archive_command` and
//! `restore_command` of real clusters: physical snapshots, point-in-time
//! recovery, a standby fed only from the repository, and the exit codes
//! PostgreSQL relies on.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use warmspare_snapshot::physical::{PhysicalBackupOptions, PhysicalRestoreOptions, RecoveryTarget};
use warmspare_snapshot::{backup_physical, restore_physical, wal};
use warmspare_store::{Repository, Store, StoreConfig};
use warmspare_testkit::{PostgresCluster, S3Server, postgres_scratch_dir};

use crate::{file_url, warmspare};

/// A `file://` repository that the `postgres` user can write to (or a
/// bucket of the test S3 server), and a configuration file naming it that
/// the `postgres` user can read.
pub(crate) struct Archive {
    pub(crate) name: &'static str,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) config: PathBuf,
    pub(crate) repo: Repository,
}

impl Archive {
    /// A physical backup of `pg` into this archive, with the defaults.
    pub(crate) async fn physical_backup(
        &self,
        pg: &PostgresCluster,
    ) -> warmspare_snapshot::physical::PhysicalBackup {
        backup_physical(
            &self.repo,
            &pg.url(),
            &PhysicalBackupOptions::default(),
            None,
            OffsetDateTime::now_utc(),
            None,
        )
        .await
        .expect("physical backup")
    }

    /// The filesystem archive, then an S3 one when an S3 server is
    /// installed.
    pub(crate) async fn all(test: &str) -> Vec<Archive> {
        let mut out = vec![Archive::new().await];
        let Some(s3) = S3Server::try_shared().await.expect("s3 server") else {
            eprintln!("note: no S3 server installed, skipping the S3 part of {test}");
            return out;
        };
        let bucket = s3.unique_bucket(test).await.expect("bucket");
        let dir = postgres_scratch_dir().expect("scratch dir");
        let config = dir.path().join("warmspare.toml");
        let url = format!("s3://{bucket}/repo");
        std::fs::write(
            &config,
            format!(
                "[repository]\nurl = \"{url}\"\nendpoint = \"{}\"\nregion = \"{}\"\n\
                 allow_http = true\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\n",
                s3.endpoint(),
                s3.region(),
                s3.access_key_id(),
                s3.secret_access_key()
            ),
        )
        .expect("write config");
        let store = Store::open(
            &StoreConfig::new(url)
                .with_endpoint(s3.endpoint())
                .with_allow_http(true)
                .with_region(s3.region())
                .with_credentials(s3.access_key_id(), s3.secret_access_key()),
        )
        .expect("store");
        let repo = Repository::init(store, OffsetDateTime::now_utc())
            .await
            .expect("init");
        out.push(Archive {
            name: "s3",
            dir,
            config,
            repo,
        });
        out
    }

    pub(crate) async fn new() -> Self {
        let dir = postgres_scratch_dir().expect("scratch dir");
        let root = dir.path().join("repo");
        std::fs::create_dir(&root).expect("mkdir");
        // archive_command runs as the server's user; the test as root.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let config = dir.path().join("warmspare.toml");
        std::fs::write(
            &config,
            format!("[repository]\nurl = \"{}\"\n", file_url(&root)),
        )
        .expect("write config");
        let store = Store::open(&StoreConfig::new(file_url(&root))).expect("store");
        let repo = Repository::init(store, OffsetDateTime::now_utc())
            .await
            .expect("init");
        Self {
            name: "filesystem",
            dir,
            config,
            repo,
        }
    }

    fn archive_command(&self) -> String {
        wal::archive_command(Path::new(env!("CARGO_BIN_EXE_warmspare")), &self.config)
    }

    pub(crate) fn restore_command(&self) -> String {
        wal::restore_command(Path::new(env!("CARGO_BIN_EXE_warmspare")), &self.config)
    }

    fn config_arg(&self) -> String {
        self.config.display().to_string()
    }

    /// A primary that archives into this repository.
    pub(crate) async fn primary(&self) -> PostgresCluster {
        PostgresCluster::builder()
            .setting("wal_level", "replica")
            .setting("archive_mode", "on")
            .setting("archive_command", self.archive_command())
            .start()
            .await
            .expect("primary starts")
    }
}

/// Polls `check` until it holds, or fails after `limit` with `what`.
pub(crate) async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Ends the current WAL segment and waits until the archiver has pushed it.
pub(crate) async fn switch_and_wait_archived(pg: &PostgresCluster) {
    let segment = pg
        .psql("SELECT pg_walfile_name(pg_switch_wal())")
        .await
        .expect("switch");
    let sql =
        format!("SELECT coalesce(last_archived_wal, '') >= '{segment}' FROM pg_stat_archiver");
    eventually(
        &format!("{segment} archived"),
        Duration::from_secs(60),
        || async { pg.psql(&sql).await.expect("pg_stat_archiver") == "t" },
    )
    .await;
}

/// The server's clock, now.
async fn server_now(pg: &PostgresCluster) -> OffsetDateTime {
    let text = pg
        .psql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
        .await
        .expect("clock_timestamp");
    OffsetDateTime::parse(&text, &Rfc3339).expect("timestamp")
}

/// Restores `id` into a fresh directory and starts a cluster on it.
async fn start_restored(
    archive: &Archive,
    id: &warmspare_store::SnapshotId,
    options: PhysicalRestoreOptions,
) -> PostgresCluster {
    let target = tempfile::tempdir().expect("tempdir");
    let data = target.path().join("data");
    restore_physical(&archive.repo, id, &data, &options, None)
        .await
        .expect("restore");
    PostgresCluster::builder()
        .from_data_dir(&data)
        .setting("wal_retrieve_retry_interval", "200ms")
        .start()
        .await
        .expect("restored cluster starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn point_in_time_recovery_gives_exactly_the_rows_committed_before() {
    for archive in Archive::all("wal-pitr").await {
        pitr(&archive).await;
    }
}

async fn pitr(archive: &Archive) {
    let primary = archive.primary().await;
    primary
        .psql("CREATE TABLE t (id int PRIMARY KEY, note text)")
        .await
        .expect("create");
    let backup = backup_physical(
        &archive.repo,
        &primary.url(),
        &PhysicalBackupOptions::default(),
        Some(3),
        OffsetDateTime::now_utc(),
        None,
    )
    .await
    .expect("physical backup");
    assert_eq!(backup.manifest.epoch, Some(3));
    assert!(backup.meta.start_lsn <= backup.meta.stop_lsn);

    primary
        .psql("INSERT INTO t VALUES (1, 'before')")
        .await
        .expect("insert 1");
    let between = server_now(&primary).await;
    primary
        .psql("INSERT INTO t VALUES (2, 'after')")
        .await
        .expect("insert 2");
    switch_and_wait_archived(&primary).await;

    let options = PhysicalRestoreOptions::new(archive.restore_command())
        .with_target(RecoveryTarget::Time(between));
    let restored = start_restored(archive, &backup.manifest.id, options).await;
    eventually(
        "promotion after recovery",
        Duration::from_secs(60),
        || async {
            restored
                .psql("SELECT pg_is_in_recovery()")
                .await
                .ok()
                .as_deref()
                == Some("f")
        },
    )
    .await;
    let rows = restored
        .psql("SELECT string_agg(id || ':' || note, ',' ORDER BY id) FROM t")
        .await
        .expect("rows");
    assert_eq!(
        rows,
        "1:before",
        "{}: {}",
        archive.name,
        restored.log_tail(30)
    );
    // Replayed through `wal fetch`, stopped at the target.
    let log = restored.log_tail(200);
    assert!(log.contains("restored log file"), "{log}");
    assert!(log.contains("recovery stopping before commit"), "{log}");
    // The primary is untouched and has both.
    assert_eq!(
        primary
            .psql("SELECT count(*) FROM t")
            .await
            .expect("test step"),
        "2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_fed_only_from_the_repository_catches_up() {
    for archive in Archive::all("wal-standby").await {
        standby(&archive).await;
    }
}

async fn standby(archive: &Archive) {
    let primary = archive.primary().await;
    primary
        .psql("CREATE TABLE marker (v text)")
        .await
        .expect("create");
    let backup = backup_physical(
        &archive.repo,
        &primary.url(),
        &PhysicalBackupOptions::default(),
        None,
        OffsetDateTime::now_utc(),
        None,
    )
    .await
    .expect("physical backup");

    let options = PhysicalRestoreOptions::new(archive.restore_command()).with_standby(true);
    let standby = start_restored(archive, &backup.manifest.id, options).await;
    assert_eq!(
        standby
            .psql("SELECT pg_is_in_recovery()")
            .await
            .expect("test step"),
        "t"
    );

    for marker in ["m1", "m2"] {
        primary
            .psql(&format!("INSERT INTO marker VALUES ('{marker}')"))
            .await
            .expect("insert");
        switch_and_wait_archived(&primary).await;
        let sql = format!("SELECT count(*) FROM marker WHERE v = '{marker}'");
        eventually(
            &format!("{}: standby replays {marker}", archive.name),
            Duration::from_secs(60),
            || async { standby.psql(&sql).await.ok().as_deref() == Some("1") },
        )
        .await;
    }
    let replayed = standby
        .psql("SELECT pg_last_wal_replay_lsn() IS NOT NULL")
        .await
        .expect("test step");
    assert_eq!(replayed, "t");
    // Still a standby: the missing next segment is "not yet", not an error.
    assert_eq!(
        standby
            .psql("SELECT pg_is_in_recovery()")
            .await
            .expect("test step"),
        "t"
    );
    assert!(
        !standby.log_tail(200).contains("FATAL"),
        "{}",
        standby.log_tail(50)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_and_fetch_exit_codes() {
    let archive = Archive::new().await;
    let dir = archive.dir.path();
    let config = archive.config_arg();
    let segment = "000000010000000000000005";
    let work = dir.join("work");
    std::fs::create_dir(&work).expect("test step");
    let file = work.join(segment);
    std::fs::write(&file, vec![5u8; 1 << 20]).expect("test step");
    let push = |path: &Path| {
        let path = path.display().to_string();
        let config = config.clone();
        async move {
            warmspare(
                Path::new("/"),
                &["--config", &config, "wal", "push", &path],
                &[],
            )
            .await
        }
    };

    // Stored, then an identical re-push: both succeed, quietly.
    for _ in 0..2 {
        let run = push(&file).await;
        run.assert_no_panic();
        assert_eq!((run.code, run.stdout.as_str()), (0, ""), "{}", run.stderr);
    }
    // Other bytes under the same name: exit 1, named, nothing overwritten.
    let other = dir.join("other");
    std::fs::create_dir(&other).expect("test step");
    std::fs::write(other.join(segment), vec![6u8; 1 << 20]).expect("test step");
    let run = push(&other.join(segment)).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(segment) && run.stderr.contains("other content"),
        "{}",
        run.stderr
    );
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);

    // Fetch: verified bytes, in a data directory as PostgreSQL runs it.
    let data = dir.join("data");
    std::fs::create_dir_all(data.join("pg_wal")).expect("test step");
    let fetch = |name: &str| {
        let (config, name, data) = (config.clone(), name.to_owned(), data.clone());
        async move {
            let started = Instant::now();
            let run = warmspare(
                &data,
                &[
                    "--config",
                    &config,
                    "wal",
                    "fetch",
                    &name,
                    "pg_wal/RECOVERYXLOG",
                ],
                &[],
            )
            .await;
            (run, started.elapsed())
        }
    };
    let (run, _) = fetch(segment).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        std::fs::read(data.join("pg_wal/RECOVERYXLOG")).expect("test step"),
        vec![5u8; 1 << 20]
    );

    // Not there (yet): 1, quickly and quietly.
    for missing in ["000000010000000000000006", "00000002.history"] {
        let (run, took) = fetch(missing).await;
        assert_eq!(run.code, 1, "{}", run.stderr);
        assert_eq!(run.stderr, "", "not-found is routine");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }

    // A flipped byte: fatal for recovery (above 125), named, loud; and the
    // same for a standby, which must not replay damaged WAL either.
    let object = format!("wal/00000001/{segment}.zst");
    let stored = archive.dir.path().join("repo").join(&object);
    let mut bytes = std::fs::read(&stored).expect("test step");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&stored, bytes).expect("test step");
    for standby in [false, true] {
        if standby {
            std::fs::write(data.join("standby.signal"), b"").expect("test step");
        }
        let _ = std::fs::remove_file(data.join("pg_wal/RECOVERYXLOG"));
        let (run, _) = fetch(segment).await;
        run.assert_no_panic();
        assert_eq!(run.code, 255, "{}", run.stderr);
        assert!(run.stderr.contains(&object), "{}", run.stderr);
        assert!(run.stderr.contains("damaged object"), "{}", run.stderr);
        assert!(!data.join("pg_wal/RECOVERYXLOG").exists());
    }

    // A bad name and a bad configuration stop recovery too.
    let (run, _) = fetch("RECOVERYXLOG").await;
    assert_eq!(run.code, 255, "{}", run.stderr);
    let run = warmspare(
        &data,
        &[
            "--config",
            "/nonexistent.toml",
            "wal",
            "fetch",
            segment,
            "x",
        ],
        &[],
    )
    .await;
    assert_eq!(run.code, 255, "{}", run.stderr);
    let run = warmspare(
        &data,
        &[
            "--config",
            "/nonexistent.toml",
            "wal",
            "push",
            &file.display().to_string(),
        ],
        &[],
    )
    .await;
    assert_eq!(run.code, 2, "{}", run.stderr);
}
