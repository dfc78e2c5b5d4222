//! Server-side apply as kube-apiserver does it (sigs.k8s.io/structured-merge-diff v4 and
//! k8s.io/apimachinery's managedfields), over `serde_json::Value` objects. Pure: objects and
//! managedFields in, merged object, managedFields or conflicts out; no I/O, no clock (callers
//! pass `now`).
//!
//! - [`schema`]: the type model (which lists are sets or maps keyed by which fields, which maps
//!   and structs are atomic), built from OpenAPI v3 schemas as kube-openapi's `schemaconv` does.
//! - [`path`] and [`set`]: field paths and sets of them, with the `FieldsV1` JSON encoding.
//! - [`typed`]: the walks over an object and its type: its field set, the difference of two
//!   objects, merging an applied configuration, removing fields.
//! - [`managed`]: `metadata.managedFields` entries, decoded and encoded as upstream does.
//! - [`updater`]: Update (who changed what) and Apply (merge, prune, conflicts) over them.

pub mod managed;
pub mod path;
pub mod schema;
pub mod set;
pub mod typed;
pub mod updater;
mod value;

pub use managed::{Id, Managed, Operation};
pub use path::{Path, PathElement};
pub use schema::{Schema, TypeRef};
pub use set::Set;
pub use updater::{ApplyError, Conflict, Updater};
