//! The concurrency breaker: at most `capacity` requests at the app, a FIFO queue of bounded
//! depth for the rest, and an immediate refusal beyond that.
//!
//! Slots and queue places are drop guards: a request that completes, times out, fails or whose
//! client goes away gives its place back by being dropped, on every path.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug)]
pub struct Breaker {
    /// None when containerConcurrency is 0 (no limit).
    slots: Option<Arc<Semaphore>>,
    capacity: usize,
    queue_depth: usize,
    waiting: Arc<AtomicUsize>,
}

/// Held while a request is at the app.
#[derive(Debug)]
pub struct Slot(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

/// The queue is full.
#[derive(Debug, PartialEq, Eq)]
pub struct Overflow {
    pub capacity: usize,
    pub queue_depth: usize,
}

struct Waiting(Arc<AtomicUsize>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Breaker {
    pub fn new(capacity: usize, queue_depth: usize) -> Self {
        Breaker {
            slots: (capacity > 0).then(|| Arc::new(Semaphore::new(capacity))),
            capacity,
            queue_depth,
            waiting: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Requests waiting for a slot now.
    pub fn queued(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Requests at the app now (0 when unlimited: not tracked here).
    pub fn in_use(&self) -> usize {
        self.slots
            .as_ref()
            .map_or(0, |s| self.capacity - s.available_permits())
    }

    /// A slot now, without waiting, if one is free (always, when unlimited).
    pub fn try_acquire(&self) -> Option<Slot> {
        match &self.slots {
            None => Some(Slot(None)),
            Some(slots) => slots
                .clone()
                .try_acquire_owned()
                .ok()
                .map(|p| Slot(Some(p))),
        }
    }

    /// Wait for a slot, FIFO. Fails at once when `queue_depth` requests already wait.
    pub async fn acquire(&self) -> Result<Slot, Overflow> {
        let Some(slots) = &self.slots else {
            return Ok(Slot(None));
        };
        if let Ok(p) = slots.clone().try_acquire_owned() {
            return Ok(Slot(Some(p)));
        }
        let before = self.waiting.fetch_add(1, Ordering::AcqRel);
        let guard = Waiting(self.waiting.clone());
        if before >= self.queue_depth {
            drop(guard);
            return Err(Overflow {
                capacity: self.capacity,
                queue_depth: self.queue_depth,
            });
        }
        // tokio's semaphore is fair: waiters are served in arrival order.
        let permit = slots.clone().acquire_owned().await;
        drop(guard);
        // The semaphore is never closed, so acquiring cannot fail.
        Ok(Slot(permit.ok()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn admits_capacity_then_queues_then_refuses() {
        let b = Arc::new(Breaker::new(2, 1));
        let s1 = b.acquire().await;
        let s2 = b.acquire().await;
        assert!(s1.is_ok() && s2.is_ok());
        assert_eq!(b.in_use(), 2);
        let b2 = b.clone();
        let queued = tokio::spawn(async move { b2.acquire().await.map(|_| ()) });
        while b.queued() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            b.acquire().await.err(),
            Some(Overflow {
                capacity: 2,
                queue_depth: 1
            })
        );
        drop(s1);
        assert_eq!(queued.await.ok(), Some(Ok(())));
        assert_eq!(b.queued(), 0);
    }

    #[tokio::test]
    async fn cancelled_waiter_frees_its_place() {
        let b = Arc::new(Breaker::new(1, 1));
        let _held = b.acquire().await;
        let b2 = b.clone();
        let waiter = tokio::spawn(async move { b2.acquire().await.map(|_| ()) });
        while b.queued() == 0 {
            tokio::task::yield_now().await;
        }
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(b.queued(), 0, "an abandoned request leaves the queue");
    }

    #[tokio::test]
    async fn unlimited_never_waits() {
        let b = Breaker::new(0, 0);
        let slots: Vec<_> = futures_util::future::join_all((0..100).map(|_| b.acquire())).await;
        assert!(slots.iter().all(Result::is_ok));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn never_admits_more_than_capacity() {
        let b = Arc::new(Breaker::new(3, 1000));
        let now = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let (b, now, peak) = (b.clone(), now.clone(), peak.clone());
                tokio::spawn(async move {
                    let _slot = b.acquire().await;
                    let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(n, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    now.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
        assert_eq!(peak.load(Ordering::SeqCst), 3);
    }
}
