//! The compiler: policies, pods and namespaces in ([`World`]), one node's desired state out
//! ([`Desired`]). Pure (no I/O), so every rule of the API is unit-tested without root.
//!
//! The shape (table `ip weft-policy`, see [`crate::rules`]):
//! - each policy is a [`Frag`]ment: per rule, named sets of its peers (pod addresses; ipBlock
//!   ranges with the exceptions cut out) and of its ports (`protocol . port` ranges; for named
//!   ports, `address . protocol . port` resolved per pod). A fragment does not depend on which
//!   pods it selects (except ingress named ports, resolved on this node's selected pods), so pod
//!   churn is element operations in the sets that name the pod;
//! - each local pod ([`Local`]) isolated in a direction maps, by address, to a chain for the
//!   SET of policies selecting it in that direction ([`PolicySet`], named by [`chain_name`]),
//!   which holds its policies' rules inline (each returning: allowed), then a rate-limited log
//!   and a drop. A policy's change rewrites only the chains of sets that include it; a packet
//!   costs two map lookups plus the rules of the policies that select its pods.
//!
//! Incremental: [`recompile`] takes the previous result and what changed ([`Changes`]): a
//! policy is compiled again when it changed (or reads namespaces' labels and one changed); a
//! changed pod touches the elements keyed by its address in every fragment, and its own
//! chains if it is local.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::Ipv4Net;
use weft_k8s::netpol::{Peer, PortMatch};

use crate::model::{Changes, Dir, Key, PodInfo, Policy, Rule, World};

/// What a node needs to know about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    /// Node.spec.podCIDRs (IPv4): forwarded traffic from or to an address in them that is not
    /// a pod the engine knows is dropped, so a new pod is isolated before its containers start.
    pub pod_cidrs: Vec<Ipv4Net>,
}

/// Ports `first..=last` of an IP protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub proto: u8,
    pub first: u16,
    pub last: u16,
}

/// A named port resolved on a pod: (its address, IP protocol, port).
pub type Named = (Ipv4Addr, u8, u16);

/// A rule's peers, when it names some: each part the rule has gets a set (an empty set while no
/// pod matches, so a pod's arrival is an element, not a new rule).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerSets {
    /// Addresses of the pods its pod peers select (if it has pod peers).
    pub pods: Option<BTreeSet<Ipv4Addr>>,
    /// Its ipBlocks, merged into disjoint ranges (if it has ipBlocks).
    pub cidrs: Option<Vec<(Ipv4Addr, Ipv4Addr)>>,
}

/// A rule's ports, when it names some.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortSets {
    /// Numbered ports and ranges, merged per protocol (if it has any).
    pub numbered: Option<Vec<PortRange>>,
    /// Named ports resolved per pod: for ingress on the selected pods of this node (the
    /// destination), for egress on the destination peers (if it has named ports).
    pub named: Option<BTreeSet<Named>>,
}

/// One rule compiled: None is "all" (no peers named, no ports named).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleFrag {
    pub peers: Option<PeerSets>,
    pub ports: Option<PortSets>,
}

/// One policy compiled: its rules per direction (None: the policy does not isolate that way).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frag {
    /// Stable short id its sets are named by ([`policy_id`]).
    pub id: String,
    pub ingress: Option<Vec<RuleFrag>>,
    pub egress: Option<Vec<RuleFrag>>,
}

/// What a named set holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetKind {
    /// Pod addresses (`ipv4_addr`).
    Addrs,
    /// Address ranges (`ipv4_addr`, interval).
    Ranges,
    /// `inet_proto . inet_service` ranges (interval concatenation).
    Ports,
    /// `ipv4_addr . inet_proto . inet_service`.
    Named,
}

impl SetKind {
    fn suffix(self) -> &'static str {
        match self {
            SetKind::Addrs => "pods",
            SetKind::Ranges => "cidrs",
            SetKind::Ports => "ports",
            SetKind::Named => "named",
        }
    }
}

/// A set's contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contents<'a> {
    Addrs(&'a BTreeSet<Ipv4Addr>),
    Ranges(&'a [(Ipv4Addr, Ipv4Addr)]),
    Ports(&'a [PortRange]),
    Named(&'a BTreeSet<Named>),
}

impl Contents<'_> {
    pub fn kind(&self) -> SetKind {
        match self {
            Contents::Addrs(_) => SetKind::Addrs,
            Contents::Ranges(_) => SetKind::Ranges,
            Contents::Ports(_) => SetKind::Ports,
            Contents::Named(_) => SetKind::Named,
        }
    }
    pub fn len(&self) -> usize {
        match self {
            Contents::Addrs(s) => s.len(),
            Contents::Ranges(s) => s.len(),
            Contents::Ports(s) => s.len(),
            Contents::Named(s) => s.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One nft rule of a policy-set chain: an optional peer match (`ip saddr` for ingress, `ip
/// daddr` for egress, in a set of addresses or ranges) and an optional port match (`meta
/// l4proto . th dport` in a set of ranges, or `ip daddr . meta l4proto . th dport` in a set of
/// named ports), then `return`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Line {
    pub peer: Option<(SetKind, String)>,
    pub port: Option<(SetKind, String)>,
}

impl Frag {
    pub fn rules(&self, dir: Dir) -> Option<&[RuleFrag]> {
        match dir {
            Dir::Ingress => self.ingress.as_deref(),
            Dir::Egress => self.egress.as_deref(),
        }
    }
    fn rules_mut(&mut self, dir: Dir) -> Option<&mut Vec<RuleFrag>> {
        match dir {
            Dir::Ingress => self.ingress.as_mut(),
            Dir::Egress => self.egress.as_mut(),
        }
    }

    /// The nft rules this policy puts in a chain of `dir`: per rule, one per peer part times
    /// port part (a rule with pods and ipBlocks, numbered and named ports, is four); an egress
    /// named port carries its peers in its own set (`ip daddr . proto . port`), so it is one.
    pub fn lines(&self, dir: Dir) -> Vec<Line> {
        let mut out = vec![];
        for (i, r) in self.rules(dir).into_iter().flatten().enumerate() {
            let name = |k: SetKind| (k, set_name(&self.id, dir, i, k));
            let peers: Vec<Option<(SetKind, String)>> = match &r.peers {
                None => vec![None],
                Some(p) => {
                    [p.pods.is_some().then(|| name(SetKind::Addrs)), p.cidrs.is_some().then(|| name(SetKind::Ranges))]
                        .into_iter()
                        .flatten()
                        .map(Some)
                        .collect()
                }
            };
            let ports: Vec<Option<(SetKind, String)>> = match &r.ports {
                None => vec![None],
                Some(p) => [
                    p.numbered.is_some().then(|| name(SetKind::Ports)),
                    p.named.is_some().then(|| name(SetKind::Named)),
                ]
                .into_iter()
                .flatten()
                .map(Some)
                .collect(),
            };
            for port in ports {
                if dir == Dir::Egress && matches!(port, Some((SetKind::Named, _))) {
                    out.push(Line { peer: None, port });
                    continue;
                }
                for peer in &peers {
                    out.push(Line { peer: peer.clone(), port: port.clone() });
                }
            }
        }
        out
    }

    /// Every named set of the policy with its contents.
    pub fn sets<'a>(&'a self) -> Vec<(String, Contents<'a>)> {
        let mut out = vec![];
        for dir in [Dir::Ingress, Dir::Egress] {
            for (i, r) in self.rules(dir).into_iter().flatten().enumerate() {
                let put = |c: Contents<'a>| (set_name(&self.id, dir, i, c.kind()), c);
                if let Some(p) = &r.peers {
                    out.extend(p.pods.as_ref().map(|s| put(Contents::Addrs(s))));
                    out.extend(p.cidrs.as_ref().map(|s| put(Contents::Ranges(s))));
                }
                if let Some(p) = &r.ports {
                    out.extend(p.numbered.as_ref().map(|s| put(Contents::Ports(s))));
                    out.extend(p.named.as_ref().map(|s| put(Contents::Named(s))));
                }
            }
        }
        out
    }

    /// One set's contents by name.
    pub fn set(&self, name: &str) -> Option<Contents<'_>> {
        self.sets().into_iter().find(|(n, _)| n == name).map(|(_, c)| c)
    }
}

/// The set of policies that select a pod in one direction: the chain its traffic jumps to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PolicySet {
    pub dir: Dir,
    /// [`chain_name`] of the two fields below.
    pub name: String,
    /// Sorted, each once.
    pub policies: Vec<Key>,
}

impl PolicySet {
    pub fn new(dir: Dir, mut policies: Vec<Key>) -> PolicySet {
        policies.sort();
        policies.dedup();
        PolicySet { dir, name: chain_name(dir, &policies), policies }
    }
}

/// A pod of this node the engine knows: its chains, when policies isolate it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Local {
    pub ingress: Option<Arc<PolicySet>>,
    pub egress: Option<Arc<PolicySet>>,
}

impl Local {
    pub fn get(&self, dir: Dir) -> Option<&Arc<PolicySet>> {
        match dir {
            Dir::Ingress => self.ingress.as_ref(),
            Dir::Egress => self.egress.as_ref(),
        }
    }
    fn slot(&mut self, dir: Dir) -> &mut Option<Arc<PolicySet>> {
        match dir {
            Dir::Ingress => &mut self.ingress,
            Dir::Egress => &mut self.egress,
        }
    }
}

/// One node's whole desired state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub node: String,
    pub pod_cidrs: Vec<Ipv4Net>,
    /// Every policy's fragment (a node holds the sets of every policy, so a pod that comes to
    /// the node needs elements only).
    pub policies: BTreeMap<Key, Arc<Frag>>,
    /// This node's pods, by address.
    pub local: BTreeMap<Ipv4Addr, Local>,
}

impl Desired {
    /// The policy-set chains in use, by name.
    pub fn chains(&self) -> BTreeMap<String, Arc<PolicySet>> {
        let mut out = BTreeMap::new();
        for l in self.local.values() {
            for s in [&l.ingress, &l.egress].into_iter().flatten() {
                if !out.contains_key(&s.name) {
                    out.insert(s.name.clone(), s.clone());
                }
            }
        }
        out
    }

    /// The policies behind a chain of this node (what a denial logged with the chain's name
    /// was denied by), or None for a chain it does not have.
    pub fn chain_policies(&self, chain: &str) -> Option<Vec<Key>> {
        self.local
            .values()
            .flat_map(|l| [&l.ingress, &l.egress])
            .flatten()
            .find(|s| s.name == chain)
            .map(|s| s.policies.clone())
    }

    /// The nft rules of a policy-set chain before its log and drop: its policies' rules in order.
    pub fn chain_lines(&self, set: &PolicySet) -> Vec<Line> {
        set.policies.iter().filter_map(|k| self.policies.get(k)).flat_map(|f| f.lines(set.dir)).collect()
    }
}

/// The stable id a policy's sets are named by: `p` and 16 hex digits of the FNV-1a of
/// `namespace/name`.
pub fn policy_id(key: &Key) -> String {
    format!("p{:016x}", weft_k8s::names::fnv1a(format!("{}/{}", key.0, key.1).as_bytes()))
}

/// A rule's set of one kind: `<policy id>-<i|e><rule index>-<pods|cidrs|ports|named>`.
pub fn set_name(id: &str, dir: Dir, rule: usize, kind: SetKind) -> String {
    let d = if dir == Dir::Ingress { 'i' } else { 'e' };
    format!("{id}-{d}{rule}-{}", kind.suffix())
}

/// The chain of a set of policies in a direction: `in-` or `eg-` and 16 hex digits of the
/// FNV-1a of the sorted `namespace/name` lines. The same set has the same name on every node
/// and across restarts; the name is also the NFLOG prefix of the chain's denials (map it back
/// with [`Desired::chain_policies`]).
pub fn chain_name(dir: Dir, policies: &[Key]) -> String {
    let mut keys: Vec<&Key> = policies.iter().collect();
    keys.sort();
    keys.dedup();
    let text: String = keys.iter().map(|k| format!("{}/{}\n", k.0, k.1)).collect();
    let prefix = if dir == Dir::Ingress { "in" } else { "eg" };
    format!("{prefix}-{:016x}", weft_k8s::names::fnv1a(text.as_bytes()))
}

/// The direction a chain name is for (None: not a policy-set chain).
pub fn chain_dir(chain: &str) -> Option<Dir> {
    let (prefix, hash) = chain.split_once('-')?;
    if hash.len() != 16 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    match prefix {
        "in" => Some(Dir::Ingress),
        "eg" => Some(Dir::Egress),
        _ => None,
    }
}

/// Compiles everything.
pub fn compile(world: &World, node: &NodeInfo) -> Desired {
    let mut sets = Interner::default();
    let policies = world.policies.iter().map(|(k, p)| (k.clone(), Arc::new(compile_policy(p, world, node)))).collect();
    let mut local = BTreeMap::new();
    for pod in world.pods_on(&node.name) {
        local.entry(pod.ip).or_insert_with(|| local_for(pod.ip, world, node, &mut sets));
    }
    Desired { node: node.name.clone(), pod_cidrs: node.pod_cidrs.clone(), policies, local }
}

/// `prev` brought up to date with `changes` (everything compiled again when there is no
/// `prev`, a relist happened or the node is another one). Fragments nothing touched are the
/// same `Arc`s, so the applier skips them by pointer.
pub fn recompile(prev: Option<&Desired>, world: &World, node: &NodeInfo, changes: &Changes) -> Desired {
    let prev = match prev {
        Some(p) if !changes.all && p.node == node.name => p,
        _ => return compile(world, node),
    };
    let mut d = prev.clone();
    d.pod_cidrs = node.pod_cidrs.clone();
    let mut sets = Interner::default();
    // Policies compiled whole: those that changed, and those a namespace's labels decide.
    let mut whole: BTreeSet<Key> = changes.policies.clone();
    if !changes.namespaces.is_empty() {
        whole.extend(world.policies.values().filter(|p| p.reads_namespace_labels()).map(|p| p.key.clone()));
    }
    for key in &whole {
        match world.policies.get(key) {
            Some(p) => {
                let f = compile_policy(p, world, node);
                if d.policies.get(key).is_none_or(|old| **old != f) {
                    d.policies.insert(key.clone(), Arc::new(f));
                }
            }
            None => {
                d.policies.remove(key);
            }
        }
    }
    // Which of this node's pods a changed policy selects (its namespace's pods only).
    for key in &changes.policies {
        let policy = world.policies.get(key);
        let ips: BTreeSet<Ipv4Addr> = world.pods_on(&node.name).filter(|p| p.key.0 == key.0).map(|p| p.ip).collect();
        for ip in ips.into_iter().filter(|ip| !changes.ips.contains(ip)) {
            let locals: Vec<&Arc<PodInfo>> = world.pods_at(ip).filter(|p| p.node == node.name).collect();
            let Some(entry) = d.local.get_mut(&ip) else { continue };
            for dir in [Dir::Ingress, Dir::Egress] {
                let wants = policy.is_some_and(|p| p.rules(dir).is_some() && locals.iter().any(|pod| p.selects(pod)));
                let slot = entry.slot(dir);
                let has = slot.as_ref().is_some_and(|s| s.policies.binary_search(key).is_ok());
                if wants != has {
                    let mut keys: Vec<Key> = slot.as_ref().map(|s| s.policies.clone()).unwrap_or_default();
                    if wants {
                        keys.push(key.clone());
                    } else {
                        keys.retain(|k| k != key);
                    }
                    *slot = sets.get(dir, keys);
                }
            }
        }
    }
    // Pods that came, went or changed: their own chains, and their elements everywhere.
    for ip in &changes.ips {
        if world.pods_at(*ip).any(|p| p.node == node.name) {
            let l = local_for(*ip, world, node, &mut sets);
            d.local.insert(*ip, l);
        } else {
            d.local.remove(ip);
        }
    }
    if !changes.ips.is_empty() {
        for (key, frag) in d.policies.iter_mut() {
            if whole.contains(key) {
                continue;
            }
            if let Some(p) = world.policies.get(key) {
                patch_addresses(frag, p, &changes.ips, world, node);
            }
        }
    }
    d
}

/// Equal policy sets share one `Arc`.
#[derive(Default)]
struct Interner(HashMap<(Dir, Vec<Key>), Arc<PolicySet>>);

impl Interner {
    fn get(&mut self, dir: Dir, keys: Vec<Key>) -> Option<Arc<PolicySet>> {
        if keys.is_empty() {
            return None;
        }
        let set = PolicySet::new(dir, keys);
        Some(self.0.entry((dir, set.policies.clone())).or_insert_with(|| Arc::new(set)).clone())
    }
}

/// The chains of this node's pod(s) at `ip`: the policies of its namespace that select it, per
/// direction they isolate.
fn local_for(ip: Ipv4Addr, world: &World, node: &NodeInfo, sets: &mut Interner) -> Local {
    let pods: Vec<&Arc<PodInfo>> = world.pods_at(ip).filter(|p| p.node == node.name).collect();
    let mut l = Local::default();
    for dir in [Dir::Ingress, Dir::Egress] {
        let namespaces: BTreeSet<&str> = pods.iter().map(|p| p.key.0.as_str()).collect();
        let keys: Vec<Key> = namespaces
            .into_iter()
            .flat_map(|ns| world.policies_in(ns))
            .filter(|p| p.rules(dir).is_some() && pods.iter().any(|pod| p.selects(pod)))
            .map(|p| p.key.clone())
            .collect();
        *l.slot(dir) = sets.get(dir, keys);
    }
    l
}

/// Coalesces ranges that overlap or touch (interval sets refuse overlaps).
fn merge<T: Ord + Copy>(mut v: Vec<(T, T)>, next: impl Fn(T) -> Option<T>) -> Vec<(T, T)> {
    v.sort();
    let mut out: Vec<(T, T)> = vec![];
    for (a, b) in v {
        match out.last_mut() {
            Some(last) if next(last.1).is_none_or(|n| a <= n) => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

fn merge_addresses(v: Vec<(Ipv4Addr, Ipv4Addr)>) -> Vec<(Ipv4Addr, Ipv4Addr)> {
    merge(v, |ip| u32::from(ip).checked_add(1).map(Ipv4Addr::from))
}

fn merge_ports(v: Vec<PortRange>) -> Vec<PortRange> {
    let mut by_proto: BTreeMap<u8, Vec<(u16, u16)>> = BTreeMap::new();
    for r in v {
        by_proto.entry(r.proto).or_default().push((r.first, r.last));
    }
    by_proto
        .into_iter()
        .flat_map(|(proto, rs)| {
            merge(rs, |p: u16| p.checked_add(1)).into_iter().map(move |(first, last)| PortRange { proto, first, last })
        })
        .collect()
}

/// The named-port elements the pod gives a rule: for ingress when it is a pod of this node the
/// policy selects (the destination), for egress when it is one of the rule's peers.
fn named_of<'a>(
    pod: &'a PodInfo,
    p: &Policy,
    rule: &'a Rule,
    dir: Dir,
    world: &World,
    node: &NodeInfo,
) -> impl Iterator<Item = Named> + 'a {
    let relevant = match dir {
        Dir::Ingress => pod.node == node.name && p.selects(pod),
        Dir::Egress => rule.any_peer(pod, world.namespace_labels(&pod.key.0)),
    };
    rule.ports.iter().flatten().filter(move |_| relevant).flat_map(move |m| {
        let (proto, name) = match m {
            PortMatch::Named { protocol, name } => (*protocol, name.as_str()),
            PortMatch::Range { .. } => (weft_k8s::netpol::Protocol::Tcp, ""),
        };
        let numbers: Vec<u16> = if name.is_empty() { vec![] } else { pod.named_port(name, proto).collect() };
        numbers.into_iter().map(move |n| (pod.ip, proto.number(), n))
    })
}

/// Compiles one policy.
pub fn compile_policy(p: &Policy, world: &World, node: &NodeInfo) -> Frag {
    let rules = |dir: Dir| -> Option<Vec<RuleFrag>> {
        p.rules(dir).map(|rules| rules.iter().map(|r| compile_rule(p, r, dir, world, node)).collect())
    };
    Frag { id: policy_id(&p.key), ingress: rules(Dir::Ingress), egress: rules(Dir::Egress) }
}

fn compile_rule(p: &Policy, r: &Rule, dir: Dir, world: &World, node: &NodeInfo) -> RuleFrag {
    let peers = r.peers.as_ref().map(|peers| {
        let has_pods = peers.iter().any(|x| matches!(x, Peer::Pods(_)));
        let blocks: Vec<(Ipv4Addr, Ipv4Addr)> = peers
            .iter()
            .flat_map(|x| match x {
                Peer::Block(b) => b.ranges.clone(),
                Peer::Pods(_) => vec![],
            })
            .collect();
        let has_blocks = peers.iter().any(|x| matches!(x, Peer::Block(_)));
        PeerSets {
            pods: has_pods.then(|| {
                let candidates = world.candidate_pods(r);
                candidates
                    .into_iter()
                    .filter(|pod| r.pod_peer(pod, world.namespace_labels(&pod.key.0)))
                    .map(|pod| pod.ip)
                    .collect()
            }),
            cidrs: has_blocks.then(|| merge_addresses(blocks)),
        }
    });
    let ports = r.ports.as_ref().map(|ports| {
        let numbered: Vec<PortRange> = ports
            .iter()
            .filter_map(|m| match m {
                PortMatch::Range { protocol, first, last } => {
                    Some(PortRange { proto: protocol.number(), first: *first, last: *last })
                }
                PortMatch::Named { .. } => None,
            })
            .collect();
        let has_numbered = ports.iter().any(|m| matches!(m, PortMatch::Range { .. }));
        let has_named = ports.iter().any(|m| matches!(m, PortMatch::Named { .. }));
        PortSets {
            numbered: has_numbered.then(|| merge_ports(numbered)),
            named: has_named.then(|| {
                named_candidates(p, r, dir, world, node)
                    .into_iter()
                    .flat_map(|pod| named_of(pod, p, r, dir, world, node).collect::<Vec<_>>())
                    .collect()
            }),
        }
    });
    RuleFrag { peers, ports }
}

/// The pods whose named ports a rule may take: for ingress this node's pods of the policy's
/// namespace; for egress every pod when the rule names no peers, else its pod peers' namespaces
/// and the pods inside its ipBlocks.
fn named_candidates<'a>(p: &Policy, r: &'a Rule, dir: Dir, world: &'a World, node: &NodeInfo) -> Vec<&'a PodInfo> {
    let mut out: Vec<&PodInfo> = match (dir, &r.peers) {
        (Dir::Ingress, _) => world.pods_on(&node.name).filter(|pod| pod.key.0 == p.key.0).map(|a| &**a).collect(),
        (Dir::Egress, None) => world.pods.values().map(|a| &**a).collect(),
        (Dir::Egress, Some(peers)) => {
            let mut v: Vec<&PodInfo> = world.candidate_pods(r).into_iter().map(|a| &**a).collect();
            for peer in peers {
                if let Peer::Block(b) = peer {
                    for (first, last) in &b.ranges {
                        v.extend(world.pods_between(*first, *last).map(|a| &**a));
                    }
                }
            }
            v
        }
    };
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out.dedup_by(|a, b| a.key == b.key);
    out
}

/// Brings the elements keyed by `ips` in a fragment up to date (its pod peers, its named
/// ports); the fragment is copied only if something changed.
fn patch_addresses(frag: &mut Arc<Frag>, p: &Policy, ips: &BTreeSet<Ipv4Addr>, world: &World, node: &NodeInfo) {
    for dir in [Dir::Ingress, Dir::Egress] {
        let Some(rules) = p.rules(dir) else { continue };
        for (i, rule) in rules.iter().enumerate() {
            for ip in ips {
                let pods: Vec<&Arc<PodInfo>> = world.pods_at(*ip).collect();
                let Some(rf) = frag.rules(dir).and_then(|r| r.get(i)) else { continue };
                if let Some(set) = rf.peers.as_ref().and_then(|ps| ps.pods.as_ref()) {
                    let want = pods.iter().any(|pod| rule.pod_peer(pod, world.namespace_labels(&pod.key.0)));
                    if want != set.contains(ip) {
                        let rf = &mut Arc::make_mut(frag).rules_mut(dir).expect("the rules exist")[i];
                        let set = rf.peers.as_mut().and_then(|ps| ps.pods.as_mut()).expect("the set exists");
                        if want {
                            set.insert(*ip);
                        } else {
                            set.remove(ip);
                        }
                    }
                }
                let Some(rf) = frag.rules(dir).and_then(|r| r.get(i)) else { continue };
                if let Some(set) = rf.ports.as_ref().and_then(|ps| ps.named.as_ref()) {
                    let want: BTreeSet<Named> = pods
                        .iter()
                        .flat_map(|pod| named_of(pod, p, rule, dir, world, node).collect::<Vec<_>>())
                        .collect();
                    let have: BTreeSet<Named> = set.range((*ip, 0, 0)..=(*ip, u8::MAX, u16::MAX)).copied().collect();
                    if want != have {
                        let rf = &mut Arc::make_mut(frag).rules_mut(dir).expect("the rules exist")[i];
                        let set = rf.ports.as_mut().and_then(|ps| ps.named.as_mut()).expect("the set exists");
                        for e in &have {
                            set.remove(e);
                        }
                        set.extend(want);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_when_they_overlap_or_touch() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let got = merge_addresses(vec![
            (ip("10.0.0.5"), ip("10.0.0.5")),
            (ip("10.0.0.0"), ip("10.0.0.4")),
            (ip("10.0.1.0"), ip("10.0.1.9")),
            (ip("10.0.1.5"), ip("10.0.2.0")),
            (ip("200.0.0.0"), ip("255.255.255.255")),
            (ip("255.0.0.0"), ip("255.255.255.255")),
        ]);
        assert_eq!(
            got,
            vec![
                (ip("10.0.0.0"), ip("10.0.0.5")),
                (ip("10.0.1.0"), ip("10.0.2.0")),
                (ip("200.0.0.0"), ip("255.255.255.255"))
            ]
        );
        let p = |proto, first, last| PortRange { proto, first, last };
        assert_eq!(
            merge_ports(vec![
                p(6, 80, 80),
                p(17, 80, 80),
                p(6, 79, 81),
                p(6, 82, 90),
                p(6, 100, 100),
                p(6, 65535, 65535)
            ]),
            vec![p(6, 79, 90), p(6, 100, 100), p(6, 65535, 65535), p(17, 80, 80)]
        );
    }

    #[test]
    fn chain_names_are_stable_and_say_their_direction() {
        let a = ("x".to_string(), "a".to_string());
        let b = ("y".to_string(), "b".to_string());
        let n = chain_name(Dir::Ingress, &[a.clone(), b.clone()]);
        assert_eq!(n, chain_name(Dir::Ingress, &[b.clone(), a.clone(), a.clone()]), "order and repeats do not matter");
        assert_ne!(n, chain_name(Dir::Egress, &[a.clone(), b.clone()]));
        assert_ne!(n, chain_name(Dir::Ingress, std::slice::from_ref(&a)));
        assert!(n.starts_with("in-") && n.len() == 19, "{n}");
        assert_eq!(chain_dir(&n), Some(Dir::Ingress));
        assert_eq!(chain_dir(&chain_name(Dir::Egress, &[a])), Some(Dir::Egress));
        assert_eq!(chain_dir("forward"), None);
        assert_eq!(chain_dir("in-xyz"), None);
    }
}
