//! The agent's HTTP endpoints, served with hyper's HTTP/1.1 server.
//!
//! | endpoint | answer |
//! | --- | --- |
//! | `GET /health` | 200, JSON: the agent is up, one check per job |
//! | `GET /active` | 200 iff the failover driver says this site may accept traffic now: it holds the lease *and* its database was promoted (and opened since the latest fence) |
//! | `GET /standby` | 200 iff this site is a healthy spare (driver running, not the holder) |
//! | `GET /status` | 200, JSON: site, jobs (last outcome, next run), lease |
//! | `GET /metrics` | 200, Prometheus text format 0.0.4 |
//! | `POST /pause`, `/resume` | bearer token; pause or resume the scheduler and the failover policy |
//! | `POST /failover` | bearer token; an `AgentCommand` (JSON): 200 accepted, 409 refused, 503 no driver |
//!
//! `HEAD` is accepted wherever `GET` is. Other methods get 405 with
//! `Allow`, other paths 404. Mutating endpoints answer 403 when no token is
//! configured and 401 without the right one. Request heads are limited to
//! 16 KiB, bodies to 64 KiB, connections to 256 at a time.

pub(crate) mod auth;
mod metrics;
mod views;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body as _, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use warmspare_failover::DriverState;
use warmspare_failover::driver::CommandReply;
use warmspare_failover::policy::{Command, Role};
use warmspare_failover::remote::AgentCommand;

use crate::state::{FailoverView, Shared, raised};
use auth::Verdict;

/// Largest request body accepted (mutating endpoints take none).
const MAX_BODY: usize = 64 * 1024;
/// Largest request head (request line and headers).
const MAX_HEAD: usize = 16 * 1024;
/// Connections served at once; more are closed on accept.
const MAX_CONNECTIONS: usize = 256;
/// Time a client has to send a request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

type Body = Full<Bytes>;

/// Serves on `listener` until `stop` turns true; then finishes the requests
/// in progress (for up to `grace`) and returns.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = raised(&mut stop) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        tracing::warn!(%peer, "too many connections; closing a new one");
                        continue;
                    };
                    let shared = shared.clone();
                    let stop = stop.clone();
                    connections.spawn(async move {
                        connection(stream, peer, shared, stop).await;
                        drop(slot);
                    });
                }
                Err(error) => {
                    // Usually out of file descriptors: back off instead of
                    // spinning on the error.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!("closing HTTP connections that did not finish in time");
    }
}

/// Serves one connection; on `stop`, finishes the request in progress and
/// closes it.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let service = service_fn(move |request| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(route(&shared, peer, request).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = raised(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%peer, %error, "HTTP connection ended with an error");
    }
}

/// Answers one request.
async fn route(shared: &Shared, peer: SocketAddr, request: Request<Incoming>) -> Response<Body> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = match path.as_str() {
        "/health" | "/active" | "/standby" | "/status" | "/metrics" => {
            if method == Method::GET || method == Method::HEAD {
                read_only(shared, &path)
            } else {
                method_not_allowed("GET, HEAD")
            }
        }
        "/pause" | "/resume" | "/failover" => {
            if method == Method::POST {
                mutating(shared, peer, &path, request).await
            } else {
                method_not_allowed("POST")
            }
        }
        _ => json_response(StatusCode::NOT_FOUND, &json!({ "error": "not found" })),
    };
    tracing::debug!(%peer, %method, path, status = response.status().as_u16(), "request");
    response
}

fn read_only(shared: &Shared, path: &str) -> Response<Body> {
    let view = shared.view();
    match path {
        "/health" => json_response(StatusCode::OK, &views::health(&view)),
        "/status" => json_response(StatusCode::OK, &views::status(&view)),
        "/metrics" => response(
            StatusCode::OK,
            metrics::CONTENT_TYPE,
            metrics::render(&view),
        ),
        "/active" => {
            // Only the driver's answer against the clock *now* counts; no
            // driver means no site may claim to be active.
            let (ok, reason) = match &view.failover {
                FailoverView::Running {
                    may_accept_traffic: true,
                    ..
                } => (true, None),
                FailoverView::Running { state, .. } => (false, Some(inactive_reason(state))),
                FailoverView::Off(reason) => (false, Some(reason.clone())),
            };
            gate_response(
                ok,
                json!({ "site": view.site, "active": ok, "reason": reason }),
            )
        }
        _ => {
            let (ok, reason) = match &view.failover {
                FailoverView::Running {
                    healthy_standby: true,
                    ..
                } => (true, None),
                FailoverView::Running {
                    may_accept_traffic: true,
                    ..
                } => (false, Some("this site holds the lease".to_owned())),
                FailoverView::Running { state, .. } => (
                    false,
                    Some(format!(
                        "not a healthy standby (role {}, local service {})",
                        state.role, state.local
                    )),
                ),
                FailoverView::Off(reason) => (false, Some(reason.clone())),
            };
            gate_response(
                ok,
                json!({ "site": view.site, "standby": ok, "reason": reason }),
            )
        }
    }
}

/// Why a running driver does not let this site accept traffic.
fn inactive_reason(state: &DriverState) -> String {
    match (state.role, state.awaiting_lsn) {
        (Role::Promoting, Some(lsn)) => format!(
            "holds the lease but waits to replay the old primary's final WAL position {lsn} \
             (replayed: {}) before it promotes",
            state
                .replayed_lsn
                .map_or_else(|| "unknown".to_owned(), |l| l.to_string())
        ),
        (Role::Promoting, None) => "holds the lease; the database is being promoted".to_owned(),
        (Role::FencedHolder, _) => {
            "holds the lease but is fenced (renewal late, or the database not open yet)".to_owned()
        }
        (role, _) => format!("not the lease holder (role {role})"),
    }
}

fn gate_response(ok: bool, body: serde_json::Value) -> Response<Body> {
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, &body)
}

async fn mutating(
    shared: &Shared,
    peer: SocketAddr,
    path: &str,
    request: Request<Incoming>,
) -> Response<Body> {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    match auth::check(shared.token.as_ref(), authorization) {
        Verdict::Allowed => {}
        Verdict::NotConfigured => {
            tracing::warn!(%peer, path, "refused: no token is configured for mutating endpoints");
            return json_response(
                StatusCode::FORBIDDEN,
                &json!({ "error": "no token configured: mutating endpoints are disabled" }),
            );
        }
        verdict => {
            let error = if verdict == Verdict::Missing {
                "missing bearer token"
            } else {
                "wrong bearer token"
            };
            tracing::warn!(%peer, path, "refused: {error}");
            let mut response = json_response(StatusCode::UNAUTHORIZED, &json!({ "error": error }));
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"warmspare\""),
            );
            return response;
        }
    }
    // A declared length over the limit is refused before reading a byte.
    let declared = request.body().size_hint().lower();
    let body = if declared > MAX_BODY as u64 {
        None
    } else {
        Limited::new(request.into_body(), MAX_BODY)
            .collect()
            .await
            .ok()
            .map(|b| b.to_bytes())
    };
    let Some(body) = body else {
        return json_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            &json!({ "error": format!("request body larger than {MAX_BODY} bytes or unreadable") }),
        );
    };
    let driver = shared.links.handle();
    match path {
        "/pause" | "/resume" => {
            let pause = path == "/pause";
            if shared.paused.send_replace(pause) != pause {
                tracing::info!(%peer, "scheduler {}", if pause { "paused" } else { "resumed" });
            }
            // The policy's maintenance pause: no automatic takeover, restart
            // or release; renewal and self-fencing go on.
            let mut body = json!({ "paused": pause });
            if let Some(driver) = driver {
                let command = if pause {
                    Command::Pause
                } else {
                    Command::Resume
                };
                body["failover"] = match driver.command(command).await {
                    Ok(CommandReply::Accepted(m) | CommandReply::Refused(m)) => json!(m),
                    Err(e) => json!(e.to_string()),
                };
            }
            json_response(StatusCode::OK, &body)
        }
        _ => {
            let Some(driver) = driver else {
                return json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({ "error": shared.links.no_driver_reason() }),
                );
            };
            let command: AgentCommand = match serde_json::from_slice(&body) {
                Ok(c) => c,
                Err(e) => {
                    return json_response(
                        StatusCode::BAD_REQUEST,
                        &json!({ "error": format!("invalid command: {e}") }),
                    );
                }
            };
            tracing::info!(%peer, ?command, "operator command");
            match driver.command(command.into()).await {
                Ok(CommandReply::Accepted(message)) => json_response(
                    StatusCode::OK,
                    &json!({ "accepted": true, "message": message }),
                ),
                Ok(CommandReply::Refused(message)) => json_response(
                    StatusCode::CONFLICT,
                    &json!({ "accepted": false, "error": message }),
                ),
                Err(e) => json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({ "error": e.to_string() }),
                ),
            }
        }
    }
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut response = json_response(
        StatusCode::METHOD_NOT_ALLOWED,
        &json!({ "error": "method not allowed" }),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let mut text = body.to_string();
    text.push('\n');
    response(status, "application/json", text)
}

fn response(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use warmspare_failover::policy::{Health, Lsn, Millis};

    fn state(role: Role, awaiting: Option<Lsn>, replayed: Option<Lsn>) -> DriverState {
        DriverState {
            site: "spare".into(),
            running: true,
            role,
            accepting_until: None,
            epoch: Some(2),
            fenced: true,
            paused: false,
            local: Health::Healthy,
            peer: Health::Healthy,
            lease: None,
            time_left: None,
            takeover_in: None,
            lag: None,
            awaiting_lsn: awaiting,
            replayed_lsn: replayed,
            at: Millis::ZERO,
            last_alert: None,
        }
    }

    #[test]
    fn active_says_why_a_holder_is_not_active_yet() {
        let waiting = inactive_reason(&state(
            Role::Promoting,
            Some(Lsn(0x300_0060)),
            Some(Lsn(0x300_0000)),
        ));
        assert!(
            waiting.contains("final WAL position 0/3000060") && waiting.contains("0/3000000"),
            "{waiting}"
        );
        let promoting = inactive_reason(&state(Role::Promoting, None, None));
        assert!(promoting.contains("being promoted"), "{promoting}");
        let standby = inactive_reason(&state(Role::Standby, None, None));
        assert_eq!(standby, "not the lease holder (role standby)");
    }
}
