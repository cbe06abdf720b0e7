//! HTTP probe: a 2xx answer within the timeout (and, optionally, a JSON
//! field with an expected value) is healthy.

use std::time::Duration;

use super::ProbeError;

/// A JSON field the answer must carry: `pointer` in RFC 6901 form
/// (`/status`, `/checks/0/ok`) and the value it must equal.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonExpectation {
    /// Where the field is.
    pub pointer: String,
    /// What it must be.
    pub value: serde_json::Value,
}

/// GETs `url`; healthy on a 2xx status (and `expect` met, when given).
pub async fn check(
    client: &reqwest::Client,
    url: &str,
    expect: Option<&JsonExpectation>,
    timeout: Duration,
) -> Result<(), ProbeError> {
    let target = crate::probe::redact(url);
    let fail = |message: String| ProbeError::Other {
        target: target.clone(),
        message,
    };
    let request = async {
        let response = client.get(url).send().await?;
        let status = response.status();
        let body = if expect.is_some() {
            Some(response.bytes().await?)
        } else {
            None
        };
        Ok::<_, reqwest::Error>((status, body))
    };
    let (status, body) = match tokio::time::timeout(timeout, request).await {
        Err(_) => {
            return Err(ProbeError::Timeout {
                target,
                after: timeout,
            });
        }
        Ok(Err(e)) if e.is_connect() => {
            return Err(ProbeError::Unreachable {
                target: target.clone(),
                message: crate::probe::redact(&e.to_string()),
            });
        }
        Ok(Err(e)) => return Err(fail(crate::probe::redact(&e.to_string()))),
        Ok(Ok(answer)) => answer,
    };
    if !status.is_success() {
        return Err(fail(format!("answered {status}")));
    }
    if let (Some(expect), Some(body)) = (expect, body) {
        let json: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| fail(format!("answer is not JSON: {e}")))?;
        match json.pointer(&expect.pointer) {
            Some(v) if *v == expect.value => {}
            Some(v) => {
                return Err(fail(format!(
                    "{} is {v}, expected {}",
                    expect.pointer, expect.value
                )));
            }
            None => return Err(fail(format!("{} missing from the answer", expect.pointer))),
        }
    }
    Ok(())
}
