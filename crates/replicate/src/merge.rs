//! The diff: merging sorted streams by key in constant memory.

use futures::stream::{self, BoxStream, Peekable, StreamExt};
use object_store::ObjectMeta;
use std::cmp::Ordering;
use std::pin::Pin;

use crate::error::Result;

/// Something with a key to merge by.
pub(crate) trait Keyed {
    fn key(&self) -> &str;
}

impl Keyed for ObjectMeta {
    fn key(&self) -> &str {
        self.location.as_ref()
    }
}

impl Keyed for String {
    fn key(&self) -> &str {
        self
    }
}

/// One key of the merge of a left and a right stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Pair<A, B> {
    Left(A),
    Right(B),
    Both(A, B),
}

impl<A: Keyed, B: Keyed> Pair<A, B> {
    pub(crate) fn key(&self) -> &str {
        match self {
            Pair::Left(a) | Pair::Both(a, _) => a.key(),
            Pair::Right(b) => b.key(),
        }
    }
}

type Peek<T> = Pin<Box<Peekable<BoxStream<'static, Result<T>>>>>;

/// Merges two streams sorted by strictly increasing key into one stream
/// of [`Pair`]s in key order. Holds one item of each side. The first error
/// of either side ends the stream after being yielded.
pub(crate) fn merge_sorted<A, B>(
    left: BoxStream<'static, Result<A>>,
    right: BoxStream<'static, Result<B>>,
) -> BoxStream<'static, Result<Pair<A, B>>>
where
    A: Keyed + Send + Sync + 'static,
    B: Keyed + Send + Sync + 'static,
{
    let state: (Peek<A>, Peek<B>, bool) =
        (Box::pin(left.peekable()), Box::pin(right.peekable()), false);
    stream::unfold(state, |(mut left, mut right, done)| async move {
        if done {
            return None;
        }
        let order = {
            let l = left.as_mut().peek().await;
            let r = right.as_mut().peek().await;
            match (l, r) {
                (None, None) => return None,
                (Some(Err(_)), _) => None,
                (_, Some(Err(_))) => Some(Ordering::Greater),
                (Some(Ok(_)), None) => Some(Ordering::Less),
                (None, Some(Ok(_))) => Some(Ordering::Greater),
                (Some(Ok(a)), Some(Ok(b))) => Some(a.key().cmp(b.key())),
            }
        };
        let item = match order {
            // An error on the left: yield it and stop.
            None | Some(Ordering::Less) => match left.next().await? {
                Err(e) => return Some((Err(e), (left, right, true))),
                Ok(a) => Ok(Pair::Left(a)),
            },
            Some(Ordering::Greater) => match right.next().await? {
                Err(e) => return Some((Err(e), (left, right, true))),
                Ok(b) => Ok(Pair::Right(b)),
            },
            Some(Ordering::Equal) => match (left.next().await?, right.next().await?) {
                (Ok(a), Ok(b)) => Ok(Pair::Both(a, b)),
                (Err(e), _) | (_, Err(e)) => return Some((Err(e), (left, right, true))),
            },
        };
        Some((item, (left, right, false)))
    })
    .boxed()
}

/// Attaches to each item of `items` (sorted by key) the entry of
/// `records` (sorted by key) with the same key, if any. Records for keys
/// that `items` skips are dropped. An error in `records` is reported
/// through `on_record_error` once and the remaining items get no record:
/// records are an optimisation, never a requirement.
pub(crate) fn attach<T, R>(
    items: BoxStream<'static, Result<T>>,
    records: BoxStream<'static, Result<R>>,
    on_record_error: Box<dyn Fn(crate::Error) + Send + Sync>,
) -> BoxStream<'static, Result<(T, Option<R>)>>
where
    T: KeyOf + Send + Sync + 'static,
    R: Keyed + Send + Sync + 'static,
{
    attach_tracked(items, records, on_record_error, Box::new(|_| {}))
}

/// [`attach`], also calling `on_dropped` with the key of each record that
/// no item takes (including those after the last item).
pub(crate) fn attach_tracked<T, R>(
    items: BoxStream<'static, Result<T>>,
    records: BoxStream<'static, Result<R>>,
    on_record_error: Box<dyn Fn(crate::Error) + Send + Sync>,
    on_dropped: Box<dyn Fn(&str) + Send + Sync>,
) -> BoxStream<'static, Result<(T, Option<R>)>>
where
    T: KeyOf + Send + Sync + 'static,
    R: Keyed + Send + Sync + 'static,
{
    let state = (
        items,
        Box::pin(records.peekable()) as Peek<R>,
        (on_record_error, on_dropped),
        false,
    );
    stream::unfold(
        state,
        |(mut items, mut records, calls, mut records_broken)| async move {
            let item = match items.next().await {
                Some(Ok(item)) => item,
                Some(Err(e)) => return Some((Err(e), (items, records, calls, records_broken))),
                None => {
                    if !records_broken && let Some(Ok(r)) = records.as_mut().peek().await {
                        (calls.1)(r.key());
                    }
                    return None;
                }
            };
            let mut found = None;
            while !records_broken {
                let order = match records.as_mut().peek().await {
                    None => break,
                    Some(Err(_)) => None,
                    Some(Ok(r)) => Some(r.key().cmp(item.key_of())),
                };
                match order {
                    None => {
                        if let Some(Err(e)) = records.next().await {
                            (calls.0)(e);
                        }
                        records_broken = true;
                    }
                    Some(Ordering::Less) => {
                        if let Some(Ok(r)) = records.next().await {
                            (calls.1)(r.key());
                        }
                    }
                    Some(Ordering::Equal) => {
                        if let Some(Ok(r)) = records.next().await {
                            found = Some(r);
                        }
                        break;
                    }
                    Some(Ordering::Greater) => break,
                }
            }
            Some((Ok((item, found)), (items, records, calls, records_broken)))
        },
    )
    .boxed()
}

/// The key of a merged item (a [`Pair`]'s key).
pub(crate) trait KeyOf {
    fn key_of(&self) -> &str;
}

impl<A: Keyed, B: Keyed> KeyOf for Pair<A, B> {
    fn key_of(&self) -> &str {
        self.key()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn keys(set: &BTreeSet<String>) -> BoxStream<'static, Result<String>> {
        stream::iter(set.iter().cloned().map(Ok).collect::<Vec<_>>()).boxed()
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn run<T>(s: BoxStream<'static, Result<T>>) -> Result<Vec<T>> {
        block_on(s.try_collect())
    }

    fn key_strategy() -> impl Strategy<Value = String> {
        // Few distinct characters so that prefixes and collisions are common.
        proptest::string::string_regex("[a/.0]{1,5}").unwrap()
    }

    proptest! {
        #[test]
        fn merge_equals_set_expectation(
            left in proptest::collection::btree_set(key_strategy(), 0..40),
            right in proptest::collection::btree_set(key_strategy(), 0..40),
        ) {
            let merged = run(merge_sorted(keys(&left), keys(&right))).unwrap();
            let mut only_left = BTreeSet::new();
            let mut only_right = BTreeSet::new();
            let mut both = BTreeSet::new();
            let mut previous: Option<String> = None;
            for pair in &merged {
                let key = pair.key().to_string();
                if let Some(p) = &previous {
                    prop_assert!(p < &key, "not increasing: {} then {}", p, key);
                }
                previous = Some(key.clone());
                match pair {
                    Pair::Left(_) => { only_left.insert(key); }
                    Pair::Right(_) => { only_right.insert(key); }
                    Pair::Both(a, b) => { prop_assert_eq!(a, b); both.insert(key); }
                }
            }
            prop_assert_eq!(only_left, left.difference(&right).cloned().collect::<BTreeSet<_>>());
            prop_assert_eq!(only_right, right.difference(&left).cloned().collect::<BTreeSet<_>>());
            prop_assert_eq!(both, left.intersection(&right).cloned().collect::<BTreeSet<_>>());
        }

        #[test]
        fn attach_finds_exactly_the_matching_records(
            left in proptest::collection::btree_set(key_strategy(), 0..30),
            right in proptest::collection::btree_set(key_strategy(), 0..30),
            records in proptest::collection::btree_set(key_strategy(), 0..30),
        ) {
            let merged = merge_sorted(keys(&left), keys(&right));
            let dropped = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let seen = std::sync::Arc::clone(&dropped);
            let joined = run(attach_tracked(
                merged,
                keys(&records),
                Box::new(|_| {}),
                Box::new(move |k| seen.lock().unwrap().push(k.to_string())),
            ))
            .unwrap();
            let items: BTreeSet<String> = left.union(&right).cloned().collect();
            let unused: Vec<String> = records.difference(&items).cloned().collect();
            let dropped = dropped.lock().unwrap().clone();
            // Every record no item takes is reported, in order; after the
            // last item only the first such record is.
            let last = items.iter().next_back();
            let before_last: Vec<String> = unused
                .iter()
                .filter(|k| last.is_some_and(|l| *k < l))
                .cloned()
                .collect();
            prop_assert_eq!(&dropped[..before_last.len()], &before_last[..]);
            let after: Vec<&String> = unused.iter().filter(|k| last.is_none_or(|l| *k > l)).collect();
            prop_assert_eq!(dropped.len(), before_last.len() + usize::from(!after.is_empty()));
            prop_assert_eq!(joined.len(), left.union(&right).count());
            for (pair, record) in joined {
                let expected = records.contains(pair.key()).then(|| pair.key().to_string());
                prop_assert_eq!(record, expected);
            }
        }
    }

    #[test]
    fn an_error_ends_the_merge() {
        let left = stream::iter(vec![
            Ok("a".to_string()),
            Err(crate::Error::Task { reason: "x".into() }),
        ])
        .boxed();
        let right = keys(&["a".to_string(), "b".to_string()].into_iter().collect());
        let out: Vec<_> = block_on(merge_sorted(left, right).collect());
        assert_eq!(out.len(), 2);
        assert!(out[0].is_ok());
        assert!(out[1].is_err());
    }

    #[test]
    fn a_broken_record_stream_only_loses_records() {
        let records = stream::iter(vec![
            Ok("a".to_string()),
            Err(crate::Error::Task { reason: "x".into() }),
        ])
        .boxed();
        let items = merge_sorted(
            keys(&["a".into(), "b".into()].into_iter().collect()),
            keys(&BTreeSet::new()),
        );
        let errors = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = std::sync::Arc::clone(&errors);
        let out = run(attach(
            items,
            records,
            Box::new(move |_| {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }),
        ))
        .unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].1.as_deref(), Some("a"));
        assert_eq!(out[1].1, None);
        assert_eq!(errors.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
