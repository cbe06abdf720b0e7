//! [`backup_physical`]: `pg_basebackup` streamed into the repository.

use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use sqlx::Connection as _;
use time::OffsetDateTime;
use warmspare_store::object_store::ObjectStoreExt;
use warmspare_store::{Manifest, Repository, SnapshotKind, SnapshotWriter};

use super::tar::Scanned;
use super::{BASE_FILE, Checkpoint, PHYSICAL_FORMAT, PhysicalBackupOptions, PhysicalMeta};
use crate::backup_common::{Run, check_tool_for_server, commit, fail, stdout_of};
use crate::error::{Error, Result};
use crate::event::{Event, PhysicalBackupStep, ProgressFn};
use crate::pg::{ServerInfo, Target};
use crate::tools::{Tool, Tools};
use crate::wal::{Lsn, WalFileName, segment_name, segments_between};

/// The warning a server repeats while it waits for `archive_command` at
/// the end of a backup (first after 60 s).
const ARCHIVE_WAIT_WARNING: &str = "still waiting for all required WAL segments to be archived";

/// How often the repository is asked for the backup's WAL.
const WAL_POLL: Duration = Duration::from_millis(250);

/// A committed physical snapshot.
#[derive(Debug, Clone)]
pub struct PhysicalBackup {
    /// The manifest as written.
    pub manifest: Manifest,
    /// Its `meta`, typed.
    pub meta: PhysicalMeta,
}

/// Takes a physical snapshot of the cluster at `source_url` into `repo`
/// (see the module docs for the method).
///
/// The source must archive its WAL into `repo` (`archive_mode = on`,
/// `archive_command = 'warmspare --config FILE wal push %p'`). The role
/// needs the `REPLICATION` attribute (or superuser) and a `replication`
/// entry in `pg_hba.conf`. The password travels in `pg_basebackup`'s
/// environment, never its command line.
///
/// `epoch` is the caller's lease epoch, recorded in the manifest; `now` the
/// caller's clock reading (the snapshot's id and start time).
///
/// Nothing is committed unless every step succeeded: `pg_basebackup`'s
/// exit status is read after its output ended, and the manifest is written
/// only once the WAL from the start to the stop position is in the
/// repository. On failure the partial data objects are deleted (best
/// effort); dropping the future kills `pg_basebackup` and leaves an
/// incomplete snapshot that is never listed and that `prune` removes.
///
/// # Errors
///
/// [`Error::PhysicalBackup`] naming the [`PhysicalBackupStep`], around the
/// cause: [`Error::ToolNotFound`], [`Error::ToolTooOld`],
/// [`Error::Unreachable`], [`Error::AuthenticationFailed`],
/// [`Error::ArchiveModeOff`], [`Error::UnsupportedTablespaces`],
/// [`Error::ToolFailed`] with `pg_basebackup`'s stderr (a missing
/// `replication` permission shows here), [`Error::BadBaseBackup`],
/// [`Error::ArchiveStuck`], [`Error::WalNotArchived`], [`Error::Store`].
pub async fn backup_physical(
    repo: &Repository,
    source_url: &str,
    options: &PhysicalBackupOptions,
    epoch: Option<u64>,
    now: OffsetDateTime,
    progress: Option<ProgressFn<'_>>,
) -> Result<PhysicalBackup> {
    let run = &Run::<PhysicalBackupStep>::new(progress);
    let emit = |event| run.emit(event);

    let (tools, tool) = run
        .check_tool(options.bin_dir.as_deref(), Tool::PgBasebackup)
        .await?;

    let target = run.source(source_url)?;
    let server = Server::read(&target, options)
        .await
        .map_err(fail(PhysicalBackupStep::Connect))?;
    check_tool_for_server(Tool::PgBasebackup, &tool, &server.info)
        .map_err(fail(PhysicalBackupStep::Connect))?;

    let kind = SnapshotKind::Physical;
    let step = PhysicalBackupStep::BaseBackup;
    run.in_new_snapshot(repo, kind, now, step, |mut writer| async move {
        let label = format!("warmspare {}", writer.id());
        let stream = base_backup(&mut writer, &tools, &target, options, &label, emit)
            .await
            .map_err(fail(PhysicalBackupStep::BaseBackup))?;
        let positions = Positions::read(&stream, server.segment_size)
            .map_err(fail(PhysicalBackupStep::BaseBackup))?;

        run.enter(PhysicalBackupStep::WaitForWal);
        wait_for_wal(repo, &positions, options.wal_timeout)
            .await
            .map_err(fail(PhysicalBackupStep::WaitForWal))?;

        run.enter(PhysicalBackupStep::Commit);
        let meta = PhysicalMeta {
            format: PHYSICAL_FORMAT.to_owned(),
            source: target.describe(),
            system_identifier: server.info.system_identifier,
            server_version: server.info.server_version.clone(),
            server_version_num: server.info.server_version_num,
            timeline: positions.timeline,
            stop_timeline: positions.stop_timeline,
            start_lsn: positions.start,
            stop_lsn: positions.stop,
            start_wal: positions.start_wal.clone(),
            stop_wal: positions.stop_wal.clone(),
            wal_segment_size: server.segment_size,
            backup_label: positions.label.clone(),
            base_file: BASE_FILE.to_owned(),
            pg_basebackup: tool.line.clone(),
            checkpoint: options.checkpoint,
        };
        commit(repo, writer, &meta, epoch, run.finished(now))
            .await
            .map(|manifest| PhysicalBackup { manifest, meta })
            .map_err(fail(PhysicalBackupStep::Commit))
    })
    .await
}

/// What the server says before the backup starts.
struct Server {
    info: ServerInfo,
    segment_size: u64,
}

impl Server {
    /// Reads the identity and checks what a physical snapshot needs:
    /// archiving on, no tablespaces besides the default ones.
    async fn read(target: &Target, options: &PhysicalBackupOptions) -> Result<Self> {
        let mut conn = target.connect(options.connect_timeout).await?;
        let result = async {
            let info = ServerInfo::read(&mut conn, false)
                .await
                .map_err(|e| target.sql_error("reading the server's identity", e))?;
            let (archive_mode, segment_size): (String, i64) = sqlx::query_as(
                "SELECT current_setting('archive_mode'), \
                        (SELECT setting::int8 FROM pg_settings WHERE name = 'wal_segment_size')",
            )
            .fetch_one(&mut conn)
            .await
            .map_err(|e| target.sql_error("reading the archive settings", e))?;
            let tablespaces: Vec<String> = sqlx::query_scalar(
                "SELECT spcname::text FROM pg_tablespace \
                 WHERE spcname NOT IN ('pg_default', 'pg_global') ORDER BY 1",
            )
            .fetch_all(&mut conn)
            .await
            .map_err(|e| target.sql_error("listing tablespaces", e))?;
            if archive_mode == "off" {
                return Err(Error::ArchiveModeOff {
                    target: target.describe(),
                    archive_mode,
                });
            }
            if !tablespaces.is_empty() {
                return Err(Error::UnsupportedTablespaces {
                    target: target.describe(),
                    names: tablespaces.join(", "),
                });
            }
            Ok(Self {
                info,
                segment_size: u64::try_from(segment_size).unwrap_or(16 << 20),
            })
        }
        .await;
        let _ = conn.close().await;
        result
    }
}

/// Streams `pg_basebackup`'s tar into the snapshot, watching it for the
/// label and the manifest; returns what it saw.
async fn base_backup(
    writer: &mut SnapshotWriter,
    tools: &Tools,
    target: &Target,
    options: &PhysicalBackupOptions,
    label: &str,
    emit: impl Fn(Event) + Send + Sync,
) -> Result<super::tar::Found> {
    let mut command = tools.command(Tool::PgBasebackup);
    command
        .arg("--pgdata=-")
        .arg("--format=tar")
        .arg("--wal-method=none")
        .arg(match options.checkpoint {
            Checkpoint::Fast => "--checkpoint=fast",
            Checkpoint::Spread => "--checkpoint=spread",
        })
        .arg("--no-sync")
        .arg("--no-password")
        .arg(format!("--label={label}"))
        .arg(format!("--dbname={}", target.tool_url()))
        .stdout(Stdio::piped());
    target.configure_child(&mut command, options.connect_timeout);
    let (alarm, alarmed) = tokio::sync::oneshot::channel();
    let running = tools.spawn_with_alarm(
        Tool::PgBasebackup,
        command,
        Some((ARCHIVE_WAIT_WARNING, alarm)),
    )?;
    let (running, stdout) = stdout_of(running, Tool::PgBasebackup).await?;
    let mut scanned = Scanned::new(stdout);
    let bytes = |n| emit(Event::Bytes(n));
    let uploaded = tokio::select! {
        result = writer.put_file_with_progress(BASE_FILE, &mut scanned, Some(&bytes)) => result,
        Ok(stderr) = alarmed => {
            running.kill().await;
            let message = stderr
                .lines()
                .filter(|l| l.contains("WARNING") || l.contains("HINT"))
                .collect::<Vec<_>>()
                .join(" ");
            return Err(Error::ArchiveStuck {
                message: target.scrub(message),
            });
        }
    };
    match uploaded {
        Ok(_) => {
            // The stream ended: only now does the exit status say whether
            // the archive is whole.
            running.finish(|text| target.scrub(text)).await?;
            Ok(scanned.into_found())
        }
        Err(e) => {
            running.kill().await;
            Err(e.into())
        }
    }
}

/// One entry of the manifest's `WAL-Ranges`.
#[derive(Debug, Deserialize)]
struct WalRange {
    #[serde(rename = "Timeline")]
    timeline: u32,
    #[serde(rename = "Start-LSN")]
    start: Lsn,
    #[serde(rename = "End-LSN")]
    end: Lsn,
}

/// Where the backup starts and stops, and the WAL it needs.
#[derive(Debug)]
struct Positions {
    label: String,
    timeline: u32,
    stop_timeline: u32,
    start: Lsn,
    stop: Lsn,
    start_wal: String,
    stop_wal: String,
    /// Every segment from the start to the stop position.
    needed: Vec<String>,
}

impl Positions {
    fn read(found: &super::tar::Found, segment_size: u64) -> Result<Self> {
        let bad = |reason: &str| Error::BadBaseBackup {
            reason: reason.to_owned(),
        };
        if let Some(reason) = &found.malformed {
            return Err(bad(&format!(
                "pg_basebackup's output is not a tar archive: {reason}"
            )));
        }
        if !found.ended {
            return Err(bad("the tar archive has no end marker"));
        }
        let label = found
            .label
            .as_deref()
            .ok_or_else(|| bad("the archive holds no backup_label"))?;
        let label = String::from_utf8_lossy(label).into_owned();
        let field = |key: &str| {
            label
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(str::trim)
                .ok_or_else(|| bad(&format!("backup_label has no {key:?} line")))
        };
        // "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)"
        let start_line = field("START WAL LOCATION:")?;
        let start: Lsn = start_line
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .parse()?;
        let start_wal = start_line
            .split_once("(file ")
            .and_then(|(_, rest)| rest.strip_suffix(')'))
            .ok_or_else(|| bad("backup_label names no start segment"))?
            .to_owned();
        let start_wal = WalFileName::parse(&start_wal)?.to_string();
        let timeline: u32 = field("START TIMELINE:")?
            .parse()
            .map_err(|_| bad("backup_label has an unreadable START TIMELINE"))?;

        let tail = found.manifest_tail.as_deref().ok_or_else(|| {
            bad("the archive holds no backup_manifest (written by pg_basebackup 13 and newer)")
        })?;
        let ranges = wal_ranges(&String::from_utf8_lossy(tail))
            .ok_or_else(|| bad("backup_manifest has no readable WAL-Ranges"))?;
        let last = ranges
            .last()
            .ok_or_else(|| bad("backup_manifest has empty WAL-Ranges"))?;
        let mut needed = Vec::new();
        for range in &ranges {
            needed.extend(segments_between(
                range.timeline,
                range.start,
                range.end,
                segment_size,
            ));
        }
        let stop_wal = segment_name(
            last.timeline,
            Lsn(last.end.0.saturating_sub(1).max(last.start.0)),
            segment_size,
        );
        Ok(Self {
            timeline,
            stop_timeline: last.timeline,
            start,
            stop: last.end,
            start_wal,
            stop_wal,
            needed,
            label,
        })
    }
}

/// Parses the `"WAL-Ranges": [...]` array out of the end of a backup
/// manifest.
fn wal_ranges(tail: &str) -> Option<Vec<WalRange>> {
    let after = &tail[tail.rfind("\"WAL-Ranges\"")?..];
    let open = after.find('[')?;
    let close = open + after[open..].find(']')?;
    serde_json::from_str(&after[open..=close]).ok()
}

/// Waits until every segment the backup needs is in the repository.
async fn wait_for_wal(repo: &Repository, positions: &Positions, timeout: Duration) -> Result<()> {
    let store = repo.store().object_store();
    let deadline = tokio::time::Instant::now() + timeout;
    for segment in &positions.needed {
        let object = WalFileName::parse(segment)?.object_path();
        loop {
            match store.head(&object).await {
                Ok(_) => break,
                Err(warmspare_store::object_store::Error::NotFound { .. }) => {}
                Err(source) => {
                    return Err(Error::Store(warmspare_store::Error::Store {
                        path: object.to_string(),
                        source,
                    }));
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::WalNotArchived {
                    segment: segment.clone(),
                    waited: humantime::format_duration(timeout).to_string(),
                });
            }
            tokio::time::sleep(WAL_POLL).await;
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::physical::tar::Found;

    const LABEL: &str = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
        CHECKPOINT LOCATION: 0/2000060\nBACKUP METHOD: streamed\nBACKUP FROM: primary\n\
        START TIME: 2026-11-22 02:45:00 UTC\nLABEL: warmspare x\nSTART TIMELINE: 1\n";

    fn found(manifest_tail: &str) -> Found {
        Found {
            label: Some(LABEL.as_bytes().to_vec()),
            manifest_tail: Some(manifest_tail.as_bytes().to_vec()),
            ended: true,
            malformed: None,
        }
    }

    #[test]
    fn positions_from_label_and_manifest() {
        let tail = "\"Path\": \"x\", \"Size\": 1 },\n],\n\"WAL-Ranges\": [\n\
            { \"Timeline\": 1, \"Start-LSN\": \"0/2000028\", \"End-LSN\": \"0/3000100\" }\n],\n\
            \"Manifest-Checksum\": \"abc\"}\n";
        let p = Positions::read(&found(tail), 16 << 20).unwrap();
        assert_eq!((p.timeline, p.stop_timeline), (1, 1));
        assert_eq!(
            (p.start.to_string(), p.stop.to_string()),
            ("0/2000028".into(), "0/3000100".into())
        );
        assert_eq!(p.start_wal, "000000010000000000000002");
        assert_eq!(p.stop_wal, "000000010000000000000003");
        assert_eq!(
            p.needed,
            ["000000010000000000000002", "000000010000000000000003"]
        );
    }

    #[test]
    fn unusable_streams_are_refused() {
        let mut f = found("{}");
        let e = Positions::read(&f, 16 << 20).unwrap_err();
        assert!(e.to_string().contains("WAL-Ranges"), "{e}");
        f.manifest_tail = None;
        let e = Positions::read(&f, 16 << 20).unwrap_err();
        assert!(e.to_string().contains("backup_manifest"), "{e}");
        f.label = None;
        assert!(Positions::read(&f, 16 << 20).is_err());
        f.malformed = Some("bad".into());
        let e = Positions::read(&f, 16 << 20).unwrap_err();
        assert!(e.to_string().contains("not a tar archive"), "{e}");
    }
}
