//! A small load generator: open-loop at a fixed rate (latency measured from each request's
//! scheduled time, so a slow response cannot hide the requests that should have followed it)
//! and closed-loop for maximum throughput.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub struct Conn {
    sender: http1::SendRequest<Full<Bytes>>,
    host: String,
    addr: SocketAddr,
}

impl Conn {
    pub async fn open(addr: SocketAddr, host: &str) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Conn {
            sender,
            host: host.to_string(),
            addr,
        })
    }

    /// Replace a connection the server closed (e.g. nginx's keepalive_requests limit).
    pub async fn reopen(&mut self) -> anyhow::Result<()> {
        *self = Conn::open(self.addr, &self.host.clone()).await?;
        Ok(())
    }

    /// One GET; Ok(true) when the answer was 200 and fully read.
    pub async fn get(&mut self, path: &str) -> anyhow::Result<bool> {
        Ok(self.get_status(path).await?.0 == 200)
    }

    /// One GET: status and body.
    pub async fn get_status(&mut self, path: &str) -> anyhow::Result<(u16, Bytes)> {
        self.send(http::Method::GET, path, Bytes::new()).await
    }

    /// One POST of `body` (a structured CloudEvent, say); Ok(true) when the answer was 200 and
    /// fully read.
    pub async fn post(&mut self, path: &str, body: Bytes) -> anyhow::Result<bool> {
        Ok(self.send(http::Method::POST, path, body).await?.0 == 200)
    }

    async fn send(
        &mut self,
        method: http::Method,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<(u16, Bytes)> {
        self.sender.ready().await?;
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host);
        if !body.is_empty() {
            req = req.header("content-type", "application/cloudevents+json");
        }
        let req = req.body(Full::new(body))?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

#[derive(Debug, Default, Clone)]
pub struct Latencies {
    pub micros: Vec<u64>,
    pub errors: u64,
}

impl Latencies {
    pub fn percentile(&self, p: f64) -> f64 {
        if self.micros.is_empty() {
            return f64::NAN;
        }
        let mut v = self.micros.clone();
        v.sort_unstable();
        let idx = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
        v[idx.min(v.len() - 1)] as f64
    }
}

/// How late a timer may fire without the delay counting as latency.
const TIMER_SLACK: Duration = Duration::from_millis(2);

/// `rate` requests per second for `duration`, spread over `conns` connections.
pub async fn fixed_rate(
    addr: SocketAddr,
    host: &str,
    rate: u64,
    duration: Duration,
    conns: u64,
) -> anyhow::Result<Latencies> {
    let total = rate * duration.as_secs();
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::new();
    for w in 0..conns {
        let mut conn = Conn::open(addr, host).await?;
        tasks.push(tokio::spawn(async move {
            let mut out = Latencies::default();
            let mut i = w;
            while i < total {
                let scheduled = start + interval * i as u32;
                tokio::time::sleep_until(scheduled.into()).await;
                let sent = Instant::now();
                // Latency counts from the scheduled time, so a worker held up by a slow
                // response still charges the wait to that response; the timer's own slack
                // (tokio sleeps have millisecond resolution) is not charged.
                let late = sent
                    .saturating_duration_since(scheduled)
                    .saturating_sub(TIMER_SLACK);
                match conn.get("/").await {
                    Ok(true) => out.micros.push((sent.elapsed() + late).as_micros() as u64),
                    _ => {
                        out.errors += 1;
                        let _ = conn.reopen().await;
                    }
                }
                i += conns;
            }
            out
        }));
    }
    let mut all = Latencies::default();
    for t in tasks {
        let l = t.await?;
        all.micros.extend(l.micros);
        all.errors += l.errors;
    }
    Ok(all)
}

/// As many GETs as `conns` connections can do back to back in `duration`.
pub async fn max_throughput(
    addr: SocketAddr,
    host: &str,
    duration: Duration,
    conns: u64,
) -> anyhow::Result<(u64, u64)> {
    flat_out(addr, host, duration, conns, None).await
}

/// [`max_throughput`] with POSTs of `body`.
pub async fn max_throughput_post(
    addr: SocketAddr,
    host: &str,
    duration: Duration,
    conns: u64,
    body: Bytes,
) -> anyhow::Result<(u64, u64)> {
    flat_out(addr, host, duration, conns, Some(body)).await
}

async fn flat_out(
    addr: SocketAddr,
    host: &str,
    duration: Duration,
    conns: u64,
    body: Option<Bytes>,
) -> anyhow::Result<(u64, u64)> {
    let until = Instant::now() + duration;
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let mut conn = Conn::open(addr, host).await?;
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut err) = (0u64, 0u64);
            while Instant::now() < until {
                let done = match &body {
                    Some(b) => conn.post("/", b.clone()).await,
                    None => conn.get("/").await,
                };
                match done {
                    Ok(true) => ok += 1,
                    _ => {
                        err += 1;
                        let _ = conn.reopen().await;
                    }
                }
            }
            (ok, err)
        }));
    }
    let (mut ok, mut err) = (0, 0);
    for t in tasks {
        let (o, e) = t.await?;
        ok += o;
        err += e;
    }
    Ok((ok, err))
}
