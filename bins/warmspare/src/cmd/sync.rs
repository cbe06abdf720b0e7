//! `warmspare sync`: mirror one artifact store into another.
//!
//! Without `--from`/`--to` the stores come from the configuration: the
//! source is `--from-site`, else the current site (`--site` or `site =
//! ...`): the site whose artifacts are authoritative is the one that runs
//! the mirror, so after a failover the direction follows the new active
//! site. The target is `--to-site`, else the only other site with an
//! artifact store. A URL given with `--from`/`--to` is opened with the
//! default settings plus the usual `AWS_*` variables (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`, and
//! `AWS_ALLOW_HTTP=true` for a plain-http endpoint), never with the
//! repository's or a site's credentials.

use std::io::{self, IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use warmspare_agent::Config;
use warmspare_agent::config::SiteConfig;
use warmspare_replicate::{
    Endpoint, SyncEvent, SyncOptions, SyncReport, parse_byte_rate, sync_endpoints,
};
use warmspare_store::{Store, StoreConfig};

use crate::output::{self, one_line, scrub};
use crate::repo;
use crate::{EXIT_FAILED, EXIT_OK, Global, UsageError};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Without --from/--to: the current site's artifact store (or \
    --from-site) is mirrored into the other site's (or --to-site). URLs given with \
    --from/--to use the default settings plus AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, \
    AWS_REGION, AWS_ENDPOINT_URL and AWS_ALLOW_HTTP=true from the environment."
)]
pub(crate) struct Args {
    /// The source store URL (s3://bucket/prefix or file:///path).
    #[arg(long, value_name = "URL", requires = "to", conflicts_with_all = ["from_site", "to_site"])]
    from: Option<String>,

    /// The target store URL.
    #[arg(long, value_name = "URL", requires = "from")]
    to: Option<String>,

    /// The site whose artifacts are copied [default: the current site].
    #[arg(long, value_name = "NAME")]
    from_site: Option<String>,

    /// The site that receives them [default: the other site].
    #[arg(long, value_name = "NAME")]
    to_site: Option<String>,

    /// Plan only: list, compare and report; write and delete nothing.
    #[arg(long)]
    dry_run: bool,

    /// Delete target objects that the source does not have (after every
    /// copy succeeded, within --max-delete and half the target).
    #[arg(long)]
    delete: bool,

    #[command(flatten)]
    transfer: TransferArgs,
}

/// Options shared by the commands that move artifacts.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct TransferArgs {
    /// At most this many deletions per run, unless --force.
    #[arg(long, value_name = "N", default_value_t = warmspare_replicate::DEFAULT_MAX_DELETE)]
    max_delete: u64,

    /// Delete beyond --max-delete and the half-the-target limit, and mirror
    /// an empty source (never after a failed copy or listing).
    #[arg(long)]
    force: bool,

    /// Objects transferred at once.
    #[arg(long, value_name = "N", default_value_t = warmspare_replicate::DEFAULT_CONCURRENCY,
          value_parser = super::sync::parse_concurrency)]
    concurrency: usize,

    /// Byte-rate limit over all transfers, such as 10M (bytes per second;
    /// K, M, G are powers of 1024).
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    bwlimit: Option<u64>,
}

fn parse_rate(text: &str) -> Result<u64, String> {
    parse_byte_rate(text).map_err(|e| e.to_string())
}

/// A number of concurrent transfers: 1 to 1024.
pub(crate) fn parse_concurrency(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if (1..=1024).contains(&n) => Ok(n),
        _ => Err("expected a number from 1 to 1024".into()),
    }
}

impl TransferArgs {
    /// The library options these flags describe.
    pub(crate) fn options(&self) -> SyncOptions {
        SyncOptions::default()
            .with_max_delete(self.max_delete)
            .with_force(self.force)
            .with_concurrency(self.concurrency)
            .with_bwlimit(self.bwlimit)
    }
}

/// The `--json` summary of a run that moved artifacts.
#[derive(Debug, Serialize)]
pub(crate) struct Summary {
    pub(crate) source: String,
    pub(crate) target: String,
    pub(crate) dry_run: bool,
    pub(crate) listed: u64,
    pub(crate) target_listed: u64,
    pub(crate) copied: u64,
    pub(crate) skipped: u64,
    pub(crate) extra: u64,
    pub(crate) deleted: u64,
    pub(crate) delete_deferred: u64,
    pub(crate) hashed: u64,
    pub(crate) vanished: u64,
    pub(crate) bytes: u64,
    pub(crate) bytes_read: u64,
    pub(crate) retries: u64,
    pub(crate) failed: u64,
    pub(crate) seconds: f64,
    pub(crate) delete_refused: Option<String>,
    pub(crate) errors: Vec<String>,
}

impl Summary {
    pub(crate) fn new(source: String, target: String, r: &SyncReport, secrets: &[String]) -> Self {
        Summary {
            source,
            target,
            dry_run: r.dry_run,
            listed: r.listed,
            target_listed: r.target_listed,
            copied: r.copied,
            skipped: r.skipped,
            extra: r.extra,
            deleted: r.deleted,
            delete_deferred: r.delete_deferred,
            hashed: r.hashed,
            vanished: r.vanished,
            bytes: r.bytes,
            bytes_read: r.bytes_read,
            retries: r.retries,
            failed: r.failed,
            seconds: r.seconds,
            delete_refused: r.delete_refused.as_ref().map(|d| d.to_string()),
            errors: r
                .errors
                .iter()
                .map(|e| scrub(&one_line(e), secrets))
                .collect(),
        }
    }
}

pub(crate) fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let (source, target, secrets) = match (&args.from, &args.to) {
        (Some(from), Some(to)) => {
            // Bare URLs need no configuration file.
            let config = match global.config.exists() {
                true => Some(super::load_config(global)?),
                false => None,
            };
            let mut secrets = repo::url_secrets(from);
            secrets.extend(repo::url_secrets(to));
            if let Some(config) = &config {
                secrets = repo::secrets(config, [from.as_str(), to.as_str()]);
            }
            let source = open_url(from, Side::Source, &secrets)?;
            let target = open_url(to, Side::Target, &secrets)?;
            (source, target, secrets)
        }
        _ => {
            let config = super::load_config(global)?;
            let (from, to) = configured_pair(&config, &args)?;
            let secrets = repo::secrets(&config, []);
            let source = open_site(&config, from, Side::Source, &secrets)?;
            let target = open_site(&config, to, Side::Target, &secrets)?;
            (source, target, secrets)
        }
    };
    if source.display_url() == target.display_url() {
        return Err(UsageError(format!(
            "the source and the target are the same store ({})",
            source.display_url()
        ))
        .into());
    }
    let options = args
        .transfer
        .options()
        .with_delete(args.delete)
        .with_dry_run(args.dry_run)
        .with_source_id(source.display_url());
    eprintln!(
        "sync: {} -> {}{}",
        source.display_url(),
        target.display_url(),
        if args.dry_run { " (dry run)" } else { "" }
    );

    let progress = std::sync::Arc::new(ArtifactProgress::new("sync"));
    let report = super::runtime()?.block_on({
        let progress = std::sync::Arc::clone(&progress);
        let (source, target) = (source.clone(), target.clone());
        async move {
            sync_endpoints(
                &Endpoint::for_store(&source),
                &Endpoint::for_store(&target),
                &options,
                move |e: &SyncEvent<'_>| progress.event(e),
            )
            .await
        }
    });
    progress.finish();
    let report = report.map_err(|e| failure(&e, &secrets))?;
    let summary = Summary::new(
        scrub(&source.display_url(), &secrets),
        scrub(&target.display_url(), &secrets),
        &report,
        &secrets,
    );
    print_summary("sync", global.json, &summary, args.delete)?;
    Ok(exit_code(&report))
}

/// Exit code 1 when an object failed or requested deletions were refused.
pub(crate) fn exit_code(report: &SyncReport) -> ExitCode {
    if report.is_success() {
        ExitCode::from(EXIT_OK)
    } else {
        ExitCode::from(EXIT_FAILED)
    }
}

/// Prints the summary (JSON on stdout, or one line for people) and, on
/// stderr, each error and why deletions were refused.
pub(crate) fn print_summary(
    command: &str,
    json: bool,
    s: &Summary,
    delete_requested: bool,
) -> anyhow::Result<()> {
    if json {
        output::write_json(&mut io::stdout().lock(), s)?;
    } else {
        let planned = if s.dry_run { " (dry run: planned)" } else { "" };
        let mut line = format!(
            "{} listed, {} copied ({}), {} up to date, {} deleted in {}{planned}",
            s.listed,
            s.copied,
            output::bytes(s.bytes),
            s.skipped,
            s.deleted,
            output::duration(Duration::from_secs_f64(s.seconds.max(0.0))),
        );
        if s.extra > s.deleted && !delete_requested {
            line.push_str(&format!(
                "; {} objects only on the target (kept; --delete removes them)",
                s.extra
            ));
        }
        println!("{line}");
    }
    for e in &s.errors {
        eprintln!("{command}: failed: {e}");
    }
    if s.failed > s.errors.len() as u64 {
        eprintln!(
            "{command}: {} more failures not shown",
            s.failed - s.errors.len() as u64
        );
    }
    if s.failed > 0 {
        eprintln!(
            "error: {command}: {} object(s) failed; run it again (a re-run converges)",
            s.failed
        );
    }
    if let Some(refused) = &s.delete_refused {
        eprintln!("error: {command}: {refused}");
    }
    Ok(())
}

/// Which end of a transfer a store is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Source,
    Target,
}

/// Opens a store from a bare URL: default settings plus `AWS_*`.
pub(crate) fn open_url(url: &str, side: Side, secrets: &[String]) -> anyhow::Result<Store> {
    let mut config = StoreConfig::new(url);
    config.apply_env(std::env::vars());
    if std::env::var("AWS_ALLOW_HTTP").is_ok_and(|v| v.eq_ignore_ascii_case("true")) {
        config.allow_http = true;
    }
    open(&config, side, secrets)
}

fn open(config: &StoreConfig, side: Side, secrets: &[String]) -> anyhow::Result<Store> {
    if side == Side::Source
        && let Some(path) = config.url.strip_prefix("file://")
        && !std::path::Path::new(path).is_dir()
    {
        // Opening a file:// store creates its directory: a mistyped source
        // would look like an empty one.
        return Err(UsageError(format!("source directory {path} does not exist")).into());
    }
    Store::open(config).map_err(|e| {
        let text = scrub(&one_line(&e), secrets);
        match e {
            warmspare_store::Error::InvalidConfig { .. }
            | warmspare_store::Error::UnsupportedUrl { .. } => UsageError(text).into(),
            _ => anyhow::Error::msg(text),
        }
    })
}

/// Opens a site's artifact store with the site's settings.
pub(crate) fn open_site(
    config: &Config,
    name: &str,
    side: Side,
    secrets: &[String],
) -> anyhow::Result<Store> {
    let site = config
        .sites
        .get(name)
        .ok_or_else(|| UsageError(format!("no [sites.{name}] table in the configuration")))?;
    let store_config = site_store_config(name, site)?;
    open(&store_config, side, secrets)
}

fn site_store_config(name: &str, site: &SiteConfig) -> anyhow::Result<StoreConfig> {
    site.artifacts_store_config().ok_or_else(|| {
        UsageError(format!(
            "site {name} has no artifact store (set `artifacts` in [sites.{name}])"
        ))
        .into()
    })
}

/// The configured source and target sites (see the module docs).
fn configured_pair<'a>(config: &'a Config, args: &'a Args) -> anyhow::Result<(&'a str, &'a str)> {
    let from = match &args.from_site {
        Some(name) => name.as_str(),
        None => match config.current_site() {
            Some((name, _)) => name,
            None => {
                return Err(UsageError(
                    "which site is the source? pass --from-site, --site or set `site = \"...\"` \
                     (or give --from URL --to URL)"
                        .into(),
                )
                .into());
            }
        },
    };
    for name in [Some(from), args.to_site.as_deref()].into_iter().flatten() {
        if !config.sites.contains_key(name) {
            let known: Vec<&str> = config.sites.keys().map(String::as_str).collect();
            return Err(UsageError(format!(
                "no site {name:?} in the configuration (known: {})",
                known.join(", ")
            ))
            .into());
        }
    }
    let to = match &args.to_site {
        Some(name) => name.as_str(),
        None => {
            let others: Vec<&str> = config
                .sites
                .iter()
                .filter(|(name, site)| name.as_str() != from && site.artifacts.is_some())
                .map(|(name, _)| name.as_str())
                .collect();
            match others.as_slice() {
                [one] => *one,
                [] => {
                    return Err(UsageError(format!(
                        "no other site with an artifact store to mirror site {from} into"
                    ))
                    .into());
                }
                _ => {
                    return Err(UsageError(format!(
                        "which site is the target? pass --to-site (one of: {})",
                        others.join(", ")
                    ))
                    .into());
                }
            }
        }
    };
    if from == to {
        return Err(UsageError(format!("site {from} cannot be mirrored into itself")).into());
    }
    Ok((from, to))
}

/// A replication error as one scrubbed line; bad options, unknown ids and
/// key problems (`repo::is_key_error`) are usage errors.
pub(crate) fn failure(error: &warmspare_replicate::Error, secrets: &[String]) -> anyhow::Error {
    let text = scrub(&one_line(error), secrets);
    match error {
        // A recovery point authenticated by another key: a wrong key.
        warmspare_replicate::Error::Repository(e) if crate::repo::is_key_error(e) => {
            UsageError(crate::repo::key_error_line(e, text)).into()
        }
        warmspare_replicate::Error::InvalidOptions { .. } => UsageError(text).into(),
        warmspare_replicate::Error::NotFound { .. } => UsageError(text).into(),
        _ => anyhow::Error::msg(text),
    }
}

/// Progress of a command that moves artifacts, on stderr: a counter line
/// rewritten in place on a terminal (at most four times a second), one
/// line every ten seconds otherwise; deletions, retries and failures
/// always get their own line.
#[derive(Debug)]
pub(crate) struct ArtifactProgress {
    command: &'static str,
    terminal: bool,
    state: Mutex<Counts>,
}

#[derive(Debug)]
struct Counts {
    listed: u64,
    copied: u64,
    skipped: u64,
    bytes: u64,
    started: Instant,
    drawn: Option<Instant>,
    width: usize,
}

impl ArtifactProgress {
    pub(crate) fn new(command: &'static str) -> Self {
        ArtifactProgress {
            command,
            terminal: io::stderr().is_terminal(),
            state: Mutex::new(Counts {
                listed: 0,
                copied: 0,
                skipped: 0,
                bytes: 0,
                started: Instant::now(),
                drawn: None,
                width: 0,
            }),
        }
    }

    pub(crate) fn event(&self, event: &SyncEvent<'_>) {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match event {
            SyncEvent::Listed { .. } => s.listed += 1,
            SyncEvent::Copied { .. } => s.copied += 1,
            SyncEvent::Skipped { .. } => s.skipped += 1,
            SyncEvent::Bytes(n) => s.bytes += n,
            SyncEvent::Deleted { key } => self.line(&mut s, &format!("delete {key}")),
            SyncEvent::Retrying {
                key,
                attempt,
                error,
            } => self.line(
                &mut s,
                &format!(
                    "retrying {key} after attempt {attempt}: {}",
                    one_line(*error)
                ),
            ),
            SyncEvent::Failed { key, error } => {
                self.line(&mut s, &format!("failed {key}: {}", one_line(*error)));
            }
            SyncEvent::WaitingForPrune {
                marker,
                stale_after,
            } => self.line(
                &mut s,
                &format!(
                    "waiting for a running prune to finish ({marker}; a prune that stops \
                     refreshing it is taken for dead after {})",
                    output::duration(*stale_after)
                ),
            ),
            _ => {}
        }
        let now = Instant::now();
        let every = if self.terminal {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(10)
        };
        if s.drawn.is_none_or(|at| now.duration_since(at) >= every) {
            s.drawn = Some(now);
            self.draw(&mut s);
        }
    }

    pub(crate) fn finish(&self) {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if s.width > 0 {
            let _ = writeln!(io::stderr().lock());
            s.width = 0;
        }
    }

    fn counter(&self, s: &Counts) -> String {
        format!(
            "{}: {} listed, {} copied, {} up to date, {} in {}",
            self.command,
            s.listed,
            s.copied,
            s.skipped,
            output::bytes(s.bytes),
            output::duration(s.started.elapsed()),
        )
    }

    fn draw(&self, s: &mut Counts) {
        let line = self.counter(s);
        let mut err = io::stderr().lock();
        if self.terminal {
            let pad = s.width.saturating_sub(line.chars().count());
            s.width = line.chars().count();
            let _ = write!(err, "\r{line}{}", " ".repeat(pad));
            let _ = err.flush();
        } else {
            let _ = writeln!(err, "{line}");
        }
    }

    fn line(&self, s: &mut Counts, text: &str) {
        let mut err = io::stderr().lock();
        let start = if s.width > 0 { "\r" } else { "" };
        let pad = s.width.saturating_sub(text.len() + self.command.len() + 2);
        let _ = writeln!(err, "{start}{}: {text}{}", self.command, " ".repeat(pad));
        s.width = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::from_toml_str(text, "t.toml").unwrap()
    }

    fn args(from_site: Option<&str>, to_site: Option<&str>) -> Args {
        Args {
            from: None,
            to: None,
            from_site: from_site.map(str::to_owned),
            to_site: to_site.map(str::to_owned),
            dry_run: false,
            delete: false,
            transfer: TransferArgs {
                max_delete: 1,
                force: false,
                concurrency: 1,
                bwlimit: None,
            },
        }
    }

    #[test]
    fn sites_pair_up() {
        let text = "site = \"primary\"\n[repository]\nurl = \"file:///r\"\n\
            [sites.primary]\ndatabase = \"postgres://h/db\"\nartifacts = \"file:///a\"\n\
            [sites.spare]\ndatabase = \"postgres://h2/db\"\nartifacts = \"file:///b\"\n";
        let c = config(text);
        let a = args(None, None);
        assert_eq!(configured_pair(&c, &a).unwrap(), ("primary", "spare"));
        let a = args(Some("spare"), None);
        assert_eq!(configured_pair(&c, &a).unwrap(), ("spare", "primary"));
        let a = args(Some("spare"), Some("spare"));
        assert!(configured_pair(&c, &a).is_err());
        let a = args(Some("nope"), None);
        assert!(configured_pair(&c, &a).is_err());
        let c = config(&text.replacen("site = \"primary\"\n", "", 1));
        let e = configured_pair(&c, &args(None, None)).unwrap_err();
        assert!(e.to_string().contains("--from-site"), "{e}");
    }
}
