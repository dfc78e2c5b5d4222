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

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use serde_json::{Map, Value, json};
use weft_api::kinds;

mod paths;
mod schemas;
mod served;
#[cfg(test)]
mod tests;
mod types;
mod v2;

pub use paths::gv_path;
pub use schemas::name_of as definition_name;
pub use served::Served;

/// Every definition, in the v3 form (`$ref`s to `#/components/schemas/...`, the
/// `x-kubernetes-*` extensions), by name (`io.k8s.api.core.v1.Service`).
pub fn v3_schemas() -> &'static Map<String, Value> {
    static SCHEMAS: OnceLock<Map<String, Value>> = OnceLock::new();
    SCHEMAS.get_or_init(schemas::build)
}

struct Document {
    value: Value,
    served: Served,
}

/// The v3 document of every served group-version, by [`gv_path`].
fn v3_documents() -> &'static BTreeMap<String, Document> {
    static DOCS: OnceLock<BTreeMap<String, Document>> = OnceLock::new();
    DOCS.get_or_init(|| {
        kinds::group_versions()
            .into_iter()
            .filter_map(|(g, v, _)| {
                let value = build_v3(g, v)?;
                Some((gv_path(g, v), Document { served: Served::of(&value), value }))
            })
            .collect()
    })
}

/// A group-version's v3 document: its paths and the definitions they reach.
fn build_v3(group: &str, version: &str) -> Option<Value> {
    let paths = paths::paths(group, version)?;
    let mut schemas = Map::new();
    let mut todo = vec![];
    schemas::refs(&Value::Object(paths.clone()), &mut todo);
    while let Some(r) = todo.pop() {
        let Some(name) = r.strip_prefix(schemas::V3_PREFIX) else { continue };
        if schemas.contains_key(name) {
            continue;
        }
        if let Some(def) = v3_schemas().get(name) {
            schemas::refs(def, &mut todo);
            schemas.insert(name.to_string(), def.clone());
        }
    }
    schemas.sort_keys();
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "unversioned"},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"BearerToken": {"type": "apiKey", "description": "Bearer Token authentication", "name": "authorization", "in": "header"}},
        },
    }))
}

/// The v3 document of a group-version (`""`, `"v1"`; `"apps"`, `"v1"`), if it is served.
pub fn v3_document(group: &str, version: &str) -> Option<&'static Value> {
    v3_documents().get(&gv_path(group, version)).map(|d| &d.value)
}

/// The served v3 document at `/openapi/v3/{path}` (`api/v1`, `apis/apps/v1`).
pub fn v3_served(path: &str) -> Option<&'static Served> {
    v3_documents().get(path).map(|d| &d.served)
}

/// `/openapi/v3`: every group-version's document, by a URL carrying its content hash.
pub fn v3_root() -> &'static Served {
    static ROOT: OnceLock<Served> = OnceLock::new();
    ROOT.get_or_init(|| {
        let paths: Map<String, Value> = v3_documents()
            .iter()
            .map(|(p, d)| (p.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", d.served.hash)})))
            .collect();
        Served::of(&json!({"paths": paths}))
    })
}

/// `/openapi/v2`: every path and definition in one Swagger 2.0 document.
pub fn v2_document() -> &'static Value {
    static V2: OnceLock<Value> = OnceLock::new();
    V2.get_or_init(|| {
        let mut paths = Map::new();
        let mut seen = BTreeSet::new();
        for (g, v, _) in kinds::group_versions() {
            for (p, item) in paths::paths(g, v).into_iter().flatten() {
                if seen.insert(p.clone()) {
                    paths.insert(p, v2::path_item(&item));
                }
            }
        }
        let definitions: Map<String, Value> = v3_schemas().iter().map(|(k, d)| (k.clone(), v2::schema(d))).collect();
        json!({
            "swagger": "2.0",
            "info": {"title": "Kubernetes", "version": "unversioned"},
            "paths": paths,
            "definitions": definitions,
            "securityDefinitions": {"BearerToken": {"type": "apiKey", "description": "Bearer Token authentication", "name": "authorization", "in": "header"}},
            "security": [{"BearerToken": []}],
        })
    })
}

/// [`v2_document`] as served.
pub fn v2_served() -> &'static Served {
    static V2: OnceLock<Served> = OnceLock::new();
    V2.get_or_init(|| Served::of(v2_document()))
}
