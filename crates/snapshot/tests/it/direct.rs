//! The loader reads the data section straight from the custom-format
//! archive (`pg_restore --section=data` never runs), large objects and
//! sequences included; an archive it does not read (compressed by
//! `pg_dump` itself) goes through `pg_restore`'s SQL instead. Both give a
//! copy that dumps identically.

use std::path::Path;

use time::OffsetDateTime;
use warmspare_snapshot::{LogicalBackupOptions, RestoreOptions, backup_logical, restore_logical};
use warmspare_testkit::PostgresCluster;

use crate::backend;
use crate::fixtures::{create_shop, fake_tool, plain_dump, scalar};

/// A directory of the cluster's tools in which `name` logs its arguments
/// (one line per run) to `log` before running the real one, with `extra`
/// arguments appended.
fn logging_tools(real: &Path, dir: &Path, name: &str, extra: &str) -> std::path::PathBuf {
    for entry in std::fs::read_dir(real).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != name {
            std::os::unix::fs::symlink(entry.path(), dir.join(entry.file_name())).unwrap();
        }
    }
    let log = dir.join(format!("{name}.log"));
    fake_tool(
        dir,
        name,
        &format!(
            r#"echo "$@" >> {log}
exec {real} "$@" {extra}"#,
            log = log.display(),
            real = real.join(name).display(),
        ),
    );
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_section_is_read_from_the_archive_or_else_by_pg_restore() {
    let (source, target) = tokio::join!(PostgresCluster::start(), PostgresCluster::start());
    let (source, target) = (source.unwrap(), target.unwrap());
    create_shop(&source, "shop").await;
    let expected = plain_dump(&source, "shop").await;
    assert!(expected.contains("lo_create") && expected.contains("setval"));
    let backend = backend::filesystem().await;
    let repo = &backend.repo;
    let source = &source;
    let backup = |options: LogicalBackupOptions| async move {
        backup_logical(
            repo,
            &source.url_for("shop"),
            &options,
            None,
            OffsetDateTime::now_utc(),
            None,
        )
        .await
        .unwrap()
    };
    let restore = |id, db: &'static str, bin: std::path::PathBuf, jobs| {
        let url = target.url_for(db);
        async move {
            restore_logical(
                repo,
                &id,
                &url,
                None,
                &RestoreOptions::default()
                    .with_bin_dir(bin)
                    .with_jobs(jobs)
                    .with_parallel_load(jobs > 1),
                None,
            )
            .await
            .unwrap()
        }
    };

    // warmspare's own backup: pg_restore runs the schema, never the data.
    let plain = backup(LogicalBackupOptions::default().with_bin_dir(source.bin_dir())).await;
    for (db, jobs) in [("direct", 1), ("direct_parallel", 2)] {
        let tools = tempfile::tempdir().unwrap();
        let log = logging_tools(target.bin_dir(), tools.path(), "pg_restore", "");
        let report = restore(plain.manifest.id.clone(), db, tools.path().into(), jobs).await;
        assert_eq!(
            report.tables_checked,
            plain.meta.row_counts.as_ref().map(Vec::len)
        );
        let runs = std::fs::read_to_string(&log).unwrap();
        assert!(runs.contains("--section=pre-data"), "{runs}");
        assert!(runs.contains("--section=post-data"), "{runs}");
        assert!(!runs.contains("--section=data"), "{runs}");
        if jobs == 1 {
            // Rows in the source's order: the dumps are identical.
            assert_eq!(plain_dump(&target, db).await, expected);
        }
        assert_eq!(
            scalar(&target, db, "SELECT count(*) FROM pg_largeobject_metadata").await,
            scalar(
                source,
                "shop",
                "SELECT count(*) FROM pg_largeobject_metadata"
            )
            .await,
        );
        assert_eq!(
            scalar(
                &target,
                db,
                "SELECT sum(length(lo_get(oid))) FROM pg_largeobject_metadata"
            )
            .await,
            scalar(
                source,
                "shop",
                "SELECT sum(length(lo_get(oid))) FROM pg_largeobject_metadata"
            )
            .await,
        );
        assert_eq!(
            scalar(&target, db, "SELECT last_value FROM shop.order_no").await,
            scalar(source, "shop", "SELECT last_value FROM shop.order_no").await,
        );
    }

    // A dump that pg_dump compressed itself: the loader leaves its data to
    // pg_restore, and the copy is the same.
    let dump_tools = tempfile::tempdir().unwrap();
    let dumps = logging_tools(
        source.bin_dir(),
        dump_tools.path(),
        "pg_dump",
        "--compress=6",
    );
    let compressed = backup(LogicalBackupOptions::default().with_bin_dir(dump_tools.path())).await;
    assert!(
        std::fs::read_to_string(&dumps)
            .unwrap()
            .contains("--format=custom")
    );
    let tools = tempfile::tempdir().unwrap();
    let log = logging_tools(target.bin_dir(), tools.path(), "pg_restore", "");
    restore(
        compressed.manifest.id.clone(),
        "fallback",
        tools.path().into(),
        1,
    )
    .await;
    let runs = std::fs::read_to_string(&log).unwrap();
    assert!(runs.contains("--section=data"), "{runs}");
    assert_eq!(plain_dump(&target, "fallback").await, expected);
}
