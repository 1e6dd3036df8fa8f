//! Local mode's instance runtime: what the kubelet and the Deployment controller do on
//! Kubernetes. An instance is the Revision's serving container, run as a host process (or an
//! OCI container through podman), plus a real queue-proxy in front of it on its own loopback
//! ports. One supervisor task per Revision keeps the instance count at what the autoscaler
//! wants, publishes instances to the gateway (which probes them) and to the autoscaler (which
//! scrapes their stats), and writes the Revision's status.
//!
//! Instances are stopped on shutdown; each leaves a pid file so that a killed `ebb` has them
//! cleaned up at the next start (see [`reap_orphans`]).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use activator::revisions::{RevisionSettings, Revisions};
use autoscaler::collector::RevisionKey;
use autoscaler::runner::{Handle, Instance as ScrapeTarget};
use autoscaler::scaler::{ScaleError, ScaleFuture, Scaler};
use k8s_openapi::api::core::v1::Container;
use serde::Serialize;
use serving_api::Revision;
use serving_api::config::{AutoscalerConfig, DeploymentConfig};
use serving_controller::revision::{Activity, ContainerFailure, WorkloadState};
use serving_controller::workload::{QUEUE_CONTAINER, desired_deployment};
use store::Store;
use tokio::sync::{mpsc, oneshot, watch};

use crate::probes::{Check, Exec, Plan, Port, Target, Thresholds};

/// How user containers run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The container's `command`/`args` (or, without a command, the image name as a program
    /// on `PATH`) as a host process.
    Process,
    /// `podman run` of the (already local) image, on the host network.
    Podman,
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Process => "process",
            Backend::Podman => "podman",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    pub state: PathBuf,
    pub backend: Backend,
    /// How long a stopping queue-proxy waits for stragglers. Knative waits 30 s for endpoint
    /// propagation through kube-proxy; locally the gateway forgets an instance synchronously.
    pub drain_quiet: Duration,
    pub deployment: DeploymentConfig,
    pub autoscaler: AutoscalerConfig,
}

/// One instance as `ebb local status` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct InstanceInfo {
    pub namespace: String,
    pub revision: String,
    pub name: String,
    pub pid: Option<u32>,
    pub serving: Option<SocketAddr>,
    pub ready: bool,
    pub stopping: bool,
    pub log: PathBuf,
}

struct Supervisor {
    desired: watch::Sender<i32>,
    stop: watch::Sender<bool>,
    view: Arc<Mutex<Vec<InstanceInfo>>>,
    task: tokio::task::JoinHandle<()>,
}

pub struct Runtime {
    opts: Options,
    store: Arc<Store>,
    gateway: Arc<Revisions>,
    autoscaler: Handle,
    supervisors: Mutex<HashMap<RevisionKey, Supervisor>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("backend", &self.opts.backend)
            .finish()
    }
}

fn key_of(rev: &Revision) -> RevisionKey {
    RevisionKey::new(
        rev.metadata.namespace.as_deref().unwrap_or("default"),
        rev.metadata.name.as_deref().unwrap_or_default(),
    )
}

fn was_ever_ready(rev: &Revision) -> bool {
    rev.status.as_ref().is_some_and(|s| {
        serving_api::condition::status_of(
            &s.conditions,
            serving_api::revision::conditions::RESOURCES_AVAILABLE,
        ) == serving_api::condition::ConditionStatus::True
    })
}

impl Runtime {
    pub fn new(
        opts: Options,
        store: Arc<Store>,
        gateway: Arc<Revisions>,
        autoscaler: Handle,
    ) -> Arc<Runtime> {
        Arc::new(Runtime {
            opts,
            store,
            gateway,
            autoscaler,
            supervisors: Mutex::default(),
        })
    }

    pub fn backend(&self) -> &Backend {
        &self.opts.backend
    }

    /// Bring supervisors in line with the Revisions in the store: start one per new Revision,
    /// stop those whose Revision is gone.
    pub fn sync(self: &Arc<Self>) {
        let revisions: Vec<Revision> = match self.store.list("Revision", None) {
            Ok(list) => list
                .into_iter()
                .filter_map(|v| serde_json::from_value(v).ok())
                .collect(),
            Err(e) => {
                tracing::error!(error = %e, "listing revisions");
                return;
            }
        };
        let mut sups = self.supervisors.lock().unwrap_or_else(|p| p.into_inner());
        let present: Vec<RevisionKey> = revisions.iter().map(key_of).collect();
        let gone: Vec<RevisionKey> = sups
            .keys()
            .filter(|k| !present.contains(k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(s) = sups.remove(&key) {
                let _ = s.stop.send(true);
                self.autoscaler.remove(key.clone());
            }
        }
        for rev in revisions {
            let key = key_of(&rev);
            if sups.contains_key(&key) {
                continue;
            }
            match self.start_supervisor(&key, &rev) {
                Ok(s) => {
                    sups.insert(key, s);
                }
                Err(e) => tracing::error!(revision = %key.name, error = %e, "cannot run revision"),
            }
        }
    }

    fn start_supervisor(
        self: &Arc<Self>,
        key: &RevisionKey,
        rev: &Revision,
    ) -> anyhow::Result<Supervisor> {
        let annotations = rev.metadata.annotations.clone().unwrap_or_default();
        let cc = rev.spec.container_concurrency.unwrap_or(0);
        let mut scaling = serving_api::autoscaling::resolve(
            &annotations,
            cc,
            &self.opts.autoscaler,
            "metadata.annotations",
        )
        .map_err(|errs| {
            anyhow::anyhow!(
                "{}",
                errs.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        })?;
        let ever_ready = was_ever_ready(rev);
        if ever_ready {
            // Initial scale applies when a Revision is created, not when `ebb` restarts.
            scaling.initial_scale = 0;
        }
        let start_with = scaling.initial_scale.max(scaling.min_scale);
        let (_, h2c) = rev.spec.serving_port();
        self.gateway.configure(
            &key.namespace,
            &key.name,
            RevisionSettings {
                container_concurrency: usize::try_from(cc).unwrap_or(0),
                timeout: Duration::from_secs(rev.spec.timeout_seconds.unwrap_or(300).max(1) as u64),
                h2c,
            },
        );
        self.autoscaler.upsert(key.clone(), scaling);
        let lookup = StoreLookup {
            store: &self.store,
            namespace: &key.namespace,
        };
        let launch = Arc::new(Launch::from_revision(rev, &self.opts, &lookup)?);
        let (desired, desired_rx) = watch::channel(start_with);
        let (stop, stop_rx) = watch::channel(false);
        let view = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(supervise(
            self.clone(),
            key.clone(),
            launch,
            ever_ready,
            desired_rx,
            stop_rx,
            view.clone(),
        ));
        Ok(Supervisor {
            desired,
            stop,
            view,
            task,
        })
    }

    /// The autoscaler's decision for a revision.
    pub fn set_desired(&self, key: &RevisionKey, desired: i32) -> bool {
        let sups = self.supervisors.lock().unwrap_or_else(|p| p.into_inner());
        match sups.get(key) {
            Some(s) => {
                s.desired.send_replace(desired.max(0));
                true
            }
            None => false,
        }
    }

    pub fn instances(&self) -> Vec<InstanceInfo> {
        let sups = self.supervisors.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<InstanceInfo> = sups
            .values()
            .flat_map(|s| s.view.lock().map(|v| v.clone()).unwrap_or_default())
            .collect();
        all.sort_by(|a, b| {
            (&a.namespace, &a.revision, &a.name).cmp(&(&b.namespace, &b.revision, &b.name))
        });
        all
    }

    /// Stop every instance (drained) and wait for them.
    pub async fn shutdown(&self) {
        let sups: Vec<Supervisor> = {
            let mut map = self.supervisors.lock().unwrap_or_else(|p| p.into_inner());
            map.drain().map(|(_, s)| s).collect()
        };
        for s in &sups {
            let _ = s.stop.send(true);
        }
        for s in sups {
            let _ = s.task.await;
        }
    }
}

/// The autoscaler's `Scaler` in local mode: the decision goes to the revision's supervisor.
/// The runtime is bound after construction (the runtime needs the autoscaler's handle, the
/// autoscaler needs this scaler).
#[derive(Debug)]
pub struct LocalScaler(pub Arc<std::sync::OnceLock<std::sync::Weak<Runtime>>>);

impl Scaler for LocalScaler {
    fn scale<'a>(&'a self, key: &'a RevisionKey, desired: i32) -> ScaleFuture<'a> {
        Box::pin(async move {
            match self.0.get().and_then(std::sync::Weak::upgrade) {
                Some(rt) if rt.set_desired(key, desired) => Ok(()),
                _ => Err(ScaleError::NotFound(key.clone())),
            }
        })
    }
}

/// ConfigMaps and Secrets of one namespace, from the store.
struct StoreLookup<'a> {
    store: &'a Store,
    namespace: &'a str,
}

impl crate::resolve::Lookup for StoreLookup<'_> {
    fn get(&self, kind: &str, name: &str) -> Option<serde_json::Value> {
        self.store.get(kind, self.namespace, name).ok().flatten()
    }
}

/// Where a volume mount's content comes from.
#[derive(Debug, Clone)]
enum MountSource {
    /// Files made when the revision started (configMap, secret, projected).
    Dir(PathBuf),
    /// An emptyDir: a directory per instance (`size`: a tmpfs of that many bytes instead, which
    /// enforces `sizeLimit`; `memory`: `medium: Memory`).
    Empty {
        volume: String,
        memory: bool,
        size: Option<u64>,
    },
}

/// A container's volume mount, made concrete.
#[derive(Debug, Clone)]
struct Mount {
    source: MountSource,
    destination: String,
    sub_path: Option<String>,
    read_only: bool,
}

/// Another container of the pod (a sidecar), run with podman in the serving container's network
/// namespace: started after it, stopped after it, its exit ends the instance.
#[derive(Debug, Clone)]
struct Sidecar {
    name: String,
    image: String,
    command: Vec<String>,
    args: Vec<String>,
    env: Vec<(String, crate::resolve::EnvValue)>,
    workdir: Option<String>,
    mounts: Vec<Mount>,
    podman_args: Vec<String>,
    non_root_image: bool,
    pull_policy: String,
    pinned: Option<String>,
}

/// One container of an instance as `podman run` starts it.
struct PodmanContainer<'a> {
    /// `ebb-{instance}` for the serving container, `ebb-{instance}-{name}` for a sidecar.
    name: String,
    image: &'a str,
    command: &'a [String],
    args: &'a [String],
    workdir: Option<&'a str>,
    mounts: &'a [Mount],
    podman_args: &'a [String],
    /// The network: the instance's own (with published ports), or the serving container's.
    network: String,
}

/// Everything needed to start an instance of a revision, derived once from the same
/// Deployment the Kubernetes backend would create, so both run the same env and probe.
#[derive(Debug)]
struct Launch {
    revision: String,
    image: String,
    /// What runs as a host process: command + args (or the image name + args).
    program: Vec<String>,
    /// For podman: the image's entrypoint override and arguments, as Kubernetes defines them.
    command: Vec<String>,
    args: Vec<String>,
    env: Vec<(String, crate::resolve::EnvValue)>,
    workdir: Option<String>,
    mounts: Vec<Mount>,
    /// Where this revision's volumes and its instances' emptyDirs live.
    volumes: PathBuf,
    /// podman's flags for the securityContext and resources.
    podman_args: Vec<String>,
    /// runAsNonRoot with the image's own user: the image must not run as root.
    non_root_image: bool,
    /// The `setpriv` prefix a host process (and its exec probes) runs under.
    wrapper: Vec<String>,
    /// The serving container's name (its image's status entry).
    container: String,
    /// `imagePullPolicy`, defaulted as Kubernetes does.
    pull_policy: String,
    /// A podman auth file from the pod's `imagePullSecrets`.
    auth_file: Option<PathBuf>,
    /// The image pinned to its digest when the revision was created (from its status).
    pinned: Option<String>,
    /// The pod's other containers (podman only).
    sidecars: Vec<Sidecar>,
    /// The queue-proxy's variables, ports left to the OS.
    queue_env: HashMap<String, String>,
    /// The serving container's declared port: its `PORT` in its own network namespace (podman).
    declared_port: u16,
    /// Other container ports probes reach (published too, with podman).
    probe_ports: Vec<u16>,
    /// How long the user process gets after SIGTERM.
    grace: Duration,
    logs: PathBuf,
    pids: PathBuf,
    backend: Backend,
    drain_quiet: Duration,
    progress_deadline: Duration,
    /// A problem that prevents any instance from starting (reported as the container's).
    config_error: Option<ContainerFailure>,
    /// Readiness the queue-proxy cannot check itself (exec, grpc), run here.
    readiness: Option<Plan>,
    liveness: Option<Plan>,
    startup: Option<Plan>,
}

/// Literal values only (the queue-proxy's environment, which Ebb writes itself).
fn literal_env(c: &Container) -> (Vec<(String, String)>, Vec<String>) {
    let mut env = Vec::new();
    let mut unsupported = Vec::new();
    for e in c.env.iter().flatten() {
        match (&e.value, &e.value_from) {
            (_, Some(from)) if from.field_ref.is_none() => unsupported.push(e.name.clone()),
            (_, Some(_)) => {}
            (v, None) => env.push((e.name.clone(), v.clone().unwrap_or_default())),
        }
    }
    (env, unsupported)
}

impl Sidecar {
    /// The sidecar at `spec.containers[i]`: `c` as the Deployment has it, `written` as the user
    /// wrote it. What local mode cannot honour for it fails the revision naming the field.
    #[allow(clippy::too_many_arguments)] // one call site; the pieces are the pod's
    fn of(
        i: usize,
        c: &Container,
        written: &Container,
        pod: &k8s_openapi::api::core::v1::PodSpec,
        pod_facts: &crate::resolve::Pod<'_>,
        lookup: &dyn crate::resolve::Lookup,
        opts: &Options,
        namespace: &str,
        volumes_dir: &Path,
        status: Option<&serving_api::revision::RevisionStatus>,
    ) -> Result<Sidecar, ContainerFailure> {
        let field = format!("spec.containers[{i}]");
        let config = |message: String| ContainerFailure {
            reason: "CreateContainerConfigError".into(),
            message,
        };
        if opts.backend != Backend::Podman {
            return Err(config(format!(
                "{field} ({}): sidecars share the serving container's network namespace, which host processes do not have; run ebb with --runtime podman",
                c.name
            )));
        }
        // Knative runs sidecars' probes only with its multi-container-probing feature.
        for (probe, set) in [
            ("readinessProbe", written.readiness_probe.is_some()),
            ("livenessProbe", written.liveness_probe.is_some()),
            ("startupProbe", written.startup_probe.is_some()),
        ] {
            if set {
                return Err(config(format!(
                    "{field}.{probe} ({}): probes of sidecar containers are not run in local mode (Knative runs them only with multi-container-probing); probe the serving container",
                    c.name
                )));
            }
        }
        crate::security::fits(c, &field).map_err(|message| ContainerFailure {
            reason: "Unschedulable".into(),
            message,
        })?;
        let env = crate::resolve::env(c, pod_facts, lookup, &field)?;
        let (mounts, mount_error) = mounts(c, pod, opts, lookup, namespace, volumes_dir, &field);
        if let Some(f) = mount_error {
            return Err(f);
        }
        let security = crate::security::effective(pod, c, &field);
        let podman_args = crate::security::podman_args(&security, c, &field).map_err(config)?;
        let image = image_of(c);
        Ok(Sidecar {
            name: c.name.clone(),
            pull_policy: c
                .image_pull_policy
                .clone()
                .unwrap_or_else(|| default_pull_policy(&image)),
            pinned: status
                .and_then(|s| s.container_statuses.iter().find(|x| x.name == c.name))
                .map(|x| x.image_digest.clone())
                .filter(|d| !d.is_empty()),
            image,
            command: c.command.clone().unwrap_or_default(),
            args: c.args.clone().unwrap_or_default(),
            env,
            workdir: c.working_dir.clone(),
            mounts,
            podman_args,
            non_root_image: security.run_as_non_root && security.run_as_user.is_none(),
        })
    }
}

impl Launch {
    fn from_revision(
        rev: &Revision,
        opts: &Options,
        lookup: &dyn crate::resolve::Lookup,
    ) -> anyhow::Result<Launch> {
        let deployment = desired_deployment(rev, &opts.deployment, None)?;
        let pod = deployment
            .spec
            .and_then(|s| s.template.spec)
            .ok_or_else(|| anyhow::anyhow!("revision has no pod"))?;
        let serving = rev
            .spec
            .serving_container_index()
            .ok_or_else(|| anyhow::anyhow!("revision has no containers"))?;
        let user = pod
            .containers
            .get(serving)
            .ok_or_else(|| anyhow::anyhow!("revision has no serving container"))?;
        let queue = pod
            .containers
            .iter()
            .find(|c| c.name == QUEUE_CONTAINER)
            .ok_or_else(|| anyhow::anyhow!("no queue-proxy container"))?;
        let (declared_port, _) = rev.spec.serving_port();
        let namespace = rev
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let revision = rev.metadata.name.clone().unwrap_or_default();
        let field = format!("spec.containers[{serving}]");
        let pod_facts = crate::resolve::Pod {
            namespace: &namespace,
            labels: rev.metadata.labels.clone().unwrap_or_default(),
            annotations: rev.metadata.annotations.clone().unwrap_or_default(),
            service_account: pod
                .service_account_name
                .clone()
                .unwrap_or_else(|| "default".into()),
        };
        let mut config_error = None;
        // Environment and volumes, resolved now: the revision keeps them (as a running pod does).
        let env = match crate::resolve::env(user, &pod_facts, lookup, &field) {
            Ok(env) => env,
            Err(f) => {
                config_error = Some(f);
                Vec::new()
            }
        };
        let volumes_dir = opts.state.join("volumes").join(&namespace).join(&revision);
        let (mounts, mount_error) =
            mounts(user, &pod, opts, lookup, &namespace, &volumes_dir, &field);
        if let Some(f) = mount_error {
            config_error.get_or_insert(f);
        }
        let image = user.image.clone().unwrap_or_default();
        let command = user.command.clone().unwrap_or_default();
        let args = user.args.clone().unwrap_or_default();
        let program: Vec<String> = if command.is_empty() {
            std::iter::once(image.clone()).chain(args.clone()).collect()
        } else {
            command.iter().chain(&args).cloned().collect()
        };
        let config = |message: String| ContainerFailure {
            reason: "CreateContainerConfigError".into(),
            message,
        };
        // What config-features may let through but one machine cannot honour (the pod's
        // securityContext is the security module's).
        let unhonoured = serving_api::validation::gated_pod_fields(&rev.spec.pod)
            .into_iter()
            .map(|(field, _)| field)
            .chain(
                rev.spec
                    .pod
                    .resource_claims
                    .as_ref()
                    .is_some_and(|v| !v.is_empty())
                    .then_some("resourceClaims"),
            )
            .find(|field| *field != "securityContext");
        if let Some(field) = unhonoured {
            config_error.get_or_insert(config(format!(
                "spec.{field}: local mode runs instances on one machine without a scheduler and does not honour it; run the Service on a cluster"
            )));
        }
        let mut sidecars = Vec::new();
        for (i, c) in rev.spec.pod.containers.iter().enumerate() {
            if i == serving {
                continue;
            }
            match Sidecar::of(
                i,
                pod.containers
                    .iter()
                    .find(|d| d.name == c.name)
                    .unwrap_or(c),
                c,
                &pod,
                &pod_facts,
                lookup,
                opts,
                &namespace,
                &volumes_dir,
                rev.status.as_ref(),
            ) {
                Ok(sidecar) => sidecars.push(sidecar),
                Err(f) => {
                    config_error.get_or_insert(f);
                }
            }
        }
        // A tmpfs emptyDir (medium Memory, or a sizeLimit) is mounted per container: shared
        // by two containers, each would see its own.
        let tmpfs = |m: &Mount| match &m.source {
            MountSource::Empty {
                volume,
                memory,
                size,
            } if *memory || size.is_some() => Some(volume.clone()),
            _ => None,
        };
        let mut tmpfs_users: BTreeMap<String, usize> = BTreeMap::new();
        for volume in mounts.iter().filter_map(tmpfs).chain(
            sidecars
                .iter()
                .flat_map(|s| s.mounts.iter().filter_map(tmpfs)),
        ) {
            *tmpfs_users.entry(volume).or_default() += 1;
        }
        if let Some((volume, _)) = tmpfs_users.iter().find(|(_, n)| **n > 1) {
            config_error.get_or_insert(config(format!(
                "spec.volumes ({volume}): an emptyDir with medium Memory or a sizeLimit is a tmpfs per container locally, so containers cannot share it; drop medium and sizeLimit to share a directory"
            )));
        }
        if let Err(e) = crate::security::fits(user, &field) {
            config_error.get_or_insert(ContainerFailure {
                reason: "Unschedulable".into(),
                message: e,
            });
        }
        let security = crate::security::effective(&pod, user, &field);
        let (wrapper, podman_args) = match opts.backend {
            Backend::Process => {
                match crate::security::process_wrapper(
                    &security,
                    user,
                    nix::unistd::getuid().as_raw(),
                    &field,
                ) {
                    Ok(w) => (w, Vec::new()),
                    Err(e) => {
                        config_error.get_or_insert(config(e));
                        (Vec::new(), Vec::new())
                    }
                }
            }
            Backend::Podman => match crate::security::podman_args(&security, user, &field) {
                Ok(a) => (Vec::new(), a),
                Err(e) => {
                    config_error.get_or_insert(config(e));
                    (Vec::new(), Vec::new())
                }
            },
        };
        // Images: the pull policy, credentials, and the digest pinned at creation.
        let pull_policy = user
            .image_pull_policy
            .clone()
            .unwrap_or_else(|| default_pull_policy(&image_of(user)));
        let pinned = rev
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.iter().find(|c| c.name == user.name))
            .map(|c| c.image_digest.clone())
            .filter(|d| !d.is_empty());
        let auth_file = if opts.backend == Backend::Podman {
            match pull_auth(
                &pod,
                lookup,
                &namespace,
                &opts
                    .state
                    .join("auth")
                    .join(format!("{namespace}-{revision}.json")),
            ) {
                Ok(f) => f,
                Err(e) => {
                    config_error.get_or_insert(config(e));
                    None
                }
            }
        } else {
            None
        };
        // runAsNonRoot without runAsUser depends on the image's user: checked when it runs.
        let non_root_image = security.run_as_non_root && security.run_as_user.is_none();
        let program: Vec<String> = wrapper.iter().cloned().chain(program).collect();
        if opts.backend == Backend::Process && program.is_empty() {
            config_error = Some(ContainerFailure {
                reason: "CreateContainerConfigError".into(),
                message: "the process runtime needs a command or an image naming a program".into(),
            });
        }
        let mut queue_env: HashMap<String, String> = literal_env(queue).0.into_iter().collect();
        for k in [
            "QUEUE_SERVING_PORT",
            "QUEUE_ADMIN_PORT",
            "QUEUE_METRICS_PORT",
            "USER_METRICS_PORT",
        ] {
            queue_env.insert(k.into(), "0".into());
        }
        queue_env.insert("QUEUE_BIND_ADDRESS".into(), "127.0.0.1".into());
        // Tracing reaches the queue-proxies as it reaches the gateway: from ebb's environment.
        if let Ok(endpoint) = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
            && !endpoint.is_empty()
        {
            queue_env.insert("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint);
        }
        queue_env.insert(
            "DRAIN_QUIET_PERIOD".into(),
            format!("{}ms", opts.drain_quiet.as_millis()),
        );
        // The probe names the declared port; locally each instance gets its own (port 0 in a
        // probe means the user port).
        if let Some(probe) = queue_env.get("SERVING_READINESS_PROBE").cloned()
            && let Ok(mut p) = serde_json::from_str::<serde_json::Value>(&probe)
        {
            for kind in ["httpGet", "tcpSocket", "grpc"] {
                if p[kind]["port"].as_i64() == Some(i64::from(declared_port)) {
                    p[kind]["port"] = 0.into();
                }
            }
            queue_env.insert("SERVING_READINESS_PROBE".into(), p.to_string());
        }
        // Probes: httpGet/tcpSocket readiness is the queue-proxy's; the rest runs here.
        let mut probe = |p: Option<&k8s_openapi::api::core::v1::Probe>,
                         field: &str,
                         readiness: bool| {
            let plan = Plan::of(
                p?,
                user,
                declared_port,
                &format!("spec.containers[{serving}].{field}"),
            );
            match plan {
                Ok(plan) if readiness && matches!(plan.check, Check::Http { .. } | Check::Tcp) => {
                    None
                }
                Ok(plan) => Some(plan),
                Err(e) => {
                    config_error.get_or_insert(ContainerFailure {
                        reason: "CreateContainerConfigError".into(),
                        message: e,
                    });
                    None
                }
            }
        };
        let original = rev.spec.pod.containers.get(serving);
        let readiness = probe(
            original.and_then(|c| c.readiness_probe.as_ref()),
            "readinessProbe",
            true,
        );
        let liveness = probe(user.liveness_probe.as_ref(), "livenessProbe", false);
        let startup = probe(user.startup_probe.as_ref(), "startupProbe", false);
        // Ports other than the declared one that a probe (ours or the queue-proxy's) reaches.
        let mut probe_ports: Vec<u16> = [&readiness, &liveness, &startup]
            .into_iter()
            .flatten()
            .filter_map(|p| match p.port {
                Port::Fixed(n) => Some(n),
                Port::Instance => None,
            })
            .collect();
        if let Some(p) = queue_env
            .get("SERVING_READINESS_PROBE")
            .and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok())
        {
            for kind in ["httpGet", "tcpSocket", "grpc"] {
                if let Some(n) = p[kind]["port"].as_u64().and_then(|n| u16::try_from(n).ok())
                    && n != 0
                {
                    probe_ports.push(n);
                }
            }
        }
        probe_ports.sort_unstable();
        probe_ports.dedup();
        let grace = Duration::from_secs(
            pod.termination_grace_period_seconds
                .unwrap_or(30)
                .clamp(1, 30) as u64,
        );
        Ok(Launch {
            logs: opts.state.join("logs").join(&namespace).join(&revision),
            pids: opts.state.join("instances"),

            revision,
            image,
            program,
            command,
            args,
            env,
            workdir: user.working_dir.clone(),
            mounts,
            volumes: volumes_dir,
            podman_args,
            non_root_image,
            wrapper,
            container: user.name.clone(),
            pull_policy,
            auth_file,
            pinned,
            sidecars,
            queue_env,
            declared_port: u16::try_from(declared_port).unwrap_or(8080),
            probe_ports,
            grace,
            backend: opts.backend.clone(),
            drain_quiet: opts.drain_quiet,
            progress_deadline: opts.deployment.progress_deadline,
            config_error,
            readiness,
            liveness,
            startup,
        })
    }
}

enum Event {
    Started {
        id: String,
        serving: SocketAddr,
        stats: SocketAddr,
        pid: Option<u32>,
    },
    Ready(String),
    /// A ready instance's readiness probe failed: it leaves the gateway until it recovers.
    Unready(String),
    Exited {
        id: String,
        failure: Option<ContainerFailure>,
    },
}

struct Running {
    id: String,
    serving: Option<SocketAddr>,
    stats: Option<SocketAddr>,
    pid: Option<u32>,
    ready: bool,
    /// Ready at some point: from then on, only while ready does it get requests.
    was_ready: bool,
    stop: Option<oneshot::Sender<()>>,
    started: Instant,
}

impl Running {
    fn stopping(&self) -> bool {
        self.stop.is_none()
    }
}

fn instance_id(revision: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let suffix: String = (0..5)
        .map(|_| char::from(ALPHABET[fastrand::usize(..ALPHABET.len())]))
        .collect();
    format!("{revision}-{suffix}")
}

#[allow(clippy::too_many_arguments)]
async fn supervise(
    rt: Arc<Runtime>,
    key: RevisionKey,
    launch: Arc<Launch>,
    mut ever_ready: bool,
    mut desired_rx: watch::Receiver<i32>,
    mut stop_rx: watch::Receiver<bool>,
    view: Arc<Mutex<Vec<InstanceInfo>>>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    let mut running: Vec<Running> = Vec::new();
    let mut failure: Option<ContainerFailure> = launch.config_error.clone();
    let mut crashes: u32 = 0;
    let mut backoff_until: Option<tokio::time::Instant> = None;
    let created = Instant::now();
    let mut status_tick = tokio::time::interval(Duration::from_secs(1));
    let mut published: Option<(Vec<SocketAddr>, Vec<ScrapeTarget>)> = None;
    // The image instances run: the process runtime's program, or podman's image pinned to its
    // digest once pulled.
    // The images instances run, the serving container's first: the process runtime's program,
    // or podman's images pinned to their digests once pulled.
    let mut images: Option<Vec<String>> = match launch.backend {
        Backend::Process => Some(vec![launch.image.clone()]),
        Backend::Podman => None,
    };
    type Pulled = Result<Vec<String>, (String, String)>;
    let mut pulling: Option<tokio::task::JoinHandle<Pulled>> = None;
    let mut pull_failures: u32 = 0;
    let mut digests: Vec<serving_api::revision::ContainerStatus> = Vec::new();
    let mut last_written: Option<(WorkloadState, Instant)> = None;
    loop {
        let stopping_all = *stop_rx.borrow();
        let want = if stopping_all {
            0
        } else {
            usize::try_from(*desired_rx.borrow()).unwrap_or(0)
        };
        let live = running.iter().filter(|r| !r.stopping()).count();
        let backed_off = backoff_until.is_none_or(|t| tokio::time::Instant::now() >= t);
        // The image is resolved (pulled per its policy, pinned to its digest) once, when the
        // revision first runs, whatever its scale — as Knative resolves digests at creation.
        if images.is_none() && pulling.is_none() && launch.config_error.is_none() && backed_off {
            let wanted: Vec<(String, String)> = std::iter::once((
                launch
                    .pinned
                    .clone()
                    .unwrap_or_else(|| launch.image.clone()),
                launch.pull_policy.clone(),
            ))
            .chain(launch.sidecars.iter().map(|s| {
                (
                    s.pinned.clone().unwrap_or_else(|| s.image.clone()),
                    s.pull_policy.clone(),
                )
            }))
            .collect();
            let auth = launch.auth_file.clone();
            pulling = Some(tokio::task::spawn_blocking(move || {
                wanted
                    .iter()
                    .map(|(reference, policy)| pull_and_pin(reference, policy, auth.as_deref()))
                    .collect()
            }));
        }
        let may_start = launch.config_error.is_none() && images.is_some() && backed_off;
        if live < want && may_start {
            for _ in live..want {
                let id = instance_id(&launch.revision);
                let (stop, stop_rx) = oneshot::channel();
                running.push(Running {
                    id: id.clone(),
                    serving: None,
                    stats: None,
                    pid: None,
                    ready: false,
                    was_ready: false,
                    stop: Some(stop),
                    started: Instant::now(),
                });
                tokio::spawn(run_instance(
                    launch.clone(),
                    id,
                    images.clone().unwrap_or_default(),
                    tx.clone(),
                    stop_rx,
                ));
            }
        } else if live > want {
            // Not-ready instances go first, then the newest (as a ReplicaSet scales down).
            let mut victims: Vec<usize> = (0..running.len())
                .filter(|i| !running[*i].stopping())
                .collect();
            victims.sort_by_key(|i| (running[*i].ready, std::cmp::Reverse(running[*i].started)));
            for i in victims.into_iter().take(live - want) {
                if let Some(stop) = running[i].stop.take() {
                    let _ = stop.send(());
                }
            }
        }
        if stopping_all && running.is_empty() {
            rt.gateway.announce(&key.namespace, &key.name, &[]);
            if let Ok(mut v) = view.lock() {
                v.clear();
            }
            return;
        }

        // Publish: every live instance to the gateway (it probes them itself and uses each
        // as soon as it answers), ready ones to the autoscaler's scraper.
        let serving: Vec<SocketAddr> = running
            .iter()
            .filter(|r| !r.stopping() && (r.ready || !r.was_ready))
            .filter_map(|r| r.serving)
            .collect();
        let targets: Vec<ScrapeTarget> = running
            .iter()
            .filter(|r| r.ready && !r.stopping())
            .filter_map(|r| {
                r.stats.map(|stats| ScrapeTarget {
                    name: r.id.clone(),
                    stats,
                })
            })
            .collect();
        if published.as_ref() != Some(&(serving.clone(), targets.clone())) {
            rt.gateway.announce(&key.namespace, &key.name, &serving);
            rt.autoscaler.instances(key.clone(), targets.clone());
            published = Some((serving, targets));
        }
        if let Ok(mut v) = view.lock() {
            *v = running
                .iter()
                .map(|r| InstanceInfo {
                    namespace: key.namespace.clone(),
                    revision: key.name.clone(),
                    name: r.id.clone(),
                    pid: r.pid,
                    serving: r.serving,
                    ready: r.ready,
                    stopping: r.stopping(),
                    log: launch.logs.join(format!("{}.log", r.id)),
                })
                .collect();
        }
        if !stopping_all {
            let ready = running.iter().filter(|r| r.ready && !r.stopping()).count();
            let queued = rt.gateway.get(&key.namespace, &key.name).throttler.queued() > 0;
            let workload = WorkloadState {
                exists: true,
                ready_replicas: ready as i32,
                desired_replicas: want as i32,
                progress_deadline_exceeded: !ever_ready
                    && created.elapsed() > launch.progress_deadline,
                failure: failure.clone(),
                activity: if ready > 0 {
                    Activity::Active
                } else if want == 0 {
                    Activity::Idle
                } else {
                    Activity::Activating { queued }
                },
                waiting: pulling
                    .as_ref()
                    .map(|_| format!("Pulling image {:?}", launch.image)),
                image_digests: digests.clone(),
            };
            // Written when it changed (or once a minute, should the stored status have been
            // replaced): reading and decoding the revision every second for every revision
            // would cost at rest in proportion to the revisions.
            let due = last_written
                .as_ref()
                .is_none_or(|(w, at): &(WorkloadState, Instant)| {
                    *w != workload || at.elapsed() >= Duration::from_secs(60)
                });
            if due {
                write_status(&rt.store, &key, &workload);
                last_written = Some((workload, Instant::now()));
            }
        }

        let backoff = async {
            match backoff_until {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        let pulled = async {
            match pulling.as_mut() {
                Some(p) => p.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            done = pulled => {
                pulling = None;
                match done {
                    Ok(Ok(references)) => {
                        if launch.backend == Backend::Podman {
                            digests = std::iter::once(&launch.container)
                                .chain(launch.sidecars.iter().map(|s| &s.name))
                                .zip(&references)
                                .map(|(name, reference)| serving_api::revision::ContainerStatus {
                                    name: name.clone(),
                                    image_digest: reference.clone(),
                                })
                                .collect();
                        }
                        images = Some(references);
                        pull_failures = 0;
                        if failure.as_ref().is_some_and(|f| f.reason.contains("Image")) {
                            failure = None;
                        }
                    }
                    Ok(Err((reason, message))) => {
                        pull_failures += 1;
                        let reason = if pull_failures > 1 && reason == "ErrImagePull" { "ImagePullBackOff".to_string() } else { reason };
                        failure = Some(ContainerFailure { reason, message });
                        let delay = Duration::from_millis(500)
                            .saturating_mul(1 << pull_failures.min(6))
                            .min(Duration::from_secs(30));
                        backoff_until = Some(tokio::time::Instant::now() + delay);
                    }
                    Err(e) => {
                        failure = Some(ContainerFailure { reason: "ErrImagePull".into(), message: e.to_string() });
                    }
                }
            }
            _ = desired_rx.changed() => {}
            _ = stop_rx.changed() => {}
            _ = status_tick.tick() => {}
            _ = backoff => { backoff_until = None; }
            ev = rx.recv() => match ev {
                None => return,
                Some(Event::Started { id, serving, stats, pid }) => {
                    if let Some(r) = running.iter_mut().find(|r| r.id == id) {
                        r.serving = Some(serving);
                        r.stats = Some(stats);
                        r.pid = pid;
                    }
                }
                Some(Event::Unready(id)) => {
                    if let Some(r) = running.iter_mut().find(|r| r.id == id) {
                        r.ready = false;
                    }
                }
                Some(Event::Ready(id)) => {
                    if let Some(r) = running.iter_mut().find(|r| r.id == id) {
                        r.ready = true;
                        r.was_ready = true;
                        if let Some(addr) = r.serving.filter(|_| r.stop.is_some()) {
                            rt.gateway.confirm(&key.namespace, &key.name, addr);
                        }
                        ever_ready = true;
                        crashes = 0;
                        failure = None;
                    }
                }
                Some(Event::Exited { id, failure: f }) => {
                    running.retain(|r| r.id != id);
                    if let Some(f) = f {
                        tracing::warn!(instance = %id, reason = %f.reason, "instance failed");
                        crashes += 1;
                        let delay = Duration::from_millis(500)
                            .saturating_mul(1 << crashes.min(6))
                            .min(Duration::from_secs(30));
                        backoff_until = Some(tokio::time::Instant::now() + delay);
                        failure = Some(f);
                    }
                }
            }
        }
    }
}

fn write_status(store: &Store, key: &RevisionKey, workload: &WorkloadState) {
    for _ in 0..3 {
        let Ok(Some(v)) = store.get("Revision", &key.namespace, &key.name) else {
            return;
        };
        let Ok(rev) = serde_json::from_value::<Revision>(v) else {
            return;
        };
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now());
        match serving_controller::local::write_revision_status(store, &rev, workload, &now) {
            Ok(_) => return,
            Err(serving_controller::local::ReconcileError::Store(
                store::StoreError::Conflict { .. },
            )) => continue,
            Err(e) => {
                tracing::warn!(revision = %key.name, error = %e, "writing revision status");
                return;
            }
        }
    }
}

/// The last lines of an instance's log, for a failure message.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let start = text.len().saturating_sub(800);
    let tail = String::from_utf8_lossy(&text[start..]);
    let lines: Vec<&str> = tail.lines().rev().take(5).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// A free loopback port for an instance to listen on, chosen below the kernel's ephemeral range:
/// a port from that range, free when we look, may be taken by any outgoing connection before
/// the app binds it (the app then fails with EADDRINUSE); below it only another listener can.
fn free_port() -> std::io::Result<u16> {
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if ephemeral_start > 11_000 {
        for _ in 0..64 {
            let port = fastrand::u16(10_000..ephemeral_start);
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Start time of a process (field 22 of /proc/PID/stat), to tell it from a recycled pid.
fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(19).map(str::to_string)
}

fn signal_group(pid: u32, sig: nix::sys::signal::Signal) {
    if let Ok(p) = i32::try_from(pid) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(p), sig);
    }
}

/// Kill instances a previous `ebb` left behind (it was killed before it could stop them).
/// Returns how many were found running.
pub fn reap_orphans(state: &Path, backend: &Backend) -> usize {
    let mut reaped = 0;
    let dir = state.join("instances");
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let mut parts = text.split_whitespace();
        if let (Some(pid), Some(started)) = (
            parts.next().and_then(|p| p.parse::<u32>().ok()),
            parts.next(),
        ) && start_time(pid).as_deref() == Some(started)
        {
            signal_group(pid, nix::sys::signal::Signal::SIGKILL);
            reaped += 1;
        }
        let _ = std::fs::remove_file(&path);
    }
    if *backend == Backend::Podman {
        // Containers outlive a killed `podman run` client.
        if let Ok(out) = std::process::Command::new("podman")
            .args(["ps", "-aq", "--filter"])
            .arg(format!("label={}", state_label(state)))
            .output()
        {
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_string)
                .collect();
            if !ids.is_empty() {
                reaped += ids.len();
                let _ = std::process::Command::new("podman")
                    .args(["rm", "-f"])
                    .args(&ids)
                    .output();
            }
        }
    }
    reaped
}

/// The podman label naming the state directory whose ebb runs a container.
fn state_label(state: &Path) -> String {
    format!("dev.ebb.state={}", state.display())
}

/// Wait for `ebb local up` to end, however it ends, then stop what it left running.
///
/// `ebb local up` starts this (as `ebb __reap`, in its own process group so that a terminal's
/// Ctrl-C does not reach it) with a pipe on its stdin, whose other end only `ebb` holds. The
/// kernel closes that end when `ebb` exits — even on SIGKILL, when `ebb` itself can stop
/// nothing — and the read here returns. Then every instance recorded in the state directory
/// and every container labelled with it is killed. After a clean stop there is nothing left
/// to kill.
pub fn reap_when_parent_ends(state: &Path, backend: &Backend) -> usize {
    use std::io::Read;
    let mut sink = [0u8; 64];
    let mut stdin = std::io::stdin();
    while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
    reap_orphans(state, backend)
}

/// Podman's global flags: `EBB_PODMAN_GLOBAL_ARGS` (whitespace-separated) when set, else runc
/// with cgroupfs, which works where crun fails on hybrid cgroup layouts.
pub fn podman_global_args() -> Vec<String> {
    match std::env::var("EBB_PODMAN_GLOBAL_ARGS") {
        Ok(v) => v.split_whitespace().map(str::to_string).collect(),
        Err(_) => vec![
            "--runtime".into(),
            "runc".into(),
            "--cgroup-manager=cgroupfs".into(),
        ],
    }
}

/// Podman's flags that work on these machines (runc, cgroupfs, explicit ulimits), then one
/// container of the instance: the serving one in a network namespace of its own (podman's
/// default network, as a pod has; the ports the queue-proxy and the probes reach published on
/// loopback only), a sidecar in the serving container's.
fn podman_command(
    launch: &Launch,
    id: &str,
    c: &PodmanContainer<'_>,
    env: &BTreeMap<String, String>,
    ports: &[(u16, u16)],
) -> Result<tokio::process::Command, String> {
    let mut cmd = tokio::process::Command::new("podman");
    cmd.args(podman_global_args());
    cmd.args(["run", "--rm", "--replace", "--network", &c.network]);
    for (inside, host) in ports {
        cmd.arg("--publish")
            .arg(format!("127.0.0.1:{host}:{inside}"));
    }
    cmd.args([
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        "--pull",
        "never",
        "--label",
        "dev.ebb.instance=1",
        "--label",
    ]);
    // Which state directory's ebb owns it: reaping takes only its own.
    cmd.arg(state_label(launch.pids.parent().unwrap_or(&launch.pids)));
    cmd.arg("--name");
    cmd.arg(&c.name);
    for (k, v) in env {
        cmd.arg("-e").arg(format!("{k}={v}"));
    }
    if let Some(dir) = c.workdir {
        cmd.arg("--workdir").arg(dir);
    }
    cmd.args(c.podman_args);
    for m in c.mounts {
        let host = |base: PathBuf| match &m.sub_path {
            Some(sub) => base.join(sub),
            None => base,
        };
        let mode = if m.read_only { "ro" } else { "rw" };
        match &m.source {
            MountSource::Dir(dir) => {
                cmd.arg("-v").arg(format!(
                    "{}:{}:{mode}",
                    host(dir.clone()).display(),
                    m.destination
                ));
            }
            MountSource::Empty {
                memory, size: None, ..
            } if *memory => {
                cmd.arg("--mount")
                    .arg(format!("type=tmpfs,destination={}", m.destination));
            }
            // sizeLimit: a tmpfs of that size enforces it (a write past it fails with ENOSPC
            // where the kubelet would evict the pod).
            MountSource::Empty {
                size: Some(size), ..
            } => {
                cmd.arg("--mount").arg(format!(
                    "type=tmpfs,destination={},tmpfs-size={size}",
                    m.destination
                ));
            }
            MountSource::Empty { volume, .. } => {
                let dir = launch.volumes.join("instances").join(id).join(volume);
                std::fs::create_dir_all(&dir)
                    .map_err(|e| format!("emptyDir {volume}: {}: {e}", dir.display()))?;
                cmd.arg("-v")
                    .arg(format!("{}:{}:{mode}", host(dir).display(), m.destination));
            }
        }
    }
    if !c.command.is_empty() {
        // The JSON form keeps every element of `command` as one argument.
        cmd.arg("--entrypoint")
            .arg(serde_json::Value::from(c.command.to_vec()).to_string());
    }
    cmd.arg(c.image);
    cmd.args(c.args);
    Ok(cmd)
}

/// The podman network instances join: `EBB_PODMAN_NETWORK` (a network's name), else podman's
/// default bridge. Modes without a network namespace of the instance's own are refused: there
/// the app would listen on its declared port on the host, and two instances would collide.
fn podman_network() -> Result<String, String> {
    let network = std::env::var("EBB_PODMAN_NETWORK")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "bridge".into());
    let mode = network.split(':').next().unwrap_or_default();
    if matches!(mode, "host" | "none" | "container" | "ns" | "private") {
        return Err(format!(
            "EBB_PODMAN_NETWORK={network:?}: each instance needs a network namespace of its own on a podman network (bridge, or a network's name)"
        ));
    }
    Ok(network)
}

/// Does the image's configured user (`USER`) run as root?
fn image_runs_as_root(image: &str) -> bool {
    let out = std::process::Command::new("podman")
        .args(podman_global_args())
        .args(["image", "inspect", "--format", "{{.Config.User}}", image])
        .output();
    let user = out
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let name = user.split(':').next().unwrap_or("");
    name.is_empty() || name == "root" || name == "0"
}

fn podman_image_present(image: &str) -> bool {
    std::process::Command::new("podman")
        .args(podman_global_args())
        .args(["image", "exists", image])
        .status()
        .is_ok_and(|s| s.success())
}

/// The image a container names (its `image`).
fn image_of(c: &Container) -> String {
    c.image.clone().unwrap_or_default()
}

/// Kubernetes' default `imagePullPolicy`: Always for `:latest` or no tag, IfNotPresent else.
fn default_pull_policy(image: &str) -> String {
    if image.contains('@') {
        return "IfNotPresent".into();
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, tag)) if tag != "latest" => "IfNotPresent".into(),
        _ => "Always".into(),
    }
}

/// The repository of an image reference (without tag or digest).
fn repository(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    match image.rfind(':') {
        Some(i) if !image[i..].contains('/') => &image[..i],
        _ => image,
    }
}

/// Pull `reference` as `policy` says, then pin it: `repository@digest`. Errors are (reason,
/// message naming the image and the registry's answer).
fn pull_and_pin(
    reference: &str,
    policy: &str,
    auth: Option<&Path>,
) -> Result<String, (String, String)> {
    let present = podman_image_present(reference);
    let pinned_already = reference.contains('@');
    let pull = match policy {
        "Never" if !present => {
            return Err((
                "ErrImageNeverPull".into(),
                format!("image {reference:?} is not present locally and imagePullPolicy is Never"),
            ));
        }
        "Never" => false,
        "Always" => !pinned_already || !present,
        _ => !present,
    };
    if pull {
        podman_pull(reference, auth).map_err(|answer| {
            (
                "ErrImagePull".to_string(),
                format!("pulling image {reference:?}: {answer}"),
            )
        })?;
    }
    if pinned_already {
        return Ok(reference.to_string());
    }
    let no_digest = |why: String| {
        (
            "ErrImagePull".to_string(),
            format!("image {reference:?} has no digest: {why}"),
        )
    };
    let out = std::process::Command::new("podman")
        .args(podman_global_args())
        .args([
            "image",
            "inspect",
            "--format",
            "{{.Digest}} {{json .RepoDigests}}",
            reference,
        ])
        .output()
        .map_err(|e| no_digest(e.to_string()))?;
    if !out.status.success() {
        return Err(no_digest(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let (primary, repo_digests) = text.trim().split_once(' ').unwrap_or((text.trim(), "[]"));
    let repo_digests: Vec<String> = serde_json::from_str(repo_digests).unwrap_or_default();
    // This image's `repository@digest` names (podman qualifies short names).
    let repo = repository(reference);
    let candidates: Vec<&String> = repo_digests
        .iter()
        .filter(|d| {
            let r = repository(d);
            r == repo || r.ends_with(&format!("/{repo}"))
        })
        .collect();
    let chosen = match candidates.as_slice() {
        [] if primary.starts_with("sha256:") => format!("{repo}@{primary}"),
        [] => return Err(no_digest(format!("podman lists none ({text:?})"))),
        [one] => (*one).clone(),
        // The image was also known under other manifests (built here, then pushed: the
        // registry's manifest differs from the local one). The registry's is the one a later
        // pull by digest finds: after a pull, the newest that the registry confirms; without
        // a pull, the image's own.
        many if pull => many
            .iter()
            .rev()
            .find(|d| podman_pull(d, auth).is_ok())
            .map(|d| (*d).clone())
            .ok_or_else(|| no_digest("the registry knows none of its manifests".into()))?,
        many => many
            .iter()
            .find(|d| d.ends_with(primary))
            .unwrap_or(&many[0])
            .to_string(),
    };
    Ok(chosen)
}

/// `podman pull --quiet [--authfile]`; the error is podman's last line (the registry's answer).
fn podman_pull(reference: &str, auth: Option<&Path>) -> Result<(), String> {
    let mut cmd = std::process::Command::new("podman");
    cmd.args(podman_global_args()).arg("pull").arg("--quiet");
    if let Some(auth) = auth {
        cmd.arg("--authfile").arg(auth);
    }
    let out = cmd
        .arg(reference)
        .output()
        .map_err(|e| format!("podman pull: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let answer = String::from_utf8_lossy(&out.stderr);
    Err(answer
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string())
}

/// A podman auth file from the pod's `imagePullSecrets` (kubernetes.io/dockerconfigjson
/// Secrets), written to `path` (0600); none when the pod names none.
fn pull_auth(
    pod: &k8s_openapi::api::core::v1::PodSpec,
    lookup: &dyn crate::resolve::Lookup,
    namespace: &str,
    path: &Path,
) -> Result<Option<PathBuf>, String> {
    let mut auths = serde_json::Map::new();
    for (i, r) in pod.image_pull_secrets.iter().flatten().enumerate() {
        let field = format!("spec.imagePullSecrets[{i}]");
        let secret = lookup
            .get("Secret", &r.name)
            .ok_or_else(|| format!("{field}: secret {namespace}/{:?} not found", r.name))?;
        let (key, kind) = match secret["type"].as_str() {
            Some("kubernetes.io/dockerconfigjson") => (".dockerconfigjson", "dockerconfigjson"),
            Some("kubernetes.io/dockercfg") => (".dockercfg", "dockercfg"),
            other => {
                return Err(format!(
                    "{field}: secret {:?} is of type {other:?}, not kubernetes.io/dockerconfigjson",
                    r.name
                ));
            }
        };
        let raw = secret["data"][key]
            .as_str()
            .and_then(apiserver::admission::base64_decode)
            .ok_or_else(|| format!("{field}: secret {:?} has no {key}", r.name))?;
        let v: serde_json::Value =
            serde_json::from_slice(&raw).map_err(|e| format!("{field}: {key} is not JSON: {e}"))?;
        let entries = if kind == "dockerconfigjson" {
            v["auths"].clone()
        } else {
            v
        };
        for (registry, auth) in entries.as_object().into_iter().flatten() {
            // The kubelet also takes `username`/`password`; podman reads only `auth`.
            let mut auth = auth.clone();
            if auth["auth"].as_str().is_none_or(str::is_empty)
                && let (Some(user), Some(password)) =
                    (auth["username"].as_str(), auth["password"].as_str())
            {
                auth["auth"] =
                    apiserver::admission::base64_encode(format!("{user}:{password}").as_bytes())
                        .into();
            }
            auths.insert(registry.clone(), auth);
        }
    }
    if auths.is_empty() {
        return Ok(None);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let body = serde_json::json!({ "auths": auths }).to_string();
    crate::server::write_private(path, body.as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Some(path.to_path_buf()))
}

async fn run_instance(
    launch: Arc<Launch>,
    id: String,
    images: Vec<String>,
    events: mpsc::UnboundedSender<Event>,
    stop: oneshot::Receiver<()>,
) {
    run_container(&launch, &id, &images, events, stop).await;
    remove_instance_volumes(&launch, &id);
}

async fn run_container(
    launch: &Arc<Launch>,
    id: &str,
    images: &[String],
    events: mpsc::UnboundedSender<Event>,
    stop: oneshot::Receiver<()>,
) {
    let (launch, id) = (launch.clone(), id.to_string());
    let image = images.first().map(String::as_str).unwrap_or_default();
    let failure = |reason: &str, message: String| Event::Exited {
        id: id.clone(),
        failure: Some(ContainerFailure {
            reason: reason.into(),
            message,
        }),
    };
    let port = match free_port() {
        Ok(p) => p,
        Err(e) => {
            let _ = events.send(failure("RunContainerError", format!("no free port: {e}")));
            return;
        }
    };
    let log_path = launch.logs.join(format!("{id}.log"));
    let log = std::fs::create_dir_all(&launch.logs).and_then(|()| {
        std::fs::File::options()
            .create(true)
            .append(true)
            .open(&log_path)
    });
    let (out, err) = match log.and_then(|f| Ok((f.try_clone()?, f))) {
        Ok(pair) => pair,
        Err(e) => {
            let _ = events.send(failure(
                "RunContainerError",
                format!("cannot open {}: {e}", log_path.display()),
            ));
            return;
        }
    };
    let mut env: BTreeMap<String, String> = launch
        .env
        .iter()
        .map(|(k, v)| {
            let v = match v {
                crate::resolve::EnvValue::Literal(v) => v.clone(),
                crate::resolve::EnvValue::PodName => id.clone(),
            };
            (k.clone(), v)
        })
        .collect();
    // A host process listens on its own free port; a podman instance has its own network
    // namespace, listens on its declared port (Knative's PORT) and is published on loopback at
    // `port`, with every other port a probe reaches.
    let mut published: Vec<(u16, u16)> = Vec::new();
    if launch.backend == Backend::Podman {
        for &inside in &launch.probe_ports {
            match free_port() {
                Ok(host) => published.push((inside, host)),
                Err(e) => {
                    let _ = events.send(failure("RunContainerError", format!("no free port: {e}")));
                    return;
                }
            }
        }
        env.insert("PORT".into(), launch.declared_port.to_string());
    } else {
        env.insert("PORT".into(), port.to_string());
    }
    let mut cmd = match launch.backend {
        Backend::Process => {
            let mut cmd = tokio::process::Command::new(&launch.program[0]);
            cmd.args(&launch.program[1..]).envs(&env);
            if let Some(dir) = &launch.workdir {
                cmd.current_dir(dir);
            }
            cmd
        }
        Backend::Podman => {
            // A pinned image removed since (a prune) is pulled again by its digest.
            for image in images {
                if podman_image_present(image) {
                    continue;
                }
                let (reference, auth) = (image.clone(), launch.auth_file.clone());
                let pulled = tokio::task::spawn_blocking(move || {
                    pull_and_pin(&reference, "IfNotPresent", auth.as_deref())
                })
                .await;
                if let Ok(Err((reason, message))) | Err((reason, message)) =
                    pulled.map_err(|e| ("ErrImagePull".to_string(), e.to_string()))
                {
                    let _ = events.send(failure(&reason, message));
                    return;
                }
            }
            let non_root = std::iter::once((&launch.container, launch.non_root_image, image))
                .chain(
                    launch
                        .sidecars
                        .iter()
                        .zip(images.iter().skip(1))
                        .map(|(s, i)| (&s.name, s.non_root_image, i.as_str())),
                )
                .find(|(_, non_root, image)| *non_root && image_runs_as_root(image));
            if let Some((name, _, _)) = non_root {
                let _ = events.send(failure(
                    "CreateContainerConfigError",
                    format!("container {name:?} has runAsNonRoot and image will run as root (set runAsUser, or an image with a non-root USER)"),
                ));
                return;
            }
            let network = match podman_network() {
                Ok(n) => n,
                Err(e) => {
                    let _ = events.send(failure("CreateContainerError", e));
                    return;
                }
            };
            let serving = PodmanContainer {
                name: format!("ebb-{id}"),
                image,
                command: &launch.command,
                args: &launch.args,
                workdir: launch.workdir.as_deref(),
                mounts: &launch.mounts,
                podman_args: &launch.podman_args,
                network,
            };
            let mut ports = vec![(launch.declared_port, port)];
            ports.extend(published.iter().copied());
            match podman_command(&launch, &id, &serving, &env, &ports) {
                Ok(cmd) => cmd,
                Err(e) => {
                    let _ = events.send(failure("CreateContainerError", e));
                    return;
                }
            }
        }
    };
    cmd.stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let what = launch.program.first().cloned().unwrap_or_default();
            let _ = events.send(failure(
                "RunContainerError",
                format!("cannot start {what:?}: {e}"),
            ));
            return;
        }
    };
    let pid = child.id();
    let pidfile = launch.pids.join(format!("{id}.pid"));
    if let Some(pid) = pid {
        let _ = std::fs::create_dir_all(&launch.pids);
        let _ = std::fs::write(
            &pidfile,
            format!("{pid} {}\n", start_time(pid).unwrap_or_default()),
        );
    }

    // The queue-proxy, in this process, on its own loopback ports.
    let mut vars = launch.queue_env.clone();
    vars.insert("USER_PORT".into(), port.to_string());
    if !published.is_empty()
        && let Some(mut p) = vars
            .get("SERVING_READINESS_PROBE")
            .and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok())
    {
        for kind in ["httpGet", "tcpSocket", "grpc"] {
            if let Some(&(_, host)) = published
                .iter()
                .find(|(inside, _)| p[kind]["port"].as_u64() == Some(u64::from(*inside)))
            {
                p[kind]["port"] = host.into();
            }
        }
        vars.insert("SERVING_READINESS_PROBE".into(), p.to_string());
    }
    vars.insert("SERVING_POD".into(), id.clone());
    let (qp_stop, qp_stop_rx) = oneshot::channel::<()>();
    let (bound_tx, bound_rx) = oneshot::channel();
    let qp = match queue_proxy::Config::from_vars(&vars) {
        Ok(cfg) => tokio::spawn(queue_proxy::run(
            cfg,
            async {
                let _ = qp_stop_rx.await;
            },
            move |b| {
                let _ = bound_tx.send(b);
            },
        )),
        Err(e) => {
            terminate(&mut child, pid, Duration::ZERO).await;
            let _ = std::fs::remove_file(&pidfile);
            let _ = events.send(failure("RunContainerError", format!("queue-proxy: {e}")));
            return;
        }
    };
    let Ok(bound) = bound_rx.await else {
        terminate(&mut child, pid, Duration::ZERO).await;
        let _ = std::fs::remove_file(&pidfile);
        let _ = events.send(failure(
            "RunContainerError",
            "queue-proxy could not bind its ports".into(),
        ));
        return;
    };
    // Sidecars, in the serving container's network namespace once it has one. One that exits
    // ends the instance, as its failure.
    let (sidecar_exit_tx, mut sidecar_exit_rx) = mpsc::unbounded_channel::<ContainerFailure>();
    let sidecars = start_sidecars(&launch, &id, images, &mut child, sidecar_exit_tx).await;
    let sidecars = match sidecars {
        Ok(s) => s,
        Err(f) => {
            let _ = qp_stop.send(());
            qp.abort();
            terminate(&mut child, pid, Duration::ZERO).await;
            remove_pod_containers(&launch, &id).await;
            let _ = std::fs::remove_file(&pidfile);
            let _ = events.send(Event::Exited {
                id,
                failure: Some(f),
            });
            return;
        }
    };
    let sidecar_failed: Arc<Mutex<Option<ContainerFailure>>> = Arc::default();
    let (stop_all_tx, stop_all) = oneshot::channel::<()>();
    {
        let failed = sidecar_failed.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop => {}
                Some(f) = sidecar_exit_rx.recv() => {
                    if let Ok(mut slot) = failed.lock() {
                        *slot = Some(f);
                    }
                }
            }
            let _ = stop_all_tx.send(());
        });
    }
    let _ = events.send(Event::Started {
        id: id.clone(),
        serving: bound.serving,
        stats: bound.stats,
        pid,
    });

    let target = Target {
        port,
        published,
        exec: match launch.backend {
            Backend::Process => Exec::Process {
                prefix: launch.wrapper.clone(),
                env: env.clone().into_iter().collect(),
                workdir: launch.workdir.clone().map(PathBuf::from),
            },
            Backend::Podman => Exec::Podman {
                container: format!("ebb-{id}"),
                global: podman_global_args(),
            },
        },
    };
    let exit = probe_loop(&launch, &id, &events, &mut child, &bound, &target, stop_all).await;
    let sidecar_failure = sidecar_failed.lock().ok().and_then(|mut f| f.take());
    let exit = match (exit, sidecar_failure) {
        (Exit::Stopped, Some(f)) => Exit::Sidecar(f),
        (exit, _) => exit,
    };
    let failure = run_exit(
        &launch, &id, exit, child, pid, &pidfile, &log_path, qp_stop, qp,
    )
    .await;
    if !launch.sidecars.is_empty() {
        sidecars.stop(launch.grace).await;
        remove_pod_containers(&launch, &id).await;
    }
    let _ = events.send(Event::Exited { id, failure });
}

/// How an instance ends, by how its life ended: the queue-proxy stopped, the container
/// stopped or killed; the failure to tell the supervisor, if any.
#[allow(clippy::too_many_arguments)] // the instance's parts, handed over as it ends
async fn run_exit(
    launch: &Launch,
    id: &str,
    exit: Exit,
    mut child: tokio::process::Child,
    pid: Option<u32>,
    pidfile: &Path,
    log_path: &Path,
    qp_stop: oneshot::Sender<()>,
    qp: tokio::task::JoinHandle<std::io::Result<()>>,
) -> Option<ContainerFailure> {
    match exit {
        Exit::Sidecar(f) => {
            let _ = qp_stop.send(());
            qp.abort();
            terminate(&mut child, pid, launch.grace).await;
            let _ = std::fs::remove_file(pidfile);
            Some(f)
        }
        Exit::Unhealthy(why) => {
            // As the kubelet restarts a container whose liveness (or startup) probe fails.
            let _ = qp_stop.send(());
            qp.abort();
            terminate(&mut child, pid, launch.grace).await;
            let _ = std::fs::remove_file(pidfile);
            Some(ContainerFailure {
                reason: "CrashLoopBackOff".into(),
                message: format!("{why}; the container is restarted with back-off"),
            })
        }
        Exit::Exited(status) => {
            // The container ended by itself: stop serving at once.
            let _ = qp_stop.send(());
            qp.abort();
            signal_group(pid.unwrap_or(0), nix::sys::signal::Signal::SIGKILL);
            let _ = std::fs::remove_file(pidfile);
            let code = status.as_ref().ok().and_then(|s| s.code());
            let tail = log_tail(log_path);
            Some(ContainerFailure {
                reason: match code {
                    Some(c) => format!("ExitCode{c}"),
                    None => "Error".into(),
                },
                message: if tail.is_empty() {
                    "Container failed with no output.".into()
                } else {
                    format!("Container failed with: {tail}")
                },
            })
        }
        Exit::Stopped => {
            // Scale-down or shutdown: the gateway has already forgotten this instance; the
            // queue-proxy finishes what it has, then the container gets SIGTERM.
            let _ = qp_stop.send(());
            let drain_cap = launch.drain_quiet + launch.grace + Duration::from_secs(5);
            if tokio::time::timeout(drain_cap, qp).await.is_err() {
                tracing::warn!(instance = %id, "queue-proxy did not drain in time");
            }
            terminate(&mut child, pid, launch.grace).await;
            let _ = std::fs::remove_file(pidfile);
            None
        }
    }
}

/// An instance's sidecars, running: each watched by a task that reports its exit, or stops it
/// when told to.
struct RunningSidecars {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningSidecars {
    /// SIGTERM to each (after the serving container, so a proxy sidecar outlives its drain),
    /// SIGKILL after `grace`.
    async fn stop(self, grace: Duration) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = tokio::time::timeout(grace + Duration::from_secs(5), task).await;
        }
    }
}

/// Start the pod's sidecars in the serving container's network namespace, once it is running
/// (its `podman run` exiting first is left to the caller's watch). An exit is reported on
/// `exited` as the container's failure.
async fn start_sidecars(
    launch: &Arc<Launch>,
    id: &str,
    images: &[String],
    serving: &mut tokio::process::Child,
    exited: mpsc::UnboundedSender<ContainerFailure>,
) -> Result<RunningSidecars, ContainerFailure> {
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let mut running = RunningSidecars {
        stop,
        tasks: Vec::new(),
    };
    if launch.sidecars.is_empty() {
        return Ok(running);
    }
    let owner = format!("ebb-{id}");
    match podman_running(&owner, serving).await {
        Started::Yes => {}
        // Its exit is the caller's to report.
        Started::Exited(_) => return Ok(running),
        Started::TimedOut => {
            return Err(ContainerFailure {
                reason: "RunContainerError".into(),
                message: format!(
                    "container {owner} did not start within 60s; its sidecars cannot join it"
                ),
            });
        }
    }
    for (sidecar, image) in launch.sidecars.iter().zip(images.iter().skip(1)) {
        let env: BTreeMap<String, String> = sidecar
            .env
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    crate::resolve::EnvValue::Literal(v) => v.clone(),
                    crate::resolve::EnvValue::PodName => id.to_string(),
                };
                (k.clone(), v)
            })
            .collect();
        let c = PodmanContainer {
            name: format!("ebb-{id}-{}", sidecar.name),
            image,
            command: &sidecar.command,
            args: &sidecar.args,
            workdir: sidecar.workdir.as_deref(),
            mounts: &sidecar.mounts,
            podman_args: &sidecar.podman_args,
            network: format!("container:{owner}"),
        };
        let fail = |reason: &str, message: String| ContainerFailure {
            reason: reason.into(),
            message,
        };
        let mut cmd = podman_command(launch, id, &c, &env, &[])
            .map_err(|e| fail("CreateContainerError", e))?;
        let log_path = launch.logs.join(format!("{id}-{}.log", sidecar.name));
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .and_then(|f| Ok((f.try_clone()?, f)))
            .map_err(|e| fail("RunContainerError", format!("{}: {e}", log_path.display())))?;
        cmd.stdin(std::process::Stdio::null())
            .stdout(log.0)
            .stderr(log.1)
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| {
            fail(
                "RunContainerError",
                format!("cannot start sidecar {:?}: {e}", sidecar.name),
            )
        })?;
        // Running before the instance counts (a pod is not ready while a container is not).
        let name = sidecar.name.clone();
        let exit_failure = move |status: Option<std::process::ExitStatus>| {
            let tail = log_tail(&log_path);
            ContainerFailure {
                reason: status
                    .and_then(|s| s.code())
                    .map_or_else(|| "Error".into(), |c| format!("ExitCode{c}")),
                message: if tail.is_empty() {
                    format!("Container {name:?} failed with no output.")
                } else {
                    format!("Container {name:?} failed with: {tail}")
                },
            }
        };
        match podman_running(&c.name, &mut child).await {
            Started::Yes => {}
            Started::Exited(status) => {
                let _ = running.stop.send(true);
                return Err(exit_failure(status));
            }
            Started::TimedOut => {
                let pid = child.id();
                terminate(&mut child, pid, Duration::ZERO).await;
                let _ = running.stop.send(true);
                return Err(fail(
                    "RunContainerError",
                    format!("sidecar {:?} did not start within 60s", sidecar.name),
                ));
            }
        }
        let (grace, exited) = (launch.grace, exited.clone());
        let mut stop_rx = stop_rx.clone();
        running.tasks.push(tokio::spawn(async move {
            let pid = child.id();
            tokio::select! {
                status = child.wait() => {
                    let _ = exited.send(exit_failure(status.ok()));
                }
                () = async { let _ = stop_rx.wait_for(|s| *s).await; } => {
                    terminate(&mut child, pid, grace).await;
                }
            }
        }));
    }
    Ok(running)
}

/// Remove an instance's containers when it has sidecars: `--rm` cannot remove the serving
/// container while others share its network namespace, and a sidecar that failed to start may
/// be left for podman's cleanup.
async fn remove_pod_containers(launch: &Launch, id: &str) {
    let _ = tokio::process::Command::new("podman")
        .args(podman_global_args())
        .args(["rm", "--force", "--ignore"])
        .args(
            launch
                .sidecars
                .iter()
                .map(|s| format!("ebb-{id}-{}", s.name))
                .chain([format!("ebb-{id}")]),
        )
        .output()
        .await;
}

/// Whether a container `podman run` started is running.
enum Started {
    Yes,
    /// Its `podman run` ended first.
    Exited(Option<std::process::ExitStatus>),
    TimedOut,
}

/// Wait (up to 60 s) until the container `name` runs, or its `podman run` ends.
async fn podman_running(name: &str, child: &mut tokio::process::Child) -> Started {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Started::Exited(Some(status)),
            Err(_) => return Started::Exited(None),
            Ok(None) => {}
        }
        let out = tokio::process::Command::new("podman")
            .args(podman_global_args())
            .args([
                "container",
                "inspect",
                "--format",
                "{{.State.Running}}",
                name,
            ])
            .output()
            .await;
        if out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "true") {
            return Started::Yes;
        }
        if tokio::time::Instant::now() >= deadline {
            return Started::TimedOut;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Remove an instance's emptyDir volumes (they live and die with it, as with a pod).
fn remove_instance_volumes(launch: &Launch, id: &str) {
    let _ = std::fs::remove_dir_all(launch.volumes.join("instances").join(id));
}

/// How an instance's life ended.
enum Exit {
    /// The container exited by itself.
    Exited(std::io::Result<std::process::ExitStatus>),
    /// Asked to stop (scale-down, shutdown).
    Stopped,
    /// Its liveness or startup probe failed past its threshold.
    Unhealthy(String),
    /// A sidecar exited: the instance fails with it.
    Sidecar(ContainerFailure),
}

/// A probe's next run.
struct Scheduled<'a> {
    plan: &'a Plan,
    at: tokio::time::Instant,
    thresholds: Thresholds,
}

impl<'a> Scheduled<'a> {
    fn new(plan: &'a Plan) -> Scheduled<'a> {
        Scheduled {
            plan,
            at: tokio::time::Instant::now() + plan.initial_delay,
            thresholds: Thresholds::default(),
        }
    }

    async fn due(&self) {
        tokio::time::sleep_until(self.at).await;
    }

    /// Run the check; the new verdict if it changed.
    async fn run(&mut self, target: &Target) -> (Option<bool>, Option<String>) {
        let result = crate::probes::check(self.plan, target).await;
        self.at = tokio::time::Instant::now() + self.plan.period;
        let why = result.as_ref().err().cloned();
        (self.thresholds.record(result.is_ok(), self.plan), why)
    }
}

/// An instance's probing, until it exits, is stopped, or fails a liveness or startup probe:
/// the startup probe gates the others; readiness is the queue-proxy's verdict (followed as it
/// changes) and, for exec and grpc probes, this runtime's; the liveness probe restarts.
async fn probe_loop(
    launch: &Launch,
    id: &str,
    events: &mpsc::UnboundedSender<Event>,
    child: &mut tokio::process::Child,
    bound: &queue_proxy::Bound,
    target: &Target,
    mut stop: oneshot::Receiver<()>,
) -> Exit {
    let mut qp_ready = bound.ready.clone();
    let mut startup = launch.startup.as_ref().map(Scheduled::new);
    let mut readiness = launch.readiness.as_ref().map(Scheduled::new);
    let mut liveness = launch.liveness.as_ref().map(Scheduled::new);
    let mut reported = false;
    let mut qp_ever_ready = false;
    loop {
        let started = startup
            .as_ref()
            .is_none_or(|s| s.thresholds.state == Some(true));
        let qp = *qp_ready.borrow_and_update();
        qp_ever_ready |= qp;
        let ready = started
            && qp
            && readiness
                .as_ref()
                .is_none_or(|r| r.thresholds.state == Some(true));
        if ready != reported {
            reported = ready;
            let _ = events.send(if ready {
                Event::Ready(id.to_string())
            } else {
                Event::Unready(id.to_string())
            });
        }
        let startup_due = async {
            match startup.as_ref().filter(|_| !started) {
                Some(s) => s.due().await,
                None => std::future::pending().await,
            }
        };
        let readiness_due = async {
            match readiness.as_ref().filter(|_| started) {
                Some(s) => s.due().await,
                None => std::future::pending().await,
            }
        };
        let liveness_due = async {
            match liveness.as_ref().filter(|_| started) {
                Some(s) => s.due().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            status = child.wait() => return Exit::Exited(status),
            _ = &mut stop => return Exit::Stopped,
            _ = qp_ready.changed() => {}
            // Until the app first answers, a network probe makes the queue-proxy probe it at
            // once (a cold start is over within milliseconds of the socket opening).
            _ = tokio::time::sleep(Duration::from_millis(5)), if !qp_ever_ready => {
                activator::probe::probe(bound.serving).await;
            }
            _ = startup_due => {
                if let Some(s) = startup.as_mut()
                    && let (Some(false), why) = s.run(target).await
                {
                    return Exit::Unhealthy(format!("startup probe failed {} times: {}", s.plan.failure_threshold, why.unwrap_or_default()));
                }
            }
            _ = readiness_due => {
                if let Some(r) = readiness.as_mut() {
                    r.run(target).await;
                }
            }
            _ = liveness_due => {
                if let Some(l) = liveness.as_mut()
                    && let (Some(false), why) = l.run(target).await
                {
                    return Exit::Unhealthy(format!("liveness probe failed {} times: {}", l.plan.failure_threshold, why.unwrap_or_default()));
                }
            }
        }
    }
}

/// SIGTERM to the instance's process group, SIGKILL after `grace`.
async fn terminate(child: &mut tokio::process::Child, pid: Option<u32>, grace: Duration) {
    if let Some(pid) = pid {
        signal_group(pid, nix::sys::signal::Signal::SIGTERM);
        if tokio::time::timeout(grace, child.wait()).await.is_ok() {
            signal_group(pid, nix::sys::signal::Signal::SIGKILL);
            return;
        }
        signal_group(pid, nix::sys::signal::Signal::SIGKILL);
    }
    let _ = child.kill().await;
}

/// The serving container's volume mounts, made concrete (configMap, secret and projected
/// volumes written under `dir`), or why they cannot be.
fn mounts(
    user: &Container,
    pod: &k8s_openapi::api::core::v1::PodSpec,
    opts: &Options,
    lookup: &dyn crate::resolve::Lookup,
    namespace: &str,
    dir: &Path,
    field: &str,
) -> (Vec<Mount>, Option<ContainerFailure>) {
    let fail = |message: String| {
        Some(ContainerFailure {
            reason: "CreateContainerConfigError".into(),
            message,
        })
    };
    let mut out = Vec::new();
    for (i, m) in user.volume_mounts.iter().flatten().enumerate() {
        let at = format!("{field}.volumeMounts[{i}]");
        if opts.backend == Backend::Process {
            return (
                out,
                fail(format!(
                    "{at} (mountPath {}): the process runtime runs host processes and cannot mount volumes; run local mode with --runtime podman",
                    m.mount_path
                )),
            );
        }
        let Some((vi, volume)) = pod
            .volumes
            .iter()
            .flatten()
            .enumerate()
            .find(|(_, v)| v.name == m.name)
        else {
            return (
                out,
                fail(format!("{at}.name: no volume is named {:?}", m.name)),
            );
        };
        let vfield = format!("spec.volumes[{vi}]");
        let source = match crate::resolve::volume_files(volume, namespace, lookup, &vfield) {
            Ok(Some(files)) => {
                let path = dir.join(&volume.name);
                if let Err(e) = write_volume(&path, &files) {
                    return (
                        out,
                        fail(format!("{vfield}: writing {}: {e}", path.display())),
                    );
                }
                MountSource::Dir(path)
            }
            Ok(None) => {
                let e = volume.empty_dir.as_ref();
                MountSource::Empty {
                    volume: volume.name.clone(),
                    memory: e.and_then(|e| e.medium.as_deref()) == Some("Memory"),
                    size: e
                        .and_then(|e| e.size_limit.as_ref())
                        .and_then(|q| crate::resolve::quantity(&q.0))
                        .map(|b| b as u64),
                }
            }
            Err(f) => return (out, Some(f)),
        };
        out.push(Mount {
            // ConfigMap, Secret and projected volumes are read-only, as the kubelet mounts them.
            read_only: m.read_only == Some(true) || volume.empty_dir.is_none(),
            source,
            destination: m.mount_path.clone(),
            sub_path: m.sub_path.clone().filter(|p| !p.is_empty()),
        });
    }
    (out, None)
}

/// Write a volume's files under `dir` (replacing what was there), each with its mode.
fn write_volume(dir: &Path, files: &[crate::resolve::File]) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    for f in files {
        // Paths stay inside the volume (validation refuses `..`; this keeps it so).
        let rel = Path::new(&f.path);
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(std::io::Error::other(format!(
                "path {:?} leaves the volume",
                f.path
            )));
        }
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, &f.data)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(f.mode & 0o777))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references() {
        assert_eq!(default_pull_policy("ghcr.io/a/b"), "Always");
        assert_eq!(default_pull_policy("ghcr.io/a/b:latest"), "Always");
        assert_eq!(default_pull_policy("127.0.0.1:5000/a/b:v1"), "IfNotPresent");
        assert_eq!(default_pull_policy("127.0.0.1:5000/a/b"), "Always");
        assert_eq!(default_pull_policy("b@sha256:00"), "IfNotPresent");
        assert_eq!(repository("127.0.0.1:5000/a/b:v1"), "127.0.0.1:5000/a/b");
        assert_eq!(repository("127.0.0.1:5000/a/b"), "127.0.0.1:5000/a/b");
        assert_eq!(repository("b:v1@sha256:00"), "b");
    }
}
