//! `config-network`: how hostnames are formed and how routes are exposed.

use std::collections::BTreeMap;

use super::{ConfigErrors, Reader};

pub const NAME: &str = "config-network";
pub const DEFAULT_DOMAIN_TEMPLATE: &str = "{{.Name}}.{{.Namespace}}.{{.Domain}}";
pub const DEFAULT_TAG_TEMPLATE: &str = "{{.Tag}}-{{.Name}}";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkConfig {
    /// `domain-template`: the route host from `.Name`, `.Namespace`, `.Domain` and
    /// `index .Annotations "key"`.
    pub domain_template: String,
    /// `tag-template`: the name part of a tag's host, from `.Tag` and `.Name`.
    pub tag_template: String,
    /// `default-external-scheme`: scheme of `status.url` (`http` or `https`).
    pub default_external_scheme: String,
    /// `ingress-class`: the Kubernetes IngressClass set on generated Ingresses (empty: the
    /// cluster's default class).
    pub ingress_class: String,
    /// `rollout-duration`: how long traffic takes to move to a new latest revision (0: at once).
    pub rollout_duration: std::time::Duration,
    /// `autocreate-cluster-domain-claims`: a DomainMapping claims its domain for its namespace
    /// by creating the ClusterDomainClaim itself (false, Knative's default: a cluster
    /// administrator creates the claim first).
    pub autocreate_cluster_domain_claims: bool,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            domain_template: DEFAULT_DOMAIN_TEMPLATE.into(),
            tag_template: DEFAULT_TAG_TEMPLATE.into(),
            default_external_scheme: "http".into(),
            ingress_class: String::new(),
            rollout_duration: std::time::Duration::ZERO,
            autocreate_cluster_domain_claims: false,
        }
    }
}

impl NetworkConfig {
    pub fn from_map(data: &BTreeMap<String, String>) -> Result<Self, ConfigErrors> {
        let mut c = NetworkConfig::default();
        let mut r = Reader::new(NAME, data);
        r.string("domain-template", &mut c.domain_template);
        r.string("tag-template", &mut c.tag_template);
        r.string("default-external-scheme", &mut c.default_external_scheme);
        r.string("ingress-class", &mut c.ingress_class);
        r.boolean(
            "autocreate-cluster-domain-claims",
            &mut c.autocreate_cluster_domain_claims,
        );
        if let Some(v) = r.raw("rollout-duration") {
            match v
                .parse::<u64>()
                .map(std::time::Duration::from_secs)
                .or_else(|_| crate::duration::parse(v))
            {
                Ok(d) => c.rollout_duration = d,
                Err(_) => r.error(
                    "rollout-duration",
                    v,
                    "must be a duration (380s, 5m) or a number of seconds",
                ),
            }
        }
        let sample = crate::naming::TemplateValues {
            name: "name",
            namespace: "namespace",
            domain: "example.com",
            tag: "tag",
            annotations: &BTreeMap::new(),
        };
        if !c.domain_template.contains("{{.Name}}") {
            let v = c.domain_template.clone();
            r.error(
                "domain-template",
                &v,
                "must contain {{.Name}} so that routes get distinct hosts",
            );
        } else if let Err(e) = crate::naming::render_host_template(&c.domain_template, &sample) {
            let v = c.domain_template.clone();
            r.error("domain-template", &v, e);
        }
        if !(c.tag_template.contains("{{.Tag}}") && c.tag_template.contains("{{.Name}}")) {
            let v = c.tag_template.clone();
            r.error("tag-template", &v, "must contain {{.Tag}} and {{.Name}}");
        } else if let Err(e) = crate::naming::render_host_template(&c.tag_template, &sample) {
            let v = c.tag_template.clone();
            r.error("tag-template", &v, e);
        }
        if !matches!(c.default_external_scheme.as_str(), "http" | "https") {
            let v = c.default_external_scheme.clone();
            r.error("default-external-scheme", &v, "must be http or https");
        }
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
            NetworkConfig::from_map(&map(&[])),
            Ok(NetworkConfig::default())
        );
    }

    #[test]
    fn bad_templates_are_refused() {
        for (key, value) in [
            ("domain-template", "{{.Namespace}}.{{.Domain}}"),
            ("domain-template", "{{.Name}}.{{.Bogus}}"),
            ("tag-template", "{{.Name}}"),
            ("default-external-scheme", "ftp"),
        ] {
            let err = NetworkConfig::from_map(&map(&[(key, value)]));
            assert!(
                matches!(&err, Err(e) if e.0.len() == 1 && e.0[0].key == key),
                "{key}={value}: {err:?}"
            );
        }
    }

    #[test]
    fn custom_template_accepted() {
        let c = NetworkConfig::from_map(&map(&[(
            "domain-template",
            "{{.Name}}-{{.Namespace}}.{{.Domain}}",
        )]));
        assert!(c.is_ok());
    }
}
