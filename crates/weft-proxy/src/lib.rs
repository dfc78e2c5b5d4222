//! weft's service proxy (a kube-proxy replacement on nftables): `compile` turns Services and
//! EndpointSlices into one node's desired ruleset, `apply` sends the difference in one atomic
//! transaction, and `run` watches the API and keeps a set of nodes in step.

pub mod apply;
pub mod compile;
pub mod conntrack;
pub mod health;
pub mod netlink;
mod report;
pub mod stats;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::apply::{Applier, NetlinkSink};
use crate::compile::NodeInfo;

type Key = (String, String);

/// The Services and EndpointSlices as the watches last saw them, indexed by Service, and which
/// Services changed since the last pass (`full` after a (re)list: everything is recompiled).
#[derive(Default)]
struct World {
    services: HashMap<Key, Arc<Service>>,
    /// Slices by their Service, then by slice name.
    slices: HashMap<Key, BTreeMap<String, Arc<EndpointSlice>>>,
    /// Which Service each slice (namespace, slice name) belongs to.
    owner: HashMap<Key, Key>,
    /// Who owns each contested address and node port (the oldest Service).
    claims: compile::Claims,
    dirty: BTreeSet<Key>,
    full: bool,
    synced: [bool; 2],
    stats: stats::Stats,
}

fn meta_key(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Key {
    (m.namespace.clone().unwrap_or_default(), m.name.clone().unwrap_or_default())
}

fn service_of(s: &EndpointSlice) -> Option<Key> {
    weft_k8s::slices::service_of(s).map(|(ns, name)| (ns.to_string(), name.to_string()))
}

impl World {
    fn put_service(&mut self, s: Service) {
        let k = meta_key(&s.metadata);
        let touched = self.claims.set(&k, Some(&s));
        self.dirty.extend(touched);
        self.dirty.insert(k.clone());
        self.services.insert(k, Arc::new(s));
        self.stats.queued(true, std::time::SystemTime::now());
    }
    fn drop_service(&mut self, s: &Service) {
        let k = meta_key(&s.metadata);
        self.stats.queued(true, std::time::SystemTime::now());
        let touched = self.claims.set(&k, None);
        self.dirty.extend(touched);
        self.services.remove(&k);
        self.dirty.insert(k);
    }
    fn drop_slice(&mut self, k: &Key) {
        if let Some(owner) = self.owner.remove(k) {
            if let Some(m) = self.slices.get_mut(&owner) {
                m.remove(&k.1);
                if m.is_empty() {
                    self.slices.remove(&owner);
                }
            }
            self.stats.queued(false, std::time::SystemTime::now());
            self.dirty.insert(owner);
        }
    }
    fn put_slice(&mut self, s: EndpointSlice) {
        let k = meta_key(&s.metadata);
        self.drop_slice(&k);
        if let Some(owner) = service_of(&s) {
            self.owner.insert(k.clone(), owner.clone());
            self.slices.entry(owner.clone()).or_default().insert(k.1, Arc::new(s));
            self.stats.queued(false, std::time::SystemTime::now());
            self.dirty.insert(owner);
        }
    }
    fn slices_of(&self, k: &Key) -> Vec<&EndpointSlice> {
        self.slices.get(k).map(|m| m.values().map(|s| &**s).collect()).unwrap_or_default()
    }
}

impl weft_watch::Fold<Service> for World {
    type Fresh = Vec<Service>;
    fn gather(fresh: &mut Vec<Service>, o: Service) {
        fresh.push(o);
    }
    fn relisted(&mut self, fresh: Vec<Service>) {
        self.services.clear();
        self.claims = compile::Claims::default();
        for o in fresh {
            self.put_service(o);
        }
        self.synced[0] = true;
        self.full = true;
    }
    fn applied(&mut self, o: Service) {
        self.put_service(o);
    }
    fn deleted(&mut self, o: Service) {
        self.drop_service(&o);
    }
}

impl weft_watch::Fold<EndpointSlice> for World {
    type Fresh = Vec<EndpointSlice>;
    fn gather(fresh: &mut Vec<EndpointSlice>, o: EndpointSlice) {
        fresh.push(o);
    }
    fn relisted(&mut self, fresh: Vec<EndpointSlice>) {
        self.slices.clear();
        self.owner.clear();
        for o in fresh {
            self.put_slice(o);
        }
        self.synced[1] = true;
        self.full = true;
    }
    fn applied(&mut self, o: EndpointSlice) {
        self.put_slice(o);
    }
    fn deleted(&mut self, o: EndpointSlice) {
        self.drop_slice(&meta_key(&o.metadata));
    }
}

/// Keeps the proxy rules of every given node (node info, its network namespace) in step with
/// the API's Services and EndpointSlices. After the first whole sync, a change recompiles and
/// sends only the Services it touched (their objects are found through the world's index), so
/// its cost does not grow with the number of Services. `stats` gets each change and pass (for
/// kube-proxy's metrics and health answers).
pub async fn run(client: kube::Client, nodes: Vec<(NodeInfo, Option<std::path::PathBuf>)>, stats: stats::Stats) {
    let wake = weft_watch::Wake::new();
    let world = Arc::new(Mutex::new(World { stats, ..World::default() }));
    weft_watch::fold::<Service, _>(kube::Api::all(client.clone()), world.clone(), wake.clone());
    weft_watch::fold::<EndpointSlice, _>(kube::Api::all(client.clone()), world.clone(), wake.clone());
    let mut appliers: Vec<(NodeInfo, Applier<NetlinkSink>, health::HealthServers)> = nodes
        .into_iter()
        .map(|(n, ns)| (n, Applier::new(NetlinkSink { netns: ns.clone() }), health::HealthServers::new(ns)))
        .collect();
    let mut report = report::Reporter::new(client.clone());
    // The gauges of what is programmed walk every Service: after a whole sync, else once a second.
    let mut counted: Option<std::time::Instant> = None;
    let mut programmed = stats::Programmed::default();
    // A burst of changes becomes one transaction; the resync retries a failed sync.
    let controller = weft_watch::Controller::new("proxy")
        .wake_on(&wake)
        .resync(Duration::from_secs(5))
        .debounce(Duration::from_millis(10));
    controller
        .run(async move || {
            let outcome = {
                let mut w = world.lock().unwrap_or_else(|e| e.into_inner());
                if w.synced.iter().all(|s| *s) {
                    let full = std::mem::take(&mut w.full);
                    let dirty = std::mem::take(&mut w.dirty);
                    let conflicts: Vec<compile::Conflict> = dirty.iter().flat_map(|k| w.claims.lost_by(k)).collect();
                    let started = std::time::Instant::now();
                    let (outcome, settled) = sync_nodes(&w, full, &dirty, &mut appliers);
                    let took = started.elapsed();
                    if full || counted.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        if let Some((node, _, _)) = appliers.first() {
                            programmed = count_programmed(&w, &node.name);
                        }
                        counted = Some(std::time::Instant::now());
                    }
                    let failed = outcome.iter().any(|(_, e)| e.is_some());
                    w.stats.synced(full, took, settled, failed, programmed, std::time::SystemTime::now());
                    // Services the kernel refused are tried again on the next pass.
                    for (_, a, _) in &appliers {
                        w.dirty.extend(a.refused().keys().cloned());
                    }
                    Some((outcome, conflicts))
                } else {
                    None
                }
            };
            if let Some((outcome, conflicts)) = outcome {
                report.conflicts(conflicts).await;
                report.nodes(outcome).await;
            }
            Ok(())
        })
        .await
}

/// What the rules of `node` serve: Service ports, their ready endpoints, and the Services with a
/// Local traffic policy and no ready endpoint on the node (kube-proxy's no_local_endpoints).
fn count_programmed(w: &World, node: &str) -> stats::Programmed {
    let mut p = stats::Programmed::default();
    for (k, s) in &w.services {
        let Some(spec) = &s.spec else { continue };
        if spec.type_.as_deref() == Some("ExternalName") || spec.cluster_ip.as_deref().is_none_or(|ip| ip == "None") {
            continue;
        }
        p.services += spec.ports.as_ref().map_or(0, |v| v.len() as u64);
        let (mut ready, mut local) = (0, false);
        for e in w.slices_of(k).into_iter().flat_map(|sl| sl.endpoints.iter().flatten()) {
            if weft_k8s::endpoints::is_ready(e) {
                ready += 1;
                local |= e.node_name.as_deref() == Some(node);
            }
        }
        p.endpoints += ready;
        if !local && spec.internal_traffic_policy.as_deref() == Some("Local") {
            p.no_local_internal += 1;
        }
        let external = matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"));
        if !local && external && spec.external_traffic_policy.as_deref() == Some("Local") {
            p.no_local_external += 1;
        }
    }
    p
}

/// Each node's name and, if its rules are not all in force, why; and whether every node has all
/// it can have (nothing failed but Services the kernel refused, which keep their last good rules:
/// one bad Service must not make the proxy unhealthy and get it restarted).
fn sync_nodes(
    w: &World,
    full: bool,
    dirty: &BTreeSet<Key>,
    appliers: &mut [(NodeInfo, Applier<NetlinkSink>, health::HealthServers)],
) -> (Vec<(String, Option<String>)>, bool) {
    let mut outcome = vec![];
    let mut settled = true;
    let changed: Vec<compile::Changed> =
        dirty.iter().map(|k| (k.clone(), w.services.get(k).map(|s| &**s), w.slices_of(k))).collect();
    // What every node's programme is made from: the whole world only when some node needs a
    // whole sync (after a relist or a failure), read once for all of them.
    let needs_all = full || appliers.iter().any(|(_, a, _)| a.applied().is_none());
    let (svcs, slices): (Vec<Service>, Vec<EndpointSlice>) = if needs_all {
        (
            w.services.values().map(|s| (**s).clone()).collect(),
            w.slices.values().flat_map(|m| m.values().map(|s| (**s).clone())).collect(),
        )
    } else {
        (vec![], vec![])
    };
    // Health check ports: only LoadBalancers with externalTrafficPolicy Local have one.
    let lbs: Vec<Service> = w
        .services
        .values()
        .filter(|s| s.spec.as_ref().is_some_and(|sp| sp.health_check_node_port.is_some()))
        .map(|s| (**s).clone())
        .collect();
    let lb_slices: Vec<EndpointSlice> = lbs.iter().flat_map(|s| w.slices_of(&meta_key(&s.metadata))).cloned().collect();
    for (node, applier, health) in appliers.iter_mut() {
        let result = match applier.applied() {
            Some(prev) if !full => {
                let patch = compile::compile_patch(prev, &changed, node, &w.claims);
                applier.sync_patch(&patch)
            }
            // A relist: fragments of Services that did not change are reused.
            prev => {
                let want = compile::compile_from(prev, &svcs, &slices, node, &w.claims);
                applier.sync(want)
            }
        };
        if let Err(e) = &result {
            tracing::warn!(node = %node.name, error = %format!("{e:#}"), "proxy sync");
        }
        if let Err(e) = &result {
            settled &= e.downcast_ref::<apply::ServicesRefused>().is_some();
        }
        outcome.push((node.name.clone(), result.err().map(|e| format!("{e:#}"))));
        health.sync(health::plan(&lbs, &lb_slices, &node.name));
    }
    (outcome, settled)
}
