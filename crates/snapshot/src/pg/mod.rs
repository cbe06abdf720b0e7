//! Talking to PostgreSQL: targets parsed from URLs, connections, error
//! classification, and the catalog queries the snapshotter needs.
//!
//! A [`Target`] is parsed once from a libpq-style URL and used two ways:
//! sqlx connects with it, and the client programs get the same URL *without
//! its password* on their command line, the password going into the
//! child's `PGPASSWORD` so that it never shows in `ps`.

mod tables;

use std::time::Duration;

use percent_encoding::percent_decode_str;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions as _, Connection as _, PgConnection};
use tokio::process::Command;

use crate::error::{Error, Result};

pub use tables::TableRows;
pub(crate) use tables::{count_rows, user_tables};

/// The `application_name` of every connection warmspare makes.
pub(crate) const APPLICATION_NAME: &str = "warmspare";

/// A database to connect to, from a `postgres://` URL.
#[derive(Clone)]
pub(crate) struct Target {
    options: PgConnectOptions,
    /// The URL without password, for client programs.
    url: url::Url,
    /// The decoded password, if the URL has one.
    password: Option<String>,
    /// Text never to repeat: the password as written and decoded.
    secrets: Vec<String>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Target").field(&self.describe()).finish()
    }
}

impl Target {
    /// Parses a `postgres://` or `postgresql://` URL.
    pub(crate) fn parse(text: &str) -> Result<Self> {
        let mut url = url::Url::parse(text).map_err(|e| Error::InvalidUrl {
            reason: format!("not a URL: {e}"),
        })?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(Error::InvalidUrl {
                reason: format!(
                    "scheme {:?} is not postgres:// or postgresql://",
                    url.scheme()
                ),
            });
        }
        let mut secrets = Vec::new();
        let password = match url.password().filter(|p| !p.is_empty()) {
            Some(raw) => {
                let decoded = percent_decode_str(raw)
                    .decode_utf8()
                    .map_err(|_| Error::InvalidUrl {
                        reason: "the password is not valid UTF-8 once percent-decoded".into(),
                    })?
                    .into_owned();
                secrets.push(raw.to_owned());
                if decoded != raw {
                    secrets.push(decoded.clone());
                }
                Some(decoded)
            }
            None => None,
        };
        let scrub_all = |text: String| scrub(text, &secrets);
        let options: PgConnectOptions =
            text.parse().map_err(|e: sqlx::Error| Error::InvalidUrl {
                reason: scrub_all(cause(&e)),
            })?;
        let options = options
            .application_name(APPLICATION_NAME)
            .disable_statement_logging();
        let _ = url.set_password(None);
        Ok(Self {
            options,
            url,
            password,
            secrets,
        })
    }

    /// The database named in the URL, if any.
    pub(crate) fn database(&self) -> Option<&str> {
        self.options.get_database()
    }

    /// The same server, another database.
    pub(crate) fn with_database(&self, database: &str) -> Self {
        let mut other = self.clone();
        other.options = other.options.database(database);
        if let Ok(mut segments) = other.url.path_segments_mut() {
            segments.clear().push(database);
        }
        other
    }

    /// `user@host:port/database`: how errors name the target. Never holds
    /// the password.
    pub(crate) fn describe(&self) -> String {
        let o = &self.options;
        let host = match o.get_socket() {
            Some(dir) => dir.display().to_string(),
            None => o.get_host().to_owned(),
        };
        let database = o.get_database().unwrap_or(o.get_username());
        format!(
            "{}@{}:{}/{}",
            o.get_username(),
            host,
            o.get_port(),
            database
        )
    }

    /// The URL for client programs: the original one without its password.
    pub(crate) fn tool_url(&self) -> String {
        self.url.to_string()
    }

    /// Removes the password from text that came from elsewhere.
    pub(crate) fn scrub(&self, text: String) -> String {
        scrub(text, &self.secrets)
    }

    /// Passes the connection's secrets and settings to a client program
    /// through its environment (never its command line).
    pub(crate) fn configure_child(&self, command: &mut Command, connect_timeout: Duration) {
        if let Some(password) = &self.password {
            command.env("PGPASSWORD", password);
        }
        command.env("PGAPPNAME", APPLICATION_NAME);
        command.env(
            "PGCONNECT_TIMEOUT",
            connect_timeout.as_secs().max(2).to_string(),
        );
    }

    /// Connects within `timeout`.
    pub(crate) async fn connect(&self, timeout: Duration) -> Result<PgConnection> {
        match tokio::time::timeout(timeout, PgConnection::connect_with(&self.options)).await {
            Err(_) => Err(Error::Unreachable {
                target: self.describe(),
                message: format!(
                    "no connection within {}",
                    humantime::format_duration(timeout)
                ),
            }),
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(self.connect_error(&e)),
        }
    }

    fn connect_error(&self, error: &sqlx::Error) -> Error {
        let target = self.describe();
        match error {
            sqlx::Error::Database(db) => {
                let message = self.scrub(db.message().to_owned());
                match db.code().as_deref() {
                    Some("28P01" | "28000") => Error::AuthenticationFailed { target, message },
                    // The server is starting up or shutting down, or full.
                    Some(code) if code.starts_with("57") || code.starts_with("53") => {
                        Error::Unreachable {
                            target,
                            message: format!("{message} (SQLSTATE {code})"),
                        }
                    }
                    code => Error::Sql {
                        target,
                        context: "connecting".into(),
                        message,
                        code: code.map(str::to_owned),
                    },
                }
            }
            sqlx::Error::Io(io) => Error::Unreachable {
                target,
                message: self.scrub(io.to_string()),
            },
            sqlx::Error::Tls(_) => Error::Unreachable {
                target,
                message: self.scrub(format!("TLS: {}", cause(error))),
            },
            sqlx::Error::Configuration(_) => Error::InvalidUrl {
                reason: self.scrub(format!("{target}: {}", cause(error))),
            },
            other => {
                let message = self.scrub(cause(other));
                // A server that wants a password when none was given says so
                // through a protocol error rather than a SQLSTATE.
                if message.contains("password") || message.contains("authentication") {
                    Error::AuthenticationFailed { target, message }
                } else {
                    Error::Unreachable { target, message }
                }
            }
        }
    }

    /// Turns a failed statement into an error naming the target.
    pub(crate) fn sql_error(&self, context: impl Into<String>, error: sqlx::Error) -> Error {
        let target = self.describe();
        match &error {
            sqlx::Error::Database(db) => Error::Sql {
                target,
                context: context.into(),
                message: self.scrub(db.message().to_owned()),
                code: db.code().map(|c| c.into_owned()),
            },
            sqlx::Error::Io(io) => Error::Unreachable {
                target,
                message: self.scrub(format!("{}: {io}", context.into())),
            },
            other => Error::Sql {
                target,
                context: context.into(),
                message: self.scrub(cause(other)),
                code: None,
            },
        }
    }
}

/// The SQLSTATE of a failed statement, if the server sent one.
pub(crate) fn sqlstate(error: &Error) -> Option<&str> {
    match error {
        Error::Sql { code, .. } => code.as_deref(),
        _ => None,
    }
}

/// What the server says about itself and the database.
#[derive(Debug, Clone)]
pub(crate) struct ServerInfo {
    pub(crate) server_version: String,
    pub(crate) server_version_num: u32,
    pub(crate) system_identifier: Option<u64>,
    pub(crate) database: String,
    pub(crate) encoding: String,
    pub(crate) lc_collate: String,
    pub(crate) lc_ctype: String,
}

impl ServerInfo {
    /// Reads the server's identity and the current database's locale.
    /// `in_transaction`: the connection is inside a transaction block, which
    /// an error must not abort.
    pub(crate) async fn read(
        conn: &mut PgConnection,
        in_transaction: bool,
    ) -> Result<Self, sqlx::Error> {
        let (server_version, num, database, encoding, lc_collate, lc_ctype): (
            String,
            i32,
            String,
            String,
            String,
            String,
        ) = sqlx::query_as(
            "SELECT current_setting('server_version'), \
                    current_setting('server_version_num')::int4, \
                    d.datname::text, pg_encoding_to_char(d.encoding)::text, \
                    d.datcollate::text, d.datctype::text \
             FROM pg_database d WHERE d.datname = current_database()",
        )
        .fetch_one(&mut *conn)
        .await?;
        // The control file may be closed to unprivileged roles; then the
        // identifier is unknown. Inside a transaction, a savepoint keeps the
        // transaction usable after such an error.
        if in_transaction {
            sqlx::query("SAVEPOINT warmspare_identity")
                .execute(&mut *conn)
                .await?;
        }
        let system_identifier =
            sqlx::query_scalar::<_, i64>("SELECT system_identifier FROM pg_control_system()")
                .fetch_one(&mut *conn)
                .await
                .ok()
                .map(|id| id as u64);
        if in_transaction {
            let end = match system_identifier {
                Some(_) => "RELEASE SAVEPOINT warmspare_identity",
                None => "ROLLBACK TO SAVEPOINT warmspare_identity",
            };
            sqlx::query(end).execute(&mut *conn).await?;
        }
        Ok(Self {
            server_version,
            server_version_num: u32::try_from(num).unwrap_or_default(),
            system_identifier,
            database,
            encoding,
            lc_collate,
            lc_ctype,
        })
    }

    /// The major version as `(major, minor-for-pre-10)`: `(15, 0)` for 15.4,
    /// `(9, 6)` for 9.6.24; comparable with [`crate::tools::ToolVersion`].
    pub(crate) fn major(&self) -> (u32, u32) {
        major_of_num(self.server_version_num)
    }
}

/// `(major, pre-10 minor)` of a `server_version_num`.
pub(crate) fn major_of_num(num: u32) -> (u32, u32) {
    if num >= 100_000 {
        (num / 10_000, 0)
    } else {
        (num / 10_000, (num / 100) % 100)
    }
}

/// Quotes an identifier (`quote_ident`).
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a string literal (`quote_literal`, standard-conforming strings).
pub(crate) fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

pub(crate) use warmspare_store::redact::error_chain as cause;

fn scrub(mut text: String, secrets: &[String]) -> String {
    for secret in secrets {
        if !secret.is_empty() && text.contains(secret.as_str()) {
            text = text.replace(secret.as_str(), "********");
        }
    }
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_password_but_keep_the_rest() {
        let t = Target::parse("postgres://app:s%40cret@db.example:6543/builder?sslmode=require")
            .unwrap();
        assert_eq!(t.describe(), "app@db.example:6543/builder");
        assert_eq!(
            t.tool_url(),
            "postgres://app@db.example:6543/builder?sslmode=require"
        );
        assert_eq!(t.password.as_deref(), Some("s@cret"));
        assert_eq!(
            t.scrub("bad s@cret and s%40cret".into()),
            "bad ******** and ********"
        );
        let s = t.with_database("builder__warmspare staging");
        assert_eq!(s.database(), Some("builder__warmspare staging"));
        assert_eq!(
            s.tool_url(),
            "postgres://app@db.example:6543/builder__warmspare%20staging?sslmode=require"
        );
        assert!(!format!("{t:?}").contains("cret"));
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_them() {
        let e = Target::parse("mysql://u:pw@h/d").unwrap_err();
        assert!(matches!(e, Error::InvalidUrl { .. }), "{e}");
        assert!(!e.to_string().contains("pw"));
        assert!(Target::parse("not a url").is_err());
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident(r#"we"ird"#), r#""we""ird""#);
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(major_of_num(150004), (15, 0));
        assert_eq!(major_of_num(90624), (9, 6));
    }
}
