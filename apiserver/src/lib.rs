//! Local mode's Kubernetes API: the REST API of a Kubernetes API server for what local mode
//! holds (Knative's Services, Configurations, Revisions and Routes with their status
//! subresources; Namespaces, ConfigMaps, Secrets and Events), over the embedded store, so
//! kubectl, kn, client-go and kube-rs work against `ebb local up` unchanged.
//!
//! - [`catalog`]: what is served; [`discovery`] and [`openapi`]: how clients learn it;
//! - verbs: get, list (label and field selectors, limit/continue), watch (from a
//!   resourceVersion, bookmarks, `410 Gone` past the history), create (`generateName`,
//!   `dryRun`), update (409 on a stale resourceVersion), patch ([`patch`]: JSON merge, JSON
//!   patch, strategic merge for core kinds; [`apply`]: server-side apply with field managers
//!   and conflicts), delete and deletecollection (propagation policies);
//! - [`fields`]: `fieldValidation` Strict/Warn/Ignore; [`admission`]: Knative's defaulting and
//!   validation, creator/lastModifier, core rules, size limits; [`status`]: errors as
//!   `Status` objects; [`table`]: server-side printing; [`guard`]: who may call at all (a bearer token, loopback hosts, no foreign
//!   origins).

pub mod admission;
pub mod apply;
pub mod catalog;
pub mod discovery;
pub mod fields;
pub mod guard;
pub mod openapi;
pub mod patch;
pub mod proto;
pub mod selectors;
pub mod server;
pub mod status;
pub mod table;
pub mod tls;

pub use server::{Api, Extras, ensure_default_namespace, serve};
