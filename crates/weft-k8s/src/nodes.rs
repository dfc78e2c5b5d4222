//! Node readiness, and the two questions consumers ask of it:
//! - may a pod be scheduled here ([`fit`]): kube-scheduler's NodeUnschedulable and
//!   TaintToleration filters (a node that is not Ready carries the `not-ready` NoSchedule taint
//!   the node lifecycle controller would give it);
//! - may the node take LoadBalancer traffic ([`serves_load_balancers`]): Ready, and not
//!   labelled out, as the service controller decides; a cordoned (unschedulable) node still
//!   does, as in Kubernetes since 1.21.

use k8s_openapi::api::core::v1::{Node, Taint, Toleration};

pub const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";
pub const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";
pub const EXCLUDE_FROM_LOAD_BALANCERS: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

/// The node's Ready condition is True.
pub fn is_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Cordoned (`spec.unschedulable`).
pub fn is_unschedulable(n: &Node) -> bool {
    n.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false)
}

/// Why a pod does not fit a node, in kube-scheduler's words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unfit {
    Unschedulable,
    UntoleratedTaint { key: String, value: String },
}

impl std::fmt::Display for Unfit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unfit::Unschedulable => write!(f, "node(s) were unschedulable"),
            Unfit::UntoleratedTaint { key, value } => write!(f, "node(s) had untolerated taint {{{key}: {value}}}"),
        }
    }
}

/// Does `t` tolerate `taint` (Kubernetes' `ToleratesTaint`)? An empty effect tolerates every
/// effect; an empty key with `Exists` tolerates every taint; an unknown operator nothing.
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if t.effect.as_deref().is_some_and(|e| !e.is_empty() && e != taint.effect) {
        return false;
    }
    let key = t.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => !key.is_empty() && t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        _ => false,
    }
}

/// The taints the scheduler's filter honours (NoSchedule and NoExecute), the node's own and
/// the `not-ready` one of a node that is not Ready.
pub fn scheduling_taints(n: &Node) -> Vec<Taint> {
    let mut out: Vec<Taint> = n
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .collect();
    if !is_ready(n) && !out.iter().any(|t| t.key == NOT_READY_TAINT) {
        out.push(Taint { key: NOT_READY_TAINT.into(), effect: "NoSchedule".into(), ..Default::default() });
    }
    out
}

/// May a pod with these tolerations be scheduled on `n`? (Capacity aside.)
pub fn fit(n: &Node, tolerations: &[Toleration]) -> Result<(), Unfit> {
    let cordon = Taint { key: UNSCHEDULABLE_TAINT.into(), effect: "NoSchedule".into(), ..Default::default() };
    if is_unschedulable(n) && !tolerations.iter().any(|t| tolerates(t, &cordon)) {
        return Err(Unfit::Unschedulable);
    }
    match scheduling_taints(n).into_iter().find(|taint| !tolerations.iter().any(|t| tolerates(t, taint))) {
        Some(t) => Err(Unfit::UntoleratedTaint { key: t.key, value: t.value.unwrap_or_default() }),
        None => Ok(()),
    }
}

/// May the node take LoadBalancer traffic (announce an address)?
pub fn serves_load_balancers(n: &Node) -> bool {
    is_ready(n) && !n.metadata.labels.as_ref().is_some_and(|l| l.contains_key(EXCLUDE_FROM_LOAD_BALANCERS))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(v: serde_json::Value) -> Node {
        serde_json::from_value(v).unwrap()
    }
    fn ready(extra_spec: serde_json::Value) -> Node {
        node(json!({"metadata": {"name": "n"}, "spec": extra_spec,
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}))
    }
    fn tol(v: serde_json::Value) -> Toleration {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn readiness_is_the_ready_condition() {
        assert!(is_ready(&ready(json!({}))));
        assert!(!is_ready(&node(json!({"metadata": {"name": "n"}}))));
        assert!(!is_ready(&node(json!({"metadata": {"name": "n"},
            "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}))));
    }

    #[test]
    fn scheduling_follows_cordons_taints_and_tolerations() {
        assert_eq!(fit(&ready(json!({})), &[]), Ok(()));
        let cordoned = ready(json!({"unschedulable": true}));
        assert_eq!(fit(&cordoned, &[]), Err(Unfit::Unschedulable));
        assert_eq!(Unfit::Unschedulable.to_string(), "node(s) were unschedulable");
        assert_eq!(fit(&cordoned, &[tol(json!({"key": UNSCHEDULABLE_TAINT, "operator": "Exists"}))]), Ok(()));
        let not_ready = node(json!({"metadata": {"name": "n"}}));
        let e = fit(&not_ready, &[]).unwrap_err();
        assert_eq!(e.to_string(), "node(s) had untolerated taint {node.kubernetes.io/not-ready: }");
        assert_eq!(
            fit(&not_ready, &[tol(json!({"key": NOT_READY_TAINT, "operator": "Exists", "effect": "NoSchedule"}))]),
            Ok(())
        );
        let tainted = ready(json!({"taints": [{"key": "gpu", "value": "yes", "effect": "NoSchedule"},
                                              {"key": "soft", "effect": "PreferNoSchedule"}]}));
        assert_eq!(fit(&tainted, &[]), Err(Unfit::UntoleratedTaint { key: "gpu".into(), value: "yes".into() }));
        assert_eq!(fit(&tainted, &[tol(json!({"key": "gpu", "value": "yes"}))]), Ok(()));
        assert!(fit(&tainted, &[tol(json!({"key": "gpu", "value": "no"}))]).is_err());
        assert!(fit(&tainted, &[tol(json!({"key": "gpu", "operator": "Exists", "effect": "NoExecute"}))]).is_err());
        // An empty key with Exists tolerates everything; an unknown operator nothing.
        assert_eq!(fit(&tainted, &[tol(json!({"operator": "Exists"}))]), Ok(()));
        assert!(fit(&tainted, &[tol(json!({"key": "gpu", "operator": "Matches", "value": "yes"}))]).is_err());
        // An empty key with Equal tolerates nothing.
        assert!(fit(&tainted, &[tol(json!({"value": "yes"}))]).is_err());
    }

    #[test]
    fn a_cordoned_ready_node_still_serves_load_balancers() {
        assert!(serves_load_balancers(&ready(json!({"unschedulable": true}))));
        assert!(!serves_load_balancers(&node(json!({"metadata": {"name": "n"}}))));
        let mut excluded = ready(json!({}));
        excluded.metadata.labels = Some([(EXCLUDE_FROM_LOAD_BALANCERS.to_string(), String::new())].into());
        assert!(!serves_load_balancers(&excluded));
    }
}
