//! The autoscaler on Kubernetes: Revisions and their EndpointSlices in, Deployment `/scale` out,
//! only while this replica leads. Followers keep deciding from the same inputs (warm state) but
//! apply nothing; when a replica dies the last scale stays in force.
//!
//! Activators push their per-second demand and pokes to every autoscaler replica over HTTP
//! (`POST /v1/stats`, `POST /v1/poke`), so whichever replica leads has them.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::Arc;

use autoscaler::collector::RevisionKey;
use autoscaler::runner::{Handle, Instance};
use autoscaler::scaler::{ScaleError, ScaleFuture, Scaler};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher;
use serde::{Deserialize, Serialize};
use serving_api::Revision;
use serving_api::config::AutoscalerConfig;
use serving_controller::workload::ports;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::endpoints::by_revision;
use crate::mirror::mirror;

/// Scales a revision's Deployment through its scale subresource.
#[derive(Clone)]
pub struct DeploymentScaler {
    client: kube::Client,
    leader: watch::Receiver<bool>,
}

impl std::fmt::Debug for DeploymentScaler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeploymentScaler").finish()
    }
}

impl DeploymentScaler {
    pub fn new(client: kube::Client, leader: watch::Receiver<bool>) -> Self {
        DeploymentScaler { client, leader }
    }
}

impl Scaler for DeploymentScaler {
    fn scale<'a>(&'a self, key: &'a RevisionKey, desired: i32) -> ScaleFuture<'a> {
        Box::pin(async move {
            if !*self.leader.borrow() {
                return Err(ScaleError::NotLeader);
            }
            let api: Api<Deployment> = Api::namespaced(self.client.clone(), &key.namespace);
            let name = serving_api::naming::deployment_name(&key.name);
            let patch = serde_json::json!({ "spec": { "replicas": desired } });
            match api
                .patch_scale(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 => Err(ScaleError::NotFound(key.clone())),
                Err(e) => Err(ScaleError::Failed {
                    key: key.clone(),
                    reason: e.to_string(),
                }),
            }
        })
    }
}

fn revision_key(r: &Revision) -> RevisionKey {
    RevisionKey::new(
        r.metadata.namespace.as_deref().unwrap_or("default"),
        r.metadata.name.as_deref().unwrap_or_default(),
    )
}

/// Revisions as last listed, and what was upserted for each (settings + config version).
#[derive(Default)]
struct Scaled {
    revisions: Vec<Revision>,
    known: BTreeMap<RevisionKey, String>,
    version: u64,
}

impl Scaled {
    /// Upsert every revision whose settings (or the config) changed; remove the gone ones.
    fn sync(&mut self, handle: &Handle, config: &AutoscalerConfig) {
        let mut present = BTreeSet::new();
        for r in &self.revisions {
            let key = revision_key(r);
            present.insert(key.clone());
            let annotations = r.metadata.annotations.clone().unwrap_or_default();
            let fingerprint = format!(
                "{}{annotations:?}{:?}",
                self.version, r.spec.container_concurrency
            );
            if self.known.get(&key) == Some(&fingerprint) {
                continue;
            }
            match serving_api::autoscaling::resolve(
                &annotations,
                r.spec.container_concurrency.unwrap_or(0),
                config,
                "metadata.annotations",
            ) {
                Ok(scaling) => {
                    handle.upsert(key.clone(), scaling);
                    self.known.insert(key, fingerprint);
                }
                Err(errs) => tracing::warn!(
                    revision = %key.name,
                    errors = %errs.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
                    "not scaling a revision with invalid annotations"
                ),
            }
        }
        let gone: Vec<RevisionKey> = self
            .known
            .keys()
            .filter(|k| !present.contains(*k))
            .cloned()
            .collect();
        for k in gone {
            self.known.remove(&k);
            handle.remove(k);
        }
    }
}

/// Feed the runner from the API: every Revision is scaled (settings from its annotations and
/// config-autoscaler, re-resolved whenever `config` changes); every ready endpoint is scraped
/// on the queue-proxy's stats port.
pub async fn watch_inputs(
    client: kube::Client,
    handle: Handle,
    mut config: watch::Receiver<AutoscalerConfig>,
) {
    let scaled = Arc::new(std::sync::Mutex::new(Scaled::default()));
    let revisions = {
        let (handle, scaled, config) = (handle.clone(), scaled.clone(), config.clone());
        mirror(
            Api::<Revision>::all(client.clone()),
            watcher::Config::default(),
            move |snapshot| {
                let mut s = scaled.lock().unwrap_or_else(|p| p.into_inner());
                s.revisions = snapshot.values().cloned().collect();
                let cfg = config.borrow().clone();
                s.sync(&handle, &cfg);
            },
        )
    };
    let reconfigure = {
        let (handle, scaled) = (handle.clone(), scaled.clone());
        async move {
            while config.changed().await.is_ok() {
                let cfg = config.borrow_and_update().clone();
                handle.configure(cfg.clone());
                let mut s = scaled.lock().unwrap_or_else(|p| p.into_inner());
                s.version += 1;
                s.sync(&handle, &cfg);
            }
        }
    };
    let endpoints = {
        let mut published: BTreeMap<(String, String), Vec<Instance>> = BTreeMap::new();
        mirror(
            Api::<EndpointSlice>::all(client),
            watcher::Config::default().labels(serving_api::labels::REVISION),
            move |snapshot| {
                let now = by_revision(snapshot);
                let mut next: BTreeMap<(String, String), Vec<Instance>> = BTreeMap::new();
                for (key, list) in now {
                    let instances = list
                        .iter()
                        .filter(|e| e.ready && !e.terminating)
                        .map(|e| Instance {
                            name: e.name.clone(),
                            stats: std::net::SocketAddr::new(
                                e.ip,
                                ports::AUTOSCALER_METRICS as u16,
                            ),
                        })
                        .collect();
                    next.insert(key, instances);
                }
                for (key, list) in &next {
                    if published.get(key) != Some(list) {
                        handle.instances(RevisionKey::new(&key.0, &key.1), list.clone());
                    }
                }
                for key in published.keys().filter(|k| !next.contains_key(*k)) {
                    handle.instances(RevisionKey::new(&key.0, &key.1), Vec::new());
                }
                published = next;
            },
        )
    };
    tokio::join!(revisions, reconfigure, endpoints);
}

/// One revision's demand as an activator reports it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ActivatorStat {
    pub namespace: String,
    pub revision: String,
    pub stat: wire::Stat,
}

/// A poke: the activator holds `demand` requests for a revision with no instance.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Poke {
    pub namespace: String,
    pub revision: String,
    pub demand: f64,
}

pub const STATS_PATH: &str = "/v1/stats";
pub const POKE_PATH: &str = "/v1/poke";

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

/// The autoscaler's HTTP side: activator intake, Prometheus metrics, health.
pub async fn serve_intake(
    listener: TcpListener,
    handle: Handle,
    metrics: Arc<autoscaler::metrics::Metrics>,
    leader: watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = http1::accept::accept(&listener).await;
        let (handle, metrics, leader) = (handle.clone(), metrics.clone(), leader.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (handle, metrics, leader) = (handle.clone(), metrics.clone(), leader.clone());
                async move {
                    let (method, path) = (req.method().clone(), req.uri().path().to_string());
                    let resp = match (method, path.as_str()) {
                        (Method::POST, STATS_PATH) => {
                            match read_json::<Vec<ActivatorStat>>(req).await {
                                Ok(stats) => {
                                    for s in stats {
                                        handle.activator_stat(
                                            RevisionKey::new(&s.namespace, &s.revision),
                                            s.stat,
                                        );
                                    }
                                    text(StatusCode::NO_CONTENT, "")
                                }
                                Err(e) => text(StatusCode::BAD_REQUEST, e),
                            }
                        }
                        (Method::POST, POKE_PATH) => match read_json::<Poke>(req).await {
                            Ok(p) => {
                                handle.poke(RevisionKey::new(&p.namespace, &p.revision), p.demand);
                                text(StatusCode::NO_CONTENT, "")
                            }
                            Err(e) => text(StatusCode::BAD_REQUEST, e),
                        },
                        (Method::GET, "/metrics") => text(StatusCode::OK, metrics.encode()),
                        (Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
                        (Method::GET, "/leader") => {
                            text(StatusCode::OK, format!("{}\n", *leader.borrow()))
                        }
                        _ => text(StatusCode::NOT_FOUND, format!("no such endpoint: {path}\n")),
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn read_json<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, String> {
    let body = req
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}\n"))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| format!("body: {e}\n"))
}
