//! nftables for the plugin: one masquerade table per network (made once, never per pod) and the
//! host-port map (`portMappings`). Whether a table exists is asked over nftables netlink (one
//! GETTABLE round trip, written by hand: no permissive-licence crate speaks nf_tables netlink);
//! changes are fed to `nft -f -` as one atomic transaction, only when something must change.

use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

use ipnet::IpNet;

use crate::runtime::output_within;
use crate::spec::{CniError, CniResult, HostPort, code, valid_cni_name};

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

/// Runs one `nft -f -` transaction; an `nft` still running after `timeout` is killed.
pub fn apply(script: &str, timeout: Duration) -> CniResult<()> {
    let mut cmd = Command::new("nft");
    cmd.args(["-f", "-"]);
    let out = output_within(&mut cmd, script.as_bytes().to_vec(), Some(timeout), "nft").map_err(|mut e| {
        if e.msg.starts_with("cannot run") {
            e.msg = "cannot run nft (install the nftables package)".into();
        }
        e
    })?;
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

/// The whole table as one transaction (declared fresh, so concurrent first ADDs converge). The
/// network name goes into a comment, so it is checked here as well as where it is parsed.
pub fn masq_script(family: Family, table: &str, network: &str, subnets: &[IpNet]) -> CniResult<String> {
    if !valid_cni_name(network) || !valid_cni_name(table) {
        return Err(CniError::config(format!("network name {network:?} cannot go into nftables: fix the name")));
    }
    let set = subnets.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ");
    let (fam, multicast) = match family {
        Family::Ip => ("ip", "224.0.0.0/4"),
        Family::Ip6 => ("ip6", "ff00::/8"),
    };
    Ok(format!(
        "add table {fam} {table}\ndelete table {fam} {table}\ntable {fam} {table} {{\n  comment \"weft-cni masquerade for network {network}\"\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    {fam} saddr {{ {set} }} {fam} daddr != {{ {set} }} {fam} daddr != {multicast} masquerade\n  }}\n}}\n"
    ))
}

/// Makes sure the network's masquerade table exists (one netlink query when it does).
pub fn ensure_masquerade(network: &str, subnets: &[IpNet], timeout: Duration) -> CniResult<()> {
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
        apply(&masq_script(family, &table, network, &fam_subnets)?, timeout)?;
    }
    Ok(())
}

/// The host-port table. Renamed from `weft-hostport` when hostIP matching came, so an existing
/// table always has both maps (its existence is all that is asked).
pub const HOSTPORT_TABLE: &str = "weft-hostports";

/// Two maps: `hostip-ports` for mappings with a hostIP (looked up first, with the destination
/// address in the key) and `hostports` for those on every local address.
fn hostport_base(family: Family) -> String {
    let (fam, addr) = match family {
        Family::Ip => ("ip", "ipv4_addr"),
        Family::Ip6 => ("ip6", "ipv6_addr"),
    };
    let to = "meta l4proto . th dport map @hostports";
    let to_ip = format!("{fam} daddr . meta l4proto . th dport map @hostip-ports");
    format!(
        "table {fam} {HOSTPORT_TABLE} {{\n  map hostports {{ type inet_proto . inet_service : {addr} . inet_service; }}\n  map hostip-ports {{ type {addr} . inet_proto . inet_service : {addr} . inet_service; }}\n  chain prerouting {{ type nat hook prerouting priority dstnat; policy accept; fib daddr type local dnat {fam} to {to_ip}; fib daddr type local dnat {fam} to {to}; }}\n  chain output {{ type nat hook output priority -100; policy accept; fib daddr type local dnat {fam} to {to_ip}; fib daddr type local dnat {fam} to {to}; }}\n}}\n"
    )
}

fn same_family(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

/// The add and delete scripts for a pod's host ports, from checked mappings only (every piece of
/// text is a number, an address or a fixed word). `have_table` says whether a family's table exists.
pub fn host_port_scripts(ports: &[HostPort], ips: &[IpAddr], have_table: impl Fn(Family) -> bool) -> (String, String) {
    let (mut add, mut del) = (String::new(), String::new());
    for family in [Family::Ip, Family::Ip6] {
        let Some(ip) = ips
            .iter()
            .copied()
            .find(|i| matches!((family, i), (Family::Ip, IpAddr::V4(_)) | (Family::Ip6, IpAddr::V6(_))))
        else {
            continue;
        };
        // A hostIP of the other family does not apply to this address (as in `portmap`).
        let mine = ports.iter().filter(|p| p.host_ip.is_none_or(|h| same_family(h, ip)));
        let (any, at): (Vec<&HostPort>, Vec<&HostPort>) = mine.partition(|p| p.host_ip.is_none());
        if any.is_empty() && at.is_empty() {
            continue;
        }
        if !have_table(family) {
            add.push_str(&hostport_base(family));
        }
        let fam = family.as_str();
        let elem = |p: &HostPort| format!("{} . {} : {ip} . {}", p.proto.as_str(), p.host_port, p.container_port);
        for (map, elems) in [
            ("hostports", any.iter().map(|p| elem(p)).collect::<Vec<_>>()),
            ("hostip-ports", at.iter().map(|p| format!("{} . {}", p.host_ip.unwrap(), elem(p))).collect()),
        ] {
            if elems.is_empty() {
                continue;
            }
            add.push_str(&format!("add element {fam} {HOSTPORT_TABLE} {map} {{ {} }}\n", elems.join(", ")));
            del.push_str(&format!("delete element {fam} {HOSTPORT_TABLE} {map} {{ {} }}\n", elems.join(", ")));
        }
    }
    (add, del)
}

/// Adds the pod's host ports; returns the script that removes them again (kept for DEL).
pub fn add_host_ports(ports: &[HostPort], ips: &[IpAddr], timeout: Duration) -> CniResult<String> {
    let (add, del) = host_port_scripts(ports, ips, |f| table_exists(f, HOSTPORT_TABLE).unwrap_or(false));
    if !add.is_empty() {
        apply(&add, timeout)?;
    }
    Ok(del)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn masquerade_rule_shape() {
        let s: Vec<IpNet> = vec!["10.244.1.0/24".parse().unwrap()];
        let t = masq_table("bridge", &s);
        assert!(t.starts_with("weft-masq-"));
        assert_ne!(t, masq_table("bridge", &["10.244.2.0/24".parse().unwrap()]));
        let script = masq_script(Family::Ip, &t, "bridge", &s).unwrap();
        assert!(
            script.contains(
                "ip saddr { 10.244.1.0/24 } ip daddr != { 10.244.1.0/24 } ip daddr != 224.0.0.0/4 masquerade"
            )
        );
    }

    #[test]
    fn a_network_name_never_reaches_nft_text_unchecked() {
        let s: Vec<IpNet> = vec!["10.244.1.0/24".parse().unwrap()];
        let evil = "x\" }\nflush ruleset\n#";
        let e = masq_script(Family::Ip, &masq_table(evil, &s), evil, &s).unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
    }

    fn ports(v: serde_json::Value) -> Vec<HostPort> {
        serde_json::from_value::<crate::spec::RuntimeConfig>(json!({ "portMappings": v })).unwrap().validate().unwrap()
    }

    #[test]
    fn host_ip_narrows_a_host_port_to_that_address() {
        let p = ports(json!([
            {"hostPort": 8080, "containerPort": 80},
            {"hostPort": 8081, "containerPort": 81, "protocol": "UDP", "hostIP": "192.168.1.5"},
            {"hostPort": 8082, "containerPort": 82, "hostIP": "fd00::5"},
            {"hostPort": 8083, "containerPort": 83, "hostIP": "0.0.0.0"},
        ]));
        let ips: Vec<IpAddr> = vec!["10.0.0.2".parse().unwrap(), "fd01::2".parse().unwrap()];
        let (add, del) = host_port_scripts(&p, &ips, |_| true);
        let want = [
            "add element ip weft-hostports hostports { tcp . 8080 : 10.0.0.2 . 80, tcp . 8083 : 10.0.0.2 . 83 }",
            "add element ip weft-hostports hostip-ports { 192.168.1.5 . udp . 8081 : 10.0.0.2 . 81 }",
            "add element ip6 weft-hostports hostports { tcp . 8080 : fd01::2 . 80, tcp . 8083 : fd01::2 . 83 }",
            "add element ip6 weft-hostports hostip-ports { fd00::5 . tcp . 8082 : fd01::2 . 82 }",
        ];
        assert_eq!(add.lines().collect::<Vec<_>>(), want);
        assert_eq!(del, add.replace("add element", "delete element"));
        // A missing table is declared first, with both maps and the hostIP lookup before the other.
        let (add, _) = host_port_scripts(&p[1..2], &ips, |_| false);
        assert!(add.starts_with("table ip weft-hostports {"), "{add}");
        let pre = add.lines().find(|l| l.contains("chain prerouting")).unwrap();
        assert!(pre.find("@hostip-ports").unwrap() < pre.find("@hostports").unwrap(), "{pre}");
        assert!(!add.contains("table ip6"), "no IPv6 mapping, no IPv6 table: {add}");
    }
}
