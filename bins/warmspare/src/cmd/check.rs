//! `warmspare check`: validate the configuration and reach every endpoint.
//!
//! The checks run concurrently, each under its own time limit, and never
//! stop at the first failure: the point is a complete table of what works.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::Duration;

use warmspare_agent::Config;
use warmspare_agent::config::SiteConfig;
use warmspare_failover::probe::ProbeError;
use warmspare_failover::probe::postgres;
use warmspare_store::{CheckStatus, Location, Store, StoreConfig};

use super::parse_duration;
use crate::output::{self, Row, Status, one_line};
use crate::{EXIT_FAILED, EXIT_OK, Global};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Time limit of each check, such as "10s".
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
}

pub(crate) fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let config = super::load_config(global)?;
    let runtime = super::runtime()?;
    let mut rows = vec![config_row(global, &config)];
    rows.extend(runtime.block_on(run_checks(&config, args.timeout)));
    // The rows are built from redacted targets and secret-free errors;
    // scrubbing the known secrets once more costs nothing.
    let secrets = config.secrets();
    for row in &mut rows {
        row.scrub(&secrets);
    }

    let mut stdout = io::stdout().lock();
    if global.json {
        output::write_json(&mut stdout, &rows)?;
    } else {
        output::write_table(
            &mut stdout,
            ["CHECK", "TARGET", "STATUS", "DETAIL"],
            rows.iter().map(Row::cells),
        )?;
    }
    let count = |status| rows.iter().filter(|r| r.status == status).count();
    let (ok, failed, skipped) = (
        count(Status::Ok),
        count(Status::Failed),
        count(Status::Skipped),
    );
    let mut summary = format!("{ok} ok, {failed} failed");
    if skipped > 0 {
        summary.push_str(&format!(", {skipped} skipped"));
    }
    eprintln!("check: {summary}");
    Ok(ExitCode::from(if failed + skipped == 0 {
        EXIT_OK
    } else {
        EXIT_FAILED
    }))
}

fn config_row(global: &Global, config: &Config) -> Row {
    let mut detail = match config.sites.len() {
        1 => "1 site".to_owned(),
        n => format!("{n} sites"),
    };
    if let Some((name, _)) = config.current_site() {
        detail.push_str(&format!(", this is site {name}"));
    }
    Row::ok("config", global.config.display().to_string(), detail)
}

type Check<'a> = Pin<Box<dyn Future<Output = Vec<Row>> + Send + 'a>>;

async fn run_checks(config: &Config, timeout: Duration) -> Vec<Row> {
    let mut checks: Vec<Check<'_>> = Vec::new();
    let repo = config.repository.store_config();
    let target = store_target(&repo);
    checks.push(Box::pin(limited(
        "repository".to_owned(),
        target.clone(),
        timeout,
        check_repository(repo, target, timeout),
    )));
    for (name, site) in &config.sites {
        let check = format!("{name} database");
        let target = site.database.redacted();
        checks.push(Box::pin(limited(
            check.clone(),
            target.clone(),
            timeout,
            check_database(check.clone(), target, site, timeout),
        )));
        if let Some(store) = site.artifacts_store_config() {
            let check = format!("{name} artifacts");
            let target = store_target(&store);
            checks.push(Box::pin(limited(
                check.clone(),
                target.clone(),
                timeout,
                check_artifacts(name.clone(), check.clone(), target, store, timeout),
            )));
        }
    }
    futures::future::join_all(checks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Runs one check under the time limit; a check that runs out of time is
/// one failed row.
async fn limited(
    check: String,
    target: String,
    timeout: Duration,
    work: impl Future<Output = Vec<Row>>,
) -> Vec<Row> {
    match tokio::time::timeout(timeout, work).await {
        Ok(rows) => rows,
        Err(_) => vec![Row::failed(
            check,
            target,
            format!("no answer within {}", humantime::format_duration(timeout)),
        )],
    }
}

/// The store's URL plus its endpoint, if any; store URLs and endpoints
/// carry no credentials.
fn store_target(config: &StoreConfig) -> String {
    match &config.endpoint {
        Some(endpoint) => format!("{} at {endpoint}", config.url),
        None => config.url.clone(),
    }
}

/// Keeps the store's own retries inside the check's time limit, so that
/// the real error (connection refused, access denied) is reported rather
/// than a timeout.
fn for_check(mut config: StoreConfig, timeout: Duration) -> StoreConfig {
    let half = timeout / 2;
    config.max_retries = config.max_retries.min(1);
    config.retry_timeout = config.retry_timeout.min(half);
    config.connect_timeout = config.connect_timeout.min(half);
    config.read_timeout = config.read_timeout.min(half);
    config
}

/// Adds a hint to failed rows of an S3 store that has no credentials: the
/// S3 client then asks the cloud metadata service, whose errors confuse.
fn hint_credentials(mut rows: Vec<Row>, config: &StoreConfig, env_prefix: &str) -> Vec<Row> {
    let is_s3 = matches!(Location::parse(&config.url), Ok(Location::S3 { .. }));
    if is_s3 && config.access_key_id.is_none() {
        for row in rows.iter_mut().filter(|r| r.status == Status::Failed) {
            row.detail.push_str(&format!(
                " (no S3 credentials are configured: set them in the file, \
                 {env_prefix}ACCESS_KEY_ID / {env_prefix}SECRET_ACCESS_KEY or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
            ));
        }
    }
    rows
}

async fn check_repository(config: StoreConfig, target: String, timeout: Duration) -> Vec<Row> {
    let rows = repository_rows(&config, target, timeout).await;
    hint_credentials(rows, &config, "WARMSPARE_REPOSITORY_")
}

async fn repository_rows(config: &StoreConfig, target: String, timeout: Duration) -> Vec<Row> {
    let store = match Store::open(&for_check(config.clone(), timeout)) {
        Ok(store) => store,
        Err(e) => return vec![Row::failed("repository", target, one_line(&e))],
    };
    warmspare_store::check_repository(&store)
        .await
        .into_iter()
        .map(|outcome| Row {
            check: format!("repository {}", outcome.name),
            target: target.clone(),
            status: match outcome.status {
                CheckStatus::Ok => Status::Ok,
                CheckStatus::Skipped => Status::Skipped,
                _ => Status::Failed,
            },
            detail: outcome.detail,
        })
        .collect()
}

async fn check_database(
    check: String,
    target: String,
    site: &SiteConfig,
    timeout: Duration,
) -> Vec<Row> {
    let row = match postgres::inspect(site.database.expose(), timeout).await {
        Ok(info) => {
            let mut detail = format!("PostgreSQL {}, {}", info.server_version, info.role());
            if let Some(id) = info.system_identifier {
                detail.push_str(&format!(", system identifier {id}"));
            }
            Row::ok(check, target, detail)
        }
        Err(e) => Row::failed(check, target, probe_detail(&e)),
    };
    vec![row]
}

/// The error without the target (the row shows that already).
fn probe_detail(error: &ProbeError) -> String {
    match error {
        ProbeError::Unreachable { message, .. } => format!("unreachable: {message}"),
        ProbeError::AuthenticationFailed { message, .. } => {
            format!("authentication failed: {message}")
        }
        ProbeError::Timeout { after, .. } => {
            format!(
                "timeout: no answer within {}",
                humantime::format_duration(*after)
            )
        }
        ProbeError::InvalidTarget { message } => message.clone(),
        ProbeError::Other { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

async fn check_artifacts(
    site: String,
    check: String,
    target: String,
    config: StoreConfig,
    timeout: Duration,
) -> Vec<Row> {
    let prefix = format!(
        "WARMSPARE_SITES_{}_ARTIFACTS_",
        site.to_ascii_uppercase().replace('-', "_")
    );
    let row = artifacts_row(check, target, &config, timeout).await;
    hint_credentials(vec![row], &config, &prefix)
}

async fn artifacts_row(
    check: String,
    target: String,
    config: &StoreConfig,
    timeout: Duration,
) -> Row {
    // Opening a file:// store creates its directory; a check must not.
    if let Ok(Location::File { path }) = Location::parse(&config.url)
        && !path.is_dir()
    {
        return Row::failed(
            check,
            target,
            format!("{} is not a directory", path.display()),
        );
    }
    let store = match Store::open(&for_check(config.clone(), timeout)) {
        Ok(store) => store,
        Err(e) => return Row::failed(check, target, one_line(&e)),
    };
    match store.object_store().list_with_delimiter(None).await {
        Ok(listing) => Row::ok(
            check,
            target,
            format!(
                "listed {} objects and {} prefixes at the top level",
                listing.objects.len(),
                listing.common_prefixes.len()
            ),
        ),
        Err(e) => Row::failed(check, target, one_line(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_retries_fit_the_limit() {
        let c = for_check(StoreConfig::new("s3://b"), Duration::from_secs(10));
        assert!(c.max_retries <= 1);
        assert!(c.retry_timeout <= Duration::from_secs(5));
        assert!(c.connect_timeout <= Duration::from_secs(5));
    }

    #[test]
    fn probe_details_leave_out_the_target() {
        let e = ProbeError::AuthenticationFailed {
            target: "u@h:5432/db".into(),
            message: "password authentication failed for user \"u\"".into(),
        };
        assert_eq!(
            probe_detail(&e),
            "authentication failed: password authentication failed for user \"u\""
        );
    }
}
