//! Command probe: `sh -c COMMAND` exiting 0 within the timeout is healthy.

use std::process::Stdio;
use std::time::Duration;

use super::ProbeError;

/// Runs `command` with `sh -c`; healthy when it exits 0 within `timeout`
/// (it is killed otherwise).
pub async fn check(command: &str, timeout: Duration) -> Result<(), ProbeError> {
    let target = format!("command `{command}`");
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| ProbeError::Other {
            target: target.clone(),
            message: format!("cannot start: {e}"),
        })?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => Err(ProbeError::Timeout {
            target,
            after: timeout,
        }),
        Ok(Err(e)) => Err(ProbeError::Other {
            target,
            message: e.to_string(),
        }),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            Err(ProbeError::Other {
                target,
                message: format!("exited with {}: {}", out.status, stderr.trim()),
            })
        }
    }
}
