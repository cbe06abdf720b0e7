//! The JSON bodies of `/status` and `/health`.

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::state::{JobState, JobView, RunOutcome, View};

/// The body of `GET /status`.
pub(crate) fn status(view: &View) -> Value {
    json!({
        "site": view.site,
        "version": env!("CARGO_PKG_VERSION"),
        "started_at": rfc3339(Some(view.started_at)),
        "now": rfc3339(Some(view.now)),
        "paused": view.paused,
        "jobs": view.jobs.iter().map(job).collect::<Vec<_>>(),
        // No failover driver is wired in yet: there is no lease to report
        // and no RPO measured. Null, never a made-up value.
        "lease": Value::Null,
        "rpo_seconds": view.rpo_seconds,
    })
}

fn job(job: &JobView) -> Value {
    let r = &job.record;
    json!({
        "name": &*job.name,
        "schedule": job.schedule.map(|s| s.to_string()),
        "state": job.state.as_str(),
        "next_run": rfc3339(r.next_run),
        "last_start": rfc3339(r.last_start),
        "last_finish": rfc3339(r.last_finish),
        "last_outcome": r.last_outcome.map(RunOutcome::as_str),
        "last_error": r.last_error,
        "last_summary": r.last_summary,
        "last_success": rfc3339(r.last_success),
        "runs": r.runs,
        "failures": r.failures,
        "skipped_overlap": r.skipped_overlap,
        "skipped_paused": r.skipped_paused,
    })
}

/// The body of `GET /health`: the agent is up (or it would not answer),
/// with one check per job.
pub(crate) fn health(view: &View) -> Value {
    let checks: Vec<Value> = view
        .jobs
        .iter()
        .map(|job| {
            let r = &job.record;
            json!({
                "name": format!("job:{}", job.name),
                "kind": "job",
                "status": check_status(job),
                "running": r.running,
                "last_outcome": r.last_outcome.map(RunOutcome::as_str),
                "last_finish": rfc3339(r.last_finish),
                "last_error": r.last_error,
            })
        })
        .collect();
    json!({
        "status": "up",
        "site": view.site,
        "paused": view.paused,
        "checks": checks,
        // Health probes are not wired into the agent yet.
        "probes": Value::Null,
    })
}

/// `not_available`, `unscheduled`, `pending` (no run finished yet), `ok`,
/// `failing` or `cancelled`, from the job's state and last outcome.
fn check_status(job: &JobView) -> &'static str {
    match (job.state, job.record.last_outcome) {
        (JobState::NotAvailable, _) => "not_available",
        (_, Some(RunOutcome::Succeeded)) => "ok",
        (_, Some(RunOutcome::Failed | RunOutcome::TimedOut)) => "failing",
        (_, Some(RunOutcome::Cancelled)) => "cancelled",
        (JobState::Unscheduled, None) => "unscheduled",
        (_, None) => "pending",
    }
}

fn rfc3339(t: Option<OffsetDateTime>) -> Value {
    t.and_then(|t| t.format(&Rfc3339).ok())
        .map_or(Value::Null, Value::String)
}
