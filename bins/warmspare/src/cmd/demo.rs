//! `warmspare demo`: the whole loop on one machine.
//!
//! Under a temporary directory: a primary and a spare PostgreSQL cluster
//! (`warmspare-pgcluster`), two filesystem artifact stores, a filesystem
//! repository and a config file naming them. Sample data goes into the
//! primary (a `packages` table whose rows name `.hart`-like artifacts by
//! key and SHA-256); then, through the library APIs: a recovery point, the
//! artifact sync to the spare, the restore into the spare, a verify, and a
//! check that the spare holds exactly the primary's rows and artifacts.
//! Last, when this build has the failover driver, the primary is killed and
//! the spare's driver promotes it; RTO and RPO are measured, never assumed.

mod failover;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, bail};
use rand::{Rng as _, RngCore as _};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;
use warmspare_pgcluster::Cluster;
use warmspare_replicate::object_store::ObjectStore;
use warmspare_replicate::{
    DigestAlgorithm, ExpectedArtifact, PointRequest, SyncOptions, reconcile, sync,
    take_recovery_point,
};
use warmspare_snapshot::{LogicalBackupOptions, RestoreOptions, catalog, restore_logical};
use warmspare_store::{Repository, Store, StoreConfig};

use super::scratch::{StepRecord, Steps, dir_watchdog, server_bin_dir};
use crate::Global;

/// The sample service's database.
const DATABASE: &str = "builder";
/// How many sample packages (rows and artifacts) the demo loads.
const DEFAULT_PACKAGES: u32 = 300;

/// Arguments of `warmspare demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Leave the clusters (running), stores, repository and config file in
    /// place, and print where they are.
    #[arg(long)]
    keep: bool,

    /// How many sample packages to load.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_PACKAGES,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    packages: u32,
}

/// The summary printed with `--json`.
#[derive(Debug, Default, Serialize)]
struct Summary {
    ok: bool,
    steps: Vec<StepRecord>,
    packages: Counts,
    recovery_point: Option<String>,
    snapshot: Option<String>,
    inventory: Option<String>,
    failover: Option<failover::Outcome>,
    dir: PathBuf,
    config: PathBuf,
    kept: bool,
    removed: bool,
    seconds: f64,
}

/// Rows and artifacts on each side.
#[derive(Debug, Default, Serialize)]
struct Counts {
    primary_rows: u64,
    spare_rows: u64,
    primary_artifacts: u64,
    spare_artifacts: u64,
    artifact_bytes: u64,
}

/// Everything the demo created; dropping it stops the clusters and removes
/// the directory (unless kept).
///
/// Fields drop in order: the clusters first (each one's watchdog stops its
/// server and removes its directory), then the directory, then the
/// watchdog that removes the directory should this process die without
/// dropping `Lab` (Ctrl-C, SIGKILL). Removing the directory under a running
/// server would leave the server running.
struct Lab {
    primary: Option<Cluster>,
    spare: Option<Cluster>,
    dir: tempfile::TempDir,
    dir_watchdog: warmspare_pgcluster::Watchdog,
    bin_dir: PathBuf,
    primary_store: Arc<dyn ObjectStore>,
    spare_store: Arc<dyn ObjectStore>,
    repo_url: String,
    config_path: PathBuf,
    failover: warmspare_failover::FailoverConfig,
}

impl Lab {
    fn primary(&self) -> anyhow::Result<&Cluster> {
        self.primary.as_ref().context("the primary cluster is gone")
    }

    fn spare(&self) -> anyhow::Result<&Cluster> {
        self.spare.as_ref().context("the spare cluster is gone")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// One sample package: a row and its artifact.
struct Package {
    origin: &'static str,
    name: &'static str,
    version: String,
    release: String,
    checksum: String,
}

impl Package {
    fn ident(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.origin, self.name, self.version, self.release
        )
    }

    fn key(&self) -> String {
        format!(
            "{}/{}-{}-{}-{}-x86_64-linux.hart",
            self.ident(),
            self.origin,
            self.name,
            self.version,
            self.release
        )
    }
}

/// The artifact key a `packages` row names, in SQL (same as
/// [`Package::key`]).
const KEY_SQL: &str = "ident || '/' || origin || '-' || name || '-' || version || '-' || release \
                       || '-x86_64-linux.hart'";

pub(crate) fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let bin_dir = server_bin_dir("warmspare demo", None)?;
    let started = Instant::now();
    let runtime = super::runtime()?;
    let mut summary = Summary::default();
    let result = runtime.block_on(demo(&bin_dir, &args, &mut summary));
    summary.ok = result.is_ok() && summary.steps.iter().all(|s| s.ok);
    summary.seconds = started.elapsed().as_secs_f64();
    if let Err(error) = &result {
        eprintln!("demo stopped: {error:#}");
    }
    eprintln!(
        "{} in {:.1}s",
        if summary.ok {
            "demo finished"
        } else {
            "demo FAILED"
        },
        summary.seconds
    );
    if global.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    Ok(if summary.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::EXIT_FAILED)
    })
}

/// The steps; fills `summary` as it goes, so that a failure still reports
/// what happened before it.
async fn demo(bin_dir: &Path, args: &Args, summary: &mut Summary) -> anyhow::Result<()> {
    let mut steps = Steps {
        records: Vec::new(),
        total: 8 + usize::from(failover::AVAILABLE),
    };
    let outcome = demo_steps(bin_dir, args, summary, &mut steps).await;
    summary.steps = steps.records;
    outcome
}

async fn demo_steps(
    bin_dir: &Path,
    args: &Args,
    summary: &mut Summary,
    steps: &mut Steps,
) -> anyhow::Result<()> {
    let lab = steps
        .run(
            "setup",
            "primary and spare: two PostgreSQL clusters, two artifact stores, a repository",
            setup(bin_dir),
        )
        .await?;
    summary.dir = lab.dir.path().to_owned();
    summary.config = lab.config_path.clone();
    let mut lab = Some(lab);
    let result = run_on(lab.as_mut().context("lab")?, args, summary, steps).await;

    let lab = lab.take().context("lab")?;
    let dir = lab.dir.path().to_owned();
    if args.keep {
        keep(lab);
        summary.kept = true;
    } else {
        let started = Instant::now();
        drop(lab);
        summary.removed = !dir.exists();
        eprintln!(
            "cleaned up {} in {:.2}s",
            dir.display(),
            started.elapsed().as_secs_f64()
        );
    }
    result
}

async fn run_on(
    lab: &mut Lab,
    args: &Args,
    summary: &mut Summary,
    steps: &mut Steps,
) -> anyhow::Result<()> {
    let packages = steps
        .run(
            "load",
            "loading sample data into the primary: package rows and their artifacts",
            load(lab, args.packages),
        )
        .await?;
    summary.packages.primary_rows = u64::from(args.packages);
    summary.packages.primary_artifacts = packages.0;
    summary.packages.artifact_bytes = packages.1;

    let repo = Repository::open(open_store(&lab.repo_url)?).await?;
    let point = steps
        .run(
            "backup",
            "recovery point: logical snapshot of the primary + artifact inventory",
            backup(lab, &repo),
        )
        .await?;
    summary.recovery_point = Some(point.point_id.clone());
    summary.snapshot = Some(point.snapshot_id.to_string());
    summary.inventory = point.inventory_id.clone();

    steps
        .run("sync", "artifact sync primary -> spare", artifact_sync(lab))
        .await?;
    steps
        .run(
            "restore",
            "restore of the snapshot into the spare (staging database, checked, swapped in)",
            restore(lab, &repo, &point.snapshot_id),
        )
        .await?;
    steps
        .run(
            "verify",
            "verify: re-read the snapshot from the repository, check every digest",
            verify(&repo, &point.snapshot_id),
        )
        .await?;
    let rows = steps
        .run(
            "compare_rows",
            "the spare's rows equal the primary's",
            compare_rows(lab),
        )
        .await?;
    summary.packages.spare_rows = rows;
    summary.packages.spare_artifacts = steps
        .run(
            "compare_artifacts",
            "every row on the spare names an artifact in the spare's store with its SHA-256",
            compare_artifacts(lab, rows),
        )
        .await?;

    if failover::AVAILABLE {
        let outcome = steps
            .run(
                "failover",
                "failover: kill -9 the primary, the spare's driver takes the lease and promotes",
                failover::run(lab, point.snapshot_started),
            )
            .await?;
        summary.failover = Some(outcome);
    } else {
        eprintln!("failover: not available in this build");
        summary.failover = Some(failover::Outcome::not_available());
    }
    Ok(())
}

fn open_store(url: &str) -> anyhow::Result<Store> {
    Store::open(&StoreConfig::new(url)).with_context(|| format!("cannot open {url}"))
}

fn file_url(path: &Path) -> String {
    format!("file://{}", path.display())
}

async fn setup(bin_dir: &Path) -> anyhow::Result<(Lab, String)> {
    let dir = tempfile::Builder::new()
        .prefix("warmspare-demo-")
        .tempdir()
        .context("cannot create the demo directory")?;
    // The clusters run as `postgres` when we are root: it must reach them.
    warmspare_pgcluster::shared_parent_dir(dir.path())?;
    let dir_watchdog = dir_watchdog(dir.path())?;
    let (primary, spare) = tokio::join!(
        Cluster::builder(bin_dir, dir.path())
            .prefix("primary-db-")
            .start(),
        Cluster::builder(bin_dir, dir.path())
            .prefix("spare-db-")
            .start(),
    );
    let (primary, spare) = (
        primary.context("cannot start the primary cluster")?,
        spare.context("cannot start the spare cluster")?,
    );
    let mut paths = Vec::new();
    for name in ["primary-artifacts", "spare-artifacts", "repository"] {
        let path = dir.path().join(name);
        std::fs::create_dir(&path).with_context(|| format!("cannot create {}", path.display()))?;
        paths.push(path);
    }
    let primary_store = open_store(&file_url(&paths[0]))?.object_store().clone();
    let spare_store = open_store(&file_url(&paths[1]))?.object_store().clone();
    let repo_url = file_url(&paths[2]);
    Repository::init(open_store(&repo_url)?, OffsetDateTime::now_utc()).await?;

    let config_path = dir.path().join("warmspare.toml");
    let config = config_text(&primary, &spare, &paths);
    // The file must be one the other commands accept; the failover step
    // runs with its [failover] section.
    let parsed = warmspare_agent::Config::from_toml_str(&config, config_path.display().to_string())
        .context("the demo wrote a config that does not validate")?;
    std::fs::write(&config_path, config)
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    let detail = format!(
        "primary on port {}, spare on port {}, under {}",
        primary.port(),
        spare.port(),
        dir.path().display()
    );
    Ok((
        Lab {
            primary: Some(primary),
            spare: Some(spare),
            dir,
            dir_watchdog,
            bin_dir: bin_dir.to_owned(),
            primary_store,
            spare_store,
            repo_url,
            config_path,
            failover: parsed.failover,
        },
        detail,
    ))
}

/// The config file for the demo's two sites, for reruns with `--keep`.
fn config_text(primary: &Cluster, spare: &Cluster, paths: &[PathBuf]) -> String {
    format!(
        "# Written by `warmspare demo`: two sites on this machine.\n\
         # Try: warmspare --config {{this file}} list\n\
         site = \"primary\"\n\n\
         [repository]\n\
         url = \"{repo}\"\n\n\
         [sites.primary]\n\
         database = \"{primary_db}\"\n\
         artifacts = \"{primary_art}\"\n\
         mode = \"logical-restore\"\n\n\
         [sites.spare]\n\
         database = \"{spare_db}\"\n\
         artifacts = \"{spare_art}\"\n\
         mode = \"logical-restore\"\n\n\
         # The timings the demo's failover ran with (fast, for one machine).\n\
         [failover]\n\
         mode = \"automatic\"\n\
         interval = \"200ms\"\n\
         timeout = \"1s\"\n\
         unhealthy_threshold = 2\n\
         healthy_threshold = 1\n\
         lease_ttl = \"3s\"\n",
        repo = file_url(&paths[2]),
        primary_db = primary.url_for(DATABASE),
        primary_art = file_url(&paths[0]),
        spare_db = spare.url_for(DATABASE),
        spare_art = file_url(&paths[1]),
    )
}

/// Creates the `packages` table and `count` rows on the primary, and the
/// artifacts they name in the primary's store. Returns (artifacts, bytes).
async fn load(lab: &Lab, count: u32) -> anyhow::Result<((u64, u64), String)> {
    const ORIGINS: [&str; 4] = ["core", "habitat", "chef", "acme"];
    const NAMES: [&str; 12] = [
        "nginx",
        "openssl",
        "glibc",
        "zlib",
        "redis",
        "postgresql",
        "ruby",
        "node",
        "curl",
        "git",
        "busybox",
        "jq",
    ];
    let primary = lab.primary()?;
    primary.create_database(DATABASE).await?;
    primary
        .psql_in(
            DATABASE,
            "CREATE TABLE packages (\
               id bigserial PRIMARY KEY, \
               origin text NOT NULL, name text NOT NULL, version text NOT NULL, \
               release text NOT NULL, ident text NOT NULL UNIQUE, checksum text NOT NULL, \
               created_at timestamptz NOT NULL DEFAULT now())",
        )
        .await?;
    let root = lab.path("primary-artifacts");
    let mut rng = rand::rng();
    let mut packages = Vec::new();
    let mut bytes = 0u64;
    for i in 0..count {
        let mut body = vec![0u8; rng.random_range(1024..32 * 1024)];
        rng.fill_bytes(&mut body);
        let package = Package {
            origin: ORIGINS[(i as usize) % ORIGINS.len()],
            name: NAMES[(i as usize / ORIGINS.len()) % NAMES.len()],
            version: format!("{}.{}.{}", 1 + i % 3, i % 10, i % 7),
            release: format!("20261122{:06}", 100_000 + i),
            checksum: hex::encode(Sha256::digest(&body)),
        };
        let path = root.join(package.key());
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        tokio::fs::write(&path, &body)
            .await
            .with_context(|| format!("cannot write {}", path.display()))?;
        bytes += body.len() as u64;
        packages.push(package);
    }
    for batch in packages.chunks(100) {
        let values: Vec<String> = batch
            .iter()
            .map(|p| {
                format!(
                    "('{}','{}','{}','{}','{}','{}')",
                    p.origin,
                    p.name,
                    p.version,
                    p.release,
                    p.ident(),
                    p.checksum
                )
            })
            .collect();
        primary
            .psql_in(
                DATABASE,
                &format!(
                    "INSERT INTO packages (origin, name, version, release, ident, checksum) \
                     VALUES {}",
                    values.join(",")
                ),
            )
            .await?;
    }
    let n = packages.len() as u64;
    Ok((
        (n, bytes),
        format!(
            "{n} rows in {DATABASE}.packages, {n} artifacts ({})",
            human_bytes(bytes)
        ),
    ))
}

/// What the recovery point step produced.
struct PointTaken {
    point_id: String,
    snapshot_id: warmspare_store::SnapshotId,
    inventory_id: Option<String>,
    /// When the snapshot was taken: the age of the spare's data is measured
    /// from here.
    snapshot_started: OffsetDateTime,
}

async fn backup(lab: &Lab, repo: &Repository) -> anyhow::Result<(PointTaken, String)> {
    let request = PointRequest {
        database_url: lab.primary()?.url_for(DATABASE),
        database: LogicalBackupOptions::default().with_bin_dir(&lab.bin_dir),
        artifacts: Some(Arc::clone(&lab.primary_store)),
        artifact_options: SyncOptions::default().with_source_id("primary"),
        epoch: None,
        meta: serde_json::json!({ "site": "primary", "by": "warmspare demo" }),
    };
    let now = OffsetDateTime::now_utc();
    let taken = take_recovery_point(repo, &request, now, |_| {}).await?;
    let artifacts = taken
        .artifacts
        .as_ref()
        .context("the recovery point has no artifact half")?;
    let detail = format!(
        "point {}: snapshot {} ({}), inventory {} ({} blobs stored, {})",
        taken.point.id,
        taken.snapshot.manifest.id,
        taken
            .snapshot
            .meta
            .row_counts
            .as_ref()
            .map_or_else(|| "rows not counted".to_owned(), |r| rows_text(r)),
        artifacts.inventory.id,
        artifacts.stored,
        human_bytes(artifacts.bytes),
    );
    Ok((
        PointTaken {
            point_id: taken.point.id.to_string(),
            snapshot_id: taken.snapshot.manifest.id.clone(),
            inventory_id: Some(artifacts.inventory.id.to_string()),
            snapshot_started: now,
        },
        detail,
    ))
}

fn rows_text(rows: &[warmspare_snapshot::TableRows]) -> String {
    let total: u64 = rows.iter().map(|t| t.rows).sum();
    format!("{} table(s), {total} rows", rows.len())
}

async fn artifact_sync(lab: &Lab) -> anyhow::Result<((), String)> {
    let options = SyncOptions::default().with_source_id("primary");
    let report = sync(&lab.primary_store, &lab.spare_store, &options, |_| {}).await?;
    if !report.is_success() {
        bail!(
            "sync failed: {} objects failed ({})",
            report.failed,
            report
                .errors
                .first()
                .map(ToString::to_string)
                .unwrap_or_default()
        );
    }
    Ok((
        (),
        format!(
            "{} copied ({}), {} already there",
            report.copied,
            human_bytes(report.bytes),
            report.skipped
        ),
    ))
}

async fn restore(
    lab: &Lab,
    repo: &Repository,
    id: &warmspare_store::SnapshotId,
) -> anyhow::Result<((), String)> {
    let options = RestoreOptions::default().with_bin_dir(&lab.bin_dir);
    let target = lab.spare()?.url_for(DATABASE);
    let report = restore_logical(repo, id, &target, None, &options, None).await?;
    Ok((
        (),
        format!(
            "snapshot {} restored into {} on the spare ({} table(s) row-count checked)",
            report.id,
            report.database,
            report.tables_checked.unwrap_or(0)
        ),
    ))
}

async fn verify(
    repo: &Repository,
    id: &warmspare_store::SnapshotId,
) -> anyhow::Result<((), String)> {
    let report = catalog::verify(repo, id).await?;
    if !report.is_ok() {
        bail!(
            "{} of the snapshot's files failed verification: {}",
            report.failures.len(),
            report
                .failures
                .first()
                .map(ToString::to_string)
                .unwrap_or_default()
        );
    }
    Ok((
        (),
        format!(
            "{} files, {} verified",
            report.files,
            human_bytes(report.bytes)
        ),
    ))
}

/// Count and digest of the `packages` rows, as one line of `psql` output.
const ROWS_SQL: &str = "SELECT count(*) || ' ' || coalesce(md5(string_agg(\
     ident || ':' || checksum, ',' ORDER BY ident)), '-') FROM packages";

async fn compare_rows(lab: &Lab) -> anyhow::Result<(u64, String)> {
    let primary = lab.primary()?.psql_in(DATABASE, ROWS_SQL).await?;
    let spare = lab.spare()?.psql_in(DATABASE, ROWS_SQL).await?;
    if primary != spare {
        bail!("primary has {primary:?}, spare has {spare:?} (count, md5 of ident:checksum)");
    }
    let rows: u64 = spare
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .context("unexpected psql output")?;
    Ok((rows, format!("{rows} rows, digest {spare}")))
}

/// Returns how many artifacts the spare's store holds.
async fn compare_artifacts(lab: &Lab, rows: u64) -> anyhow::Result<(u64, String)> {
    let listing = lab
        .spare()?
        .psql_in(
            DATABASE,
            &format!("SELECT {KEY_SQL} || ' ' || checksum FROM packages"),
        )
        .await?;
    let expected: Vec<ExpectedArtifact> = listing
        .lines()
        .filter_map(|line| line.split_once(' '))
        .map(|(key, checksum)| ExpectedArtifact {
            key: key.to_owned(),
            checksum: Some(checksum.to_owned()),
        })
        .collect();
    if expected.len() as u64 != rows {
        bail!("read {} rows back, expected {rows}", expected.len());
    }
    let report = reconcile(
        &lab.spare_store,
        expected,
        DigestAlgorithm::Sha256,
        true,
        &SyncOptions::default(),
    )
    .await?;
    if !report.is_consistent() || report.unnamed_count > 0 {
        bail!(
            "spare store: {} missing, {} with another SHA-256, {} not named by any row",
            report.missing_count,
            report.mismatched_count,
            report.unnamed_count
        );
    }
    Ok((
        report.listed,
        format!(
            "{} artifacts listed, {} digests checked, none missing or extra",
            report.listed, report.verified
        ),
    ))
}

/// `--keep`: leave everything in place and say where it is.
fn keep(mut lab: Lab) {
    let mut lines = Vec::new();
    for (site, cluster) in [("primary", lab.primary.take()), ("spare", lab.spare.take())] {
        let Some(cluster) = cluster else { continue };
        let running = cluster.is_running();
        let url = cluster.url_for(DATABASE);
        let run_as = cluster.run_as().map(str::to_owned);
        let pg_ctl = cluster.bin_dir().join("pg_ctl");
        let root = cluster.detach();
        let stop = format!(
            "{}{} stop -D {}",
            run_as
                .map(|u| format!("runuser -u {u} -- "))
                .unwrap_or_default(),
            pg_ctl.display(),
            root.join("data").display()
        );
        if running {
            lines.push(format!("  {site} database: {url}\n    stop it: {stop}"));
        } else {
            lines.push(format!(
                "  {site} database (stopped): {}",
                root.join("data").display()
            ));
        }
    }
    lab.dir_watchdog.disarm();
    let dir = lab.dir.keep();
    eprintln!("kept everything under {}:", dir.display());
    for line in lines {
        eprintln!("{line}");
    }
    eprintln!(
        "  artifacts: {} and {}\n  repository: {}\n  config: {}\n  try: warmspare --config {} list",
        dir.join("primary-artifacts").display(),
        dir.join("spare-artifacts").display(),
        dir.join("repository").display(),
        lab.config_path.display(),
        lab.config_path.display()
    );
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_the_sql() {
        let p = Package {
            origin: "core",
            name: "nginx",
            version: "1.2.3".into(),
            release: "20261122100000".into(),
            checksum: String::new(),
        };
        assert_eq!(
            p.key(),
            "core/nginx/1.2.3/20261122100000/core-nginx-1.2.3-20261122100000-x86_64-linux.hart"
        );
        assert!(KEY_SQL.contains("-x86_64-linux.hart"));
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(12), "12 B");
    }
}
