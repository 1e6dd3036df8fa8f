//! The activator: Ebb's gateway and the first hop of every request.
//!
//! Request path: `admission` reads each HTTP/1 request head, and the `routes` table maps its
//! Host (and `Knative-Serving-Tag`) to a revision, choosing among a split by weight; the
//! revision's `throttler` picks an instance by load (power of two choices, or first available
//! for small containerConcurrency) and holds the request in a bounded FIFO queue while none has
//! room, e.g. while the revision wakes from zero — all before pingora builds any per-request
//! state. Then `plain` requests (HTTP/1.1, no body or a small sized one) are carried at the byte
//! level (`h1`, with its own connection `pool`), websocket upgrades are tunnelled by `upgrade`,
//! and everything else goes through pingora's proxy (`gateway`).
//! `routes`, `throttler` and `revisions` do no I/O.

pub mod admission;
pub mod buffered;
pub mod gateway;
pub mod h1;
pub mod metrics;
pub mod plain;
pub mod pool;
pub mod probe;
pub mod revisions;
pub mod routes;
pub mod throttler;
pub mod upgrade;
