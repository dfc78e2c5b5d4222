//! The objects of a ruleset: tables, chains, sets and maps, rules, and set elements.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::expr::{Expr, Verdict};
use super::wire::Writer;

/// An nf_tables family (`NFPROTO_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Inet = 1,
    Ip = 2,
    Ip6 = 10,
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Inet => "inet",
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
        }
    }
}

/// A table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    pub family: Family,
    pub name: String,
    /// Shown by `nft list` as the table's `comment`.
    pub comment: Option<String>,
}

impl Table {
    pub fn new(family: Family, name: &str) -> Table {
        Table { family, name: name.into(), comment: None }
    }
}

/// Where a base chain hooks into the stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Prerouting = 0,
    Input = 1,
    Forward = 2,
    Output = 3,
    Postrouting = 4,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainType {
    Filter,
    Nat,
    Route,
}

impl ChainType {
    fn as_str(self) -> &'static str {
        match self {
            ChainType::Filter => "filter",
            ChainType::Nat => "nat",
            ChainType::Route => "route",
        }
    }
}

/// Standard priorities, as `nft` names them.
pub mod priority {
    pub const DSTNAT: i32 = -100;
    pub const FILTER: i32 = 0;
    pub const SRCNAT: i32 = 100;
}

/// What makes a chain a base chain: the hook it is attached to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaseChain {
    pub hook: Hook,
    pub priority: i32,
    pub kind: ChainType,
    /// The verdict when no rule decided: accept (`true`) or drop.
    pub accept: bool,
}

/// A chain: regular (reached by jump or goto), or a base chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    pub base: Option<BaseChain>,
}

impl Chain {
    pub fn regular(name: &str) -> Chain {
        Chain { name: name.into(), base: None }
    }
    pub fn base(name: &str, kind: ChainType, hook: Hook, priority: i32) -> Chain {
        Chain { name: name.into(), base: Some(BaseChain { hook, priority, kind, accept: true }) }
    }
}

/// A rule: the expressions that make it, appended at the end of its chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub chain: String,
    pub exprs: Vec<Expr>,
}

/// Data types `nft` knows (they only change how `nft list` prints a set; the kernel looks at
/// lengths alone).
pub mod datatype {
    pub const INTEGER: u32 = 4;
    pub const IPV4_ADDR: u32 = 7;
    pub const IPV6_ADDR: u32 = 8;
    pub const ETHER_ADDR: u32 = 9;
    pub const INET_PROTO: u32 = 12;
    pub const INET_SERVICE: u32 = 13;
    pub const MARK: u32 = 19;
    pub const VERDICT: u32 = 0xffff_ff00;
}

/// One field of a set's key or data: its `nft` data type and its length in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldType {
    pub ty: u32,
    pub len: u32,
}

impl FieldType {
    pub const IPV4: FieldType = FieldType { ty: datatype::IPV4_ADDR, len: 4 };
    pub const IPV6: FieldType = FieldType { ty: datatype::IPV6_ADDR, len: 16 };
    pub const PROTO: FieldType = FieldType { ty: datatype::INET_PROTO, len: 1 };
    pub const PORT: FieldType = FieldType { ty: datatype::INET_SERVICE, len: 2 };
    /// A 32-bit number such as a `numgen` or `jhash` result.
    pub const U32: FieldType = FieldType { ty: datatype::INTEGER, len: 4 };
    pub const MARK: FieldType = FieldType { ty: datatype::MARK, len: 4 };
}

/// `nft`'s type of a concatenation: the field types, 6 bits each.
fn concat_type(fields: &[FieldType]) -> u32 {
    fields.iter().fold(0, |t, f| (t << 6) | f.ty)
}

/// Length of a concatenation as registers hold it: each field in whole 4-byte slots.
fn concat_len(fields: &[FieldType]) -> u32 {
    if fields.len() == 1 {
        return fields[0].len;
    }
    fields.iter().map(|f| f.len.div_ceil(4) * 4).sum()
}

/// What a map's elements lead to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SetData {
    Verdict,
    Value(Vec<FieldType>),
}

/// A named set or map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Set {
    pub name: String,
    /// The key's fields (more than one: a concatenation).
    pub key: Vec<FieldType>,
    /// A map's data; `None` for a set.
    pub data: Option<SetData>,
    /// Elements are ranges (prefixes, intervals); a concatenation with intervals gives each
    /// element a `key_end`.
    pub interval: bool,
    pub constant: bool,
    /// How `nft list` declares the key and data (`typeof ...`): needed for fields whose type
    /// has no fixed length (a `numgen` result), optional otherwise. Empty: by data type.
    pub typeof_key: Vec<Typeof>,
    pub typeof_data: Vec<Typeof>,
}

/// An expression as a set's `typeof` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Typeof {
    IpSaddr,
    IpDaddr,
    L4Proto,
    /// `tcp dport`, `udp dport`, `sctp dport` by IP protocol number.
    Dport(u8),
    NumgenRandom {
        modulus: u32,
    },
}

impl Set {
    pub fn plain(name: &str, key: &[FieldType]) -> Set {
        Set {
            name: name.into(),
            key: key.to_vec(),
            data: None,
            interval: false,
            constant: false,
            typeof_key: vec![],
            typeof_data: vec![],
        }
    }
    pub fn map(name: &str, key: &[FieldType], data: SetData) -> Set {
        Set { data: Some(data), ..Set::plain(name, key) }
    }
}

/// A set element: its key (laid out with [`Key`]), for an interval concatenation the end of
/// its range, and a map element's data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Elem {
    pub key: Vec<u8>,
    pub key_end: Option<Vec<u8>>,
    pub data: Option<ElemData>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ElemData {
    Value(Vec<u8>),
    Verdict(Verdict),
}

impl Elem {
    pub fn key(key: Vec<u8>) -> Elem {
        Elem { key, key_end: None, data: None }
    }
}

/// A range of a one-field interval set (`flags interval`; the kernel keeps it in an rbtree as
/// a start element and an end element): `start` is its first key, `end` the first key past it,
/// `None` when the range runs to the top of the key space (as for `128.0.0.0/1`). Concatenated
/// interval sets take [`Elem::key_end`] instead.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Interval {
    pub start: Vec<u8>,
    pub end: Option<Vec<u8>>,
}

impl Interval {
    /// The addresses `first..=last`.
    pub fn ipv4(first: Ipv4Addr, last: Ipv4Addr) -> Interval {
        Interval {
            start: first.octets().to_vec(),
            end: u32::from(last).checked_add(1).map(|e| e.to_be_bytes().to_vec()),
        }
    }
}

/// Lays out a key or value as registers hold it: each field of a concatenation padded to whole
/// 4-byte slots; addresses and ports in network byte order, `numgen`/`jhash` results in host
/// byte order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Key(pub Vec<u8>);

impl Key {
    pub fn new() -> Key {
        Key::default()
    }
    fn field(mut self, b: &[u8]) -> Key {
        self.0.extend_from_slice(b);
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
        self
    }
    pub fn ipv4(self, ip: Ipv4Addr) -> Key {
        self.field(&ip.octets())
    }
    pub fn ipv6(self, ip: Ipv6Addr) -> Key {
        self.field(&ip.octets())
    }
    pub fn proto(self, p: u8) -> Key {
        self.field(&[p])
    }
    pub fn port(self, p: u16) -> Key {
        self.field(&p.to_be_bytes())
    }
    /// A number as nft's host-order expressions produce it (`numgen`, `jhash`, marks).
    pub fn host_u32(self, n: u32) -> Key {
        self.field(&n.to_ne_bytes())
    }
    pub fn bytes(self) -> Vec<u8> {
        self.0
    }
}

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_USERDATA: u16 = 6;

pub(crate) fn encode_table(w: &mut Writer, t: &Table) {
    w.str(NFTA_TABLE_NAME, &t.name);
    if let Some(c) = &t.comment {
        // libnftnl's table user data: NFTNL_UDATA_TABLE_COMMENT (0), length, text with its NUL.
        let mut u = vec![0u8, (c.len() + 1).min(255) as u8];
        u.extend_from_slice(&c.as_bytes()[..c.len().min(254)]);
        u.push(0);
        w.bytes(NFTA_TABLE_USERDATA, &u);
    }
}

pub(crate) fn encode_chain(w: &mut Writer, table: &str, c: &Chain) {
    w.str(1, table);
    w.str(3, &c.name);
    if let Some(b) = &c.base {
        w.nested(4, |w| {
            w.be32(1, b.hook as u32);
            w.be32(2, b.priority as u32);
        });
        w.be32(5, u32::from(b.accept));
        w.str(7, b.kind.as_str());
    }
}

pub(crate) fn encode_rule(w: &mut Writer, table: &str, r: &Rule) {
    w.str(1, table);
    w.str(2, &r.chain);
    w.nested(4, |w| {
        for e in &r.exprs {
            e.encode(w);
        }
    });
}

pub(crate) fn encode_set(w: &mut Writer, table: &str, s: &Set, id: u32) {
    const ANONYMOUS_UNUSED: u32 = 0;
    const CONSTANT: u32 = 0x2;
    const INTERVAL: u32 = 0x4;
    const MAP: u32 = 0x8;
    const CONCAT: u32 = 0x80;
    let concat_interval = s.interval && s.key.len() > 1;
    let flags = ANONYMOUS_UNUSED
        | if s.constant { CONSTANT } else { 0 }
        | if s.interval { INTERVAL } else { 0 }
        | if s.data.is_some() { MAP } else { 0 }
        | if concat_interval { CONCAT } else { 0 };
    w.str(1, table);
    w.str(2, &s.name);
    w.be32(3, flags);
    w.be32(4, concat_type(&s.key));
    w.be32(5, concat_len(&s.key));
    match &s.data {
        None => {}
        Some(SetData::Verdict) => {
            w.be32(6, datatype::VERDICT);
            w.be32(7, 0);
        }
        Some(SetData::Value(f)) => {
            w.be32(6, concat_type(f));
            w.be32(7, concat_len(f));
        }
    }
    if concat_interval {
        // NFTA_SET_DESC { NFTA_SET_DESC_CONCAT { elem { field len } ... } }: the field lengths
        // the interval concatenation (pipapo) matches field by field.
        w.nested(9, |w| {
            w.nested(2, |w| {
                for f in &s.key {
                    w.nested(1, |w| w.be32(1, f.len));
                }
            })
        });
    }
    w.be32(10, id);
    if !s.typeof_key.is_empty() {
        w.bytes(13, &typeof_udata(&s.typeof_key, &s.typeof_data));
    }
}

/// libnftnl's set user data for `typeof` (TLVs of a u8 type, a u8 length and host-order u32s),
/// laid out as `nft` writes it.
fn typeof_udata(key: &[Typeof], data: &[Typeof]) -> Vec<u8> {
    fn tlv(out: &mut Vec<u8>, ty: u8, inner: impl FnOnce(&mut Vec<u8>)) {
        let start = out.len();
        out.extend_from_slice(&[ty, 0]);
        inner(out);
        out[start + 1] = (out.len() - start - 2) as u8;
    }
    fn u32_tlv(out: &mut Vec<u8>, ty: u8, v: u32) {
        tlv(out, ty, |o| o.extend_from_slice(&v.to_ne_bytes()));
    }
    fn expr(out: &mut Vec<u8>, e: &Typeof) {
        // nft's expression kinds and protocol descriptions (payload 7, meta 9, numgen 23; ip 12,
        // tcp 8, udp 6, sctp 10).
        let (kind, fields): (u32, Vec<u32>) = match e {
            Typeof::IpSaddr => (7, vec![12, 11]),
            Typeof::IpDaddr => (7, vec![12, 12]),
            Typeof::L4Proto => (9, vec![16]),
            Typeof::Dport(p) => (
                7,
                vec![
                    match p {
                        17 => 6,
                        132 => 10,
                        _ => 8,
                    },
                    2,
                ],
            ),
            Typeof::NumgenRandom { modulus } => (23, vec![1, *modulus, 0]),
        };
        u32_tlv(out, 0, kind);
        tlv(out, 1, |o| {
            for (i, f) in fields.iter().enumerate() {
                u32_tlv(o, i as u8, *f);
            }
        });
    }
    fn typed(out: &mut Vec<u8>, exprs: &[Typeof]) {
        if let [one] = exprs {
            return expr(out, one);
        }
        u32_tlv(out, 0, 13); // a concatenation
        tlv(out, 1, |o| {
            for (i, e) in exprs.iter().enumerate() {
                tlv(o, i as u8, |o| expr(o, e));
            }
        });
    }
    let mut u = vec![];
    u32_tlv(&mut u, 0, 0); // key byte order: per field
    u32_tlv(&mut u, 1, 0);
    tlv(&mut u, 3, |o| typed(o, key));
    if !data.is_empty() {
        tlv(&mut u, 4, |o| typed(o, data));
        u32_tlv(&mut u, 6, 0);
    }
    u
}

pub(crate) fn encode_elem(w: &mut Writer, e: &Elem, with_data: bool) {
    use super::expr::encode_value;
    const NFTA_SET_ELEM_KEY: u16 = 1;
    const NFTA_SET_ELEM_DATA: u16 = 2;
    const NFTA_SET_ELEM_KEY_END: u16 = 10;
    w.nested(1, |w| {
        encode_value(w, NFTA_SET_ELEM_KEY, &e.key);
        if let Some(end) = &e.key_end {
            encode_value(w, NFTA_SET_ELEM_KEY_END, end);
        }
        match (&e.data, with_data) {
            (Some(ElemData::Value(v)), true) => encode_value(w, NFTA_SET_ELEM_DATA, v),
            (Some(ElemData::Verdict(v)), true) => w.nested(NFTA_SET_ELEM_DATA, |w| v.encode(w)),
            _ => {}
        }
    });
}

/// A one-field interval as `nft` sends it: the start element (an open range carries libnftnl's
/// "open interval" flag in its user data, for `nft list`), then the end element flagged as one.
pub(crate) fn encode_interval(w: &mut Writer, iv: &Interval) {
    use super::expr::encode_value;
    const NFTA_SET_ELEM_KEY: u16 = 1;
    const NFTA_SET_ELEM_FLAGS: u16 = 3;
    const NFTA_SET_ELEM_USERDATA: u16 = 6;
    const NFT_SET_ELEM_INTERVAL_END: u32 = 1;
    w.nested(1, |w| {
        encode_value(w, NFTA_SET_ELEM_KEY, &iv.start);
        if iv.end.is_none() {
            // NFTNL_UDATA_SET_ELEM_FLAGS (1), 4 bytes, NFTNL_SET_ELEM_F_INTERVAL_OPEN (1).
            let mut u = vec![1u8, 4];
            u.extend_from_slice(&1u32.to_ne_bytes());
            w.bytes(NFTA_SET_ELEM_USERDATA, &u);
        }
    });
    if let Some(end) = &iv.end {
        w.nested(1, |w| {
            w.be32(NFTA_SET_ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END);
            encode_value(w, NFTA_SET_ELEM_KEY, end);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_one_field_interval_is_a_start_and_a_flagged_end() {
        let mut w = Writer::default();
        encode_interval(&mut w, &Interval::ipv4(Ipv4Addr::new(192, 168, 1, 7), Ipv4Addr::new(192, 168, 1, 9)));
        let elems: Vec<_> = super::super::wire::Attrs(&w.buf).collect();
        assert_eq!(elems.len(), 2);
        // start: { key { value 192.168.1.7 } }
        assert_eq!(elems[0].1, [12, 0, 1, 0x80, 8, 0, 1, 0, 192, 168, 1, 7]);
        // end: { flags 1 (big-endian), key { value 192.168.1.10 } }, as nft's `element 0a01a8c0 : 1 [end]`
        assert_eq!(elems[1].1, [8, 0, 3, 0, 0, 0, 0, 1, 12, 0, 1, 0x80, 8, 0, 1, 0, 192, 168, 1, 10]);
        // A range to the top of the space has no end element.
        let top = Interval::ipv4(Ipv4Addr::new(128, 0, 0, 0), Ipv4Addr::BROADCAST);
        assert_eq!(top.end, None);
        let mut w = Writer::default();
        encode_interval(&mut w, &top);
        assert_eq!(super::super::wire::Attrs(&w.buf).count(), 1);
    }

    #[test]
    fn concatenations_are_typed_and_sized_as_nft_does() {
        use FieldType as F;
        // `nft --debug=mnl`: backends-tcp's key type 0x1cc344, length 16; data 0x1cd, 8.
        assert_eq!(concat_type(&[F::IPV4, F::PROTO, F::PORT, F::U32]), 0x1cc344);
        assert_eq!(concat_len(&[F::IPV4, F::PROTO, F::PORT, F::U32]), 16);
        assert_eq!(concat_type(&[F::IPV4, F::PORT]), 0x1cd);
        assert_eq!(concat_len(&[F::PORT]), 2);
    }

    #[test]
    fn typeof_user_data_is_what_nft_writes() {
        // `nft --debug=mnl` for `typeof meta l4proto . udp dport . numgen random mod 2 : ip saddr . udp dport`
        let want = "00 04 00 00 00 00 01 04 00 00 00 00 03 4a 00 04 0d 00 00 00 01 42 00 0e 00 04 09 00 00 00 01 06 00 04 10 00 00 00 01 14 00 04 07 00 00 00 01 0c 00 04 06 00 00 00 01 04 02 00 00 00 02 1a 00 04 17 00 00 00 01 12 00 04 01 00 00 00 01 04 02 00 00 00 02 04 00 00 00 00 04 34 00 04 0d 00 00 00 01 2c 00 14 00 04 07 00 00 00 01 0c 00 04 0c 00 00 00 01 04 0b 00 00 00 01 14 00 04 07 00 00 00 01 0c 00 04 06 00 00 00 01 04 02 00 00 00 06 04 00 00 00 00";
        let got = typeof_udata(
            &[Typeof::L4Proto, Typeof::Dport(17), Typeof::NumgenRandom { modulus: 2 }],
            &[Typeof::IpSaddr, Typeof::Dport(17)],
        );
        let hex: Vec<String> = got.iter().map(|b| format!("{b:02x}")).collect();
        if cfg!(target_endian = "little") {
            assert_eq!(hex.join(" "), want);
        }
    }

    #[test]
    fn keys_are_laid_out_in_registers() {
        let k = Key::new().ipv4(Ipv4Addr::new(10, 96, 0, 5)).proto(6).port(80).host_u32(2).bytes();
        assert_eq!(&k[..12], &[10, 96, 0, 5, 6, 0, 0, 0, 0, 80, 0, 0]);
        assert_eq!(&k[12..], &2u32.to_ne_bytes());
    }

    #[test]
    fn an_interval_concatenation_describes_its_fields() {
        use FieldType as F;
        let mut w = Writer::default();
        let s = Set { interval: true, ..Set::plain("fw", &[F::IPV4, F::PROTO, F::PORT, F::IPV4]) };
        encode_set(&mut w, "t", &s, 3);
        let attrs: Vec<_> = super::super::wire::Attrs(&w.buf).collect();
        assert_eq!(attrs[2], (3, &0x84u32.to_be_bytes()[..]), "interval and concat flags");
        let desc = attrs.iter().find(|a| a.0 == 9).unwrap().1;
        // concat { 4 x elem { len } }: 4 + 4 * 12 bytes
        assert_eq!(desc.len(), 52);
        assert_eq!(&desc[desc.len() - 4..], &4u32.to_be_bytes());
    }
}
