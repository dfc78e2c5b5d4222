//! The DNS wire format for the query path: reading a query's header, question and EDNS OPT
//! record, and writing an answer from the zone's pre-encoded record sets. Hand-written because
//! this is the per-query hot path: it allocates nothing but the reply, copies the question as
//! sent (so the reply keeps the client's letter case) and points every owner name at it.
//! Everything else (messages from upstream servers) is parsed with `hickory-proto`.
//!
//! Every read is bounds-checked; a packet that does not parse gets FORMERR or is dropped, never
//! a panic (`tests/server.rs` feeds it arbitrary bytes).

use crate::zone::{Lookup, SetRef, Zone};

pub const T_A: u16 = 1;
pub const T_NS: u16 = 2;
pub const T_CNAME: u16 = 5;
pub const T_SOA: u16 = 6;
pub const T_PTR: u16 = 12;
pub const T_HINFO: u16 = 13;
pub const T_TXT: u16 = 16;
pub const T_AAAA: u16 = 28;
pub const T_SRV: u16 = 33;
pub const T_OPT: u16 = 41;
pub const T_ANY: u16 = 255;
pub const C_IN: u16 = 1;

pub const NOERROR: u8 = 0;
pub const FORMERR: u8 = 1;
pub const SERVFAIL: u8 = 2;
pub const NXDOMAIN: u8 = 3;
pub const NOTIMP: u8 = 4;
pub const REFUSED: u8 = 5;
/// Extended rcode 16 (EDNS version not supported): upper bits in OPT, lower in the header.
pub const BADVERS: u16 = 16;

/// The owner name of an answer record: a compression pointer to the question name (offset 12).
pub const QNAME_PTR: [u8; 2] = [0xc0, 0x0c];

/// The UDP payload size this server advertises (the DNS flag day 2020 value).
pub const EDNS_UDP: u16 = 1232;

const QR: u16 = 0x8000;
const AA: u16 = 0x0400;
const TC: u16 = 0x0200;
pub const RD: u16 = 0x0100;
const RA: u16 = 0x0080;
pub const AD: u16 = 0x0020;
pub const CD: u16 = 0x0010;

/// Appends one resource record.
pub fn push_rr(out: &mut Vec<u8>, owner: &[u8], rtype: u16, ttl: u32, rdata: &[u8]) {
    out.extend(owner);
    out.extend(rtype.to_be_bytes());
    out.extend(C_IN.to_be_bytes());
    out.extend(ttl.to_be_bytes());
    out.extend((rdata.len() as u16).to_be_bytes());
    out.extend(rdata);
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Edns {
    pub udp: u16,
    pub version: u8,
    pub dnssec_ok: bool,
}

/// A parsed query.
#[derive(Debug)]
pub struct Query {
    pub id: u16,
    pub rd: bool,
    /// The header's flags as sent (RD, CD, AD: the bits that change a forwarded answer).
    pub flags: u16,
    /// The question name in lowercase wire format.
    pub lower: Vec<u8>,
    pub qtype: u16,
    pub qclass: u16,
    /// End of the question section in the packet (header + question = `pkt[..question_end]`).
    pub question_end: usize,
    pub edns: Option<Edns>,
}

impl Query {
    /// The largest reply sent to this client over UDP: what it offers, but no more than
    /// `EDNS_UDP` (DNS flag day 2020: larger datagrams fragment, and big replies to forged
    /// sources make this server an amplifier; the client retries over TCP).
    pub fn udp_limit(&self) -> usize {
        match self.edns {
            Some(e) => e.udp.clamp(512, EDNS_UDP) as usize,
            None => 512,
        }
    }
}

#[derive(Debug, PartialEq)]
pub enum Parsed {
    Query(Query),
    /// Answer with this rcode and no question (the question could not be read).
    Error {
        id: u16,
        rd: bool,
        rcode: u8,
    },
    /// Not a query (a response, or too short to carry an ID): send nothing.
    Drop,
}

impl PartialEq for Query {
    fn eq(&self, o: &Self) -> bool {
        (self.id, self.flags, &self.lower, self.qtype, self.qclass, self.question_end, self.edns)
            == (o.id, o.flags, &o.lower, o.qtype, o.qclass, o.question_end, o.edns)
    }
}

fn u16_at(p: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*p.get(i)?, *p.get(i + 1)?]))
}

/// Skips a (possibly compressed) name starting at `i`; returns the offset after it.
fn skip_name(p: &[u8], mut i: usize) -> Option<usize> {
    loop {
        let n = *p.get(i)?;
        match n & 0xc0 {
            0x00 if n == 0 => return Some(i + 1),
            0x00 => i += 1 + n as usize,
            0xc0 => return (i + 2 <= p.len()).then_some(i + 2),
            _ => return None,
        }
    }
}

pub fn parse(p: &[u8]) -> Parsed {
    if p.len() < 12 {
        return Parsed::Drop;
    }
    let id = u16::from_be_bytes([p[0], p[1]]);
    let flags = u16::from_be_bytes([p[2], p[3]]);
    let rd = flags & RD != 0;
    if flags & QR != 0 {
        return Parsed::Drop;
    }
    if (flags >> 11) & 0xf != 0 {
        return Parsed::Error { id, rd, rcode: NOTIMP };
    }
    let err = Parsed::Error { id, rd, rcode: FORMERR };
    let (qd, an, ns, ar) = (u16_at(p, 4), u16_at(p, 6), u16_at(p, 8), u16_at(p, 10));
    if qd != Some(1) || an != Some(0) || ns != Some(0) {
        return err;
    }
    // The question name: labels only (a pointer here could only point into the header).
    let mut lower = Vec::with_capacity(64);
    let mut i = 12;
    loop {
        let Some(&n) = p.get(i) else { return err };
        if n & 0xc0 != 0 {
            return err;
        }
        let Some(label) = p.get(i..i + 1 + n as usize) else { return err };
        lower.extend(label.iter().map(u8::to_ascii_lowercase));
        i += 1 + n as usize;
        if lower.len() > 255 {
            return err;
        }
        if n == 0 {
            break;
        }
    }
    let (Some(qtype), Some(qclass)) = (u16_at(p, i), u16_at(p, i + 2)) else { return err };
    let question_end = i + 4;
    // Additional records: at most one OPT, which must have the root name.
    let mut edns = None;
    let mut j = question_end;
    for _ in 0..ar.unwrap_or(0) {
        let Some(after) = skip_name(p, j) else { return err };
        let (Some(t), Some(class), Some(rdlen)) = (u16_at(p, after), u16_at(p, after + 2), u16_at(p, after + 8)) else {
            return err;
        };
        if t == T_OPT {
            if edns.is_some() || after != j + 1 || p[j] != 0 {
                return err;
            }
            let ttl = &p[after + 4..after + 8];
            edns = Some(Edns { udp: class, version: ttl[1], dnssec_ok: ttl[2] & 0x80 != 0 });
        }
        j = after + 10 + rdlen as usize;
        if j > p.len() {
            return err;
        }
    }
    Parsed::Query(Query { id, rd, flags, lower, qtype, qclass, question_end, edns })
}

fn header(out: &mut Vec<u8>, id: u16, flags: u16, counts: [u16; 4]) {
    out.extend(id.to_be_bytes());
    out.extend(flags.to_be_bytes());
    for c in counts {
        out.extend(c.to_be_bytes());
    }
}

fn push_opt(out: &mut Vec<u8>, ext_rcode: u8) {
    out.push(0);
    out.extend(T_OPT.to_be_bytes());
    out.extend(EDNS_UDP.to_be_bytes());
    out.extend([ext_rcode, 0, 0, 0]);
    out.extend(0u16.to_be_bytes());
}

/// A reply with no question: for queries whose question could not be read.
pub fn error_reply(id: u16, rd: bool, rcode: u8, out: &mut Vec<u8>) {
    out.clear();
    header(out, id, QR | RA | if rd { RD } else { 0 } | rcode as u16, [0; 4]);
}

/// A reply carrying the question and an rcode only (SERVFAIL, REFUSED, truncation).
pub fn bare_reply(q: &Query, pkt: &[u8], rcode: u16, aa: bool, tc: bool, out: &mut Vec<u8>) {
    out.clear();
    let flags = QR | RA | if q.rd { RD } else { 0 } | if aa { AA } else { 0 } | if tc { TC } else { 0 } | (rcode & 0xf);
    header(out, q.id, flags, [1, 0, 0, q.edns.is_some() as u16]);
    out.extend(&pkt[12..q.question_end]);
    if q.edns.is_some() {
        push_opt(out, (rcode >> 4) as u8);
    }
}

/// The answer to ANY for a name outside the zone: one synthesized HINFO instead of whatever
/// the upstream holds (RFC 8482 section 4.2; the record CoreDNS's `any` plugin gives). ANY is
/// the amplifier's favourite question and has no legitimate use a stub resolver depends on.
pub fn rfc8482_reply(q: &Query, pkt: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let flags = QR | RA | if q.rd { RD } else { 0 };
    header(out, q.id, flags, [1, 1, 0, q.edns.is_some() as u16]);
    out.extend(&pkt[12..q.question_end]);
    let mut rdata = vec![];
    for s in [&b"ANY obsoleted"[..], b"See RFC 8482"] {
        rdata.push(s.len() as u8);
        rdata.extend(s);
    }
    push_rr(out, &QNAME_PTR, T_HINFO, 8482, &rdata);
    if q.edns.is_some() {
        push_opt(out, 0);
    }
}

/// What answering from the zone came to.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Outcome {
    /// A reply is in `out`, with this rcode.
    Answered(u8),
    /// The name is not the zone's: forward the query.
    Forward,
}

/// Answers `q` (read from `pkt`) from the zone into `out`, within `limit` bytes (TC set and the
/// records left out when they do not fit).
pub fn answer(zone: &Zone, q: &Query, pkt: &[u8], limit: usize, out: &mut Vec<u8>) -> Outcome {
    if let Some(e) = q.edns
        && e.version > 0
    {
        bare_reply(q, pkt, BADVERS, false, false, out);
        return Outcome::Answered(0);
    }
    if q.qclass != C_IN && q.qclass != T_ANY {
        if zone.zone_offset(&q.lower).is_some() {
            bare_reply(q, pkt, REFUSED as u16, false, false, out);
            return Outcome::Answered(REFUSED);
        }
        return Outcome::Forward;
    }
    let lookup = zone.lookup(&q.lower, q.qtype);
    let (rcode, set): (u8, Option<SetRef>) = match &lookup {
        Lookup::Elsewhere => return Outcome::Forward,
        Lookup::Answer(s) => (NOERROR, Some(*s)),
        Lookup::Made(s) => (NOERROR, Some(s.as_ref())),
        Lookup::NoData => (NOERROR, None),
        Lookup::NxDomain => (NXDOMAIN, None),
    };
    out.clear();
    let edns = q.edns.is_some() as u16;
    let flags = QR | AA | RA | if q.rd { RD } else { 0 } | rcode as u16;
    match set {
        Some(s) => {
            header(out, q.id, flags, [1, s.count, 0, s.extra_count + edns]);
            out.extend(&pkt[12..q.question_end]);
            out.extend(s.wire);
            out.extend(s.extra);
        }
        None => {
            // Negative answers carry the zone's SOA, its owner pointing into the question.
            header(out, q.id, flags, [1, 0, 1, edns]);
            out.extend(&pkt[12..q.question_end]);
            let apex = 12 + zone.zone_offset(&q.lower).unwrap_or(0);
            let ptr = [0xc0 | (apex >> 8) as u8, apex as u8];
            push_rr(out, &ptr, T_SOA, zone.ttl(), zone.soa_rdata());
        }
    }
    if q.edns.is_some() {
        push_opt(out, 0);
    }
    if out.len() > limit {
        bare_reply(q, pkt, rcode as u16, true, true, out);
    }
    Outcome::Answered(rcode)
}

/// Rewrites a cached reply for a new query: its ID, the question as this client wrote it, and
/// every TTL lowered by `elapsed` seconds. None if the message does not walk (never cached then).
pub fn reuse(cached: &[u8], q: &Query, pkt: &[u8], elapsed: u32) -> Option<Vec<u8>> {
    let mut m = cached.to_vec();
    m.get_mut(0..2)?.copy_from_slice(&q.id.to_be_bytes());
    let qlen = q.question_end - 12;
    if m.get(12..12 + qlen)?.eq_ignore_ascii_case(&pkt[12..q.question_end]) {
        m[12..12 + qlen].copy_from_slice(&pkt[12..q.question_end]);
    }
    let counts: u32 = (1..4).map(|k| u16_at(&m, 4 + 2 * k).unwrap_or(0) as u32).sum();
    let mut i = skip_name(&m, 12)? + 4;
    for _ in 0..counts {
        let at = skip_name(&m, i)?;
        let t = u16_at(&m, at)?;
        let rdlen = u16_at(&m, at + 8)? as usize;
        if t != T_OPT {
            let ttl = u32::from_be_bytes(m.get(at + 4..at + 8)?.try_into().ok()?);
            m[at + 4..at + 8].copy_from_slice(&ttl.saturating_sub(elapsed).to_be_bytes());
        }
        i = at + 10 + rdlen;
        if i > m.len() {
            return None;
        }
    }
    Some(m)
}

/// Builds a query (for health checks and loop probes).
pub fn query(id: u16, name: &[u8], qtype: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 16);
    header(&mut out, id, RD, [1, 0, 0, 0]);
    out.extend(name);
    out.extend(qtype.to_be_bytes());
    out.extend(C_IN.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zone::wire_name;

    #[test]
    fn parses_a_plain_query_and_edns() {
        let mut q = query(7, &wire_name("Web.Default.svc.cluster.local").unwrap(), T_A);
        let Parsed::Query(p) = parse(&q) else { panic!() };
        assert_eq!((p.id, p.qtype, p.qclass, p.edns), (7, T_A, C_IN, None));
        assert_eq!(p.lower, wire_name("web.default.svc.cluster.local").unwrap());
        q[11] = 1;
        q.extend([0, 0, 41, 0x10, 0, 0, 0, 0x80, 0, 0, 0]);
        let Parsed::Query(p) = parse(&q) else { panic!() };
        assert_eq!(p.edns, Some(Edns { udp: 4096, version: 0, dnssec_ok: true }));
        assert_eq!(p.udp_limit(), 1232, "the most sent over UDP, whatever the client offers");
    }

    #[test]
    fn rejects_what_is_not_a_query() {
        assert_eq!(parse(&[0; 5]), Parsed::Drop);
        let mut r = query(1, &[0], T_A);
        r[2] |= 0x80;
        assert_eq!(parse(&r), Parsed::Drop, "responses are never answered");
        let mut n = query(1, &[0], T_A);
        n[2] |= 0x28; // opcode 5 (UPDATE)
        assert_eq!(parse(&n), Parsed::Error { id: 1, rd: true, rcode: NOTIMP });
        let mut two = query(1, &[0], T_A);
        two[5] = 2;
        assert!(matches!(parse(&two), Parsed::Error { rcode: FORMERR, .. }));
        // A pointer in the question, and a loop of pointers.
        let mut ptr = query(1, &[0xc0, 0x0c], T_A);
        assert!(matches!(parse(&ptr), Parsed::Error { rcode: FORMERR, .. }));
        ptr.truncate(13);
        assert!(matches!(parse(&ptr), Parsed::Error { rcode: FORMERR, .. }));
        let trunc = &query(1, &wire_name("a.b").unwrap(), T_A)[..15];
        assert!(matches!(parse(trunc), Parsed::Error { rcode: FORMERR, .. }));
    }

    #[test]
    fn reuse_rewrites_id_case_and_ttls() {
        let name = wire_name("example.com").unwrap();
        let pkt = query(9, &name, T_A);
        let Parsed::Query(q) = parse(&pkt) else { panic!() };
        let mut cached = pkt.clone();
        cached[2] |= 0x80;
        cached[7] = 1;
        push_rr(&mut cached, &QNAME_PTR, T_A, 300, &[1, 2, 3, 4]);
        let mut upper = query(10, &b"\x07EXAMPLE\x03com\x00"[..], T_A);
        let Parsed::Query(q2) = parse(&upper) else { panic!() };
        let out = reuse(&cached, &q2, &upper, 100).unwrap();
        assert_eq!(&out[0..2], &10u16.to_be_bytes());
        assert_eq!(&out[12..12 + 13], &upper[12..25]);
        assert_eq!(u32::from_be_bytes(out[out.len() - 10..out.len() - 6].try_into().unwrap()), 200);
        upper.truncate(0);
        assert!(reuse(&cached[..20], &q, &pkt, 1).is_none());
    }
}
