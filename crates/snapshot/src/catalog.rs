//! The snapshots in a repository: resolving `latest`, listing, verifying
//! and deleting.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use time::OffsetDateTime;
use warmspare_store::object_store::{ObjectStoreExt, path::Path};
use warmspare_store::{
    Authenticity, Manifest, Repository, SnapshotId, SnapshotKind, VerifyReport, layout,
};

use crate::error::{Error, Result};

/// How many manifests are read at once while listing.
const LIST_CONCURRENCY: usize = 8;

/// What the operator may name a snapshot by: an id, or `latest`.
pub const LATEST: &str = "latest";

/// Resolves `spec` (an id, or `latest`: the newest committed snapshot of
/// `kind`, any kind when `None`) to its manifest.
///
/// # Errors
///
/// [`Error::InvalidSnapshotId`] for text that is neither, [`Error::SnapshotNotFound`]
/// for an id without a committed snapshot, [`Error::NoSnapshots`] when
/// `latest` finds nothing, [`Error::WrongKind`] for an id of another kind.
/// While looking for the latest snapshot of a kind, a manifest that cannot be
/// read is an error rather than skipped: silently restoring an older
/// snapshot than the operator expects is worse.
pub async fn resolve(
    repo: &Repository,
    spec: &str,
    kind: Option<SnapshotKind>,
) -> Result<Manifest> {
    if spec == LATEST {
        for id in repo.list_snapshots().await? {
            let manifest = read_manifest(repo, &id).await?;
            if kind.is_none_or(|k| k == manifest.kind) {
                return Ok(manifest);
            }
        }
        return Err(Error::NoSnapshots { kind });
    }
    let id = SnapshotId::parse(spec).map_err(|_| Error::InvalidSnapshotId {
        text: spec.to_owned(),
    })?;
    let manifest = read_manifest(repo, &id).await?;
    match kind {
        Some(k) if k != manifest.kind => Err(Error::WrongKind {
            id,
            kind: manifest.kind,
            needed: match k {
                SnapshotKind::Logical => "a logical snapshot is needed",
                _ => "a physical snapshot is needed",
            },
        }),
        _ => Ok(manifest),
    }
}

/// Reads a committed snapshot's manifest; a missing one is
/// [`Error::SnapshotNotFound`].
pub async fn read_manifest(repo: &Repository, id: &SnapshotId) -> Result<Manifest> {
    match repo.read_manifest(id).await {
        Ok(m) => Ok(m),
        Err(warmspare_store::Error::NotFound { .. }) => {
            Err(Error::SnapshotNotFound { id: id.to_string() })
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether a listed snapshot can be used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "status", content = "reason")]
#[non_exhaustive]
pub enum SnapshotStatus {
    /// Committed: the manifest is present and intact.
    Complete,
    /// No manifest: in progress, or abandoned by a crash or a failure.
    /// Never restored; `prune` removes it after the grace period.
    Incomplete,
    /// The manifest is present but cannot be read or trusted.
    Unreadable(String),
}

/// Whether a record read from the repository (a manifest, a recovery
/// point) was authenticated: serialized as `"verified"`, `"unchecked"` or
/// `"no_mac"`.
///
/// With a key, a record is either verified or refused (never listed as
/// complete), so only a reader *without* a key sees
/// [`Authentication::Unchecked`]: the record carries a MAC, its digest was
/// checked (it is intact) but whether a holder of the key wrote it is
/// unknown, and a caller that lists it must say so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Authentication {
    /// Its MAC verified under the configured key.
    Verified,
    /// It carries a MAC that was not checked: no key is configured.
    Unchecked,
    /// It carries no MAC (a repository without a key).
    NoMac,
}

impl From<&Authenticity> for Authentication {
    fn from(authenticity: &Authenticity) -> Self {
        match authenticity {
            Authenticity::Authenticated { .. } => Self::Verified,
            Authenticity::NoMac => Self::NoMac,
            // `Unchecked`, and whatever a later store version adds: not
            // verified, so never reported as such.
            _ => Self::Unchecked,
        }
    }
}

/// One line of `warmspare list`.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotSummary {
    /// The snapshot.
    pub id: SnapshotId,
    /// Whether it can be used.
    #[serde(flatten)]
    pub status: SnapshotStatus,
    /// Logical or physical (`None` unless complete).
    pub kind: Option<SnapshotKind>,
    /// When it began (for incomplete snapshots: the time in its id).
    #[serde(with = "crate::serde_util::rfc3339")]
    pub started: OffsetDateTime,
    /// When it was committed.
    #[serde(with = "crate::serde_util::rfc3339_opt")]
    pub finished: Option<OffsetDateTime>,
    /// How long it took.
    #[serde(serialize_with = "seconds_opt", rename = "duration_seconds")]
    pub duration: Option<Duration>,
    /// Content bytes of all files.
    pub size: Option<u64>,
    /// Stored (compressed) bytes of all files.
    pub stored_size: Option<u64>,
    /// Number of data objects.
    pub files: Option<usize>,
    /// The database (`meta.database`), when the snapshotter recorded one.
    pub database: Option<String>,
    /// The writer's lease epoch.
    pub epoch: Option<u64>,
    /// Whether the manifest was authenticated, when it was read back from
    /// the repository ([`list`]; `None` for a summary of a manifest just
    /// written, and for incomplete or unreadable snapshots). Omitted from
    /// the JSON when `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authentication: Option<Authentication>,
}

impl SnapshotSummary {
    /// The summary of a committed snapshot.
    pub fn from_manifest(manifest: &Manifest) -> Self {
        let duration = (manifest.finished - manifest.started).try_into().ok();
        Self {
            id: manifest.id.clone(),
            status: SnapshotStatus::Complete,
            kind: Some(manifest.kind),
            started: manifest.started,
            finished: Some(manifest.finished),
            duration,
            size: Some(manifest.total_size()),
            stored_size: Some(manifest.total_stored_size()),
            files: Some(manifest.files.len()),
            database: manifest
                .meta
                .get("database")
                .and_then(|d| d.as_str())
                .map(str::to_owned),
            epoch: manifest.epoch,
            authentication: None,
        }
    }

    /// The summary of a committed snapshot whose manifest was read back
    /// with `authenticity`.
    pub fn from_checked_manifest(manifest: &Manifest, authenticity: &Authenticity) -> Self {
        Self {
            authentication: Some(authenticity.into()),
            ..Self::from_manifest(manifest)
        }
    }

    fn bare(id: SnapshotId, status: SnapshotStatus) -> Self {
        Self {
            started: id.timestamp(),
            id,
            status,
            kind: None,
            finished: None,
            duration: None,
            size: None,
            stored_size: None,
            files: None,
            database: None,
            epoch: None,
            authentication: None,
        }
    }
}

fn seconds_opt<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

/// Every snapshot, newest first, with what its manifest says. Incomplete
/// snapshots are included when `include_incomplete` is set. A manifest that
/// cannot be read makes its line [`SnapshotStatus::Unreadable`], not the
/// whole listing fail.
///
/// Each complete line says how its manifest was authenticated
/// ([`SnapshotSummary::authentication`]): with a key a manifest that is not
/// authenticated by it is unreadable, as for every other reader; without
/// one a manifest carrying a MAC is listed as
/// [`Authentication::Unchecked`] (see [`unchecked`]).
pub async fn list(repo: &Repository, include_incomplete: bool) -> Result<Vec<SnapshotSummary>> {
    let committed = repo.list_snapshots().await?;
    let mut out: Vec<SnapshotSummary> = futures::stream::iter(committed)
        .map(|id| async move {
            match repo.read_manifest_checked(&id, repo.missing_mac()).await {
                Ok((m, authenticity)) => {
                    Ok(SnapshotSummary::from_checked_manifest(&m, &authenticity))
                }
                // Pruned between the listing and the read.
                Err(warmspare_store::Error::NotFound { .. }) => {
                    Ok(SnapshotSummary::bare(id, SnapshotStatus::Incomplete))
                }
                Err(e) if e.is_retryable() => Err(Error::from(e)),
                Err(e) => Ok(SnapshotSummary::bare(
                    id,
                    SnapshotStatus::Unreadable(e.to_string()),
                )),
            }
        })
        .buffered(LIST_CONCURRENCY)
        .try_collect()
        .await?;
    if include_incomplete {
        for id in repo.incomplete_snapshots().await? {
            out.push(SnapshotSummary::bare(id, SnapshotStatus::Incomplete));
        }
        out.sort_by(|a, b| b.id.cmp(&a.id));
    }
    Ok(out)
}

/// How many listed snapshots carry a MAC that was not checked (listed
/// without a key): what a caller must tell the operator.
pub fn unchecked<'a>(listed: impl IntoIterator<Item = &'a SnapshotSummary>) -> usize {
    listed
        .into_iter()
        .filter(|s| s.authentication == Some(Authentication::Unchecked))
        .count()
}

/// Re-reads every object of a snapshot and checks its digests
/// ([`Repository::verify_snapshot`]); each failure in the report names its
/// object. `Err` when the manifest itself cannot be read or trusted.
pub async fn verify(repo: &Repository, id: &SnapshotId) -> Result<VerifyReport> {
    match repo.verify_snapshot(id).await {
        Ok(report) => Ok(report),
        Err(warmspare_store::Error::NotFound { .. }) => {
            Err(Error::SnapshotNotFound { id: id.to_string() })
        }
        Err(e) => Err(e.into()),
    }
}

/// Deletes a snapshot: its manifest **first**, so that it is invisible
/// (incomplete) from that moment, then its data objects. Returns the number
/// of objects deleted. Deleting a snapshot that is already gone, or only
/// partly, is not an error: a crash half-way is finished by the next call
/// (or by `prune`, which removes incomplete snapshots).
pub async fn delete(repo: &Repository, id: &SnapshotId) -> Result<u64> {
    let store = repo.store().object_store();
    let manifest = layout::manifest(id);
    let mut deleted = 0;
    match store.delete(&manifest).await {
        Ok(()) => deleted += 1,
        Err(warmspare_store::object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(store_error(&manifest, e)),
    }
    Ok(deleted + delete_objects(repo, id).await?)
}

/// Deletes every object under a snapshot's prefix (the manifest too, if
/// any: callers that care delete it first).
pub(crate) async fn delete_objects(repo: &Repository, id: &SnapshotId) -> Result<u64> {
    Ok(repo.store().delete_prefix(&layout::snapshot(id)).await?)
}

fn store_error(path: &Path, source: warmspare_store::object_store::Error) -> Error {
    Error::Store(warmspare_store::Error::Store {
        path: path.to_string(),
        source,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use warmspare_store::{EncryptionKey, Store, StoreConfig};

    use super::*;

    fn url(dir: &std::path::Path) -> String {
        url::Url::from_directory_path(dir).unwrap().to_string()
    }

    async fn open(url: &str, key: Option<&EncryptionKey>) -> Repository {
        let mut config = StoreConfig::new(url);
        if let Some(key) = key {
            config = config.with_encryption_key(key.clone());
        }
        Repository::open(Store::open(&config).unwrap())
            .await
            .unwrap()
    }

    /// A repository at `url` (written with `key`, if any) holding one
    /// committed snapshot and one incomplete one.
    async fn repository(url: &str, key: Option<&EncryptionKey>) -> (SnapshotId, SnapshotId) {
        let mut config = StoreConfig::new(url);
        if let Some(key) = key {
            config = config.with_encryption_key(key.clone());
        }
        let now = OffsetDateTime::now_utc();
        let repo = Repository::init(Store::open(&config).unwrap(), now)
            .await
            .unwrap();
        let mut w = repo
            .begin_snapshot(SnapshotKind::Logical, now)
            .await
            .unwrap();
        w.put_file("dump", &b"rows"[..]).await.unwrap();
        let committed = w.commit(serde_json::json!({}), None, now).await.unwrap();
        let later = now + time::Duration::seconds(1);
        let mut w = repo
            .begin_snapshot(SnapshotKind::Logical, later)
            .await
            .unwrap();
        w.put_file("dump", &b"more rows"[..]).await.unwrap();
        (committed.id, w.id().clone())
    }

    fn complete(listed: &[SnapshotSummary], id: &SnapshotId) -> SnapshotSummary {
        let line = listed
            .iter()
            .find(|s| s.id == *id)
            .unwrap_or_else(|| panic!("{id} not listed: {listed:?}"))
            .clone();
        assert_eq!(line.status, SnapshotStatus::Complete, "{line:?}");
        line
    }

    #[tokio::test]
    async fn list_says_whether_manifests_were_authenticated() {
        let dir = tempfile::tempdir().unwrap();
        let url = url(dir.path());
        let key = EncryptionKey::generate();
        let (id, incomplete) = repository(&url, Some(&key)).await;

        // With the key: verified.
        let listed = list(&open(&url, Some(&key)).await, true).await.unwrap();
        let line = complete(&listed, &id);
        assert_eq!(line.authentication, Some(Authentication::Verified));
        assert_eq!(unchecked(&listed), 0);
        let json = serde_json::to_value(&line).unwrap();
        assert_eq!(json["authentication"], "verified", "{json}");

        // Without it: listed, but its MAC unchecked, and counted.
        let listed = list(&open(&url, None).await, true).await.unwrap();
        let line = complete(&listed, &id);
        assert_eq!(line.authentication, Some(Authentication::Unchecked));
        assert_eq!(unchecked(&listed), 1);
        let json = serde_json::to_value(&line).unwrap();
        assert_eq!(json["authentication"], "unchecked", "{json}");
        // An incomplete snapshot has no manifest to authenticate.
        let bare = listed.iter().find(|s| s.id == incomplete).unwrap();
        assert_eq!(bare.status, SnapshotStatus::Incomplete);
        assert_eq!(bare.authentication, None);
        let json = serde_json::to_value(bare).unwrap();
        assert!(json.get("authentication").is_none(), "{json}");

        // Another key: the manifest is refused, not listed as complete.
        let other = EncryptionKey::generate();
        let listed = list(&open(&url, Some(&other)).await, false).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert!(
            matches!(&listed[0].status, SnapshotStatus::Unreadable(r) if r.contains("not authenticated")),
            "{listed:?}"
        );
        assert_eq!(listed[0].authentication, None);
        assert_eq!(unchecked(&listed), 0);
    }

    #[tokio::test]
    async fn list_without_macs_reports_none_and_refuses_them_with_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let url = url(dir.path());
        let (id, _) = repository(&url, None).await;

        let listed = list(&open(&url, None).await, false).await.unwrap();
        let line = complete(&listed, &id);
        assert_eq!(line.authentication, Some(Authentication::NoMac));
        assert_eq!(unchecked(&listed), 0);
        let json = serde_json::to_value(&line).unwrap();
        assert_eq!(json["authentication"], "no_mac", "{json}");

        // A reader with a key refuses a manifest without a MAC.
        let key = EncryptionKey::generate();
        let listed = list(&open(&url, Some(&key)).await, false).await.unwrap();
        assert!(
            matches!(&listed[0].status, SnapshotStatus::Unreadable(r) if r.contains("no MAC")),
            "{listed:?}"
        );
    }

    #[test]
    fn authentication_from_authenticity() {
        let authenticity = Authenticity::Unchecked {
            key_id: "0123456789abcdef".into(),
        };
        assert_eq!(
            Authentication::from(&authenticity),
            Authentication::Unchecked
        );
        assert_eq!(
            Authentication::from(&Authenticity::Authenticated {
                key_id: "0123456789abcdef".into()
            }),
            Authentication::Verified
        );
        assert_eq!(
            Authentication::from(&Authenticity::NoMac),
            Authentication::NoMac
        );
    }
}
