//! Test-only infrastructure for warmspare: real servers, no mocks.
//!
//! * [`PostgresCluster`]: a throwaway PostgreSQL cluster (`initdb` +
//!   `pg_ctl` in a temporary directory, on a free loopback port), stopped
//!   and removed on drop. Many can run at once.
//! * [`S3Server`]: a real S3 endpoint on loopback, moto's standalone server
//!   by default (Garage with `WARMSPARE_TEST_S3=garage`), with helpers for
//!   unique buckets and `object_store` clients.
//! * [`FaultStore`]: an [`object_store::ObjectStore`] wrapper that injects
//!   errors, latency, truncated and corrupted reads per operation and path
//!   prefix, and counts calls.
//! * [`ManualClock`]: monotonic time that moves only when the test says so.
//! * [`TcpProxy`]: a loopback TCP proxy the test can cut (blackhole or
//!   reset) and restore, to partition one client from a server.
//!
//! ```no_run
//! use warmspare_testkit::{PostgresCluster, S3Server};
//!
//! # async fn t() -> warmspare_testkit::Result<()> {
//! let pg = PostgresCluster::builder()
//!     .setting("wal_level", "replica")
//!     .start()
//!     .await?;
//! assert_eq!(pg.psql("SELECT 1").await?, "1");
//!
//! let Some(s3) = S3Server::try_shared().await? else { return Ok(()) };
//! let bucket = s3.unique_bucket("example").await?;
//! let store = s3.store_for_bucket(&bucket)?;
//! # let _ = (pg.url(), store); Ok(()) }
//! ```
//!
//! # Design
//!
//! Every server runs as a child of a tiny `sh` watchdog whose stdin is a
//! pipe from the test process. Dropping the handle closes the pipe; so does
//! the kernel when the test process dies in any way. The watchdog then stops
//! the server and removes its directory, so neither crashed tests nor
//! process-wide shared servers (which are never dropped) leak processes.
//!
//! When the tests run as root, PostgreSQL runs as the `postgres` system user
//! (`initdb` refuses root), in directories under
//! `$TMPDIR/warmspare-testkit-<uid>` (mode 0755) owned by that user. Files
//! that the server itself must reach, such as a WAL archive written by
//! `archive_command`, belong in [`postgres_scratch_dir`].
//!
//! # Environment
//!
//! This crate is test-only, so unlike the library crates it reads
//! environment variables:
//!
//! | variable | meaning |
//! | --- | --- |
//! | `WARMSPARE_PG_BIN` | directory with `initdb`, `pg_ctl`, `postgres` (else `PATH`, else newest `/usr/lib/postgresql/*/bin`) |
//! | `WARMSPARE_TEST_S3` | `moto` (default) or `garage` |
//! | `WARMSPARE_MOTO` | the `moto_server` executable (else `<workspace>/.venv/bin/moto_server`, else `PATH`) |
//! | `WARMSPARE_GARAGE` | the `garage` executable (else `PATH`) |
//! | `WARMSPARE_S3_ENDPOINT` | a running moto that [`S3Server::shared`] uses instead of starting one |
//! | `WARMSPARE_REQUIRE_S3` | fail instead of skipping when no S3 server is installed |
//! | `WARMSPARE_OLD_PG_BIN` | a PostgreSQL 13 client bin directory for the older-`pg_dump` test (else `<workspace>/target/pg13/usr/lib/postgresql/13/bin`, which `scripts/install-deps` fills) |
//! | `WARMSPARE_REQUIRE_OLD_PG` | fail instead of skipping when that older `pg_dump` is missing (set by `scripts/test` with `CI=true`) |
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod clock;
mod error;
mod fault;
mod postgres;
mod proxy;
mod s3;
mod sys;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{Error, Result};
pub use fault::{ErrorKind, Fault, FaultId, FaultStore, InjectedFault, Op};
pub use postgres::{
    PG_BIN_ENV, PostgresCluster, PostgresClusterBuilder, postgres_bin_dir, postgres_scratch_dir,
};
pub use proxy::{Cut, TcpProxy};
pub use s3::{
    GARAGE_ENV, MOTO_ENV, REQUIRE_S3_ENV, S3_ENDPOINT_ENV, S3Kind, S3Server, TEST_S3_ENV,
};

/// The `object_store` version the testkit is built against.
pub use object_store;
