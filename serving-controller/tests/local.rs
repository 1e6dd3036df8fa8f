//! Local mode's control plane over the real embedded store: a Service becomes a Configuration,
//! Route and Revision; readiness flows up; a template change rolls out; deletes cascade.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on broken fixtures

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{Value, json};
use serving_controller::local::{LocalConfig, settle};
use store::Store;

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap())
}

fn service(image: &str) -> Value {
    let mut svc: serving_api::Service = serde_json::from_value(json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Service",
        "metadata": {"name": "hello", "namespace": "default"},
        "spec": {"template": {"spec": {"containers": [{"image": image}]}}},
    }))
    .unwrap();
    serving_api::defaults::default_service(&mut svc, &Default::default());
    serde_json::to_value(svc).unwrap()
}

/// What the instance runtime reports once a revision serves.
fn mark_ready(store: &Store, name: &str) {
    let rev = store
        .get("Revision", "default", name)
        .unwrap()
        .expect("revision exists");
    let status = json!({"observedGeneration": 1, "conditions": [
        {"type": "Ready", "status": "True"}, {"type": "ResourcesAvailable", "status": "True"}, {"type": "ContainerHealthy", "status": "True"}]});
    store
        .update_status(
            "Revision",
            "default",
            name,
            status,
            rev["metadata"]["resourceVersion"].as_str(),
        )
        .unwrap();
}

fn cond(obj: &Value, t: &str) -> (String, String) {
    let c = obj["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == t))
        .cloned()
        .unwrap_or_default();
    (
        c["status"].as_str().unwrap_or("").to_string(),
        c["reason"].as_str().unwrap_or("").to_string(),
    )
}

/// A revision's routing state label and its `routes` annotation.
fn routing(store: &Store, name: &str) -> (String, Option<String>) {
    let rev = store.get("Revision", "default", name).unwrap().unwrap();
    (
        rev["metadata"]["labels"]["serving.knative.dev/routingState"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        rev["metadata"]["annotations"]["serving.knative.dev/routes"]
            .as_str()
            .map(str::to_string),
    )
}

#[test]
fn service_lifecycle_in_the_store() {
    let dir = std::env::temp_dir().join(format!("ebb-local-cp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = Store::open(&dir.join("state.redb")).unwrap();
    let cfg = LocalConfig::default();

    store.apply(service("ebb/hello:1")).unwrap();
    assert!(settle(&store, &cfg, &now()).unwrap() > 0);
    let svc = store.get("Service", "default", "hello").unwrap().unwrap();
    assert!(
        store
            .get("Configuration", "default", "hello")
            .unwrap()
            .is_some()
    );
    assert!(store.get("Route", "default", "hello").unwrap().is_some());
    assert!(
        store
            .get("Revision", "default", "hello-00001")
            .unwrap()
            .is_some()
    );
    assert_eq!(
        cond(&svc, "Ready").0,
        "Unknown",
        "not ready before the revision is"
    );
    assert_eq!(svc["status"]["latestCreatedRevisionName"], "hello-00001");
    assert_eq!(routing(&store, "hello-00001"), ("pending".into(), None));
    assert_eq!(
        settle(&store, &cfg, &now()).unwrap(),
        0,
        "settled: nothing rewritten"
    );

    mark_ready(&store, "hello-00001");
    settle(&store, &cfg, &now()).unwrap();
    let svc = store.get("Service", "default", "hello").unwrap().unwrap();
    assert_eq!(cond(&svc, "Ready"), ("True".into(), "".into()), "{svc:#}");
    assert_eq!(svc["status"]["url"], "http://hello.default.localhost");
    assert_eq!(
        svc["status"]["address"]["url"],
        "http://hello.default.svc.cluster.local"
    );
    assert_eq!(svc["status"]["latestReadyRevisionName"], "hello-00001");
    assert_eq!(
        routing(&store, "hello-00001"),
        ("active".into(), Some("hello".into()))
    );
    assert_eq!(svc["status"]["traffic"][0]["revisionName"], "hello-00001");
    assert_eq!(svc["status"]["observedGeneration"], 1);
    assert!(svc["status"]["conditions"][0]["lastTransitionTime"].is_string());

    // A template change stamps hello-00002; traffic stays on 00001 until 00002 is ready.
    store.apply(service("ebb/hello:2")).unwrap();
    settle(&store, &cfg, &now()).unwrap();
    assert!(
        store
            .get("Revision", "default", "hello-00002")
            .unwrap()
            .is_some()
    );
    let route = store.get("Route", "default", "hello").unwrap().unwrap();
    assert_eq!(route["status"]["traffic"][0]["revisionName"], "hello-00001");
    mark_ready(&store, "hello-00002");
    settle(&store, &cfg, &now()).unwrap();
    let svc = store.get("Service", "default", "hello").unwrap().unwrap();
    assert_eq!(svc["status"]["traffic"][0]["revisionName"], "hello-00002");
    assert_eq!(svc["status"]["observedGeneration"], 2);
    assert_eq!(
        routing(&store, "hello-00002"),
        ("active".into(), Some("hello".into()))
    );
    assert_eq!(
        routing(&store, "hello-00001"),
        ("reserve".into(), None),
        "no Route sends it traffic any more"
    );
    let old = store
        .get("Revision", "default", "hello-00001")
        .unwrap()
        .unwrap();
    assert!(
        old["metadata"]["annotations"]["serving.knative.dev/routingStateModified"].is_string(),
        "{old:#}"
    );
    assert_eq!(cond(&svc, "Ready").0, "True");

    // Deleting the Service removes everything it owns.
    let deleted = store.delete("Service", "default", "hello").unwrap();
    assert_eq!(
        deleted.len(),
        5,
        "service, configuration, route and two revisions"
    );
    assert!(store.list("Revision", None).unwrap().is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A Configuration of the Service's name that the Service does not control is not taken over:
/// the Service reports NotOwned and the Configuration keeps its own template.
#[test]
fn a_foreign_child_is_not_taken_over() {
    let dir = std::env::temp_dir().join(format!("ebb-local-owned-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = Store::open(&dir.join("state.redb")).unwrap();
    let cfg = LocalConfig::default();
    let mut foreign: serving_api::Configuration = serde_json::from_value(json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Configuration",
        "metadata": {"name": "hello", "namespace": "default"},
        "spec": {"template": {"spec": {"containers": [{"image": "someone/else:1"}]}}},
    }))
    .unwrap();
    serving_api::defaults::default_configuration(&mut foreign, &Default::default());
    store.apply(serde_json::to_value(foreign).unwrap()).unwrap();
    store.apply(service("ebb/hello:1")).unwrap();
    settle(&store, &cfg, &now()).unwrap();
    let svc = store.get("Service", "default", "hello").unwrap().unwrap();
    assert_eq!(
        cond(&svc, "ConfigurationsReady"),
        ("False".into(), "NotOwned".into()),
        "{svc:#}"
    );
    assert_eq!(cond(&svc, "Ready").0, "False");
    let config = store
        .get("Configuration", "default", "hello")
        .unwrap()
        .unwrap();
    assert_eq!(
        config["spec"]["template"]["spec"]["containers"][0]["image"], "someone/else:1",
        "not overwritten"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Ready means routable: a Route (and so its Service) is Ready only once the gateway's table
/// was built from what the Route's status says.
#[test]
fn a_route_is_ready_only_once_the_gateway_routes_it() {
    use serving_controller::local::settle_with;
    use serving_controller::route::Programmed;
    let dir = std::env::temp_dir().join(format!("ebb-local-routable-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = Store::open(&dir.join("state.redb")).unwrap();
    let cfg = LocalConfig::default();
    let nothing = Programmed::Routes(Default::default());
    store.apply(service("ebb/hello:1")).unwrap();
    settle_with(&store, &cfg, &now(), &nothing).unwrap();
    mark_ready(&store, "hello-00001");
    settle_with(&store, &cfg, &now(), &nothing).unwrap();
    let route = store.get("Route", "default", "hello").unwrap().unwrap();
    assert_eq!(
        cond(&route, "IngressReady"),
        ("Unknown".into(), "Uninitialized".into()),
        "{route:#}"
    );
    assert_eq!(route["status"]["traffic"][0]["revisionName"], "hello-00001");
    let svc = store.get("Service", "default", "hello").unwrap().unwrap();
    assert_eq!(
        cond(&svc, "Ready").0,
        "Unknown",
        "not Ready before routable"
    );

    // The gateway's table built from the stored Routes: now Ready.
    let routes: Vec<serving_api::Route> = store
        .list("Route", None)
        .unwrap()
        .into_iter()
        .map(|v| serde_json::from_value(v).unwrap())
        .collect();
    let table = Programmed::of(routes.iter());
    settle_with(&store, &cfg, &now(), &table).unwrap();
    let svc = store.get("Service", "default", "hello").unwrap().unwrap();
    assert_eq!(cond(&svc, "Ready").0, "True", "{svc:#}");

    // A traffic change is not Ready again until the table has it.
    store.apply(service("ebb/hello:2")).unwrap();
    settle_with(&store, &cfg, &now(), &table).unwrap();
    mark_ready(&store, "hello-00002");
    settle_with(&store, &cfg, &now(), &table).unwrap();
    let route = store.get("Route", "default", "hello").unwrap().unwrap();
    assert_eq!(route["status"]["traffic"][0]["revisionName"], "hello-00002");
    assert_eq!(cond(&route, "Ready").0, "Unknown", "{route:#}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// config-gc in local mode: with max-non-active-revisions 1, the third template leaves one
/// non-active revision (the older goes); the routed one stays.
#[test]
fn non_active_revisions_are_collected_per_config_gc() {
    let dir = std::env::temp_dir().join(format!("ebb-local-gc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = Store::open(&dir.join("state.redb")).unwrap();
    let cfg = LocalConfig {
        gc: serving_api::config::GcConfig {
            retain_since_create_time: None,
            retain_since_last_active_time: None,
            min_non_active_revisions: 0,
            max_non_active_revisions: Some(1),
        },
        ..LocalConfig::default()
    };
    for (i, image) in ["ebb/hello:1", "ebb/hello:2", "ebb/hello:3"]
        .iter()
        .enumerate()
    {
        store.apply(service(image)).unwrap();
        settle(&store, &cfg, &now()).unwrap();
        mark_ready(&store, &format!("hello-0000{}", i + 1));
        settle(&store, &cfg, &now()).unwrap();
    }
    let names: Vec<String> = store
        .list("Revision", None)
        .unwrap()
        .iter()
        .filter_map(|r| r["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        names,
        ["hello-00002", "hello-00003"],
        "hello-00001 collected"
    );
    let svc = store.get("Service", "default", "hello").unwrap().unwrap();
    assert_eq!(svc["status"]["traffic"][0]["revisionName"], "hello-00003");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Gradual rollout (config-network rollout-duration 10s): a new latest revision takes traffic
/// in 10% steps a second apart, visible in the Route's status, the state kept on the Route (so
/// a restart resumes it), until all of it is on the new revision.
#[test]
fn a_new_revision_takes_traffic_in_steps_over_the_rollout_duration() {
    let dir = std::env::temp_dir().join(format!("ebb-local-rollout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = Store::open(&dir.join("state.redb")).unwrap();
    let mut cfg = LocalConfig::default();
    cfg.network.rollout_duration = std::time::Duration::from_secs(10);
    let at = |s: i64| Time(k8s_openapi::jiff::Timestamp::from_second(1_800_000_000 + s).unwrap());
    store.apply(service("ebb/hello:1")).unwrap();
    settle(&store, &cfg, &at(0)).unwrap();
    mark_ready(&store, "hello-00001");
    settle(&store, &cfg, &at(0)).unwrap();
    let split = |store: &Store| -> Vec<(String, i64)> {
        let route = store.get("Route", "default", "hello").unwrap().unwrap();
        route["status"]["traffic"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["revisionName"].as_str().unwrap().to_string(),
                    t["percent"].as_i64().unwrap(),
                )
            })
            .collect()
    };
    assert_eq!(
        split(&store),
        [("hello-00001".to_string(), 100)],
        "the first revision at once"
    );

    store.apply(service("ebb/hello:2")).unwrap();
    settle(&store, &cfg, &at(0)).unwrap();
    mark_ready(&store, "hello-00002");
    settle(&store, &cfg, &at(0)).unwrap();
    assert_eq!(
        split(&store),
        [
            ("hello-00002".to_string(), 10),
            ("hello-00001".to_string(), 90)
        ]
    );
    let route = store.get("Route", "default", "hello").unwrap().unwrap();
    assert!(
        route["metadata"]["annotations"]["serving.knative.dev/rollout"].is_string(),
        "{route:#}"
    );
    // Not yet due: nothing moves.
    settle(&store, &cfg, &at(0)).unwrap();
    assert_eq!(split(&store)[0].1, 10);
    for s in 1..=8 {
        settle(&store, &cfg, &at(s)).unwrap();
        assert_eq!(
            split(&store),
            [
                ("hello-00002".to_string(), 10 + 10 * s),
                ("hello-00001".to_string(), 90 - 10 * s)
            ],
            "after {s} s"
        );
    }
    settle(&store, &cfg, &at(9)).unwrap();
    assert_eq!(
        split(&store),
        [("hello-00002".to_string(), 100)],
        "rolled out"
    );
    let route = store.get("Route", "default", "hello").unwrap().unwrap();
    assert!(route["metadata"]["annotations"]["serving.knative.dev/rollout"].is_null());
    let svc = store.get("Service", "default", "hello").unwrap().unwrap();
    assert_eq!(cond(&svc, "Ready").0, "True");
    let _ = std::fs::remove_dir_all(&dir);
}
