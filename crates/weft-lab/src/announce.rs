//! Layer-2 announcement of LoadBalancer IPs on the lab's underlay, in MetalLB's manner: for each
//! address one node, chosen by rendezvous hashing among the nodes that may take LoadBalancer
//! traffic (Ready, not labelled out; a cordoned node still may, as in Kubernetes) (for
//! `externalTrafficPolicy: Local`, among those with a ready local endpoint), takes the address
//! (so its kernel answers ARP for it and the proxy's DNAT takes the traffic) and sends a
//! gratuitous ARP; when that node goes away another one takes over and announces. Only
//! addresses of the pools (`kube-system/weft-config`, `loadBalancerPools`) are announced: a
//! Service's status is not trusted to name an address it may take over on the underlay (a
//! node's, or the external host's).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use weft_netlink::Netlink;

use crate::topology::NodeNet;

fn score(ip: Ipv4Addr, node: &str) -> u64 {
    weft_k8s::names::fnv1a(format!("{ip}/{node}").as_bytes())
}

/// Which node announces which addresses (pure). Addresses outside `pools` are never announced.
pub fn plan(
    services: &[Arc<Service>],
    nodes: &[Arc<Node>],
    slices: &[Arc<EndpointSlice>],
    pools: &BTreeSet<Ipv4Addr>,
) -> BTreeMap<String, BTreeSet<Ipv4Addr>> {
    let ready: Vec<String> =
        nodes.iter().filter(|n| weft_k8s::nodes::serves_load_balancers(n)).map(|n| n.name_any()).collect();
    let mut out: BTreeMap<String, BTreeSet<Ipv4Addr>> = BTreeMap::new();
    for s in services {
        // Most Services are not LoadBalancers: look, do not copy (a pass runs on every change).
        let Some(spec) = s.spec.as_ref().filter(|sp| sp.type_.as_deref() == Some("LoadBalancer")) else {
            continue;
        };
        let local = spec.external_traffic_policy.as_deref() == Some("Local");
        let with_endpoints: BTreeSet<String> = slices
            .iter()
            .filter(|sl| weft_k8s::slices::belongs_to(sl, &s.namespace().unwrap_or_default(), &s.name_any()))
            .flat_map(|sl| sl.endpoints.iter().flatten())
            .filter(|e| weft_k8s::endpoints::is_ready(e))
            .filter_map(|e| e.node_name.clone())
            .collect();
        let ips = s.status.as_ref().and_then(|st| st.load_balancer.as_ref()).and_then(|lb| lb.ingress.as_ref());
        let ips = ips.into_iter().flatten().filter_map(|i| i.ip.as_deref().and_then(|x| x.parse::<Ipv4Addr>().ok()));
        for ip in ips {
            if !pools.contains(&ip) {
                tracing::warn!(service = %format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any()), %ip, "not announcing a LoadBalancer address outside the pools (kube-system/weft-config loadBalancerPools)");
                continue;
            }
            let best = ready.iter().filter(|n| !local || with_endpoints.contains(*n)).max_by_key(|n| score(ip, n));
            if let Some(n) = best {
                out.entry(n.clone()).or_default().insert(ip);
            }
        }
    }
    out
}

/// A gratuitous ARP for `ip` from `ifname` in the namespace `ns`, so neighbours update their
/// caches at once on a takeover.
fn gratuitous_arp(ns: &std::path::Path, ifname: &str, mac: [u8; 6], ip: Ipv4Addr) -> std::io::Result<()> {
    let ifname = std::ffi::CString::new(ifname).map_err(std::io::Error::other)?;
    weft_netlink::ns::run_in(Some(ns), move || -> std::io::Result<()> {
        use nix::libc;
        unsafe {
            let ifindex = libc::if_nametoindex(ifname.as_ptr());
            if ifindex == 0 {
                return Err(std::io::Error::last_os_error());
            }
            let sock = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, (libc::ETH_P_ARP as u16).to_be() as i32);
            if sock < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut frame = vec![0xffu8; 6];
            frame.extend_from_slice(&mac);
            frame.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
            frame.extend_from_slice(&mac);
            frame.extend_from_slice(&ip.octets());
            frame.extend_from_slice(&[0u8; 6]);
            frame.extend_from_slice(&ip.octets());
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = (libc::ETH_P_ARP as u16).to_be();
            addr.sll_ifindex = ifindex as i32;
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);
            let r = libc::sendto(
                sock,
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
                &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            libc::close(sock);
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    })?
}

fn parse_mac(s: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (i, p) in s.split(':').take(6).enumerate() {
        m[i] = u8::from_str_radix(p, 16).unwrap_or(0);
    }
    m
}

async fn set_announced(node: &NodeNet, want: &BTreeSet<Ipv4Addr>, have: &mut BTreeSet<Ipv4Addr>) -> anyhow::Result<()> {
    if want == have {
        return Ok(());
    }
    let nl = Netlink::at(Some(&node.netns_path()))?;
    let lo = nl.must_link("lo").await?;
    let eth0 = nl.must_link("eth0").await?;
    for ip in have.difference(want) {
        nl.del_address(lo.index, IpNet::V4(Ipv4Net::new(*ip, 32)?)).await?;
    }
    for ip in want.difference(have) {
        nl.add_address(lo.index, IpNet::V4(Ipv4Net::new(*ip, 32)?)).await?;
        if let Err(e) = gratuitous_arp(&node.netns_path(), "eth0", parse_mac(&eth0.mac), *ip) {
            tracing::warn!(node = %node.name, %ip, error = %e, "gratuitous ARP");
        }
        tracing::info!(node = %node.name, %ip, "announcing");
    }
    *have = want.clone();
    Ok(())
}

/// The pools' addresses as `kube-system/weft-config` says now (none if it says nothing valid).
fn pools(cms: &[Arc<ConfigMap>]) -> BTreeSet<Ipv4Addr> {
    let spec = weft_k8s::config::value(cms, weft_k8s::config::LOAD_BALANCER_POOLS).unwrap_or_default();
    weft_controllers::lb::parse_pools(spec).unwrap_or_default().into_iter().collect()
}

pub async fn run(client: kube::Client, nodes: Vec<NodeNet>) {
    let wake = weft_watch::Wake::new();
    let svc_r = weft_watch::cached::<Service>(&client, wake.clone());
    let node_r = weft_watch::cached::<Node>(&client, wake.clone());
    let eps_r = weft_watch::cached::<EndpointSlice>(&client, wake.clone());
    let cm_r = weft_watch::cached::<ConfigMap>(&client, wake.clone());
    let _ = svc_r.wait_until_ready().await;
    let _ = cm_r.wait_until_ready().await;
    let _ = node_r.wait_until_ready().await;
    let _ = eps_r.wait_until_ready().await;
    let mut have: BTreeMap<String, BTreeSet<Ipv4Addr>> = BTreeMap::new();
    // A pass reads every Service: let a burst of changes settle first, as the controllers do
    // (without it, creating 10 000 Services ran 10 000 passes of 10 000).
    let controller = weft_watch::Controller::new("announcer")
        .wake_on(&wake)
        .resync(Duration::from_secs(5))
        .debounce(Duration::from_millis(20));
    controller
        .run(async move || {
            let pools = pools(&cm_r.state());
            let want = plan(&svc_r.state(), &node_r.state(), &eps_r.state(), &pools);
            for n in &nodes {
                let w = want.get(&n.name).cloned().unwrap_or_default();
                let h = have.entry(n.name.clone()).or_default();
                if let Err(e) = set_announced(n, &w, h).await {
                    tracing::warn!(node = %n.name, error = %format!("{e:#}"), "announce");
                }
            }
            Ok(())
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_pool_addresses_are_announced() {
        let svc: Service = serde_json::from_value(json!({"metadata": {"name": "lb", "namespace": "default"},
            "spec": {"type": "LoadBalancer"},
            // 172.18.0.2 is the external host's underlay address: a status naming it must not
            // make a node take it over.
            "status": {"loadBalancer": {"ingress": [{"ip": "172.18.255.1"}, {"ip": "172.18.0.2"}]}}}))
        .unwrap();
        let node: Node = serde_json::from_value(json!({"metadata": {"name": "node-1"},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}))
        .unwrap();
        let pools: BTreeSet<Ipv4Addr> =
            weft_controllers::lb::parse_pools("172.18.255.0/24").unwrap().into_iter().collect();
        let p = plan(&[Arc::new(svc)], &[Arc::new(node)], &[], &pools);
        assert_eq!(p["node-1"], BTreeSet::from(["172.18.255.1".parse().unwrap()]));
    }
}
