//! Fixed-size chunks between a producer (a pipe from `pg_dump`, a file
//! `pg_dump` is writing) and the store codec, so that the stored size of a
//! dump depends on its content only.
//!
//! The codec's zstd encoder (`async_compression`'s `bufread::ZstdEncoder`)
//! ends a zstd block whenever its input returns `Pending` after some bytes:
//! fed straight from a pipe, it flushed wherever the pipe happened to run
//! dry, and identical dumps were stored in different sizes (up to 1.6x
//! apart). [`ChunkReader`] hands the codec exactly [`CHUNK`] bytes at a
//! time (the last chunk: the rest), and returns `Pending` once at every
//! chunk boundary and nowhere else while a chunk lasts: the encoder
//! flushes at the same offsets whatever the timing, so equal input gives
//! equal output. Waiting for the next chunk returns `Pending` too, but
//! after the boundary's flush, when the encoder has nothing to flush.
//!
//! The producer runs as its own task and reads ahead by up to
//! [`QUEUED`] chunks, so `pg_dump` keeps writing while the codec
//! compresses. Memory: at most `QUEUED + 2` chunks.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The chunk size: a multiple of the codec's 64 KiB read buffer.
pub(crate) const CHUNK: usize = 1 << 20;
/// Chunks read ahead of the codec.
pub(crate) const QUEUED: usize = 4;

/// What a producer sends: a full chunk (or the last, shorter one), or the
/// error that ended the stream.
pub(crate) type ChunkSender = mpsc::Sender<io::Result<Vec<u8>>>;

/// The consumer end: an [`AsyncRead`] over the producer's chunks.
pub(crate) struct ChunkReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    current: Vec<u8>,
    pos: usize,
    /// A chunk was just used up: return `Pending` once before the next.
    boundary: bool,
    done: bool,
    /// The producer task, aborted when the reader is dropped.
    task: Option<JoinHandle<()>>,
}

impl ChunkReader {
    /// A reader and the sender its producer fills.
    pub(crate) fn channel() -> (ChunkSender, Self) {
        let (tx, rx) = mpsc::channel(QUEUED);
        (
            tx,
            Self {
                rx,
                current: Vec::new(),
                pos: 0,
                boundary: false,
                done: false,
                task: None,
            },
        )
    }

    /// Makes `task`, the producer, end with the reader: aborted when the
    /// reader is dropped.
    pub(crate) fn with_task(mut self, task: JoinHandle<()>) -> Self {
        self.task = Some(task);
        self
    }

    /// Reads `reader` to its end in chunks, from a task of its own.
    pub(crate) fn spawn<R>(mut reader: R) -> Self
    where
        R: AsyncRead + Unpin + Send + 'static,
    {
        let (tx, this) = Self::channel();
        this.with_task(tokio::spawn(async move {
            loop {
                match fill(&mut reader).await {
                    Ok((chunk, eof)) => {
                        if !chunk.is_empty() && tx.send(Ok(chunk)).await.is_err() {
                            return;
                        }
                        if eof {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
        }))
    }
}

impl Drop for ChunkReader {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Reads until [`CHUNK`] bytes or the end; returns them and whether the end
/// was reached.
pub(crate) async fn fill<R: AsyncRead + Unpin>(reader: &mut R) -> io::Result<(Vec<u8>, bool)> {
    let mut chunk = vec![0u8; CHUNK];
    let mut filled = 0;
    while filled < CHUNK {
        match reader.read(&mut chunk[filled..]).await {
            Ok(0) => {
                chunk.truncate(filled);
                return Ok((chunk, true));
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((chunk, false))
}

impl AsyncRead for ChunkReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.pos < this.current.len() {
                let n = buf.remaining().min(this.current.len() - this.pos);
                buf.put_slice(&this.current[this.pos..this.pos + n]);
                this.pos += n;
                if this.pos == this.current.len() {
                    this.boundary = true;
                }
                return Poll::Ready(Ok(()));
            }
            if this.done {
                return Poll::Ready(Ok(()));
            }
            if this.boundary {
                // The deterministic flush point (see the module docs).
                this.boundary = false;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            match ready!(this.rx.poll_recv(cx)) {
                Some(Ok(chunk)) => {
                    this.current = chunk;
                    this.pos = 0;
                }
                Some(Err(e)) => {
                    this.done = true;
                    return Poll::Ready(Err(e));
                }
                None => this.done = true,
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;
    use warmspare_store::object_store::ObjectStore;
    use warmspare_store::object_store::memory::InMemory;
    use warmspare_store::object_store::path::Path;
    use warmspare_store::{Codec, Compression};

    use super::*;

    /// A reader that returns its data in the given piece sizes, with a
    /// `Pending` before every piece whose flag is set: a pipe's timing.
    struct Jittery {
        data: Vec<u8>,
        pos: usize,
        pieces: Vec<(usize, bool)>,
        next: usize,
        pending_done: bool,
    }

    impl AsyncRead for Jittery {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = &mut *self;
            if this.pos == this.data.len() {
                return Poll::Ready(Ok(()));
            }
            let (size, pending) = this.pieces[this.next % this.pieces.len()];
            if pending && !this.pending_done {
                this.pending_done = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            this.pending_done = false;
            this.next += 1;
            let n = size
                .max(1)
                .min(buf.remaining())
                .min(this.data.len() - this.pos);
            buf.put_slice(&this.data[this.pos..this.pos + n]);
            this.pos += n;
            Poll::Ready(Ok(()))
        }
    }

    /// Compressible, not trivially: text with numbers.
    fn content(len: usize, seed: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 64);
        let mut x = seed;
        while out.len() < len {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            out.extend_from_slice(format!("{}\t{}\trow {}\n", x >> 40, x % 97, x >> 58).as_bytes());
        }
        out.truncate(len);
        out
    }

    async fn stored(data: &[u8], pieces: Vec<(usize, bool)>, chunked: bool) -> (u64, String) {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let path = Path::from("x");
        let reader = Jittery {
            data: data.to_vec(),
            pos: 0,
            pieces,
            next: 0,
            pending_done: false,
        };
        let codec = Codec::new(Compression::Zstd);
        let info = if chunked {
            codec
                .put(&store, &path, ChunkReader::spawn(reader), None)
                .await
                .unwrap()
        } else {
            codec.put(&store, &path, reader, None).await.unwrap()
        };
        assert_eq!(info.size, data.len() as u64);
        (info.stored_size, info.sha256)
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn unchunked_input_timing_changes_the_stored_size() {
        // The problem this module solves, shown: same bytes, other timing.
        let data = content(3 * CHUNK, 7);
        let rt = runtime();
        let smooth = rt.block_on(stored(&data, vec![(64 << 10, false)], false));
        let jittery = rt.block_on(stored(&data, vec![(4096, true), (9000, false)], false));
        assert_ne!(smooth.0, jittery.0);
        let chunked_smooth = rt.block_on(stored(&data, vec![(64 << 10, false)], true));
        let chunked_jittery = rt.block_on(stored(&data, vec![(4096, true), (9000, false)], true));
        assert_eq!(chunked_smooth, chunked_jittery);
        assert!(
            chunked_smooth.0 <= smooth.0 + 64,
            "{chunked_smooth:?} vs {smooth:?}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn chunked_output_depends_on_the_content_only(
            len in 0usize..(3 * CHUNK + 5000),
            seed in any::<u64>(),
            a in proptest::collection::vec((1usize..200_000, any::<bool>()), 1..8),
            b in proptest::collection::vec((1usize..200_000, any::<bool>()), 1..8),
        ) {
            let data = content(len, seed);
            let rt = runtime();
            let first = rt.block_on(stored(&data, a, true));
            let second = rt.block_on(stored(&data, b, true));
            prop_assert_eq!(first, second);
        }
    }
}
