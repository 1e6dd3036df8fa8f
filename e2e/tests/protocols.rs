//! Protocols through local mode end to end: CloudEvents (binary and structured) into a cold
//! revision with a reply event, and websockets through the gateway and the queue-proxy.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on broken fixtures

mod common;

use std::time::Duration;

use bytes::Bytes;
use cloudevents::binding::http::to_event;
use cloudevents::{AttributesReader, Event, EventBuilder, EventBuilderV10};
use common::*;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};

fn event() -> Event {
    EventBuilderV10::new()
        .id("order-7")
        .source("urn:ebb:e2e")
        .ty("dev.ebb.order.created")
        .subject("order/7")
        .extension("tenant", "acme")
        .data(
            "application/json",
            serde_json::json!({"order": 7, "note": "ünïcödé"}),
        )
        .build()
        .unwrap()
}

async fn send(ebb: &Ebb, req: http::request::Builder, body: Vec<u8>) -> Event {
    let req = req
        .uri(format!("http://{}/", ebb.gateway))
        .method("POST")
        .header("host", ebb.host("events"))
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = http_client().request(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    to_event(&headers, body).expect("the reply is a CloudEvent")
}

fn check_reply(reply: &Event) {
    assert_eq!(reply.ty(), "dev.ebb.order.created.reply");
    assert_eq!(reply.id(), "order-7-reply");
    assert_eq!(reply.source().to_string(), "urn:ebb:cloudevents-echo");
    let inreplyto = reply.extension("inreplyto").map(|v| v.to_string());
    assert_eq!(inreplyto.as_deref(), Some("order-7"));
    let data: serde_json::Value = match reply.data().unwrap() {
        cloudevents::Data::Json(v) => v.clone(),
        cloudevents::Data::Binary(b) => serde_json::from_slice(b).unwrap(),
        cloudevents::Data::String(s) => serde_json::from_str(s).unwrap(),
    };
    assert_eq!(data, serde_json::json!({"order": 7, "note": "ünïcödé"}));
}

#[test]
fn cloudevents_binary_and_structured_through_a_cold_revision() {
    let ebb = Ebb::start();
    ebb.apply(&service_yaml(
        "events",
        "cloudevents-echo",
        &[("autoscaling.knative.dev/initial-scale", "0")],
        &[],
    ));
    assert!(ebb.instances().is_empty(), "cold");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Binary mode: attributes in ce-* headers, data as the body.
        let sent: http::Request<Option<Vec<u8>>> = event().try_into().unwrap();
        let mut req = http::Request::builder();
        for (k, v) in sent.headers() {
            req = req.header(k, v);
        }
        check_reply(&send(&ebb, req, sent.body().clone().unwrap_or_default()).await);

        // Structured mode: the whole event as JSON.
        let body = serde_json::to_vec(&event()).unwrap();
        let req = http::Request::builder().header("content-type", "application/cloudevents+json");
        check_reply(&send(&ebb, req, body).await);
    });
}

#[test]
fn websocket_through_gateway_and_queue_proxy() {
    let ebb = Ebb::start();
    ebb.apply(&service_yaml("ws", "websocket-echo", &[], &[]));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let req = http::Request::get(format!("ws://{}/", ebb.gateway))
            .header("host", ebb.host("ws"))
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header(
                "sec-websocket-key",
                tokio_tungstenite::tungstenite::handshake::client::generate_key(),
            )
            .body(())
            .unwrap();
        let (mut ws, resp) = tokio_tungstenite::connect_async(req)
            .await
            .expect("handshake");
        assert_eq!(resp.status(), 101);
        for i in 0..5 {
            let msg = format!("hello {i}");
            ws.send(tokio_tungstenite::tungstenite::Message::text(msg.clone()))
                .await
                .unwrap();
            let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
                .await
                .expect("echo in time")
                .unwrap()
                .unwrap();
            assert_eq!(got.into_text().unwrap().as_str(), msg);
        }
        ws.close(None).await.unwrap();
    });
}

#[test]
fn a_slow_starting_app_is_waited_for_and_its_logs_are_kept() {
    let ebb = Ebb::start();
    ebb.apply(&service_yaml(
        "slow",
        "slowstart",
        &[("autoscaling.knative.dev/initial-scale", "0")],
        &[("READY_DELAY_MS", "1500")],
    ));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let started = std::time::Instant::now();
    let answers = rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let (gw, host) = (ebb.gateway, ebb.host("slow"));
            set.spawn(async move { request(&http_client(), gw, &host, "/").await });
        }
        set.join_all().await
    });
    assert!(
        answers
            .iter()
            .all(|(s, b)| *s == 200 && b == "ready after 1500 ms\n"),
        "{answers:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "held until the app was ready"
    );
    let logs = ebb.ok(&["logs", "slow"]);
    assert!(
        logs.lines()
            .any(|l| l.starts_with("[slow-00001-")
                && l.contains("] slowstart listening on 127.0.0.1:")),
        "{logs}"
    );
    let yaml = ebb.ok(&["get", "rev", "slow-00001", "-o", "yaml"]);
    assert!(
        yaml.contains("name: slow-00001") && yaml.contains("actualReplicas: 1"),
        "{yaml}"
    );
}

#[test]
fn traces_continue_through_gateway_and_queue_proxy() {
    const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
    const PARENT_ID: &str = "b7ad6b7169203331";
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (collector, exports) = rt.block_on(testkit::otlp_collector());
    let endpoint = format!("http://{collector}");
    let ebb = Ebb::start_full(&[], &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)]);
    ebb.apply(&service_yaml("traced", "runtime-info", &[], &[]));
    let body = rt.block_on(async {
        let req = http::Request::get(format!("http://{}/", ebb.gateway))
            .header("host", ebb.host("traced"))
            .header("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-01"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = http_client().request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap().to_bytes()
    });
    let info: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let seen = info["request"]["headers"]["traceparent"]
        .as_str()
        .unwrap()
        .to_string();
    let parts: Vec<&str> = seen.split('-').collect();
    assert_eq!(parts[1], TRACE_ID, "the app is in the client's trace");
    assert_ne!(parts[2], PARENT_ID, "with a span of ours as its parent");
    // Both the gateway and the queue-proxy export a span in the trace (batches leave within
    // about 5 s).
    let trace = testkit::unhex(TRACE_ID);
    wait_until(
        "spans from the gateway and the queue-proxy",
        Duration::from_secs(20),
        || {
            let e = exports.lock().unwrap();
            let has = |svc: &str| {
                e.iter().any(|(_, b)| {
                    testkit::contains(b, &trace) && testkit::contains(b, svc.as_bytes())
                })
            };
            has("ebb-gateway") && has("queue-proxy")
        },
    );
}
