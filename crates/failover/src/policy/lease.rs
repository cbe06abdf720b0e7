//! The lease record, its version token, and the two timing rules: the
//! holder's deadline and the challenger's wait.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Lsn, Millis, ms};

/// The compare-and-swap token of `lease/active.json` (an ETag or the
/// store's version id). Opaque: only compared for equality, never ordered.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version(String);

impl Version {
    /// Wraps a token returned by the store.
    pub fn new(token: impl Into<String>) -> Self {
        Version(token.into())
    }

    /// The token as given by the store.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Identifies one lease write issued by a [`Policy`](super::Policy); the
/// driver echoes it in [`Event::LeaseWriteResult`](super::Event).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// The condition of a lease write.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum WriteCondition {
    /// Create the object only if it does not exist (`If-None-Match: *`).
    Absent,
    /// Replace the object only if its current version is this one
    /// (`If-Match`).
    Matches(Version),
}

/// The content of `lease/active.json`.
///
/// Every successful write is a compare-and-swap on the previous record that
/// either raises `epoch` (a new holder; `renewals` restarts at 0) or keeps it
/// and raises `renewals` (a renewal, a reclaim after an agent restart, or a
/// release). So [`LeaseRecord::key`] strictly grows along the history of the
/// object, which lets a reader discard answers older than what it knows.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// Format of this record; 1.
    #[serde(default = "format_one")]
    pub format: u32,
    /// The site that holds (or, when `released`, last held) the lease.
    pub holder: String,
    /// The fencing token: grows by one at every change of holder.
    pub epoch: u64,
    /// Writes within this epoch: 0 at acquisition, +1 at each renewal.
    pub renewals: u64,
    /// The writer's process incarnation ([`SiteIdentity::incarnation`](super::SiteIdentity)).
    pub incarnation: u64,
    /// The writer's request number: with `incarnation`, names this write.
    pub nonce: u64,
    /// The lease lifetime the holder promised, in milliseconds.
    pub ttl_ms: u64,
    /// The margin the holder used, in milliseconds.
    pub margin_ms: u64,
    /// The holder fenced itself and gave the lease up; it may be taken at
    /// once (by `successor` only, when set).
    #[serde(default)]
    pub released: bool,
    /// For a planned switchover: the site the holder hands the lease to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub successor: Option<String>,
    /// For a planned switchover: the old holder's final WAL position, read
    /// after it fenced itself. The successor copies it into the record it
    /// takes the lease with and promotes only once its database has
    /// replayed up to it; its renewals drop it once the promotion is done
    /// (so that a restarted agent knows whether it still has to wait).
    /// Absent in records of older versions: the successor then promotes at
    /// once, as they did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_lsn: Option<Lsn>,
    /// When this epoch's holder took the lease over from another site, in
    /// milliseconds since the Unix epoch on the writer's wall clock; absent
    /// when the lease was created. Only the cooldown guard reads it (a
    /// restarted agent still honours the cooldown); the lease rules never
    /// do, so a wrong wall clock can shift the cooldown, never safety.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taken_at_ms: Option<u64>,
}

fn format_one() -> u32 {
    1
}

/// A lease record that could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[error("invalid lease record: {0}")]
pub struct LeaseFormatError(#[from] serde_json::Error);

impl LeaseRecord {
    /// The record's position in the object's history: `(epoch, renewals)`.
    pub fn key(&self) -> (u64, u64) {
        (self.epoch, self.renewals)
    }

    /// Whether this record was written after `other` (by key).
    pub fn is_newer_than(&self, other: &LeaseRecord) -> bool {
        self.key() > other.key()
    }

    /// Whether `site` may take this record at once, without waiting for it
    /// to expire: it was released, to nobody in particular or to `site`.
    pub fn open_to(&self, site: &str) -> bool {
        self.released && self.successor.as_deref().is_none_or(|s| s == site)
    }

    /// Encodes the record as the JSON stored in `lease/active.json`.
    pub fn to_json(&self) -> Result<Vec<u8>, LeaseFormatError> {
        Ok(serde_json::to_vec_pretty(self)?)
    }

    /// Decodes the JSON stored in `lease/active.json`. Unknown fields are
    /// ignored so that a newer writer's record stays readable.
    pub fn from_json(bytes: &[u8]) -> Result<Self, LeaseFormatError> {
        Ok(serde_json::from_slice(bytes)?)
    }
}

/// The holder's rule: after a successful write whose request was sent at
/// `t_send` (read *before* sending), the holder may accept traffic while
/// `now < t_send + ttl - margin`.
pub fn holder_safe_until(t_send: Millis, ttl: Duration, margin: Duration) -> Millis {
    Millis(t_send.0.saturating_add(ms(ttl)).saturating_sub(ms(margin)))
}

/// The challenger's rule: how long the same version must be seen unchanged
/// (on the challenger's clock, from its first observation) before a takeover
/// may be attempted: `ttl + margin`, using the larger of the holder's
/// promise in the record and the challenger's own configuration.
pub fn takeover_wait(record: &LeaseRecord, ttl: Duration, margin: Duration) -> Duration {
    let promised = record.ttl_ms.saturating_add(record.margin_ms);
    Duration::from_millis(promised.max(ms(ttl).saturating_add(ms(margin))))
}

/// The holder's view of a lease it wrote successfully.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The version the write produced (the next renewal's `If-Match`).
    pub version: Version,
    /// The record written.
    pub record: LeaseRecord,
    /// End of the right to accept traffic, on this site's clock (exclusive).
    pub safe_until: Millis,
}

impl Grant {
    /// Whether the grant still allows accepting traffic at `now`.
    pub fn is_valid(&self, now: Millis) -> bool {
        now < self.safe_until
    }
}

/// A challenger's observation of one version of the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    /// The version seen.
    pub version: Version,
    /// Its record.
    pub record: LeaseRecord,
    /// When this site first saw this version (the time the read's answer
    /// arrived, which is after the version was written).
    pub first_seen: Millis,
    /// When this site last saw it.
    pub last_seen: Millis,
}

impl Watch {
    /// A first observation at `now`.
    pub fn new(version: Version, record: LeaseRecord, now: Millis) -> Self {
        Watch {
            version,
            record,
            first_seen: now,
            last_seen: now,
        }
    }

    /// The earliest time at which a takeover of this version may be
    /// attempted, on this site's clock.
    pub fn expires_at(&self, ttl: Duration, margin: Duration) -> Millis {
        self.first_seen + takeover_wait(&self.record, ttl, margin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> LeaseRecord {
        LeaseRecord {
            format: 1,
            holder: "primary".into(),
            epoch: 3,
            renewals: 7,
            incarnation: 42,
            nonce: 9,
            ttl_ms: 6000,
            margin_ms: 1000,
            released: false,
            successor: None,
            final_lsn: None,
            taken_at_ms: None,
        }
    }

    #[test]
    fn json_round_trip_and_tolerance() {
        let r = record();
        let bytes = r.to_json().expect("encode");
        assert_eq!(LeaseRecord::from_json(&bytes).expect("decode"), r);
        let text = String::from_utf8(bytes).expect("utf8");
        for absent in ["successor", "final_lsn", "taken_at_ms"] {
            assert!(!text.contains(absent), "{text}");
        }
        let handed = LeaseRecord {
            released: true,
            successor: Some("spare".into()),
            final_lsn: Some(Lsn(0x300_0060)),
            taken_at_ms: Some(1_700_000_000_000),
            ..record()
        };
        let text = String::from_utf8(handed.to_json().expect("encode")).expect("utf8");
        assert!(text.contains(r#""final_lsn": "0/3000060""#), "{text}");
        assert_eq!(
            LeaseRecord::from_json(text.as_bytes()).expect("decode"),
            handed
        );
        // A record written before these fields existed still reads.
        let old = br#"{"format":1,"holder":"primary","epoch":3,"renewals":7,"incarnation":42,
            "nonce":9,"ttl_ms":6000,"margin_ms":1000,"released":true,"successor":"spare"}"#;
        let r = LeaseRecord::from_json(old).expect("old record");
        assert_eq!((r.final_lsn, r.taken_at_ms), (None, None));
        let newer = br#"{"holder":"spare","epoch":4,"renewals":0,"incarnation":1,"nonce":1,
            "ttl_ms":6000,"margin_ms":1000,"released":true,"successor":"primary","future":1}"#;
        let r = LeaseRecord::from_json(newer).expect("unknown fields ignored");
        assert_eq!(r.format, 1);
        assert!(r.open_to("primary") && !r.open_to("spare"));
        assert!(LeaseRecord::from_json(b"{}").is_err());
    }

    #[test]
    fn timing_rules() {
        let (ttl, m) = (Duration::from_secs(6), Duration::from_secs(1));
        assert_eq!(holder_safe_until(Millis(10_000), ttl, m), Millis(15_000));
        let mut r = record();
        assert_eq!(takeover_wait(&r, ttl, m), Duration::from_secs(7));
        r.ttl_ms = 20_000;
        assert_eq!(
            takeover_wait(&r, ttl, m),
            Duration::from_secs(21),
            "holder's promise wins"
        );
        let w = Watch::new(Version::new("a"), record(), Millis(500));
        assert_eq!(w.expires_at(ttl, m), Millis(7_500));
        assert!(r.is_newer_than(&LeaseRecord {
            renewals: 6,
            ..record()
        }));
        assert!(!r.is_newer_than(&LeaseRecord {
            epoch: 4,
            renewals: 0,
            ..record()
        }));
    }
}
