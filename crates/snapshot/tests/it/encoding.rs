//! A database in another encoding than UTF-8, with non-ASCII identifiers
//! and data: restored by `pg_restore` alone (the loader reads its SQL as
//! UTF-8), with one job and with `--parallel-load`, contents equal.

use time::OffsetDateTime;
use warmspare_snapshot::{LogicalBackupOptions, RestoreOptions, backup_logical, restore_logical};
use warmspare_testkit::PostgresCluster;

use crate::backend;

/// Every row of `"tablé"` and the sequence's state, as text.
async fn contents(pg: &PostgresCluster, db: &str) -> String {
    pg.psql_in(
        db,
        "SELECT string_agg(t::text, ',' ORDER BY t.id) FROM \"tablé\" t; \
         SELECT last_value FROM \"séquence\"",
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latin1_database_with_non_ascii_names_restores() {
    let (source, target) = tokio::join!(PostgresCluster::start(), PostgresCluster::start());
    let (source, target) = (source.unwrap(), target.unwrap());
    source
        .psql_in(
            "postgres",
            "CREATE DATABASE latin ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' \
             TEMPLATE template0",
        )
        .await
        .unwrap();
    source
        .psql_in(
            "latin",
            "CREATE TABLE \"tablé\" (id int PRIMARY KEY, nom text); \
             INSERT INTO \"tablé\" SELECT g, 'café n°' || g FROM generate_series(1, 2000) g; \
             CREATE SEQUENCE \"séquence\"; SELECT setval('\"séquence\"', 42)",
        )
        .await
        .unwrap();
    let want = contents(&source, "latin").await;
    assert!(want.contains("(7,\"café n°7\")"), "{}", &want[..80]);
    // Stored as LATIN1: `é` is one byte.
    let bytes = source
        .psql_in(
            "latin",
            "SELECT octet_length(relname) FROM pg_class WHERE relkind = 'r' AND relname LIKE 'tabl_'",
        )
        .await
        .unwrap();
    assert_eq!(bytes.trim(), "5");

    let backend = backend::filesystem().await;
    let backup = backup_logical(
        &backend.repo,
        &source.url_for("latin"),
        &LogicalBackupOptions::default().with_bin_dir(source.bin_dir()),
        None,
        OffsetDateTime::now_utc(),
        None,
    )
    .await
    .unwrap();

    for (db, options) in [
        ("one", RestoreOptions::default()),
        (
            "parallel",
            RestoreOptions::default()
                .with_jobs(2)
                .with_parallel_load(true),
        ),
    ] {
        let report = restore_logical(
            &backend.repo,
            &backup.manifest.id,
            &target.url_for(db),
            None,
            &options.with_bin_dir(target.bin_dir()),
            None,
        )
        .await
        .unwrap_or_else(|e| panic!("{db}: {e}"));
        assert_eq!(report.tables_checked, Some(1), "{db}");
        assert!(contents(&target, db).await == want, "{db}: other contents");
        let encoding = target
            .psql_in(db, "SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = current_database()")
            .await
            .unwrap();
        assert_eq!(encoding.trim(), "LATIN1", "{db}");
    }
}
