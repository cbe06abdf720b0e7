//! The integration tests of `warmspare-failover`, one binary.
//!
//! * `world`: a deterministic simulated world (two sites, the repository,
//!   drifting clocks, a faulty network) that runs the real policy and checks
//!   the safety invariants at every event;
//! * `sim`: proptest over thousands of random fault schedules in that world;
//! * `scenarios`: targeted deterministic scenarios;
//! * `timing`: failover time and stall tolerance with the shipped defaults.

#![allow(clippy::unwrap_used)]

mod checks;
mod clock;
mod scenarios;
mod sim;
mod timing;
mod world;
