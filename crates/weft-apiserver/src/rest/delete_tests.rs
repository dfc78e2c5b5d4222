//! Tests of the DELETE path: the decisions alone, then the verbs against a real store.

use std::sync::Arc;

use serde_json::{Value, json};
use weft_api::kinds;

use super::*;
use crate::rest::{Api, Query, Target, WriteOpts};

fn kind(plural: &str) -> &'static Kind {
    let group = match plural {
        "replicasets" | "deployments" => "apps",
        _ => "",
    };
    kinds::by_path(group, "v1", plural).unwrap()
}

fn t0() -> jiff::Timestamp {
    "2026-01-01T00:00:00Z".parse().unwrap()
}

fn pod(node: Option<&str>) -> Value {
    let mut p = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "namespace": "default", "uid": "u1", "resourceVersion": "5"},
        "spec": {"terminationGracePeriodSeconds": 30, "containers": [{"name": "c", "image": "busybox"}]},
        "status": {"phase": "Running"}});
    if let Some(n) = node {
        p["spec"]["nodeName"] = json!(n);
    }
    p
}

fn grace(g: i64) -> DeleteOpts {
    DeleteOpts { grace: Some(g), ..Default::default() }
}

fn marked(p: &Plan) -> &Value {
    match &p.action {
        Action::Mark(v) => v,
        other => panic!("expected a mark, got {other:?}"),
    }
}

#[test]
fn a_running_pod_is_marked_with_its_own_or_the_asked_grace_period() {
    let p = plan_delete(kind("pods"), &pod(Some("node-1")), &DeleteOpts::default(), false, t0());
    let v = marked(&p);
    assert_eq!(v["metadata"]["deletionTimestamp"], "2026-01-01T00:00:30Z");
    assert_eq!(v["metadata"]["deletionGracePeriodSeconds"], 30);
    let p = plan_delete(kind("pods"), &pod(Some("node-1")), &grace(5), false, t0());
    assert_eq!(marked(&p)["metadata"]["deletionGracePeriodSeconds"], 5);
    // A negative grace period is 1 s; 0 removes at once.
    let p = plan_delete(kind("pods"), &pod(Some("node-1")), &grace(-3), false, t0());
    assert_eq!(marked(&p)["metadata"]["deletionGracePeriodSeconds"], 1);
    assert_eq!(plan_delete(kind("pods"), &pod(Some("node-1")), &grace(0), false, t0()).action, Action::Remove);
}

#[test]
fn an_unscheduled_or_finished_pod_is_removed_at_once() {
    assert_eq!(plan_delete(kind("pods"), &pod(None), &grace(30), false, t0()).action, Action::Remove);
    for phase in ["Succeeded", "Failed"] {
        let mut p = pod(Some("node-1"));
        p["status"]["phase"] = json!(phase);
        assert_eq!(plan_delete(kind("pods"), &p, &DeleteOpts::default(), false, t0()).action, Action::Remove);
    }
}

#[test]
fn a_second_delete_may_only_shorten_the_grace_period() {
    let first = plan_delete(kind("pods"), &pod(Some("node-1")), &grace(30), false, t0());
    let terminating = marked(&first).clone();
    let later = t0() + jiff::SignedDuration::from_secs(10);
    for opts in [DeleteOpts::default(), grace(30), grace(60)] {
        assert_eq!(plan_delete(kind("pods"), &terminating, &opts, false, later).action, Action::Pending);
    }
    let p = plan_delete(kind("pods"), &terminating, &grace(5), false, later);
    // The deadline moves back by the difference, from the first deletion's start.
    assert_eq!(marked(&p)["metadata"]["deletionTimestamp"], "2026-01-01T00:00:05Z");
    assert_eq!(marked(&p)["metadata"]["deletionGracePeriodSeconds"], 5);
    // The kubelet's final delete.
    assert_eq!(plan_delete(kind("pods"), &terminating, &grace(0), false, later).action, Action::Remove);
}

#[test]
fn finalizers_keep_an_object_marked_and_policies_set_theirs() {
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "c", "namespace": "default", "uid": "u2", "finalizers": ["example.com/hold"]}});
    let p = plan_delete(kind("configmaps"), &cm, &DeleteOpts::default(), false, t0());
    let v = marked(&p);
    assert_eq!(v["metadata"]["deletionTimestamp"], "2026-01-01T00:00:00Z");
    assert_eq!(v["metadata"]["deletionGracePeriodSeconds"], 0);
    // Deleting it again changes nothing.
    assert_eq!(plan_delete(kind("configmaps"), v, &DeleteOpts::default(), false, t0()).action, Action::Pending);
    let mut bare = cm.clone();
    bare["metadata"].as_object_mut().unwrap().remove("finalizers");
    assert_eq!(plan_delete(kind("configmaps"), &bare, &DeleteOpts::default(), false, t0()).action, Action::Remove);
    // Foreground waits only when there are dependents.
    let fg = DeleteOpts::with_policy(Policy::Foreground);
    let p = plan_delete(kind("configmaps"), &bare, &fg, true, t0());
    assert_eq!(marked(&p)["metadata"]["finalizers"], json!(["foregroundDeletion"]));
    assert!(p.foreground);
    assert_eq!(plan_delete(kind("configmaps"), &bare, &fg, false, t0()).action, Action::Remove);
    // Orphan: done at once, never a waiting finalizer.
    let p = plan_delete(kind("configmaps"), &bare, &DeleteOpts::with_policy(Policy::Orphan), true, t0());
    assert!(p.orphan);
    assert_eq!(p.action, Action::Remove);
}

#[test]
fn delete_options_are_read_as_kubectl_sends_them() {
    let o = WriteOpts::default();
    let d = DeleteOpts::parse(
        br#"{"kind":"DeleteOptions","apiVersion":"v1","gracePeriodSeconds":0,"propagationPolicy":"Background"}"#,
        o,
    )
    .unwrap();
    assert_eq!((d.grace, d.policy), (Some(0), Some(Policy::Background)));
    let d = DeleteOpts::parse(br#"{"preconditions":{"uid":"x","resourceVersion":"7"},"dryRun":["All"]}"#, o).unwrap();
    assert_eq!((d.uid.as_deref(), d.rv.as_deref(), d.dry_run), (Some("x"), Some("7"), true));
    assert_eq!(DeleteOpts::parse(br#"{"orphanDependents":true}"#, o).unwrap().policy, Some(Policy::Orphan));
    assert!(DeleteOpts::parse(br#"{"orphanDependents":true,"propagationPolicy":"Orphan"}"#, o).is_err());
    assert!(DeleteOpts::parse(br#"{"gracePeriodSeconds":"soon"}"#, o).is_err());
    assert!(DeleteOpts::parse(br#"{"dryRun":["Some"]}"#, o).is_err());
    assert!(DeleteOpts::parse(b"[]", o).is_err());
}

// ---- the verbs against a store ----

struct TestApi {
    api: Api,
    _dir: tempfile::TempDir,
}

fn api() -> TestApi {
    let dir = tempfile::tempdir().unwrap();
    let store = weft_store::Store::open(&dir.path().join("store.redb"), weft_store::DEFAULT_HISTORY).unwrap();
    let alloc = crate::alloc::Allocators {
        ips: crate::alloc::IpAllocator::new("10.96.0.0/24".parse().unwrap()),
        ports: crate::alloc::PortAllocator::new(30000..=30010),
    };
    TestApi { api: Api::new(store, alloc, Arc::new(crate::pod_logs::NoPodLogs)), _dir: dir }
}

async fn api_with_default() -> TestApi {
    let t = api();
    t.namespace("default").await;
    t
}

fn at(plural: &str, ns: Option<&str>, name: Option<&str>) -> Target {
    Target { kind: kind(plural), namespace: ns.map(String::from), name: name.map(String::from), sub: None }
}

fn body(v: Value) -> Vec<u8> {
    serde_json::to_vec(&v).unwrap()
}

const O: WriteOpts = WriteOpts { dry_run: false, strict: false };

impl TestApi {
    async fn create(&self, plural: &str, ns: Option<&str>, v: Value) -> Value {
        self.api.create(&at(plural, ns, None), &body(v), O).await.unwrap_or_else(|e| panic!("{}", e.message))
    }
    async fn namespace(&self, name: &str) {
        self.create("namespaces", None, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}))
            .await;
    }
    /// A pod bound to a node (so it is deleted gracefully).
    async fn pod(&self, ns: &str, name: &str, owner: Option<&Value>) -> Value {
        let mut p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "x"}},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "busybox"}]}});
        if let Some(o) = owner {
            p["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": o["metadata"]["name"], "uid": o["metadata"]["uid"], "controller": true}]);
        }
        self.create("pods", Some(ns), p).await
    }
    async fn rs(&self, ns: &str, name: &str) -> Value {
        self.create("replicasets", Some(ns), json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": name},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "x"}},
                     "template": {"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}))
            .await
    }
    fn get(&self, plural: &str, ns: Option<&str>, name: &str) -> Option<Value> {
        self.api.get(&at(plural, ns, Some(name)), "", &Query::new()).ok()
    }
    async fn delete(
        &self,
        plural: &str,
        ns: Option<&str>,
        name: &str,
        opts: Value,
    ) -> Result<Value, crate::status::ApiError> {
        self.api.delete(&at(plural, ns, Some(name)), &body(opts), O).await
    }
}

fn rv(v: &Value) -> &str {
    v["metadata"]["resourceVersion"].as_str().unwrap()
}

#[tokio::test]
async fn a_pod_terminates_until_its_kubelet_deletes_it_with_grace_zero() {
    let t = api_with_default().await;
    let p = t.pod("default", "web", None).await;
    let uid = p["metadata"]["uid"].as_str().unwrap().to_string();
    let mut watch = t.api.store.watch(t.api.store.revision()).unwrap().live;
    // A dry run changes nothing.
    let dry =
        t.api.delete(&at("pods", Some("default"), Some("web")), b"", WriteOpts { dry_run: true, strict: false }).await;
    assert!(dry.unwrap()["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(rv(&t.get("pods", Some("default"), "web").unwrap()), rv(&p));
    // The first delete marks it (kubectl's default options).
    let d = t.delete("pods", Some("default"), "web", json!({"propagationPolicy": "Background"})).await.unwrap();
    assert_eq!(d["metadata"]["deletionGracePeriodSeconds"], 30);
    let still = t.get("pods", Some("default"), "web").expect("the pod stays while it terminates");
    assert!(still["metadata"]["deletionTimestamp"].is_string());
    // A longer grace period changes nothing; a shorter one shortens it.
    let again = t.delete("pods", Some("default"), "web", json!({"gracePeriodSeconds": 60})).await.unwrap();
    assert_eq!(rv(&again), rv(&still));
    let shorter = t.delete("pods", Some("default"), "web", json!({"gracePeriodSeconds": 5})).await.unwrap();
    assert_eq!(shorter["metadata"]["deletionGracePeriodSeconds"], 5);
    // The kubelet's delete: grace 0, bound to the uid.
    let wrong =
        t.delete("pods", Some("default"), "web", json!({"gracePeriodSeconds": 0, "preconditions": {"uid": "other"}}));
    let e = wrong.await.unwrap_err();
    assert_eq!(e.code, 409, "{}", e.message);
    assert!(e.message.contains("the UID in the precondition (other) does not match"), "{}", e.message);
    t.delete("pods", Some("default"), "web", json!({"gracePeriodSeconds": 0, "preconditions": {"uid": uid}}))
        .await
        .unwrap();
    assert!(t.get("pods", Some("default"), "web").is_none());
    // Watchers saw it marked, then deleted.
    let mut kinds_seen = vec![];
    while let Ok(Ok(ev)) = tokio::time::timeout(std::time::Duration::from_millis(200), watch.recv()).await {
        kinds_seen.push(format!("{:?}", ev.kind));
    }
    assert_eq!(kinds_seen.first().map(String::as_str), Some("Modified"), "{kinds_seen:?}");
    assert_eq!(kinds_seen.last().map(String::as_str), Some("Deleted"), "{kinds_seen:?}");
    t.api.store.close();
}

#[tokio::test]
async fn a_finalizer_holds_an_object_until_an_update_removes_it() {
    let t = api_with_default().await;
    t.create(
        "configmaps",
        Some("default"),
        json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "held", "finalizers": ["example.com/hold"]}, "data": {"a": "1"}}),
    )
    .await;
    let d = t.delete("configmaps", Some("default"), "held", json!({})).await.unwrap();
    assert_eq!(d["metadata"]["deletionGracePeriodSeconds"], 0);
    let cm = t.get("configmaps", Some("default"), "held").expect("held by its finalizer");
    let target = at("configmaps", Some("default"), Some("held"));
    let merge = "application/merge-patch+json";
    // No new finalizer once it is being deleted; its deletionTimestamp stays whatever is sent.
    let e = t.api.patch(&target, merge, br#"{"metadata":{"finalizers":["example.com/hold","example.com/more"]}}"#, O);
    let e = e.await.unwrap_err();
    assert_eq!(e.code, 422);
    assert!(e.message.contains("no new finalizers can be added if the object is being deleted"), "{}", e.message);
    assert!(e.message.contains(r#"[]string{"example.com/more"}"#), "{}", e.message);
    let kept =
        t.api.patch(&target, merge, br#"{"metadata":{"deletionTimestamp":null},"data":{"a":"2"}}"#, O).await.unwrap();
    assert_eq!(kept["metadata"]["deletionTimestamp"], cm["metadata"]["deletionTimestamp"]);
    // A dry-run removal changes nothing; the real one removes it.
    let dry = WriteOpts { dry_run: true, strict: false };
    t.api.patch(&target, merge, br#"{"metadata":{"finalizers":null}}"#, dry).await.unwrap();
    assert!(t.get("configmaps", Some("default"), "held").is_some());
    t.api.patch(&target, merge, br#"{"metadata":{"finalizers":null}}"#, O).await.unwrap();
    assert!(t.get("configmaps", Some("default"), "held").is_none());
    // A deletionTimestamp cannot be set by an update.
    t.create(
        "configmaps",
        Some("default"),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "n"}}),
    )
    .await;
    let e = t
        .api
        .patch(
            &at("configmaps", Some("default"), Some("n")),
            merge,
            br#"{"metadata":{"deletionTimestamp":"2026-01-01T00:00:00Z"}}"#,
            O,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, 422, "{}", e.message);
    t.api.store.close();
}

#[tokio::test]
async fn a_namespace_terminates_deletes_its_content_and_goes_when_empty() {
    let t = api_with_default().await;
    t.namespace("x").await;
    t.create("configmaps", Some("x"), json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}))
        .await;
    let p = t.pod("x", "web", None).await;
    // A dry run changes nothing.
    let dry = t.api.delete(&at("namespaces", None, Some("x")), b"", WriteOpts { dry_run: true, strict: false }).await;
    assert_eq!(dry.unwrap()["status"]["phase"], "Terminating");
    assert!(t.get("configmaps", Some("x"), "c").is_some());
    assert_eq!(t.get("namespaces", None, "x").unwrap()["status"]["phase"], "Active");
    let ns = t.delete("namespaces", None, "x", json!({})).await.unwrap();
    assert_eq!(ns["status"]["phase"], "Terminating");
    assert_eq!(ns["spec"]["finalizers"], json!(["kubernetes"]));
    assert!(ns["metadata"]["deletionTimestamp"].is_string());
    let cond =
        |v: &Value, ty: &str| v["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == ty).cloned();
    let remaining = cond(&ns, "NamespaceContentRemaining").unwrap();
    assert_eq!(remaining["status"], "True");
    assert_eq!(remaining["message"], "Some resources are remaining: pods. has 1 resource instances");
    // The content went; the pod terminates gracefully.
    assert!(t.get("configmaps", Some("x"), "c").is_none());
    assert!(t.get("pods", Some("x"), "web").unwrap()["metadata"]["deletionTimestamp"].is_string());
    // Nothing new may be made in it.
    let cm = body(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "d"}}));
    let e = t.api.create(&at("configmaps", Some("x"), None), &cm, O).await.unwrap_err();
    assert_eq!((e.code, e.reason), (403, "Forbidden"));
    assert_eq!(
        e.message,
        r#"configmaps "d" is forbidden: unable to create new content in namespace x because it is being terminated"#
    );
    // An update may not take the namespace controller's finalizer off.
    let mut v = t.get("namespaces", None, "x").unwrap();
    v["spec"]["finalizers"] = json!([]);
    let u = t.api.update(&at("namespaces", None, Some("x")), &body(v), O).await.unwrap();
    assert_eq!(u["spec"]["finalizers"], json!(["kubernetes"]));
    // The kubelet's final delete of the last pod ends it.
    let pre = json!({"gracePeriodSeconds": 0, "preconditions": {"uid": p["metadata"]["uid"]}});
    t.delete("pods", Some("x"), "web", pre).await.unwrap();
    assert!(t.get("namespaces", None, "x").is_none(), "the empty namespace is gone");
    // A namespace whose content goes at once goes with the DELETE.
    t.namespace("quick").await;
    t.create("configmaps", Some("quick"), json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}))
        .await;
    let d = t.delete("namespaces", None, "quick", json!({})).await.unwrap();
    assert_eq!(d["metadata"]["name"], "quick");
    assert!(t.get("namespaces", None, "quick").is_none());
    // Protected namespaces stay.
    assert_eq!(t.delete("namespaces", None, "kube-system", json!({})).await.unwrap_err().code, 403);
    t.api.store.close();
}

#[tokio::test]
async fn deletecollection_deletes_what_the_selectors_pick_each_through_delete() {
    let t = api_with_default().await;
    for (name, app) in [("a", "x"), ("b", "x"), ("c", "y")] {
        t.create(
            "configmaps",
            Some("default"),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": {"app": app}}}),
        )
        .await;
    }
    t.pod("default", "web", None).await;
    let mut q = Query::new();
    q.insert("labelSelector".into(), "app=x".into());
    let list = t.api.delete_collection(&at("configmaps", Some("default"), None), &q, b"", O).await.unwrap();
    assert_eq!(list["kind"], "ConfigMapList");
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    assert!(t.get("configmaps", Some("default"), "a").is_none() && t.get("configmaps", Some("default"), "b").is_none());
    assert!(t.get("configmaps", Some("default"), "c").is_some());
    // Pods go gracefully; a dry run changes nothing.
    let all = Query::new();
    let dry = WriteOpts { dry_run: true, strict: false };
    t.api.delete_collection(&at("pods", Some("default"), None), &all, b"", dry).await.unwrap();
    assert!(t.get("pods", Some("default"), "web").unwrap()["metadata"].get("deletionTimestamp").is_none());
    t.api.delete_collection(&at("pods", Some("default"), None), &all, b"", O).await.unwrap();
    assert!(t.get("pods", Some("default"), "web").unwrap()["metadata"]["deletionTimestamp"].is_string());
    // Namespaces are deleted one by one.
    assert_eq!(t.api.delete_collection(&at("namespaces", None, None), &all, b"", O).await.unwrap_err().code, 405);
    t.api.store.close();
}

#[tokio::test]
async fn propagation_background_foreground_and_orphan() {
    let t = api_with_default().await;
    // Background: the owner goes, its pods terminate.
    let rs = t.rs("default", "bg").await;
    t.pod("default", "bg-1", Some(&rs)).await;
    t.delete("replicasets", Some("default"), "bg", json!({"propagationPolicy": "Background"})).await.unwrap();
    assert!(t.get("replicasets", Some("default"), "bg").is_none());
    assert!(t.get("pods", Some("default"), "bg-1").unwrap()["metadata"]["deletionTimestamp"].is_string());
    // Foreground: the owner waits for its pods, then goes.
    let rs = t.rs("default", "fg").await;
    let p = t.pod("default", "fg-1", Some(&rs)).await;
    let d = t.delete("replicasets", Some("default"), "fg", json!({"propagationPolicy": "Foreground"})).await.unwrap();
    assert_eq!(d["metadata"]["finalizers"], json!(["foregroundDeletion"]));
    assert!(t.get("replicasets", Some("default"), "fg").is_some());
    assert!(t.get("pods", Some("default"), "fg-1").unwrap()["metadata"]["deletionTimestamp"].is_string());
    let pre = json!({"gracePeriodSeconds": 0, "preconditions": {"uid": p["metadata"]["uid"]}});
    t.delete("pods", Some("default"), "fg-1", pre).await.unwrap();
    assert!(t.get("pods", Some("default"), "fg-1").is_none());
    assert!(t.get("replicasets", Some("default"), "fg").is_none(), "the owner went with its last dependent");
    // Orphan: the owner goes, its pods stay without a reference to it.
    let rs = t.rs("default", "or").await;
    t.pod("default", "or-1", Some(&rs)).await;
    t.delete("replicasets", Some("default"), "or", json!({"propagationPolicy": "Orphan"})).await.unwrap();
    assert!(t.get("replicasets", Some("default"), "or").is_none());
    let left = t.get("pods", Some("default"), "or-1").unwrap();
    assert!(left["metadata"].get("deletionTimestamp").is_none());
    assert!(left["metadata"].get("ownerReferences").is_none(), "{left}");
    t.api.store.close();
}

/// `kubectl get pods` shows a pod being deleted as Terminating until it has finished.
#[test]
fn the_pod_row_says_terminating_while_a_pod_is_being_deleted() {
    let status = |v: &Value| {
        let row = weft_api::table::row(kind("pods"), v, t0());
        row[2].as_str().unwrap().to_string()
    };
    let mut p = pod(Some("node-1"));
    assert_eq!(status(&p), "Running");
    p["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:30Z");
    assert_eq!(status(&p), "Terminating");
    p["status"]["phase"] = json!("Succeeded");
    assert_eq!(status(&p), "Succeeded");
    p["status"] = json!({"phase": "Running", "reason": "NodeLost"});
    assert_eq!(status(&p), "Unknown");
}

#[test]
fn a_huge_grace_period_does_not_panic() {
    // A client's gracePeriodSeconds (or a pod's terminationGracePeriodSeconds) past the last
    // representable time: the deletion time saturates instead of panicking the handler.
    for g in [i64::MAX, 1 << 40] {
        let p = plan_delete(kind("pods"), &pod(Some("node-1")), &grace(g), false, t0());
        let v = marked(&p);
        assert_eq!(v["metadata"]["deletionGracePeriodSeconds"], g);
        assert!(v["metadata"]["deletionTimestamp"].as_str().unwrap().starts_with("9999-"));
        // Then a shorter one, still huge.
        let again = plan_delete(kind("pods"), v, &grace(g - 1), false, t0());
        assert!(marked(&again)["metadata"]["deletionTimestamp"].as_str().is_some());
    }
    let mut huge = pod(Some("node-1"));
    huge["spec"]["terminationGracePeriodSeconds"] = json!(i64::MAX);
    let p = plan_delete(kind("pods"), &huge, &DeleteOpts::default(), false, t0());
    assert_eq!(marked(&p)["metadata"]["deletionGracePeriodSeconds"], i64::MAX);
}

#[tokio::test]
async fn a_bound_pod_keeps_its_node_and_a_stale_binding_conflicts() {
    let t = api_with_default().await;
    let p = t
        .create(
            "pods",
            Some("default"),
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                   "spec": {"containers": [{"name": "c", "image": "busybox"}]}}),
        )
        .await;
    let rv = p["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    let target = at("pods", Some("default"), Some("p"));
    let merge = "application/merge-patch+json";
    let bind = |node: &str| body(json!({"metadata": {"resourceVersion": rv}, "spec": {"nodeName": node}}));
    // The scheduler's binding, made on the version it saw.
    let bound = t.api.patch(&target, merge, &bind("node-1"), O).await.unwrap();
    assert_eq!(bound["spec"]["nodeName"], "node-1");
    // The same decision again from a stale cache is a conflict, not a second node...
    assert_eq!(t.api.patch(&target, merge, &bind("node-2"), O).await.unwrap_err().code, 409);
    // ...and a change of node without a resourceVersion is refused, naming the field.
    let e = t.api.patch(&target, merge, &body(json!({"spec": {"nodeName": "node-2"}})), O).await.unwrap_err();
    assert_eq!(e.code, 422);
    assert!(e.to_status().to_string().contains("spec.nodeName"), "{e:?}");
    // Other changes to a bound pod still go through.
    let labelled = t.api.patch(&target, merge, &body(json!({"metadata": {"labels": {"a": "b"}}})), O).await.unwrap();
    assert_eq!(
        (labelled["spec"]["nodeName"].as_str(), labelled["metadata"]["labels"]["a"].as_str()),
        (Some("node-1"), Some("b"))
    );
}
