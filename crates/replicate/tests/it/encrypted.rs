//! Artifact backups into an encrypted repository: blobs and inventories
//! sealed under the repository key, content addressing and deduplication
//! intact, restores that decrypt, and clear errors for a wrong or missing
//! key.

use std::collections::BTreeMap;

use futures::TryStreamExt;
use tokio::io::AsyncReadExt;
use warmspare_replicate::object_store::ObjectStoreExt;
use warmspare_replicate::object_store::path::Path;
use warmspare_replicate::{
    Error, SyncEvent, backup_artifacts, previous_inventory, restore_artifacts,
};
use warmspare_store::crypto::{EncryptReader, header_key_id};
use warmspare_store::{Encryption, EncryptionKey, Repository, Store, StoreConfig, layout};
use warmspare_testkit::{Op, S3Server};

use crate::common::*;

/// A repository of `kind` opened with `encryption`, and a way to open the
/// same location again with another setting.
struct Repo {
    config: StoreConfig,
    repo: Repository,
    _dir: Option<tempfile::TempDir>,
}

impl Repo {
    async fn new(kind: Kind, name: &str, key: Option<&EncryptionKey>) -> Option<Repo> {
        let (config, dir) = match kind {
            Kind::Fs => {
                let dir = tempfile::tempdir().unwrap();
                (
                    StoreConfig::new(format!("file://{}", dir.path().display())),
                    Some(dir),
                )
            }
            Kind::S3 => {
                let server = S3Server::try_shared().await.unwrap()?;
                let bucket = server.unique_bucket(name).await.unwrap();
                let config = StoreConfig::new(format!("s3://{bucket}/repo"))
                    .with_endpoint(server.endpoint())
                    .with_allow_http(true)
                    .with_region(server.region())
                    .with_credentials(server.access_key_id(), server.secret_access_key());
                (config, None)
            }
        };
        let config = match key {
            Some(key) => config.with_encryption_key(key.clone()),
            None => config,
        };
        let store = Store::open(&config).unwrap();
        let repo = Repository::init(store, time::OffsetDateTime::now_utc())
            .await
            .unwrap();
        Some(Repo {
            config,
            repo,
            _dir: dir,
        })
    }

    /// The same repository, opened with `encryption`.
    async fn with(&self, encryption: Encryption) -> Repository {
        let mut config = self.config.clone();
        config.encryption = encryption;
        Repository::open(Store::open(&config).unwrap())
            .await
            .unwrap()
    }

    /// The same repository, opened with `encryption` and reading the
    /// unencrypted inventories of before encryption was turned on.
    async fn allowing_unencrypted(&self, encryption: Encryption) -> Repository {
        let mut config = self.config.clone().with_allow_unencrypted(true);
        config.encryption = encryption;
        Repository::open(Store::open(&config).unwrap())
            .await
            .unwrap()
    }

    /// Every stored object under `prefix`: path -> bytes as stored.
    async fn stored(&self, prefix: &str) -> BTreeMap<String, Vec<u8>> {
        let store = self.repo.store().object_store();
        let metas: Vec<_> = store
            .list(Some(&Path::from(prefix)))
            .try_collect()
            .await
            .unwrap();
        let mut out = BTreeMap::new();
        for meta in metas {
            let bytes = store.get(&meta.location).await.unwrap().bytes().await;
            out.insert(meta.location.to_string(), bytes.unwrap().to_vec());
        }
        out
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_backup_and_restore_on_a_filesystem_repository() {
    encrypted_roundtrip(Kind::Fs, Kind::Fs, "enc-fs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_backup_and_restore_on_an_s3_repository() {
    encrypted_roundtrip(Kind::S3, Kind::S3, "enc-s3").await;
}

async fn encrypted_roundtrip(repo_kind: Kind, to: Kind, name: &str) {
    let key = EncryptionKey::generate();
    let (Some(source), Some(repo)) = (
        store(Kind::Fs, name).await,
        Repo::new(repo_kind, name, Some(&key)).await,
    ) else {
        return;
    };
    let mut original = fill(source.raw()).await;
    // Two keys with the same bytes: one blob.
    put(source.raw(), "copy/of/a.txt", original["a.txt"].clone()).await;
    original.insert("copy/of/a.txt".into(), original["a.txt"].clone());
    // A recognisable text, to look for in the stored bytes.
    let secret = b"TOP SECRET ARTIFACT CONTENT ".repeat(2000);
    put(source.raw(), "secret.hart", secret.clone()).await;
    original.insert("secret.hart".into(), secret.clone());
    let options = options();
    let now = time::OffsetDateTime::now_utc();
    let quiet = |_: &SyncEvent<'_>| {};

    let first = backup_artifacts(&source.store, &repo.repo, None, now, &options, quiet)
        .await
        .unwrap();
    assert_eq!(first.inventory.entries.len(), original.len());
    assert_eq!((first.stored, first.deduplicated), (10, 1), "{first:?}");

    // Every blob is named by the SHA-256 of its plaintext and sealed under
    // the key; no plaintext survives in any stored object.
    let blobs = repo.stored("blobs").await;
    assert_eq!(blobs.len(), 10);
    for (path, stored) in &blobs {
        assert_eq!(header_key_id(stored), Some(key.id()), "{path}");
        let digest = path.rsplit('/').next().unwrap();
        assert!(
            original.values().any(|v| sha(v) == digest),
            "{path} is named by a plaintext digest"
        );
        assert_ne!(sha(stored), digest, "{path} is not stored in plaintext");
    }
    let everything = repo.stored("").await;
    for (path, stored) in &everything {
        assert!(!contains(stored, b"TOP SECRET"), "{path} holds plaintext");
        assert!(
            !contains(stored, b"core-openssl"),
            "{path} names an artifact"
        );
        let big = &original["big/object.bin"];
        assert!(
            !contains(stored, &big[1 << 20..(1 << 20) + 64]),
            "{path} holds plaintext of the multipart object"
        );
    }

    // Nothing changed: nothing is read, nothing written.
    source.faults.reset_calls();
    let second = backup_artifacts(
        &source.store,
        &repo.repo,
        Some(&first.inventory),
        now,
        &options,
        quiet,
    )
    .await
    .unwrap();
    assert_eq!((second.unchanged, second.stored), (11, 0), "{second:?}");
    assert_eq!(source.faults.calls(Op::Get), 0);

    // Content seen before is deduplicated: a new key with old bytes.
    put(source.raw(), "again/secret.hart", secret.clone()).await;
    let third = backup_artifacts(
        &source.store,
        &repo.repo,
        Some(&second.inventory),
        now,
        &options,
        quiet,
    )
    .await
    .unwrap();
    assert_eq!(
        (third.stored, third.deduplicated, third.unchanged),
        (0, 1, 11),
        "{third:?}"
    );
    assert_eq!(repo.stored("blobs").await.len(), 10);

    // Restore into an empty store, then into a copy where only what
    // differs is written.
    let Some(target) = store(to, name).await else {
        return;
    };
    let report = restore_artifacts(
        &repo.repo,
        &first.inventory.id,
        &target.store,
        &options,
        quiet,
    )
    .await
    .unwrap();
    assert!(report.is_success(), "{report:?}");
    assert_eq!(report.copied, original.len() as u64);
    assert_eq!(digests(target.raw()).await, expected_digests(&original));
    delete(target.raw(), "secret.hart").await;
    let report = restore_artifacts(
        &repo.repo,
        &first.inventory.id,
        &target.store,
        &options,
        quiet,
    )
    .await
    .unwrap();
    assert_eq!((report.copied, report.skipped), (1, 10), "{report:?}");
    assert_eq!(digests(target.raw()).await, expected_digests(&original));

    // Without the key, or with another, the inventory cannot be read:
    // a clear error naming it, and nothing written.
    let Some(fresh) = store(to, name).await else {
        return;
    };
    let inventory_path = layout::inventory(&first.inventory.id).to_string();
    let no_key = repo.with(Encryption::Off).await;
    let err = restore_artifacts(&no_key, &first.inventory.id, &fresh.store, &options, quiet)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Repository(warmspare_store::Error::KeyMissing { path, key_id })
                if *path == inventory_path && *key_id == key.id()
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("encryption_key_file"), "{err}");
    let other = EncryptionKey::generate();
    let wrong = repo.with(Encryption::Key(other.clone())).await;
    let err = restore_artifacts(&wrong, &first.inventory.id, &fresh.store, &options, quiet)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("wrong key: object {inventory_path}")),
        "{err}"
    );
    assert!(err.to_string().contains(&other.id()), "{err}");
    assert!(digests(fresh.raw()).await.is_empty(), "nothing was written");
    // A backup with another key is refused at the previous inventory.
    let err = warmspare_replicate::previous_inventory(&wrong, None, 8)
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("wrong key"), "{err}");

    // A damaged encrypted blob fails authentication; nothing lands for it.
    let victim = layout::blob(&sha(&original["core/nginx/1.25.3/20240101.meta"])).unwrap();
    let mut bytes = blobs[victim.as_ref()].clone();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    repo.repo
        .store()
        .object_store()
        .put(&victim, bytes.into())
        .await
        .unwrap();
    let report = restore_artifacts(
        &repo.repo,
        &first.inventory.id,
        &fresh.store,
        &options.clone().with_retries(0),
        quiet,
    )
    .await
    .unwrap();
    assert_eq!(
        (report.failed, report.copied),
        (1, original.len() as u64 - 1),
        "{report:?}"
    );
    assert!(
        matches!(
            &report.errors[0],
            Error::Repository(warmspare_store::Error::Authentication { path, .. })
                if *path == victim.to_string()
        ),
        "{:?}",
        report.errors[0]
    );
    assert!(
        !digests(fresh.raw())
            .await
            .contains_key("core/nginx/1.25.3/20240101.meta")
    );
}

/// Encryption turned on in a repository that has plaintext blobs: old
/// (plaintext) inventories are refused unless the repository allows them,
/// then restore; reused content is re-encrypted, and a plaintext blob that
/// begins like an encryption header is still read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encryption_turned_on_later() {
    let (Some(source), Some(repo)) = (
        store(Kind::Fs, "enc-later").await,
        Repo::new(Kind::Fs, "enc-later", None).await,
    ) else {
        return;
    };
    let key = EncryptionKey::generate();
    // An artifact that begins with a valid encryption header of `key`.
    let mut lookalike = Vec::new();
    EncryptReader::new(&key, &b"some other content"[..])
        .read_to_end(&mut lookalike)
        .await
        .unwrap();
    lookalike.extend_from_slice(b"...and then plain bytes");
    put(source.raw(), "lookalike.bin", lookalike.clone()).await;
    put(source.raw(), "plain.bin", data(1, 5000)).await;
    let options = options();
    let now = time::OffsetDateTime::now_utc();
    let quiet = |_: &SyncEvent<'_>| {};
    let old = backup_artifacts(&source.store, &repo.repo, None, now, &options, quiet)
        .await
        .unwrap();
    let plain_blob = layout::blob(&sha(&data(1, 5000))).unwrap();
    assert_eq!(
        repo.stored("blobs").await[plain_blob.as_ref()],
        data(1, 5000),
        "stored as is without a key"
    );

    // Encryption on: the same content under a new key is rewritten sealed.
    let encrypted = repo.with(Encryption::Key(key.clone())).await;
    // The plaintext inventory is no basis for the next backup with the key
    // (it could have been planted): passed over, not an error.
    assert!(
        previous_inventory(&repo.repo, None, 10)
            .await
            .unwrap()
            .is_some(),
        "found without a key"
    );
    assert!(
        previous_inventory(&encrypted, None, 10)
            .await
            .unwrap()
            .is_none(),
        "passed over with the key"
    );
    put(source.raw(), "moved/plain.bin", data(1, 5000)).await;
    let new = backup_artifacts(
        &source.store,
        &encrypted,
        Some(&old.inventory),
        now,
        &options,
        quiet,
    )
    .await
    .unwrap();
    assert_eq!((new.stored, new.unchanged), (1, 2), "{new:?}");
    assert_eq!(
        header_key_id(&repo.stored("blobs").await[plain_blob.as_ref()]),
        Some(key.id())
    );

    // With the key alone, the old inventory (not encrypted: anyone who can
    // write to the bucket could have put it there) is refused, naming it;
    // nothing is restored.
    let Some(target) = store(Kind::Fs, "enc-later").await else {
        return;
    };
    let err = restore_artifacts(
        &encrypted,
        &old.inventory.id,
        &target.store,
        &options,
        quiet,
    )
    .await
    .unwrap_err();
    let old_path = layout::inventory(&old.inventory.id);
    assert!(
        matches!(
            &err,
            Error::Repository(warmspare_store::Error::Unencrypted { path }) if path == old_path.as_ref()
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("allow_unencrypted = true"),
        "{err}"
    );
    assert!(digests(target.raw()).await.is_empty(), "nothing restored");

    // With `allow_unencrypted`, both inventories restore with the key: the
    // sealed blob is decrypted, the look-alike plaintext blob is read as
    // plaintext.
    let allowing = repo
        .allowing_unencrypted(Encryption::Key(key.clone()))
        .await;
    for id in [&old.inventory.id, &new.inventory.id] {
        let Some(target) = store(Kind::Fs, "enc-later").await else {
            return;
        };
        let report = restore_artifacts(&allowing, id, &target.store, &options, quiet)
            .await
            .unwrap();
        assert!(report.is_success(), "{report:?}");
        let got = digests(target.raw()).await;
        assert_eq!(got["lookalike.bin"], sha(&lookalike));
        assert_eq!(got["plain.bin"], sha(&data(1, 5000)));
    }

    // Without the key, the old (plaintext) inventory names a blob that is
    // now sealed: the error says the key is missing.
    let plain = repo.with(Encryption::Off).await;
    let Some(target) = store(Kind::Fs, "enc-later").await else {
        return;
    };
    let report = restore_artifacts(
        &plain,
        &old.inventory.id,
        &target.store,
        &options.clone().with_retries(0),
        quiet,
    )
    .await
    .unwrap();
    assert_eq!(report.failed, 1, "{report:?}");
    assert!(
        matches!(
            &report.errors[0],
            Error::Repository(warmspare_store::Error::KeyMissing { key_id, .. }) if *key_id == key.id()
        ),
        "{:?}",
        report.errors[0]
    );
}

/// Encryption configured but its key not loaded: refused before anything
/// is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_key_that_was_not_loaded_refuses_the_backup() {
    let (Some(source), Some(repo)) = (
        store(Kind::Fs, "enc-unloaded").await,
        Repo::new(Kind::Fs, "enc-unloaded", None).await,
    ) else {
        return;
    };
    fill(source.raw()).await;
    let unloaded = repo
        .with(Encryption::KeyNotLoaded {
            source: "/etc/warmspare/repo.key".into(),
        })
        .await;
    let err = backup_artifacts(
        &source.store,
        &unloaded,
        None,
        time::OffsetDateTime::now_utc(),
        &options(),
        |_: &SyncEvent<'_>| {},
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Repository(warmspare_store::Error::KeyNotLoaded { .. })
        ),
        "{err:?}"
    );
    assert!(repo.stored("blobs").await.is_empty());
    assert!(repo.stored("inventories").await.is_empty());
}

/// A byte flipped while a large object is encrypted into the repository:
/// the upload is abandoned (no corrupt blob lands), the retry stores it
/// right; likewise a byte flipped while a sealed blob is read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_during_encrypted_copies_never_land() {
    let key = EncryptionKey::generate();
    let (Some(source), Some(repo)) = (
        store(Kind::Fs, "enc-faults").await,
        Repo::new(Kind::Fs, "enc-faults", Some(&key)).await,
    ) else {
        return;
    };
    let big = data(9, 11 * 1024 * 1024 + 3);
    put(source.raw(), "big.bin", big.clone()).await;
    // The first read hashes; the second, which encrypts, gets a flipped
    // byte; the third (the retry) is clean.
    let flip = source.faults.inject(
        warmspare_testkit::Fault::flip_byte(Op::Get, 3 * 1024 * 1024)
            .prefix("big.bin")
            .skip(1)
            .once(),
    );
    let quiet = |_: &SyncEvent<'_>| {};
    let backup = backup_artifacts(
        &source.store,
        &repo.repo,
        None,
        time::OffsetDateTime::now_utc(),
        &options(),
        quiet,
    )
    .await
    .unwrap();
    assert_eq!(source.faults.fired(flip), 1);
    assert_eq!((backup.stored, backup.retries), (1, 1), "{backup:?}");

    // Read back through a repository whose store flips a byte once.
    let faults =
        warmspare_testkit::FaultStore::new(std::sync::Arc::clone(repo.repo.store().object_store()));
    let flaky = Repository::open(
        Store::from_parts(
            "flaky",
            std::sync::Arc::new(faults.clone()),
            std::sync::Arc::clone(repo.repo.store().cas()),
        )
        .with_codec(repo.repo.store().codec().clone()),
    )
    .await
    .unwrap();
    let flip = faults.inject(
        warmspare_testkit::Fault::flip_byte(Op::Get, 5 * 1024 * 1024)
            .prefix("blobs/")
            .once(),
    );
    let Some(target) = store(Kind::Fs, "enc-faults").await else {
        return;
    };
    let report = restore_artifacts(
        &flaky,
        &backup.inventory.id,
        &target.store,
        &options().with_retries(0),
        quiet,
    )
    .await
    .unwrap();
    assert_eq!(faults.fired(flip), 1);
    assert_eq!(report.failed, 1, "{report:?}");
    assert!(
        matches!(
            report.errors[0],
            Error::Repository(warmspare_store::Error::Authentication { .. })
        ),
        "{:?}",
        report.errors[0]
    );
    assert!(digests(target.raw()).await.is_empty(), "nothing landed");
    // Clean reads restore it.
    let report = restore_artifacts(
        &flaky,
        &backup.inventory.id,
        &target.store,
        &options(),
        quiet,
    )
    .await
    .unwrap();
    assert!(report.is_success(), "{report:?}");
    assert_eq!(digests(target.raw()).await["big.bin"], sha(&big));
}
