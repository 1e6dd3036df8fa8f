//! `ebb local up`: the control plane (the same reconcilers as Kubernetes mode), the autoscaler,
//! the gateway (activator) and the instance runtime in one process, over the embedded store.
//!
//! The CLI talks to it through a small HTTP API on loopback, found through `ebb.json` in the
//! state directory. The API is Ebb's own (apply, get, list, delete, status), not the Kubernetes
//! API: local mode has no RBAC, watches or field managers to serve. Every request must carry
//! the token in `ebb.json` (readable only by the user) and pass [`crate::guard`]'s checks.

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
    /// The bearer token every API request must carry (this file is readable only by its owner).
    #[serde(default)]
    pub token: String,
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
    /// Delete the store first (`--reset`).
    pub reset: bool,
}

fn now() -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now())
}

/// Run local mode until SIGINT or SIGTERM.
pub async fn up(opts: UpOptions) -> anyhow::Result<()> {
    std::fs::create_dir_all(&opts.state)
        .map_err(|e| anyhow::anyhow!("state directory {}: {e}", opts.state.display()))?;
    {
        // Services, logs and the API token live here: the user's alone.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&opts.state, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| anyhow::anyhow!("state directory {}: {e}", opts.state.display()))?;
    }
    let token = crate::guard::new_token()
        .map_err(|e| anyhow::anyhow!("cannot make the API token (/dev/urandom): {e}"))?;
    if opts.reset {
        Store::reset_dir(&opts.state)
            .map_err(|e| anyhow::anyhow!("--reset: {}: {e}", opts.state.display()))?;
        eprintln!(
            "ebb: --reset: starting with an empty store in {}",
            opts.state.display()
        );
    }
    let store = Store::open_dir(&opts.state).map_err(|e| anyhow::anyhow!("{e}"))?;
    for d in store.damaged() {
        eprintln!(
            "ebb: {}: {} {}/{} is damaged ({}); everything else is served. A Configuration, Route or Revision whose parent is whole is rebuilt from it; otherwise requests that need it are answered 500 until it is deleted (`ebb delete {} {} -n {}`) and applied again",
            opts.state.join(store::STORE_FILE).display(),
            d.kind,
            d.namespace,
            d.name,
            d.reason,
            d.kind.to_ascii_lowercase(),
            d.name,
            d.namespace
        );
    }
    let store = Arc::new(store);
    let reaped = crate::runtime::reap_orphans(&opts.state, &opts.backend);
    if reaped > 0 {
        eprintln!("stopped {reaped} instance(s) left behind by a previous ebb");
    }
    // Held until this process ends: its close wakes the reaper.
    let _reaper = start_reaper(&opts.state, &opts.backend)?;

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
        revisions.clone(),
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
            token,
        },
    });
    let api_task = tokio::spawn(serve_api(api_listener, api.clone()));

    let endpoint_file = opts.state.join(ENDPOINT_FILE);
    let tmp = opts.state.join(format!("{ENDPOINT_FILE}.tmp"));
    write_private(&tmp, &serde_json::to_vec_pretty(&api.endpoint)?)
        .map_err(|e| anyhow::anyhow!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &endpoint_file)
        .map_err(|e| anyhow::anyhow!("{}: {e}", endpoint_file.display()))?;
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

/// Start `ebb __reap` (see [`crate::runtime::reap_when_parent_ends`]); the returned pipe end
/// must live as long as this process.
fn start_reaper(state: &Path, backend: &Backend) -> anyhow::Result<std::process::ChildStdin> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe()
        .map_err(|e| anyhow::anyhow!("cannot find the ebb binary to start its reaper: {e}"))?;
    let mut child = std::process::Command::new(exe)
        .arg("--state")
        .arg(state)
        .args(["__reap", "--runtime", backend.name()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start ebb's reaper: {e}"))?;
    let pipe = child
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("ebb's reaper has no stdin"))?;
    // Reaped by a thread so that it does not linger as a zombie after it is done.
    std::thread::spawn(move || child.wait());
    Ok(pipe)
}

/// Write a file only its owner can read (0600), replacing what was there.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    // The mode given at creation is masked by the umask; this one is not.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(bytes)?;
    f.sync_all()
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
    revisions: Arc<Revisions>,
    routes: watch::Sender<Arc<RoutingTable>>,
    synced: tokio::sync::oneshot::Sender<()>,
) {
    let mut events = store.watch();
    let mut synced = Some(synced);
    let mut broken_revisions = std::collections::HashSet::new();
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
        let mut table = RoutingTable::build(list.iter());
        mark_damaged(&store, &cfg, &mut table, &revisions, &mut broken_revisions);
        routes.send_replace(Arc::new(table));
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

/// What the store could not decode is answered 500 at once, naming the record: a damaged
/// Route's host (which otherwise would be 404) and a damaged Revision (whose requests would
/// otherwise wait for instances that never come). `marked`: the revisions marked so far.
fn mark_damaged(
    store: &Store,
    cfg: &LocalConfig,
    table: &mut RoutingTable,
    revisions: &Revisions,
    marked: &mut std::collections::HashSet<(String, String)>,
) {
    let mut now_damaged = std::collections::HashSet::new();
    for d in store.damaged() {
        let why = format!(
            "{} {}/{} is damaged in the store ({}): delete it and apply it again",
            d.kind, d.namespace, d.name, d.reason
        );
        match d.kind.as_str() {
            "Route" | "Service" => {
                // The host as the route would have had it (its labels are lost with it).
                let empty = BTreeMap::new();
                let r = serving_api::naming::RouteRef {
                    name: &d.name,
                    namespace: &d.namespace,
                    labels: &empty,
                    annotations: &empty,
                };
                if let Ok(hosts) = serving_api::naming::route_hosts(&r, &cfg.network, &cfg.domains)
                {
                    table.mark_broken(&hosts.host, why.clone());
                    table.mark_broken(&hosts.cluster_local_host, why);
                }
            }
            "Revision" => {
                revisions.get(&d.namespace, &d.name).set_broken(Some(why));
                now_damaged.insert((d.namespace, d.name));
            }
            _ => {}
        }
    }
    for (ns, name) in marked.difference(&now_damaged) {
        revisions.get(ns, name).set_broken(None);
    }
    *marked = now_damaged;
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
        let has_body = req.headers().contains_key(http::header::TRANSFER_ENCODING)
            || req
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0");
        if let Err(crate::guard::Denied(status, why)) = crate::guard::check(
            req.method(),
            req.headers(),
            has_body,
            self.endpoint.api,
            &self.endpoint.token,
        ) {
            return error(status, why);
        }
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
    serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}: not what `ebb local up` writes ({e}); restart it to write the file again",
            path.display()
        )
    })
}
