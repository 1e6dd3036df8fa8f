//! Revision GC per config-gc, as Knative's: stale non-active revisions beyond the minimum go,
//! oldest activity first; beyond the maximum the oldest go whatever their age; routed, latest
//! and `no-gc` revisions stay.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on broken fixtures

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::json;
use serving_api::config::GcConfig;
use serving_api::{Configuration, Revision};
use serving_controller::gc::collect;

const NOW: i64 = 1_800_000_000;

fn at(secs_ago: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_second(NOW - secs_ago)
        .unwrap()
        .to_string()
}

fn rev(name: &str, created_ago: i64, state: &str, extra: serde_json::Value) -> Revision {
    let mut v = json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Revision",
        "metadata": {"name": name, "namespace": "default", "creationTimestamp": at(created_ago),
            "labels": {"serving.knative.dev/configuration": "app", "serving.knative.dev/routingState": state},
            "annotations": {"serving.knative.dev/routingStateModified": at(created_ago)}},
        "spec": {"containers": [{"image": "x"}]},
    });
    if let Some(m) = extra.as_object() {
        for (k, val) in m {
            v["metadata"]["annotations"][k] = val.clone();
        }
    }
    serde_json::from_value(v).unwrap()
}

fn config(latest: &str) -> Configuration {
    serde_json::from_value(json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Configuration",
        "metadata": {"name": "app", "namespace": "default"},
        "spec": {"template": {"spec": {"containers": [{"image": "x"}]}}},
        "status": {"latestCreatedRevisionName": latest, "latestReadyRevisionName": latest},
    }))
    .unwrap()
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(NOW).unwrap())
}

fn gc(min: u32, max: Option<u32>, create: Option<u64>, active: Option<u64>) -> GcConfig {
    GcConfig {
        retain_since_create_time: create.map(Duration::from_secs),
        retain_since_last_active_time: active.map(Duration::from_secs),
        min_non_active_revisions: min,
        max_non_active_revisions: max,
    }
}

#[test]
fn stale_revisions_beyond_the_minimum_go_oldest_first() {
    let hour = 3600;
    let revs = vec![
        rev("app-1", 5 * hour, "reserve", json!({})),
        rev("app-2", 4 * hour, "reserve", json!({})),
        rev("app-3", 3 * hour, "reserve", json!({})),
        rev("app-4", 60, "reserve", json!({})),
        rev(
            "app-5",
            30,
            "active",
            json!({"serving.knative.dev/routes": "app"}),
        ),
    ];
    let cfg = gc(1, None, Some(2 * 3600), Some(2 * 3600));
    assert_eq!(
        collect(&config("app-5"), &revs, &cfg, &now()),
        ["app-1", "app-2", "app-3"],
        "the stale three; app-4 is recent, app-5 routed"
    );
    // The minimum keeps the newest stale ones.
    let cfg = gc(3, None, Some(2 * 3600), Some(2 * 3600));
    assert_eq!(collect(&config("app-5"), &revs, &cfg, &now()), ["app-1"]);
    // Knative's defaults keep 20.
    assert!(collect(&config("app-5"), &revs, &GcConfig::default(), &now()).is_empty());
    // Both time rules disabled: nothing is stale.
    assert!(collect(&config("app-5"), &revs, &gc(0, None, None, None), &now()).is_empty());
}

#[test]
fn the_maximum_removes_the_oldest_whatever_their_age() {
    let revs = vec![
        rev("app-1", 300, "reserve", json!({})),
        rev(
            "app-2",
            200,
            "reserve",
            json!({"serving.knative.dev/no-gc": "true"}),
        ),
        rev("app-3", 100, "reserve", json!({})),
        rev("app-4", 50, "pending", json!({})),
        rev("app-5", 10, "pending", json!({})),
    ];
    // app-5 is the latest; app-2 is marked no-gc: of app-1, app-3 and app-4 one may stay.
    let cfg = gc(0, Some(1), None, None);
    assert_eq!(
        collect(&config("app-5"), &revs, &cfg, &now()),
        ["app-1", "app-3"]
    );
}
