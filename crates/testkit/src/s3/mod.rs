//! A real S3 endpoint on loopback: moto's standalone server by default,
//! Garage when `WARMSPARE_TEST_S3=garage`.

mod garage;
mod http;
mod moto;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use object_store::ObjectStore;
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use tokio::sync::OnceCell;

use crate::error::{Error, Result};
use warmspare_pgcluster::Watchdog;

/// Selects the server: `moto` (default) or `garage`.
pub const TEST_S3_ENV: &str = "WARMSPARE_TEST_S3";
/// Path of the `moto_server` executable, overriding the search.
pub const MOTO_ENV: &str = "WARMSPARE_MOTO";
/// Path of the `garage` executable, overriding the search of `PATH`.
pub const GARAGE_ENV: &str = "WARMSPARE_GARAGE";
/// `http://127.0.0.1:PORT` of an already running moto server that
/// [`S3Server::shared`] uses instead of starting one (`scripts/test` starts
/// one for the whole run, so that test processes do not each start moto).
pub const S3_ENDPOINT_ENV: &str = "WARMSPARE_S3_ENDPOINT";
/// When set to anything but `0` or empty, [`S3Server::try_shared`] and
/// [`S3Server::try_start`] fail instead of skipping when no server is
/// installed (`scripts/test` sets it under `CI=true`).
pub const REQUIRE_S3_ENV: &str = "WARMSPARE_REQUIRE_S3";

/// Which S3 implementation a [`S3Server`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum S3Kind {
    /// moto's standalone server (Python): enforces conditional writes.
    Moto,
    /// Garage: accepts `If-None-Match`/`If-Match` but ignores them (2.5.0).
    Garage,
}

/// An S3-compatible server on `127.0.0.1`, stopped on drop.
///
/// Either start a private one with [`S3Server::start`] (about two seconds
/// for moto), or share one per test process with [`S3Server::shared`] and
/// give every test its own bucket with [`S3Server::unique_bucket`].
#[derive(Debug)]
pub struct S3Server {
    kind: S3Kind,
    addr: String,
    region: String,
    access_key_id: String,
    secret_access_key: String,
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    /// Somebody else runs it (see [`S3_ENDPOINT_ENV`]).
    External,
    Moto {
        // Declared before `_dir`: the server stops before its directory goes.
        _watchdog: Watchdog,
        _dir: tempfile::TempDir,
    },
    Garage(garage::Garage),
}

impl S3Server {
    /// Starts a private server of the kind chosen by `WARMSPARE_TEST_S3`.
    pub async fn start() -> Result<S3Server> {
        match selected_kind()? {
            S3Kind::Moto => moto::start().await,
            S3Kind::Garage => garage::start().await,
        }
    }

    /// Like [`S3Server::start`], but `Ok(None)` (after a note on stderr)
    /// when the server is not installed, unless `WARMSPARE_REQUIRE_S3` is
    /// set. Use it to skip S3 tests on machines without moto.
    pub async fn try_start() -> Result<Option<S3Server>> {
        skip_if_missing(S3Server::start().await)
    }

    /// One server per test process, started on first use and stopped when
    /// the process exits. When `WARMSPARE_S3_ENDPOINT` is set (and the kind
    /// is moto), that server is used instead.
    pub async fn shared() -> Result<&'static S3Server> {
        static SHARED: OnceCell<S3Server> = OnceCell::const_new();
        SHARED
            .get_or_try_init(|| async {
                match std::env::var(S3_ENDPOINT_ENV) {
                    Ok(endpoint) if !endpoint.is_empty() && selected_kind()? == S3Kind::Moto => {
                        S3Server::external(&endpoint)
                    }
                    _ => S3Server::start().await,
                }
            })
            .await
    }

    /// Like [`S3Server::shared`], but `Ok(None)` when the server is not
    /// installed and `WARMSPARE_REQUIRE_S3` is not set:
    ///
    /// ```no_run
    /// # async fn t() -> warmspare_testkit::Result<()> {
    /// let Some(s3) = warmspare_testkit::S3Server::try_shared().await? else {
    ///     return Ok(()); // skipped: no moto here
    /// };
    /// let bucket = s3.unique_bucket("lease").await?;
    /// let store = s3.store_for_bucket(&bucket)?;
    /// # Ok(()) }
    /// ```
    pub async fn try_shared() -> Result<Option<&'static S3Server>> {
        skip_if_missing(S3Server::shared().await)
    }

    fn external(endpoint: &str) -> Result<S3Server> {
        let addr = endpoint
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        if addr.contains('/') || !addr.contains(':') {
            return Err(Error::Environment(format!(
                "{S3_ENDPOINT_ENV}={endpoint} is not of the form http://HOST:PORT"
            )));
        }
        Ok(S3Server::moto_like(addr, Backend::External))
    }

    fn moto_like(addr: String, backend: Backend) -> S3Server {
        S3Server {
            kind: S3Kind::Moto,
            addr,
            region: "us-east-1".into(),
            access_key_id: "testing".into(),
            secret_access_key: "testing".into(),
            backend,
        }
    }

    /// Which implementation this is.
    pub fn kind(&self) -> S3Kind {
        self.kind
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The region to sign requests for (`us-east-1`).
    pub fn region(&self) -> &str {
        &self.region
    }

    /// An access key id the server accepts.
    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }

    /// The secret for [`S3Server::access_key_id`].
    pub fn secret_access_key(&self) -> &str {
        &self.secret_access_key
    }

    /// Whether the server honours `If-None-Match: *` and `If-Match` on PUT
    /// (moto does; Garage 2.5.0 accepts the headers and ignores them).
    pub fn conditional_writes_enforced(&self) -> bool {
        match self.kind {
            S3Kind::Moto => true,
            S3Kind::Garage => false,
        }
    }

    /// Creates a bucket. Whether creating an existing bucket fails depends
    /// on the server (moto, like AWS in us-east-1, accepts it again): use
    /// [`S3Server::unique_bucket`] for isolation between tests.
    pub async fn create_bucket(&self, name: &str) -> Result<()> {
        match &self.backend {
            Backend::Garage(garage) => garage.create_bucket(name).await,
            Backend::External | Backend::Moto { .. } => {
                // moto accepts unsigned requests.
                let response = http::request(&self.addr, "PUT", &format!("/{name}")).await?;
                if response.status == 200 {
                    Ok(())
                } else {
                    Err(Error::Http {
                        request: format!("PUT /{name}"),
                        status: response.status,
                        body: response.body,
                    })
                }
            }
        }
    }

    /// Creates a bucket with a name unique across processes and tests,
    /// starting with `prefix`, and returns the name.
    pub async fn unique_bucket(&self, prefix: &str) -> Result<String> {
        let name = unique_bucket_name(prefix);
        self.create_bucket(&name).await?;
        Ok(name)
    }

    /// An `object_store` client for `bucket` on this server: path-style
    /// requests over plain HTTP, conditional puts with `If-Match` /
    /// `If-None-Match` ([`S3ConditionalPut::ETagMatch`]).
    pub fn store_for_bucket(&self, bucket: &str) -> Result<Arc<dyn ObjectStore>> {
        let store = AmazonS3Builder::new()
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .with_region(&self.region)
            .with_bucket_name(bucket)
            .with_access_key_id(&self.access_key_id)
            .with_secret_access_key(&self.secret_access_key)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .build()?;
        Ok(Arc::new(store))
    }
}

fn selected_kind() -> Result<S3Kind> {
    match std::env::var(TEST_S3_ENV).as_deref() {
        Err(_) | Ok("") | Ok("moto") => Ok(S3Kind::Moto),
        Ok("garage") => Ok(S3Kind::Garage),
        Ok(other) => Err(Error::Environment(format!(
            "{TEST_S3_ENV}={other}: expected `moto` or `garage`"
        ))),
    }
}

fn s3_required() -> bool {
    std::env::var(REQUIRE_S3_ENV).is_ok_and(|v| !v.is_empty() && v != "0")
}

fn skip_if_missing<T>(result: Result<T>) -> Result<Option<T>> {
    match result {
        Ok(server) => Ok(Some(server)),
        Err(err) if err.is_not_installed() && !s3_required() => {
            eprintln!("skipping S3 test: {err} (set {REQUIRE_S3_ENV}=1 to fail instead)");
            Ok(None)
        }
        Err(err) => Err(err),
    }
}

/// `<prefix>-<pid>-<counter>-<random>`, lowercased and cut to S3's rules
/// (3-63 characters of `a-z0-9-`).
fn unique_bucket_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut clean: String = prefix
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(30)
        .collect();
    clean = clean.trim_matches('-').to_owned();
    if clean.is_empty() {
        clean.push_str("test");
    }
    let suffix: u32 = rand::random();
    format!("{clean}-{}-{n}-{suffix:08x}", std::process::id())
}

/// Where the workspace keeps its Python tools (`<workspace>/.venv/bin`).
fn workspace_venv_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(".venv/bin")
}

/// Polls `GET /` until the server answers with any HTTP status, the
/// server's process exits, or `timeout` passes.
async fn wait_http_ready(
    addr: &str,
    watchdog: &mut Watchdog,
    timeout: Duration,
) -> std::result::Result<(), WaitError> {
    let deadline = Instant::now() + timeout;
    loop {
        if watchdog.has_exited() {
            return Err(WaitError::Exited);
        }
        let last = match http::request(addr, "GET", "/").await {
            Ok(_) => return Ok(()),
            Err(err) => err.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(WaitError::Timeout(last));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

enum WaitError {
    /// The server process is gone (usually: port taken).
    Exited,
    /// Still not answering; the last probe error.
    Timeout(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names_are_valid_and_unique() {
        let a = unique_bucket_name("Lease_Test");
        let b = unique_bucket_name("Lease_Test");
        assert_ne!(a, b);
        assert!(a.starts_with("lease-test-"));
        assert!(a.len() <= 63);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
        assert!(unique_bucket_name("__").starts_with("test-"));
    }
}
