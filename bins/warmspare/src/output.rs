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

    /// Replaces every occurrence of each secret in the row's text by `***`.
    pub(crate) fn scrub(&mut self, secrets: &[String]) {
        for field in [&mut self.check, &mut self.target, &mut self.detail] {
            *field = scrub(field, secrets);
        }
    }
}

/// `text` with every non-empty secret replaced by `***`.
pub(crate) fn scrub(text: &str, secrets: &[String]) -> String {
    let mut text = text.to_owned();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        if text.contains(secret.as_str()) {
            text = text.replace(secret.as_str(), "***");
        }
    }
    text
}

/// Writes rows as an aligned table with a header line.
pub(crate) fn write_table(
    out: &mut impl Write,
    headers: [&str; 4],
    rows: &[Row],
) -> io::Result<()> {
    let cells: Vec<[&str; 4]> = rows
        .iter()
        .map(|r| {
            [
                r.check.as_str(),
                r.target.as_str(),
                r.status.label(),
                r.detail.as_str(),
            ]
        })
        .collect();
    let mut widths = headers.map(|h| h.chars().count());
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for line in std::iter::once(&headers).chain(&cells) {
        let mut text = String::new();
        for (i, cell) in line.iter().enumerate() {
            if i + 1 == line.len() {
                text.push_str(cell);
            } else {
                text.push_str(cell);
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
        write_table(&mut out, ["CHECK", "TARGET", "STATUS", "DETAIL"], &rows).unwrap();
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
    fn scrub_replaces_secrets() {
        let mut row = Row::failed("c", "x hunter2 y", "hunter2!");
        row.scrub(&["hunter2".into(), String::new()]);
        assert_eq!(
            (row.target.as_str(), row.detail.as_str()),
            ("x *** y", "***!")
        );
    }
}
