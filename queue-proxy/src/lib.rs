//! The queue-proxy: Ebb's per-instance sidecar, between the activator (or any client) and the
//! user container.
//!
//! It enforces `containerConcurrency` with a FIFO queue, applies the revision's timeouts, runs
//! the user container's readiness probe, drains on SIGTERM, and measures load for the
//! autoscaler (served on the stats port, see `wire`). Request path: `proxy`; lifecycle: `server`.

pub mod body;
pub mod breaker;
pub mod config;
pub mod drain;
pub mod metrics;
pub mod probe;
pub mod proxy;
pub mod server;
pub mod stats;

pub use config::Config;
pub use server::{Bound, run};
