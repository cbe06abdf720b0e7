//! Object stores, the warmspare repository format, the streaming codec and
//! the compare-and-swap primitive.
//!
//! Everything warmspare keeps lives in a *repository*: an object-store
//! location (`s3://bucket/prefix` on AWS, MinIO or another S3-compatible
//! server, or `file:///path`) that both sites can reach. This crate opens
//! such stores and defines what goes into them.
//!
//! # Main types
//!
//! * [`StoreConfig`] → [`Store`]: an [`object_store::ObjectStore`] (the
//!   storage trait; this crate does not invent another), plus the matching
//!   [`CompareAndSwap`] and [`Codec`].
//! * [`CompareAndSwap`]: create-if-absent and compare-and-swap on single
//!   small objects, the primitive the lease is built on.
//!   [`ConditionalPutCas`] (S3 conditional PUTs) and [`LocalCas`]
//!   (filesystem, `flock`). [`probe_cas`] checks that a backend really keeps
//!   the contract.
//! * [`Codec`]: streaming put/get of data objects through zstd and SHA-256
//!   in bounded memory; [`ObjectInfo`] records sizes and digests.
//! * [`crypto`]: optional encryption at rest of data objects
//!   (XChaCha20-Poly1305 STREAM); [`EncryptionKey`] from key bytes, set with
//!   [`StoreConfig::with_encryption_key`]; [`Store::encryption_enabled`].
//! * [`Repository`]: format version 1 ([`layout`]): the `FORMAT` object,
//!   time-sortable [`SnapshotId`]s, the snapshot commit protocol
//!   ([`SnapshotWriter`], [`Manifest`] written last), listing and
//!   verification.
//! * [`record`]: the self-checking JSON envelope of manifests (and of other
//!   crates' records through [`Repository::seal_record`] /
//!   [`Repository::open_record`]); with a key, authenticated by
//!   HMAC-SHA256 under a subkey of the key ([`Authenticity`]).
//! * [`check_repository`]: a table of what works against a store.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use warmspare_store::{Repository, SnapshotKind, Store, StoreConfig};
//!
//! let dir = tempfile::tempdir()?;
//! let url = format!("file://{}", dir.path().display());
//! let store = Store::open(&StoreConfig::new(url))?;
//! let now = time::OffsetDateTime::now_utc(); // callers pass their clock's reading
//! let repo = Repository::init(store, now).await?;
//!
//! let mut snapshot = repo.begin_snapshot(SnapshotKind::Logical, now).await?;
//! snapshot.put_file("dump.pgdump", &b"-- a database dump"[..]).await?;
//! let manifest = snapshot.commit(serde_json::json!({"db": "builder"}), Some(1), now).await?;
//!
//! assert_eq!(repo.list_snapshots().await?, vec![manifest.id.clone()]);
//! let mut restored = Vec::new();
//! repo.read_file(&manifest.id, "dump.pgdump", &mut restored).await?;
//! assert_eq!(restored, b"-- a database dump");
//! assert!(repo.verify_snapshot(&manifest.id).await?.is_ok());
//! # Ok(())
//! # }
//! ```
//!
//! # Key design decisions
//!
//! * **The manifest is the commit.** Data objects are written first, the
//!   manifest last and create-if-absent; only snapshots with a manifest are
//!   listed. A crash at any moment leaves the repository valid.
//! * **Every object's SHA-256 is recorded by its writer and checked by its
//!   reader** (S3 metadata carries no readable checksum, and the local ETag
//!   is not a content hash). A mismatch is [`Error::DigestMismatch`] naming
//!   the object, never a silent restore. Manifests carry a digest of their
//!   own bytes and, in a repository with a key, a MAC over those bytes and
//!   their path: a reader with the key refuses a manifest that someone
//!   without it wrote, edited or moved ([`Error::Unauthenticated`]).
//! * **Compare-and-swap is a trait with a contract and a probe,** because
//!   backends differ: `LocalFileSystem` has no conditional update, and some
//!   S3-compatible servers ignore conditional headers. Versions are
//!   content-derived on every backend, so writers that need to see every
//!   change include a nonce (see the ABA note on [`CompareAndSwap`]).
//! * **Memory does not grow with data size**: data streams through
//!   compression, hashing and multipart upload in bounded buffers.
//! * **No hidden inputs**: the library never reads environment variables
//!   ([`StoreConfig::apply_env`] takes them from the caller), never prints,
//!   and takes the time as a parameter.
//! * **Defaults fit multi-GiB objects**: no whole-request timeout, but a
//!   connect timeout and a read (stall) timeout.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
// Tests may unwrap; library code may not (workspace lint `unwrap_used`).
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub use object_store;

mod cas;
mod check;
mod codec;
mod config;
pub mod crypto;
mod error;
mod id;
pub mod layout;
mod manifest;
pub mod record;
pub mod redact;
mod repo;
mod serde_util;
mod store;

pub use cas::{
    CasProbeReport, CasProbeStep, CasProbeStepKind, CompareAndSwap, ConditionalPutCas, LocalCas,
    Version, probe_cas,
};
pub use check::{CheckOutcome, CheckStatus, check_repository, rows as check_rows};
pub use codec::{
    Check, Codec, Compression, DEFAULT_MAX_CONCURRENCY, DEFAULT_PART_SIZE, ObjectInfo, Progress,
    ReadStage, ReadWrapper, SealedPut,
};
pub use config::{
    DEFAULT_COMPRESSION_LEVEL, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_RETRIES, DEFAULT_READ_TIMEOUT,
    DEFAULT_RETRY_TIMEOUT, Location, Secret, StoreConfig,
};
pub use crypto::{Encryption, EncryptionKey};
pub use error::{Error, Result};
pub use id::SnapshotId;
pub use manifest::{
    FORMAT_NAME, FORMAT_VERSION, FormatInfo, MANIFEST_VERSION, Manifest, SnapshotKind,
};
pub use record::{Authenticity, MissingMac};
pub use repo::{Repository, SnapshotWriter, VerifyReport};
pub use store::Store;
