//! The crate's error type.

use std::fmt;
use std::io;

use warmspare_store::{SnapshotId, SnapshotKind};

use crate::event::{
    BackupStep, DeepVerifyStep, PhysicalBackupStep, PhysicalRestoreStep, PhysicalVerifyStep,
    RestoreStep,
};

/// Everything that can go wrong in `warmspare-snapshot`.
///
/// Backups and restores wrap the error of the step that failed in
/// [`Error::Backup`] / [`Error::Restore`], so that the message says which
/// step it was. Messages never contain passwords: database targets are shown
/// as `user@host:port/database`, and text that comes from the server or a
/// tool is scrubbed of the password before it is kept.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A database URL that cannot be used.
    #[error("invalid database url: {reason}")]
    InvalidUrl {
        /// What is wrong with it (the URL is not repeated: it may hold a password).
        reason: String,
    },

    /// The restore target cannot be used as asked (no database name, a name
    /// too long for the staging suffix, ...).
    #[error("invalid restore target {target}: {reason}")]
    InvalidTarget {
        /// `user@host:port/database`.
        target: String,
        /// Why.
        reason: String,
    },

    /// The server could not be reached (connection refused, DNS, timeout).
    #[error("cannot reach {target}: {message}")]
    Unreachable {
        /// `user@host:port/database`.
        target: String,
        /// What the driver said.
        message: String,
    },

    /// The server refused the credentials.
    #[error("authentication failed for {target}: {message}")]
    AuthenticationFailed {
        /// `user@host:port/database`.
        target: String,
        /// What the server said.
        message: String,
    },

    /// A statement failed.
    #[error("{context} on {target}: {message}{}", code.as_deref().map(|c| format!(" (SQLSTATE {c})")).unwrap_or_default())]
    Sql {
        /// `user@host:port/database`.
        target: String,
        /// What was being done.
        context: String,
        /// What the server or driver said.
        message: String,
        /// The SQLSTATE, when the server sent one.
        code: Option<String>,
    },

    /// A PostgreSQL client program was not found.
    #[error(
        "{tool} not found ({location}); install the PostgreSQL client tools or set the bin dir"
    )]
    ToolNotFound {
        /// `pg_dump`, `pg_restore`, `pg_dumpall`.
        tool: &'static str,
        /// Where it was looked for.
        location: String,
    },

    /// A client program is older than the server (or the archive) it must
    /// work with.
    #[error(
        "{tool} {tool_version} is older than {what} {needed}; use {tool} {needed_major} or newer"
    )]
    ToolTooOld {
        /// The program.
        tool: &'static str,
        /// Its version (`15.4`).
        tool_version: String,
        /// `"the server"` or `"the pg_dump that wrote the snapshot"`.
        what: &'static str,
        /// The version it must handle.
        needed: String,
        /// The lowest acceptable major version (`15`, `9.6`).
        needed_major: String,
    },

    /// A client program could not be started or talked to.
    #[error("{context} {tool}: {source}")]
    ToolIo {
        /// The program.
        tool: &'static str,
        /// What was being done.
        context: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A client program failed; `stderr` holds the end of what it said.
    #[error("{tool} failed ({status}): {}", stderr.trim())]
    ToolFailed {
        /// The program.
        tool: &'static str,
        /// Its exit status.
        status: String,
        /// The end of its standard error, password scrubbed.
        stderr: String,
    },

    /// The repository failed; the store's error names the object.
    #[error(transparent)]
    Store(#[from] warmspare_store::Error),

    /// Text that is neither a snapshot id nor `latest`.
    #[error("{text:?} is not a snapshot id (YYYYMMDDTHHMMSSZ-xxxx) nor \"latest\"")]
    InvalidSnapshotId {
        /// The text given.
        text: String,
    },

    /// No committed snapshot has this id.
    #[error("snapshot {id} not found (no committed snapshot with this id)")]
    SnapshotNotFound {
        /// The id asked for.
        id: String,
    },

    /// `latest` was asked for but the repository holds no matching snapshot.
    #[error("the repository holds no {} snapshot", kind.map(kind_name).unwrap_or("committed"))]
    NoSnapshots {
        /// The kind asked for, if any.
        kind: Option<SnapshotKind>,
    },

    /// A snapshot of another kind than the operation needs.
    #[error("snapshot {id} is a {} snapshot; {needed}", kind_name(*kind))]
    WrongKind {
        /// The snapshot.
        id: SnapshotId,
        /// Its kind.
        kind: SnapshotKind,
        /// What the operation needs.
        needed: &'static str,
    },

    /// `--target-time` was given for a logical snapshot.
    #[error(
        "snapshot {id} is a logical snapshot: it restores to the moment it was taken ({taken}); \
         a target time needs a physical snapshot and the WAL archive"
    )]
    TargetTimeUnsupported {
        /// The snapshot.
        id: SnapshotId,
        /// When it was taken (RFC 3339).
        taken: String,
    },

    /// The manifest's metadata is not what a logical snapshot writes.
    #[error("snapshot {id} has unusable metadata: {reason}")]
    BadMeta {
        /// The snapshot.
        id: SnapshotId,
        /// Why.
        reason: String,
    },

    /// The stored dump, though it matches its digest, is not a
    /// custom-format archive the loader can read (`pg_dump` wrote
    /// something else, or a bug).
    #[error("the dump {file} of snapshot {id} cannot be read: {reason}")]
    BadDump {
        /// The snapshot.
        id: SnapshotId,
        /// The dump's file in the snapshot.
        file: String,
        /// Why.
        reason: String,
    },

    /// Restored row counts differ from those recorded at backup time.
    #[error(
        "row counts in {database} differ from the snapshot's: {}",
        Mismatches(mismatches)
    )]
    RowCountMismatch {
        /// The database checked.
        database: String,
        /// Every table that differs.
        mismatches: Vec<RowCountMismatch>,
    },

    /// The restore would overwrite the database the snapshot was taken from.
    #[error(
        "refusing to restore over {database} on the server the snapshot was taken from \
         (same system identifier); allow it explicitly to replace the source database"
    )]
    RefusedSourceOverwrite {
        /// The database.
        database: String,
    },

    /// Another restore into the same database holds the restore lock.
    #[error("another restore into {database} is in progress")]
    RestoreInProgress {
        /// The target database.
        database: String,
    },

    /// `amcheck` found a corrupt index in a restored copy.
    #[error("amcheck: index {index} is corrupt: {message}")]
    IndexCorrupt {
        /// The index (`schema.name`).
        index: String,
        /// What amcheck said.
        message: String,
    },

    /// `amcheck` found a corrupt table (heap) in a restored copy.
    #[error("amcheck: table {table} is corrupt: {message}")]
    HeapCorrupt {
        /// The table (`schema.name in database db`).
        table: String,
        /// What amcheck said (block, offset, message).
        message: String,
    },

    /// A WAL segment that a physical snapshot needs to become consistent
    /// is not in the repository.
    #[error(
        "wal segment {segment} ({object}), which snapshot {id} needs to become consistent, \
         is not in the repository: the snapshot cannot be restored (was the wal pruned or \
         deleted by hand?)"
    )]
    WalMissing {
        /// The snapshot.
        id: SnapshotId,
        /// The segment's file name.
        segment: String,
        /// The object looked for.
        object: String,
    },

    /// A server started on a restored physical snapshot did not recover.
    #[error("the restored server did not recover: {reason}")]
    RecoveryFailed {
        /// Why, with the end of the server log.
        reason: String,
    },

    /// A throwaway cluster could not be created, started or stopped.
    #[error("{context}: {source}")]
    Scratch {
        /// What was being done.
        context: &'static str,
        /// The cluster crate's error.
        #[source]
        source: warmspare_pgcluster::Error,
    },

    /// A deep verification of a physical snapshot failed; `step` says
    /// where. The snapshot is suspect unless the cause is local (tools,
    /// disk space, the scratch server).
    #[error("deep verification of physical snapshot {id} failed at step {step}: {source}")]
    PhysicalVerify {
        /// The snapshot.
        id: SnapshotId,
        /// The step that failed.
        step: PhysicalVerifyStep,
        /// What went wrong.
        #[source]
        source: Box<Error>,
    },

    /// A deep verification failed; `step` says where. The snapshot is
    /// suspect unless the cause is the scratch server (connection, tools).
    #[error("deep verification of snapshot {id} failed at step {step}: {source}")]
    DeepVerify {
        /// The snapshot.
        id: SnapshotId,
        /// The step that failed.
        step: DeepVerifyStep,
        /// What went wrong.
        #[source]
        source: Box<Error>,
    },

    /// The local spool file for a parallel restore failed.
    #[error("spool file {path}: {source}")]
    Spool {
        /// The file.
        path: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A backup failed; `step` says where.
    #[error("backup failed at step {step}: {source}")]
    Backup {
        /// The step that failed.
        step: BackupStep,
        /// What went wrong.
        #[source]
        source: Box<Error>,
    },

    /// A name that is not a WAL file name PostgreSQL archives.
    #[error("invalid wal file name {name:?}: {reason}")]
    InvalidWalName {
        /// The name given.
        name: String,
        /// What was expected.
        reason: &'static str,
    },

    /// A WAL file is already in the repository with other content. Never
    /// overwritten: two clusters archive into one repository, or the
    /// repository holds the WAL of an older cluster.
    #[error(
        "wal file {name} is already in the repository ({object}) with other content \
         (stored sha256 {existing}, this file {pushed}); refusing to overwrite it: \
         does another cluster archive into this repository?"
    )]
    WalConflict {
        /// The WAL file name.
        name: String,
        /// The object path.
        object: String,
        /// SHA-256 of the stored content.
        existing: String,
        /// SHA-256 of the file pushed.
        pushed: String,
    },

    /// A local file of the WAL archive (the file to push, or the
    /// destination of a fetch) could not be read or written.
    #[error("{context} {path}: {source}")]
    WalFile {
        /// What was being done.
        context: &'static str,
        /// The local path.
        path: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The server does not archive WAL, which physical snapshots need.
    #[error(
        "{target} has archive_mode = {archive_mode}: physical snapshots need the WAL archive \
         (archive_mode = on, archive_command = 'warmspare --config FILE wal push %p')"
    )]
    ArchiveModeOff {
        /// `user@host:port/database`.
        target: String,
        /// The setting's value.
        archive_mode: String,
    },

    /// The cluster has tablespaces besides `pg_default` and `pg_global`,
    /// which a streamed base backup (one tar on standard output) cannot
    /// hold.
    #[error(
        "{target} has tablespaces other than pg_default and pg_global ({names}); \
         physical snapshots support only the default tablespaces"
    )]
    UnsupportedTablespaces {
        /// `user@host:port/database`.
        target: String,
        /// Their names, comma-separated.
        names: String,
    },

    /// The base backup stream lacked what a physical snapshot must record.
    #[error("the base backup is unusable: {reason}")]
    BadBaseBackup {
        /// What is missing or malformed.
        reason: String,
    },

    /// A WAL segment the backup needs did not reach the repository in time.
    #[error(
        "wal segment {segment} is not in the repository after {waited}: \
         is the server's archive_command `warmspare --config FILE wal push %p` \
         and does FILE name this repository?"
    )]
    WalNotArchived {
        /// The segment's file name.
        segment: String,
        /// How long was waited (humantime).
        waited: String,
    },

    /// The server reported that archiving is stuck while it waited for the
    /// backup's WAL to be archived.
    #[error("the server cannot archive the backup's wal: {message}")]
    ArchiveStuck {
        /// What the server said.
        message: String,
    },

    /// The restore target directory is not empty.
    #[error(
        "data directory {path} is not empty; a physical restore needs a missing or empty directory"
    )]
    DataDirNotEmpty {
        /// The directory.
        path: String,
    },

    /// The data directory could not be created, read or written.
    #[error("{context} {path}: {source}")]
    DataDir {
        /// What was being done.
        context: &'static str,
        /// The path.
        path: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A recovery target that cannot be used with this snapshot or mode.
    #[error("invalid recovery target: {reason}")]
    InvalidRecoveryTarget {
        /// Why.
        reason: String,
    },

    /// A physical backup failed; `step` says where. Nothing was committed.
    #[error("physical backup failed at step {step}: {source}")]
    PhysicalBackup {
        /// The step that failed.
        step: PhysicalBackupStep,
        /// What went wrong.
        #[source]
        source: Box<Error>,
    },

    /// A physical restore failed; `step` says where. What was extracted
    /// into the data directory was removed.
    #[error("physical restore into {data_dir} failed at step {step}: {source}")]
    PhysicalRestore {
        /// The step that failed.
        step: PhysicalRestoreStep,
        /// The data directory.
        data_dir: String,
        /// What went wrong.
        #[source]
        source: Box<Error>,
    },

    /// A restore failed; `step` says where. The current database was not
    /// touched.
    #[error("restore failed at step {step} (database {database} left untouched): {source}")]
    Restore {
        /// The step that failed.
        step: RestoreStep,
        /// The target database.
        database: String,
        /// What went wrong.
        #[source]
        source: Box<Error>,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One table whose restored row count differs from the snapshot's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowCountMismatch {
    /// `schema.table`.
    pub table: String,
    /// Recorded at backup time.
    pub expected: u64,
    /// Found after the restore (`None`: the table is missing).
    pub actual: Option<u64>,
}

struct Mismatches<'a>(&'a [RowCountMismatch]);

impl fmt::Display for Mismatches<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 5;
        for (i, m) in self.0.iter().take(SHOWN).enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            match m.actual {
                Some(actual) => {
                    write!(f, "{} has {actual} rows, expected {}", m.table, m.expected)?
                }
                None => write!(f, "{} is missing, expected {} rows", m.table, m.expected)?,
            }
        }
        if self.0.len() > SHOWN {
            write!(f, " and {} more", self.0.len() - SHOWN)?;
        }
        Ok(())
    }
}

fn kind_name(kind: SnapshotKind) -> &'static str {
    match kind {
        SnapshotKind::Logical => "logical",
        SnapshotKind::Physical => "physical",
        _ => "unknown",
    }
}

impl Error {
    /// Whether retrying the same operation later may succeed (network
    /// trouble, a server restarting, a conflict with concurrent sessions), as
    /// opposed to a permanent condition (bad input, missing tools, corrupt
    /// data, failed checks).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Unreachable { .. } | Self::RestoreInProgress { .. } => true,
            Self::Sql { code, .. } => code.as_deref().is_some_and(sqlstate_is_retryable),
            Self::Store(e) => e.is_retryable(),
            Self::ToolIo { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            Self::Spool { source, .. }
            | Self::WalFile { source, .. }
            | Self::DataDir { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            // The archiver may catch up (a slow or briefly unreachable
            // repository).
            Self::WalNotArchived { .. } => true,
            Self::Backup { source, .. }
            | Self::Restore { source, .. }
            | Self::DeepVerify { source, .. }
            | Self::PhysicalVerify { source, .. }
            | Self::PhysicalBackup { source, .. }
            | Self::PhysicalRestore { source, .. } => source.is_retryable(),
            Self::InvalidUrl { .. }
            | Self::InvalidTarget { .. }
            | Self::AuthenticationFailed { .. }
            | Self::ToolNotFound { .. }
            | Self::ToolTooOld { .. }
            // A tool's failure may be transient (a dropped connection) or
            // not (a permission error); its stderr says which, but guessing
            // from text is fragile: callers retry on schedule anyway.
            | Self::ToolFailed { .. }
            | Self::InvalidSnapshotId { .. }
            | Self::SnapshotNotFound { .. }
            | Self::NoSnapshots { .. }
            | Self::WrongKind { .. }
            | Self::TargetTimeUnsupported { .. }
            | Self::BadMeta { .. }
            | Self::BadDump { .. }
            | Self::RowCountMismatch { .. }
            | Self::IndexCorrupt { .. }
            | Self::HeapCorrupt { .. }
            | Self::WalMissing { .. }
            | Self::RecoveryFailed { .. }
            | Self::Scratch { .. }
            | Self::RefusedSourceOverwrite { .. }
            | Self::InvalidWalName { .. }
            | Self::WalConflict { .. }
            | Self::ArchiveModeOff { .. }
            | Self::UnsupportedTablespaces { .. }
            | Self::BadBaseBackup { .. }
            | Self::ArchiveStuck { .. }
            | Self::DataDirNotEmpty { .. }
            | Self::InvalidRecoveryTarget { .. } => false,
        }
    }

    /// Whether the repository holds damaged data: an object whose digests
    /// do not match what its writer recorded, or that is malformed. Never
    /// retryable, and never to be used.
    pub fn is_corruption(&self) -> bool {
        matches!(
            self.root(),
            Self::Store(
                warmspare_store::Error::DigestMismatch { .. }
                    | warmspare_store::Error::Corrupt { .. }
            )
        )
    }

    /// Whether an object of the repository cannot be used as it is: damaged
    /// ([`Error::is_corruption`]), failing its authentication (its
    /// encryption's or its seal's MAC), or not encrypted in a repository
    /// with a key (which someone who can write to
    /// the bucket may have planted). What a verification lists per object.
    pub fn is_untrustworthy(&self) -> bool {
        self.is_corruption()
            || matches!(
                self.root(),
                Self::Store(
                    warmspare_store::Error::Authentication { .. }
                        | warmspare_store::Error::Unauthenticated { .. }
                        | warmspare_store::Error::Unencrypted { .. }
                )
            )
    }

    /// The step of a failed backup or restore, if this is one.
    pub fn restore_step(&self) -> Option<RestoreStep> {
        match self {
            Self::Restore { step, .. } => Some(*step),
            _ => None,
        }
    }

    /// The step of a failed backup, if this is one.
    pub fn backup_step(&self) -> Option<BackupStep> {
        match self {
            Self::Backup { step, .. } => Some(*step),
            _ => None,
        }
    }

    /// The innermost error of this crate: the cause inside
    /// [`Error::Backup`] / [`Error::Restore`] (and their physical
    /// counterparts).
    pub fn root(&self) -> &Error {
        match self {
            Self::Backup { source, .. }
            | Self::Restore { source, .. }
            | Self::DeepVerify { source, .. }
            | Self::PhysicalVerify { source, .. }
            | Self::PhysicalBackup { source, .. }
            | Self::PhysicalRestore { source, .. } => source.root(),
            other => other,
        }
    }
}

/// SQLSTATE classes worth retrying: connection exceptions (08),
/// transaction rollbacks such as serialization failures (40), insufficient
/// resources (53), operator intervention such as a shutting-down server
/// (57), and an object in use (55006).
fn sqlstate_is_retryable(code: &str) -> bool {
    matches!(code.get(..2), Some("08" | "40" | "53" | "57")) || code == "55006"
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn untrustworthy_objects_are_corrupt_unauthenticated_or_unencrypted() {
        let store = |e| Error::PhysicalVerify {
            id: "20261122T101500Z-3f9a".parse().unwrap(),
            step: crate::PhysicalVerifyStep::FetchWal,
            source: Box::new(Error::Store(e)),
        };
        let unencrypted = store(warmspare_store::Error::Unencrypted {
            path: "wal/00000001/000000010000000000000009.zst".into(),
        });
        assert!(unencrypted.is_untrustworthy() && !unencrypted.is_corruption());
        let forged = store(warmspare_store::Error::Authentication {
            path: "wal/x".into(),
            reason: "tag mismatch".into(),
        });
        assert!(forged.is_untrustworthy());
        let moved = store(warmspare_store::Error::Unauthenticated {
            path: "wal/00000002.history.zst".into(),
            reason: "the MAC does not match".into(),
            other_key: None,
        });
        assert!(moved.is_untrustworthy() && !moved.is_corruption());
        let damaged = store(warmspare_store::Error::DigestMismatch {
            path: "wal/x".into(),
            expected: "a".into(),
            actual: "b".into(),
        });
        assert!(damaged.is_untrustworthy() && damaged.is_corruption());
        let missing = store(warmspare_store::Error::NotFound {
            path: "wal/x".into(),
        });
        assert!(!missing.is_untrustworthy());
    }

    #[test]
    fn messages_name_the_step_and_stay_lowercase() {
        let e = Error::Restore {
            step: RestoreStep::CheckRowCounts,
            database: "builder".into(),
            source: Box::new(Error::RowCountMismatch {
                database: "builder__warmspare_staging".into(),
                mismatches: vec![RowCountMismatch {
                    table: "public.t".into(),
                    expected: 3,
                    actual: Some(2),
                }],
            }),
        };
        let s = e.to_string();
        assert!(
            s.starts_with("restore failed at step check-row-counts"),
            "{s}"
        );
        assert!(s.contains("public.t has 2 rows, expected 3"), "{s}");
        assert!(!s.ends_with('.'));
        assert_eq!(e.restore_step(), Some(RestoreStep::CheckRowCounts));
        assert!(!e.is_retryable());
    }

    #[test]
    fn retry_classification() {
        let sql = |code: &str| Error::Sql {
            target: "u@h:1/d".into(),
            context: "x".into(),
            message: "m".into(),
            code: Some(code.into()),
        };
        assert!(sql("40001").is_retryable());
        assert!(sql("57P01").is_retryable());
        assert!(sql("55006").is_retryable());
        assert!(!sql("42P01").is_retryable());
        let wrapped = Error::Backup {
            step: BackupStep::Connect,
            source: Box::new(Error::Unreachable {
                target: "t".into(),
                message: "refused".into(),
            }),
        };
        assert!(wrapped.is_retryable());
        assert!(matches!(wrapped.root(), Error::Unreachable { .. }));
    }
}
