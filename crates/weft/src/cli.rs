//! The command line: what `weft` accepts, as clap types (one argument struct per command).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "weft", version, about = "The whole Kubernetes cluster network, on one machine or many")]
pub struct Cli {
    /// The lab to act on (default: $WEFT_CLUSTER, else the only one running, else "default").
    #[arg(long, global = true)]
    pub name: Option<String>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Start a lab (or resume a stopped one) and return when its API answers.
    Up(UpArgs),
    /// Stop a lab and remove everything it made.
    Down,
    /// Create or update the objects in manifests (files, directories, or - for stdin).
    Apply(ApplyArgs),
    /// Delete objects named by manifests, or by kind and name.
    Delete(DeleteArgs),
    /// List or show objects, with kubectl's columns.
    Get(GetArgs),
    /// Show an object in detail (a NetworkPolicy with the pods it selects and its peers match).
    Describe(DescribeArgs),
    /// NetworkPolicy: `weft policy denials` lists the connections policies denied.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Print the lab's kubeconfig (for kubectl: `weft kubeconfig > k; kubectl --kubeconfig k ...`);
    /// with `--as NAMESPACE/SERVICEACCOUNT`, one whose user is a fresh token of that
    /// ServiceAccount (a limited user: it may do what RBAC grants the ServiceAccount).
    Kubeconfig(KubeconfigArgs),
    /// Show the lab and the health of its components.
    Status,
    /// Run a command in a pod's network namespace (with the pod's resolv.conf), on a node, or on
    /// the external host: `weft exec POD -- CMD`, `weft exec --node node-2 -- CMD`.
    Exec(ExecArgs),
    /// Print a container's log.
    Logs(LogsArgs),
    /// Cluster mode: the node agent (service proxy) against a real API server, on this node.
    Agent(AgentArgs),
    /// Cluster DNS (a CoreDNS replacement) for the API server the kubeconfig names.
    Dns(weft_dns::cli::Args),
    /// The Ingress controller (Ingress v1 and the ingress-nginx annotations, served by a
    /// reverse proxy) for the API server the kubeconfig names, or for a file (`--from-file`).
    Ingress(weft_ingress::cli::Args),
    /// A pod's shim (started by the lab's kubelet).
    #[command(hide = true)]
    Shim(ShimArgs),
    /// The built-in server a container without a command runs.
    #[command(hide = true)]
    Builtin(BuiltinArgs),
    /// Run the lab's control plane in the foreground (what `weft up` starts).
    #[command(hide = true)]
    Daemon(DaemonArgs),
}

#[derive(Args)]
pub struct UpArgs {
    #[arg(long, default_value_t = 3)]
    pub nodes: u32,
    #[arg(long, default_value = "10.244.0.0/16")]
    pub pod_cidr: String,
    #[arg(long, default_value = "10.96.0.0/12")]
    pub service_cidr: String,
    #[arg(long, default_value = "30000-32767")]
    pub node_port_range: String,
    #[arg(long, default_value = "vxlan", value_parser = ["vxlan", "routed"])]
    pub overlay: String,
    /// Where the lab keeps its state (default: $WEFT_HOME/state/NAME).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// API port on 127.0.0.1 (default: a free one, kept for the lab's life).
    #[arg(long, default_value_t = 0)]
    pub api_port: u16,
    /// Addresses for LoadBalancer Services (CIDRs or first-last ranges, comma separated).
    #[arg(long, default_value = "172.18.255.0/24")]
    pub lb_pool: String,
    /// Give pods outbound access through the host (changes the host's firewall; off by default).
    #[arg(long)]
    pub egress: bool,
    /// The control plane: weft's embedded API and controllers, or a real one (etcd,
    /// kube-apiserver, kube-controller-manager, kube-scheduler, built by `scripts/peers etcd
    /// kubernetes`) running on node-1 as kubeadm runs it.
    #[arg(long, default_value = "weft", value_parser = ["weft", "kubernetes"])]
    pub control_plane: String,
}

#[derive(Args)]
pub struct ApplyArgs {
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<String>,
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
}

#[derive(Args)]
pub struct DeleteArgs {
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<String>,
    pub kind: Option<String>,
    #[arg(value_name = "NAME")]
    pub objects: Vec<String>,
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
}

#[derive(Args)]
pub struct GetArgs {
    pub kind: String,
    #[arg(value_name = "NAME")]
    pub object: Option<String>,
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    #[arg(short = 'A', long = "all-namespaces")]
    pub all_namespaces: bool,
    #[arg(short = 'o', long)]
    pub output: Option<String>,
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    #[arg(long)]
    pub no_headers: bool,
}

#[derive(Args)]
pub struct DescribeArgs {
    pub kind: String,
    #[arg(value_name = "NAME")]
    pub object: String,
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
}

#[derive(Subcommand)]
pub enum PolicyCmd {
    /// The connections NetworkPolicies denied recently (from the PolicyDenied Events): source,
    /// destination, protocol and port, how often, and the policies that selected the pod.
    Denials(DenialsArgs),
}

#[derive(Args)]
pub struct DenialsArgs {
    /// Denials involving pods of this namespace (default: "default").
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Denials in every namespace.
    #[arg(short = 'A', long = "all-namespaces")]
    pub all_namespaces: bool,
    /// Only denials seen within this long (e.g. 30s, 5m, 1h).
    #[arg(long, value_name = "DURATION")]
    pub since: Option<String>,
}

#[derive(Args)]
pub struct ExecArgs {
    #[arg(value_name = "POD")]
    pub pod: Option<String>,
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    #[arg(long, conflicts_with_all = ["pod", "external"])]
    pub node: Option<String>,
    #[arg(long, conflicts_with = "pod")]
    pub external: bool,
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Args)]
pub struct KubeconfigArgs {
    /// A ServiceAccount (`NAMESPACE/NAME`) whose token the kubeconfig carries instead of the
    /// admin's: `weft kubeconfig --as default/robot > robot.kubeconfig`.
    #[arg(long = "as", value_name = "NAMESPACE/SERVICEACCOUNT")]
    pub as_account: Option<String>,
    /// How long that token is valid, in seconds (as `kubectl create token --duration`; at least
    /// 600).
    #[arg(long, default_value_t = 3600, requires = "as_account")]
    pub duration: i64,
}

#[derive(Args)]
pub struct LogsArgs {
    pub pod: String,
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    /// Only the last this many lines.
    #[arg(long)]
    pub tail: Option<usize>,
    /// Go on printing what the container writes until it ends.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// The log of the container's previous instance (before its last restart).
    #[arg(short = 'p', long)]
    pub previous: bool,
    /// Each line prefixed with the time it was written.
    #[arg(long)]
    pub timestamps: bool,
    /// Only lines newer than this (a duration such as 5s, 2m, 1h).
    #[arg(long)]
    pub since: Option<String>,
    /// At most this many bytes.
    #[arg(long)]
    pub limit_bytes: Option<u64>,
}

#[derive(Args)]
pub struct AgentArgs {
    /// A kubeconfig; without one, the in-cluster service account (or $KUBECONFIG).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// This node's name (the Node object), for node-local endpoints.
    #[arg(long, env = "NODE_NAME")]
    pub node: String,
    /// The cluster's pod network: ClusterIP traffic from outside it is masqueraded.
    #[arg(long, default_value = "10.244.0.0/16")]
    pub cluster_cidr: String,
    /// Where to serve /metrics (Prometheus text: NetworkPolicy denials), as kube-proxy's
    /// --metrics-bind-address; an empty value turns it off.
    #[arg(long, default_value = "127.0.0.1:10249")]
    pub metrics_bind_address: String,
    /// Where to serve kube-proxy's /healthz and /livez (JSON; 503 when a change has waited over
    /// a minute, or the node is going away), as kube-proxy's --healthz-bind-address; an empty
    /// value turns it off.
    #[arg(long, default_value = "0.0.0.0:10256")]
    pub healthz_bind_address: String,
    /// Stand for election (Lease kube-system/weft-loadbalancer-allocator) as the one agent that
    /// gives LoadBalancer Services addresses from the pools in ConfigMap kube-system/weft-config.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub allocate_load_balancer_ips: bool,
}

#[derive(Args)]
pub struct ShimArgs {
    pub spec: PathBuf,
}

#[derive(Args)]
pub struct BuiltinArgs {
    #[arg(long)]
    pub pod: String,
    #[arg(long)]
    pub namespace: String,
    #[arg(long, default_value = "echo")]
    pub mode: String,
    #[arg(long, default_value = "")]
    pub tcp: String,
    #[arg(long, default_value = "")]
    pub udp: String,
}

#[derive(Args)]
pub struct DaemonArgs {
    #[arg(long)]
    pub state_dir: PathBuf,
    #[arg(long)]
    pub ready_fd: Option<i32>,
}
