//! Metadata helpers shared by the builders: owner references and what propagates to children.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use serving_api::labels;

/// A controller owner reference to `owner` (cascading delete, one controller per object).
/// Objects without a UID yet (never stored) get none; the apply step stores parents first.
pub fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> Option<OwnerReference> {
    // blockOwnerDeletion: a foreground delete of the parent waits for its children, as in Knative.
    owner.controller_owner_ref(&()).map(|r| OwnerReference {
        block_owner_deletion: Some(true),
        ..r
    })
}

/// Whether `child` is controlled by `owner` (by UID when both have one, else by kind and name).
pub fn is_controlled_by<K: Resource<DynamicType = ()>>(child: &ObjectMeta, owner: &K) -> bool {
    let Some(refs) = child.owner_references.as_ref() else {
        return false;
    };
    let kind = K::kind(&());
    refs.iter()
        .filter(|r| r.controller == Some(true))
        .any(|r| match owner.meta().uid.as_deref() {
            Some(uid) => r.uid == uid,
            None => r.kind == kind && Some(&r.name) == owner.meta().name.as_ref(),
        })
}

/// Annotations a child inherits: all but kubectl's last-applied bookkeeping, which describes
/// the parent and would make the child look user-applied.
pub fn inherited_annotations(src: Option<&BTreeMap<String, String>>) -> BTreeMap<String, String> {
    src.into_iter()
        .flatten()
        .filter(|(k, _)| k.as_str() != labels::LAST_APPLIED)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// `base` with `extra` laid over it.
pub fn union(
    base: Option<&BTreeMap<String, String>>,
    extra: &[(&str, &str)],
) -> BTreeMap<String, String> {
    let mut out = base.cloned().unwrap_or_default();
    for (k, v) in extra {
        out.insert(k.to_string(), v.to_string());
    }
    out
}

pub fn non_empty(m: BTreeMap<String, String>) -> Option<BTreeMap<String, String>> {
    (!m.is_empty()).then_some(m)
}
