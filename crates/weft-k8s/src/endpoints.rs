//! An EndpointSlice endpoint's conditions exactly as discovery.k8s.io/v1 defines them: an unset
//! `ready` means ready; an unset `serving` means the same as `ready`; an unset `terminating`
//! means not terminating. And how the EndpointSlice controller sets them from a pod.

use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conditions {
    /// Should get new traffic (serving and not terminating, or published regardless).
    pub ready: bool,
    /// Answers, terminating or not (may take traffic while nothing ready is left).
    pub serving: bool,
    pub terminating: bool,
}

impl Conditions {
    pub fn of(c: Option<&EndpointConditions>) -> Conditions {
        let ready = c.and_then(|c| c.ready).unwrap_or(true);
        Conditions {
            ready,
            serving: c.and_then(|c| c.serving).unwrap_or(ready),
            terminating: c.and_then(|c| c.terminating).unwrap_or(false),
        }
    }

    /// As the EndpointSlice controller derives them from a pod: `pod_ready` is the pod's Ready
    /// condition, `terminating` its deletion; `publishNotReadyAddresses` makes every endpoint
    /// ready and serving.
    pub fn for_pod(pod_ready: bool, terminating: bool, publish_not_ready: bool) -> Conditions {
        Conditions {
            ready: (pod_ready && !terminating) || publish_not_ready,
            serving: pod_ready || publish_not_ready,
            terminating,
        }
    }
}

pub fn conditions(e: &Endpoint) -> Conditions {
    Conditions::of(e.conditions.as_ref())
}

/// Is the endpoint ready (an unset `ready` is)?
pub fn is_ready(e: &Endpoint) -> bool {
    conditions(e).ready
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ep(c: serde_json::Value) -> Endpoint {
        serde_json::from_value(json!({"addresses": ["10.0.0.1"], "conditions": c})).unwrap()
    }

    #[test]
    fn unset_conditions_read_as_the_api_defines_them() {
        let no_conditions: Endpoint = serde_json::from_value(json!({"addresses": ["10.0.0.1"]})).unwrap();
        let all = Conditions { ready: true, serving: true, terminating: false };
        assert_eq!(conditions(&no_conditions), all);
        assert_eq!(conditions(&ep(json!({}))), all);
        // serving unset follows ready.
        assert_eq!(
            conditions(&ep(json!({"ready": false}))),
            Conditions { ready: false, serving: false, terminating: false }
        );
        assert_eq!(
            conditions(&ep(json!({"ready": false, "serving": true, "terminating": true}))),
            Conditions { ready: false, serving: true, terminating: true }
        );
        assert!(is_ready(&ep(json!({"serving": false}))));
        assert!(!is_ready(&ep(json!({"ready": false}))));
    }

    #[test]
    fn a_pods_conditions_as_the_controller_sets_them() {
        assert_eq!(
            Conditions::for_pod(true, false, false),
            Conditions { ready: true, serving: true, terminating: false }
        );
        assert_eq!(
            Conditions::for_pod(true, true, false),
            Conditions { ready: false, serving: true, terminating: true }
        );
        assert_eq!(
            Conditions::for_pod(false, false, false),
            Conditions { ready: false, serving: false, terminating: false }
        );
        assert_eq!(
            Conditions::for_pod(false, true, true),
            Conditions { ready: true, serving: true, terminating: true }
        );
    }
}
