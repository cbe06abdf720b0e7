//! [`ConditionalPutCas`]: compare-and-swap through conditional PUTs.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{GetOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, UpdateVersion};

use super::{CompareAndSwap, Version};
use crate::error::{Error, Result};

/// How often a conditional write is re-sent after the backend reported a
/// conflicting concurrent request (S3 `409 ConditionalRequestConflict`),
/// on top of object_store's own retries.
const DEFAULT_CONFLICT_RETRIES: u32 = 5;

/// Compare-and-swap over any [`ObjectStore`] with conditional PUTs
/// (`PutMode::Create` and `PutMode::Update`): S3 and S3-compatible servers.
///
/// * `create` sends `If-None-Match: *`; `412`/`304` mean the object exists.
/// * `update` sends `If-Match: <etag>`; `412` (or `404`) means the version
///   changed.
/// * `409 ConditionalRequestConflict` (S3 rejecting one of several
///   concurrent conditional requests) is retried a bounded number of times
///   with jittered backoff, then reported as [`Error::Conflict`].
/// * A rejected write is resolved by reading back: if the current content
///   is byte-identical to what this call sent, the earlier attempt of this
///   same call succeeded (a re-sent request after a lost response) and the
///   call reports success. See the contract of [`CompareAndSwap`].
///
/// On `LocalFileSystem` this reports [`Error::Unsupported`] for `update`;
/// use [`super::LocalCas`] there.
#[derive(Debug, Clone)]
pub struct ConditionalPutCas {
    store: Arc<dyn ObjectStore>,
    conflict_retries: u32,
}

impl ConditionalPutCas {
    /// A compare-and-swap over `store`.
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self {
            store,
            conflict_retries: DEFAULT_CONFLICT_RETRIES,
        }
    }

    /// Sets how often a write is re-sent after a `409` conflict.
    pub fn with_conflict_retries(mut self, retries: u32) -> Self {
        self.conflict_retries = retries;
        self
    }

    /// `Some(version)` if the object currently holds exactly `content`.
    async fn current_if_same(&self, path: &Path, content: &Bytes) -> Result<Option<Version>> {
        Ok(match self.read(path).await? {
            Some((current, version)) if current == *content => Some(version),
            _ => None,
        })
    }
}

fn version_of(path: &Path, e_tag: Option<String>, version: Option<String>) -> Result<Version> {
    let token = e_tag.ok_or_else(|| Error::Unsupported {
        path: path.to_string(),
        operation: "compare-and-swap (the backend returned no ETag)".into(),
    })?;
    Ok(Version::new(token, version))
}

/// Jittered exponential backoff: 20 ms, 40 ms, ... capped at 1 s.
async fn backoff(attempt: u32) {
    let base = 20u64.saturating_mul(1 << attempt.min(6)).min(1000);
    let jitter = rand::random_range(0..=base);
    tokio::time::sleep(Duration::from_millis(base / 2 + jitter / 2)).await;
}

#[async_trait::async_trait]
impl CompareAndSwap for ConditionalPutCas {
    async fn read(&self, path: &Path) -> Result<Option<(Bytes, Version)>> {
        let result = match self.store.get_opts(path, GetOptions::default()).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(Error::from_store(path.to_string(), e)),
        };
        let version = version_of(path, result.meta.e_tag.clone(), result.meta.version.clone())?;
        let content = result
            .bytes()
            .await
            .map_err(|e| Error::from_store(path.to_string(), e))?;
        Ok(Some((content, version)))
    }

    async fn create(&self, path: &Path, content: Bytes) -> Result<Version> {
        let mut attempt = 0;
        loop {
            let opts = PutOptions::from(PutMode::Create);
            match self
                .store
                .put_opts(path, content.clone().into(), opts)
                .await
            {
                Ok(put) => return version_of(path, put.e_tag, put.version),
                // 412/304 (exists) and 409 (a concurrent conditional request)
                // both arrive as AlreadyExists.
                Err(object_store::Error::AlreadyExists { .. }) => {
                    match self.read(path).await? {
                        Some((current, version)) if current == content => return Ok(version),
                        Some(_) => {
                            return Err(Error::AlreadyExists {
                                path: path.to_string(),
                            });
                        }
                        // A 409 whose competing write did not land: try again.
                        None if attempt < self.conflict_retries => {
                            attempt += 1;
                            backoff(attempt).await;
                        }
                        None => {
                            return Err(Error::Conflict {
                                path: path.to_string(),
                            });
                        }
                    }
                }
                Err(e) => return Err(Error::from_store(path.to_string(), e)),
            }
        }
    }

    async fn update(&self, path: &Path, content: Bytes, expected: &Version) -> Result<Version> {
        let mut attempt = 0;
        loop {
            let mode = PutMode::Update(UpdateVersion {
                e_tag: Some(expected.token().to_string()),
                version: expected.object_version().map(str::to_string),
            });
            match self
                .store
                .put_opts(path, content.clone().into(), PutOptions::from(mode))
                .await
            {
                Ok(put) => return version_of(path, put.e_tag, put.version),
                Err(
                    object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. },
                ) => {
                    return match self.current_if_same(path, &content).await? {
                        Some(version) => Ok(version),
                        None => Err(Error::VersionMismatch {
                            path: path.to_string(),
                        }),
                    };
                }
                // 409 ConditionalRequestConflict after object_store's retries.
                Err(object_store::Error::AlreadyExists { .. }) => match self.read(path).await? {
                    Some((current, version)) if current == content => return Ok(version),
                    Some((_, version))
                        if version == *expected && attempt < self.conflict_retries =>
                    {
                        attempt += 1;
                        backoff(attempt).await;
                    }
                    Some((_, version)) if version == *expected => {
                        return Err(Error::Conflict {
                            path: path.to_string(),
                        });
                    }
                    _ => {
                        return Err(Error::VersionMismatch {
                            path: path.to_string(),
                        });
                    }
                },
                Err(e) => return Err(Error::from_store(path.to_string(), e)),
            }
        }
    }

    async fn delete(&self, path: &Path) -> Result<()> {
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Error::from_store(path.to_string(), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    #[tokio::test]
    async fn in_memory_store_keeps_the_contract() {
        let cas = ConditionalPutCas::new(Arc::new(InMemory::new()));
        let path = Path::from("lease/active.json");
        assert!(cas.read(&path).await.unwrap().is_none());
        let v1 = cas.create(&path, Bytes::from_static(b"a")).await.unwrap();
        let again = cas.create(&path, Bytes::from_static(b"b")).await;
        assert!(
            matches!(again, Err(Error::AlreadyExists { .. })),
            "{again:?}"
        );
        let v2 = cas
            .update(&path, Bytes::from_static(b"c"), &v1)
            .await
            .unwrap();
        let stale = cas.update(&path, Bytes::from_static(b"d"), &v1).await;
        assert!(
            matches!(stale, Err(Error::VersionMismatch { .. })),
            "{stale:?}"
        );
        // Re-sending the write that already won (lost response) succeeds.
        let resent = cas
            .update(&path, Bytes::from_static(b"c"), &v1)
            .await
            .unwrap();
        assert_eq!(resent, v2);
        cas.delete(&path).await.unwrap();
        cas.delete(&path).await.unwrap();
        assert!(cas.read(&path).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn local_filesystem_update_is_reported_unsupported() {
        let dir = tempfile::tempdir().unwrap();
        let fs = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        let cas = ConditionalPutCas::new(Arc::new(fs));
        let path = Path::from("x");
        let v = cas.create(&path, Bytes::from_static(b"a")).await.unwrap();
        let r = cas.update(&path, Bytes::from_static(b"b"), &v).await;
        assert!(matches!(r, Err(Error::Unsupported { .. })), "{r:?}");
    }
}
