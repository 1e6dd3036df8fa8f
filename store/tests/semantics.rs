//! The store behaves like the Kubernetes API for Ebb's objects, and keeps them across restarts.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on broken fixtures

use serde_json::{Value, json};
use store::{Event, Store, StoreError};

fn svc(image: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Service",
        "metadata": {"name": "hello", "labels": labels},
        "spec": {"template": {"spec": {"containers": [{"image": image}]}}},
    })
}

fn dir() -> tempdir::Dir {
    tempdir::Dir::new()
}

mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> Dir {
            let p = std::env::temp_dir().join(format!(
                "ebb-store-{}-{}",
                std::process::id(),
                fastrand_name()
            ));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn fastrand_name() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    }
}

fn rv(v: &Value) -> u64 {
    v["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn generation_moves_only_with_spec() {
    let d = dir();
    let s = Store::open(&d.0.join("state.redb")).unwrap();
    let a = s.apply(svc("v1", json!({}))).unwrap();
    assert_eq!(a["metadata"]["generation"], 1);
    assert_eq!(a["metadata"]["namespace"], "default");
    assert!(a["metadata"]["uid"].as_str().is_some_and(|u| u.len() == 36));
    let b = s.apply(svc("v1", json!({"team": "a"}))).unwrap();
    assert_eq!(
        b["metadata"]["generation"], 1,
        "a label change is not a spec change"
    );
    assert!(rv(&b) > rv(&a));
    assert_eq!(b["metadata"]["uid"], a["metadata"]["uid"]);
    let c = s.apply(svc("v2", json!({"team": "a"}))).unwrap();
    assert_eq!(c["metadata"]["generation"], 2);
}

#[test]
fn status_is_apart_from_spec() {
    let d = dir();
    let s = Store::open(&d.0.join("state.redb")).unwrap();
    let a = s.apply(svc("v1", json!({}))).unwrap();
    let with_status = s
        .update_status(
            "Service",
            "default",
            "hello",
            json!({"observedGeneration": 1}),
            Some(a["metadata"]["resourceVersion"].as_str().unwrap()),
        )
        .unwrap();
    assert_eq!(
        with_status["metadata"]["generation"], 1,
        "status writes do not bump generation"
    );
    // apply never writes status, and keeps the stored one.
    let mut desired = svc("v2", json!({}));
    desired["status"] = json!({"observedGeneration": 99});
    let b = s.apply(desired).unwrap();
    assert_eq!(b["status"]["observedGeneration"], 1);
    // A status write against an old resourceVersion is a conflict.
    let err = s
        .update_status(
            "Service",
            "default",
            "hello",
            json!({}),
            Some(a["metadata"]["resourceVersion"].as_str().unwrap()),
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    assert!(matches!(
        s.update_status("Service", "default", "nope", json!({}), None),
        Err(StoreError::NotFound { .. })
    ));
}

#[test]
fn delete_cascades_through_owner_references() {
    let d = dir();
    let s = Store::open(&d.0.join("state.redb")).unwrap();
    let svc = s.apply(svc("v1", json!({}))).unwrap();
    let owner = |o: &Value| json!([{"apiVersion": "serving.knative.dev/v1", "kind": o["kind"], "name": o["metadata"]["name"], "uid": o["metadata"]["uid"], "controller": true}]);
    let cfg = s.apply(json!({"kind": "Configuration", "metadata": {"name": "hello", "ownerReferences": owner(&svc)}, "spec": {}})).unwrap();
    s.apply(json!({"kind": "Revision", "metadata": {"name": "hello-00001", "ownerReferences": owner(&cfg)}, "spec": {}})).unwrap();
    s.apply(json!({"kind": "Revision", "metadata": {"name": "other-00001"}, "spec": {}}))
        .unwrap();
    let deleted = s.delete("Service", "default", "hello").unwrap();
    assert_eq!(deleted.len(), 3);
    assert!(
        s.get("Revision", "default", "hello-00001")
            .unwrap()
            .is_none()
    );
    assert!(
        s.get("Revision", "default", "other-00001")
            .unwrap()
            .is_some(),
        "unowned objects stay"
    );
    assert!(matches!(
        s.delete("Service", "default", "hello"),
        Err(StoreError::NotFound { .. })
    ));
}

#[test]
fn survives_a_restart() {
    let d = dir();
    let path = d.0.join("state.redb");
    let before = {
        let s = Store::open(&path).unwrap();
        s.apply(svc("v1", json!({}))).unwrap();
        s.apply(svc("v2", json!({}))).unwrap()
    };
    let s = Store::open(&path).unwrap();
    let after = s.get("Service", "default", "hello").unwrap().unwrap();
    assert_eq!(after, before);
    let next = s.apply(svc("v3", json!({}))).unwrap();
    assert!(
        rv(&next) > rv(&before),
        "resourceVersion keeps growing across restarts"
    );
    assert_eq!(next["metadata"]["generation"], 3);
    assert_eq!(s.list("Service", None).unwrap().len(), 1);
    assert_eq!(s.list("Service", Some("other")).unwrap().len(), 0);
}

#[test]
fn watch_sees_every_change() {
    let d = dir();
    let s = Store::open(&d.0.join("state.redb")).unwrap();
    let mut w = s.watch();
    s.apply(svc("v1", json!({}))).unwrap();
    s.apply(svc("v2", json!({}))).unwrap();
    s.update_status("Service", "default", "hello", json!({"x": 1}), None)
        .unwrap();
    s.delete("Service", "default", "hello").unwrap();
    let kinds: Vec<&str> = (0..4)
        .map(|_| match w.try_recv().unwrap() {
            Event::Added(_) => "added",
            Event::Modified(_) => "modified",
            Event::Deleted(_) => "deleted",
        })
        .collect();
    assert_eq!(kinds, ["added", "modified", "modified", "deleted"]);
}

#[test]
fn objects_need_kind_and_name() {
    let d = dir();
    let s = Store::open(&d.0.join("state.redb")).unwrap();
    assert!(matches!(
        s.apply(json!({"metadata": {"name": "x"}})),
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        s.apply(json!({"kind": "Service", "metadata": {}})),
        Err(StoreError::Invalid(_))
    ));
}
