//! A span per request, continuing the incoming traceparent, exported over OTLP/HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on broken fixtures

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use http_body_util::BodyExt;

const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT_ID: &str = "b7ad6b7169203331";

/// Every export the stand-in collector received: (path, body).
type Exports = Vec<(String, Vec<u8>)>;

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_continue_the_trace_and_reach_the_collector() {
    // A stand-in OTLP/HTTP collector that keeps every export it receives.
    let exports: Arc<Mutex<Exports>> = Arc::default();
    let e = exports.clone();
    let collector = spawn_app(move |req: http::Request<hyper::body::Incoming>| {
        let e = e.clone();
        async move {
            let path = req.uri().path().to_string();
            let body = req.into_body().collect().await.unwrap().to_bytes().to_vec();
            e.lock().unwrap().push((path, body));
            http::Response::new(full(""))
        }
    })
    .await;
    let seen: Arc<Mutex<Option<String>>> = Arc::default();
    let s = seen.clone();
    let app = spawn_app(move |req: http::Request<hyper::body::Incoming>| {
        let s = s.clone();
        async move {
            *s.lock().unwrap() = req
                .headers()
                .get("traceparent")
                .map(|v| v.to_str().unwrap().to_string());
            http::Response::new(full("ok"))
        }
    })
    .await;
    let endpoint = format!("http://{collector}");
    let qp = QueueProxy::start(
        app.port(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    qp.wait_ready().await;

    let req = http::Request::get(qp.url("/traced"))
        .header("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-01"))
        .body(empty())
        .unwrap();
    let r = client().request(req).await.unwrap();
    assert_eq!(r.status(), 200);

    let at_app = seen
        .lock()
        .unwrap()
        .clone()
        .expect("the app got a traceparent");
    let parts: Vec<&str> = at_app.split('-').collect();
    assert_eq!(parts[1], TRACE_ID, "same trace");
    assert_ne!(
        parts[2], PARENT_ID,
        "the queue-proxy's span is the app's parent"
    );
    let our_span = unhex(parts[2]);

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = exports.lock().unwrap().iter().any(|(path, body)| {
            path == "/v1/traces"
                && contains(body, &unhex(TRACE_ID))
                && contains(body, &unhex(PARENT_ID))
                && contains(body, &our_span)
        });
        if found {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no span with trace {TRACE_ID}, parent {PARENT_ID} reached the collector"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
