//! Field errors as kube-apiserver reports them (`metav1.StatusCause`), with a fix in the message.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Invalid,
    Required,
    Duplicate,
    NotSupported,
    Forbidden,
}

impl Reason {
    /// The `reason` of a `StatusCause`.
    pub fn cause(&self) -> &'static str {
        match self {
            Reason::Invalid => "FieldValueInvalid",
            Reason::Required => "FieldValueRequired",
            Reason::Duplicate => "FieldValueDuplicate",
            Reason::NotSupported => "FieldValueNotSupported",
            Reason::Forbidden => "FieldValueForbidden",
        }
    }
}

/// One problem with one field of an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The field's path, as kube-apiserver writes it: `spec.ports[0].port`.
    pub field: String,
    pub reason: Reason,
    /// The offending value, already rendered (`0`, `"http"`).
    pub value: Option<String>,
    /// What is wrong and how to fix it.
    pub detail: String,
}

impl FieldError {
    pub fn invalid(field: impl Into<String>, value: impl fmt::Display, detail: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            reason: Reason::Invalid,
            value: Some(value.to_string()),
            detail: detail.into(),
        }
    }
    pub fn invalid_str(field: impl Into<String>, value: &str, detail: impl Into<String>) -> Self {
        Self::invalid(field, format!("{value:?}"), detail)
    }
    pub fn required(field: impl Into<String>, detail: impl Into<String>) -> Self {
        FieldError { field: field.into(), reason: Reason::Required, value: None, detail: detail.into() }
    }
    pub fn duplicate(field: impl Into<String>, value: impl fmt::Display) -> Self {
        FieldError {
            field: field.into(),
            reason: Reason::Duplicate,
            value: Some(value.to_string()),
            detail: String::new(),
        }
    }
    pub fn not_supported(field: impl Into<String>, value: &str, supported: &[&str]) -> Self {
        let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        FieldError {
            field: field.into(),
            reason: Reason::NotSupported,
            value: Some(format!("{value:?}")),
            detail: format!("supported values: {}", list.join(", ")),
        }
    }
    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        FieldError { field: field.into(), reason: Reason::Forbidden, value: None, detail: detail.into() }
    }

    /// The cause's message without the field (kube-apiserver's `ErrorBody`).
    pub fn body(&self) -> String {
        let head = match self.reason {
            Reason::Invalid => "Invalid value",
            Reason::Required => "Required value",
            Reason::Duplicate => "Duplicate value",
            Reason::NotSupported => "Unsupported value",
            Reason::Forbidden => "Forbidden",
        };
        let mut s = head.to_string();
        if let Some(v) = &self.value {
            s.push_str(": ");
            s.push_str(v);
        }
        if !self.detail.is_empty() {
            s.push_str(": ");
            s.push_str(&self.detail);
        }
        s
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.body())
    }
}

/// Why an object was refused before it reached the store.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// The body is not a well-formed object of the kind (HTTP 400).
    #[error("{0}")]
    BadRequest(String),
    /// The object is well-formed but breaks the API's rules (HTTP 422).
    #[error("{kind} {name:?} is invalid: {}", join(.causes))]
    Invalid { kind: String, name: String, causes: Vec<FieldError> },
}

fn join(causes: &[FieldError]) -> String {
    if causes.len() == 1 {
        causes[0].to_string()
    } else {
        format!("[{}]", causes.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(", "))
    }
}
