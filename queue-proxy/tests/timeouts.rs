//! Each of Knative's three timeouts, through a real queue-proxy process.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on broken fixtures

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, StreamBody};

/// /headers-late: headers after 1.5 s. /silent-body: headers at once, then 1.5 s of silence.
/// /drip: a byte every 200 ms for 3 s.
async fn app() -> std::net::SocketAddr {
    spawn_app(|req: http::Request<hyper::body::Incoming>| async move {
        match req.uri().path() {
            "/headers-late" => {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                http::Response::new(full("late"))
            }
            "/silent-body" | "/drip" => {
                let drip = req.uri().path() == "/drip";
                let (tx, rx) = tokio::sync::mpsc::channel::<
                    Result<http_body::Frame<Bytes>, std::io::Error>,
                >(1);
                tokio::spawn(async move {
                    let _ = tx
                        .send(Ok(http_body::Frame::data(Bytes::from_static(b"start"))))
                        .await;
                    if drip {
                        for _ in 0..15 {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            if tx
                                .send(Ok(http_body::Frame::data(Bytes::from_static(b"."))))
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    } else {
                        tokio::time::sleep(Duration::from_millis(1500)).await;
                        let _ = tx
                            .send(Ok(http_body::Frame::data(Bytes::from_static(b"end"))))
                            .await;
                    }
                });
                let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|f| (f, rx))
                });
                http::Response::new(StreamBody::new(stream).boxed())
            }
            _ => http::Response::new(full("fast")),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_start_timeout_gives_504() {
    let a = app().await;
    let qp = QueueProxy::start(
        a.port(),
        &[
            ("REVISION_TIMEOUT_SECONDS", "10"),
            ("REVISION_RESPONSE_START_TIMEOUT_SECONDS", "0.5"),
        ],
    );
    qp.wait_ready().await;
    let c = client();
    let (status, body) = get(&c, &qp.url("/headers-late")).await;
    assert_eq!(status, 504);
    assert!(body.contains("responseStartTimeoutSeconds"), "{body}");
    assert_eq!(get(&c, &qp.url("/")).await, (200, "fast".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn total_timeout_gives_504_before_headers() {
    let a = app().await;
    let qp = QueueProxy::start(a.port(), &[("REVISION_TIMEOUT_SECONDS", "0.5")]);
    qp.wait_ready().await;
    let (status, body) = get(&client(), &qp.url("/headers-late")).await;
    assert_eq!(status, 504);
    assert!(body.contains("timeoutSeconds"), "{body}");
}

/// Knative's TestRevisionTimeout "writes first byte before timeout": a response that started
/// within timeoutSeconds streams on past it, to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_begun_in_time_streams_past_the_timeout() {
    let a = app().await;
    let qp = QueueProxy::start(a.port(), &[("REVISION_TIMEOUT_SECONDS", "1")]);
    qp.wait_ready().await;
    let started = std::time::Instant::now();
    let r = client()
        .request(http::Request::get(qp.url("/drip")).body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"start...............", "the whole stream");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "it ran past the 1 s timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_before_and_after_headers() {
    let a = app().await;
    let qp = QueueProxy::start(
        a.port(),
        &[
            ("REVISION_TIMEOUT_SECONDS", "10"),
            ("REVISION_IDLE_TIMEOUT_SECONDS", "0.5"),
        ],
    );
    qp.wait_ready().await;
    let c = client();
    let (status, body) = get(&c, &qp.url("/headers-late")).await;
    assert_eq!(status, 504);
    assert!(body.contains("idleTimeoutSeconds"), "{body}");
    let r = c
        .request(
            http::Request::get(qp.url("/silent-body"))
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.into_body().collect().await.is_err(),
        "silence after the headers aborts the stream"
    );
    // A response that keeps sending is not idle.
    let r = c
        .request(http::Request::get(qp.url("/drip")).body(empty()).unwrap())
        .await
        .unwrap();
    let body = r
        .into_body()
        .collect()
        .await
        .expect("drip completes")
        .to_bytes();
    assert_eq!(body.len(), 5 + 15);
}
