//! `warmspare failover [--to SITE] [--force]` and `warmspare switchover --to
//! SITE`: requests to the agents, which run the failover driver.
//!
//! The CLI never writes the lease: only a site's driver does, under the
//! policy's rules (a failover is sent to the site that is to take over, a
//! switchover to the current holder). The request is `POST /failover` with
//! the bearer token from `[agent] token_file`. An agent that cannot take
//! the command (503: no driver running, or the policy refused it) makes
//! the command fail with exit code 1 and the agent's reason.
//!
//! A switchover then waits (up to `--wait`) for its outcome, asking both
//! agents' `/status`: the successor accepts traffic (it replayed the old
//! primary's final WAL position and promoted: exit 0), or the holder
//! abandoned the switchover, or the successor reports that it cannot reach
//! the final position (exit 1 with the agent's message).

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
    /// Hand over even when the holder's final WAL position cannot be read
    /// (its database is down): the new site then promotes with what it has
    /// replayed, and later transactions are lost.
    #[arg(long)]
    force: bool,
    /// How long to wait for the new site to accept traffic; 0 returns once
    /// the holder accepted the command. Default: the configuration's
    /// `[failover] switchover_timeout` plus a lease TTL and 30 s for the
    /// promotion, and at least 2 minutes.
    #[arg(long, value_name = "DURATION", value_parser = crate::cmd::parse_duration)]
    wait: Option<Duration>,
}

/// How long `switchover` waits by default: the holder may wait up to
/// `switchover_timeout` for the new site to catch up before it releases
/// the lease, the new site then sees the release within a TTL, and
/// promotes.
fn default_wait(failover: &warmspare_agent::config::FailoverConfig) -> Duration {
    (failover.switchover_timeout + failover.lease_ttl + Duration::from_secs(30))
        .max(Duration::from_secs(120))
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
    let answer = request(&config, site, &command)?;
    print_answer(global, site, &answer)?;
    Ok(ExitCode::from(EXIT_OK))
}

/// Sends `command` to the agent of `site`; its answer.
fn request(
    config: &warmspare_agent::Config,
    site: &str,
    command: &AgentCommand,
) -> anyhow::Result<serde_json::Value> {
    let url = agent_of(config, site)?;
    let token = token(config)?;
    crate::cmd::runtime()?
        .block_on(agent_command(&url, &token, command, TIMEOUT))
        .map_err(|e| anyhow::anyhow!(output::scrub(&e.to_string(), std::slice::from_ref(&token))))
}

fn print_answer(global: &Global, site: &str, answer: &serde_json::Value) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    if global.json {
        output::write_json(&mut out, answer)?;
    } else {
        let message = answer
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or("accepted");
        writeln!(out, "{site}: {message}")?;
    }
    Ok(())
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
    let command = AgentCommand::Switchover {
        to: args.to.clone(),
        force: args.force,
    };
    let answer = request(&config, &holder, &command)?;
    let wait = args.wait.unwrap_or_else(|| default_wait(&config.failover));
    if wait.is_zero() {
        print_answer(global, &holder, &answer)?;
        return Ok(ExitCode::from(EXIT_OK));
    }
    if !global.json {
        print_answer(global, &holder, &answer)?;
    }
    let agents = (agent_of(&config, &holder)?, agent_of(&config, &args.to)?);
    let outcome = crate::cmd::runtime()?.block_on(switchover_outcome(agents, wait));
    let mut out = io::stdout().lock();
    match outcome {
        Ok(epoch) => {
            if global.json {
                let mut answer = answer;
                answer["completed"] = serde_json::json!(true);
                answer["epoch"] = serde_json::json!(epoch);
                output::write_json(&mut out, &answer)?;
            } else {
                let epoch = epoch.map_or_else(String::new, |e| format!(" at epoch {e}"));
                writeln!(out, "{}: promoted{epoch}, accepting traffic", args.to)?;
            }
            Ok(ExitCode::from(EXIT_OK))
        }
        Err(why) => bail!("switchover from {holder} to {}: {why}", args.to),
    }
}

/// Polls the holder's and the successor's `/status` until the successor
/// accepts traffic (its epoch), or one of them reports the switchover
/// failed, or `wait` passes.
async fn switchover_outcome(
    (holder, successor): (String, String),
    wait: Duration,
) -> Result<Option<u64>, String> {
    use warmspare_failover::remote::agent_status;
    let deadline = tokio::time::Instant::now() + wait;
    let alert = |status: &serde_json::Value| {
        let a = &status["failover"]["last_alert"];
        (
            a["kind"].as_str().unwrap_or_default().to_owned(),
            a["message"].as_str().unwrap_or_default().to_owned(),
        )
    };
    loop {
        if let Ok(status) = agent_status(&successor, TIMEOUT).await {
            let failover = &status["failover"];
            if failover["may_accept_traffic"].as_bool() == Some(true) {
                return Ok(failover["epoch"].as_u64());
            }
            // A stall alert left from an earlier attempt does not count:
            // only one of the site that holds the lease and waits.
            let (kind, message) = alert(&status);
            if kind == "SwitchoverStalled" && failover["role"] == "promoting" {
                return Err(message);
            }
        }
        if let Ok(status) = agent_status(&holder, TIMEOUT).await {
            let (kind, message) = alert(&status);
            if kind == "SwitchoverAborted" {
                return Err(message);
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "the new site did not accept traffic within {} (see `warmspare status`)",
                humantime::format_duration(wait)
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[test]
    fn the_default_wait_follows_the_switchover_timeout() {
        let mut failover = warmspare_agent::config::FailoverConfig::default();
        assert_eq!(default_wait(&failover), Duration::from_secs(120));
        failover.switchover_timeout = Duration::from_secs(600);
        failover.lease_ttl = Duration::from_secs(10);
        assert_eq!(default_wait(&failover), Duration::from_secs(640));
    }

    /// An "agent" answering every request with `status` as its `/status`.
    async fn agent(status: serde_json::Value) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let body = status.to_string();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(reply.as_bytes()).await;
                });
            }
        });
        format!("http://{addr}")
    }

    fn status(accepting: bool, epoch: u64, alert: Option<(&str, &str)>) -> serde_json::Value {
        let role = match (accepting, epoch) {
            (true, _) => "primary",
            (false, 2) => "promoting",
            _ => "standby",
        };
        serde_json::json!({ "failover": {
            "role": role,
            "may_accept_traffic": accepting,
            "epoch": epoch,
            "last_alert": alert.map(|(k, m)| serde_json::json!({ "kind": k, "message": m })),
        }})
    }

    #[tokio::test]
    async fn the_switchover_outcome_comes_from_both_agents() {
        let wait = Duration::from_secs(5);
        let holder = agent(status(false, 1, None)).await;
        let done = agent(status(true, 2, Some(("Promoted", "spare promoted")))).await;
        let outcome = switchover_outcome((holder.clone(), done), wait).await;
        assert_eq!(outcome, Ok(Some(2)));

        let stalled = agent(status(
            false,
            2,
            Some(("SwitchoverStalled", "spare cannot reach 0/3000060")),
        ))
        .await;
        let outcome = switchover_outcome((holder, stalled), wait).await;
        assert_eq!(outcome, Err("spare cannot reach 0/3000060".to_owned()));

        let aborted = agent(status(
            true,
            1,
            Some(("SwitchoverAborted", "switchover abandoned")),
        ))
        .await;
        let waiting = agent(status(false, 0, None)).await;
        let outcome = switchover_outcome((aborted, waiting.clone()), wait).await;
        assert_eq!(outcome, Err("switchover abandoned".to_owned()));

        let idle = agent(status(false, 1, None)).await;
        let outcome = switchover_outcome((idle, waiting), Duration::from_millis(200)).await;
        assert!(
            outcome
                .as_ref()
                .is_err_and(|e| e.contains("did not accept traffic within")),
            "{outcome:?}"
        );
    }
}
