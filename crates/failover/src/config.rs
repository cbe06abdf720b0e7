//! The `[failover]` section of the configuration.
//!
//! Durations are written in humantime form (`"1s"`, `"5m"`, `"1h 30m"`).
//! Every field has a default, so an empty `[failover]` table (or none at
//! all) is valid.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What the agent does when the active site is judged unhealthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailoverMode {
    /// Take the lease and promote the spare without waiting for an operator.
    #[default]
    Automatic,
    /// Alert, then wait for an operator to run `warmspare failover`.
    Manual,
    /// Alert only; never promote.
    Notify,
}

impl FailoverMode {
    /// The name used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            FailoverMode::Automatic => "automatic",
            FailoverMode::Manual => "manual",
            FailoverMode::Notify => "notify",
        }
    }
}

impl fmt::Display for FailoverMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Health-probe thresholds, lease timing and guards for failover.
///
/// Construct it with [`Default`] and struct-update syntax, or deserialize it
/// from the `[failover]` table:
///
/// ```
/// use std::time::Duration;
/// use warmspare_failover::{FailoverConfig, FailoverMode};
///
/// let config = FailoverConfig {
///     mode: FailoverMode::Manual,
///     lease_ttl: Duration::from_secs(10),
///     ..FailoverConfig::default()
/// };
/// config.validate().unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailoverConfig {
    /// Whether a failover happens without an operator.
    pub mode: FailoverMode,
    /// Time between two health probes.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// How long one probe may take before it counts as failed.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive failed probes after which a site is unhealthy.
    pub unhealthy_threshold: u32,
    /// Consecutive successful probes after which a site is healthy again.
    pub healthy_threshold: u32,
    /// Lifetime of the lease; the holder must renew it within this time.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// No automatic failover when the spare is further behind than this.
    #[serde(with = "humantime_serde")]
    pub max_data_loss: Duration,
    /// Minimum time between two failovers (against flapping).
    #[serde(with = "humantime_serde")]
    pub cooldown: Duration,
    /// Shell commands run at the site that was promoted.
    pub on_promote: Vec<String>,
    /// Shell commands run at a site that fences itself.
    pub on_fence: Vec<String>,
    /// Shell commands the watchdog runs to restart the local service once
    /// it has failed `unhealthy_threshold` probes in a row, before any
    /// handover.
    pub on_restart: Vec<String>,
    /// Planned switchover: how long the old holder may take to read its
    /// final WAL position, and how long the successor waits to replay it
    /// before it raises a critical alert (it keeps waiting; it never
    /// promotes without the data on its own).
    #[serde(with = "humantime_serde")]
    pub switchover_timeout: Duration,
    /// Time limit of each hook command; a command still running then is
    /// killed and counts as failed.
    #[serde(with = "humantime_serde")]
    pub hook_timeout: Duration,
    /// How many times the watchdog restarts the local service (the
    /// `on_restart` hooks) in one unhealthy spell before a holder hands
    /// the lease over; 0: never restart, hand over at once.
    pub restart_attempts: u32,
    /// How long the service has after each restart (counted from the end
    /// of the restart) to become healthy again before the next attempt or,
    /// after the last one, the handover. Unset: five probe `interval`s
    /// (see [`FailoverConfig::effective_restart_grace`]).
    #[serde(
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub restart_grace: Option<Duration>,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        FailoverConfig {
            mode: FailoverMode::Automatic,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            unhealthy_threshold: 3,
            healthy_threshold: 2,
            lease_ttl: Duration::from_secs(6),
            max_data_loss: Duration::from_secs(5 * 60),
            cooldown: Duration::from_secs(30 * 60),
            on_promote: Vec::new(),
            on_fence: Vec::new(),
            on_restart: Vec::new(),
            switchover_timeout: crate::policy::SWITCHOVER_TIMEOUT,
            hook_timeout: Duration::from_secs(30),
            restart_attempts: DEFAULT_RESTART_ATTEMPTS,
            restart_grace: None,
        }
    }
}

/// The watchdog's restarts per unhealthy spell when `restart_attempts` is
/// not set.
pub const DEFAULT_RESTART_ATTEMPTS: u32 = 1;

/// The watchdog's grace, in probe intervals, when `restart_grace` is not
/// set.
pub const DEFAULT_RESTART_GRACE_INTERVALS: u32 = 5;

/// A failover setting that cannot work, with the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidFailoverConfig {
    /// The key inside `[failover]`, such as `lease_ttl`.
    pub key: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl FailoverConfig {
    /// The watchdog's grace after each restart: `restart_grace`, or
    /// [`DEFAULT_RESTART_GRACE_INTERVALS`] probe intervals when it is
    /// unset.
    pub fn effective_restart_grace(&self) -> Duration {
        self.restart_grace
            .unwrap_or(self.interval * DEFAULT_RESTART_GRACE_INTERVALS)
    }

    /// Checks the relations between the settings that deserialization cannot
    /// check on its own (non-zero thresholds, a lease that outlives a probe
    /// interval).
    pub fn validate(&self) -> Result<(), InvalidFailoverConfig> {
        let invalid = |key, message: &str| {
            Err(InvalidFailoverConfig {
                key,
                message: message.to_owned(),
            })
        };
        if self.interval.is_zero() {
            return invalid("interval", "must be greater than zero");
        }
        if self.timeout.is_zero() {
            return invalid("timeout", "must be greater than zero");
        }
        if self.unhealthy_threshold == 0 {
            return invalid("unhealthy_threshold", "must be at least 1");
        }
        if self.healthy_threshold == 0 {
            return invalid("healthy_threshold", "must be at least 1");
        }
        if self.lease_ttl <= self.interval {
            return invalid(
                "lease_ttl",
                "must be longer than `interval`, or the holder cannot renew the lease in time",
            );
        }
        if self.switchover_timeout.is_zero() {
            return invalid("switchover_timeout", "must be greater than zero");
        }
        if self.hook_timeout.is_zero() {
            return invalid("hook_timeout", "must be greater than zero");
        }
        if let (Some(grace), 1..) = (self.restart_grace, self.restart_attempts) {
            if grace.is_zero() {
                return invalid(
                    "restart_grace",
                    "must be greater than zero while `restart_attempts` is above 0",
                );
            }
            // A restarted service needs `healthy_threshold` good probes to
            // count as healthy again; a shorter grace restarts (or hands
            // over) a service that has already recovered. (Only checked
            // when set: the default of five intervals predates the key.)
            let needed = self.interval.saturating_mul(self.healthy_threshold);
            if grace < needed {
                return Err(InvalidFailoverConfig {
                    key: "restart_grace",
                    message: format!(
                        "must be at least `healthy_threshold` x `interval` ({}), the time a \
                         restarted service needs to be seen healthy again",
                        humantime::format_duration(needed)
                    ),
                });
            }
        }
        for (key, hooks) in [
            ("on_promote", &self.on_promote),
            ("on_fence", &self.on_fence),
            ("on_restart", &self.on_restart),
        ] {
            if hooks.iter().any(|h| h.trim().is_empty()) {
                return invalid(key, "hook commands must not be empty");
            }
        }
        Ok(())
    }
}

/// `#[serde(with = ...)]` helpers for durations in humantime form.
pub(crate) mod humantime_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de};

    /// The same for an optional duration (a missing key is `None`).
    pub(crate) mod option {
        use std::time::Duration;

        use serde::{Deserializer, Serializer};

        pub(crate) fn serialize<S: Serializer>(
            d: &Option<Duration>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<Duration>, D::Error> {
            super::deserialize(d).map(Some)
        }
    }

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(text.trim()).map_err(|e| {
            de::Error::custom(format_args!(
                "invalid duration {text:?}: {e} (write it like \"6s\", \"5m\" or \"1h 30m\")"
            ))
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        failover: FailoverConfig,
    }

    #[test]
    fn defaults_match_the_design_example() {
        let c = FailoverConfig::default();
        assert_eq!(c.mode, FailoverMode::Automatic);
        assert_eq!(c.interval, Duration::from_secs(1));
        assert_eq!(c.timeout, Duration::from_secs(2));
        assert_eq!((c.unhealthy_threshold, c.healthy_threshold), (3, 2));
        assert_eq!(c.lease_ttl, Duration::from_secs(6));
        assert_eq!(c.max_data_loss, Duration::from_secs(300));
        assert_eq!(c.cooldown, Duration::from_secs(1800));
        assert_eq!(c.switchover_timeout, Duration::from_secs(60));
        assert_eq!(c.hook_timeout, Duration::from_secs(30));
        assert!(c.on_restart.is_empty());
        assert_eq!((c.restart_attempts, c.restart_grace), (1, None));
        assert_eq!(c.effective_restart_grace(), Duration::from_secs(5));
        c.validate().unwrap();
    }

    #[test]
    fn parses_every_key() {
        let doc: Doc = toml::from_str(
            r#"
            [failover]
            mode = "manual"
            interval = "500ms"
            timeout = "2s"
            unhealthy_threshold = 5
            healthy_threshold = 1
            lease_ttl = "1m 30s"
            max_data_loss = "5m"
            cooldown = "1h"
            on_promote = ["echo promoted"]
            on_fence = ["systemctl stop hab-sup"]
            on_restart = ["systemctl restart postgresql"]
            switchover_timeout = "2m"
            hook_timeout = "5m"
            restart_attempts = 3
            restart_grace = "20s"
            "#,
        )
        .unwrap();
        let c = doc.failover;
        assert_eq!(c.mode, FailoverMode::Manual);
        assert_eq!(c.interval, Duration::from_millis(500));
        assert_eq!(c.lease_ttl, Duration::from_secs(90));
        assert_eq!(c.cooldown, Duration::from_secs(3600));
        assert_eq!(c.on_fence, ["systemctl stop hab-sup"]);
        assert_eq!(c.on_restart, ["systemctl restart postgresql"]);
        assert_eq!(c.switchover_timeout, Duration::from_secs(120));
        assert_eq!(c.hook_timeout, Duration::from_secs(300));
        assert_eq!(c.restart_attempts, 3);
        assert_eq!(c.restart_grace, Some(Duration::from_secs(20)));
        assert_eq!(c.effective_restart_grace(), Duration::from_secs(20));
        assert_eq!(
            crate::actions::Hooks::from_config("primary", &c).timeout,
            Duration::from_secs(300),
            "the hook runner takes its limit from the file"
        );
        c.validate().unwrap();
    }

    #[test]
    fn empty_table_gives_defaults() {
        let doc: Doc = toml::from_str("[failover]\n").unwrap();
        assert_eq!(doc.failover, FailoverConfig::default());
    }

    #[test]
    fn bad_duration_is_a_located_error() {
        let err = toml::from_str::<Doc>("[failover]\nlease_ttl = \"6 parsecs\"\n").unwrap_err();
        assert!(err.message().contains("invalid duration"), "{err}");
        let span = err.span().unwrap();
        assert!(span.start >= "[failover]\n".len(), "{span:?}");
    }

    #[test]
    fn unknown_key_and_mode_are_rejected() {
        let err = toml::from_str::<Doc>("[failover]\nlease_tll = \"6s\"\n").unwrap_err();
        assert!(err.message().contains("lease_tll"), "{err}");
        let err = toml::from_str::<Doc>("[failover]\nmode = \"yolo\"\n").unwrap_err();
        assert!(err.message().contains("yolo"), "{err}");
    }

    #[test]
    fn validate_rejects_unsafe_relations() {
        let c = FailoverConfig {
            lease_ttl: Duration::from_secs(1),
            ..FailoverConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().key, "lease_ttl");
        let c = FailoverConfig {
            unhealthy_threshold: 0,
            ..FailoverConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().key, "unhealthy_threshold");
        let c = FailoverConfig {
            on_promote: vec![" ".into()],
            ..FailoverConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().key, "on_promote");
        let c = FailoverConfig {
            on_restart: vec![String::new()],
            ..FailoverConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().key, "on_restart");
        let c = FailoverConfig {
            switchover_timeout: Duration::ZERO,
            ..FailoverConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().key, "switchover_timeout");
        let c = FailoverConfig {
            hook_timeout: Duration::ZERO,
            ..FailoverConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().key, "hook_timeout");
    }

    /// Without `restart_grace` the grace follows `interval`; the policy
    /// gets both keys, while its trust in the peer's reports keeps five
    /// intervals whatever the grace.
    #[test]
    fn restart_keys_reach_the_policy() {
        let doc: Doc =
            toml::from_str("[failover]\ninterval = \"2s\"\nlease_ttl = \"12s\"\n").unwrap();
        let c = doc.failover;
        assert_eq!(c.effective_restart_grace(), Duration::from_secs(10));
        let p = crate::policy::PolicyConfig::from_failover(&c);
        assert_eq!(p.watchdog_restarts, 1);
        assert_eq!(p.watchdog_grace, Duration::from_secs(10));

        let doc: Doc =
            toml::from_str("[failover]\nrestart_attempts = 4\nrestart_grace = \"1m\"\n").unwrap();
        let p = crate::policy::PolicyConfig::from_failover(&doc.failover);
        p.validate().unwrap();
        assert_eq!(p.watchdog_restarts, 4);
        assert_eq!(p.watchdog_grace, Duration::from_secs(60));
        assert_eq!(p.peer_report_max_age(), Duration::from_secs(5));

        let doc: Doc = toml::from_str("[failover]\nrestart_attempts = 0\n").unwrap();
        doc.failover.validate().unwrap();
        let p = crate::policy::PolicyConfig::from_failover(&doc.failover);
        assert_eq!(p.watchdog_restarts, 0);
        p.validate().unwrap();
    }

    #[test]
    fn restart_keys_are_validated() {
        let c = FailoverConfig {
            restart_grace: Some(Duration::ZERO),
            ..FailoverConfig::default()
        };
        let err = c.validate().unwrap_err();
        assert_eq!(err.key, "restart_grace");
        assert!(err.message.contains("greater than zero"), "{err}");
        // Without restarts the grace is never used.
        let c = FailoverConfig {
            restart_attempts: 0,
            restart_grace: Some(Duration::ZERO),
            ..FailoverConfig::default()
        };
        c.validate().unwrap();
        // Shorter than the good probes a recovered service needs.
        let c = FailoverConfig {
            restart_attempts: 2,
            restart_grace: Some(Duration::from_millis(1_500)),
            ..FailoverConfig::default()
        };
        let err = c.validate().unwrap_err();
        assert_eq!(err.key, "restart_grace");
        assert!(err.message.contains("healthy_threshold"), "{err}");
        let c = FailoverConfig {
            restart_grace: Some(Duration::from_secs(2)),
            ..FailoverConfig::default()
        };
        c.validate().unwrap();
        // The default grace (five intervals) is never refused, whatever
        // `healthy_threshold` says: files that loaded before still load.
        let c = FailoverConfig {
            healthy_threshold: 8,
            ..FailoverConfig::default()
        };
        c.validate().unwrap();
        // Wrong types are located errors naming the key.
        let err = toml::from_str::<Doc>("[failover]\nrestart_attempts = -1\n").unwrap_err();
        assert!(err.span().is_some(), "{err}");
        let err = toml::from_str::<Doc>("[failover]\nrestart_grace = \"soon\"\n").unwrap_err();
        assert!(err.message().contains("invalid duration"), "{err}");
        let err = toml::from_str::<Doc>("[failover]\nrestart_attempt = 2\n").unwrap_err();
        assert!(err.message().contains("restart_attempt"), "{err}");
    }

    #[test]
    fn serializes_in_humantime_form() {
        let text = toml::to_string(&FailoverConfig::default()).unwrap();
        assert!(text.contains("lease_ttl = \"6s\""), "{text}");
        assert!(text.contains("cooldown = \"30m\""), "{text}");
        assert!(text.contains("switchover_timeout = \"1m\""), "{text}");
        assert!(text.contains("restart_attempts = 1"), "{text}");
        assert!(!text.contains("restart_grace"), "unset: left out\n{text}");
        let back: FailoverConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, FailoverConfig::default());
        let set = FailoverConfig {
            restart_grace: Some(Duration::from_secs(90)),
            ..FailoverConfig::default()
        };
        let text = toml::to_string(&set).unwrap();
        assert!(text.contains("restart_grace = \"1m 30s\""), "{text}");
        assert_eq!(toml::from_str::<FailoverConfig>(&text).unwrap(), set);
    }
}
