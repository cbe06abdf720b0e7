//! Shared helpers of the driver tests.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use warmspare_failover::actions::Actions;
use warmspare_failover::driver::{BootClock, Clock, Driver, DriverConfig, DriverHandle};
use warmspare_failover::policy::LeaseRecord;
use warmspare_failover::policy::{
    AlertKind, FenceReason, HookKind, Lsn, PromoteTrigger, Replay, Role, Severity,
};
use warmspare_failover::{FailoverConfig, policy::PolicyConfig};
use warmspare_store::object_store::path::Path;
use warmspare_store::{CompareAndSwap, Version};

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
    /// A promotion returned (after [`Recorder::promote_delay`]).
    Promoted(u64),
    FinalLsn,
    Hook(HookKind, u64),
    Restart(Role, u64),
    Alert(AlertKind),
}

/// An [`Actions`] that records the calls. Its database answers the final
/// WAL position and the replay position it is given (by default `0/100`
/// and a standby that replayed everything), and takes `promote_delay` to
/// promote.
#[derive(Debug, Clone)]
pub(crate) struct Recorder {
    seen: Arc<Mutex<Vec<Seen>>>,
    pub(crate) final_lsn: Arc<Mutex<Option<Lsn>>>,
    pub(crate) replay: Arc<Mutex<Replay>>,
    pub(crate) promote_delay: Arc<Mutex<Duration>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            seen: Arc::default(),
            final_lsn: Arc::new(Mutex::new(Some(Lsn(0x100)))),
            replay: Arc::new(Mutex::new(Replay::Standby(Lsn(u64::MAX)))),
            promote_delay: Arc::default(),
        }
    }
}

impl Recorder {
    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn push(&self, seen: Seen) {
        self.seen.lock().unwrap().push(seen);
    }
}

#[async_trait::async_trait]
impl Actions for Recorder {
    async fn fence(&self, reason: FenceReason) -> warmspare_failover::Result<()> {
        self.push(Seen::Fence(reason));
        Ok(())
    }
    async fn unfence(&self, epoch: u64) -> warmspare_failover::Result<()> {
        self.push(Seen::Unfence(epoch));
        Ok(())
    }
    async fn promote(&self, epoch: u64, trigger: PromoteTrigger) -> warmspare_failover::Result<()> {
        self.push(Seen::Promote(epoch, trigger));
        let delay = *self.promote_delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        self.push(Seen::Promoted(epoch));
        Ok(())
    }
    async fn final_lsn(&self) -> warmspare_failover::Result<Lsn> {
        self.push(Seen::FinalLsn);
        let lsn = *self.final_lsn.lock().unwrap();
        lsn.ok_or_else(|| warmspare_failover::Error::Action {
            action: "read the final WAL position",
            target: "recorder".into(),
            message: "refused by the test".into(),
        })
    }
    async fn replay_position(&self) -> warmspare_failover::Result<Replay> {
        Ok(*self.replay.lock().unwrap())
    }
    async fn run_hook(&self, kind: HookKind, epoch: u64) -> warmspare_failover::Result<()> {
        self.push(Seen::Hook(kind, epoch));
        Ok(())
    }
    async fn restart_local(&self, role: Role, epoch: u64) -> warmspare_failover::Result<()> {
        self.push(Seen::Restart(role, epoch));
        Ok(())
    }
    async fn alert(&self, _: Severity, kind: AlertKind, _: &str) {
        self.push(Seen::Alert(kind));
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

/// A compare-and-swap that records every lease record it wrote
/// successfully, to check what a site handed over.
#[derive(Debug, Clone)]
pub(crate) struct RecordingCas {
    inner: Arc<dyn CompareAndSwap>,
    written: Arc<Mutex<Vec<LeaseRecord>>>,
}

impl RecordingCas {
    pub(crate) fn new(inner: Arc<dyn CompareAndSwap>) -> Self {
        RecordingCas {
            inner,
            written: Arc::default(),
        }
    }

    /// The records written so far, oldest first.
    pub(crate) fn written(&self) -> Vec<LeaseRecord> {
        self.written.lock().unwrap().clone()
    }

    fn record(&self, content: &[u8]) {
        if let Ok(record) = LeaseRecord::from_json(content) {
            self.written.lock().unwrap().push(record);
        }
    }
}

#[async_trait::async_trait]
impl CompareAndSwap for RecordingCas {
    async fn read(&self, path: &Path) -> warmspare_store::Result<Option<(Bytes, Version)>> {
        self.inner.read(path).await
    }

    async fn create(&self, path: &Path, content: Bytes) -> warmspare_store::Result<Version> {
        let version = self.inner.create(path, content.clone()).await?;
        self.record(&content);
        Ok(version)
    }

    async fn update(
        &self,
        path: &Path,
        content: Bytes,
        expected: &Version,
    ) -> warmspare_store::Result<Version> {
        let version = self.inner.update(path, content.clone(), expected).await?;
        self.record(&content);
        Ok(version)
    }

    async fn delete(&self, path: &Path) -> warmspare_store::Result<()> {
        self.inner.delete(path).await
    }
}
