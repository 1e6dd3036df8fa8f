//! Stat intake and decisions for every revision: the state the autoscaler keeps, without I/O.

use std::collections::HashMap;
use std::time::Duration;

use serving_api::autoscaling::{Metric, RevisionScaling};
use serving_api::config::AutoscalerConfig;
use wire::Stat;

use crate::aggregation::Buckets;
use crate::scaling::{ClusterScaling, Decider, Decision, Observed};

/// A revision, by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RevisionKey {
    pub namespace: String,
    pub name: String,
}

impl RevisionKey {
    pub fn new(namespace: &str, name: &str) -> Self {
        RevisionKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

/// Who reported a stat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A queue-proxy: requests the activator forwarded are left out (the activator reports
    /// them itself), so nothing is counted twice.
    QueueProxy,
    /// The activator: everything it holds or forwards for the revision.
    Activator,
}

#[derive(Debug)]
struct Entry {
    decider: Decider,
    concurrency: Buckets,
    rps: Buckets,
    /// Last window sequence seen per reporter, so a stat scraped twice counts once.
    seen: HashMap<String, u64>,
    ready: u32,
    last: Option<Decision>,
    /// The highest demand poked in the current second: pokes come once per held request,
    /// each carrying the whole queue, so only the growth is new demand.
    poked: Option<(u64, f64)>,
}

/// Every revision's buckets and decider.
#[derive(Debug)]
pub struct Autoscaler {
    cluster: ClusterScaling,
    revisions: HashMap<RevisionKey, Entry>,
}

impl Autoscaler {
    pub fn new(config: &AutoscalerConfig) -> Self {
        Autoscaler {
            cluster: ClusterScaling::from(config),
            revisions: HashMap::new(),
        }
    }

    /// Take a new config-autoscaler: cluster-wide limits apply at once; per-revision
    /// settings follow when the backend upserts each revision again with them.
    pub fn set_config(&mut self, config: &AutoscalerConfig) {
        self.cluster = ClusterScaling::from(config);
    }

    pub fn len(&self) -> usize {
        self.revisions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.revisions.is_empty()
    }

    /// Start (or update) scaling a revision; `ready` is what runs now.
    pub fn upsert(
        &mut self,
        key: RevisionKey,
        scaling: RevisionScaling,
        now: Duration,
        ready: u32,
    ) {
        match self.revisions.get_mut(&key) {
            Some(e) => e.decider.update(scaling, self.cluster.clone()),
            None => {
                let secs = scaling.stable_window.as_secs().max(1) as usize;
                let decider = Decider::new(scaling, self.cluster.clone(), now, ready);
                self.revisions.insert(
                    key,
                    Entry {
                        decider,
                        concurrency: Buckets::new(secs),
                        rps: Buckets::new(secs),
                        seen: HashMap::new(),
                        ready,
                        last: None,
                        poked: None,
                    },
                );
            }
        }
    }

    pub fn remove(&mut self, key: &RevisionKey) {
        self.revisions.remove(key);
    }

    pub fn set_ready(&mut self, key: &RevisionKey, ready: u32) {
        if let Some(e) = self.revisions.get_mut(key) {
            e.ready = ready;
        }
    }

    /// Take one report. Returns false for an unknown revision or a repeated window.
    pub fn record(
        &mut self,
        key: &RevisionKey,
        now: Duration,
        stat: &Stat,
        source: Source,
    ) -> bool {
        let Some(e) = self.revisions.get_mut(key) else {
            return false;
        };
        if source == Source::QueueProxy {
            let seen = e.seen.entry(stat.pod_name.clone()).or_insert(u64::MAX);
            if *seen == stat.seq {
                return false;
            }
            *seen = stat.seq;
        }
        let (concurrency, requests) = match source {
            Source::QueueProxy => (
                (stat.average_concurrency - stat.average_proxied_concurrency).max(0.0),
                (stat.request_count - stat.proxied_request_count).max(0.0),
            ),
            Source::Activator => (stat.average_concurrency, stat.request_count),
        };
        let window = if stat.window > 0.0 { stat.window } else { 1.0 };
        e.concurrency.record(now, concurrency);
        e.rps.record(now, requests / window);
        true
    }

    /// Forget reporters that are gone (instances removed), so their sequence numbers do not
    /// accumulate.
    pub fn forget_reporter(&mut self, key: &RevisionKey, pod: &str) {
        if let Some(e) = self.revisions.get_mut(key) {
            e.seen.remove(pod);
        }
    }

    /// The activator holds `demand` requests for a revision (at zero, or over capacity):
    /// record it and decide at once instead of waiting for the next tick.
    pub fn poke(&mut self, key: &RevisionKey, now: Duration, demand: f64) -> Option<Decision> {
        let e = self.revisions.get_mut(key)?;
        let second = now.as_secs();
        let new_demand = match e.poked {
            Some((s, max)) if s == second => (demand - max).max(0.0),
            _ => demand,
        };
        e.poked = Some((
            second,
            e.poked
                .filter(|(s, _)| *s == second)
                .map_or(demand, |(_, m)| m.max(demand)),
        ));
        let stat = Stat {
            average_concurrency: new_demand,
            request_count: new_demand,
            window: 1.0,
            ..Stat::default()
        };
        self.record(key, now, &stat, Source::Activator);
        self.decide(key, now)
    }

    pub fn decide(&mut self, key: &RevisionKey, now: Duration) -> Option<Decision> {
        let e = self.revisions.get_mut(key)?;
        let s = &e.decider.scaling;
        let buckets = match s.metric {
            Metric::Concurrency => &e.concurrency,
            Metric::Rps => &e.rps,
        };
        let panic_window = s.panic_window().max(Duration::from_secs(1));
        let observed = Observed {
            stable: buckets.average(now, s.stable_window, s.aggregation),
            panic: buckets.average(now, panic_window, s.aggregation),
            ready: e.ready,
        };
        let d = e.decider.decide(now, observed);
        e.last = Some(d);
        Some(d)
    }

    /// Decide for every revision (the 2 s tick).
    pub fn tick(&mut self, now: Duration) -> Vec<(RevisionKey, Decision)> {
        let keys: Vec<RevisionKey> = self.revisions.keys().cloned().collect();
        keys.into_iter()
            .filter_map(|k| self.decide(&k, now).map(|d| (k, d)))
            .collect()
    }

    pub fn last_decision(&self, key: &RevisionKey) -> Option<Decision> {
        self.revisions.get(key).and_then(|e| e.last)
    }
}
