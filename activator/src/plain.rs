//! The short path for plain requests.
//!
//! Most requests a gateway sees are plain: HTTP/1.1, no body or a small sized one (a CloudEvent,
//! a JSON call), no upgrade (see `admission::is_plain`). For them the whole exchange is: send
//! the head and body, relay the response. Admission has already read and parsed the head, so
//! the exchange is carried at the byte level (`h1`): the head goes to the instance as the
//! client's bytes less the client's hop, plus the proxy fields; the response head comes back
//! the same way and the body is relayed as it arrives.
//!
//! This is a deliberate divergence from "the activator is built on pingora" for this one
//! path: pingora's proxy costs about a quarter more CPU per request than the exchange needs
//! (its phase machine, a task pair joined by channels, a dozen boxed futures), and even its
//! bare HTTP/1 sessions — parsing the head a second time into case-preserving header maps,
//! cloning them for the instance, serialising them back — cost three to four times the user
//! CPU nginx spends on the same hop. Everything else (chunked or large request bodies,
//! `Expect`, HTTP/2, refusals, heads admission could not route) still goes through pingora's
//! proxy, and websockets through `upgrade`.
//!
//! What a request sees is the same on every path: internal headers stripped, hop-by-hop
//! headers removed as pingora's default policy does, `K-Proxy-Request`/`Forwarded`/
//! `X-Forwarded-*` added, a failed connect retried on another instance, a pooled connection
//! the instance had closed retried on a fresh one (with the body kept for it), close-delimited
//! responses re-framed as chunked, 1xx passed through, 502 when the instance fails, the
//! client's disconnect abandoning the exchange, the same metrics and span.

use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::admission::{Carried, KEEPALIVE};
use crate::buffered::Buffered;
use crate::gateway::Gateway;
use crate::h1::{self, ClientHeaders, Framing, ReadError};
use crate::pool::Pool;
use crate::revisions::RevisionState;
use crate::throttler::Lease;

/// Attempts after the first, as pingora's proxy allows (its `max_retries` default).
const MAX_RETRIES: usize = 16;

/// Request header fields parsed at most (admission's limit: it parsed this head already).
const MAX_HEADERS: usize = 128;

/// The request as the instance gets it, and what the exchange needs to know about it.
struct Prepared {
    /// The head, then (once read) the body.
    upstream: Vec<u8>,
    body: usize,
    /// The client asked to close its connection after this request.
    close: bool,
    head_request: bool,
    span: Option<ebb_traces::Span>,
}

fn prepare(
    gateway: &Gateway,
    request: &Carried,
    client: &ClientHeaders,
) -> Result<Prepared, &'static str> {
    let mut headers = [const { h1::Uninit::uninit() }; MAX_HEADERS];
    let req = h1::Request::parse(&request.bytes[..request.head], &mut headers)
        .ok_or("invalid request head")?;
    let body = match req.value("content-length") {
        None => 0,
        Some(v) => std::str::from_utf8(v)
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .ok_or("invalid content-length")?,
    };
    let (span, trace) = req.span(
        gateway.traces.as_deref(),
        &request.target,
        &request.revision,
        request.started,
    );
    let mut upstream = Vec::with_capacity(request.head + 256 + body);
    req.write_upstream(&mut upstream, client, b"", &trace);
    Ok(Prepared {
        upstream,
        body,
        close: req.has_token("connection", "close"),
        head_request: req.method == "HEAD",
        span,
    })
}

/// Proxy one admitted plain request; the stream comes back when the connection can carry
/// another request.
pub async fn proxy(
    gateway: &Gateway,
    pool: &Pool,
    mut stream: Buffered,
    request: Carried,
    client: &ClientHeaders,
    shutdown: &watch::Receiver<bool>,
) -> Option<Buffered> {
    let mut prepared = match prepare(gateway, &request, client) {
        Ok(p) => p,
        Err(reason) => {
            h1::refuse(&mut stream, 400, reason).await;
            return None;
        }
    };
    let Carried {
        started,
        target,
        revision,
        lease,
        bytes,
        head,
        ..
    } = request;
    // A small body (admission checked its size) is read whole: sent with the head, and again
    // if a pooled connection turns out to be closed. Bytes past it are the client's next
    // request.
    let early = &bytes[head..];
    let take = early.len().min(prepared.body);
    prepared.upstream.extend_from_slice(&early[..take]);
    let mut next = early[take..].to_vec();
    let mut missing = prepared.body - take;
    drop(bytes);
    while missing > 0 {
        let mut rest = (&mut stream).take(missing as u64);
        match tokio::time::timeout(KEEPALIVE, rest.read_buf(&mut prepared.upstream)).await {
            Ok(Ok(n)) if n > 0 => missing -= n,
            // The client went away, or stalled mid-body: nothing reached the instance.
            _ => return None,
        }
    }
    let exchange = Exchange {
        gateway,
        pool,
        revision: &revision,
        started,
        held: head,
        head_request: prepared.head_request,
    };
    let closing = prepared.close || *shutdown.borrow();
    let (status, reusable) = exchange
        .run(&mut stream, &mut next, &prepared.upstream, closing, lease)
        .await;
    gateway.finished(&target, &revision, started, prepared.span, status);
    if !reusable || closing || *shutdown.borrow() {
        return None;
    }
    if !next.is_empty() {
        stream.rewind(&next);
    }
    Some(stream)
}

/// Wait for the client to go away while its response is awaited. Bytes it sends meanwhile
/// (a pipelined request) are kept in `next`, and from then on it is not watched.
pub(crate) async fn client_gone(stream: &mut Buffered, next: &mut Vec<u8>) {
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
    head_request: bool,
}

impl Exchange<'_> {
    /// Send the request and relay the response: (status for metrics, whether the client's
    /// connection may carry another request).
    async fn run(
        &self,
        stream: &mut Buffered,
        next: &mut Vec<u8>,
        request: &[u8],
        closing: bool,
        mut lease: Lease,
    ) -> (u16, bool) {
        let mut retries = 0;
        // After a pooled connection failed, the next attempt connects afresh.
        let mut fresh = false;
        loop {
            let addr = lease.addr;
            let pooled = if fresh { None } else { self.pool.take(addr) };
            let reused = pooled.is_some();
            let mut conn = match pooled {
                Some(conn) => conn,
                None => match h1::connect(addr).await {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Nothing was sent: safe to retry elsewhere. This instance leaves the
                        // rotation until the backend reports it again.
                        self.revision.throttler.mark_down(addr);
                        tracing::warn!(revision = %self.revision.name, instance = %addr, "connect failed; retrying elsewhere");
                        retries += 1;
                        let next_lease = if retries > MAX_RETRIES {
                            Err((502, format!("cannot reach an instance: {e}")))
                        } else {
                            drop(lease);
                            self.gateway
                                .lease(self.revision, self.started, self.held)
                                .await
                        };
                        match next_lease {
                            Ok(l) => lease = l,
                            Err((code, reason)) => {
                                h1::refuse(stream, code, &reason).await;
                                return (code, false);
                            }
                        }
                        continue;
                    }
                },
            };
            let mut buf = Vec::with_capacity(4096);
            let mut out = Vec::with_capacity(1024);
            let answer = match conn.write_all(request).await {
                Err(e) => Err(ReadError::Nothing(e.to_string())),
                Ok(()) => {
                    let read = h1::read_response(
                        &mut conn,
                        &mut buf,
                        self.head_request,
                        Some((&mut out, closing)),
                    );
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
                    h1::refuse(stream, 502, &format!("instance failed: {e}")).await;
                    return (502, false);
                }
            };
            let result = self
                .relay(stream, &mut conn, buf, out, response, closing)
                .await;
            drop(lease);
            return match result {
                Relayed::Done { status, reusable } => {
                    if reusable {
                        self.pool.put(addr, conn);
                    }
                    (status, true)
                }
                Relayed::Cut(status) => (status, false),
            };
        }
    }

    /// Relay the response whose head is in `buf` (`out`: as the client gets it).
    async fn relay(
        &self,
        stream: &mut Buffered,
        conn: &mut TcpStream,
        mut buf: Vec<u8>,
        mut out: Vec<u8>,
        mut response: h1::Response,
        closing: bool,
    ) -> Relayed {
        // Informational responses (103 Early Hints) pass through; the final one follows.
        while response.status < 200 {
            if response.status == 101 {
                // Nothing asked to switch protocols.
                let reason = "instance failed: 101 without an upgrade request";
                h1::refuse(stream, 502, reason).await;
                return Relayed::Cut(502);
            }
            if stream.write_all(&out).await.is_err() || stream.flush().await.is_err() {
                return Relayed::Cut(0);
            }
            buf.drain(..response.len);
            out.clear();
            let read =
                h1::read_response(conn, &mut buf, self.head_request, Some((&mut out, closing)));
            response = match read.await {
                Ok(r) => r,
                Err(e) => {
                    h1::refuse(stream, 502, &format!("instance failed: {e}")).await;
                    return Relayed::Cut(502);
                }
            };
        }
        let status = response.status;
        // A body without framing is chunked for a client whose connection outlives it.
        let rechunk = response.framing == Framing::Close && !closing;
        let mut body = h1::Body::new(response.framing);
        let first = &buf[response.len..];
        let (mut extra, ended) = match body.as_mut() {
            None => (!first.is_empty(), true),
            Some(b) => {
                let (take, done) = b.feed(first);
                if rechunk {
                    h1::rechunk(&mut out, &first[..take]);
                } else {
                    out.extend_from_slice(&first[..take]);
                }
                (take < first.len(), done)
            }
        };
        // Head and the first of the body leave together.
        if stream.write_all(&out).await.is_err() {
            return Relayed::Cut(status);
        }
        if let Some(body) = body.as_mut().filter(|_| !ended) {
            buf.clear();
            buf.resize(16 * 1024, 0);
            loop {
                // What was relayed reaches the client before the instance is waited on.
                if stream.flush().await.is_err() {
                    return Relayed::Cut(status);
                }
                let n = match conn.read(&mut buf).await {
                    Ok(n) => n,
                    Err(_) => return Relayed::Cut(status),
                };
                if n == 0 {
                    if response.framing != Framing::Close {
                        // The response is cut short: closing the client's connection says so.
                        return Relayed::Cut(status);
                    }
                    if rechunk && stream.write_all(h1::LAST_CHUNK).await.is_err() {
                        return Relayed::Cut(status);
                    }
                    break;
                }
                let (take, done) = body.feed(&buf[..n]);
                extra |= take < n;
                let written = if rechunk {
                    out.clear();
                    h1::rechunk(&mut out, &buf[..take]);
                    stream.write_all(&out).await
                } else {
                    stream.write_all(&buf[..take]).await
                };
                if written.is_err() {
                    return Relayed::Cut(status);
                }
                if done {
                    break;
                }
            }
        }
        if stream.flush().await.is_err() {
            return Relayed::Cut(status);
        }
        // Bytes past the response mean the instance and this hop disagree on framing: that
        // connection is not used again.
        Relayed::Done {
            status,
            reusable: response.keep_alive && !extra,
        }
    }
}

/// How relaying a response ended.
enum Relayed {
    /// Complete; `reusable`: the instance's connection may carry another request.
    Done { status: u16, reusable: bool },
    /// Cut short (or refused with 502): the client's connection is closed.
    Cut(u16),
}
