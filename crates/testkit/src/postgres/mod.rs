//! Throwaway PostgreSQL clusters: a thin test-side wrapper over
//! [`warmspare_pgcluster::Cluster`] that finds the binaries from the
//! environment (`WARMSPARE_PG_BIN`, `PATH`) and puts every cluster under
//! `$TMPDIR/warmspare-testkit-<uid>`.

mod bin;

use std::path::{Path, PathBuf};

pub(crate) use bin::PG_INSTALL_HINT;
pub use bin::{PG_BIN_ENV, postgres_bin_dir};
use warmspare_pgcluster::{Cluster, ClusterBuilder};

use crate::error::Result;
use crate::sys;

/// A PostgreSQL cluster in a temporary directory, listening on
/// `127.0.0.1:<free port>` and on a Unix socket inside that directory.
///
/// Authentication is `trust` for every local and loopback connection, unless
/// a password was set with [`PostgresClusterBuilder::password`]: then TCP
/// connections need it (SCRAM-SHA-256) while the Unix socket stays `trust`.
/// The superuser is `postgres`.
///
/// Dropping the cluster stops it (`pg_ctl stop -m immediate`) and removes
/// the directory; a test process that dies without dropping it (panic
/// with `abort`, SIGKILL, timeout) is cleaned up by a watchdog process too.
///
/// When the tests run as root, the server runs as the `postgres` system
/// user and the directory belongs to that user.
#[derive(Debug)]
pub struct PostgresCluster {
    inner: Cluster,
}

/// Options for [`PostgresCluster`]; start with [`PostgresCluster::builder`].
#[derive(Debug, Clone, Default)]
pub struct PostgresClusterBuilder {
    password: Option<String>,
    settings: Vec<(String, String)>,
    from_data_dir: Option<PathBuf>,
    bin_dir: Option<PathBuf>,
}

impl PostgresClusterBuilder {
    /// Requires this password (SCRAM-SHA-256) for TCP connections of the
    /// superuser; [`PostgresCluster::url`] then contains it.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Adds a `postgresql.conf` setting such as `("wal_level", "replica")`,
    /// `("archive_mode", "on")` or `("archive_command", "cp %p /x/%f")`.
    /// The value is quoted for you. Do not set `port`, `listen_addresses`
    /// or `unix_socket_directories`: the testkit owns them.
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }

    /// Starts a server on an existing data directory instead of running
    /// `initdb`, for example one written by `pg_basebackup` or by a restore.
    /// The directory is moved into the cluster's temporary directory (copied
    /// when it is on another file system), handed to the `postgres` user when
    /// running as root, and removed with the cluster.
    pub fn from_data_dir(mut self, data_dir: impl Into<PathBuf>) -> Self {
        self.from_data_dir = Some(data_dir.into());
        self
    }

    /// Uses the binaries in this directory instead of [`postgres_bin_dir`].
    pub fn bin_dir(mut self, bin_dir: impl Into<PathBuf>) -> Self {
        self.bin_dir = Some(bin_dir.into());
        self
    }

    /// Creates the cluster and starts the server.
    pub async fn start(self) -> Result<PostgresCluster> {
        let bin_dir = match self.bin_dir {
            Some(dir) => dir,
            None => postgres_bin_dir()?,
        };
        let mut builder = ClusterBuilder::new(bin_dir, sys::base_dir()?);
        if let Some(password) = self.password {
            builder = builder.password(password);
        }
        for (name, value) in self.settings {
            builder = builder.setting(name, value);
        }
        if let Some(dir) = self.from_data_dir {
            builder = builder.from_data_dir(dir);
        }
        Ok(PostgresCluster {
            inner: builder.start().await?,
        })
    }
}

impl PostgresCluster {
    /// Starts a cluster with the default options.
    pub async fn start() -> Result<PostgresCluster> {
        Self::builder().start().await
    }

    /// Options for a cluster.
    pub fn builder() -> PostgresClusterBuilder {
        PostgresClusterBuilder::default()
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres` (with the password, if
    /// one was set).
    pub fn url(&self) -> String {
        self.inner.url()
    }

    /// The URL of database `db` on this cluster.
    pub fn url_for(&self, db: &str) -> String {
        self.inner.url_for(db)
    }

    /// The URL of database `db` with an explicit password (or none), for
    /// tests of wrong or missing credentials.
    pub fn url_with_password(&self, db: &str, password: Option<&str>) -> String {
        self.inner.url_with_password(db, password)
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.inner.port()
    }

    /// The data directory (`PGDATA`).
    pub fn data_dir(&self) -> &Path {
        self.inner.data_dir()
    }

    /// The directory of the PostgreSQL binaries this cluster runs.
    pub fn bin_dir(&self) -> &Path {
        self.inner.bin_dir()
    }

    /// The directory holding the Unix socket (`host=` for libpq).
    pub fn socket_dir(&self) -> &Path {
        self.inner.socket_dir()
    }

    /// The server log.
    pub fn log_file(&self) -> &Path {
        self.inner.log_file()
    }

    /// The last `lines` lines of the server log, for assertion messages.
    pub fn log_tail(&self, lines: usize) -> String {
        self.inner.log_tail(lines)
    }

    /// The superuser's name (`postgres`).
    pub fn superuser(&self) -> &str {
        self.inner.superuser()
    }

    /// The superuser's password, if one was set.
    pub fn password(&self) -> Option<&str> {
        self.inner.password()
    }

    /// The PID of the running postmaster, from `postmaster.pid`.
    pub fn postmaster_pid(&self) -> Option<u32> {
        self.inner.postmaster_pid()
    }

    /// Whether the postmaster is running.
    pub fn is_running(&self) -> bool {
        self.inner.is_running()
    }

    /// Runs SQL with `psql` as the superuser in database `postgres` and
    /// returns its unaligned, tuples-only output (trimmed).
    pub async fn psql(&self, sql: &str) -> Result<String> {
        Ok(self.inner.psql(sql).await?)
    }

    /// Like [`PostgresCluster::psql`], in database `db`.
    pub async fn psql_in(&self, db: &str, sql: &str) -> Result<String> {
        Ok(self.inner.psql_in(db, sql).await?)
    }

    /// Creates database `name`.
    pub async fn create_database(&self, name: &str) -> Result<()> {
        Ok(self.inner.create_database(name).await?)
    }

    /// Stops the server (`pg_ctl stop -m fast`) and removes the cluster.
    pub async fn stop(self) -> Result<()> {
        Ok(self.inner.stop().await?)
    }

    /// Kills the postmaster with SIGKILL, as a crash would, and waits until
    /// it is gone. The data directory stays; [`PostgresCluster::restart`]
    /// brings the server back (running crash recovery).
    pub async fn kill(&self) -> Result<()> {
        Ok(self.inner.kill().await?)
    }

    /// Stops the server if it runs (`-m fast`) and starts it again on the
    /// same port.
    pub async fn restart(&self) -> Result<()> {
        Ok(self.inner.restart().await?)
    }

    /// The underlying [`warmspare_pgcluster::Cluster`].
    pub fn cluster(&self) -> &Cluster {
        &self.inner
    }
}

/// A temporary directory that the PostgreSQL server's user can write to:
/// use it for WAL archives, base-backup targets and `file://` repositories
/// that `archive_command` or `restore_command` touch. Removed on drop.
pub fn postgres_scratch_dir() -> Result<tempfile::TempDir> {
    Ok(warmspare_pgcluster::scratch_dir(
        &sys::base_dir()?,
        "scratch-",
    )?)
}
