//! What a run records in the target: the new state record and its
//! checkpoints ([`crate::journal`]).
//!
//! The state record is streamed out in key order as the outcomes come in.
//! A mirror run writes it lazily: while every key so far kept the entry the
//! old record had (a skip by listing alone), nothing is written. The merge
//! ([`Changes`]) notes the first key from which the new record differs (a
//! copy or comparison, a record without an object, an extra object that
//! had one); from there the recorder writes the old record's entries
//! before that key, then the new entries. A no-change pass so reads the
//! record once and writes nothing.
//!
//! Before the state record or a checkpoint names copied objects, the
//! objects are made durable ([`crate::sync::Ctx::make_durable`]); when
//! that fails, the run records nothing more.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;

use crate::journal::Journal;
use crate::state::{self, Header, StateEntry, StateWriter};
use crate::sync::{Ctx, SyncReport};

/// Where a new state record starts to differ from the old one, noted by
/// the merge as it goes (keys come in order).
#[derive(Debug, Default)]
pub(crate) struct Changes {
    changed: AtomicBool,
    /// The smallest key from which the records differ (`""`: from the
    /// start).
    from: Mutex<Option<String>>,
}

impl Changes {
    /// The new record differs from `key` on.
    pub(crate) fn at(&self, key: &str) {
        let mut from = self.from.lock().unwrap_or_else(|p| p.into_inner());
        if from.as_deref().is_none_or(|f| key < f) {
            *from = Some(key.to_string());
        }
        self.changed.store(true, Ordering::Release);
    }

    /// The new record differs from the start.
    pub(crate) fn everywhere(&self) {
        self.at("");
    }

    /// `None` while the record is unchanged, else the key from which it
    /// differs.
    fn from(&self) -> Option<String> {
        if !self.changed.load(Ordering::Acquire) {
            return None;
        }
        self.from.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The state writer and checkpoints of one run.
pub(crate) struct Recorder {
    source: Option<String>,
    started: bool,
    /// Set when the run must record nothing more.
    stopped: bool,
    writer: Option<StateWriter>,
    journal: Option<Journal>,
}

impl Recorder {
    /// A recorder for `ctx`; the state header will name `source`. Without
    /// [`Ctx::changes`] (a restore) the record is written from the start.
    pub(crate) async fn new(ctx: &Ctx, source: Option<String>, report: &mut SyncReport) -> Self {
        let mut recorder = Self {
            source,
            started: false,
            stopped: ctx.options.dry_run,
            writer: None,
            journal: None,
        };
        if ctx.changes.is_none() {
            recorder.start(ctx, "", report).await;
        }
        recorder
    }

    /// Starts the state record (with the old record's entries before
    /// `upto`) and the journal.
    async fn start(&mut self, ctx: &Ctx, upto: &str, report: &mut SyncReport) {
        self.started = true;
        if self.stopped {
            return;
        }
        let every = ctx.options.checkpoint_objects;
        match Journal::start(&ctx.target, self.source.clone(), ctx.last_run, every).await {
            Ok(journal) => self.journal = Some(journal),
            Err(e) => tracing::warn!(error = %e, "no checkpoints in this run"),
        }
        let header = Header::new(self.source.clone(), self.journal.as_ref().map(|j| j.run));
        let mut writer = match StateWriter::create_at(&ctx.target, state::STATE_PATH, header).await
        {
            Ok(writer) => writer,
            Err(e) => {
                report.push_error(e);
                return;
            }
        };
        if !upto.is_empty()
            && let Err(e) = replay(ctx, &mut writer, upto).await
        {
            // The entries before `upto` are lost: costs hashing next time.
            tracing::warn!(error = %e, "the new sync state misses the old entries");
        }
        self.writer = Some(writer);
    }

    /// Records the outcome of the next key (in key order): its entry for
    /// the new state, if any, and whether this run established it (then it
    /// goes into the next checkpoint).
    pub(crate) async fn record(
        &mut self,
        ctx: &Ctx,
        key: &str,
        entry: Option<&StateEntry>,
        new: bool,
        report: &mut SyncReport,
    ) {
        if !self.started {
            let Some(from) = ctx.changes.as_ref().and_then(|c| c.from()) else {
                return;
            };
            // The keys before this one kept their old entries; the merge
            // may have noted a change further on already.
            self.start(ctx, from.as_str().min(key), report).await;
        }
        let Some(entry) = entry else { return };
        if let Some(w) = self.writer.as_mut()
            && let Err(e) = w.write(entry).await
        {
            report.push_error(e);
            if let Some(w) = self.writer.take() {
                w.abort().await;
            }
        }
        if new && let Some(j) = self.journal.as_mut() {
            match j.append(entry).await {
                Ok(false) => {}
                Ok(true) => self.checkpoint(ctx, report).await,
                Err(e) => {
                    tracing::warn!(error = %e, "checkpoints stop for this run");
                    j.abort().await;
                    self.journal = None;
                }
            }
        }
    }

    /// Writes a checkpoint of the pending entries, after making the objects
    /// they name durable. When that fails, nothing more is recorded.
    async fn checkpoint(&mut self, ctx: &Ctx, report: &mut SyncReport) {
        let Some(j) = self.journal.as_mut() else {
            return;
        };
        if !j.has_pending() {
            return;
        }
        if let Err(e) = ctx.make_durable().await {
            report.push_error(e);
            self.stop().await;
            return;
        }
        if let Err(e) = j.checkpoint().await {
            tracing::warn!(error = %e, "checkpoints stop for this run");
            self.journal = None;
        }
    }

    async fn stop(&mut self) {
        self.stopped = true;
        if let Some(mut j) = self.journal.take() {
            j.abort().await;
        }
        if let Some(w) = self.writer.take() {
            w.abort().await;
        }
    }

    /// The run ended early: keeps what it copied in a checkpoint, leaves
    /// the old state record in place.
    pub(crate) async fn fail(mut self, ctx: &Ctx, report: &mut SyncReport) {
        self.checkpoint(ctx, report).await;
        if let Some(w) = self.writer.take() {
            w.abort().await;
        }
    }

    /// The run ended: replaces the state record (when it changed) and
    /// removes the checkpoints it includes.
    pub(crate) async fn finish(mut self, ctx: &Ctx, report: &mut SyncReport) {
        if !self.started
            && let Some(from) = ctx.changes.as_ref().and_then(|c| c.from())
        {
            // Changed after the last key (a record no object takes).
            self.start(ctx, &from, report).await;
        }
        let Some(w) = self.writer.take() else {
            // No record to write (unchanged, or broken): keep what was
            // copied in a checkpoint, and remove the segments the record
            // on the target already includes (left over by a stopped run).
            self.checkpoint(ctx, report).await;
            if !ctx.options.dry_run {
                crate::journal::remove(&ctx.target, &ctx.included).await;
            }
            return;
        };
        if let Err(e) = ctx.make_durable().await {
            report.push_error(e);
            w.abort().await;
            self.stop().await;
            return;
        }
        match w.finish().await {
            Ok(()) => {
                if let Some(j) = self.journal.take() {
                    j.remove_included().await;
                }
            }
            Err(e) => {
                report.push_error(e);
                self.checkpoint(ctx, report).await;
            }
        }
    }
}

/// Copies the old record's entries before `upto` into `writer`.
async fn replay(ctx: &Ctx, writer: &mut StateWriter, upto: &str) -> crate::Result<()> {
    let Some(reader) = state::open(&ctx.target).await? else {
        return Ok(());
    };
    let mut entries = reader.entries;
    while let Some(entry) = entries.next().await {
        let entry = entry?;
        if entry.key.as_str() >= upto {
            break;
        }
        writer.write(&entry).await?;
    }
    Ok(())
}
