//! Server-side printing: the `Table` kubectl asks for (`Accept: ...;as=Table;g=meta.k8s.io`),
//! with the CRDs' printer columns (evaluated by a JSONPath subset: `.a.b`, `['k\.e\.y']`,
//! `[n]`, `[*]`, `[?(@.f=='v')]`) and the core kinds' usual ones, so `kubectl get ksvc` looks
//! as it does on a cluster.

use serde_json::{Value, json};

use crate::catalog::Resource;

/// What each row carries besides its cells (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Include {
    None,
    #[default]
    Metadata,
    Object,
}

impl Include {
    pub fn parse(v: Option<&str>) -> Include {
        match v {
            Some("None") => Include::None,
            Some("Object") => Include::Object,
            _ => Include::Metadata,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
    All,
    Filter(Vec<String>, String),
}

fn parse_path(path: &str) -> Option<Vec<Step>> {
    let mut steps = Vec::new();
    let b = path.trim().trim_start_matches('{').trim_end_matches('}');
    let chars: Vec<char> = b.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '.' => {
                i += 1;
                let start = i;
                while i < chars.len() && chars[i] != '.' && chars[i] != '[' {
                    i += 1;
                }
                if i > start {
                    steps.push(Step::Key(chars[start..i].iter().collect()));
                }
            }
            '[' => {
                let end = (i..chars.len()).find(|&j| {
                    chars[j] == ']'
                        && (j + 1 == chars.len() || chars[j + 1] == '.' || chars[j + 1] == '[')
                })?;
                let inner: String = chars[i + 1..end].iter().collect();
                let inner = inner.trim();
                if inner == "*" {
                    steps.push(Step::All);
                } else if let Some(f) = inner.strip_prefix("?(@.").and_then(|f| f.strip_suffix(')'))
                {
                    let (field, value) = f.split_once("==")?;
                    let value = value
                        .trim()
                        .trim_matches(|c| c == '\'' || c == '"')
                        .to_string();
                    steps.push(Step::Filter(
                        field.trim().split('.').map(str::to_string).collect(),
                        value,
                    ));
                } else if (inner.starts_with('\'') && inner.ends_with('\''))
                    || (inner.starts_with('"') && inner.ends_with('"'))
                {
                    let key = &inner[1..inner.len() - 1];
                    steps.push(Step::Key(key.replace("\\.", ".")));
                } else {
                    steps.push(Step::Index(inner.parse().ok()?));
                }
                i = end + 1;
            }
            _ => return None,
        }
    }
    Some(steps)
}

/// The values a JSONPath (the subset printer columns use) selects in `obj`.
pub fn select<'a>(obj: &'a Value, path: &str) -> Vec<&'a Value> {
    let Some(steps) = parse_path(path) else {
        return Vec::new();
    };
    let mut current = vec![obj];
    for step in steps {
        let mut next = Vec::new();
        for v in current {
            match &step {
                Step::Key(k) => {
                    if let Some(x) = v.get(k) {
                        next.push(x);
                    }
                }
                Step::Index(n) => {
                    if let Some(x) = v.get(n) {
                        next.push(x);
                    }
                }
                Step::All => {
                    if let Some(a) = v.as_array() {
                        next.extend(a.iter());
                    }
                }
                Step::Filter(field, want) => {
                    if let Some(a) = v.as_array() {
                        next.extend(a.iter().filter(|item| {
                            let mut x = *item;
                            for f in field {
                                x = &x[f];
                            }
                            x.as_str() == Some(want.as_str())
                                || (!x.is_string()
                                    && !x.is_null()
                                    && want.parse::<Value>().ok().as_ref() == Some(x))
                        }));
                    }
                }
            }
        }
        current = next;
    }
    current
}

/// kubectl's way of saying how long ago: `45s`, `3m12s`, `5h30m`, `3d4h`, `2y10d`.
pub fn human_age(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    let s = seconds.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        if s % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", s % 60)
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        if h % 24 == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{}h", h % 24)
        }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else if d < 365 * 8 {
        format!("{}y{}d", d / 365, d % 365)
    } else {
        format!("{}y", d / 365)
    }
}

fn age(ts: &Value, now: jiff::Timestamp) -> String {
    ts.as_str()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map_or("<unknown>".to_string(), |t| {
            human_age(now.as_second() - t.as_second())
        })
}

fn cell(v: Option<&&Value>, type_: &str) -> Value {
    match v {
        None | Some(Value::Null) => Value::Null,
        Some(Value::String(s)) => json!(s),
        Some(v) if type_ == "integer" || type_ == "number" || type_ == "boolean" => (**v).clone(),
        Some(v) => json!(v.to_string()),
    }
}

fn count_keys(obj: &Value) -> Value {
    let n = |k: &str| obj[k].as_object().map_or(0, |m| m.len());
    json!(n("data") + n("binaryData"))
}

/// The Table of `objects` (of resource `r`); `rv`: the list's resourceVersion.
pub fn table(r: &Resource, objects: &[Value], include: Include, rv: Option<u64>) -> Value {
    let now = jiff::Timestamp::now();
    let mut columns = Vec::new();
    let event = r.group.is_empty() && r.kind == "Event";
    if event {
        columns.push(json!({"name": "Last Seen", "type": "string", "format": "", "description": "When it last happened.", "priority": 0}));
    } else {
        columns.push(json!({"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0}));
    }
    for c in &r.columns {
        columns.push(json!({"name": c.name, "type": c.type_, "format": "", "description": c.description, "priority": c.priority}));
    }
    // Custom resources with printer columns show those alone (as a cluster prints them).
    let aged = !event && (!r.custom || r.columns.is_empty());
    if aged {
        columns.push(json!({"name": "Age", "type": "string", "format": "", "description": "Time since creation.", "priority": 0}));
    }
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut cells = Vec::new();
            if event {
                let last = if o["lastTimestamp"].is_string() {
                    &o["lastTimestamp"]
                } else if o["eventTime"].is_string() {
                    &o["eventTime"]
                } else {
                    &o["metadata"]["creationTimestamp"]
                };
                cells.push(json!(age(last, now)));
            } else {
                cells.push(o["metadata"]["name"].clone());
            }
            for c in &r.columns {
                let v = if !r.custom && c.name == "Data" {
                    count_keys(o)
                } else if event && c.name == "Object" {
                    json!(format!(
                        "{}/{}",
                        o["involvedObject"]["kind"]
                            .as_str()
                            .unwrap_or("")
                            .to_ascii_lowercase(),
                        o["involvedObject"]["name"].as_str().unwrap_or("")
                    ))
                } else {
                    cell(select(o, &c.json_path).first(), &c.type_)
                };
                cells.push(v);
            }
            if aged {
                cells.push(json!(age(&o["metadata"]["creationTimestamp"], now)));
            }
            let mut row = json!({"cells": cells});
            match include {
                Include::None => {}
                Include::Object => row["object"] = o.clone(),
                Include::Metadata => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": o["metadata"],
                    })
                }
            }
            row
        })
        .collect();
    let mut meta = json!({});
    if let Some(rv) = rv {
        meta["resourceVersion"] = json!(rv.to_string());
    }
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "columnDefinitions": columns, "rows": rows})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printer_column_paths() {
        let o = json!({
            "metadata": {"labels": {"serving.knative.dev/configuration": "hello"}},
            "status": {"url": "http://x", "actualReplicas": 2, "conditions": [
                {"type": "ConfigurationsReady", "status": "True"},
                {"type": "Ready", "status": "False", "reason": "RevisionFailed"}
            ]}
        });
        assert_eq!(select(&o, ".status.url"), [&json!("http://x")]);
        assert_eq!(
            select(&o, ".status.conditions[?(@.type=='Ready')].reason"),
            [&json!("RevisionFailed")]
        );
        assert_eq!(
            select(
                &o,
                ".metadata.labels['serving\\.knative\\.dev/configuration']"
            ),
            [&json!("hello")]
        );
        assert_eq!(select(&o, ".status.conditions[*].type").len(), 2);
        assert_eq!(
            select(&o, ".status.conditions[1].status"),
            [&json!("False")]
        );
        assert!(select(&o, ".status.missing").is_empty());
    }

    #[test]
    fn ages_as_kubectl_prints_them() {
        for (s, want) in [
            (5, "5s"),
            (119, "119s"),
            (150, "2m30s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (30 * 3600, "30h"),
            (3 * 86400 + 3600, "3d1h"),
            (40 * 86400, "40d"),
            (800 * 86400, "2y70d"),
        ] {
            assert_eq!(human_age(s), want);
        }
    }
}
