//! Fault injection mid-copy: errors, truncated and corrupted reads, failed
//! part uploads, a source that changes during its copy. A failed copy never
//! lands a wrong object, and a re-run converges.

use std::collections::BTreeMap;
use std::time::Duration;

use warmspare_replicate::{Error, SourceVerify};
use warmspare_testkit::{Fault, Op};

use crate::common::*;

const SMALL: &str = "core/openssl/3.0.0/20230101/core-openssl.hart";
const BIG: &str = "big/object.bin";

/// Every object on the target is absent or has the source's bytes.
fn no_corrupt_object(target: &BTreeMap<String, String>, source: &BTreeMap<String, String>) {
    for (key, digest) in target {
        assert_eq!(
            source.get(key),
            Some(digest),
            "{key} landed with wrong bytes"
        );
    }
}

async fn faulty_run(
    from: Kind,
    to: Kind,
    name: &str,
    inject: impl Fn(&TestStore, &TestStore),
    expect_failed: u64,
    verify: SourceVerify,
) {
    let (Some(source), Some(target)) = (store(from, name).await, store(to, name).await) else {
        return;
    };
    let objects = fill(source.raw()).await;
    let expected = expected_digests(&objects);

    // Without retries the faulty objects fail, and do not land.
    inject(&source, &target);
    let no_retries = options().with_retries(0).with_verify(verify);
    let report = run(&source, &target, &no_retries).await;
    assert_eq!(report.failed, expect_failed, "{report:?}");
    let landed = digests(target.raw()).await;
    no_corrupt_object(&landed, &expected);
    assert_eq!(landed.len() as u64, 9 - expect_failed);

    // With retries (and the faults still armed for one more shot) the run
    // succeeds; afterwards everything is in place.
    source.faults.clear();
    target.faults.clear();
    inject(&source, &target);
    let report = run(&source, &target, &options().with_verify(verify)).await;
    assert!(report.is_success(), "{report:?}");
    assert!(report.retries >= expect_failed, "{report:?}");
    assert_eq!(digests(target.raw()).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_errors_are_retried() {
    faulty_run(
        Kind::Fs,
        Kind::S3,
        "readerr",
        |s, _| {
            s.faults.inject(Fault::error(Op::Get).prefix(SMALL).once());
            s.faults.inject(
                Fault::truncate_with_error(Op::Get, 6 * 1024 * 1024)
                    .prefix(BIG)
                    .once(),
            );
        },
        2,
        SourceVerify::Standard,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silently_truncated_reads_never_land() {
    faulty_run(
        Kind::S3,
        Kind::Fs,
        "trunc",
        |s, _| {
            s.faults
                .inject(Fault::truncate(Op::Get, 1000).prefix(SMALL).once());
            s.faults
                .inject(Fault::truncate(Op::Get, 7 * 1024 * 1024).prefix(BIG).once());
        },
        2,
        SourceVerify::Standard,
    )
    .await;
}

/// S3 announces the MD5 of single-part objects: a flipped byte is caught.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bytes_from_s3_never_land() {
    faulty_run(
        Kind::S3,
        Kind::S3,
        "flip",
        |s, _| {
            s.faults
                .inject(Fault::flip_byte(Op::Get, 100).prefix(SMALL).once());
        },
        1,
        SourceVerify::Standard,
    )
    .await;
}

/// A filesystem has no content digest: `Reread` catches a flipped byte by
/// reading twice, for small and multipart objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bytes_from_a_filesystem_never_land_with_reread() {
    faulty_run(
        Kind::Fs,
        Kind::Fs,
        "fliprr",
        |s, _| {
            s.faults
                .inject(Fault::flip_byte(Op::Get, 100).prefix(SMALL).once());
            s.faults.inject(
                Fault::flip_byte(Op::Get, 6 * 1024 * 1024)
                    .prefix(BIG)
                    .once(),
            );
        },
        2,
        SourceVerify::Reread,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_uploads_never_land() {
    faulty_run(
        Kind::Fs,
        Kind::S3,
        "upload",
        |_, t| {
            t.faults.inject(Fault::error(Op::Put).prefix(SMALL).once());
            t.faults
                .inject(Fault::error(Op::PutPart).prefix(BIG).skip(1).once());
        },
        2,
        SourceVerify::Standard,
    )
    .await;
    faulty_run(
        Kind::S3,
        Kind::Fs,
        "complete",
        |_, t| {
            t.faults
                .inject(Fault::error(Op::CompleteMultipart).prefix(BIG).once());
        },
        1,
        SourceVerify::Standard,
    )
    .await;
}

/// An object overwritten while it is being copied is detected after the
/// read (its version changed) and copied again: the target never holds a
/// mix, and ends with the new bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_changed_during_its_copy_is_retried() {
    for (from, to) in [(Kind::Fs, Kind::S3), (Kind::S3, Kind::Fs)] {
        let (Some(source), Some(target)) =
            (store(from, "changed").await, store(to, "changed").await)
        else {
            return;
        };
        fill(source.raw()).await;
        // Hold the check after the read until the test has overwritten the
        // object.
        let hold = source.faults.inject(
            Fault::latency(Op::Head, Duration::from_secs(2))
                .prefix(BIG)
                .once(),
        );
        let faults = source.faults.clone();
        let raw = std::sync::Arc::clone(source.raw());
        let writer = tokio::spawn(async move {
            while faults.fired(hold) == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            put(&raw, BIG, data(999, 12 * 1024 * 1024 + 3)).await;
        });
        let report = run(&source, &target, &options()).await;
        writer.await.unwrap();
        assert!(report.is_success(), "{report:?}");
        assert!(report.retries >= 1, "{report:?}");
        let landed = digests(target.raw()).await;
        assert_eq!(landed[BIG], sha(&data(999, 12 * 1024 * 1024 + 3)));
        assert_eq!(landed, digests(source.raw()).await);
    }
}

#[test]
fn errors_name_what_happened() {
    let e = Error::Changed {
        side: warmspare_replicate::Side::Source,
        key: BIG.into(),
    };
    assert_eq!(
        e.to_string(),
        format!("object {BIG} changed on the source while it was being read")
    );
}
