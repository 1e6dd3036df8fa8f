//! Client → gateway → queue-proxy → app, all over real loopback sockets: websockets, h2c with
//! trailers, large streamed bodies and CloudEvents headers pass end to end.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on broken fixtures

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use activator::gateway::{Gateway, serve};
use activator::revisions::{RevisionSettings, Revisions};
use activator::routes::{Listener, RoutingTable};
use activator::throttler::Limits;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, StreamBody};
use hyper_util::rt::{TokioExecutor, TokioIo};

type Body = testkit::AppBody;
use testkit::full;

/// /ws websocket echo, /trailers gRPC-like trailers, /upload counts bytes, /download streams
/// 10 MiB, anything else returns the request's ce-* headers and body.
async fn app() -> SocketAddr {
    testkit::spawn_app(|mut req: http::Request<hyper::body::Incoming>| async move {
        match req.uri().path() {
            "/ws" => testkit::websocket_echo(&mut req),
            "/trailers" => {
                let mut t = http::HeaderMap::new();
                t.insert("grpc-status", http::HeaderValue::from_static("0"));
                let frames = vec![
                    Ok::<_, std::io::Error>(http_body::Frame::data(Bytes::from_static(b"pong"))),
                    Ok(http_body::Frame::trailers(t)),
                ];
                http::Response::new(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(
                    frames,
                ))))
            }
            "/upload" => {
                let mut n = 0usize;
                let mut b = req.into_body();
                while let Some(f) = b.frame().await {
                    n += f
                        .ok()
                        .and_then(|f| f.into_data().ok())
                        .map_or(0, |d| d.len());
                }
                http::Response::new(full(n.to_string()))
            }
            "/download" => {
                let chunk = Bytes::from(vec![b'd'; 64 * 1024]);
                let s =
                    futures_util::stream::iter((0..160).map(move |_| {
                        Ok::<_, std::io::Error>(http_body::Frame::data(chunk.clone()))
                    }));
                http::Response::new(BodyExt::boxed(StreamBody::new(s)))
            }
            _ => {
                let ce: HashMap<String, String> = req
                    .headers()
                    .iter()
                    .filter(|(k, _)| k.as_str().starts_with("ce-") || k.as_str() == "content-type")
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
                    .collect();
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let out =
                    serde_json::json!({"headers": ce, "body": String::from_utf8_lossy(&body)});
                http::Response::new(full(serde_json::to_vec(&out).unwrap()))
            }
        }
    })
    .await
}

async fn queue_proxy(app: SocketAddr, h2c: bool) -> SocketAddr {
    testkit::queue_proxy(
        app,
        "echo-00001",
        &[("USER_PROTOCOL", if h2c { "h2c" } else { "http1" })],
    )
    .await
    .serving
}

/// A gateway serving `http://{route}.default.localhost` → `revision` (100%).
async fn gateway_for(route: &str, revision: &str, revisions: Arc<Revisions>) -> SocketAddr {
    traced_gateway_for(route, revision, revisions, None).await
}

async fn traced_gateway_for(
    route: &str,
    revision: &str,
    revisions: Arc<Revisions>,
    traces: Option<Arc<ebb_traces::Traces>>,
) -> SocketAddr {
    let r: serving_api::Route = serde_json::from_value(serde_json::json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Route",
        "metadata": {"name": route, "namespace": "default"}, "spec": {},
        "status": {"url": format!("http://{route}.default.localhost"), "traffic": [{"revisionName": revision, "percent": 100}]}
    }))
    .unwrap();
    let (tx, routes) = tokio::sync::watch::channel(Arc::new(RoutingTable::build([&r])));
    std::mem::forget(tx);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (stop, rx) = tokio::sync::watch::channel(false);
    std::mem::forget(stop);
    let gw = Gateway {
        routes,
        revisions,
        listener: Listener::External,
        poke: Arc::new(|_, _, _| {}),
        metrics: Default::default(),
        traces,
    };
    tokio::spawn(serve(l, gw, rx));
    addr
}

async fn setup(h2c: bool) -> SocketAddr {
    let revisions = Arc::new(Revisions::new(Limits::default()));
    revisions.configure(
        "default",
        "echo-00001",
        RevisionSettings {
            container_concurrency: 10,
            timeout: Duration::from_secs(30),
            h2c,
        },
    );
    let qp = queue_proxy(app().await, h2c).await;
    // Used once the queue-proxy answers its probe.
    revisions.announce("default", "echo-00001", &[qp]);
    gateway_for("echo", "echo-00001", revisions).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_through_activator_and_queue_proxy() {
    let gw = setup(false).await;
    let req = http::Request::get(format!("ws://{gw}/ws"))
        .header("host", "echo.default.localhost")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header(
            "sec-websocket-key",
            tokio_tungstenite::tungstenite::handshake::client::generate_key(),
        )
        .body(())
        .unwrap();
    let (mut ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("websocket handshake end to end");
    assert_eq!(resp.status(), 101);
    // The first frame leaves the instant the 101 arrives: pingora 0.9 could lose it
    // (cloudflare/pingora#946); the gateway now tunnels upgrades itself.
    for i in 0..3 {
        ws.send(tokio_tungstenite::tungstenite::Message::text(format!(
            "m{i}"
        )))
        .await
        .unwrap();
        let m = tokio::time::timeout(Duration::from_secs(3), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(m.into_text().unwrap().as_str(), format!("m{i}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_trailers_end_to_end() {
    let gw = setup(true).await;
    // An HTTP/2 client (as gRPC clients do) names the service in :authority, not Host.
    let tcp = tokio::net::TcpStream::connect(gw).await.unwrap();
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post("http://echo.default.localhost/trailers")
        .header("content-type", "application/grpc")
        .body(full("ping"))
        .unwrap();
    let r = h2.send_request(req).await.expect("h2c through the gateway");
    let status = r.status();
    if status != 200 {
        let body = r
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        panic!("{status}: {}", String::from_utf8_lossy(&body));
    }
    let got = r.into_body().collect().await.unwrap();
    assert_eq!(
        got.trailers()
            .and_then(|t| t.get("grpc-status"))
            .map(|v| v.to_str().unwrap().to_string()),
        Some("0".into())
    );
    assert_eq!(got.to_bytes(), "pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_and_cloudevents_end_to_end() {
    let gw = setup(false).await;
    let c: hyper_util::client::legacy::Client<_, Body> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let chunk = Bytes::from(vec![b'u'; 64 * 1024]);
    let up = futures_util::stream::iter(
        (0..160).map(move |_| Ok::<_, std::io::Error>(http_body::Frame::data(chunk.clone()))),
    );
    let req = http::Request::post(format!("http://{gw}/upload"))
        .header("host", "echo.default.localhost")
        .body(BodyExt::boxed(StreamBody::new(up)))
        .unwrap();
    let r = c.request(req).await.unwrap();
    assert_eq!(
        r.into_body().collect().await.unwrap().to_bytes(),
        (160 * 64 * 1024).to_string()
    );
    let req = http::Request::get(format!("http://{gw}/download"))
        .header("host", "echo.default.localhost")
        .body(full(""))
        .unwrap();
    let r = c.request(req).await.unwrap();
    assert_eq!(
        r.into_body().collect().await.unwrap().to_bytes().len(),
        160 * 64 * 1024
    );

    let body = r#"{"order":42,"note":"ünïcödé"}"#;
    let req = http::Request::post(format!("http://{gw}/"))
        .header("host", "echo.default.localhost")
        .header("ce-specversion", "1.0")
        .header("ce-id", "evt-1")
        .header("ce-source", "urn:ebb:test")
        .header("ce-type", "dev.ebb.order.created")
        .header("ce-tenant", "acme")
        .header("content-type", "application/json")
        .body(full(body))
        .unwrap();
    let r = c.request(req).await.unwrap();
    let seen: serde_json::Value =
        serde_json::from_slice(&r.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(seen["body"], body);
    for (k, v) in [
        ("ce-specversion", "1.0"),
        ("ce-id", "evt-1"),
        ("ce-source", "urn:ebb:test"),
        ("ce-type", "dev.ebb.order.created"),
        ("ce-tenant", "acme"),
        ("content-type", "application/json"),
    ] {
        assert_eq!(seen["headers"][k], v, "{k}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announced_instance_is_used_as_soon_as_its_queue_proxy_answers() {
    // Reserve the app's port; the app starts listening only after 300 ms (a slow start).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let app_addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let qp = testkit::queue_proxy(app_addr, "slow-00001", &[])
        .await
        .serving;

    let revisions = Arc::new(Revisions::new(Limits::default()));
    revisions.configure(
        "default",
        "slow-00001",
        RevisionSettings {
            timeout: Duration::from_secs(10),
            ..Default::default()
        },
    );
    // Announced before it can serve: the gateway probes it instead of sending requests to it.
    revisions.announce("default", "slow-00001", &[qp]);
    let gw = gateway_for("slow", "slow-00001", revisions.clone()).await;
    let c: hyper_util::client::legacy::Client<_, Body> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let started = std::time::Instant::now();
    let pending = tokio::spawn(async move {
        let req = http::Request::get(format!("http://{gw}/"))
            .header("host", "slow.default.localhost")
            .body(full(""))
            .unwrap();
        c.request(req)
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        revisions.get("default", "slow-00001").throttler.endpoints(),
        0,
        "not used before it answers"
    );
    let listener = tokio::net::TcpListener::bind(app_addr).await.unwrap();
    let opened = std::time::Instant::now();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(full("up")))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    assert_eq!(
        pending.await.unwrap(),
        200,
        "the held request is answered, never a 502"
    );
    let after_open = opened.elapsed();
    assert!(
        after_open < Duration::from_millis(500),
        "answered {after_open:?} after the app opened its port"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_continue_the_trace_through_the_gateway() {
    const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
    const PARENT_ID: &str = "b7ad6b7169203331";
    // A stand-in OTLP/HTTP collector, and an app keeping the traceparent it receives.
    let (collector, exports) = testkit::otlp_collector().await;
    let (app, seen) = testkit::traceparent_app().await;
    let revisions = Arc::new(Revisions::new(Limits::default()));
    let qp = queue_proxy(app, false).await;
    revisions.announce("default", "echo-00001", &[qp]);
    let traces =
        ebb_traces::Traces::new(&format!("http://{collector}"), "activator", Vec::new()).unwrap();
    let traces = Arc::new(traces);
    let gw = traced_gateway_for("echo", "echo-00001", revisions, Some(traces.clone())).await;
    let req = http::Request::get(format!("http://{gw}/traced"))
        .header("host", "echo.default.localhost")
        .header("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-01"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let mut status = 0;
    for _ in 0..100 {
        let r = client.request(req.clone()).await.unwrap();
        status = r.status().as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, 200);
    let got = seen
        .lock()
        .unwrap()
        .clone()
        .expect("the app got a traceparent");
    let parts: Vec<&str> = got.split('-').collect();
    assert_eq!(parts[1], TRACE_ID, "same trace");
    assert_ne!(parts[2], PARENT_ID, "the gateway's span is the parent now");
    // The gateway ends its span once the response is out, so the client can be a moment ahead.
    let (trace, span) = (testkit::unhex(TRACE_ID), testkit::unhex(parts[2]));
    let exported = || {
        exports
            .lock()
            .unwrap()
            .iter()
            .any(|(_, b)| testkit::contains(b, &trace) && testkit::contains(b, &span))
    };
    let mut found = false;
    for _ in 0..100 {
        traces.flush();
        found = exported();
        if found {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    traces.shutdown();
    assert!(
        found,
        "the collector received the gateway's span in the client's trace"
    );
}
