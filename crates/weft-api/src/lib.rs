//! The Kubernetes kinds weft serves and everything about them that needs no I/O: the kind
//! registry (paths, short names), admission (defaulting and validation with field errors that say
//! how to fix them), version conversion, server-side table printing and manifest parsing.
//!
//! Architecture invariant: pure functions over JSON and k8s-openapi types; no I/O, no clock
//! reads (callers pass `now`).

pub mod convert;
mod env;
pub mod errors;
pub mod kinds;
pub mod objects;
pub mod rbac;
pub mod table;
pub mod validate;
pub mod yaml;

pub use errors::{FieldError, ObjectError, Reason};
pub use k8s_openapi;
pub use kinds::Kind;
