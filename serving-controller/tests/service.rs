//! Service → Configuration + Route, and status propagation to the Service.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on broken fixtures

mod common;

use common::*;
use serde_json::json;
use serving_api::condition::ConditionStatus::False;
use serving_api::{Configuration, ConfigurationStatus, Route, RouteStatus};
use serving_controller::service::{desired_configuration, desired_route, service_status};

#[test]
fn children_carry_name_labels_annotations_and_owner() {
    let svc = service("hello", 1, hello_spec());
    let cfg = desired_configuration(&svc);
    let route = desired_route(&svc);
    for meta in [&cfg.metadata, &route.metadata] {
        assert_eq!(meta.name.as_deref(), Some("hello"));
        assert_eq!(meta.namespace.as_deref(), Some("default"));
        let labels = meta.labels.clone().unwrap_or_default();
        assert_eq!(
            labels.get("team").map(String::as_str),
            Some("a"),
            "user labels propagate"
        );
        assert_eq!(
            labels
                .get("serving.knative.dev/service")
                .map(String::as_str),
            Some("hello")
        );
        assert_eq!(
            labels
                .get("serving.knative.dev/serviceUID")
                .map(String::as_str),
            Some("uid-svc-hello")
        );
        let ann = meta.annotations.clone().unwrap_or_default();
        assert_eq!(ann.get("note").map(String::as_str), Some("x"));
        assert!(
            !ann.contains_key("kubectl.kubernetes.io/last-applied-configuration"),
            "last-applied is not propagated"
        );
        let owner = &meta.owner_references.as_ref().expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("Service", "hello", "uid-svc-hello")
        );
        assert_eq!(
            (owner.controller, owner.block_owner_deletion),
            (Some(true), Some(true))
        );
    }
    assert_eq!(cfg.spec.template, svc.spec.configuration.template);
}

#[test]
fn route_targets_follow_the_configuration() {
    let svc = service(
        "shop",
        1,
        json!({"template": {"spec": {"containers": [{"image": "x"}]}},
               "traffic": [{"latestRevision": true, "percent": 10, "tag": "next"},
                           {"revisionName": "shop-00001", "latestRevision": false, "percent": 90}]}),
    );
    let r = desired_route(&svc);
    assert_eq!(
        r.spec.traffic[0].configuration_name.as_deref(),
        Some("shop")
    );
    assert_eq!(r.spec.traffic[0].tag.as_deref(), Some("next"));
    assert_eq!(r.spec.traffic[1].configuration_name, None);
    assert_eq!(
        r.spec.traffic[1].revision_name.as_deref(),
        Some("shop-00001")
    );
}

fn owned_config(
    svc: &serving_api::Service,
    generation: i64,
    status: ConfigurationStatus,
) -> Configuration {
    let mut c = desired_configuration(svc);
    c.metadata.generation = Some(generation);
    c.status = Some(status);
    c
}

fn owned_route(svc: &serving_api::Service, generation: i64, status: RouteStatus) -> Route {
    let mut r = desired_route(svc);
    r.metadata.generation = Some(generation);
    r.status = Some(status);
    r
}

fn cfg_status(
    observed: i64,
    ready: serving_api::Condition,
    latest_ready: Option<&str>,
) -> ConfigurationStatus {
    from(
        json!({"observedGeneration": observed, "conditions": [ready],
                "latestCreatedRevisionName": "hello-00002", "latestReadyRevisionName": latest_ready}),
    )
}

fn route_status(observed: i64, ready: serving_api::Condition, revision: &str) -> RouteStatus {
    from(
        json!({"observedGeneration": observed, "conditions": [ready],
                "url": "http://hello.default.example.com",
                "address": {"url": "http://hello.default.svc.cluster.local"},
                "traffic": [{"revisionName": revision, "latestRevision": true, "percent": 100}]}),
    )
}

/// Rows: name, configuration status (generation observed), route status, want
/// (ConfigurationsReady, RoutesReady, Ready) with reasons.
#[test]
fn status_propagation_table() {
    let svc = service("hello", 2, hello_spec());
    type Row = (
        &'static str,
        Option<Configuration>,
        Option<Route>,
        [(&'static str, &'static str, &'static str); 3],
    );
    let rows: Vec<Row> = vec![
        (
            "nothing yet",
            None,
            None,
            [
                ("ConfigurationsReady", "Unknown", ""),
                ("Ready", "Unknown", ""),
                ("RoutesReady", "Unknown", ""),
            ],
        ),
        (
            "all ready",
            Some(owned_config(
                &svc,
                2,
                cfg_status(2, ready("Ready"), Some("hello-00002")),
            )),
            Some(owned_route(
                &svc,
                2,
                route_status(2, ready("Ready"), "hello-00002"),
            )),
            [
                ("ConfigurationsReady", "True", ""),
                ("Ready", "True", ""),
                ("RoutesReady", "True", ""),
            ],
        ),
        (
            "configuration out of date",
            Some(owned_config(
                &svc,
                2,
                cfg_status(1, ready("Ready"), Some("hello-00002")),
            )),
            Some(owned_route(
                &svc,
                2,
                route_status(2, ready("Ready"), "hello-00002"),
            )),
            [
                ("ConfigurationsReady", "Unknown", "OutOfDate"),
                ("Ready", "Unknown", "OutOfDate"),
                ("RoutesReady", "True", ""),
            ],
        ),
        (
            "route out of date",
            Some(owned_config(
                &svc,
                2,
                cfg_status(2, ready("Ready"), Some("hello-00002")),
            )),
            Some(owned_route(
                &svc,
                2,
                route_status(1, ready("Ready"), "hello-00002"),
            )),
            [
                ("ConfigurationsReady", "True", ""),
                ("Ready", "Unknown", "OutOfDate"),
                ("RoutesReady", "Unknown", "OutOfDate"),
            ],
        ),
        (
            "revision failed",
            Some(owned_config(
                &svc,
                2,
                cfg_status(
                    2,
                    cond("Ready", False, "RevisionFailed"),
                    Some("hello-00001"),
                ),
            )),
            Some(owned_route(
                &svc,
                2,
                route_status(2, ready("Ready"), "hello-00001"),
            )),
            [
                ("ConfigurationsReady", "False", "RevisionFailed"),
                ("Ready", "False", "RevisionFailed"),
                ("RoutesReady", "True", ""),
            ],
        ),
        (
            "traffic not migrated",
            Some(owned_config(
                &svc,
                2,
                cfg_status(2, ready("Ready"), Some("hello-00002")),
            )),
            Some(owned_route(
                &svc,
                2,
                route_status(2, ready("Ready"), "hello-00001"),
            )),
            [
                ("ConfigurationsReady", "True", ""),
                ("Ready", "Unknown", "TrafficNotMigrated"),
                ("RoutesReady", "Unknown", "TrafficNotMigrated"),
            ],
        ),
        (
            "route missing revision",
            Some(owned_config(
                &svc,
                2,
                cfg_status(2, ready("Ready"), Some("hello-00002")),
            )),
            Some(owned_route(
                &svc,
                2,
                route_status(2, cond("Ready", False, "RevisionMissing"), "hello-00002"),
            )),
            [
                ("ConfigurationsReady", "True", ""),
                ("Ready", "False", "RevisionMissing"),
                ("RoutesReady", "False", "RevisionMissing"),
            ],
        ),
        (
            "configuration not owned",
            Some({
                let mut c =
                    owned_config(&svc, 2, cfg_status(2, ready("Ready"), Some("hello-00002")));
                c.metadata.owner_references = None;
                c
            }),
            Some(owned_route(
                &svc,
                2,
                route_status(2, ready("Ready"), "hello-00002"),
            )),
            [
                ("ConfigurationsReady", "False", "NotOwned"),
                ("Ready", "False", "NotOwned"),
                ("RoutesReady", "True", ""),
            ],
        ),
    ];
    for (name, cfg, route, want) in rows {
        let st = service_status(&svc, cfg.as_ref(), route.as_ref());
        let got = summary(&st.conditions);
        let want: Vec<_> = want
            .iter()
            .map(|(t, s, r)| (t.to_string(), *s, r.to_string()))
            .collect();
        assert_eq!(got, want, "row {name}");
        assert_eq!(st.observed_generation, Some(2), "row {name}");
    }
}

#[test]
fn status_copies_urls_traffic_and_revisions() {
    let svc = service("hello", 2, hello_spec());
    let c = owned_config(&svc, 2, cfg_status(2, ready("Ready"), Some("hello-00002")));
    let r = owned_route(&svc, 2, route_status(2, ready("Ready"), "hello-00002"));
    let st = service_status(&svc, Some(&c), Some(&r));
    assert_eq!(
        st.route.url.as_deref(),
        Some("http://hello.default.example.com")
    );
    assert_eq!(
        st.route.address.and_then(|a| a.url).as_deref(),
        Some("http://hello.default.svc.cluster.local")
    );
    assert_eq!(
        st.configuration.latest_created_revision_name.as_deref(),
        Some("hello-00002")
    );
    assert_eq!(
        st.configuration.latest_ready_revision_name.as_deref(),
        Some("hello-00002")
    );
    assert_eq!(
        st.route.traffic[0].revision_name.as_deref(),
        Some("hello-00002")
    );
}
