//! Configuration → Revision: stamp a Revision per template generation, and the
//! Configuration's status from its latest Revisions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;
use serving_api::condition::{Condition, ConditionStatus};
use serving_api::configuration::{ConfigurationStatusFields, conditions, reasons};
use serving_api::{Configuration, ConfigurationStatus, Revision, labels, naming};

use crate::meta::{controller_ref, non_empty, union};

/// What to do about the Revision of the Configuration's current generation.
#[derive(Clone, Debug, PartialEq)]
pub enum RevisionPlan {
    /// No Revision for this generation yet: create this one.
    Create(Box<Revision>),
    /// The Revision of this generation exists.
    Existing(String),
    /// The template cannot be stamped (a user-chosen name already used by another template).
    Conflict { name: String, message: String },
}

impl RevisionPlan {
    pub fn revision_name(&self) -> &str {
        match self {
            RevisionPlan::Create(r) => r.metadata.name.as_deref().unwrap_or_default(),
            RevisionPlan::Existing(n) | RevisionPlan::Conflict { name: n, .. } => n,
        }
    }
}

fn generation(config: &Configuration) -> i64 {
    config.metadata.generation.unwrap_or(1)
}

/// The Revision this Configuration stamps at its current generation.
pub fn desired_revision(config: &Configuration) -> Revision {
    let name = config.metadata.name.clone().unwrap_or_default();
    let generation_n = generation(config);
    let template = &config.spec.template;
    let rev_name = template
        .metadata
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| naming::revision_name(&name, generation_n));
    let generation_s = generation_n.to_string();
    let uid = config.metadata.uid.clone().unwrap_or_default();
    let mut extra = vec![
        (labels::CONFIGURATION, name.as_str()),
        (labels::CONFIGURATION_GENERATION, generation_s.as_str()),
    ];
    if !uid.is_empty() {
        extra.push((labels::CONFIGURATION_UID, uid.as_str()));
    }
    // The owning Service's labels travel down so pods can be selected by service.
    let parent_labels = config.metadata.labels.clone().unwrap_or_default();
    for key in [labels::SERVICE, labels::SERVICE_UID] {
        if let Some(v) = parent_labels.get(key) {
            extra.push((key, v.as_str()));
        }
    }
    let mut annotations = template.metadata.annotations.clone().unwrap_or_default();
    for key in [labels::CREATOR, labels::LAST_MODIFIER] {
        if let Some(v) = config
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
        {
            annotations
                .entry(key.to_string())
                .or_insert_with(|| v.clone());
        }
    }
    Revision {
        metadata: ObjectMeta {
            name: Some(rev_name),
            namespace: config.metadata.namespace.clone(),
            labels: non_empty(union(template.metadata.labels.as_ref(), &extra)),
            annotations: non_empty(annotations),
            owner_references: controller_ref(config).map(|r| vec![r]),
            ..ObjectMeta::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// Decide whether the current generation needs a new Revision. `existing` are the Revisions
/// in the Configuration's namespace (any owner).
pub fn plan_revision(config: &Configuration, existing: &[Revision]) -> RevisionPlan {
    let desired = desired_revision(config);
    let name = desired.metadata.name.clone().unwrap_or_default();
    let config_name = config.metadata.name.as_deref().unwrap_or_default();
    let Some(found) = existing
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some(name.as_str()))
    else {
        return RevisionPlan::Create(Box::new(desired));
    };
    let owner = found
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(labels::CONFIGURATION))
        .map(String::as_str);
    if owner != Some(config_name) {
        return RevisionPlan::Conflict {
            message: format!(
                "revision {name:?} already exists and belongs to configuration {:?}",
                owner.unwrap_or("<none>")
            ),
            name,
        };
    }
    let stamped_at = found
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(labels::CONFIGURATION_GENERATION));
    if stamped_at.map(String::as_str) == Some(generation(config).to_string().as_str()) {
        return RevisionPlan::Existing(name);
    }
    // A user-chosen name may be kept across generations only while the template is the same.
    let changed = changed_fields(found, &desired);
    if changed.is_empty() {
        RevisionPlan::Existing(name)
    } else {
        RevisionPlan::Conflict {
            message: format!(
                "saw changes to the template without a change of spec.template.metadata.name {name:?} (revisions are immutable; choose a new name): {}",
                changed.join(", ")
            ),
            name,
        }
    }
}

/// Paths of the template parts that differ between an existing Revision and the desired one
/// (the spec, and the labels and annotations the user wrote in the template).
fn changed_fields(old: &Revision, new: &Revision) -> Vec<String> {
    let mut out = Vec::new();
    let spec_old = serde_json::to_value(&old.spec).unwrap_or(Value::Null);
    let spec_new = serde_json::to_value(&new.spec).unwrap_or(Value::Null);
    diff_paths("spec", &spec_old, &spec_new, &mut out);
    let user_keys = |r: &Revision| -> Value {
        let ann = r.metadata.annotations.clone().unwrap_or_default();
        serde_json::to_value(ann).unwrap_or(Value::Null)
    };
    diff_paths(
        "metadata.annotations",
        &user_keys(old),
        &user_keys(new),
        &mut out,
    );
    out
}

fn diff_paths(at: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let (va, vb) = (
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                );
                diff_paths(&format!("{at}.{k}"), va, vb, out);
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                diff_paths(&format!("{at}[{i}]"), va, vb, out);
            }
        }
        _ if a != b => out.push(at.to_string()),
        _ => {}
    }
}

/// The Configuration's status given its plan and the Revisions that exist.
pub fn configuration_status(
    config: &Configuration,
    plan: &RevisionPlan,
    revisions: &[Revision],
) -> ConfigurationStatus {
    let previous = config.status.clone().unwrap_or_default().fields;
    let find = |n: &str| {
        revisions
            .iter()
            .find(|r| r.metadata.name.as_deref() == Some(n))
    };
    let mut fields = ConfigurationStatusFields {
        latest_created_revision_name: previous.latest_created_revision_name.clone(),
        latest_ready_revision_name: previous.latest_ready_revision_name.clone(),
    };

    // The latest ready revision disappearing is reported even if a newer one is pending.
    let mut deleted = None;
    if let Some(ready) = fields.latest_ready_revision_name.clone()
        && find(&ready).is_none()
    {
        deleted = Some(ready);
        fields.latest_ready_revision_name = None;
    }

    let ready = match plan {
        RevisionPlan::Conflict { message, .. } => Condition::new(
            conditions::READY,
            ConditionStatus::False,
            reasons::REVISION_FAILED,
            message,
        ),
        RevisionPlan::Create(r) => {
            fields.latest_created_revision_name = r.metadata.name.clone();
            Condition::new(
                conditions::READY,
                ConditionStatus::Unknown,
                "",
                "Waiting for the new Revision to be created.",
            )
        }
        RevisionPlan::Existing(name) => {
            fields.latest_created_revision_name = Some(name.clone());
            match find(name) {
                Some(rev) if rev.is_ready() => {
                    fields.latest_ready_revision_name = Some(name.clone());
                    Condition::truthy(conditions::READY)
                }
                Some(rev) if rev.is_failed() => {
                    let why = rev
                        .ready_condition()
                        .and_then(|c| c.message.clone())
                        .unwrap_or_default();
                    Condition::new(
                        conditions::READY,
                        ConditionStatus::False,
                        reasons::REVISION_FAILED,
                        &format!("Revision {name:?} failed with message: {why}."),
                    )
                }
                _ => Condition::new(
                    conditions::READY,
                    ConditionStatus::Unknown,
                    "",
                    &format!("Waiting for Revision {name:?} to become ready."),
                ),
            }
        }
    };
    let ready = match (deleted, ready.status) {
        (Some(gone), ConditionStatus::Unknown) => Condition::new(
            conditions::READY,
            ConditionStatus::False,
            reasons::REVISION_DELETED,
            &format!("Revision {gone:?} was deleted."),
        ),
        _ => ready,
    };
    ConfigurationStatus {
        observed_generation: config.metadata.generation,
        conditions: vec![ready],
        fields,
    }
}
