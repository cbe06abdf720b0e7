//! Recovery points in a repository with a key: sealed with a MAC over their
//! bytes and path, read back with the key, refused when altered, moved,
//! written without a MAC or read with another key; and prune, which keeps
//! such a point, reports it, and goes on.

use std::time::Duration;

use bytes::Bytes;
use time::OffsetDateTime;
use warmspare_replicate::object_store::ObjectStoreExt;
use warmspare_replicate::object_store::path::Path;
use warmspare_replicate::{
    Error, Inventory, RecoveryPoint, RepositoryPruneOptions, SyncEvent, backup_artifacts,
    list_inventories, list_points, prune_repository, read_point, resolve_inventory, write_point,
};
use warmspare_snapshot::RetentionConfig;
use warmspare_store::{
    Encryption, EncryptionKey, Repository, SnapshotId, SnapshotKind, Store, StoreConfig, layout,
};
use warmspare_testkit::S3Server;

use crate::common::*;

const DAY: Duration = Duration::from_secs(24 * 3600);

/// One repository location, opened with different keys.
struct Location {
    config: StoreConfig,
    _dir: Option<tempfile::TempDir>,
}

impl Location {
    async fn new(kind: Kind, name: &str) -> Option<Location> {
        let (config, dir) = match kind {
            Kind::Fs => {
                let dir = tempfile::tempdir().unwrap();
                (
                    StoreConfig::new(format!("file://{}", dir.path().display())),
                    Some(dir),
                )
            }
            Kind::S3 => {
                let server = S3Server::try_shared().await.unwrap()?;
                let bucket = server.unique_bucket(name).await.unwrap();
                let config = StoreConfig::new(format!("s3://{bucket}/repo"))
                    .with_endpoint(server.endpoint())
                    .with_allow_http(true)
                    .with_region(server.region())
                    .with_credentials(server.access_key_id(), server.secret_access_key());
                (config, None)
            }
        };
        let store = Store::open(&config).unwrap();
        Repository::init(store, OffsetDateTime::now_utc())
            .await
            .unwrap();
        Some(Location { config, _dir: dir })
    }

    async fn open(&self, encryption: Encryption) -> Repository {
        let mut config = self.config.clone();
        config.encryption = encryption;
        Repository::open(Store::open(&config).unwrap())
            .await
            .unwrap()
    }

    async fn with_key(&self, key: &EncryptionKey) -> Repository {
        self.open(Encryption::Key(key.clone())).await
    }
}

async fn get(repo: &Repository, path: &Path) -> Vec<u8> {
    let store = repo.store().object_store();
    store
        .get(path)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec()
}

async fn put_raw(repo: &Repository, path: &Path, bytes: Vec<u8>) {
    let store = repo.store().object_store();
    store.put(path, Bytes::from(bytes).into()).await.unwrap();
}

/// Asserts that `result` is the repository's `Unauthenticated` naming
/// `path`, with a reason containing `because`.
fn assert_unauthenticated<T: std::fmt::Debug>(
    result: Result<T, Error>,
    path: &Path,
    because: &str,
) {
    match result {
        Err(Error::Repository(warmspare_store::Error::Unauthenticated {
            path: named,
            reason,
            ..
        })) => {
            assert_eq!(named, path.as_ref());
            assert!(reason.contains(because), "{reason}");
        }
        other => panic!("expected Unauthenticated for {path}, got {other:?}"),
    }
}

fn sample_point(at: OffsetDateTime) -> RecoveryPoint {
    let mut point = RecoveryPoint::new(at, at + Duration::from_secs(3));
    point.snapshot = Some(SnapshotId::with_suffix(at, 1));
    point.inventory = Some(SnapshotId::with_suffix(at, 2));
    point.wal_position = Some("0/3000060".into());
    point.epoch = Some(7);
    point.meta = serde_json::json!({ "site": "primary" });
    point
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_are_authenticated_with_the_key_fs() {
    authenticated(Kind::Fs, "points-auth-fs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_are_authenticated_with_the_key_s3() {
    authenticated(Kind::S3, "points-auth-s3").await;
}

async fn authenticated(kind: Kind, name: &str) {
    let Some(location) = Location::new(kind, name).await else {
        return;
    };
    let key = EncryptionKey::generate();
    let other = EncryptionKey::generate();
    let repo = location.with_key(&key).await;
    let at = time::macros::datetime!(2026-11-22 10:15:00 UTC);
    let point = sample_point(at);
    let path = layout::point(&point.id);

    // Round trip, sealed with the key.
    write_point(&repo, &point).await.unwrap();
    assert_eq!(read_point(&repo, &point.id).await.unwrap(), point);
    let stored = get(&repo, &path).await;
    let head = format!("{{\"version\":2,\"mac\":\"hmac-sha256:{}:", key.id());
    assert!(
        stored.starts_with(head.as_bytes()),
        "{}",
        String::from_utf8_lossy(&stored)
    );
    assert_eq!(
        resolve_inventory(&repo, "latest").await.unwrap(),
        point.inventory.clone().unwrap()
    );

    // Without a key it is still read (its MAC unchecked): listing and
    // reading need no key.
    let keyless = location.open(Encryption::Off).await;
    assert_eq!(read_point(&keyless, &point.id).await.unwrap(), point);

    // Another key: refused, naming the point and both key ids; `latest`
    // does not fall back to an unnamed inventory.
    let wrong = location.with_key(&other).await;
    assert_unauthenticated(read_point(&wrong, &point.id).await, &path, &key.id());
    assert_unauthenticated(read_point(&wrong, &point.id).await, &path, &other.id());
    assert_unauthenticated(resolve_inventory(&wrong, "latest").await, &path, "key id");
    assert_unauthenticated(
        resolve_inventory(&wrong, point.id.as_str()).await,
        &path,
        "key id",
    );

    // A flipped byte in the body (the point's epoch 7 -> 6): refused with
    // the key.
    let mut flipped = stored.clone();
    let at_epoch = flipped
        .windows(9)
        .position(|w| w == b"\"epoch\":7")
        .unwrap()
        + 8;
    flipped[at_epoch] ^= 1;
    put_raw(&repo, &path, flipped).await;
    assert_unauthenticated(read_point(&repo, &point.id).await, &path, "does not match");

    // The same edit with its digest recomputed, as anyone who can write to
    // the bucket can do: the MAC alone refuses it (without a key it reads).
    let mut forged = point.clone();
    forged.snapshot = Some(SnapshotId::with_suffix(at, 99));
    let body = serde_json::to_vec(&forged).unwrap();
    let plain_forgery = format!(
        "{{\"sha256\":\"{}\",\"point\":{}}}\n",
        sha(&body),
        String::from_utf8(body.clone()).unwrap()
    );
    let mac_end = stored
        .windows(12)
        .position(|w| w == b"\",\"sha256\":\"")
        .unwrap();
    let mut sealed_forgery = stored[..mac_end].to_vec();
    sealed_forgery
        .extend_from_slice(format!("\",\"sha256\":\"{}\",\"point\":", sha(&body)).as_bytes());
    sealed_forgery.extend_from_slice(&body);
    sealed_forgery.extend_from_slice(b"}\n");
    put_raw(&repo, &path, sealed_forgery).await;
    assert_unauthenticated(read_point(&repo, &point.id).await, &path, "does not match");
    assert_eq!(read_point(&keyless, &point.id).await.unwrap(), forged);

    // Without a MAC (written by someone without the key, or before the
    // repository had one): refused with the key.
    put_raw(&repo, &path, plain_forgery.into_bytes()).await;
    assert_unauthenticated(read_point(&repo, &point.id).await, &path, "no MAC");

    // The genuine record moved to another point's name: refused with the
    // key (the MAC covers the path), malformed without (the id differs).
    put_raw(&repo, &path, stored.clone()).await;
    assert_eq!(read_point(&repo, &point.id).await.unwrap(), point);
    let elsewhere = SnapshotId::with_suffix(at + DAY, 3);
    let moved = layout::point(&elsewhere);
    put_raw(&repo, &moved, stored.clone()).await;
    assert_unauthenticated(
        read_point(&repo, &elsewhere).await,
        &moved,
        "does not match",
    );
    assert!(
        matches!(
            read_point(&keyless, &elsewhere).await,
            Err(Error::Corrupt { .. })
        ),
        "without a key the id check still refuses it"
    );

    // The newest point is the moved one: `latest` refuses rather than
    // skipping it.
    assert_unauthenticated(resolve_inventory(&repo, "latest").await, &moved, "MAC");
}

/// A repository written without a key keeps the plain encoding, byte for
/// byte: no MAC, readable by builds that know no MACs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_without_a_key_keep_the_plain_encoding() {
    let Some(location) = Location::new(Kind::Fs, "points-plain").await else {
        return;
    };
    let repo = location.open(Encryption::Off).await;
    let point = sample_point(time::macros::datetime!(2026-11-22 10:15:00 UTC));
    write_point(&repo, &point).await.unwrap();
    let stored = get(&repo, &layout::point(&point.id)).await;
    let body = serde_json::to_vec(&point).unwrap();
    let mut expected = format!("{{\"sha256\":\"{}\",\"point\":", sha(&body)).into_bytes();
    expected.extend_from_slice(&body);
    expected.extend_from_slice(b"}\n");
    assert_eq!(stored, expected);
    assert_eq!(read_point(&repo, &point.id).await.unwrap(), point);

    // Configured but not loaded: refused rather than written without a MAC.
    let unloaded = location
        .open(Encryption::KeyNotLoaded {
            source: "/etc/warmspare/repo.key".into(),
        })
        .await;
    let mut later = sample_point(time::macros::datetime!(2026-11-23 10:15:00 UTC));
    later.epoch = None;
    let e = write_point(&unloaded, &later).await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::Repository(warmspare_store::Error::KeyNotLoaded { .. })
        ),
        "{e:?}"
    );
    assert_eq!(list_points(&repo).await.unwrap(), vec![point.id]);
}

async fn snapshot(repo: &Repository, at: OffsetDateTime) -> SnapshotId {
    let mut w = repo
        .begin_snapshot(SnapshotKind::Logical, at)
        .await
        .unwrap();
    w.put_file("database.pgdump", &b"dump"[..]).await.unwrap();
    w.commit(serde_json::json!({ "database": "builder" }), None, at)
        .await
        .unwrap()
        .id
}

async fn backup(
    source: &TestStore,
    repo: &Repository,
    previous: Option<&Inventory>,
    at: OffsetDateTime,
) -> Inventory {
    backup_artifacts(
        &source.store,
        repo,
        previous,
        at,
        &options(),
        |_: &SyncEvent<'_>| {},
    )
    .await
    .unwrap()
    .inventory
}

async fn exists(repo: &Repository, path: &Path) -> bool {
    match repo.store().object_store().head(path).await {
        Ok(_) => true,
        Err(warmspare_replicate::object_store::Error::NotFound { .. }) => false,
        Err(e) => panic!("head {path}: {e}"),
    }
}

/// Prune in a repository with a key: a point the key does not authenticate
/// is kept and reported, the rest of the points and snapshots are pruned,
/// and inventories and blobs wait (what the point names is unknown). With
/// another key nothing is deleted at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_keeps_unauthenticated_points_and_goes_on() {
    let (Some(source), Some(location)) = (
        store(Kind::Fs, "points-prune-src").await,
        Location::new(Kind::Fs, "points-prune").await,
    ) else {
        return;
    };
    let key = EncryptionKey::generate();
    let repo = location.with_key(&key).await;
    let base = time::macros::datetime!(2026-01-05 00:00 UTC);
    let at = |day: u32| base + DAY * day;

    // Three points 40 days apart, each with its snapshot and inventory.
    let mut taken = Vec::new();
    let mut previous: Option<Inventory> = None;
    for (i, day) in [0u32, 40, 80].into_iter().enumerate() {
        put(source.raw(), &format!("a{i}"), data(i as u64 + 1, 1000)).await;
        let inventory = backup(&source, &repo, previous.as_ref(), at(day)).await;
        let snap = snapshot(&repo, at(day)).await;
        let mut p = RecoveryPoint::new(at(day), at(day));
        p.snapshot = Some(snap.clone());
        p.inventory = Some(inventory.id.clone());
        write_point(&repo, &p).await.unwrap();
        taken.push((p.id, snap, inventory.id.clone()));
        previous = Some(inventory);
    }
    let [(p0, s0, i0), (p1, _s1, i1), (p2, s2, i2)] = <[_; 3]>::try_from(taken).unwrap();

    // The middle point is edited behind the key's back.
    let p1_path = layout::point(&p1);
    let mut bytes = get(&repo, &p1_path).await;
    let at_epoch = bytes
        .windows(10)
        .position(|w| w == b"\"epoch\":nu")
        .unwrap();
    bytes.splice(at_epoch..at_epoch + 12, b"\"epoch\":9999".iter().copied());
    put_raw(&repo, &p1_path, bytes).await;

    // keep_last = 1: p0 and p1 would go.
    let config = RetentionConfig {
        keep_last: 1,
        keep_daily: 0,
        keep_weekly: 0,
        keep_monthly: 0,
    };
    let prune = |repo: Repository| async move {
        prune_repository(
            &repo,
            &config,
            &RepositoryPruneOptions::default(),
            OffsetDateTime::now_utc(),
            |_| {},
        )
        .await
        .unwrap()
    };

    // Another key: every point and manifest is unreadable; nothing goes.
    let wrong = location.with_key(&EncryptionKey::generate()).await;
    let report = prune(wrong).await;
    assert!(report.is_ok());
    assert_eq!(report.points.unreadable.len(), 3, "{:?}", report.points);
    assert!(report.points.plan.delete.is_empty());
    assert!(report.points.deleted.is_empty());
    assert!(
        report.snapshots.deleted.is_empty(),
        "{:?}",
        report.snapshots
    );
    assert!(report.inventories.deleted.is_empty());
    assert!(report.inventories.deferred.is_some());
    assert_eq!(report.blobs.deleted, 0);
    assert_eq!(list_points(&repo).await.unwrap().len(), 3);
    assert_eq!(list_inventories(&repo).await.unwrap().len(), 3);

    // The right key: p1 is kept and reported, p0 and its snapshot go, the
    // newest stays; inventories and blobs are left for a later prune.
    let report = prune(location.with_key(&key).await).await;
    assert!(report.is_ok());
    assert_eq!(report.points.unreadable.len(), 1, "{:?}", report.points);
    let (unreadable, reason) = &report.points.unreadable[0];
    assert_eq!(unreadable, &p1);
    assert!(
        reason.contains(p1_path.as_ref()) && reason.contains("not authenticated by this key"),
        "{reason}"
    );
    assert_eq!(report.points.deleted, vec![p0.clone()]);
    assert!(
        report.snapshots.deleted.contains(&s0),
        "{:?}",
        report.snapshots
    );
    assert!(!report.snapshots.deleted.contains(&s2));
    let deferred = report.inventories.deferred.as_deref().unwrap_or_default();
    assert!(deferred.contains(p1.as_str()), "{deferred}");
    assert!(report.blobs.deferred.is_some());
    assert!(report.inventories.deleted.is_empty());
    assert_eq!(
        list_points(&repo).await.unwrap(),
        vec![p2.clone(), p1.clone()]
    );
    assert!(exists(&repo, &p1_path).await);
    assert_eq!(
        list_inventories(&repo).await.unwrap(),
        vec![i2.clone(), i1.clone(), i0.clone()]
    );

    // Once the operator removes the point, inventories are collected again.
    repo.store().object_store().delete(&p1_path).await.unwrap();
    let report = prune(location.with_key(&key).await).await;
    assert!(report.is_ok());
    assert!(report.points.unreadable.is_empty());
    assert_eq!(report.inventories.deferred, None);
    assert_eq!(report.inventories.deleted, vec![i1, i0]);
    assert_eq!(list_inventories(&repo).await.unwrap(), vec![i2.clone()]);
    assert_eq!(read_point(&repo, &p2).await.unwrap().inventory, Some(i2));
}
