//! The local API obeys only its user: a real `ebb local up`, probed over TLS as a web page, a
//! DNS rebinding page and a stranger without the token would probe it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on broken fixtures

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use common::Ebb;

/// Send `request` (a whole HTTP/1.1 request: line, fields, body) to the API over TLS with
/// curl, as a stranger would; (status, body). The API's certificate is not what these cases
/// are about, so it is not checked here (`-k`); kubectl and the CLI check it.
fn raw(ebb: &Ebb, request: &str) -> (u16, String) {
    let (head, body) = request.split_once("\r\n\r\n").unwrap_or((request, ""));
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let mut parts = first.split(' ');
    let (method, path) = (parts.next().unwrap_or("GET"), parts.next().unwrap_or("/"));
    let mut cmd = Command::new("curl");
    cmd.args(["-sk", "-o", "-", "-w", "\n%{http_code}", "-X", method]);
    for field in lines.filter(|l| {
        !l.to_ascii_lowercase().starts_with("content-length")
            && !l.to_ascii_lowercase().starts_with("connection")
    }) {
        cmd.arg("-H").arg(field);
    }
    if !body.is_empty() {
        cmd.args(["--data-binary", "@-"]);
    }
    cmd.arg(format!("https://{}{path}", ebb.api));
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl (install it: apt-get install curl)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

const SERVICE: &str = r#"{"apiVersion":"serving.knative.dev/v1","kind":"Service","metadata":{"name":"pwned"},"spec":{"template":{"spec":{"containers":[{"image":"x","command":["true"]}]}}}}"#;

#[test]
fn the_local_api_refuses_strangers_and_the_cli_still_works() {
    let mut ebb = Ebb::start();
    let api = ebb.api;
    let token = ebb.token();
    let post = |host: &str, extra: &str| {
        format!(
            "POST /apis/serving.knative.dev/v1/namespaces/default/services HTTP/1.1\r\nHost: {host}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{SERVICE}",
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
            format!("GET /ebb/v1/status HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\n\r\n"),
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
    assert_eq!(got, 201, "{body}");
    // The token is in files only the user can read.
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&ebb.state.join("ebb.json")), 0o600);
    assert_eq!(mode(&ebb.state.join("kubeconfig")), 0o600);
    assert_eq!(mode(&ebb.state), 0o700);
    // The CLI carries it.
    assert!(ebb.ok(&["get", "ksvc"]).contains("pwned"));
    ebb.ok(&["delete", "ksvc", "pwned"]);
    ebb.stop();
}
