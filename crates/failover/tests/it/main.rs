//! The integration tests of `warmspare-failover`, one binary.
//!
//! * `world`: a deterministic simulated world (two sites, the repository,
//!   drifting clocks, a faulty network) that runs the real policy and checks
//!   the safety invariants at every event;
//! * `sim`: proptest over thousands of random fault schedules in that world;
//! * `scenarios`: targeted deterministic scenarios;
//! * `timing`: failover time and stall tolerance with the shipped defaults;
//! * `driver`: the lease driver over an in-memory compare-and-swap with
//!   recording actions;
//! * `e2e`: two drivers, real PostgreSQL (primary and streaming standby)
//!   and the real S3 server (moto): kill, repository cut, manual mode,
//!   a 2 s repository stall, and the failover-time benchmark (ignored);
//! * `probes`: HTTP, TCP, command and PostgreSQL probes;
//! * `repository_cut`: the primary partitioned from the S3 repository by a
//!   real TCP proxy (blackhole and reset) fences itself before the spare is
//!   promoted;
//! * `watchdog`: the primary's database killed under a live driver: the
//!   `on_restart` hook runs before any handover; recovered, nothing moves;
//!   not recovered, the lease is released to the spare.

#![allow(clippy::unwrap_used)]

mod checks;
mod clock;
mod driver;
mod e2e;
mod probes;
mod repository_cut;
mod scenarios;
mod sim;
mod support;
mod timing;
mod watchdog;
mod world;
