//! `Configuration`: the desired latest Revision; each change of its template stamps a new one.

// kube's derive takes one `printcolumn(...)`/`validation` per column or rule; clippy reads the
// repeated keys inside them as duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::condition::{self, Condition, ConditionStatus};
use crate::revision::RevisionSpec;

pub mod conditions {
    pub const READY: &str = "Ready";
}

pub mod reasons {
    /// Ready=False: the latest created Revision failed, or could not be created (e.g. a
    /// user-chosen name reused with a different template).
    pub const REVISION_FAILED: &str = "RevisionFailed";
    /// Ready=False: the latest ready Revision was deleted.
    pub const REVISION_DELETED: &str = "RevisionDeleted";
}

/// The template from which Revisions are stamped: metadata (labels, annotations, optional
/// user-chosen name) and the Revision spec.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevisionTemplateSpec {
    #[serde(default, skip_serializing_if = "is_default")]
    pub metadata: ObjectMeta,
    pub spec: RevisionSpec,
}

/// Fields shared by Configuration and Service status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationStatusFields {
    /// The most recently created Revision, ready or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_created_revision_name: Option<String>,
    /// The most recent Revision that became Ready; `latestRevision` traffic goes here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_ready_revision_name: Option<String>,
}

#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "serving.knative.dev",
    version = "v1",
    kind = "Configuration",
    namespaced,
    derive = "PartialEq",
    derive = "Default",
    status = "ConfigurationStatus",
    shortname = "config",
    shortname = "cfg",
    category = "all",
    category = "knative",
    category = "serving",
    printcolumn(
        name = "LatestCreated",
        type_ = "string",
        json_path = ".status.latestCreatedRevisionName"
    ),
    printcolumn(
        name = "LatestReady",
        type_ = "string",
        json_path = ".status.latestReadyRevisionName"
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
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationSpec {
    pub template: RevisionTemplateSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(flatten)]
    pub fields: ConfigurationStatusFields,
}

impl Configuration {
    pub fn ready_condition(&self) -> Option<&Condition> {
        self.status
            .as_ref()
            .and_then(|s| condition::get(&s.conditions, conditions::READY))
    }
    pub fn ready_status(&self) -> ConditionStatus {
        self.ready_condition()
            .map_or(ConditionStatus::Unknown, |c| c.status)
    }
    pub fn latest_ready(&self) -> Option<&str> {
        self.status
            .as_ref()
            .and_then(|s| s.fields.latest_ready_revision_name.as_deref())
    }
    pub fn latest_created(&self) -> Option<&str> {
        self.status
            .as_ref()
            .and_then(|s| s.fields.latest_created_revision_name.as_deref())
    }
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}
