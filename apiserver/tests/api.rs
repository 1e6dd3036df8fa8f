//! The API's protocol details, in process over real sockets (no TLS): watches from a
//! resourceVersion and their selection changes, 410 past the history, limit/continue,
//! generateName, dry runs, field validation, the status subresource, what custom resources
//! refuse, deletecollection.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on broken fixtures

use std::sync::Arc;
use std::time::Duration;

use apiserver::Api;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const TOKEN: &str = "t0ken";

struct Server {
    addr: std::net::SocketAddr,
    store: Arc<store::Store>,
    _dir: tempdir::Dir,
    _stop: tokio::sync::watch::Sender<bool>,
}

mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

async fn server() -> Server {
    let dir = std::env::temp_dir().join(format!(
        "ebb-api-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let store = Arc::new(store::Store::open(&dir.join("s.redb")).unwrap());
    apiserver::ensure_default_namespace(&store).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let api = Arc::new(Api {
        store: store.clone(),
        catalog: apiserver::catalog::Catalog::new(),
        admission: Default::default(),
        token: TOKEN.into(),
        user: "tester".into(),
        addr,
        extras: None,
    });
    let (stop, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(apiserver::serve(listener, api, None, rx));
    Server {
        addr,
        store,
        _dir: tempdir::Dir(dir),
        _stop: stop,
    }
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

fn client() -> Client {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// A request; (status, headers, body as JSON).
async fn call(
    s: &Server,
    method: &str,
    path: &str,
    content_type: &str,
    body: Value,
) -> (u16, http::HeaderMap, Value) {
    let bytes = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", s.addr))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(bytes)))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        headers,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

fn cm(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels}, "data": {"k": "v"}})
}

const CMS: &str = "/api/v1/namespaces/default/configmaps";

/// Open a raw watch; lines come through the receiver.
async fn watch(s: &Server, query: &str) -> tokio::sync::mpsc::UnboundedReceiver<Value> {
    let mut tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let req = format!(
        "GET {CMS}?watch=true&{query} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n",
        s.addr
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(tcp).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send(v);
            }
        }
    });
    rx
}

async fn next(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Value>) -> Value {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_from_a_resource_version_and_selection_changes() {
    let s = server().await;
    let (code, _, created) = call(
        &s,
        "POST",
        CMS,
        "application/json",
        cm("a", json!({"app": "web"})),
    )
    .await;
    assert_eq!(code, 201);
    let rv = created["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let mut all = watch(&s, &format!("resourceVersion={rv}")).await;
    let mut web = watch(&s, &format!("resourceVersion={rv}&labelSelector=app%3Dweb")).await;
    call(
        &s,
        "PATCH",
        &format!("{CMS}/a"),
        "application/merge-patch+json",
        json!({"data": {"k": "2"}}),
    )
    .await;
    assert_eq!(
        next(&mut all).await["type"],
        "MODIFIED",
        "a change to an object that existed at the resourceVersion"
    );
    assert_eq!(next(&mut web).await["type"], "MODIFIED");
    // The label changes: out of the selection (DELETED), then back in (ADDED).
    call(
        &s,
        "PATCH",
        &format!("{CMS}/a"),
        "application/merge-patch+json",
        json!({"metadata": {"labels": {"app": "db"}}}),
    )
    .await;
    assert_eq!(next(&mut web).await["type"], "DELETED");
    call(
        &s,
        "PATCH",
        &format!("{CMS}/a"),
        "application/merge-patch+json",
        json!({"metadata": {"labels": {"app": "web"}}}),
    )
    .await;
    assert_eq!(next(&mut web).await["type"], "ADDED");
    call(
        &s,
        "DELETE",
        &format!("{CMS}/a"),
        "application/json",
        Value::Null,
    )
    .await;
    assert_eq!(next(&mut web).await["type"], "DELETED");
    for want in ["MODIFIED", "MODIFIED", "DELETED"] {
        assert_eq!(next(&mut all).await["type"], want);
    }
    // Past the history: one ERROR event with a 410 Status.
    for i in 0..store::HISTORY + 5 {
        s.store.create(cm(&format!("f{i}"), json!({}))).unwrap();
    }
    let mut old = watch(&s, "resourceVersion=1").await;
    let e = next(&mut old).await;
    assert_eq!(
        (e["type"].as_str(), e["object"]["code"].as_i64()),
        (Some("ERROR"), Some(410)),
        "{e}"
    );
    // Bookmarks carry the current resourceVersion (sent every 10 s: not waited for here).
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_creates_and_validation() {
    let s = server().await;
    for i in 0..5 {
        call(
            &s,
            "POST",
            CMS,
            "application/json",
            cm(&format!("c{i}"), json!({})),
        )
        .await;
    }
    // limit/continue walks the list.
    let (_, _, page) = call(
        &s,
        "GET",
        &format!("{CMS}?limit=2"),
        "application/json",
        Value::Null,
    )
    .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    assert_eq!(page["metadata"]["remainingItemCount"], 3);
    let token = page["metadata"]["continue"].as_str().unwrap().to_string();
    let (_, _, rest) = call(
        &s,
        "GET",
        &format!("{CMS}?limit=10&continue={token}"),
        "application/json",
        Value::Null,
    )
    .await;
    let names: Vec<&str> = rest["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["c2", "c3", "c4"]);
    // generateName.
    let (code, _, made) = call(
        &s,
        "POST",
        CMS,
        "application/json",
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "gen-"}}),
    )
    .await;
    assert_eq!(code, 201);
    assert!(
        made["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with("gen-")
            && made["metadata"]["name"].as_str().unwrap().len() == 9
    );
    // generateName for Knative's kinds: Service, Configuration and Route.
    for (plural, kind, spec) in [
        (
            "services",
            "Service",
            json!({"template": {"spec": {"containers": [{"image": "x"}]}}}),
        ),
        (
            "configurations",
            "Configuration",
            json!({"template": {"spec": {"containers": [{"image": "x"}]}}}),
        ),
        (
            "routes",
            "Route",
            json!({"traffic": [{"configurationName": "c", "percent": 100}]}),
        ),
    ] {
        let (code, _, made) = call(
            &s,
            "POST",
            &format!("/apis/serving.knative.dev/v1/namespaces/default/{plural}"),
            "application/json",
            json!({"apiVersion": "serving.knative.dev/v1", "kind": kind,
                "metadata": {"generateName": "gen-"}, "spec": spec}),
        )
        .await;
        assert_eq!(code, 201, "{kind}: {made}");
        let name = made["metadata"]["name"].as_str().unwrap_or_default();
        assert!(
            name.starts_with("gen-") && name.len() == 9,
            "{kind}: {name}"
        );
    }
    // A dry run stores nothing.
    let (code, _, _) = call(
        &s,
        "POST",
        &format!("{CMS}?dryRun=All"),
        "application/json",
        cm("dry", json!({})),
    )
    .await;
    assert_eq!(code, 201);
    assert_eq!(
        call(&s, "GET", &format!("{CMS}/dry"), "", Value::Null)
            .await
            .0,
        404
    );
    // fieldValidation: Strict refuses, Warn warns and prunes, Ignore prunes.
    let mut typo = cm("typo", json!({}));
    typo["dta"] = json!({"x": "y"});
    let (code, _, status) = call(&s, "POST", CMS, "application/json", typo.clone()).await;
    assert_eq!((code, status["reason"].as_str()), (400, Some("BadRequest")));
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("unknown field \"dta\""),
        "{status}"
    );
    let (code, headers, stored) = call(
        &s,
        "POST",
        &format!("{CMS}?fieldValidation=Warn"),
        "application/json",
        typo,
    )
    .await;
    assert_eq!(code, 201);
    assert!(
        headers
            .get("warning")
            .is_some_and(|w| w.to_str().unwrap().contains("dta"))
    );
    assert!(stored.get("dta").is_none());
    // Duplicate fields are refused under Strict.
    let raw = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"dup","name":"dup2"}}"#;
    let req = http::Request::post(format!("http://{}{CMS}", s.addr))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(raw)))
        .unwrap();
    assert_eq!(client().request(req).await.unwrap().status(), 400);
    // deletecollection with a selector.
    call(
        &s,
        "POST",
        CMS,
        "application/json",
        cm("x1", json!({"gone": "yes"})),
    )
    .await;
    call(
        &s,
        "POST",
        CMS,
        "application/json",
        cm("x2", json!({"gone": "yes"})),
    )
    .await;
    let (code, _, gone) = call(
        &s,
        "DELETE",
        &format!("{CMS}?labelSelector=gone%3Dyes"),
        "application/json",
        Value::Null,
    )
    .await;
    assert_eq!((code, gone["items"].as_array().unwrap().len()), (200, 2));
    assert_eq!(
        call(&s, "GET", &format!("{CMS}/x1"), "", Value::Null)
            .await
            .0,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_resources_and_their_status() {
    let s = server().await;
    let svcs = "/apis/serving.knative.dev/v1/namespaces/default/services";
    let svc = json!({"apiVersion": "serving.knative.dev/v1", "kind": "Service", "metadata": {"name": "hello"},
        "spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}, "status": {"url": "http://forged"}});
    let (code, _, created) = call(&s, "POST", svcs, "application/json", svc).await;
    assert_eq!(code, 201);
    assert!(
        created.get("status").is_none(),
        "status is the status subresource's: {created}"
    );
    assert_eq!(
        created["metadata"]["annotations"]["serving.knative.dev/creator"],
        "tester"
    );
    // Strategic merge patch: not for custom resources (as on a cluster).
    let (code, _, st) = call(
        &s,
        "PATCH",
        &format!("{svcs}/hello"),
        "application/strategic-merge-patch+json",
        json!({"metadata": {"labels": {"a": "b"}}}),
    )
    .await;
    assert_eq!(code, 415, "{st}");
    // The status subresource writes status alone.
    let (code, _, _) = call(
        &s,
        "PATCH",
        &format!("{svcs}/hello/status"),
        "application/merge-patch+json",
        json!({"status": {"url": "http://set"}, "spec": {"template": null}}),
    )
    .await;
    assert_eq!(code, 200);
    let (_, _, now) = call(&s, "GET", &format!("{svcs}/hello"), "", Value::Null).await;
    assert_eq!(now["status"]["url"], "http://set");
    assert!(
        now["spec"]["template"].is_object(),
        "the spec is untouched by a status write"
    );
    // A Revision cannot be created directly; a PUT with a stale resourceVersion is a conflict.
    let rev = json!({"apiVersion": "serving.knative.dev/v1", "kind": "Revision", "metadata": {"name": "r"}, "spec": {"containers": [{"image": "x"}]}});
    assert_eq!(
        call(
            &s,
            "POST",
            "/apis/serving.knative.dev/v1/namespaces/default/revisions",
            "application/json",
            rev
        )
        .await
        .0,
        422
    );
    let mut stale = now.clone();
    stale["metadata"]["resourceVersion"] = json!("1");
    let (code, _, st) = call(
        &s,
        "PUT",
        &format!("{svcs}/hello"),
        "application/json",
        stale,
    )
    .await;
    assert_eq!((code, st["reason"].as_str()), (409, Some("Conflict")));
    // A Table with the CRD's columns.
    let req = http::Request::get(format!("http://{}{svcs}", s.addr))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header(
            "accept",
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        )
        .body(Full::new(Bytes::new()))
        .unwrap();
    let body = client()
        .request(req)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes();
    let table: Value = serde_json::from_slice(&body).unwrap();
    let cols: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        cols,
        [
            "Name",
            "URL",
            "LatestCreated",
            "LatestReady",
            "Ready",
            "Reason"
        ]
    );
    assert_eq!(table["rows"][0]["cells"][1], "http://set");
}
