//! Service → Configuration + Route, and the Service's status from theirs.

use serving_api::condition::{self, Condition, ConditionStatus};
use serving_api::configuration::ConfigurationStatusFields;
use serving_api::route::RouteStatusFields;
use serving_api::service::{conditions, reasons};
use serving_api::{
    Configuration, ConfigurationSpec, Route, RouteSpec, Service, ServiceStatus, TrafficTarget,
    labels,
};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::meta::{controller_ref, inherited_annotations, is_controlled_by, non_empty, union};

fn child_meta(svc: &Service) -> ObjectMeta {
    let name = svc.metadata.name.clone().unwrap_or_default();
    let uid = svc.metadata.uid.clone().unwrap_or_default();
    let mut extra = vec![(labels::SERVICE, name.as_str())];
    if !uid.is_empty() {
        extra.push((labels::SERVICE_UID, uid.as_str()));
    }
    ObjectMeta {
        name: Some(name.clone()),
        namespace: svc.metadata.namespace.clone(),
        labels: non_empty(union(svc.metadata.labels.as_ref(), &extra)),
        annotations: non_empty(inherited_annotations(svc.metadata.annotations.as_ref())),
        owner_references: controller_ref(svc).map(|r| vec![r]),
        ..ObjectMeta::default()
    }
}

/// The Configuration a Service owns: same name, the Service's template.
pub fn desired_configuration(svc: &Service) -> Configuration {
    Configuration {
        metadata: child_meta(svc),
        spec: ConfigurationSpec {
            template: svc.spec.configuration.template.clone(),
        },
        status: None,
    }
}

/// The Route a Service owns: same name; `latestRevision` targets name the Service's
/// Configuration, as a standalone Route would.
pub fn desired_route(svc: &Service) -> Route {
    let name = svc.metadata.name.clone().unwrap_or_default();
    let traffic = svc
        .spec
        .route
        .traffic
        .iter()
        .map(|t| TrafficTarget {
            configuration_name: t.follows_latest().then(|| name.clone()),
            ..t.clone()
        })
        .collect();
    Route {
        metadata: child_meta(svc),
        spec: RouteSpec { traffic },
        status: None,
    }
}

fn out_of_date(kind: &str, name: &str) -> Condition {
    Condition::new(
        "",
        ConditionStatus::Unknown,
        reasons::OUT_OF_DATE,
        &format!("{kind} {name:?} has not yet observed the latest generation."),
    )
}

fn mirrored(type_: &str, from: Option<&Condition>, missing: &str) -> Condition {
    match from {
        Some(c) => Condition {
            type_: type_.into(),
            last_transition_time: None,
            severity: None,
            ..c.clone()
        },
        None => Condition::new(type_, ConditionStatus::Unknown, "", missing),
    }
}

/// The Service's status from its children (None when not created yet).
pub fn service_status(
    svc: &Service,
    config: Option<&Configuration>,
    route: Option<&Route>,
) -> ServiceStatus {
    let name = svc.metadata.name.as_deref().unwrap_or_default();
    let mut status = ServiceStatus {
        observed_generation: svc.metadata.generation,
        ..ServiceStatus::default()
    };

    let config_ready = match config {
        None => Condition::new(
            conditions::CONFIGURATIONS_READY,
            ConditionStatus::Unknown,
            "",
            "Configuration has not been created yet.",
        ),
        Some(c) if !is_controlled_by(&c.metadata, svc) => Condition::new(
            conditions::CONFIGURATIONS_READY,
            ConditionStatus::False,
            reasons::NOT_OWNED,
            &format!("There is an existing Configuration {name:?} that we do not own."),
        ),
        Some(c) => {
            let cs = c.status.clone().unwrap_or_default();
            status.configuration = cs.fields.clone();
            if cs.observed_generation != c.metadata.generation {
                Condition {
                    type_: conditions::CONFIGURATIONS_READY.into(),
                    ..out_of_date("Configuration", name)
                }
            } else {
                mirrored(
                    conditions::CONFIGURATIONS_READY,
                    c.ready_condition(),
                    "Configuration is not reporting readiness yet.",
                )
            }
        }
    };

    let routes_ready = match route {
        None => Condition::new(
            conditions::ROUTES_READY,
            ConditionStatus::Unknown,
            "",
            "Route has not been created yet.",
        ),
        Some(r) if !is_controlled_by(&r.metadata, svc) => Condition::new(
            conditions::ROUTES_READY,
            ConditionStatus::False,
            reasons::NOT_OWNED,
            &format!("There is an existing Route {name:?} that we do not own."),
        ),
        Some(r) => {
            let rs = r.status.clone().unwrap_or_default();
            status.route = RouteStatusFields {
                ..rs.fields.clone()
            };
            if rs.observed_generation != r.metadata.generation {
                Condition {
                    type_: conditions::ROUTES_READY.into(),
                    ..out_of_date("Route", name)
                }
            } else if let Some(stale) = unmigrated(&status.configuration, &rs.fields) {
                Condition::new(
                    conditions::ROUTES_READY,
                    ConditionStatus::Unknown,
                    reasons::TRAFFIC_NOT_MIGRATED,
                    &format!("Traffic is not yet migrated to the latest revision {stale:?}."),
                )
            } else {
                mirrored(
                    conditions::ROUTES_READY,
                    r.ready_condition(),
                    "Route is not reporting readiness yet.",
                )
            }
        }
    };

    let ready = condition::summarize(conditions::READY, &[&config_ready, &routes_ready]);
    status.conditions = vec![config_ready, ready, routes_ready];
    status.conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
    status
}

/// The latest ready revision when `latestRevision` traffic still points elsewhere.
fn unmigrated(config: &ConfigurationStatusFields, route: &RouteStatusFields) -> Option<String> {
    let latest = config.latest_ready_revision_name.as_deref()?;
    route
        .traffic
        .iter()
        .any(|t| t.follows_latest() && t.revision_name.as_deref() != Some(latest))
        .then(|| latest.to_string())
}

/// Reason of the conditions of a Service whose spec breaks a rule. Knative refuses such a
/// Service in its admission webhook; Ebb has no webhook (the CRDs' CEL rules catch the
/// structural errors), so the controller reports the rest here and leaves the children as
/// they were: the last valid spec keeps serving.
pub const VALIDATION_FAILED: &str = "ValidationFailed";

/// The status of a Service that failed validation: Ready, ConfigurationsReady and RoutesReady
/// False with every field error; the URL and traffic of the last valid spec kept.
pub fn invalid_service_status(
    svc: &Service,
    errors: &serving_api::ValidationErrors,
) -> ServiceStatus {
    let previous = svc.status.clone().unwrap_or_default();
    let message = errors
        .0
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    let failed = |t: &str| Condition::new(t, ConditionStatus::False, VALIDATION_FAILED, &message);
    let mut conditions = vec![
        failed(conditions::CONFIGURATIONS_READY),
        failed(conditions::READY),
        failed(conditions::ROUTES_READY),
    ];
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
    ServiceStatus {
        observed_generation: svc.metadata.generation,
        conditions,
        configuration: previous.configuration,
        route: previous.route,
    }
}
