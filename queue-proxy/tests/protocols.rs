//! What passes through: headers, websockets, h2c with trailers, large streamed bodies.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on broken fixtures

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, StreamBody};

/// /headers echoes the request's headers as JSON; /upload counts the bytes of the body;
/// /download?mb=N streams N MiB; /ws is a websocket echo; /trailers answers with trailers.
async fn app() -> std::net::SocketAddr {
    spawn_app(|mut req: http::Request<hyper::body::Incoming>| async move {
        match req.uri().path() {
            "/headers" => {
                let mut m = serde_json::Map::new();
                for (k, v) in req.headers() {
                    m.insert(
                        k.to_string(),
                        serde_json::Value::from(v.to_str().unwrap_or("")),
                    );
                }
                m.insert(":version".into(), format!("{:?}", req.version()).into());
                http::Response::new(full(serde_json::to_vec(&m).unwrap()))
            }
            "/upload" => {
                let mut n = 0usize;
                let mut body = req.into_body();
                while let Some(frame) = body.frame().await {
                    n += frame
                        .ok()
                        .and_then(|f| f.into_data().ok())
                        .map_or(0, |d| d.len());
                }
                http::Response::new(full(n.to_string()))
            }
            "/download" => {
                let mb: usize = req
                    .uri()
                    .query()
                    .and_then(|q| q.strip_prefix("mb="))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1);
                let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                let stream =
                    futures_util::stream::iter((0..mb * 16).map(move |_| {
                        Ok::<_, std::io::Error>(http_body::Frame::data(chunk.clone()))
                    }));
                http::Response::new(BodyExt::boxed(StreamBody::new(stream)))
            }
            "/trailers" => {
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                trailers.insert("grpc-message", http::HeaderValue::from_static("fine"));
                let frames = vec![
                    Ok::<_, std::io::Error>(http_body::Frame::data(Bytes::from_static(b"payload"))),
                    Ok(http_body::Frame::trailers(trailers)),
                ];
                let mut r = http::Response::new(BodyExt::boxed(StreamBody::new(
                    futures_util::stream::iter(frames),
                )));
                r.headers_mut().insert(
                    "content-type",
                    http::HeaderValue::from_static("application/grpc"),
                );
                r
            }
            "/ws" => testkit::websocket_echo(&mut req),
            _ => http::Response::new(full("ok")),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_pass_and_forwarding_is_added() {
    let a = app().await;
    let qp = QueueProxy::start(a.port(), &[]);
    qp.wait_ready().await;
    let req = http::Request::get(qp.url("/headers"))
        .header("host", "hello.default.example.com")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .header("ce-id", "1234")
        .header("x-custom", "kept")
        .header("knative-serving-revision", "other-00001")
        .header("knative-serving-namespace", "evil")
        .header("x-forwarded-for", "203.0.113.7")
        .header("forwarded", "for=203.0.113.7;proto=https")
        .header("x-forwarded-proto", "https")
        .body(empty())
        .unwrap();
    let r = client().request(req).await.unwrap();
    let body = r.into_body().collect().await.unwrap().to_bytes();
    let h: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(h["host"], "hello.default.example.com", "Host preserved");
    assert_eq!(
        h["traceparent"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    assert_eq!(h["ce-id"], "1234");
    assert_eq!(h["x-custom"], "kept");
    assert!(
        h.get("knative-serving-revision").is_none() && h.get("knative-serving-namespace").is_none(),
        "{h}"
    );
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(
        h["forwarded"],
        "for=203.0.113.7;proto=https, for=127.0.0.1;proto=https;host=hello.default.example.com"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo() {
    let a = app().await;
    let qp = QueueProxy::start(a.port(), &[("CONTAINER_CONCURRENCY", "1")]);
    qp.wait_ready().await;
    let url = format!("ws://{}/ws", qp.bound.serving);
    let (mut ws, resp) = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket handshake through the proxy");
    assert_eq!(resp.status(), 101);
    for i in 0..5 {
        let text = format!("hello {i}");
        ws.send(tokio_tungstenite::tungstenite::Message::text(text.clone()))
            .await
            .unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(2), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
    // The open websocket holds the only slot (CC=1): a plain request waits until it closes.
    let c = client();
    let waiting = tokio::spawn({
        let url = qp.url("/");
        async move { get(&c, &url).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiting.is_finished(),
        "the websocket counts as an in-flight request"
    );
    ws.close(None).await.unwrap();
    drop(ws);
    let (status, _) = tokio::time::timeout(Duration::from_secs(3), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_with_trailers() {
    let a = app().await;
    let qp = QueueProxy::start(a.port(), &[("USER_PROTOCOL", "h2c")]);
    qp.wait_ready().await;
    let h2: hyper_util::client::legacy::Client<_, AppBody> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    // HTTP/2 with prior knowledge in, HTTP/2 to the app.
    let req = http::Request::post(qp.url("/trailers"))
        .header("content-type", "application/grpc")
        .body(full("ping"))
        .unwrap();
    let r = h2.request(req).await.expect("h2c request");
    assert_eq!(r.version(), http::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    let collected = r.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers arrive");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    assert_eq!(trailers.get("grpc-message").unwrap(), "fine");
    assert_eq!(collected.to_bytes(), "payload");
    // The app saw HTTP/2 and the original authority.
    let r = h2
        .request(
            http::Request::get(qp.url("/headers"))
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let h: serde_json::Value =
        serde_json::from_slice(&r.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(h[":version"], "HTTP/2.0");
    // And an HTTP/1 client can still reach an h2c app.
    let (status, _) = get(&client(), &qp.url("/")).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_megabytes_each_way_with_bounded_memory() {
    const MB: usize = 100;
    let a = app().await;
    let qp = QueueProxy::start(a.port(), &[]);
    qp.wait_ready().await;
    let c = client();

    let chunk = Bytes::from(vec![b'u'; 64 * 1024]);
    let upload = futures_util::stream::iter(
        (0..MB * 16).map(move |_| Ok::<_, std::io::Error>(http_body::Frame::data(chunk.clone()))),
    );
    let req = http::Request::post(qp.url("/upload"))
        .body(BodyExt::boxed(StreamBody::new(upload)))
        .unwrap();
    let r = c.request(req).await.unwrap();
    let got = r.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        String::from_utf8_lossy(&got),
        (MB * 1024 * 1024).to_string()
    );

    let r = c
        .request(
            http::Request::get(qp.url(&format!("/download?mb={MB}")))
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = r.into_body();
    let mut n = 0usize;
    while let Some(f) = body.frame().await {
        n += f.unwrap().into_data().map_or(0, |d| d.len());
    }
    assert_eq!(n, MB * 1024 * 1024);
    let (peak_kib, _) = qp.memory_kib();
    // Streaming keeps the proxy's memory to buffers, far below the 100 MiB that passed.
    assert!(
        peak_kib > 0 && peak_kib < 32 * 1024,
        "queue-proxy peak RSS {peak_kib} KiB"
    );
}
