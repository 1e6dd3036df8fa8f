//! `Service`: the one object a user writes. It owns a Configuration and a Route of its name.

// kube's derive takes one `printcolumn(...)`/`validation` per column or rule; clippy reads the
// repeated keys inside them as duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::condition::{self, Condition, ConditionStatus};
use crate::configuration::{ConfigurationSpec, ConfigurationStatusFields};
use crate::route::{RouteSpec, RouteStatusFields};

pub mod conditions {
    pub const READY: &str = "Ready";
    pub const CONFIGURATIONS_READY: &str = "ConfigurationsReady";
    pub const ROUTES_READY: &str = "RoutesReady";
}

pub mod reasons {
    /// A child has not yet observed the Service's latest generation.
    pub const OUT_OF_DATE: &str = "OutOfDate";
    /// The Route still sends `latestRevision` traffic to an older Revision.
    pub const TRAFFIC_NOT_MIGRATED: &str = "TrafficNotMigrated";
    /// A child exists with our name but another owner.
    pub const NOT_OWNED: &str = "NotOwned";
}

/// `spec.template` (a Configuration's) and `spec.traffic` (a Route's), inline as in Knative.
#[derive(CustomResource, KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "serving.knative.dev",
    version = "v1",
    kind = "Service",
    namespaced,
    derive = "PartialEq",
    derive = "Default",
    status = "ServiceStatus",
    shortname = "ksvc",
    shortname = "ksvcs",
    category = "all",
    category = "knative",
    category = "serving",
    printcolumn(name = "URL", type_ = "string", json_path = ".status.url"),
    printcolumn(name = "LatestCreated", type_ = "string", json_path = ".status.latestCreatedRevisionName"),
    printcolumn(name = "LatestReady", type_ = "string", json_path = ".status.latestReadyRevisionName"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type=='Ready')].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type=='Ready')].reason"),
    validation = Rule::new("self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name: must be a DNS-1035 label (lower case letters, digits and '-', starting with a letter, at most 63 characters)"),
    validation = Rule::new("!has(self.spec.traffic) || size(self.spec.traffic) == 0 || (size(self.spec.traffic) == 1 && !has(self.spec.traffic[0].percent)) || self.spec.traffic.map(t, has(t.percent) ? t.percent : 0).sum() == 100").message("spec.traffic: percents must sum to 100"),
    validation = Rule::new("!has(self.spec.traffic) || self.spec.traffic.all(t, has(t.revisionName) ? !(has(t.latestRevision) && t.latestRevision) : (!has(t.latestRevision) || t.latestRevision))").message("spec.traffic: a target names a revisionName or follows latestRevision, not both"),
    validation = Rule::new("!has(self.spec.traffic) || self.spec.traffic.all(t, !has(t.configurationName))").message("spec.traffic: configurationName is not allowed in a Service; use latestRevision: true"),
    validation = Rule::new("!has(self.spec.traffic) || self.spec.traffic.all(t, !has(t.url))").message("spec.traffic: url is set by the system (status only)"),
    validation = Rule::new("!has(self.spec.traffic) || self.spec.traffic.all(a, !has(a.tag) || self.spec.traffic.filter(b, has(b.tag) && b.tag == a.tag).size() == 1)").message("spec.traffic: tags must be unique"),
    validation = Rule::new("!has(self.spec.template) || !has(self.spec.template.metadata) || !has(self.spec.template.metadata.name) || self.spec.template.metadata.name.startsWith(self.metadata.name + '-')").message("spec.template.metadata.name: must start with the Service name followed by '-'")
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(flatten)]
    pub configuration: ConfigurationSpec,
    #[serde(flatten)]
    pub route: RouteSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(flatten)]
    pub configuration: ConfigurationStatusFields,
    #[serde(flatten)]
    pub route: RouteStatusFields,
}

impl Service {
    pub fn ready_condition(&self) -> Option<&Condition> {
        self.status
            .as_ref()
            .and_then(|s| condition::get(&s.conditions, conditions::READY))
    }
    pub fn ready_status(&self) -> ConditionStatus {
        self.ready_condition()
            .map_or(ConditionStatus::Unknown, |c| c.status)
    }
}
