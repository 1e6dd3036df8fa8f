//! `config-features`: Knative's feature flags. Every key Knative defines is read with Knative's
//! default; `enabled` turns a feature on everywhere, `disabled` off, and `allowed` lets a
//! Service, Configuration or Revision opt in with the annotation `features.knative.dev/{key}:
//! enabled` on its template. An unknown key is an error (a typo would otherwise do nothing).

use std::collections::BTreeMap;

use super::{ConfigErrors, Reader};

pub const NAME: &str = "config-features";

/// A flag's setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flag {
    Enabled,
    Disabled,
    Allowed,
}

/// Every key of Knative's config-features and its default.
pub const KEYS: &[(&str, Flag)] = &[
    ("multi-container", Flag::Enabled),
    ("multi-container-probing", Flag::Disabled),
    ("kubernetes.podspec-affinity", Flag::Disabled),
    (
        "kubernetes.podspec-topologyspreadconstraints",
        Flag::Disabled,
    ),
    ("kubernetes.podspec-dryrun", Flag::Allowed),
    ("kubernetes.podspec-hostaliases", Flag::Disabled),
    ("kubernetes.podspec-fieldref", Flag::Disabled),
    ("kubernetes.podspec-nodeselector", Flag::Disabled),
    ("kubernetes.podspec-runtimeclassname", Flag::Disabled),
    ("kubernetes.podspec-securitycontext", Flag::Disabled),
    ("kubernetes.podspec-shareprocessnamespace", Flag::Disabled),
    ("kubernetes.podspec-hostipc", Flag::Disabled),
    ("kubernetes.podspec-hostpid", Flag::Disabled),
    ("kubernetes.podspec-hostnetwork", Flag::Disabled),
    ("kubernetes.podspec-priorityclassname", Flag::Disabled),
    ("kubernetes.podspec-schedulername", Flag::Disabled),
    ("kubernetes.containerspec-addcapabilities", Flag::Disabled),
    ("kubernetes.podspec-tolerations", Flag::Disabled),
    ("kubernetes.podspec-volumes-emptydir", Flag::Enabled),
    ("kubernetes.podspec-volumes-hostpath", Flag::Disabled),
    ("kubernetes.podspec-volumes-csi", Flag::Disabled),
    ("kubernetes.podspec-persistent-volume-claim", Flag::Disabled),
    ("kubernetes.podspec-persistent-volume-write", Flag::Disabled),
    ("kubernetes.podspec-init-containers", Flag::Disabled),
    ("kubernetes.podspec-dnspolicy", Flag::Disabled),
    ("kubernetes.podspec-dnsconfig", Flag::Disabled),
    ("secure-pod-defaults", Flag::Disabled),
    ("tag-header-based-routing", Flag::Disabled),
    ("autodetect-http2", Flag::Disabled),
    ("queueproxy.mount-podinfo", Flag::Disabled),
];

/// The annotation prefix a template uses to opt in to an `allowed` feature.
pub const ANNOTATION_PREFIX: &str = "features.knative.dev/";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeaturesConfig {
    flags: BTreeMap<&'static str, Flag>,
}

impl Default for FeaturesConfig {
    fn default() -> Self {
        FeaturesConfig {
            flags: KEYS.iter().copied().collect(),
        }
    }
}

impl FeaturesConfig {
    pub fn from_map(data: &BTreeMap<String, String>) -> Result<Self, ConfigErrors> {
        let mut c = FeaturesConfig::default();
        let mut r = Reader::new(NAME, data);
        for (key, value) in data {
            if key.starts_with('_') {
                continue;
            }
            let Some((known, _)) = KEYS.iter().find(|(k, _)| k == key) else {
                r.error(
                    key,
                    value,
                    "is not a config-features key Knative defines (see config/core/config-features.yaml)",
                );
                continue;
            };
            let flag = match value.trim().to_ascii_lowercase().as_str() {
                "enabled" => Flag::Enabled,
                "disabled" => Flag::Disabled,
                "allowed" => Flag::Allowed,
                _ => {
                    r.error(
                        key,
                        value,
                        "must be \"enabled\", \"disabled\" or \"allowed\"",
                    );
                    continue;
                }
            };
            c.flags.insert(known, flag);
        }
        r.finish(c)
    }

    /// The flag's setting (Knative's default for a key it defines; disabled for any other).
    pub fn flag(&self, key: &str) -> Flag {
        self.flags.get(key).copied().unwrap_or(Flag::Disabled)
    }

    /// Whether `key` is on for an object whose template has `annotations`.
    pub fn on(&self, key: &str, annotations: Option<&BTreeMap<String, String>>) -> bool {
        match self.flag(key) {
            Flag::Enabled => true,
            Flag::Disabled => false,
            Flag::Allowed => annotations
                .and_then(|a| a.get(&format!("{ANNOTATION_PREFIX}{key}")))
                .is_some_and(|v| v.eq_ignore_ascii_case("enabled")),
        }
    }

    /// Turn `key` on (tests, `--config`).
    pub fn set(&mut self, key: &'static str, flag: Flag) {
        self.flags.insert(key, flag);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::map;

    #[test]
    fn knative_defaults_overrides_and_errors() {
        let c = FeaturesConfig::default();
        assert_eq!(c.flag("multi-container"), Flag::Enabled);
        assert_eq!(c.flag("tag-header-based-routing"), Flag::Disabled);
        assert_eq!(c.flag("kubernetes.podspec-dryrun"), Flag::Allowed);
        let c = FeaturesConfig::from_map(&map(&[
            ("tag-header-based-routing", "Enabled"),
            ("kubernetes.podspec-fieldref", "allowed"),
            ("_example", "anything"),
        ]))
        .unwrap();
        assert!(c.on("tag-header-based-routing", None));
        assert!(!c.on("kubernetes.podspec-fieldref", None));
        let opted: BTreeMap<String, String> = [(
            "features.knative.dev/kubernetes.podspec-fieldref".to_string(),
            "enabled".to_string(),
        )]
        .into();
        assert!(c.on("kubernetes.podspec-fieldref", Some(&opted)));
        let e = FeaturesConfig::from_map(&map(&[
            ("tag-header-routing", "enabled"),
            ("multi-container", "yes"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("tag-header-routing") && e.contains("multi-container"),
            "{e}"
        );
    }
}
