//! Activator benchmark: the gateway as one hop (against nginx as the same hop), memory per
//! request held while a revision is at zero, and the time from an instance becoming ready to
//! the first held request being answered.
//!
//! The gateway runs as a child process (`ebb-bench gateway`) serving one route,
//! `bench.default.localhost` → revision `bench-00001`, whose instances are set by lines on its
//! stdin (`ready ADDR`, `zero`, `cc N`), the way a backend publishes endpoints.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use activator::gateway::{Gateway, serve};
use activator::revisions::Revisions;
use activator::routes::{Listener, RoutingTable};
use activator::throttler::Limits;

use crate::load;
use crate::procs::{self, Proc};

const HOST: &str = "bench.default.localhost";

/// `ebb-bench gateway --port N`: the gateway with one route; endpoints from stdin.
pub async fn gateway_process(port: u16) -> anyhow::Result<()> {
    let route: serving_api::Route = serde_json::from_value(serde_json::json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Route",
        "metadata": {"name": "bench", "namespace": "default"}, "spec": {},
        "status": {"url": format!("http://{HOST}"), "traffic": [{"revisionName": "bench-00001", "percent": 100}]}
    }))?;
    let (_tx, routes) = tokio::sync::watch::channel(Arc::new(RoutingTable::build([&route])));
    let revisions = Arc::new(Revisions::new(Limits {
        max_queued: 20_000,
        ..Limits::default()
    }));
    let gw = Gateway {
        routes,
        revisions: revisions.clone(),
        listener: Listener::External,
        metrics: Default::default(),
        traces: None,
        poke: Arc::new(|_, _, _| {}),
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let (_stop, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(serve(listener, gw, rx));
    println!("listening");
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(tokio::io::stdin()));
    while let Some(line) = lines.next_line().await? {
        match line.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["ready", addr] => revisions.set_endpoints("default", "bench-00001", &[addr.parse()?]),
            ["zero"] => revisions.set_endpoints("default", "bench-00001", &[]),
            ["cc", n] => revisions.configure(
                "default",
                "bench-00001",
                activator::revisions::RevisionSettings {
                    container_concurrency: n.parse()?,
                    ..Default::default()
                },
            ),
            _ => {}
        }
    }
    Ok(())
}

struct GatewayProc {
    proc: Proc,
    stdin: std::process::ChildStdin,
    addr: SocketAddr,
}

impl GatewayProc {
    fn start() -> anyhow::Result<GatewayProc> {
        let port = procs::free_port()?;
        let mut child = Command::new(std::env::current_exe()?)
            .args(["gateway", "--port", &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdin"))?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            BufReader::new(out).read_line(&mut line)?;
        }
        anyhow::ensure!(
            line.trim() == "listening",
            "gateway did not start: {line:?}"
        );
        Ok(GatewayProc {
            proc: Proc(child),
            stdin,
            addr: ([127, 0, 0, 1], port).into(),
        })
    }

    fn say(&mut self, line: &str) -> anyhow::Result<()> {
        writeln!(self.stdin, "{line}")?;
        self.stdin.flush()?;
        Ok(())
    }
}

pub async fn run(args: &[String]) -> anyhow::Result<()> {
    let arg = |name: &str, default: &str| crate::arg(args, name, default);
    let rate: u64 = arg("--rate", "1000").parse()?;
    let secs: u64 = arg("--seconds", "10").parse()?;
    let max_secs: u64 = arg("--max-seconds", "5").parse()?;
    let held: usize = arg("--held", "10000").parse()?;

    let app_port = procs::free_port()?;
    let _app = procs::start_app(app_port)?;
    let app_addr: SocketAddr = ([127, 0, 0, 1], app_port).into();
    procs::wait_listening(app_addr).await?;
    let mut gw = GatewayProc::start()?;
    gw.say(&format!("ready {app_addr}"))?;
    let nginx_port = procs::free_port()?;
    let dir = std::env::temp_dir().join(format!("ebb-bench-nginx-gw-{}", std::process::id()));
    let _nginx = procs::start_nginx(nginx_port, app_port, &dir)?;
    let nginx_addr: SocketAddr = ([127, 0, 0, 1], nginx_port).into();
    procs::wait_listening(nginx_addr).await?;

    println!(
        "activator benchmark: trivial app on loopback; {rate} rps for {secs}s over 32 connections; 64 connections flat out for {max_secs}s"
    );
    let measure = |name: &'static str, addr: SocketAddr| async move {
        load::max_throughput(addr, HOST, Duration::from_millis(500), 8).await?;
        let lat = load::fixed_rate(addr, HOST, rate, Duration::from_secs(secs), 32).await?;
        let (ok, err) = load::max_throughput(addr, HOST, Duration::from_secs(max_secs), 64).await?;
        anyhow::Ok((
            name,
            lat.percentile(50.0),
            lat.percentile(99.0),
            ok as f64 / max_secs as f64,
            lat.errors + err,
        ))
    };
    let direct = measure("direct", app_addr).await?;
    let through = measure("activator", gw.addr).await?;
    let nginx = measure("nginx", nginx_addr).await?;
    println!();
    println!("| path | p50 µs | p99 µs | added p50 µs | added p99 µs | max rps | errors |");
    println!("|---|---|---|---|---|---|---|");
    for (name, p50, p99, rps, errors) in [direct, through, nginx] {
        println!(
            "| {name} | {p50:.0} | {p99:.0} | {:+.0} | {:+.0} | {rps:.0} | {errors} |",
            p50 - direct.1,
            p99 - direct.2
        );
    }
    println!(
        "ratios vs nginx: added p50 {:.2}x, added p99 {:.2}x, max throughput {:.2}x",
        (through.1 - direct.1) / (nginx.1 - direct.1),
        (through.2 - direct.2) / (nginx.2 - direct.2),
        through.3 / nginx.3
    );

    // Held requests: at zero, `held` connections each send one request and wait. The revision
    // takes 100 at a time per instance (containerConcurrency 100), so releasing them opens
    // ~100 upstream connections, not one per request (which would also exceed this machine's
    // 20,000 file descriptors).
    gw.say("cc 100")?;
    gw.say("zero")?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, rss_before) = gw.proc.rss_kib();
    let mut waiting = Vec::with_capacity(held);
    for _ in 0..held {
        let mut c = load::Conn::open(gw.addr, HOST).await?;
        waiting.push(tokio::spawn(async move { c.get_status("/").await }));
    }
    // Let every request reach the gateway's queue.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, rss_held) = gw.proc.rss_kib();
    let released = Instant::now();
    gw.say(&format!("ready {app_addr}"))?;
    let (mut ok, mut not_ok, mut failed) = (0, 0, Vec::new());
    for w in waiting {
        match w.await? {
            Ok((200, _)) => ok += 1,
            Ok((status, body)) => {
                not_ok += 1;
                failed.push(format!(
                    "{status} {}",
                    String::from_utf8_lossy(&body).trim()
                ));
            }
            Err(e) => failed.push(e.to_string()),
        }
    }
    if not_ok + failed.len() > 0 {
        failed.sort();
        failed.dedup();
        println!(
            "held requests not answered 200: {} ({not_ok} with another status): {failed:?}",
            held - ok
        );
    }
    let drained = released.elapsed();
    let per_request = (rss_held.saturating_sub(rss_before)) as f64 * 1024.0 / held as f64;
    println!();
    println!(
        "{held} requests held at zero: {ok} answered 200 after release (all out in {:.0} ms); gateway RSS {:.1} → {:.1} MiB, {:.2} KiB per held request (connection included)",
        drained.as_secs_f64() * 1e3,
        rss_before as f64 / 1024.0,
        rss_held as f64 / 1024.0,
        per_request / 1024.0
    );

    // Ready → first response: one request waits at zero; the instance is announced; how long
    // until its answer arrives.
    let mut samples = Vec::new();
    for _ in 0..20 {
        gw.say("zero")?;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut c = load::Conn::open(gw.addr, HOST).await?;
        let pending = tokio::spawn(async move {
            let r = c.get("/").await;
            (r, Instant::now())
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let t0 = Instant::now();
        gw.say(&format!("ready {app_addr}"))?;
        let (r, done) = pending.await?;
        anyhow::ensure!(matches!(r, Ok(true)), "held request failed");
        samples.push(done.duration_since(t0).as_secs_f64() * 1e3);
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    println!(
        "instance ready → first held request answered (announcement over a pipe included), 20 wakes: p50 {:.2} ms, max {:.2} ms",
        samples[samples.len() / 2],
        samples[samples.len() - 1]
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
