//! The processes of cluster mode, against a real API server: `weft agent` (the node's service
//! proxy and NetworkPolicy enforcement) and `weft dns` (the cluster DNS, the same server as the
//! `weft-dns` binary).

use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::cli::AgentArgs;

fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("WEFT_LOG").unwrap_or_else(|_| "info".into()))
        .try_init()
        .ok();
}

/// `weft dns`: the cluster DNS.
pub async fn dns(a: weft_dns::cli::Args) -> Result<ExitCode> {
    init_logging();
    weft_dns::cli::run(a).await?;
    Ok(ExitCode::SUCCESS)
}

/// The node agent of cluster mode: the same proxy and NetworkPolicy engine the lab runs on each of
/// its nodes, here in this process's network namespace, fed by a real API server.
pub async fn agent(a: AgentArgs) -> Result<ExitCode> {
    init_logging();
    let cidr: ipnet::Ipv4Net =
        a.cluster_cidr.parse().with_context(|| format!("--cluster-cidr {:?} is not an IPv4 CIDR", a.cluster_cidr))?;
    let client = weft_watch::client(a.kubeconfig).await?;
    let node = a.node;
    tracing::info!(%node, "weft agent: service proxy and NetworkPolicy enforcement starting");
    // NetworkPolicy for this node's pods, whatever CNI made them, in this namespace's forward hook.
    tokio::spawn(weft_policy::run(client.clone(), vec![(node.clone(), None)]));
    weft_proxy::run(client, vec![(weft_proxy::compile::NodeInfo { name: node, cluster_cidr: cidr }, None)]).await;
    Ok(ExitCode::SUCCESS)
}
