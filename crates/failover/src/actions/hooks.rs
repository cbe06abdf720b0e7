//! `on_promote` / `on_fence` / `on_restart` hooks: shell commands run with
//! the site, role and epoch in their environment, with a timeout, their
//! output logged.

use std::process::Stdio;
use std::time::Duration;

use crate::policy::{HookKind, Role};
use crate::{Error, FailoverConfig, Result};

/// The role a hook is told about in `WARMSPARE_ROLE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookRole {
    /// `primary`: this site was promoted.
    Primary,
    /// `fenced`: this site stopped accepting traffic.
    Fenced,
}

impl HookRole {
    /// The value of `WARMSPARE_ROLE`.
    pub fn as_str(self) -> &'static str {
        match self {
            HookRole::Primary => "primary",
            HookRole::Fenced => "fenced",
        }
    }
}

/// The configured hooks of one site.
///
/// Each command runs as `sh -c COMMAND` with `WARMSPARE_SITE`,
/// `WARMSPARE_ROLE`, `WARMSPARE_EPOCH` and `WARMSPARE_HOOK` (`on_promote`,
/// `on_fence`, `on_restart`) set, one after the other; a command that
/// outlives `timeout` is killed. The role is `primary` for `on_promote`,
/// `fenced` for `on_fence`, and the site's role when the watchdog decided
/// for `on_restart` (`primary`, `standby`, `fenced-holder`, `promoting` or
/// `acquiring`). Its stdout and stderr are logged line by line (`tracing`,
/// target `warmspare_failover::hook`). All commands run even when one
/// fails; the first failure is returned.
#[derive(Debug, Clone)]
pub struct Hooks {
    /// This site's name.
    pub site: String,
    /// Commands run after a promotion.
    pub on_promote: Vec<String>,
    /// Commands run after fencing.
    pub on_fence: Vec<String>,
    /// Commands the watchdog runs to restart the local service.
    pub on_restart: Vec<String>,
    /// Time limit per command.
    pub timeout: Duration,
}

impl Hooks {
    /// The hooks of `[failover]` for `site`, each command limited to
    /// `hook_timeout`.
    pub fn from_config(site: impl Into<String>, config: &FailoverConfig) -> Self {
        Hooks {
            site: site.into(),
            on_promote: config.on_promote.clone(),
            on_fence: config.on_fence.clone(),
            on_restart: config.on_restart.clone(),
            timeout: config.hook_timeout,
        }
    }

    /// Runs the hooks of `kind`.
    pub async fn run(&self, kind: HookKind, epoch: u64) -> Result<()> {
        let (commands, role, hook) = match kind {
            HookKind::OnPromote => (&self.on_promote, HookRole::Primary, "on_promote"),
            HookKind::OnFence => (&self.on_fence, HookRole::Fenced, "on_fence"),
        };
        self.run_all(commands, hook, role.as_str(), epoch).await
    }

    /// Runs the `on_restart` hooks, telling them the site's `role`.
    pub async fn restart(&self, role: Role, epoch: u64) -> Result<()> {
        let role = role.to_string();
        self.run_all(&self.on_restart, "on_restart", &role, epoch)
            .await
    }

    async fn run_all(&self, commands: &[String], hook: &str, role: &str, epoch: u64) -> Result<()> {
        let mut first_error = None;
        for command in commands {
            if let Err(e) = self.run_one(command, hook, role, epoch).await {
                tracing::error!(target: "warmspare_failover::hook", "{e}");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn run_one(&self, command: &str, hook: &str, role: &str, epoch: u64) -> Result<()> {
        let fail = |message: String| Error::Hook {
            command: command.to_owned(),
            message,
        };
        let child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .env("WARMSPARE_SITE", &self.site)
            .env("WARMSPARE_ROLE", role)
            .env("WARMSPARE_EPOCH", epoch.to_string())
            .env("WARMSPARE_HOOK", hook)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| fail(format!("cannot start: {e}")))?;
        tracing::info!(target: "warmspare_failover::hook", command, hook, role, epoch, "running hook");
        let output = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Err(_) => {
                return Err(fail(format!(
                    "killed after {}",
                    humantime::format_duration(self.timeout)
                )));
            }
            Ok(Err(e)) => return Err(fail(e.to_string())),
            Ok(Ok(output)) => output,
        };
        for (stream, bytes) in [("stdout", &output.stdout), ("stderr", &output.stderr)] {
            for line in String::from_utf8_lossy(bytes).lines() {
                tracing::info!(target: "warmspare_failover::hook", command, stream, "{line}");
            }
        }
        if output.status.success() {
            Ok(())
        } else {
            Err(fail(format!("exited with {}", output.status)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hooks_see_site_role_and_epoch_and_time_out() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("env");
        let hooks = Hooks {
            site: "spare".into(),
            on_promote: vec![format!(
                "echo \"$WARMSPARE_SITE $WARMSPARE_ROLE $WARMSPARE_EPOCH\" > {}",
                out.display()
            )],
            on_fence: vec!["exit 3".into(), "sleep 5".into()],
            on_restart: vec![format!(
                "echo \"$WARMSPARE_HOOK $WARMSPARE_SITE $WARMSPARE_ROLE $WARMSPARE_EPOCH\" > {}",
                out.display()
            )],
            timeout: Duration::from_millis(300),
        };
        hooks.run(HookKind::OnPromote, 7).await.unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "spare primary 7\n");
        let err = hooks.run(HookKind::OnFence, 7).await.unwrap_err();
        assert!(err.to_string().contains("exit status: 3"), "{err}");
        hooks.restart(Role::Standby, 9).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "on_restart spare standby 9\n"
        );
    }
}
