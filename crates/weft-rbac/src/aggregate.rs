//! ClusterRole aggregation (kube-controller-manager's clusterrole-aggregation controller): the
//! rules of a ClusterRole with an `aggregationRule` are the union of the rules of the
//! ClusterRoles its `clusterRoleSelectors` select, in selector order, each selector's roles by
//! name, each rule once.

use std::collections::HashSet;
use std::sync::Arc;

use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};

use crate::rules::list;

/// A rule with nil and empty lists made the same (Go's semantic equality).
fn key(r: &PolicyRule) -> [Vec<String>; 5] {
    [
        r.verbs.clone(),
        list(&r.api_groups).to_vec(),
        list(&r.resources).to_vec(),
        list(&r.resource_names).to_vec(),
        list(&r.non_resource_urls).to_vec(),
    ]
}

/// The rules `role` aggregates from `all` (which may include it: it never takes its own);
/// `None` when it has no aggregationRule.
pub fn aggregated_rules(role: &ClusterRole, all: &[Arc<ClusterRole>]) -> Option<Vec<PolicyRule>> {
    let rule = role.aggregation_rule.as_ref()?;
    let mut out: Vec<PolicyRule> = vec![];
    let mut seen: HashSet<[Vec<String>; 5]> = HashSet::new();
    for selector in rule.cluster_role_selectors.iter().flatten() {
        let mut selected: Vec<&Arc<ClusterRole>> = all
            .iter()
            .filter(|r| r.metadata.name != role.metadata.name)
            .filter(|r| {
                let labels = r.metadata.labels.clone().unwrap_or_default();
                weft_k8s::selectors::label_selector_matches(Some(selector), &labels)
            })
            .collect();
        selected.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        for r in selected {
            for rule in r.rules.iter().flatten() {
                if seen.insert(key(rule)) {
                    out.push(rule.clone());
                }
            }
        }
    }
    Some(out)
}

/// Whether `role`'s rules differ from `rules` (nil and empty lists counted the same).
pub fn differs(role: &ClusterRole, rules: &[PolicyRule]) -> bool {
    let now = role.rules.as_deref().unwrap_or_default();
    now.len() != rules.len() || now.iter().zip(rules).any(|(a, b)| key(a) != key(b))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn role(v: serde_json::Value) -> Arc<ClusterRole> {
        Arc::new(serde_json::from_value(v).unwrap())
    }

    #[test]
    fn aggregates_the_selected_roles_rules_once_each() {
        let admin = role(json!({"metadata": {"name": "admin"}, "aggregationRule": {"clusterRoleSelectors": [
            {"matchLabels": {"agg": "admin"}}, {"matchExpressions": [{"key": "extra", "operator": "Exists"}]}]}}));
        let all = vec![
            admin.clone(),
            role(json!({"metadata": {"name": "b", "labels": {"agg": "admin"}},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]})),
            role(json!({"metadata": {"name": "a", "labels": {"agg": "admin"}},
                "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
                          {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"], "resourceNames": []}]})),
            role(json!({"metadata": {"name": "c", "labels": {"extra": ""}},
                "rules": [{"nonResourceURLs": ["/x"], "verbs": ["get"]}]})),
            role(json!({"metadata": {"name": "d", "labels": {"agg": "view"}},
                "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]})),
        ];
        let rules = aggregated_rules(&admin, &all).unwrap();
        let got: Vec<String> = rules.iter().map(crate::rules::compact_string).collect();
        assert_eq!(
            got,
            [
                r#"{APIGroups:[""], Resources:["secrets"], Verbs:["get"]}"#,
                r#"{APIGroups:[""], Resources:["pods"], Verbs:["get"]}"#,
                r#"{NonResourceURLs:["/x"], Verbs:["get"]}"#,
            ]
        );
        assert!(differs(&admin, &rules));
        let mut done = (*admin).clone();
        done.rules = Some(rules.clone());
        assert!(!differs(&done, &rules));
        // No aggregationRule: nothing to do; an empty one aggregates nothing.
        assert!(aggregated_rules(&all[1], &all).is_none());
        let empty = role(json!({"metadata": {"name": "e"}, "aggregationRule": {}}));
        assert_eq!(aggregated_rules(&empty, &all), Some(vec![]));
        assert!(!differs(&empty, &[]));
    }

    #[test]
    fn a_role_that_selects_itself_does_not_take_its_own_rules() {
        let me = role(json!({"metadata": {"name": "me", "labels": {"a": "b"}},
            "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"a": "b"}}]},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]}]}));
        assert_eq!(aggregated_rules(&me, std::slice::from_ref(&me)), Some(vec![]));
    }
}
