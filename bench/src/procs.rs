//! Child processes of a benchmark run and what /proc says about them.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A child that is killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM first: nginx's master stops its workers only when asked; SIGKILL would leave
        // them running.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        for _ in 0..100 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// User + system CPU seconds used so far.
    pub fn cpu_seconds(&self) -> f64 {
        stat_cpu(self.pid()).map_or(0.0, |(_, cpu)| cpu)
    }

    /// User + system CPU seconds used so far by this process and its live children (nginx's
    /// workers are children of its master).
    pub fn tree_cpu_seconds(&self) -> f64 {
        let me = self.pid();
        let children: f64 = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(stat_cpu)
            .filter(|(ppid, _)| *ppid == me)
            .map(|(_, cpu)| cpu)
            .sum();
        self.cpu_seconds() + children
    }

    /// (peak, current) resident set in KiB.
    pub fn rss_kib(&self) -> (u64, u64) {
        testkit::memory_kib(self.pid())
    }
}

/// (parent pid, user + system CPU seconds) of a process.
fn stat_cpu(pid: u32) -> Option<(u32, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after ") ".
    let rest = stat.rsplit_once(") ")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // ppid, utime and stime are fields 4, 14 and 15 of /proc/pid/stat, i.e. 1, 11 and 12 here.
    Some((field(1) as u32, (field(11) + field(12)) / clock_ticks()))
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(ticks_per_second)
}

fn ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub async fn wait_listening(addr: SocketAddr) -> anyhow::Result<()> {
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::bail!("nothing listens on {addr}")
}

/// The trivial app: this binary's `app` subcommand.
pub fn start_app(port: u16) -> anyhow::Result<Proc> {
    let me = std::env::current_exe()?;
    Ok(Proc(
        Command::new(me)
            .args(["app", "--port", &port.to_string()])
            .stdout(Stdio::null())
            .spawn()?,
    ))
}

/// A queue-proxy in front of `app_port`; returns it and its serving address.
pub fn start_queue_proxy(binary: &Path, app_port: u16) -> anyhow::Result<(Proc, SocketAddr)> {
    let mut child = Command::new(binary)
        .env("QUEUE_BIND_ADDRESS", "127.0.0.1")
        .env("QUEUE_SERVING_PORT", "0")
        .env("QUEUE_ADMIN_PORT", "0")
        .env("QUEUE_METRICS_PORT", "0")
        .env("USER_METRICS_PORT", "0")
        .env("USER_PORT", app_port.to_string())
        .env("SERVING_REVISION", "bench-00001")
        .env("QUEUE_PROXY_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        BufReader::new(out).read_line(&mut line)?;
    }
    let v: serde_json::Value = serde_json::from_str(&line)?;
    let addr: SocketAddr = v["serving"].as_str().unwrap_or_default().parse()?;
    Ok((Proc(child), addr))
}

/// nginx as the same hop: one worker, keep-alive to the app, no access log.
pub fn start_nginx(port: u16, app_port: u16, dir: &Path) -> anyhow::Result<Proc> {
    std::fs::create_dir_all(dir.join("logs"))?;
    let conf = format!(
        "worker_processes 1;\ndaemon off;\npid {dir}/nginx.pid;\nerror_log {dir}/logs/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 1000000;\n  client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n\
           fastcgi_temp_path {dir}/fastcgi;\n  uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n\
           upstream app {{ server 127.0.0.1:{app_port}; keepalive 256; }}\n\
           server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://app;\n\
               proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n",
        dir = dir.display()
    );
    let path: PathBuf = dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    let nginx = ["/usr/sbin/nginx", "nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists() || *p == "nginx")
        .unwrap_or("nginx");
    Ok(Proc(
        Command::new(nginx)
            .args([
                "-p",
                &dir.display().to_string(),
                "-c",
                &path.display().to_string(),
            ])
            .stderr(Stdio::null())
            .spawn()?,
    ))
}
