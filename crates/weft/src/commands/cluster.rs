//! The processes of cluster mode, against a real API server: `weft agent` (the node's service
//! proxy and NetworkPolicy enforcement), `weft dns` (the cluster DNS, the same server as the
//! `weft-dns` binary) and `weft ingress` (the Ingress controller, as the `weft-ingress` binary).

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

/// `weft ingress`: the Ingress controller.
pub async fn ingress(a: weft_ingress::cli::Args) -> Result<ExitCode> {
    // Its log on stderr: stdout is the proxy's access log (JSON lines).
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("WEFT_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .try_init()
        .ok();
    weft_ingress::cli::run(a).await?;
    Ok(ExitCode::SUCCESS)
}

/// The node agent of cluster mode: the same proxy and NetworkPolicy engine the lab runs on each of
/// its nodes, here in this process's network namespace, fed by a real API server.
pub async fn agent(a: AgentArgs) -> Result<ExitCode> {
    init_logging();
    let cidr: ipnet::Ipv4Net =
        a.cluster_cidr.parse().with_context(|| format!("--cluster-cidr {:?} is not an IPv4 CIDR", a.cluster_cidr))?;
    let metrics: Option<std::net::SocketAddr> = match a.metrics_bind_address.trim() {
        "" => None,
        m => Some(m.parse().with_context(|| format!("--metrics-bind-address {m:?} is not an address:port"))?),
    };
    let healthz: Option<std::net::SocketAddr> = match a.healthz_bind_address.trim() {
        "" => None,
        h => Some(h.parse().with_context(|| format!("--healthz-bind-address {h:?} is not an address:port"))?),
    };
    let client = weft_watch::client(a.kubeconfig).await?;
    let node = a.node;
    let stats = weft_proxy::stats::Stats::default();
    tracing::info!(%node, "weft agent: service proxy and NetworkPolicy enforcement starting");
    // NetworkPolicy for this node's pods, whatever CNI made them, in this namespace's forward hook;
    // its denials (the rules' NFLOG group) counted on /metrics and recorded as Events.
    let published = weft_policy::Published::default();
    let denials = weft_policy::denials::Denials::default();
    if let Some(addr) = metrics {
        let bound = super::metrics::serve(addr, denials.clone(), stats.clone()).await?;
        tracing::info!(%bound, "serving /metrics");
    }
    if let Some(addr) = healthz {
        let eligible = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        tokio::spawn(watch_eligibility(client.clone(), node.clone(), eligible.clone()));
        let bound = super::metrics::serve_health(addr, stats.clone(), eligible).await?;
        tracing::info!(%bound, "serving /healthz and /livez");
    }
    if a.allocate_load_balancer_ips {
        tokio::spawn(weft_controllers::lb::run_elected(client.clone(), identity(&node)));
    }
    let policed = vec![(node.clone(), None)];
    tokio::spawn(weft_policy::run_published(client.clone(), policed.clone(), published.clone()));
    tokio::spawn(weft_policy::denials::run(client.clone(), policed, published, denials));
    weft_proxy::run(client, vec![(weft_proxy::compile::NodeInfo { name: node, cluster_cidr: cidr }, None)], stats)
        .await;
    Ok(ExitCode::SUCCESS)
}

/// Keeps `eligible` saying what kube-proxy's /healthz judges of its node: it exists, is not being
/// deleted and has no `ToBeDeletedByClusterAutoscaler` taint (so load balancers drain it first).
async fn watch_eligibility(
    client: kube::Client,
    node: String,
    eligible: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use futures::StreamExt;
    use kube::runtime::watcher;
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client);
    let config = watcher::Config::default().fields(&format!("metadata.name={node}"));
    // weft_watch's stream: backoff, and watch errors logged once per outage.
    let mut events = weft_watch::events(nodes, config);
    let judge = |n: &k8s_openapi::api::core::v1::Node| {
        n.metadata.deletion_timestamp.is_none()
            && !n.spec.iter().flat_map(|s| s.taints.iter().flatten()).any(|t| t.key == "ToBeDeletedByClusterAutoscaler")
    };
    // Whether the current (re)list has shown the node: a node not there is not eligible.
    let mut listed = false;
    while let Some(ev) = events.next().await {
        let set = |v: bool| eligible.store(v, std::sync::atomic::Ordering::Relaxed);
        match ev {
            watcher::Event::Init => listed = false,
            watcher::Event::InitApply(n) => {
                listed = true;
                set(judge(&n));
            }
            watcher::Event::InitDone if !listed => set(false),
            watcher::Event::InitDone => {}
            watcher::Event::Apply(n) => set(judge(&n)),
            watcher::Event::Delete(_) => set(false),
        }
    }
}

/// A leader-election identity unique to this process: `name` and a random suffix (client-go
/// adds a UUID to the host name), so a restarted process is a new candidate.
pub fn identity(name: &str) -> String {
    format!("{name}_{}", hex_suffix())
}

fn hex_suffix() -> String {
    format!("{:016x}", rand::random::<u64>())
}
