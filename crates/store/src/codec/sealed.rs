//! Sealed objects: immutable objects that carry their own [`ObjectInfo`],
//! for data that no manifest lists (WAL segments, timeline history files).
//!
//! ```text
//! [skippable frame: magic 0x184D2A5E, u32 LE length, seal JSON][encoded content]
//! seal JSON: {"sealed":1,"path":"wal/...","size":..,"stored_size":..,"sha256":..,"content_sha256":..,"compression":"zstd"}
//! ```
//!
//! `0x184D2A50..=0x184D2A5F` are zstd *skippable frames*, so a sealed
//! zstd object is still a valid `.zst` file: `zstd -d` skips the seal and
//! decodes the content. The seal names the object's path, so an object
//! copied or renamed to another name (a WAL segment under another
//! segment's name) is refused rather than replayed. The seal itself has no
//! digest of its own: damage to it either breaks its JSON, or changes a
//! recorded digest or size so that the content no longer matches.
//!
//! With encryption, the encoded content after the seal is an encrypted
//! stream ([`crate::crypto`]) and the seal records `encryption_key_id`; the
//! seal itself stays readable, and the object is no longer a `.zst` file.
//!
//! The seal is not authenticated: whoever can write to the bucket can write
//! a seal. An encrypted object is bound to the key by its encryption (a
//! forged one fails authentication), but a seal that records no key would
//! let a plaintext object of anyone's choosing stand in for an encrypted
//! one. So a codec with encryption configured refuses a sealed object that
//! is not encrypted ([`Error::Unencrypted`]), unless it was built
//! [`Codec::with_allow_unencrypted`] (a repository that holds objects from
//! before encryption was turned on).

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Codec, Encoder, ObjectInfo, READ_BUFFER, decode_verified, download};
use crate::error::{Error, Result};

/// The magic of the zstd skippable frame that opens a sealed object.
const SEAL_MAGIC: u32 = 0x184D_2A5E;
/// The magic and the length.
const SEAL_HEADER: usize = 8;
/// Upper bound of a seal's JSON (a few hundred bytes in practice).
const MAX_SEAL: usize = 16 * 1024;
/// The seal format version.
const SEAL_VERSION: u32 = 1;

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
        let header = Bytes::from(seal_frame(name, &ours));
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
    /// [`Error::WrongKey`]. As with [`Codec::get`], output is provisional
    /// until this returns `Ok`.
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
        if seal.info.encryption_key_id.is_none() {
            self.check_unencrypted(name)?;
        }
        let stream = futures::stream::once(std::future::ready(Ok(rest)))
            .chain(stream)
            .boxed();
        decode_verified(name, stream, &seal.info, &self.encryption, writer, None).await?;
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

fn seal_frame(path: &str, info: &ObjectInfo) -> Vec<u8> {
    let seal = Seal {
        sealed: SEAL_VERSION,
        path: path.to_string(),
        info: info.clone(),
    };
    let json = serde_json::to_vec(&seal).unwrap_or_default();
    let mut frame = Vec::with_capacity(SEAL_HEADER + json.len());
    frame.extend_from_slice(&SEAL_MAGIC.to_le_bytes());
    frame.extend_from_slice(&(json.len() as u32).to_le_bytes());
    frame.extend_from_slice(&json);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Compression;
    use crate::crypto::EncryptionKey;
    use async_compression::tokio::bufread::ZstdDecoder;
    use object_store::memory::InMemory;
    use tokio::io::AsyncReadExt;

    fn mem() -> Arc<dyn ObjectStore> {
        Arc::new(InMemory::new())
    }

    fn data() -> Vec<u8> {
        (0..300_000u32)
            .flat_map(|i| (i % 977).to_le_bytes())
            .collect()
    }

    #[tokio::test]
    async fn roundtrip_and_created_once() {
        for compression in [Compression::None, Compression::Zstd] {
            let store = mem();
            let codec = Codec::new(compression);
            let path = Path::from("wal/00000001/000000010000000000000001.zst");
            let data = data();
            let put = codec
                .put_sealed(&store, &path, &data[..], 1 << 24)
                .await
                .unwrap();
            let SealedPut::Created(info) = put else {
                panic!("{put:?}")
            };
            assert_eq!(info.size, data.len() as u64);
            assert_eq!(info.content_sha256, hex::encode(Sha256::digest(&data)));
            assert_eq!(info.compression, compression);
            let mut out = Vec::new();
            let read = codec.get_sealed(&store, &path, &mut out).await.unwrap();
            assert_eq!((read, out), (info.clone(), data.clone()));

            // Identical content again: left alone, both infos agree.
            let again = codec
                .put_sealed(&store, &path, &data[..], 1 << 24)
                .await
                .unwrap();
            assert_eq!(
                again,
                SealedPut::Exists {
                    ours: info.clone(),
                    existing: info.clone()
                }
            );
            // Other content: left alone, the infos differ.
            let other = codec
                .put_sealed(&store, &path, &b"other"[..], 1 << 24)
                .await
                .unwrap();
            let SealedPut::Exists { ours, existing } = other else {
                panic!("{other:?}")
            };
            assert_eq!(existing, info);
            assert_ne!(ours.content_sha256, existing.content_sha256);
            let mut out = Vec::new();
            codec.get_sealed(&store, &path, &mut out).await.unwrap();
            assert_eq!(out, data, "never overwritten");
        }
    }

    #[tokio::test]
    async fn encrypted_sealed_objects() {
        let key = EncryptionKey::generate();
        let codec = Codec::default().with_encryption(crate::Encryption::Key(key.clone()));
        let store = mem();
        let path = Path::from("wal/00000001/000000010000000000000002.zst");
        let data = data();
        let SealedPut::Created(info) = codec
            .put_sealed(&store, &path, &data[..], 1 << 24)
            .await
            .unwrap()
        else {
            panic!("not created")
        };
        assert_eq!(info.encryption_key_id, Some(key.id()));
        let mut out = Vec::new();
        assert_eq!(
            codec.get_sealed(&store, &path, &mut out).await.unwrap(),
            info
        );
        assert_eq!(out, data);
        let again = codec
            .put_sealed(&store, &path, &data[..], 1 << 24)
            .await
            .unwrap();
        let SealedPut::Exists { ours, existing } = again else {
            panic!("{again:?}")
        };
        assert_eq!(ours.content_sha256, existing.content_sha256);

        let err = Codec::default()
            .get_sealed(&store, &path, &mut Vec::new())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::KeyMissing { .. }), "{err:?}");
        let other =
            Codec::default().with_encryption(crate::Encryption::Key(EncryptionKey::generate()));
        let err = other
            .get_sealed(&store, &path, &mut Vec::new())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::WrongKey { .. }), "{err:?}");

        let mut stored = store
            .get(&path)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .to_vec();
        let last = stored.len() - 1;
        stored[last] ^= 1;
        store.put(&path, stored.into()).await.unwrap();
        let err = codec
            .get_sealed(&store, &path, &mut Vec::new())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Authentication { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn unencrypted_sealed_objects_need_the_opt_in() {
        let store = mem();
        let path = Path::from("wal/00000001/000000010000000000000003.zst");
        let data = data();
        // Planted without a key (or written before encryption was on).
        let SealedPut::Created(plain) = Codec::default()
            .put_sealed(&store, &path, &data[..], 1 << 24)
            .await
            .unwrap()
        else {
            panic!("not created")
        };
        assert_eq!(plain.encryption_key_id, None);

        let key = EncryptionKey::generate();
        let keyed = Codec::default().with_encryption(crate::Encryption::Key(key.clone()));
        let not_loaded = Codec::default().with_encryption(crate::Encryption::KeyNotLoaded {
            source: "encryption_key_file /k".into(),
        });
        for codec in [&keyed, &not_loaded] {
            let mut out = Vec::new();
            let err = codec.get_sealed(&store, &path, &mut out).await.unwrap_err();
            assert!(
                matches!(&err, Error::Unencrypted { path: p } if p == path.as_ref()),
                "{err:?}"
            );
            assert!(out.is_empty(), "nothing of it is written");
            let text = err.to_string();
            assert!(
                text.contains(path.as_ref()) && text.contains("allow_unencrypted = true"),
                "{text}"
            );
            assert!(!err.is_retryable());
        }
        // A re-push of the same content is refused too: it could not be
        // read back.
        let err = keyed
            .put_sealed(&store, &path, &data[..], 1 << 24)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Unencrypted { .. }), "{err:?}");

        // With the opt-in it reads, and an identical re-push succeeds.
        let allowing = keyed.clone().with_allow_unencrypted(true);
        assert!(allowing.allows_unencrypted());
        let mut out = Vec::new();
        assert_eq!(
            allowing.get_sealed(&store, &path, &mut out).await.unwrap(),
            plain
        );
        assert_eq!(out, data);
        let again = allowing
            .put_sealed(&store, &path, &data[..], 1 << 24)
            .await
            .unwrap();
        let SealedPut::Exists { ours, existing } = again else {
            panic!("{again:?}")
        };
        assert_eq!(existing, plain);
        assert_eq!(ours.content_sha256, existing.content_sha256);
        assert_eq!(ours.encryption_key_id, Some(key.id()));

        // Encrypted objects read either way; the opt-in does not accept
        // another key's objects.
        let sealed = Path::from("wal/00000001/000000010000000000000004.zst");
        keyed
            .put_sealed(&store, &sealed, &data[..], 1 << 24)
            .await
            .unwrap();
        for codec in [&keyed, &allowing] {
            let mut out = Vec::new();
            codec.get_sealed(&store, &sealed, &mut out).await.unwrap();
            assert_eq!(out, data);
        }
        let other = Codec::default()
            .with_encryption(crate::Encryption::Key(EncryptionKey::generate()))
            .with_allow_unencrypted(true);
        let err = other
            .get_sealed(&store, &sealed, &mut Vec::new())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::WrongKey { .. }), "{err:?}");
        // Without encryption the setting changes nothing.
        Codec::default()
            .get_sealed(&store, &path, &mut Vec::new())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn zstd_sealed_objects_are_plain_zstd_files() {
        let store = mem();
        let path = Path::from("s");
        let data = data();
        Codec::default()
            .put_sealed(&store, &path, &data[..], 1 << 24)
            .await
            .unwrap();
        let stored = store.get(&path).await.unwrap().bytes().await.unwrap();
        // A zstd decoder skips the seal (a skippable frame).
        let mut decoder = ZstdDecoder::new(&stored[..]);
        decoder.multiple_members(true);
        let mut out = Vec::new();
        decoder.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, data);
    }

    #[tokio::test]
    async fn any_damage_is_detected_and_named() {
        let store = mem();
        let codec = Codec::default();
        let path = Path::from("wal/00000001.history");
        let data = data();
        codec
            .put_sealed(&store, &path, &data[..], 1 << 24)
            .await
            .unwrap();
        let stored = store.get(&path).await.unwrap().bytes().await.unwrap();
        let seal_len = u32::from_le_bytes(stored[4..8].try_into().unwrap()) as usize;
        // The magic, bytes of the seal's JSON, of the content.
        let spots = [0, 12, 8 + seal_len / 2, 8 + seal_len - 2];
        for at in spots
            .into_iter()
            .chain([stored.len() / 2, stored.len() - 1])
        {
            let mut bad = stored.to_vec();
            bad[at] ^= 0x04;
            store.put(&path, bad.into()).await.unwrap();
            let err = codec
                .get_sealed(&store, &path, &mut Vec::new())
                .await
                .unwrap_err();
            assert!(
                matches!(&err, Error::DigestMismatch { path: p, .. } | Error::Corrupt { path: p, .. } if p == "wal/00000001.history"),
                "flip at {at}: {err:?}"
            );
            // A damaged existing object fails a re-push too.
            let err = codec
                .put_sealed(&store, &path, &data[..], 1 << 24)
                .await
                .unwrap_err();
            assert!(!err.is_retryable(), "{err:?}");
        }
        // Truncated, and moved to another name.
        store.put(&path, stored.slice(..5).into()).await.unwrap();
        let err = codec
            .get_sealed(&store, &path, &mut Vec::new())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
        let moved = Path::from("wal/00000002.history");
        store.put(&moved, stored.clone().into()).await.unwrap();
        let err = codec
            .get_sealed(&store, &moved, &mut Vec::new())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("copied or renamed"), "{err}");
        // Not sealed at all; absent.
        store.put(&moved, b"plain".to_vec().into()).await.unwrap();
        let err = codec
            .get_sealed(&store, &moved, &mut Vec::new())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
        let err = codec
            .get_sealed(&store, &Path::from("none"), &mut Vec::new())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn size_limit() {
        let store = mem();
        let err = Codec::default()
            .put_sealed(&store, &Path::from("big"), &data()[..], 1000)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("limit of 1000 bytes"), "{err}");
        assert!(
            store.head(&Path::from("big")).await.is_err(),
            "nothing written"
        );
    }

    #[tokio::test]
    async fn local_filesystem_creates_once() {
        // `LocalFileSystem` implements create-if-absent with a hard link.
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        let path = Path::from("wal/00000001/000000010000000000000002.zst");
        let codec = Codec::default();
        let put = codec
            .put_sealed(&store, &path, &b"segment"[..], 100)
            .await
            .unwrap();
        assert!(matches!(put, SealedPut::Created(_)));
        let put = codec
            .put_sealed(&store, &path, &b"other"[..], 100)
            .await
            .unwrap();
        assert!(matches!(put, SealedPut::Exists { ours, existing } if ours != existing));
    }
}
