//! `weft`: start and stop labs, talk to their API as kubectl would, and run the daemons.

mod client;
mod lab;
mod output;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use http::Method;
use serde_json::{Value, json};
use weft_api::kinds;

use crate::lab::{Lab, LabConfig};

#[derive(Parser)]
#[command(name = "weft", version, about = "The whole Kubernetes cluster network, on one machine or many")]
struct Cli {
    /// The lab to act on (default: $WEFT_CLUSTER, else the only one running, else "default").
    #[arg(long, global = true)]
    name: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a lab (or resume a stopped one) and return when its API answers.
    Up(UpArgs),
    /// Stop a lab and remove everything it made.
    Down,
    /// Create or update the objects in manifests (files, directories, or - for stdin).
    Apply {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<String>,
        #[arg(short = 'n', long)]
        namespace: Option<String>,
    },
    /// Delete objects named by manifests, or by kind and name.
    Delete {
        #[arg(short = 'f', long = "filename")]
        files: Vec<String>,
        kind: Option<String>,
        #[arg(value_name = "NAME")]
        objects: Vec<String>,
        #[arg(short = 'n', long)]
        namespace: Option<String>,
    },
    /// List or show objects, with kubectl's columns.
    Get {
        kind: String,
        #[arg(value_name = "NAME")]
        object: Option<String>,
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        #[arg(short = 'A', long = "all-namespaces")]
        all_namespaces: bool,
        #[arg(short = 'o', long)]
        output: Option<String>,
        #[arg(short = 'l', long)]
        selector: Option<String>,
        #[arg(long)]
        no_headers: bool,
    },
    /// Show an object in detail.
    Describe {
        kind: String,
        #[arg(value_name = "NAME")]
        object: String,
        #[arg(short = 'n', long)]
        namespace: Option<String>,
    },
    /// Print the lab's kubeconfig (for kubectl: `weft kubeconfig > k; kubectl --kubeconfig k ...`).
    Kubeconfig,
    /// Show the lab and the health of its components.
    Status,
    /// Run a command in a pod's network namespace (with the pod's resolv.conf), on a node, or on
    /// the external host: `weft exec POD -- CMD`, `weft exec --node node-2 -- CMD`.
    Exec {
        #[arg(value_name = "POD")]
        pod: Option<String>,
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        #[arg(long, conflicts_with_all = ["pod", "external"])]
        node: Option<String>,
        #[arg(long, conflicts_with = "pod")]
        external: bool,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Print a container's log.
    Logs {
        pod: String,
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        #[arg(short = 'c', long)]
        container: Option<String>,
        #[arg(long)]
        tail: Option<usize>,
    },
    /// Cluster mode: the node agent (service proxy) against a real API server, on this node.
    Agent {
        /// A kubeconfig; without one, the in-cluster service account (or $KUBECONFIG).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// This node's name (the Node object), for node-local endpoints.
        #[arg(long, env = "NODE_NAME")]
        node: String,
        /// The cluster's pod network: ClusterIP traffic from outside it is masqueraded.
        #[arg(long, default_value = "10.244.0.0/16")]
        cluster_cidr: String,
    },
    /// Cluster DNS (a CoreDNS replacement) for the API server the kubeconfig names.
    Dns(weft_dns::cli::Args),
    /// A pod's shim (started by the lab's kubelet).
    #[command(hide = true)]
    Shim { spec: PathBuf },
    /// The built-in server a container without a command runs.
    #[command(hide = true)]
    Builtin {
        #[arg(long)]
        pod: String,
        #[arg(long)]
        namespace: String,
        #[arg(long, default_value = "echo")]
        mode: String,
        #[arg(long, default_value = "")]
        tcp: String,
        #[arg(long, default_value = "")]
        udp: String,
    },
    /// Run the lab's control plane in the foreground (what `weft up` starts).
    #[command(hide = true)]
    Daemon {
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long)]
        ready_fd: Option<i32>,
    },
}

#[derive(clap::Args)]
struct UpArgs {
    #[arg(long, default_value_t = 3)]
    nodes: u32,
    #[arg(long, default_value = "10.244.0.0/16")]
    pod_cidr: String,
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cidr: String,
    #[arg(long, default_value = "30000-32767")]
    node_port_range: String,
    #[arg(long, default_value = "vxlan", value_parser = ["vxlan", "routed"])]
    overlay: String,
    /// Where the lab keeps its state (default: $WEFT_HOME/state/NAME).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// API port on 127.0.0.1 (default: a free one, kept for the lab's life).
    #[arg(long, default_value_t = 0)]
    api_port: u16,
    /// Addresses for LoadBalancer Services (CIDRs or first-last ranges, comma separated).
    #[arg(long, default_value = "172.18.255.0/24")]
    lb_pool: String,
    /// Give pods outbound access through the host (changes the host's firewall; off by default).
    #[arg(long)]
    egress: bool,
}

fn main() -> ExitCode {
    // Called as `weft-cni` (a link the lab makes), this binary is the CNI plugin.
    if std::env::args_os().next().is_some_and(|a| std::path::Path::new(&a).file_name().is_some_and(|f| f == "weft-cni"))
    {
        return weft_cni::cli_main();
    }
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Up(a) => up(cli.name, a).await,
        Cmd::Down => down(cli.name).await,
        Cmd::Daemon { state_dir, ready_fd } => daemon(cli.name, state_dir, ready_fd).await,
        Cmd::Kubeconfig => {
            let lab = lab::select(cli.name.as_deref())?;
            print!("{}", std::fs::read_to_string(lab.kubeconfig()).context("the lab has no kubeconfig yet")?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status => status(cli.name).await,
        Cmd::Exec { pod, namespace, node, external, command } => {
            exec(cli.name, pod, namespace, node, external, command).await
        }
        Cmd::Logs { pod, namespace, container, tail } => logs(cli.name, pod, namespace, container, tail).await,
        Cmd::Agent { kubeconfig, node, cluster_cidr } => agent(kubeconfig, node, cluster_cidr).await,
        Cmd::Dns(a) => dns(a).await,
        Cmd::Shim { spec } => {
            weft_lab::shim::run(&spec)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Builtin { pod, namespace, mode, tcp, udp } => {
            let ports = |s: &str| -> Result<Vec<u16>> {
                s.split(',').filter(|p| !p.is_empty()).map(|p| p.parse().context("port")).collect()
            };
            let mode = match mode.as_str() {
                "serve-hostname" => weft_lab::builtin::Mode::ServeHostname,
                "netexec" => weft_lab::builtin::Mode::Netexec,
                _ => weft_lab::builtin::Mode::Echo,
            };
            weft_lab::builtin::run(weft_lab::builtin::Builtin {
                pod,
                namespace,
                mode,
                tcp: ports(&tcp)?,
                udp: ports(&udp)?,
            })
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Apply { files, namespace } => apply(cli.name, files, namespace).await,
        Cmd::Delete { files, kind, objects, namespace } => delete(cli.name, files, kind, objects, namespace).await,
        Cmd::Get { kind, object, namespace, all_namespaces, output, selector, no_headers } => {
            get(cli.name, kind, object, namespace, all_namespaces, output, selector, no_headers).await
        }
        Cmd::Describe { kind, object, namespace } => describe(cli.name, kind, object, namespace).await,
    }
}

async fn up(name: Option<String>, a: UpArgs) -> Result<ExitCode> {
    // The same choice as every command: --name, $WEFT_CLUSTER, the one lab there is, default.
    let name = match name.or_else(|| std::env::var("WEFT_CLUSTER").ok().filter(|s| !s.is_empty())) {
        Some(n) => n,
        None => lab::select(None).map(|l| l.name).unwrap_or("default".into()),
    };
    if !weft_api::validate::is_dns1123_label(&name) {
        bail!("lab name {name:?} is invalid: use lowercase letters, digits and '-' (e.g. 'dev')");
    }
    // Check the settings before anything is made.
    let _: ipnet::IpNet =
        a.service_cidr.parse().with_context(|| format!("--service-cidr {:?} is not a CIDR", a.service_cidr))?;
    let _: ipnet::IpNet = a.pod_cidr.parse().with_context(|| format!("--pod-cidr {:?} is not a CIDR", a.pod_cidr))?;
    parse_port_range(&a.node_port_range)?;
    weft_controllers::lb::parse_pools(&a.lb_pool).map_err(|e| anyhow::anyhow!("--lb-pool: {e}"))?;
    if a.egress {
        bail!("--egress is not built yet: pods reach only the lab's own networks");
    }
    let dir = match (&a.state_dir, lab::select(Some(&name))) {
        (Some(d), _) => d.clone(),
        (None, Ok(existing)) => existing.dir,
        (None, Err(_)) => lab::home().join("state").join(&name),
    };
    let dir = if dir.is_absolute() { dir } else { std::env::current_dir()?.join(dir) };
    let lab = Lab::at(&name, dir.clone());
    if lab.running() {
        println!("lab {name:?} is already up (API {}); nothing changed", lab.api_url().unwrap_or_default());
        return Ok(ExitCode::SUCCESS);
    }
    // What the lab needs from the machine, before anything is made (an API-only lab needs
    // nothing more).
    if a.nodes > 0 {
        preflight()?;
    }
    // What `weft up` and the daemon it starts write is private (the store holds every Secret).
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    lab::secure_state_dir(&dir)?;
    let cfg_path = dir.join("config.json");
    let resumed = cfg_path.exists();
    if !resumed {
        let cfg = LabConfig {
            name: name.clone(),
            service_cidr: a.service_cidr,
            pod_cidr: a.pod_cidr,
            nodes: a.nodes,
            overlay: a.overlay,
            node_port_range: a.node_port_range,
            api_port: a.api_port,
            egress: a.egress,
            lb_pool: a.lb_pool,
        };
        std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg)?)?;
    }
    lab::register(&name, &dir)?;
    eprintln!("{} lab {name:?}: starting the control plane", if resumed { "resuming" } else { "creating" });
    lab::spawn_daemon(&lab)?;
    println!("lab {name:?} is up");
    println!("  API:        {}", lab.api_url().unwrap_or_default());
    println!("  kubeconfig: {}", lab.kubeconfig().display());
    println!("  state:      {}", dir.display());
    println!("try: weft get svc -A    or    kubectl --kubeconfig {} get ns", lab.kubeconfig().display());
    Ok(ExitCode::SUCCESS)
}

/// Checks that the machine has what a lab needs (the `nft` command and a kernel with the
/// nf_tables features the service proxy uses), so `weft up` fails at once, naming what to
/// install, instead of reporting a lab up whose Services cannot work.
fn preflight() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("weft up needs root: a lab makes network namespaces (run it with sudo)");
    }
    weft_proxy::apply::preflight().context("this machine cannot run a lab")
}

fn parse_port_range(s: &str) -> Result<std::ops::RangeInclusive<i32>> {
    let (a, b) = s
        .split_once('-')
        .with_context(|| format!("node port range {s:?}: write it as FIRST-LAST, e.g. 30000-32767"))?;
    let (a, b): (i32, i32) = (a.trim().parse()?, b.trim().parse()?);
    if !(1..=65535).contains(&a) || !(1..=65535).contains(&b) || a > b {
        bail!("node port range {s:?}: ports must be 1-65535 with FIRST <= LAST");
    }
    Ok(a..=b)
}

async fn down(name: Option<String>) -> Result<ExitCode> {
    let lab = lab::select(name.as_deref())?;
    lab::stop_daemon(&lab, Duration::from_secs(10))?;
    weft_lab::destroy(&lab.name, &lab.dir)?;
    if lab.dir.join(lab::MARKER).exists() {
        std::fs::remove_dir_all(&lab.dir)
            .or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) })?;
    } else if lab.dir.exists() {
        eprintln!("left {} in place: weft did not make it (it has no {} marker)", lab.dir.display(), lab::MARKER);
    }
    lab::unregister(&lab.name);
    println!("lab {:?} is down", lab.name);
    Ok(ExitCode::SUCCESS)
}

async fn daemon(name: Option<String>, state_dir: PathBuf, ready_fd: Option<i32>) -> Result<ExitCode> {
    use std::os::fd::FromRawFd;
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
        say("progress: starting the API server");
        let running = weft_apiserver::start(weft_apiserver::Config {
            name: cfg.name.clone(),
            state_dir: state_dir.clone(),
            service_cidr: cfg.service_cidr.parse()?,
            node_port_range: parse_port_range(&cfg.node_port_range)?,
            port: cfg.api_port,
        })
        .await?;
        tracing::info!(addr = %running.addr, lab = %cfg.name, "API server listening");
        let client = client::connect(&lab).await?;
        let pod_cidr: ipnet::Ipv4Net = cfg.pod_cidr.parse().context("the lab's pod CIDR must be IPv4")?;
        tokio::spawn(weft_controllers::run(
            client.clone(),
            weft_controllers::Config { pod_cidr, node_cidr_size: 24.max(pod_cidr.prefix_len()) },
        ));
        if cfg.nodes > 0 {
            let exe = std::env::current_exe()?;
            let ctx = Arc::new(weft_lab::LabCtx {
                name: cfg.name.clone(),
                state_dir: state_dir.clone(),
                cni_path: cni_bin_dir(&state_dir, &exe)?,
                weft_exe: exe,
                overlay: cfg.overlay.parse().map_err(anyhow::Error::msg)?,
                dns_ip: dns_ip(&cfg.service_cidr)?,
                cluster_domain: "cluster.local".into(),
            });
            let spec = weft_lab::LabSpec {
                nodes: cfg.nodes,
                pod_cidr,
                service_cidr: cfg.service_cidr.parse().context("the lab's service CIDR must be IPv4")?,
                underlay: "172.18.0.0/16".parse()?,
                overlay: ctx.overlay,
            };
            let nodes =
                weft_lab::start(ctx.clone(), &spec, client.clone(), &|m| say(&format!("progress: {m}"))).await?;
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
            tokio::spawn(weft_proxy::run(client.clone(), proxied));
            // LoadBalancer addresses from --lb-pool, announced on the underlay.
            let cms: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
                kube::Api::namespaced(client.clone(), "kube-system");
            if cms.get_opt(weft_controllers::lb::CONFIG).await?.is_none() {
                let cm: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(json!({
                    "metadata": {"name": weft_controllers::lb::CONFIG, "namespace": "kube-system"},
                    "data": {weft_controllers::lb::POOLS_KEY: cfg.lb_pool.clone()}}))?;
                cms.create(&Default::default(), &cm).await?;
            }
            tokio::spawn(weft_lab::announce::run(client.clone(), nodes.clone()));
            say("progress: starting the cluster DNS");
            cluster_dns(&client, &ctx.dns_ip).await?;
            // Pods made right after `weft up` resolve names (seed 000's `nslookup kubernetes`).
            if !dns_ready(&client, Duration::from_secs(30)).await {
                say("progress: the cluster DNS is not ready yet; see kubectl -n kube-system get pods");
            }
        }
        Ok::<_, anyhow::Error>((lock, running))
    }
    .await;
    let (_lock, running) = match result {
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
    running.api.store.close();
    Ok(ExitCode::SUCCESS)
}

/// The kube-dns Service and its Deployment, made once (a user's changes to them are kept).
async fn cluster_dns(client: &kube::Client, ip: &str) -> Result<()> {
    let text = include_str!("cluster-dns.yaml").replace("CLUSTER_DNS_IP", ip);
    for doc in weft_api::yaml::parse_manifests(&text).map_err(anyhow::Error::msg)? {
        if doc["kind"] == "Service" {
            let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(doc)?;
            let api: kube::Api<k8s_openapi::api::core::v1::Service> =
                kube::Api::namespaced(client.clone(), "kube-system");
            if api.get_opt("kube-dns").await?.is_none() {
                api.create(&Default::default(), &svc).await?;
            }
        } else {
            let d: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(doc)?;
            let api: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
                kube::Api::namespaced(client.clone(), "kube-system");
            if api.get_opt("coredns").await?.is_none() {
                api.create(&Default::default(), &d).await?;
            }
        }
    }
    Ok(())
}

/// Waits (bounded) until the kube-dns Service has a ready endpoint.
async fn dns_ready(client: &kube::Client, within: Duration) -> bool {
    let slices: kube::Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        kube::Api::namespaced(client.clone(), "kube-system");
    let lp = kube::api::ListParams::default().labels("kubernetes.io/service-name=kube-dns");
    let until = std::time::Instant::now() + within;
    while std::time::Instant::now() < until {
        if let Ok(list) = slices.list(&lp).await
            && list
                .items
                .iter()
                .flat_map(|s| s.endpoints.iter().flatten())
                .any(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
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
fn cni_bin_dir(state_dir: &std::path::Path, exe: &std::path::Path) -> Result<String> {
    let dir = state_dir.join("cni-bin");
    std::fs::create_dir_all(&dir)?;
    let beside = exe.with_file_name("weft-cni");
    let target = if beside.exists() { beside } else { exe.to_path_buf() };
    let link = dir.join("weft-cni");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&target, &link)?;
    Ok(format!("{}:/opt/cni/bin:/usr/lib/cni", dir.display()))
}

async fn status(name: Option<String>) -> Result<ExitCode> {
    let lab = lab::select(name.as_deref())?;
    let running = lab.running();
    println!("lab:        {}", lab.name);
    println!("state:      {}", lab.dir.display());
    println!(
        "daemon:     {}",
        if running { format!("running (pid {})", lab.pid().unwrap_or(0)) } else { "stopped".into() }
    );
    if running {
        let c = client::connect(&lab).await?;
        let ok = client::call(&c, Method::GET, "/readyz", None, "", "text/plain").await;
        let health = match ok {
            Ok(_) | Err(kube::Error::SerdeError(_)) => "ok".to_string(),
            Err(e) => client::describe_error(&e),
        };
        println!("apiserver:  {} ({})", health, lab.api_url().unwrap_or_default());
        // The service proxy's health per node, as its node condition says.
        let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(c.clone());
        if let Ok(list) = nodes.list(&Default::default()).await {
            for n in list.items {
                let cond = n
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .into_iter()
                    .find(|c| c.type_ == "ServiceProxyReady");
                let text = match cond {
                    Some(c) if c.status == "True" => "ok".to_string(),
                    Some(c) => format!("NOT READY: {}", c.message.unwrap_or_default()),
                    None => "starting".to_string(),
                };
                println!("proxy:      {} {}", n.metadata.name.unwrap_or_default(), text);
            }
        }
    }
    Ok(if running { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Reads manifests from files, directories (their .yaml/.yml/.json files) or stdin.
fn read_manifests(files: &[String]) -> Result<Vec<Value>> {
    let mut out = vec![];
    for f in files {
        let mut texts = vec![];
        if f == "-" {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            texts.push(("stdin".to_string(), s));
        } else {
            let p = PathBuf::from(f);
            if p.is_dir() {
                let mut entries: Vec<PathBuf> = std::fs::read_dir(&p)?
                    .flatten()
                    .map(|e| e.path())
                    .filter(|e| e.extension().is_some_and(|x| x == "yaml" || x == "yml" || x == "json"))
                    .collect();
                entries.sort();
                for e in entries {
                    texts.push((e.display().to_string(), std::fs::read_to_string(&e)?));
                }
            } else {
                texts.push((f.clone(), std::fs::read_to_string(&p).with_context(|| format!("reading {f}"))?));
            }
        }
        for (src, t) in texts {
            out.extend(weft_api::yaml::parse_manifests(&t).map_err(|e| anyhow::anyhow!("{src}: {e}"))?);
        }
    }
    Ok(out)
}

fn kind_of(v: &Value) -> Result<&'static weft_api::Kind> {
    let av = v.get("apiVersion").and_then(|a| a.as_str()).unwrap_or("");
    let k = v.get("kind").and_then(|a| a.as_str()).unwrap_or("");
    kinds::by_gvk(av, k)
        .with_context(|| format!("no matches for kind {k:?} in version {av:?}: weft serves {}", served_kinds()))
}

fn served_kinds() -> String {
    kinds::ALL.iter().map(|k| format!("{}/{}", k.api_version(), k.kind)).collect::<Vec<_>>().join(", ")
}

fn display_name(kind: &weft_api::Kind) -> String {
    if kind.group.is_empty() { kind.singular.to_string() } else { format!("{}.{}", kind.singular, kind.group) }
}

async fn apply(name: Option<String>, files: Vec<String>, ns: Option<String>) -> Result<ExitCode> {
    let lab = lab::select(name.as_deref())?;
    let c = client::connect(&lab).await?;
    let docs = read_manifests(&files)?;
    let mut failed = false;
    for mut d in docs {
        let kind = match kind_of(&d) {
            Ok(k) => k,
            Err(e) => {
                eprintln!("error: {e}");
                failed = true;
                continue;
            }
        };
        let obj_ns = d.pointer("/metadata/namespace").and_then(|n| n.as_str()).map(String::from);
        let ns = obj_ns.or(ns.clone()).unwrap_or("default".into());
        let n = d.pointer("/metadata/name").and_then(|n| n.as_str()).unwrap_or("").to_string();
        let label = format!("{}/{}", display_name(kind), n);
        let result = async {
            for _attempt in 0..5 {
                match client::get(&c, &client::path(kind, Some(&ns), Some(&n))).await {
                    Err(e) if client::is_not_found(&e) => {
                        client::call(
                            &c,
                            Method::POST,
                            &client::path(kind, Some(&ns), None),
                            Some(&d),
                            "application/json",
                            "application/json",
                        )
                        .await?;
                        return Ok::<_, kube::Error>("created");
                    }
                    Err(e) => return Err(e),
                    Ok(cur) => {
                        let rv = cur.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null);
                        d["metadata"]["resourceVersion"] = rv.clone();
                        let out = client::call(
                            &c,
                            Method::PUT,
                            &client::path(kind, Some(&ns), Some(&n)),
                            Some(&d),
                            "application/json",
                            "application/json",
                        )
                        .await;
                        match out {
                            Ok(o) => {
                                return Ok(if o.pointer("/metadata/resourceVersion") == Some(&rv) {
                                    "unchanged"
                                } else {
                                    "configured"
                                });
                            }
                            Err(kube::Error::Api(s)) if s.code == 409 => continue,
                            Err(e) => return Err(e),
                        }
                    }
                }
            }
            Ok("configured")
        }
        .await;
        match result {
            Ok(what) => println!("{label} {what}"),
            Err(e) => {
                eprintln!("{}", client::describe_error(&e));
                failed = true;
            }
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

async fn delete(
    name: Option<String>,
    files: Vec<String>,
    kind: Option<String>,
    names: Vec<String>,
    ns: Option<String>,
) -> Result<ExitCode> {
    let lab = lab::select(name.as_deref())?;
    let c = client::connect(&lab).await?;
    let mut targets: Vec<(&'static weft_api::Kind, String, String)> = vec![];
    if !files.is_empty() {
        for d in read_manifests(&files)? {
            let k = kind_of(&d)?;
            let n = d.pointer("/metadata/name").and_then(|n| n.as_str()).unwrap_or("").to_string();
            let obj_ns = d.pointer("/metadata/namespace").and_then(|n| n.as_str()).map(String::from);
            targets.push((k.storage(), obj_ns.or(ns.clone()).unwrap_or("default".into()), n));
        }
    } else {
        let Some(kind) = kind else { bail!("say what to delete: `weft delete -f FILE` or `weft delete KIND NAME`") };
        let k =
            kinds::by_cli_name(&kind).with_context(|| format!("the server doesn't have a resource type {kind:?}"))?;
        if names.is_empty() {
            bail!("name the {} to delete: `weft delete {kind} NAME`", k.plural);
        }
        for n in names {
            targets.push((k, ns.clone().unwrap_or("default".into()), n));
        }
    }
    let mut failed = false;
    for (k, ns, n) in targets {
        let body = json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"});
        match client::call(
            &c,
            Method::DELETE,
            &client::path(k, Some(&ns), Some(&n)),
            Some(&body),
            "application/json",
            "application/json",
        )
        .await
        {
            Ok(_) => println!("{} {n:?} deleted", display_name(k)),
            Err(e) => {
                eprintln!("{}", client::describe_error(&e));
                failed = true;
            }
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

#[allow(clippy::too_many_arguments)]
async fn get(
    name: Option<String>,
    kind: String,
    obj: Option<String>,
    ns: Option<String>,
    all: bool,
    output: Option<String>,
    selector: Option<String>,
    no_headers: bool,
) -> Result<ExitCode> {
    let lab = lab::select(name.as_deref())?;
    let c = client::connect(&lab).await?;
    let k = kinds::by_cli_name(&kind).with_context(|| {
        format!("the server doesn't have a resource type {kind:?}: try one of svc, ep, endpointslices, po, ns, no, deploy, rs, rc, ing, ingressclass, netpol, cm, secret")
    })?;
    let ns = ns.unwrap_or("default".into());
    let ns_opt = if all && obj.is_none() { None } else { Some(ns.as_str()) };
    let mut path = client::path(k, ns_opt, obj.as_deref());
    if let Some(sel) = &selector {
        path.push_str(&format!("?labelSelector={}", url_escape(sel)));
    }
    let result = match output.as_deref() {
        None | Some("wide") => client::get_table(&c, &path).await.map(|t| {
            let rows = t.get("rows").and_then(|r| r.as_array()).map(|r| r.len()).unwrap_or(0);
            if rows == 0 && obj.is_none() {
                if !k.namespaced || all {
                    eprintln!("No resources found");
                } else {
                    eprintln!("No resources found in {ns} namespace.");
                }
            } else {
                print!(
                    "{}",
                    output::render_table(
                        &t,
                        output.as_deref() == Some("wide"),
                        all && k.namespaced && obj.is_none(),
                        no_headers
                    )
                );
            }
        }),
        Some(fmt @ ("yaml" | "json")) => client::get(&c, &path).await.map(|mut v| {
            if obj.is_none() {
                v = json!({"apiVersion": "v1", "kind": "List", "items": v.get("items").cloned().unwrap_or(json!([])),
                           "metadata": {"resourceVersion": ""}});
            }
            if fmt == "yaml" {
                print!("{}", output::yaml(&v));
            } else {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            }
        }),
        Some("name") => client::get(&c, &path).await.map(|v| {
            let items = if obj.is_none() {
                v.get("items").and_then(|i| i.as_array()).cloned().unwrap_or_default()
            } else {
                vec![v]
            };
            for i in items {
                println!("{}/{}", display_name(k), i.pointer("/metadata/name").and_then(|n| n.as_str()).unwrap_or(""));
            }
        }),
        Some(other) => bail!("unknown output format {other:?}: use wide, yaml, json or name"),
    };
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("{}", client::describe_error(&e));
            Ok(ExitCode::FAILURE)
        }
    }
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn describe(name: Option<String>, kind: String, obj: String, ns: Option<String>) -> Result<ExitCode> {
    let lab = lab::select(name.as_deref())?;
    let c = client::connect(&lab).await?;
    let k = kinds::by_cli_name(&kind).with_context(|| format!("the server doesn't have a resource type {kind:?}"))?;
    let ns = ns.unwrap_or("default".into());
    let v = match client::get(&c, &client::path(k, Some(&ns), Some(&obj))).await {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{}", client::describe_error(&e));
            return Ok(ExitCode::FAILURE);
        }
    };
    if k.kind == "Service" {
        let es = kinds::by_cli_name("endpointslices").unwrap();
        let path = format!(
            "{}?labelSelector={}",
            client::path(es, Some(&ns), None),
            url_escape(&format!("kubernetes.io/service-name={obj}"))
        );
        let slices = client::get(&c, &path)
            .await
            .ok()
            .and_then(|l| l.get("items").and_then(|i| i.as_array()).cloned())
            .unwrap_or_default();
        print!("{}", output::describe_service(&v, &slices));
    } else {
        print!("{}", output::describe_generic(&v));
    }
    Ok(ExitCode::SUCCESS)
}

async fn exec(
    name: Option<String>,
    pod: Option<String>,
    ns: Option<String>,
    node: Option<String>,
    external: bool,
    command: Vec<String>,
) -> Result<ExitCode> {
    use std::os::unix::process::CommandExt;
    let lab = lab::select(name.as_deref())?;
    let (netns, resolv, hostname) = if external {
        (weft_lab::netns::path(&weft_lab::topology::external_ns(&lab.name)), None, None)
    } else if let Some(node) = node {
        let n = weft_lab::nodes(&lab.dir)
            .into_iter()
            .find(|n| n.name == node)
            .with_context(|| format!("lab {:?} has no node {node:?}: see `weft get nodes`", lab.name))?;
        (n.netns_path(), None, Some(node))
    } else {
        let pod = pod.context("name the pod: `weft exec POD -- CMD` (or --node NODE, or --external)")?;
        let ns = ns.unwrap_or("default".into());
        // From the kubelet's records, so exec works while the daemon is down too.
        let sb = weft_lab::kubelet::all_sandboxes(&lab.dir)
            .into_iter()
            .find(|s| s.name == pod && s.namespace == ns)
            .with_context(|| {
                format!("pod {ns}/{pod} has no sandbox: is it scheduled and running? (weft get pods -o wide)")
            })?;
        let uid = sb.uid.clone();
        let dir = weft_lab::kubelet::pod_dir(&lab.dir, &uid);
        (weft_lab::netns::path(&sb.netns), Some(dir.join("resolv.conf")), Some(pod))
    };
    let nsf = std::fs::File::open(&netns).with_context(|| format!("opening {}", netns.display()))?;
    let mut cmd = std::process::Command::new(&command[0]);
    cmd.args(&command[1..]);
    unsafe {
        cmd.pre_exec(move || {
            use nix::sched::{CloneFlags, setns, unshare};
            setns(&nsf, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
            // A private mount namespace, as `ip netns exec` makes, for the pod's resolv.conf.
            unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS).map_err(std::io::Error::from)?;
            nix::mount::mount(
                None::<&str>,
                "/",
                None::<&str>,
                nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_SLAVE,
                None::<&str>,
            )
            .map_err(std::io::Error::from)?;
            if let Some(r) = &resolv {
                nix::mount::mount(
                    Some(r.as_path()),
                    "/etc/resolv.conf",
                    None::<&str>,
                    nix::mount::MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(std::io::Error::from)?;
            }
            if let Some(h) = &hostname {
                let _ = nix::unistd::sethostname(h);
            }
            Ok(())
        });
    }
    let status = cmd.status().with_context(|| format!("running {:?}", command[0]))?;
    Ok(ExitCode::from(status.code().unwrap_or(1).clamp(0, 255) as u8))
}

async fn logs(
    name: Option<String>,
    pod: String,
    ns: Option<String>,
    container: Option<String>,
    tail: Option<usize>,
) -> Result<ExitCode> {
    let lab = lab::select(name.as_deref())?;
    let c = client::connect(&lab).await?;
    let k = kinds::by_cli_name("pods").unwrap();
    let mut path = format!("{}/log", client::path(k, Some(&ns.unwrap_or("default".into())), Some(&pod)));
    let mut q = vec![];
    if let Some(c) = container {
        q.push(format!("container={c}"));
    }
    if let Some(t) = tail {
        q.push(format!("tailLines={t}"));
    }
    if !q.is_empty() {
        path = format!("{path}?{}", q.join("&"));
    }
    let req = http::Request::builder().uri(path).body(vec![]).unwrap();
    match c.request_text(req).await {
        Ok(t) => {
            print!("{t}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{}", client::describe_error(&e));
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `weft dns`: the cluster DNS (the same server as the `weft-dns` binary).
async fn dns(a: weft_dns::cli::Args) -> Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("WEFT_LOG").unwrap_or_else(|_| "info".into()))
        .try_init()
        .ok();
    weft_dns::cli::run(a).await?;
    Ok(ExitCode::SUCCESS)
}

/// The node agent of cluster mode: the same proxy the lab runs on each of its nodes, here in this
/// process's network namespace, fed by a real API server.
async fn agent(kubeconfig: Option<PathBuf>, node: String, cluster_cidr: String) -> Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("WEFT_LOG").unwrap_or_else(|_| "info".into()))
        .try_init()
        .ok();
    let cidr: ipnet::Ipv4Net =
        cluster_cidr.parse().with_context(|| format!("--cluster-cidr {cluster_cidr:?} is not an IPv4 CIDR"))?;
    let client = weft_watch::client(kubeconfig).await?;
    tracing::info!(%node, "weft agent: service proxy starting");
    weft_proxy::run(client, vec![(weft_proxy::compile::NodeInfo { name: node, cluster_cidr: cidr }, None)]).await;
    Ok(ExitCode::SUCCESS)
}
