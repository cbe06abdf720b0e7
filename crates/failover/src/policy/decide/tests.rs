//! Unit tests of the state machine, one site at a time.

use std::collections::HashMap;

use proptest::prelude::*;

use super::super::{Command, Event, PolicyConfig, SiteIdentity, Target, WriteOutcome};
use super::*;

mod watchdog;

fn policy(initial: bool) -> Policy {
    policy_with(initial, PolicyConfig::default())
}

fn policy_with(initial: bool, cfg: PolicyConfig) -> Policy {
    let (site, peer) = if initial {
        ("primary", "spare")
    } else {
        ("spare", "primary")
    };
    Policy::new(cfg, SiteIdentity::new(site, peer, initial, 7)).expect("valid config")
}

fn healthy(p: &mut Policy, t: u64) {
    for i in 0..2 {
        p.step(
            Event::Probe {
                target: Target::Local,
                ok: true,
            },
            Millis(t + i),
        );
        p.step(
            Event::Probe {
                target: Target::Peer,
                ok: true,
            },
            Millis(t + i),
        );
    }
}

fn record(holder: &str, epoch: u64, renewals: u64) -> LeaseRecord {
    LeaseRecord {
        format: 1,
        holder: holder.into(),
        epoch,
        renewals,
        incarnation: 99,
        nonce: renewals + 1,
        ttl_ms: 6000,
        margin_ms: 1000,
        released: false,
        successor: None,
        final_lsn: None,
        taken_at_ms: None,
    }
}

fn observe(p: &mut Policy, v: &str, r: LeaseRecord, t: u64) -> Vec<Action> {
    p.step(
        Event::LeaseObserved {
            lease: Some((Version::new(v), r)),
        },
        Millis(t),
    )
}

fn writes(actions: &[Action]) -> Vec<(RequestId, LeaseRecord, WriteCondition)> {
    actions
        .iter()
        .filter_map(|a| a.lease_write())
        .map(|(i, r, c)| (i, r.clone(), c))
        .collect()
}

/// The primary creates the lease, renews it, and fences exactly at
/// `t_send + ttl - margin` when renewals stop succeeding.
#[test]
fn holder_fences_at_t_send_plus_ttl_minus_margin() {
    let mut p = policy(true);
    p.start(Millis(0));
    healthy(&mut p, 0);
    let out = p.step(Event::LeaseObserved { lease: None }, Millis(100));
    let [(id, rec, WriteCondition::Absent)] = &writes(&out)[..] else {
        panic!("{out:?}")
    };
    assert_eq!((rec.epoch, rec.renewals), (1, 0));
    let written = WriteOutcome::Written {
        version: Version::new("a"),
    };
    let out = p.step(
        Event::LeaseWriteResult {
            request: *id,
            outcome: written,
        },
        Millis(900),
    );
    assert!(out.contains(&Action::Promote {
        epoch: 1,
        trigger: PromoteTrigger::Initial
    }));
    // Traffic waits for the database: not before the promotion returned.
    assert!(!p.may_accept_traffic(Millis(900)) && p.accepting_until().is_none());
    assert_eq!(p.role(Millis(900)), super::super::Role::Promoting);
    let out = p.step(Event::PromoteResult { epoch: 1, ok: true }, Millis(950));
    assert!(
        !out.iter().any(|a| matches!(a, Action::Unfence { .. })),
        "{out:?}"
    );
    // Sent at 100: safe until 5100, whenever the answer came.
    assert_eq!(p.accepting_until(), Some(Millis(5_100)));
    assert!(p.may_accept_traffic(Millis(5_099)) && !p.may_accept_traffic(Millis(5_100)));
    assert_eq!(p.next_wakeup(Millis(1_000)), Millis(2_000));
    // A renewal goes out at 2100; it never returns.
    let out = p.step(Event::Tick, Millis(2_100));
    assert!(
        matches!(&writes(&out)[..], [(_, r, WriteCondition::Matches(v))] if r.renewals == 1 && v.as_str() == "a")
    );
    assert_eq!(p.next_wakeup(Millis(5_000)), Millis(5_100));
    let out = p.step(Event::Tick, Millis(5_100));
    assert!(
        out.contains(&Action::Fence {
            reason: FenceReason::LeaseExpired
        }),
        "{out:?}"
    );
    assert_eq!(p.role(Millis(5_100)), super::super::Role::FencedHolder);
}

/// A renewal whose answer was lost is recognised by reading, and counts
/// from its own send time.
#[test]
fn own_write_with_lost_answer_is_adopted_from_a_read() {
    let mut p = policy(true);
    p.start(Millis(0));
    healthy(&mut p, 0);
    let out = p.step(Event::LeaseObserved { lease: None }, Millis(100));
    let (id, ..) = writes(&out)[0].clone();
    let ok = WriteOutcome::Written {
        version: Version::new("a"),
    };
    p.step(
        Event::LeaseWriteResult {
            request: id,
            outcome: ok,
        },
        Millis(150),
    );
    p.step(Event::PromoteResult { epoch: 1, ok: true }, Millis(160));
    let out = p.step(Event::Tick, Millis(2_100));
    let (renew, rec, _) = writes(&out)[0].clone();
    // The driver gives up on it and the policy retries at once; the
    // retry conflicts: the first renewal did land.
    let error = WriteOutcome::Error;
    let out = p.step(
        Event::LeaseWriteResult {
            request: renew,
            outcome: error,
        },
        Millis(4_600),
    );
    assert!(out.contains(&Action::ReadLease), "{out:?}");
    let (retry, ..) = writes(&out)[0].clone();
    let conflict = WriteOutcome::Conflict;
    let out = p.step(
        Event::LeaseWriteResult {
            request: retry,
            outcome: conflict,
        },
        Millis(4_850),
    );
    assert!(
        writes(&out).is_empty(),
        "no blind retry after a conflict: {out:?}"
    );
    // A stale read (older than what we hold) changes nothing.
    let out = observe(
        &mut p,
        "old",
        LeaseRecord {
            incarnation: 7,
            ..record("primary", 0, 9)
        },
        Millis(4_900).0,
    );
    assert!(!out.iter().any(|a| matches!(a, Action::Fence { .. })));
    observe(&mut p, "b", rec, 4_950);
    assert_eq!(p.accepting_until(), Some(Millis(7_100)));
    assert!(p.may_accept_traffic(Millis(5_500)));
}

/// The challenger waits `ttl + margin` from its first sight of one
/// version, restarts on every change, and writes epoch + 1 on that very
/// version.
#[test]
fn challenger_waits_for_an_unchanged_version() {
    let mut p = policy(false);
    p.start(Millis(0));
    healthy(&mut p, 0);
    p.step(
        Event::ReplicationLag {
            lag: Duration::ZERO,
            measured_at: Millis(0),
        },
        Millis(0),
    );
    assert!(writes(&observe(&mut p, "a", record("primary", 4, 1), 1_000)).is_empty());
    assert!(writes(&observe(&mut p, "b", record("primary", 4, 2), 3_000)).is_empty());
    assert!(writes(&observe(&mut p, "b", record("primary", 4, 2), 9_000)).is_empty());
    assert_eq!(p.next_wakeup(Millis(9_500)), Millis(10_000));
    let out = p.step(Event::Tick, Millis(10_000));
    let [(_, rec, WriteCondition::Matches(v))] = &writes(&out)[..] else {
        panic!("{out:?}")
    };
    assert_eq!(
        (v.as_str(), rec.epoch, rec.holder.as_str()),
        ("b", 5, "spare")
    );
    // A holder promising a longer lease is waited out longer.
    let mut p = policy(false);
    healthy(&mut p, 0);
    let long = LeaseRecord {
        ttl_ms: 20_000,
        ..record("primary", 4, 1)
    };
    observe(&mut p, "a", long, 1_000);
    assert!(writes(&p.step(Event::Tick, Millis(20_999))).is_empty());
}

/// A switchover release is taken at once by its successor only; a
/// non-forced operator failover is refused without a lag measurement.
#[test]
fn released_lease_and_operator_guards() {
    let released = LeaseRecord {
        released: true,
        successor: Some("spare".into()),
        ..record("primary", 2, 5)
    };
    let mut p = policy(false);
    healthy(&mut p, 0);
    let out = observe(&mut p, "r", released.clone(), 100);
    assert!(matches!(
        out.iter().find_map(|a| match a {
            Action::AcquireLease { trigger, .. } => Some(*trigger),
            _ => None,
        }),
        Some(PromoteTrigger::Switchover)
    ));
    let mut other = Policy::new(
        PolicyConfig::default(),
        SiteIdentity::new("third", "x", false, 1),
    )
    .expect("valid");
    healthy(&mut other, 0);
    assert!(writes(&observe(&mut other, "r", released, 100)).is_empty());

    let mut p = policy(false);
    healthy(&mut p, 0);
    let out = p.step(
        Event::Command(Command::Failover { force: false }),
        Millis(10),
    );
    assert!(out.iter().any(|a| matches!(
        a,
        Action::Alert {
            kind: AlertKind::CommandRefused,
            ..
        }
    )));
    let out = p.step(
        Event::Command(Command::Failover { force: true }),
        Millis(20),
    );
    assert!(out.iter().any(|a| matches!(
        a,
        Action::Alert {
            kind: AlertKind::CommandAccepted,
            ..
        }
    )));
}

#[derive(Debug, Clone)]
enum Input {
    Probe(bool, bool),
    Tick,
    /// Answer the n-th emitted write (modulo) with 0 written, 1 conflict, 2 error.
    Answer(usize, u8),
    /// Show the n-th emitted write's record (modulo) as the current lease.
    ShowOwn(usize),
    ShowOther(u64, u64, bool),
    Absent,
    Lag(u64),
    Cmd(u8, bool),
    /// Answer the oldest unanswered Promote or Unfence.
    Open(bool),
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        (any::<bool>(), any::<bool>()).prop_map(|(a, b)| Input::Probe(a, b)),
        Just(Input::Tick),
        (any::<usize>(), 0u8..3).prop_map(|(n, o)| Input::Answer(n, o)),
        any::<usize>().prop_map(Input::ShowOwn),
        (0u64..6, 0u64..20, any::<bool>()).prop_map(|(e, r, rel)| Input::ShowOther(e, r, rel)),
        Just(Input::Absent),
        (0u64..600_000).prop_map(Input::Lag),
        (0u8..4, any::<bool>()).prop_map(|(c, f)| Input::Cmd(c, f)),
        any::<bool>().prop_map(Input::Open),
    ]
}

proptest! {
    /// Whatever it is told, a policy claims the right to accept traffic
    /// only on the strength of a write of its own that is known to have
    /// landed and was sent less than `ttl - margin` ago; every takeover
    /// raises the epoch above anything it has seen.
    #[test]
    fn rights_are_always_justified(
        initial in any::<bool>(),
        inputs in proptest::collection::vec((input(), 0u64..2_500), 1..200),
    ) {
        let mut p = policy(initial);
        let mut now = 0;
        let mut emitted: Vec<(RequestId, u64, LeaseRecord)> = Vec::new();
        let mut landed: HashMap<RequestId, u64> = HashMap::new();
        let mut max_seen = 0;
        let mut version = 0;
        let mut opens = std::collections::VecDeque::new();
        let mut out = p.start(Millis(0));
        for (input, dt) in inputs {
            opens.extend(out.iter().filter_map(|a| match a {
                Action::Promote { epoch, .. } => Some((true, *epoch)),
                Action::Unfence { epoch } => Some((false, *epoch)),
                _ => None,
            }));
            for (id, rec, _) in writes(&out) {
                // A new epoch exceeds all seen; renewals keep a current one.
                if rec.renewals == 0 {
                    prop_assert!(rec.epoch > max_seen, "{rec:?} after epoch {max_seen}");
                }
                prop_assert!(rec.epoch >= max_seen, "{rec:?} after epoch {max_seen}");
                emitted.push((id, now, rec));
            }
            now += dt;
            version += 1;
            let event = match input {
                Input::Probe(l, r) => {
                    p.step(Event::Probe { target: Target::Local, ok: l }, Millis(now));
                    Event::Probe { target: Target::Peer, ok: r }
                }
                Input::Tick => Event::Tick,
                Input::Answer(n, o) if !emitted.is_empty() => {
                    let (id, sent, _) = emitted[n % emitted.len()].clone();
                    let outcome = match o {
                        0 => {
                            landed.insert(id, sent);
                            WriteOutcome::Written { version: Version::new(format!("v{version}")) }
                        }
                        1 => WriteOutcome::Conflict,
                        _ => WriteOutcome::Error,
                    };
                    Event::LeaseWriteResult { request: id, outcome }
                }
                Input::ShowOwn(n) if !emitted.is_empty() => {
                    let (id, sent, rec) = emitted[n % emitted.len()].clone();
                    landed.insert(id, sent);
                    max_seen = max_seen.max(rec.epoch);
                    Event::LeaseObserved { lease: Some((Version::new(format!("v{version}")), rec)) }
                }
                Input::ShowOther(e, r, rel) => {
                    max_seen = max_seen.max(e);
                    let rec = LeaseRecord { released: rel, ..record("someone", e, r) };
                    Event::LeaseObserved { lease: Some((Version::new(format!("v{version}")), rec)) }
                }
                Input::Absent => Event::LeaseObserved { lease: None },
                Input::Lag(l) => Event::ReplicationLag { lag: Duration::from_millis(l), measured_at: Millis(now) },
                Input::Open(ok) => match opens.pop_front() {
                    Some((true, epoch)) => Event::PromoteResult { epoch, ok },
                    Some((false, epoch)) => Event::UnfenceResult { epoch, ok },
                    None => Event::Tick,
                },
                Input::Cmd(c, force) => Event::Command(match c {
                    0 => Command::Failover { force },
                    1 => Command::Switchover { to: if initial { "spare" } else { "primary" }.into(), force },
                    2 => Command::Pause,
                    _ => Command::Resume,
                }),
                _ => Event::Tick,
            };
            out = p.step(event, Millis(now));
            if p.may_accept_traffic(Millis(now)) {
                let epoch = p.epoch().expect("a holder has an epoch");
                let justified = emitted.iter().any(|(id, _, rec)| {
                    rec.epoch == epoch && landed.get(id).is_some_and(|&sent| now < sent + 5_000)
                });
                prop_assert!(justified, "accepting at {now} without a recent landed write");
                prop_assert!(!p.is_fenced());
            }
        }
    }
}

/// A primary whose every lease write lands at once.
struct Holder {
    p: Policy,
    version: u64,
}

impl Holder {
    /// Created the lease at 100 and promoted; peer healthy.
    fn new() -> Self {
        Holder::with_config(PolicyConfig::default())
    }

    /// The same with `cfg`.
    fn with_config(cfg: PolicyConfig) -> Self {
        let mut h = Holder {
            p: policy_with(true, cfg),
            version: 0,
        };
        h.p.start(Millis(0));
        healthy(&mut h.p, 0);
        h.step(Event::LeaseObserved { lease: None }, 100);
        h.step(Event::PromoteResult { epoch: 1, ok: true }, 200);
        assert!(h.p.may_accept_traffic(Millis(200)));
        h
    }

    /// One event at `t`; every write it causes is answered "written".
    fn step(&mut self, event: Event, t: u64) -> Vec<Action> {
        let mut out = self.p.step(event, Millis(t));
        let mut all = out.clone();
        while !writes(&out).is_empty() {
            let ids: Vec<_> = writes(&out).into_iter().map(|(id, ..)| id).collect();
            out.clear();
            for request in ids {
                self.version += 1;
                let version = Version::new(format!("w{}", self.version));
                out.extend(self.p.step(
                    Event::LeaseWriteResult {
                        request,
                        outcome: WriteOutcome::Written { version },
                    },
                    Millis(t),
                ));
            }
            all.extend(out.iter().cloned());
        }
        all
    }

    /// Ticks every 100 ms from `from` to `to` (inclusive), collecting.
    fn run(&mut self, from: u64, to: u64) -> Vec<Action> {
        (from..=to)
            .step_by(100)
            .flat_map(|t| self.step(Event::Tick, t))
            .collect()
    }

    fn local(&mut self, ok: bool, t: u64) -> Vec<Action> {
        self.step(
            Event::Probe {
                target: Target::Local,
                ok,
            },
            t,
        )
    }
}

fn released(out: &[Action]) -> bool {
    out.iter()
        .any(|a| matches!(a, Action::ReleaseLease { record, .. } if record.released))
}

fn alerted(out: &[Action], kind: AlertKind) -> bool {
    out.iter()
        .any(|a| matches!(a, Action::Alert { kind: k, .. } if *k == kind))
}

/// The watchdog restarts first and waits for the restart to end; its grace
/// counts from there. Then it releases the lease only on a recent report
/// that the peer is within its data-loss guard; without one it keeps the
/// lease and says why. Once released and not taken, the recovered site
/// takes its lease back (same epoch, no guard: nobody wrote meanwhile).
#[test]
fn watchdog_restarts_then_releases_only_to_a_peer_within_its_guard() {
    let mut h = Holder::new();
    let mut out = Vec::new();
    for t in [2_000, 2_001, 2_002] {
        out.extend(h.local(false, t));
    }
    assert!(
        out.contains(&Action::RestartLocal {
            role: super::super::Role::Primary,
            epoch: 1
        }),
        "{out:?}"
    );
    // The restart runs for 8 s: no second restart, no release meanwhile.
    let out = h.run(2_100, 10_000);
    assert!(
        !out.iter()
            .any(|a| matches!(a, Action::RestartLocal { .. } | Action::Fence { .. })),
        "{out:?}"
    );
    // It ends; an accepting site is not fenced again.
    let out = h.step(Event::RestartResult { ok: true }, 10_000);
    assert!(!out.iter().any(|a| matches!(a, Action::Fence { .. })));
    // The grace (5 s) counts from the end of the restart.
    assert!(h.p.next_wakeup(Millis(14_900)) <= Millis(15_000));
    assert!(!alerted(&h.run(10_100, 14_900), AlertKind::ReleaseWithheld));
    // No report of the peer's data loss: it keeps the lease.
    let out = h.step(Event::Tick, 15_000);
    assert!(alerted(&out, AlertKind::ReleaseWithheld), "{out:?}");
    assert!(!released(&out) && h.p.may_accept_traffic(Millis(15_000)));
    assert!(
        h.p.release_withheld(Millis(15_000))
            .is_some_and(|w| w.contains("not known"))
    );

    // The judgement of reports (set directly: a step would act on them).
    let lag = |secs: u64, at: u64| Some((Duration::from_secs(secs), Millis(at)));
    let mut q = h.p.clone();
    q.peer_lag = lag(400, 15_050);
    assert!(
        q.release_withheld(Millis(15_100))
            .is_some_and(|w| w.contains("beyond max_data_loss")),
        "5m guard, 400 s behind"
    );
    q.peer_lag = lag(1, 15_050);
    assert_eq!(q.release_withheld(Millis(15_100)), None);
    assert!(
        q.release_withheld(Millis(20_051))
            .is_some_and(|w| w.contains("not known")),
        "older than the grace: stale"
    );
    q.peer_refused = Some(Millis(15_080));
    assert!(
        q.release_withheld(Millis(15_100))
            .is_some_and(|w| w.contains("would not take over"))
    );
    q.peer_lag = lag(1, 15_090);
    assert_eq!(q.release_withheld(Millis(15_100)), None, "a newer report");
    for _ in 0..3 {
        q.peer.record(false);
    }
    assert!(
        q.release_withheld(Millis(15_100))
            .is_some_and(|w| w.contains("spare is unhealthy"))
    );
    let mut q = h.p.clone();
    q.peer_lag = lag(1, 15_050);
    q.cfg.mode = FailoverMode::Manual;
    assert!(
        q.release_withheld(Millis(15_100))
            .is_some_and(|w| w.contains("mode is manual"))
    );
    let mut q = h.p.clone();
    q.peer_lag = lag(1, 15_050);
    q.last_change = Some(Millis(10_000)); // a takeover 5 s ago: cooldown 30m
    assert!(
        q.release_withheld(Millis(15_100))
            .is_some_and(|w| w.contains("cooldown"))
    );

    let report = |lag: u64, at: u64| Event::PeerLag {
        lag: Some(Duration::from_secs(lag)),
        measured_at: Millis(at),
    };
    // A good report: fence first, then the release (no successor).
    let out = h.step(report(1, 15_100), 15_100);
    let fence = out
        .iter()
        .position(|a| {
            *a == Action::Fence {
                reason: FenceReason::LocalFailure,
            }
        })
        .expect("fenced");
    let release = out
        .iter()
        .position(|a| matches!(a, Action::ReleaseLease { record, .. } if record.released && record.successor.is_none()))
        .expect("released");
    assert!(fence < release, "{out:?}");
    assert!(!h.p.may_accept_traffic(Millis(15_100)));

    // Nobody takes it; the service recovers: the lease is taken back at
    // the same epoch, without a lag measurement or a cooldown.
    let out = h.run(15_200, 20_000);
    assert!(writes(&out).is_empty(), "{out:?}");
    h.local(true, 20_000);
    let out = h.local(true, 20_001);
    let taken = out
        .iter()
        .find_map(|a| match a {
            Action::AcquireLease {
                record, trigger, ..
            } => Some((record.epoch, record.released, *trigger)),
            _ => None,
        })
        .expect("taken back");
    assert_eq!(taken, (1, false, PromoteTrigger::Reclaim));
    assert!(out.contains(&Action::Promote {
        epoch: 1,
        trigger: PromoteTrigger::Reclaim
    }));
    h.step(Event::PromoteResult { epoch: 1, ok: true }, 20_100);
    assert!(h.p.may_accept_traffic(Millis(20_100)));
}

/// A restart that ends while the site is fenced enforces the fence again.
#[test]
fn a_restart_ending_while_fenced_fences_again() {
    let mut p = policy(false);
    p.start(Millis(0));
    let mut out = Vec::new();
    for t in 0..3 {
        out.extend(p.step(
            Event::Probe {
                target: Target::Local,
                ok: false,
            },
            Millis(t),
        ));
    }
    assert!(
        out.contains(&Action::RestartLocal {
            role: super::super::Role::Standby,
            epoch: 0
        }),
        "{out:?}"
    );
    let out = p.step(Event::RestartResult { ok: false }, Millis(3_000));
    assert!(out.contains(&Action::Fence {
        reason: FenceReason::Restarted
    }));
    assert!(alerted(&out, AlertKind::LocalRestart));
    // An answer nobody waits for changes nothing.
    let out = p.step(Event::RestartResult { ok: true }, Millis(3_100));
    assert!(!out.iter().any(|a| matches!(a, Action::Fence { .. })));
}
