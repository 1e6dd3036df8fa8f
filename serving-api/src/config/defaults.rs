//! `config-defaults`: values filled into Revision templates that leave them out.

use std::collections::BTreeMap;

use super::{ConfigErrors, Reader};

pub const NAME: &str = "config-defaults";

#[derive(Clone, Debug, PartialEq)]
pub struct DefaultsConfig {
    /// `revision-timeout-seconds`: default `timeoutSeconds`.
    pub revision_timeout_seconds: i64,
    /// `max-revision-timeout-seconds`: upper bound for `timeoutSeconds`.
    pub max_revision_timeout_seconds: i64,
    /// `revision-response-start-timeout-seconds`: default `responseStartTimeoutSeconds`
    /// (unset: the revision's timeout).
    pub revision_response_start_timeout_seconds: Option<i64>,
    /// `revision-idle-timeout-seconds`: default `idleTimeoutSeconds` (0 = none).
    pub revision_idle_timeout_seconds: i64,
    /// `container-concurrency`: default `containerConcurrency` (0 = unlimited).
    pub container_concurrency: i64,
    /// `container-concurrency-max-limit`: upper bound for `containerConcurrency`.
    pub container_concurrency_max_limit: i64,
    /// `allow-container-concurrency-zero`: whether 0 (unlimited) may be chosen.
    pub allow_container_concurrency_zero: bool,
    /// `container-name-template`: name given to an unnamed single container.
    pub container_name_template: String,
    /// `revision-cpu-request` etc.: resource defaults for user containers (empty = none).
    pub revision_cpu_request: Option<String>,
    pub revision_memory_request: Option<String>,
    pub revision_ephemeral_storage_request: Option<String>,
    pub revision_cpu_limit: Option<String>,
    pub revision_memory_limit: Option<String>,
    pub revision_ephemeral_storage_limit: Option<String>,
    /// `enable-service-links`: default `enableServiceLinks` of the pod (Knative: false).
    pub enable_service_links: bool,
}

impl Default for DefaultsConfig {
    fn default() -> Self {
        DefaultsConfig {
            revision_timeout_seconds: 300,
            max_revision_timeout_seconds: 600,
            revision_response_start_timeout_seconds: None,
            revision_idle_timeout_seconds: 0,
            container_concurrency: 0,
            container_concurrency_max_limit: 1000,
            allow_container_concurrency_zero: true,
            container_name_template: "user-container".into(),
            revision_cpu_request: None,
            revision_memory_request: None,
            revision_ephemeral_storage_request: None,
            revision_cpu_limit: None,
            revision_memory_limit: None,
            revision_ephemeral_storage_limit: None,
            enable_service_links: false,
        }
    }
}

impl DefaultsConfig {
    pub fn from_map(data: &BTreeMap<String, String>) -> Result<Self, ConfigErrors> {
        let mut c = DefaultsConfig::default();
        let mut r = Reader::new(NAME, data);
        r.number(
            "max-revision-timeout-seconds",
            &mut c.max_revision_timeout_seconds,
            1,
            i64::MAX,
        );
        r.number(
            "revision-timeout-seconds",
            &mut c.revision_timeout_seconds,
            1,
            i64::MAX,
        );
        if c.revision_timeout_seconds > c.max_revision_timeout_seconds {
            let v = c.revision_timeout_seconds.to_string();
            r.error(
                "revision-timeout-seconds",
                &v,
                format!(
                    "must be at most max-revision-timeout-seconds ({})",
                    c.max_revision_timeout_seconds
                ),
            );
        }
        if r.raw("revision-response-start-timeout-seconds").is_some() {
            let mut v = 0;
            r.number(
                "revision-response-start-timeout-seconds",
                &mut v,
                0,
                c.revision_timeout_seconds,
            );
            c.revision_response_start_timeout_seconds = Some(v);
        }
        r.number(
            "revision-idle-timeout-seconds",
            &mut c.revision_idle_timeout_seconds,
            0,
            c.max_revision_timeout_seconds,
        );
        r.number(
            "container-concurrency-max-limit",
            &mut c.container_concurrency_max_limit,
            1,
            i64::MAX,
        );
        r.number(
            "container-concurrency",
            &mut c.container_concurrency,
            0,
            c.container_concurrency_max_limit,
        );
        r.boolean(
            "allow-container-concurrency-zero",
            &mut c.allow_container_concurrency_zero,
        );
        if !c.allow_container_concurrency_zero && c.container_concurrency == 0 {
            r.error(
                "container-concurrency",
                "0",
                "must be at least 1 when allow-container-concurrency-zero is false",
            );
        }
        r.string("container-name-template", &mut c.container_name_template);
        if c.container_name_template.is_empty() {
            r.error("container-name-template", "", "must not be empty");
        }
        let quantity =
            |r: &Reader<'_>, key: &str| r.raw(key).filter(|v| !v.is_empty()).map(str::to_string);
        c.revision_cpu_request = quantity(&r, "revision-cpu-request");
        c.revision_memory_request = quantity(&r, "revision-memory-request");
        c.revision_ephemeral_storage_request = quantity(&r, "revision-ephemeral-storage-request");
        c.revision_cpu_limit = quantity(&r, "revision-cpu-limit");
        c.revision_memory_limit = quantity(&r, "revision-memory-limit");
        c.revision_ephemeral_storage_limit = quantity(&r, "revision-ephemeral-storage-limit");
        r.boolean("enable-service-links", &mut c.enable_service_links);
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
            DefaultsConfig::from_map(&map(&[])),
            Ok(DefaultsConfig::default())
        );
    }

    #[test]
    fn overrides_apply() {
        let c = DefaultsConfig::from_map(&map(&[
            ("revision-timeout-seconds", "120"),
            ("container-concurrency", "10"),
            ("revision-cpu-request", "100m"),
        ]))
        .unwrap_or_default();
        assert_eq!(c.revision_timeout_seconds, 120);
        assert_eq!(c.container_concurrency, 10);
        assert_eq!(c.revision_cpu_request.as_deref(), Some("100m"));
    }

    #[test]
    fn every_bad_key_is_reported() {
        let err = DefaultsConfig::from_map(&map(&[
            ("revision-timeout-seconds", "700"),
            ("container-concurrency", "abc"),
            ("allow-container-concurrency-zero", "maybe"),
        ]))
        .err()
        .unwrap_or(ConfigErrors(vec![]));
        let keys: Vec<_> = err.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "revision-timeout-seconds",
                "container-concurrency",
                "allow-container-concurrency-zero"
            ]
        );
        assert!(err.to_string().contains("revision-timeout-seconds=\"700\": must be at most max-revision-timeout-seconds (600)"), "{err}");
    }
}
