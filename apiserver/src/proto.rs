//! Kubernetes' protobuf encoding, for request bodies of the core kinds served: kubectl's typed
//! commands (`kubectl create configmap|secret|namespace`, client-go's typed clients) send it.
//! The envelope (`k8s\0` + `runtime.Unknown`) and the messages of Namespaces, ConfigMaps,
//! Secrets and DeleteOptions are decoded into the same JSON the API takes otherwise; field
//! numbers are those of Kubernetes' `generated.proto` files. Responses stay JSON (clients read
//! either).

use serde_json::{Map, Value, json};

/// The envelope's magic prefix.
pub const MAGIC: &[u8] = b"k8s\x00";

#[derive(Debug)]
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

fn varint(b: &[u8], i: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i).ok_or("protobuf: truncated varint")?;
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("protobuf: varint too long".into())
}

/// The fields of one message: (number, value).
fn fields(b: &[u8]) -> Result<Vec<(u64, Field<'_>)>, String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let key = varint(b, &mut i)?;
        let (number, wire) = (key >> 3, key & 7);
        let f = match wire {
            0 => Field::Varint(varint(b, &mut i)?),
            2 => {
                let len = usize::try_from(varint(b, &mut i)?).map_err(|_| "protobuf: length")?;
                let end = i
                    .checked_add(len)
                    .filter(|e| *e <= b.len())
                    .ok_or("protobuf: truncated field")?;
                let f = Field::Bytes(&b[i..end]);
                i = end;
                f
            }
            1 => {
                i = i
                    .checked_add(8)
                    .filter(|e| *e <= b.len())
                    .ok_or("protobuf: truncated field")?;
                continue;
            }
            5 => {
                i = i
                    .checked_add(4)
                    .filter(|e| *e <= b.len())
                    .ok_or("protobuf: truncated field")?;
                continue;
            }
            other => return Err(format!("protobuf: unsupported wire type {other}")),
        };
        out.push((number, f));
    }
    Ok(out)
}

fn text(f: &Field<'_>) -> String {
    match f {
        Field::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        Field::Varint(v) => v.to_string(),
    }
}

fn bytes<'a>(f: &Field<'a>) -> &'a [u8] {
    match f {
        Field::Bytes(b) => b,
        Field::Varint(_) => &[],
    }
}

/// A `map<string, string>` (or `<string, bytes>`, base64-encoded) entry into `map`.
fn map_entry(f: &Field<'_>, map: &mut Map<String, Value>, base64: bool) -> Result<(), String> {
    let (mut k, mut v) = (String::new(), Value::String(String::new()));
    for (n, x) in fields(bytes(f))? {
        match n {
            1 => k = text(&x),
            2 if base64 => v = json!(crate::admission::base64_encode(bytes(&x))),
            2 => v = json!(text(&x)),
            _ => {}
        }
    }
    map.insert(k, v);
    Ok(())
}

fn time(f: &Field<'_>) -> Result<Value, String> {
    let mut secs = 0i64;
    for (n, x) in fields(bytes(f))? {
        if let (1, Field::Varint(v)) = (n, x) {
            secs = v as i64;
        }
    }
    Ok(json!(
        jiff::Timestamp::from_second(secs)
            .unwrap_or_default()
            .to_string()
    ))
}

fn object_meta(b: &[u8]) -> Result<Value, String> {
    let mut m = Map::new();
    let (mut labels, mut annotations) = (Map::new(), Map::new());
    let (mut owners, mut finalizers) = (Vec::new(), Vec::new());
    for (n, f) in fields(b)? {
        match n {
            1 => {
                m.insert("name".into(), json!(text(&f)));
            }
            2 => {
                m.insert("generateName".into(), json!(text(&f)));
            }
            3 => {
                m.insert("namespace".into(), json!(text(&f)));
            }
            5 => {
                m.insert("uid".into(), json!(text(&f)));
            }
            6 => {
                m.insert("resourceVersion".into(), json!(text(&f)));
            }
            8 => {
                m.insert("creationTimestamp".into(), time(&f)?);
            }
            11 => map_entry(&f, &mut labels, false)?,
            12 => map_entry(&f, &mut annotations, false)?,
            13 => {
                let mut o = Map::new();
                for (k, x) in fields(bytes(&f))? {
                    match k {
                        1 => {
                            o.insert("kind".into(), json!(text(&x)));
                        }
                        3 => {
                            o.insert("name".into(), json!(text(&x)));
                        }
                        4 => {
                            o.insert("uid".into(), json!(text(&x)));
                        }
                        5 => {
                            o.insert("apiVersion".into(), json!(text(&x)));
                        }
                        6 => {
                            o.insert("controller".into(), json!(matches!(x, Field::Varint(1))));
                        }
                        7 => {
                            o.insert(
                                "blockOwnerDeletion".into(),
                                json!(matches!(x, Field::Varint(1))),
                            );
                        }
                        _ => {}
                    }
                }
                owners.push(Value::Object(o));
            }
            14 => finalizers.push(json!(text(&f))),
            _ => {}
        }
    }
    if !labels.is_empty() {
        m.insert("labels".into(), Value::Object(labels));
    }
    if !annotations.is_empty() {
        m.insert("annotations".into(), Value::Object(annotations));
    }
    if !owners.is_empty() {
        m.insert("ownerReferences".into(), json!(owners));
    }
    if !finalizers.is_empty() {
        m.insert("finalizers".into(), json!(finalizers));
    }
    Ok(Value::Object(m))
}

/// Decode an enveloped protobuf body into the object's JSON.
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let inner = body
        .strip_prefix(MAGIC)
        .ok_or("protobuf: the body lacks Kubernetes' k8s\\0 envelope")?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    for (n, f) in fields(inner)? {
        match n {
            1 => {
                for (k, x) in fields(bytes(&f))? {
                    match k {
                        1 => api_version = text(&x),
                        2 => kind = text(&x),
                        _ => {}
                    }
                }
            }
            2 => raw = bytes(&f),
            _ => {}
        }
    }
    let mut obj = Map::new();
    obj.insert("apiVersion".into(), json!(api_version));
    obj.insert("kind".into(), json!(kind));
    let msg = fields(raw)?;
    match kind.as_str() {
        "ConfigMap" | "Secret" => {
            let secret = kind == "Secret";
            let (mut data, mut binary, mut string_data) = (Map::new(), Map::new(), Map::new());
            for (n, f) in msg {
                match (n, secret) {
                    (1, _) => {
                        obj.insert("metadata".into(), object_meta(bytes(&f))?);
                    }
                    (2, false) => map_entry(&f, &mut data, false)?,
                    (3, false) => map_entry(&f, &mut binary, true)?,
                    (4, false) | (5, true) => {
                        obj.insert("immutable".into(), json!(matches!(f, Field::Varint(1))));
                    }
                    (2, true) => map_entry(&f, &mut data, true)?,
                    (3, true) => {
                        obj.insert("type".into(), json!(text(&f)));
                    }
                    (4, true) => map_entry(&f, &mut string_data, false)?,
                    _ => {}
                }
            }
            if !data.is_empty() {
                obj.insert("data".into(), Value::Object(data));
            }
            if !binary.is_empty() {
                obj.insert("binaryData".into(), Value::Object(binary));
            }
            if !string_data.is_empty() {
                obj.insert("stringData".into(), Value::Object(string_data));
            }
        }
        "Namespace" => {
            for (n, f) in msg {
                match n {
                    1 => {
                        obj.insert("metadata".into(), object_meta(bytes(&f))?);
                    }
                    2 => {
                        let finalizers: Vec<Value> = fields(bytes(&f))?
                            .iter()
                            .filter(|(k, _)| *k == 1)
                            .map(|(_, x)| json!(text(x)))
                            .collect();
                        if !finalizers.is_empty() {
                            obj.insert("spec".into(), json!({"finalizers": finalizers}));
                        }
                    }
                    _ => {}
                }
            }
        }
        "DeleteOptions" => {
            let mut dry = Vec::new();
            for (n, f) in msg {
                match n {
                    1 => {
                        if let Field::Varint(v) = f {
                            obj.insert("gracePeriodSeconds".into(), json!(v));
                        }
                    }
                    2 => {
                        let mut p = Map::new();
                        for (k, x) in fields(bytes(&f))? {
                            match k {
                                1 => {
                                    p.insert("uid".into(), json!(text(&x)));
                                }
                                2 => {
                                    p.insert("resourceVersion".into(), json!(text(&x)));
                                }
                                _ => {}
                            }
                        }
                        obj.insert("preconditions".into(), Value::Object(p));
                    }
                    4 => {
                        obj.insert("propagationPolicy".into(), json!(text(&f)));
                    }
                    5 => dry.push(json!(text(&f))),
                    _ => {}
                }
            }
            if !dry.is_empty() {
                obj.insert("dryRun".into(), json!(dry));
            }
        }
        other => {
            return Err(format!(
                "protobuf bodies are taken for Namespaces, ConfigMaps, Secrets and DeleteOptions; send {other} as application/json"
            ));
        }
    }
    Ok(Value::Object(obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(n: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![(n << 3 | 2) as u8];
        out.push(payload.len() as u8);
        out.extend_from_slice(payload);
        out
    }

    fn entry(k: &str, v: &[u8]) -> Vec<u8> {
        let mut e = field(1, k.as_bytes());
        e.extend(field(2, v));
        e
    }

    #[test]
    fn decodes_what_kubectl_create_sends() {
        let mut meta = field(1, b"cfg");
        meta.extend(field(11, &entry("app", b"web")));
        let mut cm = field(1, &meta);
        cm.extend(field(2, &entry("a", b"1")));
        cm.extend(field(3, &entry("bin", b"\x00\x01")));
        let mut tm = field(1, b"v1");
        tm.extend(field(2, b"ConfigMap"));
        let mut unknown = field(1, &tm);
        unknown.extend(field(2, &cm));
        let mut body = MAGIC.to_vec();
        body.extend(unknown);
        let v = decode(&body).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "labels": {"app": "web"}}, "data": {"a": "1"}, "binaryData": {"bin": "AAE="}})
        );
        assert!(decode(b"{}").is_err());
        assert!(decode(b"k8s\x00\x0a\xff").is_err());
    }
}
