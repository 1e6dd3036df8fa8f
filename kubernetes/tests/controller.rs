//! The real kube-runtime Controllers against the stateful fake API server: a Service becomes a
//! Configuration, a Revision, a Deployment and a Service, a Route with status, an ExternalName
//! Service and an Ingress; template changes make new Revisions that traffic follows once
//! ready; tags; owner references for cascading deletes; transient API errors retried; failing
//! pods reported on the Revision with an Event.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on broken fixtures

use std::time::{Duration, Instant};

use ebb_kubernetes::controller::{Configs, Context, run};
use serde_json::{Value, json};
use testkit::fake_api::FakeApi;

const SERVICES: &str = "serving.knative.dev/v1/services";
const CONFIGURATIONS: &str = "serving.knative.dev/v1/configurations";
const REVISIONS: &str = "serving.knative.dev/v1/revisions";
const ROUTES: &str = "serving.knative.dev/v1/routes";
const DEPLOYMENTS: &str = "apps/v1/deployments";
const KUBE_SERVICES: &str = "core/v1/services";
const INGRESSES: &str = "networking.k8s.io/v1/ingresses";

fn service(env: &str, traffic: Option<Value>) -> Value {
    let mut s = json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Service",
        "metadata": { "name": "hello", "namespace": "default", "generation": 1 },
        "spec": { "template": { "spec": { "containers": [{
            "image": "ghcr.io/ebb/hello", "env": [{ "name": "TARGET", "value": env }] }] } } },
    });
    if let Some(t) = traffic {
        s["spec"]["traffic"] = t;
    }
    s
}

async fn start() -> FakeApi {
    start_with(&[]).await
}

/// As `start`, with more config maps (name, key, value).
async fn start_with(extra: &[(&str, &str, &str)]) -> FakeApi {
    let api = FakeApi::start().await;
    let client = ebb_kubernetes::client_for(&api.url()).unwrap();
    // As a cluster with a public domain configured (without one, Knative's default is
    // svc.cluster.local and routes are cluster-local).
    let mut maps: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>> =
        [(
            "config-domain".to_string(),
            [("example.com".to_string(), String::new())].into(),
        )]
        .into();
    for (map, k, v) in extra {
        maps.entry(map.to_string())
            .or_default()
            .insert(k.to_string(), v.to_string());
    }
    let ctx = Context::new(
        client,
        Configs::from_maps(&maps).unwrap(),
        "ebb-activator-internal.ebb-system.svc.cluster.local",
        Some("nginx".into()),
        "controller-0",
        None,
    );
    let (_reload_tx, reload_rx) = tokio::sync::watch::channel(0);
    std::mem::forget(_reload_tx);
    tokio::spawn(run(ctx, reload_rx, std::future::pending()));
    api
}

async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{what}: not within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn condition(obj: &Value, t: &str) -> (String, String) {
    obj["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == t)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
        .unwrap_or_default()
}

/// The kubelet's part: the Deployment's pods are up.
fn deployment_ready(api: &FakeApi, rev: &str) {
    let mut d = api
        .get(DEPLOYMENTS, "default", &format!("{rev}-deployment"))
        .unwrap();
    let replicas = d["spec"]["replicas"].as_i64().unwrap_or(1).max(1);
    d["status"] =
        json!({ "replicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas });
    api.put(d);
}

/// Bump a Service's spec as an update through the API would (generation + 1).
fn update(api: &FakeApi, mut svc: Value) {
    let stored = api.get(SERVICES, "default", "hello").unwrap();
    svc["metadata"]["uid"] = stored["metadata"]["uid"].clone();
    svc["metadata"]["generation"] = json!(stored["metadata"]["generation"].as_i64().unwrap() + 1);
    svc["status"] = stored["status"].clone();
    api.put(svc);
}

fn controlled_by(child: &Value, kind: &str, name: &str) -> bool {
    child["metadata"]["ownerReferences"]
        .as_array()
        .is_some_and(|refs| {
            refs.iter().any(|r| {
                r["kind"] == kind
                    && r["name"] == name
                    && r["controller"] == true
                    && r["blockOwnerDeletion"] == true
            })
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_becomes_ready_with_its_children_and_follows_new_revisions() {
    let api = start().await;
    api.put(service("one", None));

    let config = eventually("configuration", || {
        api.get(CONFIGURATIONS, "default", "hello")
    })
    .await;
    assert!(controlled_by(&config, "Service", "hello"));
    let rev = eventually("revision", || api.get(REVISIONS, "default", "hello-00001")).await;
    assert!(controlled_by(&rev, "Configuration", "hello"));
    assert_eq!(
        rev["spec"]["containerConcurrency"], 0,
        "defaulted as the webhook would"
    );
    let deploy = eventually("deployment", || {
        api.get(DEPLOYMENTS, "default", "hello-00001-deployment")
    })
    .await;
    assert!(controlled_by(&deploy, "Revision", "hello-00001"));
    assert_eq!(
        deploy["spec"]["replicas"], 1,
        "created at the initial scale"
    );
    let containers: Vec<&str> = deploy["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(containers, ["user-container", "queue-proxy"]);
    let ksvc = eventually("revision service", || {
        api.get(KUBE_SERVICES, "default", "hello-00001")
    })
    .await;
    assert!(controlled_by(&ksvc, "Revision", "hello-00001"));
    let placeholder = eventually("route service", || {
        api.get(KUBE_SERVICES, "default", "hello")
    })
    .await;
    assert_eq!(placeholder["spec"]["type"], "ExternalName");
    assert_eq!(
        placeholder["spec"]["externalName"],
        "ebb-activator-internal.ebb-system.svc.cluster.local"
    );
    assert!(controlled_by(&placeholder, "Route", "hello"));

    // Not ready until the pods are.
    let svc = api.get(SERVICES, "default", "hello").unwrap();
    assert_ne!(condition(&svc, "Ready").0, "True");
    deployment_ready(&api, "hello-00001");
    let svc = eventually("service ready", || {
        api.get(SERVICES, "default", "hello")
            .filter(|s| condition(s, "Ready").0 == "True")
    })
    .await;
    assert_eq!(svc["status"]["url"], "http://hello.default.example.com");
    assert_eq!(svc["status"]["latestReadyRevisionName"], "hello-00001");
    let ingress = eventually("ingress", || api.get(INGRESSES, "default", "hello")).await;
    assert_eq!(ingress["spec"]["ingressClassName"], "nginx");
    assert_eq!(
        ingress["spec"]["rules"][0]["host"],
        "hello.default.example.com"
    );
    assert_eq!(
        ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"],
        "hello"
    );

    // The autoscaler scales; the controller's later applies never touch replicas.
    let mut d = api
        .get(DEPLOYMENTS, "default", "hello-00001-deployment")
        .unwrap();
    d["spec"]["replicas"] = json!(0);
    api.put(d);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        api.get(DEPLOYMENTS, "default", "hello-00001-deployment")
            .unwrap()["spec"]["replicas"],
        0
    );

    // A template change: a new Revision; traffic moves once it is ready.
    update(&api, service("two", None));
    eventually("second revision", || {
        api.get(REVISIONS, "default", "hello-00002")
    })
    .await;
    eventually("second deployment", || {
        api.get(DEPLOYMENTS, "default", "hello-00002-deployment")
    })
    .await;
    let route = api.get(ROUTES, "default", "hello").unwrap();
    assert_eq!(
        route["status"]["traffic"][0]["revisionName"], "hello-00001",
        "still the ready one"
    );
    deployment_ready(&api, "hello-00002");
    eventually("traffic follows the latest ready", || {
        api.get(ROUTES, "default", "hello")
            .filter(|r| r["status"]["traffic"][0]["revisionName"] == "hello-00002")
    })
    .await;
    // Knative's routing state on the revisions: the routed one active, the other in reserve.
    let state = |name: &str| {
        api.get(REVISIONS, "default", name).map(|r| {
            (
                r["metadata"]["labels"]["serving.knative.dev/routingState"].clone(),
                r["metadata"]["annotations"]["serving.knative.dev/routes"].clone(),
            )
        })
    };
    eventually("hello-00002 active, hello-00001 in reserve", || {
        (state("hello-00002") == Some((json!("active"), json!("hello")))
            && state("hello-00001") == Some((json!("reserve"), Value::Null)))
        .then_some(())
    })
    .await;

    // Tags: a pinned revision with a tag URL, in the Ingress too.
    update(
        &api,
        service(
            "two",
            Some(json!([
                { "revisionName": "hello-00001", "percent": 10, "tag": "old" },
                { "latestRevision": true, "percent": 90 },
            ])),
        ),
    );
    let route = eventually("tagged traffic", || {
        api.get(ROUTES, "default", "hello").filter(|r| {
            r["status"]["traffic"]
                .as_array()
                .is_some_and(|t| t.len() == 2)
        })
    })
    .await;
    let old = route["status"]["traffic"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tag"] == "old")
        .unwrap()
        .clone();
    assert_eq!(old["url"], "http://old-hello.default.example.com");
    assert_eq!(old["percent"], 10);
    eventually("tag host in the ingress", || {
        api.get(INGRESSES, "default", "hello").filter(|i| {
            i["spec"]["rules"].as_array().is_some_and(|r| {
                r.iter()
                    .any(|x| x["host"] == "old-hello.default.example.com")
            })
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_errors_are_retried_and_failing_pods_are_reported() {
    let api = FakeApi::start().await;
    // The first apply of the Configuration fails with a 500; the controller tries again.
    api.fail_once(
        "PATCH",
        "/apis/serving.knative.dev/v1/namespaces/default/configurations/hello",
    );
    let client = ebb_kubernetes::client_for(&api.url()).unwrap();
    let ctx = Context::new(
        client,
        Configs::default(),
        "activator.internal",
        None,
        "controller-0",
        None,
    );
    let (_tx, rx) = tokio::sync::watch::channel(0);
    std::mem::forget(_tx);
    tokio::spawn(run(ctx, rx, std::future::pending()));
    api.put(service("one", None));
    eventually("configuration after a retry", || {
        api.get(CONFIGURATIONS, "default", "hello")
    })
    .await;
    let failed_then_retried = api
        .requests()
        .iter()
        .filter(|(m, p)| {
            m == "PATCH"
                && p == "/apis/serving.knative.dev/v1/namespaces/default/configurations/hello"
        })
        .count();
    assert!(failed_then_retried >= 2, "{failed_then_retried}");

    // The image cannot be pulled.
    eventually("deployment", || {
        api.get(DEPLOYMENTS, "default", "hello-00001-deployment")
    })
    .await;
    api.put(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "hello-00001-deployment-abc", "namespace": "default",
                      "labels": { "serving.knative.dev/revision": "hello-00001" } },
        "spec": { "containers": [] },
        "status": { "containerStatuses": [{
            "name": "user-container", "ready": false, "restartCount": 0, "image": "ghcr.io/ebb/hello", "imageID": "",
            "state": { "waiting": { "reason": "ImagePullBackOff", "message": "Back-off pulling image \"ghcr.io/ebb/hello\"" } },
        }] },
    }));
    let rev = eventually("revision failure", || {
        api.get(REVISIONS, "default", "hello-00001")
            .filter(|r| condition(r, "Ready").0 == "False")
    })
    .await;
    assert_eq!(
        condition(&rev, "ContainerHealthy"),
        ("False".into(), "ImagePullBackOff".into())
    );
    let svc = eventually("service failure", || {
        api.get(SERVICES, "default", "hello")
            .filter(|s| condition(s, "Ready").0 == "False")
    })
    .await;
    assert_eq!(condition(&svc, "ConfigurationsReady").1, "RevisionFailed");
    let events = eventually("an event", || {
        let e = api.list("events.k8s.io/v1/events");
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert!(
        events
            .iter()
            .any(|e| e["reason"] == "ImagePullBackOff" && e["regarding"]["name"] == "hello-00001"),
        "{events:?}"
    );
}

#[test]
fn cluster_local_routes_get_no_ingress() {
    let route: serving_api::Route = serde_json::from_value(json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Route",
        "metadata": { "name": "inner", "namespace": "default", "uid": "u1",
                      "labels": { "networking.knative.dev/visibility": "cluster-local" } },
        "spec": {},
        "status": { "url": "http://inner.default.svc.cluster.local",
                    "traffic": [{ "revisionName": "inner-00001", "percent": 100 }] },
    }))
    .unwrap();
    assert!(ebb_kubernetes::controller::desired_ingress(&route, None).is_none());
    let svc = ebb_kubernetes::controller::placeholder_service(&route, "a.b.svc.cluster.local");
    let v = serde_json::to_value(&svc).unwrap();
    assert_eq!(v["spec"]["externalName"], "a.b.svc.cluster.local");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_service_is_reported_and_its_last_valid_spec_keeps_serving() {
    let api = start().await;
    api.put(service("one", None));
    eventually("first revision", || {
        api.get(REVISIONS, "default", "hello-00001")
    })
    .await;
    // Rules only a webhook would enforce: an annotation out of range, a traffic split that
    // names a revision together with latestRevision.
    let mut bad = service(
        "two",
        Some(json!([{ "latestRevision": true, "revisionName": "hello-00001", "percent": 100 }])),
    );
    bad["spec"]["template"]["metadata"] =
        json!({ "annotations": { "autoscaling.knative.dev/window": "1s" } });
    update(&api, bad);
    let svc = eventually("validation reported", || {
        api.get(SERVICES, "default", "hello")
            .filter(|s| condition(s, "Ready") == ("False".into(), "ValidationFailed".into()))
    })
    .await;
    let message = svc["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("spec.template.metadata.annotations.autoscaling.knative.dev/window"),
        "{message}"
    );
    assert!(message.contains("spec.traffic[0]"), "{message}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        api.get(REVISIONS, "default", "hello-00002").is_none(),
        "no revision from an invalid template"
    );
    let config = api.get(CONFIGURATIONS, "default", "hello").unwrap();
    assert_eq!(
        config["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"], "one",
        "children untouched"
    );
    let events = eventually("an event", || {
        let e = api.list("events.k8s.io/v1/events");
        e.iter()
            .any(|e| e["reason"] == "ValidationFailed")
            .then_some(e)
    })
    .await;
    assert!(!events.is_empty());
}

/// A Route of the Service's name that the Service does not control is not taken over: the
/// Service reports NotOwned (RoutesReady False) and the Route keeps its own traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_route_is_not_taken_over() {
    let api = start().await;
    api.put(json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Route",
        "metadata": { "name": "hello", "namespace": "default", "generation": 1 },
        "spec": { "traffic": [{ "configurationName": "elsewhere", "percent": 100 }] },
    }));
    api.put(service("one", None));
    let svc = eventually("NotOwned on the Service", || {
        api.get(SERVICES, "default", "hello")
            .filter(|s| condition(s, "RoutesReady") == ("False".into(), "NotOwned".into()))
    })
    .await;
    assert_eq!(condition(&svc, "Ready").0, "False", "{svc:#}");
    let route = api.get(ROUTES, "default", "hello").unwrap();
    assert_eq!(
        route["spec"]["traffic"][0]["configurationName"], "elsewhere",
        "not overwritten: {route:#}"
    );
    assert!(!controlled_by(&route, "Service", "hello"));
}

/// config-gc on Kubernetes: with max-non-active-revisions 1, a third ready template deletes the
/// oldest non-active revision; the routed and the other non-active one stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_active_revisions_are_collected_per_config_gc() {
    let api = start_with(&[
        ("config-gc", "retain-since-create-time", "disabled"),
        ("config-gc", "retain-since-last-active-time", "disabled"),
        ("config-gc", "min-non-active-revisions", "0"),
        ("config-gc", "max-non-active-revisions", "1"),
    ])
    .await;
    api.put(service("one", None));
    for (i, env) in ["one", "two", "three"].iter().enumerate() {
        let rev = format!("hello-0000{}", i + 1);
        if i > 0 {
            update(&api, service(env, None));
        }
        eventually("deployment", || {
            api.get(DEPLOYMENTS, "default", &format!("{rev}-deployment"))
        })
        .await;
        deployment_ready(&api, &rev);
        eventually("traffic on the new revision", || {
            api.get(ROUTES, "default", "hello")
                .filter(|r| r["status"]["traffic"][0]["revisionName"] == rev.as_str())
        })
        .await;
    }
    eventually("hello-00001 collected", || {
        api.get(REVISIONS, "default", "hello-00001")
            .is_none()
            .then_some(())
    })
    .await;
    assert!(api.get(REVISIONS, "default", "hello-00002").is_some());
    assert!(api.get(REVISIONS, "default", "hello-00003").is_some());
}

/// Gradual rollout on Kubernetes (config-network rollout-duration 2s): the new revision first
/// takes half of the traffic, the state kept on the Route, then all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_revision_rolls_out_in_steps() {
    let api = start_with(&[("config-network", "rollout-duration", "2s")]).await;
    api.put(service("one", None));
    eventually("deployment", || {
        api.get(DEPLOYMENTS, "default", "hello-00001-deployment")
    })
    .await;
    deployment_ready(&api, "hello-00001");
    eventually("traffic on the first revision", || {
        api.get(ROUTES, "default", "hello")
            .filter(|r| r["status"]["traffic"][0]["revisionName"] == "hello-00001")
    })
    .await;
    update(&api, service("two", None));
    eventually("second deployment", || {
        api.get(DEPLOYMENTS, "default", "hello-00002-deployment")
    })
    .await;
    deployment_ready(&api, "hello-00002");
    let halfway = eventually("half of the traffic on the new revision", || {
        // The annotation and the status are two writes: wait for both.
        api.get(ROUTES, "default", "hello").filter(|r| {
            r["status"]["traffic"]
                .as_array()
                .is_some_and(|t| t.len() == 2)
                && r["metadata"]["annotations"]["serving.knative.dev/rollout"].is_string()
        })
    })
    .await;
    assert_eq!(
        halfway["status"]["traffic"],
        json!([
            {"revisionName": "hello-00002", "latestRevision": true, "percent": 50},
            {"revisionName": "hello-00001", "latestRevision": true, "percent": 50},
        ]),
        "{halfway:#}"
    );
    eventually(
        "all of it on the new revision, the rollout state gone",
        || {
            api.get(ROUTES, "default", "hello").filter(|r| {
            r["status"]["traffic"]
                == json!([{"revisionName": "hello-00002", "latestRevision": true, "percent": 100}])
                && r["metadata"]["annotations"]["serving.knative.dev/rollout"].is_null()
        })
        },
    )
    .await;
}

/// A DomainMapping on Kubernetes: an Ingress for its domain to the Route's Service (TLS from
/// spec.tls), owned by the mapping; Ready once its Service is; another namespace's mapping of
/// the same domain is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_mapping_gets_an_ingress_and_status() {
    const MAPPINGS: &str = "serving.knative.dev/v1beta1/domainmappings";
    let api = start().await;
    api.put(service("one", None));
    eventually("deployment", || {
        api.get(DEPLOYMENTS, "default", "hello-00001-deployment")
    })
    .await;
    deployment_ready(&api, "hello-00001");
    let mapping = |ns: &str| {
        json!({ "apiVersion": "serving.knative.dev/v1beta1", "kind": "DomainMapping",
            "metadata": { "name": "shop.example.org", "namespace": ns, "generation": 1 },
            "spec": { "ref": { "kind": "Service", "name": "hello", "apiVersion": "serving.knative.dev/v1" },
                      "tls": { "secretName": "shop-cert" } } })
    };
    api.put(mapping("default"));
    // Knative's default: no ClusterDomainClaim, no domain (and nothing exposed).
    eventually("refused without a claim", || {
        api.get(MAPPINGS, "default", "shop.example.org")
            .filter(|d| {
                condition(d, "DomainClaimed") == ("False".into(), "DomainAlreadyClaimed".into())
            })
    })
    .await;
    assert!(api.get(INGRESSES, "default", "shop.example.org").is_none());
    // A cluster administrator delegates the domain to the namespace.
    api.put(json!({ "apiVersion": "networking.internal.knative.dev/v1alpha1", "kind": "ClusterDomainClaim",
        "metadata": { "name": "shop.example.org" }, "spec": { "namespace": "default" } }));
    let ingress = eventually("the mapping's ingress", || {
        api.get(INGRESSES, "default", "shop.example.org")
    })
    .await;
    assert_eq!(ingress["spec"]["rules"][0]["host"], "shop.example.org");
    assert_eq!(
        ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"],
        "hello"
    );
    assert_eq!(ingress["spec"]["tls"][0]["secretName"], "shop-cert");
    assert!(controlled_by(&ingress, "DomainMapping", "shop.example.org"));
    let dm = eventually("the mapping Ready", || {
        api.get(MAPPINGS, "default", "shop.example.org")
            .filter(|d| condition(d, "Ready").0 == "True")
    })
    .await;
    assert_eq!(dm["status"]["url"], "http://shop.example.org");
    api.put(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}}));
    api.put(mapping("other"));
    eventually("the second claim refused", || {
        api.get(MAPPINGS, "other", "shop.example.org").filter(|d| {
            condition(d, "DomainClaimed") == ("False".into(), "DomainAlreadyClaimed".into())
        })
    })
    .await;
    assert!(api.get(INGRESSES, "other", "shop.example.org").is_none());
}

/// With `autocreate-cluster-domain-claims: "true"`, a DomainMapping makes its own claim
/// (labelled as made for it) and carries Knative's finalizer; deleting the mapping deletes that
/// claim before the mapping goes, and the domain is free for another namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_autocreated_domain_claim_goes_with_its_mapping() {
    const MAPPINGS: &str = "serving.knative.dev/v1beta1/domainmappings";
    const CLAIMS: &str = "networking.internal.knative.dev/v1alpha1/clusterdomainclaims";
    let api = start_with(&[("config-network", "autocreate-cluster-domain-claims", "true")]).await;
    api.put(service("one", None));
    let mapping = |ns: &str| {
        json!({ "apiVersion": "serving.knative.dev/v1beta1", "kind": "DomainMapping",
            "metadata": { "name": "api.example.org", "namespace": ns, "generation": 1 },
            "spec": { "ref": { "kind": "Service", "name": "hello", "apiVersion": "serving.knative.dev/v1" } } })
    };
    api.put(mapping("default"));
    let claim = eventually("the claim made", || api.get(CLAIMS, "", "api.example.org")).await;
    assert_eq!(claim["spec"]["namespace"], "default");
    assert_eq!(
        claim["metadata"]["labels"]["networking.ebb.dev/autocreated"],
        "true"
    );
    eventually("the finalizer", || {
        api.get(MAPPINGS, "default", "api.example.org")
            .filter(|d| d["metadata"]["finalizers"][0] == "domainmappings.serving.knative.dev")
    })
    .await;
    eventually("claimed", || {
        api.get(MAPPINGS, "default", "api.example.org")
            .filter(|d| condition(d, "DomainClaimed").0 == "True")
    })
    .await;
    // Another namespace's mapping is refused while the claim stands.
    api.put(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}}));
    api.put(mapping("other"));
    eventually("the other refused", || {
        api.get(MAPPINGS, "other", "api.example.org").filter(|d| {
            condition(d, "DomainClaimed") == ("False".into(), "DomainAlreadyClaimed".into())
        })
    })
    .await;
    // Deleted through the API: the claim goes, then the mapping; the other namespace takes it.
    let client = ebb_kubernetes::client_for(&api.url()).unwrap();
    kube::Api::<serving_api::DomainMapping>::namespaced(client, "default")
        .delete("api.example.org", &Default::default())
        .await
        .unwrap();
    eventually("the mapping gone", || {
        api.get(MAPPINGS, "default", "api.example.org")
            .is_none()
            .then_some(())
    })
    .await;
    let claim = eventually("claimed by the other namespace", || {
        api.get(CLAIMS, "", "api.example.org")
            .filter(|c| c["spec"]["namespace"] == "other")
    })
    .await;
    assert_eq!(
        claim["metadata"]["labels"]["networking.ebb.dev/autocreated"],
        "true"
    );
}

/// A permanent error (the API forbids the write) is reported on the object — `Ready` False
/// with the reason — and in a Warning Event, counted in the metrics, and not retried in a hot
/// loop; once the cause is gone, the object's next change reconciles it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_error_is_reported_and_not_hot_looped() {
    const PATH: &str = "/apis/serving.knative.dev/v1/namespaces/default/configurations/hello";
    let api = FakeApi::start().await;
    api.fail_always("PATCH", PATH, 403);
    let client = ebb_kubernetes::client_for(&api.url()).unwrap();
    let ctx = Context::new(
        client,
        Configs::default(),
        "activator.internal",
        None,
        "controller-0",
        None,
    );
    let (_tx, rx) = tokio::sync::watch::channel(0);
    std::mem::forget(_tx);
    tokio::spawn(run(ctx.clone(), rx, std::future::pending()));
    api.put(service("one", None));
    let svc = eventually("the failure on the Service", || {
        api.get(SERVICES, "default", "hello")
            .filter(|s| condition(s, "Ready") == ("False".into(), "Forbidden".into()))
    })
    .await;
    let ready = svc["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()
        .clone();
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("injected: Forbidden"),
        "{ready}"
    );
    eventually("a Warning Event", || {
        api.list("events.k8s.io/v1/events")
            .into_iter()
            .find(|e| e["reason"] == "Forbidden" && e["type"] == "Warning")
    })
    .await;
    // Over three seconds the write is tried at most once more (the report on the status is a
    // change, which is looked at once and finds the same failure, reported already); a
    // transient error would come back every 0.5–2 s, and before this policy every error did
    // every 500 ms.
    let attempts = || {
        api.requests()
            .iter()
            .filter(|(m, p)| m == "PATCH" && p == PATH)
            .count()
    };
    let before = attempts();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = attempts() - before;
    assert!(again <= 1, "retried {again} times in 3 s");
    let metrics = ctx.policy.encode();
    assert!(
        metrics.contains(
            "ebb_controller_reconcile_total{kind=\"Service\",result=\"permanent_error\"}"
        ),
        "{metrics}"
    );
    // The cause removed, a change to the Service reconciles it.
    api.clear_failures();
    update(&api, service("two", None));
    eventually("the configuration applied", || {
        api.get(CONFIGURATIONS, "default", "hello")
    })
    .await;
    assert!(
        ctx.policy
            .encode()
            .contains("ebb_controller_reconcile_total{kind=\"Service\",result=\"success\"}")
    );
}

/// Once the caches are synced, reconciles read nothing from the API server: a new revision
/// rolled out end to end costs watches and writes only (no GET, no LIST).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synced_reconciles_read_from_the_caches_only() {
    let api = start().await;
    api.put(service("one", None));
    eventually("deployment", || {
        api.get(DEPLOYMENTS, "default", "hello-00001-deployment")
    })
    .await;
    deployment_ready(&api, "hello-00001");
    eventually("service ready", || {
        api.get(SERVICES, "default", "hello")
            .filter(|s| condition(s, "Ready").0 == "True")
    })
    .await;
    let reads = || {
        api.accesses()
            .iter()
            .filter(|a| a.verb == "get" || a.verb == "list")
            .count()
    };
    let before = reads();
    update(&api, service("two", None));
    eventually("second deployment", || {
        api.get(DEPLOYMENTS, "default", "hello-00002-deployment")
    })
    .await;
    deployment_ready(&api, "hello-00002");
    eventually("the new revision serving", || {
        api.get(SERVICES, "default", "hello").filter(|s| {
            s["status"]["latestReadyRevisionName"] == "hello-00002"
                && condition(s, "Ready").0 == "True"
        })
    })
    .await;
    let during: Vec<_> = api
        .accesses()
        .into_iter()
        .filter(|a| a.verb == "get" || a.verb == "list")
        .skip(before)
        .collect();
    assert!(
        during.is_empty(),
        "reads from the API server while synced: {during:?}"
    );
}
