//! The apply step for local mode: the same builders and status logic as on Kubernetes, applied
//! to the embedded store. Level-based: each pass reads everything and writes only what
//! differs, so it can run after any change (a watch event) or on a timer.
//!
//! Revision status is not written here: the instance runtime owns it (as the kubelet and the
//! Deployment controller do on Kubernetes).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use serving_api::condition::carry_transition_times;
use serving_api::config::{DomainConfig, NetworkConfig};
use serving_api::{Configuration, Revision, Route, Service};
use store::{Store, StoreError};

use crate::configuration::{RevisionPlan, configuration_status, plan_revision};
use crate::route::{IngressState, RouteInputs, route_status};
use crate::service::{desired_configuration, desired_route, service_status};

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored object does not parse: {0}")]
    Decode(#[from] serde_json::Error),
}

/// Configuration the control plane needs.
#[derive(Clone, Debug)]
pub struct LocalConfig {
    pub network: NetworkConfig,
    pub domains: DomainConfig,
    /// `config-gc`: which non-active revisions are deleted.
    pub gc: serving_api::config::GcConfig,
    /// `config-features` (the gateway's tag-header routing).
    pub features: serving_api::config::FeaturesConfig,
}

impl Default for LocalConfig {
    fn default() -> Self {
        // Local mode serves `http://{name}.{namespace}.localhost` (browsers resolve
        // *.localhost to loopback).
        LocalConfig {
            // A DomainMapping claims its domain itself: one user owns every namespace here, so
            // a ClusterDomainClaim made by hand first would guard nothing (Knative's default
            // is false; `--config` may set it).
            network: NetworkConfig {
                autocreate_cluster_domain_claims: true,
                ..NetworkConfig::default()
            },
            domains: DomainConfig::single("localhost"),
            gc: serving_api::config::GcConfig::default(),
            features: serving_api::config::FeaturesConfig::default(),
        }
    }
}

fn list<T: DeserializeOwned>(store: &Store, kind: &str) -> Result<Vec<T>, ReconcileError> {
    store
        .list(kind, None)?
        .into_iter()
        .map(|v| serde_json::from_value(v).map_err(Into::into))
        .collect()
}

fn to_value<T: Serialize>(v: &T) -> Result<Value, ReconcileError> {
    Ok(serde_json::to_value(v)?)
}

/// The parts of a child the parent decides: labels, annotations, owners and spec.
fn differs(stored: Option<&Value>, desired: &Value) -> bool {
    let Some(s) = stored else { return true };
    ["labels", "annotations", "ownerReferences"]
        .iter()
        .any(|k| s["metadata"].get(*k) != desired["metadata"].get(*k))
        || s.get("spec") != desired.get("spec")
}

/// Write `status` if it changed, keeping transition times of unchanged conditions.
fn write_status<S>(
    store: &Store,
    kind: &str,
    obj: &Value,
    old: Option<&S>,
    mut new: S,
    now: &Time,
) -> Result<bool, ReconcileError>
where
    S: Serialize + PartialEq + Clone + StatusConditions,
{
    if let Some(old) = old {
        let old_conditions = old.conditions().to_vec();
        carry_transition_times(&old_conditions, new.conditions_mut(), now);
        if *old == new {
            return Ok(false);
        }
    } else {
        carry_transition_times(&[], new.conditions_mut(), now);
    }
    let ns = obj["metadata"]["namespace"].as_str().unwrap_or("default");
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    store.update_status(
        kind,
        ns,
        name,
        to_value(&new)?,
        obj["metadata"]["resourceVersion"].as_str(),
    )?;
    Ok(true)
}

/// Access to a status's conditions, for transition-time bookkeeping.
pub trait StatusConditions {
    fn conditions(&self) -> &[serving_api::Condition];
    fn conditions_mut(&mut self) -> &mut Vec<serving_api::Condition>;
}

macro_rules! status_conditions {
    ($($t:ty),*) => {$(impl StatusConditions for $t {
        fn conditions(&self) -> &[serving_api::Condition] { &self.conditions }
        fn conditions_mut(&mut self) -> &mut Vec<serving_api::Condition> { &mut self.conditions }
    })*};
}
status_conditions!(
    serving_api::ServiceStatus,
    serving_api::ConfigurationStatus,
    serving_api::RouteStatus,
    serving_api::RevisionStatus,
    serving_api::DomainMappingStatus
);

/// Record an Event about `obj` (failures to record are not the reconcile's: logged by none,
/// they only cost the Event).
fn event<T: Serialize>(
    store: &Store,
    obj: &T,
    t: store::events::EventType,
    reason: &str,
    message: &str,
) {
    if let Ok(v) = serde_json::to_value(obj) {
        let _ = store::events::record(store, &v, t, reason, message, "ebb-controller");
    }
}

/// Write a Revision's status from what the instance runtime observes (the part the kubelet
/// and the Deployment controller play on Kubernetes). Returns whether anything changed.
pub fn write_revision_status(
    store: &Store,
    rev: &Revision,
    workload: &crate::revision::WorkloadState,
    now: &Time,
) -> Result<bool, ReconcileError> {
    let status = crate::revision::revision_status(rev, workload);
    let changed = write_status(
        store,
        "Revision",
        &to_value(rev)?,
        rev.status.as_ref(),
        status,
        now,
    )?;
    // A failure the revision did not report yet becomes a Warning Event, as the Kubernetes
    // controller publishes it.
    if changed && let Some(f) = &workload.failure {
        event(
            store,
            rev,
            store::events::EventType::Warning,
            &f.reason,
            &f.message,
        );
    }
    Ok(changed)
}

/// One reconcile pass over everything in the store. Returns the number of writes (0 = settled).
pub fn reconcile(store: &Store, cfg: &LocalConfig, now: &Time) -> Result<usize, ReconcileError> {
    reconcile_with(store, cfg, now, &crate::route::Programmed::Everything)
}

/// One pass, a Route Ready only once the gateway routes it as its status says (`programmed`:
/// what the gateway's table was built from), as Knative waits for its ingress.
pub fn reconcile_with(
    store: &Store,
    cfg: &LocalConfig,
    now: &Time,
    programmed: &crate::route::Programmed,
) -> Result<usize, ReconcileError> {
    let mut writes = 0;

    // Service → Configuration + Route.
    for svc in list::<Service>(store, "Service")? {
        let ns = svc
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = svc.metadata.name.clone().unwrap_or_default();
        for (kind, desired) in [
            ("Configuration", to_value(&desired_configuration(&svc))?),
            ("Route", to_value(&desired_route(&svc))?),
        ] {
            // A damaged child (reported at startup) is rebuilt from its parent.
            let stored = match store.get(kind, &ns, &name) {
                Err(StoreError::Damaged { .. }) => None,
                other => other?,
            };
            // The Route's rollout state is the Route's own, not the Service's to reset.
            let mut desired = desired;
            if let Some(state) = stored
                .as_ref()
                .and_then(|s| s["metadata"]["annotations"][crate::rollout::ROLLOUT_STATE].as_str())
            {
                desired["metadata"]["annotations"][crate::rollout::ROLLOUT_STATE] = state.into();
            }
            // One of that name the Service does not control is not taken over: the Service
            // reports NotOwned, as Knative's does.
            let foreign = stored.as_ref().is_some_and(|v| {
                serde_json::from_value::<ObjectMeta>(v["metadata"].clone())
                    .is_ok_and(|m| !crate::meta::is_controlled_by(&m, &svc))
            });
            if !foreign && differs(stored.as_ref(), &desired) {
                store.apply(desired)?;
                writes += 1;
                if stored.is_none() {
                    // As Knative's Service controller reports it.
                    event(
                        store,
                        &svc,
                        store::events::EventType::Normal,
                        "Created",
                        &format!("Created {kind} {name:?}"),
                    );
                }
            }
        }
    }

    // Configuration → Revision, and the Configuration's status.
    let mut revisions = list::<Revision>(store, "Revision")?;
    for config in list::<Configuration>(store, "Configuration")? {
        let ns = config.metadata.namespace.clone().unwrap_or_default();
        let in_ns: Vec<Revision> = revisions
            .iter()
            .filter(|r| r.metadata.namespace.as_deref() == Some(ns.as_str()))
            .cloned()
            .collect();
        let plan = plan_revision(&config, &in_ns);
        if let RevisionPlan::Create(rev) = &plan {
            // (A damaged revision of this generation is written anew.)
            let stored = store.apply(to_value(rev.as_ref())?)?;
            revisions.push(serde_json::from_value(stored)?);
            writes += 1;
            let rev_name = rev.metadata.name.clone().unwrap_or_default();
            event(
                store,
                &config,
                store::events::EventType::Normal,
                "Created",
                &format!("Created Revision {rev_name:?}"),
            );
        }
        let in_ns: Vec<Revision> = revisions
            .iter()
            .filter(|r| r.metadata.namespace.as_deref() == Some(ns.as_str()))
            .cloned()
            .collect();
        let status = configuration_status(&config, &plan, &in_ns);
        writes += usize::from(write_status(
            store,
            "Configuration",
            &to_value(&config)?,
            config.status.as_ref(),
            status,
            now,
        )?);
    }

    // Route → resolved traffic.
    let configs = list::<Configuration>(store, "Configuration")?;
    let ingress = IngressState::Ready;
    for route in list::<Route>(store, "Route")? {
        let inputs = RouteInputs {
            configurations: &configs,
            revisions: &revisions,
            network: &cfg.network,
            domains: &cfg.domains,
            ingress: &ingress,
        };
        let mut status = route_status(&route, &inputs);
        // Gradual rollout: traffic to a new latest revision in steps.
        let rollout = crate::rollout::apply(
            &route,
            &mut status,
            &revisions,
            cfg.network.rollout_duration,
            now.0,
        );
        let rolled = status.fields.traffic.clone();
        if !programmed.routes(&route, &status.fields) {
            let waiting = IngressState::NotReady {
                reason: "Uninitialized".into(),
                message: "Waiting for the gateway to route the Route's hosts.".into(),
            };
            status = route_status(
                &route,
                &RouteInputs {
                    ingress: &waiting,
                    ..inputs
                },
            );
            if rollout.is_some() {
                status.fields.traffic = rolled;
            }
        }
        writes += usize::from(write_status(
            store,
            "Route",
            &to_value(&route)?,
            route.status.as_ref(),
            status,
            now,
        )?);
        // The rollout's state, on the Route, so it resumes after a restart.
        if let Some(want) = rollout
            .as_ref()
            .and_then(|state| crate::rollout::to_record(&route, state))
        {
            let (ns, name) = (
                route.metadata.namespace.clone().unwrap_or_default(),
                route.metadata.name.clone().unwrap_or_default(),
            );
            if let Some(stored) = store.get("Route", &ns, &name)? {
                let mut stored: Route = serde_json::from_value(stored)?;
                let a = stored
                    .metadata
                    .annotations
                    .get_or_insert_with(Default::default);
                match &want {
                    Some(v) => a.insert(crate::rollout::ROLLOUT_STATE.into(), v.clone()),
                    None => a.remove(crate::rollout::ROLLOUT_STATE),
                };
                store.apply(to_value(&stored)?)?;
                writes += 1;
            }
        }
    }

    // Routing state on Revisions (routingState, routingStateModified, routes), as Knative's
    // labeler keeps it: from the Routes' resolved traffic.
    let routes = list::<Route>(store, "Route")?;
    for rev in &revisions {
        if let Some(m) = crate::route::routing_metadata(rev, &routes, now) {
            let (ns, name) = (
                rev.metadata.namespace.clone().unwrap_or_default(),
                rev.metadata.name.clone().unwrap_or_default(),
            );
            // The stored revision (its status moves apart), its metadata updated.
            let Some(stored) = store.get("Revision", &ns, &name)? else {
                continue;
            };
            let mut stored: Revision = serde_json::from_value(stored)?;
            m.apply(&mut stored.metadata);
            store.apply(to_value(&stored)?)?;
            writes += 1;
        }
    }

    // Revision garbage collection per config-gc, once the routing state above is stored.
    let current = list::<Revision>(store, "Revision")?;
    for config in &configs {
        for name in crate::gc::collect(config, &current, &cfg.gc, now) {
            let ns = config.metadata.namespace.clone().unwrap_or_default();
            store.delete("Revision", &ns, &name)?;
            writes += 1;
            event(
                store,
                config,
                store::events::EventType::Normal,
                "Deleted",
                &format!("Deleted non-active Revision {name:?} (config-gc)"),
            );
        }
    }

    // DomainMappings: a custom domain for a Service's or Route's traffic (plain HTTP locally).
    let routes_now = list::<Route>(store, "Route")?;
    let mappings = list::<serving_api::DomainMapping>(store, "DomainMapping")?;
    let mut claims = list::<serving_api::ClusterDomainClaim>(store, "ClusterDomainClaim")?;
    for dm in &mappings {
        let claim =
            crate::domainmapping::claim(dm, &claims, cfg.network.autocreate_cluster_domain_claims);
        if let crate::domainmapping::Claim::Create(new) = &claim {
            // Seen by the mappings after this one in the same pass (one namespace wins).
            store.create(to_value(new)?)?;
            claims.push(new.as_ref().clone());
            writes += 1;
        }
        let status = crate::domainmapping::domain_mapping_status(dm, &claim, &routes_now, false);
        writes += usize::from(write_status(
            store,
            "DomainMapping",
            &to_value(dm)?,
            dm.status.as_ref(),
            status,
            now,
        )?);
    }
    // Claims made for mappings that are gone go with them.
    for stale in crate::domainmapping::stale_claims(&claims, &mappings) {
        if let Some(name) = &stale.metadata.name {
            store.delete("ClusterDomainClaim", "", name)?;
            writes += 1;
        }
    }

    // Service status from its children.
    for svc in list::<Service>(store, "Service")? {
        let (ns, name) = (svc.metadata.namespace.clone(), svc.metadata.name.clone());
        let config = configs
            .iter()
            .find(|c| c.metadata.namespace == ns && c.metadata.name == name);
        let route = routes
            .iter()
            .find(|r| r.metadata.namespace == ns && r.metadata.name == name);
        let status = service_status(&svc, config, route);
        writes += usize::from(write_status(
            store,
            "Service",
            &to_value(&svc)?,
            svc.status.as_ref(),
            status,
            now,
        )?);
    }
    Ok(writes)
}

/// Reconcile until nothing changes (bounded; one pass usually settles a chain of changes in
/// three or four passes).
pub fn settle(store: &Store, cfg: &LocalConfig, now: &Time) -> Result<usize, ReconcileError> {
    settle_with(store, cfg, now, &crate::route::Programmed::Everything)
}

/// As `settle`, with what the gateway routes (see `reconcile_with`).
pub fn settle_with(
    store: &Store,
    cfg: &LocalConfig,
    now: &Time,
    programmed: &crate::route::Programmed,
) -> Result<usize, ReconcileError> {
    let mut total = 0;
    for _ in 0..10 {
        let w = reconcile_with(store, cfg, now, programmed)?;
        total += w;
        if w == 0 {
            break;
        }
    }
    Ok(total)
}
