//! Moving messages between connections: reading a response head, relaying a body to its end
//! (found from its framing, checked strictly, re-framed when the client needs it), and
//! sending the proxy's own answers.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::chunked::{self, ChunkError, Decoder};
use crate::refusal::Refusal;
use crate::response::{Client, Framing, Response, Transform, parse_response};

/// Where a body ends, fed as bytes arrive.
#[derive(Debug)]
pub enum Body {
    Length(u64),
    Chunked(Decoder),
    Close,
}

impl Body {
    /// `None`: no body.
    pub fn new(framing: Framing) -> Option<Body> {
        match framing {
            Framing::Empty | Framing::Length(0) => None,
            Framing::Length(n) => Some(Body::Length(n)),
            Framing::Chunked => Some(Body::Chunked(Decoder::new())),
            Framing::Close => Some(Body::Close),
        }
    }

    /// A request body's framing.
    pub fn for_request(framing: crate::head::BodyFraming) -> Option<Body> {
        match framing {
            crate::head::BodyFraming::None => None,
            crate::head::BodyFraming::Length(n) => Some(Body::Length(n)),
            crate::head::BodyFraming::Chunked => Some(Body::Chunked(Decoder::new())),
        }
    }

    /// How many of `data`'s bytes belong to the body, and whether it ended with them.
    pub fn feed(&mut self, data: &[u8]) -> Result<(usize, bool), ChunkError> {
        match self {
            Body::Length(left) => {
                let take = (*left).min(data.len() as u64);
                *left -= take;
                Ok((take as usize, *left == 0))
            }
            Body::Chunked(c) => c.feed(data),
            Body::Close => Ok((data.len(), false)),
        }
    }

    /// As [`Body::feed`], appending what the client gets to `out`.
    pub fn relay(
        &mut self,
        data: &[u8],
        transform: Transform,
        out: &mut Vec<u8>,
    ) -> Result<(usize, bool), ChunkError> {
        match (transform, self) {
            (Transform::Dechunk, Body::Chunked(c)) => c.decode(data, out),
            (transform, body) => {
                let (take, done) = body.feed(data)?;
                if transform == Transform::Rechunk {
                    chunked::encode(out, &data[..take]);
                } else {
                    out.extend_from_slice(&data[..take]);
                }
                Ok((take, done))
            }
        }
    }
}

/// Why no response head was read.
#[derive(Debug)]
pub enum ReadError {
    /// The connection ended before any byte of a response.
    Nothing(String),
    /// Bytes came, but not a usable head.
    Invalid(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Nothing(r) | ReadError::Invalid(r) => f.write_str(r),
        }
    }
}

/// Read from `from` until `buf` holds a complete response head, then parse it as
/// [`parse_response`] does (`out` is written only once the head is complete). Cancel-safe:
/// what was read stays in `buf`.
pub async fn read_response<R: AsyncRead + Unpin>(
    from: &mut R,
    buf: &mut Vec<u8>,
    client: Client,
    mut out: Option<&mut Vec<u8>>,
) -> Result<Response, ReadError> {
    loop {
        if !buf.is_empty()
            && let Some(r) =
                parse_response(buf, client, out.as_deref_mut()).map_err(ReadError::Invalid)?
        {
            return Ok(r);
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        let n = from.read_buf(buf).await.map_err(|e| {
            if buf.is_empty() {
                ReadError::Nothing(e.to_string())
            } else {
                ReadError::Invalid(e.to_string())
            }
        })?;
        if n == 0 {
            let reason = "the connection closed before a response".to_string();
            return Err(if buf.is_empty() {
                ReadError::Nothing(reason)
            } else {
                ReadError::Invalid(reason)
            });
        }
    }
}

/// How relaying a body ended.
#[derive(Debug)]
pub enum Relayed {
    /// The body ended as its framing says (a close-delimited one at the close). `extra`:
    /// bytes came after its end (the sender and this hop disagree on framing).
    Done { extra: bool },
    /// The sender broke the framing: nothing after the error was forwarded.
    Invalid(ChunkError),
    /// The sender closed before the end.
    Cut,
    /// Writing to the receiver failed.
    Gone,
}

/// Copy a body framed by `framing` from `from` to `to`, starting with `first` (already read),
/// transformed as `transform` says.
pub async fn relay_body<R, W>(
    to: &mut W,
    from: &mut R,
    first: &[u8],
    framing: Framing,
    transform: Transform,
) -> Relayed
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let Some(mut body) = Body::new(framing) else {
        return Relayed::Done {
            extra: !first.is_empty(),
        };
    };
    let mut out = Vec::new();
    let mut chunk = Vec::new();
    let mut data = first;
    loop {
        out.clear();
        let (take, done) = match body.relay(data, transform, &mut out) {
            Ok(r) => r,
            Err(e) => {
                let _ = to.write_all(&out).await;
                let _ = to.flush().await;
                return Relayed::Invalid(e);
            }
        };
        if to.write_all(&out).await.is_err() || to.flush().await.is_err() {
            return Relayed::Gone;
        }
        if done {
            return Relayed::Done {
                extra: take < data.len(),
            };
        }
        if chunk.is_empty() {
            chunk.resize(16 * 1024, 0);
        }
        let n = match from.read(&mut chunk).await {
            Ok(n) => n,
            Err(_) => return Relayed::Cut,
        };
        if n == 0 {
            if !matches!(body, Body::Close) {
                return Relayed::Cut;
            }
            if transform == Transform::Rechunk
                && (to.write_all(chunked::LAST_CHUNK).await.is_err() || to.flush().await.is_err())
            {
                return Relayed::Gone;
            }
            return Relayed::Done { extra: false };
        }
        data = &chunk[..n];
    }
}

/// Answer with `refusal` and close the connection.
pub async fn refuse<W: AsyncWrite + Unpin>(client: &mut W, refusal: &Refusal) {
    let _ = client.write_all(&refusal.render()).await;
    let _ = client.flush().await;
    let _ = client.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEEP: Client = Client {
        head_request: false,
        close: false,
        http10: false,
    };

    #[tokio::test]
    async fn response_heads_are_read_across_reads_up_to_the_limit() {
        let big = "v".repeat(10_000);
        let wire = format!("HTTP/1.1 200 OK\r\nx-big: {big}\r\ncontent-length: 1\r\n\r\n!");
        let mut from = wire.as_bytes();
        let (mut buf, mut out) = (Vec::new(), Vec::new());
        let r = read_response(&mut from, &mut buf, KEEP, Some(&mut out)).await;
        let r = r.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (r.status, r.len, r.framing),
            (200, wire.len() - 1, Framing::Length(1))
        );
        assert_eq!(out.len(), r.len, "the head as the client gets it");
        let huge = format!(
            "HTTP/1.1 200 OK\r\nx-big: {}\r\n\r\n",
            "v".repeat(crate::response::MAX_HEAD)
        );
        let mut from = huge.as_bytes();
        let r = read_response(&mut from, &mut Vec::new(), KEEP, None).await;
        assert!(
            matches!(r, Err(ReadError::Invalid(ref e)) if e.contains("too large")),
            "{r:?}"
        );
        // Nothing at all (a pooled connection the instance closed) is told apart from a cut head.
        let r = read_response(&mut &b""[..], &mut Vec::new(), KEEP, None).await;
        assert!(matches!(r, Err(ReadError::Nothing(_))), "{r:?}");
        let r = read_response(&mut &b"HTTP/1.1 200"[..], &mut Vec::new(), KEEP, None).await;
        assert!(matches!(r, Err(ReadError::Invalid(_))), "{r:?}");
    }

    async fn relay(first: &[u8], rest: &[u8], framing: Framing, t: Transform) -> (Vec<u8>, String) {
        let mut to = Vec::new();
        let mut from = rest;
        let r = relay_body(&mut to, &mut from, first, framing, t).await;
        (to, format!("{r:?}"))
    }

    #[tokio::test]
    async fn bodies_are_relayed_to_their_end_and_no_further() {
        let (out, r) = relay(
            b"3\r\nabc\r\n",
            b"0\r\n\r\nGET /next",
            Framing::Chunked,
            Transform::Pass,
        )
        .await;
        assert_eq!(
            (out.as_slice(), r.as_str()),
            (&b"3\r\nabc\r\n0\r\n\r\n"[..], "Done { extra: true }")
        );
        let (out, r) = relay(
            b"",
            b"3\r\nabc\r\n0\r\n\r\n",
            Framing::Chunked,
            Transform::Dechunk,
        )
        .await;
        assert_eq!(
            (out.as_slice(), r.as_str()),
            (&b"abc"[..], "Done { extra: false }")
        );
        let (out, r) = relay(b"ab", b"cd", Framing::Close, Transform::Rechunk).await;
        assert_eq!(
            (out.as_slice(), r.as_str()),
            (
                &b"2\r\nab\r\n2\r\ncd\r\n0\r\n\r\n"[..],
                "Done { extra: false }"
            )
        );
        let (out, r) = relay(b"ab", b"", Framing::Length(3), Transform::Pass).await;
        assert_eq!((out.as_slice(), r.as_str()), (&b"ab"[..], "Cut"));
        // Bytes after a framing error are not forwarded.
        let (out, r) = relay(
            b"3\r\nabcGET / HTTP/1.1\r\n",
            b"",
            Framing::Chunked,
            Transform::Pass,
        )
        .await;
        assert!(r.starts_with("Invalid"), "{r}");
        assert!(!String::from_utf8_lossy(&out).contains("GET"), "{out:?}");
    }
}
