//! The committed CRDs are what the Rust types generate, and they make the API server refuse
//! what it can check itself: OpenAPI bounds and the CEL rules, evaluated here offline exactly as
//! written in `config/crds/`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on broken fixtures

use std::path::{Path, PathBuf};

use kube::core::cel::Validator;
use serde_json::Value;

fn root() -> PathBuf {
    xtask::repo_root()
}

#[test]
fn committed_crds_match_the_types() {
    let stale = xtask::drift(&root()).unwrap_or_else(|e| panic!("{e}"));
    assert!(stale.is_empty(), "run `cargo xtask gen`; stale: {stale:?}");
}

fn crd_schema(file: &str) -> Value {
    let text = std::fs::read_to_string(root().join("config/crds").join(file)).unwrap_or_default();
    let crd: Value = serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

fn load(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What the API server would say about `obj`: OpenAPI violations, then CEL rule messages.
fn server_errors(schema: &Value, obj: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    // OpenAPI v3 keywords used by CRDs are a JSON Schema subset; the `x-kubernetes-*` and
    // `nullable` keywords are ignored by the validator, so None values must be absent (they are).
    let validator = jsonschema::validator_for(schema).unwrap_or_else(|e| panic!("schema: {e}"));
    errors.extend(
        validator
            .iter_errors(obj)
            .map(|e| format!("{}: {e}", e.instance_path())),
    );
    if let Err(cel) = Validator::new().validate(schema, obj, None) {
        errors.extend(cel.to_string().lines().map(str::to_string));
    }
    errors
}

#[test]
fn examples_pass_the_crd_schema() {
    let schema = crd_schema("service.yaml");
    let dir = root().join("examples");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let errors = server_errors(&schema, &load(&path));
            assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
            n += 1;
        }
    }
    assert!(
        n >= 5,
        "expected the example manifests in {}",
        dir.display()
    );
}

#[test]
fn api_server_refuses_invalid_services() {
    let schema = crd_schema("service.yaml");
    let svc = |spec: Value| {
        serde_json::json!({
            "apiVersion": "serving.knative.dev/v1", "kind": "Service",
            "metadata": {"name": "shop", "namespace": "default"},
            "spec": spec,
        })
    };
    let template = serde_json::json!({"spec": {"containers": [{"image": "app"}]}});
    let rows: Vec<(&str, Value, &str)> = vec![
        (
            "percents",
            svc(serde_json::json!({"template": template, "traffic": [
                {"latestRevision": true, "percent": 60}, {"revisionName": "shop-1", "percent": 50}]})),
            "percents must sum to 100",
        ),
        (
            "percent bound",
            svc(
                serde_json::json!({"template": template, "traffic": [{"latestRevision": true, "percent": 101}]}),
            ),
            "101",
        ),
        (
            "revision and latest",
            svc(serde_json::json!({"template": template, "traffic": [
                {"revisionName": "shop-1", "latestRevision": true, "percent": 100}]})),
            "not both",
        ),
        (
            "configurationName",
            svc(serde_json::json!({"template": template, "traffic": [
                {"configurationName": "shop", "latestRevision": true, "percent": 100}]})),
            "configurationName is not allowed",
        ),
        (
            "url",
            svc(serde_json::json!({"template": template, "traffic": [
                {"latestRevision": true, "percent": 100, "url": "http://x"}]})),
            "url is set by the system",
        ),
        (
            "duplicate tags",
            svc(serde_json::json!({"template": template, "traffic": [
                {"latestRevision": true, "percent": 50, "tag": "a"}, {"revisionName": "shop-1", "percent": 50, "tag": "a"}]})),
            "tags must be unique",
        ),
        (
            "tag pattern",
            svc(
                serde_json::json!({"template": template, "traffic": [{"latestRevision": true, "percent": 100, "tag": "Bad_Tag"}]}),
            ),
            "Bad_Tag",
        ),
        (
            "template name prefix",
            svc(
                serde_json::json!({"template": {"metadata": {"name": "other-1"}, "spec": {"containers": [{"image": "app"}]}}}),
            ),
            "must start with the Service name",
        ),
        (
            "negative concurrency",
            svc(
                serde_json::json!({"template": {"spec": {"containerConcurrency": -1, "containers": [{"image": "app"}]}}}),
            ),
            "-1",
        ),
        ("no template", svc(serde_json::json!({})), "template"),
    ];
    for (name, obj, want) in rows {
        let errors = server_errors(&schema, &obj);
        assert!(
            errors.iter().any(|e| e.contains(want)),
            "{name}: want {want:?} in {errors:#?}"
        );
    }
    let mut bad_name = svc(serde_json::json!({"template": template}));
    bad_name["metadata"]["name"] = Value::from("Shop_1");
    let errors = server_errors(&schema, &bad_name);
    assert!(errors.iter().any(|e| e.contains("DNS-1035")), "{errors:#?}");
}

#[test]
fn api_server_refuses_invalid_routes() {
    let schema = crd_schema("route.yaml");
    let route = |traffic: Value| {
        serde_json::json!({"apiVersion": "serving.knative.dev/v1", "kind": "Route",
            "metadata": {"name": "rt"}, "spec": {"traffic": traffic}})
    };
    let ok = route(serde_json::json!([{"configurationName": "c", "percent": 100}]));
    assert!(server_errors(&schema, &ok).is_empty());
    let single = route(serde_json::json!([{"configurationName": "c"}]));
    assert!(
        server_errors(&schema, &single).is_empty(),
        "a single target may omit percent"
    );
    let both = route(
        serde_json::json!([{"configurationName": "c", "revisionName": "c-1", "percent": 100}]),
    );
    let errors = server_errors(&schema, &both);
    assert!(
        errors
            .iter()
            .any(|e| e.contains("exactly one of revisionName or configurationName")),
        "{errors:#?}"
    );
}
