//! The serving controller on Kubernetes: kube-runtime Controllers for Service, Configuration,
//! Revision, Route and DomainMapping, applying what the pure builders in `serving-controller`
//! decide.
//!
//! - Reconciles read from reflector stores fed by the watches that trigger them (`Stores`), so
//!   once synced they cost no GET or LIST; children already as desired are not written again.
//! - Errors follow `policy`: transient ones back off per object, permanent ones are reported
//!   on the object and in an Event.
//! - Children (Configuration, Route, Deployment, Service, exposure objects) are written with
//!   server-side apply under one field manager, with controller owner references so deletes
//!   cascade. A Deployment is *created* with its initial scale and afterwards applied without
//!   `replicas`, so the autoscaler's `/scale` writes are never undone.
//! - Status is written only here, through the status subresource, and only when it changed
//!   (transition times of unchanged conditions kept).
//! - A Revision's conditions come from its Deployment and pods: image pull errors, crash
//!   loops and the progress deadline surface as Knative reports them, with a Kubernetes Event.
//! - Routes are exposed as a Service of type ExternalName named after the Route (so
//!   `http://NAME.NAMESPACE.svc.cluster.local` reaches the activator's internal listener) and,
//!   unless cluster-local, an Ingress for the route's hosts (class configurable).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ObjectReference, Pod, Service as KubeService, ServicePort, ServiceSpec,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, watcher};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde_json::json;
use serving_api::condition::carry_transition_times;
use serving_api::config::{
    AutoscalerConfig, DefaultsConfig, DeploymentConfig, DomainConfig, NetworkConfig,
};
use serving_api::{Configuration, Revision, Route, Service, labels};
use serving_controller::configuration::{RevisionPlan, configuration_status, plan_revision};
use serving_controller::local::StatusConditions;
use serving_controller::meta::controller_ref;
use serving_controller::revision::{
    Activity, ContainerFailure, FATAL_WAITING_REASONS, WorkloadState, revision_status,
};
use serving_controller::route::{IngressState, RouteInputs, route_status};
use serving_controller::service::{desired_configuration, desired_route, service_status};
use serving_controller::workload::{desired_deployment, desired_service};

use crate::policy::{Class, Policy, class_of_status};

/// The one field manager for everything the controller applies.
pub const MANAGER: &str = "ebb-controller";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error("building the workload: {0}")]
    Build(#[from] serving_controller::workload::BuildError),
    #[error("serializing: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0} has no namespace")]
    NoNamespace(String),
    #[error("{0}")]
    Finalizer(Box<kube::runtime::finalizer::Error<Error>>),
    #[error("the controller's caches are not running")]
    NotSynced,
}

/// Reflector stores, each fed by the very watch that triggers the controller reading it, so a
/// reconcile never sees an older cache than the change that started it (the informer pattern:
/// the store is updated before the event is handed on). Reads wait until the first list is in.
#[derive(Clone)]
struct Stores {
    /// The Services' children (ownership and status).
    service_configurations: Store<Configuration>,
    service_routes: Store<Route>,
    /// A Configuration's Revisions.
    configuration_revisions: Store<Revision>,
    /// A Revision's Deployment and pods.
    deployments: Store<Deployment>,
    pods: Store<Pod>,
    /// What a Route resolves: Configurations and Revisions; the Routes themselves (routing
    /// state); its Ingress.
    route_configurations: Store<Configuration>,
    route_revisions: Store<Revision>,
    routes: Store<Route>,
    route_ingresses: Store<Ingress>,
    /// The Kubernetes Services a Revision and a Route own.
    revision_services: Store<KubeService>,
    route_services: Store<KubeService>,
    /// A DomainMapping's claim, Routes and Ingress.
    claims: Store<serving_api::ClusterDomainClaim>,
    mapping_routes: Store<Route>,
    mapping_ingresses: Store<Ingress>,
}

/// A cluster-scoped object of the store, once it has been listed.
async fn cached_cluster<K>(store: &Store<K>, name: &str) -> Result<Option<K>, Error>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store
        .wait_until_ready()
        .await
        .map_err(|_| Error::NotSynced)?;
    Ok(store.get(&ObjectRef::new(name)).map(|o| o.as_ref().clone()))
}

/// The store's objects of `ns` whose label `key` is `value` (any labels when `key` is empty),
/// once it has been listed.
async fn cached<K>(store: &Store<K>, ns: &str, key: &str, value: &str) -> Result<Vec<K>, Error>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    cached_where(store, ns, |o: &K| {
        key.is_empty() || o.labels().get(key).map(String::as_str) == Some(value)
    })
    .await
}

/// The store's objects of `ns` that `keep` selects (cloned only then), once it has been listed.
async fn cached_where<K>(
    store: &Store<K>,
    ns: &str,
    keep: impl Fn(&K) -> bool,
) -> Result<Vec<K>, Error>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store
        .wait_until_ready()
        .await
        .map_err(|_| Error::NotSynced)?;
    Ok(store
        .state()
        .into_iter()
        .filter(|o| o.namespace().as_deref() == Some(ns) && keep(o))
        .map(|o| o.as_ref().clone())
        .collect())
}

/// One object of the store, once it has been listed.
async fn cached_one<K>(store: &Store<K>, ns: &str, name: &str) -> Result<Option<K>, Error>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store
        .wait_until_ready()
        .await
        .map_err(|_| Error::NotSynced)?;
    Ok(store
        .get(&ObjectRef::new(name).within(ns))
        .map(|o| o.as_ref().clone()))
}

/// The config maps the controller reads, reloaded when they change.
#[derive(Clone, Debug, Default)]
pub struct Configs {
    pub defaults: DefaultsConfig,
    pub network: NetworkConfig,
    pub domains: DomainConfig,
    pub deployment: DeploymentConfig,
    pub autoscaler: AutoscalerConfig,
    pub gc: serving_api::config::GcConfig,
    pub features: serving_api::config::FeaturesConfig,
}

/// Config map data by name, as `Configs::from_maps` reads it.
pub type ConfigMaps = BTreeMap<String, BTreeMap<String, String>>;

/// The config maps among `list` whose names are in `names`.
pub fn config_maps(
    list: impl Iterator<Item = k8s_openapi::api::core::v1::ConfigMap>,
    names: &[&str],
) -> ConfigMaps {
    list.filter_map(|cm| Some((cm.metadata.name.clone()?, cm.data.unwrap_or_default())))
        .filter(|(n, _)| names.contains(&n.as_str()))
        .collect()
}

/// Watch the config maps `names` of `api` forever, starting from `initial`: every valid
/// change is handed to `apply`; an invalid one is reported and the last good one kept.
pub async fn watch_configs(
    api: Api<k8s_openapi::api::core::v1::ConfigMap>,
    names: &'static [&'static str],
    initial: ConfigMaps,
    mut apply: impl FnMut(Configs) + Send + 'static,
) {
    let mut last = initial;
    crate::mirror::mirror(api, watcher::Config::default(), move |snapshot| {
        let now = config_maps(snapshot.values().cloned(), names);
        if now == last {
            return;
        }
        match Configs::from_maps(&now) {
            Ok(c) => {
                apply(c);
                tracing::info!("configuration reloaded");
            }
            Err(e) => {
                tracing::error!(errors = %e, "config maps rejected; keeping the last good ones")
            }
        }
        last = now;
    })
    .await;
}

impl Configs {
    /// What validation depends on.
    pub fn validation(&self) -> serving_api::validation::ValidationConfig {
        serving_api::validation::ValidationConfig {
            defaults: self.defaults.clone(),
            autoscaler: self.autoscaler.clone(),
            network: self.network.clone(),
            features: self.features.clone(),
        }
    }

    /// From config map data by name; every bad value is reported, naming map and key.
    pub fn from_maps(maps: &BTreeMap<String, BTreeMap<String, String>>) -> Result<Configs, String> {
        let empty = BTreeMap::new();
        let get = |n: &str| maps.get(n).unwrap_or(&empty);
        let mut errors = Vec::new();
        let mut c = Configs::default();
        macro_rules! read {
            ($field:ident, $ty:ty, $name:literal) => {
                match <$ty>::from_map(get($name)) {
                    Ok(v) => c.$field = v,
                    Err(e) => errors.push(e.to_string()),
                }
            };
        }
        read!(defaults, DefaultsConfig, "config-defaults");
        read!(network, NetworkConfig, "config-network");
        read!(domains, DomainConfig, "config-domain");
        read!(deployment, DeploymentConfig, "config-deployment");
        read!(autoscaler, AutoscalerConfig, "config-autoscaler");
        read!(gc, serving_api::config::GcConfig, "config-gc");
        read!(
            features,
            serving_api::config::FeaturesConfig,
            "config-features"
        );
        if errors.is_empty() {
            Ok(c)
        } else {
            Err(errors.join("\n"))
        }
    }
}

/// What every reconcile needs.
pub struct Context {
    pub client: kube::Client,
    pub configs: RwLock<Configs>,
    pub recorder: Recorder,
    /// The activator's internal Service host, target of every Route's ExternalName Service.
    pub activator_host: String,
    /// `ingressClassName` of the Ingresses for public routes (None: the cluster default).
    pub ingress_class: Option<String>,
    /// The activators' probe addresses (their metrics listeners): a Route is Ready only once
    /// every one of them routes it as its status says. None: no data plane is asked (tests of
    /// the control plane alone).
    pub activators: Option<tokio::sync::watch::Receiver<Vec<std::net::SocketAddr>>>,
    /// Failures per object (back-off) and reconcile metrics.
    pub policy: Policy,
    /// What the reconcilers read, from the watches that trigger them (set by `run`).
    stores: std::sync::OnceLock<Stores>,
    probe: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Empty<bytes::Bytes>,
    >,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("activator_host", &self.activator_host)
            .finish()
    }
}

impl Context {
    pub fn new(
        client: kube::Client,
        configs: Configs,
        activator_host: &str,
        ingress_class: Option<String>,
        pod: &str,
        activators: Option<tokio::sync::watch::Receiver<Vec<std::net::SocketAddr>>>,
    ) -> Arc<Context> {
        Arc::new(Context {
            recorder: Recorder::new(
                client.clone(),
                Reporter {
                    controller: MANAGER.into(),
                    instance: Some(pod.into()),
                },
            ),
            client,
            configs: RwLock::new(configs),
            activator_host: activator_host.into(),
            ingress_class,
            activators,
            policy: Policy::default(),
            stores: std::sync::OnceLock::new(),
            probe:
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(30))
                    .build_http(),
        })
    }

    /// Why `route` is not yet routed as `fields` say by every activator, and when to look
    /// again, or none when it is (Knative probes its ingress the same way before it calls a
    /// Route Ready).
    async fn unrouted(
        &self,
        route: &Route,
        fields: &serving_api::route::RouteStatusFields,
    ) -> Option<(IngressState, Duration)> {
        let activators = self.activators.as_ref()?.borrow().clone();
        if fields.traffic.is_empty() {
            return None;
        }
        let waiting = |message: String| IngressState::NotReady {
            reason: "Uninitialized".into(),
            message,
        };
        if activators.is_empty() {
            return Some((
                waiting("Waiting for a ready activator to route the Route's hosts.".into()),
                Duration::from_secs(2),
            ));
        }
        let want = serving_controller::route::routing_fingerprint(route, fields);
        let path = format!(
            "/v1/routes/{}/{}",
            route.namespace().unwrap_or_default(),
            route.name_any()
        );
        let asks = activators.iter().map(|a| {
            let uri = format!("http://{a}{path}");
            let want = want.as_str();
            async move {
                let req = http::Request::get(uri)
                    .body(http_body_util::Empty::new())
                    .ok()?;
                let answer = tokio::time::timeout(Duration::from_secs(1), async {
                    let resp = self.probe.request(req).await.ok()?;
                    if resp.status() != http::StatusCode::OK {
                        return None;
                    }
                    let body = http_body_util::BodyExt::collect(resp.into_body())
                        .await
                        .ok()?
                        .to_bytes();
                    Some(body == want.as_bytes())
                })
                .await;
                (answer != Ok(Some(true))).then_some(*a)
            }
        });
        let behind: Vec<std::net::SocketAddr> = futures_util::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect();
        if behind.is_empty() {
            return None;
        }
        let list: Vec<String> = behind.iter().map(ToString::to_string).collect();
        Some((
            waiting(format!(
                "Waiting for {} of {} activators to route the Route's hosts ({}).",
                behind.len(),
                activators.len(),
                list.join(", ")
            )),
            Duration::from_millis(200),
        ))
    }

    fn configs(&self) -> Configs {
        self.configs.read().map(|c| c.clone()).unwrap_or_default()
    }

    fn stores(&self) -> Result<&Stores, Error> {
        self.stores.get().ok_or(Error::NotSynced)
    }
}

fn ns_of<K: Resource>(o: &K) -> Result<String, Error> {
    o.namespace()
        .ok_or_else(|| Error::NoNamespace(o.name_any()))
}

fn apply_params() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

/// Write `status` when it differs from what is stored, keeping transition times.
async fn write_status<K, S>(
    api: &Api<K>,
    name: &str,
    resource_version: Option<&str>,
    old: Option<&S>,
    mut new: S,
) -> Result<bool, Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
    S: Serialize + PartialEq + StatusConditions,
{
    let now = Time(jiff::Timestamp::now());
    carry_transition_times(
        old.map_or(&[][..], |o| o.conditions()),
        new.conditions_mut(),
        &now,
    );
    if old == Some(&new) {
        return Ok(false);
    }
    if tracing::enabled!(tracing::Level::DEBUG) {
        let (a, b) = (
            serde_json::to_value(old).unwrap_or_default(),
            serde_json::to_value(&new).unwrap_or_default(),
        );
        tracing::debug!(
            kind = %K::kind(&Default::default()),
            name,
            change = %serde_json::to_string(&serving_api::admission::json_patch(&a, &b)).unwrap_or_default(),
            "writing status"
        );
    }
    // Conditional on the version the status was computed from: a cache that lags behind
    // gets a conflict (retried once the cache has caught up) instead of writing old news.
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(
            json!({ "metadata": { "resourceVersion": resource_version }, "status": new }),
        ),
    )
    .await?;
    Ok(true)
}

async fn reconcile_service(svc: Arc<Service>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = ns_of(svc.as_ref())?;
    let name = svc.name_any();
    let c = &ctx.client;
    // What Knative's defaulting webhook would have filled in (Ebb has no webhook; the CRDs'
    // CEL rules enforce the structural rules at admission).
    let mut defaulted = svc.as_ref().clone();
    serving_api::defaults::default_service(&mut defaulted, &ctx.configs().defaults);
    let svc = Arc::new(defaulted);
    let cfg = ctx.configs();
    let rules = cfg.validation();
    if let Err(errors) = serving_api::validation::validate_service(&svc, &rules) {
        // What Knative's webhook would have refused: reported on the Service, children left
        // as they are (the last valid spec keeps serving).
        let status = serving_controller::service::invalid_service_status(&svc, &errors);
        let changed = write_status(
            &Api::<Service>::namespaced(c.clone(), &ns),
            &name,
            svc.metadata.resource_version.as_deref(),
            svc.status.as_ref(),
            status,
        )
        .await?;
        if changed {
            publish(
                &ctx,
                svc.as_ref(),
                EventType::Warning,
                serving_controller::service::VALIDATION_FAILED,
                &errors.to_string(),
            )
            .await;
        }
        return Ok(Action::requeue(Duration::from_secs(300)));
    }
    let stores = ctx.stores()?;
    let configuration = apply_owned(
        &Api::<Configuration>::namespaced(c.clone(), &ns),
        &stores.service_configurations,
        &name,
        &desired_configuration(&svc),
        svc.as_ref(),
    )
    .await?;
    let route = apply_owned(
        &Api::<Route>::namespaced(c.clone(), &ns),
        &stores.service_routes,
        &name,
        &desired_route(&svc),
        svc.as_ref(),
    )
    .await?;
    let status = service_status(&svc, Some(&configuration), Some(&route));
    write_status(
        &Api::<Service>::namespaced(c.clone(), &ns),
        &name,
        svc.metadata.resource_version.as_deref(),
        svc.status.as_ref(),
        status,
    )
    .await?;
    Ok(Action::requeue(Duration::from_secs(300)))
}

/// Apply a child the Service controls; one of that name it does not control is left as it is
/// (the Service reports NotOwned, as Knative's does) and returned, as is one that already
/// holds everything desired (nothing is written then).
async fn apply_owned<K>(
    api: &Api<K>,
    store: &Store<K>,
    name: &str,
    desired: &K,
    svc: &Service,
) -> Result<K, Error>
where
    K: Resource<DynamicType = ()>
        + Clone
        + Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + 'static,
{
    let ns = svc.namespace().unwrap_or_default();
    if let Some(existing) = cached_one(store, &ns, name).await?
        && (!serving_controller::meta::is_controlled_by(existing.meta(), svc)
            || holds(&existing, desired))
    {
        return Ok(existing);
    }
    Ok(api
        .patch(name, &apply_params(), &Patch::Apply(desired))
        .await?)
}

/// Whether a Deployment already has the desired template, selector and metadata (its
/// `replicas` belong to the autoscaler once created).
fn holds_deployment(existing: &Deployment, desired: &Deployment) -> bool {
    let strip = |d: &Deployment| {
        let mut d = d.clone();
        if let Some(s) = d.spec.as_mut() {
            s.replicas = None;
        }
        d.status = None;
        d
    };
    let r = holds(&strip(existing), &strip(desired));
    if !r && std::env::var_os("EBB_DEBUG_HOLDS").is_some() {
        let e = serde_json::to_value(strip(existing)).unwrap_or_default();
        let d = serde_json::to_value(strip(desired)).unwrap_or_default();
        eprintln!(
            "HOLDS {:?}",
            serving_api::admission::json_patch(&e["spec"], &d["spec"])
        );
    }
    r
}

/// Whether `existing` already has what `desired` sets: its spec, and every label, annotation
/// and owner reference of it.
fn holds<K: Serialize>(existing: &K, desired: &K) -> bool {
    let (Ok(e), Ok(d)) = (
        serde_json::to_value(existing),
        serde_json::to_value(desired),
    ) else {
        return false;
    };
    let subset = |field: &str| {
        d["metadata"][field]
            .as_object()
            .is_none_or(|m| m.iter().all(|(k, v)| e["metadata"][field][k] == *v))
    };
    e.get("spec") == d.get("spec")
        && subset("labels")
        && subset("annotations")
        && d["metadata"]["ownerReferences"] == e["metadata"]["ownerReferences"]
}

async fn reconcile_configuration(
    config: Arc<Configuration>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let ns = ns_of(config.as_ref())?;
    let name = config.name_any();
    let mut defaulted = config.as_ref().clone();
    serving_api::defaults::default_configuration(&mut defaulted, &ctx.configs().defaults);
    let config = Arc::new(defaulted);
    let mut revisions = cached(
        &ctx.stores()?.configuration_revisions,
        &ns,
        labels::CONFIGURATION,
        &name,
    )
    .await?;
    let plan = plan_revision(&config, &revisions);
    if let RevisionPlan::Create(rev) = &plan {
        match Api::<Revision>::namespaced(ctx.client.clone(), &ns)
            .create(&PostParams::default(), rev)
            .await
        {
            Ok(created) => revisions.push(created),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    if let RevisionPlan::Conflict { .. } = &plan {
        publish(
            &ctx,
            config.as_ref(),
            EventType::Warning,
            "RevisionFailed",
            "the Revision name belongs to another template",
        )
        .await;
    }
    let status = configuration_status(&config, &plan, &revisions);
    write_status(
        &Api::<Configuration>::namespaced(ctx.client.clone(), &ns),
        &name,
        config.metadata.resource_version.as_deref(),
        config.status.as_ref(),
        status.clone(),
    )
    .await?;
    // Revision GC per config-gc, against the status just written.
    let mut current = config.as_ref().clone();
    current.status = Some(status);
    let now = Time(jiff::Timestamp::now());
    let revisions_api = Api::<Revision>::namespaced(ctx.client.clone(), &ns);
    for gone in serving_controller::gc::collect(&current, &revisions, &ctx.configs().gc, &now) {
        match revisions_api.delete(&gone, &Default::default()).await {
            Ok(_) => {
                publish(
                    &ctx,
                    config.as_ref(),
                    EventType::Normal,
                    "Deleted",
                    &format!("Deleted non-active Revision {gone:?} (config-gc)"),
                )
                .await;
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    // Time-based rules come due without any change: looked at again with the requeue.
    Ok(Action::requeue(Duration::from_secs(300)))
}

/// A container problem on any pod of the revision that will not fix itself soon.
fn pod_failure(pods: &[Pod]) -> Option<ContainerFailure> {
    for pod in pods {
        let statuses = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref());
        for cs in statuses.into_iter().flatten() {
            let state = cs.state.as_ref();
            if let Some(w) = state.and_then(|s| s.waiting.as_ref())
                && let Some(reason) = w
                    .reason
                    .as_deref()
                    .filter(|r| FATAL_WAITING_REASONS.contains(r))
            {
                return Some(ContainerFailure {
                    reason: reason.into(),
                    message: w.message.clone().unwrap_or_default(),
                });
            }
            if let Some(t) = cs.last_state.as_ref().and_then(|s| s.terminated.as_ref())
                && t.exit_code != 0
                && !cs.ready
            {
                return Some(ContainerFailure {
                    reason: format!("ExitCode{}", t.exit_code),
                    message: format!(
                        "Container failed with: {}",
                        t.message.clone().unwrap_or_default()
                    ),
                });
            }
        }
    }
    None
}

async fn reconcile_revision(rev: Arc<Revision>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = ns_of(rev.as_ref())?;
    let name = rev.name_any();
    let cfg = ctx.configs();
    let deployments = Api::<Deployment>::namespaced(ctx.client.clone(), &ns);
    let desired = desired_deployment(&rev, &cfg.deployment, None)?;
    let dname = desired.metadata.name.clone().unwrap_or_default();
    let stores = ctx.stores()?;
    let deployment = match cached_one(&stores.deployments, &ns, &dname).await? {
        None => {
            // Created once with the initial scale; the autoscaler owns `replicas` from then on.
            let annotations = rev.metadata.annotations.clone().unwrap_or_default();
            let initial = serving_api::autoscaling::resolve(
                &annotations,
                rev.spec.container_concurrency.unwrap_or(0),
                &cfg.autoscaler,
                "metadata.annotations",
            )
            .map(|s| s.initial_scale.max(s.min_scale))
            .unwrap_or(1);
            let with_replicas = desired_deployment(&rev, &cfg.deployment, Some(initial))?;
            match deployments
                .create(
                    &PostParams {
                        field_manager: Some(MANAGER.into()),
                        ..PostParams::default()
                    },
                    &with_replicas,
                )
                .await
            {
                Ok(d) => d,
                // Created meanwhile (the cache had not seen it yet): a conflict, retried.
                Err(e) => return Err(e.into()),
            }
        }
        // Unchanged: nothing to write (the autoscaler's replicas are not ours to compare).
        Some(existing) if holds_deployment(&existing, &desired) => existing,
        Some(_) => {
            deployments
                .patch(&dname, &apply_params(), &Patch::Apply(&desired))
                .await?
        }
    };
    let service = desired_service(&rev)?;
    if !cached_one(&stores.revision_services, &ns, &name)
        .await?
        .is_some_and(|c| holds(&c, &service))
    {
        Api::<KubeService>::namespaced(ctx.client.clone(), &ns)
            .patch(&name, &apply_params(), &Patch::Apply(&service))
            .await?;
    }

    let pods = cached(&stores.pods, &ns, labels::REVISION, &name).await?;
    let dstatus = deployment.status.clone().unwrap_or_default();
    let desired_replicas = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(0);
    let ready = dstatus.ready_replicas.unwrap_or(0);
    let deadline = dstatus.conditions.iter().flatten().any(|c| {
        c.type_ == "Progressing"
            && c.status == "False"
            && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    });
    let failure = pod_failure(&pods);
    let workload = WorkloadState {
        exists: true,
        ready_replicas: ready,
        desired_replicas,
        progress_deadline_exceeded: deadline,
        failure: failure.clone(),
        activity: if ready > 0 {
            Activity::Active
        } else if desired_replicas == 0 {
            Activity::Idle
        } else {
            Activity::Activating { queued: false }
        },
        waiting: None,
        // On Kubernetes the kubelet resolves images; digests are not pinned here yet.
        image_digests: Vec::new(),
    };
    let status = revision_status(&rev, &workload);
    let changed = write_status(
        &Api::<Revision>::namespaced(ctx.client.clone(), &ns),
        &name,
        rev.metadata.resource_version.as_deref(),
        rev.status.as_ref(),
        status,
    )
    .await?;
    if changed && let Some(f) = &failure {
        publish(
            &ctx,
            rev.as_ref(),
            EventType::Warning,
            &f.reason,
            &f.message,
        )
        .await;
    }
    Ok(Action::requeue(Duration::from_secs(60)))
}

/// Metadata of an object the Route controls: same name and namespace, the route label, the
/// controller reference.
fn route_child_meta(route: &Route) -> ObjectMeta {
    ObjectMeta {
        name: route.metadata.name.clone(),
        namespace: route.metadata.namespace.clone(),
        labels: Some(BTreeMap::from([(
            labels::ROUTE.to_string(),
            route.name_any(),
        )])),
        owner_references: controller_ref(route).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

/// The Route's exposure: `NAME.NAMESPACE.svc.cluster.local` through the activator.
pub fn placeholder_service(route: &Route, activator_host: &str) -> KubeService {
    KubeService {
        metadata: route_child_meta(route),
        spec: Some(ServiceSpec {
            type_: Some("ExternalName".into()),
            external_name: Some(activator_host.into()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// One Ingress rule per public host of the Route (main URL and tag URLs), all to the Route's
/// ExternalName Service; None for cluster-local routes.
/// A DomainMapping's exposure: its domain to its Route's ExternalName Service (the activator,
/// which serves the domain as the Route's host), with TLS from `spec.tls`.
pub fn desired_domain_ingress(dm: &serving_api::DomainMapping, class: Option<&str>) -> Ingress {
    let domain = dm.name_any();
    Ingress {
        metadata: ObjectMeta {
            name: Some(domain.clone()),
            namespace: dm.metadata.namespace.clone(),
            owner_references: controller_ref(dm).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: Some(IngressSpec {
            ingress_class_name: class.map(str::to_string),
            rules: Some(vec![IngressRule {
                host: Some(domain.clone()),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some("/".into()),
                        path_type: "Prefix".into(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: serving_controller::domainmapping::route_name(dm).into(),
                                port: Some(ServiceBackendPort {
                                    number: Some(80),
                                    name: None,
                                }),
                            }),
                            resource: None,
                        },
                    }],
                }),
            }]),
            tls: dm.spec.tls.as_ref().map(|t| {
                vec![IngressTLS {
                    hosts: Some(vec![domain.clone()]),
                    secret_name: Some(t.secret_name.clone()),
                }]
            }),
            ..IngressSpec::default()
        }),
        status: None,
    }
}

/// The finalizer a DomainMapping carries so that a claim made for it goes with it (Knative's).
pub const DOMAIN_MAPPING_FINALIZER: &str = "domainmappings.serving.knative.dev";

/// A DomainMapping through its finalizer: applied while it lives; when it is deleted, the
/// ClusterDomainClaim made for it (autocreate) is deleted before it goes.
async fn reconcile_domain_mapping(
    dm: Arc<serving_api::DomainMapping>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    use kube::runtime::finalizer::{Event as Finalizer, finalizer};
    let ns = ns_of(dm.as_ref())?;
    let api = Api::<serving_api::DomainMapping>::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, DOMAIN_MAPPING_FINALIZER, dm, |event| async {
        match event {
            Finalizer::Apply(dm) => apply_domain_mapping(dm, ctx.clone()).await,
            Finalizer::Cleanup(dm) => release_domain_claim(dm, ctx.clone()).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// Delete the claim this mapping's reconciler made (labelled autocreated, for its namespace);
/// an administrator's claim stays.
async fn release_domain_claim(
    dm: Arc<serving_api::DomainMapping>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let claims = Api::<serving_api::ClusterDomainClaim>::all(ctx.client.clone());
    let name = dm.name_any();
    if let Some(c) = cached_cluster(&ctx.stores()?.claims, &name).await? {
        let stale = serving_controller::domainmapping::stale_claims(std::slice::from_ref(&c), &[]);
        if !stale.is_empty() && Some(c.spec.namespace.as_str()) == dm.namespace().as_deref() {
            claims.delete(&name, &Default::default()).await?;
        }
    }
    Ok(Action::await_change())
}

async fn apply_domain_mapping(
    dm: Arc<serving_api::DomainMapping>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let ns = ns_of(dm.as_ref())?;
    let name = dm.name_any();
    if let Err(errors) = serving_api::validation::validate_domain_mapping(&dm) {
        // As the webhook would have refused it: reported, nothing exposed.
        let mut status = dm.status.clone().unwrap_or_default();
        status.observed_generation = dm.metadata.generation;
        status.conditions = vec![serving_api::Condition::new(
            serving_api::domainmapping::conditions::READY,
            serving_api::ConditionStatus::False,
            serving_controller::service::VALIDATION_FAILED,
            &errors.to_string(),
        )];
        write_status(
            &Api::<serving_api::DomainMapping>::namespaced(ctx.client.clone(), &ns),
            &name,
            dm.metadata.resource_version.as_deref(),
            dm.status.as_ref(),
            status,
        )
        .await?;
        return Ok(Action::requeue(Duration::from_secs(300)));
    }
    // The domain's ClusterDomainClaim, made for the mapping's namespace when config-network
    // allows (another mapping's creation racing this one wins; this one looks again).
    let claims = Api::<serving_api::ClusterDomainClaim>::all(ctx.client.clone());
    let stores = ctx.stores()?;
    let existing: Vec<_> = cached_cluster(&stores.claims, &name)
        .await?
        .into_iter()
        .collect();
    let autocreate = ctx.configs().network.autocreate_cluster_domain_claims;
    let claim = serving_controller::domainmapping::claim(&dm, &existing, autocreate);
    if let serving_controller::domainmapping::Claim::Create(new) = &claim {
        match claims.create(&PostParams::default(), new.as_ref()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {
                return Ok(Action::requeue(Duration::from_millis(100)));
            }
            Err(e) => return Err(e.into()),
        }
    }
    let routes = cached(&stores.mapping_routes, &ns, "", "").await?;
    let status =
        serving_controller::domainmapping::domain_mapping_status(&dm, &claim, &routes, true);
    let mut with_status = dm.as_ref().clone();
    with_status.status = Some(status.clone());
    let ingresses = Api::<Ingress>::namespaced(ctx.client.clone(), &ns);
    let current = cached_one(&stores.mapping_ingresses, &ns, &name).await?;
    if serving_controller::domainmapping::serves(&with_status) {
        let desired = desired_domain_ingress(&dm, ctx.ingress_class.as_deref());
        if !current.as_ref().is_some_and(|c| holds(c, &desired)) {
            ingresses
                .patch(&name, &apply_params(), &Patch::Apply(&desired))
                .await?;
        }
    } else if current
        .is_some_and(|i| serving_controller::meta::is_controlled_by(&i.metadata, dm.as_ref()))
    {
        ingresses.delete(&name, &Default::default()).await?;
    }
    let ready = status.conditions.iter().any(|c| {
        c.type_ == serving_api::domainmapping::conditions::READY
            && c.status == serving_api::ConditionStatus::True
    });
    write_status(
        &Api::<serving_api::DomainMapping>::namespaced(ctx.client.clone(), &ns),
        &name,
        dm.metadata.resource_version.as_deref(),
        dm.status.as_ref(),
        status,
    )
    .await?;
    // Its Route (and another namespace's claim) change without telling it: look again.
    Ok(Action::requeue(Duration::from_secs(if ready {
        60
    } else {
        2
    })))
}

pub fn desired_ingress(route: &Route, class: Option<&str>) -> Option<Ingress> {
    let local = route.labels().get(labels::VISIBILITY).map(String::as_str)
        == Some(labels::VISIBILITY_CLUSTER_LOCAL);
    let status = route.status.as_ref()?;
    let host = |url: &str| {
        url.split("://")
            .nth(1)
            .map(|h| h.trim_end_matches('/').to_string())
    };
    let mut hosts: Vec<String> = status
        .fields
        .url
        .as_deref()
        .and_then(host)
        .into_iter()
        .collect();
    hosts.extend(
        status
            .fields
            .traffic
            .iter()
            .filter_map(|t| t.url.as_deref().and_then(host)),
    );
    hosts.retain(|h| !h.ends_with(".svc.cluster.local"));
    hosts.sort();
    hosts.dedup();
    if local || hosts.is_empty() {
        return None;
    }
    let backend = IngressBackend {
        service: Some(IngressServiceBackend {
            name: route.name_any(),
            port: Some(ServiceBackendPort {
                number: Some(80),
                name: None,
            }),
        }),
        resource: None,
    };
    Some(Ingress {
        metadata: route_child_meta(route),
        spec: Some(IngressSpec {
            ingress_class_name: class.map(str::to_string),
            rules: Some(
                hosts
                    .into_iter()
                    .map(|h| IngressRule {
                        host: Some(h),
                        http: Some(HTTPIngressRuleValue {
                            paths: vec![HTTPIngressPath {
                                path: Some("/".into()),
                                path_type: "Prefix".into(),
                                backend: backend.clone(),
                            }],
                        }),
                    })
                    .collect(),
            ),
            ..IngressSpec::default()
        }),
        status: None,
    })
}

async fn reconcile_route(route: Arc<Route>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = ns_of(route.as_ref())?;
    let name = route.name_any();
    let cfg = ctx.configs();
    let stores = ctx.stores()?;
    // Only what this Route names: its configurations and their revisions, and revisions it
    // names directly (cloning a namespace's every object per reconcile cost gigabytes with
    // thousands of Services).
    let named_configurations: std::collections::BTreeSet<&str> = route
        .spec
        .traffic
        .iter()
        .filter_map(|t| t.configuration_name.as_deref())
        .collect();
    let named_revisions: std::collections::BTreeSet<&str> = route
        .spec
        .traffic
        .iter()
        .chain(route.status.iter().flat_map(|s| s.fields.traffic.iter()))
        .filter_map(|t| t.revision_name.as_deref())
        .collect();
    let revisions = cached_where(&stores.route_revisions, &ns, |r: &Revision| {
        named_revisions.contains(r.name_any().as_str())
            || r.labels()
                .get(labels::CONFIGURATION)
                .is_some_and(|c| named_configurations.contains(c.as_str()))
    })
    .await?;
    let configurations = cached_where(&stores.route_configurations, &ns, |c: &Configuration| {
        let name = c.name_any();
        named_configurations.contains(name.as_str())
            || revisions.iter().any(|r| {
                r.labels().get(labels::CONFIGURATION).map(String::as_str) == Some(name.as_str())
            })
    })
    .await?;
    let placeholder = placeholder_service(&route, &ctx.activator_host);
    if !cached_one(&stores.route_services, &ns, &name)
        .await?
        .is_some_and(|c| holds(&c, &placeholder))
    {
        Api::<KubeService>::namespaced(ctx.client.clone(), &ns)
            .patch(&name, &apply_params(), &Patch::Apply(&placeholder))
            .await?;
    }
    let inputs = RouteInputs {
        configurations: &configurations,
        revisions: &revisions,
        network: &cfg.network,
        domains: &cfg.domains,
        ingress: &IngressState::Ready,
    };
    let mut status = route_status(&route, &inputs);
    // Gradual rollout: traffic to a new latest revision in steps; the state on the Route.
    let rollout = serving_controller::rollout::apply(
        &route,
        &mut status,
        &revisions,
        cfg.network.rollout_duration,
        jiff::Timestamp::now(),
    );
    let next_step = rollout.as_ref().and_then(|r| r.next_step());
    // Ready only once every activator routes it as this status says; until then IngressReady
    // is Unknown and the Route is looked at again shortly.
    let probing = match ctx.unrouted(&route, &status.fields).await {
        Some((waiting, after)) => {
            let rolled = status.fields.traffic.clone();
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
            Some(after)
        }
        None => None,
    };
    // The version the status write is conditional on: this one, or the one the rollout's
    // record just made.
    let mut version = route.metadata.resource_version.clone();
    if let Some(want) = rollout
        .as_ref()
        .and_then(|state| serving_controller::rollout::to_record(&route, state))
    {
        let recorded = Api::<Route>::namespaced(ctx.client.clone(), &ns)
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {
                    serving_controller::rollout::ROLLOUT_STATE: want
                }}})),
            )
            .await?;
        version = recorded.metadata.resource_version;
    }
    let mut with_status = route.as_ref().clone();
    with_status.status = Some(status.clone());
    let ingresses = Api::<Ingress>::namespaced(ctx.client.clone(), &ns);
    match desired_ingress(&with_status, ctx.ingress_class.as_deref()) {
        Some(ing) => {
            let current = cached_one(&stores.route_ingresses, &ns, &name).await?;
            if !current.is_some_and(|c| holds(&c, &ing)) {
                ingresses
                    .patch(&name, &apply_params(), &Patch::Apply(&ing))
                    .await?;
            }
        }
        None => {
            if cached_one(&stores.route_ingresses, &ns, &name)
                .await?
                .is_some()
            {
                ingresses.delete(&name, &Default::default()).await?;
            }
        }
    }
    let routes_api = Api::<Route>::namespaced(ctx.client.clone(), &ns);
    write_status(
        &routes_api,
        &name,
        version.as_deref(),
        route.status.as_ref(),
        status.clone(),
    )
    .await?;
    // Routing state on the namespace's Revisions, from every Route's resolved traffic (this
    // one's as just computed), as Knative's labeler keeps it.
    // The Routes that name any of these revisions (they decide the revisions' routing state).
    let ours: std::collections::BTreeSet<String> = revisions.iter().map(|r| r.name_any()).collect();
    let mut routes = cached_where(&stores.routes, &ns, |r: &Route| {
        r.name_any() == name
            || r.status.iter().any(|s| {
                s.fields
                    .traffic
                    .iter()
                    .any(|t| t.revision_name.as_ref().is_some_and(|n| ours.contains(n)))
            })
    })
    .await?;
    for r in routes.iter_mut().filter(|r| r.name_any() == name) {
        r.status = Some(status.clone());
    }
    let now = Time(jiff::Timestamp::now());
    let revisions_api = Api::<Revision>::namespaced(ctx.client.clone(), &ns);
    // Only this Route's revisions: those of the configurations it targets, those it names, and
    // those that list it (another Route's are that Route's to label, so a namespace of many
    // Routes is not rewritten by each of them).
    let mut configurations_targeted: std::collections::BTreeSet<String> = route
        .spec
        .traffic
        .iter()
        .filter_map(|t| t.configuration_name.clone())
        .collect();
    for t in route
        .spec
        .traffic
        .iter()
        .chain(status.fields.traffic.iter())
    {
        if let Some(rev) = t
            .revision_name
            .as_deref()
            .and_then(|n| revisions.iter().find(|r| r.name_any() == n))
            && let Some(c) = rev.labels().get(labels::CONFIGURATION)
        {
            configurations_targeted.insert(c.clone());
        }
    }
    let ours = |rev: &Revision| {
        rev.labels()
            .get(labels::CONFIGURATION)
            .is_some_and(|c| configurations_targeted.contains(c))
            || rev
                .annotations()
                .get(labels::ROUTES)
                .is_some_and(|r| r.split(',').any(|x| x.trim() == name))
    };
    for rev in revisions.iter().filter(|r| ours(r)) {
        if let Some(m) = serving_controller::route::routing_metadata(rev, &routes, &now) {
            revisions_api
                .patch(
                    &rev.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(m.merge_patch()),
                )
                .await?;
        }
    }
    // A rollout in progress comes back at its next step; a Route the activators do not route
    // yet, shortly.
    let again = next_step.map_or(Duration::from_secs(30), |due| {
        Duration::try_from(due.duration_since(jiff::Timestamp::now()))
            .unwrap_or(Duration::ZERO)
            .clamp(Duration::from_millis(100), Duration::from_secs(30))
    });
    Ok(Action::requeue(
        probing.map_or(again, |after| again.min(after)),
    ))
}

async fn publish<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    obj: &K,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    let reference: ObjectReference = obj.object_ref(&());
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &reference).await {
        tracing::debug!(error = %e, "publishing an event");
    }
}

impl Error {
    /// Whether retrying soon can help (see `policy`).
    pub fn class(&self) -> Class {
        use kube::runtime::finalizer::Error as F;
        match self {
            Error::Kube(kube::Error::Api(e)) => class_of_status(Some(e.code)),
            Error::Kube(_) => Class::Transient,
            Error::Build(_) => Class::Permanent("BuildFailed"),
            Error::Json(_) => Class::Permanent("InternalError"),
            Error::NoNamespace(_) => Class::Permanent("NoNamespace"),
            Error::NotSynced => Class::Transient,
            Error::Finalizer(f) => match f.as_ref() {
                F::ApplyFailed(e) | F::CleanupFailed(e) => e.class(),
                F::AddFinalizer(kube::Error::Api(e)) | F::RemoveFinalizer(kube::Error::Api(e)) => {
                    class_of_status(Some(e.code))
                }
                _ => Class::Transient,
            },
        }
    }
}

fn key_of<K: Resource>(obj: &K) -> (String, String) {
    (obj.namespace().unwrap_or_default(), obj.name_any())
}

/// Run one reconcile of `obj`, counting it and its time by kind and result.
async fn timed<K: Resource<DynamicType = ()>>(
    obj: &K,
    ctx: &Context,
    reconcile: impl std::future::Future<Output = Result<Action, Error>>,
) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let result = reconcile.await;
    ctx.policy.observe(
        kind_label::<K>(),
        key_of(obj),
        started.elapsed(),
        result.as_ref().err().map(Error::class),
    );
    result
}

fn kind_label<K: Resource<DynamicType = ()>>() -> &'static str {
    match K::kind(&()).as_ref() {
        "Service" => "Service",
        "Configuration" => "Configuration",
        "Revision" => "Revision",
        "Route" => "Route",
        "DomainMapping" => "DomainMapping",
        _ => "other",
    }
}

/// The error policy (`policy`): a transient error comes back after the object's back-off; a
/// permanent one is reported on the object and in an Event, and comes back after the longest.
fn retry<K>(obj: Arc<K>, e: &Error, ctx: Arc<Context>) -> Action
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let class = e.class();
    let wait = ctx
        .policy
        .failed(kind_label::<K>(), key_of(obj.as_ref()), class);
    match class {
        Class::Transient => {
            tracing::warn!(kind = kind_label::<K>(), name = %obj.name_any(), error = %e, retry_in = ?wait, "reconcile failed; retrying")
        }
        Class::Permanent(reason) => {
            tracing::error!(kind = kind_label::<K>(), name = %obj.name_any(), error = %e, reason, "reconcile failed and retrying soon cannot help; reported on the object");
            let message = e.to_string();
            tokio::spawn(async move { report_failure(obj.as_ref(), reason, &message, &ctx).await });
        }
    }
    Action::requeue(wait)
}

/// A permanent failure on the object: `Ready` False with the reason and message (written only
/// when it differs from what is there), and a Warning Event.
async fn report_failure<K>(obj: &K, reason: &str, message: &str, ctx: &Context)
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    publish(ctx, obj, EventType::Warning, reason, message).await;
    let Some(ns) = obj.namespace() else { return };
    let current = serde_json::to_value(obj).unwrap_or_default();
    let mut conditions: Vec<serde_json::Value> = current["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let ready = json!({
        "type": "Ready", "status": "False", "reason": reason,
        "message": message.chars().take(1000).collect::<String>(),
        "lastTransitionTime": jiff::Timestamp::now().round(jiff::Unit::Second).unwrap_or(jiff::Timestamp::now()).to_string(),
    });
    match conditions.iter_mut().find(|c| c["type"] == "Ready") {
        Some(c)
            if c["status"] == "False"
                && c["reason"] == ready["reason"]
                && c["message"] == ready["message"] =>
        {
            return;
        }
        Some(c) => *c = ready,
        None => conditions.push(ready),
    }
    let api = Api::<K>::namespaced(ctx.client.clone(), &ns);
    if let Err(e) = api
        .patch_status(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": conditions}})),
        )
        .await
    {
        tracing::warn!(error = %e, "reporting a failure on the object's status");
    }
}

fn by_label<K: Resource<DynamicType = ()>>(
    label: &'static str,
) -> impl Fn(K) -> Option<ObjectRef<Revision>> {
    move |o: K| {
        let rev = o.labels().get(label)?.clone();
        Some(ObjectRef::new(&rev).within(&o.namespace()?))
    }
}

/// Run the four controllers until `shutdown` resolves (each finishes what it is doing).
pub async fn run(
    ctx: Arc<Context>,
    reload: tokio::sync::watch::Receiver<u64>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let c = ctx.client.clone();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let reloads = |rx: tokio::sync::watch::Receiver<u64>| {
        futures_util::stream::unfold(rx, |mut rx| async move {
            rx.changed().await.ok()?;
            Some(((), rx))
        })
    };
    let cfg = watcher::Config::default;
    // At most this many reconciles of a kind at once: bounds memory and the burst on the API
    // server when thousands of objects change together.
    let limits = || kube::runtime::controller::Config::default().concurrency(16);
    // One watch per (controller, kind), each feeding a store the controller's reconciles read
    // (see `Stores`): the main kind's changes trigger it (`main`: applied objects), a child's
    // or related object's too (deletes included).
    type Triggers<K> =
        std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<K, watcher::Error>> + Send>>;
    fn stream_of<K>(api: Api<K>, config: watcher::Config, main: bool) -> (Store<K>, Triggers<K>)
    where
        K: Resource<DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug
            + Send
            + Sync
            + 'static,
    {
        let (reader, writer) = reflector::store();
        let reflected = watcher(api, config).default_backoff().reflect(writer);
        let stream: Triggers<K> = if main {
            Box::pin(reflected.applied_objects())
        } else {
            Box::pin(reflected.touched_objects())
        };
        (reader, stream)
    }
    let (service_store, service_stream) = stream_of(Api::<Service>::all(c.clone()), cfg(), true);
    let (service_configurations, service_configuration_stream) =
        stream_of(Api::<Configuration>::all(c.clone()), cfg(), false);
    let (service_routes, service_route_stream) =
        stream_of(Api::<Route>::all(c.clone()), cfg(), false);
    let (configuration_store, configuration_stream) =
        stream_of(Api::<Configuration>::all(c.clone()), cfg(), true);
    let (configuration_revisions, configuration_revision_stream) =
        stream_of(Api::<Revision>::all(c.clone()), cfg(), false);
    let (revision_store, revision_stream) = stream_of(Api::<Revision>::all(c.clone()), cfg(), true);
    let (deployments, deployment_stream) = stream_of(
        Api::<Deployment>::all(c.clone()),
        cfg().labels(labels::REVISION),
        false,
    );
    let (pods, pod_stream) = stream_of(
        Api::<Pod>::all(c.clone()),
        cfg().labels(labels::REVISION),
        false,
    );
    let (routes, route_stream) = stream_of(Api::<Route>::all(c.clone()), cfg(), true);
    let (route_revisions, route_revision_stream) =
        stream_of(Api::<Revision>::all(c.clone()), cfg(), false);
    let (route_configurations, route_configuration_stream) =
        stream_of(Api::<Configuration>::all(c.clone()), cfg(), false);
    let (route_ingresses, route_ingress_stream) =
        stream_of(Api::<Ingress>::all(c.clone()), cfg(), false);
    let (mapping_store, mapping_stream) = stream_of(
        Api::<serving_api::DomainMapping>::all(c.clone()),
        cfg(),
        true,
    );
    let (claims, claim_stream) = stream_of(
        Api::<serving_api::ClusterDomainClaim>::all(c.clone()),
        cfg(),
        false,
    );
    let (mapping_routes, mapping_route_stream) =
        stream_of(Api::<Route>::all(c.clone()), cfg(), false);
    let (mapping_ingresses, mapping_ingress_stream) =
        stream_of(Api::<Ingress>::all(c.clone()), cfg(), false);
    let (revision_services, revision_service_stream) = stream_of(
        Api::<KubeService>::all(c.clone()),
        cfg().labels(labels::REVISION),
        false,
    );
    let (route_services, route_service_stream) = stream_of(
        Api::<KubeService>::all(c.clone()),
        cfg().labels(labels::ROUTE),
        false,
    );
    let _ = ctx.stores.set(Stores {
        revision_services,
        route_services,
        claims,
        mapping_routes,
        mapping_ingresses,
        service_configurations,
        service_routes,
        configuration_revisions,
        deployments,
        pods,
        route_configurations,
        route_revisions,
        routes: routes.clone(),
        route_ingresses,
    });
    let services = Controller::for_stream(service_stream, service_store)
        .with_config(limits())
        .owns_stream(service_configuration_stream)
        .owns_stream(service_route_stream)
        .graceful_shutdown_on(stopped(stop_rx.clone()))
        .run(
            |o: Arc<Service>, c: Arc<Context>| async move {
                timed(o.clone().as_ref(), &c.clone(), reconcile_service(o, c)).await
            },
            retry,
            ctx.clone(),
        )
        .for_each(|_| async {});
    let configurations = Controller::for_stream(configuration_stream, configuration_store)
        .with_config(limits())
        .owns_stream(configuration_revision_stream)
        .graceful_shutdown_on(stopped(stop_rx.clone()))
        .run(
            |o: Arc<Configuration>, c: Arc<Context>| async move {
                timed(
                    o.clone().as_ref(),
                    &c.clone(),
                    reconcile_configuration(o, c),
                )
                .await
            },
            retry,
            ctx.clone(),
        )
        .for_each(|_| async {});
    let revisions = Controller::for_stream(revision_stream, revision_store)
        .with_config(limits())
        .owns_stream(deployment_stream)
        .owns_stream(revision_service_stream)
        .watches_stream(pod_stream, by_label::<Pod>(labels::REVISION))
        .reconcile_all_on(reloads(reload.clone()))
        .graceful_shutdown_on(stopped(stop_rx.clone()))
        .run(
            |o: Arc<Revision>, c: Arc<Context>| async move {
                timed(o.clone().as_ref(), &c.clone(), reconcile_revision(o, c)).await
            },
            retry,
            ctx.clone(),
        )
        .for_each(|_| async {});
    let routes = Controller::for_stream(route_stream, routes)
        .with_config(limits())
        .watches_stream(route_revision_stream, |r: Revision| {
            // The Route a Service made is named after its Configuration.
            let ns = r.namespace()?;
            let name = r.labels().get(labels::CONFIGURATION)?.clone();
            Some(ObjectRef::<Route>::new(&name).within(&ns))
        })
        .watches_stream(route_configuration_stream, |cfg: Configuration| {
            Some(ObjectRef::<Route>::new(&cfg.name_any()).within(&cfg.namespace()?))
        })
        .owns_stream(route_ingress_stream)
        .owns_stream(route_service_stream)
        .reconcile_all_on(reloads(reload))
        .graceful_shutdown_on(stopped(stop_rx.clone()))
        .run(
            |o: Arc<Route>, c: Arc<Context>| async move {
                timed(o.clone().as_ref(), &c.clone(), reconcile_route(o, c)).await
            },
            retry,
            ctx.clone(),
        )
        .for_each(|_| async {});
    let (stop_rx_mappings, ctx_mappings) = (stop_rx, ctx);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let domain_mappings = Controller::for_stream(mapping_stream, mapping_store)
        .with_config(limits())
        .owns_stream(mapping_ingress_stream)
        // A claim names the mappings it concerns (its domain in its namespace).
        .watches_stream(claim_stream, |c: serving_api::ClusterDomainClaim| {
            Some(
                ObjectRef::<serving_api::DomainMapping>::new(&c.name_any())
                    .within(&c.spec.namespace),
            )
        })
        // A Route's readiness shows in its mappings (which are looked at again every 2 s
        // until Ready, every minute after); the watch keeps the cache.
        .watches_stream(mapping_route_stream, |_: Route| {
            None::<ObjectRef<serving_api::DomainMapping>>
        })
        .graceful_shutdown_on(stopped(stop_rx_mappings))
        .run(
            |o: Arc<serving_api::DomainMapping>, c: Arc<Context>| async move {
                timed(
                    o.clone().as_ref(),
                    &c.clone(),
                    reconcile_domain_mapping(o, c),
                )
                .await
            },
            retry,
            ctx_mappings,
        )
        .for_each(|_| async {});
    tokio::join!(services, configurations, revisions, routes, domain_mappings);
}
