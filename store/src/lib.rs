//! Local mode's embedded store: what the Kubernetes API server does for Ebb's objects, in one
//! file (redb, ACID), so applied Services, revision history and traffic survive a restart.
//!
//! Semantics kept from Kubernetes: `metadata.generation` starts at 1 and increases only when
//! `spec` changes; `metadata.resourceVersion` increases on every write; `status` is written
//! apart from the rest and never by `apply`; writes may be conditional on a resourceVersion
//! (409 Conflict otherwise); deleting an object deletes the objects it controls (ownerReferences
//! by UID), recursively; every change is published to watchers.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::{Value, json};
use tokio::sync::broadcast;

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const RESOURCE_VERSION: &str = "resourceVersion";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{kind} {namespace}/{name} not found")]
    NotFound {
        kind: String,
        namespace: String,
        name: String,
    },
    #[error(
        "conflict on {kind} {namespace}/{name}: resourceVersion is {actual}, the write expected {expected}"
    )]
    Conflict {
        kind: String,
        namespace: String,
        name: String,
        expected: String,
        actual: String,
    },
    #[error("invalid object: {0}")]
    Invalid(String),
    #[error("store: {0}")]
    Backend(String),
}

macro_rules! backend {
    ($($t:ty),*) => {$(impl From<$t> for StoreError {
        fn from(e: $t) -> Self { StoreError::Backend(e.to_string()) }
    })*};
}
backend!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    serde_json::Error
);

/// A change, as a watch sees it.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Added(Value),
    Modified(Value),
    Deleted(Value),
}

#[derive(Debug)]
pub struct Store {
    db: Database,
    events: broadcast::Sender<Event>,
}

fn key(kind: &str, namespace: &str, name: &str) -> String {
    format!("{kind}/{namespace}/{name}")
}

fn ident(obj: &Value) -> Result<(String, String, String), StoreError> {
    let kind = obj["kind"]
        .as_str()
        .ok_or_else(|| StoreError::Invalid("kind is required".into()))?;
    let name = obj["metadata"]["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| StoreError::Invalid("metadata.name is required".into()))?;
    let namespace = obj["metadata"]["namespace"].as_str().unwrap_or("default");
    Ok((kind.to_string(), namespace.to_string(), name.to_string()))
}

fn new_uid() -> String {
    let (a, b) = (fastrand::u64(..), fastrand::u64(..));
    // RFC 4122 version 4 layout.
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0x0fff,
        (b >> 48) & 0x3fff | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

impl Store {
    /// Open (or create) the store file.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = Database::create(path)?;
        let w = db.begin_write()?;
        {
            w.open_table(OBJECTS)?;
            w.open_table(META)?;
        }
        w.commit()?;
        Ok(Store {
            db,
            events: broadcast::channel(4096).0,
        })
    }

    /// Follow changes from now on.
    pub fn watch(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    pub fn get(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Value>, StoreError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(OBJECTS)?;
        match t.get(key(kind, namespace, name).as_str())? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value())?)),
            None => Ok(None),
        }
    }

    /// Objects of a kind, in one namespace or all, ordered by namespace and name.
    pub fn list(&self, kind: &str, namespace: Option<&str>) -> Result<Vec<Value>, StoreError> {
        let prefix = match namespace {
            Some(ns) => format!("{kind}/{ns}/"),
            None => format!("{kind}/"),
        };
        let r = self.db.begin_read()?;
        let t = r.open_table(OBJECTS)?;
        let mut out = Vec::new();
        for item in t.range(prefix.as_str()..)? {
            let (k, v) = item?;
            if !k.value().starts_with(&prefix) {
                break;
            }
            out.push(serde_json::from_slice(v.value())?);
        }
        Ok(out)
    }

    /// Create or update an object from its desired form (what `kubectl apply` sends): metadata
    /// and spec are taken, `status` is kept from the stored object. Returns the stored object.
    pub fn apply(&self, mut desired: Value) -> Result<Value, StoreError> {
        let (kind, namespace, name) = ident(&desired)?;
        let k = key(&kind, &namespace, &name);
        let w = self.db.begin_write()?;
        let (stored, event) = {
            let mut objects = w.open_table(OBJECTS)?;
            let mut meta = w.open_table(META)?;
            let rv = meta.get(RESOURCE_VERSION)?.map_or(0, |v| v.value()) + 1;
            meta.insert(RESOURCE_VERSION, rv)?;
            let previous: Option<Value> = match objects.get(k.as_str())? {
                Some(v) => Some(serde_json::from_slice(v.value())?),
                None => None,
            };
            if let Some(obj) = desired.as_object_mut() {
                obj.remove("status");
            }
            let m = &mut desired["metadata"];
            m["namespace"] = json!(namespace);
            m["resourceVersion"] = json!(rv.to_string());
            let event = match &previous {
                None => {
                    m["uid"] = json!(new_uid());
                    m["generation"] = json!(1);
                    m["creationTimestamp"] = json!(
                        jiff::Timestamp::now()
                            .round(jiff::Unit::Second)
                            .unwrap_or_default()
                            .to_string()
                    );
                    Event::Added(Value::Null)
                }
                Some(prev) => {
                    let generation = prev["metadata"]["generation"].as_i64().unwrap_or(1);
                    let changed = prev.get("spec") != desired.get("spec");
                    let m = &mut desired["metadata"];
                    m["uid"] = prev["metadata"]["uid"].clone();
                    m["creationTimestamp"] = prev["metadata"]["creationTimestamp"].clone();
                    m["generation"] = json!(if changed { generation + 1 } else { generation });
                    if let Some(status) = prev.get("status") {
                        desired["status"] = status.clone();
                    }
                    Event::Modified(Value::Null)
                }
            };
            objects.insert(k.as_str(), serde_json::to_vec(&desired)?.as_slice())?;
            (desired, event)
        };
        w.commit()?;
        let event = match event {
            Event::Added(_) => Event::Added(stored.clone()),
            _ => Event::Modified(stored.clone()),
        };
        let _ = self.events.send(event);
        Ok(stored)
    }

    /// Replace an object's status (the status subresource). With `expected` set, the write
    /// happens only if the stored resourceVersion still matches.
    pub fn update_status(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        status: Value,
        expected: Option<&str>,
    ) -> Result<Value, StoreError> {
        let k = key(kind, namespace, name);
        let w = self.db.begin_write()?;
        let stored = {
            let mut objects = w.open_table(OBJECTS)?;
            let mut meta = w.open_table(META)?;
            let mut obj: Value = match objects.get(k.as_str())? {
                Some(v) => serde_json::from_slice(v.value())?,
                None => {
                    return Err(StoreError::NotFound {
                        kind: kind.into(),
                        namespace: namespace.into(),
                        name: name.into(),
                    });
                }
            };
            let actual = obj["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or("")
                .to_string();
            if let Some(expected) = expected
                && expected != actual
            {
                return Err(StoreError::Conflict {
                    kind: kind.into(),
                    namespace: namespace.into(),
                    name: name.into(),
                    expected: expected.into(),
                    actual,
                });
            }
            let rv = meta.get(RESOURCE_VERSION)?.map_or(0, |v| v.value()) + 1;
            meta.insert(RESOURCE_VERSION, rv)?;
            obj["status"] = status;
            obj["metadata"]["resourceVersion"] = json!(rv.to_string());
            objects.insert(k.as_str(), serde_json::to_vec(&obj)?.as_slice())?;
            obj
        };
        w.commit()?;
        let _ = self.events.send(Event::Modified(stored.clone()));
        Ok(stored)
    }

    /// Delete an object and, recursively, every object it controls. Returns what was deleted.
    pub fn delete(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<Value>, StoreError> {
        let w = self.db.begin_write()?;
        let deleted = {
            let mut objects = w.open_table(OBJECTS)?;
            let root: Value = match objects.get(key(kind, namespace, name).as_str())? {
                Some(v) => serde_json::from_slice(v.value())?,
                None => {
                    return Err(StoreError::NotFound {
                        kind: kind.into(),
                        namespace: namespace.into(),
                        name: name.into(),
                    });
                }
            };
            let all: Vec<(String, Value)> = objects
                .iter()?
                .map(|item| {
                    let (k, v) = item?;
                    Ok((k.value().to_string(), serde_json::from_slice(v.value())?))
                })
                .collect::<Result<_, StoreError>>()?;
            let mut doomed = vec![root];
            let mut i = 0;
            while i < doomed.len() {
                let uid = doomed[i]["metadata"]["uid"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                for (_, o) in &all {
                    let owned = o["metadata"]["ownerReferences"]
                        .as_array()
                        .is_some_and(|refs| {
                            refs.iter().any(|r| r["uid"].as_str() == Some(uid.as_str()))
                        });
                    if owned
                        && !doomed
                            .iter()
                            .any(|d| d["metadata"]["uid"] == o["metadata"]["uid"])
                    {
                        doomed.push(o.clone());
                    }
                }
                i += 1;
            }
            for d in &doomed {
                let (k, ns, n) = ident(d)?;
                objects.remove(key(&k, &ns, &n).as_str())?;
            }
            doomed
        };
        w.commit()?;
        for d in &deleted {
            let _ = self.events.send(Event::Deleted(d.clone()));
        }
        Ok(deleted)
    }
}
