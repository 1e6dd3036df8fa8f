//! Revision → Kubernetes workload: a Deployment whose pods run the user container(s) next to
//! the queue-proxy sidecar, and a Service selecting those pods for the activator.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, HTTPHeader,
    Lifecycle, LifecycleHandler, ObjectFieldSelector, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SecurityContext, Service as KubeService, ServicePort,
    ServiceSpec as KubeServiceSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serving_api::config::DeploymentConfig;
use serving_api::{Revision, labels, naming};

use crate::meta::{controller_ref, inherited_annotations, non_empty, union};

/// Queue-proxy ports (Knative's numbers, so probes and dashboards carry over).
pub mod ports {
    pub const QUEUE_HTTP1: i32 = 8012;
    pub const QUEUE_H2C: i32 = 8013;
    pub const QUEUE_ADMIN: i32 = 8022;
    pub const AUTOSCALER_METRICS: i32 = 9090;
    pub const USER_METRICS: i32 = 9091;
}

pub const QUEUE_CONTAINER: &str = "queue-proxy";
/// Path on the admin port that blocks until the queue-proxy has drained.
pub const DRAIN_PATH: &str = "/wait-for-drain";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildError {
    #[error("revision has no name")]
    NoName,
    #[error("revision {0:?} has no containers")]
    NoContainers(String),
    #[error("revision {0:?}: cannot serialize the readiness probe: {1}")]
    Probe(String, String),
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn env_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
    }
}

fn named(rev: &Revision) -> Result<String, BuildError> {
    rev.metadata
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or(BuildError::NoName)
}

/// Labels every workload object and pod of a revision carries.
pub fn workload_labels(rev: &Revision) -> BTreeMap<String, String> {
    let name = rev.metadata.name.clone().unwrap_or_default();
    let uid = rev.metadata.uid.clone().unwrap_or_default();
    let mut extra = vec![(labels::REVISION, name.as_str()), ("app", name.as_str())];
    if !uid.is_empty() {
        extra.push((labels::REVISION_UID, uid.as_str()));
    }
    let mut out = union(rev.metadata.labels.as_ref(), &extra);
    out.retain(|k, _| !ROUTING_KEYS.contains(&k.as_str()));
    out
}

/// The Route reconciler's bookkeeping on a Revision (routing state, when it changed, which
/// Routes name it). Not carried to its Deployment or pods, as Knative leaves them out: a change
/// of traffic must not roll the pods (their template would change) nor rewrite the Deployment.
const ROUTING_KEYS: [&str; 3] = [
    labels::ROUTING_STATE,
    labels::ROUTING_STATE_MODIFIED,
    labels::ROUTES,
];

fn selector(rev_name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(labels::REVISION.to_string(), rev_name.to_string())])
}

/// The Deployment of a revision. `replicas` is set only when creating (the initial scale);
/// afterwards the autoscaler owns the field, so the apply step passes None.
pub fn desired_deployment(
    rev: &Revision,
    cfg: &DeploymentConfig,
    replicas: Option<i32>,
) -> Result<Deployment, BuildError> {
    let name = named(rev)?;
    let spec = &rev.spec;
    let serving = spec
        .serving_container_index()
        .ok_or_else(|| BuildError::NoContainers(name.clone()))?;
    let (user_port, h2c) = spec.serving_port();
    let timeout = spec.timeout_seconds.unwrap_or(300);
    let labels_all = workload_labels(rev);
    let mut annotations = inherited_annotations(rev.metadata.annotations.as_ref());
    annotations.retain(|k, _| !ROUTING_KEYS.contains(&k.as_str()));
    let rev_labels = rev.metadata.labels.clone().unwrap_or_default();
    let label = |k: &str| rev_labels.get(k).cloned().unwrap_or_default();
    let k_env = [
        env("K_REVISION", name.clone()),
        env("K_CONFIGURATION", label(labels::CONFIGURATION)),
        env("K_SERVICE", label(labels::SERVICE)),
    ];

    let mut user_probe = None;
    let mut containers: Vec<Container> = Vec::with_capacity(spec.pod.containers.len() + 1);
    for (i, c) in spec.pod.containers.iter().enumerate() {
        let mut c = c.clone();
        let mut vars = Vec::new();
        if i == serving {
            vars.push(env("PORT", user_port.to_string()));
            c.ports = Some(vec![ContainerPort {
                name: Some("user-port".into()),
                container_port: user_port,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            }]);
            // The queue-proxy runs the readiness probe itself (faster than the kubelet and
            // aware of draining); the kubelet probes the queue-proxy instead.
            user_probe = c
                .readiness_probe
                .take()
                .map(|p| resolve_probe_port(p, user_port));
            c.liveness_probe = c
                .liveness_probe
                .take()
                .map(|p| resolve_probe_port(p, user_port));
            c.startup_probe = c
                .startup_probe
                .take()
                .map(|p| resolve_probe_port(p, user_port));
        }
        vars.extend(k_env.iter().cloned());
        vars.extend(c.env.take().unwrap_or_default());
        c.env = Some(vars);
        // On shutdown the user container waits until the queue-proxy has drained in-flight
        // requests; otherwise it could exit while requests are still routed to it.
        c.lifecycle = Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                http_get: Some(HTTPGetAction {
                    port: IntOrString::Int(ports::QUEUE_ADMIN),
                    path: Some(DRAIN_PATH.into()),
                    ..HTTPGetAction::default()
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        });
        c.termination_message_policy
            .get_or_insert_with(|| "FallbackToLogsOnError".into());
        containers.push(c);
    }
    let probe_json = match &user_probe {
        Some(p) => {
            serde_json::to_string(p).map_err(|e| BuildError::Probe(name.clone(), e.to_string()))?
        }
        None => String::new(),
    };
    containers.push(queue_container(
        rev,
        &name,
        user_port,
        h2c,
        timeout,
        probe_json,
        user_probe.as_ref(),
        cfg,
    ));

    let pod = PodSpec {
        containers,
        termination_grace_period_seconds: Some(
            spec.pod.termination_grace_period_seconds.unwrap_or(timeout),
        ),
        ..spec.pod.clone()
    };
    Ok(Deployment {
        metadata: ObjectMeta {
            name: Some(naming::deployment_name(&name)),
            namespace: rev.metadata.namespace.clone(),
            labels: non_empty(labels_all.clone()),
            annotations: non_empty(annotations.clone()),
            owner_references: controller_ref(rev).map(|r| vec![r]),
            ..ObjectMeta::default()
        },
        spec: Some(DeploymentSpec {
            replicas,
            selector: LabelSelector {
                match_labels: Some(selector(&name)),
                match_expressions: None,
            },
            progress_deadline_seconds: Some(
                cfg.progress_deadline.as_secs().min(i32::MAX as u64) as i32
            ),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: non_empty(labels_all),
                    annotations: non_empty(annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    })
}

/// Probe port 0 (Knative's "the user port") made explicit, since the kubelet and the
/// queue-proxy both need a number.
fn resolve_probe_port(mut p: Probe, user_port: i32) -> Probe {
    let fix = |port: &mut IntOrString| {
        if *port == IntOrString::Int(0) {
            *port = IntOrString::Int(user_port);
        }
    };
    if let Some(h) = p.http_get.as_mut() {
        fix(&mut h.port);
    }
    if let Some(t) = p.tcp_socket.as_mut() {
        fix(&mut t.port);
    }
    if let Some(g) = p.grpc.as_mut()
        && g.port == 0
    {
        g.port = user_port;
    }
    p
}

#[allow(clippy::too_many_arguments)]
fn queue_container(
    rev: &Revision,
    name: &str,
    user_port: i32,
    h2c: bool,
    timeout: i64,
    probe_json: String,
    user_probe: Option<&Probe>,
    cfg: &DeploymentConfig,
) -> Container {
    let spec = &rev.spec;
    let rev_labels = rev.metadata.labels.clone().unwrap_or_default();
    let label = |k: &str| rev_labels.get(k).cloned().unwrap_or_default();
    let serving_port = if h2c {
        ports::QUEUE_H2C
    } else {
        ports::QUEUE_HTTP1
    };
    let port = |n: &str, p: i32| ContainerPort {
        name: Some(n.into()),
        container_port: p,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    };
    let quantities = |pairs: [(&str, &Option<String>); 2]| {
        let m: BTreeMap<String, Quantity> = pairs
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k.to_string(), Quantity(v.clone()))))
            .collect();
        (!m.is_empty()).then_some(m)
    };
    let env = vec![
        env(
            "SERVING_NAMESPACE",
            rev.metadata.namespace.clone().unwrap_or_default(),
        ),
        env("SERVING_SERVICE", label(labels::SERVICE)),
        env("SERVING_CONFIGURATION", label(labels::CONFIGURATION)),
        env("SERVING_REVISION", name.to_string()),
        env_field("SERVING_POD", "metadata.name"),
        env_field("SERVING_POD_IP", "status.podIP"),
        env("QUEUE_SERVING_PORT", serving_port.to_string()),
        env("QUEUE_ADMIN_PORT", ports::QUEUE_ADMIN.to_string()),
        env("QUEUE_METRICS_PORT", ports::AUTOSCALER_METRICS.to_string()),
        env("USER_METRICS_PORT", ports::USER_METRICS.to_string()),
        env("USER_PORT", user_port.to_string()),
        env("USER_PROTOCOL", if h2c { "h2c" } else { "http1" }),
        env(
            "CONTAINER_CONCURRENCY",
            spec.container_concurrency.unwrap_or(0).to_string(),
        ),
        env("REVISION_TIMEOUT_SECONDS", timeout.to_string()),
        env(
            "REVISION_RESPONSE_START_TIMEOUT_SECONDS",
            spec.response_start_timeout_seconds
                .unwrap_or(timeout)
                .to_string(),
        ),
        env(
            "REVISION_IDLE_TIMEOUT_SECONDS",
            spec.idle_timeout_seconds.unwrap_or(0).to_string(),
        ),
        env("SERVING_READINESS_PROBE", probe_json),
    ];
    Container {
        name: QUEUE_CONTAINER.into(),
        image: Some(cfg.queue_sidecar_image.clone()),
        ports: Some(vec![
            port(if h2c { "h2c" } else { "http1" }, serving_port),
            port("http-queueadm", ports::QUEUE_ADMIN),
            port("http-autometric", ports::AUTOSCALER_METRICS),
            port("http-usermetric", ports::USER_METRICS),
        ]),
        env: Some(env),
        // The kubelet asks the queue-proxy, which answers from its own (faster) probing of
        // the user container and fails at once while draining.
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                port: IntOrString::Int(serving_port),
                path: Some("/".into()),
                http_headers: Some(vec![HTTPHeader {
                    name: wire::HEADER_NETWORK_PROBE.into(),
                    value: wire::PROBE_QUEUE.into(),
                }]),
                ..HTTPGetAction::default()
            }),
            period_seconds: user_probe.and_then(|p| p.period_seconds).filter(|p| *p > 0),
            timeout_seconds: user_probe.and_then(|p| p.timeout_seconds),
            failure_threshold: user_probe.and_then(|p| p.failure_threshold),
            ..Probe::default()
        }),
        resources: Some(ResourceRequirements {
            requests: quantities([
                ("cpu", &cfg.queue_sidecar_cpu_request),
                ("memory", &cfg.queue_sidecar_memory_request),
            ]),
            limits: quantities([
                ("cpu", &cfg.queue_sidecar_cpu_limit),
                ("memory", &cfg.queue_sidecar_memory_limit),
            ]),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            ..SecurityContext::default()
        }),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    }
}

/// The Kubernetes Service selecting a revision's pods; its EndpointSlices tell the activator
/// where the ready instances are.
pub fn desired_service(rev: &Revision) -> Result<KubeService, BuildError> {
    let name = named(rev)?;
    let (_, h2c) = rev.spec.serving_port();
    let port = |n: &str, p: i32, target: i32, app: Option<&str>| ServicePort {
        name: Some(n.into()),
        port: p,
        target_port: Some(IntOrString::Int(target)),
        protocol: Some("TCP".into()),
        app_protocol: app.map(str::to_string),
        ..ServicePort::default()
    };
    let serving = if h2c {
        port("h2c", 80, ports::QUEUE_H2C, Some("kubernetes.io/h2c"))
    } else {
        port("http", 80, ports::QUEUE_HTTP1, None)
    };
    Ok(KubeService {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: rev.metadata.namespace.clone(),
            labels: non_empty(workload_labels(rev)),
            owner_references: controller_ref(rev).map(|r| vec![r]),
            ..ObjectMeta::default()
        },
        spec: Some(KubeServiceSpec {
            selector: Some(selector(&name)),
            ports: Some(vec![
                serving,
                port(
                    "http-autometric",
                    ports::AUTOSCALER_METRICS,
                    ports::AUTOSCALER_METRICS,
                    None,
                ),
                port(
                    "http-usermetric",
                    ports::USER_METRICS,
                    ports::USER_METRICS,
                    None,
                ),
            ]),
            ..KubeServiceSpec::default()
        }),
        status: None,
    })
}
