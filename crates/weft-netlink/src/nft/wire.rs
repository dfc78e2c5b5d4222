//! Netlink framing: attributes and messages written into a byte buffer, and read back with every
//! length checked against what is there (a malformed buffer ends the walk, never panics).

pub(crate) const NLMSG_ERROR: u16 = 2;
pub(crate) const NLMSG_DONE: u16 = 3;
pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_ACK: u16 = 0x4;
pub(crate) const NLM_F_ROOT_MATCH: u16 = 0x300;
pub(crate) const NLM_F_CREATE: u16 = 0x400;
pub(crate) const NLM_F_APPEND: u16 = 0x800;
pub(crate) const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// Writes netlink attributes (each padded to 4 bytes) into a buffer.
#[derive(Default)]
pub(crate) struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn bytes(&mut self, ty: u16, payload: &[u8]) {
        let len = 4 + payload.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.pad();
    }
    pub fn str(&mut self, ty: u16, s: &str) {
        let len = 4 + s.len() + 1;
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
        self.pad();
    }
    /// A 32-bit number in network byte order (nf_tables' attributes are big-endian).
    pub fn be32(&mut self, ty: u16, v: u32) {
        self.bytes(ty, &v.to_be_bytes());
    }
    /// A nested attribute whose content `inner` writes.
    pub fn nested(&mut self, ty: u16, inner: impl FnOnce(&mut Writer)) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0, 0, 0, 0]);
        inner(self);
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self.buf[start + 2..start + 4].copy_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    }
    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }
}

/// One nfnetlink message: the netlink header, the 4-byte `nfgenmsg` (family, version, resource
/// id) and `body`.
pub(crate) fn message(ty: u16, flags: u16, seq: u32, family: u8, res_id: u16, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(20 + body.len());
    push_message(&mut m, ty, flags, seq, family, res_id, body);
    m
}

pub(crate) fn push_message(out: &mut Vec<u8>, ty: u16, flags: u16, seq: u32, family: u8, res_id: u16, body: &[u8]) {
    let len = 16 + 4 + body.len();
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.push(family);
    out.push(0);
    out.extend_from_slice(&res_id.to_be_bytes());
    out.extend_from_slice(body);
}

/// One received netlink message: type, flags, sequence number and the bytes after the 16-byte
/// header.
#[derive(Debug, Clone, Copy)]
pub struct Msg<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    pub body: &'a [u8],
}

impl<'a> Msg<'a> {
    /// For an `NLMSG_ERROR` message: the (negative) errno, 0 for an acknowledgement.
    pub fn error_code(&self) -> Option<i32> {
        (self.ty == NLMSG_ERROR).then(|| read_i32(self.body).unwrap_or(0))
    }
    /// The attributes after the 4-byte `nfgenmsg` of an nfnetlink message.
    pub fn nf_attrs(&self) -> Attrs<'a> {
        Attrs(self.body.get(4..).unwrap_or(&[]))
    }
}

fn read_i32(b: &[u8]) -> Option<i32> {
    Some(i32::from_ne_bytes(b.get(..4)?.try_into().ok()?))
}

/// The netlink messages in a received buffer; a malformed message ends the walk.
pub fn messages(buf: &[u8]) -> impl Iterator<Item = Msg<'_>> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        let len = u32::from_ne_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        if len < 16 || len > rest.len() {
            rest = &[];
            return None;
        }
        let ty = u16::from_ne_bytes(rest[4..6].try_into().ok()?);
        let flags = u16::from_ne_bytes(rest[6..8].try_into().ok()?);
        let seq = u32::from_ne_bytes(rest[8..12].try_into().ok()?);
        let m = Msg { ty, flags, seq, body: &rest[16..len] };
        let next = (len + 3) & !3;
        rest = rest.get(next..).unwrap_or(&[]);
        Some(m)
    })
}

/// The attributes of a payload as (type without flags, payload); a malformed attribute ends the
/// walk.
#[derive(Clone, Copy)]
pub struct Attrs<'a>(pub &'a [u8]);

impl<'a> Iterator for Attrs<'a> {
    type Item = (u16, &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        let b = self.0;
        let len = u16::from_ne_bytes(b.get(..2)?.try_into().ok()?) as usize;
        let ty = u16::from_ne_bytes(b.get(2..4)?.try_into().ok()?) & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            self.0 = &[];
            return None;
        }
        let item = (ty, &b[4..len]);
        self.0 = b.get((len + 3) & !3..).unwrap_or(&[]);
        Some(item)
    }
}

/// A NUL-terminated string attribute's text.
pub fn attr_str(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// The extended-ack message text of an `NLMSG_ERROR` (when the kernel gave one).
pub fn ext_ack_msg(m: &Msg) -> Option<String> {
    const NLM_F_CAPPED: u16 = 0x100;
    const NLM_F_ACK_TLVS: u16 = 0x200;
    const NLMSGERR_ATTR_MSG: u16 = 1;
    if m.ty != NLMSG_ERROR || m.flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    // errno, then the request's header (and its payload unless capped), then the TLVs.
    let echoed =
        if m.flags & NLM_F_CAPPED != 0 { 16 } else { u32::from_ne_bytes(m.body.get(4..8)?.try_into().ok()?) as usize };
    let tlvs = m.body.get(4 + ((echoed + 3) & !3)..)?;
    Attrs(tlvs).find(|(t, _)| *t == NLMSGERR_ATTR_MSG).map(|(_, v)| attr_str(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_nested_lengths_cover_their_content() {
        let mut w = Writer::default();
        w.str(1, "t");
        w.nested(2, |w| w.be32(1, 7));
        assert_eq!(w.buf, [6, 0, 1, 0, b't', 0, 0, 0, 12, 0, 2, 0x80, 8, 0, 1, 0, 0, 0, 0, 7]);
        let got: Vec<_> = Attrs(&w.buf).collect();
        assert_eq!(got, [(1, &b"t\0"[..]), (2, &[8, 0, 1, 0, 0, 0, 0, 7][..])]);
    }

    #[test]
    fn a_truncated_message_ends_the_walk() {
        let mut buf = message(NLMSG_ERROR, 0, 5, 0, 0, &[0; 4]);
        assert_eq!(messages(&buf).count(), 1);
        buf.truncate(buf.len() - 1);
        assert_eq!(messages(&buf).count(), 0);
    }
}
