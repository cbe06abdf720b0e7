//! The mirror: [`sync()`] makes a target store hold what a source store
//! holds, copying only what changed, verified, in bounded memory.
//!
//! # How one run goes
//!
//! 1. Both stores are listed in key order ([`crate::listing`]) and merged
//!    with the target's state record ([`crate::state`]); each key gets a
//!    plan from a pure function:
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
//! 3. The state record is completed (atomically replacing the old one).
//! 4. Deletions, only when asked, only after every copy succeeded, and only
//!    within the guards ([`DeleteRefusal`]).
//!
//! Memory: the two listings (one page, or the directories on the current
//! path), the state reader (one 1 MiB range), the window of
//! `16 × concurrency` pending keys, upload buffers within `buffer_memory`,
//! and at most `max_delete` deletion candidates (100,000 with `force`;
//! further candidates are left for the next run).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use futures::stream::{self, StreamExt};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use tokio::sync::Semaphore;

use crate::error::{Error, Result, Side};
use crate::guard::{self, DeleteRefusal, Limits};
use crate::limit::{Budget, RateLimiter};
use crate::listing::sorted_listing;
use crate::merge::{self, Pair};
use crate::options::SyncOptions;
use crate::state::{self, StateEntry, StateWriter, Token};
use crate::transfer::{Attempts, CopyRequest, Mover, Task};

/// Deletion candidates kept with `force` (the rest wait for the next run).
const FORCE_DELETE_BATCH: u64 = 100_000;
/// Errors kept in a report (all are counted).
pub(crate) const MAX_REPORTED_ERRORS: usize = 100;

/// Progress of a run, in the order things happen for each key.
#[derive(Debug)]
#[non_exhaustive]
pub enum SyncEvent<'a> {
    /// A source object was listed.
    Listed {
        /// Its key.
        key: &'a str,
        /// Its size.
        size: u64,
    },
    /// An object was copied (or would be, in a dry run).
    Copied {
        /// Its key.
        key: &'a str,
        /// Its size.
        size: u64,
    },
    /// An object was already up to date.
    Skipped {
        /// Its key.
        key: &'a str,
    },
    /// An object exists only on the target (a deletion candidate; deleted
    /// later only with `delete`).
    Extra {
        /// Its key.
        key: &'a str,
    },
    /// A target object was deleted (or would be, in a dry run).
    Deleted {
        /// Its key.
        key: &'a str,
    },
    /// Body bytes written to the target since the last event.
    Bytes(u64),
    /// An attempt failed and will be retried.
    Retrying {
        /// The object's key.
        key: &'a str,
        /// The attempt that failed (1 for the first).
        attempt: u32,
        /// Why.
        error: &'a Error,
    },
    /// An object failed for good in this run.
    Failed {
        /// The object's key.
        key: &'a str,
        /// Why.
        error: &'a Error,
    },
}

/// A progress callback shared by the workers of a run.
pub type ProgressFn = Arc<dyn Fn(&SyncEvent<'_>) + Send + Sync>;

/// What a run did.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct SyncReport {
    /// Objects listed on the source.
    pub listed: u64,
    /// Objects listed on the target (before the run).
    pub target_listed: u64,
    /// Objects copied (planned, in a dry run).
    pub copied: u64,
    /// Objects already up to date.
    pub skipped: u64,
    /// Objects deleted from the target (planned, in a dry run).
    pub deleted: u64,
    /// Objects only on the target (deletion candidates).
    pub extra: u64,
    /// Objects whose bodies were read to compare digests.
    pub hashed: u64,
    /// Objects that disappeared from the source during the run.
    pub vanished: u64,
    /// Bytes copied (planned, in a dry run).
    pub bytes: u64,
    /// Body bytes read from either store (copies and comparisons).
    pub bytes_read: u64,
    /// Attempts that failed and were retried.
    pub retries: u64,
    /// Objects that failed for good.
    pub failed: u64,
    /// Wall time of the run.
    pub seconds: f64,
    /// The first errors (at most 100; `failed` counts them all), each
    /// naming its object.
    pub errors: Vec<Error>,
    /// Why deletions were not done, when they were not.
    pub delete_refused: Option<DeleteRefusal>,
    /// Deletion candidates left for a later run (beyond the batch kept).
    pub delete_deferred: u64,
    /// Whether this was a dry run.
    pub dry_run: bool,
}

impl SyncReport {
    /// Whether everything that was asked for was done.
    pub fn is_success(&self) -> bool {
        self.failed == 0 && self.errors.is_empty() && self.delete_refused.is_none()
    }

    fn push_error(&mut self, error: Error) {
        if self.errors.len() < MAX_REPORTED_ERRORS {
            self.errors.push(error);
        }
    }
}

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
    Vanished {
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
    options.validate()?;
    let started = tokio::time::Instant::now();
    let (recorded_source, entries) = match open_state(target, options).await? {
        Some(reader) => (reader.source, reader.entries),
        None => (None, stream::empty().boxed()),
    };
    let trust_source = recorded_source == options.source_id;
    let ctx = Ctx::new(source, target, options, Arc::new(progress), trust_source);
    let items = merge::attach(
        merge::merge_sorted(
            sorted_listing(Arc::clone(source), Side::Source, options.list_order),
            sorted_listing(Arc::clone(target), Side::Target, options.list_order),
        ),
        entries,
        Box::new(|e| tracing::warn!(error = %e, "ignoring the rest of the sync state")),
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
        let bytes_progress = Arc::clone(&progress);
        Arc::new(Ctx {
            source: Arc::clone(source),
            target: Arc::clone(target),
            options: options.clone(),
            mover: Mover {
                limiter: options.bwlimit.map(|r| Arc::new(RateLimiter::new(r))),
                budget: Budget::new(options.buffer_memory),
                part_size: options.part_size,
                on_bytes: Arc::new(move |n| bytes_progress(&SyncEvent::Bytes(n))),
            },
            workers: Semaphore::new(options.concurrency),
            progress,
            trust_source,
            hashed: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        })
    }
}

/// The consuming half of a run, shared by the mirror and the restore:
/// takes the outcomes in key order (running up to a window of them at
/// once), counts them, streams the new state record out, then deletes
/// within the guards. The state header names `state_source`.
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
    let mut writer = match options.dry_run {
        true => None,
        false => Some(StateWriter::create(&ctx.target, state_source).await?),
    };
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
        let record = match outcome {
            Outcome::Fatal(e) => {
                fatal = Some(e);
                break;
            }
            Outcome::Copied { key, size, entry } => {
                report.copied += 1;
                report.bytes += size;
                (ctx.progress)(&SyncEvent::Copied { key: &key, size });
                entry
            }
            Outcome::Skipped { key, entry } => {
                report.skipped += 1;
                (ctx.progress)(&SyncEvent::Skipped { key: &key });
                Some(entry)
            }
            Outcome::Vanished { keep } => {
                report.vanished += 1;
                keep
            }
            Outcome::Failed { key, error, keep } => {
                report.failed += 1;
                (ctx.progress)(&SyncEvent::Failed {
                    key: &key,
                    error: &error,
                });
                report.push_error(error);
                keep
            }
            Outcome::Extra(path) => {
                report.extra += 1;
                (ctx.progress)(&SyncEvent::Extra { key: path.as_ref() });
                if (candidates.len() as u64) < keep_candidates {
                    candidates.push(path);
                }
                None
            }
        };
        if let (Some(w), Some(entry)) = (writer.as_mut(), record)
            && let Err(e) = w.write(&entry).await
        {
            report.push_error(e);
            if let Some(w) = writer.take() {
                w.abort().await;
            }
        }
    }
    drop(outcomes);
    if let Some(e) = fatal {
        if let Some(w) = writer.take() {
            w.abort().await;
        }
        return Err(e);
    }
    if let Some(w) = writer.take()
        && let Err(e) = w.finish().await
    {
        report.push_error(e);
    }

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
    let outcome = match plan(pair, entry, ctx.trust_source, ctx.options.rehash) {
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
    let Ok(_worker) = ctx.workers.acquire().await else {
        return Outcome::Fatal(Error::Task {
            reason: "the worker pool was closed".into(),
        });
    };
    let (source, keep) = match work {
        Plan::Copy { source, keep } => (source, keep),
        Plan::Compare {
            source,
            target,
            known,
        } => match compare(ctx, &source, &target, known.as_ref()).await {
            Ok(Some(entry)) => {
                return Outcome::Skipped {
                    key: entry.key.clone(),
                    entry,
                };
            }
            Ok(None) => (source, known),
            Err(e) if e.is_not_found() => return Outcome::Vanished { keep: known },
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
    let copied = retrying(ctx, &key, || async {
        let request = CopyRequest {
            source: &ctx.source,
            source_side: Side::Source,
            key: &source.location,
            target: &ctx.target,
            target_side: Side::Target,
            target_key: &source.location,
            expect_sha256: None,
            check_unchanged: true,
            verify: ctx.options.verify,
            create: false,
        };
        ctx.mover.copy(&request, &attempts).await
    })
    .await;
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
        Err(e) if e.is_not_found() => Outcome::Vanished { keep },
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
    let read = retrying(ctx, &key, || {
        ctx.mover.hash(&ctx.source, &source.location, Side::Source)
    })
    .await?;
    ctx.hashed.fetch_add(1, Ordering::Relaxed);
    ctx.bytes_read.fetch_add(read.meta.size, Ordering::Relaxed);
    let (target_sha, target_token) = match known {
        Some(e) => (e.sha256.clone(), e.target.clone()),
        None => {
            let t = retrying(ctx, &key, || {
                ctx.mover.hash(&ctx.target, &target.location, Side::Target)
            })
            .await?;
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
