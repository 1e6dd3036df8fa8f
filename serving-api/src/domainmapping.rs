//! `DomainMapping` (`serving.knative.dev/v1beta1`): serves a custom domain (the object's name)
//! with a Service's or Route's traffic.

// kube's derive takes one `printcolumn(...)` per column; clippy reads the repeated keys inside
// them as duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::condition::Condition;
use crate::route::Addressable;

pub mod conditions {
    pub const READY: &str = "Ready";
    pub const DOMAIN_CLAIMED: &str = "DomainClaimed";
    pub const REFERENCE_RESOLVED: &str = "ReferenceResolved";
    pub const INGRESS_READY: &str = "IngressReady";
}

#[derive(CustomResource, KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "serving.knative.dev",
    version = "v1beta1",
    kind = "DomainMapping",
    namespaced,
    derive = "PartialEq",
    derive = "Default",
    status = "DomainMappingStatus",
    shortname = "dm",
    category = "all",
    category = "knative",
    category = "serving",
    printcolumn(name = "URL", type_ = "string", json_path = ".status.url"),
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
pub struct DomainMappingSpec {
    /// What serves the domain: a Service or Route (`serving.knative.dev/v1`) of the namespace.
    #[serde(rename = "ref")]
    pub reference: KReference,
    /// TLS for the domain (a Secret of the namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<SecretTls>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KReference {
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretTls {
    pub secret_name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DomainMappingStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Addressable>,
}

/// `ClusterDomainClaim` (`networking.internal.knative.dev/v1alpha1`, cluster-scoped): the
/// domain of its name is delegated to one namespace, whose DomainMappings may then serve it.
/// Created by a cluster administrator, or by the DomainMapping reconciler when config-network's
/// `autocreate-cluster-domain-claims` is true.
#[derive(CustomResource, KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "networking.internal.knative.dev",
    version = "v1alpha1",
    kind = "ClusterDomainClaim",
    derive = "PartialEq",
    derive = "Default",
    shortname = "cdc",
    category = "knative-internal",
    category = "networking",
    printcolumn(name = "Namespace", type_ = "string", json_path = ".spec.namespace")
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterDomainClaimSpec {
    /// The namespace the domain is delegated to.
    pub namespace: String,
}

/// Label on a ClusterDomainClaim the DomainMapping reconciler created (autocreate): such a
/// claim is deleted again once no DomainMapping of its namespace maps the domain, as Knative's
/// reconciler deletes the claim it made when the mapping goes. Claims without it are an
/// administrator's and never touched.
pub const AUTOCREATED: &str = "networking.ebb.dev/autocreated";
