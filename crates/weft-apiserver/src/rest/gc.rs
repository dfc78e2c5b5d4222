//! Garbage collection in the API server: what a removal sets off. Dependents (ownerReferences)
//! are deleted through the DELETE path, so pods among them go gracefully; `Orphan` takes the
//! owner's references off them instead; a `foregroundDeletion` owner goes once its last
//! dependent has; and the namespace controller's part: a Terminating namespace's content is
//! deleted, and the namespace removed once nothing is left in it, with the conditions
//! kube-controller-manager sets on it meanwhile. (`weft-controllers`' collector finishes a
//! cascade a crash interrupted; its namespace loop sends a DELETE again for each Terminating
//! namespace, which sweeps it again.)

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::{Value, json};
use weft_api::kinds::{self, Kind};
use weft_store::StoreError;

use super::delete::{
    DeleteOpts, Deleted, FOREGROUND, NAMESPACE_FINALIZER, Policy, being_deleted, deletion_grace, finalizers,
};
use super::{Api, obj_name, rv_of, store_key};

/// Conflicting writes retried before giving up.
const RETRIES: usize = 8;

fn namespaced_kinds() -> impl Iterator<Item = &'static Kind> {
    kinds::ALL.iter().filter(|k| !k.legacy && k.namespaced)
}

fn uid_of(v: &Value) -> &str {
    v.pointer("/metadata/uid").and_then(|u| u.as_str()).unwrap_or("")
}

fn namespace_of(v: &Value) -> &str {
    v.pointer("/metadata/namespace").and_then(|n| n.as_str()).unwrap_or("")
}

fn owner_refs(v: &Value) -> &[Value] {
    v.pointer("/metadata/ownerReferences").and_then(|r| r.as_array()).map(Vec::as_slice).unwrap_or_default()
}

fn owned_by(v: &Value, uid: &str) -> bool {
    owner_refs(v).iter().any(|r| r.get("uid").and_then(|u| u.as_str()) == Some(uid))
}

/// The kind an ownerReference names (None for one this server does not serve).
fn owner_kind(r: &Value) -> Option<&'static Kind> {
    let (av, kind) = (r.get("apiVersion")?.as_str()?, r.get("kind")?.as_str()?);
    kinds::ALL.iter().find(|k| !k.legacy && k.kind == kind && k.api_version() == av)
}

fn is_conflict(e: &StoreError) -> bool {
    matches!(e, StoreError::Conflict { .. })
}

/// kube-controller-manager's namespace conditions for what is still in a Terminating namespace:
/// `remaining` is (resource, count), `held` is (finalizer, count).
fn namespace_conditions(
    old: &[Value],
    remaining: &BTreeMap<&str, usize>,
    held: &BTreeMap<String, usize>,
    now: &str,
) -> Vec<Value> {
    let content = if remaining.is_empty() {
        ("False", "ContentRemoved", "All content successfully removed".to_string())
    } else {
        let parts: Vec<String> =
            remaining.iter().map(|(r, n)| format!("{r}.{} has {n} resource instances", group_of(r))).collect();
        ("True", "SomeResourcesRemain", format!("Some resources are remaining: {}", parts.join(", ")))
    };
    let fins = if held.is_empty() {
        ("False", "ContentHasNoFinalizers", "All content-preserving finalizers finished".to_string())
    } else {
        let parts: Vec<String> = held.iter().map(|(f, n)| format!("{f} in {n} resource instances")).collect();
        (
            "True",
            "SomeFinalizersRemain",
            format!("Some content in the namespace has finalizers remaining: {}", parts.join(", ")),
        )
    };
    let want = [
        (
            "NamespaceDeletionDiscoveryFailure",
            ("False", "ResourcesDiscovered", "All resources successfully discovered".to_string()),
        ),
        (
            "NamespaceDeletionGroupVersionParsingFailure",
            ("False", "ParsedGroupVersions", "All legacy kube types successfully parsed".to_string()),
        ),
        (
            "NamespaceDeletionContentFailure",
            ("False", "ContentDeleted", "All content successfully deleted, may be waiting on finalization".to_string()),
        ),
        ("NamespaceContentRemaining", content),
        ("NamespaceFinalizersRemaining", fins),
    ];
    want.into_iter()
        .map(|(ty, (status, reason, message))| {
            let before = old.iter().find(|c| c["type"] == ty);
            // The transition time moves only when the status does.
            let since = before
                .filter(|c| c["status"] == status)
                .and_then(|c| c.get("lastTransitionTime").cloned())
                .unwrap_or_else(|| json!(now));
            json!({"type": ty, "status": status, "reason": reason, "message": message, "lastTransitionTime": since})
        })
        .collect()
}

/// The API group of a resource this server serves ("" for the core group).
fn group_of(plural: &str) -> &'static str {
    kinds::ALL.iter().find(|k| k.plural == plural).map(|k| k.group).unwrap_or("")
}

impl Api {
    /// The objects that name `uid` as an owner: in `ns`, or in every namespace for an owner
    /// that has none (cluster-scoped).
    fn dependents(&self, ns: &str, uid: &str) -> Vec<(&'static Kind, Arc<Value>)> {
        let mut out = vec![];
        if uid.is_empty() {
            return out;
        }
        for k in namespaced_kinds() {
            let (items, _) = self.store.list(&k.resource_key(), (!ns.is_empty()).then_some(ns));
            out.extend(items.into_iter().filter(|o| owned_by(o, uid)).map(|o| (k, o)));
        }
        out
    }

    pub(super) fn has_dependents(&self, ns: &str, uid: &str) -> bool {
        !uid.is_empty()
            && namespaced_kinds().any(|k| {
                let (items, _) = self.store.list(&k.resource_key(), (!ns.is_empty()).then_some(ns));
                items.iter().any(|o| owned_by(o, uid))
            })
    }

    /// Deletes what `uid` owns, each through the DELETE path with `policy` (so the cascade goes
    /// on from there, and pods are deleted gracefully).
    pub(super) async fn delete_dependents(&self, uid: &str, ns: &str, policy: Policy) {
        let opts = DeleteOpts::with_policy(policy);
        for (k, o) in self.dependents(ns, uid) {
            if being_deleted(&o) && policy != Policy::Foreground {
                continue;
            }
            let (dns, name) = (namespace_of(&o).to_string(), obj_name(&o));
            if let Err(e) = self.delete_object(k, &dns, &name, &opts).await
                && e.code != 404
            {
                tracing::warn!(kind = k.kind, namespace = %dns, name = %name, owner = uid, error = %e.message, "deleting a dependent");
            }
        }
    }

    /// Takes `uid` off its dependents' ownerReferences (`Orphan` propagation).
    pub(super) async fn orphan_dependents(&self, ns: &str, uid: &str) {
        for (k, o) in self.dependents(ns, uid) {
            let key = store_key(k, namespace_of(&o), &obj_name(&o));
            for _ in 0..RETRIES {
                let Some(cur) = self.store.get(&key) else { break };
                let refs: Vec<Value> = owner_refs(&cur)
                    .iter()
                    .filter(|r| r.get("uid").and_then(|u| u.as_str()) != Some(uid))
                    .cloned()
                    .collect();
                let mut v = (*cur).clone();
                if refs.is_empty() {
                    v["metadata"].as_object_mut().map(|m| m.remove("ownerReferences"));
                } else {
                    v["metadata"]["ownerReferences"] = json!(refs);
                }
                match self.store.update(key.clone(), v, rv_of(&cur)).await {
                    Err(e) if is_conflict(&e) => continue,
                    Err(e) => {
                        tracing::warn!(kind = k.kind, name = %obj_name(&cur), owner = uid, error = %e, "orphaning a dependent");
                        break;
                    }
                    Ok(_) => break,
                }
            }
        }
    }

    /// Ends a foreground deletion whose dependents are all gone: the `foregroundDeletion`
    /// finalizer comes off, and the object goes if nothing else holds it. None when the object
    /// is gone or cannot be written.
    pub(super) async fn finish_foreground(
        &self,
        kind: &'static Kind,
        ns: &str,
        name: &str,
        uid: &str,
    ) -> Option<Deleted> {
        let key = store_key(kind, ns, name);
        for _ in 0..RETRIES {
            let cur = self.store.get(&key)?;
            let mut fins = finalizers(&cur);
            if uid_of(&cur) != uid
                || !being_deleted(&cur)
                || !fins.iter().any(|f| f == FOREGROUND)
                || self.has_dependents(ns, uid)
            {
                return Some(Deleted::Marked((*cur).clone()));
            }
            fins.retain(|f| f != FOREGROUND);
            if fins.is_empty() && deletion_grace(&cur).is_none_or(|g| g == 0) {
                match self.store.delete(key.clone(), rv_of(&cur)).await {
                    Ok(gone) => {
                        self.after_removal(kind, &gone, false).await;
                        return Some(Deleted::Removed((*gone).clone()));
                    }
                    Err(e) if is_conflict(&e) => continue,
                    Err(_) => return None,
                }
            }
            let mut v = (*cur).clone();
            if fins.is_empty() {
                v["metadata"].as_object_mut().map(|m| m.remove("finalizers"));
            } else {
                v["metadata"]["finalizers"] = json!(fins);
            }
            match self.store.update(key.clone(), v, rv_of(&cur)).await {
                Ok(u) => return Some(Deleted::Marked((*u).clone())),
                Err(e) if is_conflict(&e) => continue,
                Err(_) => return None,
            }
        }
        None
    }

    /// What the removal of `gone` sets off: its Service allocations are released, its
    /// dependents deleted (unless orphaned), its foreground owners and its Terminating namespace
    /// finished when it was the last thing they waited for.
    pub(super) fn after_removal<'a>(
        &'a self,
        kind: &'static Kind,
        gone: &'a Value,
        orphaned: bool,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if kind.kind == "Service" {
                self.release_service(gone);
            }
            if kind.kind == "Namespace" {
                return;
            }
            let ns = namespace_of(gone);
            if !orphaned {
                self.delete_dependents(uid_of(gone), ns, Policy::Background).await;
            }
            for r in owner_refs(gone) {
                let (Some(k), Some(name), Some(uid)) =
                    (owner_kind(r), r.get("name").and_then(|n| n.as_str()), r.get("uid").and_then(|u| u.as_str()))
                else {
                    continue;
                };
                self.finish_foreground(k, if k.namespaced { ns } else { "" }, name, uid).await;
            }
            if !ns.is_empty()
                && self.store.get(&weft_store::Key::new("namespaces", "", ns)).is_some_and(|n| being_deleted(&n))
            {
                self.finish_namespace(ns, false).await;
            }
        })
    }

    /// The namespace controller's sweep: everything in a Terminating namespace not yet being
    /// deleted is deleted (pods gracefully).
    pub(super) async fn sweep_namespace(&self, ns: &str) {
        let opts = DeleteOpts::with_policy(Policy::Background);
        for k in namespaced_kinds() {
            let (items, _) = self.store.list(&k.resource_key(), Some(ns));
            for o in items.iter().filter(|o| !being_deleted(o)) {
                if let Err(e) = self.delete_object(k, ns, &obj_name(o), &opts).await
                    && e.code != 404
                {
                    tracing::warn!(kind = k.kind, namespace = ns, name = %obj_name(o), error = %e.message, "deleting a Terminating namespace's content");
                }
            }
        }
    }

    /// Removes a Terminating namespace that holds nothing any more (the `kubernetes` finalizer
    /// comes off; the namespace goes unless its own finalizers hold it). With `conditions`, the
    /// namespace's status says what remains. The namespace as it was, if it went.
    pub(super) async fn finish_namespace(&self, ns: &str, conditions: bool) -> Option<Value> {
        let kind = kinds::by_path("", "v1", "namespaces")?;
        let key = store_key(kind, "", ns);
        for _ in 0..RETRIES {
            let cur = self.store.get(&key)?;
            if !being_deleted(&cur) {
                return None;
            }
            let mut remaining: BTreeMap<&str, usize> = BTreeMap::new();
            let mut held: BTreeMap<String, usize> = BTreeMap::new();
            for k in namespaced_kinds() {
                let (items, _) = self.store.list(&k.resource_key(), Some(ns));
                if !items.is_empty() {
                    remaining.insert(k.plural, items.len());
                }
                for f in items.iter().flat_map(|o| finalizers(o)) {
                    *held.entry(f).or_default() += 1;
                }
            }
            if !remaining.is_empty() && !conditions {
                return None;
            }
            let mut v = (*cur).clone();
            let old = cur.pointer("/status/conditions").and_then(|c| c.as_array()).cloned().unwrap_or_default();
            v["status"]["conditions"] = json!(namespace_conditions(&old, &remaining, &held, &super::now_rfc3339()));
            if remaining.is_empty() {
                let spec_fins: Vec<Value> = cur
                    .pointer("/spec/finalizers")
                    .and_then(|f| f.as_array())
                    .map(|f| f.iter().filter(|x| *x != NAMESPACE_FINALIZER).cloned().collect())
                    .unwrap_or_default();
                if let Some(spec) = v.get_mut("spec").and_then(|s| s.as_object_mut()) {
                    if spec_fins.is_empty() {
                        spec.remove("finalizers");
                    } else {
                        spec.insert("finalizers".into(), json!(spec_fins));
                    }
                }
                if spec_fins.is_empty() && finalizers(&cur).is_empty() {
                    match self.store.delete(key.clone(), rv_of(&cur)).await {
                        Ok(gone) => return Some((*gone).clone()),
                        Err(e) if is_conflict(&e) => continue,
                        Err(e) => {
                            tracing::warn!(namespace = ns, error = %e, "removing an empty Terminating namespace");
                            return None;
                        }
                    }
                }
            }
            if v == *cur {
                return None;
            }
            match self.store.update(key.clone(), v, rv_of(&cur)).await {
                Err(e) if is_conflict(&e) => continue,
                _ => return None,
            }
        }
        None
    }
}
