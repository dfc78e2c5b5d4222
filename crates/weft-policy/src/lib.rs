//! weft's NetworkPolicy engine: networking.k8s.io/v1 enforced in nftables on every node, built
//! the way the service proxy is. [`compile`] turns policies, pods and namespaces into one
//! node's desired state (pure, incremental), [`apply`] sends the difference in one atomic
//! nf_tables transaction, [`rules`] is the table in nf_tables terms, and [`run`] watches the
//! API and keeps a set of nodes in step (in the lab every node's namespace; in `weft agent`
//! this node). [`denials`] reads what the rules log and makes it visible: counters (Prometheus
//! text) and `PolicyDenied` Events aggregated as Kubernetes aggregates them.
//!
//! Behaviour worth knowing:
//! - A pod is isolated in a direction when some policy selecting it has that type; then what
//!   the union of those policies' rules allows passes, and the rest is dropped (and logged,
//!   rate-limited, to NFLOG group [`rules::LOG_GROUP`] with the policy-set chain's name as the
//!   prefix; [`compile::Desired::chain_policies`] names the policies behind it, and
//!   [`denials::run`], given the same [`Published`] handle as [`run_published`], turns each
//!   logged packet into a denial naming them).
//! - Replies of allowed connections pass (conntrack). Packets in a connection's original
//!   direction are judged on every packet, not only the first: a policy change that denies an
//!   open connection cuts it at its next packet, and one that still allows it keeps it (the
//!   upstream e2e suite opens new connections after each change, so both readings pass it; this
//!   one never lets an old connection outlive the policy that allowed it).
//! - Traffic the node itself sends (kubelet probes) goes through the output hook, which the
//!   engine does not filter; traffic to the node's own addresses is not filtered either.
//! - An address of the node's pod range (Node.spec.podCIDRs) that is no pod the engine knows is
//!   dropped both ways, so a new pod is isolated from the moment it has an address until its
//!   policies (or none) are in force: never open for a moment.
//! - hostNetwork pods are neither selected nor peers; pods without an address, or finished, are
//!   left out; a terminating pod stays enforced.
//! - IPv4: IPv6 traffic is not filtered (weft's pods are IPv4).

pub mod apply;
pub mod compile;
pub mod denials;
pub mod eval;
pub mod model;
pub mod rules;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::apply::{Applier, NetlinkSink};
use crate::compile::{Desired, NodeInfo};
use crate::model::{Key, Labels, PodInfo, Policy, World};

/// What the watches feed: the world, and whether each kind has been listed once.
#[derive(Default)]
struct State {
    world: World,
    /// Policies, pods, namespaces.
    synced: [bool; 3],
}

fn key_of(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Key {
    (m.namespace.clone().unwrap_or_default(), m.name.clone().unwrap_or_default())
}

/// Logs what is wrong with a policy, once per version of it.
fn warn_about(p: &Policy) {
    for w in &p.warnings {
        tracing::warn!(policy = %format!("{}/{}", p.key.0, p.key.1), "NetworkPolicy {w}");
    }
}

impl weft_watch::Fold<NetworkPolicy> for State {
    type Fresh = Vec<Policy>;
    fn gather(fresh: &mut Vec<Policy>, o: NetworkPolicy) {
        fresh.push(Policy::from_object(&o));
    }
    fn relisted(&mut self, fresh: Vec<Policy>) {
        for p in &fresh {
            if self.world.policies.get(&p.key).is_none_or(|old| **old != *p) {
                warn_about(p);
            }
        }
        self.world.replace_policies(fresh);
        self.synced[0] = true;
    }
    fn applied(&mut self, o: NetworkPolicy) {
        let p = Policy::from_object(&o);
        if self.world.policies.get(&p.key).is_none_or(|old| **old != p) {
            warn_about(&p);
        }
        self.world.put_policy(p);
    }
    fn deleted(&mut self, o: NetworkPolicy) {
        self.world.remove_policy(&key_of(&o.metadata));
    }
}

impl weft_watch::Fold<Pod> for State {
    type Fresh = Vec<(Key, PodInfo)>;
    fn gather(fresh: &mut Self::Fresh, o: Pod) {
        if let Some(p) = PodInfo::from_object(&o) {
            fresh.push((key_of(&o.metadata), p));
        }
    }
    fn relisted(&mut self, fresh: Self::Fresh) {
        self.world.replace_pods(fresh);
        self.synced[1] = true;
    }
    fn applied(&mut self, o: Pod) {
        self.world.put_pod(key_of(&o.metadata), PodInfo::from_object(&o));
    }
    fn deleted(&mut self, o: Pod) {
        self.world.remove_pod(&key_of(&o.metadata));
    }
}

impl weft_watch::Fold<Namespace> for State {
    type Fresh = Vec<(String, Labels)>;
    fn gather(fresh: &mut Self::Fresh, o: Namespace) {
        fresh.push((o.metadata.name.clone().unwrap_or_default(), o.metadata.labels.clone().unwrap_or_default()));
    }
    fn relisted(&mut self, fresh: Self::Fresh) {
        self.world.replace_namespaces(fresh);
        self.synced[2] = true;
    }
    fn applied(&mut self, o: Namespace) {
        self.world.put_namespace(o.metadata.name.clone().unwrap_or_default(), o.metadata.labels.unwrap_or_default());
    }
    fn deleted(&mut self, o: Namespace) {
        self.world.remove_namespace(o.metadata.name.as_deref().unwrap_or_default());
    }
}

/// What each node has in force, and which pod has each address, for readers in the same
/// process (the denial records: which policies a logged chain stands for, which pods sent and
/// were sent a denied packet). Updated after every pass.
#[derive(Clone, Default)]
pub struct Published {
    nodes: Arc<RwLock<BTreeMap<String, Arc<Desired>>>>,
    pods: Arc<RwLock<BTreeMap<Ipv4Addr, Key>>>,
}

impl Published {
    /// The state last applied on `node`.
    pub fn node(&self, node: &str) -> Option<Arc<Desired>> {
        self.nodes.read().unwrap_or_else(|e| e.into_inner()).get(node).cloned()
    }
    /// The policies behind a policy-set chain on `node` (what an NFLOG prefix names).
    pub fn chain_policies(&self, node: &str, chain: &str) -> Option<Vec<Key>> {
        self.node(node)?.chain_policies(chain)
    }
    /// The pod (namespace, name) that has `ip`, among the pods policies apply to.
    pub fn pod_at(&self, ip: Ipv4Addr) -> Option<Key> {
        self.pods.read().unwrap_or_else(|e| e.into_inner()).get(&ip).cloned()
    }
    fn set(&self, node: &str, d: Arc<Desired>) {
        self.nodes.write().unwrap_or_else(|e| e.into_inner()).insert(node.to_string(), d);
    }
    /// Follows the world's pods: the addresses that changed, or all of them after a relist.
    fn pods_changed(&self, world: &World, changes: &model::Changes) {
        let first = |keys: &std::collections::BTreeSet<Key>| keys.iter().next().cloned();
        let mut pods = self.pods.write().unwrap_or_else(|e| e.into_inner());
        if changes.all {
            *pods = world.by_ip.iter().filter_map(|(ip, keys)| Some((*ip, first(keys)?))).collect();
            return;
        }
        for ip in &changes.ips {
            match world.by_ip.get(ip).and_then(first) {
                Some(k) => pods.insert(*ip, k),
                None => pods.remove(ip),
            };
        }
    }
}

/// One node the engine keeps in step.
struct Engine {
    name: String,
    netns: Option<PathBuf>,
    compiled: Option<Desired>,
    /// `compiled` changed since it was last given to the applier.
    dirty: bool,
    applier: Applier<NetlinkSink>,
}

/// A node's pod ranges (IPv4) from its Node object.
fn pod_cidrs(nodes: &Store<Node>, name: &str) -> Vec<ipnet::Ipv4Net> {
    let Some(n) = nodes.get(&ObjectRef::new(name)) else { return vec![] };
    let spec = n.spec.as_ref();
    let mut all: Vec<&String> = spec.and_then(|s| s.pod_cidrs.as_ref()).into_iter().flatten().collect();
    all.extend(spec.and_then(|s| s.pod_cidr.as_ref()));
    let mut out: Vec<ipnet::Ipv4Net> =
        all.into_iter().filter_map(|c| c.parse::<ipnet::Ipv4Net>().ok()).map(|c| c.trunc()).collect();
    out.sort();
    out.dedup();
    out
}

/// Frames a node's bridge switches between two of its pods reach the `ip` family's forward hook
/// only through br_netfilter with `bridge-nf-call-iptables` on (the kernel's default in every
/// namespace, and what Kubernetes nodes require). A lab node's namespace is the lab's: it is
/// turned on there; on a real node it is only reported.
fn check_bridge_netfilter(node: &str, netns: Option<&Path>) {
    const KEY: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";
    let value = weft_netlink::ns::run_in(netns, || std::fs::read_to_string(KEY));
    match value {
        Ok(Ok(v)) if v.trim() == "0" => {
            if netns.is_some() {
                match weft_netlink::ns::sysctl(netns, "net.bridge.bridge-nf-call-iptables", "1") {
                    Ok(()) => tracing::info!(node, "bridge-nf-call-iptables turned on in the node's namespace"),
                    Err(e) => {
                        tracing::warn!(node, error = %e, "pod-to-pod traffic on the node's bridge is not filtered")
                    }
                }
            } else {
                tracing::warn!(
                    node,
                    "net.bridge.bridge-nf-call-iptables is 0: NetworkPolicy does not see traffic between two pods of one bridge (set it to 1, as Kubernetes requires)"
                );
            }
        }
        Ok(Ok(_)) => {}
        _ => tracing::debug!(node, "no br_netfilter: pod traffic is routed, not bridged"),
    }
}

/// Keeps the NetworkPolicy rules of every given node (name, network namespace: `None` for this
/// process's) in step with the API's policies, pods and namespaces.
pub async fn run(client: kube::Client, nodes: Vec<(String, Option<PathBuf>)>) {
    run_published(client, nodes, Published::default()).await
}

/// [`run`], telling `published` what each node has in force after every pass.
pub async fn run_published(client: kube::Client, nodes: Vec<(String, Option<PathBuf>)>, published: Published) {
    let wake = weft_watch::Wake::new();
    let state = Arc::new(Mutex::new(State::default()));
    weft_watch::fold::<NetworkPolicy, _>(kube::Api::all(client.clone()), state.clone(), wake.clone());
    weft_watch::fold::<Pod, _>(kube::Api::all(client.clone()), state.clone(), wake.clone());
    weft_watch::fold::<Namespace, _>(kube::Api::all(client.clone()), state.clone(), wake.clone());
    let node_store = weft_watch::cached::<Node>(&client, wake.clone());
    let mut engines: Vec<Engine> = nodes
        .into_iter()
        .map(|(name, netns)| {
            check_bridge_netfilter(&name, netns.as_deref());
            Engine {
                applier: Applier::new(NetlinkSink { netns: netns.clone() }),
                name,
                netns,
                compiled: None,
                dirty: true,
            }
        })
        .collect();
    let controller = weft_watch::Controller::new("network-policy")
        .wake_on(&wake)
        .resync(Duration::from_secs(10))
        .debounce(Duration::from_millis(10));
    controller
        .run(async move || {
            // Compile under the lock (pure and quick), apply after it.
            {
                let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                if !s.synced.iter().all(|x| *x) {
                    return Ok(());
                }
                let changes = s.world.take_changes();
                published.pods_changed(&s.world, &changes);
                for e in engines.iter_mut() {
                    let info = NodeInfo { name: e.name.clone(), pod_cidrs: pod_cidrs(&node_store, &e.name) };
                    let same = changes.is_empty() && e.compiled.as_ref().is_some_and(|c| c.pod_cidrs == info.pod_cidrs);
                    if !same {
                        e.compiled = Some(compile::recompile(e.compiled.as_ref(), &s.world, &info, &changes));
                        e.dirty = true;
                    }
                }
            }
            let mut failed = vec![];
            for e in engines.iter_mut() {
                let Some(want) = e.compiled.as_ref() else { continue };
                // A table someone removed is made again whole.
                if !e.applier.needs_sync()
                    && !weft_netlink::nft::table_exists(e.netns.as_deref(), rules::FAMILY, rules::TABLE).unwrap_or(true)
                {
                    tracing::warn!(node = %e.name, "the NetworkPolicy table went missing; making it again");
                    e.applier.forget();
                }
                if !e.dirty && !e.applier.needs_sync() {
                    continue;
                }
                e.dirty = false;
                match e.applier.sync(want.clone()) {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(node = %e.name, changes = n, "NetworkPolicy rules applied"),
                    Err(err) => {
                        tracing::warn!(node = %e.name, error = %format!("{err:#}"), "NetworkPolicy rules refused; the last good ones stay in force");
                        failed.push(e.name.clone());
                    }
                }
                if let Some(d) = e.applier.applied() {
                    published.set(&e.name, Arc::new(d.clone()));
                }
            }
            if failed.is_empty() {
                Ok(())
            } else {
                Err(anyhow::anyhow!("NetworkPolicy rules refused on {}", failed.join(", ")))
            }
        })
        .await
}

#[cfg(test)]
mod tests;
