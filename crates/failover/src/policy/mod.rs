//! The failover policy: a pure, synchronous state machine and the lease rules
//! it follows.
//!
//! Nothing in this module performs I/O or reads a clock. Time is a parameter:
//! every call takes `now`, a [`Millis`] reading of *this site's* monotonic
//! clock. Clocks of different sites are never compared; the only assumption
//! is that their *rates* differ from true time by at most
//! [`PolicyConfig::max_clock_drift_ppm`]. A driver (elsewhere) feeds
//! [`Event`]s into [`Policy::step`] and carries out the [`Action`]s it
//! returns, in order; the policy decides, the driver acts (tower's split of
//! policy and mechanism).
//!
//! Main types:
//!
//! * [`HealthTracker`]: load-balancer style thresholds over probe results.
//! * [`LeaseRecord`] and [`Version`]: the content of `lease/active.json` and
//!   the opaque compare-and-swap token (an ETag) of the object.
//! * [`Policy`]: roles, modes, guards, the watchdog, and the query
//!   [`Policy::may_accept_traffic`] on which the whole safety argument
//!   rests (`docs/failover-safety.md`). It is true only once the database
//!   answered that it is open (promoted, or unfenced after a fence).
//! * [`Lsn`] and [`Replay`]: WAL positions for the planned switchover, in
//!   which the successor promotes only once it has replayed the old
//!   holder's final position ([`LeaseRecord::final_lsn`]).
//!
//! The key rules, from `DESIGN.md`:
//!
//! * a holder counts itself safe only while `now < t_send + ttl - margin`,
//!   where `t_send` is its own clock reading taken *before* the successful
//!   compare-and-swap request was sent; past that it fences itself;
//! * a challenger takes over only after it has seen the *same* version
//!   unchanged for `ttl + margin` on its own clock (from its first
//!   observation of that version), and only with a compare-and-swap on that
//!   version that raises the epoch by one;
//! * a released lease (the holder fenced itself first) may be taken at once.
//!
//! ```
//! use warmspare_failover::policy::{
//!     Action, Event, Millis, Policy, PolicyConfig, SiteIdentity, Target,
//! };
//!
//! let id = SiteIdentity::new("primary", "spare", true, 7);
//! let mut policy = Policy::new(PolicyConfig::default(), id).unwrap();
//! let mut actions = policy.start(Millis(0));
//! // Two successful local probes make the site healthy.
//! for t in [1_000, 2_000] {
//!     actions.extend(policy.step(Event::Probe { target: Target::Local, ok: true }, Millis(t)));
//! }
//! // No lease exists yet: the initial holder creates it.
//! let acquire = policy.step(Event::LeaseObserved { lease: None }, Millis(2_100));
//! assert!(acquire.iter().any(|a| matches!(a, Action::AcquireLease { .. })));
//! assert!(!policy.may_accept_traffic(Millis(2_100)));
//! ```

mod decide;
mod events;
mod health;
mod lease;
mod lsn;
mod machine;
mod promote;

use std::fmt;
use std::ops::{Add, Sub};
use std::time::Duration;

pub use events::{
    Action, AlertKind, Command, Event, FenceReason, HookKind, PromoteTrigger, Role, Severity,
    Status, WriteOutcome,
};
pub use health::{Health, HealthTracker, Target};
pub use lease::{
    Grant, LeaseFormatError, LeaseRecord, RequestId, Version, Watch, WriteCondition,
    holder_safe_until, takeover_wait,
};
pub use lsn::{InvalidLsn, Lsn, Replay};
pub use machine::Policy;

use crate::config::{FailoverConfig, FailoverMode, InvalidFailoverConfig};

/// A reading of one site's monotonic clock, in milliseconds since an
/// arbitrary origin of that site.
///
/// Readings of different sites are unrelated and never compared: only
/// differences of readings taken at the same site carry meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Millis(pub u64);

impl Millis {
    /// The origin of the clock.
    pub const ZERO: Millis = Millis(0);

    /// The reading as a number of milliseconds.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// The time elapsed since `earlier`, or zero when `earlier` is later.
    pub fn saturating_since(self, earlier: Millis) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Millis {
    type Output = Millis;

    /// Adds a duration, saturating at the end of the clock's range.
    fn add(self, rhs: Duration) -> Millis {
        Millis(self.0.saturating_add(ms(rhs)))
    }
}

impl Sub<Duration> for Millis {
    type Output = Millis;

    /// Subtracts a duration, saturating at the clock's origin.
    fn sub(self, rhs: Duration) -> Millis {
        Millis(self.0.saturating_sub(ms(rhs)))
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

/// A duration in whole milliseconds (saturating).
pub(crate) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The default `[failover] switchover_timeout`
/// ([`PolicyConfig::switchover_timeout`]): time enough for a
/// repository-fed standby to fetch the last, switched WAL segment (the
/// archiver pushes it, `restore_command` polls every
/// `wal_retrieve_retry_interval`, 5 s by default) and replay it.
pub const SWITCHOVER_TIMEOUT: Duration = Duration::from_secs(60);

/// Who this policy instance is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteIdentity {
    /// This site's name (a `[sites.*]` key), written into the lease as holder.
    pub site: String,
    /// The other site's name.
    pub peer: String,
    /// Whether this site creates the lease when none exists (the configured
    /// primary). The other site never creates it, so that epochs cannot
    /// restart from 1 behind a live holder.
    pub initial_holder: bool,
    /// A number unique to this process start (the driver draws it at
    /// random). It marks the lease writes of this incarnation, so that a
    /// restarted agent never mistakes an earlier incarnation's write for one
    /// whose send time it knows.
    pub incarnation: u64,
}

impl SiteIdentity {
    /// An identity from its parts.
    pub fn new(
        site: impl Into<String>,
        peer: impl Into<String>,
        initial_holder: bool,
        incarnation: u64,
    ) -> Self {
        SiteIdentity {
            site: site.into(),
            peer: peer.into(),
            initial_holder,
            incarnation,
        }
    }
}

/// The timing and guards the policy follows.
///
/// [`PolicyConfig::from_failover`] derives it from the `[failover]` section;
/// [`PolicyConfig::validate`] checks the relations the safety and liveness
/// arguments need (see `docs/failover-safety.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    /// Whether a failover happens without an operator.
    pub mode: FailoverMode,
    /// Lifetime of the lease, written into the record.
    pub lease_ttl: Duration,
    /// Safety margin: the holder stops `margin` before `ttl`, a challenger
    /// waits `margin` beyond it. Must exceed `lease_ttl * max_clock_drift`.
    pub lease_margin: Duration,
    /// Time between two renewals by the holder (counted from the previous
    /// renewal's send time).
    pub renew_interval: Duration,
    /// Time between two reads of the lease by a site that does not hold it.
    pub read_interval: Duration,
    /// After this long without an answer a lease request counts as lost and
    /// may be retried. Its outcome stays unknown: it may still take effect.
    /// Drivers use it as their own timeout for lease requests.
    pub request_timeout: Duration,
    /// Consecutive failed probes after which a target is unhealthy.
    pub unhealthy_threshold: u32,
    /// Consecutive successful probes after which a target is healthy.
    pub healthy_threshold: u32,
    /// No automatic promotion when the measured lag (or the age of the
    /// newest restored recovery point) may exceed this.
    pub max_data_loss: Duration,
    /// No automatic takeover within this time after a handover this process
    /// performed or observed.
    pub cooldown: Duration,
    /// Restart attempts (`RestartLocal`) in one unhealthy spell of the
    /// local service before a holder releases the lease (`[failover]
    /// restart_attempts`); 0: release without restarting.
    pub watchdog_restarts: u32,
    /// How long a restarted local service has to become healthy again,
    /// counted from the end of each restart ([`Event::RestartResult`]),
    /// before the next attempt or, after the last, the release
    /// (`[failover] restart_grace`).
    pub watchdog_grace: Duration,
    /// Bound on the rate difference between any site's monotonic clock and
    /// true time, in parts per million (10 000 = 1 %).
    pub max_clock_drift_ppm: u32,
    /// Planned switchover: how long the old holder may take to read its
    /// final WAL position before it abandons the switchover (and accepts
    /// traffic again), and how long the successor waits to replay that
    /// position before it raises a critical alert. Past it the successor
    /// still does not promote on its own: it keeps the lease, keeps waiting
    /// and promotes as soon as the position is replayed, or when an
    /// operator forces it (`warmspare failover --to SITE --force`).
    pub switchover_timeout: Duration,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig::from_failover(&FailoverConfig::default())
    }
}

/// How many probe intervals a report of the peer stays fresh
/// ([`PolicyConfig::peer_report_max_age`]).
const PEER_REPORT_INTERVALS: u32 = 5;

impl PolicyConfig {
    /// How recent a report of the peer's data loss ([`Event::PeerLag`],
    /// or that it would not take over) must be for the watchdog to rely on
    /// it when it releases the lease: five probe intervals
    /// (`read_interval`), whatever the watchdog's own grace.
    pub fn peer_report_max_age(&self) -> Duration {
        self.read_interval.saturating_mul(PEER_REPORT_INTERVALS)
    }

    /// Derives the policy timing from the `[failover]` section: margin
    /// `ttl / 6`, renewal every `ttl / 3`, lease reads every probe
    /// `interval`, lease requests timed out after five sixths of the slack
    /// `ttl - margin - renew_interval` (2.5 s for a 6 s lease: a renewal
    /// stalled that long still lands before the holder's deadline), peer
    /// reports trusted for five probe intervals, clock drift bound 1 %;
    /// the watchdog's restarts and grace are the section's
    /// `restart_attempts` and `restart_grace` (one restart and five probe
    /// intervals by default), the switchover timeout its
    /// `switchover_timeout` ([`SWITCHOVER_TIMEOUT`] by default).
    pub fn from_failover(c: &FailoverConfig) -> Self {
        let ttl = c.lease_ttl;
        PolicyConfig {
            mode: c.mode,
            lease_ttl: ttl,
            lease_margin: ttl / 6,
            renew_interval: ttl / 3,
            read_interval: c.interval,
            request_timeout: ttl.saturating_sub(ttl / 6).saturating_sub(ttl / 3) * 5 / 6,
            unhealthy_threshold: c.unhealthy_threshold,
            healthy_threshold: c.healthy_threshold,
            max_data_loss: c.max_data_loss,
            cooldown: c.cooldown,
            watchdog_restarts: c.restart_attempts,
            watchdog_grace: c.effective_restart_grace(),
            max_clock_drift_ppm: 10_000,
            switchover_timeout: c.switchover_timeout,
        }
    }

    /// Checks the relations that safety and liveness rely on:
    ///
    /// * `lease_margin > lease_ttl * drift` (safety: the holder's window
    ///   ends before a challenger's can begin);
    /// * `renew_interval + request_timeout < lease_ttl - lease_margin`
    ///   (liveness: a renewal delayed by up to `request_timeout` still lands
    ///   before the holder's deadline);
    /// * non-zero thresholds and intervals, drift below 10 %.
    pub fn validate(&self) -> Result<(), InvalidFailoverConfig> {
        let invalid = |key, message: String| Err(InvalidFailoverConfig { key, message });
        let ttl = ms(self.lease_ttl);
        let margin = ms(self.lease_margin);
        if ttl == 0 {
            return invalid("lease_ttl", "must be greater than zero".into());
        }
        if self.max_clock_drift_ppm >= 100_000 {
            return invalid("max_clock_drift_ppm", "must be below 100000 (10 %)".into());
        }
        let drift_ms = (u128::from(ttl) * u128::from(self.max_clock_drift_ppm)).div_ceil(1_000_000);
        if u128::from(margin) <= drift_ms || margin == 0 {
            return invalid(
                "lease_margin",
                format!(
                    "must exceed lease_ttl x clock drift ({drift_ms}ms), or two holders could overlap"
                ),
            );
        }
        if margin.saturating_mul(2) >= ttl {
            return invalid("lease_margin", "must be less than half of lease_ttl".into());
        }
        if ms(self.renew_interval) == 0
            || ms(self.read_interval) == 0
            || ms(self.request_timeout) == 0
        {
            return invalid(
                "renew_interval",
                "intervals and timeouts must be greater than zero".into(),
            );
        }
        if ms(self.renew_interval) + ms(self.request_timeout) >= ttl - margin {
            return invalid(
                "renew_interval",
                "renew_interval + request_timeout must be less than lease_ttl - lease_margin, or a slow renewal fences a healthy holder".into(),
            );
        }
        if self.unhealthy_threshold == 0 {
            return invalid("unhealthy_threshold", "must be at least 1".into());
        }
        if self.healthy_threshold == 0 {
            return invalid("healthy_threshold", "must be at least 1".into());
        }
        if self.switchover_timeout.is_zero() {
            return invalid("switchover_timeout", "must be greater than zero".into());
        }
        if self.watchdog_restarts > 0 && self.watchdog_grace.is_zero() {
            return invalid(
                "restart_grace",
                "must be greater than zero while `restart_attempts` is above 0".into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_safety_doc() {
        let c = PolicyConfig::default();
        c.validate().expect("defaults valid");
        assert_eq!(c.lease_ttl, Duration::from_secs(6));
        assert_eq!(c.lease_margin, Duration::from_secs(1));
        assert_eq!(c.renew_interval, Duration::from_secs(2));
        assert_eq!(c.request_timeout, Duration::from_millis(2500));
    }

    #[test]
    fn margin_must_cover_drift() {
        let c = PolicyConfig {
            lease_margin: Duration::from_millis(60),
            ..PolicyConfig::default()
        };
        assert_eq!(
            c.validate().expect_err("60ms = 6s x 1%").key,
            "lease_margin"
        );
        let c = PolicyConfig {
            lease_margin: Duration::from_millis(61),
            renew_interval: Duration::from_secs(2),
            ..PolicyConfig::default()
        };
        c.validate().expect("61ms > 60ms");
    }

    #[test]
    fn renewal_must_fit_before_the_deadline() {
        let c = PolicyConfig {
            renew_interval: Duration::from_millis(2500),
            ..PolicyConfig::default()
        };
        assert_eq!(
            c.validate().expect_err("2.5+2.5 >= 5").key,
            "renew_interval"
        );
    }

    proptest::proptest! {
        /// Every sane `[failover]` section yields a safe policy timing.
        #[test]
        fn derived_timing_is_always_valid(ttl_ms in 600u64..3_600_000) {
            let c = FailoverConfig {
                lease_ttl: Duration::from_millis(ttl_ms),
                interval: Duration::from_millis(ttl_ms / 6),
                ..FailoverConfig::default()
            };
            proptest::prop_assert!(PolicyConfig::from_failover(&c).validate().is_ok());
        }
    }

    #[test]
    fn millis_arithmetic_saturates() {
        assert_eq!(Millis(5) - Duration::from_millis(10), Millis(0));
        assert_eq!(
            Millis(u64::MAX) + Duration::from_millis(1),
            Millis(u64::MAX)
        );
        assert_eq!(
            Millis(10).saturating_since(Millis(4)),
            Duration::from_millis(6)
        );
        assert_eq!(Millis(4).saturating_since(Millis(10)), Duration::ZERO);
    }
}
