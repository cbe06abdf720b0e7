//! Authenticated manifests in a repository with a key: a manifest edited,
//! moved to another snapshot id, written without the key or read with
//! another key is refused with an error naming it; without a key the
//! repository still lists and reads manifests.

use bytes::Bytes;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::macros::datetime;
use warmspare_store::object_store::ObjectStoreExt;
use warmspare_store::object_store::path::Path;
use warmspare_store::{
    Authenticity, Encryption, EncryptionKey, Error, Manifest, MissingMac, Repository, SnapshotId,
    SnapshotKind, Store, layout,
};

use crate::backend::Backend;
use crate::data::PatternReader;

crate::conformance!(
    auth_manifest_round_trip,
    auth_altered_manifest_is_refused,
    auth_manifest_moved_to_another_id_is_refused,
    auth_wrong_key_is_refused,
    auth_no_key_still_lists,
    auth_manifest_without_mac_is_refused,
    auth_records_of_other_crates,
);

const T0: OffsetDateTime = datetime!(2026-11-22 10:15:00 UTC);

fn keyed(store: &Store, key: &EncryptionKey) -> Store {
    store.clone().with_codec(
        store
            .codec()
            .clone()
            .with_encryption(Encryption::Key(key.clone())),
    )
}

/// A repository with a key, and one committed snapshot of two files.
async fn setup(b: &Backend, key: &EncryptionKey, at: OffsetDateTime) -> (Repository, Manifest) {
    let repo = Repository::init(keyed(&b.store, key), T0).await.unwrap();
    let mut w = repo
        .begin_snapshot(SnapshotKind::Logical, at)
        .await
        .unwrap();
    w.put_file("dump", PatternReader::new(1, 20_000))
        .await
        .unwrap();
    w.put_file("globals.sql", &b"CREATE ROLE builder;"[..])
        .await
        .unwrap();
    let m = w
        .commit(
            serde_json::json!({"database": "builder", "rows": 42}),
            Some(3),
            at,
        )
        .await
        .unwrap();
    (repo, m)
}

async fn raw(b: &Backend, path: &Path) -> String {
    let bytes = b.store.object_store().get(path).await.unwrap();
    String::from_utf8(bytes.bytes().await.unwrap().to_vec()).unwrap()
}

async fn put_raw(b: &Backend, path: &Path, text: String) {
    b.store
        .object_store()
        .put(path, Bytes::from(text).into())
        .await
        .unwrap();
}

/// What an attacker without the key can do: change the `manifest` value
/// and recompute the envelope's SHA-256, keeping the MAC.
fn forge(envelope: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let (head, body) = envelope.split_once(",\"manifest\":").unwrap();
    let body = body.trim_end().strip_suffix('}').unwrap();
    let mut value: serde_json::Value = serde_json::from_str(body).unwrap();
    edit(&mut value);
    let body = serde_json::to_string(&value).unwrap();
    let digest = hex::encode(Sha256::digest(body.as_bytes()));
    let (mac, _) = head.rsplit_once(",\"sha256\":").unwrap();
    format!("{mac},\"sha256\":\"{digest}\",\"manifest\":{body}}}\n")
}

fn assert_refused(result: Result<Manifest, Error>, path: &Path) {
    match result {
        Err(Error::Unauthenticated { path: p, .. }) if p == path.as_ref() => {}
        other => panic!("expected {path} to be refused as not authenticated, got {other:?}"),
    }
}

async fn auth_manifest_round_trip(b: &Backend) {
    let key = EncryptionKey::generate();
    let (repo, m) = setup(b, &key, T0).await;
    let path = layout::manifest(&m.id);
    let text = raw(b, &path).await;
    assert!(
        text.starts_with(&format!(
            "{{\"version\":2,\"mac\":\"hmac-sha256:{}:",
            key.id()
        )),
        "{text}"
    );
    assert!(!text.contains(key.to_hex().as_str()));

    assert_eq!(repo.list_snapshots().await.unwrap(), vec![m.id.clone()]);
    assert_eq!(repo.read_manifest(&m.id).await.unwrap(), m);
    let (read, auth) = repo
        .read_manifest_checked(&m.id, MissingMac::Refuse)
        .await
        .unwrap();
    assert_eq!(read, m);
    assert_eq!(auth, Authenticity::Authenticated { key_id: key.id() });
    let report = repo.verify_snapshot(&m.id).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.files, 2);
    // A fresh handle on the same store (another process) agrees.
    let again = Repository::open(keyed(&b.store, &key)).await.unwrap();
    assert_eq!(again.read_manifest(&m.id).await.unwrap(), m);
}

async fn auth_altered_manifest_is_refused(b: &Backend) {
    let key = EncryptionKey::generate();
    let (repo, m) = setup(b, &key, T0).await;
    let (_, other) = setup(b, &key, T0 + time::Duration::minutes(1)).await;
    let path = layout::manifest(&m.id);
    let original = raw(b, &path).await;

    // One flipped byte in the manifest JSON: "rows":42 -> "rows":43.
    let flipped = original.replacen("\"rows\":42", "\"rows\":43", 1);
    assert_ne!(flipped, original);
    put_raw(b, &path, flipped).await;
    assert_refused(repo.read_manifest(&m.id).await, &path);

    // Edits with the digest recomputed (what someone without the key can
    // do): the epoch, a size, and digests re-pointed to another snapshot's
    // objects. Each one refused; verify refuses before reading any data.
    let other_dump = serde_json::to_value(&other.files["dump"]).unwrap();
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let edits: [Edit; 3] = [
        Box::new(|v| v["epoch"] = 9.into()),
        Box::new(|v| v["files"]["globals.sql"]["size"] = 1.into()),
        Box::new(move |v| v["files"]["dump"] = other_dump.clone()),
    ];
    for edit in edits {
        let forged = forge(&original, edit);
        // Without a key the forgery passes the digest check: only the MAC
        // catches it.
        Manifest::from_bytes(path.as_ref(), forged.as_bytes()).unwrap();
        put_raw(b, &path, forged).await;
        assert_refused(repo.read_manifest(&m.id).await, &path);
        let err = repo.verify_snapshot(&m.id).await.unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("{path} is not authenticated by this key")),
            "{err}"
        );
    }

    // The original bytes put back: accepted again.
    put_raw(b, &path, original).await;
    assert_eq!(repo.read_manifest(&m.id).await.unwrap(), m);
}

async fn auth_manifest_moved_to_another_id_is_refused(b: &Backend) {
    let key = EncryptionKey::generate();
    let (repo, m) = setup(b, &key, T0).await;
    let (_, victim) = setup(b, &key, T0 + time::Duration::hours(1)).await;
    let original = raw(b, &layout::manifest(&m.id)).await;

    // Copied as is over another snapshot's manifest.
    let target = layout::manifest(&victim.id);
    put_raw(b, &target, original.clone()).await;
    assert_refused(repo.read_manifest(&victim.id).await, &target);
    // With its id rewritten to match, digest recomputed.
    let victim_id = victim.id.to_string();
    put_raw(b, &target, forge(&original, |v| v["id"] = victim_id.into())).await;
    assert_refused(repo.read_manifest(&victim.id).await, &target);

    // Copied to a fresh id: the new snapshot would be listed (listing
    // looks only for the object) but its manifest is refused.
    let fresh = SnapshotId::new(T0 + time::Duration::hours(2));
    let fresh_path = layout::manifest(&fresh);
    let fresh_id = fresh.to_string();
    put_raw(
        b,
        &fresh_path,
        forge(&original, |v| v["id"] = fresh_id.into()),
    )
    .await;
    assert!(repo.list_snapshots().await.unwrap().contains(&fresh));
    assert_refused(repo.read_manifest(&fresh).await, &fresh_path);
    // The original is untouched.
    assert_eq!(repo.read_manifest(&m.id).await.unwrap(), m);
}

async fn auth_wrong_key_is_refused(b: &Backend) {
    let key = EncryptionKey::generate();
    let (_, m) = setup(b, &key, T0).await;
    let wrong = EncryptionKey::generate();
    let repo = Repository::open(keyed(&b.store, &wrong)).await.unwrap();
    let path = layout::manifest(&m.id);
    assert_eq!(repo.list_snapshots().await.unwrap(), vec![m.id.clone()]);
    let err = repo.read_manifest(&m.id).await.unwrap_err();
    match &err {
        Error::Unauthenticated {
            path: p, reason, ..
        } => {
            assert_eq!(p, path.as_ref());
            assert!(
                reason.contains(&key.id()) && reason.contains(&wrong.id()),
                "{reason}"
            );
        }
        other => panic!("expected a refusal naming both key ids, got {other:?}"),
    }
    assert!(repo.verify_snapshot(&m.id).await.is_err());
    assert!(
        repo.read_file(&m.id, "globals.sql", &mut Vec::new())
            .await
            .is_err()
    );
    // Accepting manifests without a MAC does not accept a wrong one.
    assert!(
        repo.read_manifest_checked(&m.id, MissingMac::Accept)
            .await
            .is_err()
    );
}

async fn auth_no_key_still_lists(b: &Backend) {
    let key = EncryptionKey::generate();
    let (_, m) = setup(b, &key, T0).await;
    let plain = Repository::open(b.store.clone()).await.unwrap();
    assert!(!plain.store().encryption_enabled());
    assert_eq!(plain.list_snapshots().await.unwrap(), vec![m.id.clone()]);
    assert_eq!(plain.read_manifest(&m.id).await.unwrap(), m);
    let (_, auth) = plain
        .read_manifest_checked(&m.id, MissingMac::Refuse)
        .await
        .unwrap();
    assert_eq!(auth, Authenticity::Unchecked { key_id: key.id() });
    assert!(!auth.is_authenticated());
    // The data stays unreadable without the key.
    let err = plain
        .read_file(&m.id, "globals.sql", &mut Vec::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::KeyMissing { .. }), "{err:?}");
    // Damage is still detected without the key (the digest).
    let path = layout::manifest(&m.id);
    let text = raw(b, &path)
        .await
        .replacen("\"rows\":42", "\"rows\":43", 1);
    put_raw(b, &path, text).await;
    let err = plain.read_manifest(&m.id).await.unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err:?}");
}

async fn auth_manifest_without_mac_is_refused(b: &Backend) {
    let key = EncryptionKey::generate();
    let (repo, m) = setup(b, &key, T0).await;
    // Replaced by a manifest without a MAC (as written without the key,
    // or by a build before authenticated manifests).
    let path = layout::manifest(&m.id);
    let mut edited = m.clone();
    edited.epoch = Some(99);
    put_raw(
        b,
        &path,
        String::from_utf8(edited.to_bytes().unwrap()).unwrap(),
    )
    .await;
    assert_refused(repo.read_manifest(&m.id).await, &path);
    let err = repo.read_manifest(&m.id).await.unwrap_err();
    assert!(err.to_string().contains("no MAC"), "{err}");
    // A caller may ask for it, and is told it is not authenticated.
    let (read, auth) = repo
        .read_manifest_checked(&m.id, MissingMac::Accept)
        .await
        .unwrap();
    assert_eq!(read.epoch, Some(99));
    assert_eq!(auth, Authenticity::NoMac);
    // So does a repository that allows what was written before the key
    // (`allow_unencrypted`): every reader then takes it.
    let allowing = Repository::open(
        b.store.clone().with_codec(
            keyed(&b.store, &key)
                .codec()
                .clone()
                .with_allow_unencrypted(true),
        ),
    )
    .await
    .unwrap();
    assert_eq!(allowing.missing_mac(), MissingMac::Accept);
    assert_eq!(repo.missing_mac(), MissingMac::Refuse);
    assert_eq!(allowing.read_manifest(&m.id).await.unwrap().epoch, Some(99));

    // A writer whose configured key was not loaded refuses to commit
    // rather than write a manifest without a MAC (even of no files).
    let unloaded = b
        .store
        .clone()
        .with_codec(
            b.store
                .codec()
                .clone()
                .with_encryption(Encryption::KeyNotLoaded {
                    source: "/etc/warmspare/repo.key".into(),
                }),
        );
    let repo = Repository::open(unloaded).await.unwrap();
    let w = repo
        .begin_snapshot(SnapshotKind::Logical, T0 + time::Duration::hours(3))
        .await
        .unwrap();
    let id = w.id().clone();
    let err = w
        .commit(serde_json::Value::Null, None, T0)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::KeyNotLoaded { .. }), "{err:?}");
    assert!(!repo.list_snapshots().await.unwrap().contains(&id));
}

async fn auth_records_of_other_crates(b: &Backend) {
    let key = EncryptionKey::generate();
    let repo = Repository::init(keyed(&b.store, &key), T0).await.unwrap();
    let path = layout::point(&SnapshotId::new(T0));
    let body = br#"{"version":1,"snapshot":"20261122T101500Z-3f9a"}"#;
    let bytes = repo.seal_record("point", &path, body).unwrap();
    b.store
        .cas()
        .create(&path, Bytes::from(bytes.clone()))
        .await
        .unwrap();
    let stored = raw(b, &path).await;
    let (read, auth) = repo
        .open_record("point", &path, stored.as_bytes(), MissingMac::Refuse)
        .unwrap();
    assert_eq!(read, body);
    assert!(auth.is_authenticated());
    // Moved to another point's name: refused.
    let other = layout::point(&SnapshotId::new(T0 + time::Duration::seconds(1)));
    let err = repo
        .open_record("point", &other, stored.as_bytes(), MissingMac::Refuse)
        .unwrap_err();
    assert!(matches!(err, Error::Unauthenticated { .. }), "{err:?}");
    // Without a key: readable, unchecked; and a key-less repository writes
    // the earlier encoding, which a keyed reader refuses.
    let plain = Repository::open(b.store.clone()).await.unwrap();
    let (_, auth) = plain
        .open_record("point", &path, stored.as_bytes(), MissingMac::Refuse)
        .unwrap();
    assert_eq!(auth, Authenticity::Unchecked { key_id: key.id() });
    let unsealed = plain.seal_record("point", &path, body).unwrap();
    assert!(unsealed.starts_with(b"{\"sha256\":\""));
    let err = repo
        .open_record("point", &path, &unsealed, MissingMac::Refuse)
        .unwrap_err();
    assert!(matches!(err, Error::Unauthenticated { .. }), "{err:?}");
}
