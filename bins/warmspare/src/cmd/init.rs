//! `warmspare init [PATH]`: write a commented example configuration.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::{EXIT_OK, Global, output};

/// The example configuration: every key, each with a comment.
pub(crate) const TEMPLATE: &str = include_str!("init.toml");

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Where to write the file [default: the --config path, ./warmspare.toml]
    path: Option<PathBuf>,

    /// Overwrite the file if it exists.
    #[arg(long)]
    force: bool,
}

pub(crate) fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let path = args.path.unwrap_or_else(|| global.config.clone());
    let mut options = OpenOptions::new();
    options.write(true);
    if args.force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    // The file may end up holding secrets: only its owner may read it.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = match options.open(&path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            anyhow::bail!(
                "{} already exists; pass --force to overwrite it",
                path.display()
            )
        }
        other => other.with_context(|| format!("cannot create {}", path.display()))?,
    };
    file.write_all(TEMPLATE.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;

    if global.json {
        let value = serde_json::json!({ "path": path.display().to_string() });
        output::write_json(&mut io::stdout().lock(), &value)?;
    }
    eprintln!(
        "wrote an example configuration to {}; edit it, then run `warmspare check`",
        path.display()
    );
    Ok(ExitCode::from(EXIT_OK))
}

#[cfg(test)]
mod tests {
    use super::*;
    use warmspare_agent::Config;

    #[test]
    fn template_parses() {
        let config = Config::from_toml_str(TEMPLATE, "init.toml").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.site.as_deref(), Some("primary"));
        assert_eq!(config.sites.len(), 2);
        assert_eq!(config.schedule.jobs().count(), 5);
    }

    /// Deleting a line of the generated file must not change what the
    /// agent does: the template shows the library's defaults.
    #[test]
    fn template_agrees_with_the_library_defaults() {
        let config = Config::from_toml_str(TEMPLATE, "init.toml").unwrap_or_else(|e| panic!("{e}"));
        let defaults = warmspare_agent::config::FailoverConfig::default();
        assert_eq!(config.failover.mode, defaults.mode);
        assert_eq!(config.failover.interval, defaults.interval);
        assert_eq!(config.failover.timeout, defaults.timeout);
        assert_eq!(config.failover.lease_ttl, defaults.lease_ttl);
        assert_eq!(config.failover.max_data_loss, defaults.max_data_loss);
        assert_eq!(config.failover.cooldown, defaults.cooldown);
        assert_eq!(
            (
                config.failover.unhealthy_threshold,
                config.failover.healthy_threshold
            ),
            (defaults.unhealthy_threshold, defaults.healthy_threshold)
        );
        assert_eq!(
            config.agent,
            warmspare_agent::config::AgentConfig::default()
        );
        // The job timeouts the comments name are the defaults.
        for (name, shown) in [
            ("backup", "6h"),
            ("physical_backup", "12h"),
            ("sync", "6h"),
            ("restore", "6h"),
            ("verify", "6h"),
            ("prune", "6h"),
        ] {
            let line = format!("# {name} = {{ timeout = \"{shown}\" }}");
            assert!(TEMPLATE.lines().any(|l| l == line), "{line}");
            assert_eq!(
                warmspare_agent::config::JobsConfig::default_timeout(name),
                humantime::parse_duration(shown).unwrap(),
                "{name}"
            );
        }
    }

    #[test]
    fn template_parses_with_every_optional_key_uncommented() {
        let uncommented: String = TEMPLATE
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest)
                    if rest.split_once(" = ").is_some_and(|(k, _)| {
                        k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    }) =>
                {
                    rest.replace("\"...\"", "\"example\"")
                }
                _ => line.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert!(uncommented.contains("\ntoken_file = "), "{uncommented}");
        let config =
            Config::from_toml_str(&uncommented, "init.toml").unwrap_or_else(|e| panic!("{e}"));
        assert!(config.agent.token_file.is_some());
        assert!(config.repository.secret_access_key.is_some());
    }

    #[test]
    fn template_shows_every_design_key() {
        for key in [
            "site",
            "url",
            "endpoint",
            "region",
            "allow_http",
            "access_key_id",
            "secret_access_key",
            "compression",
            "encryption_key_file",
            "database",
            "artifacts",
            "artifacts_endpoint",
            "health",
            "agent",
            "mode",
            "backup",
            "physical_backup",
            "sync",
            "restore",
            "verify",
            "keep_last",
            "keep_daily",
            "keep_weekly",
            "keep_monthly",
            "interval",
            "timeout",
            "unhealthy_threshold",
            "healthy_threshold",
            "lease_ttl",
            "max_data_loss",
            "cooldown",
            "on_promote",
            "on_fence",
            "listen",
            "token_file",
        ] {
            let shown = TEMPLATE.lines().any(|l| {
                l.trim_start_matches('#')
                    .trim_start()
                    .starts_with(&format!("{key} = "))
            });
            assert!(shown, "{key} is missing from the template");
        }
    }
}
