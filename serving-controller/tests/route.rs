//! Route → resolved traffic, URLs and conditions.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on broken fixtures

mod common;

use common::*;
use serde_json::json;
use serving_api::config::{DomainConfig, NetworkConfig};
use serving_api::{Configuration, Revision};
use serving_controller::route::{IngressState, RouteInputs, route_status};

fn config_with(latest_ready: Option<&str>, ready: &str) -> Configuration {
    configuration(
        "shop",
        1,
        json!({"spec": {"containers": [{"image": "x"}]}}),
        json!({"observedGeneration": 1, "conditions": [{"type": "Ready", "status": ready}],
               "latestCreatedRevisionName": "shop-00002", "latestReadyRevisionName": latest_ready}),
    )
}

fn inputs<'a>(
    configs: &'a [Configuration],
    revs: &'a [Revision],
    domains: &'a DomainConfig,
    network: &'a NetworkConfig,
    ingress: &'a IngressState,
) -> RouteInputs<'a> {
    RouteInputs {
        configurations: configs,
        revisions: revs,
        network,
        domains,
        ingress,
    }
}

#[test]
fn resolves_split_with_tags() {
    let configs = vec![config_with(Some("shop-00002"), "True")];
    let revs = vec![
        revision("shop-00001", "shop", 1, Some(true)),
        revision("shop-00002", "shop", 2, Some(true)),
    ];
    let domains = DomainConfig::single("example.com");
    let network = NetworkConfig::default();
    let ingress = IngressState::Ready;
    let r = route(
        "shop",
        json!([{"configurationName": "shop", "latestRevision": true, "percent": 10, "tag": "candidate"},
               {"revisionName": "shop-00001", "latestRevision": false, "percent": 90, "tag": "old"}]),
    );
    let st = route_status(&r, &inputs(&configs, &revs, &domains, &network, &ingress));
    assert_eq!(
        summary(&st.conditions),
        vec![
            ("AllTrafficAssigned".into(), "True", "".into()),
            ("IngressReady".into(), "True", "".into()),
            ("Ready".into(), "True", "".into())
        ]
    );
    assert_eq!(
        st.fields.url.as_deref(),
        Some("http://shop.default.example.com")
    );
    assert_eq!(
        st.fields.address.as_ref().and_then(|a| a.url.as_deref()),
        Some("http://shop.default.svc.cluster.local")
    );
    let t = &st.fields.traffic;
    assert_eq!(t.len(), 2);
    assert_eq!(
        (
            t[0].revision_name.as_deref(),
            t[0].latest_revision,
            t[0].percent,
            t[0].url.as_deref(),
            t[0].configuration_name.as_deref()
        ),
        (
            Some("shop-00002"),
            Some(true),
            Some(10),
            Some("http://candidate-shop.default.example.com"),
            None
        )
    );
    assert_eq!(
        (
            t[1].revision_name.as_deref(),
            t[1].latest_revision,
            t[1].percent,
            t[1].url.as_deref()
        ),
        (
            Some("shop-00001"),
            Some(false),
            Some(90),
            Some("http://old-shop.default.example.com")
        )
    );
    assert_eq!(st.observed_generation, Some(1));
}

/// Rows: name, configurations, revisions, traffic, want (AllTrafficAssigned status, reason).
#[test]
fn unresolved_targets_table() {
    let ready_rev = revision("shop-00001", "shop", 1, Some(true));
    let pending_rev = revision("shop-00003", "shop", 3, None);
    let failed_rev = revision("shop-00004", "shop", 4, Some(false));
    type Row = (
        &'static str,
        Vec<Configuration>,
        Vec<Revision>,
        serde_json::Value,
        (&'static str, &'static str),
    );
    let rows: Vec<Row> = vec![
        (
            "missing configuration",
            vec![],
            vec![],
            json!([{"configurationName": "shop", "percent": 100}]),
            ("False", "ConfigurationMissing"),
        ),
        (
            "configuration without a ready revision yet",
            vec![config_with(None, "Unknown")],
            vec![],
            json!([{"configurationName": "shop", "percent": 100}]),
            ("Unknown", "RevisionMissing"),
        ),
        (
            "configuration whose revision failed",
            vec![config_with(None, "False")],
            vec![],
            json!([{"configurationName": "shop", "percent": 100}]),
            ("False", "RevisionMissing"),
        ),
        (
            "missing revision",
            vec![],
            vec![],
            json!([{"revisionName": "shop-00009", "percent": 100}]),
            ("False", "RevisionMissing"),
        ),
        (
            "pinned revision not ready",
            vec![],
            vec![pending_rev],
            json!([{"revisionName": "shop-00003", "percent": 100}]),
            ("Unknown", "RevisionMissing"),
        ),
        (
            "pinned revision failed",
            vec![],
            vec![failed_rev],
            json!([{"revisionName": "shop-00004", "percent": 100}]),
            ("False", "RevisionMissing"),
        ),
        (
            "one good, one missing: False wins",
            vec![config_with(None, "Unknown")],
            vec![ready_rev],
            json!([{"configurationName": "shop", "percent": 50}, {"revisionName": "shop-00009", "percent": 50}]),
            ("False", "RevisionMissing"),
        ),
    ];
    let domains = DomainConfig::single("example.com");
    let network = NetworkConfig::default();
    let ingress = IngressState::Ready;
    for (name, configs, revs, traffic, want) in rows {
        let mut r = route("shop", traffic);
        // Previously served traffic must survive a partial resolution.
        r.status = Some(from(
            json!({"traffic": [{"revisionName": "shop-00001", "latestRevision": false, "percent": 100}]}),
        ));
        let st = route_status(&r, &inputs(&configs, &revs, &domains, &network, &ingress));
        let assigned = &st.conditions[0];
        assert_eq!(assigned.type_, "AllTrafficAssigned");
        assert_eq!(
            (
                assigned.status.as_str(),
                assigned.reason.as_deref().unwrap_or("")
            ),
            want,
            "row {name}"
        );
        assert!(
            assigned.message.as_deref().is_some_and(|m| !m.is_empty()),
            "row {name}: a message says why"
        );
        let ready = st
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| c.status.as_str());
        assert_eq!(ready, Some(want.0), "row {name}: Ready follows");
        assert_eq!(st.fields.traffic.len(), 1, "row {name}: old traffic kept");
        assert_eq!(
            st.fields.traffic[0].revision_name.as_deref(),
            Some("shop-00001"),
            "row {name}"
        );
        assert!(
            st.fields.address.is_none(),
            "row {name}: no address before the route is ready"
        );
    }
}

#[test]
fn ingress_not_ready_keeps_route_unready() {
    let configs = vec![config_with(Some("shop-00002"), "True")];
    let revs = vec![revision("shop-00002", "shop", 2, Some(true))];
    let domains = DomainConfig::single("example.com");
    let network = NetworkConfig::default();
    let ingress = IngressState::NotReady {
        reason: "IngressNotConfigured".into(),
        message: "gateway is programming the route".into(),
    };
    let r = route(
        "shop",
        json!([{"configurationName": "shop", "percent": 100}]),
    );
    let st = route_status(&r, &inputs(&configs, &revs, &domains, &network, &ingress));
    assert_eq!(
        summary(&st.conditions),
        vec![
            ("AllTrafficAssigned".into(), "True", "".into()),
            (
                "IngressReady".into(),
                "Unknown",
                "IngressNotConfigured".into()
            ),
            ("Ready".into(), "Unknown", "IngressNotConfigured".into())
        ]
    );
    assert_eq!(
        st.fields.traffic.len(),
        1,
        "traffic is resolved even before the gateway is ready"
    );
}

#[test]
fn cluster_local_and_custom_domains() {
    let configs = vec![config_with(Some("shop-00002"), "True")];
    let revs = vec![revision("shop-00002", "shop", 2, Some(true))];
    let network = NetworkConfig {
        default_external_scheme: "https".into(),
        ..NetworkConfig::default()
    };
    let ingress = IngressState::Ready;
    let domains = DomainConfig::single("example.com");
    let mut r = route(
        "shop",
        json!([{"configurationName": "shop", "percent": 100, "tag": "v2"}]),
    );
    let st = route_status(&r, &inputs(&configs, &revs, &domains, &network, &ingress));
    assert_eq!(
        st.fields.url.as_deref(),
        Some("https://shop.default.example.com")
    );
    assert_eq!(
        st.fields.traffic[0].url.as_deref(),
        Some("https://v2-shop.default.example.com")
    );

    r.metadata.labels = Some(
        [(
            "networking.knative.dev/visibility".to_string(),
            "cluster-local".to_string(),
        )]
        .into(),
    );
    let st = route_status(&r, &inputs(&configs, &revs, &domains, &network, &ingress));
    assert_eq!(
        st.fields.url.as_deref(),
        Some("http://shop.default.svc.cluster.local")
    );
    assert_eq!(
        st.fields.traffic[0].url.as_deref(),
        Some("http://v2-shop.default.svc.cluster.local")
    );
}
