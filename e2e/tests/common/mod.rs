//! The end-to-end harness: a real `ebb local up` process on loopback ports with its own state
//! directory, the example apps on its PATH, driven through the real `ebb` CLI and real HTTP
//! clients.
#![allow(dead_code)] // each test binary uses part of it

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Where cargo put this package's binaries (the example apps); `ebb` is built next to them.
pub fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_hello"))
        .parent()
        .expect("binary directory")
        .to_path_buf()
}

pub fn ebb_bin() -> PathBuf {
    let p = bin_dir().join("ebb");
    assert!(
        p.exists(),
        "{} is missing: build it first (`cargo build -p ebb`, or run the workspace tests)",
        p.display()
    );
    p
}

pub fn config_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/fast-autoscaler.yaml")
}

/// The test config (`config_file`) plus a config-features map with these flags, as a file.
pub fn config_with_features(flags: &[(&str, &str)]) -> PathBuf {
    config_with("config-features", flags)
}

/// The test config (`config_file`) plus one more config map (not one it already has), as a file.
pub fn config_with(map: &str, data: &[(&str, &str)]) -> PathBuf {
    let mut doc = std::fs::read_to_string(config_file()).expect("test config");
    doc.push_str(&format!(
        "\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {map}\ndata:\n"
    ));
    for (k, v) in data {
        doc.push_str(&format!("  {k}: \"{v}\"\n"));
    }
    let path = std::env::temp_dir().join(format!(
        "ebb-e2e-config-{}-{}.yaml",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::write(&path, doc).expect("config file");
    path
}

pub struct Ebb {
    pub state: PathBuf,
    pub child: Option<Child>,
    pub gateway: SocketAddr,
    pub api: SocketAddr,
    pub extra: Vec<String>,
    pub env: Vec<(String, String)>,
}

fn path_env() -> std::ffi::OsString {
    let mut paths = vec![bin_dir()];
    paths.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(paths).expect("PATH")
}

impl Ebb {
    /// Start local mode with the short autoscaler windows, on free ports.
    pub fn start() -> Ebb {
        Ebb::start_with(&[])
    }

    /// Start with extra `ebb local up` flags.
    pub fn start_with(extra: &[&str]) -> Ebb {
        Ebb::start_full(extra, &[])
    }

    /// Start with extra flags and environment variables.
    pub fn start_full(extra: &[&str], env: &[(&str, &str)]) -> Ebb {
        let state = std::env::temp_dir().join(format!(
            "ebb-e2e-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        let mut ebb = Ebb {
            state,
            child: None,
            gateway: "127.0.0.1:0".parse().expect("addr"),
            api: "127.0.0.1:0".parse().expect("addr"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        ebb.launch();
        ebb
    }

    /// Where `ebb local up`'s output goes.
    pub fn log_path(&self) -> PathBuf {
        std::env::temp_dir().join(format!(
            "{}.log",
            self.state.file_name().unwrap_or_default().to_string_lossy()
        ))
    }

    /// What `ebb local up` printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn launch(&mut self) {
        let _ = std::fs::remove_file(self.state.join("ebb.json"));
        let log = std::fs::File::create(self.log_path()).expect("log file");
        let child = Command::new(ebb_bin())
            .arg("--state")
            .arg(&self.state)
            .args(["local", "up", "--listen", "127.0.0.1:0", "--grace", "5s"])
            .args(if self.extra.iter().any(|a| a == "--config") {
                vec![]
            } else {
                vec!["--config".into(), config_file().into_os_string()]
            })
            .args(&self.extra)
            // The example apps run as host programs unless a test asks for podman (`auto`, the
            // default, would pick podman where it works).
            .args(if self.extra.iter().any(|a| a == "--runtime") {
                &[][..]
            } else {
                &["--runtime", "process"][..]
            })
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("PATH", path_env())
            .env("EBB_LOG", "info")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start ebb");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(self.state.join("ebb.json"))
                && let Ok(v) = serde_json::from_str::<Value>(&text)
            {
                self.gateway = v["gateway"]
                    .as_str()
                    .and_then(|a| a.parse().ok())
                    .expect("gateway");
                self.api = v["api"].as_str().and_then(|a| a.parse().ok()).expect("api");
                return;
            }
            assert!(Instant::now() < deadline, "ebb did not start within 30 s");
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("ebb exited at start: {status}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait (instances are stopped by ebb itself).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
            panic!("ebb did not stop within 30 s of SIGTERM");
        }
    }

    /// SIGKILL: nothing gets cleaned up.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Run the CLI against this instance.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_stdin(args, None)
    }

    pub fn cli_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(ebb_bin());
        cmd.arg("--state").arg(&self.state).args(args);
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("run ebb");
        if let Some(text) = stdin {
            use std::io::Write;
            let mut s = child.stdin.take().expect("stdin");
            s.write_all(text.as_bytes()).expect("write stdin");
        }
        child.wait_with_output().expect("ebb output")
    }

    /// Run the CLI and require success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "ebb {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    pub fn apply(&self, yaml: &str) -> String {
        let out = self.cli_stdin(&["apply", "-f", "-"], Some(yaml));
        assert!(
            out.status.success(),
            "ebb apply failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    pub fn get_json(&self, kind: &str, name: &str) -> Value {
        serde_json::from_str(&self.ok(&["get", kind, name, "-o", "json"])).expect("json")
    }

    /// The API token of the running `ebb` (from `STATE/ebb.json`).
    pub fn token(&self) -> String {
        let text = std::fs::read_to_string(self.state.join("ebb.json")).expect("ebb.json");
        let v: Value = serde_json::from_str(&text).expect("ebb.json is JSON");
        v["token"].as_str().expect("token in ebb.json").to_string()
    }

    /// A client for the local API, from `STATE/kubeconfig` (as kubectl would use it).
    pub async fn kube(&self) -> kube::Client {
        kube_client(&self.state).await
    }

    /// A GET on the local API, parsed (blocking, on a thread of its own; for polling from
    /// tests).
    pub fn api_get(&self, path: &str) -> Value {
        let (state, path) = (self.state.clone(), path.to_string());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let client = kube_client(&state).await;
                let req = http::Request::get(path).body(Vec::new()).expect("request");
                match client.request_text(req).await {
                    Ok(text) => serde_json::from_str(&text).unwrap_or(Value::Null),
                    Err(_) => Value::Null,
                }
            })
        })
        .join()
        .unwrap_or(Value::Null)
    }

    /// Ready instances of a revision, per the runtime.
    pub fn ready_instances(&self, revision: &str) -> usize {
        self.api_get("/ebb/v1/status")["instances"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|i| {
                        i["revision"] == revision && i["ready"] == true && i["stopping"] == false
                    })
                    .count()
            })
            .unwrap_or(0)
    }

    pub fn instances(&self) -> Vec<Value> {
        self.api_get("/ebb/v1/status")["instances"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub fn host(&self, service: &str) -> String {
        format!("{service}.default.localhost")
    }
}

impl Drop for Ebb {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

/// A client for the local API of the state directory `state`, from its kubeconfig.
pub async fn kube_client(state: &Path) -> kube::Client {
    let kubeconfig =
        kube::config::Kubeconfig::read_from(state.join("kubeconfig")).expect("STATE/kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("kubeconfig");
    kube::Client::try_from(config).expect("client")
}

pub fn http_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build_http()
}

/// One request through the gateway with a Host header; returns status and body.
pub async fn request(
    client: &Client<HttpConnector, Full<Bytes>>,
    gateway: SocketAddr,
    host: &str,
    path: &str,
) -> (u16, String) {
    let req = http::Request::get(format!("http://{gateway}{path}"))
        .header(http::header::HOST, host)
        .body(Full::new(Bytes::new()))
        .expect("request");
    match client.request(req).await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).to_string())
                .unwrap_or_else(|e| format!("body error: {e}"));
            (status, body)
        }
        Err(e) => (0, format!("request error: {e}")),
    }
}

/// Poll until `f` is true or the deadline passes (then panic naming `what`).
pub fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !f() {
        assert!(
            started.elapsed() < limit,
            "{what}: not reached within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    started.elapsed()
}

pub fn service_yaml(
    name: &str,
    program: &str,
    extra_annotations: &[(&str, &str)],
    env: &[(&str, &str)],
) -> String {
    let mut y = format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  template:\n"
    );
    if !extra_annotations.is_empty() {
        y.push_str("    metadata:\n      annotations:\n");
        for (k, v) in extra_annotations {
            y.push_str(&format!("        {k}: \"{v}\"\n"));
        }
    }
    y.push_str(&format!(
        "    spec:\n      containers:\n        - image: ebb/{program}\n          command: [\"{program}\"]\n"
    ));
    if !env.is_empty() {
        y.push_str("          env:\n");
        for (k, v) in env {
            y.push_str(&format!(
                "            - name: {k}\n              value: \"{v}\"\n"
            ));
        }
    }
    y
}
