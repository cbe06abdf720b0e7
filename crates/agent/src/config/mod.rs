//! The configuration file shared by the CLI and the agents at every site.
//!
//! One TOML file describes the repository, the sites, the schedules, the
//! retention policy, failover and the agent's listener. Each library owns
//! its section's struct ([`FailoverConfig`], [`RetentionConfig`],
//! [`warmspare_store::StoreConfig`] via [`RepositoryConfig::store_config`]);
//! [`Config`] composes them.
//!
//! Everything that can be checked without contacting anything is checked
//! while loading: unknown keys, durations, URLs, cron expressions, and the
//! relations between keys (`site` names a `[sites.*]` entry, an `endpoint`
//! only with an `s3://` URL, ...). Errors name the file, line and key.
//!
//! ```
//! use warmspare_agent::config::Config;
//!
//! let config = Config::from_toml_str(
//!     r#"
//!     site = "primary"
//!     [repository]
//!     url = "file:///var/lib/warmspare/repo"
//!     [sites.primary]
//!     database = "postgres://builder@10.0.1.20/builder"
//!     "#,
//!     "warmspare.toml",
//! )?;
//! assert_eq!(config.current_site().map(|(name, _)| name), Some("primary"));
//!
//! let err = Config::from_toml_str("[repository]\nurl = \"file:///r\"\ncolour = 1\n", "w.toml")
//!     .unwrap_err();
//! assert!(err.to_string().starts_with("invalid config w.toml, line 3, key `repository.colour`"));
//! # Ok::<(), warmspare_agent::Error>(())
//! ```
//!
//! The library never reads the environment: a binary passes
//! `std::env::vars()` to [`Config::apply_env`] to fill secrets.

mod cron;
mod error;
mod jobs;
mod schedule;
mod urls;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use warmspare_store::{Encryption, StoreConfig};

pub use cron::{CronError, CronExpr};
pub use error::ConfigError;
pub use jobs::{DEFAULT_JOB_TIMEOUT, DEFAULT_PHYSICAL_BACKUP_TIMEOUT, JobConfig, JobsConfig};
pub use schedule::{Schedule, ScheduleConfig, ScheduleError};
pub use urls::{DatabaseUrl, EndpointUrl, HealthTarget, StoreUrl, redact_url};
pub use warmspare_failover::{FailoverConfig, FailoverMode};
pub use warmspare_replicate::DigestAlgorithm;
pub use warmspare_snapshot::RetentionConfig;
pub use warmspare_store::{Compression, Secret};

use crate::{Error, Result};

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Which `[sites.*]` entry this process is (the CLI's `--site`
    /// overrides it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// Where backups, WAL, inventories and the lease live.
    pub repository: RepositoryConfig,
    /// The sites by name, usually `primary` and `spare`.
    #[serde(default)]
    pub sites: BTreeMap<String, SiteConfig>,
    /// When the recurring jobs run.
    #[serde(default)]
    pub schedule: ScheduleConfig,
    /// Per-job settings such as the time limit of a run.
    #[serde(default)]
    pub jobs: JobsConfig,
    /// Which snapshots `prune` keeps.
    #[serde(default)]
    pub retention: RetentionConfig,
    /// Health thresholds, lease timing and failover guards.
    #[serde(default)]
    pub failover: FailoverConfig,
    /// The agent's HTTP listener.
    #[serde(default)]
    pub agent: AgentConfig,
    /// What `warmspare reconcile` compares with the artifacts.
    #[serde(default)]
    pub reconcile: ReconcileConfig,
}

/// The `[reconcile]` table: the SQL query that lists the artifacts the
/// database says must exist, for `warmspare reconcile`.
///
/// ```toml
/// [reconcile]
/// query = "SELECT key, checksum FROM artifacts"   # key, optional checksum (text)
/// digest = "sha256"                                # or "blake2b256" (Habitat's checksum)
/// verify_digests = true                            # compare checksums (reads objects)
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcileConfig {
    /// A query run against the site's database (read-only): the first
    /// column is the artifact's key in the store, the optional second
    /// column its checksum as hex text (or `NULL`).
    pub query: Option<String>,
    /// The algorithm of the query's checksums.
    pub digest: DigestAlgorithm,
    /// Compare checksums with the stored bytes (reads objects that the
    /// store's sync state does not vouch for); off: presence only.
    pub verify_digests: bool,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        ReconcileConfig {
            query: None,
            digest: DigestAlgorithm::default(),
            verify_digests: true,
        }
    }
}

/// The `[repository]` table: an object store both sites can reach.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryConfig {
    /// `s3://bucket/prefix` or `file:///path`.
    pub url: StoreUrl,
    /// S3-compatible endpoint (MinIO, Garage); omit for AWS.
    #[serde(default)]
    pub endpoint: Option<EndpointUrl>,
    /// S3 region.
    #[serde(default)]
    pub region: Option<String>,
    /// Permit plain HTTP to `endpoint`.
    #[serde(default)]
    pub allow_http: bool,
    /// Path-style requests; unset means path style exactly when an
    /// endpoint is given.
    #[serde(default)]
    pub path_style: Option<bool>,
    /// S3 access key id (or `WARMSPARE_REPOSITORY_ACCESS_KEY_ID`,
    /// `AWS_ACCESS_KEY_ID`).
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// S3 secret key (or `WARMSPARE_REPOSITORY_SECRET_ACCESS_KEY`,
    /// `AWS_SECRET_ACCESS_KEY`).
    #[serde(default)]
    pub secret_access_key: Option<Secret>,
    /// S3 session token of temporary credentials.
    #[serde(default)]
    pub session_token: Option<Secret>,
    /// Compression of data objects.
    #[serde(default = "default_compression")]
    pub compression: Compression,
    /// zstd level (1-19); the store's default when unset.
    #[serde(default)]
    pub compression_level: Option<i32>,
    /// File holding the key that encrypts backups; without it they are not
    /// encrypted.
    #[serde(default)]
    pub encryption_key_file: Option<PathBuf>,
    /// With a key: still read WAL segments, history files and inventories
    /// that are not encrypted (written before encryption was turned on).
    /// Off, such an object is refused: it may have been planted by someone
    /// who can write to the bucket.
    #[serde(default)]
    pub allow_unencrypted: bool,
    /// Limit on establishing a connection; the store's default when unset.
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub connect_timeout: Option<Duration>,
    /// Limit on one stalled read; the store's default when unset.
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub read_timeout: Option<Duration>,
}

fn default_compression() -> Compression {
    Compression::Zstd
}

/// How a site's spare is kept warm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SiteMode {
    /// Scheduled logical snapshots restored into a staging database that is
    /// swapped in after it passed checks.
    #[default]
    LogicalRestore,
    /// A standby fed with WAL from the repository (`restore_command`).
    StandbyFromRepository,
    /// An ordinary streaming replica; warmspare measures lag and promotes.
    Streaming,
}

impl SiteMode {
    /// The name used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            SiteMode::LogicalRestore => "logical-restore",
            SiteMode::StandbyFromRepository => "standby-from-repository",
            SiteMode::Streaming => "streaming",
        }
    }
}

/// One `[sites.NAME]` table: a deployment of the service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    /// The site's PostgreSQL database. The password may come from
    /// `WARMSPARE_SITES_<NAME>_DATABASE_PASSWORD`.
    pub database: DatabaseUrl,
    /// The site's artifact store, `s3://bucket/prefix` or `file:///path`.
    #[serde(default)]
    pub artifacts: Option<StoreUrl>,
    /// S3-compatible endpoint of the artifact store.
    #[serde(default)]
    pub artifacts_endpoint: Option<EndpointUrl>,
    /// S3 region of the artifact store.
    #[serde(default)]
    pub artifacts_region: Option<String>,
    /// Permit plain HTTP to `artifacts_endpoint`.
    #[serde(default)]
    pub artifacts_allow_http: bool,
    /// Path-style requests to the artifact store (see
    /// [`RepositoryConfig::path_style`]).
    #[serde(default)]
    pub artifacts_path_style: Option<bool>,
    /// S3 access key id of the artifact store.
    #[serde(default)]
    pub artifacts_access_key_id: Option<String>,
    /// S3 secret key of the artifact store.
    #[serde(default)]
    pub artifacts_secret_access_key: Option<Secret>,
    /// S3 session token of the artifact store.
    #[serde(default)]
    pub artifacts_session_token: Option<Secret>,
    /// Health-check targets of the service at this site, probed in
    /// addition to its `database` (see `docs/configuration.md`).
    #[serde(default)]
    pub health: Vec<HealthTarget>,
    /// Where this site's agent listens.
    #[serde(default)]
    pub agent: Option<EndpointUrl>,
    /// How this site is kept warm when it is the spare.
    #[serde(default)]
    pub mode: SiteMode,
}

/// The default of `[agent] shutdown_grace`.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// The `[agent]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Address of the HTTP endpoints; loopback by default.
    pub listen: SocketAddr,
    /// File holding the bearer token that mutating endpoints require.
    pub token_file: Option<PathBuf>,
    /// How long running jobs get to stop once asked to (at shutdown, and
    /// after a run's time limit) before they are dropped; also how long
    /// the HTTP server finishes requests at shutdown.
    /// [`AgentOptions::cancel_grace`](crate::AgentOptions::cancel_grace)
    /// overrides it.
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 9750)),
            token_file: None,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }
}

impl RepositoryConfig {
    /// A repository at `url` with every other setting at its default.
    pub fn new(url: StoreUrl) -> Self {
        RepositoryConfig {
            url,
            endpoint: None,
            region: None,
            allow_http: false,
            path_style: None,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            compression: default_compression(),
            compression_level: None,
            encryption_key_file: None,
            allow_unencrypted: false,
            connect_timeout: None,
            read_timeout: None,
        }
    }

    /// The store configuration to open the repository with
    /// (`warmspare_store::Store::open`).
    ///
    /// With `encryption_key_file` set, the key is *not* loaded (this
    /// library reads no files): encryption is marked
    /// [`Encryption::KeyNotLoaded`], which refuses every data write and
    /// every read of an encrypted object, until the program reads the file
    /// and sets the key with [`StoreConfig::with_encryption_key`]. Lease and
    /// other compare-and-swap objects work either way.
    pub fn store_config(&self) -> StoreConfig {
        let mut c = StoreConfig::new(self.url.as_str());
        c.endpoint = self.endpoint.as_ref().map(|e| e.as_str().to_owned());
        c.region.clone_from(&self.region);
        c.allow_http = self.allow_http;
        c.path_style = self.path_style;
        c.access_key_id.clone_from(&self.access_key_id);
        c.secret_access_key.clone_from(&self.secret_access_key);
        c.session_token.clone_from(&self.session_token);
        c.compression = self.compression;
        if let Some(level) = self.compression_level {
            c.compression_level = level;
        }
        if let Some(t) = self.connect_timeout {
            c.connect_timeout = t;
        }
        if let Some(t) = self.read_timeout {
            c.read_timeout = t;
        }
        c.allow_unencrypted = self.allow_unencrypted;
        if let Some(path) = &self.encryption_key_file {
            c.encryption = Encryption::KeyNotLoaded {
                source: format!("encryption_key_file {}", path.display()),
            };
        }
        c
    }
}

impl SiteConfig {
    /// A site whose database is `database`, with no artifact store.
    pub fn new(database: DatabaseUrl) -> Self {
        SiteConfig {
            database,
            artifacts: None,
            artifacts_endpoint: None,
            artifacts_region: None,
            artifacts_allow_http: false,
            artifacts_path_style: None,
            artifacts_access_key_id: None,
            artifacts_secret_access_key: None,
            artifacts_session_token: None,
            health: Vec::new(),
            agent: None,
            mode: SiteMode::default(),
        }
    }

    /// The store configuration of the site's artifact store, if it has one.
    pub fn artifacts_store_config(&self) -> Option<StoreConfig> {
        let url = self.artifacts.as_ref()?;
        let mut c = StoreConfig::new(url.as_str());
        c.endpoint = self
            .artifacts_endpoint
            .as_ref()
            .map(|e| e.as_str().to_owned());
        c.region.clone_from(&self.artifacts_region);
        c.allow_http = self.artifacts_allow_http;
        c.path_style = self.artifacts_path_style;
        c.access_key_id.clone_from(&self.artifacts_access_key_id);
        c.secret_access_key
            .clone_from(&self.artifacts_secret_access_key);
        c.session_token.clone_from(&self.artifacts_session_token);
        Some(c)
    }
}

/// A validation failure before it is placed in a file: the dotted key and
/// the message.
type Invalid = (String, String);

impl Config {
    /// A configuration with only a repository; everything else at its
    /// default.
    pub fn new(repository: RepositoryConfig) -> Self {
        Config {
            site: None,
            repository,
            sites: BTreeMap::new(),
            schedule: ScheduleConfig::default(),
            jobs: JobsConfig::default(),
            retention: RetentionConfig::default(),
            failover: FailoverConfig::default(),
            agent: AgentConfig::default(),
            reconcile: ReconcileConfig::default(),
        }
    }

    /// Parses and validates a configuration file's text. `origin` names the
    /// text in errors (usually the file's path).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the origin, line and key: TOML syntax,
    /// unknown keys, wrong types, bad durations, URLs and schedules, and
    /// the checks of [`Config::validate`].
    pub fn from_toml_str(text: &str, origin: impl AsRef<str>) -> Result<Config> {
        let origin = origin.as_ref();
        let config: Config = toml::from_str(text)
            .map_err(|e| Error::Config(ConfigError::from_toml(origin, text, &e)))?;
        config.check().map_err(|(key, message)| {
            Error::Config(ConfigError::at_key(origin, text, &key, message))
        })?;
        Ok(config)
    }

    /// Checks the relations between keys that deserialization cannot check
    /// on its own. [`Config::from_toml_str`] already calls it; call it after
    /// building or changing a configuration in code.
    pub fn validate(&self) -> Result<()> {
        self.check().map_err(|(key, message)| {
            Error::Config(ConfigError {
                origin: "configuration".into(),
                line: None,
                column: None,
                key: Some(key),
                message,
            })
        })
    }

    fn check(&self) -> Result<(), Invalid> {
        let invalid = |key: &str, message: &str| Err((key.to_owned(), message.to_owned()));
        for name in self.sites.keys() {
            if !valid_site_name(name) {
                return invalid(
                    &format!("sites.{name}"),
                    "site names may use only letters, digits, '-' and '_'",
                );
            }
        }
        if let Some(site) = &self.site
            && !self.sites.contains_key(site)
        {
            return Err(("site".into(), self.unknown_site_message(site)));
        }
        check_store(
            ("repository.endpoint", "allow_http"),
            &self.repository.url,
            self.repository.endpoint.as_ref(),
            self.repository.allow_http,
        )?;
        if let Some(level) = self.repository.compression_level
            && !(1..=19).contains(&level)
        {
            return invalid("repository.compression_level", "must be between 1 and 19");
        }
        if self
            .repository
            .encryption_key_file
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return invalid(
                "repository.encryption_key_file",
                "is empty; name the file holding the key (`openssl rand -hex 32`)",
            );
        }
        for (key, t) in [
            (
                "repository.connect_timeout",
                self.repository.connect_timeout,
            ),
            ("repository.read_timeout", self.repository.read_timeout),
        ] {
            if t.is_some_and(|t| t.is_zero()) {
                return invalid(key, "must be greater than zero");
            }
        }
        for (name, site) in &self.sites {
            let prefix = format!("sites.{name}");
            match &site.artifacts {
                Some(url) => check_store(
                    (
                        &format!("{prefix}.artifacts_endpoint"),
                        "artifacts_allow_http",
                    ),
                    url,
                    site.artifacts_endpoint.as_ref(),
                    site.artifacts_allow_http,
                )?,
                None if site.artifacts_endpoint.is_some() => {
                    return invalid(
                        &format!("{prefix}.artifacts_endpoint"),
                        "is set but `artifacts` is not",
                    );
                }
                None => {}
            }
        }
        if self
            .reconcile
            .query
            .as_deref()
            .is_some_and(|q| q.trim().is_empty())
        {
            return invalid("reconcile.query", "is empty; remove it or write the query");
        }
        if self.agent.shutdown_grace.is_zero() {
            return invalid(
                "agent.shutdown_grace",
                "must be greater than zero, or running jobs are dropped without a chance to stop",
            );
        }
        self.jobs.check()?;
        self.failover
            .validate()
            .map_err(|e| (format!("failover.{}", e.key), e.message))?;
        self.retention
            .validate()
            .map_err(|e| (format!("retention.{}", e.key), e.message.to_owned()))?;
        Ok(())
    }

    fn unknown_site_message(&self, site: &str) -> String {
        if self.sites.is_empty() {
            format!("names site {site:?}, but there is no [sites.*] table")
        } else {
            let known: Vec<&str> = self.sites.keys().map(String::as_str).collect();
            format!(
                "names site {site:?}, which is not one of: {}",
                known.join(", ")
            )
        }
    }

    /// Makes `name` the current site (the CLI's `--site`).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when there is no `[sites.NAME]` table.
    pub fn select_site(&mut self, name: &str) -> Result<()> {
        if !self.sites.contains_key(name) {
            return Err(Error::Config(ConfigError {
                origin: "--site".into(),
                line: None,
                column: None,
                key: Some("site".into()),
                message: self.unknown_site_message(name),
            }));
        }
        self.site = Some(name.to_owned());
        Ok(())
    }

    /// The current site's name and table, if `site` is set.
    pub fn current_site(&self) -> Option<(&str, &SiteConfig)> {
        let name = self.site.as_deref()?;
        self.sites.get(name).map(|s| (name, s))
    }

    /// Every secret value in the configuration (keys, tokens, database
    /// passwords as written and percent-decoded), for scrubbing text that
    /// is about to be shown.
    pub fn secrets(&self) -> Vec<String> {
        let mut out = Vec::new();
        let repo = &self.repository;
        out.extend(
            repo.secret_access_key
                .iter()
                .chain(&repo.session_token)
                .map(|s| s.expose().to_owned()),
        );
        for site in self.sites.values() {
            out.extend(site.database.password_forms());
            out.extend(site.health.iter().flat_map(HealthTarget::password_forms));
            out.extend(
                site.artifacts_secret_access_key
                    .iter()
                    .chain(&site.artifacts_session_token)
                    .map(|s| s.expose().to_owned()),
            );
        }
        out.retain(|s| !s.is_empty());
        out.sort();
        out.dedup();
        out
    }

    /// Fills secrets from environment variables given by the caller (the
    /// library never reads the environment itself). A binary calls
    /// `config.apply_env(std::env::vars())`.
    ///
    /// `WARMSPARE_*` variables override the file:
    ///
    /// * `WARMSPARE_REPOSITORY_ACCESS_KEY_ID`, `..._SECRET_ACCESS_KEY`,
    ///   `..._SESSION_TOKEN`;
    /// * `WARMSPARE_SITES_<NAME>_DATABASE_PASSWORD` (the password of the
    ///   site's database URL), `WARMSPARE_SITES_<NAME>_ARTIFACTS_ACCESS_KEY_ID`,
    ///   `..._ARTIFACTS_SECRET_ACCESS_KEY`, `..._ARTIFACTS_SESSION_TOKEN`,
    ///   where `<NAME>` is the site name in upper case with `-` as `_`.
    ///
    /// The usual `AWS_*` variables only fill what is still unset, for
    /// `s3://` stores: `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (plus
    /// `AWS_SESSION_TOKEN`) when neither key nor secret is set, and
    /// `AWS_REGION` / `AWS_DEFAULT_REGION`. Empty values are ignored.
    pub fn apply_env<K, V>(&mut self, vars: impl IntoIterator<Item = (K, V)>)
    where
        K: AsRef<str>,
        V: Into<String>,
    {
        let vars: BTreeMap<String, String> = vars
            .into_iter()
            .map(|(k, v)| (k.as_ref().to_owned(), v.into()))
            .filter(|(k, v)| {
                !v.is_empty() && (k.starts_with("WARMSPARE_") || k.starts_with("AWS_"))
            })
            .collect();
        let get = |name: &str| vars.get(name).cloned();

        let repo = &mut self.repository;
        if let Some(v) = get("WARMSPARE_REPOSITORY_ACCESS_KEY_ID") {
            repo.access_key_id = Some(v);
        }
        if let Some(v) = get("WARMSPARE_REPOSITORY_SECRET_ACCESS_KEY") {
            repo.secret_access_key = Some(Secret::new(v));
        }
        if let Some(v) = get("WARMSPARE_REPOSITORY_SESSION_TOKEN") {
            repo.session_token = Some(Secret::new(v));
        }
        if repo.url.is_s3() {
            fill_from_aws(
                &vars,
                &mut repo.access_key_id,
                &mut repo.secret_access_key,
                &mut repo.session_token,
                &mut repo.region,
            );
        }

        for (name, site) in &mut self.sites {
            let prefix = format!(
                "WARMSPARE_SITES_{}_",
                name.to_ascii_uppercase().replace('-', "_")
            );
            if let Some(v) = get(&format!("{prefix}DATABASE_PASSWORD")) {
                site.database.set_password(&v);
            }
            if let Some(v) = get(&format!("{prefix}ARTIFACTS_ACCESS_KEY_ID")) {
                site.artifacts_access_key_id = Some(v);
            }
            if let Some(v) = get(&format!("{prefix}ARTIFACTS_SECRET_ACCESS_KEY")) {
                site.artifacts_secret_access_key = Some(Secret::new(v));
            }
            if let Some(v) = get(&format!("{prefix}ARTIFACTS_SESSION_TOKEN")) {
                site.artifacts_session_token = Some(Secret::new(v));
            }
            if site.artifacts.as_ref().is_some_and(StoreUrl::is_s3) {
                fill_from_aws(
                    &vars,
                    &mut site.artifacts_access_key_id,
                    &mut site.artifacts_secret_access_key,
                    &mut site.artifacts_session_token,
                    &mut site.artifacts_region,
                );
            }
        }
    }
}

fn fill_from_aws(
    vars: &BTreeMap<String, String>,
    key_id: &mut Option<String>,
    secret: &mut Option<Secret>,
    token: &mut Option<Secret>,
    region: &mut Option<String>,
) {
    if key_id.is_none() && secret.is_none() {
        *key_id = vars.get("AWS_ACCESS_KEY_ID").cloned();
        *secret = vars.get("AWS_SECRET_ACCESS_KEY").cloned().map(Secret::new);
        if token.is_none() {
            *token = vars.get("AWS_SESSION_TOKEN").cloned().map(Secret::new);
        }
    }
    if region.is_none() {
        *region = vars
            .get("AWS_REGION")
            .or_else(|| vars.get("AWS_DEFAULT_REGION"))
            .cloned();
    }
}

fn valid_site_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Checks an object store's URL against its endpoint settings. `keys` are
/// the dotted key of the endpoint and the name of its `allow_http` key.
fn check_store(
    (endpoint_key, allow_key): (&str, &str),
    url: &StoreUrl,
    endpoint: Option<&EndpointUrl>,
    allow_http: bool,
) -> Result<(), Invalid> {
    if let Some(endpoint) = endpoint {
        if !url.is_s3() {
            return Err((
                endpoint_key.to_owned(),
                "an endpoint is only used with s3:// URLs".into(),
            ));
        }
        if endpoint.is_plain_http() && !allow_http {
            return Err((
                endpoint_key.to_owned(),
                format!("is plain http://; set {allow_key} = true to permit it"),
            ));
        }
    }
    Ok(())
}

/// `#[serde(with = ...)]` for humantime durations.
mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(text.trim()).map_err(|e| {
            de::Error::custom(format_args!(
                "invalid duration {text:?}: {e} (write it like \"10s\" or \"2m\")"
            ))
        })
    }
}

/// `#[serde(with = ...)]` for optional humantime durations: [`duration`]
/// for a key that is present.
mod opt_duration {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        super::duration::deserialize(d).map(Some)
    }
}

#[cfg(test)]
mod tests;
