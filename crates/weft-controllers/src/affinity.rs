//! Which nodes a pod may go to by its `nodeSelector` and required node affinity, as
//! kube-scheduler's NodeAffinity filter decides (and the DaemonSet controller before it makes a
//! pod): terms are ORed, a term's expressions and fields ANDed, an empty term matches nothing.
//! Fields: `metadata.name` only (the one field Kubernetes allows), which is how DaemonSet pods
//! name their node.

use k8s_openapi::api::core::v1::{Node, NodeSelectorRequirement, NodeSelectorTerm, PodSpec};
use kube::ResourceExt;

/// The scheduler's words for a node this rules out.
pub const MISMATCH: &str = "node(s) didn't match Pod's node affinity/selector";

fn requirement(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        // Gt/Lt compare one integer value.
        "Gt" | "Lt" => {
            let (Some(v), [bound]) = (value.and_then(|v| v.parse::<i64>().ok()), values) else { return false };
            let Ok(b) = bound.parse::<i64>() else { return false };
            if r.operator == "Gt" { v > b } else { v < b }
        }
        _ => false,
    }
}

fn term(t: &NodeSelectorTerm, node: &Node) -> bool {
    let exprs = t.match_expressions.as_deref().unwrap_or_default();
    let fields = t.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let labels = node.labels();
    exprs.iter().all(|r| requirement(r, labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| r.key == "metadata.name" && requirement(r, Some(node.name_any().as_str())))
}

/// May a pod with this spec go to `node` by its nodeSelector and required node affinity?
pub fn node_matches(spec: &PodSpec, node: &Node) -> bool {
    let labels = node.labels();
    if !spec.node_selector.iter().flatten().all(|(k, v)| labels.get(k) == Some(v)) {
        return false;
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| n.required_during_scheduling_ignored_during_execution.as_ref());
    match required {
        None => true,
        Some(sel) => sel.node_selector_terms.iter().any(|t| term(t, node)),
    }
}

/// The node a pod is bound to, or the one its affinity pins it to (a DaemonSet pod not yet
/// scheduled: `matchFields` `metadata.name In [node]`).
pub fn target_node(spec: &PodSpec) -> Option<String> {
    if let Some(n) = &spec.node_name {
        return Some(n.clone());
    }
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    let [t] = terms.as_slice() else { return None };
    let [f] = t.match_fields.as_deref()? else { return None };
    match (f.key.as_str(), f.operator.as_str(), f.values.as_deref()) {
        ("metadata.name", "In", Some([n])) => Some(n.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, labels: serde_json::Value) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
    }
    fn spec(v: serde_json::Value) -> PodSpec {
        serde_json::from_value(json!({"containers": []}))
            .map(|mut s: PodSpec| {
                let extra: PodSpec = serde_json::from_value(v).unwrap();
                s.node_selector = extra.node_selector;
                s.affinity = extra.affinity;
                s.node_name = extra.node_name;
                s
            })
            .unwrap()
    }

    #[test]
    fn selectors_and_affinity_filter_nodes() {
        let a = node("node-1", json!({"disk": "ssd", "cores": "8"}));
        let b = node("node-2", json!({"disk": "hdd"}));
        let sel = spec(json!({"containers": [], "nodeSelector": {"disk": "ssd"}}));
        assert!(node_matches(&sel, &a) && !node_matches(&sel, &b));
        let gt = spec(
            json!({"containers": [], "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            {"nodeSelectorTerms": [{"matchExpressions": [{"key": "cores", "operator": "Gt", "values": ["4"]}]}]}}}}),
        );
        assert!(node_matches(&gt, &a) && !node_matches(&gt, &b));
        let pinned = spec(
            json!({"containers": [], "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["node-2"]}]}]}}}}),
        );
        assert!(!node_matches(&pinned, &a) && node_matches(&pinned, &b));
        assert_eq!(target_node(&pinned).as_deref(), Some("node-2"));
        let empty = spec(
            json!({"containers": [], "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            {"nodeSelectorTerms": [{}]}}}}),
        );
        assert!(!node_matches(&empty, &a), "an empty term matches nothing");
        assert!(node_matches(&spec(json!({"containers": []})), &a));
    }
}
