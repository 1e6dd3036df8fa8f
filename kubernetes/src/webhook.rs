//! `ebb-webhook`: Knative's admission webhook for Ebb's kinds on Kubernetes. The API server
//! sends every create and update of a Service, Configuration, Route, Revision, DomainMapping or
//! ClusterDomainClaim here before storing it: the mutating hook (`/defaulting`) answers a JSON Patch with the
//! defaults and `serving.knative.dev/creator`/`lastModifier` from the request's userInfo; the
//! validating hook (`/validation`) refuses an invalid object with every violated rule at once,
//! including the update rules that need the old object. Both run the admission shared with
//! local mode (`serving_api::admission`), so the two backends admit the same objects.
//!
//! Serving certificates: the webhook makes its own CA and a certificate for its Service's names,
//! keeps them in a Secret (so replicas and restarts share them), renews them before they expire
//! and patches the CA bundle into its webhook configurations. On renewal the bundle carries the
//! previous CA too, so the API server keeps trusting a replica that still serves the old one.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::ByteString;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde_json::{Value, json};
use serving_api::admission::Rules;

/// The mutating webhook configuration (and its single webhook's name).
pub const MUTATING: &str = "webhook.serving.ebb.dev";
/// The validating webhook configuration (and its single webhook's name).
pub const VALIDATING: &str = "validation.webhook.serving.ebb.dev";
/// Keys of the certificate Secret (Knative's names).
pub const CA_KEY: &str = "ca-cert.pem";
pub const CERT_KEY: &str = "server-cert.pem";
pub const KEY_KEY: &str = "server-key.pem";

/// Which of the two hooks a review came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Defaulting,
    Validation,
}

/// A review the webhook cannot read (answered 400; the API server applies the failure policy).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadReview(String);

/// Answer an `admission.k8s.io/v1` AdmissionReview.
///
/// Only the main resource of `serving.knative.dev` kinds is judged; anything else (another
/// group, a subresource such as `status`, a delete) is allowed unchanged, since the API server
/// only sends what the webhook configurations select and a status write is the controllers'.
pub fn review(hook: Hook, body: &[u8], rules: Rules<'_>) -> Result<Value, BadReview> {
    let review: Value = serde_json::from_slice(body)
        .map_err(|e| BadReview(format!("the body is not JSON: {e}")))?;
    if review["kind"] != "AdmissionReview" {
        return Err(BadReview(format!(
            "kind: expected AdmissionReview, got {}",
            review["kind"]
        )));
    }
    let api_version = review["apiVersion"].as_str().unwrap_or_default();
    if api_version != "admission.k8s.io/v1" {
        return Err(BadReview(format!(
            "apiVersion: only admission.k8s.io/v1 is served (admissionReviewVersions: [v1]), got {api_version:?}"
        )));
    }
    let req = &review["request"];
    let uid = req["uid"]
        .as_str()
        .filter(|u| !u.is_empty())
        .ok_or_else(|| BadReview("request.uid: required".into()))?;
    let answer = |response: Value| {
        let mut response = response;
        response["uid"] = json!(uid);
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
    };
    let group = req["kind"]["group"].as_str().unwrap_or_default();
    let kind = req["kind"]["kind"].as_str().unwrap_or_default();
    let operation = req["operation"].as_str().unwrap_or_default();
    let sub = req["subResource"].as_str().unwrap_or_default();
    let ours = group == serving_api::GROUP
        || (group == "networking.internal.knative.dev" && kind == "ClusterDomainClaim");
    if !ours || !sub.is_empty() || !matches!(operation, "CREATE" | "UPDATE") {
        return Ok(answer(json!({"allowed": true})));
    }
    let object = req["object"].clone();
    if !object.is_object() {
        return Err(BadReview(
            "request.object: required for CREATE and UPDATE".into(),
        ));
    }
    let old = (operation == "UPDATE")
        .then(|| &req["oldObject"])
        .filter(|o| o.is_object());
    let user = req["userInfo"]["username"].as_str().unwrap_or_default();
    let admitted = serving_api::admission::admit(kind, object.clone(), old, user, rules);
    Ok(answer(match (hook, admitted) {
        (Hook::Defaulting, Ok(out)) => {
            let ops = serving_api::admission::json_patch(&object, &out);
            if ops.is_empty() {
                json!({"allowed": true})
            } else {
                let patch = Value::Array(ops).to_string();
                json!({"allowed": true, "patchType": "JSONPatch",
                    "patch": apiserver_base64(patch.as_bytes())})
            }
        }
        // Defaulting does not judge: the validating hook refuses with every error.
        (Hook::Defaulting, Err(_)) | (Hook::Validation, Ok(_)) => json!({"allowed": true}),
        (Hook::Validation, Err(errors)) => {
            let name = object["metadata"]["name"].as_str().unwrap_or_default();
            let causes: Vec<Value> = errors
                .0
                .iter()
                .map(|e| json!({"reason": "FieldValueInvalid", "field": e.path, "message": e.message}))
                .collect();
            let listed: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
            json!({"allowed": false, "status": {
                "status": "Failure", "code": 422, "reason": "Invalid",
                "message": format!("validation failed: {}", listed.join("; ")),
                "details": {"name": name, "group": group, "kind": kind, "causes": causes},
            }})
        }
    }))
}

fn apiserver_base64(data: &[u8]) -> String {
    let b = ByteString(data.to_vec());
    serde_json::to_value(&b)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The names the webhook's Service answers to: `svc`, `svc.ns`, `svc.ns.svc`,
/// `svc.ns.svc.cluster.local`.
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_string(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// A CA bundle (the current CA first) and the serving certificate and key it signs, in PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Certs {
    pub ca_bundle: String,
    pub cert: String,
    pub key: String,
}

fn pem_blocks(pem: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in pem.lines() {
        if line.starts_with("-----BEGIN") {
            cur.clear();
        }
        cur.push_str(line);
        cur.push('\n');
        if line.starts_with("-----END") {
            out.push(std::mem::take(&mut cur));
        }
    }
    out
}

impl Certs {
    /// From a Secret's data; none when a key is missing or not UTF-8.
    pub fn from_secret(data: &BTreeMap<String, ByteString>) -> Option<Certs> {
        let text = |k: &str| {
            data.get(k)
                .and_then(|b| String::from_utf8(b.0.clone()).ok())
                .filter(|s| !s.is_empty())
        };
        Some(Certs {
            ca_bundle: text(CA_KEY)?,
            cert: text(CERT_KEY)?,
            key: text(KEY_KEY)?,
        })
    }

    pub fn to_secret_data(&self) -> BTreeMap<String, ByteString> {
        [
            (CA_KEY, &self.ca_bundle),
            (CERT_KEY, &self.cert),
            (KEY_KEY, &self.key),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.clone().into_bytes())))
        .collect()
    }

    /// A new CA and a serving certificate for `names`, valid from `now` (less a minute of
    /// clock skew) for `validity`. The bundle keeps `previous_ca` (the CA being replaced) after
    /// the new one.
    pub fn issue(
        names: &[String],
        now: jiff::Timestamp,
        validity: Duration,
        previous_ca: Option<&str>,
    ) -> Result<Certs, String> {
        let e = |e: rcgen::Error| format!("making the webhook's certificate: {e}");
        let to_offset = |t: jiff::Timestamp| {
            time_of(t.as_second()).ok_or_else(|| format!("time out of range: {t}"))
        };
        let not_before = to_offset(now - jiff::SignedDuration::from_secs(60))?;
        let until = now
            .checked_add(jiff::SignedDuration::try_from(validity).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        let not_after = to_offset(until)?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.distinguished_name
            .push(DnType::CommonName, "ebb-webhook CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca.not_before = not_before;
        ca.not_after = not_after;
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().map_err(e)?).map_err(e)?;
        let mut leaf = CertificateParams::new(names.to_vec()).map_err(e)?;
        leaf.distinguished_name.push(
            DnType::CommonName,
            names.get(2).or(names.first()).cloned().unwrap_or_default(),
        );
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        leaf.not_before = not_before;
        leaf.not_after = not_after;
        let key = KeyPair::generate().map_err(e)?;
        let cert = leaf.signed_by(&key, &ca).map_err(e)?;
        let mut bundle = ca.pem();
        if let Some(prev) = previous_ca.and_then(|p| pem_blocks(p).into_iter().next()) {
            bundle.push_str(&prev);
        }
        Ok(Certs {
            ca_bundle: bundle,
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }

    /// Whether a client trusting the bundle accepts the certificate for every name in `names`
    /// at time `at` (chain, names, validity), and the key is the certificate's.
    pub fn check(&self, names: &[String], at: jiff::Timestamp) -> Result<(), String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(self.ca_bundle.as_bytes()) {
            let ca = ca.map_err(|e| format!("{CA_KEY}: {e}"))?;
            roots.add(ca).map_err(|e| format!("{CA_KEY}: {e}"))?;
        }
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("{CA_KEY}: {e}"))?;
        let leaf = CertificateDer::from_pem_slice(self.cert.as_bytes())
            .map_err(|e| format!("{CERT_KEY}: {e}"))?;
        let when = UnixTime::since_unix_epoch(Duration::from_secs(
            u64::try_from(at.as_second()).unwrap_or(0),
        ));
        for name in names {
            let server = ServerName::try_from(name.clone()).map_err(|e| format!("{name}: {e}"))?;
            verifier
                .verify_server_cert(&leaf, &[], &server, &[], when)
                .map_err(|e| format!("{CERT_KEY} for {name} at {at}: {e}"))?;
        }
        self.certified_key().map(|_| ())
    }

    /// The certificate and its key, as rustls serves them.
    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>, String> {
        let provider = rustls::crypto::ring::default_provider();
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(self.cert.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{CERT_KEY}: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(self.key.as_bytes())
            .map_err(|e| format!("{KEY_KEY}: {e}"))?;
        let signing = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| format!("{KEY_KEY}: {e}"))?;
        let ck = CertifiedKey::new(chain, signing);
        ck.keys_match()
            .map_err(|e| format!("{KEY_KEY} does not belong to {CERT_KEY}: {e}"))?;
        Ok(Arc::new(ck))
    }
}

fn time_of(unix: i64) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp(unix).ok()
}

/// What the TLS listener serves, swapped in place when the certificate is renewed.
#[derive(Debug, Default)]
pub struct CurrentCert(RwLock<Option<Arc<CertifiedKey>>>);

impl CurrentCert {
    pub fn set(&self, key: Arc<CertifiedKey>) {
        if let Ok(mut w) = self.0.write() {
            *w = Some(key);
        }
    }
    pub fn is_set(&self) -> bool {
        self.0.read().map(|r| r.is_some()).unwrap_or(false)
    }
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().ok().and_then(|r| r.clone())
    }
}

/// A TLS server configuration that serves whatever `current` holds (HTTP/1.1).
pub fn server_config(current: Arc<CurrentCert>) -> Result<rustls::ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(current);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serving_api::config::DefaultsConfig;
    use serving_api::validation::ValidationConfig;

    fn with_rules<T>(f: impl FnOnce(Rules<'_>) -> T) -> T {
        let d = DefaultsConfig::default();
        let v = ValidationConfig::default();
        f(Rules {
            defaults: &d,
            validation: &v,
        })
    }

    fn request(op: &str, kind: &str, object: Value, old: Option<Value>) -> Vec<u8> {
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": "u-1", "kind": {"group": "serving.knative.dev", "version": "v1", "kind": kind},
            "resource": {"group": "serving.knative.dev", "version": "v1", "resource": "services"},
            "operation": op, "userInfo": {"username": "alice@example.com"},
            "object": object, "oldObject": old}})
        .to_string()
        .into_bytes()
    }

    fn service(image: &str) -> Value {
        json!({"apiVersion": "serving.knative.dev/v1", "kind": "Service",
            "metadata": {"name": "hello", "namespace": "default"},
            "spec": {"template": {"spec": {"containers": [{"image": image}]}}}})
    }

    #[test]
    fn defaulting_answers_a_patch_with_defaults_and_the_creator() {
        let out = with_rules(|r| {
            review(
                Hook::Defaulting,
                &request("CREATE", "Service", service("x"), None),
                r,
            )
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let resp = &out["response"];
        assert_eq!(resp["uid"], "u-1");
        assert_eq!(resp["allowed"], true);
        assert_eq!(resp["patchType"], "JSONPatch");
        let patch = serde_json::from_value::<ByteString>(resp["patch"].clone())
            .unwrap_or_else(|e| panic!("{e}"));
        let ops: Vec<Value> = serde_json::from_slice(&patch.0).unwrap_or_else(|e| panic!("{e}"));
        let text = Value::Array(ops).to_string();
        assert!(
            text.contains("alice@example.com") && text.contains("/spec/traffic"),
            "{text}"
        );
    }

    #[test]
    fn validation_refuses_with_every_error_and_the_update_rules() {
        let mut bad = service("x");
        bad["spec"]["template"]["spec"]["containerConcurrency"] = json!(-1);
        bad["spec"]["traffic"] = json!([{"percent": 120, "latestRevision": true}]);
        let out = with_rules(|r| {
            review(
                Hook::Validation,
                &request("CREATE", "Service", bad, None),
                r,
            )
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let resp = &out["response"];
        assert_eq!(resp["allowed"], false);
        let causes = resp["status"]["details"]["causes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(causes.len() >= 2, "{resp}");
        assert!(
            resp["status"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("spec.traffic[0].percent")
        );
        // A chosen revision name reused with a changed template.
        let mut old = service("x");
        old["spec"]["template"]["metadata"] = json!({"name": "hello-one"});
        let old = with_rules(|r| serving_api::admission::admit("Service", old, None, "alice", r))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut new = old.clone();
        new["spec"]["template"]["spec"]["containers"][0]["image"] = json!("y");
        let out = with_rules(|r| {
            review(
                Hook::Validation,
                &request("UPDATE", "Service", new, Some(old)),
                r,
            )
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out["response"]["allowed"], false);
        assert!(
            out["response"]["status"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("spec.template.metadata.name")
        );
    }

    #[test]
    fn other_groups_subresources_and_deletes_pass_untouched() {
        let mut status = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": "u-2", "kind": {"group": "serving.knative.dev", "version": "v1", "kind": "Service"},
            "subResource": "status", "operation": "UPDATE", "object": service("x"), "oldObject": service("x")}});
        let out = with_rules(|r| review(Hook::Validation, status.to_string().as_bytes(), r))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out["response"], json!({"uid": "u-2", "allowed": true}));
        status["request"]["subResource"] = json!("");
        status["request"]["operation"] = json!("DELETE");
        let out = with_rules(|r| review(Hook::Defaulting, status.to_string().as_bytes(), r))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out["response"]["allowed"], true);
        assert!(
            with_rules(|r| review(
                Hook::Validation,
                b"{\"kind\": \"AdmissionReview\", \"apiVersion\": \"admission.k8s.io/v1beta1\"}",
                r
            ))
            .is_err()
        );
        assert!(with_rules(|r| review(Hook::Validation, b"nope", r)).is_err());
        // A ClusterDomainClaim is validated (its namespace a namespace name).
        let claim = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": "u-3", "kind": {"group": "networking.internal.knative.dev", "version": "v1alpha1", "kind": "ClusterDomainClaim"},
            "operation": "CREATE", "object": {"apiVersion": "networking.internal.knative.dev/v1alpha1", "kind": "ClusterDomainClaim",
                "metadata": {"name": "shop.example.com"}, "spec": {"namespace": "Not_A_Namespace"}}}});
        let out = with_rules(|r| review(Hook::Validation, claim.to_string().as_bytes(), r))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out["response"]["allowed"], false, "{out}");
        assert!(
            out["response"]["status"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("spec.namespace")
        );
    }

    #[test]
    fn certificates_check_names_expiry_and_key() {
        let names = service_names("ebb-webhook", "ebb-system");
        let now = jiff::Timestamp::now();
        let day = Duration::from_secs(86_400);
        let certs = Certs::issue(&names, now, day * 30, None).unwrap_or_else(|e| panic!("{e}"));
        certs.check(&names, now).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            certs
                .check(&names, now + jiff::SignedDuration::from_hours(24 * 31))
                .is_err(),
            "expired by then"
        );
        assert!(
            certs
                .check(&["other.ebb-system.svc".to_string()], now)
                .is_err(),
            "wrong name"
        );
        let other = Certs::issue(&names, now, day, None).unwrap_or_else(|e| panic!("{e}"));
        let mixed = Certs {
            key: other.key.clone(),
            ..certs.clone()
        };
        assert!(
            mixed.check(&names, now).is_err(),
            "a key that is not the certificate's"
        );
        // A renewal keeps the previous CA in the bundle: both certificates verify against it.
        let renewed = Certs::issue(&names, now, day * 30, Some(&certs.ca_bundle))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(pem_blocks(&renewed.ca_bundle).len(), 2);
        Certs {
            ca_bundle: renewed.ca_bundle.clone(),
            ..certs.clone()
        }
        .check(&names, now)
        .unwrap_or_else(|e| panic!("{e}"));
        let back = Certs::from_secret(&renewed.to_secret_data());
        assert_eq!(back.as_ref(), Some(&renewed));
    }
}
