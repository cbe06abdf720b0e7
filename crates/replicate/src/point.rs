//! Recovery points: a database snapshot and an artifact inventory taken
//! together, recorded at `points/<id>.json`, so that database rows and
//! the artifacts they name agree. What an operator restores to.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use warmspare_store::{Authenticity, Error as StoreError, Repository, SnapshotId, layout};

use crate::error::{Error, Result};
use crate::inventory::{list_ids, list_inventories};
use crate::record;

/// The recovery point format version this build reads and writes.
pub const POINT_VERSION: u32 = 1;
const KIND: &str = "point";

/// One recovery point.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecoveryPoint {
    /// Format version ([`POINT_VERSION`]).
    pub version: u32,
    /// The point's id (time-sortable).
    pub id: SnapshotId,
    /// When the backup began (before either half started).
    #[serde(with = "crate::record::rfc3339")]
    pub started: OffsetDateTime,
    /// When both halves had finished.
    #[serde(with = "crate::record::rfc3339")]
    pub finished: OffsetDateTime,
    /// The database snapshot, if the point has one.
    pub snapshot: Option<SnapshotId>,
    /// The artifact inventory, if the point has one.
    pub inventory: Option<SnapshotId>,
    /// The WAL position the snapshot is consistent at (an LSN such as
    /// `0/3000060`), if known.
    pub wal_position: Option<String>,
    /// The lease epoch of the writer, if it held one.
    pub epoch: Option<u64>,
    /// Free-form details (site, versions).
    #[serde(default)]
    pub meta: serde_json::Value,
}

impl RecoveryPoint {
    /// A point with a fresh id for `started`.
    pub fn new(started: OffsetDateTime, finished: OffsetDateTime) -> Self {
        Self {
            version: POINT_VERSION,
            id: SnapshotId::new(started),
            started,
            finished,
            snapshot: None,
            inventory: None,
            wal_position: None,
            epoch: None,
            meta: serde_json::Value::Null,
        }
    }
}

/// Records `point` at `points/<id>.json`, create-if-absent: written after
/// both halves, so a point exists only when its snapshot and inventory do.
///
/// In a repository with a key the record carries a MAC over its bytes and
/// path (`Repository::seal_record`); without one it is the plain
/// self-checking record, byte for byte as before. Refused with
/// `warmspare_store::Error::KeyNotLoaded` when encryption is configured
/// but its key was not loaded.
pub async fn write_point(repo: &Repository, point: &RecoveryPoint) -> Result<()> {
    let path = layout::point(&point.id);
    let body = serde_json::to_vec(point).map_err(|e| Error::Corrupt {
        path: path.to_string(),
        reason: format!("cannot encode: {e}"),
    })?;
    let bytes = repo.seal_record(KIND, &path, &body)?;
    record::create(repo, &path, bytes).await
}

/// Reads and checks recovery point `id`.
///
/// # Errors
///
/// * [`Error::NotFound`] when there is no such point;
/// * `Error::Repository(warmspare_store::Error::Unauthenticated { .. })`,
///   naming the point, when the repository has a key and the record is
///   not authenticated by it: written without a MAC, by another key,
///   altered, or copied from another point's name. Nothing it says is
///   used. Without a key the MAC cannot be checked (its digest is).
/// * [`Error::Corrupt`] for a damaged record (not a point record, a digest
///   mismatch, another version, another id).
pub async fn read_point(repo: &Repository, id: &SnapshotId) -> Result<RecoveryPoint> {
    read_point_checked(repo, id).await.map(|(point, _)| point)
}

/// Like [`read_point`], returning how the record was authenticated:
/// read without a key, a point that carries a MAC is
/// [`Authenticity::Unchecked`], which a caller that lists it must say.
///
/// # Errors
///
/// As [`read_point`].
pub async fn read_point_checked(
    repo: &Repository,
    id: &SnapshotId,
) -> Result<(RecoveryPoint, Authenticity)> {
    let path = layout::point(id);
    let bytes = record::read(repo, &path)
        .await?
        .ok_or_else(|| Error::NotFound {
            what: "recovery point",
            id: id.to_string(),
        })?;
    let (body, authenticity) = repo
        .open_record(KIND, &path, &bytes, repo.missing_mac())
        .map_err(|e| match e {
            StoreError::Corrupt { path, reason } => Error::Corrupt { path, reason },
            StoreError::DigestMismatch {
                path,
                expected,
                actual,
            } => Error::Corrupt {
                path,
                reason: format!("digest mismatch: recorded {expected}, computed {actual}"),
            },
            other => Error::Repository(other),
        })?;
    let point: RecoveryPoint = record::parse_body(KIND, u64::from(POINT_VERSION), &path, body)?;
    if point.id != *id {
        return Err(Error::Corrupt {
            path: path.to_string(),
            reason: format!("the record belongs to point {}", point.id),
        });
    }
    Ok((point, authenticity))
}

/// Ids of the recovery points, newest first.
pub async fn list_points(repo: &Repository) -> Result<Vec<SnapshotId>> {
    list_ids(repo, "points", ".json").await
}

/// The inventory an operator means by `spec`: `latest` (the newest
/// recovery point's inventory, else the newest inventory), a recovery
/// point's id, or an inventory's id.
pub async fn resolve_inventory(repo: &Repository, spec: &str) -> Result<SnapshotId> {
    let not_found = || Error::NotFound {
        what: "inventory",
        id: spec.to_string(),
    };
    if spec == "latest" {
        for id in list_points(repo).await? {
            if let Some(inventory) = read_point(repo, &id).await?.inventory {
                return Ok(inventory);
            }
        }
        return list_inventories(repo)
            .await?
            .into_iter()
            .next()
            .ok_or_else(not_found);
    }
    let id = SnapshotId::parse(spec).map_err(|_| not_found())?;
    match read_point(repo, &id).await {
        Ok(point) => point.inventory.ok_or_else(not_found),
        Err(e) if e.is_not_found() => Ok(id),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;
    use warmspare_store::{Store, StoreConfig};

    #[tokio::test]
    async fn points_roundtrip_and_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StoreConfig::new(format!(
            "file://{}",
            dir.path().display()
        )))
        .unwrap();
        let now = datetime!(2026-11-22 10:15:00 UTC);
        let repo = Repository::init(store, now).await.unwrap();
        assert!(
            resolve_inventory(&repo, "latest")
                .await
                .unwrap_err()
                .is_not_found()
        );

        let inventory = SnapshotId::with_suffix(now, 7);
        let mut point = RecoveryPoint::new(now, now);
        point.inventory = Some(inventory.clone());
        point.wal_position = Some("0/3000060".into());
        write_point(&repo, &point).await.unwrap();
        assert_eq!(read_point(&repo, &point.id).await.unwrap(), point);
        assert_eq!(list_points(&repo).await.unwrap(), vec![point.id.clone()]);
        assert_eq!(resolve_inventory(&repo, "latest").await.unwrap(), inventory);
        assert_eq!(
            resolve_inventory(&repo, point.id.as_str()).await.unwrap(),
            inventory
        );
        assert_eq!(
            resolve_inventory(&repo, inventory.as_str()).await.unwrap(),
            inventory
        );
        assert!(resolve_inventory(&repo, "nonsense").await.is_err());

        // Without a key the record is the plain envelope, byte for byte.
        let path = layout::point(&point.id);
        let stored = std::fs::read(dir.path().join(path.as_ref())).unwrap();
        assert_eq!(stored, record::encode(KIND, &path, &point).unwrap());
    }
}
