//! How a write is to be checked before it is kept: `dryRun`, `fieldValidation=Strict` (fields
//! the kind does not know) and the deepest nesting an object may have.

use serde_json::Value;
use weft_api::kinds::Kind;
use weft_api::objects;

use super::Query;
use crate::status::ApiError;

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

pub(super) fn check_depth(v: &Value) -> Result<(), ApiError> {
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
pub(super) fn check_strict(o: WriteOpts, kind: &Kind, sent: &Value, kept: &Value) -> Result<(), ApiError> {
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
