//! nfnetlink_log: receiving the packets an nf_tables `log group N` rule copies to NFLOG, as
//! ulogd does, without libnetfilter_log. A [`Subscriber`] binds one log group in the network
//! namespace of the thread that opens it (a netlink socket stays in the namespace it was made
//! in) and asks for the first bytes of each packet; [`parse`] reads NFULNL_MSG_PACKET messages
//! into [`Logged`] packets and [`ipv4`] reads an IPv4 packet's addresses, protocol and ports.
//! Every received byte is read with its length checked: a malformed or hostile message is left
//! out, never a panic (`tests/nft_fuzz.rs` feeds random bytes to both parsers).
//!
//! ```no_run
//! use std::time::Duration;
//! let mut sub = weft_netlink::nflog::Subscriber::bind(113, 96).unwrap();
//! for p in sub.recv(Duration::from_secs(1)).unwrap() {
//!     println!("{} {:?}", p.prefix, weft_netlink::nflog::ipv4(&p.packet));
//! }
//! ```

use std::net::Ipv4Addr;
use std::time::Duration;

use nix::errno::Errno;

use crate::error::{Error, Result};
use crate::nft::socket::Socket;
use crate::nft::wire::{self, Msg, NLM_F_ACK, NLM_F_REQUEST, Writer};

const NFNL_SUBSYS_ULOG: u16 = 4;
const NFULNL_MSG_PACKET: u16 = 0;
const NFULNL_MSG_CONFIG: u16 = 1;

const NFULA_CFG_CMD: u16 = 1;
const NFULA_CFG_MODE: u16 = 2;
const NFULA_CFG_NLBUFSIZ: u16 = 3;
const NFULA_CFG_TIMEOUT: u16 = 4;
const NFULA_CFG_QTHRESH: u16 = 5;
const NFULNL_CFG_CMD_BIND: u8 = 1;
const NFULNL_COPY_PACKET: u8 = 2;

const NFULA_PACKET_HDR: u16 = 1;
const NFULA_TIMESTAMP: u16 = 3;
const NFULA_IFINDEX_INDEV: u16 = 4;
const NFULA_IFINDEX_OUTDEV: u16 = 5;
const NFULA_PAYLOAD: u16 = 9;
const NFULA_PREFIX: u16 = 10;

/// IP protocol numbers [`ipv4`] reads ports (or type and code) of.
pub const ICMP: u8 = 1;
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const SCTP: u8 = 132;

/// The message type of an nfnetlink_log message.
fn msg_type(m: u16) -> u16 {
    (NFNL_SUBSYS_ULOG << 8) | m
}

/// One packet NFLOG copied to the group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Logged {
    /// The log group (the message's resource id).
    pub group: u16,
    /// The protocol family of the hook that logged it (2 for `ip` tables).
    pub family: u8,
    /// The packet's link-layer protocol (0x0800 for IPv4), as the kernel gives it.
    pub hw_protocol: u16,
    /// The netfilter hook number (2: forward).
    pub hook: u8,
    /// The rule's log prefix.
    pub prefix: String,
    pub indev: Option<u32>,
    pub outdev: Option<u32>,
    /// When the kernel stamped it, if it did (seconds and microseconds since the epoch).
    pub timestamp: Option<(u64, u64)>,
    /// The packet from its network header on, at most the copy range the group was bound with.
    pub packet: Vec<u8>,
}

fn be_u32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

fn be_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(..8)?.try_into().ok()?))
}

/// One NFULNL_MSG_PACKET message, or None for any other message (or one without its header).
pub fn parse_msg(m: &Msg) -> Option<Logged> {
    if m.ty != msg_type(NFULNL_MSG_PACKET) {
        return None;
    }
    let head = m.body.get(..4)?;
    let mut out = Logged { family: head[0], group: u16::from_be_bytes([head[2], head[3]]), ..Logged::default() };
    let mut header = false;
    for (ty, v) in m.nf_attrs() {
        match ty {
            NFULA_PACKET_HDR => {
                if let Some(h) = v.get(..3) {
                    out.hw_protocol = u16::from_be_bytes([h[0], h[1]]);
                    out.hook = h[2];
                    header = true;
                }
            }
            NFULA_PREFIX => out.prefix = wire::attr_str(v),
            NFULA_PAYLOAD => out.packet = v.to_vec(),
            NFULA_IFINDEX_INDEV => out.indev = be_u32(v),
            NFULA_IFINDEX_OUTDEV => out.outdev = be_u32(v),
            NFULA_TIMESTAMP => out.timestamp = be_u64(v).zip(v.get(8..).and_then(be_u64)),
            _ => {}
        }
    }
    header.then_some(out)
}

/// Every logged packet in a received datagram (any bytes: what is malformed is left out).
pub fn parse(buf: &[u8]) -> Vec<Logged> {
    wire::messages(buf).filter_map(|m| parse_msg(&m)).collect()
}

/// What a policy needs of an IPv4 packet's headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Summary {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// The IP protocol number (6 TCP, 17 UDP, 132 SCTP, 1 ICMP, ...).
    pub protocol: u8,
    /// TCP, UDP and SCTP: the ports; ICMP: the type and the code. None for other protocols, a
    /// fragment after the first, or a transport header cut short.
    pub src_port: Option<u16>,
    pub dst_port: Option<u16>,
}

impl Ipv4Summary {
    /// ICMP's (type, code), for an ICMP packet whose header was there.
    pub fn icmp(&self) -> Option<(u8, u8)> {
        if self.protocol != ICMP {
            return None;
        }
        Some((self.src_port? as u8, self.dst_port? as u8))
    }
}

/// Reads an IPv4 packet's header (and the first bytes of its transport header); None when it is
/// not IPv4 or its header is cut short or inconsistent.
pub fn ipv4(packet: &[u8]) -> Option<Ipv4Summary> {
    let first = *packet.first()?;
    if first >> 4 != 4 {
        return None;
    }
    let ihl = ((first & 0x0f) as usize) * 4;
    if ihl < 20 {
        return None;
    }
    let header = packet.get(..ihl)?;
    let protocol = header[9];
    let src = Ipv4Addr::new(header[12], header[13], header[14], header[15]);
    let dst = Ipv4Addr::new(header[16], header[17], header[18], header[19]);
    let fragment_offset = u16::from_be_bytes([header[6], header[7]]) & 0x1fff;
    let total = u16::from_be_bytes([header[2], header[3]]) as usize;
    if total != 0 && total < ihl {
        return None;
    }
    let mut out = Ipv4Summary { src, dst, protocol, src_port: None, dst_port: None };
    if fragment_offset != 0 {
        return Some(out);
    }
    let l4 = &packet[ihl..];
    match protocol {
        TCP | UDP | SCTP => {
            if let Some(p) = l4.get(..4) {
                out.src_port = Some(u16::from_be_bytes([p[0], p[1]]));
                out.dst_port = Some(u16::from_be_bytes([p[2], p[3]]));
            }
        }
        ICMP => {
            if let Some(p) = l4.get(..2) {
                out.src_port = Some(p[0] as u16);
                out.dst_port = Some(p[1] as u16);
            }
        }
        _ => {}
    }
    Some(out)
}

/// The configuration message binding `group` with packet copies of `copy_range` bytes,
/// delivered at once (a queue threshold of one packet).
fn bind_message(group: u16, copy_range: u32) -> Vec<u8> {
    let mut w = Writer::default();
    w.bytes(NFULA_CFG_CMD, &[NFULNL_CFG_CMD_BIND]);
    let mut mode = copy_range.to_be_bytes().to_vec();
    mode.extend_from_slice(&[NFULNL_COPY_PACKET, 0]);
    w.bytes(NFULA_CFG_MODE, &mode);
    w.be32(NFULA_CFG_QTHRESH, 1);
    // Hundredths of a second a partly filled batch may wait (the threshold above sends at once).
    w.be32(NFULA_CFG_TIMEOUT, 10);
    w.be32(NFULA_CFG_NLBUFSIZ, 64 * 1024);
    // nfgen_family AF_UNSPEC, resource id = the group.
    wire::message(msg_type(NFULNL_MSG_CONFIG), NLM_F_REQUEST | NLM_F_ACK, 1, 0, group, &w.buf)
}

/// A socket bound to one NFLOG group in the network namespace it was opened in. The binding
/// ends when it is dropped (the kernel removes a group's listener with its socket).
pub struct Subscriber {
    sock: Socket,
    group: u16,
    /// Packets that came with the binding's acknowledgement.
    early: Vec<Logged>,
    /// Datagrams the kernel could not deliver because the socket's buffer was full.
    overruns: u64,
}

impl Subscriber {
    /// Binds `group` in this thread's network namespace, copying the first `copy_range` bytes of
    /// each packet. Fails (EPERM) when another socket has the group.
    pub fn bind(group: u16, copy_range: u32) -> Result<Subscriber> {
        let sock = Socket::open()?;
        // Room for bursts (root may go past rmem_max; otherwise the default stays).
        sock.size_for(0, 2048);
        let mut early = vec![];
        let what = format!("binding NFLOG group {group}");
        sock.request(&bind_message(group, copy_range), &what, |m| early.extend(parse_msg(m))).map_err(|e| {
            if e.errno_value() == Some(Errno::EPERM) {
                Error::other(format!("{what}: another listener has this group in this network namespace"))
            } else {
                e
            }
        })?;
        Ok(Subscriber { sock, group, early, overruns: 0 })
    }

    pub fn group(&self) -> u16 {
        self.group
    }

    /// How many times the kernel dropped messages because this socket's buffer was full.
    pub fn overruns(&self) -> u64 {
        self.overruns
    }

    /// The packets logged since the last call, waiting up to `timeout` for the first (an empty
    /// list when none came). An overrun (ENOBUFS: the kernel dropped messages for a full
    /// buffer) is counted in [`Subscriber::overruns`] and reading goes on.
    pub fn recv(&mut self, timeout: Duration) -> Result<Vec<Logged>> {
        if !self.early.is_empty() {
            return Ok(std::mem::take(&mut self.early));
        }
        self.sock.set_recv_timeout(timeout.max(Duration::from_millis(1)));
        match self.sock.recv_within() {
            Ok(None) => Ok(vec![]),
            Ok(Some(buf)) => Ok(parse(&buf)),
            Err(e) if e.errno_value() == Some(Errno::ENOBUFS) => {
                self.overruns += 1;
                Ok(vec![])
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A packet message as the kernel writes it.
    pub(crate) fn packet_msg(group: u16, prefix: &str, payload: &[u8]) -> Vec<u8> {
        let mut w = Writer::default();
        w.bytes(NFULA_PACKET_HDR, &[0x08, 0x00, 2, 0]);
        w.be32(NFULA_IFINDEX_INDEV, 3);
        w.bytes(NFULA_TIMESTAMP, &[0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 7]);
        w.str(NFULA_PREFIX, prefix);
        w.bytes(NFULA_PAYLOAD, payload);
        wire::message(msg_type(NFULNL_MSG_PACKET), 0, 0, 2, group, &w.buf)
    }

    fn udp_packet() -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 33, 0, 1, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2];
        p.extend_from_slice(&[0xa8, 0xca, 0, 53, 0, 13, 0, 0, b'h', b'e', b'l', b'l', b'o']);
        p
    }

    #[test]
    fn reads_a_packet_message() {
        let mut buf = packet_msg(113, "in-0123456789abcdef", &udp_packet());
        buf.extend(wire::message(wire::NLMSG_DONE, 0, 0, 0, 0, &[]));
        let got = parse(&buf);
        assert_eq!(got.len(), 1);
        let l = &got[0];
        assert_eq!((l.group, l.family, l.hw_protocol, l.hook), (113, 2, 0x0800, 2));
        assert_eq!(l.prefix, "in-0123456789abcdef");
        assert_eq!((l.indev, l.outdev, l.timestamp), (Some(3), None, Some((9, 7))));
        let h = ipv4(&l.packet).unwrap();
        assert_eq!(
            h,
            Ipv4Summary {
                src: Ipv4Addr::new(10, 0, 0, 1),
                dst: Ipv4Addr::new(10, 0, 0, 2),
                protocol: UDP,
                src_port: Some(43210),
                dst_port: Some(53)
            }
        );
    }

    #[test]
    fn ipv4_headers_with_options_fragments_icmp_and_short_packets() {
        // TCP with 4 bytes of options (IHL 6).
        let mut p = vec![0x46, 0, 0, 44, 0, 0, 0, 0, 64, 6, 0, 0, 192, 168, 1, 1, 192, 168, 1, 2, 1, 1, 1, 1];
        p.extend_from_slice(&[0x30, 0x39, 0, 80]);
        let h = ipv4(&p).unwrap();
        assert_eq!((h.protocol, h.src_port, h.dst_port), (TCP, Some(12345), Some(80)));
        // A later fragment has no transport header.
        let mut frag = p.clone();
        frag[6] = 0x00;
        frag[7] = 0x10;
        assert_eq!(ipv4(&frag).unwrap().dst_port, None);
        // ICMP echo request: type 8, code 0.
        let mut icmp = p.clone();
        icmp[9] = ICMP;
        icmp[24] = 8;
        icmp[25] = 0;
        assert_eq!(ipv4(&icmp).unwrap().icmp(), Some((8, 0)));
        // Cut in the transport header: addresses, no ports.
        let h = ipv4(&p[..26]).unwrap();
        assert_eq!((h.src_port, h.dst_port), (None, None));
        // Cut in the IP header, not IPv4, or an IHL below 5.
        assert_eq!(ipv4(&p[..23]), None);
        assert_eq!(ipv4(&[0x60; 40]), None);
        assert_eq!(ipv4(&[0x44; 40]), None);
        assert_eq!(ipv4(&[]), None);
    }

    #[test]
    fn other_messages_and_cut_messages_are_left_out() {
        let full = packet_msg(1, "x", &udp_packet());
        for n in 0..full.len() {
            let _ = parse(&full[..n]);
        }
        // A packet message without its header attribute is no packet.
        let mut w = Writer::default();
        w.str(NFULA_PREFIX, "x");
        assert!(parse(&wire::message(msg_type(NFULNL_MSG_PACKET), 0, 0, 2, 1, &w.buf)).is_empty());
        assert!(parse(&wire::message(msg_type(NFULNL_MSG_CONFIG), 0, 0, 2, 1, &w.buf)).is_empty());
    }

    #[test]
    fn the_bind_message_is_as_libnetfilter_log_writes_it() {
        let m = bind_message(113, 96);
        let msgs: Vec<_> = wire::messages(&m).collect();
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].ty, (4 << 8) | 1);
        assert_eq!(&msgs[0].body[..4], &[0, 0, 0, 113]);
        let attrs: Vec<_> = msgs[0].nf_attrs().collect();
        assert_eq!(attrs[0], (NFULA_CFG_CMD, &[1u8][..]));
        assert_eq!(attrs[1], (NFULA_CFG_MODE, &[0, 0, 0, 96, 2, 0][..]));
        assert_eq!(attrs[2], (NFULA_CFG_QTHRESH, &[0, 0, 0, 1][..]));
    }
}
