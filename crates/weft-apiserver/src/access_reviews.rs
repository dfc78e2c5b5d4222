//! authorization.k8s.io/v1's reviews, answered at once and never stored, as kube-apiserver's
//! pkg/registry/authorization answers them: SubjectAccessReview (may this user do this?),
//! LocalSubjectAccessReview (the same, in a namespace), SelfSubjectAccessReview (may I?,
//! `kubectl auth can-i`) and SelfSubjectRulesReview (what may I do here?, `kubectl auth can-i
//! --list`). The asking user is the one of the request ([`crate::auth::Request::current`]).

use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, ResourceAttributes, SelfSubjectAccessReviewSpec, SubjectAccessReviewSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};
use weft_api::FieldError;
use weft_rbac::index::Wording;

use crate::auth::User;
use crate::authz::{self, Attributes};
use crate::rest::{Api, Target};
use crate::status::ApiError;

const GROUP: &str = "authorization.k8s.io";

/// Answers a review posted to `t` (one of this group's create-only kinds).
pub fn create(api: &Api, t: &Target, body: &[u8]) -> Result<Value, ApiError> {
    let mut v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not a JSON object: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad_request("the request body must be a JSON object"));
    }
    let kind = t.kind.kind;
    let sent_kind = v.get("kind").and_then(Value::as_str).unwrap_or("");
    if !sent_kind.is_empty() && sent_kind != kind {
        return Err(ApiError::bad_request(format!(
            "the object is a {sent_kind} but was sent to the {} endpoint: send it to its own resource",
            t.kind.plural
        )));
    }
    let meta: ObjectMeta = decode(kind, v.get("metadata").cloned().unwrap_or(json!({})))?;
    let asking = crate::auth::Request::current().user;
    let status = match kind {
        "SubjectAccessReview" | "LocalSubjectAccessReview" => {
            let spec: SubjectAccessReviewSpec = decode(kind, v.get("spec").cloned().unwrap_or(json!({})))?;
            let local = kind == "LocalSubjectAccessReview";
            let url_ns = t.namespace.clone().unwrap_or_default();
            if local {
                if url_ns.is_empty() {
                    return Err(ApiError::bad_request("namespace is required on this type: "));
                }
                // The object takes the namespace of its URL (kube-apiserver's create handler).
                match meta.namespace.as_deref() {
                    Some(n) if !n.is_empty() && n != url_ns => {
                        return Err(ApiError::bad_request(format!(
                            "the namespace of the provided object ({n}) does not match the namespace sent on the request ({url_ns})"
                        )));
                    }
                    _ => v["metadata"]["namespace"] = json!(url_ns),
                }
            }
            let errs = validate_subject_review(&spec, &meta, local.then_some(url_ns.as_str()));
            if !errs.is_empty() {
                return Err(invalid(kind, &errs));
            }
            let user = User {
                name: spec.user.clone().unwrap_or_default(),
                uid: spec.uid.clone().unwrap_or_default(),
                groups: spec.groups.clone().unwrap_or_default(),
                extra: spec.extra.clone().unwrap_or_default().into_iter().collect(),
            };
            access_status(api, &user, spec.resource_attributes.as_ref(), spec.non_resource_attributes.as_ref())
        }
        "SelfSubjectAccessReview" => {
            let spec: SelfSubjectAccessReviewSpec = decode(kind, v.get("spec").cloned().unwrap_or(json!({})))?;
            let errs = validate_self_review(&spec, &meta);
            if !errs.is_empty() {
                return Err(invalid(kind, &errs));
            }
            access_status(api, &asking, spec.resource_attributes.as_ref(), spec.non_resource_attributes.as_ref())
        }
        "SelfSubjectRulesReview" => {
            let namespace = v.pointer("/spec/namespace").and_then(Value::as_str).unwrap_or("");
            if namespace.is_empty() {
                return Err(ApiError::bad_request("no namespace on request"));
            }
            let status = rules_status(api, &asking, namespace);
            // Upstream answers with a new object that holds only the status.
            return Ok(json!({"kind": kind, "apiVersion": t.kind.api_version(),
                "metadata": {"creationTimestamp": null}, "spec": {}, "status": status}));
        }
        other => return Err(ApiError::bad_request(format!("{other} is not an access review"))),
    };
    v["apiVersion"] = json!(t.kind.api_version());
    v["kind"] = json!(kind);
    v["status"] = status;
    Ok(v)
}

fn decode<T: serde::de::DeserializeOwned>(kind: &str, v: Value) -> Result<T, ApiError> {
    serde_json::from_value(v).map_err(|e| ApiError::bad_request(format!("the body is not a valid {kind}: {e}")))
}

/// `apierrors.NewInvalid(authorization.Kind(kind), "", errs)`.
fn invalid(kind: &str, errs: &[FieldError]) -> ApiError {
    let mut e = ApiError::invalid(&format!("{kind}.{GROUP}"), "", errs);
    if let Some(d) = e.details.as_mut() {
        d["kind"] = json!(kind);
        d["group"] = json!(GROUP);
        if let Some(o) = d.as_object_mut() {
            o.remove("name");
        }
    }
    e
}

/// The checks every access review's spec shares (`ValidateSelfSubjectAccessReviewSpec`).
fn check_attributes(
    resource: Option<&ResourceAttributes>,
    non_resource: Option<&NonResourceAttributes>,
    errs: &mut Vec<FieldError>,
) {
    match (resource, non_resource) {
        (Some(_), Some(n)) => errs.push(FieldError::invalid(
            "spec.nonResourceAttributes",
            go_non_resource(n),
            "cannot be specified in combination with resourceAttributes",
        )),
        (None, None) => errs.push(FieldError::invalid(
            "spec.resourceAttributes",
            "nil",
            "exactly one of nonResourceAttributes or resourceAttributes must be specified",
        )),
        _ => {}
    }
}

fn go_non_resource(n: &NonResourceAttributes) -> String {
    format!(
        "&authorization.NonResourceAttributes{{Path:{:?}, Verb:{:?}}}",
        n.path.as_deref().unwrap_or(""),
        n.verb.as_deref().unwrap_or("")
    )
}

/// Metadata an access review may carry: none (a LocalSubjectAccessReview: its namespace).
fn meta_is_empty(meta: &ObjectMeta, allow_namespace: bool) -> bool {
    let mut m = meta.clone();
    m.managed_fields = None;
    if allow_namespace {
        m.namespace = None;
    }
    m == ObjectMeta::default()
}

/// `ValidateSubjectAccessReview` / `ValidateLocalSubjectAccessReview` (`local`: the URL's
/// namespace).
pub fn validate_subject_review(
    spec: &SubjectAccessReviewSpec,
    meta: &ObjectMeta,
    local: Option<&str>,
) -> Vec<FieldError> {
    let mut errs = vec![];
    check_attributes(spec.resource_attributes.as_ref(), spec.non_resource_attributes.as_ref(), &mut errs);
    let user = spec.user.as_deref().unwrap_or("");
    if user.is_empty() && spec.groups.as_deref().unwrap_or_default().is_empty() {
        errs.push(FieldError::invalid_str("spec.user", user, "at least one of user or group must be specified"));
    }
    match local {
        None => {
            if !meta_is_empty(meta, false) {
                errs.push(FieldError::invalid("metadata", "{...}", "must be empty"));
            }
        }
        Some(ns) => {
            if !meta_is_empty(meta, true) {
                errs.push(FieldError::invalid("metadata", "{...}", "must be empty except for namespace"));
            }
            if let Some(r) = &spec.resource_attributes {
                let rns = r.namespace.as_deref().unwrap_or("");
                if rns != ns {
                    errs.push(FieldError::invalid_str(
                        "spec.resourceAttributes.namespace",
                        rns,
                        "must match metadata.namespace",
                    ));
                }
            }
            if let Some(n) = &spec.non_resource_attributes {
                errs.push(FieldError::invalid(
                    "spec.nonResourceAttributes",
                    go_non_resource(n),
                    "disallowed on this kind of request",
                ));
            }
        }
    }
    errs
}

/// `ValidateSelfSubjectAccessReview`.
pub fn validate_self_review(spec: &SelfSubjectAccessReviewSpec, meta: &ObjectMeta) -> Vec<FieldError> {
    let mut errs = vec![];
    check_attributes(spec.resource_attributes.as_ref(), spec.non_resource_attributes.as_ref(), &mut errs);
    if !meta_is_empty(meta, false) {
        errs.push(FieldError::invalid("metadata", "{...}", "must be empty"));
    }
    errs
}

/// The attributes a review asks about (`ResourceAttributesFrom`, `NonResourceAttributesFrom`).
pub fn attributes(resource: Option<&ResourceAttributes>, non_resource: Option<&NonResourceAttributes>) -> Attributes {
    let s = |o: &Option<String>| o.clone().unwrap_or_default();
    match (resource, non_resource) {
        (Some(r), _) => Attributes {
            verb: s(&r.verb),
            resource_request: true,
            api_group: s(&r.group),
            api_version: r.version.clone().filter(|v| !v.is_empty()).unwrap_or_else(|| "*".into()),
            resource: s(&r.resource),
            subresource: s(&r.subresource),
            namespace: s(&r.namespace),
            name: s(&r.name),
            path: String::new(),
        },
        (None, Some(n)) => Attributes { verb: s(&n.verb), path: s(&n.path), ..Default::default() },
        (None, None) => Attributes::default(),
    }
}

fn access_status(
    api: &Api,
    user: &User,
    resource: Option<&ResourceAttributes>,
    non_resource: Option<&NonResourceAttributes>,
) -> Value {
    let d = authz::decide(api, user, &attributes(resource, non_resource));
    let mut status = json!({"allowed": d.allowed});
    if !d.reason.is_empty() {
        status["reason"] = json!(d.reason);
    }
    status
}

/// What `user` may do in `namespace`: RBAC's rules for it, split into resource and
/// non-resource rules (upstream's `RulesFor` and `getResourceRules`).
fn rules_status(api: &Api, user: &User, namespace: &str) -> Value {
    let u = weft_rbac::User { name: &user.name, groups: &user.groups };
    let (rules, errors) = api.rbac.index(&api.store).rules_for(&u, namespace, Wording::Lister);
    let (mut resource_rules, mut non_resource_rules) = (vec![], vec![]);
    for r in &rules {
        let list = |l: &Option<Vec<String>>| l.clone().unwrap_or_default();
        if !list(&r.resources).is_empty() {
            let mut rr = json!({"verbs": r.verbs, "apiGroups": list(&r.api_groups), "resources": list(&r.resources)});
            if !list(&r.resource_names).is_empty() {
                rr["resourceNames"] = json!(list(&r.resource_names));
            }
            resource_rules.push(rr);
        }
        if !list(&r.non_resource_urls).is_empty() {
            non_resource_rules.push(json!({"verbs": r.verbs, "nonResourceURLs": list(&r.non_resource_urls)}));
        }
    }
    let mut status =
        json!({"resourceRules": resource_rules, "nonResourceRules": non_resource_rules, "incomplete": false});
    if !errors.is_empty() {
        status["evaluationError"] = json!(weft_rbac::quote::aggregate(&errors));
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: Value) -> SubjectAccessReviewSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn reviews_are_validated_as_upstream_validates_them() {
        let none = ObjectMeta::default();
        let ok = spec(json!({"user": "u", "resourceAttributes": {"verb": "get", "resource": "pods"}}));
        assert!(validate_subject_review(&ok, &none, None).is_empty());
        let neither = spec(json!({"groups": ["g"]}));
        assert_eq!(
            validate_subject_review(&neither, &none, None)[0].to_string(),
            "spec.resourceAttributes: Invalid value: nil: exactly one of nonResourceAttributes or resourceAttributes must be specified"
        );
        let both = spec(
            json!({"user": "u", "resourceAttributes": {}, "nonResourceAttributes": {"path": "/x", "verb": "get"}}),
        );
        assert!(
            validate_subject_review(&both, &none, None)[0]
                .to_string()
                .contains("cannot be specified in combination with resourceAttributes")
        );
        let nobody = spec(json!({"resourceAttributes": {}}));
        assert_eq!(
            validate_subject_review(&nobody, &none, None)[0].to_string(),
            "spec.user: Invalid value: \"\": at least one of user or group must be specified"
        );
        let named = ObjectMeta { name: Some("x".into()), ..Default::default() };
        assert!(
            validate_subject_review(&ok, &named, None)[0]
                .to_string()
                .contains("metadata: Invalid value: {...}: must be empty")
        );
        // Local: the namespace must match; no paths.
        let local =
            spec(json!({"user": "u", "resourceAttributes": {"verb": "get", "resource": "pods", "namespace": "a"}}));
        let in_a = ObjectMeta { namespace: Some("a".into()), ..Default::default() };
        assert!(validate_subject_review(&local, &in_a, Some("a")).is_empty());
        assert!(
            validate_subject_review(&local, &in_a, Some("b"))[0].to_string().contains("must match metadata.namespace")
        );
        let path = spec(json!({"user": "u", "nonResourceAttributes": {"path": "/x", "verb": "get"}}));
        assert!(
            validate_subject_review(&path, &in_a, Some("a"))[0]
                .to_string()
                .contains("disallowed on this kind of request")
        );
    }

    #[test]
    fn review_attributes_default_the_version_to_any() {
        let r: ResourceAttributes =
            serde_json::from_value(json!({"verb": "list", "resource": "pods", "subresource": "log", "namespace": "x"}))
                .unwrap();
        let a = attributes(Some(&r), None);
        assert_eq!(
            (a.verb.as_str(), a.api_version.as_str(), a.subresource.as_str(), a.resource_request),
            ("list", "*", "log", true)
        );
        let n: NonResourceAttributes = serde_json::from_value(json!({"path": "/metrics", "verb": "get"})).unwrap();
        let a = attributes(None, Some(&n));
        assert_eq!((a.path.as_str(), a.resource_request), ("/metrics", false));
    }
}
