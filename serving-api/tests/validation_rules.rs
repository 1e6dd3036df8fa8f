//! One row per validation rule not already exercised by the invalid fixtures: the object (YAML),
//! and the errors (path and a fragment of the rule) that must come back, all of them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on broken fixtures

use serving_api::defaults::{default_revision, default_route, default_service};
use serving_api::validation::{
    ValidationConfig, validate_revision, validate_route, validate_service,
};
use serving_api::{Revision, Route, Service};

fn service(spec: &str) -> String {
    format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: svc\n  namespace: default\nspec:\n{spec}"
    )
}

fn check(kind: &str, yaml: &str, want: &[&str], cfg: &ValidationConfig) {
    let result = match kind {
        "Service" => {
            let mut s: Service =
                serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
            default_service(&mut s, &cfg.defaults);
            validate_service(&s, cfg)
        }
        "Route" => {
            let mut r: Route =
                serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
            default_route(&mut r);
            validate_route(&r, cfg)
        }
        "Revision" => {
            let mut r: Revision =
                serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
            default_revision(&mut r, &cfg.defaults);
            validate_revision(&r, cfg)
        }
        other => panic!("unknown kind {other}"),
    };
    let got: Vec<String> = result
        .err()
        .map(|e| e.0.iter().map(ToString::to_string).collect())
        .unwrap_or_default();
    for w in want {
        assert!(
            got.iter().any(|g| g.contains(w)),
            "missing {w:?} in:\n{}\n---\n{yaml}",
            got.join("\n")
        );
    }
    assert_eq!(
        got.len(),
        want.len(),
        "got:\n{}\n---\n{yaml}",
        got.join("\n")
    );
}

const IMAGE: &str = "  template:\n    spec:\n      containers:\n        - image: app\n";

#[test]
fn service_rules() {
    let cfg = ValidationConfig::default();
    let rows: Vec<(&str, String, Vec<&str>)> = vec![
        ("valid minimal", service(IMAGE), vec![]),
        (
            "no containers",
            service("  template:\n    spec:\n      containers: []\n"),
            vec!["spec.template.spec.containers: at least one container is required"],
        ),
        (
            "latestRevision false without a revision",
            service(&format!(
                "{IMAGE}  traffic:\n    - latestRevision: false\n      percent: 100\n"
            )),
            vec![
                "spec.traffic[0]: exactly one of revisionName or latestRevision: true is required",
            ],
        ),
        (
            "percents short of 100",
            service(&format!(
                "{IMAGE}  traffic:\n    - latestRevision: true\n      percent: 50\n    - revisionName: svc-00001\n      percent: 40\n"
            )),
            vec!["spec.traffic: percents must sum to 100; they sum to 90"],
        ),
        (
            "bad revision name in traffic",
            service(&format!(
                "{IMAGE}  traffic:\n    - revisionName: Svc_1\n      percent: 100\n"
            )),
            vec!["spec.traffic[0].revisionName: invalid value \"Svc_1\""],
        ),
        (
            "tag host over 63 characters",
            service(&format!(
                "{IMAGE}  traffic:\n    - latestRevision: true\n      percent: 100\n      tag: {}\n",
                "t".repeat(60)
            )),
            vec!["would exceed 63 characters"],
        ),
        (
            "negative percent",
            service(&format!(
                "{IMAGE}  traffic:\n    - latestRevision: true\n      percent: 110\n    - revisionName: svc-00001\n      percent: -10\n"
            )),
            vec![
                "spec.traffic[0].percent: invalid value \"110\"",
                "spec.traffic[1].percent: invalid value \"-10\"",
            ],
        ),
        (
            "probe with two handlers, named port and bad thresholds",
            service(
                "  template:\n    spec:\n      containers:\n        - image: app\n          readinessProbe:\n            httpGet:\n              port: http\n            tcpSocket:\n              port: 8080\n            successThreshold: 0\n            periodSeconds: -1\n",
            ),
            vec![
                "readinessProbe: at most one of httpGet, tcpSocket, exec or grpc",
                "readinessProbe.httpGet.port: invalid value \"http\": named ports are not supported",
                "readinessProbe.successThreshold: invalid value \"0\": must be at least 1",
                "readinessProbe.periodSeconds: invalid value \"-1\": must be at least 0",
            ],
        ),
        (
            "liveness probe on another port",
            service(
                "  template:\n    spec:\n      containers:\n        - image: app\n          ports:\n            - containerPort: 9000\n          livenessProbe:\n            tcpSocket:\n              port: 9001\n",
            ),
            vec![
                "livenessProbe.tcpSocket.port: invalid value \"9001\": must be 0 or the container port (9000)",
            ],
        ),
        (
            "hostPort, port out of range",
            service(
                "  template:\n    spec:\n      containers:\n        - image: app\n          ports:\n            - containerPort: 70000\n              hostPort: 80\n",
            ),
            vec![
                "ports[0].containerPort: invalid value \"70000\": must be between 1 and 65535",
                "ports[0].hostPort: must not be set",
            ],
        ),
        (
            "bad container name, empty env name, duplicate mount, duplicate volume",
            service(
                "  template:\n    spec:\n      containers:\n        - name: App\n          image: app\n          env:\n            - name: \"\"\n              value: x\n          volumeMounts:\n            - name: v\n              mountPath: /data\n            - name: v\n              mountPath: /data/\n      volumes:\n        - name: v\n          emptyDir: {}\n        - name: v\n          emptyDir: {}\n",
            ),
            vec![
                "containers[0].name: invalid value \"App\"",
                "containers[0].env[0].name: required",
                "containers[0].volumeMounts[1].mountPath: invalid value \"/data/\": mounted twice",
                "volumes[1].name: invalid value \"v\": duplicate volume name",
            ],
        ),
        (
            "init container without image",
            service(
                "  template:\n    spec:\n      initContainers:\n        - name: init\n      containers:\n        - image: app\n",
            ),
            vec![
                "spec.template.spec.initContainers: must not be set: Knative gates it behind the \"kubernetes.podspec-init-containers\" feature (config-features)",
                "spec.template.spec.initContainers[0].image: required",
            ],
        ),
        (
            "stdin",
            service(
                "  template:\n    spec:\n      containers:\n        - image: app\n          stdin: true\n          stdinOnce: true\n",
            ),
            vec![
                "containers[0].stdin: must not be set",
                "containers[0].stdinOnce: must not be set",
            ],
        ),
        (
            "template name not a DNS label",
            service(
                "  template:\n    metadata:\n      name: svc-V1\n    spec:\n      containers:\n        - image: app\n",
            ),
            vec!["spec.template.metadata.name: invalid value \"svc-V1\""],
        ),
    ];
    for (name, yaml, want) in rows {
        eprintln!("row: {name}");
        check("Service", &yaml, &want, &cfg);
    }
}

#[test]
fn missing_name_and_generate_name() {
    let cfg = ValidationConfig::default();
    let no_name = format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  namespace: default\nspec:\n{IMAGE}"
    );
    check("Service", &no_name, &["metadata.name: required"], &cfg);
    let generated = format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  generateName: svc-\n  namespace: default\nspec:\n{IMAGE}"
    );
    check("Service", &generated, &[], &cfg);
    let long = format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {}\nspec:\n{IMAGE}",
        "s".repeat(64)
    );
    check(
        "Service",
        &long,
        &["must be at most 63 characters (is 64)"],
        &cfg,
    );
}

#[test]
fn config_bounds_apply() {
    let mut cfg = ValidationConfig::default();
    cfg.defaults.allow_container_concurrency_zero = false;
    cfg.defaults.container_concurrency = 1;
    cfg.defaults.container_concurrency_max_limit = 50;
    let zero = service(
        "  template:\n    spec:\n      containerConcurrency: 0\n      containers:\n        - image: app\n",
    );
    check(
        "Service",
        &zero,
        &["containerConcurrency: invalid value \"0\": must be between 1 and 50"],
        &cfg,
    );
    let over = service(
        "  template:\n    spec:\n      containerConcurrency: 51\n      containers:\n        - image: app\n",
    );
    check(
        "Service",
        &over,
        &["containerConcurrency: invalid value \"51\": must be between 1 and 50"],
        &cfg,
    );
}

#[test]
fn route_rules() {
    let cfg = ValidationConfig::default();
    let route = |traffic: &str| {
        format!(
            "apiVersion: serving.knative.dev/v1\nkind: Route\nmetadata:\n  name: rt\n  namespace: default\nspec:\n  traffic:\n{traffic}"
        )
    };
    let rows: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "config target",
            route("    - configurationName: cfg\n      percent: 100\n"),
            vec![],
        ),
        (
            "both names",
            route(
                "    - configurationName: cfg\n      revisionName: cfg-00001\n      percent: 100\n",
            ),
            vec!["spec.traffic[0]: exactly one of revisionName or configurationName is required"],
        ),
        (
            "neither name",
            route("    - percent: 100\n"),
            vec!["spec.traffic[0]: exactly one of revisionName or configurationName"],
        ),
        (
            "latestRevision true with revisionName",
            route(
                "    - revisionName: cfg-00001\n      latestRevision: true\n      percent: 100\n",
            ),
            vec!["spec.traffic[0].latestRevision: may be true only with configurationName"],
        ),
        (
            "latestRevision false with configurationName",
            route(
                "    - configurationName: cfg\n      latestRevision: false\n      percent: 100\n",
            ),
            vec!["spec.traffic[0].latestRevision: must not be false with configurationName"],
        ),
        (
            "single target without percent takes 100",
            route("    - configurationName: cfg\n"),
            vec![],
        ),
        (
            "sum and duplicate tags",
            route(
                "    - configurationName: cfg\n      percent: 30\n      tag: a\n    - revisionName: cfg-00001\n      percent: 30\n      tag: a\n",
            ),
            vec![
                "spec.traffic[1].tag: invalid value \"a\": duplicate tag",
                "spec.traffic: percents must sum to 100; they sum to 60",
            ],
        ),
    ];
    for (name, yaml, want) in rows {
        eprintln!("row: {name}");
        check("Route", &yaml, &want, &cfg);
    }
}

#[test]
fn revision_rules() {
    let cfg = ValidationConfig::default();
    let ok = "apiVersion: serving.knative.dev/v1\nkind: Revision\nmetadata:\n  name: svc-00001\nspec:\n  containers:\n    - image: app\n";
    check("Revision", ok, &[], &cfg);
    let bad = "apiVersion: serving.knative.dev/v1\nkind: Revision\nmetadata:\n  name: Svc\n  annotations:\n    autoscaling.knative.dev/max-scale: \"-1\"\nspec:\n  timeoutSeconds: 601\n  containers:\n    - image: app\n";
    check(
        "Revision",
        bad,
        &[
            "metadata.name: invalid value \"Svc\"",
            "metadata.annotations.autoscaling.knative.dev/max-scale: invalid value \"-1\"",
            "spec.timeoutSeconds: invalid value \"601\"",
        ],
        &cfg,
    );
}

#[test]
fn defaulting_fills_what_knative_fills() {
    let mut s: Service = serde_saphyr::from_str(&service(IMAGE)).unwrap_or_default();
    default_service(&mut s, &Default::default());
    let spec = &s.spec.configuration.template.spec;
    assert_eq!(spec.container_concurrency, Some(0));
    assert_eq!(spec.timeout_seconds, Some(300));
    assert_eq!(spec.response_start_timeout_seconds, Some(300));
    assert_eq!(spec.idle_timeout_seconds, Some(0));
    assert_eq!(spec.pod.containers[0].name, "user-container");
    assert_eq!(spec.serving_port(), (8080, false));
    let probe = spec.pod.containers[0]
        .readiness_probe
        .as_ref()
        .and_then(|p| p.tcp_socket.as_ref());
    assert!(
        probe.is_some(),
        "a TCP readiness probe on the user port is defaulted"
    );
    let t = &s.spec.route.traffic;
    assert_eq!(t.len(), 1);
    assert_eq!(
        (t[0].latest_revision, t[0].percent),
        (Some(true), Some(100))
    );

    // Revision-name targets are pinned, not latest.
    let mut pinned: Service = serde_saphyr::from_str(&service(&format!(
        "{IMAGE}  traffic:\n    - revisionName: svc-00001\n      percent: 100\n"
    )))
    .unwrap_or_default();
    default_service(&mut pinned, &Default::default());
    assert_eq!(pinned.spec.route.traffic[0].latest_revision, Some(false));

    // config-defaults overrides flow in, including resource defaults.
    let cfg = serving_api::config::DefaultsConfig {
        revision_timeout_seconds: 60,
        revision_response_start_timeout_seconds: Some(10),
        container_concurrency: 4,
        revision_cpu_request: Some("100m".into()),
        ..Default::default()
    };
    let mut s: Service = serde_saphyr::from_str(&service(IMAGE)).unwrap_or_default();
    default_service(&mut s, &cfg);
    let spec = &s.spec.configuration.template.spec;
    assert_eq!(
        (
            spec.timeout_seconds,
            spec.response_start_timeout_seconds,
            spec.container_concurrency
        ),
        (Some(60), Some(10), Some(4))
    );
    let cpu = spec.pod.containers[0]
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("cpu"));
    assert_eq!(cpu.map(|q| q.0.as_str()), Some("100m"));
}

mod properties {
    use proptest::prelude::*;
    use serving_api::validation::{ValidationConfig, validate_service};
    use serving_api::{Service, TrafficTarget};

    proptest! {
        /// Traffic is accepted exactly when every percent is in 0..=100 and they sum to 100.
        #[test]
        fn traffic_accepted_iff_percents_sum_to_100(
            mut percents in proptest::collection::vec(-10i64..120, 1..6),
            balance in any::<bool>(),
        ) {
            // Half the cases are made to sum to 100, so both outcomes are exercised.
            if balance {
                let rest: i64 = percents[1..].iter().sum();
                percents[0] = 100 - rest;
            }
            let mut svc: Service = serde_saphyr::from_str(
                "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: svc\nspec:\n  template:\n    spec:\n      containers:\n        - image: app\n",
            ).unwrap();
            svc.spec.route.traffic = percents
                .iter()
                .enumerate()
                .map(|(i, p)| TrafficTarget {
                    revision_name: Some(format!("svc-{i:05}")),
                    latest_revision: Some(false),
                    percent: Some(*p),
                    ..TrafficTarget::default()
                })
                .collect();
            let ok = percents.iter().all(|p| (0..=100).contains(p)) && percents.iter().sum::<i64>() == 100;
            prop_assert_eq!(validate_service(&svc, &ValidationConfig::default()).is_ok(), ok);
        }
    }
}
