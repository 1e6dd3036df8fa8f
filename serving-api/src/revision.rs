//! `Revision`: an immutable snapshot of code and configuration, stamped by a Configuration.

// kube's derive takes one `printcolumn(...)`/`validation` per column or rule; clippy reads the
// repeated keys inside them as duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::api::core::v1::PodSpec;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::condition::{self, Condition, ConditionStatus};

/// Condition types on a Revision.
pub mod conditions {
    pub const READY: &str = "Ready";
    pub const RESOURCES_AVAILABLE: &str = "ResourcesAvailable";
    pub const CONTAINER_HEALTHY: &str = "ContainerHealthy";
    /// Separate from Ready: a Revision scaled to zero stays Ready but is not Active.
    pub const ACTIVE: &str = "Active";
}

/// Reasons Knative uses on Revision conditions.
pub mod reasons {
    /// Active=False: scaled to zero because it receives no traffic.
    pub const NO_TRAFFIC: &str = "NoTraffic";
    /// Active=Unknown: requests are waiting for the first instance.
    pub const QUEUED: &str = "Queued";
    /// Active=False: activation did not finish in time.
    pub const TIMED_OUT: &str = "TimedOut";
    /// Active=Unknown: the workload exists, instances are starting.
    pub const ACTIVATING: &str = "Activating";
    /// ResourcesAvailable=False: the workload never became available in time.
    pub const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";
    /// ResourcesAvailable=Unknown: the workload is being created.
    pub const DEPLOYING: &str = "Deploying";
}

/// The spec of a Revision: a Kubernetes PodSpec inline plus Knative's serving fields.
///
/// `spec.containers`, `spec.volumes` and the other pod fields sit directly under `spec`, as in
/// Knative, so Knative manifests parse unchanged.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "serving.knative.dev",
    version = "v1",
    kind = "Revision",
    namespaced,
    derive = "PartialEq",
    derive = "Default",
    status = "RevisionStatus",
    shortname = "rev",
    category = "all",
    category = "knative",
    category = "serving",
    printcolumn(
        name = "Config Name",
        type_ = "string",
        json_path = ".metadata.labels['serving\\.knative\\.dev/configuration']"
    ),
    printcolumn(
        name = "Generation",
        type_ = "string",
        json_path = ".metadata.labels['serving\\.knative\\.dev/configurationGeneration']"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type=='Ready')].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type=='Ready')].reason"
    ),
    printcolumn(
        name = "Actual Replicas",
        type_ = "integer",
        json_path = ".status.actualReplicas"
    ),
    printcolumn(
        name = "Desired Replicas",
        type_ = "integer",
        json_path = ".status.desiredReplicas"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::schema::relax_pod_schema)]
pub struct RevisionSpec {
    #[serde(flatten)]
    pub pod: PodSpec,
    /// Maximum in-flight requests per instance; 0 = unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub container_concurrency: Option<i64>,
    /// Total time a request may take, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub timeout_seconds: Option<i64>,
    /// Time until the first response byte, in seconds; defaults to `timeoutSeconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub response_start_timeout_seconds: Option<i64>,
    /// Maximum time with no bytes in either direction, in seconds; 0 = none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub idle_timeout_seconds: Option<i64>,
}

/// Observed state of a Revision.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevisionStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Instances that are running and ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual_replicas: Option<i32>,
    /// Instances the autoscaler wants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,
    /// Each container's image as resolved when the revision was created: a tag pinned to its
    /// digest, so the revision runs the same image forever.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub container_statuses: Vec<ContainerStatus>,
}

/// A container's resolved image.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    pub name: String,
    /// `repository@sha256:…`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image_digest: String,
}

impl Revision {
    pub fn ready_status(&self) -> ConditionStatus {
        self.status.as_ref().map_or(ConditionStatus::Unknown, |s| {
            condition::status_of(&s.conditions, conditions::READY)
        })
    }
    pub fn is_ready(&self) -> bool {
        self.ready_status() == ConditionStatus::True
    }
    pub fn is_failed(&self) -> bool {
        self.ready_status() == ConditionStatus::False
    }
    pub fn ready_condition(&self) -> Option<&Condition> {
        self.status
            .as_ref()
            .and_then(|s| condition::get(&s.conditions, conditions::READY))
    }
}

/// The port a container listens on when it declares none (Knative's runtime contract).
pub const DEFAULT_USER_PORT: i32 = 8080;

impl RevisionSpec {
    /// The container that receives requests: the only one, or the one declaring a port.
    pub fn serving_container_index(&self) -> Option<usize> {
        match self.pod.containers.len() {
            0 => None,
            1 => Some(0),
            _ => self
                .pod
                .containers
                .iter()
                .position(|c| c.ports.as_ref().is_some_and(|p| !p.is_empty())),
        }
    }

    pub fn serving_container(&self) -> Option<&k8s_openapi::api::core::v1::Container> {
        self.serving_container_index()
            .and_then(|i| self.pod.containers.get(i))
    }

    /// The user port (`PORT`) and whether it speaks h2c (port named `h2c`).
    pub fn serving_port(&self) -> (i32, bool) {
        let port = self
            .serving_container()
            .and_then(|c| c.ports.as_ref())
            .and_then(|p| p.first());
        match port {
            Some(p) => (
                if p.container_port == 0 {
                    DEFAULT_USER_PORT
                } else {
                    p.container_port
                },
                p.name.as_deref() == Some("h2c"),
            ),
            None => (DEFAULT_USER_PORT, false),
        }
    }
}
