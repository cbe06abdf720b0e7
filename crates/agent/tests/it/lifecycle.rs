//! Pausing, resuming and shutting down a running agent.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use warmspare_agent::{FnJob, JobError};

use crate::{TOKEN, TestAgent, config, count, counting, options};

#[tokio::test]
async fn pause_needs_the_token_and_stops_the_scheduler_until_resume() {
    let (backup, _) = counting("backup");
    let agent = TestAgent::start(config("backup = \"every 1s\""), options().job(backup)).await;
    agent
        .wait_job("backup", "a first run", |j| count(j, "runs") >= 1)
        .await;

    let missing = agent.post("/pause", None).await;
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        missing.headers()["www-authenticate"],
        "Bearer realm=\"warmspare\""
    );
    assert_eq!(
        agent.post("/pause", Some("not-the-token")).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        agent.post("/resume", Some("not-the-token")).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let (_, status) = agent.get_json("/status").await;
    assert_eq!(status["paused"], false, "refused requests change nothing");

    let paused = agent.post("/pause", Some(TOKEN)).await;
    assert_eq!(paused.status(), StatusCode::OK);
    assert_eq!(paused.text().await.unwrap(), "{\"paused\":true}\n");
    let idle = agent
        .wait_job("backup", "the last run to end", |j| j["state"] == "idle")
        .await;
    let runs = count(&idle, "runs");
    let skipped = count(&idle, "skipped_paused");
    // Two due times pass on the agent's own clock, both skipped.
    let after = agent
        .wait_job("backup", "two paused due times", |j| {
            count(j, "skipped_paused") >= skipped + 2
        })
        .await;
    assert_eq!(count(&after, "runs"), runs, "no run while paused: {after}");
    let metrics = agent.metrics().await;
    assert_eq!(
        crate::sample(&metrics, "warmspare_scheduler_paused"),
        Some(1.0)
    );
    assert!(
        crate::sample(
            &metrics,
            "warmspare_job_skipped_total{task=\"backup\",reason=\"paused\"}"
        )
        .unwrap()
            >= (skipped + 2) as f64
    );

    assert_eq!(
        agent.post("/resume", Some(TOKEN)).await.status(),
        StatusCode::OK
    );
    agent
        .wait_job("backup", "runs after resume", |j| count(j, "runs") > runs)
        .await;
    let (_, status) = agent.get_json("/status").await;
    assert_eq!(status["paused"], false);
}

#[tokio::test]
async fn shutdown_cancels_a_running_job_and_run_returns() {
    let saw_cancel = Arc::new(AtomicBool::new(false));
    let job = {
        let saw_cancel = saw_cancel.clone();
        FnJob::new("backup", move |ctx| {
            let saw_cancel = saw_cancel.clone();
            async move {
                ctx.cancelled().await;
                saw_cancel.store(true, Ordering::SeqCst);
                Err(JobError::Cancelled)
            }
        })
    };
    let mut agent = TestAgent::start(
        config("backup = \"every 1s\""),
        options().job(Arc::new(job)),
    )
    .await;
    agent
        .wait_job("backup", "a run in progress", |j| j["state"] == "running")
        .await;
    let addr = agent.addr;

    agent.shut_down().await;
    assert!(
        saw_cancel.load(Ordering::SeqCst),
        "the job was asked to stop"
    );
    // The listener is closed.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn shutdown_drops_a_job_that_ignores_cancellation_after_the_grace_period() {
    let job = FnJob::new("backup", |_ctx| async {
        std::future::pending::<()>().await;
        Ok(warmspare_agent::JobOutcome::done())
    });
    let mut agent = TestAgent::start(
        config("backup = \"every 1s\""),
        options()
            .job(Arc::new(job))
            .cancel_grace(Duration::from_millis(200)),
    )
    .await;
    agent
        .wait_job("backup", "a run in progress", |j| j["state"] == "running")
        .await;
    agent.shut_down().await;
}

/// `[agent] shutdown_grace` from the file bounds the wait for a job that
/// ignores cancellation (the default, 30 s, would outlast `shut_down`'s
/// 20 s limit), and an embedder's `cancel_grace` overrides the file.
#[tokio::test]
async fn the_files_shutdown_grace_bounds_the_wait_unless_the_embedder_overrides_it() {
    let stubborn = || {
        Arc::new(FnJob::new("backup", |_ctx| async {
            std::future::pending::<()>().await;
            Ok(warmspare_agent::JobOutcome::done())
        }))
    };
    let schedule = |grace: &str| {
        config(&format!(
            "backup = \"every 1s\"\n[agent]\nshutdown_grace = \"{grace}\""
        ))
    };
    let file = schedule("200ms");
    assert_eq!(file.agent.shutdown_grace, Duration::from_millis(200));
    let mut agent = TestAgent::start(file, options().job(stubborn())).await;
    agent
        .wait_job("backup", "a run in progress", |j| j["state"] == "running")
        .await;
    agent.shut_down().await;

    let mut agent = TestAgent::start(
        schedule("1h"),
        options()
            .job(stubborn())
            .cancel_grace(Duration::from_millis(200)),
    )
    .await;
    agent
        .wait_job("backup", "a run in progress", |j| j["state"] == "running")
        .await;
    agent.shut_down().await;
}
