//! Where decisions go. The decider never knows which backend applies them.

use std::future::Future;
use std::pin::Pin;

use crate::collector::RevisionKey;

#[derive(Debug, thiserror::Error)]
pub enum ScaleError {
    #[error("revision {0:?} has no workload to scale")]
    NotFound(RevisionKey),
    /// This replica is not the leader: another one applies decisions.
    #[error("not the leader")]
    NotLeader,
    #[error("scaling {key:?} failed: {reason}")]
    Failed { key: RevisionKey, reason: String },
}

pub type ScaleFuture<'a> = Pin<Box<dyn Future<Output = Result<(), ScaleError>> + Send + 'a>>;

/// Applies a desired instance count: the Deployment's scale subresource on Kubernetes, the
/// instance runtime in local mode.
pub trait Scaler: Send + Sync {
    fn scale<'a>(&'a self, key: &'a RevisionKey, desired: i32) -> ScaleFuture<'a>;
}
