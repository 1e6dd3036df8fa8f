//! Cold start end to end through local mode: the first request to a revision at zero, until
//! its response, minus the app's own time to readiness (the same binary started directly and
//! polled until it answers), over N wakes with the host-process runtime.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::load::{Conn, Latencies};
use crate::procs::{Proc, free_port};

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::current_exe()?
        .parent()
        .context("executable directory")?
        .to_path_buf();
    let p = dir.join(name);
    anyhow::ensure!(
        p.exists(),
        "{} is missing: build it with `cargo build --release -p ebb -p e2e --bins`",
        p.display()
    );
    Ok(p)
}

/// Start `hello` directly and time until its first answer.
async fn direct_start(hello: &Path) -> anyhow::Result<Duration> {
    let port = free_port()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let started = Instant::now();
    let _app = Proc(
        Command::new(hello)
            .env("PORT", port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let mut conn = loop {
        if let Ok(c) = Conn::open(addr, "hello").await {
            break c;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(10),
            "hello did not start"
        );
        tokio::time::sleep(Duration::from_micros(200)).await;
    };
    let (status, _) = conn.get_status("/").await?;
    anyhow::ensure!(status == 200, "hello answered {status}");
    Ok(started.elapsed())
}

fn read_endpoint(state: &Path) -> Option<(SocketAddr, SocketAddr)> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("ebb.json")).ok()?).ok()?;
    Some((
        v["gateway"].as_str()?.parse().ok()?,
        v["api"].as_str()?.parse().ok()?,
    ))
}

fn ms(us: f64) -> String {
    format!("{:.2}", us / 1000.0)
}

pub async fn run(args: &[String]) -> anyhow::Result<()> {
    let wakes: usize = crate::arg(args, "--wakes", "20").parse()?;
    let ebb = sibling("ebb")?;
    let hello = sibling("hello")?;
    let bin_dir = ebb.parent().context("bin dir")?.to_path_buf();

    // The app alone.
    let mut direct = Latencies::default();
    for _ in 0..wakes {
        direct
            .micros
            .push(direct_start(&hello).await?.as_micros() as u64);
    }

    // Through Ebb: one cold revision per wake (initial-scale 0), so every wake is a first
    // request to a revision with no instance.
    let state = std::env::temp_dir().join(format!("ebb-bench-cold-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let config = state.join("config.yaml");
    std::fs::create_dir_all(&state)?;
    std::fs::write(
        &config,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config-autoscaler\ndata:\n  allow-zero-initial-scale: \"true\"\n",
    )?;
    let path = std::env::join_paths(std::iter::once(bin_dir.clone()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))?;
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
            .env("PATH", &path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let started = Instant::now();
    let (gateway, _api) = loop {
        if let Some(e) = read_endpoint(&state) {
            break e;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "ebb did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut yaml = String::new();
    for i in 0..wakes {
        yaml.push_str(&format!(
            "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: cold{i}\nspec:\n  template:\n    metadata:\n      annotations:\n        autoscaling.knative.dev/initial-scale: \"0\"\n    spec:\n      containers:\n        - image: hello\n---\n"
        ));
    }
    let mut apply = Command::new(&ebb)
        .arg("--state")
        .arg(&state)
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    {
        use std::io::Write;
        apply
            .stdin
            .take()
            .context("stdin")?
            .write_all(yaml.as_bytes())?;
    }
    anyhow::ensure!(apply.wait()?.success(), "ebb apply failed");

    let mut wake = Latencies::default();
    for i in 0..wakes {
        let host = format!("cold{i}.default.localhost");
        let t = Instant::now();
        let mut conn = Conn::open(gateway, &host).await?;
        let (status, body) = conn.get_status("/").await?;
        anyhow::ensure!(status == 200, "wake {i}: {status} {body:?}");
        wake.micros.push(t.elapsed().as_micros() as u64);
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&state);

    let app_p50 = direct.percentile(50.0);
    let overhead = Latencies {
        micros: wake
            .micros
            .iter()
            .map(|w| (*w as f64 - app_p50).max(0.0) as u64)
            .collect(),
        errors: 0,
    };
    println!("cold start through local mode (host processes), {wakes} wakes, milliseconds:");
    println!("| measure | p50 | p95 | max |");
    println!("|---|---|---|---|");
    for (name, l) in [
        ("app alone: exec → first response", &direct),
        ("through Ebb: first request at zero → response", &wake),
        ("overhead (through Ebb − app alone p50)", &overhead),
    ] {
        println!(
            "| {name} | {} | {} | {} |",
            ms(l.percentile(50.0)),
            ms(l.percentile(95.0)),
            ms(l.percentile(100.0))
        );
    }
    println!(
        "target: overhead p50 ≤ 15 ms — {}",
        if overhead.percentile(50.0) <= 15_000.0 {
            "met"
        } else {
            "not met"
        }
    );
    Ok(())
}
