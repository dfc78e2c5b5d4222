//! weft's service proxy (a kube-proxy replacement on nftables): `compile` turns Services and
//! EndpointSlices into one node's desired ruleset, `apply` sends the difference in one atomic
//! transaction, and `run` watches the API and keeps a set of nodes in step.

pub mod apply;
pub mod compile;
pub mod conntrack;
pub mod health;
pub mod netlink;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::apply::{Applier, NetlinkSink};
use crate::compile::NodeInfo;

/// Keeps the proxy rules of every given node (node info, its network namespace) in step with
/// the API's Services and EndpointSlices.
pub async fn run(client: kube::Client, nodes: Vec<(NodeInfo, Option<std::path::PathBuf>)>) {
    let notify = Arc::new(tokio::sync::Notify::new());
    let svc_r = weft_watch::cached::<Service>(&client, notify.clone());
    let eps_r = weft_watch::cached::<EndpointSlice>(&client, notify.clone());
    let _ = svc_r.wait_until_ready().await;
    let _ = eps_r.wait_until_ready().await;
    let mut appliers: Vec<(NodeInfo, Applier<NetlinkSink>, health::HealthServers)> = nodes
        .into_iter()
        .map(|(n, ns)| (n, Applier::new(NetlinkSink { netns: ns.clone() }), health::HealthServers::new(ns)))
        .collect();
    loop {
        let svcs: Vec<Service> = svc_r.state().iter().map(|s| (**s).clone()).collect();
        let slices: Vec<EndpointSlice> = eps_r.state().iter().map(|s| (**s).clone()).collect();
        for (node, applier, health) in appliers.iter_mut() {
            let want = compile::compile_from(applier.applied(), &svcs, &slices, node);
            if let Err(e) = applier.sync(want) {
                tracing::warn!(node = %node.name, error = %format!("{e:#}"), "proxy sync");
            }
            health.sync(health::plan(&svcs, &slices, &node.name));
        }
        tokio::select! {
            _ = notify.notified() => {}
            // Retries a failed sync.
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        // A burst of changes becomes one transaction.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
