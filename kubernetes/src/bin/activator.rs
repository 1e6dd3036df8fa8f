//! `ebb-activator`: the gateway on Kubernetes. Wiring only; see `ebb_kubernetes::gateway`.
//!
//! Environment: `SYSTEM_NAMESPACE` (default ebb-system), `POD_NAME`,
//! `EBB_ACTIVATOR_ADDRESS` (public routes; default 0.0.0.0:8080),
//! `EBB_ACTIVATOR_INTERNAL_ADDRESS` (cluster-local routes too; default 0.0.0.0:8081),
//! `EBB_ACTIVATOR_METRICS_ADDRESS` (Prometheus and health; default 0.0.0.0:9090),
//! `EBB_AUTOSCALER_SERVICE` (default ebb-autoscaler), `EBB_GRACE` (seconds; default 20),
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (a span per request, continuing `traceparent`), `EBB_LOG`.

/// mimalloc: the proxy paths allocate per request, and glibc's allocator cost ~12% of the
/// gateway's CPU there (`perf`); with mimalloc `ebb-bench` measured ~16% more requests/s.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use activator::gateway::{Gateway, serve_with_grace};
use activator::revisions::Revisions;
use activator::routes::{Listener, RoutingTable};
use activator::throttler::Limits;
use bytes::Bytes;
use ebb_kubernetes::env_or;
use ebb_kubernetes::gateway::{Programmed, Reporter, watch_inputs, watch_service_endpoints};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

async fn bind(var: &str, default: &str) -> anyhow::Result<TcpListener> {
    let addr = env_or(var, default);
    TcpListener::bind(&addr)
        .await
        .map_err(|e| anyhow::anyhow!("{var} {addr}: {e}"))
}

async fn run() -> anyhow::Result<()> {
    let namespace = env_or("SYSTEM_NAMESPACE", ebb_kubernetes::DEFAULT_SYSTEM_NAMESPACE);
    let pod = env_or("POD_NAME", &format!("ebb-activator-{}", std::process::id()));
    let autoscaler_service = env_or("EBB_AUTOSCALER_SERVICE", "ebb-autoscaler");
    let grace = Duration::from_secs(
        env_or("EBB_GRACE", "20")
            .parse()
            .map_err(|_| anyhow::anyhow!("EBB_GRACE: must be a whole number of seconds"))?,
    );
    let client = ebb_kubernetes::client().await?;
    // config-features, read once at start (a change takes a restart): tag-header routing.
    let features = {
        let cms: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
            kube::Api::namespaced(client.clone(), &namespace);
        let data = cms
            .get_opt(serving_api::config::features::NAME)
            .await
            .map_err(|e| anyhow::anyhow!("config-features in {namespace}: {e}"))?
            .and_then(|cm| cm.data)
            .unwrap_or_default();
        serving_api::config::FeaturesConfig::from_map(&data).map_err(|e| anyhow::anyhow!("{e}"))?
    };
    let tag_header = features.on("tag-header-based-routing", None);
    let public = bind("EBB_ACTIVATOR_ADDRESS", "0.0.0.0:8080").await?;
    let internal = bind("EBB_ACTIVATOR_INTERNAL_ADDRESS", "0.0.0.0:8081").await?;
    let metrics_listener = bind("EBB_ACTIVATOR_METRICS_ADDRESS", "0.0.0.0:9090").await?;
    println!(
        "ebb-activator {pod}: public {} internal {} metrics {}",
        public.local_addr()?,
        internal.local_addr()?,
        metrics_listener.local_addr()?
    );

    let traces = ebb_traces::Traces::from_env(
        "activator",
        vec![ebb_traces::KeyValue::new("k8s.pod.name", pod.clone())],
    )
    .map_err(anyhow::Error::msg)?
    .map(Arc::new);
    let revisions = Arc::new(Revisions::new(Limits::default()));
    let metrics = Arc::new(activator::metrics::Metrics::default());
    let (routes_tx, routes_rx) = watch::channel(Arc::new(RoutingTable::default()));
    let (programmed_tx, programmed_rx) = watch::channel(None);
    let (targets_tx, targets_rx) = watch::channel(Vec::new());
    let reporter = Reporter::new(targets_rx);
    let gateway = |listener: Listener| {
        let reporter = reporter.clone();
        Gateway {
            routes: routes_rx.clone(),
            revisions: revisions.clone(),
            listener,
            poke: Arc::new(move |ns: &str, rev: &str, demand: usize| {
                reporter.poke(ns, rev, demand)
            }),
            metrics: metrics.clone(),
            traces: traces.clone(),
        }
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let servers = [
        tokio::spawn(serve_with_grace(
            public,
            gateway(Listener::External),
            stop_rx.clone(),
            grace,
        )),
        tokio::spawn(serve_with_grace(
            internal,
            gateway(Listener::Internal),
            stop_rx.clone(),
            grace,
        )),
    ];
    let background = [
        tokio::spawn(watch_inputs(
            client.clone(),
            routes_tx,
            programmed_tx,
            revisions.clone(),
            tag_header,
        )),
        tokio::spawn({
            let client = client.clone();
            async move {
                watch_service_endpoints(client, &namespace, &autoscaler_service, targets_tx).await
            }
        }),
        tokio::spawn(
            reporter
                .clone()
                .run(revisions.clone(), metrics.clone(), pod),
        ),
        tokio::spawn(serve_metrics(
            metrics_listener,
            metrics,
            revisions,
            programmed_rx,
        )),
    ];

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    // Stop accepting, finish in-flight and queued requests (bounded by the grace), exit.
    let _ = stop_tx.send(true);
    for s in servers {
        let _ = s.await;
    }
    for b in background {
        b.abort();
    }
    Ok(())
}

/// The metrics listener: `/metrics`; `/healthz` (alive); `/readyz` (the Routes and
/// DomainMappings listed and the table built from them); `/v1/routes/NS/NAME` (the Route's
/// routing fingerprint as the table holds it, 404 when it holds none), which the controller
/// asks of every activator before it calls a Route Ready.
async fn serve_metrics(
    listener: TcpListener,
    metrics: Arc<activator::metrics::Metrics>,
    revisions: Arc<Revisions>,
    programmed: watch::Receiver<Programmed>,
) {
    loop {
        let (stream, _) = http1::accept::accept(&listener).await;
        let (metrics, revisions, programmed) =
            (metrics.clone(), revisions.clone(), programmed.clone());
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let path = req.uri().path();
                    let table = programmed.borrow().clone();
                    let (status, body) = if path == "/metrics" {
                        (http::StatusCode::OK, metrics.encode(&revisions))
                    } else if path == "/readyz" {
                        match table {
                            Some(_) => (http::StatusCode::OK, "ok\n".to_string()),
                            None => (
                                http::StatusCode::SERVICE_UNAVAILABLE,
                                "the Routes are not listed yet\n".to_string(),
                            ),
                        }
                    } else if let Some(rest) = path.strip_prefix("/v1/routes/") {
                        let found = rest.split_once('/').and_then(|(ns, name)| {
                            table.as_ref()?.fingerprint(ns, name).map(str::to_string)
                        });
                        match found {
                            Some(f) => (http::StatusCode::OK, f),
                            None => (
                                http::StatusCode::NOT_FOUND,
                                "not in this activator's table\n".to_string(),
                            ),
                        }
                    } else {
                        (http::StatusCode::OK, "ok\n".to_string())
                    };
                    let mut r = http::Response::new(Full::new(Bytes::from(body)));
                    *r.status_mut() = status;
                    async move { Ok::<_, Infallible>(r) }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[tokio::main]
async fn main() {
    ebb_kubernetes::raise_fd_limit();
    ebb_kubernetes::main("ebb-activator", run()).await;
}
