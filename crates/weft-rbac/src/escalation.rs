//! RBAC's guard against privilege escalation (upstream's `ConfirmNoEscalation`): a user may
//! write a Role or ClusterRole only with rules it holds itself, and bind only a role whose rules
//! it holds; otherwise it needs the `escalate` or `bind` verb on the role (which the caller asks
//! the authorizer about, see [`escalate_request`] and [`bind_request`]).

use k8s_openapi::api::rbac::v1::PolicyRule;

use crate::index::{Index, User, Wording};
use crate::quote::{quote, quote_list};
use crate::rules::{Request, compact, compact_string, covers};

/// `Ok` when the rules `user` holds in `namespace` (empty: cluster-wide ones only) cover
/// `rules`; else upstream's message listing what it lacks.
pub fn confirm_no_escalation(index: &Index, user: &User, namespace: &str, rules: &[PolicyRule]) -> Result<(), String> {
    let (owned, errors) = index.rules_for(user, namespace, Wording::Storage);
    let (ok, missing) = covers(&owned, rules);
    if ok {
        return Ok(());
    }
    let mut lines: Vec<String> = compact(&missing).iter().map(compact_string).collect();
    lines.sort();
    lines.dedup();
    let mut msg = format!(
        "user {} (groups={}) is attempting to grant RBAC permissions not currently held:\n{}",
        quote(user.name),
        quote_list(user.groups),
        lines.join("\n")
    );
    if !errors.is_empty() {
        msg.push_str(&format!("; resolution errors: [{}]", crate::quote::aggregate(&errors)));
    }
    Err(msg)
}

/// The request a user needs allowed to write a role it does not hold the rules of: `escalate`
/// on it (upstream's `RoleEscalationAuthorized`). `resource` is `roles` or `clusterroles`.
pub fn escalate_request<'a>(resource: &'a str, namespace: &'a str, name: &'a str) -> Request<'a> {
    Request {
        verb: "escalate",
        resource_request: true,
        api_group: crate::GROUP,
        resource,
        namespace,
        name,
        ..Default::default()
    }
}

/// The request a user needs allowed to bind a role whose rules it does not hold: `bind` on it,
/// in the binding's namespace (upstream's `BindingAuthorized`). `None` for an unknown kind.
pub fn bind_request<'a>(role_kind: &str, role_name: &'a str, namespace: &'a str) -> Option<Request<'a>> {
    let resource = match role_kind {
        "ClusterRole" => "clusterroles",
        "Role" => "roles",
        _ => return None,
    };
    Some(Request {
        verb: "bind",
        resource_request: true,
        api_group: crate::GROUP,
        resource,
        namespace,
        name: role_name,
        ..Default::default()
    })
}

/// The rules that only a holder of every permission may write: an aggregationRule gathers
/// anything, so setting one needs `*` on everything (upstream's `fullAuthority`).
pub fn full_authority() -> Vec<PolicyRule> {
    vec![
        PolicyRule {
            api_groups: Some(vec!["*".into()]),
            resources: Some(vec!["*".into()]),
            verbs: vec!["*".into()],
            ..Default::default()
        },
        PolicyRule { non_resource_urls: Some(vec!["*".into()]), verbs: vec!["*".into()], ..Default::default() },
    ]
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn index() -> Index {
        let roles = [json!({"metadata": {"name": "r", "namespace": "x"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
                      {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"], "verbs": ["create"]}]})];
        let rbs = [
            json!({"metadata": {"name": "b", "namespace": "x"}, "roleRef": {"kind": "Role", "name": "r"},
            "subjects": [{"kind": "ServiceAccount", "name": "dev"}]}),
            json!({"metadata": {"name": "broken", "namespace": "x"}, "roleRef": {"kind": "ClusterRole", "name": "nope"},
            "subjects": [{"kind": "ServiceAccount", "name": "dev"}]}),
        ];
        Index::build(&roles, [], &rbs, [])
    }

    fn rules(v: serde_json::Value) -> Vec<PolicyRule> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_user_grants_only_what_it_holds() {
        let ix = index();
        let groups = vec!["system:serviceaccounts".to_string(), "system:serviceaccounts:x".into()];
        let u = User { name: "system:serviceaccount:x:dev", groups: &groups };
        let held = rules(json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"], "resourceNames": ["a"]}]));
        assert_eq!(confirm_no_escalation(&ix, &u, "x", &held), Ok(()));
        // Not in another namespace, nor more verbs.
        assert!(confirm_no_escalation(&ix, &u, "y", &held).is_err());
        let more = rules(json!([{"apiGroups": [""], "resources": ["pods", "secrets"], "verbs": ["get", "delete"]}]));
        assert_eq!(
            confirm_no_escalation(&ix, &u, "x", &more),
            Err("user \"system:serviceaccount:x:dev\" (groups=[\"system:serviceaccounts\" \"system:serviceaccounts:x\"]) \
                 is attempting to grant RBAC permissions not currently held:\n\
                 {APIGroups:[\"\"], Resources:[\"pods\"], Verbs:[\"delete\"]}\n\
                 {APIGroups:[\"\"], Resources:[\"secrets\"], Verbs:[\"get\" \"delete\"]}; \
                 resolution errors: [clusterroles.rbac.authorization.k8s.io \"nope\" not found]"
                .into())
        );
    }

    #[test]
    fn the_verbs_that_let_a_user_past_the_check() {
        let e = escalate_request("roles", "x", "r");
        assert_eq!(
            (e.verb, e.api_group, e.resource, e.namespace, e.name),
            ("escalate", crate::GROUP, "roles", "x", "r")
        );
        let b = bind_request("ClusterRole", "view", "x").unwrap();
        assert_eq!((b.verb, b.resource, b.namespace, b.name), ("bind", "clusterroles", "x", "view"));
        assert!(bind_request("Pod", "p", "x").is_none());
        assert_eq!(full_authority().len(), 2);
    }
}
