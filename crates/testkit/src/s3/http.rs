//! A minimal HTTP/1.1 client over a raw TCP stream: enough for readiness
//! probes and moto's unsigned `CreateBucket`, without another dependency.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::{Error, Result};

/// Status code and body of a response.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) body: String,
}

/// Sends one request with `Connection: close` and reads the whole response.
pub(crate) async fn request(addr: &str, method: &str, path: &str) -> Result<Response> {
    let io = async {
        let mut stream = TcpStream::connect(addr).await?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await?;
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let what = format!("{method} http://{addr}{path}");
    let buf = tokio::time::timeout(Duration::from_secs(30), io)
        .await
        .map_err(|_| {
            Error::io(
                what.clone(),
                std::io::Error::new(std::io::ErrorKind::TimedOut, "no response within 30s"),
            )
        })?
        .map_err(|e| Error::io(what.clone(), e))?;
    parse(&buf).ok_or_else(|| {
        Error::io(
            what,
            std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed HTTP response"),
        )
    })
}

fn parse(buf: &[u8]) -> Option<Response> {
    let text = String::from_utf8_lossy(buf);
    let status_line = text.lines().next()?;
    let mut parts = status_line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    let status = parts.next()?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .unwrap_or_default();
    let body: String = body.chars().take(2000).collect();
    Some(Response { status, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_body() {
        let r = parse(b"HTTP/1.1 409 Conflict\r\nX: y\r\n\r\n<Error/>").expect("parse");
        assert_eq!(r.status, 409);
        assert_eq!(r.body, "<Error/>");
        assert!(parse(b"garbage").is_none());
    }
}
