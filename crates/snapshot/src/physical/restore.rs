//! [`restore_physical`]: a physical snapshot laid out as a data directory,
//! with the recovery settings that replay the WAL archive.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use time::OffsetDateTime;
use time::macros::format_description;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warmspare_store::{Manifest, Repository, SnapshotId, SnapshotKind};

use super::{PhysicalMeta, PhysicalRestoreOptions, RecoveryTarget};
use crate::catalog;
use crate::error::{Error, Result};
use crate::event::{Event, PhysicalRestoreStep, ProgressFn};

/// What [`restore_physical`] did.
#[derive(Debug, Clone)]
pub struct PhysicalRestoreReport {
    /// The snapshot restored.
    pub id: SnapshotId,
    /// The data directory.
    pub data_dir: PathBuf,
    /// `recovery.signal` or `standby.signal`.
    pub signal_file: &'static str,
    /// Where recovery will stop.
    pub target: RecoveryTarget,
    /// Bytes of the base backup extracted.
    pub bytes: u64,
    /// What the manifest records about the snapshot.
    pub meta: PhysicalMeta,
}

/// The newest physical snapshot that finished at or before `time`: the one
/// to restore for a recovery to `time`.
///
/// # Errors
///
/// [`Error::InvalidRecoveryTarget`] when no physical snapshot is that old;
/// a manifest that cannot be read is an error rather than skipped.
pub async fn snapshot_for_time(repo: &Repository, time: OffsetDateTime) -> Result<Manifest> {
    for id in repo.list_snapshots().await? {
        if id.timestamp() > time {
            continue;
        }
        let manifest = catalog::read_manifest(repo, &id).await?;
        if manifest.kind == SnapshotKind::Physical && manifest.finished <= time {
            return Ok(manifest);
        }
    }
    Err(Error::InvalidRecoveryTarget {
        reason: format!("no physical snapshot finished before {}", format_time(time)),
    })
}

/// Restores physical snapshot `id` into `data_dir` (missing or empty) and
/// writes the recovery settings: starting PostgreSQL on it then replays the
/// WAL archive through `restore_command` up to `options.target` and
/// promotes, or with `options.standby` runs as a standby fed from the
/// repository. See the module docs for ownership and settings.
///
/// A failure after the extraction began removes what was extracted (and
/// the directory, if this call created it). The base backup is verified
/// while it streams into `tar`; a corrupt object fails the restore naming
/// it, and nothing is left behind.
///
/// # Errors
///
/// [`Error::PhysicalRestore`] naming the [`PhysicalRestoreStep`], around
/// the cause: [`Error::SnapshotNotFound`], [`Error::WrongKind`],
/// [`Error::BadMeta`], [`Error::InvalidRecoveryTarget`] (a standby with a
/// target, a target time before the snapshot's end),
/// [`Error::WalMissing`] (a segment up to the snapshot's stop position is
/// not in the repository), [`Error::DataDirNotEmpty`], [`Error::DataDir`],
/// [`Error::Store`] (a digest mismatch names the object),
/// [`Error::ToolFailed`] for `tar`.
pub async fn restore_physical(
    repo: &Repository,
    id: &SnapshotId,
    data_dir: &Path,
    options: &PhysicalRestoreOptions,
    progress: Option<ProgressFn<'_>>,
) -> Result<PhysicalRestoreReport> {
    let emit = |event| {
        if let Some(progress) = progress {
            progress(event);
        }
    };
    let fail = |step| {
        let data_dir = data_dir.display().to_string();
        move |e: Error| Error::PhysicalRestore {
            step,
            data_dir,
            source: Box::new(e),
        }
    };

    emit(Event::PhysicalRestore(PhysicalRestoreStep::Resolve));
    let (manifest, meta) = resolve(repo, id, options)
        .await
        .map_err(fail(PhysicalRestoreStep::Resolve))?;

    emit(Event::PhysicalRestore(PhysicalRestoreStep::CheckTarget));
    let created = prepare_dir(data_dir).map_err(fail(PhysicalRestoreStep::CheckTarget))?;

    let result = async {
        emit(Event::PhysicalRestore(PhysicalRestoreStep::Extract));
        let bytes = extract(repo, &manifest, &meta, data_dir, options, emit)
            .await
            .map_err(fail(PhysicalRestoreStep::Extract))?;
        emit(Event::PhysicalRestore(PhysicalRestoreStep::Configure));
        let signal_file = configure(data_dir, &manifest, options)
            .map_err(fail(PhysicalRestoreStep::Configure))?;
        Ok(PhysicalRestoreReport {
            id: manifest.id.clone(),
            data_dir: data_dir.to_path_buf(),
            signal_file,
            target: options.target,
            bytes,
            meta,
        })
    }
    .await;
    if result.is_err() {
        clean_up(data_dir, created);
    }
    result
}

async fn resolve(
    repo: &Repository,
    id: &SnapshotId,
    options: &PhysicalRestoreOptions,
) -> Result<(Manifest, PhysicalMeta)> {
    let manifest = catalog::resolve(repo, id.as_str(), Some(SnapshotKind::Physical)).await?;
    let meta = PhysicalMeta::from_manifest(&manifest)?;
    let invalid = |reason: String| Err(Error::InvalidRecoveryTarget { reason });
    match options.target {
        RecoveryTarget::Latest => {}
        _ if options.standby => {
            return invalid(
                "a standby replays all the WAL there is; a target time or 'immediate' \
                 needs a recovery, not a standby"
                    .into(),
            );
        }
        // Recovery replays forward from the end of the base backup: it
        // cannot stop before the snapshot is consistent.
        RecoveryTarget::Time(t) if t < manifest.finished => {
            return invalid(format!(
                "{} is before snapshot {} was complete ({}): a recovery starts at a \
                 snapshot's end; restore an older snapshot, or choose a later time",
                format_time(t),
                manifest.id,
                format_time(manifest.finished)
            ));
        }
        _ => {}
    }
    if options.restore_command.trim().is_empty() {
        return invalid(
            "restore_command is empty: recovery needs it to read the WAL archive".into(),
        );
    }
    // Without the WAL up to the stop position, neither a recovery nor a
    // standby can start; a standby would wait for it silently.
    super::needed::check_present(repo, &manifest.id, &meta).await?;
    Ok((manifest, meta))
}

/// Checks that `dir` is missing or empty, creates it (mode 0700); returns
/// whether it was created.
fn prepare_dir(dir: &Path) -> Result<bool> {
    let io = |context: &'static str| {
        move |source| Error::DataDir {
            context,
            path: dir.display().to_string(),
            source,
        }
    };
    let created = match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(Error::DataDirNotEmpty {
                    path: dir.display().to_string(),
                });
            }
            false
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(io("creating"))?;
            true
        }
        Err(e) => return Err(io("reading")(e)),
    };
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io("setting permissions on"))?;
    Ok(created)
}

/// Streams the verified base backup into `tar -x`.
async fn extract(
    repo: &Repository,
    manifest: &Manifest,
    meta: &PhysicalMeta,
    data_dir: &Path,
    options: &PhysicalRestoreOptions,
    emit: impl Fn(Event) + Send + Sync,
) -> Result<u64> {
    let mut tar = tokio::process::Command::new(&options.tar)
        .arg("--extract")
        .arg("--file=-")
        .arg("--directory")
        .arg(data_dir)
        // Files belong to whoever restores; the caller hands them over.
        .arg("--no-same-owner")
        .arg("--preserve-permissions")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                Error::ToolNotFound {
                    tool: "tar",
                    location: format!("{}: {e}", options.tar.display()),
                }
            }
            _ => Error::ToolIo {
                tool: "tar",
                context: "cannot start",
                source: e,
            },
        })?;
    let mut stdin = tar.stdin.take();
    let mut stderr = tar.stderr.take();
    let stderr_task = tokio::spawn(async move {
        let mut text = String::new();
        if let Some(pipe) = &mut stderr {
            let _ = pipe.take(64 * 1024).read_to_string(&mut text).await;
        }
        text
    });
    let bytes = |n| emit(Event::Bytes(n));
    let streamed = match &mut stdin {
        Some(pipe) => repo
            .read_manifest_file(manifest, &meta.base_file, pipe, Some(&bytes))
            .await
            .map_err(Error::from),
        None => Err(Error::ToolIo {
            tool: "tar",
            context: "no input pipe to",
            source: std::io::Error::other("stdin not captured"),
        }),
    };
    if let Some(mut pipe) = stdin.take() {
        let _ = pipe.shutdown().await;
    }
    let info = match streamed {
        Ok(info) => info,
        // Corruption is the news, whatever tar made of the bytes.
        Err(e) if e.is_corruption() => {
            let _ = tar.kill().await;
            return Err(e);
        }
        Err(e) => {
            // tar may have stopped first (a full disk): its error explains.
            let status = tar.wait().await;
            let text = stderr_task.await.unwrap_or_default();
            // Or it stopped at damaged bytes before the codec could tell:
            // read the rest to find out, since corruption is the news.
            if let Err(damaged) = repo
                .read_manifest_file(manifest, &meta.base_file, &mut tokio::io::sink(), None)
                .await
                .map_err(Error::from)
                && damaged.is_corruption()
            {
                return Err(damaged);
            }
            return Err(match status {
                Ok(s) if !s.success() => Error::ToolFailed {
                    tool: "tar",
                    status: s.to_string(),
                    stderr: text,
                },
                _ => e,
            });
        }
    };
    let status = tar.wait().await.map_err(|e| Error::ToolIo {
        tool: "tar",
        context: "waiting for",
        source: e,
    })?;
    let text = stderr_task.await.unwrap_or_default();
    if !status.success() {
        return Err(Error::ToolFailed {
            tool: "tar",
            status: status.to_string(),
            stderr: text,
        });
    }
    for must in ["PG_VERSION", "global/pg_control", "backup_label"] {
        if !data_dir.join(must).is_file() {
            return Err(Error::BadBaseBackup {
                reason: format!("the extracted base backup has no {must}"),
            });
        }
    }
    Ok(info.size)
}

/// Appends the recovery settings to `postgresql.auto.conf` and creates the
/// signal file; returns its name.
fn configure(
    data_dir: &Path,
    manifest: &Manifest,
    options: &PhysicalRestoreOptions,
) -> Result<&'static str> {
    let mut text = format!(
        "\n# Recovery settings written by warmspare, which restored snapshot {} here.\n\
         restore_command = {}\n\
         recovery_target_timeline = 'latest'\n",
        manifest.id,
        conf_quote(&options.restore_command)
    );
    match options.target {
        RecoveryTarget::Latest => {}
        RecoveryTarget::Immediate => {
            text.push_str("recovery_target = 'immediate'\nrecovery_target_action = 'promote'\n");
        }
        RecoveryTarget::Time(t) => {
            text.push_str(&format!(
                "recovery_target_time = {}\n\
                 recovery_target_inclusive = off\n\
                 recovery_target_action = 'promote'\n",
                conf_quote(&format_time(t))
            ));
        }
    }
    let conf = data_dir.join("postgresql.auto.conf");
    let io = |context: &'static str, path: &Path| {
        let path = path.display().to_string();
        move |source| Error::DataDir {
            context,
            path,
            source,
        }
    };
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&conf)
        .map_err(io("opening", &conf))?;
    file.write_all(text.as_bytes())
        .map_err(io("writing", &conf))?;
    let signal_file = if options.standby {
        "standby.signal"
    } else {
        "recovery.signal"
    };
    let signal = data_dir.join(signal_file);
    std::fs::write(&signal, b"").map_err(io("writing", &signal))?;
    // pg_basebackup leaves pg_wal empty; make sure it and archive_status
    // exist whatever tar did with empty directories.
    let status = data_dir.join("pg_wal/archive_status");
    std::fs::create_dir_all(&status).map_err(io("creating", &status))?;
    // PostgreSQL refuses a data directory that others can read; an archive
    // member for the directory itself may have changed its mode.
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io("setting permissions on", data_dir))?;
    Ok(signal_file)
}

/// Removes what a failed restore put into `dir`.
fn clean_up(dir: &Path, created: bool) {
    if created {
        let _ = std::fs::remove_dir_all(dir);
        return;
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            let _ = match entry.file_type() {
                Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
                _ => std::fs::remove_file(&path),
            };
        }
    }
}

/// A timestamp as PostgreSQL reads it: `2026-11-22 10:15:00.123456+00`.
fn format_time(t: OffsetDateTime) -> String {
    let utc = t.to_offset(time::UtcOffset::UTC);
    let format = format_description!(
        "[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:6]+00"
    );
    utc.format(&format).unwrap_or_else(|_| utc.to_string())
}

/// Quotes a `postgresql.conf` value.
fn conf_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn times_and_quoting() {
        let t = datetime!(2026-11-22 11:15:00.5 +01:00);
        assert_eq!(format_time(t), "2026-11-22 10:15:00.500000+00");
        assert_eq!(conf_quote(r"it's a\b"), r"'it''s a\\b'");
    }

    #[test]
    fn target_directory_must_be_missing_or_empty() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("a/b");
        assert!(prepare_dir(&fresh).unwrap());
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert!(!prepare_dir(&fresh).unwrap(), "empty is fine");
        std::fs::write(fresh.join("x"), b"").unwrap();
        let e = prepare_dir(&fresh).unwrap_err();
        assert!(matches!(e, Error::DataDirNotEmpty { .. }), "{e}");
        clean_up(&fresh, false);
        assert!(fresh.is_dir() && std::fs::read_dir(&fresh).unwrap().next().is_none());
        clean_up(&fresh, true);
        assert!(!fresh.exists());
    }
}
