//! Artifact restore: make a store hold exactly one inventory's state.
//!
//! Into a `file://` directory ([`Endpoint::local`]) the target is listed,
//! hashed and written directly, as the mirror does (module `local`); blobs
//! are read from the repository through its store either way.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::FutureExt;
use futures::future::BoxFuture;
use futures::stream::{self, StreamExt};
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use warmspare_store::{EncryptionKey, Repository, SnapshotId, layout};

use crate::blob::{self, BlobCodec};
use crate::endpoint::Endpoint;
use crate::error::{Error, Result, Side};
use crate::inventory::{InventoryEntry, read_inventory};
use crate::listing::is_reserved;
use crate::merge::{self, Pair};
use crate::options::SyncOptions;
use crate::state::{StateEntry, Token};
use crate::sync::{Ctx, Outcome, Scheduled, SyncEvent, SyncReport, drive, open_state, retrying};
use crate::transfer::{Attempts, CopyRequest, Task};

enum Work {
    Restore {
        entry: InventoryEntry,
        keep: Option<StateEntry>,
    },
    Verify {
        entry: InventoryEntry,
        target: ObjectMeta,
    },
}

/// Writes the state of inventory `inventory_id` into `target`: objects
/// missing or different there are written from their blobs (each verified
/// against its SHA-256 while streaming, the upload committed only when it
/// matches); objects that already match are left alone (known from the
/// target's sync state, or by hashing them); objects the inventory does not
/// name are reported as `extra` and deleted only with `options.delete`,
/// within the same guards as [`crate::sync()`].
///
/// Uses the same options as the mirror (`source_id`, `verify`, `rehash`
/// aside) and reports the same way: `copied` counts restored objects. The
/// target's sync state is kept up to date, so a mirror into the same store
/// afterwards does not re-read what the restore wrote.
///
/// In an encrypted repository the inventory and the blobs are decrypted
/// with the repository's key; without it, or with another, reading the
/// inventory fails first (`warmspare_store::Error::KeyMissing`,
/// `WrongKey`), before anything is written.
pub async fn restore_artifacts(
    repo: &Repository,
    inventory_id: &SnapshotId,
    target: &Arc<dyn ObjectStore>,
    options: &SyncOptions,
    progress: impl Fn(&SyncEvent<'_>) + Send + Sync + 'static,
) -> Result<SyncReport> {
    let target = Endpoint::new(Arc::clone(target));
    restore_artifacts_to(repo, inventory_id, &target, options, progress).await
}

/// [`restore_artifacts`] into an [`Endpoint`]: with [`Endpoint::local`]
/// (or [`Endpoint::for_store`] of a `file://` store) the target directory
/// is listed, hashed and written directly, as the mirror does: no `fsync`
/// per object, the directory made durable once before the state record
/// names what was restored. Same semantics otherwise: missing and changed
/// objects are written, matching ones left alone, extras reported and
/// deleted only with `options.delete`. Blobs of an encrypted repository
/// are still written through the target's `ObjectStore`.
pub async fn restore_artifacts_to(
    repo: &Repository,
    inventory_id: &SnapshotId,
    target_endpoint: &Endpoint,
    options: &SyncOptions,
    progress: impl Fn(&SyncEvent<'_>) + Send + Sync + 'static,
) -> Result<SyncReport> {
    let target = target_endpoint.store();
    options.validate()?;
    let started = tokio::time::Instant::now();
    let inventory = read_inventory(repo, inventory_id).await?;
    if let Some(bad) = inventory.entries.iter().find(|e| is_reserved(&e.key)) {
        return Err(Error::InvalidKey {
            key: bad.key.clone(),
            reason: "keys under .warmspare/ are reserved".into(),
        });
    }
    let (recorded_source, records) = match open_state(target, options).await? {
        Some(reader) => (reader.source, reader.entries),
        None => (None, stream::empty().boxed()),
    };
    let mut ctx = Ctx::new(
        repo.store().object_store(),
        target,
        options,
        Arc::new(progress),
        false,
    );
    if let Some(dir) = target_endpoint.dir() {
        let Some(fresh) = Arc::get_mut(&mut ctx) else {
            return Err(Error::Task {
                reason: "the restore's context was shared before it was set up".into(),
            });
        };
        fresh.target_dir = Some(dir.clone());
    }
    let wanted = stream::iter(inventory.entries.into_iter().map(Ok)).boxed();
    let items = merge::attach(
        merge::merge_sorted(
            wanted,
            target_endpoint.listing(Side::Target, options.list_order),
        ),
        records,
        Box::new(|e| tracing::warn!(error = %e, "ignoring the rest of the sync state")),
    );
    let scheduler = Arc::clone(&ctx);
    let key = BlobCodec::of(repo).read_key().cloned().map(Arc::new);
    let outcomes = items
        .map(move |item| schedule(&scheduler, key.clone(), item))
        .boxed();
    // The state keeps naming the mirror's source: entries the restore did
    // not touch keep their source tokens.
    let mut report = drive(&ctx, outcomes, recorded_source).await?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

fn schedule(
    ctx: &Arc<Ctx>,
    key: Option<Arc<EncryptionKey>>,
    item: Result<(Pair<InventoryEntry, ObjectMeta>, Option<StateEntry>)>,
) -> BoxFuture<'static, Scheduled> {
    let ready = |a, b, o| futures::future::ready((a, b, o)).boxed();
    let (pair, record) = match item {
        Ok(item) => item,
        Err(e) => return ready(false, false, Outcome::Fatal(e)),
    };
    let (work, in_target) = match pair {
        Pair::Right(target) => return ready(false, true, Outcome::Extra(target.location)),
        Pair::Left(entry) => (Work::Restore { entry, keep: None }, false),
        Pair::Both(entry, target) => {
            let known = record.filter(|r| !ctx.options.rehash && r.describes_target(&target));
            match known {
                _ if entry.size != target.size => (Work::Restore { entry, keep: known }, true),
                Some(r) if r.sha256 == entry.sha256 => {
                    return ready(
                        true,
                        true,
                        Outcome::Skipped {
                            key: entry.key,
                            entry: r,
                        },
                    );
                }
                Some(r) => (
                    Work::Restore {
                        entry,
                        keep: Some(r),
                    },
                    true,
                ),
                None => (Work::Verify { entry, target }, true),
            }
        }
    };
    let ctx = Arc::clone(ctx);
    let task = Task::spawn(async move { work_on(&ctx, key.as_deref(), work).await });
    async move { (true, in_target, task.await.unwrap_or_else(Outcome::Fatal)) }.boxed()
}

async fn work_on(ctx: &Ctx, key: Option<&EncryptionKey>, work: Work) -> Outcome {
    let Ok(_worker) = ctx.workers.acquire().await else {
        return Outcome::Fatal(Error::Task {
            reason: "the worker pool was closed".into(),
        });
    };
    let (entry, keep) = match work {
        Work::Restore { entry, keep } => (entry, keep),
        Work::Verify { entry, target } => {
            let hashed = retrying(ctx, &entry.key, || ctx.hash_object(Side::Target, &target)).await;
            ctx.hashed.fetch_add(1, Ordering::Relaxed);
            match hashed {
                Ok(h) if h.sha256 == entry.sha256 => {
                    ctx.bytes_read.fetch_add(h.meta.size, Ordering::Relaxed);
                    return Outcome::Skipped {
                        key: entry.key.clone(),
                        entry: StateEntry {
                            key: entry.key,
                            size: h.meta.size,
                            sha256: h.sha256,
                            target: Token::of_read(&target, &h.meta),
                            source: None,
                        },
                    };
                }
                Ok(_) => (entry, None),
                // Gone meanwhile: restore it.
                Err(e) if e.is_not_found() => (entry, None),
                Err(error) => {
                    return Outcome::Failed {
                        key: entry.key,
                        error,
                        keep: None,
                    };
                }
            }
        }
    };
    if ctx.options.dry_run {
        return Outcome::Copied {
            key: entry.key,
            size: entry.size,
            entry: None,
        };
    }
    let restored = restore_one(ctx, key, &entry).await;
    match restored {
        Ok(state) => Outcome::Copied {
            key: entry.key,
            size: entry.size,
            entry: Some(state),
        },
        Err(error) => Outcome::Failed {
            key: entry.key,
            error,
            keep,
        },
    }
}

/// Writes one object from its blob; with a key, through [`blob::restore`]
/// (decrypting encrypted blobs), else as a plain verified copy.
async fn restore_one(
    ctx: &Ctx,
    encryption: Option<&EncryptionKey>,
    entry: &InventoryEntry,
) -> Result<StateEntry> {
    let blob = layout::blob(&entry.sha256)?;
    let key = object_store::path::Path::from(entry.key.as_str());
    if let Some(encryption) = encryption {
        let restored = retrying(ctx, &entry.key, || async {
            let read = |how| {
                blob::restore(
                    &ctx.mover,
                    &ctx.source,
                    &blob,
                    &entry.sha256,
                    entry.size,
                    &ctx.target,
                    &key,
                    how,
                )
            };
            match read(blob::Read::Auto(encryption)).await {
                // Perhaps a plaintext blob that begins like an encryption
                // header: accepted only if its digest is its name.
                Err(e) if blob::is_decryption_error(&e) => match read(blob::Read::Plain).await {
                    Ok(restored) => Ok(restored),
                    Err(Error::DigestMismatch { .. } | Error::SizeMismatch { .. }) => Err(e),
                    Err(other) => Err(other),
                },
                other => other,
            }
        })
        .await?;
        ctx.bytes_read.fetch_add(restored.size, Ordering::Relaxed);
        return Ok(StateEntry {
            key: entry.key.clone(),
            size: restored.size,
            sha256: restored.sha256,
            target: target_token(ctx, &key, restored.e_tag).await,
            source: None,
        });
    }
    let attempts = Attempts::default();
    let copied = retrying(ctx, &entry.key, || async {
        let request = CopyRequest {
            source: &ctx.source,
            source_side: Side::Repository,
            key: &blob,
            target: &ctx.target,
            target_side: Side::Target,
            target_key: &key,
            expect_sha256: Some(&entry.sha256),
            check_unchanged: false,
            verify: ctx.options.verify,
            create: false,
        };
        ctx.copy_to_target(&request, &attempts).await
    })
    .await;
    let copied = match copied {
        Ok(copied) => copied,
        // An encrypted blob read without a key: say so.
        Err(e @ Error::DigestMismatch { .. }) => {
            return Err(match blob::encrypted_with(&ctx.source, &blob).await {
                Some(key_id) => Error::Repository(warmspare_store::Error::KeyMissing {
                    path: blob.to_string(),
                    key_id,
                }),
                None => e,
            });
        }
        Err(e) => return Err(e),
    };
    ctx.bytes_read.fetch_add(copied.size, Ordering::Relaxed);
    Ok(StateEntry {
        key: entry.key.clone(),
        size: copied.size,
        sha256: copied.sha256,
        target: target_token(ctx, &key, copied.target_e_tag).await,
        source: None,
    })
}

/// The target's version token of an object just written.
async fn target_token(ctx: &Ctx, key: &object_store::path::Path, e_tag: Option<String>) -> Token {
    match e_tag {
        Some(e_tag) => Token {
            e_tag: Some(e_tag),
            mtime: None,
        },
        None => ctx
            .target
            .head(key)
            .await
            .map(|m| Token::of(&m))
            .unwrap_or_default(),
    }
}
