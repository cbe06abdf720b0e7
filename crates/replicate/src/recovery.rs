//! Taking a recovery point: a database snapshot and an artifact inventory
//! taken together and recorded at `points/<id>.json`.
//!
//! The order is what makes the two halves agree for a service that
//! uploads an artifact before it inserts the row naming it (as Habitat
//! Builder does): the database first, then the WAL position, then the
//! artifacts. Every row in the snapshot then names an artifact that was
//! stored before the inventory's listing began, so the inventory holds it
//! unless it was deleted in between. The point is written last
//! (create-if-absent): it exists only when both halves do.

use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use time::OffsetDateTime;
use warmspare_snapshot::{LogicalBackup, LogicalBackupOptions, backup_logical};
use warmspare_store::Repository;

use crate::backup::{ArtifactBackup, backup_artifacts};
use crate::error::{Error, Result};
use crate::inventory::{Inventory, list_inventories, read_inventory};
use crate::options::SyncOptions;
use crate::point::{RecoveryPoint, write_point};
use crate::sync::SyncEvent;

/// How many of the newest inventories [`previous_inventory`] looks at for
/// one from the same source.
const PREVIOUS_SEARCH: usize = 8;

/// What [`take_recovery_point`] needs besides the repository.
#[derive(Clone, Debug)]
pub struct PointRequest {
    /// The database to snapshot (`postgres://...`).
    pub database_url: String,
    /// How the snapshot is taken.
    pub database: LogicalBackupOptions,
    /// The artifact store to inventory, if the site has one.
    pub artifacts: Option<Arc<dyn ObjectStore>>,
    /// How the artifacts are read (`source_id` names the store in the
    /// inventory and selects the previous inventory to compare with).
    pub artifact_options: SyncOptions,
    /// The writer's lease epoch, if it holds one (fencing token).
    pub epoch: Option<u64>,
    /// Free-form details recorded in the point (site name, ...).
    pub meta: serde_json::Value,
}

/// A recovery point that was taken.
#[derive(Debug)]
#[non_exhaustive]
pub struct TakenPoint {
    /// The point as recorded.
    pub point: RecoveryPoint,
    /// The database half.
    pub snapshot: LogicalBackup,
    /// The artifact half, when the site has an artifact store.
    pub artifacts: Option<ArtifactBackup>,
}

/// Progress of [`take_recovery_point`].
#[derive(Debug)]
#[non_exhaustive]
pub enum PointEvent<'a> {
    /// Progress of the database snapshot.
    Database(warmspare_snapshot::Event),
    /// The WAL position was read.
    WalPosition(&'a str),
    /// Progress of the artifact backup.
    Artifacts(&'a SyncEvent<'a>),
    /// The point record is being written.
    Commit,
}

/// Takes a recovery point: a logical snapshot of `request.database_url`
/// (`warmspare_snapshot::backup_logical`), the server's WAL position read
/// right after the dump (an upper bound: every transaction in the snapshot
/// is at or before it), an artifact inventory of `request.artifacts`
/// ([`backup_artifacts`], compared with the newest inventory of the same
/// source so that unchanged objects are not read), and the record
/// `points/<id>.json` naming both, written last.
///
/// `now` is the caller's clock reading; the halves are named by their own
/// start times and the point by `now`.
///
/// # Errors
///
/// [`Error::Snapshot`] when the database half fails (nothing else is
/// written), any error of [`backup_artifacts`] (the snapshot then stays in
/// the repository without a point; `prune` applies to it as to any
/// snapshot), and repository errors writing the point.
pub async fn take_recovery_point(
    repo: &Repository,
    request: &PointRequest,
    now: OffsetDateTime,
    progress: impl Fn(PointEvent<'_>) + Send + Sync + 'static,
) -> Result<TakenPoint> {
    let clock = std::time::Instant::now();
    let progress = Arc::new(progress);
    let on_db = {
        let progress = Arc::clone(&progress);
        move |event| progress(PointEvent::Database(event))
    };
    let snapshot = backup_logical(
        repo,
        &request.database_url,
        &request.database,
        request.epoch,
        now,
        Some(&on_db),
    )
    .await?;
    let wal_position = warmspare_snapshot::query::wal_position(
        &request.database_url,
        request.database.connect_timeout,
    )
    .await?;
    progress(PointEvent::WalPosition(&wal_position));

    let artifacts = match &request.artifacts {
        Some(store) => {
            let previous = previous_inventory(
                repo,
                request.artifact_options.source_id.as_deref(),
                PREVIOUS_SEARCH,
            )
            .await?;
            let on_artifact = {
                let progress = Arc::clone(&progress);
                move |event: &SyncEvent<'_>| progress(PointEvent::Artifacts(event))
            };
            let taken = now + elapsed(clock);
            Some(
                backup_artifacts(
                    store,
                    repo,
                    previous.as_ref(),
                    taken,
                    &request.artifact_options,
                    on_artifact,
                )
                .await?,
            )
        }
        None => None,
    };

    progress(PointEvent::Commit);
    let mut point = RecoveryPoint::new(now, now + elapsed(clock));
    point.snapshot = Some(snapshot.manifest.id.clone());
    point.inventory = artifacts.as_ref().map(|a| a.inventory.id.clone());
    point.wal_position = Some(wal_position);
    point.epoch = request.epoch;
    point.meta = request.meta.clone();
    write_point_retrying(repo, &mut point).await?;
    Ok(TakenPoint {
        point,
        snapshot,
        artifacts,
    })
}

/// Writes `point`, drawing another id when one taken in the same
/// millisecond exists.
async fn write_point_retrying(repo: &Repository, point: &mut RecoveryPoint) -> Result<()> {
    let mut attempt = 0;
    loop {
        match write_point(repo, point).await {
            Err(Error::Repository(warmspare_store::Error::AlreadyExists { .. })) if attempt < 8 => {
                attempt += 1;
                point.id = warmspare_store::SnapshotId::new(point.started);
            }
            other => return other,
        }
    }
}

fn elapsed(clock: std::time::Instant) -> Duration {
    clock.elapsed()
}

/// The newest inventory whose `source` is `source`, among the `search`
/// newest inventories: what [`backup_artifacts`] compares with so that
/// unchanged objects are not read again. `None` when there is none (the
/// next backup reads everything once). An inventory that is not encrypted
/// in a repository with a key (from before the key, or planted), or whose
/// seal the key does not authenticate, is passed over, as it cannot be
/// trusted to say what is unchanged: the next backup then reads everything
/// once instead of failing.
pub async fn previous_inventory(
    repo: &Repository,
    source: Option<&str>,
    search: usize,
) -> Result<Option<Inventory>> {
    for id in list_inventories(repo).await?.into_iter().take(search) {
        let inventory = match read_inventory(repo, &id).await {
            Ok(inventory) => inventory,
            // Pruned since the listing.
            Err(e) if e.is_not_found() => continue,
            Err(Error::Repository(
                warmspare_store::Error::Unencrypted { .. }
                | warmspare_store::Error::Unauthenticated { .. },
            )) => continue,
            Err(e) => return Err(e),
        };
        if inventory.source.as_deref() == source {
            return Ok(Some(inventory));
        }
    }
    Ok(None)
}
