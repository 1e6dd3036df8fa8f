//! Readiness of the user container, probed by the queue-proxy itself.
//!
//! Until the app first answers, it is probed every 25 ms (Knative: 50 ms), so an instance is
//! reported ready within a few milliseconds of its socket opening; this is most of what makes a
//! cold start fast. Afterwards it is probed at the probe's period, and a failing app is probed
//! aggressively again until it recovers.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Probe interval while the app is not (yet) ready.
pub const AGGRESSIVE_PERIOD: Duration = Duration::from_millis(25);

/// The parts of a Kubernetes `Probe` the queue-proxy acts on. `exec` and `grpc` probes cannot
/// run from a sidecar; they fall back to a TCP probe of the user port (the kubelet, or the
/// local runtime, still runs exec probes where it can).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeSpec {
    pub http_get: Option<HttpGet>,
    pub tcp_socket: Option<TcpSocket>,
    pub initial_delay_seconds: Option<u64>,
    pub timeout_seconds: Option<u64>,
    pub period_seconds: Option<u64>,
    pub success_threshold: Option<u32>,
    pub failure_threshold: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpGet {
    pub path: Option<String>,
    pub port: Option<serde_json::Value>,
    pub host: Option<String>,
    pub scheme: Option<String>,
    pub http_headers: Option<Vec<NameValue>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct NameValue {
    pub name: String,
    pub value: String,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct TcpSocket {
    pub port: Option<serde_json::Value>,
    pub host: Option<String>,
}

/// A probe made concrete: what to check and how often.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub target: SocketAddr,
    /// Path and headers for an HTTP probe; None = TCP connect.
    pub http: Option<(String, Vec<(String, String)>)>,
    pub initial_delay: Duration,
    pub timeout: Duration,
    pub period: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

fn port_of(v: Option<&serde_json::Value>, user_port: u16) -> u16 {
    match v.and_then(serde_json::Value::as_u64) {
        Some(p) if p > 0 && p <= u64::from(u16::MAX) => p as u16,
        _ => user_port,
    }
}

impl ProbeSpec {
    pub fn plan(&self, user_host: IpAddr, user_port: u16) -> Plan {
        let (port, host, http) = match (&self.http_get, &self.tcp_socket) {
            (Some(h), _) => {
                let headers = h
                    .http_headers
                    .iter()
                    .flatten()
                    .map(|nv| (nv.name.clone(), nv.value.clone()))
                    .collect();
                let path = h
                    .path
                    .clone()
                    .filter(|p| p.starts_with('/'))
                    .unwrap_or_else(|| "/".into());
                (
                    port_of(h.port.as_ref(), user_port),
                    h.host.clone(),
                    Some((path, headers)),
                )
            }
            (None, Some(t)) => (port_of(t.port.as_ref(), user_port), t.host.clone(), None),
            (None, None) => (user_port, None, None),
        };
        let host = host.and_then(|h| h.parse().ok()).unwrap_or(user_host);
        Plan {
            target: SocketAddr::new(host, port),
            http,
            initial_delay: Duration::from_secs(self.initial_delay_seconds.unwrap_or(0)),
            timeout: Duration::from_secs(self.timeout_seconds.unwrap_or(1).max(1)),
            period: Duration::from_secs(self.period_seconds.unwrap_or(10).max(1)),
            success_threshold: self.success_threshold.unwrap_or(1).max(1),
            failure_threshold: self.failure_threshold.unwrap_or(3).max(1),
        }
    }
}

/// One probe attempt.
pub async fn probe_once(plan: &Plan) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(plan.target).await.ok()?;
        let Some((path, headers)) = &plan.http else {
            return Some(true);
        };
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: kube-probe/ebb\r\n{}: queue\r\nConnection: close\r\n",
            plan.target,
            wire::HEADER_KUBELET_PROBE
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await.ok()?;
        // The status line is all we need: "HTTP/1.1 200 ...".
        let mut buf = [0u8; 64];
        let mut n = 0;
        while n < 12 {
            let read = stream.read(&mut buf[n..]).await.ok()?;
            if read == 0 {
                break;
            }
            n += read;
        }
        let line = std::str::from_utf8(&buf[..n]).ok()?;
        let code: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some((200..400).contains(&code))
    };
    matches!(
        tokio::time::timeout(plan.timeout, attempt).await,
        Ok(Some(true))
    )
}

/// Probe forever, publishing readiness on `ready`. Stops when every receiver is gone.
pub async fn run(plan: Plan, ready: watch::Sender<bool>, probe_now: Arc<tokio::sync::Notify>) {
    tokio::time::sleep(plan.initial_delay).await;
    let (mut successes, mut failures) = (0u32, 0u32);
    loop {
        let ok = probe_once(&plan).await;
        let is_ready = *ready.borrow();
        if ok {
            successes += 1;
            failures = 0;
            if !is_ready && successes >= plan.success_threshold {
                ready.send_replace(true);
            }
        } else {
            failures += 1;
            successes = 0;
            if is_ready && failures >= plan.failure_threshold {
                ready.send_replace(false);
            }
        }
        if ready.is_closed() {
            return;
        }
        if *ready.borrow() {
            tokio::time::sleep(plan.period).await;
        } else {
            // Until ready: every 25 ms, or at once when a network probe asks.
            tokio::select! {
                _ = tokio::time::sleep(AGGRESSIVE_PERIOD) => {}
                _ = probe_now.notified() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_follow_the_probe() {
        let local = IpAddr::from([127, 0, 0, 1]);
        let default = ProbeSpec::default().plan(local, 8080);
        assert_eq!(default.target, SocketAddr::new(local, 8080));
        assert!(default.http.is_none());
        let json = r#"{"httpGet":{"path":"/healthz","port":0,"httpHeaders":[{"name":"X-A","value":"b"}]},"periodSeconds":2,"failureThreshold":5}"#;
        let spec: ProbeSpec = serde_json::from_str(json).unwrap_or_default();
        let p = spec.plan(local, 9000);
        assert_eq!(p.target.port(), 9000, "port 0 is the user port");
        assert_eq!(
            p.http,
            Some(("/healthz".into(), vec![("X-A".into(), "b".into())]))
        );
        assert_eq!((p.period, p.failure_threshold), (Duration::from_secs(2), 5));
        let tcp: ProbeSpec =
            serde_json::from_str(r#"{"tcpSocket":{"port":7000}}"#).unwrap_or_default();
        assert_eq!(tcp.plan(local, 9000).target.port(), 7000);
    }
}
