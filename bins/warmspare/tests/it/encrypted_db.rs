//! Database backups in an encrypted repository, end to end with real
//! clusters: `backup db` and `backup`, `restore db` into another cluster
//! with the key; with another key, `restore db` and `verify` stop at the
//! manifest or the recovery point (exit 2, one line naming it) and the
//! target database is left as it was; a manifest edited or moved behind
//! the key's back is refused (exit 1, naming it).

use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};
use warmspare_testkit::PostgresCluster;

use crate::{Run, error_line, file_url, warmspare};

const KEY: &str = "8f1e2d3c4b5a69788796a5b4c3d2e1f000112233445566778899aabbccddeeff";
const OTHER_KEY: &str = "0f0e0d0c0b0a09080706050403020100f0e0d0c0b0a090807060504030201000";

const FIXTURE: &str = "
CREATE TABLE orders (id int PRIMARY KEY, customer text, total numeric(10,2));
INSERT INTO orders SELECT g, 'customer ' || g, g * 2.5 FROM generate_series(1, 500) g;
";

const DIGEST: &str =
    "SELECT count(*) || ' ' || md5(string_agg(o::text, '|' ORDER BY id)) FROM orders o";

async fn digest(pg: &PostgresCluster) -> String {
    pg.psql_in("shop", DIGEST).await.expect("digest query")
}

/// The databases of `pg` (the staging and previous copies a restore makes
/// show up here).
async fn databases(pg: &PostgresCluster) -> String {
    pg.psql("SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database")
        .await
        .expect("list databases")
}

struct Setup {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Setup {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The configuration with key file `key`.
    fn config(&self, key: &str, primary: &PostgresCluster) {
        let text = format!(
            "site = \"primary\"\n[repository]\nurl = \"{}\"\nencryption_key_file = \"{}\"\n\
             [sites.primary]\ndatabase = \"{}\"\nartifacts = \"{}\"\n",
            file_url(&self.path("repo")),
            self.path(key).display(),
            primary.url_for("shop"),
            file_url(&self.path("artifacts")),
        );
        std::fs::write(self.path("warmspare.toml"), text).expect("config");
    }

    async fn expect(&self, code: i32, args: &[&str]) -> Run {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let run = warmspare(self.dir.path(), args, &env).await;
        run.assert_no_panic();
        assert_eq!(run.code, code, "warmspare {args:?}:\n{run:#?}");
        for key in [KEY, OTHER_KEY] {
            assert!(!run.all_output().contains(key), "the key was printed");
        }
        run
    }
}

fn json(run: &Run) -> Value {
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", run.stdout))
}

/// `snapshots/<id>/MANIFEST.json` under the repository directory.
fn manifest_path(repo: &Path, id: &str) -> PathBuf {
    repo.join("snapshots").join(id).join("MANIFEST.json")
}

/// Edits a manifest's body (its last digit) and recomputes its digest, as
/// anyone who can write to the bucket can; the MAC stays as it was.
fn forge(path: &Path) {
    let bytes = std::fs::read(path).expect("read manifest");
    let marker = b"\",\"sha256\":\"";
    let mac_end = bytes
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("an authenticated manifest");
    let body_at = bytes
        .windows(11)
        .position(|w| w == b"\"manifest\":")
        .expect("manifest body")
        + 11;
    let mut body = bytes[body_at..]
        .trim_ascii_end()
        .strip_suffix(b"}")
        .expect("envelope end")
        .to_vec();
    let digit = body
        .iter()
        .rposition(u8::is_ascii_digit)
        .expect("a digit in the body");
    body[digit] = if body[digit] == b'9' {
        b'8'
    } else {
        body[digit] + 1
    };
    let mut forged = bytes[..mac_end].to_vec();
    forged.extend_from_slice(marker);
    forged.extend_from_slice(hex::encode(Sha256::digest(&body)).as_bytes());
    forged.extend_from_slice(b"\",\"manifest\":");
    forged.extend_from_slice(&body);
    forged.extend_from_slice(b"}\n");
    std::fs::write(path, forged).expect("write manifest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_db_backup_restore_wrong_key_and_tampering() {
    let (primary, spare) = tokio::try_join!(PostgresCluster::start(), PostgresCluster::start())
        .expect("clusters start");
    primary.create_database("shop").await.expect("createdb");
    primary.psql_in("shop", FIXTURE).await.expect("fixture");
    spare.create_database("shop").await.expect("createdb");
    let setup = Setup {
        dir: tempfile::tempdir().expect("tempdir"),
        env: vec![(
            "WARMSPARE_PG_BIN_DIR".into(),
            primary.bin_dir().display().to_string(),
        )],
    };
    let repo = setup.path("repo");
    std::fs::create_dir_all(setup.path("artifacts")).expect("artifacts");
    std::fs::write(setup.path("artifacts/readme.txt"), "artifact").expect("artifact");
    std::fs::write(setup.path("repo.key"), format!("{KEY}\n")).expect("key");
    std::fs::write(setup.path("other.key"), OTHER_KEY).expect("key");
    setup.config("repo.key", &primary);
    let spare_shop = spare.url_for("shop");
    let source = digest(&primary).await;

    // A database snapshot, then a recovery point (its own snapshot and an
    // inventory).
    let first = json(&setup.expect(0, &["--json", "backup", "db"]).await);
    let id1 = first["id"].as_str().expect("id").to_owned();
    let manifest1 = manifest_path(&repo, &id1);
    let stored = std::fs::read(&manifest1).expect("manifest");
    assert!(
        stored.starts_with(b"{\"version\":2,\"mac\":\"hmac-sha256:"),
        "{}",
        String::from_utf8_lossy(&stored)
    );
    let point = json(&setup.expect(0, &["--json", "backup"]).await);
    let point_id = point["id"].as_str().expect("point id").to_owned();
    let id2 = point["snapshot"]["id"]
        .as_str()
        .expect("snapshot id")
        .to_owned();
    let point_file = repo.join("points").join(format!("{point_id}.json"));
    assert!(
        std::fs::read(&point_file)
            .expect("point")
            .starts_with(b"{\"version\":2,\"mac\":\"hmac-sha256:"),
        "the point is sealed"
    );

    // With the key: restored into the other cluster, the same contents.
    let run = setup
        .expect(0, &["--json", "restore", "db", &id1, "--to", &spare_shop])
        .await;
    assert_eq!(json(&run)["id"], id1.as_str());
    assert_eq!(digest(&spare).await, source, "restored contents");
    setup
        .expect(0, &["restore", "db", &point_id, "--to", &spare_shop])
        .await;
    assert_eq!(digest(&spare).await, source, "restored from the point");
    setup.expect(0, &["verify", &id1]).await;
    // Which snapshot `latest` is (both may carry the same second).
    let list = json(&setup.expect(0, &["list", "--json"]).await);
    let latest = list["snapshots"][0]["id"].as_str().expect("id").to_owned();
    assert!(latest == id1 || latest == id2, "{list:#}");

    // The spare moves on; whatever fails below must leave it so.
    spare
        .psql_in(
            "shop",
            "INSERT INTO orders VALUES (100000, 'spare only', 1)",
        )
        .await
        .expect("insert");
    let spare_before = digest(&spare).await;
    let databases_before = databases(&spare).await;

    // Another key: exit 2, one line naming the manifest (or the point) and
    // saying the key does not authenticate it; nothing restored.
    setup.config("other.key", &primary);
    let manifest1_name = format!("snapshots/{id1}/MANIFEST.json");
    let manifest2_name = format!("snapshots/{id2}/MANIFEST.json");
    let latest_name = format!("snapshots/{latest}/MANIFEST.json");
    let point_name = format!("points/{point_id}.json");
    for (args, object) in [
        (
            vec!["restore", "db", "latest", "--to", spare_shop.as_str()],
            &latest_name,
        ),
        (
            vec!["restore", "db", id1.as_str(), "--to", spare_shop.as_str()],
            &manifest1_name,
        ),
        (
            vec![
                "restore",
                "db",
                point_id.as_str(),
                "--to",
                spare_shop.as_str(),
            ],
            &point_name,
        ),
        (vec!["verify", "latest"], &latest_name),
        (vec!["verify", id1.as_str()], &manifest1_name),
    ] {
        let run = setup.expect(2, &args).await;
        let line = error_line(&run);
        assert!(
            line.starts_with(&format!(
                "error: wrong key: object {object} is not authenticated by this key: \
                 its MAC is by key id "
            )),
            "{args:?}: {line}"
        );
        assert!(
            line.contains("the configured key has id"),
            "{args:?}: {line}"
        );
        assert!(
            !run.stderr.contains("restore: snapshot"),
            "{args:?}: nothing may start: {}",
            run.stderr
        );
    }
    assert_eq!(digest(&spare).await, spare_before, "the spare is untouched");
    assert_eq!(
        databases(&spare).await,
        databases_before,
        "no staging database"
    );

    // `list` with another key: the point and the snapshots are listed as
    // unreadable, with the reason.
    let list = json(&setup.expect(0, &["list", "--json"]).await);
    let status = list["points"][0]["status"].as_str().unwrap_or_default();
    assert!(
        status.starts_with("unreadable: ")
            && status.contains(&point_name)
            && status.contains("not authenticated by this key"),
        "{list:#}"
    );
    assert_eq!(list["snapshots"][0]["status"], "unreadable", "{list:#}");

    // The right key again; a manifest edited behind the key's back (its
    // digest recomputed) and one moved to another snapshot: exit 1, the
    // object named; still nothing restored.
    setup.config("repo.key", &primary);
    forge(&manifest1);
    let run = setup
        .expect(1, &["restore", "db", &id1, "--to", &spare_shop])
        .await;
    let line = error_line(&run);
    assert!(
        line.starts_with(&format!(
            "error: object {manifest1_name} is not authenticated by this key: \
             its MAC does not match its content and name"
        )),
        "{line}"
    );
    let run = setup.expect(1, &["verify", &id1]).await;
    assert!(error_line(&run).contains(&manifest1_name), "{}", run.stderr);

    let manifest2 = manifest_path(&repo, &id2);
    std::fs::write(&manifest2, &stored).expect("move manifest 1 over 2");
    for args in [
        vec!["restore", "db", id2.as_str(), "--to", spare_shop.as_str()],
        vec![
            "restore",
            "db",
            point_id.as_str(),
            "--to",
            spare_shop.as_str(),
        ],
        vec!["verify", id2.as_str()],
    ] {
        let run = setup.expect(1, &args).await;
        let line = error_line(&run);
        assert!(
            line.contains(&format!("object {manifest2_name} is not authenticated"))
                && line.contains("does not match"),
            "{args:?}: {line}"
        );
        assert!(!line.contains("wrong key"), "{line}");
    }
    assert_eq!(digest(&spare).await, spare_before, "the spare is untouched");
    assert_eq!(
        databases(&spare).await,
        databases_before,
        "no staging database"
    );
}
