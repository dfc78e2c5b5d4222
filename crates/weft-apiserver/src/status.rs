//! Errors as kube-apiserver returns them: a `metav1.Status` with the right code, reason and causes.

use serde_json::{Value, json};
use weft_api::{FieldError, ObjectError};
use weft_store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError { code, reason, message: message.into(), details: None }
    }
    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", msg)
    }
    pub fn not_found(resource: &str, name: &str) -> Self {
        let mut e = Self::new(404, "NotFound", format!("{resource} {name:?} not found"));
        e.details = Some(json!({"name": name, "kind": resource}));
        e
    }
    pub fn method_not_allowed(msg: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", msg)
    }
    pub fn internal(msg: impl Into<String>) -> Self {
        Self::new(500, "InternalError", msg)
    }
    pub fn invalid(kind: &str, name: &str, causes: &[FieldError]) -> Self {
        let e = ObjectError::Invalid { kind: kind.into(), name: name.into(), causes: causes.to_vec() };
        let causes: Vec<Value> =
            causes.iter().map(|c| json!({"reason": c.reason.cause(), "message": c.body(), "field": c.field})).collect();
        ApiError {
            code: 422,
            reason: "Invalid",
            message: e.to_string(),
            details: Some(json!({"name": name, "kind": kind, "causes": causes})),
        }
    }
    /// Maps a store error for `resource`/`name` the way kube-apiserver words them.
    pub fn from_store(e: StoreError, resource: &str, name: &str) -> Self {
        match e {
            StoreError::AlreadyExists { .. } => {
                let mut e = Self::new(409, "AlreadyExists", format!("{resource} {name:?} already exists"));
                e.details = Some(json!({"name": name, "kind": resource}));
                e
            }
            StoreError::NotFound { .. } => Self::not_found(resource, name),
            StoreError::Conflict { .. } => {
                let mut e = Self::new(
                    409,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on {resource} {name:?}: the object has been modified; please apply your changes to the latest version and try again"
                    ),
                );
                e.details = Some(json!({"name": name, "kind": resource}));
                e
            }
            StoreError::Gone { requested, oldest } => {
                Self::new(410, "Expired", format!("too old resource version: {requested} ({oldest})"))
            }
            StoreError::TooLarge { requested, current } => {
                let mut e =
                    Self::new(504, "Timeout", format!("Too large resource version: {requested}, current: {current}"));
                e.details = Some(
                    json!({"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}], "retryAfterSeconds": 1}),
                );
                e
            }
            StoreError::TooBig { size, .. } => Self::new(
                413,
                "RequestEntityTooLarge",
                format!(
                    "{resource} {name:?} would be {size} bytes: the largest object is {} bytes; make it smaller (move data to several objects)",
                    weft_store::MAX_OBJECT_BYTES
                ),
            ),
            other => Self::internal(other.to_string()),
        }
    }

    pub fn to_status(&self) -> Value {
        let mut v = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        });
        if let Some(d) = &self.details {
            v["details"] = d.clone();
        }
        v
    }
}

impl From<ObjectError> for ApiError {
    fn from(e: ObjectError) -> Self {
        match e {
            ObjectError::BadRequest(m) => ApiError::bad_request(m),
            ObjectError::Invalid { kind, name, causes } => ApiError::invalid(&kind, &name, &causes),
        }
    }
}
