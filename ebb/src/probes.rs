//! Probes, as the kubelet runs them (local mode is the kubelet): readiness, liveness and
//! startup; httpGet, tcpSocket, exec and grpc; the thresholds and periods of the Kubernetes
//! `Probe`. httpGet and tcpSocket readiness are the queue-proxy's (as on Kubernetes, where it
//! probes faster than the kubelet); what a sidecar cannot do — exec and grpc readiness,
//! liveness and startup probes — runs here, against the instance's own port or inside its
//! container.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a probe checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// GET `path` with `headers` on the port: 200–399 is a success.
    Http {
        path: String,
        headers: Vec<(String, String)>,
    },
    /// A TCP connection opens.
    Tcp,
    /// The command exits 0 (in the container's environment).
    Exec(Vec<String>),
    /// `grpc.health.v1.Health/Check` answers SERVING.
    Grpc { service: String },
}

/// Which port a probe targets: the instance's own (the app's declared port), or another the
/// container listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    Instance,
    Fixed(u16),
}

/// A probe made concrete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub check: Check,
    pub port: Port,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

/// The probe's period when Knative's `periodSeconds: 0` asks for aggressive probing.
pub const AGGRESSIVE: Duration = Duration::from_millis(25);

fn port(v: &IntOrString, c: &Container, declared: i32, field: &str) -> Result<Port, String> {
    let n = match v {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port)
            .ok_or_else(|| format!("{field}: no container port is named {name:?}"))?,
    };
    Ok(if n == 0 || n == declared {
        Port::Instance
    } else {
        Port::Fixed(u16::try_from(n).map_err(|_| format!("{field}: port {n} is out of range"))?)
    })
}

impl Plan {
    /// The plan of `probe` (named `field`, e.g. `livenessProbe`) of container `c`, whose
    /// declared serving port is `declared`.
    pub fn of(probe: &Probe, c: &Container, declared: i32, field: &str) -> Result<Plan, String> {
        let (check, port) = if let Some(h) = &probe.http_get {
            if h.scheme
                .as_deref()
                .is_some_and(|s| !s.eq_ignore_ascii_case("HTTP"))
            {
                return Err(format!(
                    "{field}.httpGet.scheme: only HTTP probes run locally"
                ));
            }
            if h.host
                .as_deref()
                .is_some_and(|h| !h.is_empty() && h != "127.0.0.1" && h != "localhost")
            {
                return Err(format!(
                    "{field}.httpGet.host: probes reach the container on loopback; leave host unset"
                ));
            }
            let headers = h
                .http_headers
                .iter()
                .flatten()
                .map(|x| (x.name.clone(), x.value.clone()))
                .collect();
            let path = h
                .path
                .clone()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "/".into());
            (
                Check::Http { path, headers },
                port(&h.port, c, declared, &format!("{field}.httpGet.port"))?,
            )
        } else if let Some(t) = &probe.tcp_socket {
            (
                Check::Tcp,
                port(&t.port, c, declared, &format!("{field}.tcpSocket.port"))?,
            )
        } else if let Some(e) = &probe.exec {
            let cmd = e.command.clone().unwrap_or_default();
            if cmd.is_empty() {
                return Err(format!("{field}.exec.command: must not be empty"));
            }
            (Check::Exec(cmd), Port::Instance)
        } else if let Some(g) = &probe.grpc {
            let p = port(
                &IntOrString::Int(g.port),
                c,
                declared,
                &format!("{field}.grpc.port"),
            )?;
            (
                Check::Grpc {
                    service: g.service.clone().unwrap_or_default(),
                },
                p,
            )
        } else {
            (Check::Tcp, Port::Instance)
        };
        let secs = |v: Option<i32>, default: u64| {
            Duration::from_secs(v.map_or(default, |v| v.max(0) as u64))
        };
        let period = match probe.period_seconds {
            Some(0) => AGGRESSIVE,
            other => secs(other, 10),
        };
        Ok(Plan {
            check,
            port,
            initial_delay: secs(probe.initial_delay_seconds, 0),
            period,
            timeout: secs(probe.timeout_seconds, 1).max(Duration::from_millis(100)),
            success_threshold: probe.success_threshold.map_or(1, |n| n.max(1) as u32),
            failure_threshold: probe.failure_threshold.map_or(3, |n| n.max(1) as u32),
        })
    }
}

/// Consecutive results against a probe's thresholds.
#[derive(Debug, Clone, Default)]
pub struct Thresholds {
    successes: u32,
    failures: u32,
    /// The last verdict (None until a threshold is first reached).
    pub state: Option<bool>,
}

impl Thresholds {
    /// Record a result; returns the new verdict when it changed.
    pub fn record(&mut self, ok: bool, plan: &Plan) -> Option<bool> {
        if ok {
            self.successes += 1;
            self.failures = 0;
            if self.successes >= plan.success_threshold && self.state != Some(true) {
                self.state = Some(true);
                return Some(true);
            }
        } else {
            self.failures += 1;
            self.successes = 0;
            if self.failures >= plan.failure_threshold && self.state != Some(false) {
                self.state = Some(false);
                return Some(false);
            }
        }
        None
    }
}

/// Where and how a probe reaches an instance.
#[derive(Debug, Clone)]
pub struct Target {
    /// The instance's serving port (the app listens there).
    pub port: u16,
    /// Other container ports as the host reaches them (a podman instance publishes each port a
    /// probe names from its own network namespace); a port not listed is reached as is.
    pub published: Vec<(u16, u16)>,
    /// How to run a command in the container.
    pub exec: Exec,
}

#[derive(Debug, Clone)]
pub enum Exec {
    /// A host process: the command runs with the container's environment and directory.
    Process {
        /// Runs the command as the container (`setpriv …`).
        prefix: Vec<String>,
        env: Vec<(String, String)>,
        workdir: Option<PathBuf>,
    },
    /// `podman exec` into the named container.
    Podman {
        container: String,
        global: Vec<String>,
    },
}

/// Run the check once; `Err` says why it failed.
pub async fn check(plan: &Plan, target: &Target) -> Result<(), String> {
    let port = match plan.port {
        Port::Instance => target.port,
        Port::Fixed(p) => target
            .published
            .iter()
            .find(|(inside, _)| *inside == p)
            .map_or(p, |(_, host)| *host),
    };
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let run = async {
        match &plan.check {
            Check::Tcp => tokio::net::TcpStream::connect(addr)
                .await
                .map(drop)
                .map_err(|e| format!("dial tcp {addr}: {e}")),
            Check::Http { path, headers } => http_get(addr, path, headers).await,
            Check::Exec(cmd) => exec(cmd, &target.exec).await,
            Check::Grpc { service } => grpc(addr, service).await,
        }
    };
    match tokio::time::timeout(plan.timeout, run).await {
        Ok(r) => r,
        Err(_) => Err(format!("timed out after {:?}", plan.timeout)),
    }
}

async fn http_get(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(String, String)],
) -> Result<(), String> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("Get \"http://{addr}{path}\": {e}"))?;
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.32\r\nAccept: */*\r\nConnection: close\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let m = s.read(&mut buf[n..]).await.map_err(|e| e.to_string())?;
        if m == 0 {
            break;
        }
        n += m;
    }
    let line = String::from_utf8_lossy(&buf[..n]);
    let code: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("HTTP probe got {line:?}"))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

async fn exec(cmd: &[String], how: &Exec) -> Result<(), String> {
    let mut c = match how {
        Exec::Process {
            prefix,
            env,
            workdir,
        } => {
            let full: Vec<&String> = prefix.iter().chain(cmd).collect();
            let mut c = tokio::process::Command::new(full[0]);
            c.args(&full[1..]).env_clear().envs(env.iter().cloned());
            if let Ok(path) = std::env::var("PATH")
                && !env.iter().any(|(k, _)| k == "PATH")
            {
                c.env("PATH", path);
            }
            if let Some(d) = workdir {
                c.current_dir(d);
            }
            c
        }
        Exec::Podman { container, global } => {
            let mut c = tokio::process::Command::new("podman");
            c.args(global).arg("exec").arg(container).args(cmd);
            c
        }
    };
    let out = c
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("exec {:?}: {e}", cmd[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        Err(format!(
            "command {cmd:?} exited with {}: {}",
            out.status.code().unwrap_or(-1),
            text.trim()
        ))
    }
}

/// `grpc.health.v1.Health/Check` over h2c.
async fn grpc(addr: std::net::SocketAddr, service: &str) -> Result<(), String> {
    use http_body_util::{BodyExt, Full};
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("dial {addr}: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .map_err(|e| format!("h2c to {addr}: {e}"))?;
    tokio::spawn(conn);
    // HealthCheckRequest { service = 1 } in a gRPC frame (no compression, length-prefixed).
    let mut msg = Vec::new();
    if !service.is_empty() {
        msg.push(0x0a);
        msg.push(service.len() as u8);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg);
    let req = http::Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(bytes::Bytes::from(frame)))
        .map_err(|e| e.to_string())?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| format!("gRPC health check: {e}"))?;
    let collected = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    let status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("0")
        .to_string();
    let body = collected.to_bytes();
    if status != "0" {
        return Err(format!("gRPC health check failed: grpc-status {status}"));
    }
    // HealthCheckResponse { status = 1: SERVING }
    match body.get(5..) {
        Some([0x08, 1, ..]) => Ok(()),
        _ => Err("gRPC health check: the service is not SERVING".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ExecAction, HTTPGetAction};

    fn container() -> Container {
        serde_json::from_value(
            serde_json::json!({"name": "app", "ports": [{"name": "admin", "containerPort": 9000}]}),
        )
        .unwrap_or_default()
    }

    #[test]
    fn plans_follow_the_kubelets_defaults_and_knatives_aggressive_period() {
        let p = Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/healthz".into()),
                port: IntOrString::Int(8080),
                ..Default::default()
            }),
            period_seconds: Some(0),
            ..Default::default()
        };
        let plan =
            Plan::of(&p, &container(), 8080, "readinessProbe").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            plan.port,
            Port::Instance,
            "the declared port is the instance's"
        );
        assert_eq!(plan.period, AGGRESSIVE);
        assert_eq!((plan.failure_threshold, plan.success_threshold), (3, 1));
        let p = Probe {
            tcp_socket: Some(k8s_openapi::api::core::v1::TCPSocketAction {
                port: IntOrString::String("admin".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            Plan::of(&p, &container(), 8080, "livenessProbe").map(|p| p.port),
            Ok(Port::Fixed(9000))
        );
        let p = Probe {
            tcp_socket: Some(k8s_openapi::api::core::v1::TCPSocketAction {
                port: IntOrString::String("nope".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(
            Plan::of(&p, &container(), 8080, "livenessProbe")
                .is_err_and(|e| e.contains("livenessProbe.tcpSocket.port"))
        );
        let p = Probe {
            exec: Some(ExecAction {
                command: Some(vec![]),
            }),
            ..Default::default()
        };
        assert!(Plan::of(&p, &container(), 8080, "readinessProbe").is_err());
    }

    #[test]
    fn thresholds() {
        let p = Probe {
            failure_threshold: Some(2),
            success_threshold: Some(2),
            ..Default::default()
        };
        let plan = Plan::of(&p, &container(), 8080, "x").unwrap_or_else(|e| panic!("{e}"));
        let mut t = Thresholds::default();
        assert_eq!(t.record(true, &plan), None);
        assert_eq!(t.record(true, &plan), Some(true));
        assert_eq!(t.record(false, &plan), None);
        assert_eq!(t.record(true, &plan), None, "a success resets the failures");
        assert_eq!(t.record(false, &plan), None);
        assert_eq!(t.record(false, &plan), Some(false));
        assert_eq!(t.record(false, &plan), None, "reported once");
    }

    #[tokio::test]
    async fn checks_run() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut b = [0u8; 1024];
                let n = s.read(&mut b).await.unwrap_or(0);
                let ok = String::from_utf8_lossy(&b[..n]).starts_with("GET /ok ");
                let answer: &[u8] = if ok {
                    b"HTTP/1.1 204 No Content\r\n\r\n"
                } else {
                    b"HTTP/1.1 500 Oops\r\n\r\n"
                };
                let _ = s.write_all(answer).await;
            }
        });
        let target = Target {
            port,
            published: vec![],
            exec: Exec::Process {
                prefix: vec![],
                env: vec![("X".into(), "1".into())],
                workdir: None,
            },
        };
        // A port the probe names inside a network namespace, reached where it is published.
        let published = Target {
            port: 1,
            published: vec![(9000, port)],
            ..target.clone()
        };
        let fixed = Plan {
            check: Check::Tcp,
            port: Port::Fixed(9000),
            initial_delay: Duration::ZERO,
            period: AGGRESSIVE,
            timeout: Duration::from_secs(2),
            success_threshold: 1,
            failure_threshold: 1,
        };
        assert_eq!(check(&fixed, &published).await, Ok(()));
        let plan = |check| Plan {
            check,
            port: Port::Instance,
            initial_delay: Duration::ZERO,
            period: AGGRESSIVE,
            timeout: Duration::from_secs(2),
            success_threshold: 1,
            failure_threshold: 1,
        };
        assert_eq!(check(&plan(Check::Tcp), &target).await, Ok(()));
        assert_eq!(
            check(
                &plan(Check::Http {
                    path: "/ok".into(),
                    headers: vec![]
                }),
                &target
            )
            .await,
            Ok(())
        );
        assert!(
            check(
                &plan(Check::Http {
                    path: "/bad".into(),
                    headers: vec![]
                }),
                &target
            )
            .await
            .is_err_and(|e| e.contains("500"))
        );
        assert_eq!(
            check(
                &plan(Check::Exec(vec![
                    "sh".into(),
                    "-c".into(),
                    "test \"$X\" = 1".into()
                ])),
                &target
            )
            .await,
            Ok(())
        );
        assert!(
            check(&plan(Check::Exec(vec!["false".into()])), &target)
                .await
                .is_err()
        );
    }
}
