//! One module per command.

pub(crate) mod check;
pub(crate) mod init;

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
