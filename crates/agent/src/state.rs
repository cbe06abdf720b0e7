//! What the agent knows about itself: the jobs, their last runs, whether
//! the scheduler is paused. The scheduler writes it, the HTTP endpoints read
//! consistent copies of it ([`Shared::view`]).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;

use warmspare_failover::DriverState;
use warmspare_failover::policy::Target;

use crate::clock::Clock;
use crate::config::Schedule;
use crate::failover::{Links, Measures, is_healthy_standby};
use crate::job::Job;

/// State shared by the scheduler and the HTTP server.
pub(crate) struct Shared {
    pub(crate) site: String,
    pub(crate) started_at: OffsetDateTime,
    pub(crate) clock: Arc<dyn Clock>,
    /// In the fixed order of [`crate::job::JOB_NAMES`].
    pub(crate) jobs: Vec<JobSlot>,
    pub(crate) paused: watch::Sender<bool>,
    /// The SHA-256 of the bearer token, if one was configured.
    pub(crate) token: Option<crate::http::auth::TokenDigest>,
    /// The failover driver (or why there is none) and the jobs' measures.
    pub(crate) links: Arc<Links>,
}

/// One job the agent knows of: scheduled, registered, or both.
pub(crate) struct JobSlot {
    pub(crate) name: Arc<str>,
    pub(crate) schedule: Option<Schedule>,
    pub(crate) job: Option<Arc<dyn Job>>,
    pub(crate) timeout: Duration,
    record: Mutex<JobRecord>,
}

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobState {
    /// Scheduled, but nothing implements it in this build: it never runs.
    NotAvailable,
    /// Implemented, but the configuration gives it no schedule.
    Unscheduled,
    /// Waiting for its next run.
    Idle,
    /// A run is in progress.
    Running,
}

impl JobState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            JobState::NotAvailable => "not_available",
            JobState::Unscheduled => "unscheduled",
            JobState::Idle => "idle",
            JobState::Running => "running",
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RunOutcome {
    Succeeded,
    /// The job did not apply at this site ([`crate::JobOutcome::skipped`]).
    Skipped,
    Failed,
    TimedOut,
    Cancelled,
}

impl RunOutcome {
    /// Every outcome, in the order of [`JobRecord::outcomes`].
    pub(crate) const ALL: [RunOutcome; 5] = [
        RunOutcome::Succeeded,
        RunOutcome::Skipped,
        RunOutcome::Failed,
        RunOutcome::TimedOut,
        RunOutcome::Cancelled,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Succeeded => "succeeded",
            RunOutcome::Skipped => "skipped",
            RunOutcome::Failed => "failed",
            RunOutcome::TimedOut => "timed_out",
            RunOutcome::Cancelled => "cancelled",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// Whether the run counts in `warmspare_job_failures_total`.
    /// Cancellation at shutdown is not a failure of the job.
    pub(crate) fn is_failure(self) -> bool {
        matches!(self, RunOutcome::Failed | RunOutcome::TimedOut)
    }
}

/// The record of one job's runs.
#[derive(Debug, Clone, Default)]
pub(crate) struct JobRecord {
    pub(crate) running: bool,
    pub(crate) next_run: Option<OffsetDateTime>,
    pub(crate) last_start: Option<OffsetDateTime>,
    pub(crate) last_finish: Option<OffsetDateTime>,
    pub(crate) last_outcome: Option<RunOutcome>,
    pub(crate) last_error: Option<String>,
    pub(crate) last_summary: Option<String>,
    pub(crate) last_success: Option<OffsetDateTime>,
    /// Runs that finished, whatever the outcome.
    pub(crate) runs: u64,
    /// Runs that failed or timed out.
    pub(crate) failures: u64,
    /// Runs that finished, by outcome (indexed like [`RunOutcome::ALL`]).
    pub(crate) outcomes: [u64; 5],
    /// Due times skipped because the previous run was still going.
    pub(crate) skipped_overlap: u64,
    /// Due times skipped because the scheduler was paused.
    pub(crate) skipped_paused: u64,
}

impl JobRecord {
    /// Runs that ended with `outcome`.
    pub(crate) fn count(&self, outcome: RunOutcome) -> u64 {
        self.outcomes[outcome.index()]
    }

    /// Counts a finished run.
    pub(crate) fn count_run(&mut self, outcome: RunOutcome) {
        self.runs += 1;
        self.outcomes[outcome.index()] += 1;
        if outcome.is_failure() {
            self.failures += 1;
        }
    }
}

impl JobSlot {
    pub(crate) fn new(
        name: &str,
        schedule: Option<Schedule>,
        job: Option<Arc<dyn Job>>,
        timeout: Duration,
    ) -> Self {
        JobSlot {
            name: name.into(),
            schedule,
            job,
            timeout,
            record: Mutex::new(JobRecord::default()),
        }
    }

    /// The record, even if a panicking holder poisoned the lock (every
    /// update leaves it consistent).
    pub(crate) fn record(&self) -> MutexGuard<'_, JobRecord> {
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the scheduler runs this job.
    pub(crate) fn is_schedulable(&self) -> bool {
        self.schedule.is_some() && self.job.is_some()
    }

    fn state(&self, record: &JobRecord) -> JobState {
        match (&self.job, &self.schedule) {
            (None, _) => JobState::NotAvailable,
            _ if record.running => JobState::Running,
            (Some(_), None) => JobState::Unscheduled,
            (Some(_), Some(_)) => JobState::Idle,
        }
    }
}

/// A consistent copy of the state at one instant, for rendering.
#[derive(Debug, Clone)]
pub(crate) struct View {
    pub(crate) site: String,
    pub(crate) started_at: OffsetDateTime,
    pub(crate) now: OffsetDateTime,
    pub(crate) paused: bool,
    pub(crate) jobs: Vec<JobView>,
    /// The age of the newest state the spare holds: the newest restored
    /// snapshot's age, else the replay lag the probes measured.
    pub(crate) rpo_seconds: Option<f64>,
    /// The failover driver's state, or why there is none.
    pub(crate) failover: FailoverView,
    /// What the jobs measured.
    pub(crate) measures: Measures,
    /// The latest probe results: target, probe name, up.
    pub(crate) probes: Vec<(Target, String, bool)>,
}

/// The failover driver in a [`View`].
#[derive(Debug, Clone)]
pub(crate) enum FailoverView {
    /// No running driver, and why.
    Off(String),
    /// The driver's published state and the answers against the clock now.
    Running {
        state: Box<DriverState>,
        may_accept_traffic: bool,
        healthy_standby: bool,
    },
}

/// One job in a [`View`].
#[derive(Debug, Clone)]
pub(crate) struct JobView {
    pub(crate) name: Arc<str>,
    pub(crate) schedule: Option<Schedule>,
    pub(crate) state: JobState,
    pub(crate) record: JobRecord,
}

impl Shared {
    pub(crate) fn is_paused(&self) -> bool {
        *self.paused.borrow()
    }

    pub(crate) fn view(&self) -> View {
        let jobs = self
            .jobs
            .iter()
            .map(|slot| {
                let record = slot.record().clone();
                JobView {
                    name: slot.name.clone(),
                    schedule: slot.schedule,
                    state: slot.state(&record),
                    record,
                }
            })
            .collect();
        let now = self.clock.now();
        let failover = match self.links.handle() {
            Some(handle) if handle.state().running => {
                let state = handle.state();
                FailoverView::Running {
                    may_accept_traffic: handle.may_accept_traffic(),
                    healthy_standby: is_healthy_standby(&handle, &state),
                    state: Box::new(state),
                }
            }
            _ => FailoverView::Off(self.links.no_driver_reason()),
        };
        let measures = self.links.measures();
        // Unknown stays unknown (None), never a made-up zero.
        // What a failover to this site would lose: meaningless at the site
        // that accepts the traffic itself.
        let rpo_seconds = match (&measures.restored_taken_at, &failover) {
            (
                _,
                FailoverView::Running {
                    may_accept_traffic: true,
                    ..
                },
            ) => None,
            (Some(taken), _) => Some((now - *taken).as_seconds_f64().max(0.0)),
            (None, FailoverView::Running { state, .. }) => state.lag.map(|l| l.as_secs_f64()),
            _ => None,
        };
        View {
            site: self.site.clone(),
            started_at: self.started_at,
            now,
            paused: self.is_paused(),
            jobs,
            rpo_seconds,
            failover,
            measures,
            probes: self.links.probe_results(),
        }
    }
}

/// Completes once `flag` reads true, or never if its sender is gone.
/// Returns nothing, so no borrow of the channel outlives it.
pub(crate) async fn raised(flag: &mut watch::Receiver<bool>) {
    if flag.wait_for(|raised| *raised).await.is_err() {
        std::future::pending::<()>().await;
    }
}
