//! `ebb-autoscaler`: the KPA on Kubernetes. Wiring only; see `ebb_kubernetes::autoscaler`.
//!
//! Environment: `SYSTEM_NAMESPACE` (default ebb-system; holds config-autoscaler, watched and
//! applied live, and the Lease), `POD_NAME` (leader identity), `EBB_AUTOSCALER_ADDRESS` (intake, metrics, health;
//! default 0.0.0.0:8080), `EBB_LOG` (log filter).

/// mimalloc: the proxy paths allocate per request, and glibc's allocator cost ~12% of the
/// gateway's CPU there (`perf`); with mimalloc `ebb-bench` measured ~16% more requests/s.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;

use autoscaler::runner::Runner;
use ebb_kubernetes::autoscaler::{DeploymentScaler, serve_intake, watch_inputs};
use ebb_kubernetes::env_or;
use ebb_kubernetes::leader::Elector;
use k8s_openapi::api::core::v1::ConfigMap;
use serving_api::config::AutoscalerConfig;
use tokio::sync::watch;

async fn run() -> anyhow::Result<()> {
    let namespace = env_or("SYSTEM_NAMESPACE", ebb_kubernetes::DEFAULT_SYSTEM_NAMESPACE);
    let identity = env_or(
        "POD_NAME",
        &format!("ebb-autoscaler-{}", std::process::id()),
    );
    let address = env_or("EBB_AUTOSCALER_ADDRESS", "0.0.0.0:8080");
    let client = ebb_kubernetes::client().await?;

    let cms: kube::Api<ConfigMap> = kube::Api::namespaced(client.clone(), &namespace);
    let config = match cms.get_opt("config-autoscaler").await? {
        Some(cm) => AutoscalerConfig::from_map(&cm.data.unwrap_or_default())
            .map_err(|e| anyhow::anyhow!("{namespace}/config-autoscaler:\n{e}"))?,
        None => AutoscalerConfig::default(),
    };

    // config-autoscaler is watched: a valid change applies at once (every revision's settings
    // are resolved again); an invalid one is reported and the last good one kept.
    let (config_tx, config_rx) = watch::channel(config.clone());
    let reloader = tokio::spawn({
        let mut last = config.clone();
        ebb_kubernetes::mirror::mirror(
            cms,
            kube::runtime::watcher::Config::default(),
            move |snapshot| {
                let data = snapshot
                    .values()
                    .find(|cm| cm.metadata.name.as_deref() == Some("config-autoscaler"))
                    .and_then(|cm| cm.data.clone())
                    .unwrap_or_default();
                match AutoscalerConfig::from_map(&data) {
                    Ok(c) if c != last => {
                        tracing::info!("config-autoscaler reloaded");
                        last = c.clone();
                        config_tx.send_replace(c);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(errors = %e, "config-autoscaler rejected; keeping the last good one")
                    }
                }
            },
        )
    });
    let (leader_tx, leader_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let metrics = Arc::new(autoscaler::metrics::Metrics::default());
    let scaler = Arc::new(DeploymentScaler::new(client.clone(), leader_rx.clone()));
    let (runner, handle) = Runner::new(&config, scaler, metrics.clone());
    let listener = tokio::net::TcpListener::bind(&address)
        .await
        .map_err(|e| anyhow::anyhow!("EBB_AUTOSCALER_ADDRESS {address}: {e}"))?;
    println!(
        "ebb-autoscaler {identity}: intake on {}",
        listener.local_addr()?
    );

    let elector = tokio::spawn(
        Elector::new(client.clone(), &namespace, "ebb-autoscaler", &identity)
            .run(leader_tx, stop_rx),
    );
    // A new leader re-applies its decisions: another replica may have scaled in between.
    let reset = {
        let (handle, mut leader) = (handle.clone(), leader_rx.clone());
        tokio::spawn(async move {
            while leader.changed().await.is_ok() {
                if *leader.borrow() {
                    handle.reset_applied();
                }
            }
        })
    };
    let tasks = [
        tokio::spawn(runner.run()),
        tokio::spawn(watch_inputs(client, handle.clone(), config_rx)),
        tokio::spawn(serve_intake(listener, handle, metrics, leader_rx)),
    ];

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    // Hand leadership over at once; the last applied scales stay as they are.
    let _ = stop_tx.send(true);
    let _ = elector.await;
    reset.abort();
    reloader.abort();
    for t in tasks {
        t.abort();
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    ebb_kubernetes::main("ebb-autoscaler", run()).await;
}
