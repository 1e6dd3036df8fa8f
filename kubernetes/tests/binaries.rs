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
