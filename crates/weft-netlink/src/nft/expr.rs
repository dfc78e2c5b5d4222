//! Rule expressions: the nf_tables bytecode a rule is made of, one typed value per kernel
//! expression, encoded as `nft` itself encodes them (compare with `nft --debug=netlink`).

use super::wire::Writer;

/// A register. [`Reg::VERDICT`] holds a rule's verdict; data registers are 32-bit slots
/// (`Reg::slot(0)` .. `Reg::slot(15)`), a field of a concatenation starting where the one
/// before it ended (each field padded to whole slots).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Reg(pub u32);

impl Reg {
    pub const VERDICT: Reg = Reg(0);
    /// The 32-bit slot `n` (0..=15), numbered as `nft` numbers them: slot 0 as the first
    /// 128-bit register (`reg 1`), the others as `NFT_REG32_n` (`reg 9`, `reg 10`, ...).
    pub const fn slot(n: u32) -> Reg {
        if n == 0 { Reg(1) } else { Reg(8 + n) }
    }
}

/// A verdict: what a rule (or a verdict map element) does with the packet.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    Accept,
    Drop,
    Continue,
    Return,
    Jump(String),
    Goto(String),
}

impl Verdict {
    fn code(&self) -> i32 {
        match self {
            Verdict::Drop => 0,
            Verdict::Accept => 1,
            Verdict::Continue => -1,
            Verdict::Jump(_) => -3,
            Verdict::Goto(_) => -4,
            Verdict::Return => -5,
        }
    }
    pub(crate) fn encode(&self, w: &mut Writer) {
        const NFTA_DATA_VERDICT: u16 = 2;
        const NFTA_VERDICT_CODE: u16 = 1;
        const NFTA_VERDICT_CHAIN: u16 = 2;
        w.nested(NFTA_DATA_VERDICT, |w| {
            w.be32(NFTA_VERDICT_CODE, self.code() as u32);
            if let Verdict::Jump(c) | Verdict::Goto(c) = self {
                w.str(NFTA_VERDICT_CHAIN, c);
            }
        });
    }
}

pub(crate) fn encode_value(w: &mut Writer, ty: u16, v: &[u8]) {
    const NFTA_DATA_VALUE: u16 = 1;
    w.nested(ty, |w| w.bytes(NFTA_DATA_VALUE, v));
}

/// Where a payload load starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadBase {
    Link = 0,
    Network = 1,
    Transport = 2,
}

/// Packet metadata (`meta KEY`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaKey {
    Len = 0,
    Protocol = 1,
    Mark = 3,
    Iif = 4,
    Oif = 5,
    IifName = 6,
    OifName = 7,
    NfProto = 15,
    L4Proto = 16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    Eq = 0,
    Neq = 1,
    Lt = 2,
    Lte = 3,
    Gt = 4,
    Gte = 5,
}

/// What `fib` looks up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FibResult {
    Oif = 1,
    OifName = 2,
    AddrType = 3,
}

/// `fib` flags: which address it asks about and what it keys the lookup by.
pub mod fib_flags {
    pub const SADDR: u32 = 1;
    pub const DADDR: u32 = 2;
    pub const MARK: u32 = 4;
    pub const IIF: u32 = 8;
    pub const OIF: u32 = 16;
}

/// Route types `fib ... type` yields (RTN_*).
pub mod addr_type {
    pub const UNICAST: u32 = 1;
    pub const LOCAL: u32 = 2;
}

/// `reject with`: an ICMP(v4) code, a TCP reset, or an ICMPx code (inet family).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    Icmp(u8),
    TcpReset,
    Icmpx(u8),
}

impl Reject {
    /// `reject` with no argument: ICMP port unreachable.
    pub const PORT_UNREACHABLE: Reject = Reject::Icmp(3);
}

/// Connection tracking keys (`ct KEY`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtKey {
    State = 0,
    Direction = 1,
    Status = 2,
    Mark = 3,
}

/// `ct state` bits.
pub mod ct_state {
    pub const INVALID: u32 = 1;
    pub const ESTABLISHED: u32 = 2;
    pub const RELATED: u32 = 4;
    pub const NEW: u32 = 8;
    pub const UNTRACKED: u32 = 64;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatKind {
    Snat = 0,
    Dnat = 1,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteOrderOp {
    Ntoh = 0,
    Hton = 1,
}

/// One expression of a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    /// Loads `len` bytes at `offset` from `base` into `dreg`.
    Payload {
        base: PayloadBase,
        offset: u32,
        len: u32,
        dreg: Reg,
    },
    /// Loads packet metadata into `dreg`.
    Meta {
        key: MetaKey,
        dreg: Reg,
    },
    /// Sets packet metadata from `sreg` (`meta mark set ...`).
    MetaSet {
        key: MetaKey,
        sreg: Reg,
    },
    /// Compares `sreg` with `data`; the rule stops here when the comparison fails.
    Cmp {
        sreg: Reg,
        op: CmpOp,
        data: Vec<u8>,
    },
    /// `dreg = (sreg & mask) ^ xor`, over `mask.len()` bytes.
    Bitwise {
        sreg: Reg,
        dreg: Reg,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    /// Looks the key in `sreg` (and the slots after it) up in a set; a map's value goes to
    /// `dreg` ([`Reg::VERDICT`] for a verdict map). `invert`: match when absent.
    Lookup {
        set: String,
        sreg: Reg,
        dreg: Option<Reg>,
        invert: bool,
    },
    /// Puts a value in a data register.
    Immediate {
        dreg: Reg,
        data: Vec<u8>,
    },
    /// The rule's verdict.
    Verdict(Verdict),
    /// `numgen random|inc mod N offset O` into `dreg` (host byte order).
    Numgen {
        dreg: Reg,
        modulus: u32,
        random: bool,
        offset: u32,
    },
    /// `jhash` of `len` bytes from `sreg`, `mod modulus seed seed offset offset`, into `dreg`.
    Jhash {
        sreg: Reg,
        dreg: Reg,
        len: u32,
        modulus: u32,
        seed: u32,
        offset: u32,
    },
    /// Changes a register's byte order (`size`: 2, 4 or 8 bytes per element; `len` in bytes).
    ByteOrder {
        sreg: Reg,
        dreg: Reg,
        op: ByteOrderOp,
        len: u32,
        size: u32,
    },
    /// Source or destination NAT of `family` to the address in `addr` and the port in `proto`.
    Nat {
        kind: NatKind,
        family: super::Family,
        addr: Option<Reg>,
        proto: Option<Reg>,
    },
    Masquerade,
    /// `fib` lookup into `dreg`.
    Fib {
        flags: u32,
        result: FibResult,
        dreg: Reg,
    },
    Reject(Reject),
    Counter,
    /// Loads connection tracking state into `dreg`.
    Ct {
        key: CtKey,
        dreg: Reg,
    },
    /// `limit rate [over] RATE/UNIT burst BURST packets|bytes`: the rule goes on while the
    /// packets stay under the rate (over it, with `invert`); a token bucket per rule.
    Limit {
        rate: u64,
        unit_seconds: u64,
        burst: u32,
        bytes: bool,
        invert: bool,
    },
    /// `log [prefix P] [group G]`: with a group, a copy of the packet goes to userspace through
    /// NFLOG group G (nfnetlink_log), else to the kernel log.
    Log {
        group: Option<u16>,
        prefix: Option<String>,
    },
}

impl Expr {
    /// Compares `sreg` with a 32-bit value in host byte order (numbers nft loads that way:
    /// marks, l4proto padded, `fib` types, ct state).
    pub fn cmp_u32(sreg: Reg, op: CmpOp, v: u32) -> Expr {
        Expr::Cmp { sreg, op, data: v.to_ne_bytes().to_vec() }
    }

    pub(crate) fn encode(&self, w: &mut Writer) {
        const NFTA_EXPR_NAME: u16 = 1;
        const NFTA_EXPR_DATA: u16 = 2;
        w.nested(1 /* NFTA_LIST_ELEM */, |w| {
            w.str(NFTA_EXPR_NAME, self.name());
            w.nested(NFTA_EXPR_DATA, |w| self.encode_data(w));
        });
    }

    fn name(&self) -> &'static str {
        match self {
            Expr::Payload { .. } => "payload",
            Expr::Meta { .. } | Expr::MetaSet { .. } => "meta",
            Expr::Cmp { .. } => "cmp",
            Expr::Bitwise { .. } => "bitwise",
            Expr::Lookup { .. } => "lookup",
            Expr::Immediate { .. } | Expr::Verdict(_) => "immediate",
            Expr::Numgen { .. } => "numgen",
            Expr::Jhash { .. } => "hash",
            Expr::ByteOrder { .. } => "byteorder",
            Expr::Nat { .. } => "nat",
            Expr::Masquerade => "masq",
            Expr::Fib { .. } => "fib",
            Expr::Reject(_) => "reject",
            Expr::Counter => "counter",
            Expr::Ct { .. } => "ct",
            Expr::Limit { .. } => "limit",
            Expr::Log { .. } => "log",
        }
    }

    fn encode_data(&self, w: &mut Writer) {
        match self {
            Expr::Payload { base, offset, len, dreg } => {
                w.be32(1, dreg.0);
                w.be32(2, *base as u32);
                w.be32(3, *offset);
                w.be32(4, *len);
            }
            Expr::Meta { key, dreg } => {
                w.be32(2, *key as u32);
                w.be32(1, dreg.0);
            }
            Expr::MetaSet { key, sreg } => {
                w.be32(2, *key as u32);
                w.be32(3, sreg.0);
            }
            Expr::Cmp { sreg, op, data } => {
                w.be32(1, sreg.0);
                w.be32(2, *op as u32);
                encode_value(w, 3, data);
            }
            Expr::Bitwise { sreg, dreg, mask, xor } => {
                w.be32(1, sreg.0);
                w.be32(2, dreg.0);
                w.be32(3, mask.len() as u32);
                encode_value(w, 4, mask);
                encode_value(w, 5, xor);
            }
            Expr::Lookup { set, sreg, dreg, invert } => {
                w.str(1, set);
                w.be32(2, sreg.0);
                if let Some(d) = dreg {
                    w.be32(3, d.0);
                }
                if *invert {
                    w.be32(5, 1);
                }
            }
            Expr::Immediate { dreg, data } => {
                w.be32(1, dreg.0);
                encode_value(w, 2, data);
            }
            Expr::Verdict(v) => {
                w.be32(1, Reg::VERDICT.0);
                w.nested(2, |w| v.encode(w));
            }
            Expr::Numgen { dreg, modulus, random, offset } => {
                w.be32(1, dreg.0);
                w.be32(2, *modulus);
                w.be32(3, u32::from(*random));
                w.be32(4, *offset);
            }
            Expr::Jhash { sreg, dreg, len, modulus, seed, offset } => {
                w.be32(1, sreg.0);
                w.be32(2, dreg.0);
                w.be32(3, *len);
                w.be32(4, *modulus);
                w.be32(5, *seed);
                w.be32(6, *offset);
                w.be32(7, 0);
            }
            Expr::ByteOrder { sreg, dreg, op, len, size } => {
                w.be32(1, sreg.0);
                w.be32(2, dreg.0);
                w.be32(3, *op as u32);
                w.be32(4, *len);
                w.be32(5, *size);
            }
            Expr::Nat { kind, family, addr, proto } => {
                w.be32(1, *kind as u32);
                w.be32(2, *family as u32);
                if let Some(r) = addr {
                    w.be32(3, r.0);
                }
                if let Some(r) = proto {
                    w.be32(5, r.0);
                }
            }
            Expr::Masquerade | Expr::Counter => {}
            Expr::Fib { flags, result, dreg } => {
                w.be32(1, dreg.0);
                w.be32(2, *result as u32);
                w.be32(3, *flags);
            }
            Expr::Reject(r) => {
                let (ty, code) = match r {
                    Reject::Icmp(c) => (0, *c),
                    Reject::TcpReset => (1, 0),
                    Reject::Icmpx(c) => (2, *c),
                };
                w.be32(1, ty);
                w.bytes(2, &[code]);
            }
            Expr::Ct { key, dreg } => {
                w.be32(2, *key as u32);
                w.be32(1, dreg.0);
            }
            Expr::Limit { rate, unit_seconds, burst, bytes, invert } => {
                w.bytes(1, &rate.to_be_bytes());
                w.bytes(2, &unit_seconds.to_be_bytes());
                w.be32(3, *burst);
                w.be32(4, u32::from(*bytes));
                w.be32(5, u32::from(*invert));
            }
            Expr::Log { group, prefix } => {
                if let Some(p) = prefix {
                    w.str(2, p);
                }
                if let Some(g) = group {
                    w.bytes(1, &g.to_be_bytes());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_are_numbered_as_nft_numbers_them() {
        assert_eq!([Reg::slot(0), Reg::slot(1), Reg::slot(2), Reg::slot(7)], [Reg(1), Reg(9), Reg(10), Reg(15)]);
    }

    #[test]
    fn a_jump_is_an_immediate_to_the_verdict_register() {
        let mut w = Writer::default();
        Expr::Verdict(Verdict::Jump("c".into())).encode(&mut w);
        let mut want = Writer::default();
        want.nested(1, |w| {
            w.str(1, "immediate");
            w.nested(2, |w| {
                w.be32(1, 0);
                w.nested(2, |w| {
                    w.nested(2, |w| {
                        w.be32(1, (-3i32) as u32);
                        w.str(2, "c");
                    })
                });
            });
        });
        assert_eq!(w.buf, want.buf);
        // list elem, name "immediate", data { dreg 0, data { verdict { code -3, chain "c" } } }
        assert_eq!(&w.buf[..4], &[(w.buf.len() as u16).to_ne_bytes()[0], 0, 1, 0x80]);
        assert_eq!(&w.buf[w.buf.len() - 16..], &[8, 0, 1, 0, 0xff, 0xff, 0xff, 0xfd, 6, 0, 2, 0, b'c', 0, 0, 0]);
    }

    /// The expression's data attributes, after its name.
    fn data_of(e: &Expr) -> Vec<u8> {
        let mut w = Writer::default();
        e.encode_data(&mut w);
        w.buf
    }

    #[test]
    fn limit_is_encoded_as_nft_encodes_it() {
        // `nft --debug=mnl`: limit rate 10/second burst 5 packets
        let got = data_of(&Expr::Limit { rate: 10, unit_seconds: 1, burst: 5, bytes: false, invert: false });
        #[rustfmt::skip]
        let want = [
            12, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 10,
            12, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 1,
            8, 0, 3, 0, 0, 0, 0, 5,
            8, 0, 4, 0, 0, 0, 0, 0,
            8, 0, 5, 0, 0, 0, 0, 0,
        ];
        assert_eq!(got, want);
        assert_eq!(Expr::Limit { rate: 1, unit_seconds: 60, burst: 0, bytes: false, invert: false }.name(), "limit");
    }

    #[test]
    fn log_to_a_group_is_encoded_as_nft_encodes_it() {
        // `nft --debug=mnl`: log prefix "in-abc" group 13: the prefix, then the group (16 bits).
        let got = data_of(&Expr::Log { group: Some(13), prefix: Some("in-abc".into()) });
        let want = [11, 0, 2, 0, b'i', b'n', b'-', b'a', b'b', b'c', 0, 0, 6, 0, 1, 0, 0, 13, 0, 0];
        assert_eq!(got, want);
        assert!(data_of(&Expr::Log { group: None, prefix: None }).is_empty());
    }
}
