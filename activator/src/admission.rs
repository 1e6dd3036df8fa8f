//! Admission: the first step of every HTTP/1 request, before any byte goes to an instance.
//!
//! Each request head is read here and checked by [`http1::head`] (Host, target form, framing,
//! expectations, upgrades): a head that breaks a rule is refused with a 400/405/417/431/501
//! naming the field and the rule, and the connection closed. A valid one is routed (Host or
//! an absolute target's authority, and `Knative-Serving-Tag`; 404 naming the host when no route
//! matches, 503 when the route has no revision) and given an instance — waiting in its
//! revision's queue while there is none — before the gateway builds any per-request state. A
//! request held here while its revision wakes from zero costs its head bytes, a queue place
//! and this connection's task. Idle keep-alive connections wait here too.
//!
//! HTTP/2 with prior knowledge is recognised here and left to pingora whole (its streams are
//! routed one by one in `request_filter`).

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http1::Refusal;
use http1::head::{BodyFraming, RequestHead};
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
    /// Refused before an instance was chosen: a head that breaks a rule, a host with no route,
    /// a route with nothing to send to.
    Refused(Refusal),
    /// Routed, and given an instance or refused.
    Admitted(Admitted),
}

/// A routed request.
#[derive(Debug)]
pub struct Admitted {
    /// When its head was complete: its deadline and latency count from here.
    pub started: Instant,
    pub target: Arc<Target>,
    pub revision: Arc<RevisionState>,
    /// The instance to send it to, or why it is refused (503 queue full, 504 deadline).
    pub lease: Result<Lease, Refusal>,
    pub head: RequestHead,
    /// What was read: the head (`head.len` bytes), then anything after it.
    pub bytes: Vec<u8>,
}

/// A request admission refused after routing it (503 queue full, 504 deadline): the refusal,
/// and what its metrics are counted against.
#[derive(Debug)]
pub struct Unleased {
    pub refusal: Refusal,
    pub started: Instant,
    pub target: Arc<Target>,
    pub revision: Arc<RevisionState>,
}

impl Admitted {
    /// The request with its instance, to carry; or why it has none.
    pub fn carried(self) -> Result<crate::gateway::Carried, Unleased> {
        let Admitted {
            started,
            target,
            revision,
            lease,
            head,
            bytes,
        } = self;
        match lease {
            Ok(lease) => Ok(crate::gateway::Carried {
                started,
                target,
                revision,
                lease,
                head,
                bytes,
            }),
            Err(refusal) => Err(Unleased {
                refusal,
                started,
                target,
                revision,
            }),
        }
    }
}

/// Read the next request head on `stream` and admit it. `idle` is the connection's keep-alive
/// timer: one per connection, pushed back here for each request (pushing a timer later is an
/// atomic store; arming a fresh one would wake the runtime's driver on every request).
pub async fn admit(
    gateway: &Gateway,
    stream: &mut Buffered,
    mut idle: Pin<&mut Sleep>,
    shutdown: &watch::Receiver<bool>,
    h2c: bool,
) -> Admission {
    idle.as_mut().reset(tokio::time::Instant::now() + KEEPALIVE);
    let mut buf = Vec::with_capacity(HEAD_BUF);
    let (target, revision, head) = loop {
        if buf.len() == buf.capacity() {
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
        let head = match http1::head::parse(&buf) {
            Ok(None) => continue,
            Ok(Some(head)) => head,
            Err(refusal) => return Admission::Refused(refusal),
        };
        if let Err(refusal) = check_early_body(&head, &buf) {
            return Admission::Refused(refusal);
        }
        let table = gateway.routes.borrow().clone();
        let host = head.host(&buf);
        let Some(target) = table.lookup(host, gateway.listener).cloned() else {
            if let Some(why) = table.broken(host) {
                return Admission::Refused(Refusal::new(500, why.to_string()));
            }
            return Admission::Refused(Refusal::new(404, format!("no route for host {host:?}")));
        };
        let tag = table.header_tag(head.tag(&buf));
        let Some(revision) = target.pick(tag, fastrand::u32(0..100)) else {
            return Admission::Refused(Refusal::unavailable(format!(
                "route {} has no ready revision",
                target.route
            )));
        };
        let revision = gateway.revisions.get(&target.namespace, revision);
        if let Some(why) = revision.broken() {
            return Admission::Refused(Refusal::new(500, why));
        }
        break (target, revision, head);
    };
    let started = Instant::now();
    // Kept at its size while it waits.
    buf.shrink_to_fit();
    revision
        .arrivals
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let lease = gateway.lease(&revision, started, buf.len()).await;
    Admission::Admitted(Admitted {
        started,
        target,
        revision,
        lease,
        head,
        bytes: buf,
    })
}

/// A chunked body's bytes that came with the head are checked at once: an error there is
/// refused before the request waits for, or wakes, an instance.
fn check_early_body(head: &RequestHead, buf: &[u8]) -> Result<(), Refusal> {
    if head.body == BodyFraming::Chunked && buf.len() > head.len {
        http1::chunked::Decoder::new()
            .feed(&buf[head.len..])
            .map_err(|e| Refusal::bad_request(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_chunked_bytes_are_checked() {
        let ok = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel";
        let bad = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello";
        for (buf, good) in [(&ok[..], true), (&bad[..], false)] {
            let head = http1::head::parse(buf)
                .ok()
                .flatten()
                .unwrap_or_else(|| panic!("a complete head"));
            assert_eq!(check_early_body(&head, buf).is_ok(), good);
        }
    }
}
