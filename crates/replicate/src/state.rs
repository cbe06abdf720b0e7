//! The mirror's state record: what warmspare knows about each target
//! object, kept in the target itself at [`STATE_PATH`].
//!
//! One zstd-compressed JSON-lines object: a header line, then one entry per
//! target object in key order:
//!
//! ```text
//! {"format":"warmspare-sync-state","version":1,"source":"s3://primary"}
//! {"k":"a/x.hart","n":1234,"h":"<sha256>","t":{"e":"\"etag\""},"s":{"e":"...","m":1700000000000000000}}
//! ```
//!
//! `t` is the target object's version token (ETag, or modification time
//! when the store has no ETag) as the target reported it when warmspare
//! wrote or hashed the object; `h` is the SHA-256 of its bytes; `s` is the
//! source object's token at that time. An entry is trusted only while the
//! target's listing still shows the same size and token, and its source
//! token only while the header names the same source and the source's
//! listing shows the same size and token. So a stale, foreign or lost
//! state costs hashing, never a wrong skip. Tokens are only ever compared
//! with tokens of the same store.
//!
//! The record is read in 1 MiB ranges (each a separate request, pinned to
//! one version with `If-Match`) and decoded as the merge consumes it, and
//! written as a streaming upload that replaces the old one atomically at
//! the end of the run (only when it changed, module `recorder`): memory
//! does not grow with the number of objects. Checkpoints of a run
//! (module `journal`) are records of the same format; the header's
//! `"journal"` names the last run whose checkpoints the record includes.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use async_compression::tokio::bufread::ZstdDecoder;
use async_compression::tokio::write::ZstdEncoder;
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectMeta, ObjectStore};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWriteExt, ReadBuf};

use crate::error::{Error, Result, Side};
use crate::merge::Keyed;

/// Where the state lives in the target.
pub const STATE_PATH: &str = ".warmspare/sync/state.jsonl.zst";
const FORMAT: &str = "warmspare-sync-state";
const VERSION: u32 = 1;
const CHUNK: u64 = 1024 * 1024;
/// S3's minimum part size; small states go up in one PUT.
const UPLOAD_BUFFER: usize = 5 * 1024 * 1024;

/// A version token of an object in one store.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Token {
    #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
    pub(crate) e_tag: Option<String>,
    /// Modification time, Unix nanoseconds.
    #[serde(rename = "m", default, skip_serializing_if = "Option::is_none")]
    pub(crate) mtime: Option<i64>,
}

impl Token {
    /// The token of a listed object.
    pub(crate) fn of(meta: &ObjectMeta) -> Self {
        Self {
            e_tag: meta.e_tag.clone(),
            mtime: meta.last_modified.timestamp_nanos_opt(),
        }
    }

    /// The token of a version read with GET, comparable with later
    /// listings: the listing's token when the GET saw the same version
    /// (listings and GET headers differ in time precision on S3), else the
    /// GET's ETag alone.
    pub(crate) fn of_read(listed: &ObjectMeta, read: &ObjectMeta) -> Self {
        if same_version(listed, read) {
            Self::of(listed)
        } else {
            Self {
                e_tag: read.e_tag.clone(),
                mtime: None,
            }
        }
    }

    /// Whether `meta` (from a listing of the same store) shows this
    /// version. A token without ETag and time matches nothing.
    pub(crate) fn matches(&self, meta: &ObjectMeta) -> bool {
        if self.e_tag.is_none() && self.mtime.is_none() {
            return false;
        }
        if let Some(e) = &self.e_tag
            && meta.e_tag.as_deref().map(normalize_etag) != Some(normalize_etag(e))
        {
            return false;
        }
        if let Some(m) = self.mtime
            && meta.last_modified.timestamp_nanos_opt() != Some(m)
        {
            return false;
        }
        true
    }
}

/// An ETag without quotes and weak marker.
pub(crate) fn normalize_etag(mut e: &str) -> &str {
    // `strip_prefix` rather than `trim_start_matches`: this runs for every
    // key of a pass, and a substring search costs more than the compare.
    while let Some(rest) = e.strip_prefix("W/") {
        e = rest;
    }
    e.trim_matches('"')
}

/// Whether two metas of the same store describe the same version: same
/// size and ETag, or same size and time when there is no ETag.
pub(crate) fn same_version(a: &ObjectMeta, b: &ObjectMeta) -> bool {
    if a.size != b.size {
        return false;
    }
    match (&a.e_tag, &b.e_tag) {
        (Some(x), Some(y)) => normalize_etag(x) == normalize_etag(y),
        (None, None) => a.last_modified == b.last_modified,
        _ => false,
    }
}

/// What warmspare knows about one target object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StateEntry {
    #[serde(rename = "k")]
    pub(crate) key: String,
    #[serde(rename = "n")]
    pub(crate) size: u64,
    #[serde(rename = "h")]
    pub(crate) sha256: String,
    #[serde(rename = "t")]
    pub(crate) target: Token,
    #[serde(rename = "s", default, skip_serializing_if = "Option::is_none")]
    pub(crate) source: Option<Token>,
}

impl Keyed for StateEntry {
    fn key(&self) -> &str {
        &self.key
    }
}

impl StateEntry {
    /// Whether the entry describes the target object as listed now.
    pub(crate) fn describes_target(&self, target: &ObjectMeta) -> bool {
        self.size == target.size && self.target.matches(target)
    }

    /// Whether the recorded source version is the source object as listed
    /// now (only meaningful for the same source identity).
    pub(crate) fn source_unchanged(&self, source: &ObjectMeta) -> bool {
        self.size == source.size && self.source.as_ref().is_some_and(|t| t.matches(source))
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Header {
    format: String,
    version: u32,
    #[serde(default)]
    pub(crate) source: Option<String>,
    /// The last run whose checkpoints (module `journal`) this record
    /// includes; older checkpoints are ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) journal: Option<u64>,
}

impl Header {
    pub(crate) fn new(source: Option<String>, journal: Option<u64>) -> Self {
        Self {
            format: FORMAT.to_string(),
            version: VERSION,
            source,
            journal,
        }
    }
}

/// A state record being read.
pub(crate) struct StateReader {
    /// The source identity the record was written for.
    pub(crate) source: Option<String>,
    /// The entries, in key order; an error ends them.
    pub(crate) entries: BoxStream<'static, Result<StateEntry>>,
    /// The last run whose checkpoints exist or were folded into the record
    /// (0 for none).
    pub(crate) last_run: u64,
    /// Whether checkpoints newer than the record were found.
    pub(crate) overlaid: bool,
    /// Checkpoint segments found that the record already includes (left
    /// over by a run stopped during its clean-up): to be removed.
    pub(crate) included: Vec<crate::journal::Segment>,
}

fn corrupt(path: &str, reason: impl Into<String>) -> Error {
    Error::Corrupt {
        path: path.to_string(),
        reason: reason.into(),
    }
}

/// Opens the state of `target`, with the checkpoints of interrupted runs
/// laid over it (module `journal`); `Ok(None)` when there is none.
pub(crate) async fn open(target: &Arc<dyn ObjectStore>) -> Result<Option<StateReader>> {
    // Two requests at once: the record's first range and the checkpoints.
    let (base, listed) = futures::join!(
        open_record(target, STATE_PATH),
        crate::journal::segments(target)
    );
    let listed = listed.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "ignoring the sync checkpoints");
        Vec::new()
    });
    crate::journal::overlay(target, base?, listed).await
}

/// Opens one record (the state, or a checkpoint segment): its header and
/// its entries; `Ok(None)` when it does not exist.
pub(crate) async fn open_record(
    target: &Arc<dyn ObjectStore>,
    path: &str,
) -> Result<Option<(Header, BoxStream<'static, Result<StateEntry>>)>> {
    let name = path.to_string();
    let path = Path::from(path);
    let first = match target
        .get_opts(
            &path,
            GetOptions {
                range: Some(GetRange::Bounded(0..CHUNK)),
                ..GetOptions::default()
            },
        )
        .await
    {
        Ok(r) => r,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(source) => return Err(Error::object(Side::Target, name, "reading", source)),
    };
    let size = first.meta.size;
    let e_tag = first.meta.e_tag.clone();
    let head = first
        .bytes()
        .await
        .map_err(|source| Error::object(Side::Target, name.clone(), "reading", source))?;
    let chunks = ranged_chunks(Arc::clone(target), path, head, size, e_tag);
    let decoder = ZstdDecoder::new(ChunkReader::new(chunks));
    let mut reader = tokio::io::BufReader::with_capacity(256 * 1024, decoder);
    let mut line = Vec::with_capacity(512);
    let header_line = read_line(&mut reader, &mut line)
        .await
        .map_err(|e| corrupt(&name, e.to_string()))?
        .ok_or_else(|| corrupt(&name, "empty"))?;
    let header: Header =
        serde_json::from_slice(header_line).map_err(|e| corrupt(&name, e.to_string()))?;
    if header.format != FORMAT || header.version != VERSION {
        return Err(corrupt(
            &name,
            format!(
                "format {} version {} is not {FORMAT} version {VERSION}",
                header.format, header.version
            ),
        ));
    }
    // The line buffer and the previous key are reused from entry to entry.
    let state = (reader, line, String::new(), false, name);
    let entries = stream::unfold(
        state,
        |(mut reader, mut line, mut previous, done, name)| async move {
            if done {
                return None;
            }
            let parsed = match read_line(&mut reader, &mut line).await {
                Ok(Some(bytes)) => serde_json::from_slice::<StateEntry>(bytes)
                    .map_err(|e| corrupt(&name, e.to_string())),
                Ok(None) => return None,
                Err(e) => Err(corrupt(&name, e.to_string())),
            };
            let checked = parsed.and_then(|entry| {
                if !previous.is_empty() && previous.as_str() >= entry.key.as_str() {
                    return Err(corrupt(&name, format!("entry {} out of order", entry.key)));
                }
                previous.clear();
                previous.push_str(&entry.key);
                Ok(entry)
            });
            let done = checked.is_err();
            Some((checked, (reader, line, previous, done, name)))
        },
    )
    .boxed();
    Ok(Some((header, entries)))
}

/// The next line of `reader` without its newline, in `buf`; `None` at the
/// end.
async fn read_line<'b, R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &'b mut Vec<u8>,
) -> io::Result<Option<&'b [u8]>> {
    buf.clear();
    if reader.read_until(b'\n', buf).await? == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    }
    Ok(Some(&buf[..]))
}

/// The bytes of the state object: the first chunk already read, then the
/// rest in ranges pinned to the same version.
fn ranged_chunks(
    store: Arc<dyn ObjectStore>,
    path: Path,
    first: Bytes,
    size: u64,
    e_tag: Option<String>,
) -> BoxStream<'static, io::Result<Bytes>> {
    let offset = first.len() as u64;
    stream::once(async move { Ok(first) })
        .chain(stream::try_unfold(offset, move |offset| {
            let store = Arc::clone(&store);
            let path = path.clone();
            let e_tag = e_tag.clone();
            async move {
                if offset >= size {
                    return Ok(None);
                }
                let options = GetOptions {
                    range: Some(GetRange::Bounded(offset..(offset + CHUNK).min(size))),
                    if_match: e_tag,
                    ..GetOptions::default()
                };
                let bytes = async { store.get_opts(&path, options).await?.bytes().await }
                    .await
                    .map_err(io::Error::other)?;
                if bytes.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "state ended early",
                    ));
                }
                let next = offset + bytes.len() as u64;
                Ok(Some((bytes, next)))
            }
        }))
        .boxed()
}

/// An `AsyncBufRead` over a stream of byte chunks.
struct ChunkReader {
    chunks: BoxStream<'static, io::Result<Bytes>>,
    current: Bytes,
}

impl ChunkReader {
    fn new(chunks: BoxStream<'static, io::Result<Bytes>>) -> Self {
        Self {
            chunks,
            current: Bytes::new(),
        }
    }
}

impl AsyncRead for ChunkReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let available = ready!(Pin::new(&mut *this).poll_fill_buf(cx))?;
        let n = available.len().min(buf.remaining());
        buf.put_slice(&available[..n]);
        Pin::new(this).consume(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncBufRead for ChunkReader {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        while this.current.is_empty() {
            match ready!(this.chunks.poll_next_unpin(cx)) {
                Some(Ok(chunk)) => this.current = chunk,
                Some(Err(e)) => return Poll::Ready(Err(e)),
                None => break,
            }
        }
        Poll::Ready(Ok(&this.current[..]))
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        let this = self.get_mut();
        let _ = this.current.split_to(amt.min(this.current.len()));
    }
}

/// A new state record being written; replaces the old one atomically on
/// [`StateWriter::finish`], leaves it untouched on [`StateWriter::abort`].
pub(crate) struct StateWriter {
    encoder: ZstdEncoder<BufWriter>,
    /// Lines not yet handed to the encoder: zstd compresses large inputs
    /// much faster than one line at a time.
    pending: Vec<u8>,
    path: String,
}

/// Lines are handed to the encoder in blocks of this size.
const PENDING: usize = 128 * 1024;

fn write_error(path: &str, e: io::Error) -> Error {
    let source = match e.downcast::<object_store::Error>() {
        Ok(inner) => inner,
        Err(e) => object_store::Error::Generic {
            store: "state",
            source: Box::new(e),
        },
    };
    Error::object(Side::Target, path, "writing", source)
}

impl StateWriter {
    /// A record at `path` (the state, or a checkpoint segment).
    pub(crate) async fn create_at(
        target: &Arc<dyn ObjectStore>,
        path: &str,
        header: Header,
    ) -> Result<Self> {
        let upload = BufWriter::with_capacity(Arc::clone(target), Path::from(path), UPLOAD_BUFFER);
        let mut writer = Self {
            encoder: ZstdEncoder::new(upload),
            pending: Vec::with_capacity(PENDING + 1024),
            path: path.to_string(),
        };
        writer.write_json(&header).await?;
        Ok(writer)
    }

    async fn write_json<T: Serialize>(&mut self, value: &T) -> Result<()> {
        serde_json::to_writer(&mut self.pending, value)
            .map_err(|e| corrupt(&self.path, e.to_string()))?;
        self.pending.push(b'\n');
        if self.pending.len() >= PENDING {
            self.flush_pending().await?;
        }
        Ok(())
    }

    async fn flush_pending(&mut self) -> Result<()> {
        self.encoder
            .write_all(&self.pending)
            .await
            .map_err(|e| write_error(&self.path, e))?;
        self.pending.clear();
        Ok(())
    }

    /// Appends an entry; entries must come in key order.
    pub(crate) async fn write(&mut self, entry: &StateEntry) -> Result<()> {
        self.write_json(entry).await
    }

    /// Completes the upload: the new record replaces the old one.
    pub(crate) async fn finish(mut self) -> Result<()> {
        self.flush_pending().await?;
        self.encoder
            .shutdown()
            .await
            .map_err(|e| write_error(&self.path, e))
    }

    /// Drops the new record; the old one stays.
    pub(crate) async fn abort(mut self) {
        // Best effort: an incomplete multipart upload is all that can remain.
        let _ = self.encoder.get_mut().abort().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;

    fn entry(i: usize) -> StateEntry {
        StateEntry {
            key: format!("k/{i:08}"),
            size: i as u64,
            sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(i.to_le_bytes())),
            target: Token {
                e_tag: Some(format!("\"t{i}\"")),
                mtime: None,
            },
            source: Some(Token {
                e_tag: Some(format!("s{i}")),
                mtime: Some(i as i64),
            }),
        }
    }

    #[tokio::test]
    async fn roundtrip_over_many_ranges() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        assert!(open(&store).await.unwrap().is_none());
        // Random-looking hashes compress poorly: the record spans ranges.
        let n = 60_000;
        let header = Header::new(Some("src".into()), None);
        let mut w = StateWriter::create_at(&store, STATE_PATH, header)
            .await
            .unwrap();
        for i in 0..n {
            w.write(&entry(i)).await.unwrap();
        }
        w.finish().await.unwrap();
        let size = store.head(&Path::from(STATE_PATH)).await.unwrap().size;
        assert!(size > CHUNK, "{size}");

        let reader = open(&store).await.unwrap().unwrap();
        assert_eq!(reader.source.as_deref(), Some("src"));
        let entries: Vec<StateEntry> = reader.entries.try_collect().await.unwrap();
        assert_eq!(entries.len(), n);
        assert_eq!(entries[n - 1], entry(n - 1));
    }

    #[tokio::test]
    async fn garbage_is_an_error_not_a_state() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        store
            .put(&Path::from(STATE_PATH), "not zstd".into())
            .await
            .unwrap();
        assert!(open(&store).await.is_err());
    }

    #[test]
    fn tokens_match_only_the_same_version() {
        let meta = |e: Option<&str>, nanos: u64| {
            let mut m = ObjectMeta {
                location: Path::from("a"),
                last_modified: Default::default(),
                size: 3,
                e_tag: e.map(str::to_string),
                version: None,
            };
            m.last_modified += std::time::Duration::from_nanos(nanos);
            m
        };
        let t = Token::of(&meta(Some("\"x\""), 5));
        assert!(t.matches(&meta(Some("x"), 5)));
        assert!(!t.matches(&meta(Some("y"), 5)));
        assert!(!t.matches(&meta(Some("x"), 6)));
        assert!(!Token::default().matches(&meta(None, 5)));
        let read = meta(Some("x"), 0);
        assert_eq!(Token::of_read(&meta(Some("x"), 5), &read).mtime, Some(5));
        assert_eq!(Token::of_read(&meta(Some("z"), 5), &read).mtime, None);
    }
}
