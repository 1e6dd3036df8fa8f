//! `ebb local up`: the control plane (the same reconcilers as Kubernetes mode), the autoscaler,
//! the gateway (activator) and the instance runtime in one process, over the embedded store.
//!
//! It serves the Kubernetes API for what it holds (the `apiserver` crate) on loopback, found
//! through `STATE/kubeconfig` (kubectl, kn, client-go, kube-rs and the `ebb` CLI all use it)
//! and `STATE/ebb.json`. Every request must carry the token in those files (readable only by
//! the user) and pass `apiserver::guard`'s checks.

use std::collections::BTreeMap;
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
use http::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use serving_api::Route;
use serving_api::config::{
    AutoscalerConfig, DefaultsConfig, DeploymentConfig, DomainConfig, NetworkConfig,
};
use serving_api::validation::ValidationConfig;
use serving_controller::local::{LocalConfig, settle_with};
use serving_controller::route::Programmed;
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

/// The kubeconfig `ebb local up` writes for its API (0600).
pub const KUBECONFIG_FILE: &str = "kubeconfig";

/// Local mode's status, beside the Kubernetes API.
pub const STATUS_PATH: &str = "/ebb/v1/status";

/// The Knative config maps local mode reads (`--config FILE`, the `config/core/*.yaml` format).
#[derive(Clone, Debug)]
pub struct Settings {
    pub defaults: DefaultsConfig,
    pub autoscaler: AutoscalerConfig,
    pub network: NetworkConfig,
    pub domains: DomainConfig,
    pub deployment: DeploymentConfig,
    pub gc: serving_api::config::GcConfig,
    pub features: serving_api::config::FeaturesConfig,
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
            gc: local.gc,
            features: Default::default(),
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
                "config-network" => NetworkConfig::from_map(&data).map(|mut c| {
                    // Unset, local mode's own default (LocalConfig) holds.
                    if !data.contains_key("autocreate-cluster-domain-claims") {
                        c.autocreate_cluster_domain_claims =
                            s.network.autocreate_cluster_domain_claims;
                    }
                    s.network = c
                }),
                "config-domain" => DomainConfig::from_map(&data).map(|c| s.domains = c),
                "config-deployment" => DeploymentConfig::from_map(&data).map(|c| s.deployment = c),
                "config-gc" => serving_api::config::GcConfig::from_map(&data).map(|c| s.gc = c),
                "config-features" => {
                    serving_api::config::FeaturesConfig::from_map(&data).map(|c| s.features = c)
                }
                other => {
                    errors.push(format!(
                        "config map {other:?}: not one local mode reads (config-defaults, config-autoscaler, config-network, config-domain, config-deployment, config-gc, config-features)"
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

    pub fn validation(&self) -> ValidationConfig {
        ValidationConfig {
            defaults: self.defaults.clone(),
            autoscaler: self.autoscaler.clone(),
            network: self.network.clone(),
            features: self.features.clone(),
        }
    }

    fn local(&self) -> LocalConfig {
        LocalConfig {
            network: self.network.clone(),
            domains: self.domains.clone(),
            gc: self.gc.clone(),
            features: self.features.clone(),
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
    let token = apiserver::guard::new_token()
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
    apiserver::ensure_default_namespace(&store)
        .map_err(|e| anyhow::anyhow!("{}: {e}", opts.state.join(store::STORE_FILE).display()))?;
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

    // The Kubernetes API.
    let endpoint = Endpoint {
        pid: std::process::id(),
        api: api_addr,
        gateway: gateway_addr,
        runtime: opts.backend.name().into(),
        state: opts.state.clone(),
        token: token.clone(),
    };
    let api = Arc::new(apiserver::Api {
        store: store.clone(),
        catalog: apiserver::catalog::Catalog::new(),
        admission: apiserver::admission::Admission {
            defaults: opts.settings.defaults.clone(),
            validation: opts.settings.validation(),
        },
        token: token.clone(),
        user: std::env::var("USER")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "ebb-local-user".into()),
        addr: api_addr,
        extras: Some(Arc::new(LocalExtras {
            runtime: runtime.clone(),
            revisions: revisions.clone(),
            gateway_metrics,
            autoscaler_metrics,
            endpoint: endpoint.clone(),
        })),
    });
    let tls = apiserver::tls::loopback().map_err(anyhow::Error::msg)?;
    let api_task = tokio::spawn(apiserver::serve(
        api_listener,
        api,
        Some(tls.acceptor.clone()),
        shutdown_rx.clone(),
    ));

    let kubeconfig_file = opts.state.join(KUBECONFIG_FILE);
    write_private(
        &kubeconfig_file,
        kubeconfig(api_addr, &tls.ca_pem, &token).as_bytes(),
    )
    .map_err(|e| anyhow::anyhow!("{}: {e}", kubeconfig_file.display()))?;
    let endpoint_file = opts.state.join(ENDPOINT_FILE);
    let tmp = opts.state.join(format!("{ENDPOINT_FILE}.tmp"));
    write_private(&tmp, &serde_json::to_vec_pretty(&endpoint)?)
        .map_err(|e| anyhow::anyhow!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &endpoint_file)
        .map_err(|e| anyhow::anyhow!("{}: {e}", endpoint_file.display()))?;
    println!(
        "ebb local mode: gateway http://{gateway_addr}  api https://{api_addr}  runtime {}  state {}",
        opts.backend.name(),
        opts.state.display()
    );
    println!(
        "kubectl and other Kubernetes clients: export KUBECONFIG={}",
        kubeconfig_file.display()
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

/// How often the control loop passes when nothing happens (for time-based rules such as
/// config-gc's): nothing else changes without a store event.
const AT_REST: Duration = Duration::from_secs(60);

/// Level-based: after any change in the store, at a rollout's next step, or once a minute at
/// rest, reconcile everything, let the runtime catch up with the Revisions, and republish the
/// routing table; at rest it costs next to nothing however many Services there are.
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
    // What the gateway's table was built from: a Route is Ready only once the gateway routes it
    // (so a client that saw Ready is never answered 404).
    let mut programmed = Programmed::Routes(Default::default());
    loop {
        if let Err(e) = settle_with(&store, &cfg, &now(), &programmed) {
            tracing::error!(error = %e, "reconcile");
        }
        runtime.sync();
        let list: Vec<Route> = store
            .list("Route", None)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| serde_json::from_value(v).ok())
            .collect();
        let mut table = RoutingTable::build(list.iter())
            .with_tag_header(cfg.features.on("tag-header-based-routing", None));
        // DomainMappings that hold their domain and resolve serve it as their route's host.
        for dm in store
            .list("DomainMapping", None)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| serde_json::from_value::<serving_api::DomainMapping>(v).ok())
        {
            let serves = serving_controller::domainmapping::serves(&dm) && dm.spec.tls.is_none();
            if serves && let (Some(domain), Some(ns)) = (&dm.metadata.name, &dm.metadata.namespace)
            {
                table.alias(
                    domain,
                    ns,
                    serving_controller::domainmapping::route_name(&dm),
                );
            }
        }
        mark_damaged(&store, &cfg, &mut table, &revisions, &mut broken_revisions);
        routes.send_replace(Arc::new(table));
        if let Some(tx) = synced.take() {
            let _ = tx.send(());
        }
        // A rollout in progress wakes the loop at its next step.
        let idle = list
            .iter()
            .filter_map(|r| serving_controller::rollout::Rollout::of(r)?.next_step())
            .min()
            .map_or(AT_REST, |due| {
                let wait = due.duration_since(jiff::Timestamp::now());
                Duration::try_from(wait)
                    .unwrap_or(Duration::ZERO)
                    .clamp(Duration::from_millis(50), AT_REST)
            });
        // The table now routes what the stored Routes say: another pass marks them Ready.
        let now_programmed = Programmed::of(list.iter());
        if now_programmed != programmed {
            programmed = now_programmed;
            continue;
        }

        tokio::select! {
            ev = events.recv() => {
                if let Err(tokio::sync::broadcast::error::RecvError::Closed) = ev {
                    return;
                }
                // Coalesce a burst of changes into one pass.
                while events.try_recv().is_ok() {}
            }
            _ = tokio::time::sleep(idle) => {}
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

/// Local mode's endpoints beside the Kubernetes API: Prometheus metrics of the gateway and
/// the autoscaler, and the runtime's status (`ebb local status`).
struct LocalExtras {
    runtime: Arc<Runtime>,
    revisions: Arc<Revisions>,
    gateway_metrics: Arc<activator::metrics::Metrics>,
    autoscaler_metrics: Arc<autoscaler::metrics::Metrics>,
    endpoint: Endpoint,
}

impl apiserver::Extras for LocalExtras {
    fn handle(&self, method: &Method, path: &str) -> Option<(StatusCode, &'static str, Vec<u8>)> {
        if method != Method::GET {
            return None;
        }
        match path {
            "/metrics" => {
                let text = self.gateway_metrics.encode(&self.revisions)
                    + &self.autoscaler_metrics.encode();
                Some((
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    text.into_bytes(),
                ))
            }
            STATUS_PATH => {
                let mut endpoint = serde_json::to_value(&self.endpoint).unwrap_or_default();
                if let Some(m) = endpoint.as_object_mut() {
                    m.remove("token");
                }
                let v = json!({
                    "endpoint": endpoint,
                    "runtime": self.runtime.backend().name(),
                    "instances": self.runtime.instances(),
                });
                Some((
                    StatusCode::OK,
                    "application/json",
                    v.to_string().into_bytes(),
                ))
            }
            _ => None,
        }
    }
}

/// The kubeconfig for local mode's API: context `ebb-local`, the CA that signed the API's
/// certificate, the bearer token.
pub fn kubeconfig(api: SocketAddr, ca_pem: &str, token: &str) -> String {
    let ca = apiserver::admission::base64_encode(ca_pem.as_bytes());
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: ebb-local\n  cluster:\n    server: https://{api}\n    certificate-authority-data: {ca}\ncontexts:\n- name: ebb-local\n  context:\n    cluster: ebb-local\n    user: ebb-local\n    namespace: default\ncurrent-context: ebb-local\nusers:\n- name: ebb-local\n  user:\n    token: {token}\npreferences: {{}}\n"
    )
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
