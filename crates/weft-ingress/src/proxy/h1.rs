//! HTTP/1.x client connections (plain, and TLS without ALPN `h2`), served by hand.
//!
//! Why not hyper: with one worker, hyper's server and client dispatch (a task and channels
//! per upstream connection, `HeaderMap`s built and dropped per message, boxed futures) cost
//! about 1.4× nginx's CPU per proxied request for the same syscalls. Here a request head is
//! parsed with `httparse` in the connection's own buffer, decided by [`decide`] (the same
//! function the hyper path uses), and written as bytes to a pooled keep-alive connection
//! taken from the worker's plain list: no task, lock wait or channel per request.
//!
//! What it does: Content-Length and chunked bodies both ways (chunks validated and passed
//! on as framed), bodies until close from endpoints, pipelining, HTTP/1.0 clients (sent on as
//! HTTP/1.0), `Expect: 100-continue` (answered here, as nginx does), Upgrade (a 101 splices
//! the two sockets), retries on connect failure and on a pooled connection found closed,
//! and strict framing on both sides (request smuggling: anything ambiguous is refused).
//! What it does not do: HTTP/2 and gRPC (hyper's path, by ALPN or the h2c preface; a gRPC
//! route's HTTP/1 request hands the connection over to it), chunk
//! extensions or trailers interpreted (passed through), transfer codings other than
//! `chunked` (501), re-chunking a chunked answer for an HTTP/1.0 client (502).

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderValue;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::ConnInfo;
use super::decide::*;
use super::handler::{Ctx, LogIn};
use super::metrics::method_index_str;
use super::upstream::{ConnectError, PoolKey, RawConn, Worker};
use crate::{BackendProtocol, Balance, Route};

/// Room for header fields in one parse (the configured maximum is capped by this).
const MAX_HEADERS: usize = 256;
/// The largest response head taken from an endpoint.
const MAX_RESPONSE_HEAD: usize = 64 << 10;
/// The longest chunk-size line (with extensions) and trailer section accepted.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 << 10;
const READ_SIZE: usize = 16 << 10;

/// A body's framing.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Framing {
    Length(u64),
    Chunked,
    /// Until the endpoint closes (responses only).
    Close,
}

/// What a request head turned into, owning everything needed after the head is released.
struct Prepared {
    head_len: usize,
    http10: bool,
    /// The client lets the connection stay open after this exchange.
    keep_alive: bool,
    method: u8,
    is_head: bool,
    framing: Framing,
    expect_continue: bool,
    upgrade: bool,
    log: Option<LogIn>,
    route: Option<Arc<Route>>,
    canary: u8,
    action: Action,
}

enum Action {
    /// Answered here; `close`: the connection ends after it (a body was not read, or the
    /// request was malformed).
    Answer(Answer, bool),
    Forward(Fwd),
    /// A gRPC backend: the connection goes to the hyper path, which sends the request as
    /// HTTP/2 (see [`Handoff`]).
    Grpc,
}

/// A connection handed to the hyper path: its stream and the bytes read and not yet used
/// (the gRPC request's head first).
pub(crate) type Handoff<S> = (S, Vec<u8>);

/// A request for an endpoint: its head is in the connection's `out` buffer.
struct Fwd {
    affinity: Option<String>,
    cors_origin: Option<HeaderValue>,
    max_body: u64,
    request_id: HeaderValue,
}

/// The client side of a connection: its stream and what was read and not yet used.
struct Client<S> {
    io: S,
    buf: Vec<u8>,
    pos: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    fn avail(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
        if self.pos >= self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
    }

    /// Reads more; `Ok(0)`: the client closed.
    async fn fill(&mut self) -> io::Result<usize> {
        if self.pos > 0 && self.buf.capacity() - self.buf.len() < READ_SIZE / 2 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.reserve(READ_SIZE);
        self.io.read_buf(&mut self.buf).await
    }

    async fn send(&mut self, b: &[u8]) -> io::Result<()> {
        self.io.write_all(b).await?;
        self.io.flush().await
    }
}

/// `f`, failed with `TimedOut` if it waits longer than `d`. Most writes (and reads of what
/// has already come) finish at once: the timer is armed only if `f` has to wait, which spares
/// a timer entry, its removal and a clock read on most calls.
async fn timed<T>(d: Duration, f: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    let mut f = std::pin::pin!(f);
    if let std::task::Poll::Ready(r) = std::future::poll_fn(|cx| std::task::Poll::Ready(f.as_mut().poll(cx))).await {
        return r;
    }
    match tokio::time::timeout(d, f).await {
        Ok(r) => r,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

/// Serves one HTTP/1.x client connection until it ends, or until a request for a gRPC
/// backend, when the connection is handed back to be served by hyper.
pub(crate) async fn serve<S>(io: S, ci: Arc<ConnInfo>, w: Arc<Worker>) -> Option<Handoff<S>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut c = Client { io, buf: Vec::with_capacity(READ_SIZE), pos: 0 };
    let mut out: Vec<u8> = Vec::with_capacity(4096);
    let limits = &w.shared.limits;
    let max_headers = limits.max_headers.clamp(1, MAX_HEADERS);
    let max_head = limits.max_header_bytes.max(8192);
    loop {
        // The head: parsed where it was read; what is needed later is owned by `Prepared`.
        let deadline = tokio::time::Instant::now() + limits.header_read_timeout;
        let mut table = None;
        let p = loop {
            let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut []);
            let parsed = req.parse_with_uninit_headers(c.avail(), &mut slots[..max_headers]);
            match parsed {
                Ok(httparse::Status::Complete(n)) => {
                    out.clear();
                    let t = table.insert(w.shared.table.load_full());
                    break Ok(prepare(&req, n, &c.buf[c.pos..c.pos + n], &ci, &w, t, &mut out));
                }
                Ok(httparse::Status::Partial) if c.avail().len() >= max_head => break Err(431),
                Ok(httparse::Status::Partial) => {}
                Err(httparse::Error::TooManyHeaders) => break Err(431),
                Err(_) => break Err(400),
            }
            match tokio::time::timeout_at(deadline, c.fill()).await {
                Ok(Ok(n)) if n > 0 => {}
                // Closed, failed or too slow (slowloris, or idle between requests).
                _ => return None,
            }
        };
        let start = Instant::now();
        let (p, Some(table)) = (
            match p {
                Ok(p) => p,
                Err(code) => {
                    // Malformed or oversized: answered, and the connection ends.
                    let body = if code == 400 { BAD_REQUEST } else { "" };
                    let _ = write_answer(&mut c, &mut out, Answer::Simple(code, body), None, true, false, true).await;
                    finish(&w, &ci, &Ctx::new(), 9, code, 0, start, None);
                    return None;
                }
            },
            table,
        ) else {
            return None;
        };
        if matches!(p.action, Action::Grpc) {
            let rest = c.avail().to_vec();
            return Some((c.io, rest));
        }
        c.consume(p.head_len);
        let mut ctx = Ctx::new();
        ctx.route = p.route.clone();
        ctx.canary = p.canary;
        let (status, sent, keep) = match p.action {
            Action::Grpc => return None,
            Action::Answer(a, close) => {
                let code = answer_code(&a);
                let close = close || !p.keep_alive;
                let ok = write_answer(&mut c, &mut out, a, p.route.as_deref(), close, p.http10, !p.is_head).await;
                (code, 0, ok.is_ok() && !close)
            }
            Action::Forward(ref f) => {
                let r = forward(&mut c, &mut out, &p, f, &ci, &w, &table, &mut ctx).await;
                match r {
                    Done::Kept(code, n) => (code, n, true),
                    Done::Close(code, n) => (code, n, false),
                    Done::Tunnel(code) => {
                        finish(&w, &ci, &ctx, p.method, code, 0, start, p.log);
                        return None;
                    }
                }
            }
        };
        finish(&w, &ci, &ctx, p.method, status, sent, start, p.log);
        if !keep {
            let _ = c.io.shutdown().await;
            return None;
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn finish(
    w: &Worker,
    ci: &ConnInfo,
    ctx: &Ctx,
    method: u8,
    status: u16,
    bytes: u64,
    start: Instant,
    log: Option<LogIn>,
) {
    let took = start.elapsed();
    w.stats.record(ctx.route.as_ref(), ctx.canary, method, status, took, ctx.upstream_time);
    if let (Some(tx), Some(l)) = (&w.log, log) {
        let _ = tx.send(l.line(ci, ctx, status, bytes, took));
    }
}

fn answer_code(a: &Answer) -> u16 {
    match a {
        Answer::Simple(c, _) | Answer::Redirect(c, _) => *c,
        Answer::Preflight(_) => 204,
    }
}

fn reason(code: u16) -> &'static str {
    http::StatusCode::from_u16(code).ok().and_then(|s| s.canonical_reason()).unwrap_or("")
}

/// `date: ...`, remade once a second per thread.
fn push_date(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((0, String::new())) };
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != now || d.1.is_empty() {
            let ts = jiff::Timestamp::from_second(now as i64).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
            d.1 = ts.strftime("%a, %d %b %Y %H:%M:%S GMT").to_string();
            d.0 = now;
        }
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(d.1.as_bytes());
        out.extend_from_slice(b"\r\n");
    });
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut b = [0u8; 20];
    let mut i = b.len();
    loop {
        i -= 1;
        b[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&b[i..]);
}

/// Writes an answer of the proxy's own.
async fn write_answer<S: AsyncRead + AsyncWrite + Unpin>(
    c: &mut Client<S>,
    out: &mut Vec<u8>,
    a: Answer,
    route: Option<&Route>,
    close: bool,
    http10: bool,
    with_body: bool,
) -> io::Result<()> {
    out.clear();
    let code = answer_code(&a);
    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(out, code as u64);
    out.push(b' ');
    out.extend_from_slice(reason(code).as_bytes());
    out.extend_from_slice(b"\r\n");
    push_header(out, b"server", SERVER.as_bytes());
    push_date(out);
    let body = match &a {
        Answer::Simple(_, body) => *body,
        Answer::Redirect(_, location) => {
            push_header(out, b"location", location.as_bytes());
            ""
        }
        Answer::Preflight(origin) => {
            if let (Some(o), Some(cors)) = (origin, route.and_then(|r| r.settings.cors.as_ref())) {
                for (k, v) in cors_headers(cors, o.clone(), true) {
                    if k != http::header::CONTENT_LENGTH {
                        push_header(out, k.as_str().as_bytes(), v.as_bytes());
                    }
                }
            }
            ""
        }
    };
    if !body.is_empty() {
        push_header(out, b"content-type", b"text/html");
    }
    if code != 204 && code != 304 {
        out.extend_from_slice(b"content-length: ");
        push_u64(out, body.len() as u64);
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if with_body {
        out.extend_from_slice(body.as_bytes());
    }
    c.send(out).await
}

/// Whether a header name is one of this hop's only (RFC 9110 7.6.1), or listed in Connection.
fn hop_by_hop(name: &str, connection: &[&[u8]]) -> bool {
    ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "proxy-authenticate", "proxy-authorization"]
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
        || connection.iter().any(|v| lists(v, name))
}

/// A Content-Length: digits only, every copy the same; `Err`: refuse the message.
fn content_length(headers: &[httparse::Header<'_>]) -> Result<Option<u64>, ()> {
    let mut len = None;
    for h in headers.iter().filter(|h| h.name.eq_ignore_ascii_case("content-length")) {
        let v = h.value;
        if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
            return Err(());
        }
        let n = v.iter().fold(0u64, |n, d| n * 10 + (d - b'0') as u64);
        if len.is_some_and(|l| l != n) {
            return Err(());
        }
        len = Some(n);
    }
    Ok(len)
}

/// Transfer-Encoding: `Ok(None)` without one, `Ok(Some(()))` for exactly `chunked`,
/// `Err(501)` for other codings ending in chunked, `Err(400)` otherwise.
fn transfer_encoding(headers: &[httparse::Header<'_>]) -> Result<bool, u16> {
    let mut te = headers.iter().filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"));
    let Some(first) = te.next() else { return Ok(false) };
    if te.next().is_some() {
        return Err(400);
    }
    let v = first.value.trim_ascii();
    if v.eq_ignore_ascii_case(b"chunked") {
        return Ok(true);
    }
    let last = v.rsplit(|b| *b == b',').next().unwrap_or(b"").trim_ascii();
    if last.eq_ignore_ascii_case(b"chunked") { Err(501) } else { Err(400) }
}

/// Every LF in a head must end a CRLF (bare LF and CR are refused).
fn crlf_only(head: &[u8]) -> bool {
    let mut prev = 0u8;
    for &b in head {
        if b == b'\n' && prev != b'\r' {
            return false;
        }
        if prev == b'\r' && b != b'\n' {
            return false;
        }
        if b == 0 {
            return false;
        }
        prev = b;
    }
    true
}

/// Turns a parsed request head into a decision and, to forward it, the endpoint's request
/// head in `out`.
fn prepare(
    req: &httparse::Request<'_, '_>,
    head_len: usize,
    raw: &[u8],
    ci: &ConnInfo,
    w: &Worker,
    table: &crate::RouteTable,
    out: &mut Vec<u8>,
) -> Prepared {
    let method_s = req.method.unwrap_or("");
    let http10 = req.version == Some(0);
    let headers: &[httparse::Header<'_>] = req.headers;
    let mut p = Prepared {
        head_len,
        http10,
        keep_alive: false,
        method: method_index_str(method_s),
        is_head: method_s == "HEAD",
        framing: Framing::Length(0),
        expect_continue: false,
        upgrade: false,
        log: None,
        route: None,
        canary: super::metrics::MAIN,
        action: Action::Answer(Answer::Simple(400, BAD_REQUEST), true),
    };
    let target = req.path.unwrap_or("");
    let mut connection: [&[u8]; 8] = [b""; 8];
    let mut n_conn = 0;
    for h in headers.iter().filter(|h| h.name.eq_ignore_ascii_case("connection")) {
        if n_conn == connection.len() {
            return p;
        }
        connection[n_conn] = h.value;
        n_conn += 1;
    }
    let connection = &connection[..n_conn];
    let conn_has = |t: &str| connection.iter().any(|v| lists(v, t));
    p.keep_alive = if http10 { conn_has("keep-alive") } else { !conn_has("close") };
    if w.log.is_some() {
        let host = headers.iter().find(|h| h.name.eq_ignore_ascii_case("host")).map(|h| h.value).unwrap_or(b"");
        let ua = headers.iter().find(|h| h.name.eq_ignore_ascii_case("user-agent")).map(|h| h.value).unwrap_or(b"");
        p.log = Some(LogIn {
            host: String::from_utf8_lossy(host).into_owned(),
            method: method_s.to_string(),
            path: target.to_string(),
            protocol: if http10 { "HTTP/1.0" } else { "HTTP/1.1" },
            user_agent: String::from_utf8_lossy(ua).into_owned(),
        });
    }
    if !crlf_only(raw) {
        return p;
    }
    // Framing (request smuggling: both, several differing lengths or an unknown coding are
    // refused, never guessed at).
    let cl = match content_length(headers) {
        Ok(l) => l,
        Err(()) => return p,
    };
    let chunked = match transfer_encoding(headers) {
        Ok(c) => c,
        Err(code) => {
            let body = if code == 400 { BAD_REQUEST } else { "" };
            p.action = Action::Answer(Answer::Simple(code, body), true);
            return p;
        }
    };
    if chunked && (cl.is_some() || http10) {
        return p;
    }
    p.framing = if chunked { Framing::Chunked } else { Framing::Length(cl.unwrap_or(0)) };
    let has_body = p.framing != Framing::Length(0);

    // The target: origin-form, or absolute-form (its authority is the host).
    if method_s == "CONNECT" {
        p.action = Action::Answer(Answer::Simple(405, ""), true);
        return p;
    }
    let (authority, pq) = if target.starts_with('/') {
        (None, target)
    } else if let Some(rest) =
        target.strip_prefix("http://").or_else(|| target.strip_prefix("https://")).filter(|_| target.is_ascii())
    {
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let auth = &rest[..end];
        let auth = auth.rsplit_once('@').map_or(auth, |(_, h)| h);
        if auth.is_empty() {
            return p;
        }
        let pq = &rest[end..];
        (Some(auth), if pq.is_empty() { "/" } else { pq })
    } else {
        return p;
    };
    if !pq.is_ascii() || pq.contains('#') {
        return p;
    }
    // An absolute-form target without a path ("http://h?q") gets "/" before the query.
    let pq_owned;
    let pq = if pq.starts_with('?') {
        pq_owned = format!("/{pq}");
        pq_owned.as_str()
    } else {
        pq
    };
    let (path, query) = match pq.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (pq, None),
    };
    let head = Head {
        method: method_s,
        authority,
        path,
        query,
        http10,
        body_at_least: cl.unwrap_or(0),
        headers: Headers::Raw(headers),
    };
    let d = decide(table, &head, ci, w.shared.https_port);
    p.route = d.route.clone();
    p.canary = d.canary;
    let fwd = match d.outcome {
        Ok(f) => f,
        Err(a) => {
            // An unread body ends the connection (it is not worth reading to stay in step).
            p.action = Action::Answer(a, has_body);
            return p;
        }
    };
    let Some(backend) = d.route.as_deref().and_then(|r| backend_of(r, d.canary)) else { return p };
    if matches!(backend.protocol, BackendProtocol::Grpc | BackendProtocol::Grpcs) {
        // nginx's grpc_pass sends an HTTP/1.x client's request on as HTTP/2 (its grpc module
        // makes HTTP/2 frames of any request) and the answer back as HTTP/1.1, trailers in the
        // last chunk; the hyper path does the same, so the connection goes there.
        p.action = Action::Grpc;
        return p;
    }
    let expect = headers.iter().find(|h| h.name.eq_ignore_ascii_case("expect")).map(|h| h.value);
    if let Some(e) = expect {
        if !e.eq_ignore_ascii_case(b"100-continue") {
            p.action = Action::Answer(Answer::Simple(417, ""), true);
            return p;
        }
        p.expect_continue = has_body && !http10;
    }
    p.upgrade = !http10 && conn_has("upgrade") && headers.iter().any(|h| h.name.eq_ignore_ascii_case("upgrade"));

    // The endpoint's request head.
    out.extend_from_slice(method_s.as_bytes());
    out.push(b' ');
    out.extend_from_slice(fwd.path_and_query.as_deref().unwrap_or(pq).as_bytes());
    out.extend_from_slice(if http10 { b" HTTP/1.0\r\n" } else { b" HTTP/1.1\r\n" });
    if !fwd.host_raw.is_empty() {
        push_header(out, b"host", fwd.host_raw.as_bytes());
    }
    let mut te_trailers = false;
    let mut client_id: Option<&[u8]> = None;
    for h in headers {
        let n = h.name;
        if n.eq_ignore_ascii_case("upgrade") {
            if p.upgrade {
                push_header(out, b"upgrade", h.value);
            }
            continue;
        }
        if hop_by_hop(n, connection) {
            continue;
        }
        if n.eq_ignore_ascii_case("te") {
            te_trailers |= lists(h.value, "trailers");
            continue;
        }
        if n.eq_ignore_ascii_case("x-request-id") {
            client_id.get_or_insert(h.value);
            continue;
        }
        if n.eq_ignore_ascii_case("content-length")
            || n.eq_ignore_ascii_case("expect")
            || SET_BY_PROXY.iter().any(|s| n.eq_ignore_ascii_case(s))
        {
            continue;
        }
        push_header(out, n.as_bytes(), h.value);
    }
    if te_trailers {
        out.extend_from_slice(b"te: trailers\r\n");
    }
    if p.upgrade {
        out.extend_from_slice(b"connection: upgrade\r\n");
    }
    match p.framing {
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Length(n) if n > 0 || cl.is_some() => {
            out.extend_from_slice(b"content-length: ");
            push_u64(out, n);
            out.extend_from_slice(b"\r\n");
        }
        _ => {}
    }
    let fresh_id;
    let id: &[u8] = match client_id {
        Some(v) => v,
        None => {
            fresh_id = new_request_id();
            &fresh_id
        }
    };
    proxy_headers(ci, fwd.host_raw, id, &mut |k, v| push_header(out, k.as_str().as_bytes(), v));
    out.extend_from_slice(b"\r\n");
    let request_id = HeaderValue::from_bytes(id).unwrap_or(HeaderValue::from_static(""));
    p.action = Action::Forward(Fwd {
        affinity: fwd.affinity.map(str::to_string),
        cors_origin: fwd.cors_origin,
        max_body: fwd.max_body,
        request_id,
    });
    p
}

/// How a forwarded exchange ended: the status sent and the body bytes.
enum Done {
    /// The client connection may carry another request.
    Kept(u16, u64),
    Close(u16, u64),
    /// Upgraded; the tunnel has ended.
    Tunnel(u16),
}

/// A chunked body's framing, checked byte by byte while the bytes pass through as they are.
#[derive(Default)]
struct Chunked {
    state: CState,
    size: u64,
    digits: u32,
    line: usize,
    trailers: usize,
    /// Data bytes seen (for the body limit).
    data: u64,
}

#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
enum CState {
    #[default]
    Size,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

impl Chunked {
    /// Checks `b`; returns how many bytes belong to the body (all of `b` unless it ended).
    fn feed(&mut self, b: &[u8]) -> Result<usize, ()> {
        let mut i = 0;
        while i < b.len() {
            let c = b[i];
            match self.state {
                CState::Size => {
                    self.line += 1;
                    if let Some(d) = (c as char).to_digit(16) {
                        self.digits += 1;
                        if self.digits > 15 {
                            return Err(());
                        }
                        self.size = self.size << 4 | d as u64;
                    } else if self.digits == 0 {
                        return Err(());
                    } else if c == b';' {
                        self.state = CState::Ext;
                    } else if c == b'\r' {
                        self.state = CState::SizeLf;
                    } else {
                        return Err(());
                    }
                }
                CState::Ext => {
                    self.line += 1;
                    if self.line > MAX_CHUNK_LINE || (c < 0x20 && c != b'\t' && c != b'\r') || c == 0x7f {
                        return Err(());
                    }
                    if c == b'\r' {
                        self.state = CState::SizeLf;
                    }
                }
                CState::SizeLf => {
                    if c != b'\n' {
                        return Err(());
                    }
                    self.state = if self.size == 0 { CState::TrailerStart } else { CState::Data };
                }
                CState::Data => {
                    let n = (self.size.min((b.len() - i) as u64)) as usize;
                    self.size -= n as u64;
                    self.data += n as u64;
                    i += n;
                    if self.size == 0 {
                        self.state = CState::DataCr;
                    }
                    continue;
                }
                CState::DataCr => {
                    if c != b'\r' {
                        return Err(());
                    }
                    self.state = CState::DataLf;
                }
                CState::DataLf => {
                    if c != b'\n' {
                        return Err(());
                    }
                    self.state = CState::Size;
                    self.digits = 0;
                    self.line = 0;
                    self.size = 0;
                }
                CState::TrailerStart | CState::Trailer => {
                    self.trailers += 1;
                    if self.trailers > MAX_TRAILERS {
                        return Err(());
                    }
                    if c == b'\r' {
                        self.state = if self.state == CState::TrailerStart { CState::EndLf } else { CState::TrailerLf };
                    } else if (c < 0x20 && c != b'\t') || c == 0x7f {
                        return Err(());
                    } else {
                        self.state = CState::Trailer;
                    }
                }
                CState::TrailerLf => {
                    if c != b'\n' {
                        return Err(());
                    }
                    self.state = CState::TrailerStart;
                }
                CState::EndLf => {
                    if c != b'\n' {
                        return Err(());
                    }
                    self.state = CState::Done;
                    return Ok(i + 1);
                }
                CState::Done => return Ok(i),
            }
            i += 1;
        }
        Ok(i)
    }

    fn done(&self) -> bool {
        self.state == CState::Done
    }
}

/// Why sending a request body stopped.
enum BodyErr {
    /// The client went away or sent a bad body: nothing to answer.
    Client,
    BadChunk,
    TooLarge,
    /// The endpoint failed.
    Upstream,
}

/// Sends the request to an endpoint and its answer to the client.
#[allow(clippy::too_many_arguments)]
async fn forward<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    c: &mut Client<S>,
    out: &mut Vec<u8>,
    p: &Prepared,
    f: &Fwd,
    ci: &ConnInfo,
    w: &Arc<Worker>,
    table: &Arc<crate::RouteTable>,
    ctx: &mut Ctx,
) -> Done {
    ctx.request_id = Some(f.request_id.clone());
    let close_with = |code| Done::Close(code, 0);
    let Some(route) = p.route.as_ref() else { return Done::Close(502, 0) };
    let Some(backend) = backend_of(route, p.canary) else {
        return Done::Close(502, 0);
    };
    let st = &*route.settings;
    let tls_up = backend.protocol == BackendProtocol::Https;
    if p.expect_continue && c.send(b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err() {
        return close_with(400);
    }

    // The body bytes already read go out with the head; a body that is all here can be sent
    // again on another connection.
    let mut chunked = Chunked::default();
    let mut left = match p.framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    let mut body_done = match p.framing {
        Framing::Length(n) => {
            let k = (n.min(c.avail().len() as u64)) as usize;
            out.extend_from_slice(&c.avail()[..k]);
            c.consume(k);
            left -= k as u64;
            left == 0
        }
        Framing::Chunked => {
            let Ok(k) = chunked.feed(c.avail()) else {
                return answer_and_close(c, out, Answer::Simple(400, BAD_REQUEST), p).await;
            };
            if chunked.data > f.max_body {
                return answer_and_close(c, out, Answer::Simple(413, TOO_LARGE), p).await;
            }
            out.extend_from_slice(&c.avail()[..k]);
            c.consume(k);
            chunked.done()
        }
        Framing::Close => true,
    };
    let replayable = body_done;

    let table_id = Arc::as_ptr(table) as usize;
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut attempts = 0u32;
    let mut stale = 0u32;
    let mut assign_cookie = false;
    let (addr, key, up, t0) = 'attempt: loop {
        let chosen = f.affinity.as_deref().and_then(|v| w.sticky(backend, v, &tried));
        let addr = match chosen {
            Some(a) => a,
            None => {
                assign_cookie = st.affinity.is_some();
                match w.choose(backend, st.balance, &tried, table_id) {
                    Some(a) => a,
                    None => return answer_and_close(c, out_fresh(out), Answer::Simple(502, BAD_GATEWAY), p).await,
                }
            }
        };
        ctx.upstream = Some(addr);
        let key = PoolKey { addr, tls: tls_up };
        let pooled = if stale < 2 { w.raw_pooled(key) } else { None };
        let was_pooled = pooled.is_some();
        let mut up = match pooled {
            Some(mut u) => {
                // A body that must stream cannot be sent again: make sure the idle connection
                // was not closed by the endpoint meanwhile.
                if !replayable && !alive(&mut u) {
                    stale += 1;
                    continue;
                }
                u
            }
            None => match w.raw_connect(key, st.connect_timeout).await {
                Ok(u) => u,
                Err(e) => {
                    w.eject(addr);
                    tried.push(addr);
                    attempts += 1;
                    if attempts < st.tries.max(1) {
                        continue;
                    }
                    let a = match e {
                        ConnectError::Timeout => Answer::Simple(504, TIMEOUT),
                        ConnectError::Failed => Answer::Simple(502, BAD_GATEWAY),
                    };
                    return answer_and_close_if(c, out_fresh(out), a, p, !body_done).await;
                }
            },
        };
        let t0 = Instant::now();
        let sent = timed(st.send_timeout, async {
            up.io.write_all(out).await?;
            up.io.flush().await
        })
        .await;
        if sent.is_err() {
            if was_pooled && replayable && stale < 3 {
                stale += 1;
                continue;
            }
            return answer_and_close_if(c, out_fresh(out), Answer::Simple(502, BAD_GATEWAY), p, !body_done).await;
        }
        // The rest of the body, as it comes.
        if !body_done {
            let r = stream_request_body(c, &mut up, p.framing, &mut left, &mut chunked, f.max_body, st, w).await;
            match r {
                Ok(()) => body_done = true,
                Err(BodyErr::Client) => return Done::Close(400, 0),
                Err(BodyErr::BadChunk) => {
                    return answer_and_close(c, out_fresh(out), Answer::Simple(400, BAD_REQUEST), p).await;
                }
                Err(BodyErr::TooLarge) => {
                    return answer_and_close(c, out_fresh(out), Answer::Simple(413, TOO_LARGE), p).await;
                }
                Err(BodyErr::Upstream) => {
                    return answer_and_close(c, out_fresh(out), Answer::Simple(502, BAD_GATEWAY), p).await;
                }
            }
        }
        // The response head.
        loop {
            let r = timed(st.read_timeout, read_more(&mut up)).await;
            match r {
                Ok(n) if n > 0 => {
                    if head_complete(&up.buf) {
                        break 'attempt (addr, key, up, t0);
                    }
                    if up.buf.len() > MAX_RESPONSE_HEAD {
                        return answer_and_close_if(c, out_fresh(out), Answer::Simple(502, BAD_GATEWAY), p, false)
                            .await;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    return answer_and_close_if(c, out_fresh(out), Answer::Simple(504, TIMEOUT), p, false).await;
                }
                _ => {
                    // Closed before any answer: an idle connection the endpoint had closed.
                    if up.buf.is_empty() && was_pooled && replayable && stale < 3 {
                        stale += 1;
                        continue 'attempt;
                    }
                    return answer_and_close_if(c, out_fresh(out), Answer::Simple(502, BAD_GATEWAY), p, false).await;
                }
            }
        }
    };
    respond(c, out, p, f, ci, w, route, addr, key, up, t0, assign_cookie, ctx).await
}

fn out_fresh(out: &mut Vec<u8>) -> &mut Vec<u8> {
    out.clear();
    out
}

async fn answer_and_close<S: AsyncRead + AsyncWrite + Unpin>(
    c: &mut Client<S>,
    out: &mut Vec<u8>,
    a: Answer,
    p: &Prepared,
) -> Done {
    answer_and_close_if(c, out, a, p, true).await
}

/// Answers an error; the connection stays open only if asked and the client wants it.
async fn answer_and_close_if<S: AsyncRead + AsyncWrite + Unpin>(
    c: &mut Client<S>,
    out: &mut Vec<u8>,
    a: Answer,
    p: &Prepared,
    close: bool,
) -> Done {
    let code = answer_code(&a);
    let close = close || !p.keep_alive;
    match write_answer(c, out, a, p.route.as_deref(), close, p.http10, !p.is_head).await {
        Ok(()) if !close => Done::Kept(code, 0),
        _ => Done::Close(code, 0),
    }
}

/// Whether an idle connection is still open (nothing to read, no end of stream).
fn alive(u: &mut RawConn) -> bool {
    let mut one = [0u8; 1];
    let mut rb = tokio::io::ReadBuf::new(&mut one);
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    matches!(std::pin::Pin::new(&mut u.io).poll_read(&mut cx, &mut rb), std::task::Poll::Pending)
}

async fn read_more(u: &mut RawConn) -> io::Result<usize> {
    u.buf.reserve(READ_SIZE);
    u.io.read_buf(&mut u.buf).await
}

fn head_complete(b: &[u8]) -> bool {
    b.windows(4).any(|w| w == b"\r\n\r\n") || b.windows(2).any(|w| w == b"\n\n")
}

#[allow(clippy::too_many_arguments)]
async fn stream_request_body<S: AsyncRead + AsyncWrite + Unpin>(
    c: &mut Client<S>,
    up: &mut RawConn,
    framing: Framing,
    left: &mut u64,
    chunked: &mut Chunked,
    max: u64,
    st: &crate::Settings,
    w: &Worker,
) -> Result<(), BodyErr> {
    let read_for = w.shared.limits.header_read_timeout;
    loop {
        match timed(read_for, c.fill()).await {
            Ok(n) if n > 0 => {}
            _ => return Err(BodyErr::Client),
        }
        let k = match framing {
            Framing::Length(_) => {
                let k = ((*left).min(c.avail().len() as u64)) as usize;
                *left -= k as u64;
                k
            }
            _ => {
                let k = chunked.feed(c.avail()).map_err(|_| BodyErr::BadChunk)?;
                if chunked.data > max {
                    return Err(BodyErr::TooLarge);
                }
                k
            }
        };
        let r = timed(st.send_timeout, async {
            up.io.write_all(&c.buf[c.pos..c.pos + k]).await?;
            up.io.flush().await
        })
        .await;
        c.consume(k);
        if r.is_err() {
            return Err(BodyErr::Upstream);
        }
        let done = match framing {
            Framing::Length(_) => *left == 0,
            _ => chunked.done(),
        };
        if done {
            return Ok(());
        }
    }
}

/// Reads the endpoint's answer (its head is in `up.buf`) and sends it on.
#[allow(clippy::too_many_arguments)]
async fn respond<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    c: &mut Client<S>,
    out: &mut Vec<u8>,
    p: &Prepared,
    f: &Fwd,
    ci: &ConnInfo,
    w: &Arc<Worker>,
    route: &Arc<Route>,
    addr: SocketAddr,
    key: PoolKey,
    mut up: RawConn,
    t0: Instant,
    assign_cookie: bool,
    ctx: &mut Ctx,
) -> Done {
    let st = &*route.settings;
    // Interim answers (100 Continue and the like) are dropped: the client was answered 100
    // by the proxy already.
    let (head_len, status, framing, up_keep) = loop {
        let parsed = {
            let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut []);
            match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, &up.buf, &mut slots) {
                Ok(httparse::Status::Complete(n)) => {
                    out.clear();
                    response_head(&resp, n, &up.buf[..n], p, f, ci, route, addr, assign_cookie, out)
                }
                Ok(httparse::Status::Partial) => Err(true),
                Err(_) => Err(false),
            }
        };
        match parsed {
            Ok((n, status, _, _)) if (100..200).contains(&status) && status != 101 => {
                up.buf.drain(..n);
                if head_complete(&up.buf) {
                    continue;
                }
                let r = timed(st.read_timeout, read_more(&mut up)).await;
                if !matches!(r, Ok(n) if n > 0) {
                    return answer_and_close_if(c, out_fresh(out), Answer::Simple(502, BAD_GATEWAY), p, false).await;
                }
            }
            Ok(x) => break x,
            Err(true) if up.buf.len() <= MAX_RESPONSE_HEAD => {
                let r = timed(st.read_timeout, read_more(&mut up)).await;
                if !matches!(r, Ok(n) if n > 0) {
                    return answer_and_close_if(c, out_fresh(out), Answer::Simple(502, BAD_GATEWAY), p, false).await;
                }
            }
            // A head that is no HTTP, or badly framed: the connection is dropped.
            Err(_) => {
                return answer_and_close_if(c, out_fresh(out), Answer::Simple(502, BAD_GATEWAY), p, false).await;
            }
        }
    };
    let up_took = t0.elapsed();
    ctx.upstream_status = status;
    ctx.upstream_time = Some(up_took);
    if st.balance == Balance::Ewma {
        w.observe(addr, up_took);
    }
    let mut rest_start = head_len;

    if status == 101 {
        if !p.upgrade {
            return answer_and_close_if(c, out_fresh(out), Answer::Simple(502, BAD_GATEWAY), p, false).await;
        }
        // The tunnel: what either side sent early goes first, then bytes both ways.
        out.extend_from_slice(&up.buf[rest_start..]);
        if c.send(out).await.is_err() {
            return Done::Tunnel(101);
        }
        if !c.avail().is_empty() {
            let early = c.avail().to_vec();
            c.consume(early.len());
            if up.io.write_all(&early).await.is_err() {
                return Done::Tunnel(101);
            }
        }
        let _ = tokio::io::copy_bidirectional(&mut c.io, &mut up.io).await;
        return Done::Tunnel(101);
    }

    let client_keep = p.keep_alive && framing != Framing::Close;
    // The head and what is here of the body go in one write.
    let mut sent: u64 = 0;
    let mut chunked = Chunked::default();
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    let mut ended;
    {
        let here = &up.buf[rest_start..];
        let k = match framing {
            Framing::Length(_) => (left.min(here.len() as u64)) as usize,
            Framing::Chunked => match chunked.feed(here) {
                Ok(k) => k,
                Err(()) => {
                    return answer_and_close_if(c, out_fresh(out), Answer::Simple(502, BAD_GATEWAY), p, false).await;
                }
            },
            Framing::Close => here.len(),
        };
        if !p.is_head {
            out.extend_from_slice(&here[..k]);
        }
        sent += k as u64;
        left -= (k as u64).min(left);
        rest_start += k;
        ended = match framing {
            Framing::Length(_) => left == 0,
            Framing::Chunked => chunked.done(),
            Framing::Close => false,
        };
    }
    if c.send(out).await.is_err() {
        return Done::Close(status, sent);
    }
    let mut clean = true;
    while !ended {
        up.buf.clear();
        rest_start = 0;
        let n = match timed(st.read_timeout, read_more(&mut up)).await {
            Ok(n) => n,
            Err(_) => {
                clean = false;
                break;
            }
        };
        if n == 0 {
            // The end of a body until close; else the endpoint broke off mid-body.
            clean = framing == Framing::Close;
            break;
        }
        let k = match framing {
            Framing::Length(_) => {
                let k = (left.min(n as u64)) as usize;
                left -= k as u64;
                ended = left == 0;
                k
            }
            Framing::Chunked => match chunked.feed(&up.buf) {
                Ok(k) => {
                    ended = chunked.done();
                    k
                }
                Err(()) => {
                    clean = false;
                    break;
                }
            },
            Framing::Close => n,
        };
        rest_start = k;
        sent += k as u64;
        if c.send(&up.buf[..k]).await.is_err() {
            return Done::Close(status, sent);
        }
    }
    if !clean {
        // The client has a head and part of a body: only closing tells it.
        return Done::Close(status, sent);
    }
    // Bytes after the answer: the endpoint is not in step; never reuse it.
    if up_keep && up.buf.len() == rest_start && !p.upgrade && !p.http10 {
        w.raw_put(key, up);
    }
    if client_keep { Done::Kept(status, sent) } else { Done::Close(status, sent) }
}

/// What an endpoint's response head says, with the client's head written to `out`:
/// `(head length, status, framing, reusable)`; `Err(false)`: refuse it.
#[allow(clippy::too_many_arguments)]
fn response_head(
    resp: &httparse::Response<'_, '_>,
    n: usize,
    raw: &[u8],
    p: &Prepared,
    f: &Fwd,
    ci: &ConnInfo,
    route: &Route,
    addr: SocketAddr,
    assign_cookie: bool,
    out: &mut Vec<u8>,
) -> Result<(usize, u16, Framing, bool), bool> {
    let status = resp.code.ok_or(false)?;
    if !(100..=999).contains(&status) || !crlf_only(raw) {
        return Err(false);
    }
    let headers: &[httparse::Header<'_>] = resp.headers;
    let mut connection: [&[u8]; 8] = [b""; 8];
    let mut n_conn = 0;
    for h in headers.iter().filter(|h| h.name.eq_ignore_ascii_case("connection")) {
        if n_conn == connection.len() {
            return Err(false);
        }
        connection[n_conn] = h.value;
        n_conn += 1;
    }
    let connection = &connection[..n_conn];
    let cl = content_length(headers).map_err(|_| false)?;
    let chunked = transfer_encoding(headers).map_err(|_| false)?;
    if chunked && cl.is_some() {
        return Err(false);
    }
    let no_body = p.is_head || status < 200 || status == 204 || status == 304;
    let framing = if no_body {
        Framing::Length(0)
    } else if chunked {
        Framing::Chunked
    } else if let Some(l) = cl {
        Framing::Length(l)
    } else {
        Framing::Close
    };
    if framing == Framing::Chunked && p.http10 {
        return Err(false);
    }
    if (100..200).contains(&status) && status != 101 {
        return Ok((n, status, framing, false));
    }
    let switching = status == 101;
    let up_keep = resp.version == Some(1) && !connection.iter().any(|v| lists(v, "close"));
    let client_keep = p.keep_alive && framing != Framing::Close;

    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(out, status as u64);
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let cors = match (&f.cors_origin, &route.settings.cors) {
        (Some(o), Some(c)) => cors_headers(c, o.clone(), false),
        _ => Vec::new(),
    };
    for h in headers {
        let name = h.name;
        if name.eq_ignore_ascii_case("upgrade") {
            if switching {
                push_header(out, b"upgrade", h.value);
            }
            continue;
        }
        if hop_by_hop(name, connection)
            || name.eq_ignore_ascii_case("server")
            || cors.iter().any(|(k, _)| name.eq_ignore_ascii_case(k.as_str()))
        {
            continue;
        }
        push_header(out, name.as_bytes(), h.value);
    }
    push_header(out, b"server", SERVER.as_bytes());
    for (k, v) in &cors {
        push_header(out, k.as_str().as_bytes(), v.as_bytes());
    }
    if assign_cookie && let Some(cookie) = affinity_set_cookie(route, &addr, ci.tls) {
        push_header(out, b"set-cookie", cookie.as_bytes());
    }
    if framing == Framing::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if switching {
        out.extend_from_slice(b"connection: upgrade\r\n");
    } else if !client_keep {
        out.extend_from_slice(b"connection: close\r\n");
    } else if p.http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok((n, status, framing, up_keep && framing != Framing::Close))
}
