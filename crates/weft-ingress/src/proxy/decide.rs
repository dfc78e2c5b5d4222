//! What to do with a request, from its head alone: answer it here (404, 403, redirects, CORS
//! preflight, 413, 503, 400) or send it to a backend, and with which header changes. Both the
//! hyper path (HTTP/2) and the hand-written HTTP/1 path ([`super::h1`]) call [`decide`] and
//! the helpers here, so their behaviour cannot drift apart.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::ConnInfo;
use super::metrics::MAIN;
use super::path;
use crate::{Backend, Cors, Route, RouteTable, Target, allowed};

/// A request's header fields, however they are stored.
#[derive(Clone, Copy)]
pub(crate) enum Headers<'a> {
    Map(&'a HeaderMap),
    Raw(&'a [httparse::Header<'a>]),
}

impl<'a> Headers<'a> {
    /// Every value of `name` (lowercase), in order.
    pub(crate) fn all<'n>(self, name: &'n str) -> impl Iterator<Item = &'a [u8]> + use<'a, 'n> {
        let (map, raw) = match self {
            Headers::Map(m) => (Some(m.get_all(name).iter()), None),
            Headers::Raw(r) => (None, Some(r.iter().filter(move |h| h.name.eq_ignore_ascii_case(name)))),
        };
        map.into_iter().flatten().map(|v| v.as_bytes()).chain(raw.into_iter().flatten().map(|h| h.value))
    }

    pub(crate) fn first(self, name: &str) -> Option<&'a [u8]> {
        self.all(name).next()
    }

    fn str(self, name: &str) -> Option<&'a str> {
        self.first(name).and_then(|v| std::str::from_utf8(v).ok())
    }
}

/// The parts of a request head a decision reads.
pub(crate) struct Head<'a> {
    pub(crate) method: &'a str,
    /// The authority of an absolute-form target (or HTTP/2's `:authority`), userinfo removed.
    pub(crate) authority: Option<&'a str>,
    pub(crate) path: &'a str,
    pub(crate) query: Option<&'a str>,
    pub(crate) http10: bool,
    /// What is known of the body's length before reading it (Content-Length).
    pub(crate) body_at_least: u64,
    pub(crate) headers: Headers<'a>,
}

/// What the proxy answers itself.
pub(crate) enum Answer {
    Simple(u16, &'static str),
    Redirect(u16, String),
    /// A CORS preflight (204), with the CORS headers when the origin is allowed.
    Preflight(Option<HeaderValue>),
}

/// Where and how a request goes to a backend.
pub(crate) struct Forward<'a> {
    /// The Host (or authority) as sent, `""` for an HTTP/1.0 request without one.
    pub(crate) host_raw: &'a str,
    /// The path and query for the endpoint when they differ from the request's (normalized
    /// or rewritten path); `None`: as sent.
    pub(crate) path_and_query: Option<String>,
    /// The value of the route's affinity cookie the client sent.
    pub(crate) affinity: Option<&'a str>,
    /// The `Access-Control-Allow-Origin` to add to the response, when CORS is on and allowed.
    pub(crate) cors_origin: Option<HeaderValue>,
    /// `proxy-body-size` in bytes (`u64::MAX`: none).
    pub(crate) max_body: u64,
}

/// A decision, with what the metrics and the log want to know.
pub(crate) struct Decision<'a> {
    pub(crate) route: Option<Arc<Route>>,
    pub(crate) canary: u8,
    pub(crate) outcome: Result<Forward<'a>, Answer>,
}

/// The backend a [`Forward`] goes to: the canary's (by index) or the route's own.
pub(crate) fn backend_of(r: &Route, canary: u8) -> Option<&Backend> {
    if canary != MAIN {
        return r.canaries.get(canary as usize).map(|c| &c.backend);
    }
    match &r.target {
        Target::Service(b) => Some(b),
        _ => None,
    }
}

pub(crate) const NOT_FOUND: &str = "<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n<center><h1>404 Not Found</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";
pub(crate) const BAD_GATEWAY: &str = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n";
pub(crate) const UNAVAILABLE: &str = "<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body>\r\n<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n</body>\r\n</html>\r\n";
pub(crate) const TIMEOUT: &str = "<html>\r\n<head><title>504 Gateway Time-out</title></head>\r\n<body>\r\n<center><h1>504 Gateway Time-out</h1></center>\r\n</body>\r\n</html>\r\n";
pub(crate) const FORBIDDEN: &str = "<html>\r\n<head><title>403 Forbidden</title></head>\r\n<body>\r\n<center><h1>403 Forbidden</h1></center>\r\n</body>\r\n</html>\r\n";
pub(crate) const TOO_LARGE: &str = "<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n<body>\r\n<center><h1>413 Request Entity Too Large</h1></center>\r\n</body>\r\n</html>\r\n";
pub(crate) const BAD_REQUEST: &str = "<html>\r\n<head><title>400 Bad Request</title></head>\r\n<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n</body>\r\n</html>\r\n";

/// The `Server` of every response, the proxy's own and the endpoints' (replaced, as nginx does).
pub(crate) const SERVER: &str = "weft";

pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) const X_FORWARDED_SCHEME: HeaderName = HeaderName::from_static("x-forwarded-scheme");
pub(crate) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(crate) const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request headers the proxy sets itself (a client's own values are replaced).
pub(crate) const SET_BY_PROXY: [&str; 9] = [
    "host",
    "x-forwarded-for",
    "x-real-ip",
    "x-forwarded-proto",
    "x-forwarded-scheme",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-request-id",
    "forwarded",
];

fn simple(code: u16, body: &'static str) -> Answer {
    Answer::Simple(code, body)
}

/// Decides what to do with a request (see the module's comment).
pub(crate) fn decide<'a>(table: &RouteTable, head: &Head<'a>, ci: &ConnInfo, https_port: Option<u16>) -> Decision<'a> {
    let mut d = Decision { route: None, canary: MAIN, outcome: Err(simple(400, BAD_REQUEST)) };
    d.outcome = decide_inner(table, head, ci, https_port, &mut d.route, &mut d.canary);
    d
}

fn decide_inner<'a>(
    table: &RouteTable,
    head: &Head<'a>,
    ci: &ConnInfo,
    https_port: Option<u16>,
    route_out: &mut Option<Arc<Route>>,
    canary_out: &mut u8,
) -> Result<Forward<'a>, Answer> {
    if head.method == "CONNECT" {
        return Err(simple(405, ""));
    }
    // The host: an absolute-form URI's (and HTTP/2's :authority) wins over Host (RFC 9112 3.2.2).
    let host_raw: &'a str = match head.authority {
        Some(a) => a,
        None => {
            let mut hosts = head.headers.all("host");
            let first = hosts.next();
            if hosts.next().is_some() {
                return Err(simple(400, BAD_REQUEST));
            }
            match first {
                Some(h) => std::str::from_utf8(h).map_err(|_| simple(400, BAD_REQUEST))?,
                None if head.http10 => "",
                None => return Err(simple(400, BAD_REQUEST)),
            }
        }
    };
    let host =
        if host_raw.is_empty() { Cow::Borrowed("") } else { path::host(host_raw).ok_or(simple(400, BAD_REQUEST))? };
    let norm = path::normalize(head.path).ok_or(simple(400, BAD_REQUEST))?;

    // Routing: one lookup; what is needed later is taken out of the match here.
    let (route, host_tls, rewritten) = {
        let Some(m) = table.route(&host, &norm) else {
            return Err(simple(404, NOT_FOUND));
        };
        let rewritten = m.route.settings.rewrite_target.as_deref().map(|t| expand(t, m.captures.as_ref()));
        (m.route.clone(), m.host.tls, rewritten)
    };
    *route_out = Some(route.clone());
    let st = &*route.settings;
    let tls = ci.tls;

    if !tls && ((host_tls && st.ssl_redirect) || st.force_ssl_redirect) {
        let port = match https_port {
            Some(443) | None => String::new(),
            Some(p) => format!(":{p}"),
        };
        let pq = match head.query {
            Some(q) => format!("{}?{q}", head.path),
            None => head.path.to_string(),
        };
        let h = if host.starts_with('[') || !host.is_empty() { &*host } else { "localhost" };
        return Err(Answer::Redirect(308, format!("https://{h}{port}{pq}")));
    }
    if let Some(root) = &st.app_root
        && norm == "/"
    {
        let scheme = if tls { "https" } else { "http" };
        return Err(Answer::Redirect(302, format!("{scheme}://{host_raw}{root}")));
    }
    let backend = match &route.target {
        Target::Redirect { location, code } => return Err(Answer::Redirect(*code, location.clone())),
        Target::Unavailable => return Err(simple(503, UNAVAILABLE)),
        Target::Service(b) => b,
    };
    if !allowed(st, ci.remote.ip()) {
        return Err(simple(403, FORBIDDEN));
    }
    let cors_origin = st.cors.as_ref().and_then(|c| cors_origin(c, head.headers));
    if head.method == "OPTIONS" && st.cors.is_some() {
        // ingress-nginx answers every OPTIONS of a CORS-enabled location itself.
        return Err(Answer::Preflight(cors_origin));
    }
    let max_body = st.max_body.filter(|m| *m > 0).unwrap_or(u64::MAX);
    if head.body_at_least > max_body {
        return Err(simple(413, TOO_LARGE));
    }

    // The backend: a canary's or the route's own.
    let (backend, canary) = match pick_canary(&route, head.headers) {
        Some(i) => (&route.canaries[i].backend, i as u8),
        None => (backend, MAIN),
    };
    *canary_out = canary;
    if backend.ready.is_empty() && backend.serving_terminating.is_empty() {
        return Err(simple(503, UNAVAILABLE));
    }

    // The path the endpoint gets: the routed (normalized or rewritten) one, the query as sent.
    let changed_path = rewritten.as_deref().or(match &norm {
        Cow::Owned(p) => Some(p.as_str()),
        Cow::Borrowed(_) => None,
    });
    let path_and_query = changed_path.map(|p| match head.query {
        Some(q) => format!("{p}?{q}"),
        None => p.to_string(),
    });
    let affinity = st.affinity.as_ref().and_then(|a| cookie(head.headers, &a.name));
    Ok(Forward { host_raw, path_and_query, affinity, cors_origin, max_body })
}

/// The value of cookie `name`, borrowed from the headers.
pub(crate) fn cookie<'a>(h: Headers<'a>, name: &str) -> Option<&'a str> {
    h.all("cookie").filter_map(|v| std::str::from_utf8(v).ok()).flat_map(|v| v.split(';')).find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then_some(v.trim())
    })
}

/// Which canary (index) takes this request, in ingress-nginx's order: header, then cookie,
/// then weight; a canary without endpoints takes nothing.
fn pick_canary(route: &Route, h: Headers<'_>) -> Option<usize> {
    'canaries: for (i, c) in route.canaries.iter().enumerate() {
        if c.backend.ready.is_empty() && c.backend.serving_terminating.is_empty() {
            continue;
        }
        if let Some((name, want)) = &c.header
            && let Some(v) = h.str(&name.to_ascii_lowercase())
        {
            match want {
                Some(want) if v == want => return Some(i),
                Some(_) => {}
                None if v == "always" => return Some(i),
                None if v == "never" => continue 'canaries,
                None => {}
            }
        }
        if let Some(name) = &c.cookie
            && let Some(v) = cookie(h, name)
        {
            match v {
                "always" => return Some(i),
                "never" => continue 'canaries,
                _ => {}
            }
        }
        if c.weight > 0 && rand::random_range(0..c.weight_total.max(1)) < c.weight {
            return Some(i);
        }
    }
    None
}

/// `rewrite-target` with `$1`..`$9` from the route's captures.
fn expand(target: &str, caps: Option<&regex::Captures<'_>>) -> String {
    let mut out = String::with_capacity(target.len() + 16);
    let mut it = target.chars().peekable();
    while let Some(c) = it.next() {
        if c == '$'
            && let Some(d) = it.peek().and_then(|d| d.to_digit(10))
            && d > 0
        {
            it.next();
            if let Some(m) = caps.and_then(|c| c.get(d as usize)) {
                out.push_str(m.as_str());
            }
            continue;
        }
        out.push(c);
    }
    if !out.starts_with('/') {
        out.insert(0, '/');
    }
    out
}

fn cors_origin(c: &Cors, h: Headers<'_>) -> Option<HeaderValue> {
    if c.allow_origin.is_empty() || c.allow_origin.iter().any(|o| o == "*") {
        return Some(HeaderValue::from_static("*"));
    }
    let o = h.str("origin")?;
    c.allow_origin.iter().any(|a| a.eq_ignore_ascii_case(o)).then(|| HeaderValue::from_str(o).ok())?
}

/// The CORS response headers, each to replace the response's own.
pub(crate) fn cors_headers(c: &Cors, origin: HeaderValue, preflight: bool) -> Vec<(HeaderName, HeaderValue)> {
    let mut h = vec![(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin)];
    if c.allow_credentials {
        h.push((header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true")));
    }
    if let Ok(v) = HeaderValue::from_str(&c.allow_methods) {
        h.push((header::ACCESS_CONTROL_ALLOW_METHODS, v));
    }
    if let Ok(v) = HeaderValue::from_str(&c.allow_headers) {
        h.push((header::ACCESS_CONTROL_ALLOW_HEADERS, v));
    }
    if !c.expose_headers.is_empty()
        && let Ok(v) = HeaderValue::from_str(&c.expose_headers)
    {
        h.push((header::ACCESS_CONTROL_EXPOSE_HEADERS, v));
    }
    if preflight {
        h.push((header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(c.max_age)));
        h.push((header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8")));
        h.push((header::CONTENT_LENGTH, HeaderValue::from_static("0")));
    }
    h
}

/// 32 random hex digits, as nginx's `$request_id`.
pub(crate) fn new_request_id() -> [u8; 32] {
    let mut n = rand::random::<u128>();
    let mut out = [0u8; 32];
    for b in out.iter_mut().rev() {
        *b = b"0123456789abcdef"[(n & 15) as usize];
        n >>= 4;
    }
    out
}

/// The headers the proxy sets on a request to an endpoint (names of [`SET_BY_PROXY`] but
/// `host`, which the caller sets): the client's address replaces whatever it claimed
/// (ingress-nginx's default, with use-forwarded-headers off: nothing in front of it is trusted).
pub(crate) fn proxy_headers(ci: &ConnInfo, host_raw: &str, request_id: &[u8], f: &mut dyn FnMut(&HeaderName, &[u8])) {
    let proto: &[u8] = if ci.tls { b"https" } else { b"http" };
    f(&X_FORWARDED_FOR, ci.remote_ip.as_bytes());
    f(&X_REAL_IP, ci.remote_ip.as_bytes());
    f(&X_FORWARDED_PROTO, proto);
    f(&X_FORWARDED_SCHEME, proto);
    if !host_raw.is_empty() {
        f(&X_FORWARDED_HOST, host_raw.as_bytes());
    }
    f(&X_FORWARDED_PORT, ci.local_port.as_bytes());
    f(&X_REQUEST_ID, request_id);
    if let Some(v) = ci.forwarded(host_raw, || forwarded(ci.remote, host_raw, ci.tls)) {
        f(&header::FORWARDED, v.as_bytes());
    }
}

/// RFC 7239: `for=` the client (IPv6 quoted in brackets), `host=` and `proto=`.
fn forwarded(remote: SocketAddr, host: &str, tls: bool) -> String {
    let proto = if tls { "https" } else { "http" };
    let mut f = match remote.ip() {
        std::net::IpAddr::V4(ip) => format!("for={ip}"),
        std::net::IpAddr::V6(ip) => format!("for=\"[{ip}]\""),
    };
    if !host.is_empty() {
        // A host with a port or an IPv6 literal is no token: quoted.
        if host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_') {
            let _ = write!(f, ";host={host}");
        } else {
            let _ = write!(f, ";host=\"{host}\"");
        }
    }
    let _ = write!(f, ";proto={proto}");
    f
}

/// The `Set-Cookie` for a request whose endpoint was chosen without an affinity cookie.
pub(crate) fn affinity_set_cookie(route: &Route, addr: &SocketAddr, tls: bool) -> Option<String> {
    let a = route.settings.affinity.as_ref()?;
    let mut c = format!(
        "{}={}; Path={}",
        a.name,
        super::upstream::affinity_value(addr),
        a.path.as_deref().unwrap_or_else(|| cookie_path(&route.path))
    );
    if let Some(age) = a.max_age {
        let _ = write!(c, "; Max-Age={age}");
    }
    if tls {
        c.push_str("; Secure");
    }
    c.push_str("; HttpOnly");
    Some(c)
}

fn cookie_path(route_path: &str) -> &str {
    // A regex path is no cookie path: the whole site then.
    if route_path.starts_with('/') && !route_path.contains(['(', '[', '*', '?', '+', '$', '^', '|', '\\']) {
        route_path
    } else {
        "/"
    }
}

/// Whether a `Connection`/`TE`-style list names `token`.
pub(crate) fn lists(v: &[u8], token: &str) -> bool {
    v.split(|b| *b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}
