//! The request path through the queue-proxy.
//!
//! Stages, in order, and why they sit where they do:
//! 1. probe answer: `K-Network-Probe: queue` is answered here and never reaches the app, nor
//!    counts as load;
//! 2. drain bookkeeping: every real request restarts the drain's quiet period;
//! 3. load accounting: in-flight starts counting at arrival, so queued requests count as demand
//!    for the autoscaler (as in Knative);
//! 4. breaker: at most containerConcurrency at the app, FIFO queue, 503 beyond it; waiting in
//!    the queue counts against the request's timeout;
//! 5. headers: internal routing headers dropped, Forwarded / X-Forwarded-* added, hop-by-hop
//!    headers removed; everything else (CloudEvents `ce-*`, `traceparent`) untouched;
//! 6. upstream call with the response-start timeout; upgrades (websockets) are tunnelled;
//! 7. the response body streams back through `Tracked`, which enforces the idle timeout and
//!    releases the slot and counters when it ends. `timeoutSeconds` bounds the wait for the
//!    response to start (queueing included), as Knative's "begin replying" rule: a response
//!    begun in time streams on (Knative's TestRevisionTimeout).
//!
//! Errors are classified once, here: 503 overload, 504 deadline, 502 app unreachable.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::body::{ProxyBody, Tracked, text};
use crate::breaker::{Breaker, Slot};
use crate::config::Config;
use crate::drain::Drain;
use crate::metrics::Metrics;
use crate::stats::Tracker;

/// Connects every upstream request to the user container, whatever the URI's authority (which
/// carries the client's Host so that it reaches the app unchanged over HTTP/1 and HTTP/2).
#[derive(Clone, Debug)]
pub struct UserConnector {
    addr: SocketAddr,
}

impl tower_service::Service<Uri> for UserConnector {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let addr = self.addr;
        Box::pin(async move {
            let s = TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            Ok(TokioIo::new(s))
        })
    }
}

/// Everything the request path shares.
/// How long a network probe waits for the app to become ready before answering "not ready".
const PROBE_WAIT: Duration = Duration::from_millis(10);

#[derive(Debug)]
pub struct Shared {
    pub cfg: Config,
    pub client: Client<UserConnector, Incoming>,
    pub breaker: Breaker,
    pub tracker: Mutex<Tracker>,
    pub drain: Arc<Drain>,
    pub ready: watch::Receiver<bool>,
    /// Wakes the prober for an immediate probe of the app (a network probe arrived while the
    /// app is not ready yet).
    pub probe_now: Arc<tokio::sync::Notify>,
    pub metrics: Metrics,
    pub traces: Option<ebb_traces::Traces>,
}

impl Shared {
    pub fn new(
        cfg: Config,
        drain: Arc<Drain>,
        ready: watch::Receiver<bool>,
        probe_now: Arc<tokio::sync::Notify>,
        traces: Option<ebb_traces::Traces>,
    ) -> Arc<Self> {
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024);
        if cfg.h2c {
            builder.http2_only(true);
        }
        let client = builder.build(UserConnector {
            addr: SocketAddr::new(cfg.user_host, cfg.user_port),
        });
        Arc::new(Shared {
            breaker: Breaker::new(cfg.container_concurrency, cfg.queue_depth),
            tracker: Mutex::new(Tracker::new(std::time::Instant::now())),
            metrics: Metrics::new(&cfg),
            client,
            drain,
            ready,
            probe_now,
            traces,
            cfg,
        })
    }

    pub fn in_flight(&self) -> u64 {
        self.tracker.lock().map(|t| t.all.in_flight()).unwrap_or(0)
    }

    fn is_ready(&self) -> bool {
        *self.ready.borrow() && !self.drain.is_draining()
    }
}

/// Releases everything a request holds when it is dropped, and records its metrics.
struct RequestGuard {
    shared: Arc<Shared>,
    proxied: bool,
    started: Instant,
    app_started: Option<Instant>,
    status: u16,
    span: Option<ebb_traces::Span>,
    _slot: Option<Slot>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if let Ok(mut t) = self.shared.tracker.lock() {
            t.end(std::time::Instant::now(), self.proxied);
        }
        self.shared.metrics.in_flight.dec();
        let now = Instant::now();
        if let Some(span) = self.span.take() {
            ebb_traces::Traces::finish(span, self.status);
        }
        self.shared.metrics.record(
            self.status,
            now - self.started,
            self.app_started.map(|s| now - s),
        );
    }
}

fn error(status: StatusCode, reason: String) -> Response<ProxyBody> {
    let mut r = Response::new(text(format!("{reason}\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Headers named in Connection are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .filter(|n| !(keep_upgrade && n == header::UPGRADE))
        .collect();
    for n in named {
        headers.remove(n);
    }
    for h in wire::HOP_BY_HOP {
        headers.remove(h);
    }
    if !keep_upgrade {
        headers.remove(header::UPGRADE);
    }
}

fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// Why an HTTP/1 request breaks a rule of [`http1::head::check`], if it does.
fn refused(req: &Request<Incoming>) -> Option<http1::Refusal> {
    let version = match req.version() {
        Version::HTTP_10 | Version::HTTP_09 => http1::head::Version::Http10,
        Version::HTTP_11 => http1::head::Version::Http11,
        // HTTP/2 carries the authority and the framing in its own frames.
        _ => return None,
    };
    // (hyper's field iterator cannot be cloned; the check walks the fields more than once.)
    let fields: Vec<(&str, &[u8])> = req
        .headers()
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_bytes()))
        .collect();
    http1::head::check(req.method(), version, fields.iter().copied()).err()
}

/// RFC 7239 `for=` value: IPv6 addresses are quoted and bracketed.
fn forwarded_for(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("\"[{v6}]\""),
    }
}

fn add_forwarding(headers: &mut HeaderMap, remote: SocketAddr, host: Option<&str>) {
    let proto = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| "http".into());
    let mut fwd = format!("for={};proto={proto}", forwarded_for(remote.ip()));
    if let Some(h) = host {
        fwd.push_str(&format!(";host={h}"));
    }
    let joined = match headers.get(header::FORWARDED).and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {fwd}"),
        None => fwd,
    };
    if let Ok(v) = HeaderValue::from_str(&joined) {
        headers.insert(header::FORWARDED, v);
    }
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {}", remote.ip()),
        None => remote.ip().to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", v);
    }
    if !headers.contains_key("x-forwarded-proto")
        && let Ok(v) = HeaderValue::from_str(&proto)
    {
        headers.insert("x-forwarded-proto", v);
    }
}

/// Handle one request from the activator, the kubelet or a client.
pub async fn handle(
    shared: Arc<Shared>,
    mut req: Request<Incoming>,
    remote: SocketAddr,
) -> Response<ProxyBody> {
    // 0. The HTTP/1 rules hyper does not apply itself (one Host, no Content-Length beside
    //    Transfer-Encoding, only chunked, only 100-continue, no CONNECT): the same check as
    //    the gateway's, so that a request reaching the queue-proxy directly (from inside the
    //    cluster) meets the same edge.
    if let Some(refusal) = refused(&req) {
        let mut r = error(
            StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::BAD_REQUEST),
            refusal.reason,
        );
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return r;
    }

    // 1. Probes.
    if let Some(p) = req.headers().get(wire::HEADER_NETWORK_PROBE) {
        if !shared.is_ready() && !shared.drain.is_draining() {
            // As Knative's queue-proxy does: a network probe while the app is not ready yet
            // probes the app at once (and briefly waits for it), so a caller probing often
            // learns of readiness within its own period rather than the prober's.
            shared.probe_now.notify_one();
            let mut ready = shared.ready.clone();
            let _ = tokio::time::timeout(PROBE_WAIT, ready.wait_for(|r| *r)).await;
        }
        return if p.as_bytes() == wire::PROBE_QUEUE.as_bytes() && shared.is_ready() {
            Response::new(text(wire::PROBE_QUEUE))
        } else if shared.drain.is_draining() {
            error(StatusCode::SERVICE_UNAVAILABLE, "draining".into())
        } else {
            error(StatusCode::SERVICE_UNAVAILABLE, "not ready".into())
        };
    }

    // 2–3. Drain and load accounting.
    let started = Instant::now();
    let deadline = started + shared.cfg.timeout;
    shared.drain.touch();
    let proxied = req
        .headers()
        .get(wire::HEADER_PROXY)
        .is_some_and(|v| v.as_bytes() == wire::PROXY_BY_ACTIVATOR.as_bytes());
    if let Ok(mut t) = shared.tracker.lock() {
        t.start(std::time::Instant::now(), proxied);
    }
    shared.metrics.in_flight.inc();
    // The span starts before the breaker so that queueing shows in traces.
    let span = shared.traces.as_ref().map(|t| {
        let (method, path) = (req.method().to_string(), req.uri().path().to_string());
        let c = &shared.cfg;
        let (span, trace_headers) = t.start(
            req.headers(),
            &method,
            &path,
            vec![
                ebb_traces::KeyValue::new("knative.service", c.service.clone()),
                ebb_traces::KeyValue::new("knative.configuration", c.configuration.clone()),
                ebb_traces::KeyValue::new("knative.revision", c.revision.clone()),
            ],
        );
        req.headers_mut().extend(trace_headers);
        span
    });
    let mut guard = RequestGuard {
        shared: shared.clone(),
        proxied,
        started,
        app_started: None,
        status: 0,
        span,
        _slot: None,
    };

    // 4. Breaker, bounded by the request's deadline.
    let slot = match shared.breaker.try_acquire() {
        Some(s) => Ok(Ok(s)),
        None => {
            let depth = &shared.metrics.queue_depth;
            depth.set(shared.breaker.queued() as i64 + 1);
            let s = tokio::time::timeout_at(deadline, shared.breaker.acquire()).await;
            depth.set(shared.breaker.queued() as i64);
            s
        }
    };
    match slot {
        Ok(Ok(s)) => guard._slot = Some(s),
        Ok(Err(o)) => {
            guard.status = 503;
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "overload: containerConcurrency {} reached and {} requests already queued",
                    o.capacity, o.queue_depth
                ),
            );
        }
        Err(_) => {
            guard.status = 504;
            return error(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "timeout: waited {:?} (timeoutSeconds) for a free slot",
                    shared.cfg.timeout
                ),
            );
        }
    }

    // 5. Headers.
    let upgrade = is_upgrade(&req);
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    let headers = req.headers_mut();
    headers.remove(wire::HEADER_REVISION);
    headers.remove(wire::HEADER_NAMESPACE);
    strip_hop_by_hop(headers, upgrade);
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    add_forwarding(headers, remote, host.as_deref());
    if let Some(h) = &host
        && !req.headers().contains_key(header::HOST)
        && let Ok(v) = HeaderValue::from_str(h)
    {
        req.headers_mut().insert(header::HOST, v);
    }
    let authority = host
        .clone()
        .unwrap_or_else(|| format!("127.0.0.1:{}", shared.cfg.user_port));
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    match Uri::builder()
        .scheme("http")
        .authority(authority.as_str())
        .path_and_query(path)
        .build()
    {
        Ok(uri) => *req.uri_mut() = uri,
        Err(e) => {
            guard.status = 400;
            return error(
                StatusCode::BAD_REQUEST,
                format!("bad Host header {authority:?}: {e}"),
            );
        }
    }
    *req.version_mut() = if shared.cfg.h2c {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    if shared.cfg.h2c {
        // HTTP/2 carries the authority in the URI; a Host header would be a duplicate.
        req.headers_mut().remove(header::HOST);
    }

    // 6. Upstream, with the response-start (and idle) timeout.
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let mut first_byte = shared.cfg.response_start_timeout;
    if let Some(idle) = shared.cfg.idle_timeout {
        first_byte = first_byte.min(idle);
    }
    let first_byte_deadline = (Instant::now() + first_byte).min(deadline);
    guard.app_started = Some(Instant::now());
    let mut resp =
        match tokio::time::timeout_at(first_byte_deadline, shared.client.request(req)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                guard.status = 502;
                let why = if e.is_connect() {
                    "cannot connect to the app"
                } else {
                    "the app closed the connection"
                };
                return error(
                    StatusCode::BAD_GATEWAY,
                    format!("{why} on port {}: {e}", shared.cfg.user_port),
                );
            }
            Err(_) => {
                guard.status = 504;
                let which = if first_byte_deadline == deadline {
                    "timeoutSeconds"
                } else if shared
                    .cfg
                    .idle_timeout
                    .is_some_and(|i| i < shared.cfg.response_start_timeout)
                {
                    "idleTimeoutSeconds"
                } else {
                    "responseStartTimeoutSeconds"
                };
                return error(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("timeout: the app sent no response within {first_byte:?} ({which})"),
                );
            }
        };
    guard.status = resp.status().as_u16();

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_side) = client_upgrade else {
            return error(
                StatusCode::BAD_GATEWAY,
                "the app switched protocols on a request that did not ask to".into(),
            );
        };
        let app_side = hyper::upgrade::on(&mut resp);
        // Tunnel: the request stays in flight and keeps its slot until either side closes or
        // the revision timeout ends it, as in Knative.
        tokio::spawn(async move {
            let (Ok(app), Ok(client)) = futures_util::future::join(app_side, client_side).await
            else {
                return;
            };
            let (mut app, mut client) = (TokioIo::new(app), TokioIo::new(client));
            let _ = tokio::time::timeout_at(
                deadline,
                tokio::io::copy_bidirectional(&mut client, &mut app),
            )
            .await;
            drop(guard);
        });
        let (mut parts, _) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers, true);
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        return Response::from_parts(parts, text(Bytes::new()));
    }

    // 7. Stream the response back.
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    if upgrade {
        // The app refused the switch. Bytes the client sent after its request were meant for
        // the new protocol; hyper would read them as the next request (one nobody routed or
        // counted), so the connection ends with this response instead.
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let body = Tracked::new(body, shared.cfg.idle_timeout, guard);
    Response::from_parts(parts, body.boxed_unsync())
}
