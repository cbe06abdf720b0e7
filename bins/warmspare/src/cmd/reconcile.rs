//! `warmspare reconcile`: the artifacts a site's database names against
//! the site's artifact store.
//!
//! The `[reconcile] query` runs against the site's database (read-only)
//! and lists the keys, optionally with checksums, that must exist; the
//! report names keys missing from the store, objects whose bytes do not
//! have the recorded checksum, and objects no row names (reported, not an
//! error). Exit code 1 when anything is missing or mismatched.

use std::io;
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;
use warmspare_replicate::{ExpectedArtifact, SyncOptions, reconcile};

use super::parse_duration;
use super::sync::{Side, failure, open_site};
use crate::output::{self, one_line, scrub};
use crate::repo;
use crate::{EXIT_FAILED, EXIT_OK, Global, UsageError};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "The site is --site (or `site = ...`). The query comes from \
    [reconcile] query: its first column is the artifact's key, the optional second column \
    its checksum as hex text ([reconcile] digest: sha256 or blake2b256)."
)]
pub(crate) struct Args {
    /// Only check that the named objects exist (do not compare checksums).
    #[arg(long)]
    presence_only: bool,

    /// Objects read at once to compare checksums.
    #[arg(long, value_name = "N", default_value_t = warmspare_replicate::DEFAULT_CONCURRENCY,
          value_parser = super::sync::parse_concurrency)]
    concurrency: usize,

    /// How long connecting to the database may take.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    connect_timeout: Duration,
}

#[derive(Debug, Serialize)]
struct Report {
    site: String,
    store: String,
    consistent: bool,
    expected: u64,
    listed: u64,
    verified: u64,
    missing_count: u64,
    missing: Vec<String>,
    mismatched_count: u64,
    mismatched: Vec<MismatchRow>,
    unnamed_count: u64,
    unnamed: Vec<String>,
    errors: Vec<String>,
}

#[derive(Debug, Serialize)]
struct MismatchRow {
    key: String,
    expected: String,
    actual: String,
}

pub(crate) fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let config = super::load_config(global)?;
    let Some(query) = config.reconcile.query.clone() else {
        return Err(UsageError(format!(
            "{}: [reconcile] query is not set; it lists the artifact keys (and checksums) \
             that the database names",
            global.config.display()
        ))
        .into());
    };
    let (site, site_config) = repo::current_site(&config)?;
    let secrets = repo::secrets(&config, []);
    let store = open_site(&config, site, Side::Target, &secrets)?;
    let verify = config.reconcile.verify_digests && !args.presence_only;
    let algorithm = config.reconcile.digest;
    let options = SyncOptions::default().with_concurrency(args.concurrency);
    eprintln!(
        "reconcile: site {site}, database {}, artifacts {}",
        site_config.database.redacted(),
        store.display_url()
    );

    let report = super::runtime()?.block_on(async {
        let rows = warmspare_snapshot::query::artifact_rows(
            site_config.database.expose(),
            &query,
            args.connect_timeout,
        )
        .await
        .map_err(|e| repo::failure(&e, &secrets))?;
        eprintln!("reconcile: the query returned {} rows", rows.len());
        let expected = rows
            .into_iter()
            .map(|(key, checksum)| ExpectedArtifact { key, checksum })
            .collect();
        reconcile(store.object_store(), expected, algorithm, verify, &options)
            .await
            .map_err(|e| failure(&e, &secrets))
    })?;

    let out = Report {
        site: site.to_owned(),
        store: scrub(&store.display_url(), &secrets),
        consistent: report.is_consistent(),
        expected: report.expected,
        listed: report.listed,
        verified: report.verified,
        missing_count: report.missing_count,
        missing: report.missing.clone(),
        mismatched_count: report.mismatched_count,
        mismatched: report
            .mismatched
            .iter()
            .map(|m| MismatchRow {
                key: m.key.clone(),
                expected: m.expected.clone(),
                actual: m.actual.clone(),
            })
            .collect(),
        unnamed_count: report.unnamed_count,
        unnamed: report.unnamed.clone(),
        errors: report
            .errors
            .iter()
            .map(|e| scrub(&one_line(e), &secrets))
            .collect(),
    };
    if global.json {
        output::write_json(&mut io::stdout().lock(), &out)?;
    } else {
        print_human(&out, verify);
    }
    for e in &out.errors {
        eprintln!("reconcile: failed: {e}");
    }
    if out.consistent {
        Ok(ExitCode::from(EXIT_OK))
    } else {
        eprintln!(
            "error: reconcile: {} missing, {} mismatched, {} unreadable",
            out.missing_count,
            out.mismatched_count,
            out.errors.len()
        );
        Ok(ExitCode::from(EXIT_FAILED))
    }
}

fn print_human(r: &Report, verified: bool) {
    for key in &r.missing {
        println!("missing     {key}");
    }
    for m in &r.mismatched {
        println!(
            "mismatch    {} (database {}, stored {})",
            m.key, m.expected, m.actual
        );
    }
    for key in &r.unnamed {
        println!("unnamed     {key}");
    }
    let more = |shown: usize, count: u64, what: &str| {
        if count > shown as u64 {
            println!("... and {} more {what}", count - shown as u64);
        }
    };
    more(r.missing.len(), r.missing_count, "missing");
    more(r.mismatched.len(), r.mismatched_count, "mismatched");
    more(r.unnamed.len(), r.unnamed_count, "unnamed");
    println!(
        "{} rows, {} objects: {} missing, {} mismatched{}, {} not named by any row",
        r.expected,
        r.listed,
        r.missing_count,
        r.mismatched_count,
        if verified {
            format!(" ({} checksums compared)", r.verified)
        } else {
            " (checksums not compared)".to_owned()
        },
        r.unnamed_count
    );
}
