//! Sealed objects: immutable objects that carry their own [`ObjectInfo`],
//! for data that no manifest lists (WAL segments, timeline history files,
//! inventories).
//!
//! ```text
//! [skippable frame: magic 0x184D2A5E, u32 LE length, seal JSON][encoded content]
//! seal JSON: {"sealed":1,"path":"wal/...","size":..,"stored_size":..,"sha256":..,"content_sha256":..,"compression":"zstd"}
//! encrypted: {"sealed":1,"path":..,..,"compression":"zstd","encryption_key_id":"<key id>","mac":"hmac-sha256:<key id>:<tag>"}
//!
//! tag  = hex HMAC-SHA256(subkey, u32be(6) || "sealed" || u32be(len path) || path || body)
//!        (subkey and construction: those of authenticated records, crate::record)
//! body = f(sealed) || f(size) || f(stored_size) || f(sha256) || f(content_sha256)
//!        || f(compression) || f(encryption_key_id)
//! f(v) = u32be(len t) || t, t = the field's JSON value as text (numbers in
//!        decimal, strings without their quotes)
//! ```
//!
//! `0x184D2A50..=0x184D2A5F` are zstd *skippable frames*, so a sealed
//! zstd object is still a valid `.zst` file: `zstd -d` skips the seal and
//! decodes the content. The seal names the object's path, so an object
//! copied or renamed to another name (a WAL segment under another
//! segment's name) is refused rather than replayed. Without a key the seal
//! has no digest of its own: damage to it either breaks its JSON, or
//! changes a recorded digest or size so that the content no longer matches.
//!
//! With encryption, the encoded content after the seal is an encrypted
//! stream ([`crate::crypto`]) and the seal records `encryption_key_id`; the
//! seal itself stays readable, and the object is no longer a `.zst` file.
//!
//! # Authentication
//!
//! The encryption binds the content to the key, not to a name: whoever can
//! write to the bucket could copy an encrypted object (a timeline history
//! file, which no page address checks) under another object's name and
//! rewrite the path in its seal. So an encrypted seal also carries a MAC
//! (above) under the key's metadata subkey, over its path and every field
//! that describes the content, whose digests in turn cover every stored
//! byte. A reader with the key checks it before writing anything and
//! refuses, with [`Error::Unauthenticated`] naming the object, an encrypted
//! seal without a MAC, with a MAC by another key (`other_key` set), or
//! with one that does not match (altered, or moved to another path). The
//! MAC sits in the seal's JSON rather than in a wrapping envelope so that
//! seals without a key stay byte for byte as they were; a build from before
//! the MAC refuses a seal that carries one (`deny_unknown_fields`: "unknown
//! field `mac`") instead of ignoring it, so the version stays 1. A MAC'd
//! seal read without the key, or with another, fails as any encrypted
//! object does ([`Error::KeyMissing`], [`Error::WrongKey`]) before its MAC
//! is looked at.
//!
//! A seal that records no key would let a plaintext object of anyone's
//! choosing stand in for an encrypted one. So a codec with encryption
//! configured refuses a sealed object that is not encrypted
//! ([`Error::Unencrypted`]), unless it was built
//! [`Codec::with_allow_unencrypted`] (a repository that holds objects from
//! before encryption was turned on). An unencrypted seal is never MAC'd
//! (its writer had no key); one that carries a MAC is refused as corrupt.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{
    Check, Codec, Compression, Encoder, ObjectInfo, READ_BUFFER, Reading, download, read_key,
};
use crate::crypto::EncryptionKey;
use crate::error::{Error, Result};
use crate::record;

/// The magic of the zstd skippable frame that opens a sealed object.
const SEAL_MAGIC: u32 = 0x184D_2A5E;
/// The magic and the length.
const SEAL_HEADER: usize = 8;
/// Upper bound of a seal's JSON (a few hundred bytes in practice).
const MAX_SEAL: usize = 16 * 1024;
/// The seal format version.
const SEAL_VERSION: u32 = 1;
/// The kind an encrypted seal's MAC covers (see the module docs).
const SEAL_KIND: &str = "sealed";

/// What [`Codec::put_sealed`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SealedPut {
    /// The object was written.
    Created(ObjectInfo),
    /// An object was already there and was left alone.
    Exists {
        /// What this call would have written.
        ours: ObjectInfo,
        /// What the existing object holds (read whole and verified).
        existing: ObjectInfo,
    },
}

/// The JSON inside a sealed object's skippable frame.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Seal {
    sealed: u32,
    path: String,
    #[serde(flatten)]
    info: ObjectInfo,
    /// `hmac-sha256:<key id>:<tag>`, when encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mac: Option<String>,
}

impl Codec {
    /// Writes `reader` as a **sealed** object at `path` (see the module
    /// docs), create-if-absent.
    ///
    /// The content is encoded in memory (at most `max_size` content bytes,
    /// else an error and nothing written), because a conditional write
    /// cannot be a multipart upload: this is for objects of bounded size (a
    /// WAL segment: 16 MiB by default). When an object already exists at
    /// `path` (found by a `HEAD` first, or by the conditional PUT losing a
    /// race) nothing is written: the existing object is read whole and
    /// verified, and both infos are returned so that the caller can compare
    /// the contents' digests. A corrupt existing object is an error naming
    /// it, and so is an unencrypted one when encryption is configured and
    /// unencrypted objects are not allowed ([`Error::Unencrypted`], as
    /// [`Codec::get_sealed`] would refuse it): a write must not report
    /// success for an object that cannot be read back.
    pub async fn put_sealed<R>(
        &self,
        store: &Arc<dyn ObjectStore>,
        path: &Path,
        reader: R,
        max_size: u64,
    ) -> Result<SealedPut>
    where
        R: AsyncRead + Unpin + Send,
    {
        let name = path.as_ref();
        let key = self.write_key(name)?;
        let mut encoder = Encoder::new(self.compression, self.level, key, reader);
        let mut data = Vec::new();
        let mut buf = vec![0u8; READ_BUFFER];
        loop {
            let n = encoder.read_source(&mut buf, name).await?;
            if n == 0 {
                break;
            }
            if encoder.content().count > max_size {
                return Err(Error::Io {
                    context: "reading source for",
                    path: name.to_string(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("the source is larger than the limit of {max_size} bytes"),
                    ),
                });
            }
            data.extend_from_slice(&buf[..n]);
        }
        let sha256 = hex::encode(Sha256::digest(&data));
        let ours = self.info(encoder.into_content(), key, data.len() as u64, sha256);
        let header = Bytes::from(seal_frame(name, &ours, key)?);
        let data = Bytes::from(data);

        // HEAD first: on a backend that ignores conditional headers, a
        // re-sent push still never overwrites (short of a race).
        match store.head(path).await {
            Ok(_) => return self.existing(store, path, ours).await,
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(Error::from_store(name, e)),
        }
        let mut attempts = 0;
        loop {
            let payload = PutPayload::from_iter([header.clone(), data.clone()]);
            let opts = PutOptions::from(PutMode::Create);
            match store.put_opts(path, payload, opts).await {
                Ok(_) => return Ok(SealedPut::Created(ours)),
                // An object appeared meanwhile, or this is the re-sent
                // request of a write that landed: read what is there.
                Err(object_store::Error::AlreadyExists { .. }) => {
                    match self.existing(store, path, ours.clone()).await {
                        // S3's 409 for a concurrent conditional request
                        // whose competitor did not land: try again.
                        Err(Error::NotFound { .. }) if attempts < 3 => attempts += 1,
                        other => return other,
                    }
                }
                Err(e) => return Err(Error::from_store(name, e)),
            }
        }
    }

    async fn existing(
        &self,
        store: &Arc<dyn ObjectStore>,
        path: &Path,
        ours: ObjectInfo,
    ) -> Result<SealedPut> {
        let existing = self.get_sealed(store, path, &mut tokio::io::sink()).await?;
        Ok(SealedPut::Exists { ours, existing })
    }

    /// Streams the content of the sealed object at `path` into `writer`,
    /// verified against the object's own seal, and returns the seal's
    /// [`ObjectInfo`]. A seal that is missing, unreadable or names another
    /// path is [`Error::Corrupt`]; content that does not match it is
    /// [`Error::DigestMismatch`]; both name the object. With encryption
    /// configured, an object that is not encrypted is [`Error::Unencrypted`]
    /// (see [`Codec::check_unencrypted`]), one encrypted with another key
    /// [`Error::WrongKey`]. With the key, an encrypted object whose seal is
    /// not authenticated by it (no MAC, a MAC by another key, or one that
    /// does not match: altered, or moved from another path) is
    /// [`Error::Unauthenticated`] naming the object, and nothing is written.
    /// As with [`Codec::get`], output is provisional until this returns
    /// `Ok`.
    pub async fn get_sealed<W>(
        &self,
        store: &Arc<dyn ObjectStore>,
        path: &Path,
        writer: &mut W,
    ) -> Result<ObjectInfo>
    where
        W: AsyncWrite + Unpin + Send + ?Sized,
    {
        let name = path.as_ref();
        let mut stream = download(store, path).await?;
        let corrupt = |reason: String| Error::Corrupt {
            path: name.to_string(),
            reason,
        };
        let mut head = Vec::new();
        let mut need = SEAL_HEADER;
        while head.len() < need {
            match stream.next().await {
                Some(Ok(chunk)) => head.extend_from_slice(&chunk),
                Some(Err(e)) => return Err(Error::from_store(name, e)),
                None => return Err(corrupt("shorter than its seal".into())),
            }
            if need == SEAL_HEADER && head.len() >= SEAL_HEADER {
                let word =
                    |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
                if word(0) != SEAL_MAGIC {
                    return Err(corrupt(
                        "not a sealed object (no warmspare seal frame)".into(),
                    ));
                }
                let len = word(4) as usize;
                if len > MAX_SEAL {
                    return Err(corrupt(format!("seal of {len} bytes exceeds {MAX_SEAL}")));
                }
                need = SEAL_HEADER + len;
            }
        }
        let rest = Bytes::from(head.split_off(need));
        let seal: Seal = serde_json::from_slice(&head[SEAL_HEADER..])
            .map_err(|e| corrupt(format!("unreadable seal: {e}")))?;
        if seal.sealed != SEAL_VERSION {
            return Err(corrupt(format!(
                "seal version {} is not {SEAL_VERSION}",
                seal.sealed
            )));
        }
        if seal.path != name {
            return Err(corrupt(format!(
                "its seal names {}: the object was copied or renamed here",
                seal.path
            )));
        }
        // A missing or another key fails here, as for any encrypted object,
        // before the MAC that it could not check. The key is `Some` exactly
        // when the seal records one.
        let key = read_key(name, &seal.info, &self.encryption)?;
        match (key, seal.mac.as_deref()) {
            (None, None) => self.check_unencrypted(name)?,
            (None, Some(_)) => {
                return Err(corrupt(
                    "its seal carries a MAC but records no encryption key".into(),
                ));
            }
            (Some(key), mac) => {
                let mac = mac.ok_or_else(|| record::no_mac(name))?;
                let body = mac_body(seal.sealed, &seal.info);
                record::verify_mac_text(key, mac, SEAL_KIND, name, &body)?;
            }
        }
        let stream = futures::stream::once(std::future::ready(Ok(rest)))
            .chain(stream)
            .boxed();
        let reading = Reading {
            name,
            expected: &seal.info,
            key,
            check: Check::Full,
        };
        reading.decode(stream, writer, None).await?;
        Ok(seal.info)
    }

    /// Whether an object at `path` that describes itself as unencrypted (a
    /// sealed object whose seal records no key, an inventory of an earlier
    /// build) may be read: always without encryption; with encryption
    /// configured (its key loaded or not) only when unencrypted objects are
    /// allowed ([`Codec::with_allow_unencrypted`]), else
    /// [`Error::Unencrypted`] naming the object.
    pub fn check_unencrypted(&self, path: &str) -> Result<()> {
        if self.encryption.is_enabled() && !self.allow_unencrypted {
            return Err(Error::Unencrypted {
                path: path.to_string(),
            });
        }
        Ok(())
    }
}

/// The skippable frame holding the seal of `info` stored at `path`, MAC'd
/// with `key` (the key the content is encrypted with).
fn seal_frame(path: &str, info: &ObjectInfo, key: Option<&EncryptionKey>) -> Result<Vec<u8>> {
    let mac = key
        .map(|key| record::mac_text(key, SEAL_KIND, path, &mac_body(SEAL_VERSION, info)))
        .transpose()?;
    let seal = Seal {
        sealed: SEAL_VERSION,
        path: path.to_string(),
        info: info.clone(),
        mac,
    };
    let json = serde_json::to_vec(&seal).unwrap_or_default();
    let mut frame = Vec::with_capacity(SEAL_HEADER + json.len());
    frame.extend_from_slice(&SEAL_MAGIC.to_le_bytes());
    frame.extend_from_slice(&(json.len() as u32).to_le_bytes());
    frame.extend_from_slice(&json);
    Ok(frame)
}

/// What an encrypted seal's MAC covers after its kind and path: every
/// field but the path, each as the text of its JSON value preceded by the
/// text's length (u32 BE), so that no field can run into the next one.
fn mac_body(sealed: u32, info: &ObjectInfo) -> Vec<u8> {
    let compression = match info.compression {
        Compression::None => "none",
        Compression::Zstd => "zstd",
    };
    let fields = [
        sealed.to_string(),
        info.size.to_string(),
        info.stored_size.to_string(),
        info.sha256.clone(),
        info.content_sha256.clone(),
        compression.to_string(),
        info.encryption_key_id.clone().unwrap_or_default(),
    ];
    let mut body = Vec::with_capacity(fields.iter().map(|f| f.len() + 4).sum());
    for field in fields {
        // A seal's fields are far below 4 GiB (the seal is at most MAX_SEAL).
        let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
        body.extend_from_slice(&len.to_be_bytes());
        body.extend_from_slice(field.as_bytes());
    }
    body
}

#[cfg(test)]
mod tests;
