//! The client side of the operator commands: asking a site's agent for its
//! status and sending it a failover or switchover.
//!
//! The CLI never writes the lease itself: only a site's driver does, under
//! the policy's rules. `warmspare failover` and `warmspare switchover` are
//! requests to the agent that runs the driver (`POST /failover` with the
//! bearer token and a JSON body, see [`AgentCommand`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::policy::Command;

/// The body of `POST /failover`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum AgentCommand {
    /// Sent to the site that is to take over.
    Failover {
        /// Override the data-loss guard.
        #[serde(default)]
        force: bool,
    },
    /// Sent to the current holder.
    Switchover {
        /// The site that is to take over.
        to: String,
        /// Hand over even when the holder's final WAL position cannot be
        /// read (see [`Command::Switchover`]).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        force: bool,
    },
}

impl From<AgentCommand> for Command {
    fn from(c: AgentCommand) -> Command {
        match c {
            AgentCommand::Failover { force } => Command::Failover { force },
            AgentCommand::Switchover { to, force } => Command::Switchover { to, force },
        }
    }
}

/// Why a request to an agent did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    /// No HTTP answer (refused, unreachable, timeout).
    #[error("agent at {url} is unreachable: {message}")]
    Unreachable {
        /// The agent's base URL.
        url: String,
        /// The transport error.
        message: String,
    },
    /// The agent answered with an error status.
    #[error("agent at {url} did not accept: {message} (HTTP {status})")]
    Refused {
        /// The agent's base URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The `error` (or `message`) field of the answer, or its text.
        message: String,
    },
}

fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .unwrap_or_default()
}

fn endpoint(agent: &str, path: &str) -> String {
    format!("{}{path}", agent.trim_end_matches('/'))
}

async fn answer(
    agent: &str,
    response: Result<reqwest::Response, reqwest::Error>,
) -> Result<serde_json::Value, AgentError> {
    let url = crate::probe::redact(agent).trim_end_matches('/').to_owned();
    let response = response.map_err(|e| AgentError::Unreachable {
        url: url.clone(),
        message: crate::probe::redact(&e.to_string()),
    })?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let json: Option<serde_json::Value> = serde_json::from_str(&text).ok();
    if status.is_success() {
        return Ok(json.unwrap_or(serde_json::Value::String(text)));
    }
    let message = json
        .as_ref()
        .and_then(|j| j.get("error").or_else(|| j.get("message")))
        .and_then(|m| m.as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| text.trim().to_owned());
    Err(AgentError::Refused {
        url,
        status: status.as_u16(),
        message,
    })
}

/// `GET {agent}/status`.
pub async fn agent_status(agent: &str, timeout: Duration) -> Result<serde_json::Value, AgentError> {
    let response = client(timeout).get(endpoint(agent, "/status")).send().await;
    answer(agent, response).await
}

/// `POST {agent}/failover` with the bearer `token` and `command` as body.
pub async fn agent_command(
    agent: &str,
    token: &str,
    command: &AgentCommand,
    timeout: Duration,
) -> Result<serde_json::Value, AgentError> {
    let response = client(timeout)
        .post(endpoint(agent, "/failover"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(command).unwrap_or_default())
        .send()
        .await;
    answer(agent, response).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_bodies() {
        let f = serde_json::to_string(&AgentCommand::Failover { force: true }).unwrap();
        assert_eq!(f, r#"{"command":"failover","force":true}"#);
        let s: AgentCommand =
            serde_json::from_str(r#"{"command":"switchover","to":"spare"}"#).unwrap();
        assert_eq!(
            Command::from(s),
            Command::Switchover {
                to: "spare".into(),
                force: false
            }
        );
        let forced = AgentCommand::Switchover {
            to: "spare".into(),
            force: true,
        };
        let text = serde_json::to_string(&forced).unwrap();
        assert_eq!(
            text,
            r#"{"command":"switchover","to":"spare","force":true}"#
        );
        assert_eq!(serde_json::from_str::<AgentCommand>(&text).unwrap(), forced);
    }

    #[tokio::test]
    async fn a_503_is_a_refusal_with_the_agents_reason() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let body = r#"{"error":"failover driver not running"}"#;
            let reply = format!(
                "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            s.write_all(reply.as_bytes()).await.unwrap();
        });
        let url = format!("http://{addr}");
        let err = agent_command(
            &url,
            "t",
            &AgentCommand::Failover { force: false },
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("agent at {url} did not accept: failover driver not running (HTTP 503)")
        );
    }
}
