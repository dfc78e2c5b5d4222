//! What the workload controllers (ReplicaSet, Deployment, DaemonSet, StatefulSet, Job) share:
//! which pods a controller owns, when a pod counts as available, pods made from a template, the
//! rolling-update arithmetic on `IntOrString`, and status writes that skip what is unchanged.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::{Value, json};
use weft_k8s::pods::{is_finished, is_ready};

/// Not terminating and not finished: a pod that counts toward its controller's replicas.
pub fn is_active(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none() && !is_finished(p)
}

/// Is `p` controlled by the object with `uid`?
pub fn owned_by(p: &Pod, uid: &str) -> bool {
    p.metadata.owner_references.iter().flatten().any(|o| o.uid == uid && o.controller == Some(true))
}

/// The pods controlled by `uid`, whatever their state.
pub fn pods_of(pods: &[Arc<Pod>], uid: &str) -> Vec<Arc<Pod>> {
    pods.iter().filter(|p| owned_by(p, uid)).cloned().collect()
}

/// A controller reference, as every workload controller sets it on what it makes.
pub fn controller_ref(api_version: &str, kind: &str, name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: api_version.into(),
        kind: kind.into(),
        name: name.into(),
        uid: uid.into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// When the pod's Ready condition last became True (None: not ready).
fn ready_since(p: &Pod) -> Option<Timestamp> {
    if !is_ready(p) {
        return None;
    }
    let c = p.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready")?;
    Some(c.last_transition_time.as_ref().map(|t| t.0).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// Available as Kubernetes counts it: active, Ready, and Ready for at least `min_ready_seconds`.
pub fn is_available(p: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    is_active(p)
        && ready_since(p)
            .is_some_and(|t| min_ready_seconds <= 0 || t.as_second() + i64::from(min_ready_seconds) <= now.as_second())
}

/// `IntOrString` against a total, as `intstr.GetScaledValueFromIntOrPercent`: a percentage
/// rounded up or down (an unparseable one counts as 0; admission refuses those).
pub fn scaled(v: Option<&IntOrString>, total: i32, round_up: bool) -> i32 {
    match v {
        None => 0,
        Some(IntOrString::Int(i)) => *i,
        Some(IntOrString::String(s)) => {
            let pct: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            let x = pct * i64::from(total);
            let v = if round_up { (x + 99) / 100 } else { x / 100 };
            v as i32
        }
    }
}

/// A pod of `template` controlled by `owner`, with these extra labels.
pub fn pod_from_template(t: &PodTemplateSpec, owner: OwnerReference, extra: &BTreeMap<String, String>) -> Pod {
    let mut pod = Pod { spec: t.spec.clone(), ..Default::default() };
    let mut labels = t.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
    labels.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    pod.metadata.labels = Some(labels);
    pod.metadata.annotations = t.metadata.as_ref().and_then(|m| m.annotations.clone());
    pod.metadata.owner_references = Some(vec![owner]);
    pod
}

/// `now` as the API's timestamps are written (seconds).
pub fn rfc3339(now: Timestamp) -> String {
    now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A condition list with `cond` set as Kubernetes' `SetCondition` helpers do: the same status
/// and reason keep the old entry (timestamps and all); a changed status gets a new transition
/// time; the same status with a new reason keeps the transition time.
pub fn set_condition(conds: &mut Vec<Value>, cond: Value, now: &str) {
    let ty = cond["type"].clone();
    let mut cond = cond;
    if let Some(old) = conds.iter().find(|c| c["type"] == ty) {
        if old["status"] == cond["status"] && old["reason"] == cond["reason"] && old["message"] == cond["message"] {
            return;
        }
        let keep = old["status"] == cond["status"];
        cond["lastTransitionTime"] = if keep { old["lastTransitionTime"].clone() } else { json!(now) };
    } else {
        cond["lastTransitionTime"] = json!(now);
    }
    if cond.get("lastUpdateTime").is_some() {
        cond["lastUpdateTime"] = json!(now);
    }
    conds.retain(|c| c["type"] != ty);
    conds.push(cond);
}

/// Does `current` (a status as stored) already say everything `want` says? (An absent number
/// is 0, an absent list empty, as Go's omitempty writes them.)
pub fn status_holds(current: &Value, want: &Value) -> bool {
    want.as_object().into_iter().flatten().all(|(k, v)| {
        let cur = current.get(k).cloned().unwrap_or(Value::Null);
        cur == *v
            || (cur.is_null() && (v.as_i64() == Some(0) || v.as_array().is_some_and(|a| a.is_empty())))
            || (v.is_null() && (cur.as_i64() == Some(0)))
    })
}

/// Writes `status` to the status subresource of the object unless it already holds it.
pub async fn patch_status(
    client: &kube::Client,
    gvk: (&str, &str, &str),
    ns: &str,
    name: &str,
    current: Option<&Value>,
    status: Value,
) -> anyhow::Result<()> {
    if current.is_some_and(|c| status_holds(c, &status)) {
        return Ok(());
    }
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &ApiResource::from_gvk(&GroupVersionKind::gvk(gvk.0, gvk.1, gvk.2)));
    match api.patch_status(name, &PatchParams::default(), &Patch::Merge(json!({ "status": status }))).await {
        Ok(_) => Ok(()),
        // Deleted meanwhile: nothing to report on.
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_round_as_kubernetes_rounds_them() {
        let p = |s: &str| IntOrString::String(s.into());
        assert_eq!(scaled(Some(&p("25%")), 10, true), 3);
        assert_eq!(scaled(Some(&p("25%")), 10, false), 2);
        assert_eq!(scaled(Some(&p("25%")), 1, true), 1);
        assert_eq!(scaled(Some(&p("25%")), 1, false), 0);
        assert_eq!(scaled(Some(&IntOrString::Int(4)), 10, false), 4);
        assert_eq!(scaled(None, 10, true), 0);
    }

    #[test]
    fn conditions_keep_their_transition_time_while_the_status_holds() {
        let mut cs = vec![];
        set_condition(&mut cs, json!({"type": "Available", "status": "True", "reason": "A", "message": "m"}), "t1");
        set_condition(&mut cs, json!({"type": "Available", "status": "True", "reason": "A", "message": "m"}), "t2");
        assert_eq!(cs[0]["lastTransitionTime"], "t1");
        set_condition(&mut cs, json!({"type": "Available", "status": "True", "reason": "B", "message": "m"}), "t3");
        assert_eq!((cs[0]["lastTransitionTime"].as_str(), cs[0]["reason"].as_str()), (Some("t1"), Some("B")));
        set_condition(&mut cs, json!({"type": "Available", "status": "False", "reason": "B", "message": "m"}), "t4");
        assert_eq!(cs[0]["lastTransitionTime"], "t4");
        assert_eq!(cs.len(), 1);
    }

    #[test]
    fn status_comparison_reads_absent_as_zero() {
        assert!(status_holds(&json!({"replicas": 1}), &json!({"replicas": 1, "readyReplicas": 0})));
        assert!(!status_holds(&json!({"replicas": 1}), &json!({"replicas": 2})));
        assert!(status_holds(&json!({}), &json!({"conditions": []})));
    }
}
