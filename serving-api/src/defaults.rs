//! Defaulting, as Knative's webhook does it before validation: what config-defaults supplies,
//! container names, the default readiness probe, and 100% to the latest revision when `traffic`
//! is omitted.

use k8s_openapi::api::core::v1::{Probe, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::config::DefaultsConfig;
use crate::route::TrafficTarget;
use crate::{Configuration, Revision, RevisionSpec, Route, Service};

pub fn default_service(svc: &mut Service, cfg: &DefaultsConfig) {
    default_revision_spec(&mut svc.spec.configuration.template.spec, cfg);
    let traffic = &mut svc.spec.route.traffic;
    if traffic.is_empty() {
        traffic.push(TrafficTarget {
            latest_revision: Some(true),
            percent: Some(100),
            ..TrafficTarget::default()
        });
    }
    default_traffic(traffic);
}

pub fn default_configuration(c: &mut Configuration, cfg: &DefaultsConfig) {
    default_revision_spec(&mut c.spec.template.spec, cfg);
}

pub fn default_revision(r: &mut Revision, cfg: &DefaultsConfig) {
    default_revision_spec(&mut r.spec, cfg);
}

pub fn default_route(r: &mut Route) {
    default_traffic(&mut r.spec.traffic);
}

/// A target without `latestRevision` follows the latest unless it names a revision; a single
/// target without a percent takes all the traffic (both as Knative does).
fn default_traffic(traffic: &mut [TrafficTarget]) {
    for t in traffic.iter_mut() {
        if t.latest_revision.is_none() {
            t.latest_revision = Some(t.revision_name.is_none());
        }
    }
    if let [only] = traffic
        && only.percent.is_none()
    {
        only.percent = Some(100);
    }
}

pub fn default_revision_spec(spec: &mut RevisionSpec, cfg: &DefaultsConfig) {
    spec.container_concurrency
        .get_or_insert(cfg.container_concurrency);
    let timeout = *spec
        .timeout_seconds
        .get_or_insert(cfg.revision_timeout_seconds);
    spec.response_start_timeout_seconds.get_or_insert(
        cfg.revision_response_start_timeout_seconds
            .unwrap_or(timeout)
            .min(timeout),
    );
    spec.idle_timeout_seconds
        .get_or_insert(cfg.revision_idle_timeout_seconds);
    if spec.pod.enable_service_links.is_none() {
        spec.pod.enable_service_links = Some(cfg.enable_service_links);
    }

    let serving = spec.serving_container_index();
    let several = spec.pod.containers.len() > 1;
    for (i, c) in spec.pod.containers.iter_mut().enumerate() {
        if c.name.is_empty() {
            c.name = if several {
                format!("{}-{i}", cfg.container_name_template)
            } else {
                cfg.container_name_template.clone()
            };
        }
        if Some(i) == serving && c.readiness_probe.is_none() {
            // Port 0 means "the user port": the queue-proxy resolves it. No period means
            // aggressive probing at startup, which is what makes cold starts fast.
            c.readiness_probe = Some(Probe {
                tcp_socket: Some(TCPSocketAction {
                    port: IntOrString::Int(0),
                    host: None,
                }),
                success_threshold: Some(1),
                ..Probe::default()
            });
        } else if Some(i) == serving
            && let Some(p) = c.readiness_probe.as_mut()
        {
            p.success_threshold.get_or_insert(1);
        }
        if let Some(requests) = resource_defaults(cfg) {
            let res = c.resources.get_or_insert_with(Default::default);
            for (kind, (req, lim)) in requests {
                if let Some(v) = req {
                    res.requests
                        .get_or_insert_with(Default::default)
                        .entry(kind.to_string())
                        .or_insert(v);
                }
                if let Some(v) = lim {
                    res.limits
                        .get_or_insert_with(Default::default)
                        .entry(kind.to_string())
                        .or_insert(v);
                }
            }
        }
    }
}

/// Per resource kind: the default request and limit.
type ResourceDefaults = Vec<(&'static str, (Option<Quantity>, Option<Quantity>))>;

fn resource_defaults(cfg: &DefaultsConfig) -> Option<ResourceDefaults> {
    let q = |v: &Option<String>| v.clone().map(Quantity);
    let rows = vec![
        (
            "cpu",
            (q(&cfg.revision_cpu_request), q(&cfg.revision_cpu_limit)),
        ),
        (
            "memory",
            (
                q(&cfg.revision_memory_request),
                q(&cfg.revision_memory_limit),
            ),
        ),
        (
            "ephemeral-storage",
            (
                q(&cfg.revision_ephemeral_storage_request),
                q(&cfg.revision_ephemeral_storage_limit),
            ),
        ),
    ];
    rows.iter()
        .any(|(_, (r, l))| r.is_some() || l.is_some())
        .then_some(rows)
}
