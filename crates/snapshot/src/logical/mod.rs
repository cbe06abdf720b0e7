//! PostgreSQL logical snapshots: `pg_dump --format=custom` streamed into the
//! repository, or `pg_dump --format=directory --jobs N` uploaded file by
//! file as it is written ([`backup_logical`]), and restored into a warm
//! spare through a staging database and a rename swap
//! ([`restore_logical`]).

mod archive;
mod backup;
mod chunks;
mod deep;
mod direct;
mod directory;
mod globals;
mod load;
mod restore;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use warmspare_store::Manifest;

use crate::error::{Error, Result};
pub use crate::pg::TableRows;

pub use backup::{LogicalBackup, backup_logical};
pub use deep::{DeepVerifyReport, verify_deep};
pub use globals::GlobalsReport;
pub use restore::{PREVIOUS_SUFFIX, RestoreReport, STAGING_SUFFIX, restore_logical};

/// `meta.format` of a logical snapshot in `pg_dump`'s custom format (one
/// archive, [`DUMP_FILE`]).
pub const LOGICAL_FORMAT: &str = "pg_dump-custom";
/// `meta.format` of a logical snapshot in `pg_dump`'s directory format
/// (one object per file of the dump under [`DUMP_DIR`]`/`).
pub const LOGICAL_DIRECTORY_FORMAT: &str = "pg_dump-directory";
/// The snapshot file holding the `pg_dump` archive (custom format).
pub const DUMP_FILE: &str = "database.pgdump";
/// The snapshot directory holding a directory-format dump: `toc.dat` and
/// one file per table (`<dump id>.dat`) and for large objects.
pub const DUMP_DIR: &str = "database";
/// The snapshot file holding `pg_dumpall --globals-only` (roles,
/// tablespaces), when taken.
pub const GLOBALS_FILE: &str = "globals.sql";

/// The default time allowed to connect to a server.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Options of [`backup_logical`].
///
/// ```
/// use warmspare_snapshot::LogicalBackupOptions;
/// let options = LogicalBackupOptions::default()
///     .with_bin_dir("/usr/lib/postgresql/16/bin")
///     .with_globals(true);
/// assert!(options.count_rows);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogicalBackupOptions {
    /// The directory holding `pg_dump` and `pg_dumpall`; `None` searches the
    /// executable search path.
    pub bin_dir: Option<PathBuf>,
    /// Also store `pg_dumpall --globals-only` (roles and tablespaces, which
    /// a database dump does not contain). Needs a superuser unless
    /// `role_passwords` is off.
    pub globals: bool,
    /// Include role password hashes in the globals (off:
    /// `--no-role-passwords`, which works without a superuser).
    pub role_passwords: bool,
    /// Record exact per-table row counts, taken in the dump's own snapshot,
    /// so that restores can check them.
    pub count_rows: bool,
    /// How long connecting may take.
    #[serde(with = "crate::serde_util::duration")]
    pub connect_timeout: Duration,
    /// `pg_dump --lock-wait-timeout`: fail instead of waiting longer for a
    /// table lock held by a conflicting session.
    #[serde(with = "crate::serde_util::duration_opt")]
    pub lock_wait_timeout: Option<Duration>,
    /// `pg_dump` jobs. 1 (the default): the custom format, streamed from
    /// `pg_dump`'s output with no local disk. More: the directory format
    /// with `pg_dump --jobs N` (N tables dumped at once, on N + 1
    /// connections), each file uploaded while it is written; the local
    /// spool holds what the upload has not caught up with, at most about
    /// the N largest tables. It pays off when the database has several
    /// large tables and the server has cores to spare; one dominant table
    /// is dumped by one job whatever N (see `benches/README.md`).
    pub jobs: u32,
    /// Where the spool directory of a directory-format dump goes; `None`:
    /// the system's temporary directory.
    pub spool_dir: Option<PathBuf>,
}

impl Default for LogicalBackupOptions {
    fn default() -> Self {
        Self {
            bin_dir: None,
            globals: false,
            role_passwords: true,
            count_rows: true,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            lock_wait_timeout: None,
            jobs: 1,
            spool_dir: None,
        }
    }
}

impl LogicalBackupOptions {
    /// Sets [`bin_dir`](Self::bin_dir).
    pub fn with_bin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bin_dir = Some(dir.into());
        self
    }
    /// Sets [`globals`](Self::globals).
    pub fn with_globals(mut self, globals: bool) -> Self {
        self.globals = globals;
        self
    }
    /// Sets [`role_passwords`](Self::role_passwords).
    pub fn with_role_passwords(mut self, yes: bool) -> Self {
        self.role_passwords = yes;
        self
    }
    /// Sets [`count_rows`](Self::count_rows).
    pub fn with_count_rows(mut self, yes: bool) -> Self {
        self.count_rows = yes;
        self
    }
    /// Sets [`connect_timeout`](Self::connect_timeout).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
    /// Sets [`lock_wait_timeout`](Self::lock_wait_timeout).
    pub fn with_lock_wait_timeout(mut self, timeout: Duration) -> Self {
        self.lock_wait_timeout = Some(timeout);
        self
    }
    /// Sets [`jobs`](Self::jobs) (at least 1).
    pub fn with_jobs(mut self, jobs: u32) -> Self {
        self.jobs = jobs.max(1);
        self
    }
    /// Sets [`spool_dir`](Self::spool_dir).
    pub fn with_spool_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.spool_dir = Some(dir.into());
        self
    }
}

/// Options of [`restore_logical`].
///
/// ```
/// use warmspare_snapshot::RestoreOptions;
/// let options = RestoreOptions::default().with_jobs(4).with_spool_dir("/var/tmp");
/// assert_eq!(options.jobs, 4);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RestoreOptions {
    /// The directory holding `pg_restore`; `None` searches the executable
    /// search path.
    pub bin_dir: Option<PathBuf>,
    /// `pg_restore` jobs. For a custom-format snapshot, 1 streams the dump
    /// straight into `pg_restore`'s standard input (no disk space needed);
    /// more spool the verified dump to a temporary file first, because a
    /// parallel `pg_restore` needs a seekable archive (unless
    /// [`parallel_load`](Self::parallel_load) is set). A directory-format
    /// snapshot is always spooled (its objects downloaded in parallel and
    /// verified) and restored with `pg_restore --jobs N`.
    pub jobs: u32,
    /// With more than one [`jobs`](Self::jobs) and a custom-format
    /// snapshot: stream the dump (no spool) and load the table data over
    /// `jobs` connections, a large table's rows split among them, instead
    /// of `pg_restore --jobs` (which gives each table to one connection).
    /// With one job a custom-format snapshot always goes through this
    /// loader, over one connection (rows in the source's order). Both
    /// need a `UTF8` database: a snapshot in another encoding is restored
    /// by `pg_restore` alone (streamed with one job, spooled with more).
    /// The tables' contents are the same, their rows' physical order is
    /// not (a `pg_dump` of the copy lists rows in another order). See
    /// `logical/load.rs`.
    pub parallel_load: bool,
    /// Where the spool file or directory goes (it needs the dump's
    /// uncompressed size); `None`: the system's temporary directory.
    pub spool_dir: Option<PathBuf>,
    /// Apply the snapshot's globals (`pg_dumpall --globals-only`: roles,
    /// tablespaces) to the target server before restoring, carefully:
    /// only roles that do not exist there are created (with their
    /// attributes, password hashes and memberships), existing roles are
    /// never altered (the connecting role's password in particular), and
    /// tablespaces are skipped (their directories belong to another
    /// machine). Needs a role that may create roles. See
    /// `docs/` and [`restore_logical`].
    pub globals: bool,
    /// The database to connect to for `CREATE`/`DROP`/`ALTER DATABASE`
    /// (default `postgres`, or `template1` when the target is `postgres`).
    pub maintenance_db: Option<String>,
    /// `pg_restore --no-owner`: objects belong to the restoring role.
    pub no_owner: bool,
    /// `pg_restore --no-privileges`: skip GRANT/REVOKE.
    pub no_privileges: bool,
    /// Compare row counts with the manifest before the swap.
    pub check_row_counts: bool,
    /// How often the swap is tried when new sessions keep arriving on the
    /// current database between terminating them and the rename.
    pub swap_attempts: u32,
    /// How long connecting may take.
    #[serde(with = "crate::serde_util::duration")]
    pub connect_timeout: Duration,
    /// Allow replacing the very database the snapshot was taken from (same
    /// server system identifier and name). Off by default: restoring over
    /// the primary by mistake is the worst accident this tool could cause.
    pub allow_source_overwrite: bool,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        Self {
            bin_dir: None,
            jobs: 1,
            parallel_load: false,
            spool_dir: None,
            globals: false,
            maintenance_db: None,
            no_owner: false,
            no_privileges: false,
            check_row_counts: true,
            swap_attempts: 5,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            allow_source_overwrite: false,
        }
    }
}

impl RestoreOptions {
    /// Sets [`bin_dir`](Self::bin_dir).
    pub fn with_bin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bin_dir = Some(dir.into());
        self
    }
    /// Sets [`jobs`](Self::jobs) (at least 1).
    pub fn with_jobs(mut self, jobs: u32) -> Self {
        self.jobs = jobs.max(1);
        self
    }
    /// Sets [`parallel_load`](Self::parallel_load).
    pub fn with_parallel_load(mut self, yes: bool) -> Self {
        self.parallel_load = yes;
        self
    }
    /// Sets [`spool_dir`](Self::spool_dir).
    pub fn with_spool_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.spool_dir = Some(dir.into());
        self
    }
    /// Sets [`globals`](Self::globals).
    pub fn with_globals(mut self, yes: bool) -> Self {
        self.globals = yes;
        self
    }
    /// Sets [`maintenance_db`](Self::maintenance_db).
    pub fn with_maintenance_db(mut self, db: impl Into<String>) -> Self {
        self.maintenance_db = Some(db.into());
        self
    }
    /// Sets [`no_owner`](Self::no_owner).
    pub fn with_no_owner(mut self, yes: bool) -> Self {
        self.no_owner = yes;
        self
    }
    /// Sets [`no_privileges`](Self::no_privileges).
    pub fn with_no_privileges(mut self, yes: bool) -> Self {
        self.no_privileges = yes;
        self
    }
    /// Sets [`check_row_counts`](Self::check_row_counts).
    pub fn with_check_row_counts(mut self, yes: bool) -> Self {
        self.check_row_counts = yes;
        self
    }
    /// Sets [`swap_attempts`](Self::swap_attempts) (at least 1).
    pub fn with_swap_attempts(mut self, attempts: u32) -> Self {
        self.swap_attempts = attempts.max(1);
        self
    }
    /// Sets [`connect_timeout`](Self::connect_timeout).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
    /// Sets [`allow_source_overwrite`](Self::allow_source_overwrite).
    pub fn with_allow_source_overwrite(mut self, yes: bool) -> Self {
        self.allow_source_overwrite = yes;
        self
    }
}

/// What a logical snapshot's manifest records in `meta`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogicalMeta {
    /// [`LOGICAL_FORMAT`] or [`LOGICAL_DIRECTORY_FORMAT`].
    pub format: String,
    /// The database dumped.
    pub database: String,
    /// `user@host:port/database` of the source (no password).
    pub source: String,
    /// The source server's system identifier (`pg_control_system()`), when
    /// the role could read it; stored as a decimal string.
    #[serde(with = "crate::serde_util::u64_string_opt")]
    pub system_identifier: Option<u64>,
    /// `server_version` of the source.
    pub server_version: String,
    /// `server_version_num` of the source.
    pub server_version_num: u32,
    /// The database's encoding (`UTF8`).
    pub encoding: String,
    /// The database's `LC_COLLATE`.
    pub lc_collate: String,
    /// The database's `LC_CTYPE`.
    pub lc_ctype: String,
    /// The snapshot file with the archive ([`DUMP_FILE`]), or for the
    /// directory format the directory holding the dump's files
    /// ([`DUMP_DIR`]).
    pub dump_file: String,
    /// The snapshot file with the globals, if taken ([`GLOBALS_FILE`]).
    pub globals_file: Option<String>,
    /// Exact row counts per table in the dump's snapshot; `None` when
    /// counting was off.
    pub row_counts: Option<Vec<TableRows>>,
    /// The programs that wrote the snapshot.
    pub tools: ToolVersions,
    /// The options the snapshot was taken with.
    pub options: RecordedOptions,
}

/// `--version` lines of the programs that wrote a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolVersions {
    /// `pg_dump (PostgreSQL) 15.4 ...`.
    pub pg_dump: String,
    /// `pg_dumpall (PostgreSQL) 15.4 ...`, when the globals were taken.
    pub pg_dumpall: Option<String>,
}

/// The backup options that shape a snapshot's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedOptions {
    /// Globals taken.
    pub globals: bool,
    /// Role passwords included in the globals.
    pub role_passwords: bool,
    /// Rows counted.
    pub count_rows: bool,
    /// `pg_dump` jobs (1: custom format; more: directory format).
    #[serde(default = "one")]
    pub jobs: u32,
}

fn one() -> u32 {
    1
}

impl LogicalMeta {
    /// Reads the metadata of a logical snapshot's manifest.
    pub fn from_manifest(manifest: &Manifest) -> Result<Self> {
        let meta: LogicalMeta =
            serde_json::from_value(manifest.meta.clone()).map_err(|e| Error::BadMeta {
                id: manifest.id.clone(),
                reason: e.to_string(),
            })?;
        let needed = match meta.format.as_str() {
            LOGICAL_FORMAT => meta.dump_file.clone(),
            LOGICAL_DIRECTORY_FORMAT => format!("{}/{}", meta.dump_file, directory::TOC_FILE),
            other => {
                return Err(Error::BadMeta {
                    id: manifest.id.clone(),
                    reason: format!(
                        "format {other:?} is neither {LOGICAL_FORMAT:?} nor \
                         {LOGICAL_DIRECTORY_FORMAT:?}; this build cannot restore it"
                    ),
                });
            }
        };
        if !manifest.files.contains_key(&needed) {
            return Err(Error::BadMeta {
                id: manifest.id.clone(),
                reason: format!("the manifest lists no file {needed:?}"),
            });
        }
        Ok(meta)
    }

    /// Whether the dump is in the directory format.
    pub fn is_directory(&self) -> bool {
        self.format == LOGICAL_DIRECTORY_FORMAT
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn options_from_toml_with_defaults() {
        let o: LogicalBackupOptions =
            toml::from_str("globals = true\nlock_wait_timeout = \"30s\"").unwrap();
        assert!(o.globals && o.count_rows);
        assert_eq!(o.jobs, 1);
        let four: LogicalBackupOptions = toml::from_str("jobs = 4").unwrap();
        assert_eq!(four.jobs, 4);
        assert_eq!(o.lock_wait_timeout, Some(Duration::from_secs(30)));
        assert_eq!(o.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert!(toml::from_str::<LogicalBackupOptions>("glob = true").is_err());

        let r: RestoreOptions = toml::from_str("jobs = 4\nconnect_timeout = \"3s\"").unwrap();
        assert_eq!((r.jobs, r.connect_timeout), (4, Duration::from_secs(3)));
        assert!(r.check_row_counts && !r.allow_source_overwrite);
        assert!(toml::from_str::<RestoreOptions>("job = 4").is_err());
    }

    #[test]
    fn meta_roundtrips_with_large_identifiers() {
        let meta = LogicalMeta {
            format: LOGICAL_FORMAT.into(),
            database: "builder".into(),
            source: "u@h:5432/builder".into(),
            system_identifier: Some(7_301_234_567_890_123_456),
            server_version: "15.4".into(),
            server_version_num: 150004,
            encoding: "UTF8".into(),
            lc_collate: "C.UTF-8".into(),
            lc_ctype: "C.UTF-8".into(),
            dump_file: DUMP_FILE.into(),
            globals_file: None,
            row_counts: Some(vec![TableRows {
                schema: "public".into(),
                table: "t".into(),
                rows: 3,
            }]),
            tools: ToolVersions {
                pg_dump: "pg_dump (PostgreSQL) 15.4".into(),
                pg_dumpall: None,
            },
            options: RecordedOptions {
                globals: false,
                role_passwords: true,
                count_rows: true,
                jobs: 1,
            },
        };
        let value = serde_json::to_value(&meta).unwrap();
        assert_eq!(value["system_identifier"], "7301234567890123456");
        let back: LogicalMeta = serde_json::from_value(value.clone()).unwrap();
        assert_eq!(back, meta);
        // Written before the directory format: no jobs recorded.
        let mut old = value;
        old["options"].as_object_mut().unwrap().remove("jobs");
        let back: LogicalMeta = serde_json::from_value(old).unwrap();
        assert_eq!(back.options.jobs, 1);
    }
}
