//! The monotonic clock the driver reads `now` from.
//!
//! The safety argument (`docs/failover-safety.md`, assumption 1) needs a
//! clock that keeps counting while the machine is suspended: a holder whose
//! clock stood still during a suspend would believe its lease still valid
//! after waking up, while the challenger's clock went on. On Linux
//! `std::time::Instant` is `CLOCK_MONOTONIC`, which *stops* during suspend,
//! so [`BootClock`] reads `CLOCK_BOOTTIME` (through `nix`, already in the
//! dependency tree via `object_store`). On other systems it falls back to
//! `Instant`, with that limitation.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::policy::Millis;

/// A monotonic clock of this site, read by the driver and by everything that
/// asks [`DriverHandle::may_accept_traffic`](super::DriverHandle).
///
/// # Contract
///
/// Readings never decrease, and the clock counts the time the machine spends
/// suspended. Readings of different processes are never compared.
pub trait Clock: fmt::Debug + Send + Sync + 'static {
    /// The current reading.
    fn now(&self) -> Millis;

    /// The wall-clock time, in milliseconds since the Unix epoch, if this
    /// clock knows it. Only the cooldown guard uses it (stamped takeovers
    /// let a restarted agent honour the cooldown), never the lease rules.
    /// The default knows none.
    fn unix_millis(&self) -> Option<u64> {
        None
    }
}

/// `CLOCK_BOOTTIME` on Linux, `std::time::Instant` elsewhere; readings count
/// from the moment the clock was created.
#[derive(Debug, Clone)]
pub struct BootClock {
    origin: Duration,
    #[cfg(not(target_os = "linux"))]
    instant: std::time::Instant,
}

impl Default for BootClock {
    fn default() -> Self {
        BootClock::new()
    }
}

impl BootClock {
    /// A clock reading zero now.
    pub fn new() -> Self {
        BootClock {
            origin: Self::raw(),
            #[cfg(not(target_os = "linux"))]
            instant: std::time::Instant::now(),
        }
    }

    #[cfg(target_os = "linux")]
    fn raw() -> Duration {
        use nix::time::{ClockId, clock_gettime};
        match clock_gettime(ClockId::CLOCK_BOOTTIME) {
            Ok(ts) => Duration::new(
                u64::try_from(ts.tv_sec()).unwrap_or(0),
                u32::try_from(ts.tv_nsec()).unwrap_or(0),
            ),
            // CLOCK_BOOTTIME exists since Linux 2.6.39; failing here means
            // the process cannot keep time at all. MONOTONIC is the best
            // remaining answer and never goes backwards either.
            Err(_) => clock_gettime(ClockId::CLOCK_MONOTONIC)
                .map(|ts| {
                    Duration::new(
                        u64::try_from(ts.tv_sec()).unwrap_or(0),
                        u32::try_from(ts.tv_nsec()).unwrap_or(0),
                    )
                })
                .unwrap_or_default(),
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn raw() -> Duration {
        Duration::ZERO
    }
}

impl Clock for BootClock {
    #[cfg(target_os = "linux")]
    fn now(&self) -> Millis {
        Millis(crate::policy::ms(Self::raw().saturating_sub(self.origin)))
    }

    #[cfg(not(target_os = "linux"))]
    fn now(&self) -> Millis {
        let _ = self.origin;
        Millis(crate::policy::ms(self.instant.elapsed()))
    }

    /// The system's wall clock.
    fn unix_millis(&self) -> Option<u64> {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(crate::policy::ms)
    }
}

/// A clock that moves only when told to, for tests.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock reading zero.
    pub fn new() -> Self {
        ManualClock::default()
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(crate::policy::ms(by), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Millis {
        Millis(self.0.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_clock_advances_and_never_goes_back() {
        let c = BootClock::new();
        let a = c.now();
        std::thread::sleep(Duration::from_millis(20));
        let b = c.now();
        assert!(b >= a + Duration::from_millis(15), "{a} {b}");
    }

    #[test]
    fn manual_clock_moves_when_told() {
        let c = ManualClock::new();
        assert_eq!(c.now(), Millis(0));
        c.advance(Duration::from_millis(1500));
        assert_eq!(c.now(), Millis(1500));
    }
}
