//! The built-in servers that stand in for container images (images cannot be pulled here):
//! an HTTP echo on every TCP port that tells who answered and who asked (pod, pod IP, client
//! address, host, path, headers), a UDP echo on UDP ports, and the `agnhost` verbs `netexec`
//! (/hostname, /clientip, /echo?msg=) and `serve-hostname`.

use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::Result;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::json;
use tokio::net::{TcpListener, UdpSocket};

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
    loop {
        let (s, peer) = l.accept().await?;
        let local = s.local_addr()?;
        let b = b.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (code, body, ct) = answer(&b, &req, unmap(local), unmap(peer));
                async move {
                    Ok::<_, Infallible>(
                        Response::builder()
                            .status(code)
                            .header("content-type", ct)
                            .body(Full::new(Bytes::from(body)))
                            .unwrap(),
                    )
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                .await;
        });
    }
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
/// else `weft dns ...`. Any other command or image: None (it runs as written).
pub fn weft_image_command(image: &str, argv: &[String], weft_exe: &std::path::Path) -> Option<Vec<String>> {
    if image_name(image) != "weft" {
        return None;
    }
    let (first, rest) = argv.split_first()?;
    let mut out = match first.as_str() {
        "weft" => vec![weft_exe.display().to_string()],
        "weft-dns" => match weft_exe.with_file_name("weft-dns") {
            alone if alone.is_file() => vec![alone.display().to_string()],
            _ => vec![weft_exe.display().to_string(), "dns".into()],
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
        // Other commands, other images (CoreDNS's too) and no command run as written.
        assert_eq!(weft_image_command("weft:latest", &v(&["sh", "-c", "true"]), &exe), None);
        assert_eq!(weft_image_command("weft-helper:1", &dns, &exe), None);
        assert_eq!(weft_image_command("registry.k8s.io/coredns/coredns:v1.11.3", &dns, &exe), None);
        assert_eq!(weft_image_command("weft", &[], &exe), None);
    }
}
