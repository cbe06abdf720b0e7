//! Listings in lexicographic key order, in bounded memory.
//!
//! The diff merges two sorted listings, so both must come in the byte order
//! of their keys. S3 (and every S3-compatible server) lists in that order;
//! `object_store`'s `LocalFileSystem` does not (it walks directories in the
//! order the filesystem returns entries). So there are two strategies
//! ([`ListOrder`]):
//!
//! * **sorted**: one flat `list`, streamed page by page (memory: one page),
//!   with every key checked to come after the one before; a backend that
//!   breaks the promise fails the run with [`Error::UnsortedListing`]
//!   instead of producing a wrong diff.
//! * **per-directory**: `list_with_delimiter` one directory level at a
//!   time, each level sorted, descending depth first. A directory `a`
//!   sorts as `a/`, so `a.txt` (`.` < `/`) comes before `a/x`, exactly as
//!   in a flat listing. Memory: the entries of the directories on the
//!   current path (at most depth × widest directory); one request per
//!   directory.
//!
//! Keys under the reserved prefix `.warmspare/` are never listed.

use std::collections::VecDeque;
use std::sync::Arc;

use futures::stream::{self, BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, Side};
use crate::transfer::Task;

/// The reserved top-level prefix: warmspare's own records in a store (the
/// mirror's state). Never listed, copied or deleted as an artifact.
pub const RESERVED_PREFIX: &str = ".warmspare";

/// How a store is listed in key order (see the module docs of
/// [`crate::listing`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ListOrder {
    /// Per directory for `LocalFileSystem` (also when wrapped), sorted for
    /// everything else.
    #[default]
    Auto,
    /// One flat listing that the backend returns in key order (S3),
    /// checked as it streams.
    Sorted,
    /// One directory level at a time, sorted here.
    PerDirectory,
}

impl ListOrder {
    /// The strategy for `store`: `Auto` looks at the store's `Display`
    /// (`LocalFileSystem(...)`, possibly inside a wrapper's).
    pub fn resolve(self, store: &dyn ObjectStore) -> ListOrder {
        match self {
            ListOrder::Auto if store.to_string().contains("LocalFileSystem") => {
                ListOrder::PerDirectory
            }
            ListOrder::Auto => ListOrder::Sorted,
            other => other,
        }
    }
}

/// Whether `key` lies under the reserved prefix.
pub fn is_reserved(key: &str) -> bool {
    key.strip_prefix(RESERVED_PREFIX)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Lists every object of `store` (except reserved keys) in strictly
/// increasing key order.
pub fn sorted_listing(
    store: Arc<dyn ObjectStore>,
    side: Side,
    order: ListOrder,
) -> BoxStream<'static, Result<ObjectMeta>> {
    let raw = match order.resolve(store.as_ref()) {
        ListOrder::PerDirectory => per_directory(store, side),
        _ => store
            .list(None)
            .map(move |r| r.map_err(|source| Error::List { side, source }))
            .boxed(),
    };
    checked(raw, side)
}

/// Drops reserved keys and fails on a key that does not come strictly
/// after the previous one; ends after the first error.
pub(crate) fn checked(
    raw: BoxStream<'static, Result<ObjectMeta>>,
    side: Side,
) -> BoxStream<'static, Result<ObjectMeta>> {
    stream::unfold(
        (raw, None::<String>, false),
        move |(mut raw, mut previous, done)| async move {
            if done {
                return None;
            }
            loop {
                match raw.next().await? {
                    Err(e) => return Some((Err(e), (raw, previous, true))),
                    Ok(meta) => {
                        let key = meta.location.as_ref();
                        if is_reserved(key) {
                            continue;
                        }
                        if let Some(prev) = &previous
                            && prev.as_str() >= key
                        {
                            let err = Error::UnsortedListing {
                                side,
                                previous: prev.clone(),
                                key: key.to_string(),
                            };
                            return Some((Err(err), (raw, previous, true)));
                        }
                        match &mut previous {
                            // Reuse the buffer: one allocation per listing.
                            Some(p) => {
                                p.clear();
                                p.push_str(key);
                            }
                            None => previous = Some(key.to_string()),
                        }
                        return Some((Ok(meta), (raw, previous, false)));
                    }
                }
            }
        },
    )
    .boxed()
}

/// Objects per batch handed from a listing task to the merge.
const AHEAD_BATCH: usize = 512;
/// Batches buffered ahead of the merge.
const AHEAD_BATCHES: usize = 4;

/// Runs `listing` (or any stream) on its own task, up to a few batches
/// ahead of the consumer, so that two listings (and their requests, or the
/// decoding of the state record) proceed at once.
/// The task stops when the returned stream is dropped.
pub(crate) fn ahead<T: Send + 'static>(
    listing: BoxStream<'static, Result<T>>,
) -> BoxStream<'static, Result<T>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<Result<T>>>(AHEAD_BATCHES);
    // Started at once: the first requests overlap whatever the caller does
    // before it polls (opening the state record).
    let task = Task::spawn(async move {
        let mut batches = listing.ready_chunks(AHEAD_BATCH);
        while let Some(batch) = batches.next().await {
            if tx.send(batch).await.is_err() {
                break;
            }
        }
    });
    stream::unfold((rx, task), |(mut rx, task)| async move {
        let batch = rx.recv().await?;
        Some((stream::iter(batch), (rx, task)))
    })
    .flatten()
    .boxed()
}

enum Entry {
    Object(ObjectMeta),
    Dir(Path),
}

impl Entry {
    /// The key the entry sorts by: a directory sorts as `name/`.
    fn sort_key(&self) -> String {
        match self {
            Entry::Object(meta) => meta.location.to_string(),
            Entry::Dir(path) => format!("{path}/"),
        }
    }
}

async fn list_level(
    store: &Arc<dyn ObjectStore>,
    dir: Option<&Path>,
    side: Side,
) -> Result<VecDeque<Entry>> {
    let listed = store
        .list_with_delimiter(dir)
        .await
        .map_err(|source| Error::List { side, source })?;
    let mut entries: Vec<(String, Entry)> = listed
        .objects
        .into_iter()
        .map(Entry::Object)
        .chain(listed.common_prefixes.into_iter().map(Entry::Dir))
        .filter(|e| match e {
            Entry::Dir(path) => !(dir.is_none() && is_reserved(path.as_ref())),
            Entry::Object(_) => true,
        })
        .map(|e| (e.sort_key(), e))
        .collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(entries.into_iter().map(|(_, e)| e).collect())
}

fn per_directory(
    store: Arc<dyn ObjectStore>,
    side: Side,
) -> BoxStream<'static, Result<ObjectMeta>> {
    // The stack holds the unvisited entries of each directory on the path.
    let state: (Arc<dyn ObjectStore>, Option<Vec<VecDeque<Entry>>>) = (store, None);
    stream::try_unfold(state, move |(store, stack)| async move {
        let mut stack = match stack {
            Some(stack) => stack,
            None => vec![list_level(&store, None, side).await?],
        };
        loop {
            let Some(level) = stack.last_mut() else {
                return Ok(None);
            };
            match level.pop_front() {
                None => {
                    stack.pop();
                }
                Some(Entry::Object(meta)) => return Ok(Some((meta, (store, Some(stack))))),
                Some(Entry::Dir(dir)) => {
                    let level = list_level(&store, Some(&dir), side).await?;
                    stack.push(level);
                }
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt;
    use object_store::local::LocalFileSystem;
    use object_store::memory::InMemory;

    const KEYS: &[&str] = &[
        "a.txt",
        "a/x",
        "a/y/z",
        "a0",
        "b.x",
        "b-c/d",
        "b/c",
        "zz/top",
        ".warmspare/sync/state",
        ".warmspare-not-reserved",
    ];

    async fn fill(store: &Arc<dyn ObjectStore>) {
        for key in KEYS {
            store.put(&Path::from(*key), "x".into()).await.unwrap();
        }
    }

    fn expected() -> Vec<String> {
        let mut keys: Vec<String> = KEYS
            .iter()
            .filter(|k| !is_reserved(k))
            .map(|k| k.to_string())
            .collect();
        keys.sort();
        keys
    }

    async fn keys(store: Arc<dyn ObjectStore>, order: ListOrder) -> Result<Vec<String>> {
        sorted_listing(store, Side::Source, order)
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
    }

    #[tokio::test]
    async fn both_strategies_list_in_key_order() {
        let dir = tempfile::tempdir().unwrap();
        let fs: Arc<dyn ObjectStore> =
            Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        fill(&fs).await;
        assert_eq!(
            ListOrder::Auto.resolve(fs.as_ref()),
            ListOrder::PerDirectory
        );
        assert_eq!(
            keys(Arc::clone(&fs), ListOrder::Auto).await.unwrap(),
            expected()
        );

        let mem: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        fill(&mem).await;
        assert_eq!(ListOrder::Auto.resolve(mem.as_ref()), ListOrder::Sorted);
        assert_eq!(
            keys(Arc::clone(&mem), ListOrder::Auto).await.unwrap(),
            expected()
        );
        assert_eq!(
            keys(mem, ListOrder::PerDirectory).await.unwrap(),
            expected()
        );
    }

    #[test]
    fn reserved_prefix() {
        assert!(is_reserved(".warmspare"));
        assert!(is_reserved(".warmspare/sync/state"));
        assert!(!is_reserved(".warmspare-x"));
        assert!(!is_reserved("a/.warmspare/x"));
    }

    #[tokio::test]
    async fn an_unsorted_listing_is_an_error() {
        let metas: Vec<Result<ObjectMeta>> = ["b", "a"]
            .iter()
            .map(|k| {
                Ok(ObjectMeta {
                    location: Path::from(*k),
                    last_modified: Default::default(),
                    size: 1,
                    e_tag: None,
                    version: None,
                })
            })
            .collect();
        let out: Vec<_> = checked(stream::iter(metas).boxed(), Side::Target)
            .collect()
            .await;
        assert!(out[0].is_ok());
        assert!(matches!(out[1], Err(Error::UnsortedListing { .. })));
        assert_eq!(out.len(), 2);
    }
}
