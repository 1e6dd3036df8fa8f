//! The gateway proper: our own accept loop and connection loop in our own Tokio runtime.
//!
//! Per connection: each HTTP/1 request is admitted ([`crate::admission`]: head checked,
//! routed by Host and `Knative-Serving-Tag`, given a lease on an instance — waiting in the
//! revision's queue up to its timeout, 503 with Retry-After when the queue is full, 504 past
//! the deadline), then carried at the byte level ([`crate::plain`], websockets by
//! [`crate::upgrade`]). Pingora's proxy carries HTTP/2: clients speaking it with prior
//! knowledge (each stream routed in `request_filter`) and revisions whose instances speak
//! h2c. Every answer the gateway gives itself is one [`Refusal`], rendered as bytes on the
//! byte-level paths and as a pingora header on pingora's. Internal headers are stripped (a
//! client cannot pick a revision); on a failed connect (nothing was sent) the instance leaves
//! the rotation and another is chosen.

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

use http1::Refusal;
use http1::head::{RequestHead, Upgrade};
use http1::relay::refuse;
use http1::upstream::{Request, forwarded_for};

use crate::admission::{Admission, KEEPALIVE, admit};
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
    /// Set for errors we classify ourselves.
    refusal: Option<Refusal>,
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

/// A refusal as pingora's response head and body.
pub(crate) fn pingora_answer(refusal: &Refusal) -> Option<(Box<ResponseHeader>, Bytes)> {
    let mut resp = ResponseHeader::build(refusal.status, Some(4)).ok()?;
    for (name, value) in refusal.fields() {
        // Pingora decides its connection's persistence itself (`set_keepalive`).
        if name != "connection" {
            let _ = resp.insert_header(name, value);
        }
    }
    Some((Box::new(resp), Bytes::from(refusal.body())))
}

async fn respond(session: &mut Session, refusal: &Refusal) {
    let Some((resp, body)) = pingora_answer(refusal) else {
        return;
    };
    // The connection is closed after the gateway's own answers, as on the byte-level paths.
    session.set_keepalive(None);
    if session.write_response_header(resp, false).await.is_ok() {
        let _ = session.write_response_body(Some(body), true).await;
    }
}

/// How long connecting to an instance may take (the same as pingora's peers here).
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// A new connection to an instance, for the byte-level paths.
pub async fn connect(addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let connecting = tokio::net::TcpStream::connect(addr);
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// A request the gateway carries, leased to an instance.
#[derive(Debug)]
pub struct Carried {
    pub started: Instant,
    pub target: Arc<Target>,
    pub revision: Arc<RevisionState>,
    pub lease: Lease,
    pub head: RequestHead,
    /// What admission read: the head (`head.len` bytes), then anything after it.
    pub bytes: Vec<u8>,
}

/// Start a byte-level request's span (as of its arrival at `started`) when tracing is on;
/// returns it with the trace fields the instance gets in place of the client's.
pub(crate) fn span_for(
    gateway: &Gateway,
    req: &Request<'_, '_>,
    target: &Target,
    revision: &RevisionState,
    started: Instant,
) -> (Option<ebb_traces::Span>, http::HeaderMap) {
    let Some(traces) = gateway.traces.as_deref() else {
        return (None, http::HeaderMap::new());
    };
    let mut map = http::HeaderMap::new();
    for h in req.headers {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(h.name.as_bytes()),
            http::HeaderValue::from_bytes(h.value),
        ) {
            map.append(n, v);
        }
    }
    let since = std::time::SystemTime::now() - started.elapsed();
    let (span, next) = traces.start_at(
        &map,
        req.method,
        req.path(),
        vec![
            ebb_traces::KeyValue::new("k8s.namespace.name", revision.namespace.clone()),
            ebb_traces::KeyValue::new("knative.route", target.route.clone()),
            ebb_traces::KeyValue::new("knative.revision", revision.name.clone()),
        ],
        since,
    );
    (Some(span), next)
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
    ) -> std::result::Result<Lease, Refusal> {
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
            Ok(Err(refused)) => Err(Refusal::unavailable(refused.to_string())),
            Err(_) => Err(Refusal::timeout(format!(
                "timeout: no instance of revision {} became available within {:?}",
                rev.name,
                rev.timeout()
            ))),
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
        let tag = table.header_tag(tag.as_deref()).map(str::to_string);
        let Some(target) = table.lookup(&host, self.listener) else {
            let refusal = match table.broken(&host) {
                Some(why) => Refusal::new(500, why),
                None => Refusal::new(404, format!("no route for host {host:?}")),
            };
            respond(session, &refusal).await;
            return Ok(());
        };
        let Some(revision) = target.pick(tag.as_deref(), fastrand::u32(0..100)) else {
            let reason = format!("route {} has no ready revision", target.route);
            respond(session, &Refusal::unavailable(reason)).await;
            return Ok(());
        };
        let rev = self.revisions.get(&target.namespace, revision);
        if let Some(why) = rev.broken() {
            respond(session, &Refusal::new(500, why)).await;
            return Ok(());
        }
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

    /// Admission hands its decision over as the connection's user context (an HTTP/1
    /// request for a revision whose instances speak h2c).
    fn on_connection_reuse(
        &self,
        _session: &mut Session,
        ctx: &mut Ctx,
        prev: Box<dyn Any + Send + Sync>,
    ) {
        if let Ok(c) = prev.downcast::<Carried>() {
            let Carried {
                started,
                target,
                revision,
                lease,
                ..
            } = *c;
            ctx.started = Some(started);
            ctx.target = Some(target);
            ctx.revision = Some(revision);
            ctx.lease = Some(lease);
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
        if let Some(refusal) = &ctx.refusal {
            return Error::e_explain(
                ErrorType::HTTPStatus(refusal.status),
                refusal.reason.clone(),
            );
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
                    Err(refusal) => {
                        let e = Error::explain(
                            ErrorType::HTTPStatus(refusal.status),
                            refusal.reason.clone(),
                        );
                        ctx.refusal = Some(refusal);
                        return Err(e);
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
        let refusal = match ctx.refusal.take() {
            Some(r) => Some(r),
            None => match e.etype() {
                ErrorType::HTTPStatus(c) => Some(Refusal::new(*c, e.to_string())),
                ErrorType::ConnectTimedout
                | ErrorType::ConnectRefused
                | ErrorType::ConnectError => Some(Refusal::bad_gateway(format!(
                    "cannot reach an instance: {e}"
                ))),
                ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                    Some(Refusal::timeout(format!("timeout: {e}")))
                }
                _ => match e.esource() {
                    pingora_error::ErrorSource::Upstream => {
                        Some(Refusal::bad_gateway(format!("instance failed: {e}")))
                    }
                    // The client went away: nobody to answer.
                    pingora_error::ErrorSource::Downstream => None,
                    _ => Some(Refusal::new(500, e.to_string())),
                },
            },
        };
        let code = refusal.as_ref().map_or(0, |r| r.status);
        if let Some(refusal) = refusal {
            // The connection is closed after this answer, which says so: a client reusing
            // the connection meanwhile would lose its next request to the close.
            respond(session, &refusal).await;
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
    let open = Arc::new(Open::default());
    let mut stop = shutdown.clone();
    loop {
        tokio::select! {
            (tcp, peer) = http1::accept::accept(&listener) => {
                let _ = tcp.set_nodelay(true);
                let proxy = proxy.clone();
                let shutdown = shutdown.clone();
                // Counted until the task ends, however it ends (a panic included).
                let open = Open::enter(&open);
                let gateway = gateway.clone();
                let pool = pool.clone();
                tokio::spawn(async move {
                    let _open = open;
                    connection(&proxy, &gateway, &pool, tcp, peer, &shutdown).await;
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
    let _ = tokio::time::timeout(grace, open.drained()).await;
}

/// Connections being served, for the drain.
#[derive(Debug, Default)]
struct Open {
    count: std::sync::atomic::AtomicUsize,
    gone: tokio::sync::Notify,
}

/// One counted connection; dropping it (the task ended, returned or panicked) uncounts it.
#[derive(Debug)]
struct OpenGuard(Arc<Open>);

impl Open {
    fn enter(open: &Arc<Open>) -> OpenGuard {
        open.count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        OpenGuard(open.clone())
    }

    /// Until no connection is open.
    async fn drained(&self) {
        loop {
            let gone = self.gone.notified();
            if self.count.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                return;
            }
            gone.await;
        }
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        if self
            .0
            .count
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst)
            == 1
        {
            self.0.gone.notify_waiters();
        }
    }
}

/// One downstream connection: each HTTP/1 request is admitted (read, checked, routed, given
/// an instance, or refused), then carried at the byte level — by pingora's proxy only for a
/// revision whose instances speak h2c; HTTP/2 goes to pingora whole.
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
    let client = http1::upstream::ClientHeaders::new(Some(peer));
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
            Admission::Refused(refusal) => {
                refuse(&mut stream, &refusal).await;
                return;
            }
            Admission::Admitted(admitted) => admitted,
        };
        let carried = match admitted.carried() {
            Ok(c) => c,
            Err(u) => {
                refuse(&mut stream, &u.refusal).await;
                gateway.finished(&u.target, &u.revision, u.started, None, u.refusal.status);
                return;
            }
        };
        if carried.revision.h2c() {
            // Pingora speaks HTTP/2 to the instance; it reads the head again from the stream.
            stream.rewind(&carried.bytes);
            let Some(reused) = http1(proxy, stream, carried, shutdown).await else {
                return;
            };
            if *shutdown.borrow() {
                return;
            }
            match reused.consume().0.into_any().downcast::<Buffered>() {
                Ok(b) => stream = *b,
                Err(_) => return,
            }
            continue;
        }
        if carried.head.upgrade == Upgrade::Websocket {
            Box::pin(crate::upgrade::tunnel(gateway, stream, carried, &client)).await;
            return;
        }
        // Boxed: the exchange's state (several KiB) exists only while it runs, never while
        // the connection waits.
        let exchange = crate::plain::proxy(gateway, pool, stream, carried, &client, shutdown);
        match Box::pin(exchange).await {
            Some(s) if !*shutdown.borrow() => stream = s,
            _ => return,
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
    carried: Carried,
    shutdown: &'a watch::Receiver<bool>,
) -> std::pin::Pin<Box<dyn Future<Output = Option<pingora_core::apps::ReusedHttpStream>> + Send + 'a>>
{
    use pingora_core::apps::HttpServerApp;
    use pingora_core::protocols::http::ServerSession;

    let mut session = ServerSession::new_http1(Box::new(stream));
    // Keep-alive until shutdown, as pingora's own loop does.
    session.set_keepalive((!*shutdown.borrow()).then_some(KEEPALIVE.as_secs()));
    session.set_connection_user_context(Some(Box::new(carried)));
    proxy.process_new_http(session, shutdown)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection task that panics still leaves the drain's count: shutdown does not wait
    /// the whole grace for it.
    #[tokio::test(start_paused = true)]
    async fn a_panicking_connection_does_not_stall_the_drain() {
        let open = Arc::new(Open::default());
        let guard = Open::enter(&open);
        let task = tokio::spawn(async move {
            let _open = guard;
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            panic!("a bug in a connection task");
        });
        let start = tokio::time::Instant::now();
        let drained = tokio::time::timeout(DEFAULT_GRACE, open.drained()).await;
        assert!(drained.is_ok(), "the drain waited for a task that had died");
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
        assert!(task.await.is_err_and(|e| e.is_panic()));
    }

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
