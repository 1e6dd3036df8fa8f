//! The byte-level path: every HTTP/1 request to an HTTP/1 instance except websocket upgrades
//! (`upgrade`) — bodiless, sized, chunked, `Expect: 100-continue`, HTTP/1.0 — is carried here.
//!
//! Admission has already read and checked the head ([`http1::head`]), so the exchange is:
//! send the head as the client's bytes less the client's hop plus the proxy fields
//! ([`http1::upstream`]), then the body, then relay the response ([`http1::response`],
//! [`http1::relay`]). A body is sent whole with the head when it is small (≤ 64 KiB: a
//! CloudEvent, a JSON call — nearly all traffic), which also lets a request on a pooled
//! connection the instance had closed be sent again; a larger one, or one the client holds
//! back until a `100 Continue`, is streamed on a fresh connection while the response is
//! awaited. Every body is framed by its length or checked chunk by chunk (strictly: see
//! [`http1::chunked`]): on a framing error nothing after it reaches the instance, whose
//! connection is then closed, and the client gets 400. Bytes after the body are the client's
//! next request and go back through admission, routed like any other.
//!
//! This is a deliberate divergence from "the activator is built on pingora": pingora's proxy
//! costs about a quarter more CPU per request than the exchange needs, and its HTTP/1 sessions
//! three to four times the user CPU nginx spends on the same hop (measured, see the README).
//! Pingora still carries HTTP/2 (prior knowledge from clients, and revisions whose instances
//! speak h2c).
//!
//! What a request sees: internal headers stripped, hop-by-hop headers removed (and fields its
//! `Connection` names, never framing ones), `K-Proxy-Request`/`Forwarded`/`X-Forwarded-*`
//! added, a failed connect retried on another instance, close-delimited responses re-framed as
//! chunked for HTTP/1.1 clients and chunked ones decoded for HTTP/1.0 clients, 1xx passed
//! through (not to HTTP/1.0), 502 when the instance fails, the client's disconnect abandoning
//! the exchange, the same metrics and span.

use std::time::Instant;

use http1::Refusal;
use http1::chunked::ChunkError;
use http1::head::{BodyFraming, RequestHead, Uninit};
use http1::relay::{Body, ReadError, read_response, refuse};
use http1::response::{Client, Framing, Response, Transform};
use http1::upstream::{ClientHeaders, Request};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::admission::KEEPALIVE;
use crate::buffered::Buffered;
use crate::gateway::{Carried, Gateway};
use crate::pool::Pool;
use crate::revisions::RevisionState;
use crate::throttler::Lease;

/// Attempts after the first, as pingora's proxy allows (its `max_retries` default).
const MAX_RETRIES: usize = 16;

/// Request bodies up to this size are read whole and sent with the head (they fit in the
/// sockets' buffers, so an instance that answers before reading its body cannot stall the
/// send), and kept for a resend when a pooled connection turns out to be closed — as pingora's
/// proxy keeps up to 64 KiB of a body for its retries. Larger ones are streamed.
pub const MAX_WHOLE_BODY: usize = 64 * 1024;

/// Read size for bodies.
const BODY_BUF: usize = 16 * 1024;

/// Proxy one admitted request; the stream comes back when the connection can carry another.
pub async fn proxy(
    gateway: &Gateway,
    pool: &Pool,
    mut stream: Buffered,
    request: Carried,
    client: &ClientHeaders,
    shutdown: &watch::Receiver<bool>,
) -> Option<Buffered> {
    let Carried {
        started,
        target,
        revision,
        lease,
        head,
        bytes,
    } = request;
    let end = |status: u16, span| gateway.finished(&target, &revision, started, span, status);
    let mut headers = [const { Uninit::uninit() }; http1::head::MAX_HEADERS];
    let Some(req) = Request::parse(&bytes[..head.len], &mut headers) else {
        let refusal = Refusal::bad_request("invalid request head");
        refuse(&mut stream, &refusal).await;
        end(400, None);
        return None;
    };
    let (span, trace) = crate::gateway::span_for(gateway, &req, &target, &revision, started);
    let mut upstream = Vec::with_capacity(head.len + 256);
    req.write_upstream(&mut upstream, client, b"", &trace);
    let head_len = upstream.len();
    let ctx = Client {
        head_request: head.head_request,
        close: !head.keep_alive || *shutdown.borrow(),
        http10: head.version == http1::head::Version::Http10,
    };

    // The body: what came with the head, then (unless the client waits for a 100) more,
    // while it is small enough to go whole.
    let mut next = Vec::new();
    let body = match take_body(
        &mut stream,
        &head,
        &bytes[head.len..],
        &mut upstream,
        &mut next,
    )
    .await
    {
        Ok(b) => b,
        Err(Taken::Invalid(e)) => {
            refuse(&mut stream, &Refusal::bad_request(e.to_string())).await;
            end(400, span);
            return None;
        }
        Err(Taken::ClientGone) => {
            end(0, span);
            return None;
        }
    };
    drop(bytes);
    let exchange = Exchange {
        gateway,
        pool,
        revision: &revision,
        started,
        held: head_len,
    };
    let (status, keep) = match body {
        None => {
            exchange
                .whole(&mut stream, &mut next, &upstream, ctx, lease)
                .await
        }
        Some(body) => {
            exchange
                .streamed(&mut stream, &mut next, &upstream, body, ctx, lease)
                .await
        }
    };
    end(status, span);
    if !keep || ctx.close || *shutdown.borrow() {
        return None;
    }
    if !next.is_empty() {
        stream.rewind(&next);
    }
    Some(stream)
}

/// Why a body could not be taken.
enum Taken {
    Invalid(ChunkError),
    ClientGone,
}

/// Move the body's first bytes (`early`, then from `stream`) after the head in `upstream`,
/// bytes past its end into `next`. `None`: the body is all there (or there is none); else the
/// rest is to be streamed, framed by what is returned.
async fn take_body(
    stream: &mut Buffered,
    head: &RequestHead,
    early: &[u8],
    upstream: &mut Vec<u8>,
    next: &mut Vec<u8>,
) -> Result<Option<Body>, Taken> {
    let Some(mut body) = Body::for_request(head.body) else {
        next.extend_from_slice(early);
        return Ok(None);
    };
    let start = upstream.len();
    let (take, mut done) = body.feed(early).map_err(Taken::Invalid)?;
    upstream.extend_from_slice(&early[..take]);
    next.extend_from_slice(&early[take..]);
    let mut buf = Vec::new();
    while !done && !head.expect_continue && upstream.len() - start < MAX_WHOLE_BODY {
        if buf.is_empty() {
            buf.resize(BODY_BUF, 0);
        }
        // A sized body is read no further than its end (the next request stays in the socket).
        let want = match (&body, head.body) {
            (Body::Length(left), BodyFraming::Length(_)) => {
                usize::try_from(*left).map_or(BODY_BUF, |l| l.min(BODY_BUF))
            }
            _ => BODY_BUF,
        };
        let n = match tokio::time::timeout(KEEPALIVE, stream.read(&mut buf[..want])).await {
            Ok(Ok(n)) if n > 0 => n,
            // The client went away, or stalled mid-body: nothing reached the instance.
            _ => return Err(Taken::ClientGone),
        };
        let (take, ended) = body.feed(&buf[..n]).map_err(Taken::Invalid)?;
        upstream.extend_from_slice(&buf[..take]);
        next.extend_from_slice(&buf[take..n]);
        done = ended;
    }
    Ok((!done).then_some(body))
}

/// Wait for the client to go away while its response is awaited. Bytes it sends meanwhile
/// (a pipelined request) are kept in `next`, and from then on it is not watched.
pub(crate) async fn client_gone<R: AsyncRead + Unpin>(stream: &mut R, next: &mut Vec<u8>) {
    if next.is_empty() {
        let mut buf = [0u8; 512];
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => next.extend_from_slice(&buf[..n]),
        }
    }
    std::future::pending().await
}

struct Exchange<'a> {
    gateway: &'a Gateway,
    pool: &'a Pool,
    revision: &'a RevisionState,
    started: Instant,
    /// What the request holds while it waits for another instance.
    held: usize,
}

/// Why sending the rest of a body stopped.
enum Pumped {
    Invalid(ChunkError),
    ClientGone,
    /// The instance stopped taking the body (closed or reset); its answer may follow.
    InstanceGone,
}

/// Send the rest of a streamed body from `client` to `instance`, checking its framing; bytes
/// past its end go to `next`.
async fn pump<R, W>(
    client: &mut R,
    instance: &mut W,
    mut body: Body,
    next: &mut Vec<u8>,
) -> Result<(), Pumped>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BODY_BUF];
    loop {
        let n = match tokio::time::timeout(KEEPALIVE, client.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return Err(Pumped::ClientGone),
        };
        let (take, done) = body.feed(&buf[..n]).map_err(Pumped::Invalid)?;
        instance
            .write_all(&buf[..take])
            .await
            .map_err(|_| Pumped::InstanceGone)?;
        if done {
            next.extend_from_slice(&buf[take..n]);
            return instance.flush().await.map_err(|_| Pumped::InstanceGone);
        }
    }
}

impl Exchange<'_> {
    /// A connection to the leased instance: a pooled one unless `fresh`, else a new one,
    /// choosing another instance (and taking this one out of rotation) when connecting fails.
    /// Returns it and whether it came from the pool.
    async fn connect(&self, lease: &mut Lease, fresh: bool) -> Result<(TcpStream, bool), Refusal> {
        let mut retries = 0;
        loop {
            let addr = lease.addr;
            if !fresh && let Some(conn) = self.pool.take(addr) {
                return Ok((conn, true));
            }
            match crate::gateway::connect(addr).await {
                Ok(conn) => return Ok((conn, false)),
                Err(e) => {
                    // Nothing was sent: safe to retry elsewhere. This instance leaves the
                    // rotation until the backend reports it again.
                    self.revision.throttler.mark_down(addr);
                    tracing::warn!(revision = %self.revision.name, instance = %addr, "connect failed; retrying elsewhere");
                    retries += 1;
                    if retries > MAX_RETRIES {
                        return Err(Refusal::bad_gateway(format!(
                            "cannot reach an instance: {e}"
                        )));
                    }
                    let next = self
                        .gateway
                        .lease(self.revision, self.started, self.held)
                        .await;
                    *lease = next?;
                }
            }
        }
    }

    /// A request sent whole (head and body in one write); relay the response. Returns (status
    /// for metrics, whether the client's connection may carry another request).
    async fn whole(
        &self,
        stream: &mut Buffered,
        next: &mut Vec<u8>,
        request: &[u8],
        ctx: Client,
        mut lease: Lease,
    ) -> (u16, bool) {
        let mut retries = 0;
        // After a pooled connection failed, the next attempt connects afresh.
        let mut fresh = false;
        loop {
            let (mut conn, reused) = match self.connect(&mut lease, fresh).await {
                Ok(c) => c,
                Err(refusal) => {
                    refuse(stream, &refusal).await;
                    return (refusal.status, false);
                }
            };
            let mut buf = Vec::with_capacity(4096);
            let mut out = Vec::with_capacity(1024);
            let answer = match conn.write_all(request).await {
                Err(e) => Err(ReadError::Nothing(e.to_string())),
                Ok(()) => {
                    let read = read_response(&mut conn, &mut buf, ctx, Some(&mut out));
                    tokio::select! {
                        r = read => r,
                        // The request is complete: the client leaving now is its end.
                        () = client_gone(stream, next) => return (0, false),
                    }
                }
            };
            let response = match answer {
                Ok(r) => r,
                // A pooled connection the instance had closed before answering: send again on
                // a fresh one, as pingora's proxy does (the instance saw a closed connection,
                // not a request).
                Err(ReadError::Nothing(_)) if reused && retries < MAX_RETRIES => {
                    retries += 1;
                    fresh = true;
                    continue;
                }
                Err(e) => {
                    refuse(stream, &Refusal::instance_failed(e)).await;
                    return (502, false);
                }
            };
            let addr = lease.addr;
            let relayed = relay(stream, &mut conn, buf, out, response, ctx).await;
            drop(lease);
            return match relayed {
                Relayed::Done {
                    status,
                    reusable,
                    keep,
                } => {
                    if reusable {
                        self.pool.put(addr, conn);
                    }
                    (status, keep)
                }
                Relayed::Cut(status) => (status, false),
            };
        }
    }

    /// A request whose body is streamed after its head (`request`: the head and the body's
    /// first bytes) on a fresh connection, while the response is awaited: a `100 Continue`
    /// is passed on, and a final answer before the body's end (an instance refusing it) is
    /// relayed and the client's connection closed after it.
    async fn streamed(
        &self,
        stream: &mut Buffered,
        next: &mut Vec<u8>,
        request: &[u8],
        body: Body,
        ctx: Client,
        mut lease: Lease,
    ) -> (u16, bool) {
        let mut conn = match self.connect(&mut lease, true).await {
            Ok((c, _)) => c,
            Err(refusal) => {
                refuse(stream, &refusal).await;
                return (refusal.status, false);
            }
        };
        let addr = lease.addr;
        if conn.write_all(request).await.is_err() {
            let refusal = Refusal::bad_gateway("instance failed: the connection closed");
            refuse(stream, &refusal).await;
            return (502, false);
        }
        let (mut up_r, mut up_w) = conn.split();
        let (mut cl_r, mut cl_w) = tokio::io::split(&mut *stream);
        let mut buf = Vec::with_capacity(4096);
        // An answer before the body's end closes the client's connection.
        let early = Client { close: true, ..ctx };
        let (answer, sent) = {
            let pumping = pump(&mut cl_r, &mut up_w, body, next);
            tokio::pin!(pumping);
            loop {
                let mut out = Vec::new();
                tokio::select! {
                    r = &mut pumping => match r {
                        Ok(()) => break (None, true),
                        Err(Pumped::Invalid(e)) => {
                            refuse(&mut cl_w, &Refusal::bad_request(e.to_string())).await;
                            return (400, false);
                        }
                        Err(Pumped::ClientGone) => return (0, false),
                        Err(Pumped::InstanceGone) => break (None, false),
                    },
                    r = read_response(&mut up_r, &mut buf, early, Some(&mut out)) => match r {
                        Ok(r) if r.status < 200 && r.status != 101 => {
                            // 100 Continue (or 103): the body keeps flowing.
                            if cl_w.write_all(&out).await.is_err() || cl_w.flush().await.is_err() {
                                return (0, false);
                            }
                            buf.drain(..r.len);
                        }
                        Ok(r) => break (Some((r, out)), false),
                        Err(e) => {
                            refuse(&mut cl_w, &Refusal::instance_failed(e)).await;
                            return (502, false);
                        }
                    },
                }
            }
        };
        let ctx = if sent { ctx } else { early };
        let (response, out) = match answer {
            Some(a) => a,
            None => {
                let mut out = Vec::new();
                let read = read_response(&mut up_r, &mut buf, ctx, Some(&mut out));
                tokio::select! {
                    r = read => match r {
                        Ok(r) => (r, out),
                        Err(e) => {
                            refuse(&mut cl_w, &Refusal::instance_failed(e)).await;
                            return (502, false);
                        }
                    },
                    () = client_gone(&mut cl_r, next) => return (0, false),
                }
            }
        };
        let relayed = relay(&mut cl_w, &mut up_r, buf, out, response, ctx).await;
        drop(lease);
        match relayed {
            Relayed::Done {
                status,
                reusable,
                keep,
            } => {
                if reusable && sent {
                    self.pool.put(addr, conn);
                }
                (status, keep && sent)
            }
            Relayed::Cut(status) => (status, false),
        }
    }
}

/// How relaying a response ended.
enum Relayed {
    /// Complete. `reusable`: the instance's connection may carry another request; `keep`: the
    /// client's may.
    Done {
        status: u16,
        reusable: bool,
        keep: bool,
    },
    /// Cut short (or refused with 502): the client's connection is closed.
    Cut(u16),
}

/// Relay the response whose head is at the start of `buf` (`out`: the head as the client gets
/// it): informational ones first, then the final one with its body.
async fn relay<W, R>(
    client: &mut W,
    conn: &mut R,
    mut buf: Vec<u8>,
    mut out: Vec<u8>,
    mut response: Response,
    ctx: Client,
) -> Relayed
where
    W: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    // Informational responses (100, 103) pass through; the final one follows.
    while response.status < 200 {
        if response.status == 101 {
            // Nothing asked to switch protocols.
            let refusal = Refusal::bad_gateway("instance failed: 101 without an upgrade request");
            refuse(client, &refusal).await;
            return Relayed::Cut(502);
        }
        if client.write_all(&out).await.is_err() || client.flush().await.is_err() {
            return Relayed::Cut(0);
        }
        buf.drain(..response.len);
        out.clear();
        response = match read_response(conn, &mut buf, ctx, Some(&mut out)).await {
            Ok(r) => r,
            Err(e) => {
                refuse(client, &Refusal::instance_failed(e)).await;
                return Relayed::Cut(502);
            }
        };
    }
    let status = response.status;
    let first = &buf[response.len..];
    let Some(mut body) = Body::new(response.framing) else {
        if client.write_all(&out).await.is_err() || client.flush().await.is_err() {
            return Relayed::Cut(status);
        }
        return Relayed::Done {
            status,
            reusable: response.keep_alive && first.is_empty(),
            keep: !response.close,
        };
    };
    let transform = response.transform;
    // Head and the first of the body leave together.
    let Ok((take, mut done)) = body.relay(first, transform, &mut out) else {
        return Relayed::Cut(status);
    };
    let mut extra = take < first.len();
    if client.write_all(&out).await.is_err() {
        return Relayed::Cut(status);
    }
    let mut chunk = vec![0u8; BODY_BUF];
    while !done {
        // What was relayed reaches the client before the instance is waited on.
        if client.flush().await.is_err() {
            return Relayed::Cut(status);
        }
        let n = match conn.read(&mut chunk).await {
            Ok(n) => n,
            Err(_) => return Relayed::Cut(status),
        };
        if n == 0 {
            if response.framing != Framing::Close {
                // The response is cut short: closing the client's connection says so.
                return Relayed::Cut(status);
            }
            if transform == Transform::Rechunk
                && client.write_all(http1::chunked::LAST_CHUNK).await.is_err()
            {
                return Relayed::Cut(status);
            }
            break;
        }
        let written = if transform == Transform::Pass {
            match body.feed(&chunk[..n]) {
                Ok((take, ended)) => {
                    done = ended;
                    extra |= take < n;
                    client.write_all(&chunk[..take]).await
                }
                // The instance broke its framing: nothing after the error is forwarded.
                Err(_) => return Relayed::Cut(status),
            }
        } else {
            out.clear();
            match body.relay(&chunk[..n], transform, &mut out) {
                Ok((take, ended)) => {
                    done = ended;
                    extra |= take < n;
                    client.write_all(&out).await
                }
                Err(_) => return Relayed::Cut(status),
            }
        };
        if written.is_err() {
            return Relayed::Cut(status);
        }
    }
    if client.flush().await.is_err() {
        return Relayed::Cut(status);
    }
    // Bytes past the response mean the instance and this hop disagree on framing: that
    // connection is not used again.
    Relayed::Done {
        status,
        reusable: response.keep_alive && !extra,
        keep: !response.close,
    }
}
