//! Pod state as controllers read it.

use k8s_openapi::api::core::v1::Pod;

/// The pod's Ready condition is True.
pub fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The pod has finished (phase Succeeded or Failed): it holds no place and serves nothing.
pub fn is_finished(p: &Pod) -> bool {
    matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "status": status})).unwrap()
    }

    #[test]
    fn readiness_and_phase() {
        assert!(is_ready(&pod(json!({"conditions": [{"type": "Ready", "status": "True"}]}))));
        assert!(!is_ready(&pod(json!({"conditions": [{"type": "Ready", "status": "False"}]}))));
        assert!(!is_ready(&pod(json!({"conditions": [{"type": "ContainersReady", "status": "True"}]}))));
        assert!(!is_ready(&pod(json!({}))));
        assert!(is_finished(&pod(json!({"phase": "Failed"}))));
        assert!(is_finished(&pod(json!({"phase": "Succeeded"}))));
        assert!(!is_finished(&pod(json!({"phase": "Running"}))));
        assert!(!is_finished(&pod(json!({}))));
    }
}
