//! A realistic database backed up and restored into another cluster, on
//! every backend: the restored copy dumps identically.

use time::OffsetDateTime;
use warmspare_snapshot::{
    BackupStep, DeepVerifyStep, Event, LogicalBackupOptions, LogicalMeta, RestoreOptions,
    RestoreStep, SnapshotStatus, backup_logical, catalog, restore_logical, verify_deep,
};
use warmspare_store::SnapshotKind;
use warmspare_testkit::PostgresCluster;

use crate::backend;
use crate::fixtures::{create_shop, databases, pgbench_init, plain_dump, recorder, scalar};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_restore_into_another_cluster() {
    let (source, target) = tokio::join!(PostgresCluster::start(), PostgresCluster::start());
    let (source, target) = (source.unwrap(), target.unwrap());
    create_shop(&source, "shop").await;
    pgbench_init(&source, "shop", 2).await;
    let expected = plain_dump(&source, "shop").await;
    assert!(expected.contains("pgbench_accounts") && expected.contains("lo_create"));

    for (n, backend) in backend::all("roundtrip").await.into_iter().enumerate() {
        let repo = &backend.repo;
        let (events, progress) = recorder();
        let options = LogicalBackupOptions::default()
            .with_bin_dir(source.bin_dir())
            .with_globals(true);
        let backup = backup_logical(
            repo,
            &source.url_for("shop"),
            &options,
            Some(42),
            OffsetDateTime::now_utc(),
            Some(&progress),
        )
        .await
        .unwrap_or_else(|e| panic!("{}: backup: {e}", backend.name));

        // The manifest: identity, counts, tools, epoch.
        let meta = LogicalMeta::from_manifest(&backup.manifest).unwrap();
        assert_eq!(meta, backup.meta);
        assert_eq!(backup.manifest.epoch, Some(42));
        assert_eq!(meta.database, "shop");
        assert!(meta.system_identifier.is_some());
        assert!(meta.server_version_num >= 100_000);
        assert!(meta.tools.pg_dump.starts_with("pg_dump (PostgreSQL)"));
        assert_eq!(meta.globals_file.as_deref(), Some("globals.sql"));
        let counts = meta.row_counts.as_ref().unwrap();
        let rows = |t: &str| counts.iter().find(|c| c.name() == t).map(|c| c.rows);
        assert_eq!(rows("public.pgbench_accounts"), Some(200_000));
        assert_eq!(rows("shop.items"), Some(3000));
        let october = scalar(&source, "shop", "SELECT count(*) FROM shop.events_2026_10").await;
        assert_eq!(rows("shop.events_2026_10"), Some(october as u64));
        assert_eq!(
            rows("shop.events"),
            None,
            "partitioned parents are not counted"
        );
        assert_eq!(rows("Odd Schema.we\"ird Table"), Some(2));
        assert_eq!(rows("shop.empty"), Some(0));
        // Progress: the steps in order, and bytes.
        let events = events.lock().unwrap().clone();
        let steps: Vec<BackupStep> = events
            .iter()
            .filter_map(|e| match e {
                Event::Backup(s) => Some(*s),
                _ => None,
            })
            .collect();
        assert_eq!(steps, BackupStep::ALL);
        let dumped = events
            .iter()
            .filter_map(|e| match e {
                Event::Bytes(n) => Some(*n),
                _ => None,
            })
            .max()
            .unwrap();
        assert_eq!(dumped, backup.manifest.files["database.pgdump"].size);
        assert!(dumped > 10 << 20, "a few MB of data: {dumped}");

        // Listing and verification.
        let listed = catalog::list(repo, true).await.unwrap();
        assert_eq!(listed.len(), 1);
        let line = &listed[0];
        assert_eq!(line.id, backup.manifest.id);
        assert_eq!(line.status, SnapshotStatus::Complete);
        assert_eq!(line.kind, Some(SnapshotKind::Logical));
        assert_eq!(line.database.as_deref(), Some("shop"));
        assert_eq!(line.size, Some(backup.manifest.total_size()));
        assert!(
            line.stored_size.unwrap() < line.size.unwrap() / 2,
            "zstd compresses"
        );
        assert!(line.duration.is_some());
        let json = serde_json::to_value(line).unwrap();
        assert_eq!(json["status"], "complete");
        assert_eq!(json["kind"], "logical");
        let latest = catalog::resolve(repo, "latest", Some(SnapshotKind::Logical))
            .await
            .unwrap();
        assert_eq!(latest.id, backup.manifest.id);
        let report = catalog::verify(repo, &backup.manifest.id).await.unwrap();
        assert!(report.is_ok() && report.files == 2, "{report:?}");

        // Restore into the other cluster: through the loader (one job) for
        // the first backend, spooled with two jobs for the second.
        let db = format!("copy_{}", backend.name);
        let jobs = if n == 0 { 1 } else { 2 };
        let (events, progress) = recorder();
        let restored = restore_logical(
            repo,
            &latest.id,
            &target.url_for(&db),
            None,
            &RestoreOptions::default()
                .with_bin_dir(target.bin_dir())
                .with_jobs(jobs),
            Some(&progress),
        )
        .await
        .unwrap_or_else(|e| panic!("{}: restore: {e}", backend.name));
        assert_eq!(restored.database, db);
        assert_eq!(restored.previous, None, "there was no database to replace");
        assert_eq!(restored.jobs, jobs);
        assert_eq!(restored.tables_checked, Some(counts.len()));
        let steps: Vec<RestoreStep> = events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                Event::Restore(s) => Some(*s),
                _ => None,
            })
            .collect();
        let without_globals: Vec<RestoreStep> = RestoreStep::ALL
            .iter()
            .copied()
            .filter(|s| *s != RestoreStep::ApplyGlobals)
            .collect();
        assert_eq!(steps, without_globals);

        let actual = plain_dump(&target, &db).await;
        if actual != expected {
            let diff: Vec<_> = expected
                .lines()
                .zip(actual.lines())
                .filter(|(a, b)| a != b)
                .take(5)
                .collect();
            panic!(
                "{}: the restored copy differs ({} vs {} lines): {diff:#?}",
                backend.name,
                expected.lines().count(),
                actual.lines().count()
            );
        }
        assert_eq!(
            scalar(&target, &db, "SELECT nextval('shop.order_no')").await,
            1007
        );

        // verify --deep: restore into a scratch database, counts, amcheck.
        if n == 0 {
            let (events, progress) = recorder();
            let deep = verify_deep(
                repo,
                &latest.id,
                &target.url(),
                &RestoreOptions::default().with_bin_dir(target.bin_dir()),
                Some(&progress),
            )
            .await
            .unwrap();
            assert_eq!(deep.tables_checked, Some(counts.len()));
            assert!(deep.indexes_checked.unwrap() >= 5, "{deep:?}");
            let steps = events
                .lock()
                .unwrap()
                .iter()
                .filter(|e| matches!(e, Event::DeepVerify(_)))
                .count();
            assert_eq!(steps, DeepVerifyStep::ALL.len());
            let names = databases(&target).await;
            assert!(!names.contains(&deep.scratch_database), "{names:?}");
        }
    }
}
