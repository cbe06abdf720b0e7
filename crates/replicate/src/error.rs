//! The crate's error type.

use std::fmt;

/// Which store an error concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Side {
    /// The store objects are read from (the primary's artifacts).
    Source,
    /// The store objects are written to (the spare's artifacts, a restore
    /// target).
    Target,
    /// The warmspare repository (blobs, inventories, recovery points).
    Repository,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Target => "target",
            Side::Repository => "repository",
        })
    }
}

/// Everything that can go wrong in `warmspare-replicate`.
///
/// Variants about one object name it (its key, relative to the store's
/// root) and the side it is on. Messages never contain credentials.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Listing a store failed. Nothing is deleted after a failed listing.
    #[error("listing the {side} failed: {source}")]
    List {
        /// Which store.
        side: Side,
        /// The underlying error.
        #[source]
        source: object_store::Error,
    },

    /// A listing that must be in lexicographic order was not (see
    /// [`crate::ListOrder`]). Nothing is deleted after it.
    #[error(
        "listing the {side} returned {key} after {previous}: the backend does not list in order; \
         use list_order = \"per-directory\""
    )]
    UnsortedListing {
        /// Which store.
        side: Side,
        /// The key before.
        previous: String,
        /// The key out of order.
        key: String,
    },

    /// An operation on one object failed.
    #[error("{operation} {key} on the {side}: {source}")]
    Object {
        /// Which store.
        side: Side,
        /// The object's key.
        key: String,
        /// What was being done ("reading", "writing", "deleting", ...).
        operation: &'static str,
        /// The underlying error.
        #[source]
        source: object_store::Error,
    },

    /// The object changed (or vanished) while it was being read: its
    /// version token or size differs after the read. Retried; never stored
    /// half-old.
    #[error("object {key} changed on the {side} while it was being read")]
    Changed {
        /// Which store.
        side: Side,
        /// The object's key.
        key: String,
    },

    /// A read returned another number of bytes than the object's size.
    #[error("object {key} on the {side}: read {read} bytes, expected {expected}")]
    SizeMismatch {
        /// Which store.
        side: Side,
        /// The object's key.
        key: String,
        /// The size announced by the store.
        expected: u64,
        /// The bytes actually read (at least `expected + 1` when more came).
        read: u64,
    },

    /// Bytes read do not have the digest recorded for them: corruption in
    /// transit or at rest. Never written to a target.
    #[error("object {key} on the {side} is corrupt: expected {expected}, read {actual}")]
    DigestMismatch {
        /// Which store.
        side: Side,
        /// The object's key.
        key: String,
        /// The digest recorded (`sha256:<hex>` or `md5:<hex>`).
        expected: String,
        /// The digest of what was read.
        actual: String,
    },

    /// An error from the repository layer (`warmspare-store`).
    #[error(transparent)]
    Repository(#[from] warmspare_store::Error),

    /// An inventory or recovery point that does not parse or fails its own
    /// integrity check.
    #[error("object {path} in the repository is malformed: {reason}")]
    Corrupt {
        /// The object's path in the repository.
        path: String,
        /// What is wrong with it.
        reason: String,
    },

    /// An inventory or recovery point that does not exist.
    #[error("{what} {id} not found in the repository")]
    NotFound {
        /// "inventory" or "recovery point".
        what: &'static str,
        /// The id asked for.
        id: String,
    },

    /// Invalid options; `reason` names the setting.
    #[error("invalid options: {reason}")]
    InvalidOptions {
        /// What is wrong.
        reason: String,
    },

    /// A key that cannot be written to the target (for example a key under
    /// the reserved `.warmspare/` prefix).
    #[error("object key {key:?} cannot be used: {reason}")]
    InvalidKey {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },

    /// The database half of a recovery point failed (`warmspare-snapshot`).
    #[error("database snapshot: {0}")]
    Snapshot(#[source] warmspare_snapshot::Error),

    /// A background task panicked or was cancelled.
    #[error("a replication task failed: {reason}")]
    Task {
        /// What happened.
        reason: String,
    },
}

impl From<warmspare_snapshot::Error> for Error {
    fn from(e: warmspare_snapshot::Error) -> Self {
        Self::Snapshot(e)
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether trying the same operation again may succeed: transport
    /// trouble, throttling, a source that changed under the read, a
    /// truncated or corrupted transfer. Permanent conditions (not found,
    /// bad options, a malformed inventory) are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::List { source, .. } | Self::Object { source, .. } => {
                store_error_is_retryable(source)
            }
            Self::Changed { .. } | Self::SizeMismatch { .. } | Self::DigestMismatch { .. } => true,
            Self::Repository(e) => e.is_retryable(),
            Self::Snapshot(e) => e.is_retryable(),
            Self::UnsortedListing { .. }
            | Self::Corrupt { .. }
            | Self::NotFound { .. }
            | Self::InvalidOptions { .. }
            | Self::InvalidKey { .. }
            | Self::Task { .. } => false,
        }
    }

    /// Whether the error says the object does not exist.
    pub fn is_not_found(&self) -> bool {
        match self {
            Self::Object { source, .. } => matches!(source, object_store::Error::NotFound { .. }),
            Self::NotFound { .. } => true,
            Self::Repository(warmspare_store::Error::NotFound { .. }) => true,
            _ => false,
        }
    }

    pub(crate) fn object(
        side: Side,
        key: impl Into<String>,
        operation: &'static str,
        source: object_store::Error,
    ) -> Self {
        Self::Object {
            side,
            key: key.into(),
            operation,
            source,
        }
    }
}

fn store_error_is_retryable(error: &object_store::Error) -> bool {
    // Transport failures and 5xx answers that survived object_store's own
    // retries surface as `Generic`; a join error is a runtime problem.
    matches!(error, object_store::Error::Generic { .. })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_object_and_classify() {
        let e = Error::object(
            Side::Target,
            "a/b.hart",
            "writing",
            object_store::Error::Generic {
                store: "S3",
                source: "connection reset".into(),
            },
        );
        let text = e.to_string();
        assert!(text.starts_with("writing a/b.hart on the target"), "{text}");
        assert!(!text.ends_with('.'));
        assert!(e.is_retryable());
        let e = Error::Changed {
            side: Side::Source,
            key: "k".into(),
        };
        assert!(e.is_retryable());
        let e = Error::InvalidOptions {
            reason: "concurrency must be at least 1".into(),
        };
        assert!(!e.is_retryable());
    }
}
