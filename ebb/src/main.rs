/// mimalloc: the proxy paths allocate per request, and glibc's allocator cost ~12% of the
/// gateway's CPU there (`perf`); with mimalloc `ebb-bench` measured ~16% more requests/s.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;

fn main() {
    let cli = ebb::cli::Cli::parse();
    // Every held request and every instance costs descriptors: use all the system allows.
    raise_fd_limit();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EBB_LOG")
                // kube's client logs every refused request as an error; the CLI reports
                // refusals itself.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,kube_client=off")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ebb: cannot start: {e}");
            std::process::exit(1);
        }
    };
    let code = match runtime.block_on(ebb::cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {e}");
            1
        }
    };
    // Don't wait for lingering tasks (a follow loop, idle connections).
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    std::process::exit(code);
}

fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
