//! End to end through a real network cut: the primary's lease driver reaches
//! the S3 server (moto) through a [`TcpProxy`] the test controls, the
//! spare's directly. Cutting the proxy partitions only the primary from the
//! repository; the primary's database must refuse writes strictly before
//! the spare is promoted, and at no sampled instant may both databases
//! accept a write.
//!
//! The databases are real PostgreSQL clusters (a primary and a streaming
//! standby made with `pg_basebackup -R`), watched from outside by a sampler
//! that tries a write on each and asks the spare whether it is still in
//! recovery, so the test judges what clients would see rather than what
//! the drivers believe.
//!
//! Skipped (with a note) when moto is not installed, unless
//! `WARMSPARE_REQUIRE_S3` is set.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::{Connection as _, PgConnection};
use warmspare_failover::driver::{lease_store_config, read_lease};
use warmspare_failover::policy::PolicyConfig;
use warmspare_store::{Store, StoreConfig};
use warmspare_testkit::{Cut, PostgresCluster, S3Server, TcpProxy};

use crate::e2e::{probes, site_actions, standby_of};
use crate::support::{fast_policy, overlap_monitor, start_driver, wait_for};

/// What one write attempt saw.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Write {
    /// The row was committed.
    Accepted,
    /// Refused as a read-only transaction (SQLSTATE 25006): a fenced
    /// primary or a standby in recovery.
    ReadOnly,
    /// Anything else: no connection, a session terminated by the fence.
    Failed(String),
}

/// One round of the sampler: the primary first, then the spare.
#[derive(Debug, Clone)]
struct Sample {
    /// When the round started.
    at: Instant,
    primary: Write,
    /// `pg_is_in_recovery()` on the spare, asked after the primary's write
    /// attempt returned.
    spare_in_recovery: Option<bool>,
    spare: Write,
}

async fn connect(url: &str) -> Result<PgConnection, String> {
    match tokio::time::timeout(Duration::from_secs(2), PgConnection::connect(url)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("connect timed out".into()),
    }
}

/// Tries to commit one row on a fresh connection.
async fn try_write(url: &str, n: i64) -> Write {
    let mut conn = match connect(url).await {
        Ok(conn) => conn,
        Err(e) => return Write::Failed(e),
    };
    let result = sqlx::query("INSERT INTO app (n) VALUES ($1)")
        .bind(n)
        .execute(&mut conn)
        .await;
    let _ = conn.close().await;
    match result {
        Ok(_) => Write::Accepted,
        Err(e)
            if e.as_database_error()
                .and_then(|d| d.code())
                .is_some_and(|c| c == "25006") =>
        {
            Write::ReadOnly
        }
        Err(e) => Write::Failed(e.to_string()),
    }
}

async fn in_recovery(url: &str) -> Option<bool> {
    let mut conn = connect(url).await.ok()?;
    let r = sqlx::query_scalar::<_, bool>("SELECT pg_is_in_recovery()")
        .fetch_one(&mut conn)
        .await
        .ok();
    let _ = conn.close().await;
    r
}

/// Samples both databases back to back until aborted.
fn sampler(
    primary: String,
    spare: String,
) -> (Arc<Mutex<Vec<Sample>>>, tokio::task::JoinHandle<()>) {
    let samples = Arc::new(Mutex::new(Vec::new()));
    let out = Arc::clone(&samples);
    let task = tokio::spawn(async move {
        for n in 0.. {
            let at = Instant::now();
            let primary = try_write(&primary, 2 * n).await;
            let spare_in_recovery = in_recovery(&spare).await;
            let spare = try_write(&spare, 2 * n + 1).await;
            out.lock().unwrap().push(Sample {
                at,
                primary,
                spare_in_recovery,
                spare,
            });
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    (samples, task)
}

fn any_sample(samples: &Mutex<Vec<Sample>>, f: impl Fn(&Sample) -> bool) -> bool {
    samples.lock().unwrap().iter().any(f)
}

/// Where the samples show the primary fenced, the spare out of recovery
/// and the spare writable (indices into the samples).
#[derive(Debug, PartialEq, Eq)]
struct Verdict {
    fenced: usize,
    promoted: usize,
    writable: usize,
}

/// Judges the samples, the path having been cut before `samples[cut]`:
///
/// * no round saw both databases accept a write;
/// * after the cut the primary refused a write as read-only, and never
///   accepted one again;
/// * the fence came strictly before the promotion: some round saw the
///   primary refuse a write and *afterwards* the spare still in recovery
///   (fence ≤ that refusal < that answer < promotion);
/// * the spare left recovery, did not go back, and then accepted writes.
fn judge(samples: &[Sample], cut: usize) -> Result<Verdict, String> {
    if let Some(s) = samples
        .iter()
        .find(|s| s.primary == Write::Accepted && s.spare == Write::Accepted)
    {
        return Err(format!("both databases accepted writes: {s:?}"));
    }
    let after = |i: usize| cut + i;
    let after_cut = &samples[cut..];
    let fenced = after_cut
        .iter()
        .position(|s| s.primary == Write::ReadOnly)
        .map(after)
        .ok_or("the primary never refused a write")?;
    if let Some(s) = samples[fenced..]
        .iter()
        .find(|s| s.primary == Write::Accepted)
    {
        return Err(format!("the fenced primary accepted a write again: {s:?}"));
    }
    if !after_cut
        .iter()
        .any(|s| s.primary == Write::ReadOnly && s.spare_in_recovery == Some(true))
    {
        return Err(format!(
            "no round saw a fenced primary and then a spare in recovery: {after_cut:?}"
        ));
    }
    let promoted = after_cut
        .iter()
        .position(|s| s.spare_in_recovery == Some(false))
        .map(after)
        .ok_or("the spare never left recovery")?;
    if samples[promoted..]
        .iter()
        .any(|s| s.spare_in_recovery == Some(true))
    {
        return Err("the spare went back into recovery".into());
    }
    let writable = after_cut
        .iter()
        .position(|s| s.spare == Write::Accepted)
        .map(after)
        .ok_or("the spare never accepted a write")?;
    if !(fenced < promoted && promoted <= writable) {
        return Err(format!(
            "out of order: fenced {fenced}, promoted {promoted}, writable {writable}"
        ));
    }
    Ok(Verdict {
        fenced,
        promoted,
        writable,
    })
}

/// The S3 server's `host:port`.
fn s3_addr(s3: &S3Server) -> SocketAddr {
    let endpoint = s3.endpoint();
    endpoint
        .strip_prefix("http://")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected S3 endpoint {endpoint}"))
}

/// The lease store for `bucket` at `endpoint`, with the lease's bounded
/// timeouts and retries.
fn lease_store(s3: &S3Server, bucket: &str, endpoint: &str, policy: &PolicyConfig) -> Store {
    let config = StoreConfig::new(format!("s3://{bucket}"))
        .with_endpoint(endpoint)
        .with_region(s3.region())
        .with_allow_http(true)
        .with_path_style(true)
        .with_credentials(s3.access_key_id(), s3.secret_access_key());
    Store::open(&lease_store_config(&config, policy)).expect("open store")
}

async fn epochs(cluster: &PostgresCluster) -> String {
    cluster
        .psql("SELECT string_agg(epoch::text || ':' || site, ',' ORDER BY epoch) FROM warmspare.epoch")
        .await
        .unwrap_or_default()
        .trim()
        .to_owned()
}

async fn read_only(cluster: &PostgresCluster) -> bool {
    cluster
        .psql("SHOW default_transaction_read_only")
        .await
        .is_ok_and(|v| v.trim() == "on")
}

/// The whole scenario, with the path cut the given way.
async fn primary_partitioned_from_the_repository(how: Cut) {
    let Some(s3) = S3Server::try_shared().await.expect("s3") else {
        return;
    };
    let policy = fast_policy(Duration::from_secs(3));
    let bucket = s3.unique_bucket("cut").await.expect("bucket");
    let proxy = TcpProxy::start(s3_addr(s3)).await.expect("proxy");
    let through_proxy = lease_store(s3, &bucket, &format!("http://{}", proxy.addr()), &policy);
    let direct = lease_store(s3, &bucket, &s3.endpoint(), &policy);

    let primary_pg = PostgresCluster::start().await.expect("primary");
    primary_pg
        .psql("CREATE TABLE app (n bigint)")
        .await
        .expect("table");
    let spare_pg = standby_of(&primary_pg).await;
    let mut primary = start_driver(
        policy.clone(),
        "primary",
        "spare",
        true,
        Arc::clone(through_proxy.cas()),
        site_actions("primary", &primary_pg),
    );
    let mut spare = start_driver(
        policy.clone(),
        "spare",
        "primary",
        false,
        Arc::clone(direct.cas()),
        site_actions("spare", &spare_pg),
    );
    let probe_tasks = [
        probes(&primary.handle, &primary_pg, &policy),
        probes(&spare.handle, &spare_pg, &policy),
    ];
    let (overlaps, monitor) = overlap_monitor(primary.handle.clone(), spare.handle.clone());
    let (samples, sampling) = sampler(primary_pg.url(), spare_pg.url());

    // Steady state: the primary holds epoch 1 (through the proxy), its
    // database takes writes, the standby has replayed the epoch row.
    assert!(
        wait_for(Duration::from_secs(20), async || primary
            .handle
            .may_accept_traffic())
        .await,
        "primary never accepted: {:?}",
        primary.handle.state()
    );
    assert_eq!(primary.handle.current_epoch(), Some(1));
    assert!(
        wait_for(Duration::from_secs(10), async || any_sample(
            &samples,
            |s| { s.primary == Write::Accepted && s.spare == Write::ReadOnly }
        ))
        .await,
        "never saw a writable primary next to a read-only standby: {:?}",
        samples.lock().unwrap().last()
    );
    assert!(
        wait_for(Duration::from_secs(10), async || epochs(&spare_pg).await
            == "1:primary")
        .await,
        "the epoch row never reached the standby"
    );
    assert!(
        proxy.connections_accepted() > 0,
        "the primary's lease traffic does not go through the proxy"
    );
    assert!(!spare.handle.may_accept_traffic());

    // Partition the primary from the repository, and only it.
    let cut_at = Instant::now();
    proxy.cut_with(how);
    let cut_index = samples.lock().unwrap().len();

    assert!(
        wait_for(Duration::from_secs(30), async || any_sample(
            &samples,
            |s| { s.spare == Write::Accepted }
        ))
        .await,
        "the spare never accepted a write: {:?}",
        spare.handle.state()
    );
    sampling.abort();
    let _ = sampling.await;
    let samples = samples.lock().unwrap().clone();

    assert_eq!(
        *overlaps.lock().unwrap(),
        0,
        "both drivers allowed traffic at once"
    );
    let Verdict {
        fenced,
        promoted,
        writable,
    } = judge(&samples, cut_index).unwrap_or_else(|why| panic!("{why}"));
    eprintln!(
        "repository cut ({how:?}): primary read-only after {:?}, spare out of recovery after {:?}, \
         spare writable after {:?} ({} samples)",
        samples[fenced].at - cut_at,
        samples[promoted].at - cut_at,
        samples[writable].at - cut_at,
        samples.len() - cut_index,
    );

    // Epochs: the spare took epoch 2, recorded it in its database, and the
    // lease in the repository says so. (The driver may confirm the
    // promotion a moment after the database took its first write.)
    assert!(
        wait_for(Duration::from_secs(10), async || spare
            .handle
            .may_accept_traffic())
        .await,
        "the promoted spare's driver never allowed traffic: {:?}",
        spare.handle.state()
    );
    assert_eq!(spare.handle.current_epoch(), Some(2));
    assert_eq!(epochs(&spare_pg).await, "1:primary,2:spare");
    let (_, lease, _) = read_lease(direct.cas().as_ref(), &warmspare_store::layout::lease())
        .await
        .expect("read the lease")
        .expect("a lease exists");
    assert_eq!((lease.holder.as_str(), lease.epoch), ("spare", 2));
    assert!(!primary.handle.may_accept_traffic());

    // Healing the path does not bring the old primary back: it learns of
    // epoch 2 and stays fenced.
    proxy.restore();
    assert!(
        wait_for(Duration::from_secs(15), async || primary
            .handle
            .state()
            .lease
            .is_some_and(|l| l.epoch == 2 && l.holder == "spare"))
        .await,
        "the old primary never saw the new lease: {:?}",
        primary.handle.state()
    );
    assert!(!primary.handle.may_accept_traffic());
    assert!(read_only(&primary_pg).await, "old primary stays fenced");
    assert_eq!(try_write(&primary_pg.url(), -1).await, Write::ReadOnly);
    assert_eq!(*overlaps.lock().unwrap(), 0);

    monitor.abort();
    for task in probe_tasks {
        task.abort();
    }
    primary.kill().await;
    spare.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_partitioned_from_the_repository_fences_before_the_spare_promotes() {
    primary_partitioned_from_the_repository(Cut::Blackhole).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_whose_repository_connections_are_reset_fences_before_the_spare_promotes() {
    primary_partitioned_from_the_repository(Cut::Reset).await;
}

/// The judgement catches what the end-to-end test exists to catch.
#[test]
fn judge_rejects_overlap_and_late_fencing() {
    use Write::{Accepted as W, ReadOnly as R};
    let t = Instant::now();
    let sample = |primary: Write, in_recovery: bool, spare: Write| Sample {
        at: t,
        primary,
        spare_in_recovery: Some(in_recovery),
        spare,
    };
    let good = vec![
        sample(W, true, R),
        sample(W, true, R),
        sample(R, true, R),
        sample(Write::Failed("terminated".into()), true, R),
        sample(R, false, R),
        sample(R, false, W),
    ];
    assert_eq!(
        judge(&good, 1),
        Ok(Verdict {
            fenced: 2,
            promoted: 4,
            writable: 5
        })
    );
    // Both writable in one round.
    let mut overlap = good.clone();
    overlap[4] = sample(W, false, W);
    assert!(judge(&overlap, 1).unwrap_err().contains("both"));
    // Promoted in the very round that first saw the fence: no witness
    // that the fence came first.
    let same_round = vec![sample(W, true, R), sample(R, false, R), sample(R, false, W)];
    assert!(judge(&same_round, 1).unwrap_err().contains("no round"));
    // Promoted before the fence.
    let late = vec![
        sample(W, true, R),
        sample(W, false, R),
        sample(R, false, R),
        sample(R, false, W),
    ];
    assert!(judge(&late, 1).is_err());
    // Unfenced again.
    let mut unfenced = good.clone();
    unfenced[4] = sample(W, false, R);
    assert!(judge(&unfenced, 1).unwrap_err().contains("again"));
    // Never fenced.
    assert!(judge(&good[..2], 1).unwrap_err().contains("never refused"));
}
