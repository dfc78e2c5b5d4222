//! kube-apiserver's OpenAPI documents for the kinds weft serves (`weft_api::kinds::ALL`).
//!
//! The schemas are k8s-openapi's (its `schemars` impls, definition names as kube-apiserver's),
//! completed with what kube-apiserver's generator adds: the `x-kubernetes-*` list, map and patch
//! extensions (read from the `.proto` files' markers), each kind's
//! `x-kubernetes-group-version-kind`, and the List kinds. The paths are the REST operations of
//! each served kind, with the query parameters clients look for (kubectl leaves field validation
//! to the server when PATCH takes `fieldValidation`).
//!
//! Everything is built once per process and handed out by reference; the served forms carry
//! their bytes and content hash ([`Served`]).

use std::sync::OnceLock;

use serde_json::{Map, Value};

mod schemas;
#[cfg(test)]
mod tests;
mod types;

pub use schemas::name_of as definition_name;

/// Every definition, in the v3 form (`$ref`s to `#/components/schemas/...`, the
/// `x-kubernetes-*` extensions), by name (`io.k8s.api.core.v1.Service`).
pub fn v3_schemas() -> &'static Map<String, Value> {
    static SCHEMAS: OnceLock<Map<String, Value>> = OnceLock::new();
    SCHEMAS.get_or_init(schemas::build)
}
