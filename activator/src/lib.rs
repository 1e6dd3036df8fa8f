//! The activator: Ebb's gateway and the first hop of every request.
//!
//! Request path: `admission` reads each HTTP/1 request head and checks it (the `http1` crate:
//! framing, Host, expectations, upgrades; a bad head is refused there), and the `routes` table
//! maps its host (and `Knative-Serving-Tag`) to a revision, choosing among a split by weight;
//! the revision's `throttler` picks an instance by load (power of two choices, or first
//! available for small containerConcurrency) and holds the request in a bounded FIFO queue
//! while none has room, e.g. while the revision wakes from zero. Then the request is carried at
//! the byte level by `plain` (with its own connection `pool`), websocket upgrades are tunnelled
//! by `upgrade`, and HTTP/2 goes through pingora's proxy (`gateway`).
//! `routes`, `throttler` and `revisions` do no I/O.

pub mod admission;
pub mod buffered;
pub mod gateway;
pub mod metrics;
pub mod plain;
pub mod pool;
pub mod probe;
pub mod revisions;
pub mod routes;
pub mod throttler;
pub mod upgrade;
