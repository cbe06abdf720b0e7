use super::*;

/// The example from DESIGN.md, verbatim except for `encryption_key_file`
/// (see `encryption_key_file_fails_closed_until_loaded`).
const DESIGN_EXAMPLE: &str = r#"
site = "primary"                     # which [sites.*] entry this process is (CLI: --site overrides)

[repository]
url = "s3://dr-backups/builder"      # or "file:///var/lib/warmspare/repo"
endpoint = "http://127.0.0.1:9000"   # S3-compatible endpoint (MinIO); omit for AWS
region = "us-east-1"
allow_http = true                    # plain HTTP to the endpoint (MinIO on a private network)
# access_key_id / secret_access_key, or from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
compression = "zstd"                 # "zstd" | "none"

[sites.primary]
database = "postgres://builder@10.0.1.20:5432/builder"
artifacts = "s3://builder-artifacts"  # or file:///hab/svc/builder-minio/data
artifacts_endpoint = "http://10.0.1.30:9000"
artifacts_allow_http = true
health = ["http://10.0.1.10:9636/v1/status"]
agent = "http://10.0.1.10:9750"       # where this site's agent listens

[sites.spare]
database = "postgres://builder@10.1.1.20:5432/builder"
artifacts = "file:///srv/builder-artifacts"
health = ["http://10.1.1.10:9636/v1/status"]
agent = "http://10.1.1.10:9750"
mode = "logical-restore"              # "logical-restore" | "standby-from-repository" | "streaming"

[schedule]                            # cron expressions (5 fields) or "every 30s"
backup = "0 */4 * * *"
sync = "every 5m"
restore = "30 */4 * * *"              # logical-restore spares only
verify = "0 3 * * *"

[retention]
keep_last = 7
keep_daily = 7
keep_weekly = 4
keep_monthly = 6

[failover]
mode = "automatic"                    # "automatic" | "manual" | "notify"
interval = "1s"
timeout = "2s"
unhealthy_threshold = 3
healthy_threshold = 2
lease_ttl = "6s"
max_data_loss = "5m"                  # no automatic failover when the spare is further behind
cooldown = "30m"
on_promote = ["/usr/local/bin/point-dns-at spare"]
on_fence = ["systemctl stop hab-sup"]

[agent]
listen = "127.0.0.1:9750"
token_file = "/etc/warmspare/agent.token"   # bearer token for mutating endpoints
"#;

const MINIMAL: &str = "[repository]\nurl = \"file:///srv/repo\"\n";

fn load(text: &str) -> Config {
    Config::from_toml_str(text, "test.toml").unwrap_or_else(|e| panic!("{e}"))
}

fn config_error(text: &str) -> ConfigError {
    match Config::from_toml_str(text, "test.toml") {
        Err(Error::Config(e)) => e,
        Err(e) => panic!("not a configuration error: {e}"),
        Ok(_) => panic!("accepted:\n{text}"),
    }
}

#[test]
fn encryption_key_file_fails_closed_until_loaded() {
    let text = DESIGN_EXAMPLE.replace(
        "compression = \"zstd\"",
        "compression = \"zstd\"\nencryption_key_file = \"/etc/warmspare/repo.key\"",
    );
    let c = load(&text);
    assert_eq!(
        c.repository.encryption_key_file.as_deref(),
        Some(std::path::Path::new("/etc/warmspare/repo.key"))
    );
    // The library reads no files: until the program loads the key, every
    // data write through the store is refused, never done in plaintext.
    let store = c.repository.store_config();
    assert!(store.encryption.is_enabled());
    assert!(store.encryption.key().is_none());
    assert!(
        matches!(&store.encryption, Encryption::KeyNotLoaded { source } if source.contains("/etc/warmspare/repo.key")),
        "{:?}",
        store.encryption
    );
    assert!(
        !load(DESIGN_EXAMPLE)
            .repository
            .store_config()
            .encryption
            .is_enabled()
    );
}

#[test]
fn design_example_parses() {
    let c = load(DESIGN_EXAMPLE);
    assert_eq!(c.current_site().map(|(n, _)| n), Some("primary"));
    assert!(c.repository.url.is_s3());
    assert_eq!(c.repository.compression, Compression::Zstd);
    assert_eq!(c.sites.len(), 2);
    assert_eq!(c.sites["spare"].mode, SiteMode::LogicalRestore);
    assert_eq!(c.sites["primary"].health.len(), 1);
    assert_eq!(c.schedule.jobs().count(), 4);
    assert_eq!(c.retention, RetentionConfig::default());
    assert_eq!(
        c.failover,
        FailoverConfig {
            on_promote: vec!["/usr/local/bin/point-dns-at spare".into()],
            on_fence: vec!["systemctl stop hab-sup".into()],
            ..FailoverConfig::default()
        }
    );
    assert_eq!(c.agent.listen, AgentConfig::default().listen);
    let store = c.repository.store_config();
    assert_eq!(store.url, "s3://dr-backups/builder");
    assert_eq!(store.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
    assert!(store.allow_http && store.effective_path_style());
    let artifacts = c.sites["primary"].artifacts_store_config().unwrap();
    assert_eq!(artifacts.endpoint.as_deref(), Some("http://10.0.1.30:9000"));
    assert!(c.sites["spare"].artifacts_store_config().is_some());
}

#[test]
fn minimal_config_has_defaults() {
    let c = load(MINIMAL);
    assert_eq!(
        c,
        Config::new(RepositoryConfig::new("file:///srv/repo".parse().unwrap()))
    );
    assert_eq!(c.agent.listen.to_string(), "127.0.0.1:9750");
    c.validate().unwrap();
}

#[test]
fn unknown_key_names_the_key_and_line() {
    let e = config_error("[repository]\nurl = \"file:///srv/repo\"\ncolour = \"blue\"\n");
    assert_eq!(e.line, Some(3), "{e}");
    assert_eq!(e.key.as_deref(), Some("repository.colour"), "{e}");
    assert!(e.message.contains("unknown field `colour`"), "{e}");
    assert!(
        e.to_string()
            .starts_with("invalid config test.toml, line 3, key `repository.colour`: "),
        "{e}"
    );

    let e = config_error(&format!(
        "{MINIMAL}\n[sites.a]\ndatabase = \"postgres://h/db\"\nhelth = []\n"
    ));
    assert_eq!(
        (e.line, e.key.as_deref()),
        (Some(6), Some("sites.a.helth")),
        "{e}"
    );

    let e = config_error(&format!("sitee = \"x\"\n{MINIMAL}"));
    assert_eq!((e.line, e.key.as_deref()), (Some(1), Some("sitee")), "{e}");

    let e = config_error(&format!("{MINIMAL}[backup]\nx = 1\n"));
    assert_eq!((e.line, e.key.as_deref()), (Some(3), Some("backup")), "{e}");
}

#[test]
fn bad_duration_names_the_key_and_line() {
    let e = config_error(&format!(
        "{MINIMAL}\n[failover]\ninterval = \"1s\"\nlease_ttl = \"six seconds\"\n"
    ));
    assert_eq!(
        (e.line, e.key.as_deref()),
        (Some(6), Some("failover.lease_ttl")),
        "{e}"
    );
    assert!(
        e.message.contains("invalid duration \"six seconds\""),
        "{e}"
    );

    let e = config_error(&format!("{MINIMAL}connect_timeout = \"5 parsecs\"\n"));
    assert_eq!(e.key.as_deref(), Some("repository.connect_timeout"), "{e}");
}

#[test]
fn bad_urls_name_the_key_and_line_without_passwords() {
    let e = config_error(&format!(
        "{MINIMAL}\n[sites.primary]\ndatabase = \"mysql://root:hunter2@db/x\"\n"
    ));
    assert_eq!(
        (e.line, e.key.as_deref()),
        (Some(5), Some("sites.primary.database")),
        "{e}"
    );
    assert!(e.message.contains("postgres://"), "{e}");
    assert!(!e.to_string().contains("hunter2"), "{e}");
    assert!(!format!("{e:?}").contains("hunter2"), "{e:?}");

    let e = config_error(&format!(
        "{MINIMAL}\n[sites.primary]\ndatabase = \"postgres//root:hunter2@db/x\"\n"
    ));
    assert_eq!(e.key.as_deref(), Some("sites.primary.database"), "{e}");
    assert!(!e.to_string().contains("hunter2"), "{e}");

    let e = config_error("[repository]\nurl = \"gs://bucket\"\n");
    assert_eq!(
        (e.line, e.key.as_deref()),
        (Some(2), Some("repository.url")),
        "{e}"
    );

    let e = config_error(&format!(
        "{MINIMAL}\n[sites.a]\ndatabase = \"postgres://h/db\"\nhealth = [\"http://ok\", \"gopher://x\"]\n"
    ));
    assert_eq!(e.key.as_deref(), Some("sites.a.health"), "{e}");
    assert_eq!(e.line, Some(6), "{e}");

    let e = config_error(&format!(
        "{MINIMAL}\n[sites.a]\ndatabase = \"postgres://h/db\"\nhealth = [\"postgres:///db?password=hunter2\"]\n"
    ));
    assert_eq!(e.key.as_deref(), Some("sites.a.health"), "{e}");
    assert!(e.message.contains("no host"), "{e}");
    assert!(!e.to_string().contains("hunter2"), "{e}");
    assert!(!format!("{e:?}").contains("hunter2"), "{e:?}");
}

#[test]
fn bad_schedule_names_the_key() {
    let e = config_error(&format!("{MINIMAL}[schedule]\nbackup = \"0 */4 * *\"\n"));
    assert_eq!(
        (e.line, e.key.as_deref()),
        (Some(4), Some("schedule.backup")),
        "{e}"
    );
    assert!(e.message.contains("expected 5 fields"), "{e}");
}

#[test]
fn physical_backup_schedule_and_job_timeouts_parse() {
    let c = load(&format!(
        "{MINIMAL}[schedule]\nphysical_backup = \"0 1 * * 0\"\n\
         [jobs]\nbackup = {{ timeout = \"90m\" }}\n\
         [jobs.physical_backup]\ntimeout = \"1d\"\n"
    ));
    assert_eq!(
        c.schedule.jobs().map(|(n, _)| n).collect::<Vec<_>>(),
        ["physical_backup"]
    );
    assert_eq!(c.jobs.timeout("backup"), Some(Duration::from_secs(90 * 60)));
    assert_eq!(
        c.jobs.timeout("physical_backup"),
        Some(Duration::from_secs(24 * 3600))
    );
    assert_eq!(c.jobs.timeout("sync"), None);
    assert_eq!(JobsConfig::default_timeout("sync"), DEFAULT_JOB_TIMEOUT);
    assert_eq!(
        JobsConfig::default_timeout("physical_backup"),
        DEFAULT_PHYSICAL_BACKUP_TIMEOUT
    );
    // Written back, read again: the same.
    let text = toml::to_string(&c).unwrap();
    assert_eq!(load(&text), c);
    assert_eq!(load(MINIMAL).jobs, JobsConfig::default());
}

#[test]
fn bad_job_settings_name_the_key() {
    let e = config_error(&format!(
        "{MINIMAL}[jobs]\nbackup = {{ timeout = \"0s\" }}\n"
    ));
    assert_eq!(e.key.as_deref(), Some("jobs.backup.timeout"), "{e}");
    assert!(e.message.contains("greater than zero"), "{e}");
    let e = config_error(&format!(
        "{MINIMAL}[jobs]\nbackups = {{ timeout = \"1h\" }}\n"
    ));
    assert_eq!(e.key.as_deref(), Some("jobs.backups"), "{e}");
    let e = config_error(&format!("{MINIMAL}[jobs.sync]\ntimeout = \"soon\"\n"));
    assert_eq!(
        (e.line, e.key.as_deref()),
        (Some(4), Some("jobs.sync.timeout")),
        "{e}"
    );
    let e = config_error(&format!("{MINIMAL}[jobs.sync]\ntimout = \"1h\"\n"));
    assert_eq!(e.key.as_deref(), Some("jobs.sync.timout"), "{e}");
}

#[test]
fn agent_shutdown_grace_parses_with_a_default_and_is_checked() {
    assert_eq!(load(MINIMAL).agent.shutdown_grace, Duration::from_secs(30));
    assert_eq!(DEFAULT_SHUTDOWN_GRACE, Duration::from_secs(30));
    let c = load(&format!("{MINIMAL}[agent]\nshutdown_grace = \"2m 30s\"\n"));
    assert_eq!(c.agent.shutdown_grace, Duration::from_secs(150));
    // Written back, read again: the same.
    let text = toml::to_string(&c).unwrap();
    assert!(text.contains("shutdown_grace = \"2m 30s\""), "{text}");
    assert_eq!(load(&text), c);

    let e = config_error(&format!("{MINIMAL}[agent]\nshutdown_grace = \"0s\"\n"));
    assert_eq!(e.key.as_deref(), Some("agent.shutdown_grace"), "{e}");
    assert!(e.message.contains("greater than zero"), "{e}");
    let e = config_error(&format!("{MINIMAL}[agent]\nshutdown_grace = \"a while\"\n"));
    assert_eq!(
        (e.line, e.key.as_deref()),
        (Some(4), Some("agent.shutdown_grace")),
        "{e}"
    );
    assert!(e.message.contains("invalid duration"), "{e}");
    let e = config_error(&format!("{MINIMAL}[agent]\nshutdown_grace = 30\n"));
    assert_eq!(e.key.as_deref(), Some("agent.shutdown_grace"), "{e}");
}

/// The watchdog's keys of `[failover]` load through the whole file, with
/// their errors placed on the key; files without them load as before.
#[test]
fn failover_restart_keys_parse_and_are_checked() {
    let c = load(MINIMAL);
    assert_eq!(c.failover.restart_attempts, 1);
    assert_eq!(c.failover.restart_grace, None);
    let c = load(&format!(
        "{MINIMAL}[failover]\nrestart_attempts = 3\nrestart_grace = \"20s\"\n"
    ));
    assert_eq!(c.failover.restart_attempts, 3);
    assert_eq!(c.failover.restart_grace, Some(Duration::from_secs(20)));
    let c = load(&format!("{MINIMAL}[failover]\nrestart_attempts = 0\n"));
    assert_eq!(c.failover.restart_attempts, 0);

    let e = config_error(&format!(
        "{MINIMAL}[failover]\nrestart_attempts = 2\nrestart_grace = \"0s\"\n"
    ));
    assert_eq!(
        (e.line, e.key.as_deref()),
        (Some(5), Some("failover.restart_grace")),
        "{e}"
    );
    assert!(e.message.contains("greater than zero"), "{e}");
    let e = config_error(&format!("{MINIMAL}[failover]\nrestart_grace = \"500ms\"\n"));
    assert_eq!(e.key.as_deref(), Some("failover.restart_grace"), "{e}");
    assert!(e.message.contains("healthy_threshold"), "{e}");
    let e = config_error(&format!("{MINIMAL}[failover]\nrestart_attempts = -1\n"));
    assert_eq!(e.key.as_deref(), Some("failover.restart_attempts"), "{e}");
}

#[test]
fn missing_repository_is_an_error() {
    let e = config_error("site = \"a\"\n");
    assert!(e.message.contains("missing field `repository`"), "{e}");
    let e = config_error("[repository]\nregion = \"x\"\n");
    assert!(e.message.contains("missing field `url`"), "{e}");
    assert_eq!(e.key.as_deref(), Some("repository"), "{e}");
}

#[test]
fn site_must_name_a_site_table() {
    let e = config_error(&format!(
        "site = \"spare\"\n{MINIMAL}\n[sites.primary]\ndatabase = \"postgres://h/db\"\n"
    ));
    assert_eq!((e.line, e.key.as_deref()), (Some(1), Some("site")), "{e}");
    assert!(e.message.contains("not one of: primary"), "{e}");
    let e = config_error(&format!("site = \"spare\"\n{MINIMAL}"));
    assert!(e.message.contains("no [sites.*] table"), "{e}");

    let mut c = load(&format!(
        "{MINIMAL}\n[sites.primary]\ndatabase = \"postgres://h/db\"\n"
    ));
    assert!(c.select_site("spare").is_err());
    c.select_site("primary").unwrap();
    assert_eq!(c.current_site().map(|(n, _)| n), Some("primary"));
}

#[test]
fn relations_between_keys_are_checked() {
    let e = config_error("[repository]\nurl = \"file:///r\"\nendpoint = \"https://s3.example\"\n");
    assert_eq!(
        (e.line, e.key.as_deref()),
        (Some(3), Some("repository.endpoint")),
        "{e}"
    );
    let e = config_error("[repository]\nurl = \"s3://b\"\nendpoint = \"http://127.0.0.1:9000\"\n");
    assert!(e.message.contains("allow_http = true"), "{e}");
    let e = config_error(&format!(
        "{MINIMAL}[sites.a]\ndatabase = \"postgres://h/db\"\nartifacts = \"s3://b\"\nartifacts_endpoint = \"http://m:9000\"\n"
    ));
    assert_eq!(e.key.as_deref(), Some("sites.a.artifacts_endpoint"), "{e}");
    assert!(e.message.contains("artifacts_allow_http"), "{e}");
    let e = config_error(&format!(
        "{MINIMAL}[sites.\"a b\"]\ndatabase = \"postgres://h/db\"\n"
    ));
    assert_eq!(e.key.as_deref(), Some("sites.a b"), "{e}");
    assert_eq!(e.line, Some(3), "{e}");
    let e = config_error(&format!("{MINIMAL}[failover]\ninterval = \"10s\"\n"));
    assert_eq!(e.key.as_deref(), Some("failover.lease_ttl"), "{e}");
    assert_eq!(e.line, Some(3), "falls back to the [failover] table: {e}");
    let e = config_error(&format!(
        "{MINIMAL}[failover]\non_restart = [\"pg_ctl restart\"]\nswitchover_timeout = \"0s\"\n"
    ));
    assert_eq!(
        (e.line, e.key.as_deref()),
        (Some(5), Some("failover.switchover_timeout")),
        "{e}"
    );
    let e = config_error(&format!("{MINIMAL}[retention]\nkeep_last = 0\n"));
    assert_eq!(
        (e.line, e.key.as_deref()),
        (Some(4), Some("retention.keep_last")),
        "{e}"
    );
    let e = config_error(&format!("{MINIMAL}encryption_key_file = \"\"\n"));
    assert_eq!(
        e.key.as_deref(),
        Some("repository.encryption_key_file"),
        "{e}"
    );
    assert!(e.to_string().contains("is empty"), "{e}");
}

#[test]
fn syntax_errors_have_a_line() {
    let e = config_error("[repository]\nurl = \"file:///r\n");
    assert_eq!(e.line, Some(2), "{e}");
    let e = config_error("[repository]\nurl = \"file:///r\"\n[repository]\n");
    assert_eq!(e.line, Some(3), "{e}");
}

#[test]
fn secrets_never_appear_in_debug_or_serialization() {
    let mut c = load(
        "[repository]\nurl = \"s3://b\"\naccess_key_id = \"AKID\"\nsecret_access_key = \"hunter2\"\n\
         [sites.a]\ndatabase = \"postgres://u:pg-hunter3@h/db\"\nartifacts = \"s3://art\"\n\
         artifacts_access_key_id = \"A2\"\nartifacts_secret_access_key = \"hunter4\"\n\
         health = [\"postgres://probe:hunter6@h:6432/db\", \"postgres://probe@h/db?password=hunter7\"]\n",
    );
    c.apply_env([("WARMSPARE_REPOSITORY_SESSION_TOKEN", "tok-hunter5")]);
    let shown = format!("{c:?}\n{}", toml::to_string(&c).unwrap());
    let all = [
        "hunter2",
        "pg-hunter3",
        "hunter4",
        "tok-hunter5",
        "hunter6",
        "hunter7",
    ];
    for secret in all {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
    // Every one of them is known for scrubbing.
    let secrets = c.secrets();
    for secret in all {
        assert!(
            secrets.iter().any(|s| s == secret),
            "{secret} not in secrets"
        );
    }
    assert!(c.sites["a"].health[0].expose().as_str().contains("hunter6"));
    let store = c.repository.store_config();
    assert_eq!(
        store.secret_access_key.as_ref().map(Secret::expose),
        Some("hunter2")
    );
    assert!(c.sites["a"].database.expose().contains("pg-hunter3"));
}

#[test]
fn environment_fills_secrets() {
    let text = "[repository]\nurl = \"s3://b\"\n\
                [sites.primary-1]\ndatabase = \"postgres://builder@h/db\"\nartifacts = \"s3://art\"\n\
                [sites.spare]\ndatabase = \"postgres://builder@h2/db\"\nartifacts = \"file:///srv/a\"\n";
    let mut c = load(text);
    c.apply_env([
        ("WARMSPARE_REPOSITORY_SECRET_ACCESS_KEY", "repo-secret"),
        ("WARMSPARE_REPOSITORY_ACCESS_KEY_ID", "repo-key"),
        ("WARMSPARE_SITES_PRIMARY_1_DATABASE_PASSWORD", "p@ss"),
        ("WARMSPARE_SITES_SPARE_DATABASE_PASSWORD", ""),
        ("AWS_ACCESS_KEY_ID", "aws-key"),
        ("AWS_SECRET_ACCESS_KEY", "aws-secret"),
        ("AWS_REGION", "eu-west-1"),
        ("HOME", "/root"),
    ]);
    let repo = c.repository.store_config();
    assert_eq!(repo.access_key_id.as_deref(), Some("repo-key"));
    assert_eq!(
        repo.secret_access_key.as_ref().map(Secret::expose),
        Some("repo-secret")
    );
    assert_eq!(repo.region.as_deref(), Some("eu-west-1"));
    let primary = &c.sites["primary-1"];
    assert_eq!(primary.database.expose(), "postgres://builder:p%40ss@h/db");
    let art = primary.artifacts_store_config().unwrap();
    assert_eq!(art.access_key_id.as_deref(), Some("aws-key"));
    assert_eq!(
        art.secret_access_key.as_ref().map(Secret::expose),
        Some("aws-secret")
    );
    // Empty values and file:// stores are left alone.
    let spare = &c.sites["spare"];
    assert!(!spare.database.has_password());
    assert_eq!(spare.artifacts_access_key_id, None);

    // AWS_* never mixes with a key from the file.
    let mut c = load("[repository]\nurl = \"s3://b\"\naccess_key_id = \"file-key\"\n");
    c.apply_env([
        ("AWS_ACCESS_KEY_ID", "aws-key"),
        ("AWS_SECRET_ACCESS_KEY", "aws-secret"),
    ]);
    assert_eq!(c.repository.access_key_id.as_deref(), Some("file-key"));
    assert_eq!(c.repository.secret_access_key, None);
}

#[test]
fn reconcile_section_parses_with_defaults() {
    let config = load("[repository]\nurl = \"file:///r\"\n");
    assert_eq!(config.reconcile, ReconcileConfig::default());
    assert!(config.reconcile.verify_digests);
    assert_eq!(config.reconcile.query, None);

    let config = load(
        "[repository]\nurl = \"file:///r\"\n[reconcile]\n\
         query = \"SELECT key, checksum FROM artifacts\"\ndigest = \"blake2b256\"\n\
         verify_digests = false\n",
    );
    assert_eq!(
        config.reconcile.query.as_deref(),
        Some("SELECT key, checksum FROM artifacts")
    );
    assert_eq!(config.reconcile.digest, DigestAlgorithm::Blake2b256);
    assert!(!config.reconcile.verify_digests);
    let config = load("[repository]\nurl = \"file:///r\"\n[reconcile]\ndigest = \"sha256\"\n");
    assert_eq!(config.reconcile.digest, DigestAlgorithm::Sha256);

    let e = config_error("[repository]\nurl = \"file:///r\"\n[reconcile]\nquery = \" \"\n");
    assert_eq!(e.key.as_deref(), Some("reconcile.query"), "{e}");
    let e = config_error("[repository]\nurl = \"file:///r\"\n[reconcile]\nqurey = \"x\"\n");
    assert!(e.to_string().contains("reconcile.qurey"), "{e}");
    let e = config_error("[repository]\nurl = \"file:///r\"\n[reconcile]\ndigest = \"md5\"\n");
    assert!(e.to_string().contains("reconcile.digest"), "{e}");
}
