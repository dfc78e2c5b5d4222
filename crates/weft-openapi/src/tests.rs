//! The documents against kube-apiserver 1.32's own (api/openapi-spec/v3 in kubernetes/kubernetes).

use serde_json::{Value, json};
use weft_api::kinds;

use crate::*;

fn def(name: &str) -> &'static Value {
    v3_schemas().get(name).unwrap_or_else(|| panic!("{name} is defined"))
}

fn prop<'a>(d: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(d, |v, p| &v["properties"][*p])
}

#[test]
fn every_served_kind_has_a_definition_with_its_gvk() {
    let mut missing = vec![];
    for k in kinds::ALL {
        let Some(name) = definition_name(k.group, k.version, k.kind) else {
            // Only kinds k8s-openapi no longer has (networking.k8s.io/v1beta1 Ingress).
            assert!(k.legacy, "{}/{} {} has no definition", k.group, k.version, k.kind);
            continue;
        };
        let gvk = json!({"group": k.group, "kind": k.kind, "version": k.version});
        match v3_schemas().get(&name) {
            Some(d) if d["x-kubernetes-group-version-kind"].as_array().is_some_and(|a| a.contains(&gvk)) => {}
            _ => missing.push(name),
        }
        if !k.create_only {
            let list = format!("{}List", k.kind);
            let name = definition_name(k.group, k.version, &list).expect("a list definition");
            let gvk = json!({"group": k.group, "kind": list, "version": k.version});
            assert!(def(&name)["x-kubernetes-group-version-kind"].as_array().is_some_and(|a| a.contains(&gvk)));
        }
    }
    assert!(missing.is_empty(), "without their GVK: {missing:?}");
}

#[test]
fn every_ref_resolves() {
    let mut out = vec![];
    for d in v3_schemas().values() {
        schemas::refs(d, &mut out);
    }
    assert!(out.len() > 500, "{} refs", out.len());
    for r in out {
        let name = r.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("{r} is a v3 ref"));
        assert!(v3_schemas().contains_key(name), "{r} resolves");
    }
}

#[test]
fn service_ports_are_a_map_keyed_by_port_and_protocol() {
    let ports = prop(def("io.k8s.api.core.v1.ServiceSpec"), &["ports"]);
    assert_eq!(ports["x-kubernetes-list-type"], "map");
    assert_eq!(ports["x-kubernetes-list-map-keys"], json!(["port", "protocol"]));
    assert_eq!(ports["x-kubernetes-patch-merge-key"], "port");
    assert_eq!(ports["x-kubernetes-patch-strategy"], "merge");
    assert_eq!(ports["items"]["$ref"], "#/components/schemas/io.k8s.api.core.v1.ServicePort");
    let target = prop(def("io.k8s.api.core.v1.ServicePort"), &["targetPort"]);
    assert_eq!(
        target["allOf"],
        json!([{"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.util.intstr.IntOrString"}])
    );
    assert!(target["description"].as_str().is_some_and(|d| d.starts_with("Number or name of the port")));
}

#[test]
fn containers_and_their_ports() {
    let c = prop(def("io.k8s.api.core.v1.PodSpec"), &["containers"]);
    assert_eq!(c["x-kubernetes-patch-merge-key"], "name");
    assert_eq!(c["x-kubernetes-patch-strategy"], "merge");
    assert_eq!(c["x-kubernetes-list-type"], "map");
    assert_eq!(c["x-kubernetes-list-map-keys"], json!(["name"]));
    let p = prop(def("io.k8s.api.core.v1.Container"), &["ports"]);
    assert_eq!(p["x-kubernetes-list-type"], "map");
    assert_eq!(p["x-kubernetes-list-map-keys"], json!(["containerPort", "protocol"]));
    assert_eq!(p["x-kubernetes-patch-merge-key"], "containerPort");
    assert_eq!(prop(def("io.k8s.api.core.v1.PodSpec"), &["nodeSelector"])["x-kubernetes-map-type"], "atomic");
}

#[test]
fn object_meta() {
    let meta = def("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta");
    let f = prop(meta, &["finalizers"]);
    assert_eq!((&f["x-kubernetes-list-type"], &f["x-kubernetes-patch-strategy"]), (&json!("set"), &json!("merge")));
    let o = prop(meta, &["ownerReferences"]);
    assert_eq!(o["x-kubernetes-list-type"], "map");
    assert_eq!(o["x-kubernetes-list-map-keys"], json!(["uid"]));
    assert_eq!(o["x-kubernetes-patch-merge-key"], "uid");
    assert_eq!(o["x-kubernetes-patch-strategy"], "merge");
    let labels = prop(meta, &["labels"]);
    assert_eq!(labels["type"], "object");
    assert_eq!(labels["additionalProperties"]["type"], "string");
    assert!(labels.get("x-kubernetes-map-type").is_none());
    assert_eq!(def("io.k8s.apimachinery.pkg.apis.meta.v1.OwnerReference")["x-kubernetes-map-type"], "atomic");
    assert_eq!(def("io.k8s.api.core.v1.LocalObjectReference")["x-kubernetes-map-type"], "atomic");
}

#[test]
fn kinds_do_not_require_metadata() {
    let pod = def("io.k8s.api.core.v1.Pod");
    assert!(pod.get("required").is_none(), "{:?}", pod.get("required"));
    assert_eq!(
        pod["properties"]["metadata"]["allOf"][0]["$ref"],
        "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    );
    assert_eq!(def("io.k8s.api.core.v1.PodList")["required"], json!(["items"]));
}
