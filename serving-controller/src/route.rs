//! Route → resolved traffic: revision names for every target, tag URLs, the route's URLs and
//! its conditions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serving_api::condition::{self, Condition, ConditionStatus};
use serving_api::config::{DomainConfig, NetworkConfig};
use serving_api::naming::{self, RouteRef};
use serving_api::route::{RouteStatusFields, conditions, reasons};
use serving_api::{Addressable, Configuration, Revision, Route, RouteStatus, TrafficTarget};

/// Whether the data plane has programmed this route (the gateway's answer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IngressState {
    Ready,
    NotReady { reason: String, message: String },
}

/// Everything a route's status depends on besides the route itself.
#[derive(Clone, Copy, Debug)]
pub struct RouteInputs<'a> {
    pub configurations: &'a [Configuration],
    pub revisions: &'a [Revision],
    pub network: &'a NetworkConfig,
    pub domains: &'a DomainConfig,
    pub ingress: &'a IngressState,
}

/// One target that could not be resolved, and how badly.
struct Unresolved {
    status: ConditionStatus,
    reason: &'static str,
    message: String,
}

fn resolve_target(
    t: &TrafficTarget,
    inputs: &RouteInputs<'_>,
) -> Result<(String, bool), Unresolved> {
    let find_rev = |n: &str| {
        inputs
            .revisions
            .iter()
            .find(|r| r.metadata.name.as_deref() == Some(n))
    };
    let (revision, latest) = match (t.revision_name.as_deref(), t.configuration_name.as_deref()) {
        (_, Some(config)) => {
            let Some(c) = inputs
                .configurations
                .iter()
                .find(|c| c.metadata.name.as_deref() == Some(config))
            else {
                return Err(Unresolved {
                    status: ConditionStatus::False,
                    reason: reasons::CONFIGURATION_MISSING,
                    message: format!("Configuration {config:?} referenced in traffic not found."),
                });
            };
            match c.latest_ready() {
                Some(r) => (r.to_string(), true),
                None if c.ready_status() == ConditionStatus::False => {
                    return Err(Unresolved {
                        status: ConditionStatus::False,
                        reason: reasons::REVISION_MISSING,
                        message: format!(
                            "Configuration {config:?} does not have any ready Revision."
                        ),
                    });
                }
                None => {
                    return Err(Unresolved {
                        status: ConditionStatus::Unknown,
                        reason: reasons::REVISION_MISSING,
                        message: format!(
                            "Configuration {config:?} is waiting for a Revision to become ready."
                        ),
                    });
                }
            }
        }
        (Some(rev), None) => (rev.to_string(), false),
        (None, None) => {
            return Err(Unresolved {
                status: ConditionStatus::False,
                reason: reasons::REVISION_MISSING,
                message: "A traffic target names neither a revision nor a configuration.".into(),
            });
        }
    };
    match find_rev(&revision) {
        None => Err(Unresolved {
            status: ConditionStatus::False,
            reason: reasons::REVISION_MISSING,
            message: format!("Revision {revision:?} referenced in traffic not found."),
        }),
        Some(r) if r.is_failed() => Err(Unresolved {
            status: ConditionStatus::False,
            reason: reasons::REVISION_MISSING,
            message: format!("Revision {revision:?} failed to become ready."),
        }),
        // A latest-ready revision is ready by definition; a pinned one must be checked.
        Some(r) if !latest && !r.is_ready() => Err(Unresolved {
            status: ConditionStatus::Unknown,
            reason: reasons::REVISION_MISSING,
            message: format!("Revision {revision:?} is not yet ready."),
        }),
        Some(_) => Ok((revision, latest)),
    }
}

/// The Route's status. Until every target resolves, `status.traffic` keeps what is being
/// served now, so a half-resolved split is never published.
pub fn route_status(route: &Route, inputs: &RouteInputs<'_>) -> RouteStatus {
    let previous = route.status.clone().unwrap_or_default();
    let empty = Default::default();
    let r = RouteRef {
        name: route.metadata.name.as_deref().unwrap_or_default(),
        namespace: route.metadata.namespace.as_deref().unwrap_or("default"),
        labels: route.metadata.labels.as_ref().unwrap_or(&empty),
        annotations: route.metadata.annotations.as_ref().unwrap_or(&empty),
    };
    let scheme = inputs.network.default_external_scheme.as_str();
    let mut fields = RouteStatusFields {
        traffic: previous.fields.traffic.clone(),
        ..RouteStatusFields::default()
    };

    let hosts = naming::route_hosts(&r, inputs.network, inputs.domains);
    let mut traffic = Vec::new();
    let mut failure: Option<Unresolved> = None;
    match &hosts {
        Err(e) => {
            failure = Some(Unresolved {
                status: ConditionStatus::False,
                reason: "DomainTemplateError",
                message: e.clone(),
            })
        }
        Ok(h) => {
            fields.url = Some(naming::url(
                if h.cluster_local { "http" } else { scheme },
                &h.host,
            ))
        }
    }
    for t in &route.spec.traffic {
        match resolve_target(t, inputs) {
            Ok((revision, latest)) => {
                let url = match t.tag.as_deref() {
                    Some(tag) => match naming::tag_host(&r, tag, inputs.network, inputs.domains) {
                        Ok(host) => {
                            let local = hosts.as_ref().is_ok_and(|h| h.cluster_local);
                            Some(naming::url(if local { "http" } else { scheme }, &host))
                        }
                        Err(e) => {
                            failure.get_or_insert(Unresolved {
                                status: ConditionStatus::False,
                                reason: "DomainTemplateError",
                                message: e,
                            });
                            None
                        }
                    },
                    None => None,
                };
                traffic.push(TrafficTarget {
                    tag: t.tag.clone(),
                    revision_name: Some(revision),
                    configuration_name: None,
                    latest_revision: Some(latest),
                    percent: t.percent,
                    url,
                });
            }
            Err(u) => {
                // False beats Unknown: report the worst problem first.
                let worse = failure.as_ref().is_none_or(|f| {
                    f.status != ConditionStatus::False && u.status == ConditionStatus::False
                });
                if worse {
                    failure = Some(u);
                }
            }
        }
    }

    let assigned = match failure {
        Some(u) => Condition::new(
            conditions::ALL_TRAFFIC_ASSIGNED,
            u.status,
            u.reason,
            &u.message,
        ),
        None => {
            fields.traffic = traffic;
            Condition::truthy(conditions::ALL_TRAFFIC_ASSIGNED)
        }
    };
    let ingress = match inputs.ingress {
        IngressState::Ready => Condition::truthy(conditions::INGRESS_READY),
        IngressState::NotReady { reason, message } => Condition::new(
            conditions::INGRESS_READY,
            ConditionStatus::Unknown,
            reason,
            message,
        ),
    };
    let ready = condition::summarize(conditions::READY, &[&assigned, &ingress]);
    // Brokers resolve a sink through status.address: publish it once the route serves, and
    // keep it through later transient states rather than making sinks flap.
    fields.address = match (&ready.status, &hosts) {
        (ConditionStatus::True, Ok(h)) => Some(Addressable {
            url: Some(naming::url("http", &h.cluster_local_host)),
        }),
        _ => previous.fields.address.clone(),
    };
    RouteStatus {
        observed_generation: route.metadata.generation,
        conditions: vec![assigned, ingress, ready],
        fields,
    }
}

/// The routing metadata Knative keeps on a Revision (its routing state label, when that last
/// changed, the Routes sending it traffic), as it should now be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutingMetadata {
    /// `active` while a Route sends it traffic, `reserve` once none does, `pending` before any did.
    pub state: &'static str,
    /// The Routes (names, sorted) whose resolved traffic names it.
    pub routes: Vec<String>,
    /// `routingStateModified`: kept while the state holds, `now` when it changes.
    pub modified: String,
}

impl RoutingMetadata {
    /// Put it on a Revision's metadata.
    pub fn apply(&self, meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) {
        use serving_api::labels::{ROUTES, ROUTING_STATE, ROUTING_STATE_MODIFIED};
        meta.labels
            .get_or_insert_with(Default::default)
            .insert(ROUTING_STATE.into(), self.state.into());
        let annotations = meta.annotations.get_or_insert_with(Default::default);
        annotations.insert(ROUTING_STATE_MODIFIED.into(), self.modified.clone());
        if self.routes.is_empty() {
            annotations.remove(ROUTES);
        } else {
            annotations.insert(ROUTES.into(), self.routes.join(","));
        }
    }

    /// The same as a JSON merge patch (an emptied `routes` removed).
    pub fn merge_patch(&self) -> serde_json::Value {
        use serving_api::labels::{ROUTES, ROUTING_STATE, ROUTING_STATE_MODIFIED};
        let routes = if self.routes.is_empty() {
            serde_json::Value::Null
        } else {
            self.routes.join(",").into()
        };
        serde_json::json!({"metadata": {
            "labels": {ROUTING_STATE: self.state},
            "annotations": {ROUTING_STATE_MODIFIED: self.modified, ROUTES: routes},
        }})
    }
}

/// What `rev`'s routing metadata should be, given the Routes of its namespace (their resolved
/// traffic, in status); None when it already is.
pub fn routing_metadata(rev: &Revision, routes: &[Route], now: &Time) -> Option<RoutingMetadata> {
    use serving_api::labels::{
        ROUTES, ROUTING_ACTIVE, ROUTING_PENDING, ROUTING_RESERVE, ROUTING_STATE,
        ROUTING_STATE_MODIFIED,
    };
    let name = rev.metadata.name.as_deref()?;
    let mut referencing: Vec<String> = routes
        .iter()
        .filter(|r| r.metadata.namespace == rev.metadata.namespace)
        .filter(|r| {
            r.status.as_ref().is_some_and(|s| {
                s.fields
                    .traffic
                    .iter()
                    .any(|t| t.revision_name.as_deref() == Some(name))
            })
        })
        .filter_map(|r| r.metadata.name.clone())
        .collect();
    referencing.sort();
    referencing.dedup();
    let label = |k: &str| {
        rev.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(k))
            .map(String::as_str)
    };
    let annotation = |k: &str| {
        rev.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(k))
            .map(String::as_str)
    };
    let current = label(ROUTING_STATE);
    let state = if !referencing.is_empty() {
        ROUTING_ACTIVE
    } else if matches!(current, Some(s) if s == ROUTING_ACTIVE || s == ROUTING_RESERVE) {
        ROUTING_RESERVE
    } else {
        ROUTING_PENDING
    };
    let routes_now: Vec<String> = annotation(ROUTES)
        .map(|r| {
            r.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let modified = match annotation(ROUTING_STATE_MODIFIED) {
        Some(m) if current == Some(state) => m.to_string(),
        _ => now.0.to_string(),
    };
    if current == Some(state)
        && routes_now == referencing
        && annotation(ROUTING_STATE_MODIFIED).is_some()
    {
        return None;
    }
    Some(RoutingMetadata {
        state,
        routes: referencing,
        modified,
    })
}

/// What a gateway's table holds of a Route (its visibility, URL and resolved traffic): when the
/// table was built from a Route whose fingerprint matches the one its status now has, the
/// gateway routes it as that status says.
pub fn routing_fingerprint(route: &Route, fields: &RouteStatusFields) -> String {
    let visibility = route
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(serving_api::labels::VISIBILITY));
    serde_json::json!([visibility, fields.url, fields.traffic]).to_string()
}

/// The Routes a gateway serves, as fingerprints by (namespace, name); `Everything` when no
/// gateway is asked (tests of the control plane alone).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Programmed {
    #[default]
    Everything,
    Routes(std::collections::BTreeMap<(String, String), String>),
}

impl Programmed {
    /// Whether the gateway routes `route` as `fields` say (nothing to route counts as routed).
    pub fn routes(&self, route: &Route, fields: &RouteStatusFields) -> bool {
        match self {
            Programmed::Everything => true,
            Programmed::Routes(_) if fields.traffic.is_empty() => true,
            Programmed::Routes(m) => {
                let key = (
                    route.metadata.namespace.clone().unwrap_or_default(),
                    route.metadata.name.clone().unwrap_or_default(),
                );
                m.get(&key) == Some(&routing_fingerprint(route, fields))
            }
        }
    }

    /// The fingerprint of the Route `namespace/name` in the table (none under `Everything`).
    pub fn fingerprint(&self, namespace: &str, name: &str) -> Option<&str> {
        match self {
            Programmed::Everything => None,
            Programmed::Routes(m) => m
                .get(&(namespace.to_string(), name.to_string()))
                .map(String::as_str),
        }
    }

    /// The fingerprints of `routes` as they are stored (what a table built from them holds).
    pub fn of<'a>(routes: impl IntoIterator<Item = &'a Route>) -> Programmed {
        Programmed::Routes(
            routes
                .into_iter()
                .filter_map(|r| {
                    let fields = &r.status.as_ref()?.fields;
                    Some((
                        (
                            r.metadata.namespace.clone().unwrap_or_default(),
                            r.metadata.name.clone().unwrap_or_default(),
                        ),
                        routing_fingerprint(r, fields),
                    ))
                })
                .collect(),
        )
    }
}
