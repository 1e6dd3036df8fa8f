//! Adjustments to the generated OpenAPI schema of a Revision spec.
//!
//! The embedded PodSpec schema comes from Kubernetes' Go types, which is right for Deployments
//! but wrong in two ways for Knative manifests: it requires a container `name` and a probe
//! `port`, both optional in Knative (defaulted to `user-container` and the user port), and its
//! descriptions make each CRD ~580 KB, over the 256 KB that client-side `kubectl apply` can
//! record. We keep the structure and validation and drop the pod field descriptions
//! (`kubectl explain` still documents Ebb's own fields).

use schemars::Schema;
use serde_json::Value;

/// Fields of RevisionSpec that are Knative's, not the PodSpec's; their docs are kept.
const OWN_FIELDS: [&str; 4] = [
    "containerConcurrency",
    "timeoutSeconds",
    "responseStartTimeoutSeconds",
    "idleTimeoutSeconds",
];

pub(crate) fn relax_pod_schema(schema: &mut Schema) {
    let Some(obj) = schema.as_object_mut() else {
        return;
    };
    if let Some(Value::Object(props)) = obj.get_mut("properties") {
        for (name, prop) in props.iter_mut() {
            if !OWN_FIELDS.contains(&name.as_str()) {
                strip_descriptions(prop);
            }
        }
        for list in ["containers", "initContainers"] {
            if let Some(items) = props.get_mut(list).and_then(|l| l.get_mut("items")) {
                remove_required(items, "name");
                relax_probe_ports(items);
            }
        }
    }
}

fn strip_descriptions(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.remove("description");
            // `properties` maps field names to schemas: a field may itself be called
            // "description", so recurse into the values without treating keys as keywords.
            for (_, child) in m.iter_mut() {
                strip_descriptions(child);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(strip_descriptions),
        _ => {}
    }
}

fn remove_required(schema: &mut Value, field: &str) {
    if let Some(Value::Array(req)) = schema.get_mut("required") {
        req.retain(|r| r != field);
        if req.is_empty()
            && let Some(m) = schema.as_object_mut()
        {
            m.remove("required");
        }
    }
}

/// Probe handlers under a container: `port` becomes optional (0 = the user port).
fn relax_probe_ports(container: &mut Value) {
    let Some(props) = container
        .get_mut("properties")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
        let Some(handlers) = props
            .get_mut(probe)
            .and_then(|p| p.get_mut("properties"))
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        for handler in ["httpGet", "tcpSocket", "grpc"] {
            if let Some(h) = handlers.get_mut(handler) {
                remove_required(h, "port");
            }
        }
    }
}
