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

use std::collections::{HashSet, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use tokio::io::AsyncReadExt as _;
use tokio::sync::watch;
use warmspare_store::{Manifest, Repository, SnapshotWriter};

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
        .read_manifest_file(manifest, object, &mut out, Some(&progress))
        .await?;
    Ok(info.size)
}
