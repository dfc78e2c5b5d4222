//! Prometheus metrics (CoreDNS's `prometheus` plugin, under `weft_dns_`), and the `health`,
//! `ready` and `metrics` HTTP endpoints. The per-query counters are resolved once into arrays,
//! so the hot path does no label lookup.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http_body_util::Full;
use hyper::body::Bytes;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::wire;

/// Query types counted by name; others are counted as "other".
const TYPES: [(u16, &str); 10] = [
    (wire::T_A, "A"),
    (wire::T_AAAA, "AAAA"),
    (wire::T_SRV, "SRV"),
    (wire::T_PTR, "PTR"),
    (wire::T_TXT, "TXT"),
    (wire::T_SOA, "SOA"),
    (wire::T_NS, "NS"),
    (wire::T_CNAME, "CNAME"),
    (wire::T_ANY, "ANY"),
    (0, "other"),
];
const RCODES: [&str; 6] = ["NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED"];

pub struct Metrics {
    registry: Registry,
    requests: Vec<[Counter; 2]>,
    responses: Vec<Counter>,
    pub duration: Histogram,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub cache_entries: Gauge,
    pub cache_bytes: Gauge,
    pub forward_requests: Family<Vec<(String, String)>, Counter>,
    pub forward_errors: Family<Vec<(String, String)>, Counter>,
    pub forward_max_concurrent_rejects: Counter,
    pub upstream_healthy: Family<Vec<(String, String)>, Gauge>,
    pub forward_loop: Family<Vec<(String, String)>, Gauge>,
    pub zone_names: Gauge,
    pub zone_builds: Counter,
    pub malformed: Counter,
    /// The zone has been built from a complete list of the cluster's objects.
    pub ready: AtomicBool,
    /// Problems worth a human's attention (forwarding loops), shown by /health.
    pub problems: std::sync::Mutex<Vec<String>>,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("weft_dns");
        let req: Family<Vec<(String, String)>, Counter> = Family::default();
        registry.register("requests", "DNS requests by transport and query type", req.clone());
        let requests = TYPES
            .iter()
            .map(|(_, t)| {
                ["udp", "tcp"]
                    .map(|p| req.get_or_create(&vec![("proto".into(), p.into()), ("type".into(), (*t).into())]).clone())
            })
            .collect();
        let resp: Family<Vec<(String, String)>, Counter> = Family::default();
        registry.register("responses", "DNS responses by rcode", resp.clone());
        let mut responses: Vec<Counter> =
            RCODES.iter().map(|r| resp.get_or_create(&vec![("rcode".into(), (*r).into())]).clone()).collect();
        responses.push(resp.get_or_create(&vec![("rcode".into(), "other".into())]).clone());
        let duration =
            Histogram::new([0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.0]);
        registry.register("request_duration_seconds", "Time to answer a request", duration.clone());
        let m = Metrics {
            requests,
            responses,
            duration,
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            cache_entries: Gauge::default(),
            cache_bytes: Gauge::default(),
            forward_requests: Family::default(),
            forward_errors: Family::default(),
            forward_max_concurrent_rejects: Counter::default(),
            upstream_healthy: Family::default(),
            forward_loop: Family::default(),
            zone_names: Gauge::default(),
            zone_builds: Counter::default(),
            malformed: Counter::default(),
            ready: AtomicBool::new(false),
            problems: Default::default(),
            registry,
        };
        let mut m = m;
        let r = &mut m.registry;
        r.register("cache_hits", "Forwarded answers served from the cache", m.cache_hits.clone());
        r.register("cache_misses", "Forwarded queries not in the cache", m.cache_misses.clone());
        r.register("cache_entries", "Entries in the cache", m.cache_entries.clone());
        r.register("cache_bytes", "Bytes the cache's entries take (messages and names)", m.cache_bytes.clone());
        r.register("forward_requests", "Queries sent upstream", m.forward_requests.clone());
        r.register(
            "forward_errors",
            "Upstream queries that failed (timeout, refused, bad reply)",
            m.forward_errors.clone(),
        );
        r.register(
            "forward_max_concurrent_rejects",
            "Queries refused because max_concurrent queries were waiting on upstreams",
            m.forward_max_concurrent_rejects.clone(),
        );
        r.register("upstream_healthy", "1 when the upstream answers its health check", m.upstream_healthy.clone());
        r.register(
            "forward_loop",
            "1 when queries sent to this upstream come back to this server",
            m.forward_loop.clone(),
        );
        r.register("zone_names", "Names in the cluster zone index", m.zone_names.clone());
        r.register("zone_builds", "Times the cluster zone index was rebuilt", m.zone_builds.clone());
        r.register("malformed", "Packets that were not well-formed queries", m.malformed.clone());
        Arc::new(m)
    }

    pub fn request(&self, qtype: u16, tcp: bool) {
        let i = TYPES.iter().position(|(t, _)| *t == qtype).unwrap_or(TYPES.len() - 1);
        self.requests[i][tcp as usize].inc();
    }

    pub fn response(&self, rcode: u8) {
        let i = (rcode as usize).min(self.responses.len() - 1);
        self.responses[i].inc();
    }

    pub fn upstream_label(addr: SocketAddr) -> Vec<(String, String)> {
        vec![("to".into(), addr.to_string())]
    }

    pub fn problem(&self, text: String) {
        let mut p = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        if !p.contains(&text) {
            p.push(text);
        }
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = encode(&mut s, &self.registry);
        s
    }
}

fn respond(m: &Metrics, path: &str) -> (u16, String) {
    match path {
        "/health" => {
            let p = m.problems.lock().unwrap_or_else(|e| e.into_inner());
            (200, if p.is_empty() { "OK\n".into() } else { format!("OK\n{}\n", p.join("\n")) })
        }
        "/ready" if m.ready.load(Ordering::Relaxed) => (200, "OK\n".into()),
        "/ready" => (503, "the cluster zone is not built yet\n".into()),
        "/metrics" => (200, m.render()),
        _ => (404, "not found\n".into()),
    }
}

/// Serves /health, /ready and /metrics (every path on every port given, as they are cheap).
pub async fn serve_http(l: tokio::net::TcpListener, m: Arc<Metrics>) {
    serve_text(l, move |path| respond(&m, path)).await
}

/// A small plain-text HTTP server (Prometheus' text format): `answer` maps a path to a status and
/// a body. A failing accept backs off briefly; a connection lasts at most 30 s. Shared with the
/// `weft agent` and lab daemon metrics listener.
pub async fn serve_text<F>(l: tokio::net::TcpListener, answer: F)
where
    F: Fn(&str) -> (u16, String) + Clone + Send + Sync + 'static,
{
    serve_typed(l, move |path| {
        let (code, body) = answer(path);
        (code, "text/plain; version=0.0.4", body)
    })
    .await
}

/// As `serve_text`, with the content type of each answer chosen by `answer`.
pub async fn serve_typed<F>(l: tokio::net::TcpListener, answer: F)
where
    F: Fn(&str) -> (u16, &'static str, String) + Clone + Send + Sync + 'static,
{
    loop {
        let Ok((s, _)) = l.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let answer = answer.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let (code, content_type, body) = answer(req.uri().path());
                async move {
                    hyper::Response::builder()
                        .status(code)
                        .header("content-type", content_type)
                        .header("x-content-type-options", "nosniff")
                        .body(Full::new(Bytes::from(body)))
                }
            });
            let io = hyper_util::rt::TokioIo::new(s);
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(30),
                hyper::server::conn::http1::Builder::new().serve_connection(io, svc),
            )
            .await;
        });
    }
}
