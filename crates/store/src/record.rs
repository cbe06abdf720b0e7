//! Self-checking JSON records: snapshot manifests, and the small metadata
//! objects of other crates (recovery points), optionally authenticated with
//! the repository's key.
//!
//! # Encodings
//!
//! ```text
//! without a key:  {"sha256":"<digest>","<kind>":<body>}
//! with a key:     {"version":2,"mac":"hmac-sha256:<key id>:<tag>","sha256":"<digest>","<kind>":<body>}
//!
//! digest = hex SHA-256 of the exact <body> bytes
//! subkey = HKDF-SHA256(ikm = the 32-byte repository key, no salt,
//!                      info = "warmspare metadata mac v1"), 32 bytes
//! tag    = hex HMAC-SHA256(subkey, u32be(len kind) || kind
//!                                  || u32be(len path) || path || body)
//! ```
//!
//! `<kind>` names the record (`manifest`, `point`), `path` is the object's
//! path relative to the repository root (`snapshots/<id>/MANIFEST.json`)
//! and `<key id>` the 16-hex-digit id of the key ([`EncryptionKey::id`]).
//! Each record is followed by a newline.
//!
//! # Why this design
//!
//! * **The MAC covers the exact body bytes**, as the digest does, so no
//!   canonical JSON is needed, and it covers the object's path, so a record
//!   copied to another name (a manifest moved to another snapshot id) fails.
//! * **One object**: the MAC travels in the record itself, so committing a
//!   record stays one create-if-absent write; no state exists where a
//!   record and its MAC disagree because of a crash.
//! * **A subkey, never the data key**: HKDF separates the MAC key from the
//!   encryption key; the info string is fixed and documented so that other
//!   tools can verify records.
//! * **Builds that cannot check the MAC refuse it**: the authenticated
//!   envelope starts with `"version":2`, which earlier builds report as an
//!   unsupported manifest version instead of trusting a record they cannot
//!   authenticate.
//! * **A reader with a key refuses a record without a MAC**
//!   ([`MissingMac::Refuse`]): someone who can write to the bucket can
//!   always write one, so accepting it would undo the protection. Callers
//!   that must read such records (written before the repository had a key)
//!   ask for it with [`MissingMac::Accept`] and get [`Authenticity::NoMac`]
//!   to surface.
//! * **A reader without a key still reads authenticated records** (listing
//!   works without the key) and checks their digest, but not their MAC:
//!   [`Authenticity::Unchecked`].

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::crypto::EncryptionKey;
use crate::error::{Error, Result};

/// The `version` of the authenticated envelope.
pub const ENVELOPE_VERSION: u32 = 2;
/// The MAC scheme named in the `mac` field.
pub const MAC_SCHEME: &str = "hmac-sha256";

const KEY_ID_HEX: usize = 16;
const TAG_HEX: usize = 64;
const DIGEST_HEX: usize = 64;
const PLAIN_HEAD: &[u8] = b"{\"sha256\":\"";
const SEALED_HEAD: &[u8] = b"{\"version\":2,\"mac\":\"hmac-sha256:";
const SEALED_DIGEST: &[u8] = b"\",\"sha256\":\"";

/// How a record read from the repository was authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Authenticity {
    /// Its MAC verified under the configured key (with this key id).
    Authenticated {
        /// The id of the key that authenticated it.
        key_id: String,
    },
    /// It carries a MAC (by this key id) that could not be checked: read
    /// without a key. Its digest was checked: it is intact, but whether it
    /// was written by a holder of the key is unknown.
    Unchecked {
        /// The id of the key named by its MAC.
        key_id: String,
    },
    /// It carries no MAC. Normal in a repository without a key; read with
    /// a key only when the caller asked for it ([`MissingMac::Accept`]).
    NoMac,
}

impl Authenticity {
    /// Whether the record's MAC verified under the configured key.
    pub fn is_authenticated(&self) -> bool {
        matches!(self, Self::Authenticated { .. })
    }
}

/// What a reader with a key does with a record that carries no MAC.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum MissingMac {
    /// Refuse it with [`Error::Unauthenticated`] (the default).
    #[default]
    Refuse,
    /// Accept it (its digest still checked) as [`Authenticity::NoMac`],
    /// for a caller that surfaces this to the operator: records written
    /// before the repository had a key, or by an earlier build.
    Accept,
}

/// Encodes `body` (JSON) as record `kind` stored at `path`: with a MAC
/// when `key` is given, without one otherwise (see the module docs).
pub fn encode(kind: &str, path: &str, body: &[u8], key: Option<&EncryptionKey>) -> Result<Vec<u8>> {
    let digest = crate::cas::sha256_hex(body);
    let mut out = Vec::with_capacity(body.len() + kind.len() + 200);
    match key {
        None => out.extend_from_slice(PLAIN_HEAD),
        Some(key) => {
            let tag = mac(key, kind, path, body)?.finalize().into_bytes();
            out.extend_from_slice(SEALED_HEAD);
            out.extend_from_slice(key.id().as_bytes());
            out.push(b':');
            out.extend_from_slice(hex::encode(tag).as_bytes());
            out.extend_from_slice(SEALED_DIGEST);
        }
    }
    out.extend_from_slice(digest.as_bytes());
    out.extend_from_slice(b"\",\"");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\":");
    out.extend_from_slice(body);
    out.extend_from_slice(b"}\n");
    Ok(out)
}

/// Decodes record `kind` read from `path` and returns its exact body bytes
/// (JSON, for the caller to parse and version-check) and how it was
/// authenticated.
///
/// # Errors
///
/// * [`Error::Unauthenticated`], naming `path`, when a `key` is given and
///   the record's MAC is by another key or does not match its body and
///   path (altered, or copied from another object), or the record has no
///   MAC and `missing` is [`MissingMac::Refuse`];
/// * [`Error::DigestMismatch`] when the body does not have its recorded
///   digest (damaged, or altered and read without a key);
/// * [`Error::Corrupt`] for bytes that are not such a record.
pub fn decode<'a>(
    kind: &str,
    path: &str,
    bytes: &'a [u8],
    key: Option<&EncryptionKey>,
    missing: MissingMac,
) -> Result<(&'a [u8], Authenticity)> {
    let frame = split(kind, bytes).ok_or_else(|| Error::Corrupt {
        path: path.to_string(),
        reason: format!("not a warmspare {kind} record"),
    })?;
    check(frame, kind, path, key, missing)
}

/// A record split into its parts, nothing checked yet.
#[derive(Debug)]
pub(crate) struct Frame<'a> {
    /// `(key id, tag)` of an authenticated envelope.
    mac: Option<(&'a str, &'a str)>,
    digest: &'a str,
    body: &'a [u8],
}

/// Splits a record of `kind` (plus trailing whitespace) into its parts;
/// `None` when `bytes` are not one.
pub(crate) fn split<'a>(kind: &str, bytes: &'a [u8]) -> Option<Frame<'a>> {
    let (mac, rest) = match bytes.strip_prefix(SEALED_HEAD) {
        Some(rest) => {
            let (mac, rest) = take_mac(rest)?;
            (Some(mac), rest.strip_prefix(SEALED_DIGEST)?)
        }
        None => (None, bytes.strip_prefix(PLAIN_HEAD)?),
    };
    let (digest, rest) = rest.split_at_checked(DIGEST_HEX)?;
    let digest = std::str::from_utf8(digest).ok()?;
    let rest = rest.strip_prefix(b"\",\"")?;
    let rest = rest.strip_prefix(kind.as_bytes())?;
    let body = rest.strip_prefix(b"\":")?;
    let body = body.trim_ascii_end().strip_suffix(b"}")?;
    Some(Frame { mac, digest, body })
}

/// Checks a split record (see [`decode`]).
pub(crate) fn check<'a>(
    frame: Frame<'a>,
    kind: &str,
    path: &str,
    key: Option<&EncryptionKey>,
    missing: MissingMac,
) -> Result<(&'a [u8], Authenticity)> {
    let authenticity = match (frame.mac, key) {
        (Some((key_id, tag)), Some(key)) => {
            verify(key, key_id, tag, kind, path, frame.body)?;
            Authenticity::Authenticated {
                key_id: key_id.to_string(),
            }
        }
        (Some((key_id, _)), None) => Authenticity::Unchecked {
            key_id: key_id.to_string(),
        },
        (None, Some(_)) if missing == MissingMac::Refuse => return Err(no_mac(path)),
        (None, _) => Authenticity::NoMac,
    };
    let actual = crate::cas::sha256_hex(frame.body);
    if actual != frame.digest {
        return Err(Error::DigestMismatch {
            path: path.to_string(),
            expected: frame.digest.to_string(),
            actual,
        });
    }
    Ok((frame.body, authenticity))
}

/// The MAC of `body` (kind `kind`, stored at `path`) under `key` in its
/// textual form, `hmac-sha256:<key id>:<tag>`: what an authenticated record
/// carries in its `mac` field, and a sealed object's seal in its own
/// (`codec/sealed.rs`, whose `body` is an encoding of the seal's fields).
pub(crate) fn mac_text(key: &EncryptionKey, kind: &str, path: &str, body: &[u8]) -> Result<String> {
    let tag = mac(key, kind, path, body)?.finalize().into_bytes();
    Ok(format!("{MAC_SCHEME}:{}:{}", key.id(), hex::encode(tag)))
}

/// Checks a MAC in the textual form of [`mac_text`] over `body` (kind
/// `kind`, read from `path`) under `key`: [`Error::Unauthenticated`] naming
/// `path` when it is malformed, by another key (`other_key` set), or does
/// not match.
pub(crate) fn verify_mac_text(
    key: &EncryptionKey,
    text: &str,
    kind: &str,
    path: &str,
    body: &[u8],
) -> Result<()> {
    let parsed = text
        .strip_prefix(MAC_SCHEME)
        .and_then(|rest| rest.strip_prefix(':'))
        .and_then(|rest| take_mac(rest.as_bytes()))
        .filter(|(_, rest)| rest.is_empty());
    let Some(((key_id, tag), _)) = parsed else {
        return Err(Error::Unauthenticated {
            path: path.to_string(),
            reason: "malformed MAC".into(),
            other_key: None,
        });
    };
    verify(key, key_id, tag, kind, path, body)
}

/// The refusal of an object read from `path` with a key that carries no
/// MAC.
pub(crate) fn no_mac(path: &str) -> Error {
    Error::Unauthenticated {
        path: path.to_string(),
        reason: "it carries no MAC (written without the key, by an earlier build, \
                 or replaced by someone without the key)"
            .into(),
        other_key: None,
    }
}

/// Checks MAC `tag` (hex) by key `key_id` over `body` (kind `kind`, read
/// from `path`) under `key`.
fn verify(
    key: &EncryptionKey,
    key_id: &str,
    tag: &str,
    kind: &str,
    path: &str,
    body: &[u8],
) -> Result<()> {
    let unauthenticated = |reason: String, other_key: Option<String>| Error::Unauthenticated {
        path: path.to_string(),
        reason,
        other_key,
    };
    if key_id != key.id() {
        return Err(unauthenticated(
            format!(
                "its MAC is by key id {key_id}, the configured key has id {}",
                key.id()
            ),
            Some(key_id.to_string()),
        ));
    }
    let tag = hex::decode(tag).map_err(|_| unauthenticated("malformed MAC".into(), None))?;
    // `verify_slice` compares in constant time.
    mac(key, kind, path, body)?.verify_slice(&tag).map_err(|_| {
        unauthenticated(
            "its MAC does not match its content and name: \
                 it was altered, or copied from another object"
                .into(),
            None,
        )
    })
}

/// The HMAC over a record's kind, path and body, ready to finalize.
fn mac(key: &EncryptionKey, kind: &str, path: &str, body: &[u8]) -> Result<Hmac<Sha256>> {
    let subkey = key.mac_subkey();
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(subkey.as_slice()).map_err(|_| {
        Error::InvalidKey {
            reason: "cannot derive the metadata MAC key".into(),
        }
    })?;
    for field in [kind.as_bytes(), path.as_bytes()] {
        let len = u32::try_from(field.len()).map_err(|_| Error::InvalidPath {
            path: path.to_string(),
            reason: "too long for a record".into(),
        })?;
        mac.update(&len.to_be_bytes());
        mac.update(field);
    }
    mac.update(body);
    Ok(mac)
}

/// `<key id>:<tag>` (the MAC after its scheme) at the start of `bytes`,
/// and the rest.
fn take_mac(bytes: &[u8]) -> Option<((&str, &str), &[u8])> {
    let (key_id, rest) = take_hex(bytes, KEY_ID_HEX)?;
    let rest = rest.strip_prefix(b":")?;
    let (tag, rest) = take_hex(rest, TAG_HEX)?;
    Some(((key_id, tag), rest))
}

/// `n` lowercase hex digits at the start of `bytes`, and the rest.
fn take_hex(bytes: &[u8], n: usize) -> Option<(&str, &[u8])> {
    let (hex, rest) = bytes.split_at_checked(n)?;
    hex.iter()
        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        .then_some(())?;
    Some((std::str::from_utf8(hex).ok()?, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PATH: &str = "points/20261122T101500Z-3f9a.json";

    fn fixed_key(byte: u8) -> EncryptionKey {
        let mut k = [byte; 32];
        k[0] = 1;
        EncryptionKey::from_bytes(k)
    }

    #[test]
    fn plain_records_keep_the_earlier_encoding() {
        let bytes = encode("point", PATH, br#"{"version":1}"#, None).unwrap();
        let digest = crate::cas::sha256_hex(br#"{"version":1}"#);
        assert_eq!(
            bytes,
            format!("{{\"sha256\":\"{digest}\",\"point\":{{\"version\":1}}}}\n").into_bytes()
        );
        let (body, auth) = decode("point", PATH, &bytes, None, MissingMac::Refuse).unwrap();
        assert_eq!(body, br#"{"version":1}"#);
        assert_eq!(auth, Authenticity::NoMac);
    }

    #[test]
    fn the_mac_is_the_documented_construction() {
        // Recomputed from the documented recipe with the primitives alone,
        // so that a change of the construction cannot pass unnoticed.
        let key = fixed_key(7);
        let body = br#"{"version":1,"n":2}"#;
        let bytes = encode("manifest", PATH, body, Some(&key)).unwrap();
        let mut subkey = [0u8; 32];
        hkdf::Hkdf::<Sha256>::new(None, &{
            let mut k = [7u8; 32];
            k[0] = 1;
            k
        })
        .expand(b"warmspare metadata mac v1", &mut subkey)
        .unwrap();
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&subkey).unwrap();
        m.update(&8u32.to_be_bytes());
        m.update(b"manifest");
        m.update(&(PATH.len() as u32).to_be_bytes());
        m.update(PATH.as_bytes());
        m.update(body);
        let tag = hex::encode(m.finalize().into_bytes());
        let digest = crate::cas::sha256_hex(body);
        let expected = format!(
            "{{\"version\":2,\"mac\":\"hmac-sha256:{}:{tag}\",\"sha256\":\"{digest}\",\"manifest\":{}}}\n",
            key.id(),
            std::str::from_utf8(body).unwrap()
        );
        assert_eq!(String::from_utf8(bytes.clone()).unwrap(), expected);
        // Valid JSON, as the format promises.
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["version"], 2);
        assert_eq!(v["manifest"]["n"], 2);
    }

    #[test]
    fn key_path_kind_and_missing_mac() {
        let key = fixed_key(7);
        let other = fixed_key(8);
        let body = br#"{"version":1}"#;
        let bytes = encode("point", PATH, body, Some(&key)).unwrap();
        let (read, auth) = decode("point", PATH, &bytes, Some(&key), MissingMac::Refuse).unwrap();
        assert_eq!(read, body);
        assert_eq!(auth, Authenticity::Authenticated { key_id: key.id() });
        assert!(auth.is_authenticated());

        // Without a key: readable, not checked.
        let (_, auth) = decode("point", PATH, &bytes, None, MissingMac::Refuse).unwrap();
        assert_eq!(auth, Authenticity::Unchecked { key_id: key.id() });

        // Another key, another path, another kind: refused.
        let e = decode("point", PATH, &bytes, Some(&other), MissingMac::Accept).unwrap_err();
        assert!(
            matches!(&e, Error::Unauthenticated { path, reason, other_key: Some(by) }
                if path == PATH && by == &key.id() && reason.contains(&key.id())
                    && reason.contains(&other.id())),
            "{e:?}"
        );
        let moved = "points/20261122T101501Z-0000.json";
        let e = decode("point", moved, &bytes, Some(&key), MissingMac::Accept).unwrap_err();
        assert!(
            matches!(&e, Error::Unauthenticated { path, other_key: None, .. } if path == moved),
            "{e:?}"
        );
        assert!(
            e.to_string().contains("not authenticated by this key"),
            "{e}"
        );
        let relabelled = String::from_utf8(bytes.clone())
            .unwrap()
            .replace("\"point\":", "\"thing\":");
        let e = decode(
            "thing",
            PATH,
            relabelled.as_bytes(),
            Some(&key),
            MissingMac::Refuse,
        )
        .unwrap_err();
        assert!(matches!(e, Error::Unauthenticated { .. }), "{e:?}");

        // No MAC, read with a key: refused unless the caller accepts it.
        let plain = encode("point", PATH, body, None).unwrap();
        let e = decode("point", PATH, &plain, Some(&key), MissingMac::Refuse).unwrap_err();
        assert!(
            matches!(&e, Error::Unauthenticated { reason, .. } if reason.contains("no MAC")),
            "{e:?}"
        );
        let (_, auth) = decode("point", PATH, &plain, Some(&key), MissingMac::Accept).unwrap();
        assert_eq!(auth, Authenticity::NoMac);

        // Not a record at all.
        let e = decode("point", PATH, b"{}", Some(&key), MissingMac::Accept).unwrap_err();
        assert!(matches!(e, Error::Corrupt { .. }), "{e:?}");
    }

    proptest! {
        #[test]
        fn any_changed_byte_is_refused_with_the_key(
            note in "[ -~]{0,60}",
            n in any::<u64>(),
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let key = fixed_key(9);
            let body = serde_json::to_vec(&serde_json::json!({"version": 1, "note": note, "n": n})).unwrap();
            let bytes = encode("manifest", PATH, &body, Some(&key)).unwrap();
            let (read, auth) = decode("manifest", PATH, &bytes, Some(&key), MissingMac::Refuse).unwrap();
            prop_assert_eq!(read, &body[..]);
            prop_assert!(auth.is_authenticated());

            let mut bad = bytes.clone();
            let i = flip.index(bad.len() - 1); // the final newline is whitespace
            bad[i] ^= 1 << bit;
            // Even when accepting records without a MAC: a damaged MAC
            // field must not turn a record into an unauthenticated one.
            prop_assert!(decode("manifest", PATH, &bad, Some(&key), MissingMac::Accept).is_err());

            // A changed body with its digest recomputed (what someone
            // without the key can do) fails on the MAC alone.
            let mut forged_body = body.clone();
            let j = flip.index(forged_body.len());
            forged_body[j] ^= 1 << bit;
            let digest = crate::cas::sha256_hex(&body);
            let forged_digest = crate::cas::sha256_hex(&forged_body);
            let text = bytes.clone();
            let at = text.windows(64).position(|w| w == digest.as_bytes()).unwrap();
            let mut forged = text[..at].to_vec();
            forged.extend_from_slice(forged_digest.as_bytes());
            forged.extend_from_slice(b"\",\"manifest\":");
            forged.extend_from_slice(&forged_body);
            forged.extend_from_slice(b"}\n");
            let e = decode("manifest", PATH, &forged, Some(&key), MissingMac::Accept).unwrap_err();
            prop_assert!(matches!(e, Error::Unauthenticated { .. }), "{:?}", e);
            prop_assert!(decode("manifest", PATH, &forged, None, MissingMac::Refuse).is_ok());
        }
    }
}
