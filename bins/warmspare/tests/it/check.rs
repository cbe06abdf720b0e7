//! `warmspare check` against real servers, and its configuration errors.

use std::net::TcpListener;

use warmspare_testkit::{PostgresCluster, S3Server};

use crate::{file_url, warmspare};

const REPOSITORY_ROWS: [&str; 5] = [
    "repository list",
    "repository write probe object",
    "repository read probe object",
    "repository delete probe object",
    "repository compare-and-swap",
];

/// A loopback port with nothing listening on it.
pub(crate) fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_rows_ok_with_s3_repository_and_two_clusters() {
    let Some(s3) = S3Server::try_shared().await.expect("s3 server") else {
        return;
    };
    let (primary, spare) = tokio::try_join!(PostgresCluster::start(), PostgresCluster::start())
        .expect("clusters start");
    let repo_bucket = s3.unique_bucket("check-repo").await.expect("bucket");
    let artifacts_bucket = s3.unique_bucket("check-art").await.expect("bucket");
    let dir = tempfile::tempdir().expect("tempdir");
    let spare_artifacts = dir.path().join("spare-artifacts");
    std::fs::create_dir(&spare_artifacts).expect("mkdir");
    std::fs::write(spare_artifacts.join("a.hart"), b"artifact").expect("write");

    // The repository's secret comes from the environment, the primary
    // artifact store's from the file: neither may be printed.
    let config = format!(
        r#"
site = "primary"

[repository]
url = "s3://{repo_bucket}/warmspare"
endpoint = "{endpoint}"
region = "{region}"
allow_http = true
access_key_id = "{key}"

[sites.primary]
database = "{primary_url}"
artifacts = "s3://{artifacts_bucket}"
artifacts_endpoint = "{endpoint}"
artifacts_allow_http = true
artifacts_access_key_id = "{key}"
artifacts_secret_access_key = "{secret}"

[sites.spare]
database = "{spare_url}"
artifacts = "{spare_artifacts_url}"
"#,
        endpoint = s3.endpoint(),
        region = s3.region(),
        key = s3.access_key_id(),
        secret = s3.secret_access_key(),
        primary_url = primary.url(),
        spare_url = spare.url(),
        spare_artifacts_url = file_url(&spare_artifacts),
    );
    std::fs::write(dir.path().join("warmspare.toml"), config).expect("write config");
    let env = [(
        "WARMSPARE_REPOSITORY_SECRET_ACCESS_KEY",
        s3.secret_access_key(),
    )];

    let run = warmspare(dir.path(), &["check"], &env).await;
    run.assert_no_panic();
    assert!(
        !run.all_output().contains(s3.secret_access_key()),
        "secret printed:\n{}",
        run.all_output()
    );
    // Garage ignores conditional writes: check must refuse it, not pass it.
    let cas_works = s3.conditional_writes_enforced();
    assert_eq!(run.code, if cas_works { 0 } else { 1 }, "{run:#?}");
    assert!(run.stdout.starts_with("CHECK"), "{}", run.stdout);
    for check in REPOSITORY_ROWS {
        let row = run.table_row(check);
        let expected = if check.ends_with("compare-and-swap") && !cas_works {
            "FAILED"
        } else {
            "ok"
        };
        assert_eq!(row[2], expected, "{row:?}");
        assert_eq!(
            row[1],
            format!("s3://{repo_bucket}/warmspare at {}", s3.endpoint())
        );
    }
    for site in ["primary", "spare"] {
        let row = run.table_row(&format!("{site} database"));
        assert_eq!(row[2], "ok", "{row:?}");
        assert!(
            row[3].starts_with("PostgreSQL ") && row[3].contains(", primary"),
            "{row:?}"
        );
        let row = run.table_row(&format!("{site} artifacts"));
        assert_eq!(row[2], "ok", "{row:?}");
    }
    assert!(
        run.table_row("spare artifacts")[3].contains("listed 1 objects"),
        "{}",
        run.stdout
    );
    assert!(run.stderr.contains("check: "), "{}", run.stderr);

    let run = warmspare(dir.path(), &["check", "--json"], &env).await;
    run.assert_no_panic();
    assert!(!run.all_output().contains(s3.secret_access_key()));
    let rows = run.json_rows();
    assert_eq!(rows.len(), 1 + REPOSITORY_ROWS.len() + 4, "{rows:#?}");
    let failed: Vec<_> = rows.iter().filter(|r| r["status"] != "ok").collect();
    assert_eq!(failed.len(), usize::from(!cas_works), "{failed:#?}");
    assert_eq!(rows[0]["check"], "config");
    assert_eq!(rows[0]["detail"], "2 sites, this is site primary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_repository_endpoint_fails_its_rows_only() {
    let pg = PostgresCluster::start().await.expect("cluster");
    let dir = tempfile::tempdir().expect("tempdir");
    let dead = format!("http://127.0.0.1:{}", closed_port());
    let config = format!(
        r#"
[repository]
url = "s3://no-such-server/repo"
endpoint = "{dead}"
allow_http = true
access_key_id = "key"
secret_access_key = "dead-endpoint-secret"

[sites.main]
database = "{url}"
"#,
        url = pg.url(),
    );
    std::fs::write(dir.path().join("warmspare.toml"), config).expect("write config");

    let started = std::time::Instant::now();
    let run = warmspare(dir.path(), &["check", "--timeout", "20s"], &[]).await;
    run.assert_no_panic();
    assert_eq!(run.code, 1, "{run:#?}");
    let list = run.table_row("repository list");
    assert_eq!(list[1], format!("s3://no-such-server/repo at {dead}"));
    assert_eq!(list[2], "FAILED", "{list:?}");
    // The connection error itself, not the time limit, is reported.
    assert!(!list[3].contains("no answer within"), "{list:?}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "{run:#?}"
    );
    assert_eq!(run.table_row("repository write probe object")[2], "FAILED");
    assert_eq!(run.table_row("repository compare-and-swap")[2], "skipped");
    // The other checks still ran.
    assert_eq!(run.table_row("main database")[2], "ok", "{}", run.stdout);
    assert!(run.stderr.contains("failed"), "{}", run.stderr);
    assert!(!run.all_output().contains("dead-endpoint-secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_database_password_is_an_authentication_failure() {
    const RIGHT: &str = "right-pw-4f1c9e";
    const WRONG: &str = "wrong-pw-77ad02";
    let pg = PostgresCluster::builder()
        .password(RIGHT)
        .start()
        .await
        .expect("cluster");
    let dir = tempfile::tempdir().expect("tempdir");
    // Site `good` has no password in the file: it comes from the
    // environment, and must not be printed either.
    let config = format!(
        r#"
[repository]
url = "{repo}"

[sites.bad]
database = "{bad}"

[sites.good]
database = "{good}"
"#,
        repo = file_url(&dir.path().join("repo")),
        bad = pg.url_with_password("postgres", Some(WRONG)),
        good = pg.url_with_password("postgres", None),
    );
    std::fs::write(dir.path().join("warmspare.toml"), config).expect("write config");
    let env = [("WARMSPARE_SITES_GOOD_DATABASE_PASSWORD", RIGHT)];

    let run = warmspare(dir.path(), &["check"], &env).await;
    run.assert_no_panic();
    assert_eq!(run.code, 1, "{run:#?}");
    let bad = run.table_row("bad database");
    assert_eq!(bad[2], "FAILED", "{bad:?}");
    assert!(bad[3].starts_with("authentication failed"), "{bad:?}");
    assert!(bad[1].contains(":***@127.0.0.1"), "{bad:?}");
    let good = run.table_row("good database");
    assert_eq!(good[2], "ok", "{good:?}");
    assert_eq!(run.table_row("repository compare-and-swap")[2], "ok");

    let json = warmspare(dir.path(), &["--json", "check"], &env).await;
    assert_eq!(json.code, 1);
    let rows = json.json_rows();
    let bad = rows
        .iter()
        .find(|r| r["check"] == "bad database")
        .expect("row");
    assert_eq!(bad["status"], "failed");
    assert!(
        bad["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("authentication")
    );

    for output in [run.all_output(), json.all_output()] {
        assert!(!output.contains(WRONG), "wrong password printed:\n{output}");
        assert!(!output.contains(RIGHT), "password printed:\n{output}");
    }
}

#[tokio::test]
async fn unknown_key_exits_with_two_naming_key_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = "[repository]\nurl = \"file:///tmp/x\"\n\n[failover]\nlease_ttl = \"6s\"\nlease_tll = \"6s\"\n";
    std::fs::write(dir.path().join("warmspare.toml"), config).expect("write config");
    let run = warmspare(dir.path(), &["check"], &[]).await;
    run.assert_no_panic();
    assert_eq!(run.code, 2, "{run:#?}");
    assert_eq!(run.stdout, "");
    let line = run.stderr.trim_end();
    assert!(!line.contains('\n'), "one line expected:\n{line}");
    assert!(
        line.starts_with("error: invalid config warmspare.toml, line 6, key `failover.lease_tll`: unknown field `lease_tll`"),
        "{line}"
    );
}

#[tokio::test]
async fn other_config_errors_exit_with_two() {
    let dir = tempfile::tempdir().expect("tempdir");
    // No file at all.
    let run = warmspare(dir.path(), &["check"], &[]).await;
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(
        run.stderr
            .starts_with("error: cannot read config warmspare.toml"),
        "{}",
        run.stderr
    );

    // A bad duration, a bad URL (with a password that must not be echoed).
    for (text, needle) in [
        (
            "[repository]\nurl = \"file:///r\"\n[failover]\ncooldown = \"a while\"\n",
            "line 4, key `failover.cooldown`: invalid duration",
        ),
        (
            "[repository]\nurl = \"file:///r\"\n[sites.a]\ndatabase = \"mysql://root:sekrit-9@db/x\"\n",
            "line 4, key `sites.a.database`: invalid database URL",
        ),
    ] {
        std::fs::write(dir.path().join("bad.toml"), text).expect("write");
        let run = warmspare(dir.path(), &["--config", "bad.toml", "check"], &[]).await;
        run.assert_no_panic();
        assert_eq!(run.code, 2, "{run:#?}");
        assert!(run.stderr.contains(needle), "{}", run.stderr);
        assert!(!run.stderr.contains("sekrit-9"), "{}", run.stderr);
    }

    // --site must name a site; WARMSPARE_CONFIG picks the file.
    std::fs::write(
        dir.path().join("ok.toml"),
        "[repository]\nurl = \"file:///r\"\n",
    )
    .expect("write");
    let run = warmspare(
        dir.path(),
        &["check", "--site", "nowhere"],
        &[("WARMSPARE_CONFIG", "ok.toml")],
    )
    .await;
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(
        run.stderr
            .contains("--site \"nowhere\" names no [sites.*] table in ok.toml"),
        "{}",
        run.stderr
    );

    // Clap's own usage errors are 2 as well.
    let run = warmspare(dir.path(), &["check", "--timeout", "soon"], &[]).await;
    assert_eq!(run.code, 2, "{run:#?}");
}
