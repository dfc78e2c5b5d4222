//! The proxy's table in nf_tables terms ([`weft_netlink::nft`]): its sets and maps, its fixed
//! chains, the rules of the shared chains and the layout of element keys. The expressions are
//! the ones `nft` itself makes from the text rendering in `apply.rs` (compare with
//! `nft --debug=netlink`), so the kernel runs the same bytecode.
//!
//! Keys and data are laid out as nf_tables registers hold them: each field of a concatenation in
//! 4-byte slots; addresses and ports in network byte order, `numgen`/`jhash` results in host order.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use weft_netlink::nft::{
    Batch, ByteOrderOp, Chain, ChainType, CmpOp, Elem, ElemData, Expr, Family, FibResult, FieldType, Hook, Key,
    MetaKey, NatKind, PayloadBase, Reg, Reject, Rule, Set, SetData, Table, Typeof, Verdict, addr_type, fib_flags,
    priority,
};

use crate::compile::{AFFINITY_SEED, MASQ_MARK, Masq, SharedChain};

pub const TABLE: &str = "weft-proxy";
const FAMILY: Family = Family::Ip;

/// One field of a key or a data value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Field {
    Ip(Ipv4Addr),
    Proto(u8),
    Port(u16),
    /// A `numgen` or `jhash` result (host byte order).
    Slot(u32),
    /// A range of addresses (an interval set's key: its first address, and its last as the
    /// element's key end).
    Net(Ipv4Net),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Data {
    None,
    Value(Vec<Field>),
    Goto(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElemOp {
    pub add: bool,
    pub set: &'static str,
    pub key: Vec<Field>,
    pub data: Data,
}

pub fn proto_num(p: &str) -> u8 {
    match p {
        "tcp" => 6,
        "udp" => 17,
        "sctp" => 132,
        _ => 0,
    }
}

/// The fields in register layout; `end`: a range's last address instead of its first.
fn layout(fields: &[Field], end: bool) -> Vec<u8> {
    let mut k = Key::new();
    for f in fields {
        k = match f {
            Field::Ip(ip) => k.ipv4(*ip),
            Field::Proto(p) => k.proto(*p),
            Field::Port(p) => k.port(*p),
            Field::Slot(n) => k.host_u32(*n),
            Field::Net(n) => k.ipv4(if end { n.broadcast() } else { n.network() }),
        };
    }
    k.bytes()
}

/// The element an operation adds or deletes.
pub fn elem(op: &ElemOp) -> Elem {
    let ranged = op.key.iter().any(|f| matches!(f, Field::Net(_)));
    Elem {
        key: layout(&op.key, false),
        key_end: ranged.then(|| layout(&op.key, true)),
        data: match &op.data {
            Data::None => None,
            Data::Value(v) => Some(ElemData::Value(layout(v, false))),
            Data::Goto(c) => Some(ElemData::Verdict(Verdict::Goto(c.clone()))),
        },
    }
}

/// Adds `ops` to a batch; consecutive operations of one kind on one set share messages.
pub fn add_elements(b: &mut Batch, ops: &[ElemOp]) {
    let mut i = 0;
    while i < ops.len() {
        let (add, set) = (ops[i].add, ops[i].set);
        let n = ops[i..].iter().take_while(|o| o.add == add && o.set == set).count();
        let elems: Vec<Elem> = ops[i..i + n].iter().map(elem).collect();
        if add {
            b.add_elements(FAMILY, TABLE, set, &elems);
        } else {
            b.delete_elements(FAMILY, TABLE, set, &elems);
        }
        i += n;
    }
}

// Registers as nft allocates them: `reg 1` (32-bit slot 0), then `reg 9`, `reg 10`, ...
fn s(n: u32) -> Reg {
    Reg::slot(n)
}
fn daddr(dreg: Reg) -> Expr {
    Expr::Payload { base: PayloadBase::Network, offset: 16, len: 4, dreg }
}
fn saddr(dreg: Reg) -> Expr {
    Expr::Payload { base: PayloadBase::Network, offset: 12, len: 4, dreg }
}
fn l4proto(dreg: Reg) -> Expr {
    Expr::Meta { key: MetaKey::L4Proto, dreg }
}
/// `th dport` (and `tcp`/`udp`/`sctp dport`: the same two bytes).
fn dport(dreg: Reg) -> Expr {
    Expr::Payload { base: PayloadBase::Transport, offset: 2, len: 2, dreg }
}
fn lookup(set: &str, dreg: Option<Reg>) -> Expr {
    Expr::Lookup { set: set.into(), sreg: s(0), dreg, invert: false }
}
/// `meta l4proto P`.
fn l4proto_is(p: u8) -> [Expr; 2] {
    [l4proto(s(0)), Expr::Cmp { sreg: s(0), op: CmpOp::Eq, data: vec![p] }]
}
/// `ip daddr . meta l4proto . th dport` in slots 0-2.
fn vip_key() -> [Expr; 3] {
    [daddr(s(0)), l4proto(s(1)), dport(s(2))]
}
/// `fib daddr type local ip daddr != 127.0.0.0/8`.
fn local_not_loopback() -> [Expr; 4] {
    [
        Expr::Fib { flags: fib_flags::DADDR, result: FibResult::AddrType, dreg: s(0) },
        Expr::cmp_u32(s(0), CmpOp::Eq, addr_type::LOCAL),
        Expr::Payload { base: PayloadBase::Network, offset: 16, len: 1, dreg: s(0) },
        Expr::Cmp { sreg: s(0), op: CmpOp::Neq, data: vec![127] },
    ]
}
/// `meta mark set meta mark & MASK ^ XOR`.
fn set_mark(mask: u32, xor: u32) -> [Expr; 3] {
    [
        Expr::Meta { key: MetaKey::Mark, dreg: s(0) },
        Expr::Bitwise { sreg: s(0), dreg: s(0), mask: mask.to_ne_bytes().to_vec(), xor: xor.to_ne_bytes().to_vec() },
        Expr::MetaSet { key: MetaKey::Mark, sreg: s(0) },
    ]
}
/// `ip saddr != NET`, as nft writes it: whole bytes compared directly, else masked.
fn saddr_outside(net: Ipv4Net) -> Vec<Expr> {
    let octets = net.network().octets();
    let p = u32::from(net.prefix_len());
    if p > 0 && p.is_multiple_of(8) {
        let n = (p / 8) as usize;
        return vec![
            Expr::Payload { base: PayloadBase::Network, offset: 12, len: p / 8, dreg: s(0) },
            Expr::Cmp { sreg: s(0), op: CmpOp::Neq, data: octets[..n].to_vec() },
        ];
    }
    vec![
        saddr(s(0)),
        Expr::Bitwise { sreg: s(0), dreg: s(0), mask: net.netmask().octets().to_vec(), xor: vec![0; 4] },
        Expr::Cmp { sreg: s(0), op: CmpOp::Neq, data: octets.to_vec() },
    ]
}

fn rule(chain: &str, parts: &[&[Expr]]) -> Rule {
    Rule { chain: chain.into(), exprs: parts.concat() }
}

/// The sets and maps of the table.
pub fn sets() -> Vec<Set> {
    use FieldType as F;
    let endpoint = SetData::Value(vec![F::IPV4, F::PORT]);
    let mut v = vec![
        Set::map("services", &[F::IPV4, F::PROTO, F::PORT], SetData::Verdict),
        Set::map("nodeports", &[F::PROTO, F::PORT], SetData::Verdict),
    ];
    // Declared by `typeof` as nft declares them, so that `nft list` can print the slot field.
    let slot = Typeof::NumgenRandom { modulus: 2 };
    for p in ["tcp", "udp", "sctp"] {
        let port = Typeof::Dport(proto_num(p));
        v.push(Set {
            typeof_key: vec![Typeof::IpDaddr, Typeof::L4Proto, port, slot],
            typeof_data: vec![Typeof::IpDaddr, port],
            ..Set::map(&format!("backends-{p}"), &[F::IPV4, F::PROTO, F::PORT, F::U32], endpoint.clone())
        });
    }
    for p in ["tcp", "udp", "sctp"] {
        let port = Typeof::Dport(proto_num(p));
        v.push(Set {
            typeof_key: vec![Typeof::L4Proto, port, slot],
            typeof_data: vec![Typeof::IpDaddr, port],
            ..Set::map(&format!("np-backends-{p}"), &[F::PROTO, F::PORT, F::U32], endpoint.clone())
        });
    }
    v.push(Set::plain("hairpin", &[F::IPV4, F::IPV4]));
    v.push(Set::plain("no-endpoints", &[F::IPV4, F::PROTO, F::PORT]));
    v.push(Set::plain("no-endpoint-nodeports", &[F::PROTO, F::PORT]));
    v.push(Set::plain("firewall", &[F::IPV4, F::PROTO, F::PORT]));
    v.push(Set { interval: true, ..Set::plain("firewall-allow", &[F::IPV4, F::PROTO, F::PORT, F::IPV4]) });
    v
}

/// The fixed chains, each with its rules.
pub fn base_chains() -> Vec<(Chain, Vec<Rule>)> {
    let jump = |to: &str| Expr::Verdict(Verdict::Jump(to.into()));
    let vip = vip_key();
    let np_key = [l4proto(s(0)), dport(s(1))];
    let masq_rule = [
        &[Expr::Meta { key: MetaKey::Mark, dreg: s(0) }][..],
        &[Expr::Bitwise {
            sreg: s(0),
            dreg: s(0),
            mask: MASQ_MARK.to_ne_bytes().to_vec(),
            xor: 0u32.to_ne_bytes().to_vec(),
        }],
        &[Expr::cmp_u32(s(0), CmpOp::Eq, MASQ_MARK)],
        &set_mark(!MASQ_MARK, 0),
        &[Expr::Masquerade],
    ];
    let reset = Expr::Reject(Reject::TcpReset);
    let unreachable = Expr::Reject(Reject::PORT_UNREACHABLE);
    let firewall_allow = [
        daddr(s(0)),
        l4proto(s(1)),
        // nft converts the 1-byte protocol for an interval concatenation (a no-op at this size).
        Expr::ByteOrder { sreg: s(1), dreg: s(1), op: ByteOrderOp::Hton, len: 1, size: 2 },
        dport(s(2)),
        saddr(s(3)),
        Expr::Lookup { set: "firewall-allow".into(), sreg: s(0), dreg: None, invert: true },
        Expr::Verdict(Verdict::Drop),
    ];
    vec![
        (Chain::regular("mark-masq"), vec![rule("mark-masq", &[&set_mark(!MASQ_MARK, MASQ_MARK)])]),
        (
            Chain::regular("services"),
            vec![
                rule("services", &[&vip, &[lookup("services", Some(Reg::VERDICT))]]),
                rule("services", &[&local_not_loopback(), &np_key, &[lookup("nodeports", Some(Reg::VERDICT))]]),
            ],
        ),
        (
            Chain::base("nat-prerouting", ChainType::Nat, Hook::Prerouting, priority::DSTNAT),
            vec![rule("nat-prerouting", &[&[jump("services")]])],
        ),
        (
            Chain::base("nat-output", ChainType::Nat, Hook::Output, -100),
            vec![rule("nat-output", &[&[jump("services")]])],
        ),
        (
            Chain::base("nat-postrouting", ChainType::Nat, Hook::Postrouting, priority::SRCNAT),
            vec![
                rule("nat-postrouting", &masq_rule),
                rule("nat-postrouting", &[&[saddr(s(0)), daddr(s(1)), lookup("hairpin", None), Expr::Masquerade]]),
            ],
        ),
        (
            Chain::regular("reject-chain"),
            vec![
                rule("reject-chain", &[&vip, &[lookup("firewall", None)], &firewall_allow]),
                rule(
                    "reject-chain",
                    &[&vip, &[lookup("no-endpoints", None)], &l4proto_is(6), std::slice::from_ref(&reset)],
                ),
                rule("reject-chain", &[&vip, &[lookup("no-endpoints", None), unreachable.clone()]]),
                rule(
                    "reject-chain",
                    &[
                        &local_not_loopback(),
                        &np_key,
                        &[lookup("no-endpoint-nodeports", None)],
                        &l4proto_is(6),
                        &[reset],
                    ],
                ),
                rule(
                    "reject-chain",
                    &[&local_not_loopback(), &np_key, &[lookup("no-endpoint-nodeports", None), unreachable]],
                ),
            ],
        ),
        (
            Chain::base("filter-prerouting", ChainType::Filter, Hook::Prerouting, -110),
            vec![rule("filter-prerouting", &[&[jump("reject-chain")]])],
        ),
        (
            Chain::base("filter-output", ChainType::Filter, Hook::Output, -110),
            vec![rule("filter-output", &[&[jump("reject-chain")]])],
        ),
    ]
}

/// A shared chain's rules: masquerade as it says, then DNAT to the endpoint its map gives for
/// the packet's key and a slot picked at random or by the client address.
pub fn shared_chain_rules(name: &str, c: &SharedChain) -> Vec<Rule> {
    let mut rules = vec![];
    let to_masq = Expr::Verdict(Verdict::Jump("mark-masq".into()));
    match c.masq {
        Masq::Cluster => rules.push(rule(name, &[&saddr_outside(c.cluster_cidr), &[to_masq]])),
        Masq::Always => rules.push(rule(name, &[&[to_masq]])),
        Masq::Never => {}
    }
    // The key: [daddr .] l4proto . dport . slot, each field in the next 32-bit slot.
    let mut key: Vec<Expr> = vec![];
    if !c.nodeport {
        key.push(daddr(s(0)));
    }
    let first = key.len() as u32;
    key.push(l4proto(s(first)));
    key.push(dport(s(first + 1)));
    let slot = s(first + 2);
    if c.affinity {
        // nft's choice of a scratch register for the hashed address.
        let scratch = if c.nodeport { Reg(15) } else { Reg(3) };
        key.push(saddr(scratch));
        key.push(Expr::Jhash {
            sreg: scratch,
            dreg: slot,
            len: 4,
            modulus: c.endpoints,
            seed: AFFINITY_SEED,
            offset: 0,
        });
    } else {
        key.push(Expr::Numgen { dreg: slot, modulus: c.endpoints, random: true, offset: 0 });
    }
    let dnat = [
        Expr::Lookup { set: c.map(), sreg: s(0), dreg: Some(s(0)), invert: false },
        Expr::Nat { kind: NatKind::Dnat, family: FAMILY, addr: Some(s(0)), proto: Some(s(1)) },
    ];
    rules.push(rule(name, &[&l4proto_is(proto_num(&c.proto)), &key, &dnat]));
    rules
}

/// Adds the table anew (replacing one that is there, in the same transaction): its sets, maps
/// and fixed chains.
pub fn add_table(b: &mut Batch) {
    // Added first so that the delete never fails: the transaction replaces whatever was there.
    b.add_table(&Table::new(FAMILY, TABLE));
    b.delete_table(FAMILY, TABLE);
    b.add_table(&Table::new(FAMILY, TABLE));
    for set in sets() {
        b.add_set(FAMILY, TABLE, &set);
    }
    let chains = base_chains();
    // Every chain exists before a rule jumps to one.
    for (c, _) in &chains {
        b.add_chain(FAMILY, TABLE, c);
    }
    for (_, rules) in &chains {
        for r in rules {
            b.add_rule(FAMILY, TABLE, r);
        }
    }
}

/// Adds (or refills: flushed first, so sending one again never doubles its rules) shared chains.
pub fn add_shared_chains<'a>(b: &mut Batch, chains: impl IntoIterator<Item = (&'a String, &'a SharedChain)>) {
    for (name, c) in chains {
        b.add_chain(FAMILY, TABLE, &Chain::regular(name));
        b.flush_chain(FAMILY, TABLE, name);
        for r in shared_chain_rules(name, c) {
            b.add_rule(FAMILY, TABLE, &r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_laid_out_in_registers() {
        let k =
            layout(&[Field::Ip("10.96.0.5".parse().unwrap()), Field::Proto(6), Field::Port(80), Field::Slot(2)], false);
        assert_eq!(k.len(), 16);
        assert_eq!(&k[0..4], &[10, 96, 0, 5]);
        assert_eq!(&k[4..8], &[6, 0, 0, 0]);
        assert_eq!(&k[8..12], &[0, 80, 0, 0]);
        assert_eq!(&k[12..16], &2u32.to_ne_bytes());
    }

    #[test]
    fn a_range_gives_its_element_a_key_end() {
        let op = ElemOp {
            add: true,
            set: "firewall-allow",
            key: vec![Field::Ip("10.0.0.1".parse().unwrap()), Field::Net("192.168.0.0/16".parse().unwrap())],
            data: Data::None,
        };
        let e = elem(&op);
        assert_eq!(e.key, [10, 0, 0, 1, 192, 168, 0, 0]);
        assert_eq!(e.key_end.unwrap(), [10, 0, 0, 1, 192, 168, 255, 255]);
    }

    #[test]
    fn a_cluster_cidr_on_a_byte_boundary_is_compared_without_a_mask() {
        let e = saddr_outside("10.244.0.0/16".parse().unwrap());
        assert_eq!(e.len(), 2);
        assert_eq!(e[1], Expr::Cmp { sreg: s(0), op: CmpOp::Neq, data: vec![10, 244] });
        let e = saddr_outside("10.240.0.0/12".parse().unwrap());
        assert!(matches!(&e[1], Expr::Bitwise { mask, .. } if mask == &[255, 240, 0, 0]));
    }
}
