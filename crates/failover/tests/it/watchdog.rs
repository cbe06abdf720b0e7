//! The watchdog with real PostgreSQL and the real S3 server: the primary's
//! database is killed while its lease driver lives on. After
//! `unhealthy_threshold` failed probes the driver runs the `on_restart`
//! hook, before any handover; a hook that brings the database back keeps
//! the service where it is, one that does not leads to the voluntary
//! release of the lease, which the spare takes without waiting for expiry.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use warmspare_failover::actions::{Hooks, PostgresActions, SiteActions};
use warmspare_failover::policy::{Health, PolicyConfig};
use warmspare_testkit::{PostgresCluster, postgres_scratch_dir};

use crate::e2e::{Pair, lease_store, pair_with, peer_probes, standby_of, write_ok};
use crate::support::{RecordingCas, fast_policy, overlap_monitor, wait_for};

/// The primary's actions, with `on_restart` hooks.
fn actions_with_restart(cluster: &PostgresCluster, on_restart: Vec<String>) -> Arc<SiteActions> {
    Arc::new(SiteActions {
        database: PostgresActions::new(cluster.url(), "primary"),
        hooks: Hooks {
            site: "primary".into(),
            on_promote: Vec::new(),
            on_fence: Vec::new(),
            on_restart,
            timeout: Duration::from_secs(30),
        },
    })
}

/// A hook that appends `site role epoch` to `marker`.
fn mark(marker: &Path) -> String {
    format!(
        "echo \"$WARMSPARE_SITE $WARMSPARE_ROLE $WARMSPARE_EPOCH\" >> '{}'",
        marker.display()
    )
}

/// A hook that starts `cluster` again (as the server's user), as a
/// service manager's restart would.
fn start_again(cluster: &PostgresCluster) -> String {
    let run_as = cluster
        .cluster()
        .run_as()
        .map(|user| format!("runuser -u {user} -- "))
        .unwrap_or_default();
    format!(
        "{run_as}'{}' start -D '{}' -l '{}' -w -t 30 -s",
        cluster.bin_dir().join("pg_ctl").display(),
        cluster.data_dir().display(),
        cluster.log_file().display()
    )
}

struct Setup {
    pair: Pair,
    primary_cas: RecordingCas,
    marker: tempfile::TempDir,
    policy: PolicyConfig,
}

async fn setup(restarts_database: bool) -> Option<Setup> {
    let policy = fast_policy(Duration::from_secs(3));
    let store = lease_store(&policy).await?;
    let primary_pg = PostgresCluster::start().await.expect("primary");
    let spare_pg = standby_of(&primary_pg).await;
    let marker = postgres_scratch_dir().expect("scratch");
    let mut hooks = vec![mark(&marker.path().join("restarts"))];
    if restarts_database {
        hooks.push(start_again(&primary_pg));
    }
    let actions = actions_with_restart(&primary_pg, hooks);
    let primary_cas = RecordingCas::new(Arc::clone(store.cas()));
    let pair = pair_with(
        &policy,
        &policy,
        primary_pg,
        spare_pg,
        Arc::new(primary_cas.clone()),
        Arc::clone(store.cas()),
        actions,
    )
    .await;
    Some(Setup {
        pair,
        primary_cas,
        marker,
        policy,
    })
}

fn restarts(marker: &Path) -> Vec<String> {
    std::fs::read_to_string(marker.join("restarts"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Waits until the `on_restart` hook ran, and checks that nothing was
/// handed over by then.
async fn hook_ran_before_any_handover(s: &Setup) {
    let p = &s.pair;
    assert!(
        wait_for(Duration::from_secs(20), async || !restarts(s.marker.path())
            .is_empty())
        .await,
        "the on_restart hook never ran: {:?}",
        p.primary.handle.state()
    );
    assert!(!p.spare.handle.may_accept_traffic(), "handed over first");
    assert!(
        s.primary_cas.written().iter().all(|r| !r.released),
        "released before the restart"
    );
    assert_eq!(restarts(s.marker.path()), ["primary primary 1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_hook_that_brings_the_database_back_prevents_the_handover() {
    let Some(s) = setup(true).await else {
        return;
    };
    let p = &s.pair;
    // The primary sees the spare healthy and within its guard: only the
    // recovery keeps it from releasing the lease.
    let peer = peer_probes(p, &s.policy);
    let (overlaps, monitor) = overlap_monitor(p.primary.handle.clone(), p.spare.handle.clone());
    p.primary_pg
        .kill()
        .await
        .expect("kill the primary's database");
    hook_ran_before_any_handover(&s).await;
    assert!(
        wait_for(Duration::from_secs(30), async || write_ok(&p.primary_pg)
            .await)
        .await,
        "the hook did not bring the database back"
    );
    assert!(
        wait_for(Duration::from_secs(10), async || p
            .primary
            .handle
            .state()
            .local
            == Health::Healthy)
        .await
    );
    // Had the service not recovered, the release would have come within
    // the watchdog's grace; watch for twice that, and a lease lifetime.
    let until = Instant::now() + s.policy.watchdog_grace * 2 + s.policy.lease_ttl;
    while Instant::now() < until {
        assert!(
            !p.spare.handle.may_accept_traffic(),
            "handed over although the database came back: {:?}",
            p.spare.handle.state()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(p.primary.handle.may_accept_traffic());
    assert_eq!(p.primary.handle.current_epoch(), Some(1));
    assert!(s.primary_cas.written().iter().all(|r| !r.released));
    assert_eq!(restarts(s.marker.path()).len(), 1, "one restart");
    assert!(!write_ok(&p.spare_pg).await, "the spare stays a standby");
    assert_eq!(*overlaps.lock().unwrap(), 0);
    monitor.abort();
    peer.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrecovered_primary_restarts_then_releases_the_lease_to_the_spare() {
    let Some(s) = setup(false).await else {
        return;
    };
    let p = &s.pair;
    let peer = peer_probes(p, &s.policy);
    let (overlaps, monitor) = overlap_monitor(p.primary.handle.clone(), p.spare.handle.clone());
    p.primary_pg
        .kill()
        .await
        .expect("kill the primary's database");
    hook_ran_before_any_handover(&s).await;
    // The database stays down: after the grace the primary releases the
    // lease (its driver lives on and would renew it forever), and the
    // spare takes it at its next read.
    assert!(
        wait_for(Duration::from_secs(30), async || write_ok(&p.spare_pg)
            .await)
        .await,
        "the spare never took over: {:?}\nprimary: {:?}",
        p.spare.handle.state(),
        p.primary.handle.state()
    );
    // The database takes writes as soon as it is promoted; the driver
    // admits traffic once the promotion's result reached it.
    assert!(
        wait_for(Duration::from_secs(10), async || p
            .spare
            .handle
            .may_accept_traffic())
        .await,
        "the spare never admitted traffic: {:?}",
        p.spare.handle.state()
    );
    assert_eq!(p.spare.handle.current_epoch(), Some(2));
    let release = s
        .primary_cas
        .written()
        .into_iter()
        .find(|r| r.released)
        .expect("the primary released the lease");
    assert_eq!((release.epoch, release.successor), (1, None));
    assert!(!p.primary.handle.may_accept_traffic());
    assert_eq!(restarts(s.marker.path()).len(), 1, "one restart");
    assert_eq!(*overlaps.lock().unwrap(), 0);
    monitor.abort();
    peer.abort();
}
