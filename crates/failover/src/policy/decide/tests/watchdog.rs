//! The watchdog with `restart_attempts` and `restart_grace` from the
//! `[failover]` section: N restarts per unhealthy spell, each followed by
//! its grace, and a handover only after the last grace.

use super::*;
use crate::config::FailoverConfig;

/// The policy timing of a `[failover]` section with these watchdog keys
/// (everything else at its default: 1 s probes, 6 s lease).
fn cfg(attempts: u32, grace: Option<Duration>) -> PolicyConfig {
    let c = FailoverConfig {
        restart_attempts: attempts,
        restart_grace: grace,
        ..FailoverConfig::default()
    };
    c.validate().expect("valid section");
    PolicyConfig::from_failover(&c)
}

fn restarts(out: &[Action]) -> usize {
    out.iter()
        .filter(|a| matches!(a, Action::RestartLocal { .. }))
        .count()
}

/// The watchdog's handover: the holder fences itself for a local failure
/// (then releases the lease).
fn handed_over(out: &[Action]) -> bool {
    out.contains(&Action::Fence {
        reason: FenceReason::LocalFailure,
    })
}

fn report(lag_secs: u64, at: u64) -> Event {
    Event::PeerLag {
        lag: Some(Duration::from_secs(lag_secs)),
        measured_at: Millis(at),
    }
}

/// Three attempts with a 4 s grace: each attempt waits for the previous
/// one's grace (counted from its end), and the handover waits for the
/// third one's.
#[test]
fn watchdog_makes_each_attempt_after_the_previous_grace() {
    let mut h = Holder::with_config(cfg(3, Some(Duration::from_secs(4))));
    let mut out = Vec::new();
    for t in [2_000, 2_001, 2_002] {
        out.extend(h.local(false, t));
    }
    assert_eq!(restarts(&out), 1, "{out:?}");
    assert!(restarts(&h.run(2_100, 2_900)) == 0);
    h.step(Event::RestartResult { ok: true }, 3_000);
    let out = h.run(3_100, 6_900);
    assert_eq!(restarts(&out), 0, "within the first grace: {out:?}");
    assert!(!handed_over(&out));
    assert!(h.p.next_wakeup(Millis(6_900)) <= Millis(7_000));
    let out = h.step(Event::Tick, 7_000);
    assert_eq!(restarts(&out), 1, "{out:?}");
    assert!(out.iter().any(|a| matches!(
        a,
        Action::Alert { kind: AlertKind::LocalRestart, message, .. } if message.ends_with("restart 2 of 3")
    )));
    h.step(Event::RestartResult { ok: true }, 7_500);
    assert_eq!(restarts(&h.run(7_600, 11_400)), 0);
    assert_eq!(restarts(&h.step(Event::Tick, 11_500)), 1);
    // The last restart fails; a good report of the peer arrives, but the
    // last grace still runs.
    h.step(Event::RestartResult { ok: false }, 12_000);
    let mut out = h.run(12_100, 14_900);
    out.extend(h.step(report(1, 15_000), 15_000));
    out.extend(h.run(15_100, 15_900));
    assert!(!handed_over(&out) && restarts(&out) == 0, "{out:?}");
    assert!(h.p.may_accept_traffic(Millis(15_900)));
    let out = h.step(Event::Tick, 16_000);
    assert!(handed_over(&out) && released(&out), "{out:?}");
    assert_eq!(restarts(&out), 0);
    // No fourth attempt afterwards.
    assert_eq!(restarts(&h.run(16_100, 40_000)), 0);
}

/// A service that recovers between two attempts ends the spell: its next
/// failure starts again at attempt 1.
#[test]
fn a_recovery_between_attempts_starts_a_new_spell() {
    let mut h = Holder::with_config(cfg(2, Some(Duration::from_secs(3))));
    for t in [2_000, 2_001, 2_002] {
        h.local(false, t);
    }
    h.step(Event::RestartResult { ok: true }, 2_500);
    h.local(true, 3_000);
    h.local(true, 3_001);
    let mut out = Vec::new();
    for t in [9_000, 9_001, 9_002] {
        out.extend(h.local(false, t));
    }
    assert!(out.iter().any(|a| matches!(
        a,
        Action::Alert { kind: AlertKind::LocalRestart, message, .. } if message.ends_with("restart 1 of 2")
    )));
}

/// `restart_attempts = 0`: no restart, the handover follows the
/// `unhealthy_threshold`-th failed probe at once.
#[test]
fn watchdog_without_restart_attempts_hands_over_at_once() {
    let mut h = Holder::with_config(cfg(0, None));
    h.step(report(1, 1_900), 1_900);
    let mut out = h.local(false, 2_000);
    out.extend(h.local(false, 2_001));
    assert!(!handed_over(&out), "not unhealthy yet: {out:?}");
    let out = h.local(false, 2_002);
    assert!(handed_over(&out) && released(&out), "{out:?}");
    assert_eq!(restarts(&out), 0);
}

#[derive(Debug, Clone)]
enum Step {
    /// A probe of the local service.
    Local(bool),
    /// A probe of the peer.
    Peer(bool),
    /// The peer reports its lag (seconds), or that it would not take over.
    PeerLag(Option<u64>),
    /// The restart in progress (if any) ends.
    RestartEnds(bool),
    Tick,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => proptest::bool::weighted(0.35).prop_map(Step::Local),
        2 => proptest::bool::weighted(0.9).prop_map(Step::Peer),
        2 => proptest::option::weighted(0.8, 0u64..600).prop_map(Step::PeerLag),
        3 => any::<bool>().prop_map(Step::RestartEnds),
        4 => Just(Step::Tick),
    ]
}

proptest! {
    /// Whatever the probes and the restarts do, the watchdog restarts the
    /// service at most `restart_attempts` times per unhealthy spell, one
    /// restart at a time, each after the previous one's grace; a holder
    /// hands over only once every attempt was made and the last one's
    /// grace has run out with the service still unhealthy and the peer
    /// healthy; and once that is so and the peer would take the lease, it
    /// does hand over.
    #[test]
    fn watchdog_uses_up_its_attempts_and_graces_before_a_handover(
        attempts in 0u32..4,
        grace_ms in 2_000u64..8_000,
        steps in proptest::collection::vec((step(), 0u64..1_500), 1..300),
    ) {
        let grace = Duration::from_millis(grace_ms);
        let mut h = Holder::with_config(cfg(attempts, Some(grace)));
        let mut now = 1_000;
        // The model of the spell: restarts made, one running, the end of
        // the latest.
        let mut made = 0u32;
        let mut running = false;
        let mut last_end: Option<u64> = None;
        for (s, dt) in steps {
            now += dt;
            let out = match s {
                Step::Local(ok) => h.local(ok, now),
                Step::Peer(ok) => h.step(Event::Probe { target: Target::Peer, ok }, now),
                Step::PeerLag(lag) => h.step(
                    Event::PeerLag {
                        lag: lag.map(Duration::from_secs),
                        measured_at: Millis(now),
                    },
                    now,
                ),
                Step::RestartEnds(ok) => {
                    if running {
                        running = false;
                        last_end = Some(now);
                    }
                    h.step(Event::RestartResult { ok }, now)
                }
                Step::Tick => h.step(Event::Tick, now),
            };
            let local = h.p.local.health();
            if local == Health::Healthy {
                // A recovered service ends the spell (a restart still
                // running goes on, and its end starts a grace).
                prop_assert_eq!(restarts(&out), 0);
                prop_assert!(!handed_over(&out));
                made = 0;
                last_end = None;
                continue;
            }
            let grace_over = |end: Option<u64>| end.is_none_or(|e| now >= e + grace_ms);
            for _ in 0..restarts(&out) {
                prop_assert!(!running, "a second restart while one runs, at {}", now);
                prop_assert!(made < attempts, "restart {} of {} at {}", made + 1, attempts, now);
                prop_assert!(grace_over(last_end), "restart at {} within the grace of {:?}", now, last_end);
                made += 1;
                running = true;
            }
            if handed_over(&out) {
                prop_assert_eq!(local, Health::Unhealthy);
                prop_assert!(h.p.peer.is_healthy(), "handover to an unhealthy peer");
                prop_assert_eq!(made, attempts, "handover at {} after {} restarts", now, made);
                prop_assert!(!running, "handover at {} while a restart runs", now);
                prop_assert!(grace_over(last_end), "handover at {} within the grace of {:?}", now, last_end);
            } else if h.p.epoch().is_some()
                && local == Health::Unhealthy
                && made == attempts
                && !running
                && grace_over(last_end)
                && h.p.release_withheld(Millis(now)).is_none()
            {
                prop_assert!(false, "no handover at {} although nothing withholds it", now);
            }
        }
    }
}
