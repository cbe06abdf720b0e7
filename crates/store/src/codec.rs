//! The streaming codec: data objects go through compression and SHA-256 on
//! their way in and out, in bounded memory whatever their size.
//!
//! ```text
//! put: reader -> sha256(content) -> zstd -> [encrypt] -> sha256(stored) -> multipart upload
//! get: download -> sha256(stored) -> [decrypt, authenticate] -> zstd -> sha256(content) -> writer
//! ```
//!
//! Encryption is optional ([`Codec::with_encryption`], format and design in
//! [`crate::crypto`]); [`ObjectInfo::encryption_key_id`] records it, so that
//! a reader without the key, or with another, fails before decrypting. A
//! reader with a key still reads an object that its [`ObjectInfo`] records
//! as unencrypted (written before encryption was turned on): that record
//! comes from an authenticated manifest. Sealed objects describe their own
//! encoding, so there a reader with a key refuses an unencrypted one unless
//! [`Codec::with_allow_unencrypted`] says otherwise.
//!
//! Memory: one 64 KiB read buffer, the zstd window (a few MiB at the levels
//! allowed), and the upload buffers: `part_size` bytes being filled plus at
//! most `max_concurrency` parts in flight (8 MiB and 4 by default, about
//! 40 MiB). S3 allows 10,000 parts, so the default part size caps one
//! object at about 78 GiB; raise it for larger objects.
//!
//! **Output of [`Codec::get`] is provisional until it returns `Ok`**: the
//! digests can only be compared once the last byte has been read, so a
//! corrupt object has already been partly written to the caller's writer
//! when the mismatch is reported. Write to a staging location and publish
//! it (rename) only after success.
//!
//! Objects that no manifest lists (WAL segments, history files) are
//! *sealed* ([`Codec::put_sealed`], [`Codec::get_sealed`]): they carry their
//! own sizes and digests in a zstd skippable frame and are written
//! create-if-absent (format in `codec/sealed.rs`).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use async_compression::Level;
use async_compression::tokio::bufread::{ZstdDecoder, ZstdEncoder};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{GetOptions, ObjectStore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::crypto::{DecryptReader, EncryptReader, Encryption, EncryptionKey, decrypt_failure};
use crate::error::{Error, Result};

mod sealed;
mod stage;

pub use sealed::SealedPut;
pub use stage::{ReadStage, ReadWrapper};

const READ_BUFFER: usize = 64 * 1024;

/// Default multipart part size.
pub const DEFAULT_PART_SIZE: usize = 8 * 1024 * 1024;
/// Default number of parts uploaded concurrently.
pub const DEFAULT_MAX_CONCURRENCY: usize = 4;

/// How data objects are compressed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Stored as is.
    None,
    /// Zstandard, one frame.
    #[default]
    Zstd,
}

/// What was stored: sizes and SHA-256 digests (lowercase hex) of the
/// content and of the stored bytes. Recorded by the writer (in a manifest,
/// an inventory) and checked by every reader.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ObjectInfo {
    /// Size of the content (before compression).
    pub size: u64,
    /// Size of the stored object.
    pub stored_size: u64,
    /// SHA-256 of the stored bytes.
    pub sha256: String,
    /// SHA-256 of the content.
    pub content_sha256: String,
    /// How the stored bytes encode the content.
    pub compression: Compression,
    /// The id of the key the stored bytes are encrypted with; `None` when
    /// they are not encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_key_id: Option<String>,
}

/// A progress callback: called with the number of content bytes processed
/// so far.
pub type Progress<'a> = &'a (dyn Fn(u64) + Send + Sync);

/// Streaming put and verified get of data objects (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Codec {
    compression: Compression,
    level: i32,
    part_size: usize,
    max_concurrency: usize,
    encryption: Encryption,
    allow_unencrypted: bool,
}

impl Default for Codec {
    fn default() -> Self {
        Self::new(Compression::Zstd)
    }
}

impl Codec {
    /// A codec writing with `compression` (zstd level 3), 8 MiB parts, 4
    /// parts in flight.
    pub fn new(compression: Compression) -> Self {
        Self {
            compression,
            level: crate::config::DEFAULT_COMPRESSION_LEVEL,
            part_size: DEFAULT_PART_SIZE,
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
            encryption: Encryption::Off,
            allow_unencrypted: false,
        }
    }

    /// Sets encryption at rest (see [`crate::crypto`]).
    pub fn with_encryption(mut self, encryption: Encryption) -> Self {
        self.encryption = encryption;
        self
    }

    /// With encryption configured, reads (`true`) or refuses (`false`, the
    /// default) sealed objects that are not encrypted
    /// ([`crate::StoreConfig::allow_unencrypted`]).
    pub fn with_allow_unencrypted(mut self, allow: bool) -> Self {
        self.allow_unencrypted = allow;
        self
    }

    /// Whether unencrypted sealed objects are read with encryption
    /// configured (see [`Codec::with_allow_unencrypted`]).
    pub fn allows_unencrypted(&self) -> bool {
        self.allow_unencrypted
    }

    /// The encryption setting.
    pub fn encryption(&self) -> &Encryption {
        &self.encryption
    }

    /// The key to write with, or the refusal to write without one.
    pub(crate) fn write_key(&self, path: &str) -> Result<Option<&EncryptionKey>> {
        match &self.encryption {
            Encryption::Off => Ok(None),
            Encryption::Key(key) => Ok(Some(key)),
            Encryption::KeyNotLoaded { source } => Err(Error::KeyNotLoaded {
                path: path.to_string(),
                source_name: source.clone(),
            }),
        }
    }

    /// Sets the zstd level (clamped to 1..=19).
    pub fn with_level(mut self, level: i32) -> Self {
        self.level = level.clamp(1, 19);
        self
    }

    /// Sets the multipart part size (at least 5 MiB, the S3 minimum).
    pub fn with_part_size(mut self, bytes: usize) -> Self {
        self.part_size = bytes.max(5 * 1024 * 1024);
        self
    }

    /// Sets how many parts may be uploaded at once (at least 1).
    pub fn with_max_concurrency(mut self, parts: usize) -> Self {
        self.max_concurrency = parts.max(1);
        self
    }

    /// The compression used for writing.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// Streams `reader` into the object at `path` (overwriting it),
    /// compressing and hashing on the way. Objects up to one part are sent
    /// with one PUT, larger ones as a multipart upload; either way the
    /// object appears atomically when this returns `Ok`. On error the
    /// multipart upload is aborted; if the future is dropped, an incomplete
    /// multipart upload may remain (S3 lifecycle rules remove those).
    pub async fn put<R>(
        &self,
        store: &Arc<dyn ObjectStore>,
        path: &Path,
        reader: R,
        progress: Option<Progress<'_>>,
    ) -> Result<ObjectInfo>
    where
        R: AsyncRead + Unpin + Send,
    {
        let key = self.write_key(path.as_ref())?;
        let mut encoder = Encoder::new(self.compression, self.level, key, reader);
        let mut upload = BufWriter::with_capacity(Arc::clone(store), path.clone(), self.part_size)
            .with_max_concurrency(self.max_concurrency);
        let mut stored = Sha256::new();
        let mut stored_size = 0u64;
        let mut buf = vec![0u8; READ_BUFFER];

        let written: Result<()> = async {
            loop {
                let n = encoder.read_source(&mut buf, path.as_ref()).await?;
                if n == 0 {
                    return Ok(());
                }
                stored.update(&buf[..n]);
                stored_size += n as u64;
                upload
                    .write_all(&buf[..n])
                    .await
                    .map_err(|e| Error::from_io("uploading", path.as_ref(), e))?;
                if let Some(progress) = progress {
                    progress(encoder.content().count);
                }
            }
        }
        .await;
        if let Err(e) = written {
            // Best effort: the error that matters is the one above.
            let _ = upload.abort().await;
            return Err(e);
        }
        // `shutdown` completes the upload, or aborts it on failure.
        upload
            .shutdown()
            .await
            .map_err(|e| Error::from_io("completing upload of", path.as_ref(), e))?;

        let content = encoder.into_content();
        if let Some(progress) = progress {
            progress(content.count);
        }
        let sha256 = hex::encode(stored.finalize());
        Ok(self.info(content, key, stored_size, sha256))
    }

    /// Streams the object at `path` into `writer`, decompressing and
    /// verifying it against `expected` (the [`ObjectInfo`] its writer
    /// recorded). A difference is [`Error::DigestMismatch`] naming the
    /// object; the stored bytes are always hashed to the end so that
    /// corruption is reported as such even when it breaks decompression.
    ///
    /// What was written to `writer` is provisional until this returns `Ok`.
    /// `writer` is flushed, not shut down.
    pub async fn get<W>(
        &self,
        store: &Arc<dyn ObjectStore>,
        path: &Path,
        expected: &ObjectInfo,
        writer: &mut W,
        progress: Option<Progress<'_>>,
    ) -> Result<()>
    where
        W: AsyncWrite + Unpin + Send + ?Sized,
    {
        self.get_checked(store, path, expected, writer, progress, Check::Full)
            .await
    }

    /// [`Codec::get`], checking as much as `check` says.
    pub async fn get_checked<W>(
        &self,
        store: &Arc<dyn ObjectStore>,
        path: &Path,
        expected: &ObjectInfo,
        writer: &mut W,
        progress: Option<Progress<'_>>,
        check: Check,
    ) -> Result<()>
    where
        W: AsyncWrite + Unpin + Send + ?Sized,
    {
        let name = path.as_ref();
        let stream = download(store, path).await?;
        let reading = Reading {
            name,
            expected,
            key: read_key(name, expected, &self.encryption)?,
            check,
        };
        reading.decode(stream, writer, progress).await
    }

    /// What an object written with `key` holds: the content as `content`
    /// counted and hashed it, stored as `stored_size` bytes of digest
    /// `sha256`.
    fn info<R>(
        &self,
        content: HashingReader<R>,
        key: Option<&EncryptionKey>,
        stored_size: u64,
        sha256: String,
    ) -> ObjectInfo {
        ObjectInfo {
            size: content.count,
            stored_size,
            sha256,
            content_sha256: hex::encode(content.hasher.finalize()),
            compression: self.compression,
            encryption_key_id: key.map(EncryptionKey::id),
        }
    }
}

/// The stored bytes of the object at `path`.
async fn download(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
) -> Result<BoxStream<'static, object_store::Result<Bytes>>> {
    let result = store
        .get_opts(path, GetOptions::default())
        .await
        .map_err(|e| Error::from_store(path.as_ref(), e))?;
    Ok(result.into_stream())
}

/// The key to read an object recorded as `expected` with: `None` for an
/// unencrypted object, an error naming the object when the key is missing
/// or another one.
fn read_key<'a>(
    name: &str,
    expected: &ObjectInfo,
    encryption: &'a Encryption,
) -> Result<Option<&'a EncryptionKey>> {
    let Some(key_id) = &expected.encryption_key_id else {
        return Ok(None);
    };
    match encryption.key() {
        Some(key) if key.id() == *key_id => Ok(Some(key)),
        Some(key) => Err(Error::WrongKey {
            path: name.to_string(),
            key_id: key_id.clone(),
            configured: key.id(),
        }),
        None => Err(Error::KeyMissing {
            path: name.to_string(),
            key_id: key_id.clone(),
        }),
    }
}

/// How much a read of a data object checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Check {
    /// The stored bytes' size and SHA-256, and the content's size and
    /// SHA-256: what `verify` runs.
    Full,
    /// The stored bytes' size and SHA-256, the content's size, and zstd's
    /// own content checksum where the frame carries one (objects written
    /// since it was turned on); the content's SHA-256 is not recomputed.
    /// The stored digest already proves that the bytes are those written,
    /// and decoding them is deterministic: the content digest would only
    /// catch a fault of the decoder itself, for the price of hashing the
    /// content (3 times the stored bytes for a database dump), which a
    /// restore pays on the processor the database server needs.
    Stored,
}

/// One object being read and checked: `expected` as recorded, `key` what
/// [`read_key`] resolved for it.
struct Reading<'a> {
    name: &'a str,
    expected: &'a ObjectInfo,
    key: Option<&'a EncryptionKey>,
    check: Check,
}

impl Reading<'_> {
    async fn decode<W>(
        &self,
        stream: BoxStream<'static, object_store::Result<Bytes>>,
        writer: &mut W,
        progress: Option<Progress<'_>>,
    ) -> Result<()>
    where
        W: AsyncWrite + Unpin + Send + ?Sized,
    {
        let Self {
            name,
            expected,
            key,
            check,
        } = *self;
        let mut decoder = Decoder::new(expected.compression, key, StoredReader::new(stream));
        let mut content = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; READ_BUFFER];
        let mut undecodable = None;
        let mut oversized = false;
        loop {
            let n = match decoder.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    undecodable = Some(e);
                    break;
                }
            };
            if size + n as u64 > expected.size {
                oversized = true;
                break;
            }
            if check == Check::Full {
                content.update(&buf[..n]);
            }
            size += n as u64;
            writer
                .write_all(&buf[..n])
                .await
                .map_err(|e| Error::from_io("writing content of", name, e))?;
            if let Some(progress) = progress {
                progress(size);
            }
        }

        // Hash whatever the decoder left unread, so that the stored digest
        // always covers the whole object.
        let mut stored = decoder.into_stored();
        if let Some(e) = stored.transport_error.take() {
            return Err(Error::from_store(name, e));
        }
        let drained = tokio::io::copy(&mut stored, &mut tokio::io::sink()).await;
        if let Some(e) = stored.transport_error.take() {
            return Err(Error::from_store(name, e));
        }
        drained.map_err(|e| Error::from_io("reading", name, e))?;

        // An authentication failure is the most specific diagnosis there is:
        // reported even when the stored digest differs too.
        if let Some(reason) = undecodable.as_ref().and_then(decrypt_failure) {
            return Err(Error::Authentication {
                path: name.to_string(),
                reason: reason.to_string(),
            });
        }

        let stored_sha = hex::encode(stored.hasher.finalize());
        if stored_sha != expected.sha256 || stored.count != expected.stored_size {
            return Err(Error::DigestMismatch {
                path: name.to_string(),
                expected: expected.sha256.clone(),
                actual: stored_sha,
            });
        }
        if let Some(e) = undecodable {
            return Err(Error::Corrupt {
                path: name.to_string(),
                reason: format!("stored bytes match their digest but do not decode: {e}"),
            });
        }
        let content_sha = match check {
            Check::Full => hex::encode(content.finalize()),
            Check::Stored => expected.content_sha256.clone(),
        };
        if oversized || size != expected.size || content_sha != expected.content_sha256 {
            return Err(Error::DigestMismatch {
                path: name.to_string(),
                expected: expected.content_sha256.clone(),
                actual: if oversized {
                    format!("more than {} bytes of content", expected.size)
                } else if content_sha == expected.content_sha256 {
                    format!("{size} bytes of content, not {}", expected.size)
                } else {
                    content_sha
                },
            });
        }
        writer
            .flush()
            .await
            .map_err(|e| Error::from_io("writing content of", name, e))?;
        Ok(())
    }
}

/// Hashes and counts what passes through.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: AsyncRead + Unpin> AsyncRead for HashingReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let fresh = &buf.filled()[before..];
        self.hasher.update(fresh);
        self.count += fresh.len() as u64;
        Poll::Ready(Ok(()))
    }
}

/// The compression stage of `put`, over the content's hash.
type Compressor<R> =
    ReadStage<HashingReader<R>, ZstdEncoder<tokio::io::BufReader<HashingReader<R>>>>;

/// The compression and encryption stages of `put`.
type Encoder<R> = ReadStage<Compressor<R>, EncryptReader<Compressor<R>>>;

impl<R: AsyncRead + Unpin> Encoder<R> {
    fn new(compression: Compression, level: i32, key: Option<&EncryptionKey>, reader: R) -> Self {
        let content = HashingReader {
            inner: reader,
            hasher: Sha256::new(),
            count: 0,
        };
        let compressor = match compression {
            Compression::None => ReadStage::Off(content),
            // With zstd's content checksum (XXH64, checked by every
            // decoder): what a [`Check::Stored`] read relies on besides
            // the stored digest.
            Compression::Zstd => ReadStage::On(Box::new(ZstdEncoder::with_quality_and_params(
                tokio::io::BufReader::with_capacity(READ_BUFFER, content),
                Level::Precise(level),
                &[async_compression::zstd::CParameter::checksum_flag(true)],
            ))),
        };
        match key {
            None => ReadStage::Off(compressor),
            Some(key) => ReadStage::On(Box::new(EncryptReader::new(key, compressor))),
        }
    }

    /// Reads encoded bytes; an error names the object being written.
    async fn read_source(&mut self, buf: &mut [u8], name: &str) -> Result<usize> {
        self.read(buf)
            .await
            .map_err(|e| Error::from_io("reading source for", name, e))
    }

    fn content(&self) -> &HashingReader<R> {
        self.get_ref().get_ref()
    }

    fn into_content(self) -> HashingReader<R> {
        self.into_inner().into_inner()
    }
}

/// Reads a downloaded object's byte stream, hashing and counting the stored
/// bytes. Transport errors are kept aside so that they are not mistaken for
/// corruption.
struct StoredReader {
    stream: BoxStream<'static, object_store::Result<Bytes>>,
    chunk: Bytes,
    hasher: Sha256,
    count: u64,
    transport_error: Option<object_store::Error>,
}

impl StoredReader {
    fn new(stream: BoxStream<'static, object_store::Result<Bytes>>) -> Self {
        Self {
            stream,
            chunk: Bytes::new(),
            hasher: Sha256::new(),
            count: 0,
            transport_error: None,
        }
    }
}

impl AsyncRead for StoredReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.transport_error.is_some() {
            return Poll::Ready(Err(std::io::Error::other("download failed")));
        }
        while this.chunk.is_empty() {
            match ready!(this.stream.poll_next_unpin(cx)) {
                Some(Ok(chunk)) => {
                    this.hasher.update(&chunk);
                    this.count += chunk.len() as u64;
                    this.chunk = chunk;
                }
                Some(Err(e)) => {
                    this.transport_error = Some(e);
                    return Poll::Ready(Err(std::io::Error::other("download failed")));
                }
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = this.chunk.len().min(buf.remaining());
        buf.put_slice(&this.chunk.split_to(n));
        Poll::Ready(Ok(()))
    }
}

/// The decryption stage of `get`.
type Decrypter = ReadStage<StoredReader, DecryptReader<StoredReader>>;

/// The decryption and decompression stages of `get`.
type Decoder = ReadStage<Decrypter, ZstdDecoder<tokio::io::BufReader<Decrypter>>>;

impl Decoder {
    fn new(compression: Compression, key: Option<&EncryptionKey>, stored: StoredReader) -> Self {
        let stored = match key {
            None => ReadStage::Off(stored),
            Some(key) => ReadStage::On(Box::new(DecryptReader::new(key, stored))),
        };
        match compression {
            Compression::None => ReadStage::Off(stored),
            Compression::Zstd => ReadStage::On(Box::new(ZstdDecoder::new(
                tokio::io::BufReader::with_capacity(READ_BUFFER, stored),
            ))),
        }
    }

    /// The stored-bytes reader. Bytes the decoder had buffered are lost, but
    /// they were hashed when they were read.
    fn into_stored(self) -> StoredReader {
        self.into_inner().into_inner()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;
    use proptest::prelude::*;

    fn mem() -> Arc<dyn ObjectStore> {
        Arc::new(InMemory::new())
    }

    async fn roundtrip(codec: &Codec, data: Vec<u8>) -> ObjectInfo {
        let store = mem();
        let path = Path::from("o");
        let info = codec.put(&store, &path, &data[..], None).await.unwrap();
        assert_eq!(info.size, data.len() as u64);
        assert_eq!(info.content_sha256, hex::encode(Sha256::digest(&data)));
        let stored = store.get(&path).await.unwrap().bytes().await.unwrap();
        assert_eq!(info.stored_size, stored.len() as u64);
        assert_eq!(info.sha256, hex::encode(Sha256::digest(&stored)));
        let mut out = Vec::new();
        codec
            .get(&store, &path, &info, &mut out, None)
            .await
            .unwrap();
        assert_eq!(out, data);
        info
    }

    #[tokio::test]
    async fn empty_and_small_objects() {
        for compression in [Compression::None, Compression::Zstd] {
            let codec = Codec::new(compression);
            let info = roundtrip(&codec, Vec::new()).await;
            assert_eq!(info.size, 0);
            roundtrip(&codec, b"hello".to_vec()).await;
        }
        let info = roundtrip(&Codec::default(), vec![7u8; 1 << 20]).await;
        assert!(info.stored_size < 10_000, "zstd compresses: {info:?}");
    }

    /// A `Check::Stored` read: the content as written, zstd's checksum in
    /// every new frame, the stored digest and the content size still
    /// checked; only the content digest is not recomputed.
    #[tokio::test]
    async fn stored_checks_skip_only_the_content_digest() {
        let store = mem();
        let path = Path::from("snapshots/x/dump");
        let codec = Codec::default();
        let data: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let info = codec.put(&store, &path, &data[..], None).await.unwrap();
        let stored = store.get(&path).await.unwrap().bytes().await.unwrap();
        // Frame header descriptor (after the 4-byte magic): bit 2 is the
        // content checksum flag.
        assert_eq!(&stored[..4], &[0x28, 0xb5, 0x2f, 0xfd]);
        assert_ne!(stored[4] & 0b100, 0, "no content checksum");

        let read = |expected: ObjectInfo, check| {
            let (store, path, codec) = (&store, &path, &codec);
            async move {
                let mut out = Vec::new();
                codec
                    .get_checked(store, path, &expected, &mut out, None, check)
                    .await
                    .map(|()| out)
            }
        };
        assert_eq!(read(info.clone(), Check::Stored).await.unwrap(), data);
        let other_content = ObjectInfo {
            content_sha256: "0".repeat(64),
            ..info.clone()
        };
        assert!(read(other_content.clone(), Check::Full).await.is_err());
        assert!(read(other_content, Check::Stored).await.is_ok());
        for expected in [
            ObjectInfo {
                size: info.size - 1,
                ..info.clone()
            },
            ObjectInfo {
                size: info.size + 1,
                ..info.clone()
            },
            ObjectInfo {
                sha256: "0".repeat(64),
                ..info.clone()
            },
        ] {
            let e = read(expected, Check::Stored).await.unwrap_err();
            assert!(
                matches!(&e, Error::DigestMismatch { path, .. } if path == "snapshots/x/dump"),
                "{e}"
            );
        }
    }

    #[tokio::test]
    async fn progress_reports_content_bytes() {
        let counts = std::sync::Mutex::new(Vec::new());
        let progress = |n: u64| counts.lock().unwrap().push(n);
        let data = vec![1u8; 300_000];
        Codec::default()
            .put(&mem(), &Path::from("p"), &data[..], Some(&progress))
            .await
            .unwrap();
        let counts = counts.into_inner().unwrap();
        assert_eq!(counts.last(), Some(&300_000));
        assert!(counts.windows(2).all(|w| w[0] <= w[1]));
    }

    #[tokio::test]
    async fn corruption_is_a_digest_mismatch_naming_the_object() {
        let store = mem();
        let path = Path::from("snapshots/x/data");
        let codec = Codec::default();
        let data: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let info = codec.put(&store, &path, &data[..], None).await.unwrap();
        let mut stored = store
            .get(&path)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .to_vec();

        // Flip one byte in the middle: zstd may or may not notice.
        let mid = stored.len() / 2;
        stored[mid] ^= 0x40;
        store.put(&path, stored.clone().into()).await.unwrap();
        let err = codec
            .get(&store, &path, &info, &mut Vec::new(), None)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::DigestMismatch { path: p, expected, .. } if p == "snapshots/x/data" && *expected == info.sha256),
            "{err:?}"
        );

        // Trailing garbage after an intact frame.
        stored[mid] ^= 0x40;
        stored.extend_from_slice(b"junk");
        store.put(&path, stored.into()).await.unwrap();
        let err = codec
            .get(&store, &path, &info, &mut Vec::new(), None)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::DigestMismatch { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn missing_object_is_not_found() {
        let info = ObjectInfo {
            size: 0,
            stored_size: 0,
            sha256: String::new(),
            content_sha256: String::new(),
            compression: Compression::None,
            encryption_key_id: None,
        };
        let err = Codec::default()
            .get(&mem(), &Path::from("nope"), &info, &mut Vec::new(), None)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    }

    fn encrypted(compression: Compression, key: &EncryptionKey) -> Codec {
        Codec::new(compression).with_encryption(Encryption::Key(key.clone()))
    }

    fn pattern(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    #[tokio::test]
    async fn encrypted_objects_hide_content_and_record_the_key() {
        let key = EncryptionKey::generate();
        let data = b"a very secret database dump ".repeat(10_000);
        for compression in [Compression::None, Compression::Zstd] {
            let codec = encrypted(compression, &key);
            let info = roundtrip(&codec, data.clone()).await;
            assert_eq!(info.encryption_key_id, Some(key.id()));
            let store = mem();
            let path = Path::from("o");
            codec.put(&store, &path, &data[..], None).await.unwrap();
            let stored = store.get(&path).await.unwrap().bytes().await.unwrap();
            assert!(!stored.windows(6).any(|w| w == b"secret"));
        }
        // Unencrypted objects stay readable once a key is configured.
        let store = mem();
        let path = Path::from("old");
        let info = Codec::default()
            .put(&store, &path, &data[..], None)
            .await
            .unwrap();
        let mut out = Vec::new();
        encrypted(Compression::Zstd, &key)
            .get(&store, &path, &info, &mut out, None)
            .await
            .unwrap();
        assert_eq!(out, data);
    }

    #[tokio::test]
    async fn missing_or_wrong_key_is_a_clear_error() {
        let key = EncryptionKey::generate();
        let store = mem();
        let path = Path::from("snapshots/s1/dump");
        let info = encrypted(Compression::Zstd, &key)
            .put(&store, &path, &b"content"[..], None)
            .await
            .unwrap();
        let mut out = Vec::new();
        let err = Codec::default()
            .get(&store, &path, &info, &mut out, None)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::KeyMissing { key_id, .. } if *key_id == key.id()),
            "{err:?}"
        );
        assert!(err.to_string().contains("snapshots/s1/dump"), "{err}");
        assert!(err.to_string().contains("encryption_key_file"), "{err}");
        let other = EncryptionKey::generate();
        let err = encrypted(Compression::Zstd, &other)
            .get(&store, &path, &info, &mut out, None)
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("wrong key: object snapshots/s1/dump"),
            "{err}"
        );
        assert!(err.to_string().contains(&other.id()), "{err}");
        assert!(out.is_empty(), "nothing written");

        // A manifest that lies about the key (or a foreign object) fails
        // authentication instead of yielding garbage.
        let lying = ObjectInfo {
            encryption_key_id: Some(other.id()),
            ..info.clone()
        };
        let err = encrypted(Compression::Zstd, &other)
            .get(&store, &path, &lying, &mut out, None)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Authentication { .. }), "{err:?}");
        assert!(out.is_empty());

        // Configured but not loaded: writes are refused.
        let codec = Codec::default().with_encryption(Encryption::KeyNotLoaded {
            source: "/etc/warmspare/repo.key".into(),
        });
        let err = codec
            .put(&store, &Path::from("p"), &b"x"[..], None)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::KeyNotLoaded { .. }), "{err:?}");
        let err = codec
            .put_sealed(&store, &Path::from("p"), &b"x"[..], 10)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::KeyNotLoaded { .. }), "{err:?}");
        assert!(matches!(
            store.head(&Path::from("p")).await,
            Err(object_store::Error::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn any_flipped_byte_or_cut_fails_authentication() {
        let key = EncryptionKey::generate();
        let codec = encrypted(Compression::None, &key);
        let store = mem();
        let path = Path::from("snapshots/s/data");
        let segment = crate::crypto::SEGMENT;
        let header = crate::crypto::HEADER_LEN;
        let data = pattern(2 * segment + 100, 5);
        let info = codec.put(&store, &path, &data[..], None).await.unwrap();
        let stored = store
            .get(&path)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .to_vec();
        assert_eq!(stored.len(), header + data.len() + 3 * 16);

        let mut positions: Vec<usize> = (0..header + 20).collect();
        positions.extend((header..stored.len()).step_by(997));
        positions.extend([
            header + segment + 15,
            header + segment + 16,
            stored.len() - 1,
        ]);
        for pos in positions {
            let mut bad = stored.clone();
            bad[pos] ^= 0x01;
            store.put(&path, bad.into()).await.unwrap();
            let err = codec
                .get(&store, &path, &info, &mut tokio::io::sink(), None)
                .await
                .unwrap_err();
            assert!(
                matches!(&err, Error::Authentication { path: p, .. } if p == "snapshots/s/data"),
                "flip at {pos}: {err:?}"
            );
        }
        // Cut at each segment boundary, and the last segment dropped.
        for cut in [header, header + segment + 16, header + 2 * (segment + 16)] {
            store
                .put(&path, stored[..cut].to_vec().into())
                .await
                .unwrap();
            let err = codec
                .get(&store, &path, &info, &mut tokio::io::sink(), None)
                .await
                .unwrap_err();
            assert!(
                matches!(err, Error::Authentication { .. }),
                "cut at {cut}: {err:?}"
            );
        }
        // Segments swapped.
        let mut swapped = stored[..header].to_vec();
        swapped.extend_from_slice(&stored[header + segment + 16..header + 2 * (segment + 16)]);
        swapped.extend_from_slice(&stored[header..header + segment + 16]);
        swapped.extend_from_slice(&stored[header + 2 * (segment + 16)..]);
        store.put(&path, swapped.into()).await.unwrap();
        let err = codec
            .get(&store, &path, &info, &mut tokio::io::sink(), None)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Authentication { .. }), "{err:?}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn encrypted_codec_roundtrips(
            seed in any::<u64>(),
            len in prop_oneof![
                0usize..300_000,
                (0usize..5).prop_map(|k| k * crate::crypto::SEGMENT),
                (1usize..5).prop_map(|k| k * crate::crypto::SEGMENT - 1),
                (0usize..5).prop_map(|k| k * crate::crypto::SEGMENT + 1),
            ],
            zstd in any::<bool>(),
        ) {
            let key = EncryptionKey::generate();
            let codec = encrypted(if zstd { Compression::Zstd } else { Compression::None }, &key);
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let info = rt.block_on(roundtrip(&codec, pattern(len, seed)));
            prop_assert_eq!(info.encryption_key_id, Some(key.id()));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn codec_roundtrips_random_data(
            seed in any::<u64>(),
            len in 0usize..400_000,
            repetitive in any::<bool>(),
            zstd in any::<bool>(),
        ) {
            let mut state = seed | 1;
            let data: Vec<u8> = (0..len)
                .map(|i| {
                    if repetitive { (i % 251) as u8 } else {
                        state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                        state as u8
                    }
                })
                .collect();
            let codec = Codec::new(if zstd { Compression::Zstd } else { Compression::None });
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(roundtrip(&codec, data));
        }
    }
}
