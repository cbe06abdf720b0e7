//! Deletion guards: empty source, failing listing, over the limits, failed
//! copies.

use warmspare_replicate::{DeleteRefusal, Error};
use warmspare_testkit::{Fault, Op};

use crate::common::*;

async fn pair(from: Kind, to: Kind, name: &str) -> Option<(TestStore, TestStore)> {
    Some((store(from, name).await?, store(to, name).await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_source_deletes_nothing_without_force() {
    for (from, to) in [(Kind::Fs, Kind::Fs), (Kind::S3, Kind::Fs)] {
        let Some((source, target)) = pair(from, to, "empty").await else {
            return;
        };
        put(target.raw(), "keep/me", data(1, 10)).await;
        put(target.raw(), "keep/too", data(2, 10)).await;
        let options = options().with_delete(true);
        let report = run(&source, &target, &options).await;
        assert_eq!(
            report.delete_refused,
            Some(DeleteRefusal::EmptySource { target: 2 })
        );
        assert_eq!((report.deleted, report.extra), (0, 2));
        assert!(!report.is_success());
        assert_eq!(target.faults.calls(Op::Delete), 0);
        assert_eq!(digests(target.raw()).await.len(), 2);

        let report = run(&source, &target, &options.with_force(true)).await;
        assert_eq!(report.deleted, 2, "{report:?}");
        assert!(digests(target.raw()).await.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_listing_is_an_error_and_deletes_nothing() {
    for (from, to) in [(Kind::Fs, Kind::S3), (Kind::S3, Kind::Fs)] {
        let Some((source, target)) = pair(from, to, "listfail").await else {
            return;
        };
        fill(source.raw()).await;
        let options = options().with_delete(true).with_force(true);
        run(&source, &target, &options).await;
        put(target.raw(), "extra/object", data(9, 10)).await;
        let before = digests(target.raw()).await;

        // The whole listing fails.
        let rule = source.faults.inject(Fault::error(Op::List));
        let err = warmspare_replicate::sync(&source.store, &target.store, &options, |_| {})
            .await
            .unwrap_err();
        assert!(matches!(err, Error::List { .. }), "{err}");
        assert!(err.is_retryable());
        source.faults.remove(rule);

        // The listing fails half way (per-directory listing of a later
        // directory, or the second page): still nothing is deleted.
        let rule = source
            .faults
            .inject(Fault::error(Op::List).skip(if from == Kind::Fs { 3 } else { 0 }));
        let paged = options
            .clone()
            .with_list_order(warmspare_replicate::ListOrder::PerDirectory);
        let err = warmspare_replicate::sync(&source.store, &target.store, &paged, |_| {})
            .await
            .unwrap_err();
        assert!(matches!(err, Error::List { .. }), "{err}");
        source.faults.remove(rule);
        assert_eq!(target.faults.calls(Op::Delete), 0);
        assert_eq!(digests(target.raw()).await, before);

        // Once the listing works, the extra object goes.
        let report = run(&source, &target, &options).await;
        assert_eq!(report.deleted, 1, "{report:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_limits_deletes_nothing() {
    let Some((source, target)) = pair(Kind::Fs, Kind::S3, "limits").await else {
        return;
    };
    for i in 0..10 {
        put(source.raw(), &format!("keep/{i}"), data(i, 100)).await;
    }
    let options = options().with_delete(true);
    run(&source, &target, &options).await;
    for i in 0..4 {
        put(target.raw(), &format!("extra/{i}"), data(i, 10)).await;
    }

    let report = run(&source, &target, &options.clone().with_max_delete(3)).await;
    assert_eq!(
        report.delete_refused,
        Some(DeleteRefusal::TooMany {
            planned: 4,
            limit: 3
        })
    );
    assert_eq!(report.deleted, 0);

    let report = run(
        &source,
        &target,
        &options.clone().with_max_delete_fraction(0.2),
    )
    .await;
    assert!(
        matches!(
            report.delete_refused,
            Some(DeleteRefusal::TooLargeShare {
                planned: 4,
                target: 14,
                ..
            })
        ),
        "{report:?}"
    );
    assert_eq!(target.faults.calls(Op::Delete), 0);
    assert_eq!(digests(target.raw()).await.len(), 14);

    let report = run(
        &source,
        &target,
        &options.with_max_delete(3).with_force(true),
    )
    .await;
    assert_eq!((report.deleted, report.delete_refused), (4, None));
    assert_eq!(digests(target.raw()).await, digests(source.raw()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_copy_blocks_deletions_even_with_force() {
    let Some((source, target)) = pair(Kind::S3, Kind::Fs, "copyfail").await else {
        return;
    };
    fill(source.raw()).await;
    put(target.raw(), "extra", data(1, 1)).await;
    source.faults.inject(Fault::error(Op::Get).prefix("a/x"));
    let options = options().with_delete(true).with_force(true).with_retries(1);
    let report = run(&source, &target, &options).await;
    assert_eq!(
        (report.failed, report.copied, report.retries),
        (1, 8, 1),
        "{report:?}"
    );
    assert_eq!(
        report.delete_refused,
        Some(DeleteRefusal::CopiesFailed { failed: 1 })
    );
    assert!(
        report.errors[0].to_string().contains("a/x"),
        "{}",
        report.errors[0]
    );
    assert!(digests(target.raw()).await.contains_key("extra"));

    source.faults.clear();
    let report = run(&source, &target, &options).await;
    assert_eq!(
        (report.copied, report.deleted, report.skipped),
        (1, 1, 8),
        "{report:?}"
    );
    assert_eq!(digests(target.raw()).await, digests(source.raw()).await);
}
