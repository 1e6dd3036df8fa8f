//! Local mode's Kubernetes API under load: `kubectl apply` of N Services (one file) and
//! `kubectl get ksvc` over them, beside the `ebb` CLI applying the same N in the same run; then
//! list and watch latency with 10,000 objects stored.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::load::Latencies;
use crate::procs::Proc;

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let p = std::env::current_exe()?
        .parent()
        .context("executable directory")?
        .join(name);
    anyhow::ensure!(
        p.exists(),
        "{} is missing: build it with `cargo build --release -p ebb`",
        p.display()
    );
    Ok(p)
}

fn services(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: svc{i}\nspec:\n  template:\n    metadata:\n      annotations:\n        autoscaling.knative.dev/initial-scale: \"0\"\n    spec:\n      containers:\n        - image: hello\n---\n"
            )
        })
        .collect()
}

fn timed(cmd: &mut Command) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let out = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).output()?;
    anyhow::ensure!(
        out.status.success(),
        "{:?}: {}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(started.elapsed())
}

fn kubectl(state: &Path) -> Command {
    let mut c = Command::new("kubectl");
    c.env("KUBECONFIG", state.join("kubeconfig"));
    c
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub async fn run(args: &[String]) -> anyhow::Result<()> {
    let n: usize = crate::arg(args, "--services", "1000").parse()?;
    let objects: usize = crate::arg(args, "--objects", "10000").parse()?;
    let ebb = sibling("ebb")?;
    let state = std::env::temp_dir().join(format!("ebb-bench-api-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    std::fs::create_dir_all(&state)?;
    let config = state.join("config.yaml");
    std::fs::write(
        &config,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config-autoscaler\ndata:\n  allow-zero-initial-scale: \"true\"\n",
    )?;
    let server = Proc(
        Command::new(&ebb)
            .arg("--state")
            .arg(&state)
            .args([
                "local",
                "up",
                "--listen",
                "127.0.0.1:0",
                "--runtime",
                "process",
            ])
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let started = Instant::now();
    while !state.join("ebb.json").exists() {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "ebb did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let file = state.join("services.yaml");
    std::fs::write(&file, services(n))?;
    let f = file.to_str().context("path")?;
    for ns in ["by-kubectl", "by-ebb"] {
        timed(kubectl(&state).args(["create", "namespace", ns]))?;
    }
    let cpu0 = server.cpu_seconds();
    let kubectl_apply = timed(kubectl(&state).args(["apply", "-n", "by-kubectl", "-f", f]))?;
    let cpu1 = server.cpu_seconds();
    let ebb_apply = timed(Command::new(&ebb).arg("--state").arg(&state).args([
        "-n",
        "by-ebb",
        "apply",
        "--no-wait",
        "-f",
        f,
    ]))?;
    let cpu2 = server.cpu_seconds();
    let get: Vec<Duration> = (0..5)
        .map(|_| timed(kubectl(&state).args(["get", "ksvc", "-n", "by-kubectl"])))
        .collect::<anyhow::Result<_>>()?;
    let ebb_get: Vec<Duration> = (0..5)
        .map(|_| {
            timed(Command::new(&ebb).arg("--state").arg(&state).args([
                "-n",
                "by-kubectl",
                "get",
                "ksvc",
            ]))
        })
        .collect::<anyhow::Result<_>>()?;
    // At rest: what the control plane costs with 2n Services while nothing changes.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let rest0 = server.cpu_seconds();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let at_rest = (server.cpu_seconds() - rest0) / 30.0;

    println!(
        "local mode's Kubernetes API: {n} Services (initial-scale 0) in one file, then lists; {objects} objects for list and watch latency\n"
    );
    println!("| measure | kubectl | ebb CLI |");
    println!("|---|---|---|");
    println!(
        "| apply {n} Services (wall) | {:.2} s | {:.2} s |",
        kubectl_apply.as_secs_f64(),
        ebb_apply.as_secs_f64()
    );
    println!(
        "| ebb's CPU during the apply | {:.2} s | {:.2} s |",
        cpu1 - cpu0,
        cpu2 - cpu1
    );
    println!(
        "| get ksvc over {n} (median of 5, wall) | {:.0} ms | {:.0} ms |",
        median(get).as_secs_f64() * 1000.0,
        median(ebb_get).as_secs_f64() * 1000.0
    );

    println!(
        "| ebb's CPU at rest with {} Services (30 s, after 10 s to settle) | {:.2} % of a core | |",
        2 * n,
        at_rest * 100.0
    );

    // List and watch with many objects stored, on a fresh ebb: with 1,000 Services the
    // control plane re-reconciles everything after every write (issue #17), and that contention
    // is not the API's.
    drop(server);
    let _ = std::fs::remove_dir_all(&state);
    std::fs::create_dir_all(&state)?;
    let server = Proc(
        Command::new(&ebb)
            .arg("--state")
            .arg(&state)
            .args(["local", "up", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let started = Instant::now();
    while !state.join("ebb.json").exists() {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "ebb did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let kubeconfig = kube::config::Kubeconfig::read_from(state.join("kubeconfig"))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    let client = kube::Client::try_from(config)?;
    let api: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(client, "default");
    let fill = Instant::now();
    let mut pending = Vec::new();
    for i in 0..objects {
        let api = api.clone();
        pending.push(tokio::spawn(async move {
            let mut cm = k8s_openapi::api::core::v1::ConfigMap::default();
            cm.metadata.name = Some(format!("cm{i}"));
            cm.data = Some([("k".to_string(), "v".to_string())].into());
            api.create(&Default::default(), &cm).await.map(|_| ())
        }));
        if pending.len() >= 32 {
            for p in pending.drain(..) {
                p.await??;
            }
        }
    }
    for p in pending {
        p.await??;
    }
    let filled = fill.elapsed();
    let mut lists = Latencies::default();
    for _ in 0..5 {
        let t = Instant::now();
        let l = api.list(&Default::default()).await?;
        anyhow::ensure!(l.items.len() >= objects, "listed {}", l.items.len());
        lists.micros.push(t.elapsed().as_micros() as u64);
    }
    let mut limited = Latencies::default();
    for _ in 0..5 {
        let t = Instant::now();
        api.list(&kube::api::ListParams::default().limit(500))
            .await?;
        limited.micros.push(t.elapsed().as_micros() as u64);
    }
    // Watch: the time from a write's answer to its event.
    use futures_util::StreamExt;
    let rv = api
        .list_metadata(&kube::api::ListParams::default().limit(1))
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let mut stream = std::pin::pin!(api.watch(&kube::api::WatchParams::default(), &rv).await?);
    let mut watch = Latencies::default();
    for i in 0..100 {
        let patch = serde_json::json!({"data": {"k": i.to_string()}});
        api.patch(
            "cm0",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await?;
        let wrote = Instant::now();
        loop {
            match tokio::time::timeout(Duration::from_secs(10), stream.next()).await? {
                Some(Ok(kube::api::WatchEvent::Modified(cm)))
                    if cm.data.as_ref().and_then(|d| d.get("k")) == Some(&i.to_string()) =>
                {
                    break;
                }
                Some(Ok(_)) => {}
                other => anyhow::bail!("watch ended: {other:?}"),
            }
        }
        watch.micros.push(wrote.elapsed().as_micros() as u64);
    }
    let (peak, rss) = server.rss_kib();
    println!("\n| with {objects} ConfigMaps stored | p50 | p99 |");
    println!("|---|---|---|");
    println!(
        "| list all {objects} (kube-rs, 5 lists) | {:.1} ms | {:.1} ms |",
        lists.percentile(50.0) / 1000.0,
        lists.percentile(99.0) / 1000.0
    );
    println!(
        "| list with limit=500 | {:.1} ms | {:.1} ms |",
        limited.percentile(50.0) / 1000.0,
        limited.percentile(99.0) / 1000.0
    );
    println!(
        "| write answered → watch event (100 writes) | {:.2} ms | {:.2} ms |",
        watch.percentile(50.0) / 1000.0,
        watch.percentile(99.0) / 1000.0
    );
    println!(
        "\ncreating {objects} ConfigMaps (32 at a time): {:.1} s; ebb RSS now {} MiB (peak {} MiB)",
        filled.as_secs_f64(),
        rss / 1024,
        peak / 1024
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&state);
    Ok(())
}
