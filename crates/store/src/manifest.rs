//! The `FORMAT` object and snapshot manifests, with their encodings.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::codec::ObjectInfo;
use crate::crypto::EncryptionKey;
use crate::error::{Error, Result};
use crate::id::SnapshotId;
use crate::record::{self, Authenticity, MissingMac};

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

/// The record kind of manifests (see [`crate::record`]).
pub(crate) const KIND: &str = "manifest";

impl Manifest {
    /// Content bytes of all files.
    pub fn total_size(&self) -> u64 {
        self.files.values().map(|f| f.size).sum()
    }

    /// Stored bytes of all files.
    pub fn total_stored_size(&self) -> u64 {
        self.files.values().map(|f| f.stored_size).sum()
    }

    /// Encodes the manifest without a MAC, as
    /// `{"sha256":"<hex>","manifest":<body>}` where `<hex>` is the SHA-256
    /// of the exact `<body>` bytes. Hashing bytes rather than a
    /// re-serialisation keeps the check independent of JSON formatting
    /// details (key order, number formatting) across versions.
    /// [`Manifest::encode`] with a key adds a MAC.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.encode(None)
    }

    /// Encodes the manifest for `snapshots/<id>/MANIFEST.json`; with a
    /// `key`, authenticated by a MAC over its bytes and its path (see
    /// [`crate::record`]), so that it cannot be altered nor moved to another
    /// snapshot id by someone without the key.
    pub fn encode(&self, key: Option<&EncryptionKey>) -> Result<Vec<u8>> {
        let path = crate::layout::manifest(&self.id);
        let body = serde_json::to_vec(self).map_err(|e| Error::Corrupt {
            path: path.to_string(),
            reason: format!("cannot encode manifest: {e}"),
        })?;
        record::encode(KIND, path.as_ref(), &body, key)
    }

    /// Decodes a manifest read from `path` without a key, checking its
    /// digest and version. A MAC it carries is not checked
    /// ([`Manifest::decode`] with the key does that).
    pub fn from_bytes(path: &str, bytes: &[u8]) -> Result<Self> {
        Self::decode(path, bytes, None, MissingMac::Accept).map(|(m, _)| m)
    }

    /// Decodes a manifest read from `path`: with a `key`, its MAC must
    /// verify (a manifest without one is refused unless `missing` accepts
    /// it); then its digest and version are checked. Returns how it was
    /// authenticated. Does not check that its id is the one in `path`
    /// (`Repository::read_manifest` does; the MAC already binds the path).
    ///
    /// # Errors
    ///
    /// [`Error::Unauthenticated`] (see [`record::decode`]),
    /// [`Error::DigestMismatch`], [`Error::UnsupportedFormat`] for another
    /// manifest or envelope version, [`Error::Corrupt`].
    pub fn decode(
        path: &str,
        bytes: &[u8],
        key: Option<&EncryptionKey>,
        missing: MissingMac,
    ) -> Result<(Self, Authenticity)> {
        let corrupt = |reason: &str| Error::Corrupt {
            path: path.to_string(),
            reason: reason.to_string(),
        };
        let Some(frame) = record::split(KIND, bytes) else {
            // Maybe a later version with another envelope: say so if we can.
            if let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) {
                let envelope = value.get("version").and_then(|v| v.as_u64());
                if let Some(v) = envelope.filter(|v| *v != u64::from(record::ENVELOPE_VERSION)) {
                    return Err(unsupported(path, v));
                }
                let version = value
                    .get("manifest")
                    .and_then(|m| m.get("version"))
                    .and_then(|v| v.as_u64());
                if let Some(v) = version.filter(|v| *v != u64::from(MANIFEST_VERSION)) {
                    return Err(unsupported(path, v));
                }
            }
            return Err(corrupt("not a warmspare manifest envelope"));
        };
        let (body, authenticity) = record::check(frame, KIND, path, key, missing)?;
        let value: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| corrupt(&e.to_string()))?;
        match value.get("version").and_then(|v| v.as_u64()) {
            Some(v) if v == u64::from(MANIFEST_VERSION) => {}
            Some(v) => return Err(unsupported(path, v)),
            None => return Err(corrupt("manifest has no version")),
        }
        let manifest = serde_json::from_value(value).map_err(|e| corrupt(&e.to_string()))?;
        Ok((manifest, authenticity))
    }
}

fn unsupported(path: &str, found: u64) -> Error {
    Error::UnsupportedFormat {
        path: path.to_string(),
        found: format!("manifest version {found}"),
        supported: format!("manifest version {MANIFEST_VERSION}"),
    }
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

    #[test]
    fn authenticated_manifests() {
        let key = EncryptionKey::generate();
        let m = sample(
            vec![("dump".into(), 10)],
            Some(4),
            serde_json::json!({"n": 1}),
        );
        let path = crate::layout::manifest(&m.id).to_string();
        let bytes = m.encode(Some(&key)).unwrap();
        let (read, auth) = Manifest::decode(&path, &bytes, Some(&key), MissingMac::Refuse).unwrap();
        assert_eq!(read, m);
        assert_eq!(auth, Authenticity::Authenticated { key_id: key.id() });
        // Without the key: readable (listing), the MAC unchecked.
        assert_eq!(Manifest::from_bytes(&path, &bytes).unwrap(), m);
        let (_, auth) = Manifest::decode(&path, &bytes, None, MissingMac::Refuse).unwrap();
        assert_eq!(auth, Authenticity::Unchecked { key_id: key.id() });
        // Builds before authenticated manifests look for a top-level
        // "version" in an envelope they do not know, and report it as an
        // unsupported manifest version rather than trust it.
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(value["version"], 2);
        assert_eq!(value["manifest"]["epoch"], 4);
        // A later envelope version is reported as such.
        let later =
            String::from_utf8(bytes.clone())
                .unwrap()
                .replacen("\"version\":2", "\"version\":3", 1);
        let e =
            Manifest::decode(&path, later.as_bytes(), Some(&key), MissingMac::Refuse).unwrap_err();
        assert!(
            matches!(&e, Error::UnsupportedFormat { found, .. } if found.contains('3')),
            "{e:?}"
        );
        // A manifest without a MAC, read with the key.
        let plain = m.to_bytes().unwrap();
        let e = Manifest::decode(&path, &plain, Some(&key), MissingMac::Refuse).unwrap_err();
        assert!(matches!(e, Error::Unauthenticated { .. }), "{e:?}");
        let (_, auth) = Manifest::decode(&path, &plain, Some(&key), MissingMac::Accept).unwrap();
        assert_eq!(auth, Authenticity::NoMac);
    }

    proptest! {
        #[test]
        fn authenticated_manifest_detects_any_change(
            files in proptest::collection::vec(("[a-z]{1,8}", any::<u64>()), 0..4),
            epoch in proptest::option::of(any::<u64>()),
            flip in any::<prop::sample::Index>(),
        ) {
            let key = EncryptionKey::from_bytes([7; 32]);
            let m = sample(files, epoch, serde_json::json!({"db": "builder"}));
            let path = crate::layout::manifest(&m.id).to_string();
            let bytes = m.encode(Some(&key)).unwrap();
            let mut bad = bytes.clone();
            let i = flip.index(bad.len() - 1);
            bad[i] ^= 0x01;
            prop_assert!(Manifest::decode(&path, &bad, Some(&key), MissingMac::Accept).is_err());
        }

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
