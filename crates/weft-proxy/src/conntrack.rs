//! Removing stale UDP conntrack entries when an endpoint goes away (as kube-proxy does): UDP has
//! no end of connection, so a client would keep sending to a gone endpoint through the old NAT
//! mapping. One ctnetlink dump of the namespace's UDP entries, then a delete of each entry whose
//! original destination is the Service address and whose reply comes from the gone endpoint.

use std::net::Ipv4Addr;

const NETLINK_NETFILTER: isize = 12;
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const AF_INET: u8 = 2;
const UDP: u8 = 17;

/// A flow to remove: UDP to `vip:port` answered by `endpoint`, or (`None`) not translated at
/// all: flows made while the Service had no endpoint, which would otherwise keep a client's
/// socket talking to nothing after endpoints appear (kube-proxy clears these too).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaleFlow {
    pub vip: Ipv4Addr,
    pub port: u16,
    pub endpoint: Option<Ipv4Addr>,
}

fn header(ty: u16, flags: u16, seq: u32, body_len: usize) -> Vec<u8> {
    let len = 16 + 4 + body_len;
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | ty).to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[AF_INET, 0, 0, 0]);
    m
}

/// Attributes of a netlink payload: (type without flags, payload).
fn attrs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = vec![];
    while b.len() >= 4 {
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let ty = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            break;
        }
        out.push((ty, &b[4..len]));
        let next = (len + 3) & !3;
        b = if next >= b.len() { &[] } else { &b[next..] };
    }
    out
}

#[derive(Default, Debug)]
struct Tuple {
    src: Option<Ipv4Addr>,
    dst: Option<Ipv4Addr>,
    proto: Option<u8>,
    dport: Option<u16>,
}

fn tuple(b: &[u8]) -> Tuple {
    let mut t = Tuple::default();
    for (ty, p) in attrs(b) {
        match ty {
            CTA_TUPLE_IP => {
                for (ity, ip) in attrs(p) {
                    if ip.len() == 4 {
                        let a = Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]);
                        match ity {
                            CTA_IP_V4_SRC => t.src = Some(a),
                            CTA_IP_V4_DST => t.dst = Some(a),
                            _ => {}
                        }
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (pty, v) in attrs(p) {
                    match pty {
                        CTA_PROTO_NUM if !v.is_empty() => t.proto = Some(v[0]),
                        CTA_PROTO_DST_PORT if v.len() >= 2 => t.dport = Some(u16::from_be_bytes([v[0], v[1]])),
                        CTA_PROTO_SRC_PORT => {}
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    t
}

/// Deletes the conntrack entries of `flows` in this thread's network namespace; returns how many.
pub fn remove(flows: &[StaleFlow]) -> std::io::Result<usize> {
    if flows.is_empty() {
        return Ok(0);
    }
    let mut sock = netlink_sys::Socket::new(NETLINK_NETFILTER)?;
    sock.bind_auto()?;
    sock.send(&header(IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, 1, 0), 0)?;
    // Collect the original tuples (raw) of the entries to delete.
    let mut doomed: Vec<Vec<u8>> = vec![];
    'dump: loop {
        let mut buf = Vec::with_capacity(1 << 16);
        sock.recv(&mut buf, 0)?;
        let msgs = crate::netlink::messages(&buf);
        if msgs.is_empty() {
            break;
        }
        for m in msgs {
            if m.ty == NLMSG_DONE || m.ty == NLMSG_ERROR {
                break 'dump;
            }
            if m.ty != (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW || m.body.len() < 4 {
                continue;
            }
            // After the 4-byte nfgenmsg: the entry's attributes.
            let mut orig_raw = None;
            let (mut orig, mut reply) = (Tuple::default(), Tuple::default());
            for (aty, p) in attrs(&m.body[4..]) {
                match aty {
                    CTA_TUPLE_ORIG => {
                        orig_raw = Some(p.to_vec());
                        orig = tuple(p);
                    }
                    CTA_TUPLE_REPLY => reply = tuple(p),
                    _ => {}
                }
            }
            let hit = orig.proto == Some(UDP)
                && flows.iter().any(|f| {
                    orig.dst == Some(f.vip)
                        && orig.dport == Some(f.port)
                        && reply.src == Some(f.endpoint.unwrap_or(f.vip))
                });
            if let (true, Some(raw)) = (hit, orig_raw) {
                doomed.push(raw);
            }
        }
    }
    let mut removed = 0;
    for (i, raw) in doomed.iter().enumerate() {
        let mut body = vec![];
        let len = 4 + raw.len();
        body.extend_from_slice(&(len as u16).to_ne_bytes());
        body.extend_from_slice(&(CTA_TUPLE_ORIG | 0x8000).to_ne_bytes());
        body.extend_from_slice(raw);
        while body.len() % 4 != 0 {
            body.push(0);
        }
        let mut m = header(IPCTNL_MSG_CT_DELETE, NLM_F_REQUEST | NLM_F_ACK, 2 + i as u32, body.len());
        m.extend_from_slice(&body);
        sock.send(&m, 0)?;
        let mut ack = Vec::with_capacity(4096);
        sock.recv(&mut ack, 0)?;
        // An entry that expired meanwhile (ENOENT) is fine.
        removed += 1;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nested_tuples() {
        // CTA_TUPLE_IP { src 10.0.0.1, dst 10.96.0.10 }, CTA_TUPLE_PROTO { num 17, dport 53 }
        let mut ip = vec![];
        ip.extend_from_slice(&8u16.to_ne_bytes());
        ip.extend_from_slice(&CTA_IP_V4_SRC.to_ne_bytes());
        ip.extend_from_slice(&[10, 0, 0, 1]);
        ip.extend_from_slice(&8u16.to_ne_bytes());
        ip.extend_from_slice(&CTA_IP_V4_DST.to_ne_bytes());
        ip.extend_from_slice(&[10, 96, 0, 10]);
        let mut proto = vec![];
        proto.extend_from_slice(&5u16.to_ne_bytes());
        proto.extend_from_slice(&CTA_PROTO_NUM.to_ne_bytes());
        proto.extend_from_slice(&[17, 0, 0, 0]);
        proto.extend_from_slice(&6u16.to_ne_bytes());
        proto.extend_from_slice(&CTA_PROTO_DST_PORT.to_ne_bytes());
        proto.extend_from_slice(&[0, 53, 0, 0]);
        let mut t = vec![];
        t.extend_from_slice(&((4 + ip.len()) as u16).to_ne_bytes());
        t.extend_from_slice(&(CTA_TUPLE_IP | 0x8000).to_ne_bytes());
        t.extend_from_slice(&ip);
        t.extend_from_slice(&((4 + proto.len()) as u16).to_ne_bytes());
        t.extend_from_slice(&(CTA_TUPLE_PROTO | 0x8000).to_ne_bytes());
        t.extend_from_slice(&proto);
        let p = tuple(&t);
        assert_eq!(p.src, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(p.dst, Some("10.96.0.10".parse().unwrap()));
        assert_eq!((p.proto, p.dport), (Some(17), Some(53)));
    }
}
