//! Revision garbage collection per `config-gc`, as Knative's: a Configuration's non-active
//! revisions (not routed, not its latest created or ready, not marked
//! `serving.knative.dev/no-gc`) beyond `min-non-active-revisions` are deleted once stale (older
//! than `retain-since-create-time` and inactive longer than `retain-since-last-active-time`,
//! each unless disabled), oldest activity first; beyond `max-non-active-revisions` the oldest
//! go whatever their age.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serving_api::config::GcConfig;
use serving_api::labels;
use serving_api::{Configuration, Revision};

/// The annotation that keeps a revision from collection.
pub const NO_GC: &str = "serving.knative.dev/no-gc";

/// When the revision last had traffic: its routing state's last change, else its creation.
fn last_active(rev: &Revision) -> Option<k8s_openapi::jiff::Timestamp> {
    rev.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(labels::ROUTING_STATE_MODIFIED))
        .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
        .or_else(|| rev.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

fn stale(gc: &GcConfig, rev: &Revision, now: k8s_openapi::jiff::Timestamp) -> bool {
    let (create, active) = (
        gc.retain_since_create_time,
        gc.retain_since_last_active_time,
    );
    if create.is_none() && active.is_none() {
        return false;
    }
    let older_than = |t: Option<k8s_openapi::jiff::Timestamp>, d: std::time::Duration| {
        t.is_some_and(|t| {
            now.duration_since(t)
                .try_into()
                .is_ok_and(|age: std::time::Duration| age >= d)
        })
    };
    let created = rev.metadata.creation_timestamp.as_ref().map(|t| t.0);
    create.is_none_or(|d| older_than(created, d))
        && active.is_none_or(|d| older_than(last_active(rev), d))
}

/// The revisions of `config` (among `revisions`) to delete now, oldest activity first.
pub fn collect(
    config: &Configuration,
    revisions: &[Revision],
    gc: &GcConfig,
    now: &Time,
) -> Vec<String> {
    let name = config.metadata.name.as_deref().unwrap_or_default();
    let fields = config.status.as_ref().map(|s| &s.fields);
    let latest = [
        fields.and_then(|f| f.latest_created_revision_name.as_deref()),
        fields.and_then(|f| f.latest_ready_revision_name.as_deref()),
    ];
    let mut candidates: Vec<&Revision> = revisions
        .iter()
        .filter(|r| r.metadata.namespace == config.metadata.namespace)
        .filter(|r| {
            r.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(labels::CONFIGURATION))
                .map(String::as_str)
                == Some(name)
        })
        .filter(|r| !latest.contains(&r.metadata.name.as_deref()))
        .filter(|r| {
            r.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(labels::ROUTING_STATE))
                .map(String::as_str)
                != Some(labels::ROUTING_ACTIVE)
        })
        // A revision a Route still names is active whatever its label says yet.
        .filter(|r| {
            r.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(labels::ROUTES))
                .is_none_or(|routes| routes.is_empty())
        })
        .filter(|r| {
            r.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(NO_GC))
                .map(String::as_str)
                != Some("true")
        })
        .collect();
    let min = gc.min_non_active_revisions as usize;
    if candidates.len() <= min {
        return Vec::new();
    }
    candidates.sort_by_key(|r| (last_active(r), r.metadata.name.clone()));
    let mut count = candidates.len();
    let mut deleted = vec![false; candidates.len()];
    for (i, rev) in candidates.iter().enumerate() {
        if count <= min {
            break;
        }
        if stale(gc, rev, now.0) {
            deleted[i] = true;
            count -= 1;
        }
    }
    if let Some(max) = gc.max_non_active_revisions.map(|m| m as usize) {
        for d in deleted.iter_mut() {
            if count <= max {
                break;
            }
            if !*d {
                *d = true;
                count -= 1;
            }
        }
    }
    candidates
        .iter()
        .zip(deleted)
        .filter(|(_, d)| *d)
        .filter_map(|(r, _)| r.metadata.name.clone())
        .collect()
}
