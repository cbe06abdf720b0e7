//! `warmspare backup`: a recovery point (the database and the artifacts
//! together), or one half: `backup db`, `backup artifacts`.

use std::io;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use warmspare_replicate::{
    PointEvent, PointRequest, SyncEvent, backup_artifacts, previous_inventory, take_recovery_point,
};
use warmspare_snapshot::physical::Checkpoint;
use warmspare_snapshot::{
    Event, LogicalBackupOptions, PhysicalBackupOptions, SnapshotSummary, backup_logical,
    backup_physical, wal,
};
use warmspare_store::Store;

use super::parse_duration;
use super::restore::artifact_failure;
use super::sync::{ArtifactProgress, Side, open_site};
use crate::progress::Progress;
use crate::repo::{self, Open, PgTools};
use crate::{EXIT_OK, Global, output};

/// How many recent inventories are searched for the previous one of the
/// same store (its unchanged objects are not read again).
const PREVIOUS_SEARCH: usize = 8;

#[derive(Debug, clap::Args)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "Without `db` or `artifacts`, `backup` takes a recovery point: a database \
                  snapshot, the WAL position and an inventory of the site's artifacts, \
                  recorded together in points/<id>.json."
)]
pub(crate) struct Args {
    #[command(subcommand)]
    what: Option<What>,

    #[command(flatten)]
    db: DbArgs,

    #[command(flatten)]
    artifacts: ArtifactArgs,
}

#[derive(Debug, clap::Subcommand)]
enum What {
    /// A snapshot of this site's database into the repository: logical
    /// (pg_dump), or with --physical a base backup (pg_basebackup) that the
    /// WAL archive makes restorable to any point in time.
    Db(DbCommand),
    /// An inventory of this site's artifact store, with the contents of new
    /// or changed objects stored once, content-addressed.
    Artifacts(ArtifactArgs),
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

    /// pg_dump jobs. 1: the custom format, streamed (no local disk). More:
    /// the directory format with pg_dump --jobs N, each file uploaded as it
    /// is written (the local spool holds what the upload has not caught up
    /// with); it pays off with several large tables and spare cores.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    jobs: u32,

    /// Where the spool directory of a --jobs dump goes [default: the
    /// system's temporary directory].
    #[arg(long, value_name = "DIR")]
    spool_dir: Option<std::path::PathBuf>,

    #[command(flatten)]
    tools: PgTools,
}

/// `backup db`: the logical options, or `--physical` and its own.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "--physical needs the server to archive its WAL into this repository \
                  (wal_level = replica, archive_mode = on, archive_command = 'warmspare \
                  --config FILE wal push %p'), a role with REPLICATION and a replication \
                  line in pg_hba.conf; see docs/wal-archive.md."
)]
struct DbCommand {
    /// A physical snapshot: pg_basebackup of the whole cluster, committed
    /// once the WAL it needs is in the repository.
    #[arg(long, conflicts_with_all = ["globals", "no_row_counts", "lock_wait_timeout", "jobs",
                                      "spool_dir"])]
    physical: bool,

    /// With --physical: how long to wait, once the base backup is stored,
    /// for its WAL to reach the repository.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration,
          requires = "physical")]
    wal_timeout: Duration,

    /// With --physical: take the starting checkpoint at once ("fast", an
    /// I/O burst) or spread like a scheduled one ("spread", gentler but
    /// slower to start).
    #[arg(long, value_name = "HOW", default_value = "fast",
          value_parser = ["fast", "spread"], requires = "physical")]
    checkpoint: String,

    #[command(flatten)]
    db: DbArgs,
}

#[derive(Debug, clap::Args)]
struct ArtifactArgs {
    /// Objects read at once.
    #[arg(long, value_name = "N", default_value_t = warmspare_replicate::DEFAULT_CONCURRENCY,
          value_parser = super::sync::parse_concurrency)]
    concurrency: usize,

    /// Byte-rate limit on reading the artifacts, such as 10M (bytes per second).
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    bwlimit: Option<u64>,
}

fn parse_rate(text: &str) -> Result<u64, String> {
    warmspare_replicate::parse_byte_rate(text).map_err(|e| e.to_string())
}

impl DbArgs {
    fn options(&self) -> LogicalBackupOptions {
        let mut options = LogicalBackupOptions::default()
            .with_globals(self.globals)
            .with_role_passwords(!self.no_role_passwords)
            .with_count_rows(!self.no_row_counts)
            .with_connect_timeout(self.connect_timeout)
            .with_jobs(self.jobs);
        if let Some(dir) = &self.spool_dir {
            options = options.with_spool_dir(dir.clone());
        }
        if let Some(dir) = &self.tools.pg_bin_dir {
            options = options.with_bin_dir(dir.clone());
        }
        if let Some(timeout) = self.lock_wait_timeout {
            options = options.with_lock_wait_timeout(timeout);
        }
        options
    }
}

impl ArtifactArgs {
    fn options(&self) -> warmspare_replicate::SyncOptions {
        warmspare_replicate::SyncOptions::default()
            .with_concurrency(self.concurrency)
            .with_bwlimit(self.bwlimit)
    }
}

/// The `--json` summary of an artifact backup.
#[derive(Debug, Serialize)]
struct ArtifactSummary {
    inventory: String,
    source: Option<String>,
    objects: usize,
    size: u64,
    unchanged: u64,
    deduplicated: u64,
    stored: u64,
    bytes: u64,
    vanished: u64,
    retries: u64,
    seconds: f64,
}

impl ArtifactSummary {
    fn new(b: &warmspare_replicate::ArtifactBackup) -> Self {
        ArtifactSummary {
            inventory: b.inventory.id.to_string(),
            source: b.inventory.source.clone(),
            objects: b.inventory.entries.len(),
            size: b.inventory.total_size(),
            unchanged: b.unchanged,
            deduplicated: b.deduplicated,
            stored: b.stored,
            bytes: b.bytes,
            vanished: b.vanished,
            retries: b.retries,
            seconds: b.seconds,
        }
    }

    fn line(&self) -> String {
        format!(
            "inventory {}: {} objects ({}), {} stored ({}), {} unchanged, {} already in the \
             repository, in {}",
            self.inventory,
            self.objects,
            output::bytes(self.size),
            self.stored,
            output::bytes(self.bytes),
            self.unchanged,
            self.deduplicated,
            output::duration(Duration::from_secs_f64(self.seconds.max(0.0))),
        )
    }
}

/// The `--json` summary of a recovery point.
#[derive(Debug, Serialize)]
struct PointSummary {
    id: String,
    site: String,
    wal_position: Option<String>,
    started: String,
    finished: String,
    snapshot: SnapshotSummary,
    artifacts: Option<ArtifactSummary>,
}

pub(crate) fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    match args.what {
        Some(What::Db(db)) if db.physical => run_physical(global, &db),
        Some(What::Db(db)) => run_db(global, &db.db),
        Some(What::Artifacts(a)) => run_artifacts(global, &a),
        None => run_point(global, &args.db, &args.artifacts),
    }
}

fn run_db(global: &Global, args: &DbArgs) -> anyhow::Result<ExitCode> {
    let config = super::load_config(global)?;
    let (site, site_config) = repo::current_site(&config)?;
    let secrets = repo::secrets(&config, []);
    let options = args.options();
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

/// The `--json` result of `backup db --physical`.
#[derive(Debug, Serialize)]
struct PhysicalSummary {
    #[serde(flatten)]
    snapshot: SnapshotSummary,
    /// `user@host:port/database` of the source.
    source: String,
    server_version: String,
    timeline: u32,
    start_lsn: String,
    stop_lsn: String,
    start_wal: String,
    stop_wal: String,
    /// Wall-clock seconds of the whole command, the wait for the WAL
    /// included.
    seconds: f64,
}

fn run_physical(global: &Global, args: &DbCommand) -> anyhow::Result<ExitCode> {
    let config = super::load_config(global)?;
    let (site, site_config) = repo::current_site(&config)?;
    let secrets = repo::secrets(&config, []);
    let mut options = PhysicalBackupOptions::default()
        .with_connect_timeout(args.db.connect_timeout)
        .with_wal_timeout(args.wal_timeout)
        .with_checkpoint(match args.checkpoint.as_str() {
            "spread" => Checkpoint::Spread,
            _ => Checkpoint::Fast,
        });
    if let Some(dir) = &args.db.tools.pg_bin_dir {
        options = options.with_bin_dir(dir.clone());
    }
    eprintln!(
        "backup: site {site}, database {} (physical)",
        site_config.database.redacted()
    );

    let started = std::time::Instant::now();
    let progress = Progress::new("backup");
    let result = super::runtime()?.block_on(async {
        let repository = repo::open(&config, Open::OrInit, &secrets).await?;
        // No lease epoch until the failover driver records one.
        let epoch = None;
        backup_physical(
            &repository,
            site_config.database.expose(),
            &options,
            epoch,
            time::OffsetDateTime::now_utc(),
            Some(&|event| match event {
                Event::PhysicalBackup(step) => progress.step(step.as_str()),
                other => progress.event(other),
            }),
        )
        .await
        .map_err(|e| physical_failure(&e, &global.config, &secrets))
    });
    progress.finish();
    let backup = result?;

    let summary = PhysicalSummary {
        snapshot: SnapshotSummary::from_manifest(&backup.manifest),
        source: backup.meta.source.clone(),
        server_version: backup.meta.server_version.clone(),
        timeline: backup.meta.timeline,
        start_lsn: backup.meta.start_lsn.to_string(),
        stop_lsn: backup.meta.stop_lsn.to_string(),
        start_wal: backup.meta.start_wal.clone(),
        stop_wal: backup.meta.stop_wal.clone(),
        seconds: started.elapsed().as_secs_f64(),
    };
    if global.json {
        output::write_json(&mut io::stdout().lock(), &summary)?;
    } else {
        println!(
            "snapshot {}: physical, {} ({} stored), WAL {} to {} (timeline {}), in {}",
            summary.snapshot.id,
            output::bytes(summary.snapshot.size.unwrap_or(0)),
            output::bytes(summary.snapshot.stored_size.unwrap_or(0)),
            summary.start_lsn,
            summary.stop_lsn,
            summary.timeline,
            output::duration(Duration::from_secs_f64(summary.seconds)),
        );
    }
    Ok(ExitCode::from(EXIT_OK))
}

/// A physical backup's error; a server that does not archive also gets
/// the settings to add, with this binary and configuration filled in.
fn physical_failure(
    error: &warmspare_snapshot::Error,
    config: &Path,
    secrets: &[String],
) -> anyhow::Error {
    let failure = repo::failure(error, secrets);
    if !matches!(
        error.root(),
        warmspare_snapshot::Error::ArchiveModeOff { .. }
    ) {
        return failure;
    }
    anyhow::anyhow!("{failure}; {}", archive_settings(config))
}

/// The server settings that archive WAL into this repository, as lines of
/// postgresql.conf (joined by "; " for one error line).
fn archive_settings(config: &Path) -> String {
    let exe = std::env::current_exe().unwrap_or_else(|_| "warmspare".into());
    let config = std::path::absolute(config).unwrap_or_else(|_| config.to_path_buf());
    let command = wal::archive_command(&exe, &config);
    format!(
        "set in postgresql.conf: wal_level = replica; archive_mode = on; \
         archive_command = '{}'; then restart the server",
        command.replace('\'', "''")
    )
}

fn run_artifacts(global: &Global, args: &ArtifactArgs) -> anyhow::Result<ExitCode> {
    let config = super::load_config(global)?;
    let (site, _) = repo::current_site(&config)?;
    let secrets = repo::secrets(&config, []);
    let store = open_site(&config, site, Side::Source, &secrets)?;
    let options = args.options().with_source_id(store.display_url());
    eprintln!("backup: site {site}, artifacts {}", store.display_url());
    let progress = Arc::new(ArtifactProgress::new("backup"));
    let result = super::runtime()?.block_on(async {
        let repository = repo::open(&config, Open::OrInit, &secrets).await?;
        let previous =
            previous_inventory(&repository, options.source_id.as_deref(), PREVIOUS_SEARCH)
                .await
                .map_err(|e| artifact_failure(&e, &secrets))?;
        let p = Arc::clone(&progress);
        backup_artifacts(
            store.object_store(),
            &repository,
            previous.as_ref(),
            time::OffsetDateTime::now_utc(),
            &options,
            move |e: &SyncEvent<'_>| p.event(e),
        )
        .await
        .map_err(|e| artifact_failure(&e, &secrets))
    });
    progress.finish();
    let summary = ArtifactSummary::new(&result?);
    if global.json {
        output::write_json(&mut io::stdout().lock(), &summary)?;
    } else {
        println!("{}", summary.line());
    }
    Ok(ExitCode::from(EXIT_OK))
}

fn run_point(global: &Global, db: &DbArgs, artifacts: &ArtifactArgs) -> anyhow::Result<ExitCode> {
    let config = super::load_config(global)?;
    let (site, site_config) = repo::current_site(&config)?;
    let secrets = repo::secrets(&config, []);
    let store = match site_config.artifacts {
        Some(_) => Some(open_site(&config, site, Side::Source, &secrets)?),
        None => None,
    };
    let mut artifact_options = artifacts.options();
    if let Some(store) = &store {
        artifact_options = artifact_options.with_source_id(store.display_url());
    }
    eprintln!(
        "backup: recovery point of site {site}: database {}, artifacts {}",
        site_config.database.redacted(),
        store
            .as_ref()
            .map_or_else(|| "none configured".to_owned(), Store::display_url)
    );
    let request = PointRequest {
        database_url: site_config.database.expose().to_owned(),
        database: db.options(),
        artifacts: store.as_ref().map(|s| Arc::clone(s.object_store())),
        artifact_options,
        // No lease epoch until the failover driver records one.
        epoch: None,
        meta: serde_json::json!({ "site": site }),
    };
    let db_progress = Arc::new(Progress::new("backup"));
    let artifact_progress = Arc::new(ArtifactProgress::new("backup"));
    let result = super::runtime()?.block_on({
        let (dp, ap) = (Arc::clone(&db_progress), Arc::clone(&artifact_progress));
        let secrets = secrets.clone();
        let config = &config;
        async move {
            let repository = repo::open(config, Open::OrInit, &secrets).await?;
            take_recovery_point(
                &repository,
                &request,
                time::OffsetDateTime::now_utc(),
                move |event| match event {
                    PointEvent::Database(e) => dp.event(e),
                    PointEvent::WalPosition(lsn) => {
                        dp.finish();
                        eprintln!("backup: WAL position {lsn}");
                        eprintln!("backup: artifacts");
                    }
                    PointEvent::Artifacts(e) => ap.event(e),
                    PointEvent::Commit => {
                        ap.finish();
                        eprintln!("backup: record the point");
                    }
                    _ => {}
                },
            )
            .await
            .map_err(|e| match e {
                warmspare_replicate::Error::Snapshot(e) => repo::failure(&e, &secrets),
                other => artifact_failure(&other, &secrets),
            })
        }
    });
    db_progress.finish();
    artifact_progress.finish();
    let taken = result?;

    let point = &taken.point;
    let summary = PointSummary {
        id: point.id.to_string(),
        site: site.to_owned(),
        wal_position: point.wal_position.clone(),
        started: output::time(point.started),
        finished: output::time(point.finished),
        snapshot: SnapshotSummary::from_manifest(&taken.snapshot.manifest),
        artifacts: taken.artifacts.as_ref().map(ArtifactSummary::new),
    };
    if global.json {
        output::write_json(&mut io::stdout().lock(), &summary)?;
    } else {
        println!(
            "recovery point {}: snapshot {} ({}), {}, WAL position {}",
            summary.id,
            summary.snapshot.id,
            output::bytes(summary.snapshot.size.unwrap_or(0)),
            summary
                .artifacts
                .as_ref()
                .map_or_else(|| "no artifact store".to_owned(), ArtifactSummary::line),
            summary.wal_position.as_deref().unwrap_or("-"),
        );
    }
    Ok(ExitCode::from(EXIT_OK))
}
