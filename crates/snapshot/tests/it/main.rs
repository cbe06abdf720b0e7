//! Integration tests of `warmspare-snapshot`: real PostgreSQL clusters from
//! the testkit, repositories on the filesystem and on a real S3 server
//! (moto; S3 parts are skipped with a note when no S3 server is installed,
//! unless `WARMSPARE_REQUIRE_S3` is set).

#![allow(clippy::unwrap_used)]

mod backend;
mod bad_input;
mod direct;
mod encoding;
mod fixtures;
mod logical;
mod old_pg_dump;
mod privileges;
mod prune;
mod roundtrip;
mod spare;
mod spool;
mod wal;
