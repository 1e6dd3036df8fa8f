//! Errors as the Kubernetes API reports them: a `Status` object with reason, code, message
//! and `details.causes` (one per field), so clients print what kubectl prints against a
//! cluster (`Error from server (Invalid): ...`).

use http::StatusCode;
use serde_json::{Value, json};

use crate::catalog::Resource;

/// One field's problem in a `Status`'s details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// `FieldValueInvalid`, `FieldValueRequired`, `FieldValueDuplicate`, `FieldValueTooLong`, `FieldValueNotSupported`, ...
    pub reason: &'static str,
    pub field: String,
    pub message: String,
}

/// An API error: HTTP status, Kubernetes reason, message and causes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: StatusCode,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Box<Details>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Details {
    pub name: String,
    pub group: String,
    pub kind: String,
    pub causes: Vec<Cause>,
}

impl ApiError {
    pub fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    pub fn not_found(r: &Resource, name: &str) -> ApiError {
        let mut e = ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{} {name:?} not found", r.qualified()),
        );
        e.details = Some(Box::new(r.details(name)));
        e
    }

    pub fn already_exists(r: &Resource, name: &str) -> ApiError {
        let mut e = ApiError::new(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{} {name:?} already exists", r.qualified()),
        );
        e.details = Some(Box::new(r.details(name)));
        e
    }

    pub fn conflict(r: &Resource, name: &str, why: &str) -> ApiError {
        let mut e = ApiError::new(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} {name:?}: {why}",
                r.qualified()
            ),
        );
        e.details = Some(Box::new(r.details(name)));
        e
    }

    /// 422: the object breaks rules, each a cause naming its field.
    pub fn invalid(r: &Resource, name: &str, causes: Vec<Cause>) -> ApiError {
        let list: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        let mut details = r.details(name);
        // An Invalid error names the kind (a NotFound, the resource), as the API server does.
        details.kind = r.kind.clone();
        details.causes = causes;
        ApiError {
            code: StatusCode::UNPROCESSABLE_ENTITY,
            reason: "Invalid",
            message: format!(
                "{} {name:?} is invalid: {}",
                r.qualified_kind(),
                if list.len() == 1 {
                    list[0].clone()
                } else {
                    format!("[{}]", list.join(", "))
                }
            ),
            details: Some(Box::new(details)),
        }
    }

    pub fn method_not_allowed(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", message)
    }

    pub fn unsupported_media(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            message,
        )
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
    }

    pub fn gone(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::GONE, "Expired", message)
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut v = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code.as_u16(),
        });
        if let Some(d) = &self.details {
            let mut details = json!({"name": d.name, "kind": d.kind});
            if !d.group.is_empty() {
                details["group"] = json!(d.group);
            }
            if !d.causes.is_empty() {
                details["causes"] = d
                    .causes
                    .iter()
                    .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                    .collect();
            }
            v["details"] = details;
        }
        v
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.code.as_u16(),
            self.reason,
            self.message
        )
    }
}

/// A store error on resource `r`, object `name`, as the API reports it.
pub fn from_store(r: &Resource, name: &str, e: store::StoreError) -> ApiError {
    use store::StoreError as S;
    match e {
        S::NotFound { .. } => ApiError::not_found(r, name),
        S::AlreadyExists { .. } => ApiError::already_exists(r, name),
        S::Conflict { .. } => ApiError::conflict(
            r,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        ),
        S::Gone { requested, oldest } => {
            ApiError::gone(format!("too old resource version: {requested} ({oldest})"))
        }
        S::Damaged { .. } => ApiError::internal(e.to_string()),
        S::Invalid(m) => ApiError::bad_request(m),
        other => ApiError::internal(other.to_string()),
    }
}
