//! Artifact backups (inventories + blobs) and restores of older
//! inventories after the source deleted and overwrote objects.

use warmspare_replicate::object_store::ObjectStoreExt;
use warmspare_replicate::{
    Error, RecoveryPoint, SyncEvent, backup_artifacts, list_inventories, read_inventory,
    resolve_inventory, restore_artifacts, write_point,
};
use warmspare_store::layout;
use warmspare_testkit::{Fault, Op};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_source_s3_repository_restore_to_fs() {
    backup_and_restore(Kind::Fs, Kind::S3, Kind::Fs, "bkp1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_source_fs_repository_restore_to_s3() {
    backup_and_restore(Kind::S3, Kind::Fs, Kind::S3, "bkp2").await;
}

async fn backup_and_restore(from: Kind, repo_kind: Kind, to: Kind, name: &str) {
    let (Some(source), Some((repo, _dir))) =
        (store(from, name).await, repository(repo_kind, name).await)
    else {
        return;
    };
    let original = fill(source.raw()).await;
    let options = options();
    let now = time::OffsetDateTime::now_utc();
    let quiet = |_: &SyncEvent<'_>| {};

    // First backup: every blob stored once (two objects share bytes).
    put(source.raw(), "copy/of/a.txt", original["a.txt"].clone()).await;
    let first = backup_artifacts(&source.store, &repo, None, now, &options, quiet)
        .await
        .unwrap();
    assert_eq!(first.inventory.entries.len(), 10);
    assert_eq!((first.stored, first.unchanged), (9, 0), "{first:?}");
    assert_eq!(first.deduplicated, 1);
    let entry = first.inventory.get("big/object.bin").unwrap();
    assert_eq!(entry.sha256, sha(&original["big/object.bin"]));
    let blob = layout::blob(&entry.sha256).unwrap();
    let stored = repo
        .store()
        .object_store()
        .get(&blob)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(sha(&stored), entry.sha256);

    // Nothing changed: no object is read again, no blob written.
    source.faults.reset_calls();
    let second = backup_artifacts(
        &source.store,
        &repo,
        Some(&first.inventory),
        now,
        &options,
        quiet,
    )
    .await
    .unwrap();
    assert_eq!(
        (second.unchanged, second.stored, second.bytes),
        (10, 0, 0),
        "{second:?}"
    );
    assert_eq!(source.faults.calls(Op::Get), 0);
    assert_eq!(second.inventory.entries, first.inventory.entries);

    // The primary deletes one object, overwrites two (one in place with the
    // same size), adds one.
    delete(source.raw(), "a.txt").await;
    put(source.raw(), "a/x", data(77, 6)).await;
    put(source.raw(), "big/object.bin", data(78, 6 * 1024 * 1024)).await;
    put(source.raw(), "new.hart", data(79, 300)).await;
    let third = backup_artifacts(
        &source.store,
        &repo,
        Some(&second.inventory),
        now,
        &options,
        quiet,
    )
    .await
    .unwrap();
    assert_eq!((third.stored, third.unchanged), (3, 7), "{third:?}");
    assert!(third.inventory.get("a.txt").is_none());
    let ids = list_inventories(&repo).await.unwrap();
    assert_eq!(ids.len(), 3);
    assert!(ids.contains(&first.inventory.id));
    assert_eq!(
        read_inventory(&repo, &first.inventory.id).await.unwrap(),
        first.inventory
    );

    // A recovery point names the first inventory.
    let mut point = RecoveryPoint::new(now, now);
    point.inventory = Some(first.inventory.id.clone());
    write_point(&repo, &point).await.unwrap();
    let resolved = resolve_inventory(&repo, "latest").await.unwrap();
    assert_eq!(resolved, first.inventory.id);

    // Restore the first inventory into an empty store.
    let Some(target) = store(to, name).await else {
        return;
    };
    let mut wanted: std::collections::BTreeMap<String, String> = expected_digests(&original);
    wanted.insert("copy/of/a.txt".into(), sha(&original["a.txt"]));
    let report = restore_artifacts(&repo, &resolved, &target.store, &options, quiet)
        .await
        .unwrap();
    assert!(report.is_success(), "{report:?}");
    assert_eq!((report.copied, report.skipped), (10, 0));
    assert_eq!(digests(target.raw()).await, wanted);

    // Restore it into a mirror of today's source: only the deleted and the
    // overwritten objects are written (the mirror's state says the rest is
    // right, so nothing is read); the new object is reported, and removed
    // only with delete.
    let Some(mirror) = store(to, name).await else {
        return;
    };
    run(&source, &mirror, &options).await;
    mirror.faults.reset_calls();
    let state_reads = mirror
        .faults
        .inject(Fault::latency(Op::Get, std::time::Duration::ZERO).prefix(".warmspare/"));
    let report = restore_artifacts(&repo, &resolved, &mirror.store, &options, quiet)
        .await
        .unwrap();
    assert_eq!(
        (report.copied, report.skipped, report.extra, report.deleted),
        (3, 7, 1, 0),
        "{report:?}"
    );
    assert_eq!(
        mirror.faults.calls(Op::Get),
        mirror.faults.fired(state_reads)
    );
    let mut with_extra = wanted.clone();
    with_extra.insert("new.hart".into(), sha(&data(79, 300)));
    assert_eq!(digests(mirror.raw()).await, with_extra);
    let report = restore_artifacts(
        &repo,
        &resolved,
        &mirror.store,
        &options.clone().with_delete(true),
        quiet,
    )
    .await
    .unwrap();
    assert_eq!(
        (report.copied, report.skipped, report.deleted),
        (0, 10, 1),
        "{report:?}"
    );
    assert_eq!(digests(mirror.raw()).await, wanted);

    // A corrupt blob is refused while streaming; nothing lands for it.
    let victim = &first
        .inventory
        .get("core/nginx/1.25.3/20240101.meta")
        .unwrap()
        .sha256;
    let path = layout::blob(victim).unwrap();
    repo.store()
        .object_store()
        .put(&path, data(5, 100).into())
        .await
        .unwrap();
    let Some(fresh) = store(to, name).await else {
        return;
    };
    let report = restore_artifacts(
        &repo,
        &resolved,
        &fresh.store,
        &options.clone().with_retries(1),
        quiet,
    )
    .await
    .unwrap();
    assert_eq!((report.failed, report.copied), (1, 9), "{report:?}");
    assert!(
        matches!(report.errors[0], Error::DigestMismatch { .. }),
        "{:?}",
        report.errors[0]
    );
    let landed = digests(fresh.raw()).await;
    assert!(!landed.contains_key("core/nginx/1.25.3/20240101.meta"));
    for (key, digest) in &landed {
        assert_eq!(wanted.get(key), Some(digest));
    }
}
