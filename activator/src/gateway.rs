//! The gateway proper: pingora's proxy with Ebb's routing and throttling, embedded in our own
//! Tokio runtime (we run the accept loop; pingora handles each connection).
//!
//! Per request: strip internal headers (a client cannot pick a revision); route by Host and
//! `Knative-Serving-Tag` (404 naming the host when nothing matches); take a lease on an
//! instance, waiting in the revision's queue up to its timeout (503 with Retry-After when the
//! queue is full, 504 past the deadline); mark the request as proxied; on a failed connect
//! (nothing was sent) take that instance out of rotation and choose again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::protocols::Stream;
use pingora_core::server::configuration::ServerConf;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, HttpProxy, ProxyHttp, Session};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::revisions::{RevisionState, Revisions};
use crate::routes::{Listener, RoutingTable};
use crate::throttler::{Lease, Refused};

/// Called when a request has to wait for a revision that has no ready instance: the autoscaler
/// should decide at once (a poke) instead of at its next tick.
pub type Poke = Arc<dyn Fn(&str, &str, usize) + Send + Sync>;

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
    route: Option<String>,
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

async fn respond(session: &mut Session, status: u16, reason: &str, retry_after: bool) {
    let mut resp = match ResponseHeader::build(status, Some(3)) {
        Ok(r) => r,
        Err(_) => return,
    };
    let body = Bytes::from(format!("{reason}\n"));
    let _ = resp.insert_header("content-type", "text/plain; charset=utf-8");
    let _ = resp.insert_header("content-length", body.len().to_string());
    if retry_after {
        let _ = resp.insert_header("retry-after", "1");
    }
    if session
        .write_response_header(Box::new(resp), false)
        .await
        .is_ok()
    {
        let _ = session.write_response_body(Some(body), true).await;
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

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let req = session.req_header_mut();
        // Never obeyed from clients: only the routing table chooses revisions.
        req.remove_header(wire::HEADER_REVISION);
        req.remove_header(wire::HEADER_NAMESPACE);
        let host = host_of(req);
        let tag = req
            .headers
            .get(wire::HEADER_TAG)
            .and_then(|t| t.to_str().ok())
            .map(str::to_string);
        let table = self.routes.borrow().clone();
        let Some(target) = table.lookup(&host, self.listener) else {
            respond(session, 404, &format!("no route for host {host:?}"), false).await;
            return Ok(true);
        };
        let Some(revision) = target.pick(tag.as_deref(), fastrand::u32(0..100)) else {
            respond(
                session,
                503,
                &format!("route {} has no ready revision", target.route),
                true,
            )
            .await;
            return Ok(true);
        };
        let rev = self.revisions.get(&target.namespace, revision);
        rev.arrivals
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = &self.traces {
            let req = session.req_header();
            let (method, path) = (req.method.to_string(), req.uri.path().to_string());
            let (span, next) = t.start(
                &req.headers,
                &method,
                &path,
                vec![
                    ebb_traces::KeyValue::new("k8s.namespace.name", rev.namespace.clone()),
                    ebb_traces::KeyValue::new("knative.route", target.route.clone()),
                    ebb_traces::KeyValue::new("knative.revision", rev.name.clone()),
                ],
            );
            // The queue-proxy's span becomes a child of ours.
            let req = session.req_header_mut();
            for (k, v) in next.iter() {
                let _ = req.insert_header(k.clone(), v.clone());
            }
            ctx.span = Some(span);
        }
        ctx.revision = Some(rev);
        ctx.route = Some(target.route.clone());
        Ok(false)
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let Some(rev) = ctx.revision.clone() else {
            return Error::e_explain(ErrorType::InternalError, "no revision chosen");
        };
        ctx.lease = None;
        let deadline = ctx.started.unwrap_or_else(Instant::now) + rev.timeout();
        // What a waiting request holds in memory: its headers (the body stays in the socket
        // until an instance is chosen).
        let req = session.req_header();
        let bytes = req
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>()
            + req.uri.path_and_query().map_or(0, |p| p.as_str().len());
        let throttler = rev.throttler.clone();
        if throttler.endpoints() == 0 {
            (self.poke)(&rev.namespace, &rev.name, throttler.queued() + 1);
        }
        let waiting = Instant::now();
        let acquired = tokio::time::timeout_at(deadline.into(), throttler.acquire(bytes)).await;
        self.metrics
            .waited(&rev.namespace, &rev.name, waiting.elapsed());
        match acquired {
            Ok(Ok(lease)) => {
                let mut peer = HttpPeer::new(lease.addr, false, String::new());
                if rev.h2c() {
                    peer.options.set_http_version(2, 2);
                    // pingora opens one stream per connection by default; share connections.
                    peer.options.max_h2_streams = 100;
                }
                peer.options.connection_timeout = Some(std::time::Duration::from_secs(2));
                ctx.lease = Some(lease);
                Ok(Box::new(peer))
            }
            Ok(Err(refused)) => {
                let reason = refused.to_string();
                ctx.refusal = Some((503, reason.clone()));
                let _ = matches!(refused, Refused::QueueFull { .. });
                Error::e_explain(ErrorType::HTTPStatus(503), reason)
            }
            Err(_) => {
                let reason = format!(
                    "timeout: no instance of revision {} became available within {:?}",
                    rev.name,
                    rev.timeout()
                );
                ctx.refusal = Some((504, reason.clone()));
                Error::e_explain(ErrorType::HTTPStatus(504), reason)
            }
        }
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        _ctx: &mut Ctx,
    ) -> Result<()> {
        upstream.insert_header(wire::HEADER_PROXY, wire::PROXY_BY_ACTIVATOR)?;
        let client: Option<SocketAddr> = session.client_addr().and_then(|a| a.as_inet()).copied();
        if let Some(ip) = client.map(|a| a.ip()) {
            let fwd = match ip {
                std::net::IpAddr::V4(v4) => format!("for={v4};proto=http"),
                std::net::IpAddr::V6(v6) => format!("for=\"[{v6}]\";proto=http"),
            };
            let joined = match upstream
                .headers
                .get("forwarded")
                .and_then(|v| v.to_str().ok())
            {
                Some(prev) => format!("{prev}, {fwd}"),
                None => fwd,
            };
            upstream.insert_header("forwarded", joined)?;
            let xff = match upstream
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
            {
                Some(prev) => format!("{prev}, {ip}"),
                None => ip.to_string(),
            };
            upstream.insert_header("x-forwarded-for", xff)?;
            if !upstream.headers.contains_key("x-forwarded-proto") {
                upstream.insert_header("x-forwarded-proto", "http")?;
            }
        }
        Ok(())
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
        if let (Some(rev), Some(route)) = (&ctx.revision, &ctx.route) {
            let status = session.response_written().map_or(0, |r| r.status.as_u16());
            let took = ctx
                .started
                .map_or(std::time::Duration::ZERO, |s| s.elapsed());
            self.metrics
                .request(&rev.namespace, route, &rev.name, status, took);
            if let Some(span) = ctx.span.take() {
                ebb_traces::Traces::finish(span, status);
            }
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
    let mut proxy = pingora_proxy::http_proxy(&conf, gateway);
    // HTTP/2 with prior knowledge (gRPC) as well as HTTP/1.1 on the same port.
    let mut options = pingora_core::apps::HttpServerOptions::default();
    options.h2c = true;
    proxy.server_options = Some(options);
    let proxy: Arc<HttpProxy<Gateway>> = Arc::new(proxy);
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
                tokio::spawn(async move {
                    use pingora_core::apps::ServerApp;
                    use std::os::fd::AsRawFd;
                    use pingora_core::protocols::{GetSocketDigest, SocketDigest};
                    let mut l4: pingora_core::protocols::l4::stream::Stream = tcp.into();
                    // What pingora's own listener records, so that client_addr() works.
                    let digest = SocketDigest::from_raw_fd(l4.as_raw_fd());
                    let _ = digest.peer_addr.set(Some(peer.into()));
                    l4.set_socket_digest(digest);
                    let mut stream: Stream = Box::new(crate::buffered::Buffered::new(l4));
                    // Keep-alive: pingora hands the connection back while it is reusable (it
                    // stops doing so once `shutdown` is true).
                    while let Some(s) = proxy.process_new(stream, &shutdown).await {
                        if *shutdown.borrow() {
                            break;
                        }
                        stream = s;
                    }
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
