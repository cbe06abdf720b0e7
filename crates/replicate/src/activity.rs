//! Activity markers: how artifact backups and prune's garbage collection
//! stay out of each other's way.
//!
//! ```text
//! activity/backup/<id>.json   while an artifact backup runs
//! activity/prune/<id>.json    while prune collects inventories and blobs
//! ```
//!
//! A backup may reuse what is already in the repository: an unchanged
//! object's entry is carried over from the previous inventory, and a blob
//! found by its name is not written again. Garbage collection deletes
//! blobs that no kept inventory names. Without coordination, a blob that
//! a running backup has just decided to reuse could be deleted before the
//! backup's inventory names it. The markers prevent that, the way two
//! threads use two flags (Dekker): each side **writes its own marker
//! first, then looks for the other side's**.
//!
//! * A backup writes its marker, then waits while a live prune marker
//!   exists; only then does it check that its previous inventory still
//!   exists, and start reading the repository.
//! * Prune writes its marker, then looks for live backup markers; if there
//!   is one (or another live prune), it leaves inventories and blobs alone
//!   this time (recovery points and snapshots are still pruned).
//!
//! With a store that is read-after-write consistent (S3 has been since
//! 2020; a filesystem is), at least one side sees the other: if prune saw
//! no backup marker, the backup's marker was written after prune looked,
//! so the backup looks after prune's marker exists, and waits for it.
//!
//! Markers are refreshed (rewritten) every quarter of their `stale_after`,
//! which each one records. One whose last write is older than its
//! `stale_after`, measured on the *store's* clock (the marker's own
//! modification time against a marker just written), belongs to a process
//! that died: it is ignored, and prune removes it. A process whose
//! refreshes lapsed for half of `stale_after` (suspended, cut off from the
//! store) may have been taken for dead: a backup then fails rather than
//! commit an inventory, and prune stops deleting.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::time::Instant;
use warmspare_store::{Repository, SnapshotId};

use crate::error::{Error, Result, Side};
use crate::inventory::modified;

/// How long a marker stays live without being refreshed, by default.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(10 * 60);
/// The marker format version.
const VERSION: u32 = 1;
/// Longest pause between two looks at a prune marker a backup waits for.
const MAX_POLL: Duration = Duration::from_secs(5);

/// What a marker says is going on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Activity {
    /// An artifact backup.
    Backup,
    /// Prune's garbage collection of inventories and blobs.
    Prune,
}

impl Activity {
    fn name(self) -> &'static str {
        match self {
            Activity::Backup => "backup",
            Activity::Prune => "prune",
        }
    }

    fn prefix(self) -> Path {
        Path::from("activity").join(self.name())
    }
}

/// The JSON of a marker.
#[derive(Debug, Serialize, Deserialize)]
struct Body {
    version: u32,
    activity: String,
    id: SnapshotId,
    #[serde(with = "crate::record::rfc3339")]
    started: OffsetDateTime,
    stale_after_seconds: u64,
}

/// This process's marker, refreshed in the background until released.
pub(crate) struct Marker {
    store: Arc<dyn ObjectStore>,
    path: Option<Path>,
    stale_after: Duration,
    written: Instant,
    /// The store's clock when the marker was first written.
    server_then: OffsetDateTime,
    last_beat: Arc<Mutex<Instant>>,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
}

impl Marker {
    /// Writes a marker for `activity` (named by an id for `now`) and starts
    /// refreshing it every quarter of `stale_after`.
    pub(crate) async fn acquire(
        repo: &Repository,
        activity: Activity,
        now: OffsetDateTime,
        stale_after: Duration,
    ) -> Result<Self> {
        let store = Arc::clone(repo.store().object_store());
        let id = SnapshotId::new(now);
        let path = activity.prefix().join(format!("{id}.json"));
        let body = serde_json::to_vec(&Body {
            version: VERSION,
            activity: activity.name().into(),
            id,
            started: now,
            stale_after_seconds: stale_after.as_secs().max(1),
        })
        .map_err(|e| Error::Task {
            reason: format!("cannot encode the activity marker: {e}"),
        })?;
        let body = bytes::Bytes::from(body);
        let written = Instant::now();
        store
            .put(&path, PutPayload::from(body.clone()))
            .await
            .map_err(|e| Error::object(Side::Repository, path.to_string(), "writing", e))?;
        let meta = store
            .head(&path)
            .await
            .map_err(|e| Error::object(Side::Repository, path.to_string(), "checking", e))?;
        let last_beat = Arc::new(Mutex::new(written));
        let heartbeat = {
            let (store, path, beat) = (Arc::clone(&store), path.clone(), Arc::clone(&last_beat));
            let every = (stale_after / 4).max(Duration::from_millis(50));
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let sent = Instant::now();
                    if store
                        .put(&path, PutPayload::from(body.clone()))
                        .await
                        .is_ok()
                    {
                        *beat.lock().unwrap_or_else(|p| p.into_inner()) = sent;
                    }
                }
            })
        };
        Ok(Self {
            store,
            path: Some(path),
            stale_after,
            written,
            server_then: modified(&meta),
            last_beat,
            heartbeat: Some(heartbeat),
        })
    }

    /// The store's clock now (as of the first write, plus the time since on
    /// this process's monotonic clock).
    pub(crate) fn server_now(&self) -> OffsetDateTime {
        self.server_then + self.written.elapsed()
    }

    /// The marker's path.
    pub(crate) fn path(&self) -> Option<&Path> {
        self.path.as_ref()
    }

    /// Whether refreshes have lapsed long enough (half of `stale_after`)
    /// that another process may have taken this one for dead.
    pub(crate) fn lapsed(&self) -> bool {
        let last = *self.last_beat.lock().unwrap_or_else(|p| p.into_inner());
        last.elapsed() >= self.stale_after / 2
    }

    /// Stops refreshing and deletes the marker (best effort: a marker left
    /// behind goes stale).
    pub(crate) async fn release(mut self) {
        // Stop the refreshes first, so that none lands after the delete.
        if let Some(heartbeat) = self.heartbeat.take() {
            heartbeat.abort();
            let _ = heartbeat.await;
        }
        if let Some(path) = self.path.take() {
            let _ = self.store.delete(&path).await;
        }
    }
}

impl Drop for Marker {
    fn drop(&mut self) {
        if let Some(heartbeat) = self.heartbeat.take() {
            heartbeat.abort();
        }
        // Dropped without `release` (an error, a cancelled future): delete
        // in the background when a runtime is there to do it.
        if let Some(path) = self.path.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let store = Arc::clone(&self.store);
            runtime.spawn(async move {
                let _ = store.delete(&path).await;
            });
        }
    }
}

/// Another process's marker, as seen in a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Seen {
    /// Its path in the repository.
    pub(crate) path: Path,
    /// Its last write, on the store's clock.
    pub(crate) modified: OffsetDateTime,
    /// How long it stays live without a refresh (as it declares).
    pub(crate) stale_after: Duration,
    /// Whether it is live at the time asked about.
    pub(crate) live: bool,
}

/// The markers of `activity` other than `except`, each judged live or
/// stale at `server_now` (the store's clock).
pub(crate) async fn markers(
    repo: &Repository,
    activity: Activity,
    server_now: OffsetDateTime,
    except: Option<&Path>,
) -> Result<Vec<Seen>> {
    let store = repo.store().object_store();
    let prefix = activity.prefix();
    let listed: Vec<_> = store
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(|source| Error::List {
            side: Side::Repository,
            source,
        })?;
    let mut out = Vec::new();
    for meta in listed {
        if Some(&meta.location) == except || !meta.location.as_ref().ends_with(".json") {
            continue;
        }
        // A marker that cannot be read counts with the default lifetime.
        let stale_after = match store.get(&meta.location).await {
            Ok(got) => got
                .bytes()
                .await
                .ok()
                .and_then(|b| serde_json::from_slice::<Body>(&b).ok())
                .map_or(DEFAULT_STALE_AFTER, |b| {
                    Duration::from_secs(b.stale_after_seconds)
                }),
            // Released meanwhile.
            Err(object_store::Error::NotFound { .. }) => continue,
            Err(e) => {
                return Err(Error::object(
                    Side::Repository,
                    meta.location.to_string(),
                    "reading",
                    e,
                ));
            }
        };
        let modified = modified(&meta);
        out.push(Seen {
            live: is_live(modified, stale_after, server_now),
            path: meta.location,
            modified,
            stale_after,
        });
    }
    Ok(out)
}

/// Whether a marker last written at `modified` that stays live for
/// `stale_after` is live at `now` (all on the store's clock).
pub(crate) fn is_live(
    modified: OffsetDateTime,
    stale_after: Duration,
    now: OffsetDateTime,
) -> bool {
    now - modified <= stale_after
}

/// Waits while a live prune marker exists (a backup calls this after
/// writing its own marker). `on_wait` is told about each marker waited for
/// (once per marker).
pub(crate) async fn wait_for_prune(
    repo: &Repository,
    marker: &Marker,
    on_wait: impl Fn(&Seen),
) -> Result<()> {
    let mut told: Vec<Path> = Vec::new();
    loop {
        let live: Vec<Seen> = markers(repo, Activity::Prune, marker.server_now(), None)
            .await?
            .into_iter()
            .filter(|m| m.live)
            .collect();
        let Some(shortest) = live.iter().map(|m| m.stale_after).min() else {
            return Ok(());
        };
        for m in &live {
            if !told.contains(&m.path) {
                on_wait(m);
                told.push(m.path.clone());
            }
        }
        let poll = (shortest / 4).clamp(Duration::from_millis(50), MAX_POLL);
        tokio::time::sleep(poll).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;
    use warmspare_store::{Store, StoreConfig};

    #[test]
    fn liveness_is_judged_on_the_stores_clock() {
        let t = datetime!(2026-11-22 10:00:00 UTC);
        let ten = Duration::from_secs(600);
        assert!(is_live(t, ten, t));
        assert!(is_live(t, ten, t + Duration::from_secs(600)));
        assert!(!is_live(t, ten, t + Duration::from_secs(601)));
        // A marker written "in the future" (a store clock step) is live.
        assert!(is_live(t + Duration::from_secs(60), ten, t));
    }

    #[tokio::test]
    async fn markers_are_written_refreshed_listed_and_released() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StoreConfig::new(format!(
            "file://{}",
            dir.path().display()
        )))
        .unwrap();
        let now = OffsetDateTime::now_utc();
        let repo = Repository::init(store, now).await.unwrap();
        let marker = Marker::acquire(&repo, Activity::Backup, now, Duration::from_secs(60))
            .await
            .unwrap();
        assert!(!marker.lapsed());
        let seen = markers(&repo, Activity::Backup, marker.server_now(), None)
            .await
            .unwrap();
        assert_eq!(seen.len(), 1);
        assert!(seen[0].live);
        assert_eq!(seen[0].stale_after, Duration::from_secs(60));
        assert_eq!(Some(&seen[0].path), marker.path());
        // Far in the future it would be stale.
        let later = marker.server_now() + Duration::from_secs(3600);
        let seen = markers(&repo, Activity::Backup, later, None).await.unwrap();
        assert!(!seen[0].live);
        // Other activities and the marker itself are not listed.
        assert!(
            markers(&repo, Activity::Prune, now, None)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            markers(&repo, Activity::Backup, now, marker.path())
                .await
                .unwrap()
                .is_empty()
        );
        // No prune: no wait.
        wait_for_prune(&repo, &marker, |_| panic!("no prune runs"))
            .await
            .unwrap();
        marker.release().await;
        assert!(
            markers(&repo, Activity::Backup, now, None)
                .await
                .unwrap()
                .is_empty()
        );
    }
}
