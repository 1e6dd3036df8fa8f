//! The real-cluster suite: Ebb installed on a Kubernetes cluster (kind, k3d, anything), driven
//! through the API server, requests through the activator.
//!
//! Every test is `#[ignore]`d, so the runner reports it as skipped where no cluster exists;
//! `scripts/test.sh` runs them (`--run-ignored`) when `EBB_E2E_KUBECONFIG` names a kubeconfig,
//! and a test run without it fails saying so. Also:
//! `EBB_E2E_GATEWAY` (host:port where the `ebb-activator` Service is reachable from here, e.g. a
//! kind port mapping or `kubectl port-forward -n ebb-system svc/ebb-activator 8080:80`) and
//! `EBB_E2E_HELLO_IMAGE` (an image of e2e/apps/hello the cluster can pull). Ebb must already be
//! installed (`kubectl apply -f config/crds -f config/100-namespace.yaml -f config/core
//! -f config/rbac -f config/components`) with a config-domain naming `example.com`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on broken fixtures

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::discovery::ApiResource;
use serde_json::{Value, json};

struct Cluster {
    client: kube::Client,
    gateway: String,
    image: String,
    namespace: String,
}

/// The cluster the suite runs against.
async fn cluster(test: &str) -> Option<Cluster> {
    let Some(path) = std::env::var_os("EBB_E2E_KUBECONFIG") else {
        panic!(
            "{test}: EBB_E2E_KUBECONFIG is not set (no Kubernetes cluster to run the real-cluster suite against)"
        );
    };
    let need = |v: &str| {
        std::env::var(v).unwrap_or_else(|_| panic!("{v} must be set with EBB_E2E_KUBECONFIG"))
    };
    let kubeconfig = kube::config::Kubeconfig::read_from(path).expect("EBB_E2E_KUBECONFIG");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("kubeconfig");
    let client = kube::Client::try_from(config).expect("client");
    let namespace = format!("ebb-e2e-{}", std::process::id());
    let ns_api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    ns_api
        .patch(
            &namespace,
            &PatchParams::apply("ebb-e2e").force(),
            &Patch::Apply(json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": namespace } })),
        )
        .await
        .expect("namespace");
    Some(Cluster {
        client,
        gateway: need("EBB_E2E_GATEWAY"),
        image: need("EBB_E2E_HELLO_IMAGE"),
        namespace,
    })
}

fn services_resource() -> ApiResource {
    ApiResource {
        group: "serving.knative.dev".into(),
        version: "v1".into(),
        api_version: "serving.knative.dev/v1".into(),
        kind: "Service".into(),
        plural: "services".into(),
    }
}

impl Cluster {
    fn services(&self) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), &self.namespace, &services_resource())
    }

    async fn apply(&self, name: &str, env: &str, annotations: Value, traffic: Option<Value>) {
        let mut svc = json!({
            "apiVersion": "serving.knative.dev/v1", "kind": "Service",
            "metadata": { "name": name, "namespace": self.namespace },
            "spec": { "template": {
                "metadata": { "annotations": annotations },
                "spec": { "containers": [{ "image": self.image, "env": [{ "name": "TARGET", "value": env }] }] } } },
        });
        if let Some(t) = traffic {
            svc["spec"]["traffic"] = t;
        }
        self.services()
            .patch(
                name,
                &PatchParams::apply("ebb-e2e").force(),
                &Patch::Apply(svc),
            )
            .await
            .expect("apply the Service");
    }

    /// Wait for Ready at the current generation; returns the Service.
    async fn ready(&self, name: &str) -> Value {
        let started = Instant::now();
        loop {
            let svc = serde_json::to_value(self.services().get(name).await.unwrap()).unwrap();
            let observed = svc["status"]["observedGeneration"] == svc["metadata"]["generation"];
            let ready = svc["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            if observed && ready {
                return svc;
            }
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "{name} not Ready: {}",
                svc["status"]
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// One request through the activator with the Service's host.
    async fn get(&self, host: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(&self.gateway)
            .await
            .expect("EBB_E2E_GATEWAY");
        s.write_all(
            format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        let text = String::from_utf8_lossy(&buf).to_string();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (
            status,
            text.split_once("\r\n\r\n")
                .map(|x| x.1.to_string())
                .unwrap_or_default(),
        )
    }

    async fn cleanup(&self) {
        let ns_api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client.clone());
        let _ = ns_api
            .delete(&self.namespace, &DeleteParams::default())
            .await;
    }
}

fn host(url: &Value) -> String {
    url.as_str()
        .unwrap()
        .split("://")
        .nth(1)
        .unwrap()
        .to_string()
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: scripts/test.sh runs it when EBB_E2E_KUBECONFIG is set"]
async fn cluster_serves_scales_to_zero_and_wakes() {
    let Some(c) = cluster("cluster_serves_scales_to_zero_and_wakes").await else {
        return;
    };
    c.apply(
        "hello",
        "cluster",
        json!({ "autoscaling.knative.dev/window": "6s" }),
        None,
    )
    .await;
    let svc = c.ready("hello").await;
    let h = host(&svc["status"]["url"]);
    let (status, body) = c.get(&h).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Hello cluster!"), "{body}");
    // Scale to zero: stable window (6 s) + scale-to-zero grace (30 s), with slack for pods.
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(c.client.clone(), &c.namespace);
    let started = Instant::now();
    loop {
        let d = deployments.get("hello-00001-deployment").await.unwrap();
        if d.spec.and_then(|s| s.replicas) == Some(0) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "never scaled to zero"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let (status, body) = c.get(&h).await;
    assert_eq!(status, 200, "woken from zero: {body}");
    c.cleanup().await;
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: scripts/test.sh runs it when EBB_E2E_KUBECONFIG is set"]
async fn cluster_new_revision_split_and_tag() {
    let Some(c) = cluster("cluster_new_revision_split_and_tag").await else {
        return;
    };
    c.apply("split", "one", json!({}), None).await;
    c.ready("split").await;
    c.apply(
        "split",
        "two",
        json!({}),
        Some(json!([
            { "revisionName": "split-00001", "percent": 50, "tag": "old" },
            { "latestRevision": true, "percent": 50 },
        ])),
    )
    .await;
    let svc = c.ready("split").await;
    let h = host(&svc["status"]["url"]);
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..200 {
        let (status, body) = c.get(&h).await;
        assert_eq!(status, 200);
        *seen.entry(body.trim().to_string()).or_default() += 1;
    }
    let one = seen.get("Hello one! (split-00001)").copied().unwrap_or(0);
    assert!((70..=130).contains(&one), "50/50 over 200: {seen:?}");
    let tagged = svc["status"]["traffic"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tag"] == "old")
        .unwrap()["url"]
        .clone();
    let (status, body) = c.get(&host(&tagged)).await;
    assert_eq!((status, body.trim()), (200, "Hello one! (split-00001)"));
    c.cleanup().await;
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: scripts/test.sh runs it when EBB_E2E_KUBECONFIG is set"]
async fn cluster_webhook_defaults_signs_and_refuses() {
    let Some(c) = cluster("cluster_webhook_defaults_signs_and_refuses").await else {
        return;
    };
    // An invalid Service is refused by the API server itself, with every error named.
    let bad = json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Service",
        "metadata": { "name": "invalid", "namespace": c.namespace },
        "spec": {
            "template": { "spec": { "containerConcurrency": -1, "containers": [{ "image": c.image }] } },
            "traffic": [{ "latestRevision": true, "percent": 120 }],
        },
    });
    let err = c
        .services()
        .patch(
            "invalid",
            &PatchParams::apply("ebb-e2e").force(),
            &Patch::Apply(bad),
        )
        .await
        .expect_err("the webhook refuses it");
    let text = err.to_string();
    assert!(
        text.contains("validation.webhook.serving.ebb.dev")
            && text.contains("spec.traffic[0].percent")
            && text.contains("containerConcurrency"),
        "{text}"
    );
    // A valid one is stored defaulted and signed by the caller.
    c.apply("signed", "one", json!({}), None).await;
    let stored = c.services().get("signed").await.expect("stored");
    let v = serde_json::to_value(&stored).unwrap();
    assert!(
        v["metadata"]["annotations"]["serving.knative.dev/creator"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{v}"
    );
    assert_eq!(v["spec"]["traffic"][0]["percent"], 100, "{v}");
    c.cleanup().await;
}
