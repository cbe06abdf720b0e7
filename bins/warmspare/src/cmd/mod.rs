//! One module per command.

pub(crate) mod backup;
pub(crate) mod check;
pub(crate) mod demo;
pub(crate) mod drill;
pub(crate) mod failover;
pub(crate) mod init;
pub(crate) mod lease;
pub(crate) mod list;
pub(crate) mod prune;
pub(crate) mod reconcile;
pub(crate) mod restore;
pub(crate) mod scratch;
pub(crate) mod status;
pub(crate) mod sync;
pub(crate) mod verify;
pub(crate) mod wal;

use std::time::Duration;

use anyhow::Context as _;
use warmspare_agent::Config;

use crate::{Global, UsageError};

/// Reads, parses and validates the configuration file, fills secrets from
/// the environment and applies `--site`. Every failure here is a usage
/// error (exit code 2).
pub(crate) fn load_config(global: &Global) -> anyhow::Result<Config> {
    let path = &global.config;
    let text = std::fs::read_to_string(path).map_err(|e| {
        UsageError(format!(
            "cannot read config {}: {e} (create one with `warmspare init`)",
            path.display()
        ))
    })?;
    let mut config = Config::from_toml_str(&text, path.display().to_string())?;
    config.apply_env(std::env::vars());
    if let Some(site) = &global.site {
        if !config.sites.contains_key(site) {
            let known: Vec<&str> = config.sites.keys().map(String::as_str).collect();
            return Err(UsageError(format!(
                "--site {site:?} names no [sites.*] table in {} (known: {})",
                path.display(),
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ))
            .into());
        }
        config.select_site(site)?;
    }
    Ok(config)
}

/// The async runtime every command that does I/O runs on: two workers,
/// like the machines warmspare is sized for.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Parses a humantime duration greater than zero (`"10s"`, `"1h 30m"`).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("must be greater than zero".into()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
