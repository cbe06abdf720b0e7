//! Checkpoints: what a run established, recorded while it runs, so that a
//! run that is killed does not read again what it already copied.
//!
//! The state record ([`crate::state`]) is replaced once per run, at its
//! end. In between, the run appends the entries it established (copies,
//! and comparisons that hashed) to checkpoint segments
//! `.warmspare/sync/journal/<run>-<seq>.jsonl.zst`, in the state's own
//! format, one every `checkpoint_objects` entries or
//! [`CHECKPOINT_INTERVAL`]. A segment is written only after the objects it
//! names are durable on the target ([`crate::local::make_durable`] on a
//! filesystem; an S3 PUT is durable when it returns).
//!
//! Readers lay the segments of runs newer than the state record (its
//! header's `journal`) over it, the newest run winning for a key. One
//! run's segments cover increasing key ranges (outcomes come in key
//! order), so a run is read as one sorted stream, one segment open at a
//! time. A segment that does not read is ignored from there on: like a
//! lost state, that costs hashing, never a wrong skip, because every entry
//! is checked against the listings before it is trusted. After the state
//! is replaced, the run lists the segments again and deletes those of its
//! own and older runs, which the record includes (a run stopped earlier
//! may have written one late, see [`crate::sync`], "Stopping a run").
//! Segments that a record includes but that are still there (a run stopped
//! during this clean-up) are ignored, and removed by the next run, even
//! one that writes no new record.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::time::Instant;

use crate::error::{Result, Side};
use crate::merge::{Pair, merge_sorted};
use crate::state::{Header, StateEntry, StateReader, StateWriter, open_record};

/// Where the segments live.
pub(crate) const JOURNAL_DIR: &str = ".warmspare/sync/journal";
const SUFFIX: &str = ".jsonl.zst";
/// A checkpoint is written at least this often while entries are pending.
pub(crate) const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(30);
/// Runs whose segments are read (the newest ones; older ones cost
/// hashing only). Bounds the streams open at once.
const MAX_RUNS: usize = 8;

/// One checkpoint segment.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Segment {
    pub(crate) run: u64,
    pub(crate) seq: u64,
}

impl Segment {
    fn path(&self) -> String {
        format!("{JOURNAL_DIR}/{:012}-{:08}{SUFFIX}", self.run, self.seq)
    }

    fn parse(key: &str) -> Option<Self> {
        let name = key.strip_prefix(JOURNAL_DIR)?.strip_prefix('/')?;
        let (run, seq) = name.strip_suffix(SUFFIX)?.split_once('-')?;
        Some(Self {
            run: run.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

/// The segments in `target`, sorted.
pub(crate) async fn segments(target: &Arc<dyn ObjectStore>) -> Result<Vec<Segment>> {
    let listed: Vec<_> = target
        .list(Some(&Path::from(JOURNAL_DIR)))
        .map_err(|source| crate::Error::List {
            side: Side::Target,
            source,
        })
        .try_collect()
        .await?;
    let mut segments: Vec<Segment> = listed
        .iter()
        .filter_map(|m| Segment::parse(m.location.as_ref()))
        .collect();
    segments.sort();
    Ok(segments)
}

/// The state as it stands after the checkpoints of runs newer than the
/// record `base` (see the module docs); `listed` are the segments found.
pub(crate) async fn overlay(
    target: &Arc<dyn ObjectStore>,
    base: Option<(Header, BoxStream<'static, Result<StateEntry>>)>,
    listed: Vec<Segment>,
) -> Result<Option<StateReader>> {
    let floor = base.as_ref().and_then(|(h, _)| h.journal).unwrap_or(0);
    let last_run = listed.iter().map(|s| s.run).max().unwrap_or(0).max(floor);
    // Segments the record includes: left over by a run stopped after its
    // record replaced the old one (or written late by one stopped before);
    // ignored, and removed by the next run (module docs).
    let (included, newer): (Vec<Segment>, Vec<Segment>) =
        listed.into_iter().partition(|s| s.run <= floor);
    let mut runs: Vec<Vec<Segment>> = Vec::new();
    for segment in newer {
        match runs.last_mut() {
            Some(run) if run[0].run == segment.run => run.push(segment),
            _ => runs.push(vec![segment]),
        }
    }
    let overlaid = !runs.is_empty();
    let skip = runs.len().saturating_sub(MAX_RUNS);
    let (mut source, mut entries) = match base {
        Some((header, entries)) => (Some(header.source), entries),
        None => (None, stream::empty().boxed()),
    };
    for run in runs.into_iter().skip(skip) {
        let Some((header, first)) = open_segment(target, &run[0]).await else {
            continue;
        };
        match &source {
            // Checkpoints of another source's run: ignored (hashing).
            Some(s) if *s != header.source => continue,
            Some(_) => {}
            None => source = Some(header.source),
        }
        let rest = run_entries(Arc::clone(target), run[1..].to_vec());
        let newer = sorted_or_end(first.chain(rest).boxed());
        entries = merge_sorted(entries, newer)
            .map_ok(|pair| match pair {
                Pair::Left(e) | Pair::Right(e) | Pair::Both(_, e) => e,
            })
            .boxed();
    }
    Ok(source.map(|source| StateReader {
        source,
        entries,
        last_run,
        overlaid,
        included,
    }))
}

async fn open_segment(
    target: &Arc<dyn ObjectStore>,
    segment: &Segment,
) -> Option<(Header, BoxStream<'static, Result<StateEntry>>)> {
    match open_record(target, &segment.path()).await {
        Ok(Some((header, entries))) => Some((header, ok_entries(entries))),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring a sync checkpoint");
            None
        }
    }
}

/// The entries until the first error (logged).
fn ok_entries(
    entries: BoxStream<'static, Result<StateEntry>>,
) -> BoxStream<'static, Result<StateEntry>> {
    entries
        .take_while(|e| {
            if let Err(e) = e {
                tracing::warn!(error = %e, "ignoring the rest of a sync checkpoint");
            }
            futures::future::ready(e.is_ok())
        })
        .boxed()
}

/// The entries of a run's further segments, opened one after the other.
fn run_entries(
    target: Arc<dyn ObjectStore>,
    rest: Vec<Segment>,
) -> BoxStream<'static, Result<StateEntry>> {
    stream::iter(rest)
        .then(move |segment| {
            let target = Arc::clone(&target);
            async move {
                match open_segment(&target, &segment).await {
                    Some((_, entries)) => entries,
                    None => stream::empty().boxed(),
                }
            }
        })
        .flatten()
        .boxed()
}

/// Ends the stream before a key that does not come after the previous.
fn sorted_or_end(
    entries: BoxStream<'static, Result<StateEntry>>,
) -> BoxStream<'static, Result<StateEntry>> {
    let mut previous: Option<String> = None;
    entries
        .take_while(move |e| {
            let ok = match e {
                Ok(e) if previous.as_deref().is_some_and(|p| p >= e.key.as_str()) => {
                    tracing::warn!(key = %e.key, "a sync checkpoint is out of order");
                    false
                }
                Ok(e) => {
                    previous = Some(e.key.clone());
                    true
                }
                Err(_) => false,
            };
            futures::future::ready(ok)
        })
        .boxed()
}

/// The checkpoints of one run, being written.
pub(crate) struct Journal {
    target: Arc<dyn ObjectStore>,
    source: Option<String>,
    /// This run's number: after every run seen.
    pub(crate) run: u64,
    /// The segments found at the start (deleted once the state includes
    /// them).
    found: Vec<Segment>,
    next_seq: u64,
    /// Segments of this run that were written.
    written: u64,
    writer: Option<StateWriter>,
    pending: u64,
    since: Instant,
    every: u64,
}

impl Journal {
    /// Starts the journal of a run; `last_run` is the newest run the state
    /// reader saw (0 when unknown).
    pub(crate) async fn start(
        target: &Arc<dyn ObjectStore>,
        source: Option<String>,
        last_run: u64,
        every: u64,
    ) -> Result<Self> {
        let found = segments(target).await?;
        let run = found.iter().map(|s| s.run).max().unwrap_or(0).max(last_run) + 1;
        Ok(Self {
            target: Arc::clone(target),
            source,
            run,
            found,
            next_seq: 0,
            written: 0,
            writer: None,
            pending: 0,
            since: Instant::now(),
            every,
        })
    }

    /// Records an entry established by this run (in key order); whether a
    /// checkpoint is due.
    pub(crate) async fn append(&mut self, entry: &StateEntry) -> Result<bool> {
        if self.every == 0 {
            return Ok(false);
        }
        if self.writer.is_none() {
            let segment = Segment {
                run: self.run,
                seq: self.next_seq,
            };
            let header = Header::new(self.source.clone(), None);
            self.writer =
                Some(StateWriter::create_at(&self.target, &segment.path(), header).await?);
            self.next_seq += 1;
            self.since = Instant::now();
        }
        if let Some(w) = self.writer.as_mut() {
            w.write(entry).await?;
        }
        self.pending += 1;
        Ok(self.pending >= self.every || self.since.elapsed() >= CHECKPOINT_INTERVAL)
    }

    /// Whether entries wait for a checkpoint.
    pub(crate) fn has_pending(&self) -> bool {
        self.pending > 0
    }

    /// Writes the pending entries as a segment. The caller made the objects
    /// they name durable first.
    pub(crate) async fn checkpoint(&mut self) -> Result<()> {
        self.pending = 0;
        match self.writer.take() {
            Some(w) => {
                w.finish().await?;
                self.written = self.next_seq;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Drops pending entries (the run failed before a checkpoint).
    pub(crate) async fn abort(&mut self) {
        self.pending = 0;
        if let Some(w) = self.writer.take() {
            w.abort().await;
        }
    }

    /// After the state record replaced the old one (and includes this run):
    /// deletes the segments of this run and of every older one, listed
    /// again (a run stopped before this one started may have written a
    /// segment late; the record makes readers ignore it either way).
    pub(crate) async fn remove_included(mut self) {
        self.abort().await;
        let own = (0..self.written).map(|seq| Segment { run: self.run, seq });
        let mut included: Vec<Segment> = self.found.iter().cloned().chain(own).collect();
        match segments(&self.target).await {
            Ok(listed) => included.extend(listed.into_iter().filter(|s| s.run <= self.run)),
            Err(e) => tracing::warn!(error = %e, "cannot list the sync checkpoints"),
        }
        included.sort();
        included.dedup();
        remove(&self.target, &included).await;
    }
}

/// Deletes checkpoint segments that a state record includes; stops at the
/// first failure (what is left over is ignored by readers).
pub(crate) async fn remove(target: &Arc<dyn ObjectStore>, included: &[Segment]) {
    for segment in included {
        match target.delete(&Path::from(segment.path())).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot delete a sync checkpoint");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{StateWriter, Token, open};
    use object_store::memory::InMemory;

    fn entry(key: &str, sha: char) -> StateEntry {
        StateEntry {
            key: key.into(),
            size: 1,
            sha256: sha.to_string().repeat(64),
            target: Token {
                e_tag: Some("t".into()),
                mtime: None,
            },
            source: None,
        }
    }

    async fn write(
        store: &Arc<dyn ObjectStore>,
        path: &str,
        header: Header,
        keys: &[(&str, char)],
    ) {
        let mut w = StateWriter::create_at(store, path, header).await.unwrap();
        for (k, c) in keys {
            w.write(&entry(k, *c)).await.unwrap();
        }
        w.finish().await.unwrap();
    }

    async fn read(store: &Arc<dyn ObjectStore>) -> Vec<(String, char)> {
        let reader = open(store).await.unwrap().unwrap();
        reader
            .entries
            .map_ok(|e| (e.key, e.sha256.chars().next().unwrap()))
            .try_collect()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn newer_runs_win_and_included_runs_are_ignored() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let src = || Header::new(Some("src".into()), None);
        // Checkpoints alone (the first run was killed).
        let seg = |run, seq| Segment { run, seq }.path();
        write(&store, &seg(1, 0), src(), &[("a", '1'), ("c", '1')]).await;
        write(&store, &seg(1, 1), src(), &[("e", '1')]).await;
        assert_eq!(
            read(&store).await,
            vec![("a".into(), '1'), ("c".into(), '1'), ("e".into(), '1')]
        );
        // A state that includes run 1, then runs 2 and 3 (3 wins), and a
        // run of another source (ignored).
        let base = Header::new(Some("src".into()), Some(1));
        write(
            &store,
            crate::state::STATE_PATH,
            base,
            &[("a", '0'), ("b", '0'), ("d", '0')],
        )
        .await;
        write(&store, &seg(2, 0), src(), &[("b", '2'), ("d", '2')]).await;
        write(&store, &seg(3, 0), src(), &[("a", '3')]).await;
        write(&store, &seg(3, 1), src(), &[("d", '3'), ("f", '3')]).await;
        let other = Header::new(Some("other".into()), None);
        write(&store, &seg(4, 0), other, &[("a", '4')]).await;
        assert_eq!(
            read(&store).await,
            vec![
                ("a".into(), '3'),
                ("b".into(), '2'),
                ("d".into(), '3'),
                ("f".into(), '3'),
            ]
        );
        assert_eq!(open(&store).await.unwrap().unwrap().last_run, 4);

        // A new run numbers itself after everything seen, and removes what
        // the new state includes.
        let mut journal = Journal::start(&store, Some("src".into()), 0, 2)
            .await
            .unwrap();
        assert_eq!(journal.run, 5);
        assert!(!journal.append(&entry("a", '5')).await.unwrap());
        assert!(journal.append(&entry("b", '5')).await.unwrap());
        journal.checkpoint().await.unwrap();
        assert!(!journal.has_pending());
        assert_eq!(segments(&store).await.unwrap().len(), 7);
        journal.remove_included().await;
        assert!(segments(&store).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_corrupt_segment_is_ignored() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let src = Header::new(Some("src".into()), None);
        write(&store, crate::state::STATE_PATH, src, &[("a", '0')]).await;
        let seg = Segment { run: 1, seq: 0 }.path();
        store
            .put(&Path::from(seg), "not zstd".into())
            .await
            .unwrap();
        assert_eq!(read(&store).await, vec![("a".into(), '0')]);
    }
}
