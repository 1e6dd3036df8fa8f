//! Test harness: a real queue-proxy process in front of an app served by this test process on
//! a real loopback socket, and a plain HTTP client.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use hyper_util::rt::TokioExecutor;

#[allow(unused_imports)] // each test binary uses some of these
pub use testkit::{AppBody, full, spawn_app};

#[derive(Debug, serde::Deserialize)]
pub struct Bound {
    pub serving: SocketAddr,
    pub admin: SocketAddr,
    pub stats: SocketAddr,
    pub metrics: SocketAddr,
}

/// A queue-proxy process; killed when dropped.
pub struct QueueProxy {
    pub child: Child,
    pub bound: Bound,
}

impl QueueProxy {
    pub fn start(user_port: u16, extra: &[(&str, &str)]) -> QueueProxy {
        let mut env = testkit::queue_proxy_env(user_port);
        for (k, v) in [
            ("SERVING_SERVICE", "hello"),
            ("SERVING_CONFIGURATION", "hello"),
            ("SERVING_REVISION", "hello-00001"),
            ("SERVING_POD", "hello-00001-pod"),
            ("QUEUE_PROXY_LOG", "warn"),
        ] {
            env.insert(k.to_string(), v.to_string());
        }
        for (k, v) in extra {
            env.insert(k.to_string(), v.to_string());
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_queue-proxy"))
            .env_clear()
            .envs(&env)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn queue-proxy");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read bound line");
        let bound: Bound =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("bound line {line:?}: {e}"));
        QueueProxy { child, bound }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.bound.serving)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Peak and current resident memory in KiB, from /proc.
    pub fn memory_kib(&self) -> (u64, u64) {
        testkit::memory_kib(self.pid())
    }

    /// Wait for the app to be reported ready.
    pub async fn wait_ready(&self) {
        let c = client();
        for _ in 0..400 {
            let req = Request::get(self.url("/"))
                .header("K-Network-Probe", "queue")
                .body(empty())
                .unwrap();
            if let Ok(r) = c.request(req).await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("queue-proxy never became ready");
    }

    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for QueueProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub type TestClient =
    hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, AppBody>;

pub fn client() -> TestClient {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(64)
        .build_http()
}

pub fn empty() -> AppBody {
    full(Bytes::new())
}

/// GET and read the whole body.
pub async fn get(c: &TestClient, url: &str) -> (u16, String) {
    let r = c
        .request(Request::get(url).body(empty()).unwrap())
        .await
        .expect("request");
    let status = r.status().as_u16();
    let body = r
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    (status, String::from_utf8_lossy(&body).into_owned())
}

pub fn shared<T: Default>() -> Arc<std::sync::Mutex<T>> {
    Arc::new(std::sync::Mutex::new(T::default()))
}
