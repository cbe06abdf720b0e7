//! `/metrics` in the Prometheus text exposition format, version 0.0.4,
//! written by hand: a dozen families do not justify a metrics library.
//!
//! A metric whose value is unknown (no RPO measured yet, no lease) is left
//! out rather than exported as zero, so alerts on it cannot be fooled.

use std::fmt::Write;

use time::OffsetDateTime;

use crate::state::{FailoverView, JobRecord, JobState, RunOutcome, View};

/// The `Content-Type` of the format.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The label that names the job. Not `job`: Prometheus reserves that for
/// the scrape job and would store ours as `exported_job`.
const TASK: &str = "task";

/// A per-job family: name, help text, and how to read its value.
type Family<T> = (&'static str, &'static str, fn(&JobRecord) -> T);

/// Renders every metric of `view`.
pub(crate) fn render(view: &View) -> String {
    let mut out = Families(String::with_capacity(4096));

    out.family(
        "warmspare_agent_start_time_seconds",
        "gauge",
        "Unix time at which the agent started.",
    );
    out.sample(
        "warmspare_agent_start_time_seconds",
        &[],
        seconds(view.started_at),
    );

    out.family(
        "warmspare_scheduler_paused",
        "gauge",
        "1 while the scheduler is paused (POST /pause), else 0.",
    );
    out.sample("warmspare_scheduler_paused", &[], u8::from(view.paused));

    out.family(
        "warmspare_job_available",
        "gauge",
        "1 when the job is implemented in this build, 0 when it is scheduled but cannot run.",
    );
    for job in &view.jobs {
        let available = job.state != JobState::NotAvailable;
        out.sample(
            "warmspare_job_available",
            &[(TASK, &job.name)],
            u8::from(available),
        );
    }

    let runs = "warmspare_job_runs_total";
    out.family(
        runs,
        "counter",
        "Runs of the job that finished, by result: succeeded, skipped (the job does not \
         apply at this site now, such as a backup at the spare), failed, timed_out, cancelled.",
    );
    for job in &view.jobs {
        for outcome in RunOutcome::ALL {
            out.sample(
                runs,
                &[(TASK, &job.name), ("result", outcome.as_str())],
                job.record.count(outcome),
            );
        }
    }

    let failures = "warmspare_job_failures_total";
    out.family(
        failures,
        "counter",
        "Runs of the job that failed or timed out.",
    );
    for job in &view.jobs {
        out.sample(failures, &[(TASK, &job.name)], job.record.failures);
    }

    // A state set: one series per result, 1 for the last run's.
    let last = "warmspare_job_last_result";
    let finished: Vec<_> = view
        .jobs
        .iter()
        .filter_map(|job| job.record.last_outcome.map(|o| (&job.name, o)))
        .collect();
    if !finished.is_empty() {
        out.family(
            last,
            "gauge",
            "1 for the result of the job's last finished run, 0 for the other results.",
        );
        for (task, outcome) in finished {
            for each in RunOutcome::ALL {
                out.sample(
                    last,
                    &[(TASK, task), ("result", each.as_str())],
                    u8::from(each == outcome),
                );
            }
        }
    }

    let skipped = "warmspare_job_skipped_total";
    out.family(
        skipped,
        "counter",
        "Due times at which the job did not start: its previous run was still going \
         (reason=\"overlap\") or the scheduler was paused (reason=\"paused\").",
    );
    for job in &view.jobs {
        let r = &job.record;
        out.sample(
            skipped,
            &[(TASK, &job.name), ("reason", "overlap")],
            r.skipped_overlap,
        );
        out.sample(
            skipped,
            &[(TASK, &job.name), ("reason", "paused")],
            r.skipped_paused,
        );
    }

    out.family(
        "warmspare_job_running",
        "gauge",
        "1 while a run of the job is in progress, else 0.",
    );
    for job in &view.jobs {
        out.sample(
            "warmspare_job_running",
            &[(TASK, &job.name)],
            u8::from(job.record.running),
        );
    }

    let timestamps: [Family<Option<OffsetDateTime>>; 3] = [
        (
            "warmspare_last_success_timestamp_seconds",
            "Unix time at which the last successful run of the job finished (skipped runs \
             do not count).",
            |r| r.last_success,
        ),
        (
            "warmspare_job_last_start_timestamp_seconds",
            "Unix time at which the last run of the job started.",
            |r| r.last_start,
        ),
        (
            "warmspare_job_next_run_timestamp_seconds",
            "Unix time at which the job is next due.",
            |r| r.next_run,
        ),
    ];
    for (name, help, value) in timestamps {
        let samples: Vec<_> = view
            .jobs
            .iter()
            .filter_map(|job| value(&job.record).map(|t| (&job.name, t)))
            .collect();
        if samples.is_empty() {
            continue;
        }
        out.family(name, "gauge", help);
        for (job, t) in samples {
            out.sample(name, &[(TASK, job)], seconds(t));
        }
    }

    if let Some(rpo) = view.rpo_seconds {
        out.family(
            "warmspare_rpo_seconds",
            "gauge",
            "Age of the newest state the spare holds: what a failover now would lose.",
        );
        out.sample("warmspare_rpo_seconds", &[], rpo);
    }
    if let Some(t) = view.measures.last_snapshot {
        out.family(
            "warmspare_last_snapshot_timestamp_seconds",
            "gauge",
            "Unix time at which the newest snapshot this agent wrote was taken.",
        );
        out.sample("warmspare_last_snapshot_timestamp_seconds", &[], seconds(t));
    }
    if view.measures.synced {
        out.family(
            "warmspare_sync_objects_total",
            "counter",
            "Objects copied to the other site's artifact store by sync since the agent started.",
        );
        out.sample(
            "warmspare_sync_objects_total",
            &[],
            view.measures.sync_objects_total,
        );
    }
    if let FailoverView::Running {
        state,
        may_accept_traffic,
        ..
    } = &view.failover
    {
        out.family(
            "warmspare_may_accept_traffic",
            "gauge",
            "1 while the failover driver says this site may accept live traffic, else 0.",
        );
        out.sample(
            "warmspare_may_accept_traffic",
            &[],
            u8::from(*may_accept_traffic),
        );
        if let Some(lease) = &state.lease {
            out.family(
                "warmspare_lease_epoch",
                "gauge",
                "Epoch (fencing token) of the lease as last observed.",
            );
            out.sample("warmspare_lease_epoch", &[], lease.epoch);
            out.family(
                "warmspare_lease_holder",
                "gauge",
                "1 for the site that holds the lease as last observed (0 when released).",
            );
            out.sample(
                "warmspare_lease_holder",
                &[("site", &lease.holder)],
                u8::from(!lease.released),
            );
        }
    }
    if !view.probes.is_empty() {
        out.family(
            "warmspare_probe_up",
            "gauge",
            "1 when the latest probe of the target succeeded, else 0.",
        );
        for (target, name, ok) in &view.probes {
            out.sample(
                "warmspare_probe_up",
                &[
                    ("target", name),
                    ("side", super::views::target_name(*target)),
                ],
                u8::from(*ok),
            );
        }
    }
    out.0
}

/// Unix seconds with sub-second precision.
fn seconds(t: OffsetDateTime) -> f64 {
    // An i128 of nanoseconds to f64 loses only sub-microsecond precision
    // for present-day times.
    #[allow(clippy::cast_precision_loss)]
    let nanos = t.unix_timestamp_nanos() as f64;
    nanos / 1e9
}

struct Families(String);

impl Families {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        // HELP text escapes only backslash and newline.
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{key}=\"{}\"", escape_label(value));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
}

/// Label values escape backslash, double quote and newline.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use time::macros::datetime;

    use super::*;
    use crate::state::JobView;

    fn view() -> View {
        let sync = JobRecord {
            next_run: Some(datetime!(2026-01-01 00:01 UTC)),
            last_start: Some(datetime!(2026-01-01 00:00 UTC)),
            last_success: Some(datetime!(2026-01-01 00:00:01.5 UTC)),
            last_outcome: Some(RunOutcome::Skipped),
            runs: 3,
            failures: 1,
            // One success, one skipped run, one failure.
            outcomes: [1, 1, 1, 0, 0],
            skipped_overlap: 2,
            ..JobRecord::default()
        };
        View {
            site: "spare".into(),
            started_at: datetime!(2025-12-31 23:00 UTC),
            now: datetime!(2026-01-01 00:00:30 UTC),
            paused: false,
            jobs: vec![
                JobView {
                    name: Arc::from("backup"),
                    schedule: Some("0 * * * *".parse().unwrap()),
                    state: JobState::NotAvailable,
                    record: JobRecord::default(),
                },
                JobView {
                    name: Arc::from("sync"),
                    schedule: Some("every 1m".parse().unwrap()),
                    state: JobState::Running,
                    record: JobRecord {
                        running: true,
                        ..sync
                    },
                },
            ],
            rpo_seconds: None,
            failover: FailoverView::Off("no peer site configured".into()),
            measures: crate::failover::Measures::default(),
            probes: Vec::new(),
        }
    }

    #[test]
    fn exposition_format() {
        let text = render(&view());
        let expected = [
            "# HELP warmspare_agent_start_time_seconds Unix time at which the agent started.",
            "# TYPE warmspare_agent_start_time_seconds gauge",
            "warmspare_agent_start_time_seconds 1767222000",
            "warmspare_scheduler_paused 0",
            "warmspare_job_available{task=\"backup\"} 0",
            "warmspare_job_available{task=\"sync\"} 1",
            "# TYPE warmspare_job_runs_total counter",
            "warmspare_job_runs_total{task=\"backup\",result=\"succeeded\"} 0",
            "warmspare_job_runs_total{task=\"sync\",result=\"succeeded\"} 1",
            "warmspare_job_runs_total{task=\"sync\",result=\"skipped\"} 1",
            "warmspare_job_runs_total{task=\"sync\",result=\"failed\"} 1",
            "warmspare_job_runs_total{task=\"sync\",result=\"timed_out\"} 0",
            "warmspare_job_runs_total{task=\"sync\",result=\"cancelled\"} 0",
            "warmspare_job_failures_total{task=\"sync\"} 1",
            "# TYPE warmspare_job_last_result gauge",
            "warmspare_job_last_result{task=\"sync\",result=\"skipped\"} 1",
            "warmspare_job_last_result{task=\"sync\",result=\"succeeded\"} 0",
            "warmspare_job_last_result{task=\"sync\",result=\"failed\"} 0",
            "warmspare_job_skipped_total{task=\"sync\",reason=\"overlap\"} 2",
            "warmspare_job_skipped_total{task=\"sync\",reason=\"paused\"} 0",
            "warmspare_job_running{task=\"sync\"} 1",
            "# TYPE warmspare_last_success_timestamp_seconds gauge",
            "warmspare_last_success_timestamp_seconds{task=\"sync\"} 1767225601.5",
            "warmspare_job_next_run_timestamp_seconds{task=\"sync\"} 1767225660",
        ];
        for line in expected {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // Prometheus reserves `job` for the scrape job: no sample carries it
        // (it would be stored as `exported_job`).
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(!line.contains("{job=") && !line.contains(",job="), "{line}");
        }
        // `backup` never finished a run: no last result, not all zeros.
        assert!(!text.contains("warmspare_job_last_result{task=\"backup\""));
        // No success yet for `backup`: no sample, not a zero.
        assert!(!text.contains("warmspare_last_success_timestamp_seconds{task=\"backup\"}"));
        // Every sample line belongs to a family announced by HELP and TYPE.
        let mut announced = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                announced.push(rest.split(' ').next().unwrap().to_owned());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(announced.iter().any(|a| a == name), "{line}");
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<f64>().is_ok(), "{line}");
            }
        }
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn unknown_values_are_absent_not_zero() {
        let text = render(&view());
        assert!(!text.contains("warmspare_rpo_seconds"));
        assert!(!text.contains("warmspare_lease_epoch"));
        assert!(!text.contains("warmspare_may_accept_traffic"));
        assert!(!text.contains("warmspare_last_snapshot_timestamp_seconds"));
        assert!(!text.contains("warmspare_sync_objects_total"));

        let mut known = view();
        known.rpo_seconds = Some(12.5);
        known.measures.last_snapshot = Some(known.started_at);
        known.measures.synced = true;
        known.measures.sync_objects_total = 4;
        known.probes = vec![(
            warmspare_failover::policy::Target::Peer,
            "tcp://10.0.0.2:5432".into(),
            false,
        )];
        let text = render(&known);
        assert!(text.lines().any(|l| l == "warmspare_rpo_seconds 12.5"));
        assert!(
            text.lines()
                .any(|l| l == "warmspare_last_snapshot_timestamp_seconds 1767222000")
        );
        assert!(
            text.lines()
                .any(|l| l == "# TYPE warmspare_sync_objects_total counter")
        );
        assert!(text.lines().any(|l| l == "warmspare_sync_objects_total 4"));
        assert!(
            text.lines()
                .any(|l| l == "warmspare_probe_up{target=\"tcp://10.0.0.2:5432\",side=\"peer\"} 0")
        );
    }

    /// `deploy/prometheus/alerts.yml` names only metrics this file
    /// exports, and the per-job label `task`.
    #[test]
    fn the_alert_rules_match_the_exposition() {
        let rules = include_str!("../../../../deploy/prometheus/alerts.yml");
        let source = include_str!("metrics.rs");
        let names: Vec<&str> = rules
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("warmspare_") && *w != "warmspare_site")
            .collect();
        assert!(names.contains(&"warmspare_job_last_result"), "{names:?}");
        for name in names {
            assert!(
                source.contains(&format!("\"{name}\"")),
                "{name} is not exported"
            );
        }
        assert!(!rules.contains("exported_job"));
        let text = render(&view());
        for selector in [
            "warmspare_job_last_result{task=",
            "warmspare_job_runs_total{task=\"sync\",result=\"timed_out\"}",
            "warmspare_job_skipped_total{task=\"sync\",reason=\"overlap\"}",
        ] {
            assert!(text.contains(selector), "{selector}");
            let used = selector.split('{').next().unwrap();
            assert!(rules.contains(used), "{used}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
