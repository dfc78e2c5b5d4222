//! One worker's side of the endpoints: its keep-alive pools, its balancing state and its
//! ejections. Nothing here is shared with another worker: the locks are taken by one thread
//! only (and by nothing else), so they never wait.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use super::Shared;
use super::body::ReqBody;
use super::metrics::WorkerStats;
use crate::{Backend, BackendProtocol, Balance};

/// How long an endpoint whose connect failed is left out (while others remain).
const EJECT_FOR: Duration = Duration::from_secs(10);
/// How fast the latency average forgets (ingress-nginx's EWMA decay time).
const EWMA_DECAY: Duration = Duration::from_secs(10);

/// An idle or multiplexed connection to one endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    pub(crate) addr: SocketAddr,
    pub(crate) tls: bool,
}

pub(crate) enum Sender {
    H1(http1::SendRequest<ReqBody>),
    H2(http2::SendRequest<ReqBody>),
}

impl Sender {
    /// Waits until the connection takes a request; `false`: it is gone.
    pub(crate) async fn ready(&mut self) -> bool {
        match self {
            Sender::H1(s) => s.ready().await.is_ok(),
            Sender::H2(s) => s.ready().await.is_ok(),
        }
    }

    pub(crate) async fn send(
        &mut self,
        req: Request<ReqBody>,
    ) -> Result<Response<Incoming>, TrySendError<Request<ReqBody>>> {
        match self {
            Sender::H1(s) => s.try_send_request(req).await,
            Sender::H2(s) => s.try_send_request(req).await,
        }
    }
}

struct Idle {
    sender: http1::SendRequest<ReqBody>,
    since: Instant,
}

#[derive(Default)]
struct Pools {
    h1: HashMap<PoolKey, Vec<Idle>>,
    h2: HashMap<PoolKey, http2::SendRequest<ReqBody>>,
    /// Idle connections of the hand-written HTTP/1 path (most recently used last).
    raw: HashMap<PoolKey, Vec<RawConn>>,
}

/// A byte stream to an endpoint, plain or TLS.
pub(crate) enum UpIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl tokio::io::AsyncRead for UpIo {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            UpIo::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            UpIo::Tls(s) => std::pin::Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for UpIo {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        match self.get_mut() {
            UpIo::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            UpIo::Tls(s) => std::pin::Pin::new(&mut **s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            UpIo::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            UpIo::Tls(s) => std::pin::Pin::new(&mut **s).poll_flush(cx),
        }
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            UpIo::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            UpIo::Tls(s) => std::pin::Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

/// A connection of the HTTP/1 path with its read buffer (empty when idle).
pub(crate) struct RawConn {
    pub(crate) io: UpIo,
    pub(crate) buf: Vec<u8>,
    pub(crate) since: Instant,
}

#[derive(Default)]
struct Lb {
    /// The table the round-robin counters belong to (its address): backends are keyed by
    /// address too, so the counters start over with each table.
    table: usize,
    rr: HashMap<usize, usize>,
    ewma: HashMap<SocketAddr, (f64, Instant)>,
    ejected: HashMap<SocketAddr, Instant>,
}

/// A worker thread's state.
pub(crate) struct Worker {
    pub(crate) shared: Arc<Shared>,
    pub(crate) stats: Arc<WorkerStats>,
    pub(crate) log: Option<std::sync::mpsc::Sender<String>>,
    pools: Mutex<Pools>,
    lb: Mutex<Lb>,
}

/// Puts an HTTP/1 connection back once its response has been read.
pub(crate) struct PoolReturn {
    pub(crate) worker: Arc<Worker>,
    pub(crate) key: PoolKey,
    pub(crate) sender: http1::SendRequest<ReqBody>,
}

impl PoolReturn {
    pub(crate) fn put(self) {
        let cap = self.worker.shared.limits.upstream_idle;
        let mut p = lock(&self.worker.pools);
        let v = p.h1.entry(self.key).or_default();
        if v.len() < cap && !self.sender.is_closed() {
            v.push(Idle { sender: self.sender, since: Instant::now() });
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why no connection was made.
pub(crate) enum ConnectError {
    Timeout,
    Failed,
}

impl Worker {
    pub(crate) fn new(shared: Arc<Shared>, log: Option<std::sync::mpsc::Sender<String>>) -> Worker {
        let stats = shared.metrics.worker();
        Worker { shared, stats, log, pools: Mutex::default(), lb: Mutex::default() }
    }

    /// A pooled connection to `key` (h2: the shared one), if one is alive.
    pub(crate) fn pooled(&self, key: PoolKey, h2: bool) -> Option<Sender> {
        let mut p = lock(&self.pools);
        if h2 {
            let s = p.h2.get(&key)?;
            if !s.is_closed() {
                return Some(Sender::H2(s.clone()));
            }
            p.h2.remove(&key);
            return None;
        }
        let v = p.h1.get_mut(&key)?;
        let max_idle = self.shared.limits.upstream_idle_timeout;
        while let Some(i) = v.pop() {
            if !i.sender.is_closed() && i.since.elapsed() < max_idle {
                return Some(Sender::H1(i.sender));
            }
        }
        None
    }

    /// An idle connection of the HTTP/1 path to `key`, if one is young enough.
    pub(crate) fn raw_pooled(&self, key: PoolKey) -> Option<RawConn> {
        let mut p = lock(&self.pools);
        let v = p.raw.get_mut(&key)?;
        let max_idle = self.shared.limits.upstream_idle_timeout;
        while let Some(c) = v.pop() {
            if c.since.elapsed() < max_idle {
                return Some(c);
            }
        }
        None
    }

    /// Keeps a connection whose last exchange ended cleanly for the next request.
    pub(crate) fn raw_put(&self, key: PoolKey, mut c: RawConn) {
        let cap = self.shared.limits.upstream_idle;
        let mut p = lock(&self.pools);
        let v = p.raw.entry(key).or_default();
        if v.len() < cap {
            c.buf.clear();
            c.since = Instant::now();
            v.push(c);
        }
    }

    /// A new HTTP/1 connection (TLS with ALPN http/1.1 when `key.tls`) within `timeout`.
    pub(crate) async fn raw_connect(&self, key: PoolKey, timeout: Duration) -> Result<RawConn, ConnectError> {
        let made = tokio::time::timeout(timeout, async {
            let tcp = TcpStream::connect(key.addr).await?;
            let _ = tcp.set_nodelay(true);
            if !key.tls {
                return Ok::<_, io::Error>(UpIo::Plain(tcp));
            }
            let name = ServerName::IpAddress(key.addr.ip().into());
            let tls = tokio_rustls::TlsConnector::from(self.shared.upstream_tls_h1.clone()).connect(name, tcp).await?;
            Ok(UpIo::Tls(Box::new(tls)))
        })
        .await;
        match made {
            Err(_) => Err(ConnectError::Timeout),
            Ok(Err(_)) => Err(ConnectError::Failed),
            Ok(Ok(io)) => Ok(RawConn { io, buf: Vec::with_capacity(16 << 10), since: Instant::now() }),
        }
    }

    /// A new connection to `addr` in `protocol`, within `timeout`.
    pub(crate) async fn connect(
        &self,
        addr: SocketAddr,
        protocol: BackendProtocol,
        timeout: Duration,
    ) -> Result<Sender, ConnectError> {
        let key = PoolKey { addr, tls: matches!(protocol, BackendProtocol::Https | BackendProtocol::Grpcs) };
        let made = tokio::time::timeout(timeout, async {
            let tcp = TcpStream::connect(addr).await?;
            let _ = tcp.set_nodelay(true);
            let name = ServerName::IpAddress(addr.ip().into());
            match protocol {
                BackendProtocol::Http => h1(tcp).await,
                BackendProtocol::Https => {
                    let tls = tokio_rustls::TlsConnector::from(self.shared.upstream_tls_h1.clone())
                        .connect(name, tcp)
                        .await?;
                    h1(tls).await
                }
                BackendProtocol::Grpc => h2(tcp).await,
                BackendProtocol::Grpcs => {
                    let tls = tokio_rustls::TlsConnector::from(self.shared.upstream_tls_h2.clone())
                        .connect(name, tcp)
                        .await?;
                    h2(tls).await
                }
            }
        })
        .await;
        match made {
            Err(_) => Err(ConnectError::Timeout),
            Ok(Err(_)) => Err(ConnectError::Failed),
            Ok(Ok(s)) => {
                if let Sender::H2(s) = &s {
                    lock(&self.pools).h2.insert(key, s.clone());
                }
                Ok(s)
            }
        }
    }

    /// The endpoint for the next request to `b`: not one already tried for this request, and
    /// not an ejected one unless only ejected ones are left.
    pub(crate) fn choose(
        &self,
        b: &Backend,
        balance: Balance,
        tried: &[SocketAddr],
        table: usize,
    ) -> Option<SocketAddr> {
        let eps: &[SocketAddr] = if b.ready.is_empty() { &b.serving_terminating } else { &b.ready };
        let n = eps.len();
        if n == 0 {
            return None;
        }
        let now = Instant::now();
        let mut lb = lock(&self.lb);
        if n == 1 && tried.is_empty() {
            return Some(eps[0]);
        }
        let fresh = |lb: &Lb, a: &SocketAddr| !tried.contains(a) && lb.ejected.get(a).is_none_or(|t| *t <= now);
        match balance {
            Balance::RoundRobin => {
                if lb.table != table {
                    lb.table = table;
                    lb.rr.clear();
                }
                let c = lb.rr.entry(b as *const Backend as usize).or_insert(0);
                let start = *c;
                *c = c.wrapping_add(1);
                let pick = |ok: &dyn Fn(&SocketAddr) -> bool| (0..n).map(|i| eps[(start + i) % n]).find(|a| ok(a));
                pick(&|a| fresh(&lb, a)).or_else(|| pick(&|a| !tried.contains(a)))
            }
            Balance::Ewma => {
                // Power of two choices over the latency averages.
                let mut c: Vec<SocketAddr> = eps.iter().copied().filter(|a| fresh(&lb, a)).collect();
                if c.is_empty() {
                    c = eps.iter().copied().filter(|a| !tried.contains(a)).collect();
                }
                match c.len() {
                    0 => None,
                    1 => Some(c[0]),
                    len => {
                        let i = rand::random_range(0..len);
                        let j = (i + rand::random_range(1..len)) % len;
                        let score = |a: &SocketAddr| lb.ewma.get(a).map_or(0.0, |(v, _)| *v);
                        Some(if score(&c[i]) <= score(&c[j]) { c[i] } else { c[j] })
                    }
                }
            }
        }
    }

    /// The endpoint with this affinity cookie value, if it is one of `b`'s and usable.
    pub(crate) fn sticky(&self, b: &Backend, value: &str, tried: &[SocketAddr]) -> Option<SocketAddr> {
        let eps: &[SocketAddr] = if b.ready.is_empty() { &b.serving_terminating } else { &b.ready };
        let a = eps.iter().copied().find(|a| affinity_value(a) == value)?;
        let now = Instant::now();
        let lb = lock(&self.lb);
        (!tried.contains(&a) && lb.ejected.get(&a).is_none_or(|t| *t <= now)).then_some(a)
    }

    pub(crate) fn eject(&self, addr: SocketAddr) {
        let mut lb = lock(&self.lb);
        let now = Instant::now();
        lb.ejected.retain(|_, t| *t > now);
        lb.ejected.insert(addr, now + EJECT_FOR);
    }

    pub(crate) fn observe(&self, addr: SocketAddr, took: Duration) {
        let mut lb = lock(&self.lb);
        let now = Instant::now();
        let ms = took.as_secs_f64() * 1000.0;
        let e = lb.ewma.entry(addr).or_insert((ms, now));
        let w = (-(now - e.1).as_secs_f64() / EWMA_DECAY.as_secs_f64()).exp();
        *e = (e.0 * w + ms * (1.0 - w), now);
        if lb.ewma.len() > 4096 {
            lb.ewma.retain(|_, (_, t)| now - *t < EWMA_DECAY * 6);
        }
    }
}

async fn h1<T>(io: T) -> io::Result<Sender>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (s, conn) = http1::Builder::new().handshake(TokioIo::new(io)).await.map_err(io::Error::other)?;
    // Upgrades: a WebSocket's 101 turns the connection into the tunnel.
    tokio::spawn(conn.with_upgrades());
    Ok(Sender::H1(s))
}

async fn h2<T>(io: T) -> io::Result<Sender>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (s, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .handshake(TokioIo::new(io))
        .await
        .map_err(io::Error::other)?;
    tokio::spawn(conn);
    Ok(Sender::H2(s))
}

/// The affinity cookie's value for an endpoint: a stable hash (FNV-1a) of its address, so
/// every replica of the controller reads the same cookie the same way, and the address
/// itself is not shown.
pub(crate) fn affinity_value(a: &SocketAddr) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    let s = a.to_string();
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}
