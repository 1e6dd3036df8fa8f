//! A revision's instances from its EndpointSlices. The EndpointSlice controller copies the
//! revision Service's labels onto its slices, so `serving.knative.dev/revision` names the
//! revision; a revision may have several slices.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use serving_api::labels;

use crate::mirror::Snapshot;

/// One endpoint of a revision.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    /// The pod's name (targetRef), else the address.
    pub name: String,
    pub ip: IpAddr,
    /// Ready per the kubelet (the queue-proxy's readiness).
    pub ready: bool,
    /// Leaving (pod terminating): no new requests.
    pub terminating: bool,
    /// The serving port from the slice (the queue-proxy's 8012, or 8013 for h2c).
    pub port: u16,
}

/// `(namespace, revision)` → endpoints, over every slice in the snapshot.
pub fn by_revision(slices: &Snapshot<EndpointSlice>) -> BTreeMap<(String, String), Vec<Endpoint>> {
    let mut out: BTreeMap<(String, String), Vec<Endpoint>> = BTreeMap::new();
    for ((ns, _), slice) in slices {
        let Some(rev) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(labels::REVISION))
        else {
            continue;
        };
        let port = slice
            .ports
            .iter()
            .flatten()
            .find_map(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(8012);
        let list = out.entry((ns.clone(), rev.clone())).or_default();
        for e in &slice.endpoints {
            let cond = e.conditions.as_ref();
            let ready = cond.and_then(|c| c.ready).unwrap_or(true);
            let terminating = cond.and_then(|c| c.terminating).unwrap_or(false);
            for a in &e.addresses {
                let Ok(ip) = a.parse::<IpAddr>() else {
                    continue;
                };
                let name = e
                    .target_ref
                    .as_ref()
                    .and_then(|r| r.name.clone())
                    .unwrap_or_else(|| a.clone());
                list.push(Endpoint {
                    name,
                    ip,
                    ready,
                    terminating,
                    port,
                });
            }
        }
        list.sort();
        list.dedup();
    }
    out
}

/// Serving addresses of endpoints that are not leaving (the activator probes them itself).
pub fn serving_addrs(list: &[Endpoint]) -> Vec<SocketAddr> {
    list.iter()
        .filter(|e| !e.terminating)
        .map(|e| SocketAddr::new(e.ip, e.port))
        .collect()
}
