//! Per revision: its ready instances, how many requests each may take, which one a request
//! goes to, and the FIFO queue of requests waiting for room (while the revision wakes from zero,
//! or when every instance is at its containerConcurrency).
//!
//! Capacity is CC × instances (unlimited for CC = 0). Choice of instance: power of two choices
//! by in-flight count for CC = 0; the first instance with room for CC ≤ 3 (small CC packs
//! requests, keeping instances warm and letting idle ones scale away); round-robin skipping
//! full instances otherwise. Leases are drop guards: the slot comes back on every path.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// How long an instance whose connect failed stays out of rotation. Short: under a burst of
/// connects a healthy instance can fail one, and a longer ban would strand queued requests.
pub const DOWN_PENALTY: Duration = Duration::from_secs(1);

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("queue full: {queued} requests already wait for revision {revision}")]
    QueueFull { revision: String, queued: usize },
    #[error("queue full: {bytes} bytes of request bodies already wait for revision {revision}")]
    QueueBytesFull { revision: String, bytes: usize },
}

/// Queue bounds per revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Knative's activator queue depth.
    pub max_queued: usize,
    /// Buffered request bytes, so that held uploads cannot exhaust memory.
    pub max_queued_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_queued: 10_000,
            max_queued_bytes: 64 * 1024 * 1024,
        }
    }
}

#[derive(Debug)]
struct Endpoint {
    addr: SocketAddr,
    in_flight: usize,
    /// Taken out of rotation after a failed connect, for `DOWN_PENALTY` or until the runtime
    /// reports it again.
    down: Option<Instant>,
    /// No longer reported ready but still serving leases: kept (not choosable) until they end,
    /// so that its in-flight count survives if it is reported again.
    removed: bool,
}

#[derive(Debug)]
struct Waiter {
    tx: oneshot::Sender<Lease>,
}

#[derive(Debug)]
struct State {
    cc: usize,
    endpoints: Vec<Endpoint>,
    queue: VecDeque<Waiter>,
    queued: usize,
    queued_bytes: usize,
    rr: usize,
}

/// One revision's instances and queue.
#[derive(Debug)]
pub struct Throttler {
    pub revision: String,
    limits: Limits,
    state: Mutex<State>,
    /// Time spent by finished requests at instances since the last report (nanoseconds): the
    /// activity of requests too short for the 100 ms concurrency samples to see.
    busy_nanos: std::sync::atomic::AtomicU64,
}

/// The right to send one request to `addr`; dropping it frees the slot.
#[derive(Debug)]
pub struct Lease {
    pub addr: SocketAddr,
    throttler: Option<Arc<Throttler>>,
    since: Instant,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(t) = self.throttler.take() {
            let busy = u64::try_from(self.since.elapsed().as_nanos()).unwrap_or(u64::MAX);
            t.busy_nanos
                .fetch_add(busy, std::sync::atomic::Ordering::Relaxed);
            t.release(self.addr);
        }
    }
}

/// Held while a request waits in the queue; leaving (timeout, client gone) frees its place.
#[derive(Debug)]
struct Place {
    throttler: Arc<Throttler>,
    bytes: usize,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut s = self.throttler.lock();
        s.queued -= 1;
        s.queued_bytes -= self.bytes;
    }
}

impl Throttler {
    pub fn new(revision: &str, container_concurrency: usize, limits: Limits) -> Arc<Self> {
        Arc::new(Throttler {
            revision: revision.to_string(),
            limits,
            busy_nanos: std::sync::atomic::AtomicU64::new(0),
            state: Mutex::new(State {
                cc: container_concurrency,
                endpoints: Vec::new(),
                queue: VecDeque::new(),
                queued: 0,
                queued_bytes: 0,
                rr: 0,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock would be a bug in this module; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Time finished requests spent at instances since the last call.
    pub fn take_busy(&self) -> Duration {
        Duration::from_nanos(
            self.busy_nanos
                .swap(0, std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Requests waiting now.
    pub fn queued(&self) -> usize {
        self.lock().queued
    }

    /// Ready, usable instances now.
    pub fn endpoints(&self) -> usize {
        let now = Instant::now();
        self.lock()
            .endpoints
            .iter()
            .filter(|e| !e.removed && e.down.is_none_or(|d| now - d >= DOWN_PENALTY))
            .count()
    }

    /// Requests in flight to instances now.
    pub fn in_flight(&self) -> usize {
        self.lock().endpoints.iter().map(|e| e.in_flight).sum()
    }

    /// Replace the set of ready instances (from the runtime or EndpointSlices); in-flight
    /// counts of instances that stay are kept. Waiting requests go out at once.
    pub fn set_endpoints(self: &Arc<Self>, addrs: &[SocketAddr]) {
        let mut s = self.lock();
        let mut next: Vec<Endpoint> = Vec::with_capacity(addrs.len());
        for a in addrs {
            match s.endpoints.iter().position(|e| e.addr == *a) {
                Some(i) => {
                    let mut e = s.endpoints.swap_remove(i);
                    e.down = None;
                    e.removed = false;
                    next.push(e);
                }
                None => next.push(Endpoint {
                    addr: *a,
                    in_flight: 0,
                    down: None,
                    removed: false,
                }),
            }
        }
        // Instances that went away with requests still on them stay until those finish.
        for mut e in s.endpoints.drain(..).filter(|e| e.in_flight > 0) {
            e.removed = true;
            next.push(e);
        }
        s.endpoints = next;
        self.dispatch(&mut s);
    }

    pub fn set_container_concurrency(self: &Arc<Self>, cc: usize) {
        let mut s = self.lock();
        s.cc = cc;
        self.dispatch(&mut s);
    }

    /// Take an instance out of rotation (a connect to it failed).
    pub fn mark_down(&self, addr: SocketAddr) {
        if let Some(e) = self.lock().endpoints.iter_mut().find(|e| e.addr == addr) {
            e.down = Some(Instant::now());
        }
    }

    fn choose(s: &mut State) -> Option<usize> {
        let n = s.endpoints.len();
        if n == 0 {
            return None;
        }
        // Penalties expire; and when every instance is penalized, trying one beats waiting
        // for a change that may never come.
        let now = Instant::now();
        let penalized = |e: &Endpoint| e.down.is_some_and(|d| now - d < DOWN_PENALTY);
        let all_down = s.endpoints.iter().all(|e| e.removed || penalized(e));
        let usable = |e: &Endpoint, cc: usize| {
            (all_down || !penalized(e)) && !e.removed && (cc == 0 || e.in_flight < cc)
        };
        match s.cc {
            0 => {
                // Power of two choices: two random instances, the less loaded one.
                let candidates: Vec<usize> =
                    (0..n).filter(|i| usable(&s.endpoints[*i], 0)).collect();
                match candidates.len() {
                    0 => None,
                    1 => Some(candidates[0]),
                    m => {
                        let i = fastrand::usize(0..m);
                        let mut j = fastrand::usize(0..m - 1);
                        if j >= i {
                            j += 1;
                        }
                        let (a, b) = (candidates[i], candidates[j]);
                        Some(if s.endpoints[b].in_flight < s.endpoints[a].in_flight {
                            b
                        } else {
                            a
                        })
                    }
                }
            }
            cc if cc <= 3 => (0..n).find(|i| usable(&s.endpoints[*i], cc)),
            cc => {
                let start = s.rr;
                let found = (0..n)
                    .map(|k| (start + k) % n)
                    .find(|i| usable(&s.endpoints[*i], cc));
                if let Some(i) = found {
                    s.rr = (i + 1) % n;
                }
                found
            }
        }
    }

    fn lease(self: &Arc<Self>, s: &mut State, i: usize) -> Lease {
        s.endpoints[i].in_flight += 1;
        Lease {
            addr: s.endpoints[i].addr,
            throttler: Some(self.clone()),
            since: Instant::now(),
        }
    }

    /// Hand free capacity to waiting requests, oldest first.
    fn dispatch(self: &Arc<Self>, s: &mut State) {
        while !s.queue.is_empty() {
            let Some(i) = Self::choose(s) else { return };
            let Some(w) = s.queue.pop_front() else { return };
            if w.tx.is_closed() {
                continue;
            }
            let lease = self.lease(s, i);
            if let Err(mut lease) = w.tx.send(lease) {
                // The waiter left between the check and the send: undo without re-locking.
                lease.throttler = None;
                s.endpoints[i].in_flight -= 1;
            }
        }
    }

    fn release(self: &Arc<Self>, addr: SocketAddr) {
        let mut s = self.lock();
        if let Some(i) = s.endpoints.iter().position(|e| e.addr == addr) {
            let e = &mut s.endpoints[i];
            e.in_flight = e.in_flight.saturating_sub(1);
            if e.removed && e.in_flight == 0 {
                s.endpoints.swap_remove(i);
            }
        }
        self.dispatch(&mut s);
    }

    /// An instance for one request, waiting in FIFO order while none has room. `body_bytes`
    /// is what the request would buffer while it waits. Bound the wait with a timeout; a
    /// request that gives up leaves the queue.
    pub async fn acquire(self: &Arc<Self>, body_bytes: usize) -> Result<Lease, Refused> {
        let rx = {
            let mut s = self.lock();
            if s.queue.is_empty()
                && let Some(i) = Self::choose(&mut s)
            {
                return Ok(self.lease(&mut s, i));
            }
            if s.queued >= self.limits.max_queued {
                return Err(Refused::QueueFull {
                    revision: self.revision.clone(),
                    queued: s.queued,
                });
            }
            if s.queued_bytes + body_bytes > self.limits.max_queued_bytes {
                return Err(Refused::QueueBytesFull {
                    revision: self.revision.clone(),
                    bytes: s.queued_bytes,
                });
            }
            let (tx, rx) = oneshot::channel();
            s.queue.push_back(Waiter { tx });
            s.queued += 1;
            s.queued_bytes += body_bytes;
            rx
        };
        let _place = Place {
            throttler: self.clone(),
            bytes: body_bytes,
        };
        match rx.await {
            Ok(lease) => Ok(lease),
            // The throttler never drops a waiter without answering while it lives.
            Err(_) => Err(Refused::QueueFull {
                revision: self.revision.clone(),
                queued: 0,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[tokio::test]
    async fn waits_at_zero_and_releases_oldest_first() {
        let t = Throttler::new("r", 1, Limits::default());
        let mut waiting = Vec::new();
        for i in 0..3 {
            let t = t.clone();
            waiting.push(tokio::spawn(async move {
                (i, t.acquire(0).await.map(|l| l.addr))
            }));
            tokio::task::yield_now().await;
        }
        while t.queued() < 3 {
            tokio::task::yield_now().await;
        }
        t.set_endpoints(&[addr(1), addr(2), addr(3)]);
        for w in waiting {
            let (_, got) = w.await.unwrap_or((
                0,
                Err(Refused::QueueFull {
                    revision: String::new(),
                    queued: 0,
                }),
            ));
            assert!(got.is_ok());
        }
        assert_eq!(t.queued(), 0);
        assert_eq!(t.in_flight(), 0, "leases were dropped");
    }

    #[tokio::test]
    async fn capacity_is_cc_times_endpoints() {
        let t = Throttler::new("r", 2, Limits::default());
        t.set_endpoints(&[addr(1), addr(2)]);
        let mut leases = Vec::new();
        for _ in 0..4 {
            leases.push(t.acquire(0).await.unwrap_or_else(|e| panic!("{e}")));
        }
        assert_eq!(t.in_flight(), 4);
        let t2 = t.clone();
        let fifth = tokio::spawn(async move { t2.acquire(0).await.map(|l| l.addr) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!fifth.is_finished(), "a fifth request waits");
        let freed = leases.remove(0).addr;
        drop(leases);
        let got = fifth.await.ok().and_then(Result::ok);
        assert!(got.is_some());
        let _ = freed;
    }

    #[tokio::test]
    async fn first_available_packs_small_cc() {
        let t = Throttler::new("r", 1, Limits::default());
        t.set_endpoints(&[addr(1), addr(2), addr(3)]);
        let a = t.acquire(0).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.addr, addr(1));
        let b = t.acquire(0).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(b.addr, addr(2));
        drop(a);
        let c = t.acquire(0).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.addr, addr(1), "the first instance with room");
    }

    #[tokio::test]
    async fn queue_bounds_by_count_and_bytes() {
        let t = Throttler::new(
            "r",
            1,
            Limits {
                max_queued: 2,
                max_queued_bytes: 1000,
            },
        );
        let w1 = {
            let t = t.clone();
            tokio::spawn(async move { t.acquire(600).await.map(|_| ()) })
        };
        while t.queued() < 1 {
            tokio::task::yield_now().await;
        }
        assert!(
            matches!(t.acquire(600).await, Err(Refused::QueueBytesFull { .. })),
            "bytes bound"
        );
        let w2 = {
            let t = t.clone();
            tokio::spawn(async move { t.acquire(100).await.map(|_| ()) })
        };
        while t.queued() < 2 {
            tokio::task::yield_now().await;
        }
        assert!(
            matches!(t.acquire(0).await, Err(Refused::QueueFull { .. })),
            "count bound"
        );
        // A waiter that gives up frees its place and bytes.
        w1.abort();
        let _ = w1.await;
        assert_eq!(t.queued(), 1);
        t.set_endpoints(&[addr(1)]);
        assert_eq!(w2.await.ok(), Some(Ok(())));
    }

    #[tokio::test]
    async fn down_endpoints_are_skipped() {
        let t = Throttler::new("r", 0, Limits::default());
        t.set_endpoints(&[addr(1), addr(2)]);
        t.mark_down(addr(1));
        for _ in 0..20 {
            assert_eq!(t.acquire(0).await.map(|l| l.addr).ok(), Some(addr(2)));
        }
        assert_eq!(t.endpoints(), 1);
        t.set_endpoints(&[addr(1), addr(2)]);
        assert_eq!(t.endpoints(), 2, "reported again, back in rotation");
    }

    #[tokio::test]
    async fn penalties_expire_and_never_strand_requests() {
        let t = Throttler::new("r", 0, Limits::default());
        t.set_endpoints(&[addr(1)]);
        t.mark_down(addr(1));
        // The only instance is penalized: it is still tried rather than waiting forever.
        assert_eq!(t.acquire(0).await.map(|l| l.addr).ok(), Some(addr(1)));
        t.set_endpoints(&[addr(1), addr(2)]);
        t.mark_down(addr(1));
        assert_eq!(t.acquire(0).await.map(|l| l.addr).ok(), Some(addr(2)));
        tokio::time::sleep(DOWN_PENALTY).await;
        assert_eq!(t.endpoints(), 2, "the penalty expired");
    }

    #[tokio::test]
    async fn power_of_two_spreads_load() {
        let t = Throttler::new("r", 0, Limits::default());
        let addrs: Vec<_> = (1..=4).map(addr).collect();
        t.set_endpoints(&addrs);
        let mut leases = Vec::new();
        for _ in 0..400 {
            leases.push(t.acquire(0).await.unwrap_or_else(|e| panic!("{e}")));
        }
        let per: Vec<usize> = addrs
            .iter()
            .map(|a| leases.iter().filter(|l| l.addr == *a).count())
            .collect();
        assert!(
            per.iter().all(|n| (80..=120).contains(n)),
            "balanced within 20%: {per:?}"
        );
    }
}
