//! The lab: a whole multi-node cluster network on one machine, built from network namespaces
//! (`topology`), with a kubelet per node (`kubelet`) that runs pods through the CNI plugin and a
//! shim per pod (`shim`), and built-in servers standing in for container images (`builtin`).
//!
//! Architecture invariant: everything the lab makes is a network namespace named
//! `weft-<lab>-...` (and what lives inside), or a file in the lab's state directory, or a process
//! recorded there; the root namespace's addresses, routes, links and firewall are never touched.

pub mod announce;
pub mod builtin;
pub mod container_log;
mod grpc_probe;
pub mod kubelet;
pub mod kubelet_api;
pub mod lifecycle;
pub mod logs;
pub mod netns;
pub mod node_lease;
pub mod pod_events;
pub mod shim;
pub mod streams;
pub mod topology;
pub mod volumes;

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;

use crate::topology::{NodeNet, Overlay};

/// What every part of a running lab needs to know.
pub struct LabCtx {
    pub name: String,
    pub state_dir: PathBuf,
    /// The `weft` binary (pods' shims and built-in servers are this binary too).
    pub weft_exe: PathBuf,
    /// Where CNI plugins are found (weft-cni first).
    pub cni_path: String,
    pub overlay: Overlay,
    pub dns_ip: String,
    pub cluster_domain: String,
    /// Where the cluster's CA (`ca.crt`, `ca.key`) is, when nodes serve the kubelet API (a
    /// real control plane's exec and logs come through it; the embedded API reaches pods
    /// itself).
    pub kubelet_ca: Option<PathBuf>,
}

pub struct LabSpec {
    pub nodes: u32,
    pub pod_cidr: Ipv4Net,
    pub service_cidr: Ipv4Net,
    pub underlay: Ipv4Net,
    pub overlay: Overlay,
}

/// Node names: node-1 .. node-K.
pub fn node_name(i: u32) -> String {
    format!("node-{}", i + 1)
}

/// Builds the network, registers the nodes, waits for their podCIDRs (from the node IPAM
/// controller), wires pod traffic between nodes and starts a kubelet per node. Idempotent: on a
/// restart it finds what exists and carries on.
pub async fn start(
    ctx: Arc<LabCtx>,
    spec: &LabSpec,
    client: kube::Client,
    progress: &dyn Fn(&str),
) -> Result<Vec<NodeNet>> {
    let lab = ctx.name.clone();
    build_hosts(&lab, spec, progress).await?;
    let nodes_api: Api<Node> = Api::all(client.clone());
    for i in 0..spec.nodes {
        let name = node_name(i);
        progress(&format!("registering node {name}"));
        let ip = topology::node_ip(spec.underlay, i);
        if nodes_api.get_opt(&name).await?.is_none() {
            let mut labels =
                json!({"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"});
            if i == 0 {
                labels["node-role.kubernetes.io/control-plane"] = json!("");
            }
            let node: Node = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": labels},
                "spec": {},
            }))?;
            nodes_api.create(&PostParams::default(), &node).await?;
        }
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
        let status = json!({"status": {
            "addresses": [{"type": "InternalIP", "address": ip.to_string()}, {"type": "Hostname", "address": name}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "weft kubelet is posting ready status",
                            "lastHeartbeatTime": shim::now(), "lastTransitionTime": shim::now()}],
            "nodeInfo": {"kubeletVersion": "v1.33.0-weft", "kubeProxyVersion": "v1.33.0-weft", "osImage": "weft lab node",
                         "kernelVersion": kernel, "containerRuntimeVersion": "weft://0.1", "operatingSystem": "linux",
                         "architecture": "amd64", "machineID": "", "systemUUID": "", "bootID": ""},
            "capacity": {"cpu": "2", "memory": "2Gi", "pods": "110"},
            "allocatable": {"cpu": "2", "memory": "2Gi", "pods": "110"},
            "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_api::PORT}},
        }});
        nodes_api.patch_status(&name, &PatchParams::default(), &Patch::Merge(status)).await?;
        tokio::spawn(node_lease::run(client.clone(), name));
    }
    progress("waiting for node podCIDRs");
    let mut nets = vec![];
    for i in 0..spec.nodes {
        let name = node_name(i);
        let cidr = wait_pod_cidr(&nodes_api, &name).await?;
        nets.push(NodeNet {
            netns: topology::node_ns(&lab, &name),
            ip: topology::node_ip(spec.underlay, i),
            pod_cidr: cidr,
            name,
        });
    }
    progress(&format!(
        "wiring pod traffic between nodes ({})",
        match spec.overlay {
            Overlay::Vxlan => "vxlan overlay",
            Overlay::Routed => "routed",
        }
    ));
    for n in &nets {
        topology::configure_node(n, &nets, spec.overlay, spec.service_cidr).await?;
        let dir = ctx.state_dir.join("nodes").join(&n.name);
        std::fs::create_dir_all(dir.join("cni"))?;
        let ipam = dir.join("ipam");
        let conf = topology::cni_conflist(n, spec.overlay, &ipam.display().to_string());
        std::fs::write(dir.join("cni").join("10-weft.conflist"), serde_json::to_vec_pretty(&conf)?)?;
        std::fs::write(dir.join("node.json"), serde_json::to_vec_pretty(n)?)?;
    }
    progress("starting kubelets");
    for n in &nets {
        if let Some(ca) = &ctx.kubelet_ca {
            kubelet_api::start(&ctx.state_dir, ca, n, client.clone())?;
        }
        tokio::spawn(kubelet::Kubelet::new(ctx.clone(), n.clone(), client.clone()).run());
    }
    Ok(nets)
}

/// The lab's hosts without their Kubernetes side: the underlay, the external host and a
/// namespace per node, attached to it (what exists is kept). A control plane can then run on
/// the first node before any node registers.
pub async fn build_hosts(lab: &str, spec: &LabSpec, progress: &dyn Fn(&str)) -> Result<()> {
    progress("building the underlay network");
    topology::build_underlay(lab).await?;
    let ext = topology::external_ns(lab);
    topology::attach_host(lab, &ext, "ext", topology::external_ip(spec.underlay), spec.underlay).await?;
    for i in 0..spec.nodes {
        let name = node_name(i);
        progress(&format!("creating node {name}"));
        let ip = topology::node_ip(spec.underlay, i);
        topology::attach_host(lab, &topology::node_ns(lab, &name), &name, ip, spec.underlay).await?;
    }
    Ok(())
}

async fn wait_pod_cidr(api: &Api<Node>, name: &str) -> Result<Ipv4Net> {
    // The node IPAM controller answers within a pass; bounded wait (generous: a loaded machine).
    for _ in 0..3000 {
        if let Some(c) = api.get_opt(name).await?.and_then(|n| n.spec.and_then(|s| s.pod_cidr)) {
            return c.parse().with_context(|| format!("node {name}: podCIDR {c:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::bail!("node {name} got no podCIDR: is the node IPAM controller running?")
}

/// How long stopping a lab's pods may take in all, whatever their grace periods: `weft down`
/// of 100 pods is meant to take seconds, not minutes.
pub const STOP_BOUND: Duration = Duration::from_secs(5);
/// The grace period of a pod whose own is not known (Kubernetes' default).
const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// Namespaces removed at once.
const PARALLEL_DELETES: usize = 8;

/// Removes everything a lab made, also after a crash: pod processes, every `weft-<lab>-`
/// namespace (and so every link and rule inside). Files are left to the caller, which removes
/// them only after this returned: a `weft down` cut short finds the records it needs again.
pub fn destroy(lab: &str, state_dir: &std::path::Path) -> Result<()> {
    destroy_with(lab, state_dir, &HashMap::new())
}

/// [`destroy`], with the pods' grace periods (by uid) as their API objects say.
pub fn destroy_with(lab: &str, state_dir: &std::path::Path, graces: &HashMap<String, Duration>) -> Result<()> {
    stop_shims(&kubelet::all_sandboxes(state_dir), graces, STOP_BOUND);
    // Pods first, then the nodes, the external host and the underlay they hang on.
    let mut names: Vec<String> =
        netns::list(&format!("weft-{lab}-")).into_iter().filter(|ns| is_lab_netns(lab, ns)).collect();
    names.sort_by_key(|n| (!n.starts_with(&format!("weft-{lab}-pod-")), n.clone()));
    // Whatever still runs in them (a shim started but not yet recorded when its daemon was
    // killed, a process that ignored its SIGTERM) would keep a namespace alive after its name
    // is gone: killed first, found by the namespace it is in.
    let by_ns = processes_by_netns();
    for ns in &names {
        let Ok(m) = std::fs::metadata(netns::path(ns)) else { continue };
        for pid in by_ns.get(&(m.dev(), m.ino())).into_iter().flatten() {
            if *pid != std::process::id() as i32 {
                let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
            }
        }
    }
    // And a shim whose namespace went before it (a record overwritten, a namespace deleted
    // under it): found by the spec path on its command line, in this lab's state directory.
    for pid in shims_of(state_dir) {
        let _ = nix::sys::signal::killpg(Pid::from_raw(pid), Signal::SIGKILL);
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let errors: Vec<String> = std::thread::scope(|s| {
        let chunk = names.len().div_ceil(PARALLEL_DELETES).max(1);
        let workers: Vec<_> = names
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .filter_map(|ns| netns::delete(ns).err().map(|e| format!("{ns}: {e:#}")))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap_or_default()).collect()
    });
    if !errors.is_empty() {
        anyhow::bail!("removing the lab's namespaces: {} (run weft down again)", errors.join("; "));
    }
    Ok(())
}

/// Stops the pods' shims all at once: SIGTERM to each, then a wait until each has ended or its
/// grace period (bounded by `bound`) is over, then SIGKILL to the session of each one left.
pub fn stop_shims(sandboxes: &[kubelet::Sandbox], graces: &HashMap<String, Duration>, bound: Duration) {
    let start = Instant::now();
    let mut live: Vec<(&kubelet::Sandbox, Instant)> = sandboxes
        .iter()
        .filter(|sb| kubelet::shim_alive(sb))
        .map(|sb| (sb, start + graces.get(&sb.uid).copied().unwrap_or(DEFAULT_GRACE).min(bound)))
        .collect();
    for (sb, _) in &live {
        let _ = kill(Pid::from_raw(sb.shim_pid as i32), Signal::SIGTERM);
    }
    // Bounded: every deadline is at most `bound` away, and a SIGKILL ends a process at once.
    let until = start + bound + Duration::from_secs(2);
    while !live.is_empty() && Instant::now() < until {
        let now = Instant::now();
        live.retain(|(sb, deadline)| {
            if !kubelet::shim_alive(sb) {
                reap(sb.shim_pid);
                return false;
            }
            if now >= *deadline {
                // The shim leads its session and process group: take the containers too.
                let _ = nix::sys::signal::killpg(Pid::from_raw(sb.shim_pid as i32), Signal::SIGKILL);
            }
            true
        });
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reaps a shim this process started (the daemon's own teardown); a no-op for others.
fn reap(pid: u32) {
    let _ = nix::sys::wait::waitpid(Pid::from_raw(pid as i32), Some(nix::sys::wait::WaitPidFlag::WNOHANG));
}

/// Every process by the network namespace it is in ((device, inode) of its `ns/net`): one pass
/// over /proc for all of a lab's namespaces.
fn processes_by_netns() -> HashMap<(u64, u64), Vec<i32>> {
    let mut out: HashMap<(u64, u64), Vec<i32>> = HashMap::new();
    let Ok(rd) = std::fs::read_dir("/proc") else { return out };
    for pid in rd.flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()) {
        if let Ok(m) = std::fs::metadata(format!("/proc/{pid}/ns/net")) {
            out.entry((m.dev(), m.ino())).or_default().push(pid);
        }
    }
    out
}

/// The running `weft shim` processes of the lab whose state directory this is.
fn shims_of(state_dir: &std::path::Path) -> Vec<i32> {
    let pods = state_dir.join("pods");
    let canonical = std::fs::canonicalize(&pods).unwrap_or_else(|_| pods.clone());
    let Ok(rd) = std::fs::read_dir("/proc") else { return vec![] };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != std::process::id() as i32)
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
            let argv: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            is_shim_of(&argv, &pods) || is_shim_of(&argv, &canonical)
        })
        .collect()
}

/// Is this command line (`weft shim <pods dir>/<uid>/shim.json`) a shim of a pod under `pods`?
fn is_shim_of(argv: &[&[u8]], pods: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    match argv {
        [_, shim, spec, ..] if *shim == b"shim" => {
            std::path::Path::new(std::ffi::OsStr::from_bytes(spec)).starts_with(pods)
        }
        _ => false,
    }
}

/// Is `ns` one of the namespaces lab `lab` makes (and not another lab's whose name shares a prefix)?
pub fn is_lab_netns(lab: &str, ns: &str) -> bool {
    let Some(rest) = ns.strip_prefix(&format!("weft-{lab}-")) else { return false };
    rest == "underlay"
        || rest == "external"
        || rest.strip_prefix("node-").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        || rest
            .strip_prefix("pod-")
            .is_some_and(|u| u.len() == 13 && u.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'))
}

/// The nodes of a running lab, as recorded in its state directory.
pub fn nodes(state_dir: &std::path::Path) -> Vec<NodeNet> {
    let Ok(rd) = std::fs::read_dir(state_dir.join("nodes")) else { return vec![] };
    let mut v: Vec<NodeNet> = rd
        .flatten()
        .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path().join("node.json")).ok()?).ok())
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_shim_is_known_by_its_spec_path_in_the_labs_state_directory() {
        let pods = std::path::Path::new("/var/lib/weft/state/a/pods");
        let argv = |v: &[&'static str]| v.iter().map(|a| a.as_bytes()).collect::<Vec<&[u8]>>();
        assert!(super::is_shim_of(&argv(&["/usr/bin/weft", "shim", "/var/lib/weft/state/a/pods/u1/shim.json"]), pods));
        // Another lab whose name shares a prefix, another command, too few arguments: not ours.
        assert!(!super::is_shim_of(
            &argv(&["/usr/bin/weft", "shim", "/var/lib/weft/state/ab/pods/u1/shim.json"]),
            pods
        ));
        assert!(!super::is_shim_of(&argv(&["/usr/bin/weft", "daemon", "/var/lib/weft/state/a/pods/u1"]), pods));
        assert!(!super::is_shim_of(&argv(&["/usr/bin/weft", "shim"]), pods));
        assert!(!super::is_shim_of(&argv(&[]), pods));
    }

    #[test]
    fn lab_namespaces_are_told_apart() {
        assert!(super::is_lab_netns("a", "weft-a-node-1"));
        assert!(super::is_lab_netns("a", "weft-a-pod-0123abcd-4567"));
        assert!(super::is_lab_netns("a", "weft-a-underlay"));
        assert!(!super::is_lab_netns("a", "weft-a-b-underlay"));
        assert!(!super::is_lab_netns("a", "weft-a-node-x"));
    }
}
