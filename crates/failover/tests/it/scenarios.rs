//! Deterministic scenarios: one fault at a time, exact expectations.

use std::time::Duration;

use warmspare_failover::FailoverMode;
use warmspare_failover::policy::{AlertKind, Command, PolicyConfig, PromoteTrigger};

use crate::clock::Clock;
use crate::world::{Link, PRIMARY, Params, SPARE, World};

fn world(cfg: PolicyConfig) -> World {
    World::new(Params::calm(cfg))
}

/// A world where the primary holds the lease and accepts traffic at 10 s.
fn settled(cfg: PolicyConfig) -> World {
    let mut w = world(cfg);
    w.run_until(10_000);
    assert!(w.accepting(PRIMARY), "{}", w.summary());
    assert!(!w.accepting(SPARE));
    assert_eq!(w.lease().map(|r| r.epoch), Some(1));
    w
}

fn last_promotion(w: &World) -> (usize, u64, PromoteTrigger) {
    let p = w.promotions.last().expect("a promotion");
    (p.site, p.epoch, p.trigger)
}

fn end_of_primary(w: &World) -> u64 {
    w.intervals
        .iter()
        .find(|i| i.site == PRIMARY)
        .and_then(|i| i.end)
        .expect("primary stopped")
}

#[test]
fn primary_dies_spare_promotes_after_ttl_plus_margin() {
    let mut w = settled(PolicyConfig::default());
    w.crash_at(10_000, PRIMARY);
    assert!(
        w.run_until_cond(30_000, |w| w.accepting(SPARE)),
        "{}",
        w.summary()
    );
    let took = w.first_start(SPARE, 0).unwrap() - 10_000;
    // The last renewal landed at most renew_interval + a tick before the
    // crash; the spare waits ttl + margin = 7 s from its first sight of it.
    assert!(
        (4_800..=8_400).contains(&took),
        "took {took}ms\n{}",
        w.summary()
    );
    assert_eq!(last_promotion(&w), (SPARE, 2, PromoteTrigger::Automatic));
    assert!(w.violations.is_empty(), "{}", w.summary());
}

#[test]
fn repository_cut_from_primary_fences_it_before_the_spare_accepts() {
    let mut w = settled(PolicyConfig::default());
    w.partition(10_000, 60_000, Link::Repo(PRIMARY));
    w.run_until(40_000);
    let fenced_at = end_of_primary(&w);
    let spare_at = w.first_start(SPARE, 0).expect("spare took over");
    assert!(fenced_at <= 10_000 + 5_000, "fenced at {fenced_at}");
    // Exact clocks: the gap is the whole 2 x margin.
    assert!(
        spare_at >= fenced_at + 2_000,
        "fenced {fenced_at}, spare {spare_at}"
    );
    assert!(w.alerted(PRIMARY, AlertKind::Fenced));
    // When the link heals the old primary learns it lost and stays fenced.
    w.run_until(80_000);
    assert!(!w.accepting(PRIMARY) && w.accepting(SPARE));
    assert!(w.violations.is_empty(), "{}", w.summary());
}

#[test]
fn manual_mode_waits_for_the_operator() {
    let cfg = PolicyConfig {
        mode: FailoverMode::Manual,
        ..PolicyConfig::default()
    };
    let mut w = settled(cfg);
    w.crash_at(10_000, PRIMARY);
    w.run_until(40_000);
    assert!(!w.accepting(SPARE));
    assert!(w.alerted(SPARE, AlertKind::FailoverNeeded));
    w.command_at(40_000, SPARE, Command::Failover { force: false });
    assert!(
        w.run_until_cond(41_000, |w| w.accepting(SPARE)),
        "{}",
        w.summary()
    );
    assert_eq!(
        last_promotion(&w),
        (SPARE, 2, PromoteTrigger::Operator { force: false })
    );
    assert!(w.violations.is_empty(), "{}", w.summary());
}

#[test]
fn notify_mode_only_alerts() {
    let cfg = PolicyConfig {
        mode: FailoverMode::Notify,
        ..PolicyConfig::default()
    };
    let mut w = settled(cfg);
    w.crash_at(10_000, PRIMARY);
    w.run_until(60_000);
    assert!(!w.accepting(SPARE));
    assert!(w.alerted(SPARE, AlertKind::PrimaryLost));
}

#[test]
fn switchover_hands_over_with_the_next_epoch() {
    let mut w = settled(PolicyConfig::default());
    w.command_at(
        10_000,
        PRIMARY,
        Command::Switchover {
            to: "spare".into(),
            force: false,
        },
    );
    // The spare replays the primary's last writes at its next refresh
    // (every second here), then promotes.
    assert!(
        w.run_until_cond(12_500, |w| w.accepting(SPARE)),
        "{}",
        w.summary()
    );
    assert_eq!(last_promotion(&w), (SPARE, 2, PromoteTrigger::Switchover));
    assert!(end_of_primary(&w) <= w.first_start(SPARE, 0).unwrap());
    let lease = w.lease().unwrap();
    assert_eq!(
        (lease.holder.as_str(), lease.epoch, lease.released),
        ("spare", 2, false)
    );
    // And back again.
    w.command_at(
        20_000,
        SPARE,
        Command::Switchover {
            to: "primary".into(),
            force: false,
        },
    );
    assert!(
        w.run_until_cond(22_500, |w| w.accepting(PRIMARY)),
        "{}",
        w.summary()
    );
    assert_eq!(last_promotion(&w), (PRIMARY, 3, PromoteTrigger::Switchover));
    assert!(w.violations.is_empty(), "{}", w.summary());
}

/// A calm world whose spare copies the primary's writes only every
/// `refresh` ms, settled with the primary accepting at 10 s.
fn slow_copies(refresh: u64) -> World {
    let mut p = Params::calm(PolicyConfig::default());
    p.refresh_gap = (refresh, refresh);
    let mut w = World::new(p);
    w.run_until(10_000);
    assert!(w.accepting(PRIMARY), "{}", w.summary());
    w
}

/// The successor takes the lease at once but accepts traffic only after
/// it has replayed the old primary's final position: a switchover loses no
/// committed write (the world checks that at the promotion).
#[test]
fn switchover_waits_for_the_final_wal_position() {
    let mut w = slow_copies(4_000);
    // Refreshes at 0, 4 s, 8 s, 12 s...: the writes up to the fence at
    // 10.5 s reach the spare at 12 s.
    w.command_at(
        10_500,
        PRIMARY,
        Command::Switchover {
            to: "spare".into(),
            force: false,
        },
    );
    assert!(
        w.run_until_cond(11_900, |w| w.lease().is_some_and(|r| r.holder == "spare")),
        "{}",
        w.summary()
    );
    let lease = w.lease().unwrap().clone();
    assert_eq!(lease.epoch, 2);
    assert!(lease.final_lsn.is_some(), "{lease:?}");
    w.run_until(11_990);
    assert!(!w.accepting(SPARE) && !w.accepting(PRIMARY));
    assert!(
        w.promotions.iter().all(|p| p.site == PRIMARY),
        "{}",
        w.summary()
    );
    assert!(
        w.run_until_cond(13_000, |w| w.accepting(SPARE)),
        "{}",
        w.summary()
    );
    assert!(w.first_start(SPARE, 0).unwrap() >= 12_000);
    assert_eq!(last_promotion(&w), (SPARE, 2, PromoteTrigger::Switchover));
    // Once promoted, the renewals drop the position.
    w.run_until(20_000);
    assert_eq!(w.lease().unwrap().final_lsn, None);
    assert!(w.violations.is_empty(), "{}", w.summary());
}

/// An agent restarted while it waits for the final position waits again
/// (the position is in its lease record) instead of promoting at once.
#[test]
fn a_restart_during_the_wait_waits_again() {
    let mut w = slow_copies(8_000);
    // Refreshes at 0, 8 s, 16 s: the fence at 10.5 s is replayed at 16 s.
    w.command_at(
        10_500,
        PRIMARY,
        Command::Switchover {
            to: "spare".into(),
            force: false,
        },
    );
    w.crash_at(11_500, SPARE);
    w.restart_at(12_000, SPARE);
    w.run_until(15_900);
    assert!(!w.accepting(SPARE), "{}", w.summary());
    assert!(
        w.run_until_cond(18_000, |w| w.accepting(SPARE)),
        "{}",
        w.summary()
    );
    assert!(w.first_start(SPARE, 0).unwrap() >= 16_000);
    assert_eq!(last_promotion(&w), (SPARE, 2, PromoteTrigger::Reclaim));
    assert!(w.violations.is_empty(), "{}", w.summary());
}

/// A successor that never gets the final position holds the lease, says so
/// after `switchover_timeout`, and never promotes on its own; an operator's
/// forced failover promotes it.
#[test]
fn a_stalled_switchover_alerts_and_waits_for_the_operator() {
    let mut w = slow_copies(1_000_000);
    w.command_at(
        10_500,
        PRIMARY,
        Command::Switchover {
            to: "spare".into(),
            force: false,
        },
    );
    w.run_until(69_000);
    assert!(!w.alerted(SPARE, AlertKind::SwitchoverStalled));
    w.run_until(72_000);
    assert!(
        w.alerted(SPARE, AlertKind::SwitchoverStalled),
        "{}",
        w.summary()
    );
    w.run_until(200_000);
    assert!(!w.accepting(SPARE) && !w.accepting(PRIMARY));
    assert_eq!(
        w.lease().map(|r| (r.holder.as_str(), r.epoch)),
        Some(("spare", 2))
    );
    // Without --force the wait goes on; with it, the spare promotes.
    w.command_at(200_000, SPARE, Command::Failover { force: false });
    w.run_until(201_000);
    assert!(w.alerted(SPARE, AlertKind::CommandRefused) && !w.accepting(SPARE));
    w.command_at(201_000, SPARE, Command::Failover { force: true });
    assert!(
        w.run_until_cond(202_000, |w| w.accepting(SPARE)),
        "{}",
        w.summary()
    );
    assert_eq!(
        last_promotion(&w),
        (SPARE, 2, PromoteTrigger::Operator { force: true })
    );
    assert!(w.violations.is_empty(), "{}", w.summary());
}

/// A stalled successor can hand the lease back: it never promoted, so the
/// old primary takes it without waiting and nothing is lost.
#[test]
fn a_stalled_switchover_can_be_switched_back() {
    let mut w = slow_copies(1_000_000);
    w.command_at(
        10_500,
        PRIMARY,
        Command::Switchover {
            to: "spare".into(),
            force: false,
        },
    );
    w.run_until(15_000);
    assert_eq!(w.lease().map(|r| r.holder.as_str()), Some("spare"));
    w.command_at(
        15_000,
        SPARE,
        Command::Switchover {
            to: "primary".into(),
            force: false,
        },
    );
    assert!(
        w.run_until_cond(17_000, |w| w.accepting(PRIMARY)),
        "{}",
        w.summary()
    );
    assert_eq!(last_promotion(&w), (PRIMARY, 3, PromoteTrigger::Switchover));
    assert!(w.promotions.iter().all(|p| p.site == PRIMARY));
    assert!(w.violations.is_empty(), "{}", w.summary());
}

/// A holder that cannot read its final position abandons the switchover
/// and accepts traffic again; the lease never moved.
#[test]
fn a_switchover_without_a_final_position_is_abandoned() {
    let mut w = settled(PolicyConfig::default());
    // The database fails just while the position is read.
    w.sick(10_000, 10_400, PRIMARY, false);
    w.command_at(
        10_000,
        PRIMARY,
        Command::Switchover {
            to: "spare".into(),
            force: false,
        },
    );
    w.run_until(10_500);
    assert!(
        w.alerted(PRIMARY, AlertKind::SwitchoverAborted),
        "{}",
        w.summary()
    );
    assert!(
        w.run_until_cond(14_000, |w| w.accepting(PRIMARY)),
        "{}",
        w.summary()
    );
    w.run_until(20_000);
    assert!(w.accepting(PRIMARY) && !w.accepting(SPARE));
    assert_eq!(w.lease().map(|r| (r.epoch, r.released)), Some((1, false)));
    assert!(w.violations.is_empty(), "{}", w.summary());
}

#[test]
fn switchover_is_refused_by_a_non_holder_or_to_a_sick_peer() {
    let mut w = settled(PolicyConfig::default());
    w.command_at(
        10_000,
        SPARE,
        Command::Switchover {
            to: "primary".into(),
            force: false,
        },
    );
    w.sick(10_000, 60_000, SPARE, false);
    w.command_at(
        15_000,
        PRIMARY,
        Command::Switchover {
            to: "spare".into(),
            force: false,
        },
    );
    w.run_until(20_000);
    assert!(w.alerted(SPARE, AlertKind::CommandRefused));
    assert!(w.alerted(PRIMARY, AlertKind::CommandRefused));
    assert!(w.accepting(PRIMARY));
}

#[test]
fn cooldown_blocks_a_second_automatic_failover() {
    let cfg = PolicyConfig {
        cooldown: Duration::from_secs(60),
        ..PolicyConfig::default()
    };
    let mut w = settled(cfg);
    w.partition(10_000, 25_000, Link::Repo(PRIMARY));
    w.run_until(30_000);
    assert!(w.accepting(SPARE), "{}", w.summary());
    // The old primary saw the handover when its link healed (~25 s).
    w.crash_at(30_000, SPARE);
    w.run_until(80_000);
    assert!(!w.accepting(PRIMARY), "{}", w.summary());
    assert!(w.alerted(PRIMARY, AlertKind::FailoverBlocked));
    assert!(
        w.run_until_cond(100_000, |w| w.accepting(PRIMARY)),
        "{}",
        w.summary()
    );
    assert!(w.first_start(PRIMARY, 80_000).unwrap() >= 85_000);
    assert_eq!(last_promotion(&w), (PRIMARY, 3, PromoteTrigger::Automatic));
    assert!(w.violations.is_empty(), "{}", w.summary());
}

#[test]
fn maintenance_pause_blocks_automatic_failover() {
    let mut w = settled(PolicyConfig::default());
    w.command_at(10_000, SPARE, Command::Pause);
    w.crash_at(11_000, PRIMARY);
    w.run_until(40_000);
    assert!(!w.accepting(SPARE));
    assert!(w.alerted(SPARE, AlertKind::FailoverBlocked));
    w.command_at(40_000, SPARE, Command::Resume);
    assert!(
        w.run_until_cond(41_000, |w| w.accepting(SPARE)),
        "{}",
        w.summary()
    );
}

#[test]
fn data_loss_guard_blocks_unless_forced() {
    let cfg = PolicyConfig {
        max_data_loss: Duration::from_secs(10),
        ..PolicyConfig::default()
    };
    let mut p = Params::calm(cfg);
    p.refresh_gap = (1_000_000, 1_000_000); // nothing new after t = 0
    let mut w = World::new(p);
    w.run_until(10_000);
    w.crash_at(10_000, PRIMARY);
    w.run_until(30_000);
    assert!(!w.accepting(SPARE));
    assert!(w.alerted(SPARE, AlertKind::FailoverBlocked));
    w.command_at(30_000, SPARE, Command::Failover { force: false });
    w.run_until(32_000);
    assert!(!w.accepting(SPARE));
    assert!(w.alerted(SPARE, AlertKind::CommandRefused));
    w.command_at(32_000, SPARE, Command::Failover { force: true });
    assert!(
        w.run_until_cond(33_000, |w| w.accepting(SPARE)),
        "{}",
        w.summary()
    );
    assert_eq!(
        last_promotion(&w),
        (SPARE, 2, PromoteTrigger::Operator { force: true })
    );
}

#[test]
fn watchdog_restart_fixes_the_service_without_handover() {
    let mut w = settled(PolicyConfig::default());
    w.sick(10_000, 100_000, PRIMARY, true);
    w.run_until(60_000);
    assert_eq!(w.restarts[PRIMARY], 1);
    assert!(
        w.accepting(PRIMARY) && w.first_start(SPARE, 0).is_none(),
        "{}",
        w.summary()
    );
}

#[test]
fn unrecoverable_primary_releases_the_lease_early() {
    let mut w = settled(PolicyConfig::default());
    w.sick(10_000, 100_000, PRIMARY, false);
    assert!(
        w.run_until_cond(40_000, |w| w.accepting(SPARE)),
        "{}",
        w.summary()
    );
    let took = w.first_start(SPARE, 0).unwrap() - 10_000;
    // 3 failed probes, one restart, a 5 s grace, then an immediate handover.
    assert!(took < 10_000, "took {took}ms");
    assert_eq!(w.restarts[PRIMARY], 1);
    assert_eq!(last_promotion(&w), (SPARE, 2, PromoteTrigger::Automatic));
    assert!(w.violations.is_empty(), "{}", w.summary());
}

/// The watchdog does not release the lease to a spare whose data loss
/// would exceed `max_data_loss` (the spare would refuse it and no site
/// would be active): the primary keeps it and says why, and releases it as
/// soon as the spare has caught up.
#[test]
fn watchdog_keeps_the_lease_while_the_spare_is_beyond_its_guard() {
    let cfg = PolicyConfig {
        max_data_loss: Duration::from_secs(10),
        ..PolicyConfig::default()
    };
    let mut p = Params::calm(cfg);
    p.refresh_gap = (1_000_000, 1_000_000); // the spare's copy stays at t = 0
    let mut w = World::new(p);
    w.run_until(10_000);
    w.sick(20_000, 1_000_000, PRIMARY, false);
    w.run_until(60_000);
    assert_eq!(w.restarts[PRIMARY], 1);
    assert!(
        w.alerted(PRIMARY, AlertKind::ReleaseWithheld),
        "{}",
        w.summary()
    );
    assert_eq!(w.lease().map(|r| (r.epoch, r.released)), Some((1, false)));
    assert!(w.releases.is_empty() && w.first_start(SPARE, 0).is_none());
    // The spare catches up: the primary releases and the spare takes over.
    w.refresh_at(60_000, SPARE);
    assert!(
        w.run_until_cond(70_000, |w| w.accepting(SPARE)),
        "{}",
        w.summary()
    );
    assert_eq!(last_promotion(&w), (SPARE, 2, PromoteTrigger::Automatic));
    assert!(w.violations.is_empty(), "{}", w.summary());
}

/// Nor to a paused spare: its report says it would not take over.
#[test]
fn watchdog_does_not_release_to_a_paused_spare() {
    let mut w = settled(PolicyConfig::default());
    w.command_at(10_000, SPARE, Command::Pause);
    w.sick(12_000, 1_000_000, PRIMARY, false);
    w.run_until(40_000);
    assert!(
        w.alerted(PRIMARY, AlertKind::ReleaseWithheld),
        "{}",
        w.summary()
    );
    assert!(w.releases.is_empty(), "{}", w.summary());
    w.command_at(40_000, SPARE, Command::Resume);
    assert!(
        w.run_until_cond(50_000, |w| w.accepting(SPARE)),
        "{}",
        w.summary()
    );
    assert!(w.violations.is_empty(), "{}", w.summary());
}

/// Should the spare refuse a released lease after all (here: its guard is
/// stricter than the primary's), nobody is active while the primary's
/// service is down; the primary takes its lease back, at the same epoch,
/// as soon as its service has recovered.
#[test]
fn a_released_lease_nobody_takes_is_taken_back_once_the_service_recovers() {
    let strict = PolicyConfig {
        max_data_loss: Duration::from_secs(10),
        ..PolicyConfig::default()
    };
    let mut p = Params::calm(PolicyConfig::default());
    p.cfg[SPARE] = strict;
    p.refresh_gap = (1_000_000, 1_000_000);
    let mut w = World::new(p);
    w.run_until(10_000);
    w.sick(20_000, 50_000, PRIMARY, false);
    w.run_until(50_000);
    assert!(
        w.alerted(SPARE, AlertKind::FailoverBlocked),
        "{}",
        w.summary()
    );
    assert_eq!(w.lease().map(|r| (r.epoch, r.released)), Some((1, true)));
    assert!(!w.accepting(PRIMARY) && !w.accepting(SPARE));
    assert!(
        w.run_until_cond(60_000, |w| w.accepting(PRIMARY)),
        "{}",
        w.summary()
    );
    assert_eq!(last_promotion(&w), (PRIMARY, 1, PromoteTrigger::Reclaim));
    assert_eq!(w.lease().map(|r| (r.epoch, r.released)), Some((1, false)));
    assert!(w.first_start(SPARE, 0).is_none());
    assert!(w.violations.is_empty(), "{}", w.summary());
}

#[test]
fn restarted_agent_reclaims_its_own_lease() {
    let mut w = settled(PolicyConfig::default());
    w.crash_at(10_000, PRIMARY);
    w.restart_at(10_500, PRIMARY);
    w.run_until(40_000);
    assert!(w.accepting(PRIMARY), "{}", w.summary());
    assert!(w.first_start(SPARE, 0).is_none(), "{}", w.summary());
    assert_eq!(last_promotion(&w), (PRIMARY, 1, PromoteTrigger::Reclaim));
}

#[test]
fn lost_answer_to_an_acquisition_is_recognised_by_reading() {
    // The spare's takeover write lands at about 17.06 s but its answer is
    // lost; the next read shows the spare's own write, sent recently enough
    // to count: it holds the lease without writing again.
    let mut w = settled(PolicyConfig::default());
    w.crash_at(10_000, PRIMARY);
    w.lose_answers(17_000, 19_000, SPARE);
    assert!(
        w.run_until_cond(30_000, |w| w.accepting(SPARE)),
        "{}",
        w.summary()
    );
    assert!(w.first_start(SPARE, 0).unwrap() < 20_000);
    assert_eq!(last_promotion(&w), (SPARE, 2, PromoteTrigger::Automatic));
    assert!(w.violations.is_empty(), "{}", w.summary());
}

#[test]
fn acquisition_learned_too_late_is_reclaimed() {
    // Now the answers stay lost past the write's own deadline: the spare
    // must not count on it, and takes it again with a fresh write.
    let mut w = settled(PolicyConfig::default());
    w.crash_at(10_000, PRIMARY);
    w.lose_answers(17_000, 23_000, SPARE);
    assert!(
        w.run_until_cond(30_000, |w| w.accepting(SPARE)),
        "{}",
        w.summary()
    );
    assert!(w.first_start(SPARE, 0).unwrap() >= 23_000);
    assert_eq!(last_promotion(&w), (SPARE, 2, PromoteTrigger::Reclaim));
    assert_eq!(w.promotions.iter().filter(|p| p.site == SPARE).count(), 1);
    assert!(w.violations.is_empty(), "{}", w.summary());
}

/// The checker itself: with a margin that does not cover the clock drift
/// actually present, the simulation finds two sites accepting at once.
#[test]
fn checker_detects_overlap_when_margin_ignores_drift() {
    let cfg = PolicyConfig {
        lease_margin: Duration::from_millis(10),
        max_clock_drift_ppm: 0,
        read_interval: Duration::from_millis(20),
        ..PolicyConfig::default()
    };
    let mut p = Params::calm(cfg);
    p.delay = [(1, 1); 3];
    p.tick = [5, 5];
    let mut w = World::new(p);
    w.set_clock(PRIMARY, Clock::fixed(0, -10_000)); // 1 % slow
    w.set_clock(SPARE, Clock::fixed(123_456, 10_000)); // 1 % fast
    w.run_until(10_000);
    w.partition(10_000, 60_000, Link::Repo(PRIMARY));
    w.run_until(30_000);
    assert!(
        w.violations.iter().any(|v| v.contains("both accept")),
        "expected an overlap\n{}",
        w.summary()
    );
}

/// A backend that ignores conditional writes (as Garage 2.5 does) lets a
/// challenger with a stale view overwrite a live lease: two holders. The
/// same schedule on a correct backend is safe. This is why `check` refuses
/// automatic failover on a backend that fails the compare-and-swap probe.
#[test]
fn a_backend_ignoring_conditions_breaks_safety() {
    // The spare is cut off while the primary renews; when the link heals,
    // a takeover write based on its stale view may go out before its next
    // read. Try every healing time over a few retry periods.
    for ignore in [false, true] {
        let mut overlaps = 0;
        for heal in (17_000..23_000).step_by(100) {
            let mut p = Params::calm(PolicyConfig::default());
            p.ignore_conditions = ignore;
            let mut w = World::new(p);
            w.partition(10_000, heal, Link::Repo(SPARE));
            w.run_until(40_000);
            if w.violations.iter().any(|v| v.contains("both accept")) {
                overlaps += 1;
            } else {
                assert!(w.violations.is_empty(), "{}", w.summary());
            }
        }
        assert_eq!(
            overlaps > 0,
            ignore,
            "ignore_conditions = {ignore}: {overlaps} overlaps"
        );
    }
}

#[test]
fn release_hands_over_at_once_and_the_holder_stays_standby() {
    let mut w = settled(PolicyConfig::default());
    w.command_at(10_000, PRIMARY, Command::Release);
    // No successor: the spare takes it at its next read (read_interval 1 s),
    // far sooner than ttl + margin (7 s) after an unreleased lease.
    assert!(
        w.run_until_cond(12_000, |w| w.accepting(SPARE)),
        "{}",
        w.summary()
    );
    assert_eq!(last_promotion(&w), (SPARE, 2, PromoteTrigger::Automatic));
    assert!(end_of_primary(&w) <= w.first_start(SPARE, 0).unwrap());
    assert!(w.alerted(PRIMARY, AlertKind::CommandAccepted));
    // The old holder stays a fenced standby: it never took its released
    // lease back, and it does not fail over while the spare is healthy.
    w.run_until(60_000);
    assert!(w.accepting(SPARE) && !w.accepting(PRIMARY));
    assert_eq!(w.intervals.iter().filter(|i| i.site == PRIMARY).count(), 1);
    let lease = w.lease().unwrap();
    assert_eq!(
        (lease.holder.as_str(), lease.epoch, lease.released),
        ("spare", 2, false)
    );
    assert!(w.violations.is_empty(), "{}", w.summary());
}

#[test]
fn release_by_a_site_without_the_lease_does_nothing() {
    let mut w = settled(PolicyConfig::default());
    w.command_at(10_000, SPARE, Command::Release);
    w.run_until(30_000);
    assert!(w.accepting(PRIMARY) && !w.accepting(SPARE));
    assert!(w.alerted(SPARE, AlertKind::CommandAccepted));
    assert_eq!(w.promotions.len(), 1);
    assert_eq!(w.lease().map(|r| (r.epoch, r.released)), Some((1, false)));
    assert!(w.violations.is_empty(), "{}", w.summary());
}

#[test]
fn a_released_lease_is_taken_only_within_the_spare_guards() {
    let mut w = settled(PolicyConfig::default());
    w.command_at(9_000, SPARE, Command::Pause);
    w.command_at(10_000, PRIMARY, Command::Release);
    w.run_until(30_000);
    // Paused: the spare does not take the released lease, and the old
    // holder does not take it back: nobody accepts (no split, no flapping).
    assert!(!w.accepting(SPARE) && !w.accepting(PRIMARY));
    assert!(w.alerted(SPARE, AlertKind::FailoverBlocked));
    assert_eq!(w.lease().map(|r| (r.epoch, r.released)), Some((1, true)));
    w.command_at(30_000, SPARE, Command::Resume);
    assert!(
        w.run_until_cond(32_000, |w| w.accepting(SPARE)),
        "{}",
        w.summary()
    );
    assert_eq!(last_promotion(&w), (SPARE, 2, PromoteTrigger::Automatic));
    assert!(w.violations.is_empty(), "{}", w.summary());
}

#[test]
fn an_operator_failover_takes_back_a_stepped_down_lease() {
    let mut w = settled(PolicyConfig::default());
    w.command_at(9_000, SPARE, Command::Pause);
    w.command_at(10_000, PRIMARY, Command::Release);
    w.command_at(15_000, PRIMARY, Command::Failover { force: true });
    assert!(
        w.run_until_cond(17_000, |w| w.accepting(PRIMARY)),
        "{}",
        w.summary()
    );
    assert_eq!(
        last_promotion(&w),
        (PRIMARY, 2, PromoteTrigger::Operator { force: true })
    );
    assert!(!w.accepting(SPARE));
    assert!(w.violations.is_empty(), "{}", w.summary());
}
