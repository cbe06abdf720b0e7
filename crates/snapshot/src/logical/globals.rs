//! Applying a snapshot's globals (`pg_dumpall --globals-only`) to a target
//! server, carefully.
//!
//! The file is not replayed as is: roles and tablespaces belong to the
//! whole server, and the target has its own. Each statement is classified:
//!
//! * `SET ...` (the file's session settings): run.
//! * `CREATE ROLE r`: run only if `r` does not exist on the target; then
//!   the statements about `r` (`ALTER ROLE r WITH ...` with its attributes
//!   and password hash, `ALTER ROLE r SET ...`, `COMMENT ON ROLE r`,
//!   `SECURITY LABEL ... ON ROLE r`, `GRANT ... TO r`) run too. A role that
//!   exists is never altered: not its attributes, not its password (the
//!   connecting role, which always exists, keeps its own), not its
//!   memberships.
//! * `ALTER ROLE r IN DATABASE d SET ...`: skipped (the database names of
//!   the target need not be the source's).
//! * Tablespaces (`CREATE TABLESPACE`, and statements `ON TABLESPACE`):
//!   skipped; their directories are paths on the source's machine.
//! * Anything else: skipped, and reported.
//!
//! Everything runs in one transaction: a failure of a `CREATE ROLE` or
//! `ALTER ROLE ... WITH` rolls all of it back and fails the step; the
//! optional statements (settings, comments, labels, memberships) run under
//! savepoints and are reported as skipped when they fail (a membership
//! `GRANTED BY` a role the target lacks, say). Error messages never quote
//! the statements (they may hold password hashes).

use std::collections::BTreeSet;

use serde::Serialize;
use sqlx::{Connection as _, PgConnection};

use crate::error::{Error, Result};
use crate::pg::Target;

/// The largest globals file applied (it is read into memory).
pub(crate) const MAX_GLOBALS: u64 = 64 << 20;

/// What applying the globals did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GlobalsReport {
    /// Roles created on the target.
    pub roles_created: Vec<String>,
    /// Roles of the snapshot that already existed (left as they were).
    pub roles_existing: Vec<String>,
    /// Statements not applied, described without their text (`tablespace
    /// ts`, `membership of r (failed: ...)`).
    pub skipped: Vec<String>,
}

/// What a statement of the globals file is about.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Statement {
    /// `SET ...`.
    Session,
    /// `CREATE ROLE r`.
    CreateRole(String),
    /// `ALTER ROLE r WITH ...`: attributes, password.
    RoleAttributes(String),
    /// Optional statements about role `r`: its settings, comment, label,
    /// memberships, grants on parameters.
    AboutRole(String, &'static str),
    /// Not applied: the reason, for the report.
    Skip(String),
}

/// Applies the globals file `sql` on `conn` (see the module docs).
pub(crate) async fn apply(
    conn: &mut PgConnection,
    target: &Target,
    sql: &str,
) -> Result<GlobalsReport> {
    let sql_error = |context: String| move |e| target.sql_error(context, e);
    let existing: BTreeSet<String> = sqlx::query_scalar("SELECT rolname::text FROM pg_roles")
        .fetch_all(&mut *conn)
        .await
        .map_err(sql_error("listing roles".into()))?
        .into_iter()
        .collect();
    let mut report = GlobalsReport::default();
    let mut created = BTreeSet::new();
    let mut tx = conn.begin().await.map_err(sql_error("beginning".into()))?;
    for text in split(sql) {
        let run = |text: &str| sqlx::query(sqlx::AssertSqlSafe(text.to_owned())).persistent(false);
        match classify(text) {
            Statement::Session => {
                run(text)
                    .execute(&mut *tx)
                    .await
                    .map_err(sql_error("applying the globals' session settings".into()))?;
            }
            Statement::CreateRole(role) if existing.contains(&role) => {
                report.roles_existing.push(role);
            }
            Statement::CreateRole(role) => {
                run(text)
                    .execute(&mut *tx)
                    .await
                    .map_err(sql_error(format!("creating role {role}")))?;
                created.insert(role.clone());
                report.roles_created.push(role);
            }
            Statement::RoleAttributes(role) => {
                if created.contains(&role) {
                    run(text)
                        .execute(&mut *tx)
                        .await
                        .map_err(sql_error(format!("setting the attributes of role {role}")))?;
                }
            }
            Statement::AboutRole(role, what) => {
                if !created.contains(&role) {
                    continue;
                }
                sqlx::query("SAVEPOINT warmspare_globals")
                    .execute(&mut *tx)
                    .await
                    .map_err(sql_error("setting a savepoint".into()))?;
                let end = match run(text).execute(&mut *tx).await {
                    Ok(_) => "RELEASE SAVEPOINT warmspare_globals",
                    Err(e) => {
                        let message = match target.sql_error(String::new(), e) {
                            Error::Sql { message, .. } => message,
                            other => other.to_string(),
                        };
                        report
                            .skipped
                            .push(format!("{what} of role {role} (failed: {message})"));
                        "ROLLBACK TO SAVEPOINT warmspare_globals"
                    }
                };
                sqlx::query(end)
                    .execute(&mut *tx)
                    .await
                    .map_err(sql_error("ending a savepoint".into()))?;
            }
            Statement::Skip(reason) => report.skipped.push(reason),
        }
    }
    tx.commit()
        .await
        .map_err(sql_error("committing the globals".into()))?;
    report.roles_existing.sort();
    report.roles_existing.dedup();
    Ok(report)
}

/// Reads the globals file `name` of a snapshot (at most [`MAX_GLOBALS`]
/// bytes, verified) as text.
pub(crate) async fn read(
    repo: &warmspare_store::Repository,
    manifest: &warmspare_store::Manifest,
    name: &str,
) -> Result<String> {
    let object = warmspare_store::layout::snapshot_file(&manifest.id, name)?.to_string();
    let bad = |reason: String| Error::BadMeta {
        id: manifest.id.clone(),
        reason: format!("{object}: {reason}"),
    };
    let size = manifest
        .files
        .get(name)
        .map(|info| info.size)
        .ok_or_else(|| bad("not listed in the manifest".into()))?;
    if size > MAX_GLOBALS {
        return Err(bad(format!(
            "the globals are larger than {} MiB",
            MAX_GLOBALS >> 20
        )));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or_default());
    repo.read_manifest_file(manifest, name, &mut bytes, None)
        .await?;
    String::from_utf8(bytes).map_err(|_| bad("the globals are not UTF-8".into()))
}

/// Splits SQL text into statements: at semicolons outside quotes,
/// dropping `--` comments and psql meta-command lines (`\restrict`).
fn split(sql: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let bytes = sql.as_bytes();
    let mut start = 0;
    let mut i = 0;
    // At the start of a line, outside any statement: meta-commands and
    // comments are dropped there.
    while i < bytes.len() {
        match bytes[i] {
            b'\'' | b'"' => {
                let quote = bytes[i];
                i += 1;
                while i < bytes.len() {
                    if bytes[i] == quote {
                        if bytes.get(i + 1) == Some(&quote) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                let end = sql[i..].find('\n').map_or(bytes.len(), |n| i + n);
                if sql[start..i].trim().is_empty() {
                    start = end;
                }
                i = end;
            }
            b'\\' if sql[start..i].trim().is_empty() => {
                let end = sql[i..].find('\n').map_or(bytes.len(), |n| i + n);
                start = end;
                i = end;
            }
            b';' => {
                let statement = sql[start..i].trim();
                if !statement.is_empty() {
                    out.push(statement);
                }
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    let rest = sql[start.min(sql.len())..].trim();
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}

/// Strips `prefix` (ASCII, case-insensitive) and the spaces after it.
fn keyword<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| text[prefix.len()..].trim_start())
}

/// Reads one identifier (`name`, or `"Quoted ""Name"""`), returning it
/// (bare names folded to lower case, as PostgreSQL does) and the rest.
fn ident(text: &str) -> Option<(String, &str)> {
    let text = text.trim_start();
    if let Some(rest) = text.strip_prefix('"') {
        let mut name = String::new();
        let mut chars = rest.char_indices();
        while let Some((i, c)) = chars.next() {
            if c == '"' {
                if rest[i + 1..].starts_with('"') {
                    name.push('"');
                    chars.next();
                    continue;
                }
                return Some((name, &rest[i + 1..]));
            }
            name.push(c);
        }
        return None;
    }
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
        .unwrap_or(text.len());
    (end > 0).then(|| (text[..end].to_lowercase(), &text[end..]))
}

/// Finds ` TO ` outside quotes (ASCII, case-insensitive): where the
/// grantee of a `GRANT` starts.
fn after_to(text: &str) -> Option<&str> {
    let bytes = text.as_bytes();
    let mut quote = None;
    for i in 0..bytes.len() {
        match (quote, bytes[i]) {
            (None, q @ (b'\'' | b'"')) => quote = Some(q),
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_ascii_whitespace() => {
                if let Some(rest) = keyword(&text[i + 1..], "TO ") {
                    return Some(rest);
                }
            }
            _ => {}
        }
    }
    None
}

fn classify(text: &str) -> Statement {
    let words: String = text
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    if keyword(text, "SET ").is_some() {
        return Statement::Session;
    }
    if let Some(rest) = keyword(text, "CREATE ROLE ") {
        return match ident(rest) {
            Some((role, _)) => Statement::CreateRole(role),
            None => Statement::Skip(format!("{words} ... (not understood)")),
        };
    }
    if let Some(rest) = keyword(text, "ALTER ROLE ") {
        let Some((role, after)) = ident(rest) else {
            return Statement::Skip(format!("{words} ... (not understood)"));
        };
        let after = after.trim_start();
        if keyword(after, "WITH ").is_some() {
            return Statement::RoleAttributes(role);
        }
        if keyword(after, "IN DATABASE ").is_some() {
            return Statement::Skip(format!(
                "per-database settings of role {role} (ALTER ROLE ... IN DATABASE)"
            ));
        }
        return Statement::AboutRole(role, "settings");
    }
    if text.to_ascii_uppercase().contains("TABLESPACE ") {
        let name = keyword(text, "CREATE TABLESPACE ")
            .and_then(ident)
            .map_or_else(|| words.clone(), |(n, _)| format!("tablespace {n}"));
        return Statement::Skip(format!("{name} (tablespaces are not restored)"));
    }
    if let Some(rest) = keyword(text, "COMMENT ON ROLE ")
        && let Some((role, _)) = ident(rest)
    {
        return Statement::AboutRole(role, "comment");
    }
    if let Some(rest) = keyword(text, "SECURITY LABEL ") {
        let upper = rest.to_ascii_uppercase();
        if let Some(at) = upper.find(" ON ROLE ")
            && let Some((role, _)) = ident(&rest[at + " ON ROLE ".len()..])
        {
            return Statement::AboutRole(role, "security label");
        }
    }
    if keyword(text, "GRANT ").is_some()
        && let Some((grantee, _)) = after_to(text).and_then(ident)
    {
        return Statement::AboutRole(grantee, "membership or grant");
    }
    Statement::Skip(format!("{words} ... (not a statement about roles)"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"\restrict abc123
--
-- PostgreSQL database cluster dump
--

SET default_transaction_read_only = off;

SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;

--
-- Roles
--

CREATE ROLE app;
ALTER ROLE app WITH NOSUPERUSER INHERIT LOGIN PASSWORD 'SCRAM-SHA-256$4096:a;b';
CREATE ROLE "Odd ""Role""";
ALTER ROLE "Odd ""Role""" WITH NOLOGIN;
CREATE ROLE postgres;
ALTER ROLE postgres WITH SUPERUSER PASSWORD 'md5abc';
COMMENT ON ROLE app IS 'the app; it''s -- fine';
ALTER ROLE app SET search_path TO 'shop', 'public';
ALTER ROLE app IN DATABASE shop SET work_mem TO '8MB';

--
-- Role memberships
--

GRANT "Odd ""Role""" TO app WITH INHERIT TRUE GRANTED BY postgres;

--
-- Tablespaces
--

CREATE TABLESPACE fast OWNER postgres LOCATION '/mnt/fast';
GRANT CREATE ON TABLESPACE fast TO app;

\unrestrict abc123
"#;

    #[test]
    fn statements_are_split_outside_quotes_without_comments_or_meta_commands() {
        let statements = split(SAMPLE);
        assert_eq!(statements.len(), 15, "{statements:#?}");
        assert_eq!(statements[0], "SET default_transaction_read_only = off");
        assert!(statements[4].ends_with("PASSWORD 'SCRAM-SHA-256$4096:a;b'"));
        assert_eq!(
            statements[9],
            "COMMENT ON ROLE app IS 'the app; it''s -- fine'"
        );
        assert!(!statements.iter().any(|s| s.contains("restrict")));
    }

    #[test]
    fn statements_are_classified() {
        let kinds: Vec<Statement> = split(SAMPLE).into_iter().map(classify).collect();
        let odd = "Odd \"Role\"".to_owned();
        assert_eq!(
            kinds,
            vec![
                Statement::Session,
                Statement::Session,
                Statement::Session,
                Statement::CreateRole("app".into()),
                Statement::RoleAttributes("app".into()),
                Statement::CreateRole(odd.clone()),
                Statement::RoleAttributes(odd.clone()),
                Statement::CreateRole("postgres".into()),
                Statement::RoleAttributes("postgres".into()),
                Statement::AboutRole("app".into(), "comment"),
                Statement::AboutRole("app".into(), "settings"),
                Statement::Skip(
                    "per-database settings of role app (ALTER ROLE ... IN DATABASE)".into()
                ),
                Statement::AboutRole("app".into(), "membership or grant"),
                Statement::Skip("tablespace fast (tablespaces are not restored)".into()),
                Statement::Skip("GRANT CREATE ON (tablespaces are not restored)".into()),
            ]
        );
        assert_eq!(
            classify("DO $$ BEGIN END $$"),
            Statement::Skip("DO $$ BEGIN ... (not a statement about roles)".into())
        );
    }
}
