//! `warmspare init`, and `check` on the file it wrote.

use warmspare_agent::Config;
use warmspare_testkit::PostgresCluster;

use crate::{file_url, warmspare};

/// Replaces (`Some`) or removes (`None`) the line `key = ...` inside
/// `[section]`; panics when the template has no such line, so that a
/// changed template fails loudly here.
fn set(text: &str, section: &str, key: &str, value: Option<&str>) -> String {
    let header = format!("[{section}]");
    let mut in_section = false;
    let mut found = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('[') {
            in_section = line.split('#').next().map(str::trim) == Some(header.as_str());
        }
        if in_section && !found && line.starts_with(&format!("{key} = ")) {
            found = true;
            if let Some(value) = value {
                out.push(format!("{key} = {value}"));
            }
            continue;
        }
        out.push(line.to_owned());
    }
    assert!(found, "no `{key} = ` in [{section}] of the template");
    out.join("\n") + "\n"
}

fn quoted(text: &str) -> String {
    format!("\"{text}\"")
}

#[tokio::test]
async fn init_writes_a_parsable_file_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = warmspare(dir.path(), &["init"], &[]).await;
    run.assert_no_panic();
    assert_eq!(run.code, 0, "{run:#?}");
    let path = dir.path().join("warmspare.toml");
    let written = std::fs::read_to_string(&path).expect("init wrote warmspare.toml");
    let config =
        Config::from_toml_str(&written, "warmspare.toml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.sites.len(), 2);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o077, 0, "readable by others: {mode:o}");
    }

    std::fs::write(&path, "# mine\n").expect("write");
    let run = warmspare(dir.path(), &["init"], &[]).await;
    run.assert_no_panic();
    assert_eq!(run.code, 1, "{run:#?}");
    assert!(
        run.stderr.contains("already exists; pass --force"),
        "{}",
        run.stderr
    );
    assert_eq!(std::fs::read_to_string(&path).expect("read"), "# mine\n");

    let run = warmspare(dir.path(), &["init", "--force"], &[]).await;
    assert_eq!(run.code, 0, "{run:#?}");
    assert_eq!(std::fs::read_to_string(&path).expect("read"), written);

    // PATH argument, and --json reports where it went.
    let run = warmspare(dir.path(), &["--json", "init", "other.toml"], &[]).await;
    assert_eq!(run.code, 0, "{run:#?}");
    let value: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    assert_eq!(value["path"], "other.toml");
    assert!(dir.path().join("other.toml").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_then_check_with_file_repository_and_real_clusters() {
    let (primary, spare) = tokio::try_join!(PostgresCluster::start(), PostgresCluster::start())
        .expect("clusters start");
    let dir = tempfile::tempdir().expect("tempdir");
    let run = warmspare(dir.path(), &["--config", "ws.toml", "init"], &[]).await;
    assert_eq!(run.code, 0, "{run:#?}");
    let path = dir.path().join("ws.toml");
    let template = std::fs::read_to_string(&path).expect("init wrote ws.toml");

    // Point the example at this machine: a file:// repository and artifact
    // stores, the two clusters.
    let art_primary = dir.path().join("art-primary");
    let art_spare = dir.path().join("art-spare");
    std::fs::create_dir(&art_primary).expect("mkdir");
    std::fs::create_dir(&art_spare).expect("mkdir");
    let mut text = template;
    text = set(
        &text,
        "repository",
        "url",
        Some(&quoted(&file_url(&dir.path().join("repo")))),
    );
    text = set(&text, "repository", "endpoint", None);
    text = set(
        &text,
        "sites.primary",
        "database",
        Some(&quoted(&primary.url())),
    );
    text = set(
        &text,
        "sites.primary",
        "artifacts",
        Some(&quoted(&file_url(&art_primary))),
    );
    text = set(&text, "sites.primary", "artifacts_endpoint", None);
    text = set(
        &text,
        "sites.spare",
        "database",
        Some(&quoted(&spare.url())),
    );
    text = set(
        &text,
        "sites.spare",
        "artifacts",
        Some(&quoted(&file_url(&art_spare))),
    );
    std::fs::write(&path, text).expect("write config");

    let run = warmspare(dir.path(), &["--config", "ws.toml", "--json", "check"], &[]).await;
    run.assert_no_panic();
    assert_eq!(run.code, 0, "{run:#?}");
    let rows = run.json_rows();
    let checks: Vec<&str> = rows.iter().filter_map(|r| r["check"].as_str()).collect();
    assert_eq!(
        checks,
        [
            "config",
            "repository list",
            "repository write probe object",
            "repository read probe object",
            "repository delete probe object",
            "repository compare-and-swap",
            "primary database",
            "primary artifacts",
            "spare database",
            "spare artifacts",
        ]
    );
    for row in &rows {
        assert_eq!(row["status"], "ok", "{row}");
    }
    assert!(run.stderr.contains("10 ok, 0 failed"), "{}", run.stderr);

    // --site overrides the file's `site`.
    let run = warmspare(
        dir.path(),
        &["--config", "ws.toml", "--site", "spare", "--json", "check"],
        &[],
    )
    .await;
    assert_eq!(run.code, 0, "{run:#?}");
    assert_eq!(run.json_rows()[0]["detail"], "2 sites, this is site spare");
}
