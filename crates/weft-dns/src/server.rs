//! The listeners. UDP: one socket per thread on the same address (SO_REUSEPORT, so the kernel
//! spreads queries over all cores), each a blocking loop that answers cluster names at once from
//! the current zone and hands anything else to the forwarder on the async runtime. TCP: an async
//! listener, length-prefixed messages, several per connection, a bounded number of
//! connections, each closed when its client is slow to send, to read or to ask again.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::forward::Forwarder;
use crate::metrics::Metrics;
use crate::wire::{self, Outcome, Parsed, Query};
use crate::zone::Zone;

/// Bounds on TCP clients (see `serve_connection`).
#[derive(Clone, Copy, Debug)]
pub struct TcpLimits {
    pub max_connections: usize,
    pub read: Duration,
    pub write: Duration,
    pub idle: Duration,
}

impl Default for TcpLimits {
    fn default() -> Self {
        TcpLimits {
            max_connections: 1024,
            read: Duration::from_secs(3),
            write: Duration::from_secs(5),
            idle: Duration::from_secs(10),
        }
    }
}

pub struct Server {
    pub zone: Arc<ArcSwap<Zone>>,
    pub forwarder: Arc<Forwarder>,
    pub metrics: Arc<Metrics>,
}

/// What the synchronous path made of a packet.
pub enum Step {
    /// The reply is in the buffer.
    Reply(u8),
    Drop,
    Forward(Query),
}

impl Server {
    /// Answers what can be answered without waiting: cluster names, errors, loop probes.
    pub fn step(&self, pkt: &[u8], tcp: bool, out: &mut Vec<u8>) -> Step {
        let q = match wire::parse(pkt) {
            Parsed::Query(q) => q,
            Parsed::Error { id, rd, rcode } => {
                self.metrics.malformed.inc();
                wire::error_reply(id, rd, rcode, out);
                return Step::Reply(rcode);
            }
            Parsed::Drop => {
                self.metrics.malformed.inc();
                return Step::Drop;
            }
        };
        self.metrics.request(q.qtype, tcp);
        let limit = if tcp { 65535 } else { q.udp_limit() };
        match wire::answer(&self.zone.load(), &q, pkt, limit, out) {
            Outcome::Answered(rcode) => Step::Reply(rcode),
            Outcome::Forward if self.forwarder.is_probe(&q) => {
                wire::bare_reply(&q, pkt, wire::SERVFAIL as u16, false, false, out);
                Step::Reply(wire::SERVFAIL)
            }
            Outcome::Forward if q.qtype == wire::T_ANY => {
                wire::rfc8482_reply(&q, pkt, out);
                Step::Reply(wire::NOERROR)
            }
            Outcome::Forward => Step::Forward(q),
        }
    }

    /// The forwarded reply, cut to what the client takes.
    pub async fn forward(self: &Arc<Self>, q: &Query, pkt: &[u8], tcp: bool) -> Vec<u8> {
        let mut reply = self.forwarder.resolve(q, pkt).await;
        let limit = if tcp { 65535 } else { q.udp_limit() };
        if reply.len() > limit {
            let rcode = reply.get(3).map(|b| b & 0xf).unwrap_or(0) as u16;
            wire::bare_reply(q, pkt, rcode, false, true, &mut reply);
        }
        reply
    }

    /// The whole answer to one packet (the TCP path, and tests).
    pub async fn handle(self: &Arc<Self>, pkt: &[u8], tcp: bool) -> Option<Vec<u8>> {
        let start = Instant::now();
        let mut out = Vec::with_capacity(512);
        let r = match self.step(pkt, tcp, &mut out) {
            Step::Reply(rc) => {
                self.metrics.response(rc);
                Some(out)
            }
            Step::Drop => None,
            Step::Forward(q) => {
                let r = self.forward(&q, pkt, tcp).await;
                self.metrics.response(r.get(3).map(|b| b & 0xf).unwrap_or(0));
                Some(r)
            }
        };
        self.metrics.duration.observe(start.elapsed().as_secs_f64());
        r
    }
}

/// A UDP socket that shares its port with the other workers' sockets.
pub fn reuseport_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    // Room for bursts while a worker is busy.
    let _ = s.set_recv_buffer_size(4 << 20);
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// Starts `threads` UDP workers on `addr`; forwarded queries run on `rt`.
pub fn spawn_udp(
    server: Arc<Server>,
    addr: SocketAddr,
    threads: usize,
    rt: tokio::runtime::Handle,
) -> std::io::Result<()> {
    for i in 0..threads.max(1) {
        let sock = Arc::new(reuseport_udp(addr)?);
        let server = server.clone();
        let rt = rt.clone();
        std::thread::Builder::new().name(format!("dns-udp-{i}")).spawn(move || udp_worker(server, sock, rt))?;
    }
    Ok(())
}

fn udp_worker(server: Arc<Server>, sock: Arc<UdpSocket>, rt: tokio::runtime::Handle) {
    let mut buf = vec![0u8; 65535];
    let mut out = Vec::with_capacity(4096);
    loop {
        let (n, src) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!("UDP receive: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let start = Instant::now();
        let pkt = &buf[..n];
        match server.step(pkt, false, &mut out) {
            Step::Reply(rc) => {
                let _ = sock.send_to(&out, src);
                server.metrics.response(rc);
                server.metrics.duration.observe(start.elapsed().as_secs_f64());
            }
            Step::Drop => {}
            Step::Forward(q) => {
                let pkt = pkt.to_vec();
                let (server, sock) = (server.clone(), sock.clone());
                rt.spawn(async move {
                    let reply = server.forward(&q, &pkt, false).await;
                    let _ = sock.send_to(&reply, src);
                    server.metrics.response(reply.get(3).map(|b| b & 0xf).unwrap_or(0));
                    server.metrics.duration.observe(start.elapsed().as_secs_f64());
                });
            }
        }
    }
}

/// Serves DNS over TCP on `addr` until the task is dropped. At `max_connections` it stops
/// accepting, as Unbound does: new clients wait in the kernel's backlog for a slot instead of
/// being cut off, and the timeouts make sure slots come free.
pub async fn serve_tcp(server: Arc<Server>, listener: tokio::net::TcpListener, limits: TcpLimits) {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let s = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors, most likely: give the others a moment to close.
                tracing::debug!("TCP accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let server = server.clone();
        tokio::spawn(async move {
            let _slot = slot;
            serve_connection(&server, s, limits).await;
        });
    }
}

/// Length-prefixed queries on one connection until the client closes it or overstays: the
/// first query is due within `read` of connecting, later ones within `idle` of the last reply;
/// a query must arrive whole within `read` and a reply leave within `write` (a client that
/// never reads would otherwise hold its slot for ever). CoreDNS's defaults: 3 s, 5 s, 10 s.
async fn serve_connection(server: &Arc<Server>, mut s: tokio::net::TcpStream, limits: TcpLimits) {
    use tokio::time::timeout;
    let mut wait = limits.read;
    loop {
        let Ok(Ok(len)) = timeout(wait, s.read_u16()).await else { return };
        let mut pkt = vec![0u8; len as usize];
        if !matches!(timeout(limits.read, s.read_exact(&mut pkt)).await, Ok(Ok(_))) {
            return;
        }
        let Some(reply) = server.handle(&pkt, true).await else { return };
        let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
        framed.extend(reply);
        if !matches!(timeout(limits.write, s.write_all(&framed)).await, Ok(Ok(_))) {
            return;
        }
        wait = limits.idle;
    }
}
