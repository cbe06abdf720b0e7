//! [`ManualClock`]: monotonic time that only moves when a test says so.

use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A source of monotonic time, so that code under test can be handed either
/// the real clock or a [`ManualClock`].
///
/// Production crates that need an injectable clock define their own trait
/// (a test-only crate cannot be a dependency of theirs); this one serves
/// helpers inside tests.
pub trait Clock: Send + Sync + Debug {
    /// The current instant.
    fn now(&self) -> Instant;
}

/// The real monotonic clock ([`Instant::now`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A monotonic clock that starts at the moment it is created and moves only
/// through [`ManualClock::advance`]. Clones share the same time, so a test
/// keeps one handle and gives another to the code under test.
///
/// ```
/// use std::time::Duration;
/// use warmspare_testkit::ManualClock;
///
/// let clock = ManualClock::new();
/// let shared = clock.clone();
/// let t0 = shared.now();
/// clock.advance(Duration::from_secs(6));
/// assert_eq!(shared.now() - t0, Duration::from_secs(6));
/// assert_eq!(shared.elapsed(), Duration::from_secs(6));
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock {
    origin: Instant,
    offset: Arc<Mutex<Duration>>,
}

impl ManualClock {
    /// A clock at its origin (elapsed zero).
    pub fn new() -> Self {
        ManualClock {
            origin: Instant::now(),
            offset: Arc::new(Mutex::new(Duration::ZERO)),
        }
    }

    /// The current instant: the origin plus everything advanced so far.
    pub fn now(&self) -> Instant {
        self.origin + self.elapsed()
    }

    /// Time advanced since the clock was created.
    pub fn elapsed(&self) -> Duration {
        *self.offset.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves time forward by `by` for every clone; returns the new instant.
    pub fn advance(&self, by: Duration) -> Instant {
        let mut offset = self.offset.lock().unwrap_or_else(|p| p.into_inner());
        *offset += by;
        self.origin + *offset
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        ManualClock::now(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_stands_still_until_advanced() {
        let clock = ManualClock::new();
        let t0 = clock.now();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(clock.now(), t0);
        let t1 = clock.clone().advance(Duration::from_millis(1500));
        assert_eq!(t1 - t0, Duration::from_millis(1500));
        assert_eq!(clock.now(), t1);
        let dynamic: &dyn Clock = &clock;
        assert_eq!(dynamic.now(), t1);
        assert!(SystemClock.now() >= t0);
    }
}
