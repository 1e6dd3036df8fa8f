//! `ebb-webhook`: the admission webhook for Ebb's kinds on Kubernetes. Wiring only; see
//! `ebb_kubernetes::webhook` for what it admits and how it keeps its certificate.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use ebb_kubernetes::controller::Configs;
use ebb_kubernetes::webhook::{self, Certs, CurrentCert, Hook, MUTATING, VALIDATING};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ObjectMeta, PostParams};

/// The largest AdmissionReview accepted: the API server's own request limit (3 MiB) plus the
/// old object and the review's envelope.
const MAX_REVIEW: usize = 8 * 1024 * 1024;

/// Config maps admission reads (defaults, and the limits validation checks against).
const CONFIG_MAPS: [&str; 4] = [
    "config-defaults",
    "config-features",
    "config-autoscaler",
    "config-network",
];

#[derive(Parser, Debug, Clone)]
#[command(
    name = "ebb-webhook",
    version,
    about = "Admission webhook for Ebb's Knative kinds: defaults, creator/lastModifier and validation, over TLS with a certificate it makes, keeps in a Secret and renews"
)]
struct Args {
    /// Address to serve HTTPS on (admission at /defaulting and /validation; /healthz, /readyz).
    #[arg(long, env = "EBB_WEBHOOK_ADDRESS", default_value = "0.0.0.0:8443")]
    address: String,
    /// Namespace of the webhook's Service, certificate Secret and config maps.
    #[arg(long, env = "SYSTEM_NAMESPACE", default_value = ebb_kubernetes::DEFAULT_SYSTEM_NAMESPACE)]
    namespace: String,
    /// The Service the API server calls (the certificate is issued for its names).
    #[arg(long, env = "EBB_WEBHOOK_SERVICE", default_value = "ebb-webhook")]
    service: String,
    /// The Secret that holds the CA bundle, certificate and key.
    #[arg(long, env = "EBB_WEBHOOK_SECRET", default_value = "ebb-webhook-certs")]
    secret: String,
    /// How long a new certificate is valid, in hours.
    #[arg(long, env = "EBB_WEBHOOK_CERT_VALIDITY_HOURS", default_value_t = 30 * 24, value_parser = clap::value_parser!(u64).range(2..))]
    cert_validity_hours: u64,
    /// Renew once the certificate has less than this left, in hours.
    #[arg(long, env = "EBB_WEBHOOK_RENEW_BEFORE_HOURS", default_value_t = 7 * 24)]
    renew_before_hours: u64,
    /// How often the Secret and the webhook configurations' CA bundles are checked, in seconds.
    #[arg(long, env = "EBB_WEBHOOK_RESYNC_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    resync_seconds: u64,
}

struct State {
    args: Args,
    client: kube::Client,
    configs: RwLock<Configs>,
    current: Arc<CurrentCert>,
    loaded: Mutex<Option<Certs>>,
    ready: AtomicBool,
}

fn hours(h: u64) -> Duration {
    Duration::from_secs(h * 3600)
}

/// The Secret's certificate, renewed when it would not be valid `renew_before` from now, or
/// issued when there is none; written with optimistic concurrency, so replicas agree on one.
async fn ensure_secret(st: &State) -> anyhow::Result<Certs> {
    let a = &st.args;
    let secrets: Api<Secret> = Api::namespaced(st.client.clone(), &a.namespace);
    let names = webhook::service_names(&a.service, &a.namespace);
    for _ in 0..5 {
        let existing = secrets.get_opt(&a.secret).await?;
        let have = existing
            .as_ref()
            .and_then(|s| s.data.as_ref())
            .and_then(Certs::from_secret);
        let now = jiff::Timestamp::now();
        let horizon = now + jiff::SignedDuration::try_from(hours(a.renew_before_hours))?;
        let why = match &have {
            None => "none yet".to_string(),
            Some(c) => match c.check(&names, horizon) {
                Ok(()) => return Ok(c.clone()),
                Err(e) => e,
            },
        };
        tracing::info!(secret = %a.secret, reason = %why, "issuing the webhook's certificate");
        let previous = have.as_ref().map(|c| c.ca_bundle.as_str());
        let certs = Certs::issue(&names, now, hours(a.cert_validity_hours), previous)
            .map_err(|e| anyhow::anyhow!(e))?;
        let written = match existing {
            None => {
                let s = Secret {
                    metadata: ObjectMeta {
                        name: Some(a.secret.clone()),
                        namespace: Some(a.namespace.clone()),
                        labels: Some(BTreeMap::from([
                            ("app.kubernetes.io/part-of".into(), "ebb".into()),
                            ("app.kubernetes.io/component".into(), "webhook".into()),
                        ])),
                        ..ObjectMeta::default()
                    },
                    data: Some(certs.to_secret_data()),
                    type_: Some("Opaque".into()),
                    ..Secret::default()
                };
                secrets.create(&PostParams::default(), &s).await
            }
            Some(mut s) => {
                s.data = Some(certs.to_secret_data());
                s.string_data = None;
                secrets.replace(&a.secret, &PostParams::default(), &s).await
            }
        };
        match written {
            Ok(_) => return Ok(certs),
            // Another replica wrote first: use what it wrote.
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    anyhow::bail!(
        "Secret {}: kept changing under five attempts to write it",
        a.secret
    )
}

/// Set the CA bundle on every webhook of the two configurations that calls our Service;
/// whether both configurations exist (a missing one is reported).
async fn ensure_bundles(st: &State, certs: &Certs) -> anyhow::Result<bool> {
    let bundle = ByteString(certs.ca_bundle.clone().into_bytes());
    let a = &st.args;
    let ours = |s: Option<&k8s_openapi::api::admissionregistration::v1::ServiceReference>| {
        s.is_some_and(|s| s.name == a.service && s.namespace == a.namespace)
    };
    macro_rules! patch_bundle {
        ($ty:ty, $name:expr) => {{
            let api: Api<$ty> = Api::all(st.client.clone());
            match api.get_opt($name).await? {
                None => {
                    tracing::warn!(configuration = $name, "webhook configuration not installed: the API server does not call this webhook");
                    false
                }
                Some(mut c) => {
                    let mut changed = false;
                    for w in c.webhooks.iter_mut().flatten() {
                        if ours(w.client_config.service.as_ref())
                            && w.client_config.ca_bundle.as_ref() != Some(&bundle)
                        {
                            w.client_config.ca_bundle = Some(bundle.clone());
                            changed = true;
                        }
                    }
                    if changed {
                        match api.replace($name, &PostParams::default(), &c).await {
                            Ok(_) => tracing::info!(configuration = $name, "CA bundle set"),
                            // Changed meanwhile: the next pass sets it on the new version.
                            Err(kube::Error::Api(e)) if e.code == 409 => return Ok(false),
                            Err(e) => return Err(e.into()),
                        }
                    }
                    true
                }
            }
        }};
    }
    let m = patch_bundle!(MutatingWebhookConfiguration, MUTATING);
    let v = patch_bundle!(ValidatingWebhookConfiguration, VALIDATING);
    Ok(m && v)
}

async fn ensure(st: &State) -> anyhow::Result<()> {
    let certs = ensure_secret(st).await?;
    let changed = st
        .loaded
        .lock()
        .map(|l| l.as_ref() != Some(&certs))
        .unwrap_or(true);
    if changed {
        st.current
            .set(certs.certified_key().map_err(|e| anyhow::anyhow!(e))?);
        if let Ok(mut l) = st.loaded.lock() {
            *l = Some(certs.clone());
        }
        tracing::info!("serving certificate loaded");
    }
    let bundles = ensure_bundles(st, &certs).await?;
    st.ready.store(bundles, Ordering::Relaxed);
    Ok(())
}

type Body = Full<Bytes>;

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

async fn handle(st: Arc<State>, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let hook = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => return reply(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::GET, "/readyz") => {
            return if st.ready.load(Ordering::Relaxed) {
                reply(StatusCode::OK, "text/plain", "ok\n")
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "the CA bundle is not yet in both webhook configurations\n",
                )
            };
        }
        (&Method::POST, "/defaulting") => Hook::Defaulting,
        (&Method::POST, "/validation") => Hook::Validation,
        (_, "/defaulting" | "/validation") => {
            return reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "admission reviews are POSTed\n",
            );
        }
        _ => return reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    };
    let body = match Limited::new(req.into_body(), MAX_REVIEW).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                "text/plain",
                format!("the review could not be read (at most {MAX_REVIEW} bytes): {e}\n"),
            );
        }
    };
    let configs = st.configs.read().map(|c| c.clone()).unwrap_or_default();
    let validation = configs.validation();
    let rules = serving_api::admission::Rules {
        defaults: &configs.defaults,
        validation: &validation,
    };
    match webhook::review(hook, &body, rules) {
        Ok(v) => reply(StatusCode::OK, "application/json", v.to_string()),
        Err(e) => reply(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let client = ebb_kubernetes::client().await?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &args.namespace);
    let initial = ebb_kubernetes::controller::config_maps(
        cms.list(&Default::default()).await?.items.into_iter(),
        &CONFIG_MAPS,
    );
    let configs = Configs::from_maps(&initial)
        .map_err(|e| anyhow::anyhow!("config maps in {}:\n{e}", args.namespace))?;
    let current = Arc::new(CurrentCert::default());
    let tls = webhook::server_config(current.clone()).map_err(|e| anyhow::anyhow!(e))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let st = Arc::new(State {
        args: args.clone(),
        client,
        configs: RwLock::new(configs),
        current,
        loaded: Mutex::new(None),
        ready: AtomicBool::new(false),
    });

    // Config maps are watched: a valid change is used for the next review; an invalid one is
    // reported and the last good configuration kept.
    let reloader = {
        let st = st.clone();
        tokio::spawn(ebb_kubernetes::controller::watch_configs(
            cms,
            &CONFIG_MAPS,
            initial,
            move |c| {
                if let Ok(mut w) = st.configs.write() {
                    *w = c;
                }
            },
        ))
    };

    let listener = tokio::net::TcpListener::bind(&args.address)
        .await
        .map_err(|e| anyhow::anyhow!("--address {}: {e}", args.address))?;
    println!("ebb-webhook: HTTPS on {}", listener.local_addr()?);

    // The certificate first (until it exists the TLS handshake fails and /readyz with it), then
    // every resync.
    let keeper = {
        let st = st.clone();
        tokio::spawn(async move {
            let mut wait = Duration::from_millis(200);
            loop {
                match ensure(&st).await {
                    Ok(()) => wait = Duration::from_secs(st.args.resync_seconds),
                    Err(e) => {
                        tracing::error!(error = %e, "keeping the webhook's certificate");
                        wait = (wait * 2).min(Duration::from_secs(st.args.resync_seconds));
                    }
                }
                tokio::time::sleep(wait).await;
            }
        })
    };

    let server = {
        let st = st.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = http1::accept::accept(&listener).await;
                let acceptor = acceptor.clone();
                let st = st.clone();
                tokio::spawn(async move {
                    let Ok(Ok(tls)) =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                            .await
                    else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(handle(st, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .header_read_timeout(Duration::from_secs(10))
                        .timer(hyper_util::rt::TokioTimer::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                        .await;
                });
            }
        })
    };

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    server.abort();
    keeper.abort();
    reloader.abort();
    Ok(())
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    ebb_kubernetes::main("ebb-webhook", run(args)).await;
}
