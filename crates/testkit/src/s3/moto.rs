//! moto's standalone server (`scripts/moto-server.py` or `moto_server`,
//! `-H 127.0.0.1 -p PORT`).

use std::path::PathBuf;
use std::time::Duration;

use super::{Backend, MOTO_ENV, S3Server, WaitError, wait_http_ready, workspace_venv_bin};
use crate::error::{Error, Result, join_paths};
use crate::sys::{self, SERVER_WATCHDOG};
use warmspare_pgcluster::Watchdog;

const ATTEMPTS: usize = 5;
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How moto is started: a program and the arguments before `-H ... -p ...`.
pub(super) struct Launcher {
    program: PathBuf,
    args: Vec<String>,
}

impl Launcher {
    fn display(&self) -> String {
        std::iter::once(self.program.display().to_string())
            .chain(self.args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// `$WARMSPARE_MOTO`; then the workspace's `scripts/moto-server.py` under
/// `<workspace>/.venv/bin/python` (moto with conditional writes made
/// atomic: plain moto checks `If-Match` and writes in two steps, so two
/// concurrent compare-and-swaps can both win); then
/// `<workspace>/.venv/bin/moto_server`, then `PATH`.
pub(super) fn find() -> Result<Launcher> {
    let raw = |program: PathBuf| Launcher {
        program,
        args: Vec::new(),
    };
    let mut looked = Vec::new();
    if let Some(path) = std::env::var_os(MOTO_ENV) {
        let path = PathBuf::from(path);
        if sys::is_executable(&path) {
            return Ok(raw(path));
        }
        looked.push(path);
    }
    let python = workspace_venv_bin().join("python");
    let script = workspace_venv_bin().join("../../scripts/moto-server.py");
    if sys::is_executable(&python) && script.is_file() {
        return Ok(Launcher {
            program: python,
            args: vec![script.display().to_string()],
        });
    }
    let venv = workspace_venv_bin().join("moto_server");
    if sys::is_executable(&venv) {
        return Ok(raw(venv));
    }
    looked.push(venv);
    if let Some(path) = sys::which("moto_server") {
        return Ok(raw(path));
    }
    looked.push(PathBuf::from("moto_server on PATH"));
    Err(Error::NotInstalled {
        program: "moto_server",
        looked: join_paths(&looked),
        hint: "run scripts/install-deps (python3 -m venv .venv && .venv/bin/pip install \
               'moto[s3]' flask flask-cors) or set WARMSPARE_MOTO",
    })
}

pub(super) async fn start() -> Result<S3Server> {
    let launcher = find()?;
    let dir = sys::temp_dir("moto-")?;
    let log = dir.path().join("moto.log");
    for _ in 0..ATTEMPTS {
        let port = sys::free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let mut args = vec![
            dir.path().display().to_string(),
            launcher.program.display().to_string(),
        ];
        args.extend(launcher.args.iter().cloned());
        args.extend([
            "-H".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
        ]);
        let mut watchdog = Watchdog::spawn(SERVER_WATCHDOG, &args, Some(&log))?;
        match wait_http_ready(&addr, &mut watchdog, READY_TIMEOUT).await {
            Ok(()) => {
                let backend = Backend::Moto {
                    _watchdog: watchdog,
                    _dir: dir,
                };
                return Ok(S3Server::moto_like(addr, backend));
            }
            Err(WaitError::Exited) if port_taken(&sys::tail(&log, 20)) => {
                tracing::debug!(port, "moto could not bind, retrying");
            }
            Err(WaitError::Exited) => {
                return Err(Error::Command {
                    what: format!("{} -p {port}", launcher.display()),
                    detail: format!("exited early; log:\n{}", sys::tail(&log, 30)),
                });
            }
            Err(WaitError::Timeout(last)) => {
                return Err(Error::Timeout {
                    what: format!("moto_server on {addr}"),
                    timeout: READY_TIMEOUT,
                    detail: format!("{last}; log:\n{}", sys::tail(&log, 30)),
                });
            }
        }
    }
    Err(Error::Command {
        what: "moto_server".into(),
        detail: format!(
            "no free port after {ATTEMPTS} attempts; log:\n{}",
            sys::tail(&log, 30)
        ),
    })
}

fn port_taken(log: &str) -> bool {
    log.contains("in use") || log.contains("Address already in use")
}
