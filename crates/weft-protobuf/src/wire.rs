//! Writing Kubernetes protobuf bodies by hand, field by field, as client-go's generated
//! marshallers lay them out: for tests and benchmarks that must send what kubectl sends, without
//! a Go toolchain. (The server only reads bodies; nothing here is on its path.)

use crate::MAGIC;

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field `n` (string, bytes, message, map entry).
pub fn ld(n: u64, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![];
    varint(n << 3 | 2, &mut out);
    varint(bytes.len() as u64, &mut out);
    out.extend_from_slice(bytes);
    out
}

/// A varint field `n` (ints, bools).
pub fn vi(n: u64, v: u64) -> Vec<u8> {
    let mut out = vec![];
    varint(n << 3, &mut out);
    varint(v, &mut out);
    out
}

/// A map entry (`map<string, ...>`): key field 1, value field 2.
pub fn entry(k: &str, v: &[u8]) -> Vec<u8> {
    [ld(1, k.as_bytes()), ld(2, v)].concat()
}

/// A whole body: the `k8s\0` magic and the `runtime.Unknown` envelope around `raw`.
pub fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
    let type_meta = [ld(1, api_version.as_bytes()), ld(2, kind.as_bytes())].concat();
    let mut out = MAGIC.to_vec();
    out.extend([ld(1, &type_meta), ld(2, raw), ld(3, b""), ld(4, b"")].concat());
    out
}
