//! The activator: Ebb's gateway and the first hop of every request.
//!
//! Request path: the `routes` table maps a Host (and `Knative-Serving-Tag`) to a revision,
//! choosing among a split by weight; the revision's `throttler` picks an instance by load
//! (power of two choices, or first available for small containerConcurrency) and holds the
//! request in a bounded FIFO queue while none has room, e.g. while the revision wakes from
//! zero. The proxy that drives both (pingora) is wired on top; these modules do no I/O.

pub mod admission;
pub mod buffered;
pub mod gateway;
pub mod metrics;
pub mod plain;
pub mod probe;
pub mod revisions;
pub mod routes;
pub mod throttler;
