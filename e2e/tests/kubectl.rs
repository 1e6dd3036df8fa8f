//! Local mode's Kubernetes API through the real `kubectl` (and kube-rs): a Knative manifest and
//! the usual kubectl workflow work unchanged against `ebb local up`, with its kubeconfig.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on broken fixtures

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

fn kubectl(ebb: &Ebb, args: &[&str]) -> Output {
    kubectl_stdin(ebb, args, None)
}

fn kubectl_stdin(ebb: &Ebb, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new("kubectl");
    cmd.env("KUBECONFIG", ebb.state.join("kubeconfig"))
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .expect("kubectl is on PATH (.ci/run installs it)");
    if let Some(text) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

fn ok(ebb: &Ebb, args: &[&str]) -> String {
    let out = kubectl(ebb, args);
    assert!(
        out.status.success(),
        "kubectl {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn fails(ebb: &Ebb, args: &[&str], stdin: Option<&str>) -> String {
    let out = kubectl_stdin(ebb, args, stdin);
    assert!(
        !out.status.success(),
        "kubectl {args:?} should fail:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn hello(target: &str) -> String {
    service_yaml("hello", "hello", &[], &[("TARGET", target)])
}

#[test]
fn kubectl_drives_knative_services() {
    let ebb = Ebb::start();
    let manifest = ebb.state.join("hello.yaml");
    std::fs::write(&manifest, hello("kubectl")).unwrap();
    let file = manifest.to_str().unwrap();

    // apply (client-side), wait, get as a table, jsonpath, YAML.
    assert!(ok(&ebb, &["apply", "-f", file]).contains("service.serving.knative.dev/hello created"));
    ok(
        &ebb,
        &[
            "wait",
            "--for=condition=Ready",
            "ksvc/hello",
            "--timeout=60s",
        ],
    );
    let table = ok(&ebb, &["get", "ksvc"]);
    let header = table.lines().next().unwrap_or_default();
    for col in [
        "NAME",
        "URL",
        "LATESTCREATED",
        "LATESTREADY",
        "READY",
        "REASON",
    ] {
        assert!(header.contains(col), "{table}");
    }
    assert!(
        table.contains("hello-00001") && table.contains("True"),
        "{table}"
    );
    let url = ok(
        &ebb,
        &["get", "ksvc", "hello", "-o", "jsonpath={.status.url}"],
    );
    assert_eq!(url, "http://hello.default.localhost");
    let yaml = ok(&ebb, &["get", "ksvc", "hello", "-o", "yaml"]);
    assert!(yaml.contains("serving.knative.dev/creator:"), "{yaml}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (status, body) = rt.block_on(request(
        &http_client(),
        ebb.gateway,
        &ebb.host("hello"),
        "/",
    ));
    assert_eq!(
        (status, body.as_str()),
        (200, "Hello kubectl! (hello-00001)\n")
    );

    // describe shows conditions and the Events recorded for it.
    let described = ok(&ebb, &["describe", "ksvc", "hello"]);
    assert!(
        described.contains("Events:") && described.contains("Created Configuration \"hello\""),
        "{described}"
    );

    // patch: merge and JSON; a new revision serves.
    ok(
        &ebb,
        &[
            "patch",
            "ksvc",
            "hello",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"template":{"spec":{"containers":[{"image":"ebb/hello","command":["hello"],"env":[{"name":"TARGET","value":"patched"}]}]}}}}"#,
        ],
    );
    ok(
        &ebb,
        &[
            "patch",
            "ksvc",
            "hello",
            "--type",
            "json",
            "-p",
            r#"[{"op":"add","path":"/metadata/labels","value":{"team":"a"}}]"#,
        ],
    );
    ok(
        &ebb,
        &[
            "wait",
            "--for=condition=Ready",
            "ksvc/hello",
            "--timeout=60s",
        ],
    );
    assert!(
        ok(&ebb, &["get", "ksvc", "-l", "team=a", "-o", "name"])
            .contains("service.serving.knative.dev/hello")
    );
    assert!(
        ok(&ebb, &["get", "ksvc", "-l", "team=b", "-o", "name"])
            .trim()
            .is_empty()
    );
    let (_, body) = rt.block_on(request(
        &http_client(),
        ebb.gateway,
        &ebb.host("hello"),
        "/",
    ));
    assert_eq!(body, "Hello patched! (hello-00002)\n");

    // An edit from a stale read is refused with a conflict.
    let stale = ok(&ebb, &["get", "ksvc", "hello", "-o", "yaml"]);
    ok(&ebb, &["annotate", "ksvc", "hello", "note=first"]);
    let err = fails(
        &ebb,
        &["replace", "-f", "-"],
        Some(&stale.replace("value: patched", "value: stale")),
    );
    assert!(
        err.contains("Conflict") && err.contains("the object has been modified"),
        "{err}"
    );

    // --dry-run=server: admitted, nothing stored.
    let dry = ok(&ebb, &["apply", "-f", file, "--dry-run=server"]);
    assert!(dry.contains("(server dry run)"), "{dry}");
    let other = service_yaml("dry", "hello", &[], &[]);
    let out = kubectl_stdin(
        &ebb,
        &["apply", "--dry-run=server", "-f", "-"],
        Some(&other),
    );
    assert!(out.status.success());
    assert!(fails(&ebb, &["get", "ksvc", "dry"], None).contains("NotFound"));

    // Invalid: every field error at once; a typo: refused as an unknown field.
    let bad = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: bad\nspec:\n  template:\n    spec:\n      containerConcurrency: -1\n      containers:\n        - image: x\n  traffic:\n    - percent: 120\n      latestRevision: true\n";
    let err = fails(&ebb, &["apply", "-f", "-"], Some(bad));
    for want in [
        "is invalid",
        "spec.template.spec.containerConcurrency",
        "spec.traffic[0].percent",
        "percents must sum to 100",
    ] {
        assert!(err.contains(want), "{want}: {err}");
    }
    let typo = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: typo\nspec:\n  template:\n    spec:\n      containerConcurency: 5\n      containers:\n        - image: x\n";
    let err = fails(&ebb, &["apply", "-f", "-"], Some(typo));
    assert!(
        err.contains("unknown field \"spec.template.spec.containerConcurency\""),
        "{err}"
    );

    // explain reads the schema.
    let explained = ok(
        &ebb,
        &["explain", "ksvc.spec.template.spec.containerConcurrency"],
    );
    assert!(
        explained.contains("containerConcurrency") && explained.contains("integer"),
        "{explained}"
    );

    // Server-side apply: a conflict with the client-side owner, then forced.
    let err = fails(
        &ebb,
        &["apply", "--server-side", "-f", "-"],
        Some(&hello("ssa")),
    );
    assert!(
        err.contains("conflict") && err.contains(".spec.template"),
        "{err}"
    );
    let out = kubectl_stdin(
        &ebb,
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        Some(&hello("ssa")),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let managers = ok(
        &ebb,
        &[
            "get",
            "ksvc",
            "hello",
            "--show-managed-fields",
            "-o",
            "jsonpath={.metadata.managedFields[*].manager}",
        ],
    );
    assert!(managers.contains("kubectl"), "{managers}");

    // delete cascades to what the Service owns.
    assert!(ok(&ebb, &["delete", "ksvc", "hello"]).contains("deleted"));
    assert!(
        ok(&ebb, &["get", "rev,rt,cfg", "-o", "name"])
            .trim()
            .is_empty()
    );
}

#[test]
fn kubectl_watches_and_core_kinds() {
    let ebb = Ebb::start();
    // ConfigMaps, Secrets, Namespaces through kubectl's typed commands (protobuf bodies).
    ok(&ebb, &["create", "configmap", "cfg", "--from-literal=a=1"]);
    ok(
        &ebb,
        &[
            "create",
            "secret",
            "generic",
            "sec",
            "--from-literal=p=s3cret",
        ],
    );
    ok(&ebb, &["create", "namespace", "team"]);
    assert_eq!(
        ok(&ebb, &["get", "cm", "cfg", "-o", "jsonpath={.data.a}"]),
        "1"
    );
    assert_eq!(
        ok(&ebb, &["get", "secret", "sec", "-o", "jsonpath={.data.p}"]),
        "czNjcmV0"
    );
    let ns = ok(&ebb, &["get", "ns"]);
    assert!(
        ns.contains("default") && ns.contains("team") && ns.contains("Active"),
        "{ns}"
    );
    let out = kubectl_stdin(
        &ebb,
        &["-n", "team", "apply", "-f", "-"],
        Some(&service_yaml("web", "hello", &[], &[])),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(ok(&ebb, &["get", "ksvc", "-A"]).contains("team"));

    // get -w: the table's rows as they change.
    let mut watch = Command::new("kubectl")
        .env("KUBECONFIG", ebb.state.join("kubeconfig"))
        .args(["get", "cm", "-w", "--request-timeout=20s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the header and current rows");
    assert!(first.contains("NAME"), "{first}");
    ok(
        &ebb,
        &["create", "configmap", "later", "--from-literal=b=2"],
    );
    let mut seen = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(10)) {
        seen.push(line.clone());
        if line.starts_with("later") {
            break;
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(seen.iter().any(|l| l.starts_with("later")), "{seen:?}");

    // Deleting the namespace takes what lives in it.
    ok(&ebb, &["delete", "namespace", "team"]);
    assert!(!ok(&ebb, &["get", "ksvc", "-A"]).contains("team"));
}

/// A kube-rs watcher (what every Rust controller builds on) sees every change, in order.
#[test]
fn a_kube_rs_watcher_sees_every_change_in_order() {
    use futures_util::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let ebb = Ebb::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = ebb.kube().await;
        let api: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
            kube::Api::namespaced(client.clone(), "default");
        let stream = watcher(api.clone(), watcher::Config::default()).default_backoff();
        let mut stream = std::pin::pin!(stream);
        // Initial list done.
        loop {
            match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
                Ok(Some(Ok(watcher::Event::InitDone))) => break,
                Ok(Some(Ok(_))) => {}
                other => panic!("watcher: {other:?}"),
            }
        }
        let mut cm = k8s_openapi::api::core::v1::ConfigMap::default();
        cm.metadata.name = Some("counter".into());
        api.create(&Default::default(), &cm).await.unwrap();
        for i in 0..20 {
            let patch = serde_json::json!({"data": {"n": i.to_string()}});
            api.patch(
                "counter",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
            .unwrap();
        }
        api.delete("counter", &Default::default()).await.unwrap();
        let mut values = Vec::new();
        let mut deleted = false;
        while !deleted {
            match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
                Ok(Some(Ok(watcher::Event::Apply(cm)))) => {
                    values.push(cm.data.and_then(|d| d.get("n").cloned()));
                }
                Ok(Some(Ok(watcher::Event::Delete(_)))) => deleted = true,
                Ok(Some(Ok(_))) => {}
                other => panic!("watcher: {other:?}"),
            }
        }
        let want: Vec<Option<String>> = std::iter::once(None)
            .chain((0..20).map(|i| Some(i.to_string())))
            .collect();
        assert_eq!(values, want);
    });
}

/// Parallel updates never lose a write: ten `ebb service update` at once, each on its own env
/// key; each retries on a conflict from a fresh read.
#[test]
fn parallel_cli_updates_lose_nothing() {
    let ebb = Ebb::start();
    ebb.apply(&hello("start"));
    let children: Vec<_> = (0..10)
        .map(|i| {
            Command::new(ebb_bin())
                .arg("--state")
                .arg(&ebb.state)
                .args([
                    "service",
                    "update",
                    "hello",
                    "--no-wait",
                    "--env",
                    &format!("K{i}=v{i}"),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let svc: Value =
        serde_json::from_str(&ok(&ebb, &["get", "ksvc", "hello", "-o", "json"])).unwrap();
    let env = &svc["spec"]["template"]["spec"]["containers"][0]["env"];
    for i in 0..10 {
        assert!(
            env.as_array()
                .unwrap()
                .iter()
                .any(|e| e["name"] == format!("K{i}") && e["value"] == format!("v{i}")),
            "K{i} lost: {env}"
        );
    }
}
