//! Artifact inventories: the list of artifacts (key, size, SHA-256) at one
//! moment, stored at `inventories/<id>.json.zst`, naming content-addressed
//! blobs at `blobs/sha256/<2>/<64>`.
//!
//! An inventory is a self-checking record (the manifest envelope, see
//! `record.rs`) written once (create-if-absent) as a *sealed* object of
//! the store codec (`warmspare_store::Codec::put_sealed`): zstd-compressed,
//! encrypted when the repository has a key, carrying its own sizes and
//! digests in a seal that also names its path. Inventories written before
//! (plain zstd frames) are still read.
//!
//! With a key, an inventory that is not encrypted (sealed without a key, or
//! of an earlier build) is refused, naming it
//! (`warmspare_store::Error::Unencrypted`): nothing authenticates it, and
//! it names the blobs a restore writes and a backup takes as unchanged.
//! A repository that holds inventories from before encryption was turned
//! on reads them with `StoreConfig::allow_unencrypted`.
//!
//! Blobs are named by the SHA-256 of their content, which every read
//! checks (see `blob.rs` for how they are stored).

use std::io::Cursor;

use async_compression::tokio::bufread::ZstdDecoder;
use object_store::ObjectMeta;
use object_store::path::Path;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::io::AsyncReadExt;
use warmspare_store::{Codec, Compression, Repository, SealedPut, SnapshotId, layout};

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

/// The codec inventories are written with: always zstd (JSON compresses
/// well, whatever the repository's setting for data objects), encrypted
/// as the repository's data objects are, and reading unencrypted ones only
/// when the repository allows them.
fn codec(repo: &Repository) -> Codec {
    let data = repo.store().codec();
    Codec::new(Compression::Zstd)
        .with_encryption(data.encryption().clone())
        .with_allow_unencrypted(data.allows_unencrypted())
}

/// Writes `inventory` to `inventories/<id>.json.zst`, create-if-absent,
/// through the store codec (compressed; encrypted when the repository has
/// a key; refused when encryption is configured without its key). An
/// inventory with the same id and other content is
/// `warmspare_store::Error::AlreadyExists`; the same content again (a
/// retried write) succeeds.
pub async fn write_inventory(repo: &Repository, inventory: &Inventory) -> Result<()> {
    let path = layout::inventory(&inventory.id);
    inventory.check(&path)?;
    let json = record::encode(KIND, &path, inventory)?;
    let store = repo.store().object_store();
    match codec(repo)
        .put_sealed(store, &path, &json[..], MAX_DECODED)
        .await?
    {
        SealedPut::Created(_) => Ok(()),
        SealedPut::Exists { ours, existing } if ours.content_sha256 == existing.content_sha256 => {
            Ok(())
        }
        SealedPut::Exists { .. } => Err(Error::Repository(warmspare_store::Error::AlreadyExists {
            path: path.to_string(),
        })),
    }
}

/// Reads and checks inventory `id`. An encrypted inventory needs the
/// repository's key: without it, or with another, the error says so
/// (`warmspare_store::Error::KeyMissing`, `WrongKey`) and names the
/// object. With a key, an unencrypted inventory is
/// `warmspare_store::Error::Unencrypted` unless the repository allows them
/// (see the module docs).
pub async fn read_inventory(repo: &Repository, id: &SnapshotId) -> Result<Inventory> {
    let path = layout::inventory(id);
    let not_found = || Error::NotFound {
        what: "inventory",
        id: id.to_string(),
    };
    let codec = codec(repo);
    let mut json = Vec::new();
    match codec
        .get_sealed(repo.store().object_store(), &path, &mut json)
        .await
    {
        Ok(_) => {}
        Err(warmspare_store::Error::NotFound { .. }) => return Err(not_found()),
        // Not sealed: an inventory of an earlier build (a plain zstd frame),
        // which is never encrypted.
        Err(warmspare_store::Error::Corrupt { .. }) if is_legacy(repo, &path).await? => {
            codec.check_unencrypted(path.as_ref())?;
            json = read_legacy(repo, &path).await?.ok_or_else(not_found)?;
        }
        Err(e) => return Err(e.into()),
    }
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

/// The magic of a zstd frame, which inventories of earlier builds start
/// with (sealed ones start with a skippable frame).
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];

async fn is_legacy(repo: &Repository, path: &Path) -> Result<bool> {
    use object_store::ObjectStoreExt;
    match repo.store().object_store().get_range(path, 0..4).await {
        Ok(head) => Ok(head.as_ref() == ZSTD_MAGIC),
        Err(_) => Ok(false),
    }
}

/// An inventory of an earlier build: the envelope in one zstd frame.
async fn read_legacy(repo: &Repository, path: &Path) -> Result<Option<Vec<u8>>> {
    let Some(compressed) = record::read(repo, path).await? else {
        return Ok(None);
    };
    let mut json = Vec::new();
    ZstdDecoder::new(Cursor::new(compressed))
        .take(MAX_DECODED)
        .read_to_end(&mut json)
        .await
        .map_err(|e| Error::Corrupt {
            path: path.to_string(),
            reason: format!("cannot decompress: {e}"),
        })?;
    Ok(Some(json))
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

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

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
        // A retried write of the same record succeeds; another record under
        // the same id does not replace it.
        write_inventory(&repo, &inventory).await.unwrap();
        let mut other = inventory.clone();
        other.entries[0].size = 4;
        let err = write_inventory(&repo, &other).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::Repository(warmspare_store::Error::AlreadyExists { .. })
            ),
            "create-if-absent: {err:?}"
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

    fn sample(now: OffsetDateTime) -> Inventory {
        Inventory {
            version: INVENTORY_VERSION,
            id: SnapshotId::with_suffix(now, 9),
            taken: now,
            source: Some("s3://secret-bucket".into()),
            entries: vec![InventoryEntry {
                key: "core/secret-package/1.0/x.hart".into(),
                size: 3,
                sha256: "cd".repeat(32),
                last_modified: now,
                version: None,
            }],
        }
    }

    #[tokio::test]
    async fn encrypted_inventories_need_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let key = warmspare_store::EncryptionKey::generate();
        let now = datetime!(2026-11-22 10:15:00 UTC);
        let open = |key: Option<&warmspare_store::EncryptionKey>| {
            let mut config = StoreConfig::new(url.clone());
            if let Some(key) = key {
                config = config.with_encryption_key(key.clone());
            }
            Store::open(&config).unwrap()
        };
        let repo = Repository::init(open(Some(&key)), now).await.unwrap();
        let inventory = sample(now);
        write_inventory(&repo, &inventory).await.unwrap();
        assert_eq!(
            read_inventory(&repo, &inventory.id).await.unwrap(),
            inventory
        );
        let stored =
            std::fs::read(dir.path().join(layout::inventory(&inventory.id).as_ref())).unwrap();
        assert!(
            !contains(&stored, b"secret-package"),
            "keys are not readable"
        );
        assert!(!contains(&stored, b"secret-bucket"));

        let plain = Repository::open(open(None)).await.unwrap();
        let err = read_inventory(&plain, &inventory.id).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::Repository(warmspare_store::Error::KeyMissing { .. })
            ),
            "{err:?}"
        );
        let other = warmspare_store::EncryptionKey::generate();
        let wrong = Repository::open(open(Some(&other))).await.unwrap();
        let err = read_inventory(&wrong, &inventory.id).await.unwrap_err();
        assert!(
            err.to_string()
                .starts_with("wrong key: object inventories/"),
            "{err}"
        );
    }

    /// Inventories that are not encrypted (planted by someone who can write
    /// to the bucket, or written before encryption was turned on), sealed
    /// or of an earlier build: refused with a key, naming the object, and
    /// read with `allow_unencrypted`.
    #[tokio::test]
    async fn unencrypted_inventories_need_the_opt_in() {
        use async_compression::Level;
        use async_compression::tokio::bufread::ZstdEncoder;
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig::new(format!("file://{}", dir.path().display()));
        let now = datetime!(2026-11-22 10:15:00 UTC);
        let plain = Repository::init(Store::open(&config).unwrap(), now)
            .await
            .unwrap();
        let sealed = sample(now);
        write_inventory(&plain, &sealed).await.unwrap();
        let mut legacy = sample(now);
        legacy.id = SnapshotId::with_suffix(now, 11);
        let legacy_path = layout::inventory(&legacy.id);
        let json = record::encode(KIND, &legacy_path, &legacy).unwrap();
        let mut compressed = Vec::new();
        ZstdEncoder::with_quality(Cursor::new(json), Level::Precise(3))
            .read_to_end(&mut compressed)
            .await
            .unwrap();
        record::create(&plain, &legacy_path, compressed)
            .await
            .unwrap();

        let key = warmspare_store::EncryptionKey::generate();
        let keyed = config.clone().with_encryption_key(key);
        let strict = Repository::open(Store::open(&keyed).unwrap())
            .await
            .unwrap();
        for inventory in [&sealed, &legacy] {
            let path = layout::inventory(&inventory.id);
            let err = read_inventory(&strict, &inventory.id).await.unwrap_err();
            assert!(
                matches!(
                    &err,
                    Error::Repository(warmspare_store::Error::Unencrypted { path: p })
                        if p == path.as_ref()
                ),
                "{err:?}"
            );
            assert!(err.to_string().contains("allow_unencrypted"), "{err}");
        }
        // Rewriting the same inventory does not pass for success either.
        let err = write_inventory(&strict, &sealed).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::Repository(warmspare_store::Error::Unencrypted { .. })
            ),
            "{err:?}"
        );

        let allowing = Repository::open(Store::open(&keyed.with_allow_unencrypted(true)).unwrap())
            .await
            .unwrap();
        for inventory in [&sealed, &legacy] {
            assert_eq!(
                &read_inventory(&allowing, &inventory.id).await.unwrap(),
                inventory
            );
        }
        write_inventory(&allowing, &sealed).await.unwrap();
        // An encrypted inventory reads with or without the opt-in.
        let mut fresh = sample(now);
        fresh.id = SnapshotId::with_suffix(now, 12);
        write_inventory(&strict, &fresh).await.unwrap();
        for repo in [&strict, &allowing] {
            assert_eq!(read_inventory(repo, &fresh.id).await.unwrap(), fresh);
        }
    }

    #[tokio::test]
    async fn inventories_of_earlier_builds_are_read() {
        use async_compression::Level;
        use async_compression::tokio::bufread::ZstdEncoder;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StoreConfig::new(format!(
            "file://{}",
            dir.path().display()
        )))
        .unwrap();
        let now = datetime!(2026-11-22 10:15:00 UTC);
        let repo = Repository::init(store, now).await.unwrap();
        let inventory = sample(now);
        let path = layout::inventory(&inventory.id);
        let json = record::encode(KIND, &path, &inventory).unwrap();
        let mut compressed = Vec::new();
        ZstdEncoder::with_quality(Cursor::new(json), Level::Precise(3))
            .read_to_end(&mut compressed)
            .await
            .unwrap();
        record::create(&repo, &path, compressed).await.unwrap();
        assert_eq!(
            read_inventory(&repo, &inventory.id).await.unwrap(),
            inventory
        );

        // Garbage is neither.
        let junk = SnapshotId::with_suffix(now, 10);
        record::create(&repo, &layout::inventory(&junk), b"junk".to_vec())
            .await
            .unwrap();
        let err = read_inventory(&repo, &junk).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::Repository(warmspare_store::Error::Corrupt { .. })
            ),
            "{err:?}"
        );
    }
}
