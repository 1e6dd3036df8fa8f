//! The gateway proper: pingora's proxy with Ebb's routing and throttling, embedded in our own
//! Tokio runtime (we run the accept loop; pingora handles each connection, except the plain
//! requests and websocket upgrades the gateway carries itself: [`crate::plain`],
//! [`crate::upgrade`]).
//!
//! Per request: route by Host and `Knative-Serving-Tag` and take a lease on an instance,
//! waiting in the revision's queue up to its timeout (503 with Retry-After when the queue is
//! full, 504 past the deadline) — for HTTP/1 in [`crate::admission`], before pingora, so that a
//! held request is cheap; then strip internal headers (a client cannot pick a revision); 404
//! naming the host when nothing matches; mark the request as proxied; on a failed connect
//! (nothing was sent) take that instance out of rotation and choose again.

use std::any::Any;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;

use pingora_core::server::configuration::ServerConf;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, HttpProxy, ProxyHttp, Session};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admission::{Admission, Admitted, KEEPALIVE, admit};
use crate::buffered::Buffered;
use crate::pool::Pool;
use crate::revisions::{RevisionState, Revisions};
use crate::routes::{Listener, RoutingTable, Target};
use crate::throttler::Lease;

/// Called when a request has to wait for a revision that has no ready instance: the autoscaler
/// should decide at once (a poke) instead of at its next tick.
pub type Poke = Arc<dyn Fn(&str, &str, usize) + Send + Sync>;

#[derive(Clone)]
pub struct Gateway {
    pub routes: watch::Receiver<Arc<RoutingTable>>,
    pub revisions: Arc<Revisions>,
    pub listener: Listener,
    pub poke: Poke,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// A span per routed request, continuing `traceparent` (None: tracing off).
    pub traces: Option<Arc<ebb_traces::Traces>>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("listener", &self.listener)
            .finish()
    }
}

#[derive(Debug, Default)]
pub struct Ctx {
    started: Option<Instant>,
    revision: Option<Arc<RevisionState>>,
    lease: Option<Lease>,
    /// Set for errors we classify ourselves (status, reason).
    refusal: Option<(u16, String)>,
    target: Option<Arc<Target>>,
    /// Routed (and leased or refused) by admission: not routed again.
    admitted: bool,
    span: Option<ebb_traces::Span>,
}

fn host_of(req: &RequestHeader) -> String {
    req.headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri.authority().map(|a| a.to_string()))
        .unwrap_or_default()
}

/// The gateway's own answer: `reason` as a short plain-text body; 503s ask the client to retry
/// after a second.
pub(crate) fn error_response(
    status: u16,
    reason: &str,
    retry_after: bool,
) -> Option<(Box<ResponseHeader>, Bytes)> {
    let mut resp = ResponseHeader::build(status, Some(3)).ok()?;
    let body = Bytes::from(format!("{reason}\n"));
    let _ = resp.insert_header("content-type", "text/plain; charset=utf-8");
    let _ = resp.insert_header("content-length", body.len().to_string());
    if retry_after {
        let _ = resp.insert_header("retry-after", "1");
    }
    Some((Box::new(resp), body))
}

async fn respond(session: &mut Session, status: u16, reason: &str, retry_after: bool) {
    let Some((resp, body)) = error_response(status, reason, retry_after) else {
        return;
    };
    if session.write_response_header(resp, false).await.is_ok() {
        let _ = session.write_response_body(Some(body), true).await;
    }
}

/// The instance a lease points at, as pingora's upstream peer.
pub(crate) fn peer(addr: SocketAddr, h2c: bool) -> HttpPeer {
    let mut peer = HttpPeer::new(addr, false, String::new());
    if h2c {
        peer.options.set_http_version(2, 2);
        // pingora opens one stream per connection by default; share connections.
        peer.options.max_h2_streams = 100;
    }
    peer.options.connection_timeout = Some(std::time::Duration::from_secs(2));
    peer
}

/// What a request waiting for an instance holds in memory: its head (a body stays in the
/// socket until an instance is chosen).
pub(crate) fn held_bytes(req: &RequestHeader) -> usize {
    req.headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + req.uri.path_and_query().map_or(0, |p| p.as_str().len())
}

/// Not forwarded to an instance, as pingora's default upstream request policy has it: the
/// hop-by-hop headers, and the upgrade fields (a websocket upgrade restores its own).
pub(crate) fn hop_by_hop(name: &str) -> bool {
    wire::HOP_BY_HOP
        .iter()
        .chain(&["upgrade", "http2-settings"])
        .any(|h| name.eq_ignore_ascii_case(h))
}

/// The client in `Forwarded` and `X-Forwarded-For`, appended to what earlier proxies wrote
/// (`prior_forwarded`, `prior_xff`).
pub(crate) fn forwarded_for(
    ip: std::net::IpAddr,
    prior_forwarded: Option<&str>,
    prior_xff: Option<&str>,
) -> (String, String) {
    let ours = match ip {
        std::net::IpAddr::V4(v4) => format!("for={v4};proto=http"),
        std::net::IpAddr::V6(v6) => format!("for=\"[{v6}]\";proto=http"),
    };
    let forwarded = prior_forwarded.map_or(ours.clone(), |p| format!("{p}, {ours}"));
    let xff = prior_xff.map_or(ip.to_string(), |p| format!("{p}, {ip}"));
    (forwarded, xff)
}

/// What every request to an instance carries: `K-Proxy-Request: activator`, and the client in
/// `Forwarded`, `X-Forwarded-For` and `X-Forwarded-Proto` (appended to what earlier proxies
/// wrote).
pub(crate) fn proxy_headers(
    upstream: &mut RequestHeader,
    client: Option<SocketAddr>,
) -> Result<()> {
    upstream.insert_header(wire::HEADER_PROXY, wire::PROXY_BY_ACTIVATOR)?;
    if let Some(ip) = client.map(|a| a.ip()) {
        let prior = |name: &str| upstream.headers.get(name).and_then(|v| v.to_str().ok());
        let (forwarded, xff) = forwarded_for(ip, prior("forwarded"), prior("x-forwarded-for"));
        upstream.insert_header("forwarded", forwarded)?;
        upstream.insert_header("x-forwarded-for", xff)?;
        if !upstream.headers.contains_key("x-forwarded-proto") {
            upstream.insert_header("x-forwarded-proto", "http")?;
        }
    }
    Ok(())
}

/// Start a request's span, as of its arrival, and point the next hop's trace headers at it.
pub(crate) fn start_span(
    traces: &ebb_traces::Traces,
    req: &mut RequestHeader,
    target: &Target,
    rev: &RevisionState,
    started: Instant,
) -> ebb_traces::Span {
    let (method, path) = (req.method.to_string(), req.uri.path().to_string());
    let started = std::time::SystemTime::now() - started.elapsed();
    let (span, next) = traces.start_at(
        &req.headers,
        &method,
        &path,
        vec![
            ebb_traces::KeyValue::new("k8s.namespace.name", rev.namespace.clone()),
            ebb_traces::KeyValue::new("knative.route", target.route.clone()),
            ebb_traces::KeyValue::new("knative.revision", rev.name.clone()),
        ],
        started,
    );
    // The queue-proxy's span becomes a child of ours.
    for (k, v) in next.iter() {
        let _ = req.insert_header(k.clone(), v.clone());
    }
    span
}

impl Gateway {
    /// Account for a request that ended with `status` (0: no response): its metrics, and its
    /// span when tracing is on.
    pub(crate) fn finished(
        &self,
        target: &Target,
        rev: &RevisionState,
        started: Instant,
        span: Option<ebb_traces::Span>,
        status: u16,
    ) {
        self.metrics.request(
            &rev.namespace,
            &target.route,
            &rev.name,
            status,
            started.elapsed(),
        );
        if let Some(span) = span {
            ebb_traces::Traces::finish(span, status);
        }
    }

    /// An instance of `rev` for a request that arrived at `started` and holds `bytes` while it
    /// waits: at once when one has room, else after waiting in the revision's queue (poking
    /// the autoscaler when there is no instance at all). Refused with 503 when the queue is
    /// full, 504 when the revision's timeout passes first.
    pub async fn lease(
        &self,
        rev: &RevisionState,
        started: Instant,
        bytes: usize,
    ) -> std::result::Result<Lease, (u16, String)> {
        let deadline = started + rev.timeout();
        let throttler = &rev.throttler;
        if throttler.endpoints() == 0 {
            (self.poke)(&rev.namespace, &rev.name, throttler.queued() + 1);
        }
        let waiting = Instant::now();
        let acquired = tokio::time::timeout_at(deadline.into(), throttler.acquire(bytes)).await;
        self.metrics
            .waited(&rev.namespace, &rev.name, waiting.elapsed());
        match acquired {
            Ok(Ok(lease)) => Ok(lease),
            Ok(Err(refused)) => Err((503, refused.to_string())),
            Err(_) => Err((
                504,
                format!(
                    "timeout: no instance of revision {} became available within {:?}",
                    rev.name,
                    rev.timeout()
                ),
            )),
        }
    }
}

impl Gateway {
    /// Route a request admission left to pingora: sets the context's revision, or answers
    /// 404 (no route for the host) or 503 (a route with no revision to send to).
    async fn route(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        let req = session.req_header();
        let host = host_of(req);
        let tag = req
            .headers
            .get(wire::HEADER_TAG)
            .and_then(|t| t.to_str().ok())
            .map(str::to_string);
        let table = self.routes.borrow().clone();
        let Some(target) = table.lookup(&host, self.listener) else {
            respond(session, 404, &format!("no route for host {host:?}"), false).await;
            return Ok(());
        };
        let Some(revision) = target.pick(tag.as_deref(), fastrand::u32(0..100)) else {
            respond(
                session,
                503,
                &format!("route {} has no ready revision", target.route),
                true,
            )
            .await;
            return Ok(());
        };
        let rev = self.revisions.get(&target.namespace, revision);
        rev.arrivals
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ctx.revision = Some(rev);
        ctx.target = Some(target.clone());
        Ok(())
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            started: Some(Instant::now()),
            ..Ctx::default()
        }
    }

    /// Admission hands its decision over as the connection's user context.
    fn on_connection_reuse(
        &self,
        _session: &mut Session,
        ctx: &mut Ctx,
        prev: Box<dyn Any + Send + Sync>,
    ) {
        if let Ok(a) = prev.downcast::<Admitted>() {
            let Admitted {
                started,
                target,
                revision,
                lease,
                ..
            } = *a;
            ctx.started = Some(started);
            ctx.target = Some(target);
            ctx.revision = Some(revision);
            match lease {
                Ok(lease) => ctx.lease = Some(lease),
                Err(refusal) => ctx.refusal = Some(refusal),
            }
            ctx.admitted = true;
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let req = session.req_header_mut();
        // Never obeyed from clients: only the routing table chooses revisions.
        req.remove_header(wire::HEADER_REVISION);
        req.remove_header(wire::HEADER_NAMESPACE);
        if !ctx.admitted {
            self.route(session, ctx).await?;
        }
        if let (Some(t), Some(rev), Some(target)) = (&self.traces, &ctx.revision, &ctx.target) {
            let started = ctx.started.unwrap_or_else(Instant::now);
            ctx.span = Some(start_span(
                t,
                session.req_header_mut(),
                target,
                rev,
                started,
            ));
        }
        Ok(ctx.revision.is_none())
    }
    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let Some(rev) = ctx.revision.clone() else {
            return Error::e_explain(ErrorType::InternalError, "no revision chosen");
        };
        if let Some((code, reason)) = &ctx.refusal {
            return Error::e_explain(ErrorType::HTTPStatus(*code), reason.clone());
        }
        // Admission's lease, or the one kept from an attempt that failed after connecting;
        // else (HTTP/2 streams, heads left to pingora, a retry after a failed connect) wait here.
        let lease = match ctx.lease.take() {
            Some(lease) => lease,
            None => {
                let bytes = held_bytes(session.req_header());
                let started = ctx.started.unwrap_or_else(Instant::now);
                match self.lease(&rev, started, bytes).await {
                    Ok(lease) => lease,
                    Err((code, reason)) => {
                        ctx.refusal = Some((code, reason.clone()));
                        return Error::e_explain(ErrorType::HTTPStatus(code), reason);
                    }
                }
            }
        };
        let peer = peer(lease.addr, rev.h2c());
        ctx.lease = Some(lease);
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        _ctx: &mut Ctx,
    ) -> Result<()> {
        let client: Option<SocketAddr> = session.client_addr().and_then(|a| a.as_inet()).copied();
        proxy_headers(upstream, client)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Nothing was sent: safe to retry elsewhere. This instance leaves the rotation until
        // the backend reports it again.
        if let (Some(rev), Some(lease)) = (&ctx.revision, ctx.lease.take()) {
            rev.throttler.mark_down(lease.addr);
            tracing::warn!(revision = %rev.name, instance = %peer, "connect failed; retrying elsewhere");
        }
        e.set_retry(true);
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        ctx.lease = None;
        let (code, reason) = match ctx.refusal.take() {
            Some(r) => r,
            None => match e.etype() {
                ErrorType::HTTPStatus(c) => (*c, e.to_string()),
                ErrorType::ConnectTimedout
                | ErrorType::ConnectRefused
                | ErrorType::ConnectError => (502, format!("cannot reach an instance: {e}")),
                ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                    (504, format!("timeout: {e}"))
                }
                _ => match e.esource() {
                    pingora_error::ErrorSource::Upstream => (502, format!("instance failed: {e}")),
                    pingora_error::ErrorSource::Downstream => (0, String::new()),
                    _ => (500, e.to_string()),
                },
            },
        };
        if code > 0 {
            // The connection is closed after this answer: say so in it, or a client reusing
            // the connection meanwhile loses its next request to the close.
            session.set_keepalive(None);
            respond(session, code, &reason, code == 503).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        // The response is complete: give the instance's slot back.
        ctx.lease = None;
        if let (Some(rev), Some(target)) = (&ctx.revision, &ctx.target) {
            let status = session.response_written().map_or(0, |r| r.status.as_u16());
            let started = ctx.started.unwrap_or_else(Instant::now);
            self.finished(target, rev, started, ctx.span.take(), status);
        }
    }
}

/// How long a shutdown waits for in-flight and queued requests: well under Kubernetes' default
/// 30 s termination grace, so the pod exits on its own before it is killed.
pub const DEFAULT_GRACE: std::time::Duration = std::time::Duration::from_secs(20);

/// Serve the gateway on `listener` until `shutdown` turns true, then drain (see
/// [`serve_with_grace`]) with [`DEFAULT_GRACE`].
pub async fn serve(listener: TcpListener, gateway: Gateway, shutdown: watch::Receiver<bool>) {
    serve_with_grace(listener, gateway, shutdown, DEFAULT_GRACE).await;
}

/// Serve until `shutdown` turns true; then stop accepting, let every open connection finish
/// its in-flight or queued request (keep-alive ends after it), and return once all are done
/// or `grace` has passed.
pub async fn serve_with_grace(
    listener: TcpListener,
    gateway: Gateway,
    shutdown: watch::Receiver<bool>,
    grace: std::time::Duration,
) {
    let conf = Arc::new(ServerConf::default());
    let mut proxy = pingora_proxy::http_proxy(&conf, gateway.clone());
    let gateway = Arc::new(gateway);
    // HTTP/2 with prior knowledge (gRPC) as well as HTTP/1.1 on the same port.
    let mut options = pingora_core::apps::HttpServerOptions::default();
    options.h2c = true;
    proxy.server_options = Some(options);
    let proxy: Arc<HttpProxy<Gateway>> = Arc::new(proxy);
    // Plain requests' own pool of instance connections (pingora's proxy keeps its own).
    let pool = Arc::new(Pool::default());
    Pool::keep_swept(&pool);
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut stop = shutdown.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, peer)) = accepted else {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let proxy = proxy.clone();
                let shutdown = shutdown.clone();
                let open = open.clone();
                open.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let gateway = gateway.clone();
                let pool = pool.clone();
                tokio::spawn(async move {
                    connection(&proxy, &gateway, &pool, tcp, peer, &shutdown).await;
                    open.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                });
            }
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
        }
    }
    drop(listener);
    // Connections idle between keep-alive requests are closed now; busy ones after their
    // current request.
    {
        use pingora_core::apps::HttpServerApp;
        proxy.http_cleanup().await;
    }
    let deadline = Instant::now() + grace;
    while open.load(std::sync::atomic::Ordering::SeqCst) > 0 && Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// One downstream connection: each HTTP/1 request is admitted (read, routed, given an
/// instance), then proxied on the short path when it is plain and has an HTTP/1 instance, by
/// pingora's proxy otherwise; HTTP/2 goes to pingora whole.
///
/// This future is what an idle or held connection costs, so pingora's large values (its
/// stream setup, its session) are built in plain functions and never live in it.
async fn connection(
    proxy: &Arc<HttpProxy<Gateway>>,
    gateway: &Gateway,
    pool: &Pool,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    shutdown: &watch::Receiver<bool>,
) {
    use pingora_core::apps::ServerApp;

    let mut stream = downstream(tcp, peer);
    let client = crate::h1::ClientHeaders::new(Some(peer));
    let h2c = proxy.server_options.as_ref().is_some_and(|o| o.h2c);
    let idle = tokio::time::sleep(KEEPALIVE);
    tokio::pin!(idle);
    loop {
        let admitted = match admit(gateway, &mut stream, idle.as_mut(), shutdown, h2c).await {
            Admission::Closed => return,
            Admission::H2 => {
                let _ = proxy.process_new(Box::new(stream), shutdown).await;
                return;
            }
            Admission::Pass => None,
            Admission::Admitted(admitted) => match admitted.carried() {
                Ok(upgrade) if upgrade.websocket => {
                    Box::pin(crate::upgrade::tunnel(gateway, stream, upgrade, &client)).await;
                    return;
                }
                Ok(request) => {
                    // Boxed: the exchange's state (several KiB) exists only while it runs,
                    // never while the connection waits.
                    let exchange =
                        crate::plain::proxy(gateway, pool, stream, request, &client, shutdown);
                    match Box::pin(exchange).await {
                        Some(s) if !*shutdown.borrow() => {
                            stream = s;
                            continue;
                        }
                        _ => return,
                    }
                }
                Err(mut a) => {
                    // A request that pingora proxies after all (refused, or for an HTTP/2
                    // instance) reads its head from the stream like any other.
                    if let Some((bytes, _)) = a.bytes.take() {
                        stream.rewind(&bytes);
                    }
                    Some(a)
                }
            },
        };
        let Some(reused) = http1(proxy, stream, admitted, shutdown).await else {
            return;
        };
        if *shutdown.borrow() {
            return;
        }
        match reused.consume().0.into_any().downcast::<Buffered>() {
            Ok(b) => stream = *b,
            Err(_) => return,
        }
    }
}

/// Wrap an accepted connection the way pingora's own listener would.
fn downstream(tcp: tokio::net::TcpStream, peer: SocketAddr) -> Buffered {
    use pingora_core::protocols::{GetSocketDigest, SocketDigest};
    use std::os::fd::AsRawFd;

    let mut l4: pingora_core::protocols::l4::stream::Stream = tcp.into();
    // What pingora's own listener records, so that client_addr() works.
    let digest = SocketDigest::from_raw_fd(l4.as_raw_fd());
    let _ = digest.peer_addr.set(Some(peer.into()));
    l4.set_socket_digest(digest);
    Buffered::new(l4)
}

/// Pingora's processing of one HTTP/1 request (its future is boxed), with admission's decision
/// as the connection's user context.
fn http1<'a>(
    proxy: &'a Arc<HttpProxy<Gateway>>,
    stream: Buffered,
    admitted: Option<Admitted>,
    shutdown: &'a watch::Receiver<bool>,
) -> std::pin::Pin<Box<dyn Future<Output = Option<pingora_core::apps::ReusedHttpStream>> + Send + 'a>>
{
    use pingora_core::apps::HttpServerApp;
    use pingora_core::protocols::http::ServerSession;

    let mut session = ServerSession::new_http1(Box::new(stream));
    // Keep-alive until shutdown, as pingora's own loop does.
    session.set_keepalive((!*shutdown.borrow()).then_some(KEEPALIVE.as_secs()));
    session.set_connection_user_context(
        admitted.map(|a| -> Box<dyn Any + Send + Sync> { Box::new(a) }),
    );
    proxy.process_new_http(session, shutdown)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection waiting in admission — idle between requests or held while its revision
    /// wakes — costs this future (plus its head bytes and a queue place). Pingora's
    /// per-request state (about 18 KiB) must never become part of it.
    #[tokio::test]
    async fn a_waiting_connection_is_small() {
        let (_tx, routes) = watch::channel(Arc::new(RoutingTable::build([])));
        let gateway = Gateway {
            routes,
            revisions: Arc::default(),
            listener: Listener::External,
            poke: Arc::new(|_, _, _| {}),
            metrics: Arc::default(),
            traces: None,
        };
        let (_stop, shutdown) = watch::channel(false);
        let conf = Arc::new(ServerConf::default());
        let proxy = Arc::new(pingora_proxy::http_proxy(&conf, gateway.clone()));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let pool = Pool::default();
        let conn = connection(&proxy, &gateway, &pool, tcp, addr, &shutdown);
        let size = std::mem::size_of_val(&conn);
        assert!(
            size <= 1536,
            "a waiting connection's future is {size} bytes"
        );
    }
}
