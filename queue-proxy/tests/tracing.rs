//! A span per request, continuing the incoming traceparent, exported over OTLP/HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on broken fixtures

mod common;

use std::time::{Duration, Instant};

use common::*;

const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT_ID: &str = "b7ad6b7169203331";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_continue_the_trace_and_reach_the_collector() {
    let (collector, exports) = testkit::otlp_collector().await;
    let (app, seen) = testkit::traceparent_app().await;
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
    let our_span = testkit::unhex(parts[2]);

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = exports.lock().unwrap().iter().any(|(path, body)| {
            path == "/v1/traces"
                && testkit::contains(body, &testkit::unhex(TRACE_ID))
                && testkit::contains(body, &testkit::unhex(PARENT_ID))
                && testkit::contains(body, &our_span)
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
