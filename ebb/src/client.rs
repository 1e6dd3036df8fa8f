//! The CLI's side: a Kubernetes client (kube-rs) for local mode's API (found through
//! `STATE/kubeconfig` while `ebb local up` runs) or any cluster (`--kubeconfig`, `--context`).
//! Objects are edited as typed `serving_api` values; updates are retried on a conflict from a
//! fresh read, so parallel updates never lose a write.

use std::path::{Path, PathBuf};

use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serving_api::Service;

use crate::server::{Endpoint, read_endpoint};

/// The field manager the CLI's writes are recorded under.
pub const FIELD_MANAGER: &str = "ebb";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server refused; one message per line (field errors, not found, ...).
    #[error("{}", .0.join("\n"))]
    Refused(Vec<String>, u16),
    #[error("{0}")]
    Other(String),
}

impl ClientError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::Refused(_, 404))
    }

    fn conflict(&self) -> bool {
        matches!(self, ClientError::Refused(_, 409))
    }
}

impl ClientError {
    /// A refusal of an object in namespace `ns`: an Invalid error's causes one per line,
    /// naming the object (`Service default/hello: spec.x: rule`), else the server's message.
    fn in_namespace(e: kube::Error, ns: Option<&str>) -> ClientError {
        match e {
            kube::Error::Api(s) => {
                let lines = match s
                    .details
                    .as_ref()
                    .filter(|d| !d.causes.is_empty() && s.code == 422)
                {
                    Some(d) => {
                        let who = match ns {
                            Some(ns) => format!("{} {ns}/{}", d.kind, d.name),
                            None => format!("{} {}", d.kind, d.name),
                        };
                        d.causes
                            .iter()
                            .map(|c| format!("{who}: {}: {}", c.field, c.message))
                            .collect()
                    }
                    None => vec![s.message.clone()],
                };
                ClientError::Refused(lines, s.code)
            }
            other => ClientError::Other(other.to_string()),
        }
    }
}

impl From<kube::Error> for ClientError {
    fn from(e: kube::Error) -> Self {
        ClientError::in_namespace(e, None)
    }
}

/// What applying one object did.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Applied {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// created, configured or unchanged (kubectl's words).
    pub result: String,
}

/// The kind of `apiVersion` the CLI applies, if served.
fn served(api_version: &str, kind: &str) -> Option<&'static str> {
    const KINDS: [(&str, &str); 8] = [
        ("serving.knative.dev/v1", "Service"),
        ("serving.knative.dev/v1", "Configuration"),
        ("serving.knative.dev/v1", "Route"),
        ("serving.knative.dev/v1beta1", "DomainMapping"),
        (
            "networking.internal.knative.dev/v1alpha1",
            "ClusterDomainClaim",
        ),
        ("v1", "ConfigMap"),
        ("v1", "Secret"),
        ("v1", "Namespace"),
    ];
    KINDS
        .iter()
        .find(|(av, k)| *av == api_version && *k == kind)
        .map(|(_, k)| *k)
}

/// The served kinds the CLI handles, as API resources.
pub fn api_resource(kind: &str) -> ApiResource {
    let (group, plural) = match kind {
        "ConfigMap" => ("", "configmaps"),
        "Secret" => ("", "secrets"),
        "Namespace" => ("", "namespaces"),
        "Event" => ("", "events"),
        "Service" => ("serving.knative.dev", "services"),
        "Configuration" => ("serving.knative.dev", "configurations"),
        "Revision" => ("serving.knative.dev", "revisions"),
        "DomainMapping" => {
            return ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("serving.knative.dev", "v1beta1", kind),
                "domainmappings",
            );
        }
        "ClusterDomainClaim" => {
            return ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("networking.internal.knative.dev", "v1alpha1", kind),
                "clusterdomainclaims",
            );
        }
        _ => ("serving.knative.dev", "routes"),
    };
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, "v1", kind), plural)
}

#[derive(Clone)]
pub struct Client {
    pub kube: kube::Client,
    /// Local mode's endpoint (gateway, state directory) when talking to it.
    pub local: Option<Endpoint>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("local", &self.local)
            .finish()
    }
}

/// `$EBB_STATE`, else `$XDG_DATA_HOME/ebb`, else `~/.local/share/ebb`.
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("ebb");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join(".local/share/ebb")
}

/// Where the CLI talks to.
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub state: PathBuf,
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
}

impl Client {
    /// A client for `target`: the cluster a kubeconfig or context names, else the running
    /// local mode of the state directory.
    pub async fn connect(target: &Target) -> anyhow::Result<Client> {
        if target.kubeconfig.is_some() || target.context.is_some() {
            let kubeconfig = match &target.kubeconfig {
                Some(path) => kube::config::Kubeconfig::read_from(path)
                    .map_err(|e| anyhow::anyhow!("--kubeconfig {}: {e}", path.display()))?,
                None => kube::config::Kubeconfig::read()
                    .map_err(|e| anyhow::anyhow!("kubeconfig: {e}"))?,
            };
            let options = kube::config::KubeConfigOptions {
                context: target.context.clone(),
                ..Default::default()
            };
            let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| anyhow::anyhow!("kubeconfig: {e}"))?;
            let kube = kube::Client::try_from(config).map_err(|e| anyhow::anyhow!("{e}"))?;
            return Ok(Client { kube, local: None });
        }
        Client::for_state(&target.state).await
    }

    /// A client for the running local mode of `state`.
    pub async fn for_state(state: &Path) -> anyhow::Result<Client> {
        let endpoint = read_endpoint(state)?;
        let path = state.join(crate::server::KUBECONFIG_FILE);
        let kubeconfig = kube::config::Kubeconfig::read_from(&path).map_err(|e| {
            anyhow::anyhow!(
                "{}: {e} (restart `ebb local up` to write it again)",
                path.display()
            )
        })?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let kube = kube::Client::try_from(config).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Client {
            kube,
            local: Some(endpoint),
        })
    }

    fn api(&self, kind: &str, ns: Option<&str>) -> Api<DynamicObject> {
        let ar = api_resource(kind);
        match ns {
            Some(ns) if !matches!(kind, "Namespace" | "ClusterDomainClaim") => {
                Api::namespaced_with(self.kube.clone(), ns, &ar)
            }
            _ => Api::all_with(self.kube.clone(), &ar),
        }
    }

    pub async fn get(&self, kind: &str, ns: &str, name: &str) -> Result<Value, ClientError> {
        let o = self.api(kind, Some(ns)).get(name).await?;
        serde_json::to_value(o).map_err(|e| ClientError::Other(e.to_string()))
    }

    pub async fn list(&self, kind: &str, ns: Option<&str>) -> Result<Vec<Value>, ClientError> {
        let list = self.api(kind, ns).list(&Default::default()).await?;
        list.items
            .into_iter()
            .map(|o| serde_json::to_value(o).map_err(|e| ClientError::Other(e.to_string())))
            .collect()
    }

    /// Delete an object (and, on the server, what it owns); returns it.
    pub async fn delete(&self, kind: &str, ns: &str, name: &str) -> Result<Value, ClientError> {
        let gone = self
            .api(kind, Some(ns))
            .delete(name, &DeleteParams::background())
            .await?;
        let obj = gone.either(
            |o| serde_json::to_value(o).unwrap_or_default(),
            |_| Value::Null,
        );
        Ok(obj)
    }

    /// Apply every object (server-side apply, as `ebb`), all or nothing: each is first applied
    /// as a dry run, and if any is refused, nothing is written and every refusal is returned.
    pub async fn apply(&self, objs: Vec<Value>) -> Result<Vec<Applied>, ClientError> {
        let ident = |o: &Value| {
            (
                o["kind"].as_str().unwrap_or_default().to_string(),
                o["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("default")
                    .to_string(),
                o["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        };
        let mut errors = Vec::new();
        for o in &objs {
            let (kind, ns, name) = ident(o);
            let av = o["apiVersion"].as_str().unwrap_or_default();
            if served(av, &kind).is_none() {
                errors.push(format!(
                    "{kind} {ns}/{name}: apiVersion {av:?}, kind {kind:?}: not served (serving.knative.dev/v1 Service, Configuration, Route; serving.knative.dev/v1beta1 DomainMapping; networking.internal.knative.dev/v1alpha1 ClusterDomainClaim; v1 ConfigMap, Secret, Namespace)"
                ));
                continue;
            }
            let params = PatchParams::apply(FIELD_MANAGER).force().dry_run();
            if let Err(e) = self
                .api(&kind, Some(&ns))
                .patch(&name, &params, &Patch::Apply(o))
                .await
            {
                match ClientError::in_namespace(e, Some(&ns)) {
                    ClientError::Refused(lines, _) => errors.extend(lines),
                    other => return Err(other),
                }
            }
        }
        if !errors.is_empty() {
            return Err(ClientError::Refused(errors, 422));
        }
        let mut out = Vec::new();
        for o in &objs {
            let (kind, ns, name) = ident(o);
            let api = self.api(&kind, Some(&ns));
            let before = match api.get_opt(&name).await? {
                Some(b) => b.metadata.resource_version,
                None => None,
            };
            let params = PatchParams::apply(FIELD_MANAGER).force();
            let after = api.patch(&name, &params, &Patch::Apply(o)).await?;
            let result = match (&before, &after.metadata.resource_version) {
                (None, _) => "created",
                (Some(b), Some(a)) if b == a => "unchanged",
                _ => "configured",
            };
            out.push(Applied {
                kind,
                namespace: ns,
                name,
                result: result.into(),
            });
        }
        Ok(out)
    }

    fn services(&self, ns: &str) -> Api<Service> {
        Api::namespaced(self.kube.clone(), ns)
    }

    pub async fn service(&self, ns: &str, name: &str) -> Result<Service, ClientError> {
        Ok(self.services(ns).get(name).await?)
    }

    pub async fn create_service(&self, svc: &Service) -> Result<Service, ClientError> {
        let ns = svc
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        Ok(self.services(&ns).create(&params, svc).await?)
    }

    /// Read the Service, `edit` it, write it back with the resourceVersion read; on a conflict
    /// (someone wrote in between) start again from a fresh read. Returns the stored Service and
    /// whether it changed.
    pub async fn update_service(
        &self,
        ns: &str,
        name: &str,
        edit: impl Fn(&mut Service) -> anyhow::Result<()>,
    ) -> anyhow::Result<(Service, bool)> {
        let api = self.services(ns);
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        for _ in 0..20 {
            let current = api
                .get(name)
                .await
                .map_err(|e| anyhow::anyhow!("{}", ClientError::from(e)))?;
            let mut next = current.clone();
            next.status = None;
            edit(&mut next)?;
            if next.spec == current.spec
                && next.metadata.labels == current.metadata.labels
                && next.metadata.annotations == current.metadata.annotations
            {
                return Ok((current, false));
            }
            match api
                .replace(name, &params, &next)
                .await
                .map_err(ClientError::from)
            {
                Ok(stored) => return Ok((stored, true)),
                Err(e) if e.conflict() => continue,
                Err(e) => return Err(anyhow::anyhow!("{e}")),
            }
        }
        anyhow::bail!("service {name:?}: it kept changing under 20 attempts to update it")
    }

    /// Local mode's own status (runtime, addresses, instances).
    pub async fn status(&self) -> Result<Value, ClientError> {
        let req = http::Request::get(crate::server::STATUS_PATH)
            .body(Vec::new())
            .map_err(|e| ClientError::Other(e.to_string()))?;
        let text = self.kube.request_text(req).await?;
        serde_json::from_str(&text).map_err(|e| ClientError::Other(e.to_string()))
    }
}
