//! What the kubelet resolves before a container starts: environment from ConfigMaps, Secrets
//! and the pod's own fields (`env[].valueFrom`, `envFrom`), and the files of configMap,
//! secret and projected volumes. Resolved once per revision (a running revision does not
//! change when a ConfigMap does); a reference that cannot be resolved is the container's
//! `CreateContainerConfigError`, naming it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, KeyToPath, Volume};
use serde_json::Value;
use serving_controller::revision::ContainerFailure;

/// Reads a ConfigMap or Secret of the revision's namespace.
pub trait Lookup {
    fn get(&self, kind: &str, name: &str) -> Option<Value>;
}

/// An environment value: fixed, or known only when an instance starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvValue {
    Literal(String),
    /// `fieldRef: metadata.name`: the instance's name.
    PodName,
}

fn config_error(message: String) -> ContainerFailure {
    ContainerFailure {
        reason: "CreateContainerConfigError".into(),
        message,
    }
}

/// The key → value map of a ConfigMap (`data` and base64 `binaryData`) or Secret (`data`).
fn entries(kind: &str, obj: &Value) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let decode = |v: &Value| {
        v.as_str()
            .and_then(apiserver::admission::base64_decode)
            .unwrap_or_default()
    };
    if kind == "ConfigMap" {
        for (k, v) in obj["data"].as_object().into_iter().flatten() {
            out.insert(
                k.clone(),
                v.as_str().unwrap_or_default().as_bytes().to_vec(),
            );
        }
        for (k, v) in obj["binaryData"].as_object().into_iter().flatten() {
            out.insert(k.clone(), decode(v));
        }
    } else {
        for (k, v) in obj["data"].as_object().into_iter().flatten() {
            out.insert(k.clone(), decode(v));
        }
    }
    out
}

fn source(
    lookup: &dyn Lookup,
    kind: &str,
    name: &str,
    optional: bool,
    ns: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, ContainerFailure> {
    match lookup.get(kind, name) {
        Some(obj) => Ok(Some(entries(kind, &obj))),
        None if optional => Ok(None),
        None => Err(config_error(format!(
            "{} {ns}/{name:?} not found",
            kind.to_ascii_lowercase()
        ))),
    }
}

/// A valid environment variable name (as the kubelet checks keys brought in by `envFrom`).
fn env_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
}

/// The pod facts `fieldRef` may name.
#[derive(Debug, Clone, Default)]
pub struct Pod<'a> {
    pub namespace: &'a str,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub service_account: String,
}

/// The container's environment: `envFrom` first, then `env` (which overrides), in order.
pub fn env(
    c: &Container,
    pod: &Pod<'_>,
    lookup: &dyn Lookup,
    field: &str,
) -> Result<Vec<(String, EnvValue)>, ContainerFailure> {
    let ns = pod.namespace;
    let mut out: Vec<(String, EnvValue)> = Vec::new();
    let set = |out: &mut Vec<(String, EnvValue)>, k: String, v: EnvValue| {
        out.retain(|(x, _)| *x != k);
        out.push((k, v));
    };
    for (i, from) in c.env_from.iter().flatten().enumerate() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let data = if let Some(r) = &from.config_map_ref {
            source(lookup, "ConfigMap", &r.name, r.optional == Some(true), ns)
        } else if let Some(r) = &from.secret_ref {
            source(lookup, "Secret", &r.name, r.optional == Some(true), ns)
        } else {
            Err(config_error(format!(
                "{field}.envFrom[{i}]: needs configMapRef or secretRef"
            )))
        }?;
        for (k, v) in data.into_iter().flatten() {
            let name = format!("{prefix}{k}");
            // The kubelet skips keys that are not valid variable names (and says so in an Event).
            if env_name(&name) {
                set(
                    &mut out,
                    name,
                    EnvValue::Literal(String::from_utf8_lossy(&v).into_owned()),
                );
            }
        }
    }
    for (i, e) in c.env.iter().flatten().enumerate() {
        let at = format!("{field}.env[{i}]");
        let value = match &e.value_from {
            None => Some(EnvValue::Literal(e.value.clone().unwrap_or_default())),
            Some(from) => {
                if let Some(r) = &from.config_map_key_ref {
                    let data = source(lookup, "ConfigMap", &r.name, r.optional == Some(true), ns)?;
                    match data.map(|d| d.get(&r.key).cloned()) {
                        Some(Some(v)) => {
                            Some(EnvValue::Literal(String::from_utf8_lossy(&v).into_owned()))
                        }
                        _ if r.optional == Some(true) => None,
                        _ => {
                            return Err(config_error(format!(
                                "{at}: couldn't find key {} in ConfigMap {ns}/{}",
                                r.key, r.name
                            )));
                        }
                    }
                } else if let Some(r) = &from.secret_key_ref {
                    let data = source(lookup, "Secret", &r.name, r.optional == Some(true), ns)?;
                    match data.map(|d| d.get(&r.key).cloned()) {
                        Some(Some(v)) => {
                            Some(EnvValue::Literal(String::from_utf8_lossy(&v).into_owned()))
                        }
                        _ if r.optional == Some(true) => None,
                        _ => {
                            return Err(config_error(format!(
                                "{at}: couldn't find key {} in Secret {ns}/{}",
                                r.key, r.name
                            )));
                        }
                    }
                } else if let Some(f) = &from.field_ref {
                    let path = f.field_path.as_str();
                    let quoted = |p: &str, prefix: &str| {
                        p.strip_prefix(prefix)
                            .and_then(|r| r.strip_suffix("']"))
                            .map(str::to_string)
                    };
                    Some(match path {
                        "metadata.name" => EnvValue::PodName,
                        "metadata.namespace" => EnvValue::Literal(ns.to_string()),
                        "spec.serviceAccountName" => EnvValue::Literal(pod.service_account.clone()),
                        "spec.nodeName" => EnvValue::Literal(hostname()),
                        "status.podIP" | "status.hostIP" => EnvValue::Literal("127.0.0.1".into()),
                        p if p.starts_with("metadata.labels['") => EnvValue::Literal(
                            quoted(p, "metadata.labels['")
                                .and_then(|k| pod.labels.get(&k).cloned())
                                .unwrap_or_default(),
                        ),
                        p if p.starts_with("metadata.annotations['") => EnvValue::Literal(
                            quoted(p, "metadata.annotations['")
                                .and_then(|k| pod.annotations.get(&k).cloned())
                                .unwrap_or_default(),
                        ),
                        other => {
                            return Err(config_error(format!(
                                "{at}.valueFrom.fieldRef.fieldPath: {other:?} is not a field local mode knows (metadata.name, metadata.namespace, metadata.labels['…'], metadata.annotations['…'], spec.serviceAccountName, spec.nodeName, status.podIP, status.hostIP)"
                            )));
                        }
                    })
                } else if let Some(r) = &from.resource_field_ref {
                    Some(EnvValue::Literal(
                        resource_value(c, &r.resource, r.divisor.as_ref().map(|q| q.0.as_str()))
                            .map_err(|e| {
                                config_error(format!("{at}.valueFrom.resourceFieldRef: {e}"))
                            })?,
                    ))
                } else {
                    return Err(config_error(format!("{at}.valueFrom: names no source")));
                }
            }
        };
        if let Some(v) = value {
            set(&mut out, e.name.clone(), v);
        }
    }
    Ok(out)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// A Kubernetes quantity in base units (cores for CPU, bytes for memory).
pub fn quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let (num, mult) = [
        ("Ki", 1024f64),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("Ti", 1024f64.powi(4)),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("m", 1e-3),
    ]
    .iter()
    .find_map(|(s, m)| q.strip_suffix(s).map(|n| (n, *m)))
    .unwrap_or((q, 1.0));
    num.parse::<f64>().ok().map(|n| n * mult)
}

fn resource_value(c: &Container, resource: &str, divisor: Option<&str>) -> Result<String, String> {
    let r = c.resources.as_ref();
    let (map, name) = match resource.split_once('.') {
        Some(("limits", n)) => (r.and_then(|r| r.limits.as_ref()), n),
        Some(("requests", n)) => (r.and_then(|r| r.requests.as_ref()), n),
        _ => {
            return Err(format!(
                "resource {resource:?}: must be limits.X or requests.X"
            ));
        }
    };
    let given = map.and_then(|m| m.get(name)).and_then(|q| quantity(&q.0));
    // Unset limits are the machine's (as the kubelet reports node allocatable).
    let value = match (given, name) {
        (Some(v), _) => v,
        (None, "cpu") => std::thread::available_parallelism().map_or(1, |n| n.get()) as f64,
        (None, "memory") => std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .next()
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|k| k.parse::<f64>().ok())
            })
            .map_or(0.0, |k| k * 1024.0),
        (None, other) => return Err(format!("resource {other:?} is not set")),
    };
    let div = match divisor {
        Some(d) => quantity(d)
            .filter(|d| *d > 0.0)
            .ok_or_else(|| format!("divisor {d:?} is not a quantity"))?,
        None => 1.0,
    };
    Ok(format!("{}", (value / div).ceil() as u64))
}

/// One file of a volume: path inside it, content, mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    pub path: String,
    pub data: Vec<u8>,
    pub mode: u32,
}

fn project(
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: u32,
    what: &str,
    optional: bool,
) -> Result<Vec<File>, ContainerFailure> {
    match items {
        None => Ok(data
            .into_iter()
            .map(|(k, v)| File {
                path: k,
                data: v,
                mode: default_mode,
            })
            .collect()),
        Some(items) => {
            let mut out = Vec::new();
            for it in items {
                match data.get(&it.key) {
                    Some(v) => out.push(File {
                        path: it.path.clone(),
                        data: v.clone(),
                        mode: it.mode.map_or(default_mode, |m| m as u32),
                    }),
                    None if optional => {}
                    None => {
                        return Err(config_error(format!(
                            "{what}: couldn't find key {}",
                            it.key
                        )));
                    }
                }
            }
            Ok(out)
        }
    }
}

/// The files of a configMap, secret or projected volume (`None` for emptyDir, which starts
/// empty); an error for a source that is missing or a volume type local mode cannot make.
pub fn volume_files(
    v: &Volume,
    ns: &str,
    lookup: &dyn Lookup,
    field: &str,
) -> Result<Option<Vec<File>>, ContainerFailure> {
    let mode = |m: Option<i32>| m.map_or(0o644, |m| m as u32);
    if let Some(cm) = &v.config_map {
        let optional = cm.optional == Some(true);
        let data = source(lookup, "ConfigMap", &cm.name, optional, ns)?.unwrap_or_default();
        return project(
            data,
            cm.items.as_ref(),
            mode(cm.default_mode),
            &format!("{field}.configMap"),
            optional,
        )
        .map(Some);
    }
    if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        let optional = s.optional == Some(true);
        let data = source(lookup, "Secret", &name, optional, ns)?.unwrap_or_default();
        return project(
            data,
            s.items.as_ref(),
            mode(s.default_mode),
            &format!("{field}.secret"),
            optional,
        )
        .map(Some);
    }
    if let Some(p) = &v.projected {
        let default = mode(p.default_mode);
        let mut out = Vec::new();
        for (i, src) in p.sources.iter().flatten().enumerate() {
            let at = format!("{field}.projected.sources[{i}]");
            if let Some(cm) = &src.config_map {
                let optional = cm.optional == Some(true);
                let data = source(lookup, "ConfigMap", &cm.name, optional, ns)?.unwrap_or_default();
                out.extend(project(data, cm.items.as_ref(), default, &at, optional)?);
            } else if let Some(s) = &src.secret {
                let optional = s.optional == Some(true);
                let data = source(lookup, "Secret", &s.name, optional, ns)?.unwrap_or_default();
                out.extend(project(data, s.items.as_ref(), default, &at, optional)?);
            } else {
                return Err(config_error(format!(
                    "{at}: only configMap and secret sources can be projected in local mode (serviceAccountToken and downwardAPI need a cluster)"
                )));
            }
        }
        return Ok(Some(out));
    }
    if v.empty_dir.is_some() {
        return Ok(None);
    }
    Err(config_error(format!(
        "{field}: only configMap, secret, projected and emptyDir volumes run in local mode"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Objects(Vec<Value>);
    impl Lookup for Objects {
        fn get(&self, kind: &str, name: &str) -> Option<Value> {
            self.0
                .iter()
                .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
                .cloned()
        }
    }

    fn objects() -> Objects {
        Objects(vec![
            json!({"kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"MODE": "fast", "bad key": "x"}}),
            json!({"kind": "Secret", "metadata": {"name": "sec"}, "data": {"PASSWORD": "czNjcmV0"}}),
        ])
    }

    fn container(v: Value) -> Container {
        serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn env_from_sources_in_order() {
        let c = container(
            json!({"name": "app", "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "APP_"}, {"secretRef": {"name": "sec"}}],
            "env": [{"name": "A", "value": "1"}, {"name": "APP_MODE", "value": "overridden"},
                    {"name": "P", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "PASSWORD"}}},
                    {"name": "N", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                    {"name": "L", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                    {"name": "O", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k", "optional": true}}}]}),
        );
        let pod = Pod {
            namespace: "team",
            labels: [("app".into(), "web".into())].into(),
            ..Pod::default()
        };
        let env = env(&c, &pod, &objects(), "spec.containers[0]")
            .unwrap_or_else(|e| panic!("{}", e.message));
        let lit = |s: &str| EnvValue::Literal(s.into());
        assert_eq!(
            env,
            vec![
                ("PASSWORD".into(), lit("s3cret")),
                ("A".into(), lit("1")),
                ("APP_MODE".into(), lit("overridden")),
                ("P".into(), lit("s3cret")),
                ("N".into(), EnvValue::PodName),
                ("NS".into(), lit("team")),
                ("L".into(), lit("web")),
            ]
        );
    }

    #[test]
    fn missing_references_are_config_errors_naming_them() {
        let pod = Pod {
            namespace: "default",
            ..Pod::default()
        };
        for (c, want) in [
            (
                json!({"name": "a", "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "k"}}}]}),
                "configmap default/\"gone\" not found",
            ),
            (
                json!({"name": "a", "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "k"}}}]}),
                "couldn't find key k in ConfigMap default/cfg",
            ),
            (
                json!({"name": "a", "envFrom": [{"secretRef": {"name": "gone"}}]}),
                "secret default/\"gone\" not found",
            ),
            (
                json!({"name": "a", "env": [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "status.phase"}}}]}),
                "spec.containers[0].env[0].valueFrom.fieldRef.fieldPath",
            ),
        ] {
            let e = env(&container(c), &pod, &objects(), "spec.containers[0]")
                .err()
                .unwrap_or_else(|| panic!("refused: {want}"));
            assert_eq!(e.reason, "CreateContainerConfigError");
            assert!(e.message.contains(want), "{}", e.message);
        }
    }

    #[test]
    fn volumes_project_items_and_modes() {
        let v: Volume = serde_json::from_value(json!({"name": "v", "configMap": {"name": "cfg", "items": [{"key": "MODE", "path": "conf/mode", "mode": 0o600}]}})).unwrap_or_default();
        let files = volume_files(&v, "default", &objects(), "spec.volumes[0]")
            .unwrap_or_default()
            .unwrap_or_default();
        assert_eq!(
            files,
            vec![File {
                path: "conf/mode".into(),
                data: b"fast".to_vec(),
                mode: 0o600
            }]
        );
        let v: Volume = serde_json::from_value(json!({"name": "v", "projected": {"defaultMode": 0o400, "sources": [{"secret": {"name": "sec"}}, {"configMap": {"name": "cfg", "items": [{"key": "MODE", "path": "mode"}]}}]}})).unwrap_or_default();
        let files = volume_files(&v, "default", &objects(), "spec.volumes[0]")
            .unwrap_or_default()
            .unwrap_or_default();
        assert_eq!(files.len(), 2);
        assert!(files.iter().all(|f| f.mode == 0o400));
        let v: Volume =
            serde_json::from_value(json!({"name": "v", "emptyDir": {}})).unwrap_or_default();
        assert_eq!(volume_files(&v, "default", &objects(), "x"), Ok(None));
        let v: Volume =
            serde_json::from_value(json!({"name": "v", "secret": {"secretName": "gone"}}))
                .unwrap_or_default();
        assert!(volume_files(&v, "default", &objects(), "x").is_err());
    }

    #[test]
    fn quantities() {
        assert_eq!(quantity("500m"), Some(0.5));
        assert_eq!(quantity("128Mi"), Some(128.0 * 1024.0 * 1024.0));
        assert_eq!(quantity("1G"), Some(1e9));
        assert_eq!(quantity("2"), Some(2.0));
    }
}
