//! `ebb-autoscaler` and `ebb-activator` as real processes against the fake API server through a
//! kubeconfig, as they would run against a cluster.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on broken fixtures

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use testkit::fake_api::{FakeApi, Process};

fn term(p: &mut Process) -> std::process::ExitStatus {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(p.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let started = Instant::now();
    loop {
        if let Some(s) = p.0.try_wait().unwrap() {
            return s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "did not exit on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn addr_after(line: &str, word: &str) -> SocketAddr {
    line.split_whitespace()
        .skip_while(|w| *w != word)
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no {word} address in {line:?}"))
}

fn get(addr: SocketAddr, host: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (
        status,
        buf.split_once("\r\n\r\n")
            .map(|x| x.1.to_string())
            .unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscaler_binary_leads_and_hands_over_on_sigterm() {
    let api = FakeApi::start().await;
    let (mut p, line) = api.start_binary(
        env!("CARGO_BIN_EXE_ebb-autoscaler"),
        &[
            ("EBB_AUTOSCALER_ADDRESS", "127.0.0.1:0"),
            ("POD_NAME", "autoscaler-a"),
            ("SYSTEM_NAMESPACE", "ebb-system"),
        ],
    );
    let intake = addr_after(&line, "on");
    let started = Instant::now();
    loop {
        let lease = api.get(
            "coordination.k8s.io/v1/leases",
            "ebb-system",
            "ebb-autoscaler",
        );
        if lease.is_some_and(|l| l["spec"]["holderIdentity"] == "autoscaler-a") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never took the lease"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = tokio::task::spawn_blocking(move || get(intake, "x", "/leader"))
        .await
        .unwrap();
    assert_eq!((status, body.trim()), (200, "true"));
    let (status, _) = tokio::task::spawn_blocking(move || get(intake, "x", "/metrics"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(term(&mut p).success());
    let lease = api
        .get(
            "coordination.k8s.io/v1/leases",
            "ebb-system",
            "ebb-autoscaler",
        )
        .unwrap();
    assert!(
        lease["spec"]["holderIdentity"].is_null(),
        "released on exit: {lease}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscaler_binary_refuses_a_bad_config_map() {
    let api = FakeApi::start().await;
    api.put(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": "config-autoscaler", "namespace": "ebb-system" },
        "data": { "stable-window": "5s" },
    }));
    let out = Command::new(env!("CARGO_BIN_EXE_ebb-autoscaler"))
        .env("KUBECONFIG", {
            let p = std::env::temp_dir().join(format!("ebb-kube-bad-{}", api.addr.port()));
            std::fs::write(&p, api.kubeconfig()).unwrap();
            p
        })
        .env("EBB_AUTOSCALER_ADDRESS", "127.0.0.1:0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("config-autoscaler")
            && err.contains("stable-window")
            && err.contains("between 6s"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activator_binary_routes_from_the_api() {
    let api = FakeApi::start().await;
    let app =
        testkit::spawn_app(|_req| async { http::Response::new(testkit::full("from the pod")) })
            .await;
    let qp = testkit::queue_proxy(app, "web-00001", &[("QUEUE_BIND_ADDRESS", "127.0.0.24")]).await;
    api.put(json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Route",
        "metadata": { "name": "web", "namespace": "default" },
        "spec": { "traffic": [{ "configurationName": "web", "percent": 100 }] },
        "status": { "url": "http://web.default.example.com",
                    "traffic": [{ "revisionName": "web-00001", "percent": 100, "latestRevision": true }] },
    }));
    api.put(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": { "name": "web-00001-abc", "namespace": "default",
                      "labels": { "serving.knative.dev/revision": "web-00001" } },
        "addressType": "IPv4",
        "ports": [{ "name": "http", "port": qp.serving.port(), "protocol": "TCP" }],
        "endpoints": [{ "addresses": [qp.serving.ip().to_string()], "conditions": { "ready": true } }],
    }));
    let (mut p, line) = api.start_binary(
        env!("CARGO_BIN_EXE_ebb-activator"),
        &[
            ("EBB_ACTIVATOR_ADDRESS", "127.0.0.1:0"),
            ("EBB_ACTIVATOR_INTERNAL_ADDRESS", "127.0.0.1:0"),
            ("EBB_ACTIVATOR_METRICS_ADDRESS", "127.0.0.1:0"),
            ("EBB_GRACE", "2"),
        ],
    );
    let public = addr_after(&line, "public");
    let metrics = addr_after(&line, "metrics");
    let started = Instant::now();
    let answer = loop {
        let r = tokio::task::spawn_blocking(move || get(public, "web.default.example.com", "/"))
            .await
            .unwrap();
        if r.0 == 200 || started.elapsed() > Duration::from_secs(10) {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(answer, (200, "from the pod".to_string()));
    let (status, body) =
        tokio::task::spawn_blocking(move || get(public, "nope.default.example.com", "/"))
            .await
            .unwrap();
    assert_eq!(status, 404);
    assert!(body.contains("nope.default.example.com"), "{body}");
    let (status, body) = tokio::task::spawn_blocking(move || get(metrics, "x", "/metrics"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("activator_request_count"), "{body}");
    assert!(term(&mut p).success());
}

fn probe_slice(name: &str, port: u16) -> serde_json::Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": { "name": name, "namespace": "ebb-system",
                      "labels": { "kubernetes.io/service-name": "ebb-activator-probe" } },
        "addressType": "IPv4",
        "ports": [{ "name": "metrics", "port": port, "protocol": "TCP" }],
        "endpoints": [{ "addresses": ["127.0.0.1"], "conditions": { "ready": true } }],
    })
}

fn condition(obj: &serde_json::Value, t: &str) -> (String, String, String) {
    obj["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == t)
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (s("status"), s("reason"), s("message"))
        })
        .unwrap_or_default()
}

/// Ready means routable on Kubernetes: the controller asks every ready activator (the
/// `ebb-activator-probe` endpoints) whether it routes the Route as its status says, and calls
/// the Route (and the Service) Ready only once all do; the first request after Ready is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_calls_a_route_ready_once_every_activator_routes_it() {
    let api = FakeApi::start().await;
    api.put(json!({ "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": "config-domain", "namespace": "ebb-system" }, "data": { "example.com": "" } }));
    let app =
        testkit::spawn_app(|_req| async { http::Response::new(testkit::full("from the pod")) })
            .await;
    let qp =
        testkit::queue_proxy(app, "hello-00001", &[("QUEUE_BIND_ADDRESS", "127.0.0.25")]).await;
    let (_activator, line) = api.start_binary(
        env!("CARGO_BIN_EXE_ebb-activator"),
        &[
            ("EBB_ACTIVATOR_ADDRESS", "127.0.0.1:0"),
            ("EBB_ACTIVATOR_INTERNAL_ADDRESS", "127.0.0.1:0"),
            ("EBB_ACTIVATOR_METRICS_ADDRESS", "127.0.0.1:0"),
        ],
    );
    let public = addr_after(&line, "public");
    let metrics = addr_after(&line, "metrics");
    // A second "activator" that never has the route (one that lags, or lost its watch).
    let lagging = testkit::spawn_app(|_req| async {
        let mut r = http::Response::new(testkit::full("not in this activator's table"));
        *r.status_mut() = http::StatusCode::NOT_FOUND;
        r
    })
    .await;
    api.put(probe_slice("ebb-activator-probe-a", metrics.port()));
    api.put(probe_slice("ebb-activator-probe-b", lagging.port()));
    let (_controller, _) = api.start_binary(
        env!("CARGO_BIN_EXE_ebb-controller"),
        &[
            ("EBB_CONTROLLER_ADDRESS", "127.0.0.1:0"),
            ("SYSTEM_NAMESPACE", "ebb-system"),
            ("POD_NAME", "controller-a"),
        ],
    );
    api.put(json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Service",
        "metadata": { "name": "hello", "namespace": "default" },
        "spec": { "template": { "spec": { "containers": [{ "image": "ghcr.io/ebb/hello" }] } } },
    }));
    let wait = |what: &'static str, f: &dyn Fn() -> bool| {
        let started = Instant::now();
        while !f() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{what}: not within 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let api2 = api.clone();
    tokio::task::spawn_blocking(move || {
        let api = api2;
        wait("deployment", &|| {
            api.get("apps/v1/deployments", "default", "hello-00001-deployment").is_some()
        });
        let mut d = api
            .get("apps/v1/deployments", "default", "hello-00001-deployment")
            .unwrap();
        d["status"] = json!({ "replicas": 1, "readyReplicas": 1, "availableReplicas": 1 });
        api.put(d);
        api.put(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": { "name": "hello-00001-abc", "namespace": "default",
                          "labels": { "serving.knative.dev/revision": "hello-00001" } },
            "addressType": "IPv4",
            "ports": [{ "name": "http", "port": qp.serving.port(), "protocol": "TCP" }],
            "endpoints": [{ "addresses": [qp.serving.ip().to_string()], "conditions": { "ready": true } }],
        }));
        // The Route resolves its traffic, the real activator routes it, the lagging one does
        // not: IngressReady stays Unknown naming the activator behind, the Service not Ready.
        wait("the route waiting on the lagging activator", &|| {
            api.get("serving.knative.dev/v1/routes", "default", "hello")
                .is_some_and(|r| {
                    let (s, reason, message) = condition(&r, "IngressReady");
                    !r["status"]["traffic"].is_null()
                        && s == "Unknown"
                        && reason == "Uninitialized"
                        && message.contains(&lagging.to_string())
                        && !message.contains(&metrics.to_string())
                })
        });
        std::thread::sleep(Duration::from_secs(2));
        let svc = api.get("serving.knative.dev/v1/services", "default", "hello").unwrap();
        assert_ne!(condition(&svc, "Ready").0, "True", "{svc:#}");
        assert_eq!(condition(&svc, "ConfigurationsReady").0, "True", "{svc:#}");
        // What the real activator answers for it: the Route's fingerprint.
        let (status, body) = get(metrics, "x", "/v1/routes/default/hello");
        assert_eq!(status, 200);
        assert!(body.contains("hello.default.example.com"), "{body}");
        assert_eq!(get(metrics, "x", "/v1/routes/default/nope").0, 404);
        assert_eq!(get(metrics, "x", "/readyz").0, 200);
        // The lagging activator leaves: Ready, and the first request is served.
        api.remove("discovery.k8s.io/v1/endpointslices", "ebb-system", "ebb-activator-probe-b");
        wait("service ready", &|| {
            api.get("serving.knative.dev/v1/services", "default", "hello")
                .is_some_and(|s| condition(&s, "Ready").0 == "True")
        });
        assert_eq!(
            get(public, "hello.default.example.com", "/"),
            (200, "from the pod".to_string())
        );
        // Many Services applied at once: each one's first request, sent the moment it is seen
        // Ready, is served (never `404 no route for host`).
        let names: Vec<String> = (0..12).map(|i| format!("par{i}")).collect();
        for n in &names {
            api.put(json!({
                "apiVersion": "serving.knative.dev/v1", "kind": "Service",
                "metadata": { "name": n, "namespace": "default" },
                "spec": { "template": { "spec": { "containers": [{ "image": "ghcr.io/ebb/hello" }] } } },
            }));
        }
        let mut pending: std::collections::BTreeSet<String> = names.iter().cloned().collect();
        let mut started: std::collections::BTreeSet<String> = Default::default();
        let begun = Instant::now();
        while !pending.is_empty() {
            assert!(begun.elapsed() < Duration::from_secs(90), "not Ready: {pending:?}");
            for n in pending.clone() {
                let rev = format!("{n}-00001");
                if !started.contains(&n)
                    && let Some(mut d) =
                        api.get("apps/v1/deployments", "default", &format!("{rev}-deployment"))
                {
                    d["status"] = json!({ "replicas": 1, "readyReplicas": 1, "availableReplicas": 1 });
                    api.put(d);
                    api.put(json!({
                        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                        "metadata": { "name": format!("{rev}-abc"), "namespace": "default",
                                      "labels": { "serving.knative.dev/revision": rev } },
                        "addressType": "IPv4",
                        "ports": [{ "name": "http", "port": qp.serving.port(), "protocol": "TCP" }],
                        "endpoints": [{ "addresses": [qp.serving.ip().to_string()], "conditions": { "ready": true } }],
                    }));
                    started.insert(n.clone());
                }
                let ready = api
                    .get("serving.knative.dev/v1/services", "default", &n)
                    .is_some_and(|s| condition(&s, "Ready").0 == "True");
                if ready {
                    let (status, body) = get(public, &format!("{n}.default.example.com"), "/");
                    assert_eq!((status, body.as_str()), (200, "from the pod"), "{n}'s first request after Ready");
                    pending.remove(&n);
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    })
    .await
    .unwrap();
}
