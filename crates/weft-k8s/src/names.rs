//! Short, stable names: FNV-1a, and Kubernetes' safe alphabet. A stable name, not a security
//! boundary (anyone can make a collision; callers only need determinism and spread).

const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a (64 bits) of `bytes`.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(OFFSET, |h, b| (h ^ u64::from(*b)).wrapping_mul(PRIME))
}

/// Kubernetes' alphabet for generated name parts: no vowels (no words), no look-alike digits.
pub const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// `len` characters of the safe alphabet from the FNV-1a of `text`, each from `shift` more bits
/// (so `len * shift` should stay within 64).
pub fn safe_suffix(text: &str, len: usize, shift: u32) -> String {
    let h = fnv1a(text.as_bytes());
    (0..len)
        .map(|i| {
            let bits = h.checked_shr(i as u32 * shift).unwrap_or(0);
            SAFE_ALPHABET[(bits % SAFE_ALPHABET.len() as u64) as usize] as char
        })
        .collect()
}

/// The low 32 bits of the FNV-1a of `text` as 8 hex digits.
pub fn short_hex(text: &str) -> String {
    format!("{:08x}", fnv1a(text.as_bytes()) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        // From the FNV reference test suite.
        assert_eq!(fnv1a(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn suffixes_are_stable_safe_and_spread() {
        let a = safe_suffix("web/0", 5, 8);
        assert_eq!(a, safe_suffix("web/0", 5, 8));
        assert_ne!(a, safe_suffix("web/1", 5, 8));
        assert_eq!(a.len(), 5);
        assert!(a.bytes().all(|b| SAFE_ALPHABET.contains(&b)));
        // Hostile sizes: empty text, no characters, shifts past 64 bits.
        assert_eq!(safe_suffix("", 0, 8), "");
        assert_eq!(safe_suffix("x", 12, 8).len(), 12);
        assert_eq!(safe_suffix("x", 3, 200).len(), 3);
    }

    #[test]
    fn short_hex_is_eight_hex_digits() {
        let h = short_hex("cbr0|10.244.0.0/24");
        assert_eq!(h.len(), 8);
        assert!(h.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(short_hex(""), "84222325");
    }
}
