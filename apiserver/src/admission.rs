//! Admission: what Knative's webhook does for its kinds (defaults, then every validation
//! error at once with field paths; `serving.knative.dev/creator` and `lastModifier` from the
//! caller; a Revision's spec immutable), the core kinds' rules (ConfigMap and Secret keys,
//! base64 data, `stringData`, immutability, Namespace names), and Kubernetes' size limits.

use serde_json::{Value, json};
use serving_api::admission::Rules;
use serving_api::config::DefaultsConfig;
use serving_api::naming::{check_dns_label, check_dns_subdomain};
use serving_api::validation::ValidationConfig;

use crate::catalog::Resource;
use crate::status::{ApiError, Cause};

/// Kubernetes' limit on all annotations of an object together.
pub const MAX_ANNOTATIONS: usize = 256 * 1024;

/// The configuration admission needs.
#[derive(Debug, Clone, Default)]
pub struct Admission {
    pub defaults: DefaultsConfig,
    pub validation: ValidationConfig,
}

fn cause(field: impl Into<String>, message: impl Into<String>) -> Cause {
    Cause {
        reason: "FieldValueInvalid",
        field: field.into(),
        message: message.into(),
    }
}

/// A label key (`[prefix/]name`) or value, as Kubernetes checks them.
fn label_part(s: &str) -> bool {
    s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && s.bytes().next().is_none_or(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_none_or(|b| b.is_ascii_alphanumeric())
}

fn check_meta(r: &Resource, obj: &Value, causes: &mut Vec<Cause>) {
    let m = &obj["metadata"];
    let name = m["name"].as_str().unwrap_or_default();
    // A DomainMapping's and a ClusterDomainClaim's name is a domain (a subdomain).
    let rule = if r.kind == "Namespace" {
        check_dns_label(name)
    } else if r.custom && !matches!(r.kind.as_str(), "DomainMapping" | "ClusterDomainClaim") {
        serving_api::naming::check_dns_1035_label(name)
    } else {
        check_dns_subdomain(name)
    };
    if let Err(e) = rule {
        causes.push(cause(
            "metadata.name",
            format!("invalid value {name:?}: {e}"),
        ));
    }
    if let Some(labels) = m["labels"].as_object() {
        for (k, v) in labels {
            let (prefix, key) = k
                .rsplit_once('/')
                .map_or((None, k.as_str()), |(p, n)| (Some(p), n));
            let prefix_ok = prefix.is_none_or(|p| check_dns_subdomain(p).is_ok());
            if key.is_empty() || !label_part(key) || !prefix_ok {
                causes.push(cause(format!("metadata.labels.{k}"), "invalid label key: [prefix/]name, name of at most 63 alphanumerics, '-', '_' or '.'"));
            }
            if !v.as_str().is_some_and(label_part) {
                causes.push(cause(format!("metadata.labels.{k}"), format!("invalid value {v}: a label value is at most 63 alphanumerics, '-', '_' or '.'")));
            }
        }
    }
    if let Some(annotations) = m["annotations"].as_object() {
        let size: usize = annotations
            .iter()
            .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
            .sum();
        if size > MAX_ANNOTATIONS {
            causes.push(Cause {
                reason: "FieldValueTooLong",
                field: "metadata.annotations".into(),
                message: format!(
                    "Too long: must have at most {MAX_ANNOTATIONS} bytes (they have {size})"
                ),
            });
        }
    }
}

fn knative_errors(e: serving_api::ValidationErrors) -> Vec<Cause> {
    e.0.into_iter().map(|f| cause(f.path, f.message)).collect()
}

impl Admission {
    /// Admit `obj` (a create when `old` is none) by `user`: the object to store, or why not.
    pub fn admit(
        &self,
        r: &Resource,
        mut obj: Value,
        old: Option<&Value>,
        user: &str,
    ) -> Result<Value, ApiError> {
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let invalid = |causes: Vec<Cause>| ApiError::invalid(r, &name, causes);
        let mut causes = Vec::new();
        check_meta(r, &obj, &mut causes);
        if !causes.is_empty() {
            return Err(invalid(causes));
        }
        let status = obj.get("status").cloned();
        obj = match (r.group.as_str(), r.kind.as_str()) {
            ("serving.knative.dev", kind) => self.knative(kind, obj, old, user).map_err(invalid)?,
            ("networking.internal.knative.dev", "ClusterDomainClaim") => {
                let c: serving_api::ClusterDomainClaim = serde_json::from_value(obj.clone())
                    .map_err(|e| invalid(vec![cause("<body>", e.to_string())]))?;
                serving_api::validation::validate_cluster_domain_claim(&c)
                    .map_err(knative_errors)
                    .map_err(invalid)?;
                obj
            }
            ("", "ConfigMap") => config_map(obj, old).map_err(invalid)?,
            ("", "Secret") => secret(obj, old).map_err(invalid)?,
            ("", "Namespace") => {
                obj["status"] = json!({"phase": "Active"});
                obj
            }
            _ => obj,
        };
        // The status is kept as sent (it is written apart, through the status subresource).
        if let Some(s) = status
            && obj.get("status").is_none()
        {
            obj["status"] = s;
        }
        Ok(obj)
    }

    fn knative(
        &self,
        kind: &str,
        obj: Value,
        old: Option<&Value>,
        user: &str,
    ) -> Result<Value, Vec<Cause>> {
        // Revisions are stamped by the controllers (which write the store directly); through
        // the API they may only be updated.
        if kind == "Revision" && old.is_none() {
            return Err(vec![cause(
                "kind",
                "Revisions are stamped by Configurations: apply a Service or a Configuration",
            )]);
        }
        let rules = Rules {
            defaults: &self.defaults,
            validation: &self.validation,
        };
        let mut out =
            serving_api::admission::admit(kind, obj, old, user, rules).map_err(knative_errors)?;
        if kind != "Revision"
            && let Some(m) = out.as_object_mut()
        {
            m.remove("status");
        }
        Ok(out)
    }
}

/// Keys of ConfigMap and Secret data: `[-._a-zA-Z0-9]+`, at most 253 characters.
fn check_keys(field: &str, map: &Value, causes: &mut Vec<Cause>) {
    if let Some(m) = map.as_object() {
        for k in m.keys() {
            let ok = !k.is_empty()
                && k.len() <= 253
                && k != "."
                && k != ".."
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
            if !ok {
                causes.push(cause(
                    format!("{field}[{k}]"),
                    "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
                ));
            }
        }
    }
}

fn immutable(obj: &Value, old: Option<&Value>, fields: &[&str], causes: &mut Vec<Cause>) {
    if let Some(old) = old
        && old["immutable"] == true
    {
        for f in fields {
            if obj[f] != old[f] {
                causes.push(cause(*f, "field is immutable when `immutable` is set"));
            }
        }
        if obj["immutable"] != true {
            causes.push(cause(
                "immutable",
                "field is immutable when `immutable` is set",
            ));
        }
    }
}

fn config_map(obj: Value, old: Option<&Value>) -> Result<Value, Vec<Cause>> {
    let mut causes = Vec::new();
    check_keys("data", &obj["data"], &mut causes);
    check_keys("binaryData", &obj["binaryData"], &mut causes);
    if let (Some(d), Some(b)) = (obj["data"].as_object(), obj["binaryData"].as_object()) {
        for k in d.keys().filter(|k| b.contains_key(*k)) {
            causes.push(cause(
                format!("data[{k}]"),
                "duplicate of key present in binaryData",
            ));
        }
    }
    if let Some(b) = obj["binaryData"].as_object() {
        for (k, v) in b {
            if v.as_str().is_none_or(|s| base64_decode(s).is_none()) {
                causes.push(cause(format!("binaryData[{k}]"), "must be base64"));
            }
        }
    }
    immutable(&obj, old, &["data", "binaryData"], &mut causes);
    if causes.is_empty() {
        Ok(obj)
    } else {
        Err(causes)
    }
}

fn secret(mut obj: Value, old: Option<&Value>) -> Result<Value, Vec<Cause>> {
    let mut causes = Vec::new();
    // stringData is write-only: merged into data (base64) and dropped.
    if let Some(sd) = obj.as_object_mut().and_then(|m| m.remove("stringData"))
        && let Some(sd) = sd.as_object()
    {
        for (k, v) in sd {
            let text = v.as_str().unwrap_or_default();
            obj["data"][k] = json!(base64_encode(text.as_bytes()));
        }
    }
    check_keys("data", &obj["data"], &mut causes);
    if let Some(d) = obj["data"].as_object() {
        for (k, v) in d {
            if v.as_str().is_none_or(|s| base64_decode(s).is_none()) {
                causes.push(cause(format!("data[{k}]"), "must be base64"));
            }
        }
    }
    if obj["type"].as_str().is_none_or(str::is_empty) {
        obj["type"] = json!("Opaque");
    }
    if let Some(old) = old
        && old["type"] != obj["type"]
    {
        causes.push(cause("type", "field is immutable"));
    }
    if obj["type"] == "kubernetes.io/dockerconfigjson" && obj["data"][".dockerconfigjson"].is_null()
    {
        causes.push(Cause {
            reason: "FieldValueRequired",
            field: "data[.dockerconfigjson]".into(),
            message: "Required value".into(),
        });
    }
    immutable(&obj, old, &["data"], &mut causes);
    if causes.is_empty() {
        Ok(obj)
    } else {
        Err(causes)
    }
}

const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = B64.iter().position(|&b| b == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use serving_api::labels::{CREATOR, LAST_MODIFIER};

    #[test]
    fn base64_round_trips() {
        for s in ["", "a", "ab", "abc", "abcd", "héllo wörld"] {
            let e = base64_encode(s.as_bytes());
            assert_eq!(base64_decode(&e).as_deref(), Some(s.as_bytes()), "{s} {e}");
        }
        assert_eq!(base64_encode(b"hello"), "aGVsbG8=");
        assert!(base64_decode("a!b=").is_none());
    }

    #[test]
    fn knative_objects_are_defaulted_validated_and_signed() {
        let c = Catalog::new();
        let r = c
            .by_kind("serving.knative.dev/v1", "Service")
            .cloned()
            .unwrap_or_else(|| panic!("served"));
        let a = Admission::default();
        let svc = json!({"apiVersion": "serving.knative.dev/v1", "kind": "Service", "metadata": {"name": "hello", "namespace": "default"},
            "spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}});
        let out = a
            .admit(&r, svc.clone(), None, "alice")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out["metadata"]["annotations"][CREATOR], "alice");
        assert_eq!(
            out["spec"]["template"]["spec"]["containerConcurrency"], 0,
            "defaulted"
        );
        let mut changed = out.clone();
        changed["spec"]["template"]["spec"]["containers"][0]["image"] = json!("y");
        let out2 = a
            .admit(&r, changed, Some(&out), "bob")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (
                out2["metadata"]["annotations"][CREATOR].as_str(),
                out2["metadata"]["annotations"][LAST_MODIFIER].as_str()
            ),
            (Some("alice"), Some("bob"))
        );
        let mut bad = svc;
        bad["spec"]["template"]["spec"]["containerConcurrency"] = json!(-1);
        bad["spec"]["traffic"] = json!([{"percent": 120, "latestRevision": true}]);
        let e = a
            .admit(&r, bad, None, "alice")
            .err()
            .unwrap_or_else(|| panic!("refused"));
        assert_eq!(e.reason, "Invalid");
        let causes = e.details.map(|d| d.causes).unwrap_or_default();
        assert!(causes.len() >= 2, "{causes:?}");
        assert!(
            causes.iter().any(|c| c.field == "spec.traffic[0].percent"),
            "{causes:?}"
        );
    }

    #[test]
    fn a_chosen_revision_name_keeps_its_template() {
        let c = Catalog::new();
        let r = c
            .by_kind("serving.knative.dev/v1", "Service")
            .cloned()
            .unwrap_or_else(|| panic!("served"));
        let a = Admission::default();
        let svc = json!({"apiVersion": "serving.knative.dev/v1", "kind": "Service", "metadata": {"name": "byo", "namespace": "default"},
            "spec": {"template": {"metadata": {"name": "byo-one"}, "spec": {"containers": [{"image": "x"}]}}}});
        let stored = a
            .admit(&r, svc, None, "alice")
            .unwrap_or_else(|e| panic!("{e}"));
        // The same template again, or traffic alone changed: fine.
        let mut traffic = stored.clone();
        traffic["spec"]["traffic"] = json!([{"revisionName": "byo-one", "percent": 100}]);
        assert!(a.admit(&r, traffic, Some(&stored), "bob").is_ok());
        // A changed template under the same name: refused, naming the field and the rule.
        let mut changed = stored.clone();
        changed["spec"]["template"]["spec"]["containers"][0]["image"] = json!("y");
        let e = a
            .admit(&r, changed.clone(), Some(&stored), "bob")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("spec.template.metadata.name") && e.contains("without a name change"),
            "{e}"
        );
        // With a new name it is a new revision.
        changed["spec"]["template"]["metadata"]["name"] = json!("byo-two");
        assert!(a.admit(&r, changed, Some(&stored), "bob").is_ok());
    }

    #[test]
    fn core_rules() {
        let c = Catalog::new();
        let secrets = c
            .by_kind("v1", "Secret")
            .cloned()
            .unwrap_or_else(|| panic!("served"));
        let a = Admission::default();
        let s = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"k": "hello"}});
        let out = a
            .admit(&secrets, s, None, "u")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out["data"]["k"], "aGVsbG8=");
        assert_eq!(out["type"], "Opaque");
        assert!(out.get("stringData").is_none());
        let bad = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"bad key": "!!"}});
        assert!(a.admit(&secrets, bad, None, "u").is_err());
        let cms = c
            .by_kind("v1", "ConfigMap")
            .cloned()
            .unwrap_or_else(|| panic!("served"));
        let huge = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "annotations": {"a": "x".repeat(MAX_ANNOTATIONS + 1)}}});
        let e = a
            .admit(&cms, huge, None, "u")
            .err()
            .unwrap_or_else(|| panic!("refused"));
        assert!(e.message.contains("Too long"), "{e}");
        let old = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}, "immutable": true});
        let new = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "2"}, "immutable": true});
        assert!(a.admit(&cms, new, Some(&old), "u").is_err());
    }
}
