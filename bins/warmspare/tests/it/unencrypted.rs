//! WAL objects that are not encrypted, in a repository with a key: what
//! someone who can write to the bucket could plant in place of encrypted
//! WAL. `wal fetch` refuses such a segment with PostgreSQL's fatal exit
//! status and one line naming it, and `wal push` of the same file does not
//! report success for an object that could not be fetched back.

use std::path::Path;

use crate::{Run, error_line, file_url, warmspare};

const KEY: &str = "8f1e2d3c4b5a69788796a5b4c3d2e1f000112233445566778899aabbccddeeff";
const SEGMENT: &str = "000000010000000000000009";
const ENCRYPTED_SEGMENT: &str = "00000001000000000000000A";

/// Writes the configuration: the repository, with the key file or without.
fn configure(dir: &Path, with_key: bool) {
    let mut text = format!("[repository]\nurl = \"{}\"\n", file_url(&dir.join("repo")));
    if with_key {
        text.push_str(&format!(
            "encryption_key_file = \"{}\"\n",
            dir.join("repo.key").display()
        ));
    }
    std::fs::write(dir.join("warmspare.toml"), text).expect("config");
}

async fn run(dir: &Path, cwd: &Path, args: &[&str]) -> Run {
    let config = dir.join("warmspare.toml").display().to_string();
    let mut all = vec!["--config", config.as_str()];
    all.extend_from_slice(args);
    let run = warmspare(cwd, &all, &[]).await;
    run.assert_no_panic();
    assert!(!run.all_output().contains(KEY), "the key was printed");
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_wal_segment_in_a_repository_with_a_key_is_fatal() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    std::fs::write(dir.join("repo.key"), format!("{KEY}\n")).expect("key file");
    let work = dir.join("work");
    let data = dir.join("data");
    std::fs::create_dir_all(data.join("pg_wal")).expect("data dir");
    std::fs::create_dir(&work).expect("work dir");
    let segment = work.join(SEGMENT);
    std::fs::write(&segment, vec![9u8; 1 << 20]).expect("segment");
    let segment_arg = segment.display().to_string();

    // Pushed without a key: what a repository holds from before encryption
    // was turned on, or what anyone who can write to the bucket can put
    // there.
    configure(dir, false);
    let pushed = run(dir, dir, &["wal", "push", &segment_arg]).await;
    assert_eq!(pushed.code, 0, "{}", pushed.stderr);

    // With the key: fetching it is fatal (above 125), for a recovery and a
    // standby alike, named, and nothing is written to the destination.
    configure(dir, true);
    let object = format!("wal/00000001/{SEGMENT}.zst");
    for standby in [false, true] {
        if standby {
            std::fs::write(data.join("standby.signal"), b"").expect("standby.signal");
        }
        let fetched = run(
            dir,
            &data,
            &["wal", "fetch", SEGMENT, "pg_wal/RECOVERYXLOG"],
        )
        .await;
        assert_eq!(fetched.code, 255, "{fetched:#?}");
        let line = error_line(&fetched);
        assert!(
            line.contains(&object)
                && line.contains("not encrypted")
                && line.contains("allow_unencrypted = true"),
            "{line}"
        );
        assert!(!data.join("pg_wal/RECOVERYXLOG").exists());
    }

    // Re-pushing the same file does not claim success for an object that
    // cannot be fetched back: exit 1 (PostgreSQL keeps the file and
    // retries), naming it.
    let repushed = run(dir, dir, &["wal", "push", &segment_arg]).await;
    assert_eq!(repushed.code, 1, "{repushed:#?}");
    let line = error_line(&repushed);
    assert!(
        line.contains(&object) && line.contains("allow_unencrypted"),
        "{line}"
    );

    // A segment pushed with the key is encrypted and fetched.
    let encrypted = work.join(ENCRYPTED_SEGMENT);
    std::fs::write(&encrypted, vec![10u8; 1 << 20]).expect("segment");
    let pushed = run(dir, dir, &["wal", "push", &encrypted.display().to_string()]).await;
    assert_eq!(pushed.code, 0, "{}", pushed.stderr);
    let stored = |name: &str| {
        std::fs::read(dir.join("repo").join(format!("wal/00000001/{name}.zst")))
            .expect("stored object")
    };
    let encryption_header = |bytes: &[u8]| bytes.windows(6).any(|w| w == b"WSENC\0");
    assert!(
        encryption_header(&stored(ENCRYPTED_SEGMENT)),
        "stored encrypted"
    );
    assert!(
        !encryption_header(&stored(SEGMENT)),
        "the planted one is not"
    );
    let fetched = run(
        dir,
        &data,
        &["wal", "fetch", ENCRYPTED_SEGMENT, "pg_wal/RECOVERYXLOG"],
    )
    .await;
    assert_eq!(fetched.code, 0, "{fetched:#?}");
    assert_eq!(
        std::fs::read(data.join("pg_wal/RECOVERYXLOG")).expect("fetched"),
        vec![10u8; 1 << 20]
    );

    // The operator's opt-in for a repository that held WAL before
    // encryption was turned on: the plaintext segment is read again, and
    // re-pushing the same file succeeds.
    let config = dir.join("warmspare.toml");
    let mut text = std::fs::read_to_string(&config).expect("config");
    text.push_str("allow_unencrypted = true\n");
    std::fs::write(&config, text).expect("config");
    std::fs::remove_file(data.join("pg_wal/RECOVERYXLOG")).expect("remove");
    let fetched = run(
        dir,
        &data,
        &["wal", "fetch", SEGMENT, "pg_wal/RECOVERYXLOG"],
    )
    .await;
    assert_eq!(fetched.code, 0, "{fetched:#?}");
    assert_eq!(
        std::fs::read(data.join("pg_wal/RECOVERYXLOG")).expect("fetched"),
        std::fs::read(&segment_arg).expect("the planted segment's file")
    );
    let repushed = run(dir, dir, &["wal", "push", &segment_arg]).await;
    assert_eq!(repushed.code, 0, "{repushed:#?}");
}
