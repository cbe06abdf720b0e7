//! End to end: two lease drivers in one process, each with the real
//! PostgreSQL actions on its own cluster (a primary and a streaming standby
//! made with `pg_basebackup -R`, or a standby fed only from the primary's
//! WAL archive), the lease on the real S3 server (moto).
//!
//! Skipped (with a note) when moto is not installed, unless
//! `WARMSPARE_REQUIRE_S3` is set.

use std::sync::Arc;
use std::time::{Duration, Instant};

use warmspare_failover::actions::{Hooks, PostgresActions, SiteActions};
use warmspare_failover::driver::{CommandReply, lease_store_config};
use warmspare_failover::policy::{Command, PolicyConfig, Target};
use warmspare_failover::probe::{Probe, ProbeRunner};
use warmspare_failover::{DriverHandle, FailoverMode};
use warmspare_store::{CompareAndSwap, ConditionalPutCas, Store, StoreConfig};
use warmspare_testkit::{Fault, FaultStore, Op, PostgresCluster, S3Server, postgres_scratch_dir};

use crate::support::{RecordingCas, Running, fast_policy, overlap_monitor, start_driver, wait_for};

/// A lease store on a fresh bucket, opened with the lease's bounded retries.
pub(crate) async fn lease_store(policy: &PolicyConfig) -> Option<Store> {
    let s3 = S3Server::try_shared().await.expect("s3")?;
    let bucket = s3.unique_bucket("lease").await.expect("bucket");
    let config = StoreConfig::new(format!("s3://{bucket}"))
        .with_endpoint(s3.endpoint())
        .with_region(s3.region())
        .with_allow_http(true)
        .with_path_style(true)
        .with_credentials(s3.access_key_id(), s3.secret_access_key());
    Some(Store::open(&lease_store_config(&config, policy)).expect("open store"))
}

/// A streaming standby of `primary`.
pub(crate) async fn standby_of(primary: &PostgresCluster) -> PostgresCluster {
    let scratch = postgres_scratch_dir().expect("scratch");
    let target = scratch.path().join("standby");
    let output = tokio::process::Command::new(primary.bin_dir().join("pg_basebackup"))
        .arg("-d")
        .arg(primary.url())
        .arg("-D")
        .arg(&target)
        .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"])
        .output()
        .await
        .expect("run pg_basebackup");
    assert!(output.status.success(), "{output:?}");
    PostgresCluster::builder()
        .from_data_dir(&target)
        .start()
        .await
        .expect("start standby")
}

pub(crate) fn site_actions(site: &str, cluster: &PostgresCluster) -> Arc<SiteActions> {
    Arc::new(SiteActions {
        database: PostgresActions::new(cluster.url(), site),
        hooks: Hooks {
            site: site.into(),
            on_promote: Vec::new(),
            on_fence: Vec::new(),
            on_restart: Vec::new(),
            timeout: Duration::from_secs(5),
        },
    })
}

/// Local PostgreSQL probes feeding the driver, as the agent will run them.
pub(crate) fn probes(
    handle: &DriverHandle,
    cluster: &PostgresCluster,
    policy: &PolicyConfig,
) -> tokio::task::JoinHandle<()> {
    let runner = ProbeRunner {
        target: Target::Local,
        probes: vec![Probe::Postgres {
            url: cluster.url(),
            write_check: false,
        }],
        interval: policy.read_interval,
        timeout: Duration::from_secs(1),
    };
    let (tx, _) = tokio::sync::watch::channel(Vec::new());
    tokio::spawn(runner.run(handle.clone(), Arc::new(tx)))
}

/// Whether a write to `cluster` is accepted now.
pub(crate) async fn write_ok(cluster: &PostgresCluster) -> bool {
    cluster
        .psql("CREATE TABLE IF NOT EXISTS app (x int); INSERT INTO app VALUES (1)")
        .await
        .is_ok()
}

/// Waits for the traffic gate of `handle` to open. The database turns
/// writable a moment *before* the gate opens (the gate waits for the
/// promotion to return), never after.
pub(crate) async fn active(handle: &DriverHandle) -> bool {
    wait_for(Duration::from_secs(5), async || handle.may_accept_traffic()).await
}

async fn read_only(cluster: &PostgresCluster) -> bool {
    cluster
        .psql("SHOW default_transaction_read_only")
        .await
        .is_ok_and(|v| v.trim() == "on")
}

pub(crate) struct Pair {
    pub(crate) primary_pg: PostgresCluster,
    pub(crate) spare_pg: PostgresCluster,
    pub(crate) primary: Running,
    pub(crate) spare: Running,
    pub(crate) probes: Vec<tokio::task::JoinHandle<()>>,
}

/// A primary holding the lease and accepting writes, and a streaming
/// standby watching it. `primary_cas` lets a test wrap the primary's view
/// of the repository.
async fn pair(
    policy: &PolicyConfig,
    spare_policy: &PolicyConfig,
    primary_cas: impl FnOnce(&Store) -> Arc<dyn CompareAndSwap>,
) -> Option<Pair> {
    let store = lease_store(policy).await?;
    let primary_pg = PostgresCluster::start().await.expect("primary");
    let spare_pg = standby_of(&primary_pg).await;
    let primary_cas = primary_cas(&store);
    let spare_cas = Arc::clone(store.cas());
    Some(
        pair_of(
            policy,
            spare_policy,
            primary_pg,
            spare_pg,
            primary_cas,
            spare_cas,
        )
        .await,
    )
}

/// [`pair`] on given clusters and views of the repository.
async fn pair_of(
    policy: &PolicyConfig,
    spare_policy: &PolicyConfig,
    primary_pg: PostgresCluster,
    spare_pg: PostgresCluster,
    primary_cas: Arc<dyn CompareAndSwap>,
    spare_cas: Arc<dyn CompareAndSwap>,
) -> Pair {
    let primary_actions = site_actions("primary", &primary_pg);
    pair_with(
        policy,
        spare_policy,
        primary_pg,
        spare_pg,
        primary_cas,
        spare_cas,
        primary_actions,
    )
    .await
}

/// [`pair_of`] with the primary's actions given (its hooks).
pub(crate) async fn pair_with(
    policy: &PolicyConfig,
    spare_policy: &PolicyConfig,
    primary_pg: PostgresCluster,
    spare_pg: PostgresCluster,
    primary_cas: Arc<dyn CompareAndSwap>,
    spare_cas: Arc<dyn CompareAndSwap>,
    primary_actions: Arc<SiteActions>,
) -> Pair {
    let primary = start_driver(
        policy.clone(),
        "primary",
        "spare",
        true,
        primary_cas,
        primary_actions,
    );
    let spare = start_driver(
        spare_policy.clone(),
        "spare",
        "primary",
        false,
        spare_cas,
        site_actions("spare", &spare_pg),
    );
    let probes = vec![
        probes(&primary.handle, &primary_pg, policy),
        probes(&spare.handle, &spare_pg, spare_policy),
    ];
    assert!(
        wait_for(Duration::from_secs(20), async || primary
            .handle
            .may_accept_traffic())
        .await,
        "primary never accepted: {:?}",
        primary.handle.state()
    );
    assert!(
        wait_for(Duration::from_secs(10), async || write_ok(&primary_pg)
            .await)
        .await,
        "primary database never writable"
    );
    assert!(!spare.handle.may_accept_traffic());
    assert!(!write_ok(&spare_pg).await, "the standby accepts no writes");
    Pair {
        primary_pg,
        spare_pg,
        primary,
        spare,
        probes,
    }
}

async fn epochs(cluster: &PostgresCluster) -> String {
    cluster
        .psql("SELECT string_agg(epoch::text || ':' || site, ',' ORDER BY epoch) FROM warmspare.epoch")
        .await
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_primary_is_replaced_by_the_promoted_standby() {
    let policy = fast_policy(Duration::from_secs(3));
    let Some(mut p) = pair(&policy, &policy, |s| Arc::clone(s.cas())).await else {
        return;
    };
    assert_eq!(epochs(&p.primary_pg).await.trim(), "1:primary");
    // Let the primary's epoch row reach the standby.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // kill -9 of the whole primary site: its driver and its database.
    p.primary.kill().await;
    p.probes[0].abort();
    p.primary_pg.kill().await.expect("kill primary");
    let killed = Instant::now();
    assert!(
        wait_for(Duration::from_secs(30), async || write_ok(&p.spare_pg)
            .await)
        .await,
        "spare never accepted writes: {:?}",
        p.spare.handle.state()
    );
    let took = killed.elapsed();
    eprintln!("failover (ttl 3s): first write accepted {took:?} after kill -9");
    assert!(active(&p.spare.handle).await);
    assert_eq!(p.spare.handle.current_epoch(), Some(2));
    assert_eq!(epochs(&p.spare_pg).await.trim(), "1:primary,2:spare");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_cut_from_the_repository_fences_itself_before_the_spare_promotes() {
    let policy = fast_policy(Duration::from_secs(3));
    let fault = std::sync::Mutex::new(None);
    let Some(p) = pair(&policy, &policy, |s| {
        let f = Arc::new(FaultStore::new(Arc::clone(s.object_store())));
        *fault.lock().unwrap() = Some(Arc::clone(&f));
        Arc::new(ConditionalPutCas::new(f))
    })
    .await
    else {
        return;
    };
    let fault = fault.lock().unwrap().take().unwrap();
    let (overlaps, monitor) = overlap_monitor(p.primary.handle.clone(), p.spare.handle.clone());
    for op in [Op::Put, Op::Get, Op::Head] {
        fault.inject(Fault::error(op));
    }
    let cut = Instant::now();
    // The primary's database turns read-only...
    assert!(
        wait_for(Duration::from_secs(15), async || read_only(&p.primary_pg)
            .await)
        .await,
        "primary never fenced: {:?}",
        p.primary.handle.state()
    );
    let fenced = cut.elapsed();
    assert!(!p.primary.handle.may_accept_traffic());
    assert!(
        !write_ok(&p.primary_pg).await,
        "fenced primary refuses writes"
    );
    // ...before the spare is promoted.
    assert!(
        !p.spare.handle.may_accept_traffic() && !write_ok(&p.spare_pg).await,
        "spare promoted before the primary fenced"
    );
    assert!(
        wait_for(Duration::from_secs(30), async || write_ok(&p.spare_pg)
            .await)
        .await,
        "spare never took over: {:?}",
        p.spare.handle.state()
    );
    let promoted = cut.elapsed();
    eprintln!("repository cut: primary fenced after {fenced:?}, spare writable after {promoted:?}");
    assert!(fenced < promoted);
    assert!(!write_ok(&p.primary_pg).await, "old primary stays fenced");
    assert_eq!(
        *overlaps.lock().unwrap(),
        0,
        "both sites accepted traffic at once"
    );
    monitor.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_mode_waits_for_the_operator() {
    let policy = fast_policy(Duration::from_secs(3));
    let manual = PolicyConfig {
        mode: FailoverMode::Manual,
        ..policy.clone()
    };
    let Some(mut p) = pair(&policy, &manual, |s| Arc::clone(s.cas())).await else {
        return;
    };
    p.primary.kill().await;
    p.probes[0].abort();
    p.primary_pg.kill().await.expect("kill primary");
    // Well past ttl + margin: nothing happens on its own.
    tokio::time::sleep(policy.lease_ttl * 2 + policy.lease_margin).await;
    assert!(!p.spare.handle.may_accept_traffic());
    assert!(
        !write_ok(&p.spare_pg).await,
        "manual mode promoted on its own"
    );
    let reply = p
        .spare
        .handle
        .command(Command::Failover { force: false })
        .await
        .expect("driver runs");
    assert!(matches!(reply, CommandReply::Accepted(_)), "{reply:?}");
    assert!(
        wait_for(Duration::from_secs(15), async || write_ok(&p.spare_pg)
            .await)
        .await,
        "spare never took over after the command: {:?}",
        p.spare.handle.state()
    );
    assert!(active(&p.spare.handle).await);
    assert_eq!(p.spare.handle.current_epoch(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_second_repository_stall_causes_no_failover_with_defaults() {
    let policy = PolicyConfig::default();
    let fault = std::sync::Mutex::new(None);
    let Some(p) = pair(&policy, &policy, |s| {
        let f = Arc::new(FaultStore::new(Arc::clone(s.object_store())));
        *fault.lock().unwrap() = Some(Arc::clone(&f));
        Arc::new(ConditionalPutCas::new(f))
    })
    .await
    else {
        return;
    };
    let fault = fault.lock().unwrap().take().unwrap();
    let (overlaps, monitor) = overlap_monitor(p.primary.handle.clone(), p.spare.handle.clone());
    // Every request of the primary to the repository takes 2 s longer, for
    // several lease lifetimes.
    let ids: Vec<_> = [Op::Put, Op::Get, Op::Head]
        .into_iter()
        .map(|op| fault.inject(Fault::latency(op, Duration::from_secs(2))))
        .collect();
    let until = Instant::now() + policy.lease_ttl * 3;
    while Instant::now() < until {
        assert!(
            p.primary.handle.may_accept_traffic(),
            "primary lost the lease under a 2 s stall: {:?}",
            p.primary.handle.state()
        );
        assert!(!p.spare.handle.may_accept_traffic());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for id in ids {
        fault.remove(id);
    }
    assert!(write_ok(&p.primary_pg).await);
    assert_eq!(p.primary.handle.current_epoch(), Some(1));
    assert_eq!(*overlaps.lock().unwrap(), 0);
    monitor.abort();
}

/// The benchmark behind `benches/failover.sh`: time from `kill -9` of the
/// primary (driver and database) to the first write accepted by the spare,
/// with the shipped defaults, over `WARMSPARE_FAILOVER_RUNS` runs (20).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: minutes; run by benches/failover.sh"]
async fn failover_time_with_defaults() {
    let runs: usize = std::env::var("WARMSPARE_FAILOVER_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let policy = PolicyConfig::default();
    let mut times = Vec::new();
    for run in 0..runs {
        let Some(mut p) = pair(&policy, &policy, |s| Arc::clone(s.cas())).await else {
            return;
        };
        // Kill at a random phase of the renewal cycle.
        let phase = Duration::from_millis(rand_phase(run) % 2000);
        tokio::time::sleep(phase).await;
        p.primary.kill().await;
        p.probes[0].abort();
        p.primary_pg.kill().await.expect("kill primary");
        let killed = Instant::now();
        assert!(
            wait_for(Duration::from_secs(60), async || write_ok(&p.spare_pg)
                .await)
            .await,
            "spare never accepted writes: {:?}",
            p.spare.handle.state()
        );
        let took = killed.elapsed();
        eprintln!("run {}: {:.2}s", run + 1, took.as_secs_f64());
        times.push(took);
    }
    times.sort();
    let secs = |d: Duration| d.as_secs_f64();
    println!(
        "failover time over {} runs (kill -9 -> first write on the spare): min {:.2}s median {:.2}s max {:.2}s",
        times.len(),
        secs(times[0]),
        secs(times[times.len() / 2]),
        secs(times[times.len() - 1])
    );
}

fn rand_phase(run: usize) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_usize(run);
    h.finish()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_switchover_hands_over_with_the_committed_rows() {
    let policy = fast_policy(Duration::from_secs(3));
    let Some(p) = pair(&policy, &policy, |s| Arc::clone(s.cas())).await else {
        return;
    };
    // The holder must see its peer healthy before it hands over.
    let peer = peer_probes(&p, &policy);
    p.primary_pg
        .psql("CREATE TABLE kept (n int); INSERT INTO kept SELECT generate_series(1, 1000)")
        .await
        .expect("rows");
    let (overlaps, monitor) = overlap_monitor(p.primary.handle.clone(), p.spare.handle.clone());
    let mut reply = CommandReply::Refused(String::new());
    assert!(
        wait_for(Duration::from_secs(10), async || {
            reply = p
                .primary
                .handle
                .command(Command::Switchover {
                    to: "spare".into(),
                    force: false,
                })
                .await
                .expect("driver runs");
            matches!(reply, CommandReply::Accepted(_))
        })
        .await,
        "{reply:?}"
    );
    assert!(
        wait_for(Duration::from_secs(15), async || write_ok(&p.spare_pg)
            .await)
        .await,
        "spare never took over: {:?}\nprimary: {:?}",
        p.spare.handle.state(),
        p.primary.handle.state()
    );
    assert!(read_only(&p.primary_pg).await, "old primary fenced");
    assert!(!p.primary.handle.may_accept_traffic());
    assert!(active(&p.spare.handle).await);
    assert_eq!(p.spare.handle.current_epoch(), Some(2));
    assert_eq!(
        p.spare_pg
            .psql("SELECT count(*) FROM kept")
            .await
            .unwrap()
            .trim(),
        "1000"
    );
    assert_eq!(*overlaps.lock().unwrap(), 0);
    monitor.abort();
    peer.abort();
}

/// Peer probes of `spare_pg` feeding the primary's driver: a holder hands
/// over only to a peer it sees healthy.
pub(crate) fn peer_probes(p: &Pair, policy: &PolicyConfig) -> tokio::task::JoinHandle<()> {
    let peer = ProbeRunner {
        target: Target::Peer,
        probes: vec![Probe::Postgres {
            url: p.spare_pg.url(),
            write_check: false,
        }],
        interval: policy.read_interval,
        timeout: Duration::from_secs(1),
    };
    let (tx, _) = tokio::sync::watch::channel(Vec::new());
    tokio::spawn(peer.run(p.primary.handle.clone(), Arc::new(tx)))
}

/// A standby of `primary` fed only from the WAL archive in `archive` (no
/// streaming): it sees a segment once the primary's archiver copied it.
async fn archive_standby_of(
    primary: &PostgresCluster,
    archive: &std::path::Path,
) -> PostgresCluster {
    let scratch = postgres_scratch_dir().expect("scratch");
    let target = scratch.path().join("standby");
    let output = tokio::process::Command::new(primary.bin_dir().join("pg_basebackup"))
        .arg("-d")
        .arg(primary.url())
        .arg("-D")
        .arg(&target)
        .args(["-X", "stream", "-c", "fast", "--no-sync"])
        .output()
        .await
        .expect("run pg_basebackup");
    assert!(output.status.success(), "{output:?}");
    std::fs::write(target.join("standby.signal"), "").expect("standby.signal");
    PostgresCluster::builder()
        .from_data_dir(&target)
        .setting("restore_command", format!("cp {}/%f %p", archive.display()))
        .setting("wal_retrieve_retry_interval", "100ms")
        .setting("archive_mode", "off")
        .start()
        .await
        .expect("start standby")
}

/// The planned switchover is zero-data-loss by construction. The spare is
/// fed from the WAL archive only, and archiving a segment takes two
/// seconds (as a copy to remote storage does), so the rows committed just
/// before the switchover (in the primary's current, unarchived WAL segment)
/// reach the spare seconds after the handover: promoting it at once loses
/// them (this test fails when the wait is removed from the policy). The
/// holder fences, reads its final WAL position and switches the WAL segment
/// (archiving is on), and hands the lease over with that position; the
/// spare holds the lease but promotes only once it has replayed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_to_an_archive_fed_standby_waits_for_the_final_wal_position() {
    let policy = fast_policy(Duration::from_secs(3));
    let Some(store) = lease_store(&policy).await else {
        return;
    };
    let archive = postgres_scratch_dir().expect("archive");
    let primary_pg = PostgresCluster::builder()
        .setting("archive_mode", "on")
        .setting(
            "archive_command",
            format!("sleep 2; cp %p {}/%f", archive.path().display()),
        )
        .start()
        .await
        .expect("primary");
    let spare_pg = archive_standby_of(&primary_pg, archive.path()).await;
    let primary_cas = RecordingCas::new(Arc::clone(store.cas()));
    let spare_cas = RecordingCas::new(Arc::clone(store.cas()));
    let p = pair_of(
        &policy,
        &policy,
        primary_pg,
        spare_pg,
        Arc::new(primary_cas.clone()),
        Arc::new(spare_cas.clone()),
    )
    .await;
    let peer = peer_probes(&p, &policy);
    let (overlaps, monitor) = overlap_monitor(p.primary.handle.clone(), p.spare.handle.clone());

    // Committed at the primary just before the switchover; not archived,
    // so not on the spare.
    p.primary_pg
        .psql("CREATE TABLE kept (n int); INSERT INTO kept SELECT generate_series(1, 1000)")
        .await
        .expect("rows");
    assert!(
        p.spare_pg.psql("SELECT count(*) FROM kept").await.is_err(),
        "the spare must not have the rows yet, or this test proves nothing"
    );
    let mut reply = CommandReply::Refused(String::new());
    assert!(
        wait_for(Duration::from_secs(10), async || {
            reply = p
                .primary
                .handle
                .command(Command::Switchover {
                    to: "spare".into(),
                    force: false,
                })
                .await
                .expect("driver runs");
            matches!(reply, CommandReply::Accepted(_))
        })
        .await,
        "{reply:?}"
    );
    assert!(
        wait_for(Duration::from_secs(30), async || write_ok(&p.spare_pg)
            .await)
        .await,
        "spare never took over: {:?}\nprimary: {:?}",
        p.spare.handle.state(),
        p.primary.handle.state()
    );
    assert!(active(&p.spare.handle).await);
    assert_eq!(p.spare.handle.current_epoch(), Some(2));
    assert!(read_only(&p.primary_pg).await, "old primary fenced");
    assert!(!p.primary.handle.may_accept_traffic());

    // Every committed row is on the new primary, and both epochs.
    let count = p.spare_pg.psql("SELECT count(*) FROM kept").await.unwrap();
    assert_eq!(count.trim(), "1000");
    assert_eq!(epochs(&p.spare_pg).await.trim(), "1:primary,2:spare");

    // The primary released the lease with its final position; the spare
    // took it with the same position, and its recovery ended at or past it.
    let released = primary_cas
        .written()
        .into_iter()
        .find(|r| r.released)
        .expect("a release");
    assert_eq!(released.successor.as_deref(), Some("spare"));
    let final_lsn = released.final_lsn.expect("the final WAL position");
    let taken = spare_cas
        .written()
        .into_iter()
        .find(|r| r.epoch == 2)
        .expect("the spare's takeover");
    assert_eq!(
        (taken.holder.as_str(), taken.final_lsn),
        ("spare", Some(final_lsn))
    );
    let reached = p
        .spare_pg
        .psql(&format!(
            "SELECT pg_last_wal_replay_lsn() >= '{final_lsn}'::pg_lsn"
        ))
        .await
        .unwrap();
    assert_eq!(reached.trim(), "t", "replayed past {final_lsn}");
    assert_eq!(*overlaps.lock().unwrap(), 0);
    monitor.abort();
    peer.abort();
}
