//! The `autoscaling.knative.dev/*` annotations of a revision template: parsing, validation
//! against config-autoscaler, and the settings they resolve to for one revision.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::AutoscalerConfig;
use crate::config::autoscaler::{
    KPA_CLASS, MAX_DELAY, STABLE_WINDOW_MAX, STABLE_WINDOW_MIN, TARGET_MIN,
};
use crate::validation::FieldError;

pub const PREFIX: &str = "autoscaling.knative.dev/";
pub const CLASS: &str = "autoscaling.knative.dev/class";
pub const METRIC: &str = "autoscaling.knative.dev/metric";
pub const TARGET: &str = "autoscaling.knative.dev/target";
pub const TARGET_UTILIZATION: &str = "autoscaling.knative.dev/target-utilization-percentage";
pub const TARGET_BURST_CAPACITY: &str = "autoscaling.knative.dev/target-burst-capacity";
pub const MIN_SCALE: &str = "autoscaling.knative.dev/min-scale";
pub const MAX_SCALE: &str = "autoscaling.knative.dev/max-scale";
pub const INITIAL_SCALE: &str = "autoscaling.knative.dev/initial-scale";
pub const ACTIVATION_SCALE: &str = "autoscaling.knative.dev/activation-scale";
pub const WINDOW: &str = "autoscaling.knative.dev/window";
pub const PANIC_WINDOW_PERCENTAGE: &str = "autoscaling.knative.dev/panic-window-percentage";
pub const PANIC_THRESHOLD_PERCENTAGE: &str = "autoscaling.knative.dev/panic-threshold-percentage";
pub const SCALE_DOWN_DELAY: &str = "autoscaling.knative.dev/scale-down-delay";
/// How window averages are formed: `linear` (default) or `weightedExponential`.
pub const METRIC_AGGREGATION: &str = "autoscaling.knative.dev/metric-aggregation-algorithm";
pub const SCALE_TO_ZERO_POD_RETENTION: &str =
    "autoscaling.knative.dev/scale-to-zero-pod-retention-period";

/// Older camelCase spellings Knative still accepts; setting both spellings is an error.
const ALIASES: &[(&str, &str)] = &[
    (MIN_SCALE, "autoscaling.knative.dev/minScale"),
    (MAX_SCALE, "autoscaling.knative.dev/maxScale"),
    (INITIAL_SCALE, "autoscaling.knative.dev/initialScale"),
    (
        TARGET_UTILIZATION,
        "autoscaling.knative.dev/targetUtilizationPercentage",
    ),
    (
        TARGET_BURST_CAPACITY,
        "autoscaling.knative.dev/targetBurstCapacity",
    ),
    (
        PANIC_WINDOW_PERCENTAGE,
        "autoscaling.knative.dev/panicWindowPercentage",
    ),
    (
        PANIC_THRESHOLD_PERCENTAGE,
        "autoscaling.knative.dev/panicThresholdPercentage",
    ),
    (
        SCALE_TO_ZERO_POD_RETENTION,
        "autoscaling.knative.dev/scaleToZeroPodRetentionPeriod",
    ),
];

/// The metric a revision scales on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    Concurrency,
    Rps,
}

/// How the buckets of a window are averaged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aggregation {
    /// Every second of the window weighs the same.
    Linear,
    /// Recent seconds weigh more (exponential decay over the window).
    WeightedExponential,
}

/// Everything the KPA needs to know about one revision, with annotations applied over
/// config-autoscaler and containerConcurrency.
#[derive(Clone, Debug, PartialEq)]
pub struct RevisionScaling {
    pub metric: Metric,
    pub aggregation: Aggregation,
    /// Target per instance before utilization (annotation, else CC if > 0, else the default).
    pub target: f64,
    /// Fraction 0..1 of the target aimed for.
    pub utilization: f64,
    pub target_burst_capacity: f64,
    pub min_scale: i32,
    /// 0 = unbounded.
    pub max_scale: i32,
    pub initial_scale: i32,
    /// None when unset.
    pub activation_scale: Option<i32>,
    pub stable_window: Duration,
    pub panic_window_percentage: f64,
    pub panic_threshold_percentage: f64,
    pub scale_down_delay: Duration,
    pub scale_to_zero_pod_retention: Duration,
}

impl RevisionScaling {
    /// The effective per-instance target: `max(0.01, target × utilization)`.
    pub fn effective_target(&self) -> f64 {
        (self.target * self.utilization).max(TARGET_MIN)
    }
    pub fn panic_window(&self) -> Duration {
        self.stable_window
            .mul_f64(self.panic_window_percentage / 100.0)
    }
}

/// Look up an annotation under its key or its alias; both set is an error.
fn lookup<'a>(
    annotations: &'a BTreeMap<String, String>,
    key: &'static str,
    path: &str,
    errors: &mut Vec<FieldError>,
) -> Option<(&'a str, String)> {
    let alias = ALIASES.iter().find(|(k, _)| *k == key).map(|(_, a)| *a);
    let main = annotations.get(key);
    let old = alias.and_then(|a| annotations.get(a));
    match (main, old, alias) {
        (Some(_), Some(_), Some(alias)) => {
            errors.push(FieldError::new(
                format!("{path}.{key}"),
                format!("set only one of {key} and {alias}"),
            ));
            None
        }
        (Some(v), _, _) => Some((v.as_str(), format!("{path}.{key}"))),
        (None, Some(v), Some(alias)) => Some((v.as_str(), format!("{path}.{alias}"))),
        _ => None,
    }
}

struct Parser<'a> {
    annotations: &'a BTreeMap<String, String>,
    path: &'a str,
    errors: Vec<FieldError>,
}

impl Parser<'_> {
    fn float(&mut self, key: &'static str, min: f64, max: f64) -> Option<f64> {
        let (raw, path) = lookup(self.annotations, key, self.path, &mut self.errors)?;
        match raw.trim().parse::<f64>() {
            Ok(v) if v.is_finite() && v >= min && v <= max => Some(v),
            Ok(_) => {
                self.errors.push(FieldError::invalid(
                    path,
                    raw,
                    format!("must be between {min} and {max}"),
                ));
                None
            }
            Err(_) => {
                self.errors
                    .push(FieldError::invalid(path, raw, "must be a number"));
                None
            }
        }
    }
    fn int(&mut self, key: &'static str, min: i32) -> Option<i32> {
        let (raw, path) = lookup(self.annotations, key, self.path, &mut self.errors)?;
        match raw.trim().parse::<i32>() {
            Ok(v) if v >= min => Some(v),
            _ => {
                self.errors.push(FieldError::invalid(
                    path,
                    raw,
                    format!("must be a whole number at least {min}"),
                ));
                None
            }
        }
    }
    fn duration(&mut self, key: &'static str, min: Duration, max: Duration) -> Option<Duration> {
        let (raw, path) = lookup(self.annotations, key, self.path, &mut self.errors)?;
        match crate::duration::parse(raw) {
            Ok(d) if d < min || d > max => {
                let rule = format!(
                    "must be between {} and {}",
                    crate::duration::format(min),
                    crate::duration::format(max)
                );
                self.errors.push(FieldError::invalid(path, raw, rule));
                None
            }
            Ok(d) if d.subsec_nanos() != 0 => {
                self.errors.push(FieldError::invalid(
                    path,
                    raw,
                    "must be a whole number of seconds",
                ));
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.errors.push(FieldError::invalid(path, raw, e));
                None
            }
        }
    }
    fn error(&mut self, key: &str, raw: impl std::fmt::Display, rule: impl Into<String>) {
        self.errors.push(FieldError::invalid(
            format!("{}.{key}", self.path),
            raw,
            rule,
        ));
    }
}

/// Resolve a revision's scaling settings. `path` is the annotations' field path (for example
/// `spec.template.metadata.annotations`); every invalid annotation is reported against it.
pub fn resolve(
    annotations: &BTreeMap<String, String>,
    container_concurrency: i64,
    config: &AutoscalerConfig,
    path: &str,
) -> Result<RevisionScaling, Vec<FieldError>> {
    let mut p = Parser {
        annotations,
        path,
        errors: Vec::new(),
    };

    if let Some(class) = annotations.get(CLASS)
        && class != KPA_CLASS
    {
        // Ebb's autoscaler is the KPA; accepting the HPA class would silently not scale.
        p.error(CLASS, class, format!("Ebb implements only {KPA_CLASS}"));
    }
    let metric = match annotations.get(METRIC).map(String::as_str) {
        None | Some("concurrency") => Metric::Concurrency,
        Some("rps") => Metric::Rps,
        Some(other) => {
            p.error(METRIC, other, "must be concurrency or rps");
            Metric::Concurrency
        }
    };
    let aggregation = match annotations.get(METRIC_AGGREGATION).map(String::as_str) {
        None | Some("linear") => Aggregation::Linear,
        Some("weightedExponential" | "weighted-exponential") => Aggregation::WeightedExponential,
        Some(other) => {
            p.error(
                METRIC_AGGREGATION,
                other,
                "must be linear or weightedExponential",
            );
            Aggregation::Linear
        }
    };
    let target_annotation = p.float(TARGET, TARGET_MIN, f64::MAX);
    let utilization = p.float(TARGET_UTILIZATION, 1.0, 100.0);
    let tbc = match lookup(annotations, TARGET_BURST_CAPACITY, path, &mut p.errors) {
        None => None,
        Some((raw, field)) => match raw.trim().parse::<f64>() {
            Ok(v) if v >= 0.0 || v == -1.0 => Some(v),
            _ => {
                p.errors.push(FieldError::invalid(
                    field,
                    raw,
                    "must be -1 or a number at least 0",
                ));
                None
            }
        },
    };
    let min_scale = p.int(MIN_SCALE, 0);
    let max_scale = p.int(MAX_SCALE, 0);
    let initial_scale = p.int(INITIAL_SCALE, 0);
    let activation_scale = p.int(ACTIVATION_SCALE, 2);
    let window = p.duration(WINDOW, STABLE_WINDOW_MIN, STABLE_WINDOW_MAX);
    let panic_window = p.float(PANIC_WINDOW_PERCENTAGE, 1.0, 100.0);
    let panic_threshold = p.float(PANIC_THRESHOLD_PERCENTAGE, 110.0, 1000.0);
    let scale_down_delay = p.duration(SCALE_DOWN_DELAY, Duration::ZERO, MAX_DELAY);
    let retention = p.duration(SCALE_TO_ZERO_POD_RETENTION, Duration::ZERO, MAX_DELAY);

    let min = min_scale.unwrap_or(config.min_scale);
    let max = max_scale.unwrap_or(config.max_scale);
    if max > 0 && min > max {
        p.error(MIN_SCALE, min, format!("must be at most max-scale ({max})"));
    }
    if config.max_scale_limit > 0 && (max == 0 || max > config.max_scale_limit) {
        p.error(
            MAX_SCALE,
            max,
            format!(
                "must be between 1 and the cluster's max-scale-limit ({})",
                config.max_scale_limit
            ),
        );
    }
    if initial_scale == Some(0) && !config.allow_zero_initial_scale {
        p.error(
            INITIAL_SCALE,
            0,
            "may be 0 only when allow-zero-initial-scale is true in config-autoscaler",
        );
    }
    if let Some(a) = activation_scale
        && max > 0
        && a > max
    {
        p.error(
            ACTIVATION_SCALE,
            a,
            format!("must be at most max-scale ({max})"),
        );
    }
    if !p.errors.is_empty() {
        return Err(p.errors);
    }

    let target = target_annotation.unwrap_or(match metric {
        Metric::Rps => config.rps_target_default,
        Metric::Concurrency if container_concurrency > 0 => container_concurrency as f64,
        Metric::Concurrency => config.container_concurrency_target_default,
    });
    // A concurrency target above the hard limit could never be reached.
    let target = match metric {
        Metric::Concurrency if container_concurrency > 0 => {
            target.min(container_concurrency as f64)
        }
        _ => target,
    };
    Ok(RevisionScaling {
        metric,
        aggregation,
        target,
        utilization: utilization.unwrap_or(config.container_concurrency_target_percentage) / 100.0,
        target_burst_capacity: tbc.unwrap_or(config.target_burst_capacity),
        min_scale: min,
        max_scale: max,
        initial_scale: initial_scale.unwrap_or(config.initial_scale),
        activation_scale,
        stable_window: window.unwrap_or(config.stable_window),
        panic_window_percentage: panic_window.unwrap_or(config.panic_window_percentage),
        panic_threshold_percentage: panic_threshold.unwrap_or(config.panic_threshold_percentage),
        scale_down_delay: scale_down_delay.unwrap_or(config.scale_down_delay),
        scale_to_zero_pod_retention: retention.unwrap_or(config.scale_to_zero_pod_retention_period),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn resolve_with(pairs: &[(&str, &str)], cc: i64) -> Result<RevisionScaling, Vec<FieldError>> {
        resolve(
            &annotations(pairs),
            cc,
            &AutoscalerConfig::default(),
            "metadata.annotations",
        )
    }

    #[test]
    fn defaults_follow_config_and_cc() {
        let s = resolve_with(&[], 0).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            (
                s.target,
                s.utilization,
                s.min_scale,
                s.max_scale,
                s.initial_scale
            ),
            (100.0, 0.7, 0, 0, 1)
        );
        assert!((s.effective_target() - 70.0).abs() < 1e-9);
        assert_eq!(s.panic_window(), Duration::from_secs(6));
        assert_eq!(resolve_with(&[], 10).map(|s| s.target), Ok(10.0));
        assert_eq!(
            resolve_with(&[(TARGET, "50")], 10).map(|s| s.target),
            Ok(10.0)
        );
        assert_eq!(
            resolve_with(&[(TARGET, "5")], 10).map(|s| s.target),
            Ok(5.0)
        );
        assert_eq!(
            resolve_with(&[(METRIC, "rps")], 0).map(|s| (s.metric, s.target)),
            Ok((Metric::Rps, 200.0))
        );
    }

    #[test]
    fn aliases_are_read() {
        let s = resolve_with(
            &[
                ("autoscaling.knative.dev/minScale", "2"),
                ("autoscaling.knative.dev/maxScale", "5"),
            ],
            0,
        );
        assert_eq!(s.map(|s| (s.min_scale, s.max_scale)), Ok((2, 5)));
    }

    /// Each row: annotations, the field path and a fragment of the rule that must be reported.
    #[test]
    fn invalid_annotations_name_the_key_and_rule() {
        type Row<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
        let rows: &[Row] = &[
            (&[(CLASS, "hpa.autoscaling.knative.dev")], CLASS, "only kpa"),
            (&[(METRIC, "cpu")], METRIC, "concurrency or rps"),
            (
                &[(METRIC_AGGREGATION, "median")],
                METRIC_AGGREGATION,
                "linear or weightedExponential",
            ),
            (&[(TARGET, "0")], TARGET, "between 0.01"),
            (&[(TARGET, "x")], TARGET, "must be a number"),
            (
                &[(TARGET_UTILIZATION, "0")],
                TARGET_UTILIZATION,
                "between 1 and 100",
            ),
            (
                &[(TARGET_UTILIZATION, "101")],
                TARGET_UTILIZATION,
                "between 1 and 100",
            ),
            (
                &[(TARGET_BURST_CAPACITY, "-2")],
                TARGET_BURST_CAPACITY,
                "-1 or a number",
            ),
            (&[(MIN_SCALE, "-1")], MIN_SCALE, "at least 0"),
            (&[(MAX_SCALE, "1.5")], MAX_SCALE, "whole number"),
            (
                &[(MIN_SCALE, "5"), (MAX_SCALE, "3")],
                MIN_SCALE,
                "at most max-scale (3)",
            ),
            (
                &[(INITIAL_SCALE, "0")],
                INITIAL_SCALE,
                "allow-zero-initial-scale",
            ),
            (&[(ACTIVATION_SCALE, "1")], ACTIVATION_SCALE, "at least 2"),
            (
                &[(ACTIVATION_SCALE, "5"), (MAX_SCALE, "3")],
                ACTIVATION_SCALE,
                "at most max-scale",
            ),
            (&[(WINDOW, "5s")], WINDOW, "between 6s and 1h0m0s"),
            (&[(WINDOW, "61m")], WINDOW, "between 6s and 1h0m0s"),
            (&[(WINDOW, "6500ms")], WINDOW, "whole number of seconds"),
            (&[(WINDOW, "soon")], WINDOW, "not a duration"),
            (
                &[(PANIC_WINDOW_PERCENTAGE, "0.5")],
                PANIC_WINDOW_PERCENTAGE,
                "between 1 and 100",
            ),
            (
                &[(PANIC_THRESHOLD_PERCENTAGE, "105")],
                PANIC_THRESHOLD_PERCENTAGE,
                "between 110 and 1000",
            ),
            (
                &[(PANIC_THRESHOLD_PERCENTAGE, "1001")],
                PANIC_THRESHOLD_PERCENTAGE,
                "between 110 and 1000",
            ),
            (
                &[(SCALE_DOWN_DELAY, "2h")],
                SCALE_DOWN_DELAY,
                "between 0s and 1h0m0s",
            ),
            (
                &[(SCALE_TO_ZERO_POD_RETENTION, "2h")],
                SCALE_TO_ZERO_POD_RETENTION,
                "between 0s and 1h0m0s",
            ),
            (
                &[(MIN_SCALE, "1"), ("autoscaling.knative.dev/minScale", "1")],
                MIN_SCALE,
                "set only one",
            ),
        ];
        for (pairs, key, rule) in rows {
            let errors = resolve_with(pairs, 0).err().unwrap_or_default();
            assert_eq!(errors.len(), 1, "{pairs:?}: {errors:?}");
            assert_eq!(
                errors[0].path,
                format!("metadata.annotations.{key}"),
                "{pairs:?}"
            );
            assert!(
                errors[0].message.contains(rule),
                "{pairs:?}: {}",
                errors[0].message
            );
        }
    }

    #[test]
    fn max_scale_limit_applies() {
        let config = AutoscalerConfig {
            max_scale_limit: 10,
            max_scale: 5,
            ..AutoscalerConfig::default()
        };
        let over = annotations(&[(MAX_SCALE, "11")]);
        assert!(resolve(&over, 0, &config, "a").is_err());
        let unbounded = annotations(&[(MAX_SCALE, "0")]);
        assert!(resolve(&unbounded, 0, &config, "a").is_err());
        assert!(resolve(&BTreeMap::new(), 0, &config, "a").is_ok());
    }

    #[test]
    fn all_errors_reported_together() {
        let errors = resolve_with(&[(TARGET, "0"), (WINDOW, "1s"), (METRIC, "cpu")], 0)
            .err()
            .unwrap_or_default();
        assert_eq!(errors.len(), 3, "{errors:?}");
    }
}
