//! `warmspare verify <ID|latest> [--deep [--scratch URL]]`: re-read every
//! object of a snapshot (and, for a physical one, the WAL it needs to
//! become consistent) and check its digests; `--deep` also restores it and
//! checks what came back: a logical snapshot into a scratch database on
//! the `--scratch` server, a physical one into a throwaway cluster started
//! here.

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;
use warmspare_agent::config::redact_url;
use warmspare_snapshot::physical::{
    PhysicalMeta, PhysicalVerifyOptions, PhysicalVerifyReport, WalVerifyReport,
    verify_deep_physical, verify_wal,
};
use warmspare_snapshot::{DeepVerifyReport, Event, RestoreOptions, catalog, verify_deep};
use warmspare_store::{SnapshotId, SnapshotKind};

use super::parse_duration;
use super::scratch::server_bin_dir;
use crate::progress::Progress;
use crate::repo::{self, Open, PgTools};
use crate::{EXIT_FAILED, EXIT_OK, Global, UsageError, output};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The snapshot: an id from `warmspare list`, or "latest" (the newest of
    /// any kind).
    #[arg(value_name = "ID|latest")]
    snapshot: String,

    /// Also restore the snapshot and check the restored data. A logical
    /// snapshot goes into a scratch database on the --scratch server (row
    /// counts compared, amcheck on its indexes, then dropped); a physical
    /// one into a throwaway cluster started here from the PostgreSQL server
    /// programs (WAL replayed to consistency, pg_verifybackup, every table
    /// read, amcheck on every table and index, then removed).
    #[arg(long)]
    deep: bool,

    /// The server for --deep of a logical snapshot (a postgres:// URL whose
    /// database is used to create and drop the scratch database). There is
    /// no default: use a throwaway server, never the primary. Physical
    /// snapshots do not use it.
    #[arg(
        long,
        value_name = "DATABASE_URL",
        env = "WARMSPARE_SCRATCH_URL",
        hide_env_values = true
    )]
    scratch: Option<String>,

    /// Where --deep puts the throwaway cluster of a physical snapshot
    /// (needs room for the whole restored cluster) [default: the system's
    /// temporary directory].
    #[arg(long, value_name = "DIR")]
    scratch_dir: Option<PathBuf>,

    /// pg_restore jobs for --deep of a logical snapshot.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    jobs: u32,

    /// How long connecting to the scratch server may take.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    connect_timeout: Duration,

    /// --deep of a physical snapshot: how long the WAL replay up to
    /// consistency may take.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    recovery_timeout: Duration,

    #[command(flatten)]
    tools: PgTools,
}

/// What `--deep` checked.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum DeepReport {
    Logical(DeepVerifyReport),
    Physical(PhysicalVerifyReport),
}

/// The result printed with `--json`.
#[derive(Debug, Serialize)]
struct Outcome {
    id: SnapshotId,
    /// Every check that ran passed.
    ok: bool,
    /// Objects whose digests verified (WAL segments included).
    files: usize,
    /// Their content bytes.
    bytes: u64,
    /// Physical snapshots: the WAL segments from the snapshot's start to
    /// its stop position that verified.
    #[serde(skip_serializing_if = "Option::is_none")]
    wal: Option<WalVerifyReport>,
    /// One message per object that did not verify; each names the object.
    failures: Vec<String>,
    /// What `--deep` checked, when it ran and passed.
    deep: Option<DeepReport>,
    /// Why `--deep` failed, when it did.
    deep_error: Option<String>,
}

/// How `--deep` runs, once the snapshot's kind is known.
enum Deep {
    Logical(String),
    Physical(PhysicalVerifyOptions),
}

pub(crate) fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let scratch = match (args.deep, args.scratch) {
        (true, Some(url)) if !repo::is_database_url(&url) => {
            return Err(UsageError(format!(
                "--scratch {}: expected a postgres:// URL",
                redact_url(&url)
            ))
            .into());
        }
        (true, scratch) => scratch,
        (false, Some(_)) => {
            return Err(UsageError("--scratch is only used with --deep".into()).into());
        }
        (false, None) => None,
    };
    let config = super::load_config(global)?;
    let secrets = repo::secrets(&config, scratch.as_deref());
    let mut options = RestoreOptions::default()
        .with_jobs(args.jobs)
        .with_connect_timeout(args.connect_timeout);
    if let Some(dir) = &args.tools.pg_bin_dir {
        options = options.with_bin_dir(dir);
    }

    let progress = Progress::new("verify");
    let result = super::runtime()?.block_on(async {
        let repository = repo::open(&config, Open::Existing, &secrets).await?;
        let manifest = catalog::resolve(&repository, &args.snapshot, None)
            .await
            .map_err(|e| repo::failure(&e, &secrets))?;
        // What --deep needs is checked before anything is read.
        let deep = match (args.deep, manifest.kind) {
            (false, _) => None,
            (true, SnapshotKind::Physical) => {
                if scratch.is_some() {
                    eprintln!(
                        "verify: --scratch is not used for physical snapshot {}: it is \
                         verified in a throwaway cluster of its own",
                        manifest.id
                    );
                }
                let meta = PhysicalMeta::from_manifest(&manifest)
                    .map_err(|e| repo::failure(&e, &secrets))?;
                let bin_dir = physical_bin_dir(args.tools.pg_bin_dir.as_deref(), &meta)?;
                let parent = args.scratch_dir.clone().unwrap_or_else(std::env::temp_dir);
                Some(Deep::Physical(
                    PhysicalVerifyOptions::new(bin_dir, parent)
                        .with_recovery_timeout(args.recovery_timeout)
                        .with_connect_timeout(args.connect_timeout),
                ))
            }
            (true, _) => match &scratch {
                Some(url) => Some(Deep::Logical(url.clone())),
                None => {
                    return Err(UsageError(format!(
                        "--deep restores logical snapshot {} into a scratch server: pass \
                         --scratch postgres://... (or set WARMSPARE_SCRATCH_URL), a throwaway \
                         server, never the primary",
                        manifest.id
                    ))
                    .into());
                }
            },
        };

        progress.step("checksums");
        let report = catalog::verify(&repository, &manifest.id)
            .await
            .map_err(|e| repo::failure(&e, &secrets))?;
        let mut outcome = Outcome {
            id: manifest.id.clone(),
            ok: report.is_ok(),
            files: report.files,
            bytes: report.bytes,
            wal: None,
            failures: report
                .failures
                .iter()
                .map(|e| output::scrub(&output::one_line(e), &secrets))
                .collect(),
            deep: None,
            deep_error: None,
        };
        if manifest.kind == SnapshotKind::Physical {
            progress.step("wal");
            let wal = verify_wal(&repository, &manifest)
                .await
                .map_err(|e| repo::failure(&e, &secrets))?;
            outcome.ok &= wal.is_ok();
            outcome.files += wal.segments;
            outcome.bytes += wal.bytes;
            outcome.failures.extend(
                wal.failures
                    .iter()
                    .map(|e| output::scrub(&output::one_line(e), &secrets)),
            );
            outcome.wal = Some(wal);
        }
        // A snapshot whose objects are corrupt or missing is not restored,
        // not even into a scratch database.
        let mut deep_failure = None;
        if let (Some(deep), true) = (deep, outcome.ok) {
            let report = match deep {
                Deep::Logical(url) => verify_deep(
                    &repository,
                    &manifest.id,
                    &url,
                    &options,
                    Some(&|event| progress.event(event)),
                )
                .await
                .map(DeepReport::Logical),
                Deep::Physical(physical) => verify_deep_physical(
                    &repository,
                    &manifest.id,
                    &physical,
                    Some(&|event| match event {
                        Event::PhysicalVerify(step) => progress.step(step.as_str()),
                        other => progress.event(other),
                    }),
                )
                .await
                .map(DeepReport::Physical),
            };
            match report {
                Ok(deep) => outcome.deep = Some(deep),
                Err(e) => {
                    let failure = repo::failure(&e, &secrets);
                    outcome.ok = false;
                    outcome.deep_error = Some(failure.to_string());
                    deep_failure = Some(failure);
                }
            }
        }
        anyhow::Ok((outcome, deep_failure))
    });
    progress.finish();
    let (outcome, deep_failure) = result?;

    if global.json {
        output::write_json(&mut io::stdout().lock(), &outcome)?;
    } else {
        print_human(&outcome);
    }
    if let Some(failure) = deep_failure {
        // The error line, and its exit code: 2 for a bad scratch URL, 1
        // for a failed check.
        return Err(failure);
    }
    if outcome.ok {
        eprintln!("verify: snapshot {} is sound", outcome.id);
        Ok(ExitCode::from(EXIT_OK))
    } else {
        eprintln!(
            "verify: snapshot {} FAILED: {} of {} objects did not verify",
            outcome.id,
            outcome.failures.len(),
            outcome.failures.len() + outcome.files
        );
        Ok(ExitCode::from(EXIT_FAILED))
    }
}

/// The server programs for a physical snapshot's throwaway cluster: the
/// bin dir given (or `WARMSPARE_PG_BIN`), else the snapshot's own major
/// version's Debian directory when installed, else the usual search.
fn physical_bin_dir(explicit: Option<&Path>, meta: &PhysicalMeta) -> anyhow::Result<PathBuf> {
    if explicit.is_none() && std::env::var_os("WARMSPARE_PG_BIN").is_none() {
        let major = meta.server_version_num / 10_000;
        let debian = PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"));
        if major >= 10 && warmspare_pgcluster::has_server_binaries(&debian) {
            return Ok(debian);
        }
    }
    server_bin_dir("warmspare verify --deep", explicit)
}

fn print_human(outcome: &Outcome) {
    let verified = format!(
        "{} objects, {}",
        outcome.files,
        output::bytes(outcome.bytes)
    );
    let wal = match &outcome.wal {
        Some(wal) => format!(
            " including {} wal segment{} up to the snapshot's stop position",
            wal.segments,
            if wal.segments == 1 { "" } else { "s" }
        ),
        None => String::new(),
    };
    if outcome.failures.is_empty() {
        println!("snapshot {}: checksums ok ({verified}{wal})", outcome.id);
    } else {
        println!(
            "snapshot {}: checksums FAILED ({verified} verified, {} corrupt or missing)",
            outcome.id,
            outcome.failures.len()
        );
        for failure in &outcome.failures {
            println!("  {failure}");
        }
    }
    match &outcome.deep {
        Some(DeepReport::Logical(deep)) => {
            let mut text = format!(
                "snapshot {}: deep check ok (restored {} into {}",
                outcome.id,
                output::bytes(deep.bytes),
                deep.scratch_database
            );
            match deep.tables_checked {
                Some(n) => text.push_str(&format!(", row counts of {n} tables match")),
                None => text.push_str(", no row counts recorded"),
            }
            match deep.indexes_checked {
                Some(n) => text.push_str(&format!(", amcheck found {n} indexes sound)")),
                None => text.push_str(", amcheck not installed on the scratch server)"),
            }
            println!("{text}");
        }
        Some(DeepReport::Physical(deep)) => println!("{}", physical_summary(&outcome.id, deep)),
        None => {}
    }
    if let Some(error) = &outcome.deep_error {
        println!("snapshot {}: deep check FAILED: {error}", outcome.id);
    }
}

fn physical_summary(id: &SnapshotId, deep: &PhysicalVerifyReport) -> String {
    let mut text = format!(
        "snapshot {id}: deep check ok (restored {} and {} ({}) into a throwaway cluster, ",
        output::bytes(deep.bytes),
        count(deep.wal_files as u64, "wal file"),
        output::bytes(deep.wal_bytes),
    );
    text.push_str(if deep.manifest_checked {
        "pg_verifybackup checked the backup_manifest, "
    } else {
        "pg_verifybackup not installed, "
    });
    text.push_str(&format!(
        "recovered to consistency; {}: {} read ({}), ",
        count(deep.databases.len() as u64, "database"),
        count(deep.tables_read as u64, "user table"),
        count(deep.rows, "row"),
    ));
    match (deep.tables_checked, deep.indexes_checked) {
        (Some(t), Some(i)) => text.push_str(&format!(
            "amcheck found {} and {} sound)",
            count(t as u64, "table"),
            count(i as u64, "index")
        )),
        (None, Some(i)) => text.push_str(&format!(
            "amcheck found {} sound)",
            count(i as u64, "index")
        )),
        _ => text.push_str("amcheck not available)"),
    }
    text
}

/// `1 row`, `2 rows`, `3 indexes`.
fn count(n: u64, noun: &str) -> String {
    match (n, noun.ends_with('x')) {
        (1, _) => format!("1 {noun}"),
        (_, true) => format!("{n} {noun}es"),
        (_, false) => format!("{n} {noun}s"),
    }
}
