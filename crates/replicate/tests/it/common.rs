//! Stores under test and helpers to fill and inspect them.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::TryStreamExt;
use sha2::{Digest, Sha256};
use warmspare_replicate::object_store::local::LocalFileSystem;
use warmspare_replicate::object_store::path::Path;
use warmspare_replicate::object_store::{ObjectStore, ObjectStoreExt};
use warmspare_replicate::{RESERVED_PREFIX, SyncEvent, SyncOptions, SyncReport};
use warmspare_store::{Repository, Store, StoreConfig};
use warmspare_testkit::{FaultStore, S3Server};

/// Which backend a store is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Fs,
    S3,
}

/// A store under test, seen through a [`FaultStore`].
pub(crate) struct TestStore {
    /// What the code under test gets.
    pub(crate) store: Arc<dyn ObjectStore>,
    /// Faults and call counters.
    pub(crate) faults: FaultStore,
    _dir: Option<tempfile::TempDir>,
}

impl TestStore {
    /// The store without faults or counting.
    pub(crate) fn raw(&self) -> &Arc<dyn ObjectStore> {
        self.faults.inner()
    }

    /// The directory of a filesystem store.
    pub(crate) fn dir(&self) -> Option<&std::path::Path> {
        self._dir.as_ref().map(|d| d.path())
    }
}

/// A fresh store of `kind`; `None` when S3 is wanted but not installed.
pub(crate) async fn store(kind: Kind, name: &str) -> Option<TestStore> {
    let (inner, dir): (Arc<dyn ObjectStore>, _) = match kind {
        Kind::Fs => {
            let dir = tempfile::tempdir().unwrap();
            (
                Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap()),
                Some(dir),
            )
        }
        Kind::S3 => {
            let server = S3Server::try_shared().await.unwrap()?;
            let bucket = server.unique_bucket(name).await.unwrap();
            (server.store_for_bucket(&bucket).unwrap(), None)
        }
    };
    let faults = FaultStore::new(inner);
    Some(TestStore {
        store: Arc::new(faults.clone()),
        faults,
        _dir: dir,
    })
}

/// A fresh repository of `kind`.
pub(crate) async fn repository(
    kind: Kind,
    name: &str,
) -> Option<(Repository, Option<tempfile::TempDir>)> {
    let now = time::OffsetDateTime::now_utc();
    match kind {
        Kind::Fs => {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(&StoreConfig::new(format!(
                "file://{}",
                dir.path().display()
            )))
            .unwrap();
            Some((Repository::init(store, now).await.unwrap(), Some(dir)))
        }
        Kind::S3 => {
            let server = S3Server::try_shared().await.unwrap()?;
            let bucket = server.unique_bucket(name).await.unwrap();
            let config = StoreConfig::new(format!("s3://{bucket}/repo"))
                .with_endpoint(server.endpoint())
                .with_allow_http(true)
                .with_region(server.region())
                .with_credentials(server.access_key_id(), server.secret_access_key());
            let store = Store::open(&config).unwrap();
            Some((Repository::init(store, now).await.unwrap(), None))
        }
    }
}

/// Deterministic bytes for `seed`.
pub(crate) fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

pub(crate) async fn put(store: &Arc<dyn ObjectStore>, key: &str, bytes: Vec<u8>) {
    store.put(&Path::from(key), bytes.into()).await.unwrap();
}

pub(crate) async fn delete(store: &Arc<dyn ObjectStore>, key: &str) {
    store.delete(&Path::from(key)).await.unwrap();
}

pub(crate) fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Key -> SHA-256 of every object (reserved keys aside), read directly.
pub(crate) async fn digests(store: &Arc<dyn ObjectStore>) -> BTreeMap<String, String> {
    let metas: Vec<_> = store.list(None).try_collect().await.unwrap();
    let mut out = BTreeMap::new();
    for meta in metas {
        let key = meta.location.to_string();
        if key.starts_with(&format!("{RESERVED_PREFIX}/")) {
            continue;
        }
        let bytes = store
            .get(&meta.location)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        out.insert(key, sha(&bytes));
    }
    out
}

/// Part size used by the tests: the S3 minimum, so that a 12 MiB object
/// goes up in three parts.
pub(crate) const PART: usize = 5 * 1024 * 1024;

pub(crate) fn options() -> SyncOptions {
    SyncOptions::default()
        .with_part_size(PART)
        .with_buffer_memory(4 * PART)
        .with_concurrency(4)
}

/// A typical artifact tree: nested keys, an empty object, keys whose order
/// differs between a directory walk and a flat listing, one multipart
/// object.
pub(crate) async fn fill(store: &Arc<dyn ObjectStore>) -> BTreeMap<String, Vec<u8>> {
    let mut objects = BTreeMap::new();
    let plan: &[(&str, usize)] = &[
        ("core/nginx/1.25.3/20240101/core-nginx.hart", 70_000),
        ("core/nginx/1.25.3/20240101.meta", 100),
        ("core/nginx/1.25.3/20240101-x/y", 10),
        ("core/openssl/3.0.0/20230101/core-openssl.hart", 200_000),
        ("a.txt", 5),
        ("a/x", 6),
        ("a0", 7),
        ("empty", 0),
        ("big/object.bin", 12 * 1024 * 1024 + 17),
    ];
    for (i, (key, len)) in plan.iter().enumerate() {
        let bytes = data(i as u64 + 1, *len);
        put(store, key, bytes.clone()).await;
        objects.insert(key.to_string(), bytes);
    }
    objects
}

pub(crate) fn expected_digests(objects: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, String> {
    objects.iter().map(|(k, v)| (k.clone(), sha(v))).collect()
}

/// Runs a sync, discarding progress.
pub(crate) async fn run(
    source: &TestStore,
    target: &TestStore,
    options: &SyncOptions,
) -> SyncReport {
    warmspare_replicate::sync(
        &source.store,
        &target.store,
        options,
        |_: &SyncEvent<'_>| {},
    )
    .await
    .unwrap()
}

/// The store as a directory endpoint (its raw `LocalFileSystem`).
pub(crate) fn local(store: &TestStore) -> warmspare_replicate::Endpoint {
    warmspare_replicate::Endpoint::local(Arc::clone(store.raw()), store.dir().unwrap())
}

/// Leftovers of a copy: staged files (`name#digits`) anywhere.
pub(crate) fn staged_files(root: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                dirs.push(entry.path());
            } else if entry.file_name().to_string_lossy().contains('#') {
                found.push(entry.path().display().to_string());
            }
        }
    }
    found
}
