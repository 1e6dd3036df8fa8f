//! The HTTP side: requests routed to discovery, OpenAPI and the resource verbs; responses as
//! JSON (objects, lists, Tables, Status errors) or, for watches, a stream of JSON lines.

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use store::{Event, Propagation, Store};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::admission::Admission;
use crate::apply::{self, Writer};
use crate::catalog::{Catalog, Resource};
use crate::fields::{self, Validation};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::{ApiError, Cause, from_store};
use crate::table::{Include, table};

/// The largest request body taken (as the Kubernetes API server's limit for JSON).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// How often a watch that asked for bookmarks gets one.
pub const BOOKMARK_EVERY: Duration = Duration::from_secs(10);

/// How long a watch lasts at most when the client names no timeout.
pub const MAX_WATCH: Duration = Duration::from_secs(30 * 60);

/// Endpoints of the embedding program beside the Kubernetes API (behind the same guard).
pub trait Extras: Send + Sync {
    /// An answer (status, content type, body) for `path`, or `None` when it is not one.
    fn handle(&self, method: &Method, path: &str) -> Option<(StatusCode, &'static str, Vec<u8>)>;
}

/// The API: the store, what is served, admission, and who may call.
pub struct Api {
    pub store: Arc<Store>,
    pub catalog: Catalog,
    pub admission: Admission,
    /// The bearer token every request must carry.
    pub token: String,
    /// Who the token's holder is (for `serving.knative.dev/creator`).
    pub user: String,
    /// Where the API listens (for Origin checks and `/api`'s server address).
    pub addr: SocketAddr,
    pub extras: Option<Arc<dyn Extras>>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").field("addr", &self.addr).finish()
    }
}

/// A response body: whole, or (a watch) streamed from a channel.
pub enum Body {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Bytes>),
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Body")
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match &mut *self {
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream(rx) => rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b)))),
        }
    }
}

type Resp = Response<Body>;

fn json_response(status: StatusCode, v: &Value) -> Resp {
    let mut r = Response::new(Body::Full(Some(Bytes::from(v.to_string()))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error_response(e: &ApiError) -> Resp {
    json_response(e.code, &e.to_status())
}

/// Make the `default` namespace exist, as on every cluster.
pub fn ensure_default_namespace(store: &Store) -> Result<(), store::StoreError> {
    if store.get("Namespace", "", "default")?.is_none() {
        let ns = store.create(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}),
        )?;
        store.update_status(
            "Namespace",
            "",
            "default",
            json!({"phase": "Active"}),
            ns["metadata"]["resourceVersion"].as_str(),
        )?;
    }
    Ok(())
}

/// Serve the API on `listener` (over TLS when `tls` is given) until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    api: Arc<Api>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            (stream, _) = http1::accept::accept(&listener) => {
                let api = api.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            // A handshake that stalls is given up on.
                            let handshake = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await;
                            if let Ok(Ok(stream)) = handshake {
                                serve_connection(api, stream).await;
                            }
                        }
                        None => serve_connection(api, stream).await,
                    }
                });
            }
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

async fn serve_connection<S>(api: Arc<Api>, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    {
        let svc = hyper::service::service_fn(move |req| {
            let api = api.clone();
            async move { Ok::<_, Infallible>(api.handle(req).await) }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), svc)
            .await;
    }
}

/// Query parameters, percent-decoded.
fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where a request points in the resource tree.
struct Target<'a> {
    resource: &'a Resource,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

/// What a write request asked for besides its body.
struct WriteOptions {
    dry_run: bool,
    validation: Validation,
    manager: String,
    force: bool,
}

impl Api {
    pub async fn handle(self: &Arc<Self>, req: Request<Incoming>) -> Resp {
        let has_body = req.headers().contains_key(http::header::TRANSFER_ENCODING)
            || req
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0");
        if let Err(crate::guard::Denied(code, why)) = crate::guard::check(
            req.method(),
            req.headers(),
            has_body,
            self.addr,
            &self.token,
        ) {
            let reason = match code {
                StatusCode::UNAUTHORIZED => "Unauthorized",
                StatusCode::FORBIDDEN => "Forbidden",
                _ => "UnsupportedMediaType",
            };
            return error_response(&ApiError::new(code, reason, why));
        }
        let path = req.uri().path().trim_end_matches('/').to_string();
        if let Some(extras) = &self.extras
            && let Some((status, content_type, body)) = extras.handle(req.method(), &path)
        {
            let mut r = Response::new(Body::Full(Some(Bytes::from(body))));
            *r.status_mut() = status;
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static(content_type),
            );
            return r;
        }
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let get = req.method() == Method::GET;
        let doc = |v: Option<Value>| match v {
            Some(v) => json_response(StatusCode::OK, &v),
            None => error_response(&ApiError::new(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("the server could not find the requested resource ({path})"),
            )),
        };
        match (get, segs.as_slice()) {
            (true, ["version"]) => {
                return json_response(StatusCode::OK, &crate::discovery::version());
            }
            (true, ["healthz" | "readyz" | "livez"]) => {
                let mut r = Response::new(Body::Full(Some(Bytes::from_static(b"ok"))));
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain"),
                );
                return r;
            }
            (true, ["api"]) => {
                return json_response(
                    StatusCode::OK,
                    &crate::discovery::core_versions(&self.addr.to_string()),
                );
            }
            (true, ["api", v]) => return doc(crate::discovery::resources(&self.catalog, "", v)),
            (true, ["apis"]) => {
                return json_response(StatusCode::OK, &crate::discovery::groups(&self.catalog));
            }
            (true, ["apis", g]) => return doc(crate::discovery::group_doc(&self.catalog, g)),
            (true, ["apis", g, v]) => return doc(crate::discovery::resources(&self.catalog, g, v)),
            (true, ["openapi", "v2"]) => {
                return json_response(StatusCode::OK, &crate::openapi::v2(&self.catalog));
            }
            (true, ["openapi", "v3"]) => {
                return json_response(StatusCode::OK, &crate::openapi::v3_index(&self.catalog));
            }
            (true, ["openapi", "v3", "api", v]) => {
                let served = self
                    .catalog
                    .group_versions()
                    .iter()
                    .any(|(g, ver)| g.is_empty() && ver == v);
                return doc(served.then(|| crate::openapi::v3_doc(&self.catalog, "", v)));
            }
            (true, ["openapi", "v3", "apis", g, v]) => {
                let served = self
                    .catalog
                    .group_versions()
                    .iter()
                    .any(|(gg, ver)| gg == g && ver == v);
                return doc(served.then(|| crate::openapi::v3_doc(&self.catalog, g, v)));
            }
            _ => {}
        }
        let (group, version, rest): (&str, &str, &[&str]) = match segs.as_slice() {
            ["api", v, rest @ ..] => ("", v, rest),
            ["apis", g, v, rest @ ..] => (g, v, rest),
            _ => return doc(None),
        };
        let (namespace, plural, rest) = match rest {
            ["namespaces", ns, plural, rest @ ..] if !matches!(*plural, "status" | "finalize") => {
                (Some(ns.to_string()), *plural, rest)
            }
            [plural, rest @ ..] => (None, *plural, rest),
            [] => return doc(None),
        };
        let Some(resource) = self.catalog.find(group, version, plural) else {
            return doc(None);
        };
        let (name, subresource) = match rest {
            [] => (None, None),
            [name] => (Some(name.to_string()), None),
            [name, sub] => (Some(name.to_string()), Some(sub.to_string())),
            _ => return doc(None),
        };
        if subresource
            .as_deref()
            .is_some_and(|s| s != "status" || !resource.status)
        {
            return doc(None);
        }
        if resource.namespaced && name.is_some() && namespace.is_none() {
            return doc(None);
        }
        if !resource.namespaced && namespace.is_some() {
            return doc(None);
        }
        let target = Target {
            resource,
            namespace,
            name,
            subresource,
        };
        match self.resource(req, target).await {
            Ok(r) => r,
            Err(e) => error_response(&e),
        }
    }

    async fn resource(
        self: &Arc<Self>,
        req: Request<Incoming>,
        t: Target<'_>,
    ) -> Result<Resp, ApiError> {
        let q = query(&req);
        let method = req.method().clone();
        let accept = req
            .headers()
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let as_table = accept.split(',').any(|a| a.contains("as=Table"));
        let content_type = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let agent = req
            .headers()
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("unknown")
            .to_string();
        let opts = WriteOptions {
            dry_run: q.get("dryRun").is_some_and(|d| d == "All"),
            validation: Validation::parse(q.get("fieldValidation").map(String::as_str))
                .map_err(ApiError::bad_request)?,
            manager: q.get("fieldManager").cloned().unwrap_or_else(|| {
                // As the API server: the user agent's program name.
                agent.split('/').next().unwrap_or("unknown").to_string()
            }),
            force: q.get("force").is_some_and(|f| f == "true"),
        };
        if q.get("dryRun").is_some_and(|d| !d.is_empty() && d != "All") {
            return Err(ApiError::bad_request(
                "dryRun: the only supported value is All",
            ));
        }
        let body = if matches!(
            method,
            Method::POST | Method::PUT | Method::PATCH | Method::DELETE
        ) {
            let collected = http_body_util::Limited::new(req.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| {
                    if e.to_string().contains("length limit") {
                        ApiError::new(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "RequestEntityTooLarge",
                            format!("the request body is larger than {MAX_BODY} bytes"),
                        )
                    } else {
                        ApiError::bad_request(format!("reading the request body: {e}"))
                    }
                })?;
            collected.to_bytes()
        } else {
            Bytes::new()
        };
        let r = t.resource;
        match (method, t.name.clone(), t.subresource.as_deref()) {
            (Method::GET, None, _) => {
                let labels =
                    LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))?;
                let fields =
                    FieldSelector::parse(q.get("fieldSelector").map_or("", String::as_str))?;
                if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
                    return self.watch(&t, labels, fields, &q, as_table);
                }
                self.list(&t, &labels, &fields, &q, as_table)
            }
            (Method::GET, Some(name), _) => {
                let obj = self.read(&t, &name)?;
                if as_table && t.subresource.is_none() {
                    let rv = obj["metadata"]["resourceVersion"]
                        .as_str()
                        .and_then(|s| s.parse().ok());
                    return Ok(json_response(
                        StatusCode::OK,
                        &table(
                            r,
                            &[obj],
                            Include::parse(q.get("includeObject").map(String::as_str)),
                            rv,
                        ),
                    ));
                }
                Ok(json_response(StatusCode::OK, &obj))
            }
            (Method::POST, None, None) => {
                let obj = self.parse_body(&content_type, &body, &opts, r)?;
                let (created, warnings) = self.create(&t, obj.0, &opts)?;
                Ok(with_warnings(
                    json_response(StatusCode::CREATED, &created),
                    &obj.1.into_iter().chain(warnings).collect::<Vec<_>>(),
                ))
            }
            (Method::PUT, Some(name), sub) => {
                let (obj, warnings) = self.parse_body(&content_type, &body, &opts, r)?;
                let updated = self.update(&t, &name, obj, sub, &opts)?;
                Ok(with_warnings(
                    json_response(StatusCode::OK, &updated),
                    &warnings,
                ))
            }
            (Method::PATCH, Some(name), sub) => {
                let (patched, code, warnings) =
                    self.patch(&t, &name, sub, &content_type, &body, &opts)?;
                Ok(with_warnings(json_response(code, &patched), &warnings))
            }
            (Method::DELETE, Some(name), None) => {
                let options: Value = if body.is_empty() {
                    json!({})
                } else if content_type == "application/vnd.kubernetes.protobuf" {
                    crate::proto::decode(&body).map_err(ApiError::unsupported_media)?
                } else {
                    serde_json::from_slice(&body)
                        .map_err(|e| ApiError::bad_request(format!("DeleteOptions: {e}")))?
                };
                let policy = q
                    .get("propagationPolicy")
                    .cloned()
                    .or_else(|| options["propagationPolicy"].as_str().map(str::to_string));
                let propagation = match policy.as_deref() {
                    None | Some("Background") | Some("Foreground") => Propagation::Cascade,
                    Some("Orphan") => Propagation::Orphan,
                    Some(other) => {
                        return Err(ApiError::bad_request(format!(
                            "propagationPolicy: {other:?} is not Orphan, Background or Foreground"
                        )));
                    }
                };
                let dry = opts.dry_run
                    || options["dryRun"]
                        .as_array()
                        .is_some_and(|d| d.iter().any(|x| x == "All"));
                let uid = options["preconditions"]["uid"].as_str();
                let rv = options["preconditions"]["resourceVersion"].as_str();
                let ns = t.namespace.as_deref().unwrap_or("");
                let obj = match self.store.get(&r.kind, ns, &name) {
                    Ok(Some(o)) => o,
                    Ok(None) => return Err(ApiError::not_found(r, &name)),
                    // A damaged record can still be deleted (that is how it is repaired).
                    Err(store::StoreError::Damaged { .. }) => json!({
                        "apiVersion": r.api_version(), "kind": r.kind,
                        "metadata": {"name": name, "namespace": ns},
                    }),
                    Err(e) => return Err(from_store(r, &name, e)),
                };
                if let Some(rv) = rv
                    && obj["metadata"]["resourceVersion"].as_str() != Some(rv)
                {
                    return Err(ApiError::conflict(
                        r,
                        &name,
                        &format!(
                            "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                            obj["metadata"]["resourceVersion"].as_str().unwrap_or("")
                        ),
                    ));
                }
                if dry {
                    return Ok(json_response(StatusCode::OK, &obj));
                }
                if r.kind == "Namespace" {
                    if name == "default" {
                        return Err(ApiError::new(
                            StatusCode::FORBIDDEN,
                            "Forbidden",
                            "namespaces \"default\" is forbidden: this namespace may not be deleted",
                        ));
                    }
                    // What lives in a namespace goes with it.
                    for kind in self
                        .catalog
                        .resources
                        .iter()
                        .filter(|x| x.namespaced)
                        .map(|x| x.kind.clone())
                    {
                        for o in self
                            .store
                            .list(&kind, Some(&name))
                            .map_err(|e| from_store(r, &name, e))?
                        {
                            let n = o["metadata"]["name"].as_str().unwrap_or_default();
                            match self.store.delete(&kind, &name, n) {
                                Ok(_) | Err(store::StoreError::NotFound { .. }) => {}
                                Err(e) => return Err(from_store(r, &name, e)),
                            }
                        }
                    }
                }
                let gone = self
                    .store
                    .delete_with(&r.kind, ns, &name, propagation, uid)
                    .map_err(|e| from_store(r, &name, e))?;
                Ok(json_response(StatusCode::OK, gone.first().unwrap_or(&obj)))
            }
            (Method::DELETE, None, None) => {
                let labels =
                    LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))?;
                let fields =
                    FieldSelector::parse(q.get("fieldSelector").map_or("", String::as_str))?;
                let (items, _) = self
                    .store
                    .list_at(&r.kind, t.namespace.as_deref())
                    .map_err(|e| from_store(r, "", e))?;
                let mut gone = Vec::new();
                for o in items
                    .iter()
                    .filter(|o| labels.matches(o) && fields.matches(o))
                {
                    let ns = o["metadata"]["namespace"].as_str().unwrap_or("");
                    let name = o["metadata"]["name"].as_str().unwrap_or_default();
                    if !opts.dry_run {
                        match self.store.delete(&r.kind, ns, name) {
                            Ok(_) | Err(store::StoreError::NotFound { .. }) => {}
                            Err(e) => return Err(from_store(r, name, e)),
                        }
                    }
                    gone.push(o.clone());
                }
                let rv = self
                    .store
                    .resource_version()
                    .map_err(|e| from_store(r, "", e))?;
                Ok(json_response(
                    StatusCode::OK,
                    &list_object(r, gone, rv, None),
                ))
            }
            (m, _, _) => Err(ApiError::method_not_allowed(format!(
                "{m} is not supported here"
            ))),
        }
    }

    fn read(&self, t: &Target<'_>, name: &str) -> Result<Value, ApiError> {
        let r = t.resource;
        let ns = t.namespace.as_deref().unwrap_or("");
        self.store
            .get(&r.kind, ns, name)
            .map_err(|e| from_store(r, name, e))?
            .ok_or_else(|| ApiError::not_found(r, name))
    }

    fn list(
        &self,
        t: &Target<'_>,
        labels: &LabelSelector,
        fields: &FieldSelector,
        q: &HashMap<String, String>,
        as_table: bool,
    ) -> Result<Resp, ApiError> {
        let r = t.resource;
        let (items, rv) = self
            .store
            .list_at(&r.kind, t.namespace.as_deref())
            .map_err(|e| from_store(r, "", e))?;
        let mut items: Vec<Value> = items
            .into_iter()
            .filter(|o| labels.matches(o) && fields.matches(o))
            .collect();
        // limit/continue: the token is the last key given.
        if let Some(after) = q.get("continue").filter(|c| !c.is_empty()) {
            let after =
                String::from_utf8(crate::admission::base64_decode(after).unwrap_or_default())
                    .unwrap_or_default();
            items.retain(|o| key_of(o) > after);
        }
        let mut next = None;
        if let Some(limit) = q
            .get("limit")
            .and_then(|l| l.parse::<usize>().ok())
            .filter(|l| *l > 0)
            && items.len() > limit
        {
            let remaining = items.len() - limit;
            items.truncate(limit);
            next = items.last().map(|o| {
                (
                    crate::admission::base64_encode(key_of(o).as_bytes()),
                    remaining,
                )
            });
        }
        if as_table {
            let mut t = table(
                r,
                &items,
                Include::parse(q.get("includeObject").map(String::as_str)),
                Some(rv),
            );
            if let Some((token, _)) = &next {
                t["metadata"]["continue"] = json!(token);
            }
            return Ok(json_response(StatusCode::OK, &t));
        }
        Ok(json_response(
            StatusCode::OK,
            &list_object(r, items, rv, next),
        ))
    }

    /// Decode a body (JSON or YAML), checking for duplicate fields; returns it and warnings.
    fn parse_body(
        &self,
        content_type: &str,
        body: &[u8],
        opts: &WriteOptions,
        r: &Resource,
    ) -> Result<(Value, Vec<String>), ApiError> {
        let obj: Value = match content_type {
            "application/json" | "" => serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?,
            "application/yaml" => serde_saphyr::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("the body is not YAML: {e}")))?,
            "application/vnd.kubernetes.protobuf" => {
                crate::proto::decode(body).map_err(ApiError::unsupported_media)?
            }
            other => {
                return Err(ApiError::unsupported_media(format!(
                    "the body's media type {other:?} is not supported: send application/json or application/yaml (protobuf is not served)"
                )));
            }
        };
        let mut warnings = Vec::new();
        if content_type != "application/yaml" {
            let dups = fields::duplicates(body);
            if !dups.is_empty() {
                let text: Vec<String> = dups
                    .iter()
                    .map(|d| format!("duplicate field {d:?}"))
                    .collect();
                match opts.validation {
                    Validation::Strict => {
                        return Err(ApiError::bad_request(format!(
                            "strict decoding error: {}",
                            text.join(", ")
                        )));
                    }
                    Validation::Warn => warnings.extend(text),
                    Validation::Ignore => {}
                }
            }
        }
        if !obj.is_object() {
            return Err(ApiError::bad_request(format!(
                "the body must be a {} object",
                r.kind
            )));
        }
        Ok((obj, warnings))
    }

    /// Unknown fields, as `opts` says: refused, warned about and pruned, or pruned.
    fn check_fields(
        &self,
        obj: &mut Value,
        r: &Resource,
        opts: &WriteOptions,
    ) -> Result<Vec<String>, ApiError> {
        let unknown = fields::prune_unknown(obj, &r.schema);
        if unknown.is_empty() {
            return Ok(Vec::new());
        }
        let text: Vec<String> = unknown
            .iter()
            .map(|u| format!("unknown field {u:?}"))
            .collect();
        match opts.validation {
            Validation::Strict => Err(ApiError::bad_request(format!(
                "strict decoding error: {}",
                text.join(", ")
            ))),
            Validation::Warn => Ok(text),
            Validation::Ignore => Ok(Vec::new()),
        }
    }

    fn check_identity(&self, obj: &mut Value, t: &Target<'_>) -> Result<(), ApiError> {
        let r = t.resource;
        let (av, kind) = (
            obj["apiVersion"].as_str().unwrap_or(""),
            obj["kind"].as_str().unwrap_or(""),
        );
        if av != r.api_version() || kind != r.kind {
            return Err(ApiError::bad_request(format!(
                "the API version ({av}) and kind ({kind}) in the data do not match the request's ({}, {})",
                r.api_version(),
                r.kind
            )));
        }
        if r.namespaced {
            let ns = t.namespace.clone().unwrap_or_else(|| "default".into());
            match obj["metadata"]["namespace"].as_str() {
                Some(given) if !given.is_empty() && given != ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => obj["metadata"]["namespace"] = json!(ns),
            }
            if ns != "default"
                && self
                    .store
                    .get("Namespace", "", &ns)
                    .map_err(|e| ApiError::internal(e.to_string()))?
                    .is_none()
            {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("namespaces {ns:?} not found"),
                ));
            }
        } else if let Some(m) = obj["metadata"].as_object_mut() {
            // A cluster-scoped object has no namespace; the API server drops one sent.
            m.remove("namespace");
        }
        Ok(())
    }

    fn create(
        &self,
        t: &Target<'_>,
        mut obj: Value,
        opts: &WriteOptions,
    ) -> Result<(Value, Vec<String>), ApiError> {
        let r = t.resource;
        self.check_identity(&mut obj, t)?;
        let warnings = self.check_fields(&mut obj, r, opts)?;
        let generate = obj["metadata"]["generateName"].as_str().map(str::to_string);
        let named = obj["metadata"]["name"]
            .as_str()
            .is_some_and(|n| !n.is_empty());
        if !named && generate.is_none() {
            return Err(ApiError::invalid(
                r,
                "",
                vec![Cause {
                    reason: "FieldValueRequired",
                    field: "metadata.name".into(),
                    message: "name or generateName is required".into(),
                }],
            ));
        }
        for attempt in 0..8 {
            let mut candidate = obj.clone();
            if !named && let Some(prefix) = &generate {
                candidate["metadata"]["name"] = json!(format!("{prefix}{}", random_suffix()));
            }
            let name = candidate["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if let Some(m) = candidate["metadata"].as_object_mut() {
                for k in [
                    "uid",
                    "resourceVersion",
                    "generation",
                    "creationTimestamp",
                    "managedFields",
                    "selfLink",
                    "deletionTimestamp",
                ] {
                    m.remove(k);
                }
            }
            let mut admitted = self.admission.admit(r, candidate, None, &self.user)?;
            let status = admitted.as_object_mut().and_then(|m| m.remove("status"));
            record(None, &mut admitted, opts, r);
            if opts.dry_run {
                return Ok((admitted, warnings));
            }
            match self.store.create(admitted) {
                Ok(stored) => {
                    let stored = self.initial_status(r, stored, status)?;
                    return Ok((stored, warnings));
                }
                Err(store::StoreError::AlreadyExists { .. }) if !named && attempt < 7 => continue,
                Err(e) => return Err(from_store(r, &name, e)),
            }
        }
        Err(ApiError::internal("could not generate a unique name"))
    }

    /// A status the caller or admission gave a new object (kept only where nothing else owns
    /// status: resources without a status subresource never drop it, Namespaces get Active).
    fn initial_status(
        &self,
        r: &Resource,
        stored: Value,
        status: Option<Value>,
    ) -> Result<Value, ApiError> {
        let keep = match &status {
            Some(s) if r.kind == "Namespace" => Some(s.clone()),
            Some(s) if !r.status => Some(s.clone()),
            _ => None,
        };
        let Some(s) = keep else { return Ok(stored) };
        let ns = stored["metadata"]["namespace"].as_str().unwrap_or("");
        let name = stored["metadata"]["name"].as_str().unwrap_or_default();
        self.store
            .update_status(&r.kind, ns, name, s, None)
            .map_err(|e| from_store(r, name, e))
    }

    fn update(
        &self,
        t: &Target<'_>,
        name: &str,
        mut obj: Value,
        sub: Option<&str>,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        let r = t.resource;
        self.check_identity(&mut obj, t)?;
        if obj["metadata"]["name"].as_str() != Some(name) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                obj["metadata"]["name"]
            )));
        }
        let warnings = self.check_fields(&mut obj, r, opts)?;
        let old = self.read(t, name)?;
        let expected = obj["metadata"]["resourceVersion"]
            .as_str()
            .filter(|v| !v.is_empty())
            .map(str::to_string);
        if let Some(e) = &expected
            && old["metadata"]["resourceVersion"].as_str() != Some(e.as_str())
        {
            return Err(from_store(
                r,
                name,
                store::StoreError::Conflict {
                    kind: r.kind.clone(),
                    namespace: String::new(),
                    name: name.into(),
                    expected: e.clone(),
                    actual: String::new(),
                },
            ));
        }
        let _ = warnings;
        self.write(
            t,
            name,
            &old,
            obj,
            sub,
            opts,
            expected
                .as_deref()
                .or(old["metadata"]["resourceVersion"].as_str()),
            None,
        )
    }

    /// Admit and store `new` in place of `old` (the main resource, or its status).
    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        t: &Target<'_>,
        name: &str,
        old: &Value,
        mut new: Value,
        sub: Option<&str>,
        opts: &WriteOptions,
        expected: Option<&str>,
        applied: Option<Value>,
    ) -> Result<Value, ApiError> {
        let r = t.resource;
        let ns = t.namespace.as_deref().unwrap_or("");
        if sub == Some("status") {
            let status = new.get("status").cloned().unwrap_or(Value::Null);
            if opts.dry_run {
                let mut out = old.clone();
                out["status"] = status;
                return Ok(out);
            }
            return self
                .store
                .update_status(&r.kind, ns, name, status, expected)
                .map_err(|e| from_store(r, name, e));
        }
        // Identity and system fields stay the server's.
        for k in ["uid", "creationTimestamp", "generation", "resourceVersion"] {
            new["metadata"][k] = old["metadata"][k].clone();
        }
        let mut admitted = self.admission.admit(r, new, Some(old), &self.user)?;
        if let Some(m) = admitted.as_object_mut() {
            m.remove("status");
        }
        match applied {
            // An apply computed its managed fields already.
            Some(fields) => admitted["metadata"]["managedFields"] = fields,
            None => record(Some(old), &mut admitted, opts, r),
        }
        if opts.dry_run {
            if let Some(s) = old.get("status") {
                admitted["status"] = s.clone();
            }
            return Ok(admitted);
        }
        // A write that changes nothing is not made (no new resourceVersion, no event), as on a
        // cluster.
        let content = |o: &Value| {
            let mut o = o.clone();
            if let Some(m) = o.as_object_mut() {
                m.remove("status");
            }
            if let Some(m) = o["metadata"].as_object_mut() {
                m.remove("managedFields");
            }
            o
        };
        if content(&admitted) == content(old) {
            return Ok(old.clone());
        }
        self.store
            .replace(admitted, expected)
            .map_err(|e| from_store(r, name, e))
    }

    fn patch(
        &self,
        t: &Target<'_>,
        name: &str,
        sub: Option<&str>,
        content_type: &str,
        body: &[u8],
        opts: &WriteOptions,
    ) -> Result<(Value, StatusCode, Vec<String>), ApiError> {
        let r = t.resource;
        let apply_patch = content_type.starts_with("application/apply-patch");
        let patch: Value = match content_type {
            "application/apply-patch+yaml" => serde_saphyr::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("the apply patch is not YAML: {e}")))?,
            "application/json-patch+json"
            | "application/merge-patch+json"
            | "application/strategic-merge-patch+json"
            | "application/apply-patch+json" => serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("the patch is not JSON: {e}")))?,
            other => {
                return Err(ApiError::unsupported_media(format!(
                    "the body of the request was in an unknown format ({other}): accepted media types include application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml{}",
                    if r.custom {
                        ""
                    } else {
                        ", application/strategic-merge-patch+json"
                    }
                )));
            }
        };
        if content_type == "application/strategic-merge-patch+json" && r.custom {
            return Err(ApiError::unsupported_media(format!(
                "strategic merge patch is not supported for custom resources ({}): use --type merge or --type json",
                r.qualified()
            )));
        }
        if apply_patch && !opts_has_manager(opts) {
            return Err(ApiError::bad_request(
                "PATCH requests with apply content type must specify fieldManager",
            ));
        }
        // Retried on conflict: another write may land between the read and this one.
        for _ in 0..5 {
            let current = match self.read(t, name) {
                Ok(c) => Some(c),
                Err(e) if e.code == StatusCode::NOT_FOUND && apply_patch && sub.is_none() => None,
                Err(e) => return Err(e),
            };
            if apply_patch {
                let mut config = patch.clone();
                let mut target_like = config.clone();
                self.check_identity(&mut target_like, t)?;
                config["metadata"]["namespace"] = target_like["metadata"]["namespace"].clone();
                if config["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n != name)
                {
                    return Err(ApiError::bad_request(
                        "the name of the applied object does not match the name on the URL",
                    ));
                }
                config["metadata"]["name"] = json!(name);
                let warnings = self.check_fields(&mut config, r, opts)?;
                let writer = Writer {
                    manager: &opts.manager,
                    api_version: &r.api_version(),
                    subresource: sub,
                };
                let merged = apply::apply(current.as_ref(), &config, &writer, opts.force).map_err(
                    |conflicts| {
                        let n = conflicts.len();
                        let causes: Vec<Cause> = conflicts
                            .iter()
                            .map(|c| Cause {
                                reason: "FieldManagerConflict",
                                field: c.field.clone(),
                                message: format!(
                                    "conflict with {:?} using {}",
                                    c.manager, c.api_version
                                ),
                            })
                            .collect();
                        let lines: Vec<String> = conflicts
                            .iter()
                            .map(|c| {
                                format!(
                                    "conflict with {:?} using {}: {}",
                                    c.manager, c.api_version, c.field
                                )
                            })
                            .collect();
                        let mut e = ApiError::conflict(r, name, "");
                        e.message = format!(
                            "Apply failed with {n} conflict{}: {}",
                            if n == 1 { "" } else { "s" },
                            lines.join("\n")
                        );
                        if let Some(d) = e.details.as_mut() {
                            d.causes = causes;
                        }
                        e
                    },
                )?;
                return match current {
                    None => {
                        let fields = merged["metadata"]["managedFields"].clone();
                        let mut admitted = self.admission.admit(r, merged, None, &self.user)?;
                        admitted["metadata"]["managedFields"] = fields;
                        let status = admitted.as_object_mut().and_then(|m| m.remove("status"));
                        if opts.dry_run {
                            return Ok((admitted, StatusCode::CREATED, warnings));
                        }
                        let stored = self
                            .store
                            .create(admitted)
                            .map_err(|e| from_store(r, name, e))?;
                        Ok((
                            self.initial_status(r, stored, status)?,
                            StatusCode::CREATED,
                            warnings,
                        ))
                    }
                    Some(cur) => {
                        let fields = merged["metadata"]["managedFields"].clone();
                        let rv = cur["metadata"]["resourceVersion"]
                            .as_str()
                            .map(str::to_string);
                        match self.write(
                            t,
                            name,
                            &cur,
                            merged,
                            sub,
                            opts,
                            rv.as_deref(),
                            Some(fields),
                        ) {
                            Err(e)
                                if e.reason == "Conflict"
                                    && e.details.as_ref().is_none_or(|d| d.causes.is_empty()) =>
                            {
                                continue;
                            }
                            other => other.map(|v| (v, StatusCode::OK, warnings)),
                        }
                    }
                };
            }
            let Some(cur) = current else {
                return Err(ApiError::not_found(r, name));
            };
            let mut new = cur.clone();
            match content_type {
                "application/json-patch+json" => new = crate::patch::json_patch(&cur, &patch)?,
                "application/merge-patch+json" => crate::patch::merge(&mut new, &patch),
                _ => crate::patch::strategic(&mut new, &patch),
            }
            let warnings = self.check_fields(&mut new, r, opts)?;
            // A resourceVersion the patch sets is a precondition; else the read one.
            let given = patch["metadata"]["resourceVersion"]
                .as_str()
                .map(str::to_string);
            let rv = given.clone().or_else(|| {
                cur["metadata"]["resourceVersion"]
                    .as_str()
                    .map(str::to_string)
            });
            if new["metadata"]["name"].as_str() != Some(name) {
                return Err(ApiError::bad_request(
                    "a patch cannot change the object's name",
                ));
            }
            match self.write(t, name, &cur, new, sub, opts, rv.as_deref(), None) {
                Err(e) if e.reason == "Conflict" && given.is_none() => continue,
                other => return other.map(|v| (v, StatusCode::OK, warnings)),
            }
        }
        Err(ApiError::conflict(
            r,
            name,
            "the object kept changing; try again",
        ))
    }

    fn watch(
        self: &Arc<Self>,
        t: &Target<'_>,
        labels: LabelSelector,
        fields: FieldSelector,
        q: &HashMap<String, String>,
        as_table: bool,
    ) -> Result<Resp, ApiError> {
        let r = t.resource.clone();
        let namespace = t.namespace.clone();
        let bookmarks = q.get("allowWatchBookmarks").is_some_and(|b| b == "true");
        let timeout = q
            .get("timeoutSeconds")
            .and_then(|s| s.parse::<u64>().ok())
            .map_or(MAX_WATCH, |s| Duration::from_secs(s).min(MAX_WATCH));
        let include = Include::parse(q.get("includeObject").map(String::as_str));
        let from = q
            .get("resourceVersion")
            .filter(|v| !v.is_empty() && *v != "0")
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(format!(
                        "resourceVersion: {v:?} is not a resourceVersion"
                    ))
                })
            });
        let (tx, rx) = mpsc::channel::<Bytes>(256);
        let mut resp = Response::new(Body::Stream(rx));
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        // Where the watch starts: the named resourceVersion, or now with the current state first.
        let (initial, start) = match from {
            Some(rv) => (Vec::new(), rv?),
            None => {
                let (items, rv) = self
                    .store
                    .list_at(&r.kind, namespace.as_deref())
                    .map_err(|e| from_store(&r, "", e))?;
                (items, rv)
            }
        };
        let watch = match self.store.watch_from(start) {
            Ok(w) => w,
            Err(store::StoreError::Gone { requested, oldest }) => {
                let e = ApiError::gone(format!("too old resource version: {requested} ({oldest})"));
                let line = json!({"type": "ERROR", "object": e.to_status()}).to_string() + "\n";
                let _ = tx.try_send(Bytes::from(line));
                return Ok(resp);
            }
            Err(e) => return Err(from_store(&r, "", e)),
        };
        let api = self.clone();
        tokio::spawn(async move {
            let send = |v: Value| {
                let tx = tx.clone();
                async move { tx.send(Bytes::from(v.to_string() + "\n")).await.is_ok() }
            };
            let render = |o: &Value| {
                if as_table {
                    table(&r, std::slice::from_ref(o), include, None)
                } else {
                    o.clone()
                }
            };
            let wanted = |o: &Value| {
                o["kind"].as_str() == Some(r.kind.as_str())
                    && namespace
                        .as_deref()
                        .is_none_or(|ns| o["metadata"]["namespace"].as_str() == Some(ns))
            };
            // Objects known to be outside the selection. Any other object is taken to be in
            // view (a watch from a resourceVersion does not know what its client listed): a
            // change that takes it out is a DELETED, one that brings an excluded one in an
            // ADDED, as the API server's watch cache reports selection changes.
            let mut excluded: BTreeSet<String> = BTreeSet::new();
            for o in &initial {
                if labels.matches(o) && fields.matches(o) {
                    if !send(json!({"type": "ADDED", "object": render(o)})).await {
                        return;
                    }
                } else {
                    excluded.insert(key_of(o));
                }
            }
            let mut live = watch.live;
            let mut backlog = watch.backlog.into_iter();
            let deadline = tokio::time::sleep(timeout);
            tokio::pin!(deadline);
            let mut tick = tokio::time::interval(BOOKMARK_EVERY);
            tick.tick().await;
            loop {
                let event = if let Some(e) = backlog.next() {
                    e
                } else {
                    tokio::select! {
                        e = live.recv() => match e {
                            Ok(e) => e,
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                                let e = ApiError::gone("the watch fell behind; list again");
                                let _ = send(json!({"type": "ERROR", "object": e.to_status()})).await;
                                return;
                            }
                            Err(_) => return,
                        },
                        _ = &mut deadline => return,
                        _ = tick.tick(), if bookmarks => {
                            let rv = api.store.resource_version().unwrap_or(0);
                            let bookmark = json!({"type": "BOOKMARK", "object": {"kind": r.kind, "apiVersion": r.api_version(), "metadata": {"resourceVersion": rv.to_string()}}});
                            if !send(bookmark).await { return; }
                            continue;
                        }
                        _ = tx.closed() => return,
                    }
                };
                let o = event.object();
                if !wanted(o) {
                    continue;
                }
                let key = key_of(o);
                let matches = labels.matches(o) && fields.matches(o);
                let out = excluded.contains(&key);
                let kind = match (&event, matches, out) {
                    (Event::Deleted(_), _, true) => {
                        excluded.remove(&key);
                        continue;
                    }
                    (Event::Deleted(_), _, false) => "DELETED",
                    (Event::Added(_), true, _) => "ADDED",
                    (Event::Modified(_), true, false) => "MODIFIED",
                    (Event::Modified(_), true, true) => "ADDED",
                    (_, false, true) => continue,
                    (Event::Added(_), false, false) => {
                        excluded.insert(key);
                        continue;
                    }
                    (_, false, false) => "DELETED",
                };
                if matches {
                    excluded.remove(&key);
                } else {
                    excluded.insert(key);
                }
                if !send(json!({"type": kind, "object": render(o)})).await {
                    return;
                }
            }
        });
        Ok(resp)
    }
}

/// Record an update of the main resource by the request's field manager.
fn record(old: Option<&Value>, new: &mut Value, opts: &WriteOptions, r: &Resource) {
    let api_version = r.api_version();
    let writer = Writer {
        manager: &opts.manager,
        api_version: &api_version,
        subresource: None,
    };
    apply::record_update(old, new, &writer);
}

fn opts_has_manager(opts: &WriteOptions) -> bool {
    !opts.manager.is_empty() && opts.manager != "unknown"
}

/// `namespace/name`, the order lists come in.
fn key_of(o: &Value) -> String {
    format!(
        "{}/{}",
        o["metadata"]["namespace"].as_str().unwrap_or(""),
        o["metadata"]["name"].as_str().unwrap_or("")
    )
}

fn list_object(r: &Resource, items: Vec<Value>, rv: u64, next: Option<(String, usize)>) -> Value {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if let Some((token, remaining)) = next {
        meta["continue"] = json!(token);
        meta["remainingItemCount"] = json!(remaining);
    }
    json!({"apiVersion": r.api_version(), "kind": format!("{}List", r.kind), "metadata": meta, "items": items})
}

fn with_warnings(mut resp: Resp, warnings: &[String]) -> Resp {
    for w in warnings {
        let text = format!("299 - {:?}", w);
        if let Ok(v) = HeaderValue::from_str(&text) {
            resp.headers_mut().append("warning", v);
        }
    }
    resp
}

/// Five characters as Kubernetes completes a `generateName` (no vowels, no look-alikes).
fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(decode("a%3Db%2Cc+d"), "a=b,c d");
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%zz"), "%zz");
    }

    #[test]
    fn generated_names_use_kubernetes_alphabet() {
        let s = random_suffix();
        assert_eq!(s.len(), 5);
        assert!(
            s.bytes()
                .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b))
        );
    }
}
