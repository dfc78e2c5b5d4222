//! The lab: a whole multi-node cluster network on one machine, built from network namespaces
//! (`topology`), with a kubelet per node (`kubelet`) that runs pods through the CNI plugin and a
//! shim per pod (`shim`), and built-in servers standing in for container images (`builtin`).
//!
//! Architecture invariant: everything the lab makes is a network namespace named
//! `weft-<lab>-...` (and what lives inside), or a file in the lab's state directory, or a process
//! recorded there; the root namespace's addresses, routes, links and firewall are never touched.

pub mod announce;
pub mod builtin;
pub mod kubelet;
pub mod lifecycle;
pub mod logs;
pub mod netns;
pub mod pod_events;
pub mod shim;
pub mod streams;
pub mod topology;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
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
    progress("building the underlay network");
    topology::build_underlay(&lab).await?;
    let ext = topology::external_ns(&lab);
    topology::attach_host(&lab, &ext, "ext", topology::external_ip(spec.underlay), spec.underlay).await?;
    let nodes_api: Api<Node> = Api::all(client.clone());
    for i in 0..spec.nodes {
        let name = node_name(i);
        progress(&format!("creating node {name}"));
        let ip = topology::node_ip(spec.underlay, i);
        topology::attach_host(&lab, &topology::node_ns(&lab, &name), &name, ip, spec.underlay).await?;
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
        }});
        nodes_api.patch_status(&name, &PatchParams::default(), &Patch::Merge(status)).await?;
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
        tokio::spawn(kubelet::Kubelet::new(ctx.clone(), n.clone(), client.clone()).run());
    }
    Ok(nets)
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

/// Removes everything a lab made, also after a crash: pod processes, every `weft-<lab>-`
/// namespace (and so every link and rule inside), the pods' state.
pub fn destroy(lab: &str, state_dir: &std::path::Path) -> Result<()> {
    for sb in kubelet::all_sandboxes(state_dir) {
        kubelet::kill_shim(&sb, Duration::from_secs(2));
    }
    for ns in netns::list(&format!("weft-{lab}-")) {
        if is_lab_netns(lab, &ns) {
            // Whatever still runs in it (a shim started but not yet recorded when its daemon
            // was killed) would keep the namespace alive after its name is gone.
            for pid in netns::pids(&ns) {
                if pid != std::process::id() as i32 {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                }
            }
            netns::delete(&ns)?;
        }
    }
    Ok(())
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
    fn lab_namespaces_are_told_apart() {
        assert!(super::is_lab_netns("a", "weft-a-node-1"));
        assert!(super::is_lab_netns("a", "weft-a-pod-0123abcd-4567"));
        assert!(super::is_lab_netns("a", "weft-a-underlay"));
        assert!(!super::is_lab_netns("a", "weft-a-b-underlay"));
        assert!(!super::is_lab_netns("a", "weft-a-node-x"));
    }
}
