//! The built-in servers that stand in for container images (images cannot be pulled here):
//! an HTTP echo on every TCP port that tells who answered and who asked (pod, pod IP, port,
//! client address, host, method, path, protocol version, headers), a UDP echo on UDP ports, and
//! the `agnhost` verbs `netexec` (/hostname, /clientip, /echo?msg=) and `serve-hostname`. On the
//! same TCP ports, as agnhost's images offer: a WebSocket echo (an HTTP/1.1 upgrade to
//! `websocket` on any path answers 101 and sends every text or binary message back) and the gRPC
//! health service (`grpc.health.v1.Health/Check` answers SERVING for any service name) over h2c.

use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::Result;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{HeaderMap, Request, Response, Version, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::{TcpListener, UdpSocket};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

type Body = BoxBody<Bytes, Infallible>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    Echo,
    ServeHostname,
    Netexec,
}

#[derive(Clone, Debug)]
pub struct Builtin {
    pub pod: String,
    pub namespace: String,
    pub mode: Mode,
    pub tcp: Vec<u16>,
    pub udp: Vec<u16>,
}

fn hostname() -> String {
    nix::unistd::gethostname().map(|h| h.to_string_lossy().to_string()).unwrap_or_default()
}

fn answer(b: &Builtin, req: &Request<Incoming>, local: SocketAddr, peer: SocketAddr) -> (u16, String, &'static str) {
    let path = req.uri().path();
    let query = req.uri().query().unwrap_or("");
    match (&b.mode, path) {
        (_, "/healthz") | (_, "/readyz") => (200, "ok".into(), "text/plain"),
        (Mode::ServeHostname, _) | (_, "/hostname") => (200, hostname(), "text/plain"),
        (_, "/clientip") => (200, peer.to_string(), "text/plain"),
        (Mode::Netexec, "/echo") => {
            let msg = url_param(query, "msg").unwrap_or_default();
            (200, msg, "text/plain")
        }
        _ => {
            let headers: serde_json::Map<String, serde_json::Value> =
                req.headers().iter().map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or("")))).collect();
            let body = json!({
                "pod": b.pod, "namespace": b.namespace, "hostname": hostname(),
                "podIP": local.ip().to_string(), "port": local.port(),
                "client": peer.to_string(), "clientIP": peer.ip().to_string(),
                "host": req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or(""),
                "method": req.method().as_str(), "path": path, "query": query, "headers": headers,
                "proto": format!("{:?}", req.version()),
            });
            (200, format!("{body}\n"), "application/json")
        }
    }
}

fn url_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.replace('+', " "))
    })
}

async fn serve_tcp(b: Builtin, port: u16) -> Result<()> {
    let l = TcpListener::bind(("::", port)).await.or(TcpListener::bind(("0.0.0.0", port)).await)?;
    serve_listener(b, l).await
}

async fn serve_listener(b: Builtin, l: TcpListener) -> Result<()> {
    loop {
        let (s, peer) = l.accept().await?;
        let local = s.local_addr()?;
        let b = b.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let b = b.clone();
                async move { Ok::<_, Infallible>(handle(&b, req, unmap(local), unmap(peer)).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(s), svc)
                .await;
        });
    }
}

async fn handle(b: &Builtin, req: Request<Incoming>, local: SocketAddr, peer: SocketAddr) -> Response<Body> {
    if is_websocket(&req) {
        return websocket(req);
    }
    if is_grpc(req.headers()) {
        return grpc(req).await;
    }
    let (code, body, ct) = answer(b, &req, local, peer);
    Response::builder().status(code).header("content-type", ct).body(Full::new(Bytes::from(body)).boxed()).unwrap()
}

/// The largest WebSocket message echoed, and the largest gRPC request read.
const MAX_MESSAGE: usize = 1 << 20;

/// An HTTP/1.1 GET asking to upgrade to a WebSocket, with a key.
fn is_websocket(req: &Request<Incoming>) -> bool {
    let h = req.headers();
    let has = |name: header::HeaderName, token: &str| {
        h.get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|v| v.trim().eq_ignore_ascii_case(token))
    };
    req.version() == Version::HTTP_11
        && req.method() == http::Method::GET
        && has(header::CONNECTION, "upgrade")
        && has(header::UPGRADE, "websocket")
        && h.contains_key(header::SEC_WEBSOCKET_KEY)
}

/// 101 Switching Protocols, then every text or binary message sent back as it came (pings are
/// answered, a close is returned) on a task of its own.
fn websocket(mut req: Request<Incoming>) -> Response<Body> {
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY).map(|k| k.as_bytes().to_vec()).unwrap_or_default();
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let config = WebSocketConfig::default().max_message_size(Some(MAX_MESSAGE)).max_frame_size(Some(MAX_MESSAGE));
        let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
        while let Some(Ok(msg)) = ws.next().await {
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    Response::builder()
        .status(http::StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, derive_accept_key(&key))
        .body(Full::new(Bytes::new()).boxed())
        .unwrap()
}

/// A gRPC call: `content-type: application/grpc` (or `application/grpc+...`).
fn is_grpc(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|c| {
        c == "application/grpc" || c.starts_with("application/grpc+") || c.starts_with("application/grpc;")
    })
}

/// The gRPC health service's Check: `HealthCheckResponse{status: SERVING}` for any request
/// message; any other method is UNIMPLEMENTED, as grpc-go answers it.
async fn grpc(req: Request<Incoming>) -> Response<Body> {
    const CHECK: &str = "/grpc.health.v1.Health/Check";
    let path = req.uri().path().to_string();
    // The request message is read (bounded) so the stream ends cleanly; its service is not looked at.
    let read = Limited::new(req.into_body(), MAX_MESSAGE).collect().await;
    let grpc_response = Response::builder().status(200).header(header::CONTENT_TYPE, "application/grpc");
    if path != CHECK {
        let method = path.trim_start_matches('/');
        let (code, message) = match method.rsplit_once('/') {
            Some(("grpc.health.v1.Health", m)) => (12, format!("unknown method {m} for service grpc.health.v1.Health")),
            Some((svc, _)) => (12, format!("unknown service {svc}")),
            None => (12, format!("malformed method name: {path:?}")),
        };
        // Trailers-only: the status in the headers.
        return grpc_response
            .header("grpc-status", code.to_string())
            .header("grpc-message", message.replace(' ', "%20"))
            .body(Full::new(Bytes::new()).boxed())
            .unwrap();
    }
    if read.is_err() {
        return grpc_response
            .header("grpc-status", "8")
            .header("grpc-message", "grpc:%20received%20message%20larger%20than%20max")
            .body(Full::new(Bytes::new()).boxed())
            .unwrap();
    }
    // Field 1 (status), varint 1 (SERVING).
    let message = crate::grpc_probe::grpc_frame(&[0x08, 0x01]);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let frames: Vec<Result<Frame<Bytes>, Infallible>> =
        vec![Ok(Frame::data(Bytes::from(message))), Ok(Frame::trailers(trailers))];
    grpc_response.body(BodyExt::boxed(StreamBody::new(futures::stream::iter(frames)))).unwrap()
}

/// IPv4 peers on a dual-stack socket show up as ::ffff:a.b.c.d.
fn unmap(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}

async fn serve_udp(b: Builtin, port: u16) -> Result<()> {
    let s = UdpSocket::bind(("0.0.0.0", port)).await?;
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, peer) = s.recv_from(&mut buf).await?;
        let msg = String::from_utf8_lossy(&buf[..n]).trim().to_string();
        let reply = match msg.as_str() {
            "hostname" => hostname(),
            "clientip" => peer.to_string(),
            m if m.starts_with("echo ") => m[5..].to_string(),
            _ if b.mode == Mode::Echo => format!("{} {} {}", b.pod, peer, msg),
            _ => msg,
        };
        let _ = s.send_to(reply.as_bytes(), peer).await;
    }
}

pub async fn run(b: Builtin) -> Result<()> {
    let mut tasks = vec![];
    for p in b.tcp.clone() {
        tasks.push(tokio::spawn(serve_tcp(b.clone(), p)));
    }
    for p in b.udp.clone() {
        tasks.push(tokio::spawn(serve_udp(b.clone(), p)));
    }
    if tasks.is_empty() {
        // Nothing to serve: stay up like a container's idle main process.
        futures::future::pending::<()>().await;
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// The repository part of an image reference, without registry, tag or digest
/// (`registry.k8s.io/coredns/coredns:v1.11.3` is `coredns`).
fn image_name(image: &str) -> &str {
    let path = image.split('@').next().unwrap_or("");
    // A tag follows the last ':' after the last '/' (a ':' before it is a registry's port).
    let path = match path.rfind(':') {
        Some(i) if i > path.rfind('/').unwrap_or(0) => &path[..i],
        _ => path,
    };
    path.rsplit('/').next().unwrap_or("")
}

/// A command of weft's own image (`weft`, any registry and tag: what `deploy/` runs) as the
/// lab runs it from the host's build: `weft ...` is this `weft` executable, `weft-dns ...` the
/// `weft-dns` binary next to it if there is one (the cluster DNS alone, smaller in memory),
/// else `weft dns ...`; `weft-ingress ...` likewise the `weft-ingress` binary, else
/// `weft ingress ...`. Any other command or image: None (it runs as written).
pub fn weft_image_command(image: &str, argv: &[String], weft_exe: &std::path::Path) -> Option<Vec<String>> {
    if image_name(image) != "weft" {
        return None;
    }
    let (first, rest) = argv.split_first()?;
    let mut out = match first.as_str() {
        "weft" => vec![weft_exe.display().to_string()],
        // A server of its own: its binary beside weft, else weft's subcommand of that name.
        alone @ ("weft-dns" | "weft-ingress") => match weft_exe.with_file_name(alone) {
            bin if bin.is_file() => vec![bin.display().to_string()],
            _ => vec![weft_exe.display().to_string(), alone.trim_start_matches("weft-").into()],
        },
        _ => return None,
    };
    out.extend(rest.iter().cloned());
    Some(out)
}

/// What a container without a command of its own runs, from its image and ports: the `agnhost`
/// verbs for agnhost images, otherwise the echo server on the declared ports (or the image's
/// usual port for well-known web servers).
pub fn plan(image: &str, args: &[String], tcp: &[u16], udp: &[u16]) -> (Mode, Vec<u16>, Vec<u16>) {
    let base = image.rsplit('/').next().unwrap_or(image).split(':').next().unwrap_or("");
    let flag = |name: &str| -> Option<u16> {
        args.iter().find_map(|a| a.strip_prefix(&format!("--{name}=")).and_then(|v| v.parse().ok()))
    };
    if base == "agnhost" || base == "serve_hostname" {
        match args.first().map(|s| s.as_str()) {
            Some("netexec") => {
                let http = flag("http-port").unwrap_or(8080);
                let mut u = vec![];
                if let Some(p) = flag("udp-port") {
                    u.push(p);
                } else {
                    u.push(8081);
                }
                return (Mode::Netexec, vec![http], u);
            }
            Some("serve-hostname") | None if base == "serve_hostname" || !args.is_empty() => {
                let p = flag("port").unwrap_or(9376);
                let udp_on = args.iter().any(|a| a == "--udp");
                return (
                    Mode::ServeHostname,
                    if udp_on { vec![] } else { vec![p] },
                    if udp_on { vec![p] } else { vec![] },
                );
            }
            _ => {}
        }
    }
    let mut tcp = tcp.to_vec();
    if tcp.is_empty() && udp.is_empty() && ["nginx", "httpd", "caddy", "traefik", "apache"].contains(&base) {
        tcp.push(80);
    }
    (Mode::Echo, tcp, udp.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans() {
        assert_eq!(plan("nginx", &[], &[], &[]).1, vec![80]);
        assert_eq!(plan("nginx:1.25", &[], &[8080], &[]).1, vec![8080]);
        let a: Vec<String> = vec!["netexec".into(), "--http-port=8081".into()];
        assert_eq!(plan("registry.k8s.io/e2e-test-images/agnhost:2.45", &a, &[], &[]).0, Mode::Netexec);
        let s: Vec<String> = vec!["serve-hostname".into()];
        assert_eq!(plan("agnhost", &s, &[], &[]), (Mode::ServeHostname, vec![9376], vec![]));
        assert_eq!(plan("busybox", &[], &[], &[]).1, Vec::<u16>::new());
    }

    #[test]
    fn weft_image_commands_run_the_hosts_build() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("weft");
        let exe_s = exe.display().to_string();
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let dns = v(&["weft-dns", "--cluster-domain=cluster.local"]);
        // Without a weft-dns binary beside weft: `weft dns`, the arguments kept.
        assert_eq!(
            weft_image_command("weft:latest", &dns, &exe),
            Some(v(&[&exe_s, "dns", "--cluster-domain=cluster.local"]))
        );
        assert_eq!(weft_image_command("ghcr.io/x/weft", &v(&["weft", "agent"]), &exe), Some(v(&[&exe_s, "agent"])));
        assert_eq!(weft_image_command("localhost:5000/weft@sha256:ab", &v(&["weft"]), &exe), Some(v(&[&exe_s])));
        // With one: that binary.
        std::fs::write(dir.path().join("weft-dns"), "").unwrap();
        let alone = dir.path().join("weft-dns").display().to_string();
        assert_eq!(weft_image_command("weft", &dns, &exe), Some(v(&[&alone, "--cluster-domain=cluster.local"])));
        // The ingress controller likewise.
        let ingress = v(&["weft-ingress", "--publish-service=kube-system/weft-ingress"]);
        assert_eq!(
            weft_image_command("weft:latest", &ingress, &exe),
            Some(v(&[&exe_s, "ingress", "--publish-service=kube-system/weft-ingress"]))
        );
        std::fs::write(dir.path().join("weft-ingress"), "").unwrap();
        let alone = dir.path().join("weft-ingress").display().to_string();
        assert_eq!(
            weft_image_command("weft", &ingress, &exe),
            Some(v(&[&alone, "--publish-service=kube-system/weft-ingress"]))
        );
        // Other commands, other images (CoreDNS's too) and no command run as written.
        assert_eq!(weft_image_command("weft:latest", &v(&["sh", "-c", "true"]), &exe), None);
        assert_eq!(weft_image_command("weft-helper:1", &dns, &exe), None);
        assert_eq!(weft_image_command("registry.k8s.io/coredns/coredns:v1.11.3", &dns, &exe), None);
        assert_eq!(weft_image_command("weft", &[], &exe), None);
    }

    fn echo() -> Builtin {
        Builtin { pod: "echo-pod".into(), namespace: "default".into(), mode: Mode::Echo, tcp: vec![], udp: vec![] }
    }

    /// The echo server on a loopback port of its own, on `rt`.
    fn start(rt: &tokio::runtime::Runtime) -> SocketAddr {
        let l = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = l.local_addr().unwrap();
        rt.spawn(serve_listener(echo(), l));
        addr
    }

    #[test]
    fn websocket_upgrades_echo_messages_on_any_path() {
        use tokio_tungstenite::tungstenite::Message;
        let rt = tokio::runtime::Runtime::new().unwrap();
        let addr = start(&rt);
        rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(10), async {
                let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
                let (mut ws, resp) =
                    tokio_tungstenite::client_async(format!("ws://{addr}/some/path"), tcp).await.unwrap();
                assert_eq!(resp.status(), 101);
                for msg in [Message::text("hello"), Message::binary(vec![0u8, 1, 2, 255]), Message::text("again")] {
                    ws.send(msg.clone()).await.unwrap();
                    assert_eq!(ws.next().await.unwrap().unwrap(), msg);
                }
                ws.send(Message::Ping(Bytes::from_static(b"p"))).await.unwrap();
                assert_eq!(ws.next().await.unwrap().unwrap(), Message::Pong(Bytes::from_static(b"p")));
                ws.close(None).await.unwrap();
                // The close is answered and the stream ends.
                while let Some(m) = ws.next().await {
                    assert!(m.is_err() || m.unwrap().is_close());
                }
            })
            .await
            .expect("the WebSocket exchange within 10 s");
        });
        // A plain GET on the same port is still the JSON echo.
        let out = rt.block_on(get_json(addr, "/x")).unwrap();
        assert_eq!(out["pod"], "echo-pod");
        assert_eq!(out["path"], "/x");
        assert_eq!(out["proto"], "HTTP/1.1");
    }

    async fn get_json(addr: SocketAddr, path: &str) -> Result<serde_json::Value> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let (mut send, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let req = Request::get(path).header("host", "test").body(Full::new(Bytes::new()))?;
        let body = send.send_request(req).await?.into_body().collect().await?.to_bytes();
        Ok(serde_json::from_slice(&body)?)
    }

    #[test]
    fn grpc_health_check_answers_serving_over_h2c() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let addr = start(&rt);
        // The kubelet's own gRPC health probe is the client.
        let t = std::time::Duration::from_secs(5);
        assert_eq!(crate::grpc_probe::check(addr, "", t), Ok(()));
        assert_eq!(crate::grpc_probe::check(addr, "any.Service", t), Ok(()));
        // Another method: UNIMPLEMENTED, trailers-only.
        let status = rt.block_on(async {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut send, conn) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
                hyper_util::rt::TokioExecutor::new(),
                TokioIo::new(tcp),
            )
            .await
            .unwrap();
            tokio::spawn(conn);
            let req = Request::post(format!("http://{addr}/grpc.health.v1.Health/List"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(Full::new(Bytes::from(crate::grpc_probe::grpc_frame(b""))))
                .unwrap();
            let resp = send.send_request(req).await.unwrap();
            (resp.status(), resp.headers().get("grpc-status").cloned(), resp.headers().get("grpc-message").cloned())
        });
        assert_eq!(status.0, 200);
        assert_eq!(status.1.unwrap(), "12", "{:?}", status.2);
        assert_eq!(status.2.unwrap(), "unknown%20method%20List%20for%20service%20grpc.health.v1.Health");
    }
}
