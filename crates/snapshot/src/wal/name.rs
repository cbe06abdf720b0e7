//! WAL file names, their objects in the repository, and LSNs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use warmspare_store::layout;
use warmspare_store::object_store::path::Path;

use crate::error::{Error, Result};

/// What kind of file PostgreSQL archives under a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum WalFileKind {
    /// A WAL segment: `000000010000000A0000003F` (timeline, then position).
    Segment,
    /// A timeline history file: `00000002.history`.
    History,
    /// A backup history file written at the end of a base backup:
    /// `000000010000000A0000003F.00000028.backup`.
    Backup,
    /// The last, partial segment of a timeline, archived by a standby when
    /// it is promoted: `000000010000000A0000003F.partial`.
    Partial,
}

/// A WAL file name as PostgreSQL passes it to `archive_command` and
/// `restore_command` (`%f`), checked, with its place in the repository.
///
/// | name | object |
/// | --- | --- |
/// | `TTTTTTTTXXXXXXXXYYYYYYYY` | `wal/TTTTTTTT/TTTTTTTTXXXXXXXXYYYYYYYY.zst` |
/// | `TTTTTTTT.history` | `wal/TTTTTTTT.history` |
/// | `TTTTTTTTXXXXXXXXYYYYYYYY.OOOOOOOO.backup` | `wal/TTTTTTTT/<name>.zst` |
/// | `TTTTTTTTXXXXXXXXYYYYYYYY.partial` | `wal/TTTTTTTT/<name>.zst` |
///
/// Hex digits are upper case, as PostgreSQL writes them; any other name is
/// refused, so that one file never has two objects.
///
/// ```
/// use warmspare_snapshot::wal::{WalFileKind, WalFileName};
/// let n = WalFileName::parse("00000002000000000000000A").unwrap();
/// assert_eq!((n.kind(), n.timeline()), (WalFileKind::Segment, 2));
/// assert_eq!(n.object_path().as_ref(), "wal/00000002/00000002000000000000000A.zst");
/// assert!(WalFileName::parse("../etc/passwd").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WalFileName {
    name: String,
    kind: WalFileKind,
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F'))
}

impl WalFileName {
    /// Checks a name (see the type's docs).
    pub fn parse(name: &str) -> Result<Self> {
        let invalid = |reason| Error::InvalidWalName {
            name: name.to_owned(),
            reason,
        };
        let kind = match name.len() {
            // ASCII first, so that the slices below fall on character bounds.
            _ if !name.is_ascii() => return Err(invalid("wal file names are ASCII")),
            24 if is_hex(name) => WalFileKind::Segment,
            16 if is_hex(&name[..8]) && &name[8..] == ".history" => WalFileKind::History,
            32 if is_hex(&name[..24]) && &name[24..] == ".partial" => WalFileKind::Partial,
            40 if is_hex(&name[..24])
                && name.as_bytes()[24] == b'.'
                && is_hex(&name[25..33])
                && &name[33..] == ".backup" =>
            {
                WalFileKind::Backup
            }
            _ => {
                return Err(invalid(
                    "expected a segment (24 upper-case hex digits), TTTTTTTT.history, \
                     <segment>.partial or <segment>.OOOOOOOO.backup",
                ));
            }
        };
        if &name[..8] == "00000000" {
            return Err(invalid("timeline 0 does not exist"));
        }
        Ok(Self {
            name: name.to_owned(),
            kind,
        })
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// Its kind.
    pub fn kind(&self) -> WalFileKind {
        self.kind
    }

    /// The timeline (the first 8 hex digits).
    pub fn timeline(&self) -> u32 {
        u32::from_str_radix(&self.name[..8], 16).unwrap_or_default()
    }

    /// The timeline as PostgreSQL names it (`00000001`).
    pub fn timeline_hex(&self) -> &str {
        &self.name[..8]
    }

    /// The segment's position in the WAL (16 hex digits after the
    /// timeline); `None` for history files. Positions of one cluster compare
    /// as strings in WAL order, across timelines and whatever the segment
    /// size.
    pub fn position(&self) -> Option<&str> {
        match self.kind {
            WalFileKind::History => None,
            _ => Some(&self.name[8..24]),
        }
    }

    /// The object that holds the file in the repository.
    pub fn object_path(&self) -> Path {
        let timeline = self.timeline_hex();
        let built = match self.kind {
            WalFileKind::Segment => layout::wal_segment(timeline, &self.name),
            WalFileKind::History => layout::wal_history(timeline),
            WalFileKind::Backup | WalFileKind::Partial => Ok(layout::wal()
                .join(timeline)
                .join(format!("{}.zst", self.name))),
        };
        // The name was checked to be what the layout accepts.
        built.unwrap_or_else(|_| layout::wal().join(self.name.as_str()))
    }

    /// The WAL file an object of the repository holds, if it is one
    /// ([`WalFileName::object_path`] reversed).
    pub fn from_object_path(path: &Path) -> Option<Self> {
        let rest = path.as_ref().strip_prefix("wal/")?;
        let parsed = match rest.split_once('/') {
            None => Self::parse(rest).ok()?,
            Some((timeline, file)) => {
                let parsed = Self::parse(file.strip_suffix(".zst")?).ok()?;
                if parsed.timeline_hex() != timeline {
                    return None;
                }
                parsed
            }
        };
        (parsed.object_path() == *path).then_some(parsed)
    }
}

impl fmt::Display for WalFileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// A WAL location (log sequence number), written `16/B374D848`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl FromStr for Lsn {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::BadBaseBackup {
            reason: format!("{s:?} is not a WAL location (like 16/B374D848)"),
        };
        let (hi, lo) = s.trim().split_once('/').ok_or_else(bad)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The name of the segment of `timeline` that holds byte `lsn`, for
/// segments of `segment_size` bytes (a power of two, 1 MiB to 1 GiB).
pub fn segment_name(timeline: u32, lsn: Lsn, segment_size: u64) -> String {
    let segment_size = segment_size.max(1);
    let segno = lsn.0 / segment_size;
    let per_id = (0x1_0000_0000 / segment_size).max(1);
    format!("{timeline:08X}{:08X}{:08X}", segno / per_id, segno % per_id)
}

/// The names of the segments of `timeline` holding the WAL from `start`
/// up to (not including) `end`: what a recovery between the two reads.
pub fn segments_between(timeline: u32, start: Lsn, end: Lsn, segment_size: u64) -> Vec<String> {
    let segment_size = segment_size.max(1);
    let first = start.0 / segment_size;
    let last = end.0.saturating_sub(1).max(start.0) / segment_size;
    (first..=last)
        .map(|segno| segment_name(timeline, Lsn(segno * segment_size), segment_size))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_and_objects() {
        let cases = [
            (
                "000000010000000A0000003F",
                WalFileKind::Segment,
                "wal/00000001/000000010000000A0000003F.zst",
            ),
            (
                "0000000A.history",
                WalFileKind::History,
                "wal/0000000A.history",
            ),
            (
                "000000010000000000000002.00000028.backup",
                WalFileKind::Backup,
                "wal/00000001/000000010000000000000002.00000028.backup.zst",
            ),
            (
                "000000030000000000000009.partial",
                WalFileKind::Partial,
                "wal/00000003/000000030000000000000009.partial.zst",
            ),
        ];
        for (name, kind, object) in cases {
            let n = WalFileName::parse(name).unwrap();
            assert_eq!((n.kind(), n.object_path().as_ref()), (kind, object));
            assert_eq!(WalFileName::from_object_path(&n.object_path()), Some(n));
        }
        for bad in [
            "",
            "000000010000000a0000003f",
            "00000001000000000000003",
            "0000000100000000000000030",
            "00000000000000000000003F",
            "00000001.HISTORY",
            "RECOVERYXLOG",
            "../00000001.history",
            "000000010000000000000002.0000002.backup",
            "0000000100000000000000é2",
        ] {
            assert!(WalFileName::parse(bad).is_err(), "{bad}");
        }
        for other in [
            "wal/00000002/000000010000000000000002.zst",
            "wal/00000001/000000010000000000000002",
            "wal/00000001.history.zst",
            "snapshots/x/y",
        ] {
            assert_eq!(WalFileName::from_object_path(&Path::from(other)), None);
        }
    }

    #[test]
    fn lsns_and_segments() {
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(lsn.0, 0x16_B374_D848);
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert!("16-B3".parse::<Lsn>().is_err());
        let mib16 = 16 << 20;
        assert_eq!(segment_name(1, lsn, mib16), "0000000100000016000000B3");
        assert_eq!(
            segment_name(2, Lsn(0x1_0000_0000), 1 << 30),
            "000000020000000100000000"
        );
        let start: Lsn = "0/2000028".parse().unwrap();
        let end: Lsn = "0/4000000".parse().unwrap();
        assert_eq!(
            segments_between(1, start, end, mib16),
            ["000000010000000000000002", "000000010000000000000003"]
        );
        let end: Lsn = "0/2000100".parse().unwrap();
        assert_eq!(
            segments_between(1, start, end, mib16),
            ["000000010000000000000002"]
        );
        // Crossing a log id.
        let start: Lsn = "0/FF000000".parse().unwrap();
        let end: Lsn = "1/1000001".parse().unwrap();
        assert_eq!(
            segments_between(1, start, end, mib16),
            [
                "0000000100000000000000FF",
                "000000010000000100000000",
                "000000010000000100000001"
            ]
        );
    }
}
