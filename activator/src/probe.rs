//! Probing of new instances by the gateway itself: an instance the backend announces is used
//! as soon as its queue-proxy answers `K-Network-Probe: queue`, checked every 25 ms, without
//! waiting for Kubernetes (or the local runtime) to mark it ready.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::revisions::RevisionState;

/// How often an announced instance is probed until it answers.
pub const PROBE_PERIOD: Duration = Duration::from_millis(25);
/// One probe's limit (Knative's activator uses 300 ms).
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(300);
/// Give up on an instance that never answers (the backend will announce it again if it
/// becomes ready later).
pub const PROBE_GIVE_UP: Duration = Duration::from_secs(600);

/// One probe: true when the queue-proxy answers 200 `queue`.
pub async fn probe(addr: SocketAddr) -> bool {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!(
            "GET / HTTP/1.1\r\nHost: {addr}\r\n{}: {}\r\nUser-Agent: ebb-activator-probe\r\nConnection: close\r\n\r\n",
            wire::HEADER_NETWORK_PROBE,
            wire::PROBE_QUEUE
        );
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::with_capacity(256);
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf);
        Some(text.starts_with("HTTP/1.1 200") && text.ends_with(wire::PROBE_QUEUE))
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, attempt).await,
        Ok(Some(true))
    )
}

/// Announced and ready instances of one revision.
#[derive(Debug, Default)]
pub struct Candidates {
    announced: BTreeSet<SocketAddr>,
    ready: BTreeSet<SocketAddr>,
}

fn publish(rev: &RevisionState, c: &Candidates) {
    let ready: Vec<SocketAddr> = c.ready.intersection(&c.announced).copied().collect();
    // Publishing needs the Arc for dispatching waiters; RevisionState holds it.
    rev.throttler.set_endpoints(&ready);
}

/// Announce a revision's instances: those already known ready stay in use, new ones are
/// probed until they answer, missing ones leave at once.
pub fn announce(rev: &Arc<RevisionState>, addrs: &[SocketAddr]) {
    let fresh: Vec<SocketAddr> = {
        let mut c = rev.candidates.lock().unwrap_or_else(|p| p.into_inner());
        c.announced = addrs.iter().copied().collect();
        let ready_now = c.ready.clone();
        c.ready = ready_now.intersection(&c.announced).copied().collect();
        publish(rev, &c);
        addrs
            .iter()
            .filter(|a| !c.ready.contains(a))
            .copied()
            .collect()
    };
    for addr in fresh {
        let rev = rev.clone();
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            while started.elapsed() < PROBE_GIVE_UP {
                let still_announced = rev
                    .candidates
                    .lock()
                    .map(|c| c.announced.contains(&addr))
                    .unwrap_or(false);
                if !still_announced {
                    return;
                }
                if probe(addr).await {
                    let mut c = rev.candidates.lock().unwrap_or_else(|p| p.into_inner());
                    if c.announced.contains(&addr) && c.ready.insert(addr) {
                        publish(&rev, &c);
                    }
                    return;
                }
                tokio::time::sleep(PROBE_PERIOD).await;
            }
        });
    }
}

/// The backend has seen an announced instance answer its own probe (the local runtime does):
/// use it now rather than at the gateway's next probe.
pub fn confirm(rev: &Arc<RevisionState>, addr: SocketAddr) {
    let mut c = rev.candidates.lock().unwrap_or_else(|p| p.into_inner());
    if c.announced.contains(&addr) && c.ready.insert(addr) {
        publish(rev, &c);
    }
}

/// Shared probe state lives on the revision; see [`announce`].
pub type SharedCandidates = Mutex<Candidates>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::revisions::Revisions;
    use crate::throttler::Limits;

    #[tokio::test]
    async fn confirm_uses_announced_instances_only() {
        let revisions = Revisions::new(Limits::default());
        // Port 9 (discard) on loopback: nothing answers the gateway's own probe.
        let announced: SocketAddr = "127.0.0.1:9".parse().unwrap_or_else(|e| panic!("{e}"));
        let stranger: SocketAddr = "127.0.0.1:10".parse().unwrap_or_else(|e| panic!("{e}"));
        revisions.announce("default", "r-00001", &[announced]);
        let rev = revisions.get("default", "r-00001");
        assert_eq!(rev.throttler.endpoints(), 0);
        revisions.confirm("default", "r-00001", stranger);
        assert_eq!(rev.throttler.endpoints(), 0, "never announced: ignored");
        revisions.confirm("default", "r-00001", announced);
        assert_eq!(rev.throttler.endpoints(), 1, "confirmed: in use at once");
        revisions.announce("default", "r-00001", &[]);
        assert_eq!(rev.throttler.endpoints(), 0, "withdrawn");
    }
}
