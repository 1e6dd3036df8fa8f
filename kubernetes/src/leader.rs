//! Leader election over a `coordination.k8s.io/v1` Lease, as client-go does it: the holder
//! renews every `renew`; another replica takes over once it has seen the same record unchanged
//! for `duration` (measured on its own clock, so clock skew between nodes does not matter).
//! Writes are conditional on the Lease's resourceVersion, so two replicas never both win.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio::sync::watch;

#[derive(Debug)]
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    renew: Duration,
    /// The last record seen (holder, renewTime) and when it was first seen.
    observed: Option<(String, Instant)>,
    /// When a round last had the API server's answer (leading or not): a replica's readiness.
    contact: Contact,
}

/// When the elector last heard from the API server. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Contact(std::sync::Arc<std::sync::Mutex<Option<Instant>>>);

impl Contact {
    /// Whether the last answer came within `within`.
    pub fn recent(&self, within: Duration) -> bool {
        self.0
            .lock()
            .ok()
            .and_then(|t| *t)
            .is_some_and(|t| t.elapsed() <= within)
    }
    fn mark(&self) {
        if let Ok(mut t) = self.0.lock() {
            *t = Some(Instant::now());
        }
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

impl Elector {
    /// Knative's defaults: a 15 s lease renewed every 10 s... Ebb renews every 5 s.
    pub fn new(client: kube::Client, namespace: &str, name: &str, identity: &str) -> Elector {
        Elector::with_timing(
            client,
            namespace,
            name,
            identity,
            Duration::from_secs(15),
            Duration::from_secs(5),
        )
    }

    pub fn with_timing(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
        renew: Duration,
    ) -> Elector {
        Elector {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            duration,
            renew,
            observed: None,
            contact: Contact::default(),
        }
    }

    /// A handle on when this elector last heard from the API server.
    pub fn contact(&self) -> Contact {
        self.contact.clone()
    }

    fn spec(&self, previous: Option<&LeaseSpec>) -> LeaseSpec {
        let now = MicroTime(jiff::Timestamp::now());
        let same_holder =
            previous.and_then(|p| p.holder_identity.as_deref()) == Some(self.identity.as_str());
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration.as_secs().max(1) as i32),
            acquire_time: if same_holder {
                previous.and_then(|p| p.acquire_time.clone())
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(
                previous.and_then(|p| p.lease_transitions).unwrap_or(0)
                    + i32::from(!same_holder && previous.is_some()),
            ),
            ..LeaseSpec::default()
        }
    }

    /// One round: acquire, renew, or observe someone else's lease. Returns whether this
    /// replica holds the lease now.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let current = match self.api.get(&self.name).await {
            Ok(l) => l,
            Err(e) if is_not_found(&e) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.spec(None)),
                };
                return match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(e) if is_conflict(&e) => Ok(false),
                    Err(e) => Err(e),
                };
            }
            Err(e) => return Err(e),
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let record = format!(
            "{holder}@{}",
            spec.renew_time
                .as_ref()
                .map(|t| t.0.to_string())
                .unwrap_or_default()
        );
        let now = Instant::now();
        if self.observed.as_ref().map(|(r, _)| r) != Some(&record) {
            self.observed = Some((record, now));
        }
        let seen_since = self.observed.as_ref().map_or(now, |(_, t)| *t);
        let duration = spec
            .lease_duration_seconds
            .map_or(self.duration, |s| Duration::from_secs(s.max(1) as u64));
        let free = holder.is_empty() || holder == self.identity || now >= seen_since + duration;
        if !free {
            return Ok(false);
        }
        let mut next = current;
        next.spec = Some(self.spec(Some(&spec)));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &next)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Give the lease up (on shutdown) so another replica takes over at once.
    pub async fn release(&mut self) {
        if let Ok(mut l) = self.api.get(&self.name).await
            && l.spec.as_ref().and_then(|s| s.holder_identity.as_deref())
                == Some(self.identity.as_str())
        {
            if let Some(s) = l.spec.as_mut() {
                s.holder_identity = None;
            }
            let _ = self
                .api
                .replace(&self.name, &PostParams::default(), &l)
                .await;
        }
    }

    /// Campaign until `stop` turns true, publishing leadership on `leader`. An error counts as
    /// not leading (a leader that cannot renew must assume it lost).
    pub async fn run(mut self, leader: watch::Sender<bool>, mut stop: watch::Receiver<bool>) {
        loop {
            let leading = match self.try_acquire_or_renew().await {
                Ok(l) => {
                    self.contact.mark();
                    l
                }
                Err(e) => {
                    tracing::warn!(error = %e, lease = %self.name, "leader election");
                    false
                }
            };
            if *leader.borrow() != leading {
                tracing::info!(leading, identity = %self.identity, "leadership changed");
                leader.send_replace(leading);
            }
            let wait = if leading {
                self.renew
            } else {
                self.renew
                    .min(self.duration / 3)
                    .max(Duration::from_millis(100))
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                    if leading {
                        self.release().await;
                    }
                    leader.send_replace(false);
                    return;
                }
            }
        }
    }
}
