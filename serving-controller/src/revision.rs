//! A Revision's status from what its workload reports, the same for both backends.

use serving_api::condition::{self, Condition, ConditionStatus};
use serving_api::revision::{conditions, reasons};
use serving_api::{Revision, RevisionStatus};

/// A container problem seen on an instance (image pull error, crash loop, bad exit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerFailure {
    pub reason: String,
    pub message: String,
}

/// What the autoscaler wants compared with what runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activity {
    /// Instances serve.
    Active,
    /// Scaled to zero (no traffic).
    Idle,
    /// Scaling up from zero; `queued` when requests are waiting for it.
    Activating { queued: bool },
}

/// Observed state of a revision's workload, from a Deployment and its pods or from the local
/// runtime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadState {
    /// The workload object exists (Deployment created / instances registered).
    pub exists: bool,
    pub ready_replicas: i32,
    pub desired_replicas: i32,
    /// The workload did not become available before the progress deadline.
    pub progress_deadline_exceeded: bool,
    pub failure: Option<ContainerFailure>,
    pub activity: Activity,
    /// What the workload is waiting for while it deploys (e.g. an image pull), shown as the
    /// ResourcesAvailable message.
    pub waiting: Option<String>,
    /// Containers' images pinned to digests (kept from the previous status when empty).
    pub image_digests: Vec<serving_api::revision::ContainerStatus>,
}

/// Container waiting reasons that mean the instance will not come up by itself soon.
pub const FATAL_WAITING_REASONS: [&str; 6] = [
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
];

pub fn revision_status(rev: &Revision, w: &WorkloadState) -> RevisionStatus {
    let previous = rev.status.clone().unwrap_or_default();
    let was = |t: &str| condition::status_of(&previous.conditions, t) == ConditionStatus::True;

    let resources = if !w.exists {
        Condition::new(
            conditions::RESOURCES_AVAILABLE,
            ConditionStatus::Unknown,
            reasons::DEPLOYING,
            "",
        )
    } else if w.ready_replicas > 0 {
        Condition::truthy(conditions::RESOURCES_AVAILABLE)
    } else if w.progress_deadline_exceeded && !was(conditions::RESOURCES_AVAILABLE) {
        Condition::new(
            conditions::RESOURCES_AVAILABLE,
            ConditionStatus::False,
            reasons::PROGRESS_DEADLINE_EXCEEDED,
            "Initial scale was never achieved.",
        )
    } else if was(conditions::RESOURCES_AVAILABLE)
        || (w.desired_replicas == 0 && w.failure.is_none())
    {
        // A workload asked for zero instances (initial-scale 0) is available as asked, as a
        // Deployment at zero replicas is Available on Kubernetes.
        // Scaled to zero, or between instances: a revision that served stays Ready.
        Condition::truthy(conditions::RESOURCES_AVAILABLE)
    } else {
        Condition::new(
            conditions::RESOURCES_AVAILABLE,
            ConditionStatus::Unknown,
            reasons::DEPLOYING,
            w.waiting.as_deref().unwrap_or(""),
        )
    };

    let healthy = match &w.failure {
        Some(f) if w.ready_replicas == 0 => Condition::new(
            conditions::CONTAINER_HEALTHY,
            ConditionStatus::False,
            &f.reason,
            &f.message,
        ),
        _ if w.ready_replicas > 0
            || was(conditions::CONTAINER_HEALTHY)
            || (w.exists && w.desired_replicas == 0) =>
        {
            Condition::truthy(conditions::CONTAINER_HEALTHY)
        }
        _ => Condition::new(
            conditions::CONTAINER_HEALTHY,
            ConditionStatus::Unknown,
            "",
            "",
        ),
    };

    let active = match w.activity {
        Activity::Active if w.ready_replicas > 0 => Condition::truthy(conditions::ACTIVE),
        Activity::Idle => Condition::new(
            conditions::ACTIVE,
            ConditionStatus::False,
            reasons::NO_TRAFFIC,
            "The target is not receiving traffic.",
        ),
        Activity::Activating { queued: true } => Condition::new(
            conditions::ACTIVE,
            ConditionStatus::Unknown,
            reasons::QUEUED,
            "Requests to the target are being buffered as resources are provisioned.",
        ),
        Activity::Activating { queued: false } | Activity::Active => Condition::new(
            conditions::ACTIVE,
            ConditionStatus::Unknown,
            reasons::ACTIVATING,
            "The target is being activated.",
        ),
    };
    // An activation that failed (bad image after scale from zero) is reported on Active too.
    let active = match (&w.failure, w.ready_replicas) {
        (Some(_), 0) if w.progress_deadline_exceeded => Condition::new(
            conditions::ACTIVE,
            ConditionStatus::False,
            reasons::TIMED_OUT,
            "The target could not be activated.",
        ),
        _ => active,
    };

    let ready = condition::summarize(conditions::READY, &[&resources, &healthy]);
    let mut conds = vec![active, healthy, ready, resources];
    conds.sort_by(|a, b| a.type_.cmp(&b.type_));
    RevisionStatus {
        observed_generation: rev.metadata.generation,
        conditions: conds,
        actual_replicas: Some(w.ready_replicas),
        desired_replicas: Some(w.desired_replicas),
        container_statuses: if w.image_digests.is_empty() {
            previous.container_statuses
        } else {
            w.image_digests.clone()
        },
    }
}
