//! Shared helpers of the driver tests.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use warmspare_failover::actions::Actions;
use warmspare_failover::driver::{BootClock, Clock, Driver, DriverConfig, DriverHandle};
use warmspare_failover::policy::{AlertKind, FenceReason, HookKind, PromoteTrigger, Severity};
use warmspare_failover::{FailoverConfig, policy::PolicyConfig};
use warmspare_store::CompareAndSwap;

/// Fast timing for tests: `ttl` with the probe interval at `ttl / 6`.
pub(crate) fn fast_policy(ttl: Duration) -> PolicyConfig {
    PolicyConfig::from_failover(&FailoverConfig {
        lease_ttl: ttl,
        interval: ttl / 6,
        ..FailoverConfig::default()
    })
}

/// What a recording [`Actions`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seen {
    Fence(FenceReason),
    Unfence(u64),
    Promote(u64, PromoteTrigger),
    Hook(HookKind, u64),
    Alert(AlertKind),
}

/// An [`Actions`] that records the calls.
#[derive(Debug, Default, Clone)]
pub(crate) struct Recorder(pub(crate) Arc<Mutex<Vec<Seen>>>);

impl Recorder {
    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.0.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl Actions for Recorder {
    async fn fence(&self, reason: FenceReason) -> warmspare_failover::Result<()> {
        self.0.lock().unwrap().push(Seen::Fence(reason));
        Ok(())
    }
    async fn unfence(&self, epoch: u64) -> warmspare_failover::Result<()> {
        self.0.lock().unwrap().push(Seen::Unfence(epoch));
        Ok(())
    }
    async fn promote(&self, epoch: u64, trigger: PromoteTrigger) -> warmspare_failover::Result<()> {
        self.0.lock().unwrap().push(Seen::Promote(epoch, trigger));
        Ok(())
    }
    async fn run_hook(&self, kind: HookKind, epoch: u64) -> warmspare_failover::Result<()> {
        self.0.lock().unwrap().push(Seen::Hook(kind, epoch));
        Ok(())
    }
    async fn alert(&self, _: Severity, kind: AlertKind, _: &str) {
        self.0.lock().unwrap().push(Seen::Alert(kind));
    }
}

/// A running driver.
pub(crate) struct Running {
    pub(crate) handle: DriverHandle,
    pub(crate) task: tokio::task::JoinHandle<warmspare_failover::Result<()>>,
}

impl Running {
    /// Stops it as `kill -9` would: no shutdown path runs.
    pub(crate) async fn kill(&mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

pub(crate) fn start_driver(
    policy: PolicyConfig,
    site: &str,
    peer: &str,
    initial: bool,
    cas: Arc<dyn CompareAndSwap>,
    actions: Arc<dyn Actions>,
) -> Running {
    let clock: Arc<dyn Clock> = Arc::new(BootClock::new());
    let driver = Driver::new(
        DriverConfig::new(policy, site, peer, initial),
        cas,
        actions,
        clock,
    )
    .expect("driver");
    let handle = driver.handle();
    let task = tokio::spawn(driver.run(std::future::pending()));
    Running { handle, task }
}

/// Polls `condition` every 20 ms until it holds or `limit` passes.
pub(crate) async fn wait_for(limit: Duration, mut condition: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    condition().await
}

/// Samples both handles every 5 ms and counts instants at which both said
/// they may accept traffic.
pub(crate) fn overlap_monitor(
    a: DriverHandle,
    b: DriverHandle,
) -> (Arc<Mutex<u64>>, tokio::task::JoinHandle<()>) {
    let overlaps = Arc::new(Mutex::new(0u64));
    let o = Arc::clone(&overlaps);
    let task = tokio::spawn(async move {
        loop {
            if a.may_accept_traffic() && b.may_accept_traffic() {
                *o.lock().unwrap() += 1;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    (overlaps, task)
}
