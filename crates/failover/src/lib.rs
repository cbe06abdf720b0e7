//! Failover for warmspare: health probes, the failover policy and the lease
//! driver that carries out the policy's decisions.
//!
//! The one promise this crate exists for: when the primary dies the spare
//! takes over quickly, and two sites never accept live traffic at once. The
//! repository is the third party of every decision: the lease
//! (`lease/active.json`) is written only with compare-and-swap, so both
//! sites see one history of holders and epochs.
//!
//! * [`policy`]: the failover policy as a pure state machine,
//!   `Policy::step(event, now) -> actions`, with no I/O and no clock reads.
//!   A site accepts traffic only once it holds the lease *and* its database
//!   answered that it is open; a planned switchover hands over the old
//!   holder's final WAL position and the successor promotes only once it
//!   has replayed it.
//!   Its safety is tested by simulation over random delays, partitions,
//!   clock drift and crashes; the argument is written down in
//!   `docs/failover-safety.md`.
//! * [`driver`]: the lease driver, [`Driver`], which runs the policy: lease
//!   reads and conditional writes on the repository, in order the
//!   [`actions`] (promote, fence, hooks), state and the traffic gate out
//!   through a [`DriverHandle`] for the agent's endpoints.
//! * [`actions`]: the [`actions::Actions`] seam and its PostgreSQL and hook
//!   implementations.
//! * [`probe`]: health probes (PostgreSQL, HTTP, TCP, command) and the
//!   [`probe::ProbeRunner`] that feeds them into the driver.
//! * [`remote`]: the client side of the operator commands (an agent's
//!   `/status` and `/failover`).
//! * [`config`]: the `[failover]` section of the configuration.
//!
//! ```
//! use warmspare_failover::policy::PolicyConfig;
//! let config = PolicyConfig::from_failover(&warmspare_failover::FailoverConfig::default());
//! assert!(config.validate().is_ok());
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod actions;
pub mod config;
pub mod driver;
mod error;
pub mod policy;
pub mod probe;
pub mod remote;

pub use config::{FailoverConfig, FailoverMode, InvalidFailoverConfig};
pub use driver::{Driver, DriverConfig, DriverHandle, DriverState};
pub use error::{Error, Result};
