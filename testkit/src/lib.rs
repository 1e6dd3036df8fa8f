//! Test support shared by Ebb's crates (dev-dependency only): small apps served on loopback
//! sockets, a queue-proxy started in-process on real sockets, and /proc readings. Not product
//! code.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};

pub mod fake_api;
pub mod raw;

pub type AppBody = BoxBody<Bytes, std::io::Error>;

pub fn full(b: impl Into<Bytes>) -> AppBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// Serve `handler` on 127.0.0.1:0 (HTTP/1 with upgrades, and h2c); returns the address.
pub async fn spawn_app<H, F>(handler: H) -> SocketAddr
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Response<AppBody>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let h = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let f = h(req);
                    async move { Ok::<_, Infallible>(f.await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// Answer a websocket upgrade and echo every text or binary message.
pub fn websocket_echo(req: &mut Request<Incoming>) -> Response<AppBody> {
    let key = req.headers().get("sec-websocket-key").cloned();
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(up) = upgrade.await else { return };
        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(up),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        let (mut tx, mut rx) = ws.split();
        while let Some(Ok(msg)) = rx.next().await {
            if msg.is_text() || msg.is_binary() {
                let _ = tx.send(msg).await;
            }
        }
    });
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(
        key.as_ref().map_or(&b""[..], |k| k.as_bytes()),
    );
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert("upgrade", http::HeaderValue::from_static("websocket"));
    h.insert("connection", http::HeaderValue::from_static("Upgrade"));
    if let Ok(v) = http::HeaderValue::from_str(&accept) {
        h.insert("sec-websocket-accept", v);
    }
    r
}

/// Environment for a queue-proxy on loopback with OS-chosen ports, in front of `user_port`.
pub fn queue_proxy_env(user_port: u16) -> HashMap<String, String> {
    [
        ("QUEUE_BIND_ADDRESS", "127.0.0.1"),
        ("QUEUE_SERVING_PORT", "0"),
        ("QUEUE_ADMIN_PORT", "0"),
        ("QUEUE_METRICS_PORT", "0"),
        ("USER_METRICS_PORT", "0"),
        ("SERVING_NAMESPACE", "default"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .chain([("USER_PORT".to_string(), user_port.to_string())])
    .collect()
}

/// A queue-proxy in this process, on real loopback sockets, in front of `app`.
pub async fn queue_proxy(
    app: SocketAddr,
    revision: &str,
    extra: &[(&str, &str)],
) -> queue_proxy::Bound {
    let mut vars = queue_proxy_env(app.port());
    vars.insert("SERVING_REVISION".into(), revision.into());
    vars.insert("SERVING_POD".into(), format!("{revision}-pod"));
    for (k, v) in extra {
        vars.insert(k.to_string(), v.to_string());
    }
    let cfg = queue_proxy::Config::from_vars(&vars).unwrap_or_else(|e| panic!("{e}"));
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(queue_proxy::run(cfg, std::future::pending(), move |b| {
        let _ = tx.send(b);
    }));
    rx.await
        .unwrap_or_else(|e| panic!("queue-proxy did not start: {e}"))
}

/// (peak, current) resident memory of a process, KiB, from /proc.
pub fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// The `traceparent` of the last request an app received.
pub type SeenTrace = std::sync::Arc<std::sync::Mutex<Option<String>>>;

/// An app answering "ok" that keeps the `traceparent` of the last request it received.
pub async fn traceparent_app() -> (SocketAddr, SeenTrace) {
    let seen = SeenTrace::default();
    let s = seen.clone();
    let addr = spawn_app(move |req: Request<Incoming>| {
        let s = s.clone();
        async move {
            let parent = req
                .headers()
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            *s.lock().unwrap_or_else(|p| p.into_inner()) = parent;
            Response::new(full("ok"))
        }
    })
    .await;
    (addr, seen)
}

/// Every export a stand-in collector received: (path, body).
pub type Exports = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

/// A stand-in OTLP/HTTP collector on loopback that keeps every export it receives.
pub async fn otlp_collector() -> (SocketAddr, Exports) {
    let exports: Exports = Exports::default();
    let e = exports.clone();
    let addr = spawn_app(move |req: Request<Incoming>| {
        let e = e.clone();
        async move {
            let path = req.uri().path().to_string();
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes().to_vec())
                .unwrap_or_default();
            if let Ok(mut e) = e.lock() {
                e.push((path, body));
            }
            Response::new(full(""))
        }
    })
    .await;
    (addr, exports)
}

/// Bytes from hex (trace and span ids as they appear in `traceparent`).
pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .filter_map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

/// Whether `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
