//! The scheduler: fires each registered job at the times its schedule
//! names, one run per job at a time, with a timeout, and records how each
//! run ended.
//!
//! One task owns the timetable; every run is a task of its own, so a slow
//! job never delays another. A due time that finds the job still running,
//! or the scheduler paused, is skipped and counted: runs never pile up.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::{JoinError, JoinSet};

use crate::clock::{Clock, sleep};
use crate::job::{JobContext, JobError};
use crate::state::{JobSlot, RunOutcome, Shared, raised};

/// Runs the timetable until `stop` turns true, then cancels the runs in
/// progress and waits up to `cancel_grace` for them before dropping them.
pub(crate) async fn run(
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    cancel_grace: Duration,
) {
    let clock = shared.clock.clone();
    let (cancel_all, cancel_rx) = watch::channel(false);
    let mut runs: JoinSet<()> = JoinSet::new();
    let mut in_flight: HashMap<tokio::task::Id, usize> = HashMap::new();

    let start = clock.now();
    for slot in shared.jobs.iter().filter(|s| s.is_schedulable()) {
        slot.record().next_run = next_due(slot, start, start);
    }

    loop {
        let now = clock.now();
        for (index, slot) in shared.jobs.iter().enumerate() {
            let Some(due) = slot.record().next_run else {
                continue;
            };
            if due > now {
                continue;
            }
            if let Some(id) = fire(
                &shared,
                index,
                due,
                now,
                &mut runs,
                &cancel_rx,
                cancel_grace,
            ) {
                in_flight.insert(id, index);
            }
            slot.record().next_run = next_due(slot, due, now);
        }
        let earliest = shared
            .jobs
            .iter()
            .filter_map(|slot| slot.record().next_run)
            .min();

        tokio::select! {
            biased;
            () = raised(&mut stop) => break,
            Some(joined) = runs.join_next_with_id(), if !runs.is_empty() => {
                reap(&shared, &mut in_flight, joined);
            }
            () = wait_for(&*clock, earliest) => {}
        }
    }

    for slot in &shared.jobs {
        slot.record().next_run = None;
    }
    if runs.is_empty() {
        return;
    }
    tracing::info!(
        runs = runs.len(),
        grace = %humantime::format_duration(cancel_grace),
        "cancelling running jobs"
    );
    let _ = cancel_all.send(true);
    let drained = async {
        while let Some(joined) = runs.join_next_with_id().await {
            reap(&shared, &mut in_flight, joined);
        }
    };
    tokio::select! {
        () = drained => return,
        () = sleep(&*clock, cancel_grace) => {}
    }
    runs.abort_all();
    while let Some(joined) = runs.join_next_with_id().await {
        reap(&shared, &mut in_flight, joined);
    }
}

/// Waits until `deadline`, or forever without one.
async fn wait_for(clock: &dyn Clock, deadline: Option<OffsetDateTime>) {
    match deadline {
        Some(deadline) => clock.sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The next due time after the one at `due`. Due times missed while the
/// process was stopped or the clock jumped are skipped, not caught up.
fn next_due(slot: &JobSlot, due: OffsetDateTime, now: OffsetDateTime) -> Option<OffsetDateTime> {
    let schedule = slot.schedule?;
    match schedule.next_after(due) {
        Some(next) if next > now => Some(next),
        _ => schedule.next_after(now),
    }
}

/// Starts a run of job `index`, due at `due`, unless the scheduler is
/// paused or the previous run is still going (then counts the skip).
fn fire(
    shared: &Arc<Shared>,
    index: usize,
    due: OffsetDateTime,
    now: OffsetDateTime,
    runs: &mut JoinSet<()>,
    cancel_all: &watch::Receiver<bool>,
    cancel_grace: Duration,
) -> Option<tokio::task::Id> {
    let slot = &shared.jobs[index];
    let job = slot.job.clone()?;
    {
        let mut record = slot.record();
        if shared.is_paused() {
            record.skipped_paused += 1;
            tracing::debug!(job = %slot.name, "scheduler paused; run skipped");
            return None;
        }
        if record.running {
            record.skipped_overlap += 1;
            tracing::warn!(job = %slot.name, "previous run still in progress; run skipped");
            return None;
        }
        record.running = true;
        record.last_start = Some(now);
    }
    tracing::info!(job = %slot.name, "job started");
    let shared = shared.clone();
    let cancel_all = cancel_all.clone();
    let handle = runs.spawn(async move {
        let slot = &shared.jobs[index];
        let (cancel, cancel_rx) = watch::channel(false);
        let ctx = JobContext::new(slot.name.clone(), due, now, cancel_rx);
        let (outcome, error, summary) = execute(
            &*shared.clock,
            job.run(ctx),
            &cancel,
            cancel_all,
            slot.timeout,
            cancel_grace,
        )
        .await;
        finish(&shared, slot, outcome, error, summary);
    });
    Some(handle.id())
}

type RunResult = (RunOutcome, Option<String>, Option<String>);

/// Drives one run to its end: success, failure, timeout or cancellation.
async fn execute(
    clock: &dyn Clock,
    run: impl Future<Output = Result<crate::JobOutcome, JobError>>,
    cancel: &watch::Sender<bool>,
    mut cancel_all: watch::Receiver<bool>,
    timeout: Duration,
    cancel_grace: Duration,
) -> RunResult {
    let mut run = std::pin::pin!(run);
    tokio::select! {
        result = &mut run => from_result(result),
        () = sleep(clock, timeout) => {
            let _ = cancel.send(true);
            // Give the run the grace period to stop cleanly; then it is
            // dropped with this task's future.
            tokio::select! {
                _ = &mut run => {}
                () = sleep(clock, cancel_grace) => {}
            }
            (
                RunOutcome::TimedOut,
                Some(format!("timed out after {}", humantime::format_duration(timeout))),
                None,
            )
        }
        () = raised(&mut cancel_all) => {
            let _ = cancel.send(true);
            // The scheduler bounds this wait with its grace period.
            from_result(run.await)
        }
    }
}

fn from_result(result: Result<crate::JobOutcome, JobError>) -> RunResult {
    match result {
        Ok(outcome) if outcome.skipped => (RunOutcome::Skipped, None, outcome.summary),
        Ok(outcome) => (RunOutcome::Succeeded, None, outcome.summary),
        Err(JobError::Cancelled) => (RunOutcome::Cancelled, Some("cancelled".into()), None),
        Err(JobError::Failed(error)) => (RunOutcome::Failed, Some(error_chain(&*error)), None),
    }
}

/// An error and its causes on one line. A cause whose text the message
/// already contains (errors that embed their source) is not repeated.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Records the end of a run and logs it.
fn finish(
    shared: &Shared,
    slot: &JobSlot,
    outcome: RunOutcome,
    error: Option<String>,
    summary: Option<String>,
) {
    let now = shared.clock.now();
    let mut record = slot.record();
    let took = record
        .last_start
        .map(|start| {
            humantime::format_duration(Duration::try_from(now - start).unwrap_or_default())
                .to_string()
        })
        .unwrap_or_default();
    match (outcome, &error) {
        (RunOutcome::Succeeded, _) => {
            tracing::info!(job = %slot.name, took, summary = summary.as_deref(), "job succeeded");
        }
        (RunOutcome::Skipped, _) => {
            tracing::info!(job = %slot.name, summary = summary.as_deref(), "job skipped");
        }
        (RunOutcome::Cancelled, _) => tracing::warn!(job = %slot.name, took, "job cancelled"),
        (_, error) => tracing::error!(
            job = %slot.name,
            took,
            outcome = outcome.as_str(),
            error = error.as_deref().unwrap_or(""),
            "job failed"
        ),
    }
    record.running = false;
    record.last_finish = Some(now);
    record.last_outcome = Some(outcome);
    record.last_error = error;
    record.last_summary = summary;
    record.count_run(outcome);
    // A skipped run did no work: it must not make a stale job look fresh.
    if outcome == RunOutcome::Succeeded {
        record.last_success = Some(now);
    }
}

/// Handles a run task that ended: a run that recorded its own end needs
/// nothing; one that panicked or was dropped at shutdown is recorded here.
fn reap(
    shared: &Shared,
    in_flight: &mut HashMap<tokio::task::Id, usize>,
    joined: Result<(tokio::task::Id, ()), JoinError>,
) {
    let (id, error) = match joined {
        Ok((id, ())) => (id, None),
        Err(error) => (error.id(), Some(error)),
    };
    let Some(index) = in_flight.remove(&id) else {
        return;
    };
    let Some(error) = error else { return };
    let slot = &shared.jobs[index];
    if error.is_panic() {
        finish(
            shared,
            slot,
            RunOutcome::Failed,
            Some("the job panicked".into()),
            None,
        );
    } else {
        finish(
            shared,
            slot,
            RunOutcome::Cancelled,
            Some("dropped at shutdown: did not stop within the cancel grace period".into()),
            None,
        );
    }
}

#[cfg(test)]
mod tests;
