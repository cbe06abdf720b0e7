//! URL types of the configuration, validated while deserializing (so that a
//! bad URL is reported at its line) and redacted whenever they are shown.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};
use url::Url;
use warmspare_store::Location;
use warmspare_store::redact::is_secret_param;

/// Returns `url` with its password (and any `password=` query parameter)
/// replaced by `***`; the user name stays, because it helps operators.
/// Text that does not parse as a URL has everything between `://` and the
/// last `@` of its authority replaced instead.
///
/// ```
/// use warmspare_agent::config::redact_url;
/// assert_eq!(
///     redact_url("postgres://builder:hunter2@10.0.1.20:5432/builder"),
///     "postgres://builder:***@10.0.1.20:5432/builder"
/// );
/// ```
pub fn redact_url(url: &str) -> String {
    warmspare_store::redact::redact_url(url)
}

/// A PostgreSQL connection URL (`postgres://` or `postgresql://`).
///
/// `Display`, `Debug` and `Serialize` show it redacted; [`DatabaseUrl::expose`]
/// gives the full URL for connecting.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(Url);

impl DatabaseUrl {
    /// The full URL, password included. Hand it to the driver, never to
    /// output.
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }

    /// The URL with its password replaced by `***`.
    pub fn redacted(&self) -> String {
        redact_url(self.0.as_str())
    }

    /// Whether the URL carries a password.
    pub fn has_password(&self) -> bool {
        self.0.password().is_some()
    }

    /// The password as written in the URL and percent-decoded, plus any
    /// `password=` query parameter: what must never be shown.
    pub(crate) fn password_forms(&self) -> Vec<String> {
        password_forms(&self.0)
    }

    /// Sets the password (for example from an environment variable).
    pub fn set_password(&mut self, password: &str) {
        // A postgres URL always has a host here (checked by `from_str`), so
        // this cannot fail.
        let _ = self.0.set_password(Some(&encode_userinfo(password)));
    }

    /// The database name, if the URL names one.
    pub fn database(&self) -> Option<&str> {
        Some(self.0.path().trim_start_matches('/')).filter(|d| !d.is_empty())
    }
}

/// The password of `parsed` as written and percent-decoded, plus the values
/// of its secret query parameters in both spellings.
fn password_forms(parsed: &Url) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(raw) = parsed.password() {
        out.push(raw.to_owned());
        if let Ok(decoded) = percent_decode(raw) {
            out.push(decoded);
        }
    }
    for (key, value) in parsed.query_pairs() {
        if is_secret_param(&key) {
            out.push(url::form_urlencoded::byte_serialize(value.as_bytes()).collect());
            out.push(value.into_owned());
        }
    }
    out
}

fn percent_decode(text: &str) -> Result<String, ()> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3).ok_or(())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| ())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ())
}

fn encode_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl FromStr for DatabaseUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let url = Url::parse(text.trim()).map_err(|e| format!("invalid database URL: {e}"))?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(format!(
                "invalid database URL {}: the scheme must be postgres:// or postgresql://",
                redact_url(text)
            ));
        }
        let socket = url.query_pairs().any(|(k, _)| k == "host");
        if url.host_str().is_none_or(str::is_empty) && !socket {
            return Err(format!(
                "invalid database URL {}: it names no host",
                redact_url(text)
            ));
        }
        Ok(DatabaseUrl(url))
    }
}

/// An object-store URL: `s3://bucket[/prefix]` or `file:///absolute/path`.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreUrl {
    text: String,
    location: Location,
}

impl StoreUrl {
    /// The URL as written (store URLs never contain credentials).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Where the store lives.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// Whether this is an `s3://` URL.
    pub fn is_s3(&self) -> bool {
        matches!(self.location, Location::S3 { .. })
    }
}

impl FromStr for StoreUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let location = Location::parse(text).map_err(|e| e.to_string())?;
        Ok(StoreUrl {
            text: text.to_owned(),
            location,
        })
    }
}

/// An `http://` or `https://` URL without credentials: an S3 endpoint or
/// an agent's address.
#[derive(Clone, PartialEq, Eq)]
pub struct EndpointUrl {
    url: Url,
    text: String,
}

impl EndpointUrl {
    /// The URL as written (without a trailing slash added).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The parsed URL.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// Whether the URL is plain `http://`.
    pub fn is_plain_http(&self) -> bool {
        self.url.scheme() == "http"
    }
}

impl FromStr for EndpointUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let url = Url::parse(text.trim()).map_err(|e| format!("invalid URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "invalid URL {}: the scheme must be http:// or https://",
                redact_url(text)
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!(
                "invalid URL {}: credentials do not belong in it",
                redact_url(text)
            ));
        }
        Ok(EndpointUrl {
            url,
            text: text.trim().to_owned(),
        })
    }
}

/// A health-check target: `http(s)://...` (any 2xx is healthy),
/// `tcp://host:port` (a connection is healthy) or `postgres://...` /
/// `postgresql://...` (a connection and `SELECT 1`; see
/// `warmspare_failover::probe::postgres`).
///
/// `Display`, `Debug` and `Serialize` show it redacted (password and
/// secret query parameters as `***`); [`HealthTarget::expose`] gives the
/// full URL for probing.
#[derive(Clone, PartialEq, Eq)]
pub struct HealthTarget(Url);

impl HealthTarget {
    /// The URL as a string, credentials redacted.
    pub fn redacted(&self) -> String {
        redact_url(self.0.as_str())
    }

    /// The URL, credentials included.
    pub fn expose(&self) -> &Url {
        &self.0
    }

    /// Whether this is a `postgres://` or `postgresql://` target.
    pub fn is_postgres(&self) -> bool {
        matches!(self.0.scheme(), "postgres" | "postgresql")
    }

    /// The secrets in the URL (see [`DatabaseUrl::password_forms`]).
    pub(crate) fn password_forms(&self) -> Vec<String> {
        password_forms(&self.0)
    }
}

impl FromStr for HealthTarget {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let url = Url::parse(text.trim()).map_err(|e| format!("invalid health URL: {e}"))?;
        match url.scheme() {
            "http" | "https" => {}
            "tcp" if url.host_str().is_some() && url.port().is_some() => {}
            "tcp" => {
                return Err(format!(
                    "invalid health URL {}: write tcp://host:port",
                    redact_url(text)
                ));
            }
            "postgres" | "postgresql" => {
                // The same rules as a site's `database`.
                text.parse::<DatabaseUrl>()
                    .map_err(|e| e.replacen("invalid database URL", "invalid health URL", 1))?;
            }
            _ => {
                return Err(format!(
                    "invalid health URL {}: the scheme must be http://, https://, tcp:// or \
                     postgres://",
                    redact_url(text)
                ));
            }
        }
        Ok(HealthTarget(url))
    }
}

macro_rules! url_serde {
    ($ty:ty, $show:expr) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let show: fn(&$ty) -> String = $show;
                f.write_str(&show(self))
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($ty), self.to_string())
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(de::Error::custom)
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}

url_serde!(DatabaseUrl, DatabaseUrl::redacted);
url_serde!(StoreUrl, |u| u.text.clone());
url_serde!(EndpointUrl, |u| u.text.clone());
url_serde!(HealthTarget, HealthTarget::redacted);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hides_passwords_everywhere() {
        for (input, expected) in [
            (
                "postgres://builder:hunter2@10.0.1.20:5432/builder",
                "postgres://builder:***@10.0.1.20:5432/builder",
            ),
            (
                "postgres://builder@10.0.1.20/builder?password=hunter2&sslmode=require",
                "postgres://builder@10.0.1.20/builder?password=***&sslmode=require",
            ),
            (
                "https://u:hunter2@example.com/x",
                "https://u:***@example.com/x",
            ),
            ("weird://u:hunter2@[nope/x", "weird://***@[nope/x"),
            ("postgres://builder@host/db", "postgres://builder@host/db"),
        ] {
            let out = redact_url(input);
            assert_eq!(out.replace("%2A%2A%2A", "***"), expected);
            assert!(!out.contains("hunter2"));
        }
    }

    #[test]
    fn database_urls() {
        let mut db: DatabaseUrl = "postgres://builder:hunter2@db:5432/builder"
            .parse()
            .unwrap();
        assert!(db.has_password());
        assert_eq!(db.database(), Some("builder"));
        for shown in [
            db.to_string(),
            format!("{db:?}"),
            serde_json::to_string(&db).unwrap(),
        ] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains("builder:***@db:5432"), "{shown}");
        }
        assert!(db.expose().contains("hunter2"));
        db.set_password("p@ss word/");
        assert!(db.expose().contains("p%40ss%20word%2F"), "{}", db.expose());
        assert!(!db.to_string().contains("p%40"));
        "postgresql:///db?host=/var/run/postgresql"
            .parse::<DatabaseUrl>()
            .unwrap();
        for (bad, needle) in [
            ("mysql://root:hunter2@db/x", "scheme must be postgres"),
            ("postgres:///db", "no host"),
            ("postgres//u:hunter2@db/x", "invalid database URL"),
        ] {
            let err = bad.parse::<DatabaseUrl>().unwrap_err();
            assert!(err.contains(needle), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn store_and_endpoint_urls() {
        assert!("s3://bucket/prefix".parse::<StoreUrl>().unwrap().is_s3());
        assert!(!"file:///srv/repo".parse::<StoreUrl>().unwrap().is_s3());
        for bad in ["http://bucket", "file://relative", "s3://k:hunter2@bucket"] {
            let err = bad.parse::<StoreUrl>().unwrap_err();
            assert!(!err.contains("hunter2"), "{err}");
        }
        assert!(
            "http://127.0.0.1:9000"
                .parse::<EndpointUrl>()
                .unwrap()
                .is_plain_http()
        );
        assert!("ftp://x".parse::<EndpointUrl>().is_err());
        assert!(
            "http://u:hunter2@x"
                .parse::<EndpointUrl>()
                .unwrap_err()
                .contains("credentials")
        );
        "tcp://10.0.0.1:5432".parse::<HealthTarget>().unwrap();
        assert!("tcp://10.0.0.1".parse::<HealthTarget>().is_err());
        let err = "udp://u:hunter2@x:1".parse::<HealthTarget>().unwrap_err();
        assert!(
            err.contains("postgres://") && !err.contains("hunter2"),
            "{err}"
        );
    }

    #[test]
    fn postgres_health_targets_are_accepted_and_never_shown_with_secrets() {
        for text in [
            "postgres://probe:hunter2@10.0.1.20:6432/app",
            "postgresql://probe@10.0.1.20/app?password=hunter2&sslmode=require",
            "postgres:///app?host=/var/run/postgresql&user=probe&password=hunter2",
        ] {
            let target: HealthTarget = text.parse().unwrap();
            assert!(target.is_postgres());
            assert!(target.expose().as_str().contains("hunter2"));
            assert!(target.password_forms().iter().any(|p| p == "hunter2"));
            for shown in [
                target.to_string(),
                target.redacted(),
                format!("{target:?}"),
                serde_json::to_string(&target).unwrap(),
            ] {
                assert!(!shown.contains("hunter2"), "{shown}");
                assert!(shown.contains("probe"), "{shown}");
            }
        }
        assert!(
            !"http://x/health"
                .parse::<HealthTarget>()
                .unwrap()
                .is_postgres()
        );
        for (bad, needle) in [
            ("postgres:///app?password=hunter2", "no host"),
            ("postgresql://u:hunter2@[::1/app", "invalid health URL"),
        ] {
            let err = bad.parse::<HealthTarget>().unwrap_err();
            assert!(err.contains(needle), "{err}");
            assert!(err.starts_with("invalid health URL"), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }
}
