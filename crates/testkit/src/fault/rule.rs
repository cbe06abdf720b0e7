//! Fault rules: which calls they match, when they fire, what they do.

use std::time::Duration;

use object_store::path::Path;

/// The kinds of calls a [`Fault`] can match and [`super::FaultStore`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Op {
    /// `put_opts` (also `put`).
    Put,
    /// Starting a multipart upload (`put_multipart_opts`).
    PutMultipart,
    /// One `put_part` of a multipart upload.
    PutPart,
    /// `complete` of a multipart upload.
    CompleteMultipart,
    /// `get_opts` (also `get`, `get_range`) and `get_ranges`, except heads.
    Get,
    /// `get_opts` with `head: true` (also `head`).
    Head,
    /// `list`, `list_with_offset`, `list_with_delimiter`.
    List,
    /// One location of `delete_stream` (also `delete`).
    Delete,
    /// `copy_opts` (also `copy`, `copy_if_not_exists`).
    Copy,
    /// `rename_opts` (also `rename`, `rename_if_not_exists`).
    Rename,
}

impl Op {
    /// Every kind, in declaration order.
    pub const ALL: [Op; 10] = [
        Op::Put,
        Op::PutMultipart,
        Op::PutPart,
        Op::CompleteMultipart,
        Op::Get,
        Op::Head,
        Op::List,
        Op::Delete,
        Op::Copy,
        Op::Rename,
    ];

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Which `object_store::Error` an injected error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ErrorKind {
    /// `Error::Generic`: what a network failure or a 5xx looks like.
    #[default]
    Generic,
    /// `Error::NotFound`.
    NotFound,
    /// `Error::Precondition`: a lost compare-and-swap race.
    Precondition,
    /// `Error::AlreadyExists`: a lost create-if-absent race.
    AlreadyExists,
}

/// What a fault does when it fires.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    Error(ErrorKind),
    Latency(Duration),
    /// Ends a GET body after `after` bytes, then yields an error or not.
    Truncate {
        after: u64,
        error: bool,
    },
    /// Inverts the byte at `offset` of a GET body.
    FlipByte {
        offset: u64,
    },
}

/// One fault rule for [`super::FaultStore::inject`].
///
/// A rule matches calls of one [`Op`], optionally only for paths starting
/// with a prefix. By default it fires on every matching call; limit it with
/// [`Fault::times`], [`Fault::skip`] and [`Fault::probability`].
///
/// ```
/// use std::time::Duration;
/// use warmspare_testkit::{ErrorKind, Fault, Op};
///
/// // The next two GETs under `wal/` fail, after the first one succeeds.
/// let f = Fault::error(Op::Get).prefix("wal/").skip(1).times(2);
/// // Every PUT takes 50 ms longer.
/// let slow = Fault::latency(Op::Put, Duration::from_millis(50));
/// // A third of all HEADs say the object is missing.
/// let flaky = Fault::error_kind(Op::Head, ErrorKind::NotFound).probability(0.33);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub(crate) op: Op,
    pub(crate) prefix: Option<String>,
    pub(crate) action: Action,
    pub(crate) skip: u64,
    pub(crate) times: Option<u64>,
    pub(crate) probability: Option<f64>,
}

impl Fault {
    fn new(op: Op, action: Action) -> Self {
        Fault {
            op,
            prefix: None,
            action,
            skip: 0,
            times: None,
            probability: None,
        }
    }

    /// Fails matching calls with a generic (retryable-looking) error.
    pub fn error(op: Op) -> Self {
        Self::new(op, Action::Error(ErrorKind::Generic))
    }

    /// Fails matching calls with a specific kind of error.
    pub fn error_kind(op: Op, kind: ErrorKind) -> Self {
        Self::new(op, Action::Error(kind))
    }

    /// Delays matching calls (before they reach the inner store).
    pub fn latency(op: Op, delay: Duration) -> Self {
        Self::new(op, Action::Latency(delay))
    }

    /// Ends GET bodies silently after `after` bytes (a short read: the
    /// result still claims the full length). Only for [`Op::Get`].
    pub fn truncate(op: Op, after: u64) -> Self {
        Self::new(
            op,
            Action::Truncate {
                after,
                error: false,
            },
        )
    }

    /// Ends GET bodies after `after` bytes with an error (a connection
    /// reset mid-body). Only for [`Op::Get`].
    pub fn truncate_with_error(op: Op, after: u64) -> Self {
        Self::new(op, Action::Truncate { after, error: true })
    }

    /// Inverts the byte at `offset` of GET bodies (offsets count from the
    /// start of the returned body, also for range reads). Only for
    /// [`Op::Get`], and only `get_opts` bodies, not `get_ranges`.
    pub fn flip_byte(op: Op, offset: u64) -> Self {
        Self::new(op, Action::FlipByte { offset })
    }

    /// Matches only paths that start with `prefix` (a plain string prefix:
    /// `"wal/"` matches `wal/1/x`; `"wal"` also matches `walrus`). For
    /// lists, the listed prefix plus `/` is compared; for copies and
    /// renames, either path.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// Fires at most `n` times, then never again.
    pub fn times(mut self, n: u64) -> Self {
        self.times = Some(n);
        self
    }

    /// Fires exactly once (`times(1)`).
    pub fn once(self) -> Self {
        self.times(1)
    }

    /// Lets the first `n` matching calls through before firing.
    pub fn skip(mut self, n: u64) -> Self {
        self.skip = n;
        self
    }

    /// Fires with probability `p` (0.0 to 1.0) on each matching call, drawn
    /// from the store's seeded generator (see
    /// [`super::FaultStore::with_seed`]).
    pub fn probability(mut self, p: f64) -> Self {
        self.probability = Some(p.clamp(0.0, 1.0));
        self
    }

    pub(crate) fn matches(&self, op: Op, paths: &[&str]) -> bool {
        if self.op != op {
            return false;
        }
        match &self.prefix {
            None => true,
            Some(prefix) => paths.iter().any(|p| p.starts_with(prefix.as_str())),
        }
    }
}

/// The error source of every injected error, so tests can tell injected
/// failures from real ones (`err.source()` downcasts to it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("fault injected by warmspare-testkit: {op:?} {path}")]
pub struct InjectedFault {
    /// The call that failed.
    pub op: Op,
    /// The path it was for.
    pub path: String,
}

impl InjectedFault {
    pub(crate) fn into_error(self, kind: ErrorKind) -> object_store::Error {
        let path = self.path.clone();
        let source = Box::new(self);
        match kind {
            ErrorKind::Generic => object_store::Error::Generic {
                store: "FaultStore",
                source,
            },
            ErrorKind::NotFound => object_store::Error::NotFound { path, source },
            ErrorKind::Precondition => object_store::Error::Precondition { path, source },
            ErrorKind::AlreadyExists => object_store::Error::AlreadyExists { path, source },
        }
    }
}

/// The string a list prefix is matched as.
pub(crate) fn list_key(prefix: Option<&Path>) -> String {
    match prefix {
        None => String::new(),
        Some(p) if p.as_ref().is_empty() => String::new(),
        Some(p) => format!("{}/", p.as_ref()),
    }
}
