//! Prometheus metrics users know from Knative's queue-proxy, on the user-metrics port.
//!
//! prometheus-client follows OpenMetrics, which appends `_total` to counters: Knative's
//! `revision_request_count` is exposed as `revision_request_count_total`.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::config::Config;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub response_code_class: &'static str,
}

/// Latency buckets in milliseconds (Knative's, from 5 ms to 10 min).
const BUCKETS_MS: [f64; 18] = [
    5.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0, 150.0, 200.0, 250.0, 300.0, 350.0, 400.0, 450.0,
    500.0, 1000.0, 5000.0, 600000.0,
];

#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub requests: Family<CodeLabels, Counter>,
    pub latencies: Family<CodeLabels, Histogram>,
    pub app_requests: Family<CodeLabels, Counter>,
    pub app_latencies: Family<CodeLabels, Histogram>,
    pub queue_depth: Gauge<i64, std::sync::atomic::AtomicI64>,
    pub in_flight: Gauge<i64, std::sync::atomic::AtomicI64>,
    pub ready: Gauge<i64, std::sync::atomic::AtomicI64>,
}

fn histogram() -> Histogram {
    Histogram::new(BUCKETS_MS)
}

impl Metrics {
    pub fn new(cfg: &Config) -> Self {
        let mut registry = Registry::with_labels(
            [
                ("namespace_name".into(), cfg.namespace.clone().into()),
                ("service_name".into(), cfg.service.clone().into()),
                (
                    "configuration_name".into(),
                    cfg.configuration.clone().into(),
                ),
                ("revision_name".into(), cfg.revision.clone().into()),
                ("pod_name".into(), cfg.pod.clone().into()),
            ]
            .into_iter(),
        );
        let requests = Family::<CodeLabels, Counter>::default();
        let latencies =
            Family::<CodeLabels, Histogram>::new_with_constructor(histogram as fn() -> Histogram);
        let app_requests = Family::<CodeLabels, Counter>::default();
        let app_latencies =
            Family::<CodeLabels, Histogram>::new_with_constructor(histogram as fn() -> Histogram);
        let queue_depth = Gauge::default();
        let in_flight = Gauge::default();
        let ready = Gauge::default();
        registry.register(
            "revision_request_count",
            "Requests served, by response code class",
            requests.clone(),
        );
        registry.register(
            "revision_request_latencies",
            "Time from arrival to the end of the response, ms",
            latencies.clone(),
        );
        registry.register(
            "revision_app_request_count",
            "Requests that reached the app, by response code class",
            app_requests.clone(),
        );
        registry.register(
            "revision_app_request_latencies",
            "Time the app took to respond, ms",
            app_latencies.clone(),
        );
        registry.register(
            "revision_queue_depth",
            "Requests waiting for a concurrency slot",
            queue_depth.clone(),
        );
        registry.register(
            "revision_in_flight_requests",
            "Requests being handled now, queued ones included",
            in_flight.clone(),
        );
        registry.register(
            "revision_ready",
            "1 when the app passes its readiness probe and the proxy is not draining",
            ready.clone(),
        );
        Metrics {
            registry,
            requests,
            latencies,
            app_requests,
            app_latencies,
            queue_depth,
            in_flight,
            ready,
        }
    }

    pub fn record(&self, status: u16, total: Duration, app: Option<Duration>) {
        let labels = CodeLabels {
            response_code_class: wire::response_code_class(status),
        };
        self.requests.get_or_create(&labels).inc();
        self.latencies
            .get_or_create(&labels)
            .observe(total.as_secs_f64() * 1000.0);
        if let Some(app) = app {
            self.app_requests.get_or_create(&labels).inc();
            self.app_latencies
                .get_or_create(&labels)
                .observe(app.as_secs_f64() * 1000.0);
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
