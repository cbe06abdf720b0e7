//! The mirror: [`sync()`] makes a target store hold what a source store
//! holds, copying only what changed, verified, in bounded memory.
//!
//! # How one run goes
//!
//! 1. Both stores are listed in key order, each on its own task a few
//!    batches ahead ([`crate::listing`]; a `file://` [`Endpoint::local`]
//!    directory is walked directly), and merged with the target's state
//!    record ([`crate::state`]); each key gets a plan from a pure function:
//!    * only on the source, or sizes differ: **copy**;
//!    * on both, and the state says the target holds the bytes of the
//!      source version listed now: **skip** without reading anything;
//!    * on both with the same size otherwise: **compare** by hashing (the
//!      source; the target too when the state does not know its digest),
//!      then skip or copy;
//!    * only on the target: a deletion candidate.
//! 2. Copies and comparisons run on up to `concurrency` workers, each
//!    retried on retryable errors; outcomes come back in key order (a
//!    bounded window) so that the new state record streams out sorted.
//!    What the run establishes is checkpointed every `checkpoint_objects`
//!    objects (module `journal`), so that a killed run does not read it
//!    again.
//! 3. The state record is completed (atomically replacing the old one),
//!    unless it did not change: a no-change pass writes nothing
//!    (module `recorder`). On a directory target the copies are made
//!    durable first, once per checkpoint (`syncfs`), not per object.
//! 4. Deletions, only when asked, only after every copy succeeded, and only
//!    within the guards ([`crate::DeleteRefusal`]).
//!
//! # Stopping a run
//!
//! A run stops when its future is dropped (an agent cancelling a job, a
//! `select!` with a deadline). Every write of the run to the target
//! (copies through the store, checkpoints, the state record, deletions)
//! passes a gate that the dropped future closes: no write starts after
//! the drop. A write that had started is not abandoned half-way: it runs
//! to its end on its own task (an upload completes or fails as a whole),
//! so that after a drop the run may still complete, for about one
//! request's time, at most one object per worker, one checkpoint or the
//! state record, and the deletions in flight. [`sync_endpoints_until`]
//! stops a run and returns only once these writes have ended, so that the
//! next run starts on a quiet target. A copy between directories
//! ([`Endpoint::local`]) runs on a file thread: it stops at its next block
//! (1 MiB) once its worker is aborted, and is waited for likewise.
//!
//! After a plain drop the next run is still correct, only slower: it
//! numbers its checkpoints after every run it saw, ignores the checkpoints
//! of older runs once its state record is in place and removes them (those
//! written late too, at the latest in the run after), and an object or a
//! checkpoint that a dropped run writes late never makes it skip a copy:
//! an object rewritten late no longer matches its recorded version token,
//! so it is hashed again, and every checkpointed entry is checked against
//! the listings before it is trusted.
//!
//! Memory: the two listings (a few batches of 512, plus one page or the
//! directories on the current path), the state reader (one 1 MiB range),
//! the window of `16 × concurrency` pending keys, copy and upload buffers
//! within `buffer_memory`, and at most `max_delete` deletion candidates
//! (100,000 with `force`; further candidates are left for the next run).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use futures::stream::{self, StreamExt};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use tokio::sync::Semaphore;

pub use crate::endpoint::Endpoint;
use crate::error::{Error, Result, Side};
use crate::guard::{self, Limits};
use crate::journal::Segment;
use crate::limit::{Budget, RateLimiter};
use crate::listing::ahead;
use crate::local::{LocalDir, Threads};
use crate::merge::{self, Pair};
use crate::options::SyncOptions;
use crate::recorder::{Changes, Recorder};
pub use crate::report::{ProgressFn, SyncEvent, SyncReport};
use crate::state::{self, StateEntry, Token};
use crate::transfer::{Attempts, CloseOnDrop, Gate, GatedStore, Mover, PartPool, Task};

/// Deletion candidates kept with `force` (the rest wait for the next run).
const FORCE_DELETE_BATCH: u64 = 100_000;
pub(crate) use crate::report::MAX_REPORTED_ERRORS;

/// What to do with one key (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Plan {
    Copy {
        source: ObjectMeta,
        keep: Option<StateEntry>,
    },
    Skip(StateEntry),
    Compare {
        source: ObjectMeta,
        target: ObjectMeta,
        /// The target's digest, when the state knows it.
        known: Option<StateEntry>,
    },
    Extra(ObjectMeta),
}

/// Decides what to do with one merged key. `trust_source` says whether the
/// state's source tokens are for this source; `rehash` ignores the state.
pub(crate) fn plan(
    pair: Pair<ObjectMeta, ObjectMeta>,
    entry: Option<StateEntry>,
    trust_source: bool,
    rehash: bool,
) -> Plan {
    match pair {
        Pair::Left(source) => Plan::Copy { source, keep: None },
        Pair::Right(target) => Plan::Extra(target),
        Pair::Both(source, target) => {
            let known = entry.filter(|e| !rehash && e.describes_target(&target));
            if source.size != target.size {
                return Plan::Copy {
                    source,
                    keep: known,
                };
            }
            match known {
                Some(e) if trust_source && e.source_unchanged(&source) => Plan::Skip(e),
                known => Plan::Compare {
                    source,
                    target,
                    known,
                },
            }
        }
    }
}

/// The result of one key.
pub(crate) enum Outcome {
    Copied {
        key: String,
        size: u64,
        entry: Option<StateEntry>,
    },
    Skipped {
        key: String,
        entry: StateEntry,
    },
    /// Up to date, established by hashing (recorded at the next
    /// checkpoint).
    Verified {
        key: String,
        entry: StateEntry,
    },
    Vanished {
        key: String,
        keep: Option<StateEntry>,
    },
    Failed {
        key: String,
        error: Error,
        keep: Option<StateEntry>,
    },
    Extra(Path),
    Fatal(Error),
}

pub(crate) struct Ctx {
    pub(crate) source: Arc<dyn ObjectStore>,
    pub(crate) target: Arc<dyn ObjectStore>,
    pub(crate) options: SyncOptions,
    pub(crate) mover: Mover,
    pub(crate) workers: Semaphore,
    pub(crate) progress: ProgressFn,
    /// Whether the state's source tokens were recorded for this source.
    pub(crate) trust_source: bool,
    pub(crate) hashed: AtomicU64,
    pub(crate) bytes_read: AtomicU64,
    pub(crate) retries: AtomicU64,
    /// The source's directory, when it is read directly.
    pub(crate) source_dir: Option<LocalDir>,
    /// The target's directory, when it is written directly.
    pub(crate) target_dir: Option<LocalDir>,
    /// Whether files were written to `target_dir` since it was last made
    /// durable.
    pub(crate) target_dirty: AtomicBool,
    /// Bytes copied into `target_dir` since the last background writeback.
    pub(crate) unflushed: AtomicU64,
    /// Whether a background writeback runs.
    pub(crate) flushing: Arc<AtomicBool>,
    /// Threads for the work on directories (when an endpoint is one).
    pub(crate) threads: Option<Threads>,
    /// The newest checkpointed run the state reader saw.
    pub(crate) last_run: u64,
    /// Where the new state starts to differ from the old one; `None`: write
    /// the whole state (see module `recorder`).
    pub(crate) changes: Option<Arc<Changes>>,
    /// Checkpoint segments that the state record already includes, found
    /// when it was opened: removed at the end of the run.
    pub(crate) included: Vec<Segment>,
}

/// Mirrors `source` into `target` (see the module docs of [`mod@crate::sync`]
/// for the algorithm and [`SyncOptions`] for the knobs). Keys under
/// `.warmspare/` are reserved on both sides: the target keeps its state
/// record there.
///
/// `Err` means the run could not complete (a listing failed, the state
/// could not be read): nothing was deleted. Per-object failures and
/// refused deletions are in the report ([`SyncReport::is_success`]).
pub async fn sync(
    source: &Arc<dyn ObjectStore>,
    target: &Arc<dyn ObjectStore>,
    options: &SyncOptions,
    progress: impl Fn(&SyncEvent<'_>) + Send + Sync + 'static,
) -> Result<SyncReport> {
    let (source, target) = (
        Endpoint::new(Arc::clone(source)),
        Endpoint::new(Arc::clone(target)),
    );
    sync_endpoints(&source, &target, options, progress).await
}

/// [`sync()`] between two [`Endpoint`]s: with [`Endpoint::local`] the
/// mirror lists, reads and writes a `file://` store's directory directly.
///
/// Dropping the future stops the run (see "Stopping a run" in the module
/// docs); [`sync_endpoints_until`] stops it and waits until its writes
/// ended.
pub async fn sync_endpoints(
    source: &Endpoint,
    target: &Endpoint,
    options: &SyncOptions,
    progress: impl Fn(&SyncEvent<'_>) + Send + Sync + 'static,
) -> Result<SyncReport> {
    run(source, target, options, progress, Gate::default()).await
}

/// [`sync_endpoints`] that stops when `stop` completes first, and then
/// returns only once the run has stopped writing to the target: no write
/// starts after `stop` completed, and the writes already started (at most
/// one per worker, a checkpoint or the state record, the deletions in
/// flight) have ended, landed or failed. A stopped run returns
/// [`Error::Task`]; what it checkpointed is not read again by the next run.
///
/// For callers that cancel runs (an agent's job): the next run then cannot
/// see a write of the stopped one land under it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use warmspare_replicate::object_store::{ObjectStore, local::LocalFileSystem};
/// use warmspare_replicate::sync_endpoints_until;
/// use warmspare_replicate::{Endpoint, SyncEvent, SyncOptions};
///
/// let (a, b) = (tempfile::tempdir()?, tempfile::tempdir()?);
/// let primary: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(a.path())?);
/// let spare: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(b.path())?);
/// let cancel = tokio::sync::Notify::new();
/// cancel.notify_one(); // the job was cancelled before it ran
/// let stopped = sync_endpoints_until(
///     &Endpoint::new(primary),
///     &Endpoint::new(spare),
///     &SyncOptions::default(),
///     |_: &SyncEvent<'_>| {},
///     cancel.notified(),
/// )
/// .await;
/// assert!(stopped.is_err());
/// # Ok(())
/// # }
/// ```
pub async fn sync_endpoints_until(
    source: &Endpoint,
    target: &Endpoint,
    options: &SyncOptions,
    progress: impl Fn(&SyncEvent<'_>) + Send + Sync + 'static,
    stop: impl std::future::Future<Output = ()>,
) -> Result<SyncReport> {
    let gate = Gate::default();
    let running = Box::pin(run(source, target, options, progress, gate.clone()));
    match futures::future::select(running, Box::pin(stop)).await {
        futures::future::Either::Left((report, _)) => report,
        futures::future::Either::Right(((), running)) => {
            // Closes the gate and aborts the workers; writes that started
            // run to their end on their own tasks.
            drop(running);
            gate.close();
            gate.idle().await;
            Err(Error::Task {
                reason: "the sync was stopped".into(),
            })
        }
    }
}

async fn run(
    source: &Endpoint,
    target: &Endpoint,
    options: &SyncOptions,
    progress: impl Fn(&SyncEvent<'_>) + Send + Sync + 'static,
    gate: Gate,
) -> Result<SyncReport> {
    let _close = CloseOnDrop(gate.clone());
    options.validate()?;
    let started = tokio::time::Instant::now();
    // Both listings start at once, while the state is opened.
    let listings = (
        source.listing(Side::Source, options.list_order),
        target.listing(Side::Target, options.list_order),
    );
    let changes = Arc::new(Changes::default());
    let (recorded_source, entries, last_run, included) =
        match open_state(target.store(), options).await? {
            Some(reader) => {
                if reader.overlaid {
                    // Fold the checkpoints into a new record.
                    changes.everywhere();
                }
                let entries = ahead(reader.entries);
                (reader.source, entries, reader.last_run, reader.included)
            }
            None => {
                changes.everywhere();
                (None, stream::empty().boxed(), 0, Vec::new())
            }
        };
    let trust_source = recorded_source == options.source_id;
    if !trust_source {
        changes.everywhere();
    }
    // Every write to the target goes through the gate, closed when this
    // future ends or is dropped (see "Stopping a run" above).
    let gated: Arc<dyn ObjectStore> =
        Arc::new(GatedStore::new(Arc::clone(target.store()), gate.clone()));
    let mut ctx = Ctx::unshared(
        source.store(),
        &gated,
        options,
        Arc::new(progress),
        trust_source,
    );
    ctx.included = included;
    // Writes into a directory target pass the gate too.
    ctx.mover.gate = gate;
    ctx.source_dir = source.dir().cloned();
    ctx.target_dir = target.dir().cloned();
    if ctx.source_dir.is_some() || ctx.target_dir.is_some() {
        ctx.threads = Some(Threads::new(file_threads(options.concurrency)));
    }
    ctx.last_run = last_run;
    ctx.changes = Some(Arc::clone(&changes));
    let ctx = Arc::new(ctx);
    let (broken, dropped) = (Arc::clone(&changes), changes);
    let items = merge::attach_tracked(
        merge::merge_sorted(listings.0, listings.1),
        entries,
        Box::new(move |e| {
            tracing::warn!(error = %e, "ignoring the rest of the sync state");
            broken.everywhere();
        }),
        Box::new(move |key| dropped.at(key)),
    );
    let scheduler = Arc::clone(&ctx);
    let outcomes = items.map(move |item| schedule(&scheduler, item)).boxed();
    let mut report = drive(&ctx, outcomes, options.source_id.clone()).await?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

impl Ctx {
    pub(crate) fn new(
        source: &Arc<dyn ObjectStore>,
        target: &Arc<dyn ObjectStore>,
        options: &SyncOptions,
        progress: ProgressFn,
        trust_source: bool,
    ) -> Arc<Self> {
        Arc::new(Self::unshared(
            source,
            target,
            options,
            progress,
            trust_source,
        ))
    }

    fn unshared(
        source: &Arc<dyn ObjectStore>,
        target: &Arc<dyn ObjectStore>,
        options: &SyncOptions,
        progress: ProgressFn,
        trust_source: bool,
    ) -> Self {
        let bytes_progress = Arc::clone(&progress);
        Ctx {
            source: Arc::clone(source),
            target: Arc::clone(target),
            options: options.clone(),
            mover: Mover {
                limiter: options.bwlimit.map(|r| Arc::new(RateLimiter::new(r))),
                budget: Budget::new(options.buffer_memory),
                part_size: options.part_size,
                on_bytes: Arc::new(move |n| bytes_progress(&SyncEvent::Bytes(n))),
                parts: PartPool::default(),
                gate: Gate::default(),
            },
            workers: Semaphore::new(options.concurrency),
            progress,
            trust_source,
            hashed: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            source_dir: None,
            target_dir: None,
            target_dirty: AtomicBool::new(false),
            unflushed: AtomicU64::new(0),
            flushing: Arc::new(AtomicBool::new(false)),
            threads: None,
            last_run: 0,
            changes: None,
            included: Vec::new(),
        }
    }
}

/// The consuming half of a run, shared by the mirror and the restore:
/// takes the outcomes in key order (running up to a window of them at
/// once), counts them, streams the new state record out and checkpoints
/// what the run established (module `journal`), then deletes within the
/// guards. The state header names `state_source`.
pub(crate) async fn drive(
    ctx: &Ctx,
    outcomes: futures::stream::BoxStream<'static, BoxFuture<'static, Scheduled>>,
    state_source: Option<String>,
) -> Result<SyncReport> {
    let options = &ctx.options;
    let mut report = SyncReport {
        dry_run: options.dry_run,
        ..SyncReport::default()
    };
    let mut recorder = Recorder::new(ctx, state_source, &mut report).await;
    let limits = Limits {
        max_delete: options.max_delete,
        max_fraction: options.max_delete_fraction,
        force: options.force,
    };
    let keep_candidates = if options.force {
        FORCE_DELETE_BATCH
    } else {
        options.max_delete
    };
    let mut candidates: Vec<Path> = Vec::new();
    let window = options.concurrency.saturating_mul(16).max(64);
    let mut outcomes = outcomes.buffered(window);
    let mut fatal = None;

    while let Some((in_source, in_target, outcome)) = outcomes.next().await {
        report.listed += u64::from(in_source);
        report.target_listed += u64::from(in_target);
        // The key, its entry for the new state, and whether this run
        // established that entry.
        let (key, record, new) = match outcome {
            Outcome::Fatal(e) => {
                fatal = Some(e);
                break;
            }
            Outcome::Copied { key, size, entry } => {
                report.copied += 1;
                report.bytes += size;
                (ctx.progress)(&SyncEvent::Copied { key: &key, size });
                (key, entry, true)
            }
            Outcome::Skipped { key, entry } => {
                report.skipped += 1;
                (ctx.progress)(&SyncEvent::Skipped { key: &key });
                (key, Some(entry), false)
            }
            Outcome::Verified { key, entry } => {
                report.skipped += 1;
                (ctx.progress)(&SyncEvent::Skipped { key: &key });
                (key, Some(entry), true)
            }
            Outcome::Vanished { key, keep } => {
                report.vanished += 1;
                (key, keep, false)
            }
            Outcome::Failed { key, error, keep } => {
                report.failed += 1;
                (ctx.progress)(&SyncEvent::Failed {
                    key: &key,
                    error: &error,
                });
                report.push_error(error);
                (key, keep, false)
            }
            Outcome::Extra(path) => {
                report.extra += 1;
                (ctx.progress)(&SyncEvent::Extra { key: path.as_ref() });
                let key = path.to_string();
                if (candidates.len() as u64) < keep_candidates {
                    candidates.push(path);
                }
                (key, None, false)
            }
        };
        recorder
            .record(ctx, &key, record.as_ref(), new, &mut report)
            .await;
    }
    drop(outcomes);
    if let Some(e) = fatal {
        recorder.fail(ctx, &mut report).await;
        return Err(e);
    }
    recorder.finish(ctx, &mut report).await;

    report.hashed = ctx.hashed.load(Ordering::Relaxed);
    report.bytes_read = ctx.bytes_read.load(Ordering::Relaxed);
    report.retries = ctx.retries.load(Ordering::Relaxed);
    if options.delete {
        let refusal = guard::check(
            report.extra,
            report.listed,
            report.target_listed,
            report.failed,
            limits,
        );
        match refusal {
            Some(refusal) => report.delete_refused = Some(refusal),
            None => {
                report.delete_deferred = report.extra - candidates.len() as u64;
                delete(ctx, candidates, &mut report).await;
            }
        }
    }
    Ok(report)
}

/// Reads the state record; a corrupt one is ignored (costs hashing), a
/// store that keeps failing fails the run (rather than hashing everything).
pub(crate) async fn open_state(
    target: &Arc<dyn ObjectStore>,
    options: &SyncOptions,
) -> Result<Option<state::StateReader>> {
    if options.rehash {
        return Ok(None);
    }
    let mut attempt = 0;
    loop {
        match state::open(target).await {
            Ok(reader) => return Ok(reader),
            Err(e @ Error::Corrupt { .. }) => {
                tracing::warn!(error = %e, "ignoring the sync state");
                return Ok(None);
            }
            Err(e) if e.is_retryable() && attempt < options.retries => {
                attempt += 1;
                tokio::time::sleep(backoff(attempt)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether the key was on the source, on the target, and its outcome.
pub(crate) type Scheduled = (bool, bool, Outcome);

/// Turns a merged key into its outcome: at once for skips and deletion
/// candidates, on a worker for copies and comparisons.
fn schedule(
    ctx: &Arc<Ctx>,
    item: Result<(Pair<ObjectMeta, ObjectMeta>, Option<StateEntry>)>,
) -> BoxFuture<'static, Scheduled> {
    let (pair, entry) = match item {
        Ok(item) => item,
        Err(e) => return futures::future::ready((false, false, Outcome::Fatal(e))).boxed(),
    };
    let (in_source, in_target) = match &pair {
        Pair::Left(s) => (Some(s), false),
        Pair::Right(_) => (None, true),
        Pair::Both(s, _) => (Some(s), true),
    };
    if let Some(s) = in_source {
        (ctx.progress)(&SyncEvent::Listed {
            key: s.location.as_ref(),
            size: s.size,
        });
    }
    let in_source = in_source.is_some();
    let had_record = entry.is_some();
    let plan = plan(pair, entry, ctx.trust_source, ctx.options.rehash);
    if let Some(changes) = &ctx.changes {
        match &plan {
            Plan::Skip(_) => {}
            Plan::Extra(_) if !had_record => {}
            Plan::Extra(meta)
            | Plan::Copy { source: meta, .. }
            | Plan::Compare { source: meta, .. } => {
                changes.at(meta.location.as_ref());
            }
        }
    }
    let outcome = match plan {
        Plan::Skip(entry) => Outcome::Skipped {
            key: entry.key.clone(),
            entry,
        },
        Plan::Extra(target) => Outcome::Extra(target.location),
        work => {
            let ctx = Arc::clone(ctx);
            let task = Task::spawn(async move { work_on(&ctx, work).await });
            return async move {
                let outcome = task.await.unwrap_or_else(Outcome::Fatal);
                (in_source, in_target, outcome)
            }
            .boxed();
        }
    };
    futures::future::ready((in_source, in_target, outcome)).boxed()
}

/// Threads for copies and hashes of files: twice the CPUs (the work is
/// hashing, with some waiting for the disk), at most `concurrency`.
fn file_threads(concurrency: usize) -> usize {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    concurrency.min(2 * cpus)
}

pub(crate) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100u64 << attempt.min(5))
}

/// Runs `op` with retries on retryable errors.
pub(crate) async fn retrying<T, F, Fut>(ctx: &Ctx, key: &str, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut attempt = 0;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() && attempt < ctx.options.retries => {
                attempt += 1;
                ctx.retries.fetch_add(1, Ordering::Relaxed);
                (ctx.progress)(&SyncEvent::Retrying {
                    key,
                    attempt,
                    error: &e,
                });
                tokio::time::sleep(backoff(attempt)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn work_on(ctx: &Ctx, work: Plan) -> Outcome {
    // Between two directories all the work runs on the file threads (at
    // most `concurrency` of them), which take queued jobs one after the
    // other: a worker permit would only keep the queue short and make each
    // job wait for a wake-up.
    let _worker = match ctx.source_dir.is_some() && ctx.target_dir.is_some() {
        true => None,
        false => match ctx.workers.acquire().await {
            Ok(permit) => Some(permit),
            Err(_) => {
                return Outcome::Fatal(Error::Task {
                    reason: "the worker pool was closed".into(),
                });
            }
        },
    };
    let (source, keep) = match work {
        Plan::Copy { source, keep } => (source, keep),
        Plan::Compare {
            source,
            target,
            known,
        } => match compare(ctx, &source, &target, known.as_ref()).await {
            Ok(Some(entry)) => {
                return Outcome::Verified {
                    key: entry.key.clone(),
                    entry,
                };
            }
            Ok(None) => (source, known),
            Err(e) if e.is_not_found() => {
                return Outcome::Vanished {
                    key: source.location.to_string(),
                    keep: known,
                };
            }
            Err(error) => {
                return Outcome::Failed {
                    key: source.location.to_string(),
                    error,
                    keep: known,
                };
            }
        },
        Plan::Skip(_) | Plan::Extra(_) => return unreachable_plan(),
    };
    let key = source.location.to_string();
    if ctx.options.dry_run {
        return Outcome::Copied {
            key,
            size: source.size,
            entry: None,
        };
    }
    let attempts = Attempts::default();
    let copied = retrying(ctx, &key, || ctx.copy_object(&source, &attempts)).await;
    match copied {
        Ok(copied) => {
            ctx.bytes_read.fetch_add(copied.size, Ordering::Relaxed);
            let target = match copied.target_e_tag {
                Some(e_tag) => Token {
                    e_tag: Some(e_tag),
                    mtime: None,
                },
                None => match ctx.target.head(&source.location).await {
                    Ok(meta) => Token::of(&meta),
                    Err(_) => Token::default(),
                },
            };
            Outcome::Copied {
                key,
                size: copied.size,
                entry: Some(StateEntry {
                    key: source.location.to_string(),
                    size: copied.size,
                    sha256: copied.sha256,
                    target,
                    source: Some(Token::of_read(&source, &copied.source)),
                }),
            }
        }
        Err(e) if e.is_not_found() => Outcome::Vanished { key, keep },
        Err(error) => Outcome::Failed { key, error, keep },
    }
}

fn unreachable_plan() -> Outcome {
    Outcome::Fatal(Error::Task {
        reason: "a skip was scheduled on a worker".into(),
    })
}

/// Hashes what is needed to decide whether `target` already holds
/// `source`'s bytes; `Some(entry)` when it does.
async fn compare(
    ctx: &Ctx,
    source: &ObjectMeta,
    target: &ObjectMeta,
    known: Option<&StateEntry>,
) -> Result<Option<StateEntry>> {
    let key = source.location.to_string();
    let read = retrying(ctx, &key, || ctx.hash_object(Side::Source, source)).await?;
    ctx.hashed.fetch_add(1, Ordering::Relaxed);
    ctx.bytes_read.fetch_add(read.meta.size, Ordering::Relaxed);
    let (target_sha, target_token) = match known {
        Some(e) => (e.sha256.clone(), e.target.clone()),
        None => {
            let t = retrying(ctx, &key, || ctx.hash_object(Side::Target, target)).await?;
            ctx.hashed.fetch_add(1, Ordering::Relaxed);
            ctx.bytes_read.fetch_add(t.meta.size, Ordering::Relaxed);
            (t.sha256, Token::of_read(target, &t.meta))
        }
    };
    if target_sha != read.sha256 || read.meta.size != target.size {
        return Ok(None);
    }
    Ok(Some(StateEntry {
        key,
        size: target.size,
        sha256: target_sha,
        target: target_token,
        source: Some(Token::of_read(source, &read.meta)),
    }))
}

async fn delete(ctx: &Ctx, candidates: Vec<Path>, report: &mut SyncReport) {
    if ctx.options.dry_run {
        for path in &candidates {
            (ctx.progress)(&SyncEvent::Deleted { key: path.as_ref() });
        }
        report.deleted = candidates.len() as u64;
        return;
    }
    let target = &ctx.target;
    let mut results = stream::iter(candidates)
        .map(|path| async move {
            let result = target.delete(&path).await;
            (path, result)
        })
        .buffer_unordered(ctx.options.concurrency);
    while let Some((path, result)) = results.next().await {
        match result {
            Ok(()) => {
                report.deleted += 1;
                (ctx.progress)(&SyncEvent::Deleted { key: path.as_ref() });
            }
            Err(object_store::Error::NotFound { .. }) => {
                tracing::debug!(%path, "already deleted");
            }
            Err(e) => {
                report.failed += 1;
                report.push_error(Error::object(Side::Target, path.to_string(), "deleting", e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(key: &str, size: u64, e_tag: &str) -> ObjectMeta {
        ObjectMeta {
            location: Path::from(key),
            last_modified: Default::default(),
            size,
            e_tag: Some(e_tag.to_string()),
            version: None,
        }
    }

    fn entry(size: u64, target: &str, source: Option<&str>) -> StateEntry {
        let token = |e: &str| Token {
            e_tag: Some(e.to_string()),
            mtime: None,
        };
        StateEntry {
            key: "k".into(),
            size,
            sha256: "ab".repeat(32),
            target: token(target),
            source: source.map(token),
        }
    }

    #[test]
    fn plans() {
        let (s, t) = (meta("k", 3, "s1"), meta("k", 3, "t1"));
        let both = || Pair::Both(s.clone(), t.clone());
        // Known target, same source version: skip without reading.
        let e = entry(3, "t1", Some("s1"));
        assert_eq!(
            plan(both(), Some(e.clone()), true, false),
            Plan::Skip(e.clone())
        );
        // Same, but the record is for another source: compare the source.
        assert!(matches!(
            plan(both(), Some(e.clone()), false, false),
            Plan::Compare { known: Some(_), .. }
        ));
        // A scrub ignores the record.
        assert!(matches!(
            plan(both(), Some(e), true, true),
            Plan::Compare { known: None, .. }
        ));
        // The source changed: compare the source with the known digest.
        let e = entry(3, "t1", Some("s0"));
        assert!(matches!(
            plan(both(), Some(e), true, false),
            Plan::Compare { known: Some(_), .. }
        ));
        // The target changed behind our back: the record is not trusted.
        let e = entry(3, "t0", Some("s1"));
        assert!(matches!(
            plan(both(), Some(e), true, false),
            Plan::Compare { known: None, .. }
        ));
        // No record: compare both sides.
        assert!(matches!(
            plan(both(), None, true, false),
            Plan::Compare { known: None, .. }
        ));
        // Sizes differ: copy, whatever the record says.
        let bigger = Pair::Both(meta("k", 4, "s1"), t.clone());
        assert!(matches!(
            plan(bigger, Some(entry(3, "t1", Some("s1"))), true, false),
            Plan::Copy { .. }
        ));
        // One side only.
        assert!(matches!(
            plan(Pair::Left(s), None, true, false),
            Plan::Copy { keep: None, .. }
        ));
        assert_eq!(
            plan(Pair::Right(t.clone()), None, true, false),
            Plan::Extra(t)
        );
    }
}
