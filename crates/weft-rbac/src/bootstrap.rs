//! kube-apiserver's bootstrap policy (plugin/pkg/auth/authorizer/rbac/bootstrappolicy): the
//! ClusterRoles users are given (cluster-admin, admin, edit, view, the latter three aggregated
//! from the `system:aggregate-to-*` roles that hold their rules) and the ones every client needs
//! (discovery, basic-user, public-info-viewer, service-account-issuer-discovery), with their
//! ClusterRoleBindings; and how they are reconciled at every start (upstream's
//! `reconciliation` package, in its union mode): missing ones are made, ones not marked
//! `rbac.authorization.kubernetes.io/autoupdate: "false"` get the rules, subjects, labels and
//! annotations they lack, and whatever a user added is kept.

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde_json::{Value, json};

use crate::rules::covers;

pub const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";
const BOOTSTRAPPING: &str = "kubernetes.io/bootstrapping";

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
const READ_WRITE: &[&str] = &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

fn urls(verbs: &[&str], urls: &[&str]) -> Value {
    json!({"nonResourceURLs": urls, "verbs": verbs})
}

fn cluster_role(name: &str, extra_labels: &[(&str, &str)], rules: Vec<Value>, aggregate_from: Option<&str>) -> Value {
    let mut labels = serde_json::Map::new();
    labels.insert(BOOTSTRAPPING.into(), json!("rbac-defaults"));
    for (k, v) in extra_labels {
        labels.insert((*k).into(), json!(v));
    }
    let mut v = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": name, "labels": labels, "annotations": {AUTOUPDATE: "true"}},
    });
    match aggregate_from {
        Some(label) => {
            v["aggregationRule"] = json!({"clusterRoleSelectors": [{"matchLabels": {label: "true"}}]});
        }
        None => v["rules"] = json!(rules),
    }
    v
}

fn binding(name: &str, role: &str, groups: &[&str]) -> Value {
    let subjects: Vec<Value> =
        groups.iter().map(|g| json!({"apiGroup": crate::GROUP, "kind": "Group", "name": g})).collect();
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": name, "labels": {BOOTSTRAPPING: "rbac-defaults"}, "annotations": {AUTOUPDATE: "true"}},
        "roleRef": {"apiGroup": crate::GROUP, "kind": "ClusterRole", "name": role},
        "subjects": subjects,
    })
}

const TO_ADMIN: &str = "rbac.authorization.k8s.io/aggregate-to-admin";
const TO_EDIT: &str = "rbac.authorization.k8s.io/aggregate-to-edit";
const TO_VIEW: &str = "rbac.authorization.k8s.io/aggregate-to-view";

/// The bootstrap ClusterRoles, as upstream's `ClusterRoles()` makes them (those of the
/// components weft does not run are left out).
pub fn cluster_roles() -> Vec<Value> {
    vec![
        cluster_role("cluster-admin", &[], vec![rule(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])], None),
        cluster_role(
            "system:discovery",
            &[],
            vec![urls(
                &["get"],
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
            )],
            None,
        ),
        cluster_role(
            "system:basic-user",
            &[],
            vec![
                rule(&["create"], &["authorization.k8s.io"], &["selfsubjectaccessreviews", "selfsubjectrulesreviews"]),
                rule(&["create"], &["authentication.k8s.io"], &["selfsubjectreviews"]),
            ],
            None,
        ),
        cluster_role(
            "system:public-info-viewer",
            &[],
            vec![urls(&["get"], &["/healthz", "/livez", "/readyz", "/version", "/version/"])],
            None,
        ),
        cluster_role(
            "system:service-account-issuer-discovery",
            &[],
            vec![urls(&["get"], &["/.well-known/openid-configuration", "/openid/v1/jwks"])],
            None,
        ),
        cluster_role(
            "system:monitoring",
            &[],
            vec![urls(
                &["get"],
                &["/healthz", "/healthz/*", "/livez", "/livez/*", "/metrics", "/metrics/slis", "/readyz", "/readyz/*"],
            )],
            None,
        ),
        cluster_role(
            "system:auth-delegator",
            &[],
            vec![
                rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                rule(&["create"], &["authorization.k8s.io"], &["subjectaccessreviews"]),
            ],
            None,
        ),
        cluster_role("admin", &[], vec![], Some(TO_ADMIN)),
        cluster_role("edit", &[(TO_ADMIN, "true")], vec![], Some(TO_EDIT)),
        cluster_role("view", &[(TO_EDIT, "true")], vec![], Some(TO_VIEW)),
        cluster_role(
            "system:aggregate-to-admin",
            &[(TO_ADMIN, "true")],
            vec![
                rule(&["create"], &["authorization.k8s.io"], &["localsubjectaccessreviews"]),
                rule(READ_WRITE, &["rbac.authorization.k8s.io"], &["rolebindings", "roles"]),
            ],
            None,
        ),
        cluster_role(
            "system:aggregate-to-edit",
            &[(TO_EDIT, "true")],
            vec![
                rule(
                    READ,
                    &[""],
                    &["pods/attach", "pods/exec", "pods/portforward", "pods/proxy", "secrets", "services/proxy"],
                ),
                rule(&["impersonate"], &[""], &["serviceaccounts"]),
                rule(WRITE, &[""], &["pods", "pods/attach", "pods/exec", "pods/portforward", "pods/proxy"]),
                rule(&["create"], &[""], &["pods/eviction"]),
                rule(
                    WRITE,
                    &[""],
                    &[
                        "configmaps",
                        "events",
                        "persistentvolumeclaims",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "secrets",
                        "serviceaccounts",
                        "services",
                        "services/proxy",
                    ],
                ),
                rule(&["create"], &[""], &["serviceaccounts/token"]),
                rule(
                    WRITE,
                    &["apps"],
                    &[
                        "daemonsets",
                        "deployments",
                        "deployments/rollback",
                        "deployments/scale",
                        "replicasets",
                        "replicasets/scale",
                        "statefulsets",
                        "statefulsets/scale",
                    ],
                ),
                rule(WRITE, &["autoscaling"], &["horizontalpodautoscalers"]),
                rule(WRITE, &["batch"], &["cronjobs", "jobs"]),
                rule(
                    WRITE,
                    &["extensions"],
                    &[
                        "daemonsets",
                        "deployments",
                        "deployments/rollback",
                        "deployments/scale",
                        "ingresses",
                        "networkpolicies",
                        "replicasets",
                        "replicasets/scale",
                        "replicationcontrollers/scale",
                    ],
                ),
                rule(WRITE, &["policy"], &["poddisruptionbudgets"]),
                rule(WRITE, &["networking.k8s.io"], &["ingresses", "networkpolicies"]),
                rule(READ_WRITE, &["coordination.k8s.io"], &["leases"]),
            ],
            None,
        ),
        cluster_role(
            "system:aggregate-to-view",
            &[(TO_VIEW, "true")],
            vec![
                rule(
                    READ,
                    &[""],
                    &[
                        "configmaps",
                        "endpoints",
                        "persistentvolumeclaims",
                        "persistentvolumeclaims/status",
                        "pods",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "serviceaccounts",
                        "services",
                        "services/status",
                    ],
                ),
                rule(
                    READ,
                    &[""],
                    &[
                        "bindings",
                        "events",
                        "limitranges",
                        "namespaces/status",
                        "pods/log",
                        "pods/status",
                        "replicationcontrollers/status",
                        "resourcequotas",
                        "resourcequotas/status",
                    ],
                ),
                rule(READ, &[""], &["namespaces"]),
                rule(READ, &["discovery.k8s.io"], &["endpointslices"]),
                rule(
                    READ,
                    &["apps"],
                    &[
                        "controllerrevisions",
                        "daemonsets",
                        "daemonsets/status",
                        "deployments",
                        "deployments/scale",
                        "deployments/status",
                        "replicasets",
                        "replicasets/scale",
                        "replicasets/status",
                        "statefulsets",
                        "statefulsets/scale",
                        "statefulsets/status",
                    ],
                ),
                rule(READ, &["autoscaling"], &["horizontalpodautoscalers", "horizontalpodautoscalers/status"]),
                rule(READ, &["batch"], &["cronjobs", "cronjobs/status", "jobs", "jobs/status"]),
                rule(
                    READ,
                    &["extensions"],
                    &[
                        "daemonsets",
                        "daemonsets/status",
                        "deployments",
                        "deployments/scale",
                        "deployments/status",
                        "ingresses",
                        "ingresses/status",
                        "networkpolicies",
                        "replicasets",
                        "replicasets/scale",
                        "replicasets/status",
                        "replicationcontrollers/scale",
                    ],
                ),
                rule(READ, &["policy"], &["poddisruptionbudgets", "poddisruptionbudgets/status"]),
                rule(READ, &["networking.k8s.io"], &["ingresses", "ingresses/status", "networkpolicies"]),
            ],
            None,
        ),
    ]
}

/// The bootstrap ClusterRoleBindings, as upstream's `ClusterRoleBindings()` makes them.
pub fn cluster_role_bindings() -> Vec<Value> {
    vec![
        binding("cluster-admin", "cluster-admin", &[crate::SYSTEM_MASTERS]),
        binding("system:monitoring", "system:monitoring", &["system:monitoring"]),
        binding("system:discovery", "system:discovery", &["system:authenticated"]),
        binding("system:basic-user", "system:basic-user", &["system:authenticated"]),
        binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            &["system:authenticated", "system:unauthenticated"],
        ),
        binding(
            "system:service-account-issuer-discovery",
            "system:service-account-issuer-discovery",
            &["system:serviceaccounts"],
        ),
    ]
}

/// What reconciling one bootstrap object asks of the store.
#[derive(Debug, PartialEq)]
pub enum Reconcile {
    /// As it should be (or protected by `autoupdate: "false"`).
    Keep,
    Create(Value),
    /// The existing object with what it lacked added (its resourceVersion kept).
    Update(Value),
    /// A binding whose roleRef changed: deleted and made again (a roleRef cannot change).
    Recreate(Value),
}

fn protected(existing: &Value) -> bool {
    existing.pointer("/metadata/annotations").and_then(|a| a.get(AUTOUPDATE)).and_then(Value::as_str) == Some("false")
}

/// `existing` labels and annotations with `expected`'s added where missing (upstream's
/// `merge(expected, existing)`: the existing values win).
fn merge_meta(out: &mut Value, expected: &Value) -> bool {
    let mut changed = false;
    for field in ["labels", "annotations"] {
        let Some(want) = expected.pointer(&format!("/metadata/{field}")).and_then(Value::as_object) else { continue };
        let Some(md) = out.get_mut("metadata").and_then(Value::as_object_mut) else { continue };
        let have = md.entry(field).or_insert_with(|| json!({}));
        if !have.is_object() {
            *have = json!({});
        }
        let Some(have) = have.as_object_mut() else { continue };
        for (k, v) in want {
            if !have.contains_key(k) {
                have.insert(k.clone(), v.clone());
                changed = true;
            }
        }
    }
    changed
}

/// How a bootstrap ClusterRole is brought about, given the one stored under its name.
pub fn reconcile_cluster_role(existing: Option<&Value>, expected: &Value) -> Reconcile {
    let Some(existing) = existing else { return Reconcile::Create(expected.clone()) };
    if protected(existing) {
        return Reconcile::Keep;
    }
    let (Ok(have), Ok(want)) = (
        serde_json::from_value::<ClusterRole>(existing.clone()),
        serde_json::from_value::<ClusterRole>(expected.clone()),
    ) else {
        return Reconcile::Keep;
    };
    let mut out = existing.clone();
    let mut changed = merge_meta(&mut out, expected);
    let (_, missing) = covers(have.rules.as_deref().unwrap_or_default(), want.rules.as_deref().unwrap_or_default());
    if !missing.is_empty() {
        let mut rules = have.rules.clone().unwrap_or_default();
        rules.extend(missing);
        out["rules"] = serde_json::to_value(rules).unwrap_or(Value::Null);
        changed = true;
    }
    match (&want.aggregation_rule, &have.aggregation_rule) {
        (None, Some(_)) => {
            if let Some(o) = out.as_object_mut() {
                o.remove("aggregationRule");
            }
            changed = true;
        }
        (Some(w), h) => {
            let have_sel = h.as_ref().and_then(|h| h.cluster_role_selectors.clone()).unwrap_or_default();
            let missing: Vec<_> = w
                .cluster_role_selectors
                .iter()
                .flatten()
                .filter(|s| !have_sel.iter().any(|h| same_selector(h, s)))
                .cloned()
                .collect();
            if !missing.is_empty() {
                let mut all = have_sel;
                all.extend(missing);
                out["aggregationRule"] = json!({"clusterRoleSelectors": all});
                changed = true;
            }
        }
        (None, None) => {}
    }
    if changed { Reconcile::Update(out) } else { Reconcile::Keep }
}

/// Label selectors equal as Go's semantic equality has them (nil and empty the same).
fn same_selector(
    a: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    b: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
) -> bool {
    a.match_labels.clone().unwrap_or_default() == b.match_labels.clone().unwrap_or_default()
        && a.match_expressions.clone().unwrap_or_default() == b.match_expressions.clone().unwrap_or_default()
}

/// How a bootstrap ClusterRoleBinding is brought about, given the one stored under its name.
pub fn reconcile_cluster_role_binding(existing: Option<&Value>, expected: &Value) -> Reconcile {
    let Some(existing) = existing else { return Reconcile::Create(expected.clone()) };
    if protected(existing) {
        return Reconcile::Keep;
    }
    let (Ok(have), Ok(want)) = (
        serde_json::from_value::<ClusterRoleBinding>(existing.clone()),
        serde_json::from_value::<ClusterRoleBinding>(expected.clone()),
    ) else {
        return Reconcile::Keep;
    };
    if have.role_ref != want.role_ref {
        return Reconcile::Recreate(expected.clone());
    }
    let mut out = existing.clone();
    let mut changed = merge_meta(&mut out, expected);
    let have_subjects = have.subjects.clone().unwrap_or_default();
    let missing: Vec<_> = want.subjects.iter().flatten().filter(|s| !have_subjects.contains(s)).cloned().collect();
    if !missing.is_empty() {
        let mut all = have_subjects;
        all.extend(missing);
        out["subjects"] = serde_json::to_value(all).unwrap_or(Value::Null);
        changed = true;
    }
    if changed { Reconcile::Update(out) } else { Reconcile::Keep }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{Index, User};
    use crate::rules::Request;

    fn can(ix: &Index, groups: &[&str], verb: &str, group: &str, resource: &str, sub: &str) -> bool {
        let g: Vec<String> = groups.iter().map(|s| s.to_string()).collect();
        let u = User { name: "someone", groups: &g };
        ix.authorize(
            &u,
            &Request {
                verb,
                resource_request: true,
                api_group: group,
                resource,
                subresource: sub,
                namespace: "ns",
                ..Default::default()
            },
        )
        .allowed
    }

    fn can_get_path(ix: &Index, groups: &[&str], path: &str) -> bool {
        let g: Vec<String> = groups.iter().map(|s| s.to_string()).collect();
        ix.authorize(&User { name: "someone", groups: &g }, &Request { verb: "get", path, ..Default::default() })
            .allowed
    }

    /// Each bootstrap role's key permissions, as the Kubernetes documentation describes them
    /// ("User-facing roles" and "API discovery roles"), through bindings of the test's own.
    #[test]
    fn user_facing_roles_grant_what_the_documentation_says() {
        let crs: Vec<Value> = ["admin", "edit", "view"]
            .iter()
            .map(|r| json!({"metadata": {"name": format!("as-{r}"), "namespace": "ns"},
                "roleRef": {"kind": "ClusterRole", "name": r}, "subjects": [{"kind": "Group", "name": format!("g-{r}")}]}))
            .collect();
        // The bootstrap objects as the API holds them once the aggregation controller ran,
        // with the test's RoleBindings next to them.
        let roles: Vec<Value> = aggregated_roles().iter().map(|r| serde_json::to_value(&**r).unwrap()).collect();
        let ix = Index::build([], &roles, &crs, &cluster_role_bindings());
        // view: reads workloads, not Secrets, not RBAC; writes nothing.
        assert!(can(&ix, &["g-view"], "list", "", "pods", ""));
        assert!(can(&ix, &["g-view"], "get", "", "pods", "log"));
        assert!(can(&ix, &["g-view"], "watch", "apps", "deployments", ""));
        assert!(can(&ix, &["g-view"], "list", "discovery.k8s.io", "endpointslices", ""));
        assert!(!can(&ix, &["g-view"], "get", "", "secrets", ""));
        assert!(!can(&ix, &["g-view"], "list", "rbac.authorization.k8s.io", "roles", ""));
        assert!(!can(&ix, &["g-view"], "create", "", "pods", ""));
        assert!(!can(&ix, &["g-view"], "create", "", "pods", "exec"));
        // edit: view plus writes, Secrets and exec; no RBAC.
        assert!(can(&ix, &["g-edit"], "list", "", "pods", ""));
        assert!(can(&ix, &["g-edit"], "get", "", "secrets", ""));
        assert!(can(&ix, &["g-edit"], "create", "apps", "deployments", ""));
        assert!(can(&ix, &["g-edit"], "patch", "apps", "deployments", "scale"));
        assert!(can(&ix, &["g-edit"], "create", "", "pods", "exec"));
        assert!(can(&ix, &["g-edit"], "impersonate", "", "serviceaccounts", ""));
        assert!(!can(&ix, &["g-edit"], "create", "rbac.authorization.k8s.io", "rolebindings", ""));
        assert!(!can(&ix, &["g-edit"], "get", "", "namespaces", "finalize"));
        // admin: edit plus Roles and RoleBindings in the namespace; not the namespace itself.
        assert!(can(&ix, &["g-admin"], "create", "rbac.authorization.k8s.io", "rolebindings", ""));
        assert!(can(&ix, &["g-admin"], "delete", "rbac.authorization.k8s.io", "roles", ""));
        assert!(can(&ix, &["g-admin"], "create", "authorization.k8s.io", "localsubjectaccessreviews", ""));
        assert!(can(&ix, &["g-admin"], "delete", "", "pods", ""));
        assert!(!can(&ix, &["g-admin"], "delete", "", "namespaces", ""));
        assert!(!can(&ix, &["g-admin"], "create", "rbac.authorization.k8s.io", "clusterroles", ""));
        // cluster-admin: everything, paths too.
        assert!(can(&ix, &["system:masters"], "escalate", "rbac.authorization.k8s.io", "clusterroles", ""));
        assert!(can_get_path(&ix, &["system:masters"], "/metrics"));
        // Every authenticated user: discovery and its own reviews; nothing else.
        let auth = ["system:authenticated"];
        assert!(can_get_path(&ix, &auth, "/api"));
        assert!(can_get_path(&ix, &auth, "/apis/apps/v1"));
        assert!(can_get_path(&ix, &auth, "/version"));
        assert!(can_get_path(&ix, &auth, "/openapi/v3/apis/apps/v1"));
        assert!(!can_get_path(&ix, &auth, "/metrics"));
        assert!(can(&ix, &auth, "create", "authorization.k8s.io", "selfsubjectaccessreviews", ""));
        assert!(can(&ix, &auth, "create", "authorization.k8s.io", "selfsubjectrulesreviews", ""));
        assert!(can(&ix, &auth, "create", "authentication.k8s.io", "selfsubjectreviews", ""));
        assert!(!can(&ix, &auth, "create", "authorization.k8s.io", "subjectaccessreviews", ""));
        assert!(!can(&ix, &auth, "list", "", "pods", ""));
        // The unauthenticated: health and version only.
        let anon = ["system:unauthenticated"];
        assert!(can_get_path(&ix, &anon, "/healthz"));
        assert!(can_get_path(&ix, &anon, "/version/"));
        assert!(!can_get_path(&ix, &anon, "/api"));
        // Service accounts: the issuer's discovery documents.
        assert!(can_get_path(&ix, &["system:serviceaccounts"], "/openid/v1/jwks"));
    }

    /// admin <- edit <- view aggregated to a fixed point, as the controller leaves them.
    fn aggregated_roles() -> Vec<std::sync::Arc<ClusterRole>> {
        let mut roles: Vec<std::sync::Arc<ClusterRole>> =
            cluster_roles().into_iter().map(|v| std::sync::Arc::new(serde_json::from_value(v).unwrap())).collect();
        for _ in 0..3 {
            let snapshot = roles.clone();
            for r in roles.iter_mut() {
                if let Some(rules) = crate::aggregate::aggregated_rules(r, &snapshot) {
                    let mut x = (**r).clone();
                    x.rules = Some(rules);
                    *r = std::sync::Arc::new(x);
                }
            }
        }
        roles
    }

    #[test]
    fn the_bootstrap_objects_carry_upstreams_labels_and_annotation() {
        for v in cluster_roles().iter().chain(cluster_role_bindings().iter()) {
            assert_eq!(
                v.pointer("/metadata/labels/kubernetes.io~1bootstrapping"),
                Some(&json!("rbac-defaults")),
                "{v}"
            );
            assert_eq!(
                v.pointer("/metadata/annotations/rbac.authorization.kubernetes.io~1autoupdate"),
                Some(&json!("true")),
                "{v}"
            );
        }
        let crb = cluster_role_bindings();
        let admin = crb.iter().find(|b| b["metadata"]["name"] == "cluster-admin").unwrap();
        assert_eq!(
            admin["subjects"],
            json!([{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:masters"}])
        );
        let pub_info = crb.iter().find(|b| b["metadata"]["name"] == "system:public-info-viewer").unwrap();
        assert_eq!(pub_info["subjects"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn reconciling_adds_what_is_missing_and_keeps_what_users_changed() {
        let expected = cluster_roles().into_iter().find(|r| r["metadata"]["name"] == "system:basic-user").unwrap();
        assert_eq!(reconcile_cluster_role(None, &expected), Reconcile::Create(expected.clone()));
        assert_eq!(reconcile_cluster_role(Some(&expected), &expected), Reconcile::Keep);
        // A user's extra rule and label stay; a removed rule and label come back.
        let mut changed = expected.clone();
        changed["rules"] = json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
            {"apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"], "verbs": ["create"]}]);
        changed["metadata"]["labels"] = json!({"mine": "yes"});
        let Reconcile::Update(out) = reconcile_cluster_role(Some(&changed), &expected) else { panic!() };
        assert_eq!(out["metadata"]["labels"], json!({"mine": "yes", "kubernetes.io/bootstrapping": "rbac-defaults"}));
        let rules = out["rules"].as_array().unwrap();
        // Added as upstream adds them: each missing permission on its own.
        assert_eq!(rules.len(), 4, "{out}");
        assert_eq!(rules[0]["resources"], json!(["pods"]));
        // Reconciling again changes nothing.
        assert_eq!(reconcile_cluster_role(Some(&out), &expected), Reconcile::Keep);
        // autoupdate "false" protects it.
        let mut protected = changed.clone();
        protected["metadata"]["annotations"] = json!({AUTOUPDATE: "false"});
        assert_eq!(reconcile_cluster_role(Some(&protected), &expected), Reconcile::Keep);
        // An aggregated role keeps its aggregated rules and gets its selector back.
        let admin = cluster_roles().into_iter().find(|r| r["metadata"]["name"] == "admin").unwrap();
        let mut agg = admin.clone();
        agg["rules"] = json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]}]);
        agg["aggregationRule"] = json!({"clusterRoleSelectors": [{"matchLabels": {"mine": "true"}}]});
        let Reconcile::Update(out) = reconcile_cluster_role(Some(&agg), &admin) else { panic!() };
        assert_eq!(out["rules"], agg["rules"]);
        assert_eq!(out["aggregationRule"]["clusterRoleSelectors"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn reconciling_a_binding_adds_subjects_and_remakes_a_changed_role_ref() {
        let expected =
            cluster_role_bindings().into_iter().find(|b| b["metadata"]["name"] == "system:public-info-viewer").unwrap();
        assert_eq!(reconcile_cluster_role_binding(Some(&expected), &expected), Reconcile::Keep);
        let mut fewer = expected.clone();
        fewer["subjects"] = json!([{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "me"}]);
        let Reconcile::Update(out) = reconcile_cluster_role_binding(Some(&fewer), &expected) else { panic!() };
        assert_eq!(out["subjects"].as_array().unwrap().len(), 3);
        let mut other_role = expected.clone();
        other_role["roleRef"]["name"] = json!("view");
        assert_eq!(reconcile_cluster_role_binding(Some(&other_role), &expected), Reconcile::Recreate(expected.clone()));
        other_role["metadata"]["annotations"] = json!({AUTOUPDATE: "false"});
        assert_eq!(reconcile_cluster_role_binding(Some(&other_role), &expected), Reconcile::Keep);
    }
}
