//! The data plane: hyper (HTTP/1.1 and HTTP/2 by ALPN) and rustls, serving the last installed
//! [`RouteTable`].
//!
//! Each worker is a thread with its own current-thread tokio runtime and its own listening
//! sockets on every address (`SO_REUSEPORT`: the kernel spreads connections over them), its
//! own keep-alive pools to endpoints and its own balancing and metrics state, so a request
//! never waits on another thread; the table is read once per request through an `ArcSwap`.

mod body;
mod decide;
mod h1;
mod handler;
mod metrics;
mod path;
mod timed_io;
mod tls;
mod upstream;

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::RouteTable;
pub use body::RespBody;
use timed_io::{Rewind, SendTimeout};
use upstream::Worker;

/// Where and how the proxy serves.
#[derive(Clone, Debug)]
pub struct Options {
    /// Plain HTTP listeners.
    pub http: Vec<SocketAddr>,
    /// TLS listeners.
    pub https: Vec<SocketAddr>,
    /// /healthz and Prometheus /metrics.
    pub metrics: Vec<SocketAddr>,
    /// Worker threads (0: one per core).
    pub threads: usize,
    /// A JSON access log line per request on stdout.
    pub access_log: bool,
}

/// What the proxy allows a client and keeps for endpoints (defaults: ingress-nginx's where it
/// has one).
#[derive(Clone, Debug)]
pub struct Limits {
    /// A request's headers must arrive within this (slowloris); an HTTP/1 connection idle
    /// between requests is closed after it too (`client-header-timeout`, 60 s).
    pub header_read_timeout: Duration,
    /// A TLS handshake must finish within this.
    pub handshake_timeout: Duration,
    /// Open client connections over all workers; more are closed on accept.
    pub max_connections: usize,
    /// The most bytes of a request head (HTTP/1; larger: 431). At least 8192.
    pub max_header_bytes: usize,
    /// The most header fields of a request (HTTP/1; more: 431).
    pub max_headers: usize,
    /// HTTP/2: concurrent streams per connection and the header list size.
    pub h2_max_concurrent_streams: u32,
    pub h2_max_header_list_size: u32,
    /// Idle keep-alive connections kept per endpoint and worker (`upstream-keepalive-connections`)
    /// and how long one may stay idle (`upstream-keepalive-timeout`).
    pub upstream_idle: usize,
    pub upstream_idle_timeout: Duration,
    /// A client that takes no bytes of a response for this long is dropped (nginx's
    /// `send_timeout`, 60 s), on every path (TLS records and HTTP/2 frames included).
    pub send_timeout: Duration,
    /// A connection served by hyper (HTTP/2, and HTTP/1 handed over for gRPC) with no request
    /// in flight for this long is shut down gracefully (GOAWAY; streams still open finish):
    /// nginx's `keepalive_timeout`, 75 s in ingress-nginx. The PINGs hyper sends keep no
    /// connection open by themselves.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(10),
            max_connections: 65536,
            max_header_bytes: 32 << 10,
            max_headers: 100,
            h2_max_concurrent_streams: 128,
            h2_max_header_list_size: 32 << 10,
            upstream_idle: 320,
            upstream_idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(75),
        }
    }
}

/// The addresses the proxy listens on (port 0 resolved).
#[derive(Clone, Debug, Default)]
pub struct LocalAddrs {
    pub http: Vec<SocketAddr>,
    pub https: Vec<SocketAddr>,
    pub metrics: Vec<SocketAddr>,
}

/// What every worker reads.
pub(crate) struct Shared {
    pub(crate) table: Arc<ArcSwap<RouteTable>>,
    pub(crate) metrics: metrics::Metrics,
    pub(crate) limits: Limits,
    /// The port of the first TLS listener, for redirects to HTTPS (omitted when 443).
    pub(crate) https_port: Option<u16>,
    pub(crate) conns: AtomicUsize,
    /// A table has been installed: until then /healthz is 503, so the pod is not Ready (and
    /// gets no Service traffic) before it knows any route, as ingress-nginx waits for its
    /// first configuration.
    pub(crate) installed: AtomicBool,
    pub(crate) tls: Option<tokio_rustls::TlsAcceptor>,
    pub(crate) upstream_tls_h1: Arc<rustls::ClientConfig>,
    pub(crate) upstream_tls_h2: Arc<rustls::ClientConfig>,
}

/// A running proxy; dropping it stops it (as [`Proxy::stop`] does, without waiting).
pub struct Proxy {
    shared: Arc<Shared>,
    addrs: LocalAddrs,
    stop: watch::Sender<bool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Proxy {
    /// Binds every listener (an error names the address) and starts serving an empty table
    /// (everything 404, /healthz 503) until [`Proxy::install`] is called.
    pub async fn start(opts: Options) -> anyhow::Result<Proxy> {
        Proxy::start_with(opts, Limits::default()).await
    }

    /// [`Proxy::start`] with other [`Limits`].
    pub async fn start_with(opts: Options, limits: Limits) -> anyhow::Result<Proxy> {
        let threads = match opts.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let mut addrs = LocalAddrs::default();
        // Per worker: its sockets, each with whether it speaks TLS.
        let mut per_worker: Vec<Vec<(std::net::TcpListener, bool)>> = (0..threads).map(|_| Vec::new()).collect();
        for (list, tls) in [(&opts.http, false), (&opts.https, true)] {
            for addr in list {
                let first = bind(*addr).with_context(|| format!("listening on {addr}"))?;
                let real = first.local_addr()?;
                if tls { &mut addrs.https } else { &mut addrs.http }.push(real);
                per_worker[0].push((first, tls));
                for w in per_worker.iter_mut().skip(1) {
                    w.push((bind(real).with_context(|| format!("listening on {real}"))?, tls));
                }
            }
        }
        let mut metric_listeners = Vec::new();
        for addr in &opts.metrics {
            let l = bind(*addr).with_context(|| format!("listening on {addr} (metrics)"))?;
            addrs.metrics.push(l.local_addr()?);
            metric_listeners.push(l);
        }

        let table = Arc::new(ArcSwap::from_pointee(RouteTable::default()));
        let cert_resolver = Arc::new(tls::Resolver { table: table.clone(), default: tls::default_cert()? });
        let tls = if opts.https.is_empty() {
            None
        } else {
            Some(tokio_rustls::TlsAcceptor::from(tls::server_config(cert_resolver)?))
        };
        let shared = Arc::new(Shared {
            table,
            metrics: metrics::Metrics::new(),
            https_port: addrs.https.first().map(|a| a.port()),
            limits,
            conns: AtomicUsize::new(0),
            installed: AtomicBool::new(false),
            tls,
            upstream_tls_h1: tls::client_config(b"http/1.1")?,
            upstream_tls_h2: tls::client_config(b"h2")?,
        });

        let log = opts.access_log.then(|| {
            let (tx, rx) = std::sync::mpsc::channel::<String>();
            let _ = std::thread::Builder::new().name("ingress-log".into()).spawn(move || write_log(rx));
            tx
        });
        let (stop, stop_rx) = watch::channel(false);
        let mut handles = Vec::new();
        for (i, listeners) in per_worker.into_iter().enumerate() {
            let (shared, stop_rx, log) = (shared.clone(), stop_rx.clone(), log.clone());
            let h = std::thread::Builder::new()
                .name(format!("ingress-{i}"))
                .spawn(move || worker_main(shared, listeners, stop_rx, log))
                .context("starting a proxy worker")?;
            handles.push(h);
        }
        if !metric_listeners.is_empty() {
            let (shared, stop_rx) = (shared.clone(), stop_rx.clone());
            let h = std::thread::Builder::new()
                .name("ingress-metrics".into())
                .spawn(move || metrics_main(shared, metric_listeners, stop_rx))
                .context("starting the metrics server")?;
            handles.push(h);
        }
        Ok(Proxy { shared, addrs, stop, threads: handles })
    }

    /// Makes `table` the one new requests are routed by; requests in flight and open
    /// connections (WebSockets among them) carry on.
    pub fn install(&self, table: RouteTable) {
        let generation = table.generation;
        self.shared.table.store(Arc::new(table));
        self.shared.metrics.reloaded();
        self.shared.installed.store(true, Ordering::Release);
        tracing::info!(generation, "route table installed");
    }

    /// Where the listeners are bound (ports chosen by the system for port 0).
    pub fn local_addrs(&self) -> &LocalAddrs {
        &self.addrs
    }

    /// The Prometheus text of the metrics, as `/metrics` serves it.
    pub fn metrics_text(&self) -> String {
        self.shared.metrics.encode()
    }

    /// Stops listening and closes every connection; returns when the workers have ended.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        let threads = std::mem::take(&mut self.threads);
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}

fn worker_main(
    shared: Arc<Shared>,
    listeners: Vec<(std::net::TcpListener, bool)>,
    mut stop: watch::Receiver<bool>,
    log: Option<std::sync::mpsc::Sender<String>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "proxy worker: no runtime");
            return;
        }
    };
    rt.block_on(async move {
        let worker = Arc::new(Worker::new(shared.clone(), log));
        let b = server_builder(&shared.limits);
        let builders = Arc::new(Builders { h2: b.clone().http2_only(), auto: b });
        for (l, tls) in listeners {
            match TcpListener::from_std(l) {
                Ok(l) => {
                    tokio::spawn(accept_loop(l, tls, worker.clone(), builders.clone()));
                }
                Err(e) => tracing::error!(error = %e, "proxy worker: listener"),
            }
        }
        let _ = stop.wait_for(|s| *s).await;
    });
    // Dropping the runtime drops every connection task of this worker.
}

fn server_builder(l: &Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(l.header_read_timeout)
        .max_buf_size(l.max_header_bytes.max(8192))
        .max_headers(l.max_headers);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(l.h2_max_concurrent_streams)
        .max_header_list_size(l.h2_max_header_list_size)
        .max_pending_accept_reset_streams(Some(100))
        .keep_alive_interval(Some(Duration::from_secs(60)));
    b
}

/// Decrements the connection count when a connection ends.
struct ConnSlot(Arc<Shared>);

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.conns.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a request knows of its connection.
pub(crate) struct ConnInfo {
    pub(crate) remote: SocketAddr,
    pub(crate) tls: bool,
    /// The client's address and the local port, as header values (made once per connection).
    pub(crate) remote_ip: http::HeaderValue,
    pub(crate) local_port: http::HeaderValue,
    /// The last `Forwarded` value made and the Host it was made for: a connection's
    /// requests nearly always name one host.
    pub(crate) last_forwarded: std::sync::Mutex<Option<(String, http::HeaderValue)>>,
}

impl ConnInfo {
    pub(crate) fn forwarded(&self, host: &str, make: impl FnOnce() -> String) -> Option<http::HeaderValue> {
        let mut last = self.last_forwarded.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((h, v)) = &*last
            && h == host
        {
            return Some(v.clone());
        }
        let v = http::HeaderValue::from_str(&make()).ok()?;
        *last = Some((host.to_string(), v.clone()));
        Some(v)
    }
}

async fn accept_loop(l: TcpListener, tls: bool, worker: Arc<Worker>, builders: Arc<Builders>) {
    let shared = worker.shared.clone();
    loop {
        let (s, remote) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors and the like: wait a little rather than spin.
                tracing::warn!(error = %e, "accept");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        if shared.conns.fetch_add(1, Ordering::Relaxed) >= shared.limits.max_connections {
            shared.conns.fetch_sub(1, Ordering::Relaxed);
            continue;
        }
        let slot = ConnSlot(shared.clone());
        let _ = s.set_nodelay(true);
        let local = s.local_addr().unwrap_or(remote);
        let ci = Arc::new(ConnInfo {
            remote,
            tls,
            remote_ip: http::HeaderValue::from_str(&remote.ip().to_string())
                .unwrap_or(http::HeaderValue::from_static("unknown")),
            local_port: http::HeaderValue::from(local.port()),
            last_forwarded: std::sync::Mutex::new(None),
        });
        let (worker, builders) = (worker.clone(), builders.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let limits = &worker.shared.limits;
            if tls {
                let Some(acceptor) = worker.shared.tls.clone() else { return };
                let s = SendTimeout::new(s, limits.send_timeout);
                let hs = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(s)).await;
                let Ok(Ok(s)) = hs else { return };
                worker.shared.metrics.handshakes.inc();
                // ALPN decides: no sniffing of the first bytes (which no timeout would cover).
                if s.get_ref().1.alpn_protocol() == Some(b"h2") {
                    serve(s, ci, worker, &builders.h2).await
                } else if let Some((s, pre)) = h1::serve(s, ci.clone(), worker.clone()).await {
                    serve(Rewind::new(s, pre), ci, worker, &builders.auto).await
                }
            } else {
                // The automatic builder reads the first bytes (h2c preface or not) before
                // hyper's header timeout starts: a client that sends nothing is timed here.
                let mut first = [0u8; 3];
                match tokio::time::timeout(limits.header_read_timeout, s.peek(&mut first)).await {
                    // Only an h2c preface starts with `PRI`: anything else is HTTP/1, served
                    // by the hand-written path (a lone `P` so far: hyper's sniffing decides).
                    Ok(Ok(n)) if n > 0 => {
                        let s = SendTimeout::new(s, limits.send_timeout);
                        if first[0] != b'P' || (n == 3 && &first != b"PRI") {
                            if let Some((s, pre)) = h1::serve(s, ci.clone(), worker.clone()).await {
                                serve(Rewind::new(s, pre), ci, worker, &builders.auto).await
                            }
                        } else {
                            serve(s, ci, worker, &builders.auto).await
                        }
                    }
                    _ => {}
                }
            }
        });
    }
}

/// A worker's hyper connection builders: by sniffing (plain port, h2c preface, and HTTP/1
/// connections [`h1`] hands over for gRPC), and for ALPN h2 (TLS). HTTP/1 is served by [`h1`].
struct Builders {
    auto: auto::Builder<TokioExecutor>,
    h2: auto::Builder<TokioExecutor>,
}

async fn serve<I>(io: I, ci: Arc<ConnInfo>, worker: Arc<Worker>, builder: &auto::Builder<TokioExecutor>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let idle_timeout = worker.shared.limits.idle_timeout;
    let activity = Arc::new(Activity::default());
    let act = activity.clone();
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (ci, worker) = (ci.clone(), worker.clone());
        let busy = act.begin();
        async move {
            let r = handler::handle(req, ci, worker).await;
            drop(busy);
            Ok::<_, Infallible>(r)
        }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    loop {
        let wait = activity.idle_left(idle_timeout);
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        if activity.idle_left(idle_timeout).is_zero() {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
            return;
        }
    }
}

/// Requests being handled on a hyper connection, and since when none has been.
struct Activity {
    start: tokio::time::Instant,
    in_flight: AtomicUsize,
    /// Milliseconds from `start` to when the last request in flight ended.
    idle_since_ms: AtomicU64,
}

impl Default for Activity {
    fn default() -> Activity {
        Activity {
            start: tokio::time::Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
        }
    }
}

/// A request in flight; its end is the connection's last activity.
struct Busy(Arc<Activity>);

impl Activity {
    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    /// How long until the connection has been idle for `limit` (`limit` while a request is
    /// in flight: checked again then).
    fn idle_left(&self, limit: Duration) -> Duration {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return limit;
        }
        let idle =
            self.start.elapsed().saturating_sub(Duration::from_millis(self.idle_since_ms.load(Ordering::Relaxed)));
        limit.saturating_sub(idle)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let a = &self.0;
        a.idle_since_ms.store(a.start.elapsed().as_millis() as u64, Ordering::Relaxed);
        a.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

fn write_log(rx: std::sync::mpsc::Receiver<String>) {
    let out = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(64 << 10, out.lock());
    while let Ok(line) = rx.recv() {
        let _ = out.write_all(line.as_bytes());
        // Flush when nothing else is waiting, so a quiet proxy's lines are not held back.
        while let Ok(line) = rx.try_recv() {
            let _ = out.write_all(line.as_bytes());
        }
        let _ = out.flush();
    }
}

fn metrics_main(shared: Arc<Shared>, listeners: Vec<std::net::TcpListener>, mut stop: watch::Receiver<bool>) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
    rt.block_on(async move {
        for l in listeners {
            let Ok(l) = TcpListener::from_std(l) else { continue };
            let shared = shared.clone();
            tokio::spawn(async move {
                while let Ok((s, _)) = l.accept().await {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                            let shared = shared.clone();
                            async move { Ok::<_, Infallible>(metrics_response(&req, &shared)) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .timer(TokioTimer::new())
                            .header_read_timeout(Duration::from_secs(30))
                            .serve_connection(TokioIo::new(s), svc)
                            .await;
                    });
                }
            });
        }
        let _ = stop.wait_for(|s| *s).await;
    });
}

fn metrics_response(req: &Request<Incoming>, shared: &Shared) -> Response<RespBody> {
    let (code, ctype, body) = match req.uri().path() {
        "/healthz" if !shared.installed.load(Ordering::Acquire) => {
            (503, "text/plain; charset=utf-8", "no configuration yet".to_string())
        }
        "/healthz" => (200, "text/plain; charset=utf-8", "ok".to_string()),
        "/metrics" => (200, "application/openmetrics-text; version=1.0.0; charset=utf-8", shared.metrics.encode()),
        _ => (404, "text/plain; charset=utf-8", "404 page not found\n".to_string()),
    };
    let mut r = Response::new(RespBody::Full(Some(body.into())));
    *r.status_mut() = hyper::StatusCode::from_u16(code).unwrap_or_default();
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(ctype));
    r
}
