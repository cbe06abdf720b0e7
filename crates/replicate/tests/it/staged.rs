//! Staged files (`name#digits`) that a run killed mid-copy leaves in a
//! `file://` target: no listing shows them, so the mirror removes those
//! older than an hour once it has written to the target, and a dry run
//! leaves them alone.

use std::fs::File;
use std::time::{Duration, SystemTime};

use warmspare_replicate::{SyncEvent, sync_endpoints};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staged_files_left_by_a_dead_run_are_removed_by_the_next_writing_run() {
    let source = store(Kind::Fs, "staged-src").await.unwrap();
    let target = store(Kind::Fs, "staged-dst").await.unwrap();
    put(source.raw(), "a/one", data(1, 10_000)).await;
    let (from, to) = (local(&source), local(&target));
    sync_endpoints(&from, &to, &options(), |_: &SyncEvent<'_>| {})
        .await
        .unwrap();

    // What a kill -9 during the copy of `a/two` leaves, two hours ago; and
    // a copy of another live run, in progress.
    let root = target.dir().unwrap();
    let dead = root.join("a/two#4242000001");
    File::create(&dead)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(7200))
        .unwrap();
    let live = root.join("a/three#4343000001");
    std::fs::write(&live, b"partial").unwrap();
    put(source.raw(), "a/two", data(2, 10_000)).await;

    // A dry run changes nothing.
    let dry = options().with_dry_run(true);
    let report = sync_endpoints(&from, &to, &dry, |_: &SyncEvent<'_>| {})
        .await
        .unwrap();
    assert_eq!(report.copied, 1, "{report:?}");
    assert!(dead.exists());

    // The next real run copies `a/two` and removes the dead run's file.
    let report = sync_endpoints(&from, &to, &options(), |_: &SyncEvent<'_>| {})
        .await
        .unwrap();
    assert_eq!(report.copied, 1, "{report:?}");
    assert!(!dead.exists(), "the dead run's staged file is still there");
    assert!(live.exists(), "a fresh staged file was removed");
    assert_eq!(digests(target.raw()).await, digests(source.raw()).await);
}
