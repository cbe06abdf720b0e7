//! Finding the PostgreSQL server binaries.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result, join_paths};
use crate::sys;

/// Environment variable naming a directory with `initdb`, `pg_ctl` and
/// `postgres`, overriding the search.
pub const PG_BIN_ENV: &str = "WARMSPARE_PG_BIN";

/// The directory holding the PostgreSQL server binaries (`initdb`,
/// `pg_ctl`, `postgres`, `psql`, `pg_dump`, ...).
///
/// Looks, in order, at `$WARMSPARE_PG_BIN`, at `initdb` on `PATH`, and at
/// the newest of `/usr/lib/postgresql/*/bin` (Debian, Ubuntu),
/// `/usr/pgsql-*/bin` (RHEL) and `/usr/local/pgsql/bin`. The error lists
/// every place it looked.
pub fn postgres_bin_dir() -> Result<PathBuf> {
    let mut looked = Vec::new();
    if let Some(dir) = std::env::var_os(PG_BIN_ENV) {
        let dir = PathBuf::from(dir);
        if has_server_binaries(&dir) {
            return Ok(dir);
        }
        looked.push(dir);
    }
    match sys::which("initdb") {
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
        hint: "install the PostgreSQL server (`apt-get install postgresql`, or run \
               scripts/install-deps) or point WARMSPARE_PG_BIN at its bin directory",
    })
}

fn has_server_binaries(dir: &Path) -> bool {
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
}
