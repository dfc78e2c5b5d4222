//! Every parser of kernel answers takes any bytes without panicking: random bytes, and
//! well-framed messages with random bodies (which reach deeper into the attribute walks).

use proptest::prelude::*;
use weft_netlink::conntrack::{StaleFlow, doomed_in, tuple};
use weft_netlink::nflog;
use weft_netlink::nft::table_names_in;
use weft_netlink::nft::wire::{Attrs, ext_ack_msg, messages};

fn parse_all(buf: &[u8]) {
    for m in messages(buf) {
        let _ = m.error_code();
        let _ = ext_ack_msg(&m);
        for (_, v) in m.nf_attrs() {
            for (_, w) in Attrs(v) {
                let _ = Attrs(w).count();
            }
        }
    }
    let _ = table_names_in(buf);
    let flows = [StaleFlow { vip: [10, 96, 0, 1].into(), port: 53, endpoint: None }];
    let _ = doomed_in(buf, &flows);
    let _ = tuple(buf);
    for l in nflog::parse(buf) {
        let _ = nflog::ipv4(&l.packet);
    }
    let _ = nflog::ipv4(buf);
}

/// Netlink attributes of the given types and payloads, each padded as the kernel pads them.
fn attrs(items: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut out = vec![];
    for (ty, v) in items {
        out.extend_from_slice(&((4 + v.len()) as u16).to_ne_bytes());
        out.extend_from_slice(&ty.to_ne_bytes());
        out.extend_from_slice(v);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }
    out
}

/// A netlink header with a consistent length around `body`, of the given type and flags.
fn framed(ty: u16, flags: u16, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&[0; 8]);
    m.extend_from_slice(body);
    m
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..512)) {
        parse_all(&buf);
    }

    #[test]
    fn framed_messages_with_random_bodies_never_panic(
        ty in prop_oneof![Just(2u16), Just(3), Just(0xa00), Just(0x100), Just(0x400), any::<u16>()],
        flags in prop_oneof![Just(0x100u16), Just(0x200), Just(0x300), any::<u16>()],
        body in proptest::collection::vec(any::<u8>(), 0..512),
        tail in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut buf = framed(ty, flags, &body);
        buf.extend_from_slice(&tail);
        parse_all(&buf);
    }

    /// NFLOG packet messages whose attributes are well framed but whose contents are random
    /// (short headers, prefixes without NUL, payloads that are not IPv4 or are cut anywhere).
    #[test]
    fn nflog_packets_with_random_attributes_never_panic(
        items in proptest::collection::vec((0u16..24, proptest::collection::vec(any::<u8>(), 0..80)), 0..12),
        v4 in proptest::collection::vec(any::<u8>(), 0..80),
    ) {
        let mut body = vec![2, 0, 0, 113];
        let mut items = items;
        // An IPv4-looking payload (version 4, random IHL and the rest).
        let mut payload = v4;
        if let Some(b) = payload.first_mut() {
            *b = 0x40 | (*b & 0x0f);
        }
        items.push((9, payload));
        body.extend(attrs(&items));
        let buf = framed(0x400, 0, &body);
        for l in nflog::parse(&buf) {
            let _ = nflog::ipv4(&l.packet).map(|h| h.icmp());
        }
    }
}
