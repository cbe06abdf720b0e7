//! Unit tests of the promotion gate, the switchover's final WAL position
//! and the cooldown stamp, one site at a time.

use std::time::Duration;

use super::super::{
    Action, AlertKind, Command, Event, FenceReason, LeaseRecord, Lsn, Millis, Policy, PolicyConfig,
    PromoteTrigger, Replay, RequestId, Role, SiteIdentity, Target, Version, WriteCondition,
    WriteOutcome,
};

fn policy(initial: bool, cfg: PolicyConfig) -> Policy {
    let (site, peer) = if initial {
        ("primary", "spare")
    } else {
        ("spare", "primary")
    };
    Policy::new(cfg, SiteIdentity::new(site, peer, initial, 7)).expect("valid config")
}

fn healthy(p: &mut Policy, t: u64) {
    for target in [Target::Local, Target::Peer] {
        for _ in 0..2 {
            p.step(Event::Probe { target, ok: true }, Millis(t));
        }
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

fn observed(v: &str, r: LeaseRecord) -> Event {
    Event::LeaseObserved {
        lease: Some((Version::new(v), r)),
    }
}

fn written(request: RequestId, v: &str) -> Event {
    Event::LeaseWriteResult {
        request,
        outcome: WriteOutcome::Written {
            version: Version::new(v),
        },
    }
}

fn writes(actions: &[Action]) -> Vec<(RequestId, LeaseRecord, WriteCondition)> {
    actions
        .iter()
        .filter_map(|a| a.lease_write())
        .map(|(i, r, c)| (i, r.clone(), c))
        .collect()
}

fn alerted(actions: &[Action], kind: AlertKind) -> bool {
    actions
        .iter()
        .any(|a| matches!(a, Action::Alert { kind: k, .. } if *k == kind))
}

fn promotes(actions: &[Action]) -> Option<(u64, PromoteTrigger)> {
    actions.iter().find_map(|a| match a {
        Action::Promote { epoch, trigger } => Some((*epoch, *trigger)),
        _ => None,
    })
}

/// The primary at epoch 1, its lease written at 100 ("a"); the promotion
/// issued but not answered.
fn acquired_primary(cfg: PolicyConfig) -> (Policy, Vec<Action>) {
    let mut p = policy(true, cfg);
    p.start(Millis(0));
    healthy(&mut p, 0);
    let out = p.step(Event::LeaseObserved { lease: None }, Millis(100));
    let (id, ..) = writes(&out)[0].clone();
    let out = p.step(written(id, "a"), Millis(200));
    (p, out)
}

/// The primary holding epoch 1 and accepting traffic since 300.
fn accepting_primary() -> Policy {
    let (mut p, _) = acquired_primary(PolicyConfig::default());
    p.step(Event::PromoteResult { epoch: 1, ok: true }, Millis(300));
    assert!(p.may_accept_traffic(Millis(300)));
    p
}

#[test]
fn the_lease_creation_is_acquired_not_promoted() {
    let (mut p, out) = acquired_primary(PolicyConfig::default());
    assert!(alerted(&out, AlertKind::Acquired), "{out:?}");
    assert!(!alerted(&out, AlertKind::Promoted), "{out:?}");
    assert_eq!(promotes(&out), Some((1, PromoteTrigger::Initial)));
    let out = p.step(Event::PromoteResult { epoch: 1, ok: true }, Millis(300));
    assert!(!alerted(&out, AlertKind::Promoted), "{out:?}");
    assert!(p.may_accept_traffic(Millis(300)));
}

/// `/active` must not say yes before the database takes writes: the right
/// to accept traffic starts with a successful promotion; a failed one is
/// retried and admits nothing meanwhile.
#[test]
fn traffic_waits_for_a_successful_promotion() {
    let (mut p, _) = acquired_primary(PolicyConfig::default());
    assert!(!p.may_accept_traffic(Millis(250)));
    assert_eq!(p.accepting_until(), None);
    assert_eq!(p.role(Millis(250)), Role::Promoting);
    let out = p.step(
        Event::PromoteResult {
            epoch: 1,
            ok: false,
        },
        Millis(300),
    );
    assert!(alerted(&out, AlertKind::PromotionFailed), "{out:?}");
    assert!(!p.may_accept_traffic(Millis(300)));
    assert_eq!(
        p.next_wakeup(Millis(300)),
        Millis(1_300),
        "read interval first"
    );
    assert_eq!(promotes(&p.step(Event::Tick, Millis(2_200))), None);
    let out = p.step(Event::Tick, Millis(2_300));
    assert_eq!(promotes(&out), Some((1, PromoteTrigger::Initial)));
    p.step(Event::PromoteResult { epoch: 1, ok: true }, Millis(2_400));
    assert!(p.may_accept_traffic(Millis(2_400)));
    assert_eq!(p.accepting_until(), Some(Millis(5_100)));
    assert_eq!(p.role(Millis(2_400)), Role::Primary);
}

/// A fence issued after the promotion undoes it: the site waits for an
/// unfence issued after that fence, and its answer.
#[test]
fn a_fence_after_the_promotion_needs_an_unfence() {
    let (mut p, _) = acquired_primary(PolicyConfig::default());
    // The renewal sent at 2100 is slow; the deadline (5100) passes while
    // the promotion is still running: the database it is opening must be
    // closed again after it.
    assert_eq!(writes(&p.step(Event::Tick, Millis(2_100))).len(), 1);
    let out = p.step(Event::Tick, Millis(5_100));
    assert!(
        out.contains(&Action::Fence {
            reason: FenceReason::LeaseExpired
        }),
        "{out:?}"
    );
    assert!(
        !alerted(&out, AlertKind::Fenced),
        "it never accepted: {out:?}"
    );
    // The first renewal never returns; the second lands (until 10100).
    let (renew2, ..) = writes(&out)[0].clone();
    p.step(written(renew2, "b"), Millis(5_200));
    // The promotion answers, but the fence ran after it: the site needs an
    // unfence issued after that fence, and its answer.
    let out = p.step(Event::PromoteResult { epoch: 1, ok: true }, Millis(5_300));
    assert!(out.contains(&Action::Unfence { epoch: 1 }), "{out:?}");
    assert!(!p.may_accept_traffic(Millis(5_300)), "unfence not answered");
    let out = p.step(
        Event::UnfenceResult {
            epoch: 1,
            ok: false,
        },
        Millis(5_400),
    );
    assert!(alerted(&out, AlertKind::PromotionFailed));
    assert!(!p.may_accept_traffic(Millis(5_400)));
    assert!(
        !p.step(Event::Tick, Millis(7_300))
            .contains(&Action::Unfence { epoch: 1 })
    );
    let out = p.step(Event::Tick, Millis(7_400));
    assert!(out.contains(&Action::Unfence { epoch: 1 }), "{out:?}");
    p.step(Event::UnfenceResult { epoch: 1, ok: true }, Millis(7_450));
    assert!(p.may_accept_traffic(Millis(7_450)));
    assert_eq!(p.accepting_until(), Some(Millis(10_100)));
}

/// Stepping down closes the database before the release.
#[test]
fn stepping_down_closes_the_database() {
    let mut p = accepting_primary();
    // Step down while accepting: fence and release.
    let out = p.step(Event::Command(Command::Release), Millis(1_000));
    assert!(out.contains(&Action::Fence {
        reason: FenceReason::StepDown
    }));
    assert!(!p.may_accept_traffic(Millis(1_000)));
    assert!(!p.db_open());
}

#[test]
fn switchover_fences_reads_the_final_position_then_releases_with_it() {
    let mut p = accepting_primary();
    let out = p.step(
        Event::Command(Command::Switchover {
            to: "spare".into(),
            force: false,
        }),
        Millis(1_000),
    );
    let fence = out.iter().position(|a| {
        matches!(
            a,
            Action::Fence {
                reason: FenceReason::Switchover
            }
        )
    });
    let capture = out.iter().position(|a| *a == Action::CaptureFinalLsn);
    assert!(fence.is_some() && capture > fence, "{out:?}");
    assert!(writes(&out).is_empty(), "no release before the position");
    assert!(alerted(&out, AlertKind::CommandAccepted));
    assert!(!p.may_accept_traffic(Millis(1_000)));
    // A second switchover is refused while this one runs.
    let again = p.step(
        Event::Command(Command::Switchover {
            to: "spare".into(),
            force: false,
        }),
        Millis(1_010),
    );
    assert!(alerted(&again, AlertKind::CommandRefused), "{again:?}");
    let out = p.step(
        Event::FinalLsn {
            lsn: Some(Lsn(0x300_0060)),
        },
        Millis(1_100),
    );
    let [(_, rec, WriteCondition::Matches(v))] = &writes(&out)[..] else {
        panic!("{out:?}")
    };
    assert!(matches!(
        out.iter().find(|a| a.lease_write().is_some()),
        Some(Action::ReleaseLease { .. })
    ));
    assert_eq!(v.as_str(), "a");
    assert!(rec.released);
    assert_eq!(rec.successor.as_deref(), Some("spare"));
    assert_eq!(rec.final_lsn, Some(Lsn(0x300_0060)));
    assert!(
        !out.iter().any(|a| matches!(a, Action::Fence { .. })),
        "fenced once"
    );
    assert!(!p.may_accept_traffic(Millis(1_100)));
}

#[test]
fn switchover_without_a_final_position_is_abandoned() {
    let mut p = accepting_primary();
    p.step(
        Event::Command(Command::Switchover {
            to: "spare".into(),
            force: false,
        }),
        Millis(1_000),
    );
    let out = p.step(Event::FinalLsn { lsn: None }, Millis(1_100));
    assert!(alerted(&out, AlertKind::SwitchoverAborted), "{out:?}");
    assert!(writes(&out).iter().all(|(_, r, _)| !r.released), "{out:?}");
    assert!(out.contains(&Action::Unfence { epoch: 1 }), "{out:?}");
    p.step(Event::UnfenceResult { epoch: 1, ok: true }, Millis(1_200));
    assert!(p.may_accept_traffic(Millis(1_200)));
    // No answer at all: abandoned after `switchover_timeout`.
    let mut p = accepting_primary();
    p.step(
        Event::Command(Command::Switchover {
            to: "spare".into(),
            force: false,
        }),
        Millis(1_000),
    );
    let mut now = 1_000;
    let mut aborted = false;
    while now < 61_000 && !aborted {
        now += 1_000;
        let out = p.step(Event::Tick, Millis(now));
        // Keep the lease: answer every renewal.
        for (id, ..) in writes(&out) {
            p.step(written(id, &format!("r{now}")), Millis(now));
        }
        aborted = alerted(&out, AlertKind::SwitchoverAborted);
    }
    assert_eq!(now, 61_000, "abandoned after the switchover timeout");
    // A late answer changes nothing.
    let out = p.step(Event::FinalLsn { lsn: Some(Lsn(1)) }, Millis(now + 10));
    assert!(writes(&out).is_empty(), "{out:?}");
}

/// Forced, a switchover whose final position cannot be read hands over
/// without one (the holder's database is down: nothing else can move it).
#[test]
fn a_forced_switchover_hands_over_without_a_final_position() {
    let mut p = accepting_primary();
    let out = p.step(
        Event::Command(Command::Switchover {
            to: "spare".into(),
            force: true,
        }),
        Millis(1_000),
    );
    assert!(out.contains(&Action::CaptureFinalLsn), "{out:?}");
    let out = p.step(Event::FinalLsn { lsn: None }, Millis(1_100));
    let [(_, rec, _)] = &writes(&out)[..] else {
        panic!("{out:?}")
    };
    assert!(rec.released && rec.final_lsn.is_none(), "{rec:?}");
    assert_eq!(rec.successor.as_deref(), Some("spare"));
    assert!(!p.may_accept_traffic(Millis(1_100)));
}

/// The spare, handed a lease with a final position, takes it with the
/// position in its record and waits for its database to replay it.
fn handed_spare(final_lsn: Lsn) -> (Policy, Vec<Action>) {
    let mut p = policy(false, PolicyConfig::default());
    p.start(Millis(0));
    healthy(&mut p, 0);
    let released = LeaseRecord {
        released: true,
        successor: Some("spare".into()),
        final_lsn: Some(final_lsn),
        ..record("primary", 1, 5)
    };
    let out = p.step(observed("r", released), Millis(100));
    let [(id, rec, WriteCondition::Matches(_))] = &writes(&out)[..] else {
        panic!("{out:?}")
    };
    assert_eq!((rec.epoch, rec.final_lsn), (2, Some(final_lsn)));
    let out = p.step(written(*id, "s"), Millis(200));
    (p, out)
}

#[test]
fn the_successor_promotes_only_once_it_has_replayed_the_final_position() {
    let target = Lsn(0x300_0060);
    let (mut p, out) = handed_spare(target);
    assert_eq!(promotes(&out), None, "{out:?}");
    assert!(out.contains(&Action::ReadReplayPosition), "{out:?}");
    assert_eq!(p.role(Millis(200)), Role::Promoting);
    assert_eq!(p.status(Millis(200)).awaiting_lsn, Some(target));
    // Behind: keep reading, every 250 ms, one read at a time.
    let out = p.step(
        Event::ReplayPosition {
            replay: Replay::Standby(Lsn(0x300_0000)),
        },
        Millis(300),
    );
    assert_eq!(promotes(&out), None);
    assert_eq!(p.status(Millis(300)).replayed_lsn, Some(Lsn(0x300_0000)));
    assert!(
        !p.step(Event::Tick, Millis(400))
            .contains(&Action::ReadReplayPosition)
    );
    let out = p.step(Event::Tick, Millis(450));
    assert!(out.contains(&Action::ReadReplayPosition), "{out:?}");
    // A failed read changes nothing; the renewals go on meanwhile.
    p.step(
        Event::ReplayPosition {
            replay: Replay::Unknown,
        },
        Millis(500),
    );
    let out = p.step(Event::Tick, Millis(2_200));
    assert!(
        writes(&out)
            .iter()
            .any(|(_, r, _)| r.renewals == 1 && r.final_lsn == Some(target)),
        "the renewal keeps the position: {out:?}"
    );
    assert!(!p.may_accept_traffic(Millis(2_200)));
    // Failover without --force is refused while waiting.
    let out = p.step(
        Event::Command(Command::Failover { force: false }),
        Millis(2_250),
    );
    assert!(alerted(&out, AlertKind::CommandRefused), "{out:?}");
    let out = p.step(
        Event::ReplayPosition {
            replay: Replay::Standby(target),
        },
        Millis(2_300),
    );
    assert_eq!(promotes(&out), Some((2, PromoteTrigger::Switchover)));
    assert!(!p.may_accept_traffic(Millis(2_300)));
    let out = p.step(Event::PromoteResult { epoch: 2, ok: true }, Millis(2_400));
    assert!(alerted(&out, AlertKind::Promoted), "{out:?}");
    assert!(out.contains(&Action::RunHook {
        kind: super::super::HookKind::OnPromote,
        epoch: 2
    }));
    assert!(p.may_accept_traffic(Millis(2_400)));
}

#[test]
fn renewals_after_the_promotion_drop_the_final_position() {
    let (mut p, _) = handed_spare(Lsn(10));
    p.step(
        Event::ReplayPosition {
            replay: Replay::Standby(Lsn(10)),
        },
        Millis(300),
    );
    p.step(Event::PromoteResult { epoch: 2, ok: true }, Millis(400));
    let out = p.step(Event::Tick, Millis(2_200));
    let [(_, rec, _)] = &writes(&out)[..] else {
        panic!("{out:?}")
    };
    assert_eq!((rec.renewals, rec.final_lsn), (1, None));
}

#[test]
fn a_stalled_successor_alerts_and_promotes_only_when_forced() {
    let (mut p, _) = handed_spare(Lsn(1_000));
    let mut now = 200;
    let mut stalled_at = None;
    while now < 70_000 {
        now += 250;
        let out = p.step(Event::Tick, Millis(now));
        for (id, ..) in writes(&out) {
            p.step(written(id, &format!("v{now}")), Millis(now));
        }
        if out.contains(&Action::ReadReplayPosition) {
            p.step(
                Event::ReplayPosition {
                    replay: Replay::Standby(Lsn(999)),
                },
                Millis(now),
            );
        }
        assert_eq!(promotes(&out), None, "never on its own");
        if alerted(&out, AlertKind::SwitchoverStalled) {
            assert!(stalled_at.is_none(), "alerted once");
            stalled_at = Some(now);
        }
    }
    assert_eq!(stalled_at, Some(60_200), "after switchover_timeout");
    assert!(!p.may_accept_traffic(Millis(now)));
    assert!(p.epoch() == Some(2), "it keeps the lease");
    let out = p.step(
        Event::Command(Command::Failover { force: true }),
        Millis(now),
    );
    assert!(alerted(&out, AlertKind::CommandAccepted), "{out:?}");
    assert_eq!(
        promotes(&out),
        Some((2, PromoteTrigger::Operator { force: true }))
    );
    p.step(Event::PromoteResult { epoch: 2, ok: true }, Millis(now + 1));
    assert!(p.may_accept_traffic(Millis(now + 1)));
}

/// A database that replays no WAL (not a standby) can never reach the
/// position: the alert comes at once, not after the timeout. One whose
/// recovery already ended past it (an earlier promotion) is done.
#[test]
fn a_database_that_replays_no_wal_stalls_at_once() {
    let (mut p, _) = handed_spare(Lsn(1_000));
    let out = p.step(
        Event::ReplayPosition {
            replay: Replay::NotReplaying(None),
        },
        Millis(300),
    );
    assert!(alerted(&out, AlertKind::SwitchoverStalled), "{out:?}");
    assert_eq!(promotes(&out), None);
    let (mut p, _) = handed_spare(Lsn(1_000));
    let out = p.step(
        Event::ReplayPosition {
            replay: Replay::NotReplaying(Some(Lsn(1_200))),
        },
        Millis(300),
    );
    assert_eq!(promotes(&out), Some((2, PromoteTrigger::Switchover)));
}

/// A record of an older version (no final position) is taken as before:
/// the successor promotes at once.
#[test]
fn a_release_without_a_final_position_promotes_at_once() {
    let mut p = policy(false, PolicyConfig::default());
    healthy(&mut p, 0);
    let released = LeaseRecord {
        released: true,
        successor: Some("spare".into()),
        ..record("primary", 1, 5)
    };
    let out = p.step(observed("r", released), Millis(100));
    let (id, ..) = writes(&out)[0].clone();
    let out = p.step(written(id, "s"), Millis(200));
    assert_eq!(promotes(&out), Some((2, PromoteTrigger::Switchover)));
}

/// The cooldown survives a restart: takeovers are stamped with the wall
/// clock, and a restarted site applies what is left of the cooldown.
#[test]
fn the_cooldown_survives_a_restart() {
    let cfg = PolicyConfig {
        cooldown: Duration::from_secs(60),
        ..PolicyConfig::default()
    };
    const WALL: u64 = 1_700_000_000_000;
    // The stamp: a takeover record carries the taker's wall clock.
    let mut spare = policy(false, cfg.clone());
    healthy(&mut spare, 0);
    spare.step(Event::WallClock { unix_ms: WALL }, Millis(0));
    spare.step(
        Event::ReplicationLag {
            lag: Duration::ZERO,
            measured_at: Millis(0),
        },
        Millis(0),
    );
    spare.step(observed("a", record("primary", 1, 3)), Millis(1_000));
    let out = spare.step(Event::Tick, Millis(8_000));
    let [(_, rec, _)] = &writes(&out)[..] else {
        panic!("{out:?}")
    };
    assert_eq!(rec.taken_at_ms, Some(WALL + 8_000));

    // A freshly started primary (its agent restarted) sees that lease,
    // taken 10 s ago by its wall clock, and later expiring.
    let restarted = |stamp: Option<u64>| {
        let mut p = policy(true, cfg.clone());
        p.start(Millis(0));
        healthy(&mut p, 0);
        p.step(
            Event::WallClock {
                unix_ms: WALL + 18_000,
            },
            Millis(0),
        );
        p.step(
            Event::ReplicationLag {
                lag: Duration::ZERO,
                measured_at: Millis(0),
            },
            Millis(0),
        );
        let taken = LeaseRecord {
            taken_at_ms: stamp,
            ..record("spare", 2, 0)
        };
        p.step(observed("b", taken), Millis(100));
        p
    };
    let mut p = restarted(Some(WALL + 8_000));
    let out = p.step(Event::Tick, Millis(7_100));
    assert!(writes(&out).is_empty(), "{out:?}");
    assert!(alerted(&out, AlertKind::FailoverBlocked), "{out:?}");
    // 60 s after the stamp = 50 s after this start.
    assert!(writes(&p.step(Event::Tick, Millis(49_900))).is_empty());
    let out = p.step(Event::Tick, Millis(50_000));
    assert!(
        matches!(
            out.iter().find(|a| a.lease_write().is_some()),
            Some(Action::AcquireLease {
                trigger: PromoteTrigger::Automatic,
                ..
            })
        ),
        "{out:?}"
    );
    // Without a stamp (or an old one) nothing is known: no cooldown.
    for stamp in [None, Some(WALL - 3_600_000)] {
        let mut p = restarted(stamp);
        let out = p.step(Event::Tick, Millis(7_100));
        assert_eq!(writes(&out).len(), 1, "{stamp:?}: {out:?}");
    }
}

#[derive(Debug, Clone)]
enum Input {
    Tick,
    /// Answer the oldest unanswered open (Promote or Unfence).
    Open(bool),
    FinalLsn(Option<u64>),
    Replay(u8, u64),
    Switchover(bool),
    Force,
    /// Answer the n-th emitted write (modulo) as written.
    Written(usize),
    /// Show the lease released by the peer to this site with a position.
    Handed(u64),
}

fn input() -> impl proptest::strategy::Strategy<Value = Input> {
    use proptest::prelude::*;
    prop_oneof![
        3 => Just(Input::Tick),
        3 => any::<bool>().prop_map(Input::Open),
        1 => proptest::option::of(0u64..100).prop_map(Input::FinalLsn),
        2 => (0u8..3, 0u64..100).prop_map(|(k, l)| Input::Replay(k, l)),
        1 => any::<bool>().prop_map(Input::Switchover),
        1 => Just(Input::Force),
        3 => any::<usize>().prop_map(Input::Written),
        1 => (0u64..100).prop_map(Input::Handed),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config {
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    })]

    /// Whatever happens, a site accepts traffic only when its latest open
    /// of the database was issued after its latest fence and answered with
    /// success; and a successor handed a final position issues its
    /// promotion only once a replay at or past it was reported, or when
    /// forced.
    #[test]
    fn traffic_needs_an_open_database_and_the_final_position(
        initial in proptest::prelude::any::<bool>(),
        inputs in proptest::collection::vec((input(), 0u64..1_500), 1..150),
    ) {
        let mut p = policy(initial, PolicyConfig::default());
        let mut out = p.start(Millis(0));
        healthy(&mut p, 0);
        let mut now = 0;
        let mut emitted: Vec<RequestId> = Vec::new();
        // The database as the driver's worker leaves it: Fence / Promote /
        // Unfence in order; `open` after the last one answered.
        let mut queue: std::collections::VecDeque<Action> = Default::default();
        let mut open = false;
        let mut best_replay: Option<u64> = None;
        let mut forced = false;
        let mut peer_epoch = 10;
        for (input, dt) in inputs {
            for a in &out {
                match a {
                    Action::Fence { .. } | Action::Promote { .. } | Action::Unfence { .. } => {
                        queue.push_back(a.clone());
                    }
                    _ => {}
                }
                if matches!(a, Action::Promote { .. } | Action::Unfence { .. }) {
                    // Only a holder whose lease is valid opens its database.
                    let left = p.status(Millis(now)).time_left;
                    proptest::prop_assert!(
                        left.is_some_and(|t| !t.is_zero()),
                        "{a:?} without a valid lease"
                    );
                }
                if let Action::Promote { trigger, .. } = a {
                    // The position in the held record, if any, was reached.
                    if let Some(target) = p.status(Millis(now)).lease.and_then(|r| r.final_lsn)
                        && *trigger != (PromoteTrigger::Operator { force: true })
                    {
                        proptest::prop_assert!(
                            best_replay.is_some_and(|r| r >= target.0) || forced,
                            "promotion before replaying {target}: {out:?}"
                        );
                    }
                }
                if let Some((id, ..)) = a.lease_write() {
                    emitted.push(id);
                }
            }
            // Fences run at once in the worker; they close the database.
            while let Some(Action::Fence { .. }) = queue.front() {
                queue.pop_front();
                open = false;
            }
            now += dt;
            let event = match input {
                Input::Tick => Event::Tick,
                Input::Open(ok) => match queue.pop_front() {
                    Some(Action::Promote { epoch, .. }) => {
                        open = ok;
                        Event::PromoteResult { epoch, ok }
                    }
                    Some(Action::Unfence { epoch }) => {
                        open = ok;
                        Event::UnfenceResult { epoch, ok }
                    }
                    _ => Event::Tick,
                },
                Input::FinalLsn(l) => Event::FinalLsn { lsn: l.map(Lsn) },
                Input::Replay(k, l) => {
                    let replay = match k {
                        0 => Replay::Standby(Lsn(l)),
                        1 => Replay::NotReplaying(Some(Lsn(l))),
                        _ => Replay::Unknown,
                    };
                    if k < 2 {
                        best_replay = best_replay.max(Some(l));
                    }
                    Event::ReplayPosition { replay }
                }
                Input::Switchover(force) => Event::Command(Command::Switchover {
                    to: if initial { "spare" } else { "primary" }.into(),
                    force,
                }),
                Input::Force => {
                    forced = true;
                    Event::Command(Command::Failover { force: true })
                }
                Input::Written(n) if !emitted.is_empty() => {
                    written(emitted[n % emitted.len()], &format!("v{now}"))
                }
                Input::Handed(l) => {
                    // Above any epoch this site may hold, so that it
                    // supersedes the current lease.
                    peer_epoch += 10;
                    best_replay = None;
                    forced = false;
                    let rec = LeaseRecord {
                        released: true,
                        successor: Some(if initial { "primary" } else { "spare" }.into()),
                        final_lsn: Some(Lsn(l)),
                        ..record(if initial { "spare" } else { "primary" }, peer_epoch, 0)
                    };
                    observed(&format!("h{now}"), rec)
                }
                _ => Event::Tick,
            };
            out = p.step(event, Millis(now));
            if p.may_accept_traffic(Millis(now)) {
                proptest::prop_assert!(open, "accepting while the database is closed");
            }
        }
    }
}
