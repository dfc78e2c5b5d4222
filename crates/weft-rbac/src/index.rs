//! The RBAC objects, indexed for deciding requests: built once per change of the Roles,
//! ClusterRoles and bindings, then read by every request. A request's bindings are found by its
//! user's name and groups in the cluster scope and its namespace (a few hash lookups), and
//! visited in kube-apiserver's order: ClusterRoleBindings first, then the namespace's
//! RoleBindings (upstream's `DefaultRuleResolver.VisitRulesFor`).

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, Subject};
use serde_json::Value;

use crate::quote::{aggregate, quote};
use crate::rules::{Request, rule_allows};

/// Who a request is from.
#[derive(Clone, Copy, Debug)]
pub struct User<'a> {
    pub name: &'a str,
    pub groups: &'a [String],
}

/// An authorizer's answer: allowed or not (kube-apiserver's RBAC never denies, it has no
/// opinion), and why (`RBAC: allowed by ...`, or the bindings it could not resolve).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: String,
}

/// The username of a ServiceAccount (`system:serviceaccount:<namespace>:<name>`).
pub fn service_account_user(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

struct Binding {
    /// Empty for a ClusterRoleBinding.
    namespace: String,
    name: String,
    role_kind: String,
    role_name: String,
    subjects: Vec<Subject>,
}

impl Binding {
    /// How upstream's describers name the source of a permission.
    fn describe(&self, subject: usize) -> String {
        let s = &self.subjects[subject];
        let who = match s.kind.as_str() {
            "ServiceAccount" => {
                let ns = s.namespace.as_deref().filter(|n| !n.is_empty()).unwrap_or(&self.namespace);
                format!("ServiceAccount {}", quote(&format!("{}/{ns}", s.name)))
            }
            kind => format!("{kind} {}", quote(&s.name)),
        };
        if self.namespace.is_empty() {
            format!(
                "ClusterRoleBinding {} of {} {} to {who}",
                quote(&self.name),
                self.role_kind,
                quote(&self.role_name)
            )
        } else {
            format!(
                "RoleBinding {} of {} {} to {who}",
                quote(&format!("{}/{}", self.name, self.namespace)),
                self.role_kind,
                quote(&self.role_name)
            )
        }
    }
}

/// The bindings of one scope (the cluster, or one namespace) by subject: (binding, subject).
#[derive(Default)]
struct Scope {
    users: HashMap<String, Vec<(u32, u32)>>,
    groups: HashMap<String, Vec<(u32, u32)>>,
}

/// How a role that is not there is reported: the authorizer's caches (listers) name it
/// `role.rbac.authorization.k8s.io`, the storage the escalation checks read `roles.rbac...`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wording {
    Lister,
    Storage,
}

/// A snapshot of the RBAC objects, indexed.
#[derive(Default)]
pub struct Index {
    cluster_roles: HashMap<String, Arc<Vec<PolicyRule>>>,
    /// namespace -> name -> rules
    roles: HashMap<String, HashMap<String, Arc<Vec<PolicyRule>>>>,
    bindings: Vec<Binding>,
    /// "" is the cluster scope.
    scopes: HashMap<String, Scope>,
}

fn decode<T: serde::de::DeserializeOwned>(v: &Value) -> Option<T> {
    serde_json::from_value(v.clone()).ok()
}

impl Index {
    /// Indexes the objects as stored (JSON). Objects that do not decode (the API admits none)
    /// are left out.
    pub fn build<'a>(
        roles: impl IntoIterator<Item = &'a Value>,
        cluster_roles: impl IntoIterator<Item = &'a Value>,
        role_bindings: impl IntoIterator<Item = &'a Value>,
        cluster_role_bindings: impl IntoIterator<Item = &'a Value>,
    ) -> Index {
        let mut ix = Index::default();
        for r in cluster_roles.into_iter().filter_map(decode::<ClusterRole>) {
            ix.cluster_roles.insert(r.metadata.name.unwrap_or_default(), Arc::new(r.rules.unwrap_or_default()));
        }
        for r in roles.into_iter().filter_map(decode::<Role>) {
            ix.roles
                .entry(r.metadata.namespace.unwrap_or_default())
                .or_default()
                .insert(r.metadata.name.unwrap_or_default(), Arc::new(r.rules.unwrap_or_default()));
        }
        let mut all: Vec<Binding> = vec![];
        let mut crbs: Vec<ClusterRoleBinding> = cluster_role_bindings.into_iter().filter_map(decode).collect();
        crbs.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        for b in crbs {
            all.push(Binding {
                namespace: String::new(),
                name: b.metadata.name.unwrap_or_default(),
                role_kind: b.role_ref.kind,
                role_name: b.role_ref.name,
                subjects: b.subjects.unwrap_or_default(),
            });
        }
        let mut rbs: Vec<RoleBinding> = role_bindings.into_iter().filter_map(decode).collect();
        rbs.sort_by(|a, b| (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name)));
        for b in rbs {
            let namespace = b.metadata.namespace.unwrap_or_default();
            if namespace.is_empty() {
                continue;
            }
            all.push(Binding {
                namespace,
                name: b.metadata.name.unwrap_or_default(),
                role_kind: b.role_ref.kind,
                role_name: b.role_ref.name,
                subjects: b.subjects.unwrap_or_default(),
            });
        }
        for (bi, b) in all.iter().enumerate() {
            let scope = ix.scopes.entry(b.namespace.clone()).or_default();
            for (si, s) in b.subjects.iter().enumerate() {
                let at = (bi as u32, si as u32);
                match s.kind.as_str() {
                    "User" => scope.users.entry(s.name.clone()).or_default().push(at),
                    "Group" => scope.groups.entry(s.name.clone()).or_default().push(at),
                    // A ServiceAccount is the user of its name; in a RoleBinding its namespace
                    // defaults to the binding's (upstream's `appliesToUser`).
                    "ServiceAccount" => {
                        let ns = s.namespace.as_deref().filter(|n| !n.is_empty()).unwrap_or(&b.namespace);
                        if !ns.is_empty() {
                            scope.users.entry(service_account_user(ns, &s.name)).or_default().push(at);
                        }
                    }
                    _ => {}
                }
            }
        }
        ix.bindings = all;
        ix
    }

    /// The rules a binding's `roleRef` grants in `namespace` (empty for a ClusterRoleBinding).
    pub fn role_ref_rules(
        &self,
        kind: &str,
        name: &str,
        namespace: &str,
        wording: Wording,
    ) -> Result<Arc<Vec<PolicyRule>>, String> {
        let (found, what) = match kind {
            "ClusterRole" => (self.cluster_roles.get(name), "clusterrole"),
            "Role" => (self.roles.get(namespace).and_then(|r| r.get(name)), "role"),
            other => return Err(format!("unsupported role reference kind: {}", quote(other))),
        };
        found.cloned().ok_or_else(|| {
            let plural = if wording == Wording::Storage { "s" } else { "" };
            format!("{what}{plural}.rbac.authorization.k8s.io {} not found", quote(name))
        })
    }

    /// The bindings that apply to `user` in `namespace` (the cluster's, then the namespace's),
    /// each once, with the first of its subjects that names the user.
    fn applicable(&self, user: &User, namespace: &str) -> Vec<(u32, u32)> {
        let mut found: Vec<(u32, u32)> = vec![];
        let scopes = [Some(""), (!namespace.is_empty()).then_some(namespace)];
        for scope in scopes.into_iter().flatten().filter_map(|s| self.scopes.get(s)) {
            found.extend(scope.users.get(user.name).into_iter().flatten());
            for g in user.groups {
                found.extend(scope.groups.get(g.as_str()).into_iter().flatten());
            }
        }
        found.sort_unstable();
        found.dedup_by_key(|(b, _)| *b);
        found
    }

    /// Calls `visit` with each rule that applies to `user` in `namespace` (and the binding it
    /// comes from), or with the error of a binding whose role is not there, until it returns
    /// false (upstream's `VisitRulesFor`).
    pub fn visit(
        &self,
        user: &User,
        namespace: &str,
        wording: Wording,
        mut visit: impl FnMut(Result<(&PolicyRule, &dyn Fn() -> String), String>) -> bool,
    ) {
        for (bi, si) in self.applicable(user, namespace) {
            let b = &self.bindings[bi as usize];
            match self.role_ref_rules(&b.role_kind, &b.role_name, &b.namespace, wording) {
                Err(e) => {
                    if !visit(Err(e)) {
                        return;
                    }
                }
                Ok(rules) => {
                    let source = || b.describe(si as usize);
                    for r in rules.iter() {
                        if !visit(Ok((r, &source))) {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Decides a request for `user` (upstream's `RBACAuthorizer.Authorize`).
    pub fn authorize(&self, user: &User, req: &Request) -> Decision {
        let mut errors: Vec<String> = vec![];
        let mut allowed_by = None;
        self.visit(user, req.namespace, Wording::Lister, |item| match item {
            Ok((rule, source)) if rule_allows(req, rule) => {
                allowed_by = Some(source());
                false
            }
            Ok(_) => true,
            Err(e) => {
                errors.push(e);
                true
            }
        });
        match allowed_by {
            Some(source) => Decision { allowed: true, reason: format!("RBAC: allowed by {source}") },
            None if errors.is_empty() => Decision { allowed: false, reason: String::new() },
            None => Decision { allowed: false, reason: format!("RBAC: {}", aggregate(&errors)) },
        }
    }

    /// Every rule that applies to `user` in `namespace`, and the errors of bindings whose role
    /// is not there (upstream's `RulesFor`: what `kubectl auth can-i --list` and the escalation
    /// checks read).
    pub fn rules_for(&self, user: &User, namespace: &str, wording: Wording) -> (Vec<PolicyRule>, Vec<String>) {
        let (mut rules, mut errors) = (vec![], vec![]);
        self.visit(user, namespace, wording, |item| {
            match item {
                Ok((r, _)) => rules.push(r.clone()),
                Err(e) => errors.push(e),
            }
            true
        });
        (rules, errors)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn user<'a>(name: &'a str, groups: &'a [String]) -> User<'a> {
        User { name, groups }
    }
    fn groups(g: &[&str]) -> Vec<String> {
        g.iter().map(|s| s.to_string()).collect()
    }
    fn req<'a>(verb: &'a str, resource: &'a str, namespace: &'a str) -> Request<'a> {
        Request { verb, resource_request: true, resource, namespace, ..Default::default() }
    }

    fn fixture() -> Index {
        let roles = [json!({"metadata": {"name": "pod-reader", "namespace": "x"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]})];
        let cluster_roles = [json!({"metadata": {"name": "svc-lister"},
            "rules": [{"apiGroups": [""], "resources": ["services"], "verbs": ["list"]}]})];
        let rbs = [
            json!({"metadata": {"name": "read-pods", "namespace": "x"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
                "subjects": [{"kind": "ServiceAccount", "name": "bound"}, {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "alice"}]}),
            json!({"metadata": {"name": "list-svc", "namespace": "x"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "svc-lister"},
                "subjects": [{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "devs"}]}),
            json!({"metadata": {"name": "dangling", "namespace": "x"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "gone"},
                "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "bob"}]}),
        ];
        let crbs = [json!({"metadata": {"name": "everyone-lists-svc"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "svc-lister"},
            "subjects": [{"kind": "ServiceAccount", "name": "cluster-wide", "namespace": "y"}]})];
        Index::build(&roles, &cluster_roles, &rbs, &crbs)
    }

    #[test]
    fn bindings_grant_their_roles_in_their_scope() {
        let ix = fixture();
        let none: Vec<String> = vec![];
        let sa = service_account_user("x", "bound");
        let d = ix.authorize(&user(&sa, &none), &req("list", "pods", "x"));
        assert_eq!(
            d,
            Decision {
                allowed: true,
                reason:
                    "RBAC: allowed by RoleBinding \"read-pods/x\" of Role \"pod-reader\" to ServiceAccount \"bound/x\""
                        .into()
            }
        );
        // Not in another namespace, nor cluster-wide, nor another verb.
        assert!(!ix.authorize(&user(&sa, &none), &req("list", "pods", "y")).allowed);
        assert!(!ix.authorize(&user(&sa, &none), &req("list", "pods", "")).allowed);
        assert!(!ix.authorize(&user(&sa, &none), &req("delete", "pods", "x")).allowed);
        // The same name in another namespace is another account.
        let other = service_account_user("y", "bound");
        assert!(!ix.authorize(&user(&other, &none), &req("list", "pods", "x")).allowed);
        // Users and groups.
        assert!(ix.authorize(&user("alice", &none), &req("get", "pods", "x")).allowed);
        let devs = groups(&["devs"]);
        let d = ix.authorize(&user("carol", &devs), &req("list", "services", "x"));
        assert_eq!(
            d.reason,
            "RBAC: allowed by RoleBinding \"list-svc/x\" of ClusterRole \"svc-lister\" to Group \"devs\""
        );
        assert!(!ix.authorize(&user("carol", &devs), &req("list", "services", "y")).allowed);
        // A ClusterRoleBinding grants everywhere.
        let cw = service_account_user("y", "cluster-wide");
        for ns in ["", "x", "other"] {
            let d = ix.authorize(&user(&cw, &none), &req("list", "services", ns));
            assert_eq!(
                d.reason,
                "RBAC: allowed by ClusterRoleBinding \"everyone-lists-svc\" of ClusterRole \"svc-lister\" to ServiceAccount \"cluster-wide/y\""
            );
        }
    }

    #[test]
    fn a_binding_to_a_missing_role_is_the_reason_of_a_denial() {
        let ix = fixture();
        let none: Vec<String> = vec![];
        let d = ix.authorize(&user("bob", &none), &req("get", "pods", "x"));
        assert_eq!(
            d,
            Decision { allowed: false, reason: "RBAC: role.rbac.authorization.k8s.io \"gone\" not found".into() }
        );
        let (rules, errors) = ix.rules_for(&user("bob", &none), "x", Wording::Storage);
        assert!(rules.is_empty());
        assert_eq!(errors, ["roles.rbac.authorization.k8s.io \"gone\" not found"]);
        // Nobody else is told about it.
        assert_eq!(ix.authorize(&user("eve", &none), &req("get", "pods", "x")).reason, "");
    }

    #[test]
    fn rules_for_lists_each_binding_once() {
        let ix = fixture();
        let both = groups(&["devs"]);
        let (rules, errors) = ix.rules_for(&user("alice", &both), "x", Wording::Lister);
        assert!(errors.is_empty());
        assert_eq!(rules.len(), 2, "{rules:?}");
    }

    #[test]
    fn odd_and_missing_fields_do_not_break_the_index() {
        let junk = [json!({}), json!({"metadata": 5}), json!({"roleRef": {"kind": "Role"}}), json!(null)];
        let ix = Index::build(&junk, &junk, &junk, &junk);
        let g = groups(&["", "system:authenticated"]);
        assert!(!ix.authorize(&user("", &g), &req("get", "pods", "x")).allowed);
        // A binding with a subject of an unknown kind, or an account without a namespace in a
        // ClusterRoleBinding, names nobody.
        let crbs = [json!({"metadata": {"name": "b"}, "roleRef": {"kind": "ClusterRole", "name": "c"},
            "subjects": [{"kind": "Robot", "name": "r"}, {"kind": "ServiceAccount", "name": "sa"}]})];
        let crs =
            [json!({"metadata": {"name": "c"}, "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]})];
        let ix = Index::build([], &crs, [], &crbs);
        for name in ["r", "sa", "system:serviceaccount::sa"] {
            assert!(!ix.authorize(&user(name, &[]), &req("get", "pods", "x")).allowed, "{name}");
        }
    }

    #[test]
    fn many_bindings_and_rules_stay_indexed() {
        let crs: Vec<Value> = (0..200)
            .map(|i| json!({"metadata": {"name": format!("r{i}")},
                "rules": (0..50).map(|j| json!({"apiGroups": [""], "resources": [format!("k{i}-{j}")], "verbs": ["get"]})).collect::<Vec<_>>()}))
            .collect();
        let rbs: Vec<Value> = (0..5000)
            .map(|i| {
                json!({"metadata": {"name": format!("b{i}"), "namespace": format!("ns{}", i % 100)},
                "roleRef": {"kind": "ClusterRole", "name": format!("r{}", i % 200)},
                "subjects": [{"kind": "User", "name": format!("u{}", i % 300)}]})
            })
            .collect();
        let ix = Index::build([], &crs, &rbs, []);
        // u7 is bound in ns7 (b7: r7) among others.
        assert!(ix.authorize(&user("u7", &[]), &req("get", "k7-49", "ns7")).allowed);
        assert!(!ix.authorize(&user("u7", &[]), &req("get", "k7-49", "ns8")).allowed);
        assert!(!ix.authorize(&user("u7", &[]), &req("get", "k8-0", "ns7")).allowed);
    }
}
