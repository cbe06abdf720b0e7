//! PostgreSQL's client programs: finding them, their versions, running
//! them with their standard error captured.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::error::{Error, Result};

/// How much of a program's standard error is kept for the error message.
const STDERR_TAIL: usize = 8 * 1024;

/// A PostgreSQL client program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // The programs' own names.
pub(crate) enum Tool {
    PgDump,
    PgDumpall,
    PgRestore,
    PgBasebackup,
}

impl Tool {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Tool::PgDump => "pg_dump",
            Tool::PgDumpall => "pg_dumpall",
            Tool::PgRestore => "pg_restore",
            Tool::PgBasebackup => "pg_basebackup",
        }
    }
}

/// Where the client programs are: a configured directory, or the
/// executable search path.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tools {
    bin_dir: Option<PathBuf>,
}

/// A program's version, from `--version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ToolVersion {
    /// The whole first line: `pg_dump (PostgreSQL) 15.4 (Debian 15.4-1)`.
    pub(crate) line: String,
    /// `15.4`.
    pub(crate) version: String,
    /// `(15, 0)` for 15.4, `(9, 6)` for 9.6.24.
    pub(crate) major: (u32, u32),
}

impl Tools {
    pub(crate) fn new(bin_dir: Option<&Path>) -> Self {
        Self {
            bin_dir: bin_dir.map(Path::to_path_buf),
        }
    }

    /// A command for `tool`: killed when dropped, standard input closed,
    /// environment inherited from the caller's process (so that libpq's
    /// `~/.pgpass`, `PGSSL*` and service files work as with the programs
    /// run by hand).
    pub(crate) fn command(&self, tool: Tool) -> Command {
        let program = match &self.bin_dir {
            Some(dir) => dir.join(tool.name()),
            None => PathBuf::from(tool.name()),
        };
        let mut command = Command::new(program);
        command
            .kill_on_drop(true)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    }

    fn location(&self, tool: Tool) -> String {
        match &self.bin_dir {
            Some(dir) => format!("looked for {}", dir.join(tool.name()).display()),
            None => "looked in the executable search path".into(),
        }
    }

    /// Starts `command` (made by [`Tools::command`]), capturing its stderr.
    pub(crate) fn spawn(&self, tool: Tool, command: Command) -> Result<Running> {
        self.spawn_with_alarm(tool, command, None)
    }

    /// Like [`Tools::spawn`]; `alarm` gets the end of the program's stderr
    /// once its stderr contains `needle` (the first time).
    pub(crate) fn spawn_with_alarm(
        &self,
        tool: Tool,
        mut command: Command,
        alarm: Option<(&'static str, tokio::sync::oneshot::Sender<String>)>,
    ) -> Result<Running> {
        let mut child = command.spawn().map_err(|e| self.spawn_error(tool, e))?;
        let stderr = child.stderr.take().map(|mut pipe| {
            let mut alarm = alarm;
            tokio::spawn(async move {
                let mut tail = Vec::new();
                let mut buf = vec![0u8; 4096];
                loop {
                    match pipe.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            tail.extend_from_slice(&buf[..n]);
                            if let Some((needle, _)) = &alarm {
                                let text = String::from_utf8_lossy(&tail);
                                if text.contains(needle)
                                    && let Some((_, sender)) = alarm.take()
                                {
                                    let _ = sender.send(text.into_owned());
                                }
                            }
                            if tail.len() > 2 * STDERR_TAIL {
                                tail.drain(..tail.len() - STDERR_TAIL);
                            }
                        }
                    }
                }
                if tail.len() > STDERR_TAIL {
                    tail.drain(..tail.len() - STDERR_TAIL);
                }
                String::from_utf8_lossy(&tail).into_owned()
            })
        });
        Ok(Running {
            tool,
            child,
            stderr,
        })
    }

    fn spawn_error(&self, tool: Tool, error: std::io::Error) -> Error {
        match error.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                Error::ToolNotFound {
                    tool: tool.name(),
                    location: format!("{}: {error}", self.location(tool)),
                }
            }
            _ => Error::ToolIo {
                tool: tool.name(),
                context: "cannot start",
                source: error,
            },
        }
    }

    /// Runs `tool --version`.
    pub(crate) async fn version(&self, tool: Tool) -> Result<ToolVersion> {
        let mut command = self.command(tool);
        command.arg("--version").stdout(Stdio::piped());
        let output = command
            .output()
            .await
            .map_err(|e| self.spawn_error(tool, e))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout.lines().next().unwrap_or_default().trim().to_owned();
        if !output.status.success() {
            return Err(Error::ToolFailed {
                tool: tool.name(),
                status: describe_status(output.status),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        parse_version(&line).ok_or_else(|| Error::ToolFailed {
            tool: tool.name(),
            status: "unexpected --version output".into(),
            stderr: line.clone(),
        })
    }
}

/// A running client program.
pub(crate) struct Running {
    tool: Tool,
    child: Child,
    stderr: Option<JoinHandle<String>>,
}

impl Running {
    pub(crate) fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Waits for the program to exit; a failure carries the end of its
    /// standard error, passed through `scrub`.
    pub(crate) async fn finish(mut self, scrub: impl Fn(String) -> String) -> Result<()> {
        let status = self.child.wait().await.map_err(|e| Error::ToolIo {
            tool: self.tool.name(),
            context: "waiting for",
            source: e,
        })?;
        let stderr = match self.stderr.take() {
            Some(task) => task.await.unwrap_or_default(),
            None => String::new(),
        };
        if status.success() {
            Ok(())
        } else {
            Err(Error::ToolFailed {
                tool: self.tool.name(),
                status: describe_status(status),
                stderr: scrub(stderr),
            })
        }
    }

    /// Kills the program and waits for it, ignoring errors (it may have
    /// exited already).
    pub(crate) async fn kill(mut self) {
        let _ = self.child.kill().await;
        if let Some(task) = self.stderr.take() {
            task.abort();
        }
    }
}

fn describe_status(status: ExitStatus) -> String {
    match status.code() {
        Some(code) => format!("exit status {code}"),
        None => {
            #[cfg(unix)]
            {
                use std::os::unix::process::ExitStatusExt;
                if let Some(signal) = status.signal() {
                    return format!("killed by signal {signal}");
                }
            }
            status.to_string()
        }
    }
}

/// Parses `pg_dump (PostgreSQL) 15.4 (Debian 15.4-1.pgdg120+1)`,
/// `pg_restore (PostgreSQL) 17beta1` or `pg_dump (PostgreSQL) 9.6.24`.
pub(crate) fn parse_version(line: &str) -> Option<ToolVersion> {
    let after = line.split_once(')').map_or(line, |(_, rest)| rest);
    let token = after
        .split_whitespace()
        .find(|t| t.starts_with(|c: char| c.is_ascii_digit()))?;
    let mut numbers = token.split(|c: char| !c.is_ascii_digit());
    let first: u32 = numbers.next()?.parse().ok()?;
    let second: u32 = numbers.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    let major = if first >= 10 {
        (first, 0)
    } else {
        (first, second)
    };
    Some(ToolVersion {
        line: line.to_owned(),
        version: token.to_owned(),
        major,
    })
}

/// `15` or `9.6`.
pub(crate) fn major_text(major: (u32, u32)) -> String {
    if major.0 >= 10 {
        major.0.to_string()
    } else {
        format!("{}.{}", major.0, major.1)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        let v = parse_version("pg_dump (PostgreSQL) 15.4 (Debian 15.4-1.pgdg120+1)").unwrap();
        assert_eq!((v.version.as_str(), v.major), ("15.4", (15, 0)));
        let v = parse_version("pg_restore (PostgreSQL) 17beta1").unwrap();
        assert_eq!(v.major, (17, 0));
        let v = parse_version("pg_dump (PostgreSQL) 9.6.24").unwrap();
        assert_eq!(v.major, (9, 6));
        assert!(v.major < (10, 0));
        assert_eq!(major_text((9, 6)), "9.6");
        assert_eq!(major_text((16, 0)), "16");
        assert!(parse_version("something else").is_none());
    }
}
