//! The DELETE verb: options and preconditions, protected namespaces, and the cascade to what
//! the deleted object owned.

use serde_json::{Value, json};

use super::{Api, Target, WriteOpts, conflict, outgoing, rv_of, store_key};
use crate::status::ApiError;

/// Names a user may not delete (kube-apiserver refuses them too).
const PROTECTED_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public"];
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
            self.release_service(&deleted);
        }
        let orphan = opts.get("propagationPolicy").and_then(|p| p.as_str()) == Some("Orphan")
            || opts.get("orphanDependents").and_then(|p| p.as_bool()) == Some(true);
        if !orphan && let Some(uid) = deleted.pointer("/metadata/uid").and_then(|u| u.as_str()) {
            self.delete_dependents(uid, &ns).await;
        }
        Ok(outgoing(t.kind, &deleted))
    }
}
