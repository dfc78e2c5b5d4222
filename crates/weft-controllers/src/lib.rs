//! The control loops a lab needs besides the API server (in a real cluster these are
//! kube-scheduler and kube-controller-manager): a scheduler, node IPAM (a podCIDR per node), and
//! the Deployment -> ReplicaSet -> Pod and ReplicationController -> Pod controllers.
//!
//! Each loop is level-triggered: reflectors keep caches of the objects, any change wakes a pass
//! that compares desired with actual and writes the difference through the API (so these loops
//! are kube-rs clients like any other, and work against a real API server too). Each controller
//! is a loop of its own ([`weft_watch::Controller`]), so one that fails or panics does not stop
//! the others. The decisions are pure functions (`plan_*`), tested without a server.

pub mod endpoints;
pub mod gc;
pub mod lb;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, ReplicationController, Service, Toleration};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use weft_k8s::pods::{is_finished, is_ready};
use weft_watch::{Controller, Wake};

fn is_active(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none() && !is_finished(p)
}

fn owned_by(p: &Pod, uid: &str) -> bool {
    p.metadata.owner_references.iter().flatten().any(|o| o.uid == uid && o.controller == Some(true))
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

/// Scheduler decision for a pod with `tolerations`: the node it fits (see
/// [`weft_k8s::nodes::fit`]: not cordoned, Ready, no untolerated taint) with room (see
/// [`node_pod_capacity`]) and the fewest active pods (ties by name); or, when no node fits,
/// the reason in kube-scheduler's words ("0/3 nodes are available: 3 Too many pods.").
pub fn plan_schedule(nodes: &[Arc<Node>], pods: &[Arc<Pod>], tolerations: &[Toleration]) -> Result<String, String> {
    let mut load: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for p in pods {
        if let Some(n) = p.spec.as_ref().and_then(|s| s.node_name.as_ref()) {
            let e = load.entry(n.clone()).or_default();
            e.0 += usize::from(is_active(p));
            e.1 += usize::from(holds_place(p));
        }
    }
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut best: Option<(usize, String)> = None;
    for n in nodes {
        let name = n.name_any();
        let (active, placed) = load.get(&name).copied().unwrap_or_default();
        let why = match weft_k8s::nodes::fit(n, tolerations) {
            Err(unfit) => Some(unfit.to_string()),
            Ok(()) if placed >= node_pod_capacity(n) => Some("Too many pods".to_string()),
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

/// Node IPAM decision: the lowest /`size` of `cluster` no node holds.
pub fn plan_pod_cidr(cluster: Ipv4Net, size: u8, taken: &[Ipv4Net]) -> Option<Ipv4Net> {
    cluster.subnets(size).ok()?.find(|s| !taken.iter().any(|t| t.contains(&s.network()) || s.contains(&t.network())))
}

/// Which pods a replica controller deletes when it has too many: unscheduled first, then not
/// ready, then the newest.
pub fn plan_scale_down(mut pods: Vec<Arc<Pod>>, n: usize) -> Vec<Arc<Pod>> {
    pods.sort_by_key(|p| {
        let scheduled = p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
        let created = p.metadata.creation_timestamp.as_ref().map(|t| t.0.as_second()).unwrap_or(0);
        (scheduled, is_ready(p), std::cmp::Reverse(created))
    });
    pods.into_iter().take(n).collect()
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
struct Ctx {
    client: kube::Client,
    cfg: Config,
    pods: Store<Pod>,
    nodes: Store<Node>,
    rss: Store<ReplicaSet>,
    deploys: Store<Deployment>,
    rcs: Store<ReplicationController>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    endpoints: Store<Endpoints>,
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
    loops.spawn(controller("replicas").run(async move || replicas(&mut c).await));
    let mut c = ctx.clone();
    loops.spawn(controller("scheduler").run(async move || schedule(&mut c).await));
    let c = ctx.clone();
    loops.spawn(controller("endpoints").run(async move || {
        endpoints::reconcile(&c.client, &c.services.state(), &c.pods.state(), &c.slices.state(), &c.endpoints.state())
            .await
    }));
    let c = ctx.clone();
    loops.spawn(controller("loadbalancer").run(async move || lb::reconcile(&c.client, &c.services.state()).await));
    let mut c = ctx;
    loops.spawn(controller("garbage-collector").run(async move || garbage_collect(&mut c).await));
    while loops.join_next().await.is_some() {}
}

/// The Deployment, ReplicaSet and ReplicationController controllers.
async fn replicas(ctx: &mut Ctx) -> anyhow::Result<()> {
    deployments(ctx).await?;
    let rss: Vec<Arc<ReplicaSet>> = ctx.rss.state();
    for rs in rss {
        let sel = rs.spec.selector.clone();
        let replicas = rs.spec.replicas.unwrap_or(1);
        let template = rs.spec.template.clone();
        replicas_of(ctx, &*rs, "apps/v1", "ReplicaSet", replicas, template, sel).await?;
    }
    let rcs: Vec<Arc<ReplicationController>> = ctx.rcs.state();
    for rc in rcs {
        let sel =
            LabelSelector { match_labels: rc.spec.as_ref().and_then(|s| s.selector.clone()), match_expressions: None };
        let replicas = rc.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let template = rc.spec.as_ref().and_then(|s| s.template.clone());
        replicas_of(ctx, &*rc, "v1", "ReplicationController", replicas, template, sel).await?;
    }
    Ok(())
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
    let caches = gc::Caches {
        pods: &pods,
        rss: &rss,
        slices: &slices,
        deploys: &deploys,
        rcs: &rcs,
        services: &services,
        endpoints: &endpoints,
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
        let tolerations = p.spec.as_ref().and_then(|s| s.tolerations.as_deref()).unwrap_or_default();
        let node = match plan_schedule(&nodes, &pods, tolerations) {
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
        match api
            .patch(&p.name_any(), &PatchParams::default(), &Patch::Merge(json!({"spec": {"nodeName": node}})))
            .await
        {
            Ok(bound) => {
                // Count it at once so the next pod of the burst goes elsewhere.
                pods.retain(|x| x.metadata.uid != bound.metadata.uid);
                pods.push(Arc::new(bound));
            }
            Err(e) => tracing::debug!(pod = %p.name_any(), error = %e, "bind"),
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn replicas_of<K: Resource<DynamicType = ()>>(
    ctx: &mut Ctx,
    owner: &K,
    api_version: &str,
    kind: &str,
    replicas: i32,
    template: Option<k8s_openapi::api::core::v1::PodTemplateSpec>,
    selector: LabelSelector,
) -> anyhow::Result<()> {
    let uid = owner.meta().uid.clone().unwrap_or_default();
    let ns = owner.meta().namespace.clone().unwrap_or_default();
    let name = owner.meta().name.clone().unwrap_or_default();
    let pods: Vec<Arc<Pod>> = ctx.pods.state().into_iter().filter(|p| is_active(p) && owned_by(p, &uid)).collect();
    if let Some((n, until)) = ctx.expect.get(&uid) {
        if pods.len() < *n && Instant::now() < *until {
            return Ok(());
        }
        ctx.expect.remove(&uid);
    }
    let want = replicas.max(0) as usize;
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    if pods.len() < want {
        let Some(t) = template else { return Ok(()) };
        let mut labels = t.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
        if labels.is_empty() {
            labels = selector.match_labels.clone().unwrap_or_default();
        }
        let owner_ref = OwnerReference {
            api_version: api_version.into(),
            kind: kind.into(),
            name: name.clone(),
            uid: uid.clone(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        for _ in pods.len()..want {
            let mut pod = Pod { spec: t.spec.clone(), ..Default::default() };
            pod.metadata.generate_name = Some(format!("{name}-"));
            pod.metadata.labels = Some(labels.clone());
            pod.metadata.annotations = t.metadata.as_ref().and_then(|m| m.annotations.clone());
            pod.metadata.owner_references = Some(vec![owner_ref.clone()]);
            api.create(&PostParams::default(), &pod).await?;
        }
        ctx.expect.insert(uid.clone(), (want, Instant::now() + Duration::from_secs(5)));
    } else if pods.len() > want {
        for p in plan_scale_down(pods.clone(), pods.len() - want) {
            let _ = api.delete(&p.name_any(), &DeleteParams::default()).await;
        }
    }
    let live: Vec<&Arc<Pod>> = pods.iter().collect();
    let ready = live.iter().filter(|p| is_ready(p)).count().min(want.max(live.len()));
    let status = json!({"status": {
        "replicas": live.len().min(want.max(live.len())),
        "fullyLabeledReplicas": live.len(),
        "readyReplicas": ready,
        "availableReplicas": ready,
        "observedGeneration": owner.meta().generation,
    }});
    patch_status_if_changed(ctx, api_version, kind, &ns, &name, status).await
}

async fn patch_status_if_changed(
    ctx: &Ctx,
    api_version: &str,
    kind: &str,
    ns: &str,
    name: &str,
    status: Value,
) -> anyhow::Result<()> {
    let current = match kind {
        "ReplicaSet" => ctx
            .rss
            .state()
            .into_iter()
            .find(|r| r.name_any() == name && r.namespace().as_deref() == Some(ns))
            .and_then(|r| serde_json::to_value(&r.status).ok()),
        "ReplicationController" => ctx
            .rcs
            .state()
            .into_iter()
            .find(|r| r.name_any() == name && r.namespace().as_deref() == Some(ns))
            .and_then(|r| serde_json::to_value(&r.status).ok()),
        _ => ctx
            .deploys
            .state()
            .into_iter()
            .find(|r| r.name_any() == name && r.namespace().as_deref() == Some(ns))
            .and_then(|r| serde_json::to_value(&r.status).ok()),
    };
    let same = current.as_ref().is_some_and(|c| {
        status["status"].as_object().into_iter().flatten().all(|(k, v)| {
            let cur = c.get(k).cloned().unwrap_or(Value::Null);
            cur == *v || (v.as_i64() == Some(0) && cur.is_null())
        })
    });
    if same {
        return Ok(());
    }
    let gvk_api: Api<kube::api::DynamicObject> = Api::namespaced_with(
        ctx.client.clone(),
        ns,
        &kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
            api_version.split('/').next().filter(|_| api_version.contains('/')).unwrap_or(""),
            api_version.rsplit('/').next().unwrap_or("v1"),
            kind,
        )),
    );
    gvk_api.patch_status(name, &PatchParams::default(), &Patch::Merge(status)).await?;
    Ok(())
}

async fn deployments(ctx: &mut Ctx) -> anyhow::Result<()> {
    let deploys: Vec<Arc<Deployment>> = ctx.deploys.state();
    for d in deploys {
        let ns = d.namespace().unwrap_or_default();
        let name = d.name_any();
        let uid = d.metadata.uid.clone().unwrap_or_default();
        let spec = d.spec.clone();
        let replicas = spec.replicas.unwrap_or(1);
        let hash = template_hash(&serde_json::to_value(&spec.template).unwrap_or_default());
        let rs_name = format!("{name}-{hash}");
        let owned: Vec<Arc<ReplicaSet>> = ctx
            .rss
            .state()
            .into_iter()
            .filter(|r| {
                r.metadata.owner_references.iter().flatten().any(|o| o.uid == uid && o.controller == Some(true))
            })
            .collect();
        let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
        let new = owned.iter().find(|r| r.name_any() == rs_name).cloned();
        match &new {
            None => {
                let mut t = spec.template.clone();
                let mut labels = t.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
                labels.insert(weft_k8s::labels::POD_TEMPLATE_HASH.into(), hash.clone());
                t.metadata.get_or_insert_with(Default::default).labels = Some(labels.clone());
                let mut sel = spec.selector.clone();
                sel.match_labels
                    .get_or_insert_with(Default::default)
                    .insert(weft_k8s::labels::POD_TEMPLATE_HASH.into(), hash.clone());
                let rs = json!({
                    "apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "metadata": {"name": rs_name, "namespace": ns, "labels": labels,
                        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": name, "uid": uid,
                                             "controller": true, "blockOwnerDeletion": true}]},
                    "spec": {"replicas": replicas, "selector": sel, "template": t},
                });
                let rs: ReplicaSet = serde_json::from_value(rs)?;
                match api.create(&PostParams::default(), &rs).await {
                    Ok(_) | Err(kube::Error::Api(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Some(rs) if rs.spec.replicas != Some(replicas) => {
                api.patch(&rs_name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": replicas}})))
                    .await?;
            }
            _ => {}
        }
        // Old ReplicaSets go to zero (the lab rolls out at once).
        for old in owned.iter().filter(|r| r.name_any() != rs_name) {
            if old.spec.replicas.unwrap_or(0) != 0 {
                api.patch(&old.name_any(), &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 0}})))
                    .await?;
            }
        }
        let sum = |f: fn(&k8s_openapi::api::apps::v1::ReplicaSetStatus) -> Option<i32>| -> i32 {
            owned.iter().filter_map(|r| r.status.as_ref().and_then(f)).sum()
        };
        let updated = new.as_ref().and_then(|r| r.status.as_ref()).map(|s| s.replicas).unwrap_or(0);
        let available = sum(|s| s.available_replicas);
        let status = json!({"status": {
            "replicas": sum(|s| Some(s.replicas)),
            "updatedReplicas": updated,
            "readyReplicas": sum(|s| s.ready_replicas),
            "availableReplicas": available,
            "observedGeneration": d.metadata.generation,
        }});
        patch_status_if_changed(ctx, "apps/v1", "Deployment", &ns, &name, status).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod without tolerations.
    fn schedule_plain(nodes: &[Arc<Node>], pods: &[Arc<Pod>]) -> Result<String, String> {
        plan_schedule(nodes, pods, &[])
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
        let tolerates: Toleration = serde_json::from_value(json!({"key": "gpu", "operator": "Exists"})).unwrap();
        assert_eq!(plan_schedule(&nodes, &[], &[tolerates]), Ok("node-1".into()));
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

    #[test]
    fn scale_down_prefers_unscheduled() {
        let a = pod(Some("n"));
        let b = pod(None);
        let out = plan_scale_down(vec![a.clone(), b.clone()], 1);
        assert!(out[0].spec.as_ref().unwrap().node_name.is_none());
    }
}
