//! Steps and progress events.

use std::fmt;

use serde::Serialize;

/// A progress callback. Called from the task that runs the operation; keep
/// it cheap (update a counter, send on a channel).
pub type ProgressFn<'a> = &'a (dyn Fn(Event) + Send + Sync);

/// What a running backup or restore reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "event", content = "value")]
#[non_exhaustive]
pub enum Event {
    /// A backup step begins.
    Backup(BackupStep),
    /// A restore step begins.
    Restore(RestoreStep),
    /// A deep verification step begins.
    DeepVerify(DeepVerifyStep),
    /// A physical backup step begins.
    PhysicalBackup(PhysicalBackupStep),
    /// A physical restore step begins.
    PhysicalRestore(PhysicalRestoreStep),
    /// A step of a deep verification of a physical snapshot begins.
    PhysicalVerify(PhysicalVerifyStep),
    /// Content bytes of the current file moved so far (dumped, or
    /// restored). Monotonic within one step.
    Bytes(u64),
}

macro_rules! steps {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
        #[serde(rename_all = "kebab-case")]
        #[non_exhaustive]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            /// Every step, in the order they run.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The step's name, as in messages (`check-row-counts`).
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

steps! {
    /// The steps of a logical backup, in order.
    BackupStep {
        /// Find `pg_dump` (and `pg_dumpall`) and read their versions.
        CheckTools => "check-tools",
        /// Connect, open the REPEATABLE READ transaction, export its snapshot
        /// and read the database's identity; refuse a `pg_dump` older than the
        /// server.
        Connect => "connect",
        /// Stream `pg_dump` into the repository while counting rows in the
        /// same snapshot.
        Dump => "dump",
        /// Stream `pg_dumpall --globals-only` into the repository.
        Globals => "globals",
        /// Check that the data objects are in place and write the manifest.
        Commit => "commit",
    }
}

steps! {
    /// The steps of a restore into the warm spare, in order. A failure at any
    /// step leaves the current database untouched.
    RestoreStep {
        /// Read the snapshot's manifest and check that it can be restored.
        Resolve => "resolve",
        /// Find `pg_restore` and check that it can read the archive.
        CheckTools => "check-tools",
        /// Connect to the target server's maintenance database.
        Connect => "connect",
        /// Apply the snapshot's globals: create the roles the target lacks
        /// (only with `RestoreOptions::globals`).
        ApplyGlobals => "apply-globals",
        /// Drop a stale staging database, create a fresh one.
        CreateStaging => "create-staging",
        /// Stream the dump (verified) into `pg_restore`, or spool it to disk
        /// and run a parallel `pg_restore -j N`.
        Restore => "restore",
        /// Count rows in the staging database and compare with the manifest.
        CheckRowCounts => "check-row-counts",
        /// Drop the previous copy kept by the last successful restore.
        DropPrevious => "drop-previous",
        /// Terminate sessions on the current database and swap the staging
        /// database in by renaming, in one transaction.
        Swap => "swap",
    }
}

steps! {
    /// The steps of a deep verification, in order.
    DeepVerifyStep {
        /// Read the manifest; find `pg_restore`.
        Resolve => "resolve",
        /// Connect to the scratch server.
        Connect => "connect",
        /// Create the scratch database (dropping a stale one).
        CreateScratch => "create-scratch",
        /// Restore the snapshot into it (verified while streaming).
        Restore => "restore",
        /// Compare row counts with the manifest.
        CheckRowCounts => "check-row-counts",
        /// Check every B-tree index with `amcheck` (skipped when the
        /// extension is not installed on the scratch server).
        Amcheck => "amcheck",
        /// Drop the scratch database.
        DropScratch => "drop-scratch",
    }
}

steps! {
    /// The steps of a physical backup, in order.
    PhysicalBackupStep {
        /// Find `pg_basebackup` and read its version.
        CheckTools => "check-tools",
        /// Connect, read the server's identity and check that it archives
        /// WAL and has no extra tablespaces.
        Connect => "connect",
        /// Stream `pg_basebackup`'s tar into the repository.
        BaseBackup => "base-backup",
        /// Wait until every WAL segment the backup needs is in the
        /// repository.
        WaitForWal => "wait-for-wal",
        /// Write the manifest.
        Commit => "commit",
    }
}

steps! {
    /// The steps of a physical restore, in order.
    PhysicalRestoreStep {
        /// Read the snapshot's manifest and check the recovery target.
        Resolve => "resolve",
        /// Check that the data directory is missing or empty.
        CheckTarget => "check-target",
        /// Stream the base backup (verified) into `tar`.
        Extract => "extract",
        /// Write the recovery settings and the signal file.
        Configure => "configure",
    }
}

steps! {
    /// The steps of a deep verification of a physical snapshot, in order.
    PhysicalVerifyStep {
        /// Read the manifest, find the server programs, create the scratch
        /// directory.
        Resolve => "resolve",
        /// Stream the base backup (verified) into a scratch data directory.
        Restore => "restore",
        /// Fetch (verified) every WAL segment from the backup's start to its
        /// stop position into `pg_wal`.
        FetchWal => "fetch-wal",
        /// Check every file and the WAL against the `backup_manifest` with
        /// `pg_verifybackup`.
        VerifyBackup => "verify-backup",
        /// Start a throwaway server on it, replay to consistency, promote.
        Recover => "recover",
        /// Read every table and check it and every B-tree index with
        /// `amcheck`, in every database.
        CheckData => "check-data",
        /// Stop the server and remove the scratch directory.
        Cleanup => "cleanup",
    }
}
