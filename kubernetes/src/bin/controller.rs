//! `ebb-controller`: the serving controller on Kubernetes. Wiring only; see
//! `ebb_kubernetes::controller`. Flags and their environment variables: `ebb-controller --help`.

/// mimalloc: the proxy paths allocate per request, and glibc's allocator cost ~12% of the
/// gateway's CPU there (`perf`); with mimalloc `ebb-bench` measured ~16% more requests/s.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::convert::Infallible;

use ebb_kubernetes::controller::{Configs, Context, run};
use ebb_kubernetes::leader::Elector;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use tokio::sync::watch;

const CONFIG_MAPS: [&str; 7] = [
    "config-defaults",
    "config-network",
    "config-domain",
    "config-deployment",
    "config-autoscaler",
    "config-gc",
    "config-features",
];

#[derive(clap::Parser, Debug)]
#[command(
    name = "ebb-controller",
    version,
    about = "Ebb's serving controller on Kubernetes: Service, Configuration, Revision, Route and DomainMapping reconcilers; one replica leads (Lease ebb-controller)"
)]
struct Args {
    /// Namespace of the config maps and the Lease.
    #[arg(long, env = "SYSTEM_NAMESPACE", default_value = ebb_kubernetes::DEFAULT_SYSTEM_NAMESPACE)]
    namespace: String,
    /// This replica's identity in leader election (default: ebb-controller-PID).
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// The activator's internal Service host, target of every Route's ExternalName Service
    /// (default: ebb-activator-internal.NAMESPACE.svc.cluster.local).
    #[arg(long, env = "EBB_ACTIVATOR_HOST")]
    activator_host: Option<String>,
    /// The headless Service whose ready endpoints are the activators' metrics listeners, asked
    /// before a Route is called Ready.
    #[arg(
        long,
        env = "EBB_ACTIVATOR_PROBE_SERVICE",
        default_value = "ebb-activator-probe"
    )]
    activator_probe_service: String,
    /// IngressClass of the Ingresses for public routes (empty: the cluster's default).
    #[arg(long, env = "EBB_INGRESS_CLASS", default_value = "")]
    ingress_class: String,
    /// Address of /healthz (alive), /readyz (the API server answered the Lease within 15 s)
    /// and /metrics (reconcile counts and latencies).
    #[arg(long, env = "EBB_CONTROLLER_ADDRESS", default_value = "0.0.0.0:8080")]
    address: String,
}

async fn run_controller(args: Args) -> anyhow::Result<()> {
    let namespace = args.namespace.clone();
    let pod = args
        .pod_name
        .clone()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| format!("ebb-controller-{}", std::process::id()));
    let activator = args
        .activator_host
        .clone()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("ebb-activator-internal.{namespace}.svc.cluster.local"));
    let ingress_class = Some(args.ingress_class.clone()).filter(|c| !c.is_empty());
    let address = args.address.clone();
    let client = ebb_kubernetes::client().await?;

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    let initial = ebb_kubernetes::controller::config_maps(
        cms.list(&Default::default()).await?.items.into_iter(),
        &CONFIG_MAPS,
    );
    let configs = Configs::from_maps(&initial)
        .map_err(|e| anyhow::anyhow!("config maps in {namespace}:\n{e}"))?;
    // The activators' probe port (their metrics listener), from the headless Service
    // `ebb-activator-probe`: a Route is Ready once every ready activator routes it.
    let probe_service = args.activator_probe_service.clone();
    let (activators_tx, activators_rx) = watch::channel(Vec::new());
    let activators = {
        let client = client.clone();
        let namespace = namespace.clone();
        tokio::spawn(async move {
            ebb_kubernetes::gateway::watch_service_endpoints(
                client,
                &namespace,
                &probe_service,
                activators_tx,
            )
            .await
        })
    };
    let ctx = Context::new(
        client.clone(),
        configs,
        &activator,
        ingress_class,
        &pod,
        Some(activators_rx),
    );

    // Config maps are watched: a valid change is used at once (every Revision and Route is
    // reconciled again); an invalid one is reported and the last good configuration kept.
    let (reload_tx, reload_rx) = watch::channel(0u64);
    let reloader = {
        let ctx = ctx.clone();
        let cms = cms.clone();
        tokio::spawn(ebb_kubernetes::controller::watch_configs(
            cms.clone(),
            &CONFIG_MAPS,
            initial,
            move |c| {
                if let Ok(mut w) = ctx.configs.write() {
                    *w = c;
                }
                reload_tx.send_modify(|n| *n += 1);
            },
        ))
    };

    let listener = tokio::net::TcpListener::bind(&address)
        .await
        .map_err(|e| anyhow::anyhow!("--address {address}: {e}"))?;
    println!("ebb-controller {pod}: health on {}", listener.local_addr()?);
    let (leader_tx, mut leader_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let elector = Elector::new(client, &namespace, "ebb-controller", &pod);
    let contact = elector.contact();
    let health = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = http1::accept::accept(&listener).await;
                let (ctx, contact) = (ctx.clone(), contact.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: http::Request<_>| {
                        let (status, body) = match req.uri().path() {
                            "/metrics" => (http::StatusCode::OK, ctx.policy.encode()),
                            "/readyz" if contact.recent(std::time::Duration::from_secs(15)) => {
                                (http::StatusCode::OK, "ok\n".to_string())
                            }
                            "/readyz" => (
                                http::StatusCode::SERVICE_UNAVAILABLE,
                                "no answer from the API server for the Lease within 15 s\n"
                                    .to_string(),
                            ),
                            _ => (http::StatusCode::OK, "ok\n".to_string()),
                        };
                        let mut r = http::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from(body),
                        ));
                        *r.status_mut() = status;
                        async move { Ok::<_, Infallible>(r) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        })
    };
    let elector = tokio::spawn(elector.run(leader_tx, stop_rx));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // Only the leader reconciles; a replica that loses the lease stops (and is restarted).
    tokio::select! {
        _ = leader_rx.wait_for(|l| *l) => {}
        _ = term.recv() => {
            let _ = stop_tx.send(true);
            let _ = elector.await;
            return Ok(());
        }
    }
    tracing::info!("leading: reconciling");
    let mut lost = leader_rx.clone();
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = lost.wait_for(|l| !*l) => tracing::warn!("lost leadership"),
        }
    };
    run(ctx, reload_rx, shutdown).await;
    let _ = stop_tx.send(true);
    let _ = elector.await;
    reloader.abort();
    health.abort();
    activators.abort();
    Ok(())
}

#[tokio::main]
async fn main() {
    let args = <Args as clap::Parser>::parse();
    ebb_kubernetes::main("ebb-controller", run_controller(args)).await;
}
