//! `restore db --jobs 2 --parallel-load` end to end: a multi-MB table split
//! over two connections, other tables, sequences and a large object arrive
//! with equal contents; nonsense combinations are refused.

use std::path::Path;

use serde_json::Value;
use warmspare_testkit::PostgresCluster;

use crate::{Run, file_url, warmspare};

/// `big.events` is about 12 MiB in COPY text: the parallel loader cuts it
/// into several 2 MiB chunks. Besides: tables with arrays, jsonb, bytea and
/// NULLs, an empty table, a sequence with state and a large object.
const FIXTURE_SQL: &str = "
CREATE SCHEMA big;
CREATE TABLE big.events (id bigint PRIMARY KEY, at timestamptz NOT NULL, kind text,
                         payload text, amount numeric(12,2));
INSERT INTO big.events
SELECT g, TIMESTAMPTZ '2026-01-01 00:00:00+00' + g * INTERVAL '1 second',
       CASE WHEN g % 7 = 0 THEN NULL ELSE 'kind ' || (g % 13) END,
       md5(g::text) || md5((g * 3)::text) || md5((g * 7)::text) || E' \\t ünï',
       g * 0.37
FROM generate_series(1, 80000) g;
CREATE TABLE public.customers (id serial PRIMARY KEY, name text NOT NULL, tags text[],
                               attrs jsonb, photo bytea);
INSERT INTO public.customers (name, tags, attrs, photo)
SELECT 'customer ' || g, ARRAY['t' || g, NULL], jsonb_build_object('g', g, 'odd', g % 2 = 1),
       decode(md5(g::text), 'hex')
FROM generate_series(1, 3000) g;
CREATE SCHEMA shop;
CREATE TABLE shop.orders (id int PRIMARY KEY, customer int REFERENCES public.customers (id),
                          note text);
INSERT INTO shop.orders SELECT g, 1 + g % 3000, repeat('n', g % 40) FROM generate_series(1, 5000) g;
CREATE TABLE shop.empty (x int);
CREATE SEQUENCE shop.order_no START 1000;
SELECT nextval('shop.order_no') FROM generate_series(1, 7);
SELECT lo_from_bytea(0, convert_to(repeat('large object content ', 5000), 'UTF8'));
";

/// The user tables of the fixture.
const TABLES: [&str; 4] = [
    "big.events",
    "public.customers",
    "shop.orders",
    "shop.empty",
];

/// What must be equal between the source and the restored copy: each
/// table's row count and contents (independent of the rows' physical
/// order), the sequences' state and the large objects.
async fn fingerprint(pg: &PostgresCluster, db: &str) -> Vec<String> {
    let mut out = Vec::new();
    for table in TABLES {
        let sql = format!(
            "SELECT count(*) || ' ' || coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '-') \
             FROM {table} t"
        );
        let got = pg.psql_in(db, &sql).await.expect("table digest");
        out.push(format!("{table}: {got}"));
    }
    for sql in [
        "SELECT last_value || ' ' || is_called FROM shop.order_no",
        "SELECT last_value || ' ' || is_called FROM public.customers_id_seq",
        "SELECT string_agg(md5(lo_get(oid)), ',' ORDER BY oid) FROM pg_largeobject_metadata",
    ] {
        out.push(pg.psql_in(db, sql).await.expect("digest query"));
    }
    out
}

/// Runs `warmspare` in `dir` and asserts it did not panic.
async fn run(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Run {
    let run = warmspare(dir, args, env).await;
    run.assert_no_panic();
    run
}

fn expect(run: Run, code: i32, args: &[&str]) -> Run {
    assert_eq!(run.code, code, "warmspare {args:?}:\n{run:#?}");
    run
}

fn json(run: &Run) -> Value {
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", run.stdout))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_db_parallel_load_restores_equal_contents() {
    let (primary, spare) = tokio::try_join!(PostgresCluster::start(), PostgresCluster::start())
        .expect("clusters start");
    primary.create_database("shop").await.expect("createdb");
    primary.psql_in("shop", FIXTURE_SQL).await.expect("fixture");
    let big_bytes: i64 = primary
        .psql_in(
            "shop",
            "SELECT sum(octet_length(t::text) + 1) FROM big.events t",
        )
        .await
        .expect("size")
        .parse()
        .expect("a number");
    assert!(big_bytes > 8 << 20, "big.events is too small: {big_bytes}");
    let source = fingerprint(&primary, "shop").await;

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("warmspare.toml"),
        format!(
            "site = \"primary\"\n[sites.primary]\ndatabase = \"{}\"\n[repository]\nurl = \"{}\"\n",
            primary.url_for("shop"),
            file_url(&dir.path().join("repo"))
        ),
    )
    .expect("config");
    let bin = primary.bin_dir().display().to_string();
    let env = [("WARMSPARE_PG_BIN_DIR", bin.as_str())];
    let dir = dir.path();
    let spare_shop = spare.url_for("shop");

    let args = ["--json", "backup", "db"];
    let backup = json(&expect(run(dir, &env, &args).await, 0, &args));
    let id = backup["id"].as_str().expect("id").to_owned();

    // --parallel-load needs two jobs or more: a usage error, nothing done.
    for args in [
        vec!["restore", "db", &id, "--to", &spare_shop, "--parallel-load"],
        vec![
            "restore",
            "db",
            &id,
            "--to",
            &spare_shop,
            "--jobs",
            "1",
            "--parallel-load",
        ],
    ] {
        let run = expect(run(dir, &env, &args).await, 2, &args);
        assert!(
            run.stderr
                .contains("--parallel-load needs --jobs 2 or more"),
            "{run:#?}"
        );
    }
    // And it is for logical restores into a database.
    let data = dir.join("data").display().to_string();
    let args = [
        "restore",
        "db",
        &id,
        "--to",
        &data,
        "--jobs",
        "2",
        "--parallel-load",
    ];
    let refused = expect(run(dir, &env, &args).await, 2, &args);
    assert!(refused.stderr.contains("--parallel-load"), "{refused:#?}");
    assert!(!Path::new(&data).exists());
    let databases = "SELECT count(*) FROM pg_database WHERE datname LIKE 'shop%'";
    assert_eq!(spare.psql(databases).await.expect("query"), "0");

    let args = [
        "--json",
        "restore",
        "db",
        &id,
        "--to",
        &spare_shop,
        "--jobs",
        "2",
        "--parallel-load",
    ];
    let restored = expect(run(dir, &env, &args).await, 0, &args);
    let report = json(&restored);
    assert_eq!(report["id"], id.as_str(), "{report:#}");
    assert_eq!(report["database"], "shop", "{report:#}");
    assert_eq!(report["jobs"], 2, "{report:#}");
    assert_eq!(report["tables_checked"], TABLES.len(), "{report:#}");
    assert_eq!(report["previous"], Value::Null, "{report:#}");
    assert!(
        report["bytes"]
            .as_u64()
            .is_some_and(|b| b > big_bytes as u64),
        "{report:#}"
    );
    assert!(
        restored.stderr.contains("restore: swap"),
        "{}",
        restored.stderr
    );
    assert_eq!(fingerprint(&spare, "shop").await, source);
    // The large table (several 2 MiB chunks) was written over both
    // connections: its rows carry the transaction ids of more than one
    // COPY.
    let copies: u32 = spare
        .psql_in("shop", "SELECT count(DISTINCT xmin::text) FROM big.events")
        .await
        .expect("xmin")
        .parse()
        .expect("a number");
    assert!(copies >= 2, "big.events loaded by {copies} COPY");

    // A snapshot taken with `backup db --jobs` (directory format) is
    // restored with pg_restore --jobs: --parallel-load does not apply, and
    // the restore says so.
    let args = ["--json", "backup", "db", "--jobs", "2"];
    let backup = json(&expect(run(dir, &env, &args).await, 0, &args));
    let directory_id = backup["id"].as_str().expect("id").to_owned();
    let args = [
        "--json",
        "restore",
        "db",
        &directory_id,
        "--to",
        &spare_shop,
        "--jobs",
        "2",
        "--parallel-load",
    ];
    let restored = expect(run(dir, &env, &args).await, 0, &args);
    let report = json(&restored);
    assert_eq!(report["id"], directory_id.as_str(), "{report:#}");
    assert_eq!(report["previous"], "shop__warmspare_previous", "{report:#}");
    assert!(
        restored
            .stderr
            .contains("--parallel-load does not apply to it"),
        "{}",
        restored.stderr
    );
    assert_eq!(fingerprint(&spare, "shop").await, source);
}
