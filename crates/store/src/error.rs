//! The crate's error type.

use std::io;

/// Everything that can go wrong in `warmspare-store`.
///
/// Variants that concern one object carry its path (relative to the
/// repository root), so that an operator can find it. Messages never contain
/// credentials.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid; `reason` says which setting and why.
    #[error("invalid store configuration: {reason}")]
    InvalidConfig {
        /// What is wrong, naming the setting.
        reason: String,
    },

    /// The repository URL has a scheme or shape this crate does not support.
    /// The URL is shown with any userinfo redacted.
    #[error("unsupported repository url {url}: {reason}")]
    UnsupportedUrl {
        /// The URL, credentials redacted.
        url: String,
        /// Why it is not supported.
        reason: String,
    },

    /// A name that cannot be used as an object path (or a snapshot file name).
    #[error("invalid object path {path:?}: {reason}")]
    InvalidPath {
        /// The offending path or name.
        path: String,
        /// Why it is invalid.
        reason: String,
    },

    /// The object does not exist.
    #[error("object {path} not found")]
    NotFound {
        /// The object path.
        path: String,
    },

    /// A create-if-absent write found the object already present.
    #[error("object {path} already exists")]
    AlreadyExists {
        /// The object path.
        path: String,
    },

    /// A conditional update found another version than the expected one (or
    /// no object at all).
    #[error("object {path} changed concurrently: its version is not the expected one")]
    VersionMismatch {
        /// The object path.
        path: String,
    },

    /// The backend kept answering "conflicting concurrent request" (S3 409)
    /// after the bounded number of retries. Retrying later may succeed.
    #[error("object {path}: conditional write kept conflicting with concurrent requests")]
    Conflict {
        /// The object path.
        path: String,
    },

    /// The backend does not support an operation this crate needs.
    #[error("object {path}: {operation} is not supported by this backend")]
    Unsupported {
        /// The object path.
        path: String,
        /// The missing operation.
        operation: String,
    },

    /// The bytes read back do not have the digest recorded when they were
    /// written: the object is corrupt or was replaced.
    #[error("object {path} is corrupt: expected {expected}, found {actual}")]
    DigestMismatch {
        /// The object path.
        path: String,
        /// What was recorded when the object was written.
        expected: String,
        /// What was read.
        actual: String,
    },

    /// An encrypted object failed authentication: a byte of it was altered,
    /// it was truncated, or its segments were reordered. Nothing that failed
    /// authentication was passed on.
    #[error("object {path} failed authentication: {reason}")]
    Authentication {
        /// The object path.
        path: String,
        /// What failed.
        reason: String,
    },

    /// A metadata record (a snapshot manifest, a recovery point) read with
    /// a key is not authenticated by that key: it carries no MAC, its MAC
    /// is by another key, or its MAC does not match its content and path
    /// (altered, or copied from another object). Nothing it says is used.
    #[error("object {path} is not authenticated by this key: {reason}")]
    Unauthenticated {
        /// The object path.
        path: String,
        /// What failed.
        reason: String,
        /// The id of the key whose MAC the record carries, when that is
        /// another key than the configured one (a wrong key, not a record
        /// that cannot be trusted).
        other_key: Option<String>,
    },

    /// The object is encrypted and no key is configured.
    #[error(
        "object {path} is encrypted (key id {key_id}); configure \
         [repository] encryption_key_file with its key to read it"
    )]
    KeyMissing {
        /// The object path.
        path: String,
        /// The id of the key it was encrypted with.
        key_id: String,
    },

    /// The object is encrypted with another key than the configured one.
    #[error(
        "wrong key: object {path} is encrypted with key id {key_id}, \
         the configured key has id {configured}"
    )]
    WrongKey {
        /// The object path.
        path: String,
        /// The id of the key it was encrypted with.
        key_id: String,
        /// The id of the configured key.
        configured: String,
    },

    /// An object that describes its own encoding (a sealed WAL or history
    /// object, an inventory) is not encrypted, but encryption is configured
    /// for the repository. Anyone who can write to the bucket can write
    /// such an object, so it is refused unless the repository allows
    /// objects written before encryption was turned on
    /// ([`crate::StoreConfig::allow_unencrypted`]).
    #[error(
        "object {path} is not encrypted although the repository has a key: it may have been \
         put there by someone who can write to the bucket; if it was written before encryption \
         was turned on, set [repository] allow_unencrypted = true to read it"
    )]
    Unencrypted {
        /// The object path.
        path: String,
    },

    /// Encryption is configured but this program did not load its key:
    /// refused rather than writing the object unencrypted.
    #[error(
        "refusing to write {path} unencrypted: encryption is configured ({source_name}) \
         but its key was not loaded by this program"
    )]
    KeyNotLoaded {
        /// The object path.
        path: String,
        /// Where encryption is configured.
        source_name: String,
    },

    /// An encryption key (key file contents) is unusable.
    #[error("invalid encryption key: {reason}")]
    InvalidKey {
        /// What is wrong with it (never the key itself).
        reason: String,
    },

    /// An object that should hold structured data (FORMAT, a manifest) does
    /// not parse or fails its own integrity check.
    #[error("object {path} is malformed: {reason}")]
    Corrupt {
        /// The object path.
        path: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The location holds no warmspare repository (no `FORMAT` object).
    #[error("{url} is not a warmspare repository (no FORMAT object); run init first")]
    NotARepository {
        /// The repository URL, credentials redacted.
        url: String,
    },

    /// The repository (or one of its objects) uses a format this version of
    /// warmspare does not understand.
    #[error("object {path} has unsupported format {found}; this build understands {supported}")]
    UnsupportedFormat {
        /// The object path.
        path: String,
        /// The format found.
        found: String,
        /// The format this build supports.
        supported: String,
    },

    /// An error reported by the object store.
    #[error("object store error on {path}: {source}")]
    Store {
        /// The object path (or prefix) of the operation.
        path: String,
        /// The underlying error.
        #[source]
        source: object_store::Error,
    },

    /// An I/O error: the local filesystem, or the reader/writer a caller gave
    /// to the codec.
    #[error("{context} {path}: {source}")]
    Io {
        /// What was being done ("reading source for", "writing", ...).
        context: &'static str,
        /// The object path.
        path: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether retrying the same operation later may succeed (network
    /// trouble, throttling, a conflict with concurrent requests), as opposed
    /// to a permanent condition (not found, version mismatch, corruption,
    /// bad configuration).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Conflict { .. } => true,
            Self::Store { source, .. } => store_error_is_retryable(source),
            Self::Io { source, .. } => io_error_is_retryable(source),
            Self::InvalidConfig { .. }
            | Self::UnsupportedUrl { .. }
            | Self::InvalidPath { .. }
            | Self::NotFound { .. }
            | Self::AlreadyExists { .. }
            | Self::VersionMismatch { .. }
            | Self::Unsupported { .. }
            | Self::DigestMismatch { .. }
            | Self::Authentication { .. }
            | Self::Unauthenticated { .. }
            | Self::KeyMissing { .. }
            | Self::WrongKey { .. }
            | Self::Unencrypted { .. }
            | Self::KeyNotLoaded { .. }
            | Self::InvalidKey { .. }
            | Self::Corrupt { .. }
            | Self::NotARepository { .. }
            | Self::UnsupportedFormat { .. } => false,
        }
    }

    /// Converts an `object_store` error into ours, keeping the typed cases
    /// (not found, already exists, precondition, not implemented) typed.
    pub(crate) fn from_store(path: impl Into<String>, source: object_store::Error) -> Self {
        let path = path.into();
        match source {
            object_store::Error::NotFound { .. } => Self::NotFound { path },
            object_store::Error::AlreadyExists { .. } => Self::AlreadyExists { path },
            object_store::Error::Precondition { .. } => Self::VersionMismatch { path },
            object_store::Error::NotImplemented { operation, .. } => {
                Self::Unsupported { path, operation }
            }
            source => Self::Store { path, source },
        }
    }

    /// Converts an I/O error that may wrap an `object_store` error (as
    /// `BufWriter` and `LocalFileSystem` produce) into ours.
    pub(crate) fn from_io(
        context: &'static str,
        path: impl Into<String>,
        source: io::Error,
    ) -> Self {
        let path = path.into();
        if source
            .get_ref()
            .is_some_and(|inner| inner.is::<object_store::Error>())
        {
            if let Some(inner) = source.into_inner() {
                match inner.downcast::<object_store::Error>() {
                    Ok(store) => return Self::from_store(path, *store),
                    Err(other) => {
                        return Self::Io {
                            context,
                            path,
                            source: io::Error::other(other),
                        };
                    }
                }
            }
            return Self::Io {
                context,
                path,
                source: io::Error::other("unknown error"),
            };
        }
        Self::Io {
            context,
            path,
            source,
        }
    }
}

fn store_error_is_retryable(error: &object_store::Error) -> bool {
    match error {
        // Transport failures and 5xx answers that survived object_store's own
        // retries end up here.
        object_store::Error::Generic { .. } => true,
        object_store::Error::JoinError { .. } => false,
        _ => false,
    }
}

fn io_error_is_retryable(error: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        error.kind(),
        TimedOut
            | Interrupted
            | WouldBlock
            | ConnectionReset
            | ConnectionAborted
            | ConnectionRefused
            | NotConnected
            | BrokenPipe
            | UnexpectedEof
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_store_errors_stay_typed() {
        let e = Error::from_store(
            "a/b",
            object_store::Error::NotFound {
                path: "a/b".into(),
                source: "gone".into(),
            },
        );
        assert!(matches!(e, Error::NotFound { ref path } if path == "a/b"));
        assert!(!e.is_retryable());

        let e = Error::from_store(
            "x",
            object_store::Error::Generic {
                store: "S3",
                source: "connection reset".into(),
            },
        );
        assert!(e.is_retryable());
    }

    #[test]
    fn io_wrapping_store_error_is_unwrapped() {
        let inner = object_store::Error::Precondition {
            path: "p".into(),
            source: "412".into(),
        };
        let io = io::Error::from(inner);
        let e = Error::from_io("writing", "p", io);
        assert!(matches!(e, Error::VersionMismatch { .. }), "{e:?}");
    }

    #[test]
    fn messages_are_lowercase_and_name_the_object() {
        let e = Error::DigestMismatch {
            path: "snapshots/x/data".into(),
            expected: "aa".into(),
            actual: "bb".into(),
        };
        let s = e.to_string();
        assert!(s.starts_with("object snapshots/x/data"));
        assert!(!s.ends_with('.'));
    }
}
