//! Ebb's view of the Knative Serving v1 API (`serving.knative.dev/v1`).
//!
//! This crate sits under both backends and every component: the four kinds (Service,
//! Configuration, Revision, Route) as kube custom resources, their defaulting and validation,
//! the naming rules (revision names, hostnames), status conditions, and the Knative config maps
//! parsed into typed configuration. It is pure: no kube client, no sockets, no clocks. Time, when
//! needed, is passed in.

pub mod admission;
pub mod autoscaling;
pub mod condition;
pub mod config;
pub mod configuration;
pub mod defaults;
pub mod domainmapping;
pub mod duration;
pub mod labels;
pub mod naming;
pub mod revision;
pub mod route;
mod schema;
pub mod service;
pub mod validation;

pub use condition::{Condition, ConditionStatus};
pub use configuration::{
    Configuration, ConfigurationSpec, ConfigurationStatus, RevisionTemplateSpec,
};
pub use domainmapping::{
    ClusterDomainClaim, ClusterDomainClaimSpec, DomainMapping, DomainMappingSpec,
    DomainMappingStatus,
};
pub use revision::{Revision, RevisionSpec, RevisionStatus};
pub use route::{Addressable, Route, RouteSpec, RouteStatus, TrafficTarget};
pub use service::{Service, ServiceSpec, ServiceStatus};
pub use validation::{FieldError, ValidationErrors};

/// The API group every Ebb kind belongs to, identical to Knative's.
pub const GROUP: &str = "serving.knative.dev";
/// The only served version.
pub const VERSION: &str = "v1";
/// `apiVersion` as written in manifests.
pub const API_VERSION: &str = "serving.knative.dev/v1";
