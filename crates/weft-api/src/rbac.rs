//! The rbac.authorization.k8s.io/v1 kinds (Role, ClusterRole, RoleBinding, ClusterRoleBinding):
//! defaulting, validation and table rows as kube-apiserver has them (pkg/apis/rbac/validation,
//! pkg/apis/rbac/v1/defaults.go, the rbac printers).

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::errors::{FieldError, ObjectError};
use crate::kinds::Kind;
use crate::validate::{self, Errors, NameRule};

pub const GROUP: &str = "rbac.authorization.k8s.io";

use crate::objects::decode;

fn encode<T: Serialize>(t: &T) -> Value {
    serde_json::to_value(t).unwrap_or(Value::Null)
}

/// Fields Go decodes to their zero value when absent, filled in so that validation (not the
/// decoder) says what is missing: `roleRef`, its `kind` and `name`, a subject's `kind` and
/// `name`, a rule's `verbs`.
fn fill_zero_values(v: &Value) -> Value {
    let mut v = v.clone();
    let Some(o) = v.as_object_mut() else { return v };
    if let Some(rr) = o.get_mut("roleRef").and_then(Value::as_object_mut) {
        rr.entry("kind").or_insert(json!(""));
        rr.entry("name").or_insert(json!(""));
    }
    for s in o.get_mut("subjects").and_then(Value::as_array_mut).into_iter().flatten() {
        if let Some(s) = s.as_object_mut() {
            s.entry("kind").or_insert(json!(""));
            s.entry("name").or_insert(json!(""));
        }
    }
    for r in o.get_mut("rules").and_then(Value::as_array_mut).into_iter().flatten() {
        if let Some(r) = r.as_object_mut() {
            r.entry("verbs").or_insert(json!([]));
        }
    }
    v
}

/// Defaults and validates a Role, ClusterRole, RoleBinding or ClusterRoleBinding.
pub fn admit(kind: &Kind, v: &Value) -> Result<Value, ObjectError> {
    let mut v = fill_zero_values(v);
    // A body that is not an object is left for `decode` to refuse (indexing it would panic).
    if kind.kind.ends_with("Binding")
        && let Some(o) = v.as_object_mut()
        && !o.get("roleRef").is_some_and(Value::is_object)
    {
        o.insert("roleRef".into(), json!({"kind": "", "name": ""}));
    }
    let mut errs = Errors::new();
    let (out, meta) = match kind.kind {
        "Role" => {
            let o: Role = decode(kind, &v)?;
            check_meta(&o.metadata, true, &mut errs);
            check_rules(o.rules.as_deref().unwrap_or_default(), true, &mut errs);
            (encode(&o), o.metadata)
        }
        "ClusterRole" => {
            let o: ClusterRole = decode(kind, &v)?;
            check_meta(&o.metadata, false, &mut errs);
            check_rules(o.rules.as_deref().unwrap_or_default(), false, &mut errs);
            if let Some(agg) = &o.aggregation_rule {
                let selectors = agg.cluster_role_selectors.as_deref().unwrap_or_default();
                if selectors.is_empty() {
                    errs.push(FieldError::required(
                        "aggregationRule.clusterRoleSelectors",
                        "at least one clusterRoleSelector required if aggregationRule is non-nil",
                    ));
                }
                for (i, s) in selectors.iter().enumerate() {
                    validate::check_selector(&format!("aggregationRule.clusterRoleSelectors[{i}]"), s, &mut errs);
                }
            }
            (encode(&o), o.metadata)
        }
        "RoleBinding" => {
            let mut o: RoleBinding = decode(kind, &v)?;
            default_binding(&mut o.role_ref, o.subjects.as_mut());
            check_meta(&o.metadata, true, &mut errs);
            check_role_ref(&o.role_ref, &["Role", "ClusterRole"], &mut errs);
            check_subjects(o.subjects.as_deref().unwrap_or_default(), true, &mut errs);
            (encode(&o), o.metadata)
        }
        "ClusterRoleBinding" => {
            let mut o: ClusterRoleBinding = decode(kind, &v)?;
            default_binding(&mut o.role_ref, o.subjects.as_mut());
            check_meta(&o.metadata, false, &mut errs);
            check_role_ref(&o.role_ref, &["ClusterRole"], &mut errs);
            check_subjects(o.subjects.as_deref().unwrap_or_default(), false, &mut errs);
            (encode(&o), o.metadata)
        }
        other => return Err(ObjectError::BadRequest(format!("{other} is not an RBAC kind"))),
    };
    if errs.is_empty() {
        Ok(out)
    } else {
        let name = meta.name.clone().or(meta.generate_name.clone()).unwrap_or_default();
        Err(ObjectError::Invalid { kind: kind.kind.to_string(), name, causes: errs })
    }
}

/// What may not change in an update (`ValidateRoleBindingUpdate`): a binding's roleRef.
pub fn validate_update(kind: &Kind, old: &Value, new: &Value) -> Errors {
    if !matches!(kind.kind, "RoleBinding" | "ClusterRoleBinding") {
        return vec![];
    }
    let role_ref = |v: &Value| serde_json::from_value::<RoleRef>(v.get("roleRef").cloned().unwrap_or(Value::Null)).ok();
    match (role_ref(old), role_ref(new)) {
        (Some(a), Some(b)) if a != b => vec![FieldError::invalid("roleRef", go_role_ref(&b), "cannot change roleRef")],
        _ => vec![],
    }
}

/// A RoleRef as Go's `%#v` prints it in kube-apiserver's message.
fn go_role_ref(r: &RoleRef) -> String {
    format!("rbac.RoleRef{{APIGroup:{:?}, Kind:{:?}, Name:{:?}}}", r.api_group.as_deref().unwrap_or(""), r.kind, r.name)
}

/// `rbacv1` defaults: roleRef's and User/Group subjects' apiGroup is the RBAC group.
fn default_binding(role_ref: &mut RoleRef, subjects: Option<&mut Vec<Subject>>) {
    if role_ref.api_group.as_deref().unwrap_or("").is_empty() {
        role_ref.api_group = Some(GROUP.into());
    }
    for s in subjects.into_iter().flatten() {
        if s.api_group.as_deref().unwrap_or("").is_empty() && matches!(s.kind.as_str(), "User" | "Group") {
            s.api_group = Some(GROUP.into());
        }
    }
}

/// `path.IsValidPathSegmentName`, the only rule RBAC names follow (`system:basic-user` is one).
fn path_segment_problems(name: &str) -> Vec<String> {
    if name == "." || name == ".." {
        return vec![format!("may not be '{name}'")];
    }
    ["/", "%"].iter().filter(|c| name.contains(**c)).map(|c| format!("may not contain '{c}'")).collect()
}

/// Metadata as `ValidateObjectMeta` with RBAC's name rule: the name is checked here, the rest
/// (namespace, labels, a missing name) by the shared check.
fn check_meta(md: &ObjectMeta, namespaced: bool, errs: &mut Errors) {
    let mut probe = md.clone();
    for (field, value) in [("metadata.name", &md.name), ("metadata.generateName", &md.generate_name)] {
        if let Some(n) = value.as_deref().filter(|n| !n.is_empty()) {
            for p in path_segment_problems(n) {
                errs.push(FieldError::invalid_str(field, n, p));
            }
        }
    }
    // A name the shared DNS rule accepts, once RBAC's own rule has been applied above.
    if probe.name.as_deref().is_some_and(|n| !n.is_empty()) {
        probe.name = Some("x".into());
    } else if probe.generate_name.as_deref().is_some_and(|n| !n.is_empty()) {
        probe.generate_name = Some("x".into());
    }
    validate::check_meta(&probe, NameRule::Dns1123Subdomain, namespaced, errs);
}

/// A Go `[]string` as `%#v` prints it.
fn go_strings(v: &[String]) -> String {
    format!("[]string{{{}}}", v.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", "))
}

fn check_rules(rules: &[PolicyRule], namespaced: bool, errs: &mut Errors) {
    for (i, r) in rules.iter().enumerate() {
        let f = |x: &str| format!("rules[{i}].{x}");
        if r.verbs.is_empty() {
            errs.push(FieldError::required(f("verbs"), "verbs must contain at least one value"));
        }
        let urls = r.non_resource_urls.as_deref().unwrap_or_default();
        let list = |x: &Option<Vec<String>>| x.as_deref().unwrap_or_default().len();
        if !urls.is_empty() {
            if namespaced {
                errs.push(FieldError::invalid(
                    f("nonResourceURLs"),
                    go_strings(urls),
                    "namespaced rules cannot apply to non-resource URLs",
                ));
            }
            if list(&r.api_groups) > 0 || list(&r.resources) > 0 || list(&r.resource_names) > 0 {
                errs.push(FieldError::invalid(
                    f("nonResourceURLs"),
                    go_strings(urls),
                    "rules cannot apply to both regular resources and non-resource URLs",
                ));
            }
            continue;
        }
        if list(&r.api_groups) == 0 {
            errs.push(FieldError::required(f("apiGroups"), "resource rules must supply at least one api group"));
        }
        if list(&r.resources) == 0 {
            errs.push(FieldError::required(f("resources"), "resource rules must supply at least one resource"));
        }
    }
}

fn check_role_ref(r: &RoleRef, kinds: &[&str], errs: &mut Errors) {
    let group = r.api_group.as_deref().unwrap_or("");
    if group != GROUP {
        errs.push(FieldError::not_supported("roleRef.apiGroup", group, &[GROUP]));
    }
    if !kinds.contains(&r.kind.as_str()) {
        errs.push(FieldError::not_supported("roleRef.kind", &r.kind, kinds));
    }
    if r.name.is_empty() {
        errs.push(FieldError::required("roleRef.name", ""));
    }
    for p in path_segment_problems(&r.name) {
        errs.push(FieldError::invalid_str("roleRef.name", &r.name, p));
    }
}

fn check_subjects(subjects: &[Subject], namespaced: bool, errs: &mut Errors) {
    for (i, s) in subjects.iter().enumerate() {
        let f = |x: &str| format!("subjects[{i}].{x}");
        if s.name.is_empty() {
            errs.push(FieldError::required(f("name"), ""));
        }
        let group = s.api_group.as_deref().unwrap_or("");
        match s.kind.as_str() {
            "ServiceAccount" => {
                if !s.name.is_empty() {
                    validate::check_name(&s.name, NameRule::Dns1123Subdomain, &f("name"), errs);
                }
                if !group.is_empty() {
                    errs.push(FieldError::not_supported(f("apiGroup"), group, &[""]));
                }
                if !namespaced && s.namespace.as_deref().unwrap_or("").is_empty() {
                    errs.push(FieldError::required(f("namespace"), ""));
                }
            }
            "User" | "Group" => {
                if group != GROUP {
                    errs.push(FieldError::not_supported(f("apiGroup"), group, &[GROUP]));
                }
            }
            other => errs.push(FieldError::not_supported(f("kind"), other, &["ServiceAccount", "User", "Group"])),
        }
    }
}

/// `v` decoded as its kind and encoded again (what the schema knows of it), for `fieldValidation`.
pub fn known_fields(kind: &Kind, v: &Value) -> Option<Value> {
    fn rt<T: DeserializeOwned + Serialize>(v: &Value) -> Option<Value> {
        serde_json::from_value::<T>(fill_zero_values(v)).ok().map(|t| encode(&t))
    }
    match kind.kind {
        "Role" => rt::<Role>(v),
        "ClusterRole" => rt::<ClusterRole>(v),
        "RoleBinding" => rt::<RoleBinding>(v),
        "ClusterRoleBinding" => rt::<ClusterRoleBinding>(v),
        _ => None,
    }
}

/// The cells of a table row, as kube-apiserver's rbac printers make them: roles show when they
/// were made (`CREATED AT`, RFC 3339); bindings their role and, with `-o wide`, their subjects.
pub fn row(kind: &Kind, v: &Value, name: Value, age: Value) -> Vec<Value> {
    let s = |p: &str| v.pointer(p).and_then(Value::as_str).unwrap_or("").to_string();
    if matches!(kind.kind, "Role" | "ClusterRole") {
        return vec![name, json!(s("/metadata/creationTimestamp"))];
    }
    let (mut users, mut groups, mut sas) = (vec![], vec![], vec![]);
    for sub in v.get("subjects").and_then(Value::as_array).into_iter().flatten() {
        let f = |k: &str| sub.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        match f("kind").as_str() {
            "ServiceAccount" => sas.push(format!("{}/{}", f("namespace"), f("name"))),
            "User" => users.push(f("name")),
            "Group" => groups.push(f("name")),
            _ => {}
        }
    }
    vec![
        name,
        json!(format!("{}/{}", s("/roleRef/kind"), s("/roleRef/name"))),
        age,
        json!(users.join(", ")),
        json!(groups.join(", ")),
        json!(sas.join(", ")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::by_gvk;

    fn admit_json(kind: &str, v: Value) -> Result<Value, String> {
        admit(by_gvk("rbac.authorization.k8s.io/v1", kind).unwrap(), &v).map_err(|e| e.to_string())
    }

    #[test]
    fn a_binding_body_that_is_not_an_object_is_refused_not_a_panic() {
        for kind in ["RoleBinding", "ClusterRoleBinding"] {
            let k = crate::kinds::ALL.iter().find(|k| k.kind == kind).unwrap();
            for body in [json!([1]), json!("x"), json!(3), json!(null)] {
                assert!(admit(k, &body).is_err(), "{kind} {body}");
            }
        }
    }

    #[test]
    fn roles_need_verbs_and_resources_or_urls() {
        let ok = json!({"metadata": {"name": "system:pod-reader", "namespace": "x"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]});
        assert!(admit_json("Role", ok).is_ok());
        let bad = json!({"metadata": {"name": "r", "namespace": "x"}, "rules": [
            {"apiGroups": [""], "resources": ["pods"]},
            {"verbs": ["get"]},
            {"nonResourceURLs": ["/x"], "verbs": ["get"]}]});
        assert_eq!(
            admit_json("Role", bad).unwrap_err(),
            "Role \"r\" is invalid: [rules[0].verbs: Required value: verbs must contain at least one value, \
             rules[1].apiGroups: Required value: resource rules must supply at least one api group, \
             rules[1].resources: Required value: resource rules must supply at least one resource, \
             rules[2].nonResourceURLs: Invalid value: []string{\"/x\"}: namespaced rules cannot apply to non-resource URLs]"
        );
        // A ClusterRole may have URLs, not mixed with resources.
        let cr = json!({"metadata": {"name": "c"}, "rules": [{"nonResourceURLs": ["/healthz/*"], "verbs": ["get"]}]});
        assert!(admit_json("ClusterRole", cr).is_ok());
        let mixed = json!({"metadata": {"name": "c"}, "rules": [{"nonResourceURLs": ["/x"], "resources": ["pods"], "verbs": ["get"]}]});
        assert!(admit_json("ClusterRole", mixed).unwrap_err().contains(
            "rules[0].nonResourceURLs: Invalid value: []string{\"/x\"}: rules cannot apply to both regular resources and non-resource URLs"
        ));
        // Names: any path segment.
        for (name, why) in [("a/b", "may not contain '/'"), ("..", "may not be '..'"), ("50%", "may not contain '%'")] {
            let v = json!({"metadata": {"name": name}});
            assert!(admit_json("ClusterRole", v).unwrap_err().contains(why), "{name}");
        }
        assert!(admit_json("ClusterRole", json!({"metadata": {"name": "Upper:Case_ok"}})).is_ok());
        assert!(
            admit_json("ClusterRole", json!({"metadata": {}})).unwrap_err().contains("metadata.name: Required value")
        );
    }

    #[test]
    fn aggregation_rules_need_valid_selectors() {
        let empty = json!({"metadata": {"name": "c"}, "aggregationRule": {}});
        assert!(admit_json("ClusterRole", empty).unwrap_err().contains(
            "aggregationRule.clusterRoleSelectors: Required value: at least one clusterRoleSelector required if aggregationRule is non-nil"
        ));
        let bad = json!({"metadata": {"name": "c"}, "aggregationRule": {"clusterRoleSelectors": [
            {"matchExpressions": [{"key": "a", "operator": "Near"}]}]}});
        assert!(
            admit_json("ClusterRole", bad)
                .unwrap_err()
                .contains("aggregationRule.clusterRoleSelectors[0].matchExpressions[0].operator")
        );
    }

    #[test]
    fn bindings_are_defaulted_and_checked() {
        let rb = json!({"metadata": {"name": "b", "namespace": "x"}, "roleRef": {"kind": "Role", "name": "r"},
            "subjects": [{"kind": "User", "name": "alice"}, {"kind": "ServiceAccount", "name": "sa"}]});
        let out = admit_json("RoleBinding", rb).unwrap();
        assert_eq!(out["roleRef"]["apiGroup"], GROUP);
        assert_eq!(out["subjects"][0]["apiGroup"], GROUP);
        assert!(out["subjects"][1].get("apiGroup").is_none());
        // A ClusterRoleBinding binds only ClusterRoles, and its accounts need a namespace.
        let crb = json!({"metadata": {"name": "b"}, "roleRef": {"apiGroup": "x.io", "kind": "Role", "name": ""},
            "subjects": [{"kind": "ServiceAccount", "name": "sa"}, {"kind": "Robot", "name": "r"}, {"kind": "Group", "name": "g", "apiGroup": "other"}]});
        assert_eq!(
            admit_json("ClusterRoleBinding", crb).unwrap_err(),
            "ClusterRoleBinding \"b\" is invalid: [roleRef.apiGroup: Unsupported value: \"x.io\": supported values: \"rbac.authorization.k8s.io\", \
             roleRef.kind: Unsupported value: \"Role\": supported values: \"ClusterRole\", \
             roleRef.name: Required value, \
             subjects[0].namespace: Required value, \
             subjects[1].kind: Unsupported value: \"Robot\": supported values: \"ServiceAccount\", \"User\", \"Group\", \
             subjects[2].apiGroup: Unsupported value: \"other\": supported values: \"rbac.authorization.k8s.io\"]"
        );
        // No roleRef at all: field errors, not a decoding error.
        let none = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "b", "namespace": "x"}});
        let e = admit_json("RoleBinding", none).unwrap_err();
        assert!(
            e.contains("roleRef.kind: Unsupported value: \"\"") && e.contains("roleRef.name: Required value"),
            "{e}"
        );
        let bad_sa = json!({"metadata": {"name": "b", "namespace": "x"}, "roleRef": {"kind": "Role", "name": "r"},
            "subjects": [{"kind": "ServiceAccount", "name": "Not_Valid", "apiGroup": "rbac.authorization.k8s.io"}]});
        let e = admit_json("RoleBinding", bad_sa).unwrap_err();
        assert!(
            e.contains("subjects[0].name: Invalid value: \"Not_Valid\"") && e.contains("subjects[0].apiGroup"),
            "{e}"
        );
    }

    #[test]
    fn a_role_ref_cannot_change() {
        let k = by_gvk("rbac.authorization.k8s.io/v1", "RoleBinding").unwrap();
        let a = json!({"roleRef": {"apiGroup": GROUP, "kind": "Role", "name": "a"}});
        let b = json!({"roleRef": {"apiGroup": GROUP, "kind": "Role", "name": "b"}});
        assert!(validate_update(k, &a, &a).is_empty());
        let errs = validate_update(k, &a, &b);
        assert_eq!(
            errs[0].to_string(),
            "roleRef: Invalid value: rbac.RoleRef{APIGroup:\"rbac.authorization.k8s.io\", Kind:\"Role\", Name:\"b\"}: cannot change roleRef"
        );
    }

    #[test]
    fn table_rows_as_kubectl_prints_them() {
        let rb = by_gvk("rbac.authorization.k8s.io/v1", "RoleBinding").unwrap();
        let v = json!({"roleRef": {"kind": "ClusterRole", "name": "view"}, "subjects": [
            {"kind": "User", "name": "a"}, {"kind": "User", "name": "b"}, {"kind": "Group", "name": "g"},
            {"kind": "ServiceAccount", "name": "sa", "namespace": "x"}]});
        assert_eq!(
            row(rb, &v, json!("n"), json!("5s")),
            vec![json!("n"), json!("ClusterRole/view"), json!("5s"), json!("a, b"), json!("g"), json!("x/sa")]
        );
        let r = by_gvk("rbac.authorization.k8s.io/v1", "Role").unwrap();
        let v = json!({"metadata": {"creationTimestamp": "2026-01-02T03:04:05Z"}});
        assert_eq!(row(r, &v, json!("n"), json!("1s")), vec![json!("n"), json!("2026-01-02T03:04:05Z")]);
    }
}
