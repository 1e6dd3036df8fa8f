//! Invariants of the KPA decision over arbitrary load and instance sequences.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on broken fixtures

use std::collections::BTreeMap;
use std::time::Duration;

use autoscaler::{ClusterScaling, Decider, Observed};
use proptest::prelude::*;
use serving_api::config::AutoscalerConfig;

proptest! {
    #[test]
    fn decisions_stay_within_bounds(
        min in 0i32..5,
        extra in 0i32..20,
        unbounded in any::<bool>(),
        activation in proptest::option::of(2i32..4),
        steps in proptest::collection::vec((0.0f64..5000.0, 0.0f64..5000.0, 0u32..60), 1..120),
    ) {
        let max = if unbounded { 0 } else { min + extra + 4 };
        let mut a = BTreeMap::new();
        a.insert("autoscaling.knative.dev/min-scale".to_string(), min.to_string());
        a.insert("autoscaling.knative.dev/max-scale".to_string(), max.to_string());
        if let Some(act) = activation {
            a.insert("autoscaling.knative.dev/activation-scale".to_string(), act.to_string());
        }
        let cfg = AutoscalerConfig::default();
        let scaling = serving_api::autoscaling::resolve(&a, 0, &cfg, "a").unwrap();
        let initial = scaling.initial_scale;
        let mut d = Decider::new(scaling, ClusterScaling::from(&cfg), Duration::ZERO, 1);
        for (i, (stable, panic, ready)) in steps.into_iter().enumerate() {
            let now = Duration::from_secs(2 * i as u64 + 2);
            let out = d.decide(now, Observed { stable, panic, ready }).desired;
            let r = f64::from(ready.max(1));
            prop_assert!(out >= 0);
            prop_assert!(out >= min, "below min-scale: {out} < {min}");
            if max > 0 {
                prop_assert!(out <= max, "above max-scale: {out} > {max}");
            }
            let up_bound = ((cfg.max_scale_up_rate * r).ceil() as i32).max(min).max(initial).max(activation.unwrap_or(0));
            prop_assert!(out <= up_bound, "faster than max-scale-up-rate: {out} from {ready} ready");
            let down_bound = (r / cfg.max_scale_down_rate).floor() as i32;
            let capped = max > 0 && out == max;
            prop_assert!(out >= down_bound || capped, "faster than max-scale-down-rate: {out} from {ready} ready");
            if out == 0 {
                prop_assert!(ready <= 1, "zero only from the last instance");
            }
        }
    }
}
