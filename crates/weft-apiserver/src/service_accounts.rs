//! ServiceAccounts as kube-apiserver serves them: the TokenRequest subresource
//! (`serviceaccounts/{name}/token`, `kubectl create token`), the lookup that makes a signed
//! token a user (the ServiceAccount and the object the token is bound to must still exist with
//! the uids it names), and what every namespace has from its creation on: the `default`
//! ServiceAccount and the `kube-root-ca.crt` ConfigMap (made with the namespace, so a pod created
//! right after it finds them; `weft_controllers::serviceaccounts` puts them back if deleted).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use serde_json::{Value, json};
use weft_api::errors::FieldError;
use weft_api::kinds;
use weft_store::Key;

use crate::auth::User;
use crate::rest::{Api, Target, WriteOpts};
use crate::status::ApiError;
use crate::tokens::{self, Bound, Claims, Keys, ObjectRef, TokenError};

/// What the API server signs and publishes for service accounts.
pub struct Accounts {
    pub keys: Keys,
    /// The cluster CA (PEM): the `ca.crt` of `kube-root-ca.crt`.
    pub ca_pem: String,
    /// The admin kubeconfig's token (a TokenReview of it names `kubernetes-admin`).
    pub admin_token: String,
}

/// The ConfigMap every namespace gets (upstream's root-ca-cert-publisher).
pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";
const ROOT_CA_DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

/// The `kube-root-ca.crt` ConfigMap of `namespace`.
pub fn root_ca_configmap(namespace: &str, ca_pem: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": ROOT_CA_CONFIGMAP, "namespace": namespace,
                     "annotations": {"kubernetes.io/description": ROOT_CA_DESCRIPTION}},
        "data": {"ca.crt": ca_pem}})
}

/// The `default` ServiceAccount of `namespace`.
pub fn default_service_account(namespace: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": namespace}})
}

fn target(plural: &str, namespace: &str) -> Target {
    Target {
        kind: kinds::by_path("", "v1", plural).expect("a core kind"),
        namespace: Some(namespace.to_string()),
        name: None,
        sub: None,
    }
}

/// A create through the API, boxed: it runs inside a namespace's own create.
fn create_boxed<'a>(
    api: &'a Api,
    t: &'a Target,
    body: Vec<u8>,
) -> Pin<Box<dyn Future<Output = Result<Value, ApiError>> + Send + 'a>> {
    Box::pin(async move { api.create(t, &body, WriteOpts::default()).await })
}

/// Makes what `namespace` lacks of its `default` ServiceAccount and `kube-root-ca.crt`
/// ConfigMap. Errors are logged: the namespace itself is made either way.
pub async fn namespace_defaults(api: &Api, namespace: &str) {
    let mut wanted = vec![];
    if api.store.get(&Key::new("serviceaccounts", namespace, "default")).is_none() {
        wanted.push(("serviceaccounts", default_service_account(namespace)));
    }
    if let Some(a) = api.accounts.get()
        && api.store.get(&Key::new("configmaps", namespace, ROOT_CA_CONFIGMAP)).is_none()
    {
        wanted.push(("configmaps", root_ca_configmap(namespace, &a.ca_pem)));
    }
    for (plural, obj) in wanted {
        let t = target(plural, namespace);
        match create_boxed(api, &t, serde_json::to_vec(&obj).unwrap_or_default()).await {
            Ok(_) => {}
            Err(e) if e.code == 409 => {}
            Err(e) => tracing::warn!(namespace, plural, error = %e.message, "making a namespace's defaults"),
        }
    }
}

fn str_at<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

fn uid_of(v: &Value) -> String {
    str_at(v, "/metadata/uid").to_string()
}

/// Whether `v` was deleted more than the leeway before `now` (upstream's
/// `invalidIfDeletedBefore`: a Terminating pod's token works until its grace ends).
fn deleted_before(v: &Value, now: i64) -> bool {
    v.pointer("/metadata/deletionTimestamp")
        .and_then(Value::as_str)
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .is_some_and(|t| t.as_second() < now - tokens::LEEWAY_SECONDS)
}

/// The user a verified token's claims stand for, if the objects it names still exist with the
/// same uids (upstream's claims validator, in its words).
pub fn user_of(api: &Api, c: &Claims, now: i64) -> Result<User, TokenError> {
    let k = &c.kubernetes;
    let ns = k.namespace.as_str();
    let invalid = |m: String| Err(TokenError::Invalid(m));
    let invalidated = || Err(TokenError::Invalid("service account token has been invalidated".into()));
    let Some(sa) = api.store.get(&Key::new("serviceaccounts", ns, &k.serviceaccount.name)) else {
        return invalid(format!("serviceaccounts {:?} not found", k.serviceaccount.name));
    };
    if uid_of(&sa) != k.serviceaccount.uid {
        return invalid(format!(
            "service account UID ({}) does not match claim ({})",
            uid_of(&sa),
            k.serviceaccount.uid
        ));
    }
    if deleted_before(&sa, now) {
        return invalid(format!("service account {ns}/{} has been deleted", k.serviceaccount.name));
    }
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (what, resource, r) in [("secret", "secrets", &k.secret), ("pod", "pods", &k.pod)] {
        let Some(r) = r else { continue };
        let Some(o) = api.store.get(&Key::new(resource, ns, &r.name)) else { return invalidated() };
        if uid_of(&o) != r.uid {
            return invalid(format!(
                "{what} UID ({}) does not match service account {what} ref claim ({})",
                uid_of(&o),
                r.uid
            ));
        }
        if deleted_before(&o, now) {
            return invalidated();
        }
    }
    if let Some(p) = &k.pod {
        extra.insert("authentication.kubernetes.io/pod-name".into(), vec![p.name.clone()]);
        extra.insert("authentication.kubernetes.io/pod-uid".into(), vec![p.uid.clone()]);
    }
    if let Some(n) = &k.node {
        // A pod-bound token only records its node; a node-bound one needs the node to exist.
        if k.pod.is_none() {
            let Some(o) = api.store.get(&Key::new("nodes", "", &n.name)) else { return invalidated() };
            if uid_of(&o) != n.uid {
                return invalid(format!(
                    "node UID ({}) does not match service account node ref claim ({})",
                    uid_of(&o),
                    n.uid
                ));
            }
            if deleted_before(&o, now) {
                return invalidated();
            }
        }
        extra.insert("authentication.kubernetes.io/node-name".into(), vec![n.name.clone()]);
        extra.insert("authentication.kubernetes.io/node-uid".into(), vec![n.uid.clone()]);
    }
    if !c.jti.is_empty() {
        extra.insert("authentication.kubernetes.io/credential-id".into(), vec![format!("JTI={}", c.jti)]);
    }
    Ok(User {
        name: tokens::username(ns, &k.serviceaccount.name),
        uid: k.serviceaccount.uid.clone(),
        groups: service_account_groups(ns),
        extra,
    })
}

/// The groups of every ServiceAccount user of `namespace`.
pub fn service_account_groups(namespace: &str) -> Vec<String> {
    vec!["system:serviceaccounts".into(), format!("system:serviceaccounts:{namespace}"), "system:authenticated".into()]
}

/// `POST .../serviceaccounts/{name}/token`: a TokenRequest answered with a fresh token.
pub async fn create_token(api: &Api, t: &Target, body: &[u8], o: WriteOpts) -> Result<Value, ApiError> {
    let accounts = api.accounts.get().ok_or_else(|| ApiError::internal("this server issues no tokens"))?;
    let ns = t.namespace.as_deref().unwrap_or("");
    let name = t.name.as_deref().unwrap_or("");
    let mut req: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the TokenRequest body is not JSON: {e}")))?;
    if !req.is_object() {
        return Err(ApiError::bad_request("the TokenRequest body must be a JSON object"));
    }
    let kind = str_at(&req, "/kind");
    let av = str_at(&req, "/apiVersion");
    if (!kind.is_empty() && kind != "TokenRequest") || (!av.is_empty() && av != "authentication.k8s.io/v1") {
        return Err(ApiError::bad_request(format!(
            "the object is {av}/{kind} but serviceaccounts/token takes an authentication.k8s.io/v1 TokenRequest"
        )));
    }
    let spec: k8s_openapi::api::authentication::v1::TokenRequestSpec =
        serde_json::from_value(req.get("spec").cloned().unwrap_or_else(|| json!({})))
            .map_err(|e| ApiError::bad_request(format!("TokenRequest spec: {e}")))?;
    let seconds = spec.expiration_seconds.unwrap_or(tokens::DEFAULT_EXPIRATION_SECONDS);
    if let Some(m) = tokens::check_expiration(seconds) {
        return Err(ApiError::invalid(
            "TokenRequest",
            name,
            &[FieldError::invalid("spec.expirationSeconds", seconds, m)],
        ));
    }
    let sa = api
        .store
        .get(&Key::new("serviceaccounts", ns, name))
        .ok_or_else(|| ApiError::not_found("serviceaccounts", name))?;
    let bound = match &spec.bound_object_ref {
        None => Bound::None,
        Some(r) => bound_object(api, ns, name, r)?,
    };
    let audiences =
        spec.audiences.clone().filter(|a| !a.is_empty()).unwrap_or_else(|| vec![tokens::ISSUER.to_string()]);
    let now = jiff::Timestamp::now().as_second();
    let sa_ref = ObjectRef { name: name.to_string(), uid: uid_of(&sa) };
    let claims = tokens::claims(ns, sa_ref, bound, audiences.clone(), seconds, now);
    let token = if o.dry_run {
        String::new()
    } else {
        accounts.keys.sign(&claims).map_err(|e| ApiError::internal(format!("failed to generate token: {e}")))?
    };
    let expires = jiff::Timestamp::from_second(claims.exp)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default();
    req["apiVersion"] = json!("authentication.k8s.io/v1");
    req["kind"] = json!("TokenRequest");
    let md = req.as_object_mut().map(|m| m.entry("metadata").or_insert_with(|| json!({})));
    if let Some(md) = md.and_then(Value::as_object_mut) {
        md.insert("name".into(), json!(name));
        md.insert("namespace".into(), json!(ns));
        md.insert("creationTimestamp".into(), Value::Null);
    }
    let mut spec_v = serde_json::to_value(&spec).unwrap_or_else(|_| json!({}));
    spec_v["audiences"] = json!(audiences);
    spec_v["expirationSeconds"] = json!(seconds);
    req["spec"] = spec_v;
    req["status"] = json!({"token": token, "expirationTimestamp": expires});
    Ok(req)
}

/// The object a TokenRequest binds its token to, checked as kube-apiserver checks it.
fn bound_object(
    api: &Api,
    ns: &str,
    sa: &str,
    r: &k8s_openapi::api::authentication::v1::BoundObjectReference,
) -> Result<Bound, ApiError> {
    let av = r.api_version.as_deref().unwrap_or("");
    let kind = r.kind.as_deref().unwrap_or("");
    let name = r.name.as_deref().unwrap_or("");
    let (group, version) = av.rsplit_once('/').unwrap_or(("", av));
    let (resource, key) = match (group, kind) {
        ("", "Pod") => ("pods", Key::new("pods", ns, name)),
        ("", "Secret") => ("secrets", Key::new("secrets", ns, name)),
        ("", "Node") => ("nodes", Key::new("nodes", "", name)),
        _ => {
            return Err(ApiError::bad_request(format!(
                "cannot bind token to object of type {group}/{version}, Kind={kind}"
            )));
        }
    };
    let obj = api.store.get(&key).ok_or_else(|| ApiError::not_found(resource, name))?;
    let uid = uid_of(&obj);
    if kind == "Pod" {
        let pod_sa = str_at(&obj, "/spec/serviceAccountName");
        if pod_sa != sa {
            return Err(ApiError::bad_request(format!(
                "cannot bind token for serviceaccount {sa:?} to pod running with serviceaccount {pod_sa:?}"
            )));
        }
    }
    if let Some(want) = r.uid.as_deref().filter(|u| !u.is_empty())
        && want != uid
    {
        let mut e = ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {kind} {name:?}: the UID in the bound object reference ({want}) does not match the UID in record ({uid}). The object might have been deleted and then recreated"
            ),
        );
        e.details = Some(json!({"name": name, "kind": kind}));
        return Err(e);
    }
    let this = ObjectRef { name: name.to_string(), uid };
    Ok(match kind {
        "Pod" => {
            let node = str_at(&obj, "/spec/nodeName");
            let node_ref = (!node.is_empty()).then(|| {
                let uid = api.store.get(&Key::new("nodes", "", node)).map(|n| uid_of(&n)).unwrap_or_default();
                ObjectRef { name: node.to_string(), uid }
            });
            Bound::Pod(this, node_ref)
        }
        "Secret" => Bound::Secret(this),
        _ => Bound::Node(this),
    })
}
