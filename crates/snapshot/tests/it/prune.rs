//! `prune` against real repositories: retention per database, incomplete
//! snapshots, dry runs, and deletion that hides a snapshot before it
//! removes its data.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use time::macros::datetime;
use warmspare_snapshot::retention::DeleteReason;
use warmspare_snapshot::{PruneOptions, RetentionConfig, SnapshotStatus, catalog, prune};
use warmspare_store::{Repository, SnapshotId, SnapshotKind, Store};
use warmspare_testkit::{Fault, FaultStore, Op};

use crate::backend;

async fn snapshot(repo: &Repository, at: OffsetDateTime, database: &str) -> SnapshotId {
    let mut w = repo
        .begin_snapshot(SnapshotKind::Logical, at)
        .await
        .unwrap();
    w.put_file("database.pgdump", &b"dump"[..]).await.unwrap();
    let meta = serde_json::json!({ "database": database });
    w.commit(meta, None, at).await.unwrap().id
}

async fn abandoned(repo: &Repository, at: OffsetDateTime) -> SnapshotId {
    let mut w = repo
        .begin_snapshot(SnapshotKind::Logical, at)
        .await
        .unwrap();
    w.put_file("database.pgdump", &b"partial"[..])
        .await
        .unwrap();
    w.id().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_applies_retention_per_database() {
    let now = datetime!(2026-11-22 12:00 UTC);
    for backend in backend::all("prune").await {
        let repo = &backend.repo;
        // Database "a": two a day for five days. Database "b": one, old.
        let mut a = Vec::new();
        for day in 17..=21u8 {
            for hour in [6, 18] {
                let at = now.replace_day(day).unwrap().replace_hour(hour).unwrap();
                a.push(snapshot(repo, at, "a").await);
            }
        }
        let b = snapshot(repo, datetime!(2026-10-01 00:00 UTC), "b").await;
        let old_partial = abandoned(repo, now - Duration::from_secs(3 * 24 * 3600)).await;
        let fresh_partial = abandoned(repo, now - Duration::from_secs(600)).await;

        let config = RetentionConfig {
            keep_last: 2,
            keep_daily: 3,
            keep_weekly: 0,
            keep_monthly: 0,
        };
        let options = PruneOptions::default().with_dry_run(true);
        let dry = prune(repo, &config, &options, now).await.unwrap();
        assert!(dry.deleted.is_empty());
        assert_eq!(dry.groups.len(), 2);
        let planned: Vec<_> = dry.planned_deletions().map(|d| d.id.clone()).collect();
        // "a": keep the newest two (day 21) and the newest of days 20, 19.
        let mut expected: Vec<SnapshotId> =
            [6, 4, 3, 2, 1, 0].iter().map(|&i| a[i].clone()).collect();
        expected.push(old_partial.clone());
        assert_eq!(planned, expected, "{}", backend.name);
        assert_eq!(catalog::list(repo, false).await.unwrap().len(), 11);

        let report = prune(repo, &config, &PruneOptions::default(), now)
            .await
            .unwrap();
        assert!(report.is_ok(), "{:?}", report.failures);
        assert_eq!(report.deleted, expected);
        let left: Vec<SnapshotId> = catalog::list(repo, false)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(
            left,
            vec![a[9].clone(), a[8].clone(), a[7].clone(), a[5].clone(), b]
        );
        let incomplete = repo.incomplete_snapshots().await.unwrap();
        assert!(
            incomplete.contains(&fresh_partial),
            "within the grace period"
        );

        // Idempotent.
        let again = prune(repo, &config, &PruneOptions::default(), now)
            .await
            .unwrap();
        assert_eq!(
            again
                .groups
                .iter()
                .map(|g| g.plan.delete.len())
                .sum::<usize>(),
            0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_hides_the_snapshot_before_removing_data() {
    let backend = backend::filesystem().await;
    let faults = FaultStore::new(Arc::clone(backend.repo.store().object_store()));
    let store = Store::from_parts(
        "faulty",
        Arc::new(faults.clone()),
        Arc::clone(backend.repo.store().cas()),
    );
    let repo = Repository::open(store).await.unwrap();
    let now = datetime!(2026-11-22 12:00 UTC);
    let old = snapshot(&repo, now - Duration::from_secs(7200), "a").await;
    let new = snapshot(&repo, now - Duration::from_secs(3600), "a").await;

    // The data object cannot be deleted: the manifest went first, so the
    // snapshot is invisible already, and counted as incomplete.
    faults.inject(Fault::error(Op::Delete).prefix(format!("snapshots/{old}/database")));
    let config = RetentionConfig {
        keep_last: 1,
        keep_daily: 0,
        keep_weekly: 0,
        keep_monthly: 0,
    };
    let report = prune(&repo, &config, &PruneOptions::default(), now)
        .await
        .unwrap();
    assert_eq!(report.failures.len(), 1, "{report:?}");
    assert_eq!(report.failures[0].0, old);
    assert_eq!(repo.list_snapshots().await.unwrap(), vec![new.clone()]);
    let listed = catalog::list(&repo, true).await.unwrap();
    assert_eq!(listed[1].id, old);
    assert_eq!(listed[1].status, SnapshotStatus::Incomplete);

    // Once deletes work again, a prune with no grace finishes the job.
    faults.clear();
    let options = PruneOptions::default().with_incomplete_grace(Duration::ZERO);
    let report = prune(&repo, &config, &options, now).await.unwrap();
    assert!(report.is_ok());
    assert_eq!(report.incomplete.len(), 1);
    assert_eq!(report.incomplete[0].reason, DeleteReason::Incomplete);
    assert_eq!(report.deleted, vec![old]);
    assert!(report.objects_deleted >= 1);
    assert_eq!(repo.list_snapshots().await.unwrap(), vec![new]);
}

/// Snapshots a kept recovery point names are never deleted, whatever the
/// rules say; an incomplete one named so is left alone too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_snapshots_are_kept() {
    let backend = backend::filesystem().await;
    let repo = &backend.repo;
    let now = datetime!(2026-11-22 12:00 UTC);
    let oldest = snapshot(repo, now - Duration::from_secs(3 * 3600), "a").await;
    let middle = snapshot(repo, now - Duration::from_secs(2 * 3600), "a").await;
    let newest = snapshot(repo, now - Duration::from_secs(3600), "a").await;
    let partial = abandoned(repo, now - Duration::from_secs(3 * 24 * 3600)).await;
    let config = RetentionConfig {
        keep_last: 1,
        keep_daily: 0,
        keep_weekly: 0,
        keep_monthly: 0,
    };
    let protected: std::collections::BTreeSet<SnapshotId> =
        [oldest.clone(), partial.clone()].into();
    let options = PruneOptions::default().with_protected(protected);
    let report = prune(repo, &config, &options, now).await.unwrap();
    assert!(report.is_ok(), "{:?}", report.failures);
    assert_eq!(report.deleted, vec![middle], "only the unprotected one");
    let keep = &report.groups[0].plan.keep;
    assert_eq!(keep.len(), 2);
    assert_eq!(keep[1].id, oldest);
    assert_eq!(
        keep[1].reasons,
        vec![warmspare_snapshot::retention::KeepReason::Referenced]
    );
    assert!(report.incomplete.is_empty(), "{:?}", report.incomplete);
    assert_eq!(
        repo.list_snapshots().await.unwrap(),
        vec![newest, oldest.clone()]
    );
    assert!(
        repo.incomplete_snapshots()
            .await
            .unwrap()
            .contains(&partial)
    );
}
