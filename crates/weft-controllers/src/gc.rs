//! Garbage collection, as kube-controller-manager's garbage collector and the Endpoints
//! controller do it: an object whose owners (ownerReferences) are all gone is deleted, and the
//! Endpoints of a deleted Service go with it. The API server's cascade on delete does most of
//! this at once; this loop finishes what a cascade interrupted by a crash left, and what a
//! controller made from a stale cache just after its owner was deleted (a ReplicaSet for a
//! Deployment that is gone, pods for a ReplicaSet that is gone).
//!
//! Candidates come from the caches (pure: [`orphans`], [`leftover_endpoints`]); each is
//! confirmed by reading its owner from the API before anything is deleted, so an owner the
//! cache has not seen yet is never mistaken for a deleted one, and the delete names the
//! object's uid so that a newer object of the same name is never hit.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Endpoints, Pod, ReplicationController, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, Preconditions};
use kube::{Resource, ResourceExt};

/// The owner kinds this loop can look up (others are left alone: never delete on a guess).
const OWNER_KINDS: &[&str] =
    &["Deployment", "ReplicaSet", "ReplicationController", "Service", "DaemonSet", "StatefulSet", "Job"];

/// What an object is: its kind, namespace, name and uid.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Obj {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// Objects whose owners of known kinds are all absent from `live_uids` (candidates: confirm
/// each owner with the API before deleting).
pub fn orphans<'a>(
    objects: impl Iterator<Item = (&'static str, &'a ObjectMeta)>,
    live_uids: &HashSet<&str>,
) -> Vec<(Obj, Vec<OwnerReference>)> {
    let mut out = vec![];
    for (kind, m) in objects {
        let owners = m.owner_references.as_deref().unwrap_or_default();
        if owners.is_empty() || !owners.iter().all(|o| OWNER_KINDS.contains(&o.kind.as_str())) {
            continue;
        }
        if owners.iter().any(|o| live_uids.contains(o.uid.as_str())) {
            continue;
        }
        let obj = Obj {
            kind,
            namespace: m.namespace.clone().unwrap_or_default(),
            name: m.name.clone().unwrap_or_default(),
            uid: m.uid.clone().unwrap_or_default(),
        };
        out.push((obj, owners.to_vec()));
    }
    out
}

/// Endpoints without their Service: after the controller starts, all of them (a Service
/// deleted while it was down); afterwards those of Services seen before and gone now. Kept:
/// leader-election Endpoints, which have no Service.
pub fn leftover_endpoints(
    endpoints: &[Arc<Endpoints>],
    services: &BTreeSet<(String, String)>,
    seen_before: Option<&BTreeSet<(String, String)>>,
) -> Vec<(String, String)> {
    endpoints
        .iter()
        .filter(|e| !e.annotations().contains_key("control-plane.alpha.kubernetes.io/leader"))
        .map(|e| (e.namespace().unwrap_or_default(), e.name_any()))
        .filter(|k| !services.contains(k) && seen_before.is_none_or(|s| s.contains(k)))
        .collect()
}

/// Is `owner` (of `ns`) still there, with the same uid? An error other than 404 counts as
/// "there": nothing is deleted on a doubt.
async fn owner_alive(client: &kube::Client, ns: &str, owner: &OwnerReference) -> bool {
    async fn get<K>(client: &kube::Client, ns: &str, name: &str) -> Result<Option<String>, kube::Error>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        Ok(Api::<K>::namespaced(client.clone(), ns).get_opt(name).await?.and_then(|o| o.meta().uid.clone()))
    }
    let uid = match owner.kind.as_str() {
        "Deployment" => get::<Deployment>(client, ns, &owner.name).await,
        "ReplicaSet" => get::<ReplicaSet>(client, ns, &owner.name).await,
        "ReplicationController" => get::<ReplicationController>(client, ns, &owner.name).await,
        "Service" => get::<Service>(client, ns, &owner.name).await,
        "DaemonSet" => get::<DaemonSet>(client, ns, &owner.name).await,
        "StatefulSet" => get::<StatefulSet>(client, ns, &owner.name).await,
        "Job" => get::<Job>(client, ns, &owner.name).await,
        _ => return true,
    };
    match uid {
        Ok(Some(u)) => u == owner.uid,
        Ok(None) => false,
        Err(_) => true,
    }
}

/// Deletes `obj` if it is still the object seen (its uid).
async fn delete(client: &kube::Client, obj: &Obj) {
    let dp = DeleteParams {
        preconditions: Some(Preconditions { uid: Some(obj.uid.clone()), resource_version: None }),
        ..DeleteParams::background()
    };
    let r = match obj.kind {
        "Pod" => Api::<Pod>::namespaced(client.clone(), &obj.namespace).delete(&obj.name, &dp).await.map(|_| ()),
        "ReplicaSet" => {
            Api::<ReplicaSet>::namespaced(client.clone(), &obj.namespace).delete(&obj.name, &dp).await.map(|_| ())
        }
        "EndpointSlice" => {
            Api::<EndpointSlice>::namespaced(client.clone(), &obj.namespace).delete(&obj.name, &dp).await.map(|_| ())
        }
        "ControllerRevision" => Api::<ControllerRevision>::namespaced(client.clone(), &obj.namespace)
            .delete(&obj.name, &dp)
            .await
            .map(|_| ()),
        _ => Ok(()),
    };
    match r {
        Ok(()) => {
            tracing::info!(kind = obj.kind, object = %format!("{}/{}", obj.namespace, obj.name), "garbage collected: its owner is gone")
        }
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
        Err(e) => {
            tracing::warn!(kind = obj.kind, object = %format!("{}/{}", obj.namespace, obj.name), error = %e, "garbage collection")
        }
    }
}

/// The caches the collector reads.
pub struct Caches<'a> {
    pub pods: &'a [Arc<Pod>],
    pub rss: &'a [Arc<ReplicaSet>],
    pub slices: &'a [Arc<EndpointSlice>],
    pub deploys: &'a [Arc<Deployment>],
    pub rcs: &'a [Arc<ReplicationController>],
    pub services: &'a [Arc<Service>],
    pub endpoints: &'a [Arc<Endpoints>],
    pub daemonsets: &'a [Arc<DaemonSet>],
    pub statefulsets: &'a [Arc<StatefulSet>],
    pub jobs: &'a [Arc<Job>],
    pub revisions: &'a [Arc<ControllerRevision>],
}

/// One collection pass; returns the Services seen (for the next pass's Endpoints check).
pub async fn collect(
    client: &kube::Client,
    c: &Caches<'_>,
    seen_before: Option<&BTreeSet<(String, String)>>,
) -> BTreeSet<(String, String)> {
    let mut live: HashSet<&str> = HashSet::new();
    live.extend(c.deploys.iter().filter_map(|o| o.metadata.uid.as_deref()));
    live.extend(c.rss.iter().filter_map(|o| o.metadata.uid.as_deref()));
    live.extend(c.rcs.iter().filter_map(|o| o.metadata.uid.as_deref()));
    live.extend(c.services.iter().filter_map(|o| o.metadata.uid.as_deref()));
    live.extend(c.daemonsets.iter().filter_map(|o| o.metadata.uid.as_deref()));
    live.extend(c.statefulsets.iter().filter_map(|o| o.metadata.uid.as_deref()));
    live.extend(c.jobs.iter().filter_map(|o| o.metadata.uid.as_deref()));
    let objects = c
        .pods
        .iter()
        .map(|o| ("Pod", &o.metadata))
        .chain(c.rss.iter().map(|o| ("ReplicaSet", &o.metadata)))
        .chain(c.slices.iter().map(|o| ("EndpointSlice", &o.metadata)))
        .chain(c.revisions.iter().map(|o| ("ControllerRevision", &o.metadata)));
    for (obj, owners) in orphans(objects, &live) {
        let mut alive = false;
        for o in &owners {
            if owner_alive(client, &obj.namespace, o).await {
                alive = true;
                break;
            }
        }
        if !alive {
            delete(client, &obj).await;
        }
    }
    let services: BTreeSet<(String, String)> =
        c.services.iter().map(|s| (s.namespace().unwrap_or_default(), s.name_any())).collect();
    for (ns, name) in leftover_endpoints(c.endpoints, &services, seen_before) {
        // The cache may lag a Service made again under the same name: ask the API.
        let svc: Api<Service> = Api::namespaced(client.clone(), &ns);
        if let Ok(None) = svc.get_opt(&name).await {
            let api: Api<Endpoints> = Api::namespaced(client.clone(), &ns);
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => tracing::info!(endpoints = %format!("{ns}/{name}"), "deleted: its Service is gone"),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => tracing::warn!(endpoints = %format!("{ns}/{name}"), error = %e, "deleting Endpoints"),
            }
        }
    }
    services
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta(name: &str, owners: serde_json::Value) -> ObjectMeta {
        serde_json::from_value(
            json!({"name": name, "namespace": "default", "uid": format!("uid-{name}"), "ownerReferences": owners}),
        )
        .unwrap()
    }

    #[test]
    fn only_objects_whose_known_owners_are_all_gone_are_candidates() {
        let owner = |kind: &str, uid: &str| json!({"apiVersion": "v1", "kind": kind, "name": "o", "uid": uid});
        let metas = [
            meta("orphan", json!([owner("ReplicaSet", "gone")])),
            meta("owned", json!([owner("ReplicaSet", "live")])),
            meta("one-of-two", json!([owner("ReplicaSet", "gone"), owner("Deployment", "live")])),
            meta("foreign", json!([owner("CronJob", "gone")])),
            meta("job-pod", json!([owner("Job", "gone")])),
            meta("free", json!([])),
        ];
        let live: HashSet<&str> = HashSet::from(["live"]);
        let found: Vec<String> =
            orphans(metas.iter().map(|m| ("Pod", m)), &live).into_iter().map(|(o, _)| o.name).collect();
        assert_eq!(found, ["orphan", "job-pod"], "an unknown owner kind is never guessed at");
    }

    #[test]
    fn endpoints_go_with_their_service() {
        let ep = |name: &str, leader: bool| -> Arc<Endpoints> {
            let ann = if leader { json!({"control-plane.alpha.kubernetes.io/leader": "x"}) } else { json!({}) };
            Arc::new(
                serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default", "annotations": ann}}))
                    .unwrap(),
            )
        };
        let eps = [ep("kept", false), ep("gone", false), ep("lock", true), ep("early", false)];
        let services = BTreeSet::from([("default".to_string(), "kept".to_string())]);
        let key = |n: &str| ("default".to_string(), n.to_string());
        // At start: every Endpoints without a Service, but not a leader lock.
        assert_eq!(leftover_endpoints(&eps, &services, None), [key("gone"), key("early")]);
        // Later: only those whose Service was seen and is gone (an Endpoints written before its
        // Service is left for the Service to come).
        let before = BTreeSet::from([key("kept"), key("gone")]);
        assert_eq!(leftover_endpoints(&eps, &services, Some(&before)), [key("gone")]);
    }
}
