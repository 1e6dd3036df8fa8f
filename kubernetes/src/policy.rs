//! The controller's error policy and its reconcile metrics.
//!
//! An error is *transient* (a conflict, a timeout, the API server busy or unreachable): the
//! object comes back after a back-off that doubles per consecutive failure of that object
//! (500 ms up to 5 min, with jitter), reset by its next success. Or it is *permanent* (the API
//! refuses the request as invalid or forbidden, or the object cannot be built): retrying soon
//! cannot help, so it is reported — a `Ready` False condition naming the reason on the object's
//! status, and a Warning Event — and looked at again only after the longest back-off (or at
//! once when the object changes). Nothing is hot-looped.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// How an error is treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Transient,
    /// The reason to report (`Forbidden`, `Invalid`, `BadRequest`, `BuildFailed`, ...).
    Permanent(&'static str),
}

/// The class of an API status code (None when the request never got an answer).
pub fn class_of_status(code: Option<u16>) -> Class {
    match code {
        Some(400) => Class::Permanent("BadRequest"),
        Some(401) => Class::Permanent("Unauthorized"),
        Some(403) => Class::Permanent("Forbidden"),
        Some(405) => Class::Permanent("MethodNotAllowed"),
        Some(413) => Class::Permanent("RequestEntityTooLarge"),
        Some(415) => Class::Permanent("UnsupportedMediaType"),
        Some(422) => Class::Permanent("Invalid"),
        _ => Class::Transient,
    }
}

pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The delay before the `failures`-th retry (1 = the first): doubling from 500 ms, at most
/// 5 min, less up to a tenth of jitter (`jitter` in [0, 1)) so that objects failing together
/// do not come back together.
pub fn backoff(failures: u32, jitter: f64) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    let base = FIRST_BACKOFF.saturating_mul(1u32 << exp).min(MAX_BACKOFF);
    base.mul_f64(1.0 - 0.1 * jitter.clamp(0.0, 1.0))
}

#[derive(Default, Debug)]
struct Histogram {
    buckets: Vec<u64>,
    count: u64,
    sum: f64,
}

/// Upper bounds of the latency histogram, seconds.
const BOUNDS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// Consecutive failures per object, and reconcile counts and latencies per kind and result.
#[derive(Default, Debug)]
pub struct Policy {
    failures: Mutex<BTreeMap<(String, String, String), u32>>,
    counts: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    latency: Mutex<BTreeMap<&'static str, Histogram>>,
}

/// The result label of a reconcile.
pub fn result_label(class: Option<Class>) -> &'static str {
    match class {
        None => "success",
        Some(Class::Transient) => "transient_error",
        Some(Class::Permanent(_)) => "permanent_error",
    }
}

impl Policy {
    /// Record one reconcile of `kind` (`None`: it succeeded) that took `took`; a success
    /// resets the object's failures.
    pub fn observe(
        &self,
        kind: &'static str,
        key: (String, String),
        took: Duration,
        class: Option<Class>,
    ) {
        if let Ok(mut c) = self.counts.lock() {
            *c.entry((kind, result_label(class))).or_default() += 1;
        }
        if let Ok(mut l) = self.latency.lock() {
            let h = l.entry(kind).or_default();
            if h.buckets.is_empty() {
                h.buckets = vec![0; BOUNDS.len()];
            }
            let s = took.as_secs_f64();
            for (i, b) in BOUNDS.iter().enumerate() {
                if s <= *b {
                    h.buckets[i] += 1;
                }
            }
            h.count += 1;
            h.sum += s;
        }
        if class.is_none()
            && let Ok(mut f) = self.failures.lock()
        {
            f.remove(&(kind.to_string(), key.0, key.1));
        }
    }

    /// One more failure of the object; how long until it is looked at again.
    pub fn failed(&self, kind: &str, key: (String, String), class: Class) -> Duration {
        let n = self
            .failures
            .lock()
            .map(|mut f| {
                let n = f.entry((kind.to_string(), key.0, key.1)).or_default();
                *n += 1;
                *n
            })
            .unwrap_or(1);
        match class {
            Class::Transient => backoff(n, fastrand::f64()),
            Class::Permanent(_) => MAX_BACKOFF,
        }
    }

    /// Prometheus text: `ebb_controller_reconcile_total{kind,result}` and
    /// `ebb_controller_reconcile_duration_seconds{kind}` (histogram).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP ebb_controller_reconcile_total Reconciles by kind and result (success, transient_error, permanent_error).\n# TYPE ebb_controller_reconcile_total counter\n");
        if let Ok(c) = self.counts.lock() {
            for ((kind, result), n) in c.iter() {
                let _ = writeln!(
                    out,
                    "ebb_controller_reconcile_total{{kind=\"{kind}\",result=\"{result}\"}} {n}"
                );
            }
        }
        out.push_str("# HELP ebb_controller_reconcile_duration_seconds Time one reconcile took, by kind.\n# TYPE ebb_controller_reconcile_duration_seconds histogram\n");
        if let Ok(l) = self.latency.lock() {
            for (kind, h) in l.iter() {
                for (b, n) in BOUNDS.iter().zip(&h.buckets) {
                    let _ = writeln!(
                        out,
                        "ebb_controller_reconcile_duration_seconds_bucket{{kind=\"{kind}\",le=\"{b}\"}} {n}"
                    );
                }
                let _ = writeln!(
                    out,
                    "ebb_controller_reconcile_duration_seconds_bucket{{kind=\"{kind}\",le=\"+Inf\"}} {}",
                    h.count
                );
                let _ = writeln!(
                    out,
                    "ebb_controller_reconcile_duration_seconds_sum{{kind=\"{kind}\"}} {}",
                    h.sum
                );
                let _ = writeln!(
                    out,
                    "ebb_controller_reconcile_duration_seconds_count{{kind=\"{kind}\"}} {}",
                    h.count
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_ceiling_with_jitter_below() {
        assert_eq!(backoff(1, 0.0), Duration::from_millis(500));
        assert_eq!(backoff(2, 0.0), Duration::from_secs(1));
        assert_eq!(backoff(4, 0.0), Duration::from_secs(4));
        assert_eq!(backoff(30, 0.0), MAX_BACKOFF);
        assert!(backoff(3, 0.99) < backoff(3, 0.0));
        assert!(backoff(3, 0.99) >= Duration::from_millis(1800));
    }

    #[test]
    fn statuses_are_classed_as_the_api_means_them() {
        assert_eq!(class_of_status(Some(403)), Class::Permanent("Forbidden"));
        assert_eq!(class_of_status(Some(422)), Class::Permanent("Invalid"));
        for transient in [Some(409), Some(429), Some(500), Some(503), None] {
            assert_eq!(
                class_of_status(transient),
                Class::Transient,
                "{transient:?}"
            );
        }
    }

    #[test]
    fn failures_grow_per_object_and_a_success_resets_them() {
        let p = Policy::default();
        let key = || ("default".to_string(), "hello".to_string());
        let first = p.failed("Service", key(), Class::Transient);
        let second = p.failed("Service", key(), Class::Transient);
        assert!(second > first, "{first:?} {second:?}");
        // Another object starts from the beginning.
        assert!(
            p.failed(
                "Service",
                ("default".into(), "other".into()),
                Class::Transient
            ) <= FIRST_BACKOFF
        );
        p.observe("Service", key(), Duration::from_millis(3), None);
        assert!(p.failed("Service", key(), Class::Transient) <= FIRST_BACKOFF);
        assert_eq!(
            p.failed("Route", key(), Class::Permanent("Forbidden")),
            MAX_BACKOFF
        );
        p.observe(
            "Route",
            key(),
            Duration::from_millis(30),
            Some(Class::Permanent("Forbidden")),
        );
        let text = p.encode();
        assert!(
            text.contains("ebb_controller_reconcile_total{kind=\"Service\",result=\"success\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "ebb_controller_reconcile_total{kind=\"Route\",result=\"permanent_error\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "ebb_controller_reconcile_duration_seconds_bucket{kind=\"Route\",le=\"0.05\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "ebb_controller_reconcile_duration_seconds_bucket{kind=\"Route\",le=\"0.025\"} 0"
            ),
            "{text}"
        );
    }
}
