//! The WAL archive and physical snapshots against real repositories
//! (filesystem and S3): create-once pushes, verified fetches, WAL-aware
//! retention, restores into data directories, and the backup's checks
//! against real servers. The archive as `archive_command` and
//! `restore_command` of real clusters (point-in-time recovery, a standby
//! fed from the repository) is tested through the binary, in
//! `bins/warmspare/tests/it/wal.rs`.

use std::path::Path;
use std::time::Duration;

use time::OffsetDateTime;
use time::macros::datetime;
use warmspare_snapshot::physical::{
    BASE_FILE, Checkpoint, PHYSICAL_FORMAT, PhysicalBackupOptions, PhysicalMeta,
    PhysicalRestoreOptions, RecoveryTarget,
};
use warmspare_snapshot::wal::{self, FetchOutcome, PushOptions, PushStatus, WalFileName};
use warmspare_snapshot::{
    Error, PruneOptions, RetentionConfig, backup_physical, prune, restore_physical,
};
use warmspare_store::object_store::path::Path as ObjectPath;
use warmspare_store::{Repository, SnapshotId, SnapshotKind};
use warmspare_testkit::PostgresCluster;

use crate::backend;
use crate::fixtures::flip_byte;

const SEGMENT: &str = "000000010000000000000003";

/// A segment-sized file of not very compressible bytes.
fn segment_bytes(seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..16 << 20)
        .map(|i: u32| {
            if i % 4096 < 512 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            } else {
                (i % 251) as u8
            }
        })
        .collect()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_is_create_once_and_fetch_is_verified() {
    for backend in backend::all("wal-push-fetch").await {
        let repo = &backend.repo;
        let dir = tempfile::tempdir().unwrap();
        let bytes = segment_bytes(1);
        let path = write(dir.path(), SEGMENT, &bytes);
        let options = PushOptions::default();

        let first = wal::push(repo, &path, &options).await.unwrap();
        assert_eq!(first.status, PushStatus::Stored, "{}", backend.name);
        assert_eq!(first.object, format!("wal/00000001/{SEGMENT}.zst"));
        assert_eq!(first.size, 16 << 20);
        assert!(first.stored_size < first.size / 2, "compressed: {first:?}");

        // PostgreSQL re-archives after a crash: identical bytes succeed.
        let again = wal::push(repo, &path, &options).await.unwrap();
        assert_eq!(again.status, PushStatus::AlreadyPresent);
        assert_eq!(again.content_sha256, first.content_sha256);

        // Other bytes under the same name: refused, nothing overwritten.
        let other = tempfile::tempdir().unwrap();
        let changed = write(other.path(), SEGMENT, &segment_bytes(2));
        let err = wal::push(repo, &changed, &options).await.unwrap_err();
        assert!(matches!(err, Error::WalConflict { .. }), "{err}");
        assert!(err.to_string().contains(SEGMENT), "{err}");
        assert!(!err.is_retryable());

        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("RECOVERYXLOG");
        let fetched = wal::fetch(repo, SEGMENT, &dest).await.unwrap();
        assert_eq!(
            fetched,
            FetchOutcome::Fetched {
                object: first.object.clone(),
                size: 16 << 20
            }
        );
        assert!(
            std::fs::read(&dest).unwrap() == bytes,
            "the first push's bytes"
        );

        // History, backup label and partial files.
        for (name, object) in [
            ("00000002.history", "wal/00000002.history"),
            (
                "000000010000000000000003.00000028.backup",
                "wal/00000001/000000010000000000000003.00000028.backup.zst",
            ),
            (
                "000000010000000000000004.partial",
                "wal/00000001/000000010000000000000004.partial.zst",
            ),
        ] {
            let content = format!("1\t0/3000000\tno recovery target specified ({name})\n");
            let path = write(dir.path(), name, content.as_bytes());
            let pushed = wal::push(repo, &path, &options).await.unwrap();
            assert_eq!(pushed.object, object);
            let dest = out.path().join("x");
            wal::fetch(repo, name, &dest).await.unwrap();
            assert_eq!(std::fs::read_to_string(&dest).unwrap(), content);
        }

        // Missing files are a plain answer, and leave nothing behind.
        let before: Vec<_> = std::fs::read_dir(out.path()).unwrap().collect();
        for missing in ["000000010000000000000009", "00000003.history"] {
            let dest = out.path().join("missing");
            let outcome = wal::fetch(repo, missing, &dest).await.unwrap();
            assert!(
                matches!(outcome, FetchOutcome::NotFound { .. }),
                "{outcome:?}"
            );
            assert!(!dest.exists());
        }
        let after: Vec<_> = std::fs::read_dir(out.path()).unwrap().collect();
        assert_eq!(before.len(), after.len(), "no temporary files left");

        // Names PostgreSQL never archives are refused on both sides.
        for bad in ["RECOVERYXLOG", "00000001000000000000000a", "../x"] {
            let err = wal::fetch(repo, bad, &out.path().join("y"))
                .await
                .unwrap_err();
            assert!(matches!(err, Error::InvalidWalName { .. }), "{err}");
        }
        let err = wal::push(repo, &write(dir.path(), "postmaster.pid", b"1"), &options)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidWalName { .. }), "{err}");
        let err = wal::push(repo, &dir.path().join("000000010000000000000007"), &options)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::WalFile { .. }), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_fails_the_fetch_loudly_naming_the_object() {
    for backend in backend::all("wal-corrupt").await {
        let repo = &backend.repo;
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), SEGMENT, &segment_bytes(3));
        wal::push(repo, &path, &PushOptions::default())
            .await
            .unwrap();
        let object = format!("wal/00000001/{SEGMENT}.zst");
        flip_byte(repo, &object).await;

        let dest = dir.path().join("RECOVERYXLOG");
        let err = wal::fetch(repo, SEGMENT, &dest).await.unwrap_err();
        assert!(err.is_corruption(), "{err:?}");
        assert!(!err.is_retryable());
        assert!(err.to_string().contains(&object), "{err}");
        assert!(!dest.exists(), "nothing published");
        // A re-push of the good bytes does not paper over the damage.
        let err = wal::push(repo, &path, &PushOptions::default())
            .await
            .unwrap_err();
        assert!(err.is_corruption(), "{err:?}");
    }
}

/// Commits a physical snapshot whose base backup is `tar` and that starts
/// at segment `start`.
async fn physical_snapshot(
    repo: &Repository,
    at: OffsetDateTime,
    start: &str,
    tar: &[u8],
) -> SnapshotId {
    let mut w = repo
        .begin_snapshot(SnapshotKind::Physical, at)
        .await
        .unwrap();
    w.put_file(BASE_FILE, tar).await.unwrap();
    let meta = PhysicalMeta {
        format: PHYSICAL_FORMAT.into(),
        source: "postgres@127.0.0.1:5432/postgres".into(),
        system_identifier: Some(1),
        server_version: "15.4".into(),
        server_version_num: 150004,
        timeline: 1,
        stop_timeline: 1,
        start_lsn: "0/2000028".parse().unwrap(),
        stop_lsn: "0/2000100".parse().unwrap(),
        start_wal: start.into(),
        stop_wal: start.into(),
        wal_segment_size: 16 << 20,
        backup_label: "START WAL LOCATION: 0/2000028".into(),
        base_file: BASE_FILE.into(),
        pg_basebackup: "pg_basebackup (PostgreSQL) 15.4".into(),
        checkpoint: Checkpoint::Fast,
    };
    let meta = serde_json::to_value(meta).unwrap();
    w.commit(meta, None, at).await.unwrap().id
}

async fn wal_objects(repo: &Repository) -> Vec<String> {
    use futures::TryStreamExt;
    let mut names: Vec<String> = repo
        .store()
        .object_store()
        .list(Some(&ObjectPath::from("wal")))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_keeps_the_wal_of_kept_physical_snapshots() {
    let now = datetime!(2026-11-22 12:00 UTC);
    for backend in backend::all("wal-prune").await {
        let repo = &backend.repo;
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "000000010000000000000001",
            "000000010000000000000002",
            "000000010000000000000003",
            "000000010000000000000003.00000028.backup",
            "000000010000000000000004",
            "000000020000000000000004",
            "000000020000000000000005",
            "000000010000000000000004.partial",
            "00000002.history",
        ] {
            let path = write(dir.path(), name, name.as_bytes());
            wal::push(repo, &path, &PushOptions::default())
                .await
                .unwrap();
        }
        let all = wal_objects(repo).await;
        assert_eq!(all.len(), 9);
        let keep_one = RetentionConfig {
            keep_last: 1,
            keep_daily: 0,
            keep_weekly: 0,
            keep_monthly: 0,
        };

        // No physical snapshot yet: the WAL is not retention's to judge.
        let report = prune(repo, &keep_one, &PruneOptions::default(), now)
            .await
            .unwrap();
        assert!(report.wal.skipped.is_some(), "{:?}", report.wal);
        assert_eq!(wal_objects(repo).await, all);

        let _old = physical_snapshot(
            repo,
            now.replace_hour(1).unwrap(),
            "000000010000000000000002",
            b"a",
        )
        .await;
        let kept = physical_snapshot(
            repo,
            now.replace_hour(2).unwrap(),
            "000000010000000000000003",
            b"b",
        )
        .await;
        let dry = prune(
            repo,
            &keep_one,
            &PruneOptions::default().with_dry_run(true),
            now,
        )
        .await
        .unwrap();
        assert_eq!(
            dry.wal.keep_from.as_deref(),
            Some("000000010000000000000003")
        );
        assert_eq!((dry.wal.deletable, dry.wal.deleted), (2, 0));
        assert_eq!(wal_objects(repo).await, all);

        let report = prune(repo, &keep_one, &PruneOptions::default(), now)
            .await
            .unwrap();
        assert!(report.is_ok(), "{report:?}");
        assert_eq!(repo.list_snapshots().await.unwrap(), vec![kept]);
        assert_eq!((report.wal.deletable, report.wal.deleted), (2, 2));
        let left = wal_objects(repo).await;
        let expected: Vec<&str> = all
            .iter()
            .map(String::as_str)
            .filter(|o| {
                !o.contains("000000010000000000000001.zst")
                    && !o.contains("000000010000000000000002.zst")
            })
            .collect();
        assert_eq!(left, expected, "{}", backend.name);

        // A kept snapshot whose manifest is unreadable: hands off.
        let newest = physical_snapshot(
            repo,
            now.replace_hour(3).unwrap(),
            "000000020000000000000005",
            b"c",
        )
        .await;
        flip_byte(repo, &format!("snapshots/{newest}/MANIFEST.json")).await;
        let report = prune(repo, &keep_one, &PruneOptions::default(), now)
            .await
            .unwrap();
        assert!(
            report
                .wal
                .skipped
                .as_deref()
                .unwrap_or_default()
                .contains(newest.as_str()),
            "{:?}",
            report.wal
        );
        assert_eq!(wal_objects(repo).await, left);
    }
}

/// A tar archive that looks like a base backup.
fn fake_base_tar() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("global")).unwrap();
    std::fs::create_dir_all(root.join("base/1")).unwrap();
    std::fs::write(root.join("PG_VERSION"), "15\n").unwrap();
    std::fs::write(root.join("global/pg_control"), vec![1u8; 8192]).unwrap();
    std::fs::write(root.join("base/1/1259"), vec![2u8; 300_000]).unwrap();
    std::fs::write(root.join("backup_label"), "START WAL LOCATION: 0/2000028\n").unwrap();
    std::fs::write(
        root.join("postgresql.auto.conf"),
        "# Do not edit\nwork_mem = '8MB'\n",
    )
    .unwrap();
    let out = std::process::Command::new("tar")
        .args(["--format=ustar", "-cf", "-", "."])
        .current_dir(root)
        .output()
        .unwrap();
    assert!(out.status.success());
    out.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_lays_out_the_data_directory_or_leaves_nothing() {
    let backend = backend::filesystem().await;
    let repo = &backend.repo;
    let at = OffsetDateTime::now_utc() - Duration::from_secs(3600);
    let id = physical_snapshot(repo, at, "000000010000000000000002", &fake_base_tar()).await;
    let dir = tempfile::tempdir().unwrap();
    let command = "warmspare --config '/etc/it''s.toml' wal fetch %f %p";

    // Without the WAL up to its stop position the snapshot cannot start:
    // refused before anything is written, naming the segment.
    let standby = dir.path().join("standby");
    let options = PhysicalRestoreOptions::new(command).with_standby(true);
    let err = restore_physical(repo, &id, &standby, &options, None)
        .await
        .unwrap_err();
    assert!(matches!(err.root(), Error::WalMissing { .. }), "{err}");
    assert!(
        err.to_string().contains("000000010000000000000002"),
        "{err}"
    );
    assert!(!standby.exists());
    let segment = write(dir.path(), "000000010000000000000002", b"wal");
    wal::push(repo, &segment, &PushOptions::default())
        .await
        .unwrap();

    // The snapshot for a recovery to a time: the newest finished before it.
    let later = at + Duration::from_secs(1800);
    let found = warmspare_snapshot::physical::snapshot_for_time(repo, later)
        .await
        .unwrap();
    assert_eq!(found.id, id);
    let err = warmspare_snapshot::physical::snapshot_for_time(repo, at - Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidRecoveryTarget { .. }), "{err}");

    // Point in time, into a directory that does not exist yet.
    let data = dir.path().join("pitr");
    let t = at + Duration::from_secs(60);
    let options = PhysicalRestoreOptions::new(command).with_target(RecoveryTarget::Time(t));
    let report = restore_physical(repo, &id, &data, &options, None)
        .await
        .unwrap();
    assert_eq!(report.signal_file, "recovery.signal");
    assert!(data.join("recovery.signal").is_file());
    assert!(data.join("pg_wal/archive_status").is_dir());
    assert_eq!(
        std::fs::read(data.join("base/1/1259")).unwrap(),
        vec![2u8; 300_000]
    );
    let conf = std::fs::read_to_string(data.join("postgresql.auto.conf")).unwrap();
    assert!(
        conf.starts_with("# Do not edit\nwork_mem = '8MB'\n"),
        "{conf}"
    );
    assert!(
        conf.contains(
            "restore_command = 'warmspare --config ''/etc/it''''s.toml'' wal fetch %f %p'"
        ),
        "{conf}"
    );
    assert!(conf.contains("recovery_target_inclusive = off"), "{conf}");
    assert!(
        conf.contains("recovery_target_action = 'promote'"),
        "{conf}"
    );
    let utc = t.to_offset(time::UtcOffset::UTC);
    assert!(
        conf.contains(&format!("recovery_target_time = '{}", utc.date())),
        "{conf}"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&data).unwrap().permissions().mode() & 0o777,
        0o700
    );

    // A standby, into an existing empty directory.
    std::fs::create_dir(&standby).unwrap();
    let options = PhysicalRestoreOptions::new(command).with_standby(true);
    let report = restore_physical(repo, &id, &standby, &options, None)
        .await
        .unwrap();
    assert_eq!(report.signal_file, "standby.signal");
    assert!(standby.join("standby.signal").is_file() && !standby.join("recovery.signal").exists());

    // Refusals: a non-empty directory, a standby with a target, a time
    // before the snapshot, a logical snapshot.
    let err = restore_physical(
        repo,
        &id,
        &data,
        &PhysicalRestoreOptions::new(command),
        None,
    )
    .await
    .unwrap_err();
    assert!(matches!(err.root(), Error::DataDirNotEmpty { .. }), "{err}");
    let fresh = dir.path().join("fresh");
    let options = PhysicalRestoreOptions::new(command)
        .with_standby(true)
        .with_target(RecoveryTarget::Immediate);
    let err = restore_physical(repo, &id, &fresh, &options, None)
        .await
        .unwrap_err();
    assert!(
        matches!(err.root(), Error::InvalidRecoveryTarget { .. }),
        "{err}"
    );
    let options = PhysicalRestoreOptions::new(command)
        .with_target(RecoveryTarget::Time(at - Duration::from_secs(1)));
    let err = restore_physical(repo, &id, &fresh, &options, None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("before snapshot"), "{err}");
    assert!(!fresh.exists(), "nothing created for a refused restore");
    let mut w = repo
        .begin_snapshot(SnapshotKind::Logical, at)
        .await
        .unwrap();
    w.put_file("database.pgdump", &b"x"[..]).await.unwrap();
    let logical = w.commit(serde_json::json!({}), None, at).await.unwrap().id;
    let err = restore_physical(
        repo,
        &logical,
        &fresh,
        &PhysicalRestoreOptions::new(command),
        None,
    )
    .await
    .unwrap_err();
    assert!(matches!(err.root(), Error::WrongKind { .. }), "{err}");

    // A corrupt base backup: named, and nothing left behind.
    flip_byte(repo, &format!("snapshots/{id}/{BASE_FILE}")).await;
    let err = restore_physical(
        repo,
        &id,
        &fresh,
        &PhysicalRestoreOptions::new(command),
        None,
    )
    .await
    .unwrap_err();
    assert!(err.is_corruption(), "{err:?}");
    assert!(
        err.to_string()
            .contains(&format!("snapshots/{id}/{BASE_FILE}")),
        "{err}"
    );
    assert!(!fresh.exists(), "a created directory is removed again");
    std::fs::create_dir(&fresh).unwrap();
    restore_physical(
        repo,
        &id,
        &fresh,
        &PhysicalRestoreOptions::new(command),
        None,
    )
    .await
    .unwrap_err();
    assert!(fresh.is_dir());
    assert_eq!(
        std::fs::read_dir(&fresh).unwrap().count(),
        0,
        "emptied again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn physical_backups_check_the_archive() {
    let backend = backend::filesystem().await;
    let repo = &backend.repo;
    let now = OffsetDateTime::now_utc();

    // No archiving at all: refused before anything is copied.
    let plain = PostgresCluster::start().await.unwrap();
    let err = backup_physical(
        repo,
        &plain.url(),
        &PhysicalBackupOptions::default(),
        None,
        now,
        None,
    )
    .await
    .unwrap_err();
    assert!(matches!(err.root(), Error::ArchiveModeOff { .. }), "{err}");
    assert!(err.to_string().contains("archive_mode = off"), "{err}");
    drop(plain);

    // Archiving elsewhere (here: nowhere): the server is satisfied, but the
    // segments never reach this repository.
    let elsewhere = PostgresCluster::builder()
        .setting("wal_level", "replica")
        .setting("archive_mode", "on")
        .setting("archive_command", "true")
        .start()
        .await
        .unwrap();
    let options = PhysicalBackupOptions::default().with_wal_timeout(Duration::from_secs(2));
    let err = backup_physical(repo, &elsewhere.url(), &options, None, now, None)
        .await
        .unwrap_err();
    assert!(matches!(err.root(), Error::WalNotArchived { .. }), "{err}");
    assert!(err.to_string().contains("wait-for-wal"), "{err}");
    assert!(repo.list_snapshots().await.unwrap().is_empty());
    assert!(
        repo.incomplete_snapshots().await.unwrap().is_empty(),
        "the partial base backup was removed"
    );

    // Without pg_basebackup.
    let options = PhysicalBackupOptions::default().with_bin_dir("/nonexistent");
    let err = backup_physical(repo, &elsewhere.url(), &options, None, now, None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.root(),
            Error::ToolNotFound {
                tool: "pg_basebackup",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn wal_names_map_to_the_layout() {
    let n = WalFileName::parse(SEGMENT).unwrap();
    assert_eq!(
        n.object_path(),
        warmspare_store::layout::wal_segment("00000001", SEGMENT).unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_archive_command_fails_the_backup_instead_of_hanging() {
    // The server waits for archive_command before it completes a backup
    // and warns after 60 s; the backup fails then, saying why.
    let backend = backend::filesystem().await;
    let failing = PostgresCluster::builder()
        .setting("wal_level", "replica")
        .setting("archive_mode", "on")
        .setting("archive_command", "false")
        .start()
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let err = backup_physical(
        &backend.repo,
        &failing.url(),
        &PhysicalBackupOptions::default(),
        None,
        OffsetDateTime::now_utc(),
        None,
    )
    .await
    .unwrap_err();
    assert!(matches!(err.root(), Error::ArchiveStuck { .. }), "{err}");
    assert!(err.to_string().contains("archive_command"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(120));
    assert!(
        backend
            .repo
            .incomplete_snapshots()
            .await
            .unwrap()
            .is_empty()
    );
}
