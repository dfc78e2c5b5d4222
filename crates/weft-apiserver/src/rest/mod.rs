//! The REST verbs over the store: get, list, watch, create, update, patch, delete, and the
//! status, scale and log subresources, with kube-apiserver's semantics for each.
//!
//! One room per job: `verbs` (get, create, update, patch), `delete` (the verb, deletecollection,
//! graceful deletion, finalizers, namespaces through Terminating), `gc` (what a removal sets off:
//! the owner-reference cascade, foreground and orphan propagation, a namespace's end), `list`
//! (selectors and pages), `watch` (streaming),
//! `services` (ClusterIP and node port allocation, held by a reservation until the write
//! commits), `external_ips` (the externalIPs policy), `subresources` (scale and log) and
//! `write_opts` (dryRun, fieldValidation, depth).

mod apply;
mod delete;
mod external_ips;
mod gc;
mod list;
mod services;
mod subresources;
pub use subresources::log_options;
mod verbs;
mod watch;
mod write_opts;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use weft_api::convert;
use weft_api::kinds::Kind;
use weft_store::{Key, Store, StoreError};

pub use crate::alloc::Allocators;
use crate::pod_logs::PodLogs;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::ApiError;
pub use apply::{is_apply, with_manager_opts};
pub use write_opts::{MAX_DEPTH, WriteOpts};

pub struct Api {
    pub store: Store,
    pub alloc: Mutex<Allocators>,
    /// Where pods' container logs come from (the lab's kubelets, in a lab).
    pod_logs: Arc<dyn PodLogs>,
    /// The service-account signing key and the cluster CA, set once at start
    /// (`crate::service_accounts`).
    pub accounts: std::sync::OnceLock<crate::service_accounts::Accounts>,
    /// The RBAC objects indexed for authorization, rebuilt when they change (`crate::authz`).
    pub rbac: crate::authz::Rbac,
}

/// What a request addresses.
pub struct Target {
    pub kind: &'static Kind,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
}

pub type Query = HashMap<String, String>;

impl Api {
    pub fn new(store: Store, alloc: Allocators, pod_logs: Arc<dyn PodLogs>) -> Api {
        Api { store, alloc: Mutex::new(alloc), pod_logs, accounts: Default::default(), rbac: Default::default() }
    }
}

pub fn now_rfc3339() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn store_key(kind: &Kind, ns: &str, name: &str) -> Key {
    Key::new(&kind.resource_key(), if kind.namespaced { ns } else { "" }, name)
}

/// Converts a stored object to the version the request addressed.
fn outgoing(kind: &Kind, v: &Value) -> Value {
    convert::to_served(kind, v.clone())
}

fn incoming(kind: &Kind, v: Value) -> Value {
    convert::to_stored(kind, v)
}

fn wants_table(accept: &str) -> bool {
    accept.contains("as=Table")
}

fn obj_name(v: &Value) -> String {
    v.pointer("/metadata/name").and_then(|n| n.as_str()).unwrap_or("").to_string()
}

fn rv_of(v: &Value) -> Option<u64> {
    v.pointer("/metadata/resourceVersion").and_then(|r| r.as_str()).and_then(|r| r.parse().ok())
}

/// kube-apiserver's 409 for a write whose precondition (resourceVersion, uid) no longer holds.
fn conflict(plural: &str, name: &str) -> ApiError {
    ApiError::from_store(
        StoreError::Conflict { resource: String::new(), key: String::new(), expected: 0, actual: 0 },
        plural,
        name,
    )
}

fn selectors(q: &Query) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let ls = LabelSelector::parse(q.get("labelSelector").map(|s| s.as_str()).unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
    let fs = FieldSelector::parse(q.get("fieldSelector").map(|s| s.as_str()).unwrap_or(""))
        .map_err(ApiError::bad_request)?;
    Ok((ls, fs))
}

/// [`selectors`] with the field labels `kind` has in kube-apiserver (Events': only those it
/// supports, events.k8s.io's mapped onto the stored core/v1 Event).
fn kind_selectors(kind: &Kind, q: &Query) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let (ls, _) = selectors(q)?;
    let fs = FieldSelector::parse_for(kind, q.get("fieldSelector").map(|s| s.as_str()).unwrap_or(""))
        .map_err(ApiError::bad_request)?;
    Ok((ls, fs))
}
