//! `list` in an encrypted repository: with the key every manifest and
//! recovery point is listed as verified; without it they are still listed
//! (their digests checked) but marked unchecked, in the table and in the
//! JSON, with one note on stderr counting them.

use std::path::PathBuf;

use serde_json::Value;
use warmspare_testkit::PostgresCluster;

use crate::{Run, file_url, warmspare};

const KEY: &str = "3c4b5a69788796a5b4c3d2e1f000112233445566778899aabbccddeeff8f1e2d";

struct Setup {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Setup {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The configuration, with the key file or without any key.
    fn config(&self, primary: &PostgresCluster, with_key: bool) {
        let key = if with_key {
            format!(
                "encryption_key_file = \"{}\"\n",
                self.path("repo.key").display()
            )
        } else {
            String::new()
        };
        let text = format!(
            "site = \"primary\"\n[repository]\nurl = \"{}\"\n{key}\
             [sites.primary]\ndatabase = \"{}\"\nartifacts = \"{}\"\n",
            file_url(&self.path("repo")),
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
        assert!(!run.all_output().contains(KEY), "the key was printed");
        run
    }
}

fn json(run: &Run) -> Value {
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", run.stdout))
}

/// The stderr lines that are notes.
fn notes(run: &Run) -> Vec<&str> {
    run.stderr.lines().filter(|l| l.contains("note:")).collect()
}

/// The table line that starts with `id`.
fn line<'a>(table: &'a str, id: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.starts_with(id))
        .unwrap_or_else(|| panic!("no line for {id} in:\n{table}"))
}

/// Whether some table line starts with `id` and contains `text` (a point
/// and a snapshot may share an id).
fn has_line(table: &str, id: &str, text: &str) -> bool {
    table.lines().any(|l| l.starts_with(id) && l.contains(text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_auth_marks_records_it_could_not_check() {
    let primary = PostgresCluster::start().await.expect("cluster starts");
    primary.create_database("shop").await.expect("createdb");
    primary
        .psql_in("shop", "CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
        .await
        .expect("fixture");
    let setup = Setup {
        dir: tempfile::tempdir().expect("tempdir"),
        env: vec![(
            "WARMSPARE_PG_BIN_DIR".into(),
            primary.bin_dir().display().to_string(),
        )],
    };
    std::fs::create_dir_all(setup.path("artifacts")).expect("artifacts");
    std::fs::write(setup.path("artifacts/readme.txt"), "artifact").expect("artifact");
    std::fs::write(setup.path("repo.key"), format!("{KEY}\n")).expect("key");
    setup.config(&primary, true);

    // A database snapshot, then a recovery point (a second snapshot and
    // an inventory): two manifests and a point, all carrying a MAC.
    let db = json(&setup.expect(0, &["--json", "backup", "db"]).await);
    let id1 = db["id"].as_str().expect("id").to_owned();
    let point = json(&setup.expect(0, &["--json", "backup"]).await);
    let point_id = point["id"].as_str().expect("point id").to_owned();
    let id2 = point["snapshot"]["id"].as_str().expect("id").to_owned();
    let stored =
        std::fs::read(setup.path("repo").join(format!("points/{point_id}.json"))).expect("point");
    assert!(
        stored.starts_with(b"{\"version\":2,\"mac\":\"hmac-sha256:"),
        "the point is sealed"
    );

    // With the key: verified, no note, the table as ever.
    let run = setup.expect(0, &["list", "--json"]).await;
    let list = json(&run);
    assert_eq!(list["points"][0]["id"], point_id.as_str(), "{list:#}");
    assert_eq!(list["points"][0]["authentication"], "verified", "{list:#}");
    let snapshots = list["snapshots"].as_array().expect("snapshots");
    assert_eq!(snapshots.len(), 2, "{list:#}");
    for s in snapshots {
        assert_eq!(s["status"], "complete", "{list:#}");
        assert_eq!(s["authentication"], "verified", "{list:#}");
    }
    assert!(notes(&run).is_empty(), "{}", run.stderr);
    let run = setup.expect(0, &["list"]).await;
    assert!(notes(&run).is_empty(), "{}", run.stderr);
    assert!(!run.stdout.contains("unchecked"), "{}", run.stdout);
    for id in [&id1, &id2] {
        assert!(
            has_line(&run.stdout, id, "logical  complete  "),
            "{}",
            run.stdout
        );
    }

    // Without any key: still listed, but unchecked, and one note says so.
    setup.config(&primary, false);
    let run = setup.expect(0, &["list", "--json"]).await;
    let list = json(&run);
    assert_eq!(list["points"][0]["status"], "complete", "{list:#}");
    assert_eq!(list["points"][0]["authentication"], "unchecked", "{list:#}");
    let snapshots = list["snapshots"].as_array().expect("snapshots");
    assert_eq!(snapshots.len(), 2, "{list:#}");
    for s in snapshots {
        assert_eq!(s["status"], "complete", "{list:#}");
        assert_eq!(s["authentication"], "unchecked", "{list:#}");
    }
    let expected_note = "list: note: no encryption key configured: 2 manifests and \
                         1 recovery point carry a MAC that was not checked";
    let found = notes(&run);
    assert_eq!(found.len(), 1, "{}", run.stderr);
    assert!(found[0].starts_with(expected_note), "{}", run.stderr);

    let run = setup.expect(0, &["list"]).await;
    let found = notes(&run);
    assert_eq!(found.len(), 1, "{}", run.stderr);
    assert!(found[0].starts_with(expected_note), "{}", run.stderr);
    assert!(
        line(&run.stdout, &format!("{point_id} (unchecked)")).contains(&id2),
        "{}",
        run.stdout
    );
    for id in [&id1, &id2] {
        assert!(
            has_line(&run.stdout, id, "logical  complete (unchecked)  "),
            "{}",
            run.stdout
        );
    }

    // Only the points: the note counts the point alone.
    let run = setup.expect(0, &["list", "--points"]).await;
    let found = notes(&run);
    assert_eq!(found.len(), 1, "{}", run.stderr);
    assert!(
        found[0].starts_with(
            "list: note: no encryption key configured: 1 recovery point carries a MAC \
             that was not checked"
        ),
        "{}",
        run.stderr
    );
}
