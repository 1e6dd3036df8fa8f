//! Differential fuzzing against hyper, the HTTP/1 implementation the queue-proxy and most Rust
//! servers use: generated (and mutated) request heads, chunked bodies and responses go through
//! this crate and through hyper, and wherever this crate accepts a message, hyper must take the
//! same message from the same bytes — the same body, ending at the same byte, with the next
//! request after it. (Where this crate refuses what hyper takes, it is stricter on purpose.)
//!
//! Bounded: `PROPTEST_CASES` cases per property (1,000 by default, about a second each; 20,000 ran clean when this was written). The
//! seed corpus below (`SEEDS`) is replayed every run; proptest keeps shrunk failures in
//! `tests/differential.proptest-regressions`, committed with the code.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on broken fixtures

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use http1::head::{BodyFraming, parse};
use http1::relay::Body;
use http1::response::{Client, Framing, Transform, parse_response};

const NEXT: &[u8] = b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// What hyper's server made of `bytes`: one entry per request it handed to the service,
/// `(path, Some(body))`, or `(path, None)` when reading the body failed.
async fn hyper_server(bytes: Vec<u8>) -> Vec<(String, Option<Vec<u8>>)> {
    let (client, server) = tokio::io::duplex(1 << 20);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let s = s.clone();
        async move {
            let path = req.uri().path().to_string();
            let body = req
                .into_body()
                .collect()
                .await
                .ok()
                .map(|b| b.to_bytes().to_vec());
            s.lock().unwrap().push((path, body));
            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .half_close(true)
        .serve_connection(TokioIo::new(server), svc);
    let (mut r, mut w) = tokio::io::split(client);
    let feed = async move {
        let _ = w.write_all(&bytes).await;
        let _ = w.shutdown().await;
        let mut sink = Vec::new();
        let _ = r.read_to_end(&mut sink).await;
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        tokio::join!(conn, feed)
    })
    .await;
    seen.lock().unwrap().clone()
}

/// What this crate makes of `bytes` as one request and what follows it: `Some((body, rest))`
/// when it accepts the request and its whole body is in `bytes` (`rest` is empty when the
/// client's connection ends with this request).
fn ours(bytes: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let head = parse(bytes).ok()??;
    let after = &bytes[head.len..];
    let keep = head.keep_alive;
    let (body, rest) = match head.body {
        BodyFraming::None => Some((Vec::new(), after.to_vec())),
        BodyFraming::Length(n) => {
            let n = usize::try_from(n).ok()?;
            (after.len() >= n).then(|| (after[..n].to_vec(), after[n..].to_vec()))
        }
        BodyFraming::Chunked => {
            let mut data = Vec::new();
            let mut d = http1::chunked::Decoder::new();
            let (used, done) = d.decode(after, &mut data).ok()?;
            done.then(|| (data, after[used..].to_vec()))
        }
    }?;
    Some((body, if keep { rest } else { Vec::new() }))
}

/// The property: if this crate accepts the first request, hyper takes the same body and then
/// the `/next` request that follows it.
fn agree(bytes: Vec<u8>) -> Result<(), TestCaseError> {
    let Some((body, rest)) = ours(&bytes) else {
        return Ok(());
    };
    let seen = runtime().block_on(hyper_server(bytes.clone()));
    let text = String::from_utf8_lossy(&bytes).into_owned();
    prop_assert!(
        !seen.is_empty(),
        "hyper refused what this crate took: {text:?}"
    );
    prop_assert_eq!(
        seen[0].1.as_deref(),
        Some(body.as_slice()),
        "body of {:?}",
        text
    );
    if rest == NEXT {
        prop_assert_eq!(
            seen.len(),
            2,
            "requests hyper saw in {:?}: {:?}",
            text,
            seen
        );
        prop_assert_eq!(seen[1].0.as_str(), "/next");
    }
    Ok(())
}

/// A chunked body: chunks with sizes in varied spellings, extensions, trailers.
fn chunked_body() -> impl Strategy<Value = Vec<u8>> {
    let chunk = (
        prop::collection::vec(any::<u8>(), 1..40),
        0usize..3,
        prop::bool::ANY,
        prop::option::of("[a-z]{1,5}(=[a-z0-9]{0,4})?"),
    );
    (
        prop::collection::vec(chunk, 0..4),
        prop::collection::vec("[A-Za-z][A-Za-z0-9-]{0,6}: [ -~]{0,8}", 0..3),
        prop::option::of("[a-z]{1,4}"),
    )
        .prop_map(|(chunks, trailers, last_ext)| {
            let mut out = Vec::new();
            for (data, zeros, upper, ext) in chunks {
                let size = format!("{}{:x}", "0".repeat(zeros), data.len());
                let size = if upper { size.to_uppercase() } else { size };
                out.extend_from_slice(size.as_bytes());
                if let Some(e) = ext {
                    out.extend_from_slice(format!(";{e}").as_bytes());
                }
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(&data);
                out.extend_from_slice(b"\r\n");
            }
            out.push(b'0');
            if let Some(e) = last_ext {
                out.extend_from_slice(format!(";{e}").as_bytes());
            }
            out.extend_from_slice(b"\r\n");
            for t in trailers {
                out.extend_from_slice(t.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"\r\n");
            out
        })
}

/// Bytes that matter to framing, for mutations.
const TRICKY: &[u8] = b"\r\n \t;:-+x0fF\x009";

/// Up to three insertions, deletions or replacements of tricky bytes.
fn mutate(bytes: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = bytes.len().max(1);
    prop::collection::vec((0..3u8, 0..len, 0..TRICKY.len()), 0..4).prop_map(move |edits| {
        let mut b = bytes.clone();
        for (kind, at, t) in edits {
            let at = at.min(b.len());
            match kind {
                0 => b.insert(at, TRICKY[t]),
                1 if at < b.len() => {
                    b.remove(at);
                }
                _ if at < b.len() => b[at] = TRICKY[t],
                _ => {}
            }
        }
        b
    })
}

/// Field lines a head may carry: framing, persistence and routing fields with values from
/// the usual and the unusual.
fn field() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("Host: a".to_string()),
        Just("Host: b".to_string()),
        "Content-Length: (0|3|5|03|\\+3|-1|3, 3|3,4| 5 |1a|99999999999999999999)",
        "Transfer-Encoding: (chunked|Chunked|xchunked|chunked, identity|gzip, chunked| chunked|chunked ,)",
        "Transfer-Encoding : chunked",
        "Connection: (close|keep-alive|Upgrade|content-length|x-a)",
        "Expect: (100-continue|100-Continue|nope)",
        "Upgrade: (websocket|h2c)",
        "X-A: [ -~]{0,6}",
    ]
}

fn request() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![Just("GET"), Just("POST"), Just("PUT")],
        prop_oneof![Just("/"), Just("http://a/x"), Just("*")],
        prop_oneof![Just("HTTP/1.1"), Just("HTTP/1.0")],
        prop::collection::vec(field(), 0..6),
        prop_oneof![
            Just(b"abc".to_vec()),
            Just(b"abcde".to_vec()),
            Just(b"3\r\nabc\r\n0\r\n\r\n".to_vec()),
            Just(Vec::new()),
        ],
    )
        .prop_map(|(method, target, version, fields, body)| {
            let mut out = format!("{method} {target} {version}\r\n").into_bytes();
            for f in fields {
                out.extend_from_slice(f.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(&body);
            out.extend_from_slice(NEXT);
            out
        })
}

const CHUNKED_HEAD: &[u8] = b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";

/// Known-tricky inputs, replayed every run.
const SEEDS: &[&[u8]] = &[
    b"5\r\nhello\r\n0\r\n\r\n",
    b"5;a=b\r\nhello\r\n0\r\nX: y\r\n\r\n",
    b"0000000005\r\nhello\r\n0\r\n\r\n",
    b"10000000000000001\r\nx\r\n0\r\n\r\n",
    b"FFFFFFFFFFFFFFFF\r\nx\r\n0\r\n\r\n",
    b"-1\r\nx\r\n0\r\n\r\n",
    b"0x1\r\nx\r\n0\r\n\r\n",
    b"1\nx\r\n0\r\n\r\n",
    b"1\r\nxx\r\n0\r\n\r\n",
    b"1 \r\nx\r\n0\r\n\r\n",
    b"1\r\nx\r\n0\r\n \r\n\r\n",
    b"1\r\nx\r\n0\n\r\n",
];

#[test]
fn seed_corpus_agrees_with_hyper() {
    for seed in SEEDS {
        let mut bytes = CHUNKED_HEAD.to_vec();
        bytes.extend_from_slice(seed);
        bytes.extend_from_slice(NEXT);
        agree(bytes).unwrap_or_else(|e| panic!("{e}"));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// Chunked bodies, valid and mutated: where the decoder accepts, hyper reads the same
    /// data and finds the next request at the same byte.
    #[test]
    fn chunked_decoder_agrees_with_hyper(body in chunked_body().prop_flat_map(mutate)) {
        let mut bytes = CHUNKED_HEAD.to_vec();
        bytes.extend_from_slice(&body);
        bytes.extend_from_slice(NEXT);
        agree(bytes)?;
    }

    /// Heads with framing fields valid and not: where the head reader accepts, hyper takes
    /// the same body and then the next request.
    #[test]
    fn head_reader_agrees_with_hyper(req in request().prop_flat_map(mutate)) {
        agree(req)?;
    }

    /// Responses relayed to a client (in pieces, as reads deliver them): what the client
    /// reads, as hyper's client parses it, is the instance's body, and nothing of what came
    /// after the response.
    #[test]
    fn relayed_responses_read_back_the_same(
        data in prop::collection::vec(any::<u8>(), 0..200),
        framing in 0..3u8,
        http10 in prop::bool::ANY,
        cuts in prop::collection::vec(1usize..64, 1..8),
    ) {
        let mut wire = Vec::new();
        match framing {
            0 => {
                wire.extend_from_slice(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", data.len()).as_bytes());
                wire.extend_from_slice(&data);
                wire.extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\nafter");
            }
            1 => {
                wire.extend_from_slice(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
                for piece in data.chunks(17) {
                    http1::chunked::encode(&mut wire, piece);
                }
                wire.extend_from_slice(b"0\r\n\r\nHTTP/1.1 200 OK\r\n\r\nafter");
            }
            _ => {
                wire.extend_from_slice(b"HTTP/1.0 200 OK\r\n\r\n");
                wire.extend_from_slice(&data);
            }
        }
        let client = Client { head_request: false, close: http10, http10 };
        let mut out = Vec::new();
        let r = parse_response(&wire, client, Some(&mut out)).unwrap().unwrap();
        let mut body = Body::new(r.framing);
        let mut rest = &wire[r.len..];
        let mut cuts = cuts.into_iter().cycle();
        let mut ended = body.is_none();
        while !ended && !rest.is_empty() {
            let n = cuts.next().unwrap_or(1).min(rest.len());
            let b = body.as_mut().unwrap();
            let (take, done) = b.relay(&rest[..n], r.transform, &mut out).unwrap();
            prop_assert!(take == n || done);
            rest = &rest[n..];
            ended = done;
        }
        if r.transform == Transform::Rechunk {
            out.extend_from_slice(http1::chunked::LAST_CHUNK);
        }
        prop_assert!(ended || r.framing == Framing::Close);
        let got = runtime().block_on(hyper_client(out.clone()));
        prop_assert_eq!(got.as_deref(), Some(data.as_slice()), "relayed {:?}", String::from_utf8_lossy(&out));
    }
}

/// The body hyper's client reads from `response` (then the connection closes).
async fn hyper_client(response: Vec<u8>) -> Option<Vec<u8>> {
    let (client, mut server) = tokio::io::duplex(1 << 20);
    let (mut send, conn) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(client))
            .await
            .ok()?;
    tokio::spawn(conn);
    let serve = async move {
        let mut req = vec![0u8; 4096];
        let _ = server.read(&mut req).await;
        let _ = server.write_all(&response).await;
        let _ = server.shutdown().await;
        // Keep the server half open until the client is done.
        let mut sink = Vec::new();
        let _ = server.read_to_end(&mut sink).await;
    };
    tokio::spawn(serve);
    let req = http::Request::get("/")
        .header("host", "a")
        .body(Full::new(Bytes::new()))
        .ok()?;
    let resp = send.send_request(req).await.ok()?;
    resp.into_body()
        .collect()
        .await
        .ok()
        .map(|b| b.to_bytes().to_vec())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(1000)
}
