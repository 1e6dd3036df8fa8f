//! The `ebb` command: local mode (`ebb local up`: control plane, autoscaler, gateway and an
//! instance runtime in one process over an embedded store) and the CLI that drives it.
//!
//! `server` wires the components, `runtime` runs instances, `cli` and `client` are the
//! command line. The logic lives in the other crates; this crate only wires and presents.

pub mod cli;
pub mod client;
pub mod probes;
pub mod resolve;
pub mod runtime;
pub mod security;
pub mod server;
