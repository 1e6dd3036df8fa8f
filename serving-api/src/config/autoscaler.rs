//! `config-autoscaler`: cluster-wide KPA settings and the defaults of the per-revision
//! `autoscaling.knative.dev/*` annotations.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{ConfigErrors, Reader};

pub const NAME: &str = "config-autoscaler";
pub const KPA_CLASS: &str = "kpa.autoscaling.knative.dev";
pub const HPA_CLASS: &str = "hpa.autoscaling.knative.dev";

/// Knative's bounds: the stable window must hold at least a few 1 s buckets and at most an hour.
pub const STABLE_WINDOW_MIN: Duration = Duration::from_secs(6);
pub const STABLE_WINDOW_MAX: Duration = Duration::from_secs(3600);
/// Upper bound for scale-down-delay and pod retention.
pub const MAX_DELAY: Duration = Duration::from_secs(3600);
/// The smallest target; lower would make the desired scale explode.
pub const TARGET_MIN: f64 = 0.01;

#[derive(Clone, Debug, PartialEq)]
pub struct AutoscalerConfig {
    /// `container-concurrency-target-percentage`: utilization target, percent (0, 100].
    pub container_concurrency_target_percentage: f64,
    /// `container-concurrency-target-default`: target concurrency when CC = 0 and no annotation.
    pub container_concurrency_target_default: f64,
    /// `requests-per-second-target-default`: target for the `rps` metric.
    pub rps_target_default: f64,
    /// `target-burst-capacity`: spare capacity kept before the activator leaves the path; -1 = always.
    pub target_burst_capacity: f64,
    /// `stable-window`.
    pub stable_window: Duration,
    /// `panic-window-percentage`: panic window as a percentage of the stable window.
    pub panic_window_percentage: f64,
    /// `panic-threshold-percentage`: enter panic at this percentage of current capacity.
    pub panic_threshold_percentage: f64,
    /// `max-scale-up-rate`: at most this many times the ready pods per decision.
    pub max_scale_up_rate: f64,
    /// `max-scale-down-rate`: at least ready pods divided by this per decision.
    pub max_scale_down_rate: f64,
    /// `enable-scale-to-zero`.
    pub enable_scale_to_zero: bool,
    /// `scale-to-zero-grace-period`: time to wait after the decision to scale to zero.
    pub scale_to_zero_grace_period: Duration,
    /// `scale-to-zero-pod-retention-period`: minimum time the last pod is kept.
    pub scale_to_zero_pod_retention_period: Duration,
    /// `pod-autoscaler-class`.
    pub pod_autoscaler_class: String,
    /// `activator-capacity`: requests one activator is assumed to handle (sizes the activator set).
    pub activator_capacity: f64,
    /// `initial-scale`: scale of a new revision before any metric.
    pub initial_scale: i32,
    /// `allow-zero-initial-scale`.
    pub allow_zero_initial_scale: bool,
    /// `min-scale` / `max-scale`: defaults of the annotations (0 = none).
    pub min_scale: i32,
    pub max_scale: i32,
    /// `max-scale-limit`: cap on any revision's max-scale (0 = none).
    pub max_scale_limit: i32,
    /// `scale-down-delay`.
    pub scale_down_delay: Duration,
}

impl Default for AutoscalerConfig {
    fn default() -> Self {
        AutoscalerConfig {
            container_concurrency_target_percentage: 70.0,
            container_concurrency_target_default: 100.0,
            rps_target_default: 200.0,
            target_burst_capacity: 211.0,
            stable_window: Duration::from_secs(60),
            panic_window_percentage: 10.0,
            panic_threshold_percentage: 200.0,
            max_scale_up_rate: 1000.0,
            max_scale_down_rate: 2.0,
            enable_scale_to_zero: true,
            scale_to_zero_grace_period: Duration::from_secs(30),
            scale_to_zero_pod_retention_period: Duration::ZERO,
            pod_autoscaler_class: KPA_CLASS.into(),
            activator_capacity: 100.0,
            initial_scale: 1,
            allow_zero_initial_scale: false,
            min_scale: 0,
            max_scale: 0,
            max_scale_limit: 0,
            scale_down_delay: Duration::ZERO,
        }
    }
}

fn whole_seconds(d: Duration) -> bool {
    d.subsec_nanos() == 0
}

impl AutoscalerConfig {
    pub fn from_map(data: &BTreeMap<String, String>) -> Result<Self, ConfigErrors> {
        let mut c = AutoscalerConfig::default();
        let mut r = Reader::new(NAME, data);
        r.number(
            "container-concurrency-target-percentage",
            &mut c.container_concurrency_target_percentage,
            1.0,
            100.0,
        );
        r.number(
            "container-concurrency-target-default",
            &mut c.container_concurrency_target_default,
            TARGET_MIN,
            f64::MAX,
        );
        r.number(
            "requests-per-second-target-default",
            &mut c.rps_target_default,
            TARGET_MIN,
            f64::MAX,
        );
        if let Some(raw) = r.raw("target-burst-capacity") {
            match raw.parse::<f64>() {
                Ok(v) if v >= 0.0 || v == -1.0 => c.target_burst_capacity = v,
                _ => r.error(
                    "target-burst-capacity",
                    raw,
                    "must be -1 or a number at least 0",
                ),
            }
        }
        r.duration(
            "stable-window",
            &mut c.stable_window,
            STABLE_WINDOW_MIN,
            STABLE_WINDOW_MAX,
        );
        if !whole_seconds(c.stable_window) {
            let v = crate::duration::format(c.stable_window);
            r.error("stable-window", &v, "must be a whole number of seconds");
        }
        r.number(
            "panic-window-percentage",
            &mut c.panic_window_percentage,
            1.0,
            100.0,
        );
        r.number(
            "panic-threshold-percentage",
            &mut c.panic_threshold_percentage,
            110.0,
            1000.0,
        );
        // Rates of 1 or less would forbid any change at all.
        r.number(
            "max-scale-up-rate",
            &mut c.max_scale_up_rate,
            1.0 + f64::EPSILON,
            f64::MAX,
        );
        r.number(
            "max-scale-down-rate",
            &mut c.max_scale_down_rate,
            1.0 + f64::EPSILON,
            f64::MAX,
        );
        r.boolean("enable-scale-to-zero", &mut c.enable_scale_to_zero);
        // Knative's floor: the activator needs a few seconds to take over the data path.
        r.duration(
            "scale-to-zero-grace-period",
            &mut c.scale_to_zero_grace_period,
            Duration::from_secs(6),
            MAX_DELAY,
        );
        r.duration(
            "scale-to-zero-pod-retention-period",
            &mut c.scale_to_zero_pod_retention_period,
            Duration::ZERO,
            MAX_DELAY,
        );
        r.string("pod-autoscaler-class", &mut c.pod_autoscaler_class);
        if c.pod_autoscaler_class != KPA_CLASS {
            let v = c.pod_autoscaler_class.clone();
            r.error(
                "pod-autoscaler-class",
                &v,
                format!("Ebb implements only {KPA_CLASS}"),
            );
        }
        r.number(
            "activator-capacity",
            &mut c.activator_capacity,
            1.0,
            f64::MAX,
        );
        r.boolean("allow-zero-initial-scale", &mut c.allow_zero_initial_scale);
        r.number("initial-scale", &mut c.initial_scale, 0, i32::MAX);
        if c.initial_scale == 0 && !c.allow_zero_initial_scale {
            r.error(
                "initial-scale",
                "0",
                "must be at least 1 unless allow-zero-initial-scale is true",
            );
        }
        r.number("min-scale", &mut c.min_scale, 0, i32::MAX);
        r.number("max-scale", &mut c.max_scale, 0, i32::MAX);
        r.number("max-scale-limit", &mut c.max_scale_limit, 0, i32::MAX);
        if c.max_scale > 0 && c.min_scale > c.max_scale {
            let v = c.min_scale.to_string();
            r.error(
                "min-scale",
                &v,
                format!("must be at most max-scale ({})", c.max_scale),
            );
        }
        if c.max_scale_limit > 0 && (c.max_scale == 0 || c.max_scale > c.max_scale_limit) {
            let v = c.max_scale.to_string();
            r.error(
                "max-scale",
                &v,
                format!(
                    "must be between 1 and max-scale-limit ({})",
                    c.max_scale_limit
                ),
            );
        }
        r.duration(
            "scale-down-delay",
            &mut c.scale_down_delay,
            Duration::ZERO,
            MAX_DELAY,
        );
        if !whole_seconds(c.scale_down_delay) {
            let v = crate::duration::format(c.scale_down_delay);
            r.error("scale-down-delay", &v, "must be a whole number of seconds");
        }
        r.finish(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::map;

    #[test]
    fn empty_map_is_default() {
        assert_eq!(
            AutoscalerConfig::from_map(&map(&[])),
            Ok(AutoscalerConfig::default())
        );
    }

    #[test]
    fn range_errors_name_key_value_and_range() {
        let rows: &[(&str, &str, &str)] = &[
            ("stable-window", "5s", "must be between 6s and 1h0m0s"),
            ("stable-window", "2h", "must be between 6s and 1h0m0s"),
            ("stable-window", "6500ms", "whole number of seconds"),
            ("panic-window-percentage", "0.5", "between 1 and 100"),
            ("panic-threshold-percentage", "100", "between 110 and 1000"),
            ("target-burst-capacity", "-2", "-1 or a number at least 0"),
            (
                "container-concurrency-target-percentage",
                "101",
                "between 1 and 100",
            ),
            (
                "container-concurrency-target-default",
                "0.001",
                "between 0.01",
            ),
            ("max-scale-up-rate", "1", "between"),
            ("max-scale-down-rate", "0.5", "between"),
            ("scale-to-zero-grace-period", "1s", "between 6s"),
            (
                "scale-to-zero-pod-retention-period",
                "2h",
                "between 0s and 1h0m0s",
            ),
            ("initial-scale", "0", "allow-zero-initial-scale"),
            ("initial-scale", "-1", "between 0"),
            ("scale-down-delay", "61m", "between 0s and 1h0m0s"),
            ("enable-scale-to-zero", "yes", "true or false"),
            (
                "pod-autoscaler-class",
                "hpa.autoscaling.knative.dev",
                "only kpa",
            ),
            ("activator-capacity", "0", "between 1"),
        ];
        for (key, value, rule) in rows {
            let err = AutoscalerConfig::from_map(&map(&[(key, value)]))
                .err()
                .unwrap_or(ConfigErrors(vec![]));
            assert_eq!(err.0.len(), 1, "{key}={value}: {err:?}");
            assert_eq!(err.0[0].key, *key);
            assert!(
                err.0[0].rule.contains(rule),
                "{key}={value}: {}",
                err.0[0].rule
            );
        }
    }

    #[test]
    fn cross_key_rules() {
        let err = AutoscalerConfig::from_map(&map(&[("min-scale", "5"), ("max-scale", "3")]));
        assert!(err.is_err());
        let err =
            AutoscalerConfig::from_map(&map(&[("max-scale-limit", "10"), ("max-scale", "20")]));
        assert!(err.is_err());
        let ok = AutoscalerConfig::from_map(&map(&[
            ("initial-scale", "0"),
            ("allow-zero-initial-scale", "true"),
        ]));
        assert_eq!(ok.map(|c| c.initial_scale), Ok(0));
    }
}
