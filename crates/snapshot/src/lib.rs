//! Database snapshotters for warmspare.
//!
//! This crate takes PostgreSQL snapshots into a warmspare repository
//! ([`warmspare_store::Repository`]), restores them into a warm spare,
//! verifies them and applies retention: *logical* snapshots (`pg_dump`),
//! *physical* snapshots (`pg_basebackup`) and the WAL archive that makes
//! physical snapshots consistent and restorable to any point in time.
//!
//! # Main items
//!
//! * [`backup_logical`]: `pg_dump --format=custom` streamed through the
//!   store codec into `snapshots/<id>/database.pgdump` (plus
//!   `globals.sql` from `pg_dumpall --globals-only` on request), with the
//!   database's identity, exact row counts, tool versions and the lease
//!   epoch in the manifest ([`LogicalMeta`]).
//! * [`restore_logical`]: restore into `<db>__warmspare_staging`, check row
//!   counts, swap in by rename; each step is a [`RestoreStep`] and a failure
//!   at any of them leaves `<db>` untouched.
//! * [`catalog`]: `latest` ([`catalog::resolve`]), [`catalog::list`] (kind,
//!   size, duration, database, status), [`catalog::verify`] (every
//!   object's digests), [`catalog::delete`] (manifest first, then data).
//! * [`verify_deep`]: `verify --deep`: restore into a scratch database on a
//!   throwaway server, compare row counts, run `amcheck` on every B-tree
//!   index, drop it.
//!   [`verify_deep_physical`] does the same for a physical snapshot in a
//!   throwaway cluster it starts itself: WAL fetched and replayed to
//!   consistency, `pg_verifybackup`, every table read, `amcheck`.
//! * [`physical`]: [`backup_physical`] streams `pg_basebackup`'s tar into
//!   `snapshots/<id>/base.tar` and commits once the WAL it needs is
//!   archived; [`restore_physical`] lays out a data directory with the
//!   recovery settings for point-in-time recovery ([`RecoveryTarget`]) or a
//!   standby fed from the repository.
//! * [`wal`]: [`wal::push`] and [`wal::fetch`], the bodies of
//!   `archive_command` and `restore_command`: create-once, verified.
//! * [`retention`]: the `[retention]` configuration and the pure planner
//!   ([`retention::plan`]); [`prune()`] applies it to a repository, and
//!   deletes WAL older than every kept physical snapshot
//!   ([`wal::deletable`]).
//! * [`Error`] names the step and the object; [`Error::is_retryable`].
//!   Progress goes to an optional callback ([`Event`]); nothing is printed.
//!
//! # Example
//!
//! Retention and listing against a repository in a temporary directory (a
//! backup needs a PostgreSQL server; see the second example):
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use time::macros::datetime;
//! use warmspare_snapshot::{PruneOptions, RetentionConfig, catalog, prune};
//! use warmspare_store::{Repository, SnapshotKind, Store, StoreConfig};
//!
//! let dir = tempfile::tempdir()?;
//! let url = format!("file://{}", dir.path().display());
//! let now = datetime!(2026-11-22 12:00 UTC);
//! let repo = Repository::init(Store::open(&StoreConfig::new(url))?, now).await?;
//! for hour in [1, 2, 3] {
//!     let t = now.replace_hour(hour)?;
//!     let mut w = repo.begin_snapshot(SnapshotKind::Logical, t).await?;
//!     w.put_file("database.pgdump", &b"..."[..]).await?;
//!     w.commit(serde_json::json!({"database": "builder"}), Some(1), t).await?;
//! }
//! let config = RetentionConfig { keep_last: 2, keep_daily: 0, keep_weekly: 0, keep_monthly: 0 };
//! let report = prune(&repo, &config, &PruneOptions::default(), now).await?;
//! assert_eq!(report.deleted.len(), 1);
//! let listed = catalog::list(&repo, false).await?;
//! assert_eq!(listed.len(), 2);
//! assert_eq!(listed[0].database.as_deref(), Some("builder"));
//! # Ok(())
//! # }
//! ```
//!
//! A backup of the primary and a restore into the spare:
//!
//! ```no_run
//! # async fn run(repo: warmspare_store::Repository) -> warmspare_snapshot::Result<()> {
//! use warmspare_snapshot::{LogicalBackupOptions, RestoreOptions, backup_logical, restore_logical};
//!
//! let now = time::OffsetDateTime::now_utc(); // the caller's clock
//! let backup = backup_logical(
//!     &repo,
//!     "postgres://builder:secret@10.0.1.20/builder",
//!     &LogicalBackupOptions::default(),
//!     Some(7), // the lease epoch
//!     now,
//!     Some(&|event| eprintln!("{event:?}")),
//! )
//! .await?;
//! let report = restore_logical(
//!     &repo,
//!     &backup.manifest.id,
//!     "postgres://builder:secret@10.1.1.20/builder",
//!     None, // no --target-time for logical snapshots
//!     &RestoreOptions::default().with_jobs(4),
//!     None,
//! )
//! .await?;
//! assert_eq!(report.previous.as_deref(), Some("builder__warmspare_previous"));
//! # Ok(())
//! # }
//! ```
//!
//! # Key design decisions
//!
//! * **One snapshot for the dump and the counts.** The backup holds a
//!   REPEATABLE READ, READ ONLY transaction on its own sqlx connection,
//!   exports its snapshot (`pg_export_snapshot()`) and passes it to
//!   `pg_dump --snapshot`. The row counts are taken in that transaction
//!   while `pg_dump` runs, so they describe exactly the rows in the dump,
//!   and restores can check them exactly, at no extra wall-clock time.
//! * **Custom format, streamed.** `pg_dump --format=custom --compress=0`
//!   writes to a pipe that feeds the store codec (zstd, SHA-256, multipart
//!   upload): one pass, bounded memory, no local disk. zlib inside the
//!   archive is off because zstd compresses better and faster. Directory
//!   format with `pg_dump -j` (parallel dumps of big databases) is not
//!   built yet.
//! * **Nothing half-done is committed.** `pg_dump`'s exit status is read
//!   after its output ended and before the manifest is written; its stderr
//!   is in the error. The objects are checked to exist before the commit.
//!   Failures delete the partial objects; a cancelled backup leaves an
//!   incomplete snapshot that is never listed and that `prune` removes.
//! * **Tools are checked first.** `pg_dump` older than the server is refused
//!   before anything is written; `pg_restore` older than the `pg_dump` that
//!   wrote the snapshot is refused before the target is touched. Tools come
//!   from a configured bin dir or the executable search path.
//! * **Passwords stay out of argv.** Client programs get the URL without
//!   its password and the password in `PGPASSWORD`; errors name targets as
//!   `user@host:port/db` and scrub server and tool output of the password.
//!   Children inherit the caller's environment otherwise, so libpq's
//!   `~/.pgpass` and `PGSSL*` settings apply as for the programs run by hand.
//! * **Restore: stream or spool.** With one job the dump streams straight
//!   into `pg_restore`'s stdin (no disk needed). A parallel `pg_restore -j N`
//!   needs a seekable archive, so with `jobs > 1` the verified dump is first
//!   spooled to a temporary file (bounded memory, disk = the dump's size),
//!   then restored in parallel: faster for databases with many or large
//!   indexes. Either way, `pg_restore`'s verdict is only accepted after the
//!   codec verified the whole object: a flipped byte fails the restore.
//! * **Swap by rename, in one transaction.** Terminating the sessions on
//!   `<db>` and the two renames (`<db>` → `<db>__warmspare_previous`,
//!   staging → `<db>`) commit together or not at all; the previous copy is
//!   kept until the next successful restore. A per-database advisory lock
//!   keeps two restores into one database apart. A restore refuses to
//!   replace the very database a snapshot was taken from unless told to.
//! * **Retention like restic/borg**, planned per kind and database, as a
//!   pure function tested with proptest; see [`retention`].

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod backup_common;
pub mod catalog;
mod error;
mod event;
mod logical;
mod pg;
pub mod physical;
mod prune;
pub mod query;
pub mod retention;
mod serde_util;
mod tools;
pub mod wal;

pub use catalog::{SnapshotStatus, SnapshotSummary};
pub use error::{Error, Result, RowCountMismatch};
pub use event::{
    BackupStep, DeepVerifyStep, Event, PhysicalBackupStep, PhysicalRestoreStep, PhysicalVerifyStep,
    ProgressFn, RestoreStep,
};
pub use logical::{
    DEFAULT_CONNECT_TIMEOUT, DUMP_DIR, DUMP_FILE, DeepVerifyReport, GLOBALS_FILE, GlobalsReport,
    LOGICAL_DIRECTORY_FORMAT, LOGICAL_FORMAT, LogicalBackup, LogicalBackupOptions, LogicalMeta,
    RecordedOptions, RestoreOptions, RestoreReport, TableRows, ToolVersions, backup_logical,
    restore_logical, verify_deep,
};
pub use logical::{PREVIOUS_SUFFIX, STAGING_SUFFIX};
pub use physical::{
    PhysicalBackup, PhysicalBackupOptions, PhysicalMeta, PhysicalRestoreOptions,
    PhysicalRestoreReport, PhysicalVerifyOptions, PhysicalVerifyReport, RecoveryTarget,
    backup_physical, restore_physical, verify_deep_physical,
};
pub use prune::{
    DEFAULT_INCOMPLETE_GRACE, GroupPlan, PruneOptions, PruneReport, SnapshotGroup, prune,
};
pub use retention::{InvalidRetentionConfig, RetentionConfig};
/// The store crate, re-exported so that embedders use the same version.
pub use warmspare_store;
