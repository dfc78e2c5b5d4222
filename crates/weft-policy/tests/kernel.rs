//! The engine against the kernel, in namespaces this test makes (`weft-pol-...`, removed on
//! drop, also on failure): a "node" namespace with a bridge and two "pods" on it (veth pairs
//! into namespaces of their own), and a third "pod" of another node reached by routing through
//! the node. Real TCP and UDP connections show what is allowed, what is denied (a connect times
//! out: the policy drops), that replies pass, that a change cuts a connection it now denies and
//! keeps one it still allows, and that an address of the node's range no pod has yet is
//! isolated. `nft` is only the witness: the table built through netlink is what `nft -f` makes
//! of its text rendering.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use weft_netlink::ns;
use weft_policy::apply::{Applier, NetlinkSink, delta};
use weft_policy::compile::{NodeInfo, compile, recompile};
use weft_policy::model::{PodInfo, Policy, World};

/// Namespaces made by this test, removed when it ends however it ends.
struct Namespaces(Vec<String>);
impl Namespaces {
    fn new() -> Namespaces {
        Namespaces(vec![])
    }
    fn add(&mut self, tag: &str) -> String {
        let name = format!("weft-pol-{}-{tag}", std::process::id());
        ns::create(&name).unwrap();
        self.0.push(name.clone());
        name
    }
}
impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = ns::delete(n);
        }
    }
}

fn ip(ns: &str, args: &[&str]) {
    let o = Command::new("ip").arg("-n").arg(ns).args(args).output().unwrap();
    assert!(o.status.success(), "ip -n {ns} {args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

fn nft(ns: &str, args: &[&str], stdin: Option<&str>) -> String {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, "nft"]).args(args);
    let out = match stdin {
        None => c.output().unwrap(),
        Some(text) => {
            use std::process::Stdio;
            let mut child = c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
            child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
            child.wait_with_output().unwrap()
        }
    };
    assert!(out.status.success(), "nft {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// TCP echo servers on 80 and 81 and UDP echo servers on 80 and 81 in a namespace, until dropped.
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<ns::NsThread<()>>,
}

impl Servers {
    fn start(netns: &str) -> Servers {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = vec![];
        for port in [80u16, 81] {
            let s = stop.clone();
            threads.push(
                ns::spawn_in(Some(&ns::path(netns)), move || {
                    let l = TcpListener::bind(("0.0.0.0", port)).unwrap();
                    l.set_nonblocking(true).unwrap();
                    let deadline = Instant::now() + Duration::from_secs(120);
                    while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                        match l.accept() {
                            Ok((mut c, _)) => {
                                c.set_nonblocking(false).unwrap();
                                c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                                std::thread::spawn(move || {
                                    let mut buf = [0u8; 512];
                                    while let Ok(n) = c.read(&mut buf) {
                                        if n == 0 || c.write_all(&buf[..n]).is_err() {
                                            break;
                                        }
                                    }
                                });
                            }
                            Err(_) => std::thread::sleep(Duration::from_millis(5)),
                        }
                    }
                })
                .unwrap(),
            );
            let s = stop.clone();
            threads.push(
                ns::spawn_in(Some(&ns::path(netns)), move || {
                    let u = UdpSocket::bind(("0.0.0.0", port)).unwrap();
                    u.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                    let deadline = Instant::now() + Duration::from_secs(120);
                    let mut buf = [0u8; 512];
                    while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                        if let Ok((n, from)) = u.recv_from(&mut buf) {
                            let _ = u.send_to(&buf[..n], from);
                        }
                    }
                })
                .unwrap(),
            );
        }
        Servers { stop, threads }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

const WAIT: Duration = Duration::from_millis(700);

/// A TCP connect from a namespace: true when it is accepted and echoes.
fn tcp(from: &str, to: Ipv4Addr, port: u16) -> bool {
    ns::run_in(Some(&ns::path(from)), move || {
        let Ok(mut c) = TcpStream::connect_timeout(&SocketAddr::from((to, port)), WAIT) else { return false };
        c.set_read_timeout(Some(WAIT)).unwrap();
        let mut buf = [0u8; 4];
        c.write_all(b"ping").is_ok() && c.read_exact(&mut buf).is_ok() && &buf == b"ping"
    })
    .unwrap()
}

/// A UDP datagram from a namespace: true when the echo comes back.
fn udp(from: &str, to: Ipv4Addr, port: u16) -> bool {
    ns::run_in(Some(&ns::path(from)), move || {
        let u = UdpSocket::bind("0.0.0.0:0").unwrap();
        u.set_read_timeout(Some(WAIT)).unwrap();
        let mut buf = [0u8; 16];
        for _ in 0..2 {
            let _ = u.send_to(b"ping", (to, port));
            if let Ok((4, _)) = u.recv_from(&mut buf) {
                return true;
            }
        }
        false
    })
    .unwrap()
}

/// A connection kept open, written to and read from inside its namespace.
struct Conn(#[allow(dead_code)] ns::NsThread<()>, std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<bool>);

impl Conn {
    fn open(from: &str, to: Ipv4Addr, port: u16) -> Conn {
        let (ask, asked) = std::sync::mpsc::channel::<()>();
        let (tell, told) = std::sync::mpsc::channel::<bool>();
        let t = ns::spawn_in(Some(&ns::path(from)), move || {
            let mut c = TcpStream::connect_timeout(&SocketAddr::from((to, port)), WAIT).unwrap();
            c.set_read_timeout(Some(WAIT)).unwrap();
            while asked.recv_timeout(Duration::from_secs(60)).is_ok() {
                let mut buf = [0u8; 4];
                let ok = c.write_all(b"ping").is_ok() && c.read_exact(&mut buf).is_ok();
                let _ = tell.send(ok);
                if !ok {
                    break;
                }
            }
        })
        .unwrap();
        Conn(t, ask, told)
    }
    /// Whether a round trip on the open connection still works.
    fn echoes(&self) -> bool {
        self.1.send(()).is_ok() && self.2.recv_timeout(Duration::from_secs(5)).unwrap_or(false)
    }
}

fn pod(ns_: &str, name: &str, labels: serde_json::Value, node: &str, addr: &str) -> (String, String, Option<PodInfo>) {
    let p: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns_, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [
            {"name": "http", "containerPort": 80}, {"name": "dns", "containerPort": 81, "protocol": "UDP"}]}]},
        "status": {"podIP": addr}}))
    .unwrap();
    (ns_.into(), name.into(), PodInfo::from_object(&p))
}

fn policy(v: serde_json::Value) -> Policy {
    Policy::from_object(&serde_json::from_value(v).unwrap())
}

const A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const B: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
const C: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 4);
const R: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 2);

/// The node namespace and its pods: a, b and (unknown to the engine at first) c on the bridge,
/// r routed.
struct Lab {
    _ns: Namespaces,
    node: String,
    a: String,
    b: String,
    c: String,
    r: String,
    world: World,
    info: NodeInfo,
    applier: Applier<NetlinkSink>,
    compiled: weft_policy::compile::Desired,
}

impl Lab {
    fn new() -> Lab {
        let mut n = Namespaces::new();
        let node = n.add("node");
        let (a, b, c, r) = (n.add("a"), n.add("b"), n.add("c"), n.add("r"));
        ip(&node, &["link", "add", "br0", "type", "bridge"]);
        ip(&node, &["addr", "add", "10.244.1.1/24", "dev", "br0"]);
        ip(&node, &["link", "set", "br0", "up"]);
        ns::sysctl(Some(&ns::path(&node)), "net.ipv4.ip_forward", "1").unwrap();
        for (pod, addr) in [(&a, A), (&b, B), (&c, C)] {
            let host = format!("v{}", &pod[pod.len() - 1..]);
            ip(&node, &["link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns", pod]);
            ip(&node, &["link", "set", &host, "master", "br0", "up"]);
            ip(pod, &["addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
            ip(pod, &["link", "set", "eth0", "up"]);
            ip(pod, &["route", "add", "default", "via", "10.244.1.1"]);
        }
        ip(&node, &["link", "add", "vr", "type", "veth", "peer", "name", "eth0", "netns", &r]);
        ip(&node, &["addr", "add", "10.244.2.1/24", "dev", "vr"]);
        ip(&node, &["link", "set", "vr", "up"]);
        ip(&r, &["addr", "add", &format!("{R}/24"), "dev", "eth0"]);
        ip(&r, &["link", "set", "eth0", "up"]);
        ip(&r, &["route", "add", "default", "via", "10.244.2.1"]);
        let mut world = World::default();
        for name in ["x", "y"] {
            world.put_namespace(name.into(), [("kubernetes.io/metadata.name".to_string(), name.to_string())].into());
        }
        for (ns_, name, p) in [
            pod("x", "a", json!({"pod": "a"}), "n1", &A.to_string()),
            pod("x", "b", json!({"pod": "b"}), "n1", &B.to_string()),
            pod("y", "r", json!({"pod": "r"}), "n2", &R.to_string()),
        ] {
            world.put_pod((ns_, name), p);
        }
        let info = NodeInfo { name: "n1".into(), pod_cidrs: vec!["10.244.1.0/24".parse().unwrap()] };
        let applier = Applier::new(NetlinkSink { netns: Some(ns::path(&node)) });
        let compiled = compile(&world, &info);
        world.take_changes();
        let mut lab = Lab { _ns: n, node, a, b, c, r, world, info, applier, compiled };
        lab.applier.sync(lab.compiled.clone()).unwrap();
        lab
    }

    /// Compiles what changed and applies it.
    fn sync(&mut self) {
        let changes = self.world.take_changes();
        self.compiled = recompile(Some(&self.compiled), &self.world, &self.info, &changes);
        self.applier.sync(self.compiled.clone()).unwrap();
    }

    fn node_path(&self) -> PathBuf {
        ns::path(&self.node)
    }
}

#[test]
fn real_connections_meet_the_policies() {
    let mut lab = Lab::new();
    let _servers: Vec<Servers> = [&lab.a, &lab.b, &lab.r, &lab.c].iter().map(|n| Servers::start(n)).collect();
    std::thread::sleep(Duration::from_millis(100));
    let (a, b, c, r) = (lab.a.clone(), lab.b.clone(), lab.c.clone(), lab.r.clone());

    // No policy: open, bridged and routed. c is no pod the engine knows: isolated both ways.
    assert!(tcp(&a, B, 80) && udp(&a, B, 81), "bridged, no policy");
    assert!(tcp(&r, A, 80) && tcp(&a, R, 81), "routed, no policy");
    assert!(!tcp(&a, C, 80) && !tcp(&c, R, 80), "an unknown address of the node's range is isolated");
    // Once known, it is an ordinary pod.
    let (ns_, name, p) = pod("x", "c", json!({"pod": "c"}), "n1", &C.to_string());
    lab.world.put_pod((ns_, name), p);
    lab.sync();
    assert!(tcp(&a, C, 80) && tcp(&c, R, 80), "known: open");

    // b accepts only a, on TCP 80 and on its named UDP port.
    lab.world.put_policy(policy(json!({"metadata": {"name": "b-from-a", "namespace": "x"}, "spec": {
        "podSelector": {"matchLabels": {"pod": "b"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "a"}}}], "ports": [{"port": 80}, {"port": "dns", "protocol": "UDP"}]}]}})));
    lab.sync();
    assert!(tcp(&a, B, 80), "allowed (and its replies pass)");
    assert!(udp(&a, B, 81), "the named UDP port");
    assert!(!tcp(&a, B, 81), "another port: dropped");
    assert!(!udp(&a, B, 80), "another protocol on the named port's number");
    assert!(!tcp(&c, B, 80), "another pod of the bridge: dropped");
    assert!(!tcp(&r, B, 80), "routed from another node: dropped");
    assert!(tcp(&b, A, 80) && tcp(&b, R, 80), "b's own connections are not ingress: open, replies pass");

    // An open connection a -> b:80; then a change that denies it cuts it.
    let conn = Conn::open(&a, B, 80);
    assert!(conn.echoes());
    // A change that still allows it keeps it.
    lab.world.put_policy(policy(json!({"metadata": {"name": "b-from-a", "namespace": "x"}, "spec": {
        "podSelector": {"matchLabels": {"pod": "b"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "a"}}}], "ports": [{"port": 80}, {"port": 81}]}]}})));
    lab.sync();
    assert!(conn.echoes(), "still allowed: kept");
    assert!(tcp(&a, B, 81));
    lab.world.put_policy(policy(json!({"metadata": {"name": "b-from-a", "namespace": "x"}, "spec": {
        "podSelector": {"matchLabels": {"pod": "b"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "c"}}}]}]}})));
    lab.sync();
    assert!(!conn.echoes(), "denied now: the open connection is cut");
    assert!(tcp(&c, B, 80) && !tcp(&a, B, 80));

    // Egress: a may open only UDP to r's namespace; r may still reach a, and a's replies pass.
    lab.world.put_policy(policy(json!({"metadata": {"name": "a-out", "namespace": "x"}, "spec": {
        "podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
        "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "y"}}}], "ports": [{"protocol": "UDP"}]}]}})));
    lab.sync();
    assert!(udp(&a, R, 80), "egress allowed");
    assert!(!tcp(&a, R, 80), "egress to r over TCP: dropped");
    assert!(!tcp(&a, C, 80), "egress to c: dropped (bridged)");
    assert!(tcp(&r, A, 81) && tcp(&c, A, 80), "ingress to a is open; replies of a pass");

    // Deleting the policies opens everything again.
    lab.world.remove_policy(&("x".into(), "a-out".into()));
    lab.world.remove_policy(&("x".into(), "b-from-a".into()));
    lab.sync();
    assert!(tcp(&a, B, 81) && tcp(&a, R, 80) && tcp(&r, B, 80));
    let table = nft(&lab.node, &["list", "table", "ip", "weft-policy"], None);
    assert!(!table.contains("chain in-") && !table.contains("chain eg-"), "no chain left behind:\n{table}");
    assert!(!table.contains("-i0-") && !table.contains("-e0-"), "no policy set left behind:\n{table}");
    // The pod goes: its address is isolated again.
    lab.world.remove_pod(&("x".into(), "c".into()));
    lab.sync();
    assert!(!tcp(&a, C, 80));
    let _ = lab.node_path();
}

/// Every kind of rule: pods and ipBlocks, numbered, ranged and named ports, both directions,
/// several policies on one pod.
fn rich_world() -> World {
    let mut w = World::default();
    for name in ["x", "y"] {
        w.put_namespace(name.into(), [("kubernetes.io/metadata.name".to_string(), name.to_string())].into());
    }
    for (ns_, name, p) in [
        pod("x", "a", json!({"pod": "a"}), "n1", "10.244.1.2"),
        pod("x", "b", json!({"pod": "b"}), "n1", "10.244.1.3"),
        pod("y", "r", json!({"pod": "r"}), "n2", "10.244.2.2"),
    ] {
        w.put_pod((ns_, name), p);
    }
    for v in [
        json!({"metadata": {"name": "p1", "namespace": "x"}, "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "a"}}}, {"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.3.0/24"]}}],
                         "ports": [{"port": 80}, {"port": 8000, "endPort": 8100, "protocol": "UDP"}, {"port": "http"}, {"protocol": "SCTP"}]}],
            "egress": [{"to": [{"namespaceSelector": {}}], "ports": [{"port": "dns", "protocol": "UDP"}]}, {"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]}}),
        json!({"metadata": {"name": "p2", "namespace": "x"}, "spec": {"podSelector": {"matchLabels": {"pod": "b"}},
            "ingress": [{}, {"from": []}]}}),
        json!({"metadata": {"name": "p3", "namespace": "y"}, "spec": {"podSelector": {}, "ingress": []}}),
    ] {
        w.put_policy(policy(v));
    }
    w.take_changes();
    w
}

#[test]
fn the_table_built_through_netlink_is_what_nft_makes_of_its_text() {
    let mut n = Namespaces::new();
    let (by_netlink, by_nft) = (n.add("t-nl"), n.add("t-nft"));
    let info = NodeInfo { name: "n1".into(), pod_cidrs: vec!["10.244.1.0/24".parse().unwrap()] };
    let want = compile(&rich_world(), &info);
    let d = delta(None, &want);
    assert!(d.is_fresh());
    Applier::new(NetlinkSink { netns: Some(ns::path(&by_netlink)) }).sync(want).unwrap();
    nft(&by_nft, &["-f", "-"], Some(&d.text()));
    let list = |n: &str| nft(n, &["list", "table", "ip", "weft-policy"], None);
    let (got, text) = (list(&by_netlink), list(&by_nft));
    assert_eq!(got, text, "netlink:\n{got}\nnft:\n{text}");
    for s in [
        "ip saddr @p",
        "meta l4proto . th dport @p",
        "ip daddr . meta l4proto . th dport @p",
        "log prefix \"in-",
        "jump eg-",
    ] {
        assert!(got.contains(s), "{s} in\n{got}");
    }
}

#[test]
fn deltas_end_where_a_fresh_table_starts_and_a_restart_replaces_the_table() {
    let mut n = Namespaces::new();
    let (inc, fresh) = (n.add("d-inc"), n.add("d-fresh"));
    let info = NodeInfo { name: "n1".into(), pod_cidrs: vec!["10.244.1.0/24".parse().unwrap()] };
    let mut w = rich_world();
    let mut compiled = compile(&w, &info);
    let mut a = Applier::new(NetlinkSink { netns: Some(ns::path(&inc)) });
    a.sync(compiled.clone()).unwrap();
    // Pods come and go, a policy changes its rules, another goes, a namespace is relabelled.
    let (ns_, name, p) = pod("x", "c", json!({"pod": "a"}), "n1", "10.244.1.4");
    w.put_pod((ns_, name), p);
    w.remove_pod(&("x".into(), "b".into()));
    w.put_policy(policy(
        json!({"metadata": {"name": "p2", "namespace": "x"}, "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}}], "ports": [{"port": 443}]}]}}),
    ));
    w.remove_policy(&("y".into(), "p3".into()));
    w.put_namespace(
        "y".into(),
        [("kubernetes.io/metadata.name".to_string(), "y".to_string()), ("t".into(), "1".into())].into(),
    );
    let changes = w.take_changes();
    compiled = recompile(Some(&compiled), &w, &info, &changes);
    assert!(a.sync(compiled.clone()).unwrap() > 0);
    // The same world, made fresh in another namespace: the same table.
    Applier::new(NetlinkSink { netns: Some(ns::path(&fresh)) }).sync(compiled.clone()).unwrap();
    let list = |n: &str| nft(n, &["list", "table", "ip", "weft-policy"], None);
    assert_eq!(list(&inc), list(&fresh));
    // A restarted engine (a new applier) replaces the table whole, in one transaction.
    let mut restarted = Applier::new(NetlinkSink { netns: Some(ns::path(&inc)) });
    let empty = compile(&World::default(), &info);
    restarted.sync(empty).unwrap();
    let table = list(&inc);
    assert_eq!(table.matches("chain forward").count(), 1, "{table}");
    assert!(!table.contains("chain in-") && !table.contains("-i0-"), "{table}");
    // Nothing to do: nothing sent.
    assert_eq!(restarted.sync(compile(&World::default(), &info)).unwrap(), 0);
}

#[test]
fn preflight_builds_the_table_in_a_throwaway_namespace() {
    weft_policy::apply::preflight().unwrap();
}
