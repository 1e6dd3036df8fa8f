//! Fixtures shared by the table tests: objects as they look after the API server stored them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on broken fixtures
#![allow(dead_code)]

use serde_json::{Value, json};
use serving_api::condition::{Condition, ConditionStatus};
use serving_api::{Configuration, Revision, Route, Service};

pub fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap_or_else(|e| panic!("fixture: {e}"))
}

pub fn service(name: &str, generation: i64, spec: Value) -> Service {
    from(json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-svc-{name}"), "generation": generation,
                     "labels": {"team": "a"},
                     "annotations": {"note": "x", "kubectl.kubernetes.io/last-applied-configuration": "{}"}},
        "spec": spec,
    }))
}

pub fn hello_spec() -> Value {
    json!({"template": {"spec": {"containers": [{"image": "ebb/hello"}]}},
           "traffic": [{"latestRevision": true, "percent": 100}]})
}

pub fn ready(t: &str) -> Condition {
    Condition::truthy(t)
}

pub fn cond(t: &str, s: ConditionStatus, reason: &str) -> Condition {
    Condition::new(t, s, reason, "")
}

pub fn revision(name: &str, config: &str, generation: i64, ready: Option<bool>) -> Revision {
    let status = match ready {
        None => json!({}),
        Some(true) => json!({"conditions": [{"type": "Ready", "status": "True"}]}),
        Some(false) => {
            json!({"conditions": [{"type": "Ready", "status": "False", "reason": "ExitCode1", "message": "container exited"}]})
        }
    };
    from(json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Revision",
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-rev-{name}"),
                     "labels": {"serving.knative.dev/configuration": config,
                                "serving.knative.dev/configurationGeneration": generation.to_string()}},
        "spec": {"containers": [{"image": "ebb/hello"}]},
        "status": status,
    }))
}

pub fn configuration(name: &str, generation: i64, template: Value, status: Value) -> Configuration {
    from(json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Configuration",
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-cfg-{name}"), "generation": generation},
        "spec": {"template": template},
        "status": status,
    }))
}

pub fn route(name: &str, traffic: Value) -> Route {
    from(json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Route",
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-rt-{name}"), "generation": 1},
        "spec": {"traffic": traffic},
    }))
}

pub fn summary(conditions: &[Condition]) -> Vec<(String, &'static str, String)> {
    conditions
        .iter()
        .map(|c| {
            (
                c.type_.clone(),
                c.status.as_str(),
                c.reason.clone().unwrap_or_default(),
            )
        })
        .collect()
}
