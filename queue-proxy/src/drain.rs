//! Graceful drain: after SIGTERM (or a call to `/wait-for-drain`) probes fail at once so that
//! traffic moves away, requests keep being served, and the proxy is drained once no request
//! arrived for the quiet period and none is in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

#[derive(Debug)]
pub struct Drain {
    started: Instant,
    draining: AtomicBool,
    /// Milliseconds since `started` of the last request arrival.
    last_request_ms: AtomicU64,
    drained: watch::Sender<bool>,
    quiet: Duration,
}

impl Drain {
    pub fn new(quiet: Duration) -> Arc<Self> {
        Arc::new(Drain {
            started: Instant::now(),
            draining: AtomicBool::new(false),
            last_request_ms: AtomicU64::new(0),
            drained: watch::channel(false).0,
            quiet,
        })
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Record an arrival (cheap: one relaxed store).
    pub fn touch(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_request_ms.store(ms, Ordering::Relaxed);
    }

    fn since_last_request(&self) -> Duration {
        let last = Duration::from_millis(self.last_request_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }

    /// Begin draining (idempotent). Returns true if this call started it.
    pub fn start(&self) -> bool {
        !self.draining.swap(true, Ordering::AcqRel)
    }

    /// Resolves once drained.
    pub async fn wait(&self) {
        let mut rx = self.drained.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// Drive the drain to completion: quiet period, then no request in flight (bounded by
    /// `max_in_flight_wait`, the revision timeout, after which nothing can still be legitimately
    /// running).
    pub async fn run(&self, in_flight: impl Fn() -> u64, max_in_flight_wait: Duration) {
        self.start();
        // The quiet period starts now and restarts with every arrival.
        self.touch();
        loop {
            let idle = self.since_last_request();
            if idle >= self.quiet {
                break;
            }
            tokio::time::sleep(self.quiet - idle).await;
        }
        let deadline = Instant::now() + max_in_flight_wait;
        while in_flight() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.drained.send_replace(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64 as Count;

    #[tokio::test]
    async fn drains_after_quiet_period_and_in_flight() {
        let d = Drain::new(Duration::from_millis(100));
        let in_flight = Arc::new(Count::new(1));
        let d2 = d.clone();
        let f2 = in_flight.clone();
        let started = Instant::now();
        let task = tokio::spawn(async move {
            d2.run(move || f2.load(Ordering::SeqCst), Duration::from_secs(5))
                .await
        });
        tokio::time::sleep(Duration::from_millis(60)).await;
        d.touch(); // a late request restarts the quiet period
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(d.is_draining());
        assert!(!task.is_finished(), "still one request in flight");
        in_flight.store(0, Ordering::SeqCst);
        d.wait().await;
        assert!(started.elapsed() >= Duration::from_millis(160));
        let _ = task.await;
    }
}
