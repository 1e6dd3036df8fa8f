//! The gateway over real sockets: routing, split, tags, header hygiene, buffering from zero,
//! queue bounds, timeouts and connect retries.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on broken fixtures

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use activator::gateway::{Gateway, serve};
use activator::revisions::{RevisionSettings, Revisions};
use activator::routes::{Listener, RoutingTable};
use activator::throttler::Limits;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// An app answering with its name and, on /headers, the request headers as JSON.
async fn app(name: &'static str, delay: Duration) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: http::Request<hyper::body::Incoming>| async move {
                        tokio::time::sleep(delay).await;
                        let body = if req.uri().path() == "/echo" {
                            req.into_body().collect().await.unwrap().to_bytes().to_vec()
                        } else if req.uri().path() == "/headers" {
                            let m: serde_json::Map<String, serde_json::Value> = req
                                .headers()
                                .iter()
                                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
                                .collect();
                            serde_json::to_vec(&m).unwrap()
                        } else {
                            name.as_bytes().to_vec()
                        };
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(body))))
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

fn shop_route() -> serving_api::Route {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Route",
        "metadata": {"name": "shop", "namespace": "default"},
        "spec": {},
        "status": {
            "url": "http://shop.default.example.com",
            "traffic": [
                {"revisionName": "shop-00002", "percent": 90, "tag": "current", "url": "http://current-shop.default.example.com"},
                {"revisionName": "shop-00001", "percent": 10, "tag": "old", "url": "http://old-shop.default.example.com"}
            ]
        }
    }))
    .unwrap()
}

struct Gw {
    addr: SocketAddr,
    revisions: Arc<Revisions>,
    metrics: Arc<activator::metrics::Metrics>,
    pokes: Arc<AtomicUsize>,
    _stop: tokio::sync::watch::Sender<bool>,
}

async fn gateway(limits: Limits) -> Gw {
    let table = Arc::new(RoutingTable::build([&shop_route()]));
    let (_tx, routes) = tokio::sync::watch::channel(table);
    std::mem::forget(_tx);
    let revisions = Arc::new(Revisions::new(limits));
    let pokes = Arc::new(AtomicUsize::new(0));
    let p = pokes.clone();
    let metrics = Arc::new(activator::metrics::Metrics::default());
    let gw = Gateway {
        routes,
        revisions: revisions.clone(),
        listener: Listener::External,
        metrics: metrics.clone(),
        traces: None,
        poke: Arc::new(move |_, _, _| {
            p.fetch_add(1, Ordering::SeqCst);
        }),
    };
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (stop, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(serve(l, gw, rx));
    Gw {
        addr,
        revisions,
        metrics,
        pokes,
        _stop: stop,
    }
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

fn client() -> Client {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build_http()
}

async fn get(
    c: &Client,
    gw: &Gw,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, http::HeaderMap) {
    let mut req = http::Request::get(format!("http://{}{path}", gw.addr)).header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = c
        .request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    (status, String::from_utf8_lossy(&body).into_owned(), headers)
}

async fn with_apps(gw: &Gw) {
    let v1 = app("v1", Duration::ZERO).await;
    let v2 = app("v2", Duration::ZERO).await;
    gw.revisions.set_endpoints("default", "shop-00001", &[v1]);
    gw.revisions.set_endpoints("default", "shop-00002", &[v2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_is_404_naming_it() {
    let gw = gateway(Limits::default()).await;
    let (status, body, _) = get(&client(), &gw, "nope.default.example.com", "/", &[]).await;
    assert_eq!(status, 404);
    assert!(body.contains("nope.default.example.com"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_tags_and_header() {
    let gw = gateway(Limits::default()).await;
    with_apps(&gw).await;
    let c = client();
    let n = 10_000;
    let mut old = 0;
    for chunk in 0..(n / 100) {
        let _ = chunk;
        let results = futures_util::future::join_all(
            (0..100).map(|_| get(&c, &gw, "shop.default.example.com", "/", &[])),
        )
        .await;
        for (s, b, _) in results {
            assert_eq!(s, 200);
            if b == "v1" {
                old += 1;
            }
        }
    }
    let share = f64::from(old) / f64::from(n);
    assert!((share - 0.10).abs() <= 0.02, "the 10% revision got {share}");
    assert_eq!(
        get(&c, &gw, "old-shop.default.example.com", "/", &[])
            .await
            .1,
        "v1",
        "tag host"
    );
    assert_eq!(
        get(&c, &gw, "current-shop.default.example.com:80", "/", &[])
            .await
            .1,
        "v2"
    );
    for _ in 0..20 {
        assert_eq!(
            get(
                &c,
                &gw,
                "shop.default.example.com",
                "/",
                &[("Knative-Serving-Tag", "old")]
            )
            .await
            .1,
            "v1",
            "tag header"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_internal_headers_are_ignored() {
    let gw = gateway(Limits::default()).await;
    with_apps(&gw).await;
    let c = client();
    for _ in 0..30 {
        let (s, body, _) = get(
            &c,
            &gw,
            "old-shop.default.example.com",
            "/headers",
            &[
                ("Knative-Serving-Revision", "shop-00002"),
                ("Knative-Serving-Namespace", "kube-system"),
            ],
        )
        .await;
        assert_eq!(s, 200);
        let h: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(
            h.get("knative-serving-revision").is_none()
                && h.get("knative-serving-namespace").is_none(),
            "{h}"
        );
        assert_eq!(h["k-proxy-request"], "activator");
        assert_eq!(h["host"], "old-shop.default.example.com");
        assert!(
            h["forwarded"]
                .as_str()
                .unwrap_or("")
                .contains("for=127.0.0.1"),
            "{h}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_requests_held_at_zero_all_answered() {
    let gw = gateway(Limits::default()).await;
    // A short timeout so that a regression fails in seconds, not after Knative's 300 s.
    gw.revisions.configure(
        "default",
        "shop-00002",
        RevisionSettings {
            container_concurrency: 0,
            timeout: Duration::from_secs(30),
            ..Default::default()
        },
    );
    let c = client();
    let gwr = &gw;
    let started = Instant::now();
    let revisions = gw.revisions.clone();
    let wake = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let a = app("v2", Duration::ZERO).await;
        revisions.set_endpoints("default", "shop-00002", &[a]);
    });
    let results = futures_util::future::join_all(
        (0..1000).map(|_| get(&c, gwr, "current-shop.default.example.com", "/", &[])),
    )
    .await;
    wake.await.unwrap();
    assert!(
        results.iter().all(|(s, b, _)| *s == 200 && b == "v2"),
        "{:?}",
        results.iter().find(|(s, _, _)| *s != 200)
    );
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert!(
        gw.pokes.load(Ordering::SeqCst) >= 1,
        "the autoscaler was poked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_full_is_503_with_retry_after() {
    let gw = gateway(Limits {
        max_queued: 5,
        max_queued_bytes: 1 << 20,
    })
    .await;
    let c = &client();
    let gwr = &gw;
    let results = futures_util::future::join_all((0..20).map(|_| async move {
        tokio::time::timeout(
            Duration::from_millis(800),
            get(c, gwr, "current-shop.default.example.com", "/", &[]),
        )
        .await
    }))
    .await;
    let refused: Vec<_> = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .filter(|(s, _, _)| *s == 503)
        .collect();
    assert_eq!(refused.len(), 15, "5 wait, the rest are refused at once");
    assert!(refused[0].1.contains("queue full"), "{:?}", refused[0].1);
    assert_eq!(
        refused[0].2.get("retry-after").map(|v| v.to_str().unwrap()),
        Some("1")
    );
    // The gateway closes the connection after a refusal, and says so: a client must not send
    // its next request on it.
    assert_eq!(
        refused[0].2.get("connection").map(|v| v.to_str().unwrap()),
        Some("close")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_bytes_bound_is_enforced() {
    // Room for one waiting request's headers, not two.
    let gw = gateway(Limits {
        max_queued: 100,
        max_queued_bytes: 300,
    })
    .await;
    let c = &client();
    let gwr = &gw;
    let big = "x".repeat(150);
    let results = futures_util::future::join_all((0..2).map(|i| {
        let big = big.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(50 * i)).await;
            tokio::time::timeout(
                Duration::from_millis(600),
                get(
                    c,
                    gwr,
                    "current-shop.default.example.com",
                    "/",
                    &[("x-pad", big.as_str())],
                ),
            )
            .await
        }
    }))
    .await;
    let refused: Vec<_> = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .filter(|(s, _, _)| *s == 503)
        .collect();
    assert_eq!(refused.len(), 1, "{results:?}");
    assert!(refused[0].1.contains("bytes"), "{}", refused[0].1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_past_the_revision_timeout_is_504() {
    let gw = gateway(Limits::default()).await;
    gw.revisions.configure(
        "default",
        "shop-00002",
        RevisionSettings {
            timeout: Duration::from_millis(500),
            ..Default::default()
        },
    );
    let started = Instant::now();
    let (status, body, _) = get(&client(), &gw, "current-shop.default.example.com", "/", &[]).await;
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("timeout"), "{body}");
    assert!(started.elapsed() >= Duration::from_millis(450));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_connect_retries_elsewhere() {
    let gw = gateway(Limits::default()).await;
    let live = app("v2", Duration::ZERO).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    gw.revisions
        .set_endpoints("default", "shop-00002", &[dead, live]);
    let c = client();
    for _ in 0..20 {
        let (s, b, _) = get(&c, &gw, "current-shop.default.example.com", "/", &[]).await;
        assert_eq!((s, b.as_str()), (200, "v2"));
    }
    assert_eq!(
        gw.revisions
            .get("default", "shop-00002")
            .throttler
            .endpoints(),
        1,
        "the dead instance left the rotation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_concurrency_reports() {
    let gw = gateway(Limits::default()).await;
    gw.revisions.configure(
        "default",
        "shop-00002",
        RevisionSettings {
            timeout: Duration::from_secs(10),
            ..Default::default()
        },
    );
    let c = client();
    let gwr = &gw;
    // Two requests wait at zero while the gateway samples demand; then an instance appears.
    let held = tokio::spawn({
        let c = c.clone();
        let addr = gw.addr;
        async move {
            let req = |_| {
                let c = c.clone();
                async move {
                    let r = c
                        .request(
                            http::Request::get(format!("http://{addr}/"))
                                .header("host", "current-shop.default.example.com")
                                .body(Full::new(Bytes::new()))
                                .unwrap(),
                        )
                        .await
                        .unwrap();
                    r.status().as_u16()
                }
            };
            futures_util::future::join_all((0..2).map(req)).await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..5 {
        gw.metrics.sample(&gw.revisions);
    }
    let report = gw
        .metrics
        .report(&gw.revisions, "activator-0", Duration::from_secs(1));
    let stat = report
        .iter()
        .find(|(_, rev, _)| rev == "shop-00002")
        .map(|(_, _, s)| s.clone())
        .expect("a report for the held revision");
    assert!((stat.average_concurrency - 2.0).abs() < 1e-9, "{stat:?}");
    assert_eq!(stat.request_count, 2.0);
    gw.revisions
        .set_endpoints("default", "shop-00002", &[app("v2", Duration::ZERO).await]);
    assert_eq!(held.await.unwrap(), vec![200, 200]);
    let _ = get(&c, gwr, "nope.default.example.com", "/", &[]).await;
    // pingora logs a request just after the client has its response: allow a moment.
    let counted = "activator_request_count_total{namespace_name=\"default\",route_name=\"shop\",revision_name=\"shop-00002\",response_code_class=\"2xx\"} 2";
    let mut text = gw.metrics.encode(&gw.revisions);
    for _ in 0..100 {
        if text.contains(counted) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        text = gw.metrics.encode(&gw.revisions);
    }
    for want in [
        "activator_request_count_total{namespace_name=\"default\",route_name=\"shop\",revision_name=\"shop-00002\",response_code_class=\"2xx\"} 2",
        "activator_endpoint_wait_seconds_count{namespace_name=\"default\",revision_name=\"shop-00002\"} 2",
        "activator_endpoints{namespace_name=\"default\",revision_name=\"shop-00002\"} 1",
        "activator_queue_depth{namespace_name=\"default\",revision_name=\"shop-00002\"} 0",
    ] {
        assert!(text.contains(want), "missing {want}\n{text}");
    }
    // The two cold-start waits were each at least the 300 ms before the instance appeared.
    let sum: f64 = text
        .lines()
        .find(|l| l.starts_with("activator_endpoint_wait_seconds_sum{") && l.contains("shop-00002"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .expect("wait sum");
    assert!(sum >= 0.55, "cold-start waits summed to {sum}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_and_queued() {
    let table = Arc::new(RoutingTable::build([&shop_route()]));
    let (_tx, routes) = tokio::sync::watch::channel(table);
    let revisions = Arc::new(Revisions::new(Limits::default()));
    revisions.configure(
        "default",
        "shop-00002",
        RevisionSettings {
            container_concurrency: 1,
            timeout: Duration::from_secs(10),
            h2c: false,
        },
    );
    revisions.set_endpoints(
        "default",
        "shop-00002",
        &[app("slow", Duration::from_millis(400)).await],
    );
    let gw = Gateway {
        routes,
        revisions,
        listener: Listener::External,
        poke: Arc::new(|_, _, _| {}),
        metrics: Default::default(),
        traces: None,
    };
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(activator::gateway::serve_with_grace(
        l,
        gw,
        rx,
        Duration::from_secs(5),
    ));
    let c = client();
    // One request at the instance, one queued behind it (containerConcurrency 1).
    let send = |c: Client| async move {
        let req = http::Request::get(format!("http://{addr}/"))
            .header("host", "current-shop.default.example.com")
            .body(Full::new(Bytes::new()))
            .unwrap();
        c.request(req)
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    let a = tokio::spawn(send(c.clone()));
    let b = tokio::spawn(send(c.clone()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopped = std::time::Instant::now();
    stop.send(true).unwrap();
    assert_eq!(
        (a.await.unwrap(), b.await.unwrap()),
        (200, 200),
        "in-flight and queued requests finish"
    );
    tokio::time::timeout(Duration::from_secs(3), server)
        .await
        .expect("serve returns after draining")
        .unwrap();
    assert!(stopped.elapsed() < Duration::from_secs(3));
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

/// Read one HTTP/1 response with a content-length body from `s`.
async fn read_response(s: &mut tokio::net::TcpStream) -> (u16, String) {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 1024];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "closed before a response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = resp.parse(&buf) {
            let len: usize = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map_or(0, |h| {
                    std::str::from_utf8(h.value).unwrap().parse().unwrap()
                });
            if buf.len() >= head + len {
                let status = resp.code.unwrap();
                return (
                    status,
                    String::from_utf8_lossy(&buf[head..head + len]).into_owned(),
                );
            }
        }
    }
}

/// Raw HTTP/1 on one connection: admission reads each head (even one split across writes)
/// before pingora, which then reads the same bytes; keep-alive carries on between requests;
/// what admission cannot route (no Host, a malformed head) is still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_http1_heads_keep_alive_and_bad_input() {
    use tokio::io::AsyncWriteExt;
    let gw = gateway(Limits::default()).await;
    with_apps(&gw).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    for i in 0..3 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: current-shop.default.exa")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        s.write_all(b"mple.com\r\nUser-Agent: raw\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(
            read_response(&mut s).await,
            (200, "v2".to_string()),
            "request {i}"
        );
    }
    // A POST body that arrives with its head reaches the app intact.
    s.write_all(
        b"POST / HTTP/1.1\r\nHost: old-shop.default.example.com\r\nContent-Length: 4\r\n\r\nbody",
    )
    .await
    .unwrap();
    assert_eq!(read_response(&mut s).await, (200, "v1".to_string()));
    // HTTP/1.0 without Host: routed (and refused) by pingora on the same path.
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    assert_eq!(read_response(&mut s).await.0, 404);
    // Not HTTP at all: 400.
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"\x16\x03\x01 not http\r\n\r\n").await.unwrap();
    assert_eq!(read_response(&mut s).await.0, 400);
}

/// How a raw upstream treats its connections.
#[derive(Clone, Copy)]
enum Conns {
    /// Closes each connection after its first reply, whatever the reply claims.
    CloseAfterReply,
    /// Replies to the first request on each connection and keeps it open; a second request
    /// on it is read and the connection closed without a reply (a keep-alive connection the
    /// instance dropped just as it was reused).
    DropSecondRequest,
}

/// A raw upstream on loopback: each accepted connection goes to `serve`, with a sender for the
/// request heads it reads; the receiver comes back with the address.
async fn raw_server<F, Fut>(serve: F) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>)
where
    F: Fn(tokio::net::TcpStream, tokio::sync::mpsc::UnboundedSender<String>) -> Fut
        + Send
        + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(serve(s, tx.clone()));
        }
    });
    (addr, rx)
}

/// Read one request head, byte by byte (nothing past it); `None` when the connection ends.
async fn read_head(s: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        match s.read(&mut b).await {
            Ok(1) => head.push(b[0]),
            _ => return None,
        }
    }
    Some(head)
}

/// A raw upstream: reads request heads, records them, and writes `reply` as `conns` says.
async fn raw_app(
    reply: &'static [u8],
    conns: Conns,
) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use tokio::io::AsyncWriteExt;
    raw_server(move |mut s, tx| async move {
        for n in 0.. {
            let Some(head) = read_head(&mut s).await else {
                return;
            };
            let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
            if matches!(conns, Conns::DropSecondRequest) && n == 1 {
                return;
            }
            if s.write_all(reply).await.is_err() || matches!(conns, Conns::CloseAfterReply) {
                return;
            }
        }
    })
    .await
}

/// Plain requests (HTTP/1.1, safe method, no body) take the gateway's short path: hop-by-hop
/// headers do not reach the instance, proxy headers do, and a response framed only by the
/// connection's close is re-framed so that the client's connection lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_requests_strip_hop_by_hop_and_reframe_close_delimited_responses() {
    use tokio::io::AsyncWriteExt;
    let gw = gateway(Limits::default()).await;
    let (addr, mut heads) = raw_app(
        b"HTTP/1.0 200 OK\r\n\r\nuntil close",
        Conns::CloseAfterReply,
    )
    .await;
    gw.revisions.set_endpoints("default", "shop-00002", &[addr]);
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    for _ in 0..2 {
        s.write_all(
            b"GET /x HTTP/1.1\r\nHost: current-shop.default.example.com\r\nConnection: keep-alive\r\n\
              Keep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: Basic eA==\r\n\r\n",
        )
        .await
        .unwrap();
        let (status, body) = read_chunked_or_sized(&mut s).await;
        assert_eq!((status, body.as_str()), (200, "until close"));
        let head = heads.recv().await.unwrap().to_ascii_lowercase();
        for hop in ["keep-alive", "te:", "proxy-authorization", "connection:"] {
            assert!(!head.contains(hop), "{hop} forwarded: {head}");
        }
        assert!(head.starts_with("get /x http/1.1\r\n"), "{head}");
        assert!(head.contains("k-proxy-request: activator"), "{head}");
        assert!(head.contains("x-forwarded-for: 127.0.0.1"), "{head}");
    }
}

/// Read one response whose body is chunked or sized: (status, body).
async fn read_chunked_or_sized(s: &mut tokio::net::TcpStream) -> (u16, String) {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = resp.parse(&buf) {
            let status = resp.code.unwrap();
            let find = |n: &str| {
                resp.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(n))
                    .map(|h| String::from_utf8_lossy(h.value).to_ascii_lowercase())
            };
            let rest = &buf[head..];
            if find("transfer-encoding").as_deref() == Some("chunked") {
                if rest.ends_with(b"0\r\n\r\n") {
                    let mut body = Vec::new();
                    let mut r = rest;
                    loop {
                        let line = r.iter().position(|b| *b == b'\r').unwrap();
                        let n = usize::from_str_radix(std::str::from_utf8(&r[..line]).unwrap(), 16)
                            .unwrap();
                        if n == 0 {
                            break;
                        }
                        body.extend_from_slice(&r[line + 2..line + 2 + n]);
                        r = &r[line + 2 + n + 2..];
                    }
                    return (status, String::from_utf8(body).unwrap());
                }
            } else {
                let len: usize = find("content-length").unwrap().parse().unwrap();
                if rest.len() >= len {
                    return (status, String::from_utf8_lossy(&rest[..len]).into_owned());
                }
            }
        }
        let mut chunk = [0u8; 1024];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "closed mid-response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// An instance answering by path, on keep-alive connections it counts: `/echo` returns the
/// request body, `/chunked` a chunked body with an extension and a trailer, `HEAD /head` a
/// length without a body, `/early` a 103 before its answer, `/bye` its answer then closes.
async fn shapes_app() -> (SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let (addr, _heads) = raw_server(move |mut s, _tx| {
        count.fetch_add(1, Ordering::SeqCst);
        async move {
            loop {
                let Some(head) = read_head(&mut s).await else {
                    return;
                };
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map_or(0, |v| v.trim().parse().unwrap());
                let mut body = vec![0u8; len];
                s.read_exact(&mut body).await.unwrap();
                let path = head.split(' ').nth(1).unwrap_or_default().to_string();
                let reply: Vec<u8> = match path.as_str() {
                    "/echo" => {
                        let mut r = format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n")
                            .into_bytes();
                        r.extend_from_slice(&body);
                        r
                    }
                    "/chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n3;ext=1\r\nabc\r\n0\r\nx-sum: 3\r\n\r\n".to_vec(),
                    "/head" => b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n".to_vec(),
                    "/early" => b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
                    _ => b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\nbye".to_vec(),
                };
                s.write_all(&reply).await.unwrap();
                if path == "/bye" {
                    return;
                }
            }
        }
    })
    .await;
    (addr, accepted)
}

/// Read from `s` until exactly `want` has arrived (and nothing more within a moment).
async fn expect_bytes(s: &mut tokio::net::TcpStream, want: &str) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    while got.len() < want.len() {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("response in time")
            .unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(String::from_utf8_lossy(&got), want);
}

/// The plain path relays responses byte for byte on one client connection: pipelined
/// requests answered in order, chunk extensions and trailers untouched, a HEAD answer without
/// a body, a 103 before the final answer, the instance's `Connection: close` kept to its own
/// connection, the client's `Connection: close` honoured — and every request before the
/// instance's close on one pooled instance connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_responses_are_relayed_exactly_on_one_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = gateway(Limits::default()).await;
    let (addr, accepted) = shapes_app().await;
    gw.revisions.set_endpoints("default", "shop-00002", &[addr]);
    let host = "Host: current-shop.default.example.com\r\n";
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    // Two requests in one write: a POST with its body, then a GET.
    s.write_all(
        format!("POST /echo HTTP/1.1\r\n{host}Content-Length: 5\r\n\r\nhelloGET /chunked HTTP/1.1\r\n{host}\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    expect_bytes(
        &mut s,
        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello\
         HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n3;ext=1\r\nabc\r\n0\r\nx-sum: 3\r\n\r\n",
    )
    .await;
    s.write_all(format!("HEAD /head HTTP/1.1\r\n{host}\r\n").as_bytes())
        .await
        .unwrap();
    expect_bytes(&mut s, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n").await;
    s.write_all(format!("GET /early HTTP/1.1\r\n{host}\r\n").as_bytes())
        .await
        .unwrap();
    expect_bytes(
        &mut s,
        "HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    )
    .await;
    // The instance closes its connection; the client's lives on.
    s.write_all(format!("GET /bye HTTP/1.1\r\n{host}\r\n").as_bytes())
        .await
        .unwrap();
    expect_bytes(&mut s, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbye").await;
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one instance connection, reused"
    );
    // The client asks to close: told so, and closed.
    s.write_all(format!("GET /echo HTTP/1.1\r\n{host}Connection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    expect_bytes(
        &mut s,
        "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    )
    .await;
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut rest)).await;
    assert!(matches!(read, Ok(Ok(0))), "closed after: {read:?} {rest:?}");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "a fresh one after the instance's close"
    );
}

/// A pooled keep-alive connection the instance drops just as it is reused: the plain request
/// (a safe method) is sent again on a fresh connection instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_requests_survive_pooled_connections_the_instance_drops() {
    let gw = gateway(Limits::default()).await;
    let (addr, mut heads) = raw_app(
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        Conns::DropSecondRequest,
    )
    .await;
    gw.revisions.set_endpoints("default", "shop-00002", &[addr]);
    let c = client();
    for i in 0..10 {
        // GETs, and POSTs whose small body is kept for the resend.
        let req = if i % 2 == 0 {
            http::Request::get(format!("http://{}/", gw.addr))
                .body(Full::new(Bytes::new()))
                .unwrap()
        } else {
            http::Request::post(format!("http://{}/", gw.addr))
                .body(Full::new(Bytes::from_static(b"xyz")))
                .unwrap()
        };
        let (mut parts, body) = req.into_parts();
        parts.headers.insert(
            "host",
            http::HeaderValue::from_static("current-shop.default.example.com"),
        );
        let r = c
            .request(http::Request::from_parts(parts, body))
            .await
            .expect("request");
        let status = r.status().as_u16();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert_eq!((status, &body[..]), (200, &b"ok"[..]), "request {i}");
    }
    // Requests met dropped connections and were sent again (a request can also find the pool
    // empty, when the client's next request overtakes the release of the last connection).
    let mut seen = 0;
    while heads.try_recv().is_ok() {
        seen += 1;
    }
    assert!(seen > 10, "only {seen} heads for 10 requests: no retries");
}

/// A client that gives up while its plain request (or websocket upgrade) is at the instance
/// frees the instance's slot at once, not when the instance finally answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_plain_request_frees_its_slot() {
    for head in [
        "GET / HTTP/1.1\r\nHost: current-shop.default.example.com\r\n\r\n",
        "GET /ws HTTP/1.1\r\nHost: current-shop.default.example.com\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    ] {
        abandon(head).await;
    }
}

async fn abandon(head: &str) {
    use tokio::io::AsyncWriteExt;
    let gw = gateway(Limits::default()).await;
    let slow = app("slow", Duration::from_secs(5)).await;
    gw.revisions.set_endpoints("default", "shop-00002", &[slow]);
    let rev = gw.revisions.get("default", "shop-00002");
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while rev.throttler.in_flight() == 0 {
        assert!(
            Instant::now() < deadline,
            "the request never reached the instance"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(2);
    while rev.throttler.in_flight() > 0 {
        assert!(
            Instant::now() < deadline,
            "the abandoned request still holds its slot: {head:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// An upstream that answers a websocket upgrade at once with its 101 and a first frame in the
/// same write, then echoes what it receives; records the heads it read.
async fn websocket_app() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    raw_server(|mut s, tx| async move {
                let mut buf = Vec::new();
                let end = loop {
                    let mut b = [0u8; 1024];
                    let n = s.read(&mut b).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&b[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let _ = tx.send(String::from_utf8_lossy(&buf[..end]).into_owned());
                let hello = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nHELLO";
                if s.write_all(hello).await.is_err() || s.write_all(&buf[end..]).await.is_err() {
                    return;
                }
                let mut b = [0u8; 1024];
                while let Ok(n) = s.read(&mut b).await {
                    if n == 0 || s.write_all(&b[..n]).await.is_err() {
                        return;
                    }
                }
    })
    .await
}

/// Websocket upgrades lose no bytes either way: the instance's first frame, sent with its 101,
/// reaches the client; bytes the client sends right behind its request head — before the 101
/// — reach the instance; then the tunnel carries both directions. (Pingora 0.9 could drop a
/// client frame sent as the 101 arrived: cloudflare/pingora#946.) The instance sees the
/// upgrade headers and proxy headers, not hop-by-hop or internal ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_loses_no_early_bytes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = gateway(Limits::default()).await;
    let (addr, mut heads) = websocket_app().await;
    gw.revisions.set_endpoints("default", "shop-00002", &[addr]);
    for _ in 0..20 {
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(
            b"GET /ws HTTP/1.1\r\nHost: current-shop.default.example.com\r\nConnection: keep-alive, Upgrade\r\n\
              Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
              Keep-Alive: timeout=5\r\nKnative-Serving-Revision: shop-00001\r\n\r\nEARLY",
        )
        .await
        .unwrap();
        let mut got = Vec::new();
        let want = b"HTTP/1.1 101 Switching Protocols\r\n";
        let deadline = Instant::now() + Duration::from_secs(3);
        while !(got.starts_with(want) && got.ends_with(b"\r\n\r\nHELLOEARLY")) {
            let mut b = [0u8; 1024];
            let n = tokio::time::timeout_at(deadline.into(), s.read(&mut b))
                .await
                .expect("101, first frame and echo in time")
                .unwrap();
            assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&b[..n]);
        }
        s.write_all(b"after").await.unwrap();
        let mut b = [0u8; 5];
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"after");
        let head = heads.recv().await.unwrap().to_ascii_lowercase();
        assert!(head.starts_with("get /ws http/1.1\r\n"), "{head}");
        for present in [
            "connection: upgrade\r\n",
            "upgrade: websocket\r\n",
            "sec-websocket-key: dghlihnhbxbszsbub25jzq==\r\n",
            "k-proxy-request: activator\r\n",
            "x-forwarded-for: 127.0.0.1\r\n",
        ] {
            assert!(head.contains(present), "{present} missing: {head}");
        }
        for absent in ["keep-alive", "knative-serving-revision"] {
            assert!(!head.contains(absent), "{absent} forwarded: {head}");
        }
    }
}

/// An instance that refuses the upgrade is answered through, body and all, and the client's
/// connection then closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_websocket_upgrade_is_relayed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = gateway(Limits::default()).await;
    for reply in [
        &b"HTTP/1.1 403 Forbidden\r\ncontent-length: 6\r\n\r\nno way"[..],
        &b"HTTP/1.1 426 Upgrade Required\r\ntransfer-encoding: chunked\r\n\r\n3\r\nno \r\n3\r\nway\r\n0\r\n\r\n"[..],
    ] {
        let reply: &'static [u8] = Box::leak(reply.to_vec().into_boxed_slice());
        let (addr, _heads) = raw_app(reply, Conns::DropSecondRequest).await;
        gw.revisions.set_endpoints("default", "shop-00002", &[addr]);
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(
            b"GET /ws HTTP/1.1\r\nHost: current-shop.default.example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .await
        .unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut got))
            .await
            .expect("the refusal, then the connection closed")
            .unwrap();
        let text = String::from_utf8_lossy(&got);
        assert!(text.ends_with("no way") || text.ends_with("0\r\n\r\n"), "{text}");
        assert!(text.to_ascii_lowercase().contains("connection: close"), "{text}");
        let status: u16 = text[9..12].parse().unwrap();
        assert!(matches!(status, 403 | 426), "{text}");
    }
}

/// Request bodies arrive intact on both paths: small sized ones on the plain path (read whole,
/// then sent), larger or chunked ones through pingora's proxy (streamed) — one after another
/// on the same client connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_pass_intact_on_both_paths() {
    let gw = gateway(Limits::default()).await;
    with_apps(&gw).await;
    let c = client();
    for size in [1, 1000, 64 * 1024, 64 * 1024 + 1, 300_000] {
        let body: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        let req = http::Request::post(format!("http://{}/echo", gw.addr))
            .header("host", "current-shop.default.example.com")
            .body(Full::new(Bytes::from(body.clone())))
            .unwrap();
        let r = c.request(req).await.expect("request");
        assert_eq!(r.status(), 200, "size {size}");
        let got = r.into_body().collect().await.unwrap().to_bytes();
        assert!(got == body, "size {size}: {} bytes back", got.len());
    }
}
