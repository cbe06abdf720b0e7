//! Corrupting GET bodies: truncation and flipped bytes.

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::{self, BoxStream};

use super::rule::{ErrorKind, InjectedFault};

/// The data faults that fired for one GET.
#[derive(Debug, Default, Clone)]
pub(crate) struct BodyFaults {
    /// The earliest truncation: (after, with error).
    pub(crate) truncate: Option<(u64, bool)>,
    /// Offsets whose bytes are inverted.
    pub(crate) flips: Vec<u64>,
}

impl BodyFaults {
    pub(crate) fn is_empty(&self) -> bool {
        self.truncate.is_none() && self.flips.is_empty()
    }

    pub(crate) fn add_truncate(&mut self, after: u64, error: bool) {
        match self.truncate {
            Some((existing, _)) if existing <= after => {}
            _ => self.truncate = Some((after, error)),
        }
    }
}

struct State {
    inner: BoxStream<'static, object_store::Result<Bytes>>,
    faults: BodyFaults,
    position: u64,
    done: bool,
    pending_error: Option<object_store::Error>,
    fault: InjectedFault,
}

/// Applies `faults` to a body stream.
pub(crate) fn corrupt(
    inner: BoxStream<'static, object_store::Result<Bytes>>,
    faults: BodyFaults,
    fault: InjectedFault,
) -> BoxStream<'static, object_store::Result<Bytes>> {
    let state = State {
        inner,
        faults,
        position: 0,
        done: false,
        pending_error: None,
        fault,
    };
    stream::unfold(state, |mut st| async move {
        if let Some(err) = st.pending_error.take() {
            st.done = true;
            return Some((Err(err), st));
        }
        if st.done {
            return None;
        }
        if let Some((after, error)) = st.faults.truncate
            && st.position >= after
        {
            st.done = true;
            return error.then(|| (Err(st.fault.clone().into_error(ErrorKind::Generic)), st));
        }
        let chunk = match st.inner.next().await? {
            Ok(chunk) => chunk,
            Err(err) => return Some((Err(err), st)),
        };
        let start = st.position;
        let mut chunk = flip(chunk, start, &st.faults.flips);
        st.position += chunk.len() as u64;
        if let Some((after, error)) = st.faults.truncate
            && st.position >= after
        {
            let keep = usize::try_from(after - start).unwrap_or(usize::MAX);
            chunk.truncate(keep);
            st.position = after;
            st.done = true;
            if error {
                st.pending_error = Some(st.fault.clone().into_error(ErrorKind::Generic));
                st.done = false;
            }
        }
        Some((Ok(chunk), st))
    })
    .boxed()
}

fn flip(chunk: Bytes, start: u64, offsets: &[u64]) -> Bytes {
    let end = start + chunk.len() as u64;
    let hits: Vec<usize> = offsets
        .iter()
        .filter(|&&o| o >= start && o < end)
        .filter_map(|&o| usize::try_from(o - start).ok())
        .collect();
    if hits.is_empty() {
        return chunk;
    }
    let mut data = BytesMut::from(chunk.as_ref());
    for i in hits {
        data[i] ^= 0xFF;
    }
    data.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fault::Op;
    use futures::TryStreamExt;

    fn chunks(parts: &[&'static [u8]]) -> BoxStream<'static, object_store::Result<Bytes>> {
        stream::iter(
            parts
                .iter()
                .map(|p| Ok(Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        )
        .boxed()
    }

    fn fault() -> InjectedFault {
        InjectedFault {
            op: Op::Get,
            path: "x".into(),
        }
    }

    async fn collect(s: BoxStream<'static, object_store::Result<Bytes>>) -> (Vec<u8>, bool) {
        let items: Vec<_> = s.collect().await;
        let mut data = Vec::new();
        let mut failed = false;
        for item in items {
            match item {
                Ok(b) => data.extend_from_slice(&b),
                Err(_) => failed = true,
            }
        }
        (data, failed)
    }

    #[tokio::test]
    async fn truncates_across_chunks() {
        let faults = BodyFaults {
            truncate: Some((5, false)),
            flips: vec![],
        };
        let (data, failed) = collect(corrupt(chunks(&[b"abc", b"defg"]), faults, fault())).await;
        assert_eq!(data, b"abcde");
        assert!(!failed);

        let faults = BodyFaults {
            truncate: Some((3, true)),
            flips: vec![],
        };
        let (data, failed) = collect(corrupt(chunks(&[b"abc", b"defg"]), faults, fault())).await;
        assert_eq!(data, b"abc");
        assert!(failed);

        let faults = BodyFaults {
            truncate: Some((0, true)),
            flips: vec![],
        };
        let body: Vec<Bytes> = corrupt(chunks(&[b"abc"]), faults, fault())
            .try_collect()
            .await
            .unwrap_or_default();
        assert!(body.is_empty());
    }

    #[tokio::test]
    async fn flips_bytes_in_later_chunks() {
        let faults = BodyFaults {
            truncate: None,
            flips: vec![0, 4],
        };
        let (data, failed) = collect(corrupt(chunks(&[b"abc", b"defg"]), faults, fault())).await;
        assert_eq!(data, [!b'a', b'b', b'c', b'd', !b'e', b'f', b'g']);
        assert!(!failed);
    }
}
