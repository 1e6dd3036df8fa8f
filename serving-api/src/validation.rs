//! Validation of Services, Configurations, Revisions and Routes.
//!
//! Every rule of Knative's v1 API that the objects alone can decide. All errors are collected
//! and returned together, each naming its field path (`spec.traffic[1].percent`) and the rule.
//! Validation expects defaulted objects (see `defaults`), as Knative's webhook does.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::config::{AutoscalerConfig, DefaultsConfig, NetworkConfig};
use crate::configuration::RevisionTemplateSpec;
use crate::naming::{self, MAX_NAME_LEN};
use crate::revision::RevisionSpec;
use crate::route::TrafficTarget;
use crate::{Configuration, Revision, Route, Service};

/// One violated rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the offending field, e.g. `spec.template.spec.containers[0].image`.
    pub path: String,
    /// The rule, with the offending value where it helps.
    pub message: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            path: path.into(),
            message: message.into(),
        }
    }
    /// `invalid value "x": rule`.
    pub fn invalid(
        path: impl Into<String>,
        value: impl fmt::Display,
        rule: impl Into<String>,
    ) -> Self {
        FieldError {
            path: path.into(),
            message: format!("invalid value {:?}: {}", value.to_string(), rule.into()),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every violated rule of one object.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl ValidationErrors {
    pub fn paths(&self) -> Vec<&str> {
        self.0.iter().map(|e| e.path.as_str()).collect()
    }
}

/// The configuration validation depends on.
#[derive(Clone, Debug, Default)]
pub struct ValidationConfig {
    pub defaults: DefaultsConfig,
    pub autoscaler: AutoscalerConfig,
    pub network: NetworkConfig,
    /// `config-features`: the PodSpec fields Knative gates behind flags.
    pub features: crate::config::FeaturesConfig,
}

/// Ports the queue-proxy owns inside every instance (serving, h2c, admin, stats, user metrics).
pub const RESERVED_PORTS: [i32; 5] = [8012, 8013, 8022, 9090, 9091];
/// Environment variables the runtime contract sets; users may not set them.
pub const RESERVED_ENV: [&str; 4] = ["PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"];
/// Paths the platform mounts or needs; volumes may not be mounted there.
pub const RESERVED_PATHS: [&str; 6] = ["/", "/dev", "/dev/log", "/tmp", "/var", "/var/log"];

#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(path, message));
    }
    fn invalid(
        &mut self,
        path: impl Into<String>,
        value: impl fmt::Display,
        rule: impl Into<String>,
    ) {
        self.0.push(FieldError::invalid(path, value, rule));
    }
    fn finish(self) -> Result<(), ValidationErrors> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(self.0))
        }
    }
}

/// Which object a traffic block belongs to; the target rules differ.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TrafficOwner {
    Service,
    Route,
}

pub fn validate_service(svc: &Service, cfg: &ValidationConfig) -> Result<(), ValidationErrors> {
    let mut e = Errors::default();
    let name = svc.metadata.name.as_deref().unwrap_or("");
    routable_metadata(&svc.metadata, &mut e);
    template(
        &svc.spec.configuration.template,
        Some(name),
        "spec.template",
        cfg,
        &mut e,
    );
    traffic(
        &svc.spec.route.traffic,
        TrafficOwner::Service,
        name,
        cfg,
        &mut e,
    );
    e.finish()
}

pub fn validate_configuration(
    c: &Configuration,
    cfg: &ValidationConfig,
) -> Result<(), ValidationErrors> {
    let mut e = Errors::default();
    routable_metadata(&c.metadata, &mut e);
    // A Configuration owned by a Service inherits the Service's naming rule for revisions.
    let owner = c.metadata.name.as_deref();
    template(&c.spec.template, owner, "spec.template", cfg, &mut e);
    e.finish()
}

/// An update's template: a user-chosen revision name names one immutable Revision, so the
/// template cannot change under the same name (Knative: "Saw the following changes without a
/// name change"). Both templates as stored, defaulted.
pub fn validate_template_update(
    old: &RevisionTemplateSpec,
    new: &RevisionTemplateSpec,
) -> Result<(), ValidationErrors> {
    let mut e = Errors::default();
    let name = new.metadata.name.as_deref().unwrap_or_default();
    if !name.is_empty() && old.metadata.name.as_deref() == Some(name) && old != new {
        let changed: Vec<&str> = [
            (
                "metadata.labels",
                old.metadata.labels != new.metadata.labels,
            ),
            (
                "metadata.annotations",
                old.metadata.annotations != new.metadata.annotations,
            ),
            ("spec", old.spec != new.spec),
        ]
        .into_iter()
        .filter_map(|(f, c)| c.then_some(f))
        .collect();
        e.invalid(
            "spec.template.metadata.name",
            name,
            format!(
                "the template changed ({}) without a name change: Revision {name:?} exists and is immutable; give the new template a new name, or remove the name to have one generated",
                changed.join(", ")
            ),
        );
    }
    e.finish()
}

/// A DomainMapping: its name is the domain (a DNS-1123 subdomain with a dot); its reference a
/// Service or Route of `serving.knative.dev/v1` in its own namespace.
pub fn validate_domain_mapping(dm: &crate::DomainMapping) -> Result<(), ValidationErrors> {
    let mut e = Errors::default();
    match dm.metadata.name.as_deref() {
        None | Some("") => e.push("metadata.name", "required (the domain to serve)"),
        Some(n) => {
            if let Err(m) = naming::check_dns_subdomain(n) {
                e.invalid("metadata.name", n, m);
            } else if !n.contains('.') {
                e.invalid("metadata.name", n, "must be a domain with at least one dot");
            }
        }
    }
    let r = &dm.spec.reference;
    if !matches!(r.kind.as_str(), "Service" | "Route") {
        e.invalid("spec.ref.kind", &r.kind, "must be Service or Route");
    }
    if let Some(v) = r.api_version.as_deref()
        && v != "serving.knative.dev/v1"
    {
        e.invalid("spec.ref.apiVersion", v, "must be serving.knative.dev/v1");
    }
    if let Err(m) = naming::check_dns_label(&r.name) {
        e.invalid("spec.ref.name", &r.name, m);
    }
    if let Some(ns) = r.namespace.as_deref().filter(|n| !n.is_empty())
        && Some(ns) != dm.metadata.namespace.as_deref()
    {
        e.invalid(
            "spec.ref.namespace",
            ns,
            "must be the DomainMapping's own namespace",
        );
    }
    if let Some(tls) = &dm.spec.tls
        && tls.secret_name.is_empty()
    {
        e.push("spec.tls.secretName", "required");
    }
    e.finish()
}

/// A ClusterDomainClaim: its name a domain (a DNS-1123 subdomain), `spec.namespace` a
/// namespace name.
pub fn validate_cluster_domain_claim(
    c: &crate::ClusterDomainClaim,
) -> Result<(), ValidationErrors> {
    let mut e = Errors::default();
    match c.metadata.name.as_deref() {
        None | Some("") => e.push("metadata.name", "required (the domain delegated)"),
        Some(n) => {
            if let Err(m) = naming::check_dns_subdomain(n) {
                e.invalid("metadata.name", n, m);
            }
        }
    }
    if c.spec.namespace.is_empty() {
        e.push(
            "spec.namespace",
            "required (the namespace the domain is delegated to)",
        );
    } else if let Err(m) = naming::check_dns_label(&c.spec.namespace) {
        e.invalid("spec.namespace", &c.spec.namespace, m);
    }
    e.finish()
}

pub fn validate_revision(r: &Revision, cfg: &ValidationConfig) -> Result<(), ValidationErrors> {
    let mut e = Errors::default();
    match r.metadata.name.as_deref() {
        None | Some("") => e.push("metadata.name", "required"),
        Some(n) => {
            if let Err(m) = naming::check_dns_label(n) {
                e.invalid("metadata.name", n, m);
            }
        }
    }
    let empty = BTreeMap::new();
    let annotations = r.metadata.annotations.as_ref().unwrap_or(&empty);
    scaling(annotations, &r.spec, "metadata.annotations", cfg, &mut e);
    revision_spec(&r.spec, "spec", Some(annotations), cfg, &mut e);
    e.finish()
}

pub fn validate_route(r: &Route, cfg: &ValidationConfig) -> Result<(), ValidationErrors> {
    let mut e = Errors::default();
    routable_metadata(&r.metadata, &mut e);
    let name = r.metadata.name.as_deref().unwrap_or("");
    traffic(&r.spec.traffic, TrafficOwner::Route, name, cfg, &mut e);
    e.finish()
}

/// Services, Configurations and Routes become hostnames and Kubernetes Service names: DNS-1035.
fn routable_metadata(meta: &ObjectMeta, e: &mut Errors) {
    match meta.name.as_deref() {
        None | Some("") if meta.generate_name.is_none() => e.push("metadata.name", "required"),
        None | Some("") => {}
        Some(n) => {
            if let Err(m) = naming::check_dns_1035_label(n) {
                e.invalid("metadata.name", n, m);
            }
        }
    }
    let key = "serving.knative.dev/rollout-duration";
    if let Some(v) = meta.annotations.as_ref().and_then(|a| a.get(key))
        && v.trim().parse::<u64>().is_err()
        && crate::duration::parse(v).is_err()
    {
        e.invalid(
            format!("metadata.annotations.{key}"),
            v,
            "must be a duration (380s, 5m) or a number of seconds",
        );
    }
}

fn template(
    t: &RevisionTemplateSpec,
    owner: Option<&str>,
    path: &str,
    cfg: &ValidationConfig,
    e: &mut Errors,
) {
    if let Some(name) = t.metadata.name.as_deref().filter(|n| !n.is_empty()) {
        let p = format!("{path}.metadata.name");
        if let Err(m) = naming::check_dns_label(name) {
            e.invalid(&p, name, m);
        }
        if let Some(owner) = owner.filter(|o| !o.is_empty())
            && !name.starts_with(&format!("{owner}-"))
        {
            e.invalid(
                &p,
                name,
                format!("must start with {owner:?} followed by '-'"),
            );
        }
    }
    let empty = BTreeMap::new();
    let annotations = t.metadata.annotations.as_ref().unwrap_or(&empty);
    scaling(
        annotations,
        &t.spec,
        &format!("{path}.metadata.annotations"),
        cfg,
        e,
    );
    revision_spec(&t.spec, &format!("{path}.spec"), Some(annotations), cfg, e);
}

fn scaling(
    annotations: &BTreeMap<String, String>,
    spec: &RevisionSpec,
    path: &str,
    cfg: &ValidationConfig,
    e: &mut Errors,
) {
    let cc = spec
        .container_concurrency
        .unwrap_or(cfg.defaults.container_concurrency);
    if let Err(errors) = crate::autoscaling::resolve(annotations, cc, &cfg.autoscaler, path) {
        e.0.extend(errors);
    }
}

/// The PodSpec fields Knative gates behind config-features flags that `p` sets, as
/// (field, flag).
pub fn gated_pod_fields(
    p: &k8s_openapi::api::core::v1::PodSpec,
) -> Vec<(&'static str, &'static str)> {
    let gated: [(&str, &str, bool); 16] = [
        (
            "affinity",
            "kubernetes.podspec-affinity",
            p.affinity.is_some(),
        ),
        (
            "topologySpreadConstraints",
            "kubernetes.podspec-topologyspreadconstraints",
            p.topology_spread_constraints
                .as_ref()
                .is_some_and(|v| !v.is_empty()),
        ),
        (
            "hostAliases",
            "kubernetes.podspec-hostaliases",
            p.host_aliases.as_ref().is_some_and(|v| !v.is_empty()),
        ),
        (
            "nodeSelector",
            "kubernetes.podspec-nodeselector",
            p.node_selector.as_ref().is_some_and(|v| !v.is_empty()),
        ),
        (
            "runtimeClassName",
            "kubernetes.podspec-runtimeclassname",
            p.runtime_class_name.is_some(),
        ),
        (
            "securityContext",
            "kubernetes.podspec-securitycontext",
            p.security_context.is_some(),
        ),
        (
            "shareProcessNamespace",
            "kubernetes.podspec-shareprocessnamespace",
            p.share_process_namespace.is_some(),
        ),
        (
            "hostIPC",
            "kubernetes.podspec-hostipc",
            p.host_ipc == Some(true),
        ),
        (
            "hostPID",
            "kubernetes.podspec-hostpid",
            p.host_pid == Some(true),
        ),
        (
            "hostNetwork",
            "kubernetes.podspec-hostnetwork",
            p.host_network == Some(true),
        ),
        (
            "priorityClassName",
            "kubernetes.podspec-priorityclassname",
            p.priority_class_name.is_some(),
        ),
        (
            "schedulerName",
            "kubernetes.podspec-schedulername",
            p.scheduler_name.is_some(),
        ),
        (
            "tolerations",
            "kubernetes.podspec-tolerations",
            p.tolerations.as_ref().is_some_and(|v| !v.is_empty()),
        ),
        (
            "initContainers",
            "kubernetes.podspec-init-containers",
            p.init_containers.as_ref().is_some_and(|v| !v.is_empty()),
        ),
        (
            "dnsPolicy",
            "kubernetes.podspec-dnspolicy",
            p.dns_policy.is_some(),
        ),
        (
            "dnsConfig",
            "kubernetes.podspec-dnsconfig",
            p.dns_config.is_some(),
        ),
    ];
    gated
        .into_iter()
        .filter(|(_, _, set)| *set)
        .map(|(field, flag, _)| (field, flag))
        .collect()
}

/// Knative's PodSpec fields behind config-features flags (field, flag, set?), and the fields its
/// PodSpec mask never lets through.
fn pod_fields(
    spec: &RevisionSpec,
    path: &str,
    annotations: Option<&BTreeMap<String, String>>,
    cfg: &ValidationConfig,
    e: &mut Errors,
) {
    let p = &spec.pod;
    for (field, flag) in gated_pod_fields(p) {
        if !cfg.features.on(flag, annotations) {
            e.push(
                format!("{path}.{field}"),
                format!("must not be set: Knative gates it behind the {flag:?} feature (config-features)"),
            );
        }
    }
    if spec.pod.containers.len() > 1 && !cfg.features.on("multi-container", annotations) {
        e.push(
            format!("{path}.containers"),
            "only one container is allowed: the \"multi-container\" feature is disabled (config-features)",
        );
    }
    if !cfg
        .features
        .on("kubernetes.podspec-volumes-emptydir", annotations)
    {
        for (i, v) in p.volumes.iter().flatten().enumerate() {
            if v.empty_dir.is_some() {
                e.push(
                    format!("{path}.volumes[{i}].emptyDir"),
                    "must not be set: the \"kubernetes.podspec-volumes-emptydir\" feature is disabled (config-features)",
                );
            }
        }
    }
    let never: [(&str, bool); 15] = [
        ("nodeName", p.node_name.is_some()),
        ("restartPolicy", p.restart_policy.is_some()),
        ("activeDeadlineSeconds", p.active_deadline_seconds.is_some()),
        (
            "terminationGracePeriodSeconds",
            p.termination_grace_period_seconds.is_some(),
        ),
        ("hostname", p.hostname.is_some()),
        ("subdomain", p.subdomain.is_some()),
        ("overhead", p.overhead.is_some()),
        ("preemptionPolicy", p.preemption_policy.is_some()),
        (
            "readinessGates",
            p.readiness_gates.as_ref().is_some_and(|v| !v.is_empty()),
        ),
        (
            "ephemeralContainers",
            p.ephemeral_containers
                .as_ref()
                .is_some_and(|v| !v.is_empty()),
        ),
        ("os", p.os.is_some()),
        ("setHostnameAsFQDN", p.set_hostname_as_fqdn.is_some()),
        (
            "schedulingGates",
            p.scheduling_gates.as_ref().is_some_and(|v| !v.is_empty()),
        ),
        (
            "resourceClaims",
            p.resource_claims.as_ref().is_some_and(|v| !v.is_empty()),
        ),
        ("hostUsers", p.host_users.is_some()),
    ];
    for (field, set) in never {
        if set {
            e.push(
                format!("{path}.{field}"),
                "must not be set: not part of a Knative revision's pod (the platform owns it)",
            );
        }
    }
    // Per container: env from pod fields, added capabilities, sidecars' probes.
    let serving = spec.serving_container_index();
    for (i, c) in p.containers.iter().enumerate() {
        let cp = format!("{path}.containers[{i}]");
        if !cfg.features.on("kubernetes.podspec-fieldref", annotations) {
            for (j, env) in c.env.iter().flatten().enumerate() {
                let from = env.value_from.as_ref();
                for (kind, set) in [
                    ("fieldRef", from.is_some_and(|f| f.field_ref.is_some())),
                    (
                        "resourceFieldRef",
                        from.is_some_and(|f| f.resource_field_ref.is_some()),
                    ),
                ] {
                    if set {
                        e.push(
                            format!("{cp}.env[{j}].valueFrom.{kind}"),
                            "must not be set: the \"kubernetes.podspec-fieldref\" feature is disabled (config-features)",
                        );
                    }
                }
            }
        }
        if !cfg
            .features
            .on("kubernetes.containerspec-addcapabilities", annotations)
        {
            let added = c
                .security_context
                .as_ref()
                .and_then(|s| s.capabilities.as_ref())
                .and_then(|c| c.add.as_ref());
            for (j, cap) in added.into_iter().flatten().enumerate() {
                if cap != "NET_BIND_SERVICE" {
                    e.invalid(
                        format!("{cp}.securityContext.capabilities.add[{j}]"),
                        cap,
                        "only NET_BIND_SERVICE may be added: the \"kubernetes.containerspec-addcapabilities\" feature is disabled (config-features)",
                    );
                }
            }
        }
        if Some(i) != serving && !cfg.features.on("multi-container-probing", annotations) {
            for (probe, set) in [
                ("readinessProbe", c.readiness_probe.is_some()),
                ("livenessProbe", c.liveness_probe.is_some()),
                ("startupProbe", c.startup_probe.is_some()),
            ] {
                if set {
                    e.push(
                        format!("{cp}.{probe}"),
                        "must not be set on a sidecar: the \"multi-container-probing\" feature is disabled (config-features)",
                    );
                }
            }
        }
    }
}

fn revision_spec(
    spec: &RevisionSpec,
    path: &str,
    annotations: Option<&BTreeMap<String, String>>,
    cfg: &ValidationConfig,
    e: &mut Errors,
) {
    pod_fields(spec, path, annotations, cfg, e);
    let d = &cfg.defaults;
    if let Some(cc) = spec.container_concurrency {
        let min = if d.allow_container_concurrency_zero {
            0
        } else {
            1
        };
        if cc < min || cc > d.container_concurrency_max_limit {
            e.invalid(
                format!("{path}.containerConcurrency"),
                cc,
                format!(
                    "must be between {min} and {}",
                    d.container_concurrency_max_limit
                ),
            );
        }
    }
    let max_timeout = d.max_revision_timeout_seconds;
    let timeout = spec.timeout_seconds.unwrap_or(d.revision_timeout_seconds);
    if let Some(t) = spec.timeout_seconds
        && !(0..=max_timeout).contains(&t)
    {
        e.invalid(
            format!("{path}.timeoutSeconds"),
            t,
            format!("must be between 0 and {max_timeout}"),
        );
    }
    if let Some(t) = spec.response_start_timeout_seconds
        && !(0..=timeout).contains(&t)
    {
        e.invalid(
            format!("{path}.responseStartTimeoutSeconds"),
            t,
            format!("must be between 0 and timeoutSeconds ({timeout})"),
        );
    }
    if let Some(t) = spec.idle_timeout_seconds
        && !(0..=max_timeout).contains(&t)
    {
        e.invalid(
            format!("{path}.idleTimeoutSeconds"),
            t,
            format!("must be between 0 and {max_timeout}"),
        );
    }

    let volumes = volumes(spec, path, e);
    if let Some(sa) = spec
        .pod
        .service_account_name
        .as_deref()
        .filter(|s| !s.is_empty())
        && let Err(m) = naming::check_dns_subdomain(sa)
    {
        e.invalid(format!("{path}.serviceAccountName"), sa, m);
    }
    if let Some(sc) = &spec.pod.security_context {
        ids(
            sc.run_as_user,
            sc.run_as_group,
            &format!("{path}.securityContext"),
            e,
        );
    }
    let containers = &spec.pod.containers;
    let mounted: BTreeSet<&str> = containers
        .iter()
        .flat_map(|c| c.volume_mounts.iter().flatten())
        .map(|m| m.name.as_str())
        .collect();
    let unmounted: Vec<&str> = volumes
        .keys()
        .map(String::as_str)
        .filter(|v| !mounted.contains(v))
        .collect();
    if !unmounted.is_empty() {
        e.push(
            format!("{path}.volumes"),
            format!("volumes not mounted by any container: {unmounted:?}"),
        );
    }
    if containers.is_empty() {
        e.push(
            format!("{path}.containers"),
            "at least one container is required",
        );
    }
    let with_ports = containers
        .iter()
        .filter(|c| c.ports.as_ref().is_some_and(|p| !p.is_empty()))
        .count();
    if containers.len() > 1 && with_ports != 1 {
        e.push(
            format!("{path}.containers"),
            format!(
                "exactly one container must declare a port when there are several (it receives the requests); {with_ports} do"
            ),
        );
    }
    let mut names = BTreeSet::new();
    for (i, c) in containers.iter().enumerate() {
        let cp = format!("{path}.containers[{i}]");
        if !c.name.is_empty() && !names.insert(c.name.as_str()) {
            e.invalid(format!("{cp}.name"), &c.name, "duplicate container name");
        }
        container(c, &cp, &volumes, e);
    }
    if let Some(init) = &spec.pod.init_containers {
        for (i, c) in init.iter().enumerate() {
            let cp = format!("{path}.initContainers[{i}]");
            if c.image.as_deref().unwrap_or("").is_empty() {
                e.push(format!("{cp}.image"), "required");
            }
            if !c.name.is_empty() && !names.insert(c.name.as_str()) {
                e.invalid(format!("{cp}.name"), &c.name, "duplicate container name");
            }
        }
    }
}

/// The pod's volumes by name: whether each is an emptyDir (the one kind mounted writable).
fn volumes(spec: &RevisionSpec, path: &str, e: &mut Errors) -> BTreeMap<String, bool> {
    let mut names = BTreeMap::new();
    for (i, v) in spec.pod.volumes.iter().flatten().enumerate() {
        let vp = format!("{path}.volumes[{i}]");
        if let Err(m) = naming::check_dns_label(&v.name) {
            e.invalid(format!("{vp}.name"), &v.name, m);
        } else if names
            .insert(v.name.clone(), v.empty_dir.is_some())
            .is_some()
        {
            e.invalid(format!("{vp}.name"), &v.name, "duplicate volume name");
        }
        let sources = [
            v.config_map.is_some(),
            v.secret.is_some(),
            v.projected.is_some(),
            v.empty_dir.is_some(),
        ];
        let supported = sources.iter().filter(|s| **s).count();
        if supported != 1 {
            // Host paths, block devices and network disks would tie an instance to a node
            // and break scale-to-zero anywhere; Knative refuses them by default too.
            e.push(
                vp,
                "exactly one of configMap, secret, projected or emptyDir is required (other volume types are not supported)",
            );
        }
    }
    names
}

fn container(c: &Container, path: &str, volumes: &BTreeMap<String, bool>, e: &mut Errors) {
    if c.image.as_deref().unwrap_or("").trim().is_empty() {
        e.push(format!("{path}.image"), "required");
    }
    if !c.name.is_empty()
        && let Err(m) = naming::check_dns_label(&c.name)
    {
        e.invalid(format!("{path}.name"), &c.name, m);
    } else if c.name == "queue-proxy" {
        e.invalid(
            format!("{path}.name"),
            &c.name,
            "is reserved for the platform's sidecar",
        );
    }
    if let Some(image) = c.image.as_deref().filter(|i| !i.trim().is_empty())
        && let Err(m) = naming::check_image_reference(image)
    {
        e.invalid(format!("{path}.image"), image, m);
    }
    if let Some(policy) = c.termination_message_policy.as_deref()
        && !matches!(policy, "File" | "FallbackToLogsOnError")
    {
        e.invalid(
            format!("{path}.terminationMessagePolicy"),
            policy,
            "must be \"File\" or \"FallbackToLogsOnError\"",
        );
    }
    if let Some(sc) = &c.security_context {
        ids(
            sc.run_as_user,
            sc.run_as_group,
            &format!("{path}.securityContext"),
            e,
        );
    }
    for (j, from) in c.env_from.iter().flatten().enumerate() {
        let set =
            usize::from(from.config_map_ref.is_some()) + usize::from(from.secret_ref.is_some());
        if set != 1 {
            e.push(
                format!("{path}.envFrom[{j}]"),
                "exactly one of configMapRef or secretRef is required",
            );
        }
    }
    if c.lifecycle.is_some() {
        e.push(
            format!("{path}.lifecycle"),
            "must not be set: the queue-proxy owns shutdown (preStop drain)",
        );
    }
    for (field, set) in [
        ("stdin", c.stdin),
        ("stdinOnce", c.stdin_once),
        ("tty", c.tty),
    ] {
        if set == Some(true) {
            e.push(
                format!("{path}.{field}"),
                "must not be set: instances have no terminal",
            );
        }
    }
    let ports = c.ports.as_deref().unwrap_or_default();
    if ports.len() > 1 {
        e.push(
            format!("{path}.ports"),
            format!("only one port may be declared; found {}", ports.len()),
        );
    }
    let mut container_port = None;
    for (j, p) in ports.iter().enumerate() {
        let pp = format!("{path}.ports[{j}]");
        if let Some(name) = p.name.as_deref()
            && !matches!(name, "" | "http1" | "h2c")
        {
            e.invalid(
                format!("{pp}.name"),
                name,
                "must be empty, \"http1\" or \"h2c\"",
            );
        }
        if !(0..=65535).contains(&p.container_port) {
            e.invalid(
                format!("{pp}.containerPort"),
                p.container_port,
                "must be between 1 and 65535",
            );
        } else if RESERVED_PORTS.contains(&p.container_port) {
            e.invalid(
                format!("{pp}.containerPort"),
                p.container_port,
                format!("is reserved for the queue-proxy ({RESERVED_PORTS:?})"),
            );
        }
        if let Some(proto) = p.protocol.as_deref()
            && proto != "TCP"
        {
            e.invalid(format!("{pp}.protocol"), proto, "must be TCP");
        }
        if p.host_port.is_some() {
            e.push(format!("{pp}.hostPort"), "must not be set");
        }
        if j == 0 {
            container_port = Some(if p.container_port == 0 {
                crate::revision::DEFAULT_USER_PORT
            } else {
                p.container_port
            });
        }
    }
    for (j, env) in c.env.iter().flatten().enumerate() {
        let ep = format!("{path}.env[{j}].name");
        if env.name.is_empty() {
            e.push(ep, "required");
        } else if RESERVED_ENV.contains(&env.name.as_str()) {
            e.invalid(
                ep,
                &env.name,
                format!("is reserved: the platform sets {RESERVED_ENV:?}"),
            );
        }
    }
    let mut mount_paths = BTreeSet::new();
    for (j, m) in c.volume_mounts.iter().flatten().enumerate() {
        let mp = format!("{path}.volumeMounts[{j}]");
        match volumes.get(&m.name) {
            None => e.invalid(
                format!("{mp}.name"),
                &m.name,
                "no volume of that name in spec.volumes",
            ),
            // As Knative: only an emptyDir may be mounted writable.
            Some(false) if m.read_only != Some(true) => e.push(
                format!("{mp}.readOnly"),
                "must be true: only emptyDir volumes are mounted writable",
            ),
            Some(_) => {}
        }
        for (field, set) in [
            ("mountPropagation", m.mount_propagation.is_some()),
            ("subPathExpr", m.sub_path_expr.is_some()),
            ("recursiveReadOnly", m.recursive_read_only.is_some()),
        ] {
            if set {
                e.push(
                    format!("{mp}.{field}"),
                    "must not be set (Knative allows name, mountPath, readOnly and subPath)",
                );
            }
        }
        let clean = m.mount_path.trim_end_matches('/');
        let clean = if clean.is_empty() { "/" } else { clean };
        if !m.mount_path.starts_with('/') {
            e.invalid(
                format!("{mp}.mountPath"),
                &m.mount_path,
                "must be an absolute path",
            );
        } else if RESERVED_PATHS.contains(&clean) {
            e.invalid(
                format!("{mp}.mountPath"),
                &m.mount_path,
                format!("is reserved ({RESERVED_PATHS:?})"),
            );
        } else if !mount_paths.insert(clean.to_string()) {
            e.invalid(format!("{mp}.mountPath"), &m.mount_path, "mounted twice");
        }
    }
    if let Some(p) = &c.readiness_probe {
        probe(p, &format!("{path}.readinessProbe"), container_port, e);
    }
    if let Some(p) = &c.liveness_probe {
        probe(p, &format!("{path}.livenessProbe"), container_port, e);
    }
}

/// User and group ids, as Knative bounds them: 0 to 2^31 − 1.
fn ids(user: Option<i64>, group: Option<i64>, path: &str, e: &mut Errors) {
    for (field, id) in [("runAsUser", user), ("runAsGroup", group)] {
        if let Some(id) = id
            && !(0..=i64::from(i32::MAX)).contains(&id)
        {
            e.invalid(
                format!("{path}.{field}"),
                id,
                format!("must be between 0 and {}", i32::MAX),
            );
        }
    }
}

fn probe(p: &Probe, path: &str, container_port: Option<i32>, e: &mut Errors) {
    let handlers = [
        p.http_get.is_some(),
        p.tcp_socket.is_some(),
        p.exec.is_some(),
        p.grpc.is_some(),
    ];
    if handlers.iter().filter(|h| **h).count() > 1 {
        e.push(
            path,
            "at most one of httpGet, tcpSocket, exec or grpc may be set",
        );
    }
    let port = p
        .http_get
        .as_ref()
        .map(|h| (&h.port, "httpGet.port"))
        .or_else(|| p.tcp_socket.as_ref().map(|t| (&t.port, "tcpSocket.port")));
    if let Some((IntOrString::Int(port), field)) = port
        && *port != 0
    {
        // The queue-proxy probes the user port; another port would be probed on a socket
        // that receives no traffic.
        let expected = container_port.unwrap_or(crate::revision::DEFAULT_USER_PORT);
        if *port != expected {
            e.invalid(
                format!("{path}.{field}"),
                port,
                format!("must be 0 or the container port ({expected})"),
            );
        }
    }
    if let Some(IntOrString::String(s)) = port.map(|(p, _)| p) {
        e.invalid(
            format!("{path}.{}", port.map_or("", |(_, f)| f)),
            s,
            "named ports are not supported; use a number",
        );
    }
    for (field, value, min) in [
        ("periodSeconds", p.period_seconds, 0),
        ("timeoutSeconds", p.timeout_seconds, 0),
        ("successThreshold", p.success_threshold, 1),
        ("failureThreshold", p.failure_threshold, 1),
        ("initialDelaySeconds", p.initial_delay_seconds, 0),
    ] {
        if let Some(v) = value
            && v < min
        {
            e.invalid(
                format!("{path}.{field}"),
                v,
                format!("must be at least {min}"),
            );
        }
    }
}

fn traffic(
    targets: &[TrafficTarget],
    owner: TrafficOwner,
    route: &str,
    cfg: &ValidationConfig,
    e: &mut Errors,
) {
    if targets.is_empty() {
        return;
    }
    let mut tags: BTreeMap<&str, usize> = BTreeMap::new();
    let mut sum: i64 = 0;
    for (i, t) in targets.iter().enumerate() {
        let p = format!("spec.traffic[{i}]");
        let percent = t.percent.unwrap_or(0);
        if !(0..=100).contains(&percent) {
            e.invalid(format!("{p}.percent"), percent, "must be between 0 and 100");
        }
        sum = sum.saturating_add(percent);
        if t.url.is_some() {
            e.push(
                format!("{p}.url"),
                "must not be set: it is filled in status",
            );
        }
        let latest = t.latest_revision;
        match owner {
            TrafficOwner::Service => {
                if t.configuration_name.is_some() {
                    e.push(
                        format!("{p}.configurationName"),
                        "must not be set in a Service; use latestRevision: true",
                    );
                }
                match (t.revision_name.as_deref(), latest) {
                    (Some(_), Some(true)) => e.push(
                        format!("{p}.revisionName"),
                        "must not be set together with latestRevision: true",
                    ),
                    (None, Some(false)) | (None, None) => e.push(
                        p.clone(),
                        "exactly one of revisionName or latestRevision: true is required",
                    ),
                    _ => {}
                }
            }
            TrafficOwner::Route => {
                match (t.revision_name.as_deref(), t.configuration_name.as_deref()) {
                    (Some(_), Some(_)) | (None, None) => e.push(
                        p.clone(),
                        "exactly one of revisionName or configurationName is required",
                    ),
                    (Some(_), None) if latest == Some(true) => e.push(
                        format!("{p}.latestRevision"),
                        "may be true only with configurationName",
                    ),
                    (None, Some(_)) if latest == Some(false) => e.push(
                        format!("{p}.latestRevision"),
                        "must not be false with configurationName",
                    ),
                    _ => {}
                }
            }
        }
        if let Some(r) = t.revision_name.as_deref()
            && let Err(m) = naming::check_dns_label(r)
        {
            e.invalid(format!("{p}.revisionName"), r, m);
        }
        if let Some(tag) = t.tag.as_deref() {
            if let Err(m) = naming::check_dns_label(tag) {
                e.invalid(format!("{p}.tag"), tag, m);
            } else if let Some(first) = tags.insert(tag, i) {
                e.invalid(
                    format!("{p}.tag"),
                    tag,
                    format!("duplicate tag (also spec.traffic[{first}].tag)"),
                );
            } else if !route.is_empty() {
                match naming::tag_name(route, tag, &cfg.network) {
                    Ok(host) if host.len() > MAX_NAME_LEN => e.invalid(
                        format!("{p}.tag"),
                        tag,
                        format!(
                            "the tag's host name {host:?} would exceed {MAX_NAME_LEN} characters"
                        ),
                    ),
                    Ok(_) => {}
                    Err(m) => e.invalid(format!("{p}.tag"), tag, m),
                }
            }
        }
    }
    if sum != 100 {
        e.push(
            "spec.traffic",
            format!("percents must sum to 100; they sum to {sum}"),
        );
    }
}
