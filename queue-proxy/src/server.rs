//! Listeners and lifecycle: the serving, admin, stats and metrics ports, the prober, the stats
//! ticker, and the drain on SIGTERM.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::body::{ProxyBody, text};
use crate::config::Config;
use crate::drain::Drain;
use crate::proxy::{Shared, handle};

/// How long open connections get to finish after the drain, before the process exits.
const CONNECTION_GRACE: Duration = Duration::from_secs(5);

/// The addresses the queue-proxy listens on, printed as one JSON line at startup so that a
/// supervisor (local mode) can use ports chosen by the OS.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Bound {
    pub serving: SocketAddr,
    pub admin: SocketAddr,
    pub stats: SocketAddr,
    pub metrics: SocketAddr,
    /// The app's readiness as this queue-proxy's prober sees it, for a supervisor in the same
    /// process (local mode) to follow without polling.
    #[serde(skip)]
    pub ready: watch::Receiver<bool>,
}

async fn serve<H, F>(listener: TcpListener, handler: H, mut stop: watch::Receiver<bool>)
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .keep_alive(true)
        .timer(hyper_util::rt::TokioTimer::new());
    builder.http2().timer(hyper_util::rt::TokioTimer::new());
    loop {
        tokio::select! {
            // Out of file descriptors and the like: backs off instead of spinning.
            (stream, remote) = http1::accept::accept(&listener) => {
                let _ = stream.set_nodelay(true);
                let h = handler.clone();
                let svc = service_fn(move |req| {
                    let fut = h(req, remote);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(CONNECTION_GRACE, graceful.shutdown()).await;
}

fn not_found() -> Response<ProxyBody> {
    let mut r = Response::new(text("not found\n"));
    *r.status_mut() = StatusCode::NOT_FOUND;
    r
}

/// Start draining once, from SIGTERM or `/wait-for-drain`.
fn begin_drain(shared: &Arc<Shared>) {
    if shared.drain.start() {
        tracing::info!(quiet = ?shared.cfg.drain_quiet_period, "draining");
        let s = shared.clone();
        tokio::spawn(async move {
            let s2 = s.clone();
            s.drain.run(move || s2.in_flight(), s.cfg.timeout).await;
        });
    }
}

/// Run the queue-proxy until it has drained after `terminate` resolves (or after a
/// `/wait-for-drain` call). `on_bound` receives the listening addresses.
pub async fn run(
    cfg: Config,
    terminate: impl Future<Output = ()>,
    on_bound: impl FnOnce(Bound),
) -> std::io::Result<()> {
    let bind = |port: u16| TcpListener::bind(SocketAddr::new(cfg.bind, port));
    let (serving, admin, stats, metrics) = (
        bind(cfg.serving_port).await?,
        bind(cfg.admin_port).await?,
        bind(cfg.stats_port).await?,
        bind(cfg.user_metrics_port).await?,
    );
    let (ready_tx, ready_rx) = watch::channel(false);
    on_bound(Bound {
        serving: serving.local_addr()?,
        admin: admin.local_addr()?,
        stats: stats.local_addr()?,
        metrics: metrics.local_addr()?,
        ready: ready_rx.clone(),
    });

    let probe_now = Arc::new(tokio::sync::Notify::new());
    tokio::spawn(crate::probe::run(
        cfg.readiness_probe.plan(cfg.user_host, cfg.user_port),
        ready_tx,
        probe_now.clone(),
    ));
    let drain = Drain::new(cfg.drain_quiet_period);
    let traces = match &cfg.otlp_endpoint {
        Some(endpoint) => Some(
            ebb_traces::Traces::new(
                endpoint,
                "queue-proxy",
                vec![
                    ebb_traces::KeyValue::new("k8s.namespace.name", cfg.namespace.clone()),
                    ebb_traces::KeyValue::new("k8s.pod.name", cfg.pod.clone()),
                ],
            )
            .map_err(std::io::Error::other)?,
        ),
        None => None,
    };
    let shared = Shared::new(cfg, drain, ready_rx, probe_now, traces);
    let (stop_tx, stop_rx) = watch::channel(false);
    let latest = Arc::new(Mutex::new(wire::Stat {
        pod_name: shared.cfg.pod.clone(),
        ..wire::Stat::default()
    }));

    let mut servers = tokio::task::JoinSet::new();
    let s = shared.clone();
    servers.spawn(serve(
        serving,
        move |req, remote| handle(s.clone(), req, remote),
        stop_rx.clone(),
    ));
    let s = shared.clone();
    servers.spawn(serve(
        admin,
        move |req, _| {
            let s = s.clone();
            async move {
                match req.uri().path() {
                    "/wait-for-drain" => {
                        begin_drain(&s);
                        s.drain.wait().await;
                        Response::new(text("drained\n"))
                    }
                    _ => not_found(),
                }
            }
        },
        stop_rx.clone(),
    ));
    let l = latest.clone();
    servers.spawn(serve(
        stats,
        move |req, _| {
            let l = l.clone();
            async move {
                match req.uri().path() {
                    "/" | wire::STATS_PATH => {
                        let body = l.lock().map(|s| s.to_json()).unwrap_or_default();
                        let mut r = Response::new(text(body));
                        r.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("application/json"),
                        );
                        r
                    }
                    _ => not_found(),
                }
            }
        },
        stop_rx.clone(),
    ));
    let s = shared.clone();
    servers.spawn(serve(
        metrics,
        move |req, _| {
            let s = s.clone();
            async move {
                match req.uri().path() {
                    "/metrics" => {
                        let mut r = Response::new(text(s.metrics.encode()));
                        r.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static(
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            ),
                        );
                        r
                    }
                    _ => not_found(),
                }
            }
        },
        stop_rx.clone(),
    ));

    // Close a stats window every second.
    let s = shared.clone();
    let started = std::time::Instant::now();
    let ticker = tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            every.tick().await;
            let now = std::time::Instant::now();
            let Ok(report) = s.tracker.lock().map(|mut t| t.roll(now)) else {
                continue;
            };
            s.metrics
                .ready
                .set(i64::from(*s.ready.borrow() && !s.drain.is_draining()));
            if let Ok(mut stat) = latest.lock() {
                *stat = wire::Stat {
                    pod_name: s.cfg.pod.clone(),
                    average_concurrency: report.average_concurrency,
                    average_proxied_concurrency: report.average_proxied_concurrency,
                    request_count: report.request_count as f64,
                    proxied_request_count: report.proxied_request_count as f64,
                    process_uptime: now.duration_since(started).as_secs_f64(),
                    window: report.window.as_secs_f64(),
                    seq: report.seq,
                };
            }
        }
    });

    tokio::select! {
        _ = terminate => begin_drain(&shared),
        _ = shared.drain.wait() => {}
    }
    shared.drain.wait().await;
    tracing::info!("drained; exiting");
    let _ = stop_tx.send(true);
    while servers.join_next().await.is_some() {}
    ticker.abort();
    if shared.traces.is_some() {
        // Export what is still buffered; bounded, so a dead collector cannot hold up exit.
        let s = shared.clone();
        let flush = tokio::task::spawn_blocking(move || {
            if let Some(t) = &s.traces {
                t.shutdown();
            }
        });
        let _ = tokio::time::timeout(Duration::from_secs(5), flush).await;
    }
    Ok(())
}
