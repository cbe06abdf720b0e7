//! `warmspare failover [--to SITE] [--force]` and `warmspare switchover --to
//! SITE`: requests to the agents, which run the failover driver.
//!
//! The CLI never writes the lease: only a site's driver does, under the
//! policy's rules (a failover is sent to the site that is to take over, a
//! switchover to the current holder). The request is `POST /failover` with
//! the bearer token from `[agent] token_file`. An agent that cannot take
//! the command (503: no driver running, or the policy refused it) makes
//! the command fail with exit code 1 and the agent's reason.

use std::io::{self, Write as _};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use warmspare_failover::remote::{AgentCommand, agent_command};
use warmspare_store::Store;

use crate::cmd::{lease, load_config};
use crate::{EXIT_OK, Global, UsageError, output};

/// `failover`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The site to promote [default: the site that does not hold the lease].
    #[arg(long, value_name = "SITE")]
    to: Option<String>,
    /// Promote even when the spare may be further behind than
    /// `max_data_loss` (committed data may be lost).
    #[arg(long)]
    force: bool,
}

/// `switchover`.
#[derive(Debug, clap::Args)]
pub(crate) struct SwitchoverArgs {
    /// The site that is to take over.
    #[arg(long, value_name = "SITE")]
    to: String,
}

const TIMEOUT: Duration = Duration::from_secs(10);

fn agent_of(config: &warmspare_agent::Config, site: &str) -> anyhow::Result<String> {
    let Some(s) = config.sites.get(site) else {
        return Err(UsageError(format!("no [sites.{site}] in the configuration")).into());
    };
    match &s.agent {
        Some(a) => Ok(a.as_str().to_owned()),
        None => Err(UsageError(format!(
            "[sites.{site}] has no `agent` URL: the command is sent to the site's agent"
        ))
        .into()),
    }
}

fn token(config: &warmspare_agent::Config) -> anyhow::Result<String> {
    let Some(path) = &config.agent.token_file else {
        return Err(UsageError(
            "[agent] token_file is not set: the agents' mutating endpoints need its token".into(),
        )
        .into());
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| UsageError(format!("cannot read token file {}: {e}", path.display())))?;
    Ok(text.trim().to_owned())
}

async fn holder(config: &warmspare_agent::Config) -> anyhow::Result<Option<String>> {
    let store =
        Store::open(&config.repository.store_config()).context("cannot open the repository")?;
    let view = lease::read(&store).await?;
    Ok(view.record.filter(|r| !r.released).map(|r| r.holder))
}

fn send(global: &Global, site: &str, command: AgentCommand) -> anyhow::Result<ExitCode> {
    let config = load_config(global)?;
    let url = agent_of(&config, site)?;
    let token = token(&config)?;
    let answer = crate::cmd::runtime()?
        .block_on(agent_command(&url, &token, &command, TIMEOUT))
        .map_err(|e| {
            anyhow::anyhow!(output::scrub(&e.to_string(), std::slice::from_ref(&token)))
        })?;
    let mut out = io::stdout().lock();
    if global.json {
        output::write_json(&mut out, &answer)?;
    } else {
        let message = answer
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or("accepted");
        writeln!(out, "{site}: {message}")?;
    }
    Ok(ExitCode::from(EXIT_OK))
}

pub(crate) fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let to = match args.to {
        Some(to) => to,
        None => {
            let config = load_config(global)?;
            let holder = crate::cmd::runtime()?.block_on(holder(&config))?;
            let others: Vec<&String> = config
                .sites
                .keys()
                .filter(|s| Some(s.as_str()) != holder.as_deref())
                .collect();
            match others.as_slice() {
                [one] => (*one).clone(),
                _ => bail!(UsageError(
                    "cannot tell which site to promote: name it with --to SITE".into()
                )),
            }
        }
    };
    send(global, &to, AgentCommand::Failover { force: args.force })
}

pub(crate) fn run_switchover(global: &Global, args: SwitchoverArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(global)?;
    let holder = crate::cmd::runtime()?.block_on(holder(&config))?;
    let Some(holder) = holder else {
        bail!("no site holds the lease: nothing to switch over (use `warmspare failover`)");
    };
    if holder == args.to {
        bail!("{} already holds the lease", args.to);
    }
    send(global, &holder, AgentCommand::Switchover { to: args.to })
}
