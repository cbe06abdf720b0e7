//! `warmspare prune [--dry-run]`: apply the `[retention]` policy.

use std::io;
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;
use warmspare_snapshot::retention::{Delete, Keep};
use warmspare_snapshot::{GroupPlan, PruneOptions, PruneReport, prune};
use warmspare_store::SnapshotId;

use super::parse_duration;
use crate::repo::{self, Open};
use crate::{EXIT_FAILED, EXIT_OK, Global, output};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Show what would be deleted; delete nothing.
    #[arg(long)]
    dry_run: bool,

    /// Incomplete snapshots younger than this are left alone: they may be
    /// backups in progress. Must exceed the longest backup.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    grace: Duration,
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
struct Failure {
    id: SnapshotId,
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
    let options = PruneOptions::default()
        .with_dry_run(args.dry_run)
        .with_incomplete_grace(args.grace);
    let report = super::runtime()?.block_on(async {
        let repository = repo::open(&config, Open::Existing, &secrets).await?;
        prune(
            &repository,
            &config.retention,
            &options,
            time::OffsetDateTime::now_utc(),
        )
        .await
        .map_err(|e| repo::failure(&e, &secrets))
    })?;

    let scrubbed = |e: &dyn std::error::Error| output::scrub(&output::one_line(e), &secrets);
    let failures: Vec<Failure> = report
        .failures
        .iter()
        .map(|(id, e)| Failure {
            id: id.clone(),
            error: scrubbed(e),
        })
        .collect();
    let wal_failures: Vec<String> = report.wal.failures.iter().map(|e| scrubbed(e)).collect();
    let mut stdout = io::stdout().lock();
    if global.json {
        let outcome = Outcome {
            dry_run: report.dry_run,
            groups: &report.groups,
            incomplete: &report.incomplete,
            unreadable: report
                .unreadable
                .iter()
                .map(|(id, reason)| Failure {
                    id: id.clone(),
                    error: output::scrub(reason, &secrets),
                })
                .collect(),
            deleted: &report.deleted,
            objects_deleted: report.objects_deleted,
            failures,
            wal: WalOutcome {
                keep_from: report.wal.keep_from.as_deref(),
                skipped: report.wal.skipped.as_deref(),
                deletable: report.wal.deletable,
                deleted: report.wal.deleted,
                failures: wal_failures.clone(),
            },
        };
        output::write_json(&mut stdout, &outcome)?;
    } else {
        let mut rows = rows(&report, &failures, &secrets);
        rows.push(wal_row(&report, &wal_failures).map(|c| output::scrub(&c, &secrets)));
        output::write_table(
            &mut stdout,
            HEADERS,
            rows.iter().map(|r| r.each_ref().map(String::as_str)),
        )?;
    }

    let planned = report.planned_deletions().count();
    let kept: usize = report
        .groups
        .iter()
        .map(|g| g.plan.keep.len())
        .sum::<usize>()
        + report.unreadable.len();
    let wal = &report.wal;
    if let Some(reason) = &wal.skipped {
        eprintln!(
            "prune: wal archive left alone: {}",
            output::scrub(reason, &secrets)
        );
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
    if report.dry_run {
        eprintln!(
            "prune: dry run: would delete {planned} snapshots and keep {kept}; nothing was deleted"
        );
    } else {
        eprintln!(
            "prune: deleted {} snapshots ({} objects), kept {kept}{}",
            report.deleted.len(),
            report.objects_deleted,
            match report.failures.len() {
                0 => String::new(),
                n => format!("; {n} deletions FAILED (the next prune retries them)"),
            }
        );
    }
    Ok(ExitCode::from(if report.is_ok() {
        EXIT_OK
    } else {
        EXIT_FAILED
    }))
}

/// The table's last row: the WAL archive (KIND "wal").
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

/// "1 file", "3 files".
fn files(n: u64) -> String {
    match n {
        1 => "1 file".to_owned(),
        n => format!("{n} files"),
    }
}

/// The table: every snapshot the plan looked at, kept or deleted.
fn rows(report: &PruneReport, failures: &[Failure], secrets: &[String]) -> Vec<[String; 6]> {
    let delete_action = |id: &SnapshotId| -> (String, Option<String>) {
        if report.dry_run {
            ("delete".into(), None)
        } else if let Some(f) = failures.iter().find(|f| &f.id == id) {
            ("FAILED".into(), Some(f.error.clone()))
        } else {
            ("deleted".into(), None)
        }
    };
    let mut rows = Vec::new();
    for group in &report.groups {
        let kind = output::kind(group.group.kind).to_owned();
        let database = group.group.database.clone().unwrap_or_else(|| "-".into());
        let keeps = group.plan.keep.iter().map(|Keep { id, time, reasons }| {
            let reasons: Vec<String> = reasons.iter().map(ToString::to_string).collect();
            (id, *time, "keep".to_owned(), reasons.join(", "))
        });
        let deletes = group.plan.delete.iter().map(|Delete { id, time, reason }| {
            let (action, error) = delete_action(id);
            (
                id,
                *time,
                action,
                error.unwrap_or_else(|| reason.to_string()),
            )
        });
        let mut lines: Vec<_> = keeps.chain(deletes).collect();
        lines.sort_by(|a, b| b.0.cmp(a.0));
        for (id, time, action, reason) in lines {
            rows.push([
                action,
                id.to_string(),
                kind.clone(),
                database.clone(),
                output::time(time),
                reason,
            ]);
        }
    }
    for Delete { id, time, reason } in &report.incomplete {
        let (action, error) = delete_action(id);
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
