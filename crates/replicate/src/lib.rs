//! The replication engine of warmspare.
//!
//! This crate will hold the verified artifact mirror (store to store),
//! artifact inventories with content-addressed blobs, recovery points and the
//! reconciliation of database rows against artifacts. None of that is built
//! yet: the crate exists so that the workspace layout and the dependency
//! direction (`warmspare-store` <- this crate <- agent) are fixed from the
//! start.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
