//! Local mode end to end: real `ebb local up` processes, the real CLI, the example apps as host
//! processes behind real queue-proxies, and real HTTP clients on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on broken fixtures

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn serves_scales_to_zero_and_wakes_with_buffering() {
    let ebb = Ebb::start();
    let out = ebb.apply(&service_yaml("hello", "hello", &[], &[("TARGET", "e2e")]));
    assert!(out.contains("service/hello created"), "{out}");
    assert!(
        out.contains(&format!(
            "http://hello.default.localhost:{}",
            ebb.gateway.port()
        )),
        "apply prints the URL: {out}"
    );
    let rt = rt();
    let client = http_client();
    let (status, body) = rt.block_on(request(&client, ebb.gateway, &ebb.host("hello"), "/"));
    assert_eq!((status, body.as_str()), (200, "Hello e2e! (hello-00001)\n"));

    // Nothing for stable window (6 s) + grace (6 s): the instance goes away.
    let took = wait_until("scale to zero", Duration::from_secs(40), || {
        ebb.instances().is_empty()
    });
    assert!(
        took >= Duration::from_secs(8),
        "scaled to zero too early: {took:?}"
    );
    let rev = ebb.get_json("rev", "hello-00001");
    assert_eq!(rev["status"]["actualReplicas"], 0);
    let ready = rev["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()
        .clone();
    assert_eq!(ready["status"], "True", "a revision at zero stays Ready");

    // The next requests wait in the gateway while an instance starts; all are answered.
    let started = Instant::now();
    let answers = rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let (client, gw, host) = (client.clone(), ebb.gateway, ebb.host("hello"));
            set.spawn(async move { request(&client, gw, &host, "/").await });
        }
        set.join_all().await
    });
    assert!(
        answers
            .iter()
            .all(|(s, b)| *s == 200 && b.contains("hello-00001")),
        "{answers:?}"
    );
    eprintln!("woke and answered 20 requests in {:?}", started.elapsed());
    assert_eq!(ebb.ready_instances("hello-00001"), 1);
}

#[test]
fn overload_into_a_cold_cc1_revision_all_answered() {
    // Knative's TestActivatorOverload at 10x its load: 1,000 concurrent requests into a
    // revision at zero with containerConcurrency 1 and max-scale 10.
    // 1,000 client sockets in this process.
    if let Ok((soft, hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ =
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    }
    let ebb = Ebb::start();
    let yaml = service_yaml(
        "overload",
        "autoscale",
        &[
            ("autoscaling.knative.dev/initial-scale", "0"),
            ("autoscaling.knative.dev/max-scale", "10"),
        ],
        &[],
    )
    .replace(
        "    spec:\n      containers:",
        "    spec:\n      containerConcurrency: 1\n      containers:",
    );
    ebb.apply(&yaml);
    assert!(ebb.instances().is_empty(), "created cold (initial-scale 0)");
    let rt = rt();
    let client = http_client();
    let started = Instant::now();
    let answers = rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..1000 {
            let (client, gw, host) = (client.clone(), ebb.gateway, ebb.host("overload"));
            set.spawn(async move { request(&client, gw, &host, "/?sleep=20").await });
        }
        set.join_all().await
    });
    let mut by_status: HashMap<u16, usize> = HashMap::new();
    for (s, _) in &answers {
        *by_status.entry(*s).or_default() += 1;
    }
    assert_eq!(
        by_status.get(&200),
        Some(&1000),
        "statuses: {by_status:?}; e.g. {:?}",
        answers.iter().find(|(s, _)| *s != 200)
    );
    let peak = ebb.instances().len();
    eprintln!(
        "1000 requests answered in {:?}; {peak} instances at the end",
        started.elapsed()
    );
    assert!(peak <= 10, "max-scale 10 respected: {peak}");
}

#[test]
fn revisions_split_tags_rollback_and_named_revisions() {
    // Tag headers route only with Knative's tag-header-based-routing feature (off by default).
    let config = config_with_features(&[("tag-header-based-routing", "enabled")]);
    let ebb = Ebb::start_with(&["--config", config.to_str().unwrap()]);
    ebb.apply(&service_yaml("web", "hello", &[], &[("TARGET", "one")]));
    let out = ebb.ok(&["service", "update", "web", "--env", "TARGET=two"]);
    assert!(out.contains("Service 'web' configured"), "{out}");
    let revs = ebb.ok(&["get", "revisions"]);
    assert!(
        revs.contains("web-00001") && revs.contains("web-00002"),
        "{revs}"
    );

    let rt = rt();
    let client = http_client();
    let count = |host: String, n: usize, tag: Option<&'static str>| {
        rt.block_on(async {
            let mut seen: HashMap<String, usize> = HashMap::new();
            for _ in 0..n {
                let mut req =
                    http::Request::get(format!("http://{}/", ebb.gateway)).header("host", &host);
                if let Some(t) = tag {
                    req = req.header("knative-serving-tag", t);
                }
                let resp = client
                    .request(
                        req.body(http_body_util::Full::new(bytes::Bytes::new()))
                            .unwrap(),
                    )
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 200);
                let body = http_body_util::BodyExt::collect(resp.into_body())
                    .await
                    .unwrap()
                    .to_bytes();
                *seen
                    .entry(String::from_utf8_lossy(&body).trim().to_string())
                    .or_default() += 1;
            }
            seen
        })
    };
    let latest = count(ebb.host("web"), 20, None);
    assert_eq!(
        latest.get("Hello two! (web-00002)"),
        Some(&20),
        "{latest:?}"
    );

    // 50/50 with a tag on the old revision.
    ebb.ok(&[
        "service",
        "update",
        "web",
        "--traffic",
        "web-00001=50,@latest=50",
        "--tag",
        "web-00001=old",
    ]);
    let split = count(ebb.host("web"), 400, None);
    let one = split.get("Hello one! (web-00001)").copied().unwrap_or(0);
    assert!(
        (160..=240).contains(&one),
        "50/50 within ±10% over 400 requests: {split:?}"
    );
    let tagged = count("old-web.default.localhost".into(), 10, None);
    assert_eq!(
        tagged.get("Hello one! (web-00001)"),
        Some(&10),
        "tag host: {tagged:?}"
    );
    let by_header = count(ebb.host("web"), 10, Some("old"));
    assert_eq!(
        by_header.get("Hello one! (web-00001)"),
        Some(&10),
        "tag header: {by_header:?}"
    );
    let routes = ebb.ok(&["get", "routes"]);
    assert!(routes.contains("web-00001=50%(old)"), "{routes}");

    // Rollback: everything to the old revision.
    ebb.ok(&["service", "update", "web", "--traffic", "web-00001=100"]);
    let back = count(ebb.host("web"), 20, None);
    assert_eq!(back.get("Hello one! (web-00001)"), Some(&20), "{back:?}");

    // A user-named revision, then traffic to it by name.
    ebb.ok(&[
        "service",
        "update",
        "web",
        "--env",
        "TARGET=blue",
        "--revision-name",
        "web-blue",
        "--traffic",
        "@latest=100",
    ]);
    let blue = count(ebb.host("web"), 5, None);
    assert_eq!(blue.get("Hello blue! (web-blue)"), Some(&5), "{blue:?}");
    let described = ebb.ok(&["describe", "ksvc", "web"]);
    assert!(
        described.contains("web-blue") && described.contains("Conditions:"),
        "{described}"
    );

    // Delete: the Service and everything it owns go, instances stop, the host is unknown.
    let deleted = ebb.ok(&["delete", "ksvc", "web"]);
    assert!(deleted.contains("service/web deleted"), "{deleted}");
    assert!(ebb.ok(&["get", "rev"]).trim().is_empty(), "revisions gone");
    assert!(ebb.ok(&["get", "rt"]).trim().is_empty(), "route gone");
    assert!(
        ebb.ok(&["get", "config"]).trim().is_empty(),
        "configuration gone"
    );
    wait_until("instances stopped", Duration::from_secs(20), || {
        ebb.instances().is_empty()
    });
    let (status, body) = rt.block_on(request(&client, ebb.gateway, &ebb.host("web"), "/"));
    assert_eq!(status, 404, "{body}");
}

#[test]
fn invalid_services_are_refused_with_every_error_and_nothing_is_stored() {
    let ebb = Ebb::start();
    let good = service_yaml("fine", "hello", &[], &[]);
    let bad = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: broken\nspec:\n  template:\n    metadata:\n      annotations:\n        autoscaling.knative.dev/window: \"1s\"\n    spec:\n      containerConcurrency: -1\n      containers:\n        - image: ebb/hello\n          ports:\n            - containerPort: 8012\n  traffic:\n    - latestRevision: true\n      percent: 120\n";
    let out = ebb.cli_stdin(&["apply", "-f", "-"], Some(&format!("{good}---\n{bad}")));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "Service default/broken: spec.template.metadata.annotations.autoscaling.knative.dev/window: invalid value \"1s\"",
        "spec.template.spec.containerConcurrency",
        "spec.template.spec.containers[0].ports[0].containerPort: invalid value \"8012\"",
        "spec.traffic[0].percent: invalid value \"120\"",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    let listed = ebb.cli(&["get", "ksvc"]);
    assert!(
        String::from_utf8_lossy(&listed.stdout).trim().is_empty(),
        "nothing stored"
    );

    // Not YAML at all, and a kind Ebb does not serve.
    let out = ebb.cli_stdin(&["apply", "-f", "-"], Some("kind: [unclosed"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid YAML"));
    let out = ebb.cli_stdin(
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n"),
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("not served"));
}

#[test]
fn a_container_that_cannot_start_fails_the_apply_with_its_reason() {
    let ebb = Ebb::start();
    let out = ebb.cli_stdin(
        &["apply", "-f", "-", "--wait-timeout", "60s"],
        Some(&service_yaml("nope", "no-such-program-ebb", &[], &[])),
    );
    assert!(!out.status.success(), "apply must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("RunContainerError") && err.contains("no-such-program-ebb"),
        "{err}"
    );

    // A process that exits before becoming ready: its exit code and last output.
    let out = ebb.ok(&[
        "service",
        "create",
        "crash",
        "--cmd",
        "sh",
        "--arg",
        "-c",
        "--arg",
        "echo boom >&2; exit 3",
        "--no-wait",
    ]);
    assert!(out.contains("created"), "{out}");
    let out = ebb.cli(&[
        "service",
        "update",
        "crash",
        "--env",
        "A=1",
        "--wait-timeout",
        "60s",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("ExitCode3") && err.contains("boom"), "{err}");
}

#[test]
fn restart_serves_again_and_a_killed_ebb_leaves_nothing_behind() {
    let mut ebb = Ebb::start();
    ebb.apply(&service_yaml("info", "runtime-info", &[], &[]));
    let rt = rt();
    let client = http_client();
    let (status, body) = rt.block_on(request(&client, ebb.gateway, &ebb.host("info"), "/"));
    assert_eq!(status, 200);
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["env"]["K_REVISION"], "info-00001");
    assert_eq!(info["env"]["K_SERVICE"], "info");
    assert!(
        info["env"]["PORT"].as_str().is_some_and(|p| p != "8080"),
        "own port: {}",
        info["env"]["PORT"]
    );
    assert!(
        info["request"]["headers"]["x-forwarded-for"].is_string(),
        "{body}"
    );
    let pid = info["pid"].as_u64().unwrap() as i32;
    let alive = |pid: i32| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();

    // Graceful stop takes the instances down; a restart serves without re-applying.
    ebb.stop();
    assert!(!alive(pid), "instance stopped with ebb");
    ebb.launch();
    let (status, body) = rt.block_on(request(&http_client(), ebb.gateway, &ebb.host("info"), "/"));
    assert_eq!(status, 200, "{body}");
    let pid = serde_json::from_str::<serde_json::Value>(&body).unwrap()["pid"]
        .as_u64()
        .unwrap() as i32;

    // SIGKILL: ebb can stop nothing itself, but its reaper (woken by the kernel closing ebb's
    // end of a pipe) takes the instance down without waiting for the next start.
    ebb.kill();
    wait_until(
        "instance of a killed ebb stopped",
        Duration::from_secs(5),
        || !alive(pid),
    );
    ebb.launch();
    let (status, _) = rt.block_on(request(&http_client(), ebb.gateway, &ebb.host("info"), "/"));
    assert_eq!(status, 200);
}

#[test]
fn rollout_under_steady_load_loses_nothing() {
    let ebb = Ebb::start();
    ebb.apply(&service_yaml(
        "steady",
        "hello",
        &[("autoscaling.knative.dev/min-scale", "1")],
        &[("TARGET", "v1")],
    ));
    let rt = rt();
    let client = http_client();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let seen = Arc::new(std::sync::Mutex::new(HashMap::<String, usize>::new()));
    let load = {
        let (stop, ok, failed, seen) = (stop.clone(), ok.clone(), failed.clone(), seen.clone());
        let (gw, host) = (ebb.gateway, ebb.host("steady"));
        rt.spawn(async move {
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..8 {
                let (stop, ok, failed, seen, client, host) = (
                    stop.clone(),
                    ok.clone(),
                    failed.clone(),
                    seen.clone(),
                    client.clone(),
                    host.clone(),
                );
                set.spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let (s, body) = request(&client, gw, &host, "/").await;
                        if s == 200 {
                            ok.fetch_add(1, Ordering::Relaxed);
                            *seen
                                .lock()
                                .unwrap()
                                .entry(body.trim().to_string())
                                .or_default() += 1;
                        } else {
                            failed.fetch_add(1, Ordering::Relaxed);
                            eprintln!("failed: {s} {body}");
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                });
            }
            set.join_all().await;
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let before = ok.load(Ordering::Relaxed);
    let started = Instant::now();
    ebb.ok(&["service", "update", "steady", "--env", "TARGET=v2"]);
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    rt.block_on(load).unwrap();
    let during = ok.load(Ordering::Relaxed) - before;
    let rps = during as f64 / started.elapsed().as_secs_f64();
    let seen = seen.lock().unwrap().clone();
    eprintln!("rollout: {rps:.0} rps during the change; {seen:?}");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no failed request during the rollout"
    );
    assert!(rps >= 200.0, "the load was at least 200 rps: {rps:.0}");
    assert!(
        seen.contains_key("Hello v1! (steady-00001)")
            && seen.contains_key("Hello v2! (steady-00002)"),
        "{seen:?}"
    );
}

/// Environment from ConfigMaps, Secrets and the pod's fields, as the kubelet resolves it; a
/// missing reference fails the revision naming it; the process runtime refuses volume mounts,
/// saying what would honour them.
#[test]
fn env_from_config_maps_secrets_and_fields() {
    // Env from the pod's fields needs Knative's kubernetes.podspec-fieldref feature.
    let config = config_with_features(&[("kubernetes.podspec-fieldref", "enabled")]);
    let ebb = Ebb::start_with(&["--config", config.to_str().unwrap()]);
    let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  MODE: fast\n  LEVEL: \"3\"\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\nstringData:\n  PASSWORD: s3cret\n---\napiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: info\n  labels:\n    team: blue\nspec:\n  template:\n    spec:\n      containers:\n        - image: ebb/runtime-info\n          command: [\"runtime-info\"]\n          envFrom:\n            - configMapRef: {name: settings}\n              prefix: CFG_\n          env:\n            - name: PASSWORD\n              valueFrom: {secretKeyRef: {name: creds, key: PASSWORD}}\n            - name: MODE\n              valueFrom: {configMapKeyRef: {name: settings, key: MODE}}\n            - name: POD\n              valueFrom: {fieldRef: {fieldPath: metadata.name}}\n            - name: NS\n              valueFrom: {fieldRef: {fieldPath: metadata.namespace}}\n";
    ebb.apply(yaml);
    let rt = rt();
    let (status, body) = rt.block_on(request(&http_client(), ebb.gateway, &ebb.host("info"), "/"));
    assert_eq!(status, 200, "{body}");
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    let env = &info["env"];
    assert_eq!(env["PASSWORD"], "s3cret");
    assert_eq!(env["MODE"], "fast");
    assert_eq!(
        (env["CFG_MODE"].as_str(), env["CFG_LEVEL"].as_str()),
        (Some("fast"), Some("3"))
    );
    assert!(
        env["POD"]
            .as_str()
            .is_some_and(|p| p.starts_with("info-00001-")),
        "{env}"
    );
    assert_eq!(env["NS"], "default");

    let missing = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: lost\nspec:\n  template:\n    spec:\n      containers:\n        - image: ebb/hello\n          command: [\"hello\"]\n          env:\n            - name: X\n              valueFrom: {configMapKeyRef: {name: nowhere, key: k}}\n";
    let out = ebb.cli_stdin(
        &["apply", "-f", "-", "--wait-timeout", "30s"],
        Some(missing),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("CreateContainerConfigError") && err.contains("nowhere"),
        "{err}"
    );

    let mounted = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: mounted\nspec:\n  template:\n    spec:\n      containers:\n        - image: ebb/hello\n          command: [\"hello\"]\n          volumeMounts:\n            - {name: conf, mountPath: /etc/conf, readOnly: true}\n      volumes:\n        - name: conf\n          configMap: {name: settings}\n";
    let out = ebb.cli_stdin(
        &["apply", "-f", "-", "--wait-timeout", "30s"],
        Some(mounted),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("volumeMounts[0]") && err.contains("--runtime podman"),
        "{err}"
    );
}

/// securityContext and resources under the process runtime: a user switch is honoured
/// (`setpriv`, when ebb runs as root); what a host process cannot honour fails the revision
/// naming the field and `--runtime podman` — never silently ignored.
#[test]
fn process_runtime_honours_or_refuses_the_security_context() {
    let ebb = Ebb::start();
    let svc = |name: &str, extra: &str| {
        format!(
            "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  template:\n    spec:\n      containers:\n        - image: ebb/runtime-info\n          command: [\"runtime-info\"]\n{extra}"
        )
    };
    if nix::unistd::Uid::effective().is_root() {
        ebb.apply(&svc("user", "          securityContext:\n            runAsUser: 1000\n            runAsGroup: 1000\n            allowPrivilegeEscalation: false\n"));
        let rt = rt();
        let (status, body) =
            rt.block_on(request(&http_client(), ebb.gateway, &ebb.host("user"), "/"));
        assert_eq!(status, 200, "{body}");
        let info: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (info["uid"].as_u64(), info["gid"].as_u64()),
            (Some(1000), Some(1000)),
            "{body}"
        );
    } else {
        eprintln!("(not root: the user switch is covered by the refusal below)");
    }
    for (name, extra, field) in [
        (
            "rofs",
            "          securityContext:\n            readOnlyRootFilesystem: true\n",
            "readOnlyRootFilesystem",
        ),
        (
            "limited",
            "          resources:\n            limits:\n              memory: 128Mi\n",
            "resources.limits",
        ),
        (
            "sidecar",
            "          ports:\n            - containerPort: 8080\n        - image: ebb/hello\n          name: side\n          command: [\"hello\"]\n",
            "spec.containers[1]",
        ),
    ] {
        let out = ebb.cli_stdin(
            &["apply", "-f", "-", "--wait-timeout", "30s"],
            Some(&svc(name, extra)),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}");
        assert!(err.contains(field), "{name}: {err}");
    }
}

/// Ready means routable: a client that watches Services and requests one the moment a watch
/// event says it is Ready is answered by the app, never `404 no route for host` (a Route is
/// Ready only once the gateway routes it). Twenty Services created at once.
#[test]
fn ready_services_answer_their_first_request_under_parallel_applies() {
    use futures_util::StreamExt;
    use kube::api::{
        ApiResource, DynamicObject, GroupVersionKind, PostParams, WatchEvent, WatchParams,
    };
    let ebb = Ebb::start();
    rt().block_on(async {
        let client = ebb.kube().await;
        let resource = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("serving.knative.dev", "v1", "Service"),
            "services",
        );
        let api: kube::Api<DynamicObject> =
            kube::Api::namespaced_with(client, "default", &resource);
        let mut events = api
            .watch(&WatchParams::default(), "0")
            .await
            .unwrap()
            .boxed();
        let names: Vec<String> = (0..20).map(|i| format!("par-{i}")).collect();
        let creates = names.iter().map(|name| {
            let api = api.clone();
            let yaml = service_yaml(name, "hello", &[], &[("TARGET", "par")]);
            async move {
                let obj: DynamicObject = serde_saphyr::from_str(&yaml).unwrap();
                api.create(&PostParams::default(), &obj).await.unwrap();
            }
        });
        futures_util::future::join_all(creates).await;
        let mut checked = std::collections::BTreeSet::new();
        let mut failures = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while checked.len() < names.len() {
            let ev = tokio::time::timeout_at(deadline, events.next())
                .await
                .expect("every Service Ready within 60 s")
                .expect("the watch stays open")
                .unwrap();
            let (WatchEvent::Added(o) | WatchEvent::Modified(o)) = ev else {
                continue;
            };
            let name = o.metadata.name.clone().unwrap_or_default();
            let ready = o.data["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            if ready && checked.insert(name.clone()) {
                let (code, body) =
                    request(&http_client(), ebb.gateway, &ebb.host(&name), "/").await;
                if code != 200 {
                    failures.push(format!("{name}: first request {code}: {body}"));
                }
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
    });
}

/// config-features in local mode: with Knative's defaults a gated field is refused at
/// admission naming its flag and the tag header does not route; a flag turned on lets its field
/// through, and local mode then refuses what one machine cannot honour, naming the field.
#[test]
fn config_features_gate_fields_and_tag_headers() {
    let ebb = Ebb::start();
    let field_ref = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: pod\nspec:\n  template:\n    spec:\n      containers:\n        - image: ebb/hello\n          command: [\"hello\"]\n          env:\n            - name: POD\n              valueFrom: {fieldRef: {fieldPath: metadata.name}}\n";
    let out = ebb.cli_stdin(&["apply", "-f", "-"], Some(field_ref));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("valueFrom.fieldRef") && err.contains("kubernetes.podspec-fieldref"),
        "{err}"
    );
    // Two revisions, the first tagged "old" at 0%: the tag header is ignored by default.
    ebb.apply(&service_yaml("web", "hello", &[], &[("TARGET", "one")]));
    ebb.ok(&["service", "update", "web", "--env", "TARGET=two"]);
    ebb.ok(&["service", "update", "web", "--tag", "web-00001=old"]);
    let rt = rt();
    let tagged = |ebb: &Ebb| {
        rt.block_on(async {
            let req = http::Request::get(format!("http://{}/", ebb.gateway))
                .header("host", ebb.host("web"))
                .header("knative-serving-tag", "old")
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            let resp = http_client().request(req).await.unwrap();
            let body = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .unwrap()
                .to_bytes();
            String::from_utf8_lossy(&body).to_string()
        })
    };
    assert_eq!(
        tagged(&ebb),
        "Hello two! (web-00002)\n",
        "the header is ignored"
    );
    drop(ebb);

    let config = config_with_features(&[
        ("kubernetes.podspec-nodeselector", "enabled"),
        ("tag-header-based-routing", "enabled"),
    ]);
    let ebb = Ebb::start_with(&["--config", config.to_str().unwrap()]);
    ebb.apply(&service_yaml("web", "hello", &[], &[("TARGET", "one")]));
    ebb.ok(&["service", "update", "web", "--env", "TARGET=two"]);
    ebb.ok(&["service", "update", "web", "--tag", "web-00001=old"]);
    assert_eq!(
        tagged(&ebb),
        "Hello one! (web-00001)\n",
        "the header routes"
    );
    let placed = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: placed\nspec:\n  template:\n    spec:\n      nodeSelector: {disk: ssd}\n      containers:\n        - image: ebb/hello\n          command: [\"hello\"]\n";
    let out = ebb.cli_stdin(&["apply", "-f", "-", "--wait-timeout", "30s"], Some(placed));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("spec.nodeSelector") && err.contains("local mode"),
        "{err}"
    );
}

/// Gradual rollout through a real `ebb` (config-network rollout-duration 3s): after an update,
/// the Route's status shows the traffic split between the new and the old revision, then all of
/// it on the new one; requests succeed throughout; the Service is Ready once it migrated.
#[test]
fn a_new_revision_rolls_out_gradually() {
    let config = config_with("config-network", &[("rollout-duration", "3s")]);
    let ebb = Ebb::start_with(&["--config", config.to_str().unwrap()]);
    ebb.apply(&service_yaml("roll", "hello", &[], &[("TARGET", "one")]));
    // The Service is Ready again once the traffic has migrated (TrafficNotMigrated until then,
    // as Knative reports it): the update does not wait.
    ebb.ok(&[
        "service",
        "update",
        "roll",
        "--env",
        "TARGET=two",
        "--no-wait",
    ]);
    let traffic = || ebb.get_json("route", "roll")["status"]["traffic"].clone();
    let mut saw_split = false;
    let rt = rt();
    wait_until("all traffic on roll-00002", Duration::from_secs(30), || {
        let t = traffic();
        if t.as_array().is_some_and(|a| a.len() == 2) {
            assert_eq!(t[0]["revisionName"], "roll-00002", "{t}");
            assert_eq!(t[1]["revisionName"], "roll-00001", "{t}");
            saw_split = true;
        }
        let (code, _) = rt.block_on(request(&http_client(), ebb.gateway, &ebb.host("roll"), "/"));
        assert_eq!(code, 200);
        t == serde_json::json!([{"revisionName": "roll-00002", "latestRevision": true, "percent": 100}])
    });
    assert!(saw_split, "the traffic moved in steps");
    wait_until("the Service Ready", Duration::from_secs(10), || {
        let svc = ebb.get_json("ksvc", "roll");
        svc["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    });
}

/// A DomainMapping serves a custom domain with a Service's traffic: Ready with its URL once the
/// Service is, the gateway answering that Host; its ClusterDomainClaim made for it; a second
/// namespace's mapping of the same domain is refused (DomainAlreadyClaimed) until the first is
/// deleted; a mapping to nothing says so; TLS is refused locally.
#[test]
fn a_domain_mapping_serves_a_custom_domain() {
    let ebb = Ebb::start();
    ebb.apply(&service_yaml(
        "hello",
        "hello",
        &[],
        &[("TARGET", "mapped")],
    ));
    let mapping = |ns: &str, name: &str, target: &str, extra: &str| {
        format!(
            "apiVersion: serving.knative.dev/v1beta1\nkind: DomainMapping\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  ref:\n    kind: Service\n    name: {target}\n    apiVersion: serving.knative.dev/v1\n{extra}"
        )
    };
    ebb.cli_stdin(
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: other\n"),
    );
    let out = ebb.cli_stdin(
        &["apply", "-f", "-"],
        Some(&mapping("default", "shop.example.test", "hello", "")),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let condition = |ns: &str, name: &str, t: &str| {
        let v = ebb.api_get(&format!(
            "/apis/serving.knative.dev/v1beta1/namespaces/{ns}/domainmappings/{name}"
        ));
        v["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == t)
            .map(|c| {
                (
                    c["status"].as_str().unwrap_or("").to_string(),
                    c["reason"].as_str().unwrap_or("").to_string(),
                )
            })
            .unwrap_or_default()
    };
    wait_until("the mapping Ready", Duration::from_secs(15), || {
        condition("default", "shop.example.test", "Ready").0 == "True"
    });
    let dm = ebb.api_get(
        "/apis/serving.knative.dev/v1beta1/namespaces/default/domainmappings/shop.example.test",
    );
    assert_eq!(dm["status"]["url"], "http://shop.example.test");
    let (code, body) = rt().block_on(request(
        &http_client(),
        ebb.gateway,
        "shop.example.test",
        "/",
    ));
    assert_eq!(
        (code, body.as_str()),
        (200, "Hello mapped! (hello-00001)\n")
    );

    // The same domain from another namespace: the first mapping keeps it.
    ebb.cli_stdin(
        &["apply", "-f", "-"],
        Some(&mapping("other", "shop.example.test", "hello", "")),
    );
    wait_until(
        "the second mapping refused",
        Duration::from_secs(15),
        || {
            condition("other", "shop.example.test", "DomainClaimed")
                == ("False".into(), "DomainAlreadyClaimed".into())
        },
    );
    // The first mapping claimed the domain for its namespace (a ClusterDomainClaim, made
    // because local mode autocreates claims); deleting it releases the claim, and the other
    // namespace's mapping takes the domain.
    let claim = ebb.api_get(
        "/apis/networking.internal.knative.dev/v1alpha1/clusterdomainclaims/shop.example.test",
    );
    assert_eq!(claim["spec"]["namespace"], "default", "{claim}");
    ebb.ok(&["delete", "dm", "shop.example.test", "-n", "default"]);
    wait_until(
        "the other namespace's mapping claims the domain",
        Duration::from_secs(15),
        || condition("other", "shop.example.test", "DomainClaimed").0 == "True",
    );
    let claim = ebb.api_get(
        "/apis/networking.internal.knative.dev/v1alpha1/clusterdomainclaims/shop.example.test",
    );
    assert_eq!(claim["spec"]["namespace"], "other", "{claim}");
    // A mapping to no Service, and one with TLS.
    ebb.cli_stdin(
        &["apply", "-f", "-"],
        Some(&mapping("default", "none.example.test", "missing", "")),
    );
    wait_until("the reference unresolved", Duration::from_secs(15), || {
        condition("default", "none.example.test", "ReferenceResolved")
            == ("False".into(), "ResolveFailed".into())
    });
    let (code, _) = rt().block_on(request(
        &http_client(),
        ebb.gateway,
        "none.example.test",
        "/",
    ));
    assert_eq!(code, 404);
    ebb.cli_stdin(
        &["apply", "-f", "-"],
        Some(&mapping(
            "default",
            "tls.example.test",
            "hello",
            "  tls:\n    secretName: cert\n",
        )),
    );
    wait_until("TLS refused locally", Duration::from_secs(15), || {
        condition("default", "tls.example.test", "Ready")
            == ("False".into(), "TLSNotSupported".into())
    });
    // Refused at admission: a name without a dot, a kind that is not served.
    let out = ebb.cli_stdin(
        &["apply", "-f", "-"],
        Some(
            &mapping("default", "nodot", "hello", "")
                .replace("kind: Service\n    name", "kind: Deployment\n    name"),
        ),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("metadata.name") && err.contains("spec.ref.kind"),
        "{err}"
    );
}

/// With config-network's `autocreate-cluster-domain-claims: "false"` (Knative's default), a
/// DomainMapping holds its domain only once a ClusterDomainClaim delegates it to the mapping's
/// namespace; a claim for another namespace keeps it refused; an invalid claim is refused at
/// admission naming the field.
#[test]
fn a_domain_mapping_waits_for_its_cluster_domain_claim() {
    let config = config_with(
        "config-network",
        &[("autocreate-cluster-domain-claims", "false")],
    );
    let ebb = Ebb::start_with(&["--config", config.to_str().unwrap()]);
    ebb.apply(&service_yaml(
        "hello",
        "hello",
        &[],
        &[("TARGET", "claimed")],
    ));
    let claim = |ns: &str| {
        format!(
            "apiVersion: networking.internal.knative.dev/v1alpha1\nkind: ClusterDomainClaim\nmetadata:\n  name: api.example.test\nspec:\n  namespace: {ns}\n"
        )
    };
    ebb.apply(
        "apiVersion: serving.knative.dev/v1beta1\nkind: DomainMapping\nmetadata:\n  name: api.example.test\n  namespace: default\nspec:\n  ref:\n    kind: Service\n    name: hello\n    apiVersion: serving.knative.dev/v1\n",
    );
    let claimed = || {
        let v = ebb.api_get(
            "/apis/serving.knative.dev/v1beta1/namespaces/default/domainmappings/api.example.test",
        );
        v["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "DomainClaimed")
            .map(|c| {
                (
                    c["status"].as_str().unwrap_or("").to_string(),
                    c["message"].as_str().unwrap_or("").to_string(),
                )
            })
            .unwrap_or_default()
    };
    wait_until("refused without a claim", Duration::from_secs(15), || {
        let (s, m) = claimed();
        s == "False" && m.contains("autocreate-cluster-domain-claims")
    });
    // A claim for another namespace does not help; one for this namespace does.
    ebb.apply(&claim("other"));
    wait_until(
        "refused: another namespace's",
        Duration::from_secs(15),
        || {
            let (s, m) = claimed();
            s == "False" && m.contains("\"other\"")
        },
    );
    let (code, _) = rt().block_on(request(
        &http_client(),
        ebb.gateway,
        "api.example.test",
        "/",
    ));
    assert_eq!(code, 404, "not served while the domain is not claimed");
    ebb.apply(&claim("default"));
    wait_until("claimed", Duration::from_secs(15), || claimed().0 == "True");
    wait_until("served", Duration::from_secs(15), || {
        rt().block_on(request(
            &http_client(),
            ebb.gateway,
            "api.example.test",
            "/",
        )) == (200, "Hello claimed! (hello-00001)\n".to_string())
    });
    // Deleting the mapping leaves an administrator's claim alone.
    ebb.ok(&["delete", "dm", "api.example.test", "-n", "default"]);
    std::thread::sleep(Duration::from_secs(1));
    let kept = ebb.api_get(
        "/apis/networking.internal.knative.dev/v1alpha1/clusterdomainclaims/api.example.test",
    );
    assert_eq!(kept["spec"]["namespace"], "default", "{kept}");
    let out = ebb.cli_stdin(
        &["apply", "-f", "-"],
        Some(&claim("Not_A_Namespace").replace("api.example.test", "bad.example.test")),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("spec.namespace"),
        "{err}"
    );
}
