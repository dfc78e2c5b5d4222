//! The lab daemon's composition root (`weft daemon`, started by `weft up`): the API server
//! (with the lab's pod logs), the control loops, the lab's nodes and kubelets, the service proxy
//! and NetworkPolicy enforcement on every node, the LoadBalancer announcer and the cluster DNS, wired together here and
//! nowhere else.

use std::io::Write;
use std::os::fd::FromRawFd;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;

use crate::cli::DaemonArgs;
use crate::client;
use crate::lab::{self, Lab};

/// `weft daemon`: runs the lab until SIGTERM or Ctrl-C, reporting progress, then "ready" (or the
/// error), on `--ready-fd`.
pub async fn run(name: Option<String>, a: DaemonArgs) -> Result<ExitCode> {
    let DaemonArgs { state_dir, ready_fd } = a;
    // `weft up` reads progress lines, then "ready" (or an error), from this pipe.
    let ready = std::sync::Mutex::new(ready_fd.map(|fd| unsafe { std::fs::File::from_raw_fd(fd) }));
    let say = |line: &str| {
        if let Some(f) = ready.lock().unwrap().as_mut() {
            let _ = writeln!(f, "{line}");
        }
    };
    let result = async {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("WEFT_LOG").unwrap_or_else(|_| "info".into()))
            .with_writer(std::io::stderr)
            .try_init()
            .ok();
        // Everything the daemon and the shims it starts write is theirs alone.
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
        let lab = Lab::at(name.as_deref().unwrap_or("default"), state_dir.clone());
        let cfg = lab.config()?;
        let lock =
            std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(state_dir.join("daemon.lock"))?;
        let lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|_| anyhow::anyhow!("another weft daemon already runs lab {:?}", cfg.name))?;
        std::fs::write(state_dir.join("daemon.pid"), std::process::id().to_string())?;
        let pod_cidr: ipnet::Ipv4Net = cfg.pod_cidr.parse().context("the lab's pod CIDR must be IPv4")?;
        let underlay: ipnet::Ipv4Net = UNDERLAY.parse()?;
        let spec = weft_lab::LabSpec {
            nodes: cfg.nodes,
            pod_cidr,
            service_cidr: cfg.service_cidr.parse().context("the lab's service CIDR must be IPv4")?,
            underlay,
            overlay: cfg.overlay.parse().map_err(anyhow::Error::msg)?,
        };
        // Pods reach the API at the first node's address (kubeadm's advertise address).
        let advertise = (cfg.nodes > 0).then(|| weft_lab::topology::node_ip(underlay, 0));
        let control_plane = if cfg.real_control_plane() {
            real_control_plane(&cfg, &state_dir, &spec, &say).await?
        } else {
            say("progress: starting the API server");
            embedded_control_plane(&lab, &cfg, &state_dir, advertise.map(Into::into)).await?
        };
        let client = client::connect(&lab).await?;
        if cfg.nodes > 0 {
            let exe = std::env::current_exe()?;
            let ctx = Arc::new(weft_lab::LabCtx {
                name: cfg.name.clone(),
                state_dir: state_dir.clone(),
                cni_path: cni_bin_dir(&state_dir, &exe)?,
                weft_exe: exe,
                overlay: spec.overlay,
                dns_ip: dns_ip(&cfg.service_cidr)?,
                cluster_domain: "cluster.local".into(),
                kubelet_ca: match &control_plane {
                    ControlPlane::Real(cp) => Some(cp.dir().to_path_buf()),
                    ControlPlane::Embedded(_) => None,
                },
            });
            let nodes =
                weft_lab::start(ctx.clone(), &spec, client.clone(), &|m| say(&format!("progress: {m}"))).await?;
            // A real kube-apiserver listens on the advertise address itself.
            if let ControlPlane::Embedded(running) = &control_plane {
                serve_api_to_pods(&nodes, running.addr)?;
            }
            say("progress: starting the service proxy on every node");
            let proxied = nodes
                .iter()
                .map(|n| {
                    (
                        weft_proxy::compile::NodeInfo { name: n.name.clone(), cluster_cidr: pod_cidr },
                        Some(n.netns_path()),
                    )
                })
                .collect();
            let proxy_stats = weft_proxy::stats::Stats::default();
            tokio::spawn(weft_proxy::run(client.clone(), proxied, proxy_stats.clone()));
            // NetworkPolicy on every node, in the node's namespace (its forward hook); the denials
            // each node logs counted (on /metrics, a loopback port `weft status` reads from the
            // state directory) and recorded as Events.
            let policed: Vec<_> = nodes.iter().map(|n| (n.name.clone(), Some(n.netns_path()))).collect();
            let published = weft_policy::Published::default();
            let denials = weft_policy::denials::Denials::default();
            let metrics =
                crate::commands::metrics::serve(([127, 0, 0, 1], 0).into(), denials.clone(), proxy_stats).await?;
            std::fs::write(state_dir.join(crate::commands::metrics::ADDR_FILE), metrics.to_string())?;
            tokio::spawn(weft_policy::run_published(client.clone(), policed.clone(), published.clone()));
            tokio::spawn(weft_policy::denials::run(client.clone(), policed, published, denials));
            // LoadBalancer addresses from --lb-pool, announced on the underlay.
            use weft_k8s::config;
            let cms: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
                kube::Api::namespaced(client.clone(), config::NAMESPACE);
            if cms.get_opt(config::NAME).await?.is_none() {
                let cm: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(json!({
                    "metadata": {"name": config::NAME, "namespace": config::NAMESPACE},
                    "data": {config::LOAD_BALANCER_POOLS: cfg.lb_pool.clone()}}))?;
                cms.create(&Default::default(), &cm).await?;
            }
            // A real control plane allocates no LoadBalancer addresses: weft's allocator does,
            // elected as it is in any cluster.
            if let ControlPlane::Real(_) = &control_plane {
                let me = crate::commands::cluster::identity(&format!("weft-daemon-{}", cfg.name));
                tokio::spawn(weft_controllers::lb::run_elected(client.clone(), me));
            }
            tokio::spawn(weft_lab::announce::run(client.clone(), nodes.clone()));
            say("progress: starting the cluster DNS");
            cluster_dns(&client, &ctx.dns_ip).await?;
            // Made before the DNS wait so the controller starts meanwhile; `weft up` does not
            // wait for it (nothing of the lab needs it).
            say("progress: starting the ingress controller");
            cluster_ingress(&client).await?;
            // Pods made right after `weft up` resolve names (seed 000's `nslookup kubernetes`).
            if !dns_ready(&client, Duration::from_secs(30)).await {
                say("progress: the cluster DNS is not ready yet; see kubectl -n kube-system get pods");
            }
        }
        Ok::<_, anyhow::Error>((lock, control_plane))
    }
    .await;
    let (_lock, control_plane) = match result {
        Ok(r) => r,
        Err(e) => {
            say(&format!("{e:#}"));
            return Err(e);
        }
    };
    say("ready");
    ready.lock().unwrap().take();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("stopping");
    match control_plane {
        ControlPlane::Embedded(running) => running.api.store.close(),
        // Its components stop (SIGTERM, then SIGKILL) when it is dropped.
        ControlPlane::Real(cp) => drop(cp),
    }
    Ok(ExitCode::SUCCESS)
}

/// What serves the lab's API.
enum ControlPlane {
    /// weft's own API server, with weft's controllers.
    Embedded(weft_apiserver::Running),
    /// etcd, kube-apiserver, kube-controller-manager and kube-scheduler on node-1.
    Real(Box<weft_controlplane::ControlPlane>),
}

/// The embedded API server, with weft's controllers (EndpointSlices, workloads, scheduling,
/// node IPAM, ServiceAccounts).
async fn embedded_control_plane(
    lab: &Lab,
    cfg: &lab::LabConfig,
    state_dir: &Path,
    advertise: Option<std::net::IpAddr>,
) -> Result<ControlPlane> {
    let api_cfg = weft_apiserver::Config {
        name: cfg.name.clone(),
        state_dir: state_dir.to_path_buf(),
        service_cidr: cfg.service_cidr.parse()?,
        node_port_range: lab::parse_port_range(&cfg.node_port_range)?,
        port: cfg.api_port,
        advertise_address: advertise,
    };
    // `kubectl logs` reads what the lab's pod shims wrote.
    let pod_logs = Arc::new(weft_lab::logs::LabPodLogs { state_dir: state_dir.to_path_buf() });
    // `kubectl exec`, `attach` and `port-forward` enter the lab's running pods.
    let pod_streams = Arc::new(weft_lab::streams::LabPodStreams { state_dir: state_dir.to_path_buf() });
    let running = weft_apiserver::start_with_pods(api_cfg, pod_logs, pod_streams).await?;
    tracing::info!(addr = %running.addr, lab = %cfg.name, "API server listening");
    let client = client::connect(lab).await?;
    let pod_cidr: ipnet::Ipv4Net = cfg.pod_cidr.parse().context("the lab's pod CIDR must be IPv4")?;
    // Every namespace's default ServiceAccount and kube-root-ca.crt, put back if deleted.
    if let Some(a) = running.api.accounts.get() {
        tokio::spawn(weft_controllers::serviceaccounts::run(client.clone(), a.ca_pem.clone()));
    }
    tokio::spawn(weft_controllers::run(
        client,
        weft_controllers::Config { pod_cidr, node_cidr_size: 24.max(pod_cidr.prefix_len()) },
    ));
    Ok(ControlPlane::Embedded(running))
}

/// A real control plane on node-1, in the lab's state directory (`control-plane/`), as kubeadm
/// runs one: its own controllers do what weft's do with the embedded API, so none of weft's
/// run. The lab's kubeconfig is its admin's.
async fn real_control_plane(
    cfg: &lab::LabConfig,
    state_dir: &Path,
    spec: &weft_lab::LabSpec,
    say: &(dyn Fn(&str) + Sync),
) -> Result<ControlPlane> {
    // node-1's namespace first: the control plane runs in it. A lab without nodes has it on
    // loopback, with no address for pods (there are none).
    let on_node = spec.nodes > 0;
    if on_node {
        weft_lab::build_hosts(&cfg.name, spec, &|m| say(&format!("progress: {m}"))).await?;
    }
    say("progress: starting etcd, kube-apiserver, kube-controller-manager and kube-scheduler");
    let port_file = state_dir.join("api.port");
    let kept = std::fs::read_to_string(&port_file).ok().and_then(|p| p.trim().parse::<u16>().ok());
    let node1 = weft_lab::topology::node_ns(&cfg.name, &weft_lab::node_name(0));
    let cp_spec = weft_controlplane::Spec {
        dir: state_dir.join("control-plane"),
        bin_dir: weft_controlplane::find_bin_dir(&std::env::current_exe()?)?,
        name: cfg.name.clone(),
        service_cidr: cfg.service_cidr.clone(),
        node_port_range: cfg.node_port_range.clone(),
        advertise: on_node.then(|| weft_lab::topology::node_ip(spec.underlay, 0).into()),
        controllers: None,
        cluster_cidr: Some(cfg.pod_cidr.clone()),
        netns: on_node.then(|| weft_lab::netns::path(&node1)),
        api_port: if cfg.api_port != 0 { cfg.api_port } else { kept.unwrap_or(0) },
    };
    let cp = weft_controlplane::ControlPlane::start(&cp_spec, Duration::from_secs(180)).await?;
    // Pods made right after `weft up` need the default ServiceAccount, which the controller
    // manager makes a moment after it starts (kube-apiserver refuses pods without it).
    cp.wait_service_account("default", Duration::from_secs(60)).await?;
    std::fs::write(&port_file, cp.api.port().to_string())?;
    weft_apiserver::tls::write_private(&state_dir.join("kubeconfig"), &std::fs::read(&cp.kubeconfig)?)?;
    tracing::info!(addr = %cp.api, lab = %cfg.name, "kube-apiserver ready");
    Ok(ControlPlane::Real(Box::new(cp)))
}

/// The lab's underlay network (node addresses from .10 up).
const UNDERLAY: &str = "172.18.0.0/16";

/// Serves the API where pods reach it (the `kubernetes` Service's endpoint): a listener on the
/// first node's address, made inside that node's namespace, passing connections to the API.
fn serve_api_to_pods(nodes: &[weft_lab::topology::NodeNet], api: std::net::SocketAddr) -> Result<()> {
    let Some(node) = nodes.first() else { return Ok(()) };
    let addr = std::net::SocketAddr::from((node.ip, weft_apiserver::kubernetes_service::PORT));
    let listener = weft_netlink::ns::run_in(Some(&node.netns_path()), move || std::net::TcpListener::bind(addr))?
        .with_context(|| format!("listening on {addr} in {} for pods' API connections", node.netns))?;
    listener.set_nonblocking(true)?;
    tokio::spawn(weft_apiserver::kubernetes_service::forward(tokio::net::TcpListener::from_std(listener)?, api));
    Ok(())
}

/// The cluster DNS: the kube-dns Service and `deploy/dns.yaml` (the weft-dns ServiceAccount,
/// ClusterRole and binding, and the Deployment, which cluster mode applies as it is), each made
/// once (a user's changes to them are kept).
async fn cluster_dns(client: &kube::Client, ip: &str) -> Result<()> {
    let service = include_str!("cluster-dns.yaml").replace("CLUSTER_DNS_IP", ip);
    let text = format!("{service}\n---\n{}", include_str!("../../../deploy/dns.yaml"));
    for doc in weft_api::yaml::parse_manifests(&text).map_err(anyhow::Error::msg)? {
        create_once(client, &doc).await?;
    }
    Ok(())
}

/// The Ingress controller: `deploy/ingress.yaml` as cluster mode applies it (ServiceAccount,
/// ClusterRole and binding, the default IngressClass `weft`, the Deployment and its
/// LoadBalancer Service), each made once (a user's changes to them are kept).
async fn cluster_ingress(client: &kube::Client) -> Result<()> {
    for doc in
        weft_api::yaml::parse_manifests(include_str!("../../../deploy/ingress.yaml")).map_err(anyhow::Error::msg)?
    {
        create_once(client, &doc).await?;
    }
    Ok(())
}

/// Creates `doc` unless an object of its kind and name is there.
async fn create_once(client: &kube::Client, doc: &serde_json::Value) -> Result<()> {
    let (api_version, kind) = (doc["apiVersion"].as_str().unwrap_or(""), doc["kind"].as_str().unwrap_or(""));
    let k =
        weft_api::kinds::by_gvk(api_version, kind).with_context(|| format!("{api_version} {kind} is not served"))?;
    let ns = doc["metadata"]["namespace"].as_str();
    let name = doc["metadata"]["name"].as_str().unwrap_or("");
    match client::get(client, &client::path(k, ns, Some(name))).await {
        Ok(_) => return Ok(()),
        Err(e) if client::is_not_found(&e) => {}
        Err(e) => return Err(e).with_context(|| format!("reading {} {name}", k.plural)),
    }
    let post = http::Method::POST;
    client::call(client, post, &client::path(k, ns, None), Some(doc), "application/json", "application/json")
        .await
        .with_context(|| format!("creating {} {name}", k.plural))?;
    Ok(())
}

/// Waits (bounded) until the kube-dns Service has a ready endpoint.
async fn dns_ready(client: &kube::Client, within: Duration) -> bool {
    let slices: kube::Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        kube::Api::namespaced(client.clone(), "kube-system");
    let lp = kube::api::ListParams::default().labels(&weft_k8s::slices::selector_for("kube-dns"));
    let until = std::time::Instant::now() + within;
    while std::time::Instant::now() < until {
        if let Ok(list) = slices.list(&lp).await
            && list.items.iter().flat_map(|s| s.endpoints.iter().flatten()).any(weft_k8s::endpoints::is_ready)
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// The cluster DNS Service's address: the tenth of the service range (10.96.0.10 by default).
fn dns_ip(service_cidr: &str) -> Result<String> {
    let net: ipnet::IpNet = service_cidr.parse()?;
    let ip = net.hosts().nth(9).context("the service CIDR is too small for the DNS Service")?;
    Ok(ip.to_string())
}

/// A directory for the lab's CNI_PATH holding `weft-cni`: the real plugin if it sits next to
/// this binary, else this binary itself (it acts as the plugin when called `weft-cni`).
fn cni_bin_dir(state_dir: &Path, exe: &Path) -> Result<String> {
    let dir = state_dir.join("cni-bin");
    std::fs::create_dir_all(&dir)?;
    let beside = exe.with_file_name("weft-cni");
    let target = if beside.exists() { beside } else { exe.to_path_buf() };
    let link = dir.join("weft-cni");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&target, &link)?;
    Ok(format!("{}:/opt/cni/bin:/usr/lib/cni", dir.display()))
}
