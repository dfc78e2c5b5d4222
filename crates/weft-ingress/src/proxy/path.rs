//! The host and path a request is routed by.
//!
//! Paths are normalized before matching, as nginx does with `$uri` (so a route cannot be
//! dodged with `/api/../admin` or `/%61dmin`): percent-escapes of unreserved characters
//! (`A-Z a-z 0-9 - . _ ~`) are decoded and other escapes' hex is uppercased (`%2f` stays an
//! escape: it is data, not a separator), empty segments are merged (`//` is `/`), `.` segments
//! are dropped and `..` removes the segment before it; a path that climbs above `/`, or has a
//! bad escape, is a 400. The normalized path is also what the endpoint receives (the query
//! is passed as the client sent it), so the endpoint sees the path that was routed.

use std::borrow::Cow;

/// The host of a `Host` header or `:authority`: lowercase, without the port or a trailing
/// dot; `None` when it is not a host name or IP literal.
pub(crate) fn host(raw: &str) -> Option<Cow<'_, str>> {
    let name = if let Some(rest) = raw.strip_prefix('[') {
        // An IPv6 literal: `[::1]` or `[::1]:8080`.
        let end = rest.find(']')?;
        let after = &rest[end + 1..];
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        let lit = &raw[..end + 2];
        if !rest[..end].bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.') || end == 0 {
            return None;
        }
        lit
    } else {
        let name = match raw.rsplit_once(':') {
            Some((h, port)) if is_port(port) => h,
            Some(_) => return None,
            None => raw,
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_') {
            return None;
        }
        name
    };
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(Cow::Owned(name.to_ascii_lowercase()))
    } else {
        Some(Cow::Borrowed(name))
    }
}

fn is_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

/// `path` (no query) normalized as the module says; `None`: 400.
pub(crate) fn normalize(path: &str) -> Option<Cow<'_, str>> {
    if !path.starts_with('/') {
        return None;
    }
    let b = path.as_bytes();
    let clean = !b.contains(&b'%')
        && !path.contains("//")
        && !b.windows(2).enumerate().any(|(i, w)| {
            w == b"/."
                && (i + 2 == b.len()
                    || b[i + 2] == b'/'
                    || (b[i + 2] == b'.' && (i + 3 == b.len() || b[i + 3] == b'/')))
        });
    if clean {
        return Some(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path)?;
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut segs: Vec<&str> = Vec::new();
    for s in decoded.split('/') {
        match s {
            "" | "." => {}
            ".." => {
                segs.pop()?;
            }
            s => segs.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segs {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || trailing {
        out.push('/');
    }
    Some(Cow::Owned(out))
}

fn decode_unreserved(path: &str) -> Option<String> {
    let b = path.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hi = hex(*b.get(i + 1)?)?;
            let lo = hex(*b.get(i + 2)?)?;
            let c = hi << 4 | lo;
            if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                out.push(c as char);
            } else {
                out.push('%');
                out.push(b"0123456789ABCDEF"[hi as usize] as char);
                out.push(b"0123456789ABCDEF"[lo as usize] as char);
            }
            i += 3;
        } else {
            // The URI parser let only ASCII through; anything else is refused, not guessed at.
            if !b[i].is_ascii() {
                return None;
            }
            out.push(b[i] as char);
            i += 1;
        }
    }
    Some(out)
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalize() {
        let n = |p| normalize(p).map(|c| c.into_owned());
        assert_eq!(n("/a/b").as_deref(), Some("/a/b"));
        assert_eq!(n("/api/../admin").as_deref(), Some("/admin"));
        assert_eq!(n("/%61dmin").as_deref(), Some("/admin"));
        assert_eq!(n("/a/%2e%2E/b").as_deref(), Some("/b"));
        assert_eq!(n("//a///b/./c/").as_deref(), Some("/a/b/c/"));
        assert_eq!(n("/a/%2fb").as_deref(), Some("/a/%2Fb"));
        assert_eq!(n("/a/..").as_deref(), Some("/"));
        assert_eq!(n("/.hidden").as_deref(), Some("/.hidden"));
        assert_eq!(n("/..").as_deref(), None);
        assert_eq!(n("/%zz").as_deref(), None);
        assert_eq!(n("*").as_deref(), None);
    }

    #[test]
    fn hosts_parse() {
        let h = |s| host(s).map(|c| c.into_owned());
        assert_eq!(h("Foo.Example:8080").as_deref(), Some("foo.example"));
        assert_eq!(h("foo.example.").as_deref(), Some("foo.example"));
        assert_eq!(h("[::1]:80").as_deref(), Some("[::1]"));
        assert_eq!(h("a b").as_deref(), None);
        assert_eq!(h("a:b").as_deref(), None);
        assert_eq!(h("").as_deref(), None);
        assert_eq!(h("[::1").as_deref(), None);
    }
}
