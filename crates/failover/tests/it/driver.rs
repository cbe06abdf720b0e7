//! The lease driver over a real compare-and-swap (in memory), with
//! recording actions: fast, no external services.

use std::sync::Arc;
use std::time::Duration;

use warmspare_failover::policy::{Command, Event, PromoteTrigger, Role, Target};
use warmspare_store::object_store::memory::InMemory;
use warmspare_store::{CompareAndSwap, ConditionalPutCas};

use crate::support::{Recorder, Seen, fast_policy, overlap_monitor, start_driver, wait_for};

fn memory_cas() -> Arc<dyn CompareAndSwap> {
    Arc::new(ConditionalPutCas::new(Arc::new(InMemory::new())))
}

async fn healthy(handle: &warmspare_failover::DriverHandle, target: Target) {
    for _ in 0..3 {
        handle
            .send_event(Event::Probe { target, ok: true })
            .await
            .unwrap();
    }
}

/// Keeps the local probes (and a zero lag) flowing, as a probe runner would.
fn feed(handle: warmspare_failover::DriverHandle) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let _ = handle
                .send_event(Event::Probe {
                    target: Target::Local,
                    ok: true,
                })
                .await;
            let now = handle.clock().now();
            let _ = handle
                .send_event(Event::ReplicationLag {
                    lag: Duration::ZERO,
                    measured_at: now,
                })
                .await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_holds_spare_takes_over_after_kill_and_never_overlaps() {
    let cas = memory_cas();
    let policy = fast_policy(Duration::from_millis(1200));
    let (pa, sa) = (Recorder::default(), Recorder::default());
    let mut primary = start_driver(
        policy.clone(),
        "primary",
        "spare",
        true,
        Arc::clone(&cas),
        Arc::new(pa.clone()),
    );
    let spare = start_driver(
        policy.clone(),
        "spare",
        "primary",
        false,
        Arc::clone(&cas),
        Arc::new(sa.clone()),
    );
    let (overlaps, monitor) = overlap_monitor(primary.handle.clone(), spare.handle.clone());
    let feeders = [feed(primary.handle.clone()), feed(spare.handle.clone())];
    assert!(
        wait_for(Duration::from_secs(5), async || primary
            .handle
            .may_accept_traffic())
        .await
    );
    assert_eq!(primary.handle.current_epoch(), Some(1));
    assert_eq!(primary.handle.state().role, Role::Primary);
    // The spare observes the lease and stays a standby over several renewals.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        primary.handle.may_accept_traffic(),
        "renewals keep the lease"
    );
    assert!(!spare.handle.may_accept_traffic());
    assert_eq!(
        spare.handle.state().lease.map(|l| l.holder),
        Some("primary".into())
    );
    let seen = pa.seen();
    assert_eq!(
        seen[0],
        Seen::Fence(warmspare_failover::policy::FenceReason::Startup)
    );
    assert!(
        seen.contains(&Seen::Promote(1, PromoteTrigger::Initial)),
        "{seen:?}"
    );
    // The promotion opened the database: no separate unfence.
    assert!(!seen.contains(&Seen::Unfence(1)), "{seen:?}");

    primary.kill().await;
    feeders[0].abort();
    assert!(
        !primary.handle.may_accept_traffic(),
        "a dead driver fails closed"
    );
    let started = std::time::Instant::now();
    assert!(
        wait_for(Duration::from_secs(10), async || spare
            .handle
            .may_accept_traffic())
        .await
    );
    let took = started.elapsed();
    // ttl + margin = 1.4 s at least (counted from the last renewal seen).
    assert!(took >= Duration::from_millis(900), "{took:?}");
    assert_eq!(spare.handle.current_epoch(), Some(2));
    assert!(
        sa.seen()
            .contains(&Seen::Promote(2, PromoteTrigger::Automatic)),
        "{:?}",
        sa.seen()
    );
    assert_eq!(*overlaps.lock().unwrap(), 0);
    monitor.abort();
    feeders[1].abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_answered_and_a_stopped_driver_refuses_them() {
    let cas = memory_cas();
    let policy = fast_policy(Duration::from_millis(1200));
    let r = Recorder::default();
    let mut spare = start_driver(policy, "spare", "primary", false, cas, Arc::new(r));
    healthy(&spare.handle, Target::Local).await;
    let reply = spare
        .handle
        .command(Command::Switchover {
            to: "elsewhere".into(),
            force: false,
        })
        .await
        .unwrap();
    assert!(
        matches!(reply, warmspare_failover::driver::CommandReply::Refused(ref m) if m.contains("not the peer")),
        "{reply:?}"
    );
    let reply = spare
        .handle
        .command(Command::Failover { force: true })
        .await
        .unwrap();
    assert!(
        matches!(reply, warmspare_failover::driver::CommandReply::Accepted(_)),
        "{reply:?}"
    );
    spare.kill().await;
    let err = spare.handle.command(Command::Pause).await.unwrap_err();
    assert!(
        matches!(err, warmspare_failover::Error::DriverStopped),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_run_with_release_steps_down_on_shutdown() {
    use warmspare_failover::driver::{BootClock, OnShutdown};
    use warmspare_failover::policy::FenceReason;
    use warmspare_failover::{Driver, DriverConfig};

    let cas = memory_cas();
    let policy = fast_policy(Duration::from_secs(3));
    let (pa, sa) = (Recorder::default(), Recorder::default());
    let driver = Driver::new(
        DriverConfig::new(policy.clone(), "primary", "spare", true),
        Arc::clone(&cas),
        Arc::new(pa.clone()),
        Arc::new(BootClock::new()),
    )
    .unwrap();
    let primary = driver.handle();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(driver.run_with(
        async move {
            let _ = stopped.await;
        },
        OnShutdown::Release,
    ));
    let spare = start_driver(
        policy,
        "spare",
        "primary",
        false,
        Arc::clone(&cas),
        Arc::new(sa.clone()),
    );
    let (overlaps, monitor) = overlap_monitor(primary.clone(), spare.handle.clone());
    let feeders = [feed(primary.clone()), feed(spare.handle.clone())];
    assert!(
        wait_for(Duration::from_secs(5), async || primary
            .may_accept_traffic())
        .await
    );
    assert!(
        wait_for(Duration::from_secs(5), async || spare
            .handle
            .state()
            .lease
            .is_some_and(|l| l.holder == "primary"))
        .await
    );

    let started = std::time::Instant::now();
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    let stopped_after = started.elapsed();
    // The release landed before `run_with` returned.
    let (_, record, _) =
        warmspare_failover::driver::read_lease(cas.as_ref(), &warmspare_store::layout::lease())
            .await
            .unwrap()
            .unwrap();
    assert!(record.epoch == 2 || record.released, "{record:?}");
    assert!(
        wait_for(Duration::from_secs(10), async || spare
            .handle
            .may_accept_traffic())
        .await
    );
    let took = started.elapsed();
    // An unreleased lease could not be taken before ttl + margin (3.5 s)
    // after the last renewal, at most renew_interval (1 s) before the stop.
    assert!(
        took < Duration::from_millis(1_800),
        "{took:?} (stopped after {stopped_after:?})"
    );
    assert_eq!(spare.handle.current_epoch(), Some(2));
    let seen = pa.seen();
    let unfenced = seen.iter().position(|s| *s == Seen::Promoted(1)).unwrap();
    let fenced = seen
        .iter()
        .position(|s| *s == Seen::Fence(FenceReason::StepDown))
        .unwrap();
    assert!(unfenced < fenced, "{seen:?}");
    assert_eq!(*overlaps.lock().unwrap(), 0);
    monitor.abort();
    for f in feeders {
        f.abort();
    }
}

/// `/active` answers from `may_accept_traffic`: it must not say yes before
/// the promotion returned (the database takes writes), and the initial
/// acquisition is reported as `Acquired`, not as a promotion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_is_admitted_only_after_the_promotion_returned() {
    use warmspare_failover::policy::AlertKind;

    let cas = memory_cas();
    let policy = fast_policy(Duration::from_millis(1200));
    let pa = Recorder::default();
    *pa.promote_delay.lock().unwrap() = Duration::from_millis(700);
    let primary = start_driver(policy, "primary", "spare", true, cas, Arc::new(pa.clone()));
    let feeder = feed(primary.handle.clone());
    // Sample the gate: whenever it is open, the promotion has returned.
    let (handle, seen) = (primary.handle.clone(), pa.clone());
    let sampler = tokio::spawn(async move {
        let mut early = 0;
        loop {
            if handle.may_accept_traffic() && !seen.seen().contains(&Seen::Promoted(1)) {
                early += 1;
            }
            if seen.seen().contains(&Seen::Promoted(1)) && handle.may_accept_traffic() {
                return early;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    assert!(
        wait_for(Duration::from_secs(5), async || pa
            .seen()
            .contains(&Seen::Promote(1, PromoteTrigger::Initial)))
        .await
    );
    // The lease is held, the promotion runs: not active yet.
    let state = primary.handle.state();
    assert_eq!(state.epoch, Some(1), "{state:?}");
    assert_eq!(state.role, Role::Promoting, "{state:?}");
    assert!(!primary.handle.may_accept_traffic());
    let early = tokio::time::timeout(Duration::from_secs(5), sampler)
        .await
        .expect("the site became active")
        .unwrap();
    assert_eq!(early, 0, "active before the promotion returned");
    assert_eq!(primary.handle.state().role, Role::Primary);
    let (kind, message) = primary.handle.state().last_alert.expect("an alert");
    assert_eq!(kind, AlertKind::Acquired, "{message}");
    feeder.abort();
}

/// The driver carries the switchover's new actions: the holder's final
/// position goes into the released record, and the successor holds the
/// lease without promoting until its database reports that position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_successor_holds_the_lease_until_it_replayed_the_final_position() {
    use warmspare_failover::policy::{FenceReason, Lsn, Replay};

    let cas = memory_cas();
    let policy = fast_policy(Duration::from_millis(1200));
    let (pa, sa) = (Recorder::default(), Recorder::default());
    *pa.final_lsn.lock().unwrap() = Some(Lsn(0x300_0060));
    *sa.replay.lock().unwrap() = Replay::Standby(Lsn(0x300_0000));
    let primary = start_driver(
        policy.clone(),
        "primary",
        "spare",
        true,
        Arc::clone(&cas),
        Arc::new(pa.clone()),
    );
    let spare = start_driver(
        policy,
        "spare",
        "primary",
        false,
        Arc::clone(&cas),
        Arc::new(sa.clone()),
    );
    let (overlaps, monitor) = overlap_monitor(primary.handle.clone(), spare.handle.clone());
    let feeders = [feed(primary.handle.clone()), feed(spare.handle.clone())];
    assert!(
        wait_for(Duration::from_secs(5), async || primary
            .handle
            .may_accept_traffic())
        .await
    );
    healthy(&primary.handle, Target::Peer).await;
    let reply = primary
        .handle
        .command(Command::Switchover {
            to: "spare".into(),
            force: false,
        })
        .await
        .unwrap();
    assert!(
        matches!(reply, warmspare_failover::driver::CommandReply::Accepted(_)),
        "{reply:?}"
    );
    assert!(
        wait_for(Duration::from_secs(5), async || spare.handle.state().epoch
            == Some(2))
        .await,
        "{:?}",
        spare.handle.state()
    );
    // Held, not promoted, while the database is behind.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let state = spare.handle.state();
    assert_eq!(state.role, Role::Promoting, "{state:?}");
    assert_eq!(state.awaiting_lsn, Some(Lsn(0x300_0060)));
    assert_eq!(state.replayed_lsn, Some(Lsn(0x300_0000)));
    assert!(!spare.handle.may_accept_traffic());
    assert!(!sa.seen().iter().any(|s| matches!(s, Seen::Promote(..))));
    let seen = pa.seen();
    let fenced = seen
        .iter()
        .position(|s| *s == Seen::Fence(FenceReason::Switchover))
        .unwrap();
    let captured = seen.iter().position(|s| *s == Seen::FinalLsn).unwrap();
    assert!(fenced < captured, "{seen:?}");
    // The database catches up: promoted and active.
    *sa.replay.lock().unwrap() = Replay::Standby(Lsn(0x300_0060));
    assert!(
        wait_for(Duration::from_secs(5), async || spare
            .handle
            .may_accept_traffic())
        .await
    );
    assert_eq!(spare.handle.current_epoch(), Some(2));
    assert!(
        sa.seen()
            .contains(&Seen::Promote(2, PromoteTrigger::Switchover))
    );
    assert!(!primary.handle.may_accept_traffic());
    assert_eq!(*overlaps.lock().unwrap(), 0);
    monitor.abort();
    for f in feeders {
        f.abort();
    }
}
