//! `queue-proxy`: configured by environment variables (see `queue_proxy::config`).

// The system allocator: with mimalloc the sidecar's peak RSS went from 9.4 to 17.3 MiB for
// no throughput gain (`scripts/bench-queue-proxy.sh`), and its memory matters per instance.

use std::io::Write;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("QUEUE_PROXY_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cfg = match queue_proxy::Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("queue-proxy: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    // One thread: a sidecar per instance should cost little; one core serves tens of
    // thousands of requests per second.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("queue-proxy: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(queue_proxy::run(cfg, terminate(), |bound| {
        // The first stdout line: where we listen (ports may have been chosen by the OS).
        let mut out = std::io::stdout();
        let _ = writeln!(out, "{}", serde_json::to_string(&bound).unwrap_or_default());
        let _ = out.flush();
    }));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("queue-proxy: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn terminate() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending::<()>().await,
    }
}
