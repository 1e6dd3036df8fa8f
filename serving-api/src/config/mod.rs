//! The Knative config maps, parsed from their string maps into typed configuration.
//!
//! Each config starts from its defaults, takes overrides from the map, and reports every bad key
//! at once with its value and the allowed range. Keys starting with `_` (Knative's `_example`
//! block) are documentation and ignored.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

pub mod autoscaler;
pub mod defaults;
pub mod deployment;
pub mod domain;
pub mod features;
pub mod gc;
pub mod network;

pub use autoscaler::AutoscalerConfig;
pub use defaults::DefaultsConfig;
pub use deployment::DeploymentConfig;
pub use domain::DomainConfig;
pub use features::FeaturesConfig;
pub use gc::GcConfig;
pub use network::NetworkConfig;

/// One rejected key of a config map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub config_map: &'static str,
    pub key: String,
    pub value: String,
    pub rule: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}={:?}: {}",
            self.config_map, self.key, self.value, self.rule
        )
    }
}

/// Every rejected key of a config map.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
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

/// Reads typed values from a config map, collecting errors instead of stopping at the first.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    name: &'static str,
    data: &'a BTreeMap<String, String>,
    errors: Vec<ConfigError>,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(name: &'static str, data: &'a BTreeMap<String, String>) -> Self {
        Reader {
            name,
            data,
            errors: Vec::new(),
        }
    }

    pub(crate) fn raw(&self, key: &str) -> Option<&'a str> {
        self.data.get(key).map(|s| s.trim())
    }

    pub(crate) fn error(&mut self, key: &str, value: &str, rule: impl Into<String>) {
        self.errors.push(ConfigError {
            config_map: self.name,
            key: key.to_string(),
            value: value.to_string(),
            rule: rule.into(),
        });
    }

    /// A value parsed with `FromStr`, checked against `[min, max]`.
    pub(crate) fn number<T>(&mut self, key: &str, target: &mut T, min: T, max: T)
    where
        T: FromStr + PartialOrd + Copy + fmt::Display,
    {
        let Some(raw) = self.raw(key) else { return };
        match raw.parse::<T>() {
            Ok(v) if v >= min && v <= max => *target = v,
            Ok(_) => self.error(key, raw, format!("must be between {min} and {max}")),
            Err(_) => self.error(key, raw, "must be a number"),
        }
    }

    pub(crate) fn boolean(&mut self, key: &str, target: &mut bool) {
        let Some(raw) = self.raw(key) else { return };
        match raw.to_ascii_lowercase().as_str() {
            "true" => *target = true,
            "false" => *target = false,
            _ => self.error(key, raw, "must be true or false"),
        }
    }

    pub(crate) fn duration(
        &mut self,
        key: &str,
        target: &mut Duration,
        min: Duration,
        max: Duration,
    ) {
        let Some(raw) = self.raw(key) else { return };
        match crate::duration::parse(raw) {
            Ok(d) if d >= min && d <= max => *target = d,
            Ok(_) => self.error(
                key,
                raw,
                format!(
                    "must be between {} and {}",
                    crate::duration::format(min),
                    crate::duration::format(max)
                ),
            ),
            Err(e) => self.error(key, raw, e),
        }
    }

    pub(crate) fn string(&mut self, key: &str, target: &mut String) {
        if let Some(raw) = self.raw(key) {
            *target = raw.to_string();
        }
    }

    pub(crate) fn finish<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(ConfigErrors(self.errors))
        }
    }
}

#[cfg(test)]
pub(crate) fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
