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
    let backends = list(&ns, &["map", "ip", "weft-proxy", "backends"]);
    assert!(backends.contains("10.96.0.7 . tcp . 80 . 0 : 10.244.1.2 . 8080"), "{backends}");
    assert!(backends.contains("10.96.0.7 . tcp . 80 . 1 : 10.244.2.2 . 8080"), "{backends}");
    let services = list(&ns, &["map", "ip", "weft-proxy", "services"]);
    assert!(services.contains("10.96.0.7 . tcp . 80 : goto vip-cluster-random-tcp-2"), "{services}");
    let np = list(&ns, &["map", "ip", "weft-proxy", "nodeports"]);
    assert!(np.contains("tcp . 30007 : goto np-masq-random-tcp-2"), "{np}");
    // One endpoint goes away: its element goes, the Service moves to the one-endpoint chain.
    let (s, e) = world(&["10.244.1.2"]);
    a.sync(compile(&s, &e, &node)).unwrap();
    let backends = list(&ns, &["map", "ip", "weft-proxy", "backends"]);
    assert!(!backends.contains("10.244.2.2"), "{backends}");
    assert!(list(&ns, &["map", "ip", "weft-proxy", "services"]).contains("goto vip-cluster-random-tcp-1"));
    // No endpoints: refused.
    let (s, e) = world(&[]);
    a.sync(compile(&s, &e, &node)).unwrap();
    assert!(list(&ns, &["set", "ip", "weft-proxy", "no-endpoints"]).contains("10.96.0.7 . tcp . 80"));
    assert!(!list(&ns, &["map", "ip", "weft-proxy", "services"]).contains("10.96.0.7"));
}
