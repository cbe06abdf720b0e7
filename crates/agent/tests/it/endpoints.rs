//! What each endpoint answers.

use std::sync::atomic::Ordering;

use reqwest::StatusCode;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    TOKEN, TestAgent, config, count, counting, failing, job_in, not_applicable, options, sample,
};

#[tokio::test]
async fn metrics_and_status_match_what_happened() {
    let (backup, backups) = counting("backup");
    let agent = TestAgent::start(
        config(
            "backup = \"every 1s\"\nsync = \"every 1s\"\nverify = \"0 3 * * *\"\n\
             prune = \"every 1s\"",
        ),
        options()
            .job(backup)
            .job(failing("sync"))
            .job(not_applicable("prune")),
    )
    .await;
    agent
        .wait_job("backup", "two backups", |j| count(j, "runs") >= 2)
        .await;
    agent
        .wait_job("sync", "two failed syncs", |j| count(j, "runs") >= 2)
        .await;
    agent
        .wait_job("prune", "two skipped prunes", |j| count(j, "runs") >= 2)
        .await;

    // Pause so that the numbers hold still while both are read.
    assert_eq!(
        agent.post("/pause", Some(TOKEN)).await.status(),
        StatusCode::OK
    );
    for name in ["backup", "sync", "prune"] {
        agent
            .wait_job(name, "no run in progress", |j| j["state"] == "idle")
            .await;
    }
    let (status, body) = agent.get_json("/status").await;
    assert_eq!(status, StatusCode::OK);
    let text = agent.metrics().await;

    assert_eq!(body["site"], "spare");
    assert_eq!(body["paused"], true);
    assert!(body["lease"].is_null(), "{body}");
    assert!(body["rpo_seconds"].is_null(), "{body}");

    let backup = job_in(&body, "backup");
    let runs = count(&backup, "runs");
    assert_eq!(runs, backups.load(Ordering::SeqCst) as u64);
    assert_eq!(count(&backup, "failures"), 0);
    assert_eq!(backup["last_outcome"], "succeeded");
    assert_eq!(backup["schedule"], "every 1s");
    assert_eq!(
        sample(
            &text,
            "warmspare_job_runs_total{task=\"backup\",result=\"succeeded\"}"
        ),
        Some(runs as f64)
    );
    assert_eq!(
        sample(&text, "warmspare_job_failures_total{task=\"backup\"}"),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "warmspare_job_running{task=\"backup\"}"),
        Some(0.0)
    );
    let last_success = OffsetDateTime::parse(backup["last_success"].as_str().unwrap(), &Rfc3339)
        .unwrap()
        .unix_timestamp_nanos() as f64
        / 1e9;
    let exported = sample(
        &text,
        "warmspare_last_success_timestamp_seconds{task=\"backup\"}",
    )
    .unwrap();
    assert!(
        (exported - last_success).abs() < 1e-3,
        "{exported} vs {last_success}"
    );

    let sync = job_in(&body, "sync");
    let runs = count(&sync, "runs");
    assert_eq!(count(&sync, "failures"), runs);
    assert_eq!(sync["last_outcome"], "failed");
    assert_eq!(sync["last_error"], "the store is unreachable");
    assert!(sync["last_success"].is_null());
    assert_eq!(
        sample(
            &text,
            "warmspare_job_runs_total{task=\"sync\",result=\"failed\"}"
        ),
        Some(runs as f64)
    );
    assert_eq!(
        sample(&text, "warmspare_job_failures_total{task=\"sync\"}"),
        Some(runs as f64)
    );
    assert_eq!(
        sample(
            &text,
            "warmspare_last_success_timestamp_seconds{task=\"sync\"}"
        ),
        None
    );

    assert_eq!(
        sample(
            &text,
            "warmspare_job_last_result{task=\"sync\",result=\"failed\"}"
        ),
        Some(1.0)
    );

    // A job that does not apply at this site: its runs are skipped, not
    // successes; nothing pretends it is fresh, nothing counts a failure.
    let prune = job_in(&body, "prune");
    let runs = count(&prune, "runs");
    assert_eq!(prune["last_outcome"], "skipped");
    assert_eq!(prune["last_summary"], "skipped: the active site prunes");
    assert!(prune["last_success"].is_null(), "{prune}");
    assert_eq!(count(&prune, "skipped_runs"), runs);
    assert_eq!(count(&prune, "failures"), 0);
    for (result, value) in [
        ("skipped", runs as f64),
        ("succeeded", 0.0),
        ("failed", 0.0),
        ("timed_out", 0.0),
        ("cancelled", 0.0),
    ] {
        assert_eq!(
            sample(
                &text,
                &format!("warmspare_job_runs_total{{task=\"prune\",result=\"{result}\"}}")
            ),
            Some(value),
            "{result}\n{text}"
        );
    }
    assert_eq!(
        sample(
            &text,
            "warmspare_job_last_result{task=\"prune\",result=\"skipped\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "warmspare_job_last_result{task=\"prune\",result=\"succeeded\"}"
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            "warmspare_last_success_timestamp_seconds{task=\"prune\"}"
        ),
        None
    );
    // No label the scraper would rename to `exported_job`.
    assert!(!text.contains("job=\""), "{text}");

    // Scheduled but not implemented in this build: reported, never run.
    let verify = job_in(&body, "verify");
    assert_eq!(verify["state"], "not_available");
    assert_eq!(count(&verify, "runs"), 0);
    assert!(verify["last_outcome"].is_null());
    assert!(verify["next_run"].is_null());
    assert_eq!(
        sample(&text, "warmspare_job_available{task=\"verify\"}"),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "warmspare_job_available{task=\"backup\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "warmspare_job_runs_total{task=\"verify\",result=\"succeeded\"}"
        ),
        Some(0.0)
    );

    assert_eq!(sample(&text, "warmspare_scheduler_paused"), Some(1.0));
    let started = sample(&text, "warmspare_agent_start_time_seconds").unwrap();
    let now = OffsetDateTime::now_utc().unix_timestamp() as f64;
    assert!(started <= now && started > now - 120.0, "{started}");
    for family in [
        "warmspare_job_runs_total counter",
        "warmspare_job_failures_total counter",
        "warmspare_job_skipped_total counter",
        "warmspare_job_running gauge",
        "warmspare_last_success_timestamp_seconds gauge",
        "warmspare_agent_start_time_seconds gauge",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family}\n")),
            "{family}\n{text}"
        );
    }
    // Nothing measures these yet: absent, not zero.
    assert!(!text.contains("warmspare_rpo_seconds"), "{text}");
    assert!(!text.contains("warmspare_lease_epoch"), "{text}");

    let (status, health) = agent.get_json("/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["status"], "up");
    let checks = health["checks"].as_array().unwrap();
    let check = |name: &str| {
        checks
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {health}"))
            .clone()
    };
    assert_eq!(check("job:backup")["status"], "ok");
    assert_eq!(check("job:sync")["status"], "failing");
    assert_eq!(check("job:sync")["last_error"], "the store is unreachable");
    assert_eq!(check("job:verify")["status"], "not_available");
    assert_eq!(check("job:prune")["status"], "skipped");
}

#[tokio::test]
async fn active_standby_and_failover_do_not_pretend() {
    let agent = TestAgent::start(config(""), options()).await;
    for (path, key) in [("/active", "active"), ("/standby", "standby")] {
        let (status, body) = agent.get_json(path).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_eq!(body[key], false);
        // One site only: no peer, no driver, and the reason says so.
        assert_eq!(
            body["reason"],
            "no peer site configured: failover needs two sites"
        );
        assert_eq!(body["site"], "spare");
    }
    let response = agent.post("/failover", Some(TOKEN)).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("no peer site configured")
    );
    // The token is checked before anything else.
    assert_eq!(
        agent.post("/failover", None).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn unknown_paths_wrong_methods_and_large_bodies_are_refused() {
    let agent = TestAgent::start(config(""), options()).await;
    assert_eq!(agent.get("/nope").await.status(), StatusCode::NOT_FOUND);
    assert_eq!(agent.get("/health/x").await.status(), StatusCode::NOT_FOUND);

    let response = agent.post("/health", Some(TOKEN)).await;
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()["allow"], "GET, HEAD");
    let response = agent.get("/pause").await;
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()["allow"], "POST");

    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let head = client.head(agent.url("/health")).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert!(head.text().await.unwrap().is_empty());

    // A raw request that declares a body over the limit: refused before
    // the body is sent (so the test cannot race a connection reset).
    let mut stream = tokio::net::TcpStream::connect(agent.addr).await.unwrap();
    let head = format!(
        "POST /pause HTTP/1.1\r\nHost: agent\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Length: 100000\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0; 12];
    stream.read_exact(&mut answer).await.unwrap();
    assert_eq!(answer, b"HTTP/1.1 413");
    let (_, status) = agent.get_json("/status").await;
    assert_eq!(status["paused"], false, "a refused request changes nothing");
}

#[tokio::test]
async fn without_a_token_mutating_endpoints_are_forbidden() {
    let agent = TestAgent::start(config(""), crate::options_without_token()).await;
    for path in ["/pause", "/resume", "/failover"] {
        assert_eq!(
            agent.post(path, None).await.status(),
            StatusCode::FORBIDDEN,
            "{path}"
        );
        assert_eq!(
            agent.post(path, Some(TOKEN)).await.status(),
            StatusCode::FORBIDDEN,
            "{path}"
        );
    }
}
