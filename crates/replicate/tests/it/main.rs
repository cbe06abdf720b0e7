//! Integration tests of `warmspare-replicate` against real stores: local
//! directories and the test kit's S3 server (moto by default). S3 tests are
//! skipped with a note when no S3 server is installed, unless
//! `WARMSPARE_REQUIRE_S3` is set.

#![allow(clippy::unwrap_used)]

mod artifacts;
mod common;
mod encrypted;
mod faults;
mod gc;
mod guards;
mod local;
mod mirror;
mod points;
mod points_auth;
mod reconcile;
mod restore_local;
mod staged;
