//! The activator on Kubernetes: Routes become the routing table, Revisions their settings,
//! EndpointSlices the instances (announced; the gateway probes each itself). Demand goes to
//! every autoscaler replica: a per-second report and a poke when a request waits at zero.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use activator::revisions::{RevisionSettings, Revisions};
use activator::routes::RoutingTable;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::watcher;
use serving_api::{Revision, Route};
use tokio::sync::watch;

use crate::autoscaler::{ActivatorStat, POKE_PATH, Poke, STATS_PATH};
use crate::endpoints::{by_revision, serving_addrs};
use crate::mirror::mirror;

/// What this activator's table routes, by Route: none until the Routes and DomainMappings
/// have both been listed once (the activator is not ready before), then each Route's routing
/// fingerprint as the table holds it. The controller asks for it (`/v1/routes/NS/NAME` on the
/// metrics listener) before it calls a Route Ready.
pub type Programmed = Option<Arc<serving_controller::route::Programmed>>;

#[derive(Default)]
struct Known {
    routes: Vec<Route>,
    mappings: Vec<serving_api::DomainMapping>,
    routes_listed: bool,
    mappings_listed: bool,
}

/// Keep the routing table, revision settings and instances in line with the API.
/// `tag_header`: whether `Knative-Serving-Tag` routes (config-features'
/// `tag-header-based-routing`).
pub async fn watch_inputs(
    client: kube::Client,
    routes: watch::Sender<Arc<RoutingTable>>,
    programmed: watch::Sender<Programmed>,
    revisions: Arc<Revisions>,
    tag_header: bool,
) {
    // The table from the Routes, with the domains of the DomainMappings that serve one.
    let known: Arc<std::sync::Mutex<Known>> = Arc::default();
    let publish = {
        let known = known.clone();
        move || {
            let Ok(k) = known.lock() else { return };
            let k = &*k;
            let k = (&k.routes, &k.mappings, k.routes_listed && k.mappings_listed);
            let mut table = RoutingTable::build(k.0.iter()).with_tag_header(tag_header);
            for dm in
                k.1.iter()
                    .filter(|d| serving_controller::domainmapping::serves(d))
            {
                if let (Some(domain), Some(ns)) = (&dm.metadata.name, &dm.metadata.namespace) {
                    table.alias(
                        domain,
                        ns,
                        serving_controller::domainmapping::route_name(dm),
                    );
                }
            }
            routes.send_replace(Arc::new(table));
            // Published after the table is in use: what it says is routed, is.
            if k.2 {
                programmed.send_replace(Some(Arc::new(serving_controller::route::Programmed::of(
                    k.0.iter(),
                ))));
            }
        }
    };
    let publish = Arc::new(publish);
    let route_watch = {
        let (known, publish) = (known.clone(), publish.clone());
        mirror(
            Api::<Route>::all(client.clone()),
            watcher::Config::default(),
            move |snapshot| {
                if let Ok(mut k) = known.lock() {
                    k.routes = snapshot.values().cloned().collect();
                    k.routes_listed = true;
                }
                publish();
            },
        )
    };
    let mapping_watch = {
        let (known, publish) = (known.clone(), publish.clone());
        mirror(
            Api::<serving_api::DomainMapping>::all(client.clone()),
            watcher::Config::default(),
            move |snapshot| {
                if let Ok(mut k) = known.lock() {
                    k.mappings = snapshot.values().cloned().collect();
                    k.mappings_listed = true;
                }
                publish();
            },
        )
    };
    let settings = {
        let revisions = revisions.clone();
        mirror(
            Api::<Revision>::all(client.clone()),
            watcher::Config::default(),
            move |snapshot| {
                for ((ns, name), r) in snapshot {
                    let (_, h2c) = r.spec.serving_port();
                    revisions.configure(
                        ns,
                        name,
                        RevisionSettings {
                            container_concurrency: usize::try_from(
                                r.spec.container_concurrency.unwrap_or(0),
                            )
                            .unwrap_or(0),
                            timeout: Duration::from_secs(
                                r.spec.timeout_seconds.unwrap_or(300).max(1) as u64,
                            ),
                            h2c,
                        },
                    );
                }
            },
        )
    };
    let endpoints = {
        let mut announced: BTreeSet<(String, String)> = BTreeSet::new();
        mirror(
            Api::<EndpointSlice>::all(client),
            watcher::Config::default().labels(serving_api::labels::REVISION),
            move |snapshot| {
                let now = by_revision(snapshot);
                for ((ns, rev), list) in &now {
                    revisions.announce(ns, rev, &serving_addrs(list));
                }
                for (ns, rev) in announced.iter().filter(|k| !now.contains_key(*k)) {
                    revisions.announce(ns, rev, &[]);
                }
                announced = now.into_keys().collect();
            },
        )
    };
    tokio::join!(route_watch, mapping_watch, settings, endpoints);
}

/// The ready endpoints of a Service (`service` in `namespace`), at the first port of its
/// EndpointSlices: the autoscaler replicas' intake for the activator, the activators' probe
/// port for the controller.
pub async fn watch_service_endpoints(
    client: kube::Client,
    namespace: &str,
    service: &str,
    targets: watch::Sender<Vec<SocketAddr>>,
) {
    mirror(
        Api::<EndpointSlice>::namespaced(client, namespace),
        watcher::Config::default().labels(&format!("kubernetes.io/service-name={service}")),
        move |snapshot| {
            let mut addrs: Vec<SocketAddr> = snapshot
                .values()
                .flat_map(|slice| {
                    let port = slice
                        .ports
                        .iter()
                        .flatten()
                        .find_map(|p| p.port)
                        .and_then(|p| u16::try_from(p).ok())
                        .unwrap_or(8080);
                    slice
                        .endpoints
                        .iter()
                        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
                        .flat_map(|e| e.addresses.clone())
                        .filter_map(move |a| a.parse().ok().map(|ip| SocketAddr::new(ip, port)))
                })
                .collect();
            addrs.sort();
            addrs.dedup();
            targets.send_replace(addrs);
        },
    )
    .await;
}

/// Sends demand to every autoscaler replica. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Reporter {
    http: HttpClient<HttpConnector, Full<Bytes>>,
    targets: watch::Receiver<Vec<SocketAddr>>,
}

impl Reporter {
    pub fn new(targets: watch::Receiver<Vec<SocketAddr>>) -> Reporter {
        Reporter {
            http: HttpClient::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build_http(),
            targets,
        }
    }

    fn post(&self, path: &'static str, body: Vec<u8>) {
        let targets = self.targets.borrow().clone();
        for t in targets {
            let http = self.http.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let Ok(req) = http::Request::post(format!("http://{t}{path}"))
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(Full::new(Bytes::from(body)))
                else {
                    return;
                };
                match tokio::time::timeout(Duration::from_secs(1), http.request(req)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(target = %t, error = %e, "autoscaler unreachable")
                    }
                    Err(_) => tracing::debug!(target = %t, "autoscaler slow"),
                }
            });
        }
    }

    /// A request waits for a revision with no instance: decide now.
    pub fn poke(&self, namespace: &str, revision: &str, demand: usize) {
        let p = Poke {
            namespace: namespace.into(),
            revision: revision.into(),
            demand: demand as f64,
        };
        if let Ok(body) = serde_json::to_vec(&p) {
            self.post(POKE_PATH, body);
        }
    }

    /// Sample demand every 100 ms, report it every second, forever.
    pub async fn run(
        self,
        revisions: Arc<Revisions>,
        metrics: Arc<activator::metrics::Metrics>,
        pod: String,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut n = 0u32;
        loop {
            tick.tick().await;
            metrics.sample(&revisions);
            n += 1;
            if !n.is_multiple_of(10) {
                continue;
            }
            let stats: Vec<ActivatorStat> = metrics
                .report(&revisions, &pod, Duration::from_secs(1))
                .into_iter()
                .map(|(namespace, revision, stat)| ActivatorStat {
                    namespace,
                    revision,
                    stat,
                })
                .collect();
            if stats.is_empty() {
                continue;
            }
            if let Ok(body) = serde_json::to_vec(&stats) {
                self.post(STATS_PATH, body);
            }
        }
    }
}
