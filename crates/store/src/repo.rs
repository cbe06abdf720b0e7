//! [`Repository`]: format version 1 on top of a [`Store`] — initialisation,
//! the snapshot commit protocol, listing, reading and verification.
//!
//! # Commit protocol
//!
//! 1. [`Repository::begin_snapshot`] picks a fresh time-sortable id.
//! 2. [`SnapshotWriter::put_file`] streams each data object to
//!    `snapshots/<id>/<name>` through the codec and records its
//!    [`ObjectInfo`].
//! 3. [`SnapshotWriter::commit`] writes `snapshots/<id>/MANIFEST.json`
//!    **last**, create-if-absent, listing every file with its digests;
//!    with a key, authenticated by a MAC in the same object
//!    ([`crate::record`]).
//!
//! A snapshot exists exactly when its manifest does: readers list only
//! snapshots with a manifest, so a crash at any point leaves either a
//! complete snapshot or an incomplete prefix that nothing reads and
//! `prune` removes ([`Repository::incomplete_snapshots`]).

use std::collections::BTreeMap;

use futures::StreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::codec::{Check, ObjectInfo, Progress};
use crate::crypto::EncryptionKey;
use crate::error::{Error, Result};
use crate::id::SnapshotId;
use crate::layout;
use crate::manifest::{FormatInfo, MANIFEST_VERSION, Manifest, SnapshotKind};
use crate::record::{self, Authenticity, MissingMac};
use crate::store::Store;

/// How many manifests are looked up at once while listing.
const LIST_CONCURRENCY: usize = 8;

/// A warmspare repository (format version 1) in a [`Store`].
#[derive(Clone, Debug)]
pub struct Repository {
    store: Store,
    format: FormatInfo,
}

impl Repository {
    /// Initialises the repository if it has no `FORMAT` yet (create-if-absent,
    /// so concurrent inits agree on one `FORMAT`), then opens it. An existing
    /// `FORMAT` of another format or version is an error.
    ///
    /// An existing repository is opened without any write: on a backend that
    /// ignores conditional headers (see [`crate::probe_cas`]) a blind
    /// create-if-absent would overwrite it, so the write is reserved for an
    /// empty location.
    pub async fn init(store: Store, now: OffsetDateTime) -> Result<Self> {
        match Self::open(store.clone()).await {
            Err(Error::NotARepository { .. }) => {}
            opened => return opened,
        }
        let path = layout::format();
        let bytes = FormatInfo::new(now).to_bytes();
        match store.cas().create(&path, bytes.into()).await {
            Ok(_) | Err(Error::AlreadyExists { .. }) => Self::open(store).await,
            Err(e) => Err(e),
        }
    }

    /// Opens an initialised repository: `FORMAT` must exist and be version 1.
    pub async fn open(store: Store) -> Result<Self> {
        let path = layout::format();
        let bytes = match store.object_store().get(&path).await {
            Ok(result) => result
                .bytes()
                .await
                .map_err(|e| Error::from_store(path.as_ref(), e))?,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(Error::NotARepository {
                    url: store.display_url(),
                });
            }
            Err(e) => return Err(Error::from_store(path.as_ref(), e)),
        };
        let format = FormatInfo::from_bytes(path.as_ref(), &bytes)?;
        Ok(Self { store, format })
    }

    /// The underlying store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The repository's `FORMAT`.
    pub fn format(&self) -> &FormatInfo {
        &self.format
    }

    /// Starts a snapshot taken at `now`. The id is fresh: if its prefix
    /// already holds objects (an id collision within one second), another
    /// suffix is drawn.
    pub async fn begin_snapshot(
        &self,
        kind: SnapshotKind,
        now: OffsetDateTime,
    ) -> Result<SnapshotWriter> {
        for _ in 0..8 {
            let id = SnapshotId::new(now);
            let prefix = layout::snapshot(&id);
            let listed = self
                .store
                .object_store()
                .list_with_delimiter(Some(&prefix))
                .await
                .map_err(|e| Error::from_store(prefix.as_ref(), e))?;
            if listed.objects.is_empty() && listed.common_prefixes.is_empty() {
                return Ok(SnapshotWriter {
                    repo: self.clone(),
                    id,
                    kind,
                    started: now,
                    files: BTreeMap::new(),
                });
            }
        }
        Err(Error::AlreadyExists {
            path: layout::snapshots().to_string(),
        })
    }

    /// Ids of committed snapshots (those with a manifest), newest first.
    /// Memory is bounded by the number of snapshots, not their files: one
    /// delimiter listing of `snapshots/` and one lookup per snapshot.
    pub async fn list_snapshots(&self) -> Result<Vec<SnapshotId>> {
        self.snapshot_prefixes(true).await
    }

    /// Ids of snapshot prefixes without a manifest, newest first: snapshots
    /// in progress, or abandoned by a crash. `prune` removes those older
    /// than any snapshot could take (judge by [`SnapshotId::timestamp`]).
    /// On a filesystem an emptied prefix directory is reported too.
    pub async fn incomplete_snapshots(&self) -> Result<Vec<SnapshotId>> {
        self.snapshot_prefixes(false).await
    }

    async fn snapshot_prefixes(&self, committed: bool) -> Result<Vec<SnapshotId>> {
        let root = layout::snapshots();
        let listed = self
            .store
            .object_store()
            .list_with_delimiter(Some(&root))
            .await
            .map_err(|e| Error::from_store(root.as_ref(), e))?;
        let ids: Vec<SnapshotId> = listed
            .common_prefixes
            .iter()
            .filter_map(|prefix| {
                let name = prefix.filename()?;
                match SnapshotId::parse(name) {
                    Ok(id) => Some(id),
                    Err(_) => {
                        tracing::warn!(prefix = %prefix, "ignoring a snapshot prefix that is not an id");
                        None
                    }
                }
            })
            .collect();
        let store = self.store.object_store();
        let mut checked: Vec<(SnapshotId, bool)> = futures::stream::iter(ids)
            .map(|id| async move {
                let path = layout::manifest(&id);
                match store.head(&path).await {
                    Ok(_) => Ok((id, true)),
                    Err(object_store::Error::NotFound { .. }) => Ok((id, false)),
                    Err(e) => Err(Error::from_store(path.as_ref(), e)),
                }
            })
            .buffer_unordered(LIST_CONCURRENCY)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_>>()?;
        checked.retain(|(_, has_manifest)| *has_manifest == committed);
        let mut ids: Vec<SnapshotId> = checked.into_iter().map(|(id, _)| id).collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        Ok(ids)
    }

    /// Reads and checks a snapshot's manifest (MAC when the store has a
    /// key, digest, version, id).
    ///
    /// With a key, a manifest that is not authenticated by it (no MAC, a
    /// MAC by another key, or one that does not match: altered, or copied
    /// from another snapshot) is [`Error::Unauthenticated`] naming the
    /// manifest. Without a key, an authenticated manifest is read (its
    /// digest checked, its MAC not): listing needs no key.
    ///
    /// With [`crate::StoreConfig::allow_unencrypted`], a manifest without a
    /// MAC is read too (see [`Repository::missing_mac`]).
    pub async fn read_manifest(&self, id: &SnapshotId) -> Result<Manifest> {
        self.read_manifest_checked(id, self.missing_mac())
            .await
            .map(|(manifest, _)| manifest)
    }

    /// What readers of this repository do with a record (manifest,
    /// recovery point) that carries no MAC although a key is configured:
    /// refuse it, unless the repository allows what was written before
    /// encryption was turned on ([`crate::StoreConfig::allow_unencrypted`],
    /// the same opt-in as for unencrypted WAL and inventories).
    pub fn missing_mac(&self) -> MissingMac {
        if self.store.codec().allows_unencrypted() {
            MissingMac::Accept
        } else {
            MissingMac::Refuse
        }
    }

    /// Like [`Repository::read_manifest`], returning how the manifest was
    /// authenticated; `missing` says whether a reader with a key accepts a
    /// manifest without a MAC (written before the repository had a key),
    /// which a caller that accepts it must surface to the operator:
    /// anyone who can write to the repository can write such a manifest.
    pub async fn read_manifest_checked(
        &self,
        id: &SnapshotId,
        missing: MissingMac,
    ) -> Result<(Manifest, Authenticity)> {
        let path = layout::manifest(id);
        let bytes = self.read_small(&path).await?;
        let key = self.store.codec().encryption().key();
        let (manifest, authenticity) = Manifest::decode(path.as_ref(), &bytes, key, missing)?;
        if manifest.id != *id {
            return Err(Error::Corrupt {
                path: path.to_string(),
                reason: format!("the manifest belongs to snapshot {}", manifest.id),
            });
        }
        Ok((manifest, authenticity))
    }

    /// Encodes a small JSON record of another crate (a recovery point)
    /// stored at `path` as [`crate::record`] does for manifests: with a MAC
    /// under the store's key when it has one. `kind` names the record
    /// (`"point"`); `body` is its JSON. Refused with
    /// [`Error::KeyNotLoaded`] when encryption is configured but its key
    /// was not loaded.
    pub fn seal_record(&self, kind: &str, path: &Path, body: &[u8]) -> Result<Vec<u8>> {
        let key = self.write_key(path)?;
        record::encode(kind, path.as_ref(), body, key)
    }

    /// Decodes a record written by [`Repository::seal_record`] and read
    /// from `path`, returning its body (JSON, for the caller to parse and
    /// version-check). With a key the MAC must verify, and a record without
    /// one is refused unless `missing` accepts it; errors as
    /// [`record::decode`].
    pub fn open_record<'a>(
        &self,
        kind: &str,
        path: &Path,
        bytes: &'a [u8],
        missing: MissingMac,
    ) -> Result<(&'a [u8], Authenticity)> {
        let key = self.store.codec().encryption().key();
        record::decode(kind, path.as_ref(), bytes, key, missing)
    }

    /// The key records are written with: the store's key, none without
    /// encryption, and a refusal when its key was not loaded (as for data
    /// objects).
    fn write_key(&self, path: &Path) -> Result<Option<&EncryptionKey>> {
        self.store.codec().write_key(path.as_ref())
    }

    async fn read_small(&self, path: &Path) -> Result<bytes::Bytes> {
        self.store
            .object_store()
            .get(path)
            .await
            .map_err(|e| Error::from_store(path.as_ref(), e))?
            .bytes()
            .await
            .map_err(|e| Error::from_store(path.as_ref(), e))
    }

    /// Streams file `name` of snapshot `id` into `writer`, verified against
    /// the manifest. Output is provisional until this returns `Ok`.
    pub async fn read_file<W>(
        &self,
        id: &SnapshotId,
        name: &str,
        writer: &mut W,
    ) -> Result<ObjectInfo>
    where
        W: AsyncWrite + Unpin + Send + ?Sized,
    {
        let manifest = self.read_manifest(id).await?;
        self.read_manifest_file(&manifest, name, writer, None).await
    }

    /// Like [`Repository::read_file`] with an already read manifest and an
    /// optional progress callback.
    pub async fn read_manifest_file<W>(
        &self,
        manifest: &Manifest,
        name: &str,
        writer: &mut W,
        progress: Option<Progress<'_>>,
    ) -> Result<ObjectInfo>
    where
        W: AsyncWrite + Unpin + Send + ?Sized,
    {
        self.read_manifest_file_checked(manifest, name, writer, progress, Check::Full)
            .await
    }

    /// [`Repository::read_manifest_file`], checking as much as `check`
    /// says ([`Check::Stored`] for a restore's hot path).
    pub async fn read_manifest_file_checked<W>(
        &self,
        manifest: &Manifest,
        name: &str,
        writer: &mut W,
        progress: Option<Progress<'_>>,
        check: Check,
    ) -> Result<ObjectInfo>
    where
        W: AsyncWrite + Unpin + Send + ?Sized,
    {
        let path = layout::snapshot_file(&manifest.id, name)?;
        let info = manifest.files.get(name).ok_or_else(|| Error::NotFound {
            path: path.to_string(),
        })?;
        self.store
            .codec()
            .get_checked(
                self.store.object_store(),
                &path,
                info,
                writer,
                progress,
                check,
            )
            .await?;
        Ok(info.clone())
    }

    /// Re-reads every object of snapshot `id` and checks its digests.
    /// `Err` only when the manifest itself cannot be read or trusted;
    /// per-file problems are collected in the report.
    pub async fn verify_snapshot(&self, id: &SnapshotId) -> Result<VerifyReport> {
        let manifest = self.read_manifest(id).await?;
        let mut report = VerifyReport {
            id: id.clone(),
            files: 0,
            bytes: 0,
            failures: Vec::new(),
        };
        for (name, info) in &manifest.files {
            let mut sink = tokio::io::sink();
            match self
                .read_manifest_file(&manifest, name, &mut sink, None)
                .await
            {
                Ok(_) => {
                    report.files += 1;
                    report.bytes += info.size;
                }
                Err(e) => report.failures.push(e),
            }
        }
        Ok(report)
    }
}

/// The result of [`Repository::verify_snapshot`].
#[derive(Debug)]
pub struct VerifyReport {
    /// The snapshot.
    pub id: SnapshotId,
    /// Files that verified.
    pub files: usize,
    /// Content bytes that verified.
    pub bytes: u64,
    /// One error per file that did not (each names its object).
    pub failures: Vec<Error>,
}

impl VerifyReport {
    /// Whether every file verified.
    pub fn is_ok(&self) -> bool {
        self.failures.is_empty()
    }
}

/// A snapshot being written; see the module docs for the protocol.
/// Dropping it without [`commit`](Self::commit) leaves an incomplete
/// snapshot that is never listed.
#[derive(Debug)]
pub struct SnapshotWriter {
    repo: Repository,
    id: SnapshotId,
    kind: SnapshotKind,
    started: OffsetDateTime,
    files: BTreeMap<String, ObjectInfo>,
}

impl SnapshotWriter {
    /// The snapshot's id.
    pub fn id(&self) -> &SnapshotId {
        &self.id
    }

    /// The files written so far.
    pub fn files(&self) -> &BTreeMap<String, ObjectInfo> {
        &self.files
    }

    /// Streams `reader` into file `name` of the snapshot (see
    /// [`layout::validate_file_name`] for allowed names).
    pub async fn put_file<R>(&mut self, name: &str, reader: R) -> Result<ObjectInfo>
    where
        R: AsyncRead + Unpin + Send,
    {
        self.put_file_with_progress(name, reader, None).await
    }

    /// Like [`SnapshotWriter::put_file`], reporting content bytes read.
    pub async fn put_file_with_progress<R>(
        &mut self,
        name: &str,
        reader: R,
        progress: Option<Progress<'_>>,
    ) -> Result<ObjectInfo>
    where
        R: AsyncRead + Unpin + Send,
    {
        let path: Path = layout::snapshot_file(&self.id, name)?;
        if self.files.contains_key(name) {
            return Err(Error::AlreadyExists {
                path: path.to_string(),
            });
        }
        let store = self.repo.store();
        let info = store
            .codec()
            .put(store.object_store(), &path, reader, progress)
            .await?;
        self.files.insert(name.to_string(), info.clone());
        Ok(info)
    }

    /// Commits the snapshot: writes its manifest, create-if-absent, after
    /// every file. `epoch` is the writer's lease epoch if it holds one.
    pub async fn commit(
        self,
        meta: serde_json::Value,
        epoch: Option<u64>,
        finished: OffsetDateTime,
    ) -> Result<Manifest> {
        let manifest = Manifest {
            version: MANIFEST_VERSION,
            id: self.id,
            kind: self.kind,
            started: self.started,
            finished,
            epoch,
            files: self.files,
            meta,
        };
        let path = layout::manifest(&manifest.id);
        // With a key, authenticated (see `crate::record`): still one
        // object, so the commit stays a single create-if-absent.
        let bytes = manifest.encode(self.repo.write_key(&path)?)?;
        // Through the compare-and-swap primitive: it resolves a re-sent
        // create whose first attempt landed (the bytes are ours).
        self.repo.store.cas().create(&path, bytes.into()).await?;
        Ok(manifest)
    }
}
