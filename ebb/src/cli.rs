//! The `ebb` command line: kubectl's verbs (apply, get, describe, delete, logs) and kn's
//! `service create/update` flags — a Kubernetes client, against local mode by default (through
//! its kubeconfig) or any cluster (`--kubeconfig`, `--context`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};

use serving_api::{Service, ServiceSpec, TrafficTarget};

use crate::client::{Client, ClientError, Target, default_state_dir};
use crate::runtime::Backend;
use crate::server::{Settings, UpOptions};

#[derive(Debug, Parser)]
#[command(
    name = "ebb",
    version,
    about = "Ebb: Knative Serving, scale to zero, in one binary"
)]
pub struct Cli {
    /// State directory of local mode (store, logs, instance records).
    #[arg(long, global = true, env = "EBB_STATE")]
    pub state: Option<PathBuf>,
    /// Namespace.
    #[arg(short = 'n', long, global = true, default_value = "default")]
    pub namespace: String,
    /// Talk to the cluster this kubeconfig names instead of local mode.
    #[arg(long, global = true, env = "EBB_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Talk to this kubeconfig context (of --kubeconfig, else $KUBECONFIG or ~/.kube/config).
    #[arg(long, global = true)]
    pub context: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Local mode: run Ebb on this machine.
    #[command(subcommand)]
    Local(LocalCmd),
    /// Create or update objects from YAML (many documents; `-` reads stdin).
    Apply {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// List objects, or show one.
    Get {
        kind: String,
        name: Option<String>,
        #[arg(short = 'o', long, value_enum)]
        output: Option<Output>,
    },
    /// Show an object in detail, with its conditions.
    Describe { kind: String, name: String },
    /// Delete an object and what it owns.
    Delete { kind: String, name: String },
    /// Create and update Services (kn's flags).
    #[command(subcommand)]
    Service(ServiceCmd),
    /// (Internal) started by `ebb local up`: stop its instances when it ends, even killed.
    #[command(name = "__reap", hide = true)]
    Reap {
        #[arg(long, value_enum)]
        runtime: RuntimeChoice,
    },
    /// Print the logs of a Service's instances.
    Logs {
        service: String,
        #[arg(long)]
        revision: Option<String>,
        /// Keep printing new lines.
        #[arg(short = 'f', long)]
        follow: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum LocalCmd {
    /// Start local mode in the foreground (Ctrl-C stops it and every instance).
    Up {
        /// Where the gateway listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Where the CLI's API listens (port 0: any free port; the CLI finds it).
        #[arg(long, default_value = "127.0.0.1:0")]
        api: SocketAddr,
        /// How containers run: host processes, podman, or auto (podman where it works here,
        /// else host processes).
        #[arg(long, value_enum, default_value = "auto")]
        runtime: RuntimeChoice,
        /// Knative config maps (YAML, e.g. config-autoscaler) to use instead of the defaults.
        #[arg(long)]
        config: Option<PathBuf>,
        /// How long a stopping instance's queue-proxy waits for stragglers.
        #[arg(long, default_value = "500ms", value_parser = parse_duration)]
        drain_quiet: Duration,
        /// How long shutdown waits for in-flight and queued requests.
        #[arg(long, default_value = "20s", value_parser = parse_duration)]
        grace: Duration,
        /// Start over: delete the state directory's store (every Service, revision and route
        /// in it) before starting. Needed when the store went missing or is damaged.
        #[arg(long)]
        reset: bool,
    },
    /// Show what runs: runtime, addresses, instances.
    Status,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum RuntimeChoice {
    Process,
    Podman,
    Auto,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Output {
    Wide,
    Yaml,
    Json,
}

#[derive(Debug, Args, Clone)]
pub struct WaitArgs {
    /// Return at once instead of waiting for the Service to be Ready.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to wait for Ready.
    #[arg(long, default_value = "600s", value_parser = parse_duration)]
    pub wait_timeout: Duration,
}

#[derive(Debug, Subcommand)]
pub enum ServiceCmd {
    /// Create a Service.
    Create {
        name: String,
        #[command(flatten)]
        template: TemplateArgs,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Change a Service's template (a new Revision) or its traffic.
    Update {
        name: String,
        #[command(flatten)]
        template: TemplateArgs,
        /// Traffic split, e.g. `hello-00001=50,@latest=50` (repeatable).
        #[arg(long)]
        traffic: Vec<String>,
        /// Tag a revision, e.g. `hello-00001=old` or `@latest=current` (repeatable).
        #[arg(long)]
        tag: Vec<String>,
        /// Remove a tag (repeatable).
        #[arg(long)]
        untag: Vec<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

#[derive(Debug, Args, Clone, Default)]
pub struct TemplateArgs {
    /// Container image (with the process runtime: a program on PATH, unless --cmd is given).
    #[arg(long)]
    pub image: Option<String>,
    /// The program to run (the container's command).
    #[arg(long)]
    pub cmd: Option<String>,
    /// An argument for the program (repeatable).
    #[arg(long = "arg", allow_hyphen_values = true)]
    pub args: Vec<String>,
    /// Environment variable K=V (repeatable; `K-` removes K).
    #[arg(short = 'e', long)]
    pub env: Vec<String>,
    /// The port the container listens on (given to it as $PORT).
    #[arg(long)]
    pub port: Option<i32>,
    #[arg(long)]
    pub concurrency_limit: Option<i64>,
    #[arg(long)]
    pub scale_min: Option<i64>,
    #[arg(long)]
    pub scale_max: Option<i64>,
    /// Revision template annotation K=V (repeatable; `K-` removes K).
    #[arg(short = 'a', long)]
    pub annotation: Vec<String>,
    /// Name of the new Revision (must start with the Service's name and a dash).
    #[arg(long)]
    pub revision_name: Option<String>,
}

impl TemplateArgs {
    fn is_empty(&self) -> bool {
        self.image.is_none()
            && self.cmd.is_none()
            && self.args.is_empty()
            && self.env.is_empty()
            && self.port.is_none()
            && self.concurrency_limit.is_none()
            && self.scale_min.is_none()
            && self.scale_max.is_none()
            && self.annotation.is_empty()
            && self.revision_name.is_none()
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    queue_proxy::config::parse_go_duration(s)
        .ok_or_else(|| format!("invalid duration {s:?} (examples: 500ms, 30s, 2m)"))
}

fn split_kv(s: &str, flag: &str) -> anyhow::Result<(String, Option<String>)> {
    if let Some(k) = s.strip_suffix('-')
        && !s.contains('=')
    {
        return Ok((k.to_string(), None));
    }
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), Some(v.to_string()))),
        _ => anyhow::bail!("--{flag} {s:?}: expected KEY=VALUE (or KEY- to remove)"),
    }
}

/// Canonical kind for what users type (kubectl's plural, singular and short names).
pub fn kind_name(s: &str) -> anyhow::Result<&'static str> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "service" | "services" | "ksvc" | "ksvcs" | "svc" => "Service",
        "revision" | "revisions" | "rev" | "revs" => "Revision",
        "route" | "routes" | "rt" => "Route",
        "configuration" | "configurations" | "config" | "configs" | "cfg" => "Configuration",
        "domainmapping" | "domainmappings" | "dm" => "DomainMapping",
        "clusterdomainclaim" | "clusterdomainclaims" | "cdc" => "ClusterDomainClaim",
        other => anyhow::bail!(
            "unknown kind {other:?}: use services (ksvc), revisions (rev), routes (rt), configurations (config), domainmappings (dm) or clusterdomainclaims (cdc)"
        ),
    })
}

pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    let state = cli.state.clone().unwrap_or_else(default_state_dir);
    let ns = cli.namespace.clone();
    let target = Target {
        state: state.clone(),
        kubeconfig: cli.kubeconfig.clone(),
        context: cli.context.clone(),
    };
    match cli.command {
        Command::Local(LocalCmd::Up {
            listen,
            api,
            runtime,
            config,
            drain_quiet,
            grace,
            reset,
        }) => {
            let settings = match &config {
                Some(path) => Settings::from_yaml(
                    &std::fs::read_to_string(path)
                        .map_err(|e| anyhow::anyhow!("--config {}: {e}", path.display()))?,
                )
                .map_err(|e| anyhow::anyhow!("--config {}:\n{e}", path.display()))?,
                None => Settings::default(),
            };
            // Works, not only installed: `podman info` checks its runtime and storage.
            let podman = || {
                std::process::Command::new("podman")
                    .args(crate::runtime::podman_global_args())
                    .args(["info", "--format", "{{.Host.OCIRuntime.Name}}"])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            };
            let backend = match runtime {
                RuntimeChoice::Process => Backend::Process,
                RuntimeChoice::Podman if podman() => Backend::Podman,
                RuntimeChoice::Podman => {
                    anyhow::bail!("--runtime podman: podman is not installed (or does not run)")
                }
                RuntimeChoice::Auto if podman() => Backend::Podman,
                RuntimeChoice::Auto => Backend::Process,
            };
            crate::server::up(UpOptions {
                state,
                listen,
                api,
                backend,
                settings,
                drain_quiet,
                reset,
                grace,
            })
            .await?;
            Ok(0)
        }
        Command::Reap { runtime } => {
            let backend = if runtime == RuntimeChoice::Podman {
                Backend::Podman
            } else {
                Backend::Process
            };
            crate::runtime::reap_when_parent_ends(&state, &backend);
            Ok(0)
        }
        Command::Local(LocalCmd::Status) => {
            let client = Client::for_state(&state).await?;
            let s = client.status().await?;
            let e = &s["endpoint"];
            println!("Ebb local mode (pid {})", e["pid"]);
            println!(
                "  gateway:  http://{}",
                e["gateway"].as_str().unwrap_or_default()
            );
            println!(
                "  api:      http://{}",
                e["api"].as_str().unwrap_or_default()
            );
            println!("  runtime:  {}", s["runtime"].as_str().unwrap_or_default());
            println!("  state:    {}", e["state"].as_str().unwrap_or_default());
            let instances = s["instances"].as_array().cloned().unwrap_or_default();
            println!("instances: {}", instances.len());
            let rows: Vec<Vec<String>> = instances
                .iter()
                .map(|i| {
                    vec![
                        i["namespace"].as_str().unwrap_or_default().into(),
                        i["revision"].as_str().unwrap_or_default().into(),
                        i["name"].as_str().unwrap_or_default().into(),
                        i["pid"].as_u64().map(|p| p.to_string()).unwrap_or_default(),
                        i["serving"].as_str().unwrap_or_default().into(),
                        if i["stopping"] == true {
                            "Stopping".into()
                        } else if i["ready"] == true {
                            "Ready".into()
                        } else {
                            "Starting".into()
                        },
                    ]
                })
                .collect();
            if !rows.is_empty() {
                table(
                    &[
                        "NAMESPACE",
                        "REVISION",
                        "INSTANCE",
                        "PID",
                        "QUEUE-PROXY",
                        "STATE",
                    ],
                    &rows,
                );
            }
            Ok(0)
        }
        Command::Apply { files, wait } => {
            let client = Client::connect(&target).await?;
            let mut objs = Vec::new();
            for f in &files {
                let text = if f == "-" {
                    let mut s = String::new();
                    std::io::stdin().read_to_string(&mut s)?;
                    s
                } else {
                    std::fs::read_to_string(f).map_err(|e| anyhow::anyhow!("-f {f}: {e}"))?
                };
                let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
                    .map_err(|e| anyhow::anyhow!("-f {f}: not valid YAML: {e}"))?;
                for mut d in docs.into_iter().filter(|d| !d.is_null()) {
                    let cluster_scoped =
                        matches!(d["kind"].as_str(), Some("Namespace" | "ClusterDomainClaim"));
                    if d["metadata"]["namespace"].is_null() && d.is_object() && !cluster_scoped {
                        d["metadata"]["namespace"] = json!(ns);
                    }
                    objs.push(d);
                }
            }
            if objs.is_empty() {
                anyhow::bail!("no objects in {}", files.join(", "));
            }
            let applied = refused_exit(client.apply(objs).await)?;
            for a in &applied {
                println!("{}/{} {}", a.kind.to_lowercase(), a.name, a.result);
            }
            let mut code = 0;
            if !wait.no_wait {
                for a in applied
                    .iter()
                    .filter(|a| a.kind == "Service" && a.result != "unchanged")
                {
                    if !wait_ready(&client, &a.namespace, &a.name, &wait).await? {
                        code = 1;
                    }
                }
            }
            Ok(code)
        }
        Command::Get { kind, name, output } => {
            let kind = kind_name(&kind)?;
            let client = Client::connect(&target).await?;
            let objs = match &name {
                Some(n) => vec![refused_exit(client.get(kind, &ns, n).await)?],
                None => client.list(kind, Some(&ns)).await?,
            };
            match output {
                Some(Output::Json) => {
                    let v = if name.is_some() {
                        objs[0].clone()
                    } else {
                        json!({ "apiVersion": "v1", "kind": "List", "items": objs })
                    };
                    println!("{}", serde_json::to_string_pretty(&v)?);
                }
                Some(Output::Yaml) => {
                    let v = if name.is_some() {
                        objs[0].clone()
                    } else {
                        json!({ "apiVersion": "v1", "kind": "List", "items": objs })
                    };
                    print!("{}", serde_saphyr::to_string(&v)?);
                }
                wide => {
                    if objs.is_empty() {
                        eprintln!("No {kind}s found in namespace {ns}.");
                    } else {
                        let gateway = client.local.as_ref().map(|e| e.gateway);
                        let (head, rows) =
                            listing(kind, &objs, wide == Some(Output::Wide), gateway);
                        table(&head, &rows);
                    }
                }
            }
            Ok(0)
        }
        Command::Describe { kind, name } => {
            let kind = kind_name(&kind)?;
            let client = Client::connect(&target).await?;
            let obj = refused_exit(client.get(kind, &ns, &name).await)?;
            let related = if kind == "Service" {
                client.list("Revision", Some(&ns)).await?
            } else {
                Vec::new()
            };
            // What a cluster would list under `kubectl describe`: the object's Events.
            let uid = obj["metadata"]["uid"].clone();
            let mut events: Vec<Value> = client
                .list("Event", Some(&ns))
                .await?
                .into_iter()
                .filter(|e| e["involvedObject"]["uid"] == uid)
                .collect();
            events.sort_by(|a, b| {
                a["lastTimestamp"]
                    .as_str()
                    .cmp(&b["lastTimestamp"].as_str())
            });
            describe(
                kind,
                &obj,
                &related,
                &events,
                client.local.as_ref().map(|e| e.gateway),
            );
            Ok(0)
        }
        Command::Delete { kind, name } => {
            let kind = kind_name(&kind)?;
            let client = Client::connect(&target).await?;
            refused_exit(client.delete(kind, &ns, &name).await)?;
            // What it owned goes with it (on the server, as `kubectl delete` does).
            println!("{}/{name} deleted", kind.to_lowercase());
            Ok(0)
        }
        Command::Service(cmd) => service(cmd, &target, &ns).await,
        Command::Logs {
            service,
            revision,
            follow,
        } => {
            let client = Client::connect(&target).await?;
            logs(&client, &ns, &service, revision.as_deref(), follow).await
        }
    }
}

/// Turn a refusal into the CLI's error (the server's lines as they are).
fn refused_exit<T>(r: Result<T, ClientError>) -> anyhow::Result<T> {
    r.map_err(|e| anyhow::anyhow!("{e}"))
}

/// Set (`K=V`) or remove (`K-`) entries of a string map; `None` when it ends up empty.
fn set_map(
    map: &mut Option<BTreeMap<String, String>>,
    entries: &[String],
    flag: &str,
) -> anyhow::Result<()> {
    let mut m = map.take().unwrap_or_default();
    for e in entries {
        match split_kv(e, flag)? {
            (k, Some(v)) => {
                m.insert(k, v);
            }
            (k, None) => {
                m.remove(&k);
            }
        }
    }
    *map = (!m.is_empty()).then_some(m);
    Ok(())
}

/// Apply kn-style flags to a Service's template.
fn edit_template(svc: &mut Service, t: &TemplateArgs) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::{Container, ContainerPort, EnvVar};
    let tpl = &mut svc.spec.configuration.template;
    if tpl.spec.pod.containers.is_empty() {
        tpl.spec.pod.containers.push(Container::default());
    }
    let c = &mut tpl.spec.pod.containers[0];
    if let Some(cmd) = &t.cmd {
        c.command = Some(vec![cmd.clone()]);
        if t.image.is_none() && c.image.is_none() {
            // The process runtime runs the command; the image names what runs.
            c.image = Some(cmd.clone());
        }
    }
    if let Some(image) = &t.image {
        c.image = Some(image.clone());
    }
    if !t.args.is_empty() {
        c.args = Some(t.args.clone());
    }
    if !t.env.is_empty() {
        let mut env = c.env.take().unwrap_or_default();
        for e in &t.env {
            let (k, v) = split_kv(e, "env")?;
            env.retain(|x| x.name != k);
            if let Some(v) = v {
                env.push(EnvVar {
                    name: k,
                    value: Some(v),
                    ..EnvVar::default()
                });
            }
        }
        c.env = (!env.is_empty()).then_some(env);
    }
    if let Some(port) = t.port {
        c.ports = Some(vec![ContainerPort {
            container_port: port,
            ..ContainerPort::default()
        }]);
    }
    if let Some(cc) = t.concurrency_limit {
        tpl.spec.container_concurrency = Some(cc);
    }
    let mut annotations: Vec<String> = t.annotation.clone();
    if let Some(n) = t.scale_min {
        annotations.push(format!("{}={n}", serving_api::autoscaling::MIN_SCALE));
    }
    if let Some(n) = t.scale_max {
        annotations.push(format!("{}={n}", serving_api::autoscaling::MAX_SCALE));
    }
    if !annotations.is_empty() {
        set_map(&mut tpl.metadata.annotations, &annotations, "annotation")?;
    }
    // A new template needs a new name (or none): a user-chosen name belongs to one template.
    tpl.metadata.name = t.revision_name.clone();
    Ok(())
}

/// `--traffic a=50,@latest=50` and `--tag a=old` on a Service's traffic block, as kn does.
fn edit_traffic(
    svc: &mut Service,
    traffic: &[String],
    tags: &[String],
    untags: &[String],
) -> anyhow::Result<()> {
    let target = |rev: &str| -> TrafficTarget {
        if rev == "@latest" {
            TrafficTarget {
                latest_revision: Some(true),
                ..TrafficTarget::default()
            }
        } else {
            TrafficTarget {
                revision_name: Some(rev.to_string()),
                latest_revision: Some(false),
                ..TrafficTarget::default()
            }
        }
    };
    let same = |t: &TrafficTarget, rev: &str| -> bool {
        if rev == "@latest" {
            t.latest_revision == Some(true)
        } else {
            t.revision_name.as_deref() == Some(rev)
        }
    };
    let mut list = std::mem::take(&mut svc.spec.route.traffic);
    if !traffic.is_empty() {
        let mut new: Vec<TrafficTarget> = Vec::new();
        for spec in traffic
            .iter()
            .flat_map(|s| s.split(','))
            .filter(|s| !s.is_empty())
        {
            let (rev, pct) = spec.split_once('=').ok_or_else(|| {
                anyhow::anyhow!("--traffic {spec:?}: expected REVISION=PERCENT or @latest=PERCENT")
            })?;
            let pct: i64 = pct.trim_end_matches('%').parse().map_err(|_| {
                anyhow::anyhow!("--traffic {spec:?}: percent must be a whole number")
            })?;
            // A tag name may stand for the revision it tags.
            let resolved = list
                .iter()
                .find(|t| t.tag.as_deref() == Some(rev))
                .map(|t| {
                    if t.latest_revision == Some(true) {
                        "@latest".to_string()
                    } else {
                        t.revision_name.clone().unwrap_or_else(|| rev.to_string())
                    }
                })
                .unwrap_or_else(|| rev.to_string());
            let mut t = target(&resolved);
            if let Some(old) = list.iter().find(|t| same(t, &resolved) && t.tag.is_some()) {
                t.tag = old.tag.clone();
            }
            t.percent = Some(pct);
            new.push(t);
        }
        // Tagged targets that received no traffic keep their tag at 0%.
        for old in &list {
            if old.tag.is_some() && !new.iter().any(|n| n.tag == old.tag) {
                let mut t = old.clone();
                t.percent = Some(0);
                new.push(t);
            }
        }
        list = new;
    }
    for u in untags {
        let mut found = false;
        for t in list.iter_mut() {
            if t.tag.as_deref() == Some(u.as_str()) {
                t.tag = None;
                found = true;
            }
        }
        if !found {
            anyhow::bail!("--untag {u}: no traffic target has this tag");
        }
        list.retain(|t| !(t.tag.is_none() && t.percent.unwrap_or(0) == 0));
    }
    for spec in tags {
        let (rev, tag) = spec.split_once('=').ok_or_else(|| {
            anyhow::anyhow!("--tag {spec:?}: expected REVISION=TAG or @latest=TAG")
        })?;
        if let Some(t) = list.iter_mut().find(|t| same(t, rev) && t.tag.is_none()) {
            t.tag = Some(tag.to_string());
        } else {
            let mut t = target(rev);
            t.tag = Some(tag.to_string());
            t.percent = Some(0);
            list.push(t);
        }
    }
    svc.spec.route.traffic = list;
    Ok(())
}

async fn service(cmd: ServiceCmd, target: &Target, ns: &str) -> anyhow::Result<i32> {
    let client = Client::connect(target).await?;
    let (name, wait) = match cmd {
        ServiceCmd::Create {
            name,
            template,
            wait,
        } => {
            if template.image.is_none() && template.cmd.is_none() {
                anyhow::bail!("service create: --image or --cmd is required");
            }
            let mut svc = Service::new(&name, ServiceSpec::default());
            svc.metadata.namespace = Some(ns.to_string());
            edit_template(&mut svc, &template)?;
            match client.create_service(&svc).await {
                Ok(_) => {}
                Err(ClientError::Refused(_, 409)) => anyhow::bail!(
                    "service {name:?} already exists in namespace {ns} (use `ebb service update`)"
                ),
                Err(e) => return Err(anyhow::anyhow!("{e}")),
            }
            println!("Service '{name}' created in namespace '{ns}'.");
            (name, wait)
        }
        ServiceCmd::Update {
            name,
            template,
            traffic,
            tag,
            untag,
            wait,
        } => {
            let (_, changed) = client
                .update_service(ns, &name, |svc| {
                    if !template.is_empty() {
                        edit_template(svc, &template)?;
                    }
                    if !traffic.is_empty() || !tag.is_empty() || !untag.is_empty() {
                        edit_traffic(svc, &traffic, &tag, &untag)?;
                    }
                    Ok(())
                })
                .await?;
            let result = if changed { "configured" } else { "unchanged" };
            println!("Service '{name}' {result} in namespace '{ns}'.");
            if !changed {
                return Ok(0);
            }
            (name, wait)
        }
    };
    if wait.no_wait {
        return Ok(0);
    }
    Ok(if wait_ready(&client, ns, &name, &wait).await? {
        0
    } else {
        1
    })
}

fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == json!(type_))
}

/// The URL with local mode's gateway port, so it works in curl as printed (a cluster's URLs
/// are printed as they are).
pub fn reachable_url(url: &str, gateway: Option<SocketAddr>) -> String {
    match gateway {
        Some(g) if !url.is_empty() && g.port() != 80 => format!("{url}:{}", g.port()),
        _ => url.to_string(),
    }
}

/// Wait until the Service has observed its generation and is Ready (true) or failed (false),
/// printing each new condition message on the way.
async fn wait_ready(
    client: &Client,
    ns: &str,
    name: &str,
    wait: &WaitArgs,
) -> anyhow::Result<bool> {
    let started = Instant::now();
    let mut seen = std::collections::BTreeSet::new();
    let mut err = std::io::stderr();
    loop {
        let svc = client.get("Service", ns, name).await?;
        let generation = svc["metadata"]["generation"].as_i64();
        let observed = svc["status"]["observedGeneration"].as_i64();
        let ready = condition(&svc, "Ready");
        let status = ready
            .and_then(|c| c["status"].as_str())
            .unwrap_or("Unknown");
        if observed == generation {
            for c in svc["status"]["conditions"].as_array().into_iter().flatten() {
                let msg = c["message"].as_str().unwrap_or_default();
                let reason = c["reason"].as_str().unwrap_or_default();
                if c["status"] != json!("True") && (!msg.is_empty() || !reason.is_empty()) {
                    let line =
                        format!("{}: {reason} {msg}", c["type"].as_str().unwrap_or_default());
                    if seen.insert(line.clone()) {
                        let _ = writeln!(
                            err,
                            "  {:>5.1}s  {}",
                            started.elapsed().as_secs_f64(),
                            line.trim_end()
                        );
                    }
                }
            }
            // The revision being made says what it waits for (an image pull, a start).
            if status == "Unknown"
                && let Some(rev) = svc["status"]["latestCreatedRevisionName"].as_str()
                && let Ok(r) = client.get("Revision", ns, rev).await
            {
                for c in r["status"]["conditions"].as_array().into_iter().flatten() {
                    let msg = c["message"].as_str().unwrap_or_default();
                    if c["status"] == json!("Unknown") && !msg.is_empty() {
                        let line = format!(
                            "Revision '{rev}' {}: {} {msg}",
                            s(&c["type"]),
                            s(&c["reason"])
                        );
                        if seen.insert(line.clone()) {
                            let _ = writeln!(
                                err,
                                "  {:>5.1}s  {}",
                                started.elapsed().as_secs_f64(),
                                line.trim_end()
                            );
                        }
                    }
                }
            }
            if status == "True" {
                let url = svc["status"]["url"].as_str().unwrap_or_default();
                println!(
                    "Service '{name}' is Ready ({:.1}s):\n{}",
                    started.elapsed().as_secs_f64(),
                    reachable_url(url, client.local.as_ref().map(|e| e.gateway))
                );
                return Ok(true);
            }
            if status == "False" {
                let reason = ready.and_then(|c| c["reason"].as_str()).unwrap_or_default();
                let msg = ready
                    .and_then(|c| c["message"].as_str())
                    .unwrap_or_default();
                eprintln!("Service '{name}' failed: {reason}: {msg}");
                // The revision's own failing condition carries the container's reason.
                if let Some(rev) = svc["status"]["latestCreatedRevisionName"].as_str()
                    && let Ok(r) = client.get("Revision", ns, rev).await
                {
                    for c in r["status"]["conditions"].as_array().into_iter().flatten() {
                        if c["status"] == json!("False") && c["type"] != json!("Ready") {
                            eprintln!(
                                "Revision '{rev}': {} is False: {}: {}",
                                s(&c["type"]),
                                s(&c["reason"]),
                                s(&c["message"])
                            );
                        }
                    }
                }
                return Ok(false);
            }
        }
        if started.elapsed() > wait.wait_timeout {
            eprintln!(
                "Service '{name}' is not Ready after {:?} (Ready: {status})",
                wait.wait_timeout
            );
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn table(head: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{:w$}", c, w = widths[i]))
            .collect();
        println!("{}", s.join("   ").trim_end());
    };
    line(head.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

fn age(obj: &Value) -> String {
    let Some(ts) = obj["metadata"]["creationTimestamp"]
        .as_str()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
    else {
        return String::new();
    };
    let secs = (jiff::Timestamp::now().as_second() - ts.as_second()).max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn ready_cols(obj: &Value) -> (String, String) {
    let c = condition(obj, "Ready");
    (
        c.and_then(|c| c["status"].as_str())
            .unwrap_or("Unknown")
            .into(),
        c.and_then(|c| c["reason"].as_str())
            .unwrap_or_default()
            .into(),
    )
}

fn traffic_summary(obj: &Value) -> String {
    obj["status"]["traffic"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let rev = t["revisionName"].as_str().unwrap_or("?");
            let pct = t["percent"].as_i64().unwrap_or(0);
            match t["tag"].as_str() {
                Some(tag) => format!("{rev}={pct}%({tag})"),
                None => format!("{rev}={pct}%"),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn listing(
    kind: &str,
    objs: &[Value],
    wide: bool,
    gateway: Option<SocketAddr>,
) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let mut rows = Vec::new();
    let head: Vec<&'static str> = match kind {
        "Service" => {
            for o in objs {
                let (ready, reason) = ready_cols(o);
                let mut r = vec![
                    s(&o["metadata"]["name"]),
                    reachable_url(o["status"]["url"].as_str().unwrap_or_default(), gateway),
                    s(&o["status"]["latestReadyRevisionName"]),
                    age(o),
                    ready,
                    reason,
                ];
                if wide {
                    r.push(s(&o["status"]["latestCreatedRevisionName"]));
                    r.push(traffic_summary(o));
                }
                rows.push(r);
            }
            let mut h = vec!["NAME", "URL", "LATEST", "AGE", "READY", "REASON"];
            if wide {
                h.extend(["LATESTCREATED", "TRAFFIC"]);
            }
            h
        }
        "Revision" => {
            for o in objs {
                let (ready, reason) = ready_cols(o);
                let labels = &o["metadata"]["labels"];
                let mut r = vec![
                    s(&o["metadata"]["name"]),
                    s(&labels["serving.knative.dev/service"]),
                    s(&labels["serving.knative.dev/configurationGeneration"]),
                    age(o),
                    s(&o["status"]["actualReplicas"]),
                    s(&o["status"]["desiredReplicas"]),
                    ready,
                    reason,
                ];
                if wide {
                    r.push(s(&o["spec"]["containerConcurrency"]));
                    r.push(s(&o["spec"]["containers"][0]["image"]));
                }
                rows.push(r);
            }
            let mut h = vec![
                "NAME",
                "SERVICE",
                "GENERATION",
                "AGE",
                "ACTUAL",
                "DESIRED",
                "READY",
                "REASON",
            ];
            if wide {
                h.extend(["CONCURRENCY", "IMAGE"]);
            }
            h
        }
        "Route" => {
            for o in objs {
                let (ready, reason) = ready_cols(o);
                rows.push(vec![
                    s(&o["metadata"]["name"]),
                    reachable_url(o["status"]["url"].as_str().unwrap_or_default(), gateway),
                    traffic_summary(o),
                    age(o),
                    ready,
                    reason,
                ]);
            }
            vec!["NAME", "URL", "TRAFFIC", "AGE", "READY", "REASON"]
        }
        _ => {
            for o in objs {
                let (ready, reason) = ready_cols(o);
                rows.push(vec![
                    s(&o["metadata"]["name"]),
                    s(&o["status"]["latestCreatedRevisionName"]),
                    s(&o["status"]["latestReadyRevisionName"]),
                    age(o),
                    ready,
                    reason,
                ]);
            }
            vec![
                "NAME",
                "LATESTCREATED",
                "LATESTREADY",
                "AGE",
                "READY",
                "REASON",
            ]
        }
    };
    (head, rows)
}

fn describe(
    kind: &str,
    o: &Value,
    revisions: &[Value],
    events: &[Value],
    gateway: Option<SocketAddr>,
) {
    println!("Name:         {}", s(&o["metadata"]["name"]));
    println!("Namespace:    {}", s(&o["metadata"]["namespace"]));
    println!("Kind:         {kind}");
    println!("Age:          {}", age(o));
    println!("Generation:   {}", s(&o["metadata"]["generation"]));
    if let Some(url) = o["status"]["url"].as_str() {
        println!("URL:          {}", reachable_url(url, gateway));
    }
    if let Some(a) = o["metadata"]["annotations"]
        .as_object()
        .filter(|a| !a.is_empty())
    {
        println!("Annotations:");
        for (k, v) in a {
            println!("  {k}={}", s(v));
        }
    }
    if kind == "Revision" {
        let c = &o["spec"]["containers"][0];
        println!("Image:        {}", s(&c["image"]));
        if !c["command"].is_null() {
            println!("Command:      {}", s(&c["command"]));
        }
        println!("Concurrency:  {}", s(&o["spec"]["containerConcurrency"]));
        println!("Timeout:      {}s", s(&o["spec"]["timeoutSeconds"]));
        println!(
            "Replicas:     {} actual / {} desired",
            s(&o["status"]["actualReplicas"]),
            s(&o["status"]["desiredReplicas"])
        );
    }
    if o["status"]["traffic"].is_array() {
        println!("Traffic:");
        for t in o["status"]["traffic"].as_array().into_iter().flatten() {
            let latest = if t["latestRevision"] == json!(true) {
                "@latest "
            } else {
                ""
            };
            let tag = t["tag"]
                .as_str()
                .map(|t| format!(" #{t}"))
                .unwrap_or_default();
            let url = t["url"]
                .as_str()
                .map(|u| format!(" {}", reachable_url(u, gateway)))
                .unwrap_or_default();
            println!(
                "  {:>4}%  {latest}{}{tag}{url}",
                t["percent"].as_i64().unwrap_or(0),
                s(&t["revisionName"])
            );
        }
    }
    if kind == "Service" {
        let name = o["metadata"]["name"].as_str().unwrap_or_default();
        let mut mine: Vec<&Value> = revisions
            .iter()
            .filter(|r| r["metadata"]["labels"]["serving.knative.dev/service"] == json!(name))
            .collect();
        mine.sort_by_key(|r| {
            std::cmp::Reverse(
                r["metadata"]["labels"]["serving.knative.dev/configurationGeneration"]
                    .as_str()
                    .and_then(|g| g.parse::<i64>().ok()),
            )
        });
        println!("Revisions:");
        for r in mine {
            let (ready, reason) = ready_cols(r);
            println!(
                "  {}  ready={ready} {reason}  instances={}",
                s(&r["metadata"]["name"]),
                s(&r["status"]["actualReplicas"])
            );
        }
    }
    println!("Conditions:");
    let rows: Vec<Vec<String>> = o["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let ok = match c["status"].as_str() {
                Some("True") => "++",
                Some("False") => "!!",
                _ => "??",
            };
            vec![ok.into(), s(&c["type"]), s(&c["reason"]), s(&c["message"])]
        })
        .collect();
    table(&["OK", "TYPE", "REASON", "MESSAGE"], &rows);
    if !events.is_empty() {
        println!("Events:");
        let rows: Vec<Vec<String>> = events
            .iter()
            .map(|e| {
                let count = e["count"].as_i64().unwrap_or(1);
                vec![
                    s(&e["type"]),
                    s(&e["reason"]),
                    if count > 1 {
                        format!("x{count}")
                    } else {
                        String::new()
                    },
                    s(&e["message"]),
                ]
            })
            .collect();
        table(&["TYPE", "REASON", "COUNT", "MESSAGE"], &rows);
    }
}

async fn logs(
    client: &Client,
    ns: &str,
    service: &str,
    revision: Option<&str>,
    follow: bool,
) -> anyhow::Result<i32> {
    let revs: Vec<String> = match revision {
        Some(r) => vec![r.to_string()],
        None => {
            refused_exit(client.get("Service", ns, service).await)?;
            client
                .list("Revision", Some(ns))
                .await?
                .into_iter()
                .filter(|r| {
                    r["metadata"]["labels"]["serving.knative.dev/service"] == json!(service)
                })
                .filter_map(|r| r["metadata"]["name"].as_str().map(str::to_string))
                .collect()
        }
    };
    let Some(local) = &client.local else {
        anyhow::bail!("logs: instance logs are local mode's (on a cluster: kubectl logs)");
    };
    let root = local.state.join("logs").join(ns);
    let mut offsets: BTreeMap<PathBuf, u64> = BTreeMap::new();
    loop {
        let mut files: Vec<PathBuf> = revs
            .iter()
            .flat_map(|r| {
                std::fs::read_dir(root.join(r))
                    .into_iter()
                    .flatten()
                    .flatten()
            })
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        files.sort();
        let mut out = std::io::stdout().lock();
        for f in files {
            let instance = f
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default();
            let off = offsets.entry(f.clone()).or_insert(0);
            let Ok(bytes) = std::fs::read(&f) else {
                continue;
            };
            if (bytes.len() as u64) < *off {
                *off = 0;
            }
            let new = &bytes[*off as usize..];
            // Only whole lines; a partial last line waits for its end.
            let upto = new.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            for line in String::from_utf8_lossy(&new[..upto]).lines() {
                let _ = writeln!(out, "[{instance}] {line}");
            }
            *off += upto as u64;
        }
        let _ = out.flush();
        if !follow {
            return Ok(0);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(traffic: Value) -> Service {
        let mut v = json!({ "apiVersion": "serving.knative.dev/v1", "kind": "Service", "metadata": {"name": "hello"},
            "spec": { "template": { "spec": { "containers": [{ "image": "hello" }] } } } });
        if !traffic.is_null() {
            v["spec"]["traffic"] = traffic;
        }
        serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"))
    }

    fn v(s: &Service) -> Value {
        serde_json::to_value(s).unwrap_or_default()
    }

    #[test]
    fn traffic_flags_follow_kn() {
        let mut s = svc(json!([{ "latestRevision": true, "percent": 100 }]));
        edit_traffic(&mut s, &["hello-00001=30,@latest=70".into()], &[], &[])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            v(&s)["spec"]["traffic"],
            json!([
                { "revisionName": "hello-00001", "latestRevision": false, "percent": 30 },
                { "latestRevision": true, "percent": 70 },
            ])
        );
        edit_traffic(
            &mut s,
            &[],
            &["hello-00001=old".into(), "hello-00003=next".into()],
            &[],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v(&s)["spec"]["traffic"][0]["tag"], json!("old"));
        assert_eq!(
            v(&s)["spec"]["traffic"][2],
            json!({ "revisionName": "hello-00003", "latestRevision": false, "tag": "next", "percent": 0 })
        );
        // A tag stands for its revision; tagged targets without traffic keep their tag at 0%.
        edit_traffic(&mut s, &["old=100".into()], &[], &[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v(&s)["spec"]["traffic"][0]["percent"], json!(100));
        assert_eq!(
            v(&s)["spec"]["traffic"][0]["revisionName"],
            json!("hello-00001")
        );
        assert_eq!(v(&s)["spec"]["traffic"][1]["tag"], json!("next"));
        edit_traffic(&mut s, &[], &[], &["next".into()]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v(&s)["spec"]["traffic"].as_array().map(Vec::len), Some(1));
        let bad = edit_traffic(&mut s, &["hello-00001".into()], &[], &[]);
        assert!(bad.is_err_and(|e| e.to_string().contains("--traffic \"hello-00001\"")));
    }

    #[test]
    fn template_flags_edit_the_template() {
        let mut s = svc(Value::Null);
        edit_template(
            &mut s,
            &TemplateArgs {
                cmd: Some("hello".into()),
                args: vec!["--greeting".into(), "hi".into()],
                env: vec!["TARGET=world".into()],
                concurrency_limit: Some(1),
                scale_max: Some(10),
                annotation: vec!["autoscaling.knative.dev/window=6s".into()],
                ..TemplateArgs::default()
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let j = v(&s);
        let t = &j["spec"]["template"];
        assert_eq!(t["spec"]["containers"][0]["command"], json!(["hello"]));
        assert_eq!(
            t["spec"]["containers"][0]["args"],
            json!(["--greeting", "hi"])
        );
        assert_eq!(
            t["spec"]["containers"][0]["env"],
            json!([{ "name": "TARGET", "value": "world" }])
        );
        assert_eq!(t["spec"]["containerConcurrency"], json!(1));
        assert_eq!(
            t["metadata"]["annotations"]["autoscaling.knative.dev/max-scale"],
            json!("10")
        );
        assert_eq!(
            t["metadata"]["annotations"]["autoscaling.knative.dev/window"],
            json!("6s")
        );
        edit_template(
            &mut s,
            &TemplateArgs {
                env: vec!["TARGET-".into()],
                ..TemplateArgs::default()
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(v(&s)["spec"]["template"]["spec"]["containers"][0]["env"].is_null());
        let bad = edit_template(
            &mut s,
            &TemplateArgs {
                env: vec!["=x".into()],
                ..TemplateArgs::default()
            },
        );
        assert!(bad.is_err_and(|e| e.to_string().contains("--env \"=x\"")));
    }

    #[test]
    fn kinds_accept_kubectl_names() {
        assert_eq!(kind_name("ksvc").ok(), Some("Service"));
        assert_eq!(kind_name("rev").ok(), Some("Revision"));
        assert_eq!(kind_name("Routes").ok(), Some("Route"));
        assert!(kind_name("pods").is_err());
    }
}
