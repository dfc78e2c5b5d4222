//! The StatefulSet controller, as kube-controller-manager's (`pkg/controller/statefulset`):
//! pods named `<set>-<ordinal>` with `hostname` = their name and `subdomain` = `serviceName`
//! (so the headless Service's endpoints carry hostnames and the DNS answers
//! `<set>-<n>.<service>.<ns>.svc.<zone>`), the `statefulset.kubernetes.io/pod-name` and
//! `apps.kubernetes.io/pod-index` labels; OrderedReady (one pod at a time, each Running and
//! Ready before the next; scale down from the highest ordinal) or Parallel; updates with
//! RollingUpdate (highest ordinal first, down to `partition`) or OnDelete; the template history
//! as ControllerRevisions (`currentRevision`, `updateRevision`). volumeClaimTemplates are
//! accepted and ignored: the lab has no volumes.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::Ctx;
use crate::history::{self, REVISION_HASH};
use crate::workload::{controller_ref, is_available, patch_status, pod_from_template, pods_of};

pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// A pod of the set as the plan sees it.
#[derive(Clone, Debug)]
pub struct SetPod {
    pub ordinal: i32,
    pub name: String,
    /// Its `controller-revision-hash` label (the revision's name).
    pub revision: String,
    pub terminating: bool,
    /// Phase Succeeded or Failed: it is replaced.
    pub finished: bool,
    pub running_ready: bool,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct SetPlan {
    /// Ordinals to create, each with the revision (name) whose template it gets.
    pub create: Vec<(i32, String)>,
    pub delete: Vec<String>,
}

pub struct Policy<'a> {
    pub replicas: i32,
    pub parallel: bool,
    /// Some(partition) for RollingUpdate, None for OnDelete.
    pub partition: Option<i32>,
    pub current_revision: &'a str,
    pub update_revision: &'a str,
}

/// One pass of the StatefulSet controller (kube's `updateStatefulSet`, without volumes).
pub fn plan(p: &Policy, pods: &[SetPod]) -> SetPlan {
    let mut out = SetPlan::default();
    let at = |o: i32| pods.iter().find(|x| x.ordinal == o);
    let ordered = !p.parallel;
    // New pods get the update revision, except below the partition (they keep the current one).
    let revision_for = |o: i32| match p.partition {
        Some(part) if o < part => p.current_revision.to_string(),
        _ => p.update_revision.to_string(),
    };
    for o in 0..p.replicas.max(0) {
        match at(o) {
            None => {
                out.create.push((o, revision_for(o)));
                if ordered {
                    return out;
                }
            }
            Some(x) if x.finished && !x.terminating => {
                out.delete.push(x.name.clone());
                if ordered {
                    return out;
                }
            }
            Some(x) if ordered && (x.terminating || !x.running_ready) => return out,
            Some(_) => {}
        }
    }
    // Condemned (ordinal >= replicas): the highest first; ordered waits for every pod to be ready.
    let mut condemned: Vec<&SetPod> = pods.iter().filter(|x| x.ordinal >= p.replicas).collect();
    condemned.sort_by_key(|x| std::cmp::Reverse(x.ordinal));
    for x in &condemned {
        if x.terminating {
            if ordered {
                return out;
            }
            continue;
        }
        out.delete.push(x.name.clone());
        if ordered {
            return out;
        }
    }
    if !condemned.is_empty() && ordered {
        return out;
    }
    // Rolling update: the highest ordinal not at the update revision goes, one at a time, each
    // successor Running and Ready before the next (down to the partition).
    if let Some(part) = p.partition {
        for o in (part.max(0)..p.replicas).rev() {
            let Some(x) = at(o) else { return out };
            if x.revision != p.update_revision && !x.terminating {
                out.delete.push(x.name.clone());
                return out;
            }
            if x.terminating || !x.running_ready {
                return out;
            }
        }
    }
    out
}

fn ordinal_of(set: &str, pod: &str) -> Option<i32> {
    pod.strip_prefix(set)?.strip_prefix('-')?.parse().ok()
}

/// The pod for `ordinal`: the revision's template, named and labelled, hostname and subdomain.
pub fn make_pod(set: &StatefulSet, template: &PodTemplateSpec, ordinal: i32, revision: &str) -> Pod {
    let name = format!("{}-{ordinal}", set.name_any());
    let mut extra = BTreeMap::new();
    extra.insert(POD_NAME_LABEL.to_string(), name.clone());
    extra.insert(POD_INDEX_LABEL.to_string(), ordinal.to_string());
    extra.insert(REVISION_HASH.to_string(), revision.to_string());
    let owner = controller_ref("apps/v1", "StatefulSet", &set.name_any(), set.metadata.uid.as_deref().unwrap_or(""));
    let mut pod = pod_from_template(template, owner, &extra);
    pod.metadata.name = Some(name.clone());
    if let Some(s) = pod.spec.as_mut() {
        s.hostname = Some(name);
        if let Some(svc) = set.spec.service_name.as_ref().filter(|s| !s.is_empty()) {
            s.subdomain = Some(svc.clone());
        }
    }
    pod
}

/// The template a revision stored (the revision's patch applied to nothing but a template).
fn template_of(rev: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut t = rev.data.0.pointer("/spec/template")?.clone();
    t.as_object_mut()?.remove("$patch");
    serde_json::from_value(t).ok()
}

/// One pass over every StatefulSet.
pub(crate) async fn reconcile(ctx: &mut Ctx) -> anyhow::Result<()> {
    let pods = ctx.pods.state();
    let revs = ctx.revisions.state();
    for set in ctx.statefulsets.state() {
        if set.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if let Err(e) = one(ctx, &set, &pods, &revs).await {
            tracing::warn!(statefulset = %format!("{}/{}", set.namespace().unwrap_or_default(), set.name_any()), error = %e, "statefulset");
        }
    }
    Ok(())
}

async fn one(ctx: &Ctx, set: &StatefulSet, pods: &[Arc<Pod>], revs: &[Arc<ControllerRevision>]) -> anyhow::Result<()> {
    let ns = set.namespace().unwrap_or_default();
    let name = set.name_any();
    let uid = set.metadata.uid.clone().unwrap_or_default();
    let spec = &set.spec;
    let owned_revs = history::owned_by(revs, &uid);
    let owner = history::Owner {
        kind: "StatefulSet",
        namespace: &ns,
        name: &name,
        uid: &uid,
        template: &spec.template,
        annotations: set.annotations(),
    };
    let (update_rev, _, _) = history::sync(&ctx.client, &owner, &owned_revs).await?;
    let status = set.status.clone().unwrap_or_default();
    let current_rev = status.current_revision.clone().filter(|r| !r.is_empty()).unwrap_or_else(|| update_rev.clone());
    let now = Timestamp::now();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let mine: Vec<Arc<Pod>> = pods_of(pods, &uid);
    let view: Vec<SetPod> = mine
        .iter()
        .filter_map(|p| {
            Some(SetPod {
                ordinal: ordinal_of(&name, &p.name_any())?,
                name: p.name_any(),
                revision: p.labels().get(REVISION_HASH).cloned().unwrap_or_default(),
                terminating: p.metadata.deletion_timestamp.is_some(),
                finished: weft_k8s::pods::is_finished(p),
                running_ready: p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                    && weft_k8s::pods::is_ready(p),
            })
        })
        .collect();
    let replicas = spec.replicas.unwrap_or(1);
    let st = spec.update_strategy.clone().unwrap_or_default();
    let partition = match st.type_.as_deref() {
        Some("OnDelete") => None,
        _ => Some(st.rolling_update.and_then(|r| r.partition).unwrap_or(0)),
    };
    let policy = Policy {
        replicas,
        parallel: spec.pod_management_policy.as_deref() == Some("Parallel"),
        partition,
        current_revision: &current_rev,
        update_revision: &update_rev,
    };
    let step = plan(&policy, &view);
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let events = &ctx.events.statefulset;
    for (ordinal, rev) in &step.create {
        let template = if *rev == update_rev {
            spec.template.clone()
        } else {
            owned_revs
                .iter()
                .find(|r| r.name_any() == *rev)
                .and_then(|r| template_of(r))
                .unwrap_or(spec.template.clone())
        };
        let pod = make_pod(set, &template, *ordinal, rev);
        let pod_name = pod.name_any();
        match api.create(&PostParams::default(), &pod).await {
            Ok(_) => events.normal(
                set.object_ref(&()),
                "SuccessfulCreate",
                "Create",
                format!("create Pod {pod_name} in StatefulSet {name} successful"),
            ),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => {
                events.warning(
                    set.object_ref(&()),
                    "FailedCreate",
                    "Create",
                    format!("create Pod {pod_name} in StatefulSet {name} failed error: {e}"),
                );
                return Err(e.into());
            }
        }
    }
    for victim in &step.delete {
        match api.delete(victim, &DeleteParams::default()).await {
            Ok(_) => events.normal(
                set.object_ref(&()),
                "SuccessfulDelete",
                "Delete",
                format!("delete Pod {victim} in StatefulSet {name} successful"),
            ),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => tracing::debug!(pod = %victim, error = %e, "statefulset pod delete"),
        }
    }
    // Status (kube's `computeReplicaStatus`): counts of the pods that exist now.
    let live: Vec<&Arc<Pod>> = mine.iter().filter(|p| !weft_k8s::pods::is_finished(p)).collect();
    let count = |f: &dyn Fn(&Pod) -> bool| live.iter().filter(|p| f(p)).count() as i32;
    let ready = count(&|p| weft_k8s::pods::is_ready(p));
    let available = count(&|p| is_available(p, min_ready, now));
    let at_rev = |r: &str| count(&|p| p.labels().get(REVISION_HASH).map(String::as_str) == Some(r));
    let updated = at_rev(&update_rev);
    // The rollout is done once every pod is at the update revision: it becomes the current one.
    let (current_rev, current) = if updated == replicas && live.len() as i32 == replicas {
        (update_rev.clone(), updated)
    } else {
        (current_rev.clone(), at_rev(&current_rev))
    };
    let status = json!({
        "replicas": live.len(),
        "readyReplicas": ready,
        "availableReplicas": available,
        "currentReplicas": current,
        "updatedReplicas": updated,
        "currentRevision": current_rev,
        "updateRevision": update_rev,
        "collisionCount": 0,
        "observedGeneration": crate::observed(set.metadata.generation),
    });
    let in_use: Vec<String> = mine.iter().filter_map(|p| p.labels().get(REVISION_HASH).cloned()).collect();
    history::cleanup(
        &ctx.client,
        &ns,
        &owned_revs,
        spec.revision_history_limit.unwrap_or(10),
        &[&update_rev, &current_rev],
        &in_use,
    )
    .await;
    let cur = set.status.as_ref().and_then(|s| serde_json::to_value(s).ok());
    patch_status(&ctx.client, ("apps", "v1", "StatefulSet"), &ns, &name, cur.as_ref(), status).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp(o: i32, rev: &str, ready: bool) -> SetPod {
        SetPod {
            ordinal: o,
            name: format!("web-{o}"),
            revision: rev.into(),
            terminating: false,
            finished: false,
            running_ready: ready,
        }
    }
    fn policy<'a>(replicas: i32, parallel: bool, partition: Option<i32>) -> Policy<'a> {
        Policy { replicas, parallel, partition, current_revision: "web-a", update_revision: "web-b" }
    }

    #[test]
    fn ordered_ready_makes_one_pod_at_a_time() {
        let p = policy(3, false, Some(0));
        assert_eq!(plan(&p, &[]).create, [(0, "web-b".to_string())]);
        // web-0 not ready yet: wait.
        assert_eq!(plan(&p, &[sp(0, "web-b", false)]), SetPlan::default());
        assert_eq!(plan(&p, &[sp(0, "web-b", true)]).create, [(1, "web-b".to_string())]);
        // Parallel: all at once.
        let par = policy(3, true, Some(0));
        assert_eq!(plan(&par, &[]).create.len(), 3);
    }

    #[test]
    fn scale_down_goes_from_the_highest_ordinal() {
        let p = policy(1, false, Some(0));
        let pods = [sp(0, "web-b", true), sp(1, "web-b", true), sp(2, "web-b", true)];
        assert_eq!(plan(&p, &pods).delete, ["web-2"]);
        let mut terminating = pods.clone();
        terminating[2].terminating = true;
        assert_eq!(plan(&p, &terminating), SetPlan::default(), "one at a time");
        assert_eq!(plan(&policy(1, true, Some(0)), &pods).delete, ["web-2", "web-1"]);
    }

    #[test]
    fn rolling_update_goes_down_to_the_partition() {
        let p = policy(3, false, Some(1));
        let pods = [sp(0, "web-a", true), sp(1, "web-a", true), sp(2, "web-a", true)];
        assert_eq!(plan(&p, &pods).delete, ["web-2"]);
        let pods2 = [sp(0, "web-a", true), sp(1, "web-a", true), sp(2, "web-b", false)];
        assert_eq!(plan(&p, &pods2), SetPlan::default(), "waits for the updated pod");
        let pods3 = [sp(0, "web-a", true), sp(1, "web-a", true), sp(2, "web-b", true)];
        assert_eq!(plan(&p, &pods3).delete, ["web-1"]);
        let pods4 = [sp(0, "web-a", true), sp(1, "web-b", true), sp(2, "web-b", true)];
        assert_eq!(plan(&p, &pods4), SetPlan::default(), "the partition keeps web-0");
        // A missing pod below the partition is made at the current revision.
        assert_eq!(plan(&p, &pods4[1..]).create, [(0, "web-a".to_string())]);
        // OnDelete: nothing is replaced.
        assert_eq!(plan(&policy(3, false, None), &pods), SetPlan::default());
    }

    #[test]
    fn pods_are_named_and_addressed() {
        let set: StatefulSet = serde_json::from_value(json!({"metadata": {"name": "web", "uid": "u"},
            "spec": {"serviceName": "nginx", "selector": {"matchLabels": {"app": "n"}},
                     "template": {"metadata": {"labels": {"app": "n"}}, "spec": {"containers": [{"name": "c"}]}}}}))
        .unwrap();
        let pod = make_pod(&set, &set.spec.template, 1, "web-abc");
        assert_eq!(pod.name_any(), "web-1");
        let spec = pod.spec.unwrap();
        assert_eq!((spec.hostname.as_deref(), spec.subdomain.as_deref()), (Some("web-1"), Some("nginx")));
        let l = pod.metadata.labels.unwrap();
        assert_eq!(l[POD_NAME_LABEL], "web-1");
        assert_eq!(l[POD_INDEX_LABEL], "1");
        assert_eq!(l["app"], "n");
        assert_eq!(ordinal_of("web", "web-12"), Some(12));
        assert_eq!(ordinal_of("web", "webx-1"), None);
    }
}
