//! Kubernetes backends for the data plane: what the autoscaler and the activator read from the
//! API server (Revisions, Routes, EndpointSlices) and write to it (Deployment scale, a Lease).
//! The decisions and the proxying live in the `autoscaler` and `activator` crates; this crate
//! only translates between them and the API. The binaries in `src/bin` wire it.

pub mod autoscaler;
pub mod controller;
pub mod endpoints;
pub mod gateway;
pub mod leader;
pub mod mirror;
pub mod policy;
pub mod webhook;

/// The namespace Ebb's components run in unless `SYSTEM_NAMESPACE` says otherwise.
pub const DEFAULT_SYSTEM_NAMESPACE: &str = "ebb-system";

/// A kube client from the environment: in-cluster config, else `KUBECONFIG`/`~/.kube/config`.
pub async fn client() -> anyhow::Result<kube::Client> {
    let config = kube::Config::infer().await.map_err(|e| {
        anyhow::anyhow!("no Kubernetes configuration (in-cluster or KUBECONFIG): {e}")
    })?;
    Ok(kube::Client::try_from(config)?)
}

/// A kube client for an API server URL (tests use the fake API server).
pub fn client_for(url: &str) -> anyhow::Result<kube::Client> {
    let uri: http::Uri = url.parse()?;
    Ok(kube::Client::try_from(kube::Config::new(uri))?)
}

/// Raise the open-file soft limit to the hard limit: every held request costs a descriptor.
pub fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// An environment variable, or `default` when it is unset or empty.
pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

/// What every binary's `main` does: logs to stderr filtered by `EBB_LOG` (default info), run,
/// and on error print it after the binary's name and exit 1.
pub async fn main(name: &str, run: impl std::future::Future<Output = anyhow::Result<()>>) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EBB_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    if let Err(e) = run.await {
        eprintln!("{name}: {e}");
        std::process::exit(1);
    }
}
