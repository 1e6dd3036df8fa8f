//! Field validation (`fieldValidation=Strict|Warn|Ignore`): fields the schema does not know,
//! and fields given twice, found with their paths (`spec.template.spec.containers[0].x`) as
//! the Kubernetes API reports them. `Ignore` (and `Warn`) prune unknown fields.

use std::cell::RefCell;
use std::collections::HashSet;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// What to do with unknown and duplicate fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Validation {
    /// Refuse the request (kubectl's default).
    #[default]
    Strict,
    /// Accept, pruned, with a `Warning` header per field.
    Warn,
    /// Accept, pruned, silently (the caller asked for it).
    Ignore,
}

impl Validation {
    pub fn parse(v: Option<&str>) -> Result<Validation, String> {
        match v {
            None | Some("") | Some("Strict") => Ok(Validation::Strict),
            Some("Warn") => Ok(Validation::Warn),
            Some("Ignore") => Ok(Validation::Ignore),
            Some(other) => Err(format!(
                "fieldValidation: {other:?} is not Strict, Warn or Ignore"
            )),
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Unknown fields of `obj` against `schema`, removed from `obj`; their paths.
pub fn prune_unknown(obj: &mut Value, schema: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(obj, schema, "", &mut out);
    out
}

fn walk(v: &mut Value, schema: &Value, path: &str, out: &mut Vec<String>) {
    if schema["x-kubernetes-preserve-unknown-fields"] == true {
        return;
    }
    match v {
        Value::Object(map) => {
            let props = schema["properties"].as_object();
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            if props.is_none() && additional.is_none() {
                // No structure given: nothing to check against.
                return;
            }
            let keys: Vec<String> = map.keys().cloned().collect();
            for k in keys {
                let child_schema = props.and_then(|p| p.get(&k)).or(additional);
                match child_schema {
                    Some(s) => {
                        if let Some(child) = map.get_mut(&k) {
                            walk(child, s, &join(path, &k), out);
                        }
                    }
                    None => {
                        out.push(join(path, &k));
                        map.remove(&k);
                    }
                }
            }
        }
        Value::Array(items) => {
            let item_schema = &schema["items"];
            if item_schema.is_object() {
                for (i, item) in items.iter_mut().enumerate() {
                    walk(item, item_schema, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

/// Fields given more than once in a JSON document, by path.
pub fn duplicates(raw: &[u8]) -> Vec<String> {
    let found = RefCell::new(Vec::new());
    let mut de = serde_json::Deserializer::from_slice(raw);
    let _ = Walk {
        path: String::new(),
        found: &found,
    }
    .deserialize(&mut de);
    found.into_inner()
}

struct Walk<'a> {
    path: String,
    found: &'a RefCell<Vec<String>>,
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = join(&self.path, &key);
            if !seen.insert(key) {
                self.found.borrow_mut().push(path.clone());
            }
            map.next_value_seed(Walk {
                path,
                found: self.found,
            })?;
        }
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        while seq
            .next_element_seed(Walk {
                path: format!("{}[{i}]", self.path),
                found: self.found,
            })?
            .is_some()
        {
            i += 1;
        }
        Ok(())
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_are_found_and_pruned() {
        let schema = json!({"type": "object", "properties": {
            "spec": {"type": "object", "properties": {"containers": {"type": "array", "items": {"type": "object", "properties": {"image": {"type": "string"}}}}}},
            "data": {"type": "object", "additionalProperties": {"type": "string"}},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
        }});
        let mut o = json!({
            "spec": {"containers": [{"image": "x", "containerConcurency": 5}], "typo": 1},
            "data": {"anything": "goes"},
            "free": {"x": {"y": 1}},
            "extra": true
        });
        let found = prune_unknown(&mut o, &schema);
        assert_eq!(
            found,
            [
                "extra",
                "spec.containers[0].containerConcurency",
                "spec.typo"
            ]
        );
        assert_eq!(o["spec"]["containers"][0], json!({"image": "x"}));
    }

    #[test]
    fn duplicate_fields_are_found() {
        let raw = br#"{"a": 1, "b": {"c": 1, "c": 2}, "l": [{"x": 1, "x": 1}], "a": 2}"#;
        assert_eq!(duplicates(raw), ["b.c", "l[0].x", "a"]);
        assert!(duplicates(br#"{"a": {"a": 1}}"#).is_empty());
    }
}
