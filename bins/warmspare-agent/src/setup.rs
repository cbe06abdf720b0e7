//! The process-facing setup of the daemon: logging, the token file,
//! signals.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::Context;
use tracing_subscriber::EnvFilter;
use warmspare_agent::{EncryptionKey, Secret};

use crate::{LogFormat, UsageError};

/// Reads the bearer token: the file's content without surrounding
/// whitespace. Warns when others may read it.
pub(crate) fn read_token(path: &Path) -> anyhow::Result<Secret> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| UsageError(format!("cannot read agent.token_file {shown}: {e}")))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(UsageError(format!("agent.token_file {shown} is empty")).into());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(file = %shown, "the token file is readable by other users; chmod 600 it");
        }
    }
    Ok(Secret::new(token))
}

/// Reads `[repository] encryption_key_file`: 32 bytes as 64 hex digits or
/// base64. The key never appears in a message.
pub(crate) fn read_encryption_key(path: &Path) -> anyhow::Result<EncryptionKey> {
    let shown = path.display();
    let mut text = std::fs::read(path).map_err(|e| {
        UsageError(format!(
            "cannot read [repository] encryption_key_file {shown}: {e}"
        ))
    })?;
    let key = EncryptionKey::from_text(&text);
    text.fill(0);
    key.map_err(|e| UsageError(format!("[repository] encryption_key_file {shown}: {e}")).into())
}

pub(crate) fn install_logging(format: LogFormat, level: Option<&str>) -> anyhow::Result<()> {
    let filter = match level {
        Some(level) => EnvFilter::try_new(level)
            .map_err(|e| UsageError(format!("invalid --log-level {level:?}: {e}")))?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

/// Completes on SIGTERM or SIGINT.
pub(crate) fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}
