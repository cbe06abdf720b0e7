//! Self-checking JSON records in the repository (inventories):
//! `{"sha256":"<hex>","<kind>":<body>}`, where `<hex>` is the SHA-256 of
//! the exact body bytes, the same envelope as snapshot manifests. Written
//! create-if-absent, checked on every read. Recovery points use the
//! store's version of this envelope (`Repository::seal_record`), which
//! adds a MAC in a repository with a key, and [`parse_body`] for their
//! body.

use bytes::Bytes;
use object_store::path::Path;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use warmspare_store::Repository;

use crate::error::{Error, Result};

/// Encodes `value` in the envelope named `kind`.
pub(crate) fn encode<T: Serialize>(kind: &str, path: &Path, value: &T) -> Result<Vec<u8>> {
    let body = serde_json::to_vec(value).map_err(|e| Error::Corrupt {
        path: path.to_string(),
        reason: format!("cannot encode: {e}"),
    })?;
    let digest = hex::encode(Sha256::digest(&body));
    let mut out = Vec::with_capacity(body.len() + kind.len() + 90);
    out.extend_from_slice(b"{\"sha256\":\"");
    out.extend_from_slice(digest.as_bytes());
    out.extend_from_slice(b"\",\"");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\":");
    out.extend_from_slice(&body);
    out.extend_from_slice(b"}\n");
    Ok(out)
}

/// Decodes and checks an envelope named `kind` read from `path`; `version`
/// is the only body version this build reads.
pub(crate) fn decode<T: DeserializeOwned>(
    kind: &str,
    version: u64,
    path: &Path,
    bytes: &[u8],
) -> Result<T> {
    let corrupt = |reason: String| Error::Corrupt {
        path: path.to_string(),
        reason,
    };
    let rest = bytes
        .strip_prefix(b"{\"sha256\":\"".as_slice())
        .ok_or_else(|| corrupt(format!("not a warmspare {kind} record")))?;
    let (digest, rest) = rest
        .split_at_checked(64)
        .ok_or_else(|| corrupt("truncated".into()))?;
    let mid = format!("\",\"{kind}\":");
    let rest = rest
        .strip_prefix(mid.as_bytes())
        .ok_or_else(|| corrupt(format!("not a warmspare {kind} record")))?;
    let body = rest
        .trim_ascii_end()
        .strip_suffix(b"}")
        .ok_or_else(|| corrupt("truncated".into()))?;
    let actual = hex::encode(Sha256::digest(body));
    if actual.as_bytes() != digest {
        return Err(corrupt(format!(
            "digest mismatch: recorded {}, computed {actual}",
            String::from_utf8_lossy(digest)
        )));
    }
    parse_body(kind, version, path, body)
}

/// Parses the checked body (JSON) of a record named `kind` read from
/// `path`; `version` is the only body version this build reads.
pub(crate) fn parse_body<T: DeserializeOwned>(
    kind: &str,
    version: u64,
    path: &Path,
    body: &[u8],
) -> Result<T> {
    let corrupt = |reason: String| Error::Corrupt {
        path: path.to_string(),
        reason,
    };
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| corrupt(e.to_string()))?;
    match value.get("version").and_then(|v| v.as_u64()) {
        Some(v) if v == version => {}
        Some(v) => {
            return Err(corrupt(format!(
                "{kind} version {v}; this build reads version {version}"
            )));
        }
        None => return Err(corrupt(format!("{kind} without a version"))),
    }
    serde_json::from_value(value).map_err(|e| corrupt(e.to_string()))
}

/// Writes a small object create-if-absent through the repository's
/// compare-and-swap primitive (which also resolves a re-sent create whose
/// first attempt landed).
pub(crate) async fn create(repo: &Repository, path: &Path, bytes: Vec<u8>) -> Result<()> {
    repo.store().cas().create(path, Bytes::from(bytes)).await?;
    Ok(())
}

/// Reads a whole (small) object from the repository; `None` when absent.
pub(crate) async fn read(repo: &Repository, path: &Path) -> Result<Option<Bytes>> {
    use object_store::ObjectStoreExt;
    let store = repo.store().object_store();
    let result = match store.get(path).await {
        Ok(r) => r,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => {
            return Err(Error::object(
                crate::Side::Repository,
                path.to_string(),
                "reading",
                e,
            ));
        }
    };
    let bytes = result
        .bytes()
        .await
        .map_err(|e| Error::object(crate::Side::Repository, path.to_string(), "reading", e))?;
    Ok(Some(bytes))
}

/// RFC 3339 timestamps in serde.
pub(crate) mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;

    pub(crate) fn serialize<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        let text = t.format(&Rfc3339).map_err(serde::ser::Error::custom)?;
        s.serialize_str(&text)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        let text = String::deserialize(d)?;
        OffsetDateTime::parse(&text, &Rfc3339).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Thing {
        version: u32,
        name: String,
    }

    #[test]
    fn envelope_roundtrip_and_tamper() {
        let path = Path::from("points/x.json");
        let thing = Thing {
            version: 1,
            name: "a".into(),
        };
        let bytes = encode("point", &path, &thing).unwrap();
        assert_eq!(decode::<Thing>("point", 1, &path, &bytes).unwrap(), thing);
        assert!(decode::<Thing>("inventory", 1, &path, &bytes).is_err());
        assert!(decode::<Thing>("point", 2, &path, &bytes).is_err());
        let tampered = String::from_utf8(bytes).unwrap().replace("\"a\"", "\"b\"");
        let err = decode::<Thing>("point", 1, &path, tampered.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("digest mismatch"), "{err}");
    }
}
