//! Runs a set of probes at an interval and feeds the results into the
//! failover driver: one [`Event::Probe`] per round for the target (healthy
//! when every probe of the round succeeded; the policy's
//! [`HealthTracker`](crate::policy::HealthTracker) applies the thresholds),
//! plus, when a standby database reported a replay lag, an
//! [`Event::ReplicationLag`] (local) or an [`Event::PeerLag`] (peer: what
//! the watchdog checks before it releases the lease to the peer).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{Probe, ProbeResult};
use crate::driver::DriverHandle;
use crate::policy::{Event, Target};

/// Probes one target every `interval`, each probe limited to `timeout`.
#[derive(Debug, Clone)]
pub struct ProbeRunner {
    /// What the results are about.
    pub target: Target,
    /// The probes; all run concurrently in each round.
    pub probes: Vec<Probe>,
    /// Time between the starts of two rounds.
    pub interval: Duration,
    /// Limit per probe.
    pub timeout: Duration,
}

impl ProbeRunner {
    /// Runs one round: every probe concurrently.
    pub async fn round(&self, client: &reqwest::Client) -> Vec<ProbeResult> {
        let mut set = tokio::task::JoinSet::new();
        for (i, probe) in self.probes.iter().enumerate() {
            let (probe, client, timeout) = (probe.clone(), client.clone(), self.timeout);
            set.spawn(async move { (i, probe.run(&client, timeout).await) });
        }
        let mut results: Vec<(usize, ProbeResult)> = set.join_all().await;
        results.sort_by_key(|(i, _)| *i);
        results.into_iter().map(|(_, r)| r).collect()
    }

    /// Probes until the driver stops, publishing each round's results on
    /// `results`. Rounds start every `interval` (a slow round delays the
    /// next, never overlaps it).
    pub async fn run(self, driver: DriverHandle, results: Arc<watch::Sender<Vec<ProbeResult>>>) {
        let client = reqwest::Client::builder()
            .timeout(self.timeout)
            .build()
            .unwrap_or_default();
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let round = self.round(&client).await;
            let ok = round.iter().all(|r| r.ok);
            let measured_at = driver.clock().now();
            if driver
                .send_event(Event::Probe {
                    target: self.target,
                    ok,
                })
                .await
                .is_err()
            {
                return;
            }
            if let Some(lag) = round.iter().filter_map(|r| r.lag).max() {
                let event = match self.target {
                    Target::Local => Event::ReplicationLag { lag, measured_at },
                    Target::Peer => Event::PeerLag {
                        lag: Some(lag),
                        measured_at,
                    },
                };
                let _ = driver.send_event(event).await;
            }
            results.send_replace(round);
        }
    }
}
