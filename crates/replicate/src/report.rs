//! What a mirror run reports: progress events as it goes, and a summary.

use std::sync::Arc;

use crate::error::Error;
use crate::guard::DeleteRefusal;

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
    /// An artifact backup waits for a running prune to finish before it
    /// reads the repository (once per prune waited for): the prune's
    /// activity marker, and how long the marker stays live without being
    /// refreshed (how long a prune that died makes backups wait).
    WaitingForPrune {
        /// The prune's marker (`activity/prune/<id>.json`).
        marker: &'a str,
        /// How long the marker stays live without a refresh.
        stale_after: std::time::Duration,
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

    pub(crate) fn push_error(&mut self, error: Error) {
        if self.errors.len() < MAX_REPORTED_ERRORS {
            self.errors.push(error);
        }
    }
}
