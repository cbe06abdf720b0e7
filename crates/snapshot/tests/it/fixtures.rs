//! Shared test data and helpers.

use std::path::Path;
use std::sync::{Arc, Mutex};

use warmspare_snapshot::Event;
use warmspare_testkit::PostgresCluster;

/// Several schemas, odd identifiers, bytea, jsonb, arrays, a partitioned
/// table, identity columns, sequences with state, a view, an index, a
/// function, a large object with a comment.
pub(crate) const SHOP_SQL: &str = r#"
CREATE SCHEMA shop;
CREATE SCHEMA audit;
CREATE SCHEMA "Odd Schema";
CREATE TABLE shop.items (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    tags text[],
    matrix int[][],
    attrs jsonb,
    blob bytea,
    price numeric(10,2),
    created timestamptz NOT NULL DEFAULT now()
);
INSERT INTO shop.items (name, tags, matrix, attrs, blob, price)
SELECT 'item ' || g || E' \t\n ünïcødé ''quoted''',
       ARRAY['a' || g, NULL, 'b,c'],
       ARRAY[[g, g + 1], [g + 2, g + 3]],
       jsonb_build_object('n', g, 'nested', jsonb_build_object('x', g * 2, 'list', jsonb_build_array(1, 'two', NULL))),
       decode(md5(g::text), 'hex') || '\x00ff00'::bytea,
       g * 1.25
FROM generate_series(1, 3000) g;
CREATE INDEX items_attrs ON shop.items USING gin (attrs);
CREATE TABLE audit.log (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, item bigint REFERENCES shop.items (id), what text);
INSERT INTO audit.log (item, what) SELECT g, 'created' FROM generate_series(1, 500) g;
CREATE SEQUENCE shop.order_no START 1000;
SELECT nextval('shop.order_no') FROM generate_series(1, 7);
CREATE TABLE shop.events (id int, day date NOT NULL, payload jsonb) PARTITION BY RANGE (day);
CREATE TABLE shop.events_2026_10 PARTITION OF shop.events FOR VALUES FROM ('2026-10-01') TO ('2026-11-01');
CREATE TABLE shop.events_2026_11 PARTITION OF shop.events FOR VALUES FROM ('2026-11-01') TO ('2026-12-01');
INSERT INTO shop.events SELECT g, DATE '2026-10-15' + (g % 30), '{"k": [1,2,3]}' FROM generate_series(1, 400) g;
CREATE TABLE "Odd Schema"."we""ird Table" ("Col" int, "select" text);
INSERT INTO "Odd Schema"."we""ird Table" VALUES (1, 'a'), (2, NULL);
CREATE TABLE shop.empty (x int);
CREATE VIEW shop.expensive AS SELECT id, name FROM shop.items WHERE price > 100;
CREATE FUNCTION audit.item_count() RETURNS bigint LANGUAGE sql STABLE AS 'SELECT count(*) FROM shop.items';
COMMENT ON TABLE shop.items IS 'the catalogue';
SELECT lo_from_bytea(0, convert_to(repeat('large object content ', 5000), 'UTF8')) AS lo \gset
COMMENT ON LARGE OBJECT :lo IS 'a large object';
"#;

/// Creates database `db` on `pg` with [`SHOP_SQL`].
pub(crate) async fn create_shop(pg: &PostgresCluster, db: &str) {
    pg.create_database(db).await.unwrap();
    psql_script(pg, db, SHOP_SQL).await;
}

/// Runs a script with psql (variables and `\gset` work, unlike `-c`).
pub(crate) async fn psql_script(pg: &PostgresCluster, db: &str, sql: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("script.sql");
    std::fs::write(&file, sql).unwrap();
    let out = tokio::process::Command::new(pg.bin_dir().join("psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
        .arg(pg.url_for(db))
        .arg("-f")
        .arg(&file)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `pgbench -i -s <scale>` into `db`.
pub(crate) async fn pgbench_init(pg: &PostgresCluster, db: &str, scale: u32) {
    let out = tokio::process::Command::new(pg.bin_dir().join("pgbench"))
        .args(["-i", "-q", "-s", &scale.to_string()])
        .arg(pg.url_for(db))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "pgbench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A plain-format `pg_dump` of `db` (schema, data, large objects), without
/// the comment lines and the per-run `\restrict` keys.
pub(crate) async fn plain_dump(pg: &PostgresCluster, db: &str) -> String {
    let out = tokio::process::Command::new(pg.bin_dir().join("pg_dump"))
        .arg("--no-password")
        .arg(format!("--dbname={}", pg.url_for(db)))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "pg_dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| {
            !l.starts_with("--") && !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// One number from SQL.
pub(crate) async fn scalar(pg: &PostgresCluster, db: &str, sql: &str) -> i64 {
    pg.psql_in(db, sql).await.unwrap().parse().unwrap()
}

/// Database names on `pg`.
pub(crate) async fn databases(pg: &PostgresCluster) -> Vec<String> {
    pg.psql("SELECT datname FROM pg_database ORDER BY 1")
        .await
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Writes an executable shell script `name` into `dir`.
pub(crate) fn fake_tool(dir: &Path, name: &str, script: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A progress callback that records every event.
pub(crate) fn recorder() -> (Arc<Mutex<Vec<Event>>>, impl Fn(Event) + Send + Sync) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&events);
    (events, move |e| sink.lock().unwrap().push(e))
}

/// Flips one byte in the middle of a stored object, through the raw store.
pub(crate) async fn flip_byte(repo: &warmspare_store::Repository, path: &str) {
    use warmspare_store::object_store::{ObjectStoreExt, path::Path};
    let store = repo.store().object_store();
    let path = Path::from(path);
    let mut bytes = store
        .get(&path)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    store.put(&path, bytes.into()).await.unwrap();
}
