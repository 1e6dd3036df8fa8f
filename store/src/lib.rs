//! Local mode's embedded store: what the Kubernetes API server does for Ebb's objects, in one
//! file (redb, ACID), so applied Services, revision history and traffic survive a restart.
//!
//! Semantics kept from Kubernetes: `metadata.generation` starts at 1 and increases only when
//! `spec` changes; `metadata.resourceVersion` increases on every write; `status` is written
//! apart from the rest and never by `apply`; writes may be conditional on a resourceVersion
//! (409 Conflict otherwise); deleting an object deletes the objects it controls (ownerReferences
//! by UID), recursively; every change is published to watchers.
//!
//! It never loses data silently. [`Store::open_dir`] keeps a marker (`state.json`) beside the
//! store file naming the store it expects: a store file that went missing, was emptied or
//! was replaced by another stops startup with an error naming the file and how to recover
//! (restore it, or `--reset` to start over on purpose) instead of starting as a fresh, empty
//! system. A record that no longer decodes is reported by kind, namespace and name
//! ([`Store::damaged`]) and left out of lists; the rest is served. Every error names the file.

pub mod events;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::{Value, json};
use tokio::sync::broadcast;

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const RESOURCE_VERSION: &str = "resourceVersion";
/// The store's identity, also written in the marker beside it.
const STORE_ID: TableDefinition<&str, &str> = TableDefinition::new("identity");
const ID_KEY: &str = "id";

/// The store file in a state directory.
pub const STORE_FILE: &str = "store.redb";
/// The marker that says a state directory holds a store, and which.
pub const MARKER_FILE: &str = "state.json";

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
    #[error("{kind} {namespace}/{name} already exists")]
    AlreadyExists {
        kind: String,
        namespace: String,
        name: String,
    },
    #[error("too old resource version: {requested} (the oldest change kept is {oldest})")]
    Gone { requested: u64, oldest: u64 },
    #[error("invalid object: {0}")]
    Invalid(String),
    #[error(
        "{kind} {namespace}/{name} is damaged in the store ({reason}); delete it or apply it anew"
    )]
    Damaged {
        kind: String,
        namespace: String,
        name: String,
        reason: String,
    },
    #[error(
        "{file}: another process holds it open (is another `ebb local up` using this state directory?)"
    )]
    Locked { file: PathBuf },
    #[error(
        "{file} is {what}, but {marker} says this directory holds Ebb's state (store {id}): restore the file from a backup, or start over with `ebb local up --reset`, which deletes every Service in it"
    )]
    Lost {
        file: PathBuf,
        marker: PathBuf,
        what: &'static str,
        id: String,
    },
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
    /// Recent changes, oldest first, for watches that start at a resourceVersion. Held while a
    /// write commits and publishes, so that events go out in resourceVersion order and a new
    /// watcher sees each change exactly once (from the history or from the channel).
    history: std::sync::Mutex<std::collections::VecDeque<(u64, Event)>>,
    /// Records that do not decode, by key (`kind/namespace/name`), with why.
    damaged: RwLock<BTreeMap<String, String>>,
}

/// Changes kept for watches that start in the past (a watch from before the oldest is told
/// its resourceVersion is too old, 410, and relists — as the Kubernetes API's watch cache).
pub const HISTORY: usize = 1024;

/// Kinds that live outside namespaces.
pub const CLUSTER_SCOPED: [&str; 2] = ["Namespace", "ClusterDomainClaim"];

/// What happens to the objects a deleted object owns (Kubernetes' `propagationPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Propagation {
    /// Deleted with it (`Background`, `Foreground`: here, in one transaction).
    #[default]
    Cascade,
    /// Kept, without the owner reference (`Orphan`).
    Orphan,
}

/// A watch: the changes after its starting point that were already made, then the live ones.
#[derive(Debug)]
pub struct Watch {
    pub backlog: Vec<Event>,
    pub live: broadcast::Receiver<Event>,
}

impl Event {
    pub fn object(&self) -> &Value {
        match self {
            Event::Added(v) | Event::Modified(v) | Event::Deleted(v) => v,
        }
    }

    /// The resourceVersion the change made.
    pub fn resource_version(&self) -> u64 {
        self.object()["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .unwrap_or(0)
    }
}

/// A record that no longer decodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedRecord {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub reason: String,
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
    let namespace = if CLUSTER_SCOPED.contains(&kind) {
        ""
    } else {
        obj["metadata"]["namespace"]
            .as_str()
            .filter(|n| !n.is_empty())
            .unwrap_or("default")
    };
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

/// A decoded record: an object with a kind and a name.
fn decode(bytes: &[u8]) -> Result<Value, String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if !v.is_object() || v["kind"].as_str().is_none() || v["metadata"]["name"].as_str().is_none() {
        return Err("not an object with a kind and a name".into());
    }
    Ok(v)
}

fn split_key(key: &str) -> (String, String, String) {
    let mut parts = key.splitn(3, '/');
    let mut next = || parts.next().unwrap_or_default().to_string();
    (next(), next(), next())
}

impl Store {
    /// Open (or create) the store file alone, without a marker (tests, tools).
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = match Database::create(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StoreError::Locked { file: path.into() });
            }
            Err(e) => {
                return Err(StoreError::Backend(format!(
                    "{}: {e} (the file is damaged: restore it from a backup, or start over with `ebb local up --reset`)",
                    path.display()
                )));
            }
        };
        let in_file = |e: StoreError| StoreError::Backend(format!("{}: {e}", path.display()));
        let w = db.begin_write().map_err(|e| in_file(e.into()))?;
        {
            w.open_table(OBJECTS).map_err(|e| in_file(e.into()))?;
            w.open_table(META).map_err(|e| in_file(e.into()))?;
            w.open_table(STORE_ID).map_err(|e| in_file(e.into()))?;
        }
        w.commit().map_err(|e| in_file(e.into()))?;
        let store = Store {
            db,
            events: broadcast::channel(4096).0,
            history: std::sync::Mutex::default(),
            damaged: RwLock::default(),
        };
        store.scan().map_err(in_file)?;
        Ok(store)
    }

    /// Open the store of a state directory (`DIR/store.redb`), checked against its marker
    /// (`DIR/state.json`): a new directory gets both; a store that went missing, was emptied
    /// or replaced while the marker says one exists is an error ([`StoreError::Lost`]).
    pub fn open_dir(dir: &Path) -> Result<Store, StoreError> {
        let file = dir.join(STORE_FILE);
        let marker = dir.join(MARKER_FILE);
        let expected: Option<String> = match std::fs::read(&marker) {
            Ok(bytes) => {
                let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
                    StoreError::Backend(format!(
                        "{}: not the marker Ebb writes: {e}",
                        marker.display()
                    ))
                })?;
                Some(v["id"].as_str().unwrap_or_default().to_string())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(StoreError::Backend(format!("{}: {e}", marker.display()))),
        };
        let size = std::fs::metadata(&file).map(|m| m.len()).ok();
        if let Some(id) = &expected {
            let what = match size {
                None => Some("missing"),
                Some(0) => Some("empty"),
                _ => None,
            };
            if let Some(what) = what {
                return Err(StoreError::Lost {
                    file,
                    marker,
                    what,
                    id: id.clone(),
                });
            }
        }
        let store = Store::open(&file)?;
        let id = store
            .identity()
            .map_err(|e| StoreError::Backend(format!("{}: {e}", file.display())))?;
        match expected {
            Some(want) if want != id => Err(StoreError::Lost {
                file,
                marker,
                what: "another store than the one expected",
                id: want,
            }),
            Some(_) => Ok(store),
            None => {
                // A new directory (or one from before markers): say from now on that it holds
                // this store.
                let text = serde_json::to_vec_pretty(&json!({
                    "store": STORE_FILE,
                    "id": id,
                    "note": "Ebb's state lives in store.redb; if it goes missing, Ebb refuses to start rather than start empty (`ebb local up --reset` starts over)."
                }))?;
                let tmp = dir.join(format!("{MARKER_FILE}.tmp"));
                std::fs::write(&tmp, text)
                    .and_then(|()| std::fs::rename(&tmp, &marker))
                    .map_err(|e| StoreError::Backend(format!("{}: {e}", marker.display())))?;
                Ok(store)
            }
        }
    }

    /// Delete a state directory's store and marker, to start over on purpose.
    pub fn reset_dir(dir: &Path) -> std::io::Result<()> {
        for f in [STORE_FILE, MARKER_FILE] {
            match std::fs::remove_file(dir.join(f)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// The store's identity (made at its creation).
    fn identity(&self) -> Result<String, StoreError> {
        {
            let r = self.db.begin_read()?;
            let t = r.open_table(STORE_ID)?;
            if let Some(id) = t.get(ID_KEY)? {
                return Ok(id.value().to_string());
            }
        }
        let id = new_uid();
        let w = self.db.begin_write()?;
        w.open_table(STORE_ID)?.insert(ID_KEY, id.as_str())?;
        w.commit()?;
        Ok(id)
    }

    /// Find the records that do not decode.
    fn scan(&self) -> Result<(), StoreError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(OBJECTS)?;
        let mut damaged = self.damaged.write().unwrap_or_else(|p| p.into_inner());
        for item in t.iter()? {
            let (k, v) = item?;
            if let Err(reason) = decode(v.value()) {
                damaged.insert(k.value().to_string(), reason);
            }
        }
        Ok(())
    }

    /// Records that do not decode: left out of lists, refused by reads and status writes,
    /// until deleted or written anew.
    pub fn damaged(&self) -> Vec<DamagedRecord> {
        let damaged = self.damaged.read().unwrap_or_else(|p| p.into_inner());
        damaged
            .iter()
            .map(|(k, reason)| {
                let (kind, namespace, name) = split_key(k);
                DamagedRecord {
                    kind,
                    namespace,
                    name,
                    reason: reason.clone(),
                }
            })
            .collect()
    }

    fn damage(&self, k: &str) -> Option<StoreError> {
        let damaged = self.damaged.read().unwrap_or_else(|p| p.into_inner());
        damaged.get(k).map(|reason| {
            let (kind, namespace, name) = split_key(k);
            StoreError::Damaged {
                kind,
                namespace,
                name,
                reason: reason.clone(),
            }
        })
    }

    /// Follow changes from now on.
    pub fn watch(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Follow changes made after resourceVersion `from`: those already made (from the history)
    /// then the live ones. `Err(Gone)` when `from` is older than the history holds.
    pub fn watch_from(&self, from: u64) -> Result<Watch, StoreError> {
        let history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.resource_version()?;
        let oldest = history.front().map_or(current + 1, |(rv, _)| *rv);
        if from + 1 < oldest && from < current {
            return Err(StoreError::Gone {
                requested: from,
                oldest: oldest.saturating_sub(1),
            });
        }
        let backlog = history
            .iter()
            .filter(|(rv, _)| *rv > from)
            .map(|(_, e)| e.clone())
            .collect();
        Ok(Watch {
            backlog,
            live: self.events.subscribe(),
        })
    }

    /// The store's current resourceVersion (that of its last write).
    pub fn resource_version(&self) -> Result<u64, StoreError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(META)?;
        Ok(t.get(RESOURCE_VERSION)?.map_or(0, |v| v.value()))
    }

    pub fn get(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Value>, StoreError> {
        let k = key(kind, namespace, name);
        if let Some(e) = self.damage(&k) {
            return Err(e);
        }
        let r = self.db.begin_read()?;
        let t = r.open_table(OBJECTS)?;
        match t.get(k.as_str())? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value())?)),
            None => Ok(None),
        }
    }

    /// Objects of a kind, in one namespace or all, ordered by namespace and name.
    pub fn list(&self, kind: &str, namespace: Option<&str>) -> Result<Vec<Value>, StoreError> {
        Ok(self.list_at(kind, namespace)?.0)
    }

    /// As [`Store::list`], with the resourceVersion the list is consistent with.
    pub fn list_at(
        &self,
        kind: &str,
        namespace: Option<&str>,
    ) -> Result<(Vec<Value>, u64), StoreError> {
        let prefix = match namespace {
            Some(ns) => format!("{kind}/{ns}/"),
            None => format!("{kind}/"),
        };
        let r = self.db.begin_read()?;
        let rv = r
            .open_table(META)?
            .get(RESOURCE_VERSION)?
            .map_or(0, |v| v.value());
        let t = r.open_table(OBJECTS)?;
        let mut out = Vec::new();
        for item in t.range(prefix.as_str()..)? {
            let (k, v) = item?;
            if !k.value().starts_with(&prefix) {
                break;
            }
            // Damaged records are reported by `damaged`, not listed.
            if let Ok(obj) = decode(v.value()) {
                out.push(obj);
            }
        }
        Ok((out, rv))
    }

    /// Run `change` in one write transaction with the next resourceVersions (`change` gets
    /// the objects table and the first rv; it returns the events and how many rvs it used),
    /// then publish its events in order.
    fn write<T>(
        &self,
        change: impl FnOnce(
            &mut redb::Table<'_, &'static str, &'static [u8]>,
            u64,
        ) -> Result<(T, Vec<Event>, u64), StoreError>,
    ) -> Result<T, StoreError> {
        let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let w = self.db.begin_write()?;
        let (out, events) = {
            let mut objects = w.open_table(OBJECTS)?;
            let mut meta = w.open_table(META)?;
            let rv = meta.get(RESOURCE_VERSION)?.map_or(0, |v| v.value()) + 1;
            let (out, events, used) = change(&mut objects, rv)?;
            if used > 0 {
                meta.insert(RESOURCE_VERSION, rv + used - 1)?;
            }
            (out, events)
        };
        w.commit()?;
        for e in events {
            let rv = e.resource_version();
            if history.len() >= HISTORY {
                history.pop_front();
            }
            history.push_back((rv, e.clone()));
            let _ = self.events.send(e);
        }
        Ok(out)
    }

    /// Create an object; `AlreadyExists` when one has its kind, namespace and name.
    pub fn create(&self, obj: Value) -> Result<Value, StoreError> {
        self.put(obj, Put::Create)
    }

    /// Replace an object's metadata and content (not its status); with `expected`, only if
    /// its resourceVersion still matches (else `Conflict`). `NotFound` when it does not exist.
    pub fn replace(&self, obj: Value, expected: Option<&str>) -> Result<Value, StoreError> {
        self.put(obj, Put::Replace(expected.map(str::to_string)))
    }

    /// Create or update an object from its desired form (what `kubectl apply` sends): metadata
    /// and content are taken, `status` is kept from the stored object. Returns the stored object.
    pub fn apply(&self, desired: Value) -> Result<Value, StoreError> {
        self.put(desired, Put::Upsert)
    }

    fn put(&self, mut desired: Value, how: Put) -> Result<Value, StoreError> {
        let (kind, namespace, name) = ident(&desired)?;
        let k = key(&kind, &namespace, &name);
        // A damaged record is written anew: what it held is lost already (its owners'
        // references with it), and a parent re-creating its child repairs it.
        let damaged = self.damage(&k).is_some();
        let stored = self.write(|objects, rv| {
            let previous: Option<Value> = match objects.get(k.as_str())? {
                Some(_) if damaged => None,
                Some(v) => Some(serde_json::from_slice(v.value())?),
                None => None,
            };
            let not_found = || StoreError::NotFound {
                kind: kind.clone(),
                namespace: namespace.clone(),
                name: name.clone(),
            };
            match (&how, &previous) {
                (Put::Create, Some(_)) => {
                    return Err(StoreError::AlreadyExists {
                        kind: kind.clone(),
                        namespace: namespace.clone(),
                        name: name.clone(),
                    });
                }
                (Put::Replace(_), None) => return Err(not_found()),
                (Put::Replace(Some(expected)), Some(prev)) => {
                    let actual = prev["metadata"]["resourceVersion"].as_str().unwrap_or("");
                    if actual != expected {
                        return Err(StoreError::Conflict {
                            kind: kind.clone(),
                            namespace: namespace.clone(),
                            name: name.clone(),
                            expected: expected.clone(),
                            actual: actual.to_string(),
                        });
                    }
                }
                _ => {}
            }
            if let Some(obj) = desired.as_object_mut() {
                obj.remove("status");
            }
            let m = &mut desired["metadata"];
            if namespace.is_empty() {
                if let Some(m) = m.as_object_mut() {
                    m.remove("namespace");
                }
            } else {
                m["namespace"] = json!(namespace);
            }
            m["resourceVersion"] = json!(rv.to_string());
            let event = match &previous {
                None => {
                    m["uid"] = json!(new_uid());
                    m["generation"] = json!(1);
                    m["creationTimestamp"] = json!(now_seconds());
                    Event::Added(Value::Null)
                }
                Some(prev) => {
                    let generation = prev["metadata"]["generation"].as_i64().unwrap_or(1);
                    let content = |o: &Value| {
                        let mut o = o.clone();
                        if let Some(map) = o.as_object_mut() {
                            for k in ["metadata", "status", "apiVersion", "kind"] {
                                map.remove(k);
                            }
                        }
                        o
                    };
                    let changed = content(prev) != content(&desired);
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
            let event = match event {
                Event::Added(_) => Event::Added(desired.clone()),
                _ => Event::Modified(desired.clone()),
            };
            Ok((desired.clone(), vec![event], 1))
        })?;
        if damaged {
            self.damaged
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&k);
        }
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
        if let Some(e) = self.damage(&k) {
            return Err(e);
        }
        self.write(|objects, rv| {
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
            obj["status"] = status;
            obj["metadata"]["resourceVersion"] = json!(rv.to_string());
            objects.insert(k.as_str(), serde_json::to_vec(&obj)?.as_slice())?;
            Ok((obj.clone(), vec![Event::Modified(obj)], 1))
        })
    }

    /// Delete an object and, recursively, every object it controls. Returns what was deleted.
    pub fn delete(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<Value>, StoreError> {
        self.delete_with(kind, namespace, name, Propagation::Cascade, None)
    }

    /// Delete an object, with what it owns as `propagation` says; with `expected_uid`, only
    /// if the object still has that uid (a precondition). Returns what was deleted, each
    /// with the resourceVersion of its deletion.
    pub fn delete_with(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        propagation: Propagation,
        expected_uid: Option<&str>,
    ) -> Result<Vec<Value>, StoreError> {
        let root_key = key(kind, namespace, name);
        let damaged_root = self.damage(&root_key).is_some();
        let deleted = self.write(|objects, rv| {
            let root: Value = match objects.get(root_key.as_str())? {
                // A damaged record's owner references are lost with it: what it owned is
                // found by owner kind and name instead.
                Some(_) if damaged_root => json!({
                    "kind": kind,
                    "metadata": {"namespace": namespace, "name": name, "uid": null},
                }),
                Some(v) => serde_json::from_slice(v.value())?,
                None => {
                    return Err(StoreError::NotFound {
                        kind: kind.into(),
                        namespace: namespace.into(),
                        name: name.into(),
                    });
                }
            };
            if let Some(uid) = expected_uid
                && root["metadata"]["uid"].as_str() != Some(uid)
            {
                return Err(StoreError::Conflict {
                    kind: kind.into(),
                    namespace: namespace.into(),
                    name: name.into(),
                    expected: format!("uid {uid}"),
                    actual: format!("uid {}", root["metadata"]["uid"]),
                });
            }
            let all: Vec<(String, Value)> = objects
                .iter()?
                .filter_map(|item| match item {
                    Ok((k, v)) => decode(v.value())
                        .ok()
                        .map(|obj| Ok((k.value().to_string(), obj))),
                    Err(e) => Some(Err(StoreError::from(e))),
                })
                .collect::<Result<_, StoreError>>()?;
            let owns = |owner: &Value, o: &Value| {
                let uid = owner["metadata"]["uid"].as_str();
                let (owner_kind, owner_name) = (
                    owner["kind"].as_str().unwrap_or(""),
                    owner["metadata"]["name"].as_str().unwrap_or(""),
                );
                o["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| {
                        refs.iter().any(|r| match uid {
                            Some(uid) => r["uid"].as_str() == Some(uid),
                            None => {
                                o["metadata"]["namespace"] == owner["metadata"]["namespace"]
                                    && r["kind"].as_str() == Some(owner_kind)
                                    && r["name"].as_str() == Some(owner_name)
                            }
                        })
                    })
            };
            let mut doomed = vec![root];
            let mut events = Vec::new();
            let mut next_rv = rv;
            if propagation == Propagation::Orphan {
                // The children stay, without the owner reference.
                for (k, o) in &all {
                    if owns(&doomed[0], o) {
                        let mut o = o.clone();
                        let uid = doomed[0]["metadata"]["uid"].clone();
                        if let Some(refs) = o["metadata"]["ownerReferences"].as_array_mut() {
                            refs.retain(|r| r["uid"] != uid);
                        }
                        o["metadata"]["resourceVersion"] = json!(next_rv.to_string());
                        next_rv += 1;
                        objects.insert(k.as_str(), serde_json::to_vec(&o)?.as_slice())?;
                        events.push(Event::Modified(o));
                    }
                }
            } else {
                let mut i = 0;
                while i < doomed.len() {
                    for (_, o) in &all {
                        if owns(&doomed[i], o)
                            && !doomed
                                .iter()
                                .any(|d| d["metadata"]["uid"] == o["metadata"]["uid"])
                        {
                            doomed.push(o.clone());
                        }
                    }
                    i += 1;
                }
            }
            // Children first, as a foreground deletion would.
            for d in doomed.iter_mut().rev() {
                let (k, ns, n) = ident(d)?;
                objects.remove(key(&k, &ns, &n).as_str())?;
                d["metadata"]["resourceVersion"] = json!(next_rv.to_string());
                next_rv += 1;
                events.push(Event::Deleted(d.clone()));
            }
            Ok((doomed, events, next_rv - rv))
        })?;
        self.damaged
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&root_key);
        Ok(deleted)
    }
}

/// How a write treats an object that exists (or not).
enum Put {
    Create,
    Replace(Option<String>),
    Upsert,
}

fn now_seconds() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or_default()
        .to_string()
}
