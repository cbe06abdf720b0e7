//! [`prune()`]: the retention plan applied to a repository.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use warmspare_store::{Repository, SnapshotId, SnapshotKind};

use crate::catalog::{self, SnapshotStatus, SnapshotSummary};
use crate::error::{Error, Result};
use crate::physical::PhysicalMeta;
use crate::retention::{self, Delete, Plan, RetentionConfig};
use crate::wal::{self, WalFileName, WalPruneReport};

/// The default grace period of incomplete snapshots.
pub const DEFAULT_INCOMPLETE_GRACE: Duration = Duration::from_secs(24 * 3600);

/// Options of [`prune()`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PruneOptions {
    /// Incomplete snapshots (no manifest) younger than this are left alone:
    /// they may be backups in progress. Must exceed the longest backup.
    #[serde(with = "crate::serde_util::duration")]
    pub incomplete_grace: Duration,
    /// Plan only; delete nothing.
    pub dry_run: bool,
    /// Snapshots kept whatever the retention rules say: those named by
    /// kept recovery points (`warmspare-replicate` fills this in). Kept
    /// physical snapshots among them keep their WAL too.
    #[serde(skip)]
    pub protected: BTreeSet<SnapshotId>,
}

impl Default for PruneOptions {
    fn default() -> Self {
        Self {
            incomplete_grace: DEFAULT_INCOMPLETE_GRACE,
            dry_run: false,
            protected: BTreeSet::new(),
        }
    }
}

impl PruneOptions {
    /// Sets [`incomplete_grace`](Self::incomplete_grace).
    pub fn with_incomplete_grace(mut self, grace: Duration) -> Self {
        self.incomplete_grace = grace;
        self
    }
    /// Sets [`dry_run`](Self::dry_run).
    pub fn with_dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }
    /// Sets [`protected`](Self::protected).
    pub fn with_protected(mut self, protected: BTreeSet<SnapshotId>) -> Self {
        self.protected = protected;
        self
    }
}

/// Snapshots that retention considers together: one kind, one database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotGroup {
    /// Logical or physical.
    pub kind: SnapshotKind,
    /// `meta.database`, when recorded.
    pub database: Option<String>,
}

/// The plan of one group.
#[derive(Debug, Clone, Serialize)]
pub struct GroupPlan {
    /// The group.
    pub group: SnapshotGroup,
    /// What retention decided for it.
    pub plan: Plan,
}

/// What [`prune()`] did (or, with `dry_run`, would do).
#[derive(Debug, Default)]
pub struct PruneReport {
    /// One plan per group of committed snapshots.
    pub groups: Vec<GroupPlan>,
    /// Incomplete snapshots older than the grace period.
    pub incomplete: Vec<Delete>,
    /// Committed snapshots whose manifest cannot be read: never deleted,
    /// listed for the operator.
    pub unreadable: Vec<(SnapshotId, String)>,
    /// Snapshots deleted (empty on a dry run).
    pub deleted: Vec<SnapshotId>,
    /// Objects deleted.
    pub objects_deleted: u64,
    /// Deletions that failed (each error names its object); the next prune
    /// finishes them.
    pub failures: Vec<(SnapshotId, Error)>,
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// What happened to the WAL archive.
    pub wal: WalPruneReport,
}

impl PruneReport {
    /// Every deletion the plan calls for, committed ones then incomplete.
    pub fn planned_deletions(&self) -> impl Iterator<Item = &Delete> {
        self.groups
            .iter()
            .flat_map(|g| g.plan.delete.iter())
            .chain(self.incomplete.iter())
    }

    /// Whether every planned deletion succeeded.
    pub fn is_ok(&self) -> bool {
        self.failures.is_empty() && self.wal.failures.is_empty()
    }
}

/// Applies `config` to the repository's snapshots.
///
/// Retention is planned separately for each group of snapshots of one kind
/// and one database ([`retention::plan`]), so that the snapshots of one
/// database never push out those of another. Snapshots in
/// [`PruneOptions::protected`] are kept whatever the rules say
/// ([`retention::Plan::protect`]), incomplete ones included. Incomplete snapshots older than
/// the grace period are removed ([`retention::plan_incomplete`]). A snapshot
/// whose manifest cannot be read is kept and reported. Deleting a snapshot
/// removes its manifest first, so it disappears from listings at once,
/// then its data ([`catalog::delete`]).
///
/// Then the WAL archive: every WAL file positioned before the start
/// segment of the oldest *kept* physical snapshot goes ([`wal::deletable`];
/// timeline history files stay). The WAL is left alone when no physical
/// snapshot is kept, or when a manifest cannot be read (its snapshot's
/// needs are unknown); [`PruneReport::wal`] says why.
pub async fn prune(
    repo: &Repository,
    config: &RetentionConfig,
    options: &PruneOptions,
    now: OffsetDateTime,
) -> Result<PruneReport> {
    let mut report = PruneReport {
        dry_run: options.dry_run,
        ..PruneReport::default()
    };
    let listed = catalog::list(repo, false).await?;
    type Snapshots = Vec<(SnapshotId, OffsetDateTime)>;
    let mut groups: BTreeMap<(String, Option<String>), (SnapshotGroup, Snapshots)> =
        BTreeMap::new();
    for summary in listed {
        let SnapshotSummary {
            id,
            status,
            kind,
            started,
            database,
            ..
        } = summary;
        match (status, kind) {
            (SnapshotStatus::Complete, Some(kind)) => groups
                .entry((format!("{kind:?}"), database.clone()))
                .or_insert_with(|| (SnapshotGroup { kind, database }, Vec::new()))
                .1
                .push((id, started)),
            (SnapshotStatus::Unreadable(reason), _) => report.unreadable.push((id, reason)),
            // Deleted meanwhile, or not understood: leave it.
            _ => {}
        }
    }
    for (group, snapshots) in groups.into_values() {
        let mut plan = retention::plan(&snapshots, config);
        plan.protect(&options.protected);
        report.groups.push(GroupPlan { group, plan });
    }
    let incomplete = repo.incomplete_snapshots().await?;
    report.incomplete = retention::plan_incomplete(&incomplete, options.incomplete_grace, now);
    report
        .incomplete
        .retain(|d| !options.protected.contains(&d.id));

    let oldest_wal = oldest_kept_wal(repo, &report).await?;
    if options.dry_run {
        report.wal = prune_wal(repo, oldest_wal, true).await;
        return Ok(report);
    }
    let committed: Vec<SnapshotId> = report
        .groups
        .iter()
        .flat_map(|g| g.plan.delete.iter().map(|d| d.id.clone()))
        .collect();
    let abandoned: Vec<SnapshotId> = report.incomplete.iter().map(|d| d.id.clone()).collect();
    let results: Vec<(SnapshotId, Result<u64>)> = futures::stream::iter(
        committed
            .into_iter()
            .map(|id| (id, true))
            .chain(abandoned.into_iter().map(|id| (id, false))),
    )
    .map(|(id, has_manifest)| async move {
        let result = if has_manifest {
            catalog::delete(repo, &id).await
        } else {
            delete_incomplete(repo, &id).await
        };
        Ok::<_, Error>((id, result))
    })
    .buffered(4)
    .try_collect()
    .await?;
    for (id, result) in results {
        match result {
            Ok(objects) => {
                report.objects_deleted += objects;
                report.deleted.push(id);
            }
            Err(e) => report.failures.push((id, e)),
        }
    }
    report.wal = prune_wal(repo, oldest_wal, false).await;
    Ok(report)
}

/// The start segment of the oldest kept physical snapshot, or why the WAL
/// archive must be left alone.
async fn oldest_kept_wal(
    repo: &Repository,
    report: &PruneReport,
) -> Result<std::result::Result<WalFileName, String>> {
    if let Some((id, _)) = report.unreadable.first() {
        return Ok(Err(format!(
            "the manifest of snapshot {id} cannot be read, so the WAL it needs is unknown"
        )));
    }
    let mut starts = Vec::new();
    let physical = report
        .groups
        .iter()
        .filter(|g| g.group.kind == SnapshotKind::Physical);
    for keep in physical.flat_map(|g| g.plan.keep.iter()) {
        let manifest = catalog::read_manifest(repo, &keep.id).await?;
        match PhysicalMeta::from_manifest(&manifest)
            .and_then(|meta| WalFileName::parse(&meta.start_wal))
        {
            Ok(start) => starts.push(start),
            Err(e) => return Ok(Err(format!("snapshot {}: {e}", keep.id))),
        }
    }
    Ok(wal::oldest_needed(&starts)
        .cloned()
        .ok_or_else(|| "no physical snapshot is kept".to_owned()))
}

async fn prune_wal(
    repo: &Repository,
    oldest: std::result::Result<WalFileName, String>,
    dry_run: bool,
) -> WalPruneReport {
    match oldest {
        Err(reason) => WalPruneReport {
            skipped: Some(reason),
            ..WalPruneReport::default()
        },
        Ok(oldest) => match wal::prune_wal(repo, &oldest, dry_run).await {
            Ok(report) => report,
            Err(e) => WalPruneReport {
                keep_from: Some(oldest.to_string()),
                failures: vec![e],
                ..WalPruneReport::default()
            },
        },
    }
}

/// Deletes an incomplete snapshot's objects, unless it committed since it
/// was listed.
async fn delete_incomplete(repo: &Repository, id: &SnapshotId) -> Result<u64> {
    use warmspare_store::object_store::ObjectStoreExt;
    let manifest = warmspare_store::layout::manifest(id);
    match repo.store().object_store().head(&manifest).await {
        Ok(_) => Ok(0),
        Err(warmspare_store::object_store::Error::NotFound { .. }) => {
            catalog::delete_objects(repo, id).await
        }
        Err(source) => Err(Error::Store(warmspare_store::Error::Store {
            path: manifest.to_string(),
            source,
        })),
    }
}
