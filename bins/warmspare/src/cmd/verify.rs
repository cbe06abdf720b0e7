//! `warmspare verify <ID|latest> [--deep --scratch URL]`: re-read every
//! object of a snapshot and check its digests; `--deep` also restores it
//! into a scratch server and checks what came back.

use std::io;
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;
use warmspare_agent::config::redact_url;
use warmspare_snapshot::{DeepVerifyReport, RestoreOptions, catalog, verify_deep};
use warmspare_store::SnapshotId;

use super::parse_duration;
use crate::progress::Progress;
use crate::repo::{self, Open, PgTools};
use crate::{EXIT_FAILED, EXIT_OK, Global, UsageError, output};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The snapshot: an id from `warmspare list`, or "latest" (the newest of
    /// any kind).
    #[arg(value_name = "ID|latest")]
    snapshot: String,

    /// Also restore the snapshot into a scratch database on the --scratch
    /// server, compare row counts and run amcheck on its indexes, then drop it.
    #[arg(long)]
    deep: bool,

    /// The server for --deep (a postgres:// URL whose database is used to
    /// create and drop the scratch database). There is no default: use a
    /// throwaway server, never the primary.
    #[arg(
        long,
        value_name = "DATABASE_URL",
        env = "WARMSPARE_SCRATCH_URL",
        hide_env_values = true
    )]
    scratch: Option<String>,

    /// pg_restore jobs for --deep.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    jobs: u32,

    /// How long connecting to the scratch server may take.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    connect_timeout: Duration,

    #[command(flatten)]
    tools: PgTools,
}

/// The result printed with `--json`.
#[derive(Debug, Serialize)]
struct Outcome {
    id: SnapshotId,
    /// Every check that ran passed.
    ok: bool,
    /// Objects whose digests verified.
    files: usize,
    /// Their content bytes.
    bytes: u64,
    /// One message per object that did not verify; each names the object.
    failures: Vec<String>,
    /// What `--deep` checked, when it ran and passed.
    deep: Option<DeepVerifyReport>,
    /// Why `--deep` failed, when it did.
    deep_error: Option<String>,
}

pub(crate) fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let scratch = match (args.deep, args.scratch) {
        (true, None) => {
            return Err(UsageError(
                "--deep restores the snapshot into a scratch server: pass --scratch \
                 postgres://... (or set WARMSPARE_SCRATCH_URL), a throwaway server, never the \
                 primary"
                    .into(),
            )
            .into());
        }
        (true, Some(url)) if !repo::is_database_url(&url) => {
            return Err(UsageError(format!(
                "--scratch {}: expected a postgres:// URL",
                redact_url(&url)
            ))
            .into());
        }
        (true, Some(url)) => Some(url),
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
    if let Some(dir) = args.tools.pg_bin_dir {
        options = options.with_bin_dir(dir);
    }

    let progress = Progress::new("verify");
    let result = super::runtime()?.block_on(async {
        let repository = repo::open(&config, Open::Existing, &secrets).await?;
        let manifest = catalog::resolve(&repository, &args.snapshot, None)
            .await
            .map_err(|e| repo::failure(&e, &secrets))?;
        progress.step("checksums");
        let report = catalog::verify(&repository, &manifest.id)
            .await
            .map_err(|e| repo::failure(&e, &secrets))?;
        let mut outcome = Outcome {
            id: manifest.id.clone(),
            ok: report.is_ok(),
            files: report.files,
            bytes: report.bytes,
            failures: report
                .failures
                .iter()
                .map(|e| output::scrub(&output::one_line(e), &secrets))
                .collect(),
            deep: None,
            deep_error: None,
        };
        // A snapshot whose objects are corrupt is not restored, not even
        // into a scratch database.
        let mut deep_failure = None;
        if let (Some(scratch), true) = (&scratch, outcome.ok) {
            match verify_deep(
                &repository,
                &manifest.id,
                scratch,
                &options,
                Some(&|event| progress.event(event)),
            )
            .await
            {
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

fn print_human(outcome: &Outcome) {
    let verified = format!(
        "{} objects, {}",
        outcome.files,
        output::bytes(outcome.bytes)
    );
    if outcome.failures.is_empty() {
        println!("snapshot {}: checksums ok ({verified})", outcome.id);
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
    if let Some(deep) = &outcome.deep {
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
    if let Some(error) = &outcome.deep_error {
        println!("snapshot {}: deep check FAILED: {error}", outcome.id);
    }
}
