//! The short path for plain requests.
//!
//! Most requests a gateway sees are plain: HTTP/1.1, no body or a small sized one (a CloudEvent,
//! a JSON call), no upgrade (see `admission::is_plain`). For them the whole exchange is: send
//! the head and body, relay the response.
//! Pingora's full proxy (its phase machine, a task pair joined by channels, a dozen boxed
//! futures per request) costs about a quarter more CPU per request than that exchange needs,
//! and as much again in latency at low load. So admitted plain requests are proxied here with
//! pingora's own HTTP/1 sessions and connection pool; everything else (chunked or large
//! bodies, `Expect`, HTTP/2, refusals) still goes through pingora's proxy, and websockets
//! through `upgrade`.
//!
//! What a request sees is the same on both paths: internal headers stripped, hop-by-hop
//! headers removed as pingora's default policy does, `K-Proxy-Request`/`Forwarded`/
//! `X-Forwarded-*` added, a failed connect retried on another instance, a pooled connection
//! the instance had closed retried on a fresh one (with the body kept for it), 502 when the instance
//! fails, the client's disconnect abandoning the exchange, the same metrics and span.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::HeaderValue;
use http::header;
use pingora_core::connectors::http::Connector;
use pingora_core::protocols::http::ServerSession as Downstream;
use pingora_core::protocols::http::client::HttpSession as Upstream;
use pingora_core::protocols::http::v1::client::HttpSession as UpstreamH1;
use pingora_core::upstreams::peer::{HttpPeer, Peer, PeerOptions};
use pingora_error::ErrorType;
use pingora_http::{RequestHeader, ResponseHeader};
use tokio::sync::watch;

use crate::admission::KEEPALIVE;
use crate::buffered::Buffered;
use crate::gateway::{
    Gateway, error_response, held_bytes, hop_by_hop, peer, proxy_headers, start_span,
};
use crate::revisions::RevisionState;
use crate::routes::Target;
use crate::throttler::Lease;

/// Attempts after the first, as pingora's proxy allows (its `max_retries` default).
const MAX_RETRIES: usize = 16;

/// An instance as the plain path's connection pool sees it. Every connection in that pool is
/// plain HTTP/1 to an instance, so reuse is keyed by address alone (pingora's peer hashes all
/// its options per request), and a pooled connection is not re-checked with `getpeername`
/// (pingora's guard against a pooled descriptor closed and reused elsewhere: the pool owns its
/// streams, and nothing here closes a descriptor it does not own). One syscall and one hash
/// fewer per request.
#[derive(Clone, Debug)]
struct Instance {
    peer: HttpPeer,
    hash: u64,
}

impl Instance {
    fn new(addr: std::net::SocketAddr) -> Instance {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        addr.hash(&mut h);
        Instance {
            peer: peer(addr, false),
            hash: h.finish(),
        }
    }
}

impl std::fmt::Display for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.peer.fmt(f)
    }
}

impl Peer for Instance {
    fn address(&self) -> &pingora_core::protocols::l4::socket::SocketAddr {
        self.peer.address()
    }
    fn tls(&self) -> bool {
        false
    }
    fn sni(&self) -> &str {
        ""
    }
    fn reuse_hash(&self) -> u64 {
        self.hash
    }
    fn get_peer_options(&self) -> Option<&PeerOptions> {
        self.peer.get_peer_options()
    }
    fn get_mut_peer_options(&mut self) -> Option<&mut PeerOptions> {
        self.peer.get_mut_peer_options()
    }
    fn matches_fd<V: std::os::fd::AsRawFd>(&self, _fd: V) -> bool {
        true
    }
}

/// An admitted plain request that has an instance.
#[derive(Debug)]
pub struct Plain {
    pub started: Instant,
    pub target: Arc<Target>,
    pub revision: Arc<RevisionState>,
    pub lease: Lease,
}

/// Proxy one admitted plain request read from `stream`; the stream comes back when the
/// connection can carry another request.
pub async fn proxy(
    gateway: &Gateway,
    connector: &Connector,
    stream: Buffered,
    request: Plain,
    client: &ClientHeaders,
    shutdown: &watch::Receiver<bool>,
) -> Option<Buffered> {
    let mut down = Downstream::new_http1(Box::new(stream));
    down.set_keepalive((!*shutdown.borrow()).then_some(KEEPALIVE.as_secs()));
    match down.read_request().await {
        Ok(true) => {}
        Ok(false) => return None,
        Err(e) => {
            // Admission's parser accepted what pingora's refuses: answer as pingora would.
            if matches!(e.etype(), ErrorType::InvalidHTTPHeader) {
                respond(&mut down, 400, &format!("invalid request: {e}"), false).await;
            }
            return None;
        }
    }
    let Plain {
        started,
        target,
        revision,
        lease,
    } = request;
    // A small body (admission checked its size) is read whole: sent after the head, and again
    // if a pooled connection turns out to be closed.
    let mut body = Vec::new();
    if !down.is_body_empty() {
        loop {
            match down.read_request_body().await {
                Ok(Some(chunk)) => body.push(chunk),
                Ok(None) => break,
                // The client went away or sent a malformed body: nothing reached the instance.
                Err(_) => return None,
            }
        }
    }
    let req = down.req_header_mut();
    // Never obeyed from clients: only the routing table chooses revisions.
    req.remove_header(wire::HEADER_REVISION);
    req.remove_header(wire::HEADER_NAMESPACE);
    let span = gateway
        .traces
        .as_ref()
        .map(|t| start_span(t, down.req_header_mut(), &target, &revision, started));
    let exchange = Exchange {
        gateway,
        connector,
        revision: &revision,
        started,
        client,
    };
    let (status, reusable) = exchange.run(&mut down, &body, lease).await;
    gateway.metrics.request(
        &revision.namespace,
        &target.route,
        &revision.name,
        status,
        started.elapsed(),
    );
    if let Some(span) = span {
        ebb_traces::Traces::finish(span, status);
    }
    if !reusable || *shutdown.borrow() {
        return None;
    }
    match down.finish().await {
        Ok(Some(reusable)) => reusable
            .into_parts()
            .0
            .into_any()
            .downcast::<Buffered>()
            .ok()
            .map(|b| *b),
        _ => None,
    }
}

/// Remove what describes only this hop (see [`hop_by_hop`]; a plain request's `Connection`
/// header names nothing else, so no nominated fields remain).
fn strip_hop_by_hop(req: &mut RequestHeader) {
    // Most requests carry none or one of them: look at the names present rather than remove
    // each candidate (every removal hashes into two maps).
    let present: Vec<http::HeaderName> = req
        .headers
        .keys()
        .filter(|k| hop_by_hop(k.as_str()))
        .cloned()
        .collect();
    for name in &present {
        req.remove_header(name);
    }
}

/// The client's proxy headers, rendered once per connection.
#[derive(Debug, Default)]
pub struct ClientHeaders {
    client: Option<std::net::SocketAddr>,
    /// `for=IP;proto=http` and the bare IP, when no earlier proxy wrote these headers.
    forwarded: Option<(HeaderValue, HeaderValue)>,
}

impl ClientHeaders {
    pub fn new(client: Option<std::net::SocketAddr>) -> ClientHeaders {
        let mut probe = RequestHeader::build("GET", b"/", None).ok();
        let forwarded = probe.as_mut().and_then(|req| {
            proxy_headers(req, client).ok()?;
            let value = |n: &str| req.headers.get(n).cloned();
            Some((value("forwarded")?, value("x-forwarded-for")?))
        });
        ClientHeaders { client, forwarded }
    }

    /// Add the proxy headers to a request to an instance.
    fn apply(&self, req: &mut RequestHeader) -> pingora_error::Result<()> {
        let fresh = !req.headers.contains_key("forwarded")
            && !req.headers.contains_key("x-forwarded-for")
            && !req.headers.contains_key("x-forwarded-proto");
        match &self.forwarded {
            Some((forwarded, xff)) if fresh => {
                req.insert_header(wire::HEADER_PROXY, wire::PROXY_BY_ACTIVATOR)?;
                req.insert_header("forwarded", forwarded.clone())?;
                req.insert_header("x-forwarded-for", xff.clone())?;
                req.insert_header("x-forwarded-proto", "http")
            }
            _ => proxy_headers(req, self.client),
        }
    }
}

/// Write one of the gateway's own answers (the connection is closed after it).
async fn respond(down: &mut Downstream, status: u16, reason: &str, retry_after: bool) {
    let Some((resp, body)) = error_response(status, reason, retry_after) else {
        return;
    };
    down.set_keepalive(None);
    if down.write_response_header(resp).await.is_ok() {
        let _ = down.write_response_body(body, true).await;
    }
}

/// How an exchange with an instance went wrong.
enum Failure {
    /// The instance's connection failed (possibly a pooled connection it had closed).
    Upstream(Box<pingora_error::Error>),
    /// The client went away (or sent bytes where none belong) before the response began.
    Client,
}

struct Exchange<'a> {
    gateway: &'a Gateway,
    connector: &'a Connector,
    revision: &'a RevisionState,
    started: Instant,
    client: &'a ClientHeaders,
}

impl Exchange<'_> {
    /// The request as the instance gets it.
    fn upstream_request(&self, down: &Downstream) -> pingora_error::Result<Box<RequestHeader>> {
        let mut req = Box::new(down.req_header().clone());
        strip_hop_by_hop(&mut req);
        self.client.apply(&mut req)?;
        Ok(req)
    }

    /// Send the request and relay the response: (status for metrics, whether the client's
    /// connection may carry another request).
    async fn run(&self, down: &mut Downstream, body: &[Bytes], mut lease: Lease) -> (u16, bool) {
        let mut retries = 0;
        loop {
            let peer = Instance::new(lease.addr);
            let (mut up, reused) = match self.connector.get_http_session(&peer).await {
                Ok((Upstream::H1(up), reused)) => (up, reused),
                Ok(_) => {
                    let reason = "instance failed: answered HTTP/2 to HTTP/1";
                    respond(down, 502, reason, false).await;
                    return (502, false);
                }
                Err(e) => {
                    // Nothing was sent: safe to retry elsewhere. This instance leaves the
                    // rotation until the backend reports it again.
                    self.revision.throttler.mark_down(lease.addr);
                    tracing::warn!(revision = %self.revision.name, instance = %lease.addr, "connect failed; retrying elsewhere");
                    retries += 1;
                    if retries > MAX_RETRIES {
                        let reason = format!("cannot reach an instance: {e}");
                        respond(down, 502, &reason, false).await;
                        return (502, false);
                    }
                    drop(lease);
                    let bytes = held_bytes(down.req_header());
                    lease = match self.gateway.lease(self.revision, self.started, bytes).await {
                        Ok(lease) => lease,
                        Err((code, reason)) => {
                            respond(down, code, &reason, code == 503).await;
                            return (code, false);
                        }
                    };
                    continue;
                }
            };
            let req = match self.upstream_request(down) {
                Ok(req) => req,
                Err(e) => {
                    let reason = format!("cannot forward the request: {e}");
                    respond(down, 500, &reason, false).await;
                    return (500, false);
                }
            };
            match Self::head(&mut up, down, req, body).await {
                Ok(()) => return self.relay(down, up, &peer).await,
                Err(Failure::Client) => return (0, false),
                // A pooled connection the instance had closed before answering: send again on
                // a fresh one, as pingora's proxy does (the instance saw a closed connection,
                // not a request).
                Err(Failure::Upstream(_)) if reused && retries < MAX_RETRIES => retries += 1,
                Err(Failure::Upstream(e)) => {
                    respond(down, 502, &format!("instance failed: {e}"), false).await;
                    return (502, false);
                }
            }
        }
    }

    /// Send the request and read the response head, giving up if the client goes away.
    async fn head(
        up: &mut UpstreamH1,
        down: &mut Downstream,
        req: Box<RequestHeader>,
        body: &[Bytes],
    ) -> Result<(), Failure> {
        up.write_request_header(req)
            .await
            .map_err(Failure::Upstream)?;
        for chunk in body {
            up.write_body(chunk).await.map_err(Failure::Upstream)?;
        }
        up.finish_body().await.map_err(Failure::Upstream)?;
        tokio::select! {
            r = up.read_response() => r.map(|_| ()).map_err(Failure::Upstream),
            // The request is complete: anything from the client now is its end.
            _ = down.read_body_or_idle(true) => Err(Failure::Client),
        }
    }

    /// Relay the response whose head `up` has read; give the connection back to the pool
    /// when it ended cleanly.
    async fn relay(
        &self,
        down: &mut Downstream,
        mut up: UpstreamH1,
        peer: &Instance,
    ) -> (u16, bool) {
        let mut resp = match up.resp_header() {
            Some(r) => Box::new(r.clone()),
            None => return (502, false),
        };
        // Informational responses (103 Early Hints) pass through; the final one follows.
        while resp.status.is_informational() {
            if resp.status == http::StatusCode::SWITCHING_PROTOCOLS {
                // Nothing asked to switch protocols.
                let reason = "instance failed: 101 without an upgrade request";
                respond(down, 502, reason, false).await;
                return (502, false);
            }
            if down.write_response_header(resp).await.is_err() {
                return (0, false);
            }
            resp = match up.read_response().await {
                Ok(_) => match up.resp_header() {
                    Some(r) => Box::new(r.clone()),
                    None => return (502, false),
                },
                Err(e) => {
                    respond(down, 502, &format!("instance failed: {e}"), false).await;
                    return (502, false);
                }
            };
        }
        let status = resp.status.as_u16();
        chunk_close_delimited(&mut resp, down.req_header());
        if down.write_response_header(resp).await.is_err() {
            return (status, false);
        }
        loop {
            match up.read_body_bytes().await {
                Ok(Some(data)) => {
                    if down.write_response_body(data, false).await.is_err() {
                        return (status, false);
                    }
                }
                Ok(None) => break,
                // The response is cut short: closing the client's connection says so.
                Err(_) => return (status, false),
            }
        }
        if down.finish_body().await.is_err() {
            return (status, false);
        }
        up.respect_keepalive();
        self.connector
            .release_http_session(Upstream::H1(up), peer, None)
            .await;
        (status, true)
    }
}

/// A response without framing (HTTP/1.0 style, ended by closing the connection) is re-framed
/// as chunked, so that the client's connection survives it — as pingora's proxy does.
fn chunk_close_delimited(resp: &mut ResponseHeader, req: &RequestHeader) {
    let no_body = req.method == http::Method::HEAD || matches!(resp.status.as_u16(), 204 | 304);
    if !no_body
        && resp.headers.get(header::TRANSFER_ENCODING).is_none()
        && resp.headers.get(header::CONTENT_LENGTH).is_none()
    {
        resp.set_version(http::Version::HTTP_11);
        let _ = resp.insert_header(header::TRANSFER_ENCODING, "chunked");
    }
}
