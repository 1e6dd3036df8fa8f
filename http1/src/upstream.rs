//! The request head as the next hop gets it: the client's bytes less the fields that describe
//! only the client's hop, plus the proxy's own (`K-Proxy-Request`, `Forwarded`,
//! `X-Forwarded-For`, `X-Forwarded-Proto`), always as HTTP/1.1 in origin form.

use std::net::{IpAddr, SocketAddr};

use crate::head::{Uninit, authority_of, origin_form, tokens};

/// Not forwarded to an instance, as pingora's default upstream request policy has it: the
/// hop-by-hop fields, and the upgrade fields (a websocket upgrade restores its own).
pub fn hop_by_hop(name: &str) -> bool {
    wire::HOP_BY_HOP
        .iter()
        .chain(&["upgrade", "http2-settings"])
        .any(|h| name.eq_ignore_ascii_case(h))
}

/// Fields a client's `Connection` may not remove: the ones that frame and route the message.
/// (`Connection: content-length` would otherwise turn a body into a request.)
fn protected(name: &[u8]) -> bool {
    [&b"host"[..], b"content-length", b"transfer-encoding"]
        .iter()
        .any(|p| name.eq_ignore_ascii_case(p))
}

/// Fields of a client's request never forwarded as they came: those describing only this hop,
/// the internal ones a client must not set (only the routing table chooses revisions), and the
/// proxy fields this hop rewrites.
fn dropped(name: &str) -> bool {
    hop_by_hop(name)
        || [
            wire::HEADER_REVISION,
            wire::HEADER_NAMESPACE,
            "forwarded",
            "x-forwarded-for",
        ]
        .iter()
        .any(|d| name.eq_ignore_ascii_case(d))
}

/// The client in `Forwarded` and `X-Forwarded-For`, appended to what earlier proxies wrote.
pub fn forwarded_for(
    ip: IpAddr,
    prior_forwarded: Option<&str>,
    prior_xff: Option<&str>,
) -> (String, String) {
    let ours = match ip {
        IpAddr::V4(v4) => format!("for={v4};proto=http"),
        IpAddr::V6(v6) => format!("for=\"[{v6}]\";proto=http"),
    };
    let forwarded = prior_forwarded.map_or(ours.clone(), |p| format!("{p}, {ours}"));
    let xff = prior_xff.map_or(ip.to_string(), |p| format!("{p}, {ip}"));
    (forwarded, xff)
}

/// The proxy fields for one client connection, rendered when it is accepted.
#[derive(Debug, Default)]
pub struct ClientHeaders {
    ip: Option<IpAddr>,
    /// `K-Proxy-Request`, `Forwarded`, `X-Forwarded-For` and `X-Forwarded-Proto` as they read
    /// when no earlier proxy wrote any of them (nearly always).
    fresh: Vec<u8>,
}

impl ClientHeaders {
    pub fn new(client: Option<SocketAddr>) -> ClientHeaders {
        let ip = client.map(|c| c.ip());
        let mut fresh = Vec::new();
        Self::render(&mut fresh, ip, None, None, false);
        ClientHeaders { ip, fresh }
    }

    fn render(
        out: &mut Vec<u8>,
        ip: Option<IpAddr>,
        forwarded: Option<&str>,
        xff: Option<&str>,
        has_proto: bool,
    ) {
        field(out, wire::HEADER_PROXY, wire::PROXY_BY_ACTIVATOR.as_bytes());
        if let Some(ip) = ip {
            let (forwarded, xff) = forwarded_for(ip, forwarded, xff);
            field(out, "forwarded", forwarded.as_bytes());
            field(out, "x-forwarded-for", xff.as_bytes());
            if !has_proto {
                field(out, "x-forwarded-proto", b"http");
            }
        }
    }
}

/// Append one field line.
pub fn field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The values of every `name` field, joined as one list.
pub fn joined(headers: &[httparse::Header<'_>], name: &str) -> Option<String> {
    let values: Vec<&str> = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

/// A client's request head, parsed again for writing (the checks were made by
/// [`crate::head::parse`] on the same bytes).
#[derive(Debug)]
pub struct Request<'h, 'b> {
    pub method: &'b str,
    /// The target as the client sent it.
    pub target: &'b str,
    pub http10: bool,
    pub headers: &'h [httparse::Header<'b>],
}

impl<'h, 'b> Request<'h, 'b> {
    /// Parse a complete head into `headers` (need not be initialised).
    pub fn parse(head: &'b [u8], headers: &'h mut [Uninit<'b>]) -> Option<Self> {
        let mut req = httparse::Request::new(&mut []);
        match req.parse_with_uninit_headers(head, headers) {
            Ok(httparse::Status::Complete(_)) => {}
            _ => return None,
        }
        Some(Request {
            method: req.method?,
            target: req.path?,
            http10: req.version? == 0,
            headers: req.headers,
        })
    }

    /// The first value of `name`.
    pub fn value(&self, name: &str) -> Option<&'b [u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// Does a `name` field list `token`?
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        crate::head::has_token(self.headers, name, token)
    }

    /// The path (without query) for spans and logs.
    pub fn path(&self) -> &'b str {
        let p = origin_form(self.target);
        p.split('?').next().unwrap_or(p)
    }

    /// Write the head as the instance gets it: HTTP/1.1, origin form (an absolute target's
    /// authority becomes `Host`); the client's fields less those [`dropped`], those its
    /// `Connection` names (never the framing and routing ones) and those `trace` replaces;
    /// `Transfer-Encoding: chunked` again for a chunked body (the bytes go on as they came);
    /// then `extra` (already rendered fields), the proxy fields and `trace`.
    pub fn write_upstream(
        &self,
        out: &mut Vec<u8>,
        client: &ClientHeaders,
        extra: &[u8],
        trace: &http::HeaderMap,
    ) {
        let authority = authority_of(self.target);
        let absolute = authority.is_some();
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(origin_form(self.target).as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        if let Some(authority) = authority {
            field(out, "host", authority.as_bytes());
        }
        let named = |name: &str| {
            !protected(name.as_bytes())
                && tokens(self.headers, "connection")
                    .any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
        };
        let mut prior = false;
        let mut chunked = false;
        for h in self.headers {
            let name = h.name;
            chunked |= name.eq_ignore_ascii_case("transfer-encoding");
            if dropped(name)
                || named(name)
                || (absolute && name.eq_ignore_ascii_case("host"))
                || (self.http10 && name.eq_ignore_ascii_case("expect"))
                || (!trace.is_empty() && trace.contains_key(name))
            {
                prior |= name.eq_ignore_ascii_case("forwarded")
                    || name.eq_ignore_ascii_case("x-forwarded-for");
                continue;
            }
            prior |= name.eq_ignore_ascii_case("x-forwarded-proto");
            field(out, name, h.value);
        }
        if chunked {
            field(out, "transfer-encoding", b"chunked");
        }
        out.extend_from_slice(extra);
        if prior {
            ClientHeaders::render(
                out,
                client.ip,
                joined(self.headers, "forwarded").as_deref(),
                joined(self.headers, "x-forwarded-for").as_deref(),
                self.value("x-forwarded-proto").is_some(),
            );
        } else {
            out.extend_from_slice(&client.fresh);
        }
        for (name, value) in trace {
            field(out, name.as_str(), value.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(head: &str) -> String {
        let client = ClientHeaders::new(Some(([10, 0, 0, 7], 5555).into()));
        let mut headers = [const { Uninit::uninit() }; 32];
        let req =
            Request::parse(head.as_bytes(), &mut headers).unwrap_or_else(|| panic!("{head:?}"));
        let mut out = Vec::new();
        req.write_upstream(&mut out, &client, b"", &http::HeaderMap::new());
        String::from_utf8(out).unwrap_or_default()
    }

    #[test]
    fn proxy_fields_added_and_the_clients_hop_dropped() {
        assert_eq!(
            write(
                "POST /e?x=1 HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nKnative-Serving-Revision: other\r\nContent-Length: 2\r\n\r\nhi"
            ),
            format!(
                "POST /e?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n{}: {}\r\nforwarded: for=10.0.0.7;proto=http\r\nx-forwarded-for: 10.0.0.7\r\nx-forwarded-proto: http\r\n\r\n",
                wire::HEADER_PROXY,
                wire::PROXY_BY_ACTIVATOR
            )
        );
        let out = write(
            "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-Proto: https\r\n\r\n",
        );
        assert!(
            out.contains("\r\nx-forwarded-for: 1.1.1.1, 10.0.0.7\r\n"),
            "{out}"
        );
        assert!(
            out.contains("\r\nforwarded: for=10.0.0.7;proto=http\r\n"),
            "{out}"
        );
        assert!(out.contains("X-Forwarded-Proto: https\r\n"), "{out}");
        assert!(!out.contains("x-forwarded-proto"), "{out}");
    }

    #[test]
    fn connection_names_fields_but_never_framing_ones() {
        let out = write(
            "POST / HTTP/1.1\r\nHost: a\r\nConnection: x-secret, content-length, host, transfer-encoding\r\nX-Secret: 1\r\nContent-Length: 2\r\n\r\n",
        );
        assert!(!out.contains("X-Secret"), "{out}");
        assert!(
            out.contains("Host: a\r\n") && out.contains("Content-Length: 2\r\n"),
            "{out}"
        );
    }

    #[test]
    fn absolute_targets_http10_chunked_and_upgrades() {
        let out = write("GET http://b.c:81/x?y HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(
            out.starts_with("GET /x?y HTTP/1.1\r\nhost: b.c:81\r\n"),
            "{out}"
        );
        assert!(!out.contains("Host: a"), "{out}");
        let out = write("GET http://b.c HTTP/1.0\r\nExpect: 100-continue\r\n\r\n");
        assert!(out.starts_with("GET / HTTP/1.1\r\nhost: b.c\r\n"), "{out}");
        assert!(!out.contains("Expect"), "{out}");
        let out = write(
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\nTE: trailers\r\n\r\n",
        );
        assert!(out.contains("\r\ntransfer-encoding: chunked\r\n"), "{out}");
        assert!(!out.contains("Chunked") && !out.contains("TE:"), "{out}");
        let out = write(
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AA\r\n\r\n",
        );
        assert!(!out.to_ascii_lowercase().contains("upgrade"), "{out}");
        assert!(!out.contains("HTTP2-Settings"), "{out}");
    }
}
