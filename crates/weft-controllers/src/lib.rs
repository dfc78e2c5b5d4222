//! The control loops a lab needs besides the API server (in a real cluster these are
//! kube-scheduler and kube-controller-manager): a scheduler, node IPAM (a podCIDR per node), the
//! workload controllers (Deployment, ReplicaSet and ReplicationController, DaemonSet,
//! StatefulSet, Job: one file each), PodGC, endpoints, LoadBalancer addresses and garbage
//! collection.
//!
//! Each loop is level-triggered: reflectors keep caches of the objects, any change wakes a pass
//! that compares desired with actual and writes the difference through the API (so these loops
//! are kube-rs clients like any other, and work against a real API server too). Each controller
//! is a loop of its own ([`weft_watch::Controller`]), so one that fails or panics does not stop
//! the others. The decisions are pure functions (`plan_*`, `plan`), tested without a server.

pub mod affinity;
pub mod clusterrole_aggregation;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod events;
pub mod gc;
pub mod history;
pub mod job;
pub mod lb;
pub mod namespace;
pub mod podgc;
pub mod replicaset;
pub mod serviceaccounts;
pub mod statefulset;
pub mod workload;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, PodSpec, ReplicationController, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use weft_k8s::pods::is_finished;
use weft_watch::{Controller, Wake};

pub use replicaset::plan_scale_down;
use workload::is_active;

/// `status.observedGeneration` for a kind whose `metadata.generation` the API server may not
/// count (weft's counts it for Deployments and ReplicaSets; without one, 1: kubectl's rollout
/// status reads 0 as "not observed yet").
pub(crate) fn observed(generation: Option<i64>) -> i64 {
    generation.unwrap_or(1)
}

/// Pods a node can hold: its `status.allocatable.pods`, and the addresses of its podCIDR (less
/// network, broadcast and the bridge's gateway). A node that reports no allocatable pods holds
/// none (as kube-scheduler counts it); one without a podCIDR (yet) is bounded by allocatable only.
pub fn node_pod_capacity(n: &Node) -> usize {
    let allocatable = n
        .status
        .as_ref()
        .and_then(|s| s.allocatable.as_ref())
        .and_then(|a| a.get("pods"))
        .and_then(|q| q.0.parse::<usize>().ok())
        .unwrap_or(0);
    let addresses = n
        .spec
        .as_ref()
        .and_then(|s| s.pod_cidr.as_ref())
        .and_then(|c| c.parse::<Ipv4Net>().ok())
        .map(|c| (1usize << (32 - c.prefix_len())).saturating_sub(3))
        .unwrap_or(usize::MAX);
    allocatable.min(addresses)
}

/// Does the pod still take a place on its node (also while terminating: it holds its address
/// until the kubelet has torn it down)?
fn holds_place(p: &Pod) -> bool {
    !is_finished(p)
}

/// Scheduler decision for a pod with this spec: the node it fits (its nodeSelector and required
/// node affinity, see [`affinity::node_matches`]; then [`weft_k8s::nodes::fit`]: not cordoned,
/// Ready, no untolerated taint) with room (see [`node_pod_capacity`]) and the fewest active pods
/// (ties by name); or, when no node fits, the reason in kube-scheduler's words ("0/3 nodes are
/// available: 3 Too many pods.").
pub fn plan_schedule(nodes: &[Arc<Node>], pods: &[Arc<Pod>], spec: &PodSpec) -> Result<String, String> {
    let tolerations = spec.tolerations.as_deref().unwrap_or_default();
    let mut load: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let wanted = host_ports(spec);
    let mut ports_taken: BTreeMap<String, Vec<HostPort>> = BTreeMap::new();
    for p in pods {
        if let Some(n) = p.spec.as_ref().and_then(|s| s.node_name.as_ref()) {
            let e = load.entry(n.clone()).or_default();
            e.0 += usize::from(is_active(p));
            e.1 += usize::from(holds_place(p));
            if let Some(ps) = p.spec.as_ref().filter(|_| !wanted.is_empty() && holds_place(p)) {
                ports_taken.entry(n.clone()).or_default().extend(host_ports(ps));
            }
        }
    }
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut best: Option<(usize, String)> = None;
    for n in nodes {
        let name = n.name_any();
        let (active, placed) = load.get(&name).copied().unwrap_or_default();
        let why = match weft_k8s::nodes::fit(n, tolerations) {
            _ if !affinity::node_matches(spec, n) => Some(affinity::MISMATCH.to_string()),
            Err(unfit) => Some(unfit.to_string()),
            Ok(()) if placed >= node_pod_capacity(n) => Some("Too many pods".to_string()),
            Ok(())
                if ports_taken.get(&name).is_some_and(|t| wanted.iter().any(|w| t.iter().any(|u| w.conflicts(u)))) =>
            {
                Some("node(s) didn't have free ports for the requested pod ports".to_string())
            }
            Ok(()) => None,
        };
        match why {
            Some(r) => *reasons.entry(r).or_default() += 1,
            None => {
                if best.as_ref().is_none_or(|(c, b)| (active, &name) < (*c, b)) {
                    best = Some((active, name));
                }
            }
        }
    }
    match best {
        Some((_, n)) => Ok(n),
        None if nodes.is_empty() => Err("no nodes available to schedule pods".into()),
        None => {
            // kube-scheduler sorts the "N reason" strings.
            let mut r: Vec<String> = reasons.iter().map(|(r, c)| format!("{c} {r}")).collect();
            r.sort();
            Err(format!("0/{} nodes are available: {}.", nodes.len(), r.join(", ")))
        }
    }
}

/// A port a pod takes on its node (a hostPort, which a hostNetwork pod has for every port).
#[derive(Clone, Debug, PartialEq, Eq)]
struct HostPort {
    ip: String,
    protocol: String,
    port: i32,
}

impl HostPort {
    /// kube-scheduler's NodePorts: the same port and protocol, on the same address or on all.
    fn conflicts(&self, o: &HostPort) -> bool {
        let any = |ip: &str| ip.is_empty() || ip == "0.0.0.0";
        self.port == o.port && self.protocol == o.protocol && (self.ip == o.ip || any(&self.ip) || any(&o.ip))
    }
}

/// The host ports of a pod's containers.
fn host_ports(spec: &PodSpec) -> Vec<HostPort> {
    spec.containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.host_port.unwrap_or(0) > 0)
        .map(|p| HostPort {
            ip: p.host_ip.clone().unwrap_or_default(),
            protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
            port: p.host_port.unwrap_or(0),
        })
        .collect()
}

/// Node IPAM decision: the lowest /`size` of `cluster` no node holds.
pub fn plan_pod_cidr(cluster: Ipv4Net, size: u8, taken: &[Ipv4Net]) -> Option<Ipv4Net> {
    cluster.subnets(size).ok()?.find(|s| !taken.iter().any(|t| t.contains(&s.network()) || s.contains(&t.network())))
}

/// The pod-template-hash of a Deployment's template (stable for the same template).
pub fn template_hash(template: &Value) -> String {
    weft_k8s::names::safe_suffix(&serde_json::to_string(template).unwrap_or_default(), 10, 6)
}

#[derive(Clone)]
pub struct Config {
    pub pod_cidr: Ipv4Net,
    pub node_cidr_size: u8,
}

/// What every controller reads (each has its own copy: the caches are shared handles, the
/// bookkeeping below is used by one controller each).
#[derive(Clone)]
pub(crate) struct Ctx {
    client: kube::Client,
    cfg: Config,
    pods: Store<Pod>,
    nodes: Store<Node>,
    rss: Store<ReplicaSet>,
    deploys: Store<Deployment>,
    rcs: Store<ReplicationController>,
    daemonsets: Store<DaemonSet>,
    statefulsets: Store<StatefulSet>,
    jobs: Store<Job>,
    revisions: Store<ControllerRevision>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    endpoints: Store<Endpoints>,
    events: events::Recorders,
    /// Pods a controller has asked for but the cache does not show yet: (owner uid) -> (count, until).
    expect: HashMap<String, (usize, Instant)>,
    /// The Services the last garbage collection saw (None before the first).
    services_seen: Option<std::collections::BTreeSet<(String, String)>>,
}

/// Runs every control loop until the process ends. Each is a loop of its own: woken by any
/// change of the caches, a burst settled for 20 ms, and at least every 2 s.
pub async fn run(client: kube::Client, cfg: Config) {
    let wake = Wake::new();
    let ctx = Ctx {
        pods: weft_watch::cached(&client, wake.clone()),
        nodes: weft_watch::cached(&client, wake.clone()),
        rss: weft_watch::cached(&client, wake.clone()),
        deploys: weft_watch::cached(&client, wake.clone()),
        rcs: weft_watch::cached(&client, wake.clone()),
        daemonsets: weft_watch::cached(&client, wake.clone()),
        statefulsets: weft_watch::cached(&client, wake.clone()),
        jobs: weft_watch::cached(&client, wake.clone()),
        revisions: weft_watch::cached(&client, wake.clone()),
        events: events::Recorders::new(&client),
        services: weft_watch::cached(&client, wake.clone()),
        slices: weft_watch::cached(&client, wake.clone()),
        endpoints: weft_watch::cached(&client, wake.clone()),
        client,
        cfg,
        expect: HashMap::new(),
        services_seen: None,
    };
    let _ = ctx.pods.wait_until_ready().await;
    let _ = ctx.nodes.wait_until_ready().await;
    let _ = ctx.rss.wait_until_ready().await;
    let _ = ctx.deploys.wait_until_ready().await;
    let _ = ctx.rcs.wait_until_ready().await;
    let _ = ctx.daemonsets.wait_until_ready().await;
    let _ = ctx.statefulsets.wait_until_ready().await;
    let _ = ctx.jobs.wait_until_ready().await;
    let _ = ctx.revisions.wait_until_ready().await;
    let _ = ctx.services.wait_until_ready().await;
    let _ = ctx.slices.wait_until_ready().await;
    let _ = ctx.endpoints.wait_until_ready().await;
    let controller = |name: &str| {
        Controller::new(name).wake_on(&wake).resync(Duration::from_secs(2)).debounce(Duration::from_millis(20))
    };
    let mut loops = tokio::task::JoinSet::new();
    let mut c = ctx.clone();
    loops.spawn(controller("node-ipam").run(async move || node_ipam(&mut c).await));
    let mut c = ctx.clone();
    loops.spawn(controller("deployment").run(async move || deployment::reconcile(&mut c).await));
    let mut c = ctx.clone();
    loops.spawn(controller("replicaset").run(async move || replicaset::reconcile(&mut c).await));
    let mut c = ctx.clone();
    loops.spawn(controller("daemonset").run(async move || daemonset::reconcile(&mut c).await));
    let mut c = ctx.clone();
    loops.spawn(controller("statefulset").run(async move || statefulset::reconcile(&mut c).await));
    let mut c = ctx.clone();
    loops.spawn(controller("job").run(async move || job::reconcile(&mut c).await));
    let c = ctx.clone();
    loops.spawn(
        controller("pod-gc").run(async move || podgc::collect(&c.client, &c.pods.state(), &c.nodes.state()).await),
    );
    let mut c = ctx.clone();
    loops.spawn(controller("scheduler").run(async move || schedule(&mut c).await));
    let c = ctx.clone();
    loops.spawn(controller("endpoints").run(async move || {
        endpoints::reconcile(&c.client, &c.services.state(), &c.pods.state(), &c.slices.state(), &c.endpoints.state())
            .await
    }));
    let c = ctx.clone();
    loops.spawn(
        controller("loadbalancer")
            .run(async move || lb::reconcile(&c.client, &c.services.state(), &c.events.loadbalancer).await),
    );
    loops.spawn(namespace::run(ctx.client.clone()));
    loops.spawn(clusterrole_aggregation::run(ctx.client.clone()));
    let mut c = ctx;
    loops.spawn(controller("garbage-collector").run(async move || garbage_collect(&mut c).await));
    while loops.join_next().await.is_some() {}
}

async fn garbage_collect(ctx: &mut Ctx) -> anyhow::Result<()> {
    let (pods, rss, slices, deploys, rcs, services, endpoints) = (
        ctx.pods.state(),
        ctx.rss.state(),
        ctx.slices.state(),
        ctx.deploys.state(),
        ctx.rcs.state(),
        ctx.services.state(),
        ctx.endpoints.state(),
    );
    let (daemonsets, statefulsets, jobs, revisions) =
        (ctx.daemonsets.state(), ctx.statefulsets.state(), ctx.jobs.state(), ctx.revisions.state());
    let caches = gc::Caches {
        pods: &pods,
        rss: &rss,
        slices: &slices,
        deploys: &deploys,
        rcs: &rcs,
        services: &services,
        endpoints: &endpoints,
        daemonsets: &daemonsets,
        statefulsets: &statefulsets,
        jobs: &jobs,
        revisions: &revisions,
    };
    ctx.services_seen = Some(gc::collect(&ctx.client, &caches, ctx.services_seen.as_ref()).await);
    Ok(())
}

async fn node_ipam(ctx: &mut Ctx) -> anyhow::Result<()> {
    let nodes = ctx.nodes.state();
    let mut taken: Vec<Ipv4Net> = nodes
        .iter()
        .filter_map(|n| n.spec.as_ref().and_then(|s| s.pod_cidr.as_ref()).and_then(|c| c.parse().ok()))
        .collect();
    let mut missing: Vec<&Arc<Node>> =
        nodes.iter().filter(|n| n.spec.as_ref().and_then(|s| s.pod_cidr.as_ref()).is_none()).collect();
    // Oldest node first (then by name), so node-1 gets the first range.
    missing
        .sort_by_key(|n| (n.metadata.creation_timestamp.as_ref().map(|t| t.0.as_second()).unwrap_or(0), n.name_any()));
    let api: Api<Node> = Api::all(ctx.client.clone());
    for n in missing {
        let Some(cidr) = plan_pod_cidr(ctx.cfg.pod_cidr, ctx.cfg.node_cidr_size, &taken) else {
            tracing::error!(node = %n.name_any(), "the pod CIDR has no room left for another node");
            continue;
        };
        api.patch(
            &n.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"podCIDR": cidr.to_string(), "podCIDRs": [cidr.to_string()]}})),
        )
        .await?;
        taken.push(cidr);
    }
    Ok(())
}

async fn schedule(ctx: &mut Ctx) -> anyhow::Result<()> {
    let nodes = ctx.nodes.state();
    let mut pods = ctx.pods.state();
    let mut pending: Vec<Arc<Pod>> = pods
        .iter()
        .filter(|p| is_active(p) && p.spec.as_ref().is_some_and(|s| s.node_name.is_none()))
        .cloned()
        .collect();
    // Oldest first, as kube-scheduler's queue (all pods have the same priority here).
    pending.sort_by_key(|p| {
        (p.metadata.creation_timestamp.as_ref().map(|t| t.0.as_second()).unwrap_or(0), p.namespace(), p.name_any())
    });
    for p in pending {
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &p.namespace().unwrap_or_default());
        let spec = p.spec.clone().unwrap_or_default();
        let node = match plan_schedule(&nodes, &pods, &spec) {
            Ok(n) => n,
            Err(message) => {
                let cond =
                    json!({"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message});
                let shown = p.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|cs| {
                    cs.iter().any(|c| {
                        c.type_ == "PodScheduled"
                            && c.status == "False"
                            && c.reason.as_deref() == Some("Unschedulable")
                            && c.message.as_deref() == Some(message.as_str())
                    })
                });
                if !shown {
                    ctx.events.scheduler.warning(p.object_ref(&()), "FailedScheduling", "Scheduling", message.clone());
                    let mut cond = cond;
                    cond["lastTransitionTime"] =
                        json!(k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
                    let status = json!({"status": {"phase": "Pending", "conditions": [cond]}});
                    if let Err(e) =
                        api.patch_status(&p.name_any(), &PatchParams::default(), &Patch::Merge(status)).await
                    {
                        tracing::debug!(pod = %p.name_any(), error = %e, "unschedulable status");
                    }
                }
                continue;
            }
        };
        // Bound to the version the decision was made on: a pod this (possibly stale) cache
        // shows unscheduled but that was bound meanwhile gets a conflict, not a second node.
        let bind = json!({"metadata": {"resourceVersion": p.resource_version()}, "spec": {"nodeName": node}});
        match api.patch(&p.name_any(), &PatchParams::default(), &Patch::Merge(bind)).await {
            Ok(bound) => {
                let who = format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any());
                ctx.events.scheduler.normal(
                    p.object_ref(&()),
                    "Scheduled",
                    "Binding",
                    format!("Successfully assigned {who} to {node}"),
                );
                // Count it at once so the next pod of the burst goes elsewhere.
                pods.retain(|x| x.metadata.uid != bound.metadata.uid);
                pods.push(Arc::new(bound));
            }
            Err(e) => tracing::debug!(pod = %p.name_any(), error = %e, "bind"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod without tolerations.
    fn schedule_plain(nodes: &[Arc<Node>], pods: &[Arc<Pod>]) -> Result<String, String> {
        plan_schedule(nodes, pods, &PodSpec::default())
    }

    fn node(name: &str, ready: bool) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name},
            "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}}))
            .unwrap(),
        )
    }
    fn pod(node: Option<&str>) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"containers": [], "nodeName": node}}))
                .unwrap(),
        )
    }

    fn lab_node(name: &str, pods: &str, cidr: &str) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"podCIDR": cidr},
            "status": {"allocatable": {"pods": pods}, "conditions": [{"type": "Ready", "status": "True"}]}}))
            .unwrap(),
        )
    }
    fn pods_on(node: &str, n: usize, phase: &str) -> Vec<Arc<Pod>> {
        (0..n)
            .map(|i| {
                Arc::new(
                    serde_json::from_value(json!({"metadata": {"name": format!("p{i}")},
                    "spec": {"containers": [], "nodeName": node}, "status": {"phase": phase}}))
                    .unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn schedules_on_the_least_loaded_ready_node() {
        let nodes = vec![
            lab_node("node-1", "110", "10.244.0.0/24"),
            lab_node("node-2", "110", "10.244.1.0/24"),
            node("node-3", false),
        ];
        assert_eq!(schedule_plain(&nodes, &[]), Ok("node-1".into()));
        assert_eq!(schedule_plain(&nodes, &[pod(Some("node-1"))]), Ok("node-2".into()));
        assert_eq!(
            schedule_plain(&[node("x", false)], &[]),
            Err("0/1 nodes are available: 1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }.".into())
        );
        assert_eq!(schedule_plain(&[], &[]), Err("no nodes available to schedule pods".into()));
    }

    #[test]
    fn a_node_holds_its_allocatable_pods_and_its_pod_addresses() {
        assert_eq!(node_pod_capacity(&lab_node("n", "110", "10.244.0.0/24")), 110);
        // A /24 has 254 host addresses; the bridge takes one as the gateway.
        assert_eq!(node_pod_capacity(&lab_node("n", "500", "10.244.0.0/24")), 253);
        assert_eq!(node_pod_capacity(&lab_node("n", "500", "10.244.0.0/28")), 13);
        // No allocatable: no room, as kube-scheduler counts it; no podCIDR: allocatable alone.
        assert_eq!(node_pod_capacity(&node("n", true)), 0);
        assert_eq!(node_pod_capacity(&lab_node("n", "7", "")), 7);
    }

    #[test]
    fn full_nodes_leave_pods_unschedulable_in_kube_schedulers_words() {
        let nodes: Vec<Arc<Node>> =
            (1..=3).map(|i| lab_node(&format!("node-{i}"), "110", &format!("10.244.{i}.0/24"))).collect();
        let mut pods: Vec<Arc<Pod>> = (1..=3).flat_map(|i| pods_on(&format!("node-{i}"), 110, "Running")).collect();
        assert_eq!(schedule_plain(&nodes, &pods), Err("0/3 nodes are available: 3 Too many pods.".into()));
        // A finished pod frees its place; a terminating one does not until it is gone.
        pods.retain(|p| !(p.spec.as_ref().unwrap().node_name.as_deref() == Some("node-2") && p.name_any() == "p0"));
        pods.extend(pods_on("node-2", 1, "Succeeded"));
        assert_eq!(schedule_plain(&nodes, &pods), Ok("node-2".into()));
        // Mixed reasons are counted and sorted as kube-scheduler prints them.
        let mut cordoned = (*lab_node("node-4", "110", "10.244.4.0/24")).clone();
        cordoned.spec.as_mut().unwrap().unschedulable = Some(true);
        let mut more = nodes.clone();
        more.push(Arc::new(cordoned));
        more.push(node("node-5", false));
        pods.extend(pods_on("node-2", 1, "Pending"));
        assert_eq!(
            schedule_plain(&more, &pods),
            Err("0/5 nodes are available: 1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }, \
                 1 node(s) were unschedulable, 3 Too many pods."
                .into())
        );
        // A small podCIDR fills before allocatable does.
        let small = vec![lab_node("node-1", "110", "10.244.0.0/29")];
        assert_eq!(schedule_plain(&small, &pods_on("node-1", 4, "Running")), Ok("node-1".into()));
        assert!(schedule_plain(&small, &pods_on("node-1", 5, "Running")).is_err());
    }

    #[test]
    fn taints_keep_pods_away_unless_tolerated() {
        let mut tainted = (*lab_node("node-1", "110", "10.244.1.0/24")).clone();
        tainted.spec.as_mut().unwrap().taints =
            Some(vec![serde_json::from_value(json!({"key": "gpu", "value": "yes", "effect": "NoSchedule"})).unwrap()]);
        let nodes = vec![Arc::new(tainted)];
        assert_eq!(
            schedule_plain(&nodes, &[]),
            Err("0/1 nodes are available: 1 node(s) had untolerated taint {gpu: yes}.".into())
        );
        let tolerates: k8s_openapi::api::core::v1::Toleration =
            serde_json::from_value(json!({"key": "gpu", "operator": "Exists"})).unwrap();
        let spec = PodSpec { tolerations: Some(vec![tolerates]), ..Default::default() };
        assert_eq!(plan_schedule(&nodes, &[], &spec), Ok("node-1".into()));
    }

    #[test]
    fn a_host_port_goes_where_it_is_free() {
        let nodes: Vec<Arc<Node>> =
            (1..=2).map(|i| lab_node(&format!("node-{i}"), "110", &format!("10.244.{i}.0/24"))).collect();
        let with_port = |ports: Value| -> PodSpec {
            serde_json::from_value(json!({"containers": [{"name": "c", "ports": ports}]})).unwrap()
        };
        let on = |node: &str, phase: &str, ports: Value| -> Arc<Pod> {
            let mut spec = with_port(ports);
            spec.node_name = Some(node.into());
            Arc::new(Pod {
                spec: Some(spec),
                status: serde_json::from_value(json!({"phase": phase})).unwrap(),
                ..Default::default()
            })
        };
        // node-1 is emptier, but its 8080/TCP is taken.
        let pods = vec![
            on("node-1", "Running", json!([{"containerPort": 8080, "hostPort": 8080}])),
            on("node-2", "Running", json!([])),
            on("node-2", "Running", json!([])),
        ];
        let want = with_port(json!([{"containerPort": 8080, "hostPort": 8080}]));
        assert_eq!(plan_schedule(&nodes, &pods, &want), Ok("node-2".into()));
        // Another protocol, or another address of the node than the taken one, is free.
        assert_eq!(
            plan_schedule(
                &nodes,
                &pods,
                &with_port(json!([{"containerPort": 1, "hostPort": 8080, "protocol": "UDP"}]))
            ),
            Ok("node-1".into())
        );
        let on_ip =
            |ip: &str| on("node-1", "Running", json!([{"containerPort": 8080, "hostPort": 8080, "hostIP": ip}]));
        let specific = with_port(json!([{"containerPort": 8080, "hostPort": 8080, "hostIP": "172.18.0.10"}]));
        assert_eq!(plan_schedule(&nodes[..1], &[on_ip("172.18.0.11")], &specific), Ok("node-1".into()));
        assert_eq!(plan_schedule(&nodes[..1], &[on_ip("172.18.0.10")], &specific).map_err(|_| ()), Err(()));
        // A finished pod holds no port; taken everywhere, the pod waits, saying why.
        assert_eq!(
            plan_schedule(
                &nodes[..1],
                &[on("node-1", "Succeeded", json!([{"containerPort": 8080, "hostPort": 8080}]))],
                &want
            ),
            Ok("node-1".into())
        );
        assert_eq!(
            plan_schedule(&nodes[..1], &pods, &want),
            Err("0/1 nodes are available: 1 node(s) didn't have free ports for the requested pod ports.".into())
        );
    }

    #[test]
    fn node_affinity_pins_a_pod_to_its_node() {
        let nodes: Vec<Arc<Node>> =
            (1..=3).map(|i| lab_node(&format!("node-{i}"), "110", &format!("10.244.{i}.0/24"))).collect();
        let spec = daemonset::pod_spec_for(&PodSpec::default(), "node-3");
        assert_eq!(plan_schedule(&nodes, &[], &spec), Ok("node-3".into()));
        let spec = daemonset::pod_spec_for(&PodSpec::default(), "node-9");
        assert_eq!(
            plan_schedule(&nodes, &[], &spec),
            Err("0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector.".into())
        );
    }

    #[test]
    fn pod_cidrs_are_distinct_slices() {
        let c: Ipv4Net = "10.244.0.0/16".parse().unwrap();
        let a = plan_pod_cidr(c, 24, &[]).unwrap();
        assert_eq!(a.to_string(), "10.244.0.0/24");
        let b = plan_pod_cidr(c, 24, &[a]).unwrap();
        assert_eq!(b.to_string(), "10.244.1.0/24");
        assert!(plan_pod_cidr("10.244.0.0/24".parse().unwrap(), 24, &[a]).is_none());
    }

    #[test]
    fn template_hash_is_stable_and_safe() {
        let h = template_hash(&json!({"spec": {"containers": [{"name": "n"}]}}));
        assert_eq!(h, template_hash(&json!({"spec": {"containers": [{"name": "n"}]}})));
        assert_ne!(h, template_hash(&json!({"spec": {"containers": [{"name": "m"}]}})));
        assert!(h.chars().all(|c| c.is_ascii_alphanumeric()) && h.len() == 10);
    }
}
