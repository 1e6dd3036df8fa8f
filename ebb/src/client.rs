//! The CLI's side of the local API (see `server`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::server::{Endpoint, read_endpoint};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server refused; one message per line (field errors, not found, ...).
    #[error("{}", .0.join("\n"))]
    Refused(Vec<String>, StatusCode),
    #[error("cannot reach Ebb at {0}: {1} (is `ebb local up` running?)")]
    Unreachable(SocketAddr, String),
    #[error("{0}")]
    Other(String),
}

impl ClientError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::Refused(_, s) if *s == StatusCode::NOT_FOUND)
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    pub endpoint: Endpoint,
    http: HttpClient<HttpConnector, Full<Bytes>>,
}

/// `$EBB_STATE`, else `$XDG_DATA_HOME/ebb`, else `~/.local/share/ebb`.
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("ebb");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join(".local/share/ebb")
}

impl Client {
    pub fn for_state(state: &Path) -> anyhow::Result<Client> {
        Ok(Client {
            endpoint: read_endpoint(state)?,
            http: HttpClient::builder(TokioExecutor::new()).build_http(),
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        let uri = format!("http://{}{path}", self.endpoint.api);
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", self.endpoint.token),
            )
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ClientError::Other(e.to_string()))?;
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|e| ClientError::Unreachable(self.endpoint.api, e.to_string()))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Other(e.to_string()))?
            .to_bytes();
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            Ok(v)
        } else {
            let errors = v["errors"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|e| e.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_else(|| vec![format!("{status}")]);
            Err(ClientError::Refused(errors, status))
        }
    }

    pub async fn apply(
        &self,
        objs: Vec<Value>,
    ) -> Result<Vec<crate::server::Applied>, ClientError> {
        let v = self
            .call(Method::POST, "/v1/apply", Some(Value::Array(objs)))
            .await?;
        serde_json::from_value(v).map_err(|e| ClientError::Other(e.to_string()))
    }

    pub async fn get(&self, kind: &str, ns: &str, name: &str) -> Result<Value, ClientError> {
        self.call(Method::GET, &format!("/v1/{kind}/{ns}/{name}"), None)
            .await
    }

    pub async fn list(&self, kind: &str, ns: Option<&str>) -> Result<Vec<Value>, ClientError> {
        let q = ns.map(|n| format!("?namespace={n}")).unwrap_or_default();
        let v = self
            .call(Method::GET, &format!("/v1/{kind}{q}"), None)
            .await?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    pub async fn delete(
        &self,
        kind: &str,
        ns: &str,
        name: &str,
    ) -> Result<Vec<Value>, ClientError> {
        let v = self
            .call(Method::DELETE, &format!("/v1/{kind}/{ns}/{name}"), None)
            .await?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    pub async fn status(&self) -> Result<Value, ClientError> {
        self.call(Method::GET, "/v1/status", None).await
    }
}
