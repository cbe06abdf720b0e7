//! `warmspare restore db <ID|latest> --to <DATABASE_URL>`: restore a
//! logical snapshot into the warm spare's database; `warmspare restore db
//! <ID|latest> --to <DATA_DIR> [--target-time TIME] [--standby]`: lay out a
//! physical snapshot as a data directory that recovers from the WAL
//! archive; `warmspare restore artifacts <ID|latest> --to <STORE_URL>`:
//! write an artifact inventory's state into a store.

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use warmspare_agent::config::redact_url;
use warmspare_snapshot::physical::{PhysicalRestoreOptions, RecoveryTarget, snapshot_for_time};
use warmspare_snapshot::{Event, RestoreOptions, catalog, restore_logical, restore_physical, wal};
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
    /// Restore a database snapshot into a database, or a physical one into a data directory.
    ///
    /// --to postgres://...: a logical snapshot is restored into
    /// <db>__warmspare_staging, its row counts are checked, then it is
    /// swapped in by rename; the replaced database is kept as
    /// <db>__warmspare_previous until the next restore.
    ///
    /// --to /path/to/data (absolute, or ./relative): a physical snapshot is
    /// extracted into the missing or empty directory, with a restore_command
    /// that runs this binary's `wal fetch` with this configuration file;
    /// starting PostgreSQL on it replays the WAL archive (up to
    /// --target-time) and promotes, or with --standby keeps following it.
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

    /// Where to restore: a postgres:// URL of the database to replace
    /// (logical snapshots), or a data directory, absolute or ./relative,
    /// missing or empty (physical snapshots).
    #[arg(long, value_name = "DATABASE_URL|DATA_DIR")]
    to: String,

    /// Recover to this moment (RFC 3339, such as 2026-11-22T12:00:00Z):
    /// exactly the transactions committed before it. Needs a physical
    /// snapshot and the WAL archive; with "latest", the newest physical
    /// snapshot finished before it.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    target_time: Option<OffsetDateTime>,

    /// Physical restores: start as a standby that keeps replaying the WAL
    /// the primary archives into the repository (standby.signal), instead
    /// of recovering and promoting.
    #[arg(long)]
    standby: bool,

    /// pg_restore jobs; more than 1 first spools the verified dump to a
    /// local file (it needs the dump's size in free space), unless
    /// --parallel-load is given. A snapshot
    /// taken with `backup db --jobs` is always spooled (its objects
    /// downloaded in parallel) and restored with pg_restore --jobs N.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    jobs: u32,

    /// Custom-format snapshots with --jobs N: stream the dump (no spool)
    /// and load the table data over N connections, a large table's rows
    /// split among them (pg_restore --jobs gives each table to one
    /// connection). Same contents, rows in another physical order.
    #[arg(long)]
    parallel_load: bool,

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

    /// Apply the snapshot's globals (taken with `backup db --globals`)
    /// first: create the roles the target lacks, with their attributes,
    /// password hashes and memberships. Existing roles are never altered
    /// (the connecting role keeps its password); tablespaces and
    /// per-database role settings are skipped. Needs a role that may
    /// create roles.
    #[arg(long)]
    with_globals: bool,

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
        if args.with_globals {
            return Err(UsageError(
                "--with-globals is for logical restores into a database (--to postgres://...); \
                 a physical restore carries the whole cluster, roles included"
                    .into(),
            )
            .into());
        }
        if args.parallel_load {
            return Err(UsageError(
                "--parallel-load is for logical restores into a database (--to postgres://...)"
                    .into(),
            )
            .into());
        }
        let data_dir = data_dir(&args.to)?;
        return run_physical(global, &args, &data_dir);
    }
    if args.standby {
        return Err(UsageError(format!(
            "--standby is for physical restores into a data directory, not --to {}",
            redact_url(&args.to)
        ))
        .into());
    }
    if args.parallel_load && args.jobs < 2 {
        return Err(UsageError("--parallel-load needs --jobs 2 or more".into()).into());
    }
    let config = super::load_config(global)?;
    let secrets = repo::secrets(&config, [args.to.as_str()]);
    let mut options = RestoreOptions::default()
        .with_jobs(args.jobs)
        .with_parallel_load(args.parallel_load)
        .with_no_owner(args.no_owner)
        .with_no_privileges(args.no_privileges)
        .with_globals(args.with_globals)
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
        let spec = point_snapshot(&repository, &args.snapshot, &secrets)
            .await?
            .unwrap_or_else(|| args.snapshot.clone());
        let manifest = catalog::resolve(&repository, &spec, Some(SnapshotKind::Logical))
            .await
            .map_err(|e| match e.root() {
                warmspare_snapshot::Error::WrongKind { id, .. } => UsageError(format!(
                    "snapshot {id} is a physical snapshot: it restores into a data directory \
                     (--to /path/to/data), not into a database"
                ))
                .into(),
                _ => repo::failure(&e, &secrets),
            })?;
        eprintln!(
            "restore: snapshot {} into {}",
            manifest.id,
            output::scrub(&redact_url(&args.to), &secrets)
        );
        if args.parallel_load
            && let Ok(meta) = warmspare_snapshot::LogicalMeta::from_manifest(&manifest)
        {
            if meta.is_directory() {
                eprintln!(
                    "restore: snapshot {} was taken with `backup db --jobs` (directory format): \
                     --parallel-load does not apply to it; pg_restore --jobs {} restores it",
                    manifest.id, args.jobs
                );
            } else if !meta.encoding.eq_ignore_ascii_case("UTF8") {
                eprintln!(
                    "restore: snapshot {} is of a {} database: --parallel-load needs UTF8; \
                     pg_restore --jobs {} restores it",
                    manifest.id, meta.encoding, args.jobs
                );
            }
        }
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
        if let Some(globals) = &report.globals {
            text.push_str(&format!(
                "; globals: {} roles created, {} existed and were left as they are",
                globals.roles_created.len(),
                globals.roles_existing.len()
            ));
            for skipped in &globals.skipped {
                eprintln!("restore: globals: skipped {skipped}");
            }
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

/// The snapshot of recovery point `spec`, when `spec` names one; a point
/// that exists but cannot be read or trusted is an error naming it.
async fn point_snapshot(
    repository: &warmspare_store::Repository,
    spec: &str,
    secrets: &[String],
) -> anyhow::Result<Option<String>> {
    let Ok(id) = warmspare_store::SnapshotId::parse(spec) else {
        return Ok(None);
    };
    match warmspare_replicate::read_point(repository, &id).await {
        Ok(point) => Ok(point.snapshot.map(|s| s.to_string())),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(artifact_failure(&e, secrets)),
    }
}

fn run_artifacts(global: &Global, args: ArtifactsArgs) -> anyhow::Result<ExitCode> {
    use super::sync::{ArtifactProgress, Side, Summary, open_url, print_summary};
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
            .map_err(|e| artifact_failure(&e, &secrets))?;
        eprintln!(
            "restore: inventory {id} into {}{}",
            target.display_url(),
            if args.dry_run { " (dry run)" } else { "" }
        );
        let p = Arc::clone(&progress);
        // A `file://` target's directory is written directly.
        let report = warmspare_replicate::restore_artifacts_to(
            &repository,
            &id,
            &warmspare_replicate::Endpoint::for_store(&target),
            &options,
            move |e: &warmspare_replicate::SyncEvent<'_>| p.event(e),
        )
        .await
        .map_err(|e| artifact_failure(&e, &secrets))?;
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

/// An artifact command's error as one scrubbed line; a missing, wrong or
/// unloaded encryption key is a usage error (exit code 2), as it is for
/// the database commands.
pub(super) fn artifact_failure(
    error: &warmspare_replicate::Error,
    secrets: &[String],
) -> anyhow::Error {
    use warmspare_store::Error as StoreError;
    match error {
        warmspare_replicate::Error::Repository(
            StoreError::KeyMissing { .. }
            | StoreError::WrongKey { .. }
            | StoreError::KeyNotLoaded { .. }
            | StoreError::InvalidKey { .. },
        ) => UsageError(output::scrub(&output::one_line(error), secrets)).into(),
        other => super::sync::failure(other, secrets),
    }
}

/// `--to` that is not a database URL: a data directory, absolute or
/// `./relative` (made absolute here), or else a usage error.
fn data_dir(to: &str) -> Result<PathBuf, UsageError> {
    if to.contains("://") {
        return Err(UsageError(format!(
            "--to {}: expected a postgres:// URL or a data directory",
            redact_url(to)
        )));
    }
    let path = Path::new(to);
    let explicit = path.is_absolute() || to.starts_with("./") || to.starts_with("../");
    if !explicit || to.trim().is_empty() {
        return Err(UsageError(format!(
            "--to {to:?}: expected a postgres:// URL or a data directory for a physical \
             restore, written as an absolute path or ./{to}"
        )));
    }
    std::path::absolute(path)
        .map_err(|e| UsageError(format!("--to {to}: cannot make the path absolute: {e}")))
}

/// The snapshot a physical restore takes, resolved before anything is
/// written: `latest` is the newest physical snapshot (with a target time:
/// the newest finished before it); a logical one is refused.
async fn physical_manifest(
    repository: &warmspare_store::Repository,
    args: &DbArgs,
    secrets: &[String],
) -> anyhow::Result<warmspare_store::Manifest> {
    let spec = point_snapshot(repository, &args.snapshot, secrets)
        .await?
        .unwrap_or_else(|| args.snapshot.clone());
    let resolved = match (spec.as_str(), args.target_time) {
        (catalog::LATEST, Some(time)) => snapshot_for_time(repository, time).await,
        (catalog::LATEST, None) => {
            catalog::resolve(repository, &spec, Some(SnapshotKind::Physical)).await
        }
        _ => catalog::resolve(repository, &spec, None).await,
    };
    let manifest = resolved.map_err(|e| match e.root() {
        warmspare_snapshot::Error::NoSnapshots { .. } => UsageError(
            "a physical restore into a data directory needs a physical snapshot, and the \
             repository holds none: take one with `warmspare backup db --physical`, or \
             restore a logical snapshot into a running server with --to postgres://..."
                .into(),
        )
        .into(),
        // No physical snapshot old enough: a usage error, like a wrong id.
        warmspare_snapshot::Error::InvalidRecoveryTarget { .. } => {
            UsageError(output::scrub(&output::one_line(&e), secrets)).into()
        }
        _ => repo::failure(&e, secrets),
    })?;
    if manifest.kind != SnapshotKind::Physical {
        return Err(UsageError(format!(
            "snapshot {} is a {} snapshot: a physical restore into a data directory needs a \
             physical snapshot (`warmspare backup db --physical`); restore this one into a \
             running server with --to postgres://...",
            manifest.id,
            output::kind(manifest.kind)
        ))
        .into());
    }
    Ok(manifest)
}

/// The `--json` result of a physical restore.
#[derive(Debug, Serialize)]
struct PhysicalOutcome {
    id: String,
    data_dir: String,
    /// `recovery.signal` or `standby.signal`.
    signal_file: &'static str,
    standby: bool,
    /// "latest", or the RFC 3339 target time.
    target: String,
    bytes: u64,
    start_lsn: String,
    stop_lsn: String,
    restore_command: String,
}

fn run_physical(global: &Global, args: &DbArgs, data_dir: &Path) -> anyhow::Result<ExitCode> {
    if args.standby && args.target_time.is_some() {
        return Err(UsageError(
            "--standby and --target-time exclude each other: a standby replays all the WAL \
             the repository holds; a target time needs a recovery that stops there and \
             promotes"
                .into(),
        )
        .into());
    }
    let config = super::load_config(global)?;
    let secrets = repo::secrets(&config, []);
    // restore_command runs as the server's user, from the data directory:
    // absolute paths only.
    let exe = std::env::current_exe().context("cannot find this program's own path")?;
    let config_path = std::path::absolute(&global.config)
        .with_context(|| format!("cannot make {} absolute", global.config.display()))?;
    let restore_command = wal::restore_command(&exe, &config_path);
    let target = match args.target_time {
        Some(time) => RecoveryTarget::Time(time),
        None => RecoveryTarget::Latest,
    };
    let options = PhysicalRestoreOptions::new(restore_command.clone())
        .with_target(target)
        .with_standby(args.standby);

    let progress = Progress::new("restore");
    let result = super::runtime()?.block_on(async {
        let repository = repo::open(&config, Open::Existing, &secrets).await?;
        let manifest = physical_manifest(&repository, args, &secrets).await?;
        eprintln!(
            "restore: physical snapshot {} into {}{}",
            manifest.id,
            data_dir.display(),
            match (args.standby, args.target_time) {
                (true, _) => " as a standby".to_owned(),
                (false, Some(t)) => format!(", recovery to {}", output::time(t)),
                (false, None) => ", recovery to the end of the WAL archive".to_owned(),
            }
        );
        restore_physical(
            &repository,
            &manifest.id,
            data_dir,
            &options,
            Some(&|event| match event {
                Event::PhysicalRestore(step) => progress.step(step.as_str()),
                other => progress.event(other),
            }),
        )
        .await
        .map_err(|e| repo::failure(&e, &secrets))
    });
    progress.finish();
    let report = result?;

    let outcome = PhysicalOutcome {
        id: report.id.to_string(),
        data_dir: report.data_dir.display().to_string(),
        signal_file: report.signal_file,
        standby: args.standby,
        target: match args.target_time {
            Some(t) => t.format(&Rfc3339).unwrap_or_else(|_| output::time(t)),
            None => "latest".into(),
        },
        bytes: report.bytes,
        start_lsn: report.meta.start_lsn.to_string(),
        stop_lsn: report.meta.stop_lsn.to_string(),
        restore_command,
    };
    if global.json {
        output::write_json(&mut io::stdout().lock(), &outcome)?;
    } else {
        println!(
            "restored physical snapshot {} into {} ({}), {} written",
            outcome.id,
            outcome.data_dir,
            output::bytes(outcome.bytes),
            outcome.signal_file,
        );
    }
    let dir = &outcome.data_dir;
    eprintln!("restore: next steps:");
    eprintln!(
        "restore:   1. hand the files to the server's user: chown -R postgres: {dir} \
         (they belong to whoever ran this restore)"
    );
    eprintln!(
        "restore:   2. make sure that user can read {} (restore_command runs as it)",
        config_path.display()
    );
    eprintln!(
        "restore:   3. start PostgreSQL on it, e.g. as postgres: pg_ctl -D {dir} start; {}",
        if args.standby {
            "it stays a standby, replaying each segment as the primary archives it \
             (promote: pg_ctl promote)"
        } else if args.target_time.is_some() {
            "it replays the WAL committed before the target time, then promotes"
        } else {
            "it replays all the WAL the repository holds, then promotes"
        }
    );
    eprintln!(
        "restore: the copy keeps the source's settings, archive_command included; \
         for a drill set archive_mode = off in {dir}/postgresql.auto.conf first"
    );
    Ok(ExitCode::from(EXIT_OK))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_that_are_not_databases() {
        assert_eq!(
            data_dir("/var/lib/postgresql/16/main").unwrap(),
            Path::new("/var/lib/postgresql/16/main")
        );
        let relative = data_dir("./spare/data").unwrap();
        assert!(relative.is_absolute() && relative.ends_with("spare/data"));
        let e = data_dir("mysql://root:pw@h/db").unwrap_err().to_string();
        assert!(
            e.contains("expected a postgres:// URL") && !e.contains("pw@"),
            "{e}"
        );
        let e = data_dir("data").unwrap_err().to_string();
        assert!(e.contains("./data"), "{e}");
    }

    #[test]
    fn times_are_rfc3339() {
        assert!(parse_time("2026-11-22T12:00:00Z").is_ok());
        assert!(parse_time("2026-11-22T12:00:00+01:00").is_ok());
        assert!(parse_time("yesterday").is_err());
    }
}
