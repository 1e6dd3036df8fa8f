//! What the gateway knows about each revision: its throttler and request timeout. The backend
//! (local runtime or EndpointSlices) publishes ready instances here; a revision a route names
//! before the backend has said anything gets defaults, so its requests queue rather than fail.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::throttler::{Limits, Throttler};

/// Knative's default revision timeout, used until the backend says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug)]
pub struct RevisionState {
    pub namespace: String,
    pub name: String,
    pub throttler: Arc<Throttler>,
    timeout_ms: std::sync::atomic::AtomicU64,
    h2c: std::sync::atomic::AtomicBool,
    /// Requests routed here since the last concurrency report.
    pub arrivals: std::sync::atomic::AtomicU64,
    /// Instances announced by the backend and those that answered a probe.
    pub(crate) candidates: crate::probe::SharedCandidates,
    /// Why the revision cannot be served (its record is damaged): its requests are answered
    /// 500 at once instead of waiting for instances that will never come.
    broken: RwLock<Option<String>>,
}

impl RevisionState {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.load(std::sync::atomic::Ordering::Relaxed))
    }
    pub fn h2c(&self) -> bool {
        self.h2c.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Why the revision cannot be served, if it cannot.
    pub fn broken(&self) -> Option<String> {
        self.broken
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_broken(&self, reason: Option<String>) {
        *self.broken.write().unwrap_or_else(|p| p.into_inner()) = reason;
    }
}

/// Revision settings the backend publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevisionSettings {
    pub container_concurrency: usize,
    pub timeout: Duration,
    pub h2c: bool,
}

impl Default for RevisionSettings {
    fn default() -> Self {
        RevisionSettings {
            container_concurrency: 0,
            timeout: DEFAULT_TIMEOUT,
            h2c: false,
        }
    }
}

#[derive(Debug, Default)]
pub struct Revisions {
    limits: Limits,
    /// namespace → revision → state; nested so that lookups borrow the names (no allocation
    /// per request).
    map: RwLock<HashMap<String, HashMap<String, Arc<RevisionState>>>>,
}

impl Revisions {
    pub fn new(limits: Limits) -> Self {
        Revisions {
            limits,
            map: RwLock::default(),
        }
    }

    pub fn get(&self, namespace: &str, name: &str) -> Arc<RevisionState> {
        if let Some(r) = self
            .map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(namespace)
            .and_then(|m| m.get(name))
        {
            return r.clone();
        }
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        map.entry(namespace.to_string())
            .or_default()
            .entry(name.to_string())
            .or_insert_with(|| {
                let s = RevisionSettings::default();
                Arc::new(RevisionState {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    throttler: Throttler::new(name, s.container_concurrency, self.limits),
                    timeout_ms: (s.timeout.as_millis() as u64).into(),
                    h2c: s.h2c.into(),
                    arrivals: 0.into(),
                    candidates: Default::default(),
                    broken: RwLock::new(None),
                })
            })
            .clone()
    }

    /// Publish a revision's settings.
    pub fn configure(&self, namespace: &str, name: &str, s: RevisionSettings) {
        let r = self.get(namespace, name);
        r.timeout_ms.store(
            s.timeout.as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        r.h2c.store(s.h2c, std::sync::atomic::Ordering::Relaxed);
        r.throttler
            .set_container_concurrency(s.container_concurrency);
    }

    /// Announce a revision's instances; each is used once its queue-proxy answers a probe.
    /// Needs a Tokio runtime (probes run as tasks).
    pub fn announce(&self, namespace: &str, name: &str, addrs: &[SocketAddr]) {
        crate::probe::announce(&self.get(namespace, name), addrs);
    }

    /// An announced instance is known to answer (the backend probed it): use it at once.
    pub fn confirm(&self, namespace: &str, name: &str, addr: SocketAddr) {
        crate::probe::confirm(&self.get(namespace, name), addr);
    }

    /// Publish a revision's ready instances directly, without probing (the backend vouches
    /// for them).
    pub fn set_endpoints(&self, namespace: &str, name: &str, addrs: &[SocketAddr]) {
        self.get(namespace, name).throttler.set_endpoints(addrs);
    }

    pub fn all(&self) -> Vec<Arc<RevisionState>> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        map.values().flat_map(|m| m.values().cloned()).collect()
    }
}
