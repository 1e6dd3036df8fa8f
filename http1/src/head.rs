//! Request heads: read, checked against RFC 9112's MUSTs, and classified for routing and
//! framing. One parse decides everything a proxy needs before it forwards a byte: the host
//! to route by, where the body ends, whether the client keeps its connection, and whether the
//! request asks for a protocol switch.

use std::ops::Range;

use crate::length::{content_length, trim_ows};
use crate::refusal::Refusal;

/// A request head larger than this is refused (431), as pingora's and nginx's large buffers.
pub const MAX_HEAD: usize = 64 * 1024;

/// Header fields in one head, at most (more: 431). Parsed into uninitialised room, so the
/// bound costs stack, not time.
pub const MAX_HEADERS: usize = 128;

/// Room for one parsed header field; need not be initialised.
pub type Uninit<'b> = std::mem::MaybeUninit<httparse::Header<'b>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// Where a request's body ends (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    Length(u64),
    Chunked,
}

/// What the request's `Upgrade` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upgrade {
    None,
    /// A websocket handshake: HTTP/1.1 `GET`, `Upgrade: websocket`, `Connection: upgrade`,
    /// no body. Bytes after its head belong to the new protocol, and only if the instance
    /// switches (101).
    Websocket,
    /// Anything else (`h2c`, a websocket upgrade with a body, ...): not honoured. The upgrade
    /// fields are dropped and the request is carried as plain HTTP/1.1, so bytes after it are
    /// the client's next request, routed like any other.
    Other,
}

/// A request head, checked and classified. Ranges point into the buffer it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The head's length (request line, fields, empty line).
    pub len: usize,
    /// A `HEAD` request: its response has no body whatever its head says. (The method itself
    /// is written from the head's bytes; keeping it out of here keeps a held request small.)
    pub head_request: bool,
    pub version: Version,
    /// The host to route by: an absolute-form target's authority, else the `Host` field
    /// (empty when an HTTP/1.0 request has none).
    pub host: Range<u32>,
    /// Was the target in absolute form (`GET http://a/b HTTP/1.1`)? Its authority then
    /// replaces `Host` on the way to the instance, which gets the origin form.
    pub absolute: bool,
    /// The `Knative-Serving-Tag` field's value.
    pub tag: Option<Range<u32>>,
    pub body: BodyFraming,
    /// Does the client keep its connection after this request (HTTP/1.1 unless `close`;
    /// HTTP/1.0 only with `keep-alive`)?
    pub keep_alive: bool,
    pub upgrade: Upgrade,
    /// `Expect: 100-continue` (HTTP/1.1): the client waits for a 100 before its body.
    pub expect_continue: bool,
}

impl RequestHead {
    pub fn host<'b>(&self, buf: &'b [u8]) -> &'b str {
        std::str::from_utf8(&buf[self.host.start as usize..self.host.end as usize]).unwrap_or("")
    }

    pub fn tag<'b>(&self, buf: &'b [u8]) -> Option<&'b str> {
        self.tag
            .clone()
            .and_then(|t| std::str::from_utf8(&buf[t.start as usize..t.end as usize]).ok())
    }
}

/// Where `part` (a slice of `whole`, a head of at most [`MAX_HEAD`] bytes) sits in it. Kept in
/// 32 bits: a request held while its revision wakes holds this.
fn range_in(whole: &[u8], part: &[u8]) -> Range<u32> {
    let start = (part.as_ptr() as usize).saturating_sub(whole.as_ptr() as usize);
    let at = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    at(start)..at(start + part.len())
}

/// The list elements of every `name` field, trimmed, empty ones skipped (RFC 9110 §5.6.1).
pub fn tokens<'a>(
    headers: &'a [httparse::Header<'a>],
    name: &'a str,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .flat_map(|h| h.value.split(|b| *b == b','))
        .map(trim_ows)
        .filter(|t| !t.is_empty())
}

/// Does a `name` field list `token`?
pub fn has_token(headers: &[httparse::Header<'_>], name: &str, token: &str) -> bool {
    tokens(headers, name).any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

/// `Host` values and absolute-form authorities: `uri-host [":" port]` (RFC 3986 reg-name,
/// IPv4 or IP-literal). No whitespace, `/`, `@`, `?`, `#` or control bytes.
fn valid_authority(a: &[u8]) -> bool {
    a.iter()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:[]%".contains(b))
}

/// Parse the head at the start of `buf`: `Ok(None)` until it is complete; a [`Refusal`]
/// naming the field and the rule when it breaks one.
pub fn parse(buf: &[u8]) -> Result<Option<RequestHead>, Refusal> {
    let mut headers = [const { Uninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD => n,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => return Ok(None),
        Ok(_) => {
            return Err(Refusal::new(431, "request head larger than 65536 bytes"));
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal::new(
                431,
                format!("more than {MAX_HEADERS} header fields"),
            ));
        }
        Err(e) => return Err(Refusal::bad_request(format!("invalid request head: {e}"))),
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(Refusal::bad_request("invalid request head"));
    };
    let version = if version == 0 {
        Version::Http10
    } else {
        Version::Http11
    };
    let method = http::Method::from_bytes(method.as_bytes())
        .map_err(|_| Refusal::bad_request("invalid method"))?;
    let headers: &[httparse::Header<'_>] = req.headers;
    let fields = headers.iter().map(|h| (h.name, h.value));
    let checked = check(&method, version, fields)?;
    let target = target.as_bytes();
    let (host, absolute) = if target.starts_with(b"/") {
        (checked.host.unwrap_or(&[]), false)
    } else if target == b"*" {
        if method != http::Method::OPTIONS {
            return Err(Refusal::bad_request(
                "request target: * is only for OPTIONS",
            ));
        }
        (checked.host.unwrap_or(&[]), false)
    } else {
        (absolute_authority(target)?, true)
    };
    let host = range_in(buf, host);
    let tag = headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(wire::HEADER_TAG))
        .map(|h| range_in(buf, trim_ows(h.value)));
    let Checked {
        body,
        keep_alive,
        upgrade,
        expect_continue,
        ..
    } = checked;
    Ok(Some(RequestHead {
        len,
        head_request: method == http::Method::HEAD,
        version,
        host,
        absolute,
        tag,
        body,
        keep_alive,
        upgrade,
        expect_continue,
    }))
}

/// What [`check`] found in a request's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked<'a> {
    /// The `Host` field's value, trimmed (absent in some HTTP/1.0 requests).
    pub host: Option<&'a [u8]>,
    pub body: BodyFraming,
    pub keep_alive: bool,
    pub upgrade: Upgrade,
    pub expect_continue: bool,
}

/// The rules a request's method, version and fields must follow, whoever parsed them (the
/// gateway's byte-level reader, or hyper in the queue-proxy): one `CONNECT` refusal (405),
/// one `Host` (RFC 9112 §3.2: exactly one in HTTP/1.1, none twice, a valid authority), one
/// framing (RFC 9112 §6: `Content-Length` by [`content_length`], never beside
/// `Transfer-Encoding`, which must be exactly `chunked` and only in HTTP/1.1), `Expect` only
/// `100-continue` (417), and what persistence and upgrade the request asks for.
pub fn check<'a, I>(
    method: &http::Method,
    version: Version,
    fields: I,
) -> Result<Checked<'a>, Refusal>
where
    I: Iterator<Item = (&'a str, &'a [u8])> + Clone,
{
    if method == http::Method::CONNECT {
        return Err(Refusal::new(
            405,
            "CONNECT is not served: requests are routed by host, not tunnelled",
        ));
    }
    let named = |name: &'static str| {
        fields
            .clone()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    };
    let list = |name: &'static str| {
        named(name)
            .flat_map(|v| v.split(|b| *b == b','))
            .map(trim_ows)
            .filter(|t| !t.is_empty())
    };
    let listed = |name: &'static str, token: &str| {
        list(name).any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
    };

    let mut hosts = named("host");
    let host = hosts.next().map(trim_ows);
    if hosts.next().is_some() {
        return Err(Refusal::bad_request(
            "Host: more than one field (RFC 9112 §3.2)",
        ));
    }
    if version == Version::Http11 && host.is_none() {
        return Err(Refusal::bad_request(
            "Host: required in an HTTP/1.1 request (RFC 9112 §3.2)",
        ));
    }
    if let Some(h) = host
        && !valid_authority(h)
    {
        return Err(Refusal::bad_request(format!(
            "Host: invalid value {:?}",
            String::from_utf8_lossy(h)
        )));
    }

    let has_te = named("transfer-encoding").next().is_some();
    let length = content_length(named("content-length"))
        .map_err(|e| Refusal::bad_request(format!("Content-Length: {e}")))?;
    let body = if has_te {
        if version == Version::Http10 {
            return Err(Refusal::bad_request(
                "Transfer-Encoding: not allowed in an HTTP/1.0 request (RFC 9112 §6.1)",
            ));
        }
        if length.is_some() {
            return Err(Refusal::bad_request(
                "Content-Length and Transfer-Encoding together: ambiguous framing (RFC 9112 §6.3)",
            ));
        }
        // Empty list elements are refused rather than skipped (RFC 9110 §5.6.1 allows either):
        // hyper, the next hop, refuses `chunked ,`, and two hops must agree on framing.
        let mut codings = named("transfer-encoding")
            .flat_map(|v| v.split(|b| *b == b','))
            .map(trim_ows);
        if codings.clone().any(<[u8]>::is_empty) {
            return Err(Refusal::bad_request(
                "Transfer-Encoding: an empty list element",
            ));
        }
        let last = codings.clone().last();
        if !last.is_some_and(|c| c.eq_ignore_ascii_case(b"chunked")) {
            return Err(Refusal::bad_request(
                "Transfer-Encoding: chunked must be the final coding of a request (RFC 9112 §6.3)",
            ));
        }
        if codings.nth(1).is_some() {
            return Err(Refusal::new(
                501,
                "Transfer-Encoding: only chunked is supported on requests",
            ));
        }
        BodyFraming::Chunked
    } else {
        match length {
            None | Some(0) => BodyFraming::None,
            Some(n) => BodyFraming::Length(n),
        }
    };

    let close = listed("connection", "close");
    let keep_alive = match version {
        Version::Http11 => !close,
        Version::Http10 => !close && listed("connection", "keep-alive"),
    };
    let mut expect_continue = false;
    for e in named("expect") {
        if !trim_ows(e).eq_ignore_ascii_case(b"100-continue") {
            return Err(Refusal::new(417, "Expect: only 100-continue is supported"));
        }
        // An HTTP/1.0 client does not wait for a 100 (RFC 9110 §10.1.1).
        expect_continue = version == Version::Http11;
    }
    let upgrade = if named("upgrade").next().is_none() {
        Upgrade::None
    } else if version == Version::Http11
        && method == http::Method::GET
        && body == BodyFraming::None
        && listed("upgrade", "websocket")
        && listed("connection", "upgrade")
    {
        Upgrade::Websocket
    } else {
        Upgrade::Other
    };
    Ok(Checked {
        host,
        body,
        keep_alive,
        upgrade,
        expect_continue,
    })
}

/// The authority of an absolute-form target (`http://host:port/path`).
fn absolute_authority(target: &[u8]) -> Result<&[u8], Refusal> {
    let rest = strip_scheme(target).ok_or_else(|| {
        Refusal::bad_request("request target: must be a path, * or an absolute http(s) URI")
    })?;
    let end = rest
        .iter()
        .position(|b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let authority = &rest[..end];
    if authority.is_empty() || authority.contains(&b'@') || !valid_authority(authority) {
        return Err(Refusal::bad_request(format!(
            "request target: invalid authority {:?}",
            String::from_utf8_lossy(authority)
        )));
    }
    Ok(authority)
}

fn strip_scheme(target: &[u8]) -> Option<&[u8]> {
    for scheme in [&b"http://"[..], b"https://"] {
        if target.len() >= scheme.len() && target[..scheme.len()].eq_ignore_ascii_case(scheme) {
            return Some(&target[scheme.len()..]);
        }
    }
    None
}

/// The authority of an absolute-form target (`None` for other forms).
pub fn authority_of(target: &str) -> Option<&str> {
    let rest = strip_scheme(target.as_bytes())?;
    let rest = &target[target.len() - rest.len()..];
    Some(&rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())])
}

/// The path and query an instance gets for `target`: itself in origin form, the part after
/// the authority in absolute form (`/` when empty).
pub fn origin_form(target: &str) -> &str {
    match strip_scheme(target.as_bytes()) {
        None => target,
        Some(rest) => {
            let rest = &target[target.len() - rest.len()..];
            match rest.find(['/', '?']) {
                Some(i) if rest.as_bytes()[i] == b'/' => &rest[i..],
                _ => "/",
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(head: &str) -> RequestHead {
        match parse(head.as_bytes()) {
            Ok(Some(h)) => h,
            other => panic!("{head:?}: {other:?}"),
        }
    }

    fn refused(head: &str) -> Refusal {
        match parse(head.as_bytes()) {
            Err(r) => r,
            other => panic!("{head:?} was not refused: {other:?}"),
        }
    }

    #[test]
    fn host_rules() {
        let head = "GET / HTTP/1.1\r\nHOST: a.b:8080\r\nknative-serving-tag: canary\r\n\r\n";
        let h = ok(head);
        assert_eq!(h.host(head.as_bytes()), "a.b:8080");
        assert_eq!(h.tag(head.as_bytes()), Some("canary"));
        assert_eq!(h.len, head.len());
        let r = refused("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n");
        assert_eq!(r.status, 400);
        assert!(r.reason.contains("more than one"), "{r}");
        let r = refused("GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n");
        assert_eq!(r.status, 400, "even the same value twice");
        let r = refused("GET / HTTP/1.1\r\nUser-Agent: x\r\n\r\n");
        assert!(r.reason.contains("Host: required"), "{r}");
        assert_eq!(refused("GET / HTTP/1.1\r\nHost: a b\r\n\r\n").status, 400);
        assert_eq!(refused("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n").status, 400);
        assert_eq!(refused("GET / HTTP/1.1\r\nHost: u@a\r\n\r\n").status, 400);
        // HTTP/1.0 may omit Host: there is then nothing to route by.
        let h = ok("GET / HTTP/1.0\r\n\r\n");
        assert_eq!((h.host.len(), h.keep_alive), (0, false));
        // An absolute-form target's authority wins over Host.
        let head = "GET http://b.c/x?q HTTP/1.1\r\nHost: a.b\r\n\r\n";
        let h = ok(head);
        assert_eq!((h.host(head.as_bytes()), h.absolute), ("b.c", true));
        let head = "GET HTTPS://B.c:1 HTTP/1.0\r\n\r\n";
        assert_eq!(ok(head).host(head.as_bytes()), "B.c:1");
        assert_eq!(
            refused("GET http://a.b/x HTTP/1.1\r\n\r\n").status,
            400,
            "an absolute target does not stand in for Host in HTTP/1.1"
        );
        for bad in [
            "http:///x",
            "http://u@a/x",
            "ftp://a/x",
            "a.b/x",
            "http://a\"b/",
        ] {
            let r = refused(&format!("GET {bad} HTTP/1.1\r\nHost: a\r\n\r\n"));
            assert!(r.reason.contains("request target"), "{bad}: {r}");
        }
        assert_eq!(ok("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n").host.len(), 1);
        assert_eq!(refused("GET * HTTP/1.1\r\nHost: a\r\n\r\n").status, 400);
        assert_eq!(
            refused("CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n").status,
            405
        );
    }

    #[test]
    fn origin_forms() {
        assert_eq!(origin_form("/a?b"), "/a?b");
        assert_eq!(origin_form("*"), "*");
        assert_eq!(origin_form("http://a.b/c/d?e"), "/c/d?e");
        assert_eq!(origin_form("http://a.b"), "/");
        assert_eq!(origin_form("http://a.b?x"), "/");
        assert_eq!(origin_form("HTTPS://a.b:9/z"), "/z");
    }

    #[test]
    fn framing_rules() {
        let body = |head: &str| ok(head).body;
        assert_eq!(body("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), BodyFraming::None);
        assert_eq!(
            body("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"),
            BodyFraming::None
        );
        assert_eq!(
            body("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"),
            BodyFraming::Length(5)
        );
        assert_eq!(
            body("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n"),
            BodyFraming::Chunked
        );
        for (head, status, rule) in [
            (
                "Content-Length: 1\r\nContent-Length: 2",
                400,
                "Content-Length",
            ),
            ("Content-Length: +1", 400, "Content-Length"),
            ("Content-Length: 1 1", 400, "Content-Length"),
            (
                "Content-Length: 99999999999999999999",
                400,
                "Content-Length",
            ),
            (
                "Content-Length: 3\r\nTransfer-Encoding: chunked",
                400,
                "together",
            ),
            (
                "Transfer-Encoding: chunked\r\nContent-Length: 3",
                400,
                "together",
            ),
            ("Transfer-Encoding: xchunked", 400, "final coding"),
            ("Transfer-Encoding: chunked, identity", 400, "final coding"),
            (
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: x",
                400,
                "final coding",
            ),
            ("Transfer-Encoding: ", 400, "empty list element"),
            ("Transfer-Encoding: chunked ,", 400, "empty list element"),
            ("Transfer-Encoding: gzip, chunked", 501, "only chunked"),
            ("Transfer-Encoding: chunked, chunked", 501, "only chunked"),
            ("Expect: something", 417, "Expect"),
        ] {
            let r = refused(&format!("POST / HTTP/1.1\r\nHost: a\r\n{head}\r\n\r\n"));
            assert_eq!(r.status, status, "{head:?}: {r}");
            assert!(r.reason.contains(rule), "{head:?}: {r}");
        }
        let r = refused("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(r.reason.contains("HTTP/1.0"), "{r}");
        // What httparse refuses: obs-fold, space before the colon, NUL, bare CR.
        for head in [
            "GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n folded\r\n\r\n",
            "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chun\0ked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n",
            "GET / HTTP/2.0\r\nHost: a\r\n\r\n",
            "\x16\x03\x01 not http\r\n\r\n",
        ] {
            assert_eq!(refused(head).status, 400, "{head:?}");
        }
    }

    #[test]
    fn limits() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\nHost: a"), Ok(None));
        let big = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}", "v".repeat(MAX_HEAD));
        assert_eq!(refused(&big).status, 431);
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(
            refused(&format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n")).status,
            431
        );
    }

    #[test]
    fn persistence_expectations_and_upgrades() {
        let h = ok("GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Close\r\n\r\n");
        assert!(!h.keep_alive);
        assert!(ok("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        let h =
            ok("PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 9\r\n\r\n");
        assert!(h.expect_continue);
        let h = ok("PUT / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 9\r\n\r\n");
        assert!(!h.expect_continue);
        let up = |head: &str| ok(head).upgrade;
        assert_eq!(
            up(
                "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\n\r\n"
            ),
            Upgrade::Websocket
        );
        assert_eq!(
            up("GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n"),
            Upgrade::Other,
            "Connection does not name upgrade"
        );
        assert_eq!(
            up(
                "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n"
            ),
            Upgrade::Other
        );
        assert_eq!(
            up(
                "POST /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 3\r\n\r\n"
            ),
            Upgrade::Other
        );
        assert_eq!(up("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Upgrade::None);
    }
}
