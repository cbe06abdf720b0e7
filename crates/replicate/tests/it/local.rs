//! The mirror with `file://` endpoints read and written directly
//! (`Endpoint::local`): the same lifecycle as through `LocalFileSystem`,
//! faults of a store on the other end, a source changed mid-copy, and
//! checkpoints that spare an interrupted run from reading again.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use warmspare_replicate::object_store::ObjectStore;
use warmspare_replicate::object_store::path::Path;
use warmspare_replicate::{
    Endpoint, SyncEvent, SyncOptions, SyncReport, sync_endpoints, sync_endpoints_until,
};
use warmspare_testkit::{Fault, Op};

use crate::common::*;

/// The store through its fault injection.
fn faulty(store: &TestStore) -> Endpoint {
    Endpoint::new(Arc::clone(&store.store))
}

async fn run_endpoints(source: &Endpoint, target: &Endpoint, options: &SyncOptions) -> SyncReport {
    sync_endpoints(source, target, options, |_: &SyncEvent<'_>| {})
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directories_mirror_directly() {
    let (Some(src), Some(dst)) = (store(Kind::Fs, "la").await, store(Kind::Fs, "lb").await) else {
        return;
    };
    let (source, target) = (local(&src), local(&dst));
    let mut objects = fill(src.raw()).await;
    let options = options().with_delete(true);

    let report = run_endpoints(&source, &target, &options).await;
    assert!(report.is_success(), "{report:?}");
    assert_eq!((report.listed, report.copied, report.skipped), (9, 9, 0));
    assert_eq!(digests(dst.raw()).await, expected_digests(&objects));
    assert!(staged_files(dst.dir().unwrap()).is_empty());

    // No change: nothing is read. Proof: rewrite a source file in place
    // with other bytes of the same size and put its time back. A pass that
    // read it would copy it; this one does not even notice.
    let key = "core/nginx/1.25.3/20240101.meta";
    let path = src.dir().unwrap().join(key);
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    std::fs::write(&path, data(77, 100)).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let report = run_endpoints(&source, &target, &options).await;
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
    assert_eq!(digests(dst.raw()).await, expected_digests(&objects));
    // The same pass through LocalFileSystem agrees: the tokens recorded
    // by the direct path are those LocalFileSystem lists.
    let report = run(&src, &dst, &options).await;
    assert_eq!((report.copied, report.hashed), (0, 0), "{report:?}");

    // Changes: a new time, a new size, an added and a deleted object.
    let later = SystemTime::now() + Duration::from_secs(3);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(later)
        .unwrap();
    objects.insert(key.into(), data(77, 100));
    for (key, bytes) in [("a/x", data(101, 9)), ("new/1.0/x.hart", data(102, 1234))] {
        put(src.raw(), key, bytes.clone()).await;
        objects.insert(key.to_string(), bytes);
    }
    delete(src.raw(), "a0").await;
    objects.remove("a0");
    let report = run_endpoints(&source, &target, &options).await;
    assert!(report.is_success(), "{report:?}");
    assert_eq!((report.copied, report.deleted), (3, 1), "{report:?}");
    assert_eq!(digests(dst.raw()).await, expected_digests(&objects));

    // A dry run writes nothing; the real run converges.
    put(src.raw(), "dry/new", data(103, 10)).await;
    let before = digests(dst.raw()).await;
    let report = run_endpoints(&source, &target, &options.clone().with_dry_run(true)).await;
    assert_eq!(report.copied, 1, "{report:?}");
    assert_eq!(digests(dst.raw()).await, before);
    run_endpoints(&source, &target, &options).await;
    assert_eq!(digests(dst.raw()).await, digests(src.raw()).await);
    assert!(staged_files(dst.dir().unwrap()).is_empty());
}

/// A directory target behind a faulty source: errors, silent truncation
/// and flipped bytes (S3's MD5) never land; a re-run converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_target_gets_no_corrupt_object() {
    const SMALL: &str = "core/openssl/3.0.0/20230101/core-openssl.hart";
    const BIG: &str = "big/object.bin";
    for from in [Kind::S3, Kind::Fs] {
        let (Some(src), Some(dst)) = (store(from, "ltf").await, store(Kind::Fs, "ltf").await)
        else {
            return;
        };
        let expected = expected_digests(&fill(src.raw()).await);
        let arm = || {
            src.faults.clear();
            src.faults
                .inject(Fault::truncate(Op::Get, 1000).prefix(SMALL).once());
            src.faults.inject(
                Fault::truncate_with_error(Op::Get, 6 * 1024 * 1024)
                    .prefix(BIG)
                    .once(),
            );
            if from == Kind::S3 {
                src.faults.inject(
                    Fault::flip_byte(Op::Get, 10)
                        .prefix("core/nginx/1.25.3/20240101.meta")
                        .once(),
                );
            }
        };
        arm();
        let no_retries = options().with_retries(0);
        let report = run_endpoints(&faulty(&src), &local(&dst), &no_retries).await;
        let failed = if from == Kind::S3 { 3 } else { 2 };
        assert_eq!(report.failed, failed, "{from:?}: {report:?}");
        let landed = digests(dst.raw()).await;
        assert_eq!(landed.len() as u64, 9 - failed);
        for (key, digest) in &landed {
            assert_eq!(expected.get(key), Some(digest), "{key} landed corrupt");
        }
        assert!(staged_files(dst.dir().unwrap()).is_empty());

        arm();
        let report = run_endpoints(&faulty(&src), &local(&dst), &options()).await;
        assert!(report.is_success(), "{report:?}");
        assert_eq!(digests(dst.raw()).await, expected);
    }
}

/// A file overwritten while it is copied is read again: the target never
/// holds a mix and ends with the new bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_changed_during_its_copy_is_copied_again() {
    let (Some(src), Some(dst)) = (store(Kind::Fs, "lc").await, store(Kind::Fs, "lc").await) else {
        return;
    };
    let big = "big/object.bin";
    let path = src.dir().unwrap().join(big);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, data(1, 5 * 1024 * 1024)).unwrap();
    let new_bytes = data(2, 5 * 1024 * 1024);
    let changed = Arc::new(AtomicU64::new(0));
    let (seen, target_path, bytes) = (Arc::clone(&changed), path.clone(), new_bytes.clone());
    let report = sync_endpoints(
        &local(&src),
        &local(&dst),
        &options(),
        move |e: &SyncEvent<'_>| {
            if matches!(e, SyncEvent::Bytes(_)) && seen.fetch_add(1, Ordering::SeqCst) == 0 {
                // After the first block: same size, new bytes, new time.
                std::fs::write(&target_path, &bytes).unwrap();
                std::fs::File::options()
                    .write(true)
                    .open(&target_path)
                    .unwrap()
                    .set_modified(SystemTime::now() + Duration::from_secs(5))
                    .unwrap();
            }
        },
    )
    .await
    .unwrap();
    assert!(report.is_success(), "{report:?}");
    assert!(report.retries >= 1, "{report:?}");
    assert_eq!(digests(dst.raw()).await[big], sha(&new_bytes));
}

/// Interrupts a run after its fifth copy and runs again: what the
/// checkpoints recorded before the interruption is neither copied nor read
/// again.
async fn resume(source: &TestStore, target: &TestStore, endpoints: (Endpoint, Endpoint)) {
    for i in 0..12u64 {
        put(
            source.raw(),
            &format!("obj/{i:02}"),
            data(i, 20_000 + i as usize),
        )
        .await;
    }
    let options = options().with_concurrency(1).with_checkpoint_objects(2);
    let copied = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(tokio::sync::Notify::new());
    let (seen, stopper) = (Arc::clone(&copied), Arc::clone(&stop));
    // Stopped, and returns once its writes ended: a write of it landing
    // under the next run would change what that run sees.
    let interrupted = sync_endpoints_until(
        &endpoints.0,
        &endpoints.1,
        &options,
        move |e| {
            if let SyncEvent::Copied { key, .. } = e {
                let mut seen = seen.lock().unwrap();
                seen.push(key.to_string());
                if seen.len() == 5 {
                    stopper.notify_one();
                }
            }
        },
        stop.notified(),
    );
    let _ = interrupted.await;
    // Checkpoints come after every second copy: the first four are in.
    let checkpointed: Vec<String> = copied.lock().unwrap()[..4].to_vec();

    let reads: BTreeMap<String, _> = checkpointed
        .iter()
        .map(|key| {
            let faults = [&source.faults, &target.faults]
                .map(|f| f.inject(Fault::latency(Op::Get, Duration::ZERO).prefix(key.clone())));
            (key.clone(), faults)
        })
        .collect();
    let report = run_endpoints(&endpoints.0, &endpoints.1, &options).await;
    assert!(report.is_success(), "{report:?}");
    assert_eq!(report.copied + report.skipped, 12, "{report:?}");
    assert!(report.copied <= 8, "{report:?}");
    for (key, [on_source, on_target]) in reads {
        assert_eq!(source.faults.fired(on_source), 0, "{key} read again");
        assert_eq!(target.faults.fired(on_target), 0, "{key} hashed again");
    }
    assert_eq!(digests(target.raw()).await, digests(source.raw()).await);
    // The final state includes the checkpoints, which are gone.
    let left = journal(target).await;
    assert!(left.is_empty(), "{left:?}");
    // And a pass reads nothing.
    let report = run_endpoints(&endpoints.0, &endpoints.1, &options).await;
    assert_eq!((report.skipped, report.bytes_read), (12, 0), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_run_resumes_from_its_checkpoints() {
    // Through the stores (reads counted by the fault store).
    if let (Some(src), Some(dst)) = (store(Kind::Fs, "r1").await, store(Kind::Fs, "r1").await) {
        let endpoints = (faulty(&src), faulty(&dst));
        resume(&src, &dst, endpoints).await;
    }
    // Into S3.
    if let (Some(src), Some(dst)) = (store(Kind::Fs, "r2").await, store(Kind::S3, "r2").await) {
        let endpoints = (faulty(&src), faulty(&dst));
        resume(&src, &dst, endpoints).await;
    }
}

/// The checkpoint segments in a target.
async fn journal(target: &TestStore) -> Vec<String> {
    let journal = Path::from(".warmspare/sync/journal");
    let listed: Vec<_> =
        futures::TryStreamExt::try_collect::<Vec<_>>(target.raw().list(Some(&journal)))
            .await
            .unwrap();
    let mut names: Vec<String> = listed.iter().map(|m| m.location.to_string()).collect();
    names.sort();
    names
}

/// A run stopped while a checkpoint is being written returns only once
/// that write ended: the next run sees it, and nothing of the stopped run
/// lands under it (the flake of `an_interrupted_run_resumes...`, made
/// deterministic with a slow checkpoint write).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_run_has_stopped_writing_when_it_returns() {
    for kind in [Kind::Fs, Kind::S3] {
        let (Some(src), Some(dst)) = (store(Kind::Fs, "stp").await, store(kind, "stp").await)
        else {
            return;
        };
        for i in 0..12u64 {
            put(src.raw(), &format!("obj/{i:02}"), data(i, 20_000)).await;
        }
        let options = options().with_concurrency(1).with_checkpoint_objects(2);
        let second = ".warmspare/sync/journal/000000000001-00000001.jsonl.zst";
        let slow = dst
            .faults
            .inject(Fault::latency(Op::Put, Duration::from_secs(1)).prefix(second));
        let faults = dst.faults.clone();
        // Stop once the second checkpoint's write reached the store.
        let stop = async move {
            while faults.fired(slow) == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        let (source, target) = (faulty(&src), faulty(&dst));
        let stopped = sync_endpoints_until(&source, &target, &options, |_| {}, stop).await;
        assert!(stopped.is_err(), "{kind:?}: {stopped:?}");
        // The checkpoint that was being written has landed, whole.
        let segments = journal(&dst).await;
        assert!(
            segments.iter().any(|s| s == second),
            "{kind:?}: {segments:?}"
        );
        let puts = dst.faults.calls(Op::Put) + dst.faults.calls(Op::PutMultipart);

        // The next run does not read again what the checkpoints name, and
        // leaves no checkpoint behind.
        let checkpointed = ["obj/00", "obj/01", "obj/02", "obj/03"];
        let reads: Vec<_> = checkpointed
            .iter()
            .map(|key| {
                src.faults
                    .inject(Fault::latency(Op::Get, Duration::ZERO).prefix(*key))
            })
            .collect();
        let report = run_endpoints(&source, &target, &options).await;
        assert!(report.is_success(), "{kind:?}: {report:?}");
        assert!(
            dst.faults.calls(Op::Put) + dst.faults.calls(Op::PutMultipart) > puts,
            "the next run writes"
        );
        for (key, id) in checkpointed.iter().zip(reads) {
            assert_eq!(src.faults.fired(id), 0, "{kind:?}: {key} read again");
        }
        assert_eq!(digests(dst.raw()).await, digests(src.raw()).await);
        assert_eq!(journal(&dst).await, Vec::<String>::new(), "{kind:?}");
        let report = run_endpoints(&source, &target, &options).await;
        assert_eq!(
            (report.skipped, report.bytes_read),
            (12, 0),
            "{kind:?}: {report:?}"
        );
    }
}

/// A copy between directories runs on a file thread: a stopped run
/// returns only once that thread let go of the target (its staged file is
/// gone, nothing lands later).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_directory_copy_has_stopped_when_it_returns() {
    let (Some(src), Some(dst)) = (store(Kind::Fs, "sd").await, store(Kind::Fs, "sd").await) else {
        return;
    };
    let big = "big/object.bin";
    put(src.raw(), big, data(5, 6 * 1024 * 1024)).await;
    // Slow enough that the copy is mid-way when it is stopped.
    let options = options().with_bwlimit(Some(1024 * 1024));
    let stop = Arc::new(tokio::sync::Notify::new());
    let stopper = Arc::clone(&stop);
    let stopped = sync_endpoints_until(
        &local(&src),
        &local(&dst),
        &options,
        move |e: &SyncEvent<'_>| {
            if matches!(e, SyncEvent::Bytes(_)) {
                stopper.notify_one();
            }
        },
        stop.notified(),
    )
    .await;
    assert!(stopped.is_err(), "{stopped:?}");
    assert_eq!(staged_files(dst.dir().unwrap()), Vec::<String>::new());
    assert!(!dst.dir().unwrap().join(big).exists());
    // The next run copies it whole.
    let report = run_endpoints(&local(&src), &local(&dst), &options.with_bwlimit(None)).await;
    assert!(report.is_success(), "{report:?}");
    assert_eq!(digests(dst.raw()).await, digests(src.raw()).await);
}

/// Checkpoint segments that the state record already includes (a run
/// stopped while it removed them) are removed by the next run, even one
/// that changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftover_checkpoints_are_removed_by_a_pass_without_changes() {
    let (Some(src), Some(dst)) = (store(Kind::Fs, "lo").await, store(Kind::Fs, "lo").await) else {
        return;
    };
    for i in 0..4u64 {
        put(src.raw(), &format!("obj/{i:02}"), data(i, 1000)).await;
    }
    let options = options().with_checkpoint_objects(2);
    // A first run, its checkpoints kept aside before it removes them.
    let second = ".warmspare/sync/journal/000000000001-00000001.jsonl.zst";
    let report = run_endpoints(&faulty(&src), &faulty(&dst), &options).await;
    assert_eq!(report.copied, 4);
    assert!(journal(&dst).await.is_empty());
    // As if it had been stopped before its clean-up: a segment of run 1,
    // which the record (journal 1) includes.
    put(dst.raw(), second, Vec::new()).await;
    dst.faults.reset_calls();
    let report = run_endpoints(&faulty(&src), &faulty(&dst), &options).await;
    assert_eq!((report.skipped, report.bytes_read), (4, 0), "{report:?}");
    assert_eq!(dst.faults.calls(Op::Put), 0, "the state was rewritten");
    assert!(journal(&dst).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_directory_copy_resumes_from_its_checkpoints() {
    let (Some(src), Some(dst)) = (store(Kind::Fs, "r3").await, store(Kind::Fs, "r3").await) else {
        return;
    };
    for i in 0..12u64 {
        put(src.raw(), &format!("obj/{i:02}"), data(i, 20_000)).await;
    }
    let options = options().with_concurrency(1).with_checkpoint_objects(2);
    let copied = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(tokio::sync::Notify::new());
    let (seen, stopper) = (Arc::clone(&copied), Arc::clone(&stop));
    let (source, target) = (local(&src), local(&dst));
    let interrupted = sync_endpoints(&source, &target, &options, move |e| {
        if matches!(e, SyncEvent::Copied { .. }) && seen.fetch_add(1, Ordering::SeqCst) == 4 {
            stopper.notify_one();
        }
    });
    tokio::select! {
        _ = interrupted => {}
        () = stop.notified() => {}
    }
    let report = run_endpoints(&source, &target, &options).await;
    assert!(report.is_success(), "{report:?}");
    // At least the four checkpointed objects are neither copied nor read.
    assert!(report.copied <= 8, "{report:?}");
    assert!(report.bytes_read <= 8 * 2 * 20_000, "{report:?}");
    assert!(report.skipped - report.hashed / 2 >= 4, "{report:?}");
    assert_eq!(digests(dst.raw()).await, digests(src.raw()).await);
}

fn writes(s: &TestStore) -> u64 {
    s.faults.calls(Op::Put) + s.faults.calls(Op::PutMultipart)
}

/// Runs a pass and checks that it reads and writes nothing.
async fn settled(
    src: &TestStore,
    dst: &TestStore,
    options: &SyncOptions,
    label: &str,
) -> SyncReport {
    dst.faults.reset_calls();
    let report = run(src, dst, options).await;
    assert_eq!(
        (report.copied, report.hashed, report.bytes_read),
        (0, 0, 0),
        "{label}: {report:?}"
    );
    assert_eq!(writes(dst), 0, "{label}: the state was written again");
    report
}

/// An unchanged state record is not written again; a changed one is
/// complete however the change came about (so the next pass reads nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_is_rewritten_only_when_it_changes() {
    let (Some(src), Some(dst)) = (store(Kind::Fs, "st").await, store(Kind::Fs, "st").await) else {
        return;
    };
    let objects = fill(src.raw()).await;
    let options = options();
    run(&src, &dst, &options).await;
    let report = settled(&src, &dst, &options, "no change").await;
    assert_eq!(report.skipped, objects.len() as u64);

    // A change in the middle of the key range.
    put(src.raw(), "core/nginx/1.25.3/20240101.meta", data(90, 101)).await;
    dst.faults.reset_calls();
    let report = run(&src, &dst, &options).await;
    assert_eq!(report.copied, 1, "{report:?}");
    assert!(writes(&dst) >= 2, "copy and state");
    settled(&src, &dst, &options, "after a change").await;

    // Gone from both sides (a record no object takes), first in the
    // middle, then the last key.
    for key in ["core/nginx/1.25.3/20240101-x/y", "empty"] {
        delete(src.raw(), key).await;
        delete(dst.raw(), key).await;
        dst.faults.reset_calls();
        run(&src, &dst, &options).await;
        assert_eq!(writes(&dst), 1, "{key}: the state is rewritten");
        settled(&src, &dst, &options, "after a record lost its object").await;
    }

    // Gone from the source only (no deletions asked): an extra object
    // that had a record loses it, once.
    delete(src.raw(), "a.txt").await;
    dst.faults.reset_calls();
    let report = run(&src, &dst, &options).await;
    assert_eq!(report.extra, 1, "{report:?}");
    assert_eq!(writes(&dst), 1);
    let report = settled(&src, &dst, &options, "after an extra").await;
    assert_eq!(report.extra, 1, "{report:?}");
}

/// The byte-rate limit holds for direct copies too (a lower bound only: a
/// slow machine cannot make it fail).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bandwidth_limit_limits_direct_copies() {
    let (Some(src), Some(dst)) = (store(Kind::Fs, "lbw").await, store(Kind::Fs, "lbw").await)
    else {
        return;
    };
    for i in 0..6 {
        put(src.raw(), &format!("f{i}"), data(i, 512 * 1024)).await;
    }
    let started = std::time::Instant::now();
    let options = options().with_bwlimit(Some(1024 * 1024));
    let report = run_endpoints(&local(&src), &local(&dst), &options).await;
    assert_eq!(report.copied, 6);
    // 3 MiB at 1 MiB/s, less the initial burst of 256 KiB.
    assert!(
        started.elapsed().as_secs_f64() >= 2.7,
        "{:?}",
        started.elapsed()
    );
}
