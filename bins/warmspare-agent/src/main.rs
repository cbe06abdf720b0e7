//! `warmspare-agent`: the daemon that runs at each site. It reads the
//! configuration, the environment and the token file, installs logging and
//! signal handlers, and runs [`warmspare_agent::Agent`]. Exit codes: 0 after
//! a clean shutdown, 1 when the agent fails, 2 for bad usage or
//! configuration.

#![forbid(unsafe_code)]

mod setup;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use warmspare_agent::{Agent, AgentOptions, Config};

/// Run the warmspare agent of one site: schedules, endpoints, failover.
#[derive(Debug, Parser)]
#[command(name = "warmspare-agent", version, about, max_term_width = 100)]
struct Cli {
    /// The configuration file.
    #[arg(long, value_name = "FILE", env = "WARMSPARE_CONFIG")]
    config: PathBuf,
    /// Which [sites.*] entry this agent is (overrides `site` in the file).
    #[arg(long, value_name = "NAME", env = "WARMSPARE_SITE")]
    site: Option<String>,
    /// Log lines for people or one JSON object per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    /// Log filter such as `info` or `warmspare_agent=debug`; RUST_LOG when
    /// unset, else `info`.
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
    /// Check the configuration and the token file, then exit.
    #[arg(long)]
    check_config: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

/// A failure caused by how the agent was called or configured: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(exit_code_of(&error))
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    setup::install_logging(cli.log_format, cli.log_level.as_deref())?;

    let origin = cli.config.display().to_string();
    let text = std::fs::read_to_string(&cli.config)
        .map_err(|e| UsageError(format!("cannot read config {origin}: {e}")))?;
    let mut config = Config::from_toml_str(&text, &origin)?;
    config.apply_env(std::env::vars());

    let mut options = AgentOptions::new().standard_jobs();
    if let Some(site) = cli.site {
        options = options.site(site);
    }
    if let Some(path) = &config.repository.encryption_key_file {
        options = options.encryption_key(setup::read_encryption_key(path)?);
    }
    let token_file = config.agent.token_file.clone();
    if let Some(path) = &token_file {
        options = options.token(setup::read_token(path)?);
    }
    let agent = Agent::new(config, options)?;
    if cli.check_config {
        println!("{origin}: configuration is valid for site {}", agent.site());
        return Ok(ExitCode::SUCCESS);
    }

    let unavailable = agent.unavailable_jobs();
    if !unavailable.is_empty() {
        tracing::warn!(
            jobs = unavailable.join(", "),
            "scheduled jobs are not available in this build and will not run"
        );
    }
    if token_file.is_none() {
        tracing::warn!("no agent.token_file: POST /pause, /resume and /failover are refused");
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let shutdown = setup::shutdown_signal()?;
        agent.run(shutdown).await?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Exit code 2 for configuration and usage errors, 1 for everything else.
fn exit_code_of(error: &anyhow::Error) -> u8 {
    let bad_config = error.chain().any(|cause| {
        cause.is::<UsageError>()
            || matches!(
                cause.downcast_ref::<warmspare_agent::Error>(),
                Some(warmspare_agent::Error::Config(_) | warmspare_agent::Error::Options(_))
            )
    });
    if bad_config { 2 } else { 1 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
