//! One request: routed by the installed table, answered by the proxy itself (404, 403,
//! redirects, CORS preflight, 413, 503) or sent to an endpoint, as ingress-nginx would.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Method, StatusCode, Uri, Version};
use hyper::body::{Body, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

use super::ConnInfo;
use super::body::{ReqBody, RespBody, UpBody};
use super::metrics::{MAIN, method_index};
use super::path;
use super::upstream::{ConnectError, PoolKey, PoolReturn, Sender, Worker, affinity_value};
use crate::{BackendProtocol, Balance, Cors, Route, RouteTable, Target, allowed};

/// What the metrics and the access log want to know of a request, filled in as it goes.
struct Ctx {
    route: Option<Arc<Route>>,
    canary: u8,
    upstream: Option<SocketAddr>,
    upstream_status: u16,
    upstream_time: Option<Duration>,
    request_id: Option<HeaderValue>,
}

pub(crate) async fn handle(req: Request<Incoming>, ci: Arc<ConnInfo>, w: Arc<Worker>) -> Response<RespBody> {
    let start = Instant::now();
    let table = w.shared.table.load_full();
    let method = method_index(req.method());
    let log = w.log.is_some().then(|| LogIn::of(&req));
    let mut ctx =
        Ctx { route: None, canary: MAIN, upstream: None, upstream_status: 0, upstream_time: None, request_id: None };
    // Boxed: the request's state is large, and hyper moves the future it is given.
    let resp = Box::pin(serve(req, &ci, &w, &table, &mut ctx)).await;
    let took = start.elapsed();
    w.stats.record(ctx.route.as_ref(), ctx.canary, method, resp.status().as_u16(), took, ctx.upstream_time);
    if let (Some(tx), Some(l)) = (&w.log, log) {
        let _ = tx.send(l.line(&ci, &ctx, &resp, took));
    }
    resp
}

fn simple(code: StatusCode, body: &'static str) -> Response<RespBody> {
    let mut r = Response::new(if body.is_empty() { RespBody::empty() } else { RespBody::text(body) });
    *r.status_mut() = code;
    if !body.is_empty() {
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
    }
    r
}

fn redirect(code: u16, location: &str) -> Response<RespBody> {
    let Ok(loc) = HeaderValue::from_str(location) else {
        return simple(StatusCode::INTERNAL_SERVER_ERROR, "");
    };
    let mut r = simple(StatusCode::from_u16(code).unwrap_or(StatusCode::FOUND), "");
    r.headers_mut().insert(header::LOCATION, loc);
    r
}

const NOT_FOUND: &str = "<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n<center><h1>404 Not Found</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";
const BAD_GATEWAY: &str = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n";
const UNAVAILABLE: &str = "<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body>\r\n<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n</body>\r\n</html>\r\n";
const TIMEOUT: &str = "<html>\r\n<head><title>504 Gateway Time-out</title></head>\r\n<body>\r\n<center><h1>504 Gateway Time-out</h1></center>\r\n</body>\r\n</html>\r\n";
const FORBIDDEN: &str = "<html>\r\n<head><title>403 Forbidden</title></head>\r\n<body>\r\n<center><h1>403 Forbidden</h1></center>\r\n</body>\r\n</html>\r\n";
const TOO_LARGE: &str = "<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n<body>\r\n<center><h1>413 Request Entity Too Large</h1></center>\r\n</body>\r\n</html>\r\n";
const BAD_REQUEST: &str = "<html>\r\n<head><title>400 Bad Request</title></head>\r\n<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n</body>\r\n</html>\r\n";

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_SCHEME: HeaderName = HeaderName::from_static("x-forwarded-scheme");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// 32 random hex digits, as nginx's `$request_id`.
fn new_request_id() -> HeaderValue {
    let mut n = rand::random::<u128>();
    let mut out = [0u8; 32];
    for b in out.iter_mut().rev() {
        *b = b"0123456789abcdef"[(n & 15) as usize];
        n >>= 4;
    }
    HeaderValue::from_bytes(&out).unwrap_or(HeaderValue::from_static("0"))
}

/// The headers of one connection only (RFC 9110 7.6.1), never passed on; `te` and `upgrade`
/// are dealt with on their own.
const HOP: [HeaderName; 5] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::PROXY_AUTHENTICATE,
];

fn strip_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    // Names listed in Connection are this hop's too (rare: only then allocate).
    if let Some(c) = h.get(header::CONNECTION)
        && let Ok(c) = c.to_str()
    {
        let named: Vec<HeaderName> = c
            .split(',')
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .filter(|n| !(keep_upgrade && n == header::UPGRADE))
            .collect();
        for n in named {
            h.remove(n);
        }
    }
    for n in &HOP {
        h.remove(n);
    }
    if !keep_upgrade {
        h.remove(header::UPGRADE);
    }
}

fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade"))))
}

fn cookie<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then_some(v.trim())
    })
}

/// Which canary (index) takes this request, in ingress-nginx's order: header, then cookie,
/// then weight; a canary without endpoints takes nothing.
fn pick_canary(route: &Route, h: &HeaderMap) -> Option<usize> {
    'canaries: for (i, c) in route.canaries.iter().enumerate() {
        if c.backend.ready.is_empty() && c.backend.serving_terminating.is_empty() {
            continue;
        }
        if let Some((name, want)) = &c.header
            && let Some(v) = h.get(name.as_str()).and_then(|v| v.to_str().ok())
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

fn cors_origin(c: &Cors, h: &HeaderMap) -> Option<HeaderValue> {
    if c.allow_origin.is_empty() || c.allow_origin.iter().any(|o| o == "*") {
        return Some(HeaderValue::from_static("*"));
    }
    let origin = h.get(header::ORIGIN)?;
    let o = origin.to_str().ok()?;
    c.allow_origin.iter().any(|a| a.eq_ignore_ascii_case(o)).then(|| origin.clone())
}

fn add_cors(h: &mut HeaderMap, c: &Cors, origin: HeaderValue, preflight: bool) {
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    if c.allow_credentials {
        h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
    }
    if let Ok(v) = HeaderValue::from_str(&c.allow_methods) {
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v);
    }
    if let Ok(v) = HeaderValue::from_str(&c.allow_headers) {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
    }
    if !c.expose_headers.is_empty()
        && let Ok(v) = HeaderValue::from_str(&c.expose_headers)
    {
        h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v);
    }
    if preflight {
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(c.max_age));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    }
}

async fn serve(
    mut req: Request<Incoming>,
    ci: &ConnInfo,
    w: &Arc<Worker>,
    table: &Arc<RouteTable>,
    ctx: &mut Ctx,
) -> Response<RespBody> {
    if req.method() == Method::CONNECT {
        return simple(StatusCode::METHOD_NOT_ALLOWED, "");
    }
    let upgrade = is_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();

    // The host: an absolute-form URI's (and HTTP/2's :authority) wins over Host (RFC 9112 3.2.2).
    let host_hv = match parts.uri.authority() {
        Some(a) => {
            let s = a.as_str();
            HeaderValue::from_str(s.rsplit_once('@').map_or(s, |(_, h)| h)).ok()
        }
        None => parts.headers.get(header::HOST).cloned(),
    };
    let host_hv = match host_hv {
        Some(h) => h,
        None if parts.version == Version::HTTP_10 => HeaderValue::from_static(""),
        None => return simple(StatusCode::BAD_REQUEST, BAD_REQUEST),
    };
    let Ok(host_raw) = host_hv.to_str() else { return simple(StatusCode::BAD_REQUEST, BAD_REQUEST) };
    let host = if host_raw.is_empty() {
        std::borrow::Cow::Borrowed("")
    } else {
        match path::host(host_raw) {
            Some(h) => h,
            None => return simple(StatusCode::BAD_REQUEST, BAD_REQUEST),
        }
    };
    let Some(norm) = path::normalize(parts.uri.path()) else {
        return simple(StatusCode::BAD_REQUEST, BAD_REQUEST);
    };

    // Routing: one lookup; what is needed later is taken out of the match here.
    let (route, host_tls, rewritten) = {
        let Some(m) = table.route(&host, &norm) else {
            return simple(StatusCode::NOT_FOUND, NOT_FOUND);
        };
        let rewritten = m.route.settings.rewrite_target.as_deref().map(|t| expand(t, m.captures.as_ref()));
        (m.route.clone(), m.host.tls, rewritten)
    };
    ctx.route = Some(route.clone());
    let st = &*route.settings;
    let tls = ci.tls;

    if !tls && ((host_tls && st.ssl_redirect) || st.force_ssl_redirect) {
        let port = match w.shared.https_port {
            Some(443) | None => String::new(),
            Some(p) => format!(":{p}"),
        };
        let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let h = if host.starts_with('[') || !host.is_empty() { &*host } else { "localhost" };
        return redirect(308, &format!("https://{h}{port}{pq}"));
    }
    if let Some(root) = &st.app_root
        && norm == "/"
    {
        let scheme = if tls { "https" } else { "http" };
        return redirect(302, &format!("{scheme}://{host_raw}{root}"));
    }
    let backend = match &route.target {
        Target::Redirect { location, code } => return redirect(*code, location),
        Target::Unavailable => return simple(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE),
        Target::Service(b) => b,
    };
    if !allowed(st, ci.remote.ip()) {
        return simple(StatusCode::FORBIDDEN, FORBIDDEN);
    }
    let cors = st.cors.as_ref().and_then(|c| cors_origin(c, &parts.headers).map(|o| (c, o)));
    if parts.method == Method::OPTIONS
        && let Some(c) = &st.cors
    {
        // ingress-nginx answers every OPTIONS of a CORS-enabled location itself.
        let mut r = simple(StatusCode::NO_CONTENT, "");
        if let Some((c, o)) = &cors {
            add_cors(r.headers_mut(), c, o.clone(), true);
        } else {
            let _ = c;
        }
        return r;
    }
    let max_body = st.max_body.filter(|m| *m > 0).unwrap_or(u64::MAX);
    if body.size_hint().lower() > max_body {
        return simple(StatusCode::PAYLOAD_TOO_LARGE, TOO_LARGE);
    }

    // The backend: a canary's or the route's own.
    let (backend, canary) = match pick_canary(&route, &parts.headers) {
        Some(i) => (&route.canaries[i].backend, i as u8),
        None => (backend, MAIN),
    };
    ctx.canary = canary;
    if backend.ready.is_empty() && backend.serving_terminating.is_empty() {
        return simple(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE);
    }
    let protocol = backend.protocol;
    let h2 = matches!(protocol, BackendProtocol::Grpc | BackendProtocol::Grpcs);

    // The URI the endpoint gets: the routed (normalized or rewritten) path, the query as sent.
    let changed_path = rewritten.as_deref().or(match &norm {
        std::borrow::Cow::Owned(p) => Some(p.as_str()),
        std::borrow::Cow::Borrowed(_) => None,
    });
    let pq = match changed_path {
        Some(p) => {
            let s = match parts.uri.query() {
                Some(q) => format!("{p}?{q}"),
                None => p.to_string(),
            };
            match PathAndQuery::try_from(s) {
                Ok(pq) => pq,
                Err(_) => return simple(StatusCode::BAD_REQUEST, BAD_REQUEST),
            }
        }
        None => parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/")),
    };
    let uri = if h2 {
        let scheme = if protocol == BackendProtocol::Grpcs { Scheme::HTTPS } else { Scheme::HTTP };
        let authority = if host_raw.is_empty() { "localhost" } else { host_raw };
        Uri::builder().scheme(scheme).authority(authority).path_and_query(pq).build()
    } else {
        Ok(Uri::from(pq))
    };
    let Ok(uri) = uri else { return simple(StatusCode::BAD_REQUEST, BAD_REQUEST) };
    let affinity_cookie = st.affinity.as_ref().and_then(|a| cookie(&parts.headers, &a.name).map(str::to_string));

    let request_id = match parts.headers.get(&X_REQUEST_ID) {
        Some(v) => v.clone(),
        None => new_request_id(),
    };
    ctx.request_id = Some(request_id.clone());
    {
        let h = &mut parts.headers;
        strip_hop(h, upgrade.is_some());
        let te_trailers = h
            .get(header::TE)
            .is_some_and(|v| v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers"))));
        h.remove(header::TE);
        if te_trailers {
            h.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        if upgrade.is_some() {
            h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        if h2 {
            h.remove(header::HOST);
        } else if !host_raw.is_empty() {
            h.insert(header::HOST, host_hv.clone());
        }
        let proto = HeaderValue::from_static(if tls { "https" } else { "http" });
        // The client's address replaces whatever it claimed (ingress-nginx's default, with
        // use-forwarded-headers off: nothing in front of it is trusted).
        h.insert(X_FORWARDED_FOR, ci.remote_ip.clone());
        h.insert(X_REAL_IP, ci.remote_ip.clone());
        h.insert(X_FORWARDED_PROTO, proto.clone());
        h.insert(X_FORWARDED_SCHEME, proto);
        if !host_raw.is_empty() {
            h.insert(X_FORWARDED_HOST, host_hv.clone());
        }
        h.insert(X_FORWARDED_PORT, ci.local_port.clone());
        h.insert(X_REQUEST_ID, request_id);
        if let Some(v) = ci.forwarded(&host_hv, || forwarded(ci.remote, host_raw, tls)) {
            h.insert(header::FORWARDED, v);
        }
    }
    parts.uri = uri;
    parts.version = if h2 { Version::HTTP_2 } else { Version::HTTP_11 };
    let tripped = Arc::new(AtomicBool::new(false));
    let body = if body.is_end_stream() {
        ReqBody::Empty
    } else {
        ReqBody::Stream { inner: body, seen: 0, max: max_body, tripped: tripped.clone() }
    };
    let retry_ok = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE)
        && matches!(body, ReqBody::Empty);
    let mut up_req = Request::from_parts(parts, body);

    // Send, trying other endpoints when connecting fails (the request never left) or when an
    // idle keep-alive connection turned out closed before it took the request.
    let table_id = Arc::as_ptr(table) as usize;
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut attempts = 0u32;
    let mut stale = 0u32;
    let mut assign_cookie = false;
    let (addr, sender, resp, t0) = loop {
        let chosen = match (&affinity_cookie, st.affinity.is_some()) {
            (Some(v), _) => w.sticky(backend, v, &tried),
            _ => None,
        };
        let addr = match chosen {
            Some(a) => a,
            None => {
                assign_cookie = st.affinity.is_some();
                match w.choose(backend, st.balance, &tried, table_id) {
                    Some(a) => a,
                    None => return simple(StatusCode::BAD_GATEWAY, BAD_GATEWAY),
                }
            }
        };
        ctx.upstream = Some(addr);
        let key = PoolKey { addr, tls: matches!(protocol, BackendProtocol::Https | BackendProtocol::Grpcs) };
        let pooled = if stale < 2 { w.pooled(key, h2) } else { None };
        let was_pooled = pooled.is_some();
        let mut sender = match pooled {
            Some(s) => s,
            None => match w.connect(addr, protocol, st.connect_timeout).await {
                Ok(s) => s,
                Err(e) => {
                    w.eject(addr);
                    tried.push(addr);
                    attempts += 1;
                    if attempts < st.tries.max(1) {
                        continue;
                    }
                    return match e {
                        ConnectError::Timeout => simple(StatusCode::GATEWAY_TIMEOUT, TIMEOUT),
                        ConnectError::Failed => simple(StatusCode::BAD_GATEWAY, BAD_GATEWAY),
                    };
                }
            },
        };
        if !sender.ready().await {
            stale += 1;
            if stale < 4 {
                continue;
            }
            return simple(StatusCode::BAD_GATEWAY, BAD_GATEWAY);
        }
        let t0 = Instant::now();
        match tokio::time::timeout(st.read_timeout, sender.send(up_req)).await {
            Err(_) => return simple(StatusCode::GATEWAY_TIMEOUT, TIMEOUT),
            Ok(Ok(resp)) => break (addr, sender, resp, t0),
            Ok(Err(mut e)) => {
                if tripped.load(Ordering::Relaxed) {
                    return simple(StatusCode::PAYLOAD_TOO_LARGE, TOO_LARGE);
                }
                match e.take_message() {
                    // Not sent: the connection was gone; the same request goes again.
                    Some(r) if was_pooled || retry_ok => {
                        up_req = r;
                        stale += 1;
                        if stale < 4 {
                            continue;
                        }
                        return simple(StatusCode::BAD_GATEWAY, BAD_GATEWAY);
                    }
                    _ => return simple(StatusCode::BAD_GATEWAY, BAD_GATEWAY),
                }
            }
        }
    };
    let up_took = t0.elapsed();
    ctx.upstream_status = resp.status().as_u16();
    ctx.upstream_time = Some(up_took);
    if st.balance == Balance::Ewma {
        w.observe(addr, up_took);
    }

    let mut resp = resp;
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switching && let Some(client) = upgrade {
        let endpoint = hyper::upgrade::on(&mut resp);
        // The tunnel is its own task: a table swap or the end of this request leaves it be.
        tokio::spawn(async move {
            let (Ok(c), Ok(e)) = tokio::join!(client, endpoint) else { return };
            let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(c), &mut TokioIo::new(e)).await;
        });
    }
    let (mut rp, rbody) = resp.into_parts();
    strip_hop(&mut rp.headers, switching);
    if switching {
        rp.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    rp.version = Version::HTTP_11;
    if let Some((c, o)) = cors {
        add_cors(&mut rp.headers, c, o, false);
    }
    if assign_cookie && let Some(a) = &st.affinity {
        let mut c = format!(
            "{}={}; Path={}",
            a.name,
            affinity_value(&addr),
            a.path.as_deref().unwrap_or_else(|| cookie_path(&route.path))
        );
        if let Some(age) = a.max_age {
            let _ = write!(c, "; Max-Age={age}");
        }
        if tls {
            c.push_str("; Secure");
        }
        c.push_str("; HttpOnly");
        if let Ok(v) = HeaderValue::from_str(&c) {
            rp.headers.append(header::SET_COOKIE, v);
        }
    }
    // An HTTP/1 connection goes back to the pool once the body has been read.
    let key = PoolKey { addr, tls: matches!(protocol, BackendProtocol::Https | BackendProtocol::Grpcs) };
    let ret = match sender {
        Sender::H1(s) if !switching => Some(PoolReturn { worker: w.clone(), key, sender: s }),
        _ => None,
    };
    Response::from_parts(rp, RespBody::Upstream(UpBody { inner: rbody, ret }))
}

fn cookie_path(route_path: &str) -> &str {
    // A regex path is no cookie path: the whole site then.
    if route_path.starts_with('/') && !route_path.contains(['(', '[', '*', '?', '+', '$', '^', '|', '\\']) {
        route_path
    } else {
        "/"
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

/// What the access log line takes from the request before it is consumed.
struct LogIn {
    host: String,
    method: String,
    path: String,
    protocol: &'static str,
    user_agent: String,
}

impl LogIn {
    fn of(req: &Request<Incoming>) -> LogIn {
        let host = match req.uri().authority() {
            Some(a) => a.as_str().to_string(),
            None => req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("").to_string(),
        };
        LogIn {
            host,
            method: req.method().as_str().to_string(),
            path: req.uri().path_and_query().map_or("/", |p| p.as_str()).to_string(),
            protocol: match req.version() {
                Version::HTTP_09 => "HTTP/0.9",
                Version::HTTP_10 => "HTTP/1.0",
                Version::HTTP_2 => "HTTP/2.0",
                Version::HTTP_3 => "HTTP/3.0",
                _ => "HTTP/1.1",
            },
            user_agent: req
                .headers()
                .get(header::USER_AGENT)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default(),
        }
    }

    fn line(self, ci: &ConnInfo, ctx: &Ctx, resp: &Response<RespBody>, took: Duration) -> String {
        let mut l = String::with_capacity(512);
        l.push_str("{\"time\":");
        json_str(&mut l, &jiff::Timestamp::now().to_string());
        l.push_str(",\"remote_addr\":");
        json_str(&mut l, &ci.remote.ip().to_string());
        l.push_str(",\"host\":");
        json_str(&mut l, &self.host);
        l.push_str(",\"method\":");
        json_str(&mut l, &self.method);
        l.push_str(",\"path\":");
        json_str(&mut l, &self.path);
        let _ = write!(l, ",\"protocol\":\"{}\",\"status\":{}", self.protocol, resp.status().as_u16());
        let bytes = resp.body().size_hint().exact().unwrap_or(0);
        let _ = write!(l, ",\"bytes_sent\":{bytes},\"request_time\":{:.3}", took.as_secs_f64());
        l.push_str(",\"upstream_addr\":");
        json_str(&mut l, &ctx.upstream.map(|a| a.to_string()).unwrap_or_default());
        if ctx.upstream_status > 0 {
            let _ = write!(l, ",\"upstream_status\":{}", ctx.upstream_status);
        } else {
            l.push_str(",\"upstream_status\":null");
        }
        match ctx.upstream_time {
            Some(t) => {
                let _ = write!(l, ",\"upstream_response_time\":{:.3}", t.as_secs_f64());
            }
            None => l.push_str(",\"upstream_response_time\":null"),
        }
        let (ingress, service) = match &ctx.route {
            Some(r) => {
                let (ing, svc) = match (ctx.canary, &r.target) {
                    (MAIN, Target::Service(b)) => (&r.ingress, b.service.to_string()),
                    (MAIN, _) => (&r.ingress, String::new()),
                    (i, _) => match r.canaries.get(i as usize) {
                        Some(c) => (&c.ingress, c.backend.service.to_string()),
                        None => (&r.ingress, String::new()),
                    },
                };
                (ing.to_string(), svc)
            }
            None => (String::new(), String::new()),
        };
        l.push_str(",\"ingress\":");
        json_str(&mut l, &ingress);
        l.push_str(",\"service\":");
        json_str(&mut l, &service);
        l.push_str(",\"request_id\":");
        json_str(&mut l, ctx.request_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or(""));
        l.push_str(",\"user_agent\":");
        json_str(&mut l, &self.user_agent);
        l.push_str("}\n");
        l
    }
}

fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}
