//! Patches: JSON merge patch (RFC 7386), JSON patch (RFC 6902), and strategic merge patch for
//! the core kinds (for custom resources it is refused, as a cluster refuses it).

use serde_json::{Map, Value};

use crate::status::ApiError;

/// RFC 7386: objects merge key by key, `null` deletes, anything else replaces.
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

fn pointer_parts(path: &str) -> Result<Vec<String>, ApiError> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let rest = path.strip_prefix('/').ok_or_else(|| {
        ApiError::bad_request(format!("json patch: path {path:?} must start with /"))
    })?;
    Ok(rest.split('/').map(unescape).collect())
}

fn remove_at(doc: &mut Value, path: &str) -> Result<Value, ApiError> {
    let mut parts = pointer_parts(path)?;
    let last = parts
        .pop()
        .ok_or_else(|| ApiError::bad_request("json patch: cannot remove the whole document"))?;
    let parent = doc
        .pointer_mut(&parent_pointer(&parts))
        .ok_or_else(|| ApiError::bad_request(format!("json patch: {path:?} does not exist")))?;
    match parent {
        Value::Object(m) => m
            .remove(&last)
            .ok_or_else(|| ApiError::bad_request(format!("json patch: {path:?} does not exist"))),
        Value::Array(a) => {
            let i: usize = last.parse().ok().filter(|i| *i < a.len()).ok_or_else(|| {
                ApiError::bad_request(format!("json patch: {path:?}: no such index"))
            })?;
            Ok(a.remove(i))
        }
        _ => Err(ApiError::bad_request(format!(
            "json patch: {path:?} does not exist"
        ))),
    }
}

fn parent_pointer(parts: &[String]) -> String {
    parts
        .iter()
        .map(|p| format!("/{}", p.replace('~', "~0").replace('/', "~1")))
        .collect()
}

fn add_at(doc: &mut Value, path: &str, value: Value, replace: bool) -> Result<(), ApiError> {
    let mut parts = pointer_parts(path)?;
    let Some(last) = parts.pop() else {
        *doc = value;
        return Ok(());
    };
    let parent = doc.pointer_mut(&parent_pointer(&parts)).ok_or_else(|| {
        ApiError::bad_request(format!("json patch: the parent of {path:?} does not exist"))
    })?;
    match parent {
        Value::Object(m) => {
            if replace && !m.contains_key(&last) {
                return Err(ApiError::bad_request(format!(
                    "json patch: replace: {path:?} does not exist"
                )));
            }
            m.insert(last, value);
            Ok(())
        }
        Value::Array(a) => {
            if last == "-" && !replace {
                a.push(value);
                return Ok(());
            }
            let i: usize = last.parse().map_err(|_| {
                ApiError::bad_request(format!("json patch: {path:?}: not an index"))
            })?;
            if replace {
                let slot = a.get_mut(i).ok_or_else(|| {
                    ApiError::bad_request(format!("json patch: {path:?}: no such index"))
                })?;
                *slot = value;
            } else {
                if i > a.len() {
                    return Err(ApiError::bad_request(format!(
                        "json patch: {path:?}: index out of range"
                    )));
                }
                a.insert(i, value);
            }
            Ok(())
        }
        _ => Err(ApiError::bad_request(format!(
            "json patch: the parent of {path:?} is not a container"
        ))),
    }
}

/// RFC 6902: `add`, `remove`, `replace`, `move`, `copy`, `test`, applied in order, all or nothing.
pub fn json_patch(target: &Value, ops: &Value) -> Result<Value, ApiError> {
    let ops = ops.as_array().ok_or_else(|| {
        ApiError::bad_request("json patch: the body must be an array of operations")
    })?;
    let mut doc = target.clone();
    for (i, op) in ops.iter().enumerate() {
        let path = op["path"].as_str().ok_or_else(|| {
            ApiError::bad_request(format!("json patch: operation {i} has no path"))
        })?;
        let value = || {
            op.get("value").cloned().ok_or_else(|| {
                ApiError::bad_request(format!("json patch: operation {i} has no value"))
            })
        };
        let from = || {
            op["from"].as_str().ok_or_else(|| {
                ApiError::bad_request(format!("json patch: operation {i} has no from"))
            })
        };
        match op["op"].as_str() {
            Some("add") => add_at(&mut doc, path, value()?, false)?,
            Some("replace") => add_at(&mut doc, path, value()?, true)?,
            Some("remove") => {
                remove_at(&mut doc, path)?;
            }
            Some("move") => {
                let v = remove_at(&mut doc, from()?)?;
                add_at(&mut doc, path, v, false)?;
            }
            Some("copy") => {
                let v = doc.pointer(from()?).cloned().ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "json patch: copy from {:?}: does not exist",
                        op["from"]
                    ))
                })?;
                add_at(&mut doc, path, v, false)?;
            }
            Some("test") => {
                if doc.pointer(path) != Some(&value()?) {
                    return Err(ApiError::new(
                        http::StatusCode::UNPROCESSABLE_ENTITY,
                        "Invalid",
                        format!("json patch: test failed at {path:?}"),
                    ));
                }
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "json patch: operation {i}: unknown op {other:?}"
                )));
            }
        }
    }
    Ok(doc)
}

/// Lists merged by a key rather than replaced, in the core kinds' fields (their
/// `patchMergeKey`): owner references by uid. Finalizers merge as a set.
fn merge_key(field: &str) -> Option<&'static str> {
    match field {
        "ownerReferences" => Some("uid"),
        _ => None,
    }
}

/// Strategic merge patch, for the core kinds served: a merge patch in which `$patch:
/// replace|delete` directives apply to maps, `$retainKeys` keeps only the keys named, owner
/// references merge by uid and finalizers as a set.
pub fn strategic(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    match p.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut v = patch.clone();
            if let Some(m) = v.as_object_mut() {
                m.remove("$patch");
            }
            *target = v;
            return;
        }
        Some("delete") => {
            *target = Value::Null;
            return;
        }
        _ => {}
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else { return };
    if let Some(keep) = p.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        t.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (k, v) in p {
        if k.starts_with('$') {
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        match (merge_key(k), v, t.get_mut(k)) {
            (Some(key), Value::Array(items), Some(Value::Array(existing))) => {
                for item in items {
                    match existing.iter_mut().find(|e| e[key] == item[key]) {
                        Some(e) if item.get("$patch").and_then(Value::as_str) == Some("delete") => {
                            *e = Value::Null
                        }
                        Some(e) => strategic(e, item),
                        None => existing.push(item.clone()),
                    }
                }
                existing.retain(|e| !e.is_null());
            }
            (None, Value::Array(items), Some(Value::Array(existing))) if k == "finalizers" => {
                for item in items {
                    if !existing.contains(item) {
                        existing.push(item.clone());
                    }
                }
            }
            _ => {
                let slot = t.entry(k.clone()).or_insert(Value::Null);
                strategic(slot, v);
                if slot.is_null() {
                    t.remove(k);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch() {
        let mut t = json!({"a": {"b": 1, "c": 2}, "l": [1, 2]});
        merge(&mut t, &json!({"a": {"b": null, "d": 3}, "l": [3]}));
        assert_eq!(t, json!({"a": {"c": 2, "d": 3}, "l": [3]}));
    }

    #[test]
    fn json_patches() {
        let t = json!({"a": [1, 2], "b": {"c": "x"}});
        let out = json_patch(
            &t,
            &json!([
                {"op": "add", "path": "/a/-", "value": 3},
                {"op": "replace", "path": "/b/c", "value": "y"},
                {"op": "copy", "from": "/b/c", "path": "/d"},
                {"op": "move", "from": "/d", "path": "/e"},
                {"op": "remove", "path": "/a/0"},
                {"op": "test", "path": "/e", "value": "y"},
                {"op": "add", "path": "/b/x~1y", "value": 1}
            ]),
        );
        assert_eq!(
            out,
            Ok(json!({"a": [2, 3], "b": {"c": "y", "x/y": 1}, "e": "y"}))
        );
        assert!(json_patch(&t, &json!([{"op": "test", "path": "/a/0", "value": 9}])).is_err());
        assert!(json_patch(&t, &json!([{"op": "replace", "path": "/nope", "value": 9}])).is_err());
        assert!(json_patch(&t, &json!([{"op": "frobnicate", "path": "/a"}])).is_err());
    }

    #[test]
    fn strategic_patch() {
        let mut t = json!({"metadata": {"ownerReferences": [{"uid": "1", "name": "a"}], "finalizers": ["x"]}, "data": {"k": "v", "o": "p"}});
        strategic(
            &mut t,
            &json!({
                "metadata": {"ownerReferences": [{"uid": "1", "name": "b"}, {"uid": "2", "name": "c"}], "finalizers": ["y"]},
                "data": {"o": null, "n": "m"}
            }),
        );
        assert_eq!(
            t,
            json!({"metadata": {"ownerReferences": [{"uid": "1", "name": "b"}, {"uid": "2", "name": "c"}], "finalizers": ["x", "y"]}, "data": {"k": "v", "n": "m"}})
        );
        strategic(
            &mut t,
            &json!({"data": {"$patch": "replace", "only": "this"}}),
        );
        assert_eq!(t["data"], json!({"only": "this"}));
    }
}
