//! Retention: which snapshots `prune` keeps.
//!
//! [`RetentionConfig`] is the `[retention]` section of the configuration;
//! [`plan`] applies it to a list of snapshots. The planner is a pure
//! function (no I/O, no clock): [`crate::prune()`] feeds it the repository's
//! snapshots and acts on its answer.
//!
//! # Semantics
//!
//! As restic's `forget` and borg's `prune`: walking the snapshots newest
//! first, a snapshot is kept when it is one of the newest `keep_last`, or
//! when it is the newest snapshot of a day (UTC) and fewer than
//! `keep_daily` days have had their snapshot kept yet; likewise ISO weeks
//! and months. "The last N days" are thus the N most recent days *that have
//! snapshots*, not calendar days before today: when backups stopped for a
//! while, prune still keeps N dailies instead of deleting every one of them.
//! This also makes the plan independent of the current time, and
//! idempotent: planning again on the kept set keeps all of it.
//!
//! The newest snapshot is always kept (`keep_last = 0` acts as 1, and
//! [`RetentionConfig::validate`] refuses it).
//!
//! Some snapshots are kept whatever the rules say: those a kept recovery
//! point names (a point whose snapshot is gone is broken). [`Plan::protect`]
//! moves them from `delete` to `keep` with [`KeepReason::Referenced`]; the
//! same planner, with the same protection, decides which recovery points
//! and artifact inventories `prune` keeps.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime, UtcOffset};
use warmspare_store::SnapshotId;

/// How many snapshots `prune` keeps, in the classic grandfather-father-son
/// scheme: the newest `keep_last`, plus the newest snapshot of each of the
/// last `keep_daily` days, `keep_weekly` ISO weeks and `keep_monthly`
/// months. A snapshot kept by any rule is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// The newest N snapshots, whatever their age.
    pub keep_last: u32,
    /// The newest snapshot of each of the last N days (that have snapshots).
    pub keep_daily: u32,
    /// The newest snapshot of each of the last N ISO weeks (that have
    /// snapshots).
    pub keep_weekly: u32,
    /// The newest snapshot of each of the last N months (that have
    /// snapshots).
    pub keep_monthly: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            keep_last: 7,
            keep_daily: 7,
            keep_weekly: 4,
            keep_monthly: 6,
        }
    }
}

/// A retention setting that would let `prune` delete every snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidRetentionConfig {
    /// The key inside `[retention]`.
    pub key: &'static str,
    /// What is wrong with it.
    pub message: &'static str,
}

impl RetentionConfig {
    /// Refuses a policy that keeps nothing: `keep_last` must be at least 1
    /// so that the newest snapshot always survives a prune.
    pub fn validate(&self) -> Result<(), InvalidRetentionConfig> {
        if self.keep_last == 0 {
            return Err(InvalidRetentionConfig {
                key: "keep_last",
                message: "must be at least 1 so that prune never removes the newest snapshot",
            });
        }
        Ok(())
    }
}

/// Why a snapshot is kept. A snapshot may have several reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase", tag = "rule")]
#[non_exhaustive]
pub enum KeepReason {
    /// One of the newest `keep_last` (`rank` 1 is the newest).
    Last {
        /// Position from the newest, from 1.
        rank: u32,
    },
    /// The newest snapshot of this day (UTC).
    Daily {
        /// The day.
        #[serde(serialize_with = "serialize_date")]
        date: Date,
    },
    /// The newest snapshot of this ISO week.
    Weekly {
        /// The ISO week-numbering year.
        year: i32,
        /// The ISO week, 1 to 53.
        week: u8,
    },
    /// The newest snapshot of this month.
    Monthly {
        /// The year.
        year: i32,
        /// The month, 1 to 12.
        month: u8,
    },
    /// Named by something that is kept (a recovery point names its
    /// snapshot and its inventory): deleting it would break that.
    Referenced,
}

fn serialize_date<S: serde::Serializer>(date: &Date, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(date)
}

impl fmt::Display for KeepReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeepReason::Last { rank } => write!(f, "last #{rank}"),
            KeepReason::Daily { date } => write!(f, "daily {date}"),
            KeepReason::Weekly { year, week } => write!(f, "weekly {year}-W{week:02}"),
            KeepReason::Monthly { year, month } => write!(f, "monthly {year}-{month:02}"),
            KeepReason::Referenced => f.write_str("named by a kept recovery point"),
        }
    }
}

/// Why a snapshot is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum DeleteReason {
    /// No retention rule keeps it: it is older than the newest `keep_last`,
    /// and a newer snapshot is kept for each of its day, week and month
    /// (or those rules have used up their counts).
    NotRetained,
    /// It never committed (no manifest) and is older than the grace period.
    Incomplete,
}

impl fmt::Display for DeleteReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeleteReason::NotRetained => "not retained by any rule",
            DeleteReason::Incomplete => "incomplete and older than the grace period",
        })
    }
}

/// A snapshot the plan keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Keep {
    /// The snapshot.
    pub id: SnapshotId,
    /// Its time.
    #[serde(with = "crate::serde_util::rfc3339")]
    pub time: OffsetDateTime,
    /// Every rule that keeps it (never empty).
    pub reasons: Vec<KeepReason>,
}

/// A snapshot the plan deletes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Delete {
    /// The snapshot.
    pub id: SnapshotId,
    /// Its time.
    #[serde(with = "crate::serde_util::rfc3339")]
    pub time: OffsetDateTime,
    /// Why.
    pub reason: DeleteReason,
}

/// The answer of [`plan`]: every input snapshot is in exactly one list,
/// each newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Kept, with the rules that keep them.
    pub keep: Vec<Keep>,
    /// Deleted.
    pub delete: Vec<Delete>,
}

impl Plan {
    /// Keeps every snapshot of `protected` that the plan deletes, with
    /// [`KeepReason::Referenced`] (added to the reasons of a snapshot the
    /// rules keep anyway). Ids of `protected` that the plan does not know
    /// are ignored. Both lists stay newest first.
    pub fn protect(&mut self, protected: &BTreeSet<SnapshotId>) {
        if protected.is_empty() {
            return;
        }
        for keep in &mut self.keep {
            if protected.contains(&keep.id) && !keep.reasons.contains(&KeepReason::Referenced) {
                keep.reasons.push(KeepReason::Referenced);
            }
        }
        let (spared, delete): (Vec<Delete>, Vec<Delete>) = std::mem::take(&mut self.delete)
            .into_iter()
            .partition(|d| protected.contains(&d.id));
        self.delete = delete;
        if spared.is_empty() {
            return;
        }
        self.keep.extend(spared.into_iter().map(|d| Keep {
            id: d.id,
            time: d.time,
            reasons: vec![KeepReason::Referenced],
        }));
        self.keep
            .sort_by(|a, b| b.time.cmp(&a.time).then_with(|| b.id.cmp(&a.id)));
    }
}

/// Decides which of `snapshots` (id and time, in any order; a repeated id
/// counts once) `config` keeps. Pure: see the module docs for the rules.
///
/// ```
/// use time::macros::datetime;
/// use warmspare_snapshot::retention::{RetentionConfig, plan};
/// use warmspare_store::SnapshotId;
///
/// let at = |t| (SnapshotId::with_suffix(t, 0), t);
/// let snapshots = [
///     at(datetime!(2026-11-20 06:00 UTC)),
///     at(datetime!(2026-11-21 06:00 UTC)),
///     at(datetime!(2026-11-21 18:00 UTC)),
/// ];
/// let config = RetentionConfig { keep_last: 1, keep_daily: 7, keep_weekly: 0, keep_monthly: 0 };
/// let p = plan(&snapshots, &config);
/// // The newest of each day is kept; 21 Nov 06:00 is superseded by 18:00.
/// assert_eq!(p.keep.len(), 2);
/// assert_eq!(p.delete[0].time, datetime!(2026-11-21 06:00 UTC));
/// ```
pub fn plan(snapshots: &[(SnapshotId, OffsetDateTime)], config: &RetentionConfig) -> Plan {
    let mut sorted: Vec<(SnapshotId, OffsetDateTime)> = snapshots.to_vec();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    let mut seen = BTreeSet::new();
    sorted.retain(|(id, _)| seen.insert(id.clone()));

    let keep_last = config.keep_last.max(1);
    let mut daily = Bucket::new(config.keep_daily);
    let mut weekly = Bucket::new(config.keep_weekly);
    let mut monthly = Bucket::new(config.keep_monthly);
    let mut out = Plan::default();
    for (rank, (id, time)) in (1u32..).zip(sorted) {
        let utc = time.to_offset(UtcOffset::UTC);
        let mut reasons = Vec::new();
        if rank <= keep_last {
            reasons.push(KeepReason::Last { rank });
        }
        let date = utc.date();
        if daily.take((date.year(), u32::from(date.ordinal()))) {
            reasons.push(KeepReason::Daily { date });
        }
        let (year, week, _) = utc.to_iso_week_date();
        if weekly.take((year, u32::from(week))) {
            reasons.push(KeepReason::Weekly { year, week });
        }
        let month = u8::from(utc.month());
        if monthly.take((utc.year(), u32::from(month))) {
            reasons.push(KeepReason::Monthly {
                year: utc.year(),
                month,
            });
        }
        if reasons.is_empty() {
            out.delete.push(Delete {
                id,
                time,
                reason: DeleteReason::NotRetained,
            });
        } else {
            out.keep.push(Keep { id, time, reasons });
        }
    }
    out
}

/// The incomplete snapshots (ids without a manifest) that `prune` removes:
/// those whose id time is more than `grace` before `now`, newest first. The
/// grace period must exceed the longest backup, or a running backup's data
/// would go (a backup checks its objects before committing, so it then
/// fails rather than commits a broken snapshot).
pub fn plan_incomplete(
    incomplete: &[SnapshotId],
    grace: std::time::Duration,
    now: OffsetDateTime,
) -> Vec<Delete> {
    let mut out: Vec<Delete> = incomplete
        .iter()
        .filter(|id| now - id.timestamp() > grace)
        .map(|id| Delete {
            id: id.clone(),
            time: id.timestamp(),
            reason: DeleteReason::Incomplete,
        })
        .collect();
    out.sort_by(|a, b| b.id.cmp(&a.id));
    out.dedup_by(|a, b| a.id == b.id);
    out
}

/// One bucketing rule: how many buckets it may still keep, and the bucket
/// of the last snapshot it kept.
struct Bucket {
    left: u32,
    last: Option<(i32, u32)>,
}

impl Bucket {
    fn new(count: u32) -> Self {
        Self {
            left: count,
            last: None,
        }
    }

    /// Whether the rule keeps a snapshot in `bucket` (walking newest first).
    fn take(&mut self, bucket: (i32, u32)) -> bool {
        if self.left == 0 || self.last == Some(bucket) {
            return false;
        }
        self.left -= 1;
        self.last = Some(bucket);
        true
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_partial_tables() {
        assert_eq!(
            RetentionConfig::default(),
            RetentionConfig {
                keep_last: 7,
                keep_daily: 7,
                keep_weekly: 4,
                keep_monthly: 6
            }
        );
        let c: RetentionConfig = toml::from_str("keep_monthly = 12").unwrap();
        assert_eq!((c.keep_last, c.keep_monthly), (7, 12));
        c.validate().unwrap();
    }

    #[test]
    fn rejects_unknown_keys_and_keeping_nothing() {
        let err = toml::from_str::<RetentionConfig>("keep_yearly = 1").unwrap_err();
        assert!(err.message().contains("keep_yearly"), "{err}");
        let err = toml::from_str::<RetentionConfig>("keep_last = -1").unwrap_err();
        assert!(err.span().is_some(), "{err}");
        let c = RetentionConfig {
            keep_last: 0,
            ..RetentionConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().key, "keep_last");
    }

    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};
    use time::macros::datetime;

    fn snap(t: OffsetDateTime, suffix: u16) -> (SnapshotId, OffsetDateTime) {
        (SnapshotId::with_suffix(t, suffix), t)
    }

    fn cfg(last: u32, daily: u32, weekly: u32, monthly: u32) -> RetentionConfig {
        RetentionConfig {
            keep_last: last,
            keep_daily: daily,
            keep_weekly: weekly,
            keep_monthly: monthly,
        }
    }

    #[test]
    fn classic_schedule() {
        // Four snapshots a day (00, 06, 12, 18) for 60 days.
        let start = datetime!(2026-09-01 00:00 UTC);
        let snapshots: Vec<_> = (0..240u16)
            .map(|i| snap(start + time::Duration::hours(6 * i64::from(i)), i))
            .collect();
        let p = plan(&snapshots, &cfg(3, 7, 4, 6));
        assert_eq!(p.keep.len() + p.delete.len(), 240);
        let newest = &p.keep[0];
        assert_eq!(newest.time, datetime!(2026-10-30 18:00 UTC));
        assert!(newest.reasons.contains(&KeepReason::Last { rank: 1 }));
        assert!(newest.reasons.contains(&KeepReason::Monthly {
            year: 2026,
            month: 10
        }));
        // 3 last (one day), dailies reach back 7 days, 4 weeks, 2 months.
        let daily: Vec<_> = p
            .keep
            .iter()
            .filter(|k| {
                k.reasons
                    .iter()
                    .any(|r| matches!(r, KeepReason::Daily { .. }))
            })
            .collect();
        assert_eq!(daily.len(), 7);
        assert!(daily.iter().all(|k| k.time.hour() == 18));
        assert_eq!(daily[6].time, datetime!(2026-10-24 18:00 UTC));
        let monthly: Vec<_> = p
            .keep
            .iter()
            .filter(|k| {
                k.reasons
                    .iter()
                    .any(|r| matches!(r, KeepReason::Monthly { .. }))
            })
            .map(|k| k.time)
            .collect();
        assert_eq!(
            monthly,
            vec![
                datetime!(2026-10-30 18:00 UTC),
                datetime!(2026-09-30 18:00 UTC)
            ]
        );
        assert_eq!(
            KeepReason::Weekly {
                year: 2026,
                week: 3
            }
            .to_string(),
            "weekly 2026-W03"
        );
    }

    #[test]
    fn a_gap_in_backups_keeps_the_dailies_there_are() {
        // Dailies for a week, then nothing for a month: keep_daily counts
        // days with snapshots, not calendar days.
        let snapshots: Vec<_> = (1..=7u8)
            .map(|d| snap(datetime!(2026-10-01 03:00 UTC).replace_day(d).unwrap(), 0))
            .collect();
        let p = plan(&snapshots, &cfg(1, 7, 0, 0));
        assert_eq!(p.keep.len(), 7);
        assert!(p.delete.is_empty());
    }

    #[test]
    fn edge_cases() {
        assert_eq!(plan(&[], &cfg(1, 1, 1, 1)), Plan::default());
        let one = [snap(datetime!(2026-01-01 00:00 UTC), 1)];
        // keep_last = 0 still keeps the newest.
        let p = plan(&one, &cfg(0, 0, 0, 0));
        assert_eq!(p.keep.len(), 1);
        // Duplicates count once.
        let dup = [one[0].clone(), one[0].clone()];
        let p = plan(&dup, &cfg(1, 0, 0, 0));
        assert_eq!((p.keep.len(), p.delete.len()), (1, 0));
    }

    #[test]
    fn incomplete_grace() {
        let now = datetime!(2026-11-22 12:00 UTC);
        let old = SnapshotId::with_suffix(datetime!(2026-11-21 11:00 UTC), 1);
        let fresh = SnapshotId::with_suffix(datetime!(2026-11-22 11:00 UTC), 2);
        let d = plan_incomplete(
            &[fresh, old.clone()],
            std::time::Duration::from_secs(24 * 3600),
            now,
        );
        assert_eq!(d.len(), 1);
        assert_eq!(
            (d[0].id.clone(), d[0].reason),
            (old, DeleteReason::Incomplete)
        );
    }

    fn snapshots() -> impl Strategy<Value = Vec<(SnapshotId, OffsetDateTime)>> {
        // Up to two years, with clusters on the same day and second.
        proptest::collection::vec((0i64..2 * 365 * 24 * 4, 0u16..4), 0..80).prop_map(|v| {
            v.into_iter()
                .map(|(quarter_hours, suffix)| {
                    let t = datetime!(2025-01-01 00:00 UTC)
                        + time::Duration::minutes(15 * quarter_hours);
                    snap(t, suffix)
                })
                .collect()
        })
    }

    fn config() -> impl Strategy<Value = RetentionConfig> {
        // Zero often, so that rules switched off and all-zero configs occur.
        let count = |max: u32| prop_oneof![1 => Just(0u32), 2 => 1..max];
        (count(6), count(10), count(6), count(8)).prop_map(|(l, d, w, m)| cfg(l, d, w, m))
    }

    /// `key` of each kept snapshot whose reasons include the rule `pick`.
    fn kept_buckets<K: Ord>(p: &Plan, pick: impl Fn(&KeepReason) -> Option<K>) -> Vec<K> {
        p.keep
            .iter()
            .flat_map(|k| k.reasons.iter().filter_map(&pick))
            .collect()
    }

    /// Checks one bucketing rule against a brute-force model: the rule
    /// keeps exactly the newest snapshot of each of the newest `count`
    /// buckets present in the input.
    fn check_rule<K: Ord + Clone + std::fmt::Debug>(
        input: &[(SnapshotId, OffsetDateTime)],
        p: &Plan,
        count: u32,
        bucket: impl Fn(OffsetDateTime) -> K,
        pick: impl Fn(&KeepReason) -> Option<K>,
    ) -> Result<(), TestCaseError> {
        let mut newest: BTreeMap<K, (OffsetDateTime, SnapshotId)> = BTreeMap::new();
        for (id, t) in input {
            let e = newest.entry(bucket(*t)).or_insert((*t, id.clone()));
            if (*t, id) > (e.0, &e.1) {
                *e = (*t, id.clone());
            }
        }
        let expected: Vec<(K, SnapshotId)> = newest
            .into_iter()
            .rev()
            .take(count as usize)
            .map(|(k, (_, id))| (k, id))
            .collect();
        let got: Vec<(K, SnapshotId)> = p
            .keep
            .iter()
            .flat_map(|k| {
                k.reasons
                    .iter()
                    .filter_map(&pick)
                    .map(|b| (b, k.id.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        prop_assert_eq!(got, expected);
        Ok(())
    }

    proptest! {
        #[test]
        fn plan_invariants(input in snapshots(), c in config()) {
            let p = plan(&input, &c);
            let unique: BTreeSet<SnapshotId> = input.iter().map(|(id, _)| id.clone()).collect();

            // A partition of the input.
            let kept: BTreeSet<SnapshotId> = p.keep.iter().map(|k| k.id.clone()).collect();
            let deleted: BTreeSet<SnapshotId> = p.delete.iter().map(|d| d.id.clone()).collect();
            prop_assert!(kept.is_disjoint(&deleted));
            prop_assert_eq!(kept.len() + deleted.len(), unique.len());
            prop_assert_eq!(p.keep.len(), kept.len());
            prop_assert!(p.keep.iter().all(|k| !k.reasons.is_empty()));

            // Never deletes the newest; keeps the newest keep_last.
            let mut by_age: Vec<_> = input.clone();
            by_age.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
            by_age.dedup_by(|a, b| a.0 == b.0);
            if let Some((newest, _)) = by_age.first() {
                prop_assert!(kept.contains(newest));
            }
            for (id, _) in by_age.iter().take(c.keep_last.max(1) as usize) {
                prop_assert!(kept.contains(id));
            }

            // Each bucket rule keeps the newest of its newest N buckets.
            check_rule(&by_age, &p, c.keep_daily, |t| t.date(),
                |r| match r { KeepReason::Daily { date } => Some(*date), _ => None })?;
            check_rule(&by_age, &p, c.keep_weekly,
                |t| { let (y, w, _) = t.to_iso_week_date(); (y, w) },
                |r| match r { KeepReason::Weekly { year, week } => Some((*year, *week)), _ => None })?;
            check_rule(&by_age, &p, c.keep_monthly, |t| (t.year(), u8::from(t.month())),
                |r| match r { KeepReason::Monthly { year, month } => Some((*year, *month)), _ => None })?;
            let days = kept_buckets(&p, |r| match r { KeepReason::Daily { date } => Some(*date), _ => None });
            prop_assert_eq!(days.len(), days.iter().collect::<BTreeSet<_>>().len());

            // Idempotent: planning on what was kept keeps all of it.
            let survivors: Vec<_> = p.keep.iter().map(|k| (k.id.clone(), k.time)).collect();
            let again = plan(&survivors, &c);
            prop_assert!(again.delete.is_empty(), "{:?}", again.delete);
            prop_assert_eq!(again.keep.len(), survivors.len());

            // Order of the input does not matter.
            let mut reversed = input.clone();
            reversed.reverse();
            prop_assert_eq!(plan(&reversed, &c), p);
        }

        #[test]
        fn protection_only_moves_deletions_to_keep(
            input in snapshots(),
            c in config(),
            picks in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
            strangers in 0u16..3,
        ) {
            let p = plan(&input, &c);
            let mut protected: BTreeSet<SnapshotId> = picks
                .iter()
                .filter(|_| !input.is_empty())
                .map(|i| i.get(&input).0.clone())
                .collect();
            // Ids the plan does not know are ignored.
            for s in 0..strangers {
                protected.insert(SnapshotId::with_suffix(datetime!(2030-01-01 00:00 UTC), s));
            }
            let mut q = p.clone();
            q.protect(&protected);

            let kept: BTreeSet<SnapshotId> = q.keep.iter().map(|k| k.id.clone()).collect();
            let deleted: BTreeSet<SnapshotId> = q.delete.iter().map(|d| d.id.clone()).collect();
            let before: BTreeSet<SnapshotId> = p.keep.iter().map(|k| k.id.clone()).collect();
            let known: BTreeSet<SnapshotId> = input.iter().map(|(id, _)| id.clone()).collect();
            // Still a partition of the input.
            prop_assert!(kept.is_disjoint(&deleted));
            prop_assert_eq!(kept.len() + deleted.len(), known.len());
            prop_assert_eq!(q.keep.len(), kept.len());
            // Kept: what the rules keep plus every known protected id.
            let want: BTreeSet<SnapshotId> =
                before.union(&protected.intersection(&known).cloned().collect()).cloned().collect();
            prop_assert_eq!(&kept, &want);
            prop_assert!(deleted.iter().all(|id| !protected.contains(id)));
            // Protected ones say so; the others keep exactly their reasons.
            for k in &q.keep {
                let referenced = k.reasons.contains(&KeepReason::Referenced);
                prop_assert_eq!(referenced, protected.contains(&k.id));
                prop_assert_eq!(
                    k.reasons.iter().filter(|r| **r == KeepReason::Referenced).count(),
                    usize::from(referenced)
                );
                if let Some(old) = p.keep.iter().find(|o| o.id == k.id) {
                    let rules: Vec<_> = k.reasons.iter().filter(|r| **r != KeepReason::Referenced).collect();
                    prop_assert_eq!(rules, old.reasons.iter().collect::<Vec<_>>());
                }
            }
            // Newest first, both lists; protecting twice changes nothing.
            prop_assert!(q.keep.windows(2).all(|w| (w[0].time, &w[0].id) >= (w[1].time, &w[1].id)));
            prop_assert!(q.delete.windows(2).all(|w| (w[0].time, &w[0].id) >= (w[1].time, &w[1].id)));
            let mut twice = q.clone();
            twice.protect(&protected);
            prop_assert_eq!(twice, q);
        }
    }
}
