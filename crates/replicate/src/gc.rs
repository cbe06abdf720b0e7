//! The pure half of garbage collection: which recovery points and
//! inventories retention keeps, what they protect, and which blobs a sweep
//! may delete. No I/O and no clock: `prune.rs` feeds these functions what
//! it listed and acts on their answers, and the property tests below check
//! them against simple models.

use std::collections::BTreeSet;
use std::time::Duration;

use time::OffsetDateTime;
use warmspare_snapshot::RetentionConfig;
use warmspare_snapshot::retention::{self, Plan};
use warmspare_store::SnapshotId;

/// A recovery point as prune sees it: when it was taken and what it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PointRef {
    pub(crate) id: SnapshotId,
    pub(crate) time: OffsetDateTime,
    pub(crate) snapshot: Option<SnapshotId>,
    pub(crate) inventory: Option<SnapshotId>,
}

/// What a set of points names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct References {
    pub(crate) snapshots: BTreeSet<SnapshotId>,
    pub(crate) inventories: BTreeSet<SnapshotId>,
}

/// What `points` name (snapshots and inventories).
pub(crate) fn references<'a>(points: impl IntoIterator<Item = &'a PointRef>) -> References {
    let mut out = References::default();
    for p in points {
        out.snapshots.extend(p.snapshot.clone());
        out.inventories.extend(p.inventory.clone());
    }
    out
}

/// Retention applied to recovery points, by the time each was taken.
pub(crate) fn plan_points(points: &[PointRef], config: &RetentionConfig) -> Plan {
    let timed: Vec<(SnapshotId, OffsetDateTime)> =
        points.iter().map(|p| (p.id.clone(), p.time)).collect();
    retention::plan(&timed, config)
}

/// Retention applied to inventories (by the time in their ids), plus every
/// inventory in `protected` (those that kept points name).
pub(crate) fn plan_inventories(
    inventories: &[SnapshotId],
    config: &RetentionConfig,
    protected: &BTreeSet<SnapshotId>,
) -> Plan {
    let timed: Vec<(SnapshotId, OffsetDateTime)> = inventories
        .iter()
        .map(|id| (id.clone(), id.timestamp()))
        .collect();
    let mut plan = retention::plan(&timed, config);
    plan.protect(protected);
    plan
}

/// A blob's SHA-256, as 32 bytes.
pub(crate) type Digest = [u8; 32];

/// The digests of every blob that kept inventories name, as a sorted
/// vector without duplicates: 32 bytes per distinct blob (32 MiB for a
/// million artifacts), less than one inventory of the same store takes in
/// memory. Inventories are added one at a time, so only one is ever held.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Marks {
    sorted: Vec<Digest>,
}

impl Marks {
    /// Adds `digests` (any order, duplicates allowed).
    pub(crate) fn add(&mut self, digests: impl IntoIterator<Item = Digest>) {
        let mut fresh: Vec<Digest> = digests.into_iter().collect();
        fresh.sort_unstable();
        fresh.dedup();
        if self.sorted.is_empty() {
            self.sorted = fresh;
            return;
        }
        // Merge two sorted runs.
        let old = std::mem::take(&mut self.sorted);
        let mut merged = Vec::with_capacity(old.len() + fresh.len());
        let (mut a, mut b) = (old.into_iter().peekable(), fresh.into_iter().peekable());
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x < y => a.next(),
                (Some(x), Some(y)) if x > y => b.next(),
                (Some(_), Some(_)) => {
                    b.next();
                    a.next()
                }
                (Some(_), None) => a.next(),
                (None, Some(_)) => b.next(),
                (None, None) => break,
            };
            merged.extend(next);
        }
        self.sorted = merged;
    }

    /// Whether `digest` is marked.
    pub(crate) fn contains(&self, digest: &Digest) -> bool {
        self.sorted.binary_search(digest).is_ok()
    }

    /// The number of distinct marked digests.
    pub(crate) fn len(&self) -> usize {
        self.sorted.len()
    }
}

/// The digest a blob's hex name stands for.
pub(crate) fn parse_digest(hex_name: &str) -> Option<Digest> {
    if hex_name.len() != 64
        || !hex_name
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_name, &mut out).ok()?;
    Some(out)
}

/// The digest of the blob at `path` (`blobs/sha256/<2>/<64>`, the two
/// first digits matching), or `None` for any other object.
pub(crate) fn blob_digest(path: &str) -> Option<Digest> {
    let rest = path.strip_prefix("blobs/sha256/")?;
    let (dir, name) = rest.split_once('/')?;
    (dir.len() == 2 && name.starts_with(dir))
        .then(|| parse_digest(name))
        .flatten()
}

/// What the sweep does with one object under `blobs/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// A kept inventory names it.
    Referenced,
    /// Unreferenced, but written within the grace period: perhaps by a
    /// backup whose inventory is not written yet.
    Young,
    /// Unreferenced and older than the grace period.
    Delete,
    /// Not a blob (an unexpected name): left alone.
    Foreign,
}

/// Judges the object at `path`, last written at `modified` (the store's
/// clock), against the marks, with `now` on the same clock.
pub(crate) fn judge(
    path: &str,
    modified: OffsetDateTime,
    marks: &Marks,
    now: OffsetDateTime,
    grace: Duration,
) -> Verdict {
    match blob_digest(path) {
        None => Verdict::Foreign,
        Some(d) if marks.contains(&d) => Verdict::Referenced,
        Some(_) if now - modified <= grace => Verdict::Young,
        Some(_) => Verdict::Delete,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::macros::datetime;

    fn digest(seed: u8) -> Digest {
        let mut d = [0u8; 32];
        d[0] = seed;
        d[31] = seed.wrapping_mul(7);
        d
    }

    fn path_of(d: &Digest) -> String {
        let h = hex::encode(d);
        format!("blobs/sha256/{}/{h}", &h[..2])
    }

    #[test]
    fn blob_names() {
        let d = digest(0xab);
        assert_eq!(blob_digest(&path_of(&d)), Some(d));
        let h = hex::encode(d);
        for bad in [
            format!("blobs/sha256/cd/{h}"),
            format!("blobs/sha256/{}/{}", &h[..2], h.to_uppercase()),
            format!("blobs/sha256/{}/{}", &h[..2], &h[..63]),
            format!("blobs/sha256/{}/{h}.tmp", &h[..2]),
            format!("blobs/sha512/{}/{h}", &h[..2]),
            "blobs/sha256/README".into(),
        ] {
            assert_eq!(blob_digest(&bad), None, "{bad}");
        }
    }

    #[test]
    fn verdicts() {
        let now = datetime!(2026-11-22 12:00 UTC);
        let grace = Duration::from_secs(3600);
        let mut marks = Marks::default();
        marks.add([digest(1)]);
        let old = now - Duration::from_secs(7200);
        assert_eq!(
            judge(&path_of(&digest(1)), old, &marks, now, grace),
            Verdict::Referenced
        );
        assert_eq!(
            judge(&path_of(&digest(2)), old, &marks, now, grace),
            Verdict::Delete
        );
        assert_eq!(
            judge(&path_of(&digest(2)), now - grace, &marks, now, grace),
            Verdict::Young
        );
        assert_eq!(
            judge("blobs/sha256/xx/other", old, &marks, now, grace),
            Verdict::Foreign
        );
    }

    fn id(minutes: i64, suffix: u16) -> SnapshotId {
        SnapshotId::with_suffix(
            datetime!(2026-01-01 00:00 UTC) + time::Duration::minutes(minutes),
            suffix,
        )
    }

    fn config() -> impl Strategy<Value = RetentionConfig> {
        (1u32..4, 0u32..4, 0u32..3, 0u32..3).prop_map(|(l, d, w, m)| RetentionConfig {
            keep_last: l,
            keep_daily: d,
            keep_weekly: w,
            keep_monthly: m,
        })
    }

    /// Inventories and snapshots spread over 60 days, and points naming
    /// some of them (or nothing, or ids that do not exist).
    fn repository() -> impl Strategy<Value = (Vec<SnapshotId>, Vec<PointRef>)> {
        let minutes = 0i64..60 * 24 * 60;
        (
            proptest::collection::vec((minutes.clone(), 0u16..3), 0..30),
            proptest::collection::vec(
                (
                    minutes,
                    0u16..3,
                    any::<Option<prop::sample::Index>>(),
                    any::<Option<prop::sample::Index>>(),
                    any::<bool>(),
                ),
                0..20,
            ),
        )
            .prop_map(|(inv, pts)| {
                let inventories: Vec<SnapshotId> = inv.iter().map(|(m, s)| id(*m, *s)).collect();
                let points = pts
                    .into_iter()
                    .map(|(m, s, snap, invi, dangling)| PointRef {
                        id: id(m, s + 10),
                        time: id(m, 0).timestamp(),
                        snapshot: snap.map(|i| id(i.index(1000) as i64, 99)),
                        inventory: match (invi, dangling || inventories.is_empty()) {
                            (Some(_), true) => Some(id(99_999, 7)),
                            (Some(i), false) => Some(i.get(&inventories).clone()),
                            (None, _) => None,
                        },
                    })
                    .collect();
                (inventories, points)
            })
    }

    proptest! {
        #[test]
        fn kept_points_keep_what_they_name(
            (inventories, points) in repository(),
            c in config(),
        ) {
            let point_plan = plan_points(&points, &c);
            let kept_ids: BTreeSet<&SnapshotId> = point_plan.keep.iter().map(|k| &k.id).collect();
            let kept: Vec<&PointRef> = points.iter().filter(|p| kept_ids.contains(&p.id)).collect();
            let refs = references(kept.iter().copied());
            let inventory_plan = plan_inventories(&inventories, &c, &refs.inventories);

            // Every kept point's snapshot is protected, and its inventory
            // is kept whenever it exists.
            for p in &kept {
                if let Some(s) = &p.snapshot {
                    prop_assert!(refs.snapshots.contains(s));
                }
                if let Some(i) = &p.inventory
                    && inventories.contains(i)
                {
                    prop_assert!(inventory_plan.keep.iter().any(|k| &k.id == i));
                    prop_assert!(inventory_plan.delete.iter().all(|d| &d.id != i));
                }
            }
            // The inventory plan is a partition of the inventories and keeps
            // at least what retention alone keeps.
            let unique: BTreeSet<&SnapshotId> = inventories.iter().collect();
            prop_assert_eq!(inventory_plan.keep.len() + inventory_plan.delete.len(), unique.len());
            let alone = plan_inventories(&inventories, &c, &BTreeSet::new());
            for k in &alone.keep {
                prop_assert!(inventory_plan.keep.iter().any(|x| x.id == k.id));
            }
            // Deleted inventories are named by no kept point.
            for d in &inventory_plan.delete {
                prop_assert!(!refs.inventories.contains(&d.id));
            }
            // The newest point and the newest inventory always survive.
            if let Some(newest) = points.iter().max_by(|a, b| (a.time, &a.id).cmp(&(b.time, &b.id))) {
                prop_assert!(kept_ids.contains(&newest.id));
            }
            if let Some(newest) = inventories.iter().max_by(|a, b| (a.timestamp(), *a).cmp(&(b.timestamp(), *b))) {
                prop_assert!(inventory_plan.keep.iter().any(|k| &k.id == newest));
            }
            // Pruning again after the deletions deletes nothing more.
            let points_left: Vec<PointRef> = kept.iter().map(|p| (*p).clone()).collect();
            prop_assert!(plan_points(&points_left, &c).delete.is_empty());
            let inventories_left: Vec<SnapshotId> = inventory_plan.keep.iter().map(|k| k.id.clone()).collect();
            let again = plan_inventories(&inventories_left, &c, &references(&points_left).inventories);
            prop_assert!(again.delete.is_empty(), "{:?}", again.delete);
        }

        #[test]
        fn marks_are_the_union_of_what_was_added(
            batches in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..6),
            probes in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let mut marks = Marks::default();
            let mut model = BTreeSet::new();
            for batch in &batches {
                marks.add(batch.iter().map(|b| digest(*b)));
                model.extend(batch.iter().map(|b| digest(*b)));
                prop_assert_eq!(marks.len(), model.len());
                prop_assert!(marks.sorted.windows(2).all(|w| w[0] < w[1]));
            }
            for p in probes.iter().chain(batches.iter().flatten()) {
                prop_assert_eq!(marks.contains(&digest(*p)), model.contains(&digest(*p)));
            }
        }

        #[test]
        fn the_sweep_deletes_only_old_unreferenced_blobs(
            marked in proptest::collection::vec(any::<u8>(), 0..30),
            blobs in proptest::collection::vec((any::<u8>(), 0u64..10_000), 0..60),
            grace in 0u64..5_000,
        ) {
            let now = datetime!(2026-11-22 12:00 UTC);
            let grace = Duration::from_secs(grace);
            let mut marks = Marks::default();
            marks.add(marked.iter().map(|b| digest(*b)));
            for (b, age) in blobs {
                let modified = now - Duration::from_secs(age);
                let verdict = judge(&path_of(&digest(b)), modified, &marks, now, grace);
                let referenced = marked.contains(&b);
                let expected = if referenced {
                    Verdict::Referenced
                } else if Duration::from_secs(age) <= grace {
                    Verdict::Young
                } else {
                    Verdict::Delete
                };
                prop_assert_eq!(verdict, expected);
            }
        }
    }
}
