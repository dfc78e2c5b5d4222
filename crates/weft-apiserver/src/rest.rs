//! The REST verbs over the store: get, list, watch, create, update, patch, delete, and the
//! status and scale subresources, with kube-apiserver's semantics for each.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use weft_api::kinds::{self, Kind};
use weft_api::{FieldError, convert, objects, table};
use weft_store::{Key, Store, StoreError};

use crate::alloc::{AllocError, IpAllocator, PortAllocator};
use crate::patch::{self, PatchKind};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::ApiError;

/// Names a user may not delete (kube-apiserver refuses them too).
const PROTECTED_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public"];

pub struct Allocators {
    pub ips: IpAllocator,
    pub ports: PortAllocator,
}

pub struct Api {
    pub store: Store,
    pub alloc: Mutex<Allocators>,
    /// Where the lab's kubelets keep container logs (`pods/<uid>/<container>.log`).
    pub state_dir: std::path::PathBuf,
}

/// What a request addresses.
pub struct Target {
    pub kind: &'static Kind,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
}

pub type Query = HashMap<String, String>;

/// How a write is to be done: `dryRun=All` (everything but the write itself: admission,
/// allocation checks, preconditions) and `fieldValidation` (`Strict`: unknown fields are an
/// error, as kubectl asks by default).
#[derive(Clone, Copy, Debug, Default)]
pub struct WriteOpts {
    pub dry_run: bool,
    pub strict: bool,
}

impl WriteOpts {
    pub fn from_query(q: &Query) -> Result<WriteOpts, ApiError> {
        let dry_run = match q.get("dryRun").map(String::as_str) {
            None | Some("") => false,
            Some("All") => true,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "dryRun: Unsupported value: {other:?}: supported values: \"All\""
                )));
            }
        };
        let strict = match q.get("fieldValidation").map(String::as_str) {
            None | Some("") | Some("Ignore") | Some("Warn") => false,
            Some("Strict") => true,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "fieldValidation: Unsupported value: {other:?}: supported values: \"Ignore\", \"Warn\", \"Strict\""
                )));
            }
        };
        Ok(WriteOpts { dry_run, strict })
    }
}

/// The deepest nesting an object may have. JSON parsers stop at 128 levels (serde_json's and
/// client-go's limits); a watch event or a list wraps an object in two or three more, so an
/// object admitted near the limit would break every client that watches its kind.
pub const MAX_DEPTH: usize = 100;

/// How deeply `v` nests (a scalar is 0), without recursion.
fn depth(v: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        deepest = deepest.max(d);
        match v {
            Value::Array(a) => stack.extend(a.iter().map(|x| (x, d + 1))),
            Value::Object(m) => stack.extend(m.values().map(|x| (x, d + 1))),
            _ => {}
        }
    }
    deepest
}

fn check_depth(v: &Value) -> Result<(), ApiError> {
    let d = depth(v);
    if d > MAX_DEPTH {
        return Err(ApiError::bad_request(format!(
            "the object nests {d} levels deep; at most {MAX_DEPTH} are allowed: flatten it (put deep data in a string)"
        )));
    }
    Ok(())
}

/// Fields the request set (to something non-empty) that admission did not keep: unknown to the
/// kind's schema (typed decoding drops them). Paths as kube-apiserver prints them.
fn unknown_fields(sent: &Value, kept: &Value, path: &str, out: &mut Vec<String>) {
    match (sent, kept) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                match b.get(k) {
                    Some(w) => unknown_fields(v, w, &p, out),
                    None if !is_empty(v) => out.push(p),
                    None => {}
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                unknown_fields(v, w, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// With `fieldValidation=Strict`, refuses what admission would silently drop (`sent` is the
/// object as it went into admission, `kept` as it came out).
fn check_strict(o: WriteOpts, kind: &Kind, sent: &Value, kept: &Value) -> Result<(), ApiError> {
    if !o.strict {
        return Ok(());
    }
    // Kinds stored as sent keep unknown fields: compare with what their type knows instead.
    let known = objects::known_fields(kind, sent);
    let mut unknown = vec![];
    unknown_fields(sent, known.as_ref().unwrap_or(kept), "", &mut unknown);
    unknown.retain(|f| f != "status" && !f.starts_with("status."));
    if unknown.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = unknown.iter().map(|f| format!("unknown field {f:?}")).collect();
    Err(ApiError::bad_request(format!("strict decoding error: {}", list.join(", "))))
}

/// Whether a patch body sets `metadata.resourceVersion` (an optimistic-concurrency precondition).
fn body_names_rv(body: &[u8]) -> bool {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(ops)) => ops.iter().any(|op| op["path"] == "/metadata/resourceVersion" && op["op"] != "test"),
        Ok(v) => v.pointer("/metadata/resourceVersion").is_some_and(|r| !r.is_null()),
        Err(_) => false,
    }
}

/// An object's (namespace, name): its place in list order.
fn key_of(o: &Value) -> (String, String) {
    let m = &o["metadata"];
    (m["namespace"].as_str().unwrap_or("").to_string(), m["name"].as_str().unwrap_or("").to_string())
}

/// A list continuation: the last (namespace, name) sent and the list's revision.
fn encode_continue(key: &(String, String), rev: u64) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json!([key.0, key.1, rev]).to_string())
}

fn decode_continue(token: &str) -> Option<((String, String), u64)> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).ok()?;
    let v: Value = serde_json::from_slice(&raw).ok()?;
    Some(((v[0].as_str()?.to_string(), v[1].as_str()?.to_string()), v[2].as_u64()?))
}

pub fn now_rfc3339() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn store_key(kind: &Kind, ns: &str, name: &str) -> Key {
    Key::new(&kind.resource_key(), if kind.namespaced { ns } else { "" }, name)
}

/// Converts a stored object to the version the request addressed.
fn outgoing(kind: &Kind, v: &Value) -> Value {
    if kind.legacy && kind.kind == "Ingress" { convert::ingress_v1_to_v1beta1(v.clone()) } else { v.clone() }
}

fn incoming(kind: &Kind, v: Value) -> Value {
    if kind.legacy && kind.kind == "Ingress" { convert::ingress_v1beta1_to_v1(v) } else { v }
}

fn wants_table(accept: &str) -> bool {
    accept.contains("as=Table")
}

fn generate_suffix() -> String {
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5).map(|_| CHARS[rand::random_range(0..CHARS.len())] as char).collect()
}

fn obj_name(v: &Value) -> String {
    v.pointer("/metadata/name").and_then(|n| n.as_str()).unwrap_or("").to_string()
}

fn rv_of(v: &Value) -> Option<u64> {
    v.pointer("/metadata/resourceVersion").and_then(|r| r.as_str()).and_then(|r| r.parse().ok())
}

/// The parts of `status` a kind's main resource may not change.
fn has_status(kind: &Kind) -> bool {
    kind.has_subresource("status")
}

impl Api {
    pub fn new(store: Store, alloc: Allocators, state_dir: std::path::PathBuf) -> Api {
        Api { store, alloc: Mutex::new(alloc), state_dir }
    }

    /// Re-reserves the IPs and ports of stored Services (after a restart).
    pub fn rebuild_allocations(&self) {
        let (svcs, _) = self.store.list("services", None);
        let mut a = self.alloc.lock().unwrap();
        for s in svcs {
            let (ips, ports) = service_allocations(&s);
            for ip in ips {
                let _ = a.ips.allocate(ip);
            }
            for p in ports {
                let _ = a.ports.allocate(p);
            }
        }
    }

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

    /// A container's log, as kept by the lab's pod shim (`container`, `tailLines`, `previous`).
    fn log(&self, pod: &Value, q: &Query) -> Result<String, ApiError> {
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
        let mut path = self.state_dir.join("pods").join(uid).join(format!("{c}.log"));
        if q.get("previous").is_some_and(|p| p == "true") {
            path = path.with_extension("log.1");
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        Ok(match q.get("tailLines").and_then(|t| t.parse::<usize>().ok()) {
            Some(n) => {
                let lines: Vec<&str> = text.lines().collect();
                let mut out = lines[lines.len().saturating_sub(n)..].join("\n");
                if !out.is_empty() {
                    out.push('\n');
                }
                out
            }
            None => text,
        })
    }

    pub fn list(&self, t: &Target, accept: &str, q: &Query) -> Result<Value, ApiError> {
        let (ls, fs) = selectors(q)?;
        let resource = t.kind.resource_key();
        let namespace = t.namespace.as_deref().filter(|_| t.kind.namespaced);
        // Pages (`limit` and `continue`), as kube-rs watchers and kubectl ask for them: a large
        // list is then sent (and decoded by the client) a page at a time. Later pages come from
        // the current state and carry the first page's revision, so a watch from it replays
        // whatever changed while the pages were read.
        let limit = q.get("limit").and_then(|l| l.parse::<usize>().ok()).filter(|l| *l > 0);
        let after = match q.get("continue").filter(|c| !c.is_empty()) {
            Some(token) => Some(decode_continue(token).ok_or_else(|| {
                ApiError::bad_request("the continue token is not one this server gave: list again without it")
            })?),
            None => None,
        };
        // Tables (kubectl's printing) are sent whole.
        let paged = (limit.is_some() || after.is_some()) && !wants_table(accept);
        let (items, list_rev, next) = match paged {
            false => {
                let (items, rev) = self.store.list(&resource, namespace);
                let items: Vec<Arc<Value>> = items.into_iter().filter(|o| ls.matches(o) && fs.matches(o)).collect();
                (items, rev, None)
            }
            true => {
                let page = self.store.list_page(
                    &resource,
                    namespace,
                    after.as_ref().map(|(k, _)| k),
                    limit.unwrap_or(usize::MAX),
                    |o| ls.matches(o) && fs.matches(o),
                );
                let rev = after.as_ref().map(|(_, rv)| *rv).unwrap_or(page.rev);
                // As kube-apiserver: the count of what follows only when nothing was filtered out.
                let remaining = (ls.is_empty() && fs.is_empty()).then_some(page.remaining);
                let next = page.more.then(|| page.items.last().map(|o| (key_of(o), remaining))).flatten();
                (page.items, rev, next)
            }
        };
        if wants_table(accept) {
            return Ok(table::table(t.kind, &items, list_rev, jiff::Timestamp::now()));
        }
        let mut meta = json!({"resourceVersion": list_rev.to_string()});
        if let Some((last, remaining)) = next {
            meta["continue"] = json!(encode_continue(&last, list_rev));
            if let Some(r) = remaining {
                meta["remainingItemCount"] = json!(r);
            }
        }
        let items: Vec<Value> = items.iter().map(|o| outgoing(t.kind, o)).collect();
        Ok(json!({"kind": format!("{}List", t.kind.kind), "apiVersion": t.kind.api_version(),
                  "metadata": meta, "items": items}))
    }

    /// Starts a watch; the events arrive as JSON lines on the returned channel.
    pub fn watch(self: &Arc<Self>, t: &Target, q: &Query) -> Result<mpsc::Receiver<Bytes>, ApiError> {
        let (ls, fs) = selectors(q)?;
        let rv = q.get("resourceVersion").map(|s| s.as_str()).unwrap_or("");
        let send_initial = q.get("sendInitialEvents").is_some_and(|v| v == "true");
        let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true" || v == "1");
        let timeout =
            q.get("timeoutSeconds").and_then(|s| s.parse::<u64>().ok()).unwrap_or(1800 + rand::random_range(0..1800));
        let kind = t.kind;
        let resource = kind.resource_key();
        let ns = t.namespace.clone().filter(|_| kind.namespaced);
        let (tx, rx) = mpsc::channel::<Bytes>(1024);
        let line = |ty: &str, obj: &Value| {
            let mut b = serde_json::to_vec(&json!({"type": ty, "object": obj})).unwrap_or_default();
            b.push(b'\n');
            Bytes::from(b)
        };
        let mut initial = vec![];
        let from = if rv.is_empty() || rv == "0" || send_initial {
            let (items, rev) = self.store.list(&resource, ns.as_deref());
            for o in items.iter().filter(|o| ls.matches(o) && fs.matches(o)) {
                initial.push(line("ADDED", &outgoing(kind, o)));
            }
            if send_initial {
                let bm = json!({"kind": kind.kind, "apiVersion": kind.api_version(),
                    "metadata": {"resourceVersion": rev.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}});
                initial.push(line("BOOKMARK", &bm));
            }
            rev
        } else {
            rv.parse::<u64>().map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?
        };
        let watch = match self.store.watch(from) {
            Ok(w) => w,
            Err(StoreError::Gone { requested, oldest }) => {
                let st = ApiError::from_store(StoreError::Gone { requested, oldest }, kind.plural, "").to_status();
                let _ = tx.try_send(line("ERROR", &st));
                return Ok(rx);
            }
            // A revision in the future: kube-apiserver's 504 (events until then would be skipped).
            Err(e) => return Err(ApiError::from_store(e, kind.plural, "")),
        };
        tokio::spawn(async move {
            for l in initial {
                if tx.send(l).await.is_err() {
                    return;
                }
            }
            let matches = |e: &weft_store::Event| {
                e.key.resource == resource
                    && ns.as_deref().is_none_or(|n| n == e.key.namespace)
                    && ls.matches(&e.object)
                    && fs.matches(&e.object)
            };
            let mut last = from;
            for e in watch.backlog {
                last = e.rev;
                if matches(&e) && tx.send(line(e.kind.as_str(), &outgoing(kind, &e.object))).await.is_err() {
                    return;
                }
            }
            last = last.max(watch.rev);
            let mut live = watch.live;
            let deadline = tokio::time::sleep(Duration::from_secs(timeout));
            tokio::pin!(deadline);
            let mut tick = tokio::time::interval(Duration::from_secs(if bookmarks { 10 } else { 3600 }));
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = &mut deadline => return,
                    _ = tick.tick(), if bookmarks => {
                        let bm = json!({"kind": kind.kind, "apiVersion": kind.api_version(),
                                        "metadata": {"resourceVersion": last.to_string()}});
                        if tx.send(line("BOOKMARK", &bm)).await.is_err() { return; }
                    }
                    ev = live.recv() => match ev {
                        Ok(e) => {
                            if e.rev <= last { continue; }
                            last = e.rev;
                            if matches(&e) && tx.send(line(e.kind.as_str(), &outgoing(kind, &e.object))).await.is_err() {
                                return;
                            }
                        }
                        // A watcher that fell behind is closed; it resumes from its last revision.
                        Err(_) => return,
                    },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(rx)
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
        if kind.namespaced && self.store.get(&Key::new("namespaces", "", &ns)).is_none() {
            return Err(ApiError::not_found("namespaces", &ns));
        }
        check_depth(&v)?;
        let sent = v;
        let mut v = objects::admit(kind, &sent)?;
        check_strict(o, kind, &sent, &v)?;
        let name = obj_name(&v);
        if kind.kind == "Service" {
            self.check_external_ips(&v, None)?;
        }
        let taken = if kind.kind == "Service" { self.allocate_service(&mut v, None)? } else { Taken::default() };
        if o.dry_run {
            // Everything a create checks, without the write: nothing is kept.
            self.release(&taken.new_ips, &taken.new_ports);
            if self.store.get(&store_key(kind, &ns, &name)).is_some() {
                return Err(ApiError::from_store(
                    StoreError::AlreadyExists { resource: String::new(), key: String::new() },
                    kind.plural,
                    &name,
                ));
            }
            return Ok(outgoing(t.kind, &v));
        }
        match self.store.create(store_key(kind, &ns, &name), v).await {
            Ok(o) => Ok(outgoing(t.kind, &o)),
            Err(e) => {
                self.release(&taken.new_ips, &taken.new_ports);
                Err(ApiError::from_store(e, kind.plural, &name))
            }
        }
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
                    "the body of the request was in an unsupported patch format {content_type:?}: use a JSON merge patch, a JSON patch or a strategic merge patch (server-side apply is not supported: use client-side `kubectl apply`)"
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
    async fn finish_update(
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
        // Server-owned metadata comes from the stored object.
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
            md.as_object_mut().unwrap().remove("managedFields");
        }
        if kind.kind == "Service" {
            drop_type_dependent_fields(current, &mut v);
        }
        check_depth(&v)?;
        let sent = v;
        let mut v = objects::admit(kind, &sent)?;
        check_strict(o, kind, &sent, &v)?;
        if kind.kind == "Service" {
            self.check_external_ips(&v, Some(current))?;
        }
        let taken =
            if kind.kind == "Service" { self.allocate_service(&mut v, Some(current))? } else { Taken::default() };
        if v_has_spec_generation(kind) && current.get("spec") != v.get("spec") {
            let g = current.pointer("/metadata/generation").and_then(|g| g.as_i64()).unwrap_or(1);
            v["metadata"]["generation"] = json!(g + 1);
        }
        // A write that changes nothing is not a write: same object, same resourceVersion.
        v["metadata"]["resourceVersion"] = current.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null);
        if &v == current && want_rv.is_none_or(|w| Some(w) == rv_of(current)) {
            self.release(&taken.new_ips, &taken.new_ports);
            return Ok(current.clone());
        }
        if o.dry_run {
            self.release(&taken.new_ips, &taken.new_ports);
            if want_rv.is_some_and(|w| Some(w) != rv_of(current)) {
                return Err(conflict(kind.plural, name));
            }
            return Ok(v);
        }
        match self.store.update(store_key(kind, ns, name), v, want_rv).await {
            Ok(o) => {
                self.release(&taken.old_ips, &taken.old_ports);
                Ok((*o).clone())
            }
            Err(e) => {
                self.release(&taken.new_ips, &taken.new_ports);
                Err(ApiError::from_store(e, kind.plural, name))
            }
        }
    }

    /// The scale subresource: the new count goes through the kind's own admission, as any
    /// other change to it does.
    async fn scale(&self, t: &Target, replicas: i64, want_rv: Option<u64>, o: WriteOpts) -> Result<Value, ApiError> {
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
        let opts = delete_options(body)?;
        let dry_run =
            o.dry_run || opts.get("dryRun").and_then(|d| d.as_array()).is_some_and(|d| d.iter().any(|x| x == "All"));
        if kind.kind == "Namespace" && PROTECTED_NAMESPACES.contains(&name.as_str()) {
            return Err(ApiError::new(
                403,
                "Forbidden",
                format!("namespaces {name:?} is forbidden: this namespace may not be deleted"),
            ));
        }
        let key = store_key(kind, &ns, &name);
        let current = self.store.get(&key).ok_or_else(|| ApiError::not_found(kind.plural, &name))?;
        if let Some(uid) = opts.pointer("/preconditions/uid").and_then(|u| u.as_str())
            && current.pointer("/metadata/uid").and_then(|u| u.as_str()) != Some(uid)
        {
            return Err(conflict(kind.plural, &name));
        }
        let want_rv =
            opts.pointer("/preconditions/resourceVersion").and_then(|r| r.as_str()).and_then(|r| r.parse().ok());
        if dry_run {
            if want_rv.is_some_and(|w| Some(w) != rv_of(&current)) {
                return Err(conflict(kind.plural, &name));
            }
            return Ok(outgoing(t.kind, &current));
        }
        if kind.kind == "Namespace" {
            self.delete_namespace_contents(&name).await;
        }
        let deleted = self.store.delete(key, want_rv).await.map_err(|e| ApiError::from_store(e, kind.plural, &name))?;
        if kind.kind == "Service" {
            let (ips, ports) = service_allocations(&deleted);
            self.release(&ips, &ports);
        }
        let orphan = opts.get("propagationPolicy").and_then(|p| p.as_str()) == Some("Orphan")
            || opts.get("orphanDependents").and_then(|p| p.as_bool()) == Some(true);
        if !orphan && let Some(uid) = deleted.pointer("/metadata/uid").and_then(|u| u.as_str()) {
            self.delete_dependents(uid, &ns).await;
        }
        Ok(outgoing(t.kind, &deleted))
    }

    /// Garbage collection of objects owned (ownerReferences) by a deleted object, transitively.
    async fn delete_dependents(&self, uid: &str, ns: &str) {
        let mut owners = vec![uid.to_string()];
        while let Some(owner) = owners.pop() {
            for k in kinds::ALL.iter().filter(|k| !k.legacy && k.namespaced) {
                let (items, _) = self.store.list(&k.resource_key(), Some(ns));
                for o in items {
                    let owned = o
                        .pointer("/metadata/ownerReferences")
                        .and_then(|r| r.as_array())
                        .is_some_and(|refs| refs.iter().any(|r| r.get("uid").and_then(|u| u.as_str()) == Some(&owner)));
                    if owned && let Ok(d) = self.store.delete(store_key(k, ns, &obj_name(&o)), None).await {
                        if k.kind == "Service" {
                            let (ips, ports) = service_allocations(&d);
                            self.release(&ips, &ports);
                        }
                        if let Some(u) = d.pointer("/metadata/uid").and_then(|u| u.as_str()) {
                            owners.push(u.to_string());
                        }
                    }
                }
            }
        }
    }

    async fn delete_namespace_contents(&self, ns: &str) {
        for k in kinds::ALL.iter().filter(|k| !k.legacy && k.namespaced) {
            let (items, _) = self.store.list(&k.resource_key(), Some(ns));
            for o in items {
                if let Ok(d) = self.store.delete(store_key(k, ns, &obj_name(&o)), None).await
                    && k.kind == "Service"
                {
                    let (ips, ports) = service_allocations(&d);
                    self.release(&ips, &ports);
                }
            }
        }
    }

    fn release(&self, ips: &[std::net::IpAddr], ports: &[i32]) {
        let mut a = self.alloc.lock().unwrap();
        for ip in ips {
            a.ips.release(*ip);
        }
        for p in ports {
            a.ports.release(*p);
        }
    }

    /// Gives a Service its ClusterIP and node ports (keeping those it already had on update).
    /// The externalIPs policy (CVE-2020-8554: an external IP captures traffic to that address
    /// from every pod and node). An address a Service newly lists may not be inside the
    /// Service range, a node's pod range or a node's own address, and must be inside a CIDR of
    /// `externalIPCIDRs` in `kube-system/weft-config` (none by default: external IPs are
    /// denied, as the DenyServiceExternalIPs admission plugin advises). Addresses the Service
    /// already had are kept, so a policy change never blocks other updates of it.
    fn check_external_ips(&self, v: &Value, old: Option<&Value>) -> Result<(), ApiError> {
        let ips = |o: &Value| -> Vec<String> {
            o.pointer("/spec/externalIPs")
                .and_then(|a| a.as_array())
                .map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect())
                .unwrap_or_default()
        };
        let had = old.map(ips).unwrap_or_default();
        let new: Vec<(usize, String)> = ips(v).into_iter().enumerate().filter(|(_, ip)| !had.contains(ip)).collect();
        if new.is_empty() {
            return Ok(());
        }
        let name = obj_name(v);
        let config = self.store.get(&Key::new("configmaps", "kube-system", "weft-config"));
        let spec =
            config.as_ref().and_then(|c| c.pointer("/data/externalIPCIDRs")).and_then(|s| s.as_str()).unwrap_or("");
        let allowed: Vec<ipnet::IpNet> = spec.split(',').filter_map(|c| c.trim().parse().ok()).collect();
        let service_range = self.alloc.lock().unwrap().ips.net();
        let (nodes, _) = self.store.list("nodes", None);
        for (i, ip) in new {
            let field = format!("spec.externalIPs[{i}]");
            let Ok(addr) = ip.parse::<std::net::IpAddr>() else { continue };
            let inside = |what: String| {
                ApiError::invalid(
                    "Service",
                    &name,
                    &[FieldError::invalid_str(
                        &field,
                        &ip,
                        format!(
                            "is {what}: an external IP there would capture the cluster's own traffic; choose another address"
                        ),
                    )],
                )
            };
            if service_range.contains(&addr) {
                return Err(inside(format!("inside the Service range {service_range}")));
            }
            for n in nodes.iter() {
                let node = n.pointer("/metadata/name").and_then(|x| x.as_str()).unwrap_or("");
                let cidrs = n.pointer("/spec/podCIDRs").and_then(|c| c.as_array()).cloned().unwrap_or_default();
                for c in cidrs.iter().filter_map(|c| c.as_str()?.parse::<ipnet::IpNet>().ok()) {
                    if c.contains(&addr) {
                        return Err(inside(format!("inside node {node}'s pod range {c}")));
                    }
                }
                let addrs = n.pointer("/status/addresses").and_then(|c| c.as_array()).cloned().unwrap_or_default();
                if addrs.iter().any(|a| a.get("address").and_then(|x| x.as_str()) == Some(ip.as_str())) {
                    return Err(inside(format!("node {node}'s address")));
                }
            }
            if !allowed.iter().any(|c| c.contains(&addr)) {
                return Err(ApiError::new(
                    403,
                    "Forbidden",
                    format!(
                        "services {name:?} is forbidden: {field} {ip} is not allowed: external IPs must be inside a CIDR of externalIPCIDRs in the ConfigMap kube-system/weft-config ({}); add one there to allow it",
                        if allowed.is_empty() { "none is listed".to_string() } else { spec.trim().to_string() }
                    ),
                ));
            }
        }
        Ok(())
    }

    fn allocate_service(&self, v: &mut Value, old: Option<&Value>) -> Result<Taken, ApiError> {
        let name = obj_name(v);
        let mut a = self.alloc.lock().unwrap();
        let mut taken = Taken::default();
        let result = (|| -> Result<(), ApiError> {
            let ty = v.pointer("/spec/type").and_then(|t| t.as_str()).unwrap_or("ClusterIP").to_string();
            let old_ip = old
                .and_then(|o| o.pointer("/spec/clusterIP"))
                .and_then(|i| i.as_str())
                .filter(|i| !i.is_empty())
                .map(String::from);
            let want_ip = v.pointer("/spec/clusterIP").and_then(|i| i.as_str()).unwrap_or("").to_string();
            let spec = v
                .get_mut("spec")
                .and_then(|s| s.as_object_mut())
                .ok_or_else(|| ApiError::bad_request("spec missing"))?;
            if ty == "ExternalName" {
                spec.remove("clusterIPs");
                if let Some(ip) = old_ip.as_deref().and_then(|i| i.parse().ok()) {
                    taken.old_ips.push(ip);
                }
            } else if let Some(old_ip) = old_ip.filter(|_| old.is_some()) {
                if !want_ip.is_empty() && want_ip != old_ip {
                    return Err(ApiError::invalid(
                        "Service",
                        &name,
                        &[FieldError::invalid_str(
                            "spec.clusterIP",
                            &want_ip,
                            "field is immutable: delete and re-create the Service to change its IP",
                        )],
                    ));
                }
                spec.insert("clusterIP".into(), json!(old_ip));
                spec.insert("clusterIPs".into(), json!([old_ip]));
            } else if want_ip == "None" {
                spec.insert("clusterIPs".into(), json!(["None"]));
            } else {
                let ip = if want_ip.is_empty() {
                    a.ips.allocate_next().map_err(|_| {
                        ApiError::internal(format!(
                            "failed to allocate a serviceIP: range {} is full: delete unused Services or widen --service-cidr",
                            a.ips.range()
                        ))
                    })?
                } else {
                    let ip: std::net::IpAddr = want_ip.parse().map_err(|_| ApiError::bad_request("bad clusterIP"))?;
                    a.ips.allocate(ip).map_err(|e| {
                        let detail = match e {
                            AllocError::OutOfRange(m) => format!("failed to allocate IP {ip}: {m}"),
                            _ => format!("failed to allocate IP {ip}: provided IP is already allocated"),
                        };
                        ApiError::invalid(
                            "Service",
                            &name,
                            &[FieldError::invalid("spec.clusterIPs", format!("[]string{{\"{ip}\"}}"), detail)],
                        )
                    })?;
                    ip
                };
                taken.new_ips.push(ip);
                spec.insert("clusterIP".into(), json!(ip.to_string()));
                spec.insert("clusterIPs".into(), json!([ip.to_string()]));
            }
            if ty != "ExternalName" {
                let v6 = spec.get("clusterIP").and_then(|i| i.as_str()).is_some_and(|i| i.contains(':'));
                spec.entry("ipFamilies").or_insert_with(|| json!([if v6 { "IPv6" } else { "IPv4" }]));
                spec.entry("ipFamilyPolicy").or_insert_with(|| json!("SingleStack"));
            }
            // Node ports.
            let old_ports: Vec<(i64, String, i64)> = old
                .and_then(|o| o.pointer("/spec/ports"))
                .and_then(|p| p.as_array())
                .into_iter()
                .flatten()
                .filter_map(|p| {
                    let np = p.get("nodePort")?.as_i64()?;
                    Some((
                        p.get("port")?.as_i64()?,
                        p.get("protocol").and_then(|x| x.as_str()).unwrap_or("TCP").to_string(),
                        np,
                    ))
                })
                .collect();
            let needs_node_ports = ty == "NodePort"
                || (ty == "LoadBalancer"
                    && spec.get("allocateLoadBalancerNodePorts").and_then(|b| b.as_bool()) != Some(false));
            let mut kept = vec![];
            if let Some(Value::Array(ports)) = spec.get_mut("ports") {
                for (i, p) in ports.iter_mut().enumerate() {
                    let port = p.get("port").and_then(|x| x.as_i64()).unwrap_or(0);
                    let proto = p.get("protocol").and_then(|x| x.as_str()).unwrap_or("TCP").to_string();
                    let asked = p.get("nodePort").and_then(|x| x.as_i64()).filter(|n| *n != 0);
                    if !needs_node_ports && asked.is_none() {
                        continue;
                    }
                    let np = match asked {
                        Some(n) if old_ports.iter().any(|(_, _, o)| *o == n) => n,
                        Some(n) => {
                            a.ports.allocate(n as i32).map_err(|e| {
                                let detail = match e {
                                    AllocError::OutOfRange(m) => m,
                                    _ => "provided port is already allocated: pick another nodePort or leave it out to get one".into(),
                                };
                                ApiError::invalid("Service", &name, &[FieldError::invalid(format!("spec.ports[{i}].nodePort"), n, detail)])
                            })?;
                            taken.new_ports.push(n as i32);
                            n
                        }
                        None => match old_ports.iter().find(|(op, pr, _)| *op == port && *pr == proto) {
                            Some((_, _, n)) => *n,
                            None => {
                                let n = a.ports.allocate_next().map_err(|_| {
                                    ApiError::internal(format!(
                                        "failed to allocate a nodePort: range {} is full",
                                        a.ports.range()
                                    ))
                                })? as i64;
                                taken.new_ports.push(n as i32);
                                n
                            }
                        },
                    };
                    p["nodePort"] = json!(np);
                    kept.push(np);
                }
            }
            let local = spec.get("externalTrafficPolicy").and_then(|p| p.as_str()) == Some("Local");
            let old_hc = old.and_then(|o| o.pointer("/spec/healthCheckNodePort")).and_then(|h| h.as_i64());
            if ty == "LoadBalancer" && local {
                let asked = spec.get("healthCheckNodePort").and_then(|h| h.as_i64()).filter(|h| *h != 0);
                let hc = match (asked, old_hc) {
                    (Some(h), Some(o)) if h == o => h,
                    (None, Some(o)) => o,
                    (Some(h), _) => {
                        a.ports.allocate(h as i32).map_err(|_| {
                            ApiError::invalid(
                                "Service",
                                &name,
                                &[FieldError::invalid(
                                    "spec.healthCheckNodePort",
                                    h,
                                    "provided port is already allocated or out of range",
                                )],
                            )
                        })?;
                        taken.new_ports.push(h as i32);
                        h
                    }
                    (None, None) => {
                        let h =
                            a.ports.allocate_next().map_err(|_| ApiError::internal("node port range is full"))? as i64;
                        taken.new_ports.push(h as i32);
                        h
                    }
                };
                spec.insert("healthCheckNodePort".into(), json!(hc));
                kept.push(hc);
            } else {
                spec.remove("healthCheckNodePort");
            }
            for (_, _, n) in &old_ports {
                if !kept.contains(n) {
                    taken.old_ports.push(*n as i32);
                }
            }
            if let Some(h) = old_hc
                && !kept.contains(&h)
            {
                taken.old_ports.push(h as i32);
            }
            Ok(())
        })();
        if let Err(e) = result {
            for ip in &taken.new_ips {
                a.ips.release(*ip);
            }
            for p in &taken.new_ports {
                a.ports.release(*p);
            }
            return Err(e);
        }
        Ok(taken)
    }
}

#[derive(Default)]
struct Taken {
    new_ips: Vec<std::net::IpAddr>,
    new_ports: Vec<i32>,
    old_ips: Vec<std::net::IpAddr>,
    old_ports: Vec<i32>,
}

fn v_has_spec_generation(kind: &Kind) -> bool {
    matches!(kind.kind, "Deployment" | "ReplicaSet" | "ReplicationController" | "Service" | "Ingress" | "NetworkPolicy")
}

/// When a Service changes to a type without node ports, the ports it had are dropped (as
/// kube-apiserver's `dropTypeDependentFields` does) instead of being refused.
fn drop_type_dependent_fields(old: &Value, v: &mut Value) {
    let ty = v.pointer("/spec/type").and_then(|t| t.as_str()).unwrap_or("ClusterIP").to_string();
    if ty == "NodePort" || ty == "LoadBalancer" {
        return;
    }
    let old_nps: Vec<i64> = old
        .pointer("/spec/ports")
        .and_then(|p| p.as_array())
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("nodePort").and_then(|n| n.as_i64()))
        .collect();
    if let Some(Value::Array(ports)) = v.pointer_mut("/spec/ports") {
        for p in ports {
            if p.get("nodePort").and_then(|n| n.as_i64()).is_some_and(|n| old_nps.contains(&n))
                && let Some(o) = p.as_object_mut()
            {
                o.remove("nodePort");
            }
        }
    }
    if let Some(s) = v.get_mut("spec").and_then(|s| s.as_object_mut()) {
        s.remove("healthCheckNodePort");
        if ty == "ClusterIP" || ty == "ExternalName" {
            s.remove("externalTrafficPolicy");
        }
    }
}

/// The IPs and ports a stored Service holds.
fn service_allocations(s: &Value) -> (Vec<std::net::IpAddr>, Vec<i32>) {
    let ips = s.pointer("/spec/clusterIP").and_then(|i| i.as_str()).and_then(|i| i.parse().ok()).into_iter().collect();
    let mut ports: Vec<i32> = s
        .pointer("/spec/ports")
        .and_then(|p| p.as_array())
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("nodePort").and_then(|n| n.as_i64()).map(|n| n as i32))
        .collect();
    if let Some(h) = s.pointer("/spec/healthCheckNodePort").and_then(|h| h.as_i64()) {
        ports.push(h as i32);
    }
    (ips, ports)
}

/// The `autoscaling/v1` Scale view of a workload.
/// kube-apiserver's 409 for a write whose precondition (resourceVersion, uid) no longer holds.
fn conflict(plural: &str, name: &str) -> ApiError {
    ApiError::from_store(
        StoreError::Conflict { resource: String::new(), key: String::new(), expected: 0, actual: 0 },
        plural,
        name,
    )
}

/// `spec.replicas` of a Scale body: required, a whole number.
fn scale_replicas(v: &Value, name: &str) -> Result<i64, ApiError> {
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

/// A DELETE body: empty, or DeleteOptions as a JSON object (anything else is an error, not `{}`).
fn delete_options(body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => {
            if let Some(p) = v.get("propagationPolicy").filter(|p| !p.is_null())
                && !matches!(p.as_str(), Some("Orphan" | "Background" | "Foreground"))
            {
                return Err(ApiError::bad_request(format!(
                    "DeleteOptions.propagationPolicy {p}: use \"Orphan\", \"Background\" or \"Foreground\""
                )));
            }
            Ok(v)
        }
        Ok(_) => Err(ApiError::bad_request("the DeleteOptions body must be a JSON object")),
        Err(e) => Err(ApiError::bad_request(format!("the DeleteOptions body is not valid JSON: {e}"))),
    }
}

fn scale_of(kind: &Kind, o: &Value) -> Value {
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

fn selectors(q: &Query) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let ls = LabelSelector::parse(q.get("labelSelector").map(|s| s.as_str()).unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
    let fs = FieldSelector::parse(q.get("fieldSelector").map(|s| s.as_str()).unwrap_or(""))
        .map_err(ApiError::bad_request)?;
    Ok((ls, fs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patch_names_a_resource_version_only_when_its_body_does() {
        assert!(!body_names_rv(br#"{"status": {"phase": "Running"}}"#));
        assert!(body_names_rv(br#"{"metadata": {"resourceVersion": "12"}}"#));
        assert!(!body_names_rv(br#"{"metadata": {"resourceVersion": null}}"#));
        assert!(body_names_rv(br#"[{"op": "replace", "path": "/metadata/resourceVersion", "value": "3"}]"#));
        assert!(!body_names_rv(br#"[{"op": "replace", "path": "/spec/replicas", "value": 3}]"#));
    }

    #[test]
    fn continue_tokens_round_trip_and_reject_garbage() {
        let key = ("default".to_string(), "web".to_string());
        assert_eq!(decode_continue(&encode_continue(&key, 42)), Some((key, 42)));
        assert_eq!(decode_continue("not-a-token"), None);
    }
}
