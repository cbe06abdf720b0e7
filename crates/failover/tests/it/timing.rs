//! Failover time and stall tolerance with the shipped defaults, in the
//! simulated world (promotion itself takes no time here: add the real
//! `pg_promote()` and hook time to these figures).

use warmspare_failover::policy::{AlertKind, PolicyConfig};

use crate::clock::Rng;
use crate::world::{PRIMARY, Params, SPARE, World};

/// Realistic network: 5-50 ms one way, clocks within 100 ppm, 100 ms ticks.
fn world(seed: u64) -> World {
    let mut p = Params::calm(PolicyConfig::default());
    p.seed = seed;
    p.delay = [(5, 50); 3];
    p.max_ppm = 100;
    World::new(p)
}

fn stats(mut v: Vec<u64>) -> (u64, u64, u64) {
    v.sort_unstable();
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

/// `kill -9` of the whole primary (agent and database): the spare waits out
/// the lease. Expected: 7 s after the spare's first sight of the last
/// renewal, which was 0-2.1 s before the kill.
#[test]
fn failover_time_after_primary_dies() {
    let mut times = Vec::new();
    let mut rng = Rng::new(7);
    for seed in 0..101 {
        let mut w = world(seed);
        let kill = rng.range(20_000, 30_000);
        w.crash_at(kill, PRIMARY);
        assert!(
            w.run_until_cond(kill + 20_000, |w| w.accepting(SPARE)),
            "{}",
            w.summary()
        );
        times.push(w.first_start(SPARE, 0).unwrap() - kill);
        assert!(w.violations.is_empty(), "{}", w.summary());
    }
    let (min, median, max) = stats(times);
    println!("primary killed -> spare accepts: min {min} ms, median {median} ms, max {max} ms");
    assert!(median < 10_000 && max < 10_000, "{min} {median} {max}");
}

/// Only the primary's database dies; its agent lives on: three failed
/// probes, one restart, five seconds of grace, then a voluntary release.
#[test]
fn failover_time_after_primary_service_dies() {
    let mut times = Vec::new();
    let mut rng = Rng::new(8);
    for seed in 0..51 {
        let mut w = world(seed);
        let kill = rng.range(20_000, 30_000);
        w.sick(kill, kill + 1_000_000, PRIMARY, false);
        assert!(
            w.run_until_cond(kill + 30_000, |w| w.accepting(SPARE)),
            "{}",
            w.summary()
        );
        times.push(w.first_start(SPARE, 0).unwrap() - kill);
        assert!(w.violations.is_empty(), "{}", w.summary());
    }
    let (min, median, max) = stats(times);
    println!(
        "primary service dead -> spare accepts: min {min} ms, median {median} ms, max {max} ms"
    );
    assert!(median < 10_000, "{min} {median} {max}");
}

/// A 2 s repository stall at any phase of the renewal cycle neither fences
/// the primary nor fails it over.
#[test]
fn no_false_failover_under_a_two_second_stall() {
    for (i, start) in (10_000..12_500).step_by(50).enumerate() {
        let mut w = world(i as u64);
        w.stall(start, 2_000);
        w.stall(start + 15_000, 2_000);
        w.run_until(40_000);
        assert!(w.accepting(PRIMARY), "stall at {start}\n{}", w.summary());
        assert_eq!(w.intervals.len(), 1, "stall at {start}\n{}", w.summary());
        assert!(
            !w.alerted(PRIMARY, AlertKind::Fenced),
            "stall at {start}\n{}",
            w.summary()
        );
    }
}
