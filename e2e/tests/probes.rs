//! Local mode runs probes as the kubelet would: exec readiness gates traffic; an instance whose
//! readiness fails after startup leaves the gateway (requests wait for it rather than get the
//! app's error) and comes back when it recovers; a failing liveness probe restarts the
//! container, with CrashLoopBackOff reported.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on broken fixtures

mod common;

use std::time::{Duration, Instant};

use common::*;

fn health_service(name: &str, dir: &std::path::Path, probes: &str) -> String {
    format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  template:\n    metadata:\n      annotations:\n        autoscaling.knative.dev/min-scale: \"1\"\n    spec:\n      containers:\n        - image: ebb/health\n          command: [\"health\"]\n          env:\n            - {{name: SICK_FILE, value: \"{sick}\"}}\n            - {{name: DEAD_FILE, value: \"{dead}\"}}\n            - {{name: READY_FILE, value: \"{ready}\"}}\n{probes}",
        sick = dir.join("sick").display(),
        dead = dir.join("dead").display(),
        ready = dir.join("ready").display(),
    )
}

fn condition(rev: &serde_json::Value, t: &str) -> serde_json::Value {
    rev["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == t)
        .cloned()
        .unwrap_or_default()
}

#[test]
fn exec_readiness_gates_traffic() {
    let ebb = Ebb::start();
    let dir = ebb.state.join("files");
    std::fs::create_dir_all(&dir).unwrap();
    let yaml = health_service(
        "gated",
        &dir,
        "          readinessProbe:\n            periodSeconds: 1\n            exec:\n              command: [\"sh\", \"-c\", \"test -f $READY_FILE\"]\n",
    );
    let out = ebb.cli_stdin(&["apply", "-f", "-", "--no-wait"], Some(&yaml));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The app answers, but its exec probe fails: not Ready, no instance ready.
    std::thread::sleep(Duration::from_secs(3));
    let rev = ebb.get_json("rev", "gated-00001");
    assert_ne!(condition(&rev, "Ready")["status"], "True", "{rev}");
    assert_eq!(ebb.ready_instances("gated-00001"), 0);
    std::fs::write(dir.join("ready"), "").unwrap();
    wait_until(
        "ready once the exec probe passes",
        Duration::from_secs(15),
        || ebb.ready_instances("gated-00001") == 1,
    );
    // The route follows the revision's readiness by a control-plane pass.
    wait_until(
        "the Service Ready (its route programmed)",
        Duration::from_secs(15),
        || condition(&ebb.get_json("ksvc", "gated"), "Ready")["status"] == "True",
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (status, body) = rt.block_on(request(
        &http_client(),
        ebb.gateway,
        &ebb.host("gated"),
        "/",
    ));
    assert_eq!(status, 200, "{body}");
}

#[test]
fn readiness_after_startup_and_liveness_restarts() {
    let ebb = Ebb::start();
    let dir = ebb.state.join("files");
    std::fs::create_dir_all(&dir).unwrap();
    let probes = "          readinessProbe:\n            periodSeconds: 1\n            failureThreshold: 1\n            httpGet:\n              path: /healthz\n          livenessProbe:\n            periodSeconds: 1\n            failureThreshold: 2\n            httpGet:\n              path: /livez\n";
    ebb.apply(&health_service("probed", &dir, probes));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = http_client();
    let (status, first) = rt.block_on(request(&client, ebb.gateway, &ebb.host("probed"), "/"));
    assert_eq!(status, 200);

    // Unready after startup: out of the gateway; a request waits instead of getting the 503.
    std::fs::write(dir.join("sick"), "").unwrap();
    wait_until(
        "the instance turns unready",
        Duration::from_secs(10),
        || ebb.ready_instances("probed-00001") == 0,
    );
    let pending = {
        let client = client.clone();
        let (gw, host) = (ebb.gateway, ebb.host("probed"));
        rt.spawn(async move { (Instant::now(), request(&client, gw, &host, "/").await) })
    };
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !pending.is_finished(),
        "the request waits while no instance is ready"
    );
    std::fs::remove_file(dir.join("sick")).unwrap();
    let (_, (status, body)) = rt.block_on(pending).unwrap();
    assert_eq!(status, 200, "answered once the instance recovered: {body}");
    assert_eq!(body, first, "the same instance");

    // Liveness: the container is restarted (a new process), the revision says why.
    std::fs::write(dir.join("dead"), "").unwrap();
    wait_until("CrashLoopBackOff reported", Duration::from_secs(20), || {
        let rev = ebb.get_json("rev", "probed-00001");
        rev.to_string().contains("CrashLoopBackOff")
            && rev.to_string().contains("liveness probe failed")
    });
    std::fs::remove_file(dir.join("dead")).unwrap();
    wait_until("a new instance serves", Duration::from_secs(40), || {
        let (status, body) = rt.block_on(request(&client, ebb.gateway, &ebb.host("probed"), "/"));
        status == 200 && body != first
    });
    let events = ebb.ok(&["describe", "rev", "probed-00001"]);
    assert!(events.contains("CrashLoopBackOff"), "{events}");
}
