//! Artifact backup: an inventory of a store plus the blobs it names.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use futures::FutureExt;
use futures::StreamExt;
use futures::future::BoxFuture;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutOptions, PutPayload};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use warmspare_store::{EncryptionKey, Repository, SnapshotId, layout};

use crate::activity::{self, Activity, Marker};
use crate::blob::{self, BlobCodec, Found};
use crate::error::{Error, Result, Side};
use crate::inventory::{
    INVENTORY_VERSION, Inventory, InventoryEntry, modified, version_token, write_inventory,
};
use crate::listing::sorted_listing;
use crate::options::SyncOptions;
use crate::sync::{Ctx, SyncEvent, retrying};
use crate::transfer::{Attempts, CopyRequest, Task, open_body};

/// What [`backup_artifacts`] did.
#[derive(Debug)]
#[non_exhaustive]
pub struct ArtifactBackup {
    /// The inventory written.
    pub inventory: Inventory,
    /// Objects unchanged since the previous inventory: not read.
    pub unchanged: u64,
    /// Objects read whose blob was already in the repository.
    pub deduplicated: u64,
    /// Blobs written.
    pub stored: u64,
    /// Bytes of the blobs written.
    pub bytes: u64,
    /// Objects that disappeared from the source during the backup (not in
    /// the inventory).
    pub vanished: u64,
    /// Attempts that failed and were retried.
    pub retries: u64,
    /// Wall time.
    pub seconds: f64,
}

enum Done {
    Entry {
        entry: InventoryEntry,
        stored: Option<u64>,
        reused: bool,
    },
    Vanished,
}

/// Backs up the artifacts of `source` into `repo`: every object's content
/// is stored once under `blobs/sha256/<2>/<64>` (skipped when that blob
/// exists), and an inventory naming them is written to
/// `inventories/<id>.json.zst` (create-if-absent) with the first id of
/// `now`'s millisecond that is not in use (16 per millisecond).
///
/// With an encryption key configured, blobs are encrypted under it (their
/// names stay the SHA-256 of the plaintext, so deduplication still works;
/// a blob found in plaintext or under another key is rewritten encrypted)
/// and the inventory too (through the store codec). Encryption configured
/// without its key loaded refuses the backup.
///
/// While it runs, the backup keeps an activity marker in the repository
/// (`activity/backup/<id>.json`, see `activity.rs`): it waits for a
/// running prune to finish before it reads the repository (reported as
/// [`SyncEvent::WaitingForPrune`]), and prune leaves inventories and
/// blobs alone while the marker is live. The
/// `previous` inventory is used only if it still exists by then (a prune
/// may have removed it, and the blobs only it named, since it was read).
///
/// An object with the same size and version token as in `previous` is not
/// read again: its entry is carried over. Objects are read verified (size,
/// unchanged version after the read; large objects are hashed first and
/// their upload committed only when the second read has the same digest).
///
/// Uses `concurrency`, `bwlimit`, `retries`, `part_size`, `buffer_memory`,
/// `list_order` and `source_id` of `options`. Any object that still fails
/// after its retries fails the backup: an inventory is complete or absent.
pub async fn backup_artifacts(
    source: &Arc<dyn ObjectStore>,
    repo: &Repository,
    previous: Option<&Inventory>,
    now: OffsetDateTime,
    options: &SyncOptions,
    progress: impl Fn(&SyncEvent<'_>) + Send + Sync + 'static,
) -> Result<ArtifactBackup> {
    options.validate()?;
    let key = BlobCodec::of(repo).write_key()?.cloned();
    let started = tokio::time::Instant::now();
    let marker =
        Marker::acquire(repo, Activity::Backup, now, activity::DEFAULT_STALE_AFTER).await?;
    activity::wait_for_prune(repo, &marker, |m| {
        tracing::info!(marker = %m.path, "waiting for a prune to finish");
        progress(&SyncEvent::WaitingForPrune {
            marker: m.path.as_ref(),
            stale_after: m.stale_after,
        });
    })
    .await?;
    let previous = match previous {
        Some(p) if inventory_exists(repo, &p.id).await? => Some(Arc::new(p.clone())),
        _ => None,
    };
    let ctx = Ctx::new(
        source,
        repo.store().object_store(),
        options,
        Arc::new(progress),
        false,
    );
    let key = key.map(Arc::new);
    let window = options.concurrency.saturating_mul(16).max(64);
    let listing = sorted_listing(Arc::clone(source), Side::Source, options.list_order);
    let scheduler = Arc::clone(&ctx);
    let mut done = listing
        .map(move |item| schedule(&scheduler, previous.clone(), key.clone(), item))
        .buffered(window);

    let mut entries = Vec::new();
    let (mut unchanged, mut deduplicated, mut stored, mut bytes, mut vanished) = (0, 0, 0, 0, 0);
    while let Some(result) = done.next().await {
        match result? {
            Done::Vanished => vanished += 1,
            Done::Entry {
                entry,
                stored: written,
                reused,
            } => {
                match (reused, written) {
                    (true, _) => {
                        unchanged += 1;
                        (ctx.progress)(&SyncEvent::Skipped { key: &entry.key });
                    }
                    (false, Some(n)) => {
                        stored += 1;
                        bytes += n;
                        (ctx.progress)(&SyncEvent::Copied {
                            key: &entry.key,
                            size: n,
                        });
                    }
                    (false, None) => {
                        deduplicated += 1;
                        (ctx.progress)(&SyncEvent::Skipped { key: &entry.key });
                    }
                }
                entries.push(entry);
            }
        }
    }
    drop(done);

    if marker.lapsed() {
        return Err(Error::Task {
            reason: "the backup's activity marker could not be kept fresh, so a prune may have \
                     removed blobs this backup reuses; nothing was recorded, run it again"
                .into(),
        });
    }
    let mut last = None;
    for id in ids_of_the_millisecond(now) {
        // An id in use is skipped before writing: an inventory with the
        // same content under it (an unchanged store, backed up twice in the
        // same millisecond) would count as a retried write of that one, and
        // the two backups would share one inventory.
        if inventory_exists(repo, &id).await? {
            last = Some(id);
            continue;
        }
        let inventory = Inventory {
            version: INVENTORY_VERSION,
            id,
            taken: now,
            source: options.source_id.clone(),
            entries: std::mem::take(&mut entries),
        };
        match write_inventory(repo, &inventory).await {
            Ok(()) => {
                marker.release().await;
                return Ok(ArtifactBackup {
                    inventory,
                    unchanged,
                    deduplicated,
                    stored,
                    bytes,
                    vanished,
                    retries: ctx.retries.load(Ordering::Relaxed),
                    seconds: started.elapsed().as_secs_f64(),
                });
            }
            // Taken meanwhile by another backup: the next id.
            Err(Error::Repository(warmspare_store::Error::AlreadyExists { .. })) => {
                entries = inventory.entries;
                last = Some(inventory.id);
            }
            Err(e) => return Err(e),
        }
    }
    Err(Error::Repository(warmspare_store::Error::AlreadyExists {
        path: last
            .map(|id| layout::inventory(&id).to_string())
            .unwrap_or_default(),
    }))
}

/// The 16 ids of `now`'s millisecond (they differ in their last hex
/// digit, see [`SnapshotId::new`]), starting at a random one: a backup
/// takes the first that is free.
fn ids_of_the_millisecond(now: OffsetDateTime) -> impl Iterator<Item = SnapshotId> {
    let drawn = SnapshotId::new(now);
    let suffix = drawn
        .as_str()
        .get(17..)
        .and_then(|hex| u16::from_str_radix(hex, 16).ok())
        .unwrap_or(0);
    let (millisecond, nibble) = (suffix & !0xf, suffix & 0xf);
    (0..16).map(move |k| SnapshotId::with_suffix(now, millisecond | ((nibble + k) & 0xf)))
}

/// Whether inventory `id` is (still) in the repository.
async fn inventory_exists(repo: &Repository, id: &SnapshotId) -> Result<bool> {
    let path = layout::inventory(id);
    match repo.store().object_store().head(&path).await {
        Ok(_) => Ok(true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(Error::object(
            Side::Repository,
            path.to_string(),
            "checking",
            e,
        )),
    }
}

fn schedule(
    ctx: &Arc<Ctx>,
    previous: Option<Arc<Inventory>>,
    key: Option<Arc<EncryptionKey>>,
    item: Result<ObjectMeta>,
) -> BoxFuture<'static, Result<Done>> {
    let meta = match item {
        Ok(meta) => meta,
        Err(e) => return futures::future::ready(Err(e)).boxed(),
    };
    (ctx.progress)(&SyncEvent::Listed {
        key: meta.location.as_ref(),
        size: meta.size,
    });
    if let Some(old) = previous.as_ref().and_then(|p| p.unchanged(&meta)) {
        let entry = InventoryEntry {
            last_modified: modified(&meta),
            ..old.clone()
        };
        return futures::future::ready(Ok(Done::Entry {
            entry,
            stored: None,
            reused: true,
        }))
        .boxed();
    }
    let ctx = Arc::clone(ctx);
    let task = Task::spawn(async move {
        let Ok(_worker) = ctx.workers.acquire().await else {
            return Err(Error::Task {
                reason: "the worker pool was closed".into(),
            });
        };
        let name = meta.location.to_string();
        let key = key.as_deref();
        match retrying(&ctx, &name, || store_one(&ctx, &meta, key)).await {
            Err(e) if e.is_not_found() => Ok(Done::Vanished),
            other => other,
        }
    });
    async move { task.await? }.boxed()
}

/// Stores one object's blob (unless present) and returns its entry.
async fn store_one(
    ctx: &Ctx,
    listed: &ObjectMeta,
    encryption: Option<&EncryptionKey>,
) -> Result<Done> {
    let key = &listed.location;
    let (sha256, read, stored) = if listed.size < ctx.options.part_size as u64 {
        small(ctx, key, encryption).await?
    } else {
        large(ctx, key, encryption).await?
    };
    let token_meta = if crate::state::same_version(listed, &read) {
        listed
    } else {
        &read
    };
    Ok(Done::Entry {
        entry: InventoryEntry {
            key: key.to_string(),
            size: read.size,
            sha256,
            last_modified: modified(token_meta),
            version: version_token(token_meta),
        },
        stored,
        reused: false,
    })
}

/// Small objects: read into memory (within the buffer budget), hash, then
/// write the blob (encrypted with a key) create-if-absent.
async fn small(
    ctx: &Ctx,
    key: &Path,
    encryption: Option<&EncryptionKey>,
) -> Result<(String, ObjectMeta, Option<u64>)> {
    let mut body = open_body(&ctx.source, key, Side::Source).await?;
    let size = body.meta.size;
    let len = usize::try_from(size).unwrap_or(usize::MAX);
    let _permit = ctx.mover.budget.reserve(len).await?;
    let mut buf = Vec::with_capacity(len);
    while let Some(chunk) = body.chunks.next().await {
        let chunk = chunk?;
        if (buf.len() + chunk.len()) as u64 > size {
            buf.extend_from_slice(&chunk);
            break;
        }
        if let Some(limiter) = &ctx.mover.limiter {
            limiter.acquire(chunk.len() as u64).await;
        }
        buf.extend_from_slice(&chunk);
    }
    if buf.len() as u64 != size {
        return Err(Error::SizeMismatch {
            side: Side::Source,
            key: key.to_string(),
            expected: size,
            read: buf.len() as u64,
        });
    }
    match ctx.source.head(key).await {
        Ok(now) if crate::state::same_version(&body.meta, &now) => {}
        Ok(_) | Err(object_store::Error::NotFound { .. }) => {
            return Err(Error::Changed {
                side: Side::Source,
                key: key.to_string(),
            });
        }
        Err(e) => return Err(Error::object(Side::Source, key.to_string(), "checking", e)),
    }
    let sha256 = hex::encode(Sha256::digest(&buf));
    let blob = layout::blob(&sha256)?;
    let found = blob::probe(&ctx.target, &blob, encryption).await?;
    if found == Found::Usable {
        return Ok((sha256, body.meta, None));
    }
    let payload = match encryption {
        Some(k) => blob::encrypt(k, &buf).await?,
        None => buf,
    };
    let options = PutOptions {
        mode: blob::put_mode(found),
        ..PutOptions::default()
    };
    match ctx
        .target
        .put_opts(&blob, PutPayload::from(Bytes::from(payload)), options)
        .await
    {
        Ok(_) => Ok((sha256, body.meta, Some(size))),
        Err(object_store::Error::AlreadyExists { .. }) => Ok((sha256, body.meta, None)),
        Err(e) => Err(Error::object(
            Side::Repository,
            blob.to_string(),
            "writing",
            e,
        )),
    }
}

/// Large objects: hash first (the blob's name), then, if the blob is
/// missing, copy (encrypting with a key) with the upload committed only if
/// the bytes match.
async fn large(
    ctx: &Ctx,
    key: &Path,
    encryption: Option<&EncryptionKey>,
) -> Result<(String, ObjectMeta, Option<u64>)> {
    let hashed = ctx.mover.hash(&ctx.source, key, Side::Source).await?;
    let blob = layout::blob(&hashed.sha256)?;
    let found = blob::probe(&ctx.target, &blob, encryption).await?;
    if found == Found::Usable {
        return Ok((hashed.sha256, hashed.meta, None));
    }
    if let Some(encryption) = encryption {
        let stored = blob::store_encrypted(
            &ctx.mover,
            &ctx.source,
            key,
            &ctx.target,
            &blob,
            &hashed.sha256,
            encryption,
            blob::put_mode(found),
        )
        .await?;
        if !crate::state::same_version(&hashed.meta, &stored.source) {
            return Err(Error::Changed {
                side: Side::Source,
                key: key.to_string(),
            });
        }
        return Ok((hashed.sha256, stored.source, Some(stored.size)));
    }
    let request = CopyRequest {
        source: &ctx.source,
        source_side: Side::Source,
        key,
        target: &ctx.target,
        target_side: Side::Repository,
        target_key: &blob,
        expect_sha256: Some(&hashed.sha256),
        check_unchanged: true,
        verify: crate::SourceVerify::Standard,
        create: true,
    };
    let copied = ctx.mover.copy(&request, &Attempts::default()).await?;
    if !crate::state::same_version(&hashed.meta, &copied.source) {
        return Err(Error::Changed {
            side: Side::Source,
            key: key.to_string(),
        });
    }
    Ok((copied.sha256, copied.source, Some(copied.size)))
}
