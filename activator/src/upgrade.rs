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

use std::time::Instant;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::admission::Carried;
use crate::buffered::Buffered;
use crate::gateway::Gateway;
use crate::h1::{self, ClientHeaders, connect, refuse};
use crate::revisions::RevisionState;
use crate::routes::Target;

/// Attempts after the first when connecting fails, as on the other paths.
const MAX_RETRIES: usize = 16;

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

/// Tunnel one upgrade; the client's connection ends with it.
pub async fn tunnel(
    gateway: &Gateway,
    mut client: Buffered,
    upgrade: Carried,
    headers: &ClientHeaders,
) {
    let Carried {
        started,
        target,
        revision,
        mut lease,
        bytes,
        head,
        ..
    } = upgrade;
    let (request, span) = match upstream_head(
        gateway,
        &bytes[..head],
        headers,
        &target,
        &revision,
        started,
    ) {
        Ok(r) => r,
        Err(reason) => {
            refuse(&mut client, 400, &reason).await;
            gateway.finished(&target, &revision, started, None, 400);
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
                        gateway.finished(&target, &revision, started, span, code);
                        return;
                    }
                }
            }
        }
    };
    let status = exchange(&mut client, &mut upstream, &request, &bytes[head..]).await;
    drop(lease);
    gateway.finished(&target, &revision, started, span, status);
}

/// The request head as the instance gets it, and the request's span when tracing is on.
fn upstream_head(
    gateway: &Gateway,
    head: &[u8],
    client: &ClientHeaders,
    target: &Target,
    revision: &RevisionState,
    started: Instant,
) -> Result<(Vec<u8>, Option<ebb_traces::Span>), String> {
    let mut headers = [const { h1::Uninit::uninit() }; 128];
    let req = h1::Request::parse(head, &mut headers).ok_or("invalid request head")?;
    let (span, trace) = req.span(gateway.traces.as_deref(), target, revision, started);
    let mut out = Vec::with_capacity(head.len() + 256);
    req.write_upstream(
        &mut out,
        client,
        b"Connection: Upgrade\r\nUpgrade: websocket\r\n",
        &trace,
    );
    Ok((out, span))
}

/// Send the head (and what followed it), read the answer, tunnel on 101 or relay a refusal.
/// Returns the status (502 when the instance failed before answering, and is answered so; 0
/// when the client left first).
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
    // Bytes the client sends before the instance answers (it should wait for the 101): they
    // follow the head to the instance once it has answered.
    let mut pending = Vec::new();
    let mut first = true;
    loop {
        let mut out = Vec::new();
        let read = h1::read_response(upstream, &mut buf, false, Some((&mut out, true)));
        let answer = if first {
            first = false;
            tokio::select! {
                r = read => r,
                // A client that leaves while the instance prepares its answer ends the
                // exchange (and frees the instance's slot) at once.
                () = crate::plain::client_gone(client, &mut pending) => return 0,
            }
        } else {
            read.await
        };
        let response = match answer {
            Ok(r) => r,
            Err(e) => {
                refuse(client, 502, &format!("instance failed: {e}")).await;
                return 502;
            }
        };
        if !pending.is_empty() {
            if upstream.write_all(&pending).await.is_err() {
                refuse(client, 502, "instance failed: the connection closed").await;
                return 502;
            }
            pending.clear();
        }
        let status = response.status;
        if status == 101 {
            // The instance's head as it is (its Connection and Upgrade fields are the
            // client's now), and any bytes that came with it.
            if client.write_all(&buf).await.is_err() || client.flush().await.is_err() {
                return 101;
            }
            let _ = tokio::io::copy_bidirectional(client, upstream).await;
            return 101;
        }
        if status < 200 {
            // Informational: pass it on, the final answer follows.
            if client.write_all(&out).await.is_err() {
                return status;
            }
            buf.drain(..response.len);
            continue;
        }
        // Refused: relay the answer, then close (the client's connection was for a tunnel).
        if client.write_all(&out).await.is_err() {
            return status;
        }
        let _ = h1::relay_body(client, upstream, &buf[response.len..], response.framing).await;
        let _ = client.flush().await;
        let _ = client.shutdown().await;
        return status;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
