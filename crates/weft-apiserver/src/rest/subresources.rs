//! Subresources beyond status: `scale` (a workload's replica count, through its kind's own
//! admission) and `log` (a container's log, read through [`PodLogs`]).
//!
//! [`PodLogs`]: crate::pod_logs::PodLogs

use serde_json::{Value, json};
use weft_api::kinds::Kind;
use weft_api::{FieldError, objects};

use super::{Api, Query, Target, WriteOpts, obj_name, rv_of, store_key};
use crate::pod_logs::{LogOptions, PodRef};
use crate::status::ApiError;

impl Api {
    /// A container's log (`container`, `tailLines`, `previous`), from whatever runs the pod.
    pub(super) fn log(&self, pod: &Value, q: &Query) -> Result<String, ApiError> {
        let name = obj_name(pod);
        let uid = pod.pointer("/metadata/uid").and_then(|u| u.as_str()).unwrap_or("");
        let containers: Vec<&str> = pod
            .pointer("/spec/containers")
            .and_then(|c| c.as_array())
            .into_iter()
            .flatten()
            .filter_map(|c| c.get("name").and_then(|n| n.as_str()))
            .collect();
        let c = match q.get("container") {
            Some(c) if containers.contains(&c.as_str()) => c.clone(),
            Some(c) => return Err(ApiError::bad_request(format!("container {c} is not valid for pod {name}"))),
            None if containers.len() == 1 => containers[0].to_string(),
            None => {
                return Err(ApiError::bad_request(format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    containers.join(" ")
                )));
            }
        };
        let opts = LogOptions {
            previous: q.get("previous").is_some_and(|p| p == "true"),
            tail_lines: q.get("tailLines").and_then(|t| t.parse::<usize>().ok()),
        };
        let namespace = pod.pointer("/metadata/namespace").and_then(|n| n.as_str()).unwrap_or("");
        let at = PodRef { namespace, name: &name, uid };
        self.pod_logs.read(at, &c, opts).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ApiError::new(404, "NotFound", e.to_string()),
            _ => ApiError::internal(format!("reading the log of container {c} of pod {namespace}/{name}: {e}")),
        })
    }

    /// The scale subresource: the new count goes through the kind's own admission, as any
    /// other change to it does.
    pub(super) async fn scale(
        &self,
        t: &Target,
        replicas: i64,
        want_rv: Option<u64>,
        o: WriteOpts,
    ) -> Result<Value, ApiError> {
        let kind = t.kind;
        let name = t.name.clone().unwrap_or_default();
        let ns = t.namespace.clone().unwrap_or_default();
        if !(0..=i32::MAX as i64).contains(&replicas) {
            return Err(ApiError::invalid(
                "Scale",
                &name,
                &[FieldError::invalid(
                    "spec.replicas",
                    replicas,
                    "must be greater than or equal to 0 and at most 2147483647",
                )],
            ));
        }
        let current =
            self.store.get(&store_key(kind, &ns, &name)).ok_or_else(|| ApiError::not_found(kind.plural, &name))?;
        let mut next = (*current).clone();
        next["spec"]["replicas"] = json!(replicas);
        let mut next = objects::admit(kind.storage(), &next)?;
        if current.get("spec") != next.get("spec") {
            let g = current.pointer("/metadata/generation").and_then(|g| g.as_i64()).unwrap_or(1);
            next["metadata"]["generation"] = json!(g + 1);
        }
        if o.dry_run {
            return Ok(scale_of(kind, &next));
        }
        let rv = want_rv.or(rv_of(&current));
        let o = self
            .store
            .update(store_key(kind, &ns, &name), next, rv)
            .await
            .map_err(|e| ApiError::from_store(e, kind.plural, &name))?;
        Ok(scale_of(kind, &o))
    }
}

/// `spec.replicas` of a Scale body: required, a whole number.
pub(super) fn scale_replicas(v: &Value, name: &str) -> Result<i64, ApiError> {
    match v.pointer("/spec/replicas") {
        Some(r) => r.as_i64().ok_or_else(|| {
            ApiError::invalid("Scale", name, &[FieldError::invalid("spec.replicas", r, "must be a whole number")])
        }),
        None => Err(ApiError::invalid(
            "Scale",
            name,
            &[FieldError::required("spec.replicas", "a Scale sets spec.replicas: send {\"spec\": {\"replicas\": N}}")],
        )),
    }
}

/// The `autoscaling/v1` Scale view of a workload.
pub(super) fn scale_of(kind: &Kind, o: &Value) -> Value {
    let selector = match kind.kind {
        "ReplicationController" => weft_api::table::labels_string(o.pointer("/spec/selector")),
        _ => weft_api::table::labels_string(o.pointer("/spec/selector/matchLabels")),
    };
    json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": o.pointer("/metadata/name"), "namespace": o.pointer("/metadata/namespace"),
            "uid": o.pointer("/metadata/uid"), "resourceVersion": o.pointer("/metadata/resourceVersion"),
            "creationTimestamp": o.pointer("/metadata/creationTimestamp"),
        },
        "spec": {"replicas": o.pointer("/spec/replicas").and_then(|r| r.as_i64()).unwrap_or(0)},
        "status": {"replicas": o.pointer("/status/replicas").and_then(|r| r.as_i64()).unwrap_or(0), "selector": selector},
    })
}
