//! Where the agent reads the time and how it waits.
//!
//! Schedules are wall-clock times (cron is UTC), so the agent reads and
//! waits on a [`Clock`] that it is given rather than on the system clock
//! directly: production uses [`SystemClock`], tests use [`ManualClock`] and
//! move time forward themselves.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;
use tokio::sync::watch;

/// A source of wall-clock time that can also wait.
///
/// # Contract
///
/// * [`Clock::now`] is UTC and never panics.
/// * [`Clock::sleep_until`] returns once [`Clock::now`] reads `deadline` or
///   later (at once for a deadline in the past); it is cancel-safe
///   (dropping it has no effect).
#[async_trait]
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> OffsetDateTime;

    /// Waits until this clock reads `deadline` or later.
    async fn sleep_until(&self, deadline: OffsetDateTime);
}

/// Waits until `duration` has passed on `clock`.
pub(crate) async fn sleep(clock: &dyn Clock, duration: Duration) {
    let deadline = clock
        .now()
        .saturating_add(duration.try_into().unwrap_or(time::Duration::MAX));
    clock.sleep_until(deadline).await;
}

/// The system's wall clock; waits with tokio's timer.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

/// Longest single timer wait of [`SystemClock`]: the wall clock may be
/// stepped (NTP, suspend), so a long wait is cut into pieces that re-read
/// it.
const MAX_TIMER: Duration = Duration::from_secs(60);

#[async_trait]
impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    async fn sleep_until(&self, deadline: OffsetDateTime) {
        loop {
            let left = deadline - self.now();
            if !left.is_positive() {
                return;
            }
            let left = Duration::try_from(left).unwrap_or(MAX_TIMER);
            tokio::time::sleep(left.min(MAX_TIMER)).await;
        }
    }
}

/// A clock that only moves when told to, for tests: [`ManualClock::advance`]
/// wakes every [`Clock::sleep_until`] whose time has come. Clones share the time.
#[derive(Clone)]
pub struct ManualClock {
    now: std::sync::Arc<watch::Sender<OffsetDateTime>>,
}

impl ManualClock {
    /// A clock that reads `start` until it is advanced.
    pub fn new(start: OffsetDateTime) -> Self {
        ManualClock {
            now: std::sync::Arc::new(watch::Sender::new(start)),
        }
    }

    /// Moves time forward by `by`; returns the new time.
    pub fn advance(&self, by: Duration) -> OffsetDateTime {
        let mut after = OffsetDateTime::UNIX_EPOCH;
        self.now.send_modify(|now| {
            *now = now.saturating_add(by.try_into().unwrap_or(time::Duration::MAX));
            after = *now;
        });
        after
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("now", &*self.now.borrow())
            .finish()
    }
}

#[async_trait]
impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.now.borrow()
    }

    async fn sleep_until(&self, deadline: OffsetDateTime) {
        let mut rx = self.now.subscribe();
        // The sender lives as long as `self`, so `wait_for` cannot fail
        // while we are borrowed; an error would only mean "never".
        if rx.wait_for(|now| *now >= deadline).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[tokio::test]
    async fn manual_sleep_wakes_when_advanced_far_enough() {
        let clock = ManualClock::new(datetime!(2026-01-01 00:00 UTC));
        let sleeper = {
            let clock = clock.clone();
            tokio::spawn(async move { sleep(&clock, Duration::from_secs(10)).await })
        };
        tokio::task::yield_now().await;
        clock.advance(Duration::from_secs(9));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        clock.advance(Duration::from_secs(1));
        sleeper.await.unwrap();
        assert_eq!(clock.now(), datetime!(2026-01-01 00:00:10 UTC));
    }

    #[tokio::test]
    async fn sleep_until_the_past_returns_at_once() {
        let clock = ManualClock::new(datetime!(2026-01-01 00:00 UTC));
        clock.sleep_until(datetime!(2025-12-31 23:00 UTC)).await;
        SystemClock
            .sleep_until(datetime!(2025-12-31 23:00 UTC))
            .await;
    }
}
