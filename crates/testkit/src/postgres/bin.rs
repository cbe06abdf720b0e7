//! Finding the PostgreSQL server binaries (the search itself lives in
//! `warmspare-pgcluster`; the testkit adds the environment variables).

use std::path::PathBuf;

use crate::error::Result;

/// Environment variable naming a directory with `initdb`, `pg_ctl` and
/// `postgres`, overriding the search.
pub const PG_BIN_ENV: &str = "WARMSPARE_PG_BIN";

/// The hint in the "not installed" error.
pub(crate) const PG_INSTALL_HINT: &str = "install the PostgreSQL server (`apt-get install \
     postgresql`, or run scripts/install-deps) or point WARMSPARE_PG_BIN at its bin directory";

/// The directory holding the PostgreSQL server binaries (`initdb`,
/// `pg_ctl`, `postgres`, `psql`, `pg_dump`, ...).
///
/// Looks, in order, at `$WARMSPARE_PG_BIN`, at `initdb` on `PATH`, and at
/// the newest of `/usr/lib/postgresql/*/bin` (Debian, Ubuntu),
/// `/usr/pgsql-*/bin` (RHEL) and `/usr/local/pgsql/bin`
/// ([`warmspare_pgcluster::find_bin_dir`]). The error lists every place it
/// looked.
pub fn postgres_bin_dir() -> Result<PathBuf> {
    let explicit = std::env::var_os(PG_BIN_ENV).map(PathBuf::from);
    let path = std::env::var_os("PATH");
    Ok(warmspare_pgcluster::find_bin_dir(
        explicit.as_deref(),
        path.as_deref(),
    )?)
}
