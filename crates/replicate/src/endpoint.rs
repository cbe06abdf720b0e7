//! The two ends of a mirror: a store, and for a `file://` store the
//! directory behind it, which the mirror then lists, reads and writes
//! directly ([`crate::local`]).

use std::fmt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::stream::BoxStream;
use object_store::{ObjectMeta, ObjectStore};
use warmspare_store::Store;

use crate::error::{Error, Result, Side};
use crate::listing::{ListOrder, ahead, checked, sorted_listing};
use crate::local::{self, BLOCK, CancelOnDrop, Io, LocalDir};
use crate::options::SourceVerify;
use crate::sync::Ctx;
use crate::transfer::{Attempts, Copied, CopyRequest, Hashed};

/// Bytes copied into a directory between two background writebacks.
const WRITE_BACK_EVERY: u64 = 32 * 1024 * 1024;

/// One end of a mirror ([`crate::sync_endpoints`]).
///
/// [`Endpoint::new`] takes any store. [`Endpoint::local`] says that the
/// store is a `LocalFileSystem` whose root is a given directory: the
/// mirror then walks, reads and writes that directory itself (faster, and
/// on a target without an `fsync` per object: the run makes the filesystem
/// durable once before its state record says what it copied). The store
/// is still used for the state record and for deletions.
#[derive(Clone)]
pub struct Endpoint {
    store: Arc<dyn ObjectStore>,
    dir: Option<LocalDir>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("store", &self.store.to_string())
            .field(
                "dir",
                &self.dir.as_ref().map(|d| d.root().display().to_string()),
            )
            .finish()
    }
}

impl Endpoint {
    /// Any store, used only through the `ObjectStore` interface.
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self { store, dir: None }
    }

    /// A `LocalFileSystem` store and its root directory. `store` must be
    /// `LocalFileSystem::new_with_prefix(root)` (possibly with `fsync` or
    /// cleanup options), not wrapped: keys map to the files under `root`.
    pub fn local(store: Arc<dyn ObjectStore>, root: impl Into<PathBuf>) -> Self {
        Self {
            store,
            dir: Some(LocalDir::new(root)),
        }
    }

    /// The endpoint for an opened [`Store`]: a `file://` store (one with a
    /// [`Store::local_root`]) is its directory, read and written directly
    /// ([`Endpoint::local`]); any other store, and a store assembled with
    /// `Store::from_parts`, is used through its `ObjectStore`
    /// ([`Endpoint::new`]). What `warmspare sync`, `warmspare restore
    /// artifacts` and the agent's `sync` job use.
    pub fn for_store(store: &Store) -> Self {
        match store.local_root() {
            Some(root) => Self::local(Arc::clone(store.object_store()), root),
            None => Self::new(Arc::clone(store.object_store())),
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The directory that the mirror lists, reads and writes directly;
    /// `None` for a store used only through the `ObjectStore` interface.
    pub fn local_root(&self) -> Option<&FsPath> {
        self.dir.as_ref().map(LocalDir::root)
    }

    pub(crate) fn dir(&self) -> Option<&LocalDir> {
        self.dir.as_ref()
    }

    /// The store's objects in key order, listed ahead of the merge.
    pub(crate) fn listing(
        &self,
        side: Side,
        order: ListOrder,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        match &self.dir {
            Some(dir) => checked(local::list(dir.clone(), side), side),
            None => ahead(sorted_listing(Arc::clone(&self.store), side, order)),
        }
    }
}

fn task_error(e: tokio::task::JoinError) -> Error {
    Error::Task {
        reason: e.to_string(),
    }
}

impl Ctx {
    fn dir(&self, side: Side) -> Option<&LocalDir> {
        match side {
            Side::Source => self.source_dir.as_ref(),
            _ => self.target_dir.as_ref(),
        }
    }

    /// Runs `f` on the blocking pool with the run's limits; `f` stops at
    /// its next block when this future is dropped.
    async fn blocking<T: Send + 'static>(
        &self,
        size: u64,
        f: impl FnOnce(&Io<'_>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let buffer = usize::try_from(size.saturating_add(1)).map_or(BLOCK, |n| n.min(BLOCK));
        // Held by the job until it returns: a stopped run waits for it.
        let pass = self.mover.gate.enter().ok_or_else(|| Error::Task {
            reason: "the sync was stopped".into(),
        })?;
        let _permit = self.mover.budget.reserve(buffer).await?;
        let cancelled = Arc::new(AtomicBool::new(false));
        let _cancel = CancelOnDrop(Arc::clone(&cancelled));
        let limiter = self.mover.limiter.clone();
        let on_bytes = Arc::clone(&self.mover.on_bytes);
        let job = move |runtime: &tokio::runtime::Handle| {
            let _pass = pass;
            let io = Io {
                limiter: limiter.as_deref(),
                runtime: Some(runtime),
                on_bytes: &*on_bytes,
                cancelled: &cancelled,
            };
            f(&io)
        };
        match &self.threads {
            Some(threads) => threads.run(job).await?,
            None => {
                let runtime = tokio::runtime::Handle::current();
                tokio::task::spawn_blocking(move || job(&runtime))
                    .await
                    .map_err(task_error)?
            }
        }
    }

    /// Reads a listed object to its end, hashing it.
    pub(crate) async fn hash_object(&self, side: Side, meta: &ObjectMeta) -> Result<Hashed> {
        let Some(dir) = self.dir(side).cloned() else {
            let store = match side {
                Side::Source => &self.source,
                _ => &self.target,
            };
            return self.mover.hash(store, &meta.location, side).await;
        };
        let key = meta.location.clone();
        let read = self
            .blocking(meta.size, move |io| local::hash_file(&dir, &key, side, io))
            .await?;
        Ok(Hashed {
            sha256: read.sha256,
            meta: read.meta,
        })
    }

    /// Copies a listed source object to the same key on the target,
    /// verified (see [`crate::transfer`]).
    pub(crate) async fn copy_object(
        &self,
        source: &ObjectMeta,
        attempts: &Attempts,
    ) -> Result<Copied> {
        if self.target_dir.is_none() {
            return self.mover.copy(&self.request(source), attempts).await;
        }
        // Before anything can land, and again after: a checkpoint that
        // started during the copy may have missed its last writes.
        self.target_dirty.store(true, Ordering::Release);
        let copied = self.copy_into_dir(source, attempts).await;
        self.target_dirty.store(true, Ordering::Release);
        if let Ok(c) = &copied {
            self.write_back_early(c.size);
        }
        copied
    }

    /// Copies as `request` says (a restore: a blob to an object of the
    /// target), writing the target's directory directly when it is one:
    /// without an `fsync` per object, made durable before a record names
    /// the copy ([`Ctx::make_durable`]), like [`Ctx::copy_object`].
    pub(crate) async fn copy_to_target(
        &self,
        request: &CopyRequest<'_>,
        attempts: &Attempts,
    ) -> Result<Copied> {
        let Some(dir) = self.target_dir.as_ref() else {
            return self.mover.copy(request, attempts).await;
        };
        self.target_dirty.store(true, Ordering::Release);
        let copied = self.mover.copy_into(request, attempts, Some(dir)).await;
        self.target_dirty.store(true, Ordering::Release);
        if let Ok(c) = &copied {
            self.write_back_early(c.size);
        }
        copied
    }

    /// Starts writing the target's dirty pages out in the background once
    /// [`WRITE_BACK_EVERY`] bytes were copied since the last start, so that
    /// the durability point at the end waits for the tail only. Not a
    /// durability point itself: it leaves `target_dirty` alone.
    fn write_back_early(&self, bytes: u64) {
        let Some(dir) = self.target_dir.clone() else {
            return;
        };
        let copied = self.unflushed.fetch_add(bytes, Ordering::AcqRel) + bytes;
        if copied < WRITE_BACK_EVERY || self.flushing.swap(true, Ordering::AcqRel) {
            return;
        }
        self.unflushed.store(0, Ordering::Release);
        let flushing = Arc::clone(&self.flushing);
        tokio::task::spawn_blocking(move || {
            // Only the timing depends on it: errors surface at the
            // durability point.
            let _ = local::make_durable(&dir);
            flushing.store(false, Ordering::Release);
        });
    }

    fn request<'a>(&'a self, source: &'a ObjectMeta) -> CopyRequest<'a> {
        CopyRequest {
            source: &self.source,
            source_side: Side::Source,
            key: &source.location,
            target: &self.target,
            target_side: Side::Target,
            target_key: &source.location,
            expect_sha256: None,
            check_unchanged: true,
            verify: self.options.verify,
            create: false,
        }
    }

    async fn copy_into_dir(&self, source: &ObjectMeta, attempts: &Attempts) -> Result<Copied> {
        let (Some(from), Some(to)) = (self.source_dir.clone(), self.target_dir.clone()) else {
            let request = self.request(source);
            return self
                .mover
                .copy_into(&request, attempts, self.target_dir.as_ref())
                .await;
        };
        let key = source.location.clone();
        let reread = self.options.verify == SourceVerify::Reread;
        let copied = self
            .blocking(source.size, move |io| {
                local::copy_file(&from, &to, &key, reread, io)
            })
            .await?;
        Ok(Copied {
            sha256: copied.read.sha256,
            size: copied.read.meta.size,
            source: copied.read.meta,
            target_e_tag: Some(copied.target_e_tag),
        })
    }

    /// Makes what this run wrote to a filesystem target durable, before a
    /// record says that it was copied. Nothing to do for other stores.
    /// Once durable, the staged files of runs that died mid-copy, which
    /// the target's walk found (see [`local::STALE_STAGED`]), are removed:
    /// only a run that writes to the target gets here.
    pub(crate) async fn make_durable(&self) -> Result<()> {
        let Some(dir) = self.target_dir.clone() else {
            return Ok(());
        };
        if !self.target_dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let root = dir.root().display().to_string();
        tokio::task::spawn_blocking(move || {
            local::make_durable(&dir)?;
            let removed = dir.remove_stale_staged();
            if removed > 0 {
                tracing::info!(removed, "removed staged files left by a run that died");
            }
            Ok::<_, std::io::Error>(())
        })
        .await
        .map_err(task_error)?
        .map_err(|e| {
            self.target_dirty.store(true, Ordering::Release);
            Error::object(
                Side::Target,
                root,
                "syncing",
                object_store::Error::Generic {
                    store: "LocalFileSystem",
                    source: Box::new(e),
                },
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warmspare_store::StoreConfig;

    #[test]
    fn file_stores_are_their_directories() {
        let dir = tempfile::tempdir().unwrap();
        let file = Store::open(&StoreConfig::new(format!(
            "file://{}",
            dir.path().display()
        )))
        .unwrap();
        let endpoint = Endpoint::for_store(&file);
        assert_eq!(endpoint.local_root(), Some(dir.path()));
        assert!(Arc::ptr_eq(endpoint.store(), file.object_store()));

        let s3 = Store::open(
            &StoreConfig::new("s3://bucket/prefix")
                .with_region("us-east-1")
                .with_endpoint("http://127.0.0.1:9")
                .with_allow_http(true),
        )
        .unwrap();
        assert_eq!(Endpoint::for_store(&s3).local_root(), None);
        let parts = Store::from_parts(
            "file:///elsewhere",
            Arc::clone(file.object_store()),
            Arc::clone(file.cas()),
        );
        assert_eq!(Endpoint::for_store(&parts).local_root(), None);
    }
}
