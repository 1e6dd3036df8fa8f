//! DomainMapping → its status: the domain claimed (the oldest mapping of a domain across
//! namespaces holds it), the reference resolved to a Route, that Route ready.

use serving_api::condition::{self, Condition, ConditionStatus};
use serving_api::domainmapping::conditions;
use serving_api::{Addressable, DomainMapping, DomainMappingStatus, Route};

/// The Route a mapping's reference names (a Service's Route has the Service's name).
pub fn route_name(dm: &DomainMapping) -> &str {
    &dm.spec.reference.name
}

/// Whether a gateway should serve the mapping's domain: it holds the domain and its reference
/// resolved (by its status).
pub fn serves(dm: &DomainMapping) -> bool {
    let holds = |t: &str| {
        dm.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == t && c.status == ConditionStatus::True)
        })
    };
    holds(conditions::DOMAIN_CLAIMED) && holds(conditions::REFERENCE_RESOLVED)
}

/// Whether `dm` holds its domain among `all` mappings: the oldest of that name does.
pub fn holds_domain(dm: &DomainMapping, all: &[DomainMapping]) -> Result<(), String> {
    let key = |m: &DomainMapping| {
        (
            m.metadata.creation_timestamp.as_ref().map(|t| t.0),
            m.metadata.namespace.clone(),
        )
    };
    let holder = all
        .iter()
        .filter(|m| m.metadata.name == dm.metadata.name)
        .min_by_key(|m| key(m));
    match holder {
        Some(h) if h.metadata.namespace != dm.metadata.namespace => Err(format!(
            "The domain name is already claimed by a DomainMapping in namespace {:?}.",
            h.metadata.namespace.as_deref().unwrap_or_default()
        )),
        _ => Ok(()),
    }
}

/// The mapping's status. `tls_supported`: whether the backend can serve `spec.tls`.
pub fn domain_mapping_status(
    dm: &DomainMapping,
    all: &[DomainMapping],
    routes: &[Route],
    tls_supported: bool,
) -> DomainMappingStatus {
    let domain = dm.metadata.name.clone().unwrap_or_default();
    let claimed = match holds_domain(dm, all) {
        Ok(()) => Condition::truthy(conditions::DOMAIN_CLAIMED),
        Err(m) => Condition::new(
            conditions::DOMAIN_CLAIMED,
            ConditionStatus::False,
            "DomainAlreadyClaimed",
            &m,
        ),
    };
    let r = &dm.spec.reference;
    let route = routes.iter().find(|x| {
        x.metadata.namespace == dm.metadata.namespace
            && x.metadata.name.as_deref() == Some(route_name(dm))
    });
    let resolved = match route {
        Some(_) => Condition::truthy(conditions::REFERENCE_RESOLVED),
        None => Condition::new(
            conditions::REFERENCE_RESOLVED,
            ConditionStatus::False,
            "ResolveFailed",
            &format!("{} {:?} not found.", r.kind, r.name),
        ),
    };
    let ingress = match (route.and_then(|x| x.ready_condition()), &dm.spec.tls) {
        (_, Some(_)) if !tls_supported => Condition::new(
            conditions::INGRESS_READY,
            ConditionStatus::False,
            "TLSNotSupported",
            "spec.tls: local mode serves plain HTTP on loopback and cannot terminate TLS for the domain; remove spec.tls, or run the mapping on a cluster",
        ),
        (Some(c), _) if c.status == ConditionStatus::True => {
            Condition::truthy(conditions::INGRESS_READY)
        }
        _ => Condition::new(
            conditions::INGRESS_READY,
            ConditionStatus::Unknown,
            "RouteNotReady",
            &format!("Waiting for {} {:?} to be ready.", r.kind, r.name),
        ),
    };
    let ready = condition::summarize(conditions::READY, &[&claimed, &resolved, &ingress]);
    let url = format!("http://{domain}");
    DomainMappingStatus {
        observed_generation: dm.metadata.generation,
        conditions: vec![claimed, resolved, ingress, ready],
        url: Some(url.clone()),
        address: Some(Addressable { url: Some(url) }),
    }
}
