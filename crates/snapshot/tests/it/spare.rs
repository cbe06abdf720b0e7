//! Restore into the warm spare: failures at any step leave the current
//! database serving; a successful swap terminates its sessions and keeps
//! the previous copy.

use sqlx::{Connection, PgConnection};
use time::OffsetDateTime;
use warmspare_snapshot::{
    DeepVerifyStep, Error, LogicalBackupOptions, RestoreOptions, RestoreStep, backup_logical,
    catalog, restore_logical, verify_deep,
};
use warmspare_store::object_store::ObjectStoreExt;
use warmspare_store::{Repository, SnapshotId, layout};
use warmspare_testkit::PostgresCluster;

use crate::backend;
use crate::fixtures::{databases, flip_byte, scalar};

async fn backup(repo: &Repository, pg: &PostgresCluster) -> SnapshotId {
    let options = LogicalBackupOptions::default().with_bin_dir(pg.bin_dir());
    backup_logical(
        repo,
        &pg.url_for("app"),
        &options,
        Some(1),
        OffsetDateTime::now_utc(),
        None,
    )
    .await
    .unwrap()
    .manifest
    .id
}

async fn rows(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM t")
        .fetch_one(conn)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_restore_leaves_the_current_database_serving() {
    let pg = PostgresCluster::start().await.unwrap();
    pg.create_database("app").await.unwrap();
    pg.psql_in("app", "CREATE TABLE t (id int PRIMARY KEY, v text)")
        .await
        .unwrap();
    let options = |jobs| {
        RestoreOptions::default()
            .with_bin_dir(pg.bin_dir())
            .with_jobs(jobs)
    };

    for backend in backend::all("spare").await {
        let repo = &backend.repo;
        let name = backend.name;
        let spare = format!("spare_{name}");
        let spare_url = pg.url_for(&spare);
        let restore = |id: SnapshotId, jobs| {
            let url = spare_url.clone();
            let options = options(jobs);
            async move { restore_logical(repo, &id, &url, None, &options, None).await }
        };
        pg.psql_in(
            "app",
            "TRUNCATE t; INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 100) g",
        )
        .await
        .unwrap();
        let first = backup(repo, &pg).await;
        let report = restore(first.clone(), 1).await.unwrap();
        assert_eq!(report.previous, None);

        // An application's session on the spare.
        let mut session = PgConnection::connect(&spare_url).await.unwrap();
        assert_eq!(rows(&mut session).await.unwrap(), 100);

        pg.psql_in(
            "app",
            "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(101, 150) g",
        )
        .await
        .unwrap();

        // 1. The row-count check fails (the manifest is rewritten to
        //    expect other counts): the staging copy is dropped.
        let miscounted = backup(repo, &pg).await;
        let mut manifest = repo.read_manifest(&miscounted).await.unwrap();
        let counts = manifest.meta["row_counts"].as_array_mut().unwrap();
        assert_eq!(counts[0]["table"], "t");
        counts[0]["rows"] = 999.into();
        repo.store()
            .object_store()
            .put(
                &layout::manifest(&miscounted),
                manifest.to_bytes().unwrap().into(),
            )
            .await
            .unwrap();
        let e = restore(miscounted, 1).await.unwrap_err();
        assert_eq!(
            e.restore_step(),
            Some(RestoreStep::CheckRowCounts),
            "{name}: {e}"
        );
        assert!(matches!(e.root(), Error::RowCountMismatch { .. }), "{e}");
        let message = e.to_string();
        assert!(
            message.contains("public.t has 150 rows, expected 999"),
            "{message}"
        );
        assert!(
            message.contains(&format!("database {spare} left untouched")),
            "{message}"
        );
        assert_eq!(
            rows(&mut session).await.unwrap(),
            100,
            "old data still served"
        );

        // 2. A flipped byte in the stored dump: verify and both restore
        //    modes fail naming the object.
        let corrupt = backup(repo, &pg).await;
        let object = format!("snapshots/{corrupt}/database.pgdump");
        flip_byte(repo, &object).await;
        let report = catalog::verify(repo, &corrupt).await.unwrap();
        assert!(!report.is_ok());
        assert!(
            report.failures[0].to_string().contains(&object),
            "{:?}",
            report.failures
        );
        for jobs in [1, 2] {
            let e = restore(corrupt.clone(), jobs).await.unwrap_err();
            assert_eq!(e.restore_step(), Some(RestoreStep::Restore), "{name}: {e}");
            assert!(
                matches!(
                    e.root(),
                    Error::Store(warmspare_store::Error::DigestMismatch { .. })
                ),
                "{name}, {jobs} jobs: {e}"
            );
            assert!(e.to_string().contains(&object), "{e}");
        }
        assert_eq!(
            rows(&mut session).await.unwrap(),
            100,
            "old data still served"
        );
        let e = verify_deep(repo, &corrupt, &pg.url(), &options(1), None)
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::DeepVerify {
                    step: DeepVerifyStep::Restore,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains(&object), "{e}");
        let names = databases(&pg).await;
        assert!(
            !names
                .iter()
                .any(|d| d.contains("staging") || d.contains("verify")),
            "{names:?}"
        );

        // 3. A good restore while sessions use the database, one of them
        //    idle in a transaction holding a lock: they are terminated and
        //    the new copy is swapped in; the old one is kept.
        let mut locker = PgConnection::connect(&spare_url).await.unwrap();
        sqlx::query("BEGIN").execute(&mut locker).await.unwrap();
        sqlx::query("LOCK TABLE t IN ACCESS SHARE MODE")
            .execute(&mut locker)
            .await
            .unwrap();
        let good = backup(repo, &pg).await;
        let report = restore(good.clone(), 1).await.unwrap();
        assert!(report.terminated_sessions >= 2, "{report:?}");
        let previous = format!("{spare}__warmspare_previous");
        assert_eq!(report.previous.as_deref(), Some(previous.as_str()));
        assert_eq!(scalar(&pg, &spare, "SELECT count(*) FROM t").await, 150);
        assert_eq!(scalar(&pg, &previous, "SELECT count(*) FROM t").await, 100);
        assert!(
            rows(&mut session).await.is_err(),
            "the old session was closed"
        );

        // 4. The next successful restore replaces the previous copy.
        restore(first, 2).await.unwrap();
        assert_eq!(scalar(&pg, &spare, "SELECT count(*) FROM t").await, 100);
        assert_eq!(scalar(&pg, &previous, "SELECT count(*) FROM t").await, 150);
        let names = databases(&pg).await;
        assert!(!names.iter().any(|d| d.contains("staging")), "{names:?}");
    }
}
