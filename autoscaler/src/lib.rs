//! Ebb's autoscaler: Knative's KPA.
//!
//! Control path: queue-proxies report per-second load (scraped from their stats port) and the
//! activator pushes demand for revisions it holds requests for; `collector` turns reports into
//! per-second buckets; `scaling` decides the instance count of each revision every tick (2 s)
//! and at once when a revision at zero receives a request (a poke); a `Scaler` applies it
//! (a Deployment's scale on Kubernetes, the local runtime in local mode). `scaling` and
//! `aggregation` are pure: time is always an argument.

pub mod aggregation;
pub mod collector;
pub mod metrics;
pub mod runner;
pub mod scaler;
pub mod scaling;

pub use collector::{Autoscaler, RevisionKey};
pub use scaler::Scaler;
pub use scaling::{ClusterScaling, Decider, Decision, Observed};
