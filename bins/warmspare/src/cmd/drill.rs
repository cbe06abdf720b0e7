//! `warmspare drill [POINT|latest] [--keep]`: rehearse a cold recovery
//! from the configured repository into scratch targets, and measure it.
//!
//! The drill picks a recovery point (the newest, or the one named; with no
//! points, the newest logical snapshot, else the newest physical one),
//! starts a throwaway PostgreSQL cluster (`warmspare-pgcluster`) under a
//! temporary directory, restores the database half into it (row counts
//! checked against the manifest; a physical snapshot is laid out as a data
//! directory, started with `archive_mode = off` and recovered from the WAL
//! archive until it promotes),
//! restores the artifact inventory into a temporary `file://` store and
//! re-reads every artifact against its SHA-256. It reports how long each
//! half took (the measured RTO of a cold recovery) and how old the
//! recovered data is (the RPO if the primary died now), then removes
//! everything unless `--keep`.
//!
//! Only the repository is read: the drill never connects to a site's
//! database nor touches a site's artifact store.

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use warmspare_pgcluster::Cluster;
use warmspare_replicate::object_store::ObjectStore;
use warmspare_replicate::{
    DigestAlgorithm, ExpectedArtifact, SyncOptions, list_points, read_inventory, read_point,
    reconcile, restore_artifacts_to,
};
use warmspare_snapshot::physical::{PhysicalRestoreOptions, RecoveryTarget};
use warmspare_snapshot::{
    Event, LogicalMeta, RestoreOptions, catalog, restore_logical, restore_physical, wal,
};
use warmspare_store::{Manifest, Repository, SnapshotId, SnapshotKind, Store, StoreConfig};

use super::scratch::{StepRecord, Steps, dir_watchdog, server_bin_dir};
use crate::progress::Progress;
use crate::repo::{self, Open, PgTools};
use crate::{EXIT_FAILED, EXIT_OK, Global, output};

/// Arguments of `warmspare drill`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// What to recover: a recovery point's id, a snapshot's id, or "latest"
    /// (the newest recovery point; with none, the newest logical snapshot,
    /// else the newest physical one).
    #[arg(value_name = "POINT|latest", default_value = "latest")]
    point: String,

    /// Leave the scratch cluster (running) and the scratch store in place,
    /// and print where they are.
    #[arg(long)]
    keep: bool,

    /// Physical snapshots: how long the WAL replay up to the promotion may
    /// take.
    #[arg(long, value_name = "DURATION", default_value = "10m",
          value_parser = super::parse_duration)]
    recovery_timeout: Duration,

    #[command(flatten)]
    tools: PgTools,
}

/// What the drill recovers.
#[derive(Debug)]
struct Target {
    point: Option<SnapshotId>,
    snapshot: Option<Manifest>,
    inventory: Option<SnapshotId>,
    /// When the recovered data was taken (the point's or snapshot's end).
    finished: OffsetDateTime,
}

/// The summary printed with `--json`.
#[derive(Debug, Default, Serialize)]
struct Summary {
    /// Every step passed.
    ok: bool,
    /// The first step that failed.
    failed_step: Option<&'static str>,
    /// Why it failed.
    error: Option<String>,
    point: Option<String>,
    snapshot: Option<String>,
    inventory: Option<String>,
    /// When the recovered data was taken (RFC 3339).
    data_finished: Option<String>,
    /// Now minus that: the data a recovery now would lose (the RPO).
    data_age_seconds: Option<f64>,
    database: Option<DatabaseHalf>,
    artifacts: Option<ArtifactHalf>,
    /// Starting the scratch cluster.
    cluster_seconds: f64,
    /// Cluster, database half and artifact half: the measured RTO of a cold
    /// recovery (cleanup excluded).
    rto_seconds: f64,
    steps: Vec<StepRecord>,
    /// The scratch directory.
    dir: Option<PathBuf>,
    kept: bool,
    removed: bool,
}

/// The database half.
#[derive(Debug, Serialize)]
struct DatabaseHalf {
    database: String,
    /// Logical or physical.
    kind: &'static str,
    /// Tables whose row counts were checked against the manifest.
    tables_checked: Option<usize>,
    /// The rows those tables hold.
    rows: Option<u64>,
    bytes: u64,
    seconds: f64,
    /// Physical snapshots: the commit time of the last transaction the WAL
    /// replay applied (RFC 3339), when it applied any.
    #[serde(skip_serializing_if = "Option::is_none")]
    replayed_until: Option<String>,
    /// The same, as a time: it moves the data age.
    #[serde(skip)]
    replayed_at: Option<OffsetDateTime>,
}

/// The artifact half.
#[derive(Debug, Serialize)]
struct ArtifactHalf {
    objects: u64,
    bytes: u64,
    /// Artifacts re-read from the scratch store and matched to their SHA-256.
    verified: u64,
    /// Restore and verification.
    seconds: f64,
}

/// The scratch targets; dropping it stops the cluster and removes the
/// directory. Fields drop in order: the cluster first, then the directory,
/// then the watchdog that removes the directory should this process die.
struct Scratch {
    cluster: Option<Cluster>,
    dir: tempfile::TempDir,
    watchdog: warmspare_pgcluster::Watchdog,
}

pub(crate) fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let config = super::load_config(global)?;
    let secrets = repo::secrets(&config, []);
    let bin_dir = server_bin_dir("warmspare drill", args.tools.pg_bin_dir.as_deref())?;
    // A physical drill's restore_command runs this binary with this file,
    // from the data directory: absolute paths only.
    let restore_command = wal::restore_command(
        &std::env::current_exe().context("cannot find this program's own path")?,
        &std::path::absolute(&global.config)
            .with_context(|| format!("cannot make {} absolute", global.config.display()))?,
    );
    let runtime = super::runtime()?;
    let mut summary = Summary::default();
    let result = runtime.block_on(async {
        let repository = repo::open(&config, Open::Existing, &secrets).await?;
        let target = select(&repository, &args.point, &secrets)
            .await
            .context("drill: select")?;
        let ctx = Ctx {
            repo: &repository,
            bin_dir: &bin_dir,
            secrets: &secrets,
            restore_command: &restore_command,
            recovery_timeout: args.recovery_timeout,
        };
        drill(&ctx, &target, args.keep, &mut summary).await;
        anyhow::Ok(())
    });
    result?;
    if global.json {
        output::write_json(&mut io::stdout().lock(), &summary)?;
    } else {
        print_human(&summary);
    }
    if summary.ok {
        eprintln!("drill: rehearsal succeeded");
        Ok(ExitCode::from(EXIT_OK))
    } else {
        eprintln!(
            "drill: FAILED at step {}: {}",
            summary.failed_step.unwrap_or("?"),
            summary.error.as_deref().unwrap_or("?")
        );
        Ok(ExitCode::from(EXIT_FAILED))
    }
}

/// Resolves `spec` to what the drill recovers.
async fn select(repo: &Repository, spec: &str, secrets: &[String]) -> anyhow::Result<Target> {
    let replicate = |e: warmspare_replicate::Error| super::sync::failure(&e, secrets);
    let point_id = if spec == catalog::LATEST {
        list_points(repo)
            .await
            .map_err(replicate)?
            .into_iter()
            .next()
    } else {
        match SnapshotId::parse(spec) {
            Ok(id) => match read_point(repo, &id).await {
                Ok(_) => Some(id),
                Err(e) if e.is_not_found() => None,
                Err(e) => return Err(replicate(e)),
            },
            Err(_) => None,
        }
    };
    if let Some(id) = point_id {
        let point = read_point(repo, &id).await.map_err(replicate)?;
        let snapshot = match &point.snapshot {
            Some(s) => Some(
                catalog::read_manifest(repo, s)
                    .await
                    .map_err(|e| repo::failure(&e, secrets))?,
            ),
            None => None,
        };
        return Ok(Target {
            point: Some(point.id),
            snapshot,
            inventory: point.inventory,
            finished: point.finished,
        });
    }
    // No point: a snapshot; `latest` prefers a logical one (no WAL replay).
    let kind = (spec == catalog::LATEST).then_some(SnapshotKind::Logical);
    let manifest = match catalog::resolve(repo, spec, kind).await {
        Err(e) if matches!(e.root(), warmspare_snapshot::Error::NoSnapshots { .. }) => {
            catalog::resolve(repo, spec, None).await
        }
        other => other,
    }
    .map_err(|e| repo::failure(&e, secrets))?;
    Ok(Target {
        point: None,
        finished: manifest.finished,
        snapshot: Some(manifest),
        inventory: None,
    })
}

/// What every step needs.
struct Ctx<'a> {
    repo: &'a Repository,
    bin_dir: &'a Path,
    secrets: &'a [String],
    restore_command: &'a str,
    recovery_timeout: Duration,
}

/// The steps; every outcome lands in `summary`.
async fn drill(ctx: &Ctx<'_>, target: &Target, keep_all: bool, summary: &mut Summary) {
    let (repo, secrets) = (ctx.repo, ctx.secrets);
    let now = OffsetDateTime::now_utc();
    summary.point = target.point.as_ref().map(ToString::to_string);
    summary.snapshot = target.snapshot.as_ref().map(|m| m.id.to_string());
    summary.inventory = target.inventory.as_ref().map(ToString::to_string);
    summary.data_finished = target.finished.format(&Rfc3339).ok();
    summary.data_age_seconds = Some((now - target.finished).as_seconds_f64());
    eprintln!(
        "drill: recovering {} (data from {}, {} old) into scratch targets",
        match (&target.point, &target.snapshot) {
            (Some(p), _) => format!("recovery point {p}"),
            (None, Some(m)) => format!("snapshot {}", m.id),
            (None, None) => "nothing".into(),
        },
        output::time(target.finished),
        output::duration((now - target.finished).try_into().unwrap_or_default()),
    );
    let mut steps = Steps {
        records: Vec::new(),
        total: 1
            + usize::from(target.snapshot.is_some())
            + 2 * usize::from(target.inventory.is_some()),
    };
    let started = Instant::now();
    let scratch = steps
        .run(
            "scratch",
            "scratch targets: a throwaway PostgreSQL cluster and a temporary store",
            setup(
                ctx.bin_dir,
                target
                    .snapshot
                    .as_ref()
                    .is_some_and(|m| m.kind == SnapshotKind::Logical),
            ),
        )
        .await;
    summary.cluster_seconds = started.elapsed().as_secs_f64();
    if let Ok(scratch) = scratch {
        summary.dir = Some(scratch.dir.path().to_owned());
        let mut scratch = Some(scratch);
        if let (Some(manifest), Some(s)) = (&target.snapshot, scratch.as_mut()) {
            let half = if manifest.kind == SnapshotKind::Logical {
                steps
                    .run(
                        "database",
                        &format!(
                            "database half: snapshot {} into the scratch cluster",
                            manifest.id
                        ),
                        database(ctx, manifest, s),
                    )
                    .await
            } else {
                steps
                    .run(
                        "database",
                        &format!(
                            "database half: physical snapshot {} into a scratch data directory, \
                             WAL replay until promotion",
                            manifest.id
                        ),
                        physical(ctx, manifest, s),
                    )
                    .await
            };
            if let Ok(DatabaseHalf {
                replayed_at: Some(at),
                ..
            }) = &half
                && *at > target.finished
            {
                summary.data_finished = at.format(&Rfc3339).ok();
                summary.data_age_seconds = Some((now - *at).as_seconds_f64());
            }
            summary.database = half.ok();
        }
        if let (Some(inventory), Some(s)) = (&target.inventory, &scratch) {
            let store_dir = s.dir.path().join("artifacts");
            let half_started = Instant::now();
            let restored = steps
                .run(
                    "artifacts",
                    &format!("artifact half: inventory {inventory} into a temporary store"),
                    artifacts(repo, inventory, &store_dir, secrets),
                )
                .await;
            if let Ok((store, expected, bytes)) = restored {
                let objects = expected.len() as u64;
                let verified = steps
                    .run(
                        "verify_artifacts",
                        "every restored artifact re-read and matched to its SHA-256",
                        verify_artifacts(store, expected),
                    )
                    .await;
                if let Ok(verified) = verified {
                    summary.artifacts = Some(ArtifactHalf {
                        objects,
                        bytes,
                        verified,
                        seconds: half_started.elapsed().as_secs_f64(),
                    });
                }
            }
        }
        summary.rto_seconds = started.elapsed().as_secs_f64();
        let scratch = scratch.take();
        if let Some(scratch) = scratch {
            if keep_all {
                keep(scratch);
                summary.kept = true;
            } else {
                let dir = scratch.dir.path().to_owned();
                drop(scratch);
                summary.removed = !dir.exists();
                eprintln!("drill: removed {}", dir.display());
            }
        }
    }
    summary.steps = steps.records;
    if let Some(failed) = summary.steps.iter().find(|s| !s.ok) {
        summary.failed_step = Some(failed.step);
        summary.error = Some(failed.detail.clone());
    }
    summary.ok = summary.failed_step.is_none();
}

async fn setup(bin_dir: &Path, with_cluster: bool) -> anyhow::Result<(Scratch, String)> {
    let dir = tempfile::Builder::new()
        .prefix("warmspare-drill-")
        .tempdir()
        .context("cannot create the scratch directory")?;
    // The cluster runs as `postgres` when we are root: it must reach it.
    warmspare_pgcluster::shared_parent_dir(dir.path())?;
    let watchdog = dir_watchdog(dir.path())?;
    let cluster = if with_cluster {
        Some(
            Cluster::builder(bin_dir, dir.path())
                .prefix("drill-db-")
                .start()
                .await
                .context("cannot start the scratch cluster")?,
        )
    } else {
        None
    };
    let detail = match &cluster {
        Some(c) => format!(
            "cluster on port {}, under {}",
            c.port(),
            dir.path().display()
        ),
        None => format!("under {}", dir.path().display()),
    };
    Ok((
        Scratch {
            cluster,
            dir,
            watchdog,
        },
        detail,
    ))
}

async fn database(
    ctx: &Ctx<'_>,
    manifest: &Manifest,
    scratch: &Scratch,
) -> anyhow::Result<(DatabaseHalf, String)> {
    let (repo, bin_dir, secrets) = (ctx.repo, ctx.bin_dir, ctx.secrets);
    let cluster = scratch.cluster.as_ref().context("no scratch cluster")?;
    let meta = LogicalMeta::from_manifest(manifest).map_err(|e| repo::failure(&e, secrets))?;
    // The scratch cluster lacks the source's roles.
    let options = RestoreOptions::default()
        .with_bin_dir(bin_dir)
        .with_no_owner(true)
        .with_no_privileges(true);
    let started = Instant::now();
    let progress = Progress::new("drill");
    let result = restore_logical(
        repo,
        &manifest.id,
        &cluster.url_for(&meta.database),
        None,
        &options,
        Some(&|event| progress.event(event)),
    )
    .await;
    progress.finish();
    let report = result.map_err(|e| repo::failure(&e, secrets))?;
    let rows = meta
        .row_counts
        .as_ref()
        .map(|t| t.iter().map(|t| t.rows).sum::<u64>());
    let half = DatabaseHalf {
        database: report.database,
        kind: "logical",
        tables_checked: report.tables_checked,
        rows,
        bytes: report.bytes,
        seconds: started.elapsed().as_secs_f64(),
        replayed_until: None,
        replayed_at: None,
    };
    let detail = format!(
        "database {} restored ({}), {}",
        half.database,
        output::bytes(half.bytes),
        match (half.tables_checked, half.rows) {
            (Some(t), Some(r)) => format!("row counts of {t} tables ({r} rows) match"),
            _ => "no row counts recorded in the snapshot".into(),
        }
    );
    Ok((half, detail))
}

/// A physical snapshot laid out as a data directory, started with
/// `archive_mode = off` (a drill copy must not archive its new timeline
/// into the repository), recovered from the WAL archive until it promotes.
async fn physical(
    ctx: &Ctx<'_>,
    manifest: &Manifest,
    scratch: &mut Scratch,
) -> anyhow::Result<(DatabaseHalf, String)> {
    let started = Instant::now();
    let data_dir = scratch.dir.path().join("restored-data");
    let options =
        PhysicalRestoreOptions::new(ctx.restore_command).with_target(RecoveryTarget::Latest);
    let progress = Progress::new("drill");
    let result = restore_physical(
        ctx.repo,
        &manifest.id,
        &data_dir,
        &options,
        Some(&|event| match event {
            Event::PhysicalRestore(step) => progress.step(step.as_str()),
            other => progress.event(other),
        }),
    )
    .await;
    progress.finish();
    let report = result.map_err(|e| repo::failure(&e, ctx.secrets))?;
    // postgresql.auto.conf is read last: this line wins over the source's.
    let auto = data_dir.join("postgresql.auto.conf");
    let mut text = std::fs::read_to_string(&auto)
        .with_context(|| format!("cannot read {}", auto.display()))?;
    text.push_str("\n# warmspare drill: never archive into the repository\narchive_mode = off\n");
    std::fs::write(&auto, text).with_context(|| format!("cannot write {}", auto.display()))?;
    let cluster = Cluster::builder(ctx.bin_dir, scratch.dir.path())
        .prefix("drill-db-")
        .from_data_dir(&data_dir)
        .setting("archive_mode", "off")
        .start()
        .await
        .context("cannot start PostgreSQL on the restored data directory")?;
    let cluster = scratch.cluster.insert(cluster);
    let deadline = Instant::now() + ctx.recovery_timeout;
    loop {
        if cluster
            .psql("SELECT pg_is_in_recovery()")
            .await
            .ok()
            .as_deref()
            == Some("f")
        {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the restored server did not finish its WAL replay within {}; its log ends with: {}",
                output::duration(ctx.recovery_timeout),
                cluster.log_tail(10)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let tables: usize = cluster
        .psql("SELECT count(*) FROM pg_stat_user_tables")
        .await?
        .trim()
        .parse()
        .unwrap_or(0);
    // Static once recovery has completed: the data's real age.
    let replayed_at = cluster
        .psql("SELECT coalesce(extract(epoch FROM pg_last_xact_replay_timestamp())::text, '')")
        .await?
        .trim()
        .parse::<f64>()
        .ok()
        .and_then(|secs| OffsetDateTime::from_unix_timestamp_nanos((secs * 1e9) as i128).ok());
    let half = DatabaseHalf {
        replayed_until: replayed_at.and_then(|t| t.format(&Rfc3339).ok()),
        replayed_at,
        database: "(whole cluster)".into(),
        kind: "physical",
        tables_checked: None,
        rows: None,
        bytes: report.bytes,
        seconds: started.elapsed().as_secs_f64(),
    };
    let detail = format!(
        "physical snapshot restored ({}), WAL replayed, promoted; {tables} user tables in the \
         postgres database (a physical snapshot records no row counts)",
        output::bytes(report.bytes)
    );
    Ok((half, detail))
}

type Restored = (Arc<dyn ObjectStore>, Vec<ExpectedArtifact>, u64);

async fn artifacts(
    repo: &Repository,
    inventory: &SnapshotId,
    dir: &Path,
    secrets: &[String],
) -> anyhow::Result<(Restored, String)> {
    let replicate = |e: warmspare_replicate::Error| super::sync::failure(&e, secrets);
    std::fs::create_dir(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let url = format!("file://{}", dir.display());
    // A directory: written directly, as `restore artifacts` does.
    let store =
        Store::open(&StoreConfig::new(&url)).with_context(|| format!("cannot open {url}"))?;
    let target = warmspare_replicate::Endpoint::for_store(&store);
    let entries = read_inventory(repo, inventory)
        .await
        .map_err(replicate)?
        .entries;
    let progress = Arc::new(super::sync::ArtifactProgress::new("drill"));
    let p = Arc::clone(&progress);
    let result = restore_artifacts_to(
        repo,
        inventory,
        &target,
        &SyncOptions::default(),
        move |e: &warmspare_replicate::SyncEvent<'_>| p.event(e),
    )
    .await;
    progress.finish();
    let report = result.map_err(replicate)?;
    if !report.is_success() {
        bail!(
            "{} of {} artifacts could not be restored: {}",
            report.failed,
            entries.len(),
            report
                .errors
                .iter()
                .map(|e| output::scrub(&output::one_line(e), secrets))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    let bytes: u64 = entries.iter().map(|e| e.size).sum();
    let detail = format!(
        "{} artifacts restored ({})",
        report.copied,
        output::bytes(bytes)
    );
    let expected = entries
        .into_iter()
        .map(|e| ExpectedArtifact {
            key: e.key,
            checksum: Some(e.sha256),
        })
        .collect();
    Ok(((store.object_store().clone(), expected, bytes), detail))
}

async fn verify_artifacts(
    store: Arc<dyn ObjectStore>,
    expected: Vec<ExpectedArtifact>,
) -> anyhow::Result<(u64, String)> {
    let count = expected.len() as u64;
    let report = reconcile(
        &store,
        expected,
        DigestAlgorithm::Sha256,
        true,
        &SyncOptions::default(),
    )
    .await?;
    if !report.is_consistent() || report.unnamed_count > 0 || report.verified != count {
        bail!(
            "scratch store: {} missing ({}), {} with another SHA-256, {} not in the inventory, \
             {} unreadable, {} of {count} verified",
            report.missing_count,
            report.missing.join(", "),
            report.mismatched_count,
            report.unnamed_count,
            report.errors.len(),
            report.verified
        );
    }
    Ok((
        report.verified,
        format!("{} artifacts match their SHA-256", report.verified),
    ))
}

/// `--keep`: leave the cluster running and the store in place.
fn keep(mut scratch: Scratch) {
    if let Some(cluster) = scratch.cluster.take() {
        let url = cluster.url();
        let run_as = cluster.run_as().map(str::to_owned);
        let pg_ctl = cluster.bin_dir().join("pg_ctl");
        let root = cluster.detach();
        eprintln!(
            "drill: kept the scratch cluster: {url}\ndrill:   stop it: {}{} stop -D {}",
            run_as
                .map(|u| format!("runuser -u {u} -- "))
                .unwrap_or_default(),
            pg_ctl.display(),
            root.join("data").display()
        );
    }
    scratch.watchdog.disarm();
    let dir = scratch.dir.keep();
    eprintln!(
        "drill: kept everything under {} (artifacts in {})",
        dir.display(),
        dir.join("artifacts").display()
    );
}

fn print_human(summary: &Summary) {
    let what = match (&summary.point, &summary.snapshot) {
        (Some(p), _) => format!("recovery point {p}"),
        (None, Some(s)) => format!("snapshot {s}"),
        (None, None) => "nothing".into(),
    };
    println!(
        "drill of {what}: {}",
        if summary.ok { "ok" } else { "FAILED" }
    );
    if let (Some(at), Some(age)) = (&summary.data_finished, summary.data_age_seconds) {
        println!("  data age (RPO now): {age:.0}s (taken {at})");
    }
    if let Some(db) = &summary.database {
        println!(
            "  database:  {:.2}s, {} into {}{}",
            db.seconds,
            output::bytes(db.bytes),
            db.database,
            match (db.tables_checked, db.rows) {
                (Some(t), Some(r)) => format!(", {t} tables / {r} rows checked"),
                _ => String::new(),
            }
        );
    }
    if let Some(a) = &summary.artifacts {
        println!(
            "  artifacts: {:.2}s, {} objects ({}), {} verified",
            a.seconds,
            a.objects,
            output::bytes(a.bytes),
            a.verified
        );
    }
    println!(
        "  measured RTO: {:.2}s (scratch cluster {:.2}s)",
        summary.rto_seconds, summary.cluster_seconds
    );
    if let (Some(step), Some(error)) = (summary.failed_step, &summary.error) {
        println!("  failed step {step}: {error}");
    }
}
