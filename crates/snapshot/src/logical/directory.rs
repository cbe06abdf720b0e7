//! Directory-format dumps: `pg_dump --format=directory --jobs N` into a
//! local spool directory, each file streamed into the repository as its
//! own object (`database/<file>`) while `pg_dump` writes it; and, on
//! restore, the objects downloaded in parallel (verified) into a spool
//! directory for `pg_restore --jobs N`.
//!
//! Backup, on Linux: an inotify watch on the spool directory reports each
//! file `pg_dump` creates and closes. One uploader takes the files
//! in the order they were created and *follows* the current one like
//! `tail -f` (reading what is written, waiting for more) until `pg_dump`
//! has closed it, feeding it through the codec in fixed chunks
//! ([`super::chunks`]); the part already uploaded is given back to the file
//! system (`fallocate(PUNCH_HOLE)`) and the file is deleted once stored. A
//! large table therefore streams into the repository while it is dumped,
//! and the spool holds only what the uploader has not caught up with
//! (the other jobs' files, written meanwhile). Without inotify (other
//! systems, or when it cannot be set up) the files are uploaded once
//! `pg_dump` has finished, with the whole dump on local disk. After
//! `pg_dump` exits successfully a final listing uploads anything the
//! watch missed (an inotify queue overflow); a file counts as complete
//! only once `pg_dump` closed it or exited successfully.
//!
//! Spool directories ([`Spool`]) outlive a process that is killed with
//! SIGKILL. Each holds an `flock` on its own lock file while in use, and
//! whoever creates a spool first removes the spools in the same base
//! directory whose lock it can take: those of dead processes, never one in
//! use (see [`remove_stale_spools`]).

use std::collections::{HashSet, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use tokio::io::AsyncReadExt as _;
use tokio::sync::watch;
use warmspare_store::{Check, Manifest, Repository, SnapshotWriter};

use super::chunks::{CHUNK, ChunkReader, ChunkSender};
use crate::error::{Error, Result};
use crate::event::Event;

/// The TOC of a directory-format dump: present in every one.
pub(crate) const TOC_FILE: &str = "toc.dat";

/// How long a follower that caught up with `pg_dump` waits before reading
/// again (or until the file is closed). Writes are not watched: one event
/// per buffered write of `pg_dump`'s would cost more than they save; at
/// this pace a follower finds a few MiB per read.
const FOLLOW_POLL: Duration = Duration::from_millis(20);

/// Objects downloaded at once when a directory dump is spooled for a
/// restore.
pub(crate) const DOWNLOAD_CONCURRENCY: usize = 4;

/// What the watcher knows about the spool directory.
#[derive(Default)]
struct DirState {
    /// Files created and not yet taken by the uploader, oldest first.
    queue: VecDeque<String>,
    /// Every file name seen.
    seen: HashSet<String>,
    /// Files `pg_dump` has closed after writing.
    closed: HashSet<String>,
    /// `pg_dump` exited successfully: every file is complete.
    done: bool,
}

/// The state shared by the watcher, the followers and the uploader, and
/// a signal sent on every change.
pub(crate) struct Shared {
    state: Mutex<DirState>,
    changed: watch::Sender<()>,
}

impl Shared {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(DirState::default()),
            changed: watch::Sender::new(()),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut DirState) -> T) -> T {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut state)
    }

    fn created(&self, name: String) {
        self.with(|s| {
            if s.seen.insert(name.clone()) {
                s.queue.push_back(name);
            }
        });
        self.changed.send_replace(());
    }

    fn closed(&self, name: String) {
        self.with(|s| s.closed.insert(name));
        self.changed.send_replace(());
    }

    fn poke(&self) {
        self.changed.send_replace(());
    }

    /// `pg_dump` exited successfully.
    pub(crate) fn finish(&self) {
        self.with(|s| s.done = true);
        self.changed.send_replace(());
    }

    fn is_complete(&self, name: &str) -> bool {
        self.with(|s| s.done || s.closed.contains(name))
    }

    /// The next file to upload; `None` once `pg_dump` is done and every
    /// file it was seen to create has been taken.
    async fn next(&self) -> Option<String> {
        let mut rx = self.changed.subscribe();
        loop {
            rx.borrow_and_update();
            match self.with(|s| (s.queue.pop_front(), s.done)) {
                (Some(name), _) => return Some(name),
                (None, true) => return None,
                (None, false) => {
                    // The sender lives in `self`: `changed` cannot fail.
                    let _ = rx.changed().await;
                }
            }
        }
    }
}

/// Watches `dir` for the files `pg_dump` writes; `None` when no watch
/// could be set up (then everything is uploaded at the end).
pub(crate) fn watch(dir: &Path, shared: &Arc<Shared>) -> Option<Watcher> {
    #[cfg(target_os = "linux")]
    {
        inotify::start(dir, Arc::clone(shared)).ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (dir, shared);
        None
    }
}

/// A running watch; stopped when dropped.
pub(crate) struct Watcher {
    #[cfg(target_os = "linux")]
    stop: Box<dyn FnOnce() + Send>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        {
            let stop = std::mem::replace(&mut self.stop, Box::new(|| {}));
            stop();
        }
    }
}

#[cfg(target_os = "linux")]
mod inotify {
    use nix::errno::Errno;
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

    use super::*;

    /// Reads events on a thread of its own (a blocking read: tokio's
    /// `AsyncFd` would need `unsafe`). Removing the watch makes the kernel
    /// send `IN_IGNORED`, which ends the thread.
    pub(super) fn start(dir: &Path, shared: Arc<Shared>) -> io::Result<Watcher> {
        let inotify = Arc::new(Inotify::init(InitFlags::IN_CLOEXEC)?);
        let wd = inotify.add_watch(
            dir,
            AddWatchFlags::IN_CREATE | AddWatchFlags::IN_CLOSE_WRITE | AddWatchFlags::IN_MOVED_TO,
        )?;
        let reader = Arc::clone(&inotify);
        std::thread::Builder::new()
            .name("warmspare-inotify".into())
            .spawn(move || {
                loop {
                    let events = match reader.read_events() {
                        Ok(events) => events,
                        Err(Errno::EINTR) => continue,
                        // The watch broke: the end-of-dump listing still
                        // finds every file.
                        Err(_) => return,
                    };
                    for event in events {
                        if event.mask.contains(AddWatchFlags::IN_IGNORED) {
                            return;
                        }
                        let name = event.name.and_then(|n| n.into_string().ok());
                        match name {
                            Some(_) if event.mask.contains(AddWatchFlags::IN_ISDIR) => {}
                            Some(name)
                                if event.mask.intersects(
                                    AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO,
                                ) =>
                            {
                                shared.created(name)
                            }
                            Some(name) if event.mask.contains(AddWatchFlags::IN_CLOSE_WRITE) => {
                                shared.closed(name)
                            }
                            // IN_Q_OVERFLOW (events were lost: the
                            // followers re-read, the final listing catches
                            // missed files).
                            _ => shared.poke(),
                        }
                    }
                }
            })?;
        Ok(Watcher {
            stop: Box::new(move || {
                let _ = inotify.rm_watch(wd);
            }),
        })
    }
}

/// Streams file `name` of `dir` into `tx` in chunks, following it while
/// `pg_dump` writes; gives uploaded ranges back to the file system.
async fn follow(path: PathBuf, name: String, shared: Arc<Shared>, tx: ChunkSender) {
    let result = async {
        // Writable: fallocate needs it to give blocks back.
        let mut file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .await?;
        let mut chunk = vec![0u8; CHUNK];
        let mut filled = 0;
        let mut sent: u64 = 0;
        let mut rx = shared.changed.subscribe();
        loop {
            rx.borrow_and_update();
            // Complete before the read: then a read of nothing is the end.
            let complete = shared.is_complete(&name);
            let n = file.read(&mut chunk[filled..]).await?;
            if n > 0 {
                filled += n;
                if filled == CHUNK {
                    let full = std::mem::replace(&mut chunk, vec![0u8; CHUNK]);
                    if tx.send(Ok(full)).await.is_err() {
                        return Ok(());
                    }
                    give_back(&file, sent, CHUNK as u64);
                    sent += CHUNK as u64;
                    filled = 0;
                }
                continue;
            }
            if complete {
                chunk.truncate(filled);
                if !chunk.is_empty() {
                    let _ = tx.send(Ok(chunk)).await;
                }
                return Ok(());
            }
            let _ = tokio::time::timeout(FOLLOW_POLL, rx.changed()).await;
        }
    }
    .await;
    if let Err(e) = result {
        let _ = tx.send(Err(e)).await;
    }
}

/// Frees the disk blocks of a range already uploaded (best effort).
fn give_back(file: &tokio::fs::File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use nix::fcntl::{FallocateFlags, fallocate};
        if let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) {
            let _ = fallocate(
                file,
                FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (file, offset, len);
    }
}

/// Uploads the files of the spool directory `dir` as `<prefix>/<file>`,
/// as `pg_dump` writes them, until it is done ([`Shared::finish`]) and
/// every file is stored. Returns the content bytes.
pub(crate) async fn upload_all(
    writer: &mut SnapshotWriter,
    dir: &Path,
    prefix: &str,
    shared: &Arc<Shared>,
    emit: &(dyn Fn(Event) + Send + Sync),
) -> Result<u64> {
    let mut uploaded = HashSet::new();
    let mut total = 0u64;
    while let Some(name) = shared.next().await {
        total += upload_one(writer, dir, prefix, &name, shared, total, emit).await?;
        uploaded.insert(name);
    }
    // What the watch did not report (no watch, or lost events); pg_dump
    // has exited: these files are complete.
    let mut rest = Vec::new();
    let mut entries = tokio::fs::read_dir(dir).await.map_err(spool_error(dir))?;
    while let Some(entry) = entries.next_entry().await.map_err(spool_error(dir))? {
        let is_file = entry.file_type().await.map_err(spool_error(dir))?.is_file();
        match entry.file_name().into_string() {
            Ok(name) if is_file && !uploaded.contains(&name) => rest.push(name),
            Ok(_) => {}
            Err(name) => {
                return Err(Error::Spool {
                    path: dir.join(name).display().to_string(),
                    source: io::Error::other("pg_dump wrote a file whose name is not UTF-8"),
                });
            }
        }
    }
    rest.sort();
    for name in rest {
        total += upload_one(writer, dir, prefix, &name, shared, total, emit).await?;
    }
    Ok(total)
}

async fn upload_one(
    writer: &mut SnapshotWriter,
    dir: &Path,
    prefix: &str,
    name: &str,
    shared: &Arc<Shared>,
    before: u64,
    emit: &(dyn Fn(Event) + Send + Sync),
) -> Result<u64> {
    let path = dir.join(name);
    let (tx, reader) = ChunkReader::channel();
    let task = tokio::spawn(follow(
        path.clone(),
        name.to_owned(),
        Arc::clone(shared),
        tx,
    ));
    let reader = reader.with_task(task);
    let bytes = |n| emit(Event::Bytes(before + n));
    let info = writer
        .put_file_with_progress(&format!("{prefix}/{name}"), reader, Some(&bytes))
        .await?;
    match tokio::fs::remove_file(&path).await {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(spool_error(&path)(e)),
        _ => Ok(info.size),
    }
}

fn spool_error(path: &Path) -> impl Fn(io::Error) -> Error + '_ {
    move |source| Error::Spool {
        path: path.display().to_string(),
        source,
    }
}

/// The files of the directory dump `prefix` in `manifest`, without the
/// prefix.
pub(crate) fn files<'a>(manifest: &'a Manifest, prefix: &'a str) -> Vec<(&'a str, &'a str)> {
    manifest
        .files
        .keys()
        .filter_map(|name| {
            let rest = name.strip_prefix(prefix)?.strip_prefix('/')?;
            Some((name.as_str(), rest))
        })
        .collect()
}

/// Downloads the directory dump `prefix` of `manifest` into `dir`,
/// verified, [`DOWNLOAD_CONCURRENCY`] objects at once. Returns the content
/// bytes. Progress: the bytes of all objects together.
pub(crate) async fn download_all(
    repo: &Repository,
    manifest: &Manifest,
    prefix: &str,
    dir: &Path,
    emit: &(dyn Fn(Event) + Send + Sync),
) -> Result<u64> {
    let total = AtomicU64::new(0);
    // The futures are made up front (by a named `async fn`): a closure
    // making them inside the stream trips the compiler's `Send` check of
    // callers that spawn this.
    let downloads: Vec<_> = files(manifest, prefix)
        .into_iter()
        .map(|(object, file)| download(repo, manifest, object, dir.join(file), &total, emit))
        .collect();
    let sizes: Vec<u64> = futures::stream::iter(downloads)
        .buffer_unordered(DOWNLOAD_CONCURRENCY)
        .try_collect()
        .await?;
    Ok(sizes.iter().sum())
}

async fn download(
    repo: &Repository,
    manifest: &Manifest,
    object: &str,
    path: PathBuf,
    total: &AtomicU64,
    emit: &(dyn Fn(Event) + Send + Sync),
) -> Result<u64> {
    let mut out = tokio::fs::File::create(&path)
        .await
        .map_err(spool_error(&path))?;
    let last = AtomicU64::new(0);
    let progress = |n: u64| {
        let delta = n.saturating_sub(last.swap(n, Ordering::Relaxed));
        emit(Event::Bytes(
            total.fetch_add(delta, Ordering::Relaxed) + delta,
        ));
    };
    let info = repo
        .read_manifest_file_checked(manifest, object, &mut out, Some(&progress), Check::Stored)
        .await?;
    Ok(info.size)
}

/// Every spool directory's name starts with this (then the kind, the
/// process id, the creation time in Unix seconds and a random suffix).
pub(crate) const SPOOL_PREFIX: &str = "warmspare-spool-";

/// The lock file in a spool directory: `flock`ed by the owner while the
/// spool is in use.
pub(crate) const SPOOL_LOCK: &str = "lock";

/// The directory inside a spool that is handed to `pg_dump` (or
/// `pg_restore`): empty when the spool is created.
const SPOOL_WORK: &str = "data";

/// A spool being set up: renamed to its [`SPOOL_PREFIX`] name only once its
/// lock is held, so that no cleanup ever sees a spool whose owner has not
/// locked it yet. (A process killed in that instant leaves an empty
/// directory of this name behind, which is never removed.)
const SPOOL_NEW_PREFIX: &str = ".warmspare-spool-new-";

/// A local spool directory held by this process:
/// `<base>/warmspare-spool-<kind>-<pid>-<unix time>-<random>/` with the lock
/// file [`SPOOL_LOCK`] (locked while this value lives) and the work
/// directory [`Spool::path`]. Removed, work directory and all, when
/// dropped; a process killed with SIGKILL leaves it behind, unlocked, and
/// the next [`Spool::create`] in the same base removes it.
#[derive(Debug)]
pub(crate) struct Spool {
    root: PathBuf,
    work: PathBuf,
    /// Locked, unless the file system has no `flock` (then the spool is
    /// never taken for stale, and never cleaned up by others).
    _lock: std::fs::File,
}

impl Spool {
    /// Creates a spool in `base` (which must exist), after removing the
    /// stale spools there ([`remove_stale_spools`]: best effort, owned by
    /// the same user). `kind` names the user in the directory's name
    /// (`dump`, `restore`).
    ///
    /// # Errors
    ///
    /// [`Error::Spool`] when the directory cannot be created.
    pub(crate) fn create(base: &Path, kind: &str) -> Result<Self> {
        let fresh = tempfile::Builder::new()
            .prefix(SPOOL_NEW_PREFIX)
            .tempdir_in(base)
            .map_err(spool_error(base))?;
        remove_stale_spools(base, owner(fresh.path()));
        let lock_path = fresh.path().join(SPOOL_LOCK);
        let lock = std::fs::File::create_new(&lock_path).map_err(spool_error(&lock_path))?;
        // Nobody else knows this file yet: the lock is free, unless the
        // file system has no locks at all (then the spool is kept from
        // cleanups by their failing to lock it just the same).
        let _ = lock.try_lock();
        let work = fresh.path().join(SPOOL_WORK);
        std::fs::create_dir(&work).map_err(spool_error(&work))?;
        let random = fresh
            .path()
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix(SPOOL_NEW_PREFIX))
            .unwrap_or_default()
            .to_owned();
        // A label for whoever looks at the directory; the lock, not the
        // name, says whether it is in use.
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let root = base.join(format!(
            "{SPOOL_PREFIX}{kind}-{}-{created}-{random}",
            std::process::id()
        ));
        // On failure `fresh` is dropped, and removed.
        std::fs::rename(fresh.path(), &root).map_err(spool_error(&root))?;
        let _ = fresh.keep();
        Ok(Self {
            work: root.join(SPOOL_WORK),
            root,
            _lock: lock,
        })
    }

    /// The work directory: empty when created.
    pub(crate) fn path(&self) -> &Path {
        &self.work
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        // Still locked here: the lock file goes last (see `remove_spool`),
        // then the field closes it.
        let _ = remove_spool(&self.root);
    }
}

/// The owner of `path` (the user a cleanup may remove spools of).
fn owner(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::symlink_metadata(path).ok().map(|m| m.uid())
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// Removes the stale spool directories in `base`, best effort, and returns
/// the ones removed: directories named [`SPOOL_PREFIX`]`...` (owned by
/// `owner`, when given) whose lock file [`SPOOL_LOCK`] this process can
/// lock, that is whose owner died without removing them (a SIGKILL, a
/// crash, a power loss). A spool in use is locked by its live owner and
/// kept, as is anything else in `base`. The lock is held while the
/// directory is emptied, and the lock file removed last, so two cleanups
/// never race each other into a spool; one that was itself killed midway
/// leaves a spool that is still recognised (with its lock file, or empty).
pub(crate) fn remove_stale_spools(base: &Path, owner: Option<u32>) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(base) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(SPOOL_PREFIX))
        })
        .map(|e| e.path())
        .filter(|root| remove_if_stale(root, owner))
        .collect()
}

/// Removes spool `root` if it is stale; true when it was removed.
fn remove_if_stale(root: &Path, uid: Option<u32>) -> bool {
    // Directories only, never through a symbolic link.
    let Ok(meta) = std::fs::symlink_metadata(root) else {
        return false;
    };
    if !meta.is_dir() || (uid.is_some() && owner(root) != uid) {
        return false;
    }
    let lock_path = root.join(SPOOL_LOCK);
    match std::fs::symlink_metadata(&lock_path) {
        Ok(meta) if meta.is_file() => {}
        // No lock file: a cleanup killed after removing it, which it does
        // last. Only an empty directory goes.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return std::fs::remove_dir(root).is_ok();
        }
        _ => return false,
    }
    let Ok(lock) = std::fs::File::open(&lock_path) else {
        return false;
    };
    // Held by a live owner (or another cleanup), or no locks here at all:
    // keep it.
    if lock.try_lock().is_err() {
        return false;
    }
    remove_spool(root).is_ok()
}

/// Removes spool `root`, whose lock the caller holds: the contents, then
/// the lock file, then the directory. Whatever is already gone is fine.
fn remove_spool(root: &Path) -> io::Result<()> {
    let gone = |result: io::Result<()>| match result {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    };
    let entries = match std::fs::read_dir(root) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        entries => entries?,
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_name() == SPOOL_LOCK {
            continue;
        }
        let path = entry.path();
        gone(match entry.file_type()?.is_dir() {
            true => std::fs::remove_dir_all(&path),
            false => std::fs::remove_file(&path),
        })?;
    }
    gone(std::fs::remove_file(root.join(SPOOL_LOCK)))?;
    gone(std::fs::remove_dir(root))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    /// A spool as a process killed with SIGKILL leaves it: a lock file
    /// nobody holds, and a work directory with a partial dump.
    fn stale_spool(base: &Path, name: &str) -> PathBuf {
        let root = base.join(name);
        std::fs::create_dir_all(root.join(SPOOL_WORK).join("sub")).unwrap();
        std::fs::write(root.join(SPOOL_LOCK), b"").unwrap();
        std::fs::write(root.join(SPOOL_WORK).join("3001.dat"), vec![7u8; 4096]).unwrap();
        std::fs::write(root.join(SPOOL_WORK).join("sub").join("x"), b"x").unwrap();
        root
    }

    #[test]
    fn a_spool_is_locked_while_it_lives_and_removed_when_dropped() {
        let base = tempfile::tempdir().unwrap();
        let spool = Spool::create(base.path(), "dump").unwrap();
        let root = spool.root.clone();
        let name = root.file_name().unwrap().to_str().unwrap().to_owned();
        let pid = std::process::id().to_string();
        assert!(name.starts_with("warmspare-spool-dump-"), "{name}");
        assert_eq!(name.split('-').nth(3), Some(pid.as_str()), "{name}");
        assert_eq!(spool.path(), root.join(SPOOL_WORK));
        assert!(std::fs::read_dir(spool.path()).unwrap().next().is_none());
        std::fs::write(spool.path().join("toc.dat"), b"toc").unwrap();

        // Another open file description cannot take the lock (flock
        // conflicts even within one process), so no cleanup takes it.
        let other = std::fs::File::open(root.join(SPOOL_LOCK)).unwrap();
        assert!(other.try_lock().is_err());
        drop(other);
        assert!(remove_stale_spools(base.path(), owner(base.path())).is_empty());
        let second = Spool::create(base.path(), "restore").unwrap();
        assert!(root.join(SPOOL_WORK).join("toc.dat").exists());

        drop(spool);
        assert!(!root.exists());
        assert_eq!(
            names(base.path()),
            [second.root.file_name().unwrap().to_str().unwrap()]
        );
        drop(second);
        assert!(names(base.path()).is_empty());
    }

    #[test]
    fn cleanup_removes_dead_spools_only() {
        let base = tempfile::tempdir().unwrap();
        let stale = stale_spool(base.path(), "warmspare-spool-dump-4242-1700000000-aB3dEf");
        // Held by a live owner: a lock on its lock file.
        let live = stale_spool(base.path(), "warmspare-spool-dump-4343-1700000001-gH4iJk");
        let held = std::fs::File::open(live.join(SPOOL_LOCK)).unwrap();
        held.lock().unwrap();
        // A cleanup killed after removing the lock file: empty, goes; one
        // without a lock file that is not empty is not ours to judge.
        let emptied = base.path().join("warmspare-spool-dump-1-2-emptied");
        std::fs::create_dir(&emptied).unwrap();
        let unlocked = base.path().join("warmspare-spool-dump-1-2-nolock");
        std::fs::create_dir_all(unlocked.join(SPOOL_WORK)).unwrap();
        // Not spools: other names, a spool being set up, a symbolic link
        // to a stale spool, a plain file.
        let other = stale_spool(base.path(), "warmspare-dump-abc");
        let new = stale_spool(base.path(), ".warmspare-spool-new-xyz");
        let target = stale_spool(&base.path().join("elsewhere"), "warmspare-spool-dump-5-6-t");
        std::os::unix::fs::symlink(&target, base.path().join("warmspare-spool-dump-7-8-link"))
            .unwrap();
        std::fs::write(base.path().join("warmspare-spool-file"), b"").unwrap();

        let mut removed = remove_stale_spools(base.path(), owner(base.path()));
        removed.sort();
        assert_eq!(removed, [emptied.clone(), stale.clone()]);
        assert!(!stale.exists() && !emptied.exists());
        for kept in [&live, &unlocked, &other, &new, &target] {
            assert!(kept.exists(), "{}", kept.display());
        }
        assert!(live.join(SPOOL_WORK).join("3001.dat").exists());
        assert!(target.join(SPOOL_WORK).join("3001.dat").exists());
        assert!(base.path().join("warmspare-spool-file").exists());

        // Once its owner is gone, the live one is stale too.
        drop(held);
        assert_eq!(remove_stale_spools(base.path(), None), vec![live.clone()]);
        assert!(!live.exists());
    }

    #[test]
    fn cleanup_keeps_spools_of_other_users() {
        let base = tempfile::tempdir().unwrap();
        let stale = stale_spool(base.path(), "warmspare-spool-dump-1-2-x");
        let mine = owner(&stale).unwrap();
        assert!(remove_stale_spools(base.path(), Some(mine.wrapping_add(1))).is_empty());
        assert!(stale.exists());
        assert_eq!(
            remove_stale_spools(base.path(), Some(mine)),
            vec![stale.clone()]
        );
    }

    #[test]
    fn creating_a_spool_removes_stale_ones() {
        let base = tempfile::tempdir().unwrap();
        let stale = stale_spool(base.path(), "warmspare-spool-restore-99-1-q");
        let spool = Spool::create(base.path(), "dump").unwrap();
        assert!(!stale.exists());
        assert_eq!(
            names(base.path()),
            [spool.root.file_name().unwrap().to_str().unwrap()]
        );
    }

    #[test]
    fn a_missing_base_is_a_spool_error() {
        let base = tempfile::tempdir().unwrap();
        let missing = base.path().join("missing");
        let e = Spool::create(&missing, "dump").unwrap_err();
        assert!(matches!(e, Error::Spool { .. }), "{e}");
        assert!(e.to_string().contains("missing"), "{e}");
        assert!(remove_stale_spools(&missing, None).is_empty());
    }
}
