//! The WAL a physical snapshot needs to become consistent: every segment
//! from its start position to its stop position. Without these segments
//! the base backup is unusable, so restores check that they are there,
//! `verify` re-reads them and `verify --deep` replays them.

use std::path::Path;

use futures::{StreamExt as _, TryStreamExt as _};
use serde::Serialize;
use warmspare_store::object_store::ObjectStoreExt as _;
use warmspare_store::{Manifest, Repository, SnapshotId};

use super::PhysicalMeta;
use crate::error::{Error, Result};
use crate::wal::{FetchOutcome, Lsn, WalFileName, segment_name};

/// How many WAL objects are asked for at once.
const CONCURRENCY: usize = 8;

/// The segments a snapshot needs, in order. Each entry lists the names the
/// segment may have, newest timeline first: a snapshot taken while its
/// source was promoted spans two timelines (usually one, so one name).
pub(crate) fn candidates(meta: &PhysicalMeta) -> Vec<Vec<String>> {
    let size = meta.wal_segment_size.max(1);
    let first = meta.start_lsn.0 / size;
    let last = meta.stop_lsn.0.saturating_sub(1).max(meta.start_lsn.0) / size;
    let low = meta.timeline.min(meta.stop_timeline);
    let high = meta.timeline.max(meta.stop_timeline);
    (first..=last)
        .map(|segno| {
            (low..=high)
                .rev()
                .map(|timeline| segment_name(timeline, Lsn(segno * size), size))
                .collect()
        })
        .collect()
}

fn missing(id: &SnapshotId, names: &[String]) -> Error {
    let object = names
        .first()
        .and_then(|n| WalFileName::parse(n).ok())
        .map(|n| n.object_path().to_string())
        .unwrap_or_default();
    Error::WalMissing {
        id: id.clone(),
        segment: names.join(" or "),
        object,
    }
}

/// Checks (one `HEAD` per segment) that every segment snapshot `id` needs
/// is in the repository; returns how many there are.
///
/// # Errors
///
/// [`Error::WalMissing`] naming the first missing segment, or
/// [`Error::Store`] when the repository cannot be asked.
pub(crate) async fn check_present(
    repo: &Repository,
    id: &SnapshotId,
    meta: &PhysicalMeta,
) -> Result<usize> {
    let store = repo.store().object_store();
    let groups = candidates(meta);
    let count = groups.len();
    futures::stream::iter(groups)
        .map(|names| async move {
            for name in &names {
                let object = WalFileName::parse(name)?.object_path();
                match store.head(&object).await {
                    Ok(_) => return Ok(()),
                    Err(warmspare_store::object_store::Error::NotFound { .. }) => {}
                    Err(source) => {
                        return Err(Error::Store(warmspare_store::Error::Store {
                            path: object.to_string(),
                            source,
                        }));
                    }
                }
            }
            Err(missing(id, &names))
        })
        .buffered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(count)
}

/// What [`verify_wal`] found.
#[derive(Debug, Default, Serialize)]
pub struct WalVerifyReport {
    /// WAL objects read whose digests matched.
    pub segments: usize,
    /// Their content bytes.
    pub bytes: u64,
    /// One error per segment that is missing ([`Error::WalMissing`]) or
    /// damaged ([`Error::is_corruption`]); each names the object.
    #[serde(skip)]
    pub failures: Vec<Error>,
}

impl WalVerifyReport {
    /// Whether every segment was there and sound.
    pub fn is_ok(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Re-reads every WAL segment physical snapshot `manifest` needs to become
/// consistent (from its start to its stop position) and checks its
/// digests, without writing it anywhere: what `verify` adds to the
/// snapshot's own objects. Later WAL (for a point-in-time recovery past
/// the snapshot) is the archive's, not the snapshot's, and is not read.
///
/// # Errors
///
/// A missing or damaged segment is a failure in the report; an error is
/// returned for the rest: [`Error::WrongKind`] / [`Error::BadMeta`] for a
/// manifest that is not a physical snapshot's, [`Error::Store`] for a
/// repository that cannot be read.
pub async fn verify_wal(repo: &Repository, manifest: &Manifest) -> Result<WalVerifyReport> {
    if manifest.kind != warmspare_store::SnapshotKind::Physical {
        return Err(Error::WrongKind {
            id: manifest.id.clone(),
            kind: manifest.kind,
            needed: "only physical snapshots need wal",
        });
    }
    let meta = PhysicalMeta::from_manifest(manifest)?;
    let store = repo.store();
    let results: Vec<std::result::Result<u64, Error>> = futures::stream::iter(candidates(&meta))
        .map(|names| async move {
            for name in &names {
                let object = WalFileName::parse(name)?.object_path();
                let mut sink = tokio::io::sink();
                match store
                    .codec()
                    .get_sealed(store.object_store(), &object, &mut sink)
                    .await
                {
                    Ok(info) => return Ok(Ok(info.size)),
                    Err(warmspare_store::Error::NotFound { .. }) => {}
                    Err(e) => {
                        let e = Error::from(e);
                        return if e.is_untrustworthy() {
                            Ok(Err(e))
                        } else {
                            Err(e)
                        };
                    }
                }
            }
            Ok(Err(missing(&manifest.id, &names)))
        })
        .buffered(CONCURRENCY)
        .try_collect()
        .await?;
    let mut report = WalVerifyReport::default();
    for result in results {
        match result {
            Ok(size) => {
                report.segments += 1;
                report.bytes += size;
            }
            Err(e) => report.failures.push(e),
        }
    }
    Ok(report)
}

/// Fetches (verified) every segment snapshot `id` needs into `pg_wal`,
/// every timeline's copy that exists, and the stop timeline's history
/// file when there is one; returns the number of files and their bytes.
/// `bytes` is told the running total.
pub(crate) async fn fetch_all(
    repo: &Repository,
    id: &SnapshotId,
    meta: &PhysicalMeta,
    pg_wal: &Path,
    bytes: &(dyn Fn(u64) + Send + Sync),
) -> Result<(usize, u64)> {
    let (mut files, mut total) = (0usize, 0u64);
    if meta.stop_timeline > 1 {
        let name = format!("{:08X}.history", meta.stop_timeline);
        if let FetchOutcome::Fetched { size, .. } =
            crate::wal::fetch(repo, &name, &pg_wal.join(&name)).await?
        {
            files += 1;
            total += size;
        }
    }
    for names in candidates(meta) {
        let mut found = false;
        for name in &names {
            if let FetchOutcome::Fetched { size, .. } =
                crate::wal::fetch(repo, name, &pg_wal.join(name)).await?
            {
                found = true;
                files += 1;
                total += size;
                bytes(total);
            }
        }
        if !found {
            return Err(missing(id, &names));
        }
    }
    Ok((files, total))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::physical::{BASE_FILE, Checkpoint, PHYSICAL_FORMAT};

    fn meta(timeline: u32, stop_timeline: u32, start: &str, stop: &str) -> PhysicalMeta {
        PhysicalMeta {
            format: PHYSICAL_FORMAT.into(),
            source: "postgres@db:5432/postgres".into(),
            system_identifier: None,
            server_version: "15.4".into(),
            server_version_num: 150004,
            timeline,
            stop_timeline,
            start_lsn: start.parse().unwrap(),
            stop_lsn: stop.parse().unwrap(),
            start_wal: segment_name(timeline, start.parse().unwrap(), 16 << 20),
            stop_wal: segment_name(stop_timeline, stop.parse().unwrap(), 16 << 20),
            wal_segment_size: 16 << 20,
            backup_label: String::new(),
            base_file: BASE_FILE.into(),
            pg_basebackup: String::new(),
            checkpoint: Checkpoint::Fast,
        }
    }

    #[test]
    fn the_segments_from_start_to_stop() {
        let one = candidates(&meta(1, 1, "0/2000028", "0/2000100"));
        assert_eq!(one, [["000000010000000000000002"]]);
        // A stop position at a segment boundary needs nothing of the next.
        let two = candidates(&meta(1, 1, "0/2000028", "0/4000000"));
        assert_eq!(
            two,
            [["000000010000000000000002"], ["000000010000000000000003"]]
        );
        // Across the 4 GiB boundary of the file names.
        let wrap = candidates(&meta(3, 3, "0/FF000028", "1/00000100"));
        assert_eq!(
            wrap,
            [["0000000300000000000000FF"], ["000000030000000100000000"]]
        );
        // A promotion during the backup: either timeline's copy, newest first.
        let promoted = candidates(&meta(1, 2, "0/2000028", "0/2000100"));
        assert_eq!(
            promoted,
            [["000000020000000000000002", "000000010000000000000002"]]
        );
    }
}
