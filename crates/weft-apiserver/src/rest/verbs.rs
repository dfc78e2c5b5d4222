//! The verbs that read one object or write one: get, create, update and patch (which share
//! `finish_update`: keep server-owned fields, admit, allocate, write).

use serde_json::{Value, json};
use weft_api::kinds::Kind;
use weft_api::{objects, table};
use weft_store::{Key, StoreError};

use super::delete::{being_deleted, check_deletion_fields, deletes_during_update};
use super::services::drop_type_dependent_fields;
use super::subresources::{scale_of, scale_replicas};
use super::write_opts::{check_depth, check_strict};
use super::{
    Api, Query, Target, WriteOpts, conflict, incoming, now_rfc3339, obj_name, outgoing, rv_of, store_key, wants_table,
};
use crate::alloc::Reservation;
use crate::patch::{self, PatchKind};
use crate::status::ApiError;

/// kube-apiserver's 403 (NamespaceLifecycle admission) for a create in a Terminating namespace.
fn namespace_terminating(kind: &Kind, name: &str, ns: &str) -> ApiError {
    let mut e = ApiError::new(
        403,
        "Forbidden",
        format!(
            "{} {name:?} is forbidden: unable to create new content in namespace {ns} because it is being terminated",
            kind.plural
        ),
    );
    e.details = Some(json!({"name": name, "kind": kind.plural, "causes": [{
        "reason": "NamespaceTerminating", "message": format!("namespace {ns} is being terminated"), "field": "metadata.namespace"}]}));
    e
}

/// Whether a patch body sets `metadata.resourceVersion` (an optimistic-concurrency precondition).
fn body_names_rv(body: &[u8]) -> bool {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(ops)) => ops.iter().any(|op| op["path"] == "/metadata/resourceVersion" && op["op"] != "test"),
        Ok(v) => v.pointer("/metadata/resourceVersion").is_some_and(|r| !r.is_null()),
        Err(_) => false,
    }
}

fn generate_suffix() -> String {
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5).map(|_| CHARS[rand::random_range(0..CHARS.len())] as char).collect()
}

/// The parts of `status` a kind's main resource may not change.
fn has_status(kind: &Kind) -> bool {
    kind.has_subresource("status")
}

/// Kinds whose `metadata.generation` counts changes of their spec.
/// A pod's node, once set, is kept: a second binding (a scheduler working from a stale cache)
/// would have two kubelets run the pod. kube-apiserver refuses it the same way (pod updates may
/// not change `spec.nodeName`; binding an assigned pod is a conflict).
fn check_pod_binding(kind: &Kind, name: &str, current: &Value, v: &Value) -> Result<(), ApiError> {
    let node =
        |o: &Value| o.pointer("/spec/nodeName").and_then(|n| n.as_str()).filter(|n| !n.is_empty()).map(String::from);
    match (node(current), node(v)) {
        (Some(was), now) if now.as_deref() != Some(was.as_str()) => Err(ApiError::invalid(
            kind.kind,
            name,
            &[weft_api::errors::FieldError::forbidden(
                "spec.nodeName",
                format!("pod updates may not change spec.nodeName: the pod is already assigned to node {was:?}"),
            )],
        )),
        _ => Ok(()),
    }
}

fn v_has_spec_generation(kind: &Kind) -> bool {
    matches!(
        kind.kind,
        "Deployment"
            | "ReplicaSet"
            | "ReplicationController"
            | "DaemonSet"
            | "StatefulSet"
            | "Job"
            | "Service"
            | "Ingress"
            | "NetworkPolicy"
    )
}

impl Api {
    pub fn get(&self, t: &Target, accept: &str, q: &Query) -> Result<Value, ApiError> {
        let name = t.name.as_deref().unwrap_or("");
        let ns = t.namespace.as_deref().unwrap_or("");
        let obj =
            self.store.get(&store_key(t.kind, ns, name)).ok_or_else(|| ApiError::not_found(t.kind.plural, name))?;
        match t.sub.as_deref() {
            Some("scale") => return Ok(scale_of(t.kind, &obj)),
            Some("log") => return self.log(&obj, q).map(Value::String),
            _ => {}
        }
        if wants_table(accept) {
            return Ok(table::table(
                t.kind,
                std::slice::from_ref(&obj),
                rv_of(&obj).unwrap_or(0),
                jiff::Timestamp::now(),
            ));
        }
        Ok(outgoing(t.kind, &obj))
    }
    pub async fn create(&self, t: &Target, body: &[u8], o: WriteOpts) -> Result<Value, ApiError> {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("the request body is not a JSON object: {e}")))?;
        if !v.is_object() {
            return Err(ApiError::bad_request("the request body must be a JSON object"));
        }
        self.check_kind(t.kind, &v)?;
        let mut v = incoming(t.kind, v);
        let kind = t.kind.storage();
        let ns = t.namespace.clone().unwrap_or_default();
        let sent_managed = super::apply::sent_managed_fields(&v);
        // Server-owned metadata.
        {
            let md = v.as_object_mut().unwrap().entry("metadata").or_insert_with(|| json!({}));
            let md = md.as_object_mut().ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
            if kind.namespaced {
                match md.get("namespace").and_then(|n| n.as_str()) {
                    Some(n) if !n.is_empty() && n != ns => {
                        return Err(ApiError::bad_request(format!(
                            "the namespace of the provided object ({n}) does not match the namespace sent on the request ({ns})"
                        )));
                    }
                    _ => {}
                }
                md.insert("namespace".into(), json!(ns));
            } else {
                md.remove("namespace");
            }
            let has_name = md.get("name").and_then(|n| n.as_str()).is_some_and(|n| !n.is_empty());
            if !has_name && let Some(g) = md.get("generateName").and_then(|g| g.as_str()).filter(|g| !g.is_empty()) {
                let name = format!("{g}{}", generate_suffix());
                md.insert("name".into(), json!(name));
            }
            for k in ["resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "managedFields", "selfLink"]
            {
                md.remove(k);
            }
            md.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
            md.insert("creationTimestamp".into(), json!(now_rfc3339()));
            if v_has_spec_generation(kind) {
                md.insert("generation".into(), json!(1));
            }
        }
        if kind.namespaced {
            match self.store.get(&Key::new("namespaces", "", &ns)) {
                None => return Err(ApiError::not_found("namespaces", &ns)),
                Some(n) if being_deleted(&n) => return Err(namespace_terminating(kind, &obj_name(&v), &ns)),
                Some(_) => {}
            }
        }
        check_depth(&v)?;
        let sent = v;
        let mut v = objects::admit(kind, &sent)?;
        check_strict(o, kind, &sent, &v)?;
        crate::rbac_writes::check(self, kind, &ns, &v, None)?;
        if kind.kind == "Pod" {
            crate::sa_admission::admit(self, &mut v)?;
            crate::priority_admission::admit_pod(&mut v)?;
        }
        if kind.kind == "Ingress" {
            crate::ingress_class_admission::admit(self, &mut v);
        }
        self.track_update(kind, None, sent_managed, &mut v, None)?;
        let name = obj_name(&v);
        if kind.kind == "Service" {
            self.check_external_ips(&v, None)?;
        }
        // From here on, an error (or the dry run) gives back what the Service took.
        let reservation =
            if kind.kind == "Service" { self.allocate_service(&mut v, None)? } else { Reservation::new(&self.alloc) };
        if o.dry_run {
            // Everything a create checks, without the write: nothing is kept.
            drop(reservation);
            if self.store.get(&store_key(kind, &ns, &name)).is_some() {
                return Err(ApiError::from_store(
                    StoreError::AlreadyExists { resource: String::new(), key: String::new() },
                    kind.plural,
                    &name,
                ));
            }
            return Ok(outgoing(t.kind, &v));
        }
        let created = self
            .store
            .create(store_key(kind, &ns, &name), v)
            .await
            .map_err(|e| ApiError::from_store(e, kind.plural, &name))?;
        reservation.commit();
        if kind.kind == "Namespace" {
            crate::service_accounts::namespace_defaults(self, &name).await;
        }
        Ok(outgoing(t.kind, &created))
    }

    fn check_kind(&self, k: &Kind, v: &Value) -> Result<(), ApiError> {
        let av = v.get("apiVersion").and_then(|a| a.as_str()).unwrap_or("");
        let kd = v.get("kind").and_then(|a| a.as_str()).unwrap_or("");
        if (!kd.is_empty() && kd != k.kind) || (!av.is_empty() && av != k.api_version()) {
            return Err(ApiError::bad_request(format!(
                "the object is {av}/{kd} but was sent to the {} endpoint of {}: send it to its own resource",
                k.plural,
                k.api_version()
            )));
        }
        Ok(())
    }

    pub async fn update(&self, t: &Target, body: &[u8], o: WriteOpts) -> Result<Value, ApiError> {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("the request body is not a JSON object: {e}")))?;
        let name = t.name.clone().unwrap_or_default();
        if t.sub.as_deref() == Some("scale") {
            return self.scale(t, scale_replicas(&v, &name)?, rv_of(&v), o).await;
        }
        self.check_kind(t.kind, &v)?;
        if obj_name(&v) != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                obj_name(&v)
            )));
        }
        let v = incoming(t.kind, v);
        let ns = t.namespace.clone().unwrap_or_default();
        let kind = t.kind.storage();
        let current =
            self.store.get(&store_key(kind, &ns, &name)).ok_or_else(|| ApiError::not_found(kind.plural, &name))?;
        let want_rv = rv_of(&v);
        self.finish_update(kind, &ns, &name, &current, v, t.sub.as_deref(), want_rv, o)
            .await
            .map(|o| outgoing(t.kind, &o))
    }

    pub async fn patch(&self, t: &Target, content_type: &str, body: &[u8], o: WriteOpts) -> Result<Value, ApiError> {
        let pk = PatchKind::from_content_type(content_type).ok_or_else(|| {
            ApiError::new(
                415,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml (not {content_type:?})"
                ),
            )
        })?;
        let name = t.name.clone().unwrap_or_default();
        let ns = t.namespace.clone().unwrap_or_default();
        let kind = t.kind.storage();
        for _ in 0..8 {
            let current =
                self.store.get(&store_key(kind, &ns, &name)).ok_or_else(|| ApiError::not_found(kind.plural, &name))?;
            let view =
                if t.sub.as_deref() == Some("scale") { scale_of(kind, &current) } else { outgoing(t.kind, &current) };
            let patched = patch::apply(pk, &view, body)?;
            if t.sub.as_deref() == Some("scale") {
                return self.scale(t, scale_replicas(&patched, &name)?, None, o).await;
            }
            let cur_rv = rv_of(&current);
            // The precondition is a resourceVersion the patch itself names (the view it was
            // applied to always carries the current one); without one, a write that raced this
            // one is retried on the newer object.
            let asked_rv = if body_names_rv(body) { rv_of(&patched) } else { None };
            if asked_rv.is_some() && asked_rv != cur_rv {
                return Err(conflict(kind.plural, &name));
            }
            if obj_name(&patched) != name {
                return Err(ApiError::bad_request("a patch may not change metadata.name"));
            }
            let patched = incoming(t.kind, patched);
            match self.finish_update(kind, &ns, &name, &current, patched, t.sub.as_deref(), cur_rv, o).await {
                Err(e) if e.reason == "Conflict" && asked_rv.is_none() => continue,
                r => return r.map(|o| outgoing(t.kind, &o)),
            }
        }
        Err(conflict(kind.plural, &name))
    }

    /// Shared tail of update and patch: keep server-owned fields, admit, allocate, write.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn finish_update(
        &self,
        kind: &'static Kind,
        ns: &str,
        name: &str,
        current: &Value,
        mut v: Value,
        sub: Option<&str>,
        want_rv: Option<u64>,
        o: WriteOpts,
    ) -> Result<Value, ApiError> {
        if !v.is_object() {
            return Err(ApiError::bad_request("the object must be a JSON object"));
        }
        if sub == Some("status") {
            // Only status changes through the status subresource.
            let mut next = current.clone();
            next["status"] = v.get("status").cloned().unwrap_or(Value::Null);
            v = next;
        } else if has_status(kind) {
            match current.get("status") {
                Some(s) => v["status"] = s.clone(),
                None => {
                    v.as_object_mut().unwrap().remove("status");
                }
            }
        }
        // The deletion fields (deletionTimestamp kept, no new finalizers while deleting).
        if sub != Some("status") {
            check_deletion_fields(kind, name, current, &mut v)?;
            check_pod_binding(kind, name, current, &v)?;
        }
        // Server-owned metadata comes from the stored object.
        let sent_managed;
        {
            let cur_md = current.get("metadata").cloned().unwrap_or(json!({}));
            let md = v.as_object_mut().unwrap().entry("metadata").or_insert_with(|| json!({}));
            if !md.is_object() {
                return Err(ApiError::bad_request("metadata must be an object"));
            }
            for k in ["uid", "creationTimestamp", "namespace", "generation", "deletionTimestamp"] {
                match cur_md.get(k) {
                    Some(x) => {
                        md[k] = x.clone();
                    }
                    None => {
                        md.as_object_mut().unwrap().remove(k);
                    }
                }
            }
            sent_managed = md.as_object_mut().unwrap().remove("managedFields");
        }
        if kind.kind == "Service" {
            drop_type_dependent_fields(current, &mut v);
        }
        check_depth(&v)?;
        let sent = v;
        let mut v = objects::admit(kind, &sent)?;
        check_strict(o, kind, &sent, &v)?;
        crate::rbac_writes::check(self, kind, ns, &v, Some(current))?;
        self.track_update(kind, Some(current), sent_managed, &mut v, sub)?;
        if kind.kind == "Service" {
            self.check_external_ips(&v, Some(current))?;
        }
        // From here on, an error, a dry run or a write that changes nothing gives back what the
        // Service newly took (and keeps what it had).
        let reservation = if kind.kind == "Service" {
            self.allocate_service(&mut v, Some(current))?
        } else {
            Reservation::new(&self.alloc)
        };
        // The last finalizer of an object being deleted (its grace period over) removes it.
        if deletes_during_update(kind, current, &v) {
            drop(reservation);
            if o.dry_run {
                return Ok(v);
            }
            let gone = self
                .store
                .delete(store_key(kind, ns, name), want_rv.or(rv_of(current)))
                .await
                .map_err(|e| ApiError::from_store(e, kind.plural, name))?;
            self.after_removal(kind, &gone, false).await;
            return Ok(v);
        }
        if v_has_spec_generation(kind) && current.get("spec") != v.get("spec") {
            let g = current.pointer("/metadata/generation").and_then(|g| g.as_i64()).unwrap_or(1);
            v["metadata"]["generation"] = json!(g + 1);
        }
        // A write that changes nothing is not a write: same object, same resourceVersion.
        v["metadata"]["resourceVersion"] = current.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null);
        if &v == current && want_rv.is_none_or(|w| Some(w) == rv_of(current)) {
            return Ok(current.clone());
        }
        if o.dry_run {
            if want_rv.is_some_and(|w| Some(w) != rv_of(current)) {
                return Err(conflict(kind.plural, name));
            }
            return Ok(v);
        }
        let updated = self
            .store
            .update(store_key(kind, ns, name), v, want_rv)
            .await
            .map_err(|e| ApiError::from_store(e, kind.plural, name))?;
        reservation.commit();
        Ok((*updated).clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every namespace carries `kubernetes.io/metadata.name: <its name>` (what NetworkPolicy's
    /// namespaceSelector selects a namespace by name with), set on create and kept on every
    /// update and patch whatever they send, as kube-apiserver does.
    #[tokio::test]
    async fn a_namespace_always_carries_its_name_label() {
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let store = weft_store::Store::open(&dir.path().join("store.redb"), weft_store::DEFAULT_HISTORY).unwrap();
        let alloc = crate::alloc::Allocators {
            ips: crate::alloc::IpAllocator::new("10.96.0.0/24".parse().unwrap()),
            ports: crate::alloc::PortAllocator::new(30000..=30010),
        };
        let api = Api::new(store, alloc, Arc::new(crate::pod_logs::NoPodLogs));
        let kind = weft_api::kinds::by_path("", "v1", "namespaces").unwrap();
        let at = |name: Option<&str>| Target { kind, namespace: None, name: name.map(String::from), sub: None };
        let label = |v: &Value| v.pointer("/metadata/labels/kubernetes.io~1metadata.name").cloned();
        let body = |v: Value| serde_json::to_vec(&v).unwrap();
        let o = WriteOpts::default();
        let made = api
            .create(&at(None), &body(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}})), o)
            .await
            .unwrap();
        assert_eq!(label(&made), Some(json!("x")));
        // An update that changes it, or drops every label, gets it back.
        let mut v = made.clone();
        v["metadata"]["labels"] = json!({"kubernetes.io/metadata.name": "y", "team": "t"});
        let updated = api.update(&at(Some("x")), &body(v), o).await.unwrap();
        assert_eq!(label(&updated), Some(json!("x")));
        assert_eq!(updated.pointer("/metadata/labels/team"), Some(&json!("t")));
        let mut v = updated.clone();
        v["metadata"].as_object_mut().unwrap().remove("labels");
        assert_eq!(label(&api.update(&at(Some("x")), &body(v), o).await.unwrap()), Some(json!("x")));
        // Patches likewise.
        let merge = br#"{"metadata": {"labels": {"kubernetes.io/metadata.name": null}}}"#;
        let patched = api.patch(&at(Some("x")), "application/merge-patch+json", merge, o).await.unwrap();
        assert_eq!(label(&patched), Some(json!("x")));
        let jp = br#"[{"op": "replace", "path": "/metadata/labels/kubernetes.io~1metadata.name", "value": "z"}]"#;
        let patched = api.patch(&at(Some("x")), "application/json-patch+json", jp, o).await.unwrap();
        assert_eq!(label(&patched), Some(json!("x")));
        api.store.close();
    }

    #[test]
    fn a_patch_names_a_resource_version_only_when_its_body_does() {
        assert!(!body_names_rv(br#"{"status": {"phase": "Running"}}"#));
        assert!(body_names_rv(br#"{"metadata": {"resourceVersion": "12"}}"#));
        assert!(!body_names_rv(br#"{"metadata": {"resourceVersion": null}}"#));
        assert!(body_names_rv(br#"[{"op": "replace", "path": "/metadata/resourceVersion", "value": "3"}]"#));
        assert!(!body_names_rv(br#"[{"op": "replace", "path": "/spec/replicas", "value": 3}]"#));
    }
}
