//! Prometheus metrics under ingress-nginx's names where the meaning is the same.
//!
//! The request path never touches the registry: each worker adds to its own map (a lock no
//! other thread takes except a scrape), keyed by route and status; a scrape drains the maps
//! into the labelled families. Counters that ingress-nginx exposes without `_total`
//! (`nginx_ingress_controller_requests`, `..._success`) keep that exact name, so dashboards
//! written for ingress-nginx work; OpenMetrics would force the suffix on a `counter`, so they
//! are typed `unknown` (Prometheus stores them the same way, and `rate()` works on them).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::Route;

/// Prometheus's default buckets, as ingress-nginx uses for its duration histograms.
const BOUNDS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct HistData {
    sum: f64,
    count: u64,
    buckets: [u64; 12],
}

impl HistData {
    fn observe(&mut self, d: Duration) {
        let v = d.as_secs_f64();
        self.sum += v;
        self.count += 1;
        let i = BOUNDS.iter().position(|b| v <= *b).unwrap_or(BOUNDS.len());
        self.buckets[i] += 1;
    }
    fn add(&mut self, o: &HistData) {
        self.sum += o.sum;
        self.count += o.count;
        for (a, b) in self.buckets.iter_mut().zip(o.buckets) {
            *a += b;
        }
    }
}

/// A histogram filled from the workers' sums at scrape time.
#[derive(Clone, Debug, Default)]
struct Hist(Arc<Mutex<HistData>>);

impl TypedMetric for Hist {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Hist {
    fn encode(&self, mut encoder: MetricEncoder) -> std::fmt::Result {
        let d = *self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut buckets = [(0.0, 0); 12];
        for (i, b) in buckets.iter_mut().enumerate() {
            *b = (BOUNDS.get(i).copied().unwrap_or(f64::MAX), d.buckets[i]);
        }
        encoder.encode_histogram::<NoLabelSet>(d.sum, d.count, &buckets, None)
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// A counter exposed under its name as given (see the module's comment).
#[derive(Clone, Debug, Default)]
struct Untyped(Arc<AtomicU64>);

impl TypedMetric for Untyped {}

impl EncodeMetric for Untyped {
    fn encode(&self, mut encoder: MetricEncoder) -> std::fmt::Result {
        encoder.encode_gauge(&self.0.load(Ordering::Relaxed))
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Unknown
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    ingress: String,
    namespace: String,
    service: String,
    host: String,
    path: String,
    method: String,
    status: String,
}

/// What one worker counted since the last scrape, by route (its address: the route is held
/// in the value, so the key stays unique while it is here), canary, method and status.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct StatKey {
    pub(crate) route: usize,
    pub(crate) canary: u8,
    pub(crate) method: u8,
    pub(crate) status: u16,
}

pub(crate) struct StatVal {
    route: Option<Arc<Route>>,
    count: u64,
    request: HistData,
    response: HistData,
}

#[derive(Default)]
pub(crate) struct WorkerStats {
    map: Mutex<HashMap<StatKey, StatVal>>,
}

/// No canary: the route's own backend.
pub(crate) const MAIN: u8 = u8::MAX;

const METHODS: [&str; 10] = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE", "OTHER"];

pub(crate) fn method_index(m: &http::Method) -> u8 {
    method_index_str(m.as_str())
}

pub(crate) fn method_index_str(m: &str) -> u8 {
    METHODS.iter().position(|n| *n == m).unwrap_or(METHODS.len() - 1) as u8
}

impl WorkerStats {
    pub(crate) fn record(
        &self,
        route: Option<&Arc<Route>>,
        canary: u8,
        method: u8,
        status: u16,
        took: Duration,
        upstream: Option<Duration>,
    ) {
        let key = StatKey { route: route.map_or(0, |r| Arc::as_ptr(r) as usize), canary, method, status };
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let v = m.entry(key).or_insert_with(|| StatVal {
            route: route.cloned(),
            count: 0,
            request: HistData::default(),
            response: HistData::default(),
        });
        v.count += 1;
        v.request.observe(took);
        if let Some(u) = upstream {
            v.response.observe(u);
        }
    }
}

pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<Labels, Untyped>,
    request_duration: Family<Labels, Hist>,
    response_duration: Family<Labels, Hist>,
    reload_ok: Gauge,
    reload_time: Gauge<f64, AtomicU64>,
    reloads: Untyped,
    pub(crate) handshakes: Counter,
    workers: Mutex<Vec<Arc<WorkerStats>>>,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<Labels, Untyped>::default();
        let request_duration = Family::<Labels, Hist>::default();
        let response_duration = Family::<Labels, Hist>::default();
        let reload_ok = Gauge::default();
        let reload_time = Gauge::<f64, AtomicU64>::default();
        let reloads = Untyped::default();
        let handshakes = Counter::default();
        registry.register("nginx_ingress_controller_requests", "The total number of client requests", requests.clone());
        registry.register(
            "nginx_ingress_controller_request_duration_seconds",
            "The request processing time in seconds (to the response's headers)",
            request_duration.clone(),
        );
        registry.register(
            "nginx_ingress_controller_response_duration_seconds",
            "The time spent on receiving the response from the upstream server in seconds",
            response_duration.clone(),
        );
        registry.register(
            "nginx_ingress_controller_config_last_reload_successful",
            "Whether the last configuration reload attempt was successful",
            reload_ok.clone(),
        );
        registry.register(
            "nginx_ingress_controller_config_last_reload_successful_timestamp_seconds",
            "Timestamp of the last successful configuration reload",
            reload_time.clone(),
        );
        registry.register(
            "nginx_ingress_controller_success",
            "Cumulative number of Ingress controller reload operations",
            reloads.clone(),
        );
        registry.register("weft_ingress_tls_handshakes", "TLS handshakes completed", handshakes.clone());
        Metrics {
            registry,
            requests,
            request_duration,
            response_duration,
            reload_ok,
            reload_time,
            reloads,
            handshakes,
            workers: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn worker(&self) -> Arc<WorkerStats> {
        let w = Arc::new(WorkerStats::default());
        self.workers.lock().unwrap_or_else(|e| e.into_inner()).push(w.clone());
        w
    }

    pub(crate) fn reloaded(&self) {
        self.reload_ok.set(1);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        self.reload_time.set(now.as_secs_f64());
        self.reloads.0.fetch_add(1, Ordering::Relaxed);
    }

    /// The text exposition, after folding in what the workers counted.
    pub(crate) fn encode(&self) -> String {
        let workers = self.workers.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for w in workers {
            let drained = std::mem::take(&mut *w.map.lock().unwrap_or_else(|e| e.into_inner()));
            for (k, v) in drained {
                let l = labels(&k, v.route.as_deref());
                self.requests.get_or_create(&l).0.fetch_add(v.count, Ordering::Relaxed);
                self.request_duration.get_or_create(&l).0.lock().unwrap_or_else(|e| e.into_inner()).add(&v.request);
                if v.response.count > 0 {
                    self.response_duration
                        .get_or_create(&l)
                        .0
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .add(&v.response);
                }
            }
        }
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

fn labels(k: &StatKey, route: Option<&Route>) -> Labels {
    let (ingress, namespace, service, host, path) = match route {
        Some(r) => {
            let (ing, svc) = match (k.canary, &r.target) {
                (MAIN, crate::Target::Service(b)) => (&r.ingress, b.service.name.clone()),
                (MAIN, _) => (&r.ingress, String::new()),
                (i, _) => match r.canaries.get(i as usize) {
                    Some(c) => (&c.ingress, c.backend.service.name.clone()),
                    None => (&r.ingress, String::new()),
                },
            };
            (ing.name.clone(), ing.namespace.clone(), svc, r.host.clone(), r.path.clone())
        }
        None => Default::default(),
    };
    Labels {
        ingress,
        namespace,
        service,
        host,
        path,
        method: METHODS.get(k.method as usize).copied().unwrap_or("OTHER").to_string(),
        status: k.status.to_string(),
    }
}
