//! Artifact inventories: the list of artifacts (key, size, SHA-256) at one
//! moment, stored at `inventories/<id>.json.zst`, naming content-addressed
//! blobs at `blobs/sha256/<2>/<64>`.
//!
//! An inventory is a self-checking record (the manifest envelope, see
//! `record.rs`) compressed with zstd, written once (create-if-absent).
//! Blobs are stored as raw bytes: their name is their SHA-256, so every
//! read checks them against their name (artifacts such as `.hart` files
//! are compressed already).

use std::io::Cursor;

use async_compression::Level;
use async_compression::tokio::bufread::{ZstdDecoder, ZstdEncoder};
use object_store::ObjectMeta;
use object_store::path::Path;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::io::AsyncReadExt;
use warmspare_store::{Repository, SnapshotId, layout};

use crate::error::{Error, Result, Side};
use crate::merge::Keyed;
use crate::record;
use crate::state::normalize_etag;

/// The inventory format version this build reads and writes.
pub const INVENTORY_VERSION: u32 = 1;
const KIND: &str = "inventory";
/// Largest decompressed inventory accepted (a guard against garbage).
const MAX_DECODED: u64 = 4 << 30;

/// One artifact in an inventory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryEntry {
    /// The object's key in the artifact store.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// SHA-256 of its bytes (lowercase hex): the blob it is stored as.
    pub sha256: String,
    /// When the source last modified it.
    #[serde(with = "crate::record::rfc3339")]
    pub last_modified: OffsetDateTime,
    /// The source's version token when it was read (its ETag, or
    /// `mtime:<unix nanos>` for stores without ETags): an object with the
    /// same size and token in a later backup is not read again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl Keyed for InventoryEntry {
    fn key(&self) -> &str {
        &self.key
    }
}

/// The version token recorded for a listed object.
pub(crate) fn version_token(meta: &ObjectMeta) -> Option<String> {
    match &meta.e_tag {
        Some(e) => Some(normalize_etag(e).to_string()),
        None => meta
            .last_modified
            .timestamp_nanos_opt()
            .map(|n| format!("mtime:{n}")),
    }
}

/// The modification time of a listed object.
pub(crate) fn modified(meta: &ObjectMeta) -> OffsetDateTime {
    meta.last_modified
        .timestamp_nanos_opt()
        .and_then(|n| OffsetDateTime::from_unix_timestamp_nanos(i128::from(n)).ok())
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// The artifacts of one store at one moment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    /// Format version ([`INVENTORY_VERSION`]).
    pub version: u32,
    /// The inventory's id (time-sortable).
    pub id: SnapshotId,
    /// When the backup that made it started.
    #[serde(with = "crate::record::rfc3339")]
    pub taken: OffsetDateTime,
    /// The source's identity (a URL without credentials), if given.
    #[serde(default)]
    pub source: Option<String>,
    /// The artifacts, sorted by key, each key once.
    pub entries: Vec<InventoryEntry>,
}

impl Inventory {
    /// The entry for `key`.
    pub fn get(&self, key: &str) -> Option<&InventoryEntry> {
        self.entries
            .binary_search_by(|e| e.key.as_str().cmp(key))
            .ok()
            .map(|i| &self.entries[i])
    }

    /// Total bytes of all artifacts.
    pub fn total_size(&self) -> u64 {
        self.entries.iter().map(|e| e.size).sum()
    }

    /// Whether `meta` (a listing of the source) shows the same object as
    /// the entry for its key: same size and version token.
    pub fn unchanged(&self, meta: &ObjectMeta) -> Option<&InventoryEntry> {
        self.get(meta.location.as_ref()).filter(|e| {
            e.size == meta.size && e.version.is_some() && e.version == version_token(meta)
        })
    }

    fn check(&self, path: &Path) -> Result<()> {
        for pair in self.entries.windows(2) {
            if pair[0].key >= pair[1].key {
                return Err(Error::Corrupt {
                    path: path.to_string(),
                    reason: format!("entries not sorted at {}", pair[1].key),
                });
            }
        }
        for e in &self.entries {
            layout::blob(&e.sha256).map_err(|_| Error::Corrupt {
                path: path.to_string(),
                reason: format!("entry {} has an invalid sha256", e.key),
            })?;
        }
        Ok(())
    }
}

/// Writes `inventory` to `inventories/<id>.json.zst`, create-if-absent.
pub async fn write_inventory(repo: &Repository, inventory: &Inventory) -> Result<()> {
    let path = layout::inventory(&inventory.id);
    inventory.check(&path)?;
    let json = record::encode(KIND, &path, inventory)?;
    let mut compressed = Vec::with_capacity(json.len() / 4);
    ZstdEncoder::with_quality(Cursor::new(json), Level::Precise(3))
        .read_to_end(&mut compressed)
        .await
        .map_err(|e| Error::Corrupt {
            path: path.to_string(),
            reason: format!("cannot compress: {e}"),
        })?;
    record::create(repo, &path, compressed).await
}

/// Reads and checks inventory `id`.
pub async fn read_inventory(repo: &Repository, id: &SnapshotId) -> Result<Inventory> {
    let path = layout::inventory(id);
    let compressed = record::read(repo, &path)
        .await?
        .ok_or_else(|| Error::NotFound {
            what: "inventory",
            id: id.to_string(),
        })?;
    let mut json = Vec::new();
    ZstdDecoder::new(Cursor::new(compressed))
        .take(MAX_DECODED)
        .read_to_end(&mut json)
        .await
        .map_err(|e| Error::Corrupt {
            path: path.to_string(),
            reason: format!("cannot decompress: {e}"),
        })?;
    let inventory: Inventory = record::decode(KIND, u64::from(INVENTORY_VERSION), &path, &json)?;
    if inventory.id != *id {
        return Err(Error::Corrupt {
            path: path.to_string(),
            reason: format!("the record belongs to inventory {}", inventory.id),
        });
    }
    inventory.check(&path)?;
    Ok(inventory)
}

/// Ids of the inventories in the repository, newest first.
pub async fn list_inventories(repo: &Repository) -> Result<Vec<SnapshotId>> {
    list_ids(repo, "inventories", ".json.zst").await
}

/// Ids of the records under `prefix` named `<id><suffix>`, newest first.
pub(crate) async fn list_ids(
    repo: &Repository,
    prefix: &str,
    suffix: &str,
) -> Result<Vec<SnapshotId>> {
    let prefix = Path::from(prefix);
    let listed = repo
        .store()
        .object_store()
        .list_with_delimiter(Some(&prefix))
        .await
        .map_err(|source| Error::List {
            side: Side::Repository,
            source,
        })?;
    let mut ids: Vec<SnapshotId> = listed
        .objects
        .iter()
        .filter_map(|m| m.location.filename()?.strip_suffix(suffix))
        .filter_map(|name| SnapshotId::parse(name).ok())
        .collect();
    ids.sort_unstable_by(|a, b| b.cmp(a));
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;
    use warmspare_store::{Store, StoreConfig};

    #[tokio::test]
    async fn write_read_list() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StoreConfig::new(format!(
            "file://{}",
            dir.path().display()
        )))
        .unwrap();
        let now = datetime!(2026-11-22 10:15:00 UTC);
        let repo = Repository::init(store, now).await.unwrap();
        let inventory = Inventory {
            version: INVENTORY_VERSION,
            id: SnapshotId::with_suffix(now, 1),
            taken: now,
            source: Some("file:///srv".into()),
            entries: vec![InventoryEntry {
                key: "a/b.hart".into(),
                size: 3,
                sha256: "ab".repeat(32),
                last_modified: now,
                version: Some("etag".into()),
            }],
        };
        write_inventory(&repo, &inventory).await.unwrap();
        assert!(
            write_inventory(&repo, &inventory).await.is_err(),
            "create-if-absent"
        );
        assert_eq!(
            read_inventory(&repo, &inventory.id).await.unwrap(),
            inventory
        );
        assert_eq!(
            list_inventories(&repo).await.unwrap(),
            vec![inventory.id.clone()]
        );
        let missing = SnapshotId::with_suffix(now, 2);
        assert!(
            read_inventory(&repo, &missing)
                .await
                .unwrap_err()
                .is_not_found()
        );
    }
}
