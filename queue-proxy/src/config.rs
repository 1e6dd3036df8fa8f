//! Configuration from environment variables, with Knative's names where they exist.
//! Every bad variable is reported at once with its name, value and what is allowed.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use crate::probe::ProbeSpec;

/// Largest containerConcurrency the API allows.
pub const MAX_CONTAINER_CONCURRENCY: usize = 1000;
/// Knative's queue depth per concurrency slot.
pub const QUEUE_DEPTH_PER_SLOT: usize = 10;

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub namespace: String,
    pub service: String,
    pub configuration: String,
    pub revision: String,
    /// This instance's name (pod name), reported in stats.
    pub pod: String,
    /// Address all listeners bind to (`QUEUE_BIND_ADDRESS`, default 0.0.0.0; local mode uses
    /// 127.0.0.1). Ports may be 0 to pick a free one; the bound addresses are printed.
    pub bind: IpAddr,
    pub serving_port: u16,
    pub admin_port: u16,
    pub stats_port: u16,
    pub user_metrics_port: u16,
    /// The user container (`USER_HOST`, default 127.0.0.1; `USER_PORT`).
    pub user_host: IpAddr,
    pub user_port: u16,
    /// `USER_PROTOCOL`: `http1` (default) or `h2c` (HTTP/2 with prior knowledge to the app).
    pub h2c: bool,
    /// `CONTAINER_CONCURRENCY`: requests allowed at the app at once; 0 = unlimited.
    pub container_concurrency: usize,
    /// `QUEUE_DEPTH`: requests that may wait for a slot (default 10 × CC).
    pub queue_depth: usize,
    /// `REVISION_TIMEOUT_SECONDS`: the whole request, response included.
    pub timeout: Duration,
    /// `REVISION_RESPONSE_START_TIMEOUT_SECONDS`: until the response headers.
    pub response_start_timeout: Duration,
    /// `REVISION_IDLE_TIMEOUT_SECONDS`: longest silence from the app; 0 = none.
    pub idle_timeout: Option<Duration>,
    /// `SERVING_READINESS_PROBE`: the user container's readiness probe as JSON (Kubernetes'
    /// Probe); empty = a TCP probe on the user port.
    pub readiness_probe: ProbeSpec,
    /// `DRAIN_QUIET_PERIOD`: after SIGTERM, exit once no request arrived for this long
    /// (Go duration, default 30s).
    pub drain_quiet_period: Duration,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`: where to export traces; unset = no export.
    pub otlp_endpoint: Option<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub errors: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration:")?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

struct Env<'a> {
    vars: &'a HashMap<String, String>,
    errors: Vec<String>,
}

impl Env<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.vars
            .get(key)
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
    }
    fn string(&self, key: &str, default: &str) -> String {
        self.get(key).unwrap_or(default).to_string()
    }
    fn bad(&mut self, key: &str, value: &str, rule: &str) {
        self.errors.push(format!("{key}={value:?}: {rule}"));
    }
    fn port(&mut self, key: &str, default: Option<u16>) -> u16 {
        match (self.get(key), default) {
            (None, Some(d)) => d,
            (None, None) => {
                self.errors
                    .push(format!("{key} is required: the port number"));
                0
            }
            (Some(v), _) => match v.parse::<u16>() {
                Ok(p) => p,
                Err(_) => {
                    let v = v.to_string();
                    self.bad(key, &v, "must be a port number between 0 and 65535");
                    0
                }
            },
        }
    }
    fn ip(&mut self, key: &str, default: &str) -> IpAddr {
        let v = self.string(key, default);
        v.parse().unwrap_or_else(|_| {
            self.bad(key, &v, "must be an IP address");
            IpAddr::from([127, 0, 0, 1])
        })
    }
    fn count(&mut self, key: &str, default: usize, max: usize) -> usize {
        match self.get(key) {
            None => default,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if n <= max => n,
                _ => {
                    let v = v.to_string();
                    self.bad(
                        key,
                        &v,
                        &format!("must be a whole number between 0 and {max}"),
                    );
                    default
                }
            },
        }
    }
    /// Seconds; fractions allowed (tests use sub-second timeouts).
    fn seconds(&mut self, key: &str, default: Duration) -> Duration {
        match self.get(key) {
            None => default,
            Some(v) => match v.parse::<f64>() {
                Ok(s) if s.is_finite() && (0.0..=86_400.0).contains(&s) => {
                    Duration::from_secs_f64(s)
                }
                _ => {
                    let v = v.to_string();
                    self.bad(key, &v, "must be a number of seconds between 0 and 86400");
                    default
                }
            },
        }
    }
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Config::from_vars(&std::env::vars().collect())
    }

    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let mut e = Env {
            vars,
            errors: Vec::new(),
        };
        let revision = e.string("SERVING_REVISION", "");
        let pod = e
            .get("SERVING_POD")
            .map(str::to_string)
            .unwrap_or_else(|| format!("{revision}-{}", std::process::id()));
        let h2c = match e.get("USER_PROTOCOL").unwrap_or("http1") {
            "http1" => false,
            "h2c" => true,
            other => {
                let other = other.to_string();
                e.bad("USER_PROTOCOL", &other, "must be http1 or h2c");
                false
            }
        };
        let cc = e.count("CONTAINER_CONCURRENCY", 0, MAX_CONTAINER_CONCURRENCY);
        let queue_depth = e.count("QUEUE_DEPTH", cc * QUEUE_DEPTH_PER_SLOT, usize::MAX);
        let timeout = e.seconds("REVISION_TIMEOUT_SECONDS", Duration::from_secs(300));
        if timeout.is_zero() {
            e.bad("REVISION_TIMEOUT_SECONDS", "0", "must be more than 0");
        }
        let response_start_timeout = e.seconds("REVISION_RESPONSE_START_TIMEOUT_SECONDS", timeout);
        let response_start_timeout = if response_start_timeout.is_zero() {
            timeout
        } else {
            response_start_timeout.min(timeout)
        };
        let idle = e.seconds("REVISION_IDLE_TIMEOUT_SECONDS", Duration::ZERO);
        let readiness_probe = match e.get("SERVING_READINESS_PROBE") {
            None => ProbeSpec::default(),
            Some(json) => match serde_json::from_str::<ProbeSpec>(json) {
                Ok(p) => p,
                Err(err) => {
                    let json = json.to_string();
                    e.bad(
                        "SERVING_READINESS_PROBE",
                        &json,
                        &format!("must be a Kubernetes Probe as JSON: {err}"),
                    );
                    ProbeSpec::default()
                }
            },
        };
        let drain_quiet_period = match e.get("DRAIN_QUIET_PERIOD") {
            None => Duration::from_secs(30),
            Some(v) => match parse_go_duration(v) {
                Some(d) => d,
                None => {
                    let v = v.to_string();
                    e.bad(
                        "DRAIN_QUIET_PERIOD",
                        &v,
                        "must be a duration such as 30s or 500ms",
                    );
                    Duration::from_secs(30)
                }
            },
        };
        let cfg = Config {
            namespace: e.string("SERVING_NAMESPACE", ""),
            service: e.string("SERVING_SERVICE", ""),
            configuration: e.string("SERVING_CONFIGURATION", ""),
            revision,
            pod,
            bind: e.ip("QUEUE_BIND_ADDRESS", "0.0.0.0"),
            serving_port: e.port("QUEUE_SERVING_PORT", Some(8012)),
            admin_port: e.port("QUEUE_ADMIN_PORT", Some(8022)),
            stats_port: e.port("QUEUE_METRICS_PORT", Some(9090)),
            user_metrics_port: e.port("USER_METRICS_PORT", Some(9091)),
            user_host: e.ip("USER_HOST", "127.0.0.1"),
            user_port: e.port("USER_PORT", None),
            h2c,
            container_concurrency: cc,
            queue_depth,
            timeout,
            response_start_timeout,
            idle_timeout: (!idle.is_zero()).then_some(idle),
            readiness_probe,
            drain_quiet_period,
            otlp_endpoint: e.get("OTEL_EXPORTER_OTLP_ENDPOINT").map(str::to_string),
        };
        if cfg.user_port == 0 && e.get("USER_PORT").is_some() {
            e.bad("USER_PORT", "0", "must be the app's port, not 0");
        }
        if e.errors.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError { errors: e.errors })
        }
    }
}

/// `30s`, `500ms`, `1m30s`, `2h`.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut rest = s.trim();
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let value: f64 = rest.get(..n)?.parse().ok()?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..u] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[u..];
        total += value * scale;
    }
    total.is_finite().then(|| Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults() {
        let c = Config::from_vars(&vars(&[("USER_PORT", "8080"), ("SERVING_REVISION", "r")]))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (
                c.serving_port,
                c.admin_port,
                c.stats_port,
                c.user_metrics_port
            ),
            (8012, 8022, 9090, 9091)
        );
        assert_eq!((c.container_concurrency, c.queue_depth), (0, 0));
        assert_eq!(
            (c.timeout, c.response_start_timeout, c.idle_timeout),
            (Duration::from_secs(300), Duration::from_secs(300), None)
        );
        assert_eq!(c.drain_quiet_period, Duration::from_secs(30));
        assert!(!c.h2c);
    }

    #[test]
    fn queue_depth_follows_concurrency() {
        let c = Config::from_vars(&vars(&[
            ("USER_PORT", "8080"),
            ("CONTAINER_CONCURRENCY", "4"),
        ]))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((c.container_concurrency, c.queue_depth), (4, 40));
    }

    #[test]
    fn every_bad_variable_is_named() {
        let err = Config::from_vars(&vars(&[
            ("CONTAINER_CONCURRENCY", "lots"),
            ("REVISION_TIMEOUT_SECONDS", "-1"),
            ("USER_PROTOCOL", "h3"),
            ("QUEUE_SERVING_PORT", "99999"),
            ("SERVING_READINESS_PROBE", "{not json"),
            ("DRAIN_QUIET_PERIOD", "soon"),
        ]))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        for want in [
            "USER_PORT is required",
            "CONTAINER_CONCURRENCY=\"lots\": must be a whole number between 0 and 1000",
            "REVISION_TIMEOUT_SECONDS=\"-1\"",
            "USER_PROTOCOL=\"h3\": must be http1 or h2c",
            "QUEUE_SERVING_PORT=\"99999\"",
            "SERVING_READINESS_PROBE=\"{not json\": must be a Kubernetes Probe",
            "DRAIN_QUIET_PERIOD=\"soon\"",
        ] {
            assert!(err.contains(want), "missing {want:?} in:\n{err}");
        }
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("30"), None);
    }
}
