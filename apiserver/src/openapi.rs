//! OpenAPI documents from the same schemas the resources are checked against: v3 per
//! group-version (what `kubectl explain` reads, and where kubectl looks for the
//! `fieldValidation` parameter to leave field validation to the server), and v2 for older
//! clients.

use serde_json::{Map, Value, json};

use crate::catalog::{Catalog, Resource};

/// `serving.knative.dev/v1 Service` → `dev.knative.serving.v1.Service`; core → `io.k8s.api.core.v1.ConfigMap`.
pub fn schema_name(r: &Resource) -> String {
    if r.group.is_empty() {
        format!("io.k8s.api.core.{}.{}", r.version, r.kind)
    } else {
        let reversed: Vec<&str> = r.group.split('.').rev().collect();
        format!("{}.{}.{}", reversed.join("."), r.version, r.kind)
    }
}

fn query(name: &str, description: &str, type_: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": type_}, "uniqueItems": true})
}

fn write_params() -> Vec<Value> {
    vec![
        query(
            "dryRun",
            "When present (All), nothing is persisted.",
            "string",
        ),
        query(
            "fieldManager",
            "The name of the actor making the change.",
            "string",
        ),
        query(
            "fieldValidation",
            "Strict (default), Warn or Ignore: what to do with unknown or duplicate fields.",
            "string",
        ),
    ]
}

fn operation(
    r: &Resource,
    action: &str,
    id: &str,
    params: Vec<Value>,
    body: bool,
    v3: bool,
) -> Value {
    let reference = if v3 {
        format!("#/components/schemas/{}", schema_name(r))
    } else {
        format!("#/definitions/{}", schema_name(r))
    };
    let mut op = json!({
        "operationId": id,
        "parameters": params,
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": r.group, "version": r.version, "kind": r.kind},
        "responses": {"200": {"description": "OK"}},
    });
    if body {
        if v3 {
            op["requestBody"] = json!({"content": {"application/json": {"schema": {"$ref": reference}}}, "required": true});
        } else {
            let mut params = op["parameters"].as_array().cloned().unwrap_or_default();
            params.push(json!({"name": "body", "in": "body", "required": true, "schema": {"$ref": reference}}));
            op["parameters"] = json!(params);
        }
    }
    if v3 {
        op["responses"]["200"]["content"] =
            json!({"application/json": {"schema": {"$ref": reference}}});
    } else {
        op["responses"]["200"]["schema"] = json!({"$ref": reference});
    }
    op
}

/// Swagger 2 parameters carry their type directly.
fn v2_params(params: Vec<Value>) -> Vec<Value> {
    params
        .into_iter()
        .map(|mut p| {
            if let Some(t) = p.get("schema").and_then(|s| s.get("type")).cloned() {
                p["type"] = t;
                if let Some(o) = p.as_object_mut() {
                    o.remove("schema");
                }
            }
            p
        })
        .collect()
}

fn paths(r: &Resource, v3: bool) -> Map<String, Value> {
    let base = r.base_path();
    let items = if r.namespaced {
        format!("{base}/namespaces/{{namespace}}/{}", r.plural)
    } else {
        format!("{base}/{}", r.plural)
    };
    let fix = |p: Vec<Value>| if v3 { p } else { v2_params(p) };
    let id = |verb: &str| format!("{verb}{}", r.kind);
    let mut out = Map::new();
    let mut list_params = vec![
        query("labelSelector", "Only objects with these labels.", "string"),
        query(
            "fieldSelector",
            "Only objects with these field values.",
            "string",
        ),
        query(
            "limit",
            "At most this many, with a continue token for the rest.",
            "integer",
        ),
        query("continue", "The rest of a limited list.", "string"),
        query("watch", "Stream changes instead.", "boolean"),
        query("resourceVersion", "Where a watch starts.", "string"),
    ];
    list_params = fix(list_params);
    out.insert(
        items.clone(),
        json!({
            "get": operation(r, "list", &id("list"), list_params, false, v3),
            "post": operation(r, "post", &id("create"), fix(write_params()), true, v3),
        }),
    );
    let mut patch_params = write_params();
    patch_params.push(query(
        "force",
        "Take over conflicting fields (apply).",
        "boolean",
    ));
    out.insert(
        format!("{items}/{{name}}"),
        json!({
            "get": operation(r, "get", &id("read"), vec![], false, v3),
            "put": operation(r, "put", &id("replace"), fix(write_params()), true, v3),
            "patch": operation(r, "patch", &id("patch"), fix(patch_params.clone()), true, v3),
            "delete": operation(r, "delete", &id("delete"), fix(vec![query("dryRun", "When present (All), nothing is deleted.", "string"), query("propagationPolicy", "Orphan, Background or Foreground.", "string")]), false, v3),
        }),
    );
    if r.status {
        out.insert(
            format!("{items}/{{name}}/status"),
            json!({
                "get": operation(r, "get", &id("readStatus"), vec![], false, v3),
                "put": operation(r, "put", &id("replaceStatus"), fix(write_params()), true, v3),
                "patch": operation(r, "patch", &id("patchStatus"), fix(patch_params), true, v3),
            }),
        );
    }
    out
}

/// `/openapi/v3`: where each group-version's document is.
pub fn v3_index(catalog: &Catalog) -> Value {
    let mut paths = Map::new();
    for (g, v) in catalog.group_versions() {
        let key = if g.is_empty() {
            format!("api/{v}")
        } else {
            format!("apis/{g}/{v}")
        };
        let doc = v3_doc(catalog, &g, &v);
        paths.insert(
            key.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={}", hash(&doc))}),
        );
    }
    json!({"paths": paths})
}

/// A stable hash of a document, for cache-busting URLs.
fn hash(doc: &Value) -> String {
    let text = doc.to_string();
    let h = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{h:016X}")
}

/// The OpenAPI v3 document of one group-version.
pub fn v3_doc(catalog: &Catalog, group: &str, version: &str) -> Value {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for r in catalog
        .resources
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        paths.extend(self::paths(r, true));
        schemas.insert(schema_name(r), r.schema.clone());
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Ebb (local mode)", "version": crate::discovery::version()["gitVersion"]},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

/// OpenAPI v2 drops `nullable`'s v3-only siblings it cannot express.
fn to_v2(schema: &Value) -> Value {
    match schema {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !matches!(k.as_str(), "nullable" | "x-kubernetes-validations"))
                .map(|(k, v)| (k.clone(), to_v2(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(to_v2).collect()),
        other => other.clone(),
    }
}

/// `/openapi/v2`: everything in one Swagger 2.0 document.
pub fn v2(catalog: &Catalog) -> Value {
    let mut paths = Map::new();
    let mut definitions = Map::new();
    for r in &catalog.resources {
        paths.extend(self::paths(r, false));
        definitions.insert(schema_name(r), to_v2(&r.schema));
    }
    json!({
        "swagger": "2.0",
        "info": {"title": "Ebb (local mode)", "version": crate::discovery::version()["gitVersion"]},
        "paths": paths,
        "definitions": definitions,
    })
}
