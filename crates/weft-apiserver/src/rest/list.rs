//! Lists: label and field selectors, pages (`limit` and `continue`) and tables.

use std::sync::Arc;

use serde_json::{Value, json};
use weft_api::table;

use super::{Api, Query, Target, kind_selectors, outgoing, wants_table};
use crate::status::ApiError;

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

impl Api {
    pub fn list(&self, t: &Target, accept: &str, q: &Query) -> Result<Value, ApiError> {
        let (ls, fs) = kind_selectors(t.kind, q)?;
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip_and_reject_garbage() {
        let key = ("default".to_string(), "web".to_string());
        assert_eq!(decode_continue(&encode_continue(&key, 42)), Some((key, 42)));
        assert_eq!(decode_continue("not-a-token"), None);
    }
}
