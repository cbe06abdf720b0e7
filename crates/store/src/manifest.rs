//! The `FORMAT` object and snapshot manifests, with their encodings.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::codec::ObjectInfo;
use crate::error::{Error, Result};
use crate::id::SnapshotId;

/// The `format` value of a warmspare repository's `FORMAT` object.
pub const FORMAT_NAME: &str = "warmspare";
/// The repository format version this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// The manifest version this build reads and writes.
pub const MANIFEST_VERSION: u32 = 1;

/// The content of the `FORMAT` object:
/// `{"format":"warmspare","version":1,"created":"2026-11-22T10:15:00Z"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FormatInfo {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    /// The repository format version.
    pub version: u32,
    /// When the repository was initialised.
    #[serde(with = "crate::serde_util::rfc3339")]
    pub created: OffsetDateTime,
}

impl FormatInfo {
    /// The `FORMAT` of a repository initialised at `created`.
    pub fn new(created: OffsetDateTime) -> Self {
        Self {
            format: FORMAT_NAME.to_string(),
            version: FORMAT_VERSION,
            created,
        }
    }

    /// The bytes to store.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Parses a `FORMAT` object read from `path`, rejecting other formats
    /// and versions with errors that say what was found.
    pub fn from_bytes(path: &str, bytes: &[u8]) -> Result<Self> {
        let not_ours = || Error::UnsupportedFormat {
            path: path.to_string(),
            found: "an object that is not a warmspare FORMAT".into(),
            supported: format!("{FORMAT_NAME} version {FORMAT_VERSION}"),
        };
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|_| not_ours())?;
        if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT_NAME) {
            return Err(not_ours());
        }
        let version = value.get("version").and_then(|v| v.as_u64());
        if version != Some(u64::from(FORMAT_VERSION)) {
            return Err(Error::UnsupportedFormat {
                path: path.to_string(),
                found: match version {
                    Some(v) => format!("{FORMAT_NAME} version {v}"),
                    None => format!("{FORMAT_NAME} without a version"),
                },
                supported: format!("{FORMAT_NAME} version {FORMAT_VERSION}"),
            });
        }
        serde_json::from_value(value).map_err(|e| Error::Corrupt {
            path: path.to_string(),
            reason: e.to_string(),
        })
    }
}

/// What a snapshot holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum SnapshotKind {
    /// A `pg_dump` (custom or directory format).
    Logical,
    /// A base backup plus the WAL to make it consistent.
    Physical,
}

/// The commit record of a snapshot, `snapshots/<id>/MANIFEST.json`,
/// written last and only once. A snapshot exists when its manifest does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest version ([`MANIFEST_VERSION`]).
    pub version: u32,
    /// The snapshot's id (checked against the path it was read from).
    pub id: SnapshotId,
    /// What the snapshot holds.
    pub kind: SnapshotKind,
    /// When the snapshot began.
    #[serde(with = "crate::serde_util::rfc3339")]
    pub started: OffsetDateTime,
    /// When the snapshot finished (committed).
    #[serde(with = "crate::serde_util::rfc3339")]
    pub finished: OffsetDateTime,
    /// The lease epoch of the writer, if it held one (fencing token).
    pub epoch: Option<u64>,
    /// Every data object of the snapshot by name, with what was stored.
    pub files: BTreeMap<String, ObjectInfo>,
    /// Snapshotter-specific metadata (database name, server version, WAL
    /// positions, ...).
    pub meta: serde_json::Value,
}

const ENVELOPE_HEAD: &[u8] = b"{\"sha256\":\"";
const ENVELOPE_MID: &[u8] = b"\",\"manifest\":";

impl Manifest {
    /// Content bytes of all files.
    pub fn total_size(&self) -> u64 {
        self.files.values().map(|f| f.size).sum()
    }

    /// Stored bytes of all files.
    pub fn total_stored_size(&self) -> u64 {
        self.files.values().map(|f| f.stored_size).sum()
    }

    /// Encodes the manifest as
    /// `{"sha256":"<hex>","manifest":<body>}` where `<hex>` is the SHA-256
    /// of the exact `<body>` bytes. Hashing bytes rather than a
    /// re-serialisation keeps the check independent of JSON formatting
    /// details (key order, number formatting) across versions.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let body = serde_json::to_vec(self).map_err(|e| Error::Corrupt {
            path: crate::layout::manifest(&self.id).to_string(),
            reason: format!("cannot encode manifest: {e}"),
        })?;
        let digest = crate::cas::sha256_hex(&body);
        let mut out = Vec::with_capacity(body.len() + 100);
        out.extend_from_slice(ENVELOPE_HEAD);
        out.extend_from_slice(digest.as_bytes());
        out.extend_from_slice(ENVELOPE_MID);
        out.extend_from_slice(&body);
        out.extend_from_slice(b"}\n");
        Ok(out)
    }

    /// Decodes a manifest read from `path`, checking its digest and version.
    pub fn from_bytes(path: &str, bytes: &[u8]) -> Result<Self> {
        let corrupt = |reason: &str| Error::Corrupt {
            path: path.to_string(),
            reason: reason.to_string(),
        };
        let Some((expected, body)) = split_envelope(bytes) else {
            // Maybe a later version with another envelope: say so if we can.
            if let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) {
                let version = value
                    .get("version")
                    .or_else(|| value.get("manifest").and_then(|m| m.get("version")))
                    .and_then(|v| v.as_u64());
                if let Some(v) = version.filter(|v| *v != u64::from(MANIFEST_VERSION)) {
                    return Err(unsupported(path, v));
                }
            }
            return Err(corrupt("not a warmspare manifest envelope"));
        };
        let actual = crate::cas::sha256_hex(body);
        if actual != expected {
            return Err(Error::DigestMismatch {
                path: path.to_string(),
                expected: expected.to_string(),
                actual,
            });
        }
        let value: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| corrupt(&e.to_string()))?;
        match value.get("version").and_then(|v| v.as_u64()) {
            Some(v) if v == u64::from(MANIFEST_VERSION) => {}
            Some(v) => return Err(unsupported(path, v)),
            None => return Err(corrupt("manifest has no version")),
        }
        serde_json::from_value(value).map_err(|e| corrupt(&e.to_string()))
    }
}

fn unsupported(path: &str, found: u64) -> Error {
    Error::UnsupportedFormat {
        path: path.to_string(),
        found: format!("manifest version {found}"),
        supported: format!("manifest version {MANIFEST_VERSION}"),
    }
}

/// Splits `{"sha256":"<hex>","manifest":<body>}` (plus trailing whitespace)
/// into the digest and the exact body bytes.
fn split_envelope(bytes: &[u8]) -> Option<(&str, &[u8])> {
    let rest = bytes.strip_prefix(ENVELOPE_HEAD)?;
    let (digest, rest) = rest.split_at_checked(64)?;
    let digest = std::str::from_utf8(digest).ok()?;
    let body = rest.strip_prefix(ENVELOPE_MID)?;
    let body = body.trim_ascii_end().strip_suffix(b"}")?;
    Some((digest, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Compression;
    use proptest::prelude::*;
    use time::macros::datetime;

    fn sample(files: Vec<(String, u64)>, epoch: Option<u64>, meta: serde_json::Value) -> Manifest {
        Manifest {
            version: MANIFEST_VERSION,
            id: SnapshotId::with_suffix(datetime!(2026-11-22 10:15:00 UTC), 7),
            kind: SnapshotKind::Logical,
            started: datetime!(2026-11-22 10:15:00 UTC),
            finished: datetime!(2026-11-22 10:16:30.5 UTC),
            epoch,
            files: files
                .into_iter()
                .map(|(name, size)| {
                    let info = ObjectInfo {
                        size,
                        stored_size: size / 2,
                        sha256: "ab".repeat(32),
                        content_sha256: "cd".repeat(32),
                        compression: Compression::Zstd,
                        encryption_key_id: None,
                    };
                    (name, info)
                })
                .collect(),
            meta,
        }
    }

    #[test]
    fn format_object() {
        let f = FormatInfo::new(datetime!(2026-11-22 10:15:00 UTC));
        let bytes = f.to_bytes();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap().trim(),
            r#"{"format":"warmspare","version":1,"created":"2026-11-22T10:15:00Z"}"#
        );
        assert_eq!(FormatInfo::from_bytes("FORMAT", &bytes).unwrap(), f);
        let v2 = br#"{"format":"warmspare","version":2,"created":"2026-11-22T10:15:00Z"}"#;
        let e = FormatInfo::from_bytes("FORMAT", v2).unwrap_err();
        assert!(e.to_string().contains("version 2"), "{e}");
        for other in [&b"hello"[..], br#"{"format":"restic","version":1}"#] {
            let e = FormatInfo::from_bytes("FORMAT", other).unwrap_err();
            assert!(matches!(e, Error::UnsupportedFormat { .. }), "{e}");
        }
    }

    #[test]
    fn unknown_manifest_version_is_an_error() {
        let mut m = sample(vec![], None, serde_json::Value::Null);
        m.version = 2;
        let bytes = m.to_bytes().unwrap();
        let e = Manifest::from_bytes("m", &bytes).unwrap_err();
        assert!(matches!(e, Error::UnsupportedFormat { .. }), "{e}");
    }

    #[test]
    fn floats_and_key_order_do_not_matter() {
        let meta = serde_json::json!({"z": 0.1, "a": [1.0e300, -0.0], "m": {"y": 1, "b": 2}});
        let m = sample(vec![("a".into(), 1)], Some(3), meta);
        let bytes = m.to_bytes().unwrap();
        assert_eq!(Manifest::from_bytes("m", &bytes).unwrap(), m);
    }

    proptest! {
        #[test]
        fn manifest_roundtrips_and_detects_any_change(
            files in proptest::collection::vec(("[a-z]{1,8}(/[a-z0-9._-]{1,8})?", any::<u64>()), 0..8),
            epoch in proptest::option::of(any::<u64>()),
            note in ".{0,40}",
            flip in any::<prop::sample::Index>(),
        ) {
            let m = sample(files, epoch, serde_json::json!({"note": note, "n": 1}));
            let bytes = m.to_bytes().unwrap();
            prop_assert_eq!(Manifest::from_bytes("m", &bytes).unwrap(), m);

            let mut bad = bytes.clone();
            let i = flip.index(bad.len() - 2); // keep the final "}\n" shape
            bad[i] ^= 0x01;
            prop_assert!(Manifest::from_bytes("m", &bad).is_err());
        }
    }
}
