//! Database snapshotters for warmspare.
//!
//! This crate will hold the PostgreSQL logical snapshotter (`pg_dump` streamed
//! through the store codec), the physical snapshotter and WAL archive, restore
//! into a warm spare, verification and retention. Today it holds only the
//! retention policy's configuration, which the shared configuration file
//! already carries; the snapshotters themselves are not built yet.
//!
//! Dependencies point one way: this crate uses `warmspare-store` and is used by
//! the agent and the CLI.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
