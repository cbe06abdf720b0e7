//! Deterministic test data that is generated, not held in memory.

use std::pin::Pin;
use std::task::{Context, Poll};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `len` pseudo-random (incompressible) bytes from `seed`, as a reader.
pub(crate) struct PatternReader {
    remaining: u64,
    state: u64,
    pending: [u8; 8],
    pending_len: usize,
}

impl PatternReader {
    pub(crate) fn new(seed: u64, len: u64) -> Self {
        Self {
            remaining: len,
            state: seed | 1,
            pending: [0; 8],
            pending_len: 0,
        }
    }

    fn next_word(&mut self) -> [u8; 8] {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state.to_le_bytes()
    }
}

impl AsyncRead for PatternReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        while buf.remaining() > 0 && this.remaining > 0 {
            if this.pending_len == 0 {
                this.pending = this.next_word();
                this.pending_len = 8;
            }
            let start = 8 - this.pending_len;
            let n = this
                .pending_len
                .min(buf.remaining())
                .min(usize::try_from(this.remaining).unwrap_or(usize::MAX));
            buf.put_slice(&this.pending[start..start + n]);
            this.pending_len -= n;
            this.remaining -= n as u64;
        }
        Poll::Ready(Ok(()))
    }
}

/// SHA-256 (hex) and length of what `PatternReader::new(seed, len)` yields.
pub(crate) async fn pattern_digest(seed: u64, len: u64) -> String {
    let mut sink = HashingWriter::default();
    tokio::io::copy(&mut PatternReader::new(seed, len), &mut sink)
        .await
        .expect("hash pattern");
    sink.hex()
}

/// A writer that only hashes and counts.
#[derive(Default)]
pub(crate) struct HashingWriter {
    hasher: Sha256,
    pub(crate) len: u64,
}

impl HashingWriter {
    pub(crate) fn hex(self) -> String {
        hex::encode(self.hasher.finalize())
    }
}

impl AsyncWrite for HashingWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.hasher.update(buf);
        self.len += buf.len() as u64;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
