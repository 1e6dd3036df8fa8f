//! Websocket upgrades, tunnelled by the gateway itself.
//!
//! Pingora 0.9 can end an upgraded connection early (cloudflare/pingora#946), so an admitted
//! websocket handshake ([`http1::head::Upgrade::Websocket`]) is handled here at the byte level:
//! the head goes to the instance as any other (internal and hop-by-hop headers removed,
//! `Connection: Upgrade` and `Upgrade: websocket` restored, proxy headers added), and nothing
//! else: bytes the client sent after the head belong to the new protocol, which exists only
//! once the instance agrees. On a 101 the instance's head is passed on, then those bytes, and
//! from then on bytes are copied both ways until either side closes. On any other answer (the
//! instance refused the upgrade) the answer is relayed with its body, the bytes after the
//! client's head are dropped — they would otherwise reach the instance as a request nobody
//! routed, counted or cleaned — and both connections are closed.

use std::time::Instant;

use http1::Refusal;
use http1::head::Uninit;
use http1::relay::{read_response, refuse, relay_body};
use http1::response::Client;
use http1::upstream::{ClientHeaders, Request};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::buffered::Buffered;
use crate::gateway::{Carried, Gateway, connect};
use crate::revisions::RevisionState;
use crate::routes::Target;

/// Attempts after the first when connecting fails, as on the other paths.
const MAX_RETRIES: usize = 16;

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
        head,
        bytes,
    } = upgrade;
    let (request, span) = match upstream_head(
        gateway,
        &bytes[..head.len],
        headers,
        &target,
        &revision,
        started,
    ) {
        Ok(r) => r,
        Err(refusal) => {
            refuse(&mut client, &refusal).await;
            gateway.finished(&target, &revision, started, None, refusal.status);
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
                    Err(Refusal::bad_gateway(format!(
                        "cannot reach an instance: {e}"
                    )))
                } else {
                    drop(lease);
                    gateway.lease(&revision, started, head.len).await
                };
                match next {
                    Ok(l) => lease = l,
                    Err(refusal) => {
                        refuse(&mut client, &refusal).await;
                        gateway.finished(&target, &revision, started, span, refusal.status);
                        return;
                    }
                }
            }
        }
    };
    let status = exchange(
        &mut client,
        &mut upstream,
        &request,
        bytes[head.len..].to_vec(),
    )
    .await;
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
) -> Result<(Vec<u8>, Option<ebb_traces::Span>), Refusal> {
    let mut headers = [const { Uninit::uninit() }; http1::head::MAX_HEADERS];
    let req = Request::parse(head, &mut headers)
        .ok_or_else(|| Refusal::bad_request("invalid request head"))?;
    let (span, trace) = crate::gateway::span_for(gateway, &req, target, revision, started);
    let mut out = Vec::with_capacity(head.len() + 256);
    req.write_upstream(
        &mut out,
        client,
        b"Connection: Upgrade\r\nUpgrade: websocket\r\n",
        &trace,
    );
    Ok((out, span))
}

/// Send the head, read the answer, tunnel on 101 (then `pending`, the bytes the client sent
/// after its head, go first) or relay a refusal (and drop them). Returns the status (502 when
/// the instance failed before answering, and is answered so; 0 when the client left first).
async fn exchange(
    client: &mut Buffered,
    upstream: &mut TcpStream,
    request: &[u8],
    mut pending: Vec<u8>,
) -> u16 {
    if upstream.write_all(request).await.is_err() {
        refuse(
            client,
            &Refusal::bad_gateway("instance failed: the connection closed"),
        )
        .await;
        return 502;
    }
    let ctx = Client {
        head_request: false,
        close: true,
        http10: false,
    };
    let mut buf = Vec::with_capacity(4096);
    let mut first = true;
    loop {
        let mut out = Vec::new();
        let read = read_response(upstream, &mut buf, ctx, Some(&mut out));
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
                refuse(client, &Refusal::instance_failed(e)).await;
                return 502;
            }
        };
        let status = response.status;
        if status == 101 {
            // The instance's head as it is (its Connection and Upgrade fields are the
            // client's now), and any bytes that came with it; then the client's early bytes.
            if client.write_all(&buf).await.is_err() || client.flush().await.is_err() {
                return 101;
            }
            if !pending.is_empty() && upstream.write_all(&pending).await.is_err() {
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
        // Refused: relay the answer, then close both connections (the client's was for a
        // tunnel); what the client sent after its head never reaches the instance.
        if client.write_all(&out).await.is_err() {
            return status;
        }
        let _ = relay_body(
            client,
            upstream,
            &buf[response.len..],
            response.framing,
            response.transform,
        )
        .await;
        let _ = client.flush().await;
        let _ = client.shutdown().await;
        let _ = upstream.shutdown().await;
        return status;
    }
}
