//! The `ebb` binary's errors a user meets first: nothing running, bad flags, bad config, two
//! instances on one state directory.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on broken fixtures

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn ebb(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ebb"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn temp_state() -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "ebb-cli-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    ))
}

#[test]
fn commands_without_a_running_ebb_say_how_to_start_it() {
    let state = temp_state();
    let o = ebb(&["--state", state.to_str().unwrap(), "get", "ksvc"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("Ebb is not running for state directory"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("ebb local up"));
}

#[test]
fn unknown_kinds_and_bad_flags_are_named() {
    let state = temp_state();
    let s = state.to_str().unwrap();
    let o = ebb(&["--state", s, "get", "pods"]);
    assert!(
        stderr(&o).contains("unknown kind \"pods\""),
        "{}",
        stderr(&o)
    );
    let o = ebb(&["local", "up", "--drain-quiet", "soon"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("invalid duration \"soon\""),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_bad_config_map_stops_startup_naming_map_key_and_rule() {
    let state = temp_state();
    std::fs::create_dir_all(&state).unwrap();
    let cfg = state.join("config.yaml");
    std::fs::write(
        &cfg,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config-autoscaler\ndata:\n  stable-window: \"5s\"\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config-nonsense\n",
    )
    .unwrap();
    let o = ebb(&[
        "--state",
        state.to_str().unwrap(),
        "local",
        "up",
        "--listen",
        "127.0.0.1:0",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("stable-window") && err.contains("5s") && err.contains("between 6s"),
        "{err}"
    );
    assert!(err.contains("config-nonsense"), "{err}");
    let _ = std::fs::remove_dir_all(&state);
}

#[test]
fn one_state_directory_serves_one_ebb() {
    let state = temp_state();
    let s = state.to_str().unwrap().to_string();
    let mut first = Command::new(env!("CARGO_BIN_EXE_ebb"))
        .args([
            "--state",
            &s,
            "local",
            "up",
            "--listen",
            "127.0.0.1:0",
            "--runtime",
            "process",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !state.join("ebb.json").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "ebb did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = ebb(&["--state", &s, "local", "up", "--listen", "127.0.0.1:0"]);
    assert_eq!(second.status.code(), Some(1));
    assert!(
        stderr(&second).contains("another `ebb local up`"),
        "{}",
        stderr(&second)
    );
    let status = ebb(&["--state", &s, "local", "status"]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("runtime:  process"));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(first.wait().unwrap().success(), "SIGTERM stops ebb cleanly");
    assert!(
        !state.join("ebb.json").exists(),
        "the endpoint file is removed on exit"
    );
    let _ = std::fs::remove_dir_all(&state);
}

/// The CLI is a Kubernetes client: against a cluster (the fake API server standing in for one,
/// named by a kubeconfig) it applies, lists, updates and deletes Services as it does against
/// local mode.
#[test]
fn the_cli_drives_a_cluster_through_its_kubeconfig() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = rt.block_on(testkit::fake_api::FakeApi::start());
    let dir = temp_state();
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("cluster.yaml");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user: {{}}\n",
            api.url()
        ),
    )
    .unwrap();
    let kc = kubeconfig.to_str().unwrap();
    let run = |args: &[&str], stdin: Option<&str>| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ebb"))
            .args(["--kubeconfig", kc])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        let mut input = child.stdin.take().unwrap();
        input
            .write_all(stdin.unwrap_or_default().as_bytes())
            .unwrap();
        drop(input);
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let svc = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  template:\n    spec:\n      containers:\n        - image: ghcr.io/acme/web\n";
    let (ok, out) = run(&["apply", "-f", "-", "--no-wait"], Some(svc));
    assert!(ok && out.contains("service/web created"), "{out}");
    let (ok, out) = run(&["get", "ksvc"], None);
    assert!(ok && out.contains("web"), "{out}");
    let (ok, out) = run(
        &["service", "update", "web", "--env", "A=1", "--no-wait"],
        None,
    );
    assert!(ok && out.contains("configured"), "{out}");
    let (ok, out) = run(&["get", "ksvc", "web", "-o", "json"], None);
    assert!(ok && out.contains("\"A\""), "{out}");
    let requests = api.requests();
    assert!(
        requests
            .iter()
            .any(|(m, p)| m == "PUT" && p.ends_with("/namespaces/default/services/web")),
        "the update is a replace with the read resourceVersion: {requests:?}"
    );
    let (ok, out) = run(&["delete", "ksvc", "web"], None);
    assert!(ok && out.contains("service/web deleted"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
