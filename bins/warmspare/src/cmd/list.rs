//! `warmspare list`: the repository's recovery points and snapshots,
//! newest first.
//!
//! `--json` prints `{"points": [...], "snapshots": [...], "inventories":
//! [...]}`: every recovery point (its snapshot, inventory, WAL position,
//! times), every snapshot (physical ones with their start and stop LSN),
//! and the ids of all artifact inventories.
//!
//! Each readable point and complete snapshot says how its record was
//! authenticated (`"authentication"`: `verified`, `unchecked` or `no_mac`).
//! Without the repository's key a record that carries a MAC is still
//! listed (its digest checked) but marked `unchecked` (`(unchecked)` in the
//! table), and one note on stderr counts them: whoever can write to the
//! repository could have written them.

use std::io::{self, Write as _};
use std::process::ExitCode;

use futures::StreamExt as _;
use serde::Serialize;
use warmspare_replicate::{RecoveryPoint, list_inventories, list_points, read_point_checked};
use warmspare_snapshot::catalog::{self, Authentication};
use warmspare_snapshot::physical::PhysicalMeta;
use warmspare_snapshot::{SnapshotStatus, SnapshotSummary};
use warmspare_store::{Repository, SnapshotKind};

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
    /// How the record was authenticated (readable points).
    #[serde(skip_serializing_if = "Option::is_none")]
    authentication: Option<Authentication>,
}

/// One snapshot as listed: the catalog's summary, plus the WAL range of a
/// physical snapshot.
#[derive(Debug, Serialize)]
struct SnapshotRow {
    #[serde(flatten)]
    summary: SnapshotSummary,
    /// Where replay starts (physical snapshots).
    #[serde(skip_serializing_if = "Option::is_none")]
    start_lsn: Option<String>,
    /// Where the snapshot is consistent (physical snapshots).
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_lsn: Option<String>,
}

/// How many physical manifests are read at once for their LSNs.
const MANIFEST_READS: usize = 8;

/// What `list --json` prints.
#[derive(Debug, Serialize)]
struct Listing<'a> {
    points: &'a [PointRow],
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshots: Option<&'a [SnapshotRow]>,
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

const HEADERS: [&str; 9] = [
    "ID",
    "KIND",
    "STATUS",
    "STARTED (UTC)",
    "DURATION",
    "SIZE",
    "STORED",
    "DATABASE",
    "LSN (START-STOP)",
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
        let snapshots = with_lsns(&repository, snapshots).await;
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
            let rows: Vec<[String; 9]> = snapshots.iter().map(row).collect();
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
    let unchecked_points = points
        .iter()
        .filter(|p| p.authentication == Some(Authentication::Unchecked))
        .count();
    let unchecked_manifests = catalog::unchecked(snapshots.iter().map(|r| &r.summary));
    if let Some(note) = unchecked_note(unchecked_manifests, unchecked_points) {
        eprintln!("list: {note}");
    }
    if args.points {
        eprintln!("list: {}", count(points.len(), "recovery point"));
        return Ok(ExitCode::from(EXIT_OK));
    }
    let mut unreadable = 0;
    for s in snapshots.iter().map(|r| &r.summary) {
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

/// The one note for records listed without checking their MAC (no key is
/// configured), `None` when there are none.
fn unchecked_note(manifests: usize, points: usize) -> Option<String> {
    let parts: Vec<String> = [(manifests, "manifest"), (points, "recovery point")]
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| count(n, what))
        .collect();
    if parts.is_empty() {
        return None;
    }
    let verb = if manifests + points == 1 {
        "carries"
    } else {
        "carry"
    };
    Some(format!(
        "note: no encryption key configured: {} {verb} a MAC that was not checked \
         (marked unchecked; set [repository] encryption_key_file to verify them)",
        parts.join(" and ")
    ))
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
        rows.push(match read_point_checked(repository, &id).await {
            Ok((point, authenticity)) => PointRow {
                id: id.to_string(),
                status: "complete".into(),
                point: Some(point),
                authentication: Some((&authenticity).into()),
            },
            Err(e) => PointRow {
                id: id.to_string(),
                status: format!(
                    "unreadable: {}",
                    output::scrub(&output::one_line(&e), secrets)
                ),
                point: None,
                authentication: None,
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
    let id = match p.authentication {
        Some(Authentication::Unchecked) => format!("{} (unchecked)", p.id),
        _ => p.id.clone(),
    };
    [
        id,
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

/// Adds the start and stop LSN of each complete physical snapshot: one
/// more manifest read for each (logical ones cost nothing). A manifest
/// that cannot be read now just shows no LSNs.
async fn with_lsns(repository: &Repository, snapshots: Vec<SnapshotSummary>) -> Vec<SnapshotRow> {
    futures::stream::iter(snapshots)
        .map(|summary| async move {
            let physical = summary.kind == Some(SnapshotKind::Physical)
                && matches!(summary.status, SnapshotStatus::Complete);
            let meta = if physical {
                catalog::read_manifest(repository, &summary.id)
                    .await
                    .and_then(|m| PhysicalMeta::from_manifest(&m))
                    .ok()
            } else {
                None
            };
            SnapshotRow {
                summary,
                start_lsn: meta.as_ref().map(|m| m.start_lsn.to_string()),
                stop_lsn: meta.as_ref().map(|m| m.stop_lsn.to_string()),
            }
        })
        .buffered(MANIFEST_READS)
        .collect()
        .await
}

fn row(r: &SnapshotRow) -> [String; 9] {
    let s = &r.summary;
    let dash = || "-".to_owned();
    let status = match &s.status {
        SnapshotStatus::Complete if s.authentication == Some(Authentication::Unchecked) => {
            "complete (unchecked)".to_owned()
        }
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
        match (&r.start_lsn, &r.stop_lsn) {
            (Some(start), Some(stop)) => format!("{start}-{stop}"),
            _ => dash(),
        },
    ]
}
