//! Repository conformance: FORMAT, the commit protocol, listing,
//! verification.

use std::sync::Arc;

use bytes::Bytes;
use time::OffsetDateTime;
use time::macros::datetime;
use tokio::sync::Barrier;
use warmspare_store::object_store::ObjectStoreExt;
use warmspare_store::{Error, Repository, SnapshotKind, layout};

use crate::backend::Backend;
use crate::data::{HashingWriter, PatternReader, pattern_digest};

crate::conformance!(
    repo_open_requires_format,
    repo_init_race_agrees_on_one_format,
    repo_rejects_foreign_format,
    repo_commit_protocol,
    repo_lists_newest_first,
    repo_detects_corrupt_file,
    repo_detects_tampered_manifest,
);

const T0: OffsetDateTime = datetime!(2026-11-22 10:15:00 UTC);

async fn repo_open_requires_format(b: &Backend) {
    let err = Repository::open(b.store.clone()).await.unwrap_err();
    assert!(matches!(err, Error::NotARepository { .. }), "{err:?}");
    let repo = Repository::init(b.store.clone(), T0).await.unwrap();
    assert_eq!(repo.format().version, 1);
    assert_eq!(repo.format().created, T0);
    let again = Repository::open(b.store.clone()).await.unwrap();
    assert_eq!(again.format(), repo.format());
    // A later init keeps the first FORMAT.
    let later = Repository::init(b.store.clone(), T0 + time::Duration::hours(1))
        .await
        .unwrap();
    assert_eq!(later.format().created, T0);
}

async fn repo_init_race_agrees_on_one_format(b: &Backend) {
    const INITS: usize = 8;
    let barrier = Arc::new(Barrier::new(INITS));
    let mut tasks = Vec::new();
    for i in 0..INITS {
        let (store, barrier) = (b.store.clone(), Arc::clone(&barrier));
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            Repository::init(store, T0 + time::Duration::seconds(i as i64)).await
        }));
    }
    let mut formats = Vec::new();
    for task in tasks {
        formats.push(
            task.await
                .unwrap()
                .expect("every init succeeds")
                .format()
                .clone(),
        );
    }
    let stored = Repository::open(b.store.clone())
        .await
        .unwrap()
        .format()
        .clone();
    if b.cas_enforced {
        assert!(
            formats.iter().all(|f| *f == stored),
            "{formats:?} vs {stored:?}"
        );
    } else {
        // Last writer wins on a backend that ignores If-None-Match: the
        // inits cannot be trusted to agree, and the probe says so.
        let report = warmspare_store::probe_cas(
            b.store.cas().as_ref(),
            &warmspare_store::object_store::path::Path::from("tmp/p"),
        )
        .await
        .unwrap();
        assert!(!report.passed());
    }
}

async fn repo_rejects_foreign_format(b: &Backend) {
    let os = b.store.object_store();
    os.put(
        &layout::format(),
        Bytes::from_static(
            br#"{"format":"warmspare","version":2,"created":"2030-01-01T00:00:00Z"}"#,
        )
        .into(),
    )
    .await
    .unwrap();
    for result in [
        Repository::open(b.store.clone()).await,
        Repository::init(b.store.clone(), T0).await,
    ] {
        let err = result.unwrap_err();
        assert!(matches!(err, Error::UnsupportedFormat { .. }), "{err:?}");
        assert!(err.to_string().contains("version 2"), "{err}");
    }
    os.put(
        &layout::format(),
        Bytes::from_static(b"restic repository").into(),
    )
    .await
    .unwrap();
    let err = Repository::open(b.store.clone()).await.unwrap_err();
    assert!(matches!(err, Error::UnsupportedFormat { .. }), "{err:?}");
}

async fn repo_commit_protocol(b: &Backend) {
    let repo = Repository::init(b.store.clone(), T0).await.unwrap();
    let mut writer = repo
        .begin_snapshot(SnapshotKind::Logical, T0)
        .await
        .unwrap();
    let id = writer.id().clone();
    assert!(id.as_str().starts_with("20261122T101500Z-"));

    let info = writer
        .put_file("db/toc.dat", PatternReader::new(1, 10_000))
        .await
        .unwrap();
    writer
        .put_file("db/3001.dat", PatternReader::new(2, 0))
        .await
        .unwrap();
    let dup = writer.put_file("db/toc.dat", &b"again"[..]).await;
    assert!(matches!(dup, Err(Error::AlreadyExists { .. })), "{dup:?}");
    let bad = writer.put_file("MANIFEST.json", &b"x"[..]).await;
    assert!(matches!(bad, Err(Error::InvalidPath { .. })), "{bad:?}");

    // Data written, no manifest yet: not a snapshot.
    assert!(repo.list_snapshots().await.unwrap().is_empty());
    assert_eq!(repo.incomplete_snapshots().await.unwrap(), vec![id.clone()]);
    assert!(matches!(
        repo.read_manifest(&id).await,
        Err(Error::NotFound { .. })
    ));

    let finished = T0 + time::Duration::seconds(90);
    let manifest = writer
        .commit(
            serde_json::json!({"database": "builder"}),
            Some(7),
            finished,
        )
        .await
        .unwrap();
    assert_eq!(repo.list_snapshots().await.unwrap(), vec![id.clone()]);
    assert!(repo.incomplete_snapshots().await.unwrap().is_empty());

    let read = repo.read_manifest(&id).await.unwrap();
    assert_eq!(read, manifest);
    assert_eq!(read.epoch, Some(7));
    assert_eq!(read.finished, finished);
    assert_eq!(read.files.len(), 2);
    assert_eq!(read.files["db/toc.dat"], info);
    assert_eq!(read.meta["database"], "builder");

    let mut out = HashingWriter::default();
    repo.read_file(&id, "db/toc.dat", &mut out).await.unwrap();
    assert_eq!(out.hex(), pattern_digest(1, 10_000).await);
    let missing = repo
        .read_file(&id, "nope", &mut HashingWriter::default())
        .await;
    assert!(
        matches!(missing, Err(Error::NotFound { .. })),
        "{missing:?}"
    );

    let report = repo.verify_snapshot(&id).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.files, 2);
    assert_eq!(report.bytes, 10_000);
}

async fn repo_lists_newest_first(b: &Backend) {
    let repo = Repository::init(b.store.clone(), T0).await.unwrap();
    let mut committed = Vec::new();
    // Out of chronological order, two in the same second.
    for offset in [3600, 0, 60, 60] {
        let at = T0 + time::Duration::seconds(offset);
        let mut w = repo
            .begin_snapshot(SnapshotKind::Physical, at)
            .await
            .unwrap();
        w.put_file("base.tar", &b"data"[..]).await.unwrap();
        committed.push(
            w.commit(serde_json::Value::Null, None, at)
                .await
                .unwrap()
                .id,
        );
    }
    let abandoned = repo
        .begin_snapshot(SnapshotKind::Logical, T0 + time::Duration::hours(5))
        .await
        .unwrap();
    let abandoned_id = abandoned.id().clone();
    let mut abandoned = abandoned;
    abandoned.put_file("dump", &b"partial"[..]).await.unwrap();
    drop(abandoned);

    let listed = repo.list_snapshots().await.unwrap();
    let mut expected = committed.clone();
    expected.sort();
    expected.reverse();
    assert_eq!(listed, expected);
    assert_eq!(listed.len(), 4, "ids are unique even within one second");
    assert!(
        listed
            .windows(2)
            .all(|w| w[0].timestamp() >= w[1].timestamp())
    );
    assert_eq!(
        repo.incomplete_snapshots().await.unwrap(),
        vec![abandoned_id]
    );
}

async fn repo_detects_corrupt_file(b: &Backend) {
    let repo = Repository::init(b.store.clone(), T0).await.unwrap();
    let mut w = repo
        .begin_snapshot(SnapshotKind::Logical, T0)
        .await
        .unwrap();
    w.put_file("good", PatternReader::new(3, 50_000))
        .await
        .unwrap();
    w.put_file("bad", PatternReader::new(4, 50_000))
        .await
        .unwrap();
    let manifest = w.commit(serde_json::Value::Null, None, T0).await.unwrap();

    // Corrupt one stored object through the raw store: same length, one
    // byte changed.
    let path = layout::snapshot_file(&manifest.id, "bad").unwrap();
    let os = b.store.object_store();
    let mut stored = os.get(&path).await.unwrap().bytes().await.unwrap().to_vec();
    let last = stored.len() - 1;
    stored[last] ^= 0xff;
    os.put(&path, Bytes::from(stored).into()).await.unwrap();

    let err = repo
        .read_file(&manifest.id, "bad", &mut HashingWriter::default())
        .await
        .unwrap_err();
    match &err {
        Error::DigestMismatch { path: p, .. } => assert_eq!(p, path.as_ref()),
        other => panic!("expected a digest mismatch naming {path}, got {other:?}"),
    }
    let report = repo.verify_snapshot(&manifest.id).await.unwrap();
    assert!(!report.is_ok());
    assert_eq!(report.files, 1, "the good file still verifies");
    assert_eq!(report.failures.len(), 1);
    assert!(report.failures[0].to_string().contains(path.as_ref()));
}

async fn repo_detects_tampered_manifest(b: &Backend) {
    let repo = Repository::init(b.store.clone(), T0).await.unwrap();
    let mut w = repo
        .begin_snapshot(SnapshotKind::Logical, T0)
        .await
        .unwrap();
    w.put_file("f", &b"content"[..]).await.unwrap();
    let manifest = w
        .commit(serde_json::json!({"n": 1}), Some(1), T0)
        .await
        .unwrap();
    let path = layout::manifest(&manifest.id);
    let os = b.store.object_store();
    let text = os.get(&path).await.unwrap().bytes().await.unwrap();
    let tampered = String::from_utf8(text.to_vec())
        .unwrap()
        .replace("\"epoch\":1", "\"epoch\":2");
    os.put(&path, Bytes::from(tampered).into()).await.unwrap();
    let err = repo.read_manifest(&manifest.id).await.unwrap_err();
    assert!(
        matches!(&err, Error::DigestMismatch { path: p, .. } if p == path.as_ref()),
        "{err:?}"
    );
}
