//! Store configuration: where the repository is and how to reach it.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::codec::Compression;
use crate::crypto::{Encryption, EncryptionKey};
use crate::error::{Error, Result};

/// Configuration of one object store (the `[repository]` table of the
/// warmspare config file, or an artifact store).
///
/// Durations are humantime strings (`"10s"`, `"2m"`); `timeout = "none"`
/// disables the whole-request timeout. Unknown keys are an error.
///
/// ```
/// use warmspare_store::StoreConfig;
/// let config: StoreConfig = serde_json::from_str(r#"{
///     "url": "s3://dr-backups/builder",
///     "endpoint": "http://127.0.0.1:9000",
///     "allow_http": true,
///     "connect_timeout": "3s"
/// }"#).unwrap();
/// assert!(config.effective_path_style());
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `file:///absolute/path` or `s3://bucket[/prefix]`.
    pub url: String,
    /// S3-compatible endpoint such as `http://127.0.0.1:9000` (MinIO); omit
    /// for AWS.
    pub endpoint: Option<String>,
    /// S3 region; `us-east-1` when unset.
    pub region: Option<String>,
    /// Allow plain HTTP to the endpoint.
    pub allow_http: bool,
    /// Path-style requests (`endpoint/bucket/key`) instead of virtual-hosted
    /// style (`bucket.endpoint/key`). Unset means: path style when an
    /// endpoint is given (what MinIO and most S3-compatible servers expect),
    /// virtual-hosted style on AWS.
    pub path_style: Option<bool>,
    /// S3 access key id.
    pub access_key_id: Option<String>,
    /// S3 secret access key.
    pub secret_access_key: Option<Secret>,
    /// S3 session token (temporary credentials).
    pub session_token: Option<Secret>,
    /// Limit on a whole request, body included. Unset (the default) means no
    /// limit: a multi-GiB download is one request. Stalls are caught by
    /// `read_timeout` instead.
    #[serde(with = "crate::serde_util::opt_duration")]
    pub timeout: Option<Duration>,
    /// Limit on establishing a connection.
    #[serde(with = "crate::serde_util::duration")]
    pub connect_timeout: Duration,
    /// Limit on one read from the connection (an idle/stall timeout).
    #[serde(with = "crate::serde_util::duration")]
    pub read_timeout: Duration,
    /// How often a failed request is retried (transport errors, 5xx,
    /// throttling) before the error is reported.
    pub max_retries: usize,
    /// Retries stop once this much time has passed since the first attempt.
    /// Keep it short where latency matters (lease renewal).
    #[serde(with = "crate::serde_util::duration")]
    pub retry_timeout: Duration,
    /// Compression of data objects written through the codec.
    pub compression: Compression,
    /// zstd level, 1 (fast) to 19 (small).
    pub compression_level: i32,
    /// Encryption at rest of data objects. Never read from or written to
    /// a serialised configuration: the program reads the key file and sets
    /// it with [`StoreConfig::with_encryption_key`] (or marks it
    /// [`Encryption::KeyNotLoaded`], which refuses every data write).
    #[serde(skip)]
    pub encryption: Encryption,
    /// With encryption configured, still read WAL and history objects and
    /// inventories that are not encrypted: what a repository holds from
    /// before encryption was turned on. Off by default: these objects
    /// describe their own encoding (no authenticated manifest names them),
    /// so anyone who can write to the bucket could otherwise put a
    /// plaintext object of their choosing in place of an encrypted one;
    /// without this, reading one is [`Error::Unencrypted`]. Objects that an
    /// authenticated manifest names are read either way (the manifest
    /// records how each is stored). Without encryption it has no effect.
    pub allow_unencrypted: bool,
}

/// Default connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default read (stall) timeout.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Default number of retries of a failed request.
pub const DEFAULT_MAX_RETRIES: usize = 10;
/// Default limit on the time spent retrying one request.
pub const DEFAULT_RETRY_TIMEOUT: Duration = Duration::from_secs(180);
/// Default zstd level.
pub const DEFAULT_COMPRESSION_LEVEL: i32 = 3;

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            endpoint: None,
            region: None,
            allow_http: false,
            path_style: None,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            timeout: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            read_timeout: DEFAULT_READ_TIMEOUT,
            max_retries: DEFAULT_MAX_RETRIES,
            retry_timeout: DEFAULT_RETRY_TIMEOUT,
            compression: Compression::Zstd,
            compression_level: DEFAULT_COMPRESSION_LEVEL,
            encryption: Encryption::Off,
            allow_unencrypted: false,
        }
    }
}

impl StoreConfig {
    /// A configuration for `url` with every other setting at its default.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// Sets the S3-compatible endpoint.
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// Sets the region.
    pub fn with_region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// Allows or forbids plain HTTP.
    pub fn with_allow_http(mut self, allow: bool) -> Self {
        self.allow_http = allow;
        self
    }

    /// Forces path-style (`true`) or virtual-hosted-style (`false`) requests.
    pub fn with_path_style(mut self, path_style: bool) -> Self {
        self.path_style = Some(path_style);
        self
    }

    /// Sets static credentials.
    pub fn with_credentials(
        mut self,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> Self {
        self.access_key_id = Some(access_key_id.into());
        self.secret_access_key = Some(Secret::new(secret_access_key));
        self
    }

    /// Sets the session token of temporary credentials.
    pub fn with_session_token(mut self, token: impl Into<String>) -> Self {
        self.session_token = Some(Secret::new(token));
        self
    }

    /// Sets (or with `None` removes) the whole-request timeout.
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the connect timeout.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the read (stall) timeout.
    pub fn with_read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// Sets the retry policy of failed requests.
    pub fn with_retries(mut self, max_retries: usize, retry_timeout: Duration) -> Self {
        self.max_retries = max_retries;
        self.retry_timeout = retry_timeout;
        self
    }

    /// Sets the compression of data objects.
    pub fn with_compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// Encrypts data objects with `key` (see [`crate::crypto`]).
    pub fn with_encryption_key(mut self, key: EncryptionKey) -> Self {
        self.encryption = Encryption::Key(key);
        self
    }

    /// Reads (`true`) or refuses (`false`, the default) unencrypted WAL
    /// objects and inventories in a repository with encryption (see
    /// [`StoreConfig::allow_unencrypted`]).
    pub fn with_allow_unencrypted(mut self, allow: bool) -> Self {
        self.allow_unencrypted = allow;
        self
    }

    /// Sets the zstd level.
    pub fn with_compression_level(mut self, level: i32) -> Self {
        self.compression_level = level;
        self
    }

    /// Whether requests will be path style (see [`StoreConfig::path_style`]).
    pub fn effective_path_style(&self) -> bool {
        self.path_style.unwrap_or(self.endpoint.is_some())
    }

    /// Fills settings that are still unset from `AWS_*` variables given by
    /// the caller (the library never reads the environment itself):
    ///
    /// * `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
    ///   only when the config names neither key nor secret (credentials are
    ///   never mixed from two sources);
    /// * `AWS_REGION`, else `AWS_DEFAULT_REGION`;
    /// * `AWS_ENDPOINT_URL_S3`, else `AWS_ENDPOINT_URL`.
    ///
    /// Empty values are ignored. A binary calls
    /// `config.apply_env(std::env::vars())`.
    pub fn apply_env<K, V>(&mut self, vars: impl IntoIterator<Item = (K, V)>)
    where
        K: AsRef<str>,
        V: Into<String>,
    {
        let mut key_id = None;
        let mut secret = None;
        let mut token = None;
        let mut region = None;
        let mut default_region = None;
        let mut endpoint_s3 = None;
        let mut endpoint = None;
        for (name, value) in vars {
            let value: String = value.into();
            if value.is_empty() {
                continue;
            }
            match name.as_ref() {
                "AWS_ACCESS_KEY_ID" => key_id = Some(value),
                "AWS_SECRET_ACCESS_KEY" => secret = Some(value),
                "AWS_SESSION_TOKEN" => token = Some(value),
                "AWS_REGION" => region = Some(value),
                "AWS_DEFAULT_REGION" => default_region = Some(value),
                "AWS_ENDPOINT_URL_S3" => endpoint_s3 = Some(value),
                "AWS_ENDPOINT_URL" => endpoint = Some(value),
                _ => {}
            }
        }
        if self.access_key_id.is_none() && self.secret_access_key.is_none() {
            self.access_key_id = key_id;
            self.secret_access_key = secret.map(Secret::new);
            if self.session_token.is_none() {
                self.session_token = token.map(Secret::new);
            }
        }
        if self.region.is_none() {
            self.region = region.or(default_region);
        }
        if self.endpoint.is_none() {
            self.endpoint = endpoint_s3.or(endpoint);
        }
    }

    /// Checks the settings that can be checked without contacting anything.
    pub fn validate(&self) -> Result<()> {
        let location = Location::parse(&self.url)?;
        if let Some(endpoint) = &self.endpoint {
            let parsed = url::Url::parse(endpoint).map_err(|e| Error::InvalidConfig {
                reason: format!("endpoint {}: {e}", redact_url(endpoint)),
            })?;
            match parsed.scheme() {
                "https" => {}
                "http" if self.allow_http => {}
                "http" => {
                    return Err(Error::InvalidConfig {
                        reason: format!(
                            "endpoint {} is plain http; set allow_http = true to permit it",
                            redact_url(endpoint)
                        ),
                    });
                }
                other => {
                    return Err(Error::InvalidConfig {
                        reason: format!("endpoint scheme {other:?} is not http or https"),
                    });
                }
            }
            if !parsed.username().is_empty() || parsed.password().is_some() {
                return Err(Error::InvalidConfig {
                    reason: format!(
                        "endpoint {} contains credentials; use access_key_id / secret_access_key",
                        redact_url(endpoint)
                    ),
                });
            }
        }
        if matches!(location, Location::S3 { .. })
            && self.access_key_id.is_some() != self.secret_access_key.is_some()
        {
            return Err(Error::InvalidConfig {
                reason: "access_key_id and secret_access_key must be given together".into(),
            });
        }
        if !(1..=19).contains(&self.compression_level) {
            return Err(Error::InvalidConfig {
                reason: format!(
                    "compression_level {} is outside 1..=19",
                    self.compression_level
                ),
            });
        }
        if self.connect_timeout.is_zero() || self.read_timeout.is_zero() {
            return Err(Error::InvalidConfig {
                reason: "connect_timeout and read_timeout must be greater than zero".into(),
            });
        }
        Ok(())
    }
}

/// A secret string (password, key). `Debug`, `Display` and `Serialize`
/// print `<redacted>`; the value is only reachable through
/// [`Secret::expose`].
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value. Call only where it is handed to the thing that
    /// needs it, never to print it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Serialised configs end up in `--json` output and logs; the secret
        // never does.
        s.serialize_str("<redacted>")
    }
}

/// Where a store lives, parsed from its URL.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Location {
    /// A directory on a local (or mounted) filesystem.
    File {
        /// The absolute directory path.
        path: std::path::PathBuf,
    },
    /// An S3 bucket, optionally under a key prefix.
    S3 {
        /// The bucket name.
        bucket: String,
        /// The key prefix (no leading or trailing slash), if any.
        prefix: Option<object_store::path::Path>,
    },
}

impl Location {
    /// Parses `file:///abs/path` or `s3://bucket[/prefix]`. Errors name the
    /// URL with any userinfo redacted.
    pub fn parse(url: &str) -> Result<Self> {
        let unsupported = |reason: &str| Error::UnsupportedUrl {
            url: redact_url(url),
            reason: reason.to_string(),
        };
        if url.trim().is_empty() {
            return Err(Error::InvalidConfig {
                reason: "the store url is empty".into(),
            });
        }
        let parsed = url::Url::parse(url).map_err(|e| unsupported(&e.to_string()))?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(unsupported(
                "credentials do not belong in the url; use access_key_id / secret_access_key",
            ));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(unsupported("query strings and fragments are not supported"));
        }
        match parsed.scheme() {
            "file" => {
                if parsed
                    .host_str()
                    .is_some_and(|h| !h.is_empty() && h != "localhost")
                {
                    return Err(unsupported(
                        "file urls must be absolute with an empty host: file:///path",
                    ));
                }
                let path = parsed
                    .to_file_path()
                    .map_err(|()| unsupported("not an absolute file path"))?;
                Ok(Self::File { path })
            }
            "s3" | "s3a" => {
                let bucket = parsed
                    .host_str()
                    .filter(|b| !b.is_empty())
                    .ok_or_else(|| unsupported("missing bucket name: s3://bucket/prefix"))?
                    .to_string();
                let prefix = object_store::path::Path::from_url_path(parsed.path())
                    .map_err(|e| unsupported(&format!("invalid prefix: {e}")))?;
                let prefix = (!prefix.as_ref().is_empty()).then_some(prefix);
                Ok(Self::S3 { bucket, prefix })
            }
            _ => Err(unsupported("supported schemes are file:// and s3://")),
        }
    }

    /// The URL of this location, without credentials.
    pub fn display_url(&self) -> String {
        match self {
            Self::File { path } => match url::Url::from_file_path(path) {
                Ok(url) => url.to_string(),
                Err(()) => format!("file://{}", path.display()),
            },
            Self::S3 {
                bucket,
                prefix: Some(prefix),
            } => format!("s3://{bucket}/{prefix}"),
            Self::S3 {
                bucket,
                prefix: None,
            } => format!("s3://{bucket}"),
        }
    }
}

pub(crate) use crate::redact::redact_authority as redact_url;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fit_large_objects() {
        let c = StoreConfig::default();
        assert_eq!(c.timeout, None);
        assert_eq!(c.connect_timeout, Duration::from_secs(10));
        assert_eq!(c.read_timeout, Duration::from_secs(60));
        assert_eq!(c.compression, Compression::Zstd);
        assert_eq!(c.compression_level, 3);
    }

    #[test]
    fn humantime_and_unknown_keys() {
        let c: StoreConfig = serde_json::from_str(
            r#"{"url":"file:///tmp/x","timeout":"5m","read_timeout":"1m 30s","compression":"none"}"#,
        )
        .unwrap();
        assert_eq!(c.timeout, Some(Duration::from_secs(300)));
        assert_eq!(c.read_timeout, Duration::from_secs(90));
        assert_eq!(c.compression, Compression::None);

        let err = serde_json::from_str::<StoreConfig>(r#"{"url":"file:///x","bogus":1}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus"), "{err}");

        let err = serde_json::from_str::<StoreConfig>(r#"{"timeout":"soon"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("soon"), "{err}");
    }

    #[test]
    fn secrets_never_print() {
        let c = StoreConfig::new("s3://b").with_credentials("AKID", "hunter2");
        let c = c.with_session_token("tok3n");
        let debug = format!("{c:?}");
        let json = serde_json::to_string(&c).unwrap();
        for text in [debug, json] {
            assert!(!text.contains("hunter2"), "{text}");
            assert!(!text.contains("tok3n"), "{text}");
        }
        assert_eq!(
            c.secret_access_key.as_ref().map(Secret::expose),
            Some("hunter2")
        );
    }

    #[test]
    fn apply_env_fills_only_missing() {
        let env = [
            ("AWS_ACCESS_KEY_ID", "envkey"),
            ("AWS_SECRET_ACCESS_KEY", "envsecret"),
            ("AWS_SESSION_TOKEN", "envtoken"),
            ("AWS_DEFAULT_REGION", "eu-west-1"),
            ("AWS_REGION", "eu-central-1"),
            ("AWS_ENDPOINT_URL", "http://localhost:9000"),
            ("UNRELATED", "x"),
        ];
        let mut c = StoreConfig::new("s3://b");
        c.apply_env(env);
        assert_eq!(c.access_key_id.as_deref(), Some("envkey"));
        assert_eq!(
            c.secret_access_key.as_ref().map(Secret::expose),
            Some("envsecret")
        );
        assert_eq!(
            c.session_token.as_ref().map(Secret::expose),
            Some("envtoken")
        );
        assert_eq!(c.region.as_deref(), Some("eu-central-1"));
        assert_eq!(c.endpoint.as_deref(), Some("http://localhost:9000"));

        let mut c = StoreConfig::new("s3://b")
            .with_credentials("mine", "mysecret")
            .with_region("us-west-2");
        c.apply_env(env);
        assert_eq!(c.access_key_id.as_deref(), Some("mine"));
        assert_eq!(
            c.secret_access_key.as_ref().map(Secret::expose),
            Some("mysecret")
        );
        assert_eq!(c.session_token, None);
        assert_eq!(c.region.as_deref(), Some("us-west-2"));

        let mut c = StoreConfig::new("s3://b");
        c.apply_env([
            ("AWS_ACCESS_KEY_ID", ""),
            ("AWS_DEFAULT_REGION", "ap-south-1"),
        ]);
        assert_eq!(c.access_key_id, None);
        assert_eq!(c.region.as_deref(), Some("ap-south-1"));
    }

    #[test]
    fn path_style_defaults() {
        assert!(!StoreConfig::new("s3://b").effective_path_style());
        assert!(
            StoreConfig::new("s3://b")
                .with_endpoint("http://x")
                .effective_path_style()
        );
        assert!(
            !StoreConfig::new("s3://b")
                .with_endpoint("http://x")
                .with_path_style(false)
                .effective_path_style()
        );
    }

    #[test]
    fn locations() {
        assert_eq!(
            Location::parse("file:///var/lib/repo").unwrap(),
            Location::File {
                path: "/var/lib/repo".into()
            }
        );
        assert_eq!(
            Location::parse("s3://bucket").unwrap(),
            Location::S3 {
                bucket: "bucket".into(),
                prefix: None
            }
        );
        let Location::S3 { bucket, prefix } = Location::parse("s3://bucket/a/b/").unwrap() else {
            panic!("not s3")
        };
        assert_eq!(bucket, "bucket");
        assert_eq!(prefix.unwrap().as_ref(), "a/b");
        assert_eq!(
            Location::parse("s3://bucket/a/b").unwrap().display_url(),
            "s3://bucket/a/b"
        );
        for bad in [
            "gs://bucket",
            "file://relative/path",
            "s3:///nobucket",
            "s3://b/p?x=1",
            "not a url",
        ] {
            let e = Location::parse(bad).unwrap_err();
            assert!(matches!(e, Error::UnsupportedUrl { .. }), "{bad}: {e}");
        }
    }

    #[test]
    fn urls_with_credentials_are_redacted_in_errors() {
        for url in [
            "s3://AKID:hunter2@bucket/p",
            "https://user:hunter2@example.com/x",
            "ftp://user:hunter2@host",
            "weird://user:hunter2@[not-a-url",
        ] {
            let e = Location::parse(url).unwrap_err().to_string();
            assert!(!e.contains("hunter2"), "{e}");
            assert!(e.contains("***"), "{e}");
        }
        assert_eq!(redact_url("s3://bucket/a@b"), "s3://bucket/a@b");
    }

    #[test]
    fn validate_catches_mistakes() {
        let ok = StoreConfig::new("s3://b").with_endpoint("http://127.0.0.1:9000");
        assert!(ok.validate().is_err(), "http without allow_http");
        assert!(ok.clone().with_allow_http(true).validate().is_ok());
        let mut half = StoreConfig::new("s3://b");
        half.access_key_id = Some("k".into());
        assert!(half.validate().is_err());
        assert!(
            StoreConfig::new("file:///x")
                .with_compression_level(22)
                .validate()
                .is_err()
        );
    }
}
