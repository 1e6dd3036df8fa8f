//! containerConcurrency through a real queue-proxy process.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on broken fixtures

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;

/// An app that sleeps `ms` per request and records the peak number of requests it saw at once.
async fn slow_app(ms: u64) -> (std::net::SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (n, p) = (now.clone(), peak.clone());
    let addr = spawn_app(move |_req| {
        let (n, p) = (n.clone(), p.clone());
        async move {
            let c = n.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(c, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            n.fetch_sub(1, Ordering::SeqCst);
            http::Response::new(full("done"))
        }
    })
    .await;
    (addr, now, peak)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_at_a_time_none_lost() {
    let (app, _, peak) = slow_app(100).await;
    let qp = QueueProxy::start(app.port(), &[("CONTAINER_CONCURRENCY", "1")]);
    qp.wait_ready().await;
    let c = client();
    let url = qp.url("/");
    let results = futures_util::future::join_all((0..10).map(|_| get(&c, &url))).await;
    assert!(
        results.iter().all(|(s, b)| *s == 200 && b == "done"),
        "{results:?}"
    );
    assert_eq!(
        peak.load(Ordering::SeqCst),
        1,
        "the app never saw two requests at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_gets_503_with_a_reason() {
    let (app, _, peak) = slow_app(400).await;
    // CC=1, queue of 2: at most 3 accepted at once; the rest are refused at once.
    let qp = QueueProxy::start(
        app.port(),
        &[("CONTAINER_CONCURRENCY", "1"), ("QUEUE_DEPTH", "2")],
    );
    qp.wait_ready().await;
    let c = client();
    let url = qp.url("/");
    let results = futures_util::future::join_all((0..8).map(|_| get(&c, &url))).await;
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    let refused: Vec<_> = results.iter().filter(|(s, _)| *s == 503).collect();
    assert_eq!(ok, 3, "{results:?}");
    assert_eq!(refused.len(), 5, "{results:?}");
    assert!(refused[0].1.contains("overload"), "{:?}", refused[0]);
    assert_eq!(peak.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_frees_the_slot() {
    // The app holds requests to /hang for 3 s; others answer at once.
    let app = spawn_app(|req: http::Request<hyper::body::Incoming>| async move {
        if req.uri().path() == "/hang" {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        http::Response::new(full("ok"))
    })
    .await;
    let qp = QueueProxy::start(
        app.port(),
        &[("CONTAINER_CONCURRENCY", "1"), ("QUEUE_DEPTH", "0")],
    );
    qp.wait_ready().await;
    let c = client();
    // Take the only slot, then give up after 200 ms (drops the connection).
    let hang = qp.url("/hang");
    let _ = tokio::time::timeout(Duration::from_millis(200), get(&c, &hang)).await;
    drop(c);
    // While the app still sleeps on the abandoned request, the slot must be free again.
    let c = client();
    let started = std::time::Instant::now();
    let mut last = (0, String::new());
    while started.elapsed() < Duration::from_secs(2) {
        last = get(&c, &qp.url("/")).await;
        if last.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        last.0, 200,
        "slot not released after the client left: {last:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(2500));
}
