//! The config maps shipped in config/core parse, and their values are the code's defaults,
//! so the files document the real behaviour; every key the code reads appears in its file.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on broken fixtures

use std::collections::BTreeMap;
use std::path::Path;

use serving_api::config::{
    AutoscalerConfig, DefaultsConfig, DeploymentConfig, DomainConfig, GcConfig, NetworkConfig,
};

#[derive(serde::Deserialize)]
struct ConfigMap {
    metadata: Meta,
    data: BTreeMap<String, String>,
}

#[derive(serde::Deserialize)]
struct Meta {
    name: String,
}

fn load(name: &str) -> BTreeMap<String, String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../config/core")
        .join(format!("{name}.yaml"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let cm: ConfigMap =
        serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(cm.metadata.name, name);
    cm.data
}

fn has_keys(data: &BTreeMap<String, String>, keys: &[&str]) {
    for k in keys {
        assert!(
            data.contains_key(*k),
            "key {k} is not documented in the shipped config map"
        );
    }
}

#[test]
fn shipped_config_maps_are_the_defaults() {
    let d = load("config-defaults");
    assert_eq!(DefaultsConfig::from_map(&d), Ok(DefaultsConfig::default()));
    has_keys(
        &d,
        &[
            "revision-timeout-seconds",
            "max-revision-timeout-seconds",
            "revision-idle-timeout-seconds",
            "container-concurrency",
            "container-concurrency-max-limit",
            "allow-container-concurrency-zero",
            "container-name-template",
            "enable-service-links",
        ],
    );

    let a = load("config-autoscaler");
    assert_eq!(
        AutoscalerConfig::from_map(&a),
        Ok(AutoscalerConfig::default())
    );
    has_keys(
        &a,
        &[
            "container-concurrency-target-percentage",
            "container-concurrency-target-default",
            "requests-per-second-target-default",
            "target-burst-capacity",
            "stable-window",
            "panic-window-percentage",
            "panic-threshold-percentage",
            "max-scale-up-rate",
            "max-scale-down-rate",
            "enable-scale-to-zero",
            "scale-to-zero-grace-period",
            "scale-to-zero-pod-retention-period",
            "pod-autoscaler-class",
            "activator-capacity",
            "initial-scale",
            "allow-zero-initial-scale",
            "min-scale",
            "max-scale",
            "max-scale-limit",
            "scale-down-delay",
        ],
    );

    let n = load("config-network");
    assert_eq!(NetworkConfig::from_map(&n), Ok(NetworkConfig::default()));
    has_keys(
        &n,
        &[
            "domain-template",
            "tag-template",
            "default-external-scheme",
            "ingress-class",
        ],
    );

    assert_eq!(
        DomainConfig::from_map(&load("config-domain")),
        Ok(DomainConfig::default())
    );

    let g = load("config-gc");
    assert_eq!(GcConfig::from_map(&g), Ok(GcConfig::default()));
    has_keys(
        &g,
        &[
            "retain-since-create-time",
            "retain-since-last-active-time",
            "min-non-active-revisions",
            "max-non-active-revisions",
        ],
    );

    let dep = load("config-deployment");
    assert_eq!(
        DeploymentConfig::from_map(&dep),
        Ok(DeploymentConfig::default())
    );
    has_keys(
        &dep,
        &[
            "queue-sidecar-image",
            "progress-deadline",
            "queue-sidecar-cpu-request",
        ],
    );
}
