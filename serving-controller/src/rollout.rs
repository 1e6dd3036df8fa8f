//! Gradual rollout, as Knative's: when a Route's configuration target gets a new latest ready
//! revision and a rollout duration is set (`serving.knative.dev/rollout-duration` on the Route,
//! propagated from its Service, else config-network's `rollout-duration`), its traffic moves
//! from the previous revision to the new one in steps over that duration, instead of at once.
//! The state lives in the Route's `serving.knative.dev/rollout` annotation (absolute times), so
//! a rollout resumes where it was after a restart or a controller failover.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use serving_api::{Revision, Route, RouteStatus, TrafficTarget};

/// The Route annotation holding the rollout state (JSON).
pub const ROLLOUT_STATE: &str = "serving.knative.dev/rollout";
/// The Route (or Service) annotation setting the rollout's duration.
pub const ROLLOUT_DURATION: &str = "serving.knative.dev/rollout-duration";

/// One configuration target moving from `old` to `new`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    pub configuration: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    pub old: String,
    pub new: String,
    /// The new revision's share of the target's percent now.
    pub new_percent: i64,
    pub step_percent: i64,
    pub step_millis: u64,
    /// When the next step is due (RFC 3339).
    pub next_step: String,
}

/// A Route's rollouts in progress.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub steps: Vec<Step>,
}

impl Rollout {
    /// The state recorded on `route`, if any (an unreadable one counts as none).
    pub fn of(route: &Route) -> Option<Rollout> {
        route
            .metadata
            .annotations
            .as_ref()?
            .get(ROLLOUT_STATE)
            .and_then(|s| serde_json::from_str(s).ok())
    }

    /// The annotation value (None when nothing is in progress).
    pub fn annotation(&self) -> Option<String> {
        (!self.steps.is_empty()).then(|| serde_json::to_string(self).unwrap_or_default())
    }

    /// When the earliest next step is due.
    pub fn next_step(&self) -> Option<Timestamp> {
        self.steps
            .iter()
            .filter_map(|s| s.next_step.parse::<Timestamp>().ok())
            .min()
    }
}

/// The rollout duration for `route`: its annotation, else `default` (config-network).
pub fn duration(route: &Route, default: Duration) -> Duration {
    route
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ROLLOUT_DURATION))
        .and_then(|v| parse_duration(v))
        .unwrap_or(default)
}

/// `380s`, `5m` or a plain number of seconds, as Knative takes them.
pub fn parse_duration(v: &str) -> Option<Duration> {
    let v = v.trim();
    v.parse::<u64>()
        .ok()
        .map(Duration::from_secs)
        .or_else(|| serving_api::duration::parse(v).ok())
}

/// Steps for moving `percent` over `total`: at most one a second, at least 1% each.
fn steps(percent: i64, total: Duration) -> (i64, Duration) {
    let count = (total.as_secs().max(1) as i64).min(percent).max(1);
    let step = (percent + count - 1) / count;
    (step, total / count as u32)
}

/// The traffic to publish and the rollout state, given the targets just resolved (index-aligned
/// with `route.spec.traffic`), what the Route served before (`previous`), the revisions that
/// still exist and the time. Targets not following a configuration pass through unchanged.
pub fn advance(
    route: &Route,
    resolved: Vec<TrafficTarget>,
    previous: &[TrafficTarget],
    existing: &dyn Fn(&str) -> bool,
    total: Duration,
    now: Timestamp,
) -> (Vec<TrafficTarget>, Rollout) {
    let state = Rollout::of(route).unwrap_or_default();
    let mut out = Vec::new();
    let mut next = Rollout::default();
    for (i, target) in resolved.into_iter().enumerate() {
        let spec = route.spec.traffic.get(i);
        let Some(config) = spec.and_then(|s| s.configuration_name.clone()) else {
            out.push(target);
            continue;
        };
        let percent = target.percent.unwrap_or(0);
        let new = target.revision_name.clone().unwrap_or_default();
        let current = state
            .steps
            .iter()
            .find(|s| s.configuration == config && s.tag == target.tag);
        let mut step = match current {
            // In progress.
            Some(s) if s.new == new => Some(s.clone()),
            // A newer revision while a rollout ran: start again from the larger share.
            Some(s) => {
                let old = if s.new_percent * 2 >= percent {
                    s.new.clone()
                } else {
                    s.old.clone()
                };
                start(&config, &target, old, percent, total, now)
            }
            // The latest ready revision changed: start from what this target served.
            None => previous
                .iter()
                .filter(|p| p.latest_revision == Some(true) && p.tag == target.tag)
                .max_by_key(|p| p.percent.unwrap_or(0))
                .and_then(|p| p.revision_name.clone())
                .filter(|old| *old != new)
                .and_then(|old| start(&config, &target, old, percent, total, now)),
        };
        if let Some(s) = step.as_mut()
            && s.next_step.parse::<Timestamp>().is_ok_and(|due| now >= due)
            && current.is_some_and(|c| c.new == s.new)
        {
            s.new_percent = (s.new_percent + s.step_percent).min(percent);
            let after = now
                .checked_add(SignedDuration::from_millis(s.step_millis as i64))
                .unwrap_or(now);
            s.next_step = after.to_string();
        }
        match step {
            Some(s) if s.new_percent < percent && existing(&s.old) => {
                out.push(TrafficTarget {
                    percent: Some(s.new_percent),
                    ..target.clone()
                });
                out.push(TrafficTarget {
                    tag: None,
                    revision_name: Some(s.old.clone()),
                    configuration_name: None,
                    latest_revision: Some(true),
                    percent: Some(percent - s.new_percent),
                    url: None,
                });
                next.steps.push(s);
            }
            // Done (or the old revision is gone): all of the target's traffic on the new one.
            _ => out.push(target),
        }
    }
    (out, next)
}

fn start(
    config: &str,
    target: &TrafficTarget,
    old: String,
    percent: i64,
    total: Duration,
    now: Timestamp,
) -> Option<Step> {
    if total.is_zero() || percent <= 0 {
        return None;
    }
    let (step, every) = steps(percent, total);
    let after = now
        .checked_add(SignedDuration::try_from(every).ok()?)
        .ok()?;
    Some(Step {
        configuration: config.to_string(),
        tag: target.tag.clone(),
        old,
        new: target.revision_name.clone().unwrap_or_default(),
        new_percent: step.min(percent),
        step_percent: step,
        step_millis: every.as_millis() as u64,
        next_step: after.to_string(),
    })
}

/// Apply the rollout to a Route's freshly computed status: when all its traffic is assigned,
/// its configuration targets move in steps; the state to record (None: traffic not assigned,
/// the recorded state left as it is).
pub fn apply(
    route: &Route,
    status: &mut RouteStatus,
    revisions: &[Revision],
    default: Duration,
    now: Timestamp,
) -> Option<Rollout> {
    let assigned = status.conditions.iter().any(|c| {
        c.type_ == serving_api::route::conditions::ALL_TRAFFIC_ASSIGNED
            && c.status == serving_api::ConditionStatus::True
    });
    if !assigned {
        return None;
    }
    let existing = |n: &str| {
        revisions
            .iter()
            .any(|r| r.metadata.name.as_deref() == Some(n))
    };
    let previous = route
        .status
        .as_ref()
        .map(|s| s.fields.traffic.clone())
        .unwrap_or_default();
    let (traffic, state) = advance(
        route,
        status.fields.traffic.clone(),
        &previous,
        &existing,
        duration(route, default),
        now,
    );
    status.fields.traffic = traffic;
    Some(state)
}

/// The annotation value to write when `state` differs from what `route` records (`Some(None)`:
/// remove it).
pub fn to_record(route: &Route, state: &Rollout) -> Option<Option<String>> {
    let want = state.annotation();
    let have = route
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ROLLOUT_STATE))
        .cloned();
    (want != have).then_some(want)
}
