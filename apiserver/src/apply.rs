//! Field ownership (`metadata.managedFields`) and server-side apply.
//!
//! Every write records which manager set which fields: a create, update or patch gives its
//! manager the fields it changed (taking them from whoever owned them); an apply gives its
//! manager exactly the fields of its configuration. An apply that would change a field another
//! manager owns is refused with a conflict naming the manager and the field, unless forced
//! (then the field changes hands); a field the applier owned and no longer applies is removed
//! unless someone else owns it too.
//!
//! Granularity: map keys all the way down; lists are atomic (one owner for the whole list),
//! which is what Kubernetes does for lists without an `x-kubernetes-list-type`, as in
//! Knative's CRDs. The identity and system fields (`apiVersion`, `kind`, name, namespace, uid,
//! resourceVersion, generation, timestamps, managedFields) and `status` (on the main
//! resource) are owned by nobody.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

pub type FieldPath = Vec<String>;

const SYSTEM_METADATA: [&str; 11] = [
    "name",
    "generateName",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

/// The leaf fields of an object a manager can own: for the main resource everything but the
/// identity and system fields and `status`; for the status subresource, `status` alone.
pub fn leaves(obj: &Value, status: bool) -> BTreeSet<FieldPath> {
    let mut out = BTreeSet::new();
    let Some(top) = obj.as_object() else {
        return out;
    };
    for (k, v) in top {
        let owned = match k.as_str() {
            "apiVersion" | "kind" => false,
            "status" => status,
            _ => !status,
        };
        if !owned {
            continue;
        }
        if k == "metadata" {
            if let Some(m) = v.as_object() {
                for (mk, mv) in m {
                    if !SYSTEM_METADATA.contains(&mk.as_str()) {
                        walk(mv, vec![k.clone(), mk.clone()], &mut out);
                    }
                }
            }
        } else {
            walk(v, vec![k.clone()], &mut out);
        }
    }
    out
}

fn walk(v: &Value, path: FieldPath, out: &mut BTreeSet<FieldPath>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                let mut p = path.clone();
                p.push(k.clone());
                walk(child, p, out);
            }
        }
        _ => {
            out.insert(path);
        }
    }
}

pub fn get<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(obj, |v, k| v.get(k))
}

fn set(obj: &mut Value, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        *obj = value;
        return;
    };
    let mut v = obj;
    for k in parents {
        if !v.get(k).is_some_and(Value::is_object) {
            v[k] = json!({});
        }
        v = &mut v[k];
    }
    v[last] = value;
}

fn remove(obj: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut v = &mut *obj;
    for k in parents {
        match v.get_mut(k) {
            Some(next) => v = next,
            None => return,
        }
    }
    if let Some(m) = v.as_object_mut() {
        m.remove(last);
    }
    // Maps emptied by the removal go too.
    for depth in (1..path.len()).rev() {
        let p = &path[..depth];
        if get(obj, p).is_some_and(|x| x.as_object().is_some_and(Map::is_empty)) {
            let (last, parents) = p
                .split_last()
                .map_or((String::new(), &[][..]), |(l, ps)| (l.clone(), ps));
            let mut v = &mut *obj;
            for k in parents {
                v = &mut v[k];
            }
            if let Some(m) = v.as_object_mut() {
                m.remove(&last);
            }
        }
    }
}

/// Does owning `a` cover `b` (or the other way round)?
fn overlaps(a: &FieldPath, b: &FieldPath) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// One `managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    pub api_version: String,
    pub subresource: Option<String>,
    pub time: String,
    pub fields: BTreeSet<FieldPath>,
}

fn encode(fields: &BTreeSet<FieldPath>) -> Value {
    let mut root = json!({});
    for path in fields {
        let mut v = &mut root;
        for k in path {
            let key = format!("f:{k}");
            if !v.get(&key).is_some_and(Value::is_object) {
                v[&key] = json!({});
            }
            v = &mut v[&key];
        }
        v["."] = json!({});
    }
    // A leaf with nothing under it but "." is written as `{}` (as Kubernetes writes leaves).
    fn tidy(v: &mut Value) {
        if let Some(m) = v.as_object_mut() {
            if m.len() == 1 && m.contains_key(".") {
                m.clear();
                return;
            }
            for child in m.values_mut() {
                tidy(child);
            }
        }
    }
    tidy(&mut root);
    root
}

fn decode(v: &Value, path: FieldPath, out: &mut BTreeSet<FieldPath>) {
    let Some(m) = v.as_object() else { return };
    if (m.is_empty() || m.contains_key(".")) && !path.is_empty() {
        out.insert(path.clone());
    }
    for (k, child) in m {
        if let Some(name) = k.strip_prefix("f:") {
            let mut p = path.clone();
            p.push(name.to_string());
            decode(child, p, out);
        }
    }
}

/// The entries of an object's `metadata.managedFields`.
pub fn entries(obj: &Value) -> Vec<Entry> {
    obj["metadata"]["managedFields"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    let mut fields = BTreeSet::new();
                    decode(&e["fieldsV1"], Vec::new(), &mut fields);
                    Entry {
                        manager: e["manager"].as_str().unwrap_or_default().to_string(),
                        operation: e["operation"].as_str().unwrap_or("Update").to_string(),
                        api_version: e["apiVersion"].as_str().unwrap_or_default().to_string(),
                        subresource: e["subresource"].as_str().map(str::to_string),
                        time: e["time"].as_str().unwrap_or_default().to_string(),
                        fields,
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

fn write_entries(obj: &mut Value, entries: &[Entry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": encode(&e.fields),
            });
            if let Some(s) = &e.subresource {
                v["subresource"] = json!(s);
            }
            v
        })
        .collect();
    if list.is_empty() {
        if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("managedFields");
        }
    } else {
        obj["metadata"]["managedFields"] = json!(list);
    }
}

fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or_default()
        .to_string()
}

/// Who is writing: the manager, and where.
#[derive(Debug, Clone)]
pub struct Writer<'a> {
    pub manager: &'a str,
    pub api_version: &'a str,
    /// `Some("status")` for the status subresource.
    pub subresource: Option<&'a str>,
}

impl Writer<'_> {
    fn status(&self) -> bool {
        self.subresource == Some("status")
    }

    fn entry<'e>(&self, entries: &'e mut Vec<Entry>, operation: &str) -> &'e mut Entry {
        let sub = self.subresource.map(str::to_string);
        let i = match entries.iter().position(|e| {
            e.manager == self.manager && e.operation == operation && e.subresource == sub
        }) {
            Some(i) => i,
            None => {
                entries.push(Entry {
                    manager: self.manager.to_string(),
                    operation: operation.to_string(),
                    api_version: self.api_version.to_string(),
                    subresource: sub,
                    time: String::new(),
                    fields: BTreeSet::new(),
                });
                entries.len() - 1
            }
        };
        let e = &mut entries[i];
        e.time = now();
        e.api_version = self.api_version.to_string();
        e
    }
}

/// Record an update (create, replace, patch) by `w` of `old` (none: a create) into `new`'s
/// managedFields: `w` owns what it changed; others lose it; removed fields are nobody's.
pub fn record_update(old: Option<&Value>, new: &mut Value, w: &Writer<'_>) {
    let mut entries = old.map(entries).unwrap_or_default();
    let before = old.map(|o| leaves(o, w.status())).unwrap_or_default();
    let after = leaves(new, w.status());
    let changed: BTreeSet<FieldPath> = after
        .iter()
        .filter(|p| old.and_then(|o| get(o, p)) != get(new, p))
        .cloned()
        .collect();
    let removed: Vec<&FieldPath> = before.difference(&after).collect();
    for e in entries.iter_mut() {
        e.fields.retain(|f| {
            !changed.iter().any(|c| overlaps(c, f))
                && !removed.iter().any(|r| overlaps(r, f) && !after.contains(f))
        });
    }
    if !changed.is_empty() {
        w.entry(&mut entries, "Update").fields.extend(changed);
    }
    write_entries(new, &entries);
}

/// A field another manager owns with another value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub manager: String,
    pub api_version: String,
    pub field: String,
}

/// `.spec.template.spec.containers`
pub fn dotted(path: &FieldPath) -> String {
    path.iter().map(|p| format!(".{p}")).collect()
}

/// Server-side apply of `config` by `w` onto `current` (none: the object is created). Returns
/// the object to store (managedFields included), or the conflicts.
pub fn apply(
    current: Option<&Value>,
    config: &Value,
    w: &Writer<'_>,
    force: bool,
) -> Result<Value, Vec<Conflict>> {
    let applied = leaves(config, w.status());
    let Some(current) = current else {
        let mut obj = config.clone();
        let mut entries = Vec::new();
        w.entry(&mut entries, "Apply").fields = applied;
        write_entries(&mut obj, &entries);
        return Ok(obj);
    };
    let mut entries = entries(current);
    let sub = w.subresource.map(str::to_string);
    let mine = |e: &Entry| e.manager == w.manager && e.operation == "Apply" && e.subresource == sub;
    // Conflicts: a field applied with a value other than the current one, owned by another.
    let mut conflicts = Vec::new();
    let mut taken: Vec<(usize, FieldPath)> = Vec::new();
    for p in &applied {
        if get(current, p) == get(config, p) {
            continue;
        }
        for (i, e) in entries.iter().enumerate() {
            if mine(e) || e.subresource != sub {
                continue;
            }
            for f in e.fields.iter().filter(|f| overlaps(f, p)) {
                conflicts.push(Conflict {
                    manager: e.manager.clone(),
                    api_version: e.api_version.clone(),
                    field: dotted(f),
                });
                taken.push((i, f.clone()));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        conflicts.sort_by(|a, b| (&a.manager, &a.field).cmp(&(&b.manager, &b.field)));
        conflicts.dedup();
        return Err(conflicts);
    }
    for (i, f) in taken {
        entries[i].fields.remove(&f);
    }
    let mut obj = current.clone();
    // Fields this manager applied before and not now: removed unless another owns them.
    let before: BTreeSet<FieldPath> = entries
        .iter()
        .find(|e| mine(e))
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    for gone in before.difference(&applied) {
        let shared = entries
            .iter()
            .any(|e| !mine(e) && e.fields.iter().any(|f| overlaps(f, gone)));
        if !shared {
            remove(&mut obj, gone);
        }
    }
    for p in &applied {
        if let Some(v) = get(config, p) {
            set(&mut obj, p, v.clone());
        }
    }
    w.entry(&mut entries, "Apply").fields = applied;
    write_entries(&mut obj, &entries);
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(manager: &str) -> Writer<'_> {
        Writer {
            manager,
            api_version: "serving.knative.dev/v1",
            subresource: None,
        }
    }

    fn svc(image: &str, extra: Value) -> Value {
        let mut v = json!({
            "apiVersion": "serving.knative.dev/v1", "kind": "Service",
            "metadata": {"name": "hello", "uid": "u1", "resourceVersion": "3"},
            "spec": {"template": {"spec": {"containers": [{"image": image}]}}},
        });
        merge_into(&mut v, extra);
        v
    }

    fn merge_into(v: &mut Value, extra: Value) {
        crate::patch::merge(v, &extra);
    }

    #[test]
    fn managed_fields_round_trip() {
        let mut fields = BTreeSet::new();
        fields.insert(vec!["spec".to_string(), "template".to_string()]);
        fields.insert(vec![
            "metadata".to_string(),
            "labels".to_string(),
            "app".to_string(),
        ]);
        let e = encode(&fields);
        assert_eq!(
            e,
            json!({"f:spec": {"f:template": {}}, "f:metadata": {"f:labels": {"f:app": {}}}})
        );
        let mut back = BTreeSet::new();
        decode(&e, Vec::new(), &mut back);
        assert_eq!(back, fields);
    }

    #[test]
    fn apply_creates_owns_and_removes_what_it_stops_applying() {
        let cfg = svc(
            "a",
            json!({"metadata": {"labels": {"app": "x", "tier": "t"}}}),
        );
        let obj = apply(None, &cfg, &w("kubectl"), false).unwrap_or_default();
        let e = entries(&obj);
        assert_eq!(e.len(), 1);
        assert_eq!(
            (e[0].manager.as_str(), e[0].operation.as_str()),
            ("kubectl", "Apply")
        );
        assert!(
            e[0].fields
                .contains(&vec!["metadata".into(), "labels".into(), "tier".into()])
        );
        assert!(
            !e[0]
                .fields
                .iter()
                .any(|f| f[1] == "name" || f[0] == "apiVersion")
        );
        // Dropping a label from the configuration removes it.
        let cfg2 = svc("b", json!({"metadata": {"labels": {"app": "x"}}}));
        let obj2 = apply(Some(&obj), &cfg2, &w("kubectl"), false).unwrap_or_default();
        assert_eq!(obj2["metadata"]["labels"], json!({"app": "x"}));
        assert_eq!(
            obj2["spec"]["template"]["spec"]["containers"][0]["image"],
            "b"
        );
    }

    #[test]
    fn conflicts_name_the_manager_and_field_unless_forced() {
        let cfg = svc("a", json!({}));
        let obj = apply(None, &cfg, &w("kubectl"), false).unwrap_or_default();
        let mut edited = svc("b", json!({}));
        edited["metadata"]["managedFields"] = obj["metadata"]["managedFields"].clone();
        record_update(Some(&obj), &mut edited, &w("kubectl-edit"));
        let owners: Vec<String> = entries(&edited).iter().map(|e| e.manager.clone()).collect();
        assert_eq!(
            owners,
            ["kubectl-edit"],
            "the edit took the containers over"
        );
        let back = svc("a", json!({}));
        let err = apply(Some(&edited), &back, &w("kubectl"), false).unwrap_err();
        assert_eq!(
            err,
            [Conflict {
                manager: "kubectl-edit".into(),
                api_version: "serving.knative.dev/v1".into(),
                field: ".spec.template.spec.containers".into()
            }]
        );
        let forced = apply(Some(&edited), &back, &w("kubectl"), true).unwrap_or_default();
        assert_eq!(
            forced["spec"]["template"]["spec"]["containers"][0]["image"],
            "a"
        );
        let owners: Vec<String> = entries(&forced).iter().map(|e| e.manager.clone()).collect();
        assert_eq!(owners, ["kubectl"]);
        // The same value applied by two managers is shared, not a conflict.
        let shared = apply(Some(&forced), &back, &w("other"), false);
        assert!(shared.is_ok());
    }

    #[test]
    fn a_field_another_manager_owns_survives_its_removal_from_an_apply() {
        let cfg = svc("a", json!({"metadata": {"labels": {"app": "x"}}}));
        let obj = apply(None, &cfg, &w("one"), false).unwrap_or_default();
        let obj = apply(Some(&obj), &cfg, &w("two"), false).unwrap_or_default();
        let without = svc("a", json!({}));
        let obj = apply(Some(&obj), &without, &w("one"), false).unwrap_or_default();
        assert_eq!(obj["metadata"]["labels"]["app"], "x", "two still owns it");
    }
}
