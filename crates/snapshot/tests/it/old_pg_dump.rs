//! A real `pg_dump` older than the server: PostgreSQL 13's, which
//! `scripts/install-deps` unpacks from Debian bullseye's
//! `postgresql-client-13` into `<workspace>/target/pg13`, against the test
//! cluster (PostgreSQL 15 on Debian 12).
//!
//! `WARMSPARE_OLD_PG_BIN` names another bin directory holding an older
//! `pg_dump`. When none is found the test is skipped with a note, unless
//! `WARMSPARE_REQUIRE_OLD_PG` is set (`scripts/test` sets it with
//! `CI=true`), which makes it fail.

use std::path::PathBuf;
use std::time::Duration;

use time::OffsetDateTime;
use warmspare_snapshot::{BackupStep, Error, LogicalBackupOptions, backup_logical};
use warmspare_testkit::PostgresCluster;

use crate::backend;

/// The bin directory of the older PostgreSQL client programs.
const OLD_PG_BIN_ENV: &str = "WARMSPARE_OLD_PG_BIN";
/// Fail instead of skipping when the older `pg_dump` is missing.
const REQUIRE_OLD_PG_ENV: &str = "WARMSPARE_REQUIRE_OLD_PG";

/// The older bin directory, or `None` (with a note, or a panic when it is
/// required) when it holds no `pg_dump`.
fn old_pg_bin() -> Option<PathBuf> {
    let bin = match std::env::var_os(OLD_PG_BIN_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/pg13/usr/lib/postgresql/13/bin"),
    };
    if bin.join("pg_dump").is_file() {
        return Some(bin);
    }
    let required = std::env::var_os(REQUIRE_OLD_PG_ENV).is_some_and(|v| !v.is_empty());
    assert!(
        !required,
        "{REQUIRE_OLD_PG_ENV} is set but {} holds no pg_dump (run scripts/install-deps)",
        bin.display()
    );
    eprintln!(
        "note: no older pg_dump in {} (run scripts/install-deps or set {OLD_PG_BIN_ENV}); skipping",
        bin.display()
    );
    None
}

/// The major version of a `pg_dump --version` line or a server version
/// (`13.16 (Debian 13.16-0+deb11u1)`, `15.18`): its first number.
fn major(version: &str) -> u32 {
    let digits: String = version
        .trim_start_matches(|c: char| !c.is_ascii_digit())
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_pg_dump_is_refused_before_anything_is_written() {
    let Some(old_bin) = old_pg_bin() else {
        return;
    };
    let old_version = std::process::Command::new(old_bin.join("pg_dump"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(old_version.status.success(), "{old_version:?}");
    let old_version = String::from_utf8(old_version.stdout).unwrap();
    let old_major = major(&old_version);

    let pg = PostgresCluster::start().await.unwrap();
    pg.create_database("app").await.unwrap();
    pg.psql_in(
        "app",
        "CREATE TABLE t AS SELECT generate_series(1, 10) AS id",
    )
    .await
    .unwrap();
    let server_version = pg.psql("SHOW server_version").await.unwrap();
    let server_major = major(&server_version);
    assert!(
        old_major < server_major && server_major >= 10,
        "the test needs a pg_dump older than the server: {old_version:?} against {server_version:?}"
    );

    let backend = backend::filesystem().await;
    let repo = &backend.repo;
    let options = LogicalBackupOptions::default()
        .with_bin_dir(&old_bin)
        .with_connect_timeout(Duration::from_secs(5));
    let e = backup_logical(
        repo,
        &pg.url_for("app"),
        &options,
        None,
        OffsetDateTime::now_utc(),
        None,
    )
    .await
    .unwrap_err();

    // Refused while connecting, before a snapshot is begun.
    assert_eq!(e.backup_step(), Some(BackupStep::Connect), "{e}");
    let Error::ToolTooOld {
        tool,
        tool_version,
        what,
        needed,
        needed_major,
    } = e.root()
    else {
        panic!("expected ToolTooOld, got {e}");
    };
    assert_eq!(*tool, "pg_dump");
    assert_eq!(major(tool_version), old_major, "{e}");
    assert!(
        old_version.contains(tool_version.as_str()),
        "the real version {tool_version:?} is named (from {old_version:?})"
    );
    assert_eq!(*what, "the server");
    assert_eq!(major(needed), server_major, "{e}");
    assert_eq!(*needed_major, server_major.to_string());
    let text = e.to_string();
    assert!(
        text.contains(&format!("pg_dump {tool_version} is older than the server")),
        "{text}"
    );
    assert!(
        text.contains(&format!("use pg_dump {server_major} or newer")),
        "{text}"
    );
    assert!(!e.is_retryable(), "{e}");

    // Nothing was written: no snapshot, committed or not.
    assert!(repo.list_snapshots().await.unwrap().is_empty());
    assert!(repo.incomplete_snapshots().await.unwrap().is_empty());
}
