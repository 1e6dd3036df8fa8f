//! `ebb-bench controller`: Kubernetes mode's control plane at scale, against the fake API
//! server (no cluster can run here). N Services are created at once; the bench plays the
//! kubelet (every Deployment it sees is marked ready) and a real `ebb-activator` routes them
//! (the controller asks it before calling a Route Ready). Printed: time until all N are Ready,
//! the controller's CPU and peak RSS, the requests it made per Service by verb (GET and LIST
//! once synced should be none), and its CPU at rest afterwards.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::fake_api::FakeApi;

use crate::arg;
use crate::procs::Proc;

fn release_bin(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

fn start(api: &FakeApi, bin: &str, env: &[(&str, &str)]) -> anyhow::Result<(Proc, String)> {
    use std::io::BufRead;
    let kubeconfig =
        std::env::temp_dir().join(format!("ebb-bench-kubeconfig-{}", std::process::id()));
    std::fs::write(&kubeconfig, api.kubeconfig())?;
    let mut child = Command::new(release_bin(bin))
        .env("KUBECONFIG", &kubeconfig)
        .env(
            "EBB_LOG",
            std::env::var("EBB_BENCH_LOG").unwrap_or_else(|_| "error".into()),
        )
        .env("SYSTEM_NAMESPACE", "ebb-system")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| {
            anyhow::anyhow!("{bin}: {e} (build it: cargo build --release -p ebb-kubernetes)")
        })?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let mut out = std::io::BufReader::new(out);
        out.read_line(&mut line)?;
        // Its logs go to stdout: passed on to stderr (EBB_BENCH_LOG sets the level).
        std::thread::spawn(move || {
            for l in out.lines().map_while(Result::ok) {
                eprintln!("{l}");
            }
        });
    }
    Ok((Proc(child), line))
}

fn ready(o: &Value) -> bool {
    o["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

pub async fn run(args: &[String]) -> anyhow::Result<()> {
    let n: usize = arg(args, "--services", "5000").parse()?;
    let api = FakeApi::start().await;
    api.put(json!({ "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": "config-domain", "namespace": "ebb-system" }, "data": { "example.com": "" } }));
    let (_activator, line) = start(
        &api,
        "ebb-activator",
        &[
            ("EBB_ACTIVATOR_ADDRESS", "127.0.0.1:0"),
            ("EBB_ACTIVATOR_INTERNAL_ADDRESS", "127.0.0.1:0"),
            ("EBB_ACTIVATOR_METRICS_ADDRESS", "127.0.0.1:0"),
        ],
    )?;
    let metrics_port: u16 = line
        .split_whitespace()
        .skip_while(|w| *w != "metrics")
        .nth(1)
        .and_then(|a| a.rsplit(':').next()?.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no metrics address in {line:?}"))?;
    api.put(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": { "name": "ebb-activator-probe-a", "namespace": "ebb-system",
                      "labels": { "kubernetes.io/service-name": "ebb-activator-probe" } },
        "addressType": "IPv4",
        "ports": [{ "name": "metrics", "port": metrics_port, "protocol": "TCP" }],
        "endpoints": [{ "addresses": ["127.0.0.1"], "conditions": { "ready": true } }],
    }));
    let (controller, _) = start(
        &api,
        "ebb-controller",
        &[
            ("EBB_CONTROLLER_ADDRESS", "127.0.0.1:0"),
            ("POD_NAME", "bench"),
        ],
    )?;
    // Leading before the clock starts.
    let lead = Instant::now();
    while api
        .get(
            "coordination.k8s.io/v1/leases",
            "ebb-system",
            "ebb-controller",
        )
        .is_none()
    {
        anyhow::ensure!(
            lead.elapsed() < Duration::from_secs(30),
            "the controller never led"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let accesses_before = api.accesses().len();
    let cpu_before = controller.cpu_seconds();

    let started = Instant::now();
    for i in 0..n {
        api.put(json!({
            "apiVersion": "serving.knative.dev/v1", "kind": "Service",
            "metadata": { "name": format!("s{i}"), "namespace": "default" },
            "spec": { "template": { "spec": { "containers": [{ "image": "ghcr.io/ebb/hello" }] } } },
        }));
    }
    let created = started.elapsed();
    let mut marked: BTreeSet<String> = BTreeSet::new();
    let deadline = Duration::from_secs(arg(args, "--max-seconds", "600").parse()?);
    let all_ready = loop {
        for d in api.list("apps/v1/deployments") {
            let name = d["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if marked.contains(&name) {
                continue;
            }
            let mut d = d;
            d["status"] = json!({ "replicas": 1, "readyReplicas": 1, "availableReplicas": 1 });
            api.put(d);
            marked.insert(name);
        }
        let ready_now = api
            .list("serving.knative.dev/v1/services")
            .iter()
            .filter(|s| ready(s))
            .count();
        if ready_now == n {
            break started.elapsed();
        }
        if started.elapsed() > deadline {
            anyhow::bail!("{ready_now} of {n} Services Ready after {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let cpu = controller.cpu_seconds() - cpu_before;
    let (peak_kib, _) = controller.rss_kib();
    let mut by_verb: BTreeMap<String, usize> = BTreeMap::new();
    let mut by_resource: BTreeMap<(String, String), usize> = BTreeMap::new();
    // Both components' requests once started and synced (the activator only watches then, so
    // every write and any GET or LIST here is the controller's).
    for a in api.accesses().into_iter().skip(accesses_before) {
        *by_resource.entry((a.verb.clone(), a.resource)).or_default() += 1;
        *by_verb.entry(a.verb).or_default() += 1;
    }
    // At rest: nothing changes for 10 s.
    let rest_cpu = controller.cpu_seconds();
    let rest_from = api.accesses().len();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let idle = (controller.cpu_seconds() - rest_cpu) / 10.0;
    let mut at_rest: BTreeMap<(String, String), usize> = BTreeMap::new();
    for a in api.accesses().into_iter().skip(rest_from) {
        *at_rest.entry((a.verb, a.resource)).or_default() += 1;
    }

    println!(
        "ebb-controller against the fake API server, {n} Services (each: Configuration, Revision, Deployment, Service, Route, ExternalName Service, Ingress)"
    );
    println!(
        "  created in                 {:>8.2} s",
        created.as_secs_f64()
    );
    println!(
        "  all Ready after            {:>8.2} s",
        all_ready.as_secs_f64()
    );
    println!(
        "  controller CPU             {cpu:>8.2} s ({:.2} ms per Service)",
        cpu * 1000.0 / n as f64
    );
    println!(
        "  controller peak RSS        {:>8.1} MiB ({:.1} KiB per Service)",
        peak_kib as f64 / 1024.0,
        peak_kib as f64 / n as f64
    );
    println!(
        "  controller CPU at rest     {:>8.2} % of a core",
        idle * 100.0
    );
    let total: usize = by_verb.values().sum();
    println!(
        "  API requests (controller and activator) {total} ({:.1} per Service):",
        total as f64 / n as f64
    );
    for (verb, count) in &by_verb {
        println!(
            "    {verb:<8} {count:>8} ({:.2} per Service)",
            *count as f64 / n as f64
        );
    }
    for ((verb, resource), count) in &by_resource {
        println!(
            "      {verb:<8} {resource:<28} {count:>8} ({:.2} per Service)",
            *count as f64 / n as f64
        );
    }
    let rest_total: usize = at_rest.values().sum();
    println!("  API requests at rest (10 s) {rest_total}");
    for ((verb, resource), count) in &at_rest {
        println!("    {verb:<8} {resource:<28} {count:>8}");
    }
    Ok(())
}
