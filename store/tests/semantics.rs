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

fn child(kind: &str, name: &str, owner: &Value) -> Value {
    json!({
        "apiVersion": "serving.knative.dev/v1", "kind": kind,
        "metadata": {"name": name, "ownerReferences": [{
            "apiVersion": "serving.knative.dev/v1", "kind": "Service",
            "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"], "controller": true,
        }]},
        "spec": {},
    })
}

/// A state directory whose store went missing, was emptied or was replaced does not start as
/// a fresh, empty system: opening it names the file and how to recover.
#[test]
fn a_lost_store_is_an_error_not_a_fresh_start() {
    let d = dir();
    {
        let s = Store::open_dir(&d.0).unwrap();
        s.apply(svc("v1", json!({}))).unwrap();
    }
    assert!(d.0.join(store::MARKER_FILE).exists());
    let file = d.0.join(store::STORE_FILE);
    // Reopened: the same store, the same data.
    assert_eq!(
        Store::open_dir(&d.0)
            .unwrap()
            .list("Service", None)
            .unwrap()
            .len(),
        1
    );

    let copy = d.0.join("copy.redb");
    std::fs::copy(&file, &copy).unwrap();
    for (damage, what) in [
        ("truncate", "empty"),
        ("remove", "missing"),
        ("replace", "another store"),
    ] {
        match damage {
            "truncate" => std::fs::File::create(&file).map(drop).unwrap(),
            "remove" => std::fs::remove_file(&file).unwrap(),
            _ => {
                let _ = std::fs::remove_file(&file);
                drop(Store::open(&file).unwrap());
            }
        }
        let e = Store::open_dir(&d.0).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, StoreError::Lost { .. }), "{damage}: {text}");
        assert!(
            text.contains(what) && text.contains("store.redb") && text.contains("--reset"),
            "{damage}: {text}"
        );
        std::fs::copy(&copy, &file).unwrap();
        assert_eq!(
            Store::open_dir(&d.0)
                .unwrap()
                .list("Service", None)
                .unwrap()
                .len(),
            1
        );
    }
    // Cut short inside: refused, naming the file.
    let len = std::fs::metadata(&file).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(len / 3)
        .unwrap();
    let text = Store::open_dir(&d.0).map(|_| ()).unwrap_err().to_string();
    assert!(text.contains("store.redb"), "{text}");
    // Starting over on purpose.
    Store::reset_dir(&d.0).unwrap();
    assert!(
        Store::open_dir(&d.0)
            .unwrap()
            .list("Service", None)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_held_lock_is_told_apart_from_other_errors() {
    let d = dir();
    let _first = Store::open_dir(&d.0).unwrap();
    let e = Store::open_dir(&d.0).map(|_| ()).unwrap_err();
    assert!(matches!(e, StoreError::Locked { .. }), "{e}");
    assert!(e.to_string().contains("another `ebb local up`"), "{e}");
    let lost = StoreError::Lost {
        file: "f".into(),
        marker: "m".into(),
        what: "missing",
        id: "x".into(),
    };
    assert!(!lost.to_string().contains("another `ebb local up`"));
}

/// One record that no longer decodes is reported by kind, namespace and name; the others are
/// listed and served; it can be deleted (with what it owned) and written anew.
#[test]
fn a_damaged_record_is_reported_and_the_rest_served() {
    let d = dir();
    let path = d.0.join("state.redb");
    {
        let s = Store::open(&path).unwrap();
        let hello = s.apply(svc("v1", json!({}))).unwrap();
        s.apply(child("Route", "hello", &hello)).unwrap();
        let mut other = svc("v1", json!({}));
        other["metadata"]["name"] = json!("other");
        s.apply(other).unwrap();
    }
    {
        let db = redb::Database::create(&path).unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut t = w
                .open_table(redb::TableDefinition::<&str, &[u8]>::new("objects"))
                .unwrap();
            t.insert("Service/default/hello", &b"{\"kind\": \"Serv\xff"[..])
                .unwrap();
        }
        w.commit().unwrap();
    }
    let s = Store::open(&path).unwrap();
    let damaged = s.damaged();
    assert_eq!(damaged.len(), 1);
    assert_eq!(
        (
            damaged[0].kind.as_str(),
            damaged[0].namespace.as_str(),
            damaged[0].name.as_str()
        ),
        ("Service", "default", "hello")
    );
    let names: Vec<Value> = s
        .list("Service", None)
        .unwrap()
        .iter()
        .map(|o| o["metadata"]["name"].clone())
        .collect();
    assert_eq!(names, [json!("other")]);
    assert!(matches!(
        s.get("Service", "default", "hello"),
        Err(StoreError::Damaged { .. })
    ));
    let e = s.get("Service", "default", "hello").unwrap_err();
    assert!(
        e.to_string().contains("Service default/hello is damaged"),
        "{e}"
    );
    // Deleting it takes what it owned too (found by owner kind and name).
    let gone = s.delete("Service", "default", "hello").unwrap();
    assert_eq!(gone.len(), 2, "{gone:?}");
    assert!(s.get("Route", "default", "hello").unwrap().is_none());
    assert!(s.damaged().is_empty());
    s.apply(svc("v2", json!({}))).unwrap();
}

/// A damaged record applied anew is whole again (a parent re-creating its child repairs it).
#[test]
fn a_damaged_record_written_anew_is_whole() {
    let d = dir();
    let path = d.0.join("state.redb");
    drop(
        Store::open(&path)
            .unwrap()
            .apply(svc("v1", json!({})))
            .unwrap(),
    );
    {
        let db = redb::Database::create(&path).unwrap();
        let w = db.begin_write().unwrap();
        w.open_table(redb::TableDefinition::<&str, &[u8]>::new("objects"))
            .unwrap()
            .insert("Service/default/hello", &b"garbage"[..])
            .unwrap();
        w.commit().unwrap();
    }
    let s = Store::open(&path).unwrap();
    assert_eq!(s.damaged().len(), 1);
    let written = s.apply(svc("v2", json!({}))).unwrap();
    assert_eq!(written["metadata"]["generation"], 1);
    assert!(s.damaged().is_empty());
    assert_eq!(
        s.get("Service", "default", "hello").unwrap().unwrap()["spec"],
        written["spec"]
    );
}

/// The operations the Kubernetes API needs: create refuses an existing name; replace checks
/// the resourceVersion; a watch starts at any recent resourceVersion and sees each later
/// change once, in order, deletions included; an older one is Gone; orphaning keeps children.
#[test]
fn kubernetes_api_semantics() {
    let d = dir();
    let s = Store::open(&d.0.join("state.redb")).unwrap();
    let a = s.create(svc("v1", json!({}))).unwrap();
    assert!(matches!(
        s.create(svc("v1", json!({}))),
        Err(StoreError::AlreadyExists { .. })
    ));
    let stale = a["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let b = s.replace(svc("v2", json!({})), Some(&stale)).unwrap();
    assert_eq!(b["metadata"]["generation"], 2);
    assert!(matches!(
        s.replace(svc("v3", json!({})), Some(&stale)),
        Err(StoreError::Conflict { .. })
    ));
    let mut missing = svc("v1", json!({}));
    missing["metadata"]["name"] = json!("missing");
    assert!(matches!(
        s.replace(missing, None),
        Err(StoreError::NotFound { .. })
    ));

    let from = rv(&a);
    let child = s.create(child("Route", "hello", &b)).unwrap();
    let gone = s
        .delete_with(
            "Service",
            "default",
            "hello",
            store::Propagation::Orphan,
            None,
        )
        .unwrap();
    assert_eq!(gone.len(), 1);
    let orphan = s.get("Route", "default", "hello").unwrap().unwrap();
    assert_eq!(orphan["metadata"]["ownerReferences"], json!([]));
    assert!(rv(&orphan) > rv(&child));

    let w = s.watch_from(from).unwrap();
    let seen: Vec<(String, u64)> = w
        .backlog
        .iter()
        .map(|e| {
            let what = match e {
                Event::Added(o) | Event::Modified(o) | Event::Deleted(o) => {
                    format!(
                        "{:?} {}",
                        std::mem::discriminant(e),
                        o["kind"].as_str().unwrap()
                    )
                }
            };
            (what, e.resource_version())
        })
        .collect();
    assert_eq!(
        seen.len(),
        4,
        "replace, route create, orphaning, delete: {seen:?}"
    );
    assert!(
        seen.windows(2).all(|p| p[0].1 < p[1].1),
        "in order: {seen:?}"
    );
    assert!(
        matches!(w.backlog.last(), Some(Event::Deleted(o)) if rv(o) == s.resource_version().unwrap())
    );
    // Namespaces are cluster-scoped.
    let ns = s
        .create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}}))
        .unwrap();
    assert!(ns["metadata"].get("namespace").is_none());
    assert!(s.get("Namespace", "", "team").unwrap().is_some());
    // Past the history: Gone.
    for i in 0..store::HISTORY + 1 {
        let mut o = svc("v1", json!({}));
        o["metadata"]["name"] = json!(format!("s{i}"));
        s.create(o).unwrap();
    }
    assert!(matches!(s.watch_from(from), Err(StoreError::Gone { .. })));
}
