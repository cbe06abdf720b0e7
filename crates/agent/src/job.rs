//! The recurring jobs the agent schedules: the [`Job`] trait, what a run
//! is given ([`JobContext`]) and what it returns ([`JobOutcome`],
//! [`JobError`]).
//!
//! The agent does not implement the jobs itself: the embedder (or the
//! binary) registers one per name through
//! [`AgentOptions::job`](crate::AgentOptions::job). [`FnJob`] turns a
//! closure into a job.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use time::OffsetDateTime;
use tokio::sync::watch;

/// The names of the jobs the `[schedule]` section can schedule.
pub const JOB_NAMES: [&str; 6] = [
    "backup",
    "physical_backup",
    "sync",
    "restore",
    "verify",
    "prune",
];

/// One recurring piece of work (a backup, a sync, ...).
///
/// # Contract
///
/// * The agent never runs two runs of the same job at once.
/// * A run should watch [`JobContext::cancelled`] at points where stopping
///   leaves everything valid, and return [`JobError::Cancelled`] there. A
///   run that ignores cancellation is dropped (its future is no longer
///   polled) after the agent's cancel grace period, so any `.await` may be
///   the last: work must be crash-safe regardless.
/// * A run must not print; it logs with `tracing`.
#[async_trait]
pub trait Job: Send + Sync + 'static {
    /// The job's name; one of [`JOB_NAMES`] for scheduled jobs.
    fn name(&self) -> &str;

    /// Does the work once.
    async fn run(&self, ctx: JobContext) -> Result<JobOutcome, JobError>;
}

/// What a run is given.
#[derive(Debug, Clone)]
pub struct JobContext {
    job: Arc<str>,
    scheduled_for: OffsetDateTime,
    started_at: OffsetDateTime,
    cancel: watch::Receiver<bool>,
}

impl JobContext {
    pub(crate) fn new(
        job: Arc<str>,
        scheduled_for: OffsetDateTime,
        started_at: OffsetDateTime,
        cancel: watch::Receiver<bool>,
    ) -> Self {
        JobContext {
            job,
            scheduled_for,
            started_at,
            cancel,
        }
    }

    /// A context that is never cancelled, to run a job outside the agent
    /// (the CLI, tests).
    pub fn detached(job: &str, now: OffsetDateTime) -> Self {
        let (tx, cancel) = watch::channel(false);
        // Keeping the sender alive would need a place to store it; a
        // dropped sender reads as "never cancelled" (see `cancelled`).
        drop(tx);
        JobContext::new(job.into(), now, now, cancel)
    }

    /// The job's name.
    pub fn job(&self) -> &str {
        &self.job
    }

    /// When the schedule said the run was due.
    pub fn scheduled_for(&self) -> OffsetDateTime {
        self.scheduled_for
    }

    /// When the run started.
    pub fn started_at(&self) -> OffsetDateTime {
        self.started_at
    }

    /// Whether the run has been asked to stop (agent shutdown or timeout).
    pub fn is_cancelled(&self) -> bool {
        *self.cancel.borrow()
    }

    /// Completes when the run is asked to stop; never completes otherwise.
    /// Cancel-safe: use it in `tokio::select!` next to the work.
    pub async fn cancelled(&self) {
        let mut rx = self.cancel.clone();
        if rx.wait_for(|c| *c).await.is_err() {
            // The agent dropped the sender without cancelling: this run can
            // no longer be cancelled.
            std::future::pending::<()>().await;
        }
    }
}

/// What a run that did not fail reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct JobOutcome {
    /// One line for `/status` and the logs, such as `"3 objects copied"`.
    pub summary: Option<String>,
    /// The run did nothing because the job does not apply here and now
    /// (a backup at the spare, a restore at the active site). The agent
    /// records it as `skipped`, not as a success: it does not refresh
    /// `last_success`.
    pub skipped: bool,
}

impl JobOutcome {
    /// A success with nothing to add.
    pub fn done() -> Self {
        JobOutcome::default()
    }

    /// A success summarised in one line.
    pub fn summary(summary: impl Into<String>) -> Self {
        JobOutcome {
            summary: Some(summary.into()),
            skipped: false,
        }
    }

    /// A run that did nothing because the job does not apply at this
    /// site now; `why` becomes the summary, after `skipped: `.
    pub fn skipped(why: impl std::fmt::Display) -> Self {
        JobOutcome {
            summary: Some(format!("skipped: {why}")),
            skipped: true,
        }
    }
}

/// Why a run did not succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// The work failed.
    #[error(transparent)]
    Failed(Box<dyn std::error::Error + Send + Sync + 'static>),
    /// The run stopped because it was asked to ([`JobContext::cancelled`]).
    #[error("cancelled")]
    Cancelled,
}

impl JobError {
    /// A failure from any error (the crates' own `Error` types).
    pub fn failed(error: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        JobError::Failed(error.into())
    }

    /// A failure described by a message.
    pub fn msg(message: impl Into<String>) -> Self {
        JobError::Failed(message.into().into())
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<JobOutcome, JobError>> + Send + 'static>>;

/// A [`Job`] made of a name and a closure that returns the run's future.
///
/// ```
/// use warmspare_agent::{FnJob, JobOutcome};
///
/// let job = FnJob::new("sync", |ctx| async move {
///     tracing::info!(job = ctx.job(), "syncing");
///     Ok(JobOutcome::summary("nothing to do"))
/// });
/// # let _ = job;
/// ```
pub struct FnJob {
    name: String,
    run: Box<dyn Fn(JobContext) -> BoxFuture + Send + Sync>,
}

impl FnJob {
    /// A job called `name` whose runs are `run(ctx)`.
    pub fn new<F, Fut>(name: impl Into<String>, run: F) -> Self
    where
        F: Fn(JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<JobOutcome, JobError>> + Send + 'static,
    {
        FnJob {
            name: name.into(),
            run: Box::new(move |ctx| Box::pin(run(ctx))),
        }
    }
}

impl fmt::Debug for FnJob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnJob").field("name", &self.name).finish()
    }
}

#[async_trait]
impl Job for FnJob {
    fn name(&self) -> &str {
        &self.name
    }

    async fn run(&self, ctx: JobContext) -> Result<JobOutcome, JobError> {
        (self.run)(ctx).await
    }
}
