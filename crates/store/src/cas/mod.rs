//! Compare-and-swap on single small objects: the primitive the lease (and
//! the create-once `FORMAT` object) is built on.
//!
//! Two implementations, chosen by [`crate::Store::open`]:
//!
//! * [`ConditionalPutCas`] for object stores with conditional PUTs (S3 and
//!   S3-compatible servers): `If-None-Match: *` to create, `If-Match: <etag>`
//!   to update.
//! * [`LocalCas`] for a filesystem directory, because `object_store`'s
//!   `LocalFileSystem` has no `PutMode::Update`; see its docs for why the
//!   flock-based scheme is correct.
//!
//! Backends differ in practice (some S3-compatible servers accept the
//! conditional headers and ignore them), so nothing may rely on a backend's
//! compare-and-swap before [`probe_cas`] passed on it.

use std::fmt;

use bytes::Bytes;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use crate::error::Result;

mod conditional;
mod local;
mod probe;

pub use conditional::ConditionalPutCas;
pub use local::LocalCas;
pub(crate) use probe::one_line;
pub use probe::{CasProbeReport, CasProbeStep, CasProbeStepKind, probe_cas};

/// The version of an object as observed by [`CompareAndSwap::read`] or
/// returned by a successful write. Opaque: compare only with `==`, and pass
/// it back to [`CompareAndSwap::update`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Version {
    token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    object_version: Option<String>,
}

impl Version {
    /// A version from a backend token (an ETag, or `sha256:<hex>` locally)
    /// and an optional backend object version id.
    pub fn new(token: impl Into<String>, object_version: Option<String>) -> Self {
        Self {
            token: token.into(),
            object_version,
        }
    }

    /// The backend token (an ETag on S3, `sha256:<hex>` on a filesystem).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The backend's object version id, if it reports one.
    pub fn object_version(&self) -> Option<&str> {
        self.object_version.as_deref()
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.token)
    }
}

/// Atomic create-if-absent and compare-and-swap on single small objects.
///
/// # Contract
///
/// * **Atomicity.** [`create`](Self::create) writes the object only if no
///   object exists at `path`; [`update`](Self::update) replaces it only if
///   its current version equals `expected`. Each succeeds or fails as a
///   whole; readers never observe partial content. Of any number of
///   concurrent `create`s of one path exactly one succeeds; of concurrent
///   `update`s from the same observed version at most one succeeds.
/// * **Errors.** A losing `create` returns [`Error::AlreadyExists`]; a
///   losing `update` (other version, or the object is gone) returns
///   [`Error::VersionMismatch`]. [`Error::Conflict`] means the backend kept
///   reporting concurrent requests and the outcome is "not applied"; it is
///   retryable.
/// * **Versions are content-derived** on both backends (SHA-256 of the
///   content locally; the ETag of a single-part PUT, an MD5 of the content,
///   on S3). So writing bytes identical to an earlier version recreates that
///   version (ABA). Writers that must detect every change (the lease) put a
///   nonce or a counter in the content.
/// * **Lost responses.** When a write's response is lost and the request is
///   re-sent, the re-sent request fails its own precondition although the
///   first one succeeded. An implementation may resolve this by reading
///   back: if the current content is byte-identical to what this call
///   wrote, it reports success with the current version. With a nonce in
///   the content that can only be this caller's own write.
/// * **Cancellation.** Dropping a future in flight leaves the write applied
///   or not applied, never half done; read to find out which.
/// * **Idempotency.** `read` and `delete` are idempotent; `delete` is
///   *unconditional* (object_store offers no conditional delete on S3) and
///   succeeds when the object is already gone.
/// * **Size.** For small objects held in memory (a lease, `FORMAT`); data
///   goes through [`crate::Codec`].
/// * **Trust.** Only backends on which [`probe_cas`] passed keep this
///   contract; some S3-compatible servers silently ignore conditional
///   headers.
///
/// [`Error::AlreadyExists`]: crate::Error::AlreadyExists
/// [`Error::VersionMismatch`]: crate::Error::VersionMismatch
/// [`Error::Conflict`]: crate::Error::Conflict
#[async_trait::async_trait]
pub trait CompareAndSwap: fmt::Debug + Send + Sync + 'static {
    /// The current content and its version, or `None` if there is no object.
    async fn read(&self, path: &Path) -> Result<Option<(Bytes, Version)>>;

    /// Writes `content` if no object exists at `path`.
    async fn create(&self, path: &Path, content: Bytes) -> Result<Version>;

    /// Replaces the object with `content` if its current version is
    /// `expected`.
    async fn update(&self, path: &Path, content: Bytes, expected: &Version) -> Result<Version>;

    /// Removes the object unconditionally; succeeds if it does not exist.
    async fn delete(&self, path: &Path) -> Result<()>;
}

/// SHA-256 of `bytes`, lowercase hex.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
