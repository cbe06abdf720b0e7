//! The `[jobs]` table: settings of each scheduled job beyond its schedule,
//! today the time limit of one run.
//!
//! ```toml
//! [jobs]
//! backup = { timeout = "2h" }
//! physical_backup = { timeout = "12h" }
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A run's time limit when neither the file nor the embedder sets one.
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(6 * 60 * 60);

/// The default limit of a physical base backup: it copies the whole data
/// directory and cannot resume, so it gets longer than the others.
pub const DEFAULT_PHYSICAL_BACKUP_TIMEOUT: Duration = Duration::from_secs(12 * 60 * 60);

/// Per-job settings, one entry per job name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// The `backup` job (recovery points, logical snapshots).
    pub backup: JobConfig,
    /// The `physical_backup` job (base backups for point-in-time recovery).
    pub physical_backup: JobConfig,
    /// The `sync` job (artifact mirroring).
    pub sync: JobConfig,
    /// The `restore` job (logical-restore spares).
    pub restore: JobConfig,
    /// The `verify` job (checksums of the newest snapshot).
    pub verify: JobConfig,
    /// The `prune` job (retention).
    pub prune: JobConfig,
}

/// The settings of one job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobConfig {
    /// Limit on one run: a run still going after it is cancelled and
    /// recorded as `timed_out` (a failure). Unset: the job's default
    /// ([`JobsConfig::default_timeout`]).
    #[serde(with = "super::opt_duration", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

impl JobsConfig {
    /// The settings of the job called `name`, if it is a known job.
    pub fn get(&self, name: &str) -> Option<&JobConfig> {
        Some(match name {
            "backup" => &self.backup,
            "physical_backup" => &self.physical_backup,
            "sync" => &self.sync,
            "restore" => &self.restore,
            "verify" => &self.verify,
            "prune" => &self.prune,
            _ => return None,
        })
    }

    /// The configured timeout of job `name`, if the file sets one.
    pub fn timeout(&self, name: &str) -> Option<Duration> {
        self.get(name).and_then(|job| job.timeout)
    }

    /// The time limit of job `name` when nothing sets one:
    /// [`DEFAULT_PHYSICAL_BACKUP_TIMEOUT`] for `physical_backup`,
    /// [`DEFAULT_JOB_TIMEOUT`] for the others.
    pub fn default_timeout(name: &str) -> Duration {
        match name {
            "physical_backup" => DEFAULT_PHYSICAL_BACKUP_TIMEOUT,
            _ => DEFAULT_JOB_TIMEOUT,
        }
    }

    fn entries(&self) -> [(&'static str, &JobConfig); 6] {
        [
            ("backup", &self.backup),
            ("physical_backup", &self.physical_backup),
            ("sync", &self.sync),
            ("restore", &self.restore),
            ("verify", &self.verify),
            ("prune", &self.prune),
        ]
    }

    /// The dotted key and message of the first invalid setting.
    pub(super) fn check(&self) -> Result<(), (String, String)> {
        for (name, job) in self.entries() {
            if job.timeout.is_some_and(|t| t.is_zero()) {
                return Err((
                    format!("jobs.{name}.timeout"),
                    "must be greater than zero".into(),
                ));
            }
        }
        Ok(())
    }
}
