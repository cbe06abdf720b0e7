//! The built-in jobs: `backup`, `physical_backup`, `sync`, `restore`,
//! `verify`, `prune`, registered with [`AgentOptions::standard_jobs`](crate::AgentOptions::standard_jobs).
//!
//! Where each runs depends on the failover driver's view of this site:
//!
//! | job | runs when | does |
//! | --- | --- | --- |
//! | `backup` | this site may accept traffic (or no driver is configured: one site) | a recovery point (`take_recovery_point`) when the site has an artifact store, else a logical snapshot; the lease epoch goes into the manifest |
//! | `physical_backup` | like `backup` | a physical base backup (`backup_physical`, `pg_basebackup`) of this site's database, the starting point of point-in-time recovery; the database must archive its WAL into the repository |
//! | `sync` | this site may accept traffic | mirrors this site's artifact store into the other site's (a `file://` store's directory directly, as `warmspare sync` does) |
//! | `restore` | this site is a `logical-restore` site, does not hold the lease and has seen another site hold it | restores the newest logical snapshot into this site's database |
//! | `verify` | always | verifies the newest snapshot's files against its manifest |
//! | `prune` | like `backup` | applies `[retention]` to the repository |
//!
//! A run that does not apply at this site ends as skipped
//! ([`JobOutcome::skipped`]: recorded as `skipped`, not as a success) with
//! a summary that starts with `skipped:`; a run that cannot tell where it is (no driver
//! because the repository failed its compare-and-swap probe) fails for the
//! jobs that need to know.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use warmspare_replicate::{Endpoint, PointRequest, SyncOptions, take_recovery_point};
use warmspare_snapshot::catalog::{self, LATEST};
use warmspare_snapshot::{
    LogicalBackupOptions, PhysicalBackupOptions, RestoreOptions, backup_logical, backup_physical,
};
use warmspare_store::{Repository, SnapshotKind, Store};

use crate::clock::Clock;
use crate::config::{Config, SiteMode};
use crate::failover::{Gate, Links};
use crate::job::{Job, JobContext, JobError, JobOutcome};

/// The built-in jobs for `site` of `config`.
pub(crate) fn standard(
    config: &Config,
    site: &str,
    links: &Arc<Links>,
    clock: &Arc<dyn Clock>,
    encryption_key: Option<warmspare_store::EncryptionKey>,
) -> Vec<Arc<dyn Job>> {
    let mut repository = config.repository.store_config();
    if let Some(key) = encryption_key {
        repository = repository.with_encryption_key(key);
    }
    let env = Arc::new(Env {
        config: config.clone(),
        repository,
        site: site.to_owned(),
        links: Arc::clone(links),
        clock: Arc::clone(clock),
    });
    [
        Kind::Backup,
        Kind::PhysicalBackup,
        Kind::Sync,
        Kind::Restore,
        Kind::Verify,
        Kind::Prune,
    ]
    .into_iter()
    .map(|kind| {
        Arc::new(Builtin {
            kind,
            env: Arc::clone(&env),
        }) as Arc<dyn Job>
    })
    .collect()
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Backup,
    PhysicalBackup,
    Sync,
    Restore,
    Verify,
    Prune,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Backup => "backup",
            Kind::PhysicalBackup => "physical_backup",
            Kind::Sync => "sync",
            Kind::Restore => "restore",
            Kind::Verify => "verify",
            Kind::Prune => "prune",
        }
    }
}

struct Env {
    config: Config,
    /// The repository's store settings, with the encryption key if given.
    repository: warmspare_store::StoreConfig,
    site: String,
    links: Arc<Links>,
    clock: Arc<dyn Clock>,
}

struct Builtin {
    kind: Kind,
    env: Arc<Env>,
}

/// Where this site stands, for the jobs.
enum Standing {
    /// May accept traffic; the lease epoch to write with.
    Active(Option<u64>),
    /// The driver runs, this site does not hold the lease, another does.
    Standby,
    /// The driver runs and nobody holds the lease as far as it knows (not
    /// read yet, released, expired): wait.
    NoHolder,
    /// No driver is configured for this site (a single site).
    Alone,
    /// The driver should run but cannot say (starting, stopped, the
    /// repository failed its probe).
    Unknown(String),
}

impl Env {
    fn standing(&self) -> Standing {
        match self.links.gate() {
            Gate::Running(handle) => {
                if handle.may_accept_traffic() {
                    return Standing::Active(handle.current_epoch());
                }
                let state = handle.state();
                if !state.running {
                    return Standing::Unknown("failover driver stopped".into());
                }
                // Only a lease observed in another site's hands makes this
                // site a spare: a freshly started primary that has not read
                // the lease yet must never restore over its own database.
                match &state.lease {
                    Some(l) if l.holder == self.site && !l.released => Standing::Unknown(format!(
                        "this site holds the lease but may not accept traffic now (role {})",
                        state.role
                    )),
                    Some(l)
                        if !l.released
                            && state.role == warmspare_failover::policy::Role::Standby =>
                    {
                        Standing::Standby
                    }
                    _ => Standing::NoHolder,
                }
            }
            Gate::Off(reason)
                if reason.starts_with("no peer site") || reason == crate::failover::DISABLED =>
            {
                Standing::Alone
            }
            Gate::Off(reason) => Standing::Unknown(reason),
            Gate::Starting => Standing::Unknown(crate::failover::STARTING.into()),
        }
    }

    fn site_config(&self) -> Result<&crate::config::SiteConfig, JobError> {
        self.config
            .sites
            .get(&self.site)
            .ok_or_else(|| JobError::msg(format!("site `{}` is not configured", self.site)))
    }

    async fn repository(&self, init: bool) -> Result<Repository, JobError> {
        let store = Store::open(&self.repository).map_err(JobError::failed)?;
        let repo = if init {
            Repository::init(store, self.clock.now()).await
        } else {
            Repository::open(store).await
        };
        repo.map_err(JobError::failed)
    }
}

/// Why a job waits while nobody holds the lease.
const NO_HOLDER: &str = "no site holds the lease as far as this site knows";

fn skipped(why: impl std::fmt::Display) -> Result<JobOutcome, JobError> {
    Ok(JobOutcome::skipped(why))
}

#[async_trait]
impl Job for Builtin {
    fn name(&self) -> &str {
        self.kind.name()
    }

    async fn run(&self, ctx: JobContext) -> Result<JobOutcome, JobError> {
        let env = &self.env;
        match self.kind {
            Kind::Backup => until_cancelled(&ctx, backup(env)).await,
            Kind::PhysicalBackup => until_cancelled(&ctx, physical_backup(env)).await,
            // Stopped from within: it returns once the writes it started
            // into the spare's store have ended, so that the next run
            // never races a cancelled one.
            Kind::Sync => sync(env, &ctx).await,
            Kind::Restore => until_cancelled(&ctx, restore(env)).await,
            Kind::Verify => until_cancelled(&ctx, verify(env)).await,
            Kind::Prune => until_cancelled(&ctx, prune(env)).await,
        }
    }
}

/// Runs `work` until it ends or the run is cancelled, when it is dropped.
/// Every step of these writes commits atomically (a manifest, a point, a
/// swap in one transaction): stopping between awaits leaves the repository
/// and the databases valid.
async fn until_cancelled(
    ctx: &JobContext,
    work: impl Future<Output = Result<JobOutcome, JobError>>,
) -> Result<JobOutcome, JobError> {
    tokio::select! {
        result = work => result,
        () = ctx.cancelled() => Err(JobError::Cancelled),
    }
}

async fn backup(env: &Env) -> Result<JobOutcome, JobError> {
    let epoch = match env.standing() {
        Standing::Active(epoch) => epoch,
        Standing::Alone => None,
        Standing::Standby => return skipped("this site is not the active site"),
        Standing::NoHolder => return skipped(NO_HOLDER),
        Standing::Unknown(why) => return skipped(why),
    };
    let site = env.site_config()?;
    let repo = env.repository(true).await?;
    let now = env.clock.now();
    let (taken, summary) = match site.artifacts_store_config() {
        Some(artifacts) => {
            let store = Store::open(&artifacts).map_err(JobError::failed)?;
            let request = PointRequest {
                database_url: site.database.expose().to_owned(),
                database: LogicalBackupOptions::default(),
                artifacts: Some(Arc::clone(store.object_store())),
                artifact_options: SyncOptions::default().with_source_id(store.display_url()),
                epoch,
                meta: serde_json::json!({ "site": env.site }),
            };
            let point = take_recovery_point(&repo, &request, now, |_| {})
                .await
                .map_err(JobError::failed)?;
            let summary = format!(
                "recovery point {} (snapshot {}, {} artifacts)",
                point.point.id,
                point.snapshot.manifest.id,
                point
                    .artifacts
                    .as_ref()
                    .map_or(0, |a| a.inventory.entries.len())
            );
            (point.snapshot.manifest.started, summary)
        }
        None => {
            let backup = backup_logical(
                &repo,
                site.database.expose(),
                &LogicalBackupOptions::default(),
                epoch,
                now,
                None,
            )
            .await
            .map_err(JobError::failed)?;
            let summary = format!(
                "snapshot {} ({} bytes)",
                backup.manifest.id,
                backup.manifest.total_size()
            );
            (backup.manifest.started, summary)
        }
    };
    env.links.update(|m| {
        m.last_snapshot = Some(m.last_snapshot.map_or(taken, |t| t.max(taken)));
    });
    let epoch = epoch.map_or_else(|| "no lease epoch".to_owned(), |e| format!("epoch {e}"));
    Ok(JobOutcome::summary(format!("{summary}, {epoch}")))
}

/// A physical base backup of this site's database. Only where `backup`
/// runs: the active site (or a single site), since a spare's database is
/// a copy (or a standby) whose WAL the repository does not archive.
async fn physical_backup(env: &Env) -> Result<JobOutcome, JobError> {
    let epoch = match env.standing() {
        Standing::Active(epoch) => epoch,
        Standing::Alone => None,
        Standing::Standby => return skipped("this site is not the active site"),
        Standing::NoHolder => return skipped(NO_HOLDER),
        Standing::Unknown(why) => return skipped(why),
    };
    let site = env.site_config()?;
    let repo = env.repository(true).await?;
    // Dropping this future (timeout, shutdown) kills pg_basebackup; the
    // unfinished snapshot is never listed and prune removes it.
    let backup = backup_physical(
        &repo,
        site.database.expose(),
        &PhysicalBackupOptions::default(),
        epoch,
        env.clock.now(),
        None,
    )
    .await
    .map_err(JobError::failed)?;
    let taken = backup.manifest.started;
    env.links.update(|m| {
        m.last_snapshot = Some(m.last_snapshot.map_or(taken, |t| t.max(taken)));
    });
    let epoch = epoch.map_or_else(|| "no lease epoch".to_owned(), |e| format!("epoch {e}"));
    Ok(JobOutcome::summary(format!(
        "physical snapshot {} ({} bytes, WAL {} to {}), {epoch}",
        backup.manifest.id,
        backup.manifest.total_size(),
        backup.meta.start_wal,
        backup.meta.stop_wal
    )))
}

async fn sync(env: &Env, ctx: &JobContext) -> Result<JobOutcome, JobError> {
    match env.standing() {
        Standing::Active(_) => {}
        Standing::Standby => return skipped("the active site runs sync"),
        Standing::NoHolder => return skipped(NO_HOLDER),
        Standing::Alone => return skipped("no other site to sync to"),
        Standing::Unknown(why) => {
            return Err(JobError::msg(format!(
                "cannot tell whether this site is active: {why}"
            )));
        }
    }
    let site = env.site_config()?;
    let Some(source) = site.artifacts_store_config() else {
        return skipped("this site has no artifact store");
    };
    let Some((peer, peer_site)) = env.config.sites.iter().find(|(n, _)| **n != env.site) else {
        return skipped("no other site to sync to");
    };
    let Some(target) = peer_site.artifacts_store_config() else {
        return skipped(format!("site {peer} has no artifact store"));
    };
    let source = Store::open(&source).map_err(JobError::failed)?;
    let target = Store::open(&target).map_err(JobError::failed)?;
    let options = SyncOptions::default().with_source_id(source.display_url());
    // As `warmspare sync` does: a `file://` store's directory is listed,
    // read and written directly.
    let report = match warmspare_replicate::sync_endpoints_until(
        &Endpoint::for_store(&source),
        &Endpoint::for_store(&target),
        &options,
        |_| {},
        ctx.cancelled(),
    )
    .await
    {
        Ok(report) => report,
        Err(_) if ctx.is_cancelled() => return Err(JobError::Cancelled),
        Err(e) => return Err(JobError::failed(e)),
    };
    env.links.update(|m| {
        m.synced = true;
        m.sync_objects_total += report.copied;
    });
    let line = format!(
        "{} copied, {} unchanged, {} deleted, {} failed to {peer}",
        report.copied, report.skipped, report.deleted, report.failed
    );
    if report.is_success() {
        Ok(JobOutcome::summary(line))
    } else {
        let first = report
            .errors
            .first()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        Err(JobError::msg(format!("sync incomplete, {line}{first}")))
    }
}

async fn restore(env: &Env) -> Result<JobOutcome, JobError> {
    let site = env.site_config()?;
    if site.mode != SiteMode::LogicalRestore {
        return skipped(format!("site mode is {}", site.mode.as_str()));
    }
    match env.standing() {
        Standing::Standby => {}
        Standing::Active(_) => return skipped("this site is the active site"),
        Standing::NoHolder => return skipped(NO_HOLDER),
        Standing::Alone => return skipped("no other site restores into this one"),
        Standing::Unknown(why) => {
            return Err(JobError::msg(format!(
                "refusing to restore: cannot tell whether this site holds the lease: {why}"
            )));
        }
    }
    let repo = env.repository(false).await?;
    let manifest = catalog::resolve(&repo, LATEST, Some(SnapshotKind::Logical))
        .await
        .map_err(JobError::failed)?;
    if env
        .links
        .measures()
        .restored_taken_at
        .is_some_and(|t| t >= manifest.started)
    {
        return skipped(format!("snapshot {} is already restored", manifest.id));
    }
    // The spare is fenced (default_transaction_read_only on): the restore
    // is the agent's own maintenance write and turns it off for its
    // sessions only.
    let target = writable_url(site.database.expose());
    let report = warmspare_snapshot::restore_logical(
        &repo,
        &manifest.id,
        &target,
        None,
        &RestoreOptions::default(),
        None,
    )
    .await
    .map_err(JobError::failed)?;
    let _ = report;
    let taken = manifest.started;
    env.links.update(|m| m.restored_taken_at = Some(taken));
    let age: Duration = (env.clock.now() - taken).try_into().unwrap_or_default();
    Ok(JobOutcome::summary(format!(
        "restored snapshot {} (taken {} ago)",
        manifest.id,
        humantime::format_duration(Duration::from_secs(age.as_secs()))
    )))
}

/// `url` with `options=-c default_transaction_read_only=off` added, so that
/// the agent's own sessions can write to a fenced database.
fn writable_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            // Percent-encoded by hand: libpq (pg_restore) does not read `+`
            // as a space, as form encoding would write it.
            let extra = "options=-c%20default_transaction_read_only%3Doff";
            let query = match u.query() {
                Some(q) if !q.is_empty() => format!("{q}&{extra}"),
                _ => extra.to_owned(),
            };
            u.set_query(Some(&query));
            u.to_string()
        }
        Err(_) => url.to_owned(),
    }
}

async fn verify(env: &Env) -> Result<JobOutcome, JobError> {
    let repo = env.repository(false).await?;
    let manifest = catalog::resolve(&repo, LATEST, None)
        .await
        .map_err(JobError::failed)?;
    let report = catalog::verify(&repo, &manifest.id)
        .await
        .map_err(JobError::failed)?;
    Ok(JobOutcome::summary(format!(
        "snapshot {}: {} files, {} bytes verified",
        report.id, report.files, report.bytes
    )))
}

async fn prune(env: &Env) -> Result<JobOutcome, JobError> {
    match env.standing() {
        Standing::Active(_) | Standing::Alone => {}
        Standing::Standby => return skipped("the active site prunes"),
        Standing::NoHolder => return skipped(NO_HOLDER),
        Standing::Unknown(why) => return skipped(why),
    }
    let repo = env.repository(false).await?;
    // The whole repository: points, the snapshots they name, inventories
    // and unreferenced blobs, not the snapshots alone.
    let report = warmspare_replicate::prune_repository(
        &repo,
        &env.config.retention,
        &warmspare_replicate::RepositoryPruneOptions::default(),
        env.clock.now(),
        |_| {},
    )
    .await
    .map_err(JobError::failed)?;
    let line = format!(
        "{} recovery points, {} snapshots ({} objects), {} inventories and {} blobs deleted",
        report.points.deleted.len(),
        report.snapshots.deleted.len(),
        report.snapshots.objects_deleted,
        report.inventories.deleted.len(),
        report.blobs.deleted
    );
    let first_failure = report
        .points
        .failures
        .iter()
        .map(|(id, e)| format!("deleting point {id} failed: {e}"))
        .chain(
            report
                .snapshots
                .failures
                .iter()
                .map(|(id, e)| format!("deleting {id} failed: {e}")),
        )
        .chain(
            report
                .inventories
                .failures
                .iter()
                .map(|(id, e)| format!("deleting inventory {id} failed: {e}")),
        )
        .chain(
            report
                .blobs
                .failures
                .iter()
                .map(|(path, e)| format!("deleting {path} failed: {e}")),
        )
        .next();
    match first_failure {
        None => Ok(JobOutcome::summary(line)),
        Some(failure) => Err(JobError::msg(format!("{line}; {failure}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_restore_url_turns_read_only_off_for_its_sessions() {
        let url = writable_url("postgres://u@h:5432/db?sslmode=disable");
        assert!(url.starts_with("postgres://u@h:5432/db?sslmode=disable&options="));
        let parsed = url::Url::parse(&url).unwrap();
        let options: Vec<_> = parsed
            .query_pairs()
            .filter(|(k, _)| k == "options")
            .map(|(_, v)| v.into_owned())
            .collect();
        assert_eq!(options, ["-c default_transaction_read_only=off"]);
    }
}
