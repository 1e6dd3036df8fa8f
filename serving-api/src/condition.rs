//! Knative-style status conditions.
//!
//! Reconcilers build conditions without timestamps; [`carry_transition_times`] then keeps the
//! previous `lastTransitionTime` for every condition whose status did not change and stamps `now`
//! (passed in, never read here) on the ones that did.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `True`, `False` or `Unknown`, serialized exactly as Kubernetes does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    #[default]
    Unknown,
}

impl ConditionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }
}

/// One condition in `status.conditions`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: ConditionStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `Error` (the default, omitted) or `Warning`/`Info` for conditions that do not gate Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
}

impl Condition {
    pub fn new(type_: &str, status: ConditionStatus, reason: &str, message: &str) -> Self {
        Condition {
            type_: type_.to_string(),
            status,
            reason: (!reason.is_empty()).then(|| reason.to_string()),
            message: (!message.is_empty()).then(|| message.to_string()),
            severity: None,
            last_transition_time: None,
        }
    }
    pub fn truthy(type_: &str) -> Self {
        Condition::new(type_, ConditionStatus::True, "", "")
    }
    pub fn is_true(&self) -> bool {
        self.status == ConditionStatus::True
    }
}

/// Find a condition by type.
pub fn get<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Status of a condition by type (`Unknown` when absent, as Knative reads it).
pub fn status_of(conditions: &[Condition], type_: &str) -> ConditionStatus {
    get(conditions, type_).map_or(ConditionStatus::Unknown, |c| c.status)
}

/// Insert or replace a condition, keeping conditions sorted by type (stable output for diffs).
pub fn set(conditions: &mut Vec<Condition>, condition: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == condition.type_) {
        Some(existing) => *existing = condition,
        None => {
            conditions.push(condition);
            conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
        }
    }
}

/// Derive a happy condition (`Ready`) from its dependents: False if any is False (first one's
/// reason and message), else Unknown if any is Unknown, else True.
pub fn summarize(happy: &str, dependents: &[&Condition]) -> Condition {
    if let Some(bad) = dependents
        .iter()
        .find(|c| c.status == ConditionStatus::False)
    {
        return Condition {
            type_: happy.to_string(),
            last_transition_time: None,
            severity: None,
            ..(*bad).clone()
        };
    }
    if let Some(unknown) = dependents
        .iter()
        .find(|c| c.status == ConditionStatus::Unknown)
    {
        return Condition {
            type_: happy.to_string(),
            last_transition_time: None,
            severity: None,
            ..(*unknown).clone()
        };
    }
    Condition::truthy(happy)
}

/// Keep `lastTransitionTime` from `old` where the status is unchanged; stamp `now` elsewhere.
pub fn carry_transition_times(old: &[Condition], new: &mut [Condition], now: &Time) {
    for c in new.iter_mut() {
        c.last_transition_time = match get(old, &c.type_) {
            Some(prev) if prev.status == c.status => prev
                .last_transition_time
                .clone()
                .or_else(|| Some(now.clone())),
            _ => Some(now.clone()),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap_or_default())
    }

    #[test]
    fn summarize_prefers_false_then_unknown() {
        let a = Condition::truthy("A");
        let b = Condition::new("B", ConditionStatus::Unknown, "Waiting", "w");
        let c = Condition::new("C", ConditionStatus::False, "Broken", "b");
        let r = summarize("Ready", &[&a, &b, &c]);
        assert_eq!(
            (r.status, r.reason.as_deref()),
            (ConditionStatus::False, Some("Broken"))
        );
        let r = summarize("Ready", &[&a, &b]);
        assert_eq!(
            (r.status, r.reason.as_deref()),
            (ConditionStatus::Unknown, Some("Waiting"))
        );
        assert_eq!(summarize("Ready", &[&a]).status, ConditionStatus::True);
        assert_eq!(summarize("Ready", &[&a]).type_, "Ready");
    }

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let mut old = vec![Condition::truthy("Ready"), Condition::truthy("Active")];
        old[0].last_transition_time = Some(t(100));
        old[1].last_transition_time = Some(t(100));
        let mut new = vec![
            Condition::truthy("Ready"),
            Condition::new("Active", ConditionStatus::False, "NoTraffic", ""),
        ];
        carry_transition_times(&old, &mut new, &t(200));
        assert_eq!(new[0].last_transition_time, Some(t(100)));
        assert_eq!(new[1].last_transition_time, Some(t(200)));
    }

    #[test]
    fn set_replaces_and_sorts() {
        let mut cs = vec![];
        set(&mut cs, Condition::truthy("Ready"));
        set(&mut cs, Condition::truthy("Active"));
        set(
            &mut cs,
            Condition::new("Ready", ConditionStatus::False, "X", ""),
        );
        assert_eq!(
            cs.iter().map(|c| c.type_.as_str()).collect::<Vec<_>>(),
            ["Active", "Ready"]
        );
        assert_eq!(status_of(&cs, "Ready"), ConditionStatus::False);
        assert_eq!(status_of(&cs, "Missing"), ConditionStatus::Unknown);
    }
}
