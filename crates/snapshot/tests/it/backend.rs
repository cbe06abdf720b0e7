//! The repositories the tests run against.

use time::OffsetDateTime;
use warmspare_store::{Repository, Store, StoreConfig};
use warmspare_testkit::S3Server;

/// A repository under test.
pub(crate) struct Backend {
    pub(crate) name: &'static str,
    pub(crate) repo: Repository,
    /// Keeps the filesystem repository alive.
    pub(crate) _dir: Option<tempfile::TempDir>,
}

/// A repository in a fresh temporary directory.
pub(crate) async fn filesystem() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}/repo", dir.path().display());
    std::fs::create_dir_all(dir.path().join("repo")).unwrap();
    let store = Store::open(&StoreConfig::new(url)).unwrap();
    Backend {
        name: "filesystem",
        repo: Repository::init(store, OffsetDateTime::now_utc())
            .await
            .unwrap(),
        _dir: Some(dir),
    }
}

/// A repository in a fresh bucket of the shared S3 server; `None` (the
/// caller skips) when no S3 server is installed.
pub(crate) async fn s3(test: &str) -> Option<Backend> {
    let Some(server) = S3Server::try_shared().await.unwrap() else {
        eprintln!("note: no S3 server installed, skipping the S3 part of {test}");
        return None;
    };
    let bucket = server.unique_bucket(test).await.unwrap();
    let config = StoreConfig::new(format!("s3://{bucket}/repo"))
        .with_endpoint(server.endpoint())
        .with_allow_http(true)
        .with_region(server.region())
        .with_credentials(server.access_key_id(), server.secret_access_key());
    let store = Store::open(&config).unwrap();
    Some(Backend {
        name: "s3",
        repo: Repository::init(store, OffsetDateTime::now_utc())
            .await
            .unwrap(),
        _dir: None,
    })
}

/// The filesystem backend, then S3 when available.
pub(crate) async fn all(test: &str) -> Vec<Backend> {
    let mut out = vec![filesystem().await];
    out.extend(s3(test).await);
    out
}
