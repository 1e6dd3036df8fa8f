//! Ebb's reconcilers, pure part: from observed objects to desired objects and status.
//!
//! Control path: Service → Configuration + Route; Configuration → Revision; Revision →
//! workload (a Kubernetes Deployment with the queue-proxy sidecar and a Service, or local
//! instances); Route → resolved traffic. Each step here is a function of its inputs with no
//! I/O; the Kubernetes and local backends only apply the difference.

pub mod configuration;
pub mod domainmapping;
pub mod gc;
pub mod local;
pub mod meta;
pub mod revision;
pub mod rollout;
pub mod route;
pub mod service;
pub mod workload;

/// The field manager every apply step uses, so ownership of fields is stable across restarts.
pub const FIELD_MANAGER: &str = "ebb-controller";
