//! RBAC enforced by the API server: the bootstrap policy at start, decisions for
//! service-account users on the current Roles and bindings (a binding is in force for the next
//! request), kube-apiserver's 403, the access reviews over real HTTPS, and the escalation checks
//! on writes of RBAC objects made as a user who is not in `system:masters`.

use std::collections::HashMap;

use http::{Method, Request};
use serde_json::{Value, json};
use weft_apiserver::auth::{self, User};
use weft_apiserver::authz::{self, Attributes};
use weft_apiserver::rest::{Api, Target};
use weft_apiserver::{Config, Running, start};

struct Server {
    _dir: tempfile::TempDir,
    running: Running,
    client: kube::Client,
}

async fn server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let running = start(Config {
        name: "rbac".into(),
        state_dir: dir.path().to_path_buf(),
        service_cidr: "10.96.0.0/16".parse().unwrap(),
        node_port_range: 30000..=32767,
        port: 0,
        advertise_address: None,
    })
    .await
    .unwrap();
    let kc = kube::config::Kubeconfig::read_from(&running.kubeconfig).unwrap();
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
    cfg.default_retry = false;
    let client = kube::Client::try_from(cfg).unwrap();
    Server { _dir: dir, running, client }
}

/// Sends a request as the admin; the status code and the body as JSON.
async fn call(c: &kube::Client, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(body.map(|b| serde_json::to_vec(&b).unwrap()).unwrap_or_default())
        .unwrap();
    match c.request_text(req).await {
        Ok(t) => (200, serde_json::from_str(&t).unwrap_or(Value::String(t))),
        Err(kube::Error::Api(s)) => (s.code, json!({"message": s.message, "reason": s.reason})),
        Err(e) => panic!("{method} {path}: {e}"),
    }
}

async fn ok(c: &kube::Client, method: &str, path: &str, body: Value) -> Value {
    let (code, v) = call(c, method, path, Some(body)).await;
    assert_eq!(code, 200, "{method} {path}: {v}");
    v
}

fn sa(ns: &str, name: &str) -> User {
    User {
        name: format!("system:serviceaccount:{ns}:{name}"),
        uid: String::new(),
        groups: vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{ns}"),
            "system:authenticated".into(),
        ],
        extra: Default::default(),
    }
}

fn attrs(method: Method, path: &str) -> Attributes {
    Attributes::of_request(&method, path, &HashMap::new())
}

const RBAC: &str = "/apis/rbac.authorization.k8s.io/v1";

async fn setup(c: &kube::Client) {
    ok(c, "POST", "/api/v1/namespaces", json!({"metadata": {"name": "x"}})).await;
    ok(
        c,
        "POST",
        &format!("{RBAC}/namespaces/x/roles"),
        json!({"metadata": {"name": "pod-reader"}, "rules": [
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
            {"apiGroups": [""], "resources": ["services"], "verbs": ["get"], "resourceNames": ["web"]}]}),
    )
    .await;
    ok(
        c,
        "POST",
        &format!("{RBAC}/namespaces/x/rolebindings"),
        json!({"metadata": {"name": "read"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
               "subjects": [{"kind": "ServiceAccount", "name": "bound", "namespace": "x"}]}),
    )
    .await;
}

#[tokio::test]
async fn the_bootstrap_policy_is_there_and_reconciled_at_start() {
    let s = server().await;
    let (code, v) = call(&s.client, "GET", &format!("{RBAC}/clusterrolebindings/cluster-admin"), None).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        v["subjects"],
        json!([{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:masters"}])
    );
    assert_eq!(v["metadata"]["annotations"]["rbac.authorization.kubernetes.io/autoupdate"], "true");
    for role in
        ["cluster-admin", "admin", "edit", "view", "system:discovery", "system:basic-user", "system:public-info-viewer"]
    {
        let (code, v) = call(&s.client, "GET", &format!("{RBAC}/clusterroles/{role}"), None).await;
        assert_eq!(code, 200, "{role}: {v}");
        assert_eq!(v["metadata"]["labels"]["kubernetes.io/bootstrapping"], "rbac-defaults", "{role}");
    }
    // A user's change to a bootstrap role is kept, and a removed rule comes back when the
    // policy is reconciled again (what every start does).
    let path = format!("{RBAC}/clusterroles/system:basic-user");
    let mut v = call(&s.client, "GET", &path, None).await.1;
    v["rules"] = json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]);
    ok(&s.client, "PUT", &path, v).await;
    weft_apiserver::rbac_bootstrap::ensure(&s.running.api).await.unwrap();
    let v = call(&s.client, "GET", &path, None).await.1;
    let rules = v["rules"].as_array().unwrap();
    assert_eq!(rules[0]["resources"], json!(["configmaps"]), "{v}");
    let has =
        |resource: &str| rules.iter().any(|r| r["resources"] == json!([resource]) && r["verbs"] == json!(["create"]));
    assert!(has("selfsubjectaccessreviews") && has("selfsubjectrulesreviews") && has("selfsubjectreviews"), "{v}");
    // Marked autoupdate "false", it is left alone.
    let mut v = v.clone();
    v["metadata"]["annotations"]["rbac.authorization.kubernetes.io/autoupdate"] = json!("false");
    v["rules"] = json!([]);
    ok(&s.client, "PUT", &path, v).await;
    weft_apiserver::rbac_bootstrap::ensure(&s.running.api).await.unwrap();
    assert_eq!(call(&s.client, "GET", &path, None).await.1["rules"], json!([]));
}

#[tokio::test]
async fn requests_are_decided_on_the_current_bindings_with_kube_apiservers_403() {
    let s = server().await;
    let api: &Api = &s.running.api;
    setup(&s.client).await;
    let bound = sa("x", "bound");
    let unbound = sa("x", "unbound");
    // What the Role grants, in force at once.
    assert!(authz::authorize(api, &bound, &attrs(Method::GET, "/api/v1/namespaces/x/pods")).is_ok());
    assert!(authz::authorize(api, &bound, &attrs(Method::GET, "/api/v1/namespaces/x/pods/p")).is_ok());
    assert!(authz::authorize(api, &bound, &attrs(Method::GET, "/api/v1/namespaces/x/services/web")).is_ok());
    // Discovery, for every authenticated user (the bootstrap system:discovery binding).
    assert!(authz::authorize(api, &unbound, &attrs(Method::GET, "/apis/apps/v1")).is_ok());
    // And nothing else, in kube-apiserver's words.
    let e = authz::authorize(api, &bound, &attrs(Method::GET, "/api/v1/namespaces/x/services/db")).unwrap_err();
    assert_eq!(e.code, 403);
    assert_eq!(
        e.message,
        "services \"db\" is forbidden: User \"system:serviceaccount:x:bound\" cannot get resource \"services\" in API group \"\" in the namespace \"x\""
    );
    assert_eq!(e.to_status()["details"], json!({"name": "db", "kind": "services"}));
    assert_eq!(e.to_status()["reason"], "Forbidden");
    let e = authz::authorize(api, &unbound, &attrs(Method::GET, "/api/v1/namespaces/x/pods")).unwrap_err();
    assert_eq!(
        e.message,
        "pods is forbidden: User \"system:serviceaccount:x:unbound\" cannot list resource \"pods\" in API group \"\" in the namespace \"x\""
    );
    let e = authz::authorize(api, &bound, &attrs(Method::GET, "/api/v1/pods")).unwrap_err();
    assert!(
        e.message.ends_with("cannot list resource \"pods\" in API group \"\" at the cluster scope"),
        "{}",
        e.message
    );
    let e = authz::authorize(api, &bound, &attrs(Method::GET, "/api/v1/namespaces/x/pods/p/log")).unwrap_err();
    assert!(e.message.contains("cannot get resource \"pods/log\""), "{}", e.message);
    let e = authz::authorize(api, &bound, &attrs(Method::GET, "/metrics")).unwrap_err();
    assert_eq!(e.message, "forbidden: User \"system:serviceaccount:x:bound\" cannot get path \"/metrics\"");
    // Binding the other account takes effect for its next request; deleting it, likewise.
    ok(
        &s.client,
        "POST",
        &format!("{RBAC}/namespaces/x/rolebindings"),
        json!({"metadata": {"name": "also"}, "roleRef": {"kind": "Role", "name": "pod-reader"},
               "subjects": [{"kind": "ServiceAccount", "name": "unbound"}]}),
    )
    .await;
    assert!(authz::authorize(api, &unbound, &attrs(Method::GET, "/api/v1/namespaces/x/pods")).is_ok());
    let (code, v) = call(&s.client, "DELETE", &format!("{RBAC}/namespaces/x/rolebindings/also"), None).await;
    assert_eq!(code, 200, "{v}");
    assert!(authz::authorize(api, &unbound, &attrs(Method::GET, "/api/v1/namespaces/x/pods")).is_err());
    // The admin is in system:masters.
    assert!(authz::authorize(api, &auth::User::admin(), &attrs(Method::DELETE, "/api/v1/nodes")).is_ok());
}

#[tokio::test]
async fn access_reviews_answer_for_a_user_and_for_the_asker() {
    let s = server().await;
    setup(&s.client).await;
    let sar = |user: &str, verb: &str, resource: &str| {
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
               "spec": {"user": user, "groups": ["system:authenticated"],
                        "resourceAttributes": {"namespace": "x", "verb": verb, "resource": resource}}})
    };
    let path = "/apis/authorization.k8s.io/v1/subjectaccessreviews";
    let v = ok(&s.client, "POST", path, sar("system:serviceaccount:x:bound", "list", "pods")).await;
    assert_eq!(
        v["status"],
        json!({"allowed": true, "reason": "RBAC: allowed by RoleBinding \"read/x\" of Role \"pod-reader\" to ServiceAccount \"bound/x\""})
    );
    let v = ok(&s.client, "POST", path, sar("system:serviceaccount:x:unbound", "list", "pods")).await;
    assert_eq!(v["status"], json!({"allowed": false}));
    // Invalid reviews, as upstream words them.
    let (code, v) = call(&s.client, "POST", path, Some(json!({"spec": {"user": "u"}}))).await;
    assert_eq!(code, 422, "{v}");
    assert_eq!(
        v["message"],
        "SubjectAccessReview.authorization.k8s.io \"\" is invalid: spec.resourceAttributes: Invalid value: nil: exactly one of nonResourceAttributes or resourceAttributes must be specified"
    );
    // Local: in the URL's namespace.
    let local = "/apis/authorization.k8s.io/v1/namespaces/x/localsubjectaccessreviews";
    let mut body = sar("system:serviceaccount:x:bound", "get", "pods");
    body["kind"] = json!("LocalSubjectAccessReview");
    let v = ok(&s.client, "POST", local, body.clone()).await;
    assert_eq!(v["status"]["allowed"], true, "{v}");
    body["spec"]["resourceAttributes"]["namespace"] = json!("y");
    let (code, v) = call(&s.client, "POST", local, Some(body)).await;
    assert_eq!(code, 422, "{v}");
    // The asker: the admin may do anything, and its rules are cluster-admin's.
    let v = ok(
        &s.client,
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        json!({"spec": {"nonResourceAttributes": {"path": "/metrics", "verb": "get"}}}),
    )
    .await;
    assert_eq!(v["status"]["allowed"], true, "{v}");
    let v = ok(
        &s.client,
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
        json!({"spec": {"namespace": "x"}}),
    )
    .await;
    let rules = v["status"]["resourceRules"].as_array().unwrap();
    assert!(rules.iter().any(|r| r["verbs"] == json!(["*"]) && r["resources"] == json!(["*"])), "{v}");
    let (code, _) =
        call(&s.client, "POST", "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews", Some(json!({"spec": {}})))
            .await;
    assert_eq!(code, 400);
}

/// Writes an RBAC object as `user` (as the request of a user that is not the admin would).
async fn write_as(
    api: &Api,
    user: &User,
    method: &str,
    plural: &str,
    ns: Option<&str>,
    body: Value,
) -> Result<Value, (u16, String)> {
    let kind = weft_api::kinds::by_path("rbac.authorization.k8s.io", "v1", plural).unwrap();
    let name = body.pointer("/metadata/name").and_then(Value::as_str).map(String::from);
    let named = method == "PUT";
    let t = Target { kind, namespace: ns.map(String::from), name: if named { name } else { None }, sub: None };
    let bytes = serde_json::to_vec(&body).unwrap();
    let req = auth::Request { user: user.clone(), user_agent: "test".into() };
    let r = req
        .scope(async {
            if named {
                api.update(&t, &bytes, Default::default()).await
            } else {
                api.create(&t, &bytes, Default::default()).await
            }
        })
        .await;
    r.map_err(|e| (e.code, e.message))
}

#[tokio::test]
async fn users_grant_only_what_they_hold_unless_they_may_escalate_or_bind() {
    let s = server().await;
    let api: &Api = &s.running.api;
    ok(&s.client, "POST", "/api/v1/namespaces", json!({"metadata": {"name": "x"}})).await;
    // `dev` may manage Roles and RoleBindings in x (not `*`: that includes `escalate` and
    // `bind`), and read pods there.
    ok(
        &s.client,
        "POST",
        &format!("{RBAC}/namespaces/x/roles"),
        json!({"metadata": {"name": "dev"}, "rules": [
            {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"],
             "verbs": ["create", "get", "list", "update", "patch", "delete"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]}),
    )
    .await;
    ok(
        &s.client,
        "POST",
        &format!("{RBAC}/namespaces/x/rolebindings"),
        json!({"metadata": {"name": "dev"}, "roleRef": {"kind": "Role", "name": "dev"},
               "subjects": [{"kind": "ServiceAccount", "name": "dev"}]}),
    )
    .await;
    let dev = sa("x", "dev");
    let role = |name: &str, verbs: Value| json!({"metadata": {"name": name}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": verbs}]});
    // What it holds, it may grant.
    write_as(api, &dev, "POST", "roles", Some("x"), role("reader", json!(["get"]))).await.unwrap();
    // Not more.
    let (code, msg) =
        write_as(api, &dev, "POST", "roles", Some("x"), role("deleter", json!(["get", "delete"]))).await.unwrap_err();
    assert_eq!(code, 403);
    assert_eq!(
        msg,
        "roles.rbac.authorization.k8s.io \"deleter\" is forbidden: user \"system:serviceaccount:x:dev\" \
         (groups=[\"system:serviceaccounts\" \"system:serviceaccounts:x\" \"system:authenticated\"]) is attempting to grant RBAC \
         permissions not currently held:\n{APIGroups:[\"\"], Resources:[\"pods\"], Verbs:[\"delete\"]}"
    );
    // Nor in a namespace where it holds nothing.
    ok(&s.client, "POST", "/api/v1/namespaces", json!({"metadata": {"name": "y"}})).await;
    assert_eq!(write_as(api, &dev, "POST", "roles", Some("y"), role("r", json!(["get"]))).await.unwrap_err().0, 403);
    // Binding: a role whose rules it holds, yes; the admin ClusterRole, no.
    let binding = |name: &str, kind: &str, role: &str| {
        json!({"metadata": {"name": name}, "roleRef": {"kind": kind, "name": role},
               "subjects": [{"kind": "ServiceAccount", "name": "other"}]})
    };
    write_as(api, &dev, "POST", "rolebindings", Some("x"), binding("b1", "Role", "reader")).await.unwrap();
    let (code, msg) =
        write_as(api, &dev, "POST", "rolebindings", Some("x"), binding("b2", "ClusterRole", "cluster-admin"))
            .await
            .unwrap_err();
    assert_eq!(code, 403);
    assert!(
        msg.starts_with(
            "rolebindings.rbac.authorization.k8s.io \"b2\" is forbidden: user \"system:serviceaccount:x:dev\""
        ),
        "{msg}"
    );
    let (_, msg) =
        write_as(api, &dev, "POST", "rolebindings", Some("x"), binding("b3", "Role", "missing")).await.unwrap_err();
    assert_eq!(
        msg,
        "rolebindings.rbac.authorization.k8s.io \"b3\" is forbidden: roles.rbac.authorization.k8s.io \"missing\" not found"
    );
    // With `bind` on cluster-admin in x, it may bind it there (and with `escalate` on roles, write any Role).
    ok(
        &s.client,
        "POST",
        &format!("{RBAC}/namespaces/x/roles"),
        json!({"metadata": {"name": "binder"}, "rules": [
            {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "verbs": ["bind"], "resourceNames": ["cluster-admin"]},
            {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"], "verbs": ["escalate"]}]}),
    )
    .await;
    ok(
        &s.client,
        "POST",
        &format!("{RBAC}/namespaces/x/rolebindings"),
        json!({"metadata": {"name": "binder"}, "roleRef": {"kind": "Role", "name": "binder"},
               "subjects": [{"kind": "ServiceAccount", "name": "dev"}]}),
    )
    .await;
    write_as(api, &dev, "POST", "rolebindings", Some("x"), binding("b2", "ClusterRole", "cluster-admin"))
        .await
        .unwrap();
    write_as(api, &dev, "POST", "roles", Some("x"), role("deleter", json!(["get", "delete"]))).await.unwrap();
    // A roleRef never changes, whoever asks.
    let mut b = call(&s.client, "GET", &format!("{RBAC}/namespaces/x/rolebindings/b1"), None).await.1;
    b["roleRef"]["name"] = json!("deleter");
    let (code, v) = call(&s.client, "PUT", &format!("{RBAC}/namespaces/x/rolebindings/b1"), Some(b)).await;
    assert_eq!(code, 422, "{v}");
    assert_eq!(
        v["message"],
        "RoleBinding \"b1\" is invalid: roleRef: Invalid value: rbac.RoleRef{APIGroup:\"rbac.authorization.k8s.io\", Kind:\"Role\", Name:\"deleter\"}: cannot change roleRef"
    );
    // An aggregationRule needs everything.
    let agg = json!({"metadata": {"name": "agg"}, "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"a": "b"}}]}});
    let cr = weft_api::kinds::by_path("rbac.authorization.k8s.io", "v1", "clusterroles").unwrap();
    let t = Target { kind: cr, namespace: None, name: None, sub: None };
    let bytes = serde_json::to_vec(&agg).unwrap();
    let e = auth::Request { user: dev.clone(), user_agent: "t".into() }
        .scope(api.create(&t, &bytes, Default::default()))
        .await
        .unwrap_err();
    assert_eq!(
        e.message,
        "clusterroles.rbac.authorization.k8s.io \"agg\" is forbidden: must have cluster-admin privileges to use the aggregationRule"
    );
}
