//! Moving one object: streaming reads with hashing, and verified copies
//! that land on the target atomically or not at all.
//!
//! A copy streams the source body through SHA-256 (and MD5 when the source
//! announces a plain MD5 ETag) into an upload, and commits the upload (the
//! single PUT, or the multipart completion) only after every check passed:
//! the byte count equals the size, the expected digest (a restore's blob
//! name) matches, the source still shows the version that was read, the
//! MD5 matches, and in `Reread` mode a second read agrees. A failed check
//! aborts the upload, so a truncated, corrupt or half-old object never
//! appears at the final key.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use md5::Md5;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult,
    RenameOptions, UploadPart,
};
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio::task::JoinHandle;

use crate::error::{Error, Result, Side};
use crate::limit::{Budget, RateLimiter};
use crate::local::{BLOCK, LocalDir, StagedFile, etag_of};
use crate::options::SourceVerify;
use crate::state::{normalize_etag, same_version};

/// Read size for local files (object_store's own file stream reads 8 KiB
/// at a time, one blocking task each).
const FILE_CHUNK: usize = 1024 * 1024;
/// Parts of one multipart upload in flight at once (the buffer budget
/// bounds all uploads together).
const PARTS_IN_FLIGHT: usize = 4;

/// A join handle that aborts its task when dropped, so that cancelling a
/// run cancels its workers.
pub(crate) struct Task<T>(JoinHandle<T>);

impl<T: Send + 'static> Task<T> {
    pub(crate) fn spawn(fut: impl Future<Output = T> + Send + 'static) -> Self {
        Self(tokio::spawn(fut))
    }
}

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> Future for Task<T> {
    type Output = Result<T>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|r| {
            r.map_err(|e| Error::Task {
                reason: e.to_string(),
            })
        })
    }
}

/// The target's writes of one run: once closed (the run ended or was
/// dropped), no new write starts; writes that had started are tracked until
/// they end, so that [`Gate::idle`] can wait for them.
#[derive(Clone, Debug, Default)]
pub(crate) struct Gate(Arc<GateState>);

#[derive(Debug, Default)]
struct GateState {
    closed: AtomicBool,
    in_flight: AtomicUsize,
    idle: Notify,
}

/// One write let through a [`Gate`]: counted until dropped.
#[derive(Debug)]
pub(crate) struct Pass(Gate);

impl Drop for Pass {
    fn drop(&mut self) {
        if self.0.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.0.idle.notify_waiters();
        }
    }
}

impl Gate {
    /// A pass for one write; `None` once the gate is closed.
    pub(crate) fn enter(&self) -> Option<Pass> {
        // Counted before the check: a write that saw the gate open is
        // counted when `close` returns, so `idle` waits for it.
        self.0.in_flight.fetch_add(1, Ordering::SeqCst);
        let pass = Pass(self.clone());
        (!self.0.closed.load(Ordering::SeqCst)).then_some(pass)
    }

    /// Refuses every write from now on.
    pub(crate) fn close(&self) {
        self.0.closed.store(true, Ordering::SeqCst);
    }

    /// Returns once no write let through is still running.
    pub(crate) async fn idle(&self) {
        loop {
            let notified = self.0.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.0.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Closes a [`Gate`] when dropped: with the future of a run.
pub(crate) struct CloseOnDrop(pub(crate) Gate);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

fn stopped() -> object_store::Error {
    object_store::Error::Generic {
        store: "warmspare",
        source: "the sync was stopped: no more writes".into(),
    }
}

/// Runs one write to its end on its own task, counted by `pass`: dropping
/// the caller's future does not abandon it half-way in an untracked place
/// (`LocalFileSystem` writes on the blocking pool, an HTTP request may
/// still land); it ends, and [`Gate::idle`] waits for it.
async fn tracked<T: Send + 'static>(
    pass: Pass,
    write: impl Future<Output = object_store::Result<T>> + Send + 'static,
) -> object_store::Result<T> {
    tokio::spawn(async move {
        let _pass = pass;
        write.await
    })
    .await
    .map_err(|e| object_store::Error::Generic {
        store: "warmspare",
        source: Box::new(e),
    })?
}

type Boxed<'a, T> = Pin<Box<dyn Future<Output = object_store::Result<T>> + Send + 'a>>;

/// The target of a run as its code sees it: reads pass through, writes go
/// through the run's [`Gate`] (refused once it is closed, tracked while
/// they run).
#[derive(Debug)]
pub(crate) struct GatedStore {
    inner: Arc<dyn ObjectStore>,
    gate: Gate,
}

impl GatedStore {
    pub(crate) fn new(inner: Arc<dyn ObjectStore>, gate: Gate) -> Self {
        Self { inner, gate }
    }

    fn pass(&self) -> object_store::Result<Pass> {
        self.gate.enter().ok_or_else(stopped)
    }
}

impl std::fmt::Display for GatedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.inner, f)
    }
}

// `ObjectStore` is an `async_trait`: its methods are written out as the
// boxed futures that the attribute would generate.
impl ObjectStore for GatedStore {
    fn put_opts<'a, 'b, 't>(
        &'a self,
        location: &'b Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Boxed<'t, PutResult>
    where
        'a: 't,
        'b: 't,
        Self: 't,
    {
        Box::pin(async move {
            let pass = self.pass()?;
            let (inner, location) = (Arc::clone(&self.inner), location.clone());
            tracked(pass, async move {
                inner.put_opts(&location, payload, opts).await
            })
            .await
        })
    }

    fn put_multipart_opts<'a, 'b, 't>(
        &'a self,
        location: &'b Path,
        opts: PutMultipartOptions,
    ) -> Boxed<'t, Box<dyn MultipartUpload>>
    where
        'a: 't,
        'b: 't,
        Self: 't,
    {
        Box::pin(async move {
            let pass = self.pass()?;
            let (inner, location) = (Arc::clone(&self.inner), location.clone());
            let upload = tracked(pass, async move {
                inner.put_multipart_opts(&location, opts).await
            })
            .await?;
            let upload: Box<dyn MultipartUpload> = Box::new(GatedUpload {
                upload: Arc::new(tokio::sync::Mutex::new(upload)),
                gate: self.gate.clone(),
            });
            Ok(upload)
        })
    }

    fn get_opts<'a, 'b, 't>(
        &'a self,
        location: &'b Path,
        options: GetOptions,
    ) -> Boxed<'t, GetResult>
    where
        'a: 't,
        'b: 't,
        Self: 't,
    {
        self.inner.get_opts(location, options)
    }

    fn get_ranges<'a, 'b, 'c, 't>(
        &'a self,
        location: &'b Path,
        ranges: &'c [std::ops::Range<u64>],
    ) -> Boxed<'t, Vec<Bytes>>
    where
        'a: 't,
        'b: 't,
        'c: 't,
        Self: 't,
    {
        self.inner.get_ranges(location, ranges)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let (inner, gate) = (Arc::clone(&self.inner), self.gate.clone());
        locations
            .then(move |location| {
                let (inner, gate) = (Arc::clone(&inner), gate.clone());
                async move {
                    let location = location?;
                    let pass = gate.enter().ok_or_else(stopped)?;
                    tracked(pass, async move {
                        let one = stream::once(async move { Ok(location) }).boxed();
                        match inner.delete_stream(one).next().await {
                            Some(result) => result,
                            None => Err(stopped()),
                        }
                    })
                    .await
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    fn list_with_delimiter<'a, 'b, 't>(&'a self, prefix: Option<&'b Path>) -> Boxed<'t, ListResult>
    where
        'a: 't,
        'b: 't,
        Self: 't,
    {
        self.inner.list_with_delimiter(prefix)
    }

    fn copy_opts<'a, 'b, 'c, 't>(
        &'a self,
        from: &'b Path,
        to: &'c Path,
        options: CopyOptions,
    ) -> Boxed<'t, ()>
    where
        'a: 't,
        'b: 't,
        'c: 't,
        Self: 't,
    {
        Box::pin(async move {
            let pass = self.pass()?;
            let (inner, from, to) = (Arc::clone(&self.inner), from.clone(), to.clone());
            tracked(
                pass,
                async move { inner.copy_opts(&from, &to, options).await },
            )
            .await
        })
    }

    fn rename_opts<'a, 'b, 'c, 't>(
        &'a self,
        from: &'b Path,
        to: &'c Path,
        options: RenameOptions,
    ) -> Boxed<'t, ()>
    where
        'a: 't,
        'b: 't,
        'c: 't,
        Self: 't,
    {
        Box::pin(async move {
            let pass = self.pass()?;
            let (inner, from, to) = (Arc::clone(&self.inner), from.clone(), to.clone());
            tracked(
                pass,
                async move { inner.rename_opts(&from, &to, options).await },
            )
            .await
        })
    }
}

/// A multipart upload of a [`GatedStore`]: parts and the completion are
/// writes; an abort (clean-up) is let through after the gate closed.
#[derive(Debug)]
struct GatedUpload {
    upload: Arc<tokio::sync::Mutex<Box<dyn MultipartUpload>>>,
    gate: Gate,
}

impl MultipartUpload for GatedUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let Some(pass) = self.gate.enter() else {
            return Box::pin(async { Err(stopped()) });
        };
        // The part starts now (parts may run concurrently); only its
        // creation needs the upload.
        let part = match self.upload.try_lock() {
            Ok(mut upload) => upload.put_part(data),
            Err(_) => return Box::pin(async { Err(stopped()) }),
        };
        Box::pin(tracked(pass, part))
    }

    fn complete<'a, 't>(&'a mut self) -> Boxed<'t, PutResult>
    where
        'a: 't,
        Self: 't,
    {
        Box::pin(async move {
            let pass = self.gate.enter().ok_or_else(stopped)?;
            let upload = Arc::clone(&self.upload);
            tracked(pass, async move { upload.lock().await.complete().await }).await
        })
    }

    fn abort<'a, 't>(&'a mut self) -> Boxed<'t, ()>
    where
        'a: 't,
        Self: 't,
    {
        Box::pin(async move { self.upload.lock().await.abort().await })
    }
}

/// An object body being read.
pub(crate) struct Body {
    /// The version being read, as the GET reported it.
    pub(crate) meta: ObjectMeta,
    pub(crate) chunks: BoxStream<'static, Result<Bytes>>,
}

/// Starts reading `key`. A missing object is an [`Error::Object`] whose
/// source is `NotFound` ([`Error::is_not_found`]).
pub(crate) async fn open_body(
    store: &Arc<dyn ObjectStore>,
    key: &Path,
    side: Side,
) -> Result<Body> {
    let name = key.to_string();
    let result = store
        .get_opts(key, GetOptions::default())
        .await
        .map_err(|e| Error::object(side, name.clone(), "reading", e))?;
    let meta = result.meta.clone();
    let chunks = match result.payload {
        GetResultPayload::File(file, _) => file_chunks(file, meta.size, side, name),
        GetResultPayload::Stream(s) => s
            .map(move |r| r.map_err(|e| Error::object(side, name.clone(), "reading", e)))
            .boxed(),
    };
    Ok(Body { meta, chunks })
}

/// Reads a local file in large blocks on the blocking pool, up to one byte
/// past `size` (so that growth is noticed).
fn file_chunks(
    file: std::fs::File,
    size: u64,
    side: Side,
    key: String,
) -> BoxStream<'static, Result<Bytes>> {
    let limit = size.saturating_add(1);
    stream::try_unfold((Some(file), 0u64), move |(file, read)| {
        let key = key.clone();
        async move {
            let Some(mut file) = file else {
                return Ok(None);
            };
            if read >= limit {
                return Ok(None);
            }
            let want = FILE_CHUNK.min(usize::try_from(limit - read).unwrap_or(FILE_CHUNK));
            let (file, chunk) = tokio::task::spawn_blocking(move || {
                use std::io::Read;
                let mut buf = vec![0u8; want];
                let mut filled = 0;
                while filled < want {
                    match file.read(&mut buf[filled..]) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                buf.truncate(filled);
                Ok((file, buf))
            })
            .await
            .map_err(|e| Error::Task {
                reason: e.to_string(),
            })?
            .map_err(|e| {
                Error::object(
                    side,
                    key.clone(),
                    "reading",
                    object_store::Error::Generic {
                        store: "LocalFileSystem",
                        source: Box::new(e),
                    },
                )
            })?;
            if chunk.is_empty() {
                return Ok(None);
            }
            let n = chunk.len() as u64;
            Ok(Some((Bytes::from(chunk), (Some(file), read + n))))
        }
    })
    .boxed()
}

/// What a read established about an object.
#[derive(Debug, Clone)]
pub(crate) struct Hashed {
    pub(crate) sha256: String,
    /// The version read.
    pub(crate) meta: ObjectMeta,
}

/// What a copy wrote.
#[derive(Debug, Clone)]
pub(crate) struct Copied {
    pub(crate) sha256: String,
    pub(crate) size: u64,
    /// The source version copied (from the GET).
    pub(crate) source: ObjectMeta,
    /// The target's ETag of the new object, if the store reported one.
    pub(crate) target_e_tag: Option<String>,
}

/// One copy to make.
pub(crate) struct CopyRequest<'a> {
    pub(crate) source: &'a Arc<dyn ObjectStore>,
    pub(crate) source_side: Side,
    pub(crate) key: &'a Path,
    pub(crate) target: &'a Arc<dyn ObjectStore>,
    pub(crate) target_side: Side,
    pub(crate) target_key: &'a Path,
    /// The SHA-256 the bytes must have (restores, blobs).
    pub(crate) expect_sha256: Option<&'a str>,
    /// Check after the read that the source still shows the version read
    /// (mutable sources; immutable blobs are checked by digest instead).
    pub(crate) check_unchanged: bool,
    pub(crate) verify: SourceVerify,
    /// Single PUTs with create-if-absent (content-addressed blobs).
    pub(crate) create: bool,
}

/// Shared machinery of a run: rate limit, buffer budget, part size and the
/// byte counter for progress.
#[derive(Clone)]
pub(crate) struct Mover {
    pub(crate) limiter: Option<Arc<RateLimiter>>,
    pub(crate) budget: Budget,
    pub(crate) part_size: usize,
    pub(crate) on_bytes: Arc<dyn Fn(u64) + Send + Sync>,
    /// Part buffers, reused across uploads.
    pub(crate) parts: PartPool,
    /// The run's gate: writes into a directory target pass it (writes
    /// through a store pass its [`GatedStore`]).
    pub(crate) gate: Gate,
}

/// Multipart part buffers, reused: allocating a fresh part-sized buffer
/// for every part leaves freed blocks in the allocator's per-thread arenas,
/// which made the peak RSS of one large upload exceed the buffer budget by
/// half. Every buffer in use holds its share of the budget, so the pool
/// never holds more than the budget.
#[derive(Clone, Default)]
pub(crate) struct PartPool(Arc<std::sync::Mutex<Vec<Vec<u8>>>>);

impl PartPool {
    fn take(&self, size: usize) -> Vec<u8> {
        let reused = self.0.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match reused {
            Some(mut buf) if buf.capacity() >= size => {
                buf.clear();
                buf
            }
            _ => Vec::with_capacity(size),
        }
    }
}

/// A part being uploaded: returns its buffer to the pool, then its share of
/// the budget, when the upload lets go of the bytes.
struct PooledPart {
    buf: Vec<u8>,
    pool: PartPool,
    _permit: Option<OwnedSemaphorePermit>,
}

impl AsRef<[u8]> for PooledPart {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for PooledPart {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        self.pool
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(buf);
    }
}

/// Carried between attempts of one copy: the SHA-256 of an earlier read
/// whose MD5 did not match the source's ETag. When a second read agrees on
/// the SHA-256, the ETag is not an MD5 of the content (SSE-KMS, some
/// S3-compatible servers) and is no longer used.
#[derive(Debug, Default)]
pub(crate) struct Attempts {
    md5_disagreed_sha256: std::sync::Mutex<Option<String>>,
}

/// The MD5 an ETag stands for, when it looks like a plain (single-part) S3
/// ETag.
fn etag_md5(e_tag: Option<&str>) -> Option<String> {
    let e = normalize_etag(e_tag?);
    (e.len() == 32 && e.bytes().all(|b| b.is_ascii_hexdigit())).then(|| e.to_ascii_lowercase())
}

impl Mover {
    async fn throttle(&self, n: usize) {
        if let Some(limiter) = &self.limiter {
            limiter.acquire(n as u64).await;
        }
    }

    /// Reads `key` to its end, hashing it; the size must match and the
    /// object must still show the same version afterwards.
    pub(crate) async fn hash(
        &self,
        store: &Arc<dyn ObjectStore>,
        key: &Path,
        side: Side,
    ) -> Result<Hashed> {
        let mut body = open_body(store, key, side).await?;
        let mut sha = Sha256::new();
        let mut read = 0u64;
        while let Some(chunk) = body.chunks.next().await {
            let chunk = chunk?;
            read += chunk.len() as u64;
            if read > body.meta.size {
                break;
            }
            self.throttle(chunk.len()).await;
            sha.update(&chunk);
        }
        if read != body.meta.size {
            return Err(Error::SizeMismatch {
                side,
                key: key.to_string(),
                expected: body.meta.size,
                read,
            });
        }
        self.check_unchanged(store, key, side, &body.meta).await?;
        Ok(Hashed {
            sha256: hex::encode(sha.finalize()),
            meta: body.meta,
        })
    }

    async fn check_unchanged(
        &self,
        store: &Arc<dyn ObjectStore>,
        key: &Path,
        side: Side,
        read: &ObjectMeta,
    ) -> Result<()> {
        match store.head(key).await {
            Ok(now) if same_version(read, &now) => Ok(()),
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Err(Error::Changed {
                side,
                key: key.to_string(),
            }),
            Err(e) => Err(Error::object(side, key.to_string(), "checking", e)),
        }
    }

    /// Copies one object (see the module docs); the target object appears
    /// only when every check passed.
    pub(crate) async fn copy(&self, req: &CopyRequest<'_>, attempts: &Attempts) -> Result<Copied> {
        self.copy_into(req, attempts, None).await
    }

    /// [`Mover::copy`], writing the files of `dir` directly when the target
    /// is that directory's `LocalFileSystem` (no `fsync`: the caller makes
    /// the target durable before it records the copy).
    pub(crate) async fn copy_into(
        &self,
        req: &CopyRequest<'_>,
        attempts: &Attempts,
        dir: Option<&LocalDir>,
    ) -> Result<Copied> {
        let mut body = open_body(req.source, req.key, req.source_side).await?;
        let size = body.meta.size;
        let md5_expected = etag_md5(body.meta.e_tag.as_deref());
        let mut md5 = md5_expected.as_ref().map(|_| Md5::new());
        let mut sha = Sha256::new();
        let mut upload = match dir {
            Some(dir) => Upload::local(self, req, dir, size).await?,
            None => Upload::start(self, req, size).await?,
        };
        let streamed: Result<u64> = async {
            let mut read = 0u64;
            while let Some(chunk) = body.chunks.next().await {
                let chunk = chunk?;
                read += chunk.len() as u64;
                if read > size {
                    break;
                }
                self.throttle(chunk.len()).await;
                sha.update(&chunk);
                if let Some(md5) = &mut md5 {
                    md5.update(&chunk);
                }
                let n = chunk.len() as u64;
                upload.write(chunk).await?;
                (self.on_bytes)(n);
            }
            Ok(read)
        }
        .await;
        let checked = match streamed {
            Ok(read) => {
                let sha256 = hex::encode(sha.finalize());
                let md5 = md5.map(|m| hex::encode(m.finalize()));
                self.verify(
                    req,
                    &body.meta,
                    read,
                    &sha256,
                    md5_expected.zip(md5),
                    attempts,
                )
                .await
                .map(|()| sha256)
            }
            Err(e) => Err(e),
        };
        let sha256 = match checked {
            Ok(sha256) => sha256,
            Err(e) => {
                upload.abort().await;
                return Err(e);
            }
        };
        let put = upload.commit().await?;
        Ok(Copied {
            sha256,
            size,
            source: body.meta,
            target_e_tag: put.e_tag,
        })
    }

    /// The checks between the last byte and the commit.
    async fn verify(
        &self,
        req: &CopyRequest<'_>,
        meta: &ObjectMeta,
        read: u64,
        sha256: &str,
        md5: Option<(String, String)>,
        attempts: &Attempts,
    ) -> Result<()> {
        let key = req.key.to_string();
        if read != meta.size {
            return Err(Error::SizeMismatch {
                side: req.source_side,
                key,
                expected: meta.size,
                read,
            });
        }
        if let Some(expected) = req.expect_sha256
            && expected != sha256
        {
            return Err(Error::DigestMismatch {
                side: req.source_side,
                key,
                expected: format!("sha256:{expected}"),
                actual: format!("sha256:{sha256}"),
            });
        }
        if req.check_unchanged {
            self.check_unchanged(req.source, req.key, req.source_side, meta)
                .await?;
        }
        if let Some((expected, actual)) = md5
            && expected != actual
        {
            let mut disagreed = attempts
                .md5_disagreed_sha256
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if disagreed.as_deref() != Some(sha256) {
                *disagreed = Some(sha256.to_string());
                return Err(Error::DigestMismatch {
                    side: req.source_side,
                    key,
                    expected: format!("md5:{expected}"),
                    actual: format!("md5:{actual}"),
                });
            }
            // Two reads agree: the ETag is not an MD5 of the content.
        }
        if req.verify == SourceVerify::Reread {
            let again = self.hash(req.source, req.key, req.source_side).await?;
            if again.sha256 != sha256 || !same_version(meta, &again.meta) {
                return Err(Error::DigestMismatch {
                    side: req.source_side,
                    key,
                    expected: format!("sha256:{}", again.sha256),
                    actual: format!("sha256:{sha256}"),
                });
            }
        }
        Ok(())
    }
}

/// An upload that becomes visible only on `commit`.
enum Upload {
    /// Objects below the part size: buffered, then one PUT.
    Single {
        target: Arc<dyn ObjectStore>,
        side: Side,
        key: Path,
        buf: Vec<u8>,
        create: bool,
        _permit: OwnedSemaphorePermit,
    },
    /// Larger objects: parts uploaded as they fill, completed on commit.
    Multi(Box<Multi>),
    /// A file of a local directory, written in blocks, renamed into place
    /// on commit.
    Local(Box<LocalUpload>),
}

struct LocalUpload {
    side: Side,
    key: String,
    file: Option<StagedFile>,
    block: Vec<u8>,
    capacity: usize,
    gate: Gate,
    _permit: OwnedSemaphorePermit,
}

impl LocalUpload {
    /// A pass for one write to the file (waited for by a stopped run).
    fn pass(&self) -> Result<Pass> {
        self.gate.enter().ok_or_else(|| Error::Task {
            reason: "the sync was stopped".into(),
        })
    }

    fn error(&self, e: std::io::Error) -> Error {
        let source = object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(e),
        };
        Error::object(self.side, self.key.clone(), "writing", source)
    }

    /// Writes `data` (or the pending block when `data` is `None`) on the
    /// blocking pool.
    async fn write_out(&mut self, data: Option<Bytes>) -> Result<()> {
        let pass = self.pass()?;
        let Some(mut file) = self.file.take() else {
            return Err(self.error(std::io::Error::other("the staged file was closed")));
        };
        let mut block = match data {
            Some(_) => Vec::new(),
            None => std::mem::take(&mut self.block),
        };
        // The pass goes back with the staged file: when the caller was
        // dropped meanwhile, the file is removed before the pass is.
        let (file, block, result, _pass) = tokio::task::spawn_blocking(move || {
            let result = match &data {
                Some(data) => file.write_all(data),
                None => file.write_all(&block),
            };
            block.clear();
            (file, block, result, pass)
        })
        .await
        .map_err(|e| Error::Task {
            reason: e.to_string(),
        })?;
        self.file = Some(file);
        if block.capacity() > 0 {
            self.block = block;
        }
        result.map_err(|e| self.error(e))
    }
}

struct Multi {
    side: Side,
    key: Path,
    upload: Box<dyn MultipartUpload>,
    budget: Budget,
    part_size: usize,
    part: Vec<u8>,
    permit: Option<OwnedSemaphorePermit>,
    in_flight: VecDeque<Task<object_store::Result<()>>>,
    parts: PartPool,
}

impl Upload {
    async fn local(
        mover: &Mover,
        req: &CopyRequest<'_>,
        dir: &LocalDir,
        size: u64,
    ) -> Result<Self> {
        let side = req.target_side;
        let key = req.target_key.to_string();
        let capacity = usize::try_from(size).map_or(BLOCK, |n| n.clamp(1, BLOCK));
        let permit = mover.budget.reserve(capacity).await?;
        let path = dir.path_of(req.target_key)?;
        let file = tokio::task::spawn_blocking(move || StagedFile::create(path))
            .await
            .map_err(|e| Error::Task {
                reason: e.to_string(),
            })?;
        let mut upload = LocalUpload {
            side,
            key,
            file: None,
            block: Vec::with_capacity(capacity),
            capacity,
            gate: mover.gate.clone(),
            _permit: permit,
        };
        upload.file = Some(file.map_err(|e| upload.error(e))?);
        Ok(Upload::Local(Box::new(upload)))
    }

    async fn start(mover: &Mover, req: &CopyRequest<'_>, size: u64) -> Result<Self> {
        let side = req.target_side;
        let key = req.target_key.clone();
        if size < mover.part_size as u64 {
            let len = usize::try_from(size).unwrap_or(mover.part_size);
            let permit = mover.budget.reserve(len).await?;
            return Ok(Upload::Single {
                target: Arc::clone(req.target),
                side,
                key,
                buf: Vec::with_capacity(len),
                create: req.create,
                _permit: permit,
            });
        }
        let upload = req
            .target
            .put_multipart_opts(&key, Default::default())
            .await
            .map_err(|e| Error::object(side, key.to_string(), "writing", e))?;
        Ok(Upload::Multi(Box::new(Multi {
            side,
            key,
            upload,
            budget: mover.budget.clone(),
            part_size: mover.part_size,
            part: Vec::new(),
            permit: None,
            in_flight: VecDeque::new(),
            parts: mover.parts.clone(),
        })))
    }

    async fn write(&mut self, mut data: Bytes) -> Result<()> {
        match self {
            Upload::Single { buf, .. } => {
                buf.extend_from_slice(&data);
                Ok(())
            }
            Upload::Local(l) => {
                if !l.block.is_empty() && l.block.len() + data.len() > l.capacity {
                    l.write_out(None).await?;
                }
                if data.len() >= l.capacity {
                    return l.write_out(Some(data)).await;
                }
                l.block.extend_from_slice(&data);
                Ok(())
            }
            Upload::Multi(m) => {
                while !data.is_empty() {
                    if m.permit.is_none() {
                        m.permit = Some(m.budget.reserve(m.part_size).await?);
                        m.part = m.parts.take(m.part_size);
                    }
                    let take = (m.part_size - m.part.len()).min(data.len());
                    m.part.extend_from_slice(&data.split_to(take));
                    if m.part.len() == m.part_size {
                        m.send_part().await?;
                    }
                }
                Ok(())
            }
        }
    }

    async fn commit(self) -> Result<PutResult> {
        match self {
            Upload::Local(mut l) => {
                if !l.block.is_empty() {
                    l.write_out(None).await?;
                }
                let Some(file) = l.file.take() else {
                    return Err(l.error(std::io::Error::other("the staged file was closed")));
                };
                let pass = l.pass()?;
                let md = tokio::task::spawn_blocking(move || {
                    let _pass = pass;
                    file.commit()
                })
                .await
                .map_err(|e| Error::Task {
                    reason: e.to_string(),
                })?
                .map_err(|e| l.error(e))?;
                Ok(PutResult {
                    e_tag: Some(etag_of(&md)),
                    version: None,
                    extensions: Default::default(),
                })
            }
            Upload::Single {
                target,
                side,
                key,
                buf,
                create,
                _permit,
            } => {
                let options = PutOptions {
                    mode: if create {
                        PutMode::Create
                    } else {
                        PutMode::Overwrite
                    },
                    ..PutOptions::default()
                };
                match target.put_opts(&key, PutPayload::from(buf), options).await {
                    Ok(put) => Ok(put),
                    // Content-addressed: an existing object has these bytes.
                    Err(object_store::Error::AlreadyExists { .. }) if create => Ok(PutResult {
                        e_tag: None,
                        version: None,
                        extensions: Default::default(),
                    }),
                    Err(e) => Err(Error::object(side, key.to_string(), "writing", e)),
                }
            }
            Upload::Multi(mut m) => {
                let finished: Result<PutResult> = async {
                    if !m.part.is_empty() {
                        m.send_part().await?;
                    }
                    while let Some(task) = m.in_flight.pop_front() {
                        m.settle(task).await?;
                    }
                    m.upload
                        .complete()
                        .await
                        .map_err(|e| Error::object(m.side, m.key.to_string(), "completing", e))
                }
                .await;
                if finished.is_err() {
                    m.in_flight.clear();
                    let _ = m.upload.abort().await;
                }
                finished
            }
        }
    }

    async fn abort(self) {
        if let Upload::Local(mut l) = self {
            // Dropping the staged file removes it.
            if let Some(file) = l.file.take() {
                let _ = tokio::task::spawn_blocking(move || drop(file)).await;
            }
            return;
        }
        if let Upload::Multi(mut m) = self {
            m.in_flight.clear();
            // Best effort: what matters is that nothing was completed.
            let _ = m.upload.abort().await;
        }
    }
}

impl Multi {
    async fn send_part(&mut self) -> Result<()> {
        let part = PooledPart {
            buf: std::mem::take(&mut self.part),
            pool: self.parts.clone(),
            _permit: self.permit.take(),
        };
        let put = self
            .upload
            .put_part(PutPayload::from(Bytes::from_owner(part)));
        self.in_flight.push_back(Task::spawn(put));
        while self.in_flight.len() > PARTS_IN_FLIGHT {
            if let Some(task) = self.in_flight.pop_front() {
                self.settle(task).await?;
            }
        }
        Ok(())
    }

    async fn settle(&mut self, task: Task<object_store::Result<()>>) -> Result<()> {
        let (side, key) = (self.side, self.key.to_string());
        task.await?
            .map_err(|e| Error::object(side, key, "writing", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use warmspare_testkit::{Fault, FaultStore, Op};

    /// A write that started when its run was dropped lands whole and is
    /// waited for; a write after the gate closed never starts.
    #[tokio::test]
    async fn a_closed_gate_refuses_writes_and_waits_for_started_ones() {
        let faults = FaultStore::new(Arc::new(object_store::memory::InMemory::new()));
        let slow = faults.inject(Fault::latency(Op::Put, Duration::from_millis(300)).prefix("a"));
        let gate = Gate::default();
        let store = GatedStore::new(Arc::new(faults.clone()), gate.clone());
        {
            // Drop the write once it reached the store, like a dropped run.
            let path = Path::from("a");
            let mut put = Box::pin(store.put(&path, "x".into()));
            while faults.fired(slow) == 0 {
                assert!(futures::poll!(put.as_mut()).is_pending());
                tokio::task::yield_now().await;
            }
        }
        gate.close();
        let refused = store.put(&Path::from("b"), "y".into()).await;
        assert!(refused.is_err(), "{refused:?}");
        let refused = store.delete(&Path::from("a")).await;
        assert!(refused.is_err(), "{refused:?}");
        gate.idle().await;
        let inner = faults.inner();
        assert!(inner.head(&Path::from("a")).await.is_ok(), "not waited for");
        assert!(inner.head(&Path::from("b")).await.is_err());
        assert_eq!(faults.calls(Op::Put), 1);
        // Reads still pass.
        assert!(store.head(&Path::from("a")).await.is_ok());
    }

    #[test]
    fn only_plain_etags_are_md5s() {
        assert_eq!(
            etag_md5(Some("\"d41d8cd98f00b204e9800998ecf8427e\"")).as_deref(),
            Some("d41d8cd98f00b204e9800998ecf8427e")
        );
        assert_eq!(
            etag_md5(Some("\"d41d8cd98f00b204e9800998ecf8427e-2\"")),
            None
        );
        assert_eq!(etag_md5(Some("12345-1700000000-3")), None);
        assert_eq!(etag_md5(None), None);
    }
}
