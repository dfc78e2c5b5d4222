//! The DELETE verb as kube-apiserver serves it: DeleteOptions (grace period, preconditions,
//! propagation policy, dryRun), graceful deletion of pods, finalizers, namespaces through
//! Terminating, and deletecollection.
//!
//! What a DELETE does to an object (kube-apiserver's `rest.BeforeDelete`, the pod strategy's
//! `CheckGracefulDelete` and the generic store's `Delete`):
//! - a pod bound to a node and not finished is marked: `deletionTimestamp` = now + grace and
//!   `deletionGracePeriodSeconds` = grace (DeleteOptions.gracePeriodSeconds, else the pod's
//!   `terminationGracePeriodSeconds`; a negative one counts as 1). It stays, Terminating, until
//!   its kubelet has stopped it and deletes it with grace 0. A later DELETE may only shorten
//!   the grace period; grace 0 (`kubectl delete --force --grace-period=0`) removes it at once.
//! - an object with `metadata.finalizers` is marked (`deletionTimestamp` now, grace 0) and
//!   stays until an update empties its finalizers (`verbs.rs`), which removes it.
//! - anything else is removed at once; the removal cascades (`gc.rs`).
//!
//! Propagation: `Background` (the default) deletes dependents after the owner is gone;
//! `Foreground` keeps the owner with the `foregroundDeletion` finalizer until every dependent
//! is gone (dependents are deleted in the foreground too); `Orphan` (and a user's `orphan`
//! finalizer) removes the owner's ownerReferences from its dependents right away, where
//! kube-controller-manager's collector would do it a moment later.
//!
//! Namespaces: DELETE sets `deletionTimestamp`, `status.phase: Terminating` and the
//! `kubernetes` finalizer in `spec.finalizers`, then deletes what the namespace holds (pods
//! gracefully); the namespace goes when the last object has gone (checked after every removal,
//! and again on every later DELETE of the namespace, which `weft-controllers`' namespace loop
//! sends for each Terminating namespace to finish what a restart interrupted).

use futures::future::BoxFuture;
use serde_json::{Value, json};
use weft_api::FieldError;
use weft_api::kinds::{self, Kind};
use weft_store::StoreError;

use super::{Api, Query, Target, WriteOpts, conflict, obj_name, outgoing, rv_of, selectors, store_key};
use crate::status::ApiError;

/// Names a user may not delete (kube-apiserver refuses them too).
const PROTECTED_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public"];
/// The finalizer of `Foreground` propagation.
pub(super) const FOREGROUND: &str = "foregroundDeletion";
/// The finalizer of `Orphan` propagation.
pub(super) const ORPHAN: &str = "orphan";
/// The namespace controller's finalizer in a namespace's `spec.finalizers`.
pub(super) const NAMESPACE_FINALIZER: &str = "kubernetes";
/// Conflicting writes retried before giving up with 409.
const RETRIES: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Policy {
    Orphan,
    Background,
    Foreground,
}

/// DeleteOptions, read once.
#[derive(Clone, Debug, Default)]
pub(super) struct DeleteOpts {
    pub grace: Option<i64>,
    pub uid: Option<String>,
    pub rv: Option<String>,
    pub policy: Option<Policy>,
    pub dry_run: bool,
}

impl DeleteOpts {
    /// What a cascade or a namespace's sweep uses: the object's own defaults.
    pub(super) fn with_policy(policy: Policy) -> DeleteOpts {
        DeleteOpts { policy: Some(policy), ..Default::default() }
    }

    /// A DELETE body: empty, or DeleteOptions as a JSON object (anything else is an error, not
    /// `{}`), with `?dryRun=All` from the query.
    pub(super) fn parse(body: &[u8], o: WriteOpts) -> Result<DeleteOpts, ApiError> {
        let v = if body.iter().all(u8::is_ascii_whitespace) {
            json!({})
        } else {
            match serde_json::from_slice::<Value>(body) {
                Ok(v @ Value::Object(_)) => v,
                Ok(_) => return Err(ApiError::bad_request("the DeleteOptions body must be a JSON object")),
                Err(e) => {
                    return Err(ApiError::bad_request(format!("the DeleteOptions body is not valid JSON: {e}")));
                }
            }
        };
        let invalid = |f: FieldError| ApiError::invalid("DeleteOptions", "", &[f]);
        let field = |k: &str| v.get(k).filter(|x| !x.is_null());
        let policy = match field("propagationPolicy") {
            None => None,
            Some(p) => Some(match p.as_str() {
                Some("Orphan") => Policy::Orphan,
                Some("Background") => Policy::Background,
                Some("Foreground") => Policy::Foreground,
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "DeleteOptions.propagationPolicy {p}: use \"Orphan\", \"Background\" or \"Foreground\""
                    )));
                }
            }),
        };
        let orphan = match field("orphanDependents") {
            None => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(x) => {
                return Err(ApiError::bad_request(format!("DeleteOptions.orphanDependents {x}: use true or false")));
            }
        };
        if policy.is_some() && orphan.is_some() {
            return Err(invalid(FieldError::invalid(
                "propagationPolicy",
                field("propagationPolicy").unwrap(),
                "orphanDependents and deletionPropagation cannot be both set: send propagationPolicy only",
            )));
        }
        let policy = policy.or(orphan.map(|o| if o { Policy::Orphan } else { Policy::Background }));
        let grace = match field("gracePeriodSeconds") {
            None => None,
            Some(g) => Some(g.as_i64().ok_or_else(|| {
                ApiError::bad_request(format!("DeleteOptions.gracePeriodSeconds {g}: use a whole number of seconds"))
            })?),
        };
        let mut dry_run = o.dry_run;
        if let Some(d) = field("dryRun") {
            for x in d.as_array().ok_or_else(|| ApiError::bad_request("DeleteOptions.dryRun must be a list"))? {
                match x.as_str() {
                    Some("All") => dry_run = true,
                    other => {
                        return Err(invalid(FieldError::not_supported("dryRun", other.unwrap_or(""), &["All"])));
                    }
                }
            }
        }
        let pre = |k: &str| v.pointer(&format!("/preconditions/{k}")).and_then(|u| u.as_str()).map(String::from);
        Ok(DeleteOpts { grace, uid: pre("uid"), rv: pre("resourceVersion"), policy, dry_run })
    }
}

/// What a DELETE did to one object.
#[derive(Debug)]
pub(super) enum Deleted {
    /// Still there, marked for deletion (now or before): the object as it is.
    Marked(Value),
    /// Gone: the object as it was last.
    Removed(Value),
}

impl Deleted {
    pub(super) fn object(&self) -> &Value {
        match self {
            Deleted::Marked(v) | Deleted::Removed(v) => v,
        }
    }
}

/// What to do with an object a DELETE names (decided without I/O).
#[derive(Debug, PartialEq)]
pub(super) enum Action {
    /// Deletion is already under way with no shorter grace: nothing changes.
    Pending,
    /// Keep it, written as this (marked for deletion).
    Mark(Value),
    /// Remove it now.
    Remove,
}

#[derive(Debug, PartialEq)]
pub(super) struct Plan {
    pub action: Action,
    /// Take this object's ownerReferences off its dependents.
    pub orphan: bool,
    /// The object waits for its dependents (`foregroundDeletion`).
    pub foreground: bool,
}

pub(super) fn finalizers(v: &Value) -> Vec<String> {
    v.pointer("/metadata/finalizers")
        .and_then(|f| f.as_array())
        .map(|f| f.iter().filter_map(|x| x.as_str().map(String::from)).collect())
        .unwrap_or_default()
}

fn set_finalizers(v: &mut Value, fins: &[String]) {
    let Some(md) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) else { return };
    if fins.is_empty() {
        md.remove("finalizers");
    } else {
        md.insert("finalizers".into(), json!(fins));
    }
}

fn deletion_timestamp(v: &Value) -> Option<jiff::Timestamp> {
    v.pointer("/metadata/deletionTimestamp").and_then(|t| t.as_str()).and_then(|t| t.parse().ok())
}

pub(super) fn being_deleted(v: &Value) -> bool {
    v.pointer("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null())
}

pub(super) fn deletion_grace(v: &Value) -> Option<i64> {
    v.pointer("/metadata/deletionGracePeriodSeconds").and_then(|g| g.as_i64())
}

fn rfc3339(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// `now` plus `secs` seconds, or the last representable time: a grace period comes from the
/// client (gracePeriodSeconds, terminationGracePeriodSeconds) and may be any i64.
fn after(now: jiff::Timestamp, secs: i64) -> jiff::Timestamp {
    now.checked_add(jiff::SignedDuration::from_secs(secs)).unwrap_or(jiff::Timestamp::MAX)
}

fn bump_generation(v: &mut Value) {
    if let Some(g) = v.pointer("/metadata/generation").and_then(|g| g.as_i64()).filter(|g| *g > 0) {
        v["metadata"]["generation"] = json!(g + 1);
    }
}

/// The grace period a first DELETE gives a pod (the pod strategy's `CheckGracefulDelete`): the
/// options', else the pod's own; 0 for a pod no node runs or one that has finished.
fn pod_grace(pod: &Value, asked: Option<i64>) -> i64 {
    let mut period = asked.or_else(|| pod.pointer("/spec/terminationGracePeriodSeconds").and_then(|g| g.as_i64()));
    let phase = pod.pointer("/status/phase").and_then(|p| p.as_str()).unwrap_or("");
    let node = pod.pointer("/spec/nodeName").and_then(|n| n.as_str()).unwrap_or("");
    if node.is_empty() || phase == "Succeeded" || phase == "Failed" {
        period = Some(0);
    }
    match period.unwrap_or(0) {
        p if p < 0 => 1,
        p => p,
    }
}

/// Decides a DELETE of `current` (not a namespace): kube-apiserver's `BeforeDelete`, its
/// `deletionFinalizersForGarbageCollection` and `updateForGracefulDeletionAndFinalizers`.
/// `has_dependents` says whether anything names it as an owner (Foreground without dependents
/// is Background).
pub(super) fn plan_delete(
    kind: &Kind,
    current: &Value,
    opts: &DeleteOpts,
    has_dependents: bool,
    now: jiff::Timestamp,
) -> Plan {
    let pending = Plan { action: Action::Pending, orphan: false, foreground: false };
    let mut v = current.clone();
    // A negative grace period counts as 1 s.
    let asked = opts.grace.map(|g| if g < 0 { 1 } else { g });
    // Some(period) when the object is deleted gracefully (only pods are).
    let mut graceful = None;
    if let Some(ts) = deletion_timestamp(current).filter(|_| kind.kind == "Pod") {
        match deletion_grace(current) {
            // Marked without a grace period (finalizers): nothing to shorten.
            None | Some(0) => {}
            Some(had) => match asked {
                Some(p) if p < had => {
                    // `had` may be past the last representable time (then `ts` saturated).
                    let at = ts
                        .checked_sub(jiff::SignedDuration::from_secs(had))
                        .and_then(|t| t.checked_add(jiff::SignedDuration::from_secs(p)))
                        .unwrap_or_else(|_| after(now, p).min(ts));
                    v["metadata"]["deletionTimestamp"] = json!(rfc3339(at));
                    v["metadata"]["deletionGracePeriodSeconds"] = json!(p);
                    graceful = Some(p);
                }
                // Only a shorter grace period may be given; the finalizers stay as they are.
                _ => return pending,
            },
        }
    } else if kind.kind == "Pod" && !being_deleted(current) {
        let p = pod_grace(current, asked);
        v["metadata"]["deletionTimestamp"] = json!(rfc3339(after(now, p)));
        v["metadata"]["deletionGracePeriodSeconds"] = json!(p);
        bump_generation(&mut v);
        graceful = Some(p);
    }
    // The propagation policy's finalizers.
    let mut fins = finalizers(current);
    let mut orphan = false;
    match opts.policy {
        Some(Policy::Orphan) => {
            fins.retain(|f| f != FOREGROUND);
            orphan = true;
        }
        Some(Policy::Foreground) => {
            fins.retain(|f| f != ORPHAN);
            if has_dependents && !fins.iter().any(|f| f == FOREGROUND) {
                fins.push(FOREGROUND.into());
            }
        }
        Some(Policy::Background) => fins.retain(|f| f != FOREGROUND && f != ORPHAN),
        None => {}
    }
    // Orphaning is done at once, so its finalizer never waits.
    if fins.iter().any(|f| f == ORPHAN) {
        orphan = true;
        fins.retain(|f| f != ORPHAN);
    }
    let foreground = fins.iter().any(|f| f == FOREGROUND);
    set_finalizers(&mut v, &fins);
    let action = match graceful {
        None if fins.is_empty() => Action::Remove,
        None => {
            // markAsDeleting: now (or the earlier time it already has), grace 0.
            match deletion_timestamp(&v) {
                Some(t) if t <= now => {}
                _ => {
                    if !being_deleted(&v) {
                        bump_generation(&mut v);
                    }
                    v["metadata"]["deletionTimestamp"] = json!(rfc3339(now));
                }
            }
            v["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            if &v == current { Action::Pending } else { Action::Mark(v) }
        }
        Some(p) if p > 0 || !fins.is_empty() => Action::Mark(v),
        Some(_) => Action::Remove,
    };
    Plan { action, orphan, foreground }
}

/// kube-apiserver's rules for the deletion fields on an update (`rest.BeforeUpdate` and
/// `ValidateObjectMetaUpdate`): a deletionTimestamp is kept whatever the update says and cannot
/// be set by one; deletionGracePeriodSeconds cannot change; no finalizer may be added once the
/// object is being deleted. A namespace's `spec.finalizers` change only through its deletion.
pub(super) fn check_deletion_fields(kind: &Kind, name: &str, current: &Value, v: &mut Value) -> Result<(), ApiError> {
    match v.get("metadata") {
        None | Some(Value::Null) => v["metadata"] = json!({}),
        // Refused with its own message by the caller.
        Some(m) if !m.is_object() => return Ok(()),
        Some(_) => {}
    }
    let mut errs = vec![];
    let new_ts = v.pointer("/metadata/deletionTimestamp").filter(|t| !t.is_null()).cloned();
    match current.pointer("/metadata/deletionTimestamp").filter(|t| !t.is_null()) {
        Some(ts) => v["metadata"]["deletionTimestamp"] = ts.clone(),
        None => {
            if let Some(t) = new_ts {
                errs.push(FieldError::invalid(
                    "metadata.deletionTimestamp",
                    t,
                    "field is immutable: an object is marked for deletion by DELETE, not by an update",
                ));
            }
        }
    }
    let cur_grace = current.pointer("/metadata/deletionGracePeriodSeconds").filter(|g| !g.is_null());
    match (cur_grace, v.pointer("/metadata/deletionGracePeriodSeconds").filter(|g| !g.is_null())) {
        (Some(c), None) => v["metadata"]["deletionGracePeriodSeconds"] = c.clone(),
        (c, Some(n)) if c != Some(n) => errs.push(FieldError::invalid(
            "metadata.deletionGracePeriodSeconds",
            n,
            "field is immutable: a DELETE with a shorter gracePeriodSeconds shortens it",
        )),
        _ => {}
    }
    if being_deleted(current) {
        let old = finalizers(current);
        let mut extra: Vec<String> = finalizers(v).into_iter().filter(|f| !old.contains(f)).collect();
        extra.sort();
        extra.dedup();
        if !extra.is_empty() {
            let list: Vec<String> = extra.iter().map(|f| format!("{f:?}")).collect();
            errs.push(FieldError::forbidden(
                "metadata.finalizers",
                format!(
                    "no new finalizers can be added if the object is being deleted, found new finalizers []string{{{}}}",
                    list.join(", ")
                ),
            ));
        }
    }
    if kind.kind == "Namespace" {
        match current.pointer("/spec/finalizers") {
            Some(f) => {
                if !v.get("spec").is_some_and(|s| s.is_object()) {
                    v["spec"] = json!({});
                }
                v["spec"]["finalizers"] = f.clone();
            }
            None => {
                if let Some(s) = v.get_mut("spec").and_then(|s| s.as_object_mut()) {
                    s.remove("finalizers");
                }
            }
        }
    }
    if errs.is_empty() { Ok(()) } else { Err(ApiError::invalid(kind.kind, name, &errs)) }
}

/// Whether an update that turned `current` into `next` removes the object (the generic store's
/// `ShouldDeleteDuringUpdate`): it is being deleted, its grace period is over (0) and its last
/// finalizer is gone; for a namespace, also the namespace controller's.
pub(super) fn deletes_during_update(kind: &Kind, current: &Value, next: &Value) -> bool {
    if !being_deleted(current) || !finalizers(next).is_empty() {
        return false;
    }
    if kind.kind == "Namespace" {
        return next.pointer("/spec/finalizers").and_then(|f| f.as_array()).is_none_or(|f| f.is_empty());
    }
    deletion_grace(current) == Some(0)
}

/// kube-apiserver's 409 for a precondition that does not hold.
fn precondition_failed(plural: &str, name: &str, what: String) -> ApiError {
    let mut e = ApiError::new(409, "Conflict", format!("Operation cannot be fulfilled on {plural} {name:?}: {what}"));
    e.details = Some(json!({"name": name, "kind": plural}));
    e
}

fn check_preconditions(kind: &Kind, name: &str, current: &Value, opts: &DeleteOpts) -> Result<(), ApiError> {
    let uid = current.pointer("/metadata/uid").and_then(|u| u.as_str()).unwrap_or("");
    if let Some(want) = opts.uid.as_deref().filter(|w| *w != uid) {
        return Err(precondition_failed(
            kind.plural,
            name,
            format!(
                "the UID in the precondition ({want}) does not match the UID in record ({uid}). The object might have been deleted and then recreated"
            ),
        ));
    }
    let rv = current.pointer("/metadata/resourceVersion").and_then(|r| r.as_str()).unwrap_or("");
    if let Some(want) = opts.rv.as_deref().filter(|w| *w != rv) {
        return Err(precondition_failed(
            kind.plural,
            name,
            format!(
                "the ResourceVersion in the precondition ({want}) does not match the ResourceVersion in record ({rv}). The object might have been modified"
            ),
        ));
    }
    Ok(())
}

fn is_conflict(e: &StoreError) -> bool {
    matches!(e, StoreError::Conflict { .. })
}

impl Api {
    pub async fn delete(&self, t: &Target, body: &[u8], o: WriteOpts) -> Result<Value, ApiError> {
        let name = t.name.clone().unwrap_or_default();
        let ns = t.namespace.clone().unwrap_or_default();
        let kind = t.kind.storage();
        if let Some(sub) = &t.sub {
            // Deleting `pods/x/status` must not delete the pod.
            return Err(ApiError::method_not_allowed(format!(
                "the server does not allow DELETE on {}/{sub}: delete the {} itself",
                kind.plural, kind.singular
            )));
        }
        let opts = DeleteOpts::parse(body, o)?;
        if kind.kind == "Namespace" && PROTECTED_NAMESPACES.contains(&name.as_str()) {
            return Err(ApiError::new(
                403,
                "Forbidden",
                format!("namespaces {name:?} is forbidden: this namespace may not be deleted"),
            ));
        }
        let ns = if kind.namespaced { ns } else { String::new() };
        let done = self.delete_object(kind, &ns, &name, &opts).await?;
        Ok(outgoing(t.kind, done.object()))
    }

    /// DELETE on a collection (`deletecollection`): every object the selectors pick, each through
    /// the same path as a DELETE of it (pods gracefully). Answers the list of what was deleted.
    pub async fn delete_collection(&self, t: &Target, q: &Query, body: &[u8], o: WriteOpts) -> Result<Value, ApiError> {
        let kind = t.kind.storage();
        if t.sub.is_some() || kind.kind == "Namespace" {
            return Err(ApiError::method_not_allowed(format!(
                "the server does not allow deletecollection on {}: delete them one by one",
                t.kind.plural
            )));
        }
        let opts = DeleteOpts::parse(body, o)?;
        let (ls, fs) = selectors(q)?;
        let namespace = t.namespace.as_deref().filter(|_| kind.namespaced);
        let (items, rev) = self.store.list(&kind.resource_key(), namespace);
        let mut out = vec![];
        for item in items.iter().filter(|o| ls.matches(o) && fs.matches(o)) {
            let ns = item.pointer("/metadata/namespace").and_then(|n| n.as_str()).unwrap_or("");
            match self.delete_object(kind, ns, &obj_name(item), &opts).await {
                Ok(d) => out.push(outgoing(t.kind, d.object())),
                // Gone meanwhile: that is what was asked.
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(json!({
            "kind": format!("{}List", t.kind.kind),
            "apiVersion": t.kind.api_version(),
            "metadata": {"resourceVersion": rev.to_string()},
            "items": out,
        }))
    }

    /// One object through the whole DELETE path, boxed: the cascade comes back here.
    pub(super) fn delete_object<'a>(
        &'a self,
        kind: &'static Kind,
        ns: &'a str,
        name: &'a str,
        opts: &'a DeleteOpts,
    ) -> BoxFuture<'a, Result<Deleted, ApiError>> {
        Box::pin(async move {
            if kind.kind == "Namespace" {
                return self.delete_namespace(name, opts).await;
            }
            let key = store_key(kind, ns, name);
            for _ in 0..RETRIES {
                let current = self.store.get(&key).ok_or_else(|| ApiError::not_found(kind.plural, name))?;
                check_preconditions(kind, name, &current, opts)?;
                let uid = current.pointer("/metadata/uid").and_then(|u| u.as_str()).unwrap_or("").to_string();
                let has_dependents = opts.policy == Some(Policy::Foreground) && self.has_dependents(ns, &uid);
                let plan = plan_delete(kind, &current, opts, has_dependents, jiff::Timestamp::now());
                if opts.dry_run {
                    return Ok(match plan.action {
                        Action::Pending => Deleted::Marked((*current).clone()),
                        Action::Mark(v) => Deleted::Marked(v),
                        Action::Remove => Deleted::Removed((*current).clone()),
                    });
                }
                if plan.orphan {
                    self.orphan_dependents(ns, &uid).await;
                }
                let at = rv_of(&current);
                match plan.action {
                    Action::Pending => {
                        // A DELETE again finishes a foreground deletion a restart interrupted.
                        let now = Deleted::Marked((*current).clone());
                        if plan.foreground {
                            return Ok(self.finish_foreground(kind, ns, name, &uid).await.unwrap_or(now));
                        }
                        return Ok(now);
                    }
                    Action::Mark(v) => match self.store.update(key.clone(), v, at).await {
                        Ok(marked) => {
                            let now = Deleted::Marked((*marked).clone());
                            if plan.foreground {
                                self.delete_dependents(&uid, ns, Policy::Foreground).await;
                                return Ok(self.finish_foreground(kind, ns, name, &uid).await.unwrap_or(now));
                            }
                            return Ok(now);
                        }
                        Err(e) if is_conflict(&e) && opts.rv.is_none() => continue,
                        Err(e) => return Err(ApiError::from_store(e, kind.plural, name)),
                    },
                    Action::Remove => match self.store.delete(key.clone(), at).await {
                        Ok(gone) => {
                            self.after_removal(kind, &gone, plan.orphan).await;
                            return Ok(Deleted::Removed((*gone).clone()));
                        }
                        Err(e) if is_conflict(&e) && opts.rv.is_none() => continue,
                        Err(e) => return Err(ApiError::from_store(e, kind.plural, name)),
                    },
                }
            }
            Err(conflict(kind.plural, name))
        })
    }

    /// DELETE of a namespace: the first marks it Terminating; each sweeps what it holds and
    /// removes it once it is empty.
    async fn delete_namespace(&self, name: &str, opts: &DeleteOpts) -> Result<Deleted, ApiError> {
        let kind = kinds::by_path("", "v1", "namespaces").expect("namespaces are served");
        let key = store_key(kind, "", name);
        // The namespace as last seen marked (what the answer is if the sweep ends it).
        let mut marked = None;
        for _ in 0..RETRIES {
            let current = self.store.get(&key).ok_or_else(|| ApiError::not_found(kind.plural, name))?;
            check_preconditions(kind, name, &current, opts)?;
            if being_deleted(&current) {
                if opts.dry_run {
                    return Ok(Deleted::Marked((*current).clone()));
                }
                marked = Some((*current).clone());
                break;
            }
            let mut v = (*current).clone();
            v["metadata"]["deletionTimestamp"] = json!(super::now_rfc3339());
            if !v.get("status").is_some_and(|s| s.is_object()) {
                v["status"] = json!({});
            }
            v["status"]["phase"] = json!("Terminating");
            if !v.get("spec").is_some_and(|s| s.is_object()) {
                v["spec"] = json!({});
            }
            let mut spec_fins: Vec<Value> = v["spec"]["finalizers"].as_array().cloned().unwrap_or_default();
            if !spec_fins.iter().any(|f| f == NAMESPACE_FINALIZER) {
                spec_fins.push(json!(NAMESPACE_FINALIZER));
            }
            v["spec"]["finalizers"] = json!(spec_fins);
            if opts.dry_run {
                return Ok(Deleted::Marked(v));
            }
            match self.store.update(key.clone(), v, rv_of(&current)).await {
                Ok(m) => {
                    marked = Some((*m).clone());
                    break;
                }
                Err(e) if is_conflict(&e) && opts.rv.is_none() => continue,
                Err(e) => return Err(ApiError::from_store(e, kind.plural, name)),
            }
        }
        let Some(marked) = marked else { return Err(conflict(kind.plural, name)) };
        self.sweep_namespace(name).await;
        // The last object's removal may have ended the namespace already.
        match self.finish_namespace(name, true).await {
            Some(gone) => Ok(Deleted::Removed(gone)),
            None => match self.store.get(&key) {
                Some(v) => Ok(Deleted::Marked((*v).clone())),
                None => Ok(Deleted::Removed(marked)),
            },
        }
    }
}

#[cfg(test)]
#[path = "delete_tests.rs"]
mod tests;
