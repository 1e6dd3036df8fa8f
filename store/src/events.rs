//! Events about objects, as a cluster records them (core `v1` Events): what `kubectl describe`
//! lists under an object. Repeats of the same reason and message for the same object count up
//! on one Event instead of adding another.

use crate::{Store, StoreError};
use serde_json::{Value, json};

/// Events kept per object (the oldest go first), as a cluster's one-hour TTL keeps them few.
pub const PER_OBJECT: usize = 20;

/// `Normal` or `Warning`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// Record that `reason` (`message`) happened to `obj`, reported by `component`.
pub fn record(
    store: &Store,
    obj: &Value,
    type_: EventType,
    reason: &str,
    message: &str,
    component: &str,
) -> Result<(), StoreError> {
    let ns = obj["metadata"]["namespace"].as_str().unwrap_or("default");
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let uid = obj["metadata"]["uid"].as_str().unwrap_or_default();
    let now = jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or_default()
        .to_string();
    let type_ = match type_ {
        EventType::Normal => "Normal",
        EventType::Warning => "Warning",
    };
    let mut mine: Vec<Value> = store
        .list("Event", Some(ns))?
        .into_iter()
        .filter(|e| e["involvedObject"]["uid"] == uid)
        .collect();
    if let Some(same) = mine
        .iter()
        .find(|e| e["reason"] == reason && e["message"] == message && e["type"] == type_)
    {
        let mut e = same.clone();
        e["count"] = json!(e["count"].as_i64().unwrap_or(1) + 1);
        e["lastTimestamp"] = json!(now);
        store.apply(e)?;
        return Ok(());
    }
    let event = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": format!("{name}.{:016x}", fastrand::u64(..)), "namespace": ns},
        "involvedObject": {
            "apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": name,
            "namespace": ns, "uid": uid, "resourceVersion": obj["metadata"]["resourceVersion"],
        },
        "reason": reason,
        "message": message,
        "type": type_,
        "count": 1,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "source": {"component": component},
        "reportingComponent": component,
    });
    store.create(event)?;
    mine.sort_by(|a, b| {
        a["lastTimestamp"]
            .as_str()
            .cmp(&b["lastTimestamp"].as_str())
    });
    while mine.len() >= PER_OBJECT {
        let old = mine.remove(0);
        let _ = store.delete(
            "Event",
            ns,
            old["metadata"]["name"].as_str().unwrap_or_default(),
        );
    }
    Ok(())
}
