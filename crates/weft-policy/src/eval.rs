//! What the forward chain of a node does with the first packet of a new connection, read from
//! the compiled state alone ([`Desired`]) and the nft rules it makes ([`Desired::chain_lines`]),
//! with no kernel: the compiler's truth-table tests run through it, and diagnostics can ask it
//! why something is denied. It follows [`crate::rules`] step by step: unknown addresses of the
//! node's pod range, then the source's egress chain, then the destination's ingress chain.

use std::net::Ipv4Addr;

use crate::compile::{Contents, Desired, Line, PolicySet, SetKind};
use crate::model::Dir;

/// A packet's addresses and ports (the first of a connection: conntrack has nothing yet).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// IP protocol number (6 TCP, 17 UDP, 132 SCTP).
    pub proto: u8,
    pub dport: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    /// An address in the node's pod range that is no pod the engine knows.
    Unknown(Ipv4Addr),
    /// A policy-set chain's drop (the chain named, as its NFLOG prefix names it).
    Denied(String),
}

/// The forward hook of the node `d` was compiled for.
pub fn forward(d: &Desired, p: &Packet) -> Verdict {
    for ip in [p.src, p.dst] {
        if d.pod_cidrs.iter().any(|c| c.contains(&ip)) && !d.local.contains_key(&ip) {
            return Verdict::Unknown(ip);
        }
    }
    for (dir, ip) in [(Dir::Egress, p.src), (Dir::Ingress, p.dst)] {
        if let Some(set) = d.local.get(&ip).and_then(|l| l.get(dir))
            && !chain_allows(d, set, p)
        {
            return Verdict::Denied(set.name.clone());
        }
    }
    Verdict::Accept
}

/// Whether some rule of the chain returns (allows) the packet.
pub fn chain_allows(d: &Desired, set: &PolicySet, p: &Packet) -> bool {
    let lines = d.chain_lines(set);
    lines.iter().any(|l| line_matches(d, set.dir, l, p))
}

fn contents<'a>(d: &'a Desired, set: &str) -> Option<Contents<'a>> {
    // A set's name starts with its policy's id.
    let id = set.split('-').next()?;
    d.policies.values().find(|f| f.id == id).and_then(|f| f.set(set))
}

fn line_matches(d: &Desired, dir: Dir, l: &Line, p: &Packet) -> bool {
    let peer_ok = match &l.peer {
        None => true,
        Some((_, name)) => {
            let addr = if dir == Dir::Ingress { p.src } else { p.dst };
            match contents(d, name) {
                Some(Contents::Addrs(s)) => s.contains(&addr),
                Some(Contents::Ranges(r)) => r.iter().any(|(a, b)| *a <= addr && addr <= *b),
                _ => false,
            }
        }
    };
    let port_ok = match &l.port {
        None => true,
        Some((SetKind::Ports, name)) => match contents(d, name) {
            Some(Contents::Ports(r)) => r.iter().any(|x| x.proto == p.proto && x.first <= p.dport && p.dport <= x.last),
            _ => false,
        },
        Some((_, name)) => match contents(d, name) {
            // Always the destination: the selected pod for ingress, the peer for egress.
            Some(Contents::Named(s)) => s.contains(&(p.dst, p.proto, p.dport)),
            _ => false,
        },
    };
    peer_ok && port_ok
}
