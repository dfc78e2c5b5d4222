//! The Deployment controller, as kube-controller-manager's (`pkg/controller/deployment`): one
//! ReplicaSet per template (named `<deployment>-<pod-template-hash>`, found again by its
//! template, so `kubectl rollout undo` brings an old one back), rolled with RollingUpdate
//! (maxSurge rounded up, maxUnavailable down, availability with minReadySeconds) or Recreate,
//! paused with `spec.paused`, revisions in `deployment.kubernetes.io/revision`, old sets beyond
//! `revisionHistoryLimit` deleted once a rollout is complete, and the status with the Available
//! and Progressing conditions (progressDeadlineSeconds). Decisions are the pure `plan_*`
//! functions below; [`reconcile`] reads the caches and writes what they say.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use crate::Ctx;
use crate::workload::{controller_ref, patch_status, rfc3339, scaled, set_condition};

pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
/// Annotations of a Deployment not copied to its ReplicaSets (kube's `annotationsToSkip`).
const NOT_COPIED: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    "deployment.kubernetes.io/revision-history",
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];

/// A ReplicaSet as the rollout sees it: its spec replicas, its available pods (never more than
/// its spec: pods being deleted do not count), its age.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rs {
    pub name: String,
    pub replicas: i32,
    pub available: i32,
    pub created: i64,
    /// Its `desired-replicas` and `max-replicas` annotations: the Deployment size it was last
    /// scaled for (how a scaling event is recognised and shared out).
    pub desired_annotation: Option<i32>,
    pub max_annotation: Option<i32>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Strategy {
    Recreate,
    Rolling { max_surge: i32, max_unavailable: i32 },
}

/// The rollout strategy with maxSurge and maxUnavailable resolved against `spec.replicas` as
/// kube's `ResolveFenceposts`: surge rounded up, unavailable down, and never both 0.
pub fn strategy_of(d: &Deployment) -> Strategy {
    let desired = d.spec.replicas.unwrap_or(1);
    let st = d.spec.strategy.clone().unwrap_or_default();
    if st.type_.as_deref() == Some("Recreate") {
        return Strategy::Recreate;
    }
    let ru = st.rolling_update.unwrap_or_default();
    let default = k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("25%".into());
    let surge = scaled(Some(ru.max_surge.as_ref().unwrap_or(&default)), desired, true);
    let mut unavailable = scaled(Some(ru.max_unavailable.as_ref().unwrap_or(&default)), desired, false);
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    Strategy::Rolling { max_surge: surge, max_unavailable: unavailable }
}

/// What one pass does: create the new ReplicaSet with this many replicas, and set these
/// ReplicaSets to these replicas.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Step {
    pub create_new: Option<i32>,
    pub scale: Vec<(String, i32)>,
}

/// One step of a rollout to `desired` replicas (kube's `rolloutRolling` / `rolloutRecreate`).
/// `old_pods_running`: pods of the old sets that have not finished (Recreate waits for them).
pub fn plan_rollout(desired: i32, strategy: &Strategy, new: Option<&Rs>, old: &[Rs], old_pods_running: bool) -> Step {
    match strategy {
        Strategy::Recreate => plan_recreate(desired, new, old, old_pods_running),
        Strategy::Rolling { max_surge, max_unavailable } => {
            plan_rolling(desired, *max_surge, *max_unavailable, new, old)
        }
    }
}

fn plan_recreate(desired: i32, new: Option<&Rs>, old: &[Rs], old_pods_running: bool) -> Step {
    let mut step = Step::default();
    let down: Vec<(String, i32)> = old.iter().filter(|r| r.replicas > 0).map(|r| (r.name.clone(), 0)).collect();
    if !down.is_empty() {
        step.scale = down;
        return step;
    }
    if old_pods_running {
        return step;
    }
    match new {
        None => step.create_new = Some(desired),
        Some(n) if n.replicas != desired => step.scale.push((n.name.clone(), desired)),
        Some(_) => {}
    }
    step
}

fn plan_rolling(desired: i32, surge: i32, unavailable: i32, new: Option<&Rs>, old: &[Rs]) -> Step {
    let mut step = Step::default();
    let old_spec: i32 = old.iter().map(|r| r.replicas).sum();
    // kube's NewRSNewReplicas: grow the new set while all sets together stay within surge.
    // In i64: maxSurge may be any non-negative i32 (2147483647 for "no limit").
    let grown = |current_new: i32| {
        let (cur, desired) = (i64::from(current_new), i64::from(desired));
        let all = i64::from(old_spec) + cur;
        let max_total = desired + i64::from(surge);
        let to = if all >= max_total { cur } else { cur + (max_total - all).min(desired - cur).max(0) };
        i32::try_from(to).unwrap_or(i32::MAX)
    };
    let new = match new {
        None => {
            let n = grown(0);
            step.create_new = Some(n);
            Rs { name: String::new(), replicas: n, available: 0, created: i64::MAX, ..Rs::default() }
        }
        Some(n) if n.replicas > desired => {
            step.scale.push((n.name.clone(), desired));
            return step;
        }
        Some(n) => {
            let to = grown(n.replicas);
            if to != n.replicas {
                step.scale.push((n.name.clone(), to));
                return step;
            }
            n.clone()
        }
    };
    if old_spec == 0 {
        return step;
    }
    // kube's reconcileOldReplicaSets: never below desired - maxUnavailable available pods.
    let min_available = desired - unavailable;
    let all_spec = old_spec + new.replicas;
    let new_unavailable = new.replicas - new.available.min(new.replicas);
    let max_scaled_down = all_spec - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return step;
    }
    let mut olds: Vec<Rs> = old.to_vec();
    olds.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
    // First the old sets' unavailable pods, oldest set first.
    let mut done = 0;
    for r in olds.iter_mut() {
        if done >= max_scaled_down {
            break;
        }
        let healthy = r.available.min(r.replicas);
        if r.replicas == healthy {
            continue;
        }
        let down = (max_scaled_down - done).min(r.replicas - healthy);
        r.replicas -= down;
        done += down;
    }
    // Then available ones, as far as availability allows.
    let available: i32 =
        olds.iter().map(|r| r.available.min(r.replicas)).sum::<i32>() + new.available.min(new.replicas);
    if available > min_available {
        let mut budget = available - min_available;
        for r in olds.iter_mut() {
            if budget == 0 {
                break;
            }
            let down = r.replicas.min(budget);
            r.replicas -= down;
            budget -= down;
        }
    }
    for r in &olds {
        if let Some(o) = old.iter().find(|o| o.name == r.name)
            && o.replicas != r.replicas
        {
            step.scale.push((r.name.clone(), r.replicas));
        }
    }
    step
}

/// Is this a scaling event (kube's `isScalingEvent`): an active set was last scaled for
/// another Deployment size?
pub fn is_scaling_event(desired: i32, new: Option<&Rs>, old: &[Rs]) -> bool {
    new.into_iter().chain(old).filter(|r| r.replicas > 0).any(|r| r.desired_annotation.is_some_and(|a| a != desired))
}

/// A change of `spec.replicas` without a rollout, and all a paused Deployment does (kube's
/// `scale`): one active set (or none: the new one, else the newest) takes the new size; a
/// saturated new set leaves the old ones at zero; otherwise (RollingUpdate) the replicas to add
/// or remove are shared out in proportion to the sets' sizes (`max-replicas`), the bigger sets
/// first, the rounding leftover to the first. Every active set is in the step so that its
/// annotations follow the new size. `status_replicas`: the Deployment's, for a set without the
/// annotation.
pub fn plan_scale(desired: i32, surge: i32, rolling: bool, new: Option<&Rs>, old: &[Rs], status_replicas: i32) -> Step {
    let mut step = Step::default();
    let all: Vec<&Rs> = new.into_iter().chain(old.iter()).collect();
    let active: Vec<&Rs> = all.iter().copied().filter(|r| r.replicas > 0).collect();
    let single = match active.as_slice() {
        [one] => Some(*one),
        [] => new.or_else(|| old.iter().max_by_key(|r| (r.created, r.name.clone()))),
        _ => None,
    };
    if let Some(t) = single {
        if t.replicas != desired || t.desired_annotation != Some(desired) {
            step.scale.push((t.name.clone(), desired));
        }
        return step;
    }
    let saturated =
        new.is_some_and(|n| n.replicas == desired && n.desired_annotation == Some(desired) && n.available >= desired);
    if saturated {
        step.scale = old.iter().filter(|r| r.replicas > 0).map(|r| (r.name.clone(), 0)).collect();
        return step;
    }
    if !rolling {
        return step;
    }
    let mut sets: Vec<&Rs> = active;
    let total: i32 = sets.iter().map(|r| r.replicas).sum();
    let allowed = if desired > 0 { desired + surge } else { 0 };
    let to_add = allowed - total;
    // Bigger sets first; ties: newer first when growing, older first when shrinking.
    sets.sort_by(|a, b| {
        b.replicas.cmp(&a.replicas).then(if to_add > 0 { b.created.cmp(&a.created) } else { a.created.cmp(&b.created) })
    });
    let mut sizes: Vec<(String, i32)> = vec![];
    let mut added = 0;
    for r in &sets {
        let mut proportion = 0;
        if to_add != 0 && to_add != added && r.replicas > 0 {
            let fraction = if desired == 0 {
                -r.replicas
            } else {
                let annotated = r.max_annotation.unwrap_or(status_replicas).max(1);
                let size = f64::from(r.replicas) * f64::from(desired + surge) / f64::from(annotated);
                size.round() as i32 - r.replicas
            };
            let left = to_add - added;
            proportion = if to_add > 0 { fraction.min(left) } else { fraction.max(left) };
        }
        added += proportion;
        sizes.push((r.name.clone(), r.replicas + proportion));
    }
    if let Some(first) = sizes.first_mut() {
        first.1 = (first.1 + to_add - added).max(0);
    }
    step.scale = sizes;
    step
}

/// Old sets to delete for `revisionHistoryLimit` (kube's `cleanupDeployment`): of the old sets
/// beyond the limit, oldest revision first, those scaled to zero with no pods left. Input:
/// (name, revision, spec replicas, pods).
pub fn plan_history_cleanup(limit: i32, old: &[(String, i64, i32, i32)]) -> Vec<String> {
    let excess = old.len() as i64 - i64::from(limit.max(0));
    if excess <= 0 {
        return vec![];
    }
    let mut sorted: Vec<&(String, i64, i32, i32)> = old.iter().collect();
    sorted.sort_by_key(|r| (r.1, r.0.clone()));
    sorted.into_iter().take(excess as usize).filter(|r| r.2 == 0 && r.3 == 0).map(|r| r.0.clone()).collect()
}

fn revision_of(rs: &ReplicaSet) -> i64 {
    rs.annotations().get(REVISION).and_then(|r| r.parse().ok()).unwrap_or(0)
}

/// The template without the pod-template-hash label (how a ReplicaSet's template is compared
/// with its Deployment's: kube's `EqualIgnoreHash`).
fn without_hash(t: &PodTemplateSpec) -> Value {
    let mut t = t.clone();
    if let Some(l) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        l.remove(weft_k8s::labels::POD_TEMPLATE_HASH);
    }
    let mut v = serde_json::to_value(&t).unwrap_or_default();
    prune_empty(&mut v);
    v
}

/// Drops empty objects: an absent struct and an empty one are the same template, as Go's
/// semantic equality sees them (kubectl's `rollout undo` writes `resources: {}` back).
fn prune_empty(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for x in m.values_mut() {
                prune_empty(x);
            }
            m.retain(|_, x| !x.as_object().is_some_and(|o| o.is_empty()));
        }
        Value::Array(a) => a.iter_mut().for_each(prune_empty),
        _ => {}
    }
}

/// The Deployment's status from its sets' statuses, with the conditions as kube's
/// `syncRolloutStatus` sets them. `sets`: (spec replicas, replicas, ready, available, is new).
pub fn plan_status(
    d: &Deployment,
    new_name: Option<&str>,
    created_new: bool,
    sets: &[(i32, i32, i32, i32, bool)],
    now: Timestamp,
) -> Value {
    let desired = d.spec.replicas.unwrap_or(1);
    let spec_total: i32 = sets.iter().map(|s| s.0).sum();
    let replicas: i32 = sets.iter().map(|s| s.1).sum();
    let updated: i32 = sets.iter().filter(|s| s.4).map(|s| s.1).sum();
    let ready: i32 = sets.iter().map(|s| s.2).sum();
    let available: i32 = sets.iter().map(|s| s.3).sum();
    let old = d.status.clone().unwrap_or_default();
    let now_s = rfc3339(now);
    let mut conds: Vec<Value> = old.conditions.iter().flatten().filter_map(|c| serde_json::to_value(c).ok()).collect();
    let max_unavailable = match strategy_of(d) {
        Strategy::Rolling { max_unavailable, .. } if desired > 0 => max_unavailable.min(desired),
        _ => 0,
    };
    let cond = |ty: &str, status: &str, reason: &str, message: String| json!({"type": ty, "status": status, "reason": reason, "message": message, "lastUpdateTime": now_s});
    if available >= desired - max_unavailable {
        set_condition(
            &mut conds,
            cond("Available", "True", "MinimumReplicasAvailable", "Deployment has minimum availability.".into()),
            &now_s,
        );
    } else {
        set_condition(
            &mut conds,
            cond(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
            ),
            &now_s,
        );
    }
    let progressing = conds.iter().find(|c| c["type"] == "Progressing").cloned();
    let reason = progressing.as_ref().and_then(|c| c["reason"].as_str().map(String::from));
    let what = match new_name {
        Some(n) => format!("ReplicaSet {n:?}"),
        None => format!("Deployment {:?}", d.name_any()),
    };
    let deadline = d.spec.progress_deadline_seconds;
    if d.spec.paused == Some(true) {
        if reason.as_deref() != Some("DeploymentPaused") {
            set_condition(
                &mut conds,
                cond("Progressing", "Unknown", "DeploymentPaused", "Deployment is paused".into()),
                &now_s,
            );
        }
    } else if reason.as_deref() == Some("DeploymentPaused") {
        set_condition(
            &mut conds,
            cond("Progressing", "Unknown", "DeploymentResumed", "Deployment is resumed".into()),
            &now_s,
        );
    } else if deadline.is_some() {
        if created_new && let Some(n) = new_name {
            set_condition(
                &mut conds,
                cond("Progressing", "True", "NewReplicaSetCreated", format!("Created new replica set {n:?}")),
                &now_s,
            );
        } else if progressing.is_none()
            && let Some(n) = new_name
        {
            set_condition(
                &mut conds,
                cond("Progressing", "True", "FoundNewReplicaSet", format!("Found new replica set {n:?}")),
                &now_s,
            );
        }
        let current = conds.iter().find(|c| c["type"] == "Progressing").cloned();
        let complete_before =
            replicas == updated && current.as_ref().is_some_and(|c| c["reason"] == "NewReplicaSetAvailable");
        // (observedGeneration is the generation this pass writes.)
        let complete = updated == desired && replicas == desired && available == desired;
        let moved = updated > old.updated_replicas.unwrap_or(0)
            || (replicas - updated) < (old.replicas.unwrap_or(0) - old.updated_replicas.unwrap_or(0))
            || ready > old.ready_replicas.unwrap_or(0)
            || available > old.available_replicas.unwrap_or(0);
        if !complete_before {
            if complete {
                set_condition(
                    &mut conds,
                    cond(
                        "Progressing",
                        "True",
                        "NewReplicaSetAvailable",
                        format!("{what} has successfully progressed."),
                    ),
                    &now_s,
                );
            } else if moved {
                // Progress refreshes lastUpdateTime (the deadline counts from it).
                let mut c = cond("Progressing", "True", "ReplicaSetUpdated", format!("{what} is progressing."));
                c["lastTransitionTime"] = match &current {
                    Some(cur) if cur["status"] == "True" => cur["lastTransitionTime"].clone(),
                    _ => json!(now_s),
                };
                conds.retain(|c| c["type"] != "Progressing");
                conds.push(c);
            } else if let Some(cur) = &current {
                let timed_out = cur["reason"] == "ProgressDeadlineExceeded"
                    || cur["lastUpdateTime"]
                        .as_str()
                        .and_then(|t| t.parse::<Timestamp>().ok())
                        .is_some_and(|t| t.as_second() + i64::from(deadline.unwrap_or(600)) < now.as_second());
                if timed_out {
                    set_condition(
                        &mut conds,
                        cond(
                            "Progressing",
                            "False",
                            "ProgressDeadlineExceeded",
                            format!("{what} has timed out progressing."),
                        ),
                        &now_s,
                    );
                }
            }
        }
    } else {
        conds.retain(|c| c["type"] != "Progressing");
    }
    // kube keeps Available before Progressing.
    conds.sort_by_key(|c| if c["type"] == "Available" { 0 } else { 1 });
    json!({
        "replicas": replicas,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": available,
        "unavailableReplicas": (spec_total - available).max(0),
        "observedGeneration": d.metadata.generation,
        "conditions": conds,
    })
}

fn rs_view(r: &ReplicaSet) -> Rs {
    let spec = r.spec.replicas.unwrap_or(0);
    let ann = |k: &str| r.annotations().get(k).and_then(|v| v.parse().ok());
    Rs {
        desired_annotation: ann(DESIRED_REPLICAS),
        max_annotation: ann(MAX_REPLICAS),
        name: r.name_any(),
        replicas: spec,
        available: r.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0).min(spec),
        created: r.metadata.creation_timestamp.as_ref().map(|t| t.0.as_second()).unwrap_or(0),
    }
}

fn scaling_note(rs: &str, from: i32, to: i32) -> String {
    let dir = if to > from { "up" } else { "down" };
    format!("Scaled {dir} replica set {rs} from {from} to {to}")
}

/// One pass over every Deployment.
pub(crate) async fn reconcile(ctx: &mut Ctx) -> anyhow::Result<()> {
    let all_rss = ctx.rss.state();
    let pods = ctx.pods.state();
    for d in ctx.deploys.state() {
        if d.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if let Err(e) = one(ctx, &d, &all_rss, &pods).await {
            tracing::warn!(deployment = %format!("{}/{}", d.namespace().unwrap_or_default(), d.name_any()), error = %e, "deployment");
        }
    }
    Ok(())
}

async fn one(ctx: &Ctx, d: &Deployment, all_rss: &[Arc<ReplicaSet>], pods: &[Arc<Pod>]) -> anyhow::Result<()> {
    let ns = d.namespace().unwrap_or_default();
    let name = d.name_any();
    let uid = d.metadata.uid.clone().unwrap_or_default();
    let desired = d.spec.replicas.unwrap_or(1);
    let events = &ctx.events.deployment;
    let owned: Vec<Arc<ReplicaSet>> = all_rss
        .iter()
        .filter(|r| r.metadata.deletion_timestamp.is_none())
        .filter(|r| r.owner_references().iter().any(|o| o.uid == uid && o.controller == Some(true)))
        .cloned()
        .collect();
    let want = without_hash(&d.spec.template);
    // The oldest set with this template is the new one (kube's FindNewReplicaSet).
    let mut matching: Vec<&Arc<ReplicaSet>> =
        owned.iter().filter(|r| r.spec.template.as_ref().is_some_and(|t| without_hash(t) == want)).collect();
    matching.sort_by_key(|r| (r.metadata.creation_timestamp.as_ref().map(|t| t.0.as_second()), r.name_any()));
    let new_rs = matching.first().map(|r| (*r).clone());
    let old_rss: Vec<Arc<ReplicaSet>> =
        owned.iter().filter(|r| new_rs.as_ref().is_none_or(|n| n.metadata.uid != r.metadata.uid)).cloned().collect();
    let max_old_revision = old_rss.iter().map(|r| revision_of(r)).max().unwrap_or(0);
    let strategy = strategy_of(d);
    let surge = match strategy {
        Strategy::Rolling { max_surge, .. } => max_surge,
        Strategy::Recreate => 0,
    };
    let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    let olds: Vec<Rs> = old_rss.iter().map(|r| rs_view(r)).collect();
    let new_view = new_rs.as_ref().map(|r| rs_view(r));
    let paused = d.spec.paused == Some(true);
    let rolling = matches!(strategy, Strategy::Rolling { .. });
    let status_replicas = d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    let step = if paused || is_scaling_event(desired, new_view.as_ref(), &olds) {
        plan_scale(desired, surge, rolling, new_view.as_ref(), &olds, status_replicas)
    } else {
        let old_uids: Vec<&str> = old_rss.iter().filter_map(|r| r.metadata.uid.as_deref()).collect();
        let old_pods_running = pods.iter().any(|p| {
            !weft_k8s::pods::is_finished(p)
                && p.owner_references().iter().any(|o| o.controller == Some(true) && old_uids.contains(&o.uid.as_str()))
        });
        plan_rollout(desired, &strategy, new_view.as_ref(), &olds, old_pods_running)
    };
    // Annotations every set of this Deployment carries: the Deployment's own (change-cause and
    // all) and the replica counts the rollout aims at.
    let mut copied: BTreeMap<String, String> = d
        .annotations()
        .iter()
        .filter(|(k, _)| !NOT_COPIED.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    copied.insert(DESIRED_REPLICAS.into(), desired.to_string());
    copied.insert(MAX_REPLICAS.into(), (desired + surge).to_string());
    let mut created_new = false;
    let mut new_name = new_rs.as_ref().map(|r| r.name_any());
    let mut new_revision = new_rs.as_deref().map(revision_of).unwrap_or(0);
    if let Some(n) = step.create_new
        && new_rs.is_none()
    {
        let hash = crate::template_hash(&serde_json::to_value(&d.spec.template).unwrap_or_default());
        let rs_name = format!("{name}-{hash}");
        let mut t = d.spec.template.clone();
        let labels = t.metadata.get_or_insert_with(Default::default).labels.get_or_insert_with(Default::default);
        labels.insert(weft_k8s::labels::POD_TEMPLATE_HASH.into(), hash.clone());
        let labels = labels.clone();
        let mut sel = d.spec.selector.clone();
        sel.match_labels.get_or_insert_with(Default::default).insert(weft_k8s::labels::POD_TEMPLATE_HASH.into(), hash);
        let mut annotations = copied.clone();
        annotations.insert(REVISION.into(), (max_old_revision + 1).to_string());
        let mut rs = ReplicaSet::default();
        rs.metadata.name = Some(rs_name.clone());
        rs.metadata.namespace = Some(ns.clone());
        rs.metadata.labels = Some(labels);
        rs.metadata.annotations = Some(annotations);
        rs.metadata.owner_references = Some(vec![controller_ref("apps/v1", "Deployment", &name, &uid)]);
        rs.spec.replicas = Some(n);
        rs.spec.min_ready_seconds = d.spec.min_ready_seconds;
        rs.spec.selector = sel;
        rs.spec.template = Some(t);
        match api.create(&PostParams::default(), &rs).await {
            Ok(_) => {
                created_new = true;
                new_name = Some(rs_name.clone());
                new_revision = max_old_revision + 1;
                events.normal(d.object_ref(&()), "ScalingReplicaSet", "Scale", scaling_note(&rs_name, 0, n));
            }
            // Made by an earlier pass the cache does not show yet, or a hash collision: the
            // next pass sees it.
            Err(kube::Error::Api(s)) if s.code == 409 => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
    // The new set's revision is the newest (bumped when an old template comes back).
    if let Some(rs) = &new_rs {
        let mut want_ann = copied.clone();
        if new_revision <= max_old_revision {
            new_revision = max_old_revision + 1;
        }
        want_ann.insert(REVISION.into(), new_revision.to_string());
        let to = step.scale.iter().find(|(n, _)| *n == rs.name_any()).map(|(_, r)| *r);
        let stale = want_ann.iter().any(|(k, v)| rs.annotations().get(k) != Some(v))
            || rs.spec.min_ready_seconds != d.spec.min_ready_seconds;
        if stale || to.is_some() {
            let mut spec = json!({"minReadySeconds": d.spec.min_ready_seconds});
            if let Some(to) = to {
                spec["replicas"] = json!(to);
            }
            api.patch(
                &rs.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": want_ann}, "spec": spec})),
            )
            .await?;
            let from = rs.spec.replicas.unwrap_or(0);
            if let Some(to) = to.filter(|t| *t != from) {
                events.normal(d.object_ref(&()), "ScalingReplicaSet", "Scale", scaling_note(&rs.name_any(), from, to));
            }
        }
    }
    for (rs_name, to) in &step.scale {
        let Some(rs) = old_rss.iter().find(|r| r.name_any() == *rs_name) else { continue };
        let from = rs.spec.replicas.unwrap_or(0);
        let mut ann = serde_json::Map::new();
        ann.insert(DESIRED_REPLICAS.into(), json!(desired.to_string()));
        ann.insert(MAX_REPLICAS.into(), json!((desired + surge).to_string()));
        api.patch(
            rs_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": ann}, "spec": {"replicas": to}})),
        )
        .await?;
        if from != *to {
            events.normal(d.object_ref(&()), "ScalingReplicaSet", "Scale", scaling_note(rs_name, from, *to));
        }
    }
    // The Deployment carries its new set's revision.
    if new_revision > 0 && d.annotations().get(REVISION) != Some(&new_revision.to_string()) {
        let dapi: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
        dapi.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {REVISION: new_revision.to_string()}}})),
        )
        .await?;
    }
    // Status from the sets as the cache shows them (the next pass sees this pass's writes).
    let sets: Vec<(i32, i32, i32, i32, bool)> = owned
        .iter()
        .map(|r| {
            let s = r.status.clone().unwrap_or_default();
            let is_new = new_rs.as_ref().is_some_and(|n| n.metadata.uid == r.metadata.uid);
            (
                r.spec.replicas.unwrap_or(0),
                s.replicas,
                s.ready_replicas.unwrap_or(0),
                s.available_replicas.unwrap_or(0),
                is_new,
            )
        })
        .collect();
    let status = plan_status(d, new_name.as_deref(), created_new, &sets, Timestamp::now());
    // Old sets beyond the history limit go once the rollout is complete (or while paused).
    let complete = status["updatedReplicas"] == json!(desired)
        && status["replicas"] == json!(desired)
        && status["availableReplicas"] == json!(desired);
    if (complete || paused) && step.scale.is_empty() && !created_new {
        let hist: Vec<(String, i64, i32, i32)> = old_rss
            .iter()
            .map(|r| {
                let pods = r.status.as_ref().map(|s| s.replicas).unwrap_or(0);
                (r.name_any(), revision_of(r), r.spec.replicas.unwrap_or(0), pods)
            })
            .collect();
        for victim in plan_history_cleanup(d.spec.revision_history_limit.unwrap_or(10), &hist) {
            let Some(rs) = old_rss.iter().find(|r| r.name_any() == victim) else { continue };
            let dp = DeleteParams {
                preconditions: Some(Preconditions { uid: rs.metadata.uid.clone(), resource_version: None }),
                ..DeleteParams::background()
            };
            match api.delete(&victim, &dp).await {
                Ok(_) | Err(kube::Error::Api(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    let current = d.status.as_ref().and_then(|s| serde_json::to_value(s).ok());
    patch_status(&ctx.client, ("apps", "v1", "Deployment"), &ns, &name, current.as_ref(), status).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(name: &str, replicas: i32, available: i32, created: i64) -> Rs {
        Rs { name: name.into(), replicas, available, created, ..Rs::default() }
    }

    fn deployment(spec: Value) -> Deployment {
        serde_json::from_value(json!({"metadata": {"name": "web", "generation": 2}, "spec": spec})).unwrap()
    }

    #[test]
    fn fenceposts_round_surge_up_and_unavailable_down() {
        let d = deployment(json!({"replicas": 10, "selector": {}, "template": {}}));
        assert_eq!(strategy_of(&d), Strategy::Rolling { max_surge: 3, max_unavailable: 2 });
        let d = deployment(json!({"replicas": 1, "selector": {}, "template": {}}));
        assert_eq!(strategy_of(&d), Strategy::Rolling { max_surge: 1, max_unavailable: 0 });
        let d = deployment(json!({"replicas": 3, "selector": {}, "template": {},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": "10%"}}}));
        assert_eq!(strategy_of(&d), Strategy::Rolling { max_surge: 0, max_unavailable: 1 }, "never both zero");
        let d = deployment(json!({"replicas": 3, "selector": {}, "template": {}, "strategy": {"type": "Recreate"}}));
        assert_eq!(strategy_of(&d), Strategy::Recreate);
    }

    /// A rolling update of 10 replicas (surge 3, unavailable 2), step by step: each pass's plan
    /// applied, new pods becoming available only when the test says so. Never fewer than 8
    /// available, never more than 13 pods.
    #[test]
    fn rolling_update_moves_within_surge_and_unavailability() {
        let strategy = Strategy::Rolling { max_surge: 3, max_unavailable: 2 };
        let mut old = rs("old", 10, 10, 1);
        let mut new: Option<Rs> = None;
        let apply = |step: &Step, old: &mut Rs, new: &mut Option<Rs>| {
            if let Some(n) = step.create_new {
                *new = Some(rs("new", n, 0, 2));
            }
            for (name, to) in &step.scale {
                let r = if name == "old" { &mut *old } else { new.as_mut().unwrap() };
                r.replicas = *to;
                r.available = r.available.min(*to);
            }
        };
        // Pass 1: the new set is made with 3 (surge) and the old one loses 2 (unavailable).
        let step = plan_rollout(10, &strategy, new.as_ref(), std::slice::from_ref(&old), false);
        assert_eq!(step, Step { create_new: Some(3), scale: vec![("old".into(), 8)] });
        apply(&step, &mut old, &mut new);
        // Pass 2: room for 2 more new pods.
        let step = plan_rollout(10, &strategy, new.as_ref(), std::slice::from_ref(&old), false);
        assert_eq!(step.scale, vec![("new".into(), 5)]);
        apply(&step, &mut old, &mut new);
        // Pass 3: nothing new is available: the old set may not shrink (8 available = minimum).
        let step = plan_rollout(10, &strategy, new.as_ref(), std::slice::from_ref(&old), false);
        assert_eq!(step, Step::default());
        // Three new pods become available: the old set can lose three.
        new.as_mut().unwrap().available = 3;
        let step = plan_rollout(10, &strategy, new.as_ref(), std::slice::from_ref(&old), false);
        assert_eq!(step.scale, vec![("old".into(), 5)]);
        apply(&step, &mut old, &mut new);
        let mut passes = 0;
        while (old.replicas, new.as_ref().unwrap().replicas, new.as_ref().unwrap().available) != (0, 10, 10) {
            passes += 1;
            assert!(passes < 50, "the rollout converges");
            let step = plan_rollout(10, &strategy, new.as_ref(), std::slice::from_ref(&old), false);
            apply(&step, &mut old, &mut new);
            let n = new.as_mut().unwrap();
            assert!(old.replicas + n.replicas <= 13, "surge exceeded");
            assert!(old.available + n.available >= 8, "too many unavailable");
            // Pods come up one pass after they are asked for.
            n.available = n.replicas;
        }
    }

    #[test]
    fn an_unbounded_max_surge_does_not_overflow() {
        let strategy = Strategy::Rolling { max_surge: i32::MAX, max_unavailable: 0 };
        let old = rs("old", 10, 10, 1);
        let step = plan_rollout(10, &strategy, None, std::slice::from_ref(&old), false);
        assert_eq!(step.create_new, Some(10));
    }

    #[test]
    fn templates_compare_without_hash_and_empty_structs() {
        let a: PodTemplateSpec = serde_json::from_value(json!({"metadata": {"labels": {"app": "w"}},
            "spec": {"containers": [{"name": "c", "image": "x"}]}}))
        .unwrap();
        let b: PodTemplateSpec =
            serde_json::from_value(json!({"metadata": {"labels": {"app": "w", "pod-template-hash": "h"}},
            "spec": {"containers": [{"name": "c", "image": "x", "resources": {}}]}}))
            .unwrap();
        assert_eq!(without_hash(&a), without_hash(&b));
        let c: PodTemplateSpec = serde_json::from_value(json!({"metadata": {"labels": {"app": "w"}},
            "spec": {"containers": [{"name": "c", "image": "y"}]}}))
        .unwrap();
        assert_ne!(without_hash(&a), without_hash(&c));
    }

    #[test]
    fn unhealthy_old_pods_go_first() {
        let strategy = Strategy::Rolling { max_surge: 0, max_unavailable: 1 };
        // 3 wanted; the old set has 3 pods of which one is not available; new set at 0 cannot
        // grow (no surge) until the old one shrinks: the unavailable pod goes first.
        let step = plan_rollout(3, &strategy, Some(&rs("new", 0, 0, 2)), &[rs("old", 3, 2, 1)], false);
        assert_eq!(step.scale, vec![("old".into(), 2)]);
    }

    #[test]
    fn recreate_waits_for_the_old_pods() {
        let old = [rs("old", 3, 3, 1)];
        assert_eq!(plan_rollout(3, &Strategy::Recreate, None, &old, true).scale, vec![("old".into(), 0)]);
        let old = [rs("old", 0, 0, 1)];
        assert_eq!(plan_rollout(3, &Strategy::Recreate, None, &old, true), Step::default());
        assert_eq!(plan_rollout(3, &Strategy::Recreate, None, &old, false).create_new, Some(3));
    }

    #[test]
    fn paused_follows_scale_only_on_one_active_set() {
        assert_eq!(plan_scale(5, 2, true, None, &[rs("a", 3, 3, 1)], 3).scale, vec![("a".into(), 5)]);
    }

    #[test]
    fn scaling_mid_rollout_is_shared_in_proportion() {
        // 10 replicas (surge 3) mid-rollout: new 5, old 8, both scaled for 10 (max 13). Scaled
        // to 20 (surge 5): 12 more to share, 8 * 25/13 = 15 old (+7), 5 * 25/13 = 10 new (+5).
        let annotated = |mut r: Rs| {
            r.desired_annotation = Some(10);
            r.max_annotation = Some(13);
            r
        };
        let new = annotated(rs("new", 5, 0, 2));
        let old = [annotated(rs("old", 8, 8, 1))];
        assert!(is_scaling_event(20, Some(&new), &old));
        assert!(!is_scaling_event(10, Some(&new), &old));
        let step = plan_scale(20, 5, true, Some(&new), &old, 13);
        assert_eq!(step.scale, vec![("old".into(), 15), ("new".into(), 10)]);
        // Down to 5 (surge 2): 13 -> 7, old first: 8 * 7/13 = 4 (-4), new 5 * 7/13 = 3 (-2).
        let step = plan_scale(5, 2, true, Some(&new), &old, 13);
        assert_eq!(step.scale.iter().map(|s| s.1).sum::<i32>(), 7);
        assert_eq!(step.scale, vec![("old".into(), 4), ("new".into(), 3)]);
    }

    #[test]
    fn history_keeps_the_newest_idle_sets() {
        let old = vec![
            ("r1".to_string(), 1, 0, 0),
            ("r2".to_string(), 2, 0, 0),
            ("r3".to_string(), 3, 0, 1),
            ("r4".to_string(), 4, 0, 0),
        ];
        assert_eq!(plan_history_cleanup(2, &old), ["r1", "r2"]);
        assert_eq!(plan_history_cleanup(1, &old), ["r1", "r2"], "r3 still has a pod");
        assert_eq!(plan_history_cleanup(0, &old), ["r1", "r2", "r4"]);
        assert!(plan_history_cleanup(10, &old).is_empty());
    }

    #[test]
    fn status_conditions_follow_the_rollout() {
        let now: Timestamp = "2026-01-01T00:10:00Z".parse().unwrap();
        let d = deployment(json!({"replicas": 4, "selector": {}, "template": {}, "progressDeadlineSeconds": 60}));
        let s = plan_status(&d, Some("web-1"), true, &[(4, 0, 0, 0, true)], now);
        let c = |s: &Value, ty: &str| {
            s["conditions"].as_array().unwrap().iter().find(|c| c["type"] == ty).cloned().unwrap()
        };
        assert_eq!(c(&s, "Progressing")["reason"], "NewReplicaSetCreated");
        assert_eq!(c(&s, "Progressing")["message"], "Created new replica set \"web-1\"");
        assert_eq!(c(&s, "Available")["reason"], "MinimumReplicasUnavailable");
        assert_eq!(s["unavailableReplicas"], 4);
        // Pods come up: progressing, then complete.
        let mut d2 = d.clone();
        d2.status = serde_json::from_value(s.clone()).unwrap();
        let s2 = plan_status(&d2, Some("web-1"), false, &[(4, 4, 2, 2, true)], now);
        assert_eq!(c(&s2, "Progressing")["reason"], "ReplicaSetUpdated");
        assert_eq!(c(&s2, "Progressing")["message"], "ReplicaSet \"web-1\" is progressing.");
        d2.status = serde_json::from_value(s2).unwrap();
        let s3 = plan_status(&d2, Some("web-1"), false, &[(4, 4, 4, 4, true)], now);
        assert_eq!(c(&s3, "Progressing")["reason"], "NewReplicaSetAvailable");
        assert_eq!(c(&s3, "Available")["reason"], "MinimumReplicasAvailable");
        assert_eq!(s3["conditions"][0]["type"], "Available");
        // No progress for longer than the deadline: timed out.
        let later: Timestamp = "2026-01-01T00:12:00Z".parse().unwrap();
        d2.status = serde_json::from_value(s3).unwrap();
        let s4 = plan_status(&d2, Some("web-1"), false, &[(4, 4, 2, 2, true)], later);
        assert_eq!(c(&s4, "Progressing")["reason"], "NewReplicaSetAvailable", "a completed rollout does not time out");
        let mut d5 = d.clone();
        d5.status = serde_json::from_value(plan_status(&d, Some("web-1"), true, &[(4, 0, 0, 0, true)], now)).unwrap();
        let s5 = plan_status(&d5, Some("web-1"), false, &[(4, 0, 0, 0, true)], later);
        assert_eq!(c(&s5, "Progressing")["reason"], "ProgressDeadlineExceeded");
        assert_eq!(c(&s5, "Progressing")["status"], "False");
        // Paused and resumed.
        let mut p = d.clone();
        p.spec.paused = Some(true);
        let s6 = plan_status(&p, Some("web-1"), false, &[(4, 4, 4, 4, true)], now);
        assert_eq!(c(&s6, "Progressing")["reason"], "DeploymentPaused");
        assert_eq!(c(&s6, "Progressing")["status"], "Unknown");
        let mut r = d.clone();
        r.status = serde_json::from_value(s6).unwrap();
        assert_eq!(
            c(&plan_status(&r, Some("web-1"), false, &[(4, 4, 4, 4, true)], now), "Progressing")["reason"],
            "DeploymentResumed"
        );
    }
}
