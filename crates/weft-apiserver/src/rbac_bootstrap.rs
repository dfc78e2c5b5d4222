//! The bootstrap RBAC policy written at every start, as kube-apiserver's
//! `rbac/bootstrap-roles` post-start hook writes it: missing ClusterRoles and
//! ClusterRoleBindings made, existing ones reconciled (`weft_rbac::bootstrap`: what they lack
//! added, what users added kept, `autoupdate: "false"` ones left alone).

use anyhow::{Context, Result};
use serde_json::Value;
use weft_api::kinds;
use weft_rbac::bootstrap::{self, Reconcile};
use weft_store::Key;

use crate::rest::{Api, Target};

/// Writes the bootstrap policy (as the server itself: `system:masters`).
pub async fn ensure(api: &Api) -> Result<()> {
    type ReconcileFn = fn(Option<&Value>, &Value) -> Reconcile;
    let roles = bootstrap::cluster_roles().into_iter().map(|r| ("clusterroles", r));
    let bindings = bootstrap::cluster_role_bindings().into_iter().map(|b| ("clusterrolebindings", b));
    for (plural, expected) in roles.chain(bindings) {
        let reconcile: ReconcileFn = if plural == "clusterroles" {
            bootstrap::reconcile_cluster_role
        } else {
            bootstrap::reconcile_cluster_role_binding
        };
        let kind = kinds::by_path(weft_rbac::GROUP, "v1", plural).context("the RBAC kinds are served")?;
        let name = expected.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
        let existing = api.store.get(&Key::new(&kind.resource_key(), "", &name));
        let at = |named: bool| Target { kind, namespace: None, name: named.then(|| name.clone()), sub: None };
        let body = |v: &Value| serde_json::to_vec(v).unwrap_or_default();
        let failed = |what: &str, e: crate::status::ApiError| anyhow::anyhow!("{what} {plural}/{name}: {}", e.message);
        match reconcile(existing.as_deref(), &expected) {
            Reconcile::Keep => {}
            Reconcile::Create(v) => {
                api.create(&at(false), &body(&v), Default::default()).await.map_err(|e| failed("creating", e))?;
            }
            Reconcile::Update(v) => {
                api.update(&at(true), &body(&v), Default::default()).await.map_err(|e| failed("updating", e))?;
            }
            Reconcile::Recreate(v) => {
                api.delete(&at(true), b"", Default::default()).await.map_err(|e| failed("deleting", e))?;
                api.create(&at(false), &body(&v), Default::default()).await.map_err(|e| failed("creating", e))?;
            }
        }
    }
    Ok(())
}
