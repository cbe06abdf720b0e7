//! Which WAL retention may delete: nothing that a kept physical snapshot
//! needs.
//!
//! Replaying a physical snapshot reads WAL from its start segment onwards,
//! on its timeline and on the timelines that branched off later; WAL
//! positions grow across timelines (a new timeline starts where its parent
//! branched). So once the oldest kept physical snapshot is known, every
//! segment before its start position, on any timeline, is dead: no kept
//! snapshot can replay it. Timeline history files are tiny and always kept
//! (recovery reads them to follow timeline switches).
//!
//! Without any kept physical snapshot nothing is deleted: WAL pushed before
//! the first physical snapshot, or read by a standby fed from the
//! repository, is not retention's to judge.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use warmspare_store::Repository;
use warmspare_store::layout;

use super::{WalFileKind, WalFileName};
use crate::error::{Error, Result};

/// The start segment of the oldest of the kept physical snapshots' start
/// segments (`None` when there are none): WAL from its position on is kept.
pub fn oldest_needed<'a>(
    starts: impl IntoIterator<Item = &'a WalFileName>,
) -> Option<&'a WalFileName> {
    starts
        .into_iter()
        .filter(|name| name.position().is_some())
        .min_by(|a, b| a.position().cmp(&b.position()))
}

/// Whether retention may delete `file` when `oldest` is the oldest start
/// segment any kept physical snapshot needs: segments, partial segments and
/// backup history files positioned before it, on any timeline. Never a
/// timeline history file.
pub fn deletable(file: &WalFileName, oldest: &WalFileName) -> bool {
    match (file.kind(), file.position(), oldest.position()) {
        (WalFileKind::History, _, _) => false,
        (_, Some(position), Some(oldest)) => position < oldest,
        _ => false,
    }
}

/// What retention did to the WAL archive (part of [`crate::PruneReport`]).
#[derive(Debug, Default, Serialize)]
pub struct WalPruneReport {
    /// The start segment of the oldest kept physical snapshot: WAL from its
    /// position on is kept. `None` when nothing was pruned.
    pub keep_from: Option<String>,
    /// Why the WAL archive was left alone, when it was.
    pub skipped: Option<String>,
    /// WAL objects that may go (deleted unless this was a dry run).
    pub deletable: u64,
    /// WAL objects deleted.
    pub deleted: u64,
    /// Deletions that failed; the next prune retries them.
    #[serde(skip)]
    pub failures: Vec<Error>,
}

/// Deletes (or with `dry_run`, counts) the WAL objects before `oldest`
/// ([`deletable`]). Objects under `wal/` that are not WAL files are left
/// alone. Streams the listing: memory does not grow with the archive.
pub async fn prune_wal(
    repo: &Repository,
    oldest: &WalFileName,
    dry_run: bool,
) -> Result<WalPruneReport> {
    let store = repo.store().object_store();
    let prefix = layout::wal();
    let mut report = WalPruneReport {
        keep_from: Some(oldest.to_string()),
        ..WalPruneReport::default()
    };
    let listing_error = |e| {
        Error::Store(warmspare_store::Error::Store {
            path: prefix.to_string(),
            source: e,
        })
    };
    let boundary = oldest.clone();
    let doomed = store
        .list(Some(&prefix))
        .try_filter_map(move |meta| {
            let dead = WalFileName::from_object_path(&meta.location)
                .is_some_and(|name| deletable(&name, &boundary));
            std::future::ready(Ok(dead.then_some(meta.location)))
        })
        .boxed();
    if dry_run {
        report.deletable = doomed
            .try_fold(0u64, |n, _| std::future::ready(Ok(n + 1)))
            .await
            .map_err(listing_error)?;
        return Ok(report);
    }
    // Count what goes in while the listing streams into the deletions.
    let counted = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&counted);
    let counting = doomed.inspect_ok(move |_| {
        counter.fetch_add(1, Ordering::Relaxed);
    });
    let mut results = store.delete_stream(counting.boxed());
    while let Some(result) = results.next().await {
        match result {
            Ok(_) => report.deleted += 1,
            Err(warmspare_store::object_store::Error::NotFound { .. }) => {}
            Err(e) => report.failures.push(listing_error(e)),
        }
    }
    drop(results);
    report.deletable = counted.load(Ordering::Relaxed);
    Ok(report)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn segment(timeline: u32, position: u64) -> WalFileName {
        WalFileName::parse(&format!("{timeline:08X}{position:016X}")).unwrap()
    }

    /// Any WAL file of the archive: a segment, a partial segment, a backup
    /// history file or a timeline history file.
    fn file() -> impl Strategy<Value = WalFileName> {
        (1u32..5, 0u64..40, 0u8..4).prop_map(|(timeline, position, kind)| {
            let base = format!("{timeline:08X}{:08X}{:08X}", position / 8, position % 8);
            let name = match kind {
                0 => base,
                1 => format!("{base}.partial"),
                2 => format!("{base}.00000028.backup"),
                _ => format!("{timeline:08X}.history"),
            };
            WalFileName::parse(&name).unwrap()
        })
    }

    #[test]
    fn examples() {
        let oldest = segment(2, 0x10);
        assert!(deletable(&segment(1, 0x0F), &oldest));
        assert!(deletable(&segment(3, 0x0F), &oldest));
        assert!(!deletable(&segment(1, 0x10), &oldest));
        let history = WalFileName::parse("00000001.history").unwrap();
        assert!(!deletable(&history, &oldest));
        let label = WalFileName::parse("000000020000000000000010.00000028.backup").unwrap();
        assert!(!deletable(&label, &oldest), "the oldest snapshot's own");
        let starts = [segment(1, 9), segment(2, 3), segment(2, 12)];
        assert_eq!(oldest_needed(&starts), Some(&starts[1]));
        assert_eq!(oldest_needed(&[]), None);
    }

    proptest! {
        #[test]
        fn never_deletes_what_a_kept_snapshot_replays(
            starts in proptest::collection::vec((1u32..5, 0u64..40), 1..5),
            archive in proptest::collection::vec(file(), 0..60),
        ) {
            let starts: Vec<WalFileName> = starts
                .into_iter()
                .map(|(t, p)| segment(t, p / 8 * 0x1_0000_0000 + p % 8))
                .collect();
            let oldest = oldest_needed(&starts).unwrap();
            for file in &archive {
                let gone = deletable(file, oldest);
                // A kept snapshot replays every segment from its start on,
                // on every timeline; and history files always stay.
                for start in &starts {
                    if file.position() >= start.position() {
                        prop_assert!(!gone, "{file} needed by {start}");
                    }
                }
                if file.kind() == WalFileKind::History {
                    prop_assert!(!gone);
                }
                // Everything older than every kept snapshot goes.
                if file.kind() != WalFileKind::History
                    && starts.iter().all(|s| file.position() < s.position())
                {
                    prop_assert!(gone, "{file} is older than {oldest}");
                }
            }
        }
    }
}
