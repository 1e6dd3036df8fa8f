//! What the API serves: Knative's four kinds (from the same CRDs as on a cluster, generated from
//! the Rust types) and the core kinds local mode holds (Namespaces, ConfigMaps, Secrets,
//! Events), each with its names, scope, printer columns and OpenAPI schema.

use kube::CustomResourceExt;
use serde_json::{Value, json};

use crate::status::Details;

/// A printer column (`kubectl get`): name, type, JSONPath into the object.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub type_: String,
    pub json_path: String,
    pub description: String,
    pub priority: i64,
}

/// One served resource.
#[derive(Debug, Clone)]
pub struct Resource {
    /// `""` for the core group.
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub namespaced: bool,
    /// Has a `status` subresource.
    pub status: bool,
    /// A custom resource (no strategic merge patch, as on a cluster).
    pub custom: bool,
    /// Printer columns besides Name and Age.
    pub columns: Vec<Column>,
    /// The object's OpenAPI v3 schema (apiVersion, kind and metadata included).
    pub schema: Value,
}

pub const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

impl Resource {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `services.serving.knative.dev`, `configmaps`: how messages name the resource.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// `Service.serving.knative.dev`, `ConfigMap`: how "is invalid" messages name the kind.
    pub fn qualified_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }

    pub fn details(&self, name: &str) -> Details {
        Details {
            name: name.to_string(),
            group: self.group.clone(),
            kind: self.plural.clone(),
            causes: Vec::new(),
        }
    }

    /// `/api/v1` or `/apis/GROUP/VERSION`.
    pub fn base_path(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        }
    }
}

#[derive(Debug, Clone)]
pub struct Catalog {
    pub resources: Vec<Resource>,
}

impl Default for Catalog {
    fn default() -> Self {
        Catalog::new()
    }
}

fn string(description: &str) -> Value {
    json!({"type": "string", "description": description})
}

fn string_map(description: &str) -> Value {
    json!({"type": "object", "additionalProperties": {"type": "string"}, "description": description})
}

/// `ObjectMeta`, with the fields a client may send.
pub fn object_meta() -> Value {
    json!({
        "type": "object",
        "description": "Standard object's metadata.",
        "properties": {
            "name": string("Name, unique within a namespace."),
            "generateName": string("A prefix the server completes to a unique name when name is empty."),
            "namespace": string("The namespace the object lives in."),
            "selfLink": string("Deprecated; not set."),
            "uid": string("Unique in time and space; set by the server."),
            "resourceVersion": string("Changes at every write; for optimistic concurrency and watches."),
            "generation": {"type": "integer", "format": "int64", "description": "Increments when the desired state changes."},
            "creationTimestamp": {"type": "string", "format": "date-time", "description": "When the object was created."},
            "deletionTimestamp": {"type": "string", "format": "date-time", "description": "When the object is to be deleted."},
            "deletionGracePeriodSeconds": {"type": "integer", "format": "int64"},
            "labels": string_map("Labels, for selection."),
            "annotations": string_map("Annotations: arbitrary metadata."),
            "ownerReferences": {
                "type": "array",
                "description": "Objects this one depends on; deleting the owner deletes it.",
                "items": {
                    "type": "object",
                    "required": ["apiVersion", "kind", "name", "uid"],
                    "properties": {
                        "apiVersion": string("API version of the owner."),
                        "kind": string("Kind of the owner."),
                        "name": string("Name of the owner."),
                        "uid": string("UID of the owner."),
                        "controller": {"type": "boolean"},
                        "blockOwnerDeletion": {"type": "boolean"}
                    }
                }
            },
            "finalizers": {"type": "array", "items": {"type": "string"}},
            "managedFields": {
                "type": "array",
                "description": "Which manager owns which fields (server-side apply).",
                "items": {
                    "type": "object",
                    "properties": {
                        "manager": {"type": "string"},
                        "operation": {"type": "string"},
                        "apiVersion": {"type": "string"},
                        "time": {"type": "string", "format": "date-time"},
                        "fieldsType": {"type": "string"},
                        "fieldsV1": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        "subresource": {"type": "string"}
                    }
                }
            }
        }
    })
}

/// An object schema with the fields every object has.
fn object(
    kind: &str,
    description: &str,
    mut properties: Value,
    group: &str,
    version: &str,
) -> Value {
    properties["apiVersion"] = string("The versioned schema of this representation.");
    properties["kind"] = string("The REST resource this object represents.");
    properties["metadata"] = object_meta();
    json!({
        "type": "object",
        "description": description,
        "properties": properties,
        "x-kubernetes-group-version-kind": [{"group": group, "version": version, "kind": kind}],
    })
}

fn knative(
    crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Resource {
    let v = serde_json::to_value(&crd).unwrap_or_default();
    let spec = &v["spec"];
    let version = &spec["versions"][0];
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let group = spec["group"].as_str().unwrap_or_default().to_string();
    let ver = version["name"].as_str().unwrap_or("v1").to_string();
    let kind = spec["names"]["kind"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut schema = version["schema"]["openAPIV3Schema"].clone();
    let mut props = schema["properties"].clone();
    props["apiVersion"] = string("The versioned schema of this representation.");
    props["kind"] = string("The REST resource this object represents.");
    props["metadata"] = object_meta();
    schema["properties"] = props;
    schema["x-kubernetes-group-version-kind"] =
        json!([{"group": group, "version": ver, "kind": kind}]);
    let columns = version["additionalPrinterColumns"]
        .as_array()
        .map(|cols| {
            cols.iter()
                .map(|c| Column {
                    name: c["name"].as_str().unwrap_or_default().to_string(),
                    type_: c["type"].as_str().unwrap_or("string").to_string(),
                    json_path: c["jsonPath"].as_str().unwrap_or_default().to_string(),
                    description: c["description"].as_str().unwrap_or_default().to_string(),
                    priority: c["priority"].as_i64().unwrap_or(0),
                })
                .collect()
        })
        .unwrap_or_default();
    Resource {
        group,
        version: ver,
        plural: spec["names"]["plural"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        singular: spec["names"]["singular"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        short_names: strings(&spec["names"]["shortNames"]),
        categories: strings(&spec["names"]["categories"]),
        kind,
        namespaced: spec["scope"] == "Namespaced",
        status: version["subresources"].get("status").is_some(),
        custom: true,
        columns,
        schema,
    }
}

fn column(name: &str, path: &str, description: &str) -> Column {
    Column {
        name: name.into(),
        type_: "string".into(),
        json_path: path.into(),
        description: description.into(),
        priority: 0,
    }
}

#[allow(clippy::too_many_arguments)] // one line per core kind reads best with them all named in place
fn core(
    kind: &str,
    plural: &str,
    short: &[&str],
    namespaced: bool,
    status: bool,
    columns: Vec<Column>,
    description: &str,
    properties: Value,
) -> Resource {
    Resource {
        group: String::new(),
        version: "v1".into(),
        kind: kind.into(),
        plural: plural.into(),
        singular: kind.to_ascii_lowercase(),
        short_names: short.iter().map(|s| s.to_string()).collect(),
        categories: Vec::new(),
        namespaced,
        status,
        custom: false,
        columns,
        schema: object(kind, description, properties, "", "v1"),
    }
}

impl Catalog {
    pub fn new() -> Catalog {
        let object_reference = json!({
            "type": "object",
            "description": "The object this is about.",
            "properties": {
                "apiVersion": {"type": "string"}, "kind": {"type": "string"},
                "name": {"type": "string"}, "namespace": {"type": "string"},
                "uid": {"type": "string"}, "resourceVersion": {"type": "string"},
                "fieldPath": {"type": "string"}
            }
        });
        let resources = vec![
            knative(serving_api::Service::crd()),
            knative(serving_api::Configuration::crd()),
            knative(serving_api::Revision::crd()),
            knative(serving_api::Route::crd()),
            knative(serving_api::DomainMapping::crd()),
            knative(serving_api::ClusterDomainClaim::crd()),
            core(
                "Namespace",
                "namespaces",
                &["ns"],
                false,
                true,
                vec![column("Status", ".status.phase", "The namespace's phase.")],
                "A scope for names.",
                json!({
                    "spec": {"type": "object", "properties": {"finalizers": {"type": "array", "items": {"type": "string"}}}},
                    "status": {"type": "object", "properties": {"phase": string("Active or Terminating.")}}
                }),
            ),
            core(
                "ConfigMap",
                "configmaps",
                &["cm"],
                true,
                false,
                vec![column("Data", ".data", "Number of keys.")],
                "Configuration data for containers: env (valueFrom, envFrom) and volumes.",
                json!({
                    "data": string_map("UTF-8 values by key."),
                    "binaryData": {"type": "object", "additionalProperties": {"type": "string", "format": "byte"}, "description": "Binary values (base64) by key."},
                    "immutable": {"type": "boolean", "description": "When true, data cannot change."}
                }),
            ),
            core(
                "Secret",
                "secrets",
                &[],
                true,
                false,
                vec![
                    column("Type", ".type", "The secret's type."),
                    column("Data", ".data", "Number of keys."),
                ],
                "Secret data for containers: env (valueFrom, envFrom), volumes, image pulls.",
                json!({
                    "data": {"type": "object", "additionalProperties": {"type": "string", "format": "byte"}, "description": "Values (base64) by key."},
                    "stringData": string_map("Write-only convenience: plain values merged into data."),
                    "type": string("Opaque, kubernetes.io/dockerconfigjson, ..."),
                    "immutable": {"type": "boolean", "description": "When true, data cannot change."}
                }),
            ),
            core(
                "Event",
                "events",
                &["ev"],
                true,
                false,
                vec![
                    column("Type", ".type", "Normal or Warning."),
                    column("Reason", ".reason", "Why."),
                    column("Object", ".involvedObject.name", "What it is about."),
                    column("Message", ".message", "What happened."),
                ],
                "A report of something that happened to an object.",
                json!({
                    "involvedObject": object_reference,
                    "reason": string("Short, machine-readable reason."),
                    "message": string("What happened."),
                    "type": string("Normal or Warning."),
                    "count": {"type": "integer", "format": "int32"},
                    "firstTimestamp": {"type": "string", "format": "date-time"},
                    "lastTimestamp": {"type": "string", "format": "date-time"},
                    "eventTime": {"type": "string", "format": "date-time"},
                    "source": {"type": "object", "properties": {"component": {"type": "string"}, "host": {"type": "string"}}},
                    "reportingComponent": {"type": "string"},
                    "reportingInstance": {"type": "string"},
                    "action": {"type": "string"},
                    "related": object_reference,
                    "series": {"type": "object", "properties": {"count": {"type": "integer"}, "lastObservedTime": {"type": "string"}}}
                }),
            ),
        ];
        Catalog { resources }
    }

    /// The resource at `group`/`version`/`plural`.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&Resource> {
        self.resources
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
    }

    /// The resource for an object's `apiVersion` and `kind`.
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<&Resource> {
        self.resources
            .iter()
            .find(|r| r.api_version() == api_version && r.kind == kind)
    }

    /// The group-versions served, with their resources.
    pub fn group_versions(&self) -> Vec<(String, String)> {
        let mut gvs: Vec<(String, String)> = Vec::new();
        for r in &self.resources {
            let gv = (r.group.clone(), r.version.clone());
            if !gvs.contains(&gv) {
                gvs.push(gv);
            }
        }
        gvs
    }
}
