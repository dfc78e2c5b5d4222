use serde_json::json;

use super::*;
use crate::schema::fixtures;

const NOW: &str = "2026-01-01T00:00:00Z";

fn schema() -> Schema {
    Schema::new(&fixtures::defs())
}

fn updater<'a>(s: &'a Schema, ignored: &'a Set) -> Updater<'a> {
    Updater {
        schema: s,
        root: s.kind("apps", "v1", "Deployment").unwrap(),
        api_version: "apps/v1",
        subresource: "",
        ignored,
        now: NOW,
    }
}

fn deployment(replicas: i64, image: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x", "labels": {"app": "x"}},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "x"}},
            "template": {"metadata": {"labels": {"app": "x"}},
                "spec": {"containers": [{"name": "c", "image": image}]}}}})
}

fn fields(m: &Managed, manager: &str) -> Value {
    m.entries.iter().find(|(id, _)| id.manager == manager).map(|(_, e)| e.set.to_fields_v1()).unwrap_or(Value::Null)
}

#[test]
fn a_create_is_owned_by_its_creator_as_upstream_writes_it() {
    let s = schema();
    let none = Set::new();
    let u = updater(&s, &none);
    let m = u.update(&u.zero(), &deployment(1, "i"), &Managed::default(), "kubectl-create");
    // As kube-apiserver writes it: no "." for spec or template (they always exist), one for labels.
    assert_eq!(
        fields(&m, "kubectl-create"),
        json!({"f:metadata": {"f:labels": {".": {}, "f:app": {}}},
            "f:spec": {"f:replicas": {}, "f:selector": {}, "f:template": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                "f:spec": {"f:containers": {"k:{\"name\":\"c\"}": {".": {}, "f:image": {}, "f:name": {}}}}}}})
    );
    let e = m.encode().unwrap();
    assert_eq!(e[0]["manager"], "kubectl-create");
    assert_eq!(e[0]["operation"], "Update");
    assert_eq!(e[0]["time"], NOW);
    // An update by another manager takes what it changed.
    let m2 = u.update(&deployment(1, "i"), &deployment(3, "i"), &m, "kubectl-scale");
    assert_eq!(fields(&m2, "kubectl-scale"), json!({"f:spec": {"f:replicas": {}}}));
    assert_eq!(fields(&m2, "kubectl-create")["f:spec"].get("f:replicas"), None);
    // An update that changes nothing changes no ownership.
    assert_eq!(u.update(&deployment(3, "i"), &deployment(3, "i"), &m2, "other"), m2);
}

#[test]
fn apply_twice_is_unchanged_and_dropped_fields_go() {
    let s = schema();
    let none = Set::new();
    let u = updater(&s, &none);
    let mut m = Managed::default();
    let first = u.apply(&u.zero(), &deployment(2, "a"), &mut m, "kubectl", false).unwrap();
    assert!(first.changed);
    let mut m2 = m.clone();
    let again = u.apply(&first.object, &deployment(2, "a"), &mut m2, "kubectl", false).unwrap();
    assert!(!again.changed);
    assert_eq!(m2, m);
    // Leaving replicas out of the configuration removes it (nobody else owns it).
    let mut cfg = deployment(2, "a");
    cfg["spec"].as_object_mut().unwrap().remove("replicas");
    let third = u.apply(&first.object, &cfg, &mut m2, "kubectl", false).unwrap();
    assert!(third.changed);
    assert_eq!(third.object["spec"].get("replicas"), None);
    assert_eq!(fields(&m2, "kubectl")["f:spec"].get("f:replicas"), None);
}

#[test]
fn a_dropped_field_another_manager_owns_stays() {
    let s = schema();
    let none = Set::new();
    let u = updater(&s, &none);
    let mut m = Managed::default();
    let live = u.apply(&u.zero(), &deployment(2, "a"), &mut m, "a", false).unwrap().object;
    let live = u.apply(&live, &deployment(2, "a"), &mut m, "b", false).unwrap().object;
    let mut cfg = deployment(2, "a");
    cfg["spec"].as_object_mut().unwrap().remove("replicas");
    let out = u.apply(&live, &cfg, &mut m, "a", false).unwrap();
    assert_eq!(out.object["spec"]["replicas"], 2);
    assert_eq!(fields(&m, "b")["f:spec"]["f:replicas"], json!({}));
}

#[test]
fn conflicts_name_the_manager_and_field_and_force_takes_them() {
    let s = schema();
    let none = Set::new();
    let u = updater(&s, &none);
    let mut m = Managed::default();
    let live = u.apply(&u.zero(), &deployment(2, "a"), &mut m, "kubectl", false).unwrap().object;
    let m0 = m.clone();
    let err = u.apply(&live, &deployment(5, "b"), &mut m, "other", false).unwrap_err();
    let ApplyError::Conflicts(cs) = err else { panic!("{err:?}") };
    assert_eq!(m, m0, "nothing changes on a conflict");
    assert_eq!(
        conflict_message(&cs),
        "Apply failed with 2 conflicts: conflicts with \"kubectl\":\n- .spec.replicas\n- .spec.template.spec.containers[name=\"c\"].image"
    );
    assert_eq!(cs[0].message(), "conflict with \"kubectl\"");
    // The same values are no conflict: both own them.
    let mut shared = m.clone();
    assert!(u.apply(&live, &deployment(2, "a"), &mut shared, "other", false).is_ok());
    assert_eq!(fields(&shared, "other")["f:spec"]["f:replicas"], json!({}));
    assert_eq!(fields(&shared, "kubectl")["f:spec"]["f:replicas"], json!({}));
    // Forced, the fields change hands.
    let out = u.apply(&live, &deployment(5, "a"), &mut m, "other", true).unwrap();
    assert_eq!(out.object["spec"]["replicas"], 5);
    assert_eq!(fields(&m, "kubectl")["f:spec"].get("f:replicas"), None);
    // An Update owner is named with its version.
    let m3 = u.update(&out.object, &deployment(7, "a"), &m, "kubectl-client-side-apply");
    let mut m4 = m3.clone();
    let ApplyError::Conflicts(cs) =
        u.apply(&deployment(7, "a"), &deployment(2, "a"), &mut m4, "kubectl", false).unwrap_err()
    else {
        panic!()
    };
    assert_eq!(
        conflict_message(&cs),
        "Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using apps/v1: .spec.replicas"
    );
}

#[test]
fn kubectl_takes_over_what_it_applied_client_side() {
    let s = schema();
    let none = Set::new();
    let u = updater(&s, &none);
    let cfg = deployment(2, "a");
    let mut live = cfg.clone();
    live["metadata"]["annotations"] = json!({LAST_APPLIED: last_applied_of(&cfg)});
    let m = u.update(&u.zero(), &live, &Managed::default(), "kubectl-client-side-apply");
    // The same configuration: nothing changes hands, both own it.
    let mut same = m.clone();
    u.apply(&live, &cfg, &mut same, "kubectl", false).unwrap();
    assert_eq!(fields(&same, "kubectl")["f:spec"]["f:replicas"], json!({}));
    assert_eq!(fields(&same, "kubectl-client-side-apply")["f:spec"]["f:replicas"], json!({}));
    // A changed one: what kubectl last applied (and the object still has) is kubectl's to change.
    let mut cfg3 = deployment(3, "a");
    let mut m3 = m.clone();
    let out3 = u.apply(&live, &cfg3, &mut m3, "kubectl", false).unwrap();
    assert_eq!(out3.object["spec"]["replicas"], 3);
    assert_eq!(fields(&m3, "kubectl")["f:spec"]["f:replicas"], json!({}));
    assert_eq!(fields(&m3, "kubectl-client-side-apply")["f:spec"].get("f:replicas"), None);
    // The annotation follows what was applied.
    let ann = out3.object["metadata"]["annotations"][LAST_APPLIED].as_str().unwrap();
    assert_eq!(serde_json::from_str::<Value>(ann).unwrap()["spec"]["replicas"], 3);
    assert!(ann.ends_with('\n'));
    // Another manager gets no such pass.
    cfg3["spec"]["replicas"] = json!(9);
    let mut m4 = m.clone();
    assert!(matches!(u.apply(&live, &cfg3, &mut m4, "someone", false), Err(ApplyError::Conflicts(_))));
}

#[test]
fn bad_configurations_are_refused() {
    let s = schema();
    let none = Set::new();
    let u = updater(&s, &none);
    let mut m = Managed::default();
    let mut cfg = deployment(1, "a");
    cfg["apiVersion"] = json!("apps/v1beta1");
    let ApplyError::BadRequest(msg) = u.apply(&u.zero(), &cfg, &mut m, "k", false).unwrap_err() else { panic!() };
    assert_eq!(
        msg,
        "Incorrect version specified in apply patch. Specified patch version: apps/v1beta1, expected: apps/v1"
    );
    let mut cfg = deployment(1, "a");
    cfg["metadata"]["managedFields"] = json!([]);
    assert!(matches!(u.apply(&u.zero(), &cfg, &mut m, "k", false), Err(ApplyError::BadRequest(_))));
    let mut cfg = deployment(1, "a");
    cfg["spec"]["template"]["spec"]["containers"] = json!([{"name": "c"}, {"name": "c"}]);
    assert!(matches!(u.apply(&u.zero(), &cfg, &mut m, "k", false), Err(ApplyError::Invalid(_))));
}

#[test]
fn status_is_not_taken_through_the_main_resource() {
    let s = schema();
    let ignored = Set::from_paths([&[PathElement::Field("status".into())][..]]);
    let u = updater(&s, &ignored);
    let mut cfg = deployment(1, "a");
    cfg["status"] = json!({"replicas": 4});
    let mut m = Managed::default();
    u.apply(&u.zero(), &cfg, &mut m, "k", false).unwrap();
    assert_eq!(fields(&m, "k").get("f:status"), None);
}

#[test]
fn update_managers_are_capped_into_ancient_changes() {
    let s = schema();
    let none = Set::new();
    let mut m = Managed::default();
    let mut live = deployment(0, "a");
    for i in 1..=12 {
        let now = format!("2026-01-01T00:00:{i:02}Z");
        let u = Updater { now: &now, ..updater(&s, &none) };
        let mut next = live.clone();
        next["metadata"]["labels"][format!("l{i}")] = json!("v");
        m = u.update(&live, &next, &m, &format!("m{i}"));
        live = next;
    }
    assert_eq!(m.entries.len(), 10);
    let ancient = m.entries.iter().find(|(id, _)| id.manager == "ancient-changes").unwrap();
    assert_eq!(ancient.1.set.paths().len(), 3);
    assert!(!m.entries.keys().any(|id| id.manager == "m1" || id.manager == "m2" || id.manager == "m3"));
}

#[test]
fn map_list_items_and_set_items_are_owned_one_by_one() {
    let s = schema();
    let none = Set::new();
    let u = updater(&s, &none);
    let mut m = Managed::default();
    let mut a = deployment(1, "x");
    a["metadata"]["finalizers"] = json!(["f1"]);
    let live = u.apply(&u.zero(), &a, &mut m, "a", false).unwrap().object;
    let mut b = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x", "finalizers": ["f2"]},
        "spec": {"template": {"spec": {"containers": [{"name": "sidecar", "image": "s"}]}}}});
    let live = u.apply(&live, &b, &mut m, "b", false).unwrap().object;
    assert_eq!(live["metadata"]["finalizers"], json!(["f1", "f2"]));
    assert_eq!(live["spec"]["template"]["spec"]["containers"].as_array().unwrap().len(), 2);
    assert_eq!(fields(&m, "b")["f:metadata"]["f:finalizers"], json!({"v:\"f2\"": {}}));
    // b drops its container and finalizer: only b's items go.
    b["metadata"].as_object_mut().unwrap().remove("finalizers");
    b["spec"]["template"]["spec"]["containers"] = json!([]);
    let live = u.apply(&live, &b, &mut m, "b", false).unwrap().object;
    assert_eq!(live["metadata"]["finalizers"], json!(["f1"]));
    assert_eq!(live["spec"]["template"]["spec"]["containers"], json!([{"name": "c", "image": "x"}]));
}

mod hostile {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    /// Any JSON: scalars, lists and maps with field names the schema knows and does not.
    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|i| json!(i)),
            "[a-c]{0,2}".prop_map(Value::String),
        ];
        leaf.prop_recursive(6, 64, 6, |inner| {
            let key = prop_oneof![
                Just("name".to_string()),
                Just("containers".to_string()),
                Just("replicas".to_string()),
                Just("labels".to_string()),
                Just("finalizers".to_string()),
                Just("ports".to_string()),
                Just("containerPort".to_string()),
                "[a-c]{1,2}",
            ];
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(key, inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn wrap(v: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x", "labels": v.clone()},
            "spec": {"replicas": v.clone(), "template": {"spec": {"containers": v.clone()}}, "strategy": v}})
    }

    proptest! {
        /// No object makes the walks panic; an update and an apply either succeed or say why;
        /// every field set written comes back the same from its FieldsV1 form.
        #[test]
        fn hostile_objects_never_panic(a in any_json(), b in any_json()) {
            let s = schema();
            let none = Set::new();
            let u = updater(&s, &none);
            let (a, b) = (wrap(a), wrap(b));
            let m = u.update(&a, &b, &Managed::default(), "m");
            let enc = m.encode();
            prop_assert_eq!(Managed::decode(enc.as_ref()).unwrap(), m.clone());
            let mut m2 = m.clone();
            let _ = u.apply(&a, &b, &mut m2, "kubectl", false);
            let mut m3 = m;
            let _ = u.apply(&b, &a, &mut m3, "x", true);
            let set = typed::to_field_set(&s, u.root, &b);
            prop_assert_eq!(Set::from_fields_v1(&set.to_fields_v1()).unwrap(), set);
        }
    }
}
