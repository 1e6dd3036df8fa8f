//! `config-deployment`: how a Revision's Kubernetes workload is built.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{ConfigErrors, Reader};

pub const NAME: &str = "config-deployment";
/// The image the chart builds and loads; overridden per install.
pub const DEFAULT_QUEUE_IMAGE: &str = "localhost/ebb/queue-proxy:0.1.0";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeploymentConfig {
    /// `queue-sidecar-image`: the queue-proxy image injected into every Revision's pods.
    pub queue_sidecar_image: String,
    /// `progress-deadline`: a Revision whose pods are not available by then fails with
    /// `ProgressDeadlineExceeded`.
    pub progress_deadline: Duration,
    /// `queue-sidecar-cpu-request` and friends: the sidecar's resources (empty: none).
    pub queue_sidecar_cpu_request: Option<String>,
    pub queue_sidecar_cpu_limit: Option<String>,
    pub queue_sidecar_memory_request: Option<String>,
    pub queue_sidecar_memory_limit: Option<String>,
}

impl Default for DeploymentConfig {
    fn default() -> Self {
        DeploymentConfig {
            queue_sidecar_image: DEFAULT_QUEUE_IMAGE.into(),
            progress_deadline: Duration::from_secs(600),
            // Knative's default request: the sidecar is light, but a zero request lets the
            // scheduler pack pods so tightly that the proxy is starved.
            queue_sidecar_cpu_request: Some("25m".into()),
            queue_sidecar_cpu_limit: None,
            queue_sidecar_memory_request: None,
            queue_sidecar_memory_limit: None,
        }
    }
}

impl DeploymentConfig {
    pub fn from_map(data: &BTreeMap<String, String>) -> Result<Self, ConfigErrors> {
        let mut c = DeploymentConfig::default();
        let mut r = Reader::new(NAME, data);
        r.string("queue-sidecar-image", &mut c.queue_sidecar_image);
        if c.queue_sidecar_image.is_empty() {
            r.error("queue-sidecar-image", "", "must name an image");
        }
        r.duration(
            "progress-deadline",
            &mut c.progress_deadline,
            Duration::from_secs(1),
            Duration::from_secs(24 * 3600),
        );
        let quantity = |r: &Reader<'_>, key: &str, default: Option<String>| match r.raw(key) {
            Some("") => None,
            Some(v) => Some(v.to_string()),
            None => default,
        };
        c.queue_sidecar_cpu_request = quantity(
            &r,
            "queue-sidecar-cpu-request",
            c.queue_sidecar_cpu_request.clone(),
        );
        c.queue_sidecar_cpu_limit = quantity(&r, "queue-sidecar-cpu-limit", None);
        c.queue_sidecar_memory_request = quantity(&r, "queue-sidecar-memory-request", None);
        c.queue_sidecar_memory_limit = quantity(&r, "queue-sidecar-memory-limit", None);
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
            DeploymentConfig::from_map(&map(&[])),
            Ok(DeploymentConfig::default())
        );
    }

    #[test]
    fn bad_values() {
        let err = DeploymentConfig::from_map(&map(&[
            ("queue-sidecar-image", ""),
            ("progress-deadline", "0s"),
        ]));
        assert_eq!(err.map_err(|e| e.0.len()), Err(2));
    }
}
