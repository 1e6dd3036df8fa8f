//! HTTP/1 at the byte level, for the exchanges the gateway carries itself: plain requests
//! (`plain`) and websocket upgrades (`upgrade`).
//!
//! A request head is forwarded as the bytes the client sent, less the fields that describe
//! only the client's hop, plus the proxy's own; a response head likewise. Bodies are relayed
//! as they come, their end found from the head's framing (length, chunks, or the instance's
//! close) without decoding them, so chunk extensions and trailers pass untouched.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::gateway::{forwarded_for, hop_by_hop};
use crate::revisions::RevisionState;
use crate::routes::Target;

/// A response head larger than this is refused (502), as pingora's limit.
pub const MAX_HEAD: usize = 64 * 1024;

/// Response header fields parsed at most.
const MAX_RESPONSE_HEADERS: usize = 256;

/// How long connecting to an instance may take (the same as pingora's peers here).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A new connection to an instance.
pub async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let connecting = TcpStream::connect(addr);
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// Fields of a client's request never forwarded as they came: those describing only this hop
/// (pingora's default policy), the internal ones a client must not set (only the routing table
/// chooses revisions), and the proxy fields this hop rewrites.
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

/// The proxy fields for one client connection, rendered when it is accepted.
#[derive(Debug, Default)]
pub struct ClientHeaders {
    ip: Option<IpAddr>,
    /// `K-Proxy-Request`, `Forwarded`, `X-Forwarded-For` and `X-Forwarded-Proto` as they read
    /// when no earlier proxy wrote any of them (nearly always).
    fresh: Vec<u8>,
}

impl ClientHeaders {
    pub fn new(client: Option<SocketAddr>) -> ClientHeaders {
        let ip = client.map(|c| c.ip());
        let mut fresh = Vec::new();
        Self::render(&mut fresh, ip, None, None, false);
        ClientHeaders { ip, fresh }
    }

    fn render(
        out: &mut Vec<u8>,
        ip: Option<IpAddr>,
        forwarded: Option<&str>,
        xff: Option<&str>,
        has_proto: bool,
    ) {
        field(out, wire::HEADER_PROXY, wire::PROXY_BY_ACTIVATOR.as_bytes());
        if let Some(ip) = ip {
            let (forwarded, xff) = forwarded_for(ip, forwarded, xff);
            field(out, "forwarded", forwarded.as_bytes());
            field(out, "x-forwarded-for", xff.as_bytes());
            if !has_proto {
                field(out, "x-forwarded-proto", b"http");
            }
        }
    }
}

fn field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The list elements of every `name` field.
fn tokens<'a>(
    headers: &'a [httparse::Header<'a>],
    name: &'a str,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .flat_map(|h| h.value.split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// The values of every `name` field, joined as one list.
fn joined(headers: &[httparse::Header<'_>], name: &str) -> Option<String> {
    let values: Vec<&str> = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

/// Room for one parsed header field.
pub type Uninit<'b> = std::mem::MaybeUninit<httparse::Header<'b>>;

/// A client's request head, parsed.
#[derive(Debug)]
pub struct Request<'h, 'b> {
    pub method: &'b str,
    pub path: &'b str,
    pub headers: &'h [httparse::Header<'b>],
}

impl<'h, 'b> Request<'h, 'b> {
    /// Parse a complete head; `headers` need not be initialised (zeroing a large array for
    /// each request costs more than the parse).
    pub fn parse(head: &'b [u8], headers: &'h mut [Uninit<'b>]) -> Option<Self> {
        let mut req = httparse::Request::new(&mut []);
        match req.parse_with_uninit_headers(head, headers) {
            Ok(httparse::Status::Complete(_)) => {}
            _ => return None,
        }
        Some(Request {
            method: req.method?,
            path: req.path?,
            headers: req.headers,
        })
    }

    /// The first value of `name`.
    pub fn value(&self, name: &str) -> Option<&'b [u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// Does a `name` field list `token`?
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case(name)
                && h.value
                    .split(|b| *b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        })
    }

    /// Start the request's span (as of its arrival at `started`) when tracing is on; returns
    /// it with the trace fields the instance gets in place of the client's.
    pub fn span(
        &self,
        traces: Option<&ebb_traces::Traces>,
        target: &Target,
        revision: &RevisionState,
        started: Instant,
    ) -> (Option<ebb_traces::Span>, http::HeaderMap) {
        let Some(traces) = traces else {
            return (None, http::HeaderMap::new());
        };
        let mut map = http::HeaderMap::new();
        for h in self.headers {
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(h.name.as_bytes()),
                http::HeaderValue::from_bytes(h.value),
            ) {
                map.append(n, v);
            }
        }
        let since = SystemTime::now() - started.elapsed();
        let (span, next) = traces.start_at(
            &map,
            self.method,
            self.path.split('?').next().unwrap_or(self.path),
            vec![
                ebb_traces::KeyValue::new("k8s.namespace.name", revision.namespace.clone()),
                ebb_traces::KeyValue::new("knative.route", target.route.clone()),
                ebb_traces::KeyValue::new("knative.revision", revision.name.clone()),
            ],
            since,
        );
        (Some(span), next)
    }

    /// Write the head as the instance gets it: the client's fields less those [`dropped`] and
    /// those `trace` replaces, then `extra` (already rendered fields), the proxy fields and
    /// `trace`.
    pub fn write_upstream(
        &self,
        out: &mut Vec<u8>,
        client: &ClientHeaders,
        extra: &[u8],
        trace: &http::HeaderMap,
    ) {
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.path.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let mut prior = false;
        for h in self.headers {
            let name = h.name;
            if dropped(name) || (!trace.is_empty() && trace.contains_key(name)) {
                prior |= name.eq_ignore_ascii_case("forwarded")
                    || name.eq_ignore_ascii_case("x-forwarded-for");
                continue;
            }
            prior |= name.eq_ignore_ascii_case("x-forwarded-proto");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(extra);
        if prior {
            ClientHeaders::render(
                out,
                client.ip,
                joined(self.headers, "forwarded").as_deref(),
                joined(self.headers, "x-forwarded-for").as_deref(),
                self.value("x-forwarded-proto").is_some(),
            );
        } else {
            out.extend_from_slice(&client.fresh);
        }
        for (name, value) in trace {
            field(out, name.as_str(), value.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// How a response's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// At the instance's close (a response without framing).
    Close,
}

/// A response head read from an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// The head's length in the buffer it was read into.
    pub len: usize,
    pub framing: Framing,
    /// Does the instance keep the connection open after this response?
    pub keep_alive: bool,
}

/// Parse the response head at the start of `buf` (`None`: not complete yet). When `out` is
/// given, the head as the client gets it is written there: the instance's connection fields
/// removed (`Connection`, `Keep-Alive`, `Proxy-Connection` and what `Connection` names),
/// `Connection: close` added when `close`, and a body without framing announced as chunked
/// when the client's connection is to survive it (the caller then chunks it: [`Rechunk`]).
pub fn parse_response(
    buf: &[u8],
    head_request: bool,
    out: Option<(&mut Vec<u8>, bool)>,
) -> Result<Option<Response>, String> {
    let mut headers = [const { Uninit::uninit() }; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut headers,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD => n,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => return Ok(None),
        Ok(_) => return Err("response head too large".to_string()),
        Err(e) => return Err(format!("invalid response head: {e}")),
    };
    let status = resp.code.unwrap_or(0);
    let headers: &[httparse::Header<'_>] = resp.headers;
    let tokens = |name| tokens(headers, name);
    let mut codings = tokens("transfer-encoding").peekable();
    let chunked = codings.peek().is_some() && {
        let last = codings.last();
        last.is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"))
    };
    let has_coding = headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"));
    let framing = if head_request || status < 200 || status == 204 || status == 304 {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else if has_coding {
        // A coding not ending in chunked: the body ends at the close (RFC 9112 §6.3).
        Framing::Close
    } else {
        let mut length = None;
        for h in headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
        {
            for v in h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                let n = std::str::from_utf8(v)
                    .ok()
                    .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or("invalid content-length")?;
                if length.is_some_and(|l| l != n) {
                    return Err("conflicting content-length".to_string());
                }
                length = Some(n);
            }
        }
        length.map_or(Framing::Close, Framing::Length)
    };
    let close_token = tokens("connection").any(|t| t.eq_ignore_ascii_case(b"close"));
    let keep_alive = framing != Framing::Close
        && match resp.version {
            Some(1) => !close_token,
            _ => tokens("connection").any(|t| t.eq_ignore_ascii_case(b"keep-alive")),
        };
    if let Some((out, close)) = out {
        let informational = status < 200;
        let rechunk = framing == Framing::Close && !close && !informational;
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.to_string().as_bytes());
        out.push(b' ');
        out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        let named = |name: &str| {
            tokens("connection").any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
                && !name.eq_ignore_ascii_case("transfer-encoding")
        };
        for h in headers.iter() {
            let name = h.name;
            if name.eq_ignore_ascii_case("connection")
                || name.eq_ignore_ascii_case("keep-alive")
                || name.eq_ignore_ascii_case("proxy-connection")
                || (rechunk && name.eq_ignore_ascii_case("transfer-encoding"))
                // A length beside chunked framing is wrong and must not reach the client
                // (RFC 9112 §6.3).
                || (framing == Framing::Chunked && name.eq_ignore_ascii_case("content-length"))
                || named(name)
            {
                continue;
            }
            field(out, name, h.value);
        }
        if rechunk {
            let prior = joined(headers, "transfer-encoding");
            let value = prior.map_or("chunked".to_string(), |p| format!("{p}, chunked"));
            field(out, "transfer-encoding", value.as_bytes());
        }
        if close && !informational {
            field(out, "connection", b"close");
        }
        out.extend_from_slice(b"\r\n");
    }
    Ok(Some(Response {
        status,
        len,
        framing,
        keep_alive,
    }))
}

/// Read from `from` until `buf` holds a complete response head, then parse it as
/// [`parse_response`] does.
pub async fn read_response<R: AsyncRead + Unpin>(
    from: &mut R,
    buf: &mut Vec<u8>,
    head_request: bool,
    mut out: Option<(&mut Vec<u8>, bool)>,
) -> Result<Response, ReadError> {
    loop {
        if !buf.is_empty() {
            // `out` is written only once the head is complete.
            let out = out.as_mut().map(|(o, close)| (&mut **o, *close));
            if let Some(r) = parse_response(buf, head_request, out).map_err(ReadError::Invalid)? {
                return Ok(r);
            }
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        let n = from.read_buf(buf).await.map_err(|e| {
            if buf.is_empty() {
                ReadError::Nothing(e.to_string())
            } else {
                ReadError::Invalid(e.to_string())
            }
        })?;
        if n == 0 {
            let reason = "the connection closed before a response".to_string();
            return Err(if buf.is_empty() {
                ReadError::Nothing(reason)
            } else {
                ReadError::Invalid(reason)
            });
        }
    }
}

/// Why no response head was read.
#[derive(Debug)]
pub enum ReadError {
    /// The connection ended before any byte of a response.
    Nothing(String),
    /// Bytes came, but not a usable head.
    Invalid(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Nothing(r) | ReadError::Invalid(r) => f.write_str(r),
        }
    }
}

/// Where a body ends, fed as bytes arrive.
#[derive(Debug)]
pub enum Body {
    Length(u64),
    Chunked(Chunks),
    Close,
}

impl Body {
    pub fn new(framing: Framing) -> Option<Body> {
        match framing {
            Framing::Empty => None,
            Framing::Length(n) => Some(Body::Length(n)),
            Framing::Chunked => Some(Body::Chunked(Chunks::default())),
            Framing::Close => Some(Body::Close),
        }
    }

    /// How many of `data`'s bytes belong to the body, and whether it ended with them.
    pub fn feed(&mut self, data: &[u8]) -> (usize, bool) {
        match self {
            Body::Length(left) => {
                let take = (*left).min(data.len() as u64);
                *left -= take;
                (take as usize, *left == 0)
            }
            Body::Chunked(c) => c.feed(data),
            Body::Close => (data.len(), false),
        }
    }
}

/// A chunked body's framing: size line, data, CRLF; after the last (0) chunk, trailer lines
/// until an empty one.
#[derive(Debug, Default)]
pub struct Chunks {
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
    /// How many of `data`'s bytes belong to the body, and whether it ended with them.
    fn feed(&mut self, data: &[u8]) -> (usize, bool) {
        let mut i = 0;
        while i < data.len() {
            if self.state == ChunkState::Data {
                // Skip the chunk's data at once.
                let take = self.size.min((data.len() - i) as u64);
                self.size -= take;
                i += take as usize;
                if self.size == 0 {
                    self.state = ChunkState::DataCr;
                }
                continue;
            }
            let ended = self.step(data[i]);
            i += 1;
            if ended {
                return (i, true);
            }
        }
        (data.len(), false)
    }

    /// Take one byte outside a chunk's data; true when the body ended with it.
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
            ChunkState::Data => {}
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

/// Chunk-encode a close-delimited body's pieces for a client whose connection outlives it.
pub fn rechunk(out: &mut Vec<u8>, data: &[u8]) {
    if !data.is_empty() {
        out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
}

/// The end of a re-chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Copy a body framed by `framing` from `from` to `to`, starting with `first` (already read).
/// Returns whether the body ended as its framing says (a close-delimited one ends at the close).
pub async fn relay_body<R, W>(
    to: &mut W,
    from: &mut R,
    first: &[u8],
    framing: Framing,
) -> std::io::Result<bool>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let Some(mut body) = Body::new(framing) else {
        return Ok(true);
    };
    let (take, done) = body.feed(first);
    to.write_all(&first[..take]).await?;
    to.flush().await?;
    if done {
        return Ok(true);
    }
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut chunk).await?;
        if n == 0 {
            return Ok(matches!(body, Body::Close));
        }
        let (take, done) = body.feed(&chunk[..n]);
        to.write_all(&chunk[..take]).await?;
        to.flush().await?;
        if done {
            return Ok(true);
        }
    }
}

/// The gateway's own answer, closing the connection: `reason` as a short plain-text body;
/// a 503 asks the client to retry after a second.
pub async fn refuse<W: AsyncWrite + Unpin>(client: &mut W, status: u16, reason: &str) {
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
    let answer = format!(
        "HTTP/1.1 {status} {text}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n{retry}connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.write_all(answer.as_bytes()).await;
    let _ = client.flush().await;
    let _ = client.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_end(framing: Framing, input: &[u8]) -> (usize, bool) {
        Body::new(framing).map_or((0, true), |mut b| b.feed(input))
    }

    #[test]
    fn chunked_bodies_end_after_the_last_chunk_and_trailers() {
        let body = b"5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\n\r\nNEXT";
        assert_eq!(body_end(Framing::Chunked, body), (body.len() - 4, true));
        let with_trailer = b"2\r\nhi\r\n0\r\nx-t: 1\r\n\r\n";
        assert_eq!(
            body_end(Framing::Chunked, with_trailer),
            (with_trailer.len(), true)
        );
        // Fed in pieces, split inside sizes, data and the final CRLF.
        let mut b = Body::new(Framing::Chunked).unwrap_or(Body::Close);
        assert_eq!(b.feed(b"A\r\n0123"), (7, false));
        assert_eq!(b.feed(b"456789\r\n0\r"), (10, false));
        assert_eq!(b.feed(b"\n\r\nrest"), (3, true));
        let mut b = Body::new(Framing::Chunked).unwrap_or(Body::Close);
        assert_eq!(b.feed(b"1"), (1, false));
        assert_eq!(b.feed(b"0\r\n"), (3, false));
        assert_eq!(b.feed(&[b'x'; 16]), (16, false));
        assert_eq!(b.feed(b"\r\n0\r\n\r\n"), (7, true));
        assert_eq!(body_end(Framing::Length(3), b"abcdef"), (3, true));
        assert_eq!(body_end(Framing::Empty, b"abcdef"), (0, true));
        assert_eq!(body_end(Framing::Close, b"abcdef"), (6, false));
    }

    fn client_head(head: &str, head_request: bool, close: bool) -> (Response, String) {
        let mut out = Vec::new();
        let r = parse_response(head.as_bytes(), head_request, Some((&mut out, close)));
        let r = r.unwrap_or_else(|e| panic!("{head:?}: {e}"));
        let r = r.unwrap_or_else(|| panic!("{head:?}: incomplete"));
        (r, String::from_utf8(out).unwrap_or_default())
    }

    #[test]
    fn response_heads_lose_the_instances_connection_fields() {
        let head = "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Private\r\nKeep-Alive: timeout=5\r\nX-Private: 1\r\nContent-Length: 2\r\nX-Kept: a\r\n\r\n";
        let (r, out) = client_head(&format!("{head}hi"), false, false);
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Kept: a\r\n\r\n"
        );
        assert_eq!((r.status, r.len), (200, head.len()));
        assert_eq!((r.framing, r.keep_alive), (Framing::Length(2), true));
    }

    #[test]
    fn response_framing_and_reuse() {
        let (r, out) = client_head("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", false, true);
        assert_eq!((r.framing, r.keep_alive), (Framing::Close, false));
        assert_eq!(
            out, "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n",
            "no re-chunking when the client's connection closes too"
        );
        let (r, out) = client_head("HTTP/1.0 200 OK\r\nServer: old\r\n\r\n", false, false);
        assert_eq!((r.framing, r.keep_alive), (Framing::Close, false));
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nServer: old\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        let (r, _) = client_head(
            "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n",
            false,
            false,
        );
        assert_eq!((r.framing, r.keep_alive), (Framing::Length(0), true));
        let (r, out) = client_head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            false,
            false,
        );
        assert_eq!(r.framing, Framing::Close);
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n"
        );
        let (r, out) = client_head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 9\r\n\r\n",
            false,
            false,
        );
        assert_eq!(r.framing, Framing::Chunked, "chunked wins over a length");
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        );
        let (r, _) = client_head("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true, false);
        assert_eq!((r.framing, r.keep_alive), (Framing::Empty, true), "HEAD");
        for status in ["204 No Content", "304 Not Modified", "103 Early Hints"] {
            let (r, out) = client_head(&format!("HTTP/1.1 {status}\r\n\r\n"), false, true);
            assert_eq!(r.framing, Framing::Empty);
            assert_eq!(
                out.contains("connection: close"),
                !status.starts_with('1'),
                "{out}"
            );
        }
        let bad = |head: &str| parse_response(head.as_bytes(), false, None).is_err();
        assert!(bad(
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
        ));
        assert!(bad("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"));
        assert!(bad("garbage\r\n\r\n"));
        assert!(matches!(
            parse_response(b"HTTP/1.1 200 OK\r\n", false, None),
            Ok(None)
        ));
    }

    #[tokio::test]
    async fn response_heads_are_read_across_reads_up_to_the_limit() {
        let big = "v".repeat(10_000);
        let wire = format!("HTTP/1.1 200 OK\r\nx-big: {big}\r\ncontent-length: 1\r\n\r\n!");
        let mut from = wire.as_bytes();
        let (mut buf, mut out) = (Vec::new(), Vec::new());
        let r = read_response(&mut from, &mut buf, false, Some((&mut out, false))).await;
        let r = r.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (r.status, r.len, r.framing),
            (200, wire.len() - 1, Framing::Length(1))
        );
        assert_eq!(out.len(), r.len, "the head as the client gets it");
        let huge = format!("HTTP/1.1 200 OK\r\nx-big: {}\r\n\r\n", "v".repeat(MAX_HEAD));
        let mut from = huge.as_bytes();
        let r = read_response(&mut from, &mut Vec::new(), false, None).await;
        assert!(
            matches!(r, Err(ReadError::Invalid(ref e)) if e.contains("too large")),
            "{r:?}"
        );
        // Nothing at all (a pooled connection the instance closed) is told apart from a cut head.
        let r = read_response(&mut &b""[..], &mut Vec::new(), false, None).await;
        assert!(matches!(r, Err(ReadError::Nothing(_))), "{r:?}");
        let r = read_response(&mut &b"HTTP/1.1 200"[..], &mut Vec::new(), false, None).await;
        assert!(matches!(r, Err(ReadError::Invalid(_))), "{r:?}");
    }

    #[test]
    fn upstream_heads_carry_the_proxy_fields_and_drop_the_clients_hop() {
        let client = ClientHeaders::new(Some(([10, 0, 0, 7], 5555).into()));
        let write = |head: &str| {
            let mut headers = [const { Uninit::uninit() }; 32];
            let req =
                Request::parse(head.as_bytes(), &mut headers).unwrap_or_else(|| panic!("{head:?}"));
            let mut out = Vec::new();
            req.write_upstream(&mut out, &client, b"", &http::HeaderMap::new());
            String::from_utf8(out).unwrap_or_default()
        };
        assert_eq!(
            write(
                "POST /e?x=1 HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nKnative-Serving-Revision: other\r\nContent-Length: 2\r\n\r\nhi"
            ),
            format!(
                "POST /e?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n{}: {}\r\nforwarded: for=10.0.0.7;proto=http\r\nx-forwarded-for: 10.0.0.7\r\nx-forwarded-proto: http\r\n\r\n",
                wire::HEADER_PROXY,
                wire::PROXY_BY_ACTIVATOR
            )
        );
        let out = write(
            "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-Proto: https\r\n\r\n",
        );
        assert!(
            out.contains("\r\nx-forwarded-for: 1.1.1.1, 10.0.0.7\r\n"),
            "{out}"
        );
        assert!(
            out.contains("\r\nforwarded: for=10.0.0.7;proto=http\r\n"),
            "{out}"
        );
        assert!(out.contains("X-Forwarded-Proto: https\r\n"), "{out}");
        assert!(!out.contains("x-forwarded-proto"), "{out}");
    }
}
