//! Bad input: unreachable servers, wrong passwords, missing or old tools,
//! failing and cancelled dumps, unknown snapshots, refused requests.

use std::time::Duration;

use time::OffsetDateTime;
use warmspare_snapshot::{
    BackupStep, Error, LogicalBackupOptions, RestoreOptions, RestoreStep, backup_logical, catalog,
    restore_logical,
};
use warmspare_store::{SnapshotId, SnapshotKind};
use warmspare_testkit::PostgresCluster;

use crate::backend;
use crate::fixtures::{databases, fake_tool};

const PASSWORD: &str = "s3cret:p@ss";

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// A pg_dump that claims version 99, records its arguments and
/// environment, prints the start of an archive, then does what `rest` says.
fn fake_pg_dump(dir: &std::path::Path, rest: &str) {
    let log = dir.join("args");
    fake_tool(
        dir,
        "pg_dump",
        &format!(
            r#"if [ "$1" = "--version" ]; then echo "pg_dump (PostgreSQL) 99.0"; exit 0; fi
echo "$@" > {args}
echo "$PGPASSWORD" > {args}.password
printf 'PGDMP partial archive'
{rest}"#,
            args = log.display()
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_clear_errors() {
    let pg = PostgresCluster::builder()
        .password(PASSWORD)
        .start()
        .await
        .unwrap();
    pg.create_database("app").await.unwrap();
    pg.psql_in(
        "app",
        "CREATE TABLE t AS SELECT generate_series(1, 10) AS id",
    )
    .await
    .unwrap();
    let backend = backend::filesystem().await;
    let repo = &backend.repo;
    let bin = pg.bin_dir();
    let options = LogicalBackupOptions::default()
        .with_bin_dir(bin)
        .with_connect_timeout(Duration::from_secs(5));
    let restore_options = RestoreOptions::default().with_bin_dir(bin);

    // Wrong password: named, not echoed.
    let url = pg.url_with_password("app", Some("wrong-password"));
    let e = backup_logical(repo, &url, &options, None, now(), None)
        .await
        .unwrap_err();
    assert_eq!(e.backup_step(), Some(BackupStep::Connect), "{e}");
    assert!(
        matches!(e.root(), Error::AuthenticationFailed { .. }),
        "{e}"
    );
    assert!(!e.to_string().contains("wrong-password"), "{e}");
    assert!(!e.is_retryable());

    // Unreachable server.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("postgres://postgres:{PASSWORD}@127.0.0.1:{port}/app");
    let e = backup_logical(repo, &url, &options, None, now(), None)
        .await
        .unwrap_err();
    assert!(matches!(e.root(), Error::Unreachable { .. }), "{e}");
    assert!(
        e.to_string()
            .contains(&format!("postgres@127.0.0.1:{port}/app")),
        "{e}"
    );
    assert!(e.is_retryable());

    // Missing pg_dump.
    let empty = tempfile::tempdir().unwrap();
    let e = backup_logical(
        repo,
        &pg.url_for("app"),
        &options.clone().with_bin_dir(empty.path()),
        None,
        now(),
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(e.backup_step(), Some(BackupStep::CheckTools), "{e}");
    assert!(
        matches!(
            e.root(),
            Error::ToolNotFound {
                tool: "pg_dump",
                ..
            }
        ),
        "{e}"
    );

    // A pg_dump older than the server: refused before anything is written
    // (this fake prints a 9.6-style version; old_pg_dump.rs runs a real 13).
    let old = tempfile::tempdir().unwrap();
    fake_tool(
        old.path(),
        "pg_dump",
        r#"echo "pg_dump (PostgreSQL) 9.6.24""#,
    );
    let e = backup_logical(
        repo,
        &pg.url_for("app"),
        &options.clone().with_bin_dir(old.path()),
        None,
        now(),
        None,
    )
    .await
    .unwrap_err();
    assert!(matches!(e.root(), Error::ToolTooOld { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("pg_dump 9.6.24 is older than the server"),
        "{e}"
    );
    assert!(repo.incomplete_snapshots().await.unwrap().is_empty());

    // A pg_dump that fails after some output: no manifest, partial data
    // removed, its stderr in the error; the password went through the
    // environment, not argv.
    let failing = tempfile::tempdir().unwrap();
    fake_pg_dump(
        failing.path(),
        r#"echo "pg_dump: error: simulated failure" >&2; exit 1"#,
    );
    let e = backup_logical(
        repo,
        &pg.url_for("app"),
        &options.clone().with_bin_dir(failing.path()),
        None,
        now(),
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(e.backup_step(), Some(BackupStep::Dump), "{e}");
    assert!(e.to_string().contains("simulated failure"), "{e}");
    assert!(e.to_string().contains("exit status 1"), "{e}");
    let args = std::fs::read_to_string(failing.path().join("args")).unwrap();
    assert!(
        args.contains("--snapshot=") && args.contains("--format=custom"),
        "{args}"
    );
    assert!(
        !args.contains("s3cret"),
        "the password is not on argv: {args}"
    );
    let env = std::fs::read_to_string(failing.path().join("args.password")).unwrap();
    assert_eq!(env.trim(), PASSWORD);
    assert!(repo.list_snapshots().await.unwrap().is_empty());

    // A backup cancelled mid-stream (its future dropped): pg_dump is
    // killed, nothing is committed.
    let hanging = tempfile::tempdir().unwrap();
    fake_pg_dump(hanging.path(), "exec sleep 600");
    let cancelled = tokio::time::timeout(
        Duration::from_secs(3),
        backup_logical(
            repo,
            &pg.url_for("app"),
            &options.clone().with_bin_dir(hanging.path()),
            None,
            now(),
            None,
        ),
    )
    .await;
    assert!(cancelled.is_err(), "the fake pg_dump never ends");
    assert!(repo.list_snapshots().await.unwrap().is_empty());

    // A real backup through the password-protected server.
    let good = backup_logical(repo, &pg.url_for("app"), &options, None, now(), None)
        .await
        .unwrap();
    let id = good.manifest.id.clone();

    // Unknown and malformed snapshot ids.
    let unknown = SnapshotId::with_suffix(now(), 0xbeef);
    let e = restore_logical(
        repo,
        &unknown,
        &pg.url_for("spare"),
        None,
        &restore_options,
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(e.restore_step(), Some(RestoreStep::Resolve), "{e}");
    assert!(matches!(e.root(), Error::SnapshotNotFound { .. }), "{e}");
    let e = catalog::resolve(repo, "yesterday", None).await.unwrap_err();
    assert!(matches!(e, Error::InvalidSnapshotId { .. }), "{e}");
    let e = catalog::resolve(repo, "latest", Some(SnapshotKind::Physical))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NoSnapshots { .. }), "{e}");
    let e = catalog::verify(repo, &unknown).await.unwrap_err();
    assert!(matches!(e, Error::SnapshotNotFound { .. }), "{e}");

    // --target-time is refused for a logical snapshot.
    let e = restore_logical(
        repo,
        &id,
        &pg.url_for("spare"),
        Some(now()),
        &restore_options,
        None,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e.root(), Error::TargetTimeUnsupported { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("physical snapshot"), "{e}");

    // A target URL without a database, and one naming the source itself.
    let e = restore_logical(
        repo,
        &id,
        &format!("postgres://postgres:{PASSWORD}@127.0.0.1:{}", pg.port()),
        None,
        &restore_options,
        None,
    )
    .await
    .unwrap_err();
    assert!(matches!(e.root(), Error::InvalidTarget { .. }), "{e}");
    let e = restore_logical(repo, &id, &pg.url_for("app"), None, &restore_options, None)
        .await
        .unwrap_err();
    assert_eq!(e.restore_step(), Some(RestoreStep::Connect), "{e}");
    assert!(
        matches!(e.root(), Error::RefusedSourceOverwrite { .. }),
        "{e}"
    );

    // Restores into an unreachable server and with a wrong password fail
    // at connect, before anything changed.
    let url = format!("postgres://postgres:{PASSWORD}@127.0.0.1:{port}/spare");
    let e = restore_logical(repo, &id, &url, None, &restore_options, None)
        .await
        .unwrap_err();
    assert_eq!(e.restore_step(), Some(RestoreStep::Connect), "{e}");
    assert!(e.is_retryable(), "{e}");
    let url = pg.url_with_password("spare", Some("nope"));
    let e = restore_logical(repo, &id, &url, None, &restore_options, None)
        .await
        .unwrap_err();
    assert!(
        matches!(e.root(), Error::AuthenticationFailed { .. }),
        "{e}"
    );

    // And the good snapshot restores through the password too.
    let report = restore_logical(
        repo,
        &id,
        &pg.url_for("spare"),
        None,
        &restore_options,
        None,
    )
    .await
    .unwrap();
    assert_eq!(report.tables_checked, Some(1));
    assert!(databases(&pg).await.contains(&"spare".to_owned()));
}
