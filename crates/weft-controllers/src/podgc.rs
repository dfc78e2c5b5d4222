//! Pod garbage collection, as kube-controller-manager's PodGC: pods bound to a Node that no
//! longer exists are deleted at once (grace period 0: there is no kubelet left to stop them),
//! and so are pods that are terminating but were never scheduled (no kubelet will finish them).
//! Candidates come from the caches ([`orphaned`]); a missing node is confirmed with the API
//! before anything is deleted, and the delete names the pod's uid.

use std::collections::HashSet;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Preconditions};

/// Pods to collect: (namespace, name, uid, node) of pods bound to a node not in `nodes`, and of
/// unscheduled pods that are terminating (node empty).
pub fn orphaned(pods: &[Arc<Pod>], nodes: &[Arc<Node>]) -> Vec<(String, String, String, String)> {
    let names: HashSet<String> = nodes.iter().map(|n| n.name_any()).collect();
    pods.iter()
        .filter_map(|p| {
            let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
            let gone = match &node {
                Some(n) => !names.contains(n),
                None => p.metadata.deletion_timestamp.is_some(),
            };
            gone.then(|| {
                (
                    p.namespace().unwrap_or_default(),
                    p.name_any(),
                    p.metadata.uid.clone().unwrap_or_default(),
                    node.unwrap_or_default(),
                )
            })
        })
        .collect()
}

/// One collection pass.
pub async fn collect(client: &kube::Client, pods: &[Arc<Pod>], nodes: &[Arc<Node>]) -> anyhow::Result<()> {
    let node_api: Api<Node> = Api::all(client.clone());
    for (ns, name, uid, node) in orphaned(pods, nodes) {
        // The cache may lag a node just made: ask the API.
        if !node.is_empty() && !matches!(node_api.get_opt(&node).await, Ok(None)) {
            continue;
        }
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions { uid: Some(uid), resource_version: None }),
            ..Default::default()
        };
        match api.delete(&name, &dp).await {
            Ok(_) => {
                tracing::info!(pod = %format!("{ns}/{name}"), node = %node, "pod garbage collected: its node is gone")
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "pod garbage collection"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pods_of_vanished_nodes_and_unscheduled_terminating_pods() {
        let node: Arc<Node> = Arc::new(serde_json::from_value(json!({"metadata": {"name": "node-1"}})).unwrap());
        let pod = |name: &str, node: Option<&str>, deleting: bool| -> Arc<Pod> {
            let mut v = json!({"metadata": {"name": name, "namespace": "default", "uid": name},
                "spec": {"containers": [], "nodeName": node}});
            if deleting {
                v["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
            }
            Arc::new(serde_json::from_value(v).unwrap())
        };
        let pods = [
            pod("kept", Some("node-1"), false),
            pod("orphan", Some("node-9"), false),
            pod("pending", None, false),
            pod("never-scheduled", None, true),
        ];
        let out: Vec<String> = orphaned(&pods, &[node]).into_iter().map(|o| o.1).collect();
        assert_eq!(out, ["orphan", "never-scheduled"]);
    }
}
