//! The backends the suite runs against.

use warmspare_store::{Store, StoreConfig};
use warmspare_testkit::S3Server;

/// A store under test and what its backend promises.
pub(crate) struct Backend {
    pub(crate) store: Store,
    /// The configuration `store` was opened with, to open it again with
    /// other settings.
    pub(crate) config: StoreConfig,
    /// Whether the backend enforces conditional writes. When false, tests
    /// of compare-and-swap assert that the probe refuses the backend.
    pub(crate) cas_enforced: bool,
    /// Keeps the filesystem repository alive.
    pub(crate) _dir: Option<tempfile::TempDir>,
}

/// A repository in a fresh temporary directory.
pub(crate) fn filesystem() -> Backend {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = url::Url::from_directory_path(dir.path().join("repo")).expect("file url");
    let config = StoreConfig::new(url.as_str());
    let store = Store::open(&config).expect("open filesystem store");
    Backend {
        store,
        config,
        cas_enforced: true,
        _dir: Some(dir),
    }
}

/// A repository under a prefix of a fresh bucket on the shared S3 server,
/// opened through `StoreConfig` like production does; `None` when no S3
/// server is installed (the test is skipped).
pub(crate) async fn s3(test: &str) -> Option<Backend> {
    let server = S3Server::try_shared().await.expect("start S3 server")?;
    let bucket = server.unique_bucket(test).await.expect("create bucket");
    let config = StoreConfig::new(format!("s3://{bucket}/repo"))
        .with_endpoint(server.endpoint())
        .with_allow_http(true)
        .with_region(server.region())
        .with_credentials(server.access_key_id(), server.secret_access_key());
    let store = Store::open(&config).expect("open s3 store");
    Some(Backend {
        store,
        config,
        cas_enforced: server.conditional_writes_enforced(),
        _dir: None,
    })
}
