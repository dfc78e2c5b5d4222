//! Who owns which fields after a write (structured-merge-diff's `merge.Updater` and the
//! managers kube-apiserver wraps it in: strip-meta, build-manager-info, managed-fields-updater,
//! cap-managers, and the client-side-apply migration of last-applied-manager/updater).
//!
//! - Update (create, update, patch): the fields the write added or changed become its manager's
//!   and are taken from every other manager; fields it removed are taken from everyone.
//! - Apply: the configuration is merged into the live object; fields the applier set last time
//!   and omits now are removed unless another manager owns them; a change to a field another
//!   manager owns is a conflict unless forced (then it changes hands).

use std::borrow::Cow;
use std::collections::HashMap;

use serde_json::Value;

use crate::managed::{Entry, Id, Managed, Operation, seconds};
use crate::path::{self, Path, PathElement};
use crate::schema::{Schema, TypeRef};
use crate::set::Set;
use crate::typed::{self, Comparison, Invalid};
use crate::value;

/// At most this many Update entries are kept; the oldest are merged into `ancient-changes`.
pub const MAX_UPDATE_MANAGERS: usize = 10;

pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The manager `kubectl apply --server-side` uses, whose applies take over client-side apply.
const KUBECTL: &str = "kubectl";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub manager: Id,
    pub path: Path,
}

impl Conflict {
    /// The `field` of its status cause: `.spec.replicas`.
    pub fn field(&self) -> String {
        path::to_string(&self.path)
    }

    pub fn message(&self) -> String {
        format!("conflict with {}", self.manager.describe())
    }
}

#[derive(Debug)]
pub enum ApplyError {
    /// Fields other managers own would change (409).
    Conflicts(Vec<Conflict>),
    /// A configuration that cannot be applied (400), with upstream's message.
    BadRequest(String),
    /// A configuration that does not fit the kind's type.
    Invalid(Invalid),
}

/// kube-apiserver's message for an apply that conflicts.
pub fn conflict_message(cs: &[Conflict]) -> String {
    if let [c] = cs {
        return format!("Apply failed with 1 conflict: {}: {}", c.message(), c.field());
    }
    let mut managers: Vec<&Id> = vec![];
    for c in cs {
        if !managers.contains(&&c.manager) {
            managers.push(&c.manager);
        }
    }
    managers.sort_by_key(|m| m.identifier());
    let mut lines = vec![];
    for m in managers {
        lines.push(format!("conflicts with {}:", m.describe()));
        lines.extend(cs.iter().filter(|c| &c.manager == m).map(|c| format!("- {}", c.field())));
    }
    format!("Apply failed with {} conflicts: {}", cs.len(), lines.join("\n"))
}

/// The result of an apply: the object to write (with its new managedFields) and whether the
/// object itself changed (an unchanged apply may still change ownership).
#[derive(Debug)]
pub struct Applied {
    pub object: Value,
    pub changed: bool,
}

/// One write's context: the kind's type, the request's version and subresource, and now.
pub struct Updater<'a> {
    pub schema: &'a Schema,
    pub root: TypeRef,
    /// The request's `group/version` (`apps/v1`, `v1`).
    pub api_version: &'a str,
    /// `""`, `"status"` or `"scale"`.
    pub subresource: &'a str,
    /// Fields this endpoint resets rather than takes (the main resource's `status`; all but
    /// `status` for the status subresource): nobody gains or loses them here.
    pub ignored: &'a Set,
    /// RFC 3339.
    pub now: &'a str,
}

/// Fields never tracked (upstream's strip-meta manager).
fn strip_set() -> Set {
    let f = |n: &str| PathElement::Field(n.into());
    let mut s = Set::new();
    for p in ["apiVersion", "kind", "metadata"] {
        s.insert(&[f(p)]);
    }
    for m in [
        "name",
        "namespace",
        "creationTimestamp",
        "selfLink",
        "uid",
        "clusterName",
        "generation",
        "managedFields",
        "resourceVersion",
    ] {
        s.insert(&[f("metadata"), f(m)]);
    }
    s
}

/// `v` without `metadata.managedFields` (the walks must not see them).
fn without_managed(v: &Value) -> Cow<'_, Value> {
    if v.pointer("/metadata/managedFields").is_none() {
        return Cow::Borrowed(v);
    }
    let mut c = v.clone();
    if let Some(md) = c.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        md.remove("managedFields");
    }
    Cow::Owned(c)
}

impl Updater<'_> {
    /// What an object of this kind is before its creation (see [`Schema::zero`]).
    pub fn zero(&self) -> Value {
        self.schema.zero(self.root)
    }

    /// The managers after a create, update or patch by `manager` that turned `live` into `new`
    /// (for a create, `live` is [`Updater::zero`]).
    pub fn update(&self, live: &Value, new: &Value, managed: &Managed, manager: &str) -> Managed {
        let (live, new) = (without_managed(live), without_managed(new));
        let mut managed = managed.clone();
        let Ok(cmp) = self.take_changed(&live, &new, &mut managed, None, true) else {
            return managed;
        };
        let set = cmp.modified.union(&cmp.added).recursive_difference(self.ignored).difference(&strip_set());
        if !set.is_empty() {
            let manager = if manager.is_empty() { "unknown" } else { manager };
            let id = Id::update(manager, self.api_version, self.subresource);
            let e = managed.entries.entry(id).or_insert_with(|| Entry {
                set: Set::new(),
                api_version: self.api_version.to_string(),
                time: None,
            });
            e.set.union_in(&set);
            e.api_version = self.api_version.to_string();
            e.time = Some(self.now.to_string());
        }
        cap_update_managers(&mut managed);
        managed
    }

    /// Compares `live` and `new` and takes what changed from every manager but `skip`:
    /// conflicts (owned fields that changed) are an error unless `force`.
    fn take_changed(
        &self,
        live: &Value,
        new: &Value,
        managed: &mut Managed,
        skip: Option<&Id>,
        force: bool,
    ) -> Result<Comparison, Vec<Conflict>> {
        let cmp = typed::compare(self.schema, self.root, live, new).exclude(self.ignored);
        let changed = cmp.modified.union(&cmp.added);
        let mut conflicts = vec![];
        for (id, e) in &managed.entries {
            if Some(id) == skip {
                continue;
            }
            let c = e.set.intersection(&changed);
            conflicts.extend(c.paths().into_iter().map(|path| Conflict { manager: id.clone(), path }));
        }
        if !force && !conflicts.is_empty() {
            return Err(conflicts);
        }
        for (id, e) in managed.entries.iter_mut() {
            if Some(id) == skip {
                continue;
            }
            e.set = e.set.difference(&changed).difference(&cmp.removed);
        }
        managed.entries.retain(|_, e| !e.set.is_empty());
        Ok(cmp)
    }

    /// Server-side apply of `config` by `manager` onto `live` (for a create, `live` is
    /// [`Updater::zero`]). On success, the object to write; its managedFields are `managed`'s.
    pub fn apply(
        &self,
        live: &Value,
        config: &Value,
        managed: &mut Managed,
        manager: &str,
        force: bool,
    ) -> Result<Applied, ApplyError> {
        let version = config.get("apiVersion").and_then(|v| v.as_str()).unwrap_or("");
        if version != self.api_version {
            return Err(ApplyError::BadRequest(format!(
                "Incorrect version specified in apply patch. Specified patch version: {version}, expected: {}",
                self.api_version
            )));
        }
        if config.pointer("/metadata/managedFields").is_some_and(|m| !m.is_null()) {
            return Err(ApplyError::BadRequest("metadata.managedFields must be nil".into()));
        }
        let invalid = typed::validate(self.schema, self.root, config, false);
        if !invalid.is_empty() {
            return Err(ApplyError::Invalid(invalid));
        }
        let live = without_managed(live);
        let mut attempt = managed.clone();
        let mut out = match self.apply_once(&live, config, &mut attempt, manager, force) {
            Err(ApplyError::Conflicts(cs)) if manager == KUBECTL => {
                // Fields kubectl last applied client-side (and still as it applied them) are
                // kubectl's to take: the move from client-side to server-side apply.
                let allowed = self.allowed_from_last_applied(&live).unwrap_or_default();
                let remaining: Vec<Conflict> = cs.into_iter().filter(|c| !allowed.has(&c.path)).collect();
                if !remaining.is_empty() {
                    return Err(ApplyError::Conflicts(remaining));
                }
                attempt = managed.clone();
                self.apply_once(&live, config, &mut attempt, manager, true)?
            }
            r => r?,
        };
        *managed = attempt;
        if manager == KUBECTL && has_last_applied(&out.object) {
            let text = last_applied_of(config);
            if let Some(a) = out.object.pointer_mut("/metadata/annotations").and_then(|a| a.as_object_mut()) {
                a.insert(LAST_APPLIED.into(), Value::String(text));
            }
            out.changed = out.changed || !value::equals(&out.object, &live);
        }
        Ok(out)
    }

    fn apply_once(
        &self,
        live: &Value,
        config: &Value,
        managed: &mut Managed,
        manager: &str,
        force: bool,
    ) -> Result<Applied, ApplyError> {
        let id = Id::apply(manager, self.subresource);
        let merged = typed::merge(self.schema, self.root, live, config)
            .map_err(|e| ApplyError::BadRequest(format!("failed to merge config: {e}")))?;
        let last = managed.entries.get(&id).map(|e| e.set.clone());
        let set = typed::to_field_set(self.schema, self.root, config).recursive_difference(self.ignored);
        let time = managed.entries.get(&id).and_then(|e| e.time.clone());
        managed.entries.insert(id.clone(), Entry { set, api_version: self.api_version.to_string(), time });
        let new = match last.filter(|l| !l.is_empty()) {
            Some(last) => self.prune(&merged, managed, &last),
            None => merged,
        };
        self.take_changed(live, &new, managed, Some(&id), force).map_err(ApplyError::Conflicts)?;
        let changed = !value::equals(live, &new);
        if let Some(e) = managed.entries.get_mut(&id) {
            e.set = e.set.difference(&strip_set());
            if changed {
                e.time = Some(self.now.to_string());
            }
        }
        managed.entries.retain(|_, e| !e.set.is_empty());
        Ok(Applied { object: if changed { new } else { live.clone() }, changed })
    }

    /// Removes from `merged` what the applier set last time (`last`) and no longer does,
    /// unless another manager owns it (upstream's `prune`, `addBackOwnedItems` and
    /// `addBackDanglingItems`).
    fn prune(&self, merged: &Value, managed: &Managed, last: &Set) -> Value {
        let (s, t) = (self.schema, self.root);
        let ensure = |x: &Set| typed::ensure_named_fields(s, t, x);
        let fields = |v: &Value| ensure(&typed::to_field_set(s, t, v));
        let pruned = typed::remove_items(s, t, merged, &ensure(last));
        let mut owned = Set::new();
        for e in managed.entries.values() {
            owned.union_in(&e.set);
        }
        let merged_set = fields(merged);
        let pruned = typed::remove_items(s, t, merged, &merged_set.difference(&fields(&pruned).union(&ensure(&owned))));
        let dangling = merged_set.difference(&fields(&pruned)).intersection(&ensure(last));
        typed::remove_items(s, t, merged, &dangling)
    }

    /// The fields of the last-applied annotation whose values the live object still has.
    fn allowed_from_last_applied(&self, live: &Value) -> Option<Set> {
        let text = live.pointer("/metadata/annotations")?.get(LAST_APPLIED)?.as_str().filter(|t| !t.is_empty())?;
        let last: Value = serde_json::from_str(text).ok()?;
        if last.get("apiVersion").and_then(|v| v.as_str()) != Some(self.api_version) {
            return None;
        }
        if !typed::validate(self.schema, self.root, &last, false).errors.is_empty() {
            return None;
        }
        let set = typed::to_field_set(self.schema, self.root, &last);
        let cmp = typed::compare(self.schema, self.root, &last, live);
        Some(set.difference(&cmp.modified).difference(&cmp.added).difference(&cmp.removed))
    }
}

fn has_last_applied(v: &Value) -> bool {
    v.pointer("/metadata/annotations")
        .and_then(|a| a.get(LAST_APPLIED))
        .and_then(|l| l.as_str())
        .is_some_and(|l| !l.is_empty())
}

/// The last-applied annotation for `config`, as upstream encodes it (sorted keys, Go's escaping,
/// a final newline), without the annotation itself.
pub fn last_applied_of(config: &Value) -> String {
    let mut c = config.clone();
    if let Some(a) = c.pointer_mut("/metadata/annotations").and_then(|a| a.as_object_mut()) {
        a.remove(LAST_APPLIED);
    }
    format!("{}\n", value::go_json(&value::sorted(&c)))
}

/// Keeps at most [`MAX_UPDATE_MANAGERS`] Update entries: the oldest are merged, per version,
/// into an `ancient-changes` entry (upstream's cap-managers manager).
fn cap_update_managers(managed: &mut Managed) {
    let mut updaters: Vec<Id> =
        managed.entries.keys().filter(|id| id.operation == Operation::Update).cloned().collect();
    if updaters.len() <= MAX_UPDATE_MANAGERS {
        return;
    }
    let time = |m: &Managed, id: &Id| seconds(m.entries.get(id).and_then(|e| e.time.as_deref()));
    updaters.sort_by(|a, b| time(managed, a).cmp(&time(managed, b)).then_with(|| a.identifier().cmp(&b.identifier())));
    let mut first_of_version: HashMap<String, Id> = HashMap::new();
    let mut length = updaters.len();
    for id in updaters {
        if length <= MAX_UPDATE_MANAGERS {
            break;
        }
        let Some(e) = managed.entries.get(&id).cloned() else { continue };
        let bucket = Id::update("ancient-changes", &e.api_version, "");
        match first_of_version.get(&e.api_version) {
            Some(first) => {
                if !managed.entries.contains_key(&bucket)
                    && let Some(fe) = managed.entries.remove(first)
                {
                    managed.entries.insert(bucket.clone(), fe);
                }
                let b = managed.entries.entry(bucket).or_insert_with(|| Entry {
                    set: Set::new(),
                    api_version: e.api_version.clone(),
                    time: None,
                });
                b.set.union_in(&e.set);
                b.time = e.time.clone();
                managed.entries.remove(&id);
                length -= 1;
            }
            None => {
                first_of_version.insert(e.api_version.clone(), id.clone());
            }
        }
    }
}

#[cfg(test)]
#[path = "updater_tests.rs"]
mod tests;
