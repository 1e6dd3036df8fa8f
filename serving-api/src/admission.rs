//! Admission of the Knative kinds, shared by local mode's API server and the Kubernetes
//! admission webhook: what Knative's webhook does before an object is stored. Defaults first,
//! then every validation error at once, the update rules that need the old object (a chosen
//! revision name keeps its template; a Revision's spec is immutable), and
//! `serving.knative.dev/creator` / `lastModifier` from the caller's identity.
//!
//! Objects travel as JSON values because both callers receive them so; the status is left as it
//! came (the API server decides what a write may change there).

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::config::DefaultsConfig;
use crate::labels::{CREATOR, LAST_MODIFIER};
use crate::validation::{self, FieldError, ValidationConfig, ValidationErrors};
use crate::{Configuration, DomainMapping, Revision, Route, Service};

/// What admission depends on: config-defaults and the validation configuration.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    pub defaults: &'a DefaultsConfig,
    pub validation: &'a ValidationConfig,
}

fn typed<T: DeserializeOwned>(kind: &str, obj: Value) -> Result<T, ValidationErrors> {
    serde_json::from_value(obj).map_err(|e| {
        ValidationErrors(vec![FieldError::new(
            "<body>",
            format!("not a valid {kind}: {e}"),
        )])
    })
}

fn untyped<T: Serialize>(t: &T) -> Result<Value, ValidationErrors> {
    serde_json::to_value(t)
        .map_err(|e| ValidationErrors(vec![FieldError::new("<body>", e.to_string())]))
}

/// One object of an admitted kind, typed and defaulted.
enum Typed {
    Service(Service),
    Configuration(Configuration),
    Route(Route),
    DomainMapping(DomainMapping),
    Revision(Revision),
}

impl Typed {
    fn of(kind: &str, obj: Value, rules: Rules<'_>) -> Result<Typed, ValidationErrors> {
        Ok(match kind {
            "Service" => {
                let mut s: Service = typed(kind, obj)?;
                crate::defaults::default_service(&mut s, rules.defaults);
                Typed::Service(s)
            }
            "Configuration" => {
                let mut c: Configuration = typed(kind, obj)?;
                crate::defaults::default_configuration(&mut c, rules.defaults);
                Typed::Configuration(c)
            }
            "Route" => {
                let mut r: Route = typed(kind, obj)?;
                crate::defaults::default_route(&mut r);
                Typed::Route(r)
            }
            "DomainMapping" => Typed::DomainMapping(typed(kind, obj)?),
            "Revision" => {
                let mut r: Revision = typed(kind, obj)?;
                crate::defaults::default_revision(&mut r, rules.defaults);
                Typed::Revision(r)
            }
            other => {
                return Err(ValidationErrors(vec![FieldError::new(
                    "kind",
                    format!("{other:?} is not a kind of serving.knative.dev that Ebb serves"),
                )]));
            }
        })
    }

    fn value(&self) -> Result<Value, ValidationErrors> {
        match self {
            Typed::Service(s) => untyped(s),
            Typed::Configuration(c) => untyped(c),
            Typed::Route(r) => untyped(r),
            Typed::DomainMapping(d) => untyped(d),
            Typed::Revision(r) => untyped(r),
        }
    }
}

/// Admit `obj` of `kind` (`serving.knative.dev`), a create when `old` is none, written by
/// `user`: the object as it is to be stored (defaulted, annotated), or every violated rule.
/// Revisions are defaulted and validated on create (controllers stamp them); their spec never
/// changes afterwards. The old object is read through the same types and defaults before any
/// comparison, so a representation the API server chose, or a default added since it was
/// stored, never reads as a change.
pub fn admit(
    kind: &str,
    obj: Value,
    old: Option<&Value>,
    user: &str,
    rules: Rules<'_>,
) -> Result<Value, ValidationErrors> {
    let cfg = rules.validation;
    // `networking.internal.knative.dev`: a claim is only validated.
    if kind == "ClusterDomainClaim" {
        let c: crate::ClusterDomainClaim = typed(kind, obj)?;
        validation::validate_cluster_domain_claim(&c)?;
        return untyped(&c);
    }
    // A Revision's update is stored as written (its spec, compared defaulted, is unchanged).
    let raw_update = (kind == "Revision" && old.is_some()).then(|| obj.clone());
    let new = Typed::of(kind, obj, rules)?;
    // An old object that no longer reads is compared as it is (every difference counts).
    let old_typed = old.and_then(|o| Typed::of(kind, o.clone(), rules).ok());
    let old_value = match (&old_typed, old) {
        (Some(t), _) => Some(t.value()?),
        (None, o) => o.cloned(),
    };
    match (&new, &old_typed) {
        (Typed::Service(s), old) => {
            validation::validate_service(s, cfg)?;
            if let Some(Typed::Service(o)) = old {
                validation::validate_template_update(
                    &o.spec.configuration.template,
                    &s.spec.configuration.template,
                )?;
            }
        }
        (Typed::Configuration(c), old) => {
            validation::validate_configuration(c, cfg)?;
            if let Some(Typed::Configuration(o)) = old {
                validation::validate_template_update(&o.spec.template, &c.spec.template)?;
            }
        }
        (Typed::Route(r), _) => validation::validate_route(r, cfg)?,
        (Typed::DomainMapping(d), _) => validation::validate_domain_mapping(d)?,
        (Typed::Revision(r), _) => {
            if old.is_none() {
                validation::validate_revision(r, cfg)?;
            }
        }
    }
    let mut out = new.value()?;
    if let Typed::Revision(_) = new {
        if let Some(o) = &old_value
            && out.get("spec") != o.get("spec")
        {
            return Err(ValidationErrors(vec![FieldError::new(
                "spec",
                "a Revision's spec is immutable: change the Configuration's (or Service's) template to stamp a new Revision",
            )]));
        }
        return Ok(raw_update.unwrap_or(out));
    }
    sign(&mut out, old_value.as_ref(), user)?;
    Ok(out)
}

/// Who made it and who changed its spec last, as Knative's webhook records them: both set on
/// create; on update the last modifier follows a spec change. The creator, and the last
/// modifier of an unchanged spec, are immutable: a different value is refused (as Knative's
/// `ValidateCreatorAndModifier`), an omitted one is carried over from the stored object.
/// An object with owners (a Service's Configuration and Route) carries its parent's
/// annotations instead, as Knative's defaulting leaves owned objects alone.
fn sign(out: &mut Value, old: Option<&Value>, user: &str) -> Result<(), ValidationErrors> {
    if out["metadata"]["ownerReferences"]
        .as_array()
        .is_some_and(|o| !o.is_empty())
    {
        return Ok(());
    }
    let mut annotations = out["metadata"]["annotations"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    match old {
        None => {
            annotations.insert(CREATOR.into(), json!(user));
            annotations.insert(LAST_MODIFIER.into(), json!(user));
        }
        Some(old) => {
            let spec_changed = old.get("spec") != out.get("spec");
            let mut errors = Vec::new();
            for key in [CREATOR, LAST_MODIFIER] {
                let stored = &old["metadata"]["annotations"][key];
                if key == LAST_MODIFIER && spec_changed {
                    annotations.insert(key.into(), json!(user));
                    continue;
                }
                match annotations.get(key) {
                    Some(written) if written != stored => errors.push(FieldError::new(
                        format!("metadata.annotations.{key}"),
                        format!(
                            "annotation value is immutable (it is {stored}; admission sets it from the caller's identity)"
                        ),
                    )),
                    Some(_) => {}
                    None if stored.is_null() => {}
                    None => {
                        annotations.insert(key.into(), stored.clone());
                    }
                }
            }
            if !errors.is_empty() {
                return Err(ValidationErrors(errors));
            }
        }
    }
    out["metadata"]["annotations"] = json!(annotations);
    Ok(())
}

/// An RFC 6902 JSON Patch that turns `from` into `to`: objects are compared key by key, anything
/// else that differs is replaced whole (arrays included, which keeps the patch correct without
/// index arithmetic). What a mutating admission webhook answers.
pub fn json_patch(from: &Value, to: &Value) -> Vec<Value> {
    let mut ops = Vec::new();
    diff("", from, to, &mut ops);
    ops
}

fn pointer_token(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn diff(path: &str, from: &Value, to: &Value, ops: &mut Vec<Value>) {
    match (from, to) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, va) in a {
                let p = format!("{path}/{}", pointer_token(k));
                match b.get(k) {
                    None => ops.push(json!({"op": "remove", "path": p})),
                    Some(vb) => diff(&p, va, vb, ops),
                }
            }
            for (k, vb) in b {
                if !a.contains_key(k) {
                    let p = format!("{path}/{}", pointer_token(k));
                    ops.push(json!({"op": "add", "path": p, "value": vb}));
                }
            }
        }
        (a, b) if a == b => {}
        (_, b) => ops.push(json!({"op": "replace", "path": path, "value": b})),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> (DefaultsConfig, ValidationConfig) {
        (DefaultsConfig::default(), ValidationConfig::default())
    }

    /// Apply a patch made of the three ops `json_patch` emits (a test oracle, kept naive).
    fn apply(doc: &Value, ops: &[Value]) -> Value {
        let mut doc = doc.clone();
        for op in ops {
            let path = op["path"].as_str().unwrap_or_default();
            let (parent, last) = path.rsplit_once('/').unwrap_or(("", path));
            let last = last.replace("~1", "/").replace("~0", "~");
            if path.is_empty() {
                doc = op["value"].clone();
                continue;
            }
            let Some(target) = doc.pointer_mut(parent).and_then(Value::as_object_mut) else {
                panic!("no parent for {path} in {doc}");
            };
            match op["op"].as_str() {
                Some("remove") => {
                    target.remove(&last);
                }
                _ => {
                    target.insert(last, op["value"].clone());
                }
            }
        }
        doc
    }

    #[test]
    fn patches_turn_one_document_into_the_other() {
        let cases = [
            (json!({}), json!({"a": 1})),
            (
                json!({"a": {"b/c": 1, "d~e": [1, 2]}, "x": "y"}),
                json!({"a": {"b/c": 2, "d~e": [1]}, "z": null}),
            ),
            (json!({"a": [1, 2]}), json!({"a": {"k": "v"}})),
            (
                json!({"same": {"deep": [1]}}),
                json!({"same": {"deep": [1]}}),
            ),
        ];
        for (from, to) in cases {
            let ops = json_patch(&from, &to);
            assert_eq!(apply(&from, &ops), to, "{ops:?}");
        }
        assert!(json_patch(&json!({"a": 1}), &json!({"a": 1})).is_empty());
        let ops = json_patch(&json!({"a": {"b/c": 1}}), &json!({"a": {"b/c": 2}}));
        assert_eq!(ops[0]["path"], "/a/b~1c");
    }

    #[test]
    fn services_are_defaulted_validated_and_signed() {
        let (d, v) = rules();
        let r = Rules {
            defaults: &d,
            validation: &v,
        };
        let svc = json!({"apiVersion": "serving.knative.dev/v1", "kind": "Service",
            "metadata": {"name": "hello", "namespace": "default"},
            "spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}});
        let out = admit("Service", svc.clone(), None, "alice", r).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out["metadata"]["annotations"][CREATOR], "alice");
        assert_eq!(out["metadata"]["annotations"][LAST_MODIFIER], "alice");
        assert_eq!(out["spec"]["traffic"][0]["percent"], 100);
        // Metadata alone changed: the last modifier stays; a spec change records the new one.
        let mut relabelled = out.clone();
        relabelled["metadata"]["labels"] = json!({"team": "a"});
        relabelled["metadata"]["annotations"] = json!({});
        let same =
            admit("Service", relabelled, Some(&out), "bob", r).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(same["metadata"]["annotations"][LAST_MODIFIER], "alice");
        assert_eq!(
            same["metadata"]["annotations"][CREATOR], "alice",
            "kept from the old object"
        );
        let mut changed = out.clone();
        changed["spec"]["template"]["spec"]["containers"][0]["image"] = json!("y");
        let changed =
            admit("Service", changed, Some(&out), "bob", r).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(changed["metadata"]["annotations"][LAST_MODIFIER], "bob");
        assert_eq!(changed["metadata"]["annotations"][CREATOR], "alice");
        // A creator the caller tries to change is refused, naming the annotation.
        let mut forged = out.clone();
        forged["metadata"]["annotations"][CREATOR] = json!("mallory");
        let e = admit("Service", forged, Some(&out), "mallory", r)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("metadata.annotations.serving.knative.dev/creator")
                && e.contains("immutable"),
            "{e}"
        );
    }

    #[test]
    fn owned_objects_keep_their_parents_signature() {
        let (d, v) = rules();
        let r = Rules {
            defaults: &d,
            validation: &v,
        };
        let cfg = json!({"apiVersion": "serving.knative.dev/v1", "kind": "Configuration",
            "metadata": {"name": "hello", "namespace": "default",
                "annotations": {CREATOR: "alice", LAST_MODIFIER: "bob"},
                "ownerReferences": [{"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "hello", "uid": "u", "controller": true}]},
            "spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}});
        let out = admit(
            "Configuration",
            cfg.clone(),
            None,
            "system:serviceaccount:ebb-system:ebb-controller",
            r,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out["metadata"]["annotations"][CREATOR], "alice");
        let mut next = out.clone();
        next["metadata"]["annotations"][LAST_MODIFIER] = json!("carol");
        next["spec"]["template"]["spec"]["containers"][0]["image"] = json!("y");
        let out = admit(
            "Configuration",
            next,
            Some(&out),
            "system:serviceaccount:ebb-system:ebb-controller",
            r,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            out["metadata"]["annotations"][LAST_MODIFIER], "carol",
            "the parent's, propagated"
        );
    }

    #[test]
    fn revisions_are_validated_on_create_and_immutable_after() {
        let (d, v) = rules();
        let r = Rules {
            defaults: &d,
            validation: &v,
        };
        let rev = json!({"apiVersion": "serving.knative.dev/v1", "kind": "Revision",
            "metadata": {"name": "hello-00001", "namespace": "default"},
            "spec": {"containers": [{"image": "x"}]}});
        let stored = admit("Revision", rev, None, "ctl", r).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(stored["spec"]["containerConcurrency"], 0, "defaulted");
        let mut changed = stored.clone();
        changed["spec"]["containers"][0]["image"] = json!("y");
        let e = admit("Revision", changed, Some(&stored), "ctl", r)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("immutable"), "{e}");
        let bad = json!({"apiVersion": "serving.knative.dev/v1", "kind": "Revision",
            "metadata": {"name": "bad", "namespace": "default"},
            "spec": {"containers": [{"image": "x"}], "containerConcurrency": -1}});
        assert!(admit("Revision", bad, None, "ctl", r).is_err());
    }
}
