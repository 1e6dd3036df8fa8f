//! The gateway's own answers: every status it decides itself (400, 404, 405, 417, 431, 501,
//! 502, 503, 504) is one [`Refusal`], rendered the same way on every path.

/// An answer the proxy gives itself instead of the instance's: the status and a short reason
/// naming the header or rule (the body, as plain text). A 503 asks the client to retry after a
/// second. The connection is closed after it: the request it refuses may have a body this hop
/// did not read, and a client that reused the connection would lose its next request to the
/// close if the answer did not say so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: String,
}

impl Refusal {
    pub fn new(status: u16, reason: impl Into<String>) -> Refusal {
        Refusal {
            status,
            reason: reason.into(),
        }
    }

    /// 400: the request's framing or head breaks a rule (named in `reason`).
    pub fn bad_request(reason: impl Into<String>) -> Refusal {
        Refusal::new(400, reason)
    }

    /// 502: the instance failed (could not be reached, closed, answered garbage).
    pub fn bad_gateway(reason: impl Into<String>) -> Refusal {
        Refusal::new(502, reason)
    }

    /// 502: the instance broke the exchange (`why` says how).
    pub fn instance_failed(why: impl std::fmt::Display) -> Refusal {
        Refusal::bad_gateway(format!("instance failed: {why}"))
    }

    /// 503: no room (queue full) or nothing to send to; retry after a second.
    pub fn unavailable(reason: impl Into<String>) -> Refusal {
        Refusal::new(503, reason)
    }

    /// 504: the revision's deadline passed.
    pub fn timeout(reason: impl Into<String>) -> Refusal {
        Refusal::new(504, reason)
    }

    /// `Retry-After` seconds, for 503.
    pub fn retry_after(&self) -> Option<u32> {
        (self.status == 503).then_some(1)
    }

    /// The body: the reason and a newline.
    pub fn body(&self) -> String {
        format!("{}\n", self.reason)
    }

    /// The response's fields (for a proxy that builds its own head, as pingora does).
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        let mut f = vec![
            ("content-type", "text/plain; charset=utf-8".to_string()),
            ("content-length", self.body().len().to_string()),
        ];
        if let Some(s) = self.retry_after() {
            f.push(("retry-after", s.to_string()));
        }
        f.push(("connection", "close".to_string()));
        f
    }

    /// The whole HTTP/1.1 response.
    pub fn render(&self) -> Vec<u8> {
        let text = http::StatusCode::from_u16(self.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        let mut out = format!("HTTP/1.1 {} {text}\r\n", self.status).into_bytes();
        for (name, value) in self.fields() {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(self.body().as_bytes());
        out
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_status_reason_and_close() {
        let r = Refusal::unavailable("queue full");
        assert_eq!(
            String::from_utf8(r.render()).unwrap_or_default(),
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 11\r\nretry-after: 1\r\nconnection: close\r\n\r\nqueue full\n"
        );
        let r = Refusal::bad_request("Host: more than one field");
        let text = String::from_utf8(r.render()).unwrap_or_default();
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        assert!(!text.contains("retry-after"), "{text}");
    }
}
