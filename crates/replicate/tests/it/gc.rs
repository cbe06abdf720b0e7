//! `prune_repository`: retention of recovery points, snapshots kept for
//! the points that name them, inventories, the sweep of unreferenced
//! blobs, and the activity markers that keep a running backup safe.

use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use time::OffsetDateTime;
use warmspare_replicate::object_store::ObjectStoreExt;
use warmspare_replicate::object_store::path::Path;
use warmspare_replicate::{
    Inventory, RecoveryPoint, RepositoryPruneOptions, RepositoryPruneReport, SyncEvent,
    backup_artifacts, list_inventories, list_points, prune_repository, restore_artifacts,
    write_point,
};
use warmspare_snapshot::RetentionConfig;
use warmspare_snapshot::retention::KeepReason;
use warmspare_store::{Repository, SnapshotId, SnapshotKind, Store};
use warmspare_testkit::{FaultStore, Op};

use crate::common::*;

const DAY: Duration = Duration::from_secs(24 * 3600);

fn monthly(months: u32) -> RetentionConfig {
    RetentionConfig {
        keep_last: 1,
        keep_daily: 0,
        keep_weekly: 0,
        keep_monthly: months,
    }
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

async fn point(
    repo: &Repository,
    at: OffsetDateTime,
    snapshot: &SnapshotId,
    inventory: &Inventory,
) -> SnapshotId {
    let mut p = RecoveryPoint::new(at, at);
    p.snapshot = Some(snapshot.clone());
    p.inventory = Some(inventory.id.clone());
    write_point(repo, &p).await.unwrap();
    p.id
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

async fn blob_names(repo: &Repository) -> Vec<String> {
    let metas: Vec<_> = repo
        .store()
        .object_store()
        .list(Some(&Path::from("blobs")))
        .try_collect()
        .await
        .unwrap();
    let mut names: Vec<String> = metas
        .into_iter()
        .filter_map(|m| m.location.filename().map(str::to_owned))
        .collect();
    names.sort();
    names
}

async fn prune(repo: &Repository, options: &RepositoryPruneOptions) -> RepositoryPruneReport {
    prune_repository(
        repo,
        &monthly(2),
        options,
        OffsetDateTime::now_utc(),
        |_| {},
    )
    .await
    .unwrap()
}

fn ids<'a>(items: impl IntoIterator<Item = &'a SnapshotId>) -> Vec<SnapshotId> {
    items.into_iter().cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_collects_points_snapshots_inventories_and_blobs_fs() {
    collect(Kind::Fs, "gc-fs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_collects_points_snapshots_inventories_and_blobs_s3() {
    collect(Kind::S3, "gc-s3").await;
}

/// Two months of history under keep_last = 1, keep_monthly = 2: the
/// newest point of each month is kept, and with it the snapshot and the
/// inventory it names, although their own retention would not keep them.
async fn collect(kind: Kind, name: &str) {
    let (Some(source), Some((repo, _dir))) =
        (store(Kind::Fs, name).await, repository(kind, name).await)
    else {
        return;
    };
    // Fixed dates, so that the months fall where the test needs them.
    let base = time::macros::datetime!(2026-01-05 00:00 UTC);
    let at = |day: u32| base + DAY * day;
    let (a, b, b2, c, d) = (
        data(1, 100),
        data(2, 200),
        data(3, 300),
        data(4, 400),
        data(5, 500),
    );

    // Month one: p0 (A, D), p1 (A, B), then standalone s1b, inv1b (B, C).
    put(source.raw(), "a", a.clone()).await;
    put(source.raw(), "d", d.clone()).await;
    let inv0 = backup(&source, &repo, None, at(0)).await;
    let s0 = snapshot(&repo, at(0)).await;
    let p0 = point(&repo, at(0), &s0, &inv0).await;
    delete(source.raw(), "d").await;
    put(source.raw(), "b", b.clone()).await;
    let inv1 = backup(&source, &repo, Some(&inv0), at(4)).await;
    let s1 = snapshot(&repo, at(4)).await;
    let p1 = point(&repo, at(4), &s1, &inv1).await;
    delete(source.raw(), "a").await;
    put(source.raw(), "c", c.clone()).await;
    let inv1b = backup(&source, &repo, Some(&inv1), at(19)).await;
    let s1b = snapshot(&repo, at(19)).await;
    // Month two (30+ days later): p2 (B', C), then standalone s2b, inv2b.
    put(source.raw(), "b", b2.clone()).await;
    let inv2 = backup(&source, &repo, Some(&inv1b), at(35)).await;
    let s2 = snapshot(&repo, at(35)).await;
    let p2 = point(&repo, at(35), &s2, &inv2).await;
    let inv2b = backup(&source, &repo, Some(&inv2), at(36)).await;
    let s2b = snapshot(&repo, at(36)).await;
    // A month boundary must lie between day 4..19 and day 35..36.
    assert_ne!(at(19).month(), at(35).month(), "test setup");
    assert_eq!(at(0).month(), at(19).month(), "test setup");
    assert_eq!(blob_names(&repo).await.len(), 5);

    // Dry run, default blob grace: the plan, and young blobs kept.
    let dry = prune(&repo, &RepositoryPruneOptions::default().with_dry_run(true)).await;
    assert!(dry.is_ok());
    assert_eq!(
        ids(dry.points.plan.delete.iter().map(|d| &d.id)),
        vec![p0.clone()]
    );
    assert_eq!(
        ids(dry.points.plan.keep.iter().map(|k| &k.id)),
        [p2.clone(), p1.clone()]
    );
    let snapshot_plan = &dry.snapshots.groups[0].plan;
    assert_eq!(
        ids(snapshot_plan.delete.iter().map(|d| &d.id)),
        vec![s0.clone()]
    );
    assert_eq!(
        ids(snapshot_plan.keep.iter().map(|k| &k.id)),
        [s2b.clone(), s2.clone(), s1b.clone(), s1.clone()]
    );
    for k in &snapshot_plan.keep {
        let referenced = k.reasons.contains(&KeepReason::Referenced);
        assert_eq!(referenced, k.id == s1 || k.id == s2, "{k:?}");
    }
    assert_eq!(
        ids(dry.inventories.plan.delete.iter().map(|d| &d.id)),
        vec![inv0.id.clone()]
    );
    assert_eq!(dry.inventories.plan.keep.len(), 4);
    assert_eq!(dry.inventories.deferred, None);
    assert_eq!(dry.blobs.deferred, None);
    assert_eq!((dry.blobs.listed, dry.blobs.referenced), (5, 4));
    assert_eq!(
        (dry.blobs.young, dry.blobs.deletable),
        (1, 0),
        "{:?}",
        dry.blobs
    );
    // Nothing was deleted, no marker was written.
    assert_eq!(list_points(&repo).await.unwrap().len(), 3);
    assert_eq!(list_inventories(&repo).await.unwrap().len(), 5);
    assert_eq!(blob_names(&repo).await.len(), 5);

    // With no blob grace, D (named only by inv0) is deletable.
    let no_grace = RepositoryPruneOptions::default().with_blob_grace(Duration::ZERO);
    let dry = prune(&repo, &no_grace.clone().with_dry_run(true)).await;
    assert_eq!(dry.blobs.deletable, 1);
    assert_eq!(dry.blobs.listed_deletable, [sha(&d)]);
    assert_eq!(dry.blobs.deletable_bytes, 500);

    let report = prune(&repo, &no_grace).await;
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.points.deleted, vec![p0.clone()]);
    assert_eq!(report.snapshots.deleted, vec![s0.clone()]);
    assert_eq!(report.inventories.deleted, vec![inv0.id.clone()]);
    assert_eq!((report.blobs.deleted, report.blobs.deleted_bytes), (1, 500));
    assert!(
        report.points.broken.is_empty(),
        "{:?}",
        report.points.broken
    );
    let mut expected: Vec<String> = [&a, &b, &b2, &c].iter().map(|x| sha(x)).collect();
    expected.sort();
    assert_eq!(blob_names(&repo).await, expected);
    assert_eq!(list_points(&repo).await.unwrap(), [p2.clone(), p1.clone()]);
    assert_eq!(
        repo.list_snapshots().await.unwrap(),
        [s2b.clone(), s2.clone(), s1b.clone(), s1.clone()]
    );
    let activity: Vec<_> = repo
        .store()
        .object_store()
        .list(Some(&Path::from("activity")))
        .try_collect()
        .await
        .unwrap();
    assert!(
        activity.is_empty(),
        "prune released its marker: {activity:?}"
    );

    // The oldest kept point still restores its artifacts.
    let Some(target) = store(Kind::Fs, name).await else {
        return;
    };
    let restored = restore_artifacts(
        &repo,
        &inv1.id,
        &target.store,
        &options(),
        |_: &SyncEvent<'_>| {},
    )
    .await
    .unwrap();
    assert!(restored.is_success(), "{restored:?}");
    assert_eq!(
        digests(target.raw()).await,
        [("a".to_owned(), sha(&a)), ("b".to_owned(), sha(&b))].into()
    );

    // Idempotent.
    let again = prune(&repo, &no_grace).await;
    assert!(again.points.deleted.is_empty());
    assert!(again.snapshots.deleted.is_empty());
    assert!(again.inventories.deleted.is_empty());
    assert_eq!(again.blobs.deleted, 0);
    let _ = inv2b;

    // A point whose snapshot and inventory are gone is reported broken.
    let missing = SnapshotId::with_suffix(at(40), 1);
    let mut lost = RecoveryPoint::new(at(40), at(40));
    lost.snapshot = Some(missing.clone());
    lost.inventory = Some(missing);
    write_point(&repo, &lost).await.unwrap();
    let dry = prune(&repo, &no_grace.with_dry_run(true)).await;
    assert_eq!(dry.points.broken.len(), 2, "{:?}", dry.points.broken);
    assert!(dry.points.broken.iter().all(|(id, _)| *id == lost.id));
}

/// Writes another process's activity marker, as `backup_artifacts` and
/// `prune_repository` do.
async fn fake_marker(repo: &Repository, activity: &str, stale_after: u64) -> Path {
    let now = OffsetDateTime::now_utc();
    let id = SnapshotId::new(now);
    let path = Path::from(format!("activity/{activity}/{id}.json"));
    let body = serde_json::json!({
        "version": 1,
        "activity": activity,
        "id": id,
        "started": now.format(&time::format_description::well_known::Rfc3339).unwrap(),
        "stale_after_seconds": stale_after,
    });
    repo.store()
        .object_store()
        .put(&path, serde_json::to_vec(&body).unwrap().into())
        .await
        .unwrap();
    path
}

/// While an artifact backup runs, prune leaves inventories and blobs
/// alone (points and snapshots are still pruned); a marker whose process
/// died goes stale and is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_backup_defers_the_collection_of_inventories_and_blobs() {
    let (Some(source), Some((repo, _dir))) = (
        store(Kind::Fs, "gc-defer").await,
        repository(Kind::Fs, "gc-defer").await,
    ) else {
        return;
    };
    let now = OffsetDateTime::now_utc();
    put(source.raw(), "x", data(1, 10)).await;
    let old = backup(&source, &repo, None, now - 3 * DAY).await;
    delete(source.raw(), "x").await;
    put(source.raw(), "y", data(2, 10)).await;
    backup(&source, &repo, Some(&old), now - 2 * DAY).await;
    let s_old = snapshot(&repo, now - 3 * DAY).await;
    let s_new = snapshot(&repo, now - 2 * DAY).await;

    let marker = fake_marker(&repo, "backup", 600).await;
    let options = RepositoryPruneOptions::default().with_blob_grace(Duration::ZERO);
    let config = RetentionConfig {
        keep_last: 1,
        keep_daily: 0,
        keep_weekly: 0,
        keep_monthly: 0,
    };
    let report = prune_repository(&repo, &config, &options, now, |_| {})
        .await
        .unwrap();
    assert_eq!(report.snapshots.deleted, [s_old], "snapshots are pruned");
    let deferred = report.inventories.deferred.clone().expect("deferred");
    assert!(deferred.contains(marker.as_ref()), "{deferred}");
    assert!(deferred.contains("artifact backup"), "{deferred}");
    assert_eq!(report.blobs.deferred.as_deref(), Some(deferred.as_str()));
    assert!(report.inventories.deleted.is_empty());
    assert_eq!(report.inventories.plan.delete.len(), 1, "planned, not done");
    assert_eq!(report.blobs.deleted, 0);
    assert_eq!(list_inventories(&repo).await.unwrap().len(), 2);
    assert_eq!(blob_names(&repo).await.len(), 2);
    repo.store().object_store().delete(&marker).await.unwrap();

    // A marker that stopped being refreshed goes stale after the lifetime
    // it declares: then prune collects, and removes the marker.
    let dead = fake_marker(&repo, "backup", 1).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let dry = prune_repository(
            &repo,
            &config,
            &options.clone().with_dry_run(true),
            OffsetDateTime::now_utc(),
            |_| {},
        )
        .await
        .unwrap();
        if dry.blobs.deferred.is_none() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the marker never went stale"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let report = prune_repository(&repo, &config, &options, OffsetDateTime::now_utc(), |_| {})
        .await
        .unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.inventories.deleted, vec![old.id.clone()]);
    assert_eq!(report.blobs.deleted, 1);
    assert_eq!(blob_names(&repo).await, [sha(&data(2, 10))]);
    assert!(
        repo.store().object_store().head(&dead).await.is_err(),
        "the stale marker was removed"
    );
    let _ = s_new;
}

/// A backup that starts while prune runs waits for prune's marker to go
/// before it reads or writes anything in the repository.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_waits_for_a_running_prune() {
    let (Some(source), Some((base, _dir))) = (
        store(Kind::Fs, "gc-wait").await,
        repository(Kind::Fs, "gc-wait").await,
    ) else {
        return;
    };
    let faults = FaultStore::new(Arc::clone(base.store().object_store()));
    let repo = Repository::open(Store::from_parts(
        "counted",
        Arc::new(faults.clone()),
        Arc::clone(base.store().cas()),
    ))
    .await
    .unwrap();
    put(source.raw(), "x", data(1, 1000)).await;
    let prune_marker = fake_marker(&repo, "prune", 600).await;
    faults.reset_calls();

    let task = {
        let (store, repo) = (Arc::clone(&source.store), repo.clone());
        tokio::spawn(async move {
            backup_artifacts(
                &store,
                &repo,
                None,
                OffsetDateTime::now_utc(),
                &options(),
                |_: &SyncEvent<'_>| {},
            )
            .await
        })
    };
    // The backup wrote its marker and looked for prune's twice: it waits.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while faults.calls(Op::List) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the backup never looked"
        );
        assert!(!task.is_finished(), "{:?}", task.await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!task.is_finished());
    let backups: Vec<_> = repo
        .store()
        .object_store()
        .list(Some(&Path::from("activity/backup")))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(backups.len(), 1, "its own marker is there");
    assert!(blob_names(&repo).await.is_empty(), "nothing written yet");
    assert!(list_inventories(&repo).await.unwrap().is_empty());
    assert_eq!(faults.calls(Op::Put), 1, "its marker, nothing else");

    // Prune finishes: the backup goes on, and releases its marker.
    repo.store()
        .object_store()
        .delete(&prune_marker)
        .await
        .unwrap();
    let done = tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("the backup went on")
        .unwrap()
        .unwrap();
    assert_eq!(done.stored, 1);
    assert_eq!(
        list_inventories(&repo).await.unwrap(),
        vec![done.inventory.id.clone()]
    );
    let left: Vec<_> = repo
        .store()
        .object_store()
        .list(Some(&Path::from("activity")))
        .try_collect()
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
}
