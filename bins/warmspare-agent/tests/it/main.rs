//! The `warmspare-agent` binary: exit codes, config errors, signals, logs.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_warmspare-agent");
const TOKEN: &str = "bin-test-token-93ab";

fn write_config(dir: &Path, listen: &str, extra: &str) -> std::path::PathBuf {
    let token = dir.join("agent.token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let path = dir.join("warmspare.toml");
    let text = format!(
        "site = \"spare\"\n\
         [repository]\nurl = \"file:///nonexistent/repo\"\n\
         [sites.spare]\ndatabase = \"postgres://builder@127.0.0.1:1/builder\"\n\
         [schedule]\nbackup = \"every 1s\"\n\
         [agent]\nlisten = \"{listen}\"\ntoken_file = \"{}\"\n{extra}",
        token.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn agent(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("WARMSPARE_CONFIG")
        .env_remove("WARMSPARE_SITE")
        .output()
        .unwrap()
}

#[test]
fn check_config_accepts_a_valid_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "127.0.0.1:0", "");
    let out = agent(&["--config", config.to_str().unwrap(), "--check-config"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid for site spare"));
}

#[test]
fn configuration_errors_exit_with_two_and_name_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "127.0.0.1:0", "colour = 1\n");
    let path = config.to_str().unwrap();
    let out = agent(&["--config", path, "--check-config"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "invalid config {path}, line 11, key `agent.colour`"
        )),
        "{stderr}"
    );

    let config = write_config(dir.path(), "127.0.0.1:0", "");
    let out = agent(&[
        "--config",
        config.to_str().unwrap(),
        "--site",
        "nowhere",
        "--check-config",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("nowhere"));

    std::fs::write(dir.path().join("agent.token"), "\n").unwrap();
    let out = agent(&["--config", config.to_str().unwrap(), "--check-config"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("is empty"));

    let out = agent(&["--config", "/nonexistent/warmspare.toml"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// Sends one HTTP/1.1 request and returns the status line.
fn request(port: u16, head: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(format!("{head}Host: agent\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer.lines().next().unwrap_or_default().to_owned()
}

#[test]
fn sigterm_stops_the_agent_cleanly_and_the_token_is_never_logged() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &format!("127.0.0.1:{port}"), "");
    let mut child = Command::new(BIN)
        .args(["--config", config.to_str().unwrap(), "--log-format", "json"])
        .args(["--log-level", "debug"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the agent never listened");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the agent exited early"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(request(port, "GET /health HTTP/1.1\r\n"), "HTTP/1.1 200 OK");
    let authorized = format!("POST /pause HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n");
    assert_eq!(request(port, &authorized), "HTTP/1.1 200 OK");

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");

    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    assert!(!logs.contains(TOKEN), "{logs}");
    for needle in [
        // The binary registers the built-in jobs.
        "\"job\":\"backup\",\"schedule\":\"every 1s\",\"available\":true",
        "agent started",
        "scheduler paused",
        "SIGTERM received",
        "agent stopped",
    ] {
        assert!(logs.contains(needle), "{needle:?} not in\n{logs}");
    }
    for line in logs.lines() {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(record["level"].is_string(), "{line}");
    }
}

/// The agent reads `[repository] encryption_key_file` itself (its jobs need
/// the key): a missing or malformed file is a configuration error, exit 2,
/// and the key's text never appears in the output.
#[test]
fn the_encryption_key_file_is_read_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("repo.key");
    let config = dir.path().join("warmspare.toml");
    std::fs::write(
        &config,
        format!(
            "site = \"spare\"\n\
             [repository]\nurl = \"file:///nonexistent/repo\"\nencryption_key_file = \"{}\"\n\
             [sites.spare]\ndatabase = \"postgres://builder@127.0.0.1:1/builder\"\n",
            key.display()
        ),
    )
    .unwrap();
    let path = config.to_str().unwrap();

    let out = agent(&["--config", path, "--check-config"]);
    assert_eq!(out.status.code(), Some(2), "missing key file: {out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("encryption_key_file"));

    let bad = "not-a-key-but-a-secret-looking-string";
    std::fs::write(&key, bad).unwrap();
    let out = agent(&["--config", path, "--check-config"]);
    assert_eq!(out.status.code(), Some(2), "malformed key: {out:?}");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains(bad), "the key's text leaked: {all}");

    std::fs::write(&key, format!("{}\n", "3f".repeat(16) + &"a7".repeat(16))).unwrap();
    let out = agent(&["--config", path, "--check-config"]);
    assert!(out.status.success(), "valid key: {out:?}");
}
