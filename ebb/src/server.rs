//! `ebb local up`: the control plane (the same reconcilers as Kubernetes mode), the autoscaler,
//! the gateway (activator) and the instance runtime in one process, over the embedded store.
//!
//! The CLI talks to it through a small HTTP API on loopback, found through `ebb.json` in the
//! state directory. The API is Ebb's own (apply, get, list, delete, status), not the Kubernetes
//! API: local mode has no RBAC, watches or field managers to serve.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use activator::gateway::{Gateway, serve_with_grace};
use activator::revisions::Revisions;
use activator::routes::{Listener, RoutingTable};
use activator::throttler::Limits;
use autoscaler::collector::RevisionKey;
use autoscaler::runner::Runner;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use serving_api::config::{
    AutoscalerConfig, DefaultsConfig, DeploymentConfig, DomainConfig, NetworkConfig,
};
use serving_api::validation::ValidationConfig;
use serving_api::{Configuration, Route, Service};
use serving_controller::local::{LocalConfig, settle};
use store::Store;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::runtime::{Backend, LocalScaler, Options as RuntimeOptions, Runtime};

/// Where a running `ebb local up` can be reached; written to `STATE/ebb.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Endpoint {
    pub pid: u32,
    pub api: SocketAddr,
    pub gateway: SocketAddr,
    pub runtime: String,
    pub state: PathBuf,
}

pub const ENDPOINT_FILE: &str = "ebb.json";

/// The Knative config maps local mode reads (`--config FILE`, the `config/core/*.yaml` format).
#[derive(Clone, Debug)]
pub struct Settings {
    pub defaults: DefaultsConfig,
    pub autoscaler: AutoscalerConfig,
    pub network: NetworkConfig,
    pub domains: DomainConfig,
    pub deployment: DeploymentConfig,
}

impl Default for Settings {
    fn default() -> Self {
        let local = LocalConfig::default();
        Settings {
            defaults: DefaultsConfig::default(),
            autoscaler: AutoscalerConfig::default(),
            network: local.network,
            domains: local.domains,
            deployment: DeploymentConfig::default(),
        }
    }
}

impl Settings {
    /// Read ConfigMaps (one or many YAML documents). Unknown config maps are an error, as are
    /// bad values (every one, with map, key and rule).
    pub fn from_yaml(text: &str) -> anyhow::Result<Settings> {
        let docs: Vec<Value> = serde_saphyr::from_multiple(text)?;
        let mut s = Settings::default();
        let mut errors = Vec::new();
        for doc in docs.into_iter().filter(|d| !d.is_null()) {
            let name = doc["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let data: BTreeMap<String, String> = doc
                .get("data")
                .cloned()
                .map(serde_json::from_value)
                .transpose()
                .map_err(|e| anyhow::anyhow!("{name}: data must map strings to strings: {e}"))?
                .unwrap_or_default();
            let result = match name.as_str() {
                "config-defaults" => DefaultsConfig::from_map(&data).map(|c| s.defaults = c),
                "config-autoscaler" => AutoscalerConfig::from_map(&data).map(|c| s.autoscaler = c),
                "config-network" => NetworkConfig::from_map(&data).map(|c| s.network = c),
                "config-domain" => DomainConfig::from_map(&data).map(|c| s.domains = c),
                "config-deployment" => DeploymentConfig::from_map(&data).map(|c| s.deployment = c),
                "config-gc" => serving_api::config::GcConfig::from_map(&data).map(|_| ()),
                other => {
                    errors.push(format!(
                        "config map {other:?}: not one local mode reads (config-defaults, config-autoscaler, config-network, config-domain, config-deployment, config-gc)"
                    ));
                    Ok(())
                }
            };
            if let Err(e) = result {
                errors.push(e.to_string());
            }
        }
        if errors.is_empty() {
            Ok(s)
        } else {
            anyhow::bail!("{}", errors.join("\n"))
        }
    }

    fn validation(&self) -> ValidationConfig {
        ValidationConfig {
            defaults: self.defaults.clone(),
            autoscaler: self.autoscaler.clone(),
            network: self.network.clone(),
        }
    }

    fn local(&self) -> LocalConfig {
        LocalConfig {
            network: self.network.clone(),
            domains: self.domains.clone(),
        }
    }
}

#[derive(Debug)]
pub struct UpOptions {
    pub state: PathBuf,
    pub listen: SocketAddr,
    pub api: SocketAddr,
    pub backend: Backend,
    pub settings: Settings,
    pub drain_quiet: Duration,
    pub grace: Duration,
}

fn now() -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now())
}

/// Run local mode until SIGINT or SIGTERM.
pub async fn up(opts: UpOptions) -> anyhow::Result<()> {
    std::fs::create_dir_all(&opts.state)
        .map_err(|e| anyhow::anyhow!("state directory {}: {e}", opts.state.display()))?;
    let store = Store::open(&opts.state.join("store.redb")).map_err(|e| {
        anyhow::anyhow!(
            "cannot open the store in {}: {e} (is another `ebb local up` using this state directory?)",
            opts.state.display()
        )
    })?;
    let store = Arc::new(store);
    let reaped = crate::runtime::reap_orphans(&opts.state, &opts.backend);
    if reaped > 0 {
        eprintln!("stopped {reaped} instance(s) left behind by a previous ebb");
    }

    let listener = TcpListener::bind(opts.listen)
        .await
        .map_err(|e| anyhow::anyhow!("gateway address {}: {e}", opts.listen))?;
    let api_listener = TcpListener::bind(opts.api)
        .await
        .map_err(|e| anyhow::anyhow!("api address {}: {e}", opts.api))?;
    let gateway_addr = listener.local_addr()?;
    let api_addr = api_listener.local_addr()?;

    // Autoscaler → runtime (through a late-bound scaler: each needs the other).
    let runtime_cell: Arc<std::sync::OnceLock<std::sync::Weak<Runtime>>> = Arc::default();
    let scaler = Arc::new(LocalScaler(runtime_cell.clone()));
    let autoscaler_metrics = Arc::new(autoscaler::metrics::Metrics::default());
    let (runner, handle) = Runner::new(
        &opts.settings.autoscaler,
        scaler,
        autoscaler_metrics.clone(),
    );
    let runner = tokio::spawn(runner.run());

    let revisions = Arc::new(Revisions::new(Limits::default()));
    let runtime = Runtime::new(
        RuntimeOptions {
            state: opts.state.clone(),
            backend: opts.backend.clone(),
            drain_quiet: opts.drain_quiet,
            deployment: opts.settings.deployment.clone(),
            autoscaler: opts.settings.autoscaler.clone(),
        },
        store.clone(),
        revisions.clone(),
        handle.clone(),
    );
    let _ = runtime_cell.set(Arc::downgrade(&runtime));

    // Gateway.
    let (routes_tx, routes_rx) = watch::channel(Arc::new(RoutingTable::default()));
    let gateway_metrics = Arc::new(activator::metrics::Metrics::default());
    let poke_handle = handle.clone();
    let gateway = Gateway {
        routes: routes_rx,
        revisions: revisions.clone(),
        // On loopback the gateway is "inside the cluster": cluster-local routes answer too.
        listener: if gateway_addr.ip().is_loopback() {
            Listener::Internal
        } else {
            Listener::External
        },
        poke: Arc::new(move |ns: &str, rev: &str, demand: usize| {
            poke_handle.poke(RevisionKey::new(ns, rev), demand as f64);
        }),
        metrics: gateway_metrics.clone(),
        traces: ebb_traces::Traces::from_env("ebb-gateway", Vec::new())
            .map_err(anyhow::Error::msg)?
            .map(Arc::new),
    };
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    // The gateway's per-second demand report, sampled every 100 ms.
    let report_task = {
        let (revisions, metrics, handle) =
            (revisions.clone(), gateway_metrics.clone(), handle.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut n = 0u32;
            loop {
                tick.tick().await;
                metrics.sample(&revisions);
                n += 1;
                if n.is_multiple_of(10) {
                    for (ns, rev, stat) in
                        metrics.report(&revisions, "ebb-gateway", Duration::from_secs(1))
                    {
                        handle.activator_stat(RevisionKey::new(&ns, &rev), stat);
                    }
                }
            }
        })
    };

    // Control plane.
    let (synced_tx, synced_rx) = tokio::sync::oneshot::channel();
    let control_task = tokio::spawn(control_loop(
        store.clone(),
        opts.settings.local(),
        runtime.clone(),
        routes_tx,
        synced_tx,
    ));
    // Serve only once the routing table reflects the store: a request right after a restart
    // waits in the listen backlog instead of meeting an empty table (404).
    let _ = synced_rx.await;
    let gateway_task = tokio::spawn(serve_with_grace(
        listener,
        gateway,
        shutdown_rx.clone(),
        opts.grace,
    ));

    // API.
    let api = Arc::new(Api {
        store: store.clone(),
        settings: opts.settings.clone(),
        runtime: runtime.clone(),
        revisions: revisions.clone(),
        gateway_metrics,
        autoscaler_metrics,
        endpoint: Endpoint {
            pid: std::process::id(),
            api: api_addr,
            gateway: gateway_addr,
            runtime: opts.backend.name().into(),
            state: opts.state.clone(),
        },
    });
    let api_task = tokio::spawn(serve_api(api_listener, api.clone()));

    let endpoint_file = opts.state.join(ENDPOINT_FILE);
    let tmp = opts.state.join(format!("{ENDPOINT_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(&api.endpoint)?)?;
    std::fs::rename(&tmp, &endpoint_file)?;
    println!(
        "ebb local mode: gateway http://{gateway_addr}  api http://{api_addr}  runtime {}  state {}",
        opts.backend.name(),
        opts.state.display()
    );

    wait_for_signal().await;
    eprintln!("ebb: shutting down (finishing in-flight and queued requests)");
    let _ = std::fs::remove_file(&endpoint_file);
    let _ = shutdown_tx.send(true);
    let _ = gateway_task.await;
    api_task.abort();
    control_task.abort();
    report_task.abort();
    runtime.shutdown().await;
    runner.abort();
    eprintln!("ebb: stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Level-based: after any change in the store (or every 5 s), reconcile everything, let the
/// runtime catch up with the Revisions, and republish the routing table.
async fn control_loop(
    store: Arc<Store>,
    cfg: LocalConfig,
    runtime: Arc<Runtime>,
    routes: watch::Sender<Arc<RoutingTable>>,
    synced: tokio::sync::oneshot::Sender<()>,
) {
    let mut events = store.watch();
    let mut synced = Some(synced);
    loop {
        if let Err(e) = settle(&store, &cfg, &now()) {
            tracing::error!(error = %e, "reconcile");
        }
        runtime.sync();
        let list: Vec<Route> = store
            .list("Route", None)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| serde_json::from_value(v).ok())
            .collect();
        routes.send_replace(Arc::new(RoutingTable::build(list.iter())));
        if let Some(tx) = synced.take() {
            let _ = tx.send(());
        }

        tokio::select! {
            ev = events.recv() => {
                if let Err(tokio::sync::broadcast::error::RecvError::Closed) = ev {
                    return;
                }
                // Coalesce a burst of changes into one pass.
                while events.try_recv().is_ok() {}
            }
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

struct Api {
    store: Arc<Store>,
    settings: Settings,
    runtime: Arc<Runtime>,
    revisions: Arc<Revisions>,
    gateway_metrics: Arc<activator::metrics::Metrics>,
    autoscaler_metrics: Arc<autoscaler::metrics::Metrics>,
    endpoint: Endpoint,
}

async fn serve_api(listener: TcpListener, api: Arc<Api>) {
    loop {
        let (stream, _) = http1::accept::accept(&listener).await;
        let api = api.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let api = api.clone();
                async move { Ok::<_, Infallible>(api.handle(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn reply(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<Full<Bytes>> {
    reply(status, &json!({ "errors": [message.into()] }))
}

/// The kinds the API serves, by their Kubernetes kind name.
pub const KINDS: [&str; 4] = ["Service", "Configuration", "Revision", "Route"];

/// What applying one object did.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Applied {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// created, configured or unchanged (kubectl's words).
    pub result: String,
}

/// Default and validate an object as Knative's webhook does. Errors are prefixed with the
/// object, one line per violated rule.
pub fn admit(mut obj: Value, settings: &Settings) -> Result<Value, Vec<String>> {
    let kind = obj["kind"].as_str().unwrap_or_default().to_string();
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if obj["metadata"]["namespace"]
        .as_str()
        .is_none_or(str::is_empty)
    {
        obj["metadata"]["namespace"] = "default".into();
    }
    let ns = obj["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_string();
    let who = format!("{kind} {ns}/{name}");
    if obj["apiVersion"] != "serving.knative.dev/v1" {
        return Err(vec![format!(
            "{who}: apiVersion: invalid value {}: must be serving.knative.dev/v1",
            obj["apiVersion"]
        )]);
    }
    if let Some(m) = obj["metadata"].as_object_mut() {
        for k in ["uid", "resourceVersion", "generation", "creationTimestamp"] {
            m.remove(k);
        }
    }
    let prefix = |errs: serving_api::ValidationErrors| -> Vec<String> {
        errs.0.iter().map(|e| format!("{who}: {e}")).collect()
    };
    let parse_err = |e: serde_json::Error| vec![format!("{who}: {e}")];
    let cfg = settings.validation();
    let out = match kind.as_str() {
        "Service" => {
            let mut s: Service = serde_json::from_value(obj).map_err(parse_err)?;
            serving_api::defaults::default_service(&mut s, &settings.defaults);
            serving_api::validation::validate_service(&s, &cfg).map_err(prefix)?;
            serde_json::to_value(&s)
        }
        "Configuration" => {
            let mut c: Configuration = serde_json::from_value(obj).map_err(parse_err)?;
            serving_api::defaults::default_configuration(&mut c, &settings.defaults);
            serving_api::validation::validate_configuration(&c, &cfg).map_err(prefix)?;
            serde_json::to_value(&c)
        }
        "Route" => {
            let mut r: Route = serde_json::from_value(obj).map_err(parse_err)?;
            serving_api::defaults::default_route(&mut r);
            serving_api::validation::validate_route(&r, &cfg).map_err(prefix)?;
            serde_json::to_value(&r)
        }
        "Revision" => {
            return Err(vec![format!(
                "{who}: Revisions are created by Configurations (apply a Service or Configuration)"
            )]);
        }
        other => {
            return Err(vec![format!(
                "{who}: kind {other:?} is not served (Service, Configuration, Route)"
            )]);
        }
    };
    let mut v = out.map_err(|e| vec![format!("{who}: {e}")])?;
    if let Some(m) = v.as_object_mut() {
        m.remove("status");
    }
    Ok(v)
}

fn kind_of(segment: &str) -> Option<&'static str> {
    KINDS
        .iter()
        .copied()
        .find(|k| k.eq_ignore_ascii_case(segment))
}

impl Api {
    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().trim_matches('/').to_string();
        let query = req.uri().query().unwrap_or_default().to_string();
        let parts: Vec<&str> = path.split('/').collect();
        match (req.method().clone(), parts.as_slice()) {
            (Method::GET, ["v1", "status"]) => reply(StatusCode::OK, &self.status()),
            (Method::GET, ["metrics"]) => {
                let text = self.gateway_metrics.encode(&self.revisions)
                    + &self.autoscaler_metrics.encode();
                let mut r = Response::new(Full::new(Bytes::from(text)));
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                r
            }
            (Method::POST, ["v1", "apply"]) => {
                let body = match req.into_body().collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
                };
                match serde_json::from_slice::<Vec<Value>>(&body) {
                    Ok(objs) => self.apply(objs),
                    Err(e) => error(
                        StatusCode::BAD_REQUEST,
                        format!("body: must be a JSON array of objects: {e}"),
                    ),
                }
            }
            (Method::GET, ["v1", kind]) => {
                let Some(kind) = kind_of(kind) else {
                    return error(StatusCode::NOT_FOUND, format!("unknown kind {kind:?}"));
                };
                let ns = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("namespace="))
                    .filter(|n| !n.is_empty());
                match self.store.list(kind, ns) {
                    Ok(list) => reply(StatusCode::OK, &Value::Array(list)),
                    Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                }
            }
            (m @ (Method::GET | Method::DELETE), ["v1", kind, ns, name]) => {
                let Some(kind) = kind_of(kind) else {
                    return error(StatusCode::NOT_FOUND, format!("unknown kind {kind:?}"));
                };
                let result = if m == Method::GET {
                    self.store
                        .get(kind, ns, name)
                        .map(|o| o.unwrap_or(Value::Null))
                } else {
                    self.store.delete(kind, ns, name).map(Value::Array)
                };
                match result {
                    Ok(Value::Null) | Err(store::StoreError::NotFound { .. }) => error(
                        StatusCode::NOT_FOUND,
                        format!("{kind} {ns}/{name} not found"),
                    ),
                    Ok(v) => reply(StatusCode::OK, &v),
                    Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                }
            }
            _ => error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}")),
        }
    }

    /// All or nothing: every object is admitted before any is stored.
    fn apply(&self, objs: Vec<Value>) -> Response<Full<Bytes>> {
        let mut admitted = Vec::new();
        let mut errors = Vec::new();
        for obj in objs {
            match admit(obj, &self.settings) {
                Ok(v) => admitted.push(v),
                Err(e) => errors.extend(e),
            }
        }
        if !errors.is_empty() {
            return reply(
                StatusCode::UNPROCESSABLE_ENTITY,
                &json!({ "errors": errors }),
            );
        }
        let mut results = Vec::new();
        for obj in admitted {
            let kind = obj["kind"].as_str().unwrap_or_default().to_string();
            let ns = obj["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string();
            let name = obj["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let before = self.store.get(&kind, &ns, &name).ok().flatten();
            let same = before.as_ref().is_some_and(|b| {
                b.get("spec") == obj.get("spec")
                    && ["labels", "annotations"]
                        .iter()
                        .all(|k| b["metadata"].get(*k) == obj["metadata"].get(*k))
            });
            let result = if same {
                "unchanged"
            } else {
                if let Err(e) = self.store.apply(obj) {
                    return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
                }
                if before.is_none() {
                    "created"
                } else {
                    "configured"
                }
            };
            results.push(Applied {
                kind,
                namespace: ns,
                name,
                result: result.into(),
            });
        }
        reply(StatusCode::OK, &json!(results))
    }

    fn status(&self) -> Value {
        json!({
            "endpoint": self.endpoint,
            "runtime": self.runtime.backend().name(),
            "instances": self.runtime.instances(),
        })
    }
}

/// The endpoint of a running `ebb local up` for a state directory.
pub fn read_endpoint(state: &Path) -> anyhow::Result<Endpoint> {
    let path = state.join(ENDPOINT_FILE);
    let text = std::fs::read_to_string(&path).map_err(|_| {
        anyhow::anyhow!(
            "Ebb is not running for state directory {} (start it with `ebb local up`)",
            state.display()
        )
    })?;
    Ok(serde_json::from_str(&text)?)
}
