//! The compiler against the API's rules, as truth tables: the upstream e2e suite's model
//! (namespaces x, y, z; pods a, b, c in each, on two nodes, serving TCP and UDP on 80 and 81
//! with named ports `serve-80-tcp` ...), policies applied, and the 9x9 reachability for a
//! protocol and port read through [`crate::eval`] on the compiled state of the nodes the packet
//! crosses (the source's for egress, the destination's for ingress). Every step also checks that
//! the incremental compile equals a compile from scratch.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde_json::json;

use crate::compile::{Desired, NodeInfo, compile, recompile};
use crate::eval::{Packet, Verdict, forward};
use crate::model::{Labels, PodInfo, Policy, World};

const PODS: [&str; 9] = ["x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c"];
const TCP: u8 = 6;
const UDP: u8 = 17;
const SCTP: u8 = 132;

struct Cluster {
    world: World,
    nodes: Vec<NodeInfo>,
    compiled: Vec<Desired>,
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

impl Cluster {
    /// Nodes n1 (10.244.1.0/24) and n2 (10.244.2.0/24), no pods, no namespaces.
    fn empty() -> Cluster {
        let nodes = vec![
            NodeInfo { name: "n1".into(), pod_cidrs: vec!["10.244.1.0/24".parse().unwrap()] },
            NodeInfo { name: "n2".into(), pod_cidrs: vec!["10.244.2.0/24".parse().unwrap()] },
        ];
        let world = World::default();
        let compiled = nodes.iter().map(|n| compile(&world, n)).collect();
        Cluster { world, nodes, compiled }
    }

    /// The upstream model: a and c on n1, b on n2.
    fn model() -> Cluster {
        let mut c = Cluster::empty();
        for ns in ["x", "y", "z"] {
            c.namespace(ns, &[("ns", ns)]);
            for pod in ["a", "b", "c"] {
                c.pod(&format!("{ns}/{pod}"), &[("pod", pod)]);
            }
        }
        c
    }

    /// A namespace as the API server stores it: with its name label.
    fn namespace(&mut self, ns: &str, extra: &[(&str, &str)]) {
        let mut l = labels(extra);
        l.insert(weft_k8s::netpol::NAMESPACE_NAME_LABEL.into(), ns.into());
        self.world.put_namespace(ns.into(), l);
    }

    /// The model's address of `ns/pod`.
    fn ip(name: &str) -> Ipv4Addr {
        let i = PODS.iter().position(|p| *p == name).expect("a model pod") as u8;
        let node = if name.ends_with("/b") { 2 } else { 1 };
        Ipv4Addr::new(10, 244, node, 10 + i)
    }

    fn pod(&mut self, name: &str, l: &[(&str, &str)]) {
        let (ns, pod) = name.split_once('/').unwrap();
        let node = if pod == "b" { "n2" } else { "n1" };
        let ports = [("serve-80-tcp", "TCP", 80), ("serve-80-udp", "UDP", 80), ("serve-81-tcp", "TCP", 81)]
            .into_iter()
            .chain([("serve-81-udp", "UDP", 81), ("serve-80-sctp", "SCTP", 80), ("serve-81-sctp", "SCTP", 81)])
            .map(|(n, p, port)| json!({"name": n, "protocol": p, "containerPort": port}))
            .collect::<Vec<_>>();
        self.pod_object(
            json!({"metadata": {"name": pod, "namespace": ns, "labels": l.iter().copied().collect::<BTreeMap<_, _>>()},
            "spec": {"nodeName": node, "containers": [{"name": "c", "ports": ports}]},
            "status": {"podIP": Cluster::ip(name).to_string()}}),
        );
    }

    fn pod_object(&mut self, v: serde_json::Value) {
        let p: k8s_openapi::api::core::v1::Pod = serde_json::from_value(v).unwrap();
        let key = (p.metadata.namespace.clone().unwrap_or_default(), p.metadata.name.clone().unwrap_or_default());
        self.world.put_pod(key, PodInfo::from_object(&p));
    }

    fn delete_pod(&mut self, name: &str) {
        let (ns, pod) = name.split_once('/').unwrap();
        self.world.remove_pod(&(ns.into(), pod.into()));
    }

    /// A policy from its JSON (`metadata` and `spec`).
    fn policy(&mut self, v: serde_json::Value) {
        let p = Policy::from_object(&serde_json::from_value(v).unwrap());
        self.world.put_policy(p);
    }

    fn delete_policy(&mut self, ns: &str, name: &str) {
        self.world.remove_policy(&(ns.into(), name.into()));
    }

    /// Compiles what changed, and checks it equals a compile from scratch.
    fn sync(&mut self) {
        let changes = self.world.take_changes();
        for (i, node) in self.nodes.iter().enumerate() {
            let inc = recompile(Some(&self.compiled[i]), &self.world, node, &changes);
            let full = compile(&self.world, node);
            assert_eq!(inc, full, "the incremental compile of {} differs from a whole one", node.name);
            self.compiled[i] = inc;
        }
    }

    fn desired(&self, node: &str) -> &Desired {
        &self.compiled[self.nodes.iter().position(|n| n.name == node).unwrap()]
    }

    /// The node a pod address is on (None: not a pod).
    fn node_of(&self, ip: Ipv4Addr) -> Option<&str> {
        self.world.pods_at(ip).next().map(|p| p.node.as_str())
    }

    /// Whether a new connection from `src` to `dst` goes through every node it crosses.
    fn connects(&self, src: Ipv4Addr, dst: Ipv4Addr, proto: u8, dport: u16) -> bool {
        if src == dst {
            return true; // a pod reaching itself never leaves it
        }
        let p = Packet { src, dst, proto, dport };
        let mut nodes: Vec<&str> = [self.node_of(src), self.node_of(dst)].into_iter().flatten().collect();
        nodes.dedup();
        nodes.iter().all(|n| forward(self.desired(n), &p) == Verdict::Accept)
    }

    /// The 9x9 table: a row per source (x/a .. z/c), `.` connects, `X` does not.
    fn table(&mut self, proto: u8, port: u16) -> Vec<String> {
        self.sync();
        PODS.iter()
            .map(|from| {
                PODS.iter()
                    .map(|to| if self.connects(Cluster::ip(from), Cluster::ip(to), proto, port) { '.' } else { 'X' })
                    .collect()
            })
            .collect()
    }

    #[track_caller]
    fn expect(&mut self, proto: u8, port: u16, want: &str) {
        let want: Vec<String> = want.split_whitespace().map(String::from).collect();
        assert_eq!(want.len(), 9, "nine rows");
        let got = self.table(proto, port);
        if got != want {
            let mut s = format!("proto {proto} port {port}\n      to: x/a..z/c\n");
            for (i, from) in PODS.iter().enumerate() {
                s += &format!("{from}  got {}  want {}\n", got[i], want[i]);
            }
            panic!("{s}");
        }
    }
}

const ALL: &str = "......... ......... ......... ......... ......... ......... ......... ......... .........";

fn np(ns: &str, name: &str, spec: serde_json::Value) -> serde_json::Value {
    json!({"metadata": {"name": name, "namespace": ns}, "spec": spec})
}

#[test]
fn no_policy_allows_everything() {
    let mut c = Cluster::model();
    for (proto, port) in [(TCP, 80), (UDP, 81), (SCTP, 80)] {
        c.expect(proto, port, ALL);
    }
}

#[test]
fn default_deny_ingress() {
    let mut c = Cluster::model();
    c.policy(np("x", "deny-ingress", json!({"podSelector": {}})));
    let want = "
        .XX...... X.X...... XX.......
        XXX...... XXX...... XXX......
        XXX...... XXX...... XXX......";
    c.expect(TCP, 80, want);
    c.expect(UDP, 81, want);
    // Deleted: enforcement stops.
    c.delete_policy("x", "deny-ingress");
    c.expect(TCP, 80, ALL);
}

#[test]
fn default_deny_all_ingress_and_egress() {
    let mut c = Cluster::model();
    c.policy(np("x", "deny-all", json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})));
    let want = "
        .XXXXXXXX X.XXXXXXX XX.XXXXXX
        XXX...... XXX...... XXX......
        XXX...... XXX...... XXX......";
    c.expect(TCP, 80, want);
}

#[test]
fn default_deny_egress_alone() {
    let mut c = Cluster::model();
    c.policy(np("y", "deny-egress", json!({"podSelector": {}, "policyTypes": ["Egress"]})));
    c.expect(
        UDP,
        80,
        "
        ......... ......... .........
        XXX.XXXXX XXXX.XXXX XXXXX.XXX
        ......... ......... .........",
    );
}

#[test]
fn allow_all_rules_and_their_precedence_over_deny() {
    let mut c = Cluster::model();
    c.policy(np("x", "deny", json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})));
    c.policy(np("x", "allow-all-ingress", json!({"podSelector": {}, "ingress": [{}]})));
    c.policy(np("x", "allow-all-egress", json!({"podSelector": {}, "egress": [{}]})));
    c.expect(TCP, 80, ALL);
    // `from: []` and `ports: []` are "all" too.
    c.delete_policy("x", "allow-all-ingress");
    c.policy(np("x", "allow-all-ingress", json!({"podSelector": {}, "ingress": [{"from": [], "ports": []}]})));
    c.expect(TCP, 81, ALL);
}

#[test]
fn policy_types_default_from_the_rules() {
    let mut c = Cluster::model();
    // No policyTypes, egress rules: Ingress and Egress (ingress: none given, so denied).
    c.policy(np(
        "x",
        "egress-to-y",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
    ));
    c.expect(
        TCP,
        80,
        "
        .XX...XXX X........ X........
        X........ X........ X........
        X........ X........ X........",
    );
    // `egress: []` and no policyTypes: Ingress alone (x/a's egress is open again).
    c.policy(np("x", "egress-to-y", json!({"podSelector": {"matchLabels": {"pod": "a"}}, "egress": []})));
    c.expect(
        TCP,
        80,
        "
        ......... X........ X........
        X........ X........ X........
        X........ X........ X........",
    );
}

#[test]
fn ingress_from_pods_of_the_same_namespace_by_pod_selector() {
    let mut c = Cluster::model();
    c.policy(np(
        "x",
        "allow-b-to-a",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    ));
    // Only x/b reaches x/a: y/b and z/b have the label but live elsewhere.
    c.expect(
        TCP,
        80,
        "
        ......... ......... X........
        X........ X........ X........
        X........ X........ X........",
    );
}

#[test]
fn ingress_by_namespace_selector_and_by_both_and_by_either() {
    let mut c = Cluster::model();
    // From every namespace but x (matchExpressions on the ns label).
    c.policy(np(
        "x",
        "from-other-ns",
        json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [
            {"key": "ns", "operator": "NotIn", "values": ["x"]}]}}]}]}),
    ));
    let other_ns = "
        .XX...... X.X...... XX.......
        ......... ......... .........
        ......... ......... .........";
    c.expect(TCP, 80, other_ns);
    // Both in one peer: pod b of namespace y only.
    c.delete_policy("x", "from-other-ns");
    c.policy(np(
        "x",
        "from-y-b",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [{
            "namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    ));
    c.expect(
        TCP,
        80,
        "
        ......... X........ X........
        X........ ......... X........
        X........ X........ X........",
    );
    // Either, as two peers: every pod of y, or pod b of x.
    c.policy(np(
        "x",
        "from-y-b",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
            {"namespaceSelector": {"matchLabels": {"ns": "y"}}}, {"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    ));
    c.expect(
        TCP,
        80,
        "
        ......... ......... X........
        ......... ......... .........
        X........ X........ X........",
    );
}

#[test]
fn namespaces_by_their_name_label_and_relabelling() {
    let mut c = Cluster::model();
    c.policy(np(
        "x",
        "from-z",
        json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": "z"}}}]}]}),
    ));
    let from_z = "
        .XX...... X.X...... XX.......
        XXX...... XXX...... XXX......
        ......... ......... .........";
    c.expect(TCP, 80, from_z);
    // A policy selecting by a label y gains later.
    c.policy(np(
        "x",
        "from-team",
        json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "t"}}}]}]}),
    ));
    c.expect(TCP, 80, from_z);
    c.namespace("y", &[("ns", "y"), ("team", "t")]);
    c.expect(
        TCP,
        80,
        "
        .XX...... X.X...... XX.......
        ......... ......... .........
        ......... ......... .........",
    );
    c.namespace("y", &[("ns", "y")]);
    c.expect(TCP, 80, from_z);
}

#[test]
fn pod_relabelling_gains_and_loses_access() {
    let mut c = Cluster::model();
    c.policy(np(
        "x",
        "from-blue",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [{"namespaceSelector": {},
            "podSelector": {"matchLabels": {"color": "blue"}}}]}]}),
    ));
    let none = "
        ......... X........ X........
        X........ X........ X........
        X........ X........ X........";
    c.expect(TCP, 80, none);
    c.pod("z/c", &[("pod", "c"), ("color", "blue")]);
    c.expect(
        TCP,
        80,
        "
        ......... X........ X........
        X........ X........ X........
        X........ X........ .........",
    );
    // The selected pod loses its label: open again; gains it back: isolated.
    c.pod("x/a", &[("pod", "z")]);
    c.expect(TCP, 80, ALL);
    c.pod("x/a", &[("pod", "a")]);
    c.pod("z/c", &[("pod", "c")]);
    c.expect(TCP, 80, none);
}

#[test]
fn ports_by_number_protocol_and_range() {
    let mut c = Cluster::model();
    c.policy(np(
        "x",
        "ports",
        json!({"podSelector": {}, "ingress": [{"ports": [{"port": 81}, {"protocol": "UDP", "port": 80, "endPort": 81}]}]}),
    ));
    let deny_x = "
        .XX...... X.X...... XX.......
        XXX...... XXX...... XXX......
        XXX...... XXX...... XXX......";
    c.expect(TCP, 80, deny_x);
    c.expect(TCP, 81, ALL);
    c.expect(UDP, 80, ALL);
    c.expect(UDP, 81, ALL);
    c.expect(UDP, 82, deny_x);
    // SCTP is not TCP, and TCP is not UDP.
    c.expect(SCTP, 81, deny_x);
    c.policy(np("x", "ports", json!({"podSelector": {}, "ingress": [{"ports": [{"protocol": "SCTP", "port": 80}]}]})));
    c.expect(SCTP, 80, ALL);
    c.expect(TCP, 80, deny_x);
    c.policy(np("x", "ports", json!({"podSelector": {}, "ingress": [{"ports": [{"protocol": "UDP"}]}]})));
    c.expect(UDP, 80, ALL);
    c.expect(UDP, 81, ALL);
    c.expect(TCP, 80, deny_x);
}

#[test]
fn stacked_policies_allow_the_union() {
    let mut c = Cluster::model();
    c.policy(np(
        "x",
        "y-on-80",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}], "ports": [{"port": 80}]}]}),
    ));
    c.policy(np(
        "x",
        "y-on-81",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}], "ports": [{"port": 81}]}]}),
    ));
    let from_y = "
        ......... X........ X........
        ......... ......... .........
        X........ X........ X........";
    c.expect(TCP, 80, from_y);
    c.expect(TCP, 81, from_y);
    // Not port 82, and not from x: no policy allows it.
    c.expect(
        TCP,
        82,
        "
        ......... X........ X........
        X........ X........ X........
        X........ X........ X........",
    );
}

#[test]
fn named_ports_resolve_on_the_destination() {
    let mut c = Cluster::model();
    c.policy(np("x", "named", json!({"podSelector": {}, "ingress": [{"ports": [{"port": "serve-81-tcp"}]}]})));
    let deny_x = "
        .XX...... X.X...... XX.......
        XXX...... XXX...... XXX......
        XXX...... XXX...... XXX......";
    c.expect(TCP, 81, ALL);
    c.expect(TCP, 80, deny_x);
    c.expect(UDP, 81, deny_x);
    // A pod whose container numbers the port differently is reached on its own number.
    c.pod_object(json!({"metadata": {"name": "c", "namespace": "x", "labels": {"pod": "c"}},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"name": "serve-81-tcp", "containerPort": 8081}]}]},
        "status": {"podIP": "10.244.1.12"}}));
    c.expect(
        TCP,
        8081,
        "
        .X....... X........ XX.......
        XX....... XX....... XX.......
        XX....... XX....... XX.......",
    );
    c.expect(
        TCP,
        81,
        "
        ..X...... ..X...... .........
        ..X...... ..X...... ..X......
        ..X...... ..X...... ..X......",
    );
}

#[test]
fn named_ports_in_egress_resolve_on_the_peer_and_never_on_non_pods() {
    let mut c = Cluster::model();
    c.policy(np(
        "x",
        "named-egress",
        json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [
            {"ports": [{"port": "serve-80-tcp"}]},
            {"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"port": "serve-81-udp", "protocol": "UDP"}]}]}),
    ));
    c.expect(TCP, 80, ALL);
    c.expect(UDP, 81, ALL);
    let deny_x_egress = "
        .XXXXXXXX X.XXXXXXX XX.XXXXXX
        ......... ......... .........
        ......... ......... .........";
    c.expect(TCP, 81, deny_x_egress);
    // An address no pod has: no named port there.
    c.sync();
    let x_a = Cluster::ip("x/a");
    assert!(!c.connects(x_a, "192.0.2.9".parse().unwrap(), TCP, 80));
    assert!(!c.connects(x_a, "192.0.2.9".parse().unwrap(), UDP, 81));
}

#[test]
fn egress_to_a_namespace_and_the_client_side_decides() {
    let mut c = Cluster::model();
    c.policy(np(
        "x",
        "to-y-b",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"], "egress": [{"to": [{
            "namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    ));
    // Even a server that allows everything cannot be reached against the client's egress.
    c.policy(np("y", "allow-all", json!({"podSelector": {}, "ingress": [{}]})));
    c.expect(
        TCP,
        80,
        "
        .XXX.XXXX ......... .........
        ......... ......... .........
        ......... ......... .........",
    );
}

#[test]
fn ingress_and_egress_together_and_independently() {
    let mut c = Cluster::model();
    c.policy(np(
        "x",
        "both",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Ingress", "Egress"],
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}],
        "egress": [{"to": [{"podSelector": {"matchLabels": {"pod": "c"}}}]}]}),
    ));
    c.expect(
        TCP,
        80,
        "
        .X.XXXXXX ......... X........
        X........ X........ X........
        X........ X........ X........",
    );
}

#[test]
fn ip_blocks_with_exceptions_match_pod_addresses_literally() {
    let mut c = Cluster::model();
    // Egress to node n1's pod range but not x/c's address (10.244.1.12), nor y/a's (.13).
    c.policy(np(
        "x",
        "cidr",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"], "egress": [{"to": [{"ipBlock": {
            "cidr": "10.244.1.0/24", "except": ["10.244.1.12/31"]}}]}]}),
    ));
    c.expect(
        TCP,
        80,
        "
        .XXXX..X. ......... .........
        ......... ......... .........
        ......... ......... .........",
    );
    // An address both inside the CIDR and an exception of another block is allowed (union).
    c.policy(np(
        "x",
        "cidr2",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"], "egress": [{"to": [{"ipBlock": {
            "cidr": "10.244.1.12/32"}}]}]}),
    ));
    c.expect(
        TCP,
        80,
        "
        .X.XX..X. ......... .........
        ......... ......... .........
        ......... ......... .........",
    );
    // Outside addresses by ipBlock, in ingress.
    c.policy(np(
        "y",
        "from-outside",
        json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "192.0.2.0/24", "except": ["192.0.2.128/25"]}}]}]}),
    ));
    c.sync();
    let y_b = Cluster::ip("y/b");
    assert!(c.connects("192.0.2.7".parse().unwrap(), y_b, TCP, 80));
    assert!(!c.connects("192.0.2.200".parse().unwrap(), y_b, TCP, 80));
    assert!(!c.connects("198.51.100.1".parse().unwrap(), y_b, TCP, 80));
}

#[test]
fn host_network_pods_are_neither_selected_nor_peers_and_pods_without_an_address_are_skipped() {
    let mut c = Cluster::model();
    c.pod_object(json!({"metadata": {"name": "h", "namespace": "x", "labels": {"pod": "b"}},
        "spec": {"nodeName": "n1", "hostNetwork": true, "containers": []}, "status": {"podIP": "172.18.0.10"}}));
    c.pod_object(json!({"metadata": {"name": "pending", "namespace": "x", "labels": {"pod": "b"}},
        "spec": {"nodeName": "n1", "containers": []}, "status": {}}));
    c.policy(np(
        "x",
        "from-b",
        json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    ));
    c.sync();
    let node_addr: Ipv4Addr = "172.18.0.10".parse().unwrap();
    let x_a = Cluster::ip("x/a");
    assert!(!c.connects(node_addr, x_a, TCP, 80), "a hostNetwork pod is not a pod peer");
    assert!(c.connects(x_a, node_addr, TCP, 80), "nor is it selected (it has no egress policy anyway)");
    assert!(c.connects(Cluster::ip("x/b"), x_a, TCP, 80));
    assert!(!c.desired("n1").local.contains_key(&node_addr));
    // A finished pod is gone; a terminating one stays enforced.
    c.pod_object(json!({"metadata": {"name": "b", "namespace": "x", "labels": {"pod": "b"}, "deletionTimestamp": "2024-01-01T00:00:00Z"},
        "spec": {"nodeName": "n2", "containers": []}, "status": {"podIP": "10.244.2.11"}}));
    c.sync();
    assert!(c.connects(Cluster::ip("x/b"), x_a, TCP, 80), "terminating: still a peer");
    assert!(!c.connects(Cluster::ip("x/c"), Cluster::ip("x/b"), TCP, 80), "terminating: still isolated");
    c.pod_object(json!({"metadata": {"name": "b", "namespace": "x", "labels": {"pod": "b"}},
        "spec": {"nodeName": "n2", "containers": []}, "status": {"phase": "Succeeded", "podIP": "10.244.2.11"}}));
    c.sync();
    assert!(!c.connects(Cluster::ip("x/b"), x_a, TCP, 80), "finished: its address is no peer");
}

#[test]
fn unknown_addresses_of_the_node_range_are_dropped_until_their_pod_is_known() {
    let mut c = Cluster::model();
    c.sync();
    let new: Ipv4Addr = "10.244.1.99".parse().unwrap();
    let d = c.desired("n1");
    let to_new = Packet { src: Cluster::ip("y/a"), dst: new, proto: TCP, dport: 80 };
    assert_eq!(forward(d, &to_new), Verdict::Unknown(new));
    let from_new = Packet { src: new, dst: "192.0.2.1".parse().unwrap(), proto: UDP, dport: 53 };
    assert_eq!(forward(d, &from_new), Verdict::Unknown(new));
    // Another node's range is not n1's business.
    let elsewhere = Packet { src: Cluster::ip("x/a"), dst: "10.244.2.99".parse().unwrap(), proto: TCP, dport: 80 };
    assert_eq!(forward(d, &elsewhere), Verdict::Accept);
    // Known: open (no policy selects it).
    c.pod_object(json!({"metadata": {"name": "n", "namespace": "z", "labels": {"pod": "n"}},
        "spec": {"nodeName": "n1", "containers": []}, "status": {"podIP": "10.244.1.99"}}));
    c.sync();
    assert_eq!(forward(c.desired("n1"), &to_new), Verdict::Accept);
    assert_eq!(forward(c.desired("n1"), &from_new), Verdict::Accept);
    // Deleted: unknown again.
    c.delete_pod("z/n");
    c.sync();
    assert_eq!(forward(c.desired("n1"), &to_new), Verdict::Unknown(new));
}

#[test]
fn a_denial_names_the_chain_of_the_policies_that_selected_the_pod() {
    let mut c = Cluster::model();
    c.policy(np("x", "deny", json!({"podSelector": {}})));
    c.policy(np("x", "a-from-y", json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]})));
    c.sync();
    let d = c.desired("n1");
    let p = Packet { src: Cluster::ip("z/a"), dst: Cluster::ip("x/a"), proto: TCP, dport: 80 };
    let Verdict::Denied(chain) = forward(d, &p) else { panic!("denied") };
    let keys = d.chain_policies(&chain).unwrap();
    assert_eq!(keys, vec![("x".to_string(), "a-from-y".to_string()), ("x".to_string(), "deny".to_string())]);
    assert_eq!(chain, crate::compile::chain_name(crate::model::Dir::Ingress, &keys));
    // Two pods selected by the same policies share one chain.
    let a = &d.local[&Cluster::ip("x/a")];
    let c_ = &d.local[&Cluster::ip("x/c")];
    assert_ne!(a.ingress, c_.ingress);
    assert_eq!(d.chains().len(), 2);
}

#[test]
fn a_policy_of_another_namespace_selects_nothing_here() {
    let mut c = Cluster::model();
    c.policy(np("z", "deny-a", json!({"podSelector": {"matchLabels": {"pod": "a"}}})));
    c.expect(
        TCP,
        80,
        "
        ......X.. ......X.. ......X..
        ......X.. ......X.. ......X..
        ......... ......X.. ......X..",
    );
}

#[test]
fn hostile_policies_never_panic_and_the_rest_is_enforced() {
    let mut c = Cluster::model();
    // 10 000 peers: selectors and blocks.
    let peers: Vec<serde_json::Value> = (0..10_000)
        .map(|i| {
            if i % 2 == 0 {
                json!({"podSelector": {"matchLabels": {"pod": format!("p{i}")}}})
            } else {
                json!({"ipBlock": {"cidr": format!("172.{}.{}.0/24", 16 + (i / 256) % 16, i % 256)}})
            }
        })
        .chain([json!({"podSelector": {"matchLabels": {"pod": "b"}}})])
        .collect();
    c.policy(np("x", "huge", json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": peers}]})));
    // Broken parts: an invalid selector peer, an out-of-range port beside a good one, an
    // unknown protocol, an unparseable block.
    c.policy(np(
        "y",
        "broken",
        json!({"podSelector": {}, "ingress": [
            {"from": [{"podSelector": {"matchExpressions": [{"key": "pod", "operator": "Equals", "values": ["a"]}]}}]},
            {"from": [{"ipBlock": {"cidr": "10.244.0.0/16", "except": ["bad"]}}]},
            {"ports": [{"port": 70000}, {"port": 81}, {"port": 80, "protocol": "ICMP"}]}]}),
    ));
    // A policy whose pod selector is invalid selects nothing.
    c.policy(np(
        "z",
        "bad-selector",
        json!({"podSelector": {"matchExpressions": [{"key": "pod", "operator": "In"}]}, "ingress": []}),
    ));
    // Empty everything.
    c.policy(json!({"metadata": {"name": "empty", "namespace": "z"}}));
    c.world.put_namespace("empty".into(), Labels::new());
    c.pod_object(json!({"metadata": {"name": "bare", "namespace": "empty"}}));
    let warnings: Vec<String> = c.world.policies.values().flat_map(|p| p.warnings.clone()).collect();
    assert_eq!(warnings.len(), 5, "{warnings:#?}");
    // x/a: from x/b alone; y: TCP 81 from anyone (the good port); z: nothing (the empty policy
    // selects every pod of z for ingress and allows none); z's invalid selector selects nothing.
    c.expect(
        TCP,
        80,
        "
        ...XXXXXX ...XXXXXX X..XXXXXX
        X...XXXXX X..X.XXXX X..XX.XXX
        X..XXX.XX X..XXXX.X X..XXXXX.",
    );
    c.expect(
        TCP,
        81,
        "
        ......XXX ......XXX X.....XXX
        X.....XXX X.....XXX X.....XXX
        X......XX X.....X.X X.....XX.",
    );
}

/// Random changes, each checked: the incremental compile equals a compile from scratch.
#[test]
fn random_changes_compile_incrementally_as_from_scratch() {
    let mut c = Cluster::model();
    c.sync();
    let mut seed: u64 = 0x5eed_cafe;
    let mut next = move |n: u64| {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    let templates = [
        json!({"podSelector": {}}),
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
        json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "t"}}}], "ports": [{"port": "serve-80-tcp"}]}]}),
        json!({"podSelector": {"matchLabels": {"pod": "c"}}, "policyTypes": ["Egress"], "egress": [{"ports": [{"port": "serve-81-udp", "protocol": "UDP"}]}]}),
        json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": [{"ipBlock": {"cidr": "10.244.0.0/16", "except": ["10.244.1.0/24"]}},
            {"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "d"}}}], "ports": [{"port": 80, "endPort": 90}, {"port": "serve-81-tcp"}]}]}),
        json!({"podSelector": {"matchLabels": {"pod": "b"}}, "ingress": [{}], "egress": [{"to": [{"podSelector": {}}]}]}),
    ];
    let pods = ["a", "b", "c", "d"];
    for step in 0..300 {
        let ns = ["x", "y", "z"][next(3) as usize];
        match next(7) {
            0 | 1 => {
                let name = format!("{ns}/{}", ["a", "b", "c"][next(3) as usize]);
                let label = pods[next(4) as usize];
                c.pod(&name, &[("pod", label)]);
            }
            2 => {
                // A pod moves node or address, or goes.
                let pod = ["a", "b", "c"][next(3) as usize];
                match next(3) {
                    0 => c.delete_pod(&format!("{ns}/{pod}")),
                    n => c.pod_object(json!({"metadata": {"name": pod, "namespace": ns, "labels": {"pod": pods[next(4) as usize]}},
                        "spec": {"nodeName": if n == 1 { "n1" } else { "n2" }, "containers": [{"name": "c", "ports": [
                            {"name": "serve-80-tcp", "containerPort": 80 + next(3)}, {"name": "serve-81-udp", "protocol": "UDP", "containerPort": 81}]}]},
                        "status": {"podIP": format!("10.244.{}.{}", n, 50 + next(20))}})),
                }
            }
            3 => {
                let team = if next(2) == 0 { "t" } else { "u" };
                c.namespace(ns, &[("ns", ns), ("team", team)]);
            }
            4 | 5 => {
                let t = templates[next(templates.len() as u64) as usize].clone();
                c.policy(np(ns, &format!("p{}", next(4)), t));
            }
            _ => c.delete_policy(ns, &format!("p{}", next(4))),
        }
        // Sometimes several changes land in one pass.
        if step % 3 != 0 {
            c.sync();
        }
    }
}
