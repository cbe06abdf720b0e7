//! `backup db --physical`, `restore db ... --to DATA_DIR`, and the WAL
//! parts of `list` and `prune`, through the binary against real clusters
//! that archive into the repository with `warmspare wal push`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use warmspare_testkit::PostgresCluster;

use crate::wal::{Archive, eventually, switch_and_wait_archived};
use crate::{Run, error_line, warmspare};

/// A configuration beside the archive's (readable by the server's user,
/// as `restore_command` needs) that also names the sites.
fn cli_config(archive: &Archive, sites: &str) -> PathBuf {
    let base = std::fs::read_to_string(&archive.config).expect("read config");
    let path = archive.dir.path().join("cli.toml");
    // Top-level keys (`site = ...`) before the first table.
    std::fs::write(&path, format!("{sites}{base}")).expect("write config");
    path
}

/// Runs the binary with `--config config` and checks the exit code.
async fn expect(config: &Path, code: i32, args: &[&str]) -> Run {
    let mut all = vec!["--config", config.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    let run = warmspare(Path::new("/"), &all, &[]).await;
    run.assert_no_panic();
    assert_eq!(run.code, code, "warmspare {args:?}:\n{run:#?}");
    run
}

fn json(run: &Run) -> Value {
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", run.stdout))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn physical_backup_and_restore_through_the_cli() {
    let archive = Archive::new().await;
    let (primary, plain) = tokio::join!(archive.primary(), async {
        PostgresCluster::start().await.expect("plain cluster")
    });
    let config = cli_config(
        &archive,
        &format!(
            "site = \"primary\"\n[sites.primary]\ndatabase = \"{}\"\n\
             [sites.plain]\ndatabase = \"{}\"\n",
            primary.url(),
            plain.url()
        ),
    );
    let scratch = tempfile::tempdir().expect("tempdir");

    // A server that does not archive: exit 1, and the settings to add.
    let run = expect(
        &config,
        1,
        &["--site", "plain", "backup", "db", "--physical"],
    )
    .await;
    let line = error_line(&run);
    assert!(line.contains("archive_mode = off"), "{line}");
    assert!(line.contains("archive_mode = on"), "{line}");
    assert!(
        line.contains(env!("CARGO_BIN_EXE_warmspare")) && line.contains("wal push %p"),
        "{line}"
    );
    assert!(line.contains(&config.display().to_string()), "{line}");

    // The physical snapshot: progress on stderr, the result as JSON.
    let run = expect(&config, 0, &["--json", "backup", "db", "--physical"]).await;
    for step in [
        "backup: base-backup",
        "backup: wait-for-wal",
        "backup: commit",
    ] {
        assert!(run.stderr.contains(step), "{}", run.stderr);
    }
    let backup = json(&run);
    let id = backup["id"].as_str().expect("id").to_owned();
    assert_eq!(backup["kind"], "physical", "{backup:#}");
    for key in ["start_lsn", "stop_lsn", "start_wal"] {
        assert!(backup[key].is_string(), "{key}: {backup:#}");
    }
    assert!(
        backup["size"].as_u64().unwrap_or(0) > 1_000_000,
        "{backup:#}"
    );
    assert!(backup["seconds"].as_f64().is_some(), "{backup:#}");

    // Rows committed after the backup reach the restore through the WAL
    // archive.
    primary
        .psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 3)")
        .await
        .expect("rows");
    switch_and_wait_archived(&primary).await;

    // A logical snapshot too, for the refusals below.
    let logical = json(&expect(&config, 0, &["--json", "backup", "db"]).await)["id"]
        .as_str()
        .expect("id")
        .to_owned();

    let listed = json(&expect(&config, 0, &["list", "--json"]).await)["snapshots"].clone();
    let physical = listed
        .as_array()
        .expect("array")
        .iter()
        .find(|s| s["id"] == id.as_str())
        .unwrap_or_else(|| panic!("{id} not listed: {listed:#}"));
    assert_eq!(physical["kind"], "physical");
    assert_eq!(physical["start_lsn"], backup["start_lsn"]);
    let table = expect(&config, 0, &["list"]).await.stdout;
    let start_lsn = backup["start_lsn"].as_str().expect("lsn");
    assert!(
        table.contains("physical  complete") && table.contains(start_lsn),
        "{table}"
    );

    // prune keeps the WAL from the kept physical snapshot's start on.
    let plan = json(&expect(&config, 0, &["prune", "--dry-run", "--json"]).await);
    assert_eq!(plan["wal"]["keep_from"], backup["start_wal"], "{plan:#}");
    assert!(plan["wal"]["deletable"].is_u64(), "{plan:#}");
    let table = expect(&config, 0, &["prune", "--dry-run"]).await.stdout;
    assert!(table.contains("wal before "), "{table}");

    // Refusals, each before anything is written: exit 2.
    let data = scratch.path().join("data");
    let data_arg = data.display().to_string();
    let run = expect(
        &config,
        2,
        &[
            "restore",
            "db",
            "latest",
            "--to",
            &data_arg,
            "--standby",
            "--target-time",
            "2026-01-01T00:00:00Z",
        ],
    )
    .await;
    assert!(error_line(&run).contains("--standby"), "{run:#?}");
    let run = expect(&config, 2, &["restore", "db", &logical, "--to", &data_arg]).await;
    assert!(
        error_line(&run).contains("is a logical snapshot"),
        "{run:#?}"
    );
    let run = expect(
        &config,
        2,
        &["restore", "db", &id, "--to", &plain.url_for("copy")],
    )
    .await;
    assert!(
        error_line(&run).contains("is a physical snapshot"),
        "{run:#?}"
    );
    let run = expect(
        &config,
        2,
        &[
            "restore",
            "db",
            "latest",
            "--to",
            &data_arg,
            "--target-time",
            "2000-01-01T00:00:00Z",
        ],
    )
    .await;
    assert!(
        error_line(&run).contains("no physical snapshot finished before"),
        "{run:#?}"
    );
    assert!(!data.exists(), "nothing was written");

    // The restore, and a server started on it.
    let run = expect(&config, 0, &["restore", "db", "latest", "--to", &data_arg]).await;
    assert!(run.stdout.contains(&id), "{}", run.stdout);
    for hint in ["chown -R postgres:", "pg_ctl -D"] {
        assert!(run.stderr.contains(hint), "{}", run.stderr);
    }
    let auto = std::fs::read_to_string(data.join("postgresql.auto.conf")).expect("auto.conf");
    assert!(
        auto.contains(env!("CARGO_BIN_EXE_warmspare"))
            && auto.contains(&format!("--config {} wal fetch %f %p", config.display())),
        "{auto}"
    );
    assert!(data.join("recovery.signal").exists());

    let restored = PostgresCluster::builder()
        .from_data_dir(&data)
        .start()
        .await
        .expect("restored cluster starts");
    eventually("promotion", Duration::from_secs(60), || async {
        restored
            .psql("SELECT pg_is_in_recovery()")
            .await
            .ok()
            .as_deref()
            == Some("f")
    })
    .await;
    let rows = restored
        .psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM t")
        .await
        .expect("rows");
    assert_eq!(rows, "1,2,3", "{}", restored.log_tail(40));
    assert!(restored.log_tail(200).contains("restored log file"));
}
