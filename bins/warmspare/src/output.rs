//! Output helpers: aligned tables for people, JSON for scripts, and a last
//! line of defence against printing secrets.

use std::io::{self, Write};

use serde::Serialize;

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    Ok,
    Failed,
    /// Not attempted because a check it depends on failed.
    Skipped,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Failed => "FAILED",
            Status::Skipped => "skipped",
        }
    }
}

/// One row of `warmspare check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Row {
    pub(crate) check: String,
    pub(crate) target: String,
    pub(crate) status: Status,
    pub(crate) detail: String,
}

impl Row {
    pub(crate) fn ok(
        check: impl Into<String>,
        target: impl Into<String>,
        detail: impl Into<String>,
    ) -> Row {
        Row {
            check: check.into(),
            target: target.into(),
            status: Status::Ok,
            detail: detail.into(),
        }
    }

    pub(crate) fn failed(
        check: impl Into<String>,
        target: impl Into<String>,
        detail: impl Into<String>,
    ) -> Row {
        Row {
            check: check.into(),
            target: target.into(),
            status: Status::Failed,
            detail: detail.into(),
        }
    }

    /// The row's cells in table order: check, target, status, detail.
    pub(crate) fn cells(&self) -> [&str; 4] {
        [
            self.check.as_str(),
            self.target.as_str(),
            self.status.label(),
            self.detail.as_str(),
        ]
    }

    /// Replaces every occurrence of each secret in the row's text by `***`.
    pub(crate) fn scrub(&mut self, secrets: &[String]) {
        for field in [&mut self.check, &mut self.target, &mut self.detail] {
            *field = scrub(field, secrets);
        }
    }
}

pub(crate) use warmspare_store::redact::scrub;

/// Writes rows as an aligned table with a header line; the last column is
/// not padded.
pub(crate) fn write_table<'a, const N: usize>(
    out: &mut impl Write,
    headers: [&str; N],
    rows: impl IntoIterator<Item = [&'a str; N]>,
) -> io::Result<()> {
    let cells: Vec<[&str; N]> = rows.into_iter().collect();
    let mut widths = headers.map(|h| h.chars().count());
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for line in std::iter::once(&headers).chain(&cells) {
        let mut text = String::new();
        for (i, cell) in line.iter().enumerate() {
            text.push_str(cell);
            if i + 1 < line.len() {
                let pad = widths[i] - cell.chars().count() + 2;
                text.extend(std::iter::repeat_n(' ', pad));
            }
        }
        writeln!(out, "{}", text.trim_end())?;
    }
    Ok(())
}

/// Writes a value as pretty JSON followed by a newline.
pub(crate) fn write_json(out: &mut impl Write, value: &impl Serialize) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)
}

/// An error and its sources on one line, without repeating a source that
/// the message already contains.
pub(crate) fn one_line(error: &dyn std::error::Error) -> String {
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
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A byte count for people: `512 B`, `1.5 KiB`, `12.3 MiB`.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    #[allow(clippy::cast_precision_loss)] // Display only.
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A duration for people: `0.4s`, `12.0s`, `3m 12s`, `2h 5m 0s`.
pub(crate) fn duration(d: std::time::Duration) -> String {
    if d.as_secs() < 60 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        humantime::format_duration(std::time::Duration::from_secs(d.as_secs())).to_string()
    }
}

/// A snapshot kind for tables.
pub(crate) fn kind(kind: warmspare_store::SnapshotKind) -> &'static str {
    match kind {
        warmspare_store::SnapshotKind::Logical => "logical",
        warmspare_store::SnapshotKind::Physical => "physical",
        _ => "other",
    }
}

/// A UTC time for tables: `2026-11-22 12:00:03`.
pub(crate) fn time(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_aligned() {
        let rows = [
            Row::ok("repository", "s3://b", "listed"),
            Row::failed(
                "primary/database",
                "postgres://u:***@h/db",
                "authentication failed",
            ),
        ];
        let mut out = Vec::new();
        write_table(
            &mut out,
            ["CHECK", "TARGET", "STATUS", "DETAIL"],
            rows.iter().map(Row::cells),
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        let col = lines[0].find("TARGET").unwrap();
        assert_eq!(lines[1].find("s3://b"), Some(col));
        assert_eq!(lines[2].find("postgres://"), Some(col));
        let col = lines[0].find("STATUS").unwrap();
        assert_eq!(lines[2].find("FAILED"), Some(col));
        assert!(lines[1].ends_with("listed"));
    }

    #[test]
    fn json_uses_lowercase_status() {
        let mut out = Vec::new();
        write_json(&mut out, &[Row::failed("c", "t", "d")]).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v[0]["status"], "failed");
        assert_eq!(v[0]["check"], "c");
    }

    #[test]
    fn human_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
        assert_eq!(duration(std::time::Duration::from_millis(400)), "0.4s");
        assert_eq!(duration(std::time::Duration::from_secs(192)), "3m 12s");
        let t = time::macros::datetime!(2026-11-22 13:00:03 +01:00);
        assert_eq!(time(t), "2026-11-22 12:00:03");
    }

    #[test]
    fn scrub_replaces_secrets() {
        let mut row = Row::failed("c", "x hunter2 y", "hunter2!");
        row.scrub(&["hunter2".into(), String::new()]);
        assert_eq!(
            (row.target.as_str(), row.detail.as_str()),
            ("x *** y", "***!")
        );
    }
}
