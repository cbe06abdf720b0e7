//! Object paths of repository format version 1.
//!
//! ```text
//! FORMAT                                  written once, create-if-absent
//! snapshots/<id>/MANIFEST.json            the commit record, written last
//! snapshots/<id>/<files>                  data objects (through the codec)
//! wal/<timeline>/<segment>.zst            immutable, create-if-absent
//! wal/<timeline>.history
//! blobs/sha256/<2 hex>/<64 hex>           artifact contents, content-addressed
//! inventories/<id>.json.zst               artifact inventory
//! points/<id>.json                        recovery point
//! lease/active.json                       the lease; conditional writes only
//! tmp/                                    scratch (check probes); never data
//! ```

use object_store::path::Path;

use crate::error::{Error, Result};
use crate::id::SnapshotId;

/// The `FORMAT` object.
pub fn format() -> Path {
    Path::from("FORMAT")
}

/// The prefix under which snapshots live.
pub fn snapshots() -> Path {
    Path::from("snapshots")
}

/// The prefix of one snapshot.
pub fn snapshot(id: &SnapshotId) -> Path {
    snapshots().join(id.as_str())
}

/// The name of a snapshot's commit record.
pub const MANIFEST: &str = "MANIFEST.json";

/// A snapshot's commit record.
pub fn manifest(id: &SnapshotId) -> Path {
    snapshot(id).join(MANIFEST)
}

/// A data object of a snapshot. `name` is a relative path of one or more
/// `/`-separated segments of ASCII letters, digits, `.`, `_` and `-`; it
/// may not start with `.` nor be the manifest's name.
pub fn snapshot_file(id: &SnapshotId, name: &str) -> Result<Path> {
    validate_file_name(name)?;
    let mut path = snapshot(id);
    for segment in name.split('/') {
        path = path.join(segment);
    }
    Ok(path)
}

/// Checks a snapshot file name (see [`snapshot_file`]).
pub fn validate_file_name(name: &str) -> Result<()> {
    let invalid = |reason: &str| Error::InvalidPath {
        path: name.to_string(),
        reason: reason.to_string(),
    };
    if name.is_empty() || name.len() > 512 {
        return Err(invalid("file names must have 1 to 512 characters"));
    }
    if name == MANIFEST {
        return Err(invalid("the manifest's name is reserved"));
    }
    for segment in name.split('/') {
        if segment.is_empty() || segment.starts_with('.') {
            return Err(invalid(
                "segments must be non-empty and must not start with '.'",
            ));
        }
        if !segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(invalid(
                "only ASCII letters, digits, '.', '_' and '-' are allowed",
            ));
        }
    }
    Ok(())
}

/// The WAL prefix.
pub fn wal() -> Path {
    Path::from("wal")
}

/// A WAL segment: `wal/<timeline>/<segment>.zst`. Timeline and segment are
/// PostgreSQL's hex names (8 and 24 hex digits).
pub fn wal_segment(timeline: &str, segment: &str) -> Result<Path> {
    check_hex("timeline", timeline, 8)?;
    check_hex("segment", segment, 24)?;
    Ok(wal().join(timeline).join(format!("{segment}.zst")))
}

/// A timeline history file: `wal/<timeline>.history`.
pub fn wal_history(timeline: &str) -> Result<Path> {
    check_hex("timeline", timeline, 8)?;
    Ok(wal().join(format!("{timeline}.history")))
}

/// A content-addressed blob: `blobs/sha256/<2 hex>/<64 hex>`.
pub fn blob(sha256: &str) -> Result<Path> {
    if sha256.len() != 64
        || !sha256
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(Error::InvalidPath {
            path: sha256.to_string(),
            reason: "a blob name is 64 lowercase hex digits".into(),
        });
    }
    Ok(Path::from("blobs/sha256").join(&sha256[..2]).join(sha256))
}

/// An artifact inventory: `inventories/<id>.json.zst`.
pub fn inventory(id: &SnapshotId) -> Path {
    Path::from("inventories").join(format!("{id}.json.zst"))
}

/// A recovery point: `points/<id>.json`.
pub fn point(id: &SnapshotId) -> Path {
    Path::from("points").join(format!("{id}.json"))
}

/// The lease object.
pub fn lease() -> Path {
    Path::from("lease/active.json")
}

/// The scratch prefix (probes write here and clean up).
pub fn scratch() -> Path {
    Path::from("tmp")
}

fn check_hex(what: &str, value: &str, len: usize) -> Result<()> {
    if value.len() == len && value.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(Error::InvalidPath {
            path: value.to_string(),
            reason: format!("a WAL {what} name is {len} hex digits"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn paths() {
        let id = SnapshotId::with_suffix(datetime!(2026-11-22 10:15:00 UTC), 0x3f9a);
        assert_eq!(
            manifest(&id).as_ref(),
            "snapshots/20261122T101500Z-3f9a/MANIFEST.json"
        );
        assert_eq!(
            snapshot_file(&id, "db/toc.dat").unwrap().as_ref(),
            "snapshots/20261122T101500Z-3f9a/db/toc.dat"
        );
        assert_eq!(
            wal_segment("00000001", "000000010000000000000003")
                .unwrap()
                .as_ref(),
            "wal/00000001/000000010000000000000003.zst"
        );
        assert_eq!(
            wal_history("00000002").unwrap().as_ref(),
            "wal/00000002.history"
        );
        let h = "ab".repeat(32);
        assert_eq!(blob(&h).unwrap().as_ref(), format!("blobs/sha256/ab/{h}"));
        assert_eq!(
            inventory(&id).as_ref(),
            "inventories/20261122T101500Z-3f9a.json.zst"
        );
        assert_eq!(point(&id).as_ref(), "points/20261122T101500Z-3f9a.json");
        assert_eq!(lease().as_ref(), "lease/active.json");
    }

    #[test]
    fn bad_names() {
        for bad in [
            "",
            "MANIFEST.json",
            "../x",
            "a//b",
            ".hidden",
            "a/.b",
            "sp ace",
            "x#1",
            "/abs",
        ] {
            assert!(validate_file_name(bad).is_err(), "{bad}");
        }
        assert!(blob("AB").is_err());
        assert!(blob(&"AB".repeat(32)).is_err());
        assert!(wal_segment("1", "2").is_err());
    }
}
