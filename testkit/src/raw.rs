//! HTTP/1 at the byte level for tests of the framing edge: a backend that records the exact
//! bytes it receives and which requests it took them for, and a client that reads responses
//! off a raw socket. Both parse with httparse and their own small body reader — deliberately
//! not with the data plane's `http1` crate, whose behaviour they judge.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as the backend took it: its request line, its head's fields, its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub line: String,
    pub head: String,
    pub body: Vec<u8>,
}

/// What a recording backend saw, per connection: every byte, and the requests it parsed.
#[derive(Debug, Default)]
pub struct Recorded {
    pub bytes: Vec<Vec<u8>>,
    pub requests: Vec<Seen>,
}

pub type Recording = Arc<Mutex<Recorded>>;

/// A backend on loopback that answers every request it can parse: `/ws` with `426 Upgrade
/// Required` (keeping the connection, as many servers do), anything else with 200 and
/// `METHOD PATH BODYLEN` as the body. A request with `Expect: 100-continue` gets a 100 first.
/// The body is framed by `Transfer-Encoding: chunked` when present (RFC 9112), else by
/// `Content-Length`. What it cannot parse ends the connection.
pub async fn recording_backend() -> (SocketAddr, Recording) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let rec = Recording::default();
    let r = rec.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            let index = {
                let mut g = r.lock().unwrap_or_else(|p| p.into_inner());
                g.bytes.push(Vec::new());
                g.bytes.len() - 1
            };
            tokio::spawn(serve(s, r.clone(), index));
        }
    });
    (addr, rec)
}

async fn serve(mut s: TcpStream, rec: Recording, index: usize) {
    let mut buf = Vec::new();
    loop {
        // A head.
        let head_len = loop {
            let mut headers = [httparse::EMPTY_HEADER; 128];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => break n,
                Ok(httparse::Status::Partial) => {}
                Err(_) => return,
            }
            if !read_more(&mut s, &mut buf, &rec, index).await {
                return;
            }
        };
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        let _ = req.parse(&buf);
        let line = format!("{} {}", req.method.unwrap_or(""), req.path.unwrap_or(""));
        let value = |name: &str| {
            req.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).to_ascii_lowercase())
        };
        let chunked = value("transfer-encoding").is_some_and(|v| v.ends_with("chunked"));
        let length: usize = value("content-length")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let expect = value("expect").is_some_and(|v| v == "100-continue");
        let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
        buf.drain(..head_len);
        if expect && s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err() {
            return;
        }
        // Its body.
        let mut body = Vec::new();
        if chunked {
            loop {
                match httparse::parse_chunk_size(&buf) {
                    Ok(httparse::Status::Complete((at, 0))) => {
                        // Trailers up to the empty line.
                        let mut pos = at;
                        loop {
                            if let Some(i) = find(&buf[pos..], b"\r\n") {
                                let empty = i == 0;
                                pos += i + 2;
                                if empty {
                                    break;
                                }
                            } else if !read_more(&mut s, &mut buf, &rec, index).await {
                                return;
                            }
                        }
                        buf.drain(..pos);
                        break;
                    }
                    Ok(httparse::Status::Complete((at, size))) => {
                        let size = size as usize;
                        while buf.len() < at + size + 2 {
                            if !read_more(&mut s, &mut buf, &rec, index).await {
                                return;
                            }
                        }
                        if &buf[at + size..at + size + 2] != b"\r\n" {
                            return;
                        }
                        body.extend_from_slice(&buf[at..at + size]);
                        buf.drain(..at + size + 2);
                    }
                    Ok(httparse::Status::Partial) => {
                        if !read_more(&mut s, &mut buf, &rec, index).await {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        } else {
            while buf.len() < length {
                if !read_more(&mut s, &mut buf, &rec, index).await {
                    return;
                }
            }
            body = buf.drain(..length).collect();
        }
        let path = line.split(' ').nth(1).unwrap_or("").to_string();
        let n = body.len();
        rec.lock()
            .unwrap_or_else(|p| p.into_inner())
            .requests
            .push(Seen {
                line: line.clone(),
                head,
                body,
            });
        let answer = if path == "/ws" {
            "HTTP/1.1 426 Upgrade Required\r\nContent-Length: 4\r\n\r\nnope".to_string()
        } else {
            let text = format!("{line} {n}");
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{text}",
                text.len()
            )
        };
        if s.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>, rec: &Recording, index: usize) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    match s.read(&mut chunk).await {
        Ok(n) if n > 0 => {
            buf.extend_from_slice(&chunk[..n]);
            let mut g = rec.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(b) = g.bytes.get_mut(index) {
                b.extend_from_slice(&chunk[..n]);
            }
            true
        }
        _ => false,
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A response as a raw client read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Answer {
    /// Does the head say `Connection: close`?
    pub fn closes(&self) -> bool {
        self.head.lines().any(|l| {
            let l = l.to_ascii_lowercase();
            l.starts_with("connection:") && l.contains("close")
        })
    }
}

/// Read responses from `s` until `want` final ones have come or the connection closes
/// (`closed`), waiting at most `wait` for each byte. Informational responses are kept too.
pub async fn read_answers(s: &mut TcpStream, want: usize, wait: Duration) -> (Vec<Answer>, bool) {
    let mut buf = Vec::new();
    let mut answers = Vec::new();
    let mut finals = 0;
    loop {
        while let Some((answer, used)) = parse_answer(&buf) {
            buf.drain(..used);
            if answer.status >= 200 {
                finals += 1;
            }
            answers.push(answer);
        }
        if finals >= want {
            return (answers, false);
        }
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout(wait, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            Ok(_) => return (answers, true),
            Err(_) => return (answers, false),
        }
    }
}

/// Has the peer closed `s` (within `wait`)? Bytes that arrive instead count as not closed.
pub async fn closed(s: &mut TcpStream, wait: Duration) -> bool {
    let mut b = [0u8; 1];
    matches!(
        tokio::time::timeout(wait, s.read(&mut b)).await,
        Ok(Ok(0) | Err(_))
    )
}

fn parse_answer(buf: &[u8]) -> Option<(Answer, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return None,
    };
    let status = resp.code.unwrap_or(0);
    let value = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).to_ascii_lowercase())
    };
    let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
    if status < 200 || status == 204 || status == 304 {
        return Some((
            Answer {
                status,
                head,
                body: Vec::new(),
            },
            head_len,
        ));
    }
    if value("transfer-encoding").is_some_and(|v| v.ends_with("chunked")) {
        let mut pos = head_len;
        let mut body = Vec::new();
        loop {
            match httparse::parse_chunk_size(&buf[pos..]) {
                Ok(httparse::Status::Complete((at, 0))) => {
                    let end = find(&buf[pos + at..], b"\r\n\r\n")
                        .map(|i| pos + at + i + 4)
                        .or_else(|| {
                            (buf[pos + at..].starts_with(b"\r\n")).then_some(pos + at + 2)
                        })?;
                    return Some((Answer { status, head, body }, end));
                }
                Ok(httparse::Status::Complete((at, size))) => {
                    let size = size as usize;
                    if buf.len() < pos + at + size + 2 {
                        return None;
                    }
                    body.extend_from_slice(&buf[pos + at..pos + at + size]);
                    pos += at + size + 2;
                }
                _ => return None,
            }
        }
    }
    let length: usize = value("content-length")?.trim().parse().ok()?;
    if buf.len() < head_len + length {
        return None;
    }
    let body = buf[head_len..head_len + length].to_vec();
    Some((Answer { status, head, body }, head_len + length))
}
