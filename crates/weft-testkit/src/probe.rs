//! Real packets between a lab's pods, for tests of what the network lets through: a TCP
//! connection (then one HTTP exchange with the built-in echo server, which names the pod that
//! answered) or a UDP datagram and its echo, sent from inside a pod's (or node's, or the
//! external host's) network namespace by a thread of the test process that enters it, each
//! bounded by a short time-out; many at once on a bounded number of threads.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::Lab;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    /// As the Kubernetes API spells it.
    pub fn api(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        }
    }
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.api())
    }
}

/// What one probe saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The exchange completed with the expected server.
    Connected,
    /// No answer within the time-out: the packets were dropped somewhere.
    TimedOut,
    /// Refused: a TCP reset or an ICMP port unreachable came back (the packet reached a kernel
    /// that had no listener, or a firewall rejected it with a reset).
    Refused,
    /// Another error at connect or send (e.g. an ICMP host or admin prohibited: EHOSTUNREACH).
    Unreachable(String),
    /// Connected, but the exchange failed or the wrong server answered.
    Broken(String),
}

impl Outcome {
    /// The exchange succeeded.
    pub fn connected(&self) -> bool {
        matches!(self, Outcome::Connected)
    }

    /// Some packet reached a server's kernel: connected, refused (no listener yet) or broken.
    /// For "never reachable" checks; a firewall that rejects with a TCP reset also shows as
    /// refused.
    pub fn reached(&self) -> bool {
        matches!(self, Outcome::Connected | Outcome::Refused | Outcome::Broken(_))
    }

    /// One character for a truth table: `.` connected, `X` not (timed out, refused,
    /// unreachable), `!` connected but broken.
    pub fn mark(&self) -> char {
        match self {
            Outcome::Connected => '.',
            Outcome::Broken(_) => '!',
            _ => 'X',
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Outcome::Connected => "connected".into(),
            Outcome::TimedOut => "timed out".into(),
            Outcome::Refused => "refused".into(),
            Outcome::Unreachable(e) => format!("unreachable ({e})"),
            Outcome::Broken(e) => format!("connected but broken ({e})"),
        }
    }
}

/// Who should answer: the built-in echo server of this pod (the namespace is checked over TCP,
/// where the answer carries it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answerer {
    pub namespace: String,
    pub pod: String,
}

impl Answerer {
    pub fn new(namespace: &str, pod: &str) -> Answerer {
        Answerer { namespace: namespace.into(), pod: pod.into() }
    }
}

/// One probe: from inside `netns`, to `addr` over `proto`.
#[derive(Clone, Debug)]
pub struct Job {
    pub netns: PathBuf,
    pub addr: SocketAddr,
    pub proto: Proto,
    /// Checked against the answer when set; any answer will do when not.
    pub expect: Option<Answerer>,
    pub timeout: Duration,
}

fn classify(e: &std::io::Error) -> Outcome {
    match e.kind() {
        ErrorKind::TimedOut | ErrorKind::WouldBlock => Outcome::TimedOut,
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionReset => Outcome::Refused,
        _ => Outcome::Unreachable(e.to_string()),
    }
}

/// `GET /` to the echo server at `addr` over a fresh connection, in this thread's namespace;
/// the JSON answer. The connection is made within `timeout`, and each read and write too.
pub fn http_get(addr: SocketAddr, timeout: Duration) -> std::result::Result<Value, Outcome> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| classify(&e))?;
    let broken = |what: &str, e: std::io::Error| Outcome::Broken(format!("{what}: {e}"));
    s.set_read_timeout(Some(timeout)).map_err(|e| broken("read time-out", e))?;
    s.set_write_timeout(Some(timeout)).map_err(|e| broken("write time-out", e))?;
    s.write_all(format!("GET /probe HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).map_err(|e| broken("write", e))?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    // HTTP/1.0 without keep-alive: the server closes after its answer. Bounded in size.
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) => return Err(broken("read", e)),
        }
        if answer.len() > 1 << 20 {
            return Err(Outcome::Broken("an answer over 1 MiB".into()));
        }
    }
    let text = String::from_utf8_lossy(&answer);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    serde_json::from_str(body.trim())
        .map_err(|e| Outcome::Broken(format!("not the echo server's JSON ({e}): {text:.200}")))
}

/// A TCP connection and one HTTP exchange with the echo server at `addr`, in this thread's
/// namespace.
pub fn tcp(addr: SocketAddr, timeout: Duration, expect: Option<&Answerer>) -> Outcome {
    match http_get(addr, timeout) {
        Err(o) => o,
        Ok(v) => match expect {
            Some(a) if v["pod"] != a.pod.as_str() || v["namespace"] != a.namespace.as_str() => {
                Outcome::Broken(format!("answered by {}/{}, not {}/{}", v["namespace"], v["pod"], a.namespace, a.pod))
            }
            _ => Outcome::Connected,
        },
    }
}

/// Sends `payload` to `addr` over UDP from a connected socket (so an ICMP error shows) and
/// waits for one datagram back, sending again halfway through `timeout` if nothing came.
pub fn udp_exchange(addr: SocketAddr, payload: &[u8], timeout: Duration) -> std::result::Result<Vec<u8>, Outcome> {
    let bind: SocketAddr = if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("an address");
    let s = UdpSocket::bind(bind).map_err(|e| Outcome::Unreachable(format!("bind: {e}")))?;
    s.connect(addr).map_err(|e| classify(&e))?;
    let until = Instant::now() + timeout;
    let mut buf = vec![0u8; 65536];
    for attempt in 0..2 {
        s.send(payload).map_err(|e| classify(&e))?;
        let wait_until = if attempt == 0 { Instant::now() + timeout / 2 } else { until };
        loop {
            let left = wait_until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            s.set_read_timeout(Some(left)).map_err(|e| Outcome::Unreachable(e.to_string()))?;
            match s.recv(&mut buf) {
                Ok(n) => return Ok(buf[..n].to_vec()),
                Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(classify(&e)),
            }
        }
    }
    Err(Outcome::TimedOut)
}

static NONCE: AtomicUsize = AtomicUsize::new(0);

/// A datagram to the echo server at `addr` and its echo ("<pod> <client> <message>"), in this
/// thread's namespace.
pub fn udp(addr: SocketAddr, timeout: Duration, expect: Option<&Answerer>) -> Outcome {
    let msg = format!("probe-{}-{}", std::process::id(), NONCE.fetch_add(1, Ordering::Relaxed));
    match udp_exchange(addr, msg.as_bytes(), timeout) {
        Err(o) => o,
        Ok(reply) => {
            let reply = String::from_utf8_lossy(&reply);
            let who = reply.split(' ').next().unwrap_or("");
            if !reply.ends_with(&msg) {
                Outcome::Broken(format!("an echo that is not ours: {reply:.100}"))
            } else if expect.is_some_and(|a| a.pod != who) {
                Outcome::Broken(format!("answered by {who}, not {}", expect.map(|a| a.pod.as_str()).unwrap_or("")))
            } else {
                Outcome::Connected
            }
        }
    }
}

/// Runs one probe in its namespace.
pub fn probe(job: &Job) -> Outcome {
    let j = job.clone();
    let r = weft_netlink::ns::run_in(Some(&job.netns), move || match j.proto {
        Proto::Tcp => tcp(j.addr, j.timeout, j.expect.as_ref()),
        Proto::Udp => udp(j.addr, j.timeout, j.expect.as_ref()),
    });
    r.unwrap_or_else(|e| Outcome::Unreachable(format!("entering {}: {e}", job.netns.display())))
}

/// Runs `jobs` on at most `parallel` threads at once; outcomes in the jobs' order.
pub fn probe_all(jobs: &[Job], parallel: usize) -> Vec<Outcome> {
    let next = AtomicUsize::new(0);
    let out: Mutex<Vec<Option<Outcome>>> = Mutex::new(vec![None; jobs.len()]);
    std::thread::scope(|s| {
        for _ in 0..parallel.clamp(1, jobs.len().max(1)) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(job) = jobs.get(i) else { break };
                    let o = probe(job);
                    out.lock().unwrap()[i] = Some(o);
                }
            });
        }
    });
    out.into_inner().unwrap().into_iter().map(|o| o.expect("every job ran")).collect()
}

/// The network namespace of the pod `namespace/name` (its sandbox record; with `uid`, only that
/// pod's, not an older pod's of the same name).
pub fn pod_netns(lab: &Lab, namespace: &str, name: &str, uid: Option<&str>) -> Result<PathBuf> {
    let dir = lab.state_dir().join("pods");
    for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?.flatten() {
        let Ok(bytes) = std::fs::read(e.path().join("sandbox.json")) else { continue };
        let Ok(v) = serde_json::from_slice::<Value>(&bytes) else { continue };
        if v["namespace"] == namespace && v["name"] == name && uid.is_none_or(|u| v["uid"] == u) {
            let ns = v["netns"].as_str().context("a sandbox without netns")?;
            return Ok(netns_path(ns));
        }
    }
    bail!("no sandbox for the pod {namespace}/{name}")
}

/// The path of a network namespace named in a sandbox record (a name, or already a path).
pub fn netns_path(netns: &str) -> PathBuf {
    if netns.starts_with('/') { PathBuf::from(netns) } else { weft_netlink::ns::path(netns) }
}

/// The lab's external host's network namespace.
pub fn external_netns(lab: &Lab) -> PathBuf {
    weft_netlink::ns::path(&format!("weft-{}-external", lab.name))
}

/// A lab node's network namespace.
pub fn node_netns(lab: &Lab, node: &str) -> PathBuf {
    weft_netlink::ns::path(&format!("weft-{}-{node}", lab.name))
}

/// Whether `p` is there and is a namespace.
pub fn netns_exists(p: &Path) -> bool {
    weft_netlink::ns::is_netns(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn outcomes_read_as_a_truth_table_does() {
        assert_eq!(Outcome::Connected.mark(), '.');
        assert_eq!(Outcome::TimedOut.mark(), 'X');
        assert_eq!(Outcome::Broken("x".into()).mark(), '!');
        assert!(Outcome::Refused.reached() && !Outcome::TimedOut.reached() && !Outcome::Refused.connected());
    }

    #[test]
    fn tcp_and_udp_on_loopback() {
        // An HTTP server that answers once as the echo server does.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).unwrap();
            let body = r#"{"pod":"a","namespace":"x"}"#;
            write!(s, "HTTP/1.0 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len()).unwrap();
        });
        let t = Duration::from_secs(2);
        assert_eq!(tcp(addr, t, Some(&Answerer::new("x", "a"))), Outcome::Connected);
        server.join().unwrap();
        // Nobody listens any more: refused at once.
        assert_eq!(tcp(addr, t, None), Outcome::Refused);

        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let uaddr = u.local_addr().unwrap();
        let echo = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            let (n, peer) = u.recv_from(&mut buf).unwrap();
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            u.send_to(format!("b {peer} {msg}").as_bytes(), peer).unwrap();
        });
        assert_eq!(udp(uaddr, t, Some(&Answerer::new("x", "b"))), Outcome::Connected);
        echo.join().unwrap();
        // No echo now: an ICMP port unreachable on loopback, refused.
        assert_eq!(udp(uaddr, t, None), Outcome::Refused);
    }
}
