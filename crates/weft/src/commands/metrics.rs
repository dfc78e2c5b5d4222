//! The metrics listener of `weft agent` (like kube-proxy's, on 127.0.0.1:10249 by default) and
//! of the lab daemon (a free loopback port, written to the lab's state directory for `weft
//! status`): `/metrics` in Prometheus' text format (the NetworkPolicy denial counters and the
//! service proxy's `kubeproxy_*` sync metrics) and `/healthz`; and `weft agent`'s health listener
//! (kube-proxy's `/healthz` and `/livez` on 0.0.0.0:10256). Served by weft-dns's HTTP server.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The file in a lab's state directory holding the daemon's metrics address.
pub const ADDR_FILE: &str = "metrics.addr";

fn respond(denials: &weft_policy::denials::Denials, proxy: &weft_proxy::stats::Stats, path: &str) -> (u16, String) {
    match path {
        "/metrics" => (200, denials.render() + &proxy.render()),
        "/healthz" => (200, "ok\n".into()),
        _ => (404, "not found\n".into()),
    }
}

/// Binds `addr` and serves the counters until the process ends; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    denials: weft_policy::denials::Denials,
    proxy: weft_proxy::stats::Stats,
) -> Result<SocketAddr> {
    let l = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("metrics listener on {addr}"))?;
    let bound = l.local_addr()?;
    tokio::spawn(weft_dns::metrics::serve_text(l, move |path| respond(&denials, &proxy, path)));
    Ok(bound)
}

/// Binds `addr` and answers `/healthz` and `/livez` as kube-proxy does (JSON; 503 when a change
/// has waited over a minute, or, for /healthz, when `eligible` says the node is going away).
pub async fn serve_health(
    addr: SocketAddr,
    proxy: weft_proxy::stats::Stats,
    eligible: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Result<SocketAddr> {
    use std::sync::atomic::Ordering;
    let l = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("healthz listener on {addr}"))?;
    let bound = l.local_addr()?;
    tokio::spawn(weft_dns::metrics::serve_typed(l, move |path| {
        let now = std::time::SystemTime::now();
        let timeout = weft_proxy::stats::HEALTH_TIMEOUT;
        let (code, body) = match path {
            "/healthz" => proxy.health(now, timeout, Some(eligible.load(Ordering::Relaxed))),
            "/livez" => proxy.health(now, timeout, None),
            _ => return (404, "text/plain", "404 page not found\n".into()),
        };
        (code, "application/json", body)
    }));
    Ok(bound)
}

/// Fetches `/metrics` from a lab daemon whose state directory is `dir` (bounded in time).
pub async fn scrape(dir: &Path) -> Result<String> {
    let addr = std::fs::read_to_string(dir.join(ADDR_FILE)).context("the daemon wrote no metrics address")?;
    let addr: SocketAddr = addr.trim().parse().context("the metrics address is not an address")?;
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: weft\r\n\r\n").await?;
        let mut out = Vec::new();
        s.take(16 << 20).read_to_end(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    let raw = tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .context("the metrics listener did not answer within 5 s")?
        .with_context(|| format!("reading {addr}/metrics"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").context("a malformed HTTP answer")?;
    anyhow::ensure!(head.starts_with("HTTP/1.") && head.contains(" 200 "), "metrics answered {head:?}");
    Ok(body.to_string())
}
