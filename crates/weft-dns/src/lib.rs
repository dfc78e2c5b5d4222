//! weft's cluster DNS, a CoreDNS replacement: the Kubernetes DNS-Based Service Discovery
//! specification (1.1.0) answered from an in-memory index of the cluster (`zone`, pure), the
//! wire format of the query path (`wire`, pure), a caching forwarder with health checks,
//! failover and loop detection for everything else (`forward`), UDP and TCP listeners
//! (`server`), the watches that keep the index current (`watch`), and metrics with health and
//! readiness endpoints (`metrics`).

pub mod cli;
pub mod forward;
pub mod metrics;
pub mod model;
pub mod server;
pub mod watch;
pub mod wire;
pub mod zone;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;

pub use zone::{PodMode, Zone, ZoneConfig};

#[derive(Clone, Debug)]
pub struct Options {
    pub zone: ZoneConfig,
    /// Where DNS is served (UDP and TCP).
    pub listen: Vec<SocketAddr>,
    /// UDP worker threads per address; 0 means one per core.
    pub threads: usize,
    /// Upstream servers; empty means the ConfigMap's `dnsUpstreams`, else `resolv_conf`'s.
    pub upstreams: Vec<SocketAddr>,
    pub resolv_conf: PathBuf,
    /// Where /health, /ready and /metrics are served.
    pub http: Vec<SocketAddr>,
    /// The cache of forwarded answers holds at most `cache_size` entries and `cache_bytes`
    /// bytes (answers up to 64 KiB each would make an entry bound alone worth gigabytes).
    pub cache_size: usize,
    pub cache_bytes: usize,
    pub upstream_timeout: Duration,
    /// Forwarded queries waiting on upstreams at once (0: no limit); beyond it, REFUSED
    /// (CoreDNS forward's `max_concurrent`).
    pub max_concurrent: usize,
    pub tcp: server::TcpLimits,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            zone: ZoneConfig::default(),
            listen: vec![([0, 0, 0, 0], 53).into()],
            threads: 0,
            upstreams: vec![],
            resolv_conf: "/etc/resolv.conf".into(),
            http: vec![([0, 0, 0, 0], 8080).into(), ([0, 0, 0, 0], 8181).into(), ([0, 0, 0, 0], 9153).into()],
            cache_size: 10_000,
            cache_bytes: 32 << 20,
            upstream_timeout: Duration::from_secs(2),
            max_concurrent: 1000,
            tcp: Default::default(),
        }
    }
}

/// A server over a zone that someone else keeps current (tests, benchmarks, the watch).
pub fn server(zone: Arc<ArcSwap<Zone>>, opts: &Options) -> Arc<server::Server> {
    let metrics = metrics::Metrics::new();
    let forwarder = forward::Forwarder::new(metrics.clone(), opts);
    Arc::new(server::Server { zone, forwarder, metrics })
}

/// Binds every listener of `opts` for `srv` (inside a tokio runtime).
pub async fn listen(srv: &Arc<server::Server>, opts: &Options) -> anyhow::Result<()> {
    let threads = match opts.threads {
        0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        n => n,
    };
    for a in &opts.listen {
        server::spawn_udp(srv.clone(), *a, threads, tokio::runtime::Handle::current())
            .with_context(|| format!("listening on UDP {a}"))?;
        let l = tokio::net::TcpListener::bind(a).await.with_context(|| format!("listening on TCP {a}"))?;
        tokio::spawn(server::serve_tcp(srv.clone(), l, opts.tcp));
    }
    for a in &opts.http {
        let l = tokio::net::TcpListener::bind(a)
            .await
            .with_context(|| format!("listening on {a} for health and metrics"))?;
        tokio::spawn(metrics::serve_http(l, srv.metrics.clone()));
    }
    Ok(())
}

/// `weft dns`: serves the cluster zone of the API `client` talks to. `api` is the runtime the
/// watches run on (it may be one whose threads sit in another network namespace, where the API
/// is reachable); listeners and upstream sockets are made on the current runtime. Never returns
/// unless a listener cannot be bound.
pub async fn run(client: kube::Client, opts: Options, api: tokio::runtime::Handle) -> anyhow::Result<()> {
    tune_allocator();
    let empty = Zone::build(&model::Snapshot::default(), &opts.zone, 1);
    let zone = Arc::new(ArcSwap::from_pointee(empty));
    let srv = server(zone.clone(), &opts);
    listen(&srv, &opts).await?;
    let m = srv.metrics.clone();
    api.spawn(watch::run(client.clone(), opts.zone.clone(), zone, m));
    if opts.upstreams.is_empty() {
        let text = std::fs::read_to_string(&opts.resolv_conf).unwrap_or_default();
        let default = forward::resolv_conf_servers(&text);
        api.spawn(watch::upstreams_from_config(client, srv.forwarder.clone(), default));
    } else {
        srv.forwarder.set_upstreams(opts.upstreams.clone());
    }
    tracing::info!(listen = ?opts.listen, zone = %opts.zone.domain, "cluster DNS serving");
    std::future::pending::<()>().await;
    Ok(())
}

/// glibc's allocator for a long-running server whose large blocks (list pages, the index) come
/// and go: blocks of 256 KiB and more get mappings of their own, returned when freed. By
/// default glibc raises that threshold each time such a block is freed, after which the next
/// index lands in the heap and leaves a hole there when it is replaced.
pub(crate) fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a parameter of the allocator.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}
