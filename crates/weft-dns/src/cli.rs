//! The command line of the cluster DNS, shared by `weft dns` and the `weft-dns` binary (the
//! one the lab's DNS pod and the cluster-mode Deployment run: it holds only this server, so
//! it maps a fraction of the code pages the whole `weft` binary would).

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::{Options, PodMode, ZoneConfig};

#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// A kubeconfig; without one, the in-cluster service account (or $KUBECONFIG).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Where DNS is served, UDP and TCP (repeatable).
    #[arg(long, default_value = "0.0.0.0:53")]
    pub listen: Vec<SocketAddr>,
    /// UDP workers per address (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Upstream servers for names outside the cluster (repeatable; ip or ip:port). Default:
    /// `dnsUpstreams` in ConfigMap kube-system/weft-config, else the nameservers of --resolv-conf.
    #[arg(long, value_parser = parse_upstream)]
    pub upstream: Vec<SocketAddr>,
    #[arg(long, default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,
    /// TTL of cluster records (CoreDNS's default is 5).
    #[arg(long, default_value_t = 5)]
    pub ttl: u32,
    /// Pod records `a-b-c-d.<ns>.pod.<zone>`: verified, insecure or disabled.
    #[arg(long, default_value = "verified")]
    pub pods: PodMode,
    /// Where /health, /ready and /metrics are served (repeatable).
    #[arg(long, default_values = ["0.0.0.0:8080", "0.0.0.0:8181", "0.0.0.0:9153"])]
    pub http: Vec<SocketAddr>,
    /// Entries in the cache of forwarded answers.
    #[arg(long, default_value_t = 10_000)]
    pub cache_size: usize,
    /// Bytes the cache of forwarded answers may take (messages and names).
    #[arg(long, default_value_t = 32 << 20)]
    pub cache_bytes: usize,
    /// TCP connections served at once; more wait in the backlog.
    #[arg(long, default_value_t = 1024)]
    pub tcp_max_connections: usize,
    /// Seconds a TCP connection may wait for the client's next query.
    #[arg(long, default_value_t = 10)]
    pub tcp_idle_timeout: u64,
    /// Forwarded queries waiting on upstreams at once; more are REFUSED (0: no limit).
    #[arg(long, default_value_t = 1000)]
    pub max_concurrent: usize,
}

fn parse_upstream(s: &str) -> Result<SocketAddr, String> {
    let v = crate::forward::parse_upstreams(s)?;
    v.into_iter().next().ok_or_else(|| "an empty upstream".to_string())
}

/// Serves DNS as `a` says (logging already set up). Returns only on an error.
pub async fn run(a: Args) -> anyhow::Result<()> {
    if crate::zone::wire_name(&a.cluster_domain).is_none_or(|w| w.len() < 2) {
        anyhow::bail!("--cluster-domain {:?} is not a domain name: use one such as cluster.local", a.cluster_domain);
    }
    let client = weft_watch::client(a.kubeconfig.clone()).await?;
    let opts = Options {
        zone: ZoneConfig { domain: a.cluster_domain, ttl: a.ttl, pods: a.pods },
        listen: a.listen,
        threads: a.threads,
        upstreams: a.upstream,
        resolv_conf: a.resolv_conf,
        http: a.http,
        cache_size: a.cache_size.max(1),
        max_concurrent: a.max_concurrent,
        cache_bytes: a.cache_bytes,
        tcp: crate::server::TcpLimits {
            max_connections: a.tcp_max_connections.max(1),
            idle: std::time::Duration::from_secs(a.tcp_idle_timeout),
            ..Default::default()
        },
        ..Default::default()
    };
    crate::run(client, opts, tokio::runtime::Handle::current()).await
}
