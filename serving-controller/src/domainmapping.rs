//! DomainMapping → its status: the domain claimed (a ClusterDomainClaim delegates it to the
//! mapping's namespace, created by the reconciler when config-network's
//! `autocreate-cluster-domain-claims` is true), the reference resolved to a Route, that Route
//! ready.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serving_api::domainmapping::AUTOCREATED;
use serving_api::{ClusterDomainClaim, ClusterDomainClaimSpec};

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

/// A mapping's hold on its domain, from the ClusterDomainClaims (as Knative decides it).
#[derive(Clone, Debug, PartialEq)]
pub enum Claim {
    /// The claim names the mapping's namespace.
    Held,
    /// The claim delegates the domain to another namespace.
    NotOwned { namespace: String },
    /// No claim, and the mapping may not create one (autocreate off).
    Missing,
    /// No claim yet: create this one (autocreate on), then the domain is held.
    Create(Box<ClusterDomainClaim>),
}

/// `dm`'s claim among `claims`; `autocreate`: config-network's
/// `autocreate-cluster-domain-claims`.
pub fn claim(dm: &DomainMapping, claims: &[ClusterDomainClaim], autocreate: bool) -> Claim {
    let domain = dm.metadata.name.clone().unwrap_or_default();
    let ns = dm.metadata.namespace.clone().unwrap_or_default();
    match claims
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some(domain.as_str()))
    {
        Some(c) if c.spec.namespace == ns => Claim::Held,
        Some(c) => Claim::NotOwned {
            namespace: c.spec.namespace.clone(),
        },
        None if autocreate => Claim::Create(Box::new(ClusterDomainClaim {
            metadata: ObjectMeta {
                name: Some(domain),
                labels: Some(BTreeMap::from([(
                    AUTOCREATED.to_string(),
                    "true".to_string(),
                )])),
                ..ObjectMeta::default()
            },
            spec: ClusterDomainClaimSpec { namespace: ns },
        })),
        None => Claim::Missing,
    }
}

/// Claims this reconciler created that no DomainMapping of their namespace maps any more
/// (deleted, as Knative deletes the claim it made with the mapping). An administrator's claims
/// (without the label) are never among them.
pub fn stale_claims<'a>(
    claims: &'a [ClusterDomainClaim],
    mappings: &[DomainMapping],
) -> Vec<&'a ClusterDomainClaim> {
    claims
        .iter()
        .filter(|c| {
            c.metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.get(AUTOCREATED).is_some_and(|v| v == "true"))
        })
        .filter(|c| {
            !mappings.iter().any(|m| {
                m.metadata.name == c.metadata.name
                    && m.metadata.namespace.as_deref() == Some(c.spec.namespace.as_str())
                    && m.metadata.deletion_timestamp.is_none()
            })
        })
        .collect()
}

fn claim_condition(dm: &DomainMapping, claim: &Claim) -> Condition {
    let domain = dm.metadata.name.as_deref().unwrap_or_default();
    let ns = dm.metadata.namespace.as_deref().unwrap_or_default();
    let refused = |message: String| {
        Condition::new(
            conditions::DOMAIN_CLAIMED,
            ConditionStatus::False,
            "DomainAlreadyClaimed",
            &message,
        )
    };
    match claim {
        Claim::Held | Claim::Create(_) => Condition::truthy(conditions::DOMAIN_CLAIMED),
        Claim::NotOwned { namespace } => refused(format!(
            "The domain name is already in use: ClusterDomainClaim {domain:?} delegates it to namespace {namespace:?}."
        )),
        Claim::Missing => refused(format!(
            "No ClusterDomainClaim {domain:?}: a cluster administrator must create one with spec.namespace {ns:?}, or set config-network's autocreate-cluster-domain-claims to \"true\"."
        )),
    }
}

/// The mapping's status. `tls_supported`: whether the backend can serve `spec.tls`.
pub fn domain_mapping_status(
    dm: &DomainMapping,
    claim: &Claim,
    routes: &[Route],
    tls_supported: bool,
) -> DomainMappingStatus {
    let domain = dm.metadata.name.clone().unwrap_or_default();
    let claimed = claim_condition(dm, claim);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(ns: &str) -> DomainMapping {
        let mut dm = DomainMapping::new("shop.example.com", Default::default());
        dm.metadata.namespace = Some(ns.into());
        dm
    }

    fn claim_for(ns: &str, autocreated: bool) -> ClusterDomainClaim {
        let mut c = ClusterDomainClaim::new(
            "shop.example.com",
            ClusterDomainClaimSpec {
                namespace: ns.into(),
            },
        );
        if autocreated {
            c.metadata.labels = Some(BTreeMap::from([(AUTOCREATED.into(), "true".into())]));
        }
        c
    }

    #[test]
    fn a_claim_decides_who_holds_a_domain() {
        let dm = mapping("shop");
        assert_eq!(claim(&dm, &[claim_for("shop", false)], false), Claim::Held);
        assert_eq!(
            claim(&dm, &[claim_for("other", true)], true),
            Claim::NotOwned {
                namespace: "other".into()
            }
        );
        assert_eq!(claim(&dm, &[], false), Claim::Missing);
        let Claim::Create(made) = claim(&dm, &[], true) else {
            panic!("autocreate makes a claim");
        };
        assert_eq!(*made, claim_for("shop", true));
        let refused = domain_mapping_status(&dm, &Claim::Missing, &[], true);
        let c = &refused.conditions[0];
        assert_eq!(
            (c.type_.as_str(), c.reason.as_deref()),
            (conditions::DOMAIN_CLAIMED, Some("DomainAlreadyClaimed"))
        );
        assert!(
            c.message
                .as_deref()
                .unwrap_or_default()
                .contains("autocreate-cluster-domain-claims")
        );
    }

    #[test]
    fn only_made_claims_without_their_mapping_are_stale() {
        let made = claim_for("shop", true);
        let admins = claim_for("shop", false);
        assert!(stale_claims(std::slice::from_ref(&made), &[mapping("shop")]).is_empty());
        assert_eq!(
            stale_claims(std::slice::from_ref(&made), &[mapping("other")]).len(),
            1
        );
        assert!(stale_claims(std::slice::from_ref(&admins), &[]).is_empty());
    }
}
