//! Artifact blobs: `blobs/sha256/<2 hex>/<64 hex>`, named by the SHA-256
//! of the artifact's bytes.
//!
//! In a repository without a key a blob holds the artifact's bytes as they
//! are. With `encryption_key_file` it holds them encrypted with the
//! repository's authenticated STREAM construction
//! ([`warmspare_store::crypto`]: a 35-byte header naming the key id, then
//! 64 KiB segments, each authenticated), not compressed (artifacts such as
//! `.hart` files are compressed already). The name stays the SHA-256 of
//! the *plaintext*, so the same content has the same name whoever writes
//! it, and deduplication works as it does without encryption.
//!
//! A blob records nothing else about itself: its first bytes tell whether
//! it is encrypted, and with which key. Every read checks the decoded
//! bytes against the name, so a plaintext blob whose content happens to
//! begin like an encryption header is still read right: when decryption
//! fails, the blob is read as plaintext, and accepted only if its digest
//! is its name.
//!
//! A writer with a key that finds a blob stored in plaintext (written
//! before encryption was turned on) or under another key replaces it with
//! one encrypted under its own key: the content is the same, so readers
//! see one version or the other, never a mix (a PUT is atomic).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::{self, BoxStream};
use object_store::path::Path;
use object_store::{
    ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, PutResult,
    WriteMultipart,
};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use warmspare_store::crypto::{
    DecryptReader, EncryptReader, HEADER_LEN, decrypt_failure, header_key_id,
};
use warmspare_store::{Encryption, EncryptionKey, ReadStage, Repository};

use crate::error::{Error, Result, Side};
use crate::transfer::{Mover, open_body};

/// Multipart parts of one blob upload in flight at once.
const PARTS_IN_FLIGHT: usize = 4;
/// Read size of the encode/decode loops.
const BUFFER: usize = 256 * 1024;

/// How blobs are written (and read) in a repository.
#[derive(Clone, Debug)]
pub(crate) enum BlobCodec {
    /// As they are (no key configured).
    Plain,
    /// Encrypted with this key.
    Encrypt(EncryptionKey),
    /// Encryption is configured but the key was not loaded: writes are
    /// refused rather than made in plaintext.
    KeyNotLoaded(String),
}

impl BlobCodec {
    /// The codec the repository's configuration calls for.
    pub(crate) fn of(repo: &Repository) -> Self {
        match repo.store().codec().encryption() {
            Encryption::Key(key) => Self::Encrypt(key.clone()),
            Encryption::KeyNotLoaded { source } => Self::KeyNotLoaded(source.clone()),
            _ => Self::Plain,
        }
    }

    /// The key blobs are written with; an error when encryption is
    /// configured but its key is not loaded.
    pub(crate) fn write_key(&self) -> Result<Option<&EncryptionKey>> {
        match self {
            Self::Plain => Ok(None),
            Self::Encrypt(key) => Ok(Some(key)),
            Self::KeyNotLoaded(source) => {
                Err(Error::Repository(warmspare_store::Error::KeyNotLoaded {
                    path: "blobs/sha256".into(),
                    source_name: source.clone(),
                }))
            }
        }
    }

    /// The key encrypted blobs are read with, if one is loaded.
    pub(crate) fn read_key(&self) -> Option<&EncryptionKey> {
        match self {
            Self::Encrypt(key) => Some(key),
            _ => None,
        }
    }
}

/// What a writer finds under a blob's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Found {
    /// Nothing: write it (create-if-absent).
    Missing,
    /// A blob this writer would have written (any blob without a key; one
    /// encrypted with the writer's key with one): deduplicated.
    Usable,
    /// A blob in plaintext or under another key while the writer has a
    /// key: rewrite it encrypted (overwrite; same content).
    Replace,
}

/// Looks at the blob at `path` as a writer with `key` (one `HEAD`, plus a
/// ranged read of the header with a key).
pub(crate) async fn probe(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
    key: Option<&EncryptionKey>,
) -> Result<Found> {
    let meta = match store.head(path).await {
        Ok(meta) => meta,
        Err(object_store::Error::NotFound { .. }) => return Ok(Found::Missing),
        Err(e) => {
            return Err(Error::object(
                Side::Repository,
                path.to_string(),
                "checking",
                e,
            ));
        }
    };
    let Some(key) = key else {
        return Ok(Found::Usable);
    };
    if meta.size < HEADER_LEN as u64 {
        return Ok(Found::Replace);
    }
    match store.get_range(path, 0..HEADER_LEN as u64).await {
        Ok(head) if header_key_id(&head) == Some(key.id()) => Ok(Found::Usable),
        Ok(_) => Ok(Found::Replace),
        Err(object_store::Error::NotFound { .. }) => Ok(Found::Missing),
        Err(e) => Err(Error::object(
            Side::Repository,
            path.to_string(),
            "checking",
            e,
        )),
    }
}

/// The put mode for a blob that was `found` so.
pub(crate) fn put_mode(found: Found) -> PutMode {
    match found {
        Found::Replace => PutMode::Overwrite,
        Found::Missing | Found::Usable => PutMode::Create,
    }
}

/// Encrypts a small blob held in memory.
pub(crate) async fn encrypt(key: &EncryptionKey, plain: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(plain.len() + plain.len() / 1024 + 64);
    EncryptReader::new(key, plain)
        .read_to_end(&mut out)
        .await
        .map_err(|e| Error::Task {
            reason: format!("encrypting in memory failed: {e}"),
        })?;
    Ok(out)
}

/// Whether the object at `path` begins with an encryption header, and
/// under which key id (a diagnosis for reads that failed).
pub(crate) async fn encrypted_with(store: &Arc<dyn ObjectStore>, path: &Path) -> Option<String> {
    let head = store.get_range(path, 0..HEADER_LEN as u64).await.ok()?;
    header_key_id(&head)
}

/// An `AsyncRead` over a body's chunks that counts what passes, optionally
/// hashes it, and keeps the body's own error aside (so that it is reported
/// as itself, not as an I/O error of the layers above).
pub(crate) struct ChunkReader {
    chunks: BoxStream<'static, Result<Bytes>>,
    chunk: Bytes,
    pub(crate) count: u64,
    pub(crate) hasher: Option<Sha256>,
    pub(crate) error: Option<Error>,
}

impl ChunkReader {
    pub(crate) fn new(chunks: BoxStream<'static, Result<Bytes>>, hash: bool) -> Self {
        Self {
            chunks,
            chunk: Bytes::new(),
            count: 0,
            hasher: hash.then(Sha256::new),
            error: None,
        }
    }

    /// The hex SHA-256 of what passed (when hashing).
    pub(crate) fn sha256(&mut self) -> String {
        self.hasher
            .take()
            .map(|h| hex::encode(h.finalize()))
            .unwrap_or_default()
    }
}

impl AsyncRead for ChunkReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.error.is_some() {
            return Poll::Ready(Err(std::io::Error::other("reading the body failed")));
        }
        while this.chunk.is_empty() {
            match ready!(this.chunks.poll_next_unpin(cx)) {
                Some(Ok(chunk)) => this.chunk = chunk,
                Some(Err(e)) => {
                    this.error = Some(e);
                    return Poll::Ready(Err(std::io::Error::other("reading the body failed")));
                }
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = this.chunk.len().min(buf.remaining());
        let part = this.chunk.split_to(n);
        if let Some(h) = &mut this.hasher {
            h.update(&part);
        }
        this.count += n as u64;
        buf.put_slice(&part);
        Poll::Ready(Ok(()))
    }
}

/// An upload that becomes visible only on `commit`: one PUT below the part
/// size, a multipart upload above it. Its buffers are reserved from the
/// run's buffer budget.
pub(crate) enum Upload {
    Single {
        store: Arc<dyn ObjectStore>,
        side: Side,
        path: Path,
        buf: Vec<u8>,
        mode: PutMode,
        _permit: OwnedSemaphorePermit,
    },
    Multi {
        side: Side,
        path: Path,
        writer: Box<WriteMultipart>,
        _permit: OwnedSemaphorePermit,
    },
}

impl Upload {
    /// Starts an upload of about `size` bytes. `mode` applies to single
    /// PUTs; a multipart upload always overwrites (content-addressed blobs
    /// and restores can: the content is the same, or meant to replace).
    pub(crate) async fn start(
        mover: &Mover,
        store: &Arc<dyn ObjectStore>,
        side: Side,
        path: &Path,
        size: u64,
        mode: PutMode,
    ) -> Result<Self> {
        if size < mover.part_size as u64 {
            let len = usize::try_from(size).unwrap_or(mover.part_size);
            let permit = mover.budget.reserve(len).await?;
            return Ok(Self::Single {
                store: Arc::clone(store),
                side,
                path: path.clone(),
                buf: Vec::with_capacity(len + len / 1024 + 64),
                mode,
                _permit: permit,
            });
        }
        let permit = mover
            .budget
            .reserve(mover.part_size.saturating_mul(PARTS_IN_FLIGHT + 1))
            .await?;
        let upload = store
            .put_multipart_opts(path, Default::default())
            .await
            .map_err(|e| Error::object(side, path.to_string(), "writing", e))?;
        Ok(Self::Multi {
            side,
            path: path.clone(),
            writer: Box::new(WriteMultipart::new_with_chunk_size(upload, mover.part_size)),
            _permit: permit,
        })
    }

    pub(crate) async fn write(&mut self, data: &[u8]) -> Result<()> {
        match self {
            Self::Single { buf, .. } => {
                buf.extend_from_slice(data);
                Ok(())
            }
            Self::Multi {
                side, path, writer, ..
            } => {
                writer
                    .wait_for_capacity(PARTS_IN_FLIGHT)
                    .await
                    .map_err(|e| Error::object(*side, path.to_string(), "writing", e))?;
                writer.write(data);
                Ok(())
            }
        }
    }

    /// Makes the object visible. A create that finds the object there
    /// already succeeds without an ETag (content-addressed: same content).
    pub(crate) async fn commit(self) -> Result<PutResult> {
        match self {
            Self::Single {
                store,
                side,
                path,
                buf,
                mode,
                _permit,
            } => {
                let create = matches!(mode, PutMode::Create);
                let options = PutOptions {
                    mode,
                    ..PutOptions::default()
                };
                match store
                    .put_opts(&path, PutPayload::from(Bytes::from(buf)), options)
                    .await
                {
                    Ok(put) => Ok(put),
                    Err(object_store::Error::AlreadyExists { .. }) if create => Ok(PutResult {
                        e_tag: None,
                        version: None,
                        extensions: Default::default(),
                    }),
                    Err(e) => Err(Error::object(side, path.to_string(), "writing", e)),
                }
            }
            Self::Multi {
                side, path, writer, ..
            } => writer
                .finish()
                .await
                .map_err(|e| Error::object(side, path.to_string(), "completing", e)),
        }
    }

    /// Gives up: nothing becomes visible.
    pub(crate) async fn abort(self) {
        if let Self::Multi { writer, .. } = self {
            // Best effort: what matters is that nothing was completed.
            let _ = writer.abort().await;
        }
    }
}

/// What [`store_encrypted`] stored.
pub(crate) struct Stored {
    /// The source version read (from the GET).
    pub(crate) source: ObjectMeta,
    /// Plaintext bytes.
    pub(crate) size: u64,
}

/// Streams source object `key` through SHA-256 and encryption into the
/// blob `blob` of the repository (`target`), committing only when the
/// bytes read have the digest `expect` and the source still shows the
/// version that was read.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn store_encrypted(
    mover: &Mover,
    source: &Arc<dyn ObjectStore>,
    key: &Path,
    target: &Arc<dyn ObjectStore>,
    blob: &Path,
    expect: &str,
    encryption: &EncryptionKey,
    mode: PutMode,
) -> Result<Stored> {
    let body = open_body(source, key, Side::Source).await?;
    let meta = body.meta;
    let mut sealed = EncryptReader::new(encryption, ChunkReader::new(body.chunks, true));
    let mut upload = Upload::start(mover, target, Side::Repository, blob, meta.size, mode).await?;
    let mut buf = vec![0u8; BUFFER];
    let streamed: Result<()> = async {
        loop {
            let n = match sealed.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) => {
                    return Err(Error::Task {
                        reason: format!("encrypting {key} failed: {e}"),
                    });
                }
            };
            if let Some(limiter) = &mover.limiter {
                limiter.acquire(n as u64).await;
            }
            upload.write(&buf[..n]).await?;
            (mover.on_bytes)(n as u64);
        }
    }
    .await;
    let mut plain = sealed.into_inner();
    let checked = match (plain.error.take(), streamed) {
        (Some(e), _) | (None, Err(e)) => Err(e),
        (None, Ok(())) => {
            let sha256 = plain.sha256();
            if plain.count != meta.size {
                Err(Error::SizeMismatch {
                    side: Side::Source,
                    key: key.to_string(),
                    expected: meta.size,
                    read: plain.count,
                })
            } else if sha256 != expect {
                Err(Error::DigestMismatch {
                    side: Side::Source,
                    key: key.to_string(),
                    expected: format!("sha256:{expect}"),
                    actual: format!("sha256:{sha256}"),
                })
            } else {
                unchanged(source, key, &meta).await
            }
        }
    };
    if let Err(e) = checked {
        upload.abort().await;
        return Err(e);
    }
    upload.commit().await?;
    Ok(Stored {
        source: meta,
        size: plain.count,
    })
}

async fn unchanged(store: &Arc<dyn ObjectStore>, key: &Path, read: &ObjectMeta) -> Result<()> {
    match store.head(key).await {
        Ok(now) if crate::state::same_version(read, &now) => Ok(()),
        Ok(_) | Err(object_store::Error::NotFound { .. }) => Err(Error::Changed {
            side: Side::Source,
            key: key.to_string(),
        }),
        Err(e) => Err(Error::object(Side::Source, key.to_string(), "checking", e)),
    }
}

/// How [`restore`] reads a blob.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Read<'a> {
    /// By its header: decrypted when it names `key`, else as plaintext.
    Auto(&'a EncryptionKey),
    /// As plaintext, whatever its first bytes.
    Plain,
}

/// What [`restore`] wrote.
pub(crate) struct Restored {
    pub(crate) sha256: String,
    pub(crate) size: u64,
    pub(crate) e_tag: Option<String>,
}

/// The decoding stage of [`restore`]: the blob's bytes, decrypted or not.
type Decoded = ReadStage<ChunkReader, DecryptReader<ChunkReader>>;

/// Writes the content of blob `blob` (from the repository, `source`) to
/// `key` on `target`, decoded as `read` says and checked against the
/// blob's name `sha256` and `size` before the upload is committed.
/// A blob encrypted under another key is [`warmspare_store::Error::WrongKey`];
/// one that fails authentication is
/// [`warmspare_store::Error::Authentication`]; both name the blob.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn restore(
    mover: &Mover,
    source: &Arc<dyn ObjectStore>,
    blob: &Path,
    sha256: &str,
    size: u64,
    target: &Arc<dyn ObjectStore>,
    key: &Path,
    read: Read<'_>,
) -> Result<Restored> {
    let body = open_body(source, blob, Side::Repository).await?;
    let mut chunks = body.chunks;
    // The first bytes say whether the blob is encrypted.
    let mut head = Vec::new();
    if let Read::Auto(_) = read {
        while head.len() < HEADER_LEN {
            match chunks.next().await {
                Some(chunk) => head.extend_from_slice(&chunk?),
                None => break,
            }
        }
    }
    let sealed_with = header_key_id(&head);
    let chunks = stream::once(std::future::ready(Ok(Bytes::from(head))))
        .chain(chunks)
        .boxed();
    let reader = ChunkReader::new(chunks, false);
    let mut decoded: Decoded = match (read, sealed_with) {
        (Read::Auto(k), Some(id)) if id == k.id() => {
            ReadStage::On(Box::new(DecryptReader::new(k, reader)))
        }
        (Read::Auto(k), Some(id)) => {
            return Err(Error::Repository(warmspare_store::Error::WrongKey {
                path: blob.to_string(),
                key_id: id,
                configured: k.id(),
            }));
        }
        _ => ReadStage::Off(reader),
    };

    let mut upload =
        Upload::start(mover, target, Side::Target, key, size, PutMode::Overwrite).await?;
    let mut hasher = Sha256::new();
    let mut written = 0u64;
    let mut buf = vec![0u8; BUFFER];
    let streamed: Result<()> = async {
        loop {
            let n = match decoded.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) => {
                    return Err(match decrypt_failure(&e) {
                        Some(reason) => Error::Repository(warmspare_store::Error::Authentication {
                            path: blob.to_string(),
                            reason: reason.to_string(),
                        }),
                        None => Error::Task {
                            reason: format!("reading {blob} failed: {e}"),
                        },
                    });
                }
            };
            written += n as u64;
            if written > size {
                return Ok(());
            }
            if let Some(limiter) = &mover.limiter {
                limiter.acquire(n as u64).await;
            }
            hasher.update(&buf[..n]);
            upload.write(&buf[..n]).await?;
            (mover.on_bytes)(n as u64);
        }
    }
    .await;
    let transport = decoded.into_inner().error.take();
    let actual = hex::encode(hasher.finalize());
    let checked = match (transport, streamed) {
        (Some(e), _) | (None, Err(e)) => Err(e),
        (None, Ok(())) if written != size => Err(Error::SizeMismatch {
            side: Side::Repository,
            key: blob.to_string(),
            expected: size,
            read: written,
        }),
        (None, Ok(())) if actual != sha256 => Err(Error::DigestMismatch {
            side: Side::Repository,
            key: blob.to_string(),
            expected: format!("sha256:{sha256}"),
            actual: format!("sha256:{actual}"),
        }),
        (None, Ok(())) => Ok(()),
    };
    if let Err(e) = checked {
        upload.abort().await;
        return Err(e);
    }
    let put = upload.commit().await?;
    Ok(Restored {
        sha256: actual,
        size: written,
        e_tag: put.e_tag,
    })
}

/// Whether `error` is about decrypting (wrong key, failed authentication):
/// a blob that fails so may still be a plaintext blob that begins like an
/// encryption header.
pub(crate) fn is_decryption_error(error: &Error) -> bool {
    matches!(
        error,
        Error::Repository(
            warmspare_store::Error::WrongKey { .. } | warmspare_store::Error::Authentication { .. }
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    #[tokio::test]
    async fn probe_tells_what_a_writer_must_do() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let key = EncryptionKey::generate();
        let other = EncryptionKey::generate();
        let path = Path::from("blobs/sha256/ab/x");
        assert_eq!(probe(&store, &path, None).await.unwrap(), Found::Missing);
        assert_eq!(
            probe(&store, &path, Some(&key)).await.unwrap(),
            Found::Missing
        );

        store.put(&path, "plain".into()).await.unwrap();
        assert_eq!(probe(&store, &path, None).await.unwrap(), Found::Usable);
        assert_eq!(
            probe(&store, &path, Some(&key)).await.unwrap(),
            Found::Replace,
            "a plaintext blob is re-encrypted"
        );
        let sealed = encrypt(&key, &[7u8; 100_000]).await.unwrap();
        store.put(&path, sealed.clone().into()).await.unwrap();
        assert_eq!(
            probe(&store, &path, Some(&key)).await.unwrap(),
            Found::Usable
        );
        assert_eq!(
            probe(&store, &path, Some(&other)).await.unwrap(),
            Found::Replace
        );
        assert_eq!(encrypted_with(&store, &path).await, Some(key.id()));
        assert!(
            !sealed.windows(16).any(|w| w == [7u8; 16]),
            "no plaintext run survives encryption"
        );
        assert_eq!(put_mode(Found::Replace), PutMode::Overwrite);
        assert_eq!(put_mode(Found::Missing), PutMode::Create);
    }
}
