//! Configuration errors that point at the file, line and key.

use std::fmt;
use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// A configuration file that cannot be used, with where the problem is.
///
/// Displays as `invalid config FILE, line N, key `a.b`: what is wrong`,
/// leaving out what is unknown. The message never contains a secret: URLs
/// are redacted, and the offending line itself is not quoted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// Where the text came from (usually the file's path).
    pub origin: String,
    /// 1-based line of the problem, when it can be placed.
    pub line: Option<usize>,
    /// 1-based column of the problem, when it can be placed.
    pub column: Option<usize>,
    /// Dotted path of the key concerned, such as `sites.spare.database`.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid config {}", self.origin)?;
        if let Some(line) = self.line {
            write!(f, ", line {line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ", key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl ConfigError {
    /// An error about `key` (a dotted path), placed at the key's line in
    /// `text` when the key is written there, else at its nearest written
    /// parent table.
    pub(crate) fn at_key(origin: &str, text: &str, key: &str, message: impl Into<String>) -> Self {
        let span = locate_key(text, key);
        let (line, column) = span.map(|s| line_col(text, s.start)).unzip();
        ConfigError {
            origin: origin.to_owned(),
            line,
            column,
            key: Some(key.to_owned()),
            message: message.into(),
        }
    }

    /// Converts a TOML syntax or deserialization error.
    pub(crate) fn from_toml(origin: &str, text: &str, error: &toml::de::Error) -> Self {
        let span = error.span();
        let (line, column) = span.clone().map(|s| line_col(text, s.start)).unzip();
        let key = span.and_then(|s| key_at(text, s));
        ConfigError {
            origin: origin.to_owned(),
            line,
            column,
            key,
            message: error.message().trim_end().trim_end_matches('.').to_owned(),
        }
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..text.floor_char_boundary(offset)];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The dotted key whose key or value covers `span` most tightly.
fn key_at(text: &str, span: Range<usize>) -> Option<String> {
    let doc = DeTable::parse(text).ok()?;
    let mut best: Option<(usize, String)> = None;
    let mut path = Vec::new();
    visit_table(
        doc.get_ref(),
        &mut path,
        &mut |path, key_span, value_span| {
            for candidate in [key_span, value_span] {
                let covers = candidate.start <= span.start
                    && span.end <= candidate.end.max(candidate.start + 1);
                let width = candidate.end - candidate.start;
                if covers && best.as_ref().is_none_or(|(w, _)| width < *w) {
                    best = Some((width, path.join(".")));
                }
            }
        },
    );
    best.map(|(_, key)| key)
}

/// The span of `key` (dotted) in `text`: the key itself, or the nearest
/// written parent.
fn locate_key(text: &str, key: &str) -> Option<Range<usize>> {
    let doc = DeTable::parse(text).ok()?;
    let mut found: Option<(usize, Range<usize>)> = None;
    let mut path = Vec::new();
    visit_table(doc.get_ref(), &mut path, &mut |path, key_span, _| {
        let dotted = path.join(".");
        let matches = key == dotted || key.starts_with(&format!("{dotted}."));
        if matches && found.as_ref().is_none_or(|(depth, _)| path.len() > *depth) {
            found = Some((path.len(), key_span));
        }
    });
    found.map(|(_, span)| span)
}

type Visitor<'a> = dyn FnMut(&[String], Range<usize>, Range<usize>) + 'a;

fn visit_table(table: &DeTable<'_>, path: &mut Vec<String>, f: &mut Visitor<'_>) {
    for (key, value) in table.iter() {
        path.push(key.get_ref().to_string());
        f(path, key.span(), value.span());
        visit_value(value, path, f);
        path.pop();
    }
}

fn visit_value(value: &Spanned<DeValue<'_>>, path: &mut Vec<String>, f: &mut Visitor<'_>) {
    match value.get_ref() {
        DeValue::Table(table) => visit_table(table, path, f),
        DeValue::Array(array) => {
            let Some(last) = path.pop() else { return };
            for (i, item) in array.iter().enumerate() {
                path.push(format!("{last}[{i}]"));
                f(path, item.span(), item.span());
                visit_value(item, path, f);
                path.pop();
            }
            path.push(last);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "site = \"a\"\n\n[sites.a]\ndatabase = \"x\"\nhealth = [\"h1\", \"h2\"]\n";

    #[test]
    fn lines_and_columns_are_one_based() {
        assert_eq!(line_col(DOC, 0), (1, 1));
        let at = DOC.find("database").unwrap();
        assert_eq!(line_col(DOC, at), (4, 1));
        let at = DOC.find("\"h2\"").unwrap();
        assert_eq!(line_col(DOC, at), (5, 17));
    }

    #[test]
    fn keys_are_found_from_spans() {
        let at = DOC.find("\"x\"").unwrap();
        assert_eq!(key_at(DOC, at..at + 3).as_deref(), Some("sites.a.database"));
        let at = DOC.find("\"h2\"").unwrap();
        assert_eq!(
            key_at(DOC, at..at + 4).as_deref(),
            Some("sites.a.health[1]")
        );
        let at = DOC.find("site ").unwrap();
        assert_eq!(key_at(DOC, at..at + 4).as_deref(), Some("site"));
    }

    #[test]
    fn keys_are_located_or_fall_back_to_their_table() {
        let e = ConfigError::at_key("f.toml", DOC, "sites.a.database", "bad");
        assert_eq!((e.line, e.column), (Some(4), Some(1)));
        let e = ConfigError::at_key("f.toml", DOC, "sites.a.mode", "bad");
        assert_eq!(e.line, Some(3));
        let e = ConfigError::at_key("f.toml", DOC, "failover.lease_ttl", "must be longer");
        assert_eq!(e.line, None);
        assert_eq!(
            e.to_string(),
            "invalid config f.toml, key `failover.lease_ttl`: must be longer"
        );
    }
}
