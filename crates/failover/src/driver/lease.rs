//! Lease I/O: one read or one conditional write of `lease/active.json`,
//! bounded by the policy's request timeout, turned into a policy event.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use warmspare_store::object_store::path::Path;
use warmspare_store::{CompareAndSwap, StoreConfig};

use crate::policy::{
    Event, LeaseRecord, PolicyConfig, RequestId, Version, WriteCondition, WriteOutcome,
};

/// The store settings for lease requests: whatever object_store retries must
/// finish within the policy's `request_timeout`, or a renewal could still be
/// in flight past the holder's deadline. One retry, the whole request
/// (retries included) limited to `request_timeout`, connecting limited to
/// half of it.
///
/// Open a separate [`warmspare_store::Store`] with this for the driver; data
/// transfers keep their generous defaults.
pub fn lease_store_config(base: &StoreConfig, policy: &PolicyConfig) -> StoreConfig {
    let t = policy.request_timeout;
    base.clone()
        .with_timeout(Some(t))
        .with_connect_timeout(t / 2)
        .with_read_timeout(t)
        .with_retries(1, t)
}

/// The policy's opaque token for a store version: the ETag, or JSON when the
/// backend also reports an object version id.
pub(crate) fn encode_version(v: &warmspare_store::Version) -> Version {
    match v.object_version() {
        None => Version::new(v.token()),
        Some(_) => Version::new(serde_json::to_string(v).unwrap_or_else(|_| v.token().into())),
    }
}

pub(crate) fn decode_version(v: &Version) -> warmspare_store::Version {
    let text = v.as_str();
    if text.starts_with('{')
        && let Ok(v) = serde_json::from_str(text)
    {
        return v;
    }
    warmspare_store::Version::new(text, None)
}

/// Reads the lease; `None` inside `Ok` when it does not exist.
pub async fn read_lease(
    cas: &dyn CompareAndSwap,
    path: &Path,
) -> Result<Option<(Version, LeaseRecord, Bytes)>, String> {
    match cas.read(path).await {
        Ok(None) => Ok(None),
        Ok(Some((bytes, version))) => match LeaseRecord::from_json(&bytes) {
            Ok(record) => Ok(Some((encode_version(&version), record, bytes))),
            Err(e) => Err(format!("{path}: {e}")),
        },
        Err(e) => Err(e.to_string()),
    }
}

pub(crate) async fn read_event(
    cas: Arc<dyn CompareAndSwap>,
    path: Path,
    timeout: Duration,
) -> Event {
    match tokio::time::timeout(timeout, read_lease(cas.as_ref(), &path)).await {
        Ok(Ok(lease)) => Event::LeaseObserved {
            lease: lease.map(|(v, r, _)| (v, r)),
        },
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot read the lease");
            Event::LeaseReadFailed
        }
        Err(_) => {
            tracing::warn!("lease read timed out");
            Event::LeaseReadFailed
        }
    }
}

pub(crate) async fn write_event(
    cas: Arc<dyn CompareAndSwap>,
    path: Path,
    timeout: Duration,
    request: RequestId,
    record: LeaseRecord,
    condition: WriteCondition,
) -> Event {
    let outcome = match record.to_json() {
        Err(e) => {
            tracing::error!(error = %e, "cannot encode the lease");
            WriteOutcome::Conflict
        }
        Ok(bytes) => {
            let bytes = Bytes::from(bytes);
            let write = async {
                match &condition {
                    WriteCondition::Absent => cas.create(&path, bytes).await,
                    WriteCondition::Matches(v) => {
                        cas.update(&path, bytes, &decode_version(v)).await
                    }
                }
            };
            match tokio::time::timeout(timeout, write).await {
                Ok(Ok(version)) => WriteOutcome::Written {
                    version: encode_version(&version),
                },
                Ok(Err(
                    warmspare_store::Error::AlreadyExists { .. }
                    | warmspare_store::Error::VersionMismatch { .. }
                    | warmspare_store::Error::Conflict { .. },
                )) => WriteOutcome::Conflict,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, epoch = record.epoch, "lease write failed");
                    WriteOutcome::Error
                }
                Err(_) => {
                    tracing::warn!(epoch = record.epoch, "lease write timed out");
                    WriteOutcome::Error
                }
            }
        }
    };
    Event::LeaseWriteResult { request, outcome }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_round_trip() {
        for v in [
            warmspare_store::Version::new("\"abc\"", None),
            warmspare_store::Version::new("\"abc\"", Some("v1".into())),
        ] {
            assert_eq!(decode_version(&encode_version(&v)), v);
        }
    }

    #[test]
    fn lease_requests_retry_within_the_request_timeout() {
        let p = PolicyConfig::default();
        let c = lease_store_config(&StoreConfig::new("s3://b"), &p);
        assert_eq!(c.timeout, Some(p.request_timeout));
        assert!(c.retry_timeout <= p.request_timeout && c.max_retries <= 1);
    }
}
