//! WAL positions, as the policy sees them: the old holder's final position
//! in a planned switchover and how far the successor has replayed.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A PostgreSQL WAL position (`pg_lsn`), written `X/Y` in hexadecimal as
/// PostgreSQL prints it (`0/3000060`). Ordered as positions in the WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The position `0/0`.
    pub const ZERO: Lsn = Lsn(0);
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// A text that is not a `pg_lsn`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid WAL position `{0}` (expected X/Y in hexadecimal)")]
pub struct InvalidLsn(String);

impl FromStr for Lsn {
    type Err = InvalidLsn;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidLsn(s.chars().take(40).collect());
        let (hi, lo) = s.trim().split_once('/').ok_or_else(invalid)?;
        let part = |p: &str| {
            if p.is_empty() || p.len() > 8 {
                return Err(invalid());
            }
            u32::from_str_radix(p, 16).map_err(|_| invalid())
        };
        Ok(Lsn((u64::from(part(hi)?) << 32) | u64::from(part(lo)?)))
    }
}

impl Serialize for Lsn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// How far the local database has replayed WAL, as answered to
/// [`Action::ReadReplayPosition`](super::Action::ReadReplayPosition).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Replay {
    /// A standby in recovery that has replayed up to this position
    /// (`pg_last_wal_replay_lsn()`).
    Standby(Lsn),
    /// The database is not in recovery (a primary, a logical-restore
    /// spare): it replays no more WAL. The position is where its recovery
    /// ended, when it was a standby once.
    NotReplaying(Option<Lsn>),
    /// The database could not be asked (unreachable, timeout, error).
    Unknown,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip_and_order() {
        for (text, value) in [
            ("0/0", 0u64),
            ("0/3000060", 0x300_0060),
            ("16/B374D848", 0x16_B374_D848),
            ("FFFFFFFF/FFFFFFFF", u64::MAX),
        ] {
            let lsn: Lsn = text.parse().expect(text);
            assert_eq!(lsn, Lsn(value));
            assert_eq!(lsn.to_string(), text);
        }
        assert_eq!("0/a".parse::<Lsn>(), Ok(Lsn(10)), "lower case accepted");
        for bad in ["", "0", "/1", "1/", "x/1", "1/2/3", "123456789/0"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad}");
        }
        assert!(Lsn(0x1_0000_0000) > Lsn(0xFFFF_FFFF));
        let json = serde_json::to_string(&Lsn(0x300_0060)).expect("encode");
        assert_eq!(json, "\"0/3000060\"");
        assert_eq!(
            serde_json::from_str::<Lsn>(&json).expect("decode"),
            Lsn(0x300_0060)
        );
        assert!(serde_json::from_str::<Lsn>("\"nope\"").is_err());
    }

    proptest::proptest! {
        #[test]
        fn display_parses_back(v in proptest::prelude::any::<u64>()) {
            proptest::prop_assert_eq!(Lsn(v).to_string().parse::<Lsn>(), Ok(Lsn(v)));
        }
    }
}
