//! The snapshots in a repository: resolving `latest`, listing, verifying
//! and deleting.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use time::OffsetDateTime;
use warmspare_store::object_store::{ObjectStoreExt, path::Path};
use warmspare_store::{Manifest, Repository, SnapshotId, SnapshotKind, VerifyReport, layout};

use crate::error::{Error, Result};

/// How many manifests are read at once while listing.
const LIST_CONCURRENCY: usize = 8;

/// What the operator may name a snapshot by: an id, or `latest`.
pub const LATEST: &str = "latest";

/// Resolves `spec` (an id, or `latest`: the newest committed snapshot of
/// `kind`, any kind when `None`) to its manifest.
///
/// # Errors
///
/// [`Error::InvalidSnapshotId`] for text that is neither, [`Error::SnapshotNotFound`]
/// for an id without a committed snapshot, [`Error::NoSnapshots`] when
/// `latest` finds nothing, [`Error::WrongKind`] for an id of another kind.
/// While looking for the latest snapshot of a kind, a manifest that cannot be
/// read is an error rather than skipped: silently restoring an older
/// snapshot than the operator expects is worse.
pub async fn resolve(
    repo: &Repository,
    spec: &str,
    kind: Option<SnapshotKind>,
) -> Result<Manifest> {
    if spec == LATEST {
        for id in repo.list_snapshots().await? {
            let manifest = read_manifest(repo, &id).await?;
            if kind.is_none_or(|k| k == manifest.kind) {
                return Ok(manifest);
            }
        }
        return Err(Error::NoSnapshots { kind });
    }
    let id = SnapshotId::parse(spec).map_err(|_| Error::InvalidSnapshotId {
        text: spec.to_owned(),
    })?;
    let manifest = read_manifest(repo, &id).await?;
    match kind {
        Some(k) if k != manifest.kind => Err(Error::WrongKind {
            id,
            kind: manifest.kind,
            needed: match k {
                SnapshotKind::Logical => "a logical snapshot is needed",
                _ => "a physical snapshot is needed",
            },
        }),
        _ => Ok(manifest),
    }
}

/// Reads a committed snapshot's manifest; a missing one is
/// [`Error::SnapshotNotFound`].
pub async fn read_manifest(repo: &Repository, id: &SnapshotId) -> Result<Manifest> {
    match repo.read_manifest(id).await {
        Ok(m) => Ok(m),
        Err(warmspare_store::Error::NotFound { .. }) => {
            Err(Error::SnapshotNotFound { id: id.to_string() })
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether a listed snapshot can be used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "status", content = "reason")]
#[non_exhaustive]
pub enum SnapshotStatus {
    /// Committed: the manifest is present and intact.
    Complete,
    /// No manifest: in progress, or abandoned by a crash or a failure.
    /// Never restored; `prune` removes it after the grace period.
    Incomplete,
    /// The manifest is present but cannot be read or trusted.
    Unreadable(String),
}

/// One line of `warmspare list`.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotSummary {
    /// The snapshot.
    pub id: SnapshotId,
    /// Whether it can be used.
    #[serde(flatten)]
    pub status: SnapshotStatus,
    /// Logical or physical (`None` unless complete).
    pub kind: Option<SnapshotKind>,
    /// When it began (for incomplete snapshots: the time in its id).
    #[serde(with = "crate::serde_util::rfc3339")]
    pub started: OffsetDateTime,
    /// When it was committed.
    #[serde(with = "crate::serde_util::rfc3339_opt")]
    pub finished: Option<OffsetDateTime>,
    /// How long it took.
    #[serde(serialize_with = "seconds_opt", rename = "duration_seconds")]
    pub duration: Option<Duration>,
    /// Content bytes of all files.
    pub size: Option<u64>,
    /// Stored (compressed) bytes of all files.
    pub stored_size: Option<u64>,
    /// Number of data objects.
    pub files: Option<usize>,
    /// The database (`meta.database`), when the snapshotter recorded one.
    pub database: Option<String>,
    /// The writer's lease epoch.
    pub epoch: Option<u64>,
}

impl SnapshotSummary {
    /// The summary of a committed snapshot.
    pub fn from_manifest(manifest: &Manifest) -> Self {
        let duration = (manifest.finished - manifest.started).try_into().ok();
        Self {
            id: manifest.id.clone(),
            status: SnapshotStatus::Complete,
            kind: Some(manifest.kind),
            started: manifest.started,
            finished: Some(manifest.finished),
            duration,
            size: Some(manifest.total_size()),
            stored_size: Some(manifest.total_stored_size()),
            files: Some(manifest.files.len()),
            database: manifest
                .meta
                .get("database")
                .and_then(|d| d.as_str())
                .map(str::to_owned),
            epoch: manifest.epoch,
        }
    }

    fn bare(id: SnapshotId, status: SnapshotStatus) -> Self {
        Self {
            started: id.timestamp(),
            id,
            status,
            kind: None,
            finished: None,
            duration: None,
            size: None,
            stored_size: None,
            files: None,
            database: None,
            epoch: None,
        }
    }
}

fn seconds_opt<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

/// Every snapshot, newest first, with what its manifest says. Incomplete
/// snapshots are included when `include_incomplete` is set. A manifest that
/// cannot be read makes its line [`SnapshotStatus::Unreadable`], not the
/// whole listing fail.
pub async fn list(repo: &Repository, include_incomplete: bool) -> Result<Vec<SnapshotSummary>> {
    let committed = repo.list_snapshots().await?;
    let mut out: Vec<SnapshotSummary> = futures::stream::iter(committed)
        .map(|id| async move {
            match repo.read_manifest(&id).await {
                Ok(m) => Ok(SnapshotSummary::from_manifest(&m)),
                // Pruned between the listing and the read.
                Err(warmspare_store::Error::NotFound { .. }) => {
                    Ok(SnapshotSummary::bare(id, SnapshotStatus::Incomplete))
                }
                Err(e) if e.is_retryable() => Err(Error::from(e)),
                Err(e) => Ok(SnapshotSummary::bare(
                    id,
                    SnapshotStatus::Unreadable(e.to_string()),
                )),
            }
        })
        .buffered(LIST_CONCURRENCY)
        .try_collect()
        .await?;
    if include_incomplete {
        for id in repo.incomplete_snapshots().await? {
            out.push(SnapshotSummary::bare(id, SnapshotStatus::Incomplete));
        }
        out.sort_by(|a, b| b.id.cmp(&a.id));
    }
    Ok(out)
}

/// Re-reads every object of a snapshot and checks its digests
/// ([`Repository::verify_snapshot`]); each failure in the report names its
/// object. `Err` when the manifest itself cannot be read or trusted.
pub async fn verify(repo: &Repository, id: &SnapshotId) -> Result<VerifyReport> {
    match repo.verify_snapshot(id).await {
        Ok(report) => Ok(report),
        Err(warmspare_store::Error::NotFound { .. }) => {
            Err(Error::SnapshotNotFound { id: id.to_string() })
        }
        Err(e) => Err(e.into()),
    }
}

/// Deletes a snapshot: its manifest **first**, so that it is invisible
/// (incomplete) from that moment, then its data objects. Returns the number
/// of objects deleted. Deleting a snapshot that is already gone, or only
/// partly, is not an error: a crash half-way is finished by the next call
/// (or by `prune`, which removes incomplete snapshots).
pub async fn delete(repo: &Repository, id: &SnapshotId) -> Result<u64> {
    let store = repo.store().object_store();
    let manifest = layout::manifest(id);
    let mut deleted = 0;
    match store.delete(&manifest).await {
        Ok(()) => deleted += 1,
        Err(warmspare_store::object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(store_error(&manifest, e)),
    }
    Ok(deleted + delete_objects(repo, id).await?)
}

/// Deletes every object under a snapshot's prefix (the manifest too, if
/// any: callers that care delete it first).
pub(crate) async fn delete_objects(repo: &Repository, id: &SnapshotId) -> Result<u64> {
    Ok(repo.store().delete_prefix(&layout::snapshot(id)).await?)
}

fn store_error(path: &Path, source: warmspare_store::object_store::Error) -> Error {
    Error::Store(warmspare_store::Error::Store {
        path: path.to_string(),
        source,
    })
}
