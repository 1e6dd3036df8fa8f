//! `ebb-bench`: benchmarks that print figures, each comparing Ebb with a baseline measured in
//! the same run on the same machine.
//!
//! - `ebb-bench queue-proxy`: a trivial app reached directly, through the queue-proxy and
//!   through nginx (one worker, keep-alive upstream), all on loopback.
//! - `ebb-bench activator`: the gateway as a hop against nginx, memory per held request,
//!   instance-ready to first response.
//! - `ebb-bench autoscaler`: one KPA tick over 10,000 revisions, stat intake, poke latency.
//! - `ebb-bench coldstart`: first request to a revision at zero through `ebb local up`,
//!   minus the app's own start time.
//! - `ebb-bench api`: local mode's Kubernetes API: kubectl and the ebb CLI applying and
//!   listing 1,000 Services; list and watch latency with 10,000 objects.
//! - `ebb-bench controller`: Kubernetes mode's controller with 5,000 Services against the fake
//!   API server: time to all Ready, CPU, RSS, API requests per Service, CPU at rest.
//! - `ebb-bench app --port N`: the trivial app (used by the above).
//! - `ebb-bench pingora --port N --upstream ADDR`: pingora alone as a hop (the activator
//!   benchmark's second baseline).

/// The allocator the shipped binaries use (`ebb`, `ebb-activator`, the queue-proxy), so the
/// gateway and queue-proxy measured here are the ones users run.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod api;
mod coldstart;
mod controller;
mod gateway;
mod kpa;
mod load;
mod procs;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

pub(crate) fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("app") => {
            let port: u16 = arg(&args, "--port", "8080").parse()?;
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(app(port))
        }
        Some("gateway") => {
            let port: u16 = arg(&args, "--port", "8080").parse()?;
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(gateway::gateway_process(port))
        }
        Some("pingora") => {
            let port: u16 = arg(&args, "--port", "8080").parse()?;
            let upstream: SocketAddr = arg(&args, "--upstream", "").parse()?;
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(gateway::pingora_process(port, upstream))
        }
        Some("activator") => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?
            .block_on(gateway::run(&args)),
        Some("api") => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(api::run(&args)),
        Some("controller") => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(controller::run(&args)),
        Some("coldstart") => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?
            .block_on(coldstart::run(&args)),
        Some("autoscaler") => kpa::run(arg(&args, "--revisions", "10000").parse()?),
        Some("queue-proxy") => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?
            .block_on(queue_proxy_bench(&args)),
        _ => {
            eprintln!(
                "usage: ebb-bench activator [--rate 1000] [--seconds 10] [--max-seconds 5] [--held 10000]\n       ebb-bench autoscaler [--revisions 10000]\n       ebb-bench queue-proxy [--queue-proxy-bin PATH] [--rate 1000] [--seconds 10] [--max-seconds 5] [--conns 32] [--max-conns 64]\n       ebb-bench coldstart [--wakes 20]\n       ebb-bench controller [--services 5000] [--max-seconds 600]\n       ebb-bench app --port N"
            );
            std::process::exit(2)
        }
    }
}

/// The trivial app: reads the request body, answers 200 "hello" on every path, HTTP/1.1
/// keep-alive, one thread.
async fn app(port: u16) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async {
                // Read the body, as real apps do (an unread body costs hyper the connection).
                let _ = http_body_util::BodyExt::collect(req.into_body()).await;
                Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                    b"hello",
                ))))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

struct Row {
    name: &'static str,
    p50: f64,
    p99: f64,
    errors: u64,
    max_rps: f64,
}

async fn measure(
    name: &'static str,
    addr: SocketAddr,
    rate: u64,
    secs: u64,
    max_secs: u64,
    conns: u64,
    max_conns: u64,
) -> anyhow::Result<(Row, u64)> {
    // Warm up connections and caches.
    load::max_throughput(
        addr,
        "bench.default.localhost",
        Duration::from_millis(500),
        8,
    )
    .await?;
    let lat = load::fixed_rate(
        addr,
        "bench.default.localhost",
        rate,
        Duration::from_secs(secs),
        conns,
    )
    .await?;
    let (ok, err) = load::max_throughput(
        addr,
        "bench.default.localhost",
        Duration::from_secs(max_secs),
        max_conns,
    )
    .await?;
    Ok((
        Row {
            name,
            p50: lat.percentile(50.0),
            p99: lat.percentile(99.0),
            errors: lat.errors + err,
            max_rps: ok as f64 / max_secs as f64,
        },
        ok,
    ))
}

async fn queue_proxy_bench(args: &[String]) -> anyhow::Result<()> {
    let rate: u64 = arg(args, "--rate", "1000").parse()?;
    let secs: u64 = arg(args, "--seconds", "10").parse()?;
    let max_secs: u64 = arg(args, "--max-seconds", "5").parse()?;
    let conns: u64 = arg(args, "--conns", "32").parse()?;
    let max_conns: u64 = arg(args, "--max-conns", "64").parse()?;
    let qp_bin = PathBuf::from(arg(args, "--queue-proxy-bin", "target/release/queue-proxy"));
    anyhow::ensure!(
        qp_bin.exists(),
        "{} not found (cargo build --release -p queue-proxy)",
        qp_bin.display()
    );

    let app_port = procs::free_port()?;
    let _app = procs::start_app(app_port)?;
    let app_addr: SocketAddr = ([127, 0, 0, 1], app_port).into();
    procs::wait_listening(app_addr).await?;
    let (qp, qp_addr) = procs::start_queue_proxy(&qp_bin, app_port)?;
    procs::wait_listening(qp_addr).await?;
    let nginx_port = procs::free_port()?;
    let dir = std::env::temp_dir().join(format!("ebb-bench-nginx-{}", std::process::id()));
    let _nginx = procs::start_nginx(nginx_port, app_port, &dir)
        .context("starting nginx (apt-get install nginx-light)")?;
    let nginx_addr: SocketAddr = ([127, 0, 0, 1], nginx_port).into();
    procs::wait_listening(nginx_addr)
        .await
        .context("nginx did not start")?;
    // The queue-proxy must have seen the app ready before it is measured.
    tokio::time::sleep(Duration::from_millis(200)).await;

    println!(
        "queue-proxy benchmark: trivial app on loopback, {rate} rps for {secs}s over {conns} connections; max throughput with {max_conns} connections for {max_secs}s"
    );
    let (direct, _) = measure("direct", app_addr, rate, secs, max_secs, conns, max_conns).await?;
    let cpu_before = qp.cpu_seconds();
    let (through_qp, qp_max_ok) = measure(
        "queue-proxy",
        qp_addr,
        rate,
        secs,
        max_secs,
        conns,
        max_conns,
    )
    .await?;
    let cpu_used = qp.cpu_seconds() - cpu_before;
    let qp_requests = rate * secs + qp_max_ok;
    let (peak_kib, _) = qp.rss_kib();
    let (through_nginx, _) =
        measure("nginx", nginx_addr, rate, secs, max_secs, conns, max_conns).await?;

    println!();
    println!("| path | p50 µs | p99 µs | added p50 µs | added p99 µs | max rps | errors |");
    println!("|---|---|---|---|---|---|---|");
    for r in [&direct, &through_qp, &through_nginx] {
        println!(
            "| {} | {:.0} | {:.0} | {:+.0} | {:+.0} | {:.0} | {} |",
            r.name,
            r.p50,
            r.p99,
            r.p50 - direct.p50,
            r.p99 - direct.p99,
            r.max_rps,
            r.errors
        );
    }
    println!();
    println!("queue-proxy peak RSS: {:.1} MiB", peak_kib as f64 / 1024.0);
    println!(
        "queue-proxy CPU: {:.3} CPU-seconds per 1000 requests ({cpu_used:.2} s over {qp_requests} requests)",
        cpu_used / qp_requests as f64 * 1000.0
    );
    println!(
        "ratios vs nginx: added p50 {:.2}x, added p99 {:.2}x, max throughput {:.2}x",
        (through_qp.p50 - direct.p50) / (through_nginx.p50 - direct.p50),
        (through_qp.p99 - direct.p99) / (through_nginx.p99 - direct.p99),
        through_qp.max_rps / through_nginx.max_rps
    );
    if std::env::var_os("EBB_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
