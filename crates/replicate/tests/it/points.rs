//! `take_recovery_point` against a real PostgreSQL cluster: both halves,
//! the WAL position, the record, and `latest`.

use std::sync::{Arc, Mutex};

use warmspare_replicate::object_store::memory::InMemory;
use warmspare_replicate::object_store::path::Path;
use warmspare_replicate::object_store::{ObjectStore, ObjectStoreExt};
use warmspare_replicate::{
    PointEvent, PointRequest, SyncOptions, list_points, read_inventory, read_point,
    resolve_inventory, take_recovery_point,
};
use warmspare_snapshot::LogicalBackupOptions;
use warmspare_store::{Repository, Store, StoreConfig};
use warmspare_testkit::PostgresCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_point_ties_a_snapshot_an_inventory_and_a_wal_position() {
    let pg = PostgresCluster::start().await.unwrap();
    pg.create_database("builder").await.unwrap();
    pg.psql_in(
        "builder",
        "CREATE TABLE t (x int); INSERT INTO t VALUES (1);",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&StoreConfig::new(format!(
        "file://{}",
        dir.path().display()
    )))
    .unwrap();
    let now = time::OffsetDateTime::now_utc();
    let repo = Repository::init(store, now).await.unwrap();
    let artifacts: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    for (k, v) in [("a.hart", "aaa"), ("b/c.hart", "bc")] {
        artifacts.put(&Path::from(k), v.into()).await.unwrap();
    }

    let mut request = PointRequest {
        database_url: pg.url_for("builder"),
        database: LogicalBackupOptions::default().with_bin_dir(pg.bin_dir()),
        artifacts: Some(Arc::clone(&artifacts)),
        artifact_options: SyncOptions::default().with_source_id("memory://primary"),
        epoch: Some(3),
        meta: serde_json::json!({"site": "primary"}),
    };
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let taken = take_recovery_point(&repo, &request, now, move |e| {
        let name = match e {
            PointEvent::Database(_) => "db",
            PointEvent::WalPosition(_) => "wal",
            PointEvent::Artifacts(_) => "artifacts",
            PointEvent::Commit => "commit",
            _ => "other",
        };
        let mut log = log.lock().unwrap();
        if log.last() != Some(&name) {
            log.push(name);
        }
    })
    .await
    .unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        ["db", "wal", "artifacts", "commit"],
        "the database first, then the artifacts, the record last"
    );

    let point = read_point(&repo, &taken.point.id).await.unwrap();
    assert_eq!(point, taken.point);
    assert_eq!(point.snapshot.as_ref(), Some(&taken.snapshot.manifest.id));
    assert_eq!(point.epoch, Some(3));
    let lsn = point.wal_position.clone().unwrap();
    assert!(lsn.contains('/'), "{lsn}");
    let inventory_id = point.inventory.clone().unwrap();
    let inventory = read_inventory(&repo, &inventory_id).await.unwrap();
    assert_eq!(inventory.entries.len(), 2);
    assert_eq!(inventory.source.as_deref(), Some("memory://primary"));
    assert_eq!(
        resolve_inventory(&repo, "latest").await.unwrap(),
        inventory_id
    );

    // A second point reads nothing that did not change, and a site
    // without artifacts records a point without an inventory.
    let taken2 = take_recovery_point(&repo, &request, time::OffsetDateTime::now_utc(), |_| {})
        .await
        .unwrap();
    let backup = taken2.artifacts.unwrap();
    assert_eq!((backup.unchanged, backup.stored), (2, 0));
    request.artifacts = None;
    let taken3 = take_recovery_point(&repo, &request, time::OffsetDateTime::now_utc(), |_| {})
        .await
        .unwrap();
    assert_eq!(taken3.point.inventory, None);
    assert_eq!(list_points(&repo).await.unwrap().len(), 3);

    // A database that cannot be reached fails before anything is recorded.
    request.database_url = "postgres://nobody@127.0.0.1:1/none".into();
    let e = take_recovery_point(&repo, &request, time::OffsetDateTime::now_utc(), |_| {})
        .await
        .unwrap_err();
    assert!(matches!(e, warmspare_replicate::Error::Snapshot(_)), "{e}");
    assert_eq!(list_points(&repo).await.unwrap().len(), 3);
}
