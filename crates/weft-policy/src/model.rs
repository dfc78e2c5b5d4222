//! What the engine keeps of the API's objects, read once when a watch delivers them: policies
//! with their selectors, peers and ports parsed (a part the API would refuse is dropped with a
//! warning and matches nothing, never everything), pods reduced to what policies look at
//! (address, node, namespace, labels, named ports), namespaces' labels; and the [`World`] that
//! indexes them and records what changed since the last pass ([`Changes`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use weft_k8s::netpol::{self, Peer, PortMatch, Protocol};
use weft_k8s::selectors::Selector;

/// An object's (namespace, name).
pub type Key = (String, String);
pub type Labels = BTreeMap<String, String>;

/// A direction of traffic relative to the selected pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dir {
    Ingress,
    Egress,
}

impl Dir {
    pub fn as_str(self) -> &'static str {
        match self {
            Dir::Ingress => "ingress",
            Dir::Egress => "egress",
        }
    }
}

/// One ingress or egress rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// None: every peer (`from`/`to` missing or empty). Some: these peers only (those that
    /// failed to parse are left out, so a rule whose peers are all broken matches nothing).
    pub peers: Option<Vec<Peer>>,
    /// None: every port. Some: these ports only (broken entries left out likewise).
    pub ports: Option<Vec<PortMatch>>,
}

impl Rule {
    /// Whether a pod is one of the rule's pod peers (ipBlocks aside).
    pub fn pod_peer(&self, pod: &PodInfo, ns_labels: Option<&Labels>) -> bool {
        self.peers.iter().flatten().any(|p| match p {
            Peer::Pods(pp) => pp.matches(&pod.key.0, &pod.labels, ns_labels),
            Peer::Block(_) => false,
        })
    }
    /// Whether a pod is a peer at all: every pod when the rule names none, else by a pod peer
    /// or by its address inside an ipBlock (addresses are taken literally, pods' included).
    pub fn any_peer(&self, pod: &PodInfo, ns_labels: Option<&Labels>) -> bool {
        match &self.peers {
            None => true,
            Some(peers) => peers.iter().any(|p| match p {
                Peer::Pods(pp) => pp.matches(&pod.key.0, &pod.labels, ns_labels),
                Peer::Block(b) => b.contains(pod.ip),
            }),
        }
    }
}

/// A NetworkPolicy as the engine reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub key: Key,
    /// Which pods of its namespace it selects (nothing when the selector is invalid).
    pub selector: Selector,
    /// Its ingress rules if it isolates for ingress (an empty list denies all ingress).
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
    /// What was wrong with it, one sentence each, naming the field.
    pub warnings: Vec<String>,
}

impl Policy {
    pub fn from_object(np: &NetworkPolicy) -> Policy {
        let ns = np.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let key = (ns.clone(), np.metadata.name.clone().unwrap_or_default());
        let mut warnings = vec![];
        let selector = netpol::pod_selector(np).unwrap_or_else(|e| {
            warnings.push(format!("{e}: the policy selects no pod"));
            Selector::Nothing
        });
        let default = Default::default();
        let spec = np.spec.as_ref().unwrap_or(&default);
        let types = netpol::directions(spec);
        let ingress = types.ingress.then(|| {
            let rules = spec.ingress.iter().flatten().enumerate();
            rules
                .map(|(i, r)| {
                    let f = format!("spec.ingress[{i}]");
                    rule(&ns, r.from.as_deref(), r.ports.as_deref(), &format!("{f}.from"), &f, &mut warnings)
                })
                .collect()
        });
        let egress = types.egress.then(|| {
            let rules = spec.egress.iter().flatten().enumerate();
            rules
                .map(|(i, r)| {
                    let f = format!("spec.egress[{i}]");
                    rule(&ns, r.to.as_deref(), r.ports.as_deref(), &format!("{f}.to"), &f, &mut warnings)
                })
                .collect()
        });
        Policy { key, selector, ingress, egress, warnings }
    }

    pub fn rules(&self, dir: Dir) -> Option<&[Rule]> {
        match dir {
            Dir::Ingress => self.ingress.as_deref(),
            Dir::Egress => self.egress.as_deref(),
        }
    }

    /// Does it select this pod (same namespace, labels matched)?
    pub fn selects(&self, pod: &PodInfo) -> bool {
        pod.key.0 == self.key.0 && self.selector.matches(&pod.labels)
    }

    /// Whether a namespace's labels change what it allows.
    pub fn reads_namespace_labels(&self) -> bool {
        [&self.ingress, &self.egress].into_iter().flatten().flatten().flat_map(|r| r.peers.iter().flatten()).any(|p| {
            match p {
                Peer::Pods(pp) => pp.reads_namespace_labels(),
                Peer::Block(_) => false,
            }
        })
    }
}

fn rule(
    ns: &str,
    peers: Option<&[NetworkPolicyPeer]>,
    ports: Option<&[NetworkPolicyPort]>,
    peers_field: &str,
    rule_field: &str,
    warnings: &mut Vec<String>,
) -> Rule {
    let peers = peers.filter(|p| !p.is_empty()).map(|peers| {
        let parsed = peers.iter().enumerate().filter_map(|(j, p)| {
            netpol::peer(ns, p)
                .map_err(|e| warnings.push(format!("{peers_field}[{j}]: {e}: this peer matches nothing")))
                .ok()
        });
        parsed.collect()
    });
    let ports = ports.filter(|p| !p.is_empty()).map(|ports| {
        let parsed = ports.iter().enumerate().filter_map(|(j, p)| {
            netpol::port(p)
                .map_err(|e| warnings.push(format!("{rule_field}.ports[{j}]: {e}: this port matches nothing")))
                .ok()
        });
        parsed.collect()
    });
    Rule { peers, ports }
}

/// A pod as policies see it: only pods with a policy address are kept (an IPv4 address, not
/// hostNetwork, not finished; see [`weft_k8s::netpol::policy_address`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub key: Key,
    pub ip: Ipv4Addr,
    pub node: String,
    pub labels: Labels,
    /// Its containers' named ports: (name, protocol, number).
    pub ports: Vec<(String, Protocol, u16)>,
}

impl PodInfo {
    /// None for a pod policies do not apply to (yet, or any more).
    pub fn from_object(p: &Pod) -> Option<PodInfo> {
        let ip = netpol::policy_address(p)?;
        Some(PodInfo {
            key: (p.metadata.namespace.clone().unwrap_or_default(), p.metadata.name.clone().unwrap_or_default()),
            ip,
            node: p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default(),
            labels: p.metadata.labels.clone().unwrap_or_default(),
            ports: netpol::named_ports(p),
        })
    }

    /// The numbers its containers give the port `name` for `protocol`.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> impl Iterator<Item = u16> + '_ {
        let name = name.to_string();
        self.ports.iter().filter(move |(n, p, _)| *n == name && *p == protocol).map(|(_, _, n)| *n)
    }
}

/// What changed since the compiler last looked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Everything (a relist): compile from scratch.
    pub all: bool,
    pub policies: BTreeSet<Key>,
    /// Addresses whose pods came, went or changed.
    pub ips: BTreeSet<Ipv4Addr>,
    /// Namespaces whose labels changed.
    pub namespaces: BTreeSet<String>,
}

impl Changes {
    pub fn everything() -> Changes {
        Changes { all: true, ..Default::default() }
    }
    pub fn is_empty(&self) -> bool {
        !self.all && self.policies.is_empty() && self.ips.is_empty() && self.namespaces.is_empty()
    }
    /// Adds what `other` holds.
    pub fn merge(&mut self, other: Changes) {
        self.all |= other.all;
        self.policies.extend(other.policies);
        self.ips.extend(other.ips);
        self.namespaces.extend(other.namespaces);
    }
}

/// Every policy, pod and namespace, indexed the ways the compiler asks: pods by address, by
/// namespace (the key's order) and by node.
#[derive(Clone, Debug, Default)]
pub struct World {
    pub policies: BTreeMap<Key, Arc<Policy>>,
    pub pods: BTreeMap<Key, Arc<PodInfo>>,
    pub by_ip: BTreeMap<Ipv4Addr, BTreeSet<Key>>,
    pub by_node: BTreeMap<String, BTreeSet<Key>>,
    pub namespaces: BTreeMap<String, Arc<Labels>>,
    /// What changed since [`World::take_changes`].
    pub changes: Changes,
}

impl World {
    pub fn put_policy(&mut self, p: Policy) {
        let key = p.key.clone();
        if self.policies.get(&key).is_some_and(|old| **old == p) {
            return;
        }
        self.policies.insert(key.clone(), Arc::new(p));
        self.changes.policies.insert(key);
    }

    pub fn remove_policy(&mut self, key: &Key) {
        if self.policies.remove(key).is_some() {
            self.changes.policies.insert(key.clone());
        }
    }

    /// A pod as the watch now shows it (None: one policies do not apply to, which removes it).
    pub fn put_pod(&mut self, key: Key, pod: Option<PodInfo>) {
        match pod {
            None => self.remove_pod(&key),
            Some(p) => {
                if self.pods.get(&key).is_some_and(|old| **old == p) {
                    return;
                }
                self.remove_pod(&key);
                self.changes.ips.insert(p.ip);
                self.by_ip.entry(p.ip).or_default().insert(key.clone());
                self.by_node.entry(p.node.clone()).or_default().insert(key.clone());
                self.pods.insert(key, Arc::new(p));
            }
        }
    }

    pub fn remove_pod(&mut self, key: &Key) {
        let Some(old) = self.pods.remove(key) else { return };
        self.changes.ips.insert(old.ip);
        remove_from(&mut self.by_ip, &old.ip, key);
        remove_from(&mut self.by_node, &old.node, key);
    }

    pub fn put_namespace(&mut self, name: String, labels: Labels) {
        if self.namespaces.get(&name).is_some_and(|l| **l == labels) {
            return;
        }
        self.namespaces.insert(name.clone(), Arc::new(labels));
        self.changes.namespaces.insert(name);
    }

    pub fn remove_namespace(&mut self, name: &str) {
        if self.namespaces.remove(name).is_some() {
            self.changes.namespaces.insert(name.to_string());
        }
    }

    /// Replaces every policy (a relist): everything is compiled again.
    pub fn replace_policies(&mut self, all: Vec<Policy>) {
        self.policies = all.into_iter().map(|p| (p.key.clone(), Arc::new(p))).collect();
        self.changes.all = true;
    }

    pub fn replace_pods(&mut self, all: Vec<(Key, PodInfo)>) {
        self.pods.clear();
        self.by_ip.clear();
        self.by_node.clear();
        for (k, p) in all {
            self.put_pod(k, Some(p));
        }
        self.changes.all = true;
    }

    pub fn replace_namespaces(&mut self, all: Vec<(String, Labels)>) {
        self.namespaces = all.into_iter().map(|(n, l)| (n, Arc::new(l))).collect();
        self.changes.all = true;
    }

    /// What changed since the last call.
    pub fn take_changes(&mut self) -> Changes {
        std::mem::take(&mut self.changes)
    }

    /// The pods of a namespace.
    pub fn pods_in<'a>(&'a self, ns: &'a str) -> impl Iterator<Item = &'a Arc<PodInfo>> + 'a {
        self.pods.range((ns.to_string(), String::new())..).take_while(move |(k, _)| k.0 == ns).map(|(_, p)| p)
    }

    /// The policies of a namespace.
    pub fn policies_in<'a>(&'a self, ns: &'a str) -> impl Iterator<Item = &'a Arc<Policy>> + 'a {
        self.policies.range((ns.to_string(), String::new())..).take_while(move |(k, _)| k.0 == ns).map(|(_, p)| p)
    }

    /// The pods whose address lies in `first..=last`.
    pub fn pods_between(&self, first: Ipv4Addr, last: Ipv4Addr) -> impl Iterator<Item = &Arc<PodInfo>> {
        self.by_ip.range(first..=last).flat_map(|(_, keys)| keys.iter()).filter_map(|k| self.pods.get(k))
    }

    /// The pods that have `ip`: one, nearly always.
    pub fn pods_at(&self, ip: Ipv4Addr) -> impl Iterator<Item = &Arc<PodInfo>> {
        self.by_ip.get(&ip).into_iter().flatten().filter_map(|k| self.pods.get(k))
    }

    /// The pods on `node`.
    pub fn pods_on<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a Arc<PodInfo>> + 'a {
        self.by_node.get(node).into_iter().flatten().filter_map(|k| self.pods.get(k))
    }

    pub fn namespace_labels(&self, ns: &str) -> Option<&Labels> {
        self.namespaces.get(ns).map(|l| &**l)
    }

    /// The pods a rule's pod peers may select: those of the namespaces they look in (the
    /// policy's own, or those whose labels a peer's namespaceSelector matches).
    pub fn candidate_pods<'a>(&'a self, rule: &'a Rule) -> Vec<&'a Arc<PodInfo>> {
        use weft_k8s::netpol::Namespaces;
        let mut namespaces: BTreeSet<&str> = BTreeSet::new();
        for p in rule.peers.iter().flatten() {
            if let Peer::Pods(pp) = p {
                match &pp.namespaces {
                    Namespaces::Own(ns) => {
                        namespaces.insert(ns.as_str());
                    }
                    Namespaces::Matching(sel) => {
                        namespaces
                            .extend(self.namespaces.iter().filter(|(_, l)| sel.matches(l)).map(|(n, _)| n.as_str()));
                    }
                }
            }
        }
        namespaces.into_iter().flat_map(|ns| self.pods_in(ns)).collect()
    }
}

fn remove_from<K: Ord, V: Ord>(index: &mut BTreeMap<K, BTreeSet<V>>, k: &K, v: &V) {
    if let Some(s) = index.get_mut(k) {
        s.remove(v);
        if s.is_empty() {
            index.remove(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(v: serde_json::Value) -> Policy {
        Policy::from_object(&serde_json::from_value(v).unwrap())
    }

    #[test]
    fn broken_parts_match_nothing_and_say_so() {
        let p = policy(json!({"metadata": {"name": "p", "namespace": "x"}, "spec": {"podSelector": {},
            "ingress": [{"from": [{"ipBlock": {"cidr": "nonsense"}}], "ports": [{"port": 70000}]},
                        {"from": [{"podSelector": {}}, {}], "ports": [{"port": 80}, {"port": 80, "protocol": "ICMP"}]}]}}));
        let ingress = p.ingress.as_ref().unwrap();
        assert_eq!(ingress[0].peers, Some(vec![]), "a rule whose peers are all broken has none, not all");
        assert_eq!(ingress[0].ports, Some(vec![]));
        assert_eq!(ingress[1].peers.as_ref().unwrap().len(), 1);
        assert_eq!(ingress[1].ports.as_ref().unwrap().len(), 1);
        assert_eq!(p.warnings.len(), 4, "{:?}", p.warnings);
        assert!(p.warnings[0].starts_with("spec.ingress[0].from[0]: ipBlock"), "{:?}", p.warnings);
        assert!(p.warnings.iter().any(|w| w.starts_with("spec.ingress[1].ports[1]: protocol \"ICMP\"")));
        let bad = policy(json!({"metadata": {"name": "p", "namespace": "x"},
            "spec": {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Has"}]}}}));
        assert_eq!(bad.selector, Selector::Nothing);
        assert!(bad.warnings[0].contains("selects no pod"));
    }

    #[test]
    fn empty_peers_and_ports_mean_all() {
        let p = policy(json!({"metadata": {"name": "p", "namespace": "x"}, "spec": {"podSelector": {},
            "policyTypes": ["Ingress", "Egress"], "ingress": [{"from": [], "ports": []}, {}]}}));
        assert_eq!(p.ingress.as_ref().unwrap(), &vec![Rule { peers: None, ports: None }; 2]);
        assert_eq!(p.egress, Some(vec![]), "Egress with no rules: deny all egress");
    }

    #[test]
    fn the_world_records_what_changed() {
        let mut w = World::default();
        let pod = |ip: &str, app: &str| PodInfo {
            key: ("x".into(), "a".into()),
            ip: ip.parse().unwrap(),
            node: "n1".into(),
            labels: [("app".to_string(), app.to_string())].into(),
            ports: vec![],
        };
        w.put_pod(("x".into(), "a".into()), Some(pod("10.0.0.1", "web")));
        assert_eq!(w.take_changes().ips, ["10.0.0.1".parse().unwrap()].into());
        w.put_pod(("x".into(), "a".into()), Some(pod("10.0.0.1", "web")));
        assert!(w.take_changes().is_empty(), "the same pod again changes nothing");
        w.put_pod(("x".into(), "a".into()), Some(pod("10.0.0.2", "web")));
        let ch = w.take_changes();
        assert_eq!(ch.ips.len(), 2, "the old address and the new one");
        assert_eq!(w.pods_at("10.0.0.1".parse().unwrap()).count(), 0);
        assert_eq!(w.pods_on("n1").count(), 1);
        w.put_pod(("x".into(), "a".into()), None);
        assert_eq!(w.take_changes().ips, ["10.0.0.2".parse().unwrap()].into());
        assert!(w.by_ip.is_empty() && w.by_node.is_empty());
    }
}
