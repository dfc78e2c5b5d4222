//! The DaemonSet controller, as kube-controller-manager's (`pkg/controller/daemon`): one pod per
//! node that the template's nodeSelector, required node affinity and tolerations allow (with
//! the tolerations Kubernetes adds to every daemon pod), each made pinned to its node by node
//! affinity (`matchFields` `metadata.name`) for the scheduler to bind; pods of nodes that should
//! not run one are deleted, failed ones replaced; updates roll with RollingUpdate (maxUnavailable
//! and maxSurge, both rounded up against the nodes that should run a pod) or wait for the user
//! (OnDelete); the template history is kept as ControllerRevisions; status as kube reports it.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodSpec, Toleration,
};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use crate::Ctx;
use crate::affinity::{node_matches, target_node};
use crate::history::{self, REVISION_HASH};
use crate::workload::{controller_ref, is_active, is_available, patch_status, pod_from_template, pods_of, scaled};

/// The tolerations the DaemonSet controller adds to its pods (kube's
/// `AddOrUpdateDaemonPodTolerations`; `network-unavailable` only with hostNetwork).
pub fn daemon_tolerations(spec: &PodSpec) -> Vec<Toleration> {
    let mut out = spec.tolerations.clone().unwrap_or_default();
    let mut add = |key: &str, effect: &str| {
        if !out.iter().any(|t| t.key.as_deref() == Some(key) && t.effect.as_deref() == Some(effect)) {
            out.push(Toleration {
                key: Some(key.into()),
                operator: Some("Exists".into()),
                effect: Some(effect.into()),
                ..Default::default()
            });
        }
    };
    add("node.kubernetes.io/not-ready", "NoExecute");
    add("node.kubernetes.io/unreachable", "NoExecute");
    add("node.kubernetes.io/disk-pressure", "NoSchedule");
    add("node.kubernetes.io/memory-pressure", "NoSchedule");
    add("node.kubernetes.io/pid-pressure", "NoSchedule");
    add("node.kubernetes.io/unschedulable", "NoSchedule");
    if spec.host_network == Some(true) {
        add("node.kubernetes.io/network-unavailable", "NoSchedule");
    }
    out
}

/// Should a daemon pod of `spec` run on `node` (kube's `NodeShouldRunDaemonPod`)? Its selector
/// and affinity match, and every NoSchedule/NoExecute taint the node carries is tolerated.
/// (Readiness is no question: daemon pods go to nodes that are not ready too.)
pub fn should_run(spec: &PodSpec, node: &Node) -> bool {
    if !node_matches(spec, node) {
        return false;
    }
    let tolerations = daemon_tolerations(spec);
    node.spec.as_ref().and_then(|s| s.taints.as_ref()).into_iter().flatten().all(|taint| {
        !(taint.effect == "NoSchedule" || taint.effect == "NoExecute")
            || tolerations.iter().any(|t| weft_k8s::nodes::tolerates(t, taint))
    })
}

/// The pod spec of the daemon pod for `node`: the template's, with the added tolerations and a
/// required node affinity naming only this node (kube's `ReplaceDaemonSetPodNodeNameNodeAffinity`).
pub fn pod_spec_for(template: &PodSpec, node: &str) -> PodSpec {
    let mut s = template.clone();
    s.tolerations = Some(daemon_tolerations(template));
    let term = NodeSelectorTerm {
        match_expressions: None,
        match_fields: Some(vec![NodeSelectorRequirement {
            key: "metadata.name".into(),
            operator: "In".into(),
            values: Some(vec![node.into()]),
        }]),
    };
    let affinity = s.affinity.get_or_insert_with(Affinity::default);
    let na = affinity.node_affinity.get_or_insert_with(NodeAffinity::default);
    na.required_during_scheduling_ignored_during_execution = Some(NodeSelector { node_selector_terms: vec![term] });
    s
}

/// A daemon pod as the plan sees it.
#[derive(Clone, Debug)]
pub struct DaemonPod {
    pub name: String,
    pub node: Option<String>,
    /// Not finished, not terminating.
    pub active: bool,
    pub terminating: bool,
    pub failed: bool,
    pub ready: bool,
    pub available: bool,
    /// Of the current template.
    pub updated: bool,
    pub created: i64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct DsPlan {
    /// Nodes that get a new pod.
    pub create: Vec<String>,
    /// Pods to delete.
    pub delete: Vec<String>,
}

/// One pass of the DaemonSet controller. `nodes`: (name, should run a pod); `rolling`:
/// Some((maxSurge, maxUnavailable)) for RollingUpdate, as given (resolved here), None for OnDelete.
pub fn plan(
    nodes: &[(String, bool)],
    pods: &[DaemonPod],
    rolling: Option<(
        Option<&k8s_openapi::apimachinery::pkg::util::intstr::IntOrString>,
        Option<&k8s_openapi::apimachinery::pkg::util::intstr::IntOrString>,
    )>,
) -> DsPlan {
    let mut out = DsPlan::default();
    let desired = nodes.iter().filter(|(_, r)| *r).count() as i32;
    // Pods whose node is gone, or not one that should run them.
    for p in pods {
        let keep = p.node.as_ref().is_some_and(|n| nodes.iter().any(|(name, run)| name == n && *run));
        if !keep && !p.terminating {
            out.delete.push(p.name.clone());
        }
    }
    let (surge, unavailable) = match rolling {
        Some((s, u)) => {
            let s = scaled(s, desired, true);
            let mut u = scaled(u, desired, true);
            if s == 0 && u == 0 {
                u = 1;
            }
            (s, u)
        }
        None => (0, 0),
    };
    // Per node that should run a pod: its pods, oldest first.
    let mut per_node: Vec<(String, Vec<&DaemonPod>)> = vec![];
    for (node, run) in nodes {
        if !*run {
            continue;
        }
        let mut on: Vec<&DaemonPod> = pods.iter().filter(|p| p.node.as_deref() == Some(node)).collect();
        on.sort_by_key(|p| (p.created, p.name.clone()));
        per_node.push((node.clone(), on));
    }
    // Nodes without an available pod count against maxUnavailable.
    let mut unavailable_nodes = 0;
    let mut candidates: Vec<&DaemonPod> = vec![];
    let mut surge_candidates: Vec<(&str, &DaemonPod)> = vec![];
    let mut surging = 0;
    for (node, on) in &per_node {
        let active: Vec<&&DaemonPod> = on.iter().filter(|p| p.active).collect();
        for p in on.iter().filter(|p| p.failed && !p.terminating) {
            // A failed daemon pod is replaced (kube deletes it and makes another).
            out.delete.push(p.name.clone());
        }
        if active.is_empty() {
            // Wait for a terminating pod to go before making its successor.
            if !on.iter().any(|p| p.terminating) {
                out.create.push(node.clone());
            }
            unavailable_nodes += 1;
            continue;
        }
        let new: Vec<&&&DaemonPod> = active.iter().filter(|p| p.updated).collect();
        let old: Vec<&&&DaemonPod> = active.iter().filter(|p| !p.updated).collect();
        if !active.iter().any(|p| p.available) {
            unavailable_nodes += 1;
        }
        if rolling.is_none() || surge == 0 {
            // One pod a node: the oldest stays.
            for extra in active.iter().skip(1) {
                out.delete.push(extra.name.clone());
            }
            if rolling.is_some()
                && let Some(o) = old.first()
                && active.len() == 1
            {
                if !o.available {
                    // An old pod that is not available anyway goes at once.
                    out.delete.push(o.name.clone());
                } else {
                    candidates.push(o);
                }
            }
        } else {
            match (new.first(), old.first()) {
                // The new pod is up: the old ones go.
                (Some(n), Some(_)) if n.available => {
                    out.delete.extend(old.iter().map(|o| o.name.clone()));
                }
                (Some(_), Some(_)) => surging += 1,
                (None, Some(o)) => {
                    if !o.available {
                        out.delete.push(o.name.clone());
                    } else {
                        surge_candidates.push((node, o));
                    }
                }
                _ => {
                    for extra in active.iter().skip(1) {
                        out.delete.push(extra.name.clone());
                    }
                }
            }
        }
    }
    if rolling.is_some() {
        if surge == 0 {
            let budget = (unavailable - unavailable_nodes).max(0) as usize;
            out.delete.extend(candidates.iter().take(budget).map(|p| p.name.clone()));
        } else {
            let budget = (surge - surging).max(0) as usize;
            out.create.extend(surge_candidates.iter().take(budget).map(|(n, _)| n.to_string()));
        }
    }
    out.delete.sort();
    out.delete.dedup();
    out
}

/// The status of a DaemonSet from its nodes and pods (kube's `updateDaemonSetStatus`).
pub fn plan_status(nodes: &[(String, bool)], pods: &[DaemonPod], generation: Option<i64>) -> Value {
    let (mut desired, mut current, mut misscheduled, mut ready, mut available, mut updated) = (0, 0, 0, 0, 0, 0);
    for (node, run) in nodes {
        let on: Vec<&DaemonPod> = pods.iter().filter(|p| p.active && p.node.as_deref() == Some(node)).collect();
        if *run {
            desired += 1;
            if !on.is_empty() {
                current += 1;
                // kube looks at the oldest pod of the node.
                let mut on = on.clone();
                on.sort_by_key(|p| (p.created, p.name.clone()));
                if on[0].ready {
                    ready += 1;
                }
                if on[0].available {
                    available += 1;
                }
                if on.iter().any(|p| p.updated) {
                    updated += 1;
                }
            }
        } else if !on.is_empty() {
            misscheduled += 1;
        }
    }
    json!({
        "desiredNumberScheduled": desired,
        "currentNumberScheduled": current,
        "numberMisscheduled": misscheduled,
        "numberReady": ready,
        "numberAvailable": available,
        "numberUnavailable": desired - available,
        "updatedNumberScheduled": updated,
        "observedGeneration": crate::observed(generation),
    })
}

/// One pass over every DaemonSet.
pub(crate) async fn reconcile(ctx: &mut Ctx) -> anyhow::Result<()> {
    let nodes = ctx.nodes.state();
    let pods = ctx.pods.state();
    let revs = ctx.revisions.state();
    for ds in ctx.daemonsets.state() {
        if ds.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if let Err(e) = one(ctx, &ds, &nodes, &pods, &revs).await {
            tracing::warn!(daemonset = %format!("{}/{}", ds.namespace().unwrap_or_default(), ds.name_any()), error = %e, "daemonset");
        }
    }
    Ok(())
}

async fn one(
    ctx: &Ctx,
    ds: &DaemonSet,
    nodes: &[Arc<Node>],
    pods: &[Arc<Pod>],
    revs: &[Arc<k8s_openapi::api::apps::v1::ControllerRevision>],
) -> anyhow::Result<()> {
    let ns = ds.namespace().unwrap_or_default();
    let name = ds.name_any();
    let uid = ds.metadata.uid.clone().unwrap_or_default();
    let spec = &ds.spec;
    let tspec = spec.template.spec.clone().unwrap_or_default();
    let owned_revs = history::owned_by(revs, &uid);
    let owner = history::Owner {
        kind: "DaemonSet",
        namespace: &ns,
        name: &name,
        uid: &uid,
        template: &spec.template,
        annotations: ds.annotations(),
    };
    let (rev_name, _, hash) = history::sync(&ctx.client, &owner, &owned_revs).await?;
    let now = Timestamp::now();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let mine = pods_of(pods, &uid);
    let view: Vec<DaemonPod> = mine
        .iter()
        .map(|p| DaemonPod {
            name: p.name_any(),
            node: p.spec.as_ref().and_then(target_node),
            active: is_active(p),
            terminating: p.metadata.deletion_timestamp.is_some(),
            failed: p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed"),
            ready: weft_k8s::pods::is_ready(p),
            available: is_available(p, min_ready, now),
            updated: p.labels().get(REVISION_HASH) == Some(&hash),
            created: p.metadata.creation_timestamp.as_ref().map(|t| t.0.as_second()).unwrap_or(0),
        })
        .collect();
    let node_view: Vec<(String, bool)> = nodes.iter().map(|n| (n.name_any(), should_run(&tspec, n))).collect();
    let st = spec.update_strategy.clone().unwrap_or_default();
    let ru = st.rolling_update.clone().unwrap_or_default();
    let rolling =
        (st.type_.as_deref() != Some("OnDelete")).then_some((ru.max_surge.as_ref(), ru.max_unavailable.as_ref()));
    let step = plan(&node_view, &view, rolling);
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let events = &ctx.events.daemonset;
    for node in &step.create {
        let mut extra = BTreeMap::new();
        extra.insert(REVISION_HASH.to_string(), hash.clone());
        let mut pod = pod_from_template(&spec.template, controller_ref("apps/v1", "DaemonSet", &name, &uid), &extra);
        pod.spec = Some(pod_spec_for(&tspec, node));
        pod.metadata.generate_name = Some(format!("{name}-"));
        match api.create(&PostParams::default(), &pod).await {
            Ok(made) => events.normal(
                ds.object_ref(&()),
                "SuccessfulCreate",
                "Create",
                format!("Created pod: {}", made.name_any()),
            ),
            Err(e) => {
                events.warning(ds.object_ref(&()), "FailedCreate", "Create", format!("Error creating: {e}"));
                return Err(e.into());
            }
        }
    }
    for victim in &step.delete {
        match api.delete(victim, &DeleteParams::default()).await {
            Ok(_) => events.normal(ds.object_ref(&()), "SuccessfulDelete", "Delete", format!("Deleted pod: {victim}")),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => tracing::debug!(pod = %victim, error = %e, "daemon pod delete"),
        }
    }
    let in_use: Vec<String> =
        mine.iter().filter_map(|p| p.labels().get(REVISION_HASH).map(|h| format!("{name}-{h}"))).collect();
    history::cleanup(&ctx.client, &ns, &owned_revs, spec.revision_history_limit.unwrap_or(10), &[&rev_name], &in_use)
        .await;
    let status = plan_status(&node_view, &view, ds.metadata.generation);
    let current = ds.status.as_ref().and_then(|s| serde_json::to_value(s).ok());
    patch_status(&ctx.client, ("apps", "v1", "DaemonSet"), &ns, &name, current.as_ref(), status).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    fn dp(name: &str, node: &str, updated: bool, available: bool) -> DaemonPod {
        DaemonPod {
            name: name.into(),
            node: Some(node.into()),
            active: true,
            terminating: false,
            failed: false,
            ready: available,
            available,
            updated,
            created: 0,
        }
    }
    fn nodes(n: usize) -> Vec<(String, bool)> {
        (1..=n).map(|i| (format!("node-{i}"), true)).collect()
    }

    #[test]
    fn one_pod_per_node_that_should_run_one() {
        let mut ns = nodes(3);
        ns.push(("tainted".into(), false));
        let pods =
            vec![dp("a", "node-1", true, true), dp("stray", "tainted", true, true), dp("gone", "node-9", true, true)];
        let p = plan(&ns, &pods, Some((None, Some(&IntOrString::Int(1)))));
        assert_eq!(p.create, ["node-2", "node-3"]);
        assert_eq!(p.delete, ["gone", "stray"]);
        let s = plan_status(&ns, &pods, Some(1));
        assert_eq!((s["desiredNumberScheduled"].as_i64(), s["currentNumberScheduled"].as_i64()), (Some(3), Some(1)));
        assert_eq!(s["numberMisscheduled"], 1);
    }

    #[test]
    fn rolling_update_respects_max_unavailable() {
        let ns = nodes(4);
        let mut pods: Vec<DaemonPod> =
            (1..=4).map(|i| dp(&format!("old-{i}"), &format!("node-{i}"), false, true)).collect();
        let one = IntOrString::Int(1);
        let p = plan(&ns, &pods, Some((None, Some(&one))));
        assert_eq!(p.delete, ["old-1"], "one node at a time");
        assert!(p.create.is_empty());
        // old-1 is gone, its replacement not available yet: nothing more goes.
        pods[0] = dp("new-1", "node-1", true, false);
        assert_eq!(plan(&ns, &pods, Some((None, Some(&one)))), DsPlan::default());
        pods[0].available = true;
        assert_eq!(plan(&ns, &pods, Some((None, Some(&one)))).delete, ["old-2"]);
        // OnDelete: nothing is replaced until the user deletes it.
        assert_eq!(plan(&ns, &pods, None), DsPlan::default());
    }

    #[test]
    fn surge_makes_the_new_pod_first() {
        let ns = nodes(2);
        let mut pods = vec![dp("old-1", "node-1", false, true), dp("old-2", "node-2", false, true)];
        let one = IntOrString::Int(1);
        let zero = IntOrString::Int(0);
        let p = plan(&ns, &pods, Some((Some(&one), Some(&zero))));
        assert_eq!(p.create, ["node-1"]);
        assert!(p.delete.is_empty());
        pods.push(dp("new-1", "node-1", true, true));
        let p = plan(&ns, &pods, Some((Some(&one), Some(&zero))));
        assert_eq!(p.delete, ["old-1"]);
        assert_eq!(p.create, ["node-2"]);
    }

    #[test]
    fn tolerations_are_added_and_nodes_filtered() {
        let spec: PodSpec = serde_json::from_value(json!({"containers": []})).unwrap();
        let t = daemon_tolerations(&spec);
        assert!(t.iter().any(|t| t.key.as_deref() == Some("node.kubernetes.io/unschedulable")));
        let cordoned: Node = serde_json::from_value(json!({"metadata": {"name": "n"},
            "spec": {"unschedulable": true, "taints": [{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]}}))
        .unwrap();
        assert!(should_run(&spec, &cordoned), "daemon pods go to cordoned nodes");
        let gpu: Node = serde_json::from_value(json!({"metadata": {"name": "n"},
            "spec": {"taints": [{"key": "gpu", "effect": "NoSchedule"}]}}))
        .unwrap();
        assert!(!should_run(&spec, &gpu));
        let s = pod_spec_for(&spec, "node-2");
        assert_eq!(target_node(&s).as_deref(), Some("node-2"));
    }
}
