//! [`Store`]: an object store, its compare-and-swap primitive and its codec,
//! opened from a [`StoreConfig`].

use std::fmt;
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;

use crate::cas::{CompareAndSwap, ConditionalPutCas, LocalCas};
use crate::codec::Codec;
use crate::config::{Location, StoreConfig};
use crate::error::{Error, Result};

/// An opened object store: the raw [`ObjectStore`], the matching
/// [`CompareAndSwap`] implementation and the [`Codec`] for data objects.
///
/// Cheap to clone (everything is behind `Arc`s).
#[derive(Clone)]
pub struct Store {
    object_store: Arc<dyn ObjectStore>,
    cas: Arc<dyn CompareAndSwap>,
    codec: Codec,
    display_url: String,
    /// The directory of a `file://` store: [`Store::delete_prefix`] also
    /// removes the staging files of multipart uploads that a crash left
    /// behind, which `LocalFileSystem` neither lists nor deletes.
    local_root: Option<std::path::PathBuf>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("url", &self.display_url)
            .field("codec", &self.codec)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens the store described by `config`.
    ///
    /// * `file:///path`: the directory is created if missing; objects are
    ///   written with fsync; compare-and-swap is [`LocalCas`].
    /// * `s3://bucket/prefix`: an S3 client (AWS, or the configured
    ///   endpoint) with conditional PUTs enabled, wrapped in a prefix store
    ///   when a prefix is given; compare-and-swap is [`ConditionalPutCas`].
    ///
    /// Nothing is contacted yet; [`crate::check_repository`] does that.
    pub fn open(config: &StoreConfig) -> Result<Self> {
        config.validate()?;
        let location = Location::parse(&config.url)?;
        let codec = Codec::new(config.compression)
            .with_level(config.compression_level)
            .with_encryption(config.encryption.clone())
            .with_allow_unencrypted(config.allow_unencrypted);
        match &location {
            Location::File { path } => {
                std::fs::create_dir_all(path).map_err(|source| Error::Io {
                    context: "creating repository directory",
                    path: path.display().to_string(),
                    source,
                })?;
                let fs = LocalFileSystem::new_with_prefix(path)
                    .map_err(|e| Error::from_store(path.display().to_string(), e))?
                    .with_fsync(true)
                    // Remove directories that a delete left empty, as an
                    // object store would: otherwise a pruned snapshot's
                    // empty directory lingers as an "incomplete snapshot".
                    .with_automatic_cleanup(true);
                let cas = LocalCas::new(path)?;
                Ok(Self {
                    object_store: Arc::new(fs),
                    cas: Arc::new(cas),
                    codec,
                    display_url: location.display_url(),
                    local_root: Some(path.clone()),
                })
            }
            Location::S3 { bucket, prefix } => {
                let store = build_s3(config, bucket)?;
                let store: Arc<dyn ObjectStore> = match prefix {
                    Some(prefix) => Arc::new(PrefixStore::new(store, prefix.clone())),
                    None => Arc::new(store),
                };
                Ok(Self {
                    cas: Arc::new(ConditionalPutCas::new(Arc::clone(&store))),
                    object_store: store,
                    codec,
                    display_url: location.display_url(),
                    local_root: None,
                })
            }
        }
    }

    /// Assembles a store from parts: for embedders with their own
    /// `ObjectStore` and for tests that wrap one (fault injection).
    /// `display_url` must not contain credentials.
    pub fn from_parts(
        display_url: impl Into<String>,
        object_store: Arc<dyn ObjectStore>,
        cas: Arc<dyn CompareAndSwap>,
    ) -> Self {
        Self {
            object_store,
            cas,
            codec: Codec::default(),
            display_url: display_url.into(),
            local_root: None,
        }
    }

    /// Replaces the codec used for data objects.
    pub fn with_codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// The raw object store. Paths are relative to the repository root.
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.object_store
    }

    /// The compare-and-swap primitive over the same objects.
    pub fn cas(&self) -> &Arc<dyn CompareAndSwap> {
        &self.cas
    }

    /// The codec for data objects (compression settings from the config).
    pub fn codec(&self) -> &Codec {
        &self.codec
    }

    /// Whether encryption at rest is configured (with its key loaded or
    /// not). Everything written through [`Store::codec`] is then encrypted
    /// (or refused); code that writes data objects to
    /// [`Store::object_store`] directly must refuse to run, or encrypt.
    pub fn encryption_enabled(&self) -> bool {
        self.codec.encryption().is_enabled()
    }

    /// Deletes every object under `prefix` and returns how many it deleted.
    ///
    /// On a `file://` store it also removes what a crashed multipart upload
    /// left under the prefix: `LocalFileSystem` stages such uploads in
    /// `<name>#<n>` files that it never lists, so an object-level delete
    /// cannot see them. On S3 the parts of an abandoned upload are invisible
    /// and are removed by the bucket's lifecycle rule for incomplete
    /// multipart uploads (see the operator docs). Only call this on a prefix
    /// that nobody writes to any more (an abandoned snapshot).
    pub async fn delete_prefix(&self, prefix: &object_store::path::Path) -> Result<u64> {
        use futures::{StreamExt, TryStreamExt};
        let locations = self
            .object_store
            .list(Some(prefix))
            .map_ok(|meta| meta.location)
            .boxed();
        let mut results = self.object_store.delete_stream(locations);
        let mut deleted = 0;
        while let Some(result) = results.next().await {
            match result {
                Ok(_) => deleted += 1,
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(Error::from_store(prefix.as_ref(), e)),
            }
        }
        if let Some(root) = &self.local_root
            && !prefix.as_ref().is_empty()
        {
            let dir = prefix
                .parts()
                .fold(root.clone(), |dir, part| dir.join(part.as_ref()));
            match tokio::fs::remove_dir_all(&dir).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(Error::Io {
                        context: "removing an abandoned upload's staging files",
                        path: dir.display().to_string(),
                        source,
                    });
                }
            }
        }
        Ok(deleted)
    }

    /// The directory of a `file://` store (its objects are the files
    /// under it, as `LocalFileSystem` maps them); `None` for other stores
    /// and for stores assembled with [`Store::from_parts`]. The mirror
    /// reads and writes such a directory directly.
    pub fn local_root(&self) -> Option<&std::path::Path> {
        self.local_root.as_deref()
    }

    /// The store's URL for messages; never contains credentials.
    pub fn display_url(&self) -> String {
        self.display_url.clone()
    }
}

fn build_s3(config: &StoreConfig, bucket: &str) -> Result<object_store::aws::AmazonS3> {
    let mut client = object_store::ClientOptions::new()
        .with_allow_http(config.allow_http)
        .with_connect_timeout(config.connect_timeout)
        .with_read_timeout(config.read_timeout);
    client = match config.timeout {
        Some(timeout) => client.with_timeout(timeout),
        None => client.with_timeout_disabled(),
    };
    let mut builder = AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_region(config.region.as_deref().unwrap_or("us-east-1"))
        .with_allow_http(config.allow_http)
        .with_virtual_hosted_style_request(!config.effective_path_style())
        // The default, stated explicitly: the lease depends on it.
        .with_conditional_put(S3ConditionalPut::ETagMatch)
        .with_client_options(client)
        .with_retry(object_store::RetryConfig {
            max_retries: config.max_retries,
            retry_timeout: config.retry_timeout,
            ..object_store::RetryConfig::default()
        });
    if let Some(endpoint) = &config.endpoint {
        builder = builder.with_endpoint(endpoint.trim_end_matches('/'));
    }
    if let (Some(key), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
        builder = builder
            .with_access_key_id(key)
            .with_secret_access_key(secret.expose());
        if let Some(token) = &config.session_token {
            builder = builder.with_token(token.expose());
        }
    }
    builder.build().map_err(|e| Error::InvalidConfig {
        // object_store's builder errors name settings, not their values.
        reason: format!("s3 bucket {bucket}: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_store_creates_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("a/b/repo");
        let url = url::Url::from_file_path(&root).unwrap().to_string();
        let store = Store::open(&StoreConfig::new(&url)).unwrap();
        assert!(root.is_dir());
        assert!(store.display_url().starts_with("file:///"));
    }

    #[tokio::test]
    async fn encrypted_repository_round_trip_and_clear_failures() {
        use crate::{EncryptionKey, Repository, SnapshotKind};
        let dir = tempfile::tempdir().unwrap();
        let url = url::Url::from_directory_path(dir.path())
            .unwrap()
            .to_string();
        let key = EncryptionKey::generate();
        let store = Store::open(&StoreConfig::new(&url).with_encryption_key(key.clone())).unwrap();
        assert!(store.encryption_enabled());
        assert!(!format!("{store:?}").contains(key.to_hex().as_str()));
        let now = time::OffsetDateTime::now_utc();
        let repo = Repository::init(store, now).await.unwrap();
        let mut w = repo
            .begin_snapshot(SnapshotKind::Logical, now)
            .await
            .unwrap();
        w.put_file("dump", &b"secret rows"[..]).await.unwrap();
        let m = w.commit(serde_json::json!({}), None, now).await.unwrap();
        assert_eq!(m.files["dump"].encryption_key_id, Some(key.id()));
        let mut out = Vec::new();
        repo.read_file(&m.id, "dump", &mut out).await.unwrap();
        assert_eq!(out, b"secret rows");
        assert!(repo.verify_snapshot(&m.id).await.unwrap().is_ok());

        let plain = Repository::open(Store::open(&StoreConfig::new(&url)).unwrap())
            .await
            .unwrap();
        assert!(!plain.store().encryption_enabled());
        let err = plain
            .read_file(&m.id, "dump", &mut Vec::new())
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&format!("snapshots/{}/dump", m.id)), "{text}");
        assert!(
            text.contains("is encrypted") && text.contains("encryption_key_file"),
            "{text}"
        );
        assert!(!plain.verify_snapshot(&m.id).await.unwrap().is_ok());
    }

    #[test]
    fn s3_store_opens_without_contacting_anything() {
        let config = StoreConfig::new("s3://bucket/some/prefix")
            .with_endpoint("http://127.0.0.1:1")
            .with_allow_http(true)
            .with_credentials("AKID", "hunter2");
        let store = Store::open(&config).unwrap();
        assert_eq!(store.display_url(), "s3://bucket/some/prefix");
        assert!(!format!("{store:?}").contains("hunter2"));
    }
}
