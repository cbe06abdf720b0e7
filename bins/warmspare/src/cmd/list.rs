//! `warmspare list`: the repository's snapshots, newest first.

use std::io;
use std::process::ExitCode;

use warmspare_snapshot::{SnapshotStatus, SnapshotSummary, catalog};

use crate::repo::{self, Open};
use crate::{EXIT_OK, Global, output};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Include incomplete snapshots (in progress, or abandoned by a failed
    /// or killed backup; `prune` removes these after a grace period).
    #[arg(long)]
    all: bool,
}

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
    let snapshots = super::runtime()?.block_on(async {
        let repository = repo::open(&config, Open::Existing, &secrets).await?;
        catalog::list(&repository, args.all)
            .await
            .map_err(|e| repo::failure(&e, &secrets))
    })?;

    let mut stdout = io::stdout().lock();
    if global.json {
        output::write_json(&mut stdout, &snapshots)?;
    } else {
        let rows: Vec<[String; 8]> = snapshots.iter().map(row).collect();
        output::write_table(
            &mut stdout,
            HEADERS,
            rows.iter().map(|r| r.each_ref().map(String::as_str)),
        )?;
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
    let mut summary = match snapshots.len() {
        1 => "1 snapshot".to_owned(),
        n => format!("{n} snapshots"),
    };
    if unreadable > 0 {
        summary.push_str(&format!(
            ", {unreadable} with an unreadable manifest (see `warmspare verify ID`)"
        ));
    }
    eprintln!("list: {summary}");
    Ok(ExitCode::from(EXIT_OK))
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
