//! Connection tracking through ctnetlink: removing the UDP flows that still lead to an endpoint
//! that went away (UDP has no end of connection, so a client would keep sending through the old
//! NAT mapping), as kube-proxy does. One dump of the namespace's UDP entries, then a delete of
//! each match.

use std::net::Ipv4Addr;
use std::path::Path;

use crate::error::{Error, Result};
use crate::nft::wire::{self, Attrs, NLM_F_ACK, NLM_F_REQUEST, NLM_F_ROOT_MATCH, Writer};

const NETLINK_NETFILTER: isize = 12;
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_DST_PORT: u16 = 3;
const AF_INET: u8 = 2;
const UDP: u8 = 17;

/// A flow to remove: UDP to `vip:port` answered by `endpoint`, or (`None`) not translated at
/// all: flows made while the Service had no endpoint, which would otherwise keep a client's
/// socket talking to nothing after endpoints appear.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaleFlow {
    pub vip: Ipv4Addr,
    pub port: u16,
    pub endpoint: Option<Ipv4Addr>,
}

/// The addresses and ports of a conntrack tuple.
#[derive(Default, Debug, PartialEq, Eq)]
pub struct Tuple {
    pub src: Option<Ipv4Addr>,
    pub dst: Option<Ipv4Addr>,
    pub proto: Option<u8>,
    pub dport: Option<u16>,
}

/// Reads a `CTA_TUPLE_*` payload (any bytes: what is malformed is left out).
pub fn tuple(b: &[u8]) -> Tuple {
    let mut t = Tuple::default();
    for (ty, p) in Attrs(b) {
        match ty {
            CTA_TUPLE_IP => {
                for (ity, ip) in Attrs(p) {
                    let Ok(octets) = <[u8; 4]>::try_from(ip) else { continue };
                    match ity {
                        CTA_IP_V4_SRC => t.src = Some(Ipv4Addr::from(octets)),
                        CTA_IP_V4_DST => t.dst = Some(Ipv4Addr::from(octets)),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (pty, v) in Attrs(p) {
                    match (pty, v) {
                        (CTA_PROTO_NUM, [n, ..]) => t.proto = Some(*n),
                        (CTA_PROTO_DST_PORT, [a, b, ..]) => t.dport = Some(u16::from_be_bytes([*a, *b])),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    t
}

/// The raw original tuple of a dumped entry, when it is one of `flows`.
fn doomed(m: &wire::Msg, flows: &[StaleFlow]) -> Option<Vec<u8>> {
    if m.ty != (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW {
        return None;
    }
    let (mut orig_raw, mut orig, mut reply) = (None, Tuple::default(), Tuple::default());
    for (ty, p) in m.nf_attrs() {
        match ty {
            CTA_TUPLE_ORIG => {
                orig_raw = Some(p);
                orig = tuple(p);
            }
            CTA_TUPLE_REPLY => reply = tuple(p),
            _ => {}
        }
    }
    let hit = orig.proto == Some(UDP)
        && flows.iter().any(|f| {
            orig.dst == Some(f.vip) && orig.dport == Some(f.port) && reply.src == Some(f.endpoint.unwrap_or(f.vip))
        });
    hit.then(|| orig_raw.map(<[u8]>::to_vec)).flatten()
}

/// Entries of `flows` found in a dump's bytes (for the fuzz test: any bytes, no panic).
#[doc(hidden)]
pub fn doomed_in(buf: &[u8], flows: &[StaleFlow]) -> usize {
    wire::messages(buf).filter_map(|m| doomed(&m, flows)).count()
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> Error {
    move |e| Error::io(what, e)
}

/// Deletes the conntrack entries of `flows` in the network namespace `netns` (here when
/// `None`); returns how many it removed.
pub fn remove(netns: Option<&Path>, flows: &[StaleFlow]) -> Result<usize> {
    if flows.is_empty() {
        return Ok(0);
    }
    let flows = flows.to_vec();
    crate::ns::run_in(netns, move || remove_here(&flows))?
}

fn remove_here(flows: &[StaleFlow]) -> Result<usize> {
    let mut sock = netlink_sys::Socket::new(NETLINK_NETFILTER).map_err(io("opening a ctnetlink socket"))?;
    sock.bind_auto().map_err(io("binding the ctnetlink socket"))?;
    let ty = |t: u16| (NFNL_SUBSYS_CTNETLINK << 8) | t;
    let dump = wire::message(ty(IPCTNL_MSG_CT_GET), NLM_F_REQUEST | NLM_F_ROOT_MATCH, 1, AF_INET, 0, &[]);
    sock.send(&dump, 0).map_err(io("asking for the conntrack table"))?;
    let mut entries: Vec<Vec<u8>> = vec![];
    // A dump ends with NLMSG_DONE; bounded in case the kernel never says so.
    'dump: for _ in 0..1_000_000 {
        let mut buf = Vec::with_capacity(1 << 16);
        sock.recv(&mut buf, 0).map_err(io("reading the conntrack table"))?;
        let mut any = false;
        for m in wire::messages(&buf) {
            any = true;
            if m.ty == wire::NLMSG_DONE || m.error_code().is_some() {
                break 'dump;
            }
            entries.extend(doomed(&m, flows));
        }
        if !any {
            break;
        }
    }
    let mut removed = 0;
    for (i, raw) in entries.iter().enumerate() {
        let mut w = Writer::default();
        w.nested(CTA_TUPLE_ORIG, |w| w.buf.extend_from_slice(raw));
        let del = wire::message(ty(IPCTNL_MSG_CT_DELETE), NLM_F_REQUEST | NLM_F_ACK, 2 + i as u32, AF_INET, 0, &w.buf);
        sock.send(&del, 0).map_err(io("deleting a conntrack entry"))?;
        let mut ack = Vec::with_capacity(4096);
        sock.recv(&mut ack, 0).map_err(io("reading a conntrack delete's answer"))?;
        // An entry that expired meanwhile (ENOENT) is fine.
        if wire::messages(&ack).any(|m| m.error_code() == Some(0)) {
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nested_tuples() {
        // CTA_TUPLE_IP { src 10.0.0.1, dst 10.96.0.10 }, CTA_TUPLE_PROTO { num 17, dport 53 }
        let mut w = Writer::default();
        w.nested(CTA_TUPLE_IP, |w| {
            w.bytes(CTA_IP_V4_SRC, &[10, 0, 0, 1]);
            w.bytes(CTA_IP_V4_DST, &[10, 96, 0, 10]);
        });
        w.nested(CTA_TUPLE_PROTO, |w| {
            w.bytes(CTA_PROTO_NUM, &[17]);
            w.bytes(CTA_PROTO_DST_PORT, &[0, 53]);
        });
        let p = tuple(&w.buf);
        assert_eq!(p.src, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(p.dst, Some("10.96.0.10".parse().unwrap()));
        assert_eq!((p.proto, p.dport), (Some(17), Some(53)));
    }
}
