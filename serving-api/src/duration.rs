//! Go-style durations (`60s`, `1m30s`, `1.5h`, `500ms`) as Knative's config maps and annotations
//! write them.

use std::time::Duration;

/// Parse a Go duration string. Negative durations are refused: no Knative key accepts one.
pub fn parse(input: &str) -> Result<Duration, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.starts_with('-') {
        return Err(format!("{input:?} is negative"));
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_end == 0 {
            return Err(format!(
                "{input:?} is not a duration (expected e.g. 60s, 1m30s, 500ms)"
            ));
        }
        let value: f64 = rest[..num_end]
            .parse()
            .map_err(|_| format!("{input:?} has a bad number {:?}", &rest[..num_end]))?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        rest = &rest[unit_end..];
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => return Err(format!("{input:?} is missing a unit (ns, us, ms, s, m, h)")),
            other => return Err(format!("{input:?} has an unknown unit {other:?}")),
        };
        total += value * scale;
    }
    if !total.is_finite() || total > 1e10 {
        return Err(format!("{input:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(total))
}

/// Format a duration the way Go's `time.Duration.String()` does for whole units (`1m0s`, `30s`).
pub fn format(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    if d.subsec_nanos() != 0 {
        if d < Duration::from_secs(1) {
            let ms = d.as_secs_f64() * 1000.0;
            if ms.fract() == 0.0 {
                return format!("{ms}ms");
            }
        }
        return format!("{}s", d.as_secs_f64());
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        let rows = [
            ("60s", 60_000),
            ("1m30s", 90_000),
            ("1.5h", 5_400_000),
            ("500ms", 500),
            ("0", 0),
            ("0s", 0),
            ("1h0m0s", 3_600_000),
        ];
        for (input, ms) in rows {
            assert_eq!(parse(input).map(|d| d.as_millis()), Ok(ms), "{input}");
        }
    }

    #[test]
    fn refuses_bad_durations() {
        for input in ["", "60", "-1s", "1x", "s", "1..5s", "abc"] {
            assert!(parse(input).is_err(), "{input} should fail");
        }
    }

    #[test]
    fn formats_like_go() {
        assert_eq!(format(Duration::from_secs(60)), "1m0s");
        assert_eq!(format(Duration::from_secs(30)), "30s");
        assert_eq!(format(Duration::from_secs(3600 * 48)), "48h0m0s");
        assert_eq!(format(Duration::from_millis(500)), "500ms");
        assert_eq!(format(Duration::ZERO), "0s");
    }
}
