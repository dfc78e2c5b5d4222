//! `weft exec`: run a command inside a pod (the namespaces of its running shim, as `kubectl
//! exec` enters it: network, mount with the pod's resolv.conf, UTS, PID; a pod whose shim is
//! gone: its network namespace with the pod's resolv.conf and hostname), on a node, or on the
//! external host. It reads the kubelet's sandbox records, so it works while the daemon is down
//! too.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use weft_netlink::ns::{PodEntry, ProcessNamespaces, command_in_pod};

use crate::cli::ExecArgs;
use crate::lab::{self, Lab};

pub fn run(name: Option<String>, a: ExecArgs) -> Result<ExitCode> {
    let lab = lab::select(name.as_deref())?;
    let mut cmd = std::process::Command::new(&a.command[0]);
    cmd.args(&a.command[1..]);
    // A running pod is entered as `kubectl exec` enters it: the namespaces of its shim (network,
    // mount, UTS and its PID namespace), so what runs sees what the containers see.
    if a.pod.is_some()
        && let Some(sb) = running_pod(&lab, a.pod.as_deref(), a.namespace.as_deref())
    {
        let ns = ProcessNamespaces::of(sb.shim_pid).context("opening the pod shim's namespaces")?;
        ns.command(&mut cmd, None).context("entering the pod")?;
        let program = a.command[0].clone();
        let status = ns.spawn(move || cmd.status()).context("entering the pod's PID namespace")?;
        let status = status.with_context(|| format!("running {program:?}"))?;
        return Ok(ExitCode::from(status.code().unwrap_or(1).clamp(0, 255) as u8));
    }
    let entry = where_to_run(&lab, a.pod, a.namespace, a.node, a.external)?;
    command_in_pod(&mut cmd, &entry).with_context(|| format!("entering {}", entry.netns.display()))?;
    let status = cmd.status().with_context(|| format!("running {:?}", a.command[0]))?;
    Ok(ExitCode::from(status.code().unwrap_or(1).clamp(0, 255) as u8))
}

/// The sandbox of a pod whose shim runs (from the kubelet's records).
fn running_pod(lab: &Lab, pod: Option<&str>, ns: Option<&str>) -> Option<weft_lab::kubelet::Sandbox> {
    let (pod, ns) = (pod?, ns.unwrap_or("default"));
    weft_lab::kubelet::all_sandboxes(&lab.dir)
        .into_iter()
        .find(|s| s.name == pod && s.namespace == ns)
        .filter(weft_lab::kubelet::shim_alive)
}

/// The namespace to enter (a pod's, a node's or the external host's), with the pod's
/// resolv.conf and the hostname that go with it.
fn where_to_run(
    lab: &Lab,
    pod: Option<String>,
    ns: Option<String>,
    node: Option<String>,
    external: bool,
) -> Result<PodEntry> {
    if external {
        let netns = weft_lab::netns::path(&weft_lab::topology::external_ns(&lab.name));
        return Ok(PodEntry { netns, resolv_conf: None, hostname: None });
    }
    if let Some(node) = node {
        let n = weft_lab::nodes(&lab.dir)
            .into_iter()
            .find(|n| n.name == node)
            .with_context(|| format!("lab {:?} has no node {node:?}: see `weft get nodes`", lab.name))?;
        return Ok(PodEntry { netns: n.netns_path(), resolv_conf: None, hostname: Some(node) });
    }
    let pod = pod.context("name the pod: `weft exec POD -- CMD` (or --node NODE, or --external)")?;
    let ns = ns.unwrap_or("default".into());
    // From the kubelet's records, so exec works while the daemon is down too.
    let sb = weft_lab::kubelet::all_sandboxes(&lab.dir)
        .into_iter()
        .find(|s| s.name == pod && s.namespace == ns)
        .with_context(|| {
            format!("pod {ns}/{pod} has no sandbox: is it scheduled and running? (weft get pods -o wide)")
        })?;
    let resolv: PathBuf = weft_lab::kubelet::pod_dir(&lab.dir, &sb.uid).join("resolv.conf");
    let hostname = if sb.host_network { sb.node.clone() } else { pod };
    Ok(PodEntry { netns: weft_lab::netns::path(&sb.netns), resolv_conf: Some(resolv), hostname: Some(hostname) })
}
