//! `sync`, `backup` (recovery points), `backup artifacts`, `list`,
//! `restore artifacts` and `reconcile` through the binary, against real
//! directories, a real S3 server and real PostgreSQL clusters.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use warmspare_store::object_store::{ObjectStore, ObjectStoreExt, path::Path as ObjectPath};
use warmspare_testkit::{PostgresCluster, S3Server};

use crate::{Run, file_url, warmspare};

/// A working directory for the binary, its configuration and environment.
struct Cli {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Cli {
    fn new() -> Cli {
        Cli {
            dir: tempfile::tempdir().expect("tempdir"),
            env: Vec::new(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn config(&self, text: &str) {
        std::fs::write(self.path("warmspare.toml"), text).expect("write config");
    }

    fn env(&mut self, key: &str, value: impl Into<String>) {
        self.env.push((key.to_owned(), value.into()));
    }

    fn s3_env(&mut self, s3: &S3Server) {
        self.env("AWS_ACCESS_KEY_ID", s3.access_key_id());
        self.env("AWS_SECRET_ACCESS_KEY", s3.secret_access_key());
        self.env("AWS_REGION", s3.region());
        self.env("AWS_ENDPOINT_URL", s3.endpoint());
        self.env("AWS_ALLOW_HTTP", "true");
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
        run
    }
}

fn json(run: &Run) -> Value {
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", run.stdout))
}

/// Writes `files` (key -> contents) under `dir`.
fn write_files(dir: &Path, files: &[(&str, &str)]) {
    for (key, body) in files {
        let path = dir.join(key);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, body).expect("write");
    }
}

/// Every file under `dir` (key -> contents), `.warmspare/` aside.
fn read_tree(dir: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).expect("read dir") {
            let path = entry.expect("entry").path();
            let key = path
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .into_owned();
            if key.starts_with(".warmspare") {
                continue;
            }
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.insert(key, std::fs::read_to_string(&path).expect("read"));
            }
        }
    }
    let mut out = BTreeMap::new();
    if dir.exists() {
        walk(dir, dir, &mut out);
    }
    out
}

fn tree(files: &[(&str, &str)]) -> BTreeMap<String, String> {
    files
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

const FILES: &[(&str, &str)] = &[
    (
        "core/nginx/1.25.0/20260101/core-nginx-1.25.0-20260101-x86_64-linux.hart",
        "nginx",
    ),
    (
        "core/redis/7.0.0/20260102/core-redis-7.0.0-20260102-x86_64-linux.hart",
        "redis!",
    ),
    (
        "core/zlib/1.3/20260103/core-zlib-1.3-20260103-x86_64-linux.hart",
        "zlib zlib",
    ),
    ("top-level.hart", "top"),
];

/// Mirror: full copy, no-change pass, a change, a dry run with deletions,
/// the empty-source guard, and the same into S3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_file_to_file_and_s3() {
    let mut cli = Cli::new();
    let (src, dst) = (cli.path("src"), cli.path("dst"));
    write_files(&src, FILES);
    let (from, to) = (file_url(&src), file_url(&dst));

    // No configuration file is needed for bare URLs.
    let run = cli
        .expect(0, &["--json", "sync", "--from", &from, "--to", &to])
        .await;
    let s = json(&run);
    assert_eq!(
        (s["listed"].as_u64(), s["copied"].as_u64()),
        (Some(4), Some(4)),
        "{s:#}"
    );
    assert!(run.stderr.contains("sync: "), "{}", run.stderr);
    assert_eq!(read_tree(&dst), tree(FILES));

    let s = json(
        &cli.expect(0, &["--json", "sync", "--from", &from, "--to", &to])
            .await,
    );
    assert_eq!(
        (s["copied"].as_u64(), s["skipped"].as_u64()),
        (Some(0), Some(4)),
        "{s:#}"
    );
    assert_eq!(
        s["bytes_read"].as_u64(),
        Some(0),
        "a no-change pass reads no bodies: {s:#}"
    );

    // A change (same size) and a removal on the source.
    write_files(&src, &[("top-level.hart", "TOP")]);
    std::fs::remove_file(src.join(FILES[0].0)).expect("rm");
    let run = cli
        .expect(
            0,
            &[
                "sync",
                "--from",
                &from,
                "--to",
                &to,
                "--dry-run",
                "--delete",
            ],
        )
        .await;
    assert!(
        run.stdout.contains("1 copied") && run.stdout.contains("1 deleted"),
        "{run:#?}"
    );
    assert!(dst.join(FILES[0].0).exists(), "a dry run deletes nothing");
    let s = json(
        &cli.expect(
            0,
            &["--json", "sync", "--from", &from, "--to", &to, "--delete"],
        )
        .await,
    );
    assert_eq!(
        (s["copied"].as_u64(), s["deleted"].as_u64()),
        (Some(1), Some(1)),
        "{s:#}"
    );
    assert_eq!(read_tree(&dst), read_tree(&src));

    // An emptied source: deletions are refused, exit 1, nothing deleted.
    let before = read_tree(&dst);
    for (key, _) in FILES {
        let _ = std::fs::remove_file(src.join(key));
    }
    let run = cli
        .expect(
            1,
            &["--json", "sync", "--from", &from, "--to", &to, "--delete"],
        )
        .await;
    let s = json(&run);
    assert_eq!(s["deleted"].as_u64(), Some(0), "{s:#}");
    assert!(
        s["delete_refused"]
            .as_str()
            .unwrap_or("")
            .contains("source listed no objects"),
        "{s:#}"
    );
    assert!(
        run.stderr.contains("error: sync: deletions refused"),
        "{}",
        run.stderr
    );
    assert_eq!(read_tree(&dst), before, "nothing deleted");
    // Over the limit: refused as well.
    write_files(&src, &[("only.hart", "x")]);
    let run = cli
        .expect(
            1,
            &[
                "sync",
                "--from",
                &from,
                "--to",
                &to,
                "--delete",
                "--max-delete",
                "1",
            ],
        )
        .await;
    assert!(run.stderr.contains("max_delete"), "{}", run.stderr);
    assert!(read_tree(&dst).len() >= before.len());

    // A source directory that does not exist is a usage error.
    let missing = file_url(&cli.path("nope"));
    cli.expect(2, &["sync", "--from", &missing, "--to", &to])
        .await;
    cli.expect(2, &["sync", "--from", &from]).await;

    // fs -> S3, with credentials from AWS_*.
    let Some(s3) = S3Server::try_shared().await.expect("s3 server") else {
        return;
    };
    let bucket = s3.unique_bucket("cli-sync").await.expect("bucket");
    cli.s3_env(s3);
    let src2 = cli.path("src2");
    write_files(&src2, FILES);
    let (from, to) = (file_url(&src2), format!("s3://{bucket}/mirror"));
    let s = json(
        &cli.expect(0, &["--json", "sync", "--from", &from, "--to", &to])
            .await,
    );
    assert_eq!(s["copied"].as_u64(), Some(4), "{s:#}");
    let store = s3.store_for_bucket(&bucket).expect("client");
    let got = store
        .get(&ObjectPath::from(format!("mirror/{}", FILES[1].0)))
        .await
        .expect("get")
        .bytes()
        .await
        .expect("body");
    assert_eq!(&got[..], FILES[1].1.as_bytes());
    let s = json(
        &cli.expect(0, &["--json", "sync", "--from", &from, "--to", &to])
            .await,
    );
    assert_eq!(
        (s["copied"].as_u64(), s["skipped"].as_u64()),
        (Some(0), Some(4)),
        "{s:#}"
    );
    // And back: S3 -> fs.
    let back = cli.path("back");
    let s = json(
        &cli.expect(
            0,
            &["--json", "sync", "--from", &to, "--to", &file_url(&back)],
        )
        .await,
    );
    assert_eq!(s["copied"].as_u64(), Some(4), "{s:#}");
    assert_eq!(read_tree(&back), tree(FILES));
}

/// Without URLs the current site's store is mirrored into the other's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_between_configured_sites() {
    let cli = Cli::new();
    let (a, b) = (cli.path("a"), cli.path("b"));
    write_files(&a, FILES);
    std::fs::create_dir_all(&b).expect("mkdir");
    cli.config(&format!(
        "site = \"primary\"\n[repository]\nurl = \"{}\"\n\
         [sites.primary]\ndatabase = \"postgres://u@127.0.0.1:1/db\"\nartifacts = \"{}\"\n\
         [sites.spare]\ndatabase = \"postgres://u@127.0.0.1:1/db\"\nartifacts = \"{}\"\n",
        file_url(&cli.path("repo")),
        file_url(&a),
        file_url(&b)
    ));
    let run = cli.expect(0, &["--json", "sync"]).await;
    assert_eq!(json(&run)["copied"].as_u64(), Some(4));
    assert!(
        run.stderr
            .contains(&format!("sync: {} -> {}", file_url(&a), file_url(&b))),
        "{}",
        run.stderr
    );
    assert_eq!(read_tree(&b), tree(FILES));
    // The other direction, by name.
    write_files(&b, &[("extra.hart", "e")]);
    let s = json(
        &cli.expect(0, &["--json", "sync", "--from-site", "spare"])
            .await,
    );
    assert_eq!(s["copied"].as_u64(), Some(1), "{s:#}");
    assert!(a.join("extra.hart").exists());
    cli.expect(2, &["sync", "--to-site", "primary"]).await;
}

/// `backup` takes a recovery point; `list` shows it; after objects were
/// deleted and overwritten on the source, `restore artifacts latest`
/// writes the recorded state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_point_backup_list_restore() {
    let pg = PostgresCluster::start().await.expect("cluster");
    pg.create_database("builder").await.expect("createdb");
    pg.psql_in(
        "builder",
        "CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2);",
    )
    .await
    .expect("fixture");
    let mut cli = Cli::new();
    let arts = cli.path("artifacts");
    write_files(&arts, FILES);
    cli.env("WARMSPARE_PG_BIN_DIR", pg.bin_dir().display().to_string());
    cli.config(&format!(
        "site = \"primary\"\n[repository]\nurl = \"{}\"\n\
         [sites.primary]\ndatabase = \"{}\"\nartifacts = \"{}\"\n",
        file_url(&cli.path("repo")),
        pg.url_for("builder"),
        file_url(&arts)
    ));

    let run = cli.expect(0, &["--json", "backup"]).await;
    let point = json(&run);
    let id = point["id"].as_str().expect("point id").to_owned();
    let lsn = point["wal_position"]
        .as_str()
        .expect("wal position")
        .to_owned();
    assert!(lsn.contains('/'), "{point:#}");
    assert_eq!(point["snapshot"]["database"], "builder", "{point:#}");
    assert_eq!(point["artifacts"]["objects"].as_u64(), Some(4), "{point:#}");
    assert_eq!(point["artifacts"]["stored"].as_u64(), Some(4), "{point:#}");
    for step in [
        "backup: dump",
        "backup: WAL position",
        "backup: record the point",
    ] {
        assert!(run.stderr.contains(step), "{step}: {}", run.stderr);
    }

    let list = json(&cli.expect(0, &["list", "--json"]).await);
    let points = list["points"].as_array().expect("points");
    assert_eq!(points.len(), 1, "{list:#}");
    assert_eq!(points[0]["id"], id.as_str());
    assert_eq!(points[0]["status"], "complete");
    let recorded = &points[0]["point"];
    assert_eq!(recorded["wal_position"], lsn.as_str());
    assert_eq!(recorded["snapshot"], point["snapshot"]["id"], "{list:#}");
    assert_eq!(
        recorded["inventory"], point["artifacts"]["inventory"],
        "{list:#}"
    );
    assert_eq!(recorded["meta"]["site"], "primary");
    assert_eq!(
        list["snapshots"].as_array().map(Vec::len),
        Some(1),
        "{list:#}"
    );
    let human = cli.expect(0, &["list"]).await;
    assert!(human.stdout.starts_with("POINT "), "{}", human.stdout);
    assert!(
        human.stdout.contains(&id) && human.stdout.contains(&lsn),
        "{}",
        human.stdout
    );

    // The point's id restores its database half as well.
    let run = cli
        .expect(
            0,
            &["--json", "restore", "db", &id, "--to", &pg.url_for("copy")],
        )
        .await;
    assert_eq!(json(&run)["id"], point["snapshot"]["id"], "{}", run.stdout);
    let rows = pg
        .psql_in("copy", "SELECT count(*) FROM t")
        .await
        .expect("count");
    assert_eq!(rows.trim(), "2");

    // The primary loses one object, another is overwritten, one is added;
    // a later artifact-only backup does not move `latest` off the point.
    std::fs::remove_file(arts.join(FILES[0].0)).expect("rm");
    write_files(&arts, &[(FILES[1].0, "REDIS"), ("new.hart", "new")]);
    let s = json(&cli.expect(0, &["--json", "backup", "artifacts"]).await);
    assert_eq!(
        s["unchanged"].as_u64(),
        Some(2),
        "unchanged objects are not read: {s:#}"
    );
    assert_eq!(s["objects"].as_u64(), Some(4), "{s:#}");

    let empty = cli.path("restored");
    let s = json(
        &cli.expect(
            0,
            &[
                "--json",
                "restore",
                "artifacts",
                "latest",
                "--to",
                &file_url(&empty),
            ],
        )
        .await,
    );
    assert_eq!(s["copied"].as_u64(), Some(4), "{s:#}");
    assert_eq!(read_tree(&empty), tree(FILES), "the recorded state");

    // Into the changed store itself: only what differs is written; the
    // extra object is reported and kept without --delete.
    let run = cli
        .expect(
            0,
            &[
                "--json",
                "restore",
                "artifacts",
                &id,
                "--to",
                &file_url(&arts),
            ],
        )
        .await;
    let s = json(&run);
    assert_eq!(
        (s["copied"].as_u64(), s["extra"].as_u64()),
        (Some(2), Some(1)),
        "{s:#}"
    );
    assert!(arts.join("new.hart").exists());
    let s = json(
        &cli.expect(
            0,
            &[
                "--json",
                "restore",
                "artifacts",
                &id,
                "--to",
                &file_url(&arts),
                "--delete",
            ],
        )
        .await,
    );
    assert_eq!(s["deleted"].as_u64(), Some(1), "{s:#}");
    assert_eq!(read_tree(&arts), tree(FILES));

    cli.expect(
        2,
        &[
            "restore",
            "artifacts",
            "20200101T000000Z-0000",
            "--to",
            &file_url(&empty),
        ],
    )
    .await;

    // Into an S3 bucket, with credentials from AWS_*.
    let Some(s3) = S3Server::try_shared().await.expect("s3 server") else {
        return;
    };
    let bucket = s3.unique_bucket("cli-restore").await.expect("bucket");
    cli.s3_env(s3);
    let to = format!("s3://{bucket}/restored");
    let s = json(
        &cli.expect(
            0,
            &["--json", "restore", "artifacts", "latest", "--to", &to],
        )
        .await,
    );
    assert_eq!(s["copied"].as_u64(), Some(4), "{s:#}");
    let store = s3.store_for_bucket(&bucket).expect("client");
    let got = store
        .get(&ObjectPath::from(format!("restored/{}", FILES[1].0)))
        .await
        .expect("get")
        .bytes()
        .await
        .expect("body");
    assert_eq!(
        &got[..],
        FILES[1].1.as_bytes(),
        "the recorded bytes, not the overwrite"
    );
    let s = json(
        &cli.expect(
            0,
            &["--json", "restore", "artifacts", "latest", "--to", &to],
        )
        .await,
    );
    assert_eq!(
        (s["copied"].as_u64(), s["skipped"].as_u64()),
        (Some(0), Some(4)),
        "{s:#}"
    );
}

/// `reconcile` against a real table of keys and SHA-256 checksums.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_reports_missing_mismatched_and_unnamed() {
    let pg = PostgresCluster::start().await.expect("cluster");
    pg.create_database("builder").await.expect("createdb");
    // `content` is what the artifact should hold; the checksum is its
    // SHA-256, computed by the server.
    pg.psql_in(
        "builder",
        "CREATE TABLE packages (ident text PRIMARY KEY, content text);
         INSERT INTO packages VALUES
           ('core/nginx/1.25.0/20260101', 'nginx'),
           ('core/redis/7.0.0/20260102', 'redis!'),
           ('core/gone/1.0/20260104', 'gone');",
    )
    .await
    .expect("fixture");
    let cli = Cli::new();
    let arts = cli.path("artifacts");
    write_files(
        &arts,
        &[
            ("core/nginx/1.25.0/20260101.hart", "nginx"),
            ("core/redis/7.0.0/20260102.hart", "REDIS!"),
            ("core/stray/0.1/20260105.hart", "stray"),
        ],
    );
    let config = format!(
        "site = \"primary\"\n[repository]\nurl = \"{}\"\n\
         [sites.primary]\ndatabase = \"{}\"\nartifacts = \"{}\"\n\
         [reconcile]\nquery = \"SELECT ident || '.hart', \
         encode(sha256(convert_to(content, 'UTF8')), 'hex') FROM packages\"\n",
        file_url(&cli.path("repo")),
        pg.url_for("builder"),
        file_url(&arts)
    );
    cli.config(&config);

    let run = cli.expect(1, &["--json", "reconcile"]).await;
    let r = json(&run);
    assert_eq!(r["expected"].as_u64(), Some(3), "{r:#}");
    assert_eq!(
        r["missing"],
        serde_json::json!(["core/gone/1.0/20260104.hart"]),
        "{r:#}"
    );
    assert_eq!(r["mismatched"].as_array().map(Vec::len), Some(1), "{r:#}");
    assert_eq!(r["mismatched"][0]["key"], "core/redis/7.0.0/20260102.hart");
    assert_eq!(
        r["unnamed"],
        serde_json::json!(["core/stray/0.1/20260105.hart"]),
        "{r:#}"
    );
    assert_eq!(r["consistent"], false);
    assert!(
        run.stderr
            .contains("error: reconcile: 1 missing, 1 mismatched"),
        "{}",
        run.stderr
    );

    // Presence only: the missing row still fails the run, the changed
    // bytes are not looked at.
    let r = json(
        &cli.expect(1, &["--json", "reconcile", "--presence-only"])
            .await,
    );
    assert_eq!(
        (r["missing_count"].as_u64(), r["mismatched_count"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(r["verified"].as_u64(), Some(0), "{r:#}");

    // Repair the store: consistent, exit 0 (the stray object is reported only).
    write_files(
        &arts,
        &[
            ("core/redis/7.0.0/20260102.hart", "redis!"),
            ("core/gone/1.0/20260104.hart", "gone"),
        ],
    );
    let run = cli.expect(0, &["reconcile"]).await;
    assert!(
        run.stdout.contains("0 missing, 0 mismatched"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("unnamed     core/stray"),
        "{}",
        run.stdout
    );

    // No query configured, or a query of the wrong shape.
    cli.config(&config.replace("[reconcile]\nquery", "[reconcile]\n#query"));
    cli.expect(2, &["reconcile"]).await;
    cli.config(&config.replace("SELECT ident || '.hart',", "SELECT 1,"));
    let run = cli.expect(1, &["reconcile"]).await;
    assert!(run.stderr.contains("not text"), "{}", run.stderr);
}

/// The `[reconcile]` query of `docs/habitat-builder.md`, verbatim, against
/// an `origin_packages` table shaped like Builder's and objects laid out as
/// Builder's `s3_key` lays them out, with BLAKE2b-256 checksums.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn habitat_builder_query_from_the_docs() {
    use blake2::Digest as _;
    let doc = include_str!("../../../../docs/habitat-builder.md");
    let start = doc.find("query = '''").expect("query in the guide");
    let end = doc[start + 11..].find("'''").expect("end of query") + start + 11;
    let query_toml = &doc[start..end + 3];

    let blake = |bytes: &[u8]| -> String {
        blake2::Blake2b::<blake2::digest::consts::U32>::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let pg = PostgresCluster::start().await.expect("cluster");
    pg.create_database("builder").await.expect("createdb");
    let rows = [
        (
            "bend-sinister/the-other-way/1.0.0/20180701122201",
            "x86_64-linux",
            "hart one",
        ),
        (
            "core/nginx/1.25.4/20240315120000",
            "x86_64-linux",
            "hart two",
        ),
        (
            "core/nginx/1.25.4/20240315120000",
            "aarch64-linux",
            "hart three",
        ),
    ];
    let mut sql = "CREATE TABLE origin_packages (id bigserial PRIMARY KEY, ident text, \
                   target text, checksum text);"
        .to_owned();
    for (ident, target, body) in rows {
        sql.push_str(&format!(
            "INSERT INTO origin_packages (ident, target, checksum) VALUES ('{ident}', '{target}', '{}');",
            blake(body.as_bytes())
        ));
    }
    pg.psql_in("builder", &sql).await.expect("fixture");

    let cli = Cli::new();
    let arts = cli.path("minio");
    // The key Builder's own unit test expects for the first row.
    let first = "bend-sinister/the-other-way/1.0.0/20180701122201/x86_64/linux/\
                 bend-sinister-the-other-way-1.0.0-20180701122201-x86_64-linux.hart";
    let second = "core/nginx/1.25.4/20240315120000/x86_64/linux/\
                  core-nginx-1.25.4-20240315120000-x86_64-linux.hart";
    let third = "core/nginx/1.25.4/20240315120000/aarch64/linux/\
                 core-nginx-1.25.4-20240315120000-aarch64-linux.hart";
    write_files(
        &arts,
        &[
            (first, "hart one"),
            (second, "hart two"),
            (third, "tampered"),
        ],
    );
    cli.config(&format!(
        "site = \"primary\"\n[repository]\nurl = \"{}\"\n\
         [sites.primary]\ndatabase = \"{}\"\nartifacts = \"{}\"\n\
         [reconcile]\n{query_toml}\ndigest = \"blake2b256\"\n",
        file_url(&cli.path("repo")),
        pg.url_for("builder"),
        file_url(&arts)
    ));
    let r = json(&cli.expect(1, &["--json", "reconcile"]).await);
    assert_eq!(r["missing_count"].as_u64(), Some(0), "{r:#}");
    assert_eq!(r["unnamed_count"].as_u64(), Some(0), "{r:#}");
    assert_eq!(r["verified"].as_u64(), Some(3), "{r:#}");
    assert_eq!(r["mismatched"][0]["key"], third, "{r:#}");
    write_files(&arts, &[(third, "hart three")]);
    cli.expect(0, &["reconcile"]).await;
}

/// A key file's contents (64 hex digits).
const KEY: &str = "00112233445566778899aabbccddeeff0123456789abcdef0f1e2d3c4b5a6978";
const OTHER_KEY: &str = "ffeeddccbbaa99887766554433221100fedcba98765432100123456789abcdef";

/// Every file under `dir` (recursively) as bytes.
fn stored_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                todo.push(path);
            } else {
                let bytes = std::fs::read(&path).expect("read");
                out.push((path, bytes));
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Recovery points in an encrypted repository: taken, restored, refused
/// with another key, and pruned with their inventories and blobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_points_restore_and_prune() {
    let pg = PostgresCluster::start().await.expect("cluster");
    pg.create_database("builder").await.expect("createdb");
    pg.psql_in(
        "builder",
        "CREATE TABLE t (id int); INSERT INTO t VALUES (1);",
    )
    .await
    .expect("fixture");
    let mut cli = Cli::new();
    let arts = cli.path("artifacts");
    let repo = cli.path("repo");
    write_files(&arts, FILES);
    std::fs::write(cli.path("repo.key"), format!("{KEY}\n")).expect("key");
    std::fs::write(cli.path("other.key"), OTHER_KEY).expect("key");
    cli.env("WARMSPARE_PG_BIN_DIR", pg.bin_dir().display().to_string());
    let config = |key: &str| {
        format!(
            "site = \"primary\"\n[repository]\nurl = \"{}\"\nencryption_key_file = \"{}\"\n\
             [sites.primary]\ndatabase = \"{}\"\nartifacts = \"{}\"\n\
             [retention]\nkeep_last = 1\nkeep_daily = 0\nkeep_weekly = 0\nkeep_monthly = 0\n",
            file_url(&repo),
            cli.path(key).display(),
            pg.url_for("builder"),
            file_url(&arts)
        )
    };
    cli.config(&config("repo.key"));

    let first = json(&cli.expect(0, &["--json", "backup"]).await);
    let first_id = first["id"].as_str().expect("id").to_owned();
    assert_eq!(first["artifacts"]["stored"].as_u64(), Some(4), "{first:#}");
    // The primary loses one object and overwrites another.
    std::fs::remove_file(arts.join(FILES[0].0)).expect("rm");
    write_files(&arts, &[(FILES[1].0, "REDIS!")]);
    let second = json(&cli.expect(0, &["--json", "backup"]).await);
    assert_eq!(
        second["artifacts"]["unchanged"].as_u64(),
        Some(2),
        "{second:#}"
    );
    assert_eq!(
        second["artifacts"]["stored"].as_u64(),
        Some(1),
        "{second:#}"
    );

    // Nothing in the repository shows the artifacts' contents or names.
    for (path, bytes) in stored_files(&repo) {
        for needle in [
            "redis!",
            "REDIS!",
            "zlib zlib",
            "core-zlib-1.3",
            "top-level",
        ] {
            assert!(
                !contains(&bytes, needle.as_bytes()),
                "{} holds {needle:?}",
                path.display()
            );
        }
    }

    // The older point restores exactly its state.
    let restored = cli.path("restored");
    let s = json(
        &cli.expect(
            0,
            &[
                "--json",
                "restore",
                "artifacts",
                &first_id,
                "--to",
                &file_url(&restored),
            ],
        )
        .await,
    );
    assert_eq!(s["copied"].as_u64(), Some(4), "{s:#}");
    assert_eq!(read_tree(&restored), tree(FILES));

    // Another key: a clear error (exit 2) before anything is written.
    cli.config(&config("other.key"));
    let elsewhere = cli.path("elsewhere");
    let run = cli
        .expect(
            2,
            &[
                "restore",
                "artifacts",
                "latest",
                "--to",
                &file_url(&elsewhere),
            ],
        )
        .await;
    assert!(run.stderr.contains("wrong key"), "{}", run.stderr);
    assert!(!run.stderr.contains(KEY) && !run.stderr.contains(OTHER_KEY));
    assert!(read_tree(&elsewhere).is_empty());
    let run = cli.expect(2, &["backup", "artifacts"]).await;
    assert!(run.stderr.contains("wrong key"), "{}", run.stderr);
    cli.config(&config("repo.key"));

    // prune: the older point goes, its snapshot, its inventory, and (once
    // past the grace period) the two blobs only it named.
    let dry = json(&cli.expect(0, &["--json", "prune", "--dry-run"]).await);
    assert_eq!(
        dry["points"]["plan"]["delete"][0]["id"],
        first_id.as_str(),
        "{dry:#}"
    );
    assert_eq!(
        dry["groups"][0]["plan"]["delete"][0]["id"], first["snapshot"]["id"],
        "{dry:#}"
    );
    assert_eq!(
        dry["inventories"]["plan"]["delete"][0]["id"], first["artifacts"]["inventory"],
        "{dry:#}"
    );
    assert_eq!(
        dry["blobs"]["deletable"].as_u64(),
        Some(0),
        "young: {dry:#}"
    );
    assert_eq!(dry["blobs"]["young"].as_u64(), Some(2), "{dry:#}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let dry = json(
            &cli.expect(0, &["--json", "prune", "--dry-run", "--blob-grace", "1s"])
                .await,
        );
        if dry["blobs"]["deletable"].as_u64() == Some(2) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{dry:#}");
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    let table = cli
        .expect(0, &["prune", "--dry-run", "--blob-grace", "1s"])
        .await
        .stdout;
    let row = |id: &str| {
        table
            .lines()
            .find(|l| l.contains(id))
            .unwrap_or_else(|| panic!("no row for {id}:\n{table}"))
            .to_owned()
    };
    assert!(row(&first_id).starts_with("delete "), "{table}");
    assert!(
        row(second["id"].as_str().expect("id")).starts_with("keep "),
        "{table}"
    );
    assert!(row("unreferenced blobs").starts_with("delete "), "{table}");
    let run = cli
        .expect(0, &["--json", "prune", "--blob-grace", "1s"])
        .await;
    let done = json(&run);
    assert_eq!(done["points"]["deleted"][0], first_id.as_str(), "{done:#}");
    assert_eq!(done["deleted"][0], first["snapshot"]["id"], "{done:#}");
    assert_eq!(
        done["inventories"]["deleted"][0], first["artifacts"]["inventory"],
        "{done:#}"
    );
    assert_eq!(done["blobs"]["deleted"].as_u64(), Some(2), "{done:#}");
    assert!(
        run.stderr.contains("deleted 1 recovery points"),
        "{}",
        run.stderr
    );
    let blobs = stored_files(&repo.join("blobs")).len();
    assert_eq!(blobs, 3, "the kept point's blobs");

    // What is left restores, and the list shows one point.
    let list = json(&cli.expect(0, &["list", "--json"]).await);
    assert_eq!(list["points"].as_array().map(Vec::len), Some(1), "{list:#}");
    let latest = cli.path("latest");
    cli.expect(
        0,
        &["restore", "artifacts", "latest", "--to", &file_url(&latest)],
    )
    .await;
    assert_eq!(
        read_tree(&latest),
        tree(&[FILES[1], FILES[2], FILES[3]])
            .into_iter()
            .map(|(k, v)| if k == FILES[1].0 {
                (k, "REDIS!".to_owned())
            } else {
                (k, v)
            })
            .collect()
    );
}

/// `backup artifacts` and `restore artifacts` with an encrypted S3
/// repository.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_artifacts_on_s3() {
    let Some(s3) = S3Server::try_shared().await.expect("s3 server") else {
        return;
    };
    let bucket = s3.unique_bucket("cli-enc").await.expect("bucket");
    let mut cli = Cli::new();
    cli.s3_env(s3);
    let arts = cli.path("artifacts");
    write_files(&arts, FILES);
    std::fs::write(cli.path("repo.key"), KEY).expect("key");
    cli.config(&format!(
        "site = \"primary\"\n[repository]\nurl = \"s3://{bucket}/repo\"\nendpoint = \"{}\"\n\
         region = \"{}\"\nallow_http = true\nencryption_key_file = \"{}\"\n\
         [sites.primary]\ndatabase = \"postgres://nobody@127.0.0.1:1/none\"\nartifacts = \"{}\"\n",
        s3.endpoint(),
        s3.region(),
        cli.path("repo.key").display(),
        file_url(&arts)
    ));
    let s = json(&cli.expect(0, &["--json", "backup", "artifacts"]).await);
    assert_eq!(s["stored"].as_u64(), Some(4), "{s:#}");
    let s = json(&cli.expect(0, &["--json", "backup", "artifacts"]).await);
    assert_eq!(s["unchanged"].as_u64(), Some(4), "{s:#}");

    let store = s3.store_for_bucket(&bucket).expect("client");
    let listed: Vec<_> =
        futures::TryStreamExt::try_collect::<Vec<_>>(store.list(Some(&ObjectPath::from("repo"))))
            .await
            .expect("list");
    let mut blobs = 0;
    for meta in listed {
        let bytes = store
            .get(&meta.location)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("body");
        blobs += usize::from(meta.location.as_ref().starts_with("repo/blobs/"));
        for (key, body) in FILES {
            assert!(
                !contains(&bytes, body.as_bytes()),
                "{} holds {body}",
                meta.location
            );
            assert!(
                !contains(&bytes, key.as_bytes()),
                "{} names {key}",
                meta.location
            );
        }
    }
    assert_eq!(blobs, 4);

    let restored = cli.path("restored");
    let s = json(
        &cli.expect(
            0,
            &[
                "--json",
                "restore",
                "artifacts",
                "latest",
                "--to",
                &file_url(&restored),
            ],
        )
        .await,
    );
    assert_eq!(s["copied"].as_u64(), Some(4), "{s:#}");
    assert_eq!(read_tree(&restored), tree(FILES));
}

/// `backup artifacts` waits while a prune runs (its live activity marker
/// in the repository) and says so on stderr; once the prune is gone it
/// goes on and records its inventory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_says_that_it_waits_for_a_running_prune() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let cli = Cli::new();
    let arts = cli.path("artifacts");
    let repo = cli.path("repo");
    write_files(&arts, FILES);
    cli.config(&format!(
        "site = \"primary\"\n[repository]\nurl = \"{}\"\n\
         [sites.primary]\ndatabase = \"postgres://127.0.0.1:9/none\"\nartifacts = \"{}\"\n",
        file_url(&repo),
        file_url(&arts)
    ));
    let first = cli.expect(0, &["backup", "artifacts"]).await;
    assert!(!first.stderr.contains("waiting"), "{}", first.stderr);

    // A prune that runs: its marker, just written (live for ten minutes
    // unless refreshed).
    let id = "20261122T080000Z-0000";
    let marker = repo.join("activity/prune").join(format!("{id}.json"));
    std::fs::create_dir_all(marker.parent().expect("parent")).expect("mkdir");
    std::fs::write(
        &marker,
        format!(
            r#"{{"version":1,"activity":"prune","id":"{id}","started":"2026-11-22T08:00:00Z","stale_after_seconds":600}}"#
        ),
    )
    .expect("marker");

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_warmspare"))
        .args(["--json", "backup", "artifacts"])
        .current_dir(cli.dir.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_BACKTRACE", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the warmspare binary runs");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut seen = Vec::new();
    let waiting = tokio::time::timeout(std::time::Duration::from_secs(120), async {
        while let Some(line) = stderr.next_line().await.expect("read stderr") {
            seen.push(line.clone());
            if line.contains("waiting for a running prune to finish") {
                return Some(line);
            }
        }
        None
    })
    .await
    .unwrap_or_else(|_| panic!("no waiting line on stderr: {seen:#?}"))
    .unwrap_or_else(|| panic!("the backup ended without waiting: {seen:#?}"));
    assert!(
        waiting.starts_with("backup: ") && waiting.contains(&format!("activity/prune/{id}.json")),
        "{waiting}"
    );
    // Still waiting: nothing recorded yet.
    let inventories = || {
        std::fs::read_dir(repo.join("inventories"))
            .expect("inventories")
            .count()
    };
    assert_eq!(inventories(), 1, "only the first backup's inventory");

    // The prune ends; the backup goes on.
    std::fs::remove_file(&marker).expect("remove the marker");
    let rest = tokio::spawn(async move {
        let mut rest = Vec::new();
        while let Some(line) = stderr.next_line().await.expect("read stderr") {
            rest.push(line);
        }
        rest
    });
    let mut stdout = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut child.stdout.take().expect("stdout"), &mut stdout)
        .await
        .expect("read stdout");
    let status = child.wait().await.expect("wait");
    let rest = rest.await.expect("stderr reader");
    assert_eq!(status.code(), Some(0), "{seen:#?}\n{rest:#?}\n{stdout}");
    assert!(!rest.iter().any(|l| l.contains("panicked")), "{rest:#?}");
    let summary: Value = serde_json::from_str(&stdout).expect("JSON summary");
    assert_eq!(summary["unchanged"].as_u64(), Some(4), "{summary:#}");
    assert_eq!(inventories(), 2);
}
