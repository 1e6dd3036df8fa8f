//! What Ebb's data-plane components say to each other.
//!
//! - Header names shared by the activator, the queue-proxy and probes.
//! - [`Stat`]: one instance's load over one reporting window, which the queue-proxy serves on
//!   its stats port and the autoscaler scrapes (see [`STATS_PATH`]).
//!
//! Why scrape and not push: only the autoscaler leader scrapes, so no stat ever has to be
//! forwarded between autoscaler replicas; a queue-proxy needs no autoscaler address, retries
//! or buffering, and keeps working unchanged when the autoscaler restarts; and large revisions
//! can be sampled instead of flooding the autoscaler (Knative scrapes for the same reasons).
//! The activator, which must wake revisions at once, pushes instead (the poke).

use serde::{Deserialize, Serialize};

/// Set by the activator on requests it forwards (value [`PROXY_BY_ACTIVATOR`]), so that the
/// queue-proxy reports them separately and the autoscaler does not count them twice.
pub const HEADER_PROXY: &str = "k-proxy-request";
pub const PROXY_BY_ACTIVATOR: &str = "activator";
/// Probe header: `K-Network-Probe: queue` asks the queue-proxy whether the instance is ready.
pub const HEADER_NETWORK_PROBE: &str = "k-network-probe";
pub const PROBE_QUEUE: &str = "queue";
/// Sent by the queue-proxy on the probes it makes to the user container.
pub const HEADER_KUBELET_PROBE: &str = "k-kubelet-probe";
/// Internal routing headers. A client may not choose a revision: the gateway strips these
/// from incoming requests and the queue-proxy removes them before the app sees the request.
pub const HEADER_REVISION: &str = "knative-serving-revision";
pub const HEADER_NAMESPACE: &str = "knative-serving-namespace";
/// Selects a tag's revision on a route's main host.
pub const HEADER_TAG: &str = "knative-serving-tag";

/// Headers that describe one hop's connection and are never forwarded (RFC 9110 §7.6.1), by
/// the queue-proxy or the activator.
pub const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// The `response_code_class` label both proxies put on their request metrics. A request that
/// got no status at all (0: the connection died) counts as a server-side failure.
pub fn response_code_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Path on the queue-proxy's stats port that returns the latest [`Stat`] as JSON.
pub const STATS_PATH: &str = "/stats";

/// Load of one instance over one window (normally 1 s).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stat {
    /// The instance (pod name in Kubernetes, instance id in local mode).
    pub pod_name: String,
    /// Time-weighted average of in-flight requests over the window, all requests.
    pub average_concurrency: f64,
    /// The same, for requests that came through the activator only.
    pub average_proxied_concurrency: f64,
    /// Requests that arrived during the window, all.
    pub request_count: f64,
    /// Requests that arrived during the window through the activator.
    pub proxied_request_count: f64,
    /// Seconds since the queue-proxy started.
    pub process_uptime: f64,
    /// Length of the window, seconds.
    pub window: f64,
    /// Sequence number of the window, so a scraper can tell a new report from a repeated one.
    pub seq: u64,
}

impl Stat {
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of numbers and a string always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_round_trips() {
        let s = Stat {
            pod_name: "hello-00001-abc".into(),
            average_concurrency: 1.5,
            request_count: 3.0,
            seq: 7,
            window: 1.0,
            ..Stat::default()
        };
        assert_eq!(Stat::from_json(&s.to_json()).ok(), Some(s));
        assert!(Stat::from_json(b"{\"podName\": 3}").is_err());
    }
}
