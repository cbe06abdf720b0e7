//! The replication engine of warmspare: a verified, incremental mirror
//! from one artifact store to another, and point-in-time artifact backups
//! (inventories with content-addressed blobs) that can be restored after
//! the primary deleted or overwrote objects.
//!
//! # Main items
//!
//! * [`sync()`] with [`SyncOptions`] → [`SyncReport`], progress as
//!   [`SyncEvent`]s: the mirror (`warmspare sync`); [`sync_endpoints`]
//!   with [`Endpoint::local`] reads and writes `file://` directories
//!   directly. Dropping a run's future stops it: no write to the target
//!   starts afterwards, those already started end on their own (about one
//!   request's time); [`sync_endpoints_until`] stops a run and returns once
//!   they ended ([`mod@sync`], "Stopping a run").
//! * [`backup_artifacts`] → [`ArtifactBackup`] holding an [`Inventory`]
//!   (`warmspare backup artifacts`); [`restore_artifacts`] writes one
//!   inventory's state into a store (`warmspare restore artifacts`;
//!   [`restore_artifacts_to`] with an [`Endpoint`] writes a `file://`
//!   directory directly);
//!   [`read_inventory`], [`list_inventories`].
//! * [`take_recovery_point`] (`warmspare backup`): a database snapshot
//!   (through `warmspare-snapshot`), the WAL position and an artifact
//!   inventory, recorded as a [`RecoveryPoint`]; [`write_point`],
//!   [`read_point`], [`list_points`] and [`resolve_inventory`].
//! * [`prune_repository`] (`warmspare prune`): retention of recovery
//!   points, the snapshots and inventories kept points name, and a
//!   mark-and-sweep of blobs no kept inventory names, safe against backups
//!   running meanwhile ([`RepositoryPruneOptions`], [`RepositoryPruneReport`]).
//! * [`reconcile`]: database rows (queried by the caller) against a store:
//!   missing keys, digest mismatches, objects no row names.
//! * [`Error`] with [`Error::is_retryable`]; [`DeleteRefusal`] says why
//!   deletions were held back.
//!
//! Stores are plain `Arc<dyn ObjectStore>` ([`object_store`] is re-exported
//! from `warmspare-store`), so anything `object_store` supports can be a
//! source or a target.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use warmspare_replicate::object_store::{ObjectStore, ObjectStoreExt, local::LocalFileSystem, path::Path};
//! use warmspare_replicate::{SyncEvent, SyncOptions, sync};
//!
//! let (a, b) = (tempfile::tempdir()?, tempfile::tempdir()?);
//! let primary: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(a.path())?);
//! let spare: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(b.path())?);
//! primary.put(&Path::from("core/nginx/1.0.hart"), "artifact".into()).await?;
//!
//! let options = SyncOptions::default().with_delete(true);
//! let report = sync(&primary, &spare, &options, |event: &SyncEvent<'_>| {
//!     if let SyncEvent::Copied { key, .. } = event {
//!         let _ = key; // draw a progress bar, count a metric, ...
//!     }
//! })
//! .await?;
//! assert_eq!((report.copied, report.skipped), (1, 0));
//!
//! // Nothing changed: nothing is read again.
//! let report = sync(&primary, &spare, &options, |_: &SyncEvent<'_>| {}).await?;
//! assert_eq!((report.copied, report.skipped, report.bytes_read), (0, 1, 0));
//! # Ok(())
//! # }
//! ```
//!
//! # Key design decisions
//!
//! * **Diff by merging sorted listings.** Both stores are listed in key
//!   order and merged with the target's state record, in memory that does
//!   not grow with the object count ([`listing`] explains the two listing
//!   strategies; `LocalFileSystem` does not list in order).
//! * **Change detection never compares ETags across stores.** The target
//!   keeps a state record under the reserved prefix `.warmspare/`
//!   ([`state`]): the SHA-256 of each target object with the target's own
//!   version token, and the source's version token (ETag, time, size) at
//!   copy time. An unchanged pair is skipped by listing alone; a stale or
//!   lost record costs hashing, never a wrong skip.
//! * **A copy lands whole and verified, or not at all.** Bytes stream
//!   through SHA-256 into a single PUT or a multipart upload that is
//!   completed only after the size, the source's version and any known
//!   digest were checked ([`SourceVerify`]).
//! * **Nothing is recorded as copied that a crash could lose.** A
//!   `file://` target ([`Endpoint::local`]) is written without an `fsync`
//!   per object and made durable once (`syncfs`) before the state record
//!   or a checkpoint names the copies; checkpoints spare a killed run from
//!   reading again what it copied; an unchanged state is not rewritten.
//! * **Deletions are guarded**: only with `delete`, only after every copy
//!   succeeded and the listings completed, never for an empty source
//!   listing against a non-empty target, and within `max_delete` (1000)
//!   and `max_delete_fraction` (half the target) unless `force`.
//! * **Blobs are content-addressed** (`blobs/sha256/<2>/<64>`, the SHA-256
//!   of the plaintext): raw bytes, or with a repository key encrypted by
//!   the store's STREAM construction, so deduplication works either way;
//!   checked against their name on every restore. Inventories are sealed
//!   objects of the store codec (compressed, encrypted with a key); points
//!   are self-checking records; all are written create-if-absent.
//! * **Garbage collection never races a backup**: backups and prune
//!   announce themselves with activity markers and check for each other
//!   after announcing (see `docs/repository-format.md`).
//! * **Bounded resources**: a token-bucket byte-rate limit shared by all
//!   workers ([`RateLimiter`]), a buffer budget for uploads, a bounded
//!   window of keys in flight.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
// Tests may unwrap; library code may not (workspace lint `unwrap_used`).
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod activity;
mod backup;
mod blob;
mod endpoint;
mod error;
mod gc;
mod guard;
mod inventory;
mod journal;
mod limit;
pub mod listing;
mod local;
mod merge;
mod options;
mod point;
mod prune;
mod reconcile;
mod record;
mod recorder;
mod recovery;
mod report;
mod restore;
pub mod state;
pub mod sync;
mod transfer;

pub use activity::DEFAULT_STALE_AFTER as DEFAULT_MARKER_STALE_AFTER;
pub use backup::{ArtifactBackup, backup_artifacts};
pub use error::{Error, Result, Side};
pub use guard::DeleteRefusal;
pub use inventory::{
    INVENTORY_VERSION, Inventory, InventoryEntry, list_inventories, read_inventory, write_inventory,
};
pub use limit::RateLimiter;
pub use listing::{ListOrder, RESERVED_PREFIX};
pub use options::{
    DEFAULT_BUFFER_MEMORY, DEFAULT_CHECKPOINT_OBJECTS, DEFAULT_CONCURRENCY, DEFAULT_MAX_DELETE,
    DEFAULT_MAX_DELETE_FRACTION, DEFAULT_PART_SIZE, DEFAULT_RETRIES, SourceVerify, SyncOptions,
    parse_byte_rate,
};
pub use point::{
    POINT_VERSION, RecoveryPoint, list_points, read_point, read_point_checked, resolve_inventory,
    write_point,
};
pub use prune::{
    BlobSweep, DEFAULT_BLOB_GRACE, InventoryPrune, MAX_LISTED_BLOBS, PointPrune, PruneEvent,
    RepositoryPruneOptions, RepositoryPruneReport, prune_repository,
};
pub use reconcile::{
    DigestAlgorithm, ExpectedArtifact, MAX_REPORTED_KEYS, Mismatch, ReconcileReport, reconcile,
};
pub use recovery::{PointEvent, PointRequest, TakenPoint, previous_inventory, take_recovery_point};
pub use restore::{restore_artifacts, restore_artifacts_to};
pub use sync::{
    Endpoint, ProgressFn, SyncEvent, SyncReport, sync, sync_endpoints, sync_endpoints_until,
};
pub use warmspare_store::object_store;
