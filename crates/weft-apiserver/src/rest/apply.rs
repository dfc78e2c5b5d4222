//! Server-side apply (PATCH `application/apply-patch+yaml`) and `metadata.managedFields` on
//! every write, as kube-apiserver's field manager keeps them. The merge, the ownership and the
//! conflicts are `weft_apply`'s (pure); this file reads the request (fieldManager, force, the
//! user agent), picks the kind's type from `weft_openapi`'s schemas, and sends the result
//! through the same admission and write as every other change (`Api::create`,
//! `Api::finish_update`).

use std::sync::OnceLock;

use serde_json::{Value, json};
use weft_api::FieldError;
use weft_api::kinds::Kind;
use weft_apply::updater::{ApplyError, conflict_message};
use weft_apply::{Managed, PathElement, Schema, Set, TypeRef, Updater};

use super::{Api, Query, Target, WriteOpts, incoming, now_rfc3339, obj_name, outgoing, store_key};
use crate::auth::Request;
use crate::status::ApiError;

pub const APPLY_PATCH: &str = "application/apply-patch+yaml";

/// Whether a PATCH's content type is server-side apply.
pub fn is_apply(content_type: &str) -> bool {
    content_type.split(';').next().unwrap_or("").trim() == APPLY_PATCH
}

/// The field-manager options of the request being served (its query's `fieldManager` and
/// `force`), task-local like [`Request`], so every write path reads them.
#[derive(Clone, Default)]
pub struct ManagerOpts {
    field_manager: String,
    force: Option<String>,
}

tokio::task_local! {
    static OPTS: ManagerOpts;
}

/// Runs `f` with the request's `fieldManager` and `force`.
pub async fn with_manager_opts<F: std::future::Future>(q: &Query, f: F) -> F::Output {
    let o = ManagerOpts {
        field_manager: q.get("fieldManager").cloned().unwrap_or_default(),
        force: q.get("force").cloned(),
    };
    OPTS.scope(o, f).await
}

fn opts() -> ManagerOpts {
    OPTS.try_with(ManagerOpts::clone).unwrap_or_default()
}

/// kube-apiserver's `ValidateFieldManager`: at most 128 bytes, printable characters.
fn check_field_manager(options_kind: &str, m: &str) -> Result<(), ApiError> {
    let mut errs = vec![];
    if m.len() > 128 {
        errs.push(FieldError::invalid_str("fieldManager", m, "must have at most 128 bytes"));
    }
    for (i, c) in m.char_indices() {
        if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{fffe}' | '\u{ffff}') {
            errs.push(FieldError::invalid_str(
                "fieldManager",
                m,
                format!("invalid character U+{:04X} (at position {i})", c as u32),
            ));
        }
    }
    if errs.is_empty() { Ok(()) } else { Err(ApiError::invalid(&format!("{options_kind}.meta.k8s.io"), "", &errs)) }
}

/// The manager of a create, update or patch: `fieldManager`, else the user agent up to its
/// first `/` (kube-apiserver's `prefixFromUserAgent`).
fn update_manager(options_kind: &str) -> Result<String, ApiError> {
    let o = opts();
    if !o.field_manager.is_empty() {
        check_field_manager(options_kind, &o.field_manager)?;
        return Ok(o.field_manager);
    }
    let ua = Request::current().user_agent;
    Ok(ua.split('/').next().unwrap_or("").chars().take(128).collect())
}

fn schema() -> &'static Schema {
    static S: OnceLock<Schema> = OnceLock::new();
    S.get_or_init(|| {
        let mut defs = weft_openapi::v3_schemas().clone();
        // Keys of map-lists that kube-apiserver's schemas default: an item that leaves one out
        // is keyed by the default (`k:{"containerPort":80,"protocol":"TCP"}`), as upstream.
        for def in ["io.k8s.api.core.v1.ContainerPort", "io.k8s.api.core.v1.ServicePort"] {
            if let Some(p) =
                defs.get_mut(def).and_then(|d| d.pointer_mut("/properties/protocol")).and_then(|p| p.as_object_mut())
            {
                p.entry("default").or_insert_with(|| json!("TCP"));
            }
        }
        Schema::new(&defs)
    })
}

/// The type of a kind (deduced, as for an unknown custom resource, if it has no schema).
fn root(kind: &Kind) -> TypeRef {
    schema().kind(kind.group, kind.version, kind.kind).unwrap_or(weft_apply::schema::DEDUCED)
}

/// The fields a write through `sub` leaves to others (kube-apiserver's reset fields): the main
/// resource does not write `status` of a kind that has a status subresource; the status
/// subresource writes nothing but `status`.
fn ignored(kind: &Kind, sub: &str, objs: &[&Value]) -> Set {
    let f = |n: &str| PathElement::Field(n.into());
    let mut s = Set::new();
    match sub {
        "status" => {
            for k in objs.iter().filter_map(|o| o.as_object()).flat_map(|o| o.keys()) {
                if k != "status" {
                    s.insert(&[f(k)]);
                }
            }
        }
        "" if kind.has_subresource("status") => s.insert(&[f("status")]),
        _ => {}
    }
    s
}

/// managedFields as the request sent them, read before the write path drops them.
pub(super) fn sent_managed_fields(v: &Value) -> Option<Value> {
    v.pointer("/metadata/managedFields").cloned()
}

fn set_managed(obj: &mut Value, m: &Managed) {
    let Some(md) = obj.get_mut("metadata").and_then(|m| m.as_object_mut()) else { return };
    match m.encode() {
        Some(v) => {
            md.insert("managedFields".into(), v);
        }
        None => {
            md.remove("managedFields");
        }
    }
}

// Task-local while an apply's result goes through the write path: its managedFields are
// already decided, so the write records no Update on top.
tokio::task_local! {
    static APPLIED: Managed;
}

impl Api {
    /// Records a create (`live` None), update or patch of `new` in its managedFields, as
    /// kube-apiserver's field manager does before the write: the fields it changed are its
    /// manager's. `sent` is what the request said managedFields are (a valid, non-empty list
    /// replaces the live ones; `[]` resets them). Subresource writes keep the live entries.
    pub(super) fn track_update(
        &self,
        kind: &'static Kind,
        live: Option<&Value>,
        sent: Option<Value>,
        new: &mut Value,
        sub: Option<&str>,
    ) -> Result<(), ApiError> {
        if let Ok(m) = APPLIED.try_with(Managed::clone) {
            set_managed(new, &m);
            return Ok(());
        }
        let options = if live.is_none() {
            "CreateOptions"
        } else if sub.is_some() {
            "UpdateOptions"
        } else {
            "PatchOptions"
        };
        let manager = update_manager(options)?;
        let sub = sub.unwrap_or("");
        let live_managed =
            || Managed::decode(live.and_then(|l| l.pointer("/metadata/managedFields"))).unwrap_or_default();
        let managed = if !sub.is_empty() {
            live_managed()
        } else if weft_apply::managed::is_reset(sent.as_ref()) {
            Managed::default()
        } else {
            match Managed::decode(sent.as_ref()) {
                Ok(m) if !m.is_empty() => m,
                _ => live_managed(),
            }
        };
        let zero;
        let live = match live {
            Some(l) => l,
            None => {
                zero = schema().zero(root(kind));
                &zero
            }
        };
        let now = now_rfc3339();
        let ignored = ignored(kind, sub, &[live, new]);
        let api_version = kind.api_version();
        let u = Updater {
            schema: schema(),
            root: root(kind),
            api_version: &api_version,
            subresource: sub,
            ignored: &ignored,
            now: &now,
        };
        let m = u.update(live, new, &managed, &manager);
        set_managed(new, &m);
        Ok(())
    }

    /// PATCH `application/apply-patch+yaml`: merges the configuration into the object (or
    /// creates it: 201), with the request's `fieldManager` and `force`.
    pub async fn apply(&self, t: &Target, body: &[u8], o: WriteOpts) -> Result<(u16, Value), ApiError> {
        let opts = opts();
        let manager = opts.field_manager.clone();
        if manager.is_empty() {
            return Err(ApiError::invalid(
                "PatchOptions.meta.k8s.io",
                "",
                &[FieldError::required("fieldManager", "is required for apply patch")],
            ));
        }
        check_field_manager("PatchOptions", &manager)?;
        let force = match opts.force.as_deref() {
            None | Some("") | Some("false") | Some("0") | Some("f") | Some("F") | Some("FALSE") | Some("False") => {
                false
            }
            Some("true" | "1" | "t" | "T" | "TRUE" | "True") => true,
            Some(other) => {
                return Err(ApiError::bad_request(format!("force: invalid value {other:?}: use true or false")));
            }
        };
        let name = t.name.clone().unwrap_or_default();
        let ns = t.namespace.clone().unwrap_or_default();
        let sub = t.sub.as_deref().unwrap_or("");
        if sub == "scale" {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                "server-side apply to the scale subresource is not supported: apply the object itself, or use kubectl scale",
            ));
        }
        let config = parse_config(body)?;
        let want = t.kind.api_version();
        let got = config.get("apiVersion").and_then(|v| v.as_str()).unwrap_or("");
        if got != want {
            return Err(ApiError::bad_request(format!(
                "Incorrect version specified in apply patch. Specified patch version: {got}, expected: {want}"
            )));
        }
        let kd = config.get("kind").and_then(|k| k.as_str()).unwrap_or("");
        if kd != t.kind.kind {
            return Err(ApiError::bad_request(format!(
                "the apply configuration is a {kd:?} but was sent to the {} endpoint of {want}: set kind: {}",
                t.kind.plural, t.kind.kind
            )));
        }
        if obj_name(&config) != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                obj_name(&config)
            )));
        }
        let kind = t.kind.storage();
        let config = incoming(t.kind, config);
        for _ in 0..8 {
            let current = self.store.get(&store_key(kind, &ns, &name));
            let zero;
            let live: &Value = match &current {
                Some(c) => c,
                None if !sub.is_empty() => return Err(ApiError::not_found(kind.plural, &name)),
                None => {
                    zero = schema().zero(root(kind));
                    &zero
                }
            };
            let now = now_rfc3339();
            let ignored = ignored(kind, sub, &[live, &config]);
            let api_version = kind.api_version();
            let u = Updater {
                schema: schema(),
                root: root(kind),
                api_version: &api_version,
                subresource: sub,
                ignored: &ignored,
                now: &now,
            };
            let mut managed = Managed::decode(live.pointer("/metadata/managedFields"))
                .map_err(|e| ApiError::internal(format!("failed to decode managed fields: {e}")))?;
            let applied = u
                .apply(live, &config, &mut managed, &manager, force)
                .map_err(|e| apply_error(kind, &ns, &name, e, o))?;
            let mut next = applied.object;
            set_managed(&mut next, &managed);
            let result = match &current {
                None => {
                    let body = serde_json::to_vec(&outgoing(t.kind, &next))
                        .map_err(|e| ApiError::internal(format!("encoding the applied object: {e}")))?;
                    APPLIED.scope(managed, self.create(t, &body, o)).await.map(|v| (201, v))
                }
                Some(cur) => {
                    let rv = super::rv_of(cur);
                    APPLIED
                        .scope(managed, self.finish_update(kind, &ns, &name, cur, next, t.sub.as_deref(), rv, o))
                        .await
                        .map(|v| (200, outgoing(t.kind, &v)))
                }
            };
            match result {
                // Another write came between the read and this one: apply again to what it left.
                Err(e) if e.reason == "Conflict" || e.reason == "AlreadyExists" => continue,
                r => return r,
            }
        }
        Err(super::conflict(kind.plural, &name))
    }
}

/// The apply body: YAML (JSON is YAML), one object.
fn parse_config(body: &[u8]) -> Result<Value, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::bad_request("the apply patch is not UTF-8 text: send the object as YAML or JSON"))?;
    let v: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(_) => serde_saphyr::from_str(text)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}: send one object as YAML or JSON")))?,
    };
    if !v.is_object() {
        return Err(ApiError::bad_request("the apply patch must be one object (a YAML or JSON map)"));
    }
    super::write_opts::check_depth(&v)?;
    Ok(v)
}

/// An apply's failure as kube-apiserver answers it.
fn apply_error(kind: &Kind, ns: &str, name: &str, e: ApplyError, o: WriteOpts) -> ApiError {
    match e {
        ApplyError::Conflicts(cs) => {
            let causes: Vec<Value> = cs
                .iter()
                .map(|c| json!({"reason": "FieldManagerConflict", "message": c.message(), "field": c.field()}))
                .collect();
            let mut err = ApiError::new(409, "Conflict", conflict_message(&cs));
            err.details = Some(json!({"causes": causes}));
            err
        }
        ApplyError::BadRequest(m) => ApiError::bad_request(m),
        ApplyError::Invalid(inv) => {
            if o.strict && inv.errors.is_empty() {
                let list: Vec<String> = inv.unknown.iter().map(|f| format!("unknown field {f:?}")).collect();
                return ApiError::bad_request(format!("strict decoding error: {}", list.join(", ")));
            }
            let mut errs = inv.errors;
            errs.extend(inv.unknown.iter().map(|f| format!(".{f}: field not declared in schema")));
            ApiError::bad_request(format!(
                "failed to create typed patch object ({ns}/{name}; {}, Kind={}): {}",
                kind.api_version(),
                kind.kind,
                errs.join("\n")
            ))
        }
    }
}
