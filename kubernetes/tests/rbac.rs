//! RBAC from the code: each component's binary runs against its own fake API server through a
//! scenario that exercises it; every request it made (verb, group, resource, namespace) must be
//! allowed by its ServiceAccount's rules in `config/rbac/`, and every rule there must have been
//! used — no missing verb, no spare one.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on broken fixtures

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::fake_api::{Access, FakeApi, Process};

const SYSTEM: &str = "ebb-system";

/// Rules kept although a short test cannot trigger them, each with its reason.
const KEPT: [(&str, &str, &str, &str); 2] = [
    (
        "controller",
        "events.k8s.io",
        "events",
        // kube's Recorder patches an Event series when the same event repeats within minutes.
        "patch",
    ),
    (
        "controller",
        "apps",
        "deployments",
        // A Deployment is patched when its desired form changes (config-deployment reloaded,
        // a Revision's labels edited); the scenario's Deployments are created as desired.
        "patch",
    ),
];

/// Start a component against `api` in the system namespace; returns it and its first line.
fn start(bin: &str, api: &FakeApi, env: &[(&str, &str)]) -> (Process, String) {
    let env: Vec<(&str, &str)> = [("SYSTEM_NAMESPACE", SYSTEM)]
        .into_iter()
        .chain(env.iter().copied())
        .collect();
    api.start_binary(bin, &env)
}

/// (cluster-wide rules, rules in ebb-system) of a component, as (group, resource, verb).
type Rules = (
    BTreeSet<(String, String, String)>,
    BTreeSet<(String, String, String)>,
);

fn rules(component: &str) -> Rules {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../config/rbac/{component}.yaml"));
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out: Rules = Default::default();
    for d in docs {
        let target = match d["kind"].as_str() {
            Some("ClusterRole") => &mut out.0,
            Some("Role") => {
                assert_eq!(d["metadata"]["namespace"], SYSTEM);
                &mut out.1
            }
            _ => continue,
        };
        for r in d["rules"].as_array().unwrap() {
            for g in r["apiGroups"].as_array().unwrap() {
                for res in r["resources"].as_array().unwrap() {
                    for v in r["verbs"].as_array().unwrap() {
                        target.insert((
                            g.as_str().unwrap().into(),
                            res.as_str().unwrap().into(),
                            v.as_str().unwrap().into(),
                        ));
                    }
                }
            }
        }
    }
    out
}

fn check(component: &str, accesses: &[Access]) {
    let (cluster, system) = rules(component);
    let mut used: BTreeSet<(bool, (String, String, String))> = BTreeSet::new();
    for a in accesses {
        let key = (a.group.clone(), a.resource.clone(), a.verb.clone());
        if cluster.contains(&key) {
            used.insert((true, key));
        } else if a.namespace.as_deref() == Some(SYSTEM) && system.contains(&key) {
            used.insert((false, key));
        } else {
            panic!("{component}: {a:?} is not allowed by config/rbac/{component}.yaml");
        }
    }
    let kept = |k: &(String, String, String)| {
        KEPT.iter()
            .any(|(c, g, r, v)| *c == component && k.0 == *g && k.1 == *r && k.2 == *v)
    };
    for k in &cluster {
        assert!(
            used.contains(&(true, k.clone())) || kept(k),
            "{component}: the ClusterRole grants {k:?}, which the code never used"
        );
    }
    for k in &system {
        assert!(
            used.contains(&(false, k.clone())) || kept(k),
            "{component}: the Role grants {k:?}, which the code never used"
        );
    }
}

async fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{what}: not within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Lease renewals happen every 5 s: wait until one did.
async fn renewed(api: &FakeApi) {
    wait_for("a lease renewal", || {
        api.accesses()
            .iter()
            .any(|a| a.resource == "leases" && a.verb == "update")
            .then_some(())
    })
    .await;
}

fn service(labels: Value, env: &str) -> Value {
    json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Service",
        "metadata": { "name": "hello", "namespace": "default", "labels": labels },
        "spec": { "template": { "spec": { "containers": [{
            "image": "ghcr.io/ebb/hello", "env": [{ "name": "TARGET", "value": env }] }] } } },
    })
}

async fn controller_scenario() {
    let api = FakeApi::start().await;
    api.put(json!({ "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": "config-domain", "namespace": SYSTEM }, "data": { "example.com": "" } }));
    // Revision GC keeps no non-active revision: the first goes once the second serves.
    api.put(json!({ "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": "config-gc", "namespace": SYSTEM }, "data": {
            "retain-since-create-time": "disabled", "retain-since-last-active-time": "disabled",
            "min-non-active-revisions": "0", "max-non-active-revisions": "0" } }));
    // DomainMappings claim their domains themselves (and release them when deleted).
    api.put(json!({ "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": "config-network", "namespace": SYSTEM },
        "data": { "autocreate-cluster-domain-claims": "true" } }));
    let (_p, _) = start(
        env!("CARGO_BIN_EXE_ebb-controller"),
        &api,
        &[("EBB_CONTROLLER_ADDRESS", "127.0.0.1:0")],
    );
    api.put(service(json!({}), "one"));
    api.put(json!({ "apiVersion": "serving.knative.dev/v1beta1", "kind": "DomainMapping",
        "metadata": { "name": "shop.example.com", "namespace": "default" },
        "spec": { "ref": { "kind": "Service", "name": "hello", "apiVersion": "serving.knative.dev/v1" } } }));
    let mut d = wait_for("deployment", || {
        api.get("apps/v1/deployments", "default", "hello-00001-deployment")
    })
    .await;
    d["status"] = json!({ "replicas": 1, "readyReplicas": 1 });
    api.put(d);
    wait_for("ingress", || {
        api.get("networking.k8s.io/v1/ingresses", "default", "hello")
    })
    .await;
    // A failing pod (an Event), then cluster-local (the Ingress goes).
    api.put(json!({ "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "p", "namespace": "default", "labels": { "serving.knative.dev/revision": "hello-00001" } },
        "spec": { "containers": [] },
        "status": { "containerStatuses": [{ "name": "user-container", "ready": false, "restartCount": 3, "image": "x", "imageID": "",
            "state": { "waiting": { "reason": "CrashLoopBackOff", "message": "back-off" } } }] } }));
    let stored = api
        .get("serving.knative.dev/v1/services", "default", "hello")
        .unwrap();
    let mut next = service(
        json!({ "networking.knative.dev/visibility": "cluster-local" }),
        "two",
    );
    next["metadata"]["uid"] = stored["metadata"]["uid"].clone();
    next["status"] = stored["status"].clone();
    api.put(next);
    wait_for("ingress removed", || {
        api.get("networking.k8s.io/v1/ingresses", "default", "hello")
            .is_none()
            .then_some(())
    })
    .await;
    wait_for("an event", || {
        (!api.list("events.k8s.io/v1/events").is_empty()).then_some(())
    })
    .await;
    let mut d = wait_for("second deployment", || {
        api.get("apps/v1/deployments", "default", "hello-00002-deployment")
    })
    .await;
    d["status"] = json!({ "replicas": 1, "readyReplicas": 1 });
    api.put(d);
    wait_for("the first revision collected", || {
        api.get("serving.knative.dev/v1/revisions", "default", "hello-00001")
            .is_none()
            .then_some(())
    })
    .await;
    // The mapping deleted through the API: its finalizer releases the claim first.
    let client = ebb_kubernetes::client_for(&api.url()).unwrap();
    kube::Api::<serving_api::DomainMapping>::namespaced(client, "default")
        .delete("shop.example.com", &Default::default())
        .await
        .unwrap();
    wait_for("the claim released", || {
        api.get(
            "networking.internal.knative.dev/v1alpha1/clusterdomainclaims",
            "",
            "shop.example.com",
        )
        .is_none()
        .then_some(())
    })
    .await;
    renewed(&api).await;
    // The test's own delete is not the controller's.
    let accesses: Vec<Access> = api
        .accesses()
        .into_iter()
        .filter(|a| !(a.verb == "delete" && a.resource == "domainmappings"))
        .collect();
    check("controller", &accesses);
}

async fn autoscaler_scenario() {
    let api = FakeApi::start().await;
    api.put(
        json!({ "apiVersion": "serving.knative.dev/v1", "kind": "Revision",
        "metadata": { "name": "hello-00001", "namespace": "default" },
        "spec": { "containers": [{ "image": "x" }] } }),
    );
    api.put(json!({ "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": "hello-00001-deployment", "namespace": "default" },
        "spec": { "replicas": 0, "selector": {}, "template": {} } }));
    let (_p, line) = start(
        env!("CARGO_BIN_EXE_ebb-autoscaler"),
        &api,
        &[("EBB_AUTOSCALER_ADDRESS", "127.0.0.1:0"), ("POD_NAME", "a")],
    );
    let intake: std::net::SocketAddr = line.split_whitespace().last().unwrap().parse().unwrap();
    wait_for("leading", || {
        api.get("coordination.k8s.io/v1/leases", SYSTEM, "ebb-autoscaler")
            .map(|_| ())
    })
    .await;
    // Poke until the Deployment is scaled (the first pokes may arrive before the watch has
    // listed the Revision).
    let poke = r#"{"namespace":"default","revision":"hello-00001","demand":5}"#;
    wait_for("scaled", || {
        let scaled = api
            .get("apps/v1/deployments", "default", "hello-00001-deployment")
            .is_some_and(|d| d["spec"]["replicas"] == 1);
        if !scaled {
            use std::io::{Read, Write};
            if let Ok(mut s) = std::net::TcpStream::connect(intake) {
                let _ = write!(s, "POST /v1/poke HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{poke}", poke.len());
                let mut buf = String::new();
                let _ = s.read_to_string(&mut buf);
            }
        }
        scaled.then_some(())
    })
    .await;
    renewed(&api).await;
    check("autoscaler", &api.accesses());
}

async fn activator_scenario() {
    let api = FakeApi::start().await;
    let (_p, _) = start(
        env!("CARGO_BIN_EXE_ebb-activator"),
        &api,
        &[
            ("EBB_ACTIVATOR_ADDRESS", "127.0.0.1:0"),
            ("EBB_ACTIVATOR_INTERNAL_ADDRESS", "127.0.0.1:0"),
            ("EBB_ACTIVATOR_METRICS_ADDRESS", "127.0.0.1:0"),
        ],
    );
    wait_for("watches", || {
        let a = api.accesses();
        let watched: BTreeSet<String> = a
            .iter()
            .filter(|x| x.verb == "watch")
            .map(|x| x.resource.clone())
            .collect();
        (watched.len() >= 3).then_some(())
    })
    .await;
    check("activator", &api.accesses());
}

/// The webhook makes its certificate Secret, reads the config maps, sets the CA bundle in both
/// configurations, and replaces a Secret whose certificate no longer holds.
async fn webhook_scenario() {
    let api = FakeApi::start().await;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/components/webhook.yaml");
    let configurations: Vec<Value> =
        serde_saphyr::from_multiple::<Value>(&std::fs::read_to_string(path).unwrap())
            .unwrap()
            .into_iter()
            .filter(|d| {
                d["kind"]
                    .as_str()
                    .is_some_and(|k| k.ends_with("WebhookConfiguration"))
            })
            .collect();
    for c in configurations {
        api.put(c);
    }
    let (_p, _) = start(
        env!("CARGO_BIN_EXE_ebb-webhook"),
        &api,
        &[
            ("EBB_WEBHOOK_ADDRESS", "127.0.0.1:0"),
            ("EBB_WEBHOOK_RESYNC_SECONDS", "1"),
        ],
    );
    let secret = wait_for("the certificate Secret", || {
        api.get("core/v1/secrets", SYSTEM, "ebb-webhook-certs")
    })
    .await;
    let mut broken = secret.clone();
    broken["data"]["server-cert.pem"] = json!("");
    api.put(broken);
    wait_for("the Secret replaced and both bundles set", || {
        let a = api.accesses();
        let did =
            |verb: &str, resource: &str| a.iter().any(|x| x.verb == verb && x.resource == resource);
        (did("update", "secrets")
            && did("update", "mutatingwebhookconfigurations")
            && did("update", "validatingwebhookconfigurations")
            && did("watch", "configmaps"))
        .then_some(())
    })
    .await;
    check("webhook", &api.accesses());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_component_uses_exactly_the_verbs_its_manifests_grant() {
    tokio::join!(
        controller_scenario(),
        autoscaler_scenario(),
        activator_scenario(),
        webhook_scenario()
    );
}
