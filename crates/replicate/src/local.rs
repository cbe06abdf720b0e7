//! The filesystem side of the mirror: when a store is a `file://`
//! directory ([`crate::Endpoint::local`]), the mirror lists, reads and
//! writes its files directly instead of going through `LocalFileSystem`.
//!
//! What it does the same way as `LocalFileSystem`: keys are the paths
//! relative to the root (`/`-separated, UTF-8); the ETag is
//! `"<inode>-<mtime µs>-<size>"` in hex and the time is the file's
//! modification time, so tokens recorded here match a `LocalFileSystem`
//! listing and the other way round; files named `<name>#<digits>` are
//! staged uploads, never listed; symbolic links are followed and broken
//! ones skipped; a new object is written to a staged file and renamed into
//! place, so it appears whole or not at all.
//!
//! What it does differently, and why it is faster:
//!
//! * **Listing**: one blocking thread per store walks the tree in key
//!   order and stats each file relative to its directory (`fstatat`), where
//!   `LocalFileSystem` stats every entry by its absolute path from a new
//!   blocking task per directory. The thread hands batches to the merge
//!   through a bounded channel, so both stores are walked at once.
//! * **Copying**: one blocking task per object opens, reads in large
//!   blocks, hashes, writes the staged file, checks that the source did not
//!   change (`fstat` after the read) and renames; `LocalFileSystem` needs
//!   several blocking tasks, opens and stats per object.
//! * **Durability**: no `fsync` per object. The run marks the target dirty
//!   and, before its state record (or a checkpoint) says that objects were
//!   copied, makes the whole filesystem durable once ([`make_durable`],
//!   `syncfs`). A crash before that loses copies the state does not claim,
//!   which the next run copies again.
//!
//! Non-regular files (sockets, FIFOs, devices) are not objects here.

use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::stream::{self, BoxStream, StreamExt};
use object_store::ObjectMeta;
use object_store::path::Path;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::error::{Error, Result, Side};
use crate::limit::RateLimiter;
use crate::listing::RESERVED_PREFIX;

/// Objects per batch handed from a listing thread to the merge.
const LIST_BATCH: usize = 512;
/// Batches buffered between a listing thread and the merge.
const LIST_BATCHES: usize = 4;
/// Largest read (and write) of one copy or hash: small enough that the
/// block stays in the CPU cache between the read, the hash and the write
/// (1 MiB blocks cost a third more system time).
pub(crate) const BLOCK: usize = 256 * 1024;

/// A staged file whose last write is older than this was left by a run
/// that died (a live copy writes to it every block): a target walk notes
/// it, and [`LocalDir::remove_stale_staged`] removes it.
pub(crate) const STALE_STAGED: Duration = Duration::from_secs(3600);

/// The root directory of a `file://` store.
#[derive(Debug, Clone)]
pub(crate) struct LocalDir {
    root: Arc<PathBuf>,
    /// Stale staged files the last target walk saw.
    stale: Arc<std::sync::Mutex<Vec<PathBuf>>>,
}

impl LocalDir {
    pub(crate) fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: Arc::new(root.into()),
            stale: Arc::default(),
        }
    }

    /// Removes the staged files that the last walk of this directory as a
    /// target found older than [`STALE_STAGED`] (left by a run killed in
    /// the middle of a copy; no listing shows them, so nothing else ever
    /// would). Call it only from a run that changes the target (not a dry
    /// run). Returns how many were removed.
    pub(crate) fn remove_stale_staged(&self) -> usize {
        let stale = std::mem::take(&mut *self.stale.lock().unwrap_or_else(|e| e.into_inner()));
        stale
            .iter()
            // Checked again: a file renewed since (a live run's copy,
            // however unlikely after an hour) stays.
            .filter(|path| is_stale(path) && fs::remove_file(path).is_ok())
            .count()
    }

    pub(crate) fn root(&self) -> &FsPath {
        &self.root
    }

    /// The file of `key`; keys that `LocalFileSystem` cannot store (a
    /// staged-upload name) are refused.
    pub(crate) fn path_of(&self, key: &Path) -> Result<PathBuf> {
        if key.filename().is_none_or(is_staged_name) {
            return Err(Error::InvalidKey {
                key: key.to_string(),
                reason: "a file store cannot hold this name (it is a staged upload's)".into(),
            });
        }
        Ok(self.root.join(key.as_ref()))
    }
}

/// Whether a file name is that of a staged upload (`<name>#<digits>`).
fn is_staged_name(name: &str) -> bool {
    match name.split_once('#') {
        Some((_, suffix)) => !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit()),
        None => false,
    }
}

/// Whether the file at `path` was last written more than [`STALE_STAGED`]
/// ago.
fn is_stale(path: &FsPath) -> bool {
    fs::symlink_metadata(path)
        .and_then(|md| md.modified())
        .is_ok_and(|modified| {
            SystemTime::now()
                .duration_since(modified)
                .is_ok_and(|age| age > STALE_STAGED)
        })
}

/// The metadata `LocalFileSystem` reports for a file.
pub(crate) fn object_meta(location: Path, md: &Metadata) -> ObjectMeta {
    let modified = md.modified().unwrap_or(UNIX_EPOCH);
    ObjectMeta {
        location,
        last_modified: modified.into(),
        size: md.len(),
        e_tag: Some(etag(md.ino(), modified, md.len())),
        version: None,
    }
}

/// `LocalFileSystem`'s ETag.
fn etag(inode: u64, modified: SystemTime, size: u64) -> String {
    let micros = modified
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_micros();
    format!("\"{inode:x}-{micros:x}-{size:x}\"")
}

fn store_error(key: &str, e: io::Error) -> object_store::Error {
    if e.kind() == io::ErrorKind::NotFound {
        object_store::Error::NotFound {
            path: key.to_string(),
            source: Box::new(e),
        }
    } else {
        object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(e),
        }
    }
}

fn io_error(side: Side, key: &str, operation: &'static str, e: io::Error) -> Error {
    Error::object(side, key, operation, store_error(key, e))
}

// --- listing ----------------------------------------------------------------

/// Lists every file under `dir` in strictly increasing key order (reserved
/// keys and staged uploads left out), walking on a blocking thread a few
/// batches ahead of the consumer.
pub(crate) fn list(dir: LocalDir, side: Side) -> BoxStream<'static, Result<ObjectMeta>> {
    let (tx, rx) = mpsc::channel::<Result<Vec<ObjectMeta>>>(LIST_BATCHES);
    // Started at once (within a Tokio runtime); it stops when the stream
    // is dropped (the next send fails).
    tokio::task::spawn_blocking(move || walk(&dir, side, &tx));
    stream::unfold(rx, |mut rx| async move {
        let batch = rx.recv().await?;
        Some((batch, rx))
    })
    .flat_map(|batch| match batch {
        Ok(metas) => stream::iter(metas.into_iter().map(Ok)).left_stream(),
        Err(e) => stream::iter([Err(e)]).right_stream(),
    })
    .boxed()
}

/// One entry of a directory being walked.
struct Node {
    /// The name, with `/` appended for a directory (the sort key).
    name: String,
    dir: bool,
    /// Set for a symbolic link: the metadata of what it points to (boxed:
    /// nodes are sorted, and most have none).
    followed: Option<Box<Metadata>>,
    entry: fs::DirEntry,
}

struct Level {
    /// The key prefix of the directory (`""` or `"a/b/"`).
    prefix: String,
    nodes: std::vec::IntoIter<Node>,
    /// Device and inode of the directory, to refuse symlink loops.
    id: (u64, u64),
}

fn list_error(side: Side, path: &FsPath, e: io::Error) -> Error {
    Error::List {
        side,
        source: object_store::Error::Generic {
            store: "LocalFileSystem",
            source: format!("{}: {e}", path.display()).into(),
        },
    }
}

/// Reads one directory's entries, sorted by key. `None` when the
/// directory vanished.
fn read_level(
    path: &FsPath,
    prefix: String,
    side: Side,
    stale: &mut Vec<PathBuf>,
) -> Result<Option<Level>> {
    let read = match fs::read_dir(path) {
        Ok(read) => read,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(list_error(side, path, e)),
    };
    let id = match fs::metadata(path) {
        Ok(md) => (md.dev(), md.ino()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(list_error(side, path, e)),
    };
    let mut nodes = Vec::new();
    for entry in read {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(list_error(side, path, e)),
        };
        let Ok(name) = entry.file_name().into_string() else {
            return Err(list_error(
                side,
                &entry.path(),
                io::Error::new(io::ErrorKind::InvalidData, "the file name is not UTF-8"),
            ));
        };
        if prefix.is_empty() && name == RESERVED_PREFIX {
            continue;
        }
        let file_type = match entry.file_type() {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(list_error(side, &entry.path(), e)),
        };
        let (dir, followed) = if file_type.is_symlink() {
            match fs::metadata(entry.path()) {
                Ok(md) if md.is_dir() => (true, None),
                Ok(md) if md.is_file() => (false, Some(Box::new(md))),
                // Broken links and links to special files are no objects.
                _ => continue,
            }
        } else if file_type.is_dir() {
            (true, None)
        } else if file_type.is_file() {
            (false, None)
        } else {
            continue;
        };
        if !dir && is_staged_name(&name) {
            if side == Side::Target && followed.is_none() && is_stale(&entry.path()) {
                stale.push(entry.path());
            }
            continue;
        }
        let name = if dir { name + "/" } else { name };
        nodes.push(Node {
            name,
            dir,
            followed,
            entry,
        });
    }
    nodes.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    Ok(Some(Level {
        prefix,
        nodes: nodes.into_iter(),
        id,
    }))
}

/// Walks `root` depth first in key order and sends batches to `tx`; stops
/// early when the receiver is gone.
fn walk(dir: &LocalDir, side: Side, tx: &mpsc::Sender<Result<Vec<ObjectMeta>>>) {
    let mut stale = Vec::new();
    walk_tree(dir.root(), side, tx, &mut stale);
    *dir.stale.lock().unwrap_or_else(|e| e.into_inner()) = stale;
}

fn walk_tree(
    root: &FsPath,
    side: Side,
    tx: &mpsc::Sender<Result<Vec<ObjectMeta>>>,
    stale: &mut Vec<PathBuf>,
) {
    let send = |item| tx.blocking_send(item).is_ok();
    let mut batch = Vec::with_capacity(LIST_BATCH);
    let mut stack = match read_level(root, String::new(), side, stale) {
        Ok(level) => level.into_iter().collect::<Vec<_>>(),
        Err(e) => {
            send(Err(e));
            return;
        }
    };
    while let Some(level) = stack.last_mut() {
        let Some(node) = level.nodes.next() else {
            stack.pop();
            continue;
        };
        let mut key = String::with_capacity(level.prefix.len() + node.name.len());
        key.push_str(&level.prefix);
        key.push_str(&node.name);
        if node.dir {
            let path = node.entry.path();
            match read_level(&path, key, side, stale) {
                Ok(Some(next)) => {
                    if stack.iter().any(|l| l.id == next.id) {
                        let loop_error = io::Error::other("a symbolic link loops");
                        send(Err(list_error(side, &path, loop_error)));
                        return;
                    }
                    stack.push(next);
                }
                Ok(None) => {}
                Err(e) => {
                    send(Err(e));
                    return;
                }
            }
            continue;
        }
        let md = match node.followed {
            Some(md) => *md,
            None => match node.entry.metadata() {
                Ok(md) => md,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    send(Err(list_error(side, &node.entry.path(), e)));
                    return;
                }
            },
        };
        let location = match Path::parse(&key) {
            Ok(location) => location,
            Err(e) => {
                let invalid = io::Error::new(io::ErrorKind::InvalidData, e.to_string());
                send(Err(list_error(side, &node.entry.path(), invalid)));
                return;
            }
        };
        batch.push(object_meta(location, &md));
        if batch.len() == LIST_BATCH
            && !send(Ok(std::mem::replace(
                &mut batch,
                Vec::with_capacity(LIST_BATCH),
            )))
        {
            return;
        }
    }
    if !batch.is_empty() {
        send(Ok(batch));
    }
}

// --- reading and writing ------------------------------------------------------

/// Threads for the blocking work of one run (copies and hashes of files).
/// Jobs queue up and a thread takes the next one without going to sleep,
/// where `spawn_blocking` wakes a pool thread for every job: with small
/// files, those wake-ups (three context switches per file) cost more than
/// the copies. The threads end when the pool is dropped.
pub(crate) struct Threads {
    jobs: std::sync::mpsc::Sender<Job>,
}

type Job = Box<dyn FnOnce(&tokio::runtime::Handle) + Send>;

impl Threads {
    /// `count` threads (at least one); call within a Tokio runtime.
    pub(crate) fn new(count: usize) -> Self {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let queue = Arc::new(std::sync::Mutex::new(queue));
        let runtime = tokio::runtime::Handle::current();
        for _ in 0..count.max(1) {
            let queue = Arc::clone(&queue);
            let runtime = runtime.clone();
            std::thread::spawn(move || {
                loop {
                    let job = match queue.lock() {
                        Ok(queue) => queue.recv(),
                        Err(_) => return,
                    };
                    match job {
                        Ok(job) => job(&runtime),
                        Err(_) => return,
                    }
                }
            });
        }
        Self { jobs }
    }

    /// Runs `job` on one of the threads.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&tokio::runtime::Handle) -> T + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |runtime| {
            let _ = tx.send(job(runtime));
        });
        let gone = || Error::Task {
            reason: "the file threads are gone".into(),
        };
        self.jobs.send(job).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }
}

/// What a blocking read or copy needs from the run.
pub(crate) struct Io<'a> {
    pub(crate) limiter: Option<&'a RateLimiter>,
    /// Where the limiter's waits run (outside of a runtime's threads).
    pub(crate) runtime: Option<&'a tokio::runtime::Handle>,
    /// Called with each block's size once it was read (and written).
    pub(crate) on_bytes: &'a (dyn Fn(u64) + Send + Sync),
    /// Set when the run is cancelled: stop at the next block.
    pub(crate) cancelled: &'a AtomicBool,
}

impl Io<'_> {
    fn throttle(&self, n: usize) {
        if let Some(limiter) = self.limiter {
            match self.runtime {
                Some(runtime) => runtime.block_on(limiter.acquire(n as u64)),
                None => tokio::runtime::Handle::current().block_on(limiter.acquire(n as u64)),
            }
        }
    }

    fn check_cancelled(&self) -> io::Result<()> {
        if self.cancelled.load(Ordering::Relaxed) {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "cancelled"));
        }
        Ok(())
    }
}

/// Sets a flag when dropped: a blocking task cannot be aborted, so an
/// async caller that is cancelled tells it to stop this way.
pub(crate) struct CancelOnDrop(pub(crate) Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// What reading a file established.
#[derive(Debug)]
pub(crate) struct ReadFile {
    pub(crate) sha256: String,
    /// The version read (from `fstat` before and after the read).
    pub(crate) meta: ObjectMeta,
}

/// Reads `path` to its end through SHA-256, passing each block to `sink`;
/// fails when the file changed during the read (another size or version
/// afterwards) or held another number of bytes than its size.
fn read_through(
    path: &FsPath,
    key: &Path,
    side: Side,
    io: &Io<'_>,
    mut sink: impl FnMut(&[u8]) -> Result<()>,
) -> Result<ReadFile> {
    let name = key.as_ref();
    let mut file = File::open(path).map_err(|e| io_error(side, name, "reading", e))?;
    let before = file
        .metadata()
        .map_err(|e| io_error(side, name, "reading", e))?;
    let meta = object_meta(key.clone(), &before);
    let size = meta.size;
    // One byte more than the size, so that growth is noticed.
    let want = size.saturating_add(1);
    let mut buf = vec![0u8; usize::try_from(want).map_or(BLOCK, |w| w.min(BLOCK))];
    let mut sha = Sha256::new();
    let mut read = 0u64;
    loop {
        io.check_cancelled()
            .map_err(|e| io_error(side, name, "reading", e))?;
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_error(side, name, "reading", e)),
        };
        read += n as u64;
        if read > size {
            break;
        }
        io.throttle(n);
        sha.update(&buf[..n]);
        sink(&buf[..n])?;
        (io.on_bytes)(n as u64);
    }
    if read != size {
        return Err(Error::SizeMismatch {
            side,
            key: name.to_string(),
            expected: size,
            read,
        });
    }
    let after = file
        .metadata()
        .map_err(|e| io_error(side, name, "reading", e))?;
    if !crate::state::same_version(&meta, &object_meta(key.clone(), &after)) {
        return Err(Error::Changed {
            side,
            key: name.to_string(),
        });
    }
    Ok(ReadFile {
        sha256: hex::encode(sha.finalize()),
        meta,
    })
}

/// Hashes a file (blocking).
pub(crate) fn hash_file(dir: &LocalDir, key: &Path, side: Side, io: &Io<'_>) -> Result<ReadFile> {
    let path = dir.path_of(key)?;
    read_through(&path, key, side, io, |_| Ok(()))
}

/// A copy made by [`copy_file`].
#[derive(Debug)]
pub(crate) struct CopiedFile {
    pub(crate) read: ReadFile,
    /// The new target object's ETag.
    pub(crate) target_e_tag: String,
}

/// Copies `key` from one directory to another (blocking): read, hash and
/// write in blocks, then check and rename into place. The target file
/// appears only when the whole source version was read unchanged (and,
/// with `reread`, read a second time with the same digest).
pub(crate) fn copy_file(
    from: &LocalDir,
    to: &LocalDir,
    key: &Path,
    reread: bool,
    io: &Io<'_>,
) -> Result<CopiedFile> {
    let source = from.path_of(key)?;
    let dest = to.path_of(key)?;
    let name = key.as_ref();
    let mut writer =
        StagedFile::create(dest).map_err(|e| io_error(Side::Target, name, "writing", e))?;
    let read = read_through(&source, key, Side::Source, io, |block| {
        writer
            .write_all(block)
            .map_err(|e| io_error(Side::Target, name, "writing", e))
    })?;
    if reread {
        let again = read_through(&source, key, Side::Source, io, |_| Ok(()))?;
        if again.sha256 != read.sha256 || !crate::state::same_version(&read.meta, &again.meta) {
            return Err(Error::DigestMismatch {
                side: Side::Source,
                key: name.to_string(),
                expected: format!("sha256:{}", again.sha256),
                actual: format!("sha256:{}", read.sha256),
            });
        }
    }
    let md = writer
        .commit()
        .map_err(|e| io_error(Side::Target, name, "writing", e))?;
    Ok(CopiedFile {
        read,
        target_e_tag: etag(md.ino(), md.modified().unwrap_or(UNIX_EPOCH), md.len()),
    })
}

/// A file being written next to its final name (`<name>#<digits>`, which
/// no listing shows); renamed into place by [`StagedFile::commit`],
/// removed when dropped uncommitted.
pub(crate) struct StagedFile {
    file: Option<File>,
    staged: PathBuf,
    dest: PathBuf,
    written: u64,
    /// Bytes up to here were handed to writeback ([`WRITEBACK`]).
    kicked: u64,
}

/// A large file's writes are handed to writeback in steps of this size
/// (`posix_fadvise(DONTNEED)` starts writing the dirty range out without
/// waiting), so that the durability point of a checkpoint waits for the
/// tail only, and the copies do not crowd the page cache.
const WRITEBACK: u64 = 8 * 1024 * 1024;

static STAGED: AtomicU64 = AtomicU64::new(0);

impl StagedFile {
    pub(crate) fn create(dest: PathBuf) -> io::Result<Self> {
        let mut made_parents = false;
        loop {
            let n = STAGED.fetch_add(1, Ordering::Relaxed);
            let mut staged = dest.clone().into_os_string();
            staged.push(format!("#{}{n:06}", std::process::id()));
            let staged = PathBuf::from(staged);
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&staged)
            {
                Ok(file) => {
                    return Ok(Self {
                        file: Some(file),
                        staged,
                        dest,
                        written: 0,
                        kicked: 0,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound && !made_parents => {
                    if let Some(parent) = dest.parent() {
                        fs::create_dir_all(parent)?;
                    }
                    made_parents = true;
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub(crate) fn write_all(&mut self, block: &[u8]) -> io::Result<()> {
        let Some(file) = &mut self.file else {
            return Err(io::Error::other("the staged file was closed"));
        };
        file.write_all(block)?;
        self.written += block.len() as u64;
        #[cfg(target_os = "linux")]
        if self.written - self.kicked >= WRITEBACK {
            use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
            let (offset, len) = (self.kicked, self.written - self.kicked);
            // Advice only: a failure changes nothing but the timing.
            let _ = posix_fadvise(
                &*file,
                i64::try_from(offset).unwrap_or(i64::MAX),
                i64::try_from(len).unwrap_or(0),
                PosixFadviseAdvice::POSIX_FADV_DONTNEED,
            );
            self.kicked = self.written;
        }
        Ok(())
    }

    /// Renames the file into place; returns its metadata (which the rename
    /// does not change).
    pub(crate) fn commit(mut self) -> io::Result<Metadata> {
        let file = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("the staged file was closed"))?;
        let md = file.metadata()?;
        #[cfg(not(target_os = "linux"))]
        file.sync_all()?;
        drop(file);
        fs::rename(&self.staged, &self.dest)?;
        self.staged = PathBuf::new();
        Ok(md)
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        self.file = None;
        if !self.staged.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.staged);
        }
    }
}

/// The ETag of a file written with [`StagedFile`].
pub(crate) fn etag_of(md: &Metadata) -> String {
    etag(md.ino(), md.modified().unwrap_or(UNIX_EPOCH), md.len())
}

/// Makes everything written under `dir` durable (blocking): `syncfs` of
/// its filesystem on Linux; elsewhere every file was synced when it was
/// committed.
pub(crate) fn make_durable(dir: &LocalDir) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let root = File::open(dir.root())?;
        nix::unistd::syncfs(&root).map_err(io::Error::from)?;
    }
    #[cfg(not(target_os = "linux"))]
    let _ = dir;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;
    use object_store::local::LocalFileSystem;
    use object_store::{ObjectStore, ObjectStoreExt};

    fn io_for(cancelled: &AtomicBool) -> Io<'_> {
        Io {
            limiter: None,
            runtime: None,
            on_bytes: &|_| {},
            cancelled,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lists_like_local_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let fs_store = LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        for key in [
            "a.txt",
            "a/x",
            "a/y/z",
            "a0",
            "b-c/d",
            "b.x",
            "b/c",
            "with space/and%percent+plus",
            "ünïcode/ß",
            ".warmspare/sync/state",
            ".warmspare-not-reserved",
        ] {
            fs_store.put(&Path::from(key), "x".into()).await.unwrap();
        }
        // A staged upload, a symbolic link to a file, a broken one.
        std::fs::write(dir.path().join("a/x#1"), "partial").unwrap();
        std::os::unix::fs::symlink(dir.path().join("a.txt"), dir.path().join("link")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("nowhere"), dir.path().join("broken")).unwrap();

        let ours: Vec<ObjectMeta> = list(LocalDir::new(dir.path()), Side::Source)
            .try_collect()
            .await
            .unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(fs_store);
        let mut theirs: Vec<ObjectMeta> = store.list(None).try_collect().await.unwrap();
        theirs.retain(|m| !crate::listing::is_reserved(m.location.as_ref()));
        theirs.sort_by(|a, b| a.location.cmp(&b.location));
        let keys = |v: &[ObjectMeta]| v.iter().map(|m| m.location.to_string()).collect::<Vec<_>>();
        let mut sorted = keys(&ours);
        sorted.sort();
        assert_eq!(keys(&ours), sorted, "in key order");
        let mut ours_by_key = ours.clone();
        ours_by_key.sort_by(|a, b| a.location.cmp(&b.location));
        assert_eq!(ours_by_key, theirs);
        assert!(ours.iter().any(|m| m.location.as_ref() == "link"));
        assert!(!ours.iter().any(|m| m.location.as_ref().contains('#')));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_missing_root_lists_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let listed: Vec<ObjectMeta> = list(LocalDir::new(dir.path().join("no")), Side::Target)
            .try_collect()
            .await
            .unwrap();
        assert!(listed.is_empty());
    }

    #[test]
    fn copies_land_whole_with_the_listed_etag() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (from, to) = (LocalDir::new(a.path()), LocalDir::new(b.path()));
        let bytes: Vec<u8> = (0..3 * BLOCK + 5).map(|i| (i % 251) as u8).collect();
        std::fs::create_dir_all(a.path().join("d")).unwrap();
        std::fs::write(a.path().join("d/k"), &bytes).unwrap();
        let cancelled = AtomicBool::new(false);
        let key = Path::from("d/k");
        let copied = copy_file(&from, &to, &key, true, &io_for(&cancelled)).unwrap();
        assert_eq!(std::fs::read(b.path().join("d/k")).unwrap(), bytes);
        assert_eq!(copied.read.sha256, hex::encode(Sha256::digest(&bytes)));
        assert_eq!(copied.read.meta.size, bytes.len() as u64);
        let md = std::fs::metadata(b.path().join("d/k")).unwrap();
        assert_eq!(copied.target_e_tag, object_meta(key, &md).e_tag.unwrap());
        // Nothing staged is left behind.
        assert_eq!(std::fs::read_dir(b.path().join("d")).unwrap().count(), 1);
    }

    #[test]
    fn a_file_changed_during_its_copy_does_not_land() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (from, to) = (LocalDir::new(a.path()), LocalDir::new(b.path()));
        let source = a.path().join("k");
        std::fs::write(&source, vec![1u8; 3 * BLOCK]).unwrap();
        let cancelled = AtomicBool::new(false);
        for change in ["rewrite", "append", "truncate"] {
            let path = source.clone();
            let changed = AtomicBool::new(false);
            let on_bytes = move |_| {
                if !changed.swap(true, Ordering::Relaxed) {
                    let mut f = OpenOptions::new().write(true).open(&path).unwrap();
                    match change {
                        "rewrite" => {
                            f.write_all(&[2u8; 16]).unwrap();
                            // Another time, whatever the clock's granularity.
                            f.set_modified(SystemTime::now() + Duration::from_secs(5))
                                .unwrap();
                        }
                        "append" => {
                            use std::io::Seek;
                            f.seek(io::SeekFrom::End(0)).unwrap();
                            f.write_all(&[3u8; 10]).unwrap();
                        }
                        _ => f.set_len(BLOCK as u64 + 7).unwrap(),
                    }
                }
            };
            let io = Io {
                limiter: None,
                runtime: None,
                on_bytes: &on_bytes,
                cancelled: &cancelled,
            };
            let err = copy_file(&from, &to, &Path::from("k"), false, &io).unwrap_err();
            assert!(
                matches!(err, Error::Changed { .. } | Error::SizeMismatch { .. }),
                "{change}: {err}"
            );
            assert!(err.is_retryable());
            assert_eq!(std::fs::read_dir(b.path()).unwrap().count(), 0, "{change}");
            std::fs::write(&source, vec![1u8; 3 * BLOCK]).unwrap();
        }
        // Cancelled: stops, nothing lands.
        cancelled.store(true, Ordering::Relaxed);
        assert!(copy_file(&from, &to, &Path::from("k"), false, &io_for(&cancelled)).is_err());
        assert_eq!(std::fs::read_dir(b.path()).unwrap().count(), 0);
    }

    #[test]
    fn staged_names_are_refused_and_vanished_files_are_not_found() {
        let a = tempfile::tempdir().unwrap();
        let dir = LocalDir::new(a.path());
        assert!(matches!(
            dir.path_of(&Path::parse("x#12").unwrap()),
            Err(Error::InvalidKey { .. })
        ));
        assert!(dir.path_of(&Path::parse("x#y").unwrap()).is_ok());
        let cancelled = AtomicBool::new(false);
        let err =
            hash_file(&dir, &Path::from("gone"), Side::Source, &io_for(&cancelled)).unwrap_err();
        assert!(err.is_not_found(), "{err}");
    }

    #[tokio::test]
    async fn stale_staged_files_of_a_target_are_removed_on_request_only() {
        let a = tempfile::tempdir().unwrap();
        fs::create_dir(a.path().join("sub")).unwrap();
        let old = SystemTime::now() - STALE_STAGED - Duration::from_secs(60);
        for name in ["x#123000001", "sub/y#45000002"] {
            let file = File::create(a.path().join(name)).unwrap();
            file.set_modified(old).unwrap();
        }
        // Fresh: a live run's copy in progress.
        fs::write(a.path().join("z#99000003"), b"partial").unwrap();
        // Not a staged name, however old.
        let kept = File::create(a.path().join("w#x")).unwrap();
        kept.set_modified(old).unwrap();

        // A source walk notes nothing.
        let dir = LocalDir::new(a.path());
        let listed: Vec<ObjectMeta> = list(dir.clone(), Side::Source).try_collect().await.unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(dir.remove_stale_staged(), 0);
        assert!(a.path().join("x#123000001").exists());

        // A target walk notes the two old ones; only removing removes.
        let dir = LocalDir::new(a.path());
        let listed: Vec<ObjectMeta> = list(dir.clone(), Side::Target).try_collect().await.unwrap();
        let keys: Vec<String> = listed.iter().map(|m| m.location.to_string()).collect();
        assert_eq!(keys, ["w#x"]);
        assert!(a.path().join("x#123000001").exists());
        assert_eq!(dir.remove_stale_staged(), 2);
        assert!(!a.path().join("x#123000001").exists());
        assert!(!a.path().join("sub/y#45000002").exists());
        assert!(a.path().join("z#99000003").exists());
        assert!(a.path().join("w#x").exists());
        // Taken: a second call removes nothing.
        assert_eq!(dir.remove_stale_staged(), 0);
    }
}
