//! The rule compiler: Services and EndpointSlices in, the desired nftables state of one node out.
//! Pure (no I/O), so every Service feature is unit-tested without root.
//!
//! Shape (table `ip weft-proxy`): a Service port costs map elements only, never a chain or a
//! set of its own. The verdict map `services` (key `daddr . l4proto . dport`: ClusterIPs,
//! external IPs, LoadBalancer IPs) and `nodeports` (key `l4proto . dport`) send a packet to a
//! shared chain chosen by how many endpoints the Service has and how it masquerades
//! (`vip-cluster-random-tcp-3`, `np-masq-random-udp-2`, ...); that chain DNATs through the map
//! `backends-<proto>` keyed by `daddr . l4proto . dport . numgen random mod N` (or `jhash ip
//! saddr mod N` for ClientIP affinity). So the per-packet cost is two map lookups whatever the number
//! of Services, a full sync is one batch of elements (no per-Service objects for the kernel to
//! create), and a change to one Service is a few element adds and deletes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

pub const MASQ_MARK: u32 = 0x4000;

/// What the node needs to know about itself.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub name: String,
    /// The cluster's pod network: traffic to a ClusterIP from outside it is masqueraded.
    pub cluster_cidr: Ipv4Net,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    pub ip: Ipv4Addr,
    pub port: u16,
}

pub type SvcKey = (Ipv4Addr, String, u16);
pub type PortKey = (String, u16);

/// What one Service programs: its share of every map and set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fragment {
    /// `vip . proto . port` -> the shared chain that picks its endpoint.
    pub services: Vec<(SvcKey, String)>,
    /// `proto . port` -> the shared chain (node ports).
    pub nodeports: Vec<(PortKey, String)>,
    /// `vip . proto . port . slot` -> endpoint.
    pub backends: Vec<((SvcKey, u32), Backend)>,
    /// `proto . port . slot` -> endpoint (node ports).
    pub np_backends: Vec<((PortKey, u32), Backend)>,
    /// Endpoint IPs (for hairpin masquerade: a pod reaching itself through its Service).
    pub hairpin: BTreeSet<Ipv4Addr>,
    /// VIPs and node ports with no endpoint: refused (TCP reset / ICMP unreachable).
    pub reject: Vec<SvcKey>,
    pub reject_nodeports: Vec<PortKey>,
    /// LoadBalancer entries with `loadBalancerSourceRanges`: only the ranges in
    /// `firewall_allow` may reach them, the rest is dropped.
    pub firewall: Vec<SvcKey>,
    pub firewall_allow: Vec<(SvcKey, Ipv4Net)>,
}

/// A node's whole programme: a fragment per Service (so a change is diffed per Service, at a cost
/// that does not grow with the number of Services) and the shared chains in use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub fragments: BTreeMap<(String, String), Arc<Fragment>>,
    pub chains: Chains,
    /// How many Services each hairpin address belongs to (an address leaves the set at zero).
    pub hairpin_counts: BTreeMap<Ipv4Addr, u32>,
    /// What each fragment was compiled from (resourceVersions), so an unchanged Service keeps its
    /// fragment (the same `Arc`) and costs nothing to diff.
    pub inputs: BTreeMap<(String, String), u64>,
}

/// Every fragment merged, for reading a programme as a whole (tests, diagnostics).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Flat {
    pub services: BTreeMap<SvcKey, String>,
    pub nodeports: BTreeMap<PortKey, String>,
    pub backends: BTreeMap<(SvcKey, u32), Backend>,
    pub np_backends: BTreeMap<(PortKey, u32), Backend>,
    pub chains: Chains,
    pub hairpin: BTreeSet<Ipv4Addr>,
    pub reject: BTreeSet<SvcKey>,
    pub reject_nodeports: BTreeSet<PortKey>,
    pub firewall: BTreeSet<SvcKey>,
    pub firewall_allow: BTreeSet<(SvcKey, Ipv4Net)>,
}

impl Desired {
    pub fn flat(&self) -> Flat {
        let mut f = Flat { chains: self.chains.clone(), ..Default::default() };
        for fr in self.fragments.values() {
            f.services.extend(fr.services.iter().cloned());
            f.nodeports.extend(fr.nodeports.iter().cloned());
            f.backends.extend(fr.backends.iter().cloned());
            f.np_backends.extend(fr.np_backends.iter().cloned());
            f.hairpin.extend(fr.hairpin.iter().copied());
            f.reject.extend(fr.reject.iter().cloned());
            f.reject_nodeports.extend(fr.reject_nodeports.iter().cloned());
            f.firewall.extend(fr.firewall.iter().cloned());
            f.firewall_allow.extend(fr.firewall_allow.iter().cloned());
        }
        f
    }
}

#[derive(Clone, Debug)]
struct Ep {
    ip: Ipv4Addr,
    port: u16,
    ready: bool,
    serving: bool,
    terminating: bool,
    node: Option<String>,
}

/// Endpoints of one Service port (by the port's name and protocol) from the Service's slices.
fn endpoints_for(slices: &[&EndpointSlice], port_name: &str, proto: &str) -> Vec<Ep> {
    let mut out = vec![];
    for s in slices {
        if s.address_type != "IPv4" {
            continue;
        }
        let Some(p) =
            s.ports.iter().flatten().find(|p| {
                p.name.as_deref().unwrap_or("") == port_name && p.protocol.as_deref().unwrap_or("TCP") == proto
            })
        else {
            continue;
        };
        let Some(port) = p.port.and_then(|p| u16::try_from(p).ok()) else { continue };
        for e in s.endpoints.iter().flatten() {
            let c = weft_k8s::endpoints::conditions(e);
            for a in &e.addresses {
                if let Ok(ip) = a.parse() {
                    out.push(Ep {
                        ip,
                        port,
                        ready: c.ready,
                        serving: c.serving,
                        terminating: c.terminating,
                        node: e.node_name.clone(),
                    });
                }
            }
        }
    }
    out.sort_by_key(|e| (e.ip, e.port));
    out.dedup_by_key(|e| (e.ip, e.port));
    out
}

/// The endpoints traffic may go to: ready ones; if none, serving terminating ones (so
/// connections drain); optionally only this node's.
fn usable(eps: &[Ep], only_node: Option<&str>) -> Vec<Backend> {
    let local = |e: &&Ep| only_node.is_none_or(|n| e.node.as_deref() == Some(n));
    let ready: Vec<Backend> = eps
        .iter()
        .filter(local)
        .filter(|e| e.ready && !e.terminating)
        .map(|e| Backend { ip: e.ip, port: e.port })
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    eps.iter()
        .filter(local)
        .filter(|e| e.serving && e.terminating)
        .map(|e| Backend { ip: e.ip, port: e.port })
        .collect()
}

/// How a chain treats the source: `cluster` masquerades traffic from outside the pod network
/// (ClusterIP), `masq` always (external traffic with policy Cluster), `plain` never (policy Local).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Masq {
    Cluster,
    Always,
    Never,
}

/// The shared chains in use, by name.
pub type Chains = BTreeMap<String, SharedChain>;

/// A shared chain, typed: the applier turns it into nf_tables expressions; [`SharedChain::rules`]
/// shows it as nft text (tests, diagnostics). It masquerades as `masq` says (through the
/// `mark-masq` chain), then DNATs through the endpoint map of its protocol, picking one of
/// `endpoints` slots at random or by a hash of the client address (`affinity`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedChain {
    pub masq: Masq,
    /// The pod network (`Masq::Cluster` masquerades sources outside it).
    pub cluster_cidr: Ipv4Net,
    pub affinity: bool,
    /// Keyed by `l4proto . dport` (the node-port maps) rather than `daddr . l4proto . dport`.
    pub nodeport: bool,
    /// `tcp`, `udp` or `sctp`.
    pub proto: String,
    pub endpoints: u32,
}

/// The seed of the ClientIP-affinity hash (any constant: every node must pick alike).
pub const AFFINITY_SEED: u32 = 0x5eed;

impl SharedChain {
    pub fn name(&self) -> String {
        let m = match self.masq {
            Masq::Cluster => "cluster",
            Masq::Always => "masq",
            Masq::Never => "plain",
        };
        let how = if self.affinity { "affinity" } else { "random" };
        let key = if self.nodeport { "np" } else { "vip" };
        format!("{key}-{m}-{how}-{}-{}", self.proto, self.endpoints)
    }

    /// The endpoint map this chain looks its endpoint up in.
    pub fn map(&self) -> String {
        format!("{}backends-{}", if self.nodeport { "np-" } else { "" }, self.proto)
    }

    /// The chain's rules in nft syntax.
    pub fn rules(&self) -> Vec<String> {
        let (cidr, n, proto, map) = (self.cluster_cidr, self.endpoints, &self.proto, self.map());
        let mut rules = vec![];
        match self.masq {
            Masq::Cluster => rules.push(format!("ip saddr != {cidr} jump mark-masq")),
            Masq::Always => rules.push("jump mark-masq".to_string()),
            Masq::Never => {}
        }
        let pick = if self.affinity {
            format!("jhash ip saddr mod {n} seed {AFFINITY_SEED:#x}")
        } else {
            format!("numgen random mod {n}")
        };
        let daddr = if self.nodeport { "" } else { "ip daddr . " };
        rules.push(format!("meta l4proto {proto} dnat ip to {daddr}meta l4proto . {proto} dport . {pick} map @{map}"));
        rules
    }
}

/// What a shared chain is for, apart from its endpoint count.
#[derive(Clone, Copy)]
struct ChainKind<'a> {
    cidr: Ipv4Net,
    masq: Masq,
    affinity: bool,
    nodeport: bool,
    proto: &'a str,
}

/// The shared chain for (kind, N). One that is new is made together with its neighbours for
/// N-1 and N+1, so a Service scaled by one pod from where it settled changes map elements only,
/// without a structural transaction.
fn pick_chain(chains: &mut Chains, kind: ChainKind, n: usize) -> String {
    let before = chains.len();
    let name = make_chain(chains, kind, n);
    if chains.len() > before {
        for k in [n.saturating_sub(1), n + 1] {
            if k > 0 {
                make_chain(chains, kind, k);
            }
        }
    }
    name
}

fn make_chain(chains: &mut Chains, kind: ChainKind, n: usize) -> String {
    let ChainKind { cidr, masq, affinity, nodeport, proto } = kind;
    let chain = SharedChain {
        masq,
        cluster_cidr: cidr,
        affinity,
        nodeport,
        proto: proto.to_string(),
        endpoints: u32::try_from(n).unwrap_or(u32::MAX),
    };
    let name = chain.name();
    chains.entry(name.clone()).or_insert(chain);
    name
}

/// A Service's place in line for an address: older first (creation time), then namespace and
/// name, so every node decides a conflict the same way and the Service that was there first
/// keeps its traffic.
pub type Rank = (i64, (String, String));

fn rank_of(svc: &Service) -> Rank {
    let created = svc.metadata.creation_timestamp.as_ref().map(|t| t.0.as_second()).unwrap_or(i64::MAX);
    (created, (svc.metadata.namespace.clone().unwrap_or_default(), svc.metadata.name.clone().unwrap_or_default()))
}

/// The entries a Service asks for, as the compiler would program them: every
/// (address, protocol, port) of its ClusterIP, external IPs and LoadBalancer IPs, and its node
/// ports. Duplicates within the Service are removed.
pub fn wanted(svc: &Service) -> (Vec<SvcKey>, Vec<PortKey>) {
    let (mut vips, mut nps) = (vec![], vec![]);
    let Some(spec) = svc.spec.as_ref() else { return (vips, nps) };
    let Some((vip, external_ips)) = addresses(svc) else { return (vips, nps) };
    for p in spec.ports.iter().flatten() {
        let proto = p.protocol.as_deref().unwrap_or("TCP").to_lowercase();
        let Ok(port) = u16::try_from(p.port) else { continue };
        for ip in std::iter::once(vip).chain(external_ips.iter().copied()) {
            vips.push((ip, proto.clone(), port));
        }
        if let Some(np) = p.node_port.and_then(|n| u16::try_from(n).ok()).filter(|n| *n > 0) {
            nps.push((proto.clone(), np));
        }
    }
    vips.sort();
    vips.dedup();
    nps.sort();
    nps.dedup();
    (vips, nps)
}

/// A Service's virtual IP and its external and LoadBalancer addresses (None: it has no virtual
/// IP: headless or ExternalName).
fn addresses(svc: &Service) -> Option<(Ipv4Addr, Vec<Ipv4Addr>)> {
    let spec = svc.spec.as_ref()?;
    let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
    let vip: Ipv4Addr = spec.cluster_ip.as_deref().and_then(|i| i.parse().ok()).filter(|_| ty != "ExternalName")?;
    let mut external_ips: Vec<Ipv4Addr> = spec.external_ips.iter().flatten().filter_map(|i| i.parse().ok()).collect();
    external_ips.extend(lb_ips(svc));
    Some((vip, external_ips))
}

/// A LoadBalancer Service's addresses (its status).
fn lb_ips(svc: &Service) -> Vec<Ipv4Addr> {
    if svc.spec.as_ref().and_then(|s| s.type_.as_deref()) != Some("LoadBalancer") {
        return vec![];
    }
    let ingress = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|l| l.ingress.as_ref());
    ingress.into_iter().flatten().filter_map(|i| i.ip.as_deref()?.parse::<Ipv4Addr>().ok()).collect()
}

/// `loadBalancerSourceRanges` (or, when empty, the older annotation), IPv4 ranges only; None
/// when the Service sets none (its LoadBalancer addresses are open to all).
fn source_ranges(svc: &Service) -> Option<Vec<Ipv4Net>> {
    let field = svc.spec.as_ref().and_then(|s| s.load_balancer_source_ranges.clone()).unwrap_or_default();
    let ranges: Vec<String> = if field.is_empty() {
        let ann = svc.metadata.annotations.as_ref()?.get("service.beta.kubernetes.io/load-balancer-source-ranges")?;
        ann.split(',').map(|r| r.trim().to_string()).filter(|r| !r.is_empty()).collect()
    } else {
        field
    };
    if ranges.is_empty() {
        return None;
    }
    Some(ranges.iter().filter_map(|r| r.trim().parse::<Ipv4Net>().ok()).map(|n| n.trunc()).collect())
}

/// Who owns each (address, protocol, port) and node port when Services ask for the same one:
/// the oldest claimant ([`Rank`]). Two Services must never both program an entry (the kernel
/// refuses the whole batch: one Service would take every Service down), so the compiler gives
/// each entry to its owner alone and the others are reported. Kept up to date per changed
/// Service, at a cost that follows the change.
#[derive(Clone, Debug, Default)]
pub struct Claims {
    vips: HashMap<SvcKey, BTreeSet<Rank>>,
    nodeports: HashMap<PortKey, BTreeSet<Rank>>,
    by_service: HashMap<(String, String), Claim>,
}

/// What one Service asks for: its rank and entries.
type Claim = (Rank, Vec<SvcKey>, Vec<PortKey>);

/// An entry a Service asked for and did not get, and who has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub service: (String, String),
    pub entry: String,
    pub owner: (String, String),
}

impl Claims {
    pub fn new(services: &[Service]) -> Claims {
        let mut c = Claims::default();
        for s in services {
            c.set(&rank_of(s).1.clone(), Some(s));
        }
        c
    }

    /// Records what `key`'s Service asks for now (None: it is gone). Returns the other Services
    /// whose share changed (they won or lost an entry): they need recompiling.
    pub fn set(&mut self, key: &(String, String), svc: Option<&Service>) -> BTreeSet<(String, String)> {
        let mut touched = BTreeSet::new();
        let old = self.by_service.remove(key);
        let (old_vips, old_nps) = old.as_ref().map(|(_, v, n)| (v.as_slice(), n.as_slice())).unwrap_or((&[], &[]));
        let old_rank = old.as_ref().map(|(r, _, _)| r.clone());
        let (new_vips, new_nps) = svc.map(wanted).unwrap_or_default();
        let new_rank = svc.map(rank_of);
        fn move_claims<K: std::hash::Hash + Ord + Clone>(
            map: &mut HashMap<K, BTreeSet<Rank>>,
            old: (&[K], Option<&Rank>),
            new: (&[K], Option<&Rank>),
            touched: &mut BTreeSet<(String, String)>,
        ) {
            let first = |map: &HashMap<K, BTreeSet<Rank>>, k: &K| map.get(k).and_then(|s| s.first().cloned());
            let mut keys: Vec<&K> = old.0.iter().chain(new.0.iter()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let before = first(map, k);
                if let (true, Some(r)) = (old.0.contains(k), old.1)
                    && let Some(s) = map.get_mut(k)
                {
                    s.remove(r);
                    if s.is_empty() {
                        map.remove(k);
                    }
                }
                if let (true, Some(r)) = (new.0.contains(k), new.1) {
                    map.entry(k.clone()).or_default().insert(r.clone());
                }
                let after = first(map, k);
                if before != after {
                    touched.extend(before.map(|r| r.1));
                    touched.extend(after.map(|r| r.1));
                }
            }
        }
        move_claims(&mut self.vips, (old_vips, old_rank.as_ref()), (&new_vips, new_rank.as_ref()), &mut touched);
        move_claims(&mut self.nodeports, (old_nps, old_rank.as_ref()), (&new_nps, new_rank.as_ref()), &mut touched);
        if let Some(r) = new_rank {
            self.by_service.insert(key.clone(), (r, new_vips, new_nps));
        }
        touched.remove(key);
        touched
    }

    fn owner_of_vip(&self, k: &SvcKey) -> Option<&(String, String)> {
        self.vips.get(k).and_then(|s| s.first()).map(|r| &r.1)
    }
    fn owner_of_nodeport(&self, k: &PortKey) -> Option<&(String, String)> {
        self.nodeports.get(k).and_then(|s| s.first()).map(|r| &r.1)
    }
    /// Whether `svc` may program `k` (an entry nobody claimed, as in a Service compiled
    /// without claims, is free).
    fn owns_vip(&self, svc: &(String, String), k: &SvcKey) -> bool {
        self.owner_of_vip(k).is_none_or(|o| o == svc)
    }
    fn owns_nodeport(&self, svc: &(String, String), k: &PortKey) -> bool {
        self.owner_of_nodeport(k).is_none_or(|o| o == svc)
    }

    /// The entries `svc` asked for and another Service owns.
    pub fn lost_by(&self, svc: &(String, String)) -> Vec<Conflict> {
        let Some((_, vips, nps)) = self.by_service.get(svc) else { return vec![] };
        let mut out = vec![];
        for k in vips {
            if let Some(o) = self.owner_of_vip(k).filter(|o| *o != svc) {
                out.push(Conflict {
                    service: svc.clone(),
                    entry: format!("{}:{}/{}", k.0, k.2, k.1),
                    owner: o.clone(),
                });
            }
        }
        for k in nps {
            if let Some(o) = self.owner_of_nodeport(k).filter(|o| *o != svc) {
                out.push(Conflict {
                    service: svc.clone(),
                    entry: format!("nodePort {}/{}", k.1, k.0),
                    owner: o.clone(),
                });
            }
        }
        out
    }

    /// Every conflict, in a stable order.
    pub fn conflicts(&self) -> Vec<Conflict> {
        let mut keys: Vec<&(String, String)> = self.by_service.keys().collect();
        keys.sort();
        keys.into_iter().flat_map(|k| self.lost_by(k)).collect()
    }

    /// A digest of what `svc` lost, folded into its fragment's fingerprint: a Service whose
    /// objects did not change still recompiles when it wins or loses an entry.
    fn lost_digest(&self, svc: &(String, String)) -> u64 {
        use std::hash::BuildHasher;
        let state = std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default();
        self.lost_by(svc).iter().map(|c| state.hash_one(&c.entry)).fold(0u64, u64::wrapping_add)
    }
}

/// Compiles every Service for `node`.
pub fn compile(services: &[Service], slices: &[EndpointSlice], node: &NodeInfo) -> Desired {
    compile_from(None, services, slices, node, &Claims::new(services))
}

/// Compiles every Service for `node`, reusing the fragments of `prev` whose Service and slices
/// have the same resourceVersions and lost the same entries to other Services (`claims`, made
/// from the same `services`): the work of a change follows the change.
pub fn compile_from(
    prev: Option<&Desired>,
    services: &[Service],
    slices: &[EndpointSlice],
    node: &NodeInfo,
    claims: &Claims,
) -> Desired {
    let mut d = Desired::default();
    if let Some(p) = prev {
        // Counts carry over; only Services that change adjust them below.
        d.chains = p.chains.clone();
        d.hairpin_counts = p.hairpin_counts.clone();
    }
    let uncount = |counts: &mut BTreeMap<Ipv4Addr, u32>, f: &Fragment| {
        for ip in &f.hairpin {
            if let Some(c) = counts.get_mut(ip) {
                *c -= 1;
                if *c == 0 {
                    counts.remove(ip);
                }
            }
        }
    };
    let by_svc = weft_k8s::slices::by_service(slices);
    for svc in services {
        let (ns, name) = (svc.metadata.namespace.as_deref().unwrap_or(""), svc.metadata.name.as_deref().unwrap_or(""));
        let slices: &[&EndpointSlice] = by_svc.get(&(ns, name)).map(Vec::as_slice).unwrap_or(&[]);
        let key = (ns.to_string(), name.to_string());
        let input = fingerprint(svc, slices, claims.lost_digest(&key));
        let old = prev.and_then(|p| p.fragments.get(&key));
        if let (Some(p), Some(i), Some(f)) = (prev, input, old)
            && p.inputs.get(&key) == Some(&i)
        {
            d.inputs.insert(key.clone(), i);
            d.fragments.insert(key, f.clone());
            continue;
        }
        if let Some(f) = old {
            uncount(&mut d.hairpin_counts, f);
        }
        if let Some(i) = input {
            d.inputs.insert(key.clone(), i);
        }
        if let Some(f) = compile_service(svc, slices, node, &mut d.chains, claims) {
            for ip in &f.hairpin {
                *d.hairpin_counts.entry(*ip).or_default() += 1;
            }
            d.fragments.insert(key, Arc::new(f));
        }
    }
    // Services that are gone give their counts back.
    if let Some(p) = prev {
        for (k, f) in &p.fragments {
            if !d.fragments.contains_key(k) {
                uncount(&mut d.hairpin_counts, f);
            }
        }
    }
    d
}

/// What a change does to some Services' part of a programme: their fragments now (None: the
/// Service programs nothing now, or is gone) with what they were compiled from, the shared
/// chains that are new, and the new hairpin count of every address they touch (0: gone). It is
/// computed from the changed Services alone, so its cost does not grow with the cluster.
#[derive(Clone, Debug, Default)]
pub struct Patch {
    pub fragments: Vec<PatchedService>,
    pub new_chains: Chains,
    pub hairpin_counts: BTreeMap<Ipv4Addr, u32>,
}

/// One Service in a patch: its key, its fragment now and what it was compiled from.
pub type PatchedService = ((String, String), Option<Arc<Fragment>>, Option<u64>);

/// A Service whose objects changed: its key, the Service (None when deleted) and its slices.
pub type Changed<'a> = ((String, String), Option<&'a Service>, Vec<&'a EndpointSlice>);

/// Recompiles only `changed` on top of `prev` (left as it is). `claims` is the whole cluster's,
/// already updated with the changes; the Services whose share of a contested entry changed
/// ([`Claims::set`]) must be among `changed`.
pub fn compile_patch(prev: &Desired, changed: &[Changed<'_>], node: &NodeInfo, claims: &Claims) -> Patch {
    let mut chains = prev.chains.clone();
    let mut counts: BTreeMap<Ipv4Addr, u32> = BTreeMap::new();
    let count = |counts: &BTreeMap<Ipv4Addr, u32>, ip: &Ipv4Addr| {
        counts.get(ip).copied().unwrap_or_else(|| prev.hairpin_counts.get(ip).copied().unwrap_or(0))
    };
    let mut patch = Patch::default();
    for (key, svc, slices) in changed {
        let old = prev.fragments.get(key);
        let input = svc.and_then(|s| fingerprint(s, slices, claims.lost_digest(key)));
        if let (Some(i), Some(_)) = (input, old)
            && prev.inputs.get(key) == Some(&i)
        {
            continue;
        }
        let new = svc.and_then(|s| compile_service(s, slices, node, &mut chains, claims)).map(Arc::new);
        if let Some(f) = old {
            for ip in &f.hairpin {
                let c = count(&counts, ip).saturating_sub(1);
                counts.insert(*ip, c);
            }
        }
        if let Some(f) = &new {
            for ip in &f.hairpin {
                let c = count(&counts, ip) + 1;
                counts.insert(*ip, c);
            }
        }
        patch.fragments.push((key.clone(), new, input));
    }
    patch.new_chains = chains.into_iter().filter(|(n, _)| !prev.chains.contains_key(n)).collect();
    patch.hairpin_counts = counts;
    patch
}

impl Desired {
    /// Takes a patch in (after it was applied to the kernel).
    pub fn apply_patch(&mut self, p: &Patch) {
        for (k, f, i) in &p.fragments {
            match f {
                Some(f) => self.fragments.insert(k.clone(), f.clone()),
                None => self.fragments.remove(k),
            };
            match i {
                Some(i) => self.inputs.insert(k.clone(), *i),
                None => self.inputs.remove(k),
            };
        }
        self.chains.extend(p.new_chains.iter().map(|(k, v)| (k.clone(), v.clone())));
        for (ip, c) in &p.hairpin_counts {
            if *c == 0 {
                self.hairpin_counts.remove(ip);
            } else {
                self.hairpin_counts.insert(*ip, *c);
            }
        }
    }
}

/// A digest of the resourceVersions a fragment depends on (the Service's and each slice's, in
/// any order) and of the entries it lost to other Services, made without allocating: this runs
/// for every Service on every change. None when an object has no resourceVersion (never reused
/// then).
fn fingerprint(svc: &Service, slices: &[&EndpointSlice], lost: u64) -> Option<u64> {
    use std::hash::BuildHasher;
    let state = std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default();
    let mut sum = state.hash_one((svc.metadata.resource_version.as_deref()?, lost));
    for s in slices {
        sum = sum.wrapping_add(state.hash_one((s.metadata.name.as_deref(), s.metadata.resource_version.as_deref()?)));
    }
    Some(sum)
}

/// One Service's fragment (None for Services with no virtual IP: headless, ExternalName). Entries
/// another Service owns (`claims`), and repeats of its own, are left out.
pub fn compile_service(
    svc: &Service,
    slices: &[&EndpointSlice],
    node: &NodeInfo,
    chains: &mut Chains,
    claims: &Claims,
) -> Option<Fragment> {
    let spec = svc.spec.as_ref()?;
    let (vip, external_ips) = addresses(svc)?;
    let me = (svc.metadata.namespace.clone().unwrap_or_default(), svc.metadata.name.clone().unwrap_or_default());
    let cidr = node.cluster_cidr;
    let mut d = Fragment::default();
    let ext_local = spec.external_traffic_policy.as_deref() == Some("Local");
    let int_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let affinity = spec.session_affinity.as_deref() == Some("ClientIP");
    let mut taken: BTreeSet<SvcKey> = BTreeSet::new();
    let mut taken_np: BTreeSet<PortKey> = BTreeSet::new();
    let (lb, ranges) = (lb_ips(svc), source_ranges(svc));
    for p in spec.ports.iter().flatten() {
        let pname = p.name.clone().unwrap_or_default();
        let proto_uc = p.protocol.clone().unwrap_or("TCP".into());
        let proto = proto_uc.to_lowercase();
        let Ok(port) = u16::try_from(p.port) else { continue };
        let eps = endpoints_for(slices, &pname, &proto_uc);
        for e in &eps {
            d.hairpin.insert(e.ip);
        }
        let mut program = |d: &mut Fragment, chains: &mut Chains, key: SvcKey, backends: &[Backend], masq: Masq| {
            if !claims.owns_vip(&me, &key) || !taken.insert(key.clone()) {
                return;
            }
            if backends.is_empty() {
                d.reject.push(key);
                return;
            }
            let kind = ChainKind { cidr, masq, affinity, nodeport: false, proto: &proto };
            let chain = pick_chain(chains, kind, backends.len());
            for (i, b) in backends.iter().enumerate() {
                d.backends.push(((key.clone(), i as u32), *b));
            }
            d.services.push((key, chain));
        };
        let internal = usable(&eps, int_local.then_some(node.name.as_str()));
        program(&mut d, chains, (vip, proto.clone(), port), &internal, Masq::Cluster);
        // External traffic: node ports, external and LoadBalancer IPs.
        let (external, masq) =
            if ext_local { (usable(&eps, Some(&node.name)), Masq::Never) } else { (internal.clone(), Masq::Always) };
        for ip in &external_ips {
            program(&mut d, chains, (*ip, proto.clone(), port), &external, masq);
        }
        // Only the source ranges reach the LoadBalancer addresses this Service owns.
        if let Some(ranges) = &ranges {
            for ip in &lb {
                let key = (*ip, proto.clone(), port);
                if claims.owns_vip(&me, &key) && !d.firewall.contains(&key) {
                    d.firewall_allow.extend(ranges.iter().map(|r| (key.clone(), *r)));
                    d.firewall.push(key);
                }
            }
        }
        if let Some(np) = p.node_port.and_then(|n| u16::try_from(n).ok()).filter(|n| *n > 0) {
            let key = (proto.clone(), np);
            if !claims.owns_nodeport(&me, &key) || !taken_np.insert(key.clone()) {
                continue;
            }
            if external.is_empty() {
                d.reject_nodeports.push(key);
            } else {
                let kind = ChainKind { cidr, masq, affinity, nodeport: true, proto: &proto };
                let chain = pick_chain(chains, kind, external.len());
                for (i, b) in external.iter().enumerate() {
                    d.np_backends.push(((key.clone(), i as u32), *b));
                }
                d.nodeports.push((key, chain));
            }
        }
    }
    Some(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str) -> NodeInfo {
        NodeInfo { name: name.into(), cluster_cidr: "10.244.0.0/16".parse().unwrap() }
    }

    fn svc(name: &str, spec: serde_json::Value) -> Service {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec})).unwrap()
    }

    fn slice(svc: &str, eps: &[(&str, &str, bool, bool)], port: i32) -> EndpointSlice {
        let endpoints: Vec<_> = eps
            .iter()
            .map(|(ip, node, ready, term)| json!({"addresses": [ip], "nodeName": node, "conditions": {"ready": ready, "serving": true, "terminating": term}}))
            .collect();
        serde_json::from_value(json!({"metadata": {"name": format!("{svc}-x"), "namespace": "default", "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4", "endpoints": endpoints, "ports": [{"name": "", "protocol": "TCP", "port": port}]})).unwrap()
    }

    fn compile_flat(s: &[Service], e: &[EndpointSlice], n: &NodeInfo) -> Flat {
        compile(s, e, n).flat()
    }

    fn key(vip: &str, port: u16) -> SvcKey {
        (vip.parse().unwrap(), "tcp".into(), port)
    }

    fn backends_of(d: &Flat, k: &SvcKey) -> Vec<Backend> {
        d.backends.iter().filter(|((kk, _), _)| kk == k).map(|(_, b)| *b).collect()
    }

    #[test]
    fn cluster_ip_dnats_to_ready_endpoints_and_masquerades_outsiders() {
        let s = svc("web", json!({"clusterIP": "10.96.0.20", "ports": [{"port": 80, "protocol": "TCP"}]}));
        let e = slice(
            "web",
            &[("10.244.1.2", "n1", true, false), ("10.244.2.2", "n2", true, false), ("10.244.2.3", "n2", false, false)],
            8080,
        );
        let d = compile_flat(&[s], &[e], &node("n1"));
        let k = key("10.96.0.20", 80);
        assert_eq!(backends_of(&d, &k).len(), 2, "not-ready endpoints get no traffic");
        let chain = &d.chains[&d.services[&k]].rules();
        assert_eq!(chain[0], "ip saddr != 10.244.0.0/16 jump mark-masq");
        assert!(chain[1].contains("numgen random mod 2 map @backends-tcp"), "{chain:?}");
        assert!(d.hairpin.contains(&"10.244.1.2".parse().unwrap()));
        assert!(d.nodeports.is_empty());
    }

    #[test]
    fn services_share_chains_and_cost_only_elements() {
        let svcs: Vec<Service> = (0..50)
            .map(|i| {
                svc(
                    &format!("s{i}"),
                    json!({"clusterIP": format!("10.96.1.{i}"), "ports": [{"port": 80, "protocol": "TCP"}]}),
                )
            })
            .collect();
        let slices: Vec<EndpointSlice> = (0..50)
            .map(|i| {
                slice(&format!("s{i}"), &[("10.244.1.2", "n1", true, false), ("10.244.1.3", "n1", true, false)], 8080)
            })
            .collect();
        let d = compile_flat(&svcs, &slices, &node("n1"));
        // One shared chain for 50 two-endpoint Services, made with its 1- and 3-endpoint neighbours.
        assert_eq!(
            d.chains.keys().collect::<Vec<_>>(),
            ["vip-cluster-random-tcp-1", "vip-cluster-random-tcp-2", "vip-cluster-random-tcp-3"]
        );
        assert_eq!(d.backends.len(), 100);
    }

    #[test]
    fn no_endpoints_are_refused_and_terminating_ones_used_last() {
        let s = svc(
            "web",
            json!({"clusterIP": "10.96.0.20", "type": "NodePort", "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}]}),
        );
        let d = compile_flat(std::slice::from_ref(&s), &[], &node("n1"));
        assert!(d.reject.contains(&key("10.96.0.20", 80)));
        assert!(d.reject_nodeports.contains(&("tcp".into(), 30080)));
        assert!(d.services.is_empty());
        let e = slice("web", &[("10.244.1.2", "n1", false, true)], 8080);
        let d = compile_flat(&[s], &[e], &node("n1"));
        assert_eq!(
            backends_of(&d, &key("10.96.0.20", 80)).len(),
            1,
            "a terminating endpoint when nothing else is left"
        );
    }

    #[test]
    fn node_ports_masquerade_unless_external_policy_is_local() {
        let e = slice("web", &[("10.244.1.2", "n1", true, false), ("10.244.2.2", "n2", true, false)], 8080);
        let cluster = svc(
            "web",
            json!({"clusterIP": "10.96.0.20", "type": "NodePort", "externalTrafficPolicy": "Cluster", "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}]}),
        );
        let d = compile_flat(&[cluster], std::slice::from_ref(&e), &node("n1"));
        let c = &d.chains[&d.nodeports[&("tcp".into(), 30080)]].rules();
        assert_eq!(c[0], "jump mark-masq");
        assert!(c[1].contains("mod 2 map @np-backends-tcp"), "{c:?}");
        let local = svc(
            "web",
            json!({"clusterIP": "10.96.0.20", "type": "LoadBalancer", "externalTrafficPolicy": "Local", "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}]}),
        );
        let mut local_lb = local.clone();
        local_lb.status =
            Some(serde_json::from_value(json!({"loadBalancer": {"ingress": [{"ip": "172.18.255.1"}]}})).unwrap());
        let d = compile_flat(&[local_lb], std::slice::from_ref(&e), &node("n1"));
        let c = &d.chains[&d.nodeports[&("tcp".into(), 30080)]].rules();
        assert!(!c.iter().any(|r| r.contains("mark-masq")), "client source kept");
        let np: Vec<Backend> = d.np_backends.values().copied().collect();
        assert_eq!(np, vec![Backend { ip: "10.244.1.2".parse().unwrap(), port: 8080 }], "only this node's endpoints");
        assert_eq!(backends_of(&d, &key("172.18.255.1", 80)).len(), 1, "the LoadBalancer IP, local endpoints only");
        // A node without local endpoints refuses.
        let d = compile_flat(&[local], &[e], &node("n3"));
        assert!(d.reject_nodeports.contains(&("tcp".into(), 30080)));
    }

    #[test]
    fn internal_policy_local_affinity_external_ips_and_skipped_kinds() {
        let e = slice("web", &[("10.244.1.2", "n1", true, false), ("10.244.2.2", "n2", true, false)], 8080);
        let s = svc(
            "web",
            json!({"clusterIP": "10.96.0.20", "internalTrafficPolicy": "Local", "sessionAffinity": "ClientIP",
            "externalIPs": ["192.0.2.10"], "ports": [{"port": 80, "protocol": "TCP"}]}),
        );
        let d = compile_flat(&[s], &[e], &node("n2"));
        let k = key("10.96.0.20", 80);
        assert_eq!(backends_of(&d, &k).len(), 1);
        assert!(d.chains[&d.services[&k]].rules().iter().any(|r| r.contains("jhash ip saddr mod 1")));
        assert!(d.services.contains_key(&key("192.0.2.10", 80)));
        let headless = svc("h", json!({"clusterIP": "None", "ports": [{"port": 80}]}));
        let ext = svc("x", json!({"type": "ExternalName", "externalName": "example.com"}));
        assert_eq!(compile(&[headless, ext], &[], &node("n1")), Desired::default());
    }

    #[test]
    fn udp_and_multiple_ports() {
        let s = svc(
            "dns",
            json!({"clusterIP": "10.96.0.10", "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]}),
        );
        let e: EndpointSlice = serde_json::from_value(json!({"metadata": {"name": "dns-x", "namespace": "default", "labels": {"kubernetes.io/service-name": "dns"}},
            "addressType": "IPv4", "endpoints": [{"addresses": ["10.244.0.5"], "conditions": {"ready": true}}],
            "ports": [{"name": "dns", "protocol": "UDP", "port": 53}, {"name": "dns-tcp", "protocol": "TCP", "port": 53}]})).unwrap();
        let d = compile_flat(&[s], &[e], &node("n1"));
        let udp: SvcKey = ("10.96.0.10".parse().unwrap(), "udp".into(), 53);
        assert!(d.services.contains_key(&udp) && d.services.contains_key(&key("10.96.0.10", 53)));
        assert!(d.chains[&d.services[&udp]].rules().iter().any(|r| r.starts_with("meta l4proto udp dnat")));
    }

    #[test]
    fn sctp_services_and_node_ports() {
        let s = svc(
            "sig",
            json!({"type": "NodePort", "clusterIP": "10.96.0.30", "ports": [{"port": 3868, "nodePort": 30868, "protocol": "SCTP"}]}),
        );
        let e: EndpointSlice = serde_json::from_value(json!({"metadata": {"name": "sig-x", "namespace": "default", "labels": {"kubernetes.io/service-name": "sig"}},
            "addressType": "IPv4", "endpoints": [{"addresses": ["10.244.0.7"], "conditions": {"ready": true}}],
            "ports": [{"name": "", "protocol": "SCTP", "port": 3868}]})).unwrap();
        let d = compile_flat(&[s], &[e], &node("n1"));
        let k: SvcKey = ("10.96.0.30".parse().unwrap(), "sctp".into(), 3868);
        assert!(
            d.chains[&d.services[&k]].rules().iter().any(|r| r.contains("sctp dport") && r.contains("@backends-sctp"))
        );
        assert_eq!(backends_of(&d, &k), vec![Backend { ip: "10.244.0.7".parse().unwrap(), port: 3868 }]);
        let np: PortKey = ("sctp".into(), 30868);
        assert!(d.chains[&d.nodeports[&np]].rules().iter().any(|r| r.contains("@np-backends-sctp")));
        // And the delta names the SCTP maps (a map's port is typed by its protocol).
        let script = crate::apply::script(
            None,
            &compile(
                &[svc(
                    "sig",
                    json!({"type": "NodePort", "clusterIP": "10.96.0.30",
            "ports": [{"port": 3868, "nodePort": 30868, "protocol": "SCTP"}]}),
                )],
                &[],
                &node("n1"),
            ),
        );
        assert!(script.contains("no-endpoint"), "{script}");
    }

    #[test]
    fn recompiling_from_a_previous_programme_gives_the_same_result() {
        let mk = |name: &str, rv: &str, eps: &[&str]| {
            let mut s = svc(
                name,
                json!({"clusterIP": format!("10.96.0.{}", name.len() + 10), "ports": [{"port": 80, "protocol": "TCP"}]}),
            );
            s.metadata.resource_version = Some(rv.into());
            let mut e = slice(name, &eps.iter().map(|ip| (*ip, "n1", true, false)).collect::<Vec<_>>(), 8080);
            e.metadata.resource_version = Some(rv.into());
            (s, e)
        };
        let (a, ea) = mk("a", "1", &["10.244.1.2", "10.244.1.3"]);
        let (b, eb) = mk("bb", "1", &["10.244.1.3"]);
        let first = compile(&[a.clone(), b.clone()], &[ea.clone(), eb.clone()], &node("n1"));
        // b changes, a does not: a keeps its fragment, counts stay right.
        let (b2, eb2) = mk("bb", "2", &["10.244.1.4"]);
        let both = [a.clone(), b2.clone()];
        let next = compile_from(Some(&first), &both, &[ea.clone(), eb2.clone()], &node("n1"), &Claims::new(&both));
        let fresh = compile(&[a.clone(), b2], &[ea.clone(), eb2], &node("n1"));
        assert_eq!((&next.fragments, &next.hairpin_counts), (&fresh.fragments, &fresh.hairpin_counts));
        assert!(Arc::ptr_eq(
            &first.fragments[&("default".into(), "a".into())],
            &next.fragments[&("default".into(), "a".into())]
        ));
        // b goes away: its addresses leave the counts.
        let last = compile_from(
            Some(&next),
            std::slice::from_ref(&a),
            std::slice::from_ref(&ea),
            &node("n1"),
            &Claims::new(std::slice::from_ref(&a)),
        );
        let fresh = compile(&[a], &[ea], &node("n1"));
        assert_eq!((&last.fragments, &last.hairpin_counts), (&fresh.fragments, &fresh.hairpin_counts));
    }

    fn aged(name: &str, created: &str, spec: serde_json::Value) -> Service {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default",
            "creationTimestamp": created, "resourceVersion": "1"}, "spec": spec}))
        .unwrap()
    }

    #[test]
    fn an_external_ip_on_another_services_cluster_ip_is_skipped_and_reported() {
        // `web` is older and owns 10.96.0.20:80; `thief` claims it through externalIPs.
        let web = aged("web", "2026-01-01T00:00:00Z", json!({"clusterIP": "10.96.0.20", "ports": [{"port": 80}]}));
        let thief = aged(
            "thief",
            "2026-02-01T00:00:00Z",
            json!({"clusterIP": "10.96.0.30", "externalIPs": ["10.96.0.20", "10.96.0.20"], "ports": [{"port": 80}]}),
        );
        let e = slice("web", &[("10.244.1.2", "n1", true, false)], 8080);
        let svcs = [thief.clone(), web.clone()];
        let d = compile(&svcs, &[e], &node("n1"));
        let owner = |k: &SvcKey| -> Vec<&str> {
            d.fragments
                .iter()
                .filter(|(_, f)| f.services.iter().any(|(kk, _)| kk == k) || f.reject.contains(k))
                .map(|(n, _)| n.1.as_str())
                .collect()
        };
        assert_eq!(owner(&key("10.96.0.20", 80)), ["web"], "only the older Service programs the entry");
        assert_eq!(owner(&key("10.96.0.30", 80)), ["thief"], "the newer keeps its own address");
        let c = Claims::new(&svcs).conflicts();
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!(c[0].service.1, "thief");
        assert_eq!(c[0].owner.1, "web");
        assert_eq!(c[0].entry, "10.96.0.20:80/tcp");
        // The order the Services come in does not matter.
        let d2 = compile(
            &[web.clone(), thief.clone()],
            &[slice("web", &[("10.244.1.2", "n1", true, false)], 8080)],
            &node("n1"),
        );
        assert_eq!(d.flat(), d2.flat());
    }

    #[test]
    fn a_service_listing_its_own_cluster_ip_as_external_programs_it_once() {
        let s = aged(
            "web",
            "2026-01-01T00:00:00Z",
            json!({"clusterIP": "10.96.0.20", "externalIPs": ["10.96.0.20"], "ports": [{"port": 80}, {"port": 80, "name": "again"}]}),
        );
        let f = compile(std::slice::from_ref(&s), &[], &node("n1"));
        let frag = &f.fragments[&("default".to_string(), "web".to_string())];
        assert_eq!(frag.reject, vec![key("10.96.0.20", 80)], "one entry, not three");
    }

    #[test]
    fn claims_hand_an_entry_over_when_its_owner_goes_and_name_who_to_recompile() {
        let web = aged("web", "2026-01-01T00:00:00Z", json!({"clusterIP": "10.96.0.20", "ports": [{"port": 80}]}));
        let thief = aged(
            "thief",
            "2026-02-01T00:00:00Z",
            json!({"clusterIP": "10.96.0.30", "externalIPs": ["10.96.0.20"], "ports": [{"port": 80}], "type": "NodePort"}),
        );
        let (kw, kt) = (("default".to_string(), "web".to_string()), ("default".to_string(), "thief".to_string()));
        let mut c = Claims::default();
        assert!(c.set(&kw, Some(&web)).is_empty());
        assert!(c.set(&kt, Some(&thief)).is_empty(), "the newcomer loses; the owner is unchanged");
        // The owner goes: the newcomer must be recompiled, and now owns the entry.
        assert_eq!(c.set(&kw, None), BTreeSet::from([kt.clone()]));
        assert!(c.lost_by(&kt).is_empty());
        // An incremental patch equals a whole compile at every step.
        let e = slice("web", &[("10.244.1.2", "n1", true, false)], 8080);
        let both = [web.clone(), thief.clone()];
        let before = compile(&both, std::slice::from_ref(&e), &node("n1"));
        let changed: Vec<Changed> = vec![(kw.clone(), None, vec![]), (kt.clone(), Some(&thief), vec![])];
        let patch = compile_patch(&before, &changed, &node("n1"), &c);
        let mut patched = before.clone();
        patched.apply_patch(&patch);
        let whole = compile(std::slice::from_ref(&thief), &[], &node("n1"));
        // Shared chains stay once made; everything else is the same.
        let unchained = |d: &Desired| Flat { chains: BTreeMap::new(), ..d.flat() };
        assert_eq!(unchained(&patched), unchained(&whole));
        assert!(whole.flat().reject.contains(&key("10.96.0.20", 80)), "the newcomer has it now");
    }

    #[test]
    fn load_balancer_source_ranges_guard_only_the_load_balancer_addresses() {
        let s: Service = serde_json::from_value(json!({"metadata": {"name": "lb", "namespace": "default"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.50", "ports": [{"port": 80, "nodePort": 30080}],
                     "loadBalancerSourceRanges": ["172.18.0.0/24", "2001:db8::/32", "10.1.2.3/8"]},
            "status": {"loadBalancer": {"ingress": [{"ip": "172.18.255.1"}]}}}))
        .unwrap();
        let d = compile(std::slice::from_ref(&s), &[], &node("n1")).flat();
        let k = key("172.18.255.1", 80);
        assert_eq!(d.firewall, BTreeSet::from([k.clone()]));
        let allowed: Vec<String> = d.firewall_allow.iter().map(|(_, n)| n.to_string()).collect();
        assert_eq!(allowed, ["10.0.0.0/8", "172.18.0.0/24"], "IPv4 ranges, normalised");
        // Without ranges: nothing guarded.
        let mut open = s.clone();
        open.spec.as_mut().unwrap().load_balancer_source_ranges = None;
        assert!(compile(&[open], &[], &node("n1")).flat().firewall.is_empty());
    }
}
