//! `ebb-webhook` as a process against the fake API server, called over real TLS by curl as the
//! API server would call it (by its Service name, trusting only the CA bundle it published):
//! the certificate Secret created, the CA bundle set in the two webhook configurations from
//! `config/components/webhook.yaml`, AdmissionReview round trips (a defaults patch with the
//! caller as creator and config-defaults honoured, every validation error, the update rule for
//! a reused revision name), renewal of a certificate near its end with the old CA kept in the
//! bundle, and a reset bundle set again.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on broken fixtures

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ebb_kubernetes::webhook::{self, Certs, MUTATING, VALIDATING};
use k8s_openapi::ByteString;
use serde_json::{Value, json};
use testkit::fake_api::FakeApi;

const SYSTEM: &str = "ebb-system";
const HOST: &str = "ebb-webhook.ebb-system.svc";
const SECRETS: &str = "core/v1/secrets";
const MUTATING_COLL: &str = "admissionregistration.k8s.io/v1/mutatingwebhookconfigurations";
const VALIDATING_COLL: &str = "admissionregistration.k8s.io/v1/validatingwebhookconfigurations";

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::from_value::<ByteString>(v.clone())
        .map(|b| b.0)
        .unwrap_or_default()
}

/// The two webhook configurations as shipped.
fn shipped_configurations() -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/components/webhook.yaml");
    serde_saphyr::from_multiple::<Value>(&std::fs::read_to_string(path).unwrap())
        .unwrap()
        .into_iter()
        .filter(|d| {
            d["kind"]
                .as_str()
                .is_some_and(|k| k.ends_with("WebhookConfiguration"))
        })
        .collect()
}

async fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{what}: not within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn secret_certs(api: &FakeApi) -> Option<Certs> {
    let s = api.get(SECRETS, SYSTEM, "ebb-webhook-certs")?;
    let data = s["data"].as_object()?;
    let map = data
        .iter()
        .map(|(k, v)| (k.clone(), ByteString(bytes(v))))
        .collect();
    Certs::from_secret(&map)
}

fn bundles(api: &FakeApi) -> (Vec<u8>, Vec<u8>) {
    let of = |coll: &str, name: &str| {
        api.get(coll, "", name)
            .map(|c| bytes(&c["webhooks"][0]["clientConfig"]["caBundle"]))
            .unwrap_or_default()
    };
    (of(MUTATING_COLL, MUTATING), of(VALIDATING_COLL, VALIDATING))
}

/// POST (or GET without a body) over TLS as the API server would: to the Service's name,
/// trusting only `ca`. (status, body), or curl's error.
fn call(port: u16, ca: &str, path: &str, body: Option<&Value>) -> Result<(u16, String), String> {
    let dir = std::env::temp_dir().join(format!("ebb-webhook-test-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join(format!("ca-{}.pem", unique()));
    std::fs::write(&ca_file, ca).unwrap();
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "--cacert"])
        .arg(&ca_file)
        .args([
            "--resolve",
            &format!("{HOST}:{port}:127.0.0.1"),
            "-w",
            "\n%{http_code}",
        ]);
    if body.is_some() {
        cmd.args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            "@-",
        ]);
    }
    let mut child = cmd
        .arg(format!("https://{HOST}:{port}{path}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("curl");
    if let Some(b) = body {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b.to_string().as_bytes())
            .unwrap();
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().unwrap();
    let _ = std::fs::remove_file(&ca_file);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).to_string());
    }
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap();
    Ok((code.trim().parse().unwrap(), body.to_string()))
}

fn unique() -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        .to_string()
}

fn review(op: &str, object: Value, old: Option<Value>, user: &str) -> Value {
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": format!("uid-{op}"),
        "kind": {"group": "serving.knative.dev", "version": "v1", "kind": "Service"},
        "resource": {"group": "serving.knative.dev", "version": "v1", "resource": "services"},
        "name": object["metadata"]["name"], "namespace": "default",
        "operation": op, "userInfo": {"username": user, "groups": ["system:authenticated"]},
        "object": object, "oldObject": old, "dryRun": false}})
}

fn service(image: &str, revision: Option<&str>) -> Value {
    let mut s = json!({"apiVersion": "serving.knative.dev/v1", "kind": "Service",
        "metadata": {"name": "hello", "namespace": "default"},
        "spec": {"template": {"spec": {"containers": [{"image": image}]}}}});
    if let Some(r) = revision {
        s["spec"]["template"]["metadata"] = json!({"name": r});
    }
    s
}

/// Apply the JSON Patch of a mutating answer (add/replace/remove on object members, which is
/// all the webhook emits).
fn patched(object: &Value, response: &Value) -> Value {
    let ops: Vec<Value> = serde_json::from_slice(&bytes(&response["patch"])).unwrap();
    let mut doc = object.clone();
    for op in ops {
        let path = op["path"].as_str().unwrap();
        let (parent, last) = path.rsplit_once('/').unwrap();
        let last = last.replace("~1", "/").replace("~0", "~");
        let target = doc.pointer_mut(parent).unwrap().as_object_mut().unwrap();
        if op["op"] == "remove" {
            target.remove(&last);
        } else {
            target.insert(last, op["value"].clone());
        }
    }
    doc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_keeps_its_certificate_and_admits_over_tls() {
    let api = FakeApi::start().await;
    for c in shipped_configurations() {
        api.put(c);
    }
    api.put(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "config-defaults", "namespace": SYSTEM},
        "data": {"container-concurrency": "7"}}));
    let (_p, line) = api.start_binary(
        env!("CARGO_BIN_EXE_ebb-webhook"),
        &[
            ("EBB_WEBHOOK_ADDRESS", "127.0.0.1:0"),
            ("SYSTEM_NAMESPACE", SYSTEM),
            ("EBB_WEBHOOK_RESYNC_SECONDS", "1"),
        ],
    );
    let port: u16 = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));

    // The certificate is made, kept in the Secret, and its CA published in both configurations.
    let certs = wait_for("the certificate Secret", || secret_certs(&api)).await;
    let names = webhook::service_names("ebb-webhook", SYSTEM);
    certs.check(&names, jiff::Timestamp::now()).unwrap();
    wait_for("the CA bundle in both configurations", || {
        let (m, v) = bundles(&api);
        (m == certs.ca_bundle.as_bytes() && v == certs.ca_bundle.as_bytes()).then_some(())
    })
    .await;
    let ready = wait_for("ready", || {
        call(port, &certs.ca_bundle, "/readyz", None)
            .ok()
            .filter(|(c, _)| *c == 200)
    })
    .await;
    assert_eq!(ready.1.trim(), "ok");
    // A client that trusts another CA refuses the connection.
    let stranger = Certs::issue(
        &names,
        jiff::Timestamp::now(),
        Duration::from_secs(3600),
        None,
    )
    .unwrap();
    assert!(call(port, &stranger.ca_bundle, "/healthz", None).is_err());

    // Defaulting: a patch with config-defaults' containerConcurrency and the caller's identity.
    let created = review(
        "CREATE",
        service("ghcr.io/ebb/hello", Some("hello-one")),
        None,
        "alice@example.com",
    );
    let (code, body) = call(port, &certs.ca_bundle, "/defaulting", Some(&created)).unwrap();
    assert_eq!(code, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    let resp = &answer["response"];
    assert_eq!(
        (resp["uid"].as_str(), resp["allowed"].as_bool()),
        (Some("uid-CREATE"), Some(true)),
        "{resp}"
    );
    assert_eq!(resp["patchType"], "JSONPatch");
    let stored = patched(&created["request"]["object"], resp);
    assert_eq!(
        stored["spec"]["template"]["spec"]["containerConcurrency"], 7,
        "{stored}"
    );
    assert_eq!(stored["spec"]["traffic"][0]["percent"], 100);
    assert_eq!(
        stored["metadata"]["annotations"]["serving.knative.dev/creator"],
        "alice@example.com"
    );
    assert_eq!(
        stored["metadata"]["annotations"]["serving.knative.dev/lastModifier"],
        "alice@example.com"
    );
    // The defaulted object passes validation.
    let (_, body) = call(
        port,
        &certs.ca_bundle,
        "/validation",
        Some(&review("CREATE", stored.clone(), None, "alice@example.com")),
    )
    .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["response"]["allowed"],
        true,
        "{body}"
    );

    // Validation: every error at once, each naming its field.
    let mut bad = service("", None);
    bad["spec"]["traffic"] = json!([{"percent": 120, "latestRevision": true}]);
    bad["spec"]["template"]["spec"]["containerConcurrency"] = json!(-1);
    let (code, body) = call(
        port,
        &certs.ca_bundle,
        "/validation",
        Some(&review("CREATE", bad, None, "alice@example.com")),
    )
    .unwrap();
    assert_eq!(code, 200);
    let resp = serde_json::from_str::<Value>(&body).unwrap()["response"].clone();
    assert_eq!(resp["allowed"], false, "{resp}");
    let fields: Vec<String> = resp["status"]["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap().to_string())
        .collect();
    for f in [
        "spec.traffic[0].percent",
        "spec.template.spec.containerConcurrency",
        "spec.template.spec.containers[0].image",
    ] {
        assert!(fields.iter().any(|x| x == f), "{f} not in {fields:?}");
    }
    assert_eq!(resp["status"]["code"], 422);

    // Update rules: a changed template under the same chosen revision name is refused; by
    // another user with a new name, it is admitted and that user becomes the last modifier.
    let mut changed = stored.clone();
    changed["spec"]["template"]["spec"]["containers"][0]["image"] = json!("ghcr.io/ebb/hello:2");
    let (_, body) = call(
        port,
        &certs.ca_bundle,
        "/validation",
        Some(&review(
            "UPDATE",
            changed.clone(),
            Some(stored.clone()),
            "bob@example.com",
        )),
    )
    .unwrap();
    let resp = serde_json::from_str::<Value>(&body).unwrap()["response"].clone();
    assert_eq!(resp["allowed"], false, "{resp}");
    assert!(
        resp["status"]["message"]
            .as_str()
            .unwrap()
            .contains("spec.template.metadata.name"),
        "{resp}"
    );
    changed["spec"]["template"]["metadata"]["name"] = json!("hello-two");
    let update = review(
        "UPDATE",
        changed.clone(),
        Some(stored.clone()),
        "bob@example.com",
    );
    let (_, body) = call(port, &certs.ca_bundle, "/defaulting", Some(&update)).unwrap();
    let resp = serde_json::from_str::<Value>(&body).unwrap()["response"].clone();
    let next = patched(&changed, &resp);
    assert_eq!(
        next["metadata"]["annotations"]["serving.knative.dev/lastModifier"],
        "bob@example.com"
    );
    assert_eq!(
        next["metadata"]["annotations"]["serving.knative.dev/creator"],
        "alice@example.com"
    );
    // Not a review: 400, naming what is wrong.
    let (code, body) = call(
        port,
        &certs.ca_bundle,
        "/validation",
        Some(&json!({"kind": "Pod"})),
    )
    .unwrap();
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("AdmissionReview"), "{body}");

    // A certificate near its end (another replica's, say) is renewed; the bundle keeps the old
    // CA after the new one, so either certificate is trusted while replicas switch over.
    let short = Certs::issue(
        &names,
        jiff::Timestamp::now(),
        Duration::from_secs(3600),
        None,
    )
    .unwrap();
    let mut secret = api.get(SECRETS, SYSTEM, "ebb-webhook-certs").unwrap();
    secret["data"] = serde_json::to_value(short.to_secret_data()).unwrap();
    api.put(secret);
    let renewed = wait_for("renewal", || {
        secret_certs(&api).filter(|c| *c != short && c.ca_bundle.ends_with(&short.ca_bundle))
    })
    .await;
    renewed
        .check(
            &names,
            jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 20),
        )
        .unwrap();
    wait_for("the renewed bundle published", || {
        let (m, v) = bundles(&api);
        (m == renewed.ca_bundle.as_bytes() && v == renewed.ca_bundle.as_bytes()).then_some(())
    })
    .await;
    let new_ca_only = renewed
        .ca_bundle
        .split_inclusive("-----END CERTIFICATE-----\n")
        .next()
        .unwrap()
        .to_string();
    wait_for("the renewed certificate served", || {
        call(port, &new_ca_only, "/healthz", None)
            .ok()
            .filter(|(c, _)| *c == 200)
    })
    .await;

    // Someone resets a configuration's bundle (a re-apply of the manifest): it is set again.
    for c in shipped_configurations() {
        api.put(c);
    }
    wait_for("the bundle set again", || {
        let (m, v) = bundles(&api);
        (m == renewed.ca_bundle.as_bytes() && v == renewed.ca_bundle.as_bytes()).then_some(())
    })
    .await;
}
