//! Each node's kubelet API (port 10250 of the node's address, inside its namespace), where a
//! real kube-apiserver sends `kubectl exec`, `attach`, `port-forward` and `logs`: served by
//! `weft_apiserver::kubelet_api` from the lab's pods, with a serving certificate for the node
//! signed by the cluster's CA.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use weft_apiserver::kubelet_api::{self, KubeletApi};
use weft_apiserver::tls;

use crate::topology::NodeNet;

/// The kubelet's port, which the lab's Nodes declare (`status.daemonEndpoints`).
pub const PORT: i32 = kubelet_api::PORT as i32;

/// Serves node `node`'s kubelet API, with certificates from the CA in `ca_dir`.
pub fn start(state_dir: &Path, ca_dir: &Path, node: &NodeNet) -> Result<()> {
    let ca = std::fs::read_to_string(ca_dir.join("ca.crt")).context("reading the cluster CA for the kubelet")?;
    let names = [node.ip.to_string(), node.name.clone()];
    let (cert, key) = tls::signed_by_ca(ca_dir, &format!("kubelet-{}", node.name), tls::Use::Server { names: &names })?;
    let config = kubelet_api::tls_config(&ca, &cert, &key)?;
    let addr = std::net::SocketAddr::from((node.ip, kubelet_api::PORT));
    let listener = weft_netlink::ns::run_in(Some(&node.netns_path()), move || std::net::TcpListener::bind(addr))?
        .with_context(|| format!("listening on {addr} in {} for the kubelet API", node.netns))?;
    listener.set_nonblocking(true)?;
    let (state, me) = (state_dir.to_path_buf(), node.name.clone());
    let api = Arc::new(KubeletApi {
        logs: Arc::new(crate::logs::LabPodLogs { state_dir: state.clone() }),
        streams: Arc::new(crate::streams::LabPodStreams { state_dir: state.clone() }),
        // The node's own pods only, as the kubelet knows them.
        uid_of: Box::new(move |ns, pod| {
            crate::kubelet::all_sandboxes(&state)
                .into_iter()
                .find(|sb| sb.node == me && sb.namespace == ns && sb.name == pod)
                .map(|sb| sb.uid)
        }),
    });
    tokio::spawn(kubelet_api::serve(tokio::net::TcpListener::from_std(listener)?, config, api));
    Ok(())
}
