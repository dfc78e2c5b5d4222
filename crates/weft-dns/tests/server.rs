//! The server over real sockets on loopback: answers over UDP and TCP, EDNS and truncation,
//! forwarding to test upstreams this test runs, the cache, failover, loop detection, and
//! malformed packets that must neither crash it nor stop it answering.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType, rdata};
use weft_dns::model::{Endpoint, Port, Protocol, Service, Slice, Snapshot, SvcKind};
use weft_dns::{Options, Zone, ZoneConfig};

fn snapshot(headless_endpoints: usize) -> Snapshot {
    let mut s = Snapshot::default();
    s.add_namespace("default");
    s.put_service(
        "default",
        "web",
        Service {
            kind: SvcKind::ClusterIp(Box::new(["10.96.0.50".parse().unwrap()])),
            ports: Box::new([Port::new("http", Protocol::Tcp, 80)]),
            publish_not_ready: false,
        },
    );
    s.put_service("default", "big", Service { kind: SvcKind::Headless, ports: Box::new([]), publish_not_ready: false });
    let endpoints = (0..headless_endpoints).map(|i| Endpoint {
        ip: format!("10.244.{}.{}", i / 250, i % 250 + 1).parse().unwrap(),
        hostname: None,
        ready: true,
    });
    s.put_slice("default", "big-1", Slice::new("big", vec![], endpoints));
    s.put_service("default", "mid", Service { kind: SvcKind::Headless, ports: Box::new([]), publish_not_ready: false });
    let endpoints =
        (0..40).map(|i| Endpoint { ip: format!("10.245.0.{}", i + 1).parse().unwrap(), hostname: None, ready: true });
    s.put_slice("default", "mid-1", Slice::new("mid", vec![], endpoints));
    s
}

/// A server on 127.0.0.1 (a free port), UDP and TCP.
async fn start(upstreams: Vec<SocketAddr>) -> (SocketAddr, Arc<weft_dns::server::Server>) {
    start_with(upstreams, |_| {}).await
}

/// `start` with some options changed.
async fn start_with(
    upstreams: Vec<SocketAddr>,
    tweak: impl FnOnce(&mut Options),
) -> (SocketAddr, Arc<weft_dns::server::Server>) {
    let zone = Arc::new(ArcSwap::from_pointee(Zone::build(&snapshot(100), &ZoneConfig::default(), 1)));
    // A port free for both UDP and TCP.
    let port = loop {
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let p = u.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            break p;
        }
    };
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut opts = Options {
        listen: vec![addr],
        threads: 2,
        http: vec![],
        upstream_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    tweak(&mut opts);
    let srv = weft_dns::server(zone, &opts);
    weft_dns::listen(&srv, &opts).await.unwrap();
    srv.forwarder.set_upstreams(upstreams);
    (addr, srv)
}

fn query(name: &str, t: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = rand::random();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    if let Some(size) = edns {
        let mut e = hickory_proto::op::Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

async fn udp(server: SocketAddr, pkt: &[u8]) -> Message {
    let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.send_to(pkt, server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let n = tokio::time::timeout(Duration::from_secs(3), s.recv(&mut buf)).await.expect("a UDP reply").unwrap();
    Message::from_vec(&buf[..n]).expect("a well-formed reply")
}

async fn tcp(server: SocketAddr, pkt: &[u8]) -> Message {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(server).await.unwrap();
    let mut f = (pkt.len() as u16).to_be_bytes().to_vec();
    f.extend(pkt);
    s.write_all(&f).await.unwrap();
    let len = s.read_u16().await.unwrap() as usize;
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf).await.unwrap();
    Message::from_vec(&buf).unwrap()
}

fn a_records(m: &Message) -> Vec<String> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.to_string()),
            _ => None,
        })
        .collect()
}

/// A test upstream: answers every A query with 192.0.2.1 (TTL 60), `big*` with 40 A records
/// (about 700 bytes) and `bigger*` with 100, `nx.example.` with NXDOMAIN, queries without RD with an empty answer,
/// and counts the queries it gets. `silent` makes it take queries and never answer.
fn test_upstream(silent: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            c.fetch_add(1, Ordering::SeqCst);
            if silent {
                continue;
            }
            let Ok(q) = Message::from_vec(&buf[..n]) else { continue };
            let mut r = Message::response(q.metadata.id, OpCode::Query);
            r.metadata.message_type = MessageType::Response;
            r.metadata.recursion_desired = q.metadata.recursion_desired;
            r.metadata.recursion_available = true;
            r.add_queries(q.queries.clone());
            if let Some(qq) = q.queries.first() {
                if !q.metadata.recursion_desired {
                    // A recursive server asked not to recurse, with nothing cached: an empty
                    // NOERROR without SOA.
                } else if qq.name().to_ascii().starts_with("nx.") {
                    r.metadata.response_code = ResponseCode::NXDomain;
                    let soa = rdata::SOA::new(Name::root(), Name::root(), 1, 1, 1, 1, 30);
                    r.add_authority(Record::from_rdata(Name::from_ascii("example.").unwrap(), 30, RData::SOA(soa)));
                } else if qq.name().to_ascii().starts_with("big") {
                    let n = if qq.name().to_ascii().starts_with("bigger") { 100 } else { 40 };
                    for i in 0..n {
                        let a = RData::A(rdata::A::new(192, 0, 2, i));
                        r.add_answer(Record::from_rdata(qq.name().clone(), 60, a));
                    }
                } else if qq.query_type() == RecordType::A {
                    r.add_answer(Record::from_rdata(qq.name().clone(), 60, RData::A(rdata::A::new(192, 0, 2, 1))));
                }
            }
            let _ = sock.send_to(&r.to_vec().unwrap(), from);
        }
    });
    (addr, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_over_udp_and_tcp() {
    let (addr, _srv) = start(vec![]).await;
    let r = udp(addr, &query("web.default.svc.cluster.local.", RecordType::A, None)).await;
    assert_eq!(a_records(&r), vec!["10.96.0.50"]);
    assert!(r.metadata.authoritative);
    let r = tcp(addr, &query("WEB.default.svc.cluster.local.", RecordType::A, Some(1232))).await;
    assert_eq!(a_records(&r), vec!["10.96.0.50"]);
    assert_eq!(r.queries[0].name().to_ascii(), "WEB.default.svc.cluster.local.", "the client's letter case is kept");
    assert!(r.edns.is_some(), "EDNS in, EDNS out");
    let nx = udp(addr, &query("nope.default.svc.cluster.local.", RecordType::A, None)).await;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    assert!(matches!(nx.authorities[0].data, RData::SOA(_)), "negative answers carry the SOA");
    // No upstreams: names outside the zone are refused, not black-holed.
    let out = udp(addr, &query("example.com.", RecordType::A, None)).await;
    assert_eq!(out.metadata.response_code, ResponseCode::Refused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncates_over_udp_and_answers_whole_over_tcp() {
    let (addr, _srv) = start(vec![]).await;
    // 40 A records (16 bytes each) do not fit in 512 bytes; with EDNS 1232 they do.
    let small = udp(addr, &query("mid.default.svc.cluster.local.", RecordType::A, None)).await;
    assert!(small.metadata.truncation && small.answers.is_empty());
    let edns = udp(addr, &query("mid.default.svc.cluster.local.", RecordType::A, Some(1232))).await;
    assert!(!edns.metadata.truncation);
    assert_eq!(edns.answers.len(), 40);
    // 100 do not fit in 1232 bytes, the most this server sends over UDP whatever the client
    // offers (DNS flag day 2020: no fragments, and little amplification).
    let edns = udp(addr, &query("big.default.svc.cluster.local.", RecordType::A, Some(4096))).await;
    assert!(edns.metadata.truncation && edns.answers.is_empty());
    let whole = tcp(addr, &query("big.default.svc.cluster.local.", RecordType::A, None)).await;
    assert_eq!(whole.answers.len(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_and_caches() {
    let (up, count) = test_upstream(false);
    let (addr, srv) = start(vec![up]).await;
    let r = udp(addr, &query("www.example.org.", RecordType::A, None)).await;
    assert_eq!(a_records(&r), vec!["192.0.2.1"]);
    // The loop probe reached the upstream too; count from here.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = count.load(Ordering::SeqCst);
    for _ in 0..5 {
        let r = udp(addr, &query("www.example.org.", RecordType::A, None)).await;
        assert_eq!(a_records(&r), vec!["192.0.2.1"]);
        assert!(r.answers[0].ttl <= 60);
    }
    assert_eq!(count.load(Ordering::SeqCst), before, "repeated queries come from the cache");
    // Negative answers are cached too (TTL from the SOA).
    for _ in 0..3 {
        let r = udp(addr, &query("nx.example.", RecordType::A, None)).await;
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    }
    assert_eq!(count.load(Ordering::SeqCst), before + 1);
    assert!(srv.metrics.render().contains("weft_dns_cache_hits_total 7"), "{}", srv.metrics.render());
    // Cluster names are never forwarded.
    udp(addr, &query("web.default.svc.cluster.local.", RecordType::A, None)).await;
    assert_eq!(count.load(Ordering::SeqCst), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_over_to_the_next_upstream() {
    let (dead, dead_count) = test_upstream(true);
    let (good, _) = test_upstream(false);
    let (addr, srv) = start(vec![dead, good]).await;
    let r = udp(addr, &query("a.example.net.", RecordType::A, None)).await;
    assert_eq!(a_records(&r), vec!["192.0.2.1"], "answered by the second upstream after the first timed out");
    let down = srv.forwarder.upstreams();
    assert!(!down[0].healthy() && down[1].healthy());
    // The first is now skipped: the next query is answered at once.
    let t = std::time::Instant::now();
    let r = udp(addr, &query("b.example.net.", RecordType::A, None)).await;
    assert_eq!(a_records(&r), vec!["192.0.2.1"]);
    assert!(t.elapsed() < Duration::from_millis(400), "took {:?}", t.elapsed());
    // It keeps being health-checked.
    let seen = dead_count.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(dead_count.load(Ordering::SeqCst) > seen, "health checks go to the failed upstream");
    assert!(srv.metrics.render().contains(&format!("weft_dns_upstream_healthy{{to=\"{dead}\"}} 0")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarding_loop_is_reported_not_fatal() {
    // The upstream is this server itself: everything it forwards comes back.
    let zone = Arc::new(ArcSwap::from_pointee(Zone::build(&snapshot(1), &ZoneConfig::default(), 1)));
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    drop(sock);
    let opts = Options { listen: vec![addr], threads: 1, http: vec![], ..Default::default() };
    let srv = weft_dns::server(zone, &opts);
    weft_dns::listen(&srv, &opts).await.unwrap();
    srv.forwarder.set_upstreams(vec![addr]);
    let mut looped = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if srv.forwarder.upstreams()[0].looping() {
            looped = true;
            break;
        }
    }
    assert!(looped, "the loop probe came back and was recognised");
    let problems = srv.metrics.problems.lock().unwrap().join("\n");
    assert!(problems.contains("forwarding loop") && problems.contains(&addr.to_string()), "{problems}");
    assert!(srv.metrics.render().contains(&format!("weft_dns_forward_loop{{to=\"{addr}\"}} 1")));
    // Still serving: cluster names answer, the rest is refused at once instead of looping.
    let r = udp(addr, &query("web.default.svc.cluster.local.", RecordType::A, None)).await;
    assert_eq!(a_records(&r), vec!["10.96.0.50"]);
    let r = udp(addr, &query("example.com.", RecordType::A, None)).await;
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packets_neither_crash_nor_stall_it() {
    let (up, _) = test_upstream(false);
    let (addr, srv) = start(vec![up]).await;
    let good = query("web.default.svc.cluster.local.", RecordType::A, None);
    let mut bad: Vec<Vec<u8>> = vec![
        vec![],
        vec![0; 11],
        good[..good.len() - 3].to_vec(), // truncated question
        vec![0xff; 65507],               // oversized garbage
        {
            let mut p = good.clone();
            p[12] = 0xc0;
            p[13] = 12;
            p
        }, // pointer to itself in the question
        {
            let mut p = good.clone();
            p[2] |= 0x80;
            p
        }, // a response
        {
            let mut p = good.clone();
            p[11] = 5;
            p
        }, // claims records it lacks
        {
            let mut p = good.clone();
            p[11] = 1;
            p.extend([0xc0, 0x0c + p.len() as u8]);
            p
        }, // pointer loop in additional
        {
            let mut p = good.clone();
            p[12] = 63;
            p
        }, // label running past the end
    ];
    // A pointer loop inside an upstream-bound query.
    let mut looped = query("x.example.", RecordType::A, None);
    looped[11] = 1;
    let at = looped.len();
    looped.extend([0xc0, at as u8, 0, 41, 0, 0, 0, 0, 0, 0, 0, 0]);
    bad.push(looped);
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    for b in &bad {
        let _ = s.send_to(b, addr);
    }
    // Over TCP too, including a length prefix longer than what follows.
    {
        use tokio::io::AsyncWriteExt;
        let mut t = tokio::net::TcpStream::connect(addr).await.unwrap();
        t.write_all(&[0xff, 0xff, 1, 2, 3]).await.unwrap();
        drop(t);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = udp(addr, &good).await;
    assert_eq!(a_records(&r), vec!["10.96.0.50"], "still answering after malformed input");
    let r = tcp(addr, &good).await;
    assert_eq!(a_records(&r), vec!["10.96.0.50"]);
    assert!(srv.metrics.render().contains("weft_dns_malformed_total"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_queries_beyond_max_concurrent_are_refused() {
    // A black-holed upstream: every forwarded query waits out the whole timeout.
    let (up, _) = test_upstream(true);
    let (addr, srv) = start_with(vec![up], |o| o.max_concurrent = 4).await;
    let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..20 {
        s.send_to(&query(&format!("r{i}.blackhole.example."), RecordType::A, None), addr).await.unwrap();
    }
    let mut rcodes = vec![];
    let mut buf = vec![0u8; 4096];
    while rcodes.len() < 20 {
        let n = tokio::time::timeout(Duration::from_secs(5), s.recv(&mut buf))
            .await
            .expect("every query answered")
            .unwrap();
        rcodes.push(Message::from_vec(&buf[..n]).unwrap().metadata.response_code);
    }
    let refused = rcodes.iter().filter(|r| **r == ResponseCode::Refused).count();
    assert_eq!(refused, 16, "4 wait on the upstream, the rest are refused at once: {rcodes:?}");
    assert_eq!(rcodes.iter().filter(|r| **r == ResponseCode::ServFail).count(), 4);
    let m = srv.metrics.render();
    assert!(m.contains("weft_dns_forward_max_concurrent_rejects_total 16"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_is_bounded_in_bytes() {
    let (up, count) = test_upstream(false);
    let budget = 8192;
    let (addr, srv) = start_with(vec![up], |o| o.cache_bytes = budget).await;
    let names: Vec<String> = (0..20).map(|i| format!("big{i}.example.")).collect();
    for n in &names {
        assert_eq!(udp(addr, &query(n, RecordType::A, Some(1232))).await.answers.len(), 40);
    }
    let before = count.load(Ordering::SeqCst);
    for n in &names {
        assert_eq!(udp(addr, &query(n, RecordType::A, Some(1232))).await.answers.len(), 40);
    }
    // 20 answers of ~700 bytes: no more than a dozen fit in 8 KiB, the rest are asked again.
    let again = count.load(Ordering::SeqCst) - before;
    assert!(again >= 8, "only {again} of 20 went upstream again: the cache outgrew its byte budget");
    let m = srv.metrics.render();
    let bytes: usize = m
        .lines()
        .find_map(|l| l.strip_prefix("weft_dns_cache_bytes "))
        .unwrap_or_else(|| panic!("no weft_dns_cache_bytes in {m}"))
        .parse()
        .unwrap();
    assert!(bytes > 0 && bytes <= budget, "{bytes} bytes cached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_norecurse_query_does_not_pin_an_empty_answer() {
    let (up, _) = test_upstream(false);
    let (addr, _srv) = start(vec![up]).await;
    let mut norecurse = query("pinned.example.org.", RecordType::A, None);
    norecurse[2] &= !0x01;
    let r = udp(addr, &norecurse).await;
    assert!(r.answers.is_empty() && !r.metadata.recursion_desired);
    let r = udp(addr, &query("pinned.example.org.", RecordType::A, None)).await;
    assert_eq!(a_records(&r), vec!["192.0.2.1"], "the RD=1 query is not answered from the RD=0 one");
    // And the other way round: an RD=0 query is answered as an RD=0 query.
    let mut norecurse = query("other.example.org.", RecordType::A, None);
    udp(addr, &query("other.example.org.", RecordType::A, None)).await;
    norecurse[2] &= !0x01;
    assert!(!udp(addr, &norecurse).await.metadata.recursion_desired);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_udp_replies_are_capped_at_1232_bytes() {
    let (up, _) = test_upstream(false);
    let (addr, _srv) = start(vec![up]).await;
    let r = udp(addr, &query("bigger.example.", RecordType::A, Some(4096))).await;
    assert!(r.metadata.truncation && r.answers.is_empty(), "{} answers", r.answers.len());
    let r = tcp(addr, &query("bigger.example.", RecordType::A, Some(4096))).await;
    assert_eq!(r.answers.len(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_queries_get_a_minimal_answer() {
    let (up, count) = test_upstream(false);
    let (addr, _srv) = start(vec![up]).await;
    // RFC 8482: one RRset of the name, not all of them.
    let r = udp(addr, &query("cluster.local.", RecordType::ANY, None)).await;
    assert_eq!(r.answers.len(), 1, "{:?}", r.answers);
    let r = udp(addr, &query("web.default.svc.cluster.local.", RecordType::ANY, None)).await;
    assert_eq!(a_records(&r), vec!["10.96.0.50"]);
    // Outside the zone: a synthesized HINFO, as CoreDNS's `any` plugin gives, and nothing
    // sent upstream.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = count.load(Ordering::SeqCst);
    for t in [RecordType::ANY, RecordType::ANY] {
        let r = tcp(addr, &query("www.example.org.", t, Some(1232))).await;
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(matches!(&r.answers[..], [a] if matches!(&a.data, RData::HINFO(_))), "{:?}", r.answers);
        let r = udp(addr, &query("www.example.org.", t, None)).await;
        assert!(matches!(&r.answers[..], [a] if matches!(&a.data, RData::HINFO(_))), "{:?}", r.answers);
    }
    assert_eq!(count.load(Ordering::SeqCst), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_clients_that_never_send_or_never_read_lose_their_slot() {
    use tokio::io::AsyncWriteExt;
    let limits = weft_dns::server::TcpLimits {
        max_connections: 1,
        read: Duration::from_millis(300),
        write: Duration::from_millis(300),
        idle: Duration::from_millis(300),
    };
    let (addr, _srv) = start_with(vec![], |o| o.tcp = limits).await;
    let good = query("web.default.svc.cluster.local.", RecordType::A, None);
    // One connects and never sends: the only slot is freed by the read timeout, and the next
    // client, waiting in the backlog meanwhile, is served.
    let silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), tcp(addr, &good)).await.expect("served after the silent one");
    assert_eq!(a_records(&r), vec!["10.96.0.50"]);
    // One sends thousands of queries with big answers and never reads: the server's writes
    // block once the socket buffers are full, and the write timeout frees the slot.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut greedy = sock.connect(addr).await.unwrap();
    let big = query("big.default.svc.cluster.local.", RecordType::A, None);
    let mut all = vec![];
    for _ in 0..4000 {
        all.extend((big.len() as u16).to_be_bytes());
        all.extend(&big);
    }
    // Bounded: with the fix the server closes the connection and this fails early.
    let _ = tokio::time::timeout(Duration::from_secs(2), greedy.write_all(&all)).await;
    let r = tokio::time::timeout(Duration::from_secs(5), tcp(addr, &good)).await.expect("served after the greedy one");
    assert_eq!(a_records(&r), vec!["10.96.0.50"]);
    drop((silent, greedy));
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;
    use std::sync::{Mutex, OnceLock};
    use weft_dns::{forward, wire};

    /// An upstream's reply to `name` A, with EDNS, a CNAME, an A and an SOA, as two parts: the
    /// header after the ID (flags and counts) and everything after the question, so that it
    /// can be mutated and then fitted to any question of the same length.
    fn reply_parts(name: &str) -> Vec<u8> {
        let n = Name::from_ascii(name).unwrap();
        let t = Name::from_ascii("t.example.").unwrap();
        let mut r = Message::response(0, OpCode::Query);
        r.metadata.recursion_desired = true;
        r.metadata.recursion_available = true;
        r.add_query(Query::query(n.clone(), RecordType::A));
        r.add_answer(Record::from_rdata(n, 300, RData::CNAME(rdata::CNAME(t.clone()))));
        r.add_answer(Record::from_rdata(t, 60, RData::A(rdata::A::new(192, 0, 2, 7))));
        let soa = rdata::SOA::new(Name::from_ascii("ns.example.").unwrap(), Name::root(), 1, 1, 1, 1, 30);
        r.add_authority(Record::from_rdata(Name::from_ascii("example.").unwrap(), 30, RData::SOA(soa)));
        r.set_edns(hickory_proto::op::Edns::new());
        let m = r.to_vec().unwrap();
        let qend = 12 + n_len(&m[12..]) + 4;
        [&m[2..12], &m[qend..]].concat()
    }

    fn n_len(name: &[u8]) -> usize {
        let mut i = 0;
        while i < name.len() && name[i] != 0 {
            i += 1 + name[i] as usize;
        }
        i + 1
    }

    /// `parts` (from `reply_parts`, maybe mutated) made the reply to `query` (one question:
    /// anything else is not taken for a reply and would only wait out the timeout).
    fn fit(parts: &[u8], query: &[u8]) -> Vec<u8> {
        let qend = 12 + n_len(&query[12..]) + 4;
        let mut r = [&query[0..2], &parts[..10.min(parts.len())]].concat();
        r.resize(12, 0);
        r[2] |= 0x80;
        r[4..6].copy_from_slice(&[0, 1]);
        r.extend(&query[12..qend.min(query.len())]);
        r.extend(parts.get(10..).unwrap_or_default());
        r
    }

    fn mutate(mut parts: Vec<u8>, flips: &[(usize, u8)], cut: usize, junk: &[u8]) -> Vec<u8> {
        for (i, b) in flips {
            let n = parts.len();
            parts[i % n] = *b;
        }
        parts.truncate(parts.len().saturating_sub(cut));
        parts.extend(junk);
        parts
    }

    #[test]
    fn the_unmutated_upstream_reply_is_good() {
        let pkt = query("c0001.example.", RecordType::A, Some(1232));
        let r = fit(&reply_parts("c0000.example."), &pkt);
        assert!(forward::is_reply_to(&pkt, &r));
        assert_eq!(Message::from_vec(&r).unwrap().answers.len(), 2);
        assert_eq!(forward::cacheable(&r).map(|c| c.0), Some(30));
    }

    /// An upstream that answers every query with the reply `parts` say, fitted to its question.
    fn hostile_upstream(parts: Arc<Mutex<Vec<u8>>>) -> SocketAddr {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                if n > 12 {
                    let r = fit(&parts.lock().unwrap(), &buf[..n]);
                    let _ = sock.send_to(&r, from);
                }
            }
        });
        addr
    }

    fn server() -> Arc<weft_dns::server::Server> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _g = rt.enter();
        let zone = Arc::new(ArcSwap::from_pointee(Zone::build(&snapshot(20), &ZoneConfig::default(), 1)));
        let s = weft_dns::server(zone, &Options { http: vec![], ..Default::default() });
        std::mem::forget(rt);
        s
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

        /// Arbitrary bytes never panic the query path; what it answers always parses.
        #[test]
        fn arbitrary_bytes(pkt in proptest::collection::vec(any::<u8>(), 0..600)) {
            thread_local!(static S: Arc<weft_dns::server::Server> = server());
            let mut out = vec![];
            S.with(|s| {
                if let weft_dns::server::Step::Reply(_) = s.step(&pkt, false, &mut out) {
                    prop_assert!(out.len() >= 12);
                }
                Ok(())
            })?;
        }

        /// Whatever an upstream sends: the reply check, the cache's TTL, and the rewrite of a
        /// cached reply never panic, and a reply that was cached is still well-formed DNS after.
        #[test]
        fn upstream_replies(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
            cut in prop_oneof![3 => Just(0usize), 1 => 0usize..160],
            junk in proptest::collection::vec(any::<u8>(), 0..12),
            elapsed in any::<u32>(),
        ) {
            let pkt = query("c0000.example.", RecordType::A, Some(1232));
            let wire::Parsed::Query(q) = wire::parse(&pkt) else { panic!("our own query") };
            let reply = fit(&mutate(reply_parts("c0000.example."), &flips, cut, &junk), &pkt);
            // What is not the reply to the query is dropped before anything else reads it.
            if !forward::is_reply_to(&pkt, &reply) {
                return Ok(());
            }
            if let Some((ttl, cached)) = forward::cacheable(&reply) {
                prop_assert!(ttl <= forward::MAX_TTL);
                let reused = wire::reuse(&cached, &q, &pkt, elapsed);
                prop_assert!(reused.is_some_and(|r| Message::from_vec(&r).is_ok()), "{reply:?}");
            }
        }

        #[test]
        fn arbitrary_upstream_bytes(reply in proptest::collection::vec(any::<u8>(), 0..600), elapsed in any::<u32>()) {
            let pkt = query("c0000.example.", RecordType::A, None);
            let wire::Parsed::Query(q) = wire::parse(&pkt) else { panic!("our own query") };
            let _ = forward::is_reply_to(&pkt, &reply);
            let _ = forward::cacheable(&reply);
            let _ = wire::reuse(&reply, &q, &pkt, elapsed);
        }

        /// Mutations of a real query: still no panic, and every reply is well-formed DNS.
        #[test]
        fn mutated_queries(flips in proptest::collection::vec((0usize..64, any::<u8>()), 1..6), cut in 0usize..80) {
            thread_local!(static S: Arc<weft_dns::server::Server> = server());
            let mut pkt = query("web.default.svc.cluster.local.", RecordType::SRV, Some(1232));
            for (i, b) in flips {
                if let Some(x) = pkt.get_mut(i) { *x = b; }
            }
            pkt.truncate(pkt.len().saturating_sub(cut % 8));
            let mut out = vec![];
            S.with(|s| {
                if let weft_dns::server::Step::Reply(_) = s.step(&pkt, false, &mut out) {
                    prop_assert!(Message::from_vec(&out).is_ok(), "reply does not parse: {:?}", out);
                }
                Ok(())
            })?;
        }
    }

    /// A server whose one upstream sends what the test sets, on a runtime of its own.
    struct Hostile {
        rt: tokio::runtime::Runtime,
        addr: SocketAddr,
        parts: Arc<Mutex<Vec<u8>>>,
        next: AtomicUsize,
    }

    fn hostile() -> &'static Hostile {
        static H: OnceLock<Hostile> = OnceLock::new();
        H.get_or_init(|| {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            let parts = Arc::new(Mutex::new(reply_parts("c0000.example.")));
            let up = hostile_upstream(parts.clone());
            let (addr, srv) = rt.block_on(start_with(vec![up], |o| o.upstream_timeout = Duration::from_millis(300)));
            std::mem::forget(srv);
            Hostile { rt, addr, parts, next: AtomicUsize::new(0) }
        })
    }

    proptest! {
        // Over real sockets, so fewer cases.
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Mutated upstream replies through the whole forwarder (reply check, parse, cache,
        /// reuse, truncation to the client's size): the client always gets well-formed DNS
        /// with its own ID, the first time and again (from the cache when it was cached).
        #[test]
        fn forwarded_mutated_replies(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
            cut in prop_oneof![3 => Just(0usize), 1 => 0usize..160],
            junk in proptest::collection::vec(any::<u8>(), 0..12),
            edns in proptest::option::of(512u16..2000),
        ) {
            let h = hostile();
            *h.parts.lock().unwrap() = mutate(reply_parts("c0000.example."), &flips, cut, &junk);
            // A name of the same length the cache has not seen.
            let name = format!("c{:04}.example.", h.next.fetch_add(1, Ordering::SeqCst) % 10_000);
            for _ in 0..2 {
                let pkt = query(&name, RecordType::A, edns);
                let r = h.rt.block_on(udp(h.addr, &pkt));
                prop_assert_eq!(r.metadata.id, u16::from_be_bytes([pkt[0], pkt[1]]));
            }
        }
    }
}
