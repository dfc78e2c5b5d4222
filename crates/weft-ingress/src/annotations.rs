//! The ingress-nginx annotations (`nginx.ingress.kubernetes.io/*`), parsed into typed,
//! validated [`crate::Settings`]; unsupported ones (every `*-snippet` among them) refused.
//!
//! Values are never pasted into any configuration: each is checked against the form
//! ingress-nginx documents and turned into a typed value, or refused with a Problem naming the
//! annotation, the value and the accepted form (then ingress-nginx's default is used).
//!
//! Two refusals are stricter than "ignored": an Ingress that asks for an access restriction weft
//! cannot apply (an invalid allowlist, or authentication / a denylist weft does not implement)
//! gets [`Annotations::deny`], and its routes answer 503 rather than serve without the
//! restriction (ingress-nginx also answers 503 for a location whose allowlist is invalid). An
//! invalid `cors-allow-origin` disables CORS rather than widening it to `*`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use crate::{BackendProtocol, Balance, CookieAffinity, Cors, ObjectRef, Problem, Settings};

/// The prefix of the annotations this module reads.
pub const PREFIX: &str = "nginx.ingress.kubernetes.io/";

/// The annotations (after [`PREFIX`]) weft implements.
pub const SUPPORTED: &[&str] = &[
    "rewrite-target",
    "use-regex",
    "ssl-redirect",
    "force-ssl-redirect",
    "backend-protocol",
    "app-root",
    "proxy-body-size",
    "proxy-connect-timeout",
    "proxy-read-timeout",
    "proxy-send-timeout",
    "whitelist-source-range",
    "allowlist-source-range",
    "affinity",
    "session-cookie-name",
    "session-cookie-path",
    "session-cookie-max-age",
    "canary",
    "canary-by-header",
    "canary-by-header-value",
    "canary-by-cookie",
    "canary-weight",
    "canary-weight-total",
    "enable-cors",
    "cors-allow-origin",
    "cors-allow-methods",
    "cors-allow-headers",
    "cors-expose-headers",
    "cors-allow-credentials",
    "cors-max-age",
    "permanent-redirect",
    "permanent-redirect-code",
    "temporal-redirect",
    "temporal-redirect-code",
    "load-balance",
    "proxy-next-upstream-tries",
];

const SNIPPET: &str = "configuration snippets are never executed (the CVE-2025-1974 family: a snippet is code \
                       run by the proxy with the controller's privileges); express the behaviour with \
                       supported annotations or in the backend";
const AUTH: &str = "authentication is not implemented by weft; the Ingress's routes answer 503 instead of \
                    serving without it: authenticate in the backend and remove the annotation";
const MTLS: &str = "client-certificate authentication is not implemented by weft; the Ingress's routes \
                    answer 503 instead of serving without it: verify clients in the backend and remove the \
                    annotation";
const DENY: &str = "denylists are not implemented by weft; the Ingress's routes answer 503 instead of serving \
                    the denied clients: use allowlist-source-range or a NetworkPolicy";

/// Well-known ingress-nginx annotations weft refuses, with the reason (for the README's table
/// and the Problem's message). Any other unknown `nginx.ingress.kubernetes.io/` annotation is
/// refused too, as not implemented.
pub const REFUSED: &[(&str, &str)] = &[
    ("configuration-snippet", SNIPPET),
    ("server-snippet", SNIPPET),
    ("auth-snippet", SNIPPET),
    ("stream-snippet", SNIPPET),
    ("modsecurity-snippet", SNIPPET),
    ("auth-url", AUTH),
    ("auth-signin", AUTH),
    ("auth-method", AUTH),
    ("auth-response-headers", AUTH),
    ("auth-request-redirect", AUTH),
    ("auth-cache-key", AUTH),
    ("auth-proxy-set-headers", AUTH),
    ("auth-type", AUTH),
    ("auth-secret", AUTH),
    ("auth-secret-type", AUTH),
    ("auth-realm", AUTH),
    ("auth-tls-secret", MTLS),
    ("auth-tls-verify-client", MTLS),
    ("auth-tls-verify-depth", MTLS),
    ("auth-tls-pass-certificate-to-upstream", MTLS),
    ("auth-tls-error-page", MTLS),
    ("denylist-source-range", DENY),
    ("limit-rps", "rate limiting is not implemented by weft"),
    ("limit-rpm", "rate limiting is not implemented by weft"),
    ("limit-connections", "rate limiting is not implemented by weft"),
    ("limit-burst-multiplier", "rate limiting is not implemented by weft"),
    ("limit-rate", "rate limiting is not implemented by weft"),
    ("limit-rate-after", "rate limiting is not implemented by weft"),
    ("limit-whitelist", "rate limiting is not implemented by weft"),
    ("limit-allowlist", "rate limiting is not implemented by weft"),
    ("global-rate-limit", "rate limiting is not implemented by weft"),
    ("upstream-hash-by", "consistent hashing is not implemented by weft: use affinity: cookie"),
    ("upstream-vhost", "rewriting the Host header is not implemented by weft"),
    ("custom-http-errors", "custom error pages are not implemented by weft"),
    ("default-backend", "per-Ingress error backends are not implemented by weft: use spec.defaultBackend"),
    ("mirror-target", "request mirroring is not implemented by weft"),
    ("mirror-uri", "request mirroring is not implemented by weft"),
    ("mirror-host", "request mirroring is not implemented by weft"),
    ("mirror-request-body", "request mirroring is not implemented by weft"),
    ("ssl-passthrough", "TLS passthrough is not implemented by weft: terminate TLS here or use a Service"),
    ("proxy-ssl-secret", "TLS client certificates towards backends are not implemented by weft"),
    ("proxy-ssl-verify", "verifying backends' certificates is not implemented by weft"),
    ("proxy-ssl-name", "verifying backends' certificates is not implemented by weft"),
    ("proxy-ssl-server-name", "verifying backends' certificates is not implemented by weft"),
    ("proxy-buffering", "weft streams responses; buffering is not configurable"),
    ("proxy-request-buffering", "weft streams requests; buffering is not configurable"),
    ("proxy-buffer-size", "weft streams; buffer sizes are not configurable"),
    ("proxy-http-version", "the backend's HTTP version follows backend-protocol"),
    ("service-upstream", "weft always balances over the endpoints, never the ClusterIP"),
    ("server-alias", "use another rule (or host) in spec.rules"),
    ("from-to-www-redirect", "not implemented by weft: add a rule with permanent-redirect"),
    ("x-forwarded-prefix", "not implemented by weft"),
    ("enable-modsecurity", "ModSecurity is not part of weft"),
    ("enable-owasp-core-rules", "ModSecurity is not part of weft"),
    ("enable-opentelemetry", "tracing is not implemented by weft"),
    ("affinity-mode", "weft's cookie affinity is always balanced"),
    ("session-cookie-expires", "use session-cookie-max-age"),
    ("session-cookie-samesite", "not implemented by weft"),
    ("canary-by-header-pattern", "use canary-by-header-value"),
    ("custom-headers", "not implemented by weft"),
];

/// Refused annotations that restrict who may reach the backend: serving without them would
/// open what the Ingress meant to close, so their Ingress's routes answer 503 instead.
pub const FAIL_CLOSED: &[&str] =
    &["auth-url", "auth-type", "auth-secret", "auth-tls-secret", "auth-tls-verify-client", "denylist-source-range"];

/// The default `cors-allow-methods`, `cors-allow-headers` and `cors-max-age` (ingress-nginx's).
pub const CORS_METHODS: &str = "GET, PUT, POST, DELETE, PATCH, OPTIONS";
pub const CORS_HEADERS: &str =
    "DNT,Keep-Alive,User-Agent,X-Requested-With,If-Modified-Since,Cache-Control,Content-Type,Range,Authorization";
pub const CORS_MAX_AGE: u64 = 1_728_000;

/// The longest annotation value read at all (allowlists can be long; the rest are short).
const MAX_VALUE: usize = 64 * 1024;
/// The longest path, URL or header value accepted.
const MAX_SHORT: usize = 2048;

/// An Ingress's annotations, parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct Annotations {
    pub settings: Settings,
    /// `use-regex: "true"` or a valid `rewrite-target`: Prefix and ImplementationSpecific paths
    /// are case-insensitive regexes anchored at the start.
    pub use_regex: bool,
    pub protocol: BackendProtocol,
    /// `temporal-redirect` (tried first, as ingress-nginx does) or `permanent-redirect`:
    /// location and status code.
    pub redirect: Option<(String, u16)>,
    /// `canary: "true"`: the Ingress is a canary of another's routes.
    pub canary: Option<CanarySpec>,
    /// Why the Ingress's routes must answer 503: an access restriction asked for and not
    /// applicable (ingress-nginx's "denied" location).
    pub deny: Option<String>,
}

/// The `canary-*` annotations of a canary Ingress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CanarySpec {
    pub header: Option<(String, Option<String>)>,
    pub cookie: Option<String>,
    pub weight: u32,
    pub weight_total: u32,
}

/// Parses `annotations` of `ingress`; problems are appended to `problems`.
pub fn parse(
    annotations: Option<&BTreeMap<String, String>>,
    ingress: &ObjectRef,
    problems: &mut Vec<Problem>,
) -> Annotations {
    let empty = BTreeMap::new();
    let mut p = Parser { map: annotations.unwrap_or(&empty), ingress, problems };
    p.refuse_unknown();
    let mut s = Settings::default();
    let mut deny = None;

    s.rewrite_target = p.value("rewrite-target", "a path of letters, digits, -._~/: and $1..$9 (e.g. /$2)", |v| {
        valid_rewrite(v).then(|| v.to_string())
    });
    let use_regex = p.boolean("use-regex", false) || s.rewrite_target.is_some();
    s.ssl_redirect = p.boolean("ssl-redirect", true);
    s.force_ssl_redirect = p.boolean("force-ssl-redirect", false);
    let protocol = p
        .value("backend-protocol", "HTTP, HTTPS, GRPC or GRPCS (AUTO_HTTP and FCGI are not supported)", |v| {
            match v.trim().to_ascii_uppercase().as_str() {
                "HTTP" => Some(BackendProtocol::Http),
                "HTTPS" => Some(BackendProtocol::Https),
                "GRPC" => Some(BackendProtocol::Grpc),
                "GRPCS" => Some(BackendProtocol::Grpcs),
                _ => None,
            }
        })
        .unwrap_or_default();
    s.app_root = p.value("app-root", "an absolute path, e.g. /app", |v| valid_path(v).then(|| v.to_string()));
    if let Some(size) = p.value(
        "proxy-body-size",
        "a size in bytes with an optional k, m or g suffix, e.g. 8m (0: no limit)",
        parse_size,
    ) {
        s.max_body = (size != 0).then_some(size);
    }
    let secs = "whole seconds from 1, e.g. 60";
    if let Some(t) = p.value("proxy-connect-timeout", secs, parse_secs) {
        s.connect_timeout = t;
    }
    if let Some(t) = p.value("proxy-read-timeout", secs, parse_secs) {
        s.read_timeout = t;
    }
    if let Some(t) = p.value("proxy-send-timeout", secs, parse_secs) {
        s.send_timeout = t;
    }

    // allowlist- is the current name, whitelist- the deprecated one: the former wins.
    let range =
        if p.get("allowlist-source-range").is_some() { "allowlist-source-range" } else { "whitelist-source-range" };
    if p.get(range).is_some() {
        match p.value(range, "comma-separated IP addresses or CIDRs, e.g. 10.0.0.0/8, 192.168.1.7", parse_ranges) {
            Some(nets) => s.allow_source = nets,
            None => deny = Some(format!("{PREFIX}{range} is not valid")),
        }
    }

    if let Some(kind) = p.get("affinity") {
        if kind == "cookie" {
            let name = p
                .value("session-cookie-name", "a cookie name (letters, digits, and !#$%&'*+-.^_`|~)", |v| {
                    is_token(v).then(|| v.to_string())
                })
                .unwrap_or_else(|| "INGRESSCOOKIE".into());
            let path =
                p.value("session-cookie-path", "an absolute path, e.g. /", |v| valid_path(v).then(|| v.to_string()));
            let max_age = p.value("session-cookie-max-age", "whole seconds, e.g. 3600", parse_u64);
            s.affinity = Some(CookieAffinity { name, path, max_age });
        } else {
            p.invalid("affinity", kind, "cookie");
        }
    }

    if p.boolean("enable-cors", false) {
        s.cors = p.cors();
    }

    s.balance = p
        .value("load-balance", "round_robin or ewma", |v| match v.trim() {
            "round_robin" => Some(Balance::RoundRobin),
            "ewma" => Some(Balance::Ewma),
            _ => None,
        })
        .unwrap_or_default();
    // nginx's 0 is "no limit": every endpoint at most once, which the proxy bounds anyway.
    if let Some(t) = p.value("proxy-next-upstream-tries", "a whole number, e.g. 3 (0: no limit)", |v| {
        parse_u64(v).and_then(|n| u32::try_from(n).ok())
    }) {
        s.tries = if t == 0 { u32::MAX } else { t };
    }

    let redirect = p.redirect();
    let canary = if p.boolean("canary", false) { Some(p.canary()) } else { None };
    if deny.is_none()
        // `auth-tls-verify-client: off` asks for nothing.
        && let Some(k) = FAIL_CLOSED.iter().find(|k| p.get(k).is_some_and(|v| !(**k == "auth-tls-verify-client" && v == "off")))
    {
        deny = Some(format!("{PREFIX}{k} is not implemented"));
    }
    Annotations { settings: s, use_regex, protocol, redirect, canary, deny }
}

struct Parser<'a> {
    map: &'a BTreeMap<String, String>,
    ingress: &'a ObjectRef,
    problems: &'a mut Vec<Problem>,
}

impl<'a> Parser<'a> {
    fn get(&self, key: &str) -> Option<&'a str> {
        self.map.get(&format!("{PREFIX}{key}")).map(String::as_str)
    }

    fn problem(&mut self, reason: &'static str, message: String) {
        self.problems.push(Problem { ingress: self.ingress.clone(), reason, message });
    }

    fn invalid(&mut self, key: &str, value: &str, accepted: &str) {
        let message = format!(
            "annotation {PREFIX}{key}: {} is not valid; accepted: {accepted}; the default is used",
            show(value)
        );
        self.problem("InvalidAnnotation", message);
    }

    /// The annotation parsed by `f`; `None` if absent or invalid (then a Problem).
    fn value<T>(&mut self, key: &str, accepted: &str, f: impl FnOnce(&str) -> Option<T>) -> Option<T> {
        let v = self.get(key)?;
        let parsed = if v.len() > MAX_VALUE { None } else { f(v) };
        if parsed.is_none() {
            self.invalid(key, v, accepted);
        }
        parsed
    }

    fn boolean(&mut self, key: &str, default: bool) -> bool {
        self.value(key, "true or false", parse_bool).unwrap_or(default)
    }

    /// Every `nginx.ingress.kubernetes.io/` annotation weft does not implement.
    fn refuse_unknown(&mut self) {
        let map = self.map;
        for key in map.keys() {
            let Some(suffix) = key.strip_prefix(PREFIX) else { continue };
            if SUPPORTED.contains(&suffix) {
                continue;
            }
            let reason = match REFUSED.iter().find(|(k, _)| *k == suffix) {
                Some((_, why)) => why,
                None if suffix.ends_with("-snippet") => SNIPPET,
                None => "not implemented by weft",
            };
            let message = format!("annotation {PREFIX}{} is ignored: {reason}", show_key(suffix));
            self.problem("UnsupportedAnnotation", message);
        }
    }

    fn cors(&mut self) -> Option<Cors> {
        let mut allow_origin = vec!["*".to_string()];
        if let Some(v) = self.get("cors-allow-origin") {
            let mut good = Vec::new();
            let accepted = "comma-separated origins: *, or http(s)://host[:port] (the host may start with *.)";
            for item in v.split(',').map(str::trim).filter(|o| !o.is_empty()).take(1000) {
                if valid_origin(item) {
                    good.push(item.to_string());
                } else {
                    let message = format!(
                        "annotation {PREFIX}cors-allow-origin: origin {} is not valid and is left out; accepted: {accepted}",
                        show(item)
                    );
                    self.problem("InvalidAnnotation", message);
                }
            }
            if good.is_empty() || v.len() > MAX_VALUE {
                // Never widen to `*` because of a typo: without a valid origin, no CORS.
                let message = format!(
                    "annotation {PREFIX}cors-allow-origin: {} names no valid origin; CORS stays disabled; accepted: {accepted}",
                    show(v)
                );
                self.problem("InvalidAnnotation", message);
                return None;
            }
            allow_origin = good;
        }
        let methods = self
            .value("cors-allow-methods", "comma-separated methods, e.g. GET, POST", |v| {
                list_of(v, |m| !m.is_empty() && m.bytes().all(|b| b.is_ascii_alphabetic())).then(|| v.to_string())
            })
            .unwrap_or_else(|| CORS_METHODS.into());
        let header = |h: &str| {
            h == "*" || (!h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        };
        let headers = self
            .value("cors-allow-headers", "comma-separated header names, e.g. X-Token, Content-Type", |v| {
                list_of(v, header).then(|| v.to_string())
            })
            .unwrap_or_else(|| CORS_HEADERS.into());
        let expose = self
            .value("cors-expose-headers", "comma-separated header names, or *", |v| {
                list_of(v, header).then(|| v.to_string())
            })
            .unwrap_or_default();
        let allow_credentials = self.boolean("cors-allow-credentials", true);
        let max_age = self.value("cors-max-age", "whole seconds, e.g. 600", parse_u64).unwrap_or(CORS_MAX_AGE);
        Some(Cors {
            allow_origin,
            allow_methods: methods,
            allow_headers: headers,
            expose_headers: expose,
            allow_credentials,
            max_age,
        })
    }

    fn redirect(&mut self) -> Option<(String, u16)> {
        let url = "an absolute http:// or https:// URL";
        let code = "a redirect status code from 300 to 308";
        let status = |v: &str| parse_u64(v).filter(|c| (300..=308).contains(c)).map(|c| c as u16);
        if let Some(loc) = self.value("temporal-redirect", url, |v| valid_url(v).then(|| v.to_string())) {
            return Some((loc, self.value("temporal-redirect-code", code, status).unwrap_or(302)));
        }
        if let Some(loc) = self.value("permanent-redirect", url, |v| valid_url(v).then(|| v.to_string())) {
            return Some((loc, self.value("permanent-redirect-code", code, status).unwrap_or(301)));
        }
        None
    }

    fn canary(&mut self) -> CanarySpec {
        let token = "a header name (letters, digits, and !#$%&'*+-.^_`|~)";
        let header = self.value("canary-by-header", token, |v| is_token(v).then(|| v.to_string()));
        let value = self.value("canary-by-header-value", "a header value without control characters", |v| {
            (!v.is_empty() && v.len() <= MAX_SHORT && v.bytes().all(|b| (0x20..0x7f).contains(&b)))
                .then(|| v.to_string())
        });
        let cookie = self.value("canary-by-cookie", "a cookie name (letters, digits, and !#$%&'*+-.^_`|~)", |v| {
            is_token(v).then(|| v.to_string())
        });
        let weight_total = self
            .value("canary-weight-total", "a whole number from 1, e.g. 100", |v| {
                parse_u64(v).filter(|n| *n >= 1).and_then(|n| u32::try_from(n).ok())
            })
            .unwrap_or(100);
        let accepted = format!("a whole number from 0 to canary-weight-total ({weight_total})");
        let weight = self
            .value("canary-weight", &accepted, |v| {
                parse_u64(v).filter(|n| *n <= u64::from(weight_total)).and_then(|n| u32::try_from(n).ok())
            })
            .unwrap_or(0);
        CanarySpec { header: header.map(|h| (h, value)), cookie, weight, weight_total }
    }
}

/// A value for a message: quoted, control characters escaped, cut at 80 characters.
fn show(v: &str) -> String {
    let mut cut: String = v.chars().take(80).collect();
    if cut.len() < v.len() {
        cut.push('…');
    }
    format!("{cut:?}")
}

/// An annotation name for a message (names come from the user too).
fn show_key(k: &str) -> String {
    let s = show(k);
    s[1..s.len() - 1].to_string()
}

/// Go's `strconv.ParseBool`, which ingress-nginx uses.
fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

fn parse_u64(v: &str) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

fn parse_secs(v: &str) -> Option<Duration> {
    parse_u64(v).filter(|s| (1..=u64::from(u32::MAX)).contains(s)).map(Duration::from_secs)
}

/// nginx's size syntax: bytes, or a number with k, m or g (powers of 1024).
fn parse_size(v: &str) -> Option<u64> {
    let (num, mult) = match v.as_bytes().last()? {
        b'k' | b'K' => (&v[..v.len() - 1], 1u64 << 10),
        b'm' | b'M' => (&v[..v.len() - 1], 1 << 20),
        b'g' | b'G' => (&v[..v.len() - 1], 1 << 30),
        _ => (v, 1),
    };
    parse_u64(num)?.checked_mul(mult)
}

fn parse_ranges(v: &str) -> Option<Vec<ipnet::IpNet>> {
    let mut nets = Vec::new();
    for item in v.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let net = match item.parse::<ipnet::IpNet>() {
            Ok(n) => n.trunc(),
            Err(_) => ipnet::IpNet::from(item.parse::<IpAddr>().ok()?),
        };
        nets.push(net);
    }
    if nets.is_empty() {
        return None;
    }
    nets.sort();
    nets.dedup();
    Some(nets)
}

/// RFC 7230 token: header and cookie names.
fn is_token(v: &str) -> bool {
    !v.is_empty() && v.len() <= 256 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `rewrite-target` as ingress-nginx validates it (`^/?[-._~a-zA-Z0-9/$:]*$`), with `$` only
/// before 1..9 (the regex captures).
fn valid_rewrite(v: &str) -> bool {
    let b = v.as_bytes();
    if b.is_empty() || b.len() > MAX_SHORT {
        return false;
    }
    b.iter().enumerate().all(|(i, &c)| match c {
        b'$' => b.get(i + 1).is_some_and(|d| (b'1'..=b'9').contains(d)),
        c => c.is_ascii_alphanumeric() || b"-._~/:".contains(&c),
    })
}

/// An absolute path of URL path characters (no query, no fragment, no `..` segment).
fn valid_path(v: &str) -> bool {
    v.starts_with('/')
        && v.len() <= MAX_SHORT
        && v.bytes().all(|c| c.is_ascii_alphanumeric() || b"-._~/!&'()*+,;=:@%".contains(&c))
        && !v.split('/').any(|seg| seg == "..")
}

/// `http(s)://host[...]`, printable ASCII without spaces, quotes or angle brackets.
fn valid_url(v: &str) -> bool {
    let rest = match v.strip_prefix("https://").or_else(|| v.strip_prefix("http://")) {
        Some(r) => r,
        None => return false,
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    !host.is_empty() && v.len() <= MAX_SHORT && v.bytes().all(|b| b.is_ascii_graphic() && !b"\"<>\\^`{|}".contains(&b))
}

/// `*`, or `http(s)://host[:port]` whose host may start with `*.` (ingress-nginx's form).
fn valid_origin(o: &str) -> bool {
    if o == "*" {
        return true;
    }
    let Some(rest) = o.strip_prefix("https://").or_else(|| o.strip_prefix("http://")) else { return false };
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (rest, None),
    };
    let host = host.strip_prefix("*.").unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// A comma-separated list (spaces around items allowed) whose every item passes `item`.
fn list_of(v: &str, item: impl Fn(&str) -> bool) -> bool {
    v.len() <= MAX_SHORT && !v.trim().is_empty() && v.split(',').map(str::trim).all(item)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ing() -> ObjectRef {
        ObjectRef { namespace: "ns".into(), name: "web".into() }
    }

    fn run(pairs: &[(&str, &str)]) -> (Annotations, Vec<Problem>) {
        let map: BTreeMap<String, String> =
            pairs.iter().map(|(k, v)| (format!("{PREFIX}{k}"), v.to_string())).collect();
        let mut problems = Vec::new();
        let a = parse(Some(&map), &ing(), &mut problems);
        (a, problems)
    }

    fn ok(pairs: &[(&str, &str)]) -> Annotations {
        let (a, p) = run(pairs);
        assert!(p.is_empty(), "{pairs:?}: {p:?}");
        a
    }

    fn bad(pairs: &[(&str, &str)]) -> (Annotations, Problem) {
        let (a, mut p) = run(pairs);
        assert_eq!(p.len(), 1, "{pairs:?}: {p:?}");
        let p = p.remove(0);
        assert_eq!(p.reason, "InvalidAnnotation");
        assert!(p.message.contains(pairs[0].0), "{}", p.message);
        (a, p)
    }

    #[test]
    fn defaults_without_annotations() {
        let mut problems = Vec::new();
        let a = parse(None, &ing(), &mut problems);
        assert!(problems.is_empty());
        assert_eq!(a.settings, Settings::default());
        assert!(!a.use_regex && a.redirect.is_none() && a.canary.is_none() && a.deny.is_none());
        assert_eq!(a.protocol, BackendProtocol::Http);
    }

    #[test]
    fn rewrite_target_implies_regex() {
        let a = ok(&[("rewrite-target", "/$2")]);
        assert_eq!(a.settings.rewrite_target.as_deref(), Some("/$2"));
        assert!(a.use_regex);
        assert!(ok(&[("rewrite-target", "/")]).use_regex);
        assert!(ok(&[("rewrite-target", "/api/v1:x/$1/$9")]).use_regex);
        for v in ["", "/$0", "/$a", "/$", "/a b", "/a?b=1", "/${1}", "/x;rm", "/x\n"] {
            let (a, p) = bad(&[("rewrite-target", v)]);
            assert!(a.settings.rewrite_target.is_none() && !a.use_regex, "{v:?}");
            assert!(p.message.contains("$1..$9"));
        }
    }

    #[test]
    fn booleans_as_go_parses_them() {
        assert!(ok(&[("use-regex", "true")]).use_regex);
        assert!(ok(&[("use-regex", "1")]).use_regex);
        assert!(!ok(&[("use-regex", "False")]).use_regex);
        assert!(!ok(&[("ssl-redirect", "false")]).settings.ssl_redirect);
        assert!(ok(&[("force-ssl-redirect", "true")]).settings.force_ssl_redirect);
        let (a, _) = bad(&[("ssl-redirect", "nope")]);
        assert!(a.settings.ssl_redirect);
        bad(&[("use-regex", "yes")]);
        bad(&[("force-ssl-redirect", "")]);
    }

    #[test]
    fn backend_protocol() {
        assert_eq!(ok(&[("backend-protocol", "HTTPS")]).protocol, BackendProtocol::Https);
        assert_eq!(ok(&[("backend-protocol", "grpc")]).protocol, BackendProtocol::Grpc);
        assert_eq!(ok(&[("backend-protocol", "GRPCS")]).protocol, BackendProtocol::Grpcs);
        assert_eq!(ok(&[("backend-protocol", "HTTP")]).protocol, BackendProtocol::Http);
        for v in ["FCGI", "AUTO_HTTP", "h2c", ""] {
            let (a, p) = bad(&[("backend-protocol", v)]);
            assert_eq!(a.protocol, BackendProtocol::Http);
            assert!(p.message.contains("GRPCS"));
        }
    }

    #[test]
    fn app_root() {
        assert_eq!(ok(&[("app-root", "/app1")]).settings.app_root.as_deref(), Some("/app1"));
        for v in ["app", "/a b", "/../etc", "https://x", "/a?x"] {
            assert!(bad(&[("app-root", v)]).0.settings.app_root.is_none(), "{v}");
        }
    }

    #[test]
    fn body_size() {
        assert_eq!(ok(&[("proxy-body-size", "0")]).settings.max_body, None);
        assert_eq!(ok(&[("proxy-body-size", "8k")]).settings.max_body, Some(8 << 10));
        assert_eq!(ok(&[("proxy-body-size", "1m")]).settings.max_body, Some(1 << 20));
        assert_eq!(ok(&[("proxy-body-size", "2G")]).settings.max_body, Some(2 << 30));
        assert_eq!(ok(&[("proxy-body-size", "1000")]).settings.max_body, Some(1000));
        for v in ["", "m", "1.5m", "-1", "1t", "99999999999999999999g", "18446744073709551615g", "1 m"] {
            assert_eq!(bad(&[("proxy-body-size", v)]).0.settings.max_body, Some(1 << 20), "{v}");
        }
    }

    #[test]
    fn timeouts() {
        let a = ok(&[("proxy-connect-timeout", "10"), ("proxy-read-timeout", "120"), ("proxy-send-timeout", "30")]);
        assert_eq!(a.settings.connect_timeout, Duration::from_secs(10));
        assert_eq!(a.settings.read_timeout, Duration::from_secs(120));
        assert_eq!(a.settings.send_timeout, Duration::from_secs(30));
        for v in ["0", "-5", "10s", "1.5", "", "99999999999999999999"] {
            let (a, _) = bad(&[("proxy-read-timeout", v)]);
            assert_eq!(a.settings.read_timeout, Duration::from_secs(60), "{v}");
        }
    }

    #[test]
    fn source_ranges() {
        let a = ok(&[("whitelist-source-range", "10.0.0.0/8, 192.168.1.7,2001:db8::/32")]);
        assert_eq!(a.settings.allow_source.len(), 3);
        assert!(crate::allowed(&a.settings, "10.1.2.3".parse().unwrap()));
        assert!(crate::allowed(&a.settings, "192.168.1.7".parse().unwrap()));
        assert!(!crate::allowed(&a.settings, "192.168.1.8".parse().unwrap()));
        assert!(crate::allowed(&a.settings, "2001:db8::1".parse().unwrap()));
        // Host bits are dropped: 10.0.0.1/8 is 10.0.0.0/8.
        let a = ok(&[("allowlist-source-range", "10.0.0.1/8")]);
        assert!(crate::allowed(&a.settings, "10.9.9.9".parse().unwrap()));
        // allowlist- wins over whitelist-.
        let a = ok(&[("allowlist-source-range", "1.2.3.4"), ("whitelist-source-range", "5.6.7.8")]);
        assert_eq!(a.settings.allow_source, vec!["1.2.3.4/32".parse::<ipnet::IpNet>().unwrap()]);
        // Invalid: fail closed (deny), never open.
        for v in ["10.0.0.0/33", "bogus", "", " , ", "10.0.0.0/8,x"] {
            let (a, _) = bad(&[("allowlist-source-range", v)]);
            assert!(a.deny.is_some(), "{v}");
        }
    }

    #[test]
    fn affinity() {
        let a = ok(&[("affinity", "cookie")]);
        assert_eq!(
            a.settings.affinity,
            Some(CookieAffinity { name: "INGRESSCOOKIE".into(), path: None, max_age: None })
        );
        let a = ok(&[
            ("affinity", "cookie"),
            ("session-cookie-name", "route"),
            ("session-cookie-path", "/app"),
            ("session-cookie-max-age", "172800"),
        ]);
        assert_eq!(
            a.settings.affinity,
            Some(CookieAffinity { name: "route".into(), path: Some("/app".into()), max_age: Some(172800) })
        );
        assert!(bad(&[("affinity", "ip")]).0.settings.affinity.is_none());
        let (a, _) = bad(&[("session-cookie-name", "a b;c"), ("affinity", "cookie")]);
        assert_eq!(a.settings.affinity.unwrap().name, "INGRESSCOOKIE");
        bad(&[("session-cookie-max-age", "-1"), ("affinity", "cookie")]);
        bad(&[("session-cookie-path", "nope"), ("affinity", "cookie")]);
        // Without affinity the companions are inert.
        assert!(ok(&[("session-cookie-name", "x")]).settings.affinity.is_none());
    }

    #[test]
    fn cors() {
        let a = ok(&[("enable-cors", "true")]);
        let c = a.settings.cors.unwrap();
        assert_eq!(c.allow_origin, vec!["*"]);
        assert_eq!(c.allow_methods, CORS_METHODS);
        assert_eq!(c.allow_headers, CORS_HEADERS);
        assert_eq!(c.expose_headers, "");
        assert!(c.allow_credentials);
        assert_eq!(c.max_age, CORS_MAX_AGE);
        let a = ok(&[
            ("enable-cors", "true"),
            ("cors-allow-origin", "https://a.example, http://*.b.example:8080"),
            ("cors-allow-methods", "GET, POST"),
            ("cors-allow-headers", "X-Token,Content-Type"),
            ("cors-expose-headers", "*"),
            ("cors-allow-credentials", "false"),
            ("cors-max-age", "600"),
        ]);
        let c = a.settings.cors.unwrap();
        assert_eq!(c.allow_origin, vec!["https://a.example", "http://*.b.example:8080"]);
        assert_eq!((c.allow_methods.as_str(), c.allow_headers.as_str()), ("GET, POST", "X-Token,Content-Type"));
        assert_eq!(c.expose_headers, "*");
        assert!(!c.allow_credentials);
        assert_eq!(c.max_age, 600);
        // Not enabled: nothing read.
        assert!(ok(&[("cors-allow-origin", "junk")]).settings.cors.is_none());
        // A bad origin is left out; none left: CORS off, never `*`.
        let (a, p) = run(&[("enable-cors", "true"), ("cors-allow-origin", "https://ok.example, ftp://x")]);
        assert_eq!(p.len(), 1);
        assert_eq!(a.settings.cors.unwrap().allow_origin, vec!["https://ok.example"]);
        let (a, p) = run(&[("enable-cors", "true"), ("cors-allow-origin", "$http_origin")]);
        assert_eq!(p.len(), 2);
        assert!(a.settings.cors.is_none());
        let (a, _) = bad(&[("cors-allow-methods", "GET;rm"), ("enable-cors", "true")]);
        assert_eq!(a.settings.cors.unwrap().allow_methods, CORS_METHODS);
        let (a, _) = bad(&[("cors-allow-headers", "X-A $x"), ("enable-cors", "true")]);
        assert_eq!(a.settings.cors.unwrap().allow_headers, CORS_HEADERS);
        bad(&[("cors-expose-headers", "a\"b"), ("enable-cors", "true")]);
        bad(&[("cors-max-age", "soon"), ("enable-cors", "true")]);
        bad(&[("cors-allow-credentials", "maybe"), ("enable-cors", "true")]);
    }

    #[test]
    fn redirects() {
        assert_eq!(
            ok(&[("permanent-redirect", "https://x.example/a")]).redirect,
            Some(("https://x.example/a".into(), 301))
        );
        let a = ok(&[("permanent-redirect", "https://x.example"), ("permanent-redirect-code", "308")]);
        assert_eq!(a.redirect, Some(("https://x.example".into(), 308)));
        let (a, _) = bad(&[("permanent-redirect-code", "200"), ("permanent-redirect", "http://x.example")]);
        assert_eq!(a.redirect, Some(("http://x.example".into(), 301)));
        assert_eq!(ok(&[("temporal-redirect", "https://t.example")]).redirect, Some(("https://t.example".into(), 302)));
        // temporal first, as ingress-nginx.
        let a = ok(&[("temporal-redirect", "https://t.example"), ("permanent-redirect", "https://p.example")]);
        assert_eq!(a.redirect.unwrap().0, "https://t.example");
        for v in ["/relative", "javascript:alert(1)", "https://", "https://a b", "ftp://x"] {
            assert!(bad(&[("permanent-redirect", v)]).0.redirect.is_none(), "{v}");
        }
    }

    #[test]
    fn balance_and_tries() {
        assert_eq!(ok(&[("load-balance", "ewma")]).settings.balance, Balance::Ewma);
        assert_eq!(ok(&[("load-balance", "round_robin")]).settings.balance, Balance::RoundRobin);
        assert_eq!(bad(&[("load-balance", "chash")]).0.settings.balance, Balance::RoundRobin);
        assert_eq!(ok(&[("proxy-next-upstream-tries", "5")]).settings.tries, 5);
        assert_eq!(ok(&[("proxy-next-upstream-tries", "0")]).settings.tries, u32::MAX);
        assert_eq!(bad(&[("proxy-next-upstream-tries", "x")]).0.settings.tries, 3);
        assert_eq!(bad(&[("proxy-next-upstream-tries", "99999999999")]).0.settings.tries, 3);
    }

    #[test]
    fn canary() {
        assert!(ok(&[("canary-weight", "50")]).canary.is_none());
        let a = ok(&[("canary", "true")]);
        assert_eq!(a.canary, Some(CanarySpec { header: None, cookie: None, weight: 0, weight_total: 100 }));
        let a = ok(&[
            ("canary", "true"),
            ("canary-by-header", "X-Canary"),
            ("canary-by-header-value", "me please"),
            ("canary-by-cookie", "canary"),
            ("canary-weight", "30"),
            ("canary-weight-total", "1000"),
        ]);
        assert_eq!(
            a.canary,
            Some(CanarySpec {
                header: Some(("X-Canary".into(), Some("me please".into()))),
                cookie: Some("canary".into()),
                weight: 30,
                weight_total: 1000
            })
        );
        assert_eq!(bad(&[("canary-weight", "101"), ("canary", "true")]).0.canary.unwrap().weight, 0);
        assert_eq!(bad(&[("canary-weight-total", "0"), ("canary", "true")]).0.canary.unwrap().weight_total, 100);
        assert!(bad(&[("canary-by-header", "X Y"), ("canary", "true")]).0.canary.unwrap().header.is_none());
        bad(&[("canary-by-header-value", "a\nb"), ("canary", "true"), ("canary-by-header", "X")]);
        bad(&[("canary-by-cookie", ""), ("canary", "true")]);
        bad(&[("canary", "on")]);
    }

    #[test]
    fn snippets_and_unknown_refused() {
        let (a, p) = run(&[
            ("configuration-snippet", "more_set_headers \"X: y\";"),
            ("server-snippet", "location /x { }"),
            ("my-own-snippet", "x"),
            ("limit-rps", "5"),
            ("made-up", "1"),
        ]);
        assert_eq!(p.len(), 5);
        assert!(p.iter().all(|p| p.reason == "UnsupportedAnnotation"));
        let msgs: Vec<&str> = p.iter().map(|p| p.message.as_str()).collect();
        assert_eq!(msgs.iter().filter(|m| m.contains("CVE-2025-1974")).count(), 3, "{msgs:?}");
        assert!(msgs.iter().any(|m| m.contains("limit-rps") && m.contains("rate limiting")));
        assert!(msgs.iter().any(|m| m.contains("made-up") && m.contains("not implemented")));
        assert!(a.deny.is_none());
        assert_eq!(a.settings, Settings::default());
        // Other prefixes are not ours.
        let map = BTreeMap::from([("kubernetes.io/ingress.class".to_string(), "x".to_string())]);
        let mut problems = Vec::new();
        parse(Some(&map), &ing(), &mut problems);
        assert!(problems.is_empty());
    }

    #[test]
    fn auth_fails_closed() {
        for k in FAIL_CLOSED {
            let (a, p) = run(&[(k, "x")]);
            assert_eq!(p.len(), 1);
            assert_eq!(p[0].reason, "UnsupportedAnnotation");
            assert!(p[0].message.contains("503"), "{}", p[0].message);
            assert!(a.deny.is_some(), "{k}");
        }
        assert!(run(&[("auth-realm", "x")]).0.deny.is_none());
        assert!(run(&[("auth-tls-verify-client", "off")]).0.deny.is_none());
    }

    #[test]
    fn lists_are_consistent() {
        for k in SUPPORTED {
            assert!(!REFUSED.iter().any(|(r, _)| r == k), "{k}");
        }
        for k in FAIL_CLOSED {
            assert!(REFUSED.iter().any(|(r, _)| r == k), "{k}");
        }
    }

    #[test]
    fn hostile_values() {
        let huge = "x".repeat(1 << 20);
        let ranges = vec!["10.0.0.1"; 20_000].join(",");
        let weird = "\u{0}\u{202e}$(rm -rf /)`;{}\r\n".repeat(100);
        for k in SUPPORTED.iter().chain(REFUSED.iter().map(|(k, _)| k)) {
            for v in [huge.as_str(), weird.as_str(), ranges.as_str(), "\u{ffff}"] {
                let (_, p) = run(&[(k, v), ("enable-cors", "true"), ("affinity", "cookie"), ("canary", "true")]);
                assert!(p.iter().all(|p| p.message.len() < 1000), "{k}");
            }
        }
        let long_key = format!("{}-snippet", "a".repeat(100_000));
        let (_, p) = run(&[(long_key.as_str(), "x")]);
        assert!(p[0].message.len() < 1000);
    }
}
