//! `/metrics` in the Prometheus text exposition format, version 0.0.4,
//! written by hand: a dozen families do not justify a metrics library.
//!
//! A metric whose value is unknown (no RPO measured yet, no lease) is left
//! out rather than exported as zero, so alerts on it cannot be fooled.

use std::fmt::Write;

use time::OffsetDateTime;

use crate::state::{JobRecord, JobState, View};

/// The `Content-Type` of the format.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

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
            &[("job", &job.name)],
            u8::from(available),
        );
    }

    let counters: [Family<u64>; 2] = [
        (
            "warmspare_job_runs_total",
            "Runs of the job that finished, whatever their outcome.",
            |r| r.runs,
        ),
        (
            "warmspare_job_failures_total",
            "Runs of the job that failed or timed out.",
            |r| r.failures,
        ),
    ];
    for (name, help, value) in counters {
        out.family(name, "counter", help);
        for job in &view.jobs {
            out.sample(name, &[("job", &job.name)], value(&job.record));
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
            &[("job", &job.name), ("reason", "overlap")],
            r.skipped_overlap,
        );
        out.sample(
            skipped,
            &[("job", &job.name), ("reason", "paused")],
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
            &[("job", &job.name)],
            u8::from(job.record.running),
        );
    }

    let timestamps: [Family<Option<OffsetDateTime>>; 3] = [
        (
            "warmspare_last_success_timestamp_seconds",
            "Unix time at which the last successful run of the job finished.",
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
            out.sample(name, &[("job", job)], seconds(t));
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
    if let Some(epoch) = view.lease_epoch {
        out.family(
            "warmspare_lease_epoch",
            "gauge",
            "Epoch (fencing token) of the lease as last observed.",
        );
        out.sample("warmspare_lease_epoch", &[], epoch);
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
    use crate::state::{JobView, RunOutcome};

    fn view() -> View {
        let sync = JobRecord {
            next_run: Some(datetime!(2026-01-01 00:01 UTC)),
            last_start: Some(datetime!(2026-01-01 00:00 UTC)),
            last_success: Some(datetime!(2026-01-01 00:00:01.5 UTC)),
            last_outcome: Some(RunOutcome::Succeeded),
            runs: 3,
            failures: 1,
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
            lease_epoch: None,
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
            "warmspare_job_available{job=\"backup\"} 0",
            "warmspare_job_available{job=\"sync\"} 1",
            "# TYPE warmspare_job_runs_total counter",
            "warmspare_job_runs_total{job=\"backup\"} 0",
            "warmspare_job_runs_total{job=\"sync\"} 3",
            "warmspare_job_failures_total{job=\"sync\"} 1",
            "warmspare_job_skipped_total{job=\"sync\",reason=\"overlap\"} 2",
            "warmspare_job_skipped_total{job=\"sync\",reason=\"paused\"} 0",
            "warmspare_job_running{job=\"sync\"} 1",
            "# TYPE warmspare_last_success_timestamp_seconds gauge",
            "warmspare_last_success_timestamp_seconds{job=\"sync\"} 1767225601.5",
            "warmspare_job_next_run_timestamp_seconds{job=\"sync\"} 1767225660",
        ];
        for line in expected {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // No success yet for `backup`: no sample, not a zero.
        assert!(!text.contains("warmspare_last_success_timestamp_seconds{job=\"backup\"}"));
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

        let mut known = view();
        known.rpo_seconds = Some(12.5);
        known.lease_epoch = Some(7);
        let text = render(&known);
        assert!(text.lines().any(|l| l == "warmspare_rpo_seconds 12.5"));
        assert!(
            text.lines()
                .any(|l| l == "# TYPE warmspare_lease_epoch gauge")
        );
        assert!(text.lines().any(|l| l == "warmspare_lease_epoch 7"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
