//! Drain on SIGTERM under load, `/wait-for-drain`, readiness answers, stats and metrics.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on broken fixtures

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;

async fn app(delay_ms: u64) -> std::net::SocketAddr {
    spawn_app(move |_req| async move {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        http::Response::new(full("ok"))
    })
    .await
}

async fn probe(qp: &QueueProxy) -> u16 {
    let req = http::Request::get(qp.url("/"))
        .header("K-Network-Probe", "queue")
        .body(empty())
        .unwrap();
    client()
        .request(req)
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_nothing() {
    let a = app(20).await;
    let mut qp = QueueProxy::start(
        a.port(),
        &[
            ("DRAIN_QUIET_PERIOD", "500ms"),
            ("CONTAINER_CONCURRENCY", "4"),
        ],
    );
    qp.wait_ready().await;
    assert_eq!(probe(&qp).await, 200);

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let url = qp.url("/");
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (stop, ok, failed, url) = (stop.clone(), ok.clone(), failed.clone(), url.clone());
            tokio::spawn(async move {
                let c = client();
                while !stop.load(Ordering::SeqCst) {
                    match c
                        .request(http::Request::get(&url).body(empty()).unwrap())
                        .await
                    {
                        Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::SeqCst),
                        _ => failed.fetch_add(1, Ordering::SeqCst),
                    };
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    qp.signal("TERM");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        probe(&qp).await,
        503,
        "probes fail as soon as draining starts"
    );
    // Load goes on for a while after SIGTERM (endpoints take time to update everywhere).
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        qp.child.try_wait().unwrap().is_none(),
        "no exit while requests keep arriving"
    );
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    let stopped = Instant::now();
    let status = qp
        .wait_exit(Duration::from_secs(5))
        .expect("exits after the quiet period");
    assert!(status.success(), "{status:?}");
    let waited = stopped.elapsed();
    assert!(
        waited >= Duration::from_millis(350),
        "left before the quiet period: {waited:?}"
    );
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "{} ok",
        ok.load(Ordering::SeqCst)
    );
    assert!(ok.load(Ordering::SeqCst) > 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_drain_blocks_until_drained() {
    let a = app(0).await;
    let mut qp = QueueProxy::start(a.port(), &[("DRAIN_QUIET_PERIOD", "300ms")]);
    qp.wait_ready().await;
    let started = Instant::now();
    let (status, body) = get(
        &client(),
        &format!("http://{}/wait-for-drain", qp.bound.admin),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "drained\n"));
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(
        qp.wait_exit(Duration::from_secs(5))
            .is_some_and(|s| s.success())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_the_app_listens() {
    // Reserve a port, start the proxy against it with nothing listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let qp = QueueProxy::start(port, &[]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(probe(&qp).await, 503);
    let (status, _) = get(&client(), &qp.url("/")).await;
    assert_eq!(
        status, 502,
        "a request to an app that is not there is a 502"
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let opened = Instant::now();
    tokio::spawn(async move {
        loop {
            let _ = listener.accept().await;
        }
    });
    while probe(&qp).await != 200 {
        assert!(
            opened.elapsed() < Duration::from_secs(2),
            "not ready 2 s after the app listens"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_readiness_probe_is_honoured() {
    let healthy = Arc::new(AtomicBool::new(false));
    let h = healthy.clone();
    let a = spawn_app(move |req: http::Request<hyper::body::Incoming>| {
        let h = h.clone();
        async move {
            if req.uri().path() == "/healthz" && !h.load(Ordering::SeqCst) {
                return http::Response::builder().status(500).body(empty()).unwrap();
            }
            http::Response::new(full("ok"))
        }
    })
    .await;
    let probe_json =
        r#"{"httpGet":{"path":"/healthz","port":0},"periodSeconds":1,"failureThreshold":1}"#;
    let qp = QueueProxy::start(a.port(), &[("SERVING_READINESS_PROBE", probe_json)]);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(probe(&qp).await, 503, "the app listens but its probe fails");
    healthy.store(true, Ordering::SeqCst);
    qp.wait_ready().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_and_metrics() {
    let a = app(300).await;
    let qp = QueueProxy::start(a.port(), &[]);
    qp.wait_ready().await;
    let c = client();
    let url = qp.url("/");
    // Collect every window the stats port reports, from before the requests until after.
    let stats_url = format!("http://{}/stats", qp.bound.stats);
    let poller = tokio::spawn(async move {
        let c = client();
        let mut windows = std::collections::BTreeMap::new();
        let until = Instant::now() + Duration::from_millis(3200);
        while Instant::now() < until {
            let (_, body) = get(&c, &stats_url).await;
            let stat = wire::Stat::from_json(body.as_bytes()).expect("stat json");
            windows.insert(stat.seq, stat);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        windows
    });
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Two requests via the activator and one direct, 300 ms each.
    let proxied = |c: &TestClient| {
        c.request(
            http::Request::get(&url)
                .header("K-Proxy-Request", "activator")
                .body(empty())
                .unwrap(),
        )
    };
    let (a1, a2, d) = tokio::join!(proxied(&c), proxied(&c), get(&c, &url));
    assert!(a1.is_ok() && a2.is_ok() && d.0 == 200);
    let windows = poller.await.unwrap();
    let seqs: Vec<u64> = windows.keys().copied().collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "no window was missed: {seqs:?}"
    );
    assert!(windows.values().all(|s| s.pod_name == "hello-00001-pod"));
    let sum = |f: fn(&wire::Stat) -> f64| windows.values().map(f).sum::<f64>();
    assert_eq!(sum(|s| s.request_count), 3.0, "{windows:?}");
    assert_eq!(sum(|s| s.proxied_request_count), 2.0, "{windows:?}");
    // Concurrency × time over all windows: 3 requests × 0.3 s = 0.9, of which 0.6 proxied.
    let area = sum(|s| s.average_concurrency * s.window);
    let proxied_area = sum(|s| s.average_proxied_concurrency * s.window);
    assert!((area - 0.9).abs() < 0.1, "{area} {windows:?}");
    assert!(
        (proxied_area - 0.6).abs() < 0.08,
        "{proxied_area} {windows:?}"
    );

    let (status, text) = get(&c, &format!("http://{}/metrics", qp.bound.metrics)).await;
    assert_eq!(status, 200);
    for name in [
        "revision_request_count_total{",
        "revision_request_latencies_bucket{",
        "revision_app_request_count_total{",
        "revision_app_request_latencies_bucket{",
        "revision_queue_depth{",
        "revision_ready{",
    ] {
        assert!(text.contains(name), "missing {name} in\n{text}");
    }
    assert!(text.contains("response_code_class=\"2xx\""), "{text}");
    assert!(text.contains("revision_name=\"hello-00001\""), "{text}");
    assert!(text.contains("namespace_name=\"default\""), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_probe_probes_a_not_yet_ready_app_at_once() {
    // The app's health check fails until `healthy` flips; a network probe right after the
    // flip must see it ready (the prober alone would notice only at its next 25 ms period).
    let healthy = Arc::new(AtomicBool::new(false));
    let h = healthy.clone();
    let a = spawn_app(move |_req| {
        let h = h.clone();
        async move {
            let mut r = http::Response::new(full("ok"));
            if !h.load(Ordering::SeqCst) {
                *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
            }
            r
        }
    })
    .await;
    let qp = QueueProxy::start(
        a.port(),
        &[(
            "SERVING_READINESS_PROBE",
            r#"{"httpGet":{"path":"/healthz","port":0},"successThreshold":1}"#,
        )],
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(probe(&qp).await, 503, "not ready while the app says so");
    healthy.store(true, Ordering::SeqCst);
    let asked = Instant::now();
    assert_eq!(
        probe(&qp).await,
        200,
        "ready on the first probe after the app is"
    );
    assert!(
        asked.elapsed() < Duration::from_millis(20),
        "{:?}",
        asked.elapsed()
    );
}
