//! What a write of a Role, ClusterRole, RoleBinding or ClusterRoleBinding must pass besides
//! validation, as kube-apiserver's RBAC storage has it (pkg/registry/rbac/*/policybased): a
//! binding's roleRef never changes, and no user grants what it does not hold itself, unless it
//! is in `system:masters` or may `escalate` the role (for roles) or `bind` it (for bindings).
//! The writer is the user of the request being served ([`crate::auth::Request::current`]).

use serde_json::Value;
use weft_api::kinds::Kind;
use weft_rbac::escalation::{bind_request, confirm_no_escalation, escalate_request, full_authority};
use weft_rbac::index::Wording;

use crate::authz::forbidden_status;
use crate::rest::Api;
use crate::status::ApiError;

/// Checks a write of `new` (already admitted) over `old` (None for a create) in namespace `ns`.
pub fn check(api: &Api, kind: &Kind, ns: &str, new: &Value, old: Option<&Value>) -> Result<(), ApiError> {
    if kind.group != weft_rbac::GROUP {
        return Ok(());
    }
    let name = new.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
    if let Some(old) = old {
        let errs = weft_api::rbac::validate_update(kind, old, new);
        if !errs.is_empty() {
            return Err(ApiError::invalid(kind.kind, name, &errs));
        }
        if only_gc_fields_differ(old, new) {
            return Ok(());
        }
    }
    let user = crate::auth::Request::current().user;
    if user.groups.iter().any(|g| g == weft_rbac::SYSTEM_MASTERS) {
        return Ok(());
    }
    let ix = api.rbac.index(&api.store);
    let u = weft_rbac::User { name: &user.name, groups: &user.groups };
    let ns = if kind.namespaced { ns } else { "" };
    let refuse = |msg: String| forbidden_status(weft_rbac::GROUP, kind.plural, name, msg);
    let rules = |v: &Value, field: &str| -> Vec<k8s_openapi::api::rbac::v1::PolicyRule> {
        v.get(field).cloned().and_then(|r| serde_json::from_value(r).ok()).unwrap_or_default()
    };
    match kind.kind {
        "Role" | "ClusterRole" => {
            // `escalate` on the role (its name only on an update: a create names none).
            let asked = escalate_request(kind.plural, ns, if old.is_some() { name } else { "" });
            if ix.authorize(&u, &asked).allowed {
                return Ok(());
            }
            confirm_no_escalation(&ix, &u, ns, &rules(new, "rules")).map_err(refuse)?;
            let agg = new.get("aggregationRule").filter(|a| !a.is_null());
            let agg_changed = agg.is_some() && old.is_none_or(|o| o.get("aggregationRule") != agg);
            if kind.kind == "ClusterRole"
                && agg_changed
                && confirm_no_escalation(&ix, &u, "", &full_authority()).is_err()
            {
                return Err(refuse("must have cluster-admin privileges to use the aggregationRule".into()));
            }
            Ok(())
        }
        "RoleBinding" | "ClusterRoleBinding" => {
            let s = |p: &str| new.pointer(p).and_then(Value::as_str).unwrap_or("").to_string();
            let (role_kind, role_name) = (s("/roleRef/kind"), s("/roleRef/name"));
            if let Some(asked) = bind_request(&role_kind, &role_name, ns)
                && ix.authorize(&u, &asked).allowed
            {
                return Ok(());
            }
            let granted = ix.role_ref_rules(&role_kind, &role_name, ns, Wording::Storage).map_err(refuse)?;
            confirm_no_escalation(&ix, &u, ns, &granted).map_err(refuse)
        }
        _ => Ok(()),
    }
}

/// Whether an update changes only what the garbage collector writes (upstream's
/// `IsOnlyMutatingGCFields`): owner references and finalizers; such updates are not checked.
fn only_gc_fields_differ(old: &Value, new: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(md) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            for k in [
                "ownerReferences",
                "finalizers",
                "selfLink",
                "managedFields",
                "resourceVersion",
                "uid",
                "creationTimestamp",
                "generation",
            ] {
                md.remove(k);
            }
        }
        v
    };
    strip(old) == strip(new)
}
