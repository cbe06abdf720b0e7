//! The scheduler against a [`ManualClock`]: time moves only when a test
//! advances it, so every due time, timeout and grace period is exact.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use time::OffsetDateTime;
use time::macros::datetime;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use super::run;
use crate::clock::{Clock, ManualClock};
use crate::job::{FnJob, Job, JobError, JobOutcome};
use crate::state::{JobRecord, JobSlot, RunOutcome, Shared};

const T0: OffsetDateTime = datetime!(2026-01-01 00:59:30 UTC);
const GRACE: Duration = Duration::from_secs(30);
const HOUR: Duration = Duration::from_secs(3600);

struct Harness {
    clock: ManualClock,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    scheduler: JoinHandle<()>,
}

impl Harness {
    fn start(schedule: &str, timeout: Duration, job: impl Job) -> Harness {
        let clock = ManualClock::new(T0);
        let slot = JobSlot::new(
            "sync",
            Some(schedule.parse().unwrap()),
            Some(Arc::new(job)),
            timeout,
        );
        let shared = Arc::new(Shared {
            site: "spare".into(),
            started_at: clock.now(),
            clock: Arc::new(clock.clone()),
            jobs: vec![slot],
            paused: watch::Sender::new(false),
            token: None,
            links: Arc::new(crate::failover::Links::new(crate::failover::Gate::Off(
                "test".into(),
            ))),
        });
        let (stop, stopped) = watch::channel(false);
        let scheduler = tokio::spawn(run(shared.clone(), stopped, GRACE));
        Harness {
            clock,
            shared,
            stop,
            scheduler,
        }
    }

    fn record(&self) -> JobRecord {
        self.shared.jobs[0].record().clone()
    }

    /// Waits (in real time, bounded) until `cond` holds for the record.
    async fn until(&self, what: &str, cond: impl Fn(&JobRecord) -> bool) -> JobRecord {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let record = self.record();
            if cond(&record) {
                return record;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}: {record:?}"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Advances the clock by `step` until `cond` holds: for waits whose
    /// deadline is taken at a moment the test cannot observe.
    async fn advance_until(&self, step: Duration, cond: impl Fn(&JobRecord) -> bool) -> JobRecord {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let record = self.record();
            if cond(&record) {
                return record;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "condition never held: {record:?}"
            );
            self.clock.advance(step);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

fn counting(name: &str, count: Arc<AtomicUsize>) -> FnJob {
    FnJob::new(name, move |_ctx| {
        count.fetch_add(1, Ordering::SeqCst);
        async { Ok(JobOutcome::summary("did it")) }
    })
}

#[tokio::test]
async fn cron_next_run_follows_the_injected_clock() {
    let count = Arc::new(AtomicUsize::new(0));
    let h = Harness::start("0 * * * *", HOUR, counting("sync", count.clone()));
    h.until("first next run", |r| {
        r.next_run == Some(datetime!(2026-01-01 01:00 UTC))
    })
    .await;
    assert_eq!(count.load(Ordering::SeqCst), 0);

    h.clock.advance(Duration::from_secs(30));
    let r = h.until("first run", |r| r.runs == 1).await;
    assert_eq!(r.last_start, Some(datetime!(2026-01-01 01:00 UTC)));
    assert_eq!(r.last_success, Some(datetime!(2026-01-01 01:00 UTC)));
    assert_eq!(r.last_outcome, Some(RunOutcome::Succeeded));
    assert_eq!(r.last_summary.as_deref(), Some("did it"));
    assert_eq!(r.next_run, Some(datetime!(2026-01-01 02:00 UTC)));

    h.clock.advance(HOUR - Duration::from_secs(1));
    tokio::task::yield_now().await;
    assert_eq!(h.record().runs, 1);
    h.clock.advance(Duration::from_secs(1));
    let r = h.until("second run", |r| r.runs == 2).await;
    assert_eq!(r.next_run, Some(datetime!(2026-01-01 03:00 UTC)));
    assert_eq!(count.load(Ordering::SeqCst), 2);

    // Missed due times (a long suspend) are skipped, not caught up.
    h.clock.advance(5 * HOUR);
    let r = h.until("run after the jump", |r| r.runs == 3).await;
    assert_eq!(r.next_run, Some(datetime!(2026-01-01 08:00 UTC)));
    assert_eq!(r.skipped_overlap, 0);
}

#[tokio::test]
async fn a_due_time_that_finds_the_job_running_is_skipped_and_counted() {
    let gate = Arc::new(Semaphore::new(0));
    let started = Arc::new(AtomicUsize::new(0));
    let job = {
        let (gate, started) = (gate.clone(), started.clone());
        FnJob::new("sync", move |_ctx| {
            started.fetch_add(1, Ordering::SeqCst);
            let gate = gate.clone();
            async move {
                gate.acquire().await.unwrap().forget();
                Ok(JobOutcome::done())
            }
        })
    };
    let h = Harness::start("every 10s", HOUR, job);
    h.until("scheduled", |r| r.next_run.is_some()).await;

    h.clock.advance(Duration::from_secs(10));
    h.until("running", |r| r.running).await;
    h.clock.advance(Duration::from_secs(10));
    h.until("one skip", |r| r.skipped_overlap == 1).await;
    h.clock.advance(Duration::from_secs(10));
    let r = h.until("two skips", |r| r.skipped_overlap == 2).await;
    assert!(r.running);
    assert_eq!(r.runs, 0);
    assert_eq!(started.load(Ordering::SeqCst), 1, "never two runs at once");

    gate.add_permits(2);
    h.until("first run finished", |r| r.runs == 1 && !r.running)
        .await;
    h.clock.advance(Duration::from_secs(10));
    let r = h.until("second run finished", |r| r.runs == 2).await;
    assert_eq!(r.skipped_overlap, 2);
    assert_eq!(started.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_run_over_its_timeout_is_cancelled_and_counted_as_a_failure() {
    let started = Arc::new(AtomicBool::new(false));
    let saw_cancel = Arc::new(AtomicBool::new(false));
    let job = {
        let (started, saw_cancel) = (started.clone(), saw_cancel.clone());
        FnJob::new("sync", move |ctx| {
            let (started, saw_cancel) = (started.clone(), saw_cancel.clone());
            async move {
                // Polled together with the timeout, which then has its
                // deadline: the test may move the clock from here on.
                started.store(true, Ordering::SeqCst);
                ctx.cancelled().await;
                saw_cancel.store(true, Ordering::SeqCst);
                Err(JobError::Cancelled)
            }
        })
    };
    let h = Harness::start("every 1h", Duration::from_secs(300), job);
    h.until("scheduled", |r| r.next_run.is_some()).await;
    h.clock.advance(HOUR);
    h.until("running", |r| r.running && started.load(Ordering::SeqCst))
        .await;

    h.clock.advance(Duration::from_secs(299));
    tokio::task::yield_now().await;
    assert!(h.record().running);
    h.clock.advance(Duration::from_secs(1));
    let r = h.until("timed out", |r| !r.running).await;
    assert_eq!(r.last_outcome, Some(RunOutcome::TimedOut));
    assert_eq!(r.last_error.as_deref(), Some("timed out after 5m"));
    assert_eq!((r.runs, r.failures), (1, 1));
    assert_eq!(r.last_success, None);
    assert!(saw_cancel.load(Ordering::SeqCst));
}

#[tokio::test]
async fn a_run_that_ignores_cancellation_is_dropped_after_the_grace_period() {
    let dropped = Arc::new(AtomicBool::new(false));
    struct SetOnDrop(Arc<AtomicBool>);
    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let job = {
        let dropped = dropped.clone();
        FnJob::new("sync", move |_ctx| {
            let guard = SetOnDrop(dropped.clone());
            async move {
                let _guard = guard;
                std::future::pending::<()>().await;
                Ok(JobOutcome::done())
            }
        })
    };
    let h = Harness::start("every 1h", Duration::from_secs(60), job);
    h.until("scheduled", |r| r.next_run.is_some()).await;
    h.clock.advance(HOUR);
    h.until("running", |r| r.running).await;
    let r = h
        .advance_until(Duration::from_secs(10), |r| !r.running)
        .await;
    assert_eq!(r.last_outcome, Some(RunOutcome::TimedOut));
    assert!(dropped.load(Ordering::SeqCst));
}

#[tokio::test]
async fn failures_and_panics_are_recorded_with_their_cause() {
    #[derive(Debug, thiserror::Error)]
    #[error("upload failed")]
    struct Upload(#[source] std::io::Error);

    let calls = Arc::new(AtomicUsize::new(0));
    let job = {
        let calls = calls.clone();
        FnJob::new("sync", move |_ctx| {
            let call = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if call == 0 {
                    Err(JobError::failed(Upload(std::io::Error::other("disk full"))))
                } else {
                    panic!("bug in the job");
                }
            }
        })
    };
    let h = Harness::start("every 10s", HOUR, job);
    h.until("scheduled", |r| r.next_run.is_some()).await;
    h.clock.advance(Duration::from_secs(10));
    let r = h.until("failed", |r| r.runs == 1).await;
    assert_eq!(r.last_outcome, Some(RunOutcome::Failed));
    assert_eq!(r.last_error.as_deref(), Some("upload failed: disk full"));
    assert_eq!(r.failures, 1);

    h.clock.advance(Duration::from_secs(10));
    let r = h.until("panicked", |r| r.runs == 2).await;
    assert_eq!(r.last_outcome, Some(RunOutcome::Failed));
    assert_eq!(r.last_error.as_deref(), Some("the job panicked"));
    assert_eq!(r.failures, 2);
    assert!(!r.running);
}

#[tokio::test]
async fn paused_due_times_are_skipped_until_resumed() {
    let count = Arc::new(AtomicUsize::new(0));
    let h = Harness::start("every 10s", HOUR, counting("sync", count.clone()));
    h.until("scheduled", |r| r.next_run.is_some()).await;
    h.shared.paused.send_replace(true);
    for n in 1..=3 {
        h.clock.advance(Duration::from_secs(10));
        h.until("a paused skip", |r| r.skipped_paused == n).await;
    }
    assert_eq!(h.record().runs, 0);
    assert_eq!(count.load(Ordering::SeqCst), 0);

    h.shared.paused.send_replace(false);
    h.clock.advance(Duration::from_secs(10));
    let r = h.until("run after resume", |r| r.runs == 1).await;
    assert_eq!(r.skipped_paused, 3);
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn shutdown_cancels_the_running_job_and_returns() {
    let job = FnJob::new("sync", |ctx| async move {
        ctx.cancelled().await;
        Err(JobError::Cancelled)
    });
    let h = Harness::start("every 10s", HOUR, job);
    h.until("scheduled", |r| r.next_run.is_some()).await;
    h.clock.advance(Duration::from_secs(10));
    h.until("running", |r| r.running).await;

    h.stop.send_replace(true);
    tokio::time::timeout(Duration::from_secs(10), h.scheduler)
        .await
        .expect("the scheduler returns")
        .unwrap();
    let r = h.shared.jobs[0].record().clone();
    assert_eq!(r.last_outcome, Some(RunOutcome::Cancelled));
    assert_eq!((r.runs, r.failures), (1, 0));
    assert_eq!(r.next_run, None);
    assert!(!r.running);
}

#[tokio::test]
async fn shutdown_drops_a_job_that_does_not_stop_within_the_grace_period() {
    let job = FnJob::new("sync", |_ctx| async {
        std::future::pending::<()>().await;
        Ok(JobOutcome::done())
    });
    let h = Harness::start("every 10s", HOUR, job);
    h.until("scheduled", |r| r.next_run.is_some()).await;
    h.clock.advance(Duration::from_secs(10));
    h.until("running", |r| r.running).await;

    h.stop.send_replace(true);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !h.scheduler.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "the scheduler never returned"
        );
        h.clock.advance(Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let r = h.shared.jobs[0].record().clone();
    assert_eq!(r.last_outcome, Some(RunOutcome::Cancelled));
    assert!(
        r.last_error
            .unwrap()
            .contains("did not stop within the cancel grace period")
    );
    assert!(!r.running);
}

#[tokio::test]
async fn skipped_runs_are_counted_apart_and_never_refresh_the_last_success() {
    let calls = Arc::new(AtomicUsize::new(0));
    let job = {
        let calls = calls.clone();
        FnJob::new("sync", move |_ctx| {
            let call = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if call == 0 {
                    Ok(JobOutcome::summary("3 copied"))
                } else {
                    Ok(JobOutcome::skipped("the active site runs sync"))
                }
            }
        })
    };
    let h = Harness::start("every 10s", HOUR, job);
    h.until("scheduled", |r| r.next_run.is_some()).await;
    h.clock.advance(Duration::from_secs(10));
    let first = h.until("a success", |r| r.runs == 1).await;
    assert_eq!(first.last_outcome, Some(RunOutcome::Succeeded));
    let success = first.last_success.unwrap();

    for n in 2..=3 {
        h.clock.advance(Duration::from_secs(10));
        h.until("a skipped run", |r| r.runs == n).await;
    }
    let r = h.record();
    assert_eq!(r.last_outcome, Some(RunOutcome::Skipped));
    assert_eq!(
        r.last_summary.as_deref(),
        Some("skipped: the active site runs sync")
    );
    assert_eq!(r.last_error, None);
    assert_eq!(r.last_success, Some(success), "a skip is not a success");
    assert_eq!(r.count(RunOutcome::Succeeded), 1);
    assert_eq!(r.count(RunOutcome::Skipped), 2);
    assert_eq!(r.failures, 0);
    assert_eq!(
        RunOutcome::ALL.iter().map(|o| r.count(*o)).sum::<u64>(),
        r.runs
    );
}
