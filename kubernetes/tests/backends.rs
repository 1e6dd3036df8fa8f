//! The Kubernetes backends against a stateful fake API server (no cluster can run here), with
//! real sockets for everything else: leader election over a Lease, the autoscaler scaling a
//! Deployment through `/scale`, and the whole wake path — a request at zero held by the
//! gateway, the poke reaching the autoscaler over HTTP, the Deployment scaled, an endpoint
//! published in an EndpointSlice, the held request answered.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on broken fixtures

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use activator::gateway::{Gateway, serve};
use activator::revisions::Revisions;
use activator::routes::{Listener, RoutingTable};
use activator::throttler::Limits;
use autoscaler::collector::RevisionKey;
use autoscaler::runner::Runner;
use ebb_kubernetes::autoscaler::{
    DeploymentScaler, serve_intake, watch_inputs as autoscaler_inputs,
};
use ebb_kubernetes::gateway::{Reporter, watch_inputs as gateway_inputs, watch_service_endpoints};
use ebb_kubernetes::leader::Elector;
use serde_json::{Value, json};
use serving_api::config::AutoscalerConfig;
use testkit::fake_api::FakeApi;
use tokio::sync::watch;

const DEPLOYMENTS: &str = "apps/v1/deployments";

fn revision(name: &str, annotations: Value) -> Value {
    json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Revision",
        "metadata": { "name": name, "namespace": "default", "annotations": annotations,
                      "labels": { "serving.knative.dev/service": "hello", "serving.knative.dev/configuration": "hello" } },
        "spec": { "containerConcurrency": 0, "timeoutSeconds": 30,
                  "containers": [{ "image": "ebb/hello" }] },
    })
}

fn deployment(rev: &str, replicas: i64) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": format!("{rev}-deployment"), "namespace": "default" },
        "spec": { "replicas": replicas, "selector": { "matchLabels": { "serving.knative.dev/revision": rev } },
                  "template": { "spec": { "containers": [] } } },
    })
}

fn slice(name: &str, ns: &str, labels: Value, addrs: &[SocketAddr]) -> Value {
    let port = addrs.first().map_or(8012, |a| a.port());
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": { "name": name, "namespace": ns, "labels": labels },
        "addressType": "IPv4",
        "ports": [{ "name": "http", "port": port, "protocol": "TCP" }],
        "endpoints": addrs.iter().map(|a| json!({
            "addresses": [a.ip().to_string()], "conditions": { "ready": true },
            "targetRef": { "kind": "Pod", "name": format!("pod-{}", a.ip()), "namespace": ns },
        })).collect::<Vec<_>>(),
    })
}

fn route(rev: &str) -> Value {
    json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Route",
        "metadata": { "name": "hello", "namespace": "default" },
        "spec": { "traffic": [{ "configurationName": "hello", "percent": 100 }] },
        "status": { "url": "http://hello.default.example.com",
                    "traffic": [{ "revisionName": rev, "percent": 100, "latestRevision": true }] },
    })
}

async fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn replicas(api: &FakeApi, rev: &str) -> i64 {
    api.get(DEPLOYMENTS, "default", &format!("{rev}-deployment"))
        .and_then(|d| d["spec"]["replicas"].as_i64())
        .unwrap_or(-1)
}

/// The autoscaler's Lease as the fake API holds it.
fn autoscaler_lease(api: &FakeApi) -> serde_json::Value {
    api.get(
        "coordination.k8s.io/v1/leases",
        "ebb-system",
        "ebb-autoscaler",
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_at_a_time_and_takeover_after_the_lease_expires() {
    let api = FakeApi::start().await;
    let client = ebb_kubernetes::client_for(&api.url()).unwrap();
    let (d, r) = (Duration::from_millis(800), Duration::from_millis(100));
    let mut a = Elector::with_timing(client.clone(), "ebb-system", "ebb-autoscaler", "a", d, r);
    let mut b = Elector::with_timing(client.clone(), "ebb-system", "ebb-autoscaler", "b", d, r);
    assert!(
        a.try_acquire_or_renew().await.unwrap(),
        "a creates the lease"
    );
    assert!(!b.try_acquire_or_renew().await.unwrap(), "b sees a's lease");
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(a.try_acquire_or_renew().await.unwrap(), "a renews");
        assert!(
            !b.try_acquire_or_renew().await.unwrap(),
            "a renewed lease is not b's"
        );
    }
    let lease = autoscaler_lease(&api);
    assert_eq!(lease["spec"]["holderIdentity"], "a");
    // a stops renewing: b waits a full lease duration of an unchanged record, then takes over.
    let stopped = Instant::now();
    loop {
        if b.try_acquire_or_renew().await.unwrap() {
            break;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(5),
            "b never took over"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        stopped.elapsed() >= d,
        "not before the lease expired: {:?}",
        stopped.elapsed()
    );
    let lease = autoscaler_lease(&api);
    assert_eq!(lease["spec"]["holderIdentity"], "b");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
    assert!(!a.try_acquire_or_renew().await.unwrap(), "a lost it");

    // Release hands over at once.
    b.release().await;
    assert!(
        a.try_acquire_or_renew().await.unwrap(),
        "released: a takes it at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_scales_deployments_and_a_follower_does_not() {
    let api = FakeApi::start().await;
    let client = ebb_kubernetes::client_for(&api.url()).unwrap();
    api.put(revision("hello-00001", json!({})));
    api.put(deployment("hello-00001", 0));
    for (leading, want) in [(false, 0), (true, 5)] {
        let (_leader_tx, leader_rx) = watch::channel(leading);
        let metrics = Arc::new(autoscaler::metrics::Metrics::default());
        let scaler = Arc::new(DeploymentScaler::new(client.clone(), leader_rx));
        let (runner, handle) = Runner::new(&AutoscalerConfig::default(), scaler, metrics);
        let tasks = [
            tokio::spawn(runner.run()),
            tokio::spawn(autoscaler_inputs(
                client.clone(),
                handle.clone(),
                watch::channel(AutoscalerConfig::default()).1,
            )),
        ];
        // 300 held requests at 70 per instance; poked again until the watch has listed the
        // revision (a poke for an unknown revision is dropped).
        let key = RevisionKey::new("default", "hello-00001");
        if leading {
            wait_for("scaled to 5", Duration::from_secs(15), || {
                handle.poke(key.clone(), 300.0);
                replicas(&api, "hello-00001") == want
            })
            .await;
            assert!(api.requests().iter().any(|(m, p)| m == "PATCH"
                && p == "/apis/apps/v1/namespaces/default/deployments/hello-00001-deployment/scale"));
        } else {
            for _ in 0..10 {
                handle.poke(key.clone(), 300.0);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert_eq!(
                replicas(&api, "hello-00001"),
                0,
                "a follower applies nothing"
            );
        }
        for t in tasks {
            t.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_at_zero_wakes_the_deployment_through_the_api_and_is_answered() {
    let api = FakeApi::start().await;
    let client = ebb_kubernetes::client_for(&api.url()).unwrap();
    api.put(revision("hello-00001", json!({})));
    api.put(deployment("hello-00001", 0));
    api.put(route("hello-00001"));

    // The autoscaler replica: intake on loopback, published as the autoscaler Service's slice.
    let (_leader_tx, leader_rx) = watch::channel(true);
    let metrics = Arc::new(autoscaler::metrics::Metrics::default());
    let scaler = Arc::new(DeploymentScaler::new(client.clone(), leader_rx.clone()));
    let (runner, handle) = Runner::new(&AutoscalerConfig::default(), scaler, metrics.clone());
    let intake = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    api.put(slice(
        "ebb-autoscaler-abcde",
        "ebb-system",
        json!({ "kubernetes.io/service-name": "ebb-autoscaler" }),
        &[intake.local_addr().unwrap()],
    ));
    tokio::spawn(runner.run());
    tokio::spawn(autoscaler_inputs(
        client.clone(),
        handle.clone(),
        watch::channel(AutoscalerConfig::default()).1,
    ));
    tokio::spawn(serve_intake(intake, handle, metrics, leader_rx));

    // The activator.
    let revisions = Arc::new(Revisions::new(Limits::default()));
    let gw_metrics = Arc::new(activator::metrics::Metrics::default());
    let (routes_tx, routes_rx) = watch::channel(Arc::new(RoutingTable::default()));
    let (targets_tx, targets_rx) = watch::channel(Vec::new());
    let reporter = Reporter::new(targets_rx);
    tokio::spawn(gateway_inputs(
        client.clone(),
        routes_tx,
        tokio::sync::watch::channel(None).0,
        revisions.clone(),
        false,
    ));
    tokio::spawn({
        let client = client.clone();
        async move { watch_service_endpoints(client, "ebb-system", "ebb-autoscaler", targets_tx).await }
    });
    tokio::spawn(
        reporter
            .clone()
            .run(revisions.clone(), gw_metrics.clone(), "activator-0".into()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw_addr = listener.local_addr().unwrap();
    let poker = reporter.clone();
    let (_stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(serve(
        listener,
        Gateway {
            routes: routes_rx.clone(),
            revisions,
            listener: Listener::External,
            poke: Arc::new(move |ns: &str, rev: &str, d: usize| poker.poke(ns, rev, d)),
            metrics: gw_metrics,
            traces: None,
        },
        stop_rx,
    ));
    let mut routes = routes_rx.clone();
    tokio::time::timeout(Duration::from_secs(5), routes.wait_for(|t| !t.is_empty()))
        .await
        .expect("the route reached the gateway")
        .unwrap();
    // A DomainMapping that holds its domain: the gateway serves the domain as the route's host.
    api.put(
        json!({ "apiVersion": "serving.knative.dev/v1beta1", "kind": "DomainMapping",
        "metadata": { "name": "shop.example.org", "namespace": "default" },
        "spec": { "ref": { "kind": "Route", "name": "hello" } },
        "status": { "conditions": [
            { "type": "DomainClaimed", "status": "True" },
            { "type": "ReferenceResolved", "status": "True" } ] } }),
    );
    tokio::time::timeout(
        Duration::from_secs(5),
        routes.wait_for(|t| {
            t.lookup("shop.example.org", Listener::External)
                .is_some_and(|target| target.route == "hello")
        }),
    )
    .await
    .expect("the mapped domain reached the gateway")
    .unwrap();

    // The client request waits at zero.
    let request = tokio::spawn(async move {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Empty<bytes::Bytes>>();
        let req = http::Request::get(format!("http://{gw_addr}/"))
            .header("host", "hello.default.example.com")
            .body(http_body_util::Empty::new())
            .unwrap();
        let resp = client.request(req).await.unwrap();
        let status = resp.status();
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        (status, body)
    });

    // Poke → intake → decision → PATCH /scale on the Deployment.
    wait_for(
        "the deployment scaled from zero",
        Duration::from_secs(5),
        || replicas(&api, "hello-00001") >= 1,
    )
    .await;
    assert!(!request.is_finished(), "held while nothing runs");

    // The "kubelet": a pod (app + queue-proxy) comes up and lands in the revision's slice.
    let app = testkit::spawn_app(|_req| async {
        http::Response::new(testkit::full("hello from the pod"))
    })
    .await;
    let qp =
        testkit::queue_proxy(app, "hello-00001", &[("QUEUE_BIND_ADDRESS", "127.0.0.23")]).await;
    api.put(slice(
        "hello-00001-xyz12",
        "default",
        json!({ "serving.knative.dev/revision": "hello-00001", "kubernetes.io/service-name": "hello-00001" }),
        &[qp.serving],
    ));
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), request)
        .await
        .expect("answered")
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"hello from the pod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_config_autoscaler_applies_to_running_revisions() {
    let api = FakeApi::start().await;
    let client = ebb_kubernetes::client_for(&api.url()).unwrap();
    api.put(revision("hello-00001", json!({})));
    api.put(deployment("hello-00001", 0));
    let (_leader_tx, leader_rx) = watch::channel(true);
    let scaler = Arc::new(DeploymentScaler::new(client.clone(), leader_rx));
    let (runner, handle) = Runner::new(&AutoscalerConfig::default(), scaler, Arc::default());
    let (config_tx, config_rx) = watch::channel(AutoscalerConfig::default());
    tokio::spawn(runner.run());
    tokio::spawn(autoscaler_inputs(client.clone(), handle.clone(), config_rx));
    let key = RevisionKey::new("default", "hello-00001");
    // 30 held requests at the default target (100 × 70%): one instance.
    wait_for("one instance", Duration::from_secs(15), || {
        handle.poke(key.clone(), 30.0);
        replicas(&api, "hello-00001") == 1
    })
    .await;
    // The target drops to 10 × 70% = 7 per instance: the same demand needs five.
    let cfg = AutoscalerConfig::from_map(
        &[(
            "container-concurrency-target-default".to_string(),
            "10".to_string(),
        )]
        .into(),
    )
    .unwrap();
    config_tx.send_replace(cfg);
    wait_for("five instances", Duration::from_secs(15), || {
        handle.poke(key.clone(), 30.0);
        replicas(&api, "hello-00001") == 5
    })
    .await;
}
