//! ControllerRevisions (apps/v1), the template history DaemonSets and StatefulSets keep, as
//! kube-controller-manager's `controller/history` writes them: one per template, named
//! `<owner>-<hash>`, `data` the strategic merge patch that puts the template back
//! (`{"spec": {"template": {..., "$patch": "replace"}}}`, what `kubectl rollout undo` applies),
//! `revision` counting up; a template that comes back gets the next number again; revisions
//! beyond `revisionHistoryLimit` that no live pod uses are deleted, oldest first.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::{Value, json};

use crate::workload::controller_ref;

/// The label a pod carries naming its revision.
pub const REVISION_HASH: &str = "controller-revision-hash";

/// What a revision stores: the patch that restores `template`.
pub fn revision_data(template: &PodTemplateSpec) -> Value {
    let mut t = serde_json::to_value(template).unwrap_or_default();
    if let Some(m) = t.as_object_mut() {
        m.insert("$patch".into(), json!("replace"));
    }
    json!({"spec": {"template": t}})
}

/// The hash of a template (the revision's name suffix and, for DaemonSets, the pods' label).
pub fn hash(template: &PodTemplateSpec) -> String {
    crate::template_hash(&serde_json::to_value(template).unwrap_or_default())
}

/// Revisions to delete: beyond `limit`, not `keep` (the current and update revisions), not used
/// by a live pod; oldest revision first. Input: (name, revision).
pub fn plan_cleanup(limit: i32, revisions: &[(String, i64)], keep: &[&str], in_use: &[String]) -> Vec<String> {
    let mut idle: Vec<&(String, i64)> =
        revisions.iter().filter(|(n, _)| !keep.contains(&n.as_str()) && !in_use.iter().any(|u| u == n)).collect();
    let excess = idle.len() as i64 - i64::from(limit.max(0));
    if excess <= 0 {
        return vec![];
    }
    idle.sort_by_key(|(n, r)| (*r, n.clone()));
    idle.into_iter().take(excess as usize).map(|(n, _)| n.clone()).collect()
}

/// The owner of a history.
pub struct Owner<'a> {
    pub kind: &'static str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
    pub template: &'a PodTemplateSpec,
    pub annotations: &'a BTreeMap<String, String>,
}

/// Makes sure the owner's template has the newest revision. Returns (the revision's name, its
/// number, the hash).
pub async fn sync(
    client: &kube::Client,
    owner: &Owner<'_>,
    owned: &[Arc<ControllerRevision>],
) -> anyhow::Result<(String, i64, String)> {
    let h = hash(owner.template);
    let name = format!("{}-{h}", owner.name);
    let max = owned.iter().filter_map(|r| r.revision).max().unwrap_or(0);
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), owner.namespace);
    if let Some(cur) = owned.iter().find(|r| r.name_any() == name) {
        let number = cur.revision.unwrap_or(0);
        if number < max {
            // An old template is back (rollout undo): it is the newest revision again.
            api.patch(&name, &PatchParams::default(), &Patch::Merge(json!({"revision": max + 1}))).await?;
            return Ok((name, max + 1, h));
        }
        return Ok((name, number, h));
    }
    let mut labels = owner.template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
    labels.insert(REVISION_HASH.into(), h.clone());
    let mut cr = ControllerRevision::default();
    cr.metadata.name = Some(name.clone());
    cr.metadata.namespace = Some(owner.namespace.into());
    cr.metadata.labels = Some(labels);
    let ann: BTreeMap<String, String> = owner
        .annotations
        .iter()
        .filter(|(k, _)| k.as_str() != "kubectl.kubernetes.io/last-applied-configuration")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !ann.is_empty() {
        cr.metadata.annotations = Some(ann);
    }
    cr.metadata.owner_references = Some(vec![controller_ref("apps/v1", owner.kind, owner.name, owner.uid)]);
    cr.data = RawExtension(revision_data(owner.template));
    cr.revision = Some(max + 1);
    match api.create(&PostParams::default(), &cr).await {
        Ok(_) => {}
        // Made by an earlier pass the cache does not show yet.
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    Ok((name, max + 1, h))
}

/// Deletes what [`plan_cleanup`] says.
pub async fn cleanup(
    client: &kube::Client,
    namespace: &str,
    owned: &[Arc<ControllerRevision>],
    limit: i32,
    keep: &[&str],
    in_use: &[String],
) {
    let revs: Vec<(String, i64)> = owned.iter().map(|r| (r.name_any(), r.revision.unwrap_or(0))).collect();
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), namespace);
    for victim in plan_cleanup(limit, &revs, keep, in_use) {
        let uid = owned.iter().find(|r| r.name_any() == victim).and_then(|r| r.metadata.uid.clone());
        let dp =
            DeleteParams { preconditions: Some(Preconditions { uid, resource_version: None }), ..Default::default() };
        if let Err(e) = api.delete(&victim, &dp).await {
            tracing::debug!(revision = %victim, error = %e, "revision history cleanup");
        }
    }
}

/// The revisions controlled by `uid`.
pub fn owned_by(revs: &[Arc<ControllerRevision>], uid: &str) -> Vec<Arc<ControllerRevision>> {
    revs.iter()
        .filter(|r| r.owner_references().iter().any(|o| o.uid == uid && o.controller == Some(true)))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_data_replaces_the_template() {
        let t: PodTemplateSpec = serde_json::from_value(
            json!({"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c"}]}}),
        )
        .unwrap();
        let d = revision_data(&t);
        assert_eq!(d["spec"]["template"]["$patch"], "replace");
        assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["name"], "c");
    }

    #[test]
    fn cleanup_keeps_current_used_and_newest() {
        let revs: Vec<(String, i64)> = (1..=5).map(|i| (format!("r{i}"), i)).collect();
        assert_eq!(plan_cleanup(1, &revs, &["r5"], &["r1".into()]), ["r2", "r3"]);
        assert!(plan_cleanup(10, &revs, &["r5"], &[]).is_empty());
    }
}
