//! Prometheus metrics per revision: what the autoscaler saw and decided.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::time::Duration;

use crate::collector::RevisionKey;
use crate::scaling::Decision;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RevisionLabels {
    pub namespace_name: String,
    pub revision_name: String,
}

impl From<&RevisionKey> for RevisionLabels {
    fn from(k: &RevisionKey) -> Self {
        RevisionLabels {
            namespace_name: k.namespace.clone(),
            revision_name: k.name.clone(),
        }
    }
}

type IntGauge = Gauge<i64, AtomicI64>;
type FloatGauge = Gauge<f64, AtomicU64>;

#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    desired: Family<RevisionLabels, IntGauge>,
    ready: Family<RevisionLabels, IntGauge>,
    stable: Family<RevisionLabels, FloatGauge>,
    panic: Family<RevisionLabels, FloatGauge>,
    panic_mode: Family<RevisionLabels, IntGauge>,
    excess_burst_capacity: Family<RevisionLabels, FloatGauge>,
    decision_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            desired: Family::default(),
            ready: Family::default(),
            stable: Family::default(),
            panic: Family::default(),
            panic_mode: Family::default(),
            excess_burst_capacity: Family::default(),
            // 1 µs .. ~16 ms: a decision is pure arithmetic over at most an hour of buckets.
            decision_seconds: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(1e-6, 2.0, 15),
            ),
            registry: Registry::default(),
        };
        registry.register(
            "autoscaler_desired_pods",
            "Instances the autoscaler wants",
            m.desired.clone(),
        );
        registry.register(
            "autoscaler_ready_pods",
            "Instances ready when the decision was made",
            m.ready.clone(),
        );
        registry.register(
            "autoscaler_stable_request_concurrency",
            "Load averaged over the stable window",
            m.stable.clone(),
        );
        registry.register(
            "autoscaler_panic_request_concurrency",
            "Load averaged over the panic window",
            m.panic.clone(),
        );
        registry.register(
            "autoscaler_panic_mode",
            "1 while the revision is in panic mode",
            m.panic_mode.clone(),
        );
        registry.register(
            "autoscaler_excess_burst_capacity",
            "Spare capacity beyond target-burst-capacity",
            m.excess_burst_capacity.clone(),
        );
        registry.register(
            "autoscaler_decision_seconds",
            "Time to make one decision",
            m.decision_seconds.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    pub fn record(&self, key: &RevisionKey, d: &Decision, took: Duration) {
        let l = RevisionLabels::from(key);
        self.desired.get_or_create(&l).set(i64::from(d.desired));
        self.ready
            .get_or_create(&l)
            .set(i64::from(d.observed.ready));
        self.stable.get_or_create(&l).set(d.observed.stable);
        self.panic.get_or_create(&l).set(d.observed.panic);
        self.panic_mode
            .get_or_create(&l)
            .set(i64::from(d.panicking));
        self.excess_burst_capacity
            .get_or_create(&l)
            .set(d.excess_burst_capacity);
        self.decision_seconds.observe(took.as_secs_f64());
    }

    /// Drop a deleted revision's series.
    pub fn forget(&self, key: &RevisionKey) {
        let l = RevisionLabels::from(key);
        for f in [&self.desired, &self.ready, &self.panic_mode] {
            f.remove(&l);
        }
        for f in [&self.stable, &self.panic, &self.excess_burst_capacity] {
            f.remove(&l);
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scaling::Observed;

    #[test]
    fn per_revision_series() {
        let m = Metrics::default();
        let k = RevisionKey::new("default", "hello-00001");
        let d = Decision {
            desired: 3,
            panicking: true,
            observed: Observed {
                stable: 150.0,
                panic: 400.0,
                ready: 2,
            },
            excess_burst_capacity: -11.0,
        };
        m.record(&k, &d, Duration::from_micros(3));
        let text = m.encode();
        for want in [
            "autoscaler_desired_pods{namespace_name=\"default\",revision_name=\"hello-00001\"} 3",
            "autoscaler_ready_pods{namespace_name=\"default\",revision_name=\"hello-00001\"} 2",
            "autoscaler_panic_mode{namespace_name=\"default\",revision_name=\"hello-00001\"} 1",
            "autoscaler_stable_request_concurrency{namespace_name=\"default\",revision_name=\"hello-00001\"} 150",
            "autoscaler_decision_seconds_count 1",
        ] {
            assert!(text.contains(want), "missing {want}\n{text}");
        }
        m.forget(&k);
        assert!(!m.encode().contains("hello-00001"));
    }
}
