//! Prometheus metrics of the gateway, and the per-revision concurrency it reports to the
//! autoscaler.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::revisions::Revisions;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub namespace_name: String,
    pub route_name: String,
    pub revision_name: String,
    pub response_code_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RevisionLabels {
    pub namespace_name: String,
    pub revision_name: String,
}

type IntGauge = Gauge<i64, AtomicI64>;

/// Per revision since the last report: (sum of demand samples, number of samples).
type Demand = (f64, u32);

fn latency_buckets() -> Histogram {
    // 100 µs .. ~52 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RevisionLabels, Histogram, fn() -> Histogram>,
    wait: Family<RevisionLabels, Histogram, fn() -> Histogram>,
    queued: Family<RevisionLabels, IntGauge>,
    endpoints: Family<RevisionLabels, IntGauge>,
    in_flight: Family<RevisionLabels, IntGauge>,
    /// Concurrency samples per revision since the last report: (sum, count, arrivals).
    samples: Mutex<HashMap<(String, String), Demand>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RevisionLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_buckets,
        );
        let wait = Family::<RevisionLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_buckets,
        );
        let queued = Family::<RevisionLabels, IntGauge>::default();
        let endpoints = Family::<RevisionLabels, IntGauge>::default();
        let in_flight = Family::<RevisionLabels, IntGauge>::default();
        registry.register(
            "activator_request_count",
            "Requests by route, revision and response code class",
            requests.clone(),
        );
        registry.register(
            "activator_request_latencies_seconds",
            "Time from arrival to the end of the response",
            latency.clone(),
        );
        registry.register(
            "activator_endpoint_wait_seconds",
            "Time requests waited for an instance (the cold-start wait when at zero)",
            wait.clone(),
        );
        registry.register(
            "activator_queue_depth",
            "Requests waiting for an instance",
            queued.clone(),
        );
        registry.register(
            "activator_endpoints",
            "Ready instances the gateway can use",
            endpoints.clone(),
        );
        registry.register(
            "activator_in_flight_requests",
            "Requests at instances now",
            in_flight.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            wait,
            queued,
            endpoints,
            in_flight,
            samples: Mutex::default(),
        }
    }
}

impl Metrics {
    pub fn request(
        &self,
        namespace: &str,
        route: &str,
        revision: &str,
        status: u16,
        took: Duration,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                namespace_name: namespace.into(),
                route_name: route.into(),
                revision_name: revision.into(),
                response_code_class: wire::response_code_class(status),
            })
            .inc();
        let r = RevisionLabels {
            namespace_name: namespace.into(),
            revision_name: revision.into(),
        };
        self.latency.get_or_create(&r).observe(took.as_secs_f64());
    }

    pub fn waited(&self, namespace: &str, revision: &str, waited: Duration) {
        let r = RevisionLabels {
            namespace_name: namespace.into(),
            revision_name: revision.into(),
        };
        self.wait.get_or_create(&r).observe(waited.as_secs_f64());
    }

    /// Take one sample of every revision's demand (in flight + queued); call it often (e.g.
    /// every 100 ms) so that the per-second report is an average, not a snapshot.
    pub fn sample(&self, revisions: &Revisions) {
        let Ok(mut s) = self.samples.lock() else {
            return;
        };
        for r in revisions.all() {
            let demand = (r.throttler.in_flight() + r.throttler.queued()) as f64;
            let e = s.entry((r.namespace.clone(), r.name.clone())).or_default();
            e.0 += demand;
            e.1 += 1;
        }
    }

    /// The stats the activator reports to the autoscaler for the last window, one per revision
    /// with any demand; the window restarts.
    pub fn report(
        &self,
        revisions: &Revisions,
        pod: &str,
        window: Duration,
    ) -> Vec<(String, String, wire::Stat)> {
        let Ok(mut s) = self.samples.lock() else {
            return Vec::new();
        };
        let mut busy: HashMap<(String, String), f64> = HashMap::new();
        let mut arrivals: HashMap<(String, String), u64> = revisions
            .all()
            .iter()
            .map(|r| {
                let key = (r.namespace.clone(), r.name.clone());
                busy.insert(key.clone(), r.throttler.take_busy().as_secs_f64());
                (
                    key,
                    r.arrivals.swap(0, std::sync::atomic::Ordering::Relaxed),
                )
            })
            .collect();
        for key in arrivals.keys() {
            s.entry(key.clone()).or_default();
        }
        s.drain()
            .map(|(key, (sum, n))| {
                let a = arrivals.remove(&key).unwrap_or(0);
                (key, (sum, n, a))
            })
            .filter(|(_, (sum, _, arrivals))| *sum > 0.0 || *arrivals > 0)
            .map(|((ns, rev), (sum, n, arrivals))| {
                let sampled = if n > 0 { sum / f64::from(n) } else { 0.0 };
                // Requests shorter than the sampling interval still count: the time they
                // spent at instances, over the window (Knative's concurrency is
                // time-weighted).
                let finished = busy.get(&(ns.clone(), rev.clone())).copied().unwrap_or(0.0)
                    / window.as_secs_f64().max(f64::EPSILON);
                let stat = wire::Stat {
                    pod_name: pod.to_string(),
                    average_concurrency: sampled.max(finished),
                    request_count: arrivals as f64,
                    window: window.as_secs_f64(),
                    ..wire::Stat::default()
                };
                (ns, rev, stat)
            })
            .collect()
    }

    /// Prometheus text, with the per-revision gauges refreshed.
    pub fn encode(&self, revisions: &Revisions) -> String {
        for r in revisions.all() {
            let l = RevisionLabels {
                namespace_name: r.namespace.clone(),
                revision_name: r.name.clone(),
            };
            self.queued
                .get_or_create(&l)
                .set(r.throttler.queued() as i64);
            self.endpoints
                .get_or_create(&l)
                .set(r.throttler.endpoints() as i64);
            self.in_flight
                .get_or_create(&l)
                .set(r.throttler.in_flight() as i64);
        }
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::throttler::Limits;

    /// A request that begins and ends between two samples still shows as activity: its time
    /// at the instance over the window (else a revision serving only short requests would be
    /// scaled to zero as if idle).
    #[tokio::test]
    async fn short_requests_count_as_concurrency() {
        let revisions = Revisions::new(Limits::default());
        let r = revisions.get("default", "quick-00001");
        r.throttler
            .set_endpoints(&["127.0.0.1:1".parse().unwrap_or_else(|e| panic!("{e}"))]);
        let m = Metrics::default();
        m.sample(&revisions);
        r.arrivals
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let lease = r
            .throttler
            .acquire(0)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(lease);
        m.sample(&revisions);
        let report = m.report(&revisions, "gw", Duration::from_secs(1));
        let c = report
            .first()
            .map_or(0.0, |(_, _, s)| s.average_concurrency);
        assert!((0.009..0.5).contains(&c), "{c}");
        // Reported once.
        m.sample(&revisions);
        assert!(
            m.report(&revisions, "gw", Duration::from_secs(1))
                .is_empty()
        );
    }

    #[tokio::test]
    async fn reports_average_demand_and_arrivals() {
        let revisions = Revisions::new(Limits::default());
        let r = revisions.get("default", "hello-00001");
        r.throttler
            .set_endpoints(&["127.0.0.1:1".parse().unwrap_or_else(|e| panic!("{e}"))]);
        let m = Metrics::default();
        r.arrivals
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        m.sample(&revisions); // 0 in flight
        let lease = r
            .throttler
            .acquire(0)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        r.arrivals
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        m.sample(&revisions); // 1
        m.sample(&revisions); // 1
        drop(lease);
        m.sample(&revisions); // 0
        let report = m.report(&revisions, "activator-0", Duration::from_secs(1));
        assert_eq!(report.len(), 1);
        let (ns, rev, stat) = &report[0];
        assert_eq!((ns.as_str(), rev.as_str()), ("default", "hello-00001"));
        assert!((stat.average_concurrency - 0.5).abs() < 1e-9, "{stat:?}");
        assert_eq!(stat.request_count, 2.0);
        assert!(
            m.report(&revisions, "activator-0", Duration::from_secs(1))
                .is_empty(),
            "the window restarted"
        );
        m.request(
            "default",
            "hello",
            "hello-00001",
            200,
            Duration::from_millis(3),
        );
        m.waited("default", "hello-00001", Duration::from_millis(40));
        let text = m.encode(&revisions);
        for want in [
            "activator_request_count_total{namespace_name=\"default\",route_name=\"hello\",revision_name=\"hello-00001\",response_code_class=\"2xx\"} 1",
            "activator_endpoint_wait_seconds_count{namespace_name=\"default\",revision_name=\"hello-00001\"} 1",
            "activator_endpoints{namespace_name=\"default\",revision_name=\"hello-00001\"} 1",
            "activator_queue_depth{",
        ] {
            assert!(text.contains(want), "missing {want}\n{text}");
        }
    }
}
