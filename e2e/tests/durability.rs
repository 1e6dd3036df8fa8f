//! Local mode never loses data silently: a damaged record is reported and the rest served; a
//! store that went missing stops startup naming the file and the way out; `--reset` starts over
//! on purpose.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on broken fixtures

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn damage(store: &std::path::Path, key: &str) {
    let db = redb::Database::create(store).unwrap();
    let w = db.begin_write().unwrap();
    {
        let mut t = w
            .open_table(redb::TableDefinition::<&str, &[u8]>::new("objects"))
            .unwrap();
        let before = t.insert(key, &b"{\"kind\":\"Rou\x00te\""[..]).unwrap();
        assert!(before.is_some(), "{key} was stored");
    }
    w.commit().unwrap();
}

#[test]
fn damage_is_reported_and_never_silently_loses_data() {
    let mut ebb = Ebb::start();
    for name in ["hello", "other"] {
        ebb.apply(&service_yaml(name, "hello", &[], &[("TARGET", name)]));
    }
    ebb.stop();
    let store = ebb.state.join("store.redb");
    for key in [
        "Route/default/hello",
        "Service/default/hello",
        "Route/default/other",
    ] {
        damage(&store, key);
    }

    // Damaged records are named at startup and the rest is served. hello lost its Service and
    // its Route (nothing to rebuild the Route from): its host is answered 500 at once. other
    // lost only its Route, which is rebuilt from its Service.
    ebb.launch();
    let log = ebb.log();
    for record in [
        "Route default/hello",
        "Service default/hello",
        "Route default/other",
    ] {
        assert!(
            log.contains(&format!("{record} is damaged")),
            "{record}: {log}"
        );
    }
    assert!(log.contains("store.redb"), "{log}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = http_client();
    let (status, body) = rt.block_on(request(&client, ebb.gateway, &ebb.host("other"), "/"));
    assert_eq!(
        (status, body.as_str()),
        (200, "Hello other! (other-00001)\n")
    );
    let started = Instant::now();
    let (status, body) = rt.block_on(request(&client, ebb.gateway, &ebb.host("hello"), "/"));
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("default/hello is damaged"), "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered at once"
    );
    let out = ebb.cli(&["get", "ksvc", "hello"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("Service default/hello is damaged"),
        "{err}"
    );
    // Deleting it (and applying it again) repairs it.
    ebb.ok(&["delete", "ksvc", "hello"]);
    ebb.apply(&service_yaml("hello", "hello", &[], &[("TARGET", "again")]));
    let (status, body) = rt.block_on(request(&client, ebb.gateway, &ebb.host("hello"), "/"));
    assert_eq!(
        (status, body.as_str()),
        (200, "Hello again! (hello-00001)\n")
    );
    ebb.stop();

    // The store gone: startup stops, naming the file and how to recover, not the lock.
    std::fs::remove_file(&store).unwrap();
    let out = Command::new(ebb_bin())
        .arg("--state")
        .arg(&ebb.state)
        .args([
            "local",
            "up",
            "--listen",
            "127.0.0.1:0",
            "--runtime",
            "process",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("store.redb is missing") && err.contains("--reset"),
        "{err}"
    );
    assert!(!err.contains("another `ebb local up`"), "{err}");
    assert!(!store.exists(), "no empty store was made");

    // Starting over on purpose.
    ebb.extra.push("--reset".into());
    ebb.launch();
    assert!(!ebb.ok(&["get", "ksvc"]).contains("other"));
    ebb.stop();
}
