//! The three PATCH formats kubectl and controllers send: JSON merge patch (RFC 7386), JSON patch
//! (RFC 6902), both from the `json-patch` crate, and Kubernetes' strategic merge patch, which no
//! maintained Rust crate implements. It is written here for the list fields of the kinds weft
//! serves: lists with a merge key merge element by element, `$patch: delete|replace`,
//! `$setElementOrder/…`, `$deleteFromPrimitiveList/…` and `$retainKeys` directives.

use serde_json::{Map, Value};

use crate::status::ApiError;

#[derive(Clone, Copy)]
pub enum PatchKind {
    Merge,
    Json,
    Strategic,
}

impl PatchKind {
    pub fn from_content_type(ct: &str) -> Option<PatchKind> {
        match ct.split(';').next().unwrap_or("").trim() {
            "application/merge-patch+json" => Some(PatchKind::Merge),
            "application/json-patch+json" => Some(PatchKind::Json),
            "application/strategic-merge-patch+json" => Some(PatchKind::Strategic),
            _ => None,
        }
    }
}

/// The most operations a JSON patch may have (kube-apiserver's limit).
pub const MAX_JSON_PATCH_OPS: usize = 10_000;
/// The most bytes a JSON patch's `copy` operations may copy in all: each can double a subtree,
/// so without a bound 30 operations would ask for gigabytes. kube-apiserver bounds it too.
pub const MAX_COPIED_BYTES: usize = 3 << 20;

pub fn apply(kind: PatchKind, object: &Value, patch: &[u8]) -> Result<Value, ApiError> {
    let bad = |m: String| ApiError::bad_request(m);
    match kind {
        PatchKind::Merge => {
            let p: Value =
                serde_json::from_slice(patch).map_err(|e| bad(format!("the patch is not valid JSON: {e}")))?;
            let mut out = object.clone();
            json_patch::merge(&mut out, &p);
            Ok(out)
        }
        PatchKind::Json => {
            let p: json_patch::Patch =
                serde_json::from_slice(patch).map_err(|e| bad(format!("the JSON patch is malformed: {e}")))?;
            json(object, p)
        }
        PatchKind::Strategic => {
            let p: Value =
                serde_json::from_slice(patch).map_err(|e| bad(format!("the patch is not valid JSON: {e}")))?;
            strategic(object, &p).map_err(bad)
        }
    }
}

/// A JSON patch, an operation at a time so that what `copy` copies is counted before it is made.
fn json(object: &Value, p: json_patch::Patch) -> Result<Value, ApiError> {
    if p.0.len() > MAX_JSON_PATCH_OPS {
        return Err(ApiError::new(
            413,
            "RequestEntityTooLarge",
            format!(
                "The allowed maximum operations in a JSON patch is {MAX_JSON_PATCH_OPS}, got {}: split the patch",
                p.0.len()
            ),
        ));
    }
    let mut out = object.clone();
    let mut copied = 0usize;
    for op in p.0 {
        if let json_patch::PatchOperation::Copy(c) = &op
            && let Some(v) = out.pointer(c.from.as_str())
        {
            copied = copied.saturating_add(json_size(v, MAX_COPIED_BYTES - copied.min(MAX_COPIED_BYTES)));
            if copied > MAX_COPIED_BYTES {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    format!(
                        "the JSON patch's copy operations copy more than {MAX_COPIED_BYTES} bytes in all: send the values themselves instead"
                    ),
                ));
            }
        }
        json_patch::patch(&mut out, std::slice::from_ref(&op))
            .map_err(|e| ApiError::bad_request(format!("the JSON patch does not apply: {e}")))?;
    }
    Ok(out)
}

/// The size of `v` as JSON, counted only up to `limit` (+1): a huge value costs no more than that.
fn json_size(v: &Value, limit: usize) -> usize {
    struct Counter(usize, usize);
    impl std::io::Write for Counter {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            if self.0 > self.1 {
                return Err(std::io::Error::other("over the limit"));
            }
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Counter(0, limit);
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

enum ListRule {
    Key(&'static str),
    PrimitiveMerge,
    Replace,
}

/// Which lists merge, and by what key: the `patchMergeKey` tags of the Kubernetes Go types for the
/// fields of the kinds weft serves. `path` holds the object keys from the root, indices skipped.
fn list_rule(path: &[String]) -> ListRule {
    let last = path.last().map(|s| s.as_str()).unwrap_or("");
    let parent = if path.len() >= 2 { path[path.len() - 2].as_str() } else { "" };
    match (parent, last) {
        (_, "containers" | "initContainers" | "ephemeralContainers" | "volumes" | "imagePullSecrets" | "env") => {
            ListRule::Key("name")
        }
        ("containers" | "initContainers" | "ephemeralContainers", "ports") => ListRule::Key("containerPort"),
        ("spec", "ports") if path.len() == 2 => ListRule::Key("port"),
        (_, "volumeMounts") => ListRule::Key("mountPath"),
        (_, "volumeDevices") => ListRule::Key("devicePath"),
        ("metadata", "ownerReferences") => ListRule::Key("uid"),
        ("metadata", "finalizers") => ListRule::PrimitiveMerge,
        ("status", "conditions") | ("status", "addresses") => ListRule::Key("type"),
        (_, "hostAliases") => ListRule::Key("ip"),
        (_, "topologySpreadConstraints") => ListRule::Key("topologyKey"),
        _ => ListRule::Replace,
    }
}

pub fn strategic(original: &Value, patch: &Value) -> Result<Value, String> {
    let mut path = vec![];
    match merge_value(Some(original), patch, &mut path)? {
        Some(v) => Ok(v),
        None => Err("the patch deletes the whole object".into()),
    }
}

fn merge_value(orig: Option<&Value>, patch: &Value, path: &mut Vec<String>) -> Result<Option<Value>, String> {
    match patch {
        Value::Object(p) => {
            let base = match orig {
                Some(Value::Object(o)) => o.clone(),
                _ => Map::new(),
            };
            merge_map(base, p, path)
        }
        other => Ok(Some(other.clone())),
    }
}

fn merge_map(
    mut base: Map<String, Value>,
    p: &Map<String, Value>,
    path: &mut Vec<String>,
) -> Result<Option<Value>, String> {
    match p.get("$patch").and_then(|v| v.as_str()) {
        Some("delete") => return Ok(None),
        Some("replace") => {
            let mut m = p.clone();
            m.remove("$patch");
            return Ok(Some(strip_directives(Value::Object(m))));
        }
        Some(other) => return Err(format!("unknown $patch directive {other:?}")),
        None => {}
    }
    let mut orders: Vec<(String, Vec<Value>)> = vec![];
    for (k, v) in p {
        if k == "$retainKeys" || k == "$patch" {
            continue;
        }
        if let Some(field) = k.strip_prefix("$setElementOrder/") {
            orders.push((field.to_string(), v.as_array().cloned().unwrap_or_default()));
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let remove = v.as_array().cloned().unwrap_or_default();
            if let Some(Value::Array(list)) = base.get_mut(field) {
                list.retain(|x| !remove.contains(x));
            }
            continue;
        }
        if v.is_null() {
            base.remove(k);
            continue;
        }
        path.push(k.clone());
        let merged = match (base.get(k), v) {
            (Some(Value::Array(ol)), Value::Array(pl)) => Some(Value::Array(merge_list(ol, pl, path)?)),
            (None, Value::Array(pl)) => Some(Value::Array(merge_list(&[], pl, path)?)),
            (o, v) => merge_value(o, v, path)?,
        };
        path.pop();
        match merged {
            Some(m) => {
                base.insert(k.clone(), m);
            }
            None => {
                base.remove(k);
            }
        }
    }
    for (field, order) in orders {
        path.push(field.clone());
        if let (Some(Value::Array(list)), ListRule::Key(key)) = (base.get_mut(&field), list_rule(path)) {
            let mut rest = std::mem::take(list);
            for o in &order {
                let want = o.get(key);
                if let Some(i) = rest.iter().position(|e| e.get(key) == want && want.is_some()) {
                    list.push(rest.remove(i));
                }
            }
            list.append(&mut rest);
        }
        path.pop();
    }
    if let Some(Value::Array(keep)) = p.get("$retainKeys") {
        let keep: Vec<&str> = keep.iter().filter_map(|k| k.as_str()).collect();
        base.retain(|k, _| keep.contains(&k.as_str()));
    }
    Ok(Some(Value::Object(base)))
}

fn merge_list(orig: &[Value], patch: &[Value], path: &mut Vec<String>) -> Result<Vec<Value>, String> {
    match list_rule(path) {
        ListRule::Replace => Ok(patch.iter().cloned().map(strip_directives).collect()),
        ListRule::PrimitiveMerge => {
            let mut out = orig.to_vec();
            for v in patch {
                if !out.contains(v) {
                    out.push(v.clone());
                }
            }
            Ok(out)
        }
        ListRule::Key(key) => {
            if patch.iter().any(|e| e.get("$patch").and_then(|p| p.as_str()) == Some("replace")) {
                return Ok(patch.iter().filter(|e| e.get("$patch").is_none()).cloned().map(strip_directives).collect());
            }
            let mut out = orig.to_vec();
            for e in patch {
                let Some(pm) = e.as_object() else {
                    return Err(format!("{}: list elements must be objects with a {key:?} field", path.join(".")));
                };
                let k = pm.get(key);
                let pos = k.and_then(|k| out.iter().position(|o| o.get(key) == Some(k)));
                match (pm.get("$patch").and_then(|p| p.as_str()), pos) {
                    (Some("delete"), Some(i)) => {
                        out.remove(i);
                    }
                    (Some("delete"), None) => {}
                    (_, Some(i)) => {
                        if let Some(m) = merge_value(Some(&out[i]), e, path)? {
                            out[i] = m;
                        }
                    }
                    (_, None) => {
                        if let Some(m) = merge_value(None, e, path)? {
                            out.push(m);
                        }
                    }
                }
            }
            Ok(out)
        }
    }
}

fn strip_directives(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter().filter(|(k, _)| !k.starts_with('$')).map(|(k, v)| (k, strip_directives(v))).collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(strip_directives).collect()),
        o => o,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn service_ports_merge_by_port() {
        let o = json!({"spec": {"ports": [{"port": 80, "targetPort": 9376, "nodePort": 31000}, {"port": 443}]}});
        let p = json!({"spec": {"$setElementOrder/ports": [{"port": 443}, {"port": 80}],
            "ports": [{"port": 80, "targetPort": 8080}]}});
        let out = strategic(&o, &p).unwrap();
        assert_eq!(
            out,
            json!({"spec": {"ports": [{"port": 443}, {"port": 80, "targetPort": 8080, "nodePort": 31000}]}})
        );
        let del = strategic(&o, &json!({"spec": {"ports": [{"port": 443, "$patch": "delete"}]}})).unwrap();
        assert_eq!(del["spec"]["ports"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn containers_merge_by_name_and_nulls_delete() {
        let o = json!({"metadata": {"labels": {"a": "1", "b": "2"}},
            "spec": {"containers": [{"name": "c", "image": "x", "env": [{"name": "A", "value": "1"}]}]}});
        let p = json!({"metadata": {"labels": {"b": null}},
            "spec": {"containers": [{"name": "c", "image": "y", "env": [{"name": "B", "value": "2"}]}]}});
        let out = strategic(&o, &p).unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"a": "1"}));
        assert_eq!(out["spec"]["containers"][0]["image"], "y");
        assert_eq!(out["spec"]["containers"][0]["env"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn plain_lists_replace_and_retain_keys() {
        let o = json!({"spec": {"externalIPs": ["1.1.1.1"], "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}});
        let p =
            json!({"spec": {"externalIPs": ["2.2.2.2"], "strategy": {"$retainKeys": ["type"], "type": "Recreate"}}});
        let out = strategic(&o, &p).unwrap();
        assert_eq!(out["spec"]["externalIPs"], json!(["2.2.2.2"]));
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(apply(PatchKind::Strategic, &json!({}), b"nope").is_err());
        assert!(apply(PatchKind::Json, &json!({}), b"[{\"op\": \"remove\", \"path\": \"/x\"}]").is_err());
        assert!(strategic(&json!({"spec": {"ports": [1]}}), &json!({"spec": {"ports": [2]}})).is_err());
    }
}
