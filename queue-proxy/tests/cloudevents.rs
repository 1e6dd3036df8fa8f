//! CloudEvents pass through untouched, in binary and structured mode, and a reply event comes
//! back intact. Checked on both sides with cloudevents-sdk.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on broken fixtures

mod common;

use std::sync::{Arc, Mutex};

use cloudevents::binding::http::to_event;
use cloudevents::{AttributesReader, Event, EventBuilder, EventBuilderV10};
use common::*;
use http_body_util::BodyExt;

#[derive(Default, Debug)]
struct Seen {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    event: Option<Event>,
}

fn sample() -> Event {
    EventBuilderV10::new()
        .id("evt-0001")
        .source("urn:ebb:test")
        .ty("dev.ebb.order.created")
        .subject("order/42")
        .time("2026-11-25T12:00:00Z")
        .extension("tenant", "acme")
        .data(
            "application/json",
            serde_json::json!({"order": 42, "items": ["a", "b"], "note": "ünïcödé"}),
        )
        .build()
        .unwrap()
}

fn reply() -> Event {
    EventBuilderV10::new()
        .id("evt-reply-1")
        .source("urn:ebb:app")
        .ty("dev.ebb.order.accepted")
        .data("application/json", serde_json::json!({"accepted": true}))
        .build()
        .unwrap()
}

/// The app records what it received, parses it as an event, and replies with an event in
/// binary mode.
async fn app(seen: Arc<Mutex<Seen>>) -> std::net::SocketAddr {
    spawn_app(move |req: http::Request<hyper::body::Incoming>| {
        let seen = seen.clone();
        async move {
            let headers = req.headers().clone();
            let body = req.into_body().collect().await.unwrap().to_bytes().to_vec();
            let event = to_event(&headers, body.clone()).ok();
            *seen.lock().unwrap() = Seen {
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                    .collect(),
                body,
                event,
            };
            let r: http::Request<Option<Vec<u8>>> = reply().try_into().unwrap();
            let mut resp = http::Response::builder().status(200);
            for (k, v) in r.headers() {
                resp = resp.header(k, v);
            }
            resp.body(full(r.into_body().unwrap_or_default())).unwrap()
        }
    })
    .await
}

/// Same attributes, extensions and data (data compared as JSON: binary mode carries bytes
/// where the sender built a JSON value).
fn assert_same(got: &Event, want: &Event) {
    use cloudevents::event::Data;
    assert_eq!(got.id(), want.id());
    assert_eq!(got.source(), want.source());
    assert_eq!(got.ty(), want.ty());
    assert_eq!(got.subject(), want.subject());
    assert_eq!(got.time(), want.time());
    assert_eq!(got.datacontenttype(), want.datacontenttype());
    assert_eq!(got.specversion(), want.specversion());
    let ext = |e: &Event| {
        e.iter_extensions()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
    };
    assert_eq!(ext(got), ext(want));
    let json = |e: &Event| match e.data() {
        Some(Data::Binary(b)) => serde_json::from_slice::<serde_json::Value>(b).ok(),
        Some(Data::Json(v)) => Some(v.clone()),
        Some(Data::String(s)) => serde_json::from_str(s).ok(),
        None => None,
    };
    assert_eq!(json(got), json(want));
    assert!(json(want).is_some());
}

async fn send(qp: &QueueProxy, req: http::Request<AppBody>) -> Event {
    let r = client().request(req).await.unwrap();
    assert_eq!(r.status(), 200);
    let headers = r.headers().clone();
    let body = r.into_body().collect().await.unwrap().to_bytes().to_vec();
    let _ = qp;
    to_event(&headers, body).expect("the reply is a CloudEvent")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_mode_round_trip() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let a = app(seen.clone()).await;
    let qp = QueueProxy::start(a.port(), &[]);
    qp.wait_ready().await;

    let sent: http::Request<Option<Vec<u8>>> = sample().try_into().unwrap();
    let mut req = http::Request::post(qp.url("/"));
    for (k, v) in sent.headers() {
        req = req.header(k, v);
    }
    let sent_body = sent.body().clone().unwrap_or_default();
    let got_reply = send(&qp, req.body(full(sent_body.clone())).unwrap()).await;

    let seen = seen.lock().unwrap();
    assert_same(
        seen.event.as_ref().expect("the app parsed an event"),
        &sample(),
    );
    assert_eq!(seen.body, sent_body, "the body is byte-identical");
    for (k, v) in sent.headers() {
        let got = seen
            .headers
            .iter()
            .find(|(n, _)| n == k.as_str())
            .map(|(_, v)| v.as_str());
        assert_eq!(got, v.to_str().ok(), "header {k} unchanged");
    }
    assert_same(&got_reply, &reply());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_mode_round_trip() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let a = app(seen.clone()).await;
    let qp = QueueProxy::start(a.port(), &[]);
    qp.wait_ready().await;

    let body = serde_json::to_vec(&sample()).unwrap();
    let req = http::Request::post(qp.url("/"))
        .header(
            "content-type",
            "application/cloudevents+json; charset=utf-8",
        )
        .body(full(body.clone()))
        .unwrap();
    let got_reply = send(&qp, req).await;
    let seen = seen.lock().unwrap();
    assert_eq!(seen.body, body, "the structured body is byte-identical");
    assert_same(
        seen.event.as_ref().expect("the app parsed an event"),
        &sample(),
    );
    assert_same(&got_reply, &reply());
}
