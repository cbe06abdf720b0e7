//! The `[schedule]` section: when the agent backs up (logical and
//! physical), syncs, restores, verifies and prunes.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};
use time::OffsetDateTime;

use super::cron::CronExpr;

/// When a job runs: a five-field cron expression (UTC) or a fixed interval
/// (`"every 5m"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Schedule {
    /// A cron expression such as `"0 */4 * * *"`.
    Cron(CronExpr),
    /// A fixed interval such as `"every 30s"`.
    Every(Duration),
}

/// Why a schedule expression was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid schedule {text:?}: {reason}")]
pub struct ScheduleError {
    text: String,
    reason: String,
}

impl Schedule {
    /// The first time strictly after `after` at which the job is due. For
    /// intervals that is `after + interval`: the caller passes the time the
    /// previous run started.
    pub fn next_after(&self, after: OffsetDateTime) -> Option<OffsetDateTime> {
        match self {
            Schedule::Cron(expr) => expr.next_after(after),
            Schedule::Every(interval) => after.checked_add((*interval).try_into().ok()?),
        }
    }
}

impl FromStr for Schedule {
    type Err = ScheduleError;

    fn from_str(text: &str) -> Result<Self, ScheduleError> {
        let error = |reason: String| ScheduleError {
            text: text.to_owned(),
            reason,
        };
        let trimmed = text.trim();
        if let Some(interval) = trimmed.strip_prefix("every ") {
            let interval = humantime::parse_duration(interval.trim())
                .map_err(|e| error(format!("{e} (write it like \"every 30s\" or \"every 5m\")")))?;
            if interval < Duration::from_secs(1) {
                return Err(error("the interval must be at least 1s".into()));
            }
            return Ok(Schedule::Every(interval));
        }
        trimmed
            .parse()
            .map(Schedule::Cron)
            .map_err(|e| error(format!("{e} (or write \"every <duration>\")")))
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Cron(expr) => expr.fmt(f),
            Schedule::Every(interval) => {
                write!(f, "every {}", humantime::format_duration(*interval))
            }
        }
    }
}

impl<'de> Deserialize<'de> for Schedule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(de::Error::custom)
    }
}

impl Serialize for Schedule {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// When each recurring job runs. A job without a schedule does not run on
/// its own (the CLI can still run it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    /// Recovery points (database snapshot plus artifact inventory).
    pub backup: Option<Schedule>,
    /// Physical base backups (`pg_basebackup`), the starting points of
    /// point-in-time recovery; the database must archive its WAL into the
    /// repository.
    pub physical_backup: Option<Schedule>,
    /// Artifact mirroring from the primary's store to the spare's.
    pub sync: Option<Schedule>,
    /// Restore of the newest snapshot into a logical-restore spare.
    pub restore: Option<Schedule>,
    /// Checksum verification of the newest recovery point.
    pub verify: Option<Schedule>,
    /// Application of the retention policy.
    pub prune: Option<Schedule>,
}

impl ScheduleConfig {
    /// The configured jobs as `(name, schedule)` pairs, in a fixed order.
    pub fn jobs(&self) -> impl Iterator<Item = (&'static str, Schedule)> + '_ {
        [
            ("backup", self.backup),
            ("physical_backup", self.physical_backup),
            ("sync", self.sync),
            ("restore", self.restore),
            ("verify", self.verify),
            ("prune", self.prune),
        ]
        .into_iter()
        .filter_map(|(name, s)| s.map(|s| (name, s)))
    }

    /// The schedule of the job called `name`, if it has one.
    pub fn get(&self, name: &str) -> Option<Schedule> {
        match name {
            "backup" => self.backup,
            "physical_backup" => self.physical_backup,
            "sync" => self.sync,
            "restore" => self.restore,
            "verify" => self.verify,
            "prune" => self.prune,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn parses_both_forms() {
        assert_eq!(
            "every 5m".parse::<Schedule>().unwrap(),
            Schedule::Every(Duration::from_secs(300))
        );
        assert_eq!(
            "  every 1h 30m ".parse::<Schedule>().unwrap().to_string(),
            "every 1h 30m"
        );
        let s: Schedule = "0 */4 * * *".parse().unwrap();
        assert!(matches!(s, Schedule::Cron(_)));
        assert_eq!(
            s.next_after(datetime!(2026-01-01 01:00 UTC)),
            Some(datetime!(2026-01-01 04:00 UTC))
        );
        assert_eq!(
            "every 30s"
                .parse::<Schedule>()
                .unwrap()
                .next_after(datetime!(2026-01-01 01:00 UTC)),
            Some(datetime!(2026-01-01 01:00:30 UTC))
        );
    }

    #[test]
    fn refuses_nonsense() {
        for (text, needle) in [
            ("every", "expected 5 fields"),
            ("every fortnight", "every 30s"),
            ("every 10ms", "at least 1s"),
            ("0 25 * * *", "hour field"),
            ("hourly", "expected 5 fields"),
        ] {
            let err = text.parse::<Schedule>().unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn table_round_trips() {
        let c: ScheduleConfig =
            toml::from_str("backup = \"0 */4 * * *\"\nsync = \"every 5m\"\nprune = \"@daily\"\nphysical_backup = \"0 1 * * 0\"\n")
                .unwrap();
        assert_eq!(
            c.jobs().map(|(n, _)| n).collect::<Vec<_>>(),
            ["backup", "physical_backup", "sync", "prune"]
        );
        assert_eq!(c.get("physical_backup"), c.physical_backup);
        assert!(c.physical_backup.is_some());
        let text = toml::to_string(&c).unwrap();
        assert_eq!(toml::from_str::<ScheduleConfig>(&text).unwrap(), c);
        let err = toml::from_str::<ScheduleConfig>("backups = \"@daily\"").unwrap_err();
        assert!(err.message().contains("backups"), "{err}");
    }
}
