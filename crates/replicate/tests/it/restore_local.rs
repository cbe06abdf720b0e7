//! Artifact restores into a `file://` directory written directly
//! (`restore_artifacts_to` with `Endpoint::local`), and inventory ids of
//! backups taken in the same millisecond.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use warmspare_replicate::{
    Endpoint, Error, SyncEvent, backup_artifacts, list_inventories, restore_artifacts_to,
};
use warmspare_testkit::{Fault, Op};

use crate::common::*;

/// The target store counts calls; only the state record may go through
/// it, objects are listed, hashed and written in the directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_into_a_directory_write_it_directly() {
    let (Some(source), Some((repo, _repo_dir)), Some(target)) = (
        store(Kind::Fs, "rl-src").await,
        repository(Kind::Fs, "rl-repo").await,
        store(Kind::Fs, "rl-dst").await,
    ) else {
        return;
    };
    let original = fill(source.raw()).await;
    let wanted = expected_digests(&original);
    let options = options();
    let quiet = |_: &SyncEvent<'_>| {};
    let backup = backup_artifacts(
        &source.store,
        &repo,
        None,
        time::OffsetDateTime::now_utc(),
        &options,
        quiet,
    )
    .await
    .unwrap();
    let id = backup.inventory.id;
    let dir = target.dir().unwrap().to_path_buf();
    // The counting store in front of the directory's `LocalFileSystem`.
    let endpoint = Endpoint::local(Arc::clone(&target.store), &dir);
    assert_eq!(endpoint.local_root(), Some(dir.as_path()));
    // Listings, writes and reads of the state record (`.warmspare/`) are
    // counted by these rules; every other one through the store is one too
    // many: objects are listed, hashed and written in the directory.
    let state_only = |op| Fault::latency(op, Duration::ZERO).prefix(".warmspare/");
    let ops = [Op::List, Op::Put, Op::PutMultipart, Op::Get];
    let rules = ops.map(|op| target.faults.inject(state_only(op)));
    let counted = || {
        let calls: u64 = ops.iter().map(|op| target.faults.calls(*op)).sum();
        let fired: u64 = rules.iter().map(|r| target.faults.fired(*r)).sum();
        calls - fired
    };

    // Into an empty directory: everything written, nothing staged left.
    let report = restore_artifacts_to(&repo, &id, &endpoint, &options, quiet)
        .await
        .unwrap();
    assert!(report.is_success(), "{report:?}");
    assert_eq!((report.copied, report.skipped), (9, 0), "{report:?}");
    assert_eq!(digests(target.raw()).await, wanted);
    assert!(staged_files(&dir).is_empty());
    assert_eq!(
        counted(),
        0,
        "objects go through the directory, not the store"
    );

    // The directory changes: a file is removed, one is rewritten with other
    // bytes of the same size, one is added. Only the two are written back
    // (the rewritten one found by hashing the file), the extra is kept.
    let missing = "core/nginx/1.25.3/20240101.meta";
    let rewritten = "a/x";
    std::fs::remove_file(dir.join(missing)).unwrap();
    let size = original[rewritten].len();
    std::fs::write(dir.join(rewritten), data(91, size)).unwrap();
    std::fs::write(dir.join("extra.hart"), b"extra").unwrap();
    let report = restore_artifacts_to(&repo, &id, &endpoint, &options, quiet)
        .await
        .unwrap();
    assert_eq!(
        (
            report.copied,
            report.skipped,
            report.extra,
            report.deleted,
            report.hashed
        ),
        (2, 7, 1, 0, 1),
        "{report:?}"
    );
    assert_eq!(counted(), 0);
    let mut with_extra = wanted.clone();
    with_extra.insert("extra.hart".into(), sha(b"extra"));
    assert_eq!(digests(target.raw()).await, with_extra);

    // With delete the extra goes (through the store); then nothing is left
    // to do, and nothing is read.
    let delete = options.clone().with_delete(true);
    let report = restore_artifacts_to(&repo, &id, &endpoint, &delete, quiet)
        .await
        .unwrap();
    assert_eq!(
        (report.copied, report.skipped, report.deleted),
        (0, 9, 1),
        "{report:?}"
    );
    assert_eq!(digests(target.raw()).await, wanted);
    let report = restore_artifacts_to(&repo, &id, &endpoint, &delete, quiet)
        .await
        .unwrap();
    assert_eq!(
        (
            report.copied,
            report.skipped,
            report.hashed,
            report.bytes_read
        ),
        (0, 9, 0, 0),
        "{report:?}"
    );
    assert!(staged_files(&dir).is_empty());
    assert_eq!(counted(), 0);
}

/// Backups of an unchanged store taken at the same moment are recorded as
/// as many inventories (the 16 ids of one millisecond), never folded into
/// an existing one with the same content; one more is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_in_one_millisecond_get_their_own_inventories() {
    let (Some(source), Some((repo, _repo_dir))) = (
        store(Kind::Fs, "ids-src").await,
        repository(Kind::Fs, "ids-repo").await,
    ) else {
        return;
    };
    put(source.raw(), "core/a.hart", data(3, 100)).await;
    let options = options();
    let now = time::OffsetDateTime::now_utc();
    let mut ids = BTreeSet::new();
    let mut previous = None;
    for n in 0..16 {
        let backup = backup_artifacts(
            &source.store,
            &repo,
            previous.as_ref(),
            now,
            &options,
            |_: &SyncEvent<'_>| {},
        )
        .await
        .unwrap();
        assert!(
            ids.insert(backup.inventory.id.clone()),
            "backup {n} got inventory {} again",
            backup.inventory.id
        );
        previous = Some(backup.inventory);
    }
    let listed: BTreeSet<_> = list_inventories(&repo).await.unwrap().into_iter().collect();
    assert_eq!(listed, ids);

    let err = backup_artifacts(
        &source.store,
        &repo,
        previous.as_ref(),
        now,
        &options,
        |_: &SyncEvent<'_>| {},
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Repository(warmspare_store::Error::AlreadyExists { .. })
        ),
        "{err:?}"
    );
    assert_eq!(list_inventories(&repo).await.unwrap().len(), 16);
}

/// From an encrypted repository the blobs are decrypted and written
/// through the store, the directory is still listed and hashed directly:
/// the state's tokens agree with the directory walk, so a second restore
/// reads nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_restores_into_a_directory_converge() {
    let (Some(source), Some(target)) = (
        store(Kind::Fs, "rle-src").await,
        store(Kind::Fs, "rle-dst").await,
    ) else {
        return;
    };
    let repo_dir = tempfile::tempdir().unwrap();
    let key = warmspare_store::EncryptionKey::generate();
    let config = warmspare_store::StoreConfig::new(format!("file://{}", repo_dir.path().display()))
        .with_encryption_key(key);
    let repo = warmspare_store::Repository::init(
        warmspare_store::Store::open(&config).unwrap(),
        time::OffsetDateTime::now_utc(),
    )
    .await
    .unwrap();
    let original = fill(source.raw()).await;
    let wanted = expected_digests(&original);
    let options = options();
    let quiet = |_: &SyncEvent<'_>| {};
    let id = backup_artifacts(
        &source.store,
        &repo,
        None,
        time::OffsetDateTime::now_utc(),
        &options,
        quiet,
    )
    .await
    .unwrap()
    .inventory
    .id;
    let dir = target.dir().unwrap().to_path_buf();
    let endpoint = Endpoint::local(Arc::clone(target.raw()), &dir);

    let report = restore_artifacts_to(&repo, &id, &endpoint, &options, quiet)
        .await
        .unwrap();
    assert_eq!((report.copied, report.failed), (9, 0), "{report:?}");
    assert_eq!(digests(target.raw()).await, wanted);

    std::fs::remove_file(dir.join("a.txt")).unwrap();
    std::fs::write(dir.join("a0"), data(92, original["a0"].len())).unwrap();
    let report = restore_artifacts_to(&repo, &id, &endpoint, &options, quiet)
        .await
        .unwrap();
    assert_eq!(
        (report.copied, report.skipped, report.hashed),
        (2, 7, 1),
        "{report:?}"
    );
    assert_eq!(digests(target.raw()).await, wanted);
    let report = restore_artifacts_to(&repo, &id, &endpoint, &options, quiet)
        .await
        .unwrap();
    assert_eq!(
        (
            report.copied,
            report.skipped,
            report.hashed,
            report.bytes_read
        ),
        (0, 9, 0, 0),
        "{report:?}"
    );
}
