//! Answers a websocket upgrade and echoes every text and binary message.

mod common;

use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

fn main() {
    common::serve("websocket-echo", |mut req| async move {
        let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
            return common::text(400, "websocket upgrade required\n");
        };
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(up) = upgrade.await else { return };
            let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(up),
                Role::Server,
                None,
            )
            .await;
            while let Some(Ok(msg)) = ws.next().await {
                let echo = matches!(msg, Message::Text(_) | Message::Binary(_));
                if matches!(msg, Message::Close(_)) || (echo && ws.send(msg).await.is_err()) {
                    return;
                }
            }
        });
        let mut r = common::text(101, "");
        let h = r.headers_mut();
        h.insert(
            http::header::UPGRADE,
            http::HeaderValue::from_static("websocket"),
        );
        h.insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("upgrade"),
        );
        if let Ok(v) = http::HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
            h.insert("sec-websocket-accept", v);
        }
        r
    });
}
