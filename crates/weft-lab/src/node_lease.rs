//! A node's heartbeat, as the kubelet sends it: its Lease in `kube-node-lease`, renewed every
//! 10 s for 40 s. kube-controller-manager's node lifecycle controller marks a node whose Lease
//! (and Ready condition) has not moved within its grace period unreachable, taints it and, five
//! minutes on, evicts its pods; with the embedded API nothing reads the Lease, but it is there
//! as in any cluster.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use weft_leader::micro_now;

/// The namespace of node Leases.
pub const NAMESPACE: &str = "kube-node-lease";
/// How often the kubelet renews (its `nodeLeaseDurationSeconds` / 4).
pub const RENEW_EVERY: Duration = Duration::from_secs(10);
/// The kubelet's default `nodeLeaseDurationSeconds`.
pub const DURATION_SECONDS: i32 = 40;

/// The Lease of node `node`: held by the node, owned by its Node object (so it goes with it).
pub fn lease(node: &Node, now: &str) -> serde_json::Value {
    let name = node.metadata.name.as_deref().unwrap_or_default();
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "namespace": NAMESPACE, "ownerReferences": [{
            "apiVersion": "v1", "kind": "Node", "name": name, "uid": node.metadata.uid.as_deref().unwrap_or_default()}]},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": DURATION_SECONDS, "renewTime": now},
    })
}

/// Renews node `name`'s Lease (making it first) every [`RENEW_EVERY`], until the task is dropped.
/// A failed renewal is retried at the next tick: a missed beat or two is what the grace
/// period is for.
pub async fn run(client: kube::Client, name: String) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let nodes: Api<Node> = Api::all(client);
    let mut tick = tokio::time::interval(RENEW_EVERY);
    loop {
        tick.tick().await;
        if let Err(e) = renew(&leases, &nodes, &name).await {
            tracing::warn!(node = %name, error = %e, "renewing the node's lease");
        }
    }
}

async fn renew(leases: &Api<Lease>, nodes: &Api<Node>, name: &str) -> anyhow::Result<()> {
    let now = micro_now();
    if leases.get_opt(name).await?.is_some() {
        let patch = json!({"spec": {"holderIdentity": name, "renewTime": now}});
        leases.patch(name, &PatchParams::default(), &Patch::Merge(patch)).await?;
        return Ok(());
    }
    let node = nodes.get(name).await?;
    leases.create(&PostParams::default(), &serde_json::from_value(lease(&node, &now))?).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_is_the_nodes_and_goes_with_it() {
        let node: Node = serde_json::from_value(json!({"metadata": {"name": "node-1", "uid": "u-1"}})).unwrap();
        let now = micro_now();
        // What the API takes: a typed Lease, with the node as holder and owner.
        let l: Lease = serde_json::from_value(lease(&node, &now)).unwrap();
        let spec = l.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("node-1"));
        assert_eq!(spec.lease_duration_seconds, Some(DURATION_SECONDS));
        let owner = &l.metadata.owner_references.unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("Node", "u-1"));
        // Microseconds, as kube-apiserver's MicroTime: 2026-12-02T01:02:03.456789Z.
        assert_eq!(now.len(), 27, "{now}");
        assert!(now.ends_with('Z') && now.as_bytes()[19] == b'.', "{now}");
    }
}
