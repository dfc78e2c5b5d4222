//! Everything outside the cluster zone goes to upstream servers: tried in order (healthy ones
//! first), each with a timeout, over UDP and again over TCP when the reply is truncated; at most
//! `max_concurrent` queries wait on them at once, the rest are refused. Replies are checked with
//! `hickory-proto` and kept in a cache bounded in entries, bytes and TTL (positive and negative,
//! keyed by the query bits that change the answer). An upstream that fails is marked down and health-checked (`. IN NS`) until it
//! answers again. At start and whenever the upstreams change, a probe with a random name is sent
//! to each: if that name ever reaches this server, the upstream sends our queries back to us (a
//! forwarding loop, e.g. systemd-resolved's 127.0.0.53 in the node's resolv.conf); that upstream
//! is then left out and the problem reported in the log, the metrics and /health, and the server
//! keeps answering the cluster zone instead of crash-looping.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RData;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::metrics::Metrics;
use crate::wire::{self, Query, T_HINFO};

/// Positive answers are cached at most this long, negative ones at most `MAX_NEGATIVE_TTL`
/// (CoreDNS's cache defaults).
pub const MAX_TTL: u32 = 3600;
pub const MAX_NEGATIVE_TTL: u32 = 1800;
/// Negative answers without an SOA (a server asked not to recurse, a broken one) SHOULD NOT
/// be cached (RFC 2308 section 5); CoreDNS keeps them for its floor of 5 seconds, which still
/// absorbs a burst of the same question.
pub const NEGATIVE_NO_SOA_TTL: u32 = 5;
const HEALTH_EVERY: Duration = Duration::from_millis(500);
/// The receive buffer for a UDP reply: a datagram that fills it may have been cut by the
/// kernel, so it is fetched again over TCP. Small, as there is one per query in flight.
const UDP_REPLY_MAX: usize = 4096;

pub struct Upstream {
    pub addr: SocketAddr,
    healthy: AtomicBool,
    looping: AtomicBool,
    checking: AtomicBool,
}

impl Upstream {
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
    pub fn looping(&self) -> bool {
        self.looping.load(Ordering::Relaxed)
    }
}

/// Name, type, class, and the query's bits that change the answer (`key_flags`).
type Key = (Vec<u8>, u16, u16, u8);

struct Entry {
    msg: Vec<u8>,
    stored: Instant,
    ttl: u32,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.stored).as_secs() < self.ttl as u64
    }
}

/// What an entry is charged against the byte budget: the message, the name in its key, and
/// about what the map's slot and the two allocations' headers take.
fn entry_cost(key: &Key, msg_len: usize) -> usize {
    msg_len + key.0.len() + 96
}

/// The cache of forwarded answers, bounded in entries and in bytes.
struct Cache {
    map: HashMap<Key, Entry>,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
}

impl Cache {
    fn new(max_entries: usize, max_bytes: usize) -> Cache {
        Cache { map: HashMap::new(), bytes: 0, max_entries: max_entries.max(1), max_bytes }
    }

    fn get(&self, key: &Key) -> Option<&Entry> {
        self.map.get(key)
    }

    fn clear(&mut self) {
        self.map.clear();
        self.bytes = 0;
    }

    fn remove(&mut self, key: &Key) {
        if let Some(old) = self.map.remove(key) {
            self.bytes -= entry_cost(key, old.msg.len());
        }
    }

    /// Stores a reply unless it alone would take more than an eighth of the budget (one huge
    /// answer must not flush everything else), making room first.
    fn insert(&mut self, key: Key, msg: &[u8], ttl: u32, now: Instant) {
        let cost = entry_cost(&key, msg.len());
        if cost > self.max_bytes / 8 {
            return;
        }
        self.remove(&key);
        if self.map.len() >= self.max_entries || self.bytes + cost > self.max_bytes {
            self.make_room(cost, now);
        }
        self.bytes += cost;
        self.map.insert(key, Entry { msg: msg.to_vec(), stored: now, ttl });
    }

    /// Drops expired entries; if that is not enough, drops whichever entries the map yields
    /// first down to seven eighths of both bounds, so that the next inserts find room at once.
    fn make_room(&mut self, cost: usize, now: Instant) {
        let bytes = &mut self.bytes;
        self.map.retain(|k, e| {
            let keep = e.live(now);
            if !keep {
                *bytes -= entry_cost(k, e.msg.len());
            }
            keep
        });
        if self.map.len() < self.max_entries && self.bytes + cost <= self.max_bytes {
            return;
        }
        let entries_goal = self.max_entries - self.max_entries / 8 - 1;
        let bytes_goal = (self.max_bytes - self.max_bytes / 8).saturating_sub(cost);
        let (mut left, mut bytes) = (self.map.len(), self.bytes);
        let mut drop = vec![];
        for (k, e) in &self.map {
            if left <= entries_goal && bytes <= bytes_goal {
                break;
            }
            left -= 1;
            bytes -= entry_cost(k, e.msg.len());
            drop.push(k.clone());
        }
        for k in drop {
            self.remove(&k);
        }
    }
}

pub struct Forwarder {
    upstreams: ArcSwap<Vec<Arc<Upstream>>>,
    cache: Mutex<Cache>,
    /// Loop probe names (lowercase wire) -> the upstream they were sent to.
    probes: Mutex<HashMap<Vec<u8>, SocketAddr>>,
    metrics: Arc<Metrics>,
    timeout: Duration,
    /// One permit per query waiting on upstreams: a flood of names under a black-holed domain
    /// would otherwise pile up tasks and sockets, each holding on for the whole timeout.
    in_flight: tokio::sync::Semaphore,
    /// The runtime upstream sockets are made on (the server's network namespace).
    rt: tokio::runtime::Handle,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Forwarder {
    /// Must be called inside the runtime that is to make upstream sockets.
    pub fn new(metrics: Arc<Metrics>, opts: &crate::Options) -> Arc<Forwarder> {
        Arc::new(Forwarder {
            upstreams: ArcSwap::from_pointee(vec![]),
            cache: Mutex::new(Cache::new(opts.cache_size, opts.cache_bytes)),
            probes: Mutex::new(HashMap::new()),
            metrics,
            timeout: opts.upstream_timeout,
            in_flight: tokio::sync::Semaphore::new(match opts.max_concurrent {
                0 => tokio::sync::Semaphore::MAX_PERMITS,
                n => n.min(tokio::sync::Semaphore::MAX_PERMITS),
            }),
            rt: tokio::runtime::Handle::current(),
        })
    }

    pub fn upstreams(&self) -> Vec<Arc<Upstream>> {
        self.upstreams.load().iter().cloned().collect()
    }

    /// Replaces the upstream list (if it changed) and probes the new one for loops.
    pub fn set_upstreams(self: &Arc<Self>, addrs: Vec<SocketAddr>) {
        let cur: Vec<SocketAddr> = self.upstreams.load().iter().map(|u| u.addr).collect();
        if cur == addrs {
            return;
        }
        tracing::info!(upstreams = ?addrs, "forwarding outside the cluster zone");
        let list: Vec<Arc<Upstream>> = addrs
            .iter()
            .map(|a| {
                self.metrics.upstream_healthy.get_or_create(&Metrics::upstream_label(*a)).set(1);
                Arc::new(Upstream {
                    addr: *a,
                    healthy: AtomicBool::new(true),
                    looping: AtomicBool::new(false),
                    checking: AtomicBool::new(false),
                })
            })
            .collect();
        self.upstreams.store(Arc::new(list.clone()));
        lock(&self.cache).clear();
        self.metrics.cache_entries.set(0);
        self.metrics.cache_bytes.set(0);
        for u in list {
            let me = self.clone();
            self.rt.spawn(async move { me.probe_loop(u).await });
        }
    }

    async fn probe_loop(self: Arc<Self>, u: Arc<Upstream>) {
        let name = crate::zone::wire_name(&format!("{:016x}.{:016x}", rand::random::<u64>(), rand::random::<u64>()))
            .unwrap_or_default();
        lock(&self.probes).insert(name.clone(), u.addr);
        let probe = wire::query(rand::random(), &name, T_HINFO);
        let _ = exchange(&probe, u.addr, self.timeout).await;
        // A looped probe arrives while the first exchange waits; keep the name a while longer
        // for slow paths, then forget it.
        tokio::time::sleep(Duration::from_secs(30)).await;
        lock(&self.probes).remove(&name);
    }

    /// Called for every query that would be forwarded: true when it is one of our loop probes
    /// come back, which proves a forwarding loop through that upstream.
    pub fn is_probe(&self, q: &Query) -> bool {
        if q.qtype != T_HINFO {
            return false;
        }
        let Some(addr) = lock(&self.probes).get(&q.lower).copied() else { return false };
        for u in self.upstreams.load().iter().filter(|u| u.addr == addr) {
            if !u.looping.swap(true, Ordering::Relaxed) {
                let msg = format!(
                    "forwarding loop: queries sent to upstream {addr} come back to this server \
                     (is {addr} a local stub such as systemd-resolved's 127.0.0.53, or this server itself?); \
                     it is no longer used: set the upstreams (--upstream, or dnsUpstreams in kube-system/weft-config) \
                     to servers that resolve names themselves"
                );
                tracing::error!("{msg}");
                self.metrics.problem(msg);
                self.metrics.forward_loop.get_or_create(&Metrics::upstream_label(addr)).set(1);
            }
        }
        true
    }

    /// Queries that differ in what they ask of the upstream get answers of their own: RD=0
    /// (an empty answer from what the upstream happens to have cached), CD (answers that
    /// failed validation), AD and DO (the AD bit, signatures), EDNS (the OPT record).
    fn cache_key(q: &Query) -> Key {
        let mut f = 0;
        for (bit, on) in [
            (1, q.flags & wire::RD != 0),
            (2, q.flags & wire::CD != 0),
            (4, q.flags & wire::AD != 0),
            (8, q.edns.is_some()),
            (16, q.edns.is_some_and(|e| e.dnssec_ok)),
        ] {
            f |= if on { bit } else { 0 };
        }
        (q.lower.clone(), q.qtype, q.qclass, f)
    }

    /// The reply to a query outside the zone: from the cache, from an upstream, or SERVFAIL
    /// (REFUSED when there are no upstreams at all, or too many queries wait on them already,
    /// as CoreDNS's `max_concurrent` does: the client's resolver tries another server, and
    /// the refusal says nothing about the upstreams' health).
    pub async fn resolve(self: &Arc<Self>, q: &Query, pkt: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let ups = self.upstreams.load_full();
        let usable: Vec<&Arc<Upstream>> = ups.iter().filter(|u| !u.looping()).collect();
        if usable.is_empty() {
            wire::bare_reply(q, pkt, wire::REFUSED as u16, false, false, &mut out);
            return out;
        }
        let key = Self::cache_key(q);
        if let Some(hit) = self.cached(&key, q, pkt) {
            self.metrics.cache_hits.inc();
            return hit;
        }
        self.metrics.cache_misses.inc();
        let Ok(_permit) = self.in_flight.try_acquire() else {
            self.metrics.forward_max_concurrent_rejects.inc();
            wire::bare_reply(q, pkt, wire::REFUSED as u16, false, false, &mut out);
            return out;
        };
        // Healthy upstreams first, in order; then the others (one of them may be back).
        let order = usable.iter().filter(|u| u.healthy()).chain(usable.iter().filter(|u| !u.healthy()));
        for u in order {
            self.metrics.forward_requests.get_or_create(&Metrics::upstream_label(u.addr)).inc();
            match exchange(pkt, u.addr, self.timeout).await {
                Ok(reply) => {
                    if let Some((ttl, canonical)) = cacheable(&reply) {
                        self.store(key, &canonical, ttl);
                    }
                    return reply;
                }
                Err(e) => {
                    tracing::debug!(upstream = %u.addr, "upstream failed: {e}");
                    self.metrics.forward_errors.get_or_create(&Metrics::upstream_label(u.addr)).inc();
                    self.mark_down(u);
                }
            }
        }
        wire::bare_reply(q, pkt, wire::SERVFAIL as u16, false, false, &mut out);
        out
    }

    fn cached(&self, key: &Key, q: &Query, pkt: &[u8]) -> Option<Vec<u8>> {
        let c = lock(&self.cache);
        let e = c.get(key)?;
        if !e.live(Instant::now()) {
            return None;
        }
        wire::reuse(&e.msg, q, pkt, e.stored.elapsed().as_secs() as u32)
    }

    fn store(&self, key: Key, reply: &[u8], ttl: u32) {
        let mut c = lock(&self.cache);
        c.insert(key, reply, ttl, Instant::now());
        self.metrics.cache_entries.set(c.map.len() as i64);
        self.metrics.cache_bytes.set(c.bytes as i64);
    }

    fn mark_down(self: &Arc<Self>, u: &Arc<Upstream>) {
        u.healthy.store(false, Ordering::Relaxed);
        self.metrics.upstream_healthy.get_or_create(&Metrics::upstream_label(u.addr)).set(0);
        if u.checking.swap(true, Ordering::Relaxed) {
            return;
        }
        let me = self.clone();
        let u = u.clone();
        self.rt.spawn(async move {
            let check = wire::query(0, &[0], wire::T_NS);
            loop {
                tokio::time::sleep(HEALTH_EVERY).await;
                let current = me.upstreams.load().iter().any(|x| Arc::ptr_eq(x, &u));
                if !current {
                    return;
                }
                if exchange(&check, u.addr, me.timeout).await.is_ok() {
                    u.healthy.store(true, Ordering::Relaxed);
                    u.checking.store(false, Ordering::Relaxed);
                    me.metrics.upstream_healthy.get_or_create(&Metrics::upstream_label(u.addr)).set(1);
                    tracing::info!(upstream = %u.addr, "upstream answers again");
                    return;
                }
            }
        });
    }
}

/// What of a reply is cached: for how long (`cache_ttl`), and the message as hickory-proto
/// writes it rather than as the upstream did. A cache hit rewrites the TTLs in place
/// (`wire::reuse`); in an upstream's own encoding a compression pointer may point anywhere,
/// TTL fields included, so the rewrite could change a name and hand clients a malformed
/// message. hickory-proto's pointers only point at names. None for what is not cached.
pub fn cacheable(reply: &[u8]) -> Option<(u32, Vec<u8>)> {
    let m = Message::from_vec(reply).ok()?;
    // A cache hit copies the client's question over the cached one.
    if m.queries.len() != 1 {
        return None;
    }
    let ttl = cache_ttl(&m)?;
    Some((ttl, m.to_vec().ok()?))
}

/// How long a reply may be cached: the smallest TTL of its answer and authority records
/// (for a negative answer, the SOA's minimum too), capped by `MAX_TTL`, `MAX_NEGATIVE_TTL`,
/// or `NEGATIVE_NO_SOA_TTL` for a negative answer without SOA; None for what is not cached
/// (errors other than NXDOMAIN, truncated replies).
fn cache_ttl(m: &Message) -> Option<u32> {
    if m.metadata.truncation {
        return None;
    }
    let negative = match m.metadata.response_code {
        ResponseCode::NoError => m.answers.is_empty(),
        ResponseCode::NXDomain => true,
        _ => return None,
    };
    let has_soa = m.authorities.iter().any(|r| matches!(r.data, RData::SOA(_)));
    let mut ttl = match (negative, has_soa) {
        (false, _) => MAX_TTL,
        (true, true) => MAX_NEGATIVE_TTL,
        (true, false) => NEGATIVE_NO_SOA_TTL,
    };
    for r in m.answers.iter().chain(&m.authorities) {
        ttl = ttl.min(r.ttl);
        if let RData::SOA(soa) = &r.data {
            ttl = ttl.min(soa.minimum);
        }
    }
    (ttl > 0).then_some(ttl)
}

/// One query to one upstream: UDP from a fresh socket (a random source port per query) with a
/// random ID, the reply checked against the question; TCP when the reply is truncated. The
/// reply carries the client's ID.
pub async fn exchange(pkt: &[u8], to: SocketAddr, timeout: Duration) -> std::io::Result<Vec<u8>> {
    let err = |s: &str| std::io::Error::other(s.to_string());
    let client_id = pkt.get(0..2).ok_or_else(|| err("short query"))?;
    let id: u16 = rand::random();
    let mut m = pkt.to_vec();
    m[0..2].copy_from_slice(&id.to_be_bytes());
    question_end(&m).ok_or_else(|| err("query without a question"))?;
    let deadline = tokio::time::Instant::now() + timeout;
    let bind: SocketAddr =
        if to.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(to).await?;
    sock.send(&m).await?;
    let mut buf = vec![0u8; UDP_REPLY_MAX + 1];
    let mut reply = loop {
        let n = tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await.map_err(|_| err("timed out"))??;
        // Ignore anything that is not the reply to this question (spoofing, late replies).
        if is_reply_to(&m, &buf[..n]) {
            break buf[..n].to_vec();
        }
    };
    if reply[2] & 0x02 != 0 || reply.len() > UDP_REPLY_MAX {
        reply =
            tokio::time::timeout_at(deadline, exchange_tcp(&m, to)).await.map_err(|_| err("timed out over TCP"))??;
        if !is_reply_to(&m, &reply) {
            return Err(err("bad reply over TCP"));
        }
    }
    Message::from_vec(&reply).map_err(|e| err(&format!("malformed reply: {e}")))?;
    reply[0..2].copy_from_slice(client_id);
    Ok(reply)
}

/// Whether `r` is the reply to the query `sent`: the same ID, QR set, and the same question,
/// once (letter case aside).
pub fn is_reply_to(sent: &[u8], r: &[u8]) -> bool {
    let Some(qend) = question_end(sent) else { return false };
    match (sent.get(..qend), r.get(..qend)) {
        (Some(s), Some(r)) => {
            r[0..2] == s[0..2] && r[2] & 0x80 != 0 && r[4..6] == [0, 1] && r[12..].eq_ignore_ascii_case(&s[12..])
        }
        _ => false,
    }
}

async fn exchange_tcp(m: &[u8], to: SocketAddr) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(to).await?;
    let mut framed = (m.len() as u16).to_be_bytes().to_vec();
    framed.extend(m);
    s.write_all(&framed).await?;
    let len = s.read_u16().await? as usize;
    let mut reply = vec![0u8; len];
    s.read_exact(&mut reply).await?;
    Ok(reply)
}

fn question_end(m: &[u8]) -> Option<usize> {
    let mut i = 12;
    loop {
        let n = *m.get(i)? as usize;
        if n & 0xc0 != 0 {
            return None;
        }
        i += 1 + n;
        if n == 0 {
            return (i + 4 <= m.len()).then_some(i + 4);
        }
    }
}

/// The nameservers of a resolv.conf (port 53).
pub fn resolv_conf_servers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then(|| w.next())?
        })
        .filter_map(|a| a.split('%').next()?.parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Upstream addresses written as `ip`, `ip:port` or `[v6]:port`, separated by spaces or commas.
pub fn parse_upstreams(text: &str) -> Result<Vec<SocketAddr>, String> {
    text.split([' ', ',', '\n', '\t'])
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<SocketAddr>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                .map_err(|_| format!("upstream {s:?} is not an address: write ip, ip:port or [ipv6]:port"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::{Name, Record, RecordType, rdata};

    #[test]
    fn upstream_lists() {
        assert_eq!(
            resolv_conf_servers(
                "search x\nnameserver 10.0.0.1\nnameserver fe80::1%eth0\n# nameserver 1.1.1.1\noptions ndots:5"
            ),
            vec!["10.0.0.1:53".parse().unwrap(), "[fe80::1]:53".parse().unwrap()]
        );
        assert_eq!(parse_upstreams("10.0.0.1, 10.0.0.2:5353").unwrap().len(), 2);
        assert!(parse_upstreams("dns.example").unwrap_err().contains("dns.example"));
    }

    fn key(i: usize) -> Key {
        (format!("n{i}").into_bytes(), 1, 1, 0)
    }

    #[test]
    fn the_cache_keeps_to_its_byte_budget() {
        let now = Instant::now();
        let mut c = Cache::new(1000, 8000);
        for i in 0..100 {
            c.insert(key(i), &[0; 500], 60, now);
            assert!(c.bytes <= 8000, "{} bytes after {i}", c.bytes);
            assert_eq!(c.bytes, c.map.iter().map(|(k, e)| entry_cost(k, e.msg.len())).sum::<usize>());
        }
        assert!(c.map.len() >= 8, "room was made, not everything dropped");
        // Replacing an entry does not count it twice; one over an eighth of the budget is not kept.
        let before = c.bytes;
        c.insert(key(99), &[0; 500], 60, now);
        assert_eq!(c.bytes, before);
        c.insert(key(1000), &[0; 1000], 60, now);
        assert!(c.get(&key(1000)).is_none());
        // Expired entries go first.
        let mut c = Cache::new(4, 1 << 20);
        c.insert(key(0), &[0; 10], 1, now);
        for i in 1..4 {
            c.insert(key(i), &[0; 10], 60, now + Duration::from_secs(2));
        }
        c.insert(key(4), &[0; 10], 60, now + Duration::from_secs(2));
        assert!(c.get(&key(0)).is_none() && c.map.len() == 4);
    }

    #[test]
    fn flags_that_change_the_answer_are_in_the_key() {
        let key = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut p = wire::query(1, &crate::zone::wire_name("a.example").unwrap(), wire::T_A);
            edit(&mut p);
            let wire::Parsed::Query(q) = wire::parse(&p) else { panic!() };
            Forwarder::cache_key(&q)
        };
        let edns = |p: &mut Vec<u8>, flags: u8| {
            p[11] = 1;
            p.extend([0, 0, 41, 4, 0xd0, 0, 0, flags, 0, 0, 0]);
        };
        let keys = [
            key(&|_| {}),
            key(&|p| p[2] &= !0x01), // RD=0
            key(&|p| p[3] |= 0x10),  // CD
            key(&|p| p[3] |= 0x20),  // AD
            key(&|p| edns(p, 0)),    // EDNS
            key(&|p| edns(p, 0x80)), // EDNS with DO
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(key(&|p| p[1] = 9), keys[0], "the ID is not in the key");
    }

    /// A reply to `a.example. A` (replies without their question are never cached).
    fn response() -> Message {
        let mut m = Message::response(1, hickory_proto::op::OpCode::Query);
        m.add_query(hickory_proto::op::Query::query(Name::from_ascii("a.example.").unwrap(), RecordType::A));
        m
    }

    fn cacheable(reply: &[u8]) -> Option<u32> {
        super::cacheable(reply).map(|(ttl, _)| ttl)
    }

    /// Found by `fuzz::upstream_replies`: an SOA whose MNAME points into the A record before
    /// it, so that the name it reads runs through the SOA's own TTL. Rewriting the TTL of the
    /// reply as sent changes that name; the cached copy is re-encoded and survives it.
    #[test]
    fn a_cached_reply_survives_its_ttl_rewrite() {
        let hostile = [
            48, 19, 129, 128, 0, 1, 0, 2, 0, 1, 0, 1, 5, 99, 48, 48, 48, 48, 7, 101, 120, 97, 109, 112, 108, 101, 0, 0,
            1, 0, 1, 192, 12, 0, 5, 0, 1, 0, 0, 1, 44, 0, 4, 1, 116, 192, 18, 192, 43, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4,
            192, 0, 2, 7, 192, 18, 0, 6, 0, 1, 187, 0, 0, 30, 0, 26, 2, 110, 115, 192, 62, 0, 0, 0, 0, 1, 0, 0, 0, 1,
            0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 30, 0, 0, 41, 2, 0, 0, 0, 0, 0, 0, 0,
        ];
        let pkt = wire::query(7, &crate::zone::wire_name("c0000.example").unwrap(), wire::T_A);
        let wire::Parsed::Query(q) = wire::parse(&pkt) else { panic!() };
        assert!(Message::from_vec(&hostile).is_ok());
        let as_sent = wire::reuse(&hostile, &q, &pkt, 31).unwrap();
        assert!(Message::from_vec(&as_sent).is_err(), "the rewrite breaks the upstream's own encoding");
        let (ttl, cached) = super::cacheable(&hostile).unwrap();
        assert_eq!(ttl, 30);
        let served = wire::reuse(&cached, &q, &pkt, 31).unwrap();
        assert_eq!(Message::from_vec(&served).unwrap().answers.len(), 2);
    }

    #[test]
    fn negative_answers_without_soa_are_hardly_cached() {
        let mut n = response();
        n.metadata.response_code = ResponseCode::NXDomain;
        // RFC 2308 section 5: SHOULD NOT be cached; a few seconds (CoreDNS's floor) at most.
        assert_eq!(cacheable(&n.to_vec().unwrap()), Some(NEGATIVE_NO_SOA_TTL));
        const { assert!(NEGATIVE_NO_SOA_TTL <= 5) };
        let mut nodata = response();
        assert_eq!(cacheable(&nodata.to_vec().unwrap()), Some(NEGATIVE_NO_SOA_TTL));
        // With an SOA: the smaller of its TTL and its MINIMUM.
        let soa = rdata::SOA::new(Name::root(), Name::root(), 1, 1, 1, 1, 600);
        nodata.add_authority(Record::from_rdata(Name::from_ascii("example.").unwrap(), 300, RData::SOA(soa)));
        assert_eq!(cacheable(&nodata.to_vec().unwrap()), Some(300));
    }

    #[test]
    fn what_is_cached_and_for_how_long() {
        let mut m = response();
        m.add_answer(Record::from_rdata(
            Name::from_ascii("a.example.").unwrap(),
            7200,
            RData::A(rdata::A::new(1, 2, 3, 4)),
        ));
        assert_eq!(cacheable(&m.to_vec().unwrap()), Some(MAX_TTL));
        let mut n = response();
        n.metadata.response_code = ResponseCode::NXDomain;
        let soa = rdata::SOA::new(Name::root(), Name::root(), 1, 1, 1, 1, 60);
        n.add_authority(Record::from_rdata(Name::from_ascii("example.").unwrap(), 300, RData::SOA(soa)));
        assert_eq!(cacheable(&n.to_vec().unwrap()), Some(60));
        let mut f = response();
        f.metadata.response_code = ResponseCode::ServFail;
        assert_eq!(cacheable(&f.to_vec().unwrap()), None);
    }
}
