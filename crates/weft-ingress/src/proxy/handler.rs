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
use super::decide::*;
use super::metrics::{MAIN, method_index};
use super::upstream::{ConnectError, PoolKey, PoolReturn, Sender, Worker};
use crate::{BackendProtocol, Balance, Route, RouteTable, Target};

/// What the metrics and the access log want to know of a request, filled in as it goes.
pub(crate) struct Ctx {
    pub(crate) route: Option<Arc<Route>>,
    pub(crate) canary: u8,
    pub(crate) upstream: Option<SocketAddr>,
    pub(crate) upstream_status: u16,
    pub(crate) upstream_time: Option<Duration>,
    pub(crate) request_id: Option<HeaderValue>,
}

impl Ctx {
    pub(crate) fn new() -> Ctx {
        Ctx { route: None, canary: MAIN, upstream: None, upstream_status: 0, upstream_time: None, request_id: None }
    }
}

pub(crate) async fn handle(req: Request<Incoming>, ci: Arc<ConnInfo>, w: Arc<Worker>) -> Response<RespBody> {
    let start = Instant::now();
    let table = w.shared.table.load_full();
    let method = method_index(req.method());
    let log = w.log.is_some().then(|| LogIn::of(&req));
    let mut ctx = Ctx::new();
    // Boxed: the request's state is large, and hyper moves the future it is given.
    let mut resp = Box::pin(serve(req, &ci, &w, &table, &mut ctx)).await;
    resp.headers_mut().insert(header::SERVER, HeaderValue::from_static(SERVER));
    let status = resp.status().as_u16();
    let mut fin = Finish { w, ci, ctx, method, status, start, log, bytes: 0 };
    match resp.body_mut() {
        // An endpoint's body: recorded when it has been sent (or dropped).
        RespBody::Upstream(u) => u.done = Some(Box::new(fin)),
        RespBody::Full(b) => {
            fin.bytes = b.as_ref().map_or(0, |b| b.len() as u64);
            fin.record();
        }
    }
    resp
}

/// A request to record in the metrics and the access log once its answer has gone.
pub(crate) struct Finish {
    w: Arc<Worker>,
    ci: Arc<ConnInfo>,
    ctx: Ctx,
    method: u8,
    status: u16,
    start: Instant,
    log: Option<LogIn>,
    /// Response body bytes sent.
    pub(crate) bytes: u64,
}

impl Finish {
    pub(crate) fn record(self) {
        let Finish { w, ci, ctx, method, status, start, log, bytes } = self;
        let took = start.elapsed();
        w.stats.record(ctx.route.as_ref(), ctx.canary, method, status, took, ctx.upstream_time);
        if let (Some(tx), Some(l)) = (&w.log, log) {
            let _ = tx.send(l.line(&ci, &ctx, status, bytes, took));
        }
    }
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

fn answer(a: Answer, route: Option<&Route>) -> Response<RespBody> {
    match a {
        Answer::Simple(code, body) => simple(StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST), body),
        Answer::Redirect(code, location) => redirect(code, &location),
        Answer::Preflight(origin) => {
            let mut r = simple(StatusCode::NO_CONTENT, "");
            if let (Some(o), Some(c)) = (origin, route.and_then(|r| r.settings.cors.as_ref())) {
                for (k, v) in cors_headers(c, o, true) {
                    r.headers_mut().insert(k, v);
                }
            }
            r
        }
    }
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
        && req.headers().get_all(header::CONNECTION).iter().any(|v| lists(v.as_bytes(), "upgrade"))
}

async fn serve(
    mut req: Request<Incoming>,
    ci: &ConnInfo,
    w: &Arc<Worker>,
    table: &Arc<RouteTable>,
    ctx: &mut Ctx,
) -> Response<RespBody> {
    let upgrade = is_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let authority = parts.uri.authority().map(|a| {
        let s = a.as_str();
        s.rsplit_once('@').map_or(s, |(_, h)| h)
    });
    let head = Head {
        method: parts.method.as_str(),
        authority,
        path: parts.uri.path(),
        query: parts.uri.query(),
        http10: parts.version == Version::HTTP_10,
        body_at_least: body.size_hint().lower(),
        headers: Headers::Map(&parts.headers),
    };
    let d = decide(table, &head, ci, w.shared.https_port);
    ctx.route = d.route.clone();
    ctx.canary = d.canary;
    let fwd = match d.outcome {
        Ok(f) => f,
        Err(a) => return answer(a, d.route.as_deref()),
    };
    let host_raw = fwd.host_raw.to_string();
    let affinity_cookie = fwd.affinity.map(str::to_string);
    let (cors_origin, max_body, fwd_pq) = (fwd.cors_origin, fwd.max_body, fwd.path_and_query);
    let Some(route) = d.route else { return simple(StatusCode::BAD_GATEWAY, BAD_GATEWAY) };
    let Some(backend) = backend_of(&route, d.canary) else {
        return simple(StatusCode::BAD_GATEWAY, BAD_GATEWAY);
    };
    let st = &*route.settings;
    let tls = ci.tls;
    let protocol = backend.protocol;
    let h2 = matches!(protocol, BackendProtocol::Grpc | BackendProtocol::Grpcs);

    let pq = match fwd_pq {
        Some(s) => match PathAndQuery::try_from(s) {
            Ok(pq) => pq,
            Err(_) => return simple(StatusCode::BAD_REQUEST, BAD_REQUEST),
        },
        None => parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/")),
    };
    let uri = if h2 {
        let scheme = if protocol == BackendProtocol::Grpcs { Scheme::HTTPS } else { Scheme::HTTP };
        let authority = if host_raw.is_empty() { "localhost" } else { host_raw.as_str() };
        Uri::builder().scheme(scheme).authority(authority).path_and_query(pq).build()
    } else {
        Ok(Uri::from(pq))
    };
    let Ok(uri) = uri else { return simple(StatusCode::BAD_REQUEST, BAD_REQUEST) };

    let request_id = match parts.headers.get(&X_REQUEST_ID) {
        Some(v) => v.clone(),
        None => HeaderValue::from_bytes(&new_request_id()).unwrap_or(HeaderValue::from_static("0")),
    };
    ctx.request_id = Some(request_id.clone());
    {
        let h = &mut parts.headers;
        strip_hop(h, upgrade.is_some());
        let te_trailers = h.get(header::TE).is_some_and(|v| lists(v.as_bytes(), "trailers"));
        h.remove(header::TE);
        if te_trailers {
            h.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        if upgrade.is_some() {
            h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        if h2 {
            h.remove(header::HOST);
        } else if let Ok(v) = HeaderValue::from_str(&host_raw)
            && !host_raw.is_empty()
        {
            h.insert(header::HOST, v);
        }
        proxy_headers(ci, &host_raw, request_id.as_bytes(), &mut |k, v| {
            if let Ok(v) = HeaderValue::from_bytes(v) {
                h.insert(k.clone(), v);
            }
        });
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
    if let (Some(o), Some(c)) = (cors_origin, &st.cors) {
        for (k, v) in cors_headers(c, o, false) {
            rp.headers.insert(k, v);
        }
    }
    if assign_cookie
        && let Some(c) = affinity_set_cookie(&route, &addr, tls)
        && let Ok(v) = HeaderValue::from_str(&c)
    {
        rp.headers.append(header::SET_COOKIE, v);
    }
    // An HTTP/1 connection goes back to the pool once the body has been read.
    let key = PoolKey { addr, tls: matches!(protocol, BackendProtocol::Https | BackendProtocol::Grpcs) };
    let ret = match sender {
        Sender::H1(s) if !switching => Some(PoolReturn { worker: w.clone(), key, sender: s }),
        _ => None,
    };
    Response::from_parts(rp, RespBody::Upstream(UpBody { inner: rbody, ret, done: None }))
}

/// What the access log line takes from the request before it is consumed.
pub(crate) struct LogIn {
    pub(crate) host: String,
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) protocol: &'static str,
    pub(crate) user_agent: String,
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

    pub(crate) fn line(self, ci: &ConnInfo, ctx: &Ctx, status: u16, bytes: u64, took: Duration) -> String {
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
        let _ = write!(l, ",\"protocol\":\"{}\",\"status\":{}", self.protocol, status);
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
