//! Label and annotation keys Knative defines and Ebb keeps, so that tools that select on them
//! (kn, dashboards, brokers) work unchanged.

/// On Configuration, Route, Revision and pods: the owning Service's name.
pub const SERVICE: &str = "serving.knative.dev/service";
/// The owning Service's UID.
pub const SERVICE_UID: &str = "serving.knative.dev/serviceUID";
/// On Revisions and pods: the owning Configuration's name.
pub const CONFIGURATION: &str = "serving.knative.dev/configuration";
/// The owning Configuration's UID.
pub const CONFIGURATION_UID: &str = "serving.knative.dev/configurationUID";
/// On Revisions: the Configuration generation that stamped it. Used to find the Revision of the
/// current generation without relying on names (user-chosen names break the `-00001` pattern).
pub const CONFIGURATION_GENERATION: &str = "serving.knative.dev/configurationGeneration";
/// On pods and workload objects: the Revision's name and UID.
pub const REVISION: &str = "serving.knative.dev/revision";
pub const REVISION_UID: &str = "serving.knative.dev/revisionUID";
/// On Revisions: the Route(s) sending traffic to it.
pub const ROUTE: &str = "serving.knative.dev/route";
/// On Routes and Services: `cluster-local` keeps the route off the external gateway.
pub const VISIBILITY: &str = "networking.knative.dev/visibility";
pub const VISIBILITY_CLUSTER_LOCAL: &str = "cluster-local";

/// Annotations Knative sets on objects created for a user.
pub const CREATOR: &str = "serving.knative.dev/creator";
pub const LAST_MODIFIER: &str = "serving.knative.dev/lastModifier";
/// On Revisions: routing state (`active`, `reserve`, `pending`) used by GC and scale-to-zero.
pub const ROUTING_STATE: &str = "serving.knative.dev/routingState";
/// On Revisions: when the routing state last changed (RFC 3339).
pub const ROUTING_STATE_MODIFIED: &str = "serving.knative.dev/routingStateModified";
/// On Revisions: the Routes sending it traffic, comma-separated.
pub const ROUTES: &str = "serving.knative.dev/routes";
/// Routing states.
pub const ROUTING_ACTIVE: &str = "active";
pub const ROUTING_RESERVE: &str = "reserve";
pub const ROUTING_PENDING: &str = "pending";
/// kubectl's client-side apply bookkeeping; never propagated to children.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
