//! Reconciliation of database rows against a mirrored store.

use warmspare_replicate::{DigestAlgorithm, ExpectedArtifact, reconcile};
use warmspare_testkit::{Fault, Op};

use crate::common::*;

/// SHA-256 rows are checked against the mirror's state without reading the
/// objects; a damaged object is found once the state no longer vouches for
/// it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_against_a_mirrored_s3_store() {
    let (Some(source), Some(target)) = (
        store(Kind::Fs, "recon").await,
        store(Kind::S3, "recon").await,
    ) else {
        return;
    };
    let objects = fill(source.raw()).await;
    run(&source, &target, &options()).await;
    let mut rows: Vec<ExpectedArtifact> = objects
        .iter()
        .map(|(k, v)| ExpectedArtifact {
            key: k.clone(),
            checksum: Some(sha(v)),
        })
        .collect();
    rows.push(ExpectedArtifact {
        key: "missing.hart".into(),
        checksum: None,
    });
    put(target.raw(), "stray.hart", data(3, 10)).await;

    target.faults.reset_calls();
    let state_reads = target
        .faults
        .inject(Fault::latency(Op::Get, std::time::Duration::ZERO).prefix(".warmspare/"));
    let report = reconcile(
        &target.store,
        rows.clone(),
        DigestAlgorithm::Sha256,
        true,
        &options(),
    )
    .await
    .unwrap();
    assert_eq!(
        target.faults.calls(Op::Get),
        target.faults.fired(state_reads),
        "no object read"
    );
    assert_eq!(
        (report.expected, report.listed, report.verified),
        (10, 10, 9)
    );
    assert_eq!(report.missing, vec!["missing.hart".to_string()]);
    assert_eq!(report.unnamed, vec!["stray.hart".to_string()]);
    assert_eq!(report.mismatched_count, 0);

    // Damage one object behind warmspare's back: the state no longer
    // matches it, so it is read and the mismatch reported.
    put(target.raw(), "a.txt", b"rot!!".to_vec()).await;
    let report = reconcile(
        &target.store,
        rows,
        DigestAlgorithm::Sha256,
        true,
        &options(),
    )
    .await
    .unwrap();
    assert_eq!(report.mismatched.len(), 1, "{report:?}");
    assert_eq!(report.mismatched[0].key, "a.txt");
    assert!(!report.is_consistent());
}
