//! `warmspare backup db`: a logical snapshot of this site's database.

use std::io;
use std::process::ExitCode;
use std::time::Duration;

use warmspare_snapshot::{LogicalBackupOptions, SnapshotSummary, backup_logical};

use super::parse_duration;
use crate::progress::Progress;
use crate::repo::{self, Open, PgTools};
use crate::{EXIT_OK, Global, UsageError, output};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Without `db`, `backup` would take a recovery point (database and artifacts \
                  together), which needs the artifact engine: not available yet."
)]
pub(crate) struct Args {
    #[command(subcommand)]
    what: Option<What>,
}

#[derive(Debug, clap::Subcommand)]
enum What {
    /// A logical snapshot (pg_dump) of this site's database into the repository.
    Db(DbArgs),
}

#[derive(Debug, clap::Args)]
struct DbArgs {
    /// Also store the roles and tablespaces (pg_dumpall --globals-only).
    #[arg(long)]
    globals: bool,

    /// Leave role password hashes out of the globals (works without a
    /// superuser).
    #[arg(long, requires = "globals")]
    no_role_passwords: bool,

    /// Do not record per-table row counts (restores then cannot check them).
    #[arg(long)]
    no_row_counts: bool,

    /// Fail instead of waiting longer than this for a table lock, such as "30s".
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    lock_wait_timeout: Option<Duration>,

    /// How long connecting to the database may take.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    connect_timeout: Duration,

    #[command(flatten)]
    tools: PgTools,
}

pub(crate) fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let Some(What::Db(args)) = args.what else {
        return Err(UsageError(
            "a recovery point (database and artifacts together) needs the artifact engine, \
             which this version does not have yet; use `warmspare backup db`"
                .into(),
        )
        .into());
    };
    let config = super::load_config(global)?;
    let (site, site_config) = repo::current_site(&config)?;
    let secrets = repo::secrets(&config, []);
    let mut options = LogicalBackupOptions::default()
        .with_globals(args.globals)
        .with_role_passwords(!args.no_role_passwords)
        .with_count_rows(!args.no_row_counts)
        .with_connect_timeout(args.connect_timeout);
    if let Some(dir) = args.tools.pg_bin_dir {
        options = options.with_bin_dir(dir);
    }
    if let Some(timeout) = args.lock_wait_timeout {
        options = options.with_lock_wait_timeout(timeout);
    }
    eprintln!(
        "backup: site {site}, database {}",
        site_config.database.redacted()
    );

    let progress = Progress::new("backup");
    let result = super::runtime()?.block_on(async {
        let repository = repo::open(&config, Open::OrInit, &secrets).await?;
        // No lease epoch until the failover driver exists: the manifest
        // records none, and nothing fences this writer yet.
        let epoch = None;
        backup_logical(
            &repository,
            site_config.database.expose(),
            &options,
            epoch,
            time::OffsetDateTime::now_utc(),
            Some(&|event| progress.event(event)),
        )
        .await
        .map_err(|e| repo::failure(&e, &secrets))
    });
    progress.finish();
    let backup = result?;

    let summary = SnapshotSummary::from_manifest(&backup.manifest);
    if global.json {
        output::write_json(&mut io::stdout().lock(), &summary)?;
    } else {
        let tables = backup
            .meta
            .row_counts
            .as_ref()
            .map(|t| format!(", {} tables counted", t.len()))
            .unwrap_or_default();
        println!(
            "snapshot {}: logical, database {}, {} ({} stored) in {}{tables}",
            summary.id,
            backup.meta.database,
            output::bytes(summary.size.unwrap_or(0)),
            output::bytes(summary.stored_size.unwrap_or(0)),
            output::duration(summary.duration.unwrap_or_default()),
        );
    }
    Ok(ExitCode::from(EXIT_OK))
}
