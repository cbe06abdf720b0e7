//! Finding the PostgreSQL server binaries.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result, join_paths};
use crate::sys;

/// The directory holding the PostgreSQL server binaries (`initdb`,
/// `pg_ctl`, `postgres`, `psql`, `pg_dump`, ...).
///
/// Looks, in order, at `explicit` (a directory the caller was told about,
/// for example by an environment variable or a config key), at `initdb` on
/// `search_path` (the caller's `PATH`, passed in: this crate reads no
/// environment variables), and at the newest of `/usr/lib/postgresql/*/bin`
/// (Debian, Ubuntu), `/usr/pgsql-*/bin` (RHEL) and `/usr/local/pgsql/bin`.
/// The [`Error::NotInstalled`] lists every place it looked.
pub fn find_bin_dir(explicit: Option<&Path>, search_path: Option<&OsStr>) -> Result<PathBuf> {
    let mut looked = Vec::new();
    if let Some(dir) = explicit {
        if has_server_binaries(dir) {
            return Ok(dir.to_path_buf());
        }
        looked.push(dir.to_path_buf());
    }
    match search_path.and_then(|path| sys::which_in(path, "initdb")) {
        Some(initdb) => {
            // Follow symlinks such as /usr/local/bin/initdb -> the real bin
            // directory, which also holds psql, pg_dump and friends.
            let real = std::fs::canonicalize(&initdb).unwrap_or_else(|_| initdb.clone());
            if let Some(dir) = real.parent().filter(|d| has_server_binaries(d)) {
                return Ok(dir.to_path_buf());
            }
            looked.push(initdb);
        }
        None => looked.push(PathBuf::from("initdb on PATH")),
    }
    let mut candidates = Vec::new();
    for (parent, prefix, suffix) in [
        ("/usr/lib/postgresql", "", "bin"),
        ("/usr", "pgsql-", "bin"),
    ] {
        looked.push(Path::new(parent).join(format!("{prefix}*")).join(suffix));
        let Ok(entries) = std::fs::read_dir(parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(version) = name.strip_prefix(prefix) else {
                continue;
            };
            let dir = entry.path().join(suffix);
            if has_server_binaries(&dir) {
                candidates.push((version_key(version), dir));
            }
        }
    }
    candidates.sort();
    if let Some((_, dir)) = candidates.pop() {
        return Ok(dir);
    }
    let local = PathBuf::from("/usr/local/pgsql/bin");
    if has_server_binaries(&local) {
        return Ok(local);
    }
    looked.push(local);
    Err(Error::NotInstalled {
        program: "initdb",
        looked: join_paths(&looked),
    })
}

/// Whether `dir` holds `initdb`, `pg_ctl` and `postgres`.
pub fn has_server_binaries(dir: &Path) -> bool {
    ["initdb", "pg_ctl", "postgres"]
        .iter()
        .all(|b| sys::is_executable(&dir.join(b)))
}

/// Sorts "9.6" < "15" < "16" numerically.
fn version_key(version: &str) -> Vec<u64> {
    version
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap_or(0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_numerically() {
        let mut v = vec![version_key("16"), version_key("9.6"), version_key("15")];
        v.sort();
        assert_eq!(v, vec![vec![9, 6], vec![15], vec![16]]);
    }

    #[test]
    fn an_explicit_directory_without_binaries_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        match find_bin_dir(Some(dir.path()), Some(OsStr::new(""))) {
            Ok(found) => assert_ne!(found, dir.path()),
            Err(err) => {
                assert!(err.is_not_installed());
                let text = err.to_string();
                assert!(text.contains(&dir.path().display().to_string()), "{text}");
                assert!(text.contains("apt-get install postgresql"), "{text}");
            }
        }
    }
}
