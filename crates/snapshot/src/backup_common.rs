//! What [`crate::backup_logical`] and [`crate::backup_physical`] share:
//! steps announced as events and wrapping their errors, the tool check,
//! the source's target, a new snapshot's objects deleted on failure, and
//! the commit that first checks every data object is still in place.

use std::marker::PhantomData;
use std::path::Path;
use std::time::Instant;

use serde::Serialize;
use time::OffsetDateTime;
use tokio::process::{ChildStdin, ChildStdout};
use warmspare_store::object_store::ObjectStoreExt;
use warmspare_store::{Manifest, Repository, SnapshotKind, SnapshotWriter, layout};

use crate::error::{Error, Result};
use crate::event::{BackupStep, Event, PhysicalBackupStep, ProgressFn};
use crate::pg::{ServerInfo, Target};
use crate::tools::{Running, Tool, ToolVersion, Tools, major_text};

/// The steps of one kind of backup: each is announced as an [`Event`], and
/// an error met in it is wrapped in that step's error.
pub(crate) trait Step: Copy + Send + Sync {
    /// Finding the client programs and reading their versions.
    const CHECK_TOOLS: Self;
    /// Connecting to the source.
    const CONNECT: Self;

    /// The event that announces the step.
    fn event(self) -> Event;

    /// `source`, met in this step.
    fn error(self, source: Error) -> Error;
}

/// Implements [`Step`] for `$steps`, announced as `Event::$variant` and
/// failing as `Error::$variant`.
macro_rules! step {
    ($steps:ty, $variant:ident) => {
        impl Step for $steps {
            const CHECK_TOOLS: Self = Self::CheckTools;
            const CONNECT: Self = Self::Connect;

            fn event(self) -> Event {
                Event::$variant(self)
            }

            fn error(self, source: Error) -> Error {
                Error::$variant {
                    step: self,
                    source: Box::new(source),
                }
            }
        }
    };
}

step!(BackupStep, Backup);
step!(PhysicalBackupStep, PhysicalBackup);

/// Wraps an error in `step`'s error (for `map_err`).
pub(crate) fn fail<S: Step>(step: S) -> impl Fn(Error) -> Error + Copy {
    move |e| step.error(e)
}

/// One backup under way: where its progress goes, and when it started on
/// the monotonic clock.
pub(crate) struct Run<'p, S> {
    progress: Option<ProgressFn<'p>>,
    clock: Instant,
    steps: PhantomData<S>,
}

impl<'p, S: Step> Run<'p, S> {
    /// Starts the clock.
    pub(crate) fn new(progress: Option<ProgressFn<'p>>) -> Self {
        Self {
            progress,
            clock: Instant::now(),
            steps: PhantomData,
        }
    }

    /// Reports `event`, if anyone listens.
    pub(crate) fn emit(&self, event: Event) {
        if let Some(progress) = self.progress {
            progress(event);
        }
    }

    /// Announces `step`.
    pub(crate) fn enter(&self, step: S) {
        self.emit(step.event());
    }

    /// `started` plus the monotonic time since [`Run::new`].
    pub(crate) fn finished(&self, started: OffsetDateTime) -> OffsetDateTime {
        started + self.clock.elapsed()
    }

    /// Enters [`Step::CHECK_TOOLS`]: the programs in `bin_dir` (or the
    /// executable search path) and the version of `tool`.
    pub(crate) async fn check_tool(
        &self,
        bin_dir: Option<&Path>,
        tool: Tool,
    ) -> Result<(Tools, ToolVersion)> {
        self.enter(S::CHECK_TOOLS);
        let tools = Tools::new(bin_dir);
        let version = tools.version(tool).await.map_err(fail(S::CHECK_TOOLS))?;
        Ok((tools, version))
    }

    /// Enters [`Step::CONNECT`] and parses the source's URL.
    pub(crate) fn source(&self, source_url: &str) -> Result<Target> {
        self.enter(S::CONNECT);
        Target::parse(source_url).map_err(fail(S::CONNECT))
    }

    /// Enters `step`, begins a snapshot of `kind` named by `now` and runs
    /// `body` on its writer. When `body` fails, the snapshot's data objects
    /// are deleted (best effort: the error that matters is the one being
    /// returned, and `prune` removes whatever stays behind).
    pub(crate) async fn in_new_snapshot<T, F, Fut>(
        &self,
        repo: &Repository,
        kind: SnapshotKind,
        now: OffsetDateTime,
        step: S,
        body: F,
    ) -> Result<T>
    where
        F: FnOnce(SnapshotWriter) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.enter(step);
        let writer = repo
            .begin_snapshot(kind, now)
            .await
            .map_err(|e| step.error(e.into()))?;
        let id = writer.id().clone();
        let result = body(writer).await;
        if result.is_err() {
            let _ = crate::catalog::delete_objects(repo, &id).await;
        }
        result
    }
}

/// Refuses a `tool` older than the server it is to work with.
pub(crate) fn check_tool_for_server(
    tool: Tool,
    version: &ToolVersion,
    server: &ServerInfo,
) -> Result<()> {
    if version.major < server.major() {
        return Err(Error::ToolTooOld {
            tool: tool.name(),
            tool_version: version.version.clone(),
            what: "the server",
            needed: server.server_version.clone(),
            needed_major: major_text(server.major()),
        });
    }
    Ok(())
}

/// The standard input of `running` (a `tool` started with it piped); the
/// program is killed if it has none.
pub(crate) async fn stdin_of(mut running: Running, tool: Tool) -> Result<(Running, ChildStdin)> {
    match running.child_mut().stdin.take() {
        Some(stdin) => Ok((running, stdin)),
        None => {
            running.kill().await;
            Err(Error::ToolIo {
                tool: tool.name(),
                context: "no input pipe to",
                source: std::io::Error::other("stdin not captured"),
            })
        }
    }
}

/// The standard output of `running` (a `tool` started with it piped); the
/// program is killed if it has none.
pub(crate) async fn stdout_of(mut running: Running, tool: Tool) -> Result<(Running, ChildStdout)> {
    match running.child_mut().stdout.take() {
        Some(stdout) => Ok((running, stdout)),
        None => {
            running.kill().await;
            Err(Error::ToolIo {
                tool: tool.name(),
                context: "no output pipe from",
                source: std::io::Error::other("stdout not captured"),
            })
        }
    }
}

/// Checks that every data object `writer` wrote is still in place (a
/// `prune` with a grace period shorter than the backup could have removed
/// them), then writes the manifest with `meta`.
pub(crate) async fn commit(
    repo: &Repository,
    writer: SnapshotWriter,
    meta: &impl Serialize,
    epoch: Option<u64>,
    finished: OffsetDateTime,
) -> Result<Manifest> {
    let store = repo.store().object_store();
    for name in writer.files().keys() {
        let path = layout::snapshot_file(writer.id(), name)?;
        if let Err(e) = store.head(&path).await {
            return Err(Error::Store(match e {
                warmspare_store::object_store::Error::NotFound { .. } => {
                    warmspare_store::Error::NotFound {
                        path: path.to_string(),
                    }
                }
                source => warmspare_store::Error::Store {
                    path: path.to_string(),
                    source,
                },
            }));
        }
    }
    let meta = serde_json::to_value(meta).map_err(|e| Error::BadMeta {
        id: writer.id().clone(),
        reason: format!("cannot encode: {e}"),
    })?;
    Ok(writer.commit(meta, epoch, finished).await?)
}
