//! Response heads from an instance: where the body ends, whether the instance's connection can
//! carry another request, and the head as the client gets it (the instance's connection fields
//! removed, the client's persistence said, the body re-framed when the client needs it).

use crate::head::{Uninit, tokens};
use crate::length::content_length;
use crate::upstream::{field, joined};

/// A response head larger than this is refused (502), as pingora's limit.
pub const MAX_HEAD: usize = 64 * 1024;

/// Response header fields parsed at most.
const MAX_RESPONSE_HEADERS: usize = 256;

/// How a response's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// At the instance's close (a response without framing).
    Close,
}

/// How the body's bytes reach the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    /// As they came.
    Pass,
    /// A close-delimited body chunk-encoded, for an HTTP/1.1 client whose connection lives on.
    Rechunk,
    /// A chunked body decoded, for an HTTP/1.0 client (which cannot read chunks), ended by
    /// closing its connection.
    Dechunk,
}

/// The client a response goes to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Client {
    /// The request was a HEAD: no body follows whatever the head says.
    pub head_request: bool,
    /// The client's connection closes after this response (it asked, or this hop is
    /// draining).
    pub close: bool,
    /// An HTTP/1.0 client: no chunked framing, no 1xx, persistence only when asked for and
    /// the body has a length.
    pub http10: bool,
}

/// A response head read from an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// The head's length in the buffer it was read into.
    pub len: usize,
    pub framing: Framing,
    /// Does the instance keep the connection open after this response?
    pub keep_alive: bool,
    /// Does the client's connection close after this response?
    pub close: bool,
    pub transform: Transform,
}

/// Parse the response head at the start of `buf` (`None`: not complete yet). When `out` is
/// given, the head as `client` gets it is written there: the instance's connection fields
/// removed (`Connection`, `Keep-Alive`, `Proxy-Connection` and what `Connection` names), a
/// length beside chunked framing removed, `Connection: close` (or `keep-alive` for HTTP/1.0)
/// added, and the framing field rewritten when the body is re-framed. Nothing is written for
/// an informational response to an HTTP/1.0 client (it must not get one).
pub fn parse_response(
    buf: &[u8],
    client: Client,
    out: Option<&mut Vec<u8>>,
) -> Result<Option<Response>, String> {
    let mut headers = [const { Uninit::uninit() }; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut headers,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD => n,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => return Ok(None),
        Ok(_) => return Err("response head too large".to_string()),
        Err(e) => return Err(format!("invalid response head: {e}")),
    };
    let status = resp.code.unwrap_or(0);
    let headers: &[httparse::Header<'_>] = resp.headers;
    let codings: Vec<&[u8]> = tokens(headers, "transfer-encoding").collect();
    let has_coding = headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"));
    let framing = if client.head_request || status < 200 || status == 204 || status == 304 {
        Framing::Empty
    } else if codings
        .last()
        .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"))
    {
        Framing::Chunked
    } else if has_coding {
        // A coding not ending in chunked: the body ends at the close (RFC 9112 §6.3).
        Framing::Close
    } else {
        let length = content_length(
            headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map(|h| h.value),
        )
        .map_err(|e| format!("invalid content-length: {e}"))?;
        length.map_or(Framing::Close, Framing::Length)
    };
    let close_token = tokens(headers, "connection").any(|t| t.eq_ignore_ascii_case(b"close"));
    let keep_alive = framing != Framing::Close
        && match resp.version {
            Some(1) => !close_token,
            _ => tokens(headers, "connection").any(|t| t.eq_ignore_ascii_case(b"keep-alive")),
        };
    let informational = status < 200;
    // An HTTP/1.0 client keeps its connection only for a body with a known end.
    let close =
        client.close || (client.http10 && !matches!(framing, Framing::Empty | Framing::Length(_)));
    let transform = match framing {
        Framing::Close if !close && !informational => Transform::Rechunk,
        Framing::Chunked if client.http10 => Transform::Dechunk,
        _ => Transform::Pass,
    };
    if let Some(out) = out
        && !(informational && client.http10)
    {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.to_string().as_bytes());
        out.push(b' ');
        out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        let named = |name: &str| {
            !name.eq_ignore_ascii_case("transfer-encoding")
                && tokens(headers, "connection").any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
        };
        for h in headers.iter() {
            let name = h.name;
            let coding = name.eq_ignore_ascii_case("transfer-encoding");
            if name.eq_ignore_ascii_case("connection")
                || name.eq_ignore_ascii_case("keep-alive")
                || name.eq_ignore_ascii_case("proxy-connection")
                || (coding && transform != Transform::Pass)
                // A length beside chunked framing is wrong and must not reach the client
                // (RFC 9112 §6.3).
                || (framing == Framing::Chunked && name.eq_ignore_ascii_case("content-length"))
                || named(name)
            {
                continue;
            }
            field(out, name, h.value);
        }
        match transform {
            Transform::Rechunk => {
                let prior = joined(headers, "transfer-encoding");
                let value = prior.map_or("chunked".to_string(), |p| format!("{p}, chunked"));
                field(out, "transfer-encoding", value.as_bytes());
            }
            Transform::Dechunk => {
                // Codings applied before chunked stay described.
                let rest: Vec<&[u8]> = codings[..codings.len().saturating_sub(1)].to_vec();
                if !rest.is_empty() {
                    field(out, "transfer-encoding", &rest.join(&b", "[..]));
                }
            }
            Transform::Pass => {}
        }
        if !informational {
            if close {
                field(out, "connection", b"close");
            } else if client.http10 {
                field(out, "connection", b"keep-alive");
            }
        }
        out.extend_from_slice(b"\r\n");
    }
    Ok(Some(Response {
        status,
        len,
        framing,
        keep_alive,
        close,
        transform,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_head(head: &str, client: Client) -> (Response, String) {
        let mut out = Vec::new();
        let r = parse_response(head.as_bytes(), client, Some(&mut out));
        let r = r.unwrap_or_else(|e| panic!("{head:?}: {e}"));
        let r = r.unwrap_or_else(|| panic!("{head:?}: incomplete"));
        (r, String::from_utf8(out).unwrap_or_default())
    }

    const KEEP: Client = Client {
        head_request: false,
        close: false,
        http10: false,
    };
    const CLOSE: Client = Client {
        head_request: false,
        close: true,
        http10: false,
    };

    #[test]
    fn the_instances_connection_fields_are_removed() {
        let head = "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Private\r\nKeep-Alive: timeout=5\r\nX-Private: 1\r\nContent-Length: 2\r\nX-Kept: a\r\n\r\n";
        let (r, out) = client_head(&format!("{head}hi"), KEEP);
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Kept: a\r\n\r\n"
        );
        assert_eq!((r.status, r.len), (200, head.len()));
        assert_eq!(
            (r.framing, r.keep_alive, r.close),
            (Framing::Length(2), true, false)
        );
    }

    #[test]
    fn framing_and_reuse() {
        let (r, out) = client_head("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", CLOSE);
        assert_eq!(
            (r.framing, r.keep_alive, r.transform),
            (Framing::Close, false, Transform::Pass)
        );
        assert_eq!(out, "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n");
        let (r, out) = client_head("HTTP/1.0 200 OK\r\nServer: old\r\n\r\n", KEEP);
        assert_eq!(
            (r.framing, r.transform),
            (Framing::Close, Transform::Rechunk)
        );
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nServer: old\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        let (r, _) = client_head(
            "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n",
            KEEP,
        );
        assert_eq!((r.framing, r.keep_alive), (Framing::Length(0), true));
        let (r, out) = client_head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", KEEP);
        assert_eq!(r.framing, Framing::Close);
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n"
        );
        let (r, out) = client_head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 9\r\n\r\n",
            KEEP,
        );
        assert_eq!(r.framing, Framing::Chunked, "chunked wins over a length");
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        );
        let head = Client {
            head_request: true,
            ..KEEP
        };
        let (r, _) = client_head("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", head);
        assert_eq!((r.framing, r.keep_alive), (Framing::Empty, true), "HEAD");
        for status in ["204 No Content", "304 Not Modified", "103 Early Hints"] {
            let (r, out) = client_head(&format!("HTTP/1.1 {status}\r\n\r\n"), CLOSE);
            assert_eq!(r.framing, Framing::Empty);
            assert_eq!(
                out.contains("connection: close"),
                !status.starts_with('1'),
                "{out}"
            );
        }
        let bad = |head: &str| parse_response(head.as_bytes(), KEEP, None).is_err();
        assert!(bad(
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
        ));
        assert!(bad("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"));
        assert!(bad(
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n"
        ));
        assert!(bad("garbage\r\n\r\n"));
        assert!(matches!(
            parse_response(b"HTTP/1.1 200 OK\r\n", KEEP, None),
            Ok(None)
        ));
    }

    #[test]
    fn http10_clients() {
        let old = Client {
            http10: true,
            ..KEEP
        };
        let (r, out) = client_head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX: 1\r\n\r\n",
            old,
        );
        assert_eq!((r.transform, r.close), (Transform::Dechunk, true));
        assert_eq!(out, "HTTP/1.1 200 OK\r\nX: 1\r\nconnection: close\r\n\r\n");
        let (r, out) = client_head("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", old);
        assert!(!r.close);
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nconnection: keep-alive\r\n\r\n"
        );
        let (r, out) = client_head("HTTP/1.1 200 OK\r\n\r\n", old);
        assert_eq!((r.transform, r.close), (Transform::Pass, true));
        assert!(out.ends_with("connection: close\r\n\r\n"), "{out}");
        let (_, out) = client_head("HTTP/1.1 100 Continue\r\n\r\n", old);
        assert_eq!(out, "", "no 1xx for HTTP/1.0");
    }
}
