//! The kubelet's gRPC health probe (`pkg/probe/grpc/grpc.go`): from the node's network namespace,
//! HTTP/2 cleartext with prior knowledge to the pod IP and `grpc.port`, one unary call of
//! `/grpc.health.v1.Health/Check` with `HealthCheckRequest{service}`, passed only when the call's
//! gRPC status is OK and the answer's `status` is SERVING. Failures read as the kubelet's, which
//! gets them from grpc-go: a connection that is not up (TCP and the server's HTTP/2 preface)
//! within the timeout is `timeout: failed to connect service ...` (grpc-go's blocking dial keeps
//! trying until then), a call cut by the timeout `timeout: health rpc did not complete within ...`.
//!
//! The whole probe, connecting included, is bounded by `timeoutSeconds`, and what a server sends
//! is bounded too (header lists, the message, frames, bytes in all): a hostile or broken server
//! makes a failed probe with a message, never a panic, a hang or unbounded memory.
//!
//! The protobuf here is two tiny messages (a string field out, an enum field back), encoded and
//! decoded by hand below: no prost or tonic for that.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::HeaderMap;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::netns;

/// The path of the health service's Check method.
const CHECK_PATH: &str = "/grpc.health.v1.Health/Check";
/// grpc-go's default largest message a client receives (4 MiB).
const MAX_MESSAGE: usize = 4 << 20;
/// At most this many bytes from the server in all, whatever it sends.
const MAX_READ: usize = 8 << 20;
/// At most this many body frames (empty DATA frames cost nothing else).
const MAX_FRAMES: usize = 100_000;
/// At most this many connection attempts (the deadline comes first at any real timeout).
const MAX_DIALS: usize = 1_000;
/// The header list a server may send, as hyper's default.
const MAX_HEADER_LIST: u32 = 16 << 10;

/// Runs the probe from the namespace `node_ns` (a thread of its own there, as httpGet's).
pub(crate) fn probe(addr: SocketAddr, service: String, timeout: Duration, node_ns: &Path) -> Result<(), String> {
    netns::in_netns(node_ns, move || check(addr, &service, timeout)).unwrap_or_else(|e| Err(format!("{e:#}")))
}

/// Runs the probe from this thread's namespace, on a current-thread runtime of its own (so every
/// socket is made here), all within `timeout`.
pub(crate) fn check(addr: SocketAddr, service: &str, timeout: Duration) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("error: failed to connect service at \"{addr}\": {e}"))?;
    let ready = Arc::new(AtomicBool::new(false));
    let r = rt.block_on(async {
        let deadline = Instant::now() + timeout;
        match tokio::time::timeout_at(deadline, call(addr, service, timeout, deadline, ready.clone())).await {
            Ok(r) => r,
            // Nothing from the server yet: grpc-go's dial was still waiting.
            Err(_) if !ready.load(Ordering::Relaxed) => Err(format!(
                "timeout: failed to connect service \"{addr}\" within {}: context deadline exceeded",
                go_duration(timeout)
            )),
            Err(_) => Err(Status::new(DEADLINE_EXCEEDED, "context deadline exceeded").kubelet(timeout)),
        }
    });
    // Nothing left behind: the connection's task goes with the runtime.
    rt.shutdown_background();
    match r {
        Ok(Serving::Status(1)) => Ok(()),
        Ok(Serving::Status(s)) => Err(format!("service unhealthy (responded with \"{}\")", serving_name(s))),
        Err(why) => Err(why),
    }
}

/// The answer of a call that completed with status OK.
enum Serving {
    /// `HealthCheckResponse.status`.
    Status(u64),
}

/// Connects (again, as grpc-go's blocking dial, until the server's preface comes) and makes the call.
async fn call(
    addr: SocketAddr,
    service: &str,
    timeout: Duration,
    deadline: Instant,
    ready: Arc<AtomicBool>,
) -> Result<Serving, String> {
    let mut backoff = Duration::from_millis(100);
    for _ in 0..MAX_DIALS {
        let budget = Arc::new(Budget { ready: ready.clone(), ..Budget::default() });
        match attempt(addr, service, deadline, budget.clone()).await {
            Ok(r) => return r.map_err(|s| s.kubelet(timeout)),
            Err(_) if ready.load(Ordering::Relaxed) => {}
            // Not connected: try again a little later (the deadline ends it).
            Err(_) => {
                tokio::time::sleep_until((Instant::now() + backoff).min(deadline)).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        }
        // The server spoke HTTP/2, then the call failed at the connection: grpc-go's Unavailable.
        let why = budget.error();
        return Err(Status::new(UNAVAILABLE, &why).kubelet(timeout));
    }
    Err(format!(
        "timeout: failed to connect service \"{addr}\" within {}: context deadline exceeded",
        go_duration(timeout)
    ))
}

/// The connection failed before the call completed (why is in its `Budget`).
struct Broken;

/// One connection and the call on it: `Err` when the connection failed (the call did not
/// complete), else the call's outcome.
async fn attempt(
    addr: SocketAddr,
    service: &str,
    deadline: Instant,
    budget: Arc<Budget>,
) -> Result<Result<Serving, Status>, Broken> {
    let fail = |b: &Budget, e: &dyn std::error::Error| {
        b.set_error(chain(e));
        Broken
    };
    let tcp = match tokio::net::TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => return Err(fail(&budget, &e)),
    };
    let _ = tcp.set_nodelay(true);
    let io = Metered { inner: tcp, budget: budget.clone(), head: Vec::new() };
    let (mut send, conn) = match hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .max_header_list_size(MAX_HEADER_LIST)
        .handshake::<_, Full<Bytes>>(TokioIo::new(io))
        .await
    {
        Ok(v) => v,
        Err(e) => return Err(fail(&budget, &e)),
    };
    let b = budget.clone();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            b.set_error(chain(&e));
        }
    });
    // grpc-timeout: what is left, in milliseconds (at most 8 digits).
    let left = deadline.saturating_duration_since(Instant::now()).as_millis().clamp(1, 99_999_999);
    let req = hyper::Request::post(format!("http://{addr}{CHECK_PATH}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("user-agent", "kube-probe/1.33")
        .header("grpc-timeout", format!("{left}m"))
        .body(Full::new(Bytes::from(grpc_frame(&encode_request(service)))));
    let Ok(req) = req else { return Ok(Err(Status::new(INTERNAL, "grpc: malformed request"))) };
    let resp = match send.send_request(req).await {
        Ok(r) => r,
        Err(e) => return Err(fail(&budget, &e)),
    };
    let (parts, mut body) = resp.into_parts();
    if let Some(st) = header_status(parts.status.as_u16(), &parts.headers) {
        return Ok(st.and_then(|()| Err(Status::new(INTERNAL, NO_MESSAGE))));
    }
    // The message, then the trailers.
    let mut data: Vec<u8> = Vec::new();
    for _ in 0..MAX_FRAMES {
        let frame = match body.frame().await {
            None => return Ok(Err(Status::new(INTERNAL, "server closed the stream without sending trailers"))),
            Some(Err(e)) => return Err(fail(&budget, &e)),
            Some(Ok(f)) => f,
        };
        let frame = match frame.into_data() {
            Ok(chunk) => {
                data.extend_from_slice(&chunk);
                if let Err(st) = message(&data, &parts.headers, false) {
                    return Ok(Err(st));
                }
                continue;
            }
            Err(frame) => frame,
        };
        let Ok(trailers) = frame.into_trailers() else { continue };
        let st = trailer_status(&trailers);
        return Ok(st.and_then(|()| match message(&data, &parts.headers, true)? {
            Some(m) => decode_response(m).map(Serving::Status),
            None => Err(Status::new(INTERNAL, NO_MESSAGE)),
        }));
    }
    Ok(Err(Status::new(INTERNAL, "grpc: too many frames")))
}

/// An error and its causes, as one line (at most a few deep).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    for _ in 0..4 {
        let Some(c) = cause else { break };
        out = format!("{out}: {c}");
        cause = c.source();
    }
    out
}

const NO_MESSAGE: &str = "cardinality violation: received no response message from non-streaming RPC";

// ---------------------------------------------------------------------------------------------
// gRPC status

const INTERNAL: u32 = 13;
const UNAVAILABLE: u32 = 14;
const UNIMPLEMENTED: u32 = 12;
const UNKNOWN: u32 = 2;
const DEADLINE_EXCEEDED: u32 = 4;

/// A call's non-OK gRPC status.
#[derive(Debug, PartialEq)]
pub(crate) struct Status {
    code: u32,
    message: String,
}

impl Status {
    fn new(code: u32, message: &str) -> Self {
        Status { code, message: message.to_string() }
    }

    /// The probe's failure as the kubelet words it for this status.
    pub(crate) fn kubelet(&self, timeout: Duration) -> String {
        match self.code {
            UNIMPLEMENTED => format!(
                "error: this server does not implement the grpc health protocol (grpc.health.v1.Health): {}",
                self.message
            ),
            DEADLINE_EXCEEDED => format!("timeout: health rpc did not complete within {}", go_duration(timeout)),
            _ => format!("error: health rpc probe failed: {self}"),
        }
    }
}

impl std::fmt::Display for Status {
    /// grpc-go's status error.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "rpc error: code = {} desc = {}", code_name(self.code), self.message)
    }
}

/// grpc-go's name of a status code.
fn code_name(code: u32) -> String {
    const NAMES: [&str; 17] = [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    NAMES.get(code as usize).map_or_else(|| format!("Code({code})"), |n| n.to_string())
}

/// What the response's headers settle: `Some` for a non-gRPC answer (grpc-go's mapping of the
/// HTTP status) or a trailers-only one (`grpc-status` here), `None` when a body follows.
fn header_status(http: u16, headers: &HeaderMap) -> Option<Result<(), Status>> {
    let ctype = headers.get("content-type").map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let grpc_ctype = ctype.as_deref().is_some_and(|c| {
        c == "application/grpc" || c.starts_with("application/grpc+") || c.starts_with("application/grpc;")
    });
    if http != 200 || !grpc_ctype {
        let mut errs = Vec::new();
        let mut code = INTERNAL;
        if http != 200 {
            code = match http {
                400 => INTERNAL,
                401 => 16,
                403 => 7,
                404 => UNIMPLEMENTED,
                429 | 502..=504 => UNAVAILABLE,
                _ => UNKNOWN,
            };
            let text = hyper::StatusCode::from_u16(http).ok().and_then(|s| s.canonical_reason()).unwrap_or("");
            errs.push(format!("unexpected HTTP status code received from server: {http} ({text})"));
        }
        match &ctype {
            Some(c) if !grpc_ctype => errs.push(format!("transport: received unexpected content-type {c:?}")),
            None => errs.push("transport: missing content-type field".into()),
            _ => {}
        }
        return Some(Err(Status { code, message: errs.join("; ") }));
    }
    headers.contains_key("grpc-status").then(|| trailer_status(headers))
}

/// The call's status from its trailers (or a trailers-only answer's headers).
fn trailer_status(t: &HeaderMap) -> Result<(), Status> {
    let message = t.get("grpc-message").map(|m| percent_decode(m.as_bytes())).unwrap_or_default();
    let Some(raw) = t.get("grpc-status") else { return Err(Status { code: UNKNOWN, message }) };
    let raw = String::from_utf8_lossy(raw.as_bytes());
    let code = match raw.parse::<i32>() {
        // grpc-go: codes.Code(uint32(code)).
        Ok(c) => c as u32,
        Err(e) => {
            let why = if matches!(e.kind(), std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow) {
                "value out of range"
            } else {
                "invalid syntax"
            };
            return Err(Status {
                code: INTERNAL,
                message: format!("transport: malformed grpc-status: strconv.ParseInt: parsing {raw:?}: {why}"),
            });
        }
    };
    if code == 0 { Ok(()) } else { Err(Status { code, message }) }
}

/// grpc-message's percent-encoding undone (invalid sequences are kept as they are).
fn percent_decode(b: &[u8]) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (b.get(i + 1).and_then(|&c| hex(c)), b.get(i + 2).and_then(|&c| hex(c)))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Messages

/// `HealthCheckRequest{service}`: field 1, length-delimited (nothing at all for "", as proto3).
pub(crate) fn encode_request(service: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(service.len() + 6);
    if !service.is_empty() {
        out.push(0x0a);
        let mut n = service.len() as u64;
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
        out.extend_from_slice(service.as_bytes());
    }
    out
}

/// A gRPC length-prefixed message: uncompressed, length big-endian.
pub(crate) fn grpc_frame(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + 5);
    out.push(0);
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(msg);
    out
}

/// The one message of a unary answer in the body so far: `Ok(None)` while it is incomplete,
/// an error as soon as it cannot be right (compressed, too large, a second message). With
/// `ended`, an incomplete message is an error.
fn message<'a>(data: &'a [u8], headers: &HeaderMap, ended: bool) -> Result<Option<&'a [u8]>, Status> {
    if data.is_empty() {
        return Ok(None);
    }
    let Some(prefix) = data.get(..5) else {
        return if ended { Err(Status::new(INTERNAL, "unexpected EOF")) } else { Ok(None) };
    };
    match prefix[0] {
        0 => {}
        1 => {
            return Err(match headers.get("grpc-encoding").map(|e| String::from_utf8_lossy(e.as_bytes())) {
                Some(enc) if enc != "identity" => Status {
                    code: UNIMPLEMENTED,
                    message: format!("grpc: Decompressor is not installed for grpc-encoding {enc:?}"),
                },
                _ => Status::new(INTERNAL, "grpc: compressed flag set with identity or empty encoding"),
            });
        }
        f => return Err(Status { code: INTERNAL, message: format!("grpc: received unexpected payload format {f}") }),
    }
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    if len > MAX_MESSAGE {
        return Err(Status {
            code: 8,
            message: format!("grpc: received message larger than max ({len} vs. {MAX_MESSAGE})"),
        });
    }
    let end = 5 + len;
    if data.len() > end {
        return Err(Status::new(
            INTERNAL,
            "cardinality violation: expected <EOF> for non server-streaming RPCs, but received another message",
        ));
    }
    if data.len() < end {
        return if ended { Err(Status::new(INTERNAL, "unexpected EOF")) } else { Ok(None) };
    }
    Ok(Some(&data[5..end]))
}

/// `HealthCheckResponse.status` (field 1, an enum varint; the last one counts, absent is 0),
/// other fields skipped by their wire type.
pub(crate) fn decode_response(mut b: &[u8]) -> Result<u64, Status> {
    let bad = || {
        Status::new(
            INTERNAL,
            "grpc: failed to unmarshal the received message: proto: cannot parse invalid wire-format data",
        )
    };
    let mut status = 0;
    // Every field takes at least one byte, so this many rounds are enough.
    for _ in 0..=b.len() {
        if b.is_empty() {
            return Ok(status);
        }
        let key = varint(&mut b).ok_or_else(bad)?;
        let (field, wire) = (key >> 3, key & 7);
        if field == 0 {
            return Err(bad());
        }
        match wire {
            0 => {
                let v = varint(&mut b).ok_or_else(bad)?;
                if field == 1 {
                    // An enum is an int32: the low 32 bits, sign and all.
                    status = v as u32 as u64;
                }
            }
            1 => b = b.get(8..).ok_or_else(bad)?,
            2 => {
                let n = usize::try_from(varint(&mut b).ok_or_else(bad)?).map_err(|_| bad())?;
                b = b.get(n..).ok_or_else(bad)?;
            }
            5 => b = b.get(4..).ok_or_else(bad)?,
            _ => return Err(bad()),
        }
    }
    Err(bad())
}

/// A protobuf varint off the front of `b` (at most 10 bytes).
fn varint(b: &mut &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let (&byte, rest) = b.split_first()?;
        *b = rest;
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The name of a `ServingStatus` as Go's protobuf prints it (a number it has no name for).
fn serving_name(s: u64) -> String {
    match s {
        0 => "UNKNOWN".into(),
        1 => "SERVING".into(),
        2 => "NOT_SERVING".into(),
        3 => "SERVICE_UNKNOWN".into(),
        n => (n as u32 as i32).to_string(),
    }
}

/// A duration as Go's `time.Duration` prints it (`1s`, `1m30s`, `1h0m0s`, `300ms`).
pub(crate) fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (s, frac) = (ms / 1000, ms % 1000);
    let sec = if frac == 0 {
        format!("{}", s % 60)
    } else {
        format!("{}.{}", s % 60, format!("{frac:03}").trim_end_matches('0'))
    };
    match (s / 3600, s % 3600 / 60) {
        (0, 0) => format!("{sec}s"),
        (0, m) => format!("{m}m{sec}s"),
        (h, m) => format!("{h}h{m}m{sec}s"),
    }
}

// ---------------------------------------------------------------------------------------------
// The connection

/// What one connection has seen: whether the server's HTTP/2 preface (a SETTINGS frame first)
/// came, how much it has sent, and the first error.
#[derive(Default)]
struct Budget {
    ready: Arc<AtomicBool>,
    read: std::sync::Mutex<(usize, Option<String>)>,
}

impl Budget {
    fn set_error(&self, e: String) {
        if let Ok(mut g) = self.read.lock()
            && g.1.is_none()
        {
            g.1 = Some(e);
        }
    }

    fn error(&self) -> String {
        self.read.lock().ok().and_then(|g| g.1.clone()).unwrap_or_else(|| "connection closed".into())
    }
}

/// The TCP stream, watched: it notes the server's preface and refuses more than `MAX_READ` bytes.
struct Metered {
    inner: tokio::net::TcpStream,
    budget: Arc<Budget>,
    /// The server's first 9 bytes (a frame header), until the preface is judged.
    head: Vec<u8>,
}

impl AsyncRead for Metered {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        let got = &buf.filled()[before..];
        if got.is_empty() {
            return r;
        }
        if this.head.len() < 9 {
            let take = (9 - this.head.len()).min(got.len());
            this.head.extend_from_slice(&got[..take]);
            // A SETTINGS frame (type 4) on stream 0, not an ACK: the server's preface.
            if let [_, _, _, 4, flags, s0, s1, s2, s3] = this.head[..]
                && flags & 1 == 0
                && u32::from_be_bytes([s0, s1, s2, s3]) & 0x7fff_ffff == 0
            {
                this.budget.ready.store(true, Ordering::Relaxed);
            }
        }
        let total = match this.budget.read.lock() {
            Ok(mut g) => {
                g.0 = g.0.saturating_add(got.len());
                g.0
            }
            Err(_) => MAX_READ + 1,
        };
        if total > MAX_READ {
            return Poll::Ready(Err(io::Error::other("the server sent too much")));
        }
        r
    }
}

impl AsyncWrite for Metered {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_is_field_1_as_a_string_in_a_length_prefixed_message() {
        assert_eq!(encode_request(""), b"");
        assert_eq!(encode_request("web"), b"\x0a\x03web");
        let long = "s".repeat(300);
        let enc = encode_request(&long);
        assert_eq!(&enc[..3], &[0x0a, 0xac, 0x02]);
        assert_eq!(enc.len(), 303);
        assert_eq!(grpc_frame(b"\x0a\x03web"), b"\x00\x00\x00\x00\x05\x0a\x03web");
        assert_eq!(grpc_frame(b""), b"\x00\x00\x00\x00\x00");
    }

    #[test]
    fn the_response_status_is_field_1_and_other_fields_are_skipped() {
        assert_eq!(decode_response(b""), Ok(0));
        assert_eq!(decode_response(b"\x08\x01"), Ok(1));
        assert_eq!(decode_response(b"\x08\x02"), Ok(2));
        assert_eq!(decode_response(b"\x08\x01\x08\x02"), Ok(2), "the last one counts");
        // Unknown fields of each wire type around it.
        assert_eq!(
            decode_response(b"\x12\x02hi\x08\x01\x19\x01\x02\x03\x04\x05\x06\x07\x08\x25\x01\x02\x03\x04\x30\x05"),
            Ok(1)
        );
        for bad in [&b"\x08"[..], b"\x08\x80", b"\x12\x05hi", b"\x0b", b"\x00\x01", b"\x19\x01", &[0xff; 11]] {
            assert_eq!(decode_response(bad).unwrap_err().code, INTERNAL, "{bad:?}");
        }
        assert_eq!(serving_name(3), "SERVICE_UNKNOWN");
        assert_eq!(serving_name(7), "7");
    }

    #[test]
    fn messages_are_one_uncompressed_within_the_limit() {
        let h = HeaderMap::new();
        let one = grpc_frame(b"\x08\x01");
        assert_eq!(message(&one, &h, true), Ok(Some(&b"\x08\x01"[..])));
        assert_eq!(message(&one[..4], &h, false), Ok(None));
        assert_eq!(message(&one[..6], &h, false), Ok(None));
        assert_eq!(message(&one[..6], &h, true).unwrap_err().message, "unexpected EOF");
        assert_eq!(message(b"", &h, true), Ok(None));
        let mut two = one.clone();
        two.extend_from_slice(&one);
        assert!(message(&two, &h, false).unwrap_err().message.starts_with("cardinality violation"));
        let huge = [0, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(
            message(&huge, &h, false).unwrap_err().to_string(),
            "rpc error: code = ResourceExhausted desc = grpc: received message larger than max (4294967295 vs. 4194304)"
        );
        assert_eq!(message(&[1, 0, 0, 0, 0], &h, false).unwrap_err().code, INTERNAL);
        let mut gz = HeaderMap::new();
        gz.insert("grpc-encoding", "gzip".parse().unwrap());
        assert_eq!(message(&[1, 0, 0, 0, 0], &gz, false).unwrap_err().code, UNIMPLEMENTED);
        assert_eq!(message(&[9, 0, 0, 0, 0], &h, false).unwrap_err().code, INTERNAL);
    }

    #[test]
    fn statuses_come_from_grpc_status_or_the_http_answer() {
        let map = |kv: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in kv {
                h.insert(*k, v.parse().unwrap());
            }
            h
        };
        let grpc = map(&[("content-type", "application/grpc")]);
        assert_eq!(header_status(200, &grpc), None, "a body follows");
        let only = map(&[("content-type", "application/grpc+proto"), ("grpc-status", "0")]);
        assert_eq!(header_status(200, &only), Some(Ok(())));
        let html = map(&[("content-type", "text/html")]);
        assert_eq!(
            header_status(404, &html).unwrap().unwrap_err().to_string(),
            "rpc error: code = Unimplemented desc = unexpected HTTP status code received from server: 404 (Not Found); \
             transport: received unexpected content-type \"text/html\""
        );
        assert_eq!(header_status(503, &grpc).unwrap().unwrap_err().code, UNAVAILABLE);
        assert_eq!(header_status(200, &html).unwrap().unwrap_err().code, INTERNAL);
        assert_eq!(header_status(200, &HeaderMap::new()).unwrap().unwrap_err().code, INTERNAL);
        let t = map(&[("grpc-status", "5"), ("grpc-message", "unknown%20service%3a x%zz")]);
        assert_eq!(
            trailer_status(&t).unwrap_err().to_string(),
            "rpc error: code = NotFound desc = unknown service: x%zz"
        );
        assert_eq!(
            trailer_status(&map(&[("grpc-status", "99")])).unwrap_err().to_string(),
            "rpc error: code = Code(99) desc = "
        );
        assert_eq!(
            trailer_status(&map(&[("grpc-status", "x")])).unwrap_err().message,
            "transport: malformed grpc-status: strconv.ParseInt: parsing \"x\": invalid syntax"
        );
        assert_eq!(trailer_status(&map(&[("grpc-message", "m")])).unwrap_err().code, UNKNOWN);
    }

    #[test]
    fn the_kubelets_words_for_each_status() {
        let t = Duration::from_secs(1);
        assert_eq!(
            Status::new(UNIMPLEMENTED, "unknown service grpc.health.v1.Health").kubelet(t),
            "error: this server does not implement the grpc health protocol (grpc.health.v1.Health): \
             unknown service grpc.health.v1.Health"
        );
        assert_eq!(Status::new(DEADLINE_EXCEEDED, "x").kubelet(t), "timeout: health rpc did not complete within 1s");
        assert_eq!(
            Status::new(5, "unknown service").kubelet(t),
            "error: health rpc probe failed: rpc error: code = NotFound desc = unknown service"
        );
    }

    #[test]
    fn durations_print_as_go_does() {
        let s = Duration::from_secs;
        assert_eq!(go_duration(s(1)), "1s");
        assert_eq!(go_duration(s(59)), "59s");
        assert_eq!(go_duration(s(60)), "1m0s");
        assert_eq!(go_duration(s(90)), "1m30s");
        assert_eq!(go_duration(s(3600)), "1h0m0s");
        assert_eq!(go_duration(s(3661)), "1h1m1s");
        assert_eq!(go_duration(Duration::from_millis(300)), "300ms");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::ZERO), "0s");
    }
}
