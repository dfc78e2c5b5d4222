//! The Priority admission kube-apiserver runs on a new pod: `spec.priority` and
//! `spec.preemptionPolicy` come from the pod's `priorityClassName`. weft serves no PriorityClass
//! objects, so the classes are kube-apiserver's two built-in ones (`system-cluster-critical`,
//! `system-node-critical`); a pod without a class gets the default (0, as when no class is the
//! global default), and any other name is refused as upstream refuses a class it cannot find.

use serde_json::{Value, json};

use crate::status::ApiError;

/// The built-in classes and their values (upstream's `SystemCriticalPriority` and 1000 more).
const SYSTEM_CLASSES: [(&str, i64); 2] =
    [("system-cluster-critical", 2_000_000_000), ("system-node-critical", 2_000_001_000)];
/// The priority of a pod without a class when no class is the global default.
const DEFAULT_PRIORITY: i64 = 0;
/// Every built-in class's policy, and the default's.
const PREEMPTION_POLICY: &str = "PreemptLowerPriority";

/// Sets `spec.priority` and `spec.preemptionPolicy` of a new `pod` from its class, or refuses
/// it (403) as kube-apiserver does: an unknown class, or a priority or policy the pod states
/// that differs from its class's.
pub fn admit_pod(pod: &mut Value) -> Result<(), ApiError> {
    let name = pod.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else { return Ok(()) };
    let class = spec.get("priorityClassName").and_then(Value::as_str).unwrap_or("");
    let priority = if class.is_empty() {
        DEFAULT_PRIORITY
    } else {
        match SYSTEM_CLASSES.iter().find(|(n, _)| *n == class) {
            Some((_, v)) => *v,
            None => return Err(forbidden(&name, format!("no PriorityClass with name {class} was found"))),
        }
    };
    if let Some(stated) = spec.get("priority").filter(|v| !v.is_null())
        && stated.as_i64() != Some(priority)
    {
        return Err(forbidden(
            &name,
            format!(
                "the integer value of priority ({stated}) must not be provided in pod spec; priority admission controller computed {priority} from the given PriorityClass name"
            ),
        ));
    }
    if let Some(stated) = spec.get("preemptionPolicy").and_then(Value::as_str).filter(|p| *p != PREEMPTION_POLICY) {
        return Err(forbidden(
            &name,
            format!(
                "the string value of PreemptionPolicy ({stated}) must not be provided in pod spec; priority admission controller computed {PREEMPTION_POLICY} from the given PriorityClass name"
            ),
        ));
    }
    spec.insert("priority".into(), json!(priority));
    spec.insert("preemptionPolicy".into(), json!(PREEMPTION_POLICY));
    Ok(())
}

/// Upstream's admission Forbidden: `pods "<name>" is forbidden: <why>`.
fn forbidden(name: &str, why: String) -> ApiError {
    let message = if name.is_empty() {
        format!("pods is forbidden: {why}")
    } else {
        format!("pods {name:?} is forbidden: {why}")
    };
    let mut e = ApiError::new(403, "Forbidden", message);
    e.details = Some(json!({"name": name, "kind": "pods"}));
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admit(spec: Value) -> Result<Value, ApiError> {
        let mut p = json!({"metadata": {"name": "p", "namespace": "kube-system"}, "spec": spec});
        admit_pod(&mut p).map(|_| p["spec"].clone())
    }

    #[test]
    fn the_built_in_classes_set_their_priority() {
        let s = admit(json!({"priorityClassName": "system-cluster-critical", "containers": []})).unwrap();
        assert_eq!(
            (s["priority"].clone(), s["preemptionPolicy"].clone()),
            (json!(2_000_000_000), json!("PreemptLowerPriority"))
        );
        let s = admit(json!({"priorityClassName": "system-node-critical"})).unwrap();
        assert_eq!(s["priority"], 2_000_001_000);
        assert_eq!(s["priorityClassName"], "system-node-critical");
    }

    #[test]
    fn a_pod_without_a_class_gets_the_default() {
        for spec in [
            json!({}),
            json!({"priorityClassName": ""}),
            json!({"priority": 0, "preemptionPolicy": "PreemptLowerPriority"}),
        ] {
            let s = admit(spec).unwrap();
            assert_eq!(
                (s["priority"].clone(), s["preemptionPolicy"].clone()),
                (json!(0), json!("PreemptLowerPriority"))
            );
        }
    }

    #[test]
    fn unknown_classes_and_stated_values_that_differ_are_refused_in_upstreams_words() {
        let e = admit(json!({"priorityClassName": "high"})).unwrap_err();
        assert_eq!((e.code, e.reason), (403, "Forbidden"));
        assert_eq!(e.message, "pods \"p\" is forbidden: no PriorityClass with name high was found");
        let e = admit(json!({"priorityClassName": "system-cluster-critical", "priority": 7})).unwrap_err();
        assert_eq!(
            e.message,
            "pods \"p\" is forbidden: the integer value of priority (7) must not be provided in pod spec; priority admission controller computed 2000000000 from the given PriorityClass name"
        );
        let e = admit(json!({"preemptionPolicy": "Never"})).unwrap_err();
        assert!(
            e.message.contains("the string value of PreemptionPolicy (Never) must not be provided in pod spec"),
            "{}",
            e.message
        );
        // A stated value equal to the class's is kept.
        let s = admit(json!({"priorityClassName": "system-cluster-critical", "priority": 2_000_000_000})).unwrap();
        assert_eq!(s["priority"], 2_000_000_000);
        // A spec that is not an object is left to validation.
        let mut p = json!({"metadata": {"name": "p"}, "spec": 5});
        assert!(admit_pod(&mut p).is_ok());
    }
}
