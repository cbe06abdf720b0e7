//! `warmspare list`: the repository's recovery points and snapshots,
//! newest first.
//!
//! `--json` prints `{"points": [...], "snapshots": [...], "inventories":
//! [...]}`: every recovery point (its snapshot, inventory, WAL position,
//! times), every snapshot, and the ids of all artifact inventories.

use std::io::{self, Write as _};
use std::process::ExitCode;

use serde::Serialize;
use warmspare_replicate::{RecoveryPoint, list_inventories, list_points, read_point};
use warmspare_snapshot::{SnapshotStatus, SnapshotSummary, catalog};
use warmspare_store::Repository;

use crate::repo::{self, Open};
use crate::{EXIT_OK, Global, output};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Include incomplete snapshots (in progress, or abandoned by a failed
    /// or killed backup; `prune` removes these after a grace period).
    #[arg(long)]
    all: bool,

    /// Only the recovery points.
    #[arg(long)]
    points: bool,
}

/// One recovery point as listed.
#[derive(Debug, Serialize)]
struct PointRow {
    id: String,
    /// "complete", or "unreadable: <why>".
    status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    point: Option<RecoveryPoint>,
}

/// What `list --json` prints.
#[derive(Debug, Serialize)]
struct Listing<'a> {
    points: &'a [PointRow],
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshots: Option<&'a [SnapshotSummary]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inventories: Option<Vec<String>>,
}

const POINT_HEADERS: [&str; 6] = [
    "POINT",
    "STARTED (UTC)",
    "DURATION",
    "SNAPSHOT",
    "INVENTORY",
    "WAL",
];

const HEADERS: [&str; 8] = [
    "ID",
    "KIND",
    "STATUS",
    "STARTED (UTC)",
    "DURATION",
    "SIZE",
    "STORED",
    "DATABASE",
];

pub(crate) fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let config = super::load_config(global)?;
    let secrets = repo::secrets(&config, []);
    let (points, snapshots, inventories) = super::runtime()?.block_on(async {
        let repository = repo::open(&config, Open::Existing, &secrets).await?;
        let points = points(&repository, &secrets).await?;
        if args.points {
            return Ok::<_, anyhow::Error>((points, Vec::new(), None));
        }
        let snapshots = catalog::list(&repository, args.all)
            .await
            .map_err(|e| repo::failure(&e, &secrets))?;
        let inventories = list_inventories(&repository)
            .await
            .map_err(|e| super::sync::failure(&e, &secrets))?;
        let inventories = inventories.iter().map(ToString::to_string).collect();
        Ok((points, snapshots, Some(inventories)))
    })?;

    let mut stdout = io::stdout().lock();
    if global.json {
        let listing = Listing {
            points: &points,
            snapshots: (!args.points).then_some(snapshots.as_slice()),
            inventories,
        };
        output::write_json(&mut stdout, &listing)?;
    } else {
        if args.points || !points.is_empty() {
            let rows: Vec<[String; 6]> = points.iter().map(point_row).collect();
            output::write_table(
                &mut stdout,
                POINT_HEADERS,
                rows.iter().map(|r| r.each_ref().map(String::as_str)),
            )?;
        }
        if !args.points {
            if !points.is_empty() {
                writeln!(stdout)?;
            }
            let rows: Vec<[String; 8]> = snapshots.iter().map(row).collect();
            output::write_table(
                &mut stdout,
                HEADERS,
                rows.iter().map(|r| r.each_ref().map(String::as_str)),
            )?;
        }
    }
    for p in &points {
        if p.point.is_none() {
            eprintln!("list: recovery point {}: {}", p.id, p.status);
        }
    }
    if args.points {
        eprintln!("list: {}", count(points.len(), "recovery point"));
        return Ok(ExitCode::from(EXIT_OK));
    }
    let mut unreadable = 0;
    for s in &snapshots {
        if let SnapshotStatus::Unreadable(reason) = &s.status {
            unreadable += 1;
            eprintln!(
                "list: snapshot {}: {}",
                s.id,
                output::scrub(reason, &secrets)
            );
        }
    }
    let mut summary = format!(
        "{}, {}",
        count(points.len(), "recovery point"),
        count(snapshots.len(), "snapshot")
    );
    if unreadable > 0 {
        summary.push_str(&format!(
            ", {unreadable} with an unreadable manifest (see `warmspare verify ID`)"
        ));
    }
    eprintln!("list: {summary}");
    Ok(ExitCode::from(EXIT_OK))
}

fn count(n: usize, what: &str) -> String {
    match n {
        1 => format!("1 {what}"),
        n => format!("{n} {what}s"),
    }
}

/// Every recovery point, newest first; one that cannot be read is listed
/// with the reason.
async fn points(repository: &Repository, secrets: &[String]) -> anyhow::Result<Vec<PointRow>> {
    let ids = list_points(repository)
        .await
        .map_err(|e| super::sync::failure(&e, secrets))?;
    let mut rows = Vec::with_capacity(ids.len());
    for id in ids {
        rows.push(match read_point(repository, &id).await {
            Ok(point) => PointRow {
                id: id.to_string(),
                status: "complete".into(),
                point: Some(point),
            },
            Err(e) => PointRow {
                id: id.to_string(),
                status: format!(
                    "unreadable: {}",
                    output::scrub(&output::one_line(&e), secrets)
                ),
                point: None,
            },
        });
    }
    Ok(rows)
}

fn point_row(p: &PointRow) -> [String; 6] {
    let dash = || "-".to_owned();
    let Some(point) = &p.point else {
        return [
            p.id.clone(),
            "UNREADABLE".into(),
            dash(),
            dash(),
            dash(),
            dash(),
        ];
    };
    let took = (point.finished - point.started)
        .try_into()
        .map(output::duration)
        .unwrap_or_else(|_| dash());
    [
        p.id.clone(),
        output::time(point.started),
        took,
        point
            .snapshot
            .as_ref()
            .map_or_else(dash, ToString::to_string),
        point
            .inventory
            .as_ref()
            .map_or_else(dash, ToString::to_string),
        point.wal_position.clone().unwrap_or_else(dash),
    ]
}

fn row(s: &SnapshotSummary) -> [String; 8] {
    let dash = || "-".to_owned();
    let status = match &s.status {
        SnapshotStatus::Complete => "complete".to_owned(),
        SnapshotStatus::Incomplete => "incomplete".to_owned(),
        SnapshotStatus::Unreadable(_) => "UNREADABLE".to_owned(),
        _ => "unknown".to_owned(),
    };
    let kind = s.kind.map_or_else(dash, |k| output::kind(k).to_owned());
    [
        s.id.to_string(),
        kind,
        status,
        output::time(s.started),
        s.duration.map(output::duration).unwrap_or_else(dash),
        s.size.map(output::bytes).unwrap_or_else(dash),
        s.stored_size.map(output::bytes).unwrap_or_else(dash),
        s.database.clone().unwrap_or_else(dash),
    ]
}
