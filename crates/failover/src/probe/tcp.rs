//! TCP probe: a connection within the timeout is healthy.

use std::time::Duration;

use super::ProbeError;

/// Connects to `addr` (`host:port`) within `timeout`.
pub async fn check(addr: &str, timeout: Duration) -> Result<(), ProbeError> {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(ProbeError::Unreachable {
            target: addr.to_owned(),
            message: e.to_string(),
        }),
        Err(_) => Err(ProbeError::Timeout {
            target: addr.to_owned(),
            after: timeout,
        }),
    }
}
