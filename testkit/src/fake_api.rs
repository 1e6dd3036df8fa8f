//! A small stateful stand-in for the Kubernetes API server, on a real loopback socket, for
//! testing Kubernetes code where no cluster can run. Test support, not a product.
//!
//! What it does: objects of any resource (with `metadata.generation` bumped on spec changes) kept by collection (`{group}/{version}/{plural}`),
//! namespace and name; list (with `labelSelector` equality terms), `watch=true` streams of
//! newline-delimited WatchEvents (replayed from `resourceVersion`, then live), get, create
//! (409 if present), replace (409 on a stale resourceVersion), JSON Patch (RFC 6902), JSON merge
//! patch for the other patch types (enough for `/scale` and `/status`), server-side apply
//! approximated (creates what is missing, else a merge that keeps fields others set), delete
//! (an object with finalizers is marked with a deletionTimestamp and goes once they are
//! removed). Every request is recorded.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::sync::broadcast;

type Body = BoxBody<Bytes, Infallible>;

#[derive(Debug, Default)]
struct State {
    rv: u64,
    /// (collection, namespace, name) → object.
    objects: BTreeMap<(String, String, String), Value>,
    /// Every change: (collection, rv, type, object).
    log: Vec<(String, u64, &'static str, Value)>,
    requests: Vec<(String, String)>,
    /// What RBAC would see: (verb, apiGroup, resource[/subresource], namespace).
    audit: Vec<Access>,
    /// Requests (method, path prefix) to fail once with 500, for retry tests.
    fail_once: Vec<(String, String)>,
    /// Requests (method, path prefix) to fail with a status code until cleared.
    fail_always: Vec<(String, String, u16)>,
}

/// One request as RBAC sees it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Access {
    pub verb: String,
    /// "" for the core group.
    pub group: String,
    /// `deployments`, or `deployments/scale` for a subresource.
    pub resource: String,
    pub namespace: Option<String>,
}

/// A child process, killed when dropped.
#[derive(Debug)]
pub struct Process(pub std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Debug, Clone)]
pub struct FakeApi {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<(String, u64, &'static str, Value)>,
    /// Held across a read-modify-write (PATCH, PUT) and a test's `put`, so that neither loses
    /// the other's write (a real API server's optimistic concurrency gives the same).
    rmw: Arc<Mutex<()>>,
}

/// `kind` → plural, for the kinds Ebb touches.
pub fn plural(kind: &str) -> String {
    match kind {
        "EndpointSlice" => "endpointslices".into(),
        "Ingress" => "ingresses".into(),
        other => format!("{}s", other.to_ascii_lowercase()),
    }
}

/// The collection of an object from its apiVersion and kind.
pub fn collection(api_version: &str, kind: &str) -> String {
    let gv = if api_version.contains('/') {
        api_version.to_string()
    } else {
        format!("core/{api_version}")
    };
    format!("{gv}/{}", plural(kind))
}

struct Path {
    collection: String,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_path(path: &str) -> Option<Path> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (gv, rest) = match parts.as_slice() {
        ["api", v, rest @ ..] => (format!("core/{v}"), rest),
        ["apis", g, v, rest @ ..] => (format!("{g}/{v}"), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        rest => (None, rest),
    };
    let (plural, name, sub) = match rest {
        [p] => (p, None, None),
        [p, n] => (p, Some(n.to_string()), None),
        [p, n, s] => (p, Some(n.to_string()), Some(s.to_string())),
        _ => return None,
    };
    Some(Path {
        collection: format!("{gv}/{plural}"),
        namespace,
        name,
        sub,
    })
}

fn query(uri: &http::Uri) -> BTreeMap<String, String> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), percent_decode(v)))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).to_string()
}

/// Equality terms only (`a=b,c==d`), and bare keys (exists).
fn selects(selector: Option<&String>, obj: &Value) -> bool {
    let Some(sel) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    sel.split(',').all(|term| {
        let labels = &obj["metadata"]["labels"];
        match term.split_once("==").or_else(|| term.split_once('=')) {
            Some((k, v)) if k.ends_with('!') => labels[k.trim_end_matches('!')].as_str() != Some(v),
            Some((k, v)) => labels[k].as_str() == Some(v),
            None => !labels[term].is_null(),
        }
    })
}

/// A namespaced object takes the request's namespace; a cluster-scoped one has none (as the
/// API server stores them).
fn set_namespace(obj: &mut Value, ns: Option<&str>) {
    match ns {
        Some(ns) => obj["metadata"]["namespace"] = json!(ns),
        None => {
            if let Some(m) = obj["metadata"].as_object_mut() {
                m.remove("namespace");
            }
        }
    }
}

/// RFC 6902 JSON Patch (add, remove, replace, test), as the API server applies
/// `application/json-patch+json`; an error names the failing operation.
pub fn json_patch_apply(doc: &Value, ops: &Value) -> Result<Value, String> {
    let mut doc = doc.clone();
    let unescape = |t: &str| t.replace("~1", "/").replace("~0", "~");
    for op in ops.as_array().ok_or("a JSON Patch is an array")? {
        let path = op["path"].as_str().ok_or("op without a path")?;
        let kind = op["op"].as_str().unwrap_or_default();
        if kind == "test" {
            // A missing member tests equal to null, as the API server's patch library has it
            // (kube's finalizer helper relies on this).
            if doc.pointer(path).unwrap_or(&Value::Null) != &op["value"] {
                return Err(format!("test failed at {path}"));
            }
            continue;
        }
        let (parent, last) = path.rsplit_once('/').ok_or("path must start with /")?;
        let last = unescape(last);
        let target = doc
            .pointer_mut(parent)
            .ok_or_else(|| format!("no parent for {path}"))?;
        match (kind, target) {
            ("remove", Value::Object(m)) => {
                m.remove(&last)
                    .ok_or_else(|| format!("nothing at {path}"))?;
            }
            ("remove", Value::Array(a)) => {
                let i: usize = last.parse().map_err(|_| format!("bad index in {path}"))?;
                if i >= a.len() {
                    return Err(format!("nothing at {path}"));
                }
                a.remove(i);
            }
            ("add" | "replace", Value::Object(m)) => {
                m.insert(last, op["value"].clone());
            }
            ("add", Value::Array(a)) if last == "-" => a.push(op["value"].clone()),
            ("add", Value::Array(a)) => {
                let i: usize = last.parse().map_err(|_| format!("bad index in {path}"))?;
                if i > a.len() {
                    return Err(format!("index out of range in {path}"));
                }
                a.insert(i, op["value"].clone());
            }
            ("replace", Value::Array(a)) => {
                let i: usize = last.parse().map_err(|_| format!("bad index in {path}"))?;
                *a.get_mut(i).ok_or_else(|| format!("nothing at {path}"))? = op["value"].clone();
            }
            (other, _) => return Err(format!("unsupported op {other:?} at {path}")),
        }
    }
    Ok(doc)
}

/// RFC 7386 JSON merge patch.
pub fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            if let Some(t) = target.as_object_mut() {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn status(code: StatusCode, reason: &str, message: String) -> Response<Body> {
    json_response(
        code,
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "reason": reason, "message": message, "code": code.as_u16(),
        }),
    )
}

impl FakeApi {
    /// Serve on 127.0.0.1 (any free port).
    pub async fn start() -> FakeApi {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let api = FakeApi {
            addr,
            state: Arc::default(),
            events: broadcast::channel(65_536).0,
            rmw: Arc::default(),
        };
        let server = api.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let api = server.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let api = api.clone();
                        async move { Ok::<_, Infallible>(api.handle(req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        api
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Start `bin` as a process with a kubeconfig pointing at this server, `EBB_LOG=warn` and
    /// `env`; returns it and the first line it prints on stdout.
    pub fn start_binary(&self, bin: &str, env: &[(&str, &str)]) -> (Process, String) {
        use std::io::BufRead;
        let kubeconfig = std::env::temp_dir().join(format!(
            "ebb-kubeconfig-{}-{}",
            std::process::id(),
            self.addr.port()
        ));
        std::fs::write(&kubeconfig, self.kubeconfig())
            .unwrap_or_else(|e| panic!("{}: {e}", kubeconfig.display()));
        let mut child = std::process::Command::new(bin)
            .env("KUBECONFIG", &kubeconfig)
            .env("EBB_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{bin}: {e}"));
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = std::io::BufReader::new(out).read_line(&mut line);
        }
        (Process(child), line)
    }

    /// A kubeconfig pointing at this server (for binaries run as processes).
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
            self.url()
        )
    }

    fn record(&self, s: &mut State, coll: &str, kind: &'static str, obj: Value) {
        s.log.push((coll.to_string(), s.rv, kind, obj.clone()));
        let _ = self.events.send((coll.to_string(), s.rv, kind, obj));
    }

    /// Create or replace an object from the test's side (as another controller or the kubelet
    /// would), with a new resourceVersion and a watch event.
    /// Store `obj` unless `dry` (then answer with it as it would be stored).
    fn write(&self, obj: Value, dry: bool) -> Value {
        if dry {
            return obj;
        }
        self.store(obj)
    }

    pub fn put(&self, obj: Value) -> Value {
        let _rmw = self.rmw.lock().unwrap_or_else(|e| e.into_inner());
        self.store(obj)
    }

    fn store(&self, mut obj: Value) -> Value {
        let coll = collection(
            obj["apiVersion"].as_str().unwrap_or("v1"),
            obj["kind"].as_str().unwrap_or_default(),
        );
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // A write that changes nothing is not a change: same resourceVersion, no event (as
        // the API server skips no-op updates and patches).
        if let Some(old) = s.objects.get(&(coll.clone(), ns.clone(), name.clone())) {
            let mut probe = obj.clone();
            for k in ["resourceVersion", "generation", "uid", "creationTimestamp"] {
                if probe["metadata"][k].is_null() || k != "uid" {
                    probe["metadata"][k] = old["metadata"][k].clone();
                }
            }
            if probe == *old {
                return old.clone();
            }
        }
        s.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(s.rv.to_string());
        if obj["metadata"]["uid"].is_null() {
            obj["metadata"]["uid"] = json!(format!("uid-{}-{}", name, s.rv));
        }
        let key = (coll.clone(), ns, name);
        // metadata.generation: 1 at creation, +1 whenever spec changes (as the API server).
        let generation = match s.objects.get(&key) {
            Some(old) => {
                let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
                if old.get("spec") != obj.get("spec") {
                    g + 1
                } else {
                    g
                }
            }
            None => obj["metadata"]["generation"].as_i64().unwrap_or(1),
        };
        obj["metadata"]["generation"] = json!(generation);
        if !obj["metadata"]["deletionTimestamp"].is_null()
            && obj["metadata"]["finalizers"]
                .as_array()
                .is_none_or(|f| f.is_empty())
            && s.objects.remove(&key).is_some()
        {
            self.record(&mut s, &coll, "DELETED", obj.clone());
            return obj;
        }
        let kind = if s.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        s.objects.insert(key, obj.clone());
        self.record(&mut s, &coll, kind, obj.clone());
        obj
    }

    pub fn remove(&self, coll: &str, ns: &str, name: &str) -> Option<Value> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let obj = s
            .objects
            .remove(&(coll.to_string(), ns.to_string(), name.to_string()))?;
        s.rv += 1;
        self.record(&mut s, coll, "DELETED", obj.clone());
        Some(obj)
    }

    pub fn get(&self, coll: &str, ns: &str, name: &str) -> Option<Value> {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.objects
            .get(&(coll.to_string(), ns.to_string(), name.to_string()))
            .cloned()
    }

    pub fn list(&self, coll: &str) -> Vec<Value> {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.objects
            .iter()
            .filter(|((c, _, _), _)| c == coll)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// (method, path) of every request so far.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .requests
            .clone()
    }

    /// Every request as RBAC sees it (verb, group, resource, namespace).
    pub fn accesses(&self) -> Vec<Access> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .audit
            .clone()
    }

    /// The next request with this method whose path starts with `prefix` fails with 500.
    pub fn fail_once(&self, method: &str, prefix: &str) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .fail_once
            .push((method.to_string(), prefix.to_string()));
    }

    /// Every request with this method whose path starts with `prefix` fails with `code`
    /// (`Forbidden` for 403, `Invalid` for 422, else `InternalError`) until `clear_failures`.
    pub fn fail_always(&self, method: &str, prefix: &str, code: u16) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .fail_always
            .push((method.to_string(), prefix.to_string(), code));
    }

    pub fn clear_failures(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.fail_always.clear();
        s.fail_once.clear();
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let method = req.method().clone();
        let uri = req.uri().clone();
        let apply = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/apply-patch"));
        let json_patch = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json-patch"));
        let q = query(&uri);
        {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            s.requests
                .push((method.to_string(), uri.path().to_string()));
            if let Some(i) = s
                .fail_once
                .iter()
                .position(|(m, p)| *m == method.as_str() && uri.path().starts_with(p.as_str()))
            {
                s.fail_once.remove(i);
                return status(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    "injected failure".into(),
                );
            }
            if let Some((_, _, code)) = s
                .fail_always
                .iter()
                .find(|(m, p, _)| *m == method.as_str() && uri.path().starts_with(p.as_str()))
            {
                let code = StatusCode::from_u16(*code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let reason = match code.as_u16() {
                    403 => "Forbidden",
                    422 => "Invalid",
                    _ => "InternalError",
                };
                return status(code, reason, format!("injected: {reason}"));
            }
        }
        if let Some(p) = parse_path(uri.path()) {
            let verb = match (&method, &p.name) {
                (&Method::GET, None) if q.get("watch").is_some_and(|w| w == "true" || w == "1") => {
                    "watch"
                }
                (&Method::GET, None) => "list",
                (&Method::GET, Some(_)) => "get",
                (&Method::POST, _) => "create",
                (&Method::PUT, _) => "update",
                (&Method::PATCH, _) => "patch",
                (&Method::DELETE, _) => "delete",
                _ => "other",
            };
            let mut parts = p.collection.rsplitn(3, '/');
            let plural = parts.next().unwrap_or_default().to_string();
            let _version = parts.next();
            let group = parts.next().unwrap_or_default();
            let access = Access {
                verb: verb.into(),
                group: if group == "core" {
                    String::new()
                } else {
                    group.into()
                },
                resource: match &p.sub {
                    Some(sub) => format!("{plural}/{sub}"),
                    None => plural,
                },
                namespace: p.namespace.clone(),
            };
            self.state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .audit
                .push(access);
        }
        let Some(p) = parse_path(uri.path()) else {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("no route {}", uri.path()),
            );
        };
        let body: Value = match req.into_body().collect().await {
            Ok(b) => {
                let bytes = b.to_bytes();
                if bytes.is_empty() {
                    Value::Null
                } else {
                    // kube sends JSON for every verb, apply patches included.
                    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
                }
            }
            Err(_) => Value::Null,
        };
        // A dry run is admitted and answered, not stored (as the API server does).
        let dry = q.get("dryRun").is_some_and(|d| d == "All");
        match (method, p.name.clone()) {
            (Method::GET, None) if q.get("watch").is_some_and(|w| w == "true" || w == "1") => {
                self.watch(p, &q)
            }
            (Method::GET, None) => {
                let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                let items: Vec<Value> = s
                    .objects
                    .iter()
                    .filter(|((c, ns, _), _)| {
                        *c == p.collection && p.namespace.as_ref().is_none_or(|n| n == ns)
                    })
                    .map(|(_, v)| v.clone())
                    .filter(|v| selects(q.get("labelSelector"), v))
                    .collect();
                json_response(
                    StatusCode::OK,
                    &json!({
                        "apiVersion": "v1", "kind": "List",
                        "metadata": { "resourceVersion": s.rv.to_string() },
                        "items": items,
                    }),
                )
            }
            (Method::GET, Some(name)) => {
                match self.get(&p.collection, p.namespace.as_deref().unwrap_or(""), &name) {
                    Some(v) if p.sub.as_deref() == Some("scale") => {
                        json_response(StatusCode::OK, &scale_of(&v))
                    }
                    Some(v) => json_response(StatusCode::OK, &v),
                    None => status(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        format!("{name} not found"),
                    ),
                }
            }
            (Method::POST, None) => {
                let name = body["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let ns = p.namespace.clone().unwrap_or_default();
                if self.get(&p.collection, &ns, &name).is_some() {
                    return status(
                        StatusCode::CONFLICT,
                        "AlreadyExists",
                        format!("{name} already exists"),
                    );
                }
                let mut obj = body;
                set_namespace(&mut obj, p.namespace.as_deref());
                json_response(StatusCode::CREATED, &self.write(obj, dry))
            }
            (Method::PUT, Some(name)) => {
                let _rmw = self.rmw.lock().unwrap_or_else(|e| e.into_inner());
                let ns = p.namespace.clone().unwrap_or_default();
                let stored = self.get(&p.collection, &ns, &name);
                let sent_rv = body["metadata"]["resourceVersion"].as_str();
                match &stored {
                    None if p.sub.is_some() => {
                        return status(
                            StatusCode::NOT_FOUND,
                            "NotFound",
                            format!("{name} not found"),
                        );
                    }
                    Some(s)
                        if sent_rv.is_some()
                            && sent_rv != s["metadata"]["resourceVersion"].as_str() =>
                    {
                        return status(
                            StatusCode::CONFLICT,
                            "Conflict",
                            format!("{name}: the object has been modified"),
                        );
                    }
                    _ => {}
                }
                let mut obj = match (p.sub.as_deref(), stored) {
                    (Some("status"), Some(mut s)) => {
                        s["status"] = body["status"].clone();
                        s
                    }
                    _ => body,
                };
                set_namespace(&mut obj, p.namespace.as_deref());
                json_response(StatusCode::OK, &self.write(obj, dry))
            }
            (Method::PATCH, Some(name)) => {
                let _rmw = self.rmw.lock().unwrap_or_else(|e| e.into_inner());
                let ns = p.namespace.clone().unwrap_or_default();
                let Some(mut obj) = self.get(&p.collection, &ns, &name) else {
                    if apply && p.sub.is_none() {
                        // Server-side apply creates what is missing.
                        let mut obj = body;
                        set_namespace(&mut obj, p.namespace.as_deref());
                        if let Some(o) = obj.as_object_mut() {
                            o.remove("status");
                        }
                        return json_response(StatusCode::CREATED, &self.write(obj, dry));
                    }
                    return status(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        format!("{name} not found"),
                    );
                };
                match p.sub.as_deref() {
                    Some("scale") => {
                        if let Some(r) = body["spec"]["replicas"].as_i64() {
                            obj["spec"]["replicas"] = json!(r);
                        }
                        let stored = self.write(obj, dry);
                        json_response(StatusCode::OK, &scale_of(&stored))
                    }
                    // A resourceVersion in a merge patch is a precondition.
                    _ if !json_patch
                        && !apply
                        && body["metadata"]["resourceVersion"]
                            .as_str()
                            .is_some_and(|rv| {
                                Some(rv) != obj["metadata"]["resourceVersion"].as_str()
                            }) =>
                    {
                        status(
                            StatusCode::CONFLICT,
                            "Conflict",
                            format!("{name}: the object has been modified"),
                        )
                    }
                    Some("status") => {
                        merge(&mut obj["status"], &body["status"]);
                        json_response(StatusCode::OK, &self.write(obj, dry))
                    }
                    _ if json_patch => match json_patch_apply(&obj, &body) {
                        Ok(patched) => json_response(StatusCode::OK, &self.write(patched, dry)),
                        Err(e) => status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", e),
                    },
                    _ => {
                        let mut patch = body;
                        if let Some(m) = patch["metadata"].as_object_mut() {
                            m.remove("resourceVersion");
                        }
                        if apply && let Some(o) = patch.as_object_mut() {
                            // Approximation of server-side apply: a merge (fields the applier
                            // leaves out, such as replicas set by someone else, stay; lists
                            // are replaced); status is not applied.
                            o.remove("status");
                        }
                        merge(&mut obj, &patch);
                        json_response(StatusCode::OK, &self.write(obj, dry))
                    }
                }
            }
            (Method::DELETE, Some(name)) => {
                let ns = p.namespace.clone().unwrap_or_default();
                // An object with finalizers is only marked for deletion (deletionTimestamp);
                // it goes when the last finalizer is removed.
                if let Some(mut obj) = self.get(&p.collection, &ns, &name)
                    && obj["metadata"]["finalizers"]
                        .as_array()
                        .is_some_and(|f| !f.is_empty())
                {
                    if obj["metadata"]["deletionTimestamp"].is_null() {
                        obj["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
                        obj = self.write(obj, dry);
                    }
                    return json_response(StatusCode::OK, &obj);
                }
                match self.remove(&p.collection, &ns, &name) {
                    Some(v) => json_response(StatusCode::OK, &v),
                    None => status(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        format!("{name} not found"),
                    ),
                }
            }
            _ => status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "unsupported".into(),
            ),
        }
    }

    fn watch(&self, p: Path, q: &BTreeMap<String, String>) -> Response<Body> {
        let from: u64 = q
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let selector = q.get("labelSelector").cloned();
        let matches = {
            let coll = p.collection.clone();
            let ns = p.namespace.clone();
            move |c: &str, obj: &Value| {
                c == coll
                    && ns
                        .as_ref()
                        .is_none_or(|n| obj["metadata"]["namespace"].as_str() == Some(n))
                    && selects(selector.as_ref(), obj)
            }
        };
        let (backlog, rx) = {
            let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let backlog: Vec<Bytes> = s
                .log
                .iter()
                .filter(|(c, rv, _, obj)| *rv > from && matches(c, obj))
                .map(|(_, _, t, obj)| line(t, obj))
                .collect();
            (backlog, self.events.subscribe())
        };
        let stream = futures_util::stream::unfold(
            (backlog.into_iter(), rx, matches),
            |(mut backlog, mut rx, matches)| async move {
                if let Some(b) = backlog.next() {
                    return Some((Ok(Frame::data(b)), (backlog, rx, matches)));
                }
                loop {
                    match rx.recv().await {
                        Ok((c, _, t, obj)) if matches(&c, &obj) => {
                            return Some((Ok(Frame::data(line(t, &obj))), (backlog, rx, matches)));
                        }
                        Ok(_) => continue,
                        // Events were missed: the watch ends, as the API server ends one that
                        // falls behind; the client watches again from its last
                        // resourceVersion and is replayed what it missed from the log.
                        Err(
                            broadcast::error::RecvError::Lagged(_)
                            | broadcast::error::RecvError::Closed,
                        ) => return None,
                    }
                }
            },
        );
        let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        r
    }
}

fn line(t: &str, obj: &Value) -> Bytes {
    Bytes::from(format!("{}\n", json!({ "type": t, "object": obj })))
}

fn scale_of(obj: &Value) -> Value {
    json!({
        "apiVersion": "autoscaling/v1", "kind": "Scale",
        "metadata": { "name": obj["metadata"]["name"], "namespace": obj["metadata"]["namespace"],
                      "resourceVersion": obj["metadata"]["resourceVersion"] },
        "spec": { "replicas": obj["spec"]["replicas"].as_i64().unwrap_or(0) },
        "status": { "replicas": obj["status"]["replicas"].as_i64().unwrap_or(0) },
    })
}
