//! `warmspare restore db <ID|latest> --to <DATABASE_URL>`: restore a
//! snapshot into the warm spare's database; `warmspare restore artifacts
//! <ID|latest> --to <STORE_URL>`: write an artifact inventory's state into a
//! store.

use std::io;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use warmspare_agent::config::redact_url;
use warmspare_snapshot::{RestoreOptions, catalog, restore_logical};
use warmspare_store::SnapshotKind;

use super::parse_duration;
use crate::progress::Progress;
use crate::repo::{self, Open, PgTools};
use crate::{EXIT_OK, Global, UsageError, output};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, clap::Subcommand)]
enum What {
    /// Restore a database snapshot into a database, without ever leaving it half-restored.
    ///
    /// The snapshot is restored into <db>__warmspare_staging, its row counts
    /// are checked, then it is swapped in by rename; the replaced database
    /// is kept as <db>__warmspare_previous until the next restore.
    Db(DbArgs),
    /// Write one artifact inventory's state into a store: missing and changed
    /// objects only; objects the inventory does not name are reported and
    /// removed only with --delete.
    Artifacts(ArtifactsArgs),
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "--to is opened with the default settings plus AWS_ACCESS_KEY_ID, \
    AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL and AWS_ALLOW_HTTP=true from the \
    environment."
)]
struct ArtifactsArgs {
    /// A recovery point's id, an inventory's id, or "latest" (the newest
    /// recovery point's inventory, else the newest inventory).
    #[arg(value_name = "ID|latest")]
    inventory: String,

    /// The store to restore into (s3://bucket/prefix or file:///path).
    #[arg(long, value_name = "STORE_URL")]
    to: String,

    /// Delete objects the inventory does not name (within --max-delete and
    /// half the target, unless --force).
    #[arg(long)]
    delete: bool,

    /// Plan only: compare and report; write and delete nothing.
    #[arg(long)]
    dry_run: bool,

    #[command(flatten)]
    transfer: super::sync::TransferArgs,
}

#[derive(Debug, clap::Args)]
struct DbArgs {
    /// The snapshot: a snapshot's or a recovery point's id from `warmspare
    /// list`, or "latest".
    #[arg(value_name = "ID|latest")]
    snapshot: String,

    /// Where to restore: a postgres:// URL of the database to replace (a
    /// data directory, for physical snapshots, is not supported yet).
    #[arg(long, value_name = "DATABASE_URL|DATA_DIR")]
    to: String,

    /// Restore to this moment (RFC 3339, such as 2026-11-22T12:00:00Z);
    /// needs a physical snapshot and the WAL archive.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    target_time: Option<OffsetDateTime>,

    /// pg_restore jobs; more than 1 first spools the verified dump to a
    /// local file (it needs the dump's size in free space).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    jobs: u32,

    /// Where the spool file of a parallel restore goes [default: the
    /// system's temporary directory].
    #[arg(long, value_name = "DIR")]
    spool_dir: Option<PathBuf>,

    /// Objects belong to the restoring role (pg_restore --no-owner), for
    /// targets that lack the source's roles.
    #[arg(long)]
    no_owner: bool,

    /// Skip GRANT and REVOKE (pg_restore --no-privileges).
    #[arg(long)]
    no_privileges: bool,

    /// Allow replacing the very database the snapshot was taken from (same
    /// server and name), which is refused by default.
    #[arg(long)]
    allow_source_overwrite: bool,

    /// How long connecting to the target may take.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    connect_timeout: Duration,

    #[command(flatten)]
    tools: PgTools,
}

fn parse_time(text: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|e| format!("{e}; expected RFC 3339, such as 2026-11-22T12:00:00Z"))
}

pub(crate) fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let args = match args.what {
        What::Db(args) => args,
        What::Artifacts(args) => return run_artifacts(global, args),
    };
    if !repo::is_database_url(&args.to) {
        return Err(not_a_database(&args.to).into());
    }
    let config = super::load_config(global)?;
    let secrets = repo::secrets(&config, [args.to.as_str()]);
    let mut options = RestoreOptions::default()
        .with_jobs(args.jobs)
        .with_no_owner(args.no_owner)
        .with_no_privileges(args.no_privileges)
        .with_allow_source_overwrite(args.allow_source_overwrite)
        .with_connect_timeout(args.connect_timeout);
    if let Some(dir) = args.tools.pg_bin_dir {
        options = options.with_bin_dir(dir);
    }
    if let Some(dir) = args.spool_dir {
        options = options.with_spool_dir(dir);
    }

    let progress = Progress::new("restore");
    let result = super::runtime()?.block_on(async {
        let repository = repo::open(&config, Open::Existing, &secrets).await?;
        // A database URL takes a logical snapshot; `latest` is the newest
        // logical one. A physical id is refused by the kind check. A
        // recovery point's id means its snapshot.
        let spec = point_snapshot(&repository, &args.snapshot)
            .await
            .unwrap_or_else(|| args.snapshot.clone());
        let manifest = catalog::resolve(&repository, &spec, Some(SnapshotKind::Logical))
            .await
            .map_err(|e| repo::failure(&e, &secrets))?;
        eprintln!(
            "restore: snapshot {} into {}",
            manifest.id,
            output::scrub(&redact_url(&args.to), &secrets)
        );
        restore_logical(
            &repository,
            &manifest.id,
            &args.to,
            args.target_time,
            &options,
            Some(&|event| progress.event(event)),
        )
        .await
        .map_err(|e| repo::failure(&e, &secrets))
    });
    progress.finish();
    let report = result?;

    if global.json {
        output::write_json(&mut io::stdout().lock(), &report)?;
    } else {
        let mut text = format!(
            "restored snapshot {} into database {} ({} in {} job{})",
            report.id,
            report.database,
            output::bytes(report.bytes),
            report.jobs,
            if report.jobs == 1 { "" } else { "s" }
        );
        if let Some(tables) = report.tables_checked {
            text.push_str(&format!("; row counts of {tables} tables match"));
        }
        match &report.previous {
            Some(previous) => text.push_str(&format!("; the replaced copy is kept as {previous}")),
            None => text.push_str("; there was no database to replace"),
        }
        if report.terminated_sessions > 0 {
            text.push_str(&format!(
                "; {} sessions were disconnected",
                report.terminated_sessions
            ));
        }
        println!("{text}");
    }
    Ok(ExitCode::from(EXIT_OK))
}

/// The snapshot of recovery point `spec`, when `spec` names one.
async fn point_snapshot(repository: &warmspare_store::Repository, spec: &str) -> Option<String> {
    let id = warmspare_store::SnapshotId::parse(spec).ok()?;
    let point = warmspare_replicate::read_point(repository, &id)
        .await
        .ok()?;
    point.snapshot.map(|s| s.to_string())
}

fn run_artifacts(global: &Global, args: ArtifactsArgs) -> anyhow::Result<ExitCode> {
    use super::sync::{ArtifactProgress, Side, Summary, failure, open_url, print_summary};
    use std::sync::Arc;

    let config = super::load_config(global)?;
    let secrets = repo::secrets(&config, [args.to.as_str()]);
    let target = open_url(&args.to, Side::Target, &secrets)?;
    let options = args
        .transfer
        .options()
        .with_delete(args.delete)
        .with_dry_run(args.dry_run);
    let progress = Arc::new(ArtifactProgress::new("restore"));
    let result = super::runtime()?.block_on(async {
        let repository = repo::open(&config, Open::Existing, &secrets).await?;
        let id = warmspare_replicate::resolve_inventory(&repository, &args.inventory)
            .await
            .map_err(|e| failure(&e, &secrets))?;
        eprintln!(
            "restore: inventory {id} into {}{}",
            target.display_url(),
            if args.dry_run { " (dry run)" } else { "" }
        );
        let p = Arc::clone(&progress);
        let report = warmspare_replicate::restore_artifacts(
            &repository,
            &id,
            target.object_store(),
            &options,
            move |e: &warmspare_replicate::SyncEvent<'_>| p.event(e),
        )
        .await
        .map_err(|e| failure(&e, &secrets))?;
        Ok::<_, anyhow::Error>((id, report))
    });
    progress.finish();
    let (id, report) = result?;
    let summary = Summary::new(
        format!("inventory {id}"),
        output::scrub(&target.display_url(), &secrets),
        &report,
        &secrets,
    );
    print_summary("restore", global.json, &summary, args.delete)?;
    Ok(super::sync::exit_code(&report))
}

/// `--to` that is not a database URL: a data directory (physical restore,
/// not built yet) or a URL of another kind.
fn not_a_database(to: &str) -> UsageError {
    if to.contains("://") {
        UsageError(format!(
            "--to {}: expected a postgres:// URL or a data directory",
            redact_url(to)
        ))
    } else {
        UsageError(format!(
            "--to {to}: physical restore into a data directory is not available yet; \
             restore a logical snapshot into a running server with --to postgres://..."
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_that_are_not_databases() {
        let e = not_a_database("/var/lib/postgresql/16/main").to_string();
        assert!(e.contains("physical restore"), "{e}");
        let e = not_a_database("mysql://root:pw@h/db").to_string();
        assert!(
            e.contains("expected a postgres:// URL") && !e.contains("pw@"),
            "{e}"
        );
    }

    #[test]
    fn times_are_rfc3339() {
        assert!(parse_time("2026-11-22T12:00:00Z").is_ok());
        assert!(parse_time("2026-11-22T12:00:00+01:00").is_ok());
        assert!(parse_time("yesterday").is_err());
    }
}
