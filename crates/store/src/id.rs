//! Time-sortable ids: `YYYYMMDDTHHMMSSZ-xxxx`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime, UtcOffset};

use crate::error::{Error, Result};

/// The id of a snapshot (also used for inventories and recovery points):
/// the UTC second it was taken, then four hex digits, for example
/// `20261122T101500Z-3f9a`.
///
/// The suffix of a [new](Self::new) id is `millisecond * 16 + r` with `r` a
/// random nibble: ids have a fixed width, so their string order (and their
/// `Ord`) is chronological to the millisecond, and two ids taken in the same
/// millisecond still differ with probability 15/16 (a collision is caught
/// by [`Repository::begin_snapshot`](crate::Repository::begin_snapshot) and
/// by the create-if-absent manifest).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SnapshotId(String);

const STAMP: &[time::format_description::BorrowedFormatItem<'static>] =
    format_description!("[year][month][day]T[hour][minute][second]Z");

/// Length of an id: 16 for the timestamp, 1 for `-`, 4 for the suffix.
const LEN: usize = 21;

impl SnapshotId {
    /// A new id for the moment `now` (converted to UTC): its second, and a
    /// suffix that orders ids of the same second by millisecond, with a
    /// random nibble below it. Time is a parameter: callers pass their
    /// clock's reading.
    pub fn new(now: OffsetDateTime) -> Self {
        let millis = now.millisecond();
        let nibble = rand::random::<u8>() & 0x0f;
        Self::with_suffix(now, millis * 16 + u16::from(nibble))
    }

    /// The id for `now` with the given suffix (deterministic; for tests and
    /// for retrying after a collision).
    pub fn with_suffix(now: OffsetDateTime, suffix: u16) -> Self {
        let utc = now.to_offset(UtcOffset::UTC);
        // Years outside 0..=9999 do not fit the format; clamp into it so that
        // the id stays well-formed (such clocks are broken anyway).
        let utc = if (0..=9999).contains(&utc.year()) {
            utc
        } else {
            OffsetDateTime::UNIX_EPOCH
        };
        let stamp = utc
            .format(STAMP)
            .unwrap_or_else(|_| "19700101T000000Z".to_string());
        Self(format!("{stamp}-{suffix:04x}"))
    }

    /// Parses and validates an id.
    pub fn parse(text: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidPath {
            path: text.to_string(),
            reason: format!("not an id of the form YYYYMMDDTHHMMSSZ-xxxx: {reason}"),
        };
        if text.len() != LEN || !text.is_ascii() {
            return Err(invalid("wrong length"));
        }
        let (stamp, rest) = text.split_at(16);
        let suffix = rest
            .strip_prefix('-')
            .ok_or_else(|| invalid("missing '-'"))?;
        if !suffix
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(invalid("suffix is not four lowercase hex digits"));
        }
        PrimitiveDateTime::parse(stamp, STAMP).map_err(|e| invalid(&e.to_string()))?;
        Ok(Self(text.to_string()))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The moment (UTC, whole seconds) the id was made for.
    pub fn timestamp(&self) -> OffsetDateTime {
        PrimitiveDateTime::parse(&self.0[..16], STAMP)
            .map(PrimitiveDateTime::assume_utc)
            // Unreachable: the id was validated when it was made.
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for SnapshotId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl TryFrom<String> for SnapshotId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::parse(&s)
    }
}

impl From<SnapshotId> for String {
    fn from(id: SnapshotId) -> Self {
        id.0
    }
}

impl AsRef<str> for SnapshotId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::macros::datetime;

    #[test]
    fn format_and_parse() {
        let id = SnapshotId::with_suffix(datetime!(2026-11-22 10:15:00 UTC), 0x3f9a);
        assert_eq!(id.as_str(), "20261122T101500Z-3f9a");
        assert_eq!(SnapshotId::parse("20261122T101500Z-3f9a").unwrap(), id);
        assert_eq!(id.timestamp(), datetime!(2026-11-22 10:15:00 UTC));
        // Offsets are converted to UTC.
        let id = SnapshotId::with_suffix(datetime!(2026-11-22 12:15:00 +02:00), 1);
        assert_eq!(id.as_str(), "20261122T101500Z-0001");
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"20261122T101500Z-0001\"");
        assert_eq!(serde_json::from_str::<SnapshotId>(&json).unwrap(), id);
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "20261122T101500Z",
            "20261122T101500Z-3F9A",
            "20261122T101500Z-3f9",
            "20261122T101500Z_3f9a",
            "20261322T101500Z-3f9a",
            "20261122T251500Z-3f9a",
            "2026-11-22T10:15Z-3f9a",
            "20261122T101500Z-3f9é",
        ] {
            assert!(SnapshotId::parse(bad).is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<SnapshotId>("\"nope\"").is_err());
    }

    proptest! {
        #[test]
        fn order_is_chronological_and_parse_roundtrips(
            a in 0i64..253_402_300_799,
            b in 0i64..253_402_300_799,
            sa in any::<u16>(),
            sb in any::<u16>(),
        ) {
            let ta = OffsetDateTime::from_unix_timestamp(a).unwrap();
            let tb = OffsetDateTime::from_unix_timestamp(b).unwrap();
            let ia = SnapshotId::with_suffix(ta, sa);
            let ib = SnapshotId::with_suffix(tb, sb);
            prop_assert_eq!(SnapshotId::parse(ia.as_str()).unwrap(), ia.clone());
            prop_assert_eq!(ia.timestamp(), ta);
            if a != b {
                prop_assert_eq!(ia.cmp(&ib), a.cmp(&b));
            } else {
                prop_assert_eq!(ia.cmp(&ib), sa.cmp(&sb));
            }
        }

        #[test]
        fn new_ids_order_by_millisecond(
            secs in 0i64..253_402_300_799,
            ma in 0u32..1000,
            mb in 0u32..1000,
        ) {
            let at = |ms: u32| {
                OffsetDateTime::from_unix_timestamp(secs).unwrap()
                    + time::Duration::milliseconds(i64::from(ms))
            };
            let (ia, ib) = (SnapshotId::new(at(ma)), SnapshotId::new(at(mb)));
            prop_assert_eq!(ia.timestamp(), at(0));
            if ma != mb {
                prop_assert_eq!(ia.cmp(&ib), ma.cmp(&mb));
            }
        }
    }
}
