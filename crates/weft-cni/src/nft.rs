//! nftables for the plugin: one masquerade table per network (made once, never per pod) and the
//! host-port map (`portMappings`). Whether a table exists is asked over nftables netlink (one
//! GETTABLE round trip, written by hand: no permissive-licence crate speaks nf_tables netlink);
//! changes are fed to `nft -f -` as one atomic transaction, only when something must change.

use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use ipnet::IpNet;

use crate::spec::{CniError, CniResult, PortMapping, code};

const NETLINK_NETFILTER: isize = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFTA_TABLE_NAME: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;

#[derive(Clone, Copy)]
pub enum Family {
    Ip,
    Ip6,
}

impl Family {
    fn nfproto(self) -> u8 {
        match self {
            Family::Ip => 2,
            Family::Ip6 => 10,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
        }
    }
}

/// Does `table` exist in this network namespace? One netlink request, no table dump.
pub fn table_exists(family: Family, table: &str) -> std::io::Result<bool> {
    let mut sock = netlink_sys::Socket::new(NETLINK_NETFILTER)?;
    sock.bind_auto()?;
    let mut name = table.as_bytes().to_vec();
    name.push(0);
    let attr_len = 4 + name.len();
    let padded = (attr_len + 3) & !3;
    let total = 16 + 4 + padded;
    let mut msg = Vec::with_capacity(total);
    msg.extend_from_slice(&(total as u32).to_ne_bytes());
    msg.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE).to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
    msg.extend_from_slice(&[family.nfproto(), 0, 0, 0]); // nfgenmsg: family, version, res_id
    msg.extend_from_slice(&(attr_len as u16).to_ne_bytes());
    msg.extend_from_slice(&NFTA_TABLE_NAME.to_ne_bytes());
    msg.extend_from_slice(&name);
    msg.resize(total, 0);
    sock.send(&msg, 0)?;
    let mut found = false;
    loop {
        let mut buf = Vec::with_capacity(65536);
        let n = sock.recv(&mut buf, 0)?;
        let mut off = 0;
        while off + 16 <= n {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
            let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap());
            if len < 16 {
                return Ok(found);
            }
            if ty == NLMSG_ERROR {
                let err = i32::from_ne_bytes(buf[off + 16..off + 20].try_into().unwrap());
                return match err {
                    0 => Ok(found),
                    e if e == -libc_enoent() => Ok(false),
                    e => Err(std::io::Error::from_raw_os_error(-e)),
                };
            }
            if ty == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE {
                found = true;
            }
            off += (len + 3) & !3;
        }
    }
}

fn libc_enoent() -> i32 {
    nix::errno::Errno::ENOENT as i32
}

/// Runs one `nft -f -` transaction.
pub fn apply(script: &str) -> CniResult<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CniError::new(code::IO, "cannot run nft (install the nftables package)", e.to_string()))?;
    child.stdin.take().unwrap().write_all(script.as_bytes()).map_err(|e| CniError::io("writing to nft", e))?;
    let out = child.wait_with_output().map_err(|e| CniError::io("waiting for nft", e))?;
    if !out.status.success() {
        return Err(CniError::new(
            code::IO,
            "nftables rejected the rules",
            format!("{}\n{script}", String::from_utf8_lossy(&out.stderr).trim()),
        ));
    }
    Ok(())
}

fn short_hash(s: &str) -> String {
    // FNV-1a: a stable name, not a security boundary.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{:08x}", h as u32)
}

/// The masquerade table of a network: its name carries the network and subnets, so a changed
/// subnet gets a fresh table instead of stale rules.
pub fn masq_table(network: &str, subnets: &[IpNet]) -> String {
    let key = format!("{network}|{}", subnets.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(","));
    format!("weft-masq-{}", short_hash(&key))
}

/// The whole table as one transaction (declared fresh, so concurrent first ADDs converge).
pub fn masq_script(family: Family, table: &str, network: &str, subnets: &[IpNet]) -> String {
    let set = subnets.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ");
    let (fam, multicast) = match family {
        Family::Ip => ("ip", "224.0.0.0/4"),
        Family::Ip6 => ("ip6", "ff00::/8"),
    };
    format!(
        "add table {fam} {table}\ndelete table {fam} {table}\ntable {fam} {table} {{\n  comment \"weft-cni masquerade for network {network}\"\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    {fam} saddr {{ {set} }} {fam} daddr != {{ {set} }} {fam} daddr != {multicast} masquerade\n  }}\n}}\n"
    )
}

/// Makes sure the network's masquerade table exists (one netlink query when it does).
pub fn ensure_masquerade(network: &str, subnets: &[IpNet]) -> CniResult<()> {
    for family in [Family::Ip, Family::Ip6] {
        let fam_subnets: Vec<IpNet> = subnets
            .iter()
            .filter(|s| matches!((family, s), (Family::Ip, IpNet::V4(_)) | (Family::Ip6, IpNet::V6(_))))
            .map(|s| s.trunc())
            .collect();
        if fam_subnets.is_empty() {
            continue;
        }
        let table = masq_table(network, &fam_subnets);
        if table_exists(family, &table).unwrap_or(false) {
            continue;
        }
        apply(&masq_script(family, &table, network, &fam_subnets))?;
    }
    Ok(())
}

const HOSTPORT_TABLE: &str = "weft-hostport";

fn hostport_base(family: Family) -> String {
    let (fam, addr) = match family {
        Family::Ip => ("ip", "ipv4_addr"),
        Family::Ip6 => ("ip6", "ipv6_addr"),
    };
    format!(
        "table {fam} {HOSTPORT_TABLE} {{\n  map hostports {{ type inet_proto . inet_service : {addr} . inet_service; }}\n  chain prerouting {{ type nat hook prerouting priority dstnat; policy accept; fib daddr type local dnat {fam} to meta l4proto . th dport map @hostports; }}\n  chain output {{ type nat hook output priority -100; policy accept; fib daddr type local dnat {fam} to meta l4proto . th dport map @hostports; }}\n}}\n"
    )
}

fn element(m: &PortMapping, ip: IpAddr) -> String {
    format!("{} . {} : {} . {}", m.protocol.to_lowercase(), m.host_port, ip, m.container_port)
}

/// Adds the pod's host ports; returns the script that removes them again (kept for DEL).
pub fn add_host_ports(maps: &[PortMapping], ips: &[IpAddr]) -> CniResult<String> {
    let mut add = String::new();
    let mut del = String::new();
    for family in [Family::Ip, Family::Ip6] {
        let Some(ip) =
            ips.iter().find(|i| matches!((family, i), (Family::Ip, IpAddr::V4(_)) | (Family::Ip6, IpAddr::V6(_))))
        else {
            continue;
        };
        let elems: Vec<String> = maps
            .iter()
            .filter(|m| {
                m.host_ip
                    .as_deref()
                    .is_none_or(|h| h.is_empty() || h.parse::<IpAddr>().is_ok_and(|h| h.is_ipv4() == ip.is_ipv4()))
            })
            .map(|m| element(m, *ip))
            .collect();
        if elems.is_empty() {
            continue;
        }
        let fam = family.as_str();
        if !table_exists(family, HOSTPORT_TABLE).unwrap_or(false) {
            add.push_str(&hostport_base(family));
        }
        add.push_str(&format!("add element {fam} {HOSTPORT_TABLE} hostports {{ {} }}\n", elems.join(", ")));
        del.push_str(&format!("delete element {fam} {HOSTPORT_TABLE} hostports {{ {} }}\n", elems.join(", ")));
    }
    for m in maps {
        if !["tcp", "udp", "sctp"].contains(&m.protocol.to_lowercase().as_str()) {
            return Err(CniError::config(format!("portMappings: protocol {:?} is not tcp, udp or sctp", m.protocol)));
        }
    }
    if !add.is_empty() {
        apply(&add)?;
    }
    Ok(del)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masquerade_rule_shape() {
        let s: Vec<IpNet> = vec!["10.244.1.0/24".parse().unwrap()];
        let t = masq_table("bridge", &s);
        assert!(t.starts_with("weft-masq-"));
        assert_ne!(t, masq_table("bridge", &["10.244.2.0/24".parse().unwrap()]));
        let script = masq_script(Family::Ip, &t, "bridge", &s);
        assert!(
            script.contains(
                "ip saddr { 10.244.1.0/24 } ip daddr != { 10.244.1.0/24 } ip daddr != 224.0.0.0/4 masquerade"
            )
        );
    }
}
