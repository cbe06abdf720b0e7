//! `warmspare prune [--dry-run]`: apply the `[retention]` policy to the
//! whole repository: recovery points, snapshots (and the WAL they need),
//! artifact inventories, and the blobs no kept inventory names.

use std::io;
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;
use warmspare_replicate::{
    BlobSweep, PruneEvent, RepositoryPruneOptions, RepositoryPruneReport, prune_repository,
};
use warmspare_snapshot::retention::{Delete, Keep, Plan};
use warmspare_snapshot::{GroupPlan, PruneReport};
use warmspare_store::SnapshotId;

use super::parse_duration;
use crate::repo::{self, Open};
use crate::{EXIT_FAILED, EXIT_OK, Global, output};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Recovery points are kept by the retention rules, and every snapshot and \
                  inventory a kept point names is kept with it. Blobs that no kept inventory \
                  names are deleted once older than --blob-grace. While an artifact backup \
                  runs, inventories and blobs are left for a later prune."
)]
pub(crate) struct Args {
    /// Show what would be deleted; delete nothing.
    #[arg(long)]
    dry_run: bool,

    /// Incomplete snapshots younger than this are left alone: they may be
    /// backups in progress. Must exceed the longest backup.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    grace: Duration,

    /// Unreferenced blobs younger than this are left alone (a second line
    /// of defence, behind the backups' activity markers).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    blob_grace: Duration,
}

/// The result printed with `--json`.
#[derive(Debug, Serialize)]
struct Outcome<'a> {
    dry_run: bool,
    /// One plan per kind and database: what is kept (and by which rules)
    /// and what is deleted.
    groups: &'a [GroupPlan],
    /// Incomplete snapshots older than the grace period.
    incomplete: &'a [Delete],
    /// Snapshots whose manifest cannot be read: kept.
    unreadable: Vec<Failure>,
    /// Snapshots deleted (none on a dry run).
    deleted: &'a [SnapshotId],
    objects_deleted: u64,
    /// Deletions that failed; the next prune finishes them.
    failures: Vec<Failure>,
    /// The WAL archive: kept from `keep_from` on, or left alone (`skipped`
    /// says why).
    wal: WalOutcome<'a>,
    /// Recovery points.
    points: PointsOutcome<'a>,
    /// Artifact inventories.
    inventories: InventoriesOutcome<'a>,
    /// Blobs.
    blobs: BlobsOutcome<'a>,
}

/// The WAL part of the `--json` result.
#[derive(Debug, Serialize)]
struct WalOutcome<'a> {
    /// The start segment of the oldest kept physical snapshot: WAL from
    /// there on is kept.
    keep_from: Option<&'a str>,
    /// Why the WAL archive was left alone, when it was.
    skipped: Option<&'a str>,
    /// WAL files before `keep_from` (deleted unless this is a dry run).
    deletable: u64,
    deleted: u64,
    /// Deletions that failed; the next prune retries them.
    failures: Vec<String>,
}

#[derive(Debug, Serialize)]
struct PointsOutcome<'a> {
    plan: &'a Plan,
    /// Points that cannot be read: kept.
    unreadable: Vec<Failure>,
    /// Kept points naming a snapshot or inventory that is not there.
    broken: Vec<Failure>,
    deleted: &'a [SnapshotId],
    failures: Vec<Failure>,
}

#[derive(Debug, Serialize)]
struct InventoriesOutcome<'a> {
    plan: &'a Plan,
    /// Why inventories were left alone this time.
    deferred: Option<&'a str>,
    deleted: &'a [SnapshotId],
    failures: Vec<Failure>,
}

#[derive(Debug, Serialize)]
struct BlobsOutcome<'a> {
    #[serde(flatten)]
    sweep: &'a BlobSweep,
    failures: Vec<BlobFailure>,
}

#[derive(Debug, Serialize)]
struct Failure {
    id: SnapshotId,
    error: String,
}

#[derive(Debug, Serialize)]
struct BlobFailure {
    path: String,
    error: String,
}

const HEADERS: [&str; 6] = [
    "ACTION",
    "ID",
    "KIND",
    "DATABASE",
    "STARTED (UTC)",
    "REASON",
];

pub(crate) fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let config = super::load_config(global)?;
    let secrets = repo::secrets(&config, []);
    let options = RepositoryPruneOptions::default()
        .with_dry_run(args.dry_run)
        .with_incomplete_grace(args.grace)
        .with_blob_grace(args.blob_grace);
    let report = super::runtime()?.block_on(async {
        let repository = repo::open(&config, Open::Existing, &secrets).await?;
        prune_repository(
            &repository,
            &config.retention,
            &options,
            time::OffsetDateTime::now_utc(),
            |event| match event {
                PruneEvent::Phase(phase) => eprintln!("prune: {phase}"),
                PruneEvent::BlobsListed(n) => eprintln!("prune: blobs: {n} looked at"),
                _ => {}
            },
        )
        .await
        .map_err(|e| match e {
            warmspare_replicate::Error::Snapshot(e) => repo::failure(&e, &secrets),
            other => super::sync::failure(&other, &secrets),
        })
    })?;

    let scrub = |text: &str| output::scrub(text, &secrets);
    let scrubbed = |e: &dyn std::error::Error| output::scrub(&output::one_line(e), &secrets);
    let snapshots = &report.snapshots;
    let snapshot_failures: Vec<Failure> = snapshots
        .failures
        .iter()
        .map(|(id, e)| Failure {
            id: id.clone(),
            error: scrubbed(e),
        })
        .collect();
    let wal_failures: Vec<String> = snapshots.wal.failures.iter().map(|e| scrubbed(e)).collect();
    let replicate_error = |e: &warmspare_replicate::Error| scrubbed(e);
    let failures = |list: &[(SnapshotId, warmspare_replicate::Error)]| -> Vec<Failure> {
        list.iter()
            .map(|(id, e)| Failure {
                id: id.clone(),
                error: scrubbed(e),
            })
            .collect()
    };
    let point_failures = failures(&report.points.failures);
    let inventory_failures = failures(&report.inventories.failures);
    let text_failures = |list: &[(SnapshotId, String)]| -> Vec<Failure> {
        list.iter()
            .map(|(id, reason)| Failure {
                id: id.clone(),
                error: scrub(reason),
            })
            .collect()
    };
    let blob_failures: Vec<BlobFailure> = report
        .blobs
        .failures
        .iter()
        .map(|(path, e)| BlobFailure {
            path: path.clone(),
            error: scrubbed(e),
        })
        .collect();

    let mut stdout = io::stdout().lock();
    if global.json {
        let outcome = Outcome {
            dry_run: report.dry_run,
            groups: &snapshots.groups,
            incomplete: &snapshots.incomplete,
            unreadable: text_failures(&snapshots.unreadable),
            deleted: &snapshots.deleted,
            objects_deleted: snapshots.objects_deleted,
            failures: snapshot_failures,
            wal: WalOutcome {
                keep_from: snapshots.wal.keep_from.as_deref(),
                skipped: snapshots.wal.skipped.as_deref(),
                deletable: snapshots.wal.deletable,
                deleted: snapshots.wal.deleted,
                failures: wal_failures.clone(),
            },
            points: PointsOutcome {
                plan: &report.points.plan,
                unreadable: text_failures(&report.points.unreadable),
                broken: text_failures(&report.points.broken),
                deleted: &report.points.deleted,
                failures: point_failures,
            },
            inventories: InventoriesOutcome {
                plan: &report.inventories.plan,
                deferred: report.inventories.deferred.as_deref(),
                deleted: &report.inventories.deleted,
                failures: inventory_failures,
            },
            blobs: BlobsOutcome {
                sweep: &report.blobs,
                failures: blob_failures,
            },
        };
        output::write_json(&mut stdout, &outcome)?;
    } else {
        let mut rows = point_rows(&report, &point_failures_text(&report, &replicate_error));
        rows.extend(snapshot_rows(snapshots, &snapshot_failures, &secrets));
        rows.extend(inventory_rows(&report, &replicate_error));
        rows.push(blob_row(&report.blobs, report.dry_run));
        rows.push(wal_row(snapshots, &wal_failures));
        let rows: Vec<[String; 6]> = rows.into_iter().map(|r| r.map(|c| scrub(&c))).collect();
        output::write_table(
            &mut stdout,
            HEADERS,
            rows.iter().map(|r| r.each_ref().map(String::as_str)),
        )?;
    }
    summary(&report, &wal_failures, &secrets);
    Ok(ExitCode::from(if report.is_ok() {
        EXIT_OK
    } else {
        EXIT_FAILED
    }))
}

/// The lines on stderr that say what happened.
fn summary(report: &RepositoryPruneReport, wal_failures: &[String], secrets: &[String]) {
    let scrub = |text: &str| output::scrub(text, secrets);
    let snapshots = &report.snapshots;
    let wal = &snapshots.wal;
    if let Some(reason) = &wal.skipped {
        eprintln!("prune: wal archive left alone: {}", scrub(reason));
    } else if let Some(from) = &wal.keep_from {
        let failed = match wal_failures.len() {
            0 => String::new(),
            n => format!(
                "; {n} deletions FAILED (the next prune retries them): {}",
                wal_failures[0]
            ),
        };
        if report.dry_run {
            eprintln!(
                "prune: wal archive: would delete {} before {from}, the start of the oldest \
                 kept physical snapshot",
                files(wal.deletable)
            );
        } else {
            eprintln!(
                "prune: wal archive: deleted {} of {} before {from}, the start of the oldest \
                 kept physical snapshot{failed}",
                wal.deleted,
                files(wal.deletable)
            );
        }
    }
    for (id, reason) in &report.points.broken {
        eprintln!("prune: recovery point {id} is broken: {}", scrub(reason));
    }
    if let Some(reason) = &report.inventories.deferred {
        eprintln!("prune: {}", scrub(reason));
    } else if let Some(reason) = &report.blobs.deferred {
        eprintln!("prune: blobs left alone: {}", scrub(reason));
    }
    let planned = snapshots.planned_deletions().count();
    let kept: usize = snapshots
        .groups
        .iter()
        .map(|g| g.plan.keep.len())
        .sum::<usize>()
        + snapshots.unreadable.len();
    let points = &report.points;
    let inventories = &report.inventories;
    let blobs = &report.blobs;
    if report.dry_run {
        eprintln!(
            "prune: dry run: would delete {} recovery points, {planned} snapshots, {} \
             inventories and {} blobs ({}), and keep {} points, {kept} snapshots and {} \
             inventories; nothing was deleted",
            points.plan.delete.len(),
            if inventories.deferred.is_some() {
                0
            } else {
                inventories.plan.delete.len()
            },
            blobs.deletable,
            output::bytes(blobs.deletable_bytes),
            points.plan.keep.len() + points.unreadable.len(),
            inventories.plan.keep.len(),
        );
    } else {
        let failed = points.failures.len()
            + snapshots.failures.len()
            + inventories.failures.len()
            + blobs.failures.len();
        eprintln!(
            "prune: deleted {} recovery points, {} snapshots ({} objects), {} inventories and \
             {} blobs ({}); kept {} points, {kept} snapshots, {} inventories{}",
            points.deleted.len(),
            snapshots.deleted.len(),
            snapshots.objects_deleted,
            inventories.deleted.len(),
            blobs.deleted,
            output::bytes(blobs.deleted_bytes),
            points.plan.keep.len() + points.unreadable.len(),
            inventories.plan.keep.len() + inventories.failures.len(),
            match failed {
                0 => String::new(),
                n => format!("; {n} deletions FAILED (the next prune retries them)"),
            }
        );
    }
}

/// The table's WAL row (KIND "wal").
fn wal_row(report: &PruneReport, failures: &[String]) -> [String; 6] {
    let wal = &report.wal;
    let (action, id, reason) = match (&wal.skipped, &wal.keep_from) {
        (Some(reason), _) => ("keep".to_owned(), "wal archive".to_owned(), reason.clone()),
        (None, Some(from)) => {
            let id = format!("wal before {from}");
            let before = "before the oldest kept physical snapshot's start";
            if let Some(first) = failures.first() {
                let reason = format!(
                    "{} of {} deleted, {} FAILED: {first}",
                    wal.deleted,
                    files(wal.deletable),
                    failures.len()
                );
                ("FAILED".to_owned(), id, reason)
            } else if report.dry_run {
                let reason = format!("{} {before}", files(wal.deletable));
                ("delete".to_owned(), id, reason)
            } else {
                let reason = format!("{} {before}", files(wal.deleted));
                ("deleted".to_owned(), id, reason)
            }
        }
        (None, None) => (
            "keep".to_owned(),
            "wal archive".to_owned(),
            "nothing to prune".to_owned(),
        ),
    };
    [action, id, "wal".into(), "-".into(), "-".into(), reason]
}

/// The table's blob row (KIND "blobs").
fn blob_row(blobs: &BlobSweep, dry_run: bool) -> [String; 6] {
    let counts = format!(
        "{} listed, {} referenced, {} within the grace period",
        blobs.listed, blobs.referenced, blobs.young
    );
    let (action, reason) = if let Some(reason) = &blobs.deferred {
        ("keep".to_owned(), reason.clone())
    } else if let Some((path, _)) = blobs.failures.first() {
        (
            "FAILED".to_owned(),
            format!(
                "{} of {} deleted, {} FAILED (first: {path}); {counts}",
                blobs.deleted,
                blobs.deletable,
                blobs.failures.len()
            ),
        )
    } else if dry_run {
        (
            "delete".to_owned(),
            format!(
                "{} unreferenced ({}); {counts}",
                blobs.deletable,
                output::bytes(blobs.deletable_bytes)
            ),
        )
    } else {
        (
            "deleted".to_owned(),
            format!(
                "{} unreferenced ({}); {counts}",
                blobs.deleted,
                output::bytes(blobs.deleted_bytes)
            ),
        )
    };
    [
        action,
        "unreferenced blobs".into(),
        "blobs".into(),
        "-".into(),
        "-".into(),
        reason,
    ]
}

/// "1 file", "3 files".
fn files(n: u64) -> String {
    match n {
        1 => "1 file".to_owned(),
        n => format!("{n} files"),
    }
}

/// The action of a planned deletion: "delete" on a dry run, "FAILED" with
/// the error when it failed, "deferred" when it was put off, else
/// "deleted".
fn delete_action(dry_run: bool, deferred: bool, error: Option<String>) -> (String, Option<String>) {
    if dry_run {
        ("delete".into(), None)
    } else if deferred {
        (
            "keep".into(),
            Some("deferred: another process is at work".into()),
        )
    } else if let Some(error) = error {
        ("FAILED".into(), Some(error))
    } else {
        ("deleted".into(), None)
    }
}

/// One row per kept or deleted item of `plan`, newest first.
fn plan_rows(
    plan: &Plan,
    kind: &str,
    database: &str,
    action: impl Fn(&SnapshotId) -> (String, Option<String>),
) -> Vec<[String; 6]> {
    let keeps = plan.keep.iter().map(|Keep { id, time, reasons }| {
        let reasons: Vec<String> = reasons.iter().map(ToString::to_string).collect();
        (id, *time, "keep".to_owned(), reasons.join(", "))
    });
    let deletes = plan.delete.iter().map(|Delete { id, time, reason }| {
        let (action, error) = action(id);
        (
            id,
            *time,
            action,
            error.unwrap_or_else(|| reason.to_string()),
        )
    });
    let mut lines: Vec<_> = keeps.chain(deletes).collect();
    lines.sort_by(|a, b| b.0.cmp(a.0));
    lines
        .into_iter()
        .map(|(id, time, action, reason)| {
            [
                action,
                id.to_string(),
                kind.to_owned(),
                database.to_owned(),
                output::time(time),
                reason,
            ]
        })
        .collect()
}

fn point_failures_text(
    report: &RepositoryPruneReport,
    text: &dyn Fn(&warmspare_replicate::Error) -> String,
) -> Vec<(SnapshotId, String)> {
    report
        .points
        .failures
        .iter()
        .map(|(id, e)| (id.clone(), text(e)))
        .collect()
}

/// The recovery point rows (KIND "point").
fn point_rows(
    report: &RepositoryPruneReport,
    failures: &[(SnapshotId, String)],
) -> Vec<[String; 6]> {
    let points = &report.points;
    let mut rows = plan_rows(&points.plan, "point", "-", |id| {
        let error = failures
            .iter()
            .find(|(f, _)| f == id)
            .map(|(_, e)| e.clone());
        delete_action(report.dry_run, false, error)
    });
    for (id, reason) in &points.unreadable {
        rows.push([
            "keep".into(),
            id.to_string(),
            "point".into(),
            "-".into(),
            output::time(id.timestamp()),
            format!("unreadable: {reason}"),
        ]);
    }
    rows
}

/// The inventory rows (KIND "inventory").
fn inventory_rows(
    report: &RepositoryPruneReport,
    text: &dyn Fn(&warmspare_replicate::Error) -> String,
) -> Vec<[String; 6]> {
    let inventories = &report.inventories;
    plan_rows(&inventories.plan, "inventory", "-", |id| {
        let error = inventories
            .failures
            .iter()
            .find(|(f, _)| f == id)
            .map(|(_, e)| text(e));
        delete_action(report.dry_run, inventories.deferred.is_some(), error)
    })
}

/// The snapshot rows: every snapshot the plan looked at, kept or deleted.
fn snapshot_rows(
    report: &PruneReport,
    failures: &[Failure],
    secrets: &[String],
) -> Vec<[String; 6]> {
    let action = |id: &SnapshotId| {
        let error = failures
            .iter()
            .find(|f| &f.id == id)
            .map(|f| f.error.clone());
        delete_action(report.dry_run, false, error)
    };
    let mut rows = Vec::new();
    for group in &report.groups {
        let kind = output::kind(group.group.kind);
        let database = group.group.database.clone().unwrap_or_else(|| "-".into());
        rows.extend(plan_rows(&group.plan, kind, &database, action));
    }
    for Delete { id, time, reason } in &report.incomplete {
        let (action, error) = action(id);
        rows.push([
            action,
            id.to_string(),
            "-".into(),
            "-".into(),
            output::time(*time),
            error.unwrap_or_else(|| reason.to_string()),
        ]);
    }
    for (id, reason) in &report.unreadable {
        rows.push([
            "keep".into(),
            id.to_string(),
            "-".into(),
            "-".into(),
            output::time(id.timestamp()),
            format!("unreadable manifest: {}", output::scrub(reason, secrets)),
        ]);
    }
    rows
}
