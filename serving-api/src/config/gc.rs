//! `config-gc`: how long non-active revisions are kept.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{ConfigErrors, Reader};

pub const NAME: &str = "config-gc";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcConfig {
    /// `retain-since-create-time`: keep a revision at least this long after creation (None: disabled).
    pub retain_since_create_time: Option<Duration>,
    /// `retain-since-last-active-time`: keep it this long after it last had traffic (None: disabled).
    pub retain_since_last_active_time: Option<Duration>,
    /// `min-non-active-revisions`: always keep this many non-active revisions.
    pub min_non_active_revisions: u32,
    /// `max-non-active-revisions`: never keep more than this many (None: unlimited).
    pub max_non_active_revisions: Option<u32>,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            retain_since_create_time: Some(Duration::from_secs(48 * 3600)),
            retain_since_last_active_time: Some(Duration::from_secs(15 * 3600)),
            min_non_active_revisions: 20,
            max_non_active_revisions: Some(1000),
        }
    }
}

impl GcConfig {
    pub fn from_map(data: &BTreeMap<String, String>) -> Result<Self, ConfigErrors> {
        let mut c = GcConfig::default();
        let mut r = Reader::new(NAME, data);
        for (key, target) in [
            ("retain-since-create-time", &mut c.retain_since_create_time),
            (
                "retain-since-last-active-time",
                &mut c.retain_since_last_active_time,
            ),
        ] {
            match r.raw(key) {
                None => {}
                Some(v) if v.eq_ignore_ascii_case("disabled") => *target = None,
                Some(v) => match crate::duration::parse(v) {
                    Ok(d) => *target = Some(d),
                    Err(e) => r.error(key, v, format!("must be a duration or \"disabled\": {e}")),
                },
            }
        }
        r.number(
            "min-non-active-revisions",
            &mut c.min_non_active_revisions,
            0,
            u32::MAX,
        );
        match r.raw("max-non-active-revisions") {
            None => {}
            Some(v) if v.eq_ignore_ascii_case("disabled") || v == "-1" => {
                c.max_non_active_revisions = None
            }
            Some(v) => match v.parse::<u32>() {
                Ok(n) => c.max_non_active_revisions = Some(n),
                Err(_) => r.error(
                    "max-non-active-revisions",
                    v,
                    "must be a number at least 0, -1 or \"disabled\"",
                ),
            },
        }
        if let Some(max) = c.max_non_active_revisions
            && max < c.min_non_active_revisions
        {
            r.error(
                "max-non-active-revisions",
                &max.to_string(),
                format!(
                    "must be at least min-non-active-revisions ({})",
                    c.min_non_active_revisions
                ),
            );
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
        assert_eq!(GcConfig::from_map(&map(&[])), Ok(GcConfig::default()));
    }

    #[test]
    fn disabled_values() {
        let c = GcConfig::from_map(&map(&[
            ("retain-since-create-time", "disabled"),
            ("max-non-active-revisions", "-1"),
        ]));
        assert_eq!(c.as_ref().map(|c| c.retain_since_create_time), Ok(None));
        assert_eq!(c.map(|c| c.max_non_active_revisions), Ok(None));
    }

    #[test]
    fn bad_values() {
        let err = GcConfig::from_map(&map(&[
            ("retain-since-create-time", "soon"),
            ("min-non-active-revisions", "30"),
            ("max-non-active-revisions", "10"),
        ]));
        let keys: Vec<String> = err
            .err()
            .map(|e| e.0.into_iter().map(|e| e.key).collect())
            .unwrap_or_default();
        assert_eq!(
            keys,
            ["retain-since-create-time", "max-non-active-revisions"]
        );
    }
}
