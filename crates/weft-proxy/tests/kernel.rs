//! The applier against the kernel, in a namespace this test makes: what the netlink batches put
//! in the table is what `nft` (an independent observer) lists, the table built through netlink is
//! what `nft` makes of its text rendering, and deltas add and remove exactly.

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
    weft_netlink::ns::run_in(Some(format!("/run/netns/{}", c.0).as_ref()), || {
        for _ in 0..64 {
            let s = std::net::UdpSocket::bind("10.250.1.1:0").unwrap();
            let _ = s.send_to(b"q", "10.96.0.53:53");
        }
    })
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

/// Every kind of shared chain, node ports, no-endpoint refusals and source ranges.
fn rich_world() -> (Vec<Service>, Vec<EndpointSlice>) {
    let svc = |name: &str, spec: serde_json::Value| -> Service {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec})).unwrap()
    };
    let mut lb = svc(
        "lb",
        json!({"clusterIP": "10.96.0.9", "type": "LoadBalancer", "externalTrafficPolicy": "Local",
        "loadBalancerSourceRanges": ["192.168.0.0/16", "10.1.2.3/32"],
        "ports": [{"port": 443, "protocol": "TCP", "nodePort": 30443}]}),
    );
    lb.status = Some(serde_json::from_value(json!({"loadBalancer": {"ingress": [{"ip": "172.18.255.1"}]}})).unwrap());
    let services = vec![
        svc(
            "aff",
            json!({"clusterIP": "10.96.0.8", "sessionAffinity": "ClientIP", "type": "NodePort",
            "ports": [{"port": 53, "protocol": "UDP", "nodePort": 30053}]}),
        ),
        svc("sig", json!({"clusterIP": "10.96.0.10", "ports": [{"port": 3868, "protocol": "SCTP"}]})),
        svc(
            "empty",
            json!({"clusterIP": "10.96.0.11", "type": "NodePort", "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}]}),
        ),
        lb,
    ];
    let slice = |name: &str, proto: &str, port: u16, eps: &[(&str, &str)]| -> EndpointSlice {
        let endpoints: Vec<_> = eps
            .iter()
            .map(|(ip, node)| json!({"addresses": [ip], "nodeName": node, "conditions": {"ready": true}}))
            .collect();
        serde_json::from_value(json!({"metadata": {"name": format!("{name}-x"), "namespace": "default",
            "labels": {"kubernetes.io/service-name": name}}, "addressType": "IPv4", "endpoints": endpoints,
            "ports": [{"name": "", "protocol": proto, "port": port}]}))
        .unwrap()
    };
    let slices = vec![
        slice("aff", "UDP", 5353, &[("10.244.1.2", "n1"), ("10.244.2.2", "n2")]),
        slice("sig", "SCTP", 3868, &[("10.244.1.3", "n1")]),
        slice("lb", "TCP", 8443, &[("10.244.1.4", "n1"), ("10.244.2.4", "n2")]),
    ];
    (services, slices)
}

#[test]
fn the_table_built_through_netlink_is_what_nft_makes_of_its_text() {
    let by_netlink = Ns(format!("weft-proxy-t-{}-n", std::process::id()));
    let by_nft = Ns(format!("weft-proxy-t-{}-f", std::process::id()));
    for n in [&by_netlink, &by_nft] {
        assert!(Command::new("ip").args(["netns", "add", &n.0]).status().unwrap().success());
    }
    // A cluster CIDR off a byte boundary: nft masks it.
    let node = NodeInfo { name: "n1".into(), cluster_cidr: "10.240.0.0/12".parse().unwrap() };
    let (s, e) = rich_world();
    let want = compile(&s, &e, &node);
    let text = weft_proxy::apply::script(None, &want);
    Applier::new(NetlinkSink { netns: Some(format!("/run/netns/{}", by_netlink.0).into()) }).sync(want).unwrap();
    let mut nft = Command::new("ip")
        .args(["netns", "exec", &by_nft.0, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    nft.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    assert!(nft.wait().unwrap().success(), "nft refused the text rendering:\n{text}");
    let netlink = list(&by_netlink, &["table", "ip", "weft-proxy"]);
    let text_made = list(&by_nft, &["table", "ip", "weft-proxy"]);
    assert_eq!(netlink, text_made, "the same table, rule for rule and element for element");
    // And it holds what the rendering says, read by nft.
    for expected in [
        "jhash ip saddr mod 2 seed 0x5eed",
        "ip saddr != 10.240.0.0/12 jump mark-masq",
        "172.18.255.1 . tcp . 443 . 192.168.0.0/16",
        "udp . 30053 : goto np-masq-affinity-udp-2",
        "10.96.0.10 . sctp . 3868 : goto vip-cluster-random-sctp-1",
        "tcp . 30080",
    ] {
        assert!(netlink.contains(expected), "{expected} missing from:\n{netlink}");
    }
}

#[test]
fn traffic_to_a_service_without_endpoints_is_refused_and_with_one_reaches_it() {
    let c = Ns(format!("weft-proxy-p-{}-c", std::process::id()));
    let b = Ns(format!("weft-proxy-p-{}-b", std::process::id()));
    let ip = |ns: &Ns, args: &[&str]| {
        assert!(Command::new("ip").arg("-n").arg(&ns.0).args(args).status().unwrap().success(), "{args:?}")
    };
    for n in [&c, &b] {
        assert!(Command::new("ip").args(["netns", "add", &n.0]).status().unwrap().success());
    }
    ip(&c, &["link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &b.0]);
    ip(&c, &["addr", "add", "10.250.2.1/24", "dev", "eth0"]);
    ip(&b, &["addr", "add", "10.250.2.2/24", "dev", "eth0"]);
    ip(&c, &["link", "set", "eth0", "up"]);
    ip(&b, &["link", "set", "eth0", "up"]);
    ip(&c, &["route", "add", "10.96.0.0/12", "via", "10.250.2.2"]);
    let node = NodeInfo { name: "n1".into(), cluster_cidr: "10.244.0.0/16".parse().unwrap() };
    let mut a = Applier::new(NetlinkSink { netns: Some(format!("/run/netns/{}", c.0).into()) });
    let svc: Service = serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.7", "ports": [{"port": 80, "protocol": "TCP"}]}}))
    .unwrap();
    // Clients: the node itself (its output path) and a pod beside it (the node's prerouting path).
    ip(&b, &["route", "add", "10.96.0.0/12", "via", "10.250.2.1"]);
    let connect_from = |ns: &Ns| {
        weft_netlink::ns::run_in(Some(format!("/run/netns/{}", ns.0).as_ref()), || {
            let to = "10.96.0.7:80".parse().unwrap();
            std::net::TcpStream::connect_timeout(&to, std::time::Duration::from_secs(3)).map(|_| ())
        })
        .unwrap()
    };
    // No endpoint: a TCP reset at once (not a timeout).
    a.sync(compile(std::slice::from_ref(&svc), &[], &node)).unwrap();
    let err = connect_from(&b).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    // An endpoint (a listener in the other namespace): DNATed to it.
    let listener = weft_netlink::ns::run_in(Some(format!("/run/netns/{}", b.0).as_ref()), || {
        std::net::TcpListener::bind("10.250.2.2:8080").unwrap()
    })
    .unwrap();
    let (_, slices) = world(&["10.250.2.2"]);
    a.sync(compile(std::slice::from_ref(&svc), &slices, &node)).unwrap();
    connect_from(&c).unwrap();
    listener.set_nonblocking(true).unwrap();
    assert!(listener.accept().is_ok(), "the connection reached the endpoint");
}

#[test]
fn preflight_builds_the_table_in_a_throwaway_namespace() {
    let here = || weft_netlink::nft::list_tables(None, weft_netlink::nft::Family::Ip).unwrap();
    let before = here();
    weft_proxy::apply::preflight().unwrap();
    assert_eq!(here(), before, "nothing changed in this namespace");
}

#[test]
fn a_large_first_sync_goes_in_whole() {
    let ns = Ns(format!("weft-proxy-l-{}", std::process::id()));
    assert!(Command::new("ip").args(["netns", "add", &ns.0]).status().unwrap().success());
    let node = NodeInfo { name: "n1".into(), cluster_cidr: "10.244.0.0/16".parse().unwrap() };
    let (mut services, mut slices) = (vec![], vec![]);
    for i in 0..3000u32 {
        let name = format!("s{i}");
        let vip = format!("10.97.{}.{}", i / 256, i % 256);
        services.push(
            serde_json::from_value::<Service>(json!({"metadata": {"name": name, "namespace": "default"},
                "spec": {"clusterIP": vip, "ports": [{"port": 80, "protocol": "TCP"}]}}))
            .unwrap(),
        );
        let eps: Vec<_> = (0..10)
            .map(|k| json!({"addresses": [format!("10.244.{k}.{}", i % 250 + 1)], "conditions": {"ready": true}}))
            .collect();
        slices.push(
            serde_json::from_value::<EndpointSlice>(json!({"metadata": {"name": format!("{name}-x"),
                "namespace": "default", "labels": {"kubernetes.io/service-name": name}}, "addressType": "IPv4",
                "endpoints": eps, "ports": [{"name": "", "protocol": "TCP", "port": 8080}]}))
            .unwrap(),
        );
    }
    let mut a = Applier::new(NetlinkSink { netns: Some(format!("/run/netns/{}", ns.0).into()) });
    a.sync(compile(&services, &slices, &node)).unwrap();
    assert!(a.refused().is_empty());
    let backends = list(&ns, &["map", "ip", "weft-proxy", "backends-tcp"]);
    assert_eq!(backends.matches(" : 10.244.").count(), 30_000, "every endpoint of every Service");
    assert!(backends.contains("10.97.11.183 . tcp . 80 . 9 : 10.244.9."), "the last Service's last endpoint");
}
