//! Admission: the part of the HTTP/1 request path that runs before pingora.
//!
//! Each request head is read here, routed, and given an instance — waiting in its revision's
//! queue while there is none — before pingora builds its per-request state. Pingora's session
//! for one request costs about 18 KiB (a 4 KiB read buffer, its boxed request future, parsed
//! headers); a request held here while its revision wakes from zero costs its head bytes, a
//! queue place and this connection's task. Idle keep-alive connections wait here too.
//!
//! What cannot be decided here is left to pingora, which sees the same bytes: a head that does
//! not parse (pingora answers 400), a host with no route (404), a route with no revision (503),
//! and HTTP/2 with prior knowledge (its streams are routed one by one in `request_filter`).

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tokio::time::Sleep;

use crate::buffered::Buffered;
use crate::gateway::Gateway;
use crate::revisions::RevisionState;
use crate::routes::Target;
use crate::throttler::Lease;

/// How long a connection may stay without a complete request head: pingora's own keep-alive
/// default, applied to the first request too (a client that never finishes its head is closed).
pub const KEEPALIVE: Duration = Duration::from_secs(60);

/// First read buffer for a head; most heads fit.
const HEAD_BUF: usize = 2048;

/// Past this many bytes without a complete head, pingora reads the rest (and applies its own
/// limit).
const MAX_HEAD: usize = 64 * 1024;

/// Headers parsed here at most; a head with more is left to pingora.
const MAX_HEADERS: usize = 128;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What admission decided for the next request on a connection.
#[derive(Debug)]
pub enum Admission {
    /// The connection ended (closed, idle past [`KEEPALIVE`], or shutting down) before a
    /// request began.
    Closed,
    /// HTTP/2 with prior knowledge: the connection goes to pingora as a whole.
    H2,
    /// Left to pingora to route or reject.
    Pass,
    /// Routed, and given an instance or refused.
    Admitted(Admitted),
}

/// A routed request, handed to pingora as the connection's user context.
#[derive(Debug)]
pub struct Admitted {
    /// When its head was complete: its deadline and latency count from here.
    pub started: Instant,
    pub target: Arc<Target>,
    pub revision: Arc<RevisionState>,
    /// The instance to send it to, or the status and reason it is refused with.
    pub lease: Result<Lease, (u16, String)>,
    /// A plain request: see [`is_plain`].
    pub plain: bool,
    /// A websocket upgrade: see [`crate::upgrade::is_websocket`].
    pub websocket: bool,
    /// For plain requests and websocket upgrades, which the gateway carries itself: the bytes
    /// read (the head, then anything after it), which — unlike other requests' — were not put
    /// back in the stream, and the head's length.
    pub bytes: Option<(Vec<u8>, usize)>,
}

/// A request the gateway carries itself, at the byte level: a plain request
/// ([`crate::plain`]) or a websocket upgrade ([`crate::upgrade`]), leased to an HTTP/1
/// instance.
#[derive(Debug)]
pub struct Carried {
    pub started: Instant,
    pub target: Arc<Target>,
    pub revision: Arc<RevisionState>,
    pub lease: Lease,
    pub websocket: bool,
    /// What admission read: the head (`head` bytes), then anything after it.
    pub bytes: Vec<u8>,
    pub head: usize,
}

impl Admitted {
    /// The request as one the gateway carries itself, or back as it was when pingora is to
    /// proxy it (neither plain nor a websocket, refused, or for an h2c instance).
    pub fn carried(self) -> Result<Carried, Admitted> {
        match self {
            Admitted {
                started,
                target,
                revision,
                lease: Ok(lease),
                websocket,
                bytes: Some((bytes, head)),
                ..
            } if !revision.h2c() => Ok(Carried {
                started,
                target,
                revision,
                lease,
                websocket,
                bytes,
                head,
            }),
            other => Err(other),
        }
    }
}

/// Routing facts of one parsed head.
struct Head<'a> {
    host: &'a str,
    tag: Option<&'a str>,
    plain: bool,
    websocket: bool,
    len: usize,
}

/// Request bodies up to this size can take the plain path: read whole, then sent (they fit
/// in the sockets' buffers, so an instance that answers before reading its body cannot stall
/// the send), and kept for a resend when a pooled connection turns out to be closed — as
/// pingora's proxy keeps up to 64 KiB of a body for its retries.
pub const MAX_PLAIN_BODY: u64 = 64 * 1024;

/// A plain request: HTTP/1.1; GET, HEAD, OPTIONS, POST, PUT, PATCH or DELETE; an origin-form
/// target (a path, or `*`); no body or one sized by a single `Content-Length` of at most
/// [`MAX_PLAIN_BODY`]; no upgrade, no `Expect`; a `Connection` header naming nothing but
/// keep-alive or close. Nothing about it needs pingora's full proxy: it takes the short path
/// in [`crate::plain`].
fn is_plain(req: &httparse::Request<'_, '_>) -> bool {
    if req.version != Some(1)
        || !matches!(
            req.method,
            Some("GET" | "HEAD" | "OPTIONS" | "POST" | "PUT" | "PATCH" | "DELETE")
        )
        || !req.path.is_some_and(|p| p.starts_with('/') || p == "*")
    {
        return false;
    }
    let mut lengths = 0;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            lengths += 1;
            let small = std::str::from_utf8(h.value.trim_ascii())
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .is_some_and(|n| n <= MAX_PLAIN_BODY);
            if !small {
                return false;
            }
        } else if name.eq_ignore_ascii_case("connection") {
            let only_persistence = h.value.split(|b| *b == b',').all(|token| {
                let token = token.trim_ascii();
                token.eq_ignore_ascii_case(b"keep-alive") || token.eq_ignore_ascii_case(b"close")
            });
            if !only_persistence {
                return false;
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("upgrade")
            || name.eq_ignore_ascii_case("expect")
            || name.eq_ignore_ascii_case("http2-settings")
        {
            return false;
        }
    }
    lengths <= 1
}

enum Parsed<'a> {
    Complete(Option<Head<'a>>),
    Partial,
    Invalid,
}

fn parse(buf: &[u8]) -> Parsed<'_> {
    // Uninitialised: zeroing the array for each head would cost more than parsing it.
    let mut headers = [const { crate::h1::Uninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Invalid,
    };
    let value = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    // Requests without a Host header (absolute-form targets, HTTP/1.0) are routed by pingora,
    // and CONNECT is refused by it (405) — neither should wait for, or wake, an instance here.
    if req.method == Some("CONNECT") {
        return Parsed::Complete(None);
    }
    Parsed::Complete(value("host").map(|host| Head {
        host,
        tag: value(wire::HEADER_TAG),
        plain: is_plain(&req),
        websocket: crate::upgrade::is_websocket(&req),
        len,
    }))
}

/// Read the next request head on `stream` and admit it. The bytes read are put back for pingora
/// to read again. `idle` is the connection's keep-alive timer: one per connection, pushed back
/// here for each request (pushing a timer later is an atomic store; arming a fresh one would
/// wake the runtime's driver on every request).
pub async fn admit(
    gateway: &Gateway,
    stream: &mut Buffered,
    mut idle: Pin<&mut Sleep>,
    shutdown: &watch::Receiver<bool>,
    h2c: bool,
) -> Admission {
    idle.as_mut().reset(tokio::time::Instant::now() + KEEPALIVE);
    let mut buf = Vec::with_capacity(HEAD_BUF);
    let (target, revision, plain, websocket, len) = loop {
        if buf.len() == buf.capacity() {
            if buf.len() >= MAX_HEAD {
                stream.rewind(&buf);
                return Admission::Pass;
            }
            buf.reserve(buf.len());
        }
        let read = if buf.is_empty() {
            // Between requests: a shutdown ends the connection.
            let mut stop = shutdown.clone();
            tokio::select! {
                biased;
                r = stream.read_buf(&mut buf) => r,
                _ = &mut idle => return Admission::Closed,
                _ = stop.wait_for(|s| *s) => return Admission::Closed,
            }
        } else {
            tokio::select! {
                biased;
                r = stream.read_buf(&mut buf) => r,
                _ = &mut idle => return Admission::Closed,
            }
        };
        match read {
            Ok(n) if n > 0 => {}
            // Closed or reset.
            _ => return Admission::Closed,
        }
        if h2c {
            let n = buf.len().min(H2_PREFACE.len());
            if buf[..n] == H2_PREFACE[..n] {
                if n < H2_PREFACE.len() {
                    continue;
                }
                stream.rewind(&buf);
                return Admission::H2;
            }
        }
        match parse(&buf) {
            Parsed::Partial => continue,
            Parsed::Invalid | Parsed::Complete(None) => {
                stream.rewind(&buf);
                return Admission::Pass;
            }
            Parsed::Complete(Some(head)) => {
                let table = gateway.routes.borrow().clone();
                let Some(target) = table.lookup(head.host, gateway.listener).cloned() else {
                    stream.rewind(&buf);
                    return Admission::Pass;
                };
                let Some(revision) = target.pick(head.tag, fastrand::u32(0..100)) else {
                    stream.rewind(&buf);
                    return Admission::Pass;
                };
                let revision = gateway.revisions.get(&target.namespace, revision);
                break (target, revision, head.plain, head.websocket, head.len);
            }
        }
    };
    let started = Instant::now();
    let held = buf.len();
    let bytes = if plain || websocket {
        // Carried by the gateway itself: it keeps what it read (at its size while it waits).
        buf.shrink_to_fit();
        Some((buf, len))
    } else {
        // Pingora reads the head from here; what waits is a copy of exactly its size.
        stream.rewind(&buf);
        drop(buf);
        None
    };
    revision
        .arrivals
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let lease = gateway.lease(&revision, started, held).await;
    Admission::Admitted(Admitted {
        started,
        target,
        revision,
        lease,
        plain,
        websocket,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_finds_host_and_tag_case_insensitively() {
        let head = b"GET /x HTTP/1.1\r\nHOST: a.b\r\nknative-serving-tag: canary\r\n\r\n";
        let Parsed::Complete(Some(h)) = parse(head) else {
            panic!("complete head")
        };
        assert_eq!((h.host, h.tag), ("a.b", Some("canary")));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nHost: a"),
            Parsed::Partial
        ));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\n\r\n"),
            Parsed::Complete(None)
        ));
        assert!(matches!(
            parse(b"CONNECT a.b:443 HTTP/1.1\r\nHost: a.b\r\n\r\n"),
            Parsed::Complete(None)
        ));
        assert!(matches!(
            parse(b"\x16\x03\x01garbage\r\n\r\n"),
            Parsed::Invalid
        ));
    }

    #[test]
    fn plain_requests_are_http11_with_small_sized_bodies_and_no_upgrade() {
        let plain = |head: &str| match parse(head.as_bytes()) {
            Parsed::Complete(Some(h)) => h.plain,
            _ => panic!("complete head: {head:?}"),
        };
        assert!(plain("GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(plain(
            "HEAD / HTTP/1.1\r\nHost: a\r\nConnection: Keep-Alive, close\r\n\r\n"
        ));
        assert!(plain(
            "OPTIONS * HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(plain(
            "POST /e HTTP/1.1\r\nHost: a\r\nContent-Length: 65536\r\n\r\n"
        ));
        assert!(plain("DELETE /x HTTP/1.1\r\nHost: a\r\n\r\n"));
        for head in [
            "GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            "TRACE / HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 65537\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, x-secret\r\n\r\n",
        ] {
            assert!(!plain(head), "{head:?}");
        }
    }
}
