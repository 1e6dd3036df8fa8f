//! Configuration → Revision, and the Configuration's status.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on broken fixtures

mod common;

use common::*;
use serde_json::json;
use serving_api::Revision;
use serving_controller::configuration::{
    RevisionPlan, configuration_status, desired_revision, plan_revision,
};

fn template(image: &str) -> serde_json::Value {
    json!({"metadata": {"labels": {"tier": "web"}, "annotations": {"autoscaling.knative.dev/min-scale": "1"}},
           "spec": {"containers": [{"image": image}]}})
}

fn named_template(name: &str, image: &str) -> serde_json::Value {
    json!({"metadata": {"name": name}, "spec": {"containers": [{"image": image}]}})
}

#[test]
fn revision_is_stamped_from_the_template() {
    let mut c = configuration("hello", 3, template("ebb/hello:1"), json!({}));
    c.metadata.labels = Some(
        [(
            "serving.knative.dev/service".to_string(),
            "hello".to_string(),
        )]
        .into(),
    );
    c.metadata.annotations = Some(
        [(
            "serving.knative.dev/creator".to_string(),
            "alice".to_string(),
        )]
        .into(),
    );
    let r = desired_revision(&c);
    assert_eq!(r.metadata.name.as_deref(), Some("hello-00003"));
    let labels = r.metadata.labels.clone().unwrap_or_default();
    for (k, v) in [
        ("tier", "web"),
        ("serving.knative.dev/configuration", "hello"),
        ("serving.knative.dev/configurationGeneration", "3"),
        ("serving.knative.dev/configurationUID", "uid-cfg-hello"),
        ("serving.knative.dev/service", "hello"),
    ] {
        assert_eq!(labels.get(k).map(String::as_str), Some(v), "label {k}");
    }
    let ann = r.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        ann.get("autoscaling.knative.dev/min-scale")
            .map(String::as_str),
        Some("1")
    );
    assert_eq!(
        ann.get("serving.knative.dev/creator").map(String::as_str),
        Some("alice")
    );
    let owner = &r.metadata.owner_references.clone().unwrap_or_default()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Configuration", "hello")
    );
    assert_eq!(r.spec, c.spec.template.spec);
}

fn stamped(c: &serving_api::Configuration, ready: Option<bool>) -> Revision {
    let mut r = desired_revision(c);
    r.status = revision("x", "x", 1, ready).status;
    r
}

/// Rows: name, configuration, existing revisions, want plan.
#[test]
fn plan_table() {
    let gen1 = configuration("hello", 1, template("ebb/hello:1"), json!({}));
    let gen2 = configuration("hello", 2, template("ebb/hello:2"), json!({}));
    let byo1 = configuration(
        "hello",
        1,
        named_template("hello-blue", "ebb/hello:1"),
        json!({}),
    );
    let byo2_same = configuration(
        "hello",
        2,
        named_template("hello-blue", "ebb/hello:1"),
        json!({}),
    );
    let byo2_changed = configuration(
        "hello",
        2,
        named_template("hello-blue", "ebb/hello:2"),
        json!({}),
    );
    let byo_other = configuration(
        "hello",
        1,
        named_template("other-00001", "ebb/hello:1"),
        json!({}),
    );
    let rows: Vec<(&str, &serving_api::Configuration, Vec<Revision>, &str)> = vec![
        (
            "first generation creates",
            &gen1,
            vec![],
            "create hello-00001",
        ),
        (
            "same generation again: nothing new",
            &gen1,
            vec![stamped(&gen1, Some(true))],
            "existing hello-00001",
        ),
        (
            "template change creates the next",
            &gen2,
            vec![stamped(&gen1, Some(true))],
            "create hello-00002",
        ),
        (
            "user-chosen name is used",
            &byo1,
            vec![],
            "create hello-blue",
        ),
        (
            "user-chosen name, same template, new generation",
            &byo2_same,
            vec![stamped(&byo1, Some(true))],
            "existing hello-blue",
        ),
        (
            "user-chosen name reused with a changed template",
            &byo2_changed,
            vec![stamped(&byo1, Some(true))],
            "conflict hello-blue spec.containers[0].image",
        ),
        (
            "name owned by another configuration",
            &byo_other,
            vec![revision("other-00001", "other", 1, Some(true))],
            "conflict other-00001 belongs to configuration \"other\"",
        ),
    ];
    for (name, config, existing, want) in rows {
        let got = match plan_revision(config, &existing) {
            RevisionPlan::Create(r) => format!("create {}", r.metadata.name.unwrap_or_default()),
            RevisionPlan::Existing(n) => format!("existing {n}"),
            RevisionPlan::Conflict { name, message } => format!("conflict {name} {message}"),
        };
        let mut parts = want.splitn(3, ' ');
        let (kind, rev, detail) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        assert!(
            got.starts_with(&format!("{kind} {rev}")),
            "row {name}: got {got}"
        );
        assert!(got.contains(detail), "row {name}: want {detail:?} in {got}");
    }
}

/// Rows: name, previous status, plan, revisions, want (Ready status, reason, latestCreated, latestReady).
#[test]
fn status_table() {
    let prev_ready = json!({"latestCreatedRevisionName": "hello-00001", "latestReadyRevisionName": "hello-00001"});
    type Want = (
        &'static str,
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
    );
    let rows: Vec<(&str, serde_json::Value, i64, Vec<Revision>, Want)> = vec![
        (
            "new revision pending",
            json!({}),
            1,
            vec![],
            ("Unknown", "", Some("hello-00001"), None),
        ),
        (
            "revision not ready yet",
            json!({}),
            1,
            vec![revision("hello-00001", "hello", 1, None)],
            ("Unknown", "", Some("hello-00001"), None),
        ),
        (
            "revision ready",
            json!({}),
            1,
            vec![revision("hello-00001", "hello", 1, Some(true))],
            ("True", "", Some("hello-00001"), Some("hello-00001")),
        ),
        (
            "newer revision pending keeps latest ready",
            prev_ready.clone(),
            2,
            vec![
                revision("hello-00001", "hello", 1, Some(true)),
                revision("hello-00002", "hello", 2, None),
            ],
            ("Unknown", "", Some("hello-00002"), Some("hello-00001")),
        ),
        (
            "newer revision failed",
            prev_ready.clone(),
            2,
            vec![
                revision("hello-00001", "hello", 1, Some(true)),
                revision("hello-00002", "hello", 2, Some(false)),
            ],
            (
                "False",
                "RevisionFailed",
                Some("hello-00002"),
                Some("hello-00001"),
            ),
        ),
        (
            "latest ready revision deleted",
            json!({"latestCreatedRevisionName": "hello-00002", "latestReadyRevisionName": "hello-00001"}),
            2,
            vec![revision("hello-00002", "hello", 2, None)],
            ("False", "RevisionDeleted", Some("hello-00002"), None),
        ),
        (
            "old ready revision deleted after a newer one is ready",
            prev_ready.clone(),
            2,
            vec![revision("hello-00002", "hello", 2, Some(true))],
            ("True", "", Some("hello-00002"), Some("hello-00002")),
        ),
    ];
    for (name, prev, generation, revs, want) in rows {
        let c = configuration("hello", generation, template("ebb/hello"), prev);
        let plan = plan_revision(&c, &revs);
        let st = configuration_status(&c, &plan, &revs);
        let ready = &st.conditions[0];
        let got = (
            ready.status.as_str(),
            ready.reason.clone().unwrap_or_default(),
            st.fields.latest_created_revision_name.clone(),
            st.fields.latest_ready_revision_name.clone(),
        );
        let want = (
            want.0,
            want.1.to_string(),
            want.2.map(String::from),
            want.3.map(String::from),
        );
        assert_eq!(got, want, "row {name}");
        assert_eq!(st.observed_generation, Some(generation), "row {name}");
    }
}

#[test]
fn conflict_is_reported_on_ready() {
    let byo1 = configuration(
        "hello",
        1,
        named_template("hello-blue", "ebb/hello:1"),
        json!({}),
    );
    let byo2 = configuration(
        "hello",
        2,
        named_template("hello-blue", "ebb/hello:2"),
        json!({"latestReadyRevisionName": "hello-blue"}),
    );
    let revs = vec![stamped(&byo1, Some(true))];
    let plan = plan_revision(&byo2, &revs);
    let st = configuration_status(&byo2, &plan, &revs);
    assert_eq!(st.conditions[0].status.as_str(), "False");
    assert_eq!(st.conditions[0].reason.as_deref(), Some("RevisionFailed"));
    assert!(
        st.conditions[0]
            .message
            .clone()
            .unwrap_or_default()
            .contains("without a change of spec.template.metadata.name")
    );
    assert_eq!(
        st.fields.latest_ready_revision_name.as_deref(),
        Some("hello-blue"),
        "traffic stays on the old revision"
    );
}
