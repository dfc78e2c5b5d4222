//! The engine's table in nf_tables terms ([`weft_netlink::nft`]): `ip weft-policy`, its sets,
//! its forward chain and the rules of the policy-set chains, with their text in nft syntax
//! (diagnostics, and the kernel tests' witness: `nft -f` of the text makes the same table).
//!
//! ```text
//! table ip weft-policy {
//!   set pod-cidr { type ipv4_addr; flags interval; }    # this node's pod ranges
//!   set local-pods { type ipv4_addr; }                   # this node's pods the engine knows
//!   map ingress { type ipv4_addr : verdict; }            # pod -> jump <its ingress chain>
//!   map egress { type ipv4_addr : verdict; }
//!   chain forward {
//!     type filter hook forward priority filter; policy accept;
//!     ct state established ct direction reply accept
//!     ct state related accept
//!     ip saddr @pod-cidr ip saddr != @local-pods drop
//!     ip daddr @pod-cidr ip daddr != @local-pods drop
//!     ip saddr vmap @egress
//!     ip daddr vmap @ingress
//!   }
//!   chain in-<hash> {                                    # one per set of policies
//!     ip saddr @<policy>-i0-pods meta l4proto . th dport @<policy>-i0-ports return
//!     ...
//!     limit rate 10/second burst 20 packets log prefix "in-<hash>" group 113
//!     drop
//!   }
//! }
//! ```
//!
//! Why the `ip` family alone: the forward hook of the `ip` family sees routed traffic (across
//! nodes, VXLAN, after a Service's DNAT, from outside) and, through br_netfilter
//! (`net.bridge.bridge-nf-call-iptables`, 1 by default in every namespace), the frames the node's
//! bridge switches between two of its pods, with conntrack. A `bridge` table would see those
//! frames twice over and cannot use conntrack on a kernel without nf_conntrack_bridge (this one:
//! the kernel refuses `ct` in a bridge table with EPROTO).

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use weft_netlink::nft::{
    Batch, ByteOrderOp, Chain, ChainType, CmpOp, CtKey, Elem, ElemData, Expr, Family, FieldType, Hook, Interval, Key,
    MetaKey, PayloadBase, Reg, Rule, Set, SetData, Table, Verdict, ct_state, priority,
};

use crate::compile::{Line, Named, PortRange, SetKind};
use crate::model::Dir;

pub const TABLE: &str = "weft-policy";
pub const FAMILY: Family = Family::Ip;
/// The NFLOG group a denied packet is copied to (the denial receiver listens on it in each
/// node's network namespace); the log prefix is the policy-set chain's name.
pub const LOG_GROUP: u16 = 113;
/// Denials logged per second per policy-set chain (a token bucket), and the burst above it.
pub const LOG_RATE: u64 = 10;
pub const LOG_BURST: u32 = 20;
pub const FORWARD: &str = "forward";
const COMMENT: &str = "weft: NetworkPolicy";
pub const POD_CIDR: &str = "pod-cidr";
pub const LOCAL_PODS: &str = "local-pods";
pub const INGRESS_MAP: &str = "ingress";
pub const EGRESS_MAP: &str = "egress";

/// The verdict map of a direction: keyed by the source for egress, the destination for ingress.
pub fn map_of(dir: Dir) -> &'static str {
    match dir {
        Dir::Ingress => INGRESS_MAP,
        Dir::Egress => EGRESS_MAP,
    }
}

/// A set's declaration.
pub fn set_decl(name: &str, kind: SetKind) -> Set {
    use FieldType as F;
    match kind {
        SetKind::Addrs => Set::plain(name, &[F::IPV4]),
        SetKind::Ranges => Set { interval: true, ..Set::plain(name, &[F::IPV4]) },
        SetKind::Ports => Set { interval: true, ..Set::plain(name, &[F::PROTO, F::PORT]) },
        SetKind::Named => Set::plain(name, &[F::IPV4, F::PROTO, F::PORT]),
    }
}

fn set_text(name: &str, kind: SetKind) -> String {
    let (ty, interval) = match kind {
        SetKind::Addrs => ("ipv4_addr", false),
        SetKind::Ranges => ("ipv4_addr", true),
        SetKind::Ports => ("inet_proto . inet_service", true),
        SetKind::Named => ("ipv4_addr . inet_proto . inet_service", false),
    };
    let flags = if interval { " flags interval;" } else { "" };
    format!("set {name} {{ type {ty};{flags} }}")
}

fn s(n: u32) -> Reg {
    Reg::slot(n)
}
fn addr(dir_field: AddrField, dreg: Reg) -> Expr {
    let offset = if dir_field == AddrField::Saddr { 12 } else { 16 };
    Expr::Payload { base: PayloadBase::Network, offset, len: 4, dreg }
}
fn lookup(set: &str, invert: bool) -> Expr {
    Expr::Lookup { set: set.into(), sreg: s(0), dreg: None, invert }
}
/// `ct state <bits>` (any of them).
fn ct_state_any(bits: u32) -> [Expr; 3] {
    [
        Expr::Ct { key: CtKey::State, dreg: s(0) },
        Expr::Bitwise { sreg: s(0), dreg: s(0), mask: bits.to_ne_bytes().to_vec(), xor: vec![0; 4] },
        Expr::cmp_u32(s(0), CmpOp::Neq, 0),
    ]
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum AddrField {
    Saddr,
    Daddr,
}

/// The address a peer is matched on: the source of ingress traffic, the destination of egress.
fn peer_field(dir: Dir) -> AddrField {
    if dir == Dir::Ingress { AddrField::Saddr } else { AddrField::Daddr }
}

fn rule(chain: &str, exprs: Vec<Expr>) -> Rule {
    Rule { chain: chain.into(), exprs }
}

/// The forward chain's rules.
pub fn forward_rules() -> Vec<Rule> {
    let unknown = |f: AddrField| {
        vec![
            addr(f, s(0)),
            lookup(POD_CIDR, false),
            addr(f, s(0)),
            lookup(LOCAL_PODS, true),
            Expr::Verdict(Verdict::Drop),
        ]
    };
    let vmap = |f: AddrField, map: &str| {
        vec![addr(f, s(0)), Expr::Lookup { set: map.into(), sreg: s(0), dreg: Some(Reg::VERDICT), invert: false }]
    };
    let reply = [
        &ct_state_any(ct_state::ESTABLISHED)[..],
        &[Expr::Ct { key: CtKey::Direction, dreg: s(0) }, Expr::Cmp { sreg: s(0), op: CmpOp::Eq, data: vec![1] }],
        &[Expr::Verdict(Verdict::Accept)],
    ]
    .concat();
    let related = [&ct_state_any(ct_state::RELATED)[..], &[Expr::Verdict(Verdict::Accept)]].concat();
    vec![
        rule(FORWARD, reply),
        rule(FORWARD, related),
        rule(FORWARD, unknown(AddrField::Saddr)),
        rule(FORWARD, unknown(AddrField::Daddr)),
        rule(FORWARD, vmap(AddrField::Saddr, EGRESS_MAP)),
        rule(FORWARD, vmap(AddrField::Daddr, INGRESS_MAP)),
    ]
}

/// The fixed part of the table in nft syntax.
pub fn base_text() -> String {
    format!(
        r#"table ip {TABLE} {{
  comment "{COMMENT}"
  set {POD_CIDR} {{ type ipv4_addr; flags interval; }}
  set {LOCAL_PODS} {{ type ipv4_addr; }}
  map {INGRESS_MAP} {{ type ipv4_addr : verdict; }}
  map {EGRESS_MAP} {{ type ipv4_addr : verdict; }}
  chain {FORWARD} {{
    type filter hook forward priority filter; policy accept;
    ct state established ct direction reply accept
    ct state related accept
    ip saddr @{POD_CIDR} ip saddr != @{LOCAL_PODS} drop
    ip daddr @{POD_CIDR} ip daddr != @{LOCAL_PODS} drop
    ip saddr vmap @{EGRESS_MAP}
    ip daddr vmap @{INGRESS_MAP}
  }}
}}
"#
    )
}

/// Adds the table anew (replacing one that is there, in the same transaction): its global sets
/// and maps and the forward chain.
pub fn add_table(b: &mut Batch) {
    // Added first so that the delete never fails: the transaction replaces whatever was there.
    b.add_table(&Table::new(FAMILY, TABLE));
    b.delete_table(FAMILY, TABLE);
    b.add_table(&Table { comment: Some(COMMENT.into()), ..Table::new(FAMILY, TABLE) });
    use FieldType as F;
    b.add_set(FAMILY, TABLE, &Set { interval: true, ..Set::plain(POD_CIDR, &[F::IPV4]) });
    b.add_set(FAMILY, TABLE, &Set::plain(LOCAL_PODS, &[F::IPV4]));
    b.add_set(FAMILY, TABLE, &Set::map(INGRESS_MAP, &[F::IPV4], SetData::Verdict));
    b.add_set(FAMILY, TABLE, &Set::map(EGRESS_MAP, &[F::IPV4], SetData::Verdict));
    b.add_chain(FAMILY, TABLE, &Chain::base(FORWARD, ChainType::Filter, Hook::Forward, priority::FILTER));
    for r in forward_rules() {
        b.add_rule(FAMILY, TABLE, &r);
    }
}

/// A policy rule's nft rule in a chain of `dir`.
pub fn line_rule(chain: &str, dir: Dir, l: &Line) -> Rule {
    let mut e = vec![];
    if let Some((_, set)) = &l.peer {
        e.push(addr(peer_field(dir), s(0)));
        e.push(lookup(set, false));
    }
    match &l.port {
        None => {}
        Some((SetKind::Named, set)) => {
            e.push(addr(AddrField::Daddr, s(0)));
            e.push(Expr::Meta { key: MetaKey::L4Proto, dreg: s(1) });
            e.push(Expr::Payload { base: PayloadBase::Transport, offset: 2, len: 2, dreg: s(2) });
            e.push(lookup(set, false));
        }
        Some((_, set)) => {
            e.push(Expr::Meta { key: MetaKey::L4Proto, dreg: s(0) });
            // As nft writes it for an interval concatenation (a no-op on one byte).
            e.push(Expr::ByteOrder { sreg: s(0), dreg: s(0), op: ByteOrderOp::Hton, len: 1, size: 2 });
            e.push(Expr::Payload { base: PayloadBase::Transport, offset: 2, len: 2, dreg: s(1) });
            e.push(lookup(set, false));
        }
    }
    e.push(Expr::Verdict(Verdict::Return));
    rule(chain, e)
}

pub fn line_text(dir: Dir, l: &Line) -> String {
    let mut t = String::new();
    if let Some((_, set)) = &l.peer {
        let f = if peer_field(dir) == AddrField::Saddr { "saddr" } else { "daddr" };
        let _ = write!(t, "ip {f} @{set} ");
    }
    match &l.port {
        None => {}
        Some((SetKind::Named, set)) => {
            let _ = write!(t, "ip daddr . meta l4proto . th dport @{set} ");
        }
        Some((_, set)) => {
            let _ = write!(t, "meta l4proto . th dport @{set} ");
        }
    }
    t + "return"
}

/// The end of every policy-set chain: a rate-limited copy to NFLOG, then drop.
pub fn log_drop(chain: &str) -> [Rule; 2] {
    [
        rule(
            chain,
            vec![
                Expr::Limit { rate: LOG_RATE, unit_seconds: 1, burst: LOG_BURST, bytes: false, invert: false },
                Expr::Log { group: Some(LOG_GROUP), prefix: Some(chain.into()) },
            ],
        ),
        rule(chain, vec![Expr::Verdict(Verdict::Drop)]),
    ]
}

pub fn log_drop_text(chain: &str) -> [String; 2] {
    [
        format!("limit rate {LOG_RATE}/second burst {LOG_BURST} packets log prefix \"{chain}\" group {LOG_GROUP}"),
        "drop".into(),
    ]
}

/// Makes (if missing) and fills anew a policy-set chain: flushed first, so sending it again
/// never doubles its rules.
pub fn fill_chain(b: &mut Batch, name: &str, dir: Dir, lines: &[Line]) {
    b.add_chain(FAMILY, TABLE, &Chain::regular(name));
    b.flush_chain(FAMILY, TABLE, name);
    for l in lines {
        b.add_rule(FAMILY, TABLE, &line_rule(name, dir, l));
    }
    for r in log_drop(name) {
        b.add_rule(FAMILY, TABLE, &r);
    }
}

/// Elements of one set, typed by what the set holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Elements {
    Addrs(Vec<Ipv4Addr>),
    Ranges(Vec<(Ipv4Addr, Ipv4Addr)>),
    Ports(Vec<PortRange>),
    Named(Vec<Named>),
    /// Verdict-map entries: an address and the chain it jumps to.
    Jumps(Vec<(Ipv4Addr, String)>),
}

impl Elements {
    pub fn len(&self) -> usize {
        match self {
            Elements::Addrs(v) => v.len(),
            Elements::Ranges(v) => v.len(),
            Elements::Ports(v) => v.len(),
            Elements::Named(v) => v.len(),
            Elements::Jumps(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds (or deletes) them to (from) `set` in a batch.
    pub fn encode(&self, b: &mut Batch, set: &str, add: bool) {
        let key = |ip: &Ipv4Addr| Key::new().ipv4(*ip).bytes();
        let plain = |b: &mut Batch, elems: Vec<Elem>| {
            if add { b.add_elements(FAMILY, TABLE, set, &elems) } else { b.delete_elements(FAMILY, TABLE, set, &elems) }
        };
        match self {
            Elements::Addrs(v) => plain(b, v.iter().map(|ip| Elem::key(key(ip))).collect()),
            Elements::Named(v) => plain(
                b,
                v.iter().map(|(ip, p, port)| Elem::key(Key::new().ipv4(*ip).proto(*p).port(*port).bytes())).collect(),
            ),
            Elements::Ports(v) => plain(
                b,
                v.iter()
                    .map(|r| Elem {
                        key: Key::new().proto(r.proto).port(r.first).bytes(),
                        key_end: Some(Key::new().proto(r.proto).port(r.last).bytes()),
                        data: None,
                    })
                    .collect(),
            ),
            Elements::Jumps(v) => plain(
                b,
                v.iter()
                    .map(|(ip, chain)| Elem {
                        key: key(ip),
                        key_end: None,
                        data: Some(ElemData::Verdict(Verdict::Jump(chain.clone()))),
                    })
                    .collect(),
            ),
            Elements::Ranges(v) => {
                let ranges: Vec<Interval> = v.iter().map(|(a, z)| Interval::ipv4(*a, *z)).collect();
                if add {
                    b.add_intervals(FAMILY, TABLE, set, &ranges)
                } else {
                    b.delete_intervals(FAMILY, TABLE, set, &ranges)
                }
            }
        }
    }

    /// In nft syntax (`{ ... }`'s content).
    pub fn text(&self) -> String {
        fn proto(p: u8) -> String {
            match p {
                6 => "tcp".into(),
                17 => "udp".into(),
                132 => "sctp".into(),
                n => n.to_string(),
            }
        }
        let items: Vec<String> = match self {
            Elements::Addrs(v) => v.iter().map(|ip| ip.to_string()).collect(),
            Elements::Ranges(v) => {
                v.iter().map(|(a, z)| if a == z { a.to_string() } else { format!("{a}-{z}") }).collect()
            }
            Elements::Ports(v) => v
                .iter()
                .map(|r| {
                    if r.first == r.last {
                        format!("{} . {}", proto(r.proto), r.first)
                    } else {
                        format!("{} . {}-{}", proto(r.proto), r.first, r.last)
                    }
                })
                .collect(),
            Elements::Named(v) => v.iter().map(|(ip, p, port)| format!("{ip} . {} . {port}", proto(*p))).collect(),
            Elements::Jumps(v) => v.iter().map(|(ip, c)| format!("{ip} : jump {c}")).collect(),
        };
        items.join(", ")
    }
}

/// The nft text of a set's declaration inside `add set ip weft-policy ...`.
pub fn add_set_text(name: &str, kind: SetKind) -> String {
    set_text(name, kind)
}
