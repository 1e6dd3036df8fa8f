//! The autoscaler's loop: scrape every instance's stats each second, decide every 2 s (and at
//! once on a poke), and hand changed decisions to the `Scaler`. The backend (local runtime or
//! Kubernetes watches) feeds it revisions and instances through a `Handle`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serving_api::autoscaling::RevisionScaling;
use serving_api::config::AutoscalerConfig;
use tokio::sync::mpsc;

use crate::collector::{Autoscaler, RevisionKey, Source};
use crate::metrics::Metrics;
use crate::scaler::Scaler;

/// Scrapes happen every second; a slower instance is skipped for that second.
const SCRAPE_TIMEOUT: Duration = Duration::from_millis(500);
pub const TICK: Duration = Duration::from_secs(2);

/// One ready instance and where its queue-proxy serves stats.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    pub name: String,
    pub stats: SocketAddr,
}

#[derive(Debug)]
enum Event {
    Upsert(RevisionKey, Box<RevisionScaling>),
    Remove(RevisionKey),
    Instances(RevisionKey, Vec<Instance>),
    Poke(RevisionKey, f64),
    Activator(RevisionKey, wire::Stat),
    Reset,
    Configure(Box<AutoscalerConfig>),
}

/// How the backend talks to the running autoscaler. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Handle {
    tx: mpsc::UnboundedSender<Event>,
}

impl Handle {
    pub fn upsert(&self, key: RevisionKey, scaling: RevisionScaling) {
        let _ = self.tx.send(Event::Upsert(key, Box::new(scaling)));
    }
    pub fn remove(&self, key: RevisionKey) {
        let _ = self.tx.send(Event::Remove(key));
    }
    /// The ready instances of a revision (replaces the previous set).
    pub fn instances(&self, key: RevisionKey, instances: Vec<Instance>) {
        let _ = self.tx.send(Event::Instances(key, instances));
    }
    /// The activator's per-second report for a revision (requests it holds or forwards).
    pub fn activator_stat(&self, key: RevisionKey, stat: wire::Stat) {
        let _ = self.tx.send(Event::Activator(key, stat));
    }
    /// A new config-autoscaler (upsert the revisions again with settings resolved from it).
    pub fn configure(&self, config: AutoscalerConfig) {
        let _ = self.tx.send(Event::Configure(Box::new(config)));
    }
    /// Forget which scales were applied, so every next decision is applied again (after
    /// gaining leadership: another replica may have scaled in between).
    pub fn reset_applied(&self) {
        let _ = self.tx.send(Event::Reset);
    }
    /// The activator holds `demand` requests for a revision: decide now.
    pub fn poke(&self, key: RevisionKey, demand: f64) {
        let _ = self.tx.send(Event::Poke(key, demand));
    }
}

pub struct Runner {
    autoscaler: Autoscaler,
    scaler: Arc<dyn Scaler>,
    metrics: Arc<Metrics>,
    instances: HashMap<RevisionKey, Vec<Instance>>,
    applied: HashMap<RevisionKey, i32>,
    epoch: Instant,
    client: Client<HttpConnector, Empty<Bytes>>,
    rx: mpsc::UnboundedReceiver<Event>,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("revisions", &self.autoscaler.len())
            .finish()
    }
}

impl Runner {
    pub fn new(
        config: &AutoscalerConfig,
        scaler: Arc<dyn Scaler>,
        metrics: Arc<Metrics>,
    ) -> (Runner, Handle) {
        let (tx, rx) = mpsc::unbounded_channel();
        let runner = Runner {
            autoscaler: Autoscaler::new(config),
            scaler,
            metrics,
            instances: HashMap::new(),
            applied: HashMap::new(),
            epoch: Instant::now(),
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build_http(),
            rx,
        };
        (runner, Handle { tx })
    }

    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    async fn apply(&mut self, key: RevisionKey, desired: i32) {
        if self.applied.get(&key) == Some(&desired) {
            return;
        }
        match self.scaler.scale(&key, desired).await {
            Ok(()) => {
                self.applied.insert(key, desired);
            }
            // A follower decides (its state stays warm) but does not apply.
            Err(crate::scaler::ScaleError::NotLeader) => {}
            // Kept unapplied: the next decision tries again. The last scale stays in force.
            Err(e) => tracing::warn!(error = %e, "scaling failed; will retry"),
        }
    }

    async fn decide(&mut self, key: &RevisionKey, poke: Option<f64>) {
        let started = Instant::now();
        let now = self.now();
        let decision = match poke {
            Some(demand) => self.autoscaler.poke(key, now, demand),
            None => self.autoscaler.decide(key, now),
        };
        if let Some(d) = decision {
            self.metrics.record(key, &d, started.elapsed());
            self.apply(key.clone(), d.desired).await;
        }
    }

    async fn scrape(&mut self) {
        let targets: Vec<(RevisionKey, Instance)> = self
            .instances
            .iter()
            .flat_map(|(k, v)| v.iter().map(move |i| (k.clone(), i.clone())))
            .collect();
        let client = &self.client;
        let results =
            futures_util::future::join_all(targets.into_iter().map(|(key, inst)| async move {
                let uri = format!("http://{}{}", inst.stats, wire::STATS_PATH);
                let req = http::Request::get(uri).body(Empty::new()).ok()?;
                let resp = tokio::time::timeout(SCRAPE_TIMEOUT, client.request(req))
                    .await
                    .ok()?
                    .ok()?;
                let body = tokio::time::timeout(SCRAPE_TIMEOUT, resp.into_body().collect())
                    .await
                    .ok()?
                    .ok()?
                    .to_bytes();
                let stat = wire::Stat::from_json(&body).ok()?;
                Some((key, stat))
            }))
            .await;
        let now = self.now();
        for (key, stat) in results.into_iter().flatten() {
            self.autoscaler.record(&key, now, &stat, Source::QueueProxy);
        }
    }

    /// Run until every `Handle` is dropped.
    pub async fn run(mut self) {
        let mut scrape = tokio::time::interval(Duration::from_secs(1));
        let mut tick = tokio::time::interval(TICK);
        scrape.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                event = self.rx.recv() => match event {
                    None => return,
                    Some(Event::Upsert(key, scaling)) => {
                        let ready = self.instances.get(&key).map_or(0, Vec::len) as u32;
                        let now = self.now();
                        self.autoscaler.upsert(key, *scaling, now, ready);
                    }
                    Some(Event::Remove(key)) => {
                        self.autoscaler.remove(&key);
                        self.metrics.forget(&key);
                        self.instances.remove(&key);
                        self.applied.remove(&key);
                    }
                    Some(Event::Instances(key, list)) => {
                        self.autoscaler.set_ready(&key, list.len() as u32);
                        let gone: Vec<String> = self.instances.get(&key).into_iter().flatten()
                            .filter(|old| !list.iter().any(|n| n.name == old.name)).map(|i| i.name.clone()).collect();
                        for name in gone {
                            self.autoscaler.forget_reporter(&key, &name);
                        }
                        self.instances.insert(key, list);
                    }
                    Some(Event::Reset) => self.applied.clear(),
                    Some(Event::Configure(config)) => self.autoscaler.set_config(&config),
                    Some(Event::Poke(key, demand)) => self.decide(&key, Some(demand)).await,
                    Some(Event::Activator(key, stat)) => {
                        let now = self.now();
                        self.autoscaler.record(&key, now, &stat, Source::Activator);
                    }
                },
                _ = scrape.tick() => self.scrape().await,
                _ = tick.tick() => {
                    let now = self.now();
                    let started = Instant::now();
                    for (key, d) in self.autoscaler.tick(now) {
                        self.metrics.record(&key, &d, started.elapsed());
                        self.apply(key, d.desired).await;
                    }
                }
            }
        }
    }
}
