//! `Route`: names a set of Revisions and splits traffic between them by percent and tag.

// kube's derive takes one `printcolumn(...)`/`validation` per column or rule; clippy reads the
// repeated keys inside them as duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::condition::{self, Condition, ConditionStatus};

pub mod conditions {
    pub const READY: &str = "Ready";
    pub const ALL_TRAFFIC_ASSIGNED: &str = "AllTrafficAssigned";
    pub const INGRESS_READY: &str = "IngressReady";
}

pub mod reasons {
    /// AllTrafficAssigned=False: a Revision named in traffic does not exist.
    pub const REVISION_MISSING: &str = "RevisionMissing";
    /// AllTrafficAssigned=False: a Configuration named in traffic does not exist.
    pub const CONFIGURATION_MISSING: &str = "ConfigurationMissing";
    /// IngressReady=Unknown: the gateway has not programmed the route yet.
    pub const INGRESS_NOT_CONFIGURED: &str = "IngressNotConfigured";
}

/// One entry of `spec.traffic` (and, resolved, of `status.traffic`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficTarget {
    /// Names this target with its own URL `{tag}-{route}.{namespace}.{domain}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub tag: Option<String>,
    /// A fixed Revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_name: Option<String>,
    /// Routes only: the Configuration whose latest ready Revision gets this traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configuration_name: Option<String>,
    /// Follow the latest ready Revision (true) or pin `revisionName` (false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_revision: Option<bool>,
    /// Share of traffic, 0..100; all targets sum to 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub percent: Option<i64>,
    /// Status only: the tag's URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

impl TrafficTarget {
    pub fn follows_latest(&self) -> bool {
        self.latest_revision == Some(true)
    }
    pub fn percent(&self) -> i64 {
        self.percent.unwrap_or(0)
    }
}

/// Something with a URL (Knative's duck type `Addressable`), read by event brokers as a sink.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Addressable {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// Fields shared by Route and Service status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatusFields {
    /// The external URL (or the cluster-local one for cluster-local routes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The in-cluster address; brokers deliver events here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Addressable>,
    /// Traffic as resolved: revision names filled in, tag URLs set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub traffic: Vec<TrafficTarget>,
}

// CEL rules make the API server refuse what it can check itself; the full rule set (with every
// error at once) lives in `validation`. Rules sit on the kind, not on RouteSpec, because a
// Service embeds RouteSpec with different rules (latestRevision instead of configurationName).
#[derive(CustomResource, KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "serving.knative.dev",
    version = "v1",
    kind = "Route",
    namespaced,
    derive = "PartialEq",
    derive = "Default",
    status = "RouteStatus",
    shortname = "rt",
    category = "all",
    category = "knative",
    category = "serving",
    printcolumn(name = "URL", type_ = "string", json_path = ".status.url"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type=='Ready')].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type=='Ready')].reason"),
    validation = Rule::new("self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name: must be a DNS-1035 label (lower case letters, digits and '-', starting with a letter, at most 63 characters)"),
    validation = Rule::new("!has(self.spec.traffic) || size(self.spec.traffic) == 0 || (size(self.spec.traffic) == 1 && !has(self.spec.traffic[0].percent)) || self.spec.traffic.map(t, has(t.percent) ? t.percent : 0).sum() == 100").message("spec.traffic: percents must sum to 100"),
    validation = Rule::new("!has(self.spec.traffic) || self.spec.traffic.all(t, has(t.revisionName) != has(t.configurationName))").message("spec.traffic: each target needs exactly one of revisionName or configurationName"),
    validation = Rule::new("!has(self.spec.traffic) || self.spec.traffic.all(t, !has(t.url))").message("spec.traffic: url is set by the system (status only)"),
    validation = Rule::new("!has(self.spec.traffic) || self.spec.traffic.all(a, !has(a.tag) || self.spec.traffic.filter(b, has(b.tag) && b.tag == a.tag).size() == 1)").message("spec.traffic: tags must be unique")
)]
#[serde(rename_all = "camelCase")]
pub struct RouteSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub traffic: Vec<TrafficTarget>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(flatten)]
    pub fields: RouteStatusFields,
}

impl Route {
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
