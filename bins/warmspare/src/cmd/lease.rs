//! `warmspare lease show`: the lease object as it is in the repository.
//!
//! Holder, epoch, renewals, released/successor, version token and the age
//! of the object by its `last_modified`. The age compares the repository's
//! clock with this machine's: it is for display only, never a safety
//! decision (the drivers compare only their own monotonic clocks).

use std::io::{self, Write as _};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use serde::Serialize;
use warmspare_failover::driver::read_lease;
use warmspare_failover::policy::LeaseRecord;
use warmspare_store::object_store::ObjectStoreExt as _;
use warmspare_store::{Store, layout};

use crate::cmd::load_config;
use crate::{EXIT_FAILED, EXIT_OK, Global, output};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: LeaseCommand,
}

#[derive(Debug, clap::Subcommand)]
enum LeaseCommand {
    /// Print the lease: holder, epoch, renewals, version, age.
    Show,
}

/// The lease as shown.
#[derive(Debug, Serialize)]
pub(crate) struct LeaseView {
    /// Whether the object exists.
    pub(crate) exists: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) record: Option<LeaseRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) version: Option<String>,
    /// RFC 3339 time of the last write, by the repository's clock.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) last_modified: Option<String>,
    /// Seconds since the last write (display only: compares two clocks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) age_seconds: Option<f64>,
}

/// Reads the lease and the time of its last write.
pub(crate) async fn read(store: &Store) -> anyhow::Result<LeaseView> {
    let path = layout::lease();
    let lease = read_lease(store.cas().as_ref(), &path)
        .await
        .map_err(|e| anyhow::anyhow!("cannot read the lease: {e}"))?;
    let Some((version, record, _)) = lease else {
        return Ok(LeaseView {
            exists: false,
            record: None,
            version: None,
            last_modified: None,
            age_seconds: None,
        });
    };
    let meta = store.object_store().head(&path).await.ok();
    let modified = meta.map(|m| m.last_modified);
    let age = modified.and_then(|t| {
        let then = SystemTime::UNIX_EPOCH
            + Duration::from_millis(u64::try_from(t.timestamp_millis()).ok()?);
        SystemTime::now().duration_since(then).ok()
    });
    Ok(LeaseView {
        exists: true,
        record: Some(record),
        version: Some(version.to_string()),
        last_modified: modified.map(|t| t.to_rfc3339()),
        age_seconds: age.map(|a| a.as_secs_f64()),
    })
}

pub(crate) fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let LeaseCommand::Show = args.command;
    let config = load_config(global)?;
    let store =
        Store::open(&config.repository.store_config()).context("cannot open the repository")?;
    let view = crate::cmd::runtime()?.block_on(read(&store))?;
    let mut out = io::stdout().lock();
    if global.json {
        output::write_json(&mut out, &view)?;
    } else if let Some(r) = &view.record {
        writeln!(out, "holder:    {}", r.holder)?;
        writeln!(out, "epoch:     {}", r.epoch)?;
        writeln!(out, "renewals:  {}", r.renewals)?;
        writeln!(
            out,
            "released:  {}{}",
            r.released,
            r.successor
                .as_deref()
                .map(|s| format!(" (to {s})"))
                .unwrap_or_default()
        )?;
        writeln!(
            out,
            "ttl:       {}",
            output::duration(Duration::from_millis(r.ttl_ms))
        )?;
        writeln!(out, "version:   {}", view.version.as_deref().unwrap_or("-"))?;
        if let (Some(t), Some(age)) = (&view.last_modified, view.age_seconds) {
            writeln!(
                out,
                "written:   {t} ({} ago by this machine's clock)",
                output::duration(Duration::from_secs_f64(age))
            )?;
        }
    } else {
        writeln!(out, "no lease: {} is not held by any site", layout::lease())?;
    }
    Ok(ExitCode::from(if view.exists || global.json {
        EXIT_OK
    } else {
        EXIT_FAILED
    }))
}
