//! The routing table: which revision a request goes to, from the resolved Routes.
//!
//! Built from each Route's `status` (what the controller resolved: revision names, percents,
//! the route URL, tag URLs, the cluster-local address), never from `spec`, so the gateway only
//! sends traffic where the control plane has confirmed a ready revision.

use std::collections::HashMap;
use std::sync::Arc;

use serving_api::Route;
use serving_api::labels;

/// Where a request for a host may go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub namespace: String,
    pub route: String,
    /// (revision, cumulative percent): the split, in status order.
    split: Vec<(String, u32)>,
    /// tag → revision, for the `Knative-Serving-Tag` header on the main host.
    tags: HashMap<String, String>,
}

impl Target {
    /// The revision for a draw `r` uniform in 0..100, or the tag's revision when the request
    /// names a tag this route has (an unknown tag falls back to the split).
    pub fn pick(&self, tag: Option<&str>, r: u32) -> Option<&str> {
        if let Some(rev) = tag.and_then(|t| self.tags.get(t)) {
            return Some(rev);
        }
        let total = self.split.last().map_or(0, |(_, c)| *c);
        if total == 0 {
            return None;
        }
        let r = r % total;
        self.split
            .iter()
            .find(|(_, cum)| r < *cum)
            .map(|(rev, _)| rev.as_str())
    }

    /// Every revision this target can send to.
    pub fn revisions(&self) -> impl Iterator<Item = &str> {
        self.split
            .iter()
            .map(|(r, _)| r.as_str())
            .chain(self.tags.values().map(String::as_str))
    }
}

/// How a host is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// The public gateway: only routes that are not cluster-local.
    External,
    /// The in-cluster gateway (`*.svc.cluster.local` and the short `name.namespace` forms).
    Internal,
}

#[derive(Clone, Debug)]
struct HostEntry {
    target: Arc<Target>,
    public: bool,
}

/// Host → target, for every route.
#[derive(Clone, Debug, Default)]
pub struct RoutingTable {
    hosts: HashMap<String, HostEntry>,
    /// Whether the `Knative-Serving-Tag` header picks a tag's revision (Knative's
    /// `tag-header-based-routing` feature; the deployments set it from config-features, whose
    /// default is off).
    tag_header: bool,
    /// Hosts that cannot be served, and why (a route whose record is damaged): answered at
    /// once with 500 instead of 404.
    broken: HashMap<String, String>,
}

/// Lower-case, without port or trailing dot.
pub fn normalize_host(host: &str) -> String {
    let h = host.trim();
    let h = match h.rsplit_once(':') {
        // A port follows the last ':' unless that ':' is inside an IPv6 literal.
        Some((name, port))
            if !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (name.ends_with(']') || !name.contains(':')) =>
        {
            name
        }
        _ => h,
    };
    h.trim_end_matches('.').to_ascii_lowercase()
}

fn host_of(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.split('/').next()?;
    (!host.is_empty()).then(|| normalize_host(host))
}

impl RoutingTable {
    /// Build the table from routes; routes without resolved traffic are skipped.
    pub fn build<'a>(routes: impl IntoIterator<Item = &'a Route>) -> RoutingTable {
        let mut t = RoutingTable {
            tag_header: true,
            ..RoutingTable::default()
        };
        for r in routes {
            t.add(r);
        }
        t
    }

    /// Serve `host` (a DomainMapping's domain) as the public host of route `namespace/route`;
    /// false when that route has no entry (nothing to serve yet).
    pub fn alias(&mut self, host: &str, namespace: &str, route: &str) -> bool {
        // The route's in-cluster host always holds its main target (tag hosts hold pinned ones).
        let found = self
            .hosts
            .get(&format!("{route}.{namespace}.svc.cluster.local"))
            .filter(|e| e.target.namespace == namespace && e.target.route == route)
            .map(|e| e.target.clone());
        match found {
            Some(target) => {
                self.hosts.insert(
                    normalize_host(host),
                    HostEntry {
                        target,
                        public: true,
                    },
                );
                true
            }
            None => false,
        }
    }

    /// Honour the tag header or not (see `tag_header`).
    pub fn with_tag_header(mut self, on: bool) -> RoutingTable {
        self.tag_header = on;
        self
    }

    /// The tag a request's `Knative-Serving-Tag` header names, when tag headers route.
    pub fn header_tag<'h>(&self, header: Option<&'h str>) -> Option<&'h str> {
        header.filter(|_| self.tag_header)
    }

    fn add(&mut self, route: &Route) {
        let Some(status) = route.status.as_ref() else {
            return;
        };
        let f = &status.fields;
        if f.traffic.is_empty() {
            return;
        }
        let namespace = route
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = route.metadata.name.clone().unwrap_or_default();
        let cluster_local = route
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(labels::VISIBILITY))
            .map(String::as_str)
            == Some(labels::VISIBILITY_CLUSTER_LOCAL)
            || f.url
                .as_deref()
                .is_some_and(|u| u.contains(".svc.cluster.local"));

        let mut split = Vec::new();
        let mut cum = 0u32;
        let mut tags = HashMap::new();
        for t in &f.traffic {
            let Some(rev) = t.revision_name.clone() else {
                continue;
            };
            let pct = t.percent.unwrap_or(0).clamp(0, 100) as u32;
            if pct > 0 {
                cum += pct;
                split.push((rev.clone(), cum));
            }
            if let Some(tag) = &t.tag {
                tags.insert(tag.clone(), rev);
            }
        }
        let main = Arc::new(Target {
            namespace: namespace.clone(),
            route: name.clone(),
            split,
            tags,
        });
        let insert = |t: &mut RoutingTable, host: String, target: Arc<Target>, public: bool| {
            t.hosts.insert(host, HostEntry { target, public });
        };
        if let Some(h) = f.url.as_deref().and_then(host_of) {
            insert(self, h, main.clone(), !cluster_local);
        }
        // In-cluster names: full, and the short forms resolv.conf search paths produce.
        let local = format!("{name}.{namespace}.svc.cluster.local");
        for h in [
            local.clone(),
            format!("{name}.{namespace}.svc"),
            format!("{name}.{namespace}"),
        ] {
            self.hosts.entry(h).or_insert(HostEntry {
                target: main.clone(),
                public: false,
            });
        }
        for t in &f.traffic {
            let (Some(url), Some(rev), Some(tag)) =
                (t.url.as_deref(), t.revision_name.clone(), t.tag.as_deref())
            else {
                continue;
            };
            let pinned = Arc::new(Target {
                namespace: namespace.clone(),
                route: name.clone(),
                split: vec![(rev.clone(), 100)],
                tags: HashMap::new(),
            });
            if let Some(h) = host_of(url) {
                insert(self, h, pinned.clone(), !cluster_local);
            }
            let local_tag = format!("{tag}-{name}.{namespace}.svc.cluster.local");
            self.hosts.entry(local_tag).or_insert(HostEntry {
                target: pinned,
                public: false,
            });
        }
    }

    /// The target for a request's Host, as seen on `listener`.
    pub fn lookup(&self, host: &str, listener: Listener) -> Option<&Arc<Target>> {
        // Most Host headers are already lower-case without port: look them up as they are.
        let plain = !host
            .bytes()
            .any(|b| b.is_ascii_uppercase() || b == b':' || b == b' ')
            && !host.ends_with('.');
        let e = if plain {
            self.hosts.get(host)
        } else {
            self.hosts.get(&normalize_host(host))
        }?;
        (e.public || listener == Listener::Internal).then_some(&e.target)
    }

    /// Answer `host` with 500 and `reason` while no route serves it.
    pub fn mark_broken(&mut self, host: &str, reason: String) {
        let host = normalize_host(host);
        if !self.hosts.contains_key(&host) {
            self.broken.insert(host, reason);
        }
    }

    /// Why `host` cannot be served, when it is marked broken.
    pub fn broken(&self, host: &str) -> Option<&str> {
        self.broken.get(&normalize_host(host)).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, labels: serde_json::Value, status: serde_json::Value) -> Route {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "serving.knative.dev/v1", "kind": "Route",
            "metadata": {"name": name, "namespace": "default", "labels": labels},
            "spec": {}, "status": status,
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn shop() -> Route {
        route(
            "shop",
            serde_json::json!({}),
            serde_json::json!({
                "url": "http://shop.default.example.com",
                "address": {"url": "http://shop.default.svc.cluster.local"},
                "traffic": [
                    {"revisionName": "shop-00002", "latestRevision": true, "percent": 90, "tag": "current",
                     "url": "http://current-shop.default.example.com"},
                    {"revisionName": "shop-00001", "latestRevision": false, "percent": 10, "tag": "old",
                     "url": "http://old-shop.default.example.com"},
                    {"revisionName": "shop-00003", "latestRevision": false, "percent": 0, "tag": "next",
                     "url": "http://next-shop.default.example.com"}
                ]
            }),
        )
    }

    /// A mapped domain serves the route's split, never a tag host's pinned revision.
    #[test]
    fn an_alias_serves_the_main_split() {
        // Tables of fresh hash maps: whatever order their hosts come in.
        for _ in 0..20 {
            let mut t = RoutingTable::build([&shop()]);
            assert!(t.alias("Shop.Example.org", "default", "shop"));
            let mut seen = std::collections::BTreeSet::new();
            for r in 0..100 {
                let target = t
                    .lookup("shop.example.org", Listener::External)
                    .unwrap_or_else(|| panic!("the domain is served"));
                seen.insert(target.pick(None, r).map(str::to_string));
            }
            assert_eq!(
                seen.into_iter().flatten().collect::<Vec<_>>(),
                ["shop-00001", "shop-00002"],
                "the 90/10 split"
            );
        }
        let mut t = RoutingTable::build([&shop()]);
        assert!(!t.alias("none.example.org", "default", "missing"));
        assert!(t.lookup("none.example.org", Listener::External).is_none());
    }

    #[test]
    fn hosts_tags_and_split() {
        let t = RoutingTable::build([&shop()]);
        let main = t
            .lookup("Shop.Default.Example.com:8080", Listener::External)
            .map(|t| t.as_ref().clone());
        let main = main.unwrap_or_else(|| panic!("main host"));
        assert_eq!(main.pick(None, 0), Some("shop-00002"));
        assert_eq!(main.pick(None, 89), Some("shop-00002"));
        assert_eq!(main.pick(None, 90), Some("shop-00001"));
        assert_eq!(main.pick(None, 99), Some("shop-00001"));
        assert_eq!(
            main.pick(Some("next"), 0),
            Some("shop-00003"),
            "tag header picks the tag's revision"
        );
        assert_eq!(
            main.pick(Some("nope"), 95),
            Some("shop-00001"),
            "unknown tag falls back to the split"
        );
        let next = t
            .lookup("next-shop.default.example.com", Listener::External)
            .map(|t| t.pick(None, 50).map(str::to_string));
        assert_eq!(
            next,
            Some(Some("shop-00003".into())),
            "0% tags still have their own host"
        );
        for h in [
            "shop.default.svc.cluster.local",
            "shop.default.svc",
            "shop.default",
            "old-shop.default.svc.cluster.local",
        ] {
            assert!(t.lookup(h, Listener::Internal).is_some(), "{h}");
            assert!(
                t.lookup(h, Listener::External).is_none(),
                "{h} is not public"
            );
        }
        assert!(
            t.lookup("other.default.example.com", Listener::External)
                .is_none()
        );
    }

    #[test]
    fn cluster_local_routes_are_not_public() {
        let r = route(
            "greeter",
            serde_json::json!({"networking.knative.dev/visibility": "cluster-local"}),
            serde_json::json!({"url": "http://greeter.default.svc.cluster.local",
                               "traffic": [{"revisionName": "greeter-00001", "percent": 100}]}),
        );
        let t = RoutingTable::build([&r]);
        assert!(
            t.lookup("greeter.default.svc.cluster.local", Listener::External)
                .is_none()
        );
        assert!(
            t.lookup("greeter.default.svc.cluster.local", Listener::Internal)
                .is_some()
        );
    }

    #[test]
    fn unresolved_routes_are_skipped() {
        let r = route(
            "pending",
            serde_json::json!({}),
            serde_json::json!({"url": "http://pending.default.example.com"}),
        );
        assert!(RoutingTable::build([&r]).is_empty());
    }

    #[test]
    fn ninety_ten_split_is_statistically_right() {
        let t = RoutingTable::build([&shop()]);
        let target = t
            .lookup("shop.default.example.com", Listener::External)
            .cloned()
            .unwrap_or_else(|| panic!("route"));
        let mut rng = fastrand::Rng::with_seed(7);
        let n = 10_000;
        let old = (0..n)
            .filter(|_| target.pick(None, rng.u32(0..100)) == Some("shop-00001"))
            .count();
        let share = old as f64 / f64::from(n);
        assert!((share - 0.10).abs() <= 0.02, "10% target got {share}");
    }

    #[test]
    fn host_normalization() {
        assert_eq!(
            normalize_host("Hello.Default.Localhost:8080"),
            "hello.default.localhost"
        );
        assert_eq!(
            normalize_host("hello.default.localhost."),
            "hello.default.localhost"
        );
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
    }
}
