//! Privileges are restored after the data, as `pg_restore` orders them: a
//! dump in which the owner revoked its own rights on a table still
//! restores when the owner (not a superuser) restores it, and the restored
//! privileges equal the source's.

use time::OffsetDateTime;
use warmspare_snapshot::{LogicalBackupOptions, RestoreOptions, backup_logical, restore_logical};
use warmspare_testkit::PostgresCluster;

use crate::backend;

/// `relacl` of every table of `db`, by name.
async fn acls(pg: &PostgresCluster, db: &str) -> String {
    pg.psql_in(
        db,
        "SELECT string_agg(relname || '=' || coalesce(relacl::text, '-'), ' ' ORDER BY relname) \
         FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'",
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_that_revoked_its_own_rights_restores_with_them() {
    let (source, target) = tokio::join!(PostgresCluster::start(), PostgresCluster::start());
    let (source, target) = (source.unwrap(), target.unwrap());
    for pg in [&source, &target] {
        pg.psql_in(
            "postgres",
            "CREATE ROLE app LOGIN CREATEDB; CREATE ROLE reader",
        )
        .await
        .unwrap();
    }
    source
        .psql_in("postgres", "CREATE DATABASE shop OWNER app")
        .await
        .unwrap();
    source
        .psql_in(
            "shop",
            "SET ROLE app; \
             CREATE TABLE orders (id int PRIMARY KEY, note text); \
             INSERT INTO orders SELECT g, md5(g::text) FROM generate_series(1, 3000) g; \
             CREATE TABLE audit (id int); INSERT INTO audit VALUES (1), (2); \
             REVOKE INSERT, UPDATE, DELETE ON orders FROM app; \
             GRANT SELECT ON orders TO reader; \
             ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO reader",
        )
        .await
        .unwrap();
    let want = acls(&source, "shop").await;
    assert!(want.contains("reader=r/app"), "{want}");

    let backend = backend::filesystem().await;
    let backup = backup_logical(
        &backend.repo,
        &source.url_for("shop"),
        &LogicalBackupOptions::default().with_bin_dir(source.bin_dir()),
        None,
        OffsetDateTime::now_utc(),
        None,
    )
    .await
    .unwrap();

    // The owner restores (no superuser): with the privileges applied
    // before the data, its COPY into `orders` is refused.
    let url = target.url_for("shop").replacen("postgres@", "app@", 1);
    assert!(url.contains("app@"), "{url}");
    let report = restore_logical(
        &backend.repo,
        &backup.manifest.id,
        &url,
        None,
        &RestoreOptions::default().with_bin_dir(target.bin_dir()),
        None,
    )
    .await
    .unwrap_or_else(|e| panic!("restore as the owner: {e}"));
    assert_eq!(report.tables_checked, Some(2));
    assert_eq!(acls(&target, "shop").await, want);
    let rows = target
        .psql_in("shop", "SELECT count(*) FROM orders")
        .await
        .unwrap();
    assert_eq!(rows.trim(), "3000");
    let defaults = target
        .psql_in("shop", "SELECT count(*) FROM pg_default_acl")
        .await
        .unwrap();
    assert_eq!(defaults.trim(), "1", "the default privileges are restored");
}
