//! The local API obeys only its user: a real `ebb local up`, probed as a web page, a DNS
//! rebinding page and a stranger without the token would probe it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on broken fixtures

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;

use common::Ebb;

/// Send `request` (a whole HTTP/1.1 request) to the API; (status, body).
fn raw(ebb: &Ebb, request: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(ebb.api).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    let status = buf
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (
        status,
        buf.split_once("\r\n\r\n")
            .map(|x| x.1.to_string())
            .unwrap_or_default(),
    )
}

const SERVICE: &str = r#"[{"apiVersion":"serving.knative.dev/v1","kind":"Service","metadata":{"name":"pwned"},"spec":{"template":{"spec":{"containers":[{"image":"x","command":["true"]}]}}}}]"#;

#[test]
fn the_local_api_refuses_strangers_and_the_cli_still_works() {
    let mut ebb = Ebb::start();
    let api = ebb.api;
    let token = ebb.token();
    let post = |host: &str, extra: &str| {
        format!(
            "POST /v1/apply HTTP/1.1\r\nHost: {host}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{SERVICE}",
            SERVICE.len()
        )
    };
    let auth = format!("Authorization: Bearer {token}\r\n");
    for (what, request, status, rule) in [
        (
            "a web page's simple POST (text/plain, no token)",
            post(
                &api.to_string(),
                "Origin: http://evil.example\r\nContent-Type: text/plain\r\n",
            ),
            403,
            "Origin",
        ),
        (
            "no token",
            post(&api.to_string(), "Content-Type: application/json\r\n"),
            401,
            "Authorization",
        ),
        (
            "a wrong token",
            post(
                &api.to_string(),
                "Authorization: Bearer 0000\r\nContent-Type: application/json\r\n",
            ),
            401,
            "Authorization",
        ),
        (
            "DNS rebinding (a foreign Host)",
            post(
                &format!("rebound.evil.example:{}", api.port()),
                &format!("{auth}Content-Type: application/json\r\n"),
            ),
            403,
            "Host",
        ),
        (
            "the token but a plain-text body",
            post(
                &api.to_string(),
                &format!("{auth}Content-Type: text/plain\r\n"),
            ),
            415,
            "Content-Type",
        ),
        (
            "a GET without the token",
            format!("GET /v1/status HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\n\r\n"),
            401,
            "Authorization",
        ),
        (
            "metrics without the token",
            format!(
                "GET /metrics HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\n\r\n",
                api.port()
            ),
            401,
            "Authorization",
        ),
    ] {
        let (got, body) = raw(&ebb, &request);
        assert_eq!(got, status, "{what}: {body}");
        assert!(body.contains(rule), "{what}: {body}");
    }
    // Nothing was stored by any of them.
    let list = ebb.ok(&["get", "ksvc"]);
    assert!(!list.contains("pwned"), "{list}");
    // With the token, from a loopback name, as JSON: taken.
    let (got, body) = raw(
        &ebb,
        &post(
            &format!("localhost:{}", api.port()),
            &format!("{auth}Content-Type: application/json\r\n"),
        ),
    );
    assert_eq!(got, 200, "{body}");
    // The token is in files only the user can read.
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&ebb.state.join("ebb.json")), 0o600);
    assert_eq!(mode(&ebb.state), 0o700);
    // The CLI carries it.
    assert!(ebb.ok(&["get", "ksvc"]).contains("pwned"));
    ebb.ok(&["delete", "ksvc", "pwned"]);
    ebb.stop();
}
