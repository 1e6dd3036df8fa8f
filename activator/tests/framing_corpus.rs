//! The HTTP/1 framing corpus: requests an attacker or a careless client sends, as raw bytes,
//! through the gateway, through the queue-proxy, and through both, to a backend that records
//! every byte it receives and the requests it takes them for. The test fails on any request
//! reaching the backend that the client did not send as one (request smuggling), on a
//! request left unanswered on a connection that stays open, and, for the gateway, on any
//! answer other than the one the rule calls for.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on broken fixtures

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use activator::gateway::{Gateway, serve};
use activator::revisions::Revisions;
use activator::routes::{Listener, RoutingTable};
use activator::throttler::Limits;
use testkit::raw::{Recording, closed, read_answers, recording_backend};
use tokio::io::AsyncWriteExt;

const HOST: &str = "shop.default.example.com";

fn route() -> serving_api::Route {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Route",
        "metadata": {"name": "shop", "namespace": "default"},
        "spec": {},
        "status": {
            "url": format!("http://{HOST}"),
            "traffic": [{"revisionName": "shop-00001", "percent": 100}]
        }
    }))
    .unwrap()
}

/// A gateway routing `HOST` to `instance`.
async fn gateway(instance: SocketAddr) -> SocketAddr {
    let (tx, routes) = tokio::sync::watch::channel(Arc::new(RoutingTable::build([&route()])));
    std::mem::forget(tx);
    let revisions = Arc::new(Revisions::new(Limits::default()));
    revisions.set_endpoints("default", "shop-00001", &[instance]);
    let gw = Gateway {
        routes,
        revisions,
        listener: Listener::External,
        metrics: Arc::default(),
        traces: None,
        poke: Arc::new(|_, _, _| {}),
    };
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (stop, rx) = tokio::sync::watch::channel(false);
    std::mem::forget(stop);
    tokio::spawn(serve(l, gw, rx));
    addr
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Gateway,
    QueueProxy,
    /// Gateway → queue-proxy → backend, as every request travels.
    Both,
}

/// The address a client talks to for `path`, and what the backend behind it records.
async fn front(path: Path) -> (SocketAddr, Recording) {
    let (backend, rec) = recording_backend().await;
    let addr = match path {
        Path::Gateway => gateway(backend).await,
        Path::QueueProxy => {
            testkit::queue_proxy(backend, "shop-00001", &[])
                .await
                .serving
        }
        Path::Both => {
            let qp = testkit::queue_proxy(backend, "shop-00001", &[])
                .await
                .serving;
            gateway(qp).await
        }
    };
    (addr, rec)
}

struct Case {
    name: &'static str,
    /// What the client writes, in one write.
    send: String,
    /// The request lines the client sent as requests: the only ones the backend may take.
    legit: &'static [&'static str],
    /// Through the gateway: the final statuses the client gets, in order, and whether the
    /// connection is closed after them (else it must still carry a request).
    statuses: &'static [u16],
    closes: bool,
    /// Where the queue-proxy alone may differ: hyper takes `Transfer-Encoding` over a
    /// `Content-Length` beside it and closes the connection after the answer (RFC 9112 §6.3
    /// allows that), where the gateway refuses.
    qp_legit: Option<&'static [&'static str]>,
}

fn h(extra: &str) -> String {
    format!("Host: {HOST}\r\n{extra}")
}

fn cases() -> Vec<Case> {
    let smuggled = format!("GET /smuggled HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    let chunked = |body: &str| {
        format!(
            "POST /c HTTP/1.1\r\n{}\r\n{body}{smuggled}",
            h("Transfer-Encoding: chunked\r\n")
        )
    };
    vec![
        Case {
            name: "websocket upgrade refused by the instance, a request behind it",
            send: format!(
                "GET /ws HTTP/1.1\r\n{}\r\n{smuggled}",
                h(
                    "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                )
            ),
            legit: &["GET /ws"],
            statuses: &[426],
            closes: true,
            qp_legit: None,
        },
        Case {
            name: "h2c upgrade is not honoured: both requests answered as HTTP/1.1",
            send: format!(
                "GET /h2c HTTP/1.1\r\n{}\r\nGET /next HTTP/1.1\r\n{}\r\n",
                h(
                    "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
                ),
                h("")
            ),
            legit: &["GET /h2c", "GET /next"],
            statuses: &[200, 200],
            closes: false,
            qp_legit: None,
        },
        Case {
            name: "two Host fields",
            send: format!("GET / HTTP/1.1\r\n{}\r\n", h("Host: other.example.com\r\n")),
            legit: &[],
            statuses: &[400],
            closes: true,
            qp_legit: None,
        },
        Case {
            name: "HTTP/1.1 without Host",
            send: "GET / HTTP/1.1\r\nUser-Agent: x\r\n\r\n".into(),
            legit: &[],
            statuses: &[400],
            closes: true,
            qp_legit: None,
        },
        Case {
            name: "absolute-form target wins over Host",
            send: format!(
                "GET http://{HOST}/abs?q HTTP/1.1\r\nHost: elsewhere.example.com\r\n\r\n"
            ),
            legit: &["GET /abs?q"],
            statuses: &[200],
            closes: false,
            qp_legit: None,
        },
        Case {
            name: "Content-Length and Transfer-Encoding together",
            send: format!(
                "POST / HTTP/1.1\r\n{}\r\n0\r\n\r\n{smuggled}",
                h("Content-Length: 40\r\nTransfer-Encoding: chunked\r\n")
            ),
            legit: &[],
            statuses: &[400],
            closes: true,
            qp_legit: Some(&["POST /"]),
        },
        Case {
            name: "obfuscated Transfer-Encoding (xchunked)",
            send: format!(
                "POST / HTTP/1.1\r\n{}\r\n0\r\n\r\n{smuggled}",
                h("Transfer-Encoding: xchunked\r\n")
            ),
            legit: &[],
            statuses: &[400],
            closes: true,
            qp_legit: None,
        },
        Case {
            name: "Transfer-Encoding with a space before the colon",
            send: format!(
                "POST / HTTP/1.1\r\n{}Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n{smuggled}",
                h("")
            ),
            legit: &[],
            statuses: &[400],
            closes: true,
            qp_legit: None,
        },
        Case {
            name: "chunked then identity",
            send: format!(
                "POST / HTTP/1.1\r\n{}\r\n0\r\n\r\n{smuggled}",
                h("Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n")
            ),
            legit: &[],
            statuses: &[400],
            closes: true,
            qp_legit: None,
        },
        Case {
            name: "two different Content-Lengths",
            send: format!(
                "POST / HTTP/1.1\r\n{}\r\nabcdef",
                h("Content-Length: 3\r\nContent-Length: 6\r\n")
            ),
            legit: &[],
            statuses: &[400],
            closes: true,
            qp_legit: None,
        },
        Case {
            name: "signed Content-Length",
            send: format!("POST / HTTP/1.1\r\n{}\r\nabc", h("Content-Length: +3\r\n")),
            legit: &[],
            statuses: &[400],
            closes: true,
            qp_legit: None,
        },
        Case {
            name: "NUL in a field value",
            send: format!("GET / HTTP/1.1\r\n{}\r\n", h("X-A: a\0b\r\n")),
            legit: &[],
            statuses: &[400],
            closes: true,
            qp_legit: None,
        },
        Case {
            name: "bare CR in a field value",
            send: format!("GET / HTTP/1.1\r\n{}\r\n", h("X-A: a\rb\r\n")),
            legit: &[],
            statuses: &[400],
            closes: true,
            qp_legit: None,
        },
        Case {
            name: "obs-fold",
            send: format!("GET / HTTP/1.1\r\n{}\r\n", h("X-A: a\r\n b\r\n")),
            legit: &[],
            statuses: &[400],
            closes: true,
            qp_legit: None,
        },
        Case {
            name: "chunk size overflowing 64 bits",
            send: chunked("1FFFFFFFFFFFFFFFF\r\nx\r\n0\r\n\r\n"),
            legit: &[],
            statuses: &[400],
            closes: true,
            qp_legit: None,
        },
        Case {
            name: "chunk size that wraps to 1 in 64 bits",
            send: chunked("10000000000000001\r\nx\r\n0\r\n\r\n"),
            legit: &[],
            statuses: &[400],
            closes: true,
            qp_legit: None,
        },
        Case {
            name: "negative chunk size",
            send: chunked("-1\r\nx\r\n0\r\n\r\n"),
            legit: &[],
            statuses: &[400],
            closes: true,
            qp_legit: None,
        },
        Case {
            name: "non-hex chunk size",
            send: chunked("0x1\r\nx\r\n0\r\n\r\n"),
            legit: &[],
            statuses: &[400],
            closes: true,
            qp_legit: None,
        },
        Case {
            name: "bare LF after a chunk size",
            send: chunked("1\nx\r\n0\r\n\r\n"),
            legit: &[],
            statuses: &[400],
            closes: true,
            qp_legit: None,
        },
        Case {
            name: "chunk data not followed by CRLF",
            send: chunked("1\r\nxx\r\n0\r\n\r\n"),
            legit: &[],
            statuses: &[400],
            closes: true,
            qp_legit: None,
        },
        Case {
            name: "a valid chunked body with extension and trailer, a request behind it",
            send: chunked("5;ext=\"v\"\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n"),
            legit: &["POST /c", "GET /smuggled"],
            statuses: &[200, 200],
            closes: false,
            qp_legit: None,
        },
        Case {
            name: "a request pipelined behind an HTTP/1.0 request",
            send: format!("GET /old HTTP/1.0\r\n{}\r\n{smuggled}", h("")),
            legit: &["GET /old", "GET /smuggled"],
            statuses: &[200],
            closes: true,
            qp_legit: None,
        },
        Case {
            name: "a request inside a sized body is a body",
            send: format!(
                "POST /sized HTTP/1.1\r\n{}\r\n{smuggled}",
                h(&format!("Content-Length: {}\r\n", smuggled.len()))
            ),
            legit: &["POST /sized"],
            statuses: &[200],
            closes: false,
            qp_legit: None,
        },
        Case {
            name: "CONNECT",
            send: format!("CONNECT {HOST}:443 HTTP/1.1\r\n{}\r\n", h("")),
            legit: &[],
            statuses: &[405],
            closes: true,
            qp_legit: None,
        },
        Case {
            name: "an Expect other than 100-continue",
            send: format!(
                "POST / HTTP/1.1\r\n{}\r\nabc",
                h("Expect: 200-ok\r\nContent-Length: 3\r\n")
            ),
            legit: &[],
            statuses: &[417],
            closes: true,
            qp_legit: None,
        },
    ]
}

async fn run(path: Path, case: &Case) -> Vec<String> {
    let mut failures = Vec::new();
    let (addr, rec) = front(path).await;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(case.send.as_bytes()).await.unwrap();
    let want = case.statuses.len().max(1);
    let (answers, ended) = read_answers(&mut s, want, Duration::from_secs(3)).await;
    let statuses: Vec<u16> = answers
        .iter()
        .map(|a| a.status)
        .filter(|s| *s >= 200)
        .collect();
    // Let anything the front forwarded late reach the backend.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let seen: Vec<String> = rec
        .lock()
        .unwrap()
        .requests
        .iter()
        .map(|r| r.line.clone())
        .collect();
    let legit = match (path, case.qp_legit) {
        (Path::QueueProxy, Some(l)) => l,
        _ => case.legit,
    };
    for line in &seen {
        if !legit.contains(&line.as_str()) {
            failures.push(format!(
                "{path:?} / {}: the backend took {line:?}, which the client did not send as a request (saw {seen:?})",
                case.name
            ));
        }
    }
    let is_closed = ended || closed(&mut s, Duration::from_millis(300)).await;
    if path != Path::QueueProxy {
        if statuses != case.statuses {
            failures.push(format!(
                "{path:?} / {}: statuses {statuses:?}, want {:?}",
                case.name, case.statuses
            ));
        }
        if is_closed != case.closes {
            failures.push(format!(
                "{path:?} / {}: connection closed: {is_closed}, want {}",
                case.name, case.closes
            ));
        }
        if case.closes && answers.last().is_some_and(|a| !a.closes()) {
            failures.push(format!(
                "{path:?} / {}: the last answer before the close does not say Connection: close",
                case.name
            ));
        }
    } else if !is_closed && statuses.len() < case.legit.len().max(1) {
        // The queue-proxy may answer differently (it is hyper), but a request it leaves
        // unanswered must end the connection.
        failures.push(format!(
            "{path:?} / {}: {} answers on a connection still open",
            case.name,
            statuses.len()
        ));
    }
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_reaches_an_instance_that_the_client_did_not_send_as_one() {
    let mut failures = Vec::new();
    for case in cases() {
        for path in [Path::Gateway, Path::QueueProxy, Path::Both] {
            failures.extend(run(path, &case).await);
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// Chunked bodies reach the instance byte for byte: extensions and trailers included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_bodies_pass_byte_for_byte() {
    let body = "5;ext=\"v\"\r\nhello\r\n3\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n";
    let (addr, rec) = front(Path::Gateway).await;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let send = format!(
        "POST /c HTTP/1.1\r\n{}\r\n{body}",
        h("Transfer-Encoding: chunked\r\n")
    );
    s.write_all(send.as_bytes()).await.unwrap();
    let (answers, _) = read_answers(&mut s, 1, Duration::from_secs(3)).await;
    assert_eq!(answers.first().map(|a| a.status), Some(200));
    let bytes = rec.lock().unwrap().bytes.concat();
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.contains("\r\ntransfer-encoding: chunked\r\n"),
        "{text}"
    );
    assert!(text.ends_with(&format!("\r\n\r\n{body}")), "{text}");
}

/// `Expect: 100-continue`: the head goes ahead, the instance's 100 comes back, and only then
/// does the client send its body, which arrives whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_passes_the_instances_100() {
    for path in [Path::Gateway, Path::Both] {
        let (addr, rec) = front(path).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "PUT /up HTTP/1.1\r\n{}\r\n",
            h("Expect: 100-continue\r\nContent-Length: 5\r\n")
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let (answers, _) = read_answers(&mut s, 1, Duration::from_millis(500)).await;
        assert_eq!(
            answers.iter().map(|a| a.status).collect::<Vec<_>>(),
            [100],
            "{path:?}: the 100 before the body"
        );
        s.write_all(b"hello").await.unwrap();
        let (answers, _) = read_answers(&mut s, 1, Duration::from_secs(3)).await;
        assert_eq!(answers.last().map(|a| a.status), Some(200), "{path:?}");
        let seen = rec.lock().unwrap().requests.clone();
        assert_eq!(seen.len(), 1, "{path:?}: {seen:?}");
        assert_eq!(seen[0].body, b"hello", "{path:?}");
    }
}

/// A chunked body that breaks its framing after the first 64 KiB (so it is already streaming
/// to the instance): nothing after the error is forwarded, the instance's connection is
/// closed, and the client gets 400 and a closed connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_framing_error_mid_stream_forwards_nothing_after_it() {
    let (addr, rec) = front(Path::Gateway).await;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let big = "x".repeat(100 * 1024);
    let head = format!(
        "POST /big HTTP/1.1\r\n{}\r\n",
        h("Transfer-Encoding: chunked\r\n")
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(format!("{:x}\r\n{big}\r\n", big.len()).as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let smuggle = format!("1\nx\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    s.write_all(smuggle.as_bytes()).await.unwrap();
    let (answers, ended) = read_answers(&mut s, 1, Duration::from_secs(3)).await;
    assert_eq!(answers.last().map(|a| a.status), Some(400));
    assert!(ended || closed(&mut s, Duration::from_secs(1)).await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let rec = rec.lock().unwrap();
    assert!(
        rec.requests.is_empty(),
        "the instance took {:?}",
        rec.requests
    );
    let bytes = rec.bytes.concat();
    assert!(
        bytes.len() > 64 * 1024,
        "the body was streaming ({} bytes)",
        bytes.len()
    );
    assert!(
        !testkit::contains(&bytes, b"smuggled"),
        "bytes after the error were forwarded"
    );
}
