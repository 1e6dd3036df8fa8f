//! Revision → Deployment + Service, checked field by field, and validated as Kubernetes would
//! (`kubernetes-validate --strict`, from PyPI) for every example Service.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on broken fixtures

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;
use k8s_openapi::api::core::v1::{Container, EnvVar};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;
use serving_api::config::DeploymentConfig;
use serving_controller::configuration::desired_revision;
use serving_controller::service::desired_configuration;
use serving_controller::workload::{desired_deployment, desired_service};

fn env_map(c: &Container) -> BTreeMap<String, String> {
    c.env
        .iter()
        .flatten()
        .map(|e: &EnvVar| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect()
}

fn rev_from(spec: serde_json::Value) -> serving_api::Revision {
    let mut svc = service("hello", 1, spec);
    svc.metadata.uid = Some("uid-svc".into());
    serving_api::defaults::default_service(&mut svc, &Default::default());
    let mut cfg = desired_configuration(&svc);
    cfg.metadata.generation = Some(1);
    cfg.metadata.uid = Some("uid-cfg".into());
    let mut rev = desired_revision(&cfg);
    rev.metadata.uid = Some("uid-rev".into());
    rev
}

#[test]
fn deployment_wires_user_container_and_queue_proxy() {
    let rev = rev_from(json!({
        "template": {"spec": {"containerConcurrency": 5, "timeoutSeconds": 120,
            "containers": [{"image": "ebb/hello", "env": [{"name": "TARGET", "value": "x"}],
                            "readinessProbe": {"httpGet": {"path": "/ready"}, "periodSeconds": 3},
                            "livenessProbe": {"tcpSocket": {}}}]}}}));
    let d = desired_deployment(&rev, &DeploymentConfig::default(), Some(1))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(d.metadata.name.as_deref(), Some("hello-00001-deployment"));
    let owner = &d.metadata.owner_references.clone().unwrap_or_default()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Revision", "hello-00001")
    );
    let spec = d.spec.expect("spec");
    assert_eq!(spec.replicas, Some(1));
    assert_eq!(spec.progress_deadline_seconds, Some(600));
    let sel = spec.selector.match_labels.clone().unwrap_or_default();
    let pod_labels = spec
        .template
        .metadata
        .clone()
        .and_then(|m| m.labels)
        .unwrap_or_default();
    assert!(
        sel.iter().all(|(k, v)| pod_labels.get(k) == Some(v)),
        "selector matches the pod labels"
    );
    assert_eq!(
        pod_labels
            .get("serving.knative.dev/service")
            .map(String::as_str),
        Some("hello")
    );
    assert_eq!(
        pod_labels
            .get("serving.knative.dev/revisionUID")
            .map(String::as_str),
        Some("uid-rev")
    );
    let pod = spec.template.spec.expect("pod");
    assert_eq!(
        pod.termination_grace_period_seconds,
        Some(120),
        "grace = revision timeout"
    );
    assert_eq!(pod.containers.len(), 2);

    let user = &pod.containers[0];
    let env = env_map(user);
    assert_eq!(env.get("PORT").map(String::as_str), Some("8080"));
    assert_eq!(
        env.get("K_REVISION").map(String::as_str),
        Some("hello-00001")
    );
    assert_eq!(
        env.get("K_CONFIGURATION").map(String::as_str),
        Some("hello")
    );
    assert_eq!(env.get("K_SERVICE").map(String::as_str), Some("hello"));
    assert_eq!(env.get("TARGET").map(String::as_str), Some("x"));
    assert!(
        user.readiness_probe.is_none(),
        "the queue-proxy runs the readiness probe"
    );
    assert_eq!(
        user.liveness_probe
            .as_ref()
            .and_then(|p| p.tcp_socket.as_ref())
            .map(|t| t.port.clone()),
        Some(IntOrString::Int(8080))
    );
    let pre_stop = user
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|p| p.http_get.as_ref())
        .expect("preStop");
    assert_eq!(
        (pre_stop.port.clone(), pre_stop.path.as_deref()),
        (IntOrString::Int(8022), Some("/wait-for-drain"))
    );
    assert_eq!(user.ports.as_ref().map(|p| p[0].container_port), Some(8080));

    let queue = &pod.containers[1];
    assert_eq!(queue.name, "queue-proxy");
    assert_eq!(
        queue.image.as_deref(),
        Some(DeploymentConfig::default().queue_sidecar_image.as_str())
    );
    let qenv = env_map(queue);
    for (k, v) in [
        ("SERVING_NAMESPACE", "default"),
        ("SERVING_SERVICE", "hello"),
        ("SERVING_CONFIGURATION", "hello"),
        ("SERVING_REVISION", "hello-00001"),
        ("QUEUE_SERVING_PORT", "8012"),
        ("USER_PORT", "8080"),
        ("CONTAINER_CONCURRENCY", "5"),
        ("REVISION_TIMEOUT_SECONDS", "120"),
        ("REVISION_RESPONSE_START_TIMEOUT_SECONDS", "120"),
        ("REVISION_IDLE_TIMEOUT_SECONDS", "0"),
    ] {
        assert_eq!(
            qenv.get(k).map(String::as_str),
            Some(v),
            "queue-proxy env {k}"
        );
    }
    let probe: serde_json::Value = serde_json::from_str(
        qenv.get("SERVING_READINESS_PROBE")
            .map(String::as_str)
            .unwrap_or("null"),
    )
    .unwrap_or_default();
    assert_eq!(probe["httpGet"]["path"], "/ready");
    assert_eq!(
        probe["httpGet"]["port"], 8080,
        "port 0 resolved to the user port"
    );
    let qprobe = queue
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .expect("queue readiness");
    assert_eq!(qprobe.port, IntOrString::Int(8012));
    assert_eq!(
        qprobe
            .http_headers
            .as_ref()
            .map(|h| (h[0].name.as_str(), h[0].value.as_str())),
        Some(("k-network-probe", "queue"))
    );
    assert_eq!(
        queue
            .readiness_probe
            .as_ref()
            .and_then(|p| p.period_seconds),
        Some(3)
    );
    let sc = queue.security_context.as_ref().expect("securityContext");
    assert_eq!(
        (
            sc.run_as_non_root,
            sc.read_only_root_filesystem,
            sc.allow_privilege_escalation
        ),
        (Some(true), Some(true), Some(false))
    );
    let cpu = queue
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("cpu"));
    assert_eq!(cpu.map(|q| q.0.as_str()), Some("25m"));

    // On update the autoscaler owns replicas.
    let d = desired_deployment(&rev, &DeploymentConfig::default(), None)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(d.spec.and_then(|s| s.replicas), None);
}

#[test]
fn h2c_sidecar_and_service_ports() {
    let rev = rev_from(json!({
        "template": {"spec": {"containers": [
            {"name": "app", "image": "ebb/grpc", "ports": [{"name": "h2c", "containerPort": 50051}]},
            {"name": "sidecar", "image": "ebb/sidecar"}]}}}));
    let d = desired_deployment(&rev, &DeploymentConfig::default(), Some(1))
        .unwrap_or_else(|e| panic!("{e}"));
    let pod = d.spec.and_then(|s| s.template.spec).expect("pod");
    assert_eq!(pod.containers.len(), 3);
    assert_eq!(
        env_map(&pod.containers[0]).get("PORT").map(String::as_str),
        Some("50051")
    );
    assert!(
        !env_map(&pod.containers[1]).contains_key("PORT"),
        "only the serving container gets PORT"
    );
    assert_eq!(
        env_map(&pod.containers[1])
            .get("K_REVISION")
            .map(String::as_str),
        Some("hello-00001")
    );
    assert_eq!(
        env_map(&pod.containers[2])
            .get("QUEUE_SERVING_PORT")
            .map(String::as_str),
        Some("8013")
    );

    let s = desired_service(&rev).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.metadata.name.as_deref(), Some("hello-00001"));
    let spec = s.spec.expect("spec");
    let ports = spec.ports.unwrap_or_default();
    assert_eq!(
        (
            ports[0].name.as_deref(),
            ports[0].port,
            ports[0].target_port.clone()
        ),
        (Some("h2c"), 80, Some(IntOrString::Int(8013)))
    );
    assert_eq!(ports[0].app_protocol.as_deref(), Some("kubernetes.io/h2c"));
    assert_eq!(
        spec.selector
            .unwrap_or_default()
            .get("serving.knative.dev/revision")
            .map(String::as_str),
        Some("hello-00001")
    );
}

/// Every example Service's workload passes Kubernetes' own schema, strictly.
#[test]
fn example_workloads_pass_kubernetes_validate() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let out = std::env::temp_dir().join(format!("ebb-workloads-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap_or_else(|e| panic!("{e}"));
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&examples).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let mut svc: serving_api::Service =
            serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        svc.metadata.uid = Some("0b6b2e5c-0000-4000-8000-000000000001".into());
        serving_api::defaults::default_service(&mut svc, &Default::default());
        let mut cfg = desired_configuration(&svc);
        cfg.metadata.generation = Some(1);
        cfg.metadata.uid = Some("0b6b2e5c-0000-4000-8000-000000000002".into());
        let mut rev = desired_revision(&cfg);
        rev.metadata.uid = Some("0b6b2e5c-0000-4000-8000-000000000003".into());
        let d = desired_deployment(&rev, &DeploymentConfig::default(), Some(1))
            .unwrap_or_else(|e| panic!("{e}"));
        let s = desired_service(&rev).unwrap_or_else(|e| panic!("{e}"));
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("x");
        for (kind, yaml) in [
            ("deployment", serde_saphyr::to_string(&d)),
            ("service", serde_saphyr::to_string(&s)),
        ] {
            let file = out.join(format!("{stem}-{kind}.yaml"));
            std::fs::write(&file, yaml.unwrap_or_else(|e| panic!("{e}")))
                .unwrap_or_else(|e| panic!("{e}"));
            files.push(file);
        }
    }
    assert!(files.len() >= 10, "expected the examples' workloads");
    let run = std::process::Command::new("kubernetes-validate")
        .arg("--strict")
        .arg("--quiet")
        .args(&files)
        .output();
    match run {
        Ok(o) => assert!(
            o.status.success(),
            "kubernetes-validate refused a workload:\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) if std::env::var_os("EBB_REQUIRE_KUBE_VALIDATE").is_some() => {
            panic!("kubernetes-validate is required (pip install kubernetes-validate): {e}")
        }
        Err(e) => eprintln!(
            "SKIPPED kubernetes-validate check: {e} (pip install kubernetes-validate; scripts/test.sh requires it)"
        ),
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// A Revision's routing bookkeeping (state, its timestamp, the Routes naming it) stays off its
/// Deployment and pod template: traffic changes must not roll the pods.
#[test]
fn routing_state_does_not_reach_the_deployment() {
    let mut rev = rev_from(json!({"template": {"spec": {"containers": [{"image": "x"}]}}}));
    rev.metadata
        .labels
        .get_or_insert_default()
        .insert(serving_api::labels::ROUTING_STATE.into(), "active".into());
    let annotations = rev.metadata.annotations.get_or_insert_default();
    annotations.insert(
        serving_api::labels::ROUTING_STATE_MODIFIED.into(),
        "2026-12-02T00:00:00Z".into(),
    );
    annotations.insert(serving_api::labels::ROUTES.into(), "hello".into());
    annotations.insert("team".into(), "a".into());
    let d = serving_controller::workload::desired_deployment(&rev, &Default::default(), Some(1))
        .unwrap_or_else(|e| panic!("{e}"));
    let text = serde_json::to_string(&d).unwrap_or_default();
    for key in ["routingState", "serving.knative.dev/routes"] {
        assert!(!text.contains(key), "{key} in {text}");
    }
    let template = d.spec.and_then(|s| s.template.metadata).unwrap_or_default();
    assert_eq!(
        template
            .annotations
            .unwrap_or_default()
            .get("team")
            .map(String::as_str),
        Some("a")
    );
}
