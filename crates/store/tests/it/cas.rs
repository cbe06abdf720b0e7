//! Compare-and-swap conformance: semantics, races, the probe.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::Barrier;
use warmspare_store::object_store::path::Path;
use warmspare_store::{CompareAndSwap, Error, probe_cas};

use crate::backend::Backend;

crate::conformance!(
    cas_semantics,
    cas_probe_verdict,
    cas_create_race_has_one_winner,
    cas_update_race_has_one_winner_per_round,
);

/// On a backend that does not enforce conditional writes, compare-and-swap
/// tests assert that the probe refuses it, and stop there.
async fn refused_when_not_enforced(b: &Backend) -> bool {
    if b.cas_enforced {
        return false;
    }
    let report = probe_cas(b.store.cas().as_ref(), &Path::from("tmp/probe"))
        .await
        .expect("probe runs");
    assert!(
        !report.passed(),
        "the probe must refuse a backend that ignores conditions: {report:?}"
    );
    true
}

async fn cas_semantics(b: &Backend) {
    if refused_when_not_enforced(b).await {
        return;
    }
    let cas = b.store.cas();
    let path = Path::from("lease/active.json");

    assert!(cas.read(&path).await.unwrap().is_none());
    let v1 = cas
        .create(&path, Bytes::from_static(b"{\"epoch\":1}"))
        .await
        .unwrap();
    let (content, read_version) = cas.read(&path).await.unwrap().unwrap();
    assert_eq!(&content[..], b"{\"epoch\":1}");
    assert_eq!(read_version, v1);

    let again = cas
        .create(&path, Bytes::from_static(b"{\"epoch\":9}"))
        .await;
    assert!(
        matches!(again, Err(Error::AlreadyExists { .. })),
        "{again:?}"
    );

    let v2 = cas
        .update(&path, Bytes::from_static(b"{\"epoch\":2}"), &v1)
        .await
        .unwrap();
    assert_ne!(v1, v2);
    let stale = cas
        .update(&path, Bytes::from_static(b"{\"epoch\":3}"), &v1)
        .await;
    match stale {
        Err(Error::VersionMismatch { path: p }) => assert!(p.ends_with("lease/active.json"), "{p}"),
        other => panic!("expected a version mismatch, got {other:?}"),
    }
    let (content, version) = cas.read(&path).await.unwrap().unwrap();
    assert_eq!(&content[..], b"{\"epoch\":2}");
    assert_eq!(version, v2);

    // Objects written through the primitive are ordinary objects.
    use warmspare_store::object_store::ObjectStoreExt;
    let raw = b
        .store
        .object_store()
        .get(&path)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&raw[..], b"{\"epoch\":2}");

    // Update of a missing object: a mismatch that creates nothing.
    let missing = Path::from("lease/other.json");
    let r = cas.update(&missing, Bytes::from_static(b"x"), &v2).await;
    assert!(matches!(r, Err(Error::VersionMismatch { .. })), "{r:?}");
    assert!(cas.read(&missing).await.unwrap().is_none());

    // Delete is unconditional and idempotent; the name can be created again.
    cas.delete(&path).await.unwrap();
    cas.delete(&path).await.unwrap();
    assert!(cas.read(&path).await.unwrap().is_none());
    let r = cas.update(&path, Bytes::from_static(b"x"), &v2).await;
    assert!(matches!(r, Err(Error::VersionMismatch { .. })), "{r:?}");
    cas.create(&path, Bytes::from_static(b"{\"epoch\":4}"))
        .await
        .unwrap();
}

async fn cas_probe_verdict(b: &Backend) {
    let report = probe_cas(b.store.cas().as_ref(), &Path::from("tmp/check-probe"))
        .await
        .unwrap();
    assert_eq!(report.passed(), b.cas_enforced, "{report:?}");
    // The probe cleans up after itself.
    let cas = b.store.cas();
    for name in ["tmp/check-probe/probe", "tmp/check-probe/missing"] {
        assert!(
            cas.read(&Path::from(name)).await.unwrap().is_none(),
            "{name} left behind"
        );
    }
}

const TASKS: usize = 16;
const ROUNDS: usize = 20;

async fn cas_create_race_has_one_winner(b: &Backend) {
    if refused_when_not_enforced(b).await {
        return;
    }
    for round in 0..4 {
        let path = Path::from(format!("race/create-{round}"));
        let barrier = Arc::new(Barrier::new(TASKS));
        let mut tasks = Vec::new();
        for task in 0..TASKS {
            let cas: Arc<dyn CompareAndSwap> = Arc::clone(b.store.cas());
            let (path, barrier) = (path.clone(), Arc::clone(&barrier));
            tasks.push(tokio::spawn(async move {
                let content = Bytes::from(format!("writer {task}"));
                barrier.wait().await;
                (task, cas.create(&path, content).await)
            }));
        }
        let mut winners = Vec::new();
        for task in tasks {
            match task.await.unwrap() {
                (task, Ok(_)) => winners.push(task),
                (_, Err(Error::AlreadyExists { .. })) => {}
                (task, Err(e)) => panic!("task {task}: unexpected error {e}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        let (content, _) = b.store.cas().read(&path).await.unwrap().unwrap();
        assert_eq!(content, Bytes::from(format!("writer {}", winners[0])));
    }
}

/// Every round, all tasks try to update from the same observed version;
/// exactly one may win, and the counter in the object counts the winners.
async fn cas_update_race_has_one_winner_per_round(b: &Backend) {
    if refused_when_not_enforced(b).await {
        return;
    }
    let cas = b.store.cas();
    let path = Path::from("race/update");
    cas.create(&path, counter(0, usize::MAX)).await.unwrap();

    for round in 0..ROUNDS {
        let (content, observed) = cas.read(&path).await.unwrap().unwrap();
        let count = parse_count(&content);
        assert_eq!(count, round as u64, "the counter counts the winners so far");
        let barrier = Arc::new(Barrier::new(TASKS));
        let mut tasks = Vec::new();
        for task in 0..TASKS {
            let cas: Arc<dyn CompareAndSwap> = Arc::clone(cas);
            let (path, barrier, observed) = (path.clone(), Arc::clone(&barrier), observed.clone());
            tasks.push(tokio::spawn(async move {
                // The nonce (task id) keeps every writer's bytes distinct.
                let next = counter(count + 1, task);
                barrier.wait().await;
                (task, cas.update(&path, next, &observed).await)
            }));
        }
        let mut winners = Vec::new();
        for task in tasks {
            match task.await.unwrap() {
                (task, Ok(version)) => winners.push((task, version)),
                (_, Err(Error::VersionMismatch { .. })) => {}
                (task, Err(e)) => panic!("round {round} task {task}: unexpected error {e}"),
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "round {round}: winners {:?}",
            winners.iter().map(|w| w.0).collect::<Vec<_>>()
        );
        let (content, version) = cas.read(&path).await.unwrap().unwrap();
        assert_eq!(content, counter(count + 1, winners[0].0), "round {round}");
        assert_eq!(version, winners[0].1, "round {round}");
    }
    let (content, _) = cas.read(&path).await.unwrap().unwrap();
    assert_eq!(parse_count(&content), ROUNDS as u64);
}

fn counter(count: u64, writer: usize) -> Bytes {
    Bytes::from(format!("{{\"count\":{count},\"writer\":{writer}}}"))
}

fn parse_count(content: &[u8]) -> u64 {
    let value: serde_json::Value = serde_json::from_slice(content).unwrap();
    value["count"].as_u64().unwrap()
}
