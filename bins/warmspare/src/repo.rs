//! What the snapshot commands share: opening the repository that the
//! configuration names, where PostgreSQL's client programs are, and turning
//! the libraries' errors into one scrubbed line with the right exit code.

use std::path::PathBuf;

use time::OffsetDateTime;
use warmspare_agent::Config;
use warmspare_agent::config::SiteConfig;
use warmspare_snapshot::Error;
use warmspare_store::{EncryptionKey, Repository, Store, StoreConfig};

use crate::UsageError;
use crate::output::{one_line, scrub};

/// Where `pg_dump`, `pg_dumpall` and `pg_restore` are.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct PgTools {
    /// The directory holding PostgreSQL's client programs (pg_dump,
    /// pg_restore) [default: the executable search path].
    #[arg(long, value_name = "DIR", env = "WARMSPARE_PG_BIN_DIR")]
    pub(crate) pg_bin_dir: Option<PathBuf>,
}

/// How [`open`] treats a location without a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Open {
    /// Initialise it (`Repository::init`, create-if-absent): backups.
    OrInit,
    /// Refuse it: everything that reads.
    Existing,
}

/// Opens the configured repository.
///
/// A location that holds no repository is a usage error (exit code 2) for
/// the reading commands: either `[repository] url` is wrong, or no backup
/// has been taken yet.
pub(crate) async fn open(
    config: &Config,
    mode: Open,
    secrets: &[String],
) -> anyhow::Result<Repository> {
    let store =
        Store::open(&store_config(config)?).map_err(|e| failure(&Error::Store(e), secrets))?;
    let url = store.display_url();
    let opened = match mode {
        Open::OrInit => Repository::init(store, OffsetDateTime::now_utc()).await,
        Open::Existing => Repository::open(store).await,
    };
    opened.map_err(|e| match e {
        warmspare_store::Error::NotARepository { .. } => UsageError(format!(
            "{url} holds no warmspare repository yet (no FORMAT object): \
             check [repository] url, or take a first backup with `warmspare backup db`"
        ))
        .into(),
        other => failure(&Error::Store(other), secrets),
    })
}

/// The repository's store configuration with the encryption key loaded
/// from `[repository] encryption_key_file` when one is set (the libraries
/// read no files). Commands that write or read data objects must open the
/// repository with this: without the key, `store_config()` refuses every
/// data write rather than storing plaintext.
pub(crate) fn store_config(config: &Config) -> anyhow::Result<StoreConfig> {
    let store = config.repository.store_config();
    let Some(path) = &config.repository.encryption_key_file else {
        return Ok(store);
    };
    let key = read_key_file(path)?;
    Ok(store.with_encryption_key(key))
}

/// Reads and parses a key file: 32 bytes as 64 hex digits or base64. A
/// missing or unreadable file is a usage error naming the file and the
/// setting; the key never appears in a message.
fn read_key_file(path: &std::path::Path) -> anyhow::Result<EncryptionKey> {
    let shown = path.display();
    let mut text = std::fs::read(path).map_err(|e| {
        UsageError(format!(
            "cannot read [repository] encryption_key_file {shown}: {e} \
             (create one with `openssl rand -hex 32 > {shown}`)"
        ))
    })?;
    let key = EncryptionKey::from_text(&text);
    // Best effort; the parsed key itself is zeroed on drop.
    text.fill(0);
    key.map_err(|e| UsageError(format!("[repository] encryption_key_file {shown}: {e}")).into())
}

/// The site whose database `backup db` dumps: the current site (`--site`
/// or `site = ...`), or the only site when there is just one.
pub(crate) fn current_site(config: &Config) -> anyhow::Result<(&str, &SiteConfig)> {
    if let Some(site) = config.current_site() {
        return Ok(site);
    }
    let mut sites = config.sites.iter();
    match (sites.next(), sites.next()) {
        (Some((name, site)), None) => Ok((name.as_str(), site)),
        (None, _) => Err(UsageError("the configuration has no [sites.*] table".into()).into()),
        _ => {
            let known: Vec<&str> = config.sites.keys().map(String::as_str).collect();
            Err(UsageError(format!(
                "which site is this? set `site = \"...\"` in the configuration or pass --site \
                 (one of: {})",
                known.join(", ")
            ))
            .into())
        }
    }
}

/// The configuration's secrets plus the passwords in `urls` (targets given
/// on the command line), for scrubbing what is about to be shown.
pub(crate) fn secrets<'a>(config: &Config, urls: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut out = config.secrets();
    for url in urls {
        out.extend(url_secrets(url));
    }
    out.retain(|s| !s.is_empty());
    out.sort();
    out.dedup();
    out
}

/// The password of a URL as written and percent-decoded, and the values of
/// password-like query parameters.
pub(crate) fn url_secrets(text: &str) -> Vec<String> {
    let Ok(url) = url::Url::parse(text) else {
        // Not a URL: the authority's user info, if any, is the best guess.
        return text
            .split_once("://")
            .and_then(|(_, rest)| rest.split(['/', '?', '#']).next())
            .and_then(|authority| authority.rsplit_once('@'))
            .and_then(|(userinfo, _)| userinfo.split_once(':'))
            .map(|(_, password)| vec![password.to_owned()])
            .unwrap_or_default();
    };
    let mut out = Vec::new();
    if let Some(raw) = url.password() {
        out.push(raw.to_owned());
        out.push(
            percent_encoding::percent_decode_str(raw)
                .decode_utf8_lossy()
                .into_owned(),
        );
    }
    for (key, value) in url.query_pairs() {
        if matches!(
            key.to_ascii_lowercase().as_str(),
            "password" | "pass" | "secret" | "token" | "sslpassword"
        ) {
            out.push(value.into_owned());
        }
    }
    out
}

/// A snapshot library error as one scrubbed line, marked as a usage error
/// (exit code 2) when it is about how the command was called: a snapshot
/// id that does not exist or names the wrong kind, `--target-time` for a
/// logical snapshot, an unusable URL, a repository that is not one, a
/// missing, wrong or unusable encryption key (see [`is_key_error`]).
/// Everything else (unreachable servers, failed tools, corrupt objects, a
/// manifest altered or moved behind the key's back) is an operation
/// failure (exit code 1).
pub(crate) fn failure(error: &Error, secrets: &[String]) -> anyhow::Error {
    let text = scrub(&one_line(error), secrets);
    let text = match error.root() {
        Error::Store(e) => key_error_line(e, text),
        _ => text,
    };
    if is_usage(error) {
        UsageError(text).into()
    } else {
        anyhow::Error::msg(text)
    }
}

/// Whether a repository error is about the configured encryption key, a
/// configuration problem (exit code 2): no key for an encrypted object, a
/// key that is not the one the object was encrypted with, a key configured
/// but not loaded, an unusable key file, or a record (a manifest, a
/// recovery point) authenticated by another key than the configured one.
///
/// A record that the key does not authenticate for another reason (its MAC
/// does not match: altered, or copied from another object; or it has none)
/// is not: the key is right and the object cannot be trusted, which is a
/// failed operation (exit code 1).
pub(crate) fn is_key_error(error: &warmspare_store::Error) -> bool {
    use warmspare_store::Error as StoreError;
    match error {
        StoreError::KeyMissing { .. }
        | StoreError::WrongKey { .. }
        | StoreError::KeyNotLoaded { .. }
        | StoreError::InvalidKey { .. } => true,
        StoreError::Unauthenticated { other_key, .. } => other_key.is_some(),
        _ => false,
    }
}

/// `line` (the error's one line) with "wrong key: " in front when `error`
/// is a record authenticated by another key than the configured one, as
/// the store words an encrypted object of another key.
pub(crate) fn key_error_line(error: &warmspare_store::Error, line: String) -> String {
    match error {
        warmspare_store::Error::Unauthenticated { .. } if is_key_error(error) => {
            format!("wrong key: {line}")
        }
        _ => line,
    }
}

fn is_usage(error: &Error) -> bool {
    match error.root() {
        Error::InvalidUrl { .. }
        | Error::InvalidTarget { .. }
        | Error::InvalidSnapshotId { .. }
        | Error::SnapshotNotFound { .. }
        | Error::NoSnapshots { .. }
        | Error::WrongKind { .. }
        | Error::TargetTimeUnsupported { .. }
        | Error::InvalidRecoveryTarget { .. }
        | Error::RefusedSourceOverwrite { .. } => true,
        Error::Store(e) => {
            use warmspare_store::Error as StoreError;
            is_key_error(e)
                || matches!(
                    e,
                    StoreError::InvalidConfig { .. }
                        | StoreError::UnsupportedUrl { .. }
                        | StoreError::NotARepository { .. }
                )
        }
        _ => false,
    }
}

/// `postgres://` or `postgresql://`.
pub(crate) fn is_database_url(text: &str) -> bool {
    let lower = text.trim_start().to_ascii_lowercase();
    lower.starts_with("postgres://") || lower.starts_with("postgresql://")
}

#[cfg(test)]
mod tests {
    use super::*;
    use warmspare_snapshot::RestoreStep;

    #[test]
    fn url_secrets_cover_both_forms() {
        let s = url_secrets("postgres://u:p%40ss@h/db?sslpassword=k3y");
        assert!(s.contains(&"p%40ss".to_owned()), "{s:?}");
        assert!(s.contains(&"p@ss".to_owned()), "{s:?}");
        assert!(s.contains(&"k3y".to_owned()), "{s:?}");
        assert!(url_secrets("postgres://u@h/db").is_empty());
        assert_eq!(url_secrets("not a url://u:pw@x/y"), ["pw"]);
    }

    #[test]
    fn usage_errors_are_found_inside_steps() {
        let wrapped = Error::Restore {
            step: RestoreStep::Resolve,
            database: "db".into(),
            source: Box::new(Error::SnapshotNotFound { id: "x".into() }),
        };
        let e = failure(&wrapped, &[]);
        assert_eq!(crate::exit_code_of(&e), crate::EXIT_USAGE);
        let e = failure(
            &Error::Unreachable {
                target: "u@h:5432/db".into(),
                message: "connection refused pw1".into(),
            },
            &["pw1".into()],
        );
        assert_eq!(crate::exit_code_of(&e), crate::EXIT_FAILED);
        assert_eq!(
            e.to_string(),
            "cannot reach u@h:5432/db: connection refused ***"
        );
    }

    #[test]
    fn records_by_another_key_are_key_errors() {
        use warmspare_store::{EncryptionKey, MissingMac, record};
        let key = EncryptionKey::from_bytes([1; 32]);
        let other = EncryptionKey::from_bytes([2; 32]);
        let path = "snapshots/20261122T101500Z-3f9a/MANIFEST.json";
        let body = br#"{"version":1}"#;
        let sealed = record::encode("manifest", path, body, Some(&key)).unwrap();
        let plain = record::encode("manifest", path, body, None).unwrap();
        let refused = |bytes: &[u8], path: &str, key: &EncryptionKey| {
            record::decode("manifest", path, bytes, Some(key), MissingMac::Refuse).unwrap_err()
        };

        // The store's wording for another key's MAC: a wrong key, exit 2,
        // one line naming the object.
        let by_other = refused(&sealed, path, &other);
        assert!(is_key_error(&by_other), "{by_other}");
        let e = failure(&Error::Store(by_other), &[]);
        assert_eq!(crate::exit_code_of(&e), crate::EXIT_USAGE);
        let text = e.to_string();
        assert!(
            text.starts_with(&format!(
                "wrong key: object {path} is not authenticated by this key: its MAC is by key id {}",
                key.id()
            )),
            "{text}"
        );
        assert!(text.contains(&other.id()) && !text.contains('\n'), "{text}");

        // Inside a restore step too.
        let wrapped = Error::Restore {
            step: RestoreStep::Resolve,
            database: "db".into(),
            source: Box::new(Error::Store(refused(&sealed, path, &other))),
        };
        assert_eq!(
            crate::exit_code_of(&failure(&wrapped, &[])),
            crate::EXIT_USAGE
        );

        // The right key, but the record is moved, altered or has no MAC:
        // it cannot be trusted, a failed operation (exit 1).
        let moved = "snapshots/20261122T101501Z-0000/MANIFEST.json";
        let mut altered = sealed.clone();
        let at = altered.len() - 4;
        altered[at] ^= 1;
        for e in [
            refused(&sealed, moved, &key),
            refused(&altered, path, &key),
            refused(&plain, path, &key),
        ] {
            assert!(
                matches!(e, warmspare_store::Error::Unauthenticated { .. }),
                "{e:?}"
            );
            assert!(!is_key_error(&e), "{e}");
            let e = failure(&Error::Store(e), &[]);
            assert_eq!(crate::exit_code_of(&e), crate::EXIT_FAILED, "{e}");
            assert!(!e.to_string().starts_with("wrong key"), "{e}");
            assert!(e.to_string().contains("is not authenticated by this key"));
        }
    }

    #[test]
    fn key_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("repo.key");
        let text = format!(
            "[repository]\nurl = \"file:///srv/repo\"\nencryption_key_file = \"{}\"\n",
            path.display()
        );
        let config = Config::from_toml_str(&text, "t.toml").unwrap();
        let e = store_config(&config).unwrap_err();
        assert_eq!(crate::exit_code_of(&e), crate::EXIT_USAGE);
        assert!(e.to_string().contains("repo.key"), "{e}");
        let hex = "5a".repeat(16) + &"a5".repeat(16);
        std::fs::write(&path, format!("{hex}\n")).unwrap();
        let store = store_config(&config).unwrap();
        let key = store.encryption.key().unwrap();
        assert_eq!(key.to_hex().as_str(), hex);
        std::fs::write(&path, "not a key").unwrap();
        let e = store_config(&config).unwrap_err();
        assert_eq!(crate::exit_code_of(&e), crate::EXIT_USAGE);
        assert!(!e.to_string().contains("not a key"), "{e}");
        let plain =
            Config::from_toml_str("[repository]\nurl = \"file:///srv/repo\"\n", "t.toml").unwrap();
        assert!(!store_config(&plain).unwrap().encryption.is_enabled());
    }

    #[test]
    fn database_urls() {
        assert!(is_database_url("postgres://h/db"));
        assert!(is_database_url("PostgreSQL://h/db"));
        assert!(!is_database_url("/var/lib/postgresql/data"));
        assert!(!is_database_url("s3://bucket"));
    }
}
