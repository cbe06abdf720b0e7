//! `verify` and `verify --deep` of physical snapshots, and the restore
//! refusals that keep a physical snapshot from being restored silently
//! wrong: the WAL it needs, a target time before its end. Real clusters
//! that archive into the repository with `warmspare wal push`.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use warmspare_snapshot::physical::{
    PhysicalRestoreOptions, PhysicalVerifyOptions, verify_deep_physical, verify_wal,
};
use warmspare_snapshot::wal::WalFileName;
use warmspare_snapshot::{Error, Event, PhysicalBackup, PhysicalVerifyStep, restore_physical};
use warmspare_store::Repository;
use warmspare_store::object_store::path::Path as ObjectPath;
use warmspare_store::object_store::{ObjectStore, ObjectStoreExt as _};
use warmspare_testkit::{PostgresCluster, postgres_scratch_dir};

use crate::wal::{Archive, switch_and_wait_archived};
use crate::{Run, error_line, warmspare};

async fn cli(archive: &Archive, code: i32, args: &[&str]) -> Run {
    let mut all = vec![
        "--config",
        archive.config.to_str().expect("utf-8 config path"),
    ];
    all.extend_from_slice(args);
    let run = warmspare(Path::new("/"), &all, &[]).await;
    run.assert_no_panic();
    assert_eq!(run.code, code, "warmspare {args:?}:\n{run:#?}");
    run
}

fn json(run: &Run) -> Value {
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", run.stdout))
}

fn options(primary: &PostgresCluster, parent: &Path) -> PhysicalVerifyOptions {
    PhysicalVerifyOptions::new(primary.bin_dir(), parent)
        .with_recovery_timeout(Duration::from_secs(120))
}

/// Every object under `prefix`.
async fn objects(repo: &Repository, prefix: &str) -> Vec<String> {
    use futures::TryStreamExt as _;
    let mut names: Vec<String> = repo
        .store()
        .object_store()
        .list(Some(&ObjectPath::from(prefix)))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .expect("list");
    names.sort();
    names
}

/// Flips one byte in the middle of a stored object (twice: back again).
async fn flip_byte(repo: &Repository, path: &str) {
    let store = repo.store().object_store();
    let path = ObjectPath::from(path);
    let mut bytes = store
        .get(&path)
        .await
        .expect("get")
        .bytes()
        .await
        .expect("bytes")
        .to_vec();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    store.put(&path, bytes.into()).await.expect("put");
}

fn start_wal_object(backup: &PhysicalBackup) -> String {
    WalFileName::parse(&backup.meta.start_wal)
        .expect("start_wal")
        .object_path()
        .to_string()
}

fn is_empty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).expect("read_dir").next().is_none()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_verify_replays_a_physical_snapshot_and_checks_every_database() {
    for archive in Archive::all("verify-physical-deep").await {
        deep_verify(&archive).await;
    }
}

async fn deep_verify(archive: &Archive) {
    let primary = archive.primary().await;
    primary.create_database("shop").await.expect("createdb");
    primary
        .psql_in(
            "shop",
            "CREATE TABLE items (id int PRIMARY KEY, name text); \
             INSERT INTO items SELECT g, repeat('item ', 20) || g FROM generate_series(1, 5000) g; \
             CREATE INDEX items_name ON items (name)",
        )
        .await
        .expect("shop");
    primary
        .psql("CREATE TABLE notes (id int PRIMARY KEY); INSERT INTO notes SELECT generate_series(1, 7)")
        .await
        .expect("notes");
    let backup = archive.physical_backup(&primary).await;
    // Written after the snapshot: the copy stops at the snapshot's end.
    primary
        .psql("INSERT INTO notes VALUES (8)")
        .await
        .expect("insert");
    switch_and_wait_archived(&primary).await;

    let parent = postgres_scratch_dir().expect("scratch dir");
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&events);
    let record = move |e: Event| sink.lock().expect("lock").push(e);
    let report = verify_deep_physical(
        &archive.repo,
        &backup.manifest.id,
        &options(&primary, parent.path()),
        Some(&record),
    )
    .await
    .unwrap_or_else(|e| panic!("{}: deep verify: {e}", archive.name));

    assert_eq!(report.id, backup.manifest.id);
    assert_eq!(report.databases, ["postgres", "shop"], "{report:?}");
    assert_eq!((report.tables_read, report.rows), (2, 5007), "{report:?}");
    assert!(report.manifest_checked, "pg_verifybackup ran: {report:?}");
    assert!(report.wal_files >= 1 && report.wal_bytes > 0, "{report:?}");
    assert!(report.bytes > 1_000_000, "{report:?}");
    // User and system tables and indexes, in both databases.
    assert!(
        report.tables_checked.expect("verify_heapam") > 2,
        "{report:?}"
    );
    assert!(report.indexes_checked.expect("amcheck") > 3, "{report:?}");

    let steps: Vec<PhysicalVerifyStep> = events
        .lock()
        .expect("lock")
        .iter()
        .filter_map(|e| match e {
            Event::PhysicalVerify(step) => Some(*step),
            _ => None,
        })
        .collect();
    assert_eq!(steps, PhysicalVerifyStep::ALL, "{}", archive.name);
    assert!(is_empty_dir(parent.path()), "the scratch directory is gone");
    // The throwaway copy promoted to timeline 2 and archived nothing.
    assert_eq!(
        objects(&archive.repo, "wal/00000002").await,
        Vec::<String>::new()
    );
    // The source is untouched.
    assert_eq!(
        primary
            .psql("SELECT count(*) FROM notes")
            .await
            .expect("count"),
        "8"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_or_missing_objects_are_named_and_never_restored() {
    let archive = Archive::new().await;
    let primary = archive.primary().await;
    primary
        .psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100)")
        .await
        .expect("table");
    let backup = archive.physical_backup(&primary).await;
    let id = backup.manifest.id.to_string();
    let wal_object = start_wal_object(&backup);
    let base_object = format!("snapshots/{id}/base.tar");
    let parent = postgres_scratch_dir().expect("scratch dir");
    let scratch_dir = parent.path().display().to_string();

    // Sound: the checksums include the WAL up to the stop position, and
    // the deep check runs through the CLI too.
    let run = cli(&archive, 0, &["--json", "verify", &id]).await;
    let outcome = json(&run);
    assert!(
        outcome["wal"]["segments"].as_u64().unwrap_or(0) >= 1,
        "{outcome:#}"
    );
    assert_eq!(outcome["deep"], Value::Null);
    let run = cli(
        &archive,
        0,
        &[
            "--json",
            "verify",
            &id,
            "--deep",
            "--scratch-dir",
            &scratch_dir,
        ],
    )
    .await;
    let outcome = json(&run);
    assert_eq!(outcome["ok"], true, "{outcome:#}");
    assert_eq!(outcome["deep"]["rows"], 100, "{outcome:#}");
    assert_eq!(outcome["deep"]["manifest_checked"], true, "{outcome:#}");
    for step in ["verify: fetch-wal", "verify: recover", "verify: check-data"] {
        assert!(run.stderr.contains(step), "{}", run.stderr);
    }
    let run = cli(
        &archive,
        0,
        &["verify", &id, "--deep", "--scratch-dir", &scratch_dir],
    )
    .await;
    assert!(
        run.stdout.contains("deep check ok") && run.stdout.contains("amcheck found"),
        "{}",
        run.stdout
    );
    assert!(is_empty_dir(parent.path()));

    // A flipped byte in a WAL segment the snapshot needs: named by verify,
    // and the deep check never starts.
    flip_byte(&archive.repo, &wal_object).await;
    let report = verify_wal(&archive.repo, &backup.manifest)
        .await
        .expect("verify_wal");
    assert_eq!(report.failures.len(), 1, "{report:?}");
    assert!(report.failures[0].is_corruption(), "{report:?}");
    let run = cli(&archive, 1, &["--json", "verify", &id, "--deep"]).await;
    let outcome = json(&run);
    assert_eq!(outcome["ok"], false);
    assert_eq!(outcome["deep"], Value::Null, "not restored: {outcome:#}");
    let failures = outcome["failures"].to_string();
    assert!(failures.contains(&wal_object), "{failures}");
    // The library refuses too, at the fetch, naming it.
    let err = verify_deep_physical(
        &archive.repo,
        &backup.manifest.id,
        &options(&primary, parent.path()),
        None,
    )
    .await
    .expect_err("corrupt wal");
    assert!(err.is_corruption(), "{err}");
    assert!(
        matches!(
            err,
            Error::PhysicalVerify {
                step: PhysicalVerifyStep::FetchWal,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains(&wal_object), "{err}");
    assert!(is_empty_dir(parent.path()));
    flip_byte(&archive.repo, &wal_object).await;

    // A flipped byte in the base backup.
    flip_byte(&archive.repo, &base_object).await;
    let run = cli(&archive, 1, &["verify", &id]).await;
    assert!(run.stdout.contains(&base_object), "{}", run.stdout);
    let err = verify_deep_physical(
        &archive.repo,
        &backup.manifest.id,
        &options(&primary, parent.path()),
        None,
    )
    .await
    .expect_err("corrupt base backup");
    assert!(err.is_corruption(), "{err}");
    assert!(
        matches!(
            err,
            Error::PhysicalVerify {
                step: PhysicalVerifyStep::Restore,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains(&base_object), "{err}");
    assert!(is_empty_dir(parent.path()));
    flip_byte(&archive.repo, &base_object).await;
    cli(&archive, 0, &["verify", &id]).await;

    // A target time before the snapshot was complete: refused, exit 2.
    let target = tempfile::tempdir().expect("tempdir");
    let data = target.path().join("data");
    let data_arg = data.display().to_string();
    let during = backup.manifest.started.format(&Rfc3339).expect("format");
    let run = cli(
        &archive,
        2,
        &[
            "restore",
            "db",
            &id,
            "--to",
            &data_arg,
            "--target-time",
            &during,
        ],
    )
    .await;
    let line = error_line(&run);
    assert!(
        line.contains("before snapshot") && line.contains("was complete"),
        "{line}"
    );
    assert!(!data.exists(), "nothing written");

    // The WAL the snapshot needs is gone: a standby would wait forever.
    archive
        .repo
        .store()
        .object_store()
        .delete(&ObjectPath::from(wal_object.as_str()))
        .await
        .expect("delete");
    let run = cli(
        &archive,
        1,
        &["restore", "db", &id, "--to", &data_arg, "--standby"],
    )
    .await;
    let line = error_line(&run);
    assert!(
        line.contains(&backup.meta.start_wal) && line.contains("is not in the repository"),
        "{line}"
    );
    assert!(!data.exists(), "nothing written");
    let err = restore_physical(
        &archive.repo,
        &backup.manifest.id,
        &data,
        &PhysicalRestoreOptions::new(archive.restore_command()),
        None,
    )
    .await
    .expect_err("missing wal");
    assert!(matches!(err.root(), Error::WalMissing { .. }), "{err}");
    let run = cli(&archive, 1, &["verify", &id]).await;
    assert!(
        run.stdout.contains(&wal_object) && run.stdout.contains("is not in the repository"),
        "{}",
        run.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amcheck_finds_an_index_that_lacks_heap_tuples() {
    let archive = Archive::new().await;
    let primary = archive.primary().await;
    // Rows inserted while the index was not ready are missing from it: a
    // corrupt index that scans and backups do not notice.
    for sql in [
        "CREATE TABLE t (id int PRIMARY KEY, v text)",
        "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 100) g",
        "UPDATE pg_index SET indisready = false WHERE indexrelid = 't_pkey'::regclass",
        "INSERT INTO t SELECT g, 'v' || g FROM generate_series(101, 200) g",
        "UPDATE pg_index SET indisready = true WHERE indexrelid = 't_pkey'::regclass",
    ] {
        primary.psql(sql).await.expect(sql);
    }
    let backup = archive.physical_backup(&primary).await;
    let parent = postgres_scratch_dir().expect("scratch dir");
    let err = verify_deep_physical(
        &archive.repo,
        &backup.manifest.id,
        &options(&primary, parent.path()),
        None,
    )
    .await
    .expect_err("the index is corrupt");
    assert!(
        matches!(
            err,
            Error::PhysicalVerify {
                step: PhysicalVerifyStep::CheckData,
                ..
            }
        ),
        "{err}"
    );
    match err.root() {
        Error::IndexCorrupt { index, message } => {
            assert_eq!(index, "public.t_pkey in database postgres");
            assert!(message.contains("lacks matching index tuple"), "{message}");
        }
        other => panic!("expected IndexCorrupt, got {other}"),
    }
    assert!(is_empty_dir(parent.path()), "removed after a failure too");
    // Through the CLI: exit 1, one line naming the index.
    let run = cli(
        &archive,
        1,
        &[
            "verify",
            backup.manifest.id.as_str(),
            "--deep",
            "--scratch-dir",
            &parent.path().display().to_string(),
        ],
    )
    .await;
    let line = error_line(&run);
    assert!(
        line.contains("check-data") && line.contains("index public.t_pkey in database postgres"),
        "{line}"
    );
}
