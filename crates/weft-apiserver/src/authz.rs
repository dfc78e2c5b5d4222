//! What a user may do (authorization): each request becomes kube-apiserver's authorizer
//! attributes (verb, API group, resource, subresource, namespace, name, or a non-resource path,
//! as its `RequestInfoFactory` reads them), and is decided for its user by RBAC
//! (`weft_rbac`) over a snapshot of the Roles, ClusterRoles and bindings that is rebuilt only
//! when one of them changed. `system:masters` may do everything (upstream's superuser group).

use std::sync::{Arc, RwLock};

use http::Method;
use serde_json::json;
use weft_rbac::{Decision, Index};
use weft_store::Store;

use crate::auth::User;
use crate::rest::{Api, Query};
use crate::status::ApiError;

/// A request as kube-apiserver's authorizers see it (`authorizer.Attributes`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attributes {
    /// get, list, watch, create, update, patch, delete, deletecollection; for a non-resource
    /// request the lowercased HTTP method.
    pub verb: String,
    pub resource_request: bool,
    pub api_group: String,
    pub api_version: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    /// The request's path (non-resource requests are decided on it).
    pub path: String,
}

/// `namespaces/{name}/{this}` is the Namespace's own subresource, not a resource in it.
const NAMESPACE_SUBRESOURCES: &[&str] = &["status", "finalize"];

/// A path segment a name may be (upstream's `IsValidPathSegmentName`).
fn valid_segment(s: &str) -> bool {
    s != "." && s != ".." && !s.contains('/') && !s.contains('%')
}

/// The name a list or watch is narrowed to by `fieldSelector=metadata.name=<name>` (what
/// `kubectl get pod x -w` sends), so that a rule with resourceNames can allow it.
fn selected_name(q: &Query) -> Option<String> {
    let fs = q.get("fieldSelector")?;
    fs.split(',').find_map(|term| {
        let (k, v) = term.split_once("==").or_else(|| term.split_once('=').filter(|(k, _)| !k.ends_with('!')))?;
        (k.trim() == "metadata.name" && valid_segment(v.trim())).then(|| v.trim().to_string())
    })
}

impl Attributes {
    /// The attributes of a request for `path` with `method`, as kube-apiserver's
    /// `RequestInfoFactory.NewRequestInfo` makes them.
    pub fn of_request(method: &Method, path: &str, q: &Query) -> Attributes {
        let non_resource = Attributes {
            verb: method.as_str().to_ascii_lowercase(),
            resource_request: false,
            path: path.to_string(),
            ..Default::default()
        };
        let segs: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
        // `/api/{version}/...` and `/apis/{group}/{version}/...`, with at least a resource.
        let (group, version, mut rest) = match segs.as_slice() {
            ["api", v, rest @ ..] if !rest.is_empty() => ("", *v, rest),
            ["apis", g, v, rest @ ..] if !rest.is_empty() => (*g, *v, rest),
            _ => return non_resource,
        };
        let mut verb = match *method {
            Method::POST => "create",
            Method::GET | Method::HEAD => "get",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE => "delete",
            _ => "",
        }
        .to_string();
        // `/watch/...` and `/proxy/...` put the verb in the path.
        if let [special @ ("watch" | "proxy"), more @ ..] = rest
            && !more.is_empty()
        {
            verb = special.to_string();
            rest = more;
        }
        let mut namespace = "";
        if let ["namespaces", ns, more @ ..] = rest {
            namespace = ns;
            if let [r, ..] = more
                && !NAMESPACE_SUBRESOURCES.contains(r)
            {
                rest = more;
            }
        }
        let mut a = Attributes {
            resource_request: true,
            api_group: group.to_string(),
            api_version: version.to_string(),
            namespace: namespace.to_string(),
            path: path.to_string(),
            ..Default::default()
        };
        if let Some(r) = rest.first() {
            a.resource = r.to_string();
        }
        if let Some(n) = rest.get(1) {
            a.name = n.to_string();
        }
        if let Some(s) = rest.get(2)
            && verb != "proxy"
        {
            a.subresource = s.to_string();
        }
        // A get without a name is a list or a watch (`watch` is true unless "0" or "false").
        if a.name.is_empty() && verb == "get" {
            let watch = is_watch(q);
            verb = if watch { "watch" } else { "list" }.to_string();
            if let Some(n) = selected_name(q) {
                a.name = n;
            }
        }
        if a.name.is_empty() && verb == "delete" {
            verb = "deletecollection".to_string();
        }
        a.verb = verb;
        a
    }

    /// The attributes as RBAC reads them.
    pub fn request(&self) -> weft_rbac::Request<'_> {
        weft_rbac::Request {
            verb: &self.verb,
            resource_request: self.resource_request,
            api_group: &self.api_group,
            resource: &self.resource,
            subresource: &self.subresource,
            namespace: &self.namespace,
            name: &self.name,
            path: &self.path,
        }
    }
}

/// The store resources RBAC is decided on.
const RBAC_RESOURCES: [&str; 4] = [
    "roles.rbac.authorization.k8s.io",
    "clusterroles.rbac.authorization.k8s.io",
    "rolebindings.rbac.authorization.k8s.io",
    "clusterrolebindings.rbac.authorization.k8s.io",
];

/// The RBAC snapshot of one API server: the index and the store revision it is current at.
#[derive(Default)]
pub struct Rbac {
    cache: RwLock<Option<(u64, Arc<Index>)>>,
}

impl Rbac {
    /// The index of the RBAC objects as the store holds them now. Cheap when nothing changed
    /// since the last request (a revision compare); otherwise the writes since then are looked
    /// through, and the index is rebuilt only if one of them was to an RBAC object. Every
    /// acknowledged write is seen by the next request: a RoleBinding made is in force at once.
    pub fn index(&self, store: &Store) -> Arc<Index> {
        let now = store.revision();
        if let Ok(c) = self.cache.read()
            && let Some((rev, ix)) = c.as_ref()
            && *rev == now
        {
            return ix.clone();
        }
        let mut c = self.cache.write().unwrap_or_else(|p| p.into_inner());
        match c.as_ref() {
            Some((rev, ix)) if *rev == now => return ix.clone(),
            Some((rev, ix)) => {
                if let Some((false, now)) = store.wrote_since(*rev, |r| RBAC_RESOURCES.contains(&r)) {
                    let ix = ix.clone();
                    *c = Some((now, ix.clone()));
                    return ix;
                }
                // A write to an RBAC object, or the history is gone: rebuilt below.
            }
            None => {}
        }
        // The revision first: anything written while the lists are read is looked at again.
        let rev = store.revision();
        let lists: Vec<Vec<Arc<serde_json::Value>>> = RBAC_RESOURCES.iter().map(|r| store.list(r, None).0).collect();
        let ix = Arc::new(Index::build(
            lists[0].iter().map(|v| &**v),
            lists[1].iter().map(|v| &**v),
            lists[2].iter().map(|v| &**v),
            lists[3].iter().map(|v| &**v),
        ));
        *c = Some((rev, ix.clone()));
        ix
    }
}

fn is_master(user: &User) -> bool {
    user.groups.iter().any(|g| g == weft_rbac::SYSTEM_MASTERS)
}

/// The decision for `user` (what a SubjectAccessReview answers): `system:masters` first, with
/// no reason (upstream's privileged-group authorizer), then RBAC.
pub fn decide(api: &Api, user: &User, a: &Attributes) -> Decision {
    if is_master(user) {
        return Decision { allowed: true, reason: String::new() };
    }
    let u = weft_rbac::User { name: &user.name, groups: &user.groups };
    api.rbac.index(&api.store).authorize(&u, &a.request())
}

/// Decides a request: `Ok` if `user` may do it, else kube-apiserver's 403.
pub fn authorize(api: &Api, user: &User, a: &Attributes) -> Result<(), ApiError> {
    let d = decide(api, user, a);
    if d.allowed { Ok(()) } else { Err(forbidden(user, a, &d.reason)) }
}

/// kube-apiserver's 403 for a request RBAC does not allow (`responsewriters.Forbidden`):
/// `pods is forbidden: User "x" cannot list resource "pods" in API group "" in the namespace
/// "default"`, `services "web" is forbidden: ...`, `forbidden: User "x" cannot get path "/metrics"`.
pub fn forbidden(user: &User, a: &Attributes, reason: &str) -> ApiError {
    use weft_rbac::quote::quote;
    let what = if !a.resource_request {
        format!("User {} cannot {} path {}", quote(&user.name), a.verb, quote(&a.path))
    } else {
        let resource =
            if a.subresource.is_empty() { a.resource.clone() } else { format!("{}/{}", a.resource, a.subresource) };
        let scope = if a.namespace.is_empty() {
            "at the cluster scope".to_string()
        } else {
            format!("in the namespace {}", quote(&a.namespace))
        };
        format!(
            "User {} cannot {} resource {} in API group {} {scope}",
            quote(&user.name),
            a.verb,
            quote(&resource),
            quote(&a.api_group)
        )
    };
    // As upstream sanitizes it before it is written into the message.
    let what = what.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    let err = if reason.is_empty() { what } else { format!("{what}: {reason}") };
    forbidden_status(&a.api_group, &a.resource, &a.name, err)
}

/// `apierrors.NewForbidden(group/resource, name, err)`.
pub fn forbidden_status(group: &str, resource: &str, name: &str, err: String) -> ApiError {
    let qualified = if group.is_empty() { resource.to_string() } else { format!("{resource}.{group}") };
    let message = match (qualified.is_empty(), name.is_empty()) {
        (true, _) => format!("forbidden: {err}"),
        (false, true) => format!("{qualified} is forbidden: {err}"),
        (false, false) => format!("{qualified} {} is forbidden: {err}", weft_rbac::quote::quote(name)),
    };
    let mut details = serde_json::Map::new();
    for (k, v) in [("name", name), ("group", group), ("kind", resource)] {
        if !v.is_empty() {
            details.insert(k.into(), json!(v));
        }
    }
    let mut e = ApiError::new(403, "Forbidden", message);
    e.details = Some(serde_json::Value::Object(details));
    e
}

/// Whether a list is a watch: kube-apiserver reads the `watch` parameter as Go's conversion
/// does, anything but `0` or `false` (any case) is true.
pub fn is_watch(q: &Query) -> bool {
    q.get("watch").is_some_and(|w| w != "0" && !w.eq_ignore_ascii_case("false"))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn attrs(method: Method, path: &str, q: &[(&str, &str)]) -> Attributes {
        let q: Query = q.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<HashMap<_, _>>();
        Attributes::of_request(&method, path, &q)
    }

    fn short(a: &Attributes) -> (String, bool, String, String, String, String, String) {
        (
            a.verb.clone(),
            a.resource_request,
            a.api_group.clone(),
            a.resource.clone(),
            a.subresource.clone(),
            a.namespace.clone(),
            a.name.clone(),
        )
    }

    fn s(v: &str) -> String {
        v.to_string()
    }

    /// The cases of upstream's `TestGetAPIRequestInfo`, as far as weft serves them.
    #[test]
    fn request_info_as_kube_apiserver_reads_it() {
        for (method, path, q, want) in [
            (Method::GET, "/api/v1/namespaces", vec![], ("list", "", "namespaces", "", "", "")),
            (Method::GET, "/api/v1/namespaces/other", vec![], ("get", "", "namespaces", "", "other", "other")),
            (Method::GET, "/api/v1/namespaces/other/pods", vec![], ("list", "", "pods", "", "other", "")),
            (Method::GET, "/api/v1/namespaces/other/pods/foo", vec![], ("get", "", "pods", "", "other", "foo")),
            (Method::HEAD, "/api/v1/namespaces/other/pods/foo", vec![], ("get", "", "pods", "", "other", "foo")),
            (Method::GET, "/api/v1/pods", vec![], ("list", "", "pods", "", "", "")),
            (Method::GET, "/api/v1/namespaces/other/pods/foo/log", vec![], ("get", "", "pods", "log", "other", "foo")),
            (
                Method::POST,
                "/api/v1/namespaces/other/pods/foo/exec",
                vec![],
                ("create", "", "pods", "exec", "other", "foo"),
            ),
            (Method::GET, "/api/v1/watch/pods", vec![], ("watch", "", "pods", "", "", "")),
            (Method::GET, "/api/v1/pods", vec![("watch", "true")], ("watch", "", "pods", "", "", "")),
            (Method::GET, "/api/v1/pods", vec![("watch", "false")], ("list", "", "pods", "", "", "")),
            (Method::GET, "/api/v1/pods", vec![("watch", "yes")], ("watch", "", "pods", "", "", "")),
            // A get by name is a get even with watch (only collections are watched).
            (Method::GET, "/api/v1/namespaces/x/pods/p", vec![("watch", "1")], ("get", "", "pods", "", "x", "p")),
            (Method::GET, "/api/v1/watch/namespaces/other/pods", vec![], ("watch", "", "pods", "", "other", "")),
            (
                Method::GET,
                "/api/v1/namespaces/other/pods",
                vec![("fieldSelector", "metadata.name=foo")],
                ("list", "", "pods", "", "other", "foo"),
            ),
            (
                Method::GET,
                "/api/v1/namespaces/other/pods",
                vec![("fieldSelector", "metadata.name!=foo")],
                ("list", "", "pods", "", "other", ""),
            ),
            (Method::POST, "/api/v1/namespaces/other/pods", vec![], ("create", "", "pods", "", "other", "")),
            (Method::PUT, "/api/v1/namespaces/other/pods/foo", vec![], ("update", "", "pods", "", "other", "foo")),
            (Method::PATCH, "/api/v1/namespaces/other/pods/foo", vec![], ("patch", "", "pods", "", "other", "foo")),
            (Method::DELETE, "/api/v1/namespaces/other/pods/foo", vec![], ("delete", "", "pods", "", "other", "foo")),
            (
                Method::DELETE,
                "/api/v1/namespaces/other/pods",
                vec![],
                ("deletecollection", "", "pods", "", "other", ""),
            ),
            (
                Method::PUT,
                "/api/v1/namespaces/other/finalize",
                vec![],
                ("update", "", "namespaces", "finalize", "other", "other"),
            ),
            (
                Method::PUT,
                "/api/v1/namespaces/other/status",
                vec![],
                ("update", "", "namespaces", "status", "other", "other"),
            ),
            (
                Method::GET,
                "/apis/apps/v1/namespaces/other/deployments/web/scale",
                vec![],
                ("get", "apps", "deployments", "scale", "other", "web"),
            ),
            (
                Method::POST,
                "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                vec![],
                ("create", "authorization.k8s.io", "selfsubjectaccessreviews", "", "", ""),
            ),
            (Method::GET, "/api/v1/proxy/namespaces/x/pods/p/a/b", vec![], ("proxy", "", "pods", "", "x", "p")),
        ] {
            let a = attrs(method.clone(), path, &q);
            let (verb, group, resource, sub, ns, name) = want;
            assert_eq!(
                short(&a),
                (s(verb), true, s(group), s(resource), s(sub), s(ns), s(name)),
                "{method} {path} {q:?}"
            );
        }
        // Not resources: discovery, the group lists, health, anything else.
        for path in
            ["/api", "/api/v1", "/apis", "/apis/apps", "/apis/apps/v1", "/healthz", "/metrics", "/", "/openapi/v3"]
        {
            let a = attrs(Method::GET, path, &[]);
            assert!(!a.resource_request, "{path}");
            assert_eq!((a.verb.as_str(), a.path.as_str()), ("get", path));
        }
        assert_eq!(attrs(Method::POST, "/api", &[]).verb, "post");
    }

    fn user(name: &str) -> User {
        User {
            name: name.into(),
            uid: String::new(),
            groups: vec!["system:authenticated".into()],
            extra: Default::default(),
        }
    }

    #[test]
    fn forbidden_messages_are_kube_apiservers() {
        let u = user("system:serviceaccount:default:default");
        let e = forbidden(&u, &attrs(Method::GET, "/api/v1/namespaces/default/pods", &[]), "");
        assert_eq!(
            e.message,
            "pods is forbidden: User \"system:serviceaccount:default:default\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
        );
        assert_eq!(e.details, Some(json!({"kind": "pods"})));
        assert_eq!((e.code, e.reason), (403, "Forbidden"));
        let e = forbidden(&u, &attrs(Method::GET, "/api/v1/namespaces/default/services/web", &[]), "");
        assert_eq!(
            e.message,
            "services \"web\" is forbidden: User \"system:serviceaccount:default:default\" cannot get resource \"services\" in API group \"\" in the namespace \"default\""
        );
        assert_eq!(e.details, Some(json!({"name": "web", "kind": "services"})));
        let e = forbidden(&u, &attrs(Method::GET, "/apis/apps/v1/deployments", &[]), "");
        assert_eq!(
            e.message,
            "deployments.apps is forbidden: User \"system:serviceaccount:default:default\" cannot list resource \"deployments\" in API group \"apps\" at the cluster scope"
        );
        assert_eq!(e.details, Some(json!({"group": "apps", "kind": "deployments"})));
        let e = forbidden(&u, &attrs(Method::GET, "/api/v1/namespaces/x/pods/p/log", &[]), "");
        assert!(e.message.contains("cannot get resource \"pods/log\" in API group \"\" in the namespace \"x\""));
        let e = forbidden(&u, &attrs(Method::GET, "/metrics", &[]), "");
        assert_eq!(e.message, "forbidden: User \"system:serviceaccount:default:default\" cannot get path \"/metrics\"");
        assert_eq!(e.details, Some(json!({})));
        let e = forbidden(
            &u,
            &attrs(Method::GET, "/x<script>", &[]),
            "RBAC: role.rbac.authorization.k8s.io \"r\" not found",
        );
        assert_eq!(
            e.message,
            "forbidden: User \"system:serviceaccount:default:default\" cannot get path \"/x&lt;script&gt;\": RBAC: role.rbac.authorization.k8s.io \"r\" not found"
        );
    }
}
