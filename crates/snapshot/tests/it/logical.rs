//! Logical snapshots: the directory format with `pg_dump --jobs`, stored
//! sizes that depend on the content only, and globals applied on request.

use time::OffsetDateTime;
use warmspare_snapshot::{
    Error, Event, LogicalBackupOptions, LogicalMeta, RestoreOptions, RestoreStep, backup_logical,
    catalog, restore_logical,
};
use warmspare_store::{Manifest, Repository};
use warmspare_testkit::PostgresCluster;

use crate::backend;
use crate::fixtures::{
    create_shop, databases, flip_byte, pgbench_init, plain_dump, psql_script, recorder, scalar,
};

async fn backup(
    repo: &Repository,
    pg: &PostgresCluster,
    db: &str,
    options: &LogicalBackupOptions,
) -> Manifest {
    backup_logical(
        repo,
        &pg.url_for(db),
        options,
        None,
        OffsetDateTime::now_utc(),
        None,
    )
    .await
    .unwrap_or_else(|e| panic!("backup: {e}"))
    .manifest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_directory_format_with_jobs_restores_identically() {
    let (source, target) = tokio::join!(PostgresCluster::start(), PostgresCluster::start());
    let (source, target) = (source.unwrap(), target.unwrap());
    create_shop(&source, "shop").await;
    pgbench_init(&source, "shop", 2).await;
    let expected = plain_dump(&source, "shop").await;
    let spool = tempfile::tempdir().unwrap();

    for backend in backend::all("logical-directory").await {
        let repo = &backend.repo;
        let name = backend.name;
        let (events, progress) = recorder();
        let options = LogicalBackupOptions::default()
            .with_bin_dir(source.bin_dir())
            .with_jobs(2)
            .with_spool_dir(spool.path());
        let backup = backup_logical(
            repo,
            &source.url_for("shop"),
            &options,
            Some(3),
            OffsetDateTime::now_utc(),
            Some(&progress),
        )
        .await
        .unwrap_or_else(|e| panic!("{name}: backup: {e}"));
        let meta = LogicalMeta::from_manifest(&backup.manifest).unwrap();
        assert_eq!(meta.format, "pg_dump-directory");
        assert!(meta.is_directory());
        assert_eq!(meta.options.jobs, 2);
        // One object per file of the dump: the TOC, one per table with
        // data, the large object's; each with its digests.
        let files = &backup.manifest.files;
        assert!(files.contains_key("database/toc.dat"), "{files:?}");
        let data: Vec<_> = files
            .iter()
            .filter(|(n, _)| {
                n.starts_with("database/") && n.ends_with(".dat") && *n != "database/toc.dat"
            })
            .collect();
        assert!(data.len() >= 10, "{:?}", files.keys());
        for (file, info) in files {
            assert_eq!(info.sha256.len(), 64, "{file}");
            assert_eq!(info.content_sha256.len(), 64, "{file}");
        }
        let largest = data.iter().max_by_key(|(_, i)| i.size).unwrap();
        assert!(largest.1.size > 10 << 20, "pgbench_accounts: {largest:?}");
        // Progress: bytes over all files, the last one the total.
        let dumped = events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                Event::Bytes(n) => Some(*n),
                _ => None,
            })
            .max()
            .unwrap();
        assert_eq!(dumped, backup.manifest.total_size());
        // The spool is gone.
        assert_eq!(std::fs::read_dir(spool.path()).unwrap().count(), 0);
        assert!(
            catalog::verify(repo, &backup.manifest.id)
                .await
                .unwrap()
                .is_ok()
        );

        // Restored with two jobs, then checked: the same full dump.
        let db = format!("dir_{name}");
        let report = restore_logical(
            repo,
            &backup.manifest.id,
            &target.url_for(&db),
            None,
            &RestoreOptions::default()
                .with_bin_dir(target.bin_dir())
                .with_jobs(2)
                .with_spool_dir(spool.path()),
            None,
        )
        .await
        .unwrap_or_else(|e| panic!("{name}: restore: {e}"));
        assert_eq!(report.bytes, backup.manifest.total_size());
        assert_eq!(
            report.tables_checked,
            meta.row_counts.as_ref().map(Vec::len)
        );
        let actual = plain_dump(&target, &db).await;
        assert!(actual == expected, "{name}: the restored copy differs");
        assert_eq!(std::fs::read_dir(spool.path()).unwrap().count(), 0);

        // One table's object corrupted: verify and restore name it, and the
        // database restored before is still there.
        let object = format!("snapshots/{}/{}", backup.manifest.id, largest.0);
        flip_byte(repo, &object).await;
        let verified = catalog::verify(repo, &backup.manifest.id).await.unwrap();
        assert_eq!(verified.failures.len(), 1, "{:?}", verified.failures);
        assert!(verified.failures[0].to_string().contains(&object));
        let e = restore_logical(
            repo,
            &backup.manifest.id,
            &target.url_for(&db),
            None,
            &RestoreOptions::default()
                .with_bin_dir(target.bin_dir())
                .with_jobs(2),
            None,
        )
        .await
        .unwrap_err();
        assert_eq!(e.restore_step(), Some(RestoreStep::Restore), "{e}");
        assert!(
            matches!(
                e.root(),
                Error::Store(warmspare_store::Error::DigestMismatch { .. })
            ),
            "{e}"
        );
        assert!(e.to_string().contains(&object), "{e}");
        let names = databases(&target).await;
        assert!(
            names.contains(&db) && !names.iter().any(|d| d.contains("staging")),
            "{names:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_backups_of_a_quiet_database_are_stored_identically() {
    let pg = PostgresCluster::start().await.unwrap();
    create_shop(&pg, "shop").await;
    pgbench_init(&pg, "shop", 1).await;
    let backend = backend::filesystem().await;
    let repo = &backend.repo;

    // Custom format: the archive's header holds the time it was written,
    // so the content differs in a few bytes, and zstd may code those few
    // literals a few bytes apart. What must not happen is the stream's
    // timing moving block boundaries (each flush costs a block header and
    // the matches across it: far more than a few bytes over 10 MiB).
    let options = LogicalBackupOptions::default().with_bin_dir(pg.bin_dir());
    let first = backup(repo, &pg, "shop", &options).await;
    let second = backup(repo, &pg, "shop", &options).await;
    let (a, b) = (
        &first.files["database.pgdump"],
        &second.files["database.pgdump"],
    );
    assert_eq!(a.size, b.size);
    assert!(a.size > 10 << 20, "{a:?}");
    assert!(
        a.stored_size.abs_diff(b.stored_size) <= 64,
        "stored sizes differ by more than the header's time: {a:?} vs {b:?}"
    );

    // Directory format: every table's file is the same content, stored in
    // the same bytes.
    let options = options.with_jobs(2);
    let first = backup(repo, &pg, "shop", &options).await;
    let second = backup(repo, &pg, "shop", &options).await;
    assert_eq!(
        first.files.keys().collect::<Vec<_>>(),
        second.files.keys().collect::<Vec<_>>()
    );
    for (name, info) in &first.files {
        if name.ends_with("toc.dat") {
            continue;
        }
        assert_eq!(info, &second.files[name], "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_globals_are_applied_only_when_asked() {
    let (source, target) = tokio::join!(PostgresCluster::start(), PostgresCluster::start());
    let (source, target) = (source.unwrap(), target.unwrap());
    source.create_database("app").await.unwrap();
    source
        .psql_in(
            "app",
            "CREATE ROLE ws_readers NOLOGIN; \
             CREATE ROLE ws_app LOGIN CONNECTION LIMIT 7 PASSWORD 'app-secret'; \
             GRANT ws_readers TO ws_app; \
             ALTER ROLE ws_app SET work_mem = '7MB'; \
             COMMENT ON ROLE ws_app IS 'the application'; \
             CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2); \
             GRANT SELECT ON t TO ws_readers",
        )
        .await
        .unwrap();
    // The source's superuser has a password; the target's must keep its own.
    let superuser = source.superuser().to_owned();
    source
        .psql(&format!("ALTER ROLE {superuser} PASSWORD 'source-secret'"))
        .await
        .unwrap();
    let password_sql = format!(
        "SELECT coalesce(rolpassword, 'none') FROM pg_authid WHERE rolname = '{superuser}'"
    );
    let before = target.psql(&password_sql).await.unwrap();
    let role = |name: &'static str| {
        format!("SELECT rolcanlogin, rolconnlimit FROM pg_roles WHERE rolname = '{name}'")
    };

    let backend = backend::filesystem().await;
    let repo = &backend.repo;
    let options = LogicalBackupOptions::default()
        .with_bin_dir(source.bin_dir())
        .with_globals(true);
    let id = backup(repo, &source, "app", &options).await.id;
    let restore_options = RestoreOptions::default().with_bin_dir(target.bin_dir());

    // Without globals: the roles stay unknown to the target (the grant to
    // ws_readers is left out, or pg_restore would fail on it).
    let without = restore_logical(
        repo,
        &id,
        &target.url_for("app"),
        None,
        &restore_options.clone().with_no_privileges(true),
        None,
    )
    .await
    .unwrap();
    assert_eq!(without.globals, None);
    assert_eq!(target.psql(&role("ws_app")).await.unwrap(), "");

    // With it: created, with their attributes, password, membership,
    // settings and comment; the superuser untouched.
    let (events, progress) = recorder();
    let with = restore_logical(
        repo,
        &id,
        &target.url_for("app"),
        None,
        &restore_options.clone().with_globals(true),
        Some(&progress),
    )
    .await
    .unwrap_or_else(|e| panic!("restore with globals: {e}"));
    let report = with.globals.unwrap();
    assert_eq!(
        report.roles_created,
        vec!["ws_app", "ws_readers"],
        "{report:?}"
    );
    assert!(report.roles_existing.contains(&superuser), "{report:?}");
    assert!(
        report.skipped.iter().all(|s| !s.contains("failed")),
        "{report:?}"
    );
    assert!(
        events
            .lock()
            .unwrap()
            .contains(&Event::Restore(RestoreStep::ApplyGlobals))
    );
    assert_eq!(target.psql(&role("ws_app")).await.unwrap(), "t|7");
    assert_eq!(target.psql(&role("ws_readers")).await.unwrap(), "f|-1");
    assert_eq!(
        target
            .psql(
                "SELECT pg_has_role('ws_app', 'ws_readers', 'MEMBER'), \
                   rolpassword LIKE 'SCRAM-SHA-256$%', (SELECT setconfig::text FROM pg_db_role_setting \
                 WHERE setrole = a.oid AND setdatabase = 0), \
                   shobj_description(oid, 'pg_authid') \
                   FROM pg_authid a WHERE rolname = 'ws_app'"
            )
            .await
            .unwrap(),
        "t|t|{work_mem=7MB}|the application"
    );
    assert_eq!(target.psql(&password_sql).await.unwrap(), before);
    assert_eq!(
        target
            .psql_in(
                "app",
                "SELECT has_table_privilege('ws_readers', 't', 'SELECT')"
            )
            .await
            .unwrap(),
        "t",
        "the grants restored now that the role exists"
    );

    // Again: nothing left to create; existing roles are not altered.
    target
        .psql("ALTER ROLE ws_app CONNECTION LIMIT 3")
        .await
        .unwrap();
    let again = restore_logical(
        repo,
        &id,
        &target.url_for("app"),
        None,
        &restore_options.with_globals(true),
        None,
    )
    .await
    .unwrap();
    let report = again.globals.unwrap();
    assert!(report.roles_created.is_empty(), "{report:?}");
    assert!(report.roles_existing.contains(&"ws_app".to_owned()));
    assert_eq!(target.psql(&role("ws_app")).await.unwrap(), "t|3");

    // A snapshot without globals cannot apply them: refused before any
    // change.
    let plain = backup(
        repo,
        &source,
        "app",
        &LogicalBackupOptions::default().with_bin_dir(source.bin_dir()),
    )
    .await
    .id;
    let e = restore_logical(
        repo,
        &plain,
        &target.url_for("app"),
        None,
        &RestoreOptions::default()
            .with_bin_dir(target.bin_dir())
            .with_globals(true),
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(e.restore_step(), Some(RestoreStep::Resolve), "{e}");
    assert!(e.to_string().contains("no globals"), "{e}");
}

/// A plain dump with the rows of every COPY block sorted: equal for two
/// databases with the same contents whatever the rows' physical order.
fn sorted_rows(dump: &str) -> String {
    let mut out = Vec::new();
    let mut rows: Option<Vec<&str>> = None;
    for line in dump.lines() {
        match &mut rows {
            Some(block) if line == "\\." => {
                block.sort_unstable();
                out.append(block);
                out.push(line);
                rows = None;
            }
            Some(block) => block.push(line),
            None => {
                out.push(line);
                if line.starts_with("COPY ") && line.ends_with(" FROM stdin;") {
                    rows = Some(Vec::new());
                }
            }
        }
    }
    assert!(rows.is_none(), "unterminated COPY block");
    out.join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_parallel_load_restores_equal_contents_and_fails_safely() {
    let (source, target) = tokio::join!(PostgresCluster::start(), PostgresCluster::start());
    let (source, target) = (source.unwrap(), target.unwrap());
    create_shop(&source, "shop").await;
    pgbench_init(&source, "shop", 1).await;
    let expected = sorted_rows(&plain_dump(&source, "shop").await);
    let parallel = || {
        RestoreOptions::default()
            .with_bin_dir(target.bin_dir())
            .with_jobs(2)
            .with_parallel_load(true)
    };

    for backend in backend::all("logical-parallel-load").await {
        let repo = &backend.repo;
        let name = backend.name;
        let db = format!("par_{name}");
        let options = LogicalBackupOptions::default().with_bin_dir(source.bin_dir());
        let good = backup(repo, &source, "shop", &options).await;
        let meta = LogicalMeta::from_manifest(&good).unwrap();
        assert!(!meta.is_directory());

        // Twice: into a new database, then replacing it (the previous copy
        // kept, the early checkpoint taken).
        for round in 0..2 {
            let (events, progress) = recorder();
            let report = restore_logical(
                repo,
                &good.id,
                &target.url_for(&db),
                None,
                &parallel(),
                Some(&progress),
            )
            .await
            .unwrap_or_else(|e| panic!("{name}: parallel restore: {e}"));
            assert_eq!(report.jobs, 2);
            assert_eq!(report.bytes, good.total_size());
            assert_eq!(report.previous.is_some(), round == 1, "{report:?}");
            assert_eq!(
                report.tables_checked,
                meta.row_counts.as_ref().map(Vec::len)
            );
            let streamed = events
                .lock()
                .unwrap()
                .iter()
                .filter_map(|e| match e {
                    Event::Bytes(n) => Some(*n),
                    _ => None,
                })
                .max();
            assert_eq!(streamed, Some(good.total_size()));
            let actual = sorted_rows(&plain_dump(&target, &db).await);
            if actual != expected {
                let diff: Vec<_> = expected
                    .lines()
                    .zip(actual.lines())
                    .filter(|(a, b)| a != b)
                    .take(5)
                    .collect();
                panic!("{name}: the contents differ: {diff:#?}");
            }
            // The large table was written by more than one COPY (each its
            // own transaction), i.e. over both connections.
            assert!(
                scalar(
                    &target,
                    &db,
                    "SELECT count(DISTINCT xmin::text) FROM pgbench_accounts"
                )
                .await
                    >= 2
            );
            assert_eq!(
                scalar(&target, &db, "SELECT nextval('shop.order_no')").await,
                1007
            );
        }
        let before = plain_dump(&target, &db).await;

        // A corrupt dump: the digest says so, naming the object.
        let corrupt = backup(repo, &source, "shop", &options).await;
        let object = format!("snapshots/{}/database.pgdump", corrupt.id);
        flip_byte(repo, &object).await;
        let e = restore_logical(
            repo,
            &corrupt.id,
            &target.url_for(&db),
            None,
            &parallel(),
            None,
        )
        .await
        .unwrap_err();
        assert_eq!(e.restore_step(), Some(RestoreStep::Restore), "{name}: {e}");
        assert!(
            matches!(
                e.root(),
                Error::Store(warmspare_store::Error::DigestMismatch { .. })
            ),
            "{name}: {e}"
        );
        assert!(e.to_string().contains(&object), "{e}");
        assert_eq!(plain_dump(&target, &db).await, before, "{name}");
    }

    // A COPY that fails midway (the last row of a table split over both
    // connections breaks a constraint the catalog claims holds, so the
    // dump creates it with the table): the restore fails naming the
    // table, and the database restored before is untouched.
    psql_script(
        &source,
        "shop",
        "CREATE TABLE shop.guarded (x int, pad text);\n\
         INSERT INTO shop.guarded SELECT g, repeat('p', 20) FROM generate_series(1, 150000) g;\n\
         INSERT INTO shop.guarded VALUES (-1, 'bad');\n\
         ALTER TABLE shop.guarded ADD CONSTRAINT positive CHECK (x > 0) NOT VALID;\n\
         UPDATE pg_constraint SET convalidated = true WHERE conname = 'positive';\n",
    )
    .await;
    let backend = backend::filesystem().await;
    let repo = &backend.repo;
    let db = "par_failing";
    let options = LogicalBackupOptions::default().with_bin_dir(source.bin_dir());
    let first = backup(repo, &source, "shop", &options).await;
    target.create_database(db).await.unwrap();
    target
        .psql_in(
            db,
            "CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)",
        )
        .await
        .unwrap();
    let e = restore_logical(
        repo,
        &first.id,
        &target.url_for(db),
        None,
        &parallel(),
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(e.restore_step(), Some(RestoreStep::Restore), "{e}");
    let message = e.to_string();
    assert!(
        message.contains("loading table shop.guarded") && message.contains("positive"),
        "{message}"
    );
    assert_eq!(scalar(&target, db, "SELECT x FROM kept").await, 42);
    let names = databases(&target).await;
    assert!(!names.iter().any(|d| d.contains("staging")), "{names:?}");
}
