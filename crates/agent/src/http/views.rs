//! The JSON bodies of `/status` and `/health`.

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use std::time::Duration;

use warmspare_failover::policy::Target;

use crate::state::{FailoverView, JobState, JobView, RunOutcome, View};

/// The body of `GET /status`.
pub(crate) fn status(view: &View) -> Value {
    json!({
        "site": view.site,
        "version": env!("CARGO_PKG_VERSION"),
        "started_at": rfc3339(Some(view.started_at)),
        "now": rfc3339(Some(view.now)),
        "paused": view.paused,
        "jobs": view.jobs.iter().map(job).collect::<Vec<_>>(),
        "failover": failover(view),
        "lease": lease(view),
        "rpo_seconds": view.rpo_seconds,
        "last_snapshot": rfc3339(view.measures.last_snapshot),
        "sync_objects_total": view.measures.synced.then_some(view.measures.sync_objects_total),
        "probes": probes(view),
    })
}

/// The failover driver: running or why not, and the policy's view.
fn failover(view: &View) -> Value {
    match &view.failover {
        FailoverView::Off(reason) => json!({ "running": false, "reason": reason }),
        FailoverView::Running {
            state,
            may_accept_traffic,
            healthy_standby,
        } => json!({
            "running": true,
            "role": state.role.to_string(),
            "may_accept_traffic": may_accept_traffic,
            "healthy_standby": healthy_standby,
            "fenced": state.fenced,
            "paused": state.paused,
            "local": state.local.to_string(),
            "peer": state.peer.to_string(),
            "epoch": state.epoch,
            "time_left_seconds": state.time_left.map(|d| d.as_secs_f64()),
            "takeover_in_seconds": state.takeover_in.map(|d| d.as_secs_f64()),
            "lag_seconds": state.lag.map(|d| d.as_secs_f64()),
            "awaiting_lsn": state.awaiting_lsn.map(|l| l.to_string()),
            "replayed_lsn": state.replayed_lsn.map(|l| l.to_string()),
            "last_alert": state.last_alert.as_ref().map(|(kind, message)| {
                json!({ "kind": format!("{kind:?}"), "message": message })
            }),
        }),
    }
}

/// The lease as this site last saw it; null when unknown.
fn lease(view: &View) -> Value {
    let FailoverView::Running { state, .. } = &view.failover else {
        return Value::Null;
    };
    match &state.lease {
        None => Value::Null,
        Some(record) => json!({
            "holder": record.holder,
            "epoch": record.epoch,
            "renewals": record.renewals,
            "released": record.released,
            "successor": record.successor,
            "final_lsn": record.final_lsn.map(|l| l.to_string()),
            "ttl_seconds": Duration::from_millis(record.ttl_ms).as_secs_f64(),
            "held_here": record.holder == view.site && !record.released,
        }),
    }
}

fn probes(view: &View) -> Value {
    if view.probes.is_empty() {
        return Value::Null;
    }
    view.probes
        .iter()
        .map(|(target, name, ok)| json!({ "target": target_name(*target), "name": name, "up": ok }))
        .collect()
}

/// `local` or `peer`.
pub(crate) fn target_name(target: Target) -> &'static str {
    match target {
        Target::Local => "local",
        Target::Peer => "peer",
    }
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
        "skipped_runs": r.count(RunOutcome::Skipped),
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
        "probes": probes(view),
    })
}

/// `not_available`, `unscheduled`, `pending` (no run finished yet), `ok`,
/// `skipped` (the job does not apply at this site now), `failing` or
/// `cancelled`, from the job's state and last outcome.
fn check_status(job: &JobView) -> &'static str {
    match (job.state, job.record.last_outcome) {
        (JobState::NotAvailable, _) => "not_available",
        (_, Some(RunOutcome::Succeeded)) => "ok",
        (_, Some(RunOutcome::Skipped)) => "skipped",
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
