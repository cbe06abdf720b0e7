//! [`prune_repository`]: retention and garbage collection of the whole
//! repository: recovery points, database snapshots (with the WAL they
//! need), artifact inventories, and the blobs no kept inventory names.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::{self, BoxStream};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStoreExt};
use serde::Serialize;
use time::OffsetDateTime;
use warmspare_snapshot::retention::{Keep, Plan};
use warmspare_snapshot::{PruneOptions, PruneReport, RetentionConfig};
use warmspare_store::{Repository, SnapshotId, layout};

use crate::activity::{self, Activity, Marker, Seen};
use crate::error::{Error, Result, Side};
use crate::gc::{self, Marks, PointRef, Verdict};
use crate::inventory::{list_inventories, modified, read_inventory};
use crate::point::{list_points, read_point};

/// The default grace period of unreferenced blobs.
pub const DEFAULT_BLOB_GRACE: Duration = Duration::from_secs(3600);
/// Blobs deleted per request (S3's `DeleteObjects` takes up to 1000).
const DELETE_BATCH: usize = 1000;
/// Digests of deletable blobs listed in the report, at most.
pub const MAX_LISTED_BLOBS: usize = 1000;

/// Options of [`prune_repository`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RepositoryPruneOptions {
    /// Plan only; delete nothing (and write no activity marker).
    pub dry_run: bool,
    /// Incomplete snapshots younger than this are left alone (see
    /// `warmspare_snapshot::PruneOptions::incomplete_grace`).
    pub incomplete_grace: Duration,
    /// Unreferenced blobs written less than this long ago are left alone: a
    /// second line of defence, behind the activity markers, for backups
    /// whose inventory is not written yet.
    pub blob_grace: Duration,
    /// How long prune's own activity marker stays live without a refresh
    /// (it is refreshed every quarter of this).
    pub marker_stale_after: Duration,
}

impl Default for RepositoryPruneOptions {
    fn default() -> Self {
        Self {
            dry_run: false,
            incomplete_grace: warmspare_snapshot::DEFAULT_INCOMPLETE_GRACE,
            blob_grace: DEFAULT_BLOB_GRACE,
            marker_stale_after: activity::DEFAULT_STALE_AFTER,
        }
    }
}

impl RepositoryPruneOptions {
    /// Sets [`dry_run`](Self::dry_run).
    pub fn with_dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }
    /// Sets [`incomplete_grace`](Self::incomplete_grace).
    pub fn with_incomplete_grace(mut self, grace: Duration) -> Self {
        self.incomplete_grace = grace;
        self
    }
    /// Sets [`blob_grace`](Self::blob_grace).
    pub fn with_blob_grace(mut self, grace: Duration) -> Self {
        self.blob_grace = grace;
        self
    }
    /// Sets [`marker_stale_after`](Self::marker_stale_after).
    pub fn with_marker_stale_after(mut self, stale_after: Duration) -> Self {
        self.marker_stale_after = stale_after;
        self
    }
}

/// What prune did with the recovery points.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct PointPrune {
    /// Retention's plan over the readable points (by the time each was
    /// taken).
    pub plan: Plan,
    /// Points that cannot be read (damaged records, or records the
    /// repository's key does not authenticate): kept, and listed; while
    /// there are any, inventories and blobs are left alone.
    pub unreadable: Vec<(SnapshotId, String)>,
    /// Kept points that name a snapshot or an inventory that is not in the
    /// repository (deleted by hand, or by an older version): kept, listed.
    pub broken: Vec<(SnapshotId, String)>,
    /// Points deleted (none on a dry run).
    pub deleted: Vec<SnapshotId>,
    /// Deletions that failed (their snapshots and inventories stay
    /// protected); the next prune retries them.
    pub failures: Vec<(SnapshotId, Error)>,
}

/// What prune did with the artifact inventories.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct InventoryPrune {
    /// Retention's plan, with the inventories kept points name kept.
    pub plan: Plan,
    /// Why inventories were left alone this time, when they were (an
    /// artifact backup or another prune at work).
    pub deferred: Option<String>,
    /// Inventories deleted (none on a dry run or when deferred).
    pub deleted: Vec<SnapshotId>,
    /// Deletions that failed; the next prune retries them.
    pub failures: Vec<(SnapshotId, Error)>,
}

/// What the sweep of `blobs/` found and did.
#[derive(Debug, Default, Serialize)]
#[non_exhaustive]
pub struct BlobSweep {
    /// Why blobs were left alone this time, when they were.
    pub deferred: Option<String>,
    /// Distinct blobs the kept inventories name.
    pub referenced: u64,
    /// Objects listed under `blobs/`.
    pub listed: u64,
    /// Unreferenced blobs within the grace period: kept this time.
    pub young: u64,
    /// Objects under `blobs/` that are not blobs (unexpected names): kept.
    pub foreign: u64,
    /// Unreferenced blobs older than the grace period.
    pub deletable: u64,
    /// Their stored bytes.
    pub deletable_bytes: u64,
    /// The first [`MAX_LISTED_BLOBS`] of them (SHA-256 hex).
    pub listed_deletable: Vec<String>,
    /// Blobs deleted (none on a dry run).
    pub deleted: u64,
    /// Their stored bytes.
    pub deleted_bytes: u64,
    /// Deletions that failed (path, error); the next prune retries them.
    #[serde(skip)]
    pub failures: Vec<(String, Error)>,
}

/// What [`prune_repository`] did (or, on a dry run, would do).
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct RepositoryPruneReport {
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// Recovery points.
    pub points: PointPrune,
    /// Database snapshots and the WAL archive (`warmspare_snapshot::prune`,
    /// with the snapshots kept points name protected).
    pub snapshots: PruneReport,
    /// Artifact inventories.
    pub inventories: InventoryPrune,
    /// Blobs.
    pub blobs: BlobSweep,
}

impl RepositoryPruneReport {
    /// Whether every planned deletion succeeded (a deferred collection is
    /// not a failure).
    pub fn is_ok(&self) -> bool {
        self.points.failures.is_empty()
            && self.snapshots.is_ok()
            && self.inventories.failures.is_empty()
            && self.blobs.failures.is_empty()
    }
}

/// Progress of [`prune_repository`].
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum PruneEvent {
    /// A phase begins: "points", "snapshots", "inventories", "blobs".
    Phase(&'static str),
    /// Objects under `blobs/` looked at so far.
    BlobsListed(u64),
}

/// Applies `config` to the whole repository, in an order that keeps it
/// consistent at every step (a crash leaves at most garbage for the next
/// run):
///
/// 1. **Recovery points**: retention by the time each was taken
///    ([`warmspare_snapshot::retention::plan`]); the others are deleted.
/// 2. **Snapshots**: `warmspare_snapshot::prune` (retention per kind and
///    database, incomplete snapshots, the WAL archive), with every snapshot
///    a kept point names protected: a point never loses its snapshot, and
///    a protected physical snapshot keeps its WAL.
/// 3. **Inventories**: retention by the time in their ids, plus every
///    inventory a kept point names.
/// 4. **Blobs**: mark and sweep. The digests every kept inventory names
///    are collected in a sorted set (32 bytes per distinct blob; see
///    `gc.rs`); the listing of `blobs/` streams past it, and blobs that no
///    kept inventory names and that are older than
///    [`RepositoryPruneOptions::blob_grace`] (on the store's clock) are
///    deleted in batches.
///
/// Steps 3 and 4 run only while no artifact backup (and no other prune)
/// holds a live activity marker, and only when every recovery point could
/// be read (a damaged point, or one the repository's key does not
/// authenticate, is kept, and the inventory it names is unknown);
/// otherwise they are deferred to the next run and the report says why.
/// Prune's own marker (skipped on a dry run) makes a backup that starts
/// meanwhile wait until prune is done; if prune cannot keep its marker
/// fresh, it stops deleting blobs. See `activity.rs` for the protocol.
/// Stale markers of dead processes are removed.
///
/// `now` is the caller's clock reading (the store's clock is used where
/// ages are compared, once a marker was written).
///
/// # Errors
///
/// Listing or reading failures that make the plan unknowable end the run
/// with an error (nothing further is deleted). Failed deletions are in
/// the report ([`RepositoryPruneReport::is_ok`]).
pub async fn prune_repository(
    repo: &Repository,
    config: &RetentionConfig,
    options: &RepositoryPruneOptions,
    now: OffsetDateTime,
    progress: impl Fn(PruneEvent),
) -> Result<RepositoryPruneReport> {
    let dry_run = options.dry_run;
    let mut report = RepositoryPruneReport {
        dry_run,
        ..RepositoryPruneReport::default()
    };
    let marker = match dry_run {
        true => None,
        false => {
            Some(Marker::acquire(repo, Activity::Prune, now, options.marker_stale_after).await?)
        }
    };
    let server_now = marker.as_ref().map_or(now, Marker::server_now);
    let mut deferred = others_at_work(repo, marker.as_ref(), server_now, dry_run).await?;

    progress(PruneEvent::Phase("points"));
    let points = read_points(repo, &mut report.points).await?;
    if deferred.is_none()
        && let Some((id, _)) = report.points.unreadable.first()
    {
        // A point that cannot be read (or trusted) still protects what it
        // names, which is unknown: its inventory and its blobs may not go.
        deferred = Some(format!(
            "recovery point {id} cannot be read, so which inventory it names is unknown; \
             inventories and blobs are collected by a later prune"
        ));
    }
    report.points.plan = gc::plan_points(&points, config);
    if !dry_run {
        for d in &report.points.plan.delete {
            match delete(repo, &layout::point(&d.id)).await {
                Ok(()) => report.points.deleted.push(d.id.clone()),
                Err(e) => report.points.failures.push((d.id.clone(), e)),
            }
        }
    }
    // What the points that remain name: the kept ones, and those whose
    // deletion failed.
    let remaining: BTreeSet<&SnapshotId> = report
        .points
        .plan
        .keep
        .iter()
        .map(|k| &k.id)
        .chain(report.points.failures.iter().map(|(id, _)| id))
        .collect();
    let remaining: Vec<&PointRef> = points
        .iter()
        .filter(|p| remaining.contains(&p.id))
        .collect();
    let refs = gc::references(remaining.iter().copied());

    progress(PruneEvent::Phase("snapshots"));
    let snapshot_options = PruneOptions::default()
        .with_dry_run(dry_run)
        .with_incomplete_grace(options.incomplete_grace)
        .with_protected(refs.snapshots.clone());
    report.snapshots = warmspare_snapshot::prune(repo, config, &snapshot_options, now).await?;

    progress(PruneEvent::Phase("inventories"));
    let inventories = list_inventories(repo).await?;
    report.inventories.plan = gc::plan_inventories(&inventories, config, &refs.inventories);
    report.points.broken = broken(&remaining, &report.snapshots, &inventories);
    report.inventories.deferred.clone_from(&deferred);
    if deferred.is_none() && !dry_run {
        for d in &report.inventories.plan.delete {
            match delete(repo, &layout::inventory(&d.id)).await {
                Ok(()) => report.inventories.deleted.push(d.id.clone()),
                Err(e) => report.inventories.failures.push((d.id.clone(), e)),
            }
        }
    }

    progress(PruneEvent::Phase("blobs"));
    report.blobs.deferred = deferred.or_else(|| {
        (!report.inventories.failures.is_empty()).then(|| {
            "some inventories could not be deleted, so which blobs they name still matters".into()
        })
    });
    if report.blobs.deferred.is_none() {
        // Inventories whose deletion failed still exist: mark their blobs.
        let marked: Vec<SnapshotId> = report
            .inventories
            .plan
            .keep
            .iter()
            .map(|k| k.id.clone())
            .chain(report.inventories.failures.iter().map(|(id, _)| id.clone()))
            .collect();
        match mark(repo, &marked).await? {
            Ok(marks) => {
                sweep(
                    repo,
                    &marks,
                    server_now,
                    options.blob_grace,
                    marker.as_ref(),
                    &mut report.blobs,
                    &progress,
                )
                .await?;
            }
            Err(reason) => report.blobs.deferred = Some(reason),
        }
    }
    if let Some(marker) = marker {
        marker.release().await;
    }
    Ok(report)
}

/// Why inventories and blobs must be left alone (a live backup or another
/// prune), if they must; removes stale markers on the way (not on a dry
/// run).
async fn others_at_work(
    repo: &Repository,
    ours: Option<&Marker>,
    server_now: OffsetDateTime,
    dry_run: bool,
) -> Result<Option<String>> {
    let backups = activity::markers(repo, Activity::Backup, server_now, None).await?;
    let prunes = activity::markers(
        repo,
        Activity::Prune,
        server_now,
        ours.and_then(Marker::path),
    )
    .await?;
    if !dry_run {
        for stale in backups.iter().chain(&prunes).filter(|m| !m.live) {
            tracing::info!(marker = %stale.path, "removing the stale marker of a process that died");
            let _ = delete(repo, &stale.path).await;
        }
    }
    let describe = |what: &str, m: &Seen| {
        format!(
            "{what} is in progress (marker {}, refreshed {}); inventories and blobs are \
             collected by a later prune",
            m.path,
            rfc3339(m.modified)
        )
    };
    if let Some(m) = backups.iter().find(|m| m.live) {
        return Ok(Some(describe("an artifact backup", m)));
    }
    Ok(prunes
        .iter()
        .find(|m| m.live)
        .map(|m| describe("another prune", m)))
}

/// Reads every recovery point. A damaged record, or one the repository's
/// key does not authenticate (no MAC, another key's, altered, moved), is
/// reported and kept; a point deleted since the listing is skipped; any
/// other failure ends the run (the plan would be unknowable).
async fn read_points(repo: &Repository, out: &mut PointPrune) -> Result<Vec<PointRef>> {
    let mut points = Vec::new();
    for id in list_points(repo).await? {
        match read_point(repo, &id).await {
            Ok(p) => points.push(PointRef {
                id: p.id,
                time: p.started,
                snapshot: p.snapshot,
                inventory: p.inventory,
            }),
            Err(e) if e.is_not_found() => {}
            Err(
                e @ (Error::Corrupt { .. }
                | Error::Repository(warmspare_store::Error::Unauthenticated { .. })),
            ) => out.unreadable.push((id, e.to_string())),
            Err(e) => return Err(e),
        }
    }
    Ok(points)
}

/// Kept points whose snapshot or inventory is not in the repository.
fn broken(
    points: &[&PointRef],
    snapshots: &PruneReport,
    inventories: &[SnapshotId],
) -> Vec<(SnapshotId, String)> {
    let kept_snapshots: BTreeSet<&SnapshotId> = snapshots
        .groups
        .iter()
        .flat_map(|g| g.plan.keep.iter().map(|k: &Keep| &k.id))
        .chain(snapshots.unreadable.iter().map(|(id, _)| id))
        .chain(snapshots.failures.iter().map(|(id, _)| id))
        .collect();
    let mut out = Vec::new();
    for p in points {
        if let Some(s) = &p.snapshot
            && !kept_snapshots.contains(s)
        {
            out.push((
                p.id.clone(),
                format!("its snapshot {s} is not in the repository"),
            ));
        }
        if let Some(i) = &p.inventory
            && !inventories.contains(i)
        {
            out.push((
                p.id.clone(),
                format!("its inventory {i} is not in the repository"),
            ));
        }
    }
    out
}

/// The marks of the inventories `ids`, read one at a time; `Err(reason)`
/// when one cannot be read (its blobs are unknown, so none may go).
async fn mark(repo: &Repository, ids: &[SnapshotId]) -> Result<Result<Marks, String>> {
    let mut marks = Marks::default();
    for id in ids {
        match read_inventory(repo, id).await {
            Ok(inventory) => marks.add(
                inventory
                    .entries
                    .iter()
                    .filter_map(|e| gc::parse_digest(&e.sha256)),
            ),
            // Deleted since the listing (by hand, or another prune).
            Err(e) if e.is_not_found() => {}
            Err(e) if e.is_retryable() => return Err(e),
            Err(e) => {
                return Ok(Err(format!(
                    "inventory {id} cannot be read ({e}), so which blobs it names is unknown"
                )));
            }
        }
    }
    Ok(Ok(marks))
}

/// Streams the listing of `blobs/` past the marks, deleting what may go in
/// batches (counting only, on a dry run: `marker` is `None` then).
async fn sweep(
    repo: &Repository,
    marks: &Marks,
    now: OffsetDateTime,
    grace: Duration,
    marker: Option<&Marker>,
    out: &mut BlobSweep,
    progress: &impl Fn(PruneEvent),
) -> Result<()> {
    out.referenced = marks.len() as u64;
    let store = repo.store().object_store();
    let prefix = Path::from("blobs");
    let mut listing = store.list(Some(&prefix));
    let mut batch: Vec<ObjectMeta> = Vec::new();
    while let Some(meta) = listing.next().await {
        let meta = meta.map_err(|source| Error::List {
            side: Side::Repository,
            source,
        })?;
        out.listed += 1;
        if out.listed.is_multiple_of(10_000) {
            progress(PruneEvent::BlobsListed(out.listed));
        }
        match gc::judge(meta.location.as_ref(), modified(&meta), marks, now, grace) {
            Verdict::Referenced => {}
            Verdict::Young => out.young += 1,
            Verdict::Foreign => out.foreign += 1,
            Verdict::Delete => {
                out.deletable += 1;
                out.deletable_bytes += meta.size;
                if out.listed_deletable.len() < MAX_LISTED_BLOBS
                    && let Some(name) = meta.location.filename()
                {
                    out.listed_deletable.push(name.to_owned());
                }
                if let Some(marker) = marker {
                    batch.push(meta);
                    if batch.len() >= DELETE_BATCH {
                        delete_batch(repo, marker, std::mem::take(&mut batch), out).await?;
                    }
                }
            }
        }
    }
    progress(PruneEvent::BlobsListed(out.listed));
    if let Some(marker) = marker
        && !batch.is_empty()
    {
        delete_batch(repo, marker, batch, out).await?;
    }
    Ok(())
}

/// Deletes one batch of blobs, unless prune's marker lapsed (a backup may
/// then have started without seeing it): then the sweep ends with an
/// error and nothing more is deleted.
async fn delete_batch(
    repo: &Repository,
    marker: &Marker,
    batch: Vec<ObjectMeta>,
    out: &mut BlobSweep,
) -> Result<()> {
    if marker.lapsed() {
        return Err(Error::Task {
            reason: "prune could not keep its activity marker fresh, so a backup may be \
                     reusing blobs; it stopped deleting them"
                .into(),
        });
    }
    let sizes: std::collections::BTreeMap<Path, u64> =
        batch.iter().map(|m| (m.location.clone(), m.size)).collect();
    let paths: BoxStream<'static, object_store::Result<Path>> =
        stream::iter(batch.into_iter().map(|m| Ok(m.location))).boxed();
    let mut results = repo.store().object_store().delete_stream(paths);
    let mut done = BTreeSet::new();
    let mut errors = Vec::new();
    while let Some(result) = results.next().await {
        match result {
            Ok(path) => {
                out.deleted_bytes += sizes.get(&path).copied().unwrap_or(0);
                out.deleted += 1;
                done.insert(path);
            }
            // Gone already: someone else's delete.
            Err(object_store::Error::NotFound { path, .. }) => {
                done.insert(Path::from(path));
            }
            Err(e) => errors.push(e),
        }
    }
    // A failed delete does not always say which object it was: name the
    // failures by the blobs that were not deleted.
    let undone = sizes.keys().filter(|p| !done.contains(*p));
    for (path, e) in undone.zip(errors) {
        let name = path.to_string();
        out.failures.push((
            name.clone(),
            Error::object(Side::Repository, name, "deleting", e),
        ));
    }
    Ok(())
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// Deletes one object; one already gone is fine.
async fn delete(repo: &Repository, path: &Path) -> Result<()> {
    match repo.store().object_store().delete(path).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(Error::object(
            Side::Repository,
            path.to_string(),
            "deleting",
            e,
        )),
    }
}
