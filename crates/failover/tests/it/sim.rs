//! Property test: random fault schedules in the simulated world, checking
//! the safety invariants at every event.
//!
//! `WARMSPARE_SIM_CASES` sets the number of runs (default 1000); each run is
//! three minutes of simulated time. `WARMSPARE_SIM_STATS=1` prints what each
//! run exercised.

use std::time::Duration;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::Config;
use warmspare_failover::FailoverMode;
use warmspare_failover::policy::{Command, PolicyConfig};

use crate::world::{Link, PRIMARY, Params, SPARE, World};

/// Simulated time per run.
const TRACE: u64 = 180_000;

#[derive(Debug, Clone)]
enum Fault {
    Partition {
        link: usize,
        start: u64,
        dur: u64,
    },
    Crash {
        site: usize,
        start: u64,
        down: Option<u64>,
    },
    Sick {
        site: usize,
        start: u64,
        dur: u64,
        cured: bool,
    },
    Stall {
        start: u64,
        dur: u64,
    },
    Command {
        site: usize,
        start: u64,
        kind: u8,
        force: bool,
    },
}

#[derive(Debug, Clone)]
struct Run {
    seed: u64,
    max_ppm: i64,
    extreme_clocks: bool,
    rate_changes: bool,
    margin_ms: u64,
    mode: FailoverMode,
    delay_max: [u64; 3],
    loss: [u32; 3],
    flap: [u32; 2],
    tick: [u64; 2],
    late_answers: bool,
    exact_wakeups: bool,
    read_interval_ms: u64,
    /// The primary never crashes or sickens, keeps a good link to the
    /// repository (stalls of at most 2 s) and is never switched over or stepped down: it
    /// must never be failed over.
    healthy_primary: bool,
    faults: Vec<Fault>,
}

fn fault() -> impl Strategy<Value = Fault> {
    let start = 0..TRACE;
    prop_oneof![
        3 => (0usize..3, start.clone(), 0u64..20_000)
            .prop_map(|(link, start, dur)| Fault::Partition { link, start, dur }),
        2 => (0usize..2, start.clone(), proptest::option::weighted(0.8, 0u64..30_000))
            .prop_map(|(site, start, down)| Fault::Crash { site, start, down }),
        2 => (0usize..2, start.clone(), 0u64..30_000, any::<bool>())
            .prop_map(|(site, start, dur, cured)| Fault::Sick { site, start, dur, cured }),
        1 => (start.clone(), 0u64..4_000).prop_map(|(start, dur)| Fault::Stall { start, dur }),
        2 => (0usize..2, start, 0u8..5, any::<bool>())
            .prop_map(|(site, start, kind, force)| Fault::Command { site, start, kind, force }),
    ]
}

fn run() -> impl Strategy<Value = Run> {
    let slow = (
        [0u64..3_000, 0u64..3_000, 0u64..3_000],
        [0u32..200, 0u32..200, 0u32..200],
        [0u32..150, 0u32..150],
        [20u64..500, 20u64..500],
        any::<bool>(),
    );
    // A fast network and exact timers: the challenger sees each version at
    // once and writes the moment its wait ends, which is where the gap
    // between two holders is smallest.
    let fast = (
        [0u64..20, 0u64..20, 0u64..20],
        [0u32..50, 0u32..50, 0u32..50],
        [0u32..150, 0u32..150],
        [200u64..1_000, 200u64..1_000],
        any::<bool>(),
    );
    let net = (
        prop_oneof![slow, fast],
        any::<bool>(),
        prop_oneof![Just(1_000u64), 20u64..1_000],
    );
    let mode = prop_oneof![
        6 => Just(FailoverMode::Automatic),
        1 => Just(FailoverMode::Manual),
        1 => Just(FailoverMode::Notify),
    ];
    (
        any::<u64>(),
        prop_oneof![Just(10_000i64), 0i64..=10_000],
        (any::<bool>(), any::<bool>()),
        prop_oneof![Just(1_000u64), Just(300), Just(100)],
        mode,
        net,
        proptest::bool::weighted(0.3),
        proptest::collection::vec(fault(), 0..20),
    )
        .prop_map(
            |(
                seed,
                max_ppm,
                (extreme_clocks, rate_changes),
                margin_ms,
                mode,
                net,
                healthy_primary,
                faults,
            )| {
                let ((delay_max, loss, flap, tick, late_answers), exact_wakeups, read_interval_ms) =
                    net;
                let mut r = Run {
                    seed,
                    max_ppm,
                    extreme_clocks,
                    rate_changes,
                    margin_ms,
                    mode,
                    delay_max,
                    loss,
                    flap,
                    tick,
                    late_answers,
                    exact_wakeups,
                    read_interval_ms,
                    healthy_primary,
                    faults,
                };
                if healthy_primary {
                    r.restrict_primary_faults();
                }
                r
            },
        )
}

impl Run {
    fn restrict_primary_faults(&mut self) {
        self.delay_max[PRIMARY] = self.delay_max[PRIMARY].min(200);
        self.loss[PRIMARY] = 0;
        self.flap[PRIMARY] = 0;
        self.tick[PRIMARY] = self.tick[PRIMARY].min(250);
        let mut last_stall: Option<u64> = None;
        self.faults.sort_by_key(|f| match f {
            Fault::Partition { start, .. }
            | Fault::Crash { start, .. }
            | Fault::Sick { start, .. }
            | Fault::Stall { start, .. }
            | Fault::Command { start, .. } => *start,
        });
        self.faults.retain_mut(|f| match f {
            Fault::Partition { link, .. } => *link != PRIMARY,
            Fault::Crash { site, .. } | Fault::Sick { site, .. } => *site != PRIMARY,
            Fault::Command { site, kind, .. } => !(*site == PRIMARY && matches!(*kind, 1 | 4)),
            Fault::Stall { start, dur } => {
                *dur = (*dur).min(2_000);
                let keep = last_stall.is_none_or(|l| *start >= l + 10_000);
                if keep {
                    last_stall = Some(*start);
                }
                keep
            }
        });
    }

    fn world(&self) -> World {
        let cfg = PolicyConfig {
            mode: self.mode,
            lease_margin: Duration::from_millis(self.margin_ms),
            max_data_loss: Duration::from_secs(20),
            cooldown: Duration::from_secs(20),
            read_interval: Duration::from_millis(self.read_interval_ms),
            ..PolicyConfig::default()
        };
        let mut p = Params::calm(cfg);
        p.seed = self.seed;
        p.max_ppm = self.max_ppm;
        p.extreme_clocks = self.extreme_clocks;
        p.rate_change_every = if self.rate_changes { 15_000 } else { 0 };
        p.delay = self.delay_max.map(|m| (0, m));
        p.loss = self.loss;
        p.flap = self.flap;
        p.tick = self.tick;
        p.late_answers = self.late_answers;
        p.exact_wakeups = self.exact_wakeups;
        p.refresh_gap = (500, 30_000);
        let mut w = World::new(p);
        for f in &self.faults {
            match *f {
                Fault::Partition { link, start, dur } => {
                    let link = if link == 2 {
                        Link::Peer
                    } else {
                        Link::Repo(link)
                    };
                    w.partition(start, start + dur, link);
                }
                Fault::Crash { site, start, down } => {
                    w.crash_at(start, site);
                    if let Some(d) = down {
                        w.restart_at(start + d, site);
                    }
                }
                Fault::Sick {
                    site,
                    start,
                    dur,
                    cured,
                } => w.sick(start, start + dur, site, cured),
                Fault::Stall { start, dur } => w.stall(start, dur),
                Fault::Command {
                    site,
                    start,
                    kind,
                    force,
                } => {
                    let command = match kind {
                        0 => Command::Failover { force },
                        1 => Command::Switchover {
                            to: ["spare", "primary"][site].into(),
                            force,
                        },
                        2 => Command::Pause,
                        3 => Command::Resume,
                        _ => Command::Release,
                    };
                    w.command_at(start, site, command);
                }
            }
        }
        w
    }
}

fn cases() -> u32 {
    std::env::var("WARMSPARE_SIM_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

proptest! {
    #![proptest_config(Config { cases: cases(), failure_persistence: None, ..Config::default() })]

    /// At no instant do two sites accept traffic; epochs only grow; no
    /// automatic promotion beyond `max_data_loss`; an expiry takeover keeps
    /// the gap the safety argument promises; a healthy primary with a
    /// reachable repository is never failed over.
    #[test]
    fn failover_is_safe_under_random_faults(run in run()) {
        let mut w = run.world();
        w.run_until(TRACE);
        if std::env::var_os("WARMSPARE_SIM_STATS").is_some() {
            stats(&w);
        }
        prop_assert!(w.violations.is_empty(), "{}", w.summary());
        if run.healthy_primary {
            let spare = w.intervals.iter().filter(|i| i.site == SPARE).count();
            let primary: Vec<_> = w.intervals.iter().filter(|i| i.site == PRIMARY).collect();
            prop_assert_eq!(spare, 0, "healthy primary failed over\n{}", w.summary());
            prop_assert_eq!(primary.len(), 1, "primary interrupted\n{}", w.summary());
            prop_assert!(primary[0].start < 10_000 && primary[0].end.is_none(), "{}", w.summary());
        }
    }
}

/// One line per run and per handover, for `WARMSPARE_SIM_STATS=1`:
/// `handover <gap ms> <promised ms> <after a release>`.
fn stats(w: &World) {
    let triggers: Vec<_> = w
        .promotions
        .iter()
        .map(|p| format!("{:?}", p.trigger))
        .collect();
    eprintln!(
        "run events={} writes={} promotions={triggers:?}",
        w.events, w.lease_writes
    );
    for (gap, promised, released) in &w.gaps {
        eprintln!("handover {gap} {promised:.1} {released}");
    }
}

/// The simulation is deterministic: the same run gives the same history.
#[test]
fn simulation_is_deterministic() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    for _ in 0..5 {
        let r = run().new_tree(&mut runner).unwrap().current();
        let (mut a, mut b) = (r.world(), r.world());
        a.run_until(TRACE);
        b.run_until(TRACE);
        assert_eq!(a.intervals, b.intervals);
        assert_eq!(a.promotions, b.promotions);
        assert_eq!(a.events, b.events);
    }
}
