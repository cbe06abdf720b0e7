//! `warmspare`: the command-line tool of warmspare.
//!
//! Argument parsing and output only; the work happens in the library
//! crates. Exit codes: 0 success, 1 operation failed, 2 bad usage or
//! configuration.

#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod cmd;
mod output;
mod progress;
mod repo;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Keep a warm spare of a PostgreSQL + artifact-store service.
#[derive(Debug, Parser)]
#[command(name = "warmspare", version, about, max_term_width = 100)]
struct Cli {
    /// The configuration file.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "WARMSPARE_CONFIG",
        default_value = "warmspare.toml"
    )]
    config: PathBuf,

    /// Print machine-readable JSON on stdout.
    #[arg(long, global = true)]
    json: bool,

    /// Which [sites.*] entry this process is (overrides `site` in the file).
    #[arg(long, global = true, value_name = "NAME", env = "WARMSPARE_SITE")]
    site: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a commented example configuration.
    Init(cmd::init::Args),
    /// Validate the configuration and reach every endpoint; a table of what works.
    Check(cmd::check::Args),
    /// Take a recovery point (database and artifacts together), or `backup db [--physical]|artifacts`.
    Backup(cmd::backup::Args),
    /// The repository's recovery points and snapshots, newest first.
    List(cmd::list::Args),
    /// Restore a snapshot (`restore db ID|latest --to DATABASE_URL|DATA_DIR`) or artifacts.
    Restore(cmd::restore::Args),
    /// Re-read a snapshot and check its digests; --deep also restores it into a scratch server.
    Verify(cmd::verify::Args),
    /// Delete the snapshots that the [retention] policy does not keep.
    Prune(cmd::prune::Args),
    /// Run the whole loop on this machine: two sites, backup, sync, restore, verify, failover.
    Demo(cmd::demo::Args),
    /// Rehearse a recovery into a scratch cluster and store; report the measured RTO and data age.
    Drill(cmd::drill::Args),
    /// Mirror the artifacts: this site's store into the other site's, or --from URL --to URL.
    Sync(cmd::sync::Args),
    /// Check the artifacts the database names ([reconcile] query) against the site's store.
    Reconcile(cmd::reconcile::Args),
    /// The WAL archive: `wal push` for archive_command, `wal fetch` for restore_command.
    Wal(cmd::wal::Args),
    /// Sites, lease holder and epoch, each site's database role and agent.
    Status(cmd::status::Args),
    /// The lease in the repository (`lease show`).
    Lease(cmd::lease::Args),
    /// Ask a site's agent to take over (`--to SITE`, `--force`).
    Failover(cmd::failover::Args),
    /// Ask the lease holder's agent to hand over to `--to SITE`, losing no data.
    Switchover(cmd::failover::SwitchoverArgs),
}

/// Options every command sees.
#[derive(Debug)]
struct Global {
    config: PathBuf,
    json: bool,
    site: Option<String>,
}

/// A failure caused by how the tool was called or configured: exit code 2.
#[derive(Debug)]
struct UsageError(String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Exit code of a successful run.
const EXIT_OK: u8 = 0;
/// Exit code of an operation that failed.
const EXIT_FAILED: u8 = 1;
/// Exit code of bad usage or configuration (clap uses it too).
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(error) => {
            // One line: the error and its causes, never a backtrace.
            eprintln!("error: {error:#}");
            ExitCode::from(exit_code_of(&error))
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let global = Global {
        config: cli.config,
        json: cli.json,
        site: cli.site,
    };
    match cli.command {
        Command::Init(args) => cmd::init::run(&global, args),
        Command::Check(args) => cmd::check::run(&global, args),
        Command::Backup(args) => cmd::backup::run(&global, args),
        Command::List(args) => cmd::list::run(&global, args),
        Command::Restore(args) => cmd::restore::run(&global, args),
        Command::Verify(args) => cmd::verify::run(&global, args),
        Command::Prune(args) => cmd::prune::run(&global, args),
        Command::Demo(args) => cmd::demo::run(&global, args),
        Command::Drill(args) => cmd::drill::run(&global, args),
        Command::Sync(args) => cmd::sync::run(&global, args),
        Command::Reconcile(args) => cmd::reconcile::run(&global, args),
        Command::Wal(args) => cmd::wal::run(&global, args),
        Command::Status(args) => cmd::status::run(&global, args),
        Command::Lease(args) => cmd::lease::run(&global, args),
        Command::Failover(args) => cmd::failover::run(&global, args),
        Command::Switchover(args) => cmd::failover::run_switchover(&global, args),
    }
}

/// Exit code 2 for configuration and usage errors, 1 for everything else.
fn exit_code_of(error: &anyhow::Error) -> u8 {
    let bad_config = error.chain().any(|cause| {
        cause.is::<UsageError>()
            || matches!(
                cause.downcast_ref::<warmspare_agent::Error>(),
                Some(warmspare_agent::Error::Config(_))
            )
    });
    if bad_config { EXIT_USAGE } else { EXIT_FAILED }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn config_errors_exit_with_two() {
        let err = warmspare_agent::Config::from_toml_str("nope = 1", "x.toml").unwrap_err();
        assert_eq!(exit_code_of(&anyhow::Error::new(err)), EXIT_USAGE);
        let err = anyhow::Error::new(UsageError("bad".into())).context("while loading");
        assert_eq!(exit_code_of(&err), EXIT_USAGE);
        assert_eq!(exit_code_of(&anyhow::anyhow!("disk full")), EXIT_FAILED);
    }
}
