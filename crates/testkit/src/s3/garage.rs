//! A single-node Garage (`WARMSPARE_TEST_S3=garage`).
//!
//! Garage is configured through its CLI: the node gets a layout, the
//! testkit gets one access key, and buckets are created and granted to that
//! key with `garage bucket create` / `garage bucket allow`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{Backend, GARAGE_ENV, S3Kind, S3Server, WaitError, wait_http_ready};
use crate::error::{Error, Result, join_paths};
use crate::sys::{self, SERVER_WATCHDOG};
use warmspare_pgcluster::Watchdog;

const ATTEMPTS: usize = 5;
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const KEY_NAME: &str = "warmspare-testkit";

#[derive(Debug)]
pub(super) struct Garage {
    // Declared before `dir`: the server stops before its directory goes.
    _watchdog: Watchdog,
    program: PathBuf,
    config: PathBuf,
    dir: tempfile::TempDir,
}

/// `$WARMSPARE_GARAGE`, then `garage` on `PATH`.
fn find() -> Result<PathBuf> {
    let mut looked = Vec::new();
    if let Some(path) = std::env::var_os(GARAGE_ENV) {
        let path = PathBuf::from(path);
        if sys::is_executable(&path) {
            return Ok(path);
        }
        looked.push(path);
    }
    if let Some(path) = sys::which("garage") {
        return Ok(path);
    }
    looked.push(PathBuf::from("garage on PATH"));
    Err(Error::NotInstalled {
        program: "garage",
        looked: join_paths(&looked),
        hint: "install Garage (https://garagehq.deuxfleurs.fr) or set WARMSPARE_GARAGE, \
               or unset WARMSPARE_TEST_S3 to use moto",
    })
}

pub(super) async fn start() -> Result<S3Server> {
    let program = find()?;
    let dir = sys::temp_dir("garage-")?;
    let log = dir.path().join("garage.log");
    let config = dir.path().join("garage.toml");
    for _ in 0..ATTEMPTS {
        let s3_port = sys::free_port()?;
        let rpc_port = sys::free_port()?;
        let admin_port = sys::free_port()?;
        write_config(&config, dir.path(), s3_port, rpc_port, admin_port)?;
        let args = [
            dir.path().display().to_string(),
            program.display().to_string(),
            "-c".into(),
            config.display().to_string(),
            "server".into(),
        ];
        let mut watchdog = Watchdog::spawn(SERVER_WATCHDOG, &args, Some(&log))?;
        let addr = format!("127.0.0.1:{s3_port}");
        match wait_http_ready(&addr, &mut watchdog, READY_TIMEOUT).await {
            Ok(()) => {
                let garage = Garage {
                    _watchdog: watchdog,
                    program: program.clone(),
                    config: config.clone(),
                    dir,
                };
                let (key_id, secret) = garage.setup().await?;
                return Ok(S3Server {
                    kind: S3Kind::Garage,
                    addr,
                    region: "us-east-1".into(),
                    access_key_id: key_id,
                    secret_access_key: secret,
                    backend: Backend::Garage(garage),
                });
            }
            Err(WaitError::Exited) if sys::tail(&log, 30).contains("in use") => continue,
            Err(WaitError::Exited) => {
                return Err(Error::Command {
                    what: "garage server".into(),
                    detail: format!("exited early; log:\n{}", sys::tail(&log, 30)),
                });
            }
            Err(WaitError::Timeout(last)) => {
                return Err(Error::Timeout {
                    what: format!("garage on {addr}"),
                    timeout: READY_TIMEOUT,
                    detail: format!("{last}; log:\n{}", sys::tail(&log, 30)),
                });
            }
        }
    }
    Err(Error::Command {
        what: "garage server".into(),
        detail: format!("no free ports after {ATTEMPTS} attempts"),
    })
}

fn write_config(path: &Path, dir: &Path, s3: u16, rpc: u16, admin: u16) -> Result<()> {
    let secret: [u8; 32] = rand::random();
    let mut rpc_secret = String::new();
    for b in secret {
        let _ = write!(rpc_secret, "{b:02x}");
    }
    let text = format!(
        r#"metadata_dir = "{meta}"
data_dir = "{data}"
db_engine = "sqlite"
metadata_fsync = false
data_fsync = false
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{rpc_secret}"

[s3_api]
s3_region = "us-east-1"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
"#,
        meta = dir.join("meta").display(),
        data = dir.join("data").display(),
    );
    std::fs::write(path, text).map_err(|e| Error::io_path("writing", path, e))
}

impl Garage {
    /// Assigns the single-node layout and creates the testkit's key.
    async fn setup(&self) -> Result<(String, String)> {
        let node = self.cli_retry(&["node", "id", "-q"]).await?;
        let node_id = node
            .lines()
            .find_map(|l| l.trim().split_once('@').map(|(id, _)| id.to_owned()))
            .ok_or_else(|| Error::Command {
                what: "garage node id".into(),
                detail: format!("unexpected output: {node}"),
            })?;
        self.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &node_id])
            .await?;
        self.cli(&["layout", "apply", "--version", "1"]).await?;
        let key = self.cli_retry(&["key", "create", KEY_NAME]).await?;
        parse_key(&key).ok_or_else(|| Error::Command {
            what: "garage key create".into(),
            detail: format!("could not find the key id and secret in: {key}"),
        })
    }

    pub(super) async fn create_bucket(&self, name: &str) -> Result<()> {
        self.cli_retry(&["bucket", "create", name]).await?;
        self.cli(&[
            "bucket", "allow", "--read", "--write", "--owner", name, "--key", KEY_NAME,
        ])
        .await?;
        Ok(())
    }

    /// Retries for a few seconds: right after start or a layout change
    /// the node may not accept commands yet.
    async fn cli_retry(&self, args: &[&str]) -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.cli(args).await {
                Ok(out) => return Ok(out),
                Err(err) if Instant::now() >= deadline => return Err(err),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    async fn cli(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new(&self.program);
        cmd.arg("-c").arg(&self.config).args(args);
        cmd.current_dir(self.dir.path());
        let output = tokio::process::Command::from(cmd)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| Error::io("running garage", e))?;
        let what = format!("garage {}", args.join(" "));
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(Error::Command {
                what,
                detail: format!(
                    "{}: {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
            })
        }
    }
}

/// Finds the key id (`GK` + hex) and the 64-hex-digit secret in the output
/// of `garage key create`, whatever its layout.
fn parse_key(output: &str) -> Option<(String, String)> {
    let tokens = || {
        output
            .split(|c: char| c.is_whitespace() || c == ':' || c == '"' || c == ',')
            .filter(|t| !t.is_empty())
    };
    let id = tokens().find(|t| {
        t.len() > 2 && t.starts_with("GK") && t[2..].chars().all(|c| c.is_ascii_hexdigit())
    })?;
    let secret = tokens().find(|t| t.len() == 64 && t.chars().all(|c| c.is_ascii_hexdigit()))?;
    Some((id.to_owned(), secret.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_key_create_output() {
        let out = "==== ACCESS KEY INFORMATION ====\n\
                   Key ID:              GK31c2f218a2e44f485b94239e\n\
                   Key name:            warmspare-testkit\n\
                   Secret key:          7d37d093435a41f2aab8f13c19ba067d9776c90215f56614adad6ece597dbb34\n";
        let (id, secret) = parse_key(out).expect("parse");
        assert_eq!(id, "GK31c2f218a2e44f485b94239e");
        assert_eq!(secret.len(), 64);
        assert!(parse_key("nothing here").is_none());
    }
}
