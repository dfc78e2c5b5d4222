//! The applier against the kernel, in a namespace this test makes: what the netlink writer puts
//! in the maps is what `nft` (an independent observer) lists, and deltas add and remove exactly.

use std::process::Command;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;
use weft_proxy::apply::{Applier, NetlinkSink};
use weft_proxy::compile::{NodeInfo, compile};

struct Ns(String);
impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn world(eps: &[&str]) -> (Vec<Service>, Vec<EndpointSlice>) {
    let s: Service = serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.7", "type": "NodePort", "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30007}]}})).unwrap();
    let endpoints: Vec<_> = eps.iter().map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}})).collect();
    let e: EndpointSlice = serde_json::from_value(
        json!({"metadata": {"name": "web-x", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4", "endpoints": endpoints, "ports": [{"name": "", "protocol": "TCP", "port": 8080}]}),
    )
    .unwrap();
    (vec![s], vec![e])
}

fn list(ns: &Ns, what: &[&str]) -> String {
    let o = Command::new("ip").args(["netns", "exec", &ns.0, "nft", "list"]).args(what).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]
fn netlink_elements_are_what_nft_lists() {
    let ns = Ns(format!("weft-proxy-k-{}", std::process::id()));
    assert!(Command::new("ip").args(["netns", "add", &ns.0]).status().unwrap().success());
    let node = NodeInfo { name: "n1".into(), cluster_cidr: "10.244.0.0/16".parse().unwrap() };
    let mut a = Applier::new(NetlinkSink { netns: Some(format!("/run/netns/{}", ns.0).into()) });
    let (s, e) = world(&["10.244.1.2", "10.244.2.2"]);
    a.sync(compile(&s, &e, &node)).unwrap();
    let backends = list(&ns, &["map", "ip", "weft-proxy", "backends-tcp"]);
    assert!(backends.contains("10.96.0.7 . tcp . 80 . 0 : 10.244.1.2 . 8080"), "{backends}");
    assert!(backends.contains("10.96.0.7 . tcp . 80 . 1 : 10.244.2.2 . 8080"), "{backends}");
    let services = list(&ns, &["map", "ip", "weft-proxy", "services"]);
    assert!(services.contains("10.96.0.7 . tcp . 80 : goto vip-cluster-random-tcp-2"), "{services}");
    let np = list(&ns, &["map", "ip", "weft-proxy", "nodeports"]);
    assert!(np.contains("tcp . 30007 : goto np-masq-random-tcp-2"), "{np}");
    // One endpoint goes away: its element goes, the Service moves to the one-endpoint chain.
    let (s, e) = world(&["10.244.1.2"]);
    a.sync(compile(&s, &e, &node)).unwrap();
    let backends = list(&ns, &["map", "ip", "weft-proxy", "backends-tcp"]);
    assert!(!backends.contains("10.244.2.2"), "{backends}");
    assert!(list(&ns, &["map", "ip", "weft-proxy", "services"]).contains("goto vip-cluster-random-tcp-1"));
    // No endpoints: refused.
    let (s, e) = world(&[]);
    a.sync(compile(&s, &e, &node)).unwrap();
    assert!(list(&ns, &["set", "ip", "weft-proxy", "no-endpoints"]).contains("10.96.0.7 . tcp . 80"));
    assert!(!list(&ns, &["map", "ip", "weft-proxy", "services"]).contains("10.96.0.7"));
}

fn udp_world(eps: &[&str]) -> (Vec<Service>, Vec<EndpointSlice>) {
    let s: Service = serde_json::from_value(json!({"metadata": {"name": "dns", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.53", "ports": [{"port": 53, "protocol": "UDP"}]}}))
    .unwrap();
    let endpoints: Vec<_> = eps.iter().map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}})).collect();
    let e: EndpointSlice = serde_json::from_value(
        json!({"metadata": {"name": "dns-x", "namespace": "default", "labels": {"kubernetes.io/service-name": "dns"}},
        "addressType": "IPv4", "endpoints": endpoints, "ports": [{"name": "", "protocol": "UDP", "port": 5353}]}),
    )
    .unwrap();
    (vec![s], vec![e])
}

#[test]
fn stale_udp_conntrack_entries_go_with_their_endpoint() {
    let c = Ns(format!("weft-proxy-u-{}-c", std::process::id()));
    let b = Ns(format!("weft-proxy-u-{}-b", std::process::id()));
    let ip = |ns: &Ns, args: &[&str]| {
        assert!(Command::new("ip").arg("-n").arg(&ns.0).args(args).status().unwrap().success(), "{args:?}")
    };
    for n in [&c, &b] {
        assert!(Command::new("ip").args(["netns", "add", &n.0]).status().unwrap().success());
    }
    ip(&c, &["link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &b.0]);
    ip(&c, &["addr", "add", "10.250.1.1/24", "dev", "eth0"]);
    ip(&b, &["addr", "add", "10.250.1.2/24", "dev", "eth0"]);
    ip(&b, &["addr", "add", "10.250.1.3/24", "dev", "eth0"]);
    ip(&c, &["link", "set", "eth0", "up"]);
    ip(&b, &["link", "set", "eth0", "up"]);
    ip(&c, &["route", "add", "10.96.0.0/12", "via", "10.250.1.2"]);
    let node = NodeInfo { name: "n1".into(), cluster_cidr: "10.244.0.0/16".parse().unwrap() };
    let mut a = Applier::new(NetlinkSink { netns: Some(format!("/run/netns/{}", c.0).into()) });
    let (s, e) = udp_world(&["10.250.1.2", "10.250.1.3"]);
    a.sync(compile(&s, &e, &node)).unwrap();
    let entries = || -> String {
        let o = Command::new("ip").args(["netns", "exec", &c.0, "conntrack", "-L", "-p", "udp"]).output().unwrap();
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    // Datagrams from many source ports until both endpoints carry flows (bounded).
    let f = std::fs::File::open(format!("/run/netns/{}", c.0)).unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        for _ in 0..64 {
            let s = std::net::UdpSocket::bind("10.250.1.1:0").unwrap();
            let _ = s.send_to(b"q", "10.96.0.53:53");
        }
    })
    .join()
    .unwrap();
    let before = entries();
    assert!(before.contains("src=10.250.1.3") && before.contains("src=10.250.1.2"), "{before}");
    // The endpoint 10.250.1.3 goes away: its flows go, the others stay.
    let (s, e) = udp_world(&["10.250.1.2"]);
    a.sync(compile(&s, &e, &node)).unwrap();
    let after = entries();
    assert!(!after.contains("src=10.250.1.3"), "{after}");
    assert!(after.contains("src=10.250.1.2"), "{after}");
}

#[test]
fn a_restarted_proxy_replaces_the_table_in_one_transaction() {
    let ns = Ns(format!("weft-proxy-r-{}", std::process::id()));
    assert!(Command::new("ip").args(["netns", "add", &ns.0]).status().unwrap().success());
    let node = NodeInfo { name: "n1".into(), cluster_cidr: "10.244.0.0/16".parse().unwrap() };
    let sink = || NetlinkSink { netns: Some(format!("/run/netns/{}", ns.0).into()) };
    let (s, e) = world(&["10.244.1.2", "10.244.2.2"]);
    Applier::new(sink()).sync(compile(&s, &e, &node)).unwrap();
    // A new applier (the proxy restarted) finds the table there and replaces it whole: the
    // result is the new programme alone, structure and elements.
    let (s, e) = world(&["10.244.3.3"]);
    let mut b = Applier::new(sink());
    b.sync(compile(&s, &e, &node)).unwrap();
    let backends = list(&ns, &["map", "ip", "weft-proxy", "backends-tcp"]);
    assert!(backends.contains("10.244.3.3") && !backends.contains("10.244.1.2"), "{backends}");
    let table = list(&ns, &["table", "ip", "weft-proxy"]);
    assert_eq!(table.matches("chain services {").count(), 1, "one table, not two: {table}");
    // And a change after it goes by netlink as usual.
    let (s, e) = world(&["10.244.3.3", "10.244.4.4"]);
    b.sync(compile(&s, &e, &node)).unwrap();
    assert!(list(&ns, &["map", "ip", "weft-proxy", "backends-tcp"]).contains("10.244.4.4"));
}
