//! The mirror in every direction: full copy, no-change pass, changes,
//! deletions, dry run.

use warmspare_replicate::SyncEvent;
use warmspare_testkit::{Fault, Op};

use crate::common::*;

/// Instantiates the lifecycle test once per direction.
macro_rules! directions {
    ($($name:ident: $from:expr => $to:expr),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            lifecycle($from, $to, stringify!($name)).await;
        }
    )*};
}

directions! {
    fs_to_s3: Kind::Fs => Kind::S3,
    s3_to_fs: Kind::S3 => Kind::Fs,
    s3_to_s3: Kind::S3 => Kind::S3,
    fs_to_fs: Kind::Fs => Kind::Fs,
}

async fn lifecycle(from: Kind, to: Kind, name: &str) {
    let (Some(source), Some(target)) = (store(from, name).await, store(to, name).await) else {
        return;
    };
    let mut objects = fill(source.raw()).await;
    let options = options().with_delete(true);

    // Full copy.
    let events = std::sync::Arc::new(std::sync::Mutex::new((0u64, 0u64, 0u64)));
    let seen = std::sync::Arc::clone(&events);
    let report = warmspare_replicate::sync(
        &source.store,
        &target.store,
        &options,
        move |e: &SyncEvent<'_>| {
            let mut seen = seen.lock().unwrap();
            match e {
                SyncEvent::Listed { .. } => seen.0 += 1,
                SyncEvent::Copied { .. } => seen.1 += 1,
                SyncEvent::Bytes(n) => seen.2 += n,
                _ => {}
            }
        },
    )
    .await
    .unwrap();
    let total: u64 = objects.values().map(|v| v.len() as u64).sum();
    assert!(report.is_success(), "{report:?}");
    assert_eq!((report.listed, report.copied, report.skipped), (9, 9, 0));
    assert_eq!(report.bytes, total);
    assert_eq!(*events.lock().unwrap(), (9, 9, total));
    assert_eq!(digests(target.raw()).await, expected_digests(&objects));

    // No change: listings and the state record only, no object body read
    // on either side, no per-object request at all.
    source.faults.reset_calls();
    target.faults.reset_calls();
    let state_reads = target
        .faults
        .inject(Fault::latency(Op::Get, std::time::Duration::ZERO).prefix(".warmspare/"));
    let report = run(&source, &target, &options).await;
    assert_eq!(
        (
            report.copied,
            report.skipped,
            report.hashed,
            report.bytes_read
        ),
        (0, 9, 0, 0),
        "{report:?}"
    );
    assert_eq!(source.faults.calls(Op::Get), 0);
    assert_eq!(source.faults.calls(Op::Head), 0);
    assert_eq!(target.faults.calls(Op::Head), 0);
    let target_gets = target.faults.calls(Op::Get);
    assert!(target_gets >= 1);
    assert_eq!(
        target_gets,
        target.faults.fired(state_reads),
        "only the state record is read"
    );
    target.faults.clear();

    // Changes: same size new bytes, new size, added, deleted.
    let same_size = "core/nginx/1.25.3/20240101/core-nginx.hart";
    let resized = "a/x";
    let added = "core/new/1.0/x.hart";
    let deleted = "a0";
    for (key, bytes) in [
        (same_size, data(100, 70_000)),
        (resized, data(101, 9)),
        (added, data(102, 1234)),
    ] {
        put(source.raw(), key, bytes.clone()).await;
        objects.insert(key.to_string(), bytes);
    }
    delete(source.raw(), deleted).await;
    objects.remove(deleted);
    let report = run(&source, &target, &options).await;
    assert!(report.is_success(), "{report:?}");
    assert_eq!(
        (report.copied, report.deleted, report.skipped),
        (3, 1, 6),
        "{report:?}"
    );
    assert_eq!(digests(target.raw()).await, expected_digests(&objects));

    // Dry run: plans, writes nothing.
    put(source.raw(), "dry/new", data(103, 10)).await;
    put(source.raw(), same_size, data(104, 70_000)).await;
    delete(source.raw(), "a.txt").await;
    let before = digests(target.raw()).await;
    target.faults.reset_calls();
    let report = run(&source, &target, &options.clone().with_dry_run(true)).await;
    assert!(report.dry_run);
    assert_eq!((report.copied, report.deleted), (2, 1), "{report:?}");
    for op in [
        Op::Put,
        Op::PutMultipart,
        Op::PutPart,
        Op::CompleteMultipart,
        Op::Delete,
        Op::Copy,
        Op::Rename,
    ] {
        assert_eq!(target.faults.calls(op), 0, "{op:?}");
    }
    assert_eq!(digests(target.raw()).await, before);

    // And the real run converges.
    let report = run(&source, &target, &options).await;
    assert_eq!((report.copied, report.deleted), (2, 1), "{report:?}");
    assert_eq!(digests(target.raw()).await, digests(source.raw()).await);
}

/// A lost state record costs hashing, never a wrong answer; a foreign
/// source identity makes source tokens untrusted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_or_foreign_state_costs_only_hashing() {
    let (Some(source), Some(target)) =
        (store(Kind::Fs, "lost").await, store(Kind::Fs, "lost").await)
    else {
        return;
    };
    let objects = fill(source.raw()).await;
    let options = options().with_source_id("file:///primary");
    run(&source, &target, &options).await;

    // Remove the state; change one object without changing its size.
    delete(target.raw(), warmspare_replicate::state::STATE_PATH).await;
    let changed = "core/nginx/1.25.3/20240101.meta";
    put(source.raw(), changed, data(55, 100)).await;
    let report = run(&source, &target, &options).await;
    assert_eq!((report.copied, report.skipped), (1, 8), "{report:?}");
    // Both sides of every same-size pair were hashed.
    assert_eq!(report.hashed, 18);
    let mut expected = expected_digests(&objects);
    expected.insert(changed.into(), sha(&data(55, 100)));
    assert_eq!(digests(target.raw()).await, expected);

    // Another source identity: the target digests stay trusted, only the
    // source is hashed.
    let report = run(
        &source,
        &target,
        &options.clone().with_source_id("s3://other"),
    )
    .await;
    assert_eq!(
        (report.copied, report.skipped, report.hashed),
        (0, 9, 9),
        "{report:?}"
    );
    // Then the state is the other source's, and a pass needs no reads.
    let report = run(&source, &target, &options.with_source_id("s3://other")).await;
    assert_eq!(
        (report.skipped, report.hashed, report.bytes_read),
        (9, 0, 0),
        "{report:?}"
    );

    // A scrub re-hashes everything and finds corruption at rest.
    put(target.raw(), "a.txt", b"rot!!".to_vec()).await;
    let report = run(
        &source,
        &target,
        &crate::common::options().with_rehash(true),
    )
    .await;
    assert_eq!(report.copied, 1, "{report:?}");
    assert_eq!(digests(target.raw()).await, digests(source.raw()).await);
}

/// The byte-rate limit really limits (a lower bound only: a slow machine
/// cannot make it fail).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_limit_limits() {
    let (Some(source), Some(target)) = (store(Kind::Fs, "bw").await, store(Kind::Fs, "bw").await)
    else {
        return;
    };
    for i in 0..6 {
        put(source.raw(), &format!("f{i}"), data(i, 512 * 1024)).await;
    }
    let started = std::time::Instant::now();
    let report = run(&source, &target, &options().with_bwlimit(Some(1024 * 1024))).await;
    assert_eq!(report.copied, 6);
    // 3 MiB at 1 MiB/s, less the initial burst of 256 KiB.
    assert!(
        started.elapsed().as_secs_f64() >= 2.7,
        "{:?}",
        started.elapsed()
    );
}
