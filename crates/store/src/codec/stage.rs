//! [`ReadStage`]: one optional stage of a reader pipeline (compression,
//! encryption, and their inverses), which can be taken apart again to reach
//! the reader below it (to read its hashes and counts).

use std::pin::Pin;
use std::task::{Context, Poll};

use async_compression::tokio::bufread::{ZstdDecoder, ZstdEncoder};
use tokio::io::{AsyncRead, BufReader, ReadBuf};

use crate::crypto::{DecryptReader, EncryptReader};

/// A stage of a reader pipeline over `R`: left out (`Off`, `R` read as it
/// is) or applied (`On`, `S` reading from `R`).
///
/// `ReadStage<R, DecryptReader<R>>` reads an object that may or may not be
/// encrypted; after reading, [`ReadStage::into_inner`] gives back `R` with
/// whatever it counted.
pub enum ReadStage<R, S> {
    /// The stage is left out.
    Off(R),
    /// The stage is applied.
    On(Box<S>),
}

/// A reader that reads from an inner reader `R` and gives it back.
pub trait ReadWrapper<R> {
    /// The inner reader.
    fn get_ref(&self) -> &R;
    /// The inner reader (what the wrapper had buffered is lost).
    fn into_inner(self) -> R;
}

impl<R, S: ReadWrapper<R>> ReadStage<R, S> {
    /// The reader below the stage.
    pub fn get_ref(&self) -> &R {
        match self {
            Self::Off(r) => r,
            Self::On(s) => s.get_ref(),
        }
    }

    /// The reader below the stage.
    pub fn into_inner(self) -> R {
        match self {
            Self::Off(r) => r,
            Self::On(s) => s.into_inner(),
        }
    }
}

impl<R, S> AsyncRead for ReadStage<R, S>
where
    R: AsyncRead + Unpin,
    S: AsyncRead + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Off(r) => Pin::new(r).poll_read(cx, buf),
            Self::On(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<R> ReadWrapper<R> for EncryptReader<R> {
    fn get_ref(&self) -> &R {
        EncryptReader::get_ref(self)
    }

    fn into_inner(self) -> R {
        EncryptReader::into_inner(self)
    }
}

impl<R> ReadWrapper<R> for DecryptReader<R> {
    fn get_ref(&self) -> &R {
        DecryptReader::get_ref(self)
    }

    fn into_inner(self) -> R {
        DecryptReader::into_inner(self)
    }
}

impl<R: AsyncRead> ReadWrapper<R> for ZstdEncoder<BufReader<R>> {
    fn get_ref(&self) -> &R {
        ZstdEncoder::get_ref(self).get_ref()
    }

    fn into_inner(self) -> R {
        ZstdEncoder::into_inner(self).into_inner()
    }
}

impl<R: AsyncRead> ReadWrapper<R> for ZstdDecoder<BufReader<R>> {
    fn get_ref(&self) -> &R {
        ZstdDecoder::get_ref(self).get_ref()
    }

    fn into_inner(self) -> R {
        ZstdDecoder::into_inner(self).into_inner()
    }
}
