//! PostgreSQL physical snapshots: a base backup streamed into the
//! repository ([`backup_physical`]) plus the WAL archive ([`crate::wal`]),
//! restored into a data directory for point-in-time recovery or as a
//! standby fed from the repository ([`restore_physical`]).
//!
//! # Why `pg_basebackup`, streamed
//!
//! Two ways exist to take a base backup of a running cluster:
//!
//! * `pg_basebackup --format=tar --pgdata=-`: the server walks its own data
//!   directory and streams it over the replication protocol as one tar
//!   archive on standard output. Needs a role with `REPLICATION` (or a
//!   superuser), a `replication` line in `pg_hba.conf` and a free
//!   `max_wal_senders` slot, and holds only the default tablespaces (a
//!   tar on stdout has room for one).
//! * the low-level API: `pg_backup_start()` / `pg_backup_stop()` on one
//!   held connection while we copy `PGDATA` ourselves. Needs read access to
//!   the data directory, so warmspare must run on the database host as the
//!   server's user, and must re-implement what the server knows (which
//!   files to skip, `backup_label` and `tablespace_map` from the stop call,
//!   files truncated or extended while they are copied).
//!
//! warmspare takes the first. Every other operation reaches the database
//! through its URL, from any host (the agent need not run beside the
//! database, and in containers usually does not); the server decides what
//! belongs in a backup, includes `backup_label` and a `backup_manifest`
//! (usable with `pg_verifybackup` after a restore) and checks page
//! checksums on the way; and the tar streams straight through the codec
//! (zstd, SHA-256, multipart upload) in bounded memory, one pass, no local
//! disk. The start position and timeline are read from `backup_label` and
//! the stop position from the manifest's `WAL-Ranges` as the stream passes
//! by. Extra tablespaces are refused before anything is copied.
//!
//! # WAL: archived, waited for, not copied
//!
//! The backup runs with `--wal-method=none`: its WAL comes from the
//! archive, which point-in-time recovery and a standby fed from the
//! repository need anyway. `--wal-method=fetch` would copy the same WAL
//! into the tar and needs the server to keep every segment until the end
//! of the backup (`wal_keep_size`), which fails long backups of busy
//! servers. Instead the server itself waits, before it completes the
//! backup, until `archive_command` archived the last segment (so
//! `archive_mode` must be on: checked first), and warmspare then waits
//! ([`PhysicalBackupOptions::wal_timeout`]) until every segment from the
//! start to the stop position is in *this* repository before it commits
//! the manifest. This catches an `archive_command` that archives elsewhere;
//! an `archive_command` that fails makes the server warn after 60 s, and
//! the backup fails then with [`Error::ArchiveStuck`] instead of hanging.
//!
//! # Restore
//!
//! The verified tar streams into the system's `tar` (GNU tar refuses
//! members with `..` and strips leading `/`), into a missing or empty data
//! directory (mode 0700). Files belong to the user that runs the restore:
//! handing them to the server's user (`chown -R postgres:`) is the
//! caller's job. Recovery settings are appended to `postgresql.auto.conf`
//! (as `pg_basebackup -R` does), and `recovery.signal` or `standby.signal`
//! is created. The restored cluster keeps the source's other settings,
//! including its `archive_command`: after a point-in-time recovery it
//! archives its new timeline into the same repository, as PostgreSQL
//! intends (a new timeline never overwrites the old one's segments); set
//! `archive_mode = off` on drill copies that should not.
//!
//! A restore first checks (one `HEAD` each) that every WAL segment from
//! the snapshot's start to its stop position is in the repository: without
//! them neither a recovery nor a standby can start, and a standby would
//! wait for them silently forever. A target time before the snapshot's end
//! is refused: recovery replays forward from the end of a base backup.
//!
//! # Verify
//!
//! [`verify_wal`] re-reads those segments (the snapshot's own objects are
//! verified by [`crate::catalog::verify`]). [`verify_deep_physical`]
//! restores the snapshot into a throwaway cluster (`warmspare-pgcluster`),
//! runs `pg_verifybackup` against the `backup_manifest` that
//! `pg_basebackup` put into the tar, replays the WAL to consistency,
//! promotes, and checks every database: every table read, `amcheck` on
//! every table and B-tree index.

mod backup;
mod deep;
mod needed;
mod restore;
mod tar;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use warmspare_store::Manifest;

use crate::error::{Error, Result};
use crate::wal::Lsn;

pub use backup::{PhysicalBackup, backup_physical};
pub use deep::{
    DEFAULT_RECOVERY_TIMEOUT, PhysicalVerifyOptions, PhysicalVerifyReport, verify_deep_physical,
};
pub use needed::{WalVerifyReport, verify_wal};
pub use restore::{PhysicalRestoreReport, restore_physical, snapshot_for_time};

/// `meta.format` of a physical snapshot.
pub const PHYSICAL_FORMAT: &str = "pg_basebackup-tar";
/// The snapshot file holding the base backup (one tar archive).
pub const BASE_FILE: &str = "base.tar";
/// The default of [`PhysicalBackupOptions::wal_timeout`].
pub const DEFAULT_WAL_TIMEOUT: Duration = Duration::from_secs(60);

/// How the backup's starting checkpoint is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Checkpoint {
    /// At once (`--checkpoint=fast`): the backup starts now, at the cost of
    /// an I/O burst.
    #[default]
    Fast,
    /// Spread like a scheduled checkpoint (`--checkpoint=spread`): gentler,
    /// but the backup may start minutes later.
    Spread,
}

/// Options of [`backup_physical`].
///
/// ```
/// use std::time::Duration;
/// use warmspare_snapshot::physical::{Checkpoint, PhysicalBackupOptions};
/// let o: PhysicalBackupOptions = serde_json::from_str(r#"{"wal_timeout": "2m"}"#).unwrap();
/// assert_eq!((o.wal_timeout, o.checkpoint), (Duration::from_secs(120), Checkpoint::Fast));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PhysicalBackupOptions {
    /// The directory holding `pg_basebackup`; `None` searches the executable
    /// search path.
    pub bin_dir: Option<PathBuf>,
    /// How long connecting may take.
    #[serde(with = "crate::serde_util::duration")]
    pub connect_timeout: Duration,
    /// The starting checkpoint.
    pub checkpoint: Checkpoint,
    /// How long to wait, once the base backup is stored, for the WAL it
    /// needs to be in the repository.
    #[serde(with = "crate::serde_util::duration")]
    pub wal_timeout: Duration,
}

impl Default for PhysicalBackupOptions {
    fn default() -> Self {
        Self {
            bin_dir: None,
            connect_timeout: crate::DEFAULT_CONNECT_TIMEOUT,
            checkpoint: Checkpoint::Fast,
            wal_timeout: DEFAULT_WAL_TIMEOUT,
        }
    }
}

impl PhysicalBackupOptions {
    /// Sets [`bin_dir`](Self::bin_dir).
    pub fn with_bin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bin_dir = Some(dir.into());
        self
    }
    /// Sets [`checkpoint`](Self::checkpoint).
    pub fn with_checkpoint(mut self, checkpoint: Checkpoint) -> Self {
        self.checkpoint = checkpoint;
        self
    }
    /// Sets [`wal_timeout`](Self::wal_timeout).
    pub fn with_wal_timeout(mut self, timeout: Duration) -> Self {
        self.wal_timeout = timeout;
        self
    }
    /// Sets [`connect_timeout`](Self::connect_timeout).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
}

/// Where recovery of a restored physical snapshot stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RecoveryTarget {
    /// Replay every WAL segment the repository holds, then promote.
    #[default]
    Latest,
    /// Stop as soon as the snapshot is consistent (`recovery_target =
    /// 'immediate'`), then promote: the database as of the end of the
    /// backup.
    Immediate,
    /// Stop before the first transaction that committed at or after this
    /// time (`recovery_target_time`, `recovery_target_inclusive = off`),
    /// then promote: exactly the transactions committed before it.
    Time(OffsetDateTime),
}

/// Options of [`restore_physical`].
///
/// ```
/// use warmspare_snapshot::physical::{PhysicalRestoreOptions, RecoveryTarget};
/// let o = PhysicalRestoreOptions::new("warmspare --config /etc/warmspare.toml wal fetch %f %p")
///     .with_standby(true);
/// assert_eq!(o.target, RecoveryTarget::Latest);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhysicalRestoreOptions {
    /// Where recovery stops (standbys: [`RecoveryTarget::Latest`] only).
    pub target: RecoveryTarget,
    /// Start as a standby fed from the repository (`standby.signal`)
    /// instead of recovering and promoting (`recovery.signal`).
    pub standby: bool,
    /// The `restore_command` to write, normally
    /// [`crate::wal::restore_command`].
    pub restore_command: String,
    /// The `tar` program (`tar` from the executable search path by default).
    pub tar: PathBuf,
}

impl PhysicalRestoreOptions {
    /// Recovery to the latest WAL with `restore_command`, not a standby.
    pub fn new(restore_command: impl Into<String>) -> Self {
        Self {
            target: RecoveryTarget::Latest,
            standby: false,
            restore_command: restore_command.into(),
            tar: PathBuf::from("tar"),
        }
    }
    /// Sets [`target`](Self::target).
    pub fn with_target(mut self, target: RecoveryTarget) -> Self {
        self.target = target;
        self
    }
    /// Sets [`standby`](Self::standby).
    pub fn with_standby(mut self, standby: bool) -> Self {
        self.standby = standby;
        self
    }
    /// Sets [`tar`](Self::tar).
    pub fn with_tar(mut self, tar: impl Into<PathBuf>) -> Self {
        self.tar = tar.into();
        self
    }
}

/// What a physical snapshot's manifest records in `meta`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhysicalMeta {
    /// [`PHYSICAL_FORMAT`].
    pub format: String,
    /// `user@host:port/database` of the source (no password).
    pub source: String,
    /// The cluster's system identifier, when the role could read it;
    /// stored as a decimal string.
    #[serde(with = "crate::serde_util::u64_string_opt")]
    pub system_identifier: Option<u64>,
    /// `server_version` of the source.
    pub server_version: String,
    /// `server_version_num` of the source.
    pub server_version_num: u32,
    /// The timeline the backup started on.
    pub timeline: u32,
    /// The timeline it ended on (differs only if the source was promoted
    /// meanwhile).
    pub stop_timeline: u32,
    /// Where replay starts (`START WAL LOCATION`).
    pub start_lsn: Lsn,
    /// Where the backup is consistent: replay must reach this point.
    pub stop_lsn: Lsn,
    /// The segment holding `start_lsn`: WAL retention keeps everything
    /// from here on while this snapshot is kept.
    pub start_wal: String,
    /// The last segment the backup needs.
    pub stop_wal: String,
    /// The cluster's WAL segment size in bytes.
    pub wal_segment_size: u64,
    /// The `backup_label` written by the server.
    pub backup_label: String,
    /// The snapshot file with the tar archive ([`BASE_FILE`]).
    pub base_file: String,
    /// `pg_basebackup --version` of the program that took it.
    pub pg_basebackup: String,
    /// How the starting checkpoint was taken.
    pub checkpoint: Checkpoint,
}

impl PhysicalMeta {
    /// Reads the metadata of a physical snapshot's manifest.
    pub fn from_manifest(manifest: &Manifest) -> Result<Self> {
        let bad = |reason: String| Error::BadMeta {
            id: manifest.id.clone(),
            reason,
        };
        let meta: PhysicalMeta =
            serde_json::from_value(manifest.meta.clone()).map_err(|e| bad(e.to_string()))?;
        if meta.format != PHYSICAL_FORMAT {
            return Err(bad(format!(
                "format {:?} is not {PHYSICAL_FORMAT:?}; this build cannot restore it",
                meta.format
            )));
        }
        if !manifest.files.contains_key(&meta.base_file) {
            return Err(bad(format!(
                "the manifest lists no file {:?}",
                meta.base_file
            )));
        }
        crate::wal::WalFileName::parse(&meta.start_wal)
            .map_err(|e| bad(format!("start_wal: {e}")))?;
        Ok(meta)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn meta_roundtrips() {
        let meta = PhysicalMeta {
            format: PHYSICAL_FORMAT.into(),
            source: "postgres@db:5432/postgres".into(),
            system_identifier: Some(7_301_234_567_890_123_456),
            server_version: "15.4".into(),
            server_version_num: 150004,
            timeline: 1,
            stop_timeline: 1,
            start_lsn: "0/2000028".parse().unwrap(),
            stop_lsn: "0/2000100".parse().unwrap(),
            start_wal: "000000010000000000000002".into(),
            stop_wal: "000000010000000000000002".into(),
            wal_segment_size: 16 << 20,
            backup_label: "START WAL LOCATION: 0/2000028".into(),
            base_file: BASE_FILE.into(),
            pg_basebackup: "pg_basebackup (PostgreSQL) 15.4".into(),
            checkpoint: Checkpoint::Fast,
        };
        let value = serde_json::to_value(&meta).unwrap();
        assert_eq!(value["start_lsn"], "0/2000028");
        assert_eq!(value["system_identifier"], "7301234567890123456");
        assert_eq!(serde_json::from_value::<PhysicalMeta>(value).unwrap(), meta);
    }
}
