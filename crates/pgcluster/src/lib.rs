//! Throwaway PostgreSQL clusters for production code and tests.
//!
//! warmspare starts scratch servers in several places: `warmspare demo`
//! runs a primary and a spare on one machine, `verify --deep` and `drill`
//! restore into a scratch server, and the test suites run dozens of them.
//! This crate is that one piece of plumbing:
//!
//! * [`find_bin_dir`]: where `initdb`, `pg_ctl` and `postgres` live (a
//!   directory the caller names, the caller's `PATH`, or the distributions'
//!   usual places), with an error that lists every place it looked.
//! * [`Cluster`] / [`ClusterBuilder`]: `initdb` (or an existing data
//!   directory) in a fresh directory, `pg_ctl start` on a free loopback port
//!   (retrying when another process takes the port first), `psql`, SIGKILL
//!   and restart; stopped and removed on drop, or kept with
//!   [`Cluster::detach`].
//! * [`scratch_dir`] and [`shared_parent_dir`]: directories the server's
//!   user can reach.
//! * [`Watchdog`]: a tiny `sh` process that runs a cleanup script when its
//!   owner goes away; [`free_port`] and [`log_tail`].
//! * [`Error`]: what failed, with the tool's stderr and the server log's
//!   tail.
//!
//! The crate depends on no other warmspare crate (the test kit re-exports
//! it, and the store's own tests use the test kit), prints nothing and reads
//! no environment variables: the caller passes in its `PATH` and any
//! configured bin directory.
//!
//! # Example
//!
//! ```no_run
//! # async fn run() -> warmspare_pgcluster::Result<()> {
//! use warmspare_pgcluster::{Cluster, find_bin_dir, shared_parent_dir};
//!
//! let bin_dir = find_bin_dir(None, std::env::var_os("PATH").as_deref())?;
//! let parent = std::env::temp_dir().join("my-scratch");
//! shared_parent_dir(&parent)?;
//! let pg = Cluster::builder(bin_dir, &parent)
//!     .setting("wal_level", "replica")
//!     .start()
//!     .await?;
//! assert_eq!(pg.psql("SELECT 1").await?, "1");
//! let url = pg.url(); // postgres://postgres@127.0.0.1:PORT/postgres
//! # let _ = url;
//! drop(pg); // stopped (immediate) and removed
//! # Ok(()) }
//! ```
//!
//! # Key design decision: a watchdog per cluster
//!
//! Every cluster has a `sh` watchdog whose stdin is a pipe from this
//! process. Dropping the handle closes the pipe; so does the kernel when the
//! process dies in any way (panic, abort, SIGKILL). The watchdog then runs
//! `pg_ctl stop -m immediate` and removes the cluster's directory, so a
//! crashed owner never leaks a server.
//!
//! When the process runs as root, `initdb` and `postgres` run as the
//! `postgres` system user (through `setpriv`, or `runuser` without it) in
//! directories owned by that user; the parent directory must be traversable
//! by it ([`shared_parent_dir`]).

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod bin;
mod cluster;
mod error;
mod sys;

pub use bin::{find_bin_dir, has_server_binaries};
pub use cluster::{Cluster, ClusterBuilder, SUPERUSER, scratch_dir, shared_parent_dir};
pub use error::{Error, Result};
pub use sys::{Watchdog, free_port, log_tail};
