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

/// One hop's figures.
struct Row {
    name: &'static str,
    p50: f64,
    p99: f64,
    rps: f64,
    cpu_per_request: Option<f64>,
    /// Flat out with 1 KiB POSTs (a structured CloudEvent's size).
    post_rps: f64,
    post_cpu_per_request: Option<f64>,
    errors: u64,
}

/// The POST body of the benchmark: a structured CloudEvent of about 1 KiB.
fn cloudevent() -> bytes::Bytes {
    let data = "x".repeat(900);
    bytes::Bytes::from(format!(
        "{{\"specversion\":\"1.0\",\"type\":\"dev.ebb.bench\",\"source\":\"/bench\",\"id\":\"1\",\"data\":\"{data}\"}}"
    ))
}

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

/// `ebb-bench pingora --port N --upstream ADDR`: pingora alone as the same hop — every request
/// to one upstream, none of Ebb's routing, admission, throttling or metrics — accepted the way
/// Ebb's gateway accepts (its own loop, the same write-coalescing stream). The difference
/// between this and the activator is Ebb's; between this and nginx, pingora's.
pub async fn pingora_process(port: u16, upstream: SocketAddr) -> anyhow::Result<()> {
    use pingora_core::apps::ServerApp;

    struct Forward(SocketAddr);

    #[async_trait::async_trait]
    impl pingora_proxy::ProxyHttp for Forward {
        type CTX = ();
        fn new_ctx(&self) {}
        async fn upstream_peer(
            &self,
            _: &mut pingora_proxy::Session,
            _: &mut (),
        ) -> pingora_error::Result<Box<pingora_core::upstreams::peer::HttpPeer>> {
            Ok(Box::new(pingora_core::upstreams::peer::HttpPeer::new(
                self.0,
                false,
                String::new(),
            )))
        }
    }

    let conf = Arc::new(pingora_core::server::configuration::ServerConf::default());
    let proxy = Arc::new(pingora_proxy::http_proxy(&conf, Forward(upstream)));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    println!("listening");
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let proxy = proxy.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let l4: pingora_core::protocols::l4::stream::Stream = tcp.into();
            let _ = proxy
                .process_new(Box::new(activator::buffered::Buffered::new(l4)), &shutdown)
                .await;
        });
    }
}

/// The load phases every hop goes through.
struct Phases {
    rate: u64,
    secs: u64,
    max_secs: u64,
}

impl Phases {
    /// Warm up; latency at a fixed rate; then flat out. CPU per request is that of the hop's
    /// process(es) during the flat-out phase: steadier than throughput on a shared machine,
    /// where the hop competes with the load generator for the same cores.
    async fn measure(
        &self,
        name: &'static str,
        addr: SocketAddr,
        hop: Option<&Proc>,
    ) -> anyhow::Result<Row> {
        load::max_throughput(addr, HOST, Duration::from_millis(500), 8).await?;
        let lat =
            load::fixed_rate(addr, HOST, self.rate, Duration::from_secs(self.secs), 32).await?;
        let cpu_before = hop.map(Proc::tree_cpu_seconds);
        let (ok, err) =
            load::max_throughput(addr, HOST, Duration::from_secs(self.max_secs), 64).await?;
        let cpu_per_request = hop
            .zip(cpu_before)
            .map(|(p, before)| (p.tree_cpu_seconds() - before) * 1e6 / ok.max(1) as f64);
        let cpu_before = hop.map(Proc::tree_cpu_seconds);
        let (post_ok, post_err) = load::max_throughput_post(
            addr,
            HOST,
            Duration::from_secs(self.max_secs),
            64,
            cloudevent(),
        )
        .await?;
        let post_cpu_per_request = hop
            .zip(cpu_before)
            .map(|(p, before)| (p.tree_cpu_seconds() - before) * 1e6 / post_ok.max(1) as f64);
        Ok(Row {
            name,
            p50: lat.percentile(50.0),
            p99: lat.percentile(99.0),
            rps: ok as f64 / self.max_secs as f64,
            cpu_per_request,
            post_rps: post_ok as f64 / self.max_secs as f64,
            post_cpu_per_request,
            errors: lat.errors + err + post_err,
        })
    }
}

struct GatewayProc {
    proc: Proc,
    stdin: std::process::ChildStdin,
    addr: SocketAddr,
}

impl GatewayProc {
    /// `ebb-bench ARGS --port FREE`, once it prints "listening".
    fn start(args: &[&str]) -> anyhow::Result<GatewayProc> {
        let port = procs::free_port()?;
        let mut child = Command::new(std::env::current_exe()?)
            .args(args)
            .args(["--port", &port.to_string()])
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
    let mut gw = GatewayProc::start(&["gateway"])?;
    gw.say(&format!("ready {app_addr}"))?;
    let bare = GatewayProc::start(&["pingora", "--upstream", &app_addr.to_string()])?;
    let nginx_port = procs::free_port()?;
    let dir = std::env::temp_dir().join(format!("ebb-bench-nginx-gw-{}", std::process::id()));
    let nginx_proc = procs::start_nginx(nginx_port, app_port, &dir)?;
    let nginx_addr: SocketAddr = ([127, 0, 0, 1], nginx_port).into();
    procs::wait_listening(nginx_addr).await?;

    println!(
        "activator benchmark: trivial app on loopback; {rate} rps for {secs}s over 32 connections; 64 connections flat out for {max_secs}s with GETs, then with 1 KiB POSTs"
    );
    // CPU per request is that of the hop's process(es) during the flat-out phase: steadier
    // than throughput on a shared machine, where the hop competes with the load generator.
    let phases = Phases {
        rate,
        secs,
        max_secs,
    };
    let direct = phases.measure("direct", app_addr, None).await?;
    let through = phases.measure("activator", gw.addr, Some(&gw.proc)).await?;
    let pingora = phases
        .measure("pingora alone", bare.addr, Some(&bare.proc))
        .await?;
    let nginx = phases
        .measure("nginx", nginx_addr, Some(&nginx_proc))
        .await?;
    println!();
    println!(
        "| path | p50 µs | p99 µs | added p50 µs | added p99 µs | max rps | hop CPU µs/request | POST 1 KiB max rps | POST hop CPU µs/request | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let cpu = |c: Option<f64>| c.map_or("–".to_string(), |c| format!("{c:.1}"));
    for r in [&direct, &through, &pingora, &nginx] {
        println!(
            "| {} | {:.0} | {:.0} | {:+.0} | {:+.0} | {:.0} | {} | {:.0} | {} | {} |",
            r.name,
            r.p50,
            r.p99,
            r.p50 - direct.p50,
            r.p99 - direct.p99,
            r.rps,
            cpu(r.cpu_per_request),
            r.post_rps,
            cpu(r.post_cpu_per_request),
            r.errors
        );
    }
    let ratio = |a: Option<f64>, b: Option<f64>| a.unwrap_or(f64::NAN) / b.unwrap_or(f64::NAN);
    let ratios = |other: &Row| {
        format!(
            "added p50 {:.2}x, added p99 {:.2}x, max throughput {:.2}x, CPU per request {:.2}x; POST: max throughput {:.2}x, CPU per request {:.2}x",
            (through.p50 - direct.p50) / (other.p50 - direct.p50),
            (through.p99 - direct.p99) / (other.p99 - direct.p99),
            through.rps / other.rps,
            ratio(through.cpu_per_request, other.cpu_per_request),
            through.post_rps / other.post_rps,
            ratio(through.post_cpu_per_request, other.post_cpu_per_request),
        )
    };
    println!("activator vs nginx: {}", ratios(&nginx));
    println!("activator vs pingora alone: {}", ratios(&pingora));

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
