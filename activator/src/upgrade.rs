//! Websocket upgrades, tunnelled by the gateway itself.
//!
//! Pingora 0.9 can end an upgraded connection early: when the instance's 101 is read before
//! the upgrade request's (empty) body has been accounted for, its upstream half takes that
//! body's end for the tunnel's end, and a frame the client sends right after the 101 is lost
//! (cloudflare/pingora#946, open upstream). So an admitted `GET` asking for `Upgrade:
//! websocket` is handled here at the byte level: the head goes to the instance as pingora's
//! default upstream policy would send it (internal and hop-by-hop headers removed, `Connection:
//! Upgrade` and `Upgrade: websocket` restored, proxy headers added); the response head is read;
//! a 101 is passed to the client with any bytes that came with it, and from then on bytes are
//! copied both ways until either side closes. Any other answer (the instance refused the
//! upgrade) is relayed with its body, framed by content-length, chunks or the instance's close,
//! and the client's connection closed after it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::buffered::Buffered;
use crate::gateway::{Gateway, forwarded_for, hop_by_hop};
use crate::revisions::RevisionState;
use crate::routes::Target;
use crate::throttler::Lease;

/// Attempts after the first when connecting fails, as on the other paths.
const MAX_RETRIES: usize = 16;

/// A response head larger than this is refused (502).
const MAX_HEAD: usize = 64 * 1024;

/// Headers never forwarded as they came: those that describe only this hop (pingora's default
/// policy), internal ones a client must not set, and the proxy headers this hop rewrites.
fn dropped(name: &str) -> bool {
    hop_by_hop(name)
        || [
            wire::HEADER_REVISION,
            wire::HEADER_NAMESPACE,
            "forwarded",
            "x-forwarded-for",
        ]
        .iter()
        .any(|d| name.eq_ignore_ascii_case(d))
}

/// Is this parsed head a websocket upgrade the gateway tunnels itself? HTTP/1.1 `GET` of an
/// origin-form target, `Upgrade: websocket`, `Connection` naming `upgrade`, no body.
pub fn is_websocket(req: &httparse::Request<'_, '_>) -> bool {
    let has_token = |name: &str, token: &str| {
        req.headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case(name)
                && h.value
                    .split(|b| *b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        })
    };
    let bodiless = req.headers.iter().all(|h| {
        !(h.name.eq_ignore_ascii_case("transfer-encoding")
            || (h.name.eq_ignore_ascii_case("content-length") && h.value.trim_ascii() != b"0"))
    });
    req.version == Some(1)
        && req.method == Some("GET")
        && req.path.is_some_and(|p| p.starts_with('/'))
        && has_token("upgrade", "websocket")
        && has_token("connection", "upgrade")
        && bodiless
}

/// An admitted websocket upgrade with an instance.
#[derive(Debug)]
pub struct Upgrade {
    pub started: Instant,
    pub target: Arc<Target>,
    pub revision: Arc<RevisionState>,
    pub lease: Lease,
    /// What admission read: the request head (`head` bytes), then anything after it.
    pub bytes: Vec<u8>,
    pub head: usize,
}

/// Tunnel one upgrade; the client's connection ends with it.
pub async fn tunnel(
    gateway: &Gateway,
    mut client: Buffered,
    upgrade: Upgrade,
    peer: Option<SocketAddr>,
) {
    let Upgrade {
        started,
        target,
        revision,
        mut lease,
        bytes,
        head,
    } = upgrade;
    let (request, span) =
        match upstream_head(gateway, &bytes[..head], peer, &target, &revision, started) {
            Ok(r) => r,
            Err(reason) => {
                refuse(&mut client, 400, &reason).await;
                finish(gateway, &target, &revision, started, None, 400);
                return;
            }
        };
    // Connect, choosing another instance when one cannot be reached (nothing was sent).
    let mut retries = 0;
    let mut upstream = loop {
        match connect(lease.addr).await {
            Ok(s) => break s,
            Err(e) => {
                revision.throttler.mark_down(lease.addr);
                tracing::warn!(revision = %revision.name, instance = %lease.addr, "connect failed; retrying elsewhere");
                retries += 1;
                let next = if retries > MAX_RETRIES {
                    Err((502, format!("cannot reach an instance: {e}")))
                } else {
                    drop(lease);
                    gateway.lease(&revision, started, head).await
                };
                match next {
                    Ok(l) => lease = l,
                    Err((code, reason)) => {
                        refuse(&mut client, code, &reason).await;
                        finish(gateway, &target, &revision, started, span, code);
                        return;
                    }
                }
            }
        }
    };
    let status = exchange(&mut client, &mut upstream, &request, &bytes[head..]).await;
    drop(lease);
    finish(gateway, &target, &revision, started, span, status);
}

fn finish(
    gateway: &Gateway,
    target: &Target,
    revision: &RevisionState,
    started: Instant,
    span: Option<ebb_traces::Span>,
    status: u16,
) {
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
}

/// The request head as the instance gets it, and the request's span when tracing is on.
fn upstream_head(
    gateway: &Gateway,
    head: &[u8],
    peer: Option<SocketAddr>,
    target: &Target,
    revision: &RevisionState,
    started: Instant,
) -> Result<(Vec<u8>, Option<ebb_traces::Span>), String> {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err("invalid request head".to_string()),
    }
    let (Some(method), Some(path)) = (req.method, req.path) else {
        return Err("invalid request line".to_string());
    };
    let prior = |name: &str| {
        let values: Vec<&str> = req
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
            .collect();
        (!values.is_empty()).then(|| values.join(", "))
    };
    let mut out = Vec::with_capacity(head.len() + 256);
    out.extend_from_slice(format!("{method} {path} HTTP/1.1\r\n").as_bytes());
    for h in req.headers.iter() {
        if dropped(h.name) {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    let mut add = |name: &str, value: &str| {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    };
    add("Connection", "Upgrade");
    add("Upgrade", "websocket");
    add(wire::HEADER_PROXY, wire::PROXY_BY_ACTIVATOR);
    if let Some(ip) = peer.map(|p| p.ip()) {
        let (forwarded, xff) = forwarded_for(
            ip,
            prior("forwarded").as_deref(),
            prior("x-forwarded-for").as_deref(),
        );
        add("Forwarded", &forwarded);
        add("X-Forwarded-For", &xff);
        if prior("x-forwarded-proto").is_none() {
            add("X-Forwarded-Proto", "http");
        }
    }
    let span = gateway.traces.as_ref().map(|t| {
        let mut map = http::HeaderMap::new();
        for h in req.headers.iter() {
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(h.name.as_bytes()),
                http::HeaderValue::from_bytes(h.value),
            ) {
                map.append(n, v);
            }
        }
        let since = std::time::SystemTime::now() - started.elapsed();
        let (span, next) = t.start_at(
            &map,
            method,
            path.split('?').next().unwrap_or(path),
            vec![
                ebb_traces::KeyValue::new("k8s.namespace.name", revision.namespace.clone()),
                ebb_traces::KeyValue::new("knative.route", target.route.clone()),
                ebb_traces::KeyValue::new("knative.revision", revision.name.clone()),
            ],
            since,
        );
        for (k, v) in next.iter() {
            if let Ok(v) = v.to_str() {
                add(k.as_str(), v);
            }
        }
        span
    });
    out.extend_from_slice(b"\r\n");
    Ok((out, span))
}

/// Send the head (and what followed it), read the answer, tunnel on 101 or relay a refusal.
/// Returns the status (0 when the instance failed before answering; 502 is sent then).
async fn exchange(
    client: &mut Buffered,
    upstream: &mut TcpStream,
    request: &[u8],
    early: &[u8],
) -> u16 {
    if upstream.write_all(request).await.is_err()
        || (!early.is_empty() && upstream.write_all(early).await.is_err())
    {
        refuse(client, 502, "instance failed: the connection closed").await;
        return 502;
    }
    let mut buf = Vec::with_capacity(4096);
    loop {
        let (status, head_len, framing) = match read_response_head(upstream, &mut buf).await {
            Ok(h) => h,
            Err(reason) => {
                refuse(client, 502, &format!("instance failed: {reason}")).await;
                return 502;
            }
        };
        if status == 101 {
            if client.write_all(&buf).await.is_err() || client.flush().await.is_err() {
                return 101;
            }
            let _ = tokio::io::copy_bidirectional(client, upstream).await;
            return 101;
        }
        if (100..200).contains(&status) {
            // Informational: pass it on, the final answer follows.
            if client.write_all(&buf[..head_len]).await.is_err() {
                return status;
            }
            buf.drain(..head_len);
            continue;
        }
        // Refused: relay the answer, then close (the client's connection was for a tunnel).
        let head = close_head(&buf[..head_len]);
        if client.write_all(&head).await.is_err() {
            return status;
        }
        let rest = buf.split_off(head_len);
        let _ = relay_body(client, upstream, rest, framing).await;
        let _ = client.flush().await;
        let _ = client.shutdown().await;
        return status;
    }
}

/// How a refusal's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    Close,
}

/// Read until `buf` holds a complete response head: (status, head length, body framing).
async fn read_response_head(
    upstream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Result<(u16, usize, Framing), String> {
    loop {
        {
            let mut headers = [httparse::EMPTY_HEADER; 128];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let status = resp.code.unwrap_or(0);
                    let value = |name: &str| {
                        resp.headers
                            .iter()
                            .find(|h| h.name.eq_ignore_ascii_case(name))
                            .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
                    };
                    let framing = if status == 204 || status == 304 || status < 200 {
                        Framing::Empty
                    } else if value("transfer-encoding").is_some_and(|v| v.ends_with("chunked")) {
                        Framing::Chunked
                    } else if let Some(len) = value("content-length") {
                        Framing::Length(len.parse().map_err(|_| "invalid content-length")?)
                    } else {
                        Framing::Close
                    };
                    return Ok((status, n, framing));
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => return Err(format!("invalid response head: {e}")),
            }
        }
        if buf.len() > MAX_HEAD {
            return Err("response head too large".to_string());
        }
        let mut chunk = [0u8; 4096];
        let n = upstream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the connection closed before a response".to_string());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A refusal's head with `Connection: close` in place of the instance's connection headers.
fn close_head(head: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(head.len() + 20);
    let mut lines = head.split(|b| *b == b'\n');
    if let Some(status) = lines.next() {
        out.extend_from_slice(status);
        out.push(b'\n');
    }
    for line in lines {
        let name = line.split(|b| *b == b':').next().unwrap_or_default();
        let name = name.trim_ascii();
        if name.is_empty() {
            continue;
        }
        if name.eq_ignore_ascii_case(b"connection") || name.eq_ignore_ascii_case(b"keep-alive") {
            continue;
        }
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out
}

/// Copy a body framed by `framing` from `from` to `to`, starting with `first` (already read).
async fn relay_body<R, W>(
    to: &mut W,
    from: &mut R,
    first: Vec<u8>,
    framing: Framing,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut scanner = match framing {
        Framing::Empty => return Ok(()),
        Framing::Length(n) => Body::Length(n),
        Framing::Chunked => Body::Chunked(Chunks::default()),
        Framing::Close => Body::Close,
    };
    let mut data = first;
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let (take, done) = scanner.feed(&data);
        to.write_all(&data[..take]).await?;
        if done {
            return to.flush().await;
        }
        to.flush().await?;
        let n = from.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        data = chunk[..n].to_vec();
    }
}

/// Where a body ends, fed as bytes arrive.
enum Body {
    Length(u64),
    Chunked(Chunks),
    Close,
}

impl Body {
    /// How many of `data`'s bytes belong to the body, and whether it ended with them.
    fn feed(&mut self, data: &[u8]) -> (usize, bool) {
        match self {
            Body::Length(left) => {
                let take = (*left).min(data.len() as u64);
                *left -= take;
                (take as usize, *left == 0)
            }
            Body::Chunked(c) => {
                for (i, b) in data.iter().enumerate() {
                    if c.step(*b) {
                        return (i + 1, true);
                    }
                }
                (data.len(), false)
            }
            Body::Close => (data.len(), false),
        }
    }
}

/// A chunked body's framing, one byte at a time: size line, data, CRLF; after the last (0)
/// chunk, trailer lines until an empty one.
#[derive(Debug, Default)]
struct Chunks {
    state: ChunkState,
    size: u64,
    /// Length of the current trailer line (0: at its start).
    line: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    /// Chunk extensions until the size line's LF.
    Extension,
    Data,
    DataCr,
    DataLf,
    Trailer,
}

impl Chunks {
    /// Take one byte; true when the body ended with it.
    fn step(&mut self, b: u8) -> bool {
        match self.state {
            ChunkState::Size => match b {
                b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                    let digit = (b as char).to_digit(16).unwrap_or(0);
                    self.size = self
                        .size
                        .saturating_mul(16)
                        .saturating_add(u64::from(digit));
                }
                b'\n' => self.end_size_line(),
                _ => self.state = ChunkState::Extension,
            },
            ChunkState::Extension => {
                if b == b'\n' {
                    self.end_size_line();
                }
            }
            ChunkState::Data => {
                self.size -= 1;
                if self.size == 0 {
                    self.state = ChunkState::DataCr;
                }
            }
            ChunkState::DataCr => self.state = ChunkState::DataLf,
            ChunkState::DataLf => self.state = ChunkState::Size,
            ChunkState::Trailer => match b {
                b'\n' if self.line == 0 => return true,
                b'\n' => self.line = 0,
                b'\r' => {}
                _ => self.line += 1,
            },
        }
        false
    }

    fn end_size_line(&mut self) {
        if self.size == 0 {
            self.state = ChunkState::Trailer;
            self.line = 0;
        } else {
            self.state = ChunkState::Data;
        }
    }
}

/// A new connection to an instance (upgraded connections are never pooled).
async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let connecting = TcpStream::connect(addr);
    let tcp = tokio::time::timeout(std::time::Duration::from_secs(2), connecting)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// Answer the client ourselves and close.
async fn refuse(client: &mut Buffered, status: u16, reason: &str) {
    let text = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let body = format!("{reason}\n");
    let retry = if status == 503 {
        "retry-after: 1\r\n"
    } else {
        ""
    };
    let head = format!(
        "HTTP/1.1 {status} {text}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n{retry}connection: close\r\n\r\n",
        body.len()
    );
    let _ = client.write_all(head.as_bytes()).await;
    let _ = client.write_all(body.as_bytes()).await;
    let _ = client.flush().await;
    let _ = client.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_end(framing: Body, input: &[u8]) -> (usize, bool) {
        let mut b = framing;
        b.feed(input)
    }

    #[test]
    fn chunked_bodies_end_after_the_last_chunk_and_trailers() {
        let body = b"5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\n\r\nNEXT";
        assert_eq!(
            body_end(Body::Chunked(Chunks::default()), body),
            (body.len() - 4, true)
        );
        let with_trailer = b"2\r\nhi\r\n0\r\nx-t: 1\r\n\r\n";
        assert_eq!(
            body_end(Body::Chunked(Chunks::default()), with_trailer),
            (with_trailer.len(), true)
        );
        // Fed in pieces.
        let mut b = Body::Chunked(Chunks::default());
        assert_eq!(b.feed(b"A\r\n0123"), (7, false));
        assert_eq!(b.feed(b"456789\r\n0\r"), (10, false));
        assert_eq!(b.feed(b"\n\r\nrest"), (3, true));
        assert_eq!(body_end(Body::Length(3), b"abcdef"), (3, true));
    }

    #[test]
    fn websocket_requests_are_recognised() {
        let ws = |head: &str| {
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut req = httparse::Request::new(&mut headers);
            assert!(req.parse(head.as_bytes()).is_ok_and(|s| s.is_complete()));
            is_websocket(&req)
        };
        assert!(ws(
            "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\n\r\n"
        ));
        assert!(!ws(
            "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n"
        ));
        assert!(!ws(
            "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
        ));
        assert!(!ws(
            "POST /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        ));
    }

    #[test]
    fn refusals_close_the_connection() {
        let head = b"HTTP/1.1 403 Forbidden\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\ncontent-length: 2\r\n\r\n";
        let out = String::from_utf8(close_head(head)).unwrap_or_default();
        assert_eq!(
            out,
            "HTTP/1.1 403 Forbidden\r\ncontent-length: 2\r\nConnection: close\r\n\r\n"
        );
    }
}
