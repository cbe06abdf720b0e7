//! Integration tests of the agent: a real listener on loopback, real HTTP
//! requests, the system clock, and jobs that run every second.

#![allow(clippy::unwrap_used)]

mod endpoints;
mod jobs;
mod lifecycle;
mod sites;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use warmspare_agent::{Agent, AgentOptions, Config, FnJob, JobError, JobOutcome, Secret};

pub(crate) const TOKEN: &str = "test-token-4f1c";

/// A configuration for site `spare` with the given `[schedule]` lines.
pub(crate) fn config(schedule: &str) -> Config {
    let text = format!(
        "site = \"spare\"\n\
         [repository]\nurl = \"file:///nonexistent/warmspare-repo\"\n\
         [sites.spare]\ndatabase = \"postgres://builder@127.0.0.1:1/builder\"\n\
         [schedule]\n{schedule}\n"
    );
    Config::from_toml_str(&text, "it.toml").unwrap()
}

/// Options with a free port and the test token.
pub(crate) fn options() -> AgentOptions {
    AgentOptions::new()
        .listen(SocketAddr::from(([127, 0, 0, 1], 0)))
        .token(Secret::new(TOKEN))
}

/// Options with a free port and no token.
pub(crate) fn options_without_token() -> AgentOptions {
    AgentOptions::new().listen(SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// A job that succeeds and counts its runs.
pub(crate) fn counting(name: &str) -> (Arc<FnJob>, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let job = {
        let count = count.clone();
        FnJob::new(name, move |_ctx| {
            count.fetch_add(1, Ordering::SeqCst);
            async { Ok(JobOutcome::done()) }
        })
    };
    (Arc::new(job), count)
}

/// A job that always fails.
pub(crate) fn failing(name: &str) -> Arc<FnJob> {
    Arc::new(FnJob::new(name, |_ctx| async {
        Err(JobError::msg("the store is unreachable"))
    }))
}

/// A job whose runs never apply at this site (like `prune` at a spare).
pub(crate) fn not_applicable(name: &str) -> Arc<FnJob> {
    Arc::new(FnJob::new(name, |_ctx| async {
        Ok(JobOutcome::skipped("the active site prunes"))
    }))
}

/// An agent running in the background, and a client for it.
pub(crate) struct TestAgent {
    pub(crate) addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<warmspare_agent::Result<()>>>,
    client: reqwest::Client,
}

impl TestAgent {
    pub(crate) async fn start(config: Config, options: AgentOptions) -> TestAgent {
        let bound = Agent::new(config, options).unwrap().bind().await.unwrap();
        let addr = bound.local_addr();
        let (shutdown, stop) = oneshot::channel();
        let task = tokio::spawn(bound.run(async {
            let _ = stop.await;
        }));
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        TestAgent {
            addr,
            shutdown: Some(shutdown),
            task: Some(task),
            client,
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub(crate) async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    pub(crate) async fn get_json(&self, path: &str) -> (StatusCode, Value) {
        let response = self.get(path).await;
        let status = response.status();
        (
            status,
            serde_json::from_str(&response.text().await.unwrap()).unwrap(),
        )
    }

    pub(crate) async fn metrics(&self) -> String {
        let response = self.get("/metrics").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["content-type"],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        response.text().await.unwrap()
    }

    /// POSTs to `path` with `Authorization: Bearer <token>` when given.
    pub(crate) async fn post(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut request = self.client.post(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }

    /// The job called `name` in `/status`.
    pub(crate) async fn job(&self, name: &str) -> Value {
        let (status, body) = self.get_json("/status").await;
        assert_eq!(status, StatusCode::OK);
        job_in(&body, name)
    }

    /// Polls `/status` until `cond` holds for job `name`; fails after 20 s.
    pub(crate) async fn wait_job(
        &self,
        name: &str,
        what: &str,
        cond: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let job = self.job(name).await;
            if cond(&job) {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {job}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Triggers the shutdown and waits for `run` to return.
    pub(crate) async fn shut_down(&mut self) {
        let _ = self.shutdown.take().unwrap().send(());
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("run returns after shutdown")
            .unwrap()
            .unwrap();
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

pub(crate) fn job_in(status: &Value, name: &str) -> Value {
    status["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == name)
        .unwrap_or_else(|| panic!("no job {name} in {status}"))
        .clone()
}

/// `warmspare_job_runs_total` of `task`, summed over every `result`.
pub(crate) fn runs_total(text: &str, task: &str) -> f64 {
    let prefix = format!("warmspare_job_runs_total{{task=\"{task}\",result=");
    text.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(|rest| rest.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// The value of the sample `series` (name and labels) in a `/metrics` text.
pub(crate) fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

pub(crate) fn count(job: &Value, key: &str) -> u64 {
    job[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} in {job}"))
}
