//! nftables for the plugin: one masquerade table per network (made once, never per pod) and the
//! host-port maps (`portMappings`), all through weft-netlink's nf_tables codec: no `nft` binary.
//! Whether a table exists is one GETTABLE round trip; a change is one atomic transaction, sent
//! only when something must change. Every key and rule is built from checked, parsed values.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use weft_netlink::nft::{
    Batch, Chain, ChainType, CmpOp, Elem, ElemData, Expr, Family, FibResult, FieldType, Hook, Key, MetaKey, NatKind,
    PayloadBase, Reg, Rule, Set, SetData, Table, addr_type, fib_flags, priority, table_exists,
};

use crate::spec::{CniError, CniResult, HostPort, Proto, code, valid_cni_name};

fn family_of(ip: &IpAddr) -> Family {
    if ip.is_ipv4() { Family::Ip } else { Family::Ip6 }
}

fn kernel_error(what: &str, e: weft_netlink::Error) -> CniError {
    CniError::new(code::IO, format!("nftables refused {what}"), e.to_string())
}

/// The masquerade table of a network: its name carries the network and subnets, so a changed
/// subnet gets a fresh table instead of stale rules.
pub fn masq_table(network: &str, subnets: &[IpNet]) -> String {
    let key = format!("{network}|{}", subnets.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(","));
    format!("weft-masq-{}", weft_k8s::names::short_hex(&key))
}

/// Matches the packet's source (`saddr`) or destination address against a prefix, as nft does:
/// the prefix's whole bytes compared, a partial last byte masked first.
fn prefix_match(net: &IpNet, saddr: bool, op: CmpOp) -> Vec<Expr> {
    let (offset, addr): (u32, Vec<u8>) = match net {
        IpNet::V4(n) => (if saddr { 12 } else { 16 }, n.network().octets().to_vec()),
        IpNet::V6(n) => (if saddr { 8 } else { 24 }, n.network().octets().to_vec()),
    };
    let bits = u32::from(net.prefix_len());
    let dreg = Reg::slot(0);
    if bits % 8 == 0 {
        let len = bits / 8;
        let load = Expr::Payload { base: PayloadBase::Network, offset, len, dreg };
        return vec![load, Expr::Cmp { sreg: dreg, op, data: addr[..len as usize].to_vec() }];
    }
    let mask: Vec<u8> = match net {
        IpNet::V4(n) => n.netmask().octets().to_vec(),
        IpNet::V6(n) => n.netmask().octets().to_vec(),
    };
    let len = addr.len() as u32;
    vec![
        Expr::Payload { base: PayloadBase::Network, offset, len, dreg },
        Expr::Bitwise { sreg: dreg, dreg, mask, xor: vec![0; len as usize] },
        Expr::Cmp { sreg: dreg, op, data: addr },
    ]
}

/// The masquerade rules: traffic from one of the network's subnets to anywhere outside them
/// (multicast aside) leaves with the node's address. One rule per subnet (an OR of subnets).
fn masq_rules(family: Family, subnets: &[IpNet]) -> Vec<Rule> {
    let multicast: IpNet = match family {
        Family::Ip6 => "ff00::/8".parse().expect("a fixed prefix"),
        _ => "224.0.0.0/4".parse().expect("a fixed prefix"),
    };
    subnets
        .iter()
        .filter(|s| s.prefix_len() > 0) // a /0 network has no outside: nothing to masquerade.
        .map(|s| {
            let mut exprs = prefix_match(s, true, CmpOp::Eq);
            for d in subnets.iter().chain([&multicast]) {
                exprs.extend(prefix_match(d, false, CmpOp::Neq));
            }
            exprs.push(Expr::Masquerade);
            Rule { chain: "postrouting".into(), exprs }
        })
        .collect()
}

/// The whole masquerade table as one transaction: declared fresh (add, delete, add), so that
/// concurrent first ADDs converge on one table with one copy of each rule.
pub fn masq_batch(family: Family, table: &str, network: &str, subnets: &[IpNet]) -> CniResult<Batch> {
    if !valid_cni_name(network) || !valid_cni_name(table) {
        return Err(CniError::config(format!("network name {network:?} cannot go into nftables: fix the name")));
    }
    let mut b = Batch::new();
    let mut t = Table::new(family, table);
    b.add_table(&t);
    b.delete_table(family, table);
    t.comment = Some(format!("weft-cni masquerade for network {network}"));
    b.add_table(&t);
    b.add_chain(family, table, &Chain::base("postrouting", ChainType::Nat, Hook::Postrouting, priority::SRCNAT));
    for r in masq_rules(family, subnets) {
        b.add_rule(family, table, &r);
    }
    Ok(b)
}

/// Makes sure the network's masquerade table exists (one netlink query when it does).
pub fn ensure_masquerade(network: &str, subnets: &[IpNet]) -> CniResult<()> {
    for family in [Family::Ip, Family::Ip6] {
        let fam_subnets: Vec<IpNet> =
            subnets.iter().filter(|s| family_of(&s.addr()) == family).map(|s| s.trunc()).collect();
        if fam_subnets.is_empty() {
            continue;
        }
        let table = masq_table(network, &fam_subnets);
        if table_exists(None, family, &table).unwrap_or(false) {
            continue;
        }
        masq_batch(family, &table, network, &fam_subnets)?
            .commit()
            .map_err(|e| kernel_error("the masquerade table", e))?;
    }
    Ok(())
}

/// The host-port table. Renamed from `weft-hostport` when hostIP matching came, so an existing
/// table always has both maps (its existence is all that is asked).
pub const HOSTPORT_TABLE: &str = "weft-hostports";
const ANY_MAP: &str = "hostports";
const AT_IP_MAP: &str = "hostip-ports";

fn addr_field(family: Family) -> FieldType {
    if family == Family::Ip6 { FieldType::IPV6 } else { FieldType::IPV4 }
}

/// `fib daddr type local dnat to <key> map @<map>`, as nft encodes it: with a hostIP the key
/// starts with the destination address (`hostip-ports`), without it is protocol and port.
fn dnat_rule(family: Family, chain: &str, map: &str, with_addr: bool) -> Rule {
    let (addr_len, daddr_at) = if family == Family::Ip6 { (16, 24) } else { (4, 16) };
    // Registers as nft allocates them: the address fills slots from 0, then one slot per field.
    let first = if with_addr { addr_len / 4 } else { 0 };
    let mut exprs = vec![
        Expr::Fib { flags: fib_flags::DADDR, result: FibResult::AddrType, dreg: Reg::slot(0) },
        Expr::cmp_u32(Reg::slot(0), CmpOp::Eq, addr_type::LOCAL),
    ];
    if with_addr {
        exprs.push(Expr::Payload { base: PayloadBase::Network, offset: daddr_at, len: addr_len, dreg: Reg::slot(0) });
    }
    exprs.push(Expr::Meta { key: MetaKey::L4Proto, dreg: Reg::slot(first) });
    exprs.push(Expr::Payload { base: PayloadBase::Transport, offset: 2, len: 2, dreg: Reg::slot(first + 1) });
    exprs.push(Expr::Lookup { set: map.into(), sreg: Reg::slot(0), dreg: Some(Reg::slot(0)), invert: false });
    // The map's data: the pod's address, then its port in the next slot.
    exprs.push(Expr::Nat {
        kind: NatKind::Dnat,
        family,
        addr: Some(Reg::slot(0)),
        proto: Some(Reg::slot(addr_len / 4)),
    });
    Rule { chain: chain.into(), exprs }
}

/// Two maps (`hostip-ports`, looked up first, for mappings with a hostIP; `hostports` for those on
/// every local address) and the chains that use them, for traffic from elsewhere (prerouting) and
/// from the node itself (output). Chains are flushed before their rules go in, so two plugins
/// that both found no table leave one copy of each rule.
fn add_hostport_base(b: &mut Batch, family: Family) {
    let addr = addr_field(family);
    let data = SetData::Value(vec![addr, FieldType::PORT]);
    b.add_table(&Table::new(family, HOSTPORT_TABLE));
    b.add_set(family, HOSTPORT_TABLE, &Set::map(ANY_MAP, &[FieldType::PROTO, FieldType::PORT], data.clone()));
    b.add_set(family, HOSTPORT_TABLE, &Set::map(AT_IP_MAP, &[addr, FieldType::PROTO, FieldType::PORT], data));
    for (chain, hook) in [("prerouting", Hook::Prerouting), ("output", Hook::Output)] {
        b.add_chain(family, HOSTPORT_TABLE, &Chain::base(chain, ChainType::Nat, hook, priority::DSTNAT));
        b.flush_chain(family, HOSTPORT_TABLE, chain);
        b.add_rule(family, HOSTPORT_TABLE, &dnat_rule(family, chain, AT_IP_MAP, true));
        b.add_rule(family, HOSTPORT_TABLE, &dnat_rule(family, chain, ANY_MAP, false));
    }
}

fn proto_number(p: Proto) -> u8 {
    match p {
        Proto::Tcp => 6,
        Proto::Udp => 17,
        Proto::Sctp => 132,
    }
}

fn with_addr(k: Key, ip: IpAddr) -> Key {
    match ip {
        IpAddr::V4(a) => k.ipv4(a),
        IpAddr::V6(a) => k.ipv6(a),
    }
}

/// One host-port map entry of a pod, as kept for DEL: enough to delete it again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPortEntry {
    /// `ip` or `ip6`.
    pub family: String,
    pub map: String,
    /// The element's key as the kernel holds it (hex).
    pub key: String,
}

/// The element additions of a pod's host ports, per family: (family, map, element).
fn host_port_elements(ports: &[HostPort], ips: &[IpAddr]) -> Vec<(Family, &'static str, Elem)> {
    let mut out = vec![];
    for family in [Family::Ip, Family::Ip6] {
        let Some(ip) = ips.iter().copied().find(|i| family_of(i) == family) else { continue };
        // A hostIP of the other family does not apply to this address (as in `portmap`).
        for p in ports.iter().filter(|p| p.host_ip.is_none_or(|h| family_of(&h) == family)) {
            let key = Key::new().proto(proto_number(p.proto)).port(p.host_port);
            let (map, key) = match p.host_ip {
                Some(h) => (AT_IP_MAP, with_addr(Key::new(), h).proto(proto_number(p.proto)).port(p.host_port)),
                None => (ANY_MAP, key),
            };
            let data = with_addr(Key::new(), ip).port(p.container_port).bytes();
            out.push((family, map, Elem { key: key.bytes(), key_end: None, data: Some(ElemData::Value(data)) }));
        }
    }
    out
}

/// The transaction that adds a pod's host ports (declaring a family's table first where
/// `have_table` says it is missing), and the entries to keep for DEL.
pub fn host_ports_batch(
    ports: &[HostPort],
    ips: &[IpAddr],
    have_table: impl Fn(Family) -> bool,
) -> (Batch, Vec<HostPortEntry>) {
    let mut b = Batch::new();
    let mut undo = vec![];
    let elems = host_port_elements(ports, ips);
    for family in [Family::Ip, Family::Ip6] {
        let mine: Vec<_> = elems.iter().filter(|(f, _, _)| *f == family).collect();
        if mine.is_empty() {
            continue;
        }
        if !have_table(family) {
            add_hostport_base(&mut b, family);
        }
        for (_, map, e) in mine {
            b.add_elements(family, HOSTPORT_TABLE, map, std::slice::from_ref(e));
            undo.push(HostPortEntry { family: family.as_str().into(), map: (*map).into(), key: hex::encode(&e.key) });
        }
    }
    (b, undo)
}

/// Adds the pod's host ports; returns what DEL needs to remove them again.
pub fn add_host_ports(ports: &[HostPort], ips: &[IpAddr]) -> CniResult<Vec<HostPortEntry>> {
    let (b, undo) = host_ports_batch(ports, ips, |f| table_exists(None, f, HOSTPORT_TABLE).unwrap_or(false));
    if !b.is_empty() {
        b.commit().map_err(|e| kernel_error("the host ports", e))?;
    }
    Ok(undo)
}

/// Removes host-port entries kept by [`add_host_ports`]. Entries already gone (or a table
/// already gone) are not an error: DEL and GC must be repeatable. Malformed entries are skipped.
pub fn remove_host_ports(entries: &[HostPortEntry]) {
    for e in entries {
        let family = match e.family.as_str() {
            "ip" => Family::Ip,
            "ip6" => Family::Ip6,
            _ => continue,
        };
        if e.map != ANY_MAP && e.map != AT_IP_MAP {
            continue;
        }
        let Ok(key) = hex::decode(&e.key) else { continue };
        let mut b = Batch::new();
        b.delete_elements(family, HOSTPORT_TABLE, &e.map, &[Elem::key(key)]);
        // One element per transaction, so one already gone does not keep the others in.
        let _ = b.commit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn masquerade_rules_match_the_subnet_and_skip_its_inside_and_multicast() {
        let s: Vec<IpNet> = vec!["10.244.1.0/24".parse().unwrap()];
        let t = masq_table("bridge", &s);
        assert!(t.starts_with("weft-masq-"));
        assert_ne!(t, masq_table("bridge", &["10.244.2.0/24".parse().unwrap()]));
        let rules = masq_rules(Family::Ip, &s);
        assert_eq!(rules.len(), 1);
        let r = &rules[0].exprs;
        // saddr 10.244.1.0/24: three bytes at offset 12, equal.
        assert_eq!(r[0], Expr::Payload { base: PayloadBase::Network, offset: 12, len: 3, dreg: Reg::slot(0) });
        assert_eq!(r[1], Expr::Cmp { sreg: Reg::slot(0), op: CmpOp::Eq, data: vec![10, 244, 1] });
        // daddr != the subnet, daddr != 224.0.0.0/4 (a partial byte: masked).
        assert_eq!(r[3], Expr::Cmp { sreg: Reg::slot(0), op: CmpOp::Neq, data: vec![10, 244, 1] });
        assert!(matches!(&r[5], Expr::Bitwise { mask, .. } if mask == &vec![240, 0, 0, 0]));
        assert_eq!(r[6], Expr::Cmp { sreg: Reg::slot(0), op: CmpOp::Neq, data: vec![224, 0, 0, 0] });
        assert_eq!(r.last(), Some(&Expr::Masquerade));
        // A /0 subnet has no outside: no rule.
        assert!(masq_rules(Family::Ip, &["0.0.0.0/0".parse().unwrap()]).is_empty());
    }

    #[test]
    fn a_network_name_never_reaches_nftables_unchecked() {
        let s: Vec<IpNet> = vec!["10.244.1.0/24".parse().unwrap()];
        let evil = "x\" }\nflush ruleset\n#";
        let e = masq_batch(Family::Ip, &masq_table(evil, &s), evil, &s).err().unwrap();
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
        let got: Vec<(Family, &str, String, String)> = host_port_elements(&p, &ips)
            .into_iter()
            .map(|(f, m, e)| {
                let Some(ElemData::Value(d)) = e.data else { panic!("a map element has data") };
                (f, m, hex::encode(e.key), hex::encode(d))
            })
            .collect();
        let want = [
            // tcp . 8080 : 10.0.0.2 . 80 (each field in a 4-byte slot; ports in network order)
            (Family::Ip, "hostports", "060000001f900000", "0a00000200500000"),
            // 192.168.1.5 . udp . 8081 : 10.0.0.2 . 81
            (Family::Ip, "hostip-ports", "c0a80105110000001f910000", "0a00000200510000"),
            (Family::Ip, "hostports", "060000001f930000", "0a00000200530000"),
            (Family::Ip6, "hostports", "060000001f900000", "fd01000000000000000000000000000200500000"),
            // fd00::5 . tcp . 8082 : fd01::2 . 82
            (
                Family::Ip6,
                "hostip-ports",
                "fd000000000000000000000000000005060000001f920000",
                "fd01000000000000000000000000000200520000",
            ),
            (Family::Ip6, "hostports", "060000001f930000", "fd01000000000000000000000000000200530000"),
        ];
        let want: Vec<_> = want.iter().map(|(f, m, k, d)| (*f, *m, k.to_string(), d.to_string())).collect();
        assert_eq!(got, want);
        // A missing table is declared first; an existing one is not declared again.
        let (with_base, undo) = host_ports_batch(&p[1..2], &ips, |_| false);
        let (without, _) = host_ports_batch(&p[1..2], &ips, |_| true);
        assert!(with_base.len() > without.len(), "{:?}", with_base.operations());
        assert_eq!(without.len(), 1, "one element add: {:?}", without.operations());
        assert_eq!(
            undo,
            vec![HostPortEntry {
                family: "ip".into(),
                map: "hostip-ports".into(),
                key: "c0a80105110000001f910000".into()
            }]
        );
        assert!(
            !with_base.operations().iter().any(|o| o.contains("ip6")),
            "no IPv6 mapping, no IPv6 table: {:?}",
            with_base.operations()
        );
    }
}
