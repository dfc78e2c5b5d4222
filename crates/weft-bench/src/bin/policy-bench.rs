//! policy-bench: weft's NetworkPolicy engine (weft-policy: pure compile, then one nf_tables
//! netlink batch per change) against the iptables shape of a chain-per-policy implementation,
//! kube-router's iptables mode, measured in the same run, for POLICIES policies over PODS pods
//! (default 1000 over 10 000). Everything happens in namespaces this program makes
//! (`weft-ns<pid>-<n>-polbench-*`), removed at the end, also on failure.
//!
//! Usage: policy-bench [POLICIES] [PODS]   (root; the iptables side needs `ipset`)
//!
//! The world (deterministic): PODS pods in PODS/100 namespaces (labels `team`, `env`,
//! `kubernetes.io/metadata.name`), on PODS/100 nodes of 100 pods each (the Kubernetes default is
//! at most 110 per node), node k's pods in 10.128.k.0/24. Pods carry `app` (10 per namespace)
//! and `tier` labels and the named ports `http` (8080 or 8000), `metrics` (9090) and, for
//! backends, `grpc`. Policies spread over the namespaces, ten kinds: ingress from a tier of the
//! namespace on a numbered port; from a tier in another team's namespaces (namespaceSelector AND
//! podSelector) on a named port; from whole namespaces (monitoring); from ipBlocks with
//! exceptions; egress to databases and DNS; egress to the internet minus the cluster and the
//! metadata address, and to the own namespace; a NodePort-like endPort range for two tiers
//! (matchExpressions); ingress and egress with named ports both ways; default deny; and
//! three peer kinds with ranges, UDP and a named port. Policy 0 lets pod `bench-client` (on
//! another node) reach pod `bench-server` (on the measured node) on TCP 8080.
//!
//! The measured node is node 0: it enforces its own pods (100 of them), and holds every policy's
//! sets (weft) or ipsets and chain (kube-router), as both do on every node.
//!
//! weft: the pure compile of the whole world, the kernel apply of the full state (one netlink
//! batch), then one-policy changes (a port, the peers, or a new rule of a policy that selects a
//! pod of the node; recompile incremental + apply the delta), each measured, at 100, 1000 and
//! POLICIES policies, so that it can be seen flat.
//!
//! The iptables shape, as kube-router v1/v2 writes it (pkg/controllers/netpol, iptables-restore
//! of the filter table plus `ipset restore`):
//! - per policy a chain `KUBE-NWPLCY-<hash>`; ipsets of the pods it selects (`KUBE-DST-*` for
//!   ingress, `KUBE-SRC-*` for egress), per rule an ipset of the peer pods, a hash:net of its
//!   ipBlocks (the CIDR, `0.0.0.0/0` as two /1, exceptions `nomatch`), and per named port
//!   number an ipset of the pods that have it; per allowed (peers, port) one rule that MARKs
//!   0x10000 and one that RETURNs when marked, ports by `--dport` or `multiport --dports a:b`;
//! - per local pod a policy selects, a chain `KUBE-POD-FW-<hash>`: conntrack
//!   RELATED,ESTABLISHED accept, from the node itself accept, a jump to every policy selecting
//!   the pod, then NFLOG (limited) and REJECT what no policy marked, and the mark reset;
//! - `FORWARD -> KUBE-ROUTER-FORWARD`, which holds per isolated pod `-d <pod>` (ingress) and
//!   `-s <pod>` (egress) jumps, each also with `-m physdev --physdev-is-bridged` (so every
//!   forwarded packet walks them all: the linear part); the same in KUBE-ROUTER-INPUT/OUTPUT.
//!   The measured pod's rules come last.
//!
//! Its one-policy change is the least kube-router could do (it really restores the whole
//! filter table on any change): the changed policy's ipsets refreshed as it does (a new set
//! swapped in) and its changed chains restored with `iptables-restore --noflush`. Only the two
//! commands are timed, not the making of their input.
//!
//! Connect latency: a client namespace and a server namespace (the pods) routed through the
//! node's namespace over veths, so the forward hook sees every packet; TCP connects from
//! `bench-client` to `bench-server`:8080, p50 and p99, in rounds that take turns between the
//! cases (the same addresses in a topology each), so that the machine's drift falls on all alike.
//! The cases: no rule at all (no conntrack: the floor), 0 policies (conntrack on, through
//! kube-proxy's `FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`, as on every
//! Kubernetes node: the baseline the goal is measured against), weft's POLICIES policies and the
//! iptables shape's.
//!
//! The header also prints nf_tables' floor on the machine: a one-element batch sent the way weft
//! sends them, adding and deleting. A batch that deletes anything (as most one-policy changes
//! do: a port or peer replaced) costs about one RCU grace period more than one that only adds:
//! the kernel commits it within the send, but closing the netlink socket afterwards waits for
//! the transaction's old objects to be released (seen with strace: `sendto` 0.1 ms, `close`
//! 10 ms). iptables-nft pays it too, when the process exits.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::json;
use weft_k8s::netpol::{Peer, PortMatch, Protocol};
use weft_policy::apply::{Applier, Delta, NetlinkSink, Sink};
use weft_policy::compile::{Desired, NodeInfo, compile, recompile};
use weft_policy::model::{Dir, Key, Labels, PodInfo, Policy, Rule, World};
use weft_testkit::Netns;

const PODS_PER_NODE: usize = 100;
const PODS_PER_NAMESPACE: usize = 100;
const APPS: usize = 10;
const TEAMS: usize = 20;
const ENVS: [&str; 3] = ["prod", "staging", "dev"];
const TIERS: [&str; 3] = ["frontend", "backend", "db"];
const SERVER_PORT: u16 = 8080;
/// A port the server listens on that no policy allows the client.
const DENIED_PORT: u16 = 8081;
/// One-policy changes measured per size and side.
const CHANGES: usize = 12;
/// Connect-latency rounds, and connects per round and case.
const ROUNDS: usize = 10;
const PER_ROUND: usize = 1000;
const WARMUP: usize = 100;
/// Upper bound on one batch of connects.
const CONNECT_BUDGET: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// The world.

fn node_name(k: usize) -> String {
    format!("node-{k}")
}

fn ns_name(n: usize) -> String {
    format!("ns-{n}")
}

/// Node k's pod range, 10.128.0.0/9 cut in /24s.
fn node_base(k: usize) -> u32 {
    u32::from(Ipv4Addr::new(10, 128, 0, 0)) + (k as u32) * 256
}

fn node_cidr(k: usize) -> String {
    format!("{}/24", Ipv4Addr::from(node_base(k)))
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[derive(Clone)]
struct Cluster {
    nodes: usize,
    namespaces: usize,
    world: World,
    objects: BTreeMap<Key, NetworkPolicy>,
    server: Ipv4Addr,
    client: Ipv4Addr,
}

fn cluster(policies: usize, pods: usize) -> Result<Cluster> {
    let nodes = pods.div_ceil(PODS_PER_NODE).max(1);
    let namespaces = pods.div_ceil(PODS_PER_NAMESPACE).max(1);
    if nodes > 32768 {
        bail!("at most {} pods", 32768 * PODS_PER_NODE);
    }
    let mut w = World::default();
    for n in 0..namespaces {
        let name = ns_name(n);
        let team = format!("t{}", n % TEAMS);
        w.put_namespace(
            name.clone(),
            labels(&[("kubernetes.io/metadata.name", &name), ("team", &team), ("env", ENVS[n % ENVS.len()])]),
        );
    }
    // A fixed seed: the same world on every run.
    let mut rng = weft_bench::SplitMix(13);
    let (mut server, mut client) = (Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED);
    for i in 0..pods {
        let (node, j) = (i % nodes, i / nodes);
        let ip = Ipv4Addr::from(node_base(node) + 2 + j as u32);
        let http = |app: usize| ("http".to_string(), Protocol::Tcp, if app.is_multiple_of(2) { 8080 } else { 8000 });
        let (ns, l, ports) = match i {
            0 => {
                server = ip;
                (0, labels(&[("app", "bench-server"), ("tier", "backend")]), vec![http(0)])
            }
            1 => {
                client = ip;
                (0, labels(&[("app", "bench-client")]), vec![])
            }
            _ => {
                let ns = rng.index(namespaces);
                let app = rng.index(APPS);
                let tier = TIERS[app % TIERS.len()];
                let mut ports = vec![http(app), ("metrics".to_string(), Protocol::Tcp, 9090)];
                if tier == "backend" {
                    ports.push(("grpc".to_string(), Protocol::Tcp, if app.is_multiple_of(2) { 50051 } else { 9000 }));
                }
                (ns, labels(&[("app", &format!("app-{app}")), ("tier", tier)]), ports)
            }
        };
        let key = (ns_name(ns), format!("pod-{i}"));
        w.put_pod(key.clone(), Some(PodInfo { key, ip, node: node_name(node), labels: l, ports }));
    }
    let mut objects = BTreeMap::new();
    for i in 0..policies {
        let ns = if i == 0 { 0 } else { i % namespaces };
        let np = policy_object(i, ns, namespaces, &mut rng)?;
        let p = Policy::from_object(&np);
        if !p.warnings.is_empty() {
            bail!("policy {i}: {:?}", p.warnings);
        }
        objects.insert(p.key.clone(), np);
        w.put_policy(p);
    }
    w.take_changes();
    Ok(Cluster { nodes, namespaces, world: w, objects, server, client })
}

/// Policy i of the world, in namespace `ns` (policy 0 is the one the latency is measured through).
fn policy_object(i: usize, ns: usize, namespaces: usize, rng: &mut weft_bench::SplitMix) -> Result<NetworkPolicy> {
    let app = format!("app-{}", (i / namespaces) % APPS);
    let sel = json!({"matchLabels": {"app": app}});
    let team = format!("t{}", rng.index(TEAMS));
    let tier = |t: &str| json!({"matchLabels": {"tier": t}});
    let kind = if i == 0 { usize::MAX } else { rng.index(10) };
    let (name, spec) = match kind {
        usize::MAX => (
            "bench-allow-client".to_string(),
            json!({"podSelector": {"matchLabels": {"app": "bench-server"}}, "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "bench-client"}}}],
                    "ports": [{"protocol": "TCP", "port": SERVER_PORT}]}]}),
        ),
        0 => (
            format!("allow-frontend-{i}"),
            json!({"podSelector": sel, "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"podSelector": tier("frontend")}], "ports": [{"protocol": "TCP", "port": 8080}]}]}),
        ),
        1 => (
            format!("allow-team-frontends-{i}"),
            json!({"podSelector": sel, "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": team}}, "podSelector": tier("frontend")}],
                    "ports": [{"port": "http"}]}]}),
        ),
        2 => (
            format!("allow-monitoring-{i}"),
            json!({"podSelector": sel, "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": team}}}],
                    "ports": [{"protocol": "TCP", "port": 9090}]}]}),
        ),
        3 => (
            format!("allow-vpc-{i}"),
            json!({"podSelector": sel, "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.128.0.0/9"]}},
                                      {"ipBlock": {"cidr": "172.16.0.0/12", "except": ["172.16.5.0/24"]}}],
                    "ports": [{"port": 443}, {"port": 8443}]}]}),
        ),
        4 => (
            format!("egress-db-dns-{i}"),
            json!({"podSelector": sel, "policyTypes": ["Egress"],
                "egress": [{"to": [{"podSelector": tier("db")}], "ports": [{"port": 5432}]},
                           {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ns-0"}},
                                    "podSelector": {"matchLabels": {"app": "app-0"}}}],
                            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}]}),
        ),
        5 => (
            format!("egress-internet-{i}"),
            json!({"podSelector": sel, "policyTypes": ["Egress"],
                "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "169.254.169.254/32"]}}],
                            "ports": [{"port": 443}]},
                           {"to": [{"podSelector": {}}]}]}),
        ),
        6 => (
            format!("allow-nodeports-{i}"),
            json!({"podSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["backend", "db"]}]},
                "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"podSelector": {}}],
                    "ports": [{"port": 30000, "endPort": 32767}, {"protocol": "UDP", "port": 5000, "endPort": 5100}]}]}),
        ),
        7 => (
            format!("frontend-to-grpc-{i}"),
            json!({"podSelector": sel, "policyTypes": ["Ingress", "Egress"],
                "ingress": [{"from": [{"podSelector": tier("frontend")}], "ports": [{"port": "http"}]}],
                "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"team": team}}, "podSelector": tier("backend")}],
                            "ports": [{"port": "grpc"}]}]}),
        ),
        8 => (format!("default-deny-{i}"), json!({"podSelector": {}, "policyTypes": ["Ingress"]})),
        _ => (
            format!("mixed-{i}"),
            json!({"podSelector": sel, "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": format!("app-{}", rng.index(APPS))}}},
                                      {"namespaceSelector": {"matchLabels": {"team": team}}, "podSelector": tier("frontend")},
                                      {"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.1.0/24"]}}],
                    "ports": [{"port": 8000, "endPort": 8100}, {"protocol": "UDP", "port": 53}, {"port": "metrics"}]}]}),
        ),
    };
    Ok(serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns_name(ns)}, "spec": spec}))?)
}

/// Change r of a policy: its first rule's ports (r % 3 == 0), its first rule's peers (1), or a
/// new rule (2); in the direction it has rules for (ingress for a default deny).
fn mutate(np: &NetworkPolicy, r: usize) -> Result<NetworkPolicy> {
    let mut v = serde_json::to_value(np)?;
    let spec = &mut v["spec"];
    let has = |f: &str| spec.get(f).and_then(|x| x.as_array()).is_some_and(|a| !a.is_empty());
    let (field, peers) = if has("ingress") || !has("egress") { ("ingress", "from") } else { ("egress", "to") };
    if !spec[field].is_array() {
        spec[field] = json!([]);
    }
    let rules = spec[field].as_array_mut().context("rules")?;
    if r % 3 != 2 && rules.is_empty() {
        rules.push(json!({}));
    }
    match r % 3 {
        0 => rules[0]["ports"] = json!([{"protocol": "TCP", "port": 10000 + r}]),
        1 => rules[0][peers] = json!([{"podSelector": {"matchLabels": {"app": format!("app-{}", r % APPS)}}}]),
        _ => rules.push(json!({peers: [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.128.0.0/9"]}}],
            "ports": [{"protocol": "TCP", "port": 7000 + r}]})),
    }
    Ok(serde_json::from_value(v)?)
}

impl Cluster {
    /// Applies change r to the policy `key`.
    fn change(&mut self, key: &Key, r: usize) -> Result<()> {
        let np = mutate(&self.objects[key], r)?;
        self.world.put_policy(Policy::from_object(&np));
        self.objects.insert(key.clone(), np);
        Ok(())
    }
}

/// The policies to change: CHANGES of those (policy 0 aside) that select a pod of the node,
/// spread over them.
fn picks(d: &Desired) -> Vec<Key> {
    let mut keys: BTreeSet<Key> = BTreeSet::new();
    for set in d.chains().values() {
        keys.extend(set.policies.iter().cloned());
    }
    let keys: Vec<Key> = keys.into_iter().filter(|k| k.1 != "bench-allow-client").collect();
    if keys.is_empty() {
        return vec![];
    }
    (0..CHANGES).map(|r| keys[(r * keys.len() / CHANGES) % keys.len()].clone()).collect()
}

/// weft's sink, timing each netlink batch (encode, send, the kernel's transaction, the acks).
struct TimedSink {
    inner: NetlinkSink,
    last: std::cell::Cell<Duration>,
}

impl Sink for TimedSink {
    fn apply(&self, delta: &Delta) -> Result<()> {
        let t = Instant::now();
        let r = self.inner.apply(delta);
        self.last.set(t.elapsed());
        r
    }
}

/// nf_tables' floor on this machine, in a namespace of its own: the median wall time (ms) of a
/// one-element netlink batch sent as weft sends them (a thread in the namespace, a socket per
/// batch), one that adds and one that deletes.
fn nft_floor() -> Result<(f64, f64)> {
    use weft_netlink::nft::{Batch, Elem, FieldType, Key, Set, Table};
    let ns = Netns::try_new("polbench-floor")?;
    let path = ns.path();
    let p = Some(Path::new(&path));
    let fam = weft_policy::rules::FAMILY;
    let mut b = Batch::new();
    b.add_table(&Table::new(fam, "floor"));
    b.add_set(fam, "floor", &Set::plain("s", &[FieldType::IPV4]));
    b.commit_in(p)?;
    let (mut add, mut del) = (vec![], vec![]);
    for i in 0..10u8 {
        let e = [Elem::key(Key::new().ipv4(Ipv4Addr::new(10, 0, 0, i)).bytes())];
        for (adding, times) in [(true, &mut add), (false, &mut del)] {
            let mut b = Batch::new();
            if adding {
                b.add_elements(fam, "floor", "s", &e);
            } else {
                b.delete_elements(fam, "floor", "s", &e);
            }
            let t = Instant::now();
            b.commit_in(p)?;
            times.push(t.elapsed());
        }
    }
    Ok((median_max(&add).0, median_max(&del).0))
}

// ---------------------------------------------------------------------------------------------
// kube-router's iptables shape.

fn h(s: &str) -> String {
    format!("{:016X}", weft_k8s::names::fnv1a(s.as_bytes()))
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct IpSet {
    net: bool,
    entries: Vec<String>,
}

impl IpSet {
    fn ips(ips: impl IntoIterator<Item = Ipv4Addr>) -> IpSet {
        let set: BTreeSet<Ipv4Addr> = ips.into_iter().collect();
        IpSet { net: false, entries: set.into_iter().map(|ip| ip.to_string()).collect() }
    }
    fn kind(&self) -> &'static str {
        if self.net { "hash:net" } else { "hash:ip" }
    }
    fn create(&self, name: &str, out: &mut String) {
        let _ = writeln!(out, "create {name} {} family inet hashsize 1024 maxelem 65536", self.kind());
        for e in &self.entries {
            let _ = writeln!(out, "add {name} {e}");
        }
    }
}

/// One policy: its chain's rules and its ipsets.
#[derive(Clone, Debug, PartialEq, Eq)]
struct IptPolicy {
    chain: String,
    rules: Vec<String>,
    sets: Vec<(String, IpSet)>,
}

/// A port as kube-router matches it: (protocol, first, last).
type PortSpec = (Protocol, u16, u16);

fn port_args(p: &PortSpec) -> String {
    let proto = p.0.as_str().to_lowercase();
    match p {
        (_, 1, 65535) => format!("-p {proto}"),
        (_, a, b) if a == b => format!("-p {proto} -m {proto} --dport {a}"),
        (_, a, b) => format!("-p {proto} -m multiport --dports {a}:{b}"),
    }
}

/// kube-router's appendRuleToPolicyChain: a MARK rule and a RETURN-when-marked rule.
fn accept(
    out: &mut Vec<String>,
    chain: &str,
    comment: &str,
    src: Option<&str>,
    dst: Option<&str>,
    port: Option<&PortSpec>,
) {
    let mut m = format!("-A {chain} -m comment --comment \"{comment}\"");
    if let Some(s) = src {
        let _ = write!(m, " -m set --match-set {s} src");
    }
    if let Some(d) = dst {
        let _ = write!(m, " -m set --match-set {d} dst");
    }
    if let Some(p) = port {
        let _ = write!(m, " {}", port_args(p));
    }
    out.push(format!("{m} -j MARK --set-xmark 0x10000/0x10000"));
    out.push(format!("{m} -m mark --mark 0x10000/0x10000 -j RETURN"));
}

/// The ipBlock entries of rule `i` of a direction: CIDRs (0.0.0.0/0 as two halves, as hash:net
/// takes no /0) and their exceptions as `nomatch`.
fn block_entries(np: &NetworkPolicy, dir: Dir, i: usize) -> Vec<String> {
    let Some(spec) = np.spec.as_ref() else { return vec![] };
    let peers = match dir {
        Dir::Ingress => spec.ingress.as_ref().and_then(|r| r.get(i)).and_then(|r| r.from.clone()),
        Dir::Egress => spec.egress.as_ref().and_then(|r| r.get(i)).and_then(|r| r.to.clone()),
    };
    let mut out = vec![];
    for b in peers.into_iter().flatten().filter_map(|p| p.ip_block) {
        if b.cidr == "0.0.0.0/0" {
            out.extend(["0.0.0.0/1".to_string(), "128.0.0.0/1".to_string()]);
        } else {
            out.push(b.cidr.clone());
        }
        out.extend(b.except.iter().flatten().map(|e| format!("{e} nomatch")));
    }
    out
}

/// Named ports of `rule` resolved on `pods`, grouped by number as kube-router does: one ipset
/// of the pods per (protocol, number).
fn named_groups<'a>(rule: &Rule, pods: impl Iterator<Item = &'a PodInfo>) -> Vec<(PortSpec, IpSet)> {
    let names: Vec<(Protocol, &str)> = rule
        .ports
        .iter()
        .flatten()
        .filter_map(|m| match m {
            PortMatch::Named { protocol, name } => Some((*protocol, name.as_str())),
            PortMatch::Range { .. } => None,
        })
        .collect();
    if names.is_empty() {
        return vec![];
    }
    let mut groups: BTreeMap<(Protocol, u16), BTreeSet<Ipv4Addr>> = BTreeMap::new();
    for pod in pods {
        for (proto, name) in &names {
            for n in pod.named_port(name, *proto) {
                groups.entry((*proto, n)).or_default().insert(pod.ip);
            }
        }
    }
    groups.into_iter().map(|((proto, n), ips)| ((proto, n, n), IpSet::ips(ips))).collect()
}

/// (peer set, selected-pods set) in a direction's (src, dst) order.
fn src_dst<'a>(ingress: bool, peer: Option<&'a str>, tgt: Option<&'a str>) -> (Option<&'a str>, Option<&'a str>) {
    if ingress { (peer, tgt) } else { (tgt, peer) }
}

fn ipt_policy(np: &NetworkPolicy, p: &Policy, w: &World) -> IptPolicy {
    let id = format!("{}/{}", p.key.0, p.key.1);
    let chain = format!("KUBE-NWPLCY-{}", h(&id));
    let targets: Vec<&PodInfo> = w.pods_in(&p.key.0).filter(|pod| p.selects(pod)).map(|a| &**a).collect();
    let mut out = IptPolicy { chain: chain.clone(), rules: vec![], sets: vec![] };
    let comment = format!("rule to ACCEPT traffic selected by policy name {} namespace {}", p.key.1, p.key.0);
    for dir in [Dir::Ingress, Dir::Egress] {
        let Some(rules) = p.rules(dir) else { continue };
        let ingress = dir == Dir::Ingress;
        let d = dir.as_str();
        let target = format!("KUBE-{}-{}", if ingress { "DST" } else { "SRC" }, h(&format!("{id}/{d}")));
        out.sets.push((target.clone(), IpSet::ips(targets.iter().map(|p| p.ip))));
        for (i, r) in rules.iter().enumerate() {
            let peer_side = if ingress { "SRC" } else { "DST" };
            let numbered: Vec<PortSpec> = r
                .ports
                .iter()
                .flatten()
                .filter_map(|m| match m {
                    PortMatch::Range { protocol, first, last } => Some((*protocol, *first, *last)),
                    PortMatch::Named { .. } => None,
                })
                .collect();
            let all_peers = r.peers.is_none();
            let all_ports = r.ports.is_none();
            let peer_pods: Vec<&PodInfo> = if r.peers.iter().flatten().any(|x| matches!(x, Peer::Pods(_))) {
                w.candidate_pods(r)
                    .into_iter()
                    .filter(|pod| r.pod_peer(pod, w.namespace_labels(&pod.key.0)))
                    .map(|a| &**a)
                    .collect()
            } else {
                vec![]
            };
            // Named ports resolve on the selected pods (ingress) or on the destinations (egress).
            let named: Vec<(PortSpec, String)> = {
                let groups = if ingress {
                    named_groups(r, targets.iter().copied())
                } else if all_peers {
                    named_groups(r, w.pods.values().map(|a| &**a))
                } else {
                    named_groups(r, peer_pods.iter().copied())
                };
                groups
                    .into_iter()
                    .enumerate()
                    .map(|(k, (port, set))| {
                        let name = format!("KUBE-DST-{}", h(&format!("{id}/{d}/{i}/named/{k}")));
                        out.sets.push((name.clone(), set));
                        (port, name)
                    })
                    .collect()
            };
            let rules_out = &mut out.rules;
            if !peer_pods.is_empty() {
                let name = format!("KUBE-{peer_side}-{}", h(&format!("{id}/{d}/{i}/pods")));
                out.sets.push((name.clone(), IpSet::ips(peer_pods.iter().map(|p| p.ip))));
                for port in &numbered {
                    let (s, t) = src_dst(ingress, Some(&name), Some(&target));
                    accept(rules_out, &chain, &comment, s, t, Some(port));
                }
                for (port, set) in &named {
                    // Ingress: the peers to the pods with the port; egress: the selected pods to
                    // the peers with the port.
                    let (s, t) = if ingress {
                        (Some(name.as_str()), Some(set.as_str()))
                    } else {
                        (Some(target.as_str()), Some(set.as_str()))
                    };
                    accept(rules_out, &chain, &comment, s, t, Some(port));
                }
                if all_ports {
                    let (s, t) = src_dst(ingress, Some(&name), Some(&target));
                    accept(rules_out, &chain, &comment, s, t, None);
                }
            }
            if all_peers && !all_ports {
                for port in &numbered {
                    let (s, t) = src_dst(ingress, None, Some(&target));
                    accept(rules_out, &chain, &comment, s, t, Some(port));
                }
                for (port, set) in &named {
                    let (s, t) =
                        if ingress { (None, Some(set.as_str())) } else { (Some(target.as_str()), Some(set.as_str())) };
                    accept(rules_out, &chain, &comment, s, t, Some(port));
                }
            }
            if all_peers && all_ports {
                let (s, t) = src_dst(ingress, None, Some(&target));
                accept(rules_out, &chain, &comment, s, t, None);
            }
            let blocks = block_entries(np, dir, i);
            if !blocks.is_empty() {
                let name = format!("KUBE-{peer_side}-{}", h(&format!("{id}/{d}/{i}/blocks")));
                out.sets.push((name.clone(), IpSet { net: true, entries: blocks }));
                if all_ports {
                    let (s, t) = src_dst(ingress, Some(&name), Some(&target));
                    accept(rules_out, &chain, &comment, s, t, None);
                } else {
                    for port in &numbered {
                        let (s, t) = src_dst(ingress, Some(&name), Some(&target));
                        accept(rules_out, &chain, &comment, s, t, Some(port));
                    }
                    if ingress {
                        for (port, set) in &named {
                            accept(rules_out, &chain, &comment, Some(&name), Some(set), Some(port));
                        }
                    }
                }
            }
        }
    }
    out
}

/// The node's part: pod chains and the KUBE-ROUTER-* chains.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct IptPods {
    chains: BTreeMap<String, Vec<String>>,
    isolated: usize,
}

const ROUTER_CHAINS: [(&str, &str); 3] =
    [("INPUT", "KUBE-ROUTER-INPUT"), ("FORWARD", "KUBE-ROUTER-FORWARD"), ("OUTPUT", "KUBE-ROUTER-OUTPUT")];

fn ipt_pods(w: &World, node: &str, last: Ipv4Addr) -> IptPods {
    let mut pods: Vec<&PodInfo> = w.pods_on(node).map(|a| &**a).collect();
    pods.sort_by_key(|p| (p.ip == last, p.ip));
    let mut out = IptPods::default();
    let (mut input, mut forward, mut output) = (vec![], vec![], vec![]);
    for pod in pods {
        let selecting: Vec<&Policy> = w.policies_in(&pod.key.0).filter(|p| p.selects(pod)).map(|a| &**a).collect();
        let ing = selecting.iter().any(|p| p.ingress.is_some());
        let eg = selecting.iter().any(|p| p.egress.is_some());
        if !ing && !eg {
            continue;
        }
        out.isolated += 1;
        let (ns, name, ip) = (&pod.key.0, &pod.key.1, pod.ip);
        let chain = format!("KUBE-POD-FW-{}", h(&format!("{ns}/{name}")));
        let mut r = vec![format!(
            "-A {chain} -m comment --comment \"rule for stateful firewall for pod\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
        )];
        if ing {
            r.push(format!("-A {chain} -d {ip}/32 -m comment --comment \"rule to permit the traffic traffic to pods when source is the pod's local node\" -m addrtype --src-type LOCAL -j ACCEPT"));
        }
        for p in &selecting {
            let pc = format!("KUBE-NWPLCY-{}", h(&format!("{}/{}", p.key.0, p.key.1)));
            r.push(format!("-A {chain} -m comment --comment \"run through nw policy {}\" -j {pc}", p.key.1));
        }
        r.push(format!("-A {chain} -m comment --comment \"rule to log dropped traffic POD name:{name} namespace: {ns}\" -m mark ! --mark 0x10000/0x10000 -m limit --limit 10/min --limit-burst 10 -j NFLOG --nflog-group 100"));
        r.push(format!("-A {chain} -m comment --comment \"rule to REJECT traffic destined for POD name:{name} namespace: {ns}\" -m mark ! --mark 0x10000/0x10000 -j REJECT --reject-with icmp-port-unreachable"));
        r.push(format!("-A {chain} -j MARK --set-xmark 0x0/0x10000"));
        out.chains.insert(chain.clone(), r);
        let to = format!("rule to jump traffic destined to POD name:{name} namespace: {ns} to chain {chain}");
        let from = format!("rule to jump traffic from POD name:{name} namespace: {ns} to chain {chain}");
        if ing {
            let f = "KUBE-ROUTER-FORWARD";
            forward.push(format!(
                "-A {f} -m physdev --physdev-is-bridged -m comment --comment \"{to}\" -d {ip}/32 -j {chain}"
            ));
            forward.push(format!("-A {f} -d {ip}/32 -m comment --comment \"{to}\" -j {chain}"));
            output.push(format!("-A KUBE-ROUTER-OUTPUT -d {ip}/32 -m comment --comment \"{to}\" -j {chain}"));
        }
        if eg {
            let f = "KUBE-ROUTER-FORWARD";
            forward.push(format!(
                "-A {f} -m physdev --physdev-is-bridged -m comment --comment \"{from}\" -s {ip}/32 -j {chain}"
            ));
            forward.push(format!("-A {f} -s {ip}/32 -m comment --comment \"{from}\" -j {chain}"));
            input.push(format!("-A KUBE-ROUTER-INPUT -s {ip}/32 -m comment --comment \"{from}\" -j {chain}"));
            output.push(format!("-A KUBE-ROUTER-OUTPUT -s {ip}/32 -m comment --comment \"{from}\" -j {chain}"));
        }
    }
    for ((_, chain), rules) in ROUTER_CHAINS.iter().zip([input, forward, output]) {
        out.chains.insert(chain.to_string(), rules);
    }
    out
}

/// The whole shape on the node.
#[derive(Clone)]
struct IptState {
    policies: BTreeMap<Key, IptPolicy>,
    pods: IptPods,
}

impl IptState {
    fn build(c: &Cluster) -> IptState {
        let policies =
            c.world.policies.iter().map(|(k, p)| (k.clone(), ipt_policy(&c.objects[k], p, &c.world))).collect();
        IptState { policies, pods: ipt_pods(&c.world, &node_name(0), c.server) }
    }

    /// After `key` changed in `c`: its part and the node's part made again.
    fn update(&mut self, c: &Cluster, key: &Key) {
        match c.world.policies.get(key) {
            Some(p) => {
                self.policies.insert(key.clone(), ipt_policy(&c.objects[key], p, &c.world));
            }
            None => {
                self.policies.remove(key);
            }
        }
        self.pods = ipt_pods(&c.world, &node_name(0), c.server);
    }

    fn sets(&self) -> BTreeMap<&str, &IpSet> {
        self.policies.values().flat_map(|p| p.sets.iter().map(|(n, s)| (n.as_str(), s))).collect()
    }

    fn chains(&self) -> BTreeMap<&str, &[String]> {
        let mut out: BTreeMap<&str, &[String]> =
            self.policies.values().map(|p| (p.chain.as_str(), p.rules.as_slice())).collect();
        out.extend(self.pods.chains.iter().map(|(n, r)| (n.as_str(), r.as_slice())));
        out
    }

    /// (`ipset restore` input, `iptables-restore` input) of the whole shape.
    fn full(&self) -> (String, String) {
        let mut sets = String::new();
        for (name, s) in self.sets() {
            s.create(name, &mut sets);
        }
        let mut t = String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
        let chains = self.chains();
        for name in chains.keys() {
            let _ = writeln!(t, ":{name} - [0:0]");
        }
        for (hook, chain) in ROUTER_CHAINS {
            let _ = writeln!(t, "-A {hook} -m comment --comment \"kube-router netpol - {}\" -j {chain}", h(chain));
        }
        for rules in chains.values() {
            for r in rules.iter() {
                t += r;
                t.push('\n');
            }
        }
        t += "COMMIT\n";
        (sets, t)
    }

    /// What takes the kernel from `self` to `new`: (`ipset restore` input: new sets made,
    /// changed ones refreshed through a swapped-in copy; `iptables-restore --noflush` input of
    /// the chains that are new or changed, and of those that go; `ipset restore` input
    /// destroying the sets that go).
    fn delta(&self, new: &IptState) -> (String, String, String) {
        let (old_sets, new_sets) = (self.sets(), new.sets());
        let mut sets = String::new();
        for (name, s) in &new_sets {
            match old_sets.get(name) {
                Some(o) if o == s => {}
                Some(_) => {
                    let tmp = format!("TMP-{}", h(name));
                    s.create(&tmp, &mut sets);
                    let _ = writeln!(sets, "swap {tmp} {name}\ndestroy {tmp}");
                }
                None => s.create(name, &mut sets),
            }
        }
        let (old_chains, new_chains) = (self.chains(), new.chains());
        let mut t = String::new();
        let mut body = String::new();
        for (name, rules) in &new_chains {
            if old_chains.get(name) != Some(rules) {
                let _ = writeln!(t, ":{name} - [0:0]");
                for r in rules.iter() {
                    body += r;
                    body.push('\n');
                }
            }
        }
        let gone: Vec<&&str> = old_chains.keys().filter(|n| !new_chains.contains_key(**n)).collect();
        for name in &gone {
            let _ = writeln!(t, ":{name} - [0:0]");
        }
        t += &body;
        for name in &gone {
            let _ = writeln!(t, "-X {name}");
        }
        if !t.is_empty() {
            t = format!("*filter\n{t}COMMIT\n");
        }
        let mut destroy = String::new();
        for name in old_sets.keys().filter(|n| !new_sets.contains_key(*n)) {
            let _ = writeln!(destroy, "destroy {name}");
        }
        (sets, t, destroy)
    }

    fn rule_count(&self) -> usize {
        self.chains().values().map(|r| r.len()).sum::<usize>() + ROUTER_CHAINS.len()
    }
}

/// Runs `program args` inside `ns` with `input` on its standard input; its wall time.
fn pipe(ns: &Netns, program: &str, args: &[&str], input: &str) -> Result<Duration> {
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped());
    weft_netlink::ns::command_in(&mut cmd, Path::new(&ns.path()))?;
    let t = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("running {program}"))?;
    let wrote = child.stdin.take().context("stdin")?.write_all(input.as_bytes());
    let out = child.wait_with_output()?;
    let took = t.elapsed();
    if let Err(e) = wrote {
        bail!("{program} stopped reading ({e}): {}", String::from_utf8_lossy(&out.stderr));
    }
    if !out.status.success() {
        bail!("{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(took)
}

// ---------------------------------------------------------------------------------------------
// Namespaces.

/// A listening socket with a deep accept queue: with std's 128, a client connecting back to back
/// overflows it whenever the accepting thread is not scheduled for a moment, and a dropped SYN
/// costs a 1 s retransmission.
fn listener(port: u16) -> nix::Result<TcpListener> {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, bind, listen, setsockopt, socket, sockopt,
    };
    use std::os::fd::AsRawFd;
    let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    bind(fd.as_raw_fd(), &SockaddrIn::new(0, 0, 0, 0, port))?;
    listen(&fd, Backlog::new(4096)?)?;
    Ok(TcpListener::from(fd))
}

/// A TCP server that accepts and closes, until dropped (a bounded life: one hour at most).
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<weft_netlink::ns::NsThread<()>>,
}

impl Server {
    fn start(ns: &Netns, port: u16) -> Result<Server> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel::<std::result::Result<(), String>>();
        let flag = stop.clone();
        let thread = weft_netlink::ns::spawn_in(Some(Path::new(&ns.path())), move || {
            let l = match listener(port) {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            };
            // accept() wakes every 100 ms to look at the flag.
            let tv = nix::sys::time::TimeVal::new(0, 100_000);
            if let Err(e) = nix::sys::socket::setsockopt(&l, nix::sys::socket::sockopt::ReceiveTimeout, &tv) {
                let _ = tx.send(Err(e.to_string()));
                return;
            }
            let _ = tx.send(Ok(()));
            let until = Instant::now() + Duration::from_secs(3600);
            while !flag.load(Ordering::SeqCst) && Instant::now() < until {
                match l.accept() {
                    Ok((s, _)) => drop(s),
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        })?;
        let server = Server { stop, thread: Some(thread) };
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => Ok(server),
            Ok(Err(e)) => bail!("server: {e}"),
            Err(_) => bail!("the server did not start"),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// client -- node -- server, routed: the node's forward hook sees every packet between them.
/// Fields drop in order: the server stops before the namespaces go.
struct Topo {
    _servers: [Server; 2],
    node: Netns,
    client: Netns,
    _server_ns: Netns,
    to: SocketAddrV4,
}

impl Topo {
    fn new(tag: &str, client_ip: Ipv4Addr, server_ip: Ipv4Addr) -> Result<Topo> {
        let node = Netns::try_new(&format!("polbench-{tag}-node"))?;
        let client = Netns::try_new(&format!("polbench-{tag}-client"))?;
        let server_ns = Netns::try_new(&format!("polbench-{tag}-server"))?;
        for (pod, ip, link, gw) in
            [(&client, client_ip, "c0", "169.254.1.1"), (&server_ns, server_ip, "s0", "169.254.2.1")]
        {
            node.veth(link, &format!("{gw}/32"), pod, "eth0", &format!("{ip}/32"))?;
            node.try_ip(&["route", "add", &format!("{ip}/32"), "dev", link])?;
            pod.try_ip(&["route", "add", &format!("{gw}/32"), "dev", "eth0"])?;
            pod.try_ip(&["route", "add", "default", "via", gw, "dev", "eth0"])?;
        }
        weft_netlink::ns::sysctl(Some(Path::new(&node.path())), "net.ipv4.ip_forward", "1")?;
        // The measured port, and one that no policy allows (to see the rules deny).
        let servers = [Server::start(&server_ns, SERVER_PORT)?, Server::start(&server_ns, DENIED_PORT)?];
        let to = SocketAddrV4::new(server_ip, SERVER_PORT);
        Ok(Topo { _servers: servers, node, client, _server_ns: server_ns, to })
    }

    /// Connect times in µs: `n` connects, or fewer if CONNECT_BUDGET runs out.
    fn connects(&self, n: usize) -> Result<Vec<f64>> {
        let to = SocketAddr::V4(self.to);
        weft_netlink::ns::run_in(Some(Path::new(&self.client.path())), move || -> Result<Vec<f64>> {
            let start = Instant::now();
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                if start.elapsed() > CONNECT_BUDGET {
                    break;
                }
                let t = Instant::now();
                let s = TcpStream::connect_timeout(&to, Duration::from_secs(2))
                    .with_context(|| format!("connect to {to}"))?;
                v.push(t.elapsed().as_secs_f64() * 1e6);
                drop(s);
            }
            Ok(v)
        })?
    }

    /// What a connect to `port` meets: answered, refused (a REJECT), or dropped (a timeout).
    fn probe(&self, port: u16) -> Result<&'static str> {
        let to = SocketAddr::V4(SocketAddrV4::new(*self.to.ip(), port));
        let r = weft_netlink::ns::run_in(Some(Path::new(&self.client.path())), move || {
            TcpStream::connect_timeout(&to, Duration::from_millis(300)).map(drop)
        })?;
        Ok(match r {
            Ok(()) => "answered",
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => "refused",
            Err(e) if matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock) => "dropped",
            Err(_) => "failed",
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Figures.

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median_max(v: &[Duration]) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mut s: Vec<f64> = v.iter().map(|d| ms(*d)).collect();
    s.sort_by(f64::total_cmp);
    (s[s.len() / 2], s[s.len() - 1])
}

fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() - 1) as f64 * p).round() as usize]
}

struct Size {
    policies: usize,
    weft_change: Vec<Duration>,
    ipt_change: Vec<Duration>,
    weft_full: Duration,
    ipt_full: Duration,
}

fn tool(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn main() -> Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().context("usage: policy-bench [POLICIES] [PODS]"))
        .collect::<Result<_>>()?;
    let policies = args.first().copied().unwrap_or(1000).max(1);
    let pods = args.get(1).copied().unwrap_or(10_000).max(2);
    if !nix::unistd::geteuid().is_root() {
        bail!("policy-bench makes network namespaces: run it as root");
    }
    let iptables = tool("iptables-restore") && tool("ipset");
    let mut sizes: Vec<usize> = [100, 1000, policies].into_iter().filter(|n| *n <= policies).collect();
    sizes.sort();
    sizes.dedup();

    let probe = cluster(policies, pods)?;
    let local = probe.world.pods_on(&node_name(0)).count();
    println!(
        "== policy-bench: {policies} NetworkPolicies over {pods} pods ({} namespaces, {} nodes of {} pods; the measured node enforces its {local} pods and holds every policy's sets)",
        probe.namespaces,
        probe.nodes,
        PODS_PER_NODE.min(pods)
    );
    println!(
        "   weft: pure compile + one nf_tables netlink batch per change; iptables: kube-router's shape (KUBE-ROUTER-FORWARD -> KUBE-POD-FW-* -> KUBE-NWPLCY-* on ipsets)"
    );
    if iptables {
        let v = Command::new("iptables-restore").arg("--version").output()?;
        println!("   {}", String::from_utf8_lossy(&v.stdout).trim());
    } else {
        println!("   iptables-restore or ipset missing (apt: iptables ipset): the iptables side is skipped");
    }
    drop(probe);
    let (fa, fd) = nft_floor()?;
    println!(
        "   nf_tables floor here: a one-element netlink batch as weft sends it takes {fa:.2} ms to add, {fd:.2} ms to delete"
    );

    let node = NodeInfo { name: node_name(0), pod_cidrs: vec![node_cidr(0).parse()?] };
    let mut results: Vec<Size> = vec![];
    let mut kept: Option<(Topo, Option<Topo>, Cluster)> = None;
    for &n in &sizes {
        let c = cluster(n, pods)?;
        // weft.
        let tw = Topo::new("w", c.client, c.server)?;
        let t = Instant::now();
        let want = compile(&c.world, &node);
        let compile_t = t.elapsed();
        let (mut nsets, mut elems) = (0, 0);
        for f in want.policies.values() {
            for (_, s) in f.sets() {
                nsets += 1;
                elems += s.len();
            }
        }
        let chains = want.chains().len();
        let sink = TimedSink { inner: NetlinkSink { netns: Some(tw.node.path().into()) }, last: Default::default() };
        let mut applier = Applier::new(sink);
        let t = Instant::now();
        let ops = applier.sync(want)?;
        let apply_t = t.elapsed();
        let keys = picks(applier.applied().context("applied")?);
        let mut wc = c.clone();
        let (mut weft_change, mut weft_compile, mut weft_ops, mut weft_batch) = (vec![], vec![], vec![], vec![]);
        for (r, key) in keys.iter().enumerate() {
            wc.change(key, r)?;
            let changes = wc.world.take_changes();
            let t = Instant::now();
            let want = recompile(applier.applied(), &wc.world, &node, &changes);
            let ct = t.elapsed();
            let o = applier.sync(want)?;
            weft_change.push(t.elapsed());
            weft_compile.push(ct);
            weft_ops.push(o);
            weft_batch.push(applier.sink().last.get());
        }
        let (cm, cx) = median_max(&weft_change);
        let (pm, _) = median_max(&weft_compile);
        let (bm, _) = median_max(&weft_batch);
        weft_ops.sort();
        println!(
            "P={n:>5} weft      compile {:7.3} s  full apply {:7.3} s (one batch: {ops} objects+elements; {nsets} sets, {elems} elements, {chains} policy-set chains)",
            compile_t.as_secs_f64(),
            apply_t.as_secs_f64(),
        );
        println!(
            "P={n:>5} weft      one-policy change: median {cm:6.2} ms, max {cx:6.2} ms over {} changes (medians: compile {pm:.2} ms, netlink batch {bm:.2} ms; delta {} objects+elements)",
            weft_change.len(),
            weft_ops.get(weft_ops.len() / 2).copied().unwrap_or(0),
        );
        let mut size = Size {
            policies: n,
            weft_change,
            ipt_change: vec![],
            weft_full: compile_t + apply_t,
            ipt_full: Duration::ZERO,
        };
        // iptables.
        let mut ti = None;
        if iptables {
            let topo = Topo::new("i", c.client, c.server)?;
            let state = IptState::build(&c);
            let (sets_txt, rules_txt) = state.full();
            let sets = state.sets();
            let elements: usize = sets.values().map(|s| s.entries.len()).sum();
            let t_sets = pipe(&topo.node, "ipset", &["restore"], &sets_txt)?;
            let t_rules = pipe(&topo.node, "iptables-restore", &[], &rules_txt)?;
            println!(
                "P={n:>5} iptables  full load {:7.3} s (ipset restore {:.3} s, iptables-restore {:.3} s; {} rules, {} ipsets, {elements} entries, {} pod chains)",
                (t_sets + t_rules).as_secs_f64(),
                t_sets.as_secs_f64(),
                t_rules.as_secs_f64(),
                state.rule_count(),
                sets.len(),
                state.pods.isolated,
            );
            size.ipt_full = t_sets + t_rules;
            let mut ic = c.clone();
            let mut cur = state.clone();
            for (r, key) in keys.iter().enumerate() {
                ic.change(key, r)?;
                let mut next = cur.clone();
                next.update(&ic, key);
                let (sets, rules, destroy) = cur.delta(&next);
                let mut took = Duration::ZERO;
                if !sets.is_empty() {
                    took += pipe(&topo.node, "ipset", &["restore"], &sets)?;
                }
                if !rules.is_empty() {
                    took += pipe(&topo.node, "iptables-restore", &["--noflush"], &rules)?;
                }
                if !destroy.is_empty() {
                    took += pipe(&topo.node, "ipset", &["restore"], &destroy)?;
                }
                size.ipt_change.push(took);
                cur = next;
            }
            let (im, ix) = median_max(&size.ipt_change);
            println!(
                "P={n:>5} iptables  one-policy change: median {im:6.2} ms, max {ix:6.2} ms over {} changes (ipset restore + iptables-restore --noflush of the changed chains)",
                size.ipt_change.len()
            );
            println!(
                "P={n:>5} ratio weft/iptables: full (compile+apply vs load) {:.2}x, one-policy change {:.2}x",
                size.weft_full.as_secs_f64() / size.ipt_full.as_secs_f64(),
                cm / im
            );
            ti = Some(topo);
        }
        results.push(size);
        if n == policies {
            kept = Some((tw, ti, c));
        }
    }

    // Connect latency at the full size.
    let (tw, ti, c) = kept.context("the full size ran")?;
    let selecting = c
        .world
        .policies
        .values()
        .filter(|p| p.ingress.is_some() && c.world.pods_at(c.server).any(|s| p.selects(s)))
        .count();
    let t0 = Topo::new("0", c.client, c.server)?;
    // 0 policies on a Kubernetes node still has conntrack on every forwarded packet (kube-proxy's
    // FORWARD rule); a namespace with no rule at all has none, which is shown as the floor.
    let tc = if tool("iptables-restore") {
        let t = Topo::new("c", c.client, c.server)?;
        let kube_forward =
            "*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\nCOMMIT\n";
        pipe(&t.node, "iptables-restore", &[], kube_forward)?;
        Some(t)
    } else {
        None
    };
    // Both rule sets are in the path and deny what no policy allows.
    let mut seen = vec![("no rules", t0.probe(DENIED_PORT)?, "answered"), ("weft", tw.probe(DENIED_PORT)?, "dropped")];
    if let Some(ti) = &ti {
        seen.push(("iptables", ti.probe(DENIED_PORT)?, "refused"));
    }
    for (who, got, want) in &seen {
        if got != want {
            bail!("{who}: a connect to port {DENIED_PORT}, which no policy allows, was {got}, not {want}");
        }
    }
    let seen: Vec<String> = seen.iter().map(|(who, got, _)| format!("{who}: {got}")).collect();
    println!("a connect to bench-server:{DENIED_PORT}, which no policy allows: {}", seen.join(", "));
    let mut cases: Vec<(String, &Topo, Vec<f64>)> = vec![("no rules (no conntrack)".into(), &t0, vec![])];
    if let Some(t) = &tc {
        cases.push(("0 policies (conntrack)".into(), t, vec![]));
    }
    let base = cases.len() - 1;
    cases.push((format!("weft, {policies} policies"), &tw, vec![]));
    let weft_case = cases.len() - 1;
    if let Some(ti) = &ti {
        cases.push((format!("iptables, {policies} policies"), ti, vec![]));
    }
    for (_, topo, _) in &cases {
        topo.connects(WARMUP)?;
    }
    for _ in 0..ROUNDS {
        for (_, topo, samples) in cases.iter_mut() {
            samples.extend(topo.connects(PER_ROUND)?);
        }
    }
    println!(
        "connect latency, bench-client (node 1) -> bench-server:{SERVER_PORT} (node 0, selected by {selecting} ingress policies), {ROUNDS} rounds x {PER_ROUND} connects taking turns; ratios p50 / p99 against \"{}\":",
        cases[base].0
    );
    let (b50, b99) = (pct(&cases[base].2, 0.5), pct(&cases[base].2, 0.99));
    for (name, _, s) in &cases {
        let (p50, p99) = (pct(s, 0.5), pct(s, 0.99));
        println!(
            "  {name:<28} p50 {p50:7.1} us  p99 {p99:7.1} us  {:.2}x / {:.2}x  ({} connects, {} over 0.2 s)",
            p50 / b50,
            p99 / b99,
            s.len(),
            s.iter().filter(|x| **x > 200_000.0).count()
        );
    }

    // Goals.
    let full = results.last().context("a size")?;
    let (cm, cx) = median_max(&full.weft_change);
    let first = &results[0];
    let flat = median_max(&full.weft_change).0 / median_max(&first.weft_change).0;
    println!("goals:");
    println!(
        "  one-policy change < 20 ms: weft median {cm:.2} ms, max {cx:.2} ms at {policies} policies: {}",
        if cx < 20.0 {
            "met"
        } else if cm < 20.0 {
            "met at the median, not at the max"
        } else {
            "NOT met"
        }
    );
    let per_size: Vec<String> =
        results.iter().map(|s| format!("{} policies {:.2} ms", s.policies, median_max(&s.weft_change).0)).collect();
    println!(
        "  flat in the number of policies: weft medians {} ({:.2}x from the first to the last)",
        per_size.join(", "),
        flat
    );
    if iptables {
        let per_size: Vec<String> =
            results.iter().map(|s| format!("{} policies {:.2} ms", s.policies, median_max(&s.ipt_change).0)).collect();
        println!("                                  iptables medians {}", per_size.join(", "));
    }
    let weft50 = pct(&cases[weft_case].2, 0.5) / b50;
    println!(
        "  connect latency with {policies} policies within 1.2x of 0 policies: weft {weft50:.2}x (p50; {:.2}x of no rules at all): {}",
        pct(&cases[weft_case].2, 0.5) / pct(&cases[0].2, 0.5),
        if weft50 <= 1.2 { "met" } else { "NOT met" }
    );
    if let Some((_, _, s)) = cases.get(weft_case + 1) {
        println!(
            "                                  iptables {:.2}x (p50; {:.2}x of no rules at all)",
            pct(s, 0.5) / b50,
            pct(s, 0.5) / pct(&cases[0].2, 0.5)
        );
    }
    drop(cases);
    drop((t0, tc, tw, ti));
    Ok(())
}
