//! Garbage collection in the API server: the owner-reference cascade of a delete, and the
//! contents of a deleted namespace. (`weft-controllers`' collector finishes what a crash
//! interrupted.)

use weft_api::kinds;

use super::{Api, obj_name, store_key};

impl Api {
    /// Garbage collection of objects owned (ownerReferences) by a deleted object, transitively.
    pub(super) async fn delete_dependents(&self, uid: &str, ns: &str) {
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
                            self.release_service(&d);
                        }
                        if let Some(u) = d.pointer("/metadata/uid").and_then(|u| u.as_str()) {
                            owners.push(u.to_string());
                        }
                    }
                }
            }
        }
    }

    /// Everything in a namespace that is being deleted.
    pub(super) async fn delete_namespace_contents(&self, ns: &str) {
        for k in kinds::ALL.iter().filter(|k| !k.legacy && k.namespaced) {
            let (items, _) = self.store.list(&k.resource_key(), Some(ns));
            for o in items {
                if let Ok(d) = self.store.delete(store_key(k, ns, &obj_name(&o)), None).await
                    && k.kind == "Service"
                {
                    self.release_service(&d);
                }
            }
        }
    }
}
