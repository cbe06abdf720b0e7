//! `warmspare status`: the sites, the lease, each site's database role and
//! agent.
//!
//! Every probe is bounded by a short timeout; an unreachable database or
//! agent is reported, not an error. Exit code 0 when the lease and every
//! database could be read, 1 otherwise.

use std::io::{self, Write as _};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use warmspare_failover::probe::postgres::inspect;
use warmspare_failover::remote::agent_status;
use warmspare_store::Store;

use crate::cmd::lease::{self, LeaseView};
use crate::cmd::load_config;
use crate::{EXIT_FAILED, EXIT_OK, Global, output};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Limit on each database and agent request.
    #[arg(long, default_value = "3s", value_parser = crate::cmd::parse_duration)]
    timeout: Duration,
}

#[derive(Debug, Serialize)]
struct SiteView {
    name: String,
    /// "primary", "in recovery", or "unreachable: ...".
    database: String,
    database_ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    agent_url: Option<String>,
    /// The agent's `/status` answer, when it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    agent: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    agent_error: Option<String>,
    holds_lease: bool,
}

#[derive(Debug, Serialize)]
struct StatusView {
    lease: Option<LeaseView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lease_error: Option<String>,
    sites: Vec<SiteView>,
}

pub(crate) fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let config = load_config(global)?;
    let secrets = config.secrets();
    let store =
        Store::open(&config.repository.store_config()).context("cannot open the repository")?;
    let view = crate::cmd::runtime()?.block_on(async {
        let (lease, lease_error) =
            match tokio::time::timeout(args.timeout, lease::read(&store)).await {
                Ok(Ok(l)) => (Some(l), None),
                Ok(Err(e)) => (None, Some(format!("{e:#}"))),
                Err(_) => (
                    None,
                    Some("the repository did not answer in time".to_owned()),
                ),
            };
        let holder = lease
            .as_ref()
            .and_then(|l| l.record.as_ref())
            .filter(|r| !r.released)
            .map(|r| r.holder.clone());
        let mut sites = Vec::new();
        for (name, site) in &config.sites {
            let (database, database_ok) = match inspect(site.database.expose(), args.timeout).await
            {
                Ok(info) => (info.role().to_owned(), true),
                Err(e) => (format!("unreachable: {e}"), false),
            };
            let agent_url = site.agent.as_ref().map(|a| a.as_str().to_owned());
            let (agent, agent_error) = match &agent_url {
                None => (None, None),
                Some(url) => match agent_status(url, args.timeout).await {
                    Ok(v) => (Some(v), None),
                    Err(e) => (None, Some(e.to_string())),
                },
            };
            sites.push(SiteView {
                name: name.clone(),
                database: output::scrub(&database, &secrets),
                database_ok,
                agent_url,
                agent,
                agent_error,
                holds_lease: holder.as_deref() == Some(name.as_str()),
            });
        }
        StatusView {
            lease,
            lease_error,
            sites,
        }
    });
    let mut out = io::stdout().lock();
    if global.json {
        output::write_json(&mut out, &view)?;
    } else {
        match (&view.lease, &view.lease_error) {
            (
                Some(LeaseView {
                    record: Some(r), ..
                }),
                _,
            ) => writeln!(
                out,
                "lease: {} at epoch {}{}",
                r.holder,
                r.epoch,
                if r.released { " (released)" } else { "" }
            )?,
            (Some(_), _) => writeln!(out, "lease: none")?,
            (None, Some(e)) => writeln!(out, "lease: unreadable: {e}")?,
            (None, None) => writeln!(out, "lease: unknown")?,
        }
        let rows: Vec<[String; 4]> = view
            .sites
            .iter()
            .map(|s| {
                [
                    s.name.clone(),
                    if s.holds_lease { "yes" } else { "no" }.to_owned(),
                    s.database.clone(),
                    match (&s.agent_url, &s.agent_error) {
                        (None, _) => "not configured".to_owned(),
                        (Some(_), Some(e)) => e.clone(),
                        (Some(_), None) => "ok".to_owned(),
                    },
                ]
            })
            .collect();
        output::write_table(
            &mut out,
            ["SITE", "LEASE", "DATABASE", "AGENT"],
            rows.iter().map(|r| [r[0].as_str(), &r[1], &r[2], &r[3]]),
        )?;
    }
    let ok = view.lease.is_some() && view.sites.iter().all(|s| s.database_ok);
    Ok(ExitCode::from(if ok { EXIT_OK } else { EXIT_FAILED }))
}
