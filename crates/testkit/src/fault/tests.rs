//! Each fault against an in-memory store.

use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::*;

async fn setup() -> (FaultStore, Arc<dyn ObjectStore>) {
    let faults = FaultStore::new(Arc::new(InMemory::new()));
    let store: Arc<dyn ObjectStore> = Arc::new(faults.clone());
    for (key, body) in [("a/1", "hello world"), ("a/2", "two"), ("b/1", "bee")] {
        store
            .put(&Path::from(key), PutPayload::from(body))
            .await
            .expect("put");
    }
    faults.reset_calls();
    (faults, store)
}

fn is_injected(err: &object_store::Error) -> bool {
    err.source()
        .is_some_and(|s| s.downcast_ref::<InjectedFault>().is_some())
}

#[tokio::test]
async fn error_times_then_recovers() {
    let (faults, store) = setup().await;
    let id = faults.inject(Fault::error(Op::Get).times(2));
    let path = Path::from("a/1");
    for _ in 0..2 {
        let err = store.get(&path).await.expect_err("injected");
        assert!(matches!(err, object_store::Error::Generic { .. }));
        assert!(is_injected(&err));
    }
    let body = store
        .get(&path)
        .await
        .expect("get")
        .bytes()
        .await
        .expect("body");
    assert_eq!(body.as_ref(), b"hello world");
    assert_eq!(faults.fired(id), 2);
    assert_eq!(faults.calls(Op::Get), 3);
}

#[tokio::test]
async fn error_kinds_and_skip() {
    let (faults, store) = setup().await;
    faults.inject(
        Fault::error_kind(Op::Put, ErrorKind::Precondition)
            .skip(1)
            .once(),
    );
    let path = Path::from("c/1");
    store.put(&path, "first".into()).await.expect("skipped");
    let err = store.put(&path, "second".into()).await.expect_err("fires");
    assert!(matches!(err, object_store::Error::Precondition { .. }));
    store.put(&path, "third".into()).await.expect("spent");
    assert_eq!(faults.calls(Op::Put), 3);
}

#[tokio::test]
async fn prefix_limits_rules() {
    let (faults, store) = setup().await;
    faults.inject(Fault::error_kind(Op::Head, ErrorKind::NotFound).prefix("b/"));
    let err = store.head(&Path::from("b/1")).await.expect_err("b fails");
    assert!(matches!(err, object_store::Error::NotFound { .. }));
    store.head(&Path::from("a/1")).await.expect("a works");
    assert_eq!(faults.calls(Op::Head), 2);
    assert_eq!(faults.calls(Op::Get), 0, "heads are not gets");
}

#[tokio::test]
async fn probability_is_seeded() {
    let run = |seed| async move {
        let (faults, store) = setup().await;
        let faults = faults.with_seed(seed);
        faults.inject(Fault::error(Op::Head).probability(0.5));
        let mut pattern = Vec::new();
        for _ in 0..32 {
            pattern.push(store.head(&Path::from("a/1")).await.is_ok());
        }
        pattern
    };
    let a = run(7).await;
    assert_eq!(a, run(7).await, "same seed, same failures");
    let failures = a.iter().filter(|ok| !**ok).count();
    assert!((4..=28).contains(&failures), "{failures} of 32 failed");
    let (faults, store) = setup().await;
    faults.inject(Fault::error(Op::Head).probability(0.0));
    assert!(store.head(&Path::from("a/1")).await.is_ok());
}

#[tokio::test]
async fn latency_delays_calls() {
    let (faults, store) = setup().await;
    faults.inject(Fault::latency(Op::Put, Duration::from_millis(200)));
    let start = std::time::Instant::now();
    store.put(&Path::from("x"), "y".into()).await.expect("put");
    assert!(start.elapsed() >= Duration::from_millis(200));
    let start = std::time::Instant::now();
    store.get(&Path::from("x")).await.expect("get");
    assert!(start.elapsed() < Duration::from_millis(200));
}

#[tokio::test]
async fn truncate_without_and_with_error() {
    let (faults, store) = setup().await;
    let path = Path::from("a/1");
    let id = faults.inject(Fault::truncate(Op::Get, 5).once());
    let body = store
        .get(&path)
        .await
        .expect("get")
        .bytes()
        .await
        .expect("short read");
    assert_eq!(body.as_ref(), b"hello");
    faults.remove(id);

    faults.inject(Fault::truncate_with_error(Op::Get, 3).once());
    let chunks: Vec<_> = store
        .get(&path)
        .await
        .expect("get")
        .into_stream()
        .collect()
        .await;
    let data: Vec<u8> = chunks
        .iter()
        .filter_map(|c| c.as_ref().ok())
        .flat_map(|b| b.to_vec())
        .collect();
    assert_eq!(data, b"hel");
    let err = chunks
        .last()
        .expect("items")
        .as_ref()
        .expect_err("ends in error");
    assert!(is_injected(err));
}

#[tokio::test]
async fn flip_byte_corrupts_one_byte() {
    let (faults, store) = setup().await;
    faults.inject(Fault::flip_byte(Op::Get, 1).prefix("a/"));
    let body = store
        .get(&Path::from("a/1"))
        .await
        .expect("get")
        .bytes()
        .await
        .expect("body");
    let mut expected = b"hello world".to_vec();
    expected[1] ^= 0xFF;
    assert_eq!(body.as_ref(), expected.as_slice());
    let other = store
        .get(&Path::from("b/1"))
        .await
        .expect("get")
        .bytes()
        .await;
    assert_eq!(other.expect("body").as_ref(), b"bee");
}

#[tokio::test]
async fn list_errors_and_counts() {
    let (faults, store) = setup().await;
    faults.inject(Fault::error(Op::List).prefix("a/").once());
    let err = store
        .list(Some(&Path::from("a")))
        .try_collect::<Vec<_>>()
        .await
        .expect_err("a/ fails");
    assert!(is_injected(&err));
    let all: Vec<_> = store.list(None).try_collect().await.expect("list all");
    assert_eq!(all.len(), 3);
    let listed = store
        .list_with_delimiter(Some(&Path::from("a")))
        .await
        .expect("spent");
    assert_eq!(listed.objects.len(), 2);
    assert_eq!(faults.calls(Op::List), 3);
}

#[tokio::test]
async fn delete_copy_rename_faults() {
    let (faults, store) = setup().await;
    faults.inject(Fault::error(Op::Delete).prefix("b/"));
    faults.inject(Fault::error(Op::Copy).once());
    faults.inject(Fault::error(Op::Rename).once());
    store
        .delete(&Path::from("b/1"))
        .await
        .expect_err("delete fails");
    store
        .delete(&Path::from("a/2"))
        .await
        .expect("delete works");
    let (from, to) = (Path::from("a/1"), Path::from("c/1"));
    store.copy(&from, &to).await.expect_err("copy fails");
    store.copy(&from, &to).await.expect("copy works");
    store
        .rename(&to, &Path::from("c/2"))
        .await
        .expect_err("rename fails");
    store
        .rename(&to, &Path::from("c/2"))
        .await
        .expect("rename works");
    assert!(store.head(&Path::from("b/1")).await.is_ok(), "not deleted");
    assert_eq!(
        faults.call_counts(),
        vec![
            (Op::Head, 1),
            (Op::Delete, 2),
            (Op::Copy, 2),
            (Op::Rename, 2)
        ]
    );
}

#[tokio::test]
async fn multipart_part_and_complete_faults() {
    let (faults, store) = setup().await;
    faults.inject(Fault::error(Op::PutPart).skip(1).once());
    faults.inject(Fault::error(Op::CompleteMultipart).once());
    let path = Path::from("m/1");
    let mut upload = store.put_multipart(&path).await.expect("start");
    upload.put_part("one".into()).await.expect("first part");
    upload
        .put_part("two".into())
        .await
        .expect_err("second part fails");
    upload.put_part("three".into()).await.expect("third part");
    upload.complete().await.expect_err("complete fails");
    upload.complete().await.expect("complete works");
    assert_eq!(faults.calls(Op::PutPart), 3);
    assert_eq!(faults.calls(Op::PutMultipart), 1);

    faults.inject(Fault::error(Op::PutMultipart).once());
    assert!(store.put_multipart(&path).await.is_err());
}

#[tokio::test]
async fn clear_removes_all_rules() {
    let (faults, store) = setup().await;
    faults.inject(Fault::error(Op::Get));
    faults.inject(Fault::flip_byte(Op::Get, 0));
    assert!(store.get(&Path::from("a/1")).await.is_err());
    faults.clear();
    let body = store
        .get(&Path::from("a/1"))
        .await
        .expect("get")
        .bytes()
        .await;
    assert_eq!(body.expect("body").as_ref(), b"hello world");
}

#[tokio::test]
async fn range_reads_are_corrupted_relative_to_the_body() {
    let (faults, store) = setup().await;
    faults.inject(Fault::flip_byte(Op::Get, 0));
    let body = store
        .get_range(&Path::from("a/1"), 6..11)
        .await
        .expect("range");
    assert_eq!(body.as_ref(), [!b'w', b'o', b'r', b'l', b'd']);
}
