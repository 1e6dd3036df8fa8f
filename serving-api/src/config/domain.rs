//! `config-domain`: which domain a route's host uses, chosen by label selectors.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{ConfigErrors, Reader};

pub const NAME: &str = "config-domain";
/// The domain used when nothing is configured, and always for cluster-local routes.
pub const CLUSTER_LOCAL_DOMAIN: &str = "svc.cluster.local";

/// A domain and the labels a route must carry to use it (empty selector: any route).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainEntry {
    pub domain: String,
    pub selector: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainConfig {
    pub domains: Vec<DomainEntry>,
}

impl Default for DomainConfig {
    fn default() -> Self {
        DomainConfig::single(CLUSTER_LOCAL_DOMAIN)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SelectorValue {
    #[serde(default)]
    selector: BTreeMap<String, String>,
}

impl DomainConfig {
    /// One domain for every route (what local mode uses with `localhost`).
    pub fn single(domain: &str) -> Self {
        DomainConfig {
            domains: vec![DomainEntry {
                domain: domain.into(),
                selector: BTreeMap::new(),
            }],
        }
    }

    pub fn from_map(data: &BTreeMap<String, String>) -> Result<Self, ConfigErrors> {
        let mut r = Reader::new(NAME, data);
        let mut domains = Vec::new();
        for (domain, value) in data.iter().filter(|(k, _)| !k.starts_with('_')) {
            if let Err(e) = crate::naming::check_dns_subdomain(domain) {
                r.error(domain, value, format!("key must be a domain name: {e}"));
                continue;
            }
            let value = value.trim();
            let selector = if value.is_empty() {
                BTreeMap::new()
            } else {
                match serde_saphyr::from_str::<SelectorValue>(value) {
                    Ok(v) => v.selector,
                    Err(e) => {
                        r.error(
                            domain,
                            value,
                            format!("must be empty or `selector:` with labels: {e}"),
                        );
                        continue;
                    }
                }
            };
            domains.push(DomainEntry {
                domain: domain.clone(),
                selector,
            });
        }
        if domains.is_empty() {
            return r.finish(DomainConfig::default());
        }
        r.finish(DomainConfig { domains })
    }

    /// The domain for a route with these labels: the matching entry with the most selector
    /// labels wins (ties: the alphabetically first domain); cluster-local routes always get the
    /// cluster-local domain.
    pub fn domain_for(&self, labels: &BTreeMap<String, String>) -> &str {
        if labels.get(crate::labels::VISIBILITY).map(String::as_str)
            == Some(crate::labels::VISIBILITY_CLUSTER_LOCAL)
        {
            return CLUSTER_LOCAL_DOMAIN;
        }
        self.domains
            .iter()
            .filter(|d| d.selector.iter().all(|(k, v)| labels.get(k) == Some(v)))
            .max_by(|a, b| {
                a.selector
                    .len()
                    .cmp(&b.selector.len())
                    .then_with(|| b.domain.cmp(&a.domain))
            })
            .map_or(CLUSTER_LOCAL_DOMAIN, |d| d.domain.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::map;

    #[test]
    fn empty_map_is_cluster_local() {
        let c = DomainConfig::from_map(&map(&[("_example", "docs")]));
        assert_eq!(c, Ok(DomainConfig::default()));
        assert_eq!(
            DomainConfig::default().domain_for(&BTreeMap::new()),
            "svc.cluster.local"
        );
    }

    #[test]
    fn most_specific_selector_wins() {
        let c = DomainConfig::from_map(&map(&[
            ("example.com", ""),
            ("prod.example.com", "selector:\n  env: prod\n"),
            (
                "eu.prod.example.com",
                "selector:\n  env: prod\n  region: eu\n",
            ),
        ]))
        .unwrap_or_default();
        let labels = |pairs: &[(&str, &str)]| map(pairs);
        assert_eq!(c.domain_for(&labels(&[])), "example.com");
        assert_eq!(
            c.domain_for(&labels(&[("env", "prod")])),
            "prod.example.com"
        );
        assert_eq!(
            c.domain_for(&labels(&[("env", "prod"), ("region", "eu")])),
            "eu.prod.example.com"
        );
        assert_eq!(
            c.domain_for(&labels(&[
                ("env", "prod"),
                (crate::labels::VISIBILITY, "cluster-local")
            ])),
            "svc.cluster.local"
        );
    }

    #[test]
    fn bad_entries_are_reported() {
        let err = DomainConfig::from_map(&map(&[
            ("Not_A_Domain", ""),
            ("ok.com", "selector: [1, 2]"),
        ]));
        assert_eq!(err.map_err(|e| e.0.len()), Err(2));
    }
}
