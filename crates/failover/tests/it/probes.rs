//! The HTTP, TCP, command and PostgreSQL probes against real targets.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use warmspare_failover::policy::Target;
use warmspare_failover::probe::{
    JsonExpectation, Probe, ProbeRunner, default_probes, postgres, site_probes,
};
use warmspare_store::ConditionalPutCas;
use warmspare_store::object_store::memory::InMemory;
use warmspare_testkit::PostgresCluster;

use crate::e2e::standby_of;
use crate::support::{Recorder, fast_policy, start_driver, wait_for};

/// A one-answer-per-connection HTTP server replying `status` and `body`.
async fn http_server(status: &'static str, body: &'static str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let reply = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(reply.as_bytes()).await;
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn http_tcp_and_command_probes() {
    let client = reqwest::Client::new();
    let t = Duration::from_secs(2);
    let ok = http_server("200 OK", r#"{"status":"ok","n":1}"#).await;
    let bad = http_server("503 Service Unavailable", "{}").await;
    assert!(Probe::from_target(&ok).unwrap().run(&client, t).await.ok);
    let r = Probe::from_target(&bad).unwrap().run(&client, t).await;
    assert!(!r.ok && r.detail.contains("503"), "{r:?}");
    let expect = |value: serde_json::Value| Probe::Http {
        url: ok.clone(),
        expect: Some(JsonExpectation {
            pointer: "/status".into(),
            value,
        }),
    };
    assert!(expect("ok".into()).run(&client, t).await.ok);
    let r = expect("down".into()).run(&client, t).await;
    assert!(!r.ok && r.detail.contains("expected"), "{r:?}");

    let tcp = ok.replace("http://", "tcp://");
    assert!(Probe::from_target(&tcp).unwrap().run(&client, t).await.ok);
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let r = Probe::Tcp {
        addr: closed.to_string(),
    }
    .run(&client, t)
    .await;
    assert!(!r.ok, "{r:?}");

    let cmd = |c: &str| Probe::Command { command: c.into() };
    assert!(cmd("true").run(&client, t).await.ok);
    let r = cmd("echo nope >&2; exit 4").run(&client, t).await;
    assert!(!r.ok && r.detail.contains("nope"), "{r:?}");
    let r = cmd("sleep 5")
        .run(&client, Duration::from_millis(200))
        .await;
    assert!(!r.ok && r.detail.contains("did not answer"), "{r:?}");
    assert!(Probe::from_target("ftp://x").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_probe_reports_role_lag_and_writability() {
    let pg = PostgresCluster::start().await.expect("cluster");
    let t = Duration::from_secs(5);
    let h = postgres::check(&pg.url(), t, true).await.expect("check");
    assert!(!h.in_recovery && h.current_lsn.is_some(), "{h:?}");
    assert_eq!(h.writable, Some(true));
    assert_eq!(h.replay_lag, None);
    pg.psql("ALTER SYSTEM SET default_transaction_read_only = on")
        .await
        .expect("fence");
    pg.psql("SELECT pg_reload_conf()").await.expect("reload");
    let probes = default_probes(&pg.url(), None);
    assert_eq!(probes.len(), 1);
    let client = reqwest::Client::new();
    assert!(probes[0].run(&client, t).await.ok, "read-only is healthy");
    let write = Probe::Postgres {
        url: pg.url(),
        write_check: true,
    };
    let r = write.run(&client, t).await;
    assert!(!r.ok && r.detail.contains("writes"), "{r:?}");
    pg.kill().await.expect("kill");
    let r = write.run(&client, t).await;
    assert!(!r.ok, "{r:?}");
    assert_eq!(
        default_probes("postgres://u@h/db", Some("http://a:1/"))[1].name(),
        "http://a:1/health"
    );
}

/// A streaming standby whose site lists a `health` target still has its
/// database probed, so the driver receives its replay lag (what the
/// `max_data_loss` guard judges).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_with_health_targets_still_reports_its_replay_lag() {
    let primary = PostgresCluster::start().await.expect("primary");
    let standby = standby_of(&primary).await;
    let health = vec![Probe::from_target(&http_server("200 OK", "{}").await).unwrap()];
    let probes = site_probes(&standby.url(), None, health);
    assert_eq!(probes.len(), 2, "{probes:?}");

    let cas = Arc::new(ConditionalPutCas::new(Arc::new(InMemory::new())));
    let spare = start_driver(
        fast_policy(Duration::from_secs(3)),
        "spare",
        "primary",
        false,
        cas,
        Arc::new(Recorder::default()),
    );
    assert_eq!(spare.handle.state().lag, None);
    let runner = ProbeRunner {
        target: Target::Local,
        probes,
        interval: Duration::from_millis(100),
        timeout: Duration::from_secs(2),
    };
    let (tx, mut rx) = tokio::sync::watch::channel(Vec::new());
    let task = tokio::spawn(runner.run(spare.handle.clone(), Arc::new(tx)));
    assert!(
        wait_for(Duration::from_secs(15), async || spare
            .handle
            .state()
            .lag
            .is_some())
        .await,
        "no replay lag reached the driver: {:?}",
        rx.borrow().clone()
    );
    rx.changed().await.unwrap();
    let round = rx.borrow_and_update().clone();
    assert!(round.iter().all(|r| r.ok), "{round:?}");
    let pg = round[0].postgres.as_ref().expect("the database was probed");
    assert!(pg.in_recovery, "{pg:?}");
    assert!(round[0].lag.is_some(), "{round:?}");
    task.abort();
}
