//! Who may drive the local API. Loopback is not a trust boundary: any web page can make the
//! browser send a cross-origin POST with a `text/plain` body (no preflight) to a loopback port,
//! and DNS rebinding lets a page on `evil.example` reach `127.0.0.1` under its own name. A
//! request that creates a Service runs its command on this machine, so every request must:
//! - carry the token `ebb local up` generated (`Authorization: Bearer …`; it is in files only
//!   the user can read: `STATE/ebb.json` and `STATE/kubeconfig`), else 401;
//! - name a loopback host in `Host` (`localhost`, `*.localhost`, `127.0.0.0/8`, `[::1]`), else
//!   403: a rebinding page's requests carry its own host name;
//! - carry no `Origin`, or this API's own, else 403: browsers always send `Origin` on
//!   cross-origin requests;
//! - send a body only as JSON (or YAML, a Kubernetes patch type, or Kubernetes protobuf),
//!   else 415: the bodies a page can send without a preflight are form and plain-text types.

use std::io::Read;
use std::net::SocketAddr;

use http::{HeaderMap, Method, StatusCode};

/// Why a request is refused: the status and a reason naming the header and the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied(pub StatusCode, pub String);

/// A new secret token: 32 bytes from the kernel's random source, in hex.
pub fn new_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Is `host` (a `Host` value, with or without port) a loopback name or address?
pub fn loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host, |(name, _)| name)
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Body media types the API takes.
const BODY_TYPES: [&str; 8] = [
    "application/json",
    "application/vnd.kubernetes.protobuf",
    "application/yaml",
    "application/merge-patch+json",
    "application/json-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
    "application/apply-patch+cbor",
];

/// Constant-time comparison: the time a wrong token takes does not tell how much of it was
/// right.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Check a request to the API at `api` against the rules above.
pub fn check(
    method: &Method,
    headers: &HeaderMap,
    has_body: bool,
    api: SocketAddr,
    token: &str,
) -> Result<(), Denied> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let host = text("host").unwrap_or("");
    if !loopback_host(host) {
        return Err(Denied(
            StatusCode::FORBIDDEN,
            format!(
                "Host: {host:?} is not a loopback name or address (the local API answers only to localhost, 127.0.0.0/8 and [::1])"
            ),
        ));
    }
    if let Some(origin) = headers.get("origin") {
        let ours = [
            format!("https://{api}"),
            format!("https://localhost:{}", api.port()),
        ];
        let origin = origin.to_str().unwrap_or("");
        if !ours.iter().any(|o| o == origin) {
            return Err(Denied(
                StatusCode::FORBIDDEN,
                format!(
                    "Origin: {origin:?} is not this API's own (cross-origin requests are refused)"
                ),
            ));
        }
    }
    let presented = text("authorization")
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match presented {
        None => {
            return Err(Denied(
                StatusCode::UNAUTHORIZED,
                "Authorization: a bearer token is required (use the ebb CLI, or the kubeconfig in the state directory)".into(),
            ));
        }
        Some(t) if !same(t.as_bytes(), token.as_bytes()) => {
            return Err(Denied(
                StatusCode::UNAUTHORIZED,
                "Authorization: the token is not this Ebb's (it changes at every `ebb local up`)"
                    .into(),
            ));
        }
        Some(_) => {}
    }
    let sends_body = has_body || matches!(*method, Method::POST | Method::PUT | Method::PATCH);
    if sends_body {
        let media = text("content-type")
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if !BODY_TYPES.contains(&media.as_str()) {
            return Err(Denied(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Type: {media:?} is not accepted (send application/json or YAML)"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "s3cret";

    fn req(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap_or(http::header::HOST),
                http::HeaderValue::from_str(v).unwrap_or(http::HeaderValue::from_static("")),
            );
        }
        h
    }

    fn api() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 7000))
    }

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "localhost:7000",
            "api.localhost",
            "127.0.0.1:7000",
            "127.9.9.9",
            "[::1]:7000",
            "LOCALHOST.",
        ] {
            assert!(loopback_host(h), "{h}");
        }
        for h in [
            "",
            "evil.example",
            "evil.example:7000",
            "localhost.evil.example",
            "10.0.0.1",
            "[::2]:1",
            "0.0.0.0",
        ] {
            assert!(!loopback_host(h), "{h}");
        }
    }

    #[test]
    fn each_rule_refuses_with_its_status() {
        let good = [
            ("host", "127.0.0.1:7000"),
            ("authorization", "Bearer s3cret"),
        ];
        assert_eq!(
            check(&Method::GET, &req(&good), false, api(), TOKEN),
            Ok(())
        );
        type Case<'a> = (&'a [(&'a str, &'a str)], Method, StatusCode, &'a str);
        let cases: [Case<'_>; 7] = [
            (
                &[("host", "127.0.0.1:7000")],
                Method::GET,
                StatusCode::UNAUTHORIZED,
                "Authorization",
            ),
            (
                &[("host", "127.0.0.1:7000"), ("authorization", "Bearer nope")],
                Method::GET,
                StatusCode::UNAUTHORIZED,
                "not this Ebb's",
            ),
            (
                &[
                    ("host", "rebind.example:7000"),
                    ("authorization", "Bearer s3cret"),
                ],
                Method::GET,
                StatusCode::FORBIDDEN,
                "Host",
            ),
            (
                &[("authorization", "Bearer s3cret")],
                Method::GET,
                StatusCode::FORBIDDEN,
                "Host",
            ),
            (
                &[
                    ("host", "localhost:7000"),
                    ("origin", "http://evil.example"),
                    ("authorization", "Bearer s3cret"),
                ],
                Method::GET,
                StatusCode::FORBIDDEN,
                "Origin",
            ),
            (
                &[
                    ("host", "localhost:7000"),
                    ("authorization", "Bearer s3cret"),
                    ("content-type", "text/plain"),
                ],
                Method::POST,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Content-Type",
            ),
            (
                &[
                    ("host", "localhost:7000"),
                    ("authorization", "Bearer s3cret"),
                ],
                Method::POST,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Content-Type",
            ),
        ];
        for (headers, method, status, rule) in cases {
            let r = check(&method, &req(headers), false, api(), TOKEN);
            assert!(
                matches!(&r, Err(Denied(s, why)) if *s == status && why.contains(rule)),
                "{headers:?}: {r:?}"
            );
        }
        let own_origin = [
            ("host", "localhost:7000"),
            ("origin", "https://127.0.0.1:7000"),
            ("authorization", "Bearer s3cret"),
            ("content-type", "application/json; charset=utf-8"),
        ];
        assert_eq!(
            check(&Method::POST, &req(&own_origin), true, api(), TOKEN),
            Ok(())
        );
    }

    #[test]
    fn tokens_are_long_and_fresh() {
        let (a, b) = (
            new_token().unwrap_or_default(),
            new_token().unwrap_or_default(),
        );
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }
}
