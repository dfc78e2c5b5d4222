//! A small nf_tables netlink writer for the one thing a Service change needs: adding and deleting
//! set and map elements, many in one batch (one atomic transaction), with no process to start and
//! nothing read back from the kernel. Written by hand because no permissive-licence Rust crate
//! speaks nf_tables netlink with verdict maps; tables and chains (rare, structural) still go
//! through `nft -f -`.
//!
//! Keys and data are laid out as nf_tables registers hold them: each field of a concatenation in
//! 4-byte slots; addresses and ports in network byte order, `numgen`/`jhash` results in host order.

use std::net::Ipv4Addr;

const NETLINK_NETFILTER: isize = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 2;
const NLA_F_NESTED: u16 = 0x8000;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFT_GOTO: i32 = -4;
const NFPROTO_IPV4: u8 = 2;
/// Elements per message: keeps each message well under the socket buffer.
const PER_MESSAGE: usize = 512;

/// One field of a key or a data value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Field {
    Ip(Ipv4Addr),
    Proto(u8),
    Port(u16),
    /// A `numgen` or `jhash` result (host byte order).
    Slot(u32),
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

fn encode_fields(fields: &[Field]) -> Vec<u8> {
    let mut out = vec![];
    for f in fields {
        match f {
            Field::Ip(ip) => out.extend_from_slice(&ip.octets()),
            Field::Proto(p) => out.extend_from_slice(&[*p, 0, 0, 0]),
            Field::Port(p) => {
                out.extend_from_slice(&p.to_be_bytes());
                out.extend_from_slice(&[0, 0]);
            }
            Field::Slot(n) => out.extend_from_slice(&n.to_ne_bytes()),
        }
    }
    out
}

/// Appends a netlink attribute (padded to 4 bytes).
fn attr(buf: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(payload);
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

fn nested(buf: &mut Vec<u8>, ty: u16, inner: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0, 0, 0, 0]);
    inner(buf);
    let len = (buf.len() - start) as u16;
    buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    buf[start + 2..start + 4].copy_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn message(ty: u16, flags: u16, seq: u32, res_id: u16, body: &[u8]) -> Vec<u8> {
    let len = 16 + 4 + body.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.push(NFPROTO_IPV4);
    m.push(0);
    m.extend_from_slice(&res_id.to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// The whole batch (BEGIN, element messages, END) for `ops` on `table`; returns the bytes and the
/// sequence numbers that expect an acknowledgement.
pub fn encode(table: &str, ops: &[ElemOp]) -> (Vec<u8>, Vec<u32>) {
    let mut out = message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES, &[]);
    let mut seqs = vec![];
    let mut seq = 1u32;
    // Consecutive operations of the same kind on the same set share a message.
    let mut i = 0;
    while i < ops.len() {
        let (add, set) = (ops[i].add, ops[i].set);
        let mut j = i;
        while j < ops.len() && j - i < PER_MESSAGE && ops[j].add == add && ops[j].set == set {
            j += 1;
        }
        let mut body = vec![];
        attr(&mut body, NFTA_SET_ELEM_LIST_TABLE, &cstr(table));
        attr(&mut body, NFTA_SET_ELEM_LIST_SET, &cstr(set));
        nested(&mut body, NFTA_SET_ELEM_LIST_ELEMENTS, |b| {
            for op in &ops[i..j] {
                nested(b, NFTA_LIST_ELEM, |e| {
                    nested(e, NFTA_SET_ELEM_KEY, |k| attr(k, NFTA_DATA_VALUE, &encode_fields(&op.key)));
                    match &op.data {
                        Data::None => {}
                        Data::Value(v) if add => {
                            nested(e, NFTA_SET_ELEM_DATA, |d| attr(d, NFTA_DATA_VALUE, &encode_fields(v)))
                        }
                        Data::Goto(chain) if add => nested(e, NFTA_SET_ELEM_DATA, |d| {
                            nested(d, NFTA_DATA_VERDICT, |v| {
                                attr(v, NFTA_VERDICT_CODE, &NFT_GOTO.to_be_bytes());
                                attr(v, NFTA_VERDICT_CHAIN, &cstr(chain));
                            })
                        }),
                        _ => {}
                    }
                });
            }
        });
        let (ty, flags) = if add {
            (NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK)
        } else {
            (NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK)
        };
        out.extend(message((NFNL_SUBSYS_NFTABLES << 8) | ty, flags, seq, 0, &body));
        seqs.push(seq);
        seq += 1;
        i = j;
    }
    out.extend(message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq, NFNL_SUBSYS_NFTABLES, &[]));
    (out, seqs)
}

/// One received netlink message: type, sequence number and the bytes after the 16-byte header.
pub struct Msg<'a> {
    pub ty: u16,
    pub seq: u32,
    pub body: &'a [u8],
}

/// The netlink messages in a received buffer (a malformed tail is ignored).
pub fn messages(buf: &[u8]) -> Vec<Msg<'_>> {
    let mut out = vec![];
    let mut off = 0;
    while off + 16 <= buf.len() {
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
        if len < 16 || off + len > buf.len() {
            break;
        }
        let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap());
        let seq = u32::from_ne_bytes(buf[off + 8..off + 12].try_into().unwrap());
        out.push(Msg { ty, seq, body: &buf[off + 16..off + len] });
        off += (len + 3) & !3;
    }
    out
}

/// The error code of an NLMSG_ERROR message (0 is an acknowledgement).
pub fn error_code(m: &Msg) -> i32 {
    m.body.get(..4).map(|b| i32::from_ne_bytes(b.try_into().unwrap())).unwrap_or(0)
}

/// Sends the batch in this thread's network namespace and waits for every acknowledgement.
pub fn send(table: &str, ops: &[ElemOp]) -> std::io::Result<()> {
    if ops.is_empty() {
        return Ok(());
    }
    let (bytes, seqs) = encode(table, ops);
    let mut sock = netlink_sys::Socket::new(NETLINK_NETFILTER)?;
    sock.bind_auto()?;
    // A full sync is one batch of megabytes: the whole batch must fit one send to be one
    // transaction. Root may raise the limit (SO_SNDBUFFORCE).
    {
        use std::os::fd::AsRawFd;
        let size: i32 = (bytes.len() + (1 << 20)).min(i32::MAX as usize) as i32;
        unsafe {
            nix::libc::setsockopt(
                sock.as_raw_fd(),
                nix::libc::SOL_SOCKET,
                nix::libc::SO_SNDBUFFORCE,
                &size as *const i32 as *const nix::libc::c_void,
                std::mem::size_of::<i32>() as u32,
            );
        }
    }
    sock.send(&bytes, 0)?;
    let mut pending: std::collections::BTreeSet<u32> = seqs.into_iter().collect();
    let mut first_err: Option<std::io::Error> = None;
    while !pending.is_empty() {
        let mut buf = Vec::with_capacity(1 << 16);
        sock.recv(&mut buf, 0)?;
        for m in messages(&buf).iter().filter(|m| m.ty == NLMSG_ERROR) {
            pending.remove(&m.seq);
            let code = error_code(m);
            if code != 0 && first_err.is_none() {
                first_err = Some(std::io::Error::from_raw_os_error(-code));
            }
        }
        // After an error the kernel aborts the batch and may not answer the rest.
        if first_err.is_some() {
            break;
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_laid_out_in_registers() {
        let k =
            encode_fields(&[Field::Ip("10.96.0.5".parse().unwrap()), Field::Proto(6), Field::Port(80), Field::Slot(2)]);
        assert_eq!(k.len(), 16);
        assert_eq!(&k[0..4], &[10, 96, 0, 5]);
        assert_eq!(&k[4..8], &[6, 0, 0, 0]);
        assert_eq!(&k[8..12], &[0, 80, 0, 0]);
        assert_eq!(&k[12..16], &2u32.to_ne_bytes());
    }

    #[test]
    fn batches_group_operations() {
        let op =
            |add, set| ElemOp { add, set, key: vec![Field::Proto(6), Field::Port(80)], data: Data::Goto("c".into()) };
        let (_, seqs) = encode("t", &[op(false, "a"), op(false, "a"), op(true, "a"), op(true, "b")]);
        assert_eq!(seqs.len(), 3);
    }
}
