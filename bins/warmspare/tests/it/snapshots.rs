//! `backup db`, `list`, `verify`, `restore db` and `prune` against real
//! clusters, on a filesystem and an S3 repository, and their bad input.

use std::path::PathBuf;

use serde_json::Value;
use warmspare_store::object_store::{ObjectStoreExt, path::Path as ObjectPath};
use warmspare_testkit::{PostgresCluster, S3Server};

use crate::check::closed_port;
use crate::{Run, error_line, file_url, warmspare};

/// Several schemas, bytea, jsonb, arrays, numerics and a sequence with state.
const SHOP_SQL: &str = "
CREATE SCHEMA shop;
CREATE TABLE shop.items (id bigserial PRIMARY KEY, name text NOT NULL, tags text[],
                         attrs jsonb, blob bytea, price numeric(10,2));
INSERT INTO shop.items (name, tags, attrs, blob, price)
SELECT 'item ' || g || E' \\t ünïcødé', ARRAY['a' || g, NULL], jsonb_build_object('n', g),
       decode(md5(g::text), 'hex'), g * 1.25
FROM generate_series(1, 2000) g;
CREATE TABLE public.notes (id int PRIMARY KEY, body text);
INSERT INTO public.notes SELECT g, repeat('note ', g % 50) FROM generate_series(1, 500) g;
CREATE SEQUENCE shop.order_no START 1000;
SELECT nextval('shop.order_no') FROM generate_series(1, 7);
";

/// A digest of the tables' contents and the sequence's state.
const DIGEST_SQL: &str = "
SELECT (SELECT md5(string_agg(t::text, '|' ORDER BY id)) FROM shop.items t)
    || ' ' || (SELECT md5(string_agg(n::text, '|' ORDER BY id)) FROM public.notes n)
    || ' ' || (SELECT last_value FROM shop.order_no)";

async fn digest(pg: &PostgresCluster, db: &str) -> String {
    pg.psql_in(db, DIGEST_SQL).await.expect("digest query")
}

/// The repository under test.
enum Repo<'a> {
    File(PathBuf),
    S3 { s3: &'a S3Server, bucket: String },
}

impl Repo<'_> {
    fn name(&self) -> &'static str {
        match self {
            Repo::File(_) => "file",
            Repo::S3 { .. } => "s3",
        }
    }

    /// The `[repository]` table; the S3 secret comes from [`Repo::env`].
    fn toml(&self) -> String {
        match self {
            Repo::File(dir) => format!("[repository]\nurl = \"{}\"\n", file_url(dir)),
            Repo::S3 { s3, bucket } => format!(
                "[repository]\nurl = \"s3://{bucket}/warmspare\"\nendpoint = \"{}\"\n\
                 region = \"{}\"\nallow_http = true\naccess_key_id = \"{}\"\n",
                s3.endpoint(),
                s3.region(),
                s3.access_key_id()
            ),
        }
    }

    fn secret(&self) -> Option<&str> {
        match self {
            Repo::File(_) => None,
            Repo::S3 { s3, .. } => Some(s3.secret_access_key()),
        }
    }

    /// Flips one byte in the middle of a snapshot's stored object, behind
    /// warmspare's back: on disk, or straight through the S3 API.
    async fn flip_byte(&self, id: &str, file: &str) -> String {
        let relative = format!("snapshots/{id}/{file}");
        match self {
            Repo::File(dir) => {
                let path = dir.join(&relative);
                let mut bytes = std::fs::read(&path).expect("read object");
                let middle = bytes.len() / 2;
                bytes[middle] ^= 0x20;
                std::fs::write(&path, bytes).expect("write object");
            }
            Repo::S3 { s3, bucket } => {
                let store = s3.store_for_bucket(bucket).expect("s3 client");
                let path = ObjectPath::from(format!("warmspare/{relative}"));
                let got = store.get(&path).await.expect("get object");
                let mut bytes = got.bytes().await.expect("read object").to_vec();
                let middle = bytes.len() / 2;
                bytes[middle] ^= 0x20;
                store.put(&path, bytes.into()).await.expect("put object");
            }
        }
        relative
    }
}

/// A test directory with a configuration file and the environment to run
/// the binary with.
struct Setup {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Setup {
    fn new(repo: &Repo<'_>, sites: &str, pg: &PostgresCluster) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut env = vec![(
            "WARMSPARE_PG_BIN_DIR".to_owned(),
            pg.bin_dir().display().to_string(),
        )];
        if let Some(secret) = repo.secret() {
            env.push((
                "WARMSPARE_REPOSITORY_SECRET_ACCESS_KEY".into(),
                secret.into(),
            ));
        }
        let setup = Setup { dir, env };
        // Top-level keys (`site = ...`) must come before the first table.
        setup.write_config(&format!("{sites}\n{}", repo.toml()));
        setup
    }

    fn write_config(&self, text: &str) {
        std::fs::write(self.dir.path().join("warmspare.toml"), text).expect("write config");
    }

    fn append_config(&self, text: &str) {
        let path = self.dir.path().join("warmspare.toml");
        let old = std::fs::read_to_string(&path).expect("read config");
        self.write_config(&format!("{old}\n{text}"));
    }

    async fn run(&self, args: &[&str]) -> Run {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let run = warmspare(self.dir.path(), args, &env).await;
        run.assert_no_panic();
        run
    }

    /// Runs and expects exit code `code`.
    async fn expect(&self, code: i32, args: &[&str]) -> Run {
        let run = self.run(args).await;
        assert_eq!(run.code, code, "warmspare {args:?}:\n{run:#?}");
        run
    }
}

fn json(run: &Run) -> Value {
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", run.stdout))
}

fn ids(list: &Value) -> Vec<String> {
    list.as_array()
        .expect("a JSON array")
        .iter()
        .map(|s| s["id"].as_str().expect("an id").to_owned())
        .collect()
}

/// Waits until the UTC clock has passed the second in snapshot id `id`
/// (`YYYYMMDDTHHMMSSZ-xxxx`).
async fn next_second_after(id: &str) {
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    let stamp = id.split('-').next().expect("id time").to_owned();
    loop {
        let now = time::OffsetDateTime::now_utc()
            .format(&format)
            .expect("format");
        if now > stamp {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_list_verify_restore_prune_on_file_and_s3() {
    let (primary, spare) = tokio::try_join!(PostgresCluster::start(), PostgresCluster::start())
        .expect("clusters start");
    primary.create_database("shop").await.expect("createdb");
    primary.psql_in("shop", SHOP_SQL).await.expect("fixture");

    let files = tempfile::tempdir().expect("tempdir");
    let mut repos = vec![Repo::File(files.path().join("repo"))];
    if let Some(s3) = S3Server::try_shared().await.expect("s3 server") {
        let bucket = s3.unique_bucket("cli-snap").await.expect("bucket");
        repos.push(Repo::S3 { s3, bucket });
    }
    for repo in &repos {
        round_trip(repo, &primary, &spare).await;
    }
}

/// The whole cycle on one repository.
async fn round_trip(repo: &Repo<'_>, primary: &PostgresCluster, spare: &PostgresCluster) {
    let name = repo.name();
    let sites = format!(
        "site = \"primary\"\n[sites.primary]\ndatabase = \"{}\"\n[sites.spare]\ndatabase = \"{}\"\n",
        primary.url_for("shop"),
        spare.url_for("shop"),
    );
    let setup = Setup::new(repo, &sites, primary);
    let spare_shop = spare.url_for("shop");

    // A first backup initialises the repository.
    let run = setup.expect(0, &["--json", "backup", "db"]).await;
    let first = json(&run);
    let id1 = first["id"].as_str().expect("id").to_owned();
    assert_eq!(first["kind"], "logical", "{name}");
    assert_eq!(first["database"], "shop", "{name}");
    assert!(first["size"].as_u64().unwrap_or(0) > 100_000, "{first:#}");
    for step in ["backup: connect", "backup: dump", "backup: commit"] {
        assert!(run.stderr.contains(step), "{name}: {}", run.stderr);
    }
    let source = digest(primary, "shop").await;

    let run = setup.expect(0, &["list", "--json"]).await;
    let list = json(&run)["snapshots"].clone();
    assert_eq!(ids(&list), [id1.as_str()], "{name}");
    assert_eq!(list[0]["status"], "complete");
    assert_eq!(list[0]["kind"], "logical");
    assert_eq!(list[0]["database"], "shop");
    assert!(list[0]["stored_size"].as_u64().unwrap_or(0) > 0, "{list:#}");
    let run = setup.expect(0, &["list"]).await;
    assert!(run.stdout.starts_with("ID "), "{}", run.stdout);
    assert!(run.stdout.contains(&id1) && run.stdout.contains("logical  complete"));

    let run = setup.expect(0, &["verify", "latest"]).await;
    assert!(run.stdout.contains("checksums ok"), "{}", run.stdout);
    let run = setup
        .expect(0, &["verify", &id1, "--deep", "--scratch", &spare.url()])
        .await;
    assert!(run.stdout.contains("deep check ok"), "{}", run.stdout);
    assert!(run.stderr.contains("verify: amcheck"), "{}", run.stderr);

    // Restore into the spare: the same contents arrive.
    let run = setup
        .expect(
            0,
            &["--json", "restore", "db", "latest", "--to", &spare_shop],
        )
        .await;
    let report = json(&run);
    assert_eq!(report["id"], id1.as_str());
    assert_eq!(report["database"], "shop");
    assert!(run.stderr.contains("restore: swap"), "{}", run.stderr);
    assert_eq!(digest(spare, "shop").await, source, "{name}: restored data");

    // A second snapshot, corrupted behind warmspare's back.
    primary
        .psql_in(
            "shop",
            "INSERT INTO public.notes SELECT max(id) + 1, 'later' FROM public.notes",
        )
        .await
        .expect("insert");
    // Ids order by their second only: the second snapshot must start in a
    // later second than the first for "latest" and "newest first".
    next_second_after(&id1).await;
    let run = setup.expect(0, &["backup", "db"]).await;
    assert!(run.stdout.starts_with("snapshot "), "{}", run.stdout);
    let list = json(&setup.expect(0, &["list", "--json"]).await)["snapshots"].clone();
    let all = ids(&list);
    assert_eq!(all.len(), 2, "{list:#}");
    assert_eq!(all[1], id1, "newest first");
    let id2 = all[0].clone();
    assert!(
        run.stdout.starts_with(&format!("snapshot {id2}:")),
        "{}",
        run.stdout
    );
    let object = repo.flip_byte(&id2, "database.pgdump").await;

    let run = setup.expect(1, &["verify", &id2]).await;
    assert!(run.stdout.contains(&object), "{name}: {run:#?}");
    let run = setup.expect(1, &["verify", "latest", "--json"]).await;
    let outcome = json(&run);
    assert_eq!(outcome["ok"], false);
    assert!(
        outcome["failures"][0]
            .as_str()
            .is_some_and(|f| f.contains(&object) && f.contains("corrupt")),
        "{outcome:#}"
    );

    let run = setup
        .expect(1, &["restore", "db", &id2, "--to", &spare_shop])
        .await;
    let line = error_line(&run);
    assert!(line.contains(&object), "{name}: {line}");
    assert!(line.contains("database shop left untouched"), "{line}");
    assert_eq!(digest(spare, "shop").await, source, "{name}: spare kept");

    // Retention keeps only the newest: the first snapshot goes.
    setup.append_config(
        "[retention]\nkeep_last = 1\nkeep_daily = 0\nkeep_weekly = 0\nkeep_monthly = 0\n",
    );
    let run = setup.expect(0, &["prune", "--dry-run", "--json"]).await;
    let plan = json(&run);
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["groups"][0]["plan"]["delete"][0]["id"], id1.as_str());
    assert_eq!(plan["groups"][0]["plan"]["keep"][0]["id"], id2.as_str());
    assert_eq!(plan["deleted"], Value::Array(Vec::new()));
    assert!(run.stderr.contains("nothing was deleted"), "{}", run.stderr);
    let run = setup.expect(0, &["prune", "--dry-run"]).await;
    let delete_row = run
        .stdout
        .lines()
        .find(|l| l.contains(&id1))
        .unwrap_or_else(|| panic!("no row for {id1}:\n{}", run.stdout));
    assert!(delete_row.starts_with("delete "), "{delete_row}");
    assert_eq!(
        ids(&json(&setup.expect(0, &["list", "--json"]).await)["snapshots"].clone()).len(),
        2
    );

    let run = setup.expect(0, &["prune"]).await;
    assert!(run.stdout.contains("deleted "), "{}", run.stdout);
    let list = json(&setup.expect(0, &["list", "--json", "--all"]).await)["snapshots"].clone();
    assert_eq!(ids(&list), [id2.as_str()], "{name}: {list:#}");
    if let Repo::File(dir) = repo {
        assert!(!dir.join("snapshots").join(&id1).exists());
    }

    if let Some(secret) = repo.secret() {
        let run = setup.run(&["list"]).await;
        assert!(!run.all_output().contains(secret));
    }
}

/// `backup db --jobs 2 --globals` (directory format) and `restore db
/// --jobs 2 --with-globals`: the data and the source's role arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_db_jobs_and_restore_with_globals() {
    let (primary, spare) = tokio::try_join!(PostgresCluster::start(), PostgresCluster::start())
        .expect("clusters start");
    primary.create_database("shop").await.expect("createdb");
    primary.psql_in("shop", SHOP_SQL).await.expect("fixture");
    primary
        .psql("CREATE ROLE ws_cli_app LOGIN CONNECTION LIMIT 4")
        .await
        .expect("role");
    let files = tempfile::tempdir().expect("tempdir");
    let repo = Repo::File(files.path().join("repo"));
    let sites = format!(
        "site = \"primary\"\n[sites.primary]\ndatabase = \"{}\"\n",
        primary.url_for("shop"),
    );
    let setup = Setup::new(&repo, &sites, &primary);
    let spare_shop = spare.url_for("shop");
    let role = "SELECT rolconnlimit FROM pg_roles WHERE rolname = 'ws_cli_app'";

    let run = setup
        .expect(0, &["--json", "backup", "db", "--jobs", "2", "--globals"])
        .await;
    let id = json(&run)["id"].as_str().expect("id").to_owned();
    assert!(run.stderr.contains("backup: globals"), "{}", run.stderr);
    if let Repo::File(dir) = &repo {
        let toc = dir.join("snapshots").join(&id).join("database/toc.dat");
        assert!(toc.exists(), "{}", toc.display());
    }
    let run = setup.expect(0, &["verify", &id]).await;
    assert!(run.stdout.contains("checksums ok"), "{}", run.stdout);

    // Without --with-globals the role stays unknown to the spare.
    let run = setup
        .expect(
            0,
            &["restore", "db", &id, "--to", &spare_shop, "--jobs", "2"],
        )
        .await;
    assert!(!run.stdout.contains("globals"), "{}", run.stdout);
    assert_eq!(spare.psql(role).await.expect("query"), "");
    assert_eq!(digest(&spare, "shop").await, digest(&primary, "shop").await);

    let run = setup
        .expect(
            0,
            &["restore", "db", &id, "--to", &spare_shop, "--with-globals"],
        )
        .await;
    assert!(
        run.stderr.contains("restore: apply-globals"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.contains("1 roles created"), "{}", run.stdout);
    assert_eq!(spare.psql(role).await.expect("query"), "4");
    assert_eq!(digest(&spare, "shop").await, digest(&primary, "shop").await);

    // --with-globals is for database targets.
    let data = files.path().join("data");
    let run = setup
        .expect(
            2,
            &[
                "restore",
                "db",
                &id,
                "--to",
                &data.display().to_string(),
                "--with-globals",
            ],
        )
        .await;
    assert!(error_line(&run).contains("--with-globals"), "{run:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_exits_with_clear_codes() {
    const PASSWORD: &str = "sekrit-pw-5b1d";
    let pg = PostgresCluster::start().await.expect("cluster");
    pg.create_database("app").await.expect("createdb");
    pg.psql_in(
        "app",
        "CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2)",
    )
    .await
    .expect("fixture");
    let files = tempfile::tempdir().expect("tempdir");
    let repo = Repo::File(files.path().join("repo"));
    let down = format!("postgres://app:{PASSWORD}@127.0.0.1:{}/app", closed_port());
    let setup = Setup::new(
        &repo,
        &format!(
            "[sites.main]\ndatabase = \"{}\"\n[sites.down]\ndatabase = \"{down}\"\n",
            pg.url_for("app")
        ),
        &pg,
    );
    let copy = pg.url_for("copy");

    // A recovery point, too, needs to know which site this is.
    let run = setup.expect(2, &["backup"]).await;
    assert!(error_line(&run).contains("which site is this"), "{run:#?}");
    // Two sites and none chosen.
    let run = setup.expect(2, &["backup", "db"]).await;
    assert!(error_line(&run).contains("--site"), "{run:#?}");
    // Reading commands do not create a repository.
    let run = setup.expect(2, &["list"]).await;
    assert!(
        error_line(&run).contains("holds no warmspare repository"),
        "{run:#?}"
    );
    assert!(!files.path().join("repo").join("FORMAT").exists());

    setup.expect(0, &["--site", "main", "backup", "db"]).await;

    let run = setup
        .expect(
            2,
            &["restore", "db", "20200101T000000Z-abcd", "--to", &copy],
        )
        .await;
    assert!(error_line(&run).contains("not found"), "{run:#?}");
    let run = setup.expect(2, &["verify", "nonsense"]).await;
    assert!(
        error_line(&run).contains("is not a snapshot id"),
        "{run:#?}"
    );
    let run = setup
        .expect(
            2,
            &[
                "restore",
                "db",
                "latest",
                "--to",
                &copy,
                "--target-time",
                "2026-01-01T00:00:00Z",
            ],
        )
        .await;
    assert!(
        error_line(&run).contains("is a logical snapshot"),
        "{run:#?}"
    );
    let run = setup
        .expect(
            2,
            &[
                "restore",
                "db",
                "latest",
                "--to",
                &copy,
                "--target-time",
                "soon",
            ],
        )
        .await;
    assert!(run.stderr.contains("RFC 3339"), "{run:#?}");
    let run = setup
        .expect(
            2,
            &[
                "restore",
                "db",
                "latest",
                "--to",
                "/var/lib/postgresql/data",
            ],
        )
        .await;
    assert!(error_line(&run).contains("physical restore"), "{run:#?}");
    let run = setup.expect(2, &["verify", "latest", "--deep"]).await;
    assert!(error_line(&run).contains("--scratch"), "{run:#?}");
    let databases = pg
        .psql("SELECT string_agg(datname, ',') FROM pg_database")
        .await;
    assert!(
        !databases.expect("query").contains("copy"),
        "nothing was created"
    );

    // Unreachable servers: exit 1, one line, no password.
    let run = setup.expect(1, &["--site", "down", "backup", "db"]).await;
    let line = error_line(&run);
    assert!(line.contains("backup failed at step connect"), "{line}");
    assert!(!run.all_output().contains(PASSWORD), "{run:#?}");
    let target = down.replace("/app", "/other");
    let run = setup
        .expect(1, &["restore", "db", "latest", "--to", &target])
        .await;
    let line = error_line(&run);
    assert!(line.contains("restore failed at step connect"), "{line}");
    assert!(!run.all_output().contains(PASSWORD), "{run:#?}");
}
