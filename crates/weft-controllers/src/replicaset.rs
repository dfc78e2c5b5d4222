//! The ReplicaSet and ReplicationController controllers (kube-controller-manager's
//! `replicaset` and `replicationcontroller`): as many active pods as `spec.replicas`, made from
//! the template with a controller reference, the surplus deleted in [`plan_scale_down`]'s order,
//! and the status (replicas, fullyLabeledReplicas, readyReplicas, availableReplicas with
//! `minReadySeconds`, observedGeneration).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use weft_k8s::pods::is_ready;

use crate::Ctx;
use crate::workload::{controller_ref, is_active, is_available, owned_by, patch_status, pod_from_template};

/// Which pods a replica controller deletes when it has too many: unscheduled first, then not
/// ready, then the newest (kube's `ActivePods` order, in short).
pub fn plan_scale_down(mut pods: Vec<Arc<Pod>>, n: usize) -> Vec<Arc<Pod>> {
    pods.sort_by_key(|p| {
        let scheduled = p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
        let created = p.metadata.creation_timestamp.as_ref().map(|t| t.0.as_second()).unwrap_or(0);
        (scheduled, is_ready(p), std::cmp::Reverse(created))
    });
    pods.into_iter().take(n).collect()
}

/// The status a replica controller reports for its active `pods`.
pub fn plan_status(
    pods: &[Arc<Pod>],
    selector: &LabelSelector,
    min_ready_seconds: i32,
    generation: Option<i64>,
    now: Timestamp,
) -> Value {
    let template_labels = |p: &Pod| p.metadata.labels.clone().unwrap_or_default();
    let fully = pods
        .iter()
        .filter(|p| weft_k8s::selectors::label_selector_matches(Some(selector), &template_labels(p)))
        .count();
    json!({
        "replicas": pods.len(),
        "fullyLabeledReplicas": fully,
        "readyReplicas": pods.iter().filter(|p| is_ready(p)).count(),
        "availableReplicas": pods.iter().filter(|p| is_available(p, min_ready_seconds, now)).count(),
        "observedGeneration": generation,
    })
}

/// One pass over every ReplicaSet and ReplicationController.
pub(crate) async fn reconcile(ctx: &mut Ctx) -> anyhow::Result<()> {
    for rs in ctx.rss.state() {
        let sel = rs.spec.selector.clone();
        let current = rs.status.as_ref().and_then(|s| serde_json::to_value(s).ok());
        let owner = Owner {
            gvk: ("apps", "v1", "ReplicaSet"),
            replicas: rs.spec.replicas.unwrap_or(1),
            min_ready_seconds: rs.spec.min_ready_seconds.unwrap_or(0),
            template: rs.spec.template.clone(),
            selector: sel,
            current,
        };
        replicas_of(ctx, &*rs, owner).await?;
    }
    for rc in ctx.rcs.state() {
        let spec = rc.spec.clone().unwrap_or_default();
        let sel = LabelSelector { match_labels: spec.selector.clone(), match_expressions: None };
        let current = rc.status.as_ref().and_then(|s| serde_json::to_value(s).ok());
        let owner = Owner {
            gvk: ("", "v1", "ReplicationController"),
            replicas: spec.replicas.unwrap_or(1),
            min_ready_seconds: spec.min_ready_seconds.unwrap_or(0),
            template: spec.template.clone(),
            selector: sel,
            current,
        };
        replicas_of(ctx, &*rc, owner).await?;
    }
    Ok(())
}

struct Owner {
    gvk: (&'static str, &'static str, &'static str),
    replicas: i32,
    min_ready_seconds: i32,
    template: Option<PodTemplateSpec>,
    selector: LabelSelector,
    current: Option<Value>,
}

async fn replicas_of<K: Resource<DynamicType = ()>>(ctx: &mut Ctx, obj: &K, o: Owner) -> anyhow::Result<()> {
    let uid = obj.meta().uid.clone().unwrap_or_default();
    let ns = obj.meta().namespace.clone().unwrap_or_default();
    let name = obj.meta().name.clone().unwrap_or_default();
    if obj.meta().deletion_timestamp.is_some() {
        return Ok(());
    }
    let pods: Vec<Arc<Pod>> = ctx.pods.state().into_iter().filter(|p| is_active(p) && owned_by(p, &uid)).collect();
    // Pods asked for and not in the cache yet count as there, for a few seconds.
    if let Some((n, until)) = ctx.expect.get(&uid) {
        if pods.len() < *n && Instant::now() < *until {
            return Ok(());
        }
        ctx.expect.remove(&uid);
    }
    let want = o.replicas.max(0) as usize;
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let api_version = if o.gvk.0.is_empty() { o.gvk.1.to_string() } else { format!("{}/{}", o.gvk.0, o.gvk.1) };
    let events = ctx.events.replicaset.clone();
    if pods.len() < want {
        let Some(mut t) = o.template.clone() else { return Ok(()) };
        // A template without labels gets the selector's (a ReplicationController's default).
        let md = t.metadata.get_or_insert_with(Default::default);
        if md.labels.as_ref().is_none_or(|l| l.is_empty()) {
            md.labels = o.selector.match_labels.clone();
        }
        let owner = controller_ref(&api_version, o.gvk.2, &name, &uid);
        ctx.expect.insert(uid.clone(), (want, Instant::now() + Duration::from_secs(5)));
        for _ in pods.len()..want {
            let mut pod = pod_from_template(&t, owner.clone(), &BTreeMap::new());
            pod.metadata.generate_name = Some(format!("{name}-"));
            match api.create(&PostParams::default(), &pod).await {
                Ok(made) => events.normal(
                    obj.object_ref(&()),
                    "SuccessfulCreate",
                    "Create",
                    format!("Created pod: {}", made.name_any()),
                ),
                Err(e) => {
                    ctx.expect.remove(&uid);
                    events.warning(obj.object_ref(&()), "FailedCreate", "Create", format!("Error creating: {e}"));
                    return Err(e.into());
                }
            }
        }
    } else if pods.len() > want {
        for p in plan_scale_down(pods.clone(), pods.len() - want) {
            match api.delete(&p.name_any(), &DeleteParams::default()).await {
                Ok(_) => events.normal(
                    obj.object_ref(&()),
                    "SuccessfulDelete",
                    "Delete",
                    format!("Deleted pod: {}", p.name_any()),
                ),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => tracing::debug!(pod = %p.name_any(), error = %e, "scale down"),
            }
        }
    }
    let status = plan_status(&pods, &o.selector, o.min_ready_seconds, obj.meta().generation, Timestamp::now());
    patch_status(&ctx.client, o.gvk, &ns, &name, o.current.as_ref(), status).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, node: Option<&str>, ready_at: Option<&str>) -> Arc<Pod> {
        let conds = match ready_at {
            Some(t) => json!([{"type": "Ready", "status": "True", "lastTransitionTime": t}]),
            None => json!([{"type": "Ready", "status": "False"}]),
        };
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "labels": {"app": "a"}},
                "spec": {"containers": [], "nodeName": node}, "status": {"phase": "Running", "conditions": conds}}))
            .unwrap(),
        )
    }

    #[test]
    fn scale_down_prefers_unscheduled_then_unready() {
        let out = plan_scale_down(
            vec![
                pod("ready", Some("n"), Some("2026-01-01T00:00:00Z")),
                pod("pending", None, None),
                pod("unready", Some("n"), None),
            ],
            2,
        );
        let names: Vec<String> = out.iter().map(|p| p.name_any()).collect();
        assert_eq!(names, ["pending", "unready"]);
    }

    #[test]
    fn available_waits_for_min_ready_seconds() {
        let now: Timestamp = "2026-01-01T00:00:10Z".parse().unwrap();
        let pods =
            vec![pod("a", Some("n"), Some("2026-01-01T00:00:00Z")), pod("b", Some("n"), Some("2026-01-01T00:00:08Z"))];
        let sel: LabelSelector = serde_json::from_value(json!({"matchLabels": {"app": "a"}})).unwrap();
        let s = plan_status(&pods, &sel, 5, Some(3), now);
        assert_eq!(
            s,
            json!({"replicas": 2, "fullyLabeledReplicas": 2, "readyReplicas": 2, "availableReplicas": 1, "observedGeneration": 3})
        );
        assert_eq!(plan_status(&pods, &sel, 0, Some(3), now)["availableReplicas"], 2);
    }
}
