//! The hand-written HTTP/1 path with exact bytes: hostile clients (request smuggling,
//! malformed heads), hostile endpoints (bad framing), pipelining, HTTP/1.0, and endpoints
//! that close idle or mid-body.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weft_ingress::proxy::{Limits, Options, Proxy};
use weft_ingress::*;

/// An endpoint that reads request heads (and a Content-Length or chunked body, roughly) and
/// answers each with `answer(n)` for the n-th request of the connection; closes after
/// `per_conn` answers. Returns its address and the connections accepted.
async fn raw_upstream(answer: fn(usize, &str) -> Vec<u8>, per_conn: usize) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let counted = conns.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                for n in 0..per_conn {
                    // One head.
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut b = [0u8; 4096];
                        match s.read(&mut b).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&b[..k]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                    let lower = head.to_ascii_lowercase();
                    let mut body_end = head_end;
                    if let Some(cl) = lower.lines().find_map(|l| l.strip_prefix("content-length: ")) {
                        body_end += cl.trim().parse::<usize>().unwrap_or(0);
                    } else if lower.contains("transfer-encoding: chunked") {
                        loop {
                            if let Some(i) = buf[head_end..].windows(5).position(|w| w == b"0\r\n\r\n") {
                                body_end = head_end + i + 5;
                                break;
                            }
                            let mut b = [0u8; 4096];
                            match s.read(&mut b).await {
                                Ok(0) | Err(_) => return,
                                Ok(k) => buf.extend_from_slice(&b[..k]),
                            }
                        }
                    }
                    while buf.len() < body_end {
                        let mut b = [0u8; 4096];
                        match s.read(&mut b).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&b[..k]),
                        }
                    }
                    let full = String::from_utf8_lossy(&buf[..body_end]).into_owned();
                    buf.drain(..body_end);
                    if s.write_all(&answer(n, &full)).await.is_err() {
                        return;
                    }
                }
                // Then closed, as an endpoint ending keep-alive without saying so.
            });
        }
    });
    (addr, conns)
}

/// An answer with the request it got as its body.
fn echo_answer(_: usize, req: &str) -> Vec<u8> {
    format!("HTTP/1.1 200 OK\r\nServer: upstream\r\nContent-Length: {}\r\n\r\n{req}", req.len()).into_bytes()
}

fn oref(name: &str) -> ObjectRef {
    ObjectRef { namespace: "default".into(), name: name.into() }
}

fn table(host: &str, ep: SocketAddr) -> RouteTable {
    let route = Arc::new(Route {
        ingress: oref("ing"),
        host: host.into(),
        path: "/".into(),
        target: Target::Service(Backend {
            service: oref("svc"),
            port: "80".into(),
            ready: vec![ep].into(),
            serving_terminating: Vec::new().into(),
            protocol: BackendProtocol::Http,
        }),
        settings: Arc::new(Settings { max_body: Some(1000), ..Settings::default() }),
        canaries: Vec::new(),
    });
    let mut t = RouteTable::default();
    t.hosts.insert(host.into(), HostRoutes { prefixes: vec![(PathPrefix::new("/"), route)], ..Default::default() });
    t
}

async fn proxy_to(ep: SocketAddr) -> (Proxy, SocketAddr) {
    let opts = Options {
        http: vec!["127.0.0.1:0".parse().unwrap()],
        https: vec![],
        metrics: vec![],
        threads: 1,
        access_log: false,
    };
    let limits = Limits { header_read_timeout: Duration::from_secs(1), ..Limits::default() };
    let p = Proxy::start_with(opts, limits).await.unwrap();
    p.install(table("h.example", ep));
    let a = p.local_addrs().http[0];
    (p, a)
}

/// Sends `bytes`, reads until the proxy closes or `wait` passes: (what came, closed).
async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> (String, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    read_all(&mut s, wait).await
}

async fn read_all(s: &mut TcpStream, wait: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), false),
        }
    }
}

const W: Duration = Duration::from_secs(3);

#[tokio::test]
async fn smuggling_attempts_are_refused_and_closed() {
    let (ep, _) = raw_upstream(echo_answer, 100).await;
    let (_p, a) = proxy_to(ep).await;
    for (req, want) in [
        // Both framings.
        (&b"POST / HTTP/1.1\r\nHost: h.example\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..], "400"),
        // Codings other than exactly chunked.
        (b"POST / HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", "501"),
        (b"POST / HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding: identity\r\n\r\n", "400"),
        (b"POST / HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "400"),
        (b"POST / HTTP/1.0\r\nHost: h.example\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "400"),
        // Differing lengths, or not a number.
        (b"POST / HTTP/1.1\r\nHost: h.example\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", "400"),
        (b"POST / HTTP/1.1\r\nHost: h.example\r\nContent-Length: 1, 1\r\n\r\na", "400"),
        (b"POST / HTTP/1.1\r\nHost: h.example\r\nContent-Length: -1\r\n\r\n", "400"),
        (b"POST / HTTP/1.1\r\nHost: h.example\r\nContent-Length: +1\r\n\r\na", "400"),
        // Bad chunks: not hex, an overlong size line, data without its CRLF.
        (b"POST / HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n", "400"),
        (b"POST / HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding: chunked\r\n\r\n1ffffffffffffffff\r\n", "400"),
        (b"POST / HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n", "400"),
        (b"POST / HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding: chunked\r\n\r\n2\nab\r\n0\r\n\r\n", "400"),
    ] {
        let (out, closed) = raw(a, req, W).await;
        assert!(out.starts_with(&format!("HTTP/1.1 {want}")), "{}: {out}", String::from_utf8_lossy(req));
        assert!(closed, "still open after {}", String::from_utf8_lossy(req));
    }
    // An overlong chunk extension line.
    let long = format!(
        "POST / HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding: chunked\r\n\r\n1;{}\r\na\r\n0\r\n\r\n",
        "x".repeat(5000)
    );
    let (out, closed) = raw(a, long.as_bytes(), W).await;
    assert!(out.starts_with("HTTP/1.1 400") && closed, "{out}");
}

#[tokio::test]
async fn malformed_heads_are_400_or_431() {
    let (ep, _) = raw_upstream(echo_answer, 100).await;
    let (_p, a) = proxy_to(ep).await;
    for (req, want) in [
        // obs-fold, bare LF, bare CR, NUL.
        (&b"GET / HTTP/1.1\r\nHost: h.example\r\nX-A: a\r\n b\r\n\r\n"[..], "400"),
        (b"GET / HTTP/1.1\nHost: h.example\n\n", "400"),
        (b"GET / HTTP/1.1\r\nHost: h.example\r\nX-A: a\rb\r\n\r\n", "400"),
        (b"GET / HTTP/1.1\r\nHost: h.example\r\nX-A: a\x00b\r\n\r\n", "400"),
        (b"GET / HTTP/1.1\r\nHost : h.example\r\n\r\n", "400"),
        // Targets: asterisk, authority-form, CONNECT, a fragment, non-ASCII.
        (b"OPTIONS * HTTP/1.1\r\nHost: h.example\r\n\r\n", "400"),
        (b"GET h.example:80 HTTP/1.1\r\nHost: h.example\r\n\r\n", "400"),
        (b"CONNECT h.example:443 HTTP/1.1\r\nHost: h.example:443\r\n\r\n", "405"),
        (b"GET /a#b HTTP/1.1\r\nHost: h.example\r\n\r\n", "400"),
        // No Host, two Hosts.
        (b"GET / HTTP/1.1\r\n\r\n", "400"),
        (b"GET / HTTP/1.1\r\nHost: h.example\r\nHost: other.example\r\n\r\n", "400"),
        (b"\x00\x01garbage\r\n\r\n", "400"),
    ] {
        let (out, closed) = raw(a, req, W).await;
        assert!(out.starts_with(&format!("HTTP/1.1 {want}")), "{:?}: {out}", String::from_utf8_lossy(req));
        assert!(closed || want == "405", "still open after {:?}", String::from_utf8_lossy(req));
    }
    let big = format!("GET / HTTP/1.1\r\nHost: h.example\r\nX-Big: {}\r\n\r\n", "a".repeat(40 << 10));
    let (out, closed) = raw(a, big.as_bytes(), W).await;
    assert!(out.starts_with("HTTP/1.1 431") && closed, "{out}");
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let (out, _) = raw(a, format!("GET / HTTP/1.1\r\nHost: h.example\r\n{many}\r\n").as_bytes(), W).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    // Absolute form: its host wins over Host.
    let (out, _) =
        raw(a, b"GET http://h.example/abs?q=1 HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n", W).await;
    assert!(out.starts_with("HTTP/1.1 200") && out.contains("GET /abs?q=1 HTTP/1.1\r\n"), "{out}");
    assert!(out.contains("host: h.example\r\n"), "{out}");
}

#[tokio::test]
async fn slow_and_silent_clients_are_cut_off() {
    let (ep, _) = raw_upstream(echo_answer, 100).await;
    let (_p, a) = proxy_to(ep).await;
    let t = std::time::Instant::now();
    let mut s = TcpStream::connect(a).await.unwrap();
    // A byte at a time, never finishing: the head's deadline holds however the bytes trickle.
    for b in b"GET / HTTP/1.1\r\nHost: h.example\r\nX-Slow: " {
        if s.write_all(&[*b]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
        if t.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    let (_, closed) = read_all(&mut s, Duration::from_secs(3)).await;
    assert!(closed && t.elapsed() < Duration::from_secs(5));
    // Connected, nothing sent.
    let (_, closed) = raw(a, b"", W).await;
    assert!(closed);
}

#[tokio::test]
async fn hop_by_hop_headers_are_not_forwarded_and_server_is_weft() {
    let (ep, _) = raw_upstream(
        |_, req| {
            let body = req.to_string();
            format!(
                "HTTP/1.1 200 OK\r\nServer: upstream/1.0\r\nConnection: x-up-secret\r\nX-Up-Secret: 1\r\nKeep-Alive: timeout=5\r\nUpgrade: h2c\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        },
        100,
    )
    .await;
    let (_p, a) = proxy_to(ep).await;
    let (out, _) = raw(
        a,
        b"GET / HTTP/1.1\r\nHost: h.example\r\nConnection: keep-alive, x-secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nProxy-Connection: x\r\nProxy-Authorization: basic x\r\nTE: trailers, deflate\r\nUpgrade: websocket\r\nX-Forwarded-For: 6.6.6.6\r\nX-Ok: yes\r\n\r\n",
        Duration::from_millis(800),
    )
    .await;
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let lower_body = body.to_ascii_lowercase();
    for h in ["x-secret", "keep-alive", "proxy-connection", "proxy-authorization", "upgrade", "connection"] {
        assert!(!lower_body.contains(&format!("\n{h}:")), "{h} passed on: {body}");
    }
    assert!(lower_body.contains("\nte: trailers\r\n"), "{body}");
    assert!(lower_body.contains("\nx-ok: yes\r\n"), "{body}");
    assert!(lower_body.contains("\nx-forwarded-for: 127.0.0.1\r\n"), "{body}");
    let lower_head = head.to_ascii_lowercase();
    assert!(lower_head.contains("\r\nserver: weft"), "{head}");
    for h in ["server: upstream", "x-up-secret", "keep-alive", "upgrade"] {
        assert!(!lower_head.contains(h), "{h} in {head}");
    }
    // The proxy's own answers say who they are too.
    let (out, _) = raw(a, b"GET / HTTP/1.1\r\nHost: nothing.example\r\nConnection: close\r\n\r\n", W).await;
    assert!(out.starts_with("HTTP/1.1 404") && out.to_ascii_lowercase().contains("\r\nserver: weft\r\n"), "{out}");
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let (ep, _) = raw_upstream(echo_answer, 100).await;
    let (_p, a) = proxy_to(ep).await;
    let mut s = TcpStream::connect(a).await.unwrap();
    s.write_all(
        b"GET /one HTTP/1.1\r\nHost: h.example\r\n\r\nPOST /two HTTP/1.1\r\nHost: h.example\r\nContent-Length: 3\r\n\r\nabcGET /three HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\nGET /nope HTTP/1.1\r\nHost: none.example\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let (out, closed) = read_all(&mut s, W).await;
    assert!(closed, "{out}");
    let one = out.find("GET /one ").unwrap();
    let two = out.find("POST /two ").unwrap();
    let three = out.find("GET /three ").unwrap();
    let nope = out.find("HTTP/1.1 404").unwrap();
    assert!(one < two && two < three && three < nope, "{out}");
    assert!(out.contains("\r\n\r\nabc"), "{out}");
    assert!(out.contains("1\r\nx\r\n0\r\n\r\n"), "chunks passed on as framed: {out}");
    assert_eq!(out.matches("HTTP/1.1 200").count(), 3, "{out}");
}

#[tokio::test]
async fn http10_clients_and_connection_close() {
    let (ep, _) = raw_upstream(echo_answer, 100).await;
    let (_p, a) = proxy_to(ep).await;
    let (out, closed) = raw(a, b"GET /old HTTP/1.0\r\nHost: h.example\r\n\r\n", W).await;
    assert!(out.starts_with("HTTP/1.1 200") && closed, "{out}");
    assert!(out.contains("GET /old HTTP/1.0\r\n"), "{out}");
    // HTTP/1.0 without Host is routed by the empty host (nothing here).
    let (out, closed) = raw(a, b"GET / HTTP/1.0\r\n\r\n", W).await;
    assert!(out.starts_with("HTTP/1.1 404") && closed, "{out}");
    // Keep-alive asked by an HTTP/1.0 client.
    let mut s = TcpStream::connect(a).await.unwrap();
    s.write_all(b"GET /a HTTP/1.0\r\nHost: h.example\r\nConnection: keep-alive\r\n\r\n").await.unwrap();
    let (out, closed) = read_all(&mut s, Duration::from_millis(500)).await;
    assert!(!closed && out.to_ascii_lowercase().contains("connection: keep-alive"), "{out}");
    // Connection: close from an HTTP/1.1 client.
    let (out, closed) = raw(a, b"GET / HTTP/1.1\r\nHost: h.example\r\nConnection: close\r\n\r\n", W).await;
    assert!(out.starts_with("HTTP/1.1 200") && closed, "{out}");
}

#[tokio::test]
async fn body_limit_mid_chunk_is_413_and_closed() {
    let (ep, _) = raw_upstream(echo_answer, 100).await;
    let (_p, a) = proxy_to(ep).await;
    let mut s = TcpStream::connect(a).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: h.example\r\nTransfer-Encoding: chunked\r\n\r\n258\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let chunk = "a".repeat(600);
    let _ = s.write_all(format!("{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n").as_bytes()).await;
    let (out, closed) = read_all(&mut s, W).await;
    assert!(out.starts_with("HTTP/1.1 413") && closed, "{out}");
    // By Content-Length: refused before anything is sent.
    let (out, _) = raw(a, b"POST / HTTP/1.1\r\nHost: h.example\r\nContent-Length: 1001\r\n\r\n", W).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
}

#[tokio::test]
async fn badly_framed_answers_are_502_and_never_reused() {
    for answer in [
        (|_, _: &str| b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\nok".to_vec())
            as fn(usize, &str) -> Vec<u8>,
        |_, _| b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok".to_vec(),
        |_, _| b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok".to_vec(),
        |_, _| b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 2\r\n\r\nok".to_vec(),
        |_, _| b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok".to_vec(),
        |_, _| b"garbage garbage\r\n\r\n".to_vec(),
        |_, _| b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
    ] {
        let (ep, conns) = raw_upstream(answer, 100).await;
        let (_p, a) = proxy_to(ep).await;
        let mut s = TcpStream::connect(a).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: h.example\r\n\r\n").await.unwrap();
        let (out, _) = read_all(&mut s, Duration::from_millis(500)).await;
        assert!(out.starts_with("HTTP/1.1 502"), "{out}");
        let (out, _) = raw(a, b"GET / HTTP/1.1\r\nHost: h.example\r\nConnection: close\r\n\r\n", W).await;
        assert!(out.starts_with("HTTP/1.1 502"), "{out}");
        assert_eq!(conns.load(Ordering::SeqCst), 2, "a badly framed connection was reused");
    }
}

#[tokio::test]
async fn an_endpoint_closing_mid_body_closes_the_client() {
    let (ep, _) =
        raw_upstream(|_, _| b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part of it".to_vec(), 1).await;
    let (_p, a) = proxy_to(ep).await;
    let mut s = TcpStream::connect(a).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: h.example\r\n\r\n").await.unwrap();
    let (out, closed) = read_all(&mut s, W).await;
    assert!(out.starts_with("HTTP/1.1 200") && out.ends_with("only part of it") && closed, "{out}");
}

#[tokio::test]
async fn an_idle_connection_closed_by_the_endpoint_is_retried_fresh() {
    // One answer per connection, then the endpoint closes without saying so.
    let (ep, conns) = raw_upstream(echo_answer, 1).await;
    let (_p, a) = proxy_to(ep).await;
    let mut s = TcpStream::connect(a).await.unwrap();
    for i in 0..4 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: h.example\r\n\r\n").await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("x-request-id") || !got.ends_with(b"\r\n\r\n") {
            let n = tokio::time::timeout(W, s.read(&mut buf)).await.unwrap().unwrap();
            assert!(n > 0, "closed at request {i}");
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got));
        // Let the endpoint's close arrive.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(conns.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn an_answer_until_close_is_passed_on_and_ends_the_connection() {
    let (ep, _) = raw_upstream(|_, _| b"HTTP/1.1 200 OK\r\n\r\nall of this".to_vec(), 1).await;
    let (_p, a) = proxy_to(ep).await;
    let (out, closed) = raw(a, b"GET / HTTP/1.1\r\nHost: h.example\r\n\r\n", W).await;
    assert!(out.starts_with("HTTP/1.1 200") && out.ends_with("\r\n\r\nall of this") && closed, "{out}");
    assert!(out.to_ascii_lowercase().contains("connection: close"), "{out}");
}

fn big_answer(_: usize, _: &str) -> Vec<u8> {
    let mut a = b"HTTP/1.1 200 OK\r\nContent-Length: 16000000\r\n\r\n".to_vec();
    a.resize(a.len() + 16_000_000, b'x');
    a
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_after_send_timeout() {
    let (ep, _) = raw_upstream(big_answer, 10).await;
    let opts = Options {
        http: vec!["127.0.0.1:0".parse().unwrap()],
        https: vec![],
        metrics: vec![],
        threads: 1,
        access_log: false,
    };
    let limits = Limits { send_timeout: Duration::from_millis(300), ..Limits::default() };
    let p = Proxy::start_with(opts, limits).await.unwrap();
    p.install(table("h.example", ep));
    let a = p.local_addrs().http[0];
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(a).await.unwrap();
    // Requests, and nothing read for well past the timeout.
    s.write_all(b"GET /a HTTP/1.1\r\nHost: h.example\r\n\r\nGET /b HTTP/1.1\r\nHost: h.example\r\n\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // What the proxy had sent before giving up, then the end: far less than the answers.
    let mut got = 0usize;
    let mut b = vec![0u8; 64 << 10];
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.read(&mut b).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got += n,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection was not closed");
    assert!(got < 16_000_000, "got {got} bytes: the whole answer");
    drop(p);
}
