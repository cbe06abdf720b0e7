//! The demo's failover: one lease driver per site against the file
//! repository, probes of both databases, then `kill -9` of the primary's
//! postmaster and of its driver; the spare's driver takes the lease over
//! and promotes. Measured: RTO (kill to the first write the spare accepts)
//! and RPO (age of the newest data the spare holds when the primary dies).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use warmspare_failover::actions::{Hooks, PostgresActions, SiteActions};
use warmspare_failover::driver::{BootClock, Clock, lease_store_config};
use warmspare_failover::policy::{Event, PolicyConfig, Role, Target};
use warmspare_failover::probe::{Probe, ProbeRunner};
use warmspare_failover::{Driver, DriverConfig, DriverHandle, FailoverConfig};
use warmspare_pgcluster::Cluster;
use warmspare_store::object_store::path::Path as ObjectPath;
use warmspare_store::{Store, StoreConfig, probe_cas};

use super::{DATABASE, Lab};

/// Whether this build can run the failover step.
pub(super) const AVAILABLE: bool = true;

/// How long each wait of the step may take before it fails.
const WAIT: Duration = Duration::from_secs(20);

/// What the failover step measured.
#[derive(Debug, Default, Serialize)]
pub(super) struct Outcome {
    available: bool,
    /// Kill of the primary to the first write the spare accepted.
    rto_seconds: Option<f64>,
    /// Age of the newest data on the spare when the primary died: the time
    /// since the snapshot it restored was taken.
    rpo_seconds: Option<f64>,
    /// Kill of the primary to the spare's driver holding the lease.
    lease_seconds: Option<f64>,
    /// The epoch the spare took the lease at (recorded in its database).
    epoch: Option<u64>,
    /// The lease TTL the drivers ran with.
    lease_ttl_seconds: f64,
    /// Rows on the spare after its first write.
    spare_rows_after: Option<u64>,
}

impl Outcome {
    pub(super) fn not_available() -> Self {
        Outcome::default()
    }
}

/// One site's driver and probe tasks.
struct Site {
    handle: DriverHandle,
    stop: Option<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Site {
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        for task in std::mem::take(&mut self.tasks) {
            // Probe runners end when their driver has stopped.
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

pub(super) async fn run(
    lab: &mut Lab,
    snapshot_started: OffsetDateTime,
) -> anyhow::Result<(Outcome, String)> {
    // The [failover] section of the config file the demo wrote.
    let config = lab.failover.clone();
    let policy = PolicyConfig::from_failover(&config);
    policy.validate()?;
    let store = Store::open(&lease_store_config(
        &StoreConfig::new(&lab.repo_url),
        &policy,
    ))?;
    // Nothing that needs the lease runs on a backend that fails this.
    let probe = probe_cas(store.cas().as_ref(), &ObjectPath::from("demo/cas-probe")).await?;
    if !probe.passed() {
        bail!(
            "the repository's compare-and-swap failed its probe: {}",
            probe.summary()
        );
    }
    let clock: Arc<dyn Clock> = Arc::new(BootClock::new());
    let (primary_url, spare_url) = (
        lab.primary()?.url_for(DATABASE),
        lab.spare()?.url_for(DATABASE),
    );
    let primary = start_site(
        "primary",
        "spare",
        true,
        &primary_url,
        &spare_url,
        &config,
        &policy,
        &store,
        &clock,
    )?;
    let spare = start_site(
        "spare",
        "primary",
        false,
        &spare_url,
        &primary_url,
        &config,
        &policy,
        &store,
        &clock,
    )?;
    // A logical-restore spare's data is as old as the snapshot it restored:
    // that is the "lag" the policy weighs against max_data_loss.
    let lag_task = tokio::spawn(report_age(spare.handle.clone(), snapshot_started));

    let mut primary = primary;
    let result = drive(lab, &mut primary, &spare, snapshot_started, &config).await;
    lag_task.abort();
    primary.stop().await;
    spare.stop().await;
    result
}

#[allow(clippy::too_many_arguments)]
fn start_site(
    site: &str,
    peer: &str,
    initial_holder: bool,
    own_url: &str,
    peer_url: &str,
    config: &FailoverConfig,
    policy: &PolicyConfig,
    store: &Store,
    clock: &Arc<dyn Clock>,
) -> anyhow::Result<Site> {
    let actions = SiteActions {
        database: PostgresActions::new(own_url, site),
        hooks: Hooks::from_config(site, config),
    };
    let driver = Driver::new(
        DriverConfig::new(policy.clone(), site, peer, initial_holder),
        Arc::clone(store.cas()),
        Arc::new(actions),
        Arc::clone(clock),
    )?;
    let handle = driver.handle();
    let (stop, stopped) = oneshot::channel::<()>();
    let mut tasks = vec![tokio::spawn(async move {
        let _ = driver
            .run(async {
                let _ = stopped.await;
            })
            .await;
    })];
    for (target, url) in [(Target::Local, own_url), (Target::Peer, peer_url)] {
        let runner = ProbeRunner {
            target,
            probes: vec![Probe::Postgres {
                url: url.to_owned(),
                write_check: false,
            }],
            interval: config.interval,
            timeout: config.timeout,
        };
        let (results, _) = watch::channel(Vec::new());
        tasks.push(tokio::spawn(runner.run(handle.clone(), Arc::new(results))));
    }
    Ok(Site {
        handle,
        stop: Some(stop),
        tasks,
    })
}

/// Tells the spare's driver how old its data is, every 200 ms.
async fn report_age(handle: DriverHandle, snapshot_started: OffsetDateTime) {
    loop {
        let age = (OffsetDateTime::now_utc() - snapshot_started)
            .try_into()
            .unwrap_or(Duration::ZERO);
        let measured_at = handle.clock().now();
        if handle
            .send_event(Event::ReplicationLag {
                lag: age,
                measured_at,
            })
            .await
            .is_err()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn drive(
    lab: &mut Lab,
    primary: &mut Site,
    spare: &Site,
    snapshot_started: OffsetDateTime,
    config: &FailoverConfig,
) -> anyhow::Result<(Outcome, String)> {
    let started = Instant::now();
    wait_for("the primary to hold the lease", || {
        primary.handle.may_accept_traffic()
    })
    .await?;
    wait_for("the spare to stand by, fenced", || {
        let state = spare.handle.state();
        state.running && state.role == Role::Standby && state.fenced
    })
    .await?;
    let spare_db = lab.spare()?;
    // The spare's fence is what makes "first write" a measurement.
    let fenced = deadline_loop(|| async {
        spare_db
            .psql_in(DATABASE, "SHOW default_transaction_read_only")
            .await
            .is_ok_and(|v| v == "on")
    })
    .await;
    if !fenced {
        bail!("the spare accepts writes before any failover: its driver did not fence it");
    }
    eprintln!(
        "      drivers up in {:.2}s: primary holds the lease (epoch {}), spare fenced read-only",
        started.elapsed().as_secs_f64(),
        primary.handle.current_epoch().unwrap_or(0)
    );

    // The failure: the primary's postmaster and its driver die at once.
    let killed_at = Instant::now();
    let killed_wall = OffsetDateTime::now_utc();
    let primary_db = lab.primary()?;
    primary_db.kill().await.context("kill -9 of the primary")?;
    if let Some(stop) = primary.stop.take() {
        let _ = stop.send(());
    }
    let rpo: Duration = (killed_wall - snapshot_started)
        .try_into()
        .unwrap_or(Duration::ZERO);
    eprintln!("      killed the primary's postmaster (SIGKILL) and its driver");

    let mut lease_seconds = None;
    let rto = loop {
        if lease_seconds.is_none() && spare.handle.may_accept_traffic() {
            lease_seconds = Some(killed_at.elapsed().as_secs_f64());
        }
        if try_write(spare_db).await.is_ok() {
            break killed_at.elapsed();
        }
        if killed_at.elapsed() > WAIT * 2 {
            let state = spare.handle.state();
            bail!(
                "the spare accepted no write within {:?} of the kill (role {:?}, fenced {}, last alert {:?})",
                WAIT * 2,
                state.role,
                state.fenced,
                state.last_alert
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    wait_for("the spare to hold the lease", || {
        spare.handle.may_accept_traffic()
    })
    .await?;
    let lease_seconds = lease_seconds.unwrap_or_else(|| killed_at.elapsed().as_secs_f64());
    let epoch = spare.handle.current_epoch();
    let rows: u64 = spare_db
        .psql_in(DATABASE, "SELECT count(*) FROM packages")
        .await?
        .parse()
        .context("unexpected psql output")?;
    let recorded = spare_db
        .psql_in(
            DATABASE,
            "SELECT coalesce(max(epoch), 0) FROM warmspare.epoch",
        )
        .await
        .unwrap_or_default();
    let outcome = Outcome {
        available: true,
        rto_seconds: Some(rto.as_secs_f64()),
        rpo_seconds: Some(rpo.as_secs_f64()),
        lease_seconds: Some(lease_seconds),
        epoch,
        lease_ttl_seconds: config.lease_ttl.as_secs_f64(),
        spare_rows_after: Some(rows),
    };
    let detail = format!(
        "spare promoted at epoch {} (recorded in warmspare.epoch: {recorded}); \
         RTO {:.2}s (kill -> first write on the spare; lease TTL {}s), \
         RPO {:.2}s (age of the restored snapshot at the kill); {rows} rows on the spare",
        epoch.map_or_else(|| "?".to_owned(), |e| e.to_string()),
        rto.as_secs_f64(),
        config.lease_ttl.as_secs(),
        rpo.as_secs_f64(),
    );
    Ok((outcome, detail))
}

/// One row written on `cluster`, as the service's first write after the
/// failover would be.
async fn try_write(cluster: &Cluster) -> anyhow::Result<()> {
    cluster
        .psql_in(
            DATABASE,
            "INSERT INTO packages (origin, name, version, release, ident, checksum) \
             VALUES ('demo', 'after-failover', '1.0.0', to_char(clock_timestamp(), \
             'YYYYMMDDHH24MISSUS'), 'demo/after-failover/1.0.0/' || to_char(clock_timestamp(), \
             'YYYYMMDDHH24MISSUS'), repeat('0', 64))",
        )
        .await?;
    Ok(())
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + WAIT;
    while !done() {
        if Instant::now() > deadline {
            bail!("timed out after {WAIT:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Polls `check` until it is true or [`WAIT`] passes.
async fn deadline_loop<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
