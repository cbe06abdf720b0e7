//! Load-balancer style health thresholds.

use std::fmt;

/// What a probe result is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// This site's own service (its database, its health endpoints).
    Local,
    /// The other site, as seen from here.
    Peer,
}

/// The judged health of one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Health {
    /// Not enough consecutive results yet to judge (the starting state).
    #[default]
    Unknown,
    /// At least `healthy_threshold` consecutive successes since the last
    /// judgement of unhealthy (or since start).
    Healthy,
    /// At least `unhealthy_threshold` consecutive failures since the last
    /// judgement of healthy (or since start).
    Unhealthy,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Unknown => "unknown",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        })
    }
}

/// Consecutive-result thresholds over one target's probe results.
///
/// Semantics are those of a load balancer's target health: a target turns
/// [`Health::Unhealthy`] after `unhealthy_threshold` consecutive failures and
/// [`Health::Healthy`] after `healthy_threshold` consecutive successes; any
/// other sequence leaves the judgement where it was. A tracker starts in
/// [`Health::Unknown`], which counts as *not healthy* for every decision that
/// needs health (promotion, switchover) and as *not failing* for the
/// watchdog: a freshly started agent must see its service succeed
/// `healthy_threshold` times before it takes any lease, and never restarts a
/// service it has not yet seen fail `unhealthy_threshold` times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthTracker {
    unhealthy_threshold: u32,
    healthy_threshold: u32,
    health: Health,
    successes: u32,
    failures: u32,
}

impl HealthTracker {
    /// A tracker in [`Health::Unknown`]. Thresholds below 1 count as 1.
    pub fn new(unhealthy_threshold: u32, healthy_threshold: u32) -> Self {
        HealthTracker {
            unhealthy_threshold: unhealthy_threshold.max(1),
            healthy_threshold: healthy_threshold.max(1),
            health: Health::Unknown,
            successes: 0,
            failures: 0,
        }
    }

    /// Records one probe result; returns the new judgement when it changed.
    pub fn record(&mut self, ok: bool) -> Option<Health> {
        if ok {
            self.successes = self.successes.saturating_add(1);
            self.failures = 0;
            if self.successes >= self.healthy_threshold && self.health != Health::Healthy {
                self.health = Health::Healthy;
                return Some(Health::Healthy);
            }
        } else {
            self.failures = self.failures.saturating_add(1);
            self.successes = 0;
            if self.failures >= self.unhealthy_threshold && self.health != Health::Unhealthy {
                self.health = Health::Unhealthy;
                return Some(Health::Unhealthy);
            }
        }
        None
    }

    /// The current judgement.
    pub fn health(&self) -> Health {
        self.health
    }

    /// Whether the current judgement is [`Health::Healthy`].
    pub fn is_healthy(&self) -> bool {
        self.health == Health::Healthy
    }

    /// Consecutive failures up to the latest result.
    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }

    /// Consecutive successes up to the latest result.
    pub fn consecutive_successes(&self) -> u32 {
        self.successes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn starts_unknown_and_needs_thresholds() {
        let mut t = HealthTracker::new(3, 2);
        assert_eq!(t.health(), Health::Unknown);
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), Some(Health::Healthy));
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), None, "a success resets the failure count");
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), Some(Health::Unhealthy));
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), Some(Health::Healthy));
    }

    #[test]
    fn unknown_turns_unhealthy_after_failures() {
        let mut t = HealthTracker::new(2, 5);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), Some(Health::Unhealthy));
        assert_eq!(t.record(false), None, "no repeated transition");
    }

    proptest! {
        /// The judgement always agrees with the longest run at the end of
        /// the history, and changes only when a threshold is reached.
        #[test]
        fn judgement_follows_trailing_runs(
            unhealthy in 1u32..5, healthy in 1u32..5,
            results in proptest::collection::vec(any::<bool>(), 0..60),
        ) {
            let mut t = HealthTracker::new(unhealthy, healthy);
            let mut expected = Health::Unknown;
            for (i, &ok) in results.iter().enumerate() {
                let changed = t.record(ok);
                let run = results[..=i].iter().rev().take_while(|&&r| r == ok).count() as u32;
                let before = expected;
                if ok && run >= healthy { expected = Health::Healthy; }
                if !ok && run >= unhealthy { expected = Health::Unhealthy; }
                prop_assert_eq!(t.health(), expected);
                prop_assert_eq!(changed.is_some(), before != expected);
            }
        }
    }
}
