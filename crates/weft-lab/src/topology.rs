//! The lab's network: an underlay bridge in a namespace of its own, K nodes and one external host
//! attached to it by veth pairs, and pod traffic between nodes either routed on the underlay or
//! carried by a VXLAN overlay in flannel's manner (VNI 1, port 8472, one FDB and one neighbour
//! entry per remote node, MTU reduced by the 50-byte VXLAN overhead). All of it is built through
//! netlink inside namespaces named `weft-<lab>-...`; the root namespace is never touched.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, Result};
use ipnet::{IpNet, Ipv4Net};
use weft_netlink::route::Route;
use weft_netlink::{Netlink, Vxlan};

use crate::netns;

pub const UNDERLAY_MTU: u32 = 1500;
pub const VXLAN_OVERHEAD: u32 = 50;
pub const VXLAN_PORT: u16 = 8472;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overlay {
    Vxlan,
    Routed,
}

impl std::str::FromStr for Overlay {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "vxlan" => Ok(Overlay::Vxlan),
            "routed" => Ok(Overlay::Routed),
            o => Err(format!("overlay {o:?}: use vxlan or routed")),
        }
    }
}

/// One node's place in the lab.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct NodeNet {
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
}

impl NodeNet {
    pub fn netns_path(&self) -> std::path::PathBuf {
        netns::path(&self.netns)
    }
    /// The node's VTEP MAC: fixed, so restarts and peers agree without asking.
    pub fn vtep_mac(&self) -> [u8; 6] {
        let o = self.ip.octets();
        [0x0a, 0x58, 0xfe, o[1], o[2], o[3]]
    }
    /// The CNI bridge's MTU on this node.
    pub fn pod_mtu(overlay: Overlay) -> u32 {
        match overlay {
            Overlay::Vxlan => UNDERLAY_MTU - VXLAN_OVERHEAD,
            Overlay::Routed => UNDERLAY_MTU,
        }
    }
}

pub fn underlay_ns(lab: &str) -> String {
    format!("weft-{lab}-underlay")
}
pub fn external_ns(lab: &str) -> String {
    format!("weft-{lab}-external")
}
pub fn node_ns(lab: &str, node: &str) -> String {
    format!("weft-{lab}-{node}")
}

/// Underlay addresses: nodes from .10 up, the external host at .2.
pub fn node_ip(underlay: Ipv4Net, index: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(underlay.network()) + 10 + index)
}
pub fn external_ip(underlay: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(underlay.network()) + 2)
}

async fn netlink_in(ns: &str) -> Result<Netlink> {
    Netlink::at(Some(&netns::path(ns))).with_context(|| format!("netlink in {ns}"))
}

/// The underlay: a namespace holding bridge `br0`.
pub async fn build_underlay(lab: &str) -> Result<()> {
    let ns = underlay_ns(lab);
    netns::create(&ns)?;
    let u = netlink_in(&ns).await?;
    u.ensure_bridge("br0", Some(UNDERLAY_MTU), false).await?;
    Ok(())
}

/// Attaches a host (node or external) to the underlay: its `eth0` with `ip`, the other end a port
/// of `br0`. Idempotent.
pub async fn attach_host(lab: &str, host_ns: &str, port: &str, ip: Ipv4Addr, underlay: Ipv4Net) -> Result<()> {
    netns::create(host_ns)?;
    let u = netlink_in(&underlay_ns(lab)).await?;
    let h = netlink_in(host_ns).await?;
    if h.link("eth0").await?.is_none() {
        if let Some(stale) = u.link(port).await? {
            u.del_link(stale.index).await?;
        }
        let hf = File::open(netns::path(host_ns))?;
        u.create_veth(port, "eth0", &hf, Some(UNDERLAY_MTU)).await?;
    }
    let br = u.must_link("br0").await?;
    let p = u.must_link(port).await?;
    u.set_controller_up(p.index, br.index).await?;
    let e = h.must_link("eth0").await?;
    h.add_address(e.index, IpNet::V4(Ipv4Net::new(ip, underlay.prefix_len())?)).await?;
    h.set_up(e.index).await?;
    Ok(())
}

/// Node-to-node pod routes (routed) or the VXLAN device, FDB, neighbours and routes (vxlan).
pub async fn configure_node(node: &NodeNet, peers: &[NodeNet], overlay: Overlay, service_cidr: Ipv4Net) -> Result<()> {
    let path = node.netns_path();
    netns::sysctl(&path, "net.ipv4.ip_forward", "1")?;
    // Pods' traffic leaves through eth0 with their own source address; no reverse-path drops.
    let _ = netns::sysctl(&path, "net.ipv4.conf.all.rp_filter", "0");
    let h = netlink_in(&node.netns).await?;
    let eth0 = h.must_link("eth0").await?;
    // A route for Service IPs, so the node's own connections reach the proxy's DNAT (which
    // happens after the routing decision for locally made packets).
    h.add_route(IpNet::V4(service_cidr), None, eth0.index).await?;
    match overlay {
        Overlay::Routed => {
            for p in peers.iter().filter(|p| p.name != node.name) {
                h.add_route(IpNet::V4(p.pod_cidr), Some(IpAddr::V4(p.ip)), eth0.index).await?;
            }
        }
        Overlay::Vxlan => {
            let vx = match h.link("flannel.1").await? {
                Some(l) => l,
                None => {
                    h.create_vxlan(&Vxlan {
                        name: "flannel.1".into(),
                        vni: 1,
                        dev: eth0.index,
                        local: node.ip,
                        port: VXLAN_PORT,
                        mtu: UNDERLAY_MTU - VXLAN_OVERHEAD,
                        mac: node.vtep_mac(),
                    })
                    .await?;
                    h.must_link("flannel.1").await?
                }
            };
            // flannel gives the VTEP the .0 address of the node's pod CIDR.
            h.add_address(vx.index, IpNet::V4(Ipv4Net::new(node.pod_cidr.network(), 32)?)).await?;
            h.set_up(vx.index).await?;
            for p in peers.iter().filter(|p| p.name != node.name) {
                let gw = p.pod_cidr.network();
                let mac = p.vtep_mac();
                h.set_neighbour(vx.index, IpAddr::V4(gw), mac).await?;
                h.set_fdb(vx.index, mac, IpAddr::V4(p.ip)).await?;
                let route = Route { onlink: true, ..Route::new(IpNet::V4(p.pod_cidr), Some(IpAddr::V4(gw)), vx.index) };
                h.ensure_route(&route).await?;
            }
        }
    }
    Ok(())
}

/// The CNI configuration a node's runtime uses: weft-cni with host-local over the node's podCIDR.
pub fn cni_conflist(node: &NodeNet, overlay: Overlay, ipam_dir: &str) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": "1.1.0",
        "name": "weft",
        "plugins": [{
            "type": "weft-cni",
            "bridge": "cni0",
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "mtu": NodeNet::pod_mtu(overlay),
            "capabilities": {"portMappings": true},
            "ipam": {
                "type": "host-local",
                "dataDir": ipam_dir,
                "ranges": [[{"subnet": node.pod_cidr.to_string()}]],
                "routes": [{"dst": "0.0.0.0/0"}]
            }
        }]
    })
}
