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

/// Serves node `node`'s kubelet API, with certificates from the CA in `ca_dir`; requests are
/// authorized by SubjectAccessReviews that `client` makes.
pub fn start(state_dir: &Path, ca_dir: &Path, node: &NodeNet, client: kube::Client) -> Result<()> {
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
        authorize: Some(authorizer(client, node.name.clone())),
    });
    tokio::spawn(kubelet_api::serve(tokio::net::TcpListener::from_std(listener)?, config, api));
    Ok(())
}

/// The kubelet's Webhook authorization: a SubjectAccessReview for `nodes/{subresource}` of this
/// node, answered by the API server.
fn authorizer(client: kube::Client, node: String) -> kubelet_api::Authorize {
    use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
    Arc::new(move |a: kubelet_api::Attributes| {
        let (client, node) = (client.clone(), node.clone());
        Box::pin(async move {
            let review = SubjectAccessReview {
                spec: SubjectAccessReviewSpec {
                    user: Some(a.user),
                    groups: Some(a.groups),
                    resource_attributes: Some(ResourceAttributes {
                        verb: Some(a.verb.to_string()),
                        resource: Some("nodes".into()),
                        subresource: Some(a.subresource.into()),
                        name: Some(node),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ..Default::default()
            };
            let api: kube::Api<SubjectAccessReview> = kube::Api::all(client);
            let done = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                api.create(&kube::api::PostParams::default(), &review),
            )
            .await
            .map_err(|_| "the API server did not answer the SubjectAccessReview within 10 s".to_string())?
            .map_err(|e| format!("SubjectAccessReview: {e}"))?;
            Ok(done.status.is_some_and(|s| s.allowed))
        })
    })
}
