//! The proxy end to end on loopback: tables built by hand, real upstreams (hyper servers on
//! 127.0.0.1:0), real clients.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weft_ingress::proxy::{Limits, Options, Proxy};
use weft_ingress::*;

// ---------------------------------------------------------------- upstreams

/// An HTTP/1 and h2c server that answers with its name and what it saw: `uri`, `version`,
/// every header as `h <name>: <value>`, and `body <bytes read>`. A path under `/grpc` gets a
/// gRPC-shaped answer (trailers `grpc-status: 0`); `/slow` waits 3 s; `/drip` sends its head
/// at once and its body a second later.
async fn upstream(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| echo(name, req));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

type EchoBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn echo(name: &'static str, req: Request<Incoming>) -> Result<Response<EchoBody>, Infallible> {
    let (p, b) = req.into_parts();
    if p.uri.path().starts_with("/slow") {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let n = b.collect().await.map(|c| c.to_bytes().len()).unwrap_or(0);
    let mut out = format!("upstream {name}\nmethod {}\nuri {}\nversion {:?}\n", p.method, p.uri, p.version);
    for (k, v) in &p.headers {
        out.push_str(&format!("h {k}: {}\n", v.to_str().unwrap_or("?")));
    }
    out.push_str(&format!("body {n}\n"));
    if p.uri.path().starts_with("/drip") {
        // The head at once, the body a second later.
        let late = futures::stream::once(async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"late body")))
        });
        return Ok(Response::builder().body(BodyExt::boxed(StreamBody::new(late))).unwrap());
    }
    if p.uri.path().starts_with("/grpc") {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        trailers.insert("grpc-message", "fine".parse().unwrap());
        let frames = vec![Ok::<_, Infallible>(Frame::data(Bytes::from(out))), Ok(Frame::trailers(trailers))];
        let body = BodyExt::boxed(StreamBody::new(futures::stream::iter(frames)));
        return Ok(Response::builder().header("content-type", "application/grpc").body(body).unwrap());
    }
    Ok(Response::builder().header("x-upstream", name).body(Full::new(Bytes::from(out)).boxed()).unwrap())
}

/// A WebSocket echo server.
async fn ws_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else { return };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() || m.is_binary() {
                        let _ = ws.send(m).await;
                    }
                }
            });
        }
    });
    addr
}

/// A loopback port with nothing listening.
fn dead_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

// ---------------------------------------------------------------- tables

fn oref(ns: &str, name: &str) -> ObjectRef {
    ObjectRef { namespace: ns.into(), name: name.into() }
}

fn backend(svc: &str, ready: &[SocketAddr]) -> Backend {
    Backend {
        service: oref("default", svc),
        port: "80".into(),
        ready: ready.to_vec().into(),
        serving_terminating: Vec::new().into(),
        protocol: BackendProtocol::Http,
    }
}

fn route_to(host: &str, path: &str, target: Target, settings: Settings) -> Arc<Route> {
    Arc::new(Route {
        ingress: oref("default", "ing"),
        host: host.into(),
        path: path.into(),
        target,
        settings: Arc::new(settings),
        canaries: Vec::new(),
    })
}

fn svc(host: &str, path: &str, b: Backend) -> Arc<Route> {
    route_to(host, path, Target::Service(b), Settings::default())
}

/// A table with one host whose prefixes are given (longest first is done here).
fn table_prefixes(host: &str, mut routes: Vec<(&str, Arc<Route>)>) -> RouteTable {
    routes.sort_by_key(|(p, _)| std::cmp::Reverse(PathPrefix::new(p).0.len()));
    let mut t = RouteTable::default();
    t.hosts.insert(
        host.into(),
        HostRoutes {
            prefixes: routes.into_iter().map(|(p, r)| (PathPrefix::new(p), r)).collect(),
            ..Default::default()
        },
    );
    t
}

// ---------------------------------------------------------------- the proxy and clients

fn limits() -> Limits {
    Limits { header_read_timeout: Duration::from_secs(1), ..Limits::default() }
}

async fn proxy() -> Proxy {
    proxy_with(limits()).await
}

async fn proxy_with(limits: Limits) -> Proxy {
    let opts = Options {
        http: vec!["127.0.0.1:0".parse().unwrap()],
        https: vec!["127.0.0.1:0".parse().unwrap()],
        metrics: vec!["127.0.0.1:0".parse().unwrap()],
        threads: 2,
        access_log: false,
    };
    Proxy::start_with(opts, limits).await.unwrap()
}

fn http_addr(p: &Proxy) -> SocketAddr {
    p.local_addrs().http[0]
}

#[derive(Debug)]
struct Got {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Got {
    /// The value of a header the upstream saw.
    fn seen(&self, name: &str) -> Option<&str> {
        let prefix = format!("h {name}: ");
        self.body.lines().find_map(|l| l.strip_prefix(prefix.as_str()))
    }
    fn upstream(&self) -> Option<&str> {
        self.body.lines().find_map(|l| l.strip_prefix("upstream "))
    }
    fn uri(&self) -> Option<&str> {
        self.body.lines().find_map(|l| l.strip_prefix("uri "))
    }
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

async fn collect(r: Response<Incoming>) -> Got {
    let (p, b) = r.into_parts();
    let body = b.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    Got { status: p.status.as_u16(), headers: p.headers, body: String::from_utf8_lossy(&body).into_owned() }
}

async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Got {
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await.unwrap();
    tokio::spawn(conn);
    collect(tx.send_request(req).await.unwrap()).await
}

fn req(method: &str, host: &str, path: &str) -> http::request::Builder {
    Request::builder().method(method).uri(path).header("host", host)
}

async fn get(addr: SocketAddr, host: &str, path: &str) -> Got {
    send(addr, req("GET", host, path).body(Full::default()).unwrap()).await
}

/// Sends raw bytes and reads what comes back until the proxy closes or `wait` passes.
async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> (String, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connecting to the proxy at {addr}: {e}"));
    let _ = s.write_all(bytes).await;
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

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn routing_precedence_and_404() {
    let (exact, regex, short, long, wild, any, def) = (
        upstream("exact").await,
        upstream("regex").await,
        upstream("short").await,
        upstream("long").await,
        upstream("wild").await,
        upstream("any").await,
        upstream("default").await,
    );
    let p = proxy().await;
    let a = http_addr(&p);
    // Before any table: everything 404.
    assert_eq!(get(a, "a.example", "/").await.status, 404);

    let mut t = table_prefixes(
        "a.example",
        vec![
            ("/", svc("a.example", "/", backend("short", &[short]))),
            ("/app", svc("a.example", "/app", backend("long", &[long]))),
        ],
    );
    let h = t.hosts.get_mut("a.example").unwrap();
    h.exact.insert("/app/exact".into(), svc("a.example", "/app/exact", backend("exact", &[exact])));
    h.regexes.push((
        regex::Regex::new("^/app/re[0-9]+").unwrap(),
        svc("a.example", "/app/re[0-9]+", backend("regex", &[regex])),
    ));
    t.wildcards.insert(
        "w.example".into(),
        HostRoutes {
            prefixes: vec![(PathPrefix::new("/"), svc("*.w.example", "/", backend("wild", &[wild])))],
            ..Default::default()
        },
    );
    t.any_host = HostRoutes {
        prefixes: vec![(PathPrefix::new("/only"), svc("", "/only", backend("any", &[any])))],
        ..Default::default()
    };
    p.install(t);

    let up = |g: Got| g.upstream().unwrap_or("none").to_string();
    assert_eq!(up(get(a, "a.example", "/app/exact").await), "exact");
    assert_eq!(up(get(a, "a.example", "/app/exact/more").await), "long");
    assert_eq!(up(get(a, "a.example", "/app/re42").await), "regex");
    assert_eq!(up(get(a, "a.example", "/app").await), "long");
    assert_eq!(up(get(a, "a.example", "/app/x").await), "long");
    assert_eq!(up(get(a, "a.example", "/apple").await), "short");
    assert_eq!(up(get(a, "A.Example:8080", "/").await), "short");
    assert_eq!(up(get(a, "x.w.example", "/").await), "wild");
    assert_eq!(get(a, "y.x.w.example", "/only/1").await.upstream(), Some("any"));
    assert_eq!(get(a, "w.example", "/").await.status, 404);
    assert_eq!(get(a, "other.example", "/nope").await.status, 404);
    // Normalized before matching: a dot-segment or an escape cannot dodge a route, and the
    // endpoint gets the path that was routed.
    let g = get(a, "a.example", "/x/../app/exact").await;
    assert_eq!((g.upstream(), g.uri()), (Some("exact"), Some("/app/exact")));
    assert_eq!(get(a, "a.example", "/%61pp/exact?q=1").await.uri(), Some("/app/exact?q=1"));
    assert_eq!(get(a, "a.example", "/../etc").await.status, 400);
    assert_eq!(get(a, "bad host", "/").await.status, 400);

    // The default backend takes what nothing matched.
    let mut t = table_prefixes("a.example", vec![("/app", svc("a.example", "/app", backend("long", &[long])))]);
    t.default_backend = Some(svc("", "", backend("default", &[def])));
    p.install(t);
    assert_eq!(get(a, "a.example", "/zzz").await.upstream(), Some("default"));
    assert_eq!(get(a, "nohost.example", "/").await.upstream(), Some("default"));
}

#[tokio::test]
async fn redirects() {
    let u = upstream("u").await;
    let p = proxy().await;
    let a = http_addr(&p);
    let https_port = p.local_addrs().https[0].port();
    let mut t = table_prefixes("tls.example", vec![("/", svc("tls.example", "/", backend("u", &[u])))]);
    t.hosts.get_mut("tls.example").unwrap().tls = true;
    let noredir = Settings { ssl_redirect: false, ..Settings::default() };
    t.hosts.insert(
        "plain.example".into(),
        HostRoutes {
            tls: true,
            prefixes: vec![(
                PathPrefix::new("/"),
                route_to("plain.example", "/", Target::Service(backend("u", &[u])), noredir),
            )],
            ..Default::default()
        },
    );
    let force = Settings { force_ssl_redirect: true, ..Settings::default() };
    t.hosts.insert(
        "force.example".into(),
        HostRoutes {
            prefixes: vec![(
                PathPrefix::new("/"),
                route_to("force.example", "/", Target::Service(backend("u", &[u])), force),
            )],
            ..Default::default()
        },
    );
    let root = Settings { app_root: Some("/app1".into()), ..Settings::default() };
    t.hosts.insert(
        "root.example".into(),
        HostRoutes {
            prefixes: vec![(
                PathPrefix::new("/"),
                route_to("root.example", "/", Target::Service(backend("u", &[u])), root),
            )],
            ..Default::default()
        },
    );
    t.hosts.insert(
        "moved.example".into(),
        HostRoutes {
            prefixes: vec![(
                PathPrefix::new("/"),
                route_to(
                    "moved.example",
                    "/",
                    Target::Redirect { location: "https://new.example/".into(), code: 301 },
                    Settings::default(),
                ),
            )],
            ..Default::default()
        },
    );
    p.install(t);

    let g = get(a, "tls.example", "/a/b?x=1").await;
    assert_eq!(g.status, 308);
    assert_eq!(g.header("location"), format!("https://tls.example:{https_port}/a/b?x=1"));
    assert_eq!(get(a, "plain.example", "/").await.status, 200);
    assert_eq!(get(a, "force.example", "/f").await.status, 308);
    let g = get(a, "root.example", "/").await;
    assert_eq!((g.status, g.header("location")), (302, "http://root.example/app1"));
    assert_eq!(get(a, "root.example", "/other").await.status, 200);
    let g = get(a, "moved.example", "/x").await;
    assert_eq!((g.status, g.header("location")), (301, "https://new.example/"));
    // Over TLS there is no redirect to TLS.
    let g = tls_get(p.local_addrs().https[0], "tls.example", "/a").await.1;
    assert_eq!(g.status, 200);
}

#[tokio::test]
async fn rewrite_with_captures_keeps_query() {
    let u = upstream("u").await;
    let p = proxy().await;
    let a = http_addr(&p);
    let mut t = RouteTable::default();
    let st = Settings { rewrite_target: Some("/$2".into()), ..Settings::default() };
    t.hosts.insert(
        "r.example".into(),
        HostRoutes {
            regexes: vec![(
                regex::Regex::new("^/api(/|$)(.*)").unwrap(),
                route_to("r.example", "/api(/|$)(.*)", Target::Service(backend("u", &[u])), st),
            )],
            ..Default::default()
        },
    );
    p.install(t);
    assert_eq!(get(a, "r.example", "/api/v1/items?x=1&y=2").await.uri(), Some("/v1/items?x=1&y=2"));
    assert_eq!(get(a, "r.example", "/api").await.uri(), Some("/"));
}

#[tokio::test]
async fn forwarded_headers_and_hop_by_hop() {
    let u = upstream("u").await;
    let p = proxy().await;
    let a = http_addr(&p);
    p.install(table_prefixes("f.example", vec![("/", svc("f.example", "/", backend("u", &[u])))]));
    let r = req("GET", "F.example:81", "/p")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-real-ip", "6.6.6.6")
        .header("forwarded", "for=6.6.6.6")
        .header("connection", "keep-alive, x-secret")
        .header("x-secret", "1")
        .header("keep-alive", "timeout=5")
        .header("te", "gzip")
        .body(Full::default())
        .unwrap();
    let g = send(a, r).await;
    assert_eq!(g.status, 200, "{g:?}");
    assert_eq!(g.seen("host"), Some("F.example:81"));
    assert_eq!(g.seen("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(g.seen("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(g.seen("x-forwarded-proto"), Some("http"));
    assert_eq!(g.seen("x-forwarded-host"), Some("F.example:81"));
    assert_eq!(g.seen("x-forwarded-port"), Some(a.port().to_string().as_str()));
    assert_eq!(g.seen("forwarded"), Some("for=127.0.0.1;host=\"F.example:81\";proto=http"));
    let id = g.seen("x-request-id").unwrap();
    assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    for h in ["x-secret", "keep-alive", "te", "connection"] {
        assert_eq!(g.seen(h), None, "{h} passed on");
    }
    // A request ID the client gave is kept.
    let g = send(a, req("GET", "f.example", "/").header("x-request-id", "abc").body(Full::default()).unwrap()).await;
    assert_eq!(g.seen("x-request-id"), Some("abc"));
}

#[tokio::test]
async fn h2c_and_h2_over_tls() {
    let u = upstream("u").await;
    let p = proxy().await;
    p.install(table_prefixes("h.example", vec![("/", svc("h.example", "/", backend("u", &[u])))]));
    // h2c with prior knowledge on the plain port.
    let s = TcpStream::connect(http_addr(&p)).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s)).await.unwrap();
    tokio::spawn(conn);
    let r = Request::builder().uri("http://h.example/x").body(Full::<Bytes>::default()).unwrap();
    let g = collect(tx.send_request(r).await.unwrap()).await;
    assert_eq!((g.status, g.upstream()), (200, Some("u")));
    assert_eq!(g.seen("host"), Some("h.example"));
    // The Server header on the hyper path too: a proxied answer and one of the proxy's own.
    assert_eq!(g.header("server"), "weft");
    let r = Request::builder().uri("http://none.example/").body(Full::<Bytes>::default()).unwrap();
    let g = collect(tx.send_request(r).await.unwrap()).await;
    assert_eq!((g.status, g.header("server")), (404, "weft"));
    // h2 over TLS by ALPN.
    let (alpn, tls) = tls_connect(p.local_addrs().https[0], "h.example", &[b"h2"]).await;
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    let (mut tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let r = Request::builder().uri("https://h.example/y").body(Full::<Bytes>::default()).unwrap();
    let g = collect(tx.send_request(r).await.unwrap()).await;
    assert_eq!((g.status, g.upstream()), (200, Some("u")));
    assert_eq!(g.seen("x-forwarded-proto"), Some("https"));
}

// ---------------------------------------------------------------- TLS

#[derive(Debug)]
struct Capture(Arc<std::sync::Mutex<Vec<Vec<u8>>>>);

impl rustls::client::danger::ServerCertVerifier for Capture {
    fn verify_server_cert(
        &self,
        end: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.0.lock().unwrap().push(end.to_vec());
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS connection with `sni`; returns the ALPN protocol, the stream, and (through
/// [`tls_cert`]) the certificate served.
async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    alpn: &[&[u8]],
) -> (Option<Vec<u8>>, tokio_rustls::client::TlsStream<TcpStream>) {
    let (alpn, s, _) = tls_connect_cert(addr, sni, alpn).await;
    (alpn, s)
}

async fn tls_connect_cert(
    addr: SocketAddr,
    sni: &str,
    alpn: &[&[u8]],
) -> (Option<Vec<u8>>, tokio_rustls::client::TlsStream<TcpStream>, Vec<u8>) {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Capture(seen.clone())))
        .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let s = tokio_rustls::TlsConnector::from(Arc::new(c)).connect(name, tcp).await.unwrap();
    let alpn = s.get_ref().1.alpn_protocol().map(|a| a.to_vec());
    let cert = seen.lock().unwrap().first().cloned().unwrap_or_default();
    (alpn, s, cert)
}

async fn tls_get(addr: SocketAddr, host: &str, path: &str) -> (Vec<u8>, Got) {
    let (_, s, cert) = tls_connect_cert(addr, host, &[b"http/1.1"]).await;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await.unwrap();
    tokio::spawn(conn);
    let g =
        collect(tx.send_request(req("GET", host, path).body(Full::<Bytes>::default()).unwrap()).await.unwrap()).await;
    (cert, g)
}

fn make_cert(names: &[&str]) -> (Vec<u8>, Arc<rustls::sign::CertifiedKey>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signer = rustls::crypto::aws_lc_rs::sign::any_supported_type(&der).unwrap();
    (cert.der().to_vec(), Arc::new(rustls::sign::CertifiedKey::new(vec![cert.der().clone()], signer)))
}

#[tokio::test]
async fn tls_sni_picks_cert_and_follows_swaps() {
    let u = upstream("u").await;
    let p = proxy().await;
    let s = p.local_addrs().https[0];
    let (a_der, a_key) = make_cert(&["a.example"]);
    let (w_der, w_key) = make_cert(&["*.w.example"]);
    let (b_der, b_key) = make_cert(&["a.example"]);
    let table = |key: &Arc<rustls::sign::CertifiedKey>| {
        let mut t = table_prefixes("a.example", vec![("/", svc("a.example", "/", backend("u", &[u])))]);
        t.certs.insert("a.example".into(), key.clone());
        t.certs.insert("*.w.example".into(), w_key.clone());
        t
    };
    p.install(table(&a_key));
    let (cert, g) = tls_get(s, "a.example", "/").await;
    assert_eq!(cert, a_der);
    assert_eq!(g.status, 200);
    assert_eq!(tls_get(s, "x.w.example", "/").await.0, w_der);
    // Unknown names get the default certificate, ingress-nginx's "fake" one.
    let (dflt, _) = tls_get(s, "unknown.example", "/").await;
    assert!(dflt != a_der && dflt != w_der);
    assert!(dflt.windows(16).any(|w| w == b"Fake Certificate"));
    // A swap changes the certificate without a restart.
    p.install(table(&b_key));
    assert_eq!(tls_get(s, "a.example", "/").await.0, b_der);
    let m = p.metrics_text();
    assert!(m.contains("weft_ingress_tls_handshakes_total"), "{m}");
}

// ---------------------------------------------------------------- WebSocket and gRPC

#[tokio::test]
async fn websocket_survives_table_swaps() {
    let ws = ws_upstream().await;
    let p = proxy().await;
    let table = || table_prefixes("ws.example", vec![("/", svc("ws.example", "/", backend("ws", &[ws])))]);
    p.install(table());
    let tcp = TcpStream::connect(http_addr(&p)).await.unwrap();
    let (mut c, resp) = tokio_tungstenite::client_async("ws://ws.example/chat", tcp).await.unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..20 {
        p.install(table());
        let msg = format!("hello {i}");
        c.send(tokio_tungstenite::tungstenite::Message::text(msg.clone())).await.unwrap();
        let back = tokio::time::timeout(Duration::from_secs(5), c.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), msg);
    }
}

#[tokio::test]
async fn grpc_shaped_call_passes_trailers() {
    let u = upstream("g").await;
    let p = proxy().await;
    let mut b = backend("g", &[u]);
    b.protocol = BackendProtocol::Grpc;
    p.install(table_prefixes("g.example", vec![("/", svc("g.example", "/", b))]));
    let s = TcpStream::connect(http_addr(&p)).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s)).await.unwrap();
    tokio::spawn(conn);
    let r = Request::builder()
        .method("POST")
        .uri("http://g.example/grpc.Echo/Say")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\x05hello")))
        .unwrap();
    let resp = tx.send_request(r).await.unwrap();
    assert_eq!(resp.status(), 200);
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers passed through");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    let body = String::from_utf8_lossy(&collected.to_bytes()).into_owned();
    assert!(body.contains("version HTTP/2.0"), "{body}");
    assert!(body.contains("h te: trailers"), "{body}");
    assert!(body.contains("body 10"), "{body}");
}

// ---------------------------------------------------------------- endpoints

#[tokio::test]
async fn retries_and_ejection_with_a_dead_endpoint() {
    let u = upstream("live").await;
    let dead = dead_port();
    let p = proxy().await;
    let a = http_addr(&p);
    p.install(table_prefixes("r.example", vec![("/", svc("r.example", "/", backend("b", &[dead, u])))]));
    for _ in 0..10 {
        assert_eq!(get(a, "r.example", "/").await.upstream(), Some("live"));
    }
    // A request with a body is retried too when connecting failed: it never left.
    for _ in 0..4 {
        let g = send(a, req("POST", "r.example", "/").body(Full::new(Bytes::from_static(b"abc"))).unwrap()).await;
        assert_eq!((g.status, g.upstream()), (200, Some("live")));
    }
    // Only dead endpoints: 502.
    p.install(table_prefixes("r.example", vec![("/", svc("r.example", "/", backend("b", &[dead, dead_port()])))]));
    assert_eq!(get(a, "r.example", "/").await.status, 502);
    // Nothing to send to: 503.
    p.install(table_prefixes("r.example", vec![("/", svc("r.example", "/", backend("b", &[])))]));
    assert_eq!(get(a, "r.example", "/").await.status, 503);
    p.install(table_prefixes(
        "r.example",
        vec![("/", route_to("r.example", "/", Target::Unavailable, Settings::default()))],
    ));
    assert_eq!(get(a, "r.example", "/").await.status, 503);
}

/// An HTTP/2 connection without a request in flight is closed after the idle timeout (the
/// server's PINGs do not keep it open); one whose request takes longer is not cut short.
#[tokio::test]
async fn idle_http2_connections_are_closed_and_busy_ones_are_not() {
    let u = upstream("u").await;
    let p = proxy_with(Limits { idle_timeout: Duration::from_secs(1), ..limits() }).await;
    p.install(table_prefixes("h.example", vec![("/", svc("h.example", "/", backend("u", &[u])))]));
    let s = TcpStream::connect(http_addr(&p)).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s)).await.unwrap();
    let conn = tokio::spawn(conn);
    // /slow answers after 3 s: three idle timeouts pass while it is in flight.
    let r = Request::builder().uri("http://h.example/slow").body(Full::<Bytes>::default()).unwrap();
    let g = collect(tx.send_request(r).await.unwrap()).await;
    assert_eq!((g.status, g.upstream()), (200, Some("u")), "a request in flight outlives the idle timeout");
    assert!(!conn.is_finished(), "the connection stays open right after its request");
    // Then idle: the proxy ends it (GOAWAY and close) soon after a second.
    let t = std::time::Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(matches!(ended, Ok(Ok(Ok(())))), "an idle HTTP/2 connection is closed cleanly: {ended:?}");
    assert!(t.elapsed() < Duration::from_secs(3), "closed after {:?}", t.elapsed());
}

#[tokio::test]
async fn read_timeout_is_504() {
    let u = upstream("slow").await;
    let p = proxy().await;
    let st = Settings { read_timeout: Duration::from_millis(300), ..Settings::default() };
    p.install(table_prefixes(
        "t.example",
        vec![("/", route_to("t.example", "/", Target::Service(backend("u", &[u])), st))],
    ));
    assert_eq!(get(http_addr(&p), "t.example", "/slow").await.status, 504);
}

#[tokio::test]
async fn terminating_endpoints_only_without_ready_ones() {
    let (r, t) = (upstream("ready").await, upstream("terminating").await);
    let p = proxy().await;
    let a = http_addr(&p);
    let mut b = backend("b", &[r]);
    b.serving_terminating = vec![t].into();
    p.install(table_prefixes("e.example", vec![("/", svc("e.example", "/", b))]));
    for _ in 0..6 {
        assert_eq!(get(a, "e.example", "/").await.upstream(), Some("ready"));
    }
    let mut b = backend("b", &[]);
    b.serving_terminating = vec![t].into();
    p.install(table_prefixes("e.example", vec![("/", svc("e.example", "/", b))]));
    assert_eq!(get(a, "e.example", "/").await.upstream(), Some("terminating"));
}

#[tokio::test]
async fn round_robin_and_ewma_spread() {
    let (x, y) = (upstream("x").await, upstream("y").await);
    let p = proxy().await;
    let a = http_addr(&p);
    for balance in [Balance::RoundRobin, Balance::Ewma] {
        let st = Settings { balance, ..Settings::default() };
        p.install(table_prefixes(
            "b.example",
            vec![("/", route_to("b.example", "/", Target::Service(backend("b", &[x, y])), st))],
        ));
        let mut seen = HashMap::new();
        for _ in 0..40 {
            *seen.entry(get(a, "b.example", "/").await.upstream().unwrap().to_string()).or_insert(0) += 1;
        }
        assert_eq!(seen.len(), 2, "{balance:?}: {seen:?}");
    }
}

#[tokio::test]
async fn affinity_cookie_sticks() {
    let (x, y, z) = (upstream("x").await, upstream("y").await, upstream("z").await);
    let p = proxy().await;
    let a = http_addr(&p);
    let st = Settings {
        affinity: Some(CookieAffinity { name: "INGRESSCOOKIE".into(), path: None, max_age: Some(60) }),
        ..Settings::default()
    };
    p.install(table_prefixes(
        "s.example",
        vec![("/", route_to("s.example", "/", Target::Service(backend("b", &[x, y, z])), st))],
    ));
    let first = get(a, "s.example", "/").await;
    let set = first.header("set-cookie").to_string();
    assert!(set.starts_with("INGRESSCOOKIE=") && set.contains("Path=/") && set.contains("Max-Age=60"), "{set}");
    let cookie = set.split(';').next().unwrap().to_string();
    for _ in 0..10 {
        let g = send(
            a,
            req("GET", "s.example", "/").header("cookie", format!("a=b; {cookie}")).body(Full::default()).unwrap(),
        )
        .await;
        assert_eq!(g.upstream(), first.upstream());
        assert_eq!(g.header("set-cookie"), "", "no new cookie when one is honoured");
    }
    // A cookie naming no endpoint gets a new one.
    let g =
        send(a, req("GET", "s.example", "/").header("cookie", "INGRESSCOOKIE=bogus").body(Full::default()).unwrap())
            .await;
    assert!(g.header("set-cookie").starts_with("INGRESSCOOKIE="));
}

#[tokio::test]
async fn canary_by_header_cookie_and_weight() {
    let (main, can) = (upstream("main").await, upstream("canary").await);
    let p = proxy().await;
    let a = http_addr(&p);
    let make = |header: Option<(String, Option<String>)>, cookie: Option<String>, weight: u32| {
        let mut r = Route {
            ingress: oref("default", "ing"),
            host: "c.example".into(),
            path: "/".into(),
            target: Target::Service(backend("main", &[main])),
            settings: Arc::new(Settings::default()),
            canaries: Vec::new(),
        };
        r.canaries.push(Canary {
            ingress: oref("default", "ing-canary"),
            backend: backend("canary", &[can]),
            header,
            cookie,
            weight,
            weight_total: 100,
        });
        table_prefixes("c.example", vec![("/", Arc::new(r))])
    };
    let with = |h: &str, v: &str| req("GET", "c.example", "/").header(h, v).body(Full::default()).unwrap();
    p.install(make(Some(("x-canary".into(), None)), Some("canary_cookie".into()), 0));
    assert_eq!(get(a, "c.example", "/").await.upstream(), Some("main"));
    assert_eq!(send(a, with("x-canary", "always")).await.upstream(), Some("canary"));
    assert_eq!(send(a, with("x-canary", "never")).await.upstream(), Some("main"));
    assert_eq!(send(a, with("cookie", "canary_cookie=always")).await.upstream(), Some("canary"));
    assert_eq!(send(a, with("cookie", "canary_cookie=never")).await.upstream(), Some("main"));
    p.install(make(Some(("x-canary".into(), Some("v2".into()))), None, 0));
    assert_eq!(send(a, with("x-canary", "v2")).await.upstream(), Some("canary"));
    assert_eq!(send(a, with("x-canary", "always")).await.upstream(), Some("main"));
    p.install(make(None, None, 100));
    for _ in 0..5 {
        assert_eq!(get(a, "c.example", "/").await.upstream(), Some("canary"));
    }
    p.install(make(None, None, 50));
    let mut n = 0;
    for _ in 0..60 {
        n += (get(a, "c.example", "/").await.upstream() == Some("canary")) as u32;
    }
    assert!((10..=50).contains(&n), "{n} of 60 to a 50% canary");
    let m = p.metrics_text();
    assert!(m.contains("ingress=\"ing-canary\"") && m.contains("service=\"canary\""), "{m}");
}

// ---------------------------------------------------------------- limits and policies

#[tokio::test]
async fn body_limit_is_413() {
    let u = upstream("u").await;
    let p = proxy().await;
    let a = http_addr(&p);
    let st = Settings { max_body: Some(1000), ..Settings::default() };
    p.install(table_prefixes(
        "l.example",
        vec![("/", route_to("l.example", "/", Target::Service(backend("u", &[u])), st))],
    ));
    let small = send(a, req("POST", "l.example", "/").body(Full::new(Bytes::from(vec![b'a'; 900]))).unwrap()).await;
    assert_eq!((small.status, small.body.contains("body 900")), (200, true));
    let big = send(a, req("POST", "l.example", "/").body(Full::new(Bytes::from(vec![b'a'; 1001]))).unwrap()).await;
    assert_eq!(big.status, 413);
    // Chunked (no Content-Length): counted as it streams.
    let chunk = "a".repeat(600);
    let raw_req = format!(
        "POST / HTTP/1.1\r\nHost: l.example\r\nTransfer-Encoding: chunked\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    let (out, _) = raw(a, raw_req.as_bytes(), Duration::from_secs(3)).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
}

#[tokio::test]
async fn allowlist_is_403() {
    let u = upstream("u").await;
    let p = proxy().await;
    let a = http_addr(&p);
    let only = |net: &str| Settings { allow_source: vec![net.parse().unwrap()], ..Settings::default() };
    p.install(table_prefixes(
        "w.example",
        vec![("/", route_to("w.example", "/", Target::Service(backend("u", &[u])), only("10.0.0.0/8")))],
    ));
    assert_eq!(get(a, "w.example", "/").await.status, 403);
    p.install(table_prefixes(
        "w.example",
        vec![("/", route_to("w.example", "/", Target::Service(backend("u", &[u])), only("127.0.0.0/8")))],
    ));
    assert_eq!(get(a, "w.example", "/").await.status, 200);
}

#[tokio::test]
async fn cors_preflight_and_headers() {
    let u = upstream("u").await;
    let p = proxy().await;
    let a = http_addr(&p);
    let cors = Cors {
        allow_origin: vec!["https://app.example".into()],
        allow_methods: "GET, PUT, POST".into(),
        allow_headers: "X-Custom".into(),
        expose_headers: "X-Exposed".into(),
        allow_credentials: true,
        max_age: 1728000,
    };
    let st = Settings { cors: Some(cors), ..Settings::default() };
    p.install(table_prefixes(
        "cors.example",
        vec![("/", route_to("cors.example", "/", Target::Service(backend("u", &[u])), st))],
    ));
    let pre = send(
        a,
        req("OPTIONS", "cors.example", "/x")
            .header("origin", "https://app.example")
            .header("access-control-request-method", "PUT")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(pre.status, 204);
    assert_eq!(pre.header("access-control-allow-origin"), "https://app.example");
    assert_eq!(pre.header("access-control-allow-methods"), "GET, PUT, POST");
    assert_eq!(pre.header("access-control-allow-credentials"), "true");
    assert_eq!(pre.header("access-control-max-age"), "1728000");
    assert_eq!(pre.upstream(), None);
    let g = send(
        a,
        req("GET", "cors.example", "/x").header("origin", "https://app.example").body(Full::default()).unwrap(),
    )
    .await;
    assert_eq!((g.status, g.header("access-control-allow-origin")), (200, "https://app.example"));
    assert_eq!(g.header("access-control-expose-headers"), "X-Exposed");
    let g = send(
        a,
        req("GET", "cors.example", "/x").header("origin", "https://evil.example").body(Full::default()).unwrap(),
    )
    .await;
    assert_eq!(g.header("access-control-allow-origin"), "");
}

#[tokio::test]
async fn slowloris_is_cut_off() {
    let p = proxy().await;
    let t = std::time::Instant::now();
    // Half a request head, then nothing: the connection is closed after the header timeout (1 s here).
    let (_, closed) = raw(http_addr(&p), b"GET / HTTP/1.1\r\nHost: a", Duration::from_secs(5)).await;
    assert!(closed, "still open after 5 s");
    assert!(t.elapsed() < Duration::from_secs(4));
    // An idle keep-alive connection too.
    let (_, closed) = raw(http_addr(&p), b"", Duration::from_secs(5)).await;
    assert!(closed);
}

#[tokio::test]
async fn oversized_headers_are_431_and_garbage_does_no_harm() {
    let u = upstream("u").await;
    let p = proxy().await;
    let a = http_addr(&p);
    p.install(table_prefixes("g.example", vec![("/", svc("g.example", "/", backend("u", &[u])))]));
    let big = format!("GET / HTTP/1.1\r\nHost: g.example\r\nX-Big: {}\r\n\r\n", "a".repeat(40 << 10));
    let (out, _) = raw(a, big.as_bytes(), Duration::from_secs(3)).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let (out, _) =
        raw(a, format!("GET / HTTP/1.1\r\nHost: g.example\r\n{many}\r\n").as_bytes(), Duration::from_secs(3)).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    for junk in [
        &b"\x00\x01\x02garbage\r\n\r\n"[..],
        b"GET http://g.example/abs HTTP/1.1\r\nHost: other.example\r\n\r\n",
        b"CONNECT g.example:443 HTTP/1.1\r\nHost: g.example:443\r\n\r\n",
        b"GET /%zz HTTP/1.1\r\nHost: g.example\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: g.example\r\nHost: h.example\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: g.example\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00garbage",
    ] {
        let _ = raw(a, junk, Duration::from_millis(500)).await;
    }
    // The absolute-form URI's host wins over Host.
    let (out, _) = raw(
        a,
        b"GET http://g.example/abs HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200") && out.contains("uri /abs"), "{out}");
    assert_eq!(get(a, "g.example", "/").await.status, 200);
}

#[tokio::test]
async fn metrics_and_healthz() {
    let u = upstream("u").await;
    let p = proxy().await;
    let a = http_addr(&p);
    let m = p.local_addrs().metrics[0];
    // Not ready before the first table: no route is known yet.
    assert_eq!(get(m, "x", "/healthz").await.status, 503);
    let mut t = table_prefixes("m.example", vec![("/", svc("m.example", "/", backend("u", &[u])))]);
    t.generation = 7;
    p.install(t);
    assert_eq!(get(a, "m.example", "/").await.status, 200);
    assert_eq!(get(a, "none.example", "/").await.status, 404);
    let h = get(m, "x", "/healthz").await;
    assert_eq!((h.status, h.body.as_str()), (200, "ok"));
    let text = get(m, "x", "/metrics").await.body;
    for name in [
        "nginx_ingress_controller_requests{",
        "nginx_ingress_controller_request_duration_seconds_bucket{",
        "nginx_ingress_controller_response_duration_seconds_count{",
        "nginx_ingress_controller_config_last_reload_successful 1",
        "nginx_ingress_controller_config_last_reload_successful_timestamp_seconds",
        "nginx_ingress_controller_success 1",
        "weft_ingress_tls_handshakes_total",
    ] {
        assert!(text.contains(name), "{name} missing in\n{text}");
    }
    assert!(text.contains("ingress=\"ing\",namespace=\"default\",service=\"u\",host=\"m.example\",path=\"/\",method=\"GET\",status=\"200\"} 1"), "{text}");
    assert!(text.contains("status=\"404\"} 1"), "{text}");
}

/// On HTTP/2 (hyper's path) a request is recorded when its body has gone, as on HTTP/1:
/// the request duration runs to the last byte, the response duration to the endpoint's head.
#[tokio::test]
async fn http2_request_duration_runs_to_the_last_body_byte() {
    let u = upstream("u").await;
    let p = proxy().await;
    p.install(table_prefixes("d.example", vec![("/", svc("d.example", "/", backend("u", &[u])))]));
    let s = TcpStream::connect(http_addr(&p)).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s)).await.unwrap();
    tokio::spawn(conn);
    let r = Request::builder().uri("http://d.example/drip").body(Full::<Bytes>::default()).unwrap();
    let g = collect(tx.send_request(r).await.unwrap()).await;
    assert_eq!((g.status, g.body.as_str()), (200, "late body"));
    let text = get(p.local_addrs().metrics[0], "x", "/metrics").await.body;
    let sum = |metric: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{metric}_sum{{")) && l.contains("host=\"d.example\""))
            .unwrap_or_else(|| panic!("no {metric}_sum for d.example in\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let request = sum("nginx_ingress_controller_request_duration_seconds");
    let response = sum("nginx_ingress_controller_response_duration_seconds");
    assert!(request >= 1.0, "the request took the body's second: {request}\n{text}");
    assert!(response < 0.9, "the endpoint's head came at once: {response}");
}

#[tokio::test]
async fn grpc_route_from_an_http1_client_goes_on_as_http2() {
    let u = upstream("g").await;
    let p = proxy().await;
    let mut b = backend("g", &[u]);
    b.protocol = BackendProtocol::Grpc;
    p.install(table_prefixes("g.example", vec![("/", svc("g.example", "/", b))]));
    // As nginx's grpc_pass: the request goes to the endpoint as HTTP/2, its answer comes back
    // as HTTP/1.1 (two on one connection: the second after the hand-over to hyper).
    let one = "POST /grpc.Echo/Say HTTP/1.1\r\nHost: g.example\r\nContent-Type: application/grpc\r\nTE: trailers\r\nContent-Length: 10\r\n\r\n\0\0\0\0\x05hello";
    let (out, _) = raw(http_addr(&p), format!("{one}{one}").as_bytes(), Duration::from_secs(2)).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(out.matches("version HTTP/2.0").count(), 2, "{out}");
    assert!(out.contains("body 10"), "{out}");
}
